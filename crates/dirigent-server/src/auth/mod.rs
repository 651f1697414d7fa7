//! Who is calling and what they may do.
//!
//! Every route of `/api/v1` except `/login` takes a [`Caller`], which authenticates the
//! `Authorization: Bearer` token (a login session, an API token or a run token), or else a
//! browser's session cookie (see [`cookie`]), or answers 401. A handler
//! then declares the permission it needs with [`Caller::require`] — the one place where
//! permissions are checked — before touching anything.

pub mod cache;
pub mod cookie;
pub mod external;
pub mod secrets;
pub mod throttle;

use axum::{extract::FromRequestParts, http::request::Parts};
use dirigent_domain::access::{self, Action, Permission, Resource};
use dirigent_store::{Credential, CredentialKind, Store, StoreError, UserId};
use jiff::{SignedDuration, Timestamp};

use crate::{AppState, StartError, audit::AuditSlot, config::Secret, error::ApiError};

/// An authenticated caller and the permissions their roles grant.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user behind the credential; none for a run token.
    pub user_id: Option<UserId>,
    pub username: String,
    pub roles: Vec<String>,
    pub credential: CredentialKind,
    /// The digest of the bearer token, to end a session at logout.
    pub token_digest: String,
    permissions: Vec<Permission>,
    /// An API token limited to some of its owner's permissions: those. The caller may do
    /// only what both allow.
    token_permissions: Option<Vec<Permission>>,
    /// When the credential stops working.
    expires_at: Option<Timestamp>,
}

impl Caller {
    /// Allows the request if the caller may do `action` on the resource of kind `resource`
    /// named `target` (or, without a target, on some resource of that kind); 403 otherwise.
    pub fn require(
        &self,
        resource: Resource,
        action: Action,
        target: Option<&str>,
    ) -> Result<(), ApiError> {
        if self.may(resource, action, target) {
            return Ok(());
        }
        let on = match target {
            Some(name) => format!("{resource} named {name:?}"),
            None => resource.to_string(),
        };
        Err(ApiError::forbidden(format!(
            "{} may not {action} {on}",
            self.username
        )))
    }

    /// Allows `action` (`read` or `logs`) on a run: to its own robot through its run token,
    /// otherwise by the permissions on runs, scoped by the run's robot name.
    /// Before a run is looked up: the caller may do `action` to some runs (a run token to its
    /// own, checked once the run is found). So a caller who may not gets 403 whether or not
    /// the run exists.
    pub fn require_some_runs(&self, action: Action) -> Result<(), ApiError> {
        match self.credential {
            CredentialKind::RunToken { .. } => Ok(()),
            _ => self.require(Resource::Runs, action, None),
        }
    }

    pub fn require_run(&self, run_id: &str, robot: &str, action: Action) -> Result<(), ApiError> {
        if let CredentialKind::RunToken { run_id: own } = &self.credential {
            if own == run_id {
                return Ok(());
            }
            return Err(ApiError::forbidden("a run token reaches only its own run"));
        }
        self.require(Resource::Runs, action, Some(robot))
    }

    /// Whether the credential still works — not logged out, revoked, expired or its user
    /// disabled — asked of the store: for responses that outlast their request.
    pub async fn still_valid(&self, state: &AppState) -> bool {
        let now = state.clock.now();
        let found = match self.credential {
            CredentialKind::Session => state.store.session_credential(&self.token_digest).await,
            CredentialKind::ApiToken { .. } => {
                state.store.api_token_credential(&self.token_digest).await
            }
            CredentialKind::RunToken { .. } => {
                return state.store.run_by_token(&self.token_digest).await.is_ok();
            }
        };
        found.is_ok_and(|credential| credential.expires_at.is_none_or(|at| now < at))
    }

    /// Whether the credential is an API token limited to some of its owner's permissions.
    pub fn is_limited(&self) -> bool {
        self.token_permissions.is_some()
    }

    /// The user behind the credential; 403 for run tokens, which act for no user.
    pub fn user(&self) -> Result<UserId, ApiError> {
        self.user_id
            .ok_or_else(|| ApiError::forbidden("a run token cannot do this"))
    }

