//! Administration: users and roles, and the audit log (filtered by the page's address, the
//! way the API filters it).

use askama::Template;
use axum::{Json, extract::State, response::Response};
use dirigent_proto::auth::{AuditEntry, RoleSpec, User};

use super::{Frame, Viewer};
use crate::{
    AppState,
    api::{self, ApiQuery, audit::AuditParams},
    error::ApiError,
};

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage<'a> {
    frame: &'a Frame,
    users: Vec<User>,
    roles: Vec<RoleSpec>,
}

pub(super) async fn users(State(state): State<AppState>, viewer: Viewer) -> Response {
    viewer.page(users_page(&state, &viewer).await)
}

async fn users_page<'a>(state: &AppState, viewer: &'a Viewer) -> Result<UsersPage<'a>, ApiError> {
    let Json(users) = api::users::list_users(State(state.clone()), viewer.caller.clone()).await?;
    let Json(roles) = api::users::list_roles(State(state.clone()), viewer.caller.clone()).await?;
    Ok(UsersPage {
        frame: &viewer.frame,
        users,
        roles,
    })
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage<'a> {
    frame: &'a Frame,
    entries: Vec<AuditEntry>,
    actor: String,
    resource: String,
    outcome: String,
    /// The address of the next (older) page, when this one is full.
    older: Option<String>,
}

/// Entries a page of the audit log shows.
const AUDIT_PAGE: u32 = 100;

pub(super) async fn audit(
    State(state): State<AppState>,
    viewer: Viewer,
    params: Result<ApiQuery<AuditParams>, ApiError>,
) -> Response {
    let page = match params {
        Ok(ApiQuery(params)) => audit_page(&state, &viewer, params).await,
        Err(err) => Err(err),
    };
    viewer.page(page)
}

async fn audit_page<'a>(
    state: &AppState,
    viewer: &'a Viewer,
    mut params: AuditParams,
) -> Result<AuditPage<'a>, ApiError> {
    let actor = params.actor.clone().unwrap_or_default();
    let resource = params.resource.clone().unwrap_or_default();
    let outcome = params.outcome.clone().unwrap_or_default();
    params.limit = Some(params.limit.unwrap_or(AUDIT_PAGE));
    let limit = params.limit.unwrap_or(AUDIT_PAGE) as usize;
    let Json(entries) = api::audit::list_audit(
        State(state.clone()),
        viewer.caller.clone(),
        ApiQuery(params),
    )
    .await?;
    let older = (entries.len() == limit)
        .then(|| entries.last())
        .flatten()
        .map(|last| {
            let mut query = form_urlencoded::Serializer::new(String::new());
            if !actor.is_empty() {
                query.append_pair("actor", &actor);
            }
            if !resource.is_empty() {
                query.append_pair("resource", &resource);
            }
            if !outcome.is_empty() {
                query.append_pair("outcome", &outcome);
            }
            query.append_pair("before", &last.id.to_string());
            format!("/audit?{}", query.finish())
        });
    Ok(AuditPage {
        frame: &viewer.frame,
        entries,
        actor,
        resource,
        outcome,
        older,
    })
}
