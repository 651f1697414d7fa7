//! Activities: typed operations run on an agent or on the orchestrator (remote
//! administration and the debug console), their arguments and results, and how the API shows
//! them. Each operation is a variant of [`AgentOperation`] or [`ServerOperation`]; its JSON
//! Schemas are derived from the same types.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::run::LogLine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActivityState {
    /// Waiting: for its target's earlier sequential activities, or for its agent.
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

impl ActivityState {
    pub const ALL: [ActivityState; 6] = [
        ActivityState::Queued,
        ActivityState::Running,
        ActivityState::Succeeded,
        ActivityState::Failed,
        ActivityState::TimedOut,
        ActivityState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActivityState::Queued => "queued",
            ActivityState::Running => "running",
            ActivityState::Succeeded => "succeeded",
            ActivityState::Failed => "failed",
            ActivityState::TimedOut => "timed_out",
            ActivityState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<ActivityState> {
        ActivityState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        !matches!(self, ActivityState::Queued | ActivityState::Running)
    }
}

/// How an activity waits for others on its target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// In the target's own queue, one after another in the order asked.
    #[default]
    Sequential,
    /// At once, beside anything else.
    Parallel,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sequential => "sequential",
            Mode::Parallel => "parallel",
        }
    }

    pub fn parse(text: &str) -> Option<Mode> {
        [Mode::Sequential, Mode::Parallel]
            .into_iter()
            .find(|mode| mode.as_str() == text)
    }
}

/// `POST /api/v1/activities`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivityRequest {
    /// `server` (the orchestrator), an agent's name, or a label selector (`site=berlin,os=linux`)
    /// that fans out to one child activity per matching agent.
    pub target: String,
    /// An operation of the catalogue (`GET /api/v1/activities/catalog`).
    pub operation: String,
    /// The operation's arguments, as its schema in the catalogue says.
    #[serde(default = "empty_object")]
    pub args: serde_json::Value,
    #[serde(default)]
    pub mode: Mode,
    /// From creation to the end, queueing included (default 300, at most 86400).
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// An activity as the API shows it. Secrets among its arguments (environment values, stdin,
/// file contents) are shown redacted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Activity {
    pub id: String,
    /// The activity this one is a child of (a fan-out by label selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// `server`, an agent's name, or (for a fan-out) the label selector.
    pub target: String,
    pub operation: String,
    #[schema(value_type = Object)]
    pub args: serde_json::Value,
    pub mode: Mode,
    pub state: ActivityState,
    /// Why it is in its state (what it waits for, why it failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the operation answered, as its result schema says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub timeout_seconds: u32,
    pub requested_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<Timestamp>,
    /// The children of a fan-out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<String>,
}

/// `GET /api/v1/activities/{id}/output`: lines of an activity's output.
pub type ActivityOutput = Vec<LogLine>;

/// Where an operation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    Agent,
    Server,
}

/// One operation of the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CatalogEntry {
    pub operation: String,
    pub target: TargetKind,
    /// The permission it needs, as `resource:action`.
    pub permission: String,
    pub description: String,
    /// JSON Schema of its arguments.
    #[schema(value_type = Object)]
    pub args_schema: serde_json::Value,
    /// JSON Schema of its result.
    #[schema(value_type = Object)]
    pub result_schema: serde_json::Value,
}

/// An operation run by an agent, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "operation", content = "args")]
pub enum AgentOperation {
    #[serde(rename = "exec")]
    Exec(ExecArgs),
    #[serde(rename = "processes")]
    Processes(NoArgs),
    #[serde(rename = "signal_process")]
    SignalProcess(SignalArgs),
    #[serde(rename = "files.list")]
    FilesList(PathArgs),
    #[serde(rename = "files.read")]
    FilesRead(ReadArgs),
    #[serde(rename = "files.write")]
    FilesWrite(WriteArgs),
    #[serde(rename = "info")]
    Info(NoArgs),
    #[serde(rename = "agent.restart")]
    Restart(NoArgs),
    #[serde(rename = "agent.update")]
    Update(UpdateArgs),
    #[serde(rename = "session.screenshot")]
    SessionScreenshot(SessionArgs),
    #[serde(rename = "session.restart")]
    SessionRestart(SessionRestartArgs),
}

