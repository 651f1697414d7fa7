//! Work-item queues: `/api/v1/queues`, their items, claims and what robots answer.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use dirigent_domain::{
    InvalidField,
    access::{Action, Resource},
    queue::{self as domain, ItemStatus, Priority, QueueSettings, check_queue_name},
};
use dirigent_proto::{
    error::{ErrorBody, ErrorCode},
    queue::{
        AbandonRequest, AddItems, AddedItems, Attempt, BulkResult, Claim, ClaimRequest, Claims,
        CompleteItems, CompleteRequest, CompletedItems, FailRequest, Item, ItemFilter, ItemResult,
        LeaseRequest, NewItem, PostponeRequest, Queue, QueueSpec, QueueStats,
    },
};
use dirigent_store::{
    self as store, Claimer, Completion, ItemRecord, QueueAnswer, QueueOp, QueueOpError, QueueRecord,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use utoipa::IntoParams;

use crate::{
    AppState,
    api::{ApiJson, ApiQuery, PathSegment},
    audit::AuditSlot,
    auth::{Caller, secrets},
    error::ApiError,
};

/// The queues the caller may read, with their figures.
#[utoipa::path(
    get,
    path = "/queues",
    tag = "queues",
    security(("bearer" = [])),
    responses((status = 200, body = [Queue]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn list_queues(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Queue>>, ApiError> {
    caller.require(Resource::Queues, Action::Read, None)?;
    let mut queues = Vec::new();
    for queue in state.store.queues().await? {
        if caller.may(Resource::Queues, Action::Read, Some(&queue.name)) {
            queues.push(with_stats(&state, queue).await?);
        }
    }
    Ok(Json(queues))
}

/// Creates a queue.
#[utoipa::path(
    post,
    path = "/queues",
    tag = "queues",
    security(("bearer" = [])),
    request_body = QueueSpec,
    responses(
        (status = 201, body = Queue),
        (status = 409, description = "A queue of this name exists", body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    )
)]
pub(super) async fn create_queue(
    State(state): State<AppState>,
    caller: Caller,
    audit: AuditSlot,
    ApiJson(spec): ApiJson<QueueSpec>,
) -> Result<Response, ApiError> {
    let Some(name) = spec.name.clone() else {
        return Err(ApiError::invalid(InvalidField::new("name", "is required")));
    };
    audit.about(format!("queue:{name}"));
    caller.require(Resource::Queues, Action::Admin, Some(&name))?;
    check_queue_name(&name).map_err(ApiError::invalid)?;
    let settings = settings(spec)?;
    let created = state
        .store
        .create_queue(&name, &settings, state.clock.now())
        .await
        .map_err(|err| {
            ApiError::from_store(
                err,
                || queue_missing_named(&name),
                || {
                    ApiError::new(
                        StatusCode::CONFLICT,
                        ErrorCode::NameTaken,
                        format!("a queue named {name:?} exists already"),
                    )
                },
            )
        })?;
    let queue = with_stats(&state, created).await?;
    Ok((StatusCode::CREATED, Json(queue)).into_response())
}

/// A queue's settings and figures: counts per status, throughput, processing time, the
/// oldest waiting item.
#[utoipa::path(
    get,
    path = "/queues/{name}",
    tag = "queues",
    security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = Queue), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn get_queue(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(name): PathSegment,
) -> Result<Json<Queue>, ApiError> {
    caller.require(Resource::Queues, Action::Read, Some(&name))?;
    let queue = lookup(&state, &name).await?;
    Ok(Json(with_stats(&state, queue).await?))
}

/// Replaces a queue's settings; fields left out take their defaults.
#[utoipa::path(
    put,
    path = "/queues/{name}",
    tag = "queues",
    security(("bearer" = [])),
    params(("name" = String, Path)),
    request_body = QueueSpec,
    responses((status = 200, body = Queue), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(super) async fn replace_queue(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(name): PathSegment,
    ApiJson(spec): ApiJson<QueueSpec>,
) -> Result<Json<Queue>, ApiError> {
    caller.require(Resource::Queues, Action::Admin, Some(&name))?;
    if spec.name.as_ref().is_some_and(|given| *given != name) {
        return Err(ApiError::invalid(InvalidField::new(
            "name",
            "differs from the name in the path; a queue cannot be renamed",
        )));
    }
    let settings = settings(spec)?;
    let updated = state
        .store
        .update_queue(&name, &settings, state.clock.now())
        .await
        .map_err(|err| ApiError::from_lookup(err, ErrorCode::QueueNotFound, no_queue(&name)))?;
    Ok(Json(with_stats(&state, updated).await?))
}

/// Deletes a queue and all its items; refused while a robot holds one of them.
#[utoipa::path(
    delete,
    path = "/queues/{name}",
    tag = "queues",
    security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(super) async fn delete_queue(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(name): PathSegment,
) -> Result<StatusCode, ApiError> {
    caller.require(Resource::Queues, Action::Admin, Some(&name))?;
    state.store.delete_queue(&name).await.map_err(|err| {
        ApiError::from_store(
            err,
            || queue_missing_named(&name),
            || {
                ApiError::new(
                    StatusCode::CONFLICT,
                    ErrorCode::InvalidState,
                    "a robot holds an item of this queue; wait for it, or let its lease expire",
                )
            },
        )
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds one item (an object) or several (an array, added all together or none).
#[utoipa::path(
    post,
    path = "/queues/{name}/items",
    tag = "queues",
    security(("bearer" = [])),
    params(("name" = String, Path)),
    request_body = AddItems,
    responses(
        (status = 201, body = AddedItems),
        (status = 404, body = ErrorBody),
        (status = 409, description = "A reference exists already (`existing_id`)", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    )
)]
pub(super) async fn add_items(
    State(state): State<AppState>,
    caller: Caller,
    audit: AuditSlot,
    PathSegment(name): PathSegment,
    ApiJson(items): ApiJson<AddItems>,
) -> Result<Response, ApiError> {
    caller.require(Resource::Queues, Action::Add, Some(&name))?;
    let items = match items {
        AddItems::One(item) => vec![item],
        AddItems::Many(items) => items,
    };
    bulk_size(".", items.len())?;
    let single = items.len() == 1;
    let items = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| new_item(item, (!single).then_some(index)))
        .collect::<Result<Vec<_>, _>>()?;
    let op = QueueOp::Add {
        queue: name.clone(),
        items,
    };
    match answer(&name, state.writer.queue_op(op, audit.take()).await?)? {
        QueueAnswer::Added(ids) => {
            Ok((StatusCode::CREATED, Json(AddedItems { ids })).into_response())
        }
        other => Err(ApiError::internal(format!("add answered {other:?}"))),
    }
}

/// Filters of the item list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ItemQuery {
    /// `new`, `in_progress`, `successful`, `failed`, `abandoned` or `deleted`.
    pub(crate) status: Option<String>,
    pub(crate) reference: Option<String>,
    /// RFC 3339: added at or after.
    pub(crate) created_from: Option<jiff::Timestamp>,
    /// RFC 3339: added before.
    pub(crate) created_to: Option<jiff::Timestamp>,
    /// A payload field as a dotted path, such as `customer.id`; needs `value`.
    pub(crate) field: Option<String>,
    /// The value of `field`, compared as text.
    pub(crate) value: Option<String>,
    /// Only items with a larger id: the last id of the previous page.
    pub(crate) after: Option<i64>,
    /// At most this many (default 100, at most 1000).
    pub(crate) limit: Option<u32>,
}

/// Lists and searches a queue's items, by id.
#[utoipa::path(
    get,
    path = "/queues/{name}/items",
    tag = "queues",
    security(("bearer" = [])),
    params(("name" = String, Path), ItemQuery),
    responses((status = 200, body = [Item]), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn list_items(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(name): PathSegment,
    ApiQuery(query): ApiQuery<ItemQuery>,
) -> Result<Json<Vec<Item>>, ApiError> {
    caller.require(Resource::Queues, Action::Read, Some(&name))?;
    lookup(&state, &name).await?;
    let filter = filter(ItemFilter {
        status: query.status,
        reference: query.reference,
        created_from: query.created_from,
        created_to: query.created_to,
        field: query.field,
        value: query.value,
    })?;
    let limit = super::page_limit(query.limit, 100, 1000)?;
    let items = state
        .store
        .queue_items(&name, &filter, query.after, limit)
        .await?;
    let items = items
        .into_iter()
        .map(|item| to_wire(&name, item, Vec::new()))
        .collect::<Result<_, _>>()?;
    Ok(Json(items))
}

/// One item with its attempts.
#[utoipa::path(
    get,
    path = "/queues/{name}/items/{id}",
    tag = "queues",
    security(("bearer" = [])),
    params(("name" = String, Path), ("id" = i64, Path)),
    responses((status = 200, body = Item), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(super) async fn get_item(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Item>, ApiError> {
    caller.require(Resource::Queues, Action::Read, Some(&name))?;
    let id = item_id(&id)?;
    lookup(&state, &name).await?;
    let item =
        state.store.queue_item(&name, id).await.map_err(|err| {
            ApiError::from_lookup(err, ErrorCode::ItemNotFound, no_item(&name, id))
        })?;
    let history = state.store.item_attempts(id).await?;
    Ok(Json(to_wire(&name, item, history)?))
}

/// Claims the next ready item: earliest deadline first, then priority, then the oldest.
/// 204 when none is ready.
#[utoipa::path(
    post,
    path = "/queues/{name}/claim",
    tag = "queues",
    security(("bearer" = [])),
    params(("name" = String, Path)),
    responses(
        (status = 200, body = Claim),
        (status = 204, description = "No item is ready"),
        (status = 404, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    )
)]
pub(super) async fn claim_item(
    State(state): State<AppState>,
    caller: Caller,
    audit: AuditSlot,
    PathSegment(name): PathSegment,
) -> Result<Response, ApiError> {
    caller.require(Resource::Queues, Action::Process, Some(&name))?;
    let Some(mut claims) = claim(&state, &caller, audit, &name, 1).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let item = claims
        .items
        .pop()
        .ok_or_else(|| ApiError::internal("a claim of one answered none"))?;
    let claim = Claim {
        item,
        lease_token: claims.lease_token,
        lease_expires_at: claims.lease_expires_at,
    };
    Ok(Json(claim).into_response())
}

/// Claims up to `count` ready items in claim order, all under one lease; 204 when none is
/// ready.
#[utoipa::path(
    post,
    path = "/queues/{name}/claims",
    tag = "queues",
    security(("bearer" = [])),
    params(("name" = String, Path)),
    request_body = ClaimRequest,
    responses(
        (status = 200, body = Claims),
        (status = 204, description = "No item is ready"),
        (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    )
)]
pub(super) async fn claim_items(
    State(state): State<AppState>,
    caller: Caller,
    audit: AuditSlot,
    PathSegment(name): PathSegment,
    ApiJson(request): ApiJson<ClaimRequest>,
) -> Result<Response, ApiError> {
    caller.require(Resource::Queues, Action::Process, Some(&name))?;
    bulk_size("count", request.count as usize)?;
    match claim(&state, &caller, audit, &name, request.count).await? {
        Some(claims) => Ok(Json(claims).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// Who claims: the caller's run, or the caller.
fn claimer(caller: &Caller) -> Claimer {
    Claimer {
        run_id: match &caller.credential {
            store::CredentialKind::RunToken { run_id } => Some(run_id.clone()),
            _ => None,
        },
        name: match caller.user_id {
            Some(_) => format!("user:{}", caller.username),
            None => caller.username.clone(),
        },
    }
}

/// Claims up to `count` items of `queue` under a new lease; none when none was ready.
async fn claim(
    state: &AppState,
    caller: &Caller,
    audit: AuditSlot,
    queue: &str,
    count: u32,
) -> Result<Option<Claims>, ApiError> {
    let token = secrets::new_token(secrets::LEASE_PREFIX).map_err(ApiError::internal)?;
    let op = QueueOp::Claim {
        queue: queue.to_owned(),
        lease_digest: secrets::token_digest(&token),
        claimer: claimer(caller),
        count,
    };
    let answer = answer(queue, state.writer.queue_op(op, audit.take()).await?)?;
    let QueueAnswer::Claimed(items) = answer else {
        return Err(ApiError::internal("a claim answered otherwise"));
    };
    let Some(lease_expires_at) = items.first().map(|item| item.lease_expires_at) else {
        return Ok(None);
    };
    let lease_expires_at =
        lease_expires_at.ok_or_else(|| ApiError::internal("a claimed item without a lease"))?;
    let items = items
        .into_iter()
        .map(|item| to_wire(queue, item, Vec::new()))
        .collect::<Result<_, _>>()?;
    Ok(Some(Claims {
        items,
        lease_token: token,
        lease_expires_at,
    }))
}

/// Refuses a bulk request of `size` items unless it is 1 to the most one request may carry.
fn bulk_size(field: &str, size: usize) -> Result<(), ApiError> {
    if size == 0 || domain::limits::MAX_BULK_ITEMS < size {
        return Err(ApiError::invalid(InvalidField::new(
            field,
            format!("give 1 to {} items at once", domain::limits::MAX_BULK_ITEMS),
        )));
    }
    Ok(())
}

/// Completes several claimed items, each on its own: the results say which were done and why
/// the others were refused.
#[utoipa::path(
    post,
    path = "/queues/{name}/items/complete",
    tag = "queues",
    security(("bearer" = [])),
    params(("name" = String, Path)),
    request_body = CompleteItems,
    responses(
        (status = 200, body = CompletedItems),
        (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    )
)]
pub(super) async fn complete_items(
    State(state): State<AppState>,
    caller: Caller,
    audit: AuditSlot,
    PathSegment(name): PathSegment,
    ApiJson(request): ApiJson<CompleteItems>,
) -> Result<Json<CompletedItems>, ApiError> {
    caller.require(Resource::Queues, Action::Process, Some(&name))?;
    bulk_size("items", request.items.len())?;
    let ids: Vec<i64> = request.items.iter().map(|item| item.id).collect();
    let op = QueueOp::CompleteMany {
        queue: name.clone(),
        items: request
            .items
            .into_iter()
            .map(|item| Completion {
                item: item.id,
                lease_digest: secrets::token_digest(&item.lease_token),
                output: item.output.map(|output| output.get().to_owned()),
            })
            .collect(),
    };
    let QueueAnswer::Completed(done) =
        answer(&name, state.writer.queue_op(op, audit.take()).await?)?
    else {
        return Err(ApiError::internal("a completion answered otherwise"));
    };
    let results = ids
        .into_iter()
        .zip(done)
        .map(|(id, done)| ItemResult {
            id,
            error: done.err().map(|err| refusal(&name, err).body(None)),
        })
        .collect();
    Ok(Json(CompletedItems { results }))
}

/// Defines a handler for an operation on one item: its path, request body, the permission
/// it needs and how the body becomes a [`QueueOp`].
macro_rules! item_operation {
    ($name:ident, $path:literal, $body:ty, $action:expr, $doc:literal, |$queue:ident, $id:ident, $request:ident| $op:expr) => {
        #[doc = $doc]
        #[utoipa::path(
            post,
            path = $path,
            tag = "queues",
            security(("bearer" = [])),
            params(("name" = String, Path), ("id" = i64, Path)),
            request_body = $body,
            responses(
                (status = 200, body = Item),
                (status = 404, body = ErrorBody),
                (status = 409, description = "Stale lease token, or the item's status forbids it", body = ErrorBody),
                (status = 422, body = ErrorBody),
                (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
            )
        )]
        pub(super) async fn $name(
            State(state): State<AppState>,
            caller: Caller,
            audit: AuditSlot,
            Path((name, id)): Path<(String, String)>,
            ApiJson($request): ApiJson<$body>,
        ) -> Result<Json<Item>, ApiError> {
            caller.require(Resource::Queues, $action, Some(&name))?;
            let $id = item_id(&id)?;
            let $queue = name.clone();
            let op: QueueOp = $op;
            item_answer(&state, &name, $id, op, audit).await
        }
    };
}

item_operation!(
    extend_lease,
    "/queues/{name}/items/{id}/extend",
    LeaseRequest,
    Action::Process,
    "Extends the lease of a claimed item by the queue's lease time from now.",
    |queue, item, request| QueueOp::Extend {
        queue,
        item,
        lease_digest: secrets::token_digest(&request.lease_token),
    }
);

item_operation!(
    complete_item,
    "/queues/{name}/items/{id}/complete",
    CompleteRequest,
    Action::Process,
    "Marks a claimed item successful, with the robot's output.",
    |queue, item, request| QueueOp::Complete {
        queue,
        item,
        lease_digest: secrets::token_digest(&request.lease_token),
        output: request.output.map(|output| output.get().to_owned()),
    }
);

item_operation!(
    fail_item,
    "/queues/{name}/items/{id}/fail",
    FailRequest,
    Action::Process,
    "Fails a claimed item: a business error is final; an application error retries after the queue's delay until its attempts are spent.",
    |queue, item, request| QueueOp::Fail {
        queue,
        item,
        lease_digest: secrets::token_digest(&request.lease_token),
        kind: request.kind.parse().map_err(ApiError::invalid)?,
        message: bounded_message("message", request.message)?,
    }
);

item_operation!(
    postpone_item,
    "/queues/{name}/items/{id}/postpone",
    PostponeRequest,
    Action::Process,
    "Postpones an item: a claimed one (with its lease token) goes back to the queue, a new one (without) waits longer.",
    |queue, item, request| QueueOp::Postpone {
        queue,
        item,
        lease_digest: request.lease_token.as_deref().map(secrets::token_digest),
        until: request.until,
    }
);

item_operation!(
    abandon_item,
    "/queues/{name}/items/{id}/abandon",
    AbandonRequest,
    Action::Process,
    "Gives up a claimed item; it is not retried (an operator may requeue it).",
    |queue, item, request| QueueOp::Abandon {
        queue,
        item,
        lease_digest: secrets::token_digest(&request.lease_token),
        message: request
            .message
            .map(|message| bounded_message("message", message))
            .transpose()?,
    }
);

/// Puts a failed, abandoned or deleted item back to `new`, its attempts reset.
#[utoipa::path(
    post,
    path = "/queues/{name}/items/{id}/requeue",
    tag = "queues",
    security(("bearer" = [])),
    params(("name" = String, Path), ("id" = i64, Path)),
    responses((status = 200, body = Item), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(super) async fn requeue_item(
    State(state): State<AppState>,
    caller: Caller,
    audit: AuditSlot,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Item>, ApiError> {
    caller.require(Resource::Queues, Action::Process, Some(&name))?;
    let id = item_id(&id)?;
    let op = QueueOp::Requeue {
        queue: name.clone(),
        item: id,
    };
    item_answer(&state, &name, id, op, audit).await
}

/// Deletes an item that no robot holds.
#[utoipa::path(
    delete,
    path = "/queues/{name}/items/{id}",
    tag = "queues",
    security(("bearer" = [])),
    params(("name" = String, Path), ("id" = i64, Path)),
    responses((status = 200, body = Item), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(super) async fn delete_item(
    State(state): State<AppState>,
    caller: Caller,
    audit: AuditSlot,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Item>, ApiError> {
    caller.require(Resource::Queues, Action::Admin, Some(&name))?;
    let id = item_id(&id)?;
    let op = QueueOp::Delete {
        queue: name.clone(),
        item: id,
    };
    item_answer(&state, &name, id, op, audit).await
}

/// Puts every failed, abandoned or deleted item matching the filter back to `new`.
#[utoipa::path(
    post,
    path = "/queues/{name}/items/requeue",
    tag = "queues",
    security(("bearer" = [])),
    params(("name" = String, Path)),
    request_body = ItemFilter,
    responses((status = 200, body = BulkResult), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(super) async fn requeue_items(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(name): PathSegment,
    ApiJson(request): ApiJson<ItemFilter>,
) -> Result<Json<BulkResult>, ApiError> {
    caller.require(Resource::Queues, Action::Process, Some(&name))?;
    lookup(&state, &name).await?;
    let filter = filter(request)?;
    let count = state.writer.requeue_items(&name, &filter).await?;
    Ok(Json(BulkResult { count }))
}

/// Deletes every item matching the filter that no robot holds.
#[utoipa::path(
    post,
    path = "/queues/{name}/items/delete",
    tag = "queues",
    security(("bearer" = [])),
    params(("name" = String, Path)),
    request_body = ItemFilter,
    responses((status = 200, body = BulkResult), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(super) async fn delete_items(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(name): PathSegment,
    ApiJson(request): ApiJson<ItemFilter>,
) -> Result<Json<BulkResult>, ApiError> {
    caller.require(Resource::Queues, Action::Admin, Some(&name))?;
    lookup(&state, &name).await?;
    let filter = filter(request)?;
    let count = state.writer.delete_items(&name, &filter).await?;
    Ok(Json(BulkResult { count }))
}

async fn item_answer(
    state: &AppState,
    queue: &str,
    id: i64,
    op: QueueOp,
    audit: AuditSlot,
) -> Result<Json<Item>, ApiError> {
    match answer(queue, state.writer.queue_op(op, audit.take()).await?)? {
        QueueAnswer::Item(item) => Ok(Json(to_wire(queue, *item, Vec::new())?)),
        other => Err(ApiError::internal(format!("item {id} answered {other:?}"))),
    }
}

/// The answer of an operation, or its refusal as an API error.
fn answer(
    queue: &str,
    outcome: Result<QueueAnswer, QueueOpError>,
) -> Result<QueueAnswer, ApiError> {
    outcome.map_err(|err| refusal(queue, err))
}

/// The status the request of an operation is answered with.
pub(crate) fn answer_status(outcome: &Result<QueueAnswer, QueueOpError>) -> StatusCode {
    match outcome {
        Ok(QueueAnswer::Added(_)) => StatusCode::CREATED,
        Ok(QueueAnswer::Claimed(items)) if items.is_empty() => StatusCode::NO_CONTENT,
        Ok(_) => StatusCode::OK,
        Err(err) => refusal("", err.clone()).status,
    }
}

/// A refused operation as an API error.
fn refusal(queue: &str, err: QueueOpError) -> ApiError {
    let conflict = |code, message: String| ApiError::new(StatusCode::CONFLICT, code, message);
    match err {
        QueueOpError::QueueNotFound => queue_missing_named(queue),
        QueueOpError::ItemNotFound => ApiError::not_found(
            ErrorCode::ItemNotFound,
            format!("queue {queue:?} has no such item"),
        ),
        QueueOpError::StaleLease => conflict(
            ErrorCode::StaleLease,
            "the lease token is not the item's current one, or its lease expired; the item may \
             be someone else's now"
                .to_owned(),
        ),
        QueueOpError::WrongStatus(status) => conflict(
            ErrorCode::InvalidState,
            format!("the item is {status}, which does not allow this"),
        ),
        QueueOpError::DuplicateReference {
            reference,
            existing,
        } => ApiError {
            existing_id: Some(existing),
            ..conflict(
                ErrorCode::DuplicateReference,
                format!("item {existing} has the reference {reference:?} already"),
            )
        },
        QueueOpError::RepeatedReference(reference) => ApiError::invalid(InvalidField::new(
            "reference",
            format!("{reference:?} appears more than once among the items"),
        )),
        QueueOpError::PayloadTooLarge { index, limit } => ApiError {
            field: Some(format!("[{index}].payload")),
            ..ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                format!(
                    "item {index}: the payload is larger than the queue's limit of {limit} bytes"
                ),
            )
        },
    }
}

fn settings(spec: QueueSpec) -> Result<QueueSettings, ApiError> {
    let defaults = QueueSettings::default();
    let settings = QueueSettings {
        description: spec.description.unwrap_or(defaults.description),
        max_attempts: spec.max_attempts.unwrap_or(defaults.max_attempts),
        retry_delay_seconds: spec
            .retry_delay_seconds
            .unwrap_or(defaults.retry_delay_seconds),
        retry_backoff: spec.retry_backoff.unwrap_or(defaults.retry_backoff),
        lease_seconds: spec.lease_seconds.unwrap_or(defaults.lease_seconds),
        enforce_unique_reference: spec
            .enforce_unique_reference
            .unwrap_or(defaults.enforce_unique_reference),
        retention_days: spec.retention_days.unwrap_or(defaults.retention_days),
        max_payload_bytes: spec.max_payload_bytes.unwrap_or(defaults.max_payload_bytes),
    };
    settings.validate().map_err(ApiError::invalid)?;
    Ok(settings)
}

/// Checks an item to add; `index` places it in an array for error messages.
fn new_item(item: NewItem, index: Option<usize>) -> Result<store::NewItem, ApiError> {
    let field = |name: &str| match index {
        Some(index) => format!("[{index}].{name}"),
        None => name.to_owned(),
    };
    if let Some(reference) = &item.reference
        && (reference.is_empty() || domain::limits::MAX_REFERENCE_BYTES < reference.len())
    {
        return Err(ApiError::invalid(InvalidField::new(
            field("reference"),
            format!(
                "must have 1 to {} bytes",
                domain::limits::MAX_REFERENCE_BYTES
            ),
        )));
    }
    let priority = match &item.priority {
        Some(priority) => priority
            .parse::<Priority>()
            .map_err(|err| ApiError::invalid(InvalidField::new(field("priority"), err.reason)))?,
        None => Priority::Normal,
    };
    Ok(store::NewItem {
        payload: item.payload.get().to_owned(),
        reference: item.reference,
        priority,
        deadline: item.deadline,
        postpone_until: item.postpone_until,
    })
}

fn filter(request: ItemFilter) -> Result<store::ItemFilter, ApiError> {
    let status = request
        .status
        .as_deref()
        .map(str::parse::<ItemStatus>)
        .transpose()
        .map_err(ApiError::invalid)?;
    let payload_field = match (request.field, request.value) {
        (Some(field), Some(value)) => {
            let path: Vec<String> = field.split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) || 16 < path.len() {
                return Err(ApiError::invalid(InvalidField::new(
                    "field",
                    "must be a dotted path of 1 to 16 keys, such as customer.id",
                )));
            }
            Some((path, value))
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err(ApiError::invalid(InvalidField::new(
                "value",
                "is required with field",
            )));
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid(InvalidField::new(
                "field",
                "is required with value",
            )));
        }
    };
    Ok(store::ItemFilter {
        status,
        reference: request.reference,
        created_from: request.created_from,
        created_to: request.created_to,
        payload_field,
    })
}

fn bounded_message(field: &str, message: String) -> Result<String, ApiError> {
    if domain::limits::MAX_MESSAGE_BYTES < message.len() {
        return Err(ApiError::invalid(InvalidField::new(
            field,
            format!("is longer than {} bytes", domain::limits::MAX_MESSAGE_BYTES),
        )));
    }
    Ok(message)
}

fn item_id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| 0 < *id)
        .ok_or_else(|| {
            ApiError::not_found(
                ErrorCode::ItemNotFound,
                format!("{text:?} is not an item id"),
            )
        })
}

async fn lookup(state: &AppState, name: &str) -> Result<QueueRecord, ApiError> {
    state
        .store
        .queue(name)
        .await
        .map_err(|err| ApiError::from_lookup(err, ErrorCode::QueueNotFound, no_queue(name)))
}

async fn with_stats(state: &AppState, queue: QueueRecord) -> Result<Queue, ApiError> {
    let stats = state.store.queue_stats(queue.id, state.clock.now()).await?;
    let settings = queue.settings;
    Ok(Queue {
        name: queue.name,
        description: settings.description,
        max_attempts: settings.max_attempts,
        retry_delay_seconds: settings.retry_delay_seconds,
        retry_backoff: settings.retry_backoff,
        lease_seconds: settings.lease_seconds,
        enforce_unique_reference: settings.enforce_unique_reference,
        retention_days: settings.retention_days,
        max_payload_bytes: settings.max_payload_bytes,
        stats: QueueStats {
            counts: stats
                .counts
                .into_iter()
                .map(|(status, count)| (status.as_str().to_owned(), count))
                .collect(),
            successful_last_hour: stats.successful_last_hour,
            #[allow(clippy::cast_precision_loss, reason = "seconds for display")]
            average_processing_seconds: stats
                .average_processing
                .map(|mean| mean.as_millis() as f64 / 1000.0),
            oldest_new_at: stats.oldest_new_at,
        },
        created_at: queue.created_at,
        updated_at: queue.updated_at,
    })
}

fn to_wire(
    queue: &str,
    item: ItemRecord,
    history: Vec<store::AttemptRecord>,
) -> Result<Item, ApiError> {
    let raw = |text: String| RawValue::from_string(text).map_err(ApiError::internal);
    Ok(Item {
        id: item.id,
        queue: queue.to_owned(),
        status: item.status.as_str().to_owned(),
        priority: item.priority.as_str().to_owned(),
        reference: item.reference,
        payload: raw(item.payload)?,
        output: item.output.map(raw).transpose()?,
        error_kind: item.error_kind,
        error_message: item.error_message,
        attempts: item.attempts,
        deadline: item.deadline,
        available_at: item.available_at,
        lease_expires_at: item.lease_expires_at,
        run_id: item.run_id,
        claimed_by: item.claimed_by,
        created_at: item.created_at,
        started_at: item.started_at,
        finished_at: item.finished_at,
        updated_at: item.updated_at,
        history: history
            .into_iter()
            .map(|attempt| Attempt {
                attempt: attempt.attempt,
                run_id: attempt.run_id,
                claimed_by: attempt.claimed_by,
                started_at: attempt.started_at,
                ended_at: attempt.ended_at,
                outcome: attempt.outcome,
                error_kind: attempt.error_kind,
                error_message: attempt.error_message,
            })
            .collect(),
    })
}

fn no_queue(name: &str) -> String {
    format!("no queue named {name:?}")
}

fn no_item(queue: &str, id: i64) -> String {
    format!("queue {queue:?} has no item {id}")
}

fn queue_missing_named(name: &str) -> ApiError {
    ApiError::not_found(ErrorCode::QueueNotFound, no_queue(name))
}
