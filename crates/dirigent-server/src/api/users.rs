//! Users and roles: administrators create, change, disable and delete users, end their
//! sessions, and define custom roles; everyone changes their own password.

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use dirigent_domain::{
    InvalidField,
    access::{self, Action, BUILTIN_ROLES, Permission, Resource},
    user::{Username, check_password},
};
use dirigent_proto::{
    auth::{ChangePassword, CreateUser, PermissionSpec, RoleSpec, UpdateUser, User},
    error::{ErrorBody, ErrorCode},
};
use dirigent_store::{RoleRecord, StoreError, UserRecord};

use crate::{
    AppState,
    api::{ApiJson, PathSegment},
    audit::AuditSlot,
    auth::{self, Caller, secrets},
    error::ApiError,
};

/// Every user.
#[utoipa::path(get, path = "/users", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = [User]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<User>>, ApiError> {
    caller.require(Resource::Users, Action::Admin, None)?;
    Ok(Json(
        state
            .store
            .users()
            .await?
            .into_iter()
            .map(to_wire)
            .collect(),
    ))
}

/// Creates a user.
#[utoipa::path(post, path = "/users", tag = "users", security(("bearer" = [])), request_body = CreateUser,
    responses((status = 201, body = User), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    audit: AuditSlot,
    ApiJson(request): ApiJson<CreateUser>,
) -> Result<impl IntoResponse, ApiError> {
    audit.about(format!("user:{}", request.username));
    caller.require(Resource::Users, Action::Admin, Some(&request.username))?;
    let username = Username::parse(&request.username).map_err(ApiError::invalid)?;
    check_password("password", &request.password).map_err(ApiError::invalid)?;
    check_roles(&state, &request.roles).await?;
    let hash = hash(request.password).await?;
    let taken = || name_taken("user", username.as_str());
    state
        .store
        .insert_user(username.as_str(), &hash, &request.roles, state.clock.now())
        .await
        .map_err(|err| ApiError::from_store(err, || ApiError::internal("user vanished"), taken))?;
    let user = state.store.user(username.as_str()).await?;
    let location = format!("/api/v1/users/{username}");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(to_wire(user)),
    ))
}

/// One user.
#[utoipa::path(get, path = "/users/{name}", tag = "users", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 200, body = User), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(name): PathSegment,
) -> Result<Json<User>, ApiError> {
    caller.require(Resource::Users, Action::Admin, Some(&name))?;
    let user = state
        .store
        .user(&name)
        .await
        .map_err(|err| user_error(err, &name))?;
    Ok(Json(to_wire(user)))
}

/// Changes a user's roles, disables or enables them, or resets their password. Disabling and
/// resetting end the user's sessions.
#[utoipa::path(put, path = "/users/{name}", tag = "users", security(("bearer" = [])), params(("name" = String, Path)),
    request_body = UpdateUser,
    responses((status = 200, body = User), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn update_user(
    State(state): State<AppState>,
    caller: Caller,
    audit: AuditSlot,
    PathSegment(name): PathSegment,
    ApiJson(request): ApiJson<UpdateUser>,
) -> Result<Json<User>, ApiError> {
    caller.require(Resource::Users, Action::Admin, Some(&name))?;
    let before = state.store.user(&name).await.ok().map(to_wire);
    if name == caller.username && request.disabled == Some(true) {
        return Err(ApiError::invalid(InvalidField::new(
            "disabled",
            "you cannot disable yourself",
        )));
    }
    if let Some(roles) = &request.roles {
        check_roles(&state, roles).await?;
    }
    let hash = match request.password {
        Some(password) => {
            check_password("password", &password).map_err(ApiError::invalid)?;
            Some(hash(password).await?)
        }
        None => None,
    };
    state
        .store
        .update_user(
            &name,
            request.roles.as_deref(),
            request.disabled,
            hash.as_deref(),
            state.clock.now(),
        )
        .await
        .map_err(|err| user_error(err, &name))?;
    let user = state
        .store
        .user(&name)
        .await
        .map_err(|err| user_error(err, &name))?;
    state.credentials.clear();
    let user = to_wire(user);
    if let (Some(before), Ok(mut after)) = (before, serde_json::to_value(&user)) {
        // A new password shows as changed, its value redacted.
        let mut before = serde_json::to_value(before).unwrap_or_default();
        if hash.is_some() {
            before["password"] = "old".into();
            after["password"] = "new".into();
        }
        audit.changed(&before, &after);
    }
    Ok(Json(user))
}

/// Deletes a user with their sessions and API tokens.
#[utoipa::path(delete, path = "/users/{name}", tag = "users", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn delete_user(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(name): PathSegment,
) -> Result<StatusCode, ApiError> {
    caller.require(Resource::Users, Action::Admin, Some(&name))?;
    if name == caller.username {
        return Err(ApiError::invalid(InvalidField::new(
            "name",
            "you cannot delete yourself",
        )));
    }
    state
        .store
        .delete_user(&name)
        .await
        .map_err(|err| user_error(err, &name))?;
    state.credentials.clear();
    Ok(StatusCode::NO_CONTENT)
}

