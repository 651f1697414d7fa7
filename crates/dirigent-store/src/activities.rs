//! Activities (typed operations on agents and on the orchestrator), their output, the files
//! uploaded for them (blobs), and the orchestrator's switches (maintenance). An activity aimed at an agent is queued with the
//! agent command that carries it, in one transaction.

use dirigent_domain::{activity::State, agent::AgentId};
use jiff::{SignedDuration, Timestamp};

use crate::{
    BackendKind, BeginWrite, Store, StoreError, StoreResult, agents::queue_command, dispatch,
    from_millis, from_millis_opt, to_millis,
};

/// A stored activity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityRecord {
    pub id: String,
    pub parent: Option<String>,
    /// `server`, an agent's name, or (for a fan-out) its label selector.
    pub target: String,
    pub agent_id: Option<AgentId>,
    pub operation: String,
    /// The arguments as shown (JSON, secrets redacted).
    pub args: String,
    pub parallel: bool,
    pub state: State,
    pub reason: Option<String>,
    /// The result (JSON).
    pub result: Option<String>,
    pub timeout: SignedDuration,
    pub requested_by: String,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    pub command_id: Option<u64>,
    pub node: Option<String>,
}

impl ActivityRecord {
    /// Whether it is a fan-out: a parent that carries no command, whose children do.
    pub fn is_fan_out(&self) -> bool {
        self.command_id.is_none() && self.target != "server"
    }

    /// When it times out.
    pub fn deadline(&self) -> Timestamp {
        self.created_at
            .saturating_add(self.timeout)
            .unwrap_or(self.created_at)
    }
}

/// An activity to store; `command` is the agent command (JSON) that carries it to `agent_id`.
#[derive(Debug, Clone)]
pub struct NewActivity {
    pub record: ActivityRecord,
    pub command: Option<String>,
}

/// Which activities to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct ActivityQuery<'a> {
    pub state: Option<State>,
    pub target: Option<&'a str>,
    pub operation: Option<&'a str>,
    pub requested_by: Option<&'a str>,
    /// Only those older than this one (the cursor).
    pub before: Option<&'a str>,
    pub limit: u32,
}

/// One of the orchestrator's switches (maintenance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    pub value: String,
    pub changed_by: String,
    pub changed_at: Timestamp,
}

/// The orchestrator's figures for its `info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub robots: u64,
    pub active_runs: u64,
    pub agents: u64,
    pub agents_online: u64,
    pub queues: u64,
    pub triggers: u64,
}

#[derive(sqlx::FromRow)]
struct ActivityRow {
    id: String,
    parent_id: Option<String>,
    target: String,
    agent_id: Option<i64>,
    operation: String,
    args: String,
    mode: String,
    state: String,
    reason: Option<String>,
    result: Option<String>,
    timeout_ms: i64,
    requested_by: String,
    created_at: i64,
    started_at: Option<i64>,
    ended_at: Option<i64>,
    command_id: Option<i64>,
    node: Option<String>,
}

/// `SELECT` of activities' rows, then `$rest`.
macro_rules! select_activities {
    ($rest:literal) => {
        concat!(
            "SELECT id, parent_id, target, agent_id, operation, args, mode, state, reason, result, \
             timeout_ms, requested_by, created_at, started_at, ended_at, command_id, node \
             FROM activities ",
            $rest
        )
    };
}

