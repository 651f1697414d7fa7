//! Agents: enrollment, connection state, and the outbox of commands each has yet to
//! acknowledge.

use std::collections::BTreeMap;

use dirigent_domain::agent::{Agent, AgentId};
use jiff::Timestamp;

use crate::{
    BackendKind, BeginWrite, Store, StoreError, StoreResult, dispatch, from_millis_opt, to_millis,
};

/// What an agent tells about itself when it connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFacts {
    pub host: String,
    pub os_user: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: u32,
    pub version: String,
    /// The graphical sessions it offers, and why none is usable if so.
    pub sessions_offered: u32,
    pub sessions_unavailable: Option<String>,
}

#[derive(sqlx::FromRow)]
struct AgentRow {
    id: i64,
    name: String,
    host: String,
    os_user: String,
    labels: String,
    capacity: i64,
    version: String,
    online: bool,
    draining: bool,
    last_seen_at: Option<i64>,
    node_id: Option<String>,
    sessions_offered: i64,
    sessions_unavailable: Option<String>,
    active_runs: i64,
}

macro_rules! select_agents {
    ($where:literal) => {
        concat!(
            "SELECT a.id, a.name, a.host, a.os_user, a.labels, a.capacity, a.version, a.online, \
             a.draining, a.last_seen_at, a.node_id, a.sessions_offered, a.sessions_unavailable, \
             (SELECT COUNT(*) FROM runs r WHERE r.agent_id = a.id \
              AND r.state IN ('starting', 'running', 'paused', 'stopping')) AS active_runs \
             FROM agents a ",
            $where
        )
    };
}

impl Store {
    /// Stores a one-time enrollment token (its digest) usable until `expires_at`.
    pub async fn insert_enrollment_token(
        &self,
        token_hash: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            sqlx::query("INSERT INTO enrollment_tokens (token_hash, created_at, expires_at) VALUES ($1, $2, $3)")
                .bind(token_hash)
                .bind(to_millis(now))
                .bind(to_millis(expires_at))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(())
    }

