//! Runs: start one, list and read them, pause / resume / stop / kill / restart them, and read
//! or follow their output.

use std::{convert::Infallible, time::Duration};

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{
        IntoResponse,
        sse::{Event, KeepAlive, Sse},
    },
};
use dirigent_domain::{
    InvalidField,
    access::{Action, Resource},
    run::{self as domain, Operation},
};
use dirigent_proto::{
    error::ErrorBody,
    run::{LogLine, Run, RunDetail, RunState, RunTransition, StartRunRequest},
};
use dirigent_store::OutputOf;
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use crate::{
    AppState,
    api::{ApiJson, ApiQuery, PathSegment},
    audit::AuditSlot,
    auth::Caller,
    error::ApiError,
    fleet::{Cause, FleetEvent, Launch},
};

/// Starts a run of a robot: queued, then placed on an agent with free capacity.
#[utoipa::path(
    post,
    path = "/runs",
    tag = "runs",
    security(("bearer" = [])),
    request_body = StartRunRequest,
    responses(
        (status = 201, body = Run),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub(crate) async fn create_run(
    State(state): State<AppState>,
    caller: Caller,
    audit: AuditSlot,
    ApiJson(request): ApiJson<StartRunRequest>,
) -> Result<impl IntoResponse, ApiError> {
    audit.about(format!("robot:{}", request.robot));
    caller.require(Resource::Robots, Action::Run, Some(&request.robot))?;
    dirigent_domain::robot::check_args("args", &request.args).map_err(ApiError::invalid)?;
    dirigent_domain::robot::check_env(&request.env).map_err(ApiError::invalid)?;
    let launch = Launch {
        args: request.args,
        env: request.env,
    };
    let run = state
        .fleet
        .start_run(&request.robot, Cause::User(caller.username.clone()), launch)
        .await?;
    audit.about(format!("run:{}", run.id));
    let location = format!("/api/v1/runs/{}", run.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(to_wire(run)),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Only runs of this robot.
    pub(crate) robot: Option<String>,
    /// Only runs that have not ended.
    #[serde(default)]
    pub(crate) active: bool,
    /// At most this many, newest first (default 100, at most 1000).
    pub(crate) limit: Option<u32>,
}

/// Runs, newest first.
#[utoipa::path(
    get,
    path = "/runs",
    tag = "runs",
    security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = [Run]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn list_runs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Run>>, ApiError> {
    caller.require(Resource::Runs, Action::Read, query.robot.as_deref())?;
    let limit = super::page_limit(query.limit, 100, 1000)?;
    let runs = state
        .store
        .runs(&dirigent_store::RunQuery {
            robot: query.robot.as_deref(),
            active_only: query.active,
            limit,
        })
        .await?;
    let visible = runs
        .into_iter()
        .filter(|run| caller.may(Resource::Runs, Action::Read, Some(&run.robot)))
        .map(to_wire);
    Ok(Json(visible.collect()))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct GetQuery {
    /// Wait until the run is in one of these states (comma-separated) or has ended.
    wait_for: Option<String>,
    /// How long to wait, in seconds (default 30, at most 300).
    timeout_seconds: Option<u32>,
}

/// One run with its history. A robot may read its own run with its run token.
#[utoipa::path(
    get,
    path = "/runs/{id}",
    tag = "runs",
    security(("bearer" = [])),
    params(("id" = String, Path), GetQuery),
    responses(
        (status = 200, body = RunDetail),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub(crate) async fn get_run(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(id): PathSegment,
    ApiQuery(query): ApiQuery<GetQuery>,
) -> Result<Json<RunDetail>, ApiError> {
    caller.require_some_runs(Action::Read)?;
    let run = state.fleet.run(&id).await?;
    caller.require_run(&run.id, &run.robot, Action::Read)?;
    let run = match query.wait_for {
        Some(wanted) => {
            let mut states = Vec::new();
            for name in wanted
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
            {
                let state = domain::RunState::parse(name).ok_or_else(|| {
                    ApiError::invalid(InvalidField::new(
                        "wait_for",
                        format!("{name:?} is not a run state"),
                    ))
                })?;
                states.push(state);
            }
            let timeout = query.timeout_seconds.unwrap_or(30);
            if 300 < timeout {
                return Err(ApiError::invalid(InvalidField::new(
                    "timeout_seconds",
                    "must be at most 300",
                )));
            }
            state
                .fleet
                .wait_for(&id, &states, Duration::from_secs(u64::from(timeout)))
                .await?
        }
        None => run,
    };
    let transitions = state.store.run_transitions(&id).await?;
    Ok(Json(RunDetail {
        run: to_wire(run),
        transitions: transitions
            .into_iter()
            .map(|transition| RunTransition {
                state: state_to_wire(transition.state),
                at: transition.at,
                cause: transition.cause,
                reason: transition.reason,
            })
            .collect(),
    }))
}

macro_rules! operation {
    ($name:ident, $path:literal, $operation:expr, $action:expr, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(
            post,
            path = $path,
            tag = "runs",
            security(("bearer" = [])),
            params(("id" = String, Path)),
            responses(
                (status = 200, body = Run),
                (status = 401, body = ErrorBody),
                (status = 403, body = ErrorBody),
                (status = 404, body = ErrorBody),
                (status = 409, description = "The run's state does not allow it", body = ErrorBody),
            )
        )]
        pub(crate) async fn $name(
            State(state): State<AppState>,
            caller: Caller,
            PathSegment(id): PathSegment,
        ) -> Result<Json<Run>, ApiError> {
            caller.require(Resource::Robots, $action, None)?;
            let run = state.fleet.run(&id).await?;
            caller.require(Resource::Robots, $action, Some(&run.robot))?;
            let cause = Cause::User(caller.username.clone());
            let run = state.fleet.operate(&id, $operation, cause).await?;
            Ok(Json(to_wire(run)))
        }
    };
}

operation!(
    pause_run,
    "/runs/{id}/pause",
    Operation::Pause,
    Action::Pause,
    "Pauses a running run (SIGSTOP to its process group)."
);
operation!(
    resume_run,
    "/runs/{id}/resume",
    Operation::Resume,
    Action::Pause,
    "Resumes a paused run (SIGCONT)."
);
operation!(
    stop_run,
    "/runs/{id}/stop",
    Operation::Stop,
    Action::Stop,
    "Safe stop: marks the run stop-requested, SIGTERM to its group, SIGKILL after the robot's grace period."
);
operation!(
    kill_run,
    "/runs/{id}/kill",
    Operation::Kill,
    Action::Kill,
    "Force stop: SIGKILL to the run's process group."
);

/// Safe-stops the run and starts a new run of its robot; answers the new run.
#[utoipa::path(
    post,
    path = "/runs/{id}/restart",
    tag = "runs",
    security(("bearer" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 201, body = Run),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub(super) async fn restart_run(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(id): PathSegment,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Resource::Robots, Action::Stop, None)?;
    caller.require(Resource::Robots, Action::Run, None)?;
    let run = state.fleet.run(&id).await?;
    caller.require(Resource::Robots, Action::Stop, Some(&run.robot))?;
    caller.require(Resource::Robots, Action::Run, Some(&run.robot))?;
    let run = state.fleet.restart_run(&id, &caller.username).await?;
    Ok((StatusCode::CREATED, Json(to_wire(run))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct LogsQuery {
    /// Only lines after this position.
    #[serde(default)]
    after: u64,
    /// At most this many lines (default 1000, at most 10000).
    limit: Option<u32>,
}

/// A run's output lines, in order.
#[utoipa::path(
    get,
    path = "/runs/{id}/logs",
    tag = "runs",
    security(("bearer" = [])),
    params(("id" = String, Path), LogsQuery),
    responses(
        (status = 200, body = [LogLine]),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub(super) async fn run_logs(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(id): PathSegment,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Json<Vec<LogLine>>, ApiError> {
    caller.require_some_runs(Action::Logs)?;
    let run = state.fleet.run(&id).await?;
    caller.require_run(&run.id, &run.robot, Action::Logs)?;
    let limit = super::page_limit(query.limit, 1000, 10_000)?;
    let lines = state
        .store
        .output(OutputOf::Run(&id), query.after, limit)
        .await?;
    Ok(Json(lines.into_iter().map(crate::logs::to_line).collect()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct FollowQuery {
    /// Start after this position.
    #[serde(default)]
    after: u64,
}

/// Follows a run's output live as server-sent events: `line` events carry a LogLine, and one
/// `end` event carries the run once it has ended and all its output was sent.
#[utoipa::path(
    get,
    path = "/runs/{id}/logs/stream",
    tag = "runs",
    security(("bearer" = [])),
    params(("id" = String, Path), FollowQuery),
    responses(
        (status = 200, description = "text/event-stream of `line` and `end` events", content_type = "text/event-stream"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub(super) async fn follow_logs(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(id): PathSegment,
    ApiQuery(query): ApiQuery<FollowQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_some_runs(Action::Logs)?;
    let run = state.fleet.run(&id).await?;
    caller.require_run(&run.id, &run.robot, Action::Logs)?;
    // Subscribe before reading what is stored, so that nothing falls between the two.
    let events = state.fleet.subscribe();
    let follower = Follower {
        state,
        run_id: id,
        last_seq: query.after,
        events,
        ended: false,
    };
    let stream = stream::unfold(follower, |mut follower| async move {
        let events = follower.next_events().await?;
        Some((
            stream::iter(events.into_iter().map(Ok::<Event, Infallible>)),
            follower,
        ))
    })
    .flatten();
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

struct Follower {
    state: AppState,
    run_id: String,
    last_seq: u64,
    events: tokio::sync::broadcast::Receiver<FleetEvent>,
    ended: bool,
}

impl Follower {
    /// The next events to send; `None` when the stream is over.
    async fn next_events(&mut self) -> Option<Vec<Event>> {
        if self.ended {
            return None;
        }
        let backlog = self.catch_up().await;
        if !backlog.is_empty() {
            return Some(backlog);
        }
        if let Ok(run) = self.state.store.run(&self.run_id).await
            && run.state.is_final()
        {
            self.ended = true;
            let mut events = self.catch_up().await;
            events.push(Event::default().event("end").json_data(to_wire(run)).ok()?);
            return Some(events);
        }
        loop {
            match self.events.recv().await {
                Ok(FleetEvent::Output { run_id, lines }) if run_id == self.run_id => {
                    let fresh: Vec<Event> = lines
                        .iter()
                        .filter(|line| line.seq.is_some_and(|seq| self.last_seq < seq))
                        .filter_map(|line| {
                            Event::default()
                                .event("line")
                                .json_data(crate::logs::to_line(line.clone()))
                                .ok()
                        })
                        .collect();
                    if let Some(last) = lines.last().and_then(|line| line.seq) {
                        self.last_seq = self.last_seq.max(last);
                    }
                    if !fresh.is_empty() {
                        return Some(fresh);
                    }
                }
                Ok(FleetEvent::Run(run)) if run.id == self.run_id && run.state.is_final() => {
                    return Some(Vec::new());
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => return Some(Vec::new()),
                Err(RecvError::Closed) => return None,
            }
        }
    }

    async fn catch_up(&mut self) -> Vec<Event> {
        let Ok(lines) = self
            .state
            .store
            .output(OutputOf::Run(&self.run_id), self.last_seq, 1000)
            .await
        else {
            return Vec::new();
        };
        if let Some(last) = lines.last().and_then(|line| line.seq) {
            self.last_seq = last;
        }
        lines
            .into_iter()
            .filter_map(|line| {
                Event::default()
                    .event("line")
                    .json_data(crate::logs::to_line(line))
                    .ok()
            })
            .collect()
    }
}

pub(crate) fn to_wire(run: domain::Run) -> Run {
    Run {
        id: run.id,
        robot: run.robot,
        agent: run.agent,
        state: state_to_wire(run.state),
        reason: run.reason,
        stop_requested: run.stop_requested,
        pid: run.pid,
        exit_code: run.exit_code,
        signal: run.signal,
        args: run.args,
        env: run.env,
        created_at: run.created_at,
        started_at: run.started_at,
        ended_at: run.ended_at,
    }
}

fn state_to_wire(state: domain::RunState) -> RunState {
    match state {
        domain::RunState::Queued => RunState::Queued,
        domain::RunState::Starting => RunState::Starting,
        domain::RunState::Running => RunState::Running,
        domain::RunState::Paused => RunState::Paused,
        domain::RunState::Stopping => RunState::Stopping,
        domain::RunState::Succeeded => RunState::Succeeded,
        domain::RunState::Failed => RunState::Failed,
        domain::RunState::Stopped => RunState::Stopped,
        domain::RunState::Killed => RunState::Killed,
        domain::RunState::TimedOut => RunState::TimedOut,
        domain::RunState::Lost => RunState::Lost,
    }
}
