//! Triggers and calendars: `/api/v1/triggers`, `/api/v1/calendars`, and the preview of a
//! trigger's coming firings.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use dirigent_domain::{
    InvalidField,
    access::{Action, Resource},
    schedule,
};
use dirigent_proto::{
    error::{ErrorBody, ErrorCode},
    trigger::{Calendar, CalendarSpec, FireTime, Firing, Trigger, TriggerSpec},
};
use dirigent_store::{CalendarRecord, StoreError, TriggerRecord};
use jiff::Timestamp;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::{
    AppState,
    api::{ApiJson, ApiQuery, PathSegment},
    audit::AuditSlot,
    auth::{Caller, secrets},
    error::ApiError,
    scheduler::{
        DAYS, Timing, calendar_rules, definition, next_look, stored_calendar, stored_spec,
    },
};

/// Filters of the trigger list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct TriggerQuery {
    /// Only the triggers of this robot.
    pub(crate) robot: Option<String>,
}

/// The triggers of the robots the caller may read.
#[utoipa::path(
    get,
    path = "/triggers",
    tag = "triggers",
    security(("bearer" = [])),
    params(TriggerQuery),
    responses((status = 200, body = [Trigger]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn list_triggers(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<TriggerQuery>,
) -> Result<Json<Vec<Trigger>>, ApiError> {
    caller.require(Resource::Triggers, Action::Read, query.robot.as_deref())?;
    let triggers = state.store.triggers(query.robot.as_deref()).await?;
    triggers
        .into_iter()
        .filter(|trigger| caller.may(Resource::Triggers, Action::Read, Some(&trigger.robot)))
        .map(to_wire)
        .collect::<Result<_, _>>()
        .map(Json)
}

/// Creates a trigger; the answer carries its `id` and next firing.
#[utoipa::path(
    post,
    path = "/triggers",
    tag = "triggers",
    security(("bearer" = [])),
    request_body = TriggerSpec,
    responses((status = 201, body = Trigger), (status = 422, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(super) async fn create_trigger(
    State(state): State<AppState>,
    caller: Caller,
    audit: AuditSlot,
    ApiJson(spec): ApiJson<TriggerSpec>,
) -> Result<Response, ApiError> {
    audit.about(format!("robot:{}", spec.robot));
    caller.require(Resource::Triggers, Action::Edit, Some(&spec.robot))?;
    let now = state.clock.now();
    let id = secrets::new_id("trg_").map_err(ApiError::internal)?;
    audit.about(format!("trigger:{id}"));
    let mut record = TriggerRecord {
        id,
        robot: spec.robot.clone(),
        calendar: spec.calendar.clone(),
        queue: None,
        spec: String::new(),
        enabled: spec.enabled.unwrap_or(true),
        next_fire_at: None,
        disabled_reason: None,
        consecutive_failures: 0,
        created_at: now,
        updated_at: now,
    };
    let spec = with_anchor(spec, now);
    apply_spec(&state, &mut record, &spec, now).await?;
    state.store.insert_trigger(&record).await?;
    state.scheduler.changed();
    state.fleet.triggers_changed();
    Ok((StatusCode::CREATED, Json(to_wire(record)?)).into_response())
}

/// One trigger.
#[utoipa::path(
    get,
    path = "/triggers/{id}",
    tag = "triggers",
    security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Trigger), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn get_trigger(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(id): PathSegment,
) -> Result<Json<Trigger>, ApiError> {
    let record = lookup(&state, &caller, &id, Action::Read).await?;
    Ok(Json(to_wire(record)?))
}

/// Replaces a trigger's definition; its next firing is computed anew.
#[utoipa::path(
    put,
    path = "/triggers/{id}",
    tag = "triggers",
    security(("bearer" = [])),
    params(("id" = String, Path)),
    request_body = TriggerSpec,
    responses((status = 200, body = Trigger), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(super) async fn replace_trigger(
    State(state): State<AppState>,
    caller: Caller,
    audit: AuditSlot,
    PathSegment(id): PathSegment,
    ApiJson(spec): ApiJson<TriggerSpec>,
) -> Result<Json<Trigger>, ApiError> {
    let mut record = lookup(&state, &caller, &id, Action::Edit).await?;
    let before = to_wire(record.clone())?;
    caller.require(Resource::Triggers, Action::Edit, Some(&spec.robot))?;
    let now = state.clock.now();
    record.robot = spec.robot.clone();
    record.calendar = spec.calendar.clone();
    record.enabled = spec.enabled.unwrap_or(record.enabled);
    record.disabled_reason = None;
    record.consecutive_failures = 0;
    record.updated_at = now;
    let spec = with_anchor(spec, record.created_at);
    apply_spec(&state, &mut record, &spec, now).await?;
    state.store.update_trigger(&record).await.map_err(|err| {
        ApiError::from_lookup(
            err,
            ErrorCode::TriggerNotFound,
            format!("no trigger {id:?}"),
        )
    })?;
    state.scheduler.changed();
    state.fleet.triggers_changed();
    let after = to_wire(record)?;
    audit.changed(&before, &after);
    Ok(Json(after))
}

/// Deletes a trigger.
#[utoipa::path(
    delete,
    path = "/triggers/{id}",
    tag = "triggers",
    security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(super) async fn delete_trigger(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(id): PathSegment,
) -> Result<StatusCode, ApiError> {
    lookup(&state, &caller, &id, Action::Edit).await?;
    state.store.delete_trigger(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Enables a trigger: it fires from its next time on.
#[utoipa::path(
    post,
    path = "/triggers/{id}/enable",
    tag = "triggers",
    security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Trigger), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn enable_trigger(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(id): PathSegment,
) -> Result<Json<Trigger>, ApiError> {
    set_enabled(&state, &caller, &id, true).await
}

/// Disables a trigger: it fires no more until enabled.
#[utoipa::path(
    post,
    path = "/triggers/{id}/disable",
    tag = "triggers",
    security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Trigger), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn disable_trigger(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(id): PathSegment,
) -> Result<Json<Trigger>, ApiError> {
    set_enabled(&state, &caller, &id, false).await
}

/// Which firings to preview.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PreviewQuery {
    /// RFC 3339 [default: now].
    pub(crate) from: Option<Timestamp>,
    /// How many (default 10, at most 1000).
    pub(crate) count: Option<usize>,
}

/// The trigger's next firings after `from`, with their local times and offsets; calendars
/// applied.
#[utoipa::path(
    get,
    path = "/triggers/{id}/preview",
    tag = "triggers",
    security(("bearer" = [])),
    params(("id" = String, Path), PreviewQuery),
    responses((status = 200, body = [FireTime]), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn preview_trigger(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(id): PathSegment,
    ApiQuery(query): ApiQuery<PreviewQuery>,
) -> Result<Json<Vec<FireTime>>, ApiError> {
    let record = lookup(&state, &caller, &id, Action::Read).await?;
    let count = query.count.unwrap_or(10);
    if !(1..=1000).contains(&count) {
        return Err(ApiError::invalid(InvalidField::new(
            "count",
            "must be between 1 and 1000",
        )));
    }
    let spec = stored_spec(&record)?;
    let (timing, calendar) = definition(&state.store, &spec).await?;
    let Timing::Schedule(schedule) = timing else {
        return Err(ApiError::invalid(InvalidField::new(
            "kind",
            "a queue trigger fires on its queue's items, not at times",
        )));
    };
    let zone = schedule.zone();
    let from = query.from.unwrap_or_else(|| state.clock.now());
    let calendar = calendar
        .as_ref()
        .map(|(calendar, off_day)| (calendar, *off_day));
    let times = schedule
        .preview(from, count, calendar)
        .into_iter()
        .map(|at| {
            let local = at.to_zoned(zone.clone());
            FireTime {
                at,
                offset: local.offset().to_string(),
                local: local.to_string(),
            }
        })
        .collect();
    Ok(Json(times))
}

async fn set_enabled(
    state: &AppState,
    caller: &Caller,
    id: &str,
    enabled: bool,
) -> Result<Json<Trigger>, ApiError> {
    let mut record = lookup(state, caller, id, Action::Edit).await?;
    let now = state.clock.now();
    record.enabled = enabled;
    record.disabled_reason = None;
    if enabled {
        record.consecutive_failures = 0;
    }
    record.updated_at = now;
    let spec = stored_spec(&record)?;
    apply_spec(state, &mut record, &spec, now).await?;
    state.store.update_trigger(&record).await?;
    state.scheduler.changed();
    state.fleet.triggers_changed();
    Ok(Json(to_wire(record)?))
}

/// How many firings to list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct FiringQuery {
    /// At most this many, newest first (default 100, at most 1000).
    pub(crate) limit: Option<u32>,
}

/// The trigger's firings, newest first: each started, skipped or missed, with the reason.
#[utoipa::path(
    get,
    path = "/triggers/{id}/firings",
    tag = "triggers",
    security(("bearer" = [])),
    params(("id" = String, Path), FiringQuery),
    responses((status = 200, body = [Firing]), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn list_firings(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(id): PathSegment,
    ApiQuery(query): ApiQuery<FiringQuery>,
) -> Result<Json<Vec<Firing>>, ApiError> {
    lookup(&state, &caller, &id, Action::Read).await?;
    let limit = super::page_limit(query.limit, 100, 1000)?;
    let firings = state.store.trigger_firings(&id, limit).await?;
    Ok(Json(
        firings
            .into_iter()
            .map(|firing| Firing {
                due_at: firing.due_at,
                outcome: firing.outcome,
                reason: firing.reason,
                run_id: firing.run_id,
                recorded_at: firing.recorded_at,
            })
            .collect(),
    ))
}

/// Checks `spec`, and sets the record's spec and next firing from it.
async fn apply_spec(
    state: &AppState,
    record: &mut TriggerRecord,
    spec: &TriggerSpec,
    now: Timestamp,
) -> Result<(), ApiError> {
    match state.store.robot(&spec.robot).await {
        Ok(_) => {}
        Err(StoreError::NotFound) => {
            return Err(ApiError::invalid(InvalidField::new(
                "robot",
                format!("no robot named {:?}", spec.robot),
            )));
        }
        Err(err) => return Err(err.into()),
    }
    let (timing, calendar) = definition(&state.store, spec).await?;
    if let Timing::Queue(watch) = &timing {
        state
            .store
            .queue(&watch.queue)
            .await
            .map_err(|err| match err {
                StoreError::NotFound => ApiError::invalid(InvalidField::new(
                    "queue",
                    format!("no queue named {:?}", watch.queue),
                )),
                err => err.into(),
            })?;
    }
    record.queue = spec.queue.clone().filter(|_| spec.kind == "queue");
    record.next_fire_at = record
        .enabled
        .then(|| next_look(&timing, &calendar, now, true))
        .flatten();
    record.spec = serde_json::to_string(spec).map_err(ApiError::internal)?;
    Ok(())
}

/// An interval without an anchor counts from `default`.
fn with_anchor(mut spec: TriggerSpec, default: Timestamp) -> TriggerSpec {
    if spec.kind == "interval" && spec.anchor.is_none() {
        spec.anchor = Some(default);
    }
    spec
}

async fn lookup(
    state: &AppState,
    caller: &Caller,
    id: &str,
    action: Action,
) -> Result<TriggerRecord, ApiError> {
    // Without that right on any trigger, the caller learns nothing of this one.
    caller.require(Resource::Triggers, action, None)?;
    let record = state.store.trigger(id).await.map_err(|err| {
        ApiError::from_lookup(
            err,
            ErrorCode::TriggerNotFound,
            format!("no trigger {id:?}"),
        )
    })?;
    caller.require(Resource::Triggers, action, Some(&record.robot))?;
    Ok(record)
}

fn to_wire(record: TriggerRecord) -> Result<Trigger, ApiError> {
    Ok(Trigger {
        spec: stored_spec(&record)?,
        id: record.id,
        enabled: record.enabled,
        next_fire_at: record.next_fire_at,
        disabled_reason: record.disabled_reason,
        consecutive_failures: record.consecutive_failures,
        created_at: record.created_at,
        updated_at: record.updated_at,
    })
}

/// The calendars the caller may read.
#[utoipa::path(
    get,
    path = "/calendars",
    tag = "triggers",
    security(("bearer" = [])),
    responses((status = 200, body = [Calendar]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn list_calendars(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Calendar>>, ApiError> {
    caller.require(Resource::Calendars, Action::Read, None)?;
    let calendars = state.store.calendars().await?;
    calendars
        .into_iter()
        .filter(|calendar| caller.may(Resource::Calendars, Action::Read, Some(&calendar.name)))
        .map(|record| calendar_to_wire(&record))
        .collect::<Result<_, _>>()
        .map(Json)
}

/// Creates a calendar; holidays may be imported from CSV or iCalendar text.
#[utoipa::path(
    post,
    path = "/calendars",
    tag = "triggers",
    security(("bearer" = [])),
    request_body = CalendarSpec,
    responses((status = 201, body = Calendar), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(super) async fn create_calendar(
    State(state): State<AppState>,
    caller: Caller,
    audit: AuditSlot,
    ApiJson(spec): ApiJson<CalendarSpec>,
) -> Result<Response, ApiError> {
    let Some(name) = spec.name.clone() else {
        return Err(ApiError::invalid(InvalidField::new("name", "is required")));
    };
    audit.about(format!("calendar:{name}"));
    caller.require(Resource::Calendars, Action::Edit, Some(&name))?;
    schedule::check_calendar_name(&name).map_err(ApiError::invalid)?;
    let spec = normalized_calendar(spec)?;
    let text = serde_json::to_string(&spec).map_err(ApiError::internal)?;
    state
        .store
        .insert_calendar(&name, &text, state.clock.now())
        .await
        .map_err(|err| {
            ApiError::from_store(
                err,
                || ApiError::internal("no calendar after insert"),
                || {
                    ApiError::new(
                        StatusCode::CONFLICT,
                        ErrorCode::NameTaken,
                        format!("a calendar named {name:?} exists already"),
                    )
                },
            )
        })?;
    let record = state.store.calendar(&name).await?;
    Ok((StatusCode::CREATED, Json(calendar_to_wire(&record)?)).into_response())
}

/// One calendar.
#[utoipa::path(
    get,
    path = "/calendars/{name}",
    tag = "triggers",
    security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = Calendar), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(super) async fn get_calendar(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(name): PathSegment,
) -> Result<Json<Calendar>, ApiError> {
    caller.require(Resource::Calendars, Action::Read, Some(&name))?;
    let record = calendar_lookup(&state, &name).await?;
    Ok(Json(calendar_to_wire(&record)?))
}

/// Replaces a calendar; the triggers following it use the new one from their next firing.
#[utoipa::path(
    put,
    path = "/calendars/{name}",
    tag = "triggers",
    security(("bearer" = [])),
    params(("name" = String, Path)),
    request_body = CalendarSpec,
    responses((status = 200, body = Calendar), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(super) async fn replace_calendar(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(name): PathSegment,
    ApiJson(spec): ApiJson<CalendarSpec>,
) -> Result<Json<Calendar>, ApiError> {
    caller.require(Resource::Calendars, Action::Edit, Some(&name))?;
    let spec = normalized_calendar(CalendarSpec {
        name: Some(name.clone()),
        ..spec
    })?;
    let text = serde_json::to_string(&spec).map_err(ApiError::internal)?;
    state
        .store
        .replace_calendar(&name, &text, state.clock.now())
        .await
        .map_err(|err| {
            ApiError::from_lookup(err, ErrorCode::CalendarNotFound, no_calendar(&name))
        })?;
    let record = state.store.calendar(&name).await?;
    Ok(Json(calendar_to_wire(&record)?))
}

/// Deletes a calendar no trigger follows.
#[utoipa::path(
    delete,
    path = "/calendars/{name}",
    tag = "triggers",
    security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(super) async fn delete_calendar(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(name): PathSegment,
) -> Result<StatusCode, ApiError> {
    caller.require(Resource::Calendars, Action::Edit, Some(&name))?;
    state.store.delete_calendar(&name).await.map_err(|err| {
        ApiError::from_store(
            err,
            || ApiError::not_found(ErrorCode::CalendarNotFound, no_calendar(&name)),
            || {
                ApiError::new(
                    StatusCode::CONFLICT,
                    ErrorCode::InvalidState,
                    format!("triggers follow calendar {name:?}; change them first"),
                )
            },
        )
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// Checks a calendar spec and folds its imported dates into `excluded_dates`.
fn normalized_calendar(spec: CalendarSpec) -> Result<CalendarSpec, ApiError> {
    let mut excluded = spec.excluded_dates.clone().unwrap_or_default();
    if let Some(text) = &spec.import {
        excluded.extend(
            schedule::Calendar::parse_dates(text)
                .map_err(|err| ApiError::invalid(InvalidField::new("import", err.reason)))?,
        );
    }
    excluded.sort();
    excluded.dedup();
    let normalized = CalendarSpec {
        import: None,
        excluded_dates: Some(excluded),
        working_days: Some(
            spec.working_days
                .clone()
                .unwrap_or_else(|| DAYS[..5].iter().map(|day| (*day).to_owned()).collect()),
        ),
        ..spec
    };
    calendar_rules(&normalized)?;
    Ok(normalized)
}

async fn calendar_lookup(state: &AppState, name: &str) -> Result<CalendarRecord, ApiError> {
    state
        .store
        .calendar(name)
        .await
        .map_err(|err| ApiError::from_lookup(err, ErrorCode::CalendarNotFound, no_calendar(name)))
}

fn calendar_to_wire(record: &CalendarRecord) -> Result<Calendar, ApiError> {
    let spec = stored_calendar(record)?;
    Ok(Calendar {
        name: record.name.clone(),
        description: spec.description.unwrap_or_default(),
        working_days: spec.working_days.unwrap_or_default(),
        excluded_dates: spec.excluded_dates.unwrap_or_default(),
        created_at: record.created_at,
        updated_at: record.updated_at,
    })
}

fn no_calendar(name: &str) -> String {
    format!("no calendar named {name:?}")
}
