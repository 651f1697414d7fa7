//! Logging in and out, and who the caller is.

use axum::{
    Extension, Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use dirigent_domain::InvalidField;
use dirigent_proto::{
    auth::{LoginRequest, LoginResponse, Me, SetLanguage},
    error::{ErrorBody, ErrorCode},
};
use dirigent_store::CredentialKind;

use crate::{
    AppState,
    api::ApiJson,
    audit::AuditSlot,
    auth::{
        self, Caller, cookie, secrets,
        throttle::{Admission, Attempt},
    },
    error::ApiError,
    ui::Lang,
};

/// Exchanges a username and password for a session token, answered or (`"cookie": true`)
/// set as an HttpOnly cookie.
#[utoipa::path(
    post,
    path = "/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, body = LoginResponse),
        (status = 401, description = "Wrong username or password", body = ErrorBody),
        (status = 429, description = "Too many failed logins for this user; see Retry-After", body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub(super) async fn login(
    State(state): State<AppState>,
    actor: Option<Extension<AuditSlot>>,
    parts: axum::http::request::Parts,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    if dirigent_domain::user::MAX_PASSWORD_LEN < request.password.len()
        || 256 < request.username.len()
    {
        return Err(wrong_credentials());
    }
    if let Some(Extension(actor)) = actor {
        actor.set(format!("user:{}", request.username));
    }
    let now = state.clock.now();
    let address = crate::http::client_address(
        &parts.extensions,
        &parts.headers,
        &state.config.trusted_proxies,
    );
    let attempt = Attempt::new(&request.username, address);
    match attempt.admit(&state.store, now).await? {
        Admission::Locked { until } => return Err(locked(until, now)),
        Admission::Check { delay } => tokio::time::sleep(delay).await,
    }
    let mut user_id = auth::check_login(&state.store, &request.username, &request.password).await?;
    if let (None, Some(command)) = (user_id, &state.config.login_command) {
        user_id =
            auth::external::check(&state.store, command, &request.username, &request.password)
                .await?;
    }
    let Some(user_id) = user_id else {
        tracing::info!(username = request.username, "login refused");
        let now = state.clock.now();
        return Err(match attempt.failed(&state.store, now).await? {
            Some(until) => locked(until, now),
            None => wrong_credentials(),
        });
    };
    attempt.succeeded(&state.store).await?;
    let token = secrets::new_token(secrets::SESSION_PREFIX).map_err(ApiError::internal)?;
    let now = state.clock.now();
    let expires_at = now
        .saturating_add(state.config.session_ttl)
        .map_err(ApiError::internal)?;
    state
        .store
        .insert_session(user_id, &secrets::token_digest(&token), now, expires_at)
        .await?;
    if !request.cookie {
        let answer = LoginResponse {
            token: Some(token),
            csrf_token: None,
            expires_at,
        };
        return Ok(Json(answer).into_response());
    }
    let answer = LoginResponse {
        token: None,
        csrf_token: Some(cookie::csrf_token(&token)),
        expires_at,
    };
    let max_age = state.config.session_ttl.as_secs();
    let set_cookie = cookie::set_session(&token, max_age, state.config.tls.is_some())
        .ok_or_else(|| ApiError::internal("a session token that is not a header value"))?;
    Ok(([(header::SET_COOKIE, set_cookie)], Json(answer)).into_response())
}

/// 429 with `Retry-After`: too many failed logins for the username.
fn locked(until: jiff::Timestamp, now: jiff::Timestamp) -> ApiError {
    let seconds = until.duration_since(now).as_secs().max(1);
    ApiError {
        retry_after: Some(u64::try_from(seconds).unwrap_or(1)),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyAttempts,
            format!("too many failed logins for this user; try again in {seconds} s"),
        )
    }
}

fn wrong_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::InvalidCredentials,
        "wrong username or password",
    )
}

/// Ends the caller's login session.
#[utoipa::path(
    post,
    path = "/logout",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The session token no longer works"),
        (status = 401, body = ErrorBody),
        (status = 422, description = "The credential is an API token, not a session", body = ErrorBody),
    )
)]
pub(super) async fn logout(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    if caller.credential != CredentialKind::Session {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidField,
            "logout ends a login session; revoke an API token with DELETE /api/v1/tokens/{id}",
        ));
    }
    let gone = || ApiError::unauthenticated("the session has ended already");
    state
        .store
        .delete_session(&caller.token_digest)
        .await
        .map_err(|err| ApiError::from_store(err, gone, gone))?;
    // Whether the session came in a cookie or not, the browser may forget it.
    let clear = cookie::clear_session(state.config.tls.is_some());
    state.credentials.clear();
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, clear)]).into_response())
}

/// Who the credentials belong to.
#[utoipa::path(
    get,
    path = "/me",
    tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = ErrorBody))
)]
pub(super) async fn me(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Me>, ApiError> {
    let credential = match caller.credential {
        CredentialKind::Session => "session",
        CredentialKind::ApiToken { .. } => "api_token",
        CredentialKind::RunToken { .. } => "run_token",
    };
    let language = match caller.user_id {
        Some(_) => state.store.user(&caller.username).await?.language,
        None => None,
    };
    Ok(Json(Me {
        username: caller.username,
        roles: caller.roles,
        credential: credential.to_owned(),
        language,
    }))
}

/// Sets the control panel's language for the caller.
#[utoipa::path(
    put,
    path = "/me/language",
    tag = "auth",
    security(("bearer" = [])),
    request_body = SetLanguage,
    responses(
        (status = 204, description = "Saved"),
        (status = 401, body = ErrorBody),
        (status = 403, description = "A run token has no user", body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub(super) async fn set_language(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<SetLanguage>,
) -> Result<StatusCode, ApiError> {
    let user = caller.user()?;
    if let Some(code) = &request.language
        && Lang::from_code(code).is_none()
    {
        return Err(ApiError::invalid(InvalidField::new(
            "language",
            format!("{code:?} is not a language of the panel: en or ru"),
        )));
    }
    let now = state.clock.now();
    let gone = || ApiError::unauthenticated("the user no longer exists");
    state
        .store
        .set_user_language(user, request.language.as_deref(), now)
        .await
        .map_err(|err| ApiError::from_store(err, gone, gone))?;
    Ok(StatusCode::NO_CONTENT)
}
