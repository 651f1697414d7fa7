//! The debug console: choose a target and an operation of the catalogue, fill the form its
//! schema makes (the script builds it), run it, watch its output; the history of activities
//! with filters, each repeatable; and one activity's page.

use askama::Template;
use axum::{Json, extract::State, response::Response};
use dirigent_domain::access::{Action, Resource};
use dirigent_proto::activity::{Activity, CatalogEntry, TargetKind};

use super::{Frame, Viewer, robots::Button};
use crate::{
    AppState, activities,
    api::{self, ApiQuery, PathSegment, activities::ListQuery},
    error::ApiError,
};

/// An operation as the console's menu offers it.
pub(super) struct OperationChoice {
    pub entry: CatalogEntry,
    pub kind: &'static str,
    pub schema: String,
}

#[derive(Template)]
#[template(path = "console.html")]
struct ConsolePage<'a> {
    frame: &'a Frame,
    operations: Vec<OperationChoice>,
    agents: Vec<String>,
    activities: Vec<Activity>,
    filter: ListQuery,
    state_filter: String,
}

impl ConsolePage<'_> {
    fn repeat(&self, activity: &Activity) -> String {
        repeat_link(activity)
    }
}

pub(super) async fn console(
    State(state): State<AppState>,
    viewer: Viewer,
    query: Result<ApiQuery<ListQuery>, ApiError>,
) -> Response {
    let page = match query {
        Ok(ApiQuery(filter)) => console_page(&state, &viewer, filter).await,
        Err(err) => Err(err),
    };
    viewer.page(page)
}

async fn console_page<'a>(
    state: &AppState,
    viewer: &'a Viewer,
    filter: ListQuery,
) -> Result<ConsolePage<'a>, ApiError> {
    let caller = &viewer.caller;
    caller.require(Resource::Console, Action::Use, None)?;
    let operations = activities::catalog()
        .into_iter()
        .map(|entry| OperationChoice {
            kind: match entry.target {
                TargetKind::Agent => "agent",
                TargetKind::Server => "server",
            },
            schema: entry.args_schema.to_string(),
            entry,
        })
        .collect();
    let agents = match caller.may(Resource::Agents, Action::Read, None) {
        true => {
            let Json(agents) =
                api::agents::list_agents(State(state.clone()), caller.clone()).await?;
            agents.into_iter().map(|agent| agent.name).collect()
        }
        false => Vec::new(),
    };
    let Json(activities) = api::activities::list_activities(
        State(state.clone()),
        caller.clone(),
        ApiQuery(filter.clone()),
    )
    .await?;
    Ok(ConsolePage {
        frame: &viewer.frame,
        operations,
        agents,
        activities,
        state_filter: filter
            .state
            .map(|state| state.as_str().to_owned())
            .unwrap_or_default(),
        filter,
    })
}

#[derive(Template)]
#[template(path = "activity.html")]
struct ActivityPage<'a> {
    frame: &'a Frame,
    activity: Activity,
    args: String,
    result: String,
    repeat: String,
    buttons: Vec<Button>,
}

pub(super) async fn activity(
    State(state): State<AppState>,
    viewer: Viewer,
    PathSegment(id): PathSegment,
) -> Response {
    viewer.page(activity_page(&state, &viewer, id).await)
}

async fn activity_page<'a>(
    state: &AppState,
    viewer: &'a Viewer,
    id: String,
) -> Result<ActivityPage<'a>, ApiError> {
    let query = ApiQuery(api::activities::GetQuery::default());
    let Json(activity) = api::activities::get_activity(
        State(state.clone()),
        viewer.caller.clone(),
        PathSegment(id),
        query,
    )
    .await?;
    let buttons = match activity.state.is_final() {
        true => Vec::new(),
        false => vec![Button {
            confirm: true,
            class: "danger",
            ..Button::post(
                "Cancel",
                format!("/api/v1/activities/{}/cancel", activity.id),
            )
        }],
    };
    Ok(ActivityPage {
        frame: &viewer.frame,
        args: pretty(&activity.args),
        result: activity.result.as_ref().map(pretty).unwrap_or_default(),
        repeat: repeat_link(&activity),
        activity,
        buttons,
    })
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// The address that opens the console with an activity's target, operation and arguments
/// filled in (in the fragment, which only the script reads).
fn repeat_link(activity: &Activity) -> String {
    let fragment: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("target", &activity.target)
        .append_pair("operation", &activity.operation)
        .append_pair("args", &activity.args.to_string())
        .append_pair("mode", activity.mode.as_str())
        .finish();
    format!("/console#{fragment}")
}
