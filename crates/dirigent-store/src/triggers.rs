//! Triggers and calendars, kept as their JSON specs with the columns the scheduler needs.

use std::collections::{HashMap, HashSet};

use jiff::Timestamp;

use crate::{
    BeginWrite, Store, StoreError, StoreResult, dispatch, from_millis, from_millis_opt, to_millis,
};

/// A calendar as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarRecord {
    pub name: String,
    /// The calendar's spec, JSON.
    pub spec: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A trigger as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerRecord {
    pub id: String,
    pub robot: String,
    pub calendar: Option<String>,
    /// The queue a queue trigger watches.
    pub queue: Option<String>,
    /// The trigger's spec, JSON.
    pub spec: String,
    pub enabled: bool,
    pub next_fire_at: Option<Timestamp>,
    pub disabled_reason: Option<String>,
    pub consecutive_failures: u32,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct CalendarRow {
    name: String,
    spec: String,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<CalendarRow> for CalendarRecord {
    type Error = StoreError;

    fn try_from(row: CalendarRow) -> StoreResult<CalendarRecord> {
        Ok(CalendarRecord {
            created_at: from_millis("created_at", row.created_at)?,
            updated_at: from_millis("updated_at", row.updated_at)?,
            name: row.name,
            spec: row.spec,
        })
    }
}

#[derive(sqlx::FromRow)]
struct TriggerRow {
    id: String,
    robot: String,
    calendar: Option<String>,
    queue: Option<String>,
    spec: String,
    enabled: bool,
    next_fire_at: Option<i64>,
    disabled_reason: Option<String>,
    consecutive_failures: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<TriggerRow> for TriggerRecord {
    type Error = StoreError;

    fn try_from(row: TriggerRow) -> StoreResult<TriggerRecord> {
        Ok(TriggerRecord {
            next_fire_at: from_millis_opt("next_fire_at", row.next_fire_at)?,
            created_at: from_millis("created_at", row.created_at)?,
            updated_at: from_millis("updated_at", row.updated_at)?,
            id: row.id,
            robot: row.robot,
            calendar: row.calendar,
            queue: row.queue,
            consecutive_failures: u32::try_from(row.consecutive_failures).unwrap_or(u32::MAX),
            spec: row.spec,
            enabled: row.enabled,
            disabled_reason: row.disabled_reason,
        })
    }
}

const SELECT_TRIGGER: &str = "SELECT id, robot, calendar, queue, spec, enabled, next_fire_at, \
     disabled_reason, consecutive_failures, created_at, updated_at FROM triggers";

/// The compare-and-set of the next firing of each take of `$chunk`, answering the ids of the
/// triggers it moved when `$returning` (a macro: the query builder is of either backend).
macro_rules! take_statement {
    ($chunk:expr, $returning:expr) => {{
        let mut update =
            sqlx::QueryBuilder::new("UPDATE triggers SET next_fire_at = v.column3 FROM (");
        update.push_values($chunk, |mut row, take| {
            row.push_bind(take.trigger_id.as_str())
                .push_bind(to_millis(take.due_at))
                .push_bind(take.next.map(to_millis));
        });
        update.push(") AS v WHERE triggers.id = v.column1 AND triggers.next_fire_at = v.column2");
        if $returning {
            update.push(" RETURNING triggers.id");
        }
        update
    }};
}

/// The insert of firings `$rows` (trigger id, firing), recorded at `$now` by the node `$node`.
macro_rules! insert_firings {
    ($rows:expr, $now:expr, $node:expr) => {{
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT INTO trigger_firings (trigger_id, due_at, outcome, reason, recorded_at, node_id) ",
        );
        insert.push_values($rows, |mut row, (trigger_id, firing)| {
            row.push_bind(*trigger_id)
                .push_bind(to_millis(firing.due_at))
                .push_bind(firing.outcome)
                .push_bind(firing.reason.as_deref())
                .push_bind(to_millis($now))
                .push_bind($node);
        });
        insert
    }};
}

impl Store {
    /// Creates a calendar; `Conflict` when the name is taken.
    pub async fn insert_calendar(&self, name: &str, spec: &str, now: Timestamp) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            sqlx::query("INSERT INTO calendars (name, spec, created_at, updated_at) VALUES ($1, $2, $3, $3)")
                .bind(name)
                .bind(spec)
                .bind(to_millis(now))
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    /// Replaces a calendar's spec; `NotFound` when there is none.
    pub async fn replace_calendar(
        &self,
        name: &str,
        spec: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        let done = dispatch!(self, writer, pool => {
            sqlx::query("UPDATE calendars SET spec = $2, updated_at = $3 WHERE name = $1")
                .bind(name)
                .bind(spec)
                .bind(to_millis(now))
                .execute(pool)
                .await?
                .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn calendar(&self, name: &str) -> StoreResult<CalendarRecord> {
        let row: CalendarRow = dispatch!(self, reader, pool => {
            sqlx::query_as("SELECT name, spec, created_at, updated_at FROM calendars WHERE name = $1")
                .bind(name)
                .fetch_one(pool)
                .await?
        });
        row.try_into()
    }

    pub async fn calendars(&self) -> StoreResult<Vec<CalendarRecord>> {
        let rows: Vec<CalendarRow> = dispatch!(self, reader, pool => {
            sqlx::query_as("SELECT name, spec, created_at, updated_at FROM calendars ORDER BY name")
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Deletes a calendar; `Conflict` while a trigger follows it.
    pub async fn delete_calendar(&self, name: &str) -> StoreResult<()> {
        let done = dispatch!(self, writer, pool => {
            sqlx::query("DELETE FROM calendars WHERE name = $1")
                .bind(name)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Stores a new trigger.
    pub async fn insert_trigger(&self, trigger: &TriggerRecord) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            sqlx::query(
                "INSERT INTO triggers (id, robot, calendar, spec, enabled, next_fire_at, \
                 disabled_reason, created_at, updated_at, queue, consecutive_failures) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(&trigger.id)
            .bind(&trigger.robot)
            .bind(&trigger.calendar)
            .bind(&trigger.spec)
            .bind(trigger.enabled)
            .bind(trigger.next_fire_at.map(to_millis))
            .bind(&trigger.disabled_reason)
            .bind(to_millis(trigger.created_at))
            .bind(to_millis(trigger.updated_at))
            .bind(&trigger.queue)
            .bind(i64::from(trigger.consecutive_failures))
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    /// Writes back a trigger's definition and state; `NotFound` when it is gone.
    pub async fn update_trigger(&self, trigger: &TriggerRecord) -> StoreResult<()> {
        let done = dispatch!(self, writer, pool => {
            sqlx::query(
                "UPDATE triggers SET robot = $2, calendar = $3, spec = $4, enabled = $5, \
                 next_fire_at = $6, disabled_reason = $7, updated_at = $8, queue = $9, \
                 consecutive_failures = $10 WHERE id = $1",
            )
            .bind(&trigger.id)
            .bind(&trigger.robot)
            .bind(&trigger.calendar)
            .bind(&trigger.spec)
            .bind(trigger.enabled)
            .bind(trigger.next_fire_at.map(to_millis))
            .bind(&trigger.disabled_reason)
            .bind(to_millis(trigger.updated_at))
            .bind(&trigger.queue)
            .bind(i64::from(trigger.consecutive_failures))
            .execute(pool)
            .await?
            .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn trigger(&self, id: &str) -> StoreResult<TriggerRecord> {
        let row: TriggerRow = dispatch!(self, reader, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_TRIGGER} WHERE id = $1")))
                .bind(id)
                .fetch_one(pool)
                .await?
        });
        row.try_into()
    }

    /// Every trigger, or those of one robot, by id.
    pub async fn triggers(&self, robot: Option<&str>) -> StoreResult<Vec<TriggerRecord>> {
        let rows: Vec<TriggerRow> = dispatch!(self, reader, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT_TRIGGER} WHERE ($1 IS NULL OR robot = $1) ORDER BY id"
            )))
            .bind(robot)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(TryInto::try_into).collect()
    }

    pub async fn delete_trigger(&self, id: &str) -> StoreResult<()> {
        let done = dispatch!(self, writer, pool => {
            sqlx::query("DELETE FROM triggers WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}

/// Triggers whose firings one statement takes, at most.
const TAKE_CHUNK: usize = 500;

/// Makes the enabled queue triggers that watch queue `$1` (any when NULL), or start robot `$2`
/// (any when NULL), due at `$3` unless they are due already.
pub(crate) const WAKE_QUEUE_TRIGGERS: &str = "UPDATE triggers SET next_fire_at = $3 \
     WHERE queue IS NOT NULL AND enabled AND ($1 IS NULL OR queue = $1) \
     AND ($2 IS NULL OR robot = $2) AND (next_fire_at IS NULL OR next_fire_at > $3)";

/// A trigger's firing to take: the trigger, the due time it must still have (so that only
/// one node takes it), its next one, and the firings to record.
#[derive(Debug, Clone)]
pub struct FiringTake {
    pub trigger_id: String,
    pub due_at: Timestamp,
    pub next: Option<Timestamp>,
    pub firings: Vec<NewFiring>,
}

/// A firing to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFiring {
    pub due_at: Timestamp,
    /// `due` (its run to be started), `missed`, `skipped` or `dry_run`.
    pub outcome: &'static str,
    pub reason: Option<String>,
}

/// A firing to record and the id of its trigger.
type FiringOf<'a> = (&'a str, &'a NewFiring);

/// What one take recorded: how many firings, and those taken as `due`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub recorded: usize,
    pub due: Vec<FiringRecord>,
}

/// A firing of a trigger and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiringRecord {
    pub id: i64,
    pub trigger_id: String,
    /// When the schedule said it should fire.
    pub due_at: Timestamp,
    /// `due` (taken, its run not started yet), `started`, `skipped` or `missed`.
    pub outcome: String,
    pub reason: Option<String>,
    pub run_id: Option<String>,
    pub recorded_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct FiringRow {
    id: i64,
    trigger_id: String,
    due_at: i64,
    outcome: String,
    reason: Option<String>,
    run_id: Option<String>,
    recorded_at: i64,
}

impl TryFrom<FiringRow> for FiringRecord {
    type Error = StoreError;

    fn try_from(row: FiringRow) -> StoreResult<FiringRecord> {
        Ok(FiringRecord {
            id: row.id,
            due_at: from_millis("due_at", row.due_at)?,
            recorded_at: from_millis("recorded_at", row.recorded_at)?,
            trigger_id: row.trigger_id,
            outcome: row.outcome,
            reason: row.reason,
            run_id: row.run_id,
        })
    }
}

const SELECT_FIRING: &str =
    "SELECT id, trigger_id, due_at, outcome, reason, run_id, recorded_at FROM trigger_firings";

impl Store {
    /// The earliest next firing of an enabled trigger.
    pub async fn next_trigger_due(&self) -> StoreResult<Option<Timestamp>> {
        let next: Option<i64> = dispatch!(self, reader, pool => {
            sqlx::query_scalar("SELECT MIN(next_fire_at) FROM triggers WHERE enabled")
                .fetch_one(pool)
                .await?
        });
        from_millis_opt("next_fire_at", next)
    }

    /// Enabled triggers due at `now`, earliest first, at most `limit`.
    pub async fn due_triggers(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<TriggerRecord>> {
        let rows: Vec<TriggerRow> = dispatch!(self, reader, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT_TRIGGER} WHERE enabled AND next_fire_at <= $1 ORDER BY next_fire_at LIMIT $2"
            )))
            .bind(to_millis(now))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Takes the firings of triggers, each as one [`FiringTake`], in one transaction: moves
    /// each trigger's next firing on and records its firings — unless another node took it
    /// first (its answer is then `None`). Answers what was recorded, take by take.
    ///
    /// Only `due` firings come back as rows (their runs are to start); the others are only
    /// counted, so that a batch of dry runs or missed firings moves no rows back and forth.
    /// The firings are recorded as taken by the node `node`.
    pub async fn take_trigger_firings(
        &self,
        takes: &[FiringTake],
        node: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<Option<Taken>>> {
        let mut taken: HashMap<&str, Taken> = HashMap::new();
        dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            for chunk in takes.chunks(TAKE_CHUNK) {
                // One compare-and-set of every trigger's next firing. Usually every one holds
                // and a count says so; when another node took some, the savepoint is rolled
                // back and the statement run again to learn which.
                sqlx::query("SAVEPOINT trigger_take").execute(&mut *tx).await?;
                let moved = take_statement!(chunk, false)
                    .build()
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let won: HashSet<String> = if moved == chunk.len() as u64 {
                    sqlx::query("RELEASE SAVEPOINT trigger_take").execute(&mut *tx).await?;
                    chunk.iter().map(|take| take.trigger_id.clone()).collect()
                } else {
                    sqlx::query("ROLLBACK TO SAVEPOINT trigger_take").execute(&mut *tx).await?;
                    take_statement!(chunk, true)
                        .build_query_scalar()
                        .fetch_all(&mut *tx)
                        .await?
                        .into_iter()
                        .collect()
                };
                let won: Vec<&FiringTake> = chunk
                    .iter()
                    .filter(|take| won.contains(&take.trigger_id))
                    .collect();
                for take in &won {
                    taken.insert(&take.trigger_id, Taken { recorded: take.firings.len(), due: Vec::new() });
                }
                let (due, other): (Vec<FiringOf<'_>>, Vec<FiringOf<'_>>) = won
                    .iter()
                    .flat_map(|take| take.firings.iter().map(|firing| (take.trigger_id.as_str(), firing)))
                    .partition(|(_, firing)| firing.outcome == "due");
                for rows in other.chunks(TAKE_CHUNK) {
                    insert_firings!(rows, now, node).build().execute(&mut *tx).await?;
                }
                for rows in due.chunks(TAKE_CHUNK) {
                    let mut insert = insert_firings!(rows, now, node);
                    insert.push(" RETURNING id, trigger_id, due_at, outcome, reason, run_id, recorded_at");
                    let recorded: Vec<FiringRow> = insert.build_query_as().fetch_all(&mut *tx).await?;
                    for row in recorded {
                        let firing = FiringRecord::try_from(row)?;
                        if let Some(entry) = taken.get_mut(firing.trigger_id.as_str()) {
                            entry.due.push(firing);
                        }
                    }
                }
            }
            tx.commit().await?;
        });
        Ok(takes
            .iter()
            .map(|take| {
                taken.remove(take.trigger_id.as_str()).map(|mut taken| {
                    taken.due.sort_by_key(|firing| firing.id);
                    taken
                })
            })
            .collect())
    }

    /// Records what became of a firing taken earlier, unless it was settled already (by
    /// another node settling the firings of a dead one).
    pub async fn settle_firing(
        &self,
        id: i64,
        outcome: &str,
        reason: Option<&str>,
        run_id: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            sqlx::query(
                "UPDATE trigger_firings SET outcome = $2, reason = $3, run_id = $4, recorded_at = $5 \
                 WHERE id = $1 AND outcome = 'due'",
            )
            .bind(id)
            .bind(outcome)
            .bind(reason)
            .bind(run_id)
            .bind(to_millis(now))
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    /// Firings taken but not settled by nodes that stopped between taking and starting them:
    /// nodes whose last heartbeat is older than `alive_after`, and the node `earlier_life` (a
    /// node starting again settles what it left). A live node's firings are its own.
    pub async fn unsettled_firings(
        &self,
        alive_after: Timestamp,
        earlier_life: Option<&str>,
    ) -> StoreResult<Vec<FiringRecord>> {
        let rows: Vec<FiringRow> = dispatch!(self, reader, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT_FIRING} WHERE outcome = 'due' AND (node_id IS NULL OR node_id = $2 OR node_id NOT IN \
                 (SELECT id FROM nodes WHERE heartbeat_at >= $1)) ORDER BY id"
            )))
            .bind(to_millis(alive_after))
            .bind(earlier_life)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// A trigger's firings, newest first, at most `limit`.
    pub async fn trigger_firings(
        &self,
        trigger_id: &str,
        limit: u32,
    ) -> StoreResult<Vec<FiringRecord>> {
        let rows: Vec<FiringRow> = dispatch!(self, reader, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT_FIRING} WHERE trigger_id = $1 ORDER BY id DESC LIMIT $2"
            )))
            .bind(trigger_id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// The run a cause label started, if any (to find whether a firing's run exists).
    pub async fn run_started_by(&self, cause: &str) -> StoreResult<Option<String>> {
        let run: Option<String> = dispatch!(self, reader, pool => {
            sqlx::query_scalar("SELECT run_id FROM run_transitions WHERE cause = $1 LIMIT 1")
                .bind(cause)
                .fetch_optional(pool)
                .await?
        });
        Ok(run)
    }

    /// Makes the enabled queue triggers that watch `queue` (any queue when `None`), or start
    /// `robot` (any robot when `None`), due now unless they are due already; answers how many.
    pub async fn wake_queue_triggers(
        &self,
        queue: Option<&str>,
        robot: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<u64> {
        Ok(dispatch!(self, writer, pool => {
            sqlx::query(WAKE_QUEUE_TRIGGERS)
            .bind(queue)
            .bind(robot)
            .bind(to_millis(now))
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// How many items of `queue` are ready to claim at `now` (counted up to `cap`), and when
    /// the next of the others (postponed, or waiting to retry) becomes ready.
    pub async fn queue_readiness(
        &self,
        queue: &str,
        now: Timestamp,
        cap: u32,
    ) -> StoreResult<(u64, Option<Timestamp>)> {
        let (ready, next): (i64, Option<i64>) = dispatch!(self, reader, pool => {
            let ready: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM (SELECT 1 FROM queue_items i JOIN queues q ON q.id = i.queue_id \
                 WHERE q.name = $1 AND i.status = 'new' AND i.available_at <= $2 LIMIT $3) AS ready",
            )
            .bind(queue)
            .bind(to_millis(now))
            .bind(i64::from(cap))
            .fetch_one(pool)
            .await?;
            let next: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(i.available_at) FROM queue_items i JOIN queues q ON q.id = i.queue_id \
                 WHERE q.name = $1 AND i.status = 'new' AND i.available_at > $2",
            )
            .bind(queue)
            .bind(to_millis(now))
            .fetch_one(pool)
            .await?;
            (ready, next)
        });
        Ok((
            ready.max(0).cast_unsigned(),
            from_millis_opt("available_at", next)?,
        ))
    }

    /// The trigger whose firing started `run`, if one did.
    pub async fn trigger_of_run(&self, run: &str) -> StoreResult<Option<String>> {
        Ok(dispatch!(self, reader, pool => {
            sqlx::query_scalar("SELECT trigger_id FROM trigger_firings WHERE run_id = $1 LIMIT 1")
                .bind(run)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Counts a run of the trigger that ended: a failure adds one to its failures in a row, a
    /// success sets them to zero. Answers the count (`None` if the trigger is gone).
    pub async fn count_trigger_run(
        &self,
        trigger_id: &str,
        failed: bool,
    ) -> StoreResult<Option<u32>> {
        let count: Option<i64> = dispatch!(self, writer, pool => {
            sqlx::query_scalar(
                "UPDATE triggers SET consecutive_failures = \
                 CASE WHEN $2 THEN consecutive_failures + 1 ELSE 0 END WHERE id = $1 \
                 RETURNING consecutive_failures",
            )
            .bind(trigger_id)
            .bind(failed)
            .fetch_optional(pool)
            .await?
        });
        Ok(count.map(|count| u32::try_from(count).unwrap_or(u32::MAX)))
    }

    /// Disables an enabled trigger for `reason`, recording it as a firing `disabled` (with
    /// the run that caused it, if any); answers whether it was enabled.
    pub async fn disable_trigger(
        &self,
        trigger_id: &str,
        reason: &str,
        run_id: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<bool> {
        Ok(dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            let done = sqlx::query(
                "UPDATE triggers SET enabled = FALSE, disabled_reason = $2, next_fire_at = NULL, \
                 updated_at = $3 WHERE id = $1 AND enabled",
            )
            .bind(trigger_id)
            .bind(reason)
            .bind(to_millis(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 1 {
                sqlx::query(
                    "INSERT INTO trigger_firings (trigger_id, due_at, outcome, reason, run_id, recorded_at) \
                     VALUES ($1, $2, 'disabled', $3, $4, $2)",
                )
                .bind(trigger_id)
                .bind(to_millis(now))
                .bind(reason)
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            done == 1
        }))
    }
}
