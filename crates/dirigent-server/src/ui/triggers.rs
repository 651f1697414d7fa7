//! Triggers and calendars: the trigger list (with the form that creates one), a trigger's page
//! with its next fire times, its recorded firings, its definition to edit and the buttons that
//! enable, disable or delete it; the calendars, each to edit, and the form that creates one.

use askama::Template;
use axum::{
    Json,
    extract::{Path, State},
    response::Response,
};
use dirigent_domain::access::{Action, Resource};
use dirigent_proto::{
    robot::Robot,
    trigger::{Calendar, FireTime, Firing, Trigger, TriggerSpec},
};

use super::{Frame, Viewer, robots::Button};
use crate::{
    AppState,
    api::{
        self, ApiQuery, PathSegment,
        triggers::{FiringQuery, PreviewQuery, TriggerQuery},
    },
    auth::Caller,
    error::ApiError,
};

/// What a trigger's schedule says, in a few words.
pub(super) fn schedule(spec: &TriggerSpec) -> String {
    let zone = spec
        .time_zone
        .as_deref()
        .map(|zone| format!(" ({zone})"))
        .unwrap_or_default();
    let list = |items: &Option<Vec<String>>| items.as_deref().unwrap_or_default().join(",");
    match spec.kind.as_str() {
        "cron" => format!("{}{zone}", spec.cron.as_deref().unwrap_or_default()),
        "interval" => format!("every {} s", spec.every_seconds.unwrap_or_default()),
        "once" => spec.at.map(|at| at.to_string()).unwrap_or_default(),
        "weekly" => format!("{} {}{zone}", list(&spec.days), list(&spec.times)),
        "window" => format!(
            "{} {}–{}{zone}",
            list(&spec.days),
            spec.open.as_deref().unwrap_or_default(),
            spec.close.as_deref().unwrap_or_default()
        ),
        "queue" => format!(
            "{} ≥ {} / ≤ {}",
            spec.queue.as_deref().unwrap_or_default(),
            spec.min_items.unwrap_or(1),
            spec.max_runs.unwrap_or(1)
        ),
        _ => String::new(),
    }
}

/// Enable or disable, as the trigger stands, when the reader may edit it.
fn toggle(caller: &Caller, trigger: &Trigger) -> Option<Button> {
    caller
        .may(Resource::Triggers, Action::Edit, Some(&trigger.spec.robot))
        .then(|| {
            let (label, operation) = if trigger.enabled {
                ("Disable", "disable")
            } else {
                ("Enable", "enable")
            };
            Button::post(
                label,
                format!("/api/v1/triggers/{}/{operation}", trigger.id),
            )
        })
}

pub(super) struct TriggerRow {
    pub trigger: Trigger,
    pub schedule: String,
    pub toggle: Option<Button>,
}

#[derive(Template)]
#[template(path = "triggers.html")]
struct TriggersPage<'a> {
    frame: &'a Frame,
    triggers: Vec<TriggerRow>,
    /// The robots a new trigger may start; empty when the reader may create none.
    robots: Vec<Robot>,
}

pub(super) async fn list(State(state): State<AppState>, viewer: Viewer) -> Response {
    viewer.page(triggers_page(&state, &viewer).await)
}

async fn triggers_page<'a>(
    state: &AppState,
    viewer: &'a Viewer,
) -> Result<TriggersPage<'a>, ApiError> {
    let caller = &viewer.caller;
    let Json(triggers) = api::triggers::list_triggers(
        State(state.clone()),
        caller.clone(),
        ApiQuery(TriggerQuery::default()),
    )
    .await?;
    let robots = if caller.may(Resource::Triggers, Action::Edit, None)
        && caller.may(Resource::Robots, Action::Read, None)
    {
        let Json(robots) = api::robots::list_robots(State(state.clone()), caller.clone()).await?;
        robots
            .into_iter()
            .filter(|robot| caller.may(Resource::Triggers, Action::Edit, Some(&robot.name)))
            .collect()
    } else {
        Vec::new()
    };
    Ok(TriggersPage {
        frame: &viewer.frame,
        triggers: triggers
            .into_iter()
            .map(|trigger| TriggerRow {
                schedule: schedule(&trigger.spec),
                toggle: toggle(caller, &trigger),
                trigger,
            })
            .collect(),
        robots,
    })
}

