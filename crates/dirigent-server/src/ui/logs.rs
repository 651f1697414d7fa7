//! The Logs page: the log store searched as the API searches it for the same reader (the
//! page's address holds the filters), a page at a time by cursor, and followed live.

use askama::Template;
use axum::{Json, extract::State, http::StatusCode, response::Response};
use dirigent_proto::log::{LogLevel, LogRecord};

use super::{Frame, Viewer};
use crate::{
    AppState,
    api::{self, ApiQuery, logs::LogParams},
    error::ApiError,
};

#[derive(Template)]
#[template(path = "logs.html")]
struct LogsPage<'a> {
    frame: &'a Frame,
    params: LogParams,
    records: Vec<LogRecord>,
    /// Why the search could not run (a query that does not parse, say).
    problem: Option<String>,
    /// The address of the next (older) page, when this one is full.
    older: Option<String>,
    /// The address of the live tail with the same filters.
    tail: String,
}

impl LogsPage<'_> {
    fn level(&self, record: &LogRecord) -> &'static str {
        match record.level {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    /// A record's fields as `key=value` words.
    fn fields(&self, record: &LogRecord) -> String {
        record
            .fields
            .iter()
            .flatten()
            .map(|(key, value)| match value {
                serde_json::Value::String(text) => format!("{key}={text}"),
                other => format!("{key}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Records a page shows.
const LOGS_PAGE: u32 = 100;

pub(super) async fn logs(
    State(state): State<AppState>,
    viewer: Viewer,
    params: Result<ApiQuery<LogParams>, ApiError>,
) -> Response {
    let page = match params {
        Ok(ApiQuery(params)) => Ok(logs_page(&state, &viewer, params).await),
        Err(err) => Err(err),
    };
    viewer.page(page.and_then(|page| page))
}

async fn logs_page<'a>(
    state: &AppState,
    viewer: &'a Viewer,
    params: LogParams,
) -> Result<LogsPage<'a>, ApiError> {
    let filters = filters(&params);
    let tail = format!("/api/v1/logs/stream?{filters}");
    let mut asked = params.clone();
    asked.limit = Some(params.limit.unwrap_or(LOGS_PAGE));
    let found =
        api::logs::search_logs(State(state.clone()), viewer.caller.clone(), ApiQuery(asked)).await;
    let (records, next, problem) = match found {
        Ok(Json(page)) => (page.records, page.next_cursor, None),
        Err(err) if err.status == StatusCode::UNPROCESSABLE_ENTITY => {
            (Vec::new(), None, Some(err.message))
        }
        Err(err) => return Err(err),
    };
    let older = next.map(|cursor| {
        let mut address = format!("/logs?{filters}");
        if !filters.is_empty() {
            address.push('&');
        }
        let cursor: String = form_urlencoded::byte_serialize(cursor.as_bytes()).collect();
        address.push_str(&format!("cursor={cursor}"));
        if let Some(order) = &params.order {
            address.push_str(&format!("&order={order}"));
        }
        address
    });
    Ok(LogsPage {
        frame: &viewer.frame,
        params,
        records,
        problem,
        older,
        tail,
    })
}

/// The page's filters as a query string (without cursor, order and limit).
fn filters(params: &LogParams) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    let times = [
        ("since", params.since.map(|at| at.to_string())),
        ("until", params.until.map(|at| at.to_string())),
    ];
    let texts = [
        ("q", params.q.clone()),
        ("source", params.source.clone()),
        ("level", params.level.clone()),
        ("robot", params.robot.clone()),
        ("run", params.run.clone()),
        ("activity", params.activity.clone()),
        ("agent", params.agent.clone()),
    ];
    for (name, value) in texts.into_iter().chain(times) {
        if let Some(value) = value.filter(|value| !value.is_empty()) {
            query.append_pair(name, &value);
        }
    }
    query.finish()
}
