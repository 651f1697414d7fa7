//! Retention: the settings, how much of each kind of finished data is kept, what the last
//! sweep deleted; and a sweep now.

use axum::{Json, extract::State};
use dirigent_domain::access::{Action, Resource};
use dirigent_proto::{
    error::ErrorBody,
    retention::{Deleted, KeptKind, RetentionReport, RetentionSettings, Sweep},
};

use crate::{AppState, auth::Caller, error::ApiError, janitor};

/// How long finished data is kept, how much is kept now, and the last sweep.
#[utoipa::path(
    get,
    path = "/retention",
    tag = "retention",
    security(("bearer" = [])),
    responses((status = 200, body = RetentionReport), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn get_retention(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<RetentionReport>, ApiError> {
    caller.require(Resource::Settings, Action::Read, None)?;
    let kept = state
        .store
        .kept()
        .await?
        .into_iter()
        .map(|kept| KeptKind {
            kind: kept.kind.to_owned(),
            count: kept.count,
            oldest: kept.oldest,
        })
        .collect();
    let last_sweep = state
        .store
        .switch(janitor::LAST_SWEEP)
        .await?
        .and_then(|switch| {
            let deleted = serde_json::from_str(&switch.value).ok()?;
            Some(Sweep {
                at: switch.changed_at,
                deleted,
            })
        });
    let settings = state.config.retention;
    Ok(Json(RetentionReport {
        settings: RetentionSettings {
            runs_days: settings.runs_days,
            run_output_max_mib: settings.run_output_max_mib,
            trigger_firings_days: settings.trigger_firings_days,
            work_item_attempts_days: settings.work_item_attempts_days,
            activities_days: settings.activities_days,
            audit_days: settings.audit_days,
            agent_logs_days: settings.agent_logs_days,
            agent_logs_max_mib: settings.agent_logs_max_mib,
            server_logs_days: settings.server_logs_days,
            server_logs_max_mib: settings.server_logs_max_mib,
            activity_output_max_mib: settings.activity_output_max_mib,
        },
        kept,
        last_sweep,
    }))
}

/// Deletes now what the retention settings say is old (the janitor does it every hour);
/// answers what it deleted.
#[utoipa::path(
    post,
    path = "/retention/sweep",
    tag = "retention",
    security(("bearer" = [])),
    responses((status = 200, body = Deleted), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn sweep(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Deleted>, ApiError> {
    caller.require(Resource::Settings, Action::Admin, None)?;
    let deleted =
        janitor::sweep(&state.store, state.clock.as_ref(), &state.config.retention).await?;
    Ok(Json(deleted))
}