impl AgentOperation {
    /// Its name in the catalogue.
    pub fn name(&self) -> &'static str {
        match self {
            AgentOperation::Exec(_) => "exec",
            AgentOperation::Processes(_) => "processes",
            AgentOperation::SignalProcess(_) => "signal_process",
            AgentOperation::FilesList(_) => "files.list",
            AgentOperation::FilesRead(_) => "files.read",
            AgentOperation::FilesWrite(_) => "files.write",
            AgentOperation::Info(_) => "info",
            AgentOperation::Restart(_) => "agent.restart",
            AgentOperation::Update(_) => "agent.update",
            AgentOperation::SessionScreenshot(_) => "session.screenshot",
            AgentOperation::SessionRestart(_) => "session.restart",
        }
    }

    /// Its arguments as they may be shown and kept: environment values, stdin and file
    /// contents replaced by what they are.
    pub fn redacted_args(&self) -> serde_json::Value {
        let mut shown = self.clone();
        match &mut shown {
            AgentOperation::Exec(args) => {
                for value in args.env.values_mut() {
                    *value = REDACTED.to_owned();
                }
                if let Some(stdin) = &mut args.stdin {
                    *stdin = format!("({} bytes)", stdin.len());
                }
            }
            AgentOperation::FilesWrite(args) => {
                args.content_base64 = format!("({} characters)", args.content_base64.len());
            }
            _ => {}
        }
        serde_json::to_value(&shown)
            .ok()
            .and_then(|value| value.get("args").cloned())
            .unwrap_or_else(empty_object)
    }
}

/// What a secret is shown as.
pub const REDACTED: &str = "(redacted)";

/// An operation run by the orchestrator, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "operation", content = "args")]
pub enum ServerOperation {
    #[serde(rename = "info")]
    Info(NoArgs),
    #[serde(rename = "maintenance")]
    Maintenance(MaintenanceArgs),
    #[serde(rename = "robots.list")]
    RobotsList(NoArgs),
    #[serde(rename = "robot.show")]
    RobotShow(RobotArgs),
    #[serde(rename = "run.start")]
    RunStart(crate::run::StartRunRequest),
    #[serde(rename = "runs.list")]
    RunsList(RunsListArgs),
    #[serde(rename = "run.show")]
    RunShow(RunArgs),
    #[serde(rename = "run.stop")]
    RunStop(RunArgs),
    #[serde(rename = "run.kill")]
    RunKill(RunArgs),
    #[serde(rename = "triggers.list")]
    TriggersList(NoArgs),
    #[serde(rename = "trigger.enable")]
    TriggerEnable(TriggerArgs),
    #[serde(rename = "trigger.disable")]
    TriggerDisable(TriggerArgs),
    #[serde(rename = "queues.list")]
    QueuesList(NoArgs),
    #[serde(rename = "queue.show")]
    QueueShow(QueueArgs),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// `exec`: a program run on the agent's machine, without a shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecArgs {
    /// The program and its arguments; the program is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Where it runs (default: the agent's data directory); under a file root of the agent's
    /// policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Added to the agent's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Given on its standard input (else it reads end of file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    /// Its exit code; none when a signal ended it.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Whether its output went past what an activity keeps (the rest was read and dropped).
    pub output_truncated: bool,
}

/// `signal_process`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalArgs {
    pub pid: u32,
    /// `TERM`, `KILL`, `INT`, `HUP`, `QUIT`, `STOP`, `CONT`, `USR1` or `USR2`.
    pub signal: String,
}

