//! API tokens: a user's named, revocable, optionally expiring credentials for scripts.
//! Everyone manages their own; the secret is shown once, at creation.

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use dirigent_domain::{InvalidField, access::Permission};
use dirigent_proto::{
    auth::{CreateTokenRequest, CreatedToken, TokenInfo},
    error::{ErrorBody, ErrorCode},
};
use dirigent_store::{ApiToken, NewApiToken};

use crate::{
    AppState,
    api::{ApiJson, PathSegment},
    auth::{Caller, secrets},
    error::ApiError,
};

/// The caller's live API tokens.
#[utoipa::path(
    get,
    path = "/tokens",
    tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, body = [TokenInfo]), (status = 401, body = ErrorBody))
)]
pub(super) async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    let tokens = state.store.api_tokens(caller.user()?).await?;
    Ok(Json(tokens.into_iter().map(token_info).collect()))
}

/// Creates an API token for the caller; the answer is the only time the secret is shown.
#[utoipa::path(
    post,
    path = "/tokens",
    tag = "auth",
    security(("bearer" = [])),
    request_body = CreateTokenRequest,
    responses(
        (status = 201, body = CreatedToken),
        (status = 401, body = ErrorBody),
        (status = 409, description = "The caller has a live token of that name", body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub(super) async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateTokenRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if caller.is_limited() {
        return Err(ApiError::forbidden(
            "a token limited to some permissions cannot create tokens",
        ));
    }
    let name = request.name.trim();
    if name.is_empty() || 64 < name.chars().count() || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(InvalidField::new(
            "name",
            "must have 1 to 64 printable characters",
        )));
    }
    let now = state.clock.now();
    if request
        .expires_at
        .is_some_and(|expires_at| expires_at <= now)
    {
        return Err(ApiError::invalid(InvalidField::new(
            "expires_at",
            "must be in the future",
        )));
    }
    let permissions = match &request.permissions {
        Some(specs) => {
            let mut wire = Vec::with_capacity(specs.len());
            for (idx, spec) in specs.iter().enumerate() {
                let field = |inner: &str| format!("permissions[{idx}].{inner}");
                let permission =
                    Permission::parse(&spec.resource, &spec.actions, spec.pattern.as_deref())
                        .map_err(|err| {
                            ApiError::invalid(InvalidField::new(field(&err.field), err.reason))
                        })?;
                if let Some(action) = permission
                    .actions
                    .iter()
                    .find(|action| !caller.may(permission.resource, **action, None))
                {
                    return Err(ApiError::invalid(InvalidField::new(
                        field("actions"),
                        format!(
                            "you may not {action} {} yourself, so a token of yours cannot",
                            permission.resource
                        ),
                    )));
                }
                wire.push(spec.clone());
            }
            Some(serde_json::to_string(&wire).map_err(ApiError::internal)?)
        }
        None => None,
    };
    let secret = secrets::new_token(secrets::API_TOKEN_PREFIX).map_err(ApiError::internal)?;
    let new = NewApiToken {
        id: secrets::new_id("tok_").map_err(ApiError::internal)?,
        name: name.to_owned(),
        token_hash: secrets::token_digest(&secret),
        expires_at: request.expires_at,
        permissions,
    };
    let taken = || {
        ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::TokenExists,
            format!("you have a token named {name:?} already"),
        )
    };
    let stored = state
        .store
        .insert_api_token(caller.user()?, &new, now)
        .await
        .map_err(|err| ApiError::from_store(err, || ApiError::internal("token vanished"), taken))?;
    let location = format!("/api/v1/tokens/{}", stored.id);
    let created = CreatedToken {
        id: stored.id,
        name: stored.name,
        token: secret,
        expires_at: stored.expires_at,
    };
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(created),
    ))
}

/// Revokes one of the caller's API tokens at once.
#[utoipa::path(
    delete,
    path = "/tokens/{id}",
    tag = "auth",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The token's id, as listed")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub(super) async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(id): PathSegment,
) -> Result<StatusCode, ApiError> {
    let now = state.clock.now();
    state
        .store
        .revoke_api_token(caller.user()?, &id, now)
        .await
        .map_err(|err| {
            ApiError::from_lookup(
                err,
                ErrorCode::TokenNotFound,
                format!("you have no live token with id {id:?}"),
            )
        })?;
    state.credentials.clear();
    Ok(StatusCode::NO_CONTENT)
}

fn token_info(token: ApiToken) -> TokenInfo {
    TokenInfo {
        id: token.id,
        name: token.name,
        created_at: token.created_at,
        expires_at: token.expires_at,
        last_used_at: token.last_used_at,
    }
}
