//! Activities: typed operations on agents and on the orchestrator, asked through one door
//! (`POST /api/v1/activities`, the console, the CLI). Here they are checked (the catalogue,
//! the arguments against their types, the caller's permission on each target), stored, and
//! sent on: to agents through the fleet's durable commands, or run by this node
//! (`orchestrator`). A timer times out what passes its deadline.

pub(crate) mod orchestrator;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::http::StatusCode;
use dirigent_domain::{
    InvalidField,
    activity::{self as domain, Runs, State, Target},
    agent::Agent,
};
use dirigent_proto::{
    activity::{
        Activity, ActivityRequest, ActivityState, AgentOperation, CatalogEntry, Mode,
        ServerOperation, TargetKind,
    },
    error::ErrorCode,
    link::AgentCommand,
};
use dirigent_store::{ActivityRecord, NewActivity, StoreError};
use jiff::{SignedDuration, Timestamp};
use serde::de::DeserializeOwned;
use tokio::{sync::Notify, task::JoinHandle};

use crate::{AppState, Clock, auth::Caller, auth::secrets, error::ApiError, fleet::Fleet};

/// The most a file read or written by one activity may hold.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;
/// How large a request to create an activity may be (a file to write, base64-encoded).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// How large an uploaded file (a new agent binary) may be.
pub const MAX_BLOB_BYTES: usize = 512 * 1024 * 1024;

/// What this node keeps for activities.
#[derive(Debug)]
pub struct Activities {
    /// Sequential activities on the orchestrator run one at a time (on each node).
    sequential: tokio::sync::Mutex<()>,
    /// Wakes the timer when an activity is created.
    created: Notify,
    /// When this node started, for the orchestrator's `info`.
    pub started_at: Timestamp,
}

impl Activities {
    pub fn new(started_at: Timestamp) -> Activities {
        Activities {
            sequential: tokio::sync::Mutex::new(()),
            created: Notify::new(),
            started_at,
        }
    }
}

/// The catalogue, with each operation's JSON Schemas.
pub fn catalog() -> Vec<CatalogEntry> {
    domain::CATALOG
        .iter()
        .map(|op| {
            let (args, result) = orchestrator::schemas(op.name, op.runs);
            CatalogEntry {
                operation: op.name.to_owned(),
                target: match op.runs {
                    Runs::OnAgent => TargetKind::Agent,
                    Runs::OnServer => TargetKind::Server,
                },
                permission: format!("{}:{}", op.resource, op.action),
                description: op.description.to_owned(),
                args_schema: args,
                result_schema: result,
            }
        })
        .collect()
}