/// `processes`: one process of the agent's machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    pub user: String,
    /// CPU time used so far.
    pub cpu_seconds: f64,
    /// Resident memory.
    pub memory_bytes: u64,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    pub command: Vec<String>,
    /// Its name, when its command line is empty (a kernel thread, a zombie).
    pub name: String,
}

/// `files.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PathArgs {
    /// An absolute path under a file root of the agent's policy.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
    /// Permission bits, as an octal number's digits (`644`).
    pub mode: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub modified_at: Option<Timestamp>,
}

/// `files.read`: a file, or a part of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadArgs {
    pub path: String,
    #[serde(default)]
    pub offset: u64,
    /// How much to read (default: to the end; at most the limit of one read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileContent {
    pub content_base64: String,
    /// The SHA-256 (hex) of what was read.
    pub sha256: String,
    /// The whole file's size.
    pub size: u64,
}

/// `files.write`: a whole file, replaced atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteArgs {
    pub path: String,
    pub content_base64: String,
    /// The SHA-256 (hex) the content must have: the agent checks it before writing.
    pub sha256: String,
    /// Permission bits as octal digits (default `644`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileWritten {
    pub size: u64,
    pub sha256: String,
}

/// `info` of an agent: its machine and itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentInfo {
    pub host: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// The filesystem of the agent's data directory.
    pub disk_total_bytes: u64,
    pub disk_available_bytes: u64,
    /// Load averages over 1, 5 and 15 minutes.
    pub load: Vec<f64>,
    pub uptime_seconds: u64,
    pub agent_version: String,
    /// The SHA-256 (hex) of the agent's binary.
    pub agent_sha256: String,
    pub agent_pid: u32,
    pub live_runs: u32,
    pub sessions: u32,
    /// What its policy allows.
    pub policy: PolicyInfo,
}

/// An agent's own policy: what it allows activities to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyInfo {
    pub operations: Vec<String>,
    pub file_roots: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_user: Option<String>,
}

/// `agent.update`: a new agent binary, uploaded first (`POST /api/v1/blobs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateArgs {
    /// The SHA-256 (hex) of the uploaded binary: the agent checks what it downloads against it.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Updated {
    /// The SHA-256 of the binary it ran before.
    pub previous_sha256: String,
    pub sha256: String,
    /// What the new binary says its version is.
    pub version: String,
}

/// `POST /api/v1/blobs`: a file kept for activities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Blob {
    pub sha256: String,
    pub size: u64,
}

/// `session.screenshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionArgs {
    pub session: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Screenshot {
    pub png_base64: String,
}

/// `session.restart`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRestartArgs {
    pub session: u32,
    /// Also when a run uses it (its display dies).
    #[serde(default)]
    pub force: bool,
}

/// `maintenance` of the orchestrator: while on, no new run starts; running ones go on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceArgs {
    pub on: bool,
    /// Shown to whoever's start is refused meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Maintenance {
    pub on: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub since: Option<Timestamp>,
}

/// `info` of the orchestrator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServerInfo {
    pub version: String,
    pub node: String,
    /// `sqlite` or `postgres`.
    pub database: String,
    pub uptime_seconds: u64,
    pub maintenance: Maintenance,
    pub robots: u64,
    pub active_runs: u64,
    pub agents: u64,
    pub agents_online: u64,
    pub queues: u64,
    pub triggers: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RobotArgs {
    pub robot: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    pub run: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunsListArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robot: Option<String>,
    /// Only runs that have not ended.
    #[serde(default)]
    pub active: bool,
    /// At most this many, newest first (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerArgs {
    pub trigger: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueArgs {
    pub queue: String,
}

/// How an activity ended on its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

impl Outcome {
    pub fn state(self) -> ActivityState {
        match self {
            Outcome::Succeeded => ActivityState::Succeeded,
            Outcome::Failed => ActivityState::Failed,
            Outcome::TimedOut => ActivityState::TimedOut,
            Outcome::Cancelled => ActivityState::Cancelled,
        }
    }
}
