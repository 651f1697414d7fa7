//! Retention: what the janitor deletes once it is older than its kind's limit — ended runs
//! (with their transitions, output and frames), run output over a total size, agents' and the
//! orchestrator's own log records by age and over a total size each, settled trigger firings,
//! closed work-item attempts, ended activities (with their output), and the audit log by its
//! own, longer, limit. Deletes go in small batches (each its own short transaction, so writers wait at most
//! one batch); nothing of an active run, an unsettled firing or an open attempt is touched.

use dirigent_domain::log::Source;
use jiff::Timestamp;

use crate::{BeginWrite, Store, StoreResult, dispatch, from_millis_opt, to_millis};

/// Rows deleted per statement.
const BATCH: i64 = 200;
/// Runs whose output one statement deletes to bring the total under its cap.
const OUTPUT_BATCH: i64 = 20;

/// Before when each kind is deleted; `None` keeps it forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cutoffs {
    pub runs: Option<Timestamp>,
    /// The most bytes of run output kept; the oldest ended runs' output goes first.
    pub output_max_bytes: Option<u64>,
    pub trigger_firings: Option<Timestamp>,
    pub work_item_attempts: Option<Timestamp>,
    pub activities: Option<Timestamp>,
    pub audit: Option<Timestamp>,
    /// Agents' own records: before when, and the most bytes kept.
    pub agent_logs: Option<Timestamp>,
    pub agent_logs_max_bytes: Option<u64>,
    /// The orchestrator's own records: before when, and the most bytes kept.
    pub server_logs: Option<Timestamp>,
    pub server_logs_max_bytes: Option<u64>,
}

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub runs: u64,
    /// Runs whose output was deleted to keep the total under its cap.
    pub outputs: u64,
    pub trigger_firings: u64,
    pub work_item_attempts: u64,
    pub activities: u64,
    pub audit: u64,
    pub agent_logs: u64,
    pub server_logs: u64,
}

/// How much of one kind is kept, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub kind: &'static str,
    pub count: u64,
    pub oldest: Option<Timestamp>,
}

impl Store {
    /// Deletes what is past its cutoff, batch by batch.
    pub async fn prune(&self, cutoffs: &Cutoffs) -> StoreResult<Pruned> {
        let mut pruned = Pruned::default();
        if let Some(before) = cutoffs.runs {
            pruned.runs = self
                .delete_batches(
                    concat!(
                        "DELETE FROM runs WHERE id IN (SELECT id FROM runs WHERE state IN ",
                        "('succeeded', 'failed', 'stopped', 'killed', 'timed_out', 'lost')",
                        " AND ended_at < $1 LIMIT $2)"
                    ),
                    before,
                )
                .await?;
        }
        if let Some(max) = cutoffs.output_max_bytes {
            pruned.outputs = self.cap_output(max).await?;
        }
        if let Some(before) = cutoffs.trigger_firings {
            pruned.trigger_firings = self
                .delete_batches(
                    "DELETE FROM trigger_firings WHERE id IN (SELECT id FROM trigger_firings \
                     WHERE outcome <> 'due' AND recorded_at < $1 LIMIT $2)",
                    before,
                )
                .await?;
        }
        if let Some(before) = cutoffs.work_item_attempts {
            pruned.work_item_attempts = self
                .delete_batches(
                    "DELETE FROM queue_item_attempts WHERE id IN (SELECT id FROM queue_item_attempts \
                     WHERE ended_at IS NOT NULL AND ended_at < $1 LIMIT $2)",
                    before,
                )
                .await?;
        }
        if let Some(before) = cutoffs.activities {
            pruned.activities = self
                .delete_batches(
                    "DELETE FROM activities WHERE id IN (SELECT id FROM activities \
                     WHERE parent_id IS NULL AND state NOT IN ('queued', 'running') \
                     AND ended_at < $1 LIMIT $2)",
                    before,
                )
                .await?;
        }
        if let Some(before) = cutoffs.audit {
            pruned.audit = self
                .delete_batches(
                    "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE at < $1 \
                     ORDER BY id LIMIT $2)",
                    before,
                )
                .await?;
        }
        for (source, before, max, pruned) in [
            (
                Source::Agent,
                cutoffs.agent_logs,
                cutoffs.agent_logs_max_bytes,
                &mut pruned.agent_logs,
            ),
            (
                Source::Server,
                cutoffs.server_logs,
                cutoffs.server_logs_max_bytes,
                &mut pruned.server_logs,
            ),
        ] {
            if let Some(before) = before {
                *pruned += self.delete_old_logs(source, before).await?;
            }
            if let Some(max) = max {
                *pruned += self.cap_logs(source, max).await?;
            }
        }
        Ok(pruned)
    }

    /// Deletes a source's records older than `before`, oldest first, batch by batch.
    async fn delete_old_logs(&self, source: Source, before: Timestamp) -> StoreResult<u64> {
        let mut total = 0;
        loop {
            let deleted = dispatch!(self, writer, pool => {
                let mut tx = pool.begin_write().await?;
                let deleted = sqlx::query(
                    "DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE source = $1 \
                     AND at < $2 ORDER BY id LIMIT $3)",
                )
                .bind(source.as_str())
                .bind(to_millis(before))
                .bind(BATCH)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                deleted
            });
            total += deleted;
            if deleted < BATCH.unsigned_abs() {
                return Ok(total);
            }
        }
    }