    /// Uses up an enrollment token and enrolls an agent with a credential (its digest).
    /// `NotFound` when the token is unknown, used or expired; `Conflict` when the name is taken.
    pub async fn enroll_agent(
        &self,
        token_hash: &str,
        name: &str,
        credential_hash: &str,
        now: Timestamp,
    ) -> StoreResult<AgentId> {
        dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            let used = sqlx::query(
                "UPDATE enrollment_tokens SET used_at = $2 \
                 WHERE token_hash = $1 AND used_at IS NULL AND $2 < expires_at",
            )
            .bind(token_hash)
            .bind(to_millis(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if used == 0 {
                return Err(StoreError::NotFound);
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO agents (name, credential_hash, created_at) VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(name)
            .bind(credential_hash)
            .bind(to_millis(now))
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(AgentId(id))
        })
    }

    /// Creates the agent `name` with this credential, or gives the existing one this
    /// credential: the built-in local agent's enrollment.
    pub async fn upsert_agent_credential(
        &self,
        name: &str,
        credential_hash: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            sqlx::query(
                "INSERT INTO agents (name, credential_hash, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET credential_hash = excluded.credential_hash",
            )
            .bind(name)
            .bind(credential_hash)
            .bind(to_millis(now))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(())
    }

    /// The agent holding the credential with this digest; `NotFound` otherwise.
    pub async fn agent_by_credential(&self, credential_hash: &str) -> StoreResult<Agent> {
        let row: AgentRow = dispatch!(self, reader, pool => {
            sqlx::query_as(select_agents!("WHERE a.credential_hash = $1")).bind(credential_hash).fetch_one(pool).await
        })?;
        row.into_agent()
    }

    pub async fn agent(&self, name: &str) -> StoreResult<Agent> {
        let row: AgentRow = dispatch!(self, reader, pool => {
            sqlx::query_as(select_agents!("WHERE a.name = $1")).bind(name).fetch_one(pool).await
        })?;
        row.into_agent()
    }

    /// Every agent, by name.
    pub async fn agents(&self) -> StoreResult<Vec<Agent>> {
        let rows: Vec<AgentRow> = dispatch!(self, reader, pool => {
            sqlx::query_as(select_agents!("ORDER BY a.name")).fetch_all(pool).await
        })?;
        rows.into_iter().map(AgentRow::into_agent).collect()
    }

    /// Records a connection to the node `node`: the agent's facts, online, and a new version
    /// of each of its active runs. Answers the last event id applied.
    pub async fn agent_connected(
        &self,
        id: AgentId,
        facts: &AgentFacts,
        node: &str,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let labels = serde_json::to_string(&facts.labels)
            .map_err(|err| StoreError::Corrupt(err.to_string()))?;
        let last_event_id: i64 = dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            let last_event_id: i64 = sqlx::query_scalar(
                "UPDATE agents SET host = $2, os_user = $3, labels = $4, capacity = $5, version = $6, \
                 online = TRUE, last_seen_at = $7, node_id = $8, sessions_offered = $9, \
                 sessions_unavailable = $10 WHERE id = $1 RETURNING last_event_id",
            )
            .bind(id.0)
            .bind(&facts.host)
            .bind(&facts.os_user)
            .bind(&labels)
            .bind(i64::from(facts.capacity))
            .bind(&facts.version)
            .bind(to_millis(now))
            .bind(node)
            .bind(i64::from(facts.sessions_offered))
            .bind(&facts.sessions_unavailable)
            .fetch_one(&mut *tx)
            .await?;
            // Sessions it no longer offers are gone.
            sqlx::query("DELETE FROM graphical_sessions WHERE agent_id = $1 AND number > $2")
                .bind(id.0)
                .bind(i64::from(facts.sessions_offered))
                .execute(&mut *tx)
                .await?;
            // Its runs changed: whoever decided on them while it was away (that they are lost,
            // say) decides again.
            sqlx::query(
                "UPDATE runs SET version = version + 1 WHERE agent_id = $1 \
                 AND state IN ('starting', 'running', 'paused', 'stopping')",
            )
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            last_event_id
        });
        Ok(u64::try_from(last_event_id).unwrap_or(0))
    }

    /// Records that a connected agent was heard from at `now`.
    pub async fn agent_seen(&self, id: AgentId, now: Timestamp) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            sqlx::query("UPDATE agents SET last_seen_at = $2 WHERE id = $1")
                .bind(id.0)
                .bind(to_millis(now))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(())
    }

    /// Records that the agent's connection to `node` ended at `now`, unless it connected to
    /// another node meanwhile. Answers whether it did.
    pub async fn agent_disconnected(
        &self,
        id: AgentId,
        node: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let n_rows = dispatch!(self, writer, pool => {
            sqlx::query("UPDATE agents SET online = FALSE, last_seen_at = $3 WHERE id = $1 AND node_id = $2")
                .bind(id.0)
                .bind(node)
                .bind(to_millis(now))
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n_rows == 1)
    }

    /// Marks offline the agents connected to `node`: at its start, its earlier life's
    /// connections are gone. Agents of other nodes are left alone.
    pub async fn mark_node_agents_offline(&self, node: &str) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            sqlx::query("UPDATE agents SET online = FALSE WHERE online AND node_id = $1")
                .bind(node)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    /// Marks offline the agents connected to nodes whose last heartbeat is older than
    /// `cutoff` (or to no known node); answers their names.
    pub async fn disconnect_agents_of_dead_nodes(
        &self,
        cutoff: Timestamp,
    ) -> StoreResult<Vec<String>> {
        let names: Vec<String> = dispatch!(self, writer, pool => {
            sqlx::query_scalar(
                "UPDATE agents SET online = FALSE WHERE online AND (node_id IS NULL OR node_id NOT IN \
                 (SELECT id FROM nodes WHERE heartbeat_at >= $1)) RETURNING name",
            )
            .bind(to_millis(cutoff))
            .fetch_all(pool)
            .await?
        });
        Ok(names)
    }

    pub async fn set_agent_draining(&self, name: &str, draining: bool) -> StoreResult<()> {
        let n_rows: u64 = dispatch!(self, writer, pool => {
            sqlx::query("UPDATE agents SET draining = $2 WHERE name = $1")
                .bind(name)
                .bind(draining)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        if n_rows == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Records that the agent's event `event_id` was applied.
    pub async fn set_agent_last_event(&self, id: AgentId, event_id: u64) -> StoreResult<()> {
        let event_id =
            i64::try_from(event_id).map_err(|err| StoreError::Corrupt(err.to_string()))?;
        dispatch!(self, writer, pool => {
            sqlx::query("UPDATE agents SET last_event_id = $2 WHERE id = $1 AND last_event_id < $2")
                .bind(id.0)
                .bind(event_id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(())
    }

    /// Queues a command (JSON) for an agent; answers its id, above every earlier one.
    pub async fn queue_agent_command(
        &self,
        id: AgentId,
        body: &str,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let postgres = self.backend_kind() == BackendKind::Postgres;
        let command_id: i64 = dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            let command_id = queue_command!(&mut *tx, postgres, id, body, now);
            tx.commit().await?;
            command_id
        });
        Ok(u64::try_from(command_id).unwrap_or(0))
    }

    /// The commands an agent has not acknowledged with ids above `after`, in order.
    pub async fn pending_agent_commands(
        &self,
        id: AgentId,
        after: u64,
    ) -> StoreResult<Vec<(u64, String)>> {
        let rows: Vec<(i64, String)> = dispatch!(self, reader, pool => {
            sqlx::query_as("SELECT id, body FROM agent_commands WHERE agent_id = $1 AND id > $2 ORDER BY id")
                .bind(id.0)
                .bind(i64::try_from(after).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(command_id, body)| (u64::try_from(command_id).unwrap_or(0), body))
            .collect())
    }

    /// Forgets one queued command that is not to be sent (the start of a run that ended).
    pub async fn drop_agent_command(&self, id: AgentId, command: u64) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            sqlx::query("DELETE FROM agent_commands WHERE agent_id = $1 AND id = $2")
                .bind(id.0)
                .bind(i64::try_from(command).unwrap_or(i64::MAX))
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    /// Forgets the commands an agent acknowledged, up to and including `up_to`.
    pub async fn ack_agent_commands(&self, id: AgentId, up_to: u64) -> StoreResult<()> {
        let up_to = i64::try_from(up_to).unwrap_or(i64::MAX);
        dispatch!(self, writer, pool => {
            sqlx::query("DELETE FROM agent_commands WHERE agent_id = $1 AND id <= $2")
                .bind(id.0)
                .bind(up_to)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(())
    }
}

/// The channel on which PostgreSQL tells every node that an agent has a new command (the
/// payload is `AGENT_ID:COMMAND_ID`), so that the node holding its connection sends it.
pub const COMMANDS_CHANNEL: &str = "dirigent_agent_commands";

/// Queues a command for an agent inside a transaction (`$postgres`: on PostgreSQL, which
/// also notifies the nodes at commit); evaluates to its id, above every earlier one.
macro_rules! queue_command {
    ($executor:expr, $postgres:expr, $agent_id:expr, $body:expr, $now:expr) => {{
        let agent_id: dirigent_domain::agent::AgentId = $agent_id;
        let command_id: i64 = sqlx::query_scalar(
            "UPDATE agents SET last_command_id = last_command_id + 1 WHERE id = $1 RETURNING last_command_id",
        )
        .bind(agent_id.0)
        .fetch_one($executor)
        .await?;
        sqlx::query("INSERT INTO agent_commands (agent_id, id, body, created_at) VALUES ($1, $2, $3, $4)")
            .bind(agent_id.0)
            .bind(command_id)
            .bind($body)
            .bind($crate::to_millis($now))
            .execute($executor)
            .await?;
        if $postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind($crate::agents::COMMANDS_CHANNEL)
                .bind(format!("{}:{command_id}", agent_id.0))
                .execute($executor)
                .await?;
        }
        command_id
    }};
}
pub(crate) use queue_command;

impl AgentRow {
    fn into_agent(self) -> StoreResult<Agent> {
        let labels = serde_json::from_str(&self.labels)
            .map_err(|err| StoreError::Corrupt(format!("agent {:?}, labels: {err}", self.name)))?;
        Ok(Agent {
            id: AgentId(self.id),
            labels,
            capacity: u32::try_from(self.capacity).unwrap_or(0),
            online: self.online,
            draining: self.draining,
            last_seen_at: from_millis_opt("last_seen_at", self.last_seen_at)?,
            node: self.node_id,
            active_runs: u32::try_from(self.active_runs).unwrap_or(0),
            sessions_offered: u32::try_from(self.sessions_offered).unwrap_or(0),
            sessions_unavailable: self.sessions_unavailable,
            name: self.name,
            host: self.host,
            os_user: self.os_user,
            version: self.version,
        })
    }
}
