//! Graphical sessions: the desktops agents keep for robots that need one, listed and read
//! with their history, their screens, and the frames kept of runs' screens.

use axum::{
    Json,
    extract::{
        Path, State,
        ws::{Message, WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine;
use dirigent_domain::{
    InvalidField,
    access::{Action, Resource},
    run::Operation,
    session as domain,
};
use dirigent_proto::{
    error::{ErrorBody, ErrorCode},
    link::{AgentReply, AgentRequest},
    session::{
        ControlRequest, InputEvent, InputRequest, RunFrame, Session, SessionChange, SessionDetail,
        SessionState,
    },
};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::{
    AppState,
    api::{ApiJson, ApiQuery, PathSegment},
    audit::AuditSlot,
    auth::Caller,
    error::ApiError,
    fleet::Cause,
};

/// A watcher of a session is recorded in the audit log once per this long.
const WATCH_RECORDED_EVERY: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);

/// When each user was last recorded watching each session (`AGENT/NUMBER`).
#[derive(Debug, Default)]
pub struct Watchers(std::sync::Mutex<std::collections::HashMap<(String, String), jiff::Timestamp>>);

impl Watchers {
    /// Whether `user` watching `session` at `now` is to be recorded: the first time, and
    /// again after a while.
    fn is_news(&self, user: &str, session: &str, now: jiff::Timestamp) -> bool {
        let mut seen = crate::lock(&self.0);
        let key = (user.to_owned(), session.to_owned());
        let news = seen
            .get(&key)
            .is_none_or(|last| WATCH_RECORDED_EVERY <= now.duration_since(*last));
        if news {
            seen.retain(|_, last| now.duration_since(*last) < WATCH_RECORDED_EVERY);
            seen.insert(key, now);
        }
        news
    }
}

/// How many changes of a session's history are shown.
const HISTORY: u32 = 100;
/// How long an agent gets to take a screenshot.
const SCREENSHOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long an agent gets to make a session anew.
const RESTART_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Only the sessions of this agent.
    pub(crate) agent: Option<String>,
}

/// Every graphical session of every agent (or of one), as its agent last reported it.
#[utoipa::path(
    get,
    path = "/sessions",
    tag = "sessions",
    security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = [Session]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn list_sessions(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Session>>, ApiError> {
    caller.require(Resource::Sessions, Action::View, query.agent.as_deref())?;
    let sessions = state.store.sessions(query.agent.as_deref()).await?;
    let visible = sessions
        .into_iter()
        .filter(|session| caller.may(Resource::Sessions, Action::View, Some(&session.agent)));
    Ok(Json(visible.map(to_wire).collect()))
}

/// One graphical session with its history, newest first.
#[utoipa::path(
    get,
    path = "/sessions/{agent}/{number}",
    tag = "sessions",
    security(("bearer" = [])),
    params(("agent" = String, Path), ("number" = u32, Path)),
    responses(
        (status = 200, body = SessionDetail),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub(crate) async fn get_session(
    State(state): State<AppState>,
    caller: Caller,
    Path((agent, number)): Path<(String, String)>,
) -> Result<Json<SessionDetail>, ApiError> {
    caller.require(Resource::Sessions, Action::View, Some(&agent))?;
    let not_found = format!("agent {agent:?} has no graphical session {number:?}");
    let number: u32 = number
        .parse()
        .map_err(|_| ApiError::not_found(ErrorCode::SessionNotFound, not_found.clone()))?;
    let (session, history) = state
        .store
        .session(&agent, number, HISTORY)
        .await
        .map_err(|err| ApiError::from_lookup(err, ErrorCode::SessionNotFound, not_found))?;
    Ok(Json(SessionDetail {
        session: to_wire(session),
        history: history
            .into_iter()
            .map(|change| SessionChange {
                state: state_to_wire(change.state),
                run_id: change.run_id,
                reason: change.reason,
                at: change.at,
            })
            .collect(),
    }))
}

/// A screenshot of a graphical session, as PNG, taken now by its agent.
#[utoipa::path(
    get,
    path = "/sessions/{agent}/{number}/screenshot",
    tag = "sessions",
    security(("bearer" = [])),
    params(("agent" = String, Path), ("number" = u32, Path)),
    responses(
        (status = 200, description = "The session's screen", content_type = "image/png"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The agent is offline, or the session has no screen now"),
        (status = 503, body = ErrorBody, description = "The agent is connected to another node, or did not answer"),
    )
)]
pub(crate) async fn screenshot(
    State(state): State<AppState>,
    caller: Caller,
    audit: AuditSlot,
    Path((agent, number)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Resource::Sessions, Action::View, Some(&agent))?;
    let (holder, number) = existing(&state, &agent, &number).await?;
    record_watcher(&state, &caller, &audit, &format!("{agent}/{number}")).await;
    let request = AgentRequest::Screenshot { session: number };
    let reply = state
        .fleet
        .ask(&holder, request, SCREENSHOT_TIMEOUT)
        .await?;
    match reply {
        AgentReply::Screenshot { png } => {
            let png = base64::engine::general_purpose::STANDARD
                .decode(png)
                .map_err(|err| {
                    ApiError::internal(format!("a screenshot that is not base64: {err}"))
                })?;
            Ok((
                [
                    (header::CONTENT_TYPE, "image/png"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                png,
            ))
        }
        AgentReply::Done => Err(ApiError::internal(
            "the agent answered a screenshot with none",
        )),
        AgentReply::Failed { message } => Err(refused(message)),
    }
}

fn refused(message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, ErrorCode::InvalidState, message)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct RestartQuery {
    /// Restart a session in use too: its run's display dies, and the run fails.
    #[serde(default)]
    pub(crate) force: bool,
}

/// Makes a graphical session anew: its X server is stopped and started again. A session in
/// use is refused unless `force`.
#[utoipa::path(
    post,
    path = "/sessions/{agent}/{number}/restart",
    tag = "sessions",
    security(("bearer" = [])),
    params(("agent" = String, Path), ("number" = u32, Path), RestartQuery),
    responses(
        (status = 204, description = "Restarted; the session is ready again"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The agent is offline, or the session is in use"),
        (status = 503, body = ErrorBody, description = "The agent is connected to another node, or did not answer"),
    )
)]
pub(crate) async fn restart_session(
    State(state): State<AppState>,
    caller: Caller,
    Path((agent, number)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<RestartQuery>,
) -> Result<StatusCode, ApiError> {
    caller.require(Resource::Agents, Action::Admin, Some(&agent))?;
    let (holder, number) = existing(&state, &agent, &number).await?;
    let request = AgentRequest::RestartSession {
        session: number,
        force: query.force,
    };
    match state.fleet.ask(&holder, request, RESTART_TIMEOUT).await? {
        AgentReply::Done => Ok(StatusCode::NO_CONTENT),
        AgentReply::Failed { message } => Err(refused(message)),
        AgentReply::Screenshot { .. } => Err(ApiError::internal(
            "the agent answered a restart with a screenshot",
        )),
    }
}

/// The agent of an existing session, and the session's number; 404 otherwise.
async fn existing(
    state: &AppState,
    agent: &str,
    number: &str,
) -> Result<(dirigent_domain::agent::Agent, u32), ApiError> {
    let not_found = format!("agent {agent:?} has no graphical session {number:?}");
    let number: u32 = number
        .parse()
        .map_err(|_| ApiError::not_found(ErrorCode::SessionNotFound, not_found.clone()))?;
    state
        .store
        .session(agent, number, 0)
        .await
        .map_err(|err| ApiError::from_lookup(err, ErrorCode::SessionNotFound, not_found))?;
    Ok((state.store.agent(agent).await?, number))
}

/// How long an agent gets to take an operator's input.
const INPUT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// At most this many input events in one request, and characters in one text.
const MAX_INPUT_EVENTS: usize = 1000;
const MAX_INPUT_TEXT: usize = 10_000;

/// Takes a session over: the caller's mouse and keyboard go to it (`POST …/input`) until they
/// give it back. The run using it is paused meanwhile unless `pause_run` is false.
#[utoipa::path(
    post,
    path = "/sessions/{agent}/{number}/control",
    tag = "sessions",
    security(("bearer" = [])),
    params(("agent" = String, Path), ("number" = u32, Path)),
    request_body = ControlRequest,
    responses(
        (status = 200, body = Session),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Another operator controls it"),
    )
)]
pub(crate) async fn take_control(
    State(state): State<AppState>,
    caller: Caller,
    Path((agent, number)): Path<(String, String)>,
    ApiJson(request): ApiJson<ControlRequest>,
) -> Result<Json<Session>, ApiError> {
    caller.require(Resource::Sessions, Action::Control, Some(&agent))?;
    let (holder, number) = existing(&state, &agent, &number).await?;
    let now = state.clock.now();
    let held = state
        .store
        .take_session_control(holder.id, number, &caller.username, now)
        .await?;
    if let Some((user, since)) = held {
        return Err(refused(format!(
            "{agent}/{number} is controlled by {user} since {since}"
        )));
    }
    let (session, _) = state.store.session(&agent, number, 0).await?;
    if request.pause_run
        && let Some(run_id) = &session.run_id
    {
        let run = state.fleet.run(run_id).await?;
        if run.state == dirigent_domain::run::RunState::Running {
            let cause = Cause::User(caller.username.clone());
            state.fleet.operate(run_id, Operation::Pause, cause).await?;
            state
                .store
                .set_session_paused_run(holder.id, number, run_id)
                .await?;
        }
    }
    let (session, _) = state.store.session(&agent, number, 0).await?;
    Ok(Json(to_wire(session)))
}

/// Gives a session back: the run paused for the operator resumes. The operator who holds it
/// gives it back, or an administrator of the agent.
#[utoipa::path(
    delete,
    path = "/sessions/{agent}/{number}/control",
    tag = "sessions",
    security(("bearer" = [])),
    params(("agent" = String, Path), ("number" = u32, Path)),
    responses(
        (status = 204, description = "Given back"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Another operator controls it"),
    )
)]
pub(crate) async fn give_back(
    State(state): State<AppState>,
    caller: Caller,
    Path((agent, number)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Resource::Sessions, Action::Control, Some(&agent))?;
    let (holder, number) = existing(&state, &agent, &number).await?;
    let (session, _) = state.store.session(&agent, number, 0).await?;
    if let Some((user, since)) = &session.controlled_by
        && *user != caller.username
        && !caller.may(Resource::Agents, Action::Admin, Some(&agent))
    {
        return Err(refused(format!(
            "{agent}/{number} is controlled by {user} since {since}"
        )));
    }
    let paused = state
        .store
        .release_session_control(holder.id, number)
        .await?;
    if let Some(run_id) = paused
        && state.fleet.run(&run_id).await?.state == dirigent_domain::run::RunState::Paused
    {
        let cause = Cause::User(caller.username.clone());
        state
            .fleet
            .operate(&run_id, Operation::Resume, cause)
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Sends the mouse and keyboard input of the operator who controls a session.
#[utoipa::path(
    post,
    path = "/sessions/{agent}/{number}/input",
    tag = "sessions",
    security(("bearer" = [])),
    params(("agent" = String, Path), ("number" = u32, Path)),
    request_body = InputRequest,
    responses(
        (status = 204, description = "The session's X server took it"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The caller does not control the session"),
        (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "The agent is connected to another node, or did not answer"),
    )
)]
pub(crate) async fn send_input(
    State(state): State<AppState>,
    caller: Caller,
    Path((agent, number)): Path<(String, String)>,
    ApiJson(request): ApiJson<InputRequest>,
) -> Result<StatusCode, ApiError> {
    caller.require(Resource::Sessions, Action::Control, Some(&agent))?;
    let too_long = request.events.iter().any(|event| match event {
        InputEvent::Text { text } => MAX_INPUT_TEXT < text.chars().count(),
        InputEvent::Key { key } => 32 < key.len(),
        InputEvent::Move { .. } | InputEvent::Click { .. } => false,
    });
    if MAX_INPUT_EVENTS < request.events.len() || too_long {
        return Err(ApiError::invalid(InvalidField::new(
            "events",
            format!(
                "at most {MAX_INPUT_EVENTS} events, texts of at most {MAX_INPUT_TEXT} characters"
            ),
        )));
    }
    let (holder, number) = existing(&state, &agent, &number).await?;
    let (session, _) = state.store.session(&agent, number, 0).await?;
    match &session.controlled_by {
        Some((user, _)) if *user == caller.username => {}
        Some((user, since)) => {
            return Err(refused(format!(
                "{agent}/{number} is controlled by {user} since {since}"
            )));
        }
        None => {
            return Err(refused(format!(
                "take control of {agent}/{number} first (POST …/control)"
            )));
        }
    }
    let request = AgentRequest::Input {
        session: number,
        events: request.events,
    };
    match state.fleet.ask(&holder, request, INPUT_TIMEOUT).await? {
        AgentReply::Done => Ok(StatusCode::NO_CONTENT),
        AgentReply::Failed { message } => Err(refused(message)),
        AgentReply::Screenshot { .. } => Err(ApiError::internal(
            "the agent answered input with a screenshot",
        )),
    }
}

/// Watches a session's screen live, over a WebSocket. Each binary message is a part of the
/// screen that changed: its left and top (two big-endian 16-bit numbers each), then a PNG. The
/// whole screen comes first; nothing comes while nothing changes, and nothing is captured once
/// the socket closes.
#[utoipa::path(
    get,
    path = "/sessions/{agent}/{number}/live",
    tag = "sessions",
    security(("bearer" = [])),
    params(("agent" = String, Path), ("number" = u32, Path)),
    responses(
        (status = 101, description = "The WebSocket of the session's screen"),
        (status = 400, body = ErrorBody, description = "Not a WebSocket request"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The agent is offline, or the session has no screen now"),
        (status = 503, body = ErrorBody, description = "The agent is connected to another node, or did not answer"),
    )
)]
pub(crate) async fn live(
    State(state): State<AppState>,
    caller: Caller,
    audit: AuditSlot,
    Path((agent, number)): Path<(String, String)>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    caller.require(Resource::Sessions, Action::View, Some(&agent))?;
    let (holder, number) = existing(&state, &agent, &number).await?;
    let upgrade = upgrade.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::MalformedRequest,
            "this address takes a WebSocket connection",
        )
    })?;
    record_watcher(&state, &caller, &audit, &format!("{agent}/{number}")).await;
    let (watch, mut regions) = state.fleet.watch(&holder, number).await?;
    let fleet = state.fleet.clone();
    Ok(upgrade.on_upgrade(move |socket| async move {
        use futures_util::{SinkExt, StreamExt};
        let (mut sink, mut incoming) = socket.split();
        loop {
            tokio::select! {
                region = regions.recv() => {
                    let Some(region) = region else { break };
                    let mut message = Vec::with_capacity(4 + region.png.len());
                    message.extend_from_slice(&region.x.to_be_bytes());
                    message.extend_from_slice(&region.y.to_be_bytes());
                    message.extend_from_slice(&region.png);
                    if sink.send(Message::Binary(message.into())).await.is_err() {
                        break;
                    }
                }
                message = incoming.next() => match message {
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        fleet.unwatch(holder.id, watch);
    }))
}

/// Records in the audit log that the caller watches a session (once in a while).
async fn record_watcher(state: &AppState, caller: &Caller, audit: &AuditSlot, session: &str) {
    let now = state.clock.now();
    if state.watchers.is_news(&caller.username, session, now)
        && let Some(mut record) = audit.take()
    {
        // Watching is recorded (once in a while), unlike other reads.
        record.action = "WATCH /api/v1/sessions/{agent}/{number}".to_owned();
        record.outcome = "allowed".to_owned();
        record.status = 200;
        if let Err(err) = state.writer.audit(record).await {
            tracing::error!(?err, "could not write the audit record of a watcher");
        }
    }
}

/// Who may see a run's frames: those who may read the run and view its agent's sessions.
async fn frames_of(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<dirigent_domain::run::Run, ApiError> {
    caller.require_some_runs(Action::Read)?;
    caller.require(Resource::Sessions, Action::View, None)?;
    let run = state.fleet.run(id).await?;
    caller.require_run(&run.id, &run.robot, Action::Read)?;
    caller.require(Resource::Sessions, Action::View, run.agent.as_deref())?;
    Ok(run)
}

/// The frames kept of a run's screen, oldest first: thumbnails taken while it ran, and the
/// screen it ended on.
#[utoipa::path(
    get,
    path = "/runs/{id}/frames",
    tag = "sessions",
    security(("bearer" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, body = [RunFrame]),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub(crate) async fn run_frames(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(id): PathSegment,
) -> Result<Json<Vec<RunFrame>>, ApiError> {
    let run = frames_of(&state, &caller, &id).await?;
    let frames = state.store.run_frames(&run.id).await?;
    Ok(Json(
        frames
            .into_iter()
            .map(|frame| RunFrame {
                seq: frame.seq,
                at: frame.at,
                last: frame.last,
                bytes: frame.bytes,
            })
            .collect(),
    ))
}

/// One frame of a run's screen, as PNG.
#[utoipa::path(
    get,
    path = "/runs/{id}/frames/{seq}",
    tag = "sessions",
    security(("bearer" = [])),
    params(("id" = String, Path), ("seq" = u64, Path)),
    responses(
        (status = 200, description = "The frame", content_type = "image/png"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub(crate) async fn run_frame(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, seq)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let run = frames_of(&state, &caller, &id).await?;
    let not_found = format!("run {id:?} has no frame {seq:?}");
    let seq: u64 = seq
        .parse()
        .map_err(|_| ApiError::not_found(ErrorCode::FrameNotFound, not_found.clone()))?;
    let png = state
        .store
        .run_frame(&run.id, seq)
        .await
        .map_err(|err| ApiError::from_lookup(err, ErrorCode::FrameNotFound, not_found))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "private, max-age=86400, immutable"),
        ],
        png,
    ))
}

fn state_to_wire(state: domain::SessionState) -> SessionState {
    match state {
        domain::SessionState::Starting => SessionState::Starting,
        domain::SessionState::Ready => SessionState::Ready,
        domain::SessionState::InUse => SessionState::InUse,
        domain::SessionState::Restarting => SessionState::Restarting,
        domain::SessionState::Failed => SessionState::Failed,
    }
}

fn to_wire(session: domain::Session) -> Session {
    Session {
        id: session.id(),
        state: state_to_wire(session.state),
        agent: session.agent,
        number: session.number,
        display: session.display,
        width: session.width,
        height: session.height,
        agent_online: session.agent_online,
        run_id: session.run_id,
        reason: session.reason,
        updated_at: session.updated_at,
        controlled_since: session.controlled_by.as_ref().map(|(_, since)| *since),
        controlled_by: session.controlled_by.map(|(user, _)| user),
    }
}