impl Store {
    /// Stores activities (a fan-out with its children) and queues the agent commands that
    /// carry them, in one transaction.
    pub async fn insert_activities(&self, activities: &[NewActivity]) -> StoreResult<()> {
        let postgres = self.backend_kind() == BackendKind::Postgres;
        dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            for new in activities {
                let record = &new.record;
                let command_id = match (&new.command, record.agent_id) {
                    (Some(body), Some(agent)) => Some(queue_command!(&mut *tx, postgres, agent, body.as_str(), record.created_at)),
                    _ => None,
                };
                sqlx::query(
                    "INSERT INTO activities (id, parent_id, target, agent_id, operation, args, mode, \
                     state, reason, result, timeout_ms, requested_by, created_at, started_at, ended_at, \
                     command_id, node) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
                     $14, $15, $16, $17)",
                )
                .bind(&record.id)
                .bind(&record.parent)
                .bind(&record.target)
                .bind(record.agent_id.map(|id| id.0))
                .bind(&record.operation)
                .bind(&record.args)
                .bind(if record.parallel { "parallel" } else { "sequential" })
                .bind(record.state.as_str())
                .bind(&record.reason)
                .bind(&record.result)
                .bind(i64::try_from(record.timeout.as_millis()).unwrap_or(i64::MAX))
                .bind(&record.requested_by)
                .bind(to_millis(record.created_at))
                .bind(record.started_at.map(to_millis))
                .bind(record.ended_at.map(to_millis))
                .bind(command_id)
                .bind(&record.node)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn activity(&self, id: &str) -> StoreResult<ActivityRecord> {
        let row: Option<ActivityRow> = dispatch!(self, reader, pool => {
            sqlx::query_as(select_activities!("WHERE id = $1")).bind(id).fetch_optional(pool).await
        })?;
        row.ok_or(StoreError::NotFound)?.into_record()
    }

    /// The children of a fan-out, oldest first.
    pub async fn activity_children(&self, id: &str) -> StoreResult<Vec<ActivityRecord>> {
        let rows: Vec<ActivityRow> = dispatch!(self, reader, pool => {
            sqlx::query_as(select_activities!("WHERE parent_id = $1 ORDER BY created_at, id")).bind(id).fetch_all(pool).await
        })?;
        rows.into_iter().map(ActivityRow::into_record).collect()
    }

    /// Activities, newest first.
    pub async fn activities(&self, query: &ActivityQuery<'_>) -> StoreResult<Vec<ActivityRecord>> {
        let rows: Vec<ActivityRow> = dispatch!(self, reader, pool => {
            sqlx::query_as(select_activities!(
                "WHERE ($1 IS NULL OR state = $1) \
                 AND ($2 IS NULL OR target = $2) AND ($3 IS NULL OR operation = $3) \
                 AND ($4 IS NULL OR requested_by = $4) \
                 AND ($5 IS NULL OR (created_at, id) < (SELECT created_at, id FROM activities WHERE id = $5)) \
                 ORDER BY created_at DESC, id DESC LIMIT $6"
            ))
                .bind(query.state.map(State::as_str))
                .bind(query.target)
                .bind(query.operation)
                .bind(query.requested_by)
                .bind(query.before)
                .bind(i64::from(query.limit))
                .fetch_all(pool)
                .await
        })?;
        rows.into_iter().map(ActivityRow::into_record).collect()
    }

    /// Marks a queued activity running; false if it is not queued (it ended meanwhile).
    pub async fn start_activity(
        &self,
        id: &str,
        at: Timestamp,
        node: Option<&str>,
    ) -> StoreResult<bool> {
        let changed = dispatch!(self, writer, pool => {
            sqlx::query(
                "UPDATE activities SET state = 'running', reason = NULL, started_at = $2, \
                 node = COALESCE($3, node) WHERE id = $1 AND state = 'queued'",
            )
            .bind(id)
            .bind(to_millis(at))
            .bind(node)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(changed == 1)
    }

    /// Says why a queued activity waits.
    pub async fn set_activity_reason(&self, id: &str, reason: &str) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            sqlx::query("UPDATE activities SET reason = $2 WHERE id = $1 AND state = 'queued'")
                .bind(id)
                .bind(reason)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    /// Ends an activity that has not ended; answers it as ended, or `None` if it had ended
    /// already (an end is stored once).
    pub async fn end_activity(
        &self,
        id: &str,
        state: State,
        reason: Option<&str>,
        result: Option<&str>,
        at: Timestamp,
    ) -> StoreResult<Option<ActivityRecord>> {
        let changed = dispatch!(self, writer, pool => {
            sqlx::query(
                "UPDATE activities SET state = $2, reason = $3, result = $4, ended_at = $5 \
                 WHERE id = $1 AND state IN ('queued', 'running')",
            )
            .bind(id)
            .bind(state.as_str())
            .bind(reason)
            .bind(result)
            .bind(to_millis(at))
            .execute(pool)
            .await?
            .rows_affected()
        });
        match changed {
            0 => Ok(None),
            _ => self.activity(id).await.map(Some),
        }
    }

    /// Activities not ended, oldest first: those of one agent, or all.
    pub async fn active_activities(
        &self,
        agent: Option<AgentId>,
    ) -> StoreResult<Vec<ActivityRecord>> {
        let rows: Vec<ActivityRow> = dispatch!(self, reader, pool => {
            sqlx::query_as(select_activities!(
                "WHERE state IN ('queued', 'running') AND ($1 IS NULL OR agent_id = $1) \
                 ORDER BY created_at, id"
            )).bind(agent.map(|id| id.0)).fetch_all(pool).await
        })?;
        rows.into_iter().map(ActivityRow::into_record).collect()
    }

    /// Sets (or, with `None`, clears) one of the orchestrator's switches.
    pub async fn set_switch(
        &self,
        name: &str,
        value: Option<&str>,
        by: &str,
        at: Timestamp,
    ) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            match value {
                Some(value) => sqlx::query(
                    "INSERT INTO server_switches (name, value, changed_by, changed_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (name) DO UPDATE SET value = $2, changed_by = $3, changed_at = $4",
                )
                .bind(name)
                .bind(value)
                .bind(by)
                .bind(to_millis(at))
                .execute(pool)
                .await?,
                None => sqlx::query("DELETE FROM server_switches WHERE name = $1")
                    .bind(name)
                    .execute(pool)
                    .await?,
            }
            .rows_affected()
        });
        Ok(())
    }

