//! The orchestrator nodes sharing this database: their heartbeats, the leases under which one
//! node at a time does the work that must not be done twice, and (on PostgreSQL) the
//! notifications by which nodes wake each other.

use jiff::Timestamp;

use crate::{Backend, Store, StoreError, StoreResult, dispatch, from_millis, to_millis};

/// A node as its heartbeats tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: String,
    pub version: String,
    pub started_at: Timestamp,
    pub heartbeat_at: Timestamp,
}

/// Notifications from other nodes (PostgreSQL `LISTEN`): each is its channel and payload.
pub struct Listener(sqlx::postgres::PgListener);

impl Listener {
    /// The next notification; `None` when the connection was lost (it connects again on the
    /// next call, and notifications sent meanwhile are lost: read the state again).
    pub async fn recv(&mut self) -> StoreResult<Option<(String, String)>> {
        let notification = self.0.try_recv().await.map_err(StoreError::Unavailable)?;
        Ok(notification.map(|notification| {
            (
                notification.channel().to_owned(),
                notification.payload().to_owned(),
            )
        }))
    }
}

impl Store {
    /// Records that the node `id` is alive at `now` (started at `started_at`).
    pub async fn node_heartbeat(
        &self,
        id: &str,
        version: &str,
        started_at: Timestamp,
        now: Timestamp,
    ) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            sqlx::query(
                "INSERT INTO nodes (id, version, started_at, heartbeat_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET version = $2, started_at = $3, heartbeat_at = $4",
            )
            .bind(id)
            .bind(version)
            .bind(to_millis(started_at))
            .bind(to_millis(now))
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    /// Forgets a node (it stopped cleanly).
    pub async fn remove_node(&self, id: &str) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            sqlx::query("DELETE FROM nodes WHERE id = $1").bind(id).execute(pool).await?.rows_affected()
        });
        Ok(())
    }

    /// Every node known, by id.
    pub async fn nodes(&self) -> StoreResult<Vec<NodeRecord>> {
        let rows: Vec<(String, String, i64, i64)> = dispatch!(self, reader, pool => {
            sqlx::query_as("SELECT id, version, started_at, heartbeat_at FROM nodes ORDER BY id")
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|(id, version, started_at, heartbeat_at)| {
                Ok(NodeRecord {
                    id,
                    version,
                    started_at: from_millis("started_at", started_at)?,
                    heartbeat_at: from_millis("heartbeat_at", heartbeat_at)?,
                })
            })
            .collect()
    }

    /// Takes or renews the lease `name` for `holder` until `until`, if it is free, expired
    /// at `now`, or `holder`'s already; answers whether `holder` holds it now.
    pub async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> StoreResult<bool> {
        let held: Option<String> = dispatch!(self, writer, pool => {
            sqlx::query_scalar(
                "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $4) \
                 ON CONFLICT (name) DO UPDATE SET holder = $2, expires_at = $4 \
                 WHERE leases.holder = $2 OR leases.expires_at < $3 RETURNING holder",
            )
            .bind(name)
            .bind(holder)
            .bind(to_millis(now))
            .bind(to_millis(until))
            .fetch_optional(pool)
            .await?
        });
        Ok(held.as_deref() == Some(holder))
    }

    /// Who holds the lease `name` (perhaps expired), if anyone.
    pub async fn lease_holder(&self, name: &str) -> StoreResult<Option<String>> {
        let holder = dispatch!(self, reader, pool => {
            sqlx::query_scalar("SELECT holder FROM leases WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        Ok(holder)
    }

    /// Gives the lease `name` up, if `holder` holds it.
    pub async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
                .bind(name)
                .bind(holder)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    /// Listens to `channels`; `None` on SQLite, where one node is alone with its database.
    pub async fn listen(&self, channels: &[&str]) -> StoreResult<Option<Listener>> {
        let Backend::Postgres(pool) = &self.backend else {
            return Ok(None);
        };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool)
            .await
            .map_err(StoreError::Connect)?;
        listener
            .listen_all(channels.iter().copied())
            .await
            .map_err(StoreError::Connect)?;
        Ok(Some(Listener(listener)))
    }

    /// Sends notifications on `channel`, in one statement; nothing on SQLite.
    pub async fn notify(&self, channel: &str, payloads: &[String]) -> StoreResult<()> {
        let Backend::Postgres(pool) = &self.backend else {
            return Ok(());
        };
        if payloads.is_empty() {
            return Ok(());
        }
        sqlx::query("SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload")
            .bind(channel)
            .bind(payloads)
            .execute(pool)
            .await?;
        Ok(())
    }
}
