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
/// Runs whose output is deleted at a time to bring the total under its cap.
const OUTPUT_BATCH: i64 = 20;
/// Lines of a run's output deleted in one transaction.
const LINES_BATCH: i64 = 1000;
/// The states of an ended run, as SQL.
const ENDED: &str = "('succeeded', 'failed', 'stopped', 'killed', 'timed_out', 'lost')";

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
    /// The most bytes of ended activities' output kept (they go by age with their activity).
    pub activity_output_max_bytes: Option<u64>,
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
    /// Lines of ended activities' output deleted to keep their total under its cap.
    pub activity_output: u64,
}

/// A condition (`AND …`) on records of `source` in `logs` that keeps an active activity's
/// output.
fn kept_while_active(source: Source) -> &'static str {
    match source {
        Source::Activity => {
            "AND NOT EXISTS (SELECT 1 FROM activities a WHERE a.id = logs.activity_id \
             AND a.state IN ('queued', 'running'))"
        }
        _ => "",
    }
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
            pruned.runs = self.delete_old_runs(before).await?;
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
        if let Some(max) = cutoffs.activity_output_max_bytes {
            pruned.activity_output = self.cap_logs(Source::Activity, max).await?;
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
        // Hours whose records are all gone.
        dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "DELETE FROM log_hours WHERE NOT EXISTS (SELECT 1 FROM logs \
                 WHERE logs.id BETWEEN log_hours.min_id AND log_hours.max_id)",
            )
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(pruned)
    }

    /// Deletes a source's records older than `before`, oldest first, batch by batch: each
    /// batch found by a reader (through the index by time), then deleted by id.
    async fn delete_old_logs(&self, source: Source, before: Timestamp) -> StoreResult<u64> {
        let mut total = 0;
        loop {
            let old: Vec<i64> = dispatch!(self, reader, pool => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT id FROM logs WHERE at < $1 AND source = $2 {} ORDER BY at LIMIT $3",
                    kept_while_active(source)
                )))
                .bind(to_millis(before))
                .bind(source.as_str())
                .bind(BATCH)
                .fetch_all(pool)
                .await
            })?;
            if old.is_empty() {
                return Ok(total);
            }
            total += self.delete_logs(&old).await?;
        }
    }

    /// Deletes records by id, in one short transaction.
    async fn delete_logs(&self, ids: &[i64]) -> StoreResult<u64> {
        let deleted = dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            let mut delete = sqlx::QueryBuilder::new("DELETE FROM logs WHERE id IN (");
            let mut list = delete.separated(", ");
            for id in ids {
                list.push_bind(*id);
            }
            delete.push(")");
            let deleted = delete.build().execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            deleted
        });
        Ok(deleted)
    }

    /// Deletes a source's oldest records until what is kept of it is at most `max` bytes
    /// (an activity's output only once it has ended).
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
        let mut after = 0;
        while 0 < excess {
            let oldest: Vec<(i64, i64)> = dispatch!(self, reader, pool => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT id, CAST(LENGTH(text) + COALESCE(LENGTH(fields), 0) AS BIGINT) \
                     FROM logs WHERE source = $1 AND id > $2 {} ORDER BY id LIMIT $3",
                    kept_while_active(source)
                )))
                .bind(source.as_str())
                .bind(after)
                .bind(BATCH)
                .fetch_all(pool)
                .await
            })?;
            if oldest.is_empty() {
                // What is left belongs to active activities.
                return Ok(deleted);
            }
            let mut ids = Vec::with_capacity(oldest.len());
            for (id, bytes) in oldest {
                if excess == 0 {
                    break;
                }
                excess = excess.saturating_sub(bytes.unsigned_abs());
                ids.push(id);
                after = id;
            }
            deleted += self.delete_logs(&ids).await?;
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

    /// Deletes ended runs older than `before`, a batch at a time: first their output (in
    /// batches of its own), then the runs with their transitions and frames.
    async fn delete_old_runs(&self, before: Timestamp) -> StoreResult<u64> {
        let mut total = 0;
        loop {
            let old: Vec<String> = dispatch!(self, reader, pool => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT id FROM runs WHERE state IN {ENDED} AND ended_at < $1 LIMIT $2"
                )))
                .bind(to_millis(before))
                .bind(BATCH)
                .fetch_all(pool)
                .await
            })?;
            if old.is_empty() {
                return Ok(total);
            }
            for id in &old {
                self.delete_run_output(id).await?;
            }
            total += dispatch!(self, writer, pool => {
                let mut tx = pool.begin_write().await?;
                let mut delete = sqlx::QueryBuilder::new("DELETE FROM runs WHERE id IN (");
                let mut list = delete.separated(", ");
                for id in &old {
                    list.push_bind(id.clone());
                }
                delete.push(")");
                let deleted = delete.build().execute(&mut *tx).await?.rows_affected();
                tx.commit().await?;
                deleted
            });
        }
    }

    /// Deletes the output of the oldest ended runs until what is kept is at most `max` bytes.
    async fn cap_output(&self, max: u64) -> StoreResult<u64> {
        let total: Option<i64> = dispatch!(self, reader, pool => {
            sqlx::query_scalar(
                "SELECT CAST(SUM(LENGTH(text)) AS BIGINT) FROM logs WHERE run_id IS NOT NULL",
            )
            .fetch_one(pool)
            .await
        })?;
        let mut excess = total.unwrap_or(0).unsigned_abs().saturating_sub(max);
        let mut runs = 0;
        while 0 < excess {
            let oldest: Vec<String> = dispatch!(self, reader, pool => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT id FROM runs WHERE state IN {ENDED} \
                     AND EXISTS (SELECT 1 FROM logs o WHERE o.run_id = runs.id) \
                     ORDER BY ended_at LIMIT $1"
                )))
                .bind(OUTPUT_BATCH)
                .fetch_all(pool)
                .await
            })?;
            if oldest.is_empty() {
                // What is left belongs to active runs.
                return Ok(runs);
            }
            for id in &oldest {
                if excess == 0 {
                    break;
                }
                excess = excess.saturating_sub(self.delete_run_output(id).await?);
                runs += 1;
            }
        }
        Ok(runs)
    }

    /// Deletes a run's output, a batch of lines at a time; answers the bytes of text deleted.
    async fn delete_run_output(&self, run_id: &str) -> StoreResult<u64> {
        let mut bytes = 0;
        loop {
            let lines: Vec<(i64, i64)> = dispatch!(self, reader, pool => {
                sqlx::query_as(
                    "SELECT id, CAST(LENGTH(text) AS BIGINT) FROM logs WHERE run_id = $1 \
                     ORDER BY seq LIMIT $2",
                )
                .bind(run_id)
                .bind(LINES_BATCH)
                .fetch_all(pool)
                .await
            })?;
            if lines.is_empty() {
                return Ok(bytes);
            }
            bytes += lines
                .iter()
                .map(|(_, length)| length.unsigned_abs())
                .sum::<u64>();
            let ids: Vec<i64> = lines.into_iter().map(|(id, _)| id).collect();
            self.delete_logs(&ids).await?;
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
