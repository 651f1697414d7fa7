//! The operations the orchestrator runs itself, and every operation's JSON Schemas. Those on
//! robots, runs, triggers and queues call the API's own handlers with the asking caller, so
//! an activity can do exactly what the caller could do through the API.

use axum::{extract::State, response::IntoResponse};
use dirigent_domain::activity::Runs;
use dirigent_proto::{
    activity::{
        AgentInfo, ExecArgs, ExecResult, FileContent, FileEntry, FileWritten, Maintenance,
        MaintenanceArgs, NoArgs, PathArgs, ProcessInfo, QueueArgs, ReadArgs, RobotArgs, RunArgs,
        RunsListArgs, Screenshot, ServerInfo, ServerOperation, SessionArgs, SessionRestartArgs,
        SignalArgs, TriggerArgs, UpdateArgs, Updated, WriteArgs,
    },
    queue::Queue,
    robot::Robot,
    run::{Run, RunDetail, StartRunRequest},
    trigger::Trigger,
};
use serde_json::Value;
use utoipa::{PartialSchema, ToSchema};

use crate::{
    AppState,
    api::{self, ApiJson, ApiQuery, PathSegment},
    audit::AuditSlot,
    auth::Caller,
    error::ApiError,
};

/// The most an answer of a handler may hold.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// Runs an operation on the orchestrator; answers its result, or why it failed.
pub(crate) async fn run(
    state: &AppState,
    caller: &Caller,
    operation: ServerOperation,
) -> Result<Value, String> {
    let (state, caller) = (State(state.clone()), caller.clone());
    match operation {
        ServerOperation::Info(NoArgs {}) => info(&state.0).await.and_then(to_value),
        ServerOperation::Maintenance(args) => maintenance(&state.0, &caller, args).await,
        ServerOperation::RobotsList(NoArgs {}) => {
            answer(api::robots::list_robots(state, caller).await).await
        }
        ServerOperation::RobotShow(RobotArgs { robot }) => {
            answer(api::robots::get_robot(state, caller, PathSegment(robot)).await).await
        }
        ServerOperation::RunStart(request) => {
            answer(
                api::runs::create_run(state, caller, AuditSlot::default(), ApiJson(request)).await,
            )
            .await
        }
        ServerOperation::RunsList(args) => {
            let query = api::runs::ListQuery {
                robot: args.robot,
                active: args.active,
                limit: args.limit,
            };
            answer(api::runs::list_runs(state, caller, ApiQuery(query)).await).await
        }
        ServerOperation::RunShow(RunArgs { run }) => {
            let query = ApiQuery(api::runs::GetQuery::default());
            answer(api::runs::get_run(state, caller, PathSegment(run), query).await).await
        }
        ServerOperation::RunStop(RunArgs { run }) => {
            answer(api::runs::stop_run(state, caller, PathSegment(run)).await).await
        }
        ServerOperation::RunKill(RunArgs { run }) => {
            answer(api::runs::kill_run(state, caller, PathSegment(run)).await).await
        }
        ServerOperation::TriggersList(NoArgs {}) => {
            let query = ApiQuery(api::triggers::TriggerQuery { robot: None });
            answer(api::triggers::list_triggers(state, caller, query).await).await
        }
        ServerOperation::TriggerEnable(TriggerArgs { trigger }) => {
            answer(api::triggers::enable_trigger(state, caller, PathSegment(trigger)).await).await
        }
        ServerOperation::TriggerDisable(TriggerArgs { trigger }) => {
            answer(api::triggers::disable_trigger(state, caller, PathSegment(trigger)).await).await
        }
        ServerOperation::QueuesList(NoArgs {}) => {
            answer(api::queues::list_queues(state, caller).await).await
        }
        ServerOperation::QueueShow(QueueArgs { queue }) => {
            answer(api::queues::get_queue(state, caller, PathSegment(queue)).await).await
        }
    }
}

/// A handler's answer as JSON, or its error's message.
async fn answer<R: IntoResponse>(result: Result<R, ApiError>) -> Result<Value, String> {
    let response = result.map_err(|err| err.message)?.into_response();
    if let Some(err) = response.extensions().get::<ApiError>() {
        return Err(err.message.clone());
    }
    let body = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES)
        .await
        .map_err(|err| format!("reading the answer: {err}"))?;
    serde_json::from_slice(&body).map_err(|err| format!("reading the answer: {err}"))
}

fn to_value(value: impl serde::Serialize) -> Result<Value, String> {
    serde_json::to_value(value).map_err(|err| err.to_string())
}

async fn info(state: &AppState) -> Result<ServerInfo, String> {
    let counts = state.store.counts().await.map_err(|err| err.to_string())?;
    let maintenance = state
        .fleet
        .maintenance()
        .await
        .map_err(|err| err.to_string())?;
    let now = state.clock.now();
    Ok(ServerInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        node: state.fleet.node().to_owned(),
        database: match state.store.backend_kind() {
            dirigent_store::BackendKind::Sqlite => "sqlite",
            dirigent_store::BackendKind::Postgres => "postgres",
        }
        .to_owned(),
        uptime_seconds: now
            .duration_since(state.activities.started_at)
            .as_secs()
            .unsigned_abs(),
        maintenance: maintenance_to_wire(maintenance),
        robots: counts.robots,
        active_runs: counts.active_runs,
        agents: counts.agents,
        agents_online: counts.agents_online,
        queues: counts.queues,
        triggers: counts.triggers,
    })
}

