//! Managing users (beyond logging in: see `accounts`) and custom roles.

use jiff::Timestamp;

use crate::{BeginWrite, Store, StoreError, StoreResult, UserId, dispatch, from_millis, to_millis};

/// A user as administrators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
    pub roles: Vec<String>,
    pub disabled: bool,
    /// The panel's language the user chose (`en`, `ru`); none: the browser's.
    pub language: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A custom role; its permissions are kept as JSON, parsed by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRecord {
    pub name: String,
    pub description: String,
    pub permissions: String,
    pub created_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: i64,
    username: String,
    roles: String,
    disabled: bool,
    language: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl Store {
    pub async fn users(&self) -> StoreResult<Vec<UserRecord>> {
        let rows: Vec<UserRow> = dispatch!(self, reader, pool => {
            sqlx::query_as("SELECT id, username, roles, disabled, language, created_at, updated_at FROM users ORDER BY username")
                .fetch_all(pool)
                .await
        })?;
        rows.into_iter().map(UserRow::into_record).collect()
    }

    pub async fn user(&self, username: &str) -> StoreResult<UserRecord> {
        let row: UserRow = dispatch!(self, reader, pool => {
            sqlx::query_as("SELECT id, username, roles, disabled, language, created_at, updated_at FROM users WHERE username = $1")
                .bind(username)
                .fetch_one(pool)
                .await
        })?;
        row.into_record()
    }

    /// Saves the panel's language a user chose (none: the browser's). `NotFound` for an
    /// unknown user.
    pub async fn set_user_language(
        &self,
        id: UserId,
        language: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<()> {
        let result = dispatch!(self, writer, pool => {
            sqlx::query("UPDATE users SET language = $1, updated_at = $2 WHERE id = $3")
                .bind(language)
                .bind(to_millis(now))
                .bind(id.0)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        if result == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Changes what is given of a user's roles, disabled flag and password hash. Disabling a
    /// user or changing the password ends their sessions. `NotFound` for an unknown user.
    pub async fn update_user(
        &self,
        username: &str,
        roles: Option<&[String]>,
        disabled: Option<bool>,
        password_hash: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<()> {
        let roles = roles
            .map(|roles| {
                serde_json::to_string(roles).map_err(|err| StoreError::Corrupt(err.to_string()))
            })
            .transpose()?;
        let ends_sessions = disabled == Some(true) || password_hash.is_some();
        dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            let id: i64 = sqlx::query_scalar(
                "UPDATE users SET roles = COALESCE($2, roles), disabled = COALESCE($3, disabled), \
                 password_hash = COALESCE($4, password_hash), updated_at = $5 WHERE username = $1 RETURNING id",
            )
            .bind(username)
            .bind(&roles)
            .bind(disabled)
            .bind(password_hash)
            .bind(to_millis(now))
            .fetch_one(&mut *tx)
            .await?;
            if ends_sessions {
                sqlx::query("DELETE FROM sessions WHERE user_id = $1").bind(id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Deletes a user with their sessions and API tokens; `NotFound` for an unknown user.
    pub async fn delete_user(&self, username: &str) -> StoreResult<()> {
        let n_rows: u64 = dispatch!(self, writer, pool => {
            sqlx::query("DELETE FROM users WHERE username = $1")
                .bind(username)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        if n_rows == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Ends every session of a user ("log out everywhere"); answers how many.
    pub async fn delete_user_sessions(&self, user_id: UserId) -> StoreResult<u64> {
        let n_rows: u64 = dispatch!(self, writer, pool => {
            sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(user_id.0)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(n_rows)
    }

    /// Stores a custom role; `Conflict` when the name is taken.
    pub async fn insert_role(&self, role: &RoleRecord) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            sqlx::query("INSERT INTO roles (name, description, permissions, created_at) VALUES ($1, $2, $3, $4)")
                .bind(&role.name)
                .bind(&role.description)
                .bind(&role.permissions)
                .bind(to_millis(role.created_at))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(())
    }

    pub async fn roles(&self) -> StoreResult<Vec<RoleRecord>> {
        let rows: Vec<(String, String, String, i64)> = dispatch!(self, reader, pool => {
            sqlx::query_as("SELECT name, description, permissions, created_at FROM roles ORDER BY name").fetch_all(pool).await
        })?;
        rows.into_iter()
            .map(|(name, description, permissions, created_at)| {
                Ok(RoleRecord {
                    name,
                    description,
                    permissions,
                    created_at: from_millis("created_at", created_at)?,
                })
            })
            .collect()
    }

    pub async fn role(&self, name: &str) -> StoreResult<RoleRecord> {
        let (name, description, permissions, created_at): (String, String, String, i64) = dispatch!(self, reader, pool => {
            sqlx::query_as("SELECT name, description, permissions, created_at FROM roles WHERE name = $1")
                .bind(name)
                .fetch_one(pool)
                .await
        })?;
        Ok(RoleRecord {
            name,
            description,
            permissions,
            created_at: from_millis("created_at", created_at)?,
        })
    }

    /// Deletes a custom role; `NotFound` when there is none.
    pub async fn delete_role(&self, name: &str) -> StoreResult<()> {
        let n_rows: u64 = dispatch!(self, writer, pool => {
            sqlx::query("DELETE FROM roles WHERE name = $1").bind(name).execute(pool).await.map(|done| done.rows_affected())
        })?;
        if n_rows == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}

impl UserRow {
    fn into_record(self) -> StoreResult<UserRecord> {
        let roles = serde_json::from_str(&self.roles)
            .map_err(|err| StoreError::Corrupt(format!("users.roles: {err}")))?;
        Ok(UserRecord {
            id: UserId(self.id),
            username: self.username,
            roles,
            disabled: self.disabled,
            language: self.language,
            created_at: from_millis("created_at", self.created_at)?,
            updated_at: from_millis("updated_at", self.updated_at)?,
        })
    }
}