    pub async fn switch(&self, name: &str) -> StoreResult<Option<Switch>> {
        let row: Option<(String, String, i64)> = dispatch!(self, reader, pool => {
            sqlx::query_as("SELECT value, changed_by, changed_at FROM server_switches WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await
        })?;
        row.map(|(value, changed_by, changed_at)| {
            Ok(Switch {
                value,
                changed_by,
                changed_at: from_millis("changed_at", changed_at)?,
            })
        })
        .transpose()
    }

    /// Keeps a file (once per SHA-256), in chunks of `chunk` bytes.
    pub async fn put_blob(
        &self,
        sha256: &str,
        data: &[u8],
        chunk: usize,
        by: &str,
        at: Timestamp,
    ) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            let added = sqlx::query(
                "INSERT INTO blobs (sha256, size, created_by, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (sha256) DO NOTHING",
            )
            .bind(sha256)
            .bind(i64::try_from(data.len()).unwrap_or(i64::MAX))
            .bind(by)
            .bind(to_millis(at))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if added == 1 {
                for (seq, part) in data.chunks(chunk.max(1)).enumerate() {
                    sqlx::query("INSERT INTO blob_chunks (sha256, seq, data) VALUES ($1, $2, $3)")
                        .bind(sha256)
                        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
                        .bind(part)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// A kept file's size, if it is kept.
    pub async fn blob_size(&self, sha256: &str) -> StoreResult<Option<u64>> {
        let size: Option<i64> = dispatch!(self, reader, pool => {
            sqlx::query_scalar("SELECT size FROM blobs WHERE sha256 = $1")
                .bind(sha256)
                .fetch_optional(pool)
                .await
        })?;
        Ok(size.map(|size| u64::try_from(size).unwrap_or(0)))
    }

    /// One chunk of a kept file (`None` past its end).
    pub async fn blob_chunk(&self, sha256: &str, seq: u64) -> StoreResult<Option<Vec<u8>>> {
        dispatch!(self, reader, pool => {
            sqlx::query_scalar("SELECT data FROM blob_chunks WHERE sha256 = $1 AND seq = $2")
                .bind(sha256)
                .bind(i64::try_from(seq).unwrap_or(i64::MAX))
                .fetch_optional(pool)
                .await
        })
        .map_err(Into::into)
    }

    /// Forgets the files kept before `before`; answers how many.
    pub async fn delete_blobs_before(&self, before: Timestamp) -> StoreResult<u64> {
        let deleted = dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("DELETE FROM blob_chunks WHERE sha256 IN (SELECT sha256 FROM blobs WHERE created_at < $1)")
                .bind(to_millis(before))
                .execute(&mut *tx)
                .await?;
            let deleted = sqlx::query("DELETE FROM blobs WHERE created_at < $1")
                .bind(to_millis(before))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            deleted
        });
        Ok(deleted)
    }

    /// How many robots, active runs, agents (online), queues and triggers there are.
    pub async fn counts(&self) -> StoreResult<Counts> {
        let row: (i64, i64, i64, i64, i64, i64) = dispatch!(self, reader, pool => {
            sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM robots), \
                 (SELECT COUNT(*) FROM runs WHERE state IN ('queued', 'starting', 'running', 'paused', 'stopping')), \
                 (SELECT COUNT(*) FROM agents), (SELECT COUNT(*) FROM agents WHERE online), \
                 (SELECT COUNT(*) FROM queues), (SELECT COUNT(*) FROM triggers)",
            )
            .fetch_one(pool)
            .await
        })?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(Counts {
            robots: count(row.0),
            active_runs: count(row.1),
            agents: count(row.2),
            agents_online: count(row.3),
            queues: count(row.4),
            triggers: count(row.5),
        })
    }
}

impl ActivityRow {
    fn into_record(self) -> StoreResult<ActivityRecord> {
        let state = State::parse(&self.state).ok_or_else(|| {
            StoreError::Corrupt(format!("activity {:?}: state {:?}", self.id, self.state))
        })?;
        Ok(ActivityRecord {
            parent: self.parent_id,
            target: self.target,
            agent_id: self.agent_id.map(AgentId),
            operation: self.operation,
            args: self.args,
            parallel: self.mode == "parallel",
            state,
            reason: self.reason,
            result: self.result,
            timeout: SignedDuration::from_millis(self.timeout_ms),
            requested_by: self.requested_by,
            created_at: from_millis("created_at", self.created_at)?,
            started_at: from_millis_opt("started_at", self.started_at)?,
            ended_at: from_millis_opt("ended_at", self.ended_at)?,
            command_id: self.command_id.and_then(|id| u64::try_from(id).ok()),
            node: self.node,
            id: self.id,
        })
    }
}
