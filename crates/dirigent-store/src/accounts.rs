//! Users, their login sessions and their API tokens. Secrets never reach this module: it
//! stores and finds password hashes and SHA-256 digests of tokens.

use jiff::Timestamp;

use crate::{Store, StoreError, StoreResult, dispatch, from_millis, from_millis_opt, to_millis};

/// The database id of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserId(pub i64);

/// What checking a login needs to know about a user.
#[derive(Debug, Clone)]
pub struct LoginRecord {
    pub user_id: UserId,
    pub username: String,
    pub password_hash: String,
    pub roles: Vec<String>,
    pub disabled: bool,
}

/// Failed logins of one subject (a user name, a client address, or both), as counted by
/// every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFailures {
    pub count: u32,
    pub last: Timestamp,
    pub locked_until: Option<Timestamp>,
}

/// Whose credential a token digest is, and how it was issued.
#[derive(Debug, Clone)]
pub struct Credential {
    pub user_id: UserId,
    pub username: String,
    pub roles: Vec<String>,
    pub kind: CredentialKind,
    /// The credential is refused from this time on; never, when `None`.
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    /// For an API token limited to some of its owner's permissions: those (JSON).
    pub token_permissions: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialKind {
    Session,
    ApiToken {
        id: String,
    },
    /// The token of a run, given to its robot; reaches only that run.
    RunToken {
        run_id: String,
    },
}

/// An API token to store.
#[derive(Debug, Clone)]
pub struct NewApiToken {
    pub id: String,
    pub name: String,
    pub token_hash: String,
    pub expires_at: Option<Timestamp>,
    /// A subset of the owner's permissions (JSON); all of them when `None`.
    pub permissions: Option<String>,
}

/// A live API token, as listed to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

#[derive(sqlx::FromRow)]
struct CredentialRow {
    user_id: i64,
    username: String,
    roles: String,
    token_id: Option<String>,
    expires_at: Option<i64>,
    last_used_at: Option<i64>,
    token_permissions: Option<String>,
}

#[derive(sqlx::FromRow)]
struct ApiTokenRow {
    id: String,
    name: String,
    created_at: i64,
    expires_at: Option<i64>,
    last_used_at: Option<i64>,
}

impl Store {
    /// Whether any user exists.
    pub async fn has_users(&self) -> StoreResult<bool> {
        let found: Option<i64> = dispatch!(self, reader, pool => {
            sqlx::query_scalar("SELECT id FROM users LIMIT 1").fetch_optional(pool).await
        })?;
        Ok(found.is_some())
    }

