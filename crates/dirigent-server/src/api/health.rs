//! Liveness and readiness, open to anyone (load balancers, supervisors).

use axum::{Json, extract::State};
use dirigent_proto::{auth::Health, error::ErrorBody};

use crate::{AppState, error::ApiError};

/// The process is alive and serving.
#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, body = Health)))]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

/// The database can be reached: the node can do useful work.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "meta",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody))
)]
pub(super) async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.store.ping().await?;
    Ok(Json(Health {
        status: "ok".to_owned(),
    }))
}