    /// The name patterns of the caller's own grants of `action` on `resource` (an API token's
    /// limits aside: check each resource with [`Caller::may`]).
    pub fn patterns(&self, resource: Resource, action: Action) -> Vec<&str> {
        self.permissions
            .iter()
            .filter(|perm| perm.resource == resource && perm.actions.contains(&action))
            .map(|perm| perm.pattern.as_str())
            .collect()
    }

    /// Whether the caller may do `action` on `target`; for filtering lists.
    pub fn may(&self, resource: Resource, action: Action, target: Option<&str>) -> bool {
        access::allows(&self.permissions, resource, action, target)
            && self
                .token_permissions
                .as_ref()
                .is_none_or(|limited| access::allows(limited, resource, action, target))
    }
}

/// API tokens record their last use at most this often, so reads stay reads.
const LAST_USED_RESOLUTION: SignedDuration = SignedDuration::from_secs(60);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let token = match parts.headers.get(axum::http::header::AUTHORIZATION) {
            Some(header) => header
                .to_str()
                .ok()
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or_else(|| {
                    ApiError::unauthenticated("the Authorization header must be: Bearer TOKEN")
                })?,
            None => {
                let Some(token) = cookie::session_token(&parts.headers) else {
                    return Err(ApiError::unauthenticated(
                        "authentication required: send Authorization: Bearer TOKEN (from POST /api/v1/login or an API token)",
                    ));
                };
                if !token.starts_with(secrets::SESSION_PREFIX) {
                    return Err(ApiError::unauthenticated(
                        "the session cookie holds no session token",
                    ));
                }
                if !cookie::passes_csrf_check(&parts.method, &parts.headers, token) {
                    return Err(ApiError::forbidden(
                        "a request with the session cookie must carry the session's CSRF token in X-CSRF-Token",
                    ));
                }
                token
            }
        };
        let digest = secrets::token_digest(token);
        let now = state.clock.now();
        let caller = match state.credentials.get(&digest) {
            Some(caller) => caller,
            None => {
                let caller = authenticate(state, token, digest.clone(), now).await?;
                state.credentials.insert(digest, caller.clone());
                caller
            }
        };
        if caller
            .expires_at
            .is_some_and(|expires_at| expires_at <= now)
        {
            return Err(refused());
        }
        let actor = match caller.user_id {
            Some(_) => format!("user:{}", caller.username),
            None => caller.username.clone(),
        };
        AuditSlot::name(&parts.extensions, actor);
        Ok(caller)
    }
}

fn refused() -> ApiError {
    ApiError::unauthenticated("the token is unknown, expired or revoked")
}

/// Looks a token up in the store: the run or user behind it, and their permissions.
async fn authenticate(
    state: &AppState,
    token: &str,
    digest: String,
    now: Timestamp,
) -> Result<Caller, ApiError> {
    if token.starts_with(secrets::RUN_TOKEN_PREFIX) {
        let run = state
            .store
            .run_by_token(&digest)
            .await
            .map_err(|err| ApiError::from_store(err, refused, refused))?;
        // A run may use the queues its robot is granted.
        let permissions = match state.store.robot(&run.robot).await {
            Ok(robot) => robot
                .definition
                .queues
                .into_iter()
                .map(|pattern| Permission {
                    resource: Resource::Queues,
                    actions: vec![Action::Read, Action::Add, Action::Process],
                    pattern,
                })
                .collect(),
            Err(StoreError::NotFound) => Vec::new(),
            Err(err) => return Err(err.into()),
        };
        return Ok(Caller {
            user_id: None,
            username: format!("run:{}", run.id),
            roles: Vec::new(),
            credential: CredentialKind::RunToken { run_id: run.id },
            token_digest: digest,
            permissions,
            token_permissions: None,
            expires_at: None,
        });
    }
    let found = if token.starts_with(secrets::SESSION_PREFIX) {
        state.store.session_credential(&digest).await
    } else if token.starts_with(secrets::API_TOKEN_PREFIX) {
        state.store.api_token_credential(&digest).await
    } else {
        Err(StoreError::NotFound)
    };
    let credential: Credential =
        found.map_err(|err| ApiError::from_store(err, refused, refused))?;
    if let CredentialKind::ApiToken { id } = &credential.kind {
        let stale = credential
            .last_used_at
            .is_none_or(|used| LAST_USED_RESOLUTION <= now.duration_since(used));
        if stale {
            state.store.touch_api_token(id, now).await?;
        }
    }
    let token_permissions = credential
        .token_permissions
        .as_deref()
        .map(parse_permissions)
        .transpose()?;
    Ok(Caller {
        token_permissions,
        permissions: permissions_of(&state.store, &credential.roles).await?,
        user_id: Some(credential.user_id),
        username: credential.username,
        roles: credential.roles,
        credential: credential.kind,
        token_digest: digest,
        expires_at: credential.expires_at,
    })
}