/// Checks and stores an activity (with one child per agent for a label selector) and sends
/// it on; answers it as stored.
pub(crate) async fn create(
    state: &AppState,
    caller: &Caller,
    request: ActivityRequest,
) -> Result<ActivityRecord, ApiError> {
    let target = Target::parse(&request.target).map_err(ApiError::invalid)?;
    let runs = target.runs();
    let op = domain::operation(&request.operation, runs).ok_or_else(|| {
        let elsewhere = match runs {
            Runs::OnAgent => Runs::OnServer,
            Runs::OnServer => Runs::OnAgent,
        };
        let reason = match domain::operation(&request.operation, elsewhere) {
            Some(_) if runs == Runs::OnServer => format!(
                "{:?} runs on agents, not on the orchestrator: aim it at an agent",
                request.operation
            ),
            Some(_) => format!(
                "{:?} runs on the orchestrator: aim it at `server`",
                request.operation
            ),
            None => format!(
                "{:?} is not an operation of the catalogue (GET /api/v1/activities/catalog)",
                request.operation
            ),
        };
        ApiError::invalid(InvalidField::new("operation", reason))
    })?;
    let timeout_seconds =
        domain::timeout_seconds(request.timeout_seconds).map_err(ApiError::invalid)?;
    let now = state.clock.now();
    let base = |id: String, target: String| ActivityRecord {
        id,
        parent: None,
        target,
        agent_id: None,
        operation: op.name.to_owned(),
        args: String::new(),
        parallel: request.mode == Mode::Parallel,
        state: State::Queued,
        reason: None,
        result: None,
        timeout: SignedDuration::from_secs(i64::from(timeout_seconds)),
        requested_by: caller.username.clone(),
        created_at: now,
        started_at: None,
        ended_at: None,
        command_id: None,
        node: None,
    };
    match target {
        Target::Server => {
            // The operation's own permission on some resource; what it does checks the rest.
            caller.require(op.resource, op.action, None)?;
            let operation = server_operation(op.name, &request.args)?;
            let mut record = base(new_id()?, "server".to_owned());
            record.args = shown(&operation)?;
            record.node = Some(state.fleet.node().to_owned());
            state
                .fleet
                .queue_activities(vec![NewActivity {
                    record: record.clone(),
                    command: None,
                }])
                .await?;
            spawn_on_server(state.clone(), caller.clone(), record.clone(), operation);
            Ok(record)
        }
        Target::Agent(name) => {
            caller.require(op.resource, op.action, Some(&name))?;
            let operation = agent_operation(op.name, &request.args)?;
            check_agent_operation(&operation)?;
            check_uploaded(state, &operation).await?;
            let agent = state.store.agent(&name).await.map_err(|err| match err {
                StoreError::NotFound => ApiError::not_found(
                    ErrorCode::AgentNotFound,
                    format!("no agent named {name:?}"),
                ),
                other => other.into(),
            })?;
            let new = for_agent(
                base(new_id()?, name),
                &agent,
                &operation,
                request.mode,
                timeout_seconds,
            )?;
            let record = new.record.clone();
            state.fleet.queue_activities(vec![new]).await?;
            state.activities.created.notify_one();
            Ok(record)
        }
        Target::Labels(labels) => {
            caller.require(op.resource, op.action, None)?;
            let operation = agent_operation(op.name, &request.args)?;
            check_agent_operation(&operation)?;
            check_uploaded(state, &operation).await?;
            let agents: Vec<Agent> = state
                .store
                .agents()
                .await?
                .into_iter()
                .filter(|agent| matches_labels(agent, &labels))
                .collect();
            if agents.is_empty() {
                return Err(ApiError::invalid(InvalidField::new(
                    "target",
                    format!("no agent has the labels {}", request.target.trim()),
                )));
            }
            for agent in &agents {
                caller.require(op.resource, op.action, Some(&agent.name))?;
            }
            let mut parent = base(new_id()?, Target::Labels(labels).to_string());
            parent.args = shown_agent(&operation);
            let mut activities = vec![NewActivity {
                record: parent.clone(),
                command: None,
            }];
            for agent in &agents {
                let mut child = base(new_id()?, agent.name.clone());
                child.parent = Some(parent.id.clone());
                activities.push(for_agent(
                    child,
                    agent,
                    &operation,
                    request.mode,
                    timeout_seconds,
                )?);
            }
            state.fleet.queue_activities(activities).await?;
            state.activities.created.notify_one();
            Ok(parent)
        }
    }
}

/// An activity for one agent, with the command that carries it there.
fn for_agent(
    mut record: ActivityRecord,
    agent: &Agent,
    operation: &AgentOperation,
    mode: Mode,
    timeout_seconds: u32,
) -> Result<NewActivity, ApiError> {
    record.agent_id = Some(agent.id);
    record.args = shown_agent(operation);
    if !agent.online {
        record.reason = Some(format!(
            "waiting for agent {}, which is offline",
            agent.name
        ));
    }
    let command = AgentCommand::Activity {
        id: record.id.clone(),
        mode,
        timeout_seconds,
        operation: operation.clone(),
    };
    let command = serde_json::to_string(&command).map_err(ApiError::internal)?;
    Ok(NewActivity {
        record,
        command: Some(command),
    })
}

fn matches_labels(agent: &Agent, labels: &BTreeMap<String, String>) -> bool {
    labels
        .iter()
        .all(|(key, value)| agent.labels.get(key) == Some(value))
}

fn new_id() -> Result<String, ApiError> {
    secrets::new_id("act_").map_err(ApiError::internal)
}

fn shown_agent(operation: &AgentOperation) -> String {
    operation.redacted_args().to_string()
}

fn shown(operation: &ServerOperation) -> Result<String, ApiError> {
    let value = serde_json::to_value(operation).map_err(ApiError::internal)?;
    Ok(value
        .get("args")
        .map(ToString::to_string)
        .unwrap_or_else(|| "{}".to_owned()))
}

