//! Work-item queues: the list with each queue's figures, and a queue's page with its settings,
//! its items found by the filters in the page's address, and bulk requeue and delete of what
//! the filters select.

use askama::Template;
use axum::{
    Json,
    extract::{Path, State},
    response::Response,
};
use dirigent_domain::access::{Action, Resource};
use dirigent_proto::queue::{Item, Queue};

use super::{Frame, Viewer, robots::Button};
use crate::{
    AppState,
    api::{self, ApiQuery, PathSegment, queues::ItemQuery},
    error::ApiError,
};

/// Items a page of a queue shows.
const ITEMS_PAGE: u32 = 100;

/// The statuses, in the order a queue's figures show them.
const STATUSES: [&str; 6] = [
    "new",
    "in_progress",
    "successful",
    "failed",
    "abandoned",
    "deleted",
];

/// How many items of `queue` have `status`.
fn count(queue: &Queue, status: &str) -> u64 {
    queue.stats.counts.get(status).copied().unwrap_or(0)
}

#[derive(Template)]
#[template(path = "queues.html")]
struct QueuesPage<'a> {
    frame: &'a Frame,
    queues: Vec<Queue>,
    statuses: [&'static str; 6],
}

pub(super) async fn list(State(state): State<AppState>, viewer: Viewer) -> Response {
    let queues = api::queues::list_queues(State(state.clone()), viewer.caller.clone()).await;
    viewer.page(queues.map(|Json(queues)| QueuesPage {
        frame: &viewer.frame,
        queues,
        statuses: STATUSES,
    }))
}

#[derive(Template)]
#[template(path = "queue.html")]
struct QueuePage<'a> {
    frame: &'a Frame,
    queue: Queue,
    statuses: [&'static str; 6],
    items: Vec<Item>,
    /// The filters of the page's address, shown in the filter form.
    status: String,
    reference: String,
    buttons: Vec<Button>,
    /// The address of the items after these, when this page is full.
    next_page: Option<String>,
}

pub(super) async fn queue(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(name): Path<String>,
    query: Result<ApiQuery<ItemQuery>, ApiError>,
) -> Response {
    let page = match query {
        Ok(ApiQuery(query)) => queue_page(&state, &viewer, name, query).await,
        Err(err) => Err(err),
    };
    viewer.page(page)
}

async fn queue_page<'a>(
    state: &AppState,
    viewer: &'a Viewer,
    name: String,
    query: ItemQuery,
) -> Result<QueuePage<'a>, ApiError> {
    let caller = &viewer.caller;
    let Json(queue) = api::queues::get_queue(
        State(state.clone()),
        caller.clone(),
        PathSegment(name.clone()),
    )
    .await?;
    let status = query.status.clone().unwrap_or_default();
    let reference = query.reference.clone().unwrap_or_default();
    // Bulk operations act on what the filters select: the same filter, as the API takes it.
    let filter = serde_json::json!({
        "status": query.status,
        "reference": query.reference,
        "created_from": query.created_from,
        "created_to": query.created_to,
        "field": query.field,
        "value": query.value,
    });
    let filter: serde_json::Map<String, serde_json::Value> = filter
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, value)| !value.is_null())
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let limit = query.limit.unwrap_or(ITEMS_PAGE);
    let next_filters: Vec<(String, String)> = filter
        .iter()
        .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
        .collect();
    let query = ItemQuery {
        limit: Some(limit),
        ..query
    };
    let Json(items) = api::queues::list_items(
        State(state.clone()),
        caller.clone(),
        PathSegment(name.clone()),
        ApiQuery(query),
    )
    .await?;
    let next_page = (items.len() == limit as usize)
        .then(|| items.last())
        .flatten()
        .map(|last| {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.extend_pairs(&next_filters);
            query.append_pair("after", &last.id.to_string());
            format!("/queues/{name}?{}", query.finish())
        });
    let mut buttons = Vec::new();
    if caller.may(Resource::Queues, Action::Process, Some(&name)) {
        let body = serde_json::Value::Object(filter).to_string();
        buttons.push(Button {
            body: body.clone(),
            confirm: true,
            ..Button::post(
                "Requeue these",
                format!("/api/v1/queues/{name}/items/requeue"),
            )
        });
        buttons.push(Button {
            body,
            confirm: true,
            class: "danger",
            ..Button::post(
                "Delete these",
                format!("/api/v1/queues/{name}/items/delete"),
            )
        });
    }
    Ok(QueuePage {
        frame: &viewer.frame,
        queue,
        statuses: STATUSES,
        items,
        status,
        reference,
        buttons,
        next_page,
    })
}