#[derive(Template)]
#[template(path = "trigger.html")]
struct TriggerPage<'a> {
    frame: &'a Frame,
    trigger: Trigger,
    schedule: String,
    /// The next fire times; none for queue triggers, which fire on items, not on time.
    preview: Option<Vec<FireTime>>,
    firings: Vec<Firing>,
    buttons: Vec<Button>,
    /// The definition as JSON to edit, when the reader may edit it.
    edit: Option<String>,
}

pub(super) async fn trigger(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    viewer.page(trigger_page(&state, &viewer, id).await)
}

async fn trigger_page<'a>(
    state: &AppState,
    viewer: &'a Viewer,
    id: String,
) -> Result<TriggerPage<'a>, ApiError> {
    let caller = &viewer.caller;
    let Json(trigger) = api::triggers::get_trigger(
        State(state.clone()),
        caller.clone(),
        PathSegment(id.clone()),
    )
    .await?;
    let preview = if trigger.spec.kind == "queue" {
        None
    } else {
        let query = PreviewQuery {
            from: None,
            count: Some(10),
        };
        let Json(times) = api::triggers::preview_trigger(
            State(state.clone()),
            caller.clone(),
            PathSegment(id.clone()),
            ApiQuery(query),
        )
        .await?;
        Some(times)
    };
    let Json(firings) = api::triggers::list_firings(
        State(state.clone()),
        caller.clone(),
        PathSegment(id.clone()),
        ApiQuery(FiringQuery { limit: Some(50) }),
    )
    .await?;
    let mut buttons: Vec<Button> = toggle(caller, &trigger).into_iter().collect();
    let may_edit = caller.may(Resource::Triggers, Action::Edit, Some(&trigger.spec.robot));
    let edit = may_edit
        .then(|| serde_json::to_string_pretty(&trigger.spec))
        .transpose()
        .map_err(ApiError::internal)?;
    if may_edit {
        buttons.push(Button {
            method: "DELETE",
            then: "go:/triggers",
            confirm: true,
            class: "danger",
            ..Button::post("Delete", format!("/api/v1/triggers/{id}"))
        });
    }
    Ok(TriggerPage {
        frame: &viewer.frame,
        schedule: schedule(&trigger.spec),
        trigger,
        preview,
        firings,
        buttons,
        edit,
    })
}

/// A calendar with the buttons and form the reader may use on it.
pub(super) struct CalendarRow {
    pub calendar: Calendar,
    /// The excluded dates, one per line, for the edit form; none when the reader may not edit.
    pub edit: Option<String>,
    pub delete: Option<Button>,
}

#[derive(Template)]
#[template(path = "calendars.html")]
struct CalendarsPage<'a> {
    frame: &'a Frame,
    calendars: Vec<CalendarRow>,
    may_create: bool,
}

pub(super) async fn calendars(State(state): State<AppState>, viewer: Viewer) -> Response {
    let caller = &viewer.caller;
    let calendars = api::triggers::list_calendars(State(state.clone()), caller.clone())
        .await
        .map(|Json(calendars)| CalendarsPage {
            frame: &viewer.frame,
            calendars: calendars
                .into_iter()
                .map(|calendar| {
                    let may_edit =
                        caller.may(Resource::Calendars, Action::Edit, Some(&calendar.name));
                    CalendarRow {
                        edit: may_edit.then(|| {
                            calendar
                                .excluded_dates
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join("\n")
                        }),
                        delete: may_edit.then(|| Button {
                            method: "DELETE",
                            confirm: true,
                            class: "danger",
                            then: "reload",
                            ..Button::post("Delete", format!("/api/v1/calendars/{}", calendar.name))
                        }),
                        calendar,
                    }
                })
                .collect(),
            may_create: caller.may(Resource::Calendars, Action::Edit, None),
        });
    viewer.page(calendars)
}