/// An agent's operation with its arguments read into their type.
fn agent_operation(name: &str, args: &serde_json::Value) -> Result<AgentOperation, ApiError> {
    use AgentOperation as Op;
    Ok(match name {
        "exec" => Op::Exec(args_of(args)?),
        "processes" => Op::Processes(args_of(args)?),
        "signal_process" => Op::SignalProcess(args_of(args)?),
        "files.list" => Op::FilesList(args_of(args)?),
        "files.read" => Op::FilesRead(args_of(args)?),
        "files.write" => Op::FilesWrite(args_of(args)?),
        "info" => Op::Info(args_of(args)?),
        "agent.restart" => Op::Restart(args_of(args)?),
        "agent.update" => Op::Update(args_of(args)?),
        "session.screenshot" => Op::SessionScreenshot(args_of(args)?),
        "session.restart" => Op::SessionRestart(args_of(args)?),
        other => {
            return Err(ApiError::internal(format!(
                "operation {other:?} has no type"
            )));
        }
    })
}

/// An operation of the orchestrator with its arguments read into their type.
fn server_operation(name: &str, args: &serde_json::Value) -> Result<ServerOperation, ApiError> {
    use ServerOperation as Op;
    Ok(match name {
        "info" => Op::Info(args_of(args)?),
        "maintenance" => Op::Maintenance(args_of(args)?),
        "robots.list" => Op::RobotsList(args_of(args)?),
        "robot.show" => Op::RobotShow(args_of(args)?),
        "run.start" => Op::RunStart(args_of(args)?),
        "runs.list" => Op::RunsList(args_of(args)?),
        "run.show" => Op::RunShow(args_of(args)?),
        "run.stop" => Op::RunStop(args_of(args)?),
        "run.kill" => Op::RunKill(args_of(args)?),
        "triggers.list" => Op::TriggersList(args_of(args)?),
        "trigger.enable" => Op::TriggerEnable(args_of(args)?),
        "trigger.disable" => Op::TriggerDisable(args_of(args)?),
        "queues.list" => Op::QueuesList(args_of(args)?),
        "queue.show" => Op::QueueShow(args_of(args)?),
        other => {
            return Err(ApiError::internal(format!(
                "operation {other:?} has no type"
            )));
        }
    })
}

/// Reads arguments into their type; a mismatch names the JSON pointer of the field at fault
/// in the request (`/args/argv/0`).
fn args_of<T: DeserializeOwned>(args: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(args).map_err(|err| {
        let mut pointer = "/args".to_owned();
        for segment in err.path().iter() {
            use serde_path_to_error::Segment;
            let part = match segment {
                Segment::Seq { index } => index.to_string(),
                Segment::Map { key } | Segment::Enum { variant: key } => {
                    key.replace('~', "~0").replace('/', "~1")
                }
                Segment::Unknown => continue,
            };
            pointer.push('/');
            pointer.push_str(&part);
        }
        let reason = err.into_inner().to_string();
        let (field, reason) = match reason
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            Some(missing) => (format!("{pointer}/{missing}"), "is required".to_owned()),
            None => (pointer, reason),
        };
        ApiError::invalid(InvalidField::new(field, reason))
    })
}

