//! Reading the audit log. There is no route that changes it.

use axum::{Json, extract::State};
use dirigent_domain::{
    InvalidField,
    access::{Action, Resource},
};
use dirigent_proto::{auth::AuditEntry, error::ErrorBody};
use dirigent_store::AuditQuery;
use jiff::Timestamp;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::{AppState, api::ApiQuery, auth::Caller, error::ApiError};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditParams {
    /// Only this actor, such as `user:alice`.
    pub(crate) actor: Option<String>,
    /// Only records about this resource, such as `robot:hr-b` or `run:run_4f0c…`.
    pub(crate) resource: Option<String>,
    /// Only `allowed`, `denied` or `failed`.
    pub(crate) outcome: Option<String>,
    /// Only records older than the one with this id (the next page).
    pub(crate) before: Option<i64>,
    /// Only records at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub(crate) since: Option<Timestamp>,
    /// At most this many, newest first (default 100, at most 1000).
    pub(crate) limit: Option<u32>,
}

/// The audit log, newest first: every state-changing request and every denial.
#[utoipa::path(
    get,
    path = "/audit",
    tag = "audit",
    security(("bearer" = [])),
    params(AuditParams),
    responses((status = 200, body = [AuditEntry]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn list_audit(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    caller.require(Resource::Users, Action::Admin, None)?;
    let limit = super::page_limit(params.limit, 100, 1000)?;
    if let Some(outcome) = params.outcome.as_deref()
        && !["allowed", "denied", "failed"].contains(&outcome)
    {
        return Err(ApiError::invalid(InvalidField::new(
            "outcome",
            "must be allowed, denied or failed",
        )));
    }
    let query = AuditQuery {
        actor: params.actor.as_deref(),
        resource: params.resource.as_deref(),
        outcome: params.outcome.as_deref(),
        before_id: params.before,
        since: params.since,
        limit,
    };
    let records = state.store.audit(&query).await?;
    let entries = records
        .into_iter()
        .map(|record| AuditEntry {
            id: record.id,
            at: record.at,
            actor: record.actor,
            action: record.action,
            target: record.target,
            address: record.address,
            outcome: record.outcome,
            status: record.status,
            resources: record.resources,
            changes: record
                .changes
                .and_then(|changes| serde_json::from_str(&changes).ok()),
        })
        .collect();
    Ok(Json(entries))
}
