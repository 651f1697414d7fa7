//! Activities: typed operations on agents and on the orchestrator — asked, listed, waited
//! for, followed and cancelled. A caller reads the activities they asked for; with
//! `console:use`, everyone's.

use std::{convert::Infallible, time::Duration};

use axum::body::Bytes;
use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{
        IntoResponse,
        sse::{Event, KeepAlive, Sse},
    },
};
use dirigent_domain::access::{Action, Resource};
use dirigent_proto::{
    activity::{Activity, ActivityRequest, ActivityState, Blob, CatalogEntry},
    error::{ErrorBody, ErrorCode},
    run::LogLine,
};
use dirigent_store::{ActivityQuery, ActivityRecord, StoreError};
use futures_util::stream;
use serde::Deserialize;
use sha2::Digest;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use crate::{
    AppState,
    activities::{self, state_from_wire, to_wire},
    api::{ApiJson, ApiQuery, PathSegment},
    audit::AuditSlot,
    auth::Caller,
    error::ApiError,
    fleet::FleetEvent,
};

/// Asks for an activity. For a label selector the answer is the fan-out, whose `children`
/// are one activity per matching agent.
#[utoipa::path(
    post,
    path = "/activities",
    tag = "activities",
    security(("bearer" = [])),
    request_body = ActivityRequest,
    responses(
        (status = 201, body = Activity),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "No agent of this name", body = ErrorBody),
        (status = 413, description = "A file or stdin over the limit", body = ErrorBody),
        (status = 422, description = "Unknown operation, or arguments against its schema (`field` is the JSON pointer)", body = ErrorBody),
    )
)]
pub(crate) async fn create_activity(
    State(state): State<AppState>,
    caller: Caller,
    audit: AuditSlot,
    ApiJson(request): ApiJson<ActivityRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let target = request.target.trim();
    audit.about(match target {
        "server" => "server".to_owned(),
        agent if !agent.contains('=') => format!("agent:{agent}"),
        selector => format!("agents:{selector}"),
    });
    let record = activities::create(&state, &caller, request).await?;
    audit.about(format!("activity:{}", record.id));
    let shown = shown(&state, record.id.clone()).await?;
    Ok((StatusCode::CREATED, Json(shown)))
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    pub(crate) state: Option<ActivityState>,
    /// `server`, an agent's name, or a fan-out's selector.
    pub(crate) target: Option<String>,
    pub(crate) operation: Option<String>,
    /// Only those this user asked for.
    pub(crate) requested_by: Option<String>,
    /// Only those older than this activity (the cursor: the last id of the previous page).
    pub(crate) before: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    pub(crate) limit: Option<u32>,
}