/// What an agent's operation must be beyond its types: checked here so that a bad request
/// fails before it is queued (the agent checks again, against its own policy).
fn check_agent_operation(operation: &AgentOperation) -> Result<(), ApiError> {
    let invalid =
        |field: &str, reason: String| Err(ApiError::invalid(InvalidField::new(field, reason)));
    match operation {
        AgentOperation::Exec(args) => {
            if args.argv.is_empty() || args.argv[0].is_empty() {
                return invalid("/args/argv", "must name a program".to_owned());
            }
            if 1024 < args.argv.len() || args.argv.iter().any(|arg| 64 * 1024 < arg.len()) {
                return invalid(
                    "/args/argv",
                    "at most 1024 arguments of at most 64 KiB".to_owned(),
                );
            }
            if args
                .env
                .keys()
                .any(|key| key.is_empty() || key.contains('=') || key.contains('\0'))
            {
                return invalid(
                    "/args/env",
                    "names must be non-empty, without `=`".to_owned(),
                );
            }
            if args
                .stdin
                .as_ref()
                .is_some_and(|stdin| MAX_FILE_BYTES < stdin.len())
            {
                return Err(too_large("/args/stdin"));
            }
        }
        AgentOperation::SignalProcess(args) => {
            if !SIGNALS.contains(&args.signal.as_str()) {
                return invalid(
                    "/args/signal",
                    format!("{:?} is not one of {}", args.signal, SIGNALS.join(", ")),
                );
            }
            if args.pid <= 1 {
                return invalid("/args/pid", "must be a process other than init".to_owned());
            }
        }
        AgentOperation::FilesList(args) => check_path("/args/path", &args.path)?,
        AgentOperation::FilesRead(args) => check_path("/args/path", &args.path)?,
        AgentOperation::FilesWrite(args) => {
            check_path("/args/path", &args.path)?;
            if MAX_FILE_BYTES.div_ceil(3) * 4 < args.content_base64.len() {
                return Err(too_large("/args/content_base64"));
            }
            let is_digest =
                args.sha256.len() == 64 && args.sha256.bytes().all(|byte| byte.is_ascii_hexdigit());
            if !is_digest {
                return invalid("/args/sha256", "must be 64 hexadecimal digits".to_owned());
            }
            if args
                .mode
                .as_deref()
                .is_some_and(|mode| u32::from_str_radix(mode, 8).map_or(true, |bits| 0o7777 < bits))
            {
                return invalid(
                    "/args/mode",
                    "must be octal permission bits such as 644".to_owned(),
                );
            }
        }
        AgentOperation::Update(args) => check_digest("/args/sha256", &args.sha256)?,
        AgentOperation::Processes(_)
        | AgentOperation::Info(_)
        | AgentOperation::Restart(_)
        | AgentOperation::SessionScreenshot(_)
        | AgentOperation::SessionRestart(_) => {}
    }
    Ok(())
}

/// An update's binary must have been uploaded.
async fn check_uploaded(state: &AppState, operation: &AgentOperation) -> Result<(), ApiError> {
    if let AgentOperation::Update(args) = operation
        && state
            .store
            .blob_size(&args.sha256.to_ascii_lowercase())
            .await?
            .is_none()
    {
        return Err(ApiError::invalid(InvalidField::new(
            "/args/sha256",
            "no file with this SHA-256 was uploaded: upload it first (POST /api/v1/blobs)",
        )));
    }
    Ok(())
}

/// The signals `signal_process` sends.
pub const SIGNALS: [&str; 9] = [
    "TERM", "KILL", "INT", "HUP", "QUIT", "STOP", "CONT", "USR1", "USR2",
];

fn check_path(field: &str, path: &str) -> Result<(), ApiError> {
    if !path.starts_with('/') || path.contains('\0') || 4096 < path.len() {
        return Err(ApiError::invalid(InvalidField::new(
            field,
            "must be an absolute path (on the agent's machine)",
        )));
    }
    Ok(())
}

fn check_digest(field: &str, digest: &str) -> Result<(), ApiError> {
    if digest.len() != 64 || !digest.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(ApiError::invalid(InvalidField::new(
            field,
            "must be a SHA-256: 64 hexadecimal digits",
        )));
    }
    Ok(())
}

fn too_large(field: &str) -> ApiError {
    let mut err = ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
        format!(
            "{field}: an activity carries at most {} MiB",
            MAX_FILE_BYTES / (1024 * 1024)
        ),
    );
    err.field = Some(field.to_owned());
    err
}

/// Runs an activity on this node: at once (parallel) or after the earlier sequential ones.
fn spawn_on_server(
    state: AppState,
    caller: Caller,
    record: ActivityRecord,
    operation: ServerOperation,
) {
    tokio::spawn(async move {
        let activities = Arc::clone(&state.activities);
        let _turn = match record.parallel {
            true => None,
            false => Some(activities.sequential.lock().await),
        };
        let fleet = &state.fleet;
        match fleet.start_activity_here(&record.id).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(err) => return tracing::warn!(%err, activity = record.id, "starting an activity"),
        }
        let timeout = Duration::from_secs(record.timeout.as_secs().unsigned_abs());
        let (state_after, reason, result) = match tokio::time::timeout(
            timeout,
            orchestrator::run(&state, &caller, operation),
        )
        .await
        {
            Ok(Ok(result)) => (State::Succeeded, None, Some(result.to_string())),
            Ok(Err(reason)) => (State::Failed, Some(reason), None),
            Err(_) => (
                State::TimedOut,
                Some(format!("not done within {} s", timeout.as_secs())),
                None,
            ),
        };
        let at = state.clock.now();
        if let Err(err) = fleet
            .end_activity(&record.id, state_after, reason, result, at)
            .await
        {
            tracing::warn!(%err, activity = record.id, "ending an activity");
        }
    });
}