async fn maintenance(
    state: &AppState,
    caller: &Caller,
    args: MaintenanceArgs,
) -> Result<Value, String> {
    let reason = args.reason.unwrap_or_default();
    if 500 < reason.len() {
        return Err("the reason has more than 500 characters".to_owned());
    }
    let on = args.on.then_some(reason.as_str());
    state
        .fleet
        .set_maintenance(on, &caller.username)
        .await
        .map_err(|err| err.to_string())?;
    let now = state
        .fleet
        .maintenance()
        .await
        .map_err(|err| err.to_string())?;
    to_value(maintenance_to_wire(now))
}

pub(crate) fn maintenance_to_wire(mode: Option<crate::fleet::MaintenanceMode>) -> Maintenance {
    match mode {
        Some(mode) => Maintenance {
            on: true,
            reason: (!mode.reason.is_empty()).then_some(mode.reason),
            by: Some(mode.by),
            since: Some(mode.since),
        },
        None => Maintenance {
            on: false,
            reason: None,
            by: None,
            since: None,
        },
    }
}

/// An operation's schemas: of its arguments, and of its result.
pub(crate) fn schemas(name: &str, runs: Runs) -> (Value, Value) {
    let empty = || schema::<NoArgs>();
    match (runs, name) {
        (Runs::OnAgent, "exec") => (schema::<ExecArgs>(), schema::<ExecResult>()),
        (Runs::OnAgent, "processes") => (empty(), array_of::<ProcessInfo>()),
        (Runs::OnAgent, "signal_process") => (schema::<SignalArgs>(), empty()),
        (Runs::OnAgent, "files.list") => (schema::<PathArgs>(), array_of::<FileEntry>()),
        (Runs::OnAgent, "files.read") => (schema::<ReadArgs>(), schema::<FileContent>()),
        (Runs::OnAgent, "files.write") => (schema::<WriteArgs>(), schema::<FileWritten>()),
        (Runs::OnAgent, "info") => (empty(), reference::<AgentInfo>()),
        (Runs::OnAgent, "agent.restart") => (empty(), empty()),
        (Runs::OnAgent, "agent.update") => (schema::<UpdateArgs>(), schema::<Updated>()),
        (Runs::OnAgent, "session.screenshot") => (schema::<SessionArgs>(), schema::<Screenshot>()),
        (Runs::OnAgent, "session.restart") => (schema::<SessionRestartArgs>(), empty()),
        (Runs::OnServer, "info") => (empty(), reference::<ServerInfo>()),
        (Runs::OnServer, "maintenance") => (schema::<MaintenanceArgs>(), schema::<Maintenance>()),
        (Runs::OnServer, "robots.list") => (empty(), array_of::<Robot>()),
        (Runs::OnServer, "robot.show") => (schema::<RobotArgs>(), reference::<Robot>()),
        (Runs::OnServer, "run.start") => (schema::<StartRunRequest>(), reference::<Run>()),
        (Runs::OnServer, "runs.list") => (schema::<RunsListArgs>(), array_of::<Run>()),
        (Runs::OnServer, "run.show") => (schema::<RunArgs>(), reference::<RunDetail>()),
        (Runs::OnServer, "run.stop" | "run.kill") => (schema::<RunArgs>(), reference::<Run>()),
        (Runs::OnServer, "triggers.list") => (empty(), array_of::<Trigger>()),
        (Runs::OnServer, "trigger.enable" | "trigger.disable") => {
            (schema::<TriggerArgs>(), reference::<Trigger>())
        }
        (Runs::OnServer, "queues.list") => (empty(), array_of::<Queue>()),
        (Runs::OnServer, "queue.show") => (schema::<QueueArgs>(), reference::<Queue>()),
        _ => (Value::Null, Value::Null),
    }
}

/// A type's schema, inline; the types it refers to are in the API's OpenAPI document.
fn schema<T: PartialSchema>() -> Value {
    serde_json::to_value(T::schema())
        .map(with_document_refs)
        .unwrap_or(Value::Null)
}

/// A reference to a type's schema in the API's OpenAPI document.
fn reference<T: ToSchema>() -> Value {
    serde_json::json!({ "$ref": format!("/api/v1/openapi.json#/components/schemas/{}", T::name()) })
}

fn array_of<T: ToSchema>() -> Value {
    serde_json::json!({ "type": "array", "items": reference::<T>() })
}

/// Makes a schema's local references (`#/components/…`) point into the OpenAPI document.
fn with_document_refs(mut value: Value) -> Value {
    match &mut value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                match (key.as_str(), inner) {
                    ("$ref", Value::String(target)) if target.starts_with("#/") => {
                        *target = format!("/api/v1/openapi.json{target}");
                    }
                    (_, inner) => *inner = with_document_refs(std::mem::take(inner)),
                }
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                *item = with_document_refs(std::mem::take(item));
            }
        }
        _ => {}
    }
    value
}