/// Ends every session of a user ("log out everywhere"); their API tokens stay.
#[utoipa::path(post, path = "/users/{name}/logout", tag = "users", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 204, description = "Every session ended"), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn logout_user(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(name): PathSegment,
) -> Result<StatusCode, ApiError> {
    let own = caller.user_id.is_some() && name == caller.username;
    if !own {
        caller.require(Resource::Users, Action::Admin, Some(&name))?;
    }
    let user = state
        .store
        .user(&name)
        .await
        .map_err(|err| user_error(err, &name))?;
    state.store.delete_user_sessions(user.id).await?;
    state.credentials.clear();
    Ok(StatusCode::NO_CONTENT)
}

/// Changes the caller's own password; ends their other sessions too.
#[utoipa::path(post, path = "/me/password", tag = "users", security(("bearer" = [])), request_body = ChangePassword,
    responses((status = 204, description = "Changed"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<ChangePassword>,
) -> Result<StatusCode, ApiError> {
    caller.user()?;
    if auth::check_login(&state.store, &caller.username, &request.current_password)
        .await?
        .is_none()
    {
        return Err(ApiError::invalid(InvalidField::new(
            "current_password",
            "is wrong",
        )));
    }
    check_password("new_password", &request.new_password).map_err(ApiError::invalid)?;
    let hash = hash(request.new_password).await?;
    state
        .store
        .update_user(&caller.username, None, None, Some(&hash), state.clock.now())
        .await?;
    state.credentials.clear();
    Ok(StatusCode::NO_CONTENT)
}

/// The built-in roles, then the custom ones.
#[utoipa::path(get, path = "/roles", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = [RoleSpec]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn list_roles(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<RoleSpec>>, ApiError> {
    caller.require(Resource::Users, Action::Admin, None)?;
    let mut roles: Vec<RoleSpec> = BUILTIN_ROLES
        .iter()
        .map(|name| RoleSpec {
            name: (*name).to_owned(),
            description: "built in".to_owned(),
            permissions: access::builtin_role(name)
                .unwrap_or_default()
                .iter()
                .map(permission_to_wire)
                .collect(),
            builtin: true,
        })
        .collect();
    for role in state.store.roles().await? {
        let permissions = auth::parse_permissions(&role.permissions)?;
        roles.push(RoleSpec {
            name: role.name,
            description: role.description,
            permissions: permissions.iter().map(permission_to_wire).collect(),
            builtin: false,
        });
    }
    Ok(Json(roles))
}