/// Activities, newest first: the caller's own, or with `console:use` everyone's.
#[utoipa::path(
    get,
    path = "/activities",
    tag = "activities",
    security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = [Activity]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn list_activities(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Activity>>, ApiError> {
    let everyone = may_read_all(&caller)?;
    if !everyone
        && query
            .requested_by
            .as_ref()
            .is_some_and(|user| *user != caller.username)
    {
        caller.require(Resource::Console, Action::Use, None)?;
    }
    let limit = super::page_limit(query.limit, 100, 1000)?;
    let own = (!everyone).then_some(caller.username.as_str());
    let records = state
        .store
        .activities(&ActivityQuery {
            state: query.state.map(state_from_wire),
            target: query.target.as_deref(),
            operation: query.operation.as_deref(),
            requested_by: own.or(query.requested_by.as_deref()),
            before: query.before.as_deref(),
            limit,
        })
        .await?;
    let mut shown = Vec::with_capacity(records.len());
    for record in records {
        shown.push(with_children(&state, record).await?);
    }
    Ok(Json(shown))
}

/// The catalogue: every operation, where it runs, the permission it needs, and the JSON
/// Schemas of its arguments and result.
#[utoipa::path(
    get,
    path = "/activities/catalog",
    tag = "activities",
    security(("bearer" = [])),
    responses((status = 200, body = [CatalogEntry]), (status = 401, body = ErrorBody))
)]
pub(crate) async fn catalog(_caller: Caller) -> Json<Vec<CatalogEntry>> {
    Json(activities::catalog())
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct GetQuery {
    /// Wait up to this many seconds (at most 300) for it to end.
    wait: Option<u32>,
}

/// One activity; with `wait`, once it has ended (or the wait is over).
#[utoipa::path(
    get,
    path = "/activities/{id}",
    tag = "activities",
    security(("bearer" = [])),
    params(("id" = String, Path), GetQuery),
    responses(
        (status = 200, body = Activity),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub(crate) async fn get_activity(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(id): PathSegment,
    ApiQuery(query): ApiQuery<GetQuery>,
) -> Result<Json<Activity>, ApiError> {
    let wait = match query.wait {
        Some(seconds) if 300 < seconds => {
            return Err(ApiError::invalid(dirigent_domain::InvalidField::new(
                "wait",
                "must be at most 300 seconds",
            )));
        }
        seconds => Duration::from_secs(u64::from(seconds.unwrap_or(0))),
    };
    let mut events = state.fleet.subscribe();
    let record = readable(&state, &caller, &id).await?;
    if !record.state.is_final() && !wait.is_zero() {
        let ended = async {
            loop {
                match events.recv().await {
                    Ok(FleetEvent::Activity {
                        id: changed,
                        output: false,
                    }) if changed == id => {
                        if state
                            .store
                            .activity(&id)
                            .await
                            .is_ok_and(|now| now.state.is_final())
                        {
                            return;
                        }
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        };
        let _ = tokio::time::timeout(wait, ended).await;
    }
    Ok(Json(shown(&state, id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutputQuery {
    /// Only lines after this position.
    #[serde(default)]
    after: u64,
    /// At most this many lines (default 1000, at most 10000).
    limit: Option<u32>,
}

/// An activity's output lines, in order.
#[utoipa::path(
    get,
    path = "/activities/{id}/output",
    tag = "activities",
    security(("bearer" = [])),
    params(("id" = String, Path), OutputQuery),
    responses(
        (status = 200, body = [LogLine]),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub(crate) async fn activity_output(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(id): PathSegment,
    ApiQuery(query): ApiQuery<OutputQuery>,
) -> Result<Json<Vec<LogLine>>, ApiError> {
    readable(&state, &caller, &id).await?;
    let limit = super::page_limit(query.limit, 1000, 10_000)?;
    let lines = state
        .store
        .output(dirigent_store::OutputOf::Activity(&id), query.after, limit)
        .await?;
    Ok(Json(lines.into_iter().map(crate::logs::to_line).collect()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct FollowQuery {
    /// Start after this position.
    #[serde(default)]
    after: u64,
}

/// Follows an activity's output live as server-sent events: `line` events carry a LogLine,
/// and one `end` event carries the activity once it has ended and all its output was sent.
#[utoipa::path(
    get,
    path = "/activities/{id}/output/stream",
    tag = "activities",
    security(("bearer" = [])),
    params(("id" = String, Path), FollowQuery),
    responses(
        (status = 200, description = "text/event-stream of `line` and `end` events", content_type = "text/event-stream"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub(crate) async fn follow_output(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(id): PathSegment,
    ApiQuery(query): ApiQuery<FollowQuery>,
) -> Result<impl IntoResponse, ApiError> {
    // Subscribe before reading what is stored, so that nothing falls between the two.
    let events = state.fleet.subscribe();
    readable(&state, &caller, &id).await?;
    let follower = Follower {
        state,
        id,
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
    });
    let stream = futures_util::StreamExt::flatten(stream);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

struct Follower {
    state: AppState,
    id: String,
    last_seq: u64,
    events: tokio::sync::broadcast::Receiver<FleetEvent>,
    ended: bool,
}

impl Follower {
    /// The next events to send; `None` when the stream is over.
    async fn next_events(&mut self) -> Option<Vec<Event>> {
        loop {
            if self.ended {
                return None;
            }
            // Whether it had ended is read before its output, so the output is complete.
            let ended = self
                .state
                .store
                .activity(&self.id)
                .await
                .map_or(true, |activity| activity.state.is_final());
            let lines = self
                .state
                .store
                .output(
                    dirigent_store::OutputOf::Activity(&self.id),
                    self.last_seq,
                    1000,
                )
                .await
                .ok()?;
            if let Some(last) = lines.last().and_then(|line| line.seq) {
                self.last_seq = last;
            }
            let full_page = lines.len() == 1000;
            let mut events: Vec<Event> = lines
                .into_iter()
                .filter_map(|line| {
                    Event::default()
                        .event("line")
                        .json_data(crate::logs::to_line(line))
                        .ok()
                })
                .collect();
            if ended && !full_page {
                self.ended = true;
                let activity = shown(&self.state, self.id.clone()).await.ok()?;
                events.push(Event::default().event("end").json_data(activity).ok()?);
            }
            if !events.is_empty() {
                return Some(events);
            }
            loop {
                match self.events.recv().await {
                    Ok(FleetEvent::Activity { id, .. }) if id == self.id => break,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    }
}

/// Cancels an activity: one waiting ends at once; one running is stopped on its agent (its
/// process group killed) and ends when the agent reports it. A fan-out cancels its children.
#[utoipa::path(
    post,
    path = "/activities/{id}/cancel",
    tag = "activities",
    security(("bearer" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, body = Activity),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "It has ended", body = ErrorBody),
    )
)]
pub(crate) async fn cancel_activity(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(id): PathSegment,
) -> Result<Json<Activity>, ApiError> {
    let record = readable(&state, &caller, &id).await?;
    if record.state.is_final() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::InvalidState,
            format!("activity {id} has ended ({})", record.state.as_str()),
        ));
    }
    state
        .fleet
        .cancel_activity(&record, &caller.username)
        .await?;
    Ok(Json(shown(&state, id).await?))
}

/// Whether the caller reads everyone's activities (`console:use`) or only their own; a run
/// token, or an API token limited to other permissions, reads none.
fn may_read_all(caller: &Caller) -> Result<bool, ApiError> {
    let everyone = caller.may(Resource::Console, Action::Use, None);
    if !everyone && (caller.user_id.is_none() || caller.is_limited()) {
        caller.require(Resource::Console, Action::Use, None)?;
    }
    Ok(everyone)
}

/// Uploads a file for activities (a new agent binary for `agent.update`): answers its SHA-256,
/// by which activities name it. Kept for a week.
#[utoipa::path(
    post,
    path = "/blobs",
    tag = "activities",
    security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, body = Blob),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
    )
)]
pub(crate) async fn upload_blob(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Resource::Agents, Action::Admin, None)?;
    let binary = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .trim()
                .eq_ignore_ascii_case("application/octet-stream")
        });
    if !binary {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "the file must be sent as it is, with Content-Type: application/octet-stream",
        ));
    }
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::for_status(StatusCode::PAYLOAD_TOO_LARGE),
        status => ApiError::new(status, ErrorCode::MalformedRequest, rejection.body_text()),
    })?;
    let sha256: String = sha2::Sha256::digest(&body)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    state
        .store
        .put_blob(
            &sha256,
            &body,
            BLOB_CHUNK,
            &caller.username,
            state.clock.now(),
        )
        .await?;
    let blob = Blob {
        sha256,
        size: body.len() as u64,
    };
    Ok((StatusCode::CREATED, Json(blob)))
}

/// The chunks files are kept in.
const BLOB_CHUNK: usize = 4 * 1024 * 1024;

/// An uploaded file, for the agent an activity names it to.
#[utoipa::path(
    get,
    path = "/agent/v1/blobs/{sha256}",
    tag = "agents",
    security(("bearer" = [])),
    params(("sha256" = String, Path)),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub(crate) async fn download_blob(
    State(state): State<AppState>,
    _agent: crate::fleet::link::AgentCaller,
    PathSegment(sha256): PathSegment,
) -> Result<impl IntoResponse, ApiError> {
    let missing = || {
        ApiError::not_found(
            ErrorCode::BlobNotFound,
            format!("no file with SHA-256 {sha256}"),
        )
    };
    let size = state.store.blob_size(&sha256).await?.ok_or_else(missing)?;
    let chunks = stream::unfold(
        (state, sha256.clone(), 0u64),
        |(state, sha256, seq)| async move {
            match state.store.blob_chunk(&sha256, seq).await {
                Ok(Some(chunk)) => Some((
                    Ok::<_, std::io::Error>(Bytes::from(chunk)),
                    (state, sha256, seq + 1),
                )),
                Ok(None) => None,
                Err(err) => Some((
                    Err(std::io::Error::other(err.to_string())),
                    (state, sha256, u64::MAX),
                )),
            }
        },
    );
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_owned(),
            ),
            (axum::http::header::CONTENT_LENGTH, size.to_string()),
        ],
        axum::body::Body::from_stream(chunks),
    ))
}

/// An activity the caller may read: their own, or anyone's with `console:use`.
async fn readable(state: &AppState, caller: &Caller, id: &str) -> Result<ActivityRecord, ApiError> {
    let everyone = may_read_all(caller)?;
    let record = state.store.activity(id).await.map_err(|err| match err {
        StoreError::NotFound => ApiError::not_found(
            ErrorCode::ActivityNotFound,
            format!("no activity with id {id:?}"),
        ),
        other => other.into(),
    })?;
    if !everyone && record.requested_by != caller.username {
        caller.require(Resource::Console, Action::Use, None)?;
    }
    Ok(record)
}

async fn shown(state: &AppState, id: String) -> Result<Activity, ApiError> {
    let record = state.store.activity(&id).await?;
    with_children(state, record).await
}

async fn with_children(state: &AppState, record: ActivityRecord) -> Result<Activity, ApiError> {
    let children = match record.is_fan_out() {
        true => state
            .store
            .activity_children(&record.id)
            .await?
            .into_iter()
            .map(|child| child.id)
            .collect(),
        false => Vec::new(),
    };
    Ok(to_wire(record, children))
}