/// The union of the permissions of the given roles, built-in or custom; unknown role names
/// (a custom role deleted since) grant nothing.
async fn permissions_of(store: &Store, roles: &[String]) -> Result<Vec<Permission>, ApiError> {
    let mut permissions = Vec::new();
    for role in roles {
        if let Some(builtin) = access::builtin_role(role) {
            permissions.extend(builtin);
            continue;
        }
        match store.role(role).await {
            Ok(custom) => permissions.extend(parse_permissions(&custom.permissions)?),
            Err(StoreError::NotFound) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(permissions)
}

/// The permissions of a custom role, stored as JSON of their wire form.
pub(crate) fn parse_permissions(json: &str) -> Result<Vec<Permission>, ApiError> {
    let specs: Vec<dirigent_proto::auth::PermissionSpec> =
        serde_json::from_str(json).map_err(ApiError::internal)?;
    specs
        .iter()
        .map(|spec| {
            Permission::parse(&spec.resource, &spec.actions, spec.pattern.as_deref())
                .map_err(ApiError::internal)
        })
        .collect()
}

/// Checks a username and password; answers the user's id, or `None` when either is wrong
/// (or the user is disabled). Takes as long for an unknown user as for a wrong password.
pub async fn check_login(
    store: &Store,
    username: &str,
    password: &str,
) -> Result<Option<UserId>, ApiError> {
    let record = match store.login_record(username).await {
        Ok(record) => Some(record),
        Err(StoreError::NotFound) => None,
        Err(err) => return Err(err.into()),
    };
    let hash = record.as_ref().map(|record| record.password_hash.clone());
    let password = password.to_owned();
    let matches = tokio::task::spawn_blocking(move || match hash {
        Some(hash) => secrets::verify_password(&password, &hash),
        None => {
            // Spend the same work as a real check, so timing does not reveal which users exist.
            let _ = secrets::hash_password(&password);
            false
        }
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(record
        .filter(|record| matches && !record.disabled)
        .map(|record| record.user_id))
}

/// Creates `admin` on an empty database, with the configured password or a generated one.
/// Answers the generated password, which the caller shows once.
pub async fn bootstrap_admin(
    store: &Store,
    configured: Option<&Secret>,
    now: Timestamp,
) -> Result<Option<String>, StartError> {
    let bootstrap_error = |err: &dyn std::fmt::Display| StartError::Bootstrap(err.to_string());
    if store
        .has_users()
        .await
        .map_err(|err| bootstrap_error(&err))?
    {
        return Ok(None);
    }
    let (password, generated) = match configured {
        Some(secret) => (secret.expose().to_owned(), false),
        None => (
            secrets::new_password().map_err(|err| bootstrap_error(&err))?,
            true,
        ),
    };
    let to_hash = password.clone();
    let hash = tokio::task::spawn_blocking(move || secrets::hash_password(&to_hash))
        .await
        .map_err(|err| bootstrap_error(&err))?
        .map_err(StartError::Bootstrap)?;
    let created = store
        .create_first_user("admin", &hash, &["admin".to_owned()], now)
        .await
        .map_err(|err| bootstrap_error(&err))?;
    if created {
        tracing::info!("created the first user, admin");
    }
    Ok((created && generated).then_some(password))
}