    /// Creates a user only if there is none yet; answers whether it did. Safe when several
    /// nodes start on one empty database at once: exactly one of them creates the user.
    pub async fn create_first_user(
        &self,
        username: &str,
        password_hash: &str,
        roles: &[String],
        now: Timestamp,
    ) -> StoreResult<bool> {
        let roles = encode_roles(roles)?;
        let n_rows: u64 = dispatch!(self, writer, pool => {
            sqlx::query(
                "INSERT INTO users (username, password_hash, roles, disabled, created_at, updated_at) \
                 SELECT $1, $2, $3, FALSE, $4, $4 WHERE NOT EXISTS (SELECT 1 FROM users) \
                 ON CONFLICT (username) DO NOTHING",
            )
            .bind(username)
            .bind(password_hash)
            .bind(&roles)
            .bind(to_millis(now))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(n_rows == 1)
    }

    /// Creates a user; `Conflict` when the username is taken.
    pub async fn insert_user(
        &self,
        username: &str,
        password_hash: &str,
        roles: &[String],
        now: Timestamp,
    ) -> StoreResult<UserId> {
        let roles = encode_roles(roles)?;
        let id: i64 = dispatch!(self, writer, pool => {
            sqlx::query_scalar(
                "INSERT INTO users (username, password_hash, roles, disabled, created_at, updated_at) \
                 VALUES ($1, $2, $3, FALSE, $4, $4) RETURNING id",
            )
            .bind(username)
            .bind(password_hash)
            .bind(&roles)
            .bind(to_millis(now))
            .fetch_one(pool)
            .await
        })?;
        Ok(UserId(id))
    }

    /// What a login by `username` is checked against; `NotFound` for an unknown user.
    pub async fn login_record(&self, username: &str) -> StoreResult<LoginRecord> {
        let (id, username, password_hash, roles, disabled): (i64, String, String, String, bool) = dispatch!(self, reader, pool => {
            sqlx::query_as(
                "SELECT id, username, password_hash, roles, disabled FROM users WHERE username = $1",
            )
            .bind(username)
            .fetch_one(pool)
            .await
        })?;
        Ok(LoginRecord {
            user_id: UserId(id),
            username,
            password_hash,
            roles: decode_roles(&roles)?,
            disabled,
        })
    }

    /// Records a login session under the digest of its token.
    pub async fn insert_session(
        &self,
        user_id: UserId,
        token_hash: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            sqlx::query(
                "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(token_hash)
            .bind(user_id.0)
            .bind(to_millis(now))
            .bind(to_millis(expires_at))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(())
    }

    /// Ends a login session; `NotFound` when it does not exist.
    pub async fn delete_session(&self, token_hash: &str) -> StoreResult<()> {
        let n_rows: u64 = dispatch!(self, writer, pool => {
            sqlx::query("DELETE FROM sessions WHERE token_hash = $1").bind(token_hash).execute(pool).await.map(|done| done.rows_affected())
        })?;
        if n_rows == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Deletes the sessions that expired before `now`; answers how many.
    pub async fn delete_expired_sessions(&self, now: Timestamp) -> StoreResult<u64> {
        let n_rows: u64 = dispatch!(self, writer, pool => {
            sqlx::query("DELETE FROM sessions WHERE expires_at <= $1").bind(to_millis(now)).execute(pool).await.map(|done| done.rows_affected())
        })?;
        Ok(n_rows)
    }

    /// The failed logins recorded for each of `subjects` (none for a subject without).
    pub async fn login_failures(
        &self,
        subjects: &[String],
    ) -> StoreResult<Vec<(String, LoginFailures)>> {
        let mut found = Vec::new();
        for subject in subjects {
            let row: Option<(i64, i64, Option<i64>)> = dispatch!(self, reader, pool => {
                sqlx::query_as(
                    "SELECT failures, window_start, locked_until FROM login_failures WHERE subject = $1",
                )
                .bind(subject)
                .fetch_optional(pool)
                .await?
            });
            if let Some((count, last, locked_until)) = row {
                let failures = LoginFailures {
                    count: u32::try_from(count).unwrap_or(u32::MAX),
                    last: from_millis("window_start", last)?,
                    locked_until: from_millis_opt("locked_until", locked_until)?,
                };
                found.push((subject.clone(), failures));
            }
        }
        Ok(found)
    }

    /// Counts a failed login of `subject` at `now`; answers its count now.
    pub async fn count_login_failure(&self, subject: &str, now: Timestamp) -> StoreResult<u32> {
        let count: i64 = dispatch!(self, writer, pool => {
            sqlx::query_scalar(
                "INSERT INTO login_failures (subject, failures, window_start) VALUES ($1, 1, $2) \
                 ON CONFLICT (subject) DO UPDATE SET failures = login_failures.failures + 1, \
                 window_start = $2 RETURNING failures",
            )
            .bind(subject)
            .bind(to_millis(now))
            .fetch_one(pool)
            .await?
        });
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    /// Locks `subject` until `until`.
    pub async fn lock_login(&self, subject: &str, until: Timestamp) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            sqlx::query("UPDATE login_failures SET locked_until = $2 WHERE subject = $1")
                .bind(subject)
                .bind(to_millis(until))
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    /// Forgets the failed logins of `subjects` (after a success).
    pub async fn clear_login_failures(&self, subjects: &[String]) -> StoreResult<()> {
        for subject in subjects {
            dispatch!(self, writer, pool => {
                sqlx::query("DELETE FROM login_failures WHERE subject = $1")
                    .bind(subject)
                    .execute(pool)
                    .await?
                    .rows_affected()
            });
        }
        Ok(())
    }

    /// Forgets failed logins last counted before `before` and no longer locked.
    pub async fn forget_login_failures(&self, before: Timestamp) -> StoreResult<u64> {
        let n_rows = dispatch!(self, writer, pool => {
            sqlx::query(
                "DELETE FROM login_failures WHERE window_start < $1 \
                 AND (locked_until IS NULL OR locked_until < $1)",
            )
            .bind(to_millis(before))
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n_rows)
    }

    /// The session whose token has this digest, if its user is enabled; `NotFound` otherwise.
    /// Expiry is the caller's to check, against its clock.
    pub async fn session_credential(&self, token_hash: &str) -> StoreResult<Credential> {
        let row: CredentialRow = dispatch!(self, reader, pool => {
            sqlx::query_as(
                "SELECT u.id AS user_id, u.username, u.roles, CAST(NULL AS TEXT) AS token_id, \
                 s.expires_at, CAST(NULL AS BIGINT) AS last_used_at, CAST(NULL AS TEXT) AS token_permissions \
                 FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.token_hash = $1 AND NOT u.disabled",
            )
            .bind(token_hash)
            .fetch_one(pool)
            .await
        })?;
        row.into_credential()
    }

    /// The live API token with this digest, if its user is enabled; `NotFound` otherwise.
    /// Expiry is the caller's to check, against its clock.
    pub async fn api_token_credential(&self, token_hash: &str) -> StoreResult<Credential> {
        let row: CredentialRow = dispatch!(self, reader, pool => {
            sqlx::query_as(
                "SELECT u.id AS user_id, u.username, u.roles, t.id AS token_id, \
                 t.expires_at, t.last_used_at, t.permissions AS token_permissions \
                 FROM api_tokens t JOIN users u ON u.id = t.user_id \
                 WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND NOT u.disabled",
            )
            .bind(token_hash)
            .fetch_one(pool)
            .await
        })?;
        row.into_credential()
    }

    /// Stores a new API token; `Conflict` when the user has a live token of that name.
    pub async fn insert_api_token(
        &self,
        user_id: UserId,
        token: &NewApiToken,
        now: Timestamp,
    ) -> StoreResult<ApiToken> {
        dispatch!(self, writer, pool => {
            sqlx::query(
                "INSERT INTO api_tokens (id, user_id, name, token_hash, created_at, expires_at, permissions) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&token.id)
            .bind(user_id.0)
            .bind(&token.name)
            .bind(&token.token_hash)
            .bind(to_millis(now))
            .bind(token.expires_at.map(to_millis))
            .bind(&token.permissions)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(ApiToken {
            id: token.id.clone(),
            name: token.name.clone(),
            created_at: now,
            expires_at: token.expires_at,
            last_used_at: None,
        })
    }

    /// The live (not revoked) API tokens of a user, oldest first.
    pub async fn api_tokens(&self, user_id: UserId) -> StoreResult<Vec<ApiToken>> {
        let rows: Vec<ApiTokenRow> = dispatch!(self, reader, pool => {
            sqlx::query_as(
                "SELECT id, name, created_at, expires_at, last_used_at FROM api_tokens \
                 WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at, id",
            )
            .bind(user_id.0)
            .fetch_all(pool)
            .await
        })?;
        rows.into_iter()
            .map(|row| {
                Ok(ApiToken {
                    created_at: from_millis("created_at", row.created_at)?,
                    expires_at: from_millis_opt("expires_at", row.expires_at)?,
                    last_used_at: from_millis_opt("last_used_at", row.last_used_at)?,
                    id: row.id,
                    name: row.name,
                })
            })
            .collect()
    }

    /// Revokes a live API token of `user_id`; `NotFound` when there is none with that id.
    pub async fn revoke_api_token(
        &self,
        user_id: UserId,
        id: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        let n_rows: u64 = dispatch!(self, writer, pool => {
            sqlx::query(
                "UPDATE api_tokens SET revoked_at = $3 \
                 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(user_id.0)
            .bind(to_millis(now))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        if n_rows == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Records that an API token was used at `now`.
    pub async fn touch_api_token(&self, id: &str, now: Timestamp) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            sqlx::query("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1")
                .bind(id)
                .bind(to_millis(now))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(())
    }
}

impl CredentialRow {
    fn into_credential(self) -> StoreResult<Credential> {
        Ok(Credential {
            user_id: UserId(self.user_id),
            roles: decode_roles(&self.roles)?,
            username: self.username,
            kind: match self.token_id {
                Some(id) => CredentialKind::ApiToken { id },
                None => CredentialKind::Session,
            },
            expires_at: from_millis_opt("expires_at", self.expires_at)?,
            last_used_at: from_millis_opt("last_used_at", self.last_used_at)?,
            token_permissions: self.token_permissions,
        })
    }
}

fn encode_roles(roles: &[String]) -> StoreResult<String> {
    serde_json::to_string(roles).map_err(|err| StoreError::Corrupt(err.to_string()))
}

fn decode_roles(roles: &str) -> StoreResult<Vec<String>> {
    serde_json::from_str(roles).map_err(|err| StoreError::Corrupt(format!("users.roles: {err}")))
}