/// Starts the timer that times out activities past their deadline; it runs until aborted.
pub(crate) fn spawn_timer(
    fleet: Arc<Fleet>,
    clock: Arc<dyn Clock>,
    activities: Arc<Activities>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let next = match fleet.expire_activities().await {
                Ok(next) => next,
                Err(err) => {
                    tracing::warn!(%err, "timing out activities");
                    Some(clock.now() + SignedDuration::from_secs(5))
                }
            };
            // Deadlines are on the wall clock: look at least every second while some wait.
            let wait = next.map(|next| {
                let left = clock.now().duration_until(next);
                Duration::from_millis(left.as_millis().clamp(10, 1000).unsigned_abs() as u64)
            });
            match wait {
                Some(wait) => {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = activities.created.notified() => {}
                    }
                }
                None => activities.created.notified().await,
            }
        }
    })
}

/// An activity as the API shows it.
pub(crate) fn to_wire(record: ActivityRecord, children: Vec<String>) -> Activity {
    let parse = |text: &str| serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
    Activity {
        args: parse(&record.args),
        result: record.result.as_deref().map(parse),
        mode: match record.parallel {
            true => Mode::Parallel,
            false => Mode::Sequential,
        },
        state: state_to_wire(record.state),
        timeout_seconds: u32::try_from(record.timeout.as_secs()).unwrap_or(u32::MAX),
        id: record.id,
        parent: record.parent,
        target: record.target,
        operation: record.operation,
        reason: record.reason,
        requested_by: record.requested_by,
        created_at: record.created_at,
        started_at: record.started_at,
        ended_at: record.ended_at,
        children,
    }
}

pub(crate) fn state_to_wire(state: State) -> ActivityState {
    match state {
        State::Queued => ActivityState::Queued,
        State::Running => ActivityState::Running,
        State::Succeeded => ActivityState::Succeeded,
        State::Failed => ActivityState::Failed,
        State::TimedOut => ActivityState::TimedOut,
        State::Cancelled => ActivityState::Cancelled,
    }
}

pub(crate) fn state_from_wire(state: ActivityState) -> State {
    match state {
        ActivityState::Queued => State::Queued,
        ActivityState::Running => State::Running,
        ActivityState::Succeeded => State::Succeeded,
        ActivityState::Failed => State::Failed,
        ActivityState::TimedOut => State::TimedOut,
        ActivityState::Cancelled => State::Cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_of_the_catalogue_has_its_types_and_schemas() {
        for entry in catalog() {
            assert!(entry.args_schema.is_object(), "{}", entry.operation);
            assert!(entry.result_schema.is_object(), "{}", entry.operation);
            let empty = serde_json::json!({});
            let parsed = match entry.target {
                TargetKind::Agent => {
                    agent_operation(&entry.operation, &empty).map(|op| op.name().to_owned())
                }
                TargetKind::Server => {
                    server_operation(&entry.operation, &empty).map(|_| entry.operation.clone())
                }
            };
            match parsed {
                Ok(name) => assert_eq!(name, entry.operation),
                Err(err) => assert_eq!(
                    err.status,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "{}: {}",
                    entry.operation,
                    err.message
                ),
            }
        }
    }

    #[test]
    fn a_bad_argument_is_named_by_its_json_pointer() {
        let args = serde_json::json!({ "argv": ["ls", 1], "env": { "A/B": 2 } });
        let err = agent_operation("exec", &args).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("/args/argv/1"));
        let err = agent_operation(
            "exec",
            &serde_json::json!({ "argv": ["ls"], "env": { "A/B": 2 } }),
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("/args/env/A~1B"));
        let err = agent_operation("files.write", &serde_json::json!({ "path": "/x" })).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("/args/content_base64"));
    }
}
