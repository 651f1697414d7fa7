//! Robot definitions on the wire.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A robot definition as sent by a client to create (`POST /api/v1/robots`) or replace
/// (`PUT /api/v1/robots/{name}`) a robot. Absent optional fields take their defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RobotSpec {
    /// Unique name: `[a-z0-9][a-z0-9._-]*`, at most 64 characters. With `PUT` it may be left
    /// out; when given it must equal the name in the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The program and its arguments, run without a shell: write `["sh", "-c", "…"]` to get one.
    pub argv: Vec<String>,
    /// Absolute directory to run in; the agent's own working directory when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Extra environment variables; names beginning with `DIRIGENT_` are reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Where the robot may run: an agent name (`pc-17`), a label selector
    /// (`os=linux,site=berlin`), or any agent when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Runs of this robot allowed at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// Seconds between the safe stop's SIGTERM and the SIGKILL (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_seconds: Option<u32>,
    /// A run still alive after this many seconds is stopped as `timed_out`; no limit when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_backoff: Option<RestartBackoff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_loop: Option<CrashLoop>,
    /// The robot needs a graphical session (`DISPLAY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs_display: Option<bool>,
    /// Queues (names or patterns such as `invoices-*`) whose items the robot's runs may read,
    /// add and process with their run token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<Vec<String>>,
}

/// What happens when a run of a robot in auto mode ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Leave it ended.
    Never,
    /// Start it again after a failure (`failed`, `timed_out`, `lost`).
    OnFailure,
    /// Start it again whenever it ends, except after an operator's stop.
    Always,
}

/// Delay before an automatic restart: `initial_seconds`, doubled after each consecutive
/// failure, up to `max_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartBackoff {
    pub initial_seconds: u32,
    pub max_seconds: u32,
}

/// The crash-loop guard: more than `max_starts` automatic starts within `window_seconds`
/// switch the robot to manual mode, stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CrashLoop {
    pub max_starts: u32,
    pub window_seconds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RobotMode {
    Auto,
    Manual,
}

impl RobotMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RobotMode::Auto => "auto",
            RobotMode::Manual => "manual",
        }
    }
}

/// A robot as the server returns it: the definition with every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Robot {
    pub name: String,
    pub description: String,
    pub argv: Vec<String>,
    pub working_dir: Option<String>,
    pub env: BTreeMap<String, String>,
    pub agent: Option<String>,
    pub max_parallel: u32,
    pub stop_grace_seconds: u32,
    pub max_duration_seconds: Option<u32>,
    pub restart_policy: RestartPolicy,
    pub restart_backoff: RestartBackoff,
    pub crash_loop: CrashLoop,
    pub needs_display: bool,
    pub queues: Vec<String>,
    /// `auto`: automation (restart policy, triggers) acts on the robot; `manual`: an operator
    /// took control, and automation leaves it alone until switched back.
    pub mode: RobotMode,
    /// Who or what set the mode, and why.
    pub mode_reason: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl Robot {
    /// The definition of this robot as a spec, to edit and send back with `PUT`.
    pub fn to_spec(&self) -> RobotSpec {
        RobotSpec {
            name: Some(self.name.clone()),
            description: Some(self.description.clone()),
            argv: self.argv.clone(),
            working_dir: self.working_dir.clone(),
            env: Some(self.env.clone()),
            agent: self.agent.clone(),
            max_parallel: Some(self.max_parallel),
            stop_grace_seconds: Some(self.stop_grace_seconds),
            max_duration_seconds: self.max_duration_seconds,
            restart_policy: Some(self.restart_policy),
            restart_backoff: Some(self.restart_backoff),
            crash_loop: Some(self.crash_loop),
            needs_display: Some(self.needs_display),
            queues: Some(self.queues.clone()),
        }
    }
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on_failure",
            RestartPolicy::Always => "always",
        }
    }
}
