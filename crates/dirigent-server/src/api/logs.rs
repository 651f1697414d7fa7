//! The log store's routes: search a page of records, export a whole query as NDJSON, and
//! follow new records live (server-sent events), all with the same filters. What a caller
//! reads is bounded by their permissions: robots' records by `logs:read` on the robot, agents'
//! by `logs:read` on every robot, activities' by `console:use`, the orchestrator's own by
//! `server:admin`.

use std::{convert::Infallible, time::Duration};

use axum::{
    Json,
    body::Body,
    extract::State,
    http::header,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use dirigent_domain::{
    InvalidField,
    access::{Action, Resource},
    log::{Level, Search, Source},
};
use dirigent_proto::{error::ErrorBody, log::LogPage};
use dirigent_store::{LogQuery, LogRecord, LogScope};
use futures_util::stream::{self, StreamExt};
use jiff::Timestamp;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use crate::{AppState, api::ApiQuery, auth::Caller, error::ApiError, fleet::FleetEvent};

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogParams {
    /// Full-text search: words (all must occur), `"a phrase"`, `prefix*`, `a OR b`, `-word`.
    pub(crate) q: Option<String>,
    /// Only these sources, comma-separated: `robot`, `agent`, `server`, `activity`.
    pub(crate) source: Option<String>,
    /// Only this level and above: `trace`, `debug`, `info`, `warn`, `error`.
    pub(crate) level: Option<String>,
    /// Only this robot's records.
    pub(crate) robot: Option<String>,
    /// Only this run's output.
    pub(crate) run: Option<String>,
    /// Only this activity's output.
    pub(crate) activity: Option<String>,
    /// Only records from (or about runs on) this agent.
    pub(crate) agent: Option<String>,
    /// Only records at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub(crate) since: Option<Timestamp>,
    /// Only records before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub(crate) until: Option<Timestamp>,
    /// Where the previous page ended (its `next_cursor`); for the live tail, the record to
    /// follow from.
    pub(crate) cursor: Option<String>,
    /// `newest` first (the default) or `oldest` first.
    pub(crate) order: Option<String>,
    /// At most this many per page (default 100, at most 1000); for the live tail, how many
    /// of the latest records come first (default 50, at most 1000).
    pub(crate) limit: Option<u32>,
}

/// A query checked: what to read, and the caller's scope.
struct Checked {
    search: Option<Search>,
    sources: Vec<Source>,
    level: Option<Level>,
    cursor: Option<u64>,
    oldest_first: bool,
    scope: LogScope,
}

impl LogParams {
    /// Checks the parameters and the caller's right to what they ask.
    fn check(&self, caller: &Caller) -> Result<Checked, ApiError> {
        caller.require(Resource::Logs, Action::Read, None)?;
        let search = match self.q.as_deref() {
            Some(q) if !q.trim().is_empty() => Some(Search::parse(q).map_err(ApiError::invalid)?),
            _ => None,
        };
        let mut sources = Vec::new();
        for name in self.source.iter().flat_map(|list| list.split(',')) {
            let name = name.trim();
            let source = Source::parse(name).ok_or_else(|| {
                ApiError::invalid(InvalidField::new(
                    "source",
                    format!("{name:?} is not one of robot, agent, server, activity"),
                ))
            })?;
            sources.push(source);
        }
        let level = match self.level.as_deref() {
            None => None,
            Some(name) => Some(Level::parse(name).ok_or_else(|| {
                ApiError::invalid(InvalidField::new(
                    "level",
                    format!("{name:?} is not one of trace, debug, info, warn, error"),
                ))
            })?),
        };
        let cursor = match self.cursor.as_deref() {
            None => None,
            Some(cursor) => Some(cursor.parse::<u64>().map_err(|_| {
                ApiError::invalid(InvalidField::new(
                    "cursor",
                    "is not a cursor this API gave (a record's id)",
                ))
            })?),
        };
        let oldest_first = match self.order.as_deref() {
            None | Some("newest") => false,
            Some("oldest") => true,
            Some(_) => {
                return Err(ApiError::invalid(InvalidField::new(
                    "order",
                    "must be newest or oldest",
                )));
            }
        };
        if let (Some(since), Some(until)) = (self.since, self.until)
            && until <= since
        {
            return Err(ApiError::invalid(InvalidField::new(
                "until",
                "must be after since",
            )));
        }
        let scope = scope_of(caller);
        let denied = |source: &Source| match source {
            Source::Robot => false,
            Source::Agent => !scope.agent,
            Source::Activity => !scope.activity,
            Source::Server => !scope.server,
        };
        if let Some(source) = sources.iter().find(|source| denied(source)) {
            let needs = match source {
                Source::Agent => "logs:read on every robot",
                Source::Activity => "console:use",
                _ => "server:admin",
            };
            return Err(ApiError::forbidden(format!(
                "{} may not read the {source} records: that needs {needs}",
                caller.username
            )));
        }
        Ok(Checked {
            search,
            sources,
            level,
            cursor,
            oldest_first,
            scope,
        })
    }

    fn query<'a>(&'a self, checked: &'a Checked, limit: u32) -> LogQuery<'a> {
        LogQuery {
            search: checked.search.as_ref(),
            sources: &checked.sources,
            level: checked.level,
            robot: self.robot.as_deref(),
            run_id: self.run.as_deref(),
            activity_id: self.activity.as_deref(),
            agent: self.agent.as_deref(),
            since: self.since,
            until: self.until,
            cursor: checked.cursor,
            oldest_first: checked.oldest_first,
            limit,
            scope: checked.scope.clone(),
        }
    }
}

/// What the caller may read, as the store filters it (robots by the patterns of the caller's
/// own role grants; an API token's narrower limits are applied to each record after).
fn scope_of(caller: &Caller) -> LogScope {
    let patterns = caller.patterns(Resource::Logs, Action::Read);
    let every_robot =
        patterns.contains(&"*") && caller.may(Resource::Logs, Action::Read, Some("*"));
    LogScope {
        robots: (!every_robot).then(|| patterns.into_iter().map(str::to_owned).collect()),
        agent: every_robot,
        activity: caller.may(Resource::Console, Action::Use, None),
        server: caller.may(Resource::Server, Action::Admin, None),
    }
}

/// Whether the caller may read this record (the store's scope, with an API token's limits).
fn readable(caller: &Caller, record: &LogRecord) -> bool {
    match record.robot.as_deref() {
        Some(robot) if record.source == Source::Robot => {
            caller.may(Resource::Logs, Action::Read, Some(robot))
        }
        _ => true,
    }
}

/// One page read: the records the caller may read, the id of the last record looked at,
/// and whether the page was full (so more may follow).
struct Page {
    records: Vec<LogRecord>,
    last: Option<u64>,
    full: bool,
}

impl Page {
    /// Where the next page starts, when there may be one.
    fn next_cursor(&self) -> Option<u64> {
        self.last.filter(|_| self.full)
    }
}

async fn page(state: &AppState, caller: &Caller, query: &LogQuery<'_>) -> Result<Page, ApiError> {
    let records = state.store.logs(query).await?;
    let full = records.len() == query.limit as usize;
    let last = records.last().map(|record| record.id);
    let records = records
        .into_iter()
        .filter(|record| readable(caller, record))
        .collect();
    Ok(Page {
        records,
        last,
        full,
    })
}

/// Searches the log store: a page of records, newest first unless `order=oldest`.
#[utoipa::path(
    get,
    path = "/logs",
    tag = "logs",
    security(("bearer" = [])),
    params(LogParams),
    responses(
        (status = 200, body = LogPage),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub(crate) async fn search_logs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<LogParams>,
) -> Result<Json<LogPage>, ApiError> {
    let checked = params.check(&caller)?;
    let limit = super::page_limit(params.limit, 100, 1000)?;
    let page = page(&state, &caller, &params.query(&checked, limit)).await?;
    Ok(Json(LogPage {
        next_cursor: page.next_cursor().map(|id| id.to_string()),
        records: page.records.into_iter().map(crate::logs::to_wire).collect(),
    }))
}

/// Records read per page of an export.
const EXPORT_PAGE: u32 = 1000;

/// Exports every record a query matches as NDJSON (one JSON record a line), newest first
/// unless `order=oldest`; `limit` is the page size read at a time.
#[utoipa::path(
    get,
    path = "/logs/export",
    tag = "logs",
    security(("bearer" = [])),
    params(LogParams),
    responses(
        (status = 200, description = "application/x-ndjson: one LogRecord a line", content_type = "application/x-ndjson"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub(crate) async fn export_logs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<LogParams>,
) -> Result<Response, ApiError> {
    let checked = params.check(&caller)?;
    let limit = super::page_limit(params.limit, EXPORT_PAGE, EXPORT_PAGE)?;
    let export = Export {
        state,
        caller,
        params,
        cursor: checked.cursor,
        checked,
        limit,
        done: false,
    };
    let body = stream::unfold(export, |mut export| async move {
        if export.done {
            return None;
        }
        let mut checked_query = export.params.query(&export.checked, export.limit);
        checked_query.cursor = export.cursor;
        let chunk = match page(&export.state, &export.caller, &checked_query).await {
            Ok(page) => {
                export.cursor = page.next_cursor();
                export.done = export.cursor.is_none();
                let mut chunk = String::new();
                for record in page.records {
                    if let Ok(line) = serde_json::to_string(&crate::logs::to_wire(record)) {
                        chunk.push_str(&line);
                        chunk.push('\n');
                    }
                }
                Ok::<_, std::io::Error>(chunk)
            }
            Err(err) => {
                export.done = true;
                Err(std::io::Error::other(err.message))
            }
        };
        Some((chunk, export))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

struct Export {
    state: AppState,
    caller: Caller,
    params: LogParams,
    checked: Checked,
    cursor: Option<u64>,
    limit: u32,
    done: bool,
}

/// How often a live tail checks that its caller's credential still works.
const CREDENTIAL_CHECK: Duration = Duration::from_secs(30);

/// Follows the log store live as server-sent events (`record` events, oldest first): from
/// `cursor` when given, else the latest `limit` records (default 50) that match, then each
/// new one as it is stored.
#[utoipa::path(
    get,
    path = "/logs/stream",
    tag = "logs",
    security(("bearer" = [])),
    params(LogParams),
    responses(
        (status = 200, description = "text/event-stream of `record` events", content_type = "text/event-stream"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub(crate) async fn tail_logs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<LogParams>,
) -> Result<impl IntoResponse, ApiError> {
    let mut checked = params.check(&caller)?;
    if checked.oldest_first || params.order.is_some() {
        return Err(ApiError::invalid(InvalidField::new(
            "order",
            "a live tail always runs oldest first",
        )));
    }
    let backlog = super::page_limit(params.limit, 50, 1000)?;
    // Subscribe before reading what is stored, so that nothing falls between the two.
    let events = state.fleet.subscribe();
    let mut first = Vec::new();
    if checked.cursor.is_none() {
        let latest = page(&state, &caller, &params.query(&checked, backlog)).await?;
        checked.cursor = Some(match latest.records.first() {
            Some(newest) => newest.id,
            None => state.store.last_log_id().await?,
        });
        first = latest.records.into_iter().rev().collect();
    }
    checked.oldest_first = true;
    let tail = Tail {
        state,
        caller,
        params,
        checked,
        events,
        first,
        checked_at: tokio::time::Instant::now(),
    };
    let stream = stream::unfold(tail, |mut tail| async move {
        let records = tail.next_records().await?;
        let events: Vec<Result<Event, Infallible>> = records
            .into_iter()
            .filter_map(|record| {
                Event::default()
                    .event("record")
                    .id(record.id.to_string())
                    .json_data(crate::logs::to_wire(record))
                    .ok()
            })
            .map(Ok)
            .collect();
        Some((stream::iter(events), tail))
    })
    .flatten();
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

struct Tail {
    state: AppState,
    caller: Caller,
    params: LogParams,
    checked: Checked,
    events: tokio::sync::broadcast::Receiver<FleetEvent>,
    /// The latest records, sent first.
    first: Vec<LogRecord>,
    checked_at: tokio::time::Instant,
}

/// Records a tail reads at a time.
const TAIL_PAGE: u32 = 500;

impl Tail {
    /// The next records past the cursor, waiting for some to be stored; `None` ends the
    /// stream (the credential stopped working, or the server is stopping).
    async fn next_records(&mut self) -> Option<Vec<LogRecord>> {
        if !self.first.is_empty() {
            return Some(std::mem::take(&mut self.first));
        }
        loop {
            if CREDENTIAL_CHECK <= self.checked_at.elapsed() {
                if !self.caller.still_valid(&self.state).await {
                    return None;
                }
                self.checked_at = tokio::time::Instant::now();
            }
            let query = self.params.query(&self.checked, TAIL_PAGE);
            let page = page(&self.state, &self.caller, &query).await.ok()?;
            if let Some(last) = page.last {
                self.checked.cursor = Some(last);
            }
            if !page.records.is_empty() {
                return Some(page.records);
            }
            if page.full {
                continue;
            }
            // Wait for something to be stored (any node), or for the credential check.
            let waited = tokio::time::timeout(CREDENTIAL_CHECK, async {
                loop {
                    match self.events.recv().await {
                        Ok(FleetEvent::Logged) | Err(RecvError::Lagged(_)) => return true,
                        Ok(_) => {}
                        Err(RecvError::Closed) => return false,
                    }
                }
            })
            .await;
            if waited == Ok(false) {
                return None;
            }
        }
    }
}