    /// Deletes a source's oldest records until what is kept of it is at most `max` bytes.
    async fn cap_logs(&self, source: Source, max: u64) -> StoreResult<u64> {
        let total: Option<i64> = dispatch!(self, reader, pool => {
            sqlx::query_scalar(
                "SELECT CAST(SUM(LENGTH(text) + COALESCE(LENGTH(fields), 0)) AS BIGINT) \
                 FROM logs WHERE source = $1",
            )
            .bind(source.as_str())
            .fetch_one(pool)
            .await
        })?;
        let mut excess = total.unwrap_or(0).unsigned_abs().saturating_sub(max);
        let mut deleted = 0;
        while 0 < excess {
            let oldest: Vec<(i64, i64)> = dispatch!(self, reader, pool => {
                sqlx::query_as(
                    "SELECT id, CAST(LENGTH(text) + COALESCE(LENGTH(fields), 0) AS BIGINT) \
                     FROM logs WHERE source = $1 ORDER BY id LIMIT $2",
                )
                .bind(source.as_str())
                .bind(BATCH)
                .fetch_all(pool)
                .await
            })?;
            let mut last = None;
            for (id, bytes) in oldest {
                if excess == 0 {
                    break;
                }
                excess = excess.saturating_sub(bytes.unsigned_abs());
                last = Some(id);
            }
            let Some(last) = last else {
                return Ok(deleted);
            };
            deleted += dispatch!(self, writer, pool => {
                let mut tx = pool.begin_write().await?;
                let deleted = sqlx::query("DELETE FROM logs WHERE source = $1 AND id <= $2")
                    .bind(source.as_str())
                    .bind(last)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                deleted
            });
        }
        Ok(deleted)
    }

    /// Runs `sql` (binding the cutoff and the batch size) until it deletes nothing; answers
    /// how many rows it deleted.
    async fn delete_batches(&self, sql: &'static str, before: Timestamp) -> StoreResult<u64> {
        let mut total = 0;
        loop {
            let deleted = dispatch!(self, writer, pool => {
                let mut tx = pool.begin_write().await?;
                let deleted = sqlx::query(sql)
                    .bind(to_millis(before))
                    .bind(BATCH)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                deleted
            });
            total += deleted;
            if deleted < BATCH.unsigned_abs() {
                return Ok(total);
            }
        }
    }

    /// Deletes the output of the oldest ended runs until what is kept is at most `max` bytes.
    async fn cap_output(&self, max: u64) -> StoreResult<u64> {
        let mut runs = 0;
        loop {
            let total: Option<i64> = dispatch!(self, reader, pool => {
                sqlx::query_scalar(
                    "SELECT CAST(SUM(LENGTH(text)) AS BIGINT) FROM logs WHERE run_id IS NOT NULL",
                )
                .fetch_one(pool)
                    .await
            })?;
            if total.unwrap_or(0).unsigned_abs() <= max {
                return Ok(runs);
            }
            let deleted = dispatch!(self, writer, pool => {
                let mut tx = pool.begin_write().await?;
                let oldest: Vec<String> = sqlx::query_scalar(concat!(
                    "SELECT id FROM runs WHERE state IN ",
                    "('succeeded', 'failed', 'stopped', 'killed', 'timed_out', 'lost')",
                    " AND EXISTS (SELECT 1 FROM logs o WHERE o.run_id = runs.id) ",
                    "ORDER BY ended_at LIMIT $1"
                ))
                .bind(OUTPUT_BATCH)
                .fetch_all(&mut *tx)
                .await?;
                for id in &oldest {
                    sqlx::query("DELETE FROM logs WHERE run_id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                oldest.len() as u64
            });
            if deleted == 0 {
                // What is left belongs to active runs.
                return Ok(runs);
            }
            runs += deleted;
        }
    }

    /// How much of each kind is kept, and its oldest.
    pub async fn kept(&self) -> StoreResult<Vec<Kept>> {
        let queries: [(&'static str, &'static str); 9] = [
            ("runs", "SELECT COUNT(*), MIN(created_at) FROM runs"),
            (
                "run_output_lines",
                "SELECT COUNT(*), MIN(at) FROM logs WHERE run_id IS NOT NULL",
            ),
            (
                "agent_log_records",
                "SELECT COUNT(*), MIN(at) FROM logs WHERE source = 'agent'",
            ),
            (
                "server_log_records",
                "SELECT COUNT(*), MIN(at) FROM logs WHERE source = 'server'",
            ),
            (
                "activity_output_lines",
                "SELECT COUNT(*), MIN(at) FROM logs WHERE activity_id IS NOT NULL",
            ),
            (
                "trigger_firings",
                "SELECT COUNT(*), MIN(recorded_at) FROM trigger_firings",
            ),
            (
                "work_item_attempts",
                "SELECT COUNT(*), MIN(started_at) FROM queue_item_attempts",
            ),
            (
                "activities",
                "SELECT COUNT(*), MIN(created_at) FROM activities",
            ),
            ("audit_records", "SELECT COUNT(*), MIN(at) FROM audit_log"),
        ];
        let mut kept = Vec::with_capacity(queries.len());
        for (kind, sql) in queries {
            let (count, oldest): (i64, Option<i64>) = dispatch!(self, reader, pool => {
                sqlx::query_as(sql).fetch_one(pool).await
            })?;
            kept.push(Kept {
                kind,
                count: count.unsigned_abs(),
                oldest: from_millis_opt(kind, oldest)?,
            });
        }
        let bytes: Option<i64> = dispatch!(self, reader, pool => {
            sqlx::query_scalar(
                "SELECT CAST(SUM(LENGTH(text)) AS BIGINT) FROM logs WHERE run_id IS NOT NULL",
            )
            .fetch_one(pool)
            .await
        })?;
        kept.push(Kept {
            kind: "run_output_bytes",
            count: bytes.unwrap_or(0).unsigned_abs(),
            oldest: None,
        });
        Ok(kept)
    }
}