/// Defines a custom role.
#[utoipa::path(post, path = "/roles", tag = "users", security(("bearer" = [])), request_body = RoleSpec,
    responses((status = 201, body = RoleSpec), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn create_role(
    State(state): State<AppState>,
    caller: Caller,
    audit: AuditSlot,
    ApiJson(request): ApiJson<RoleSpec>,
) -> Result<impl IntoResponse, ApiError> {
    audit.about(format!("role:{}", request.name));
    caller.require(Resource::Users, Action::Admin, None)?;
    let name = Username::parse(&request.name)
        .map_err(|err| ApiError::invalid(InvalidField::new("name", err.reason)))?;
    if BUILTIN_ROLES.contains(&name.as_str()) {
        return Err(name_taken("role", name.as_str()));
    }
    let mut permissions = Vec::new();
    for (idx, spec) in request.permissions.iter().enumerate() {
        let permission = Permission::parse(&spec.resource, &spec.actions, spec.pattern.as_deref())
            .map_err(|err| {
                ApiError::invalid(InvalidField::new(
                    format!("permissions[{idx}].{}", err.field),
                    err.reason,
                ))
            })?;
        permissions.push(permission);
    }
    let wire: Vec<PermissionSpec> = permissions.iter().map(permission_to_wire).collect();
    let record = RoleRecord {
        name: name.to_string(),
        description: request.description.clone(),
        permissions: serde_json::to_string(&wire).map_err(ApiError::internal)?,
        created_at: state.clock.now(),
    };
    let taken = || name_taken("role", name.as_str());
    state
        .store
        .insert_role(&record)
        .await
        .map_err(|err| ApiError::from_store(err, || ApiError::internal("role vanished"), taken))?;
    let role = RoleSpec {
        name: record.name,
        description: record.description,
        permissions: wire,
        builtin: false,
    };
    Ok((StatusCode::CREATED, Json(role)))
}

/// Deletes a custom role; users holding it lose its permissions at once.
#[utoipa::path(delete, path = "/roles/{name}", tag = "users", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn delete_role(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(name): PathSegment,
) -> Result<StatusCode, ApiError> {
    caller.require(Resource::Users, Action::Admin, None)?;
    if BUILTIN_ROLES.contains(&name.as_str()) {
        return Err(ApiError::invalid(InvalidField::new(
            "name",
            "built-in roles cannot be deleted",
        )));
    }
    state.store.delete_role(&name).await.map_err(|err| {
        ApiError::from_lookup(
            err,
            ErrorCode::RoleNotFound,
            format!("no role named {name:?}"),
        )
    })?;
    state.credentials.clear();
    Ok(StatusCode::NO_CONTENT)
}

async fn check_roles(state: &AppState, roles: &[String]) -> Result<(), ApiError> {
    for (idx, role) in roles.iter().enumerate() {
        if BUILTIN_ROLES.contains(&role.as_str()) {
            continue;
        }
        match state.store.role(role).await {
            Ok(_) => {}
            Err(StoreError::NotFound) => {
                return Err(ApiError::invalid(InvalidField::new(
                    format!("roles[{idx}]"),
                    format!("no role named {role:?}"),
                )));
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || secrets::hash_password(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

fn name_taken(kind: &str, name: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorCode::NameTaken,
        format!("a {kind} named {name:?} exists already"),
    )
}

fn user_error(err: StoreError, name: &str) -> ApiError {
    ApiError::from_lookup(
        err,
        ErrorCode::UserNotFound,
        format!("no user named {name:?}"),
    )
}

fn permission_to_wire(permission: &Permission) -> PermissionSpec {
    PermissionSpec {
        resource: permission.resource.as_str().to_owned(),
        actions: permission
            .actions
            .iter()
            .map(|action| action.as_str().to_owned())
            .collect(),
        pattern: Some(permission.pattern.as_str().to_owned()),
    }
}

fn to_wire(user: UserRecord) -> User {
    User {
        username: user.username,
        roles: user.roles,
        disabled: user.disabled,
        created_at: user.created_at,
        updated_at: user.updated_at,
    }
}
