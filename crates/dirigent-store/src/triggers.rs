//! Triggers and calendars, kept as their JSON specs with the columns the scheduler needs.

use jiff::Timestamp;

use crate::{Store, StoreError, StoreResult, dispatch, from_millis, from_millis_opt, to_millis};

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
    /// The trigger's spec, JSON.
    pub spec: String,
    pub enabled: bool,
    pub next_fire_at: Option<Timestamp>,
    pub disabled_reason: Option<String>,
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
    spec: String,
    enabled: bool,
    next_fire_at: Option<i64>,
    disabled_reason: Option<String>,
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
            spec: row.spec,
            enabled: row.enabled,
            disabled_reason: row.disabled_reason,
        })
    }
}

const SELECT_TRIGGER: &str = "SELECT id, robot, calendar, spec, enabled, next_fire_at, \
     disabled_reason, created_at, updated_at FROM triggers";

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
                 disabled_reason, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
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
                 next_fire_at = $6, disabled_reason = $7, updated_at = $8 WHERE id = $1",
            )
            .bind(&trigger.id)
            .bind(&trigger.robot)
            .bind(&trigger.calendar)
            .bind(&trigger.spec)
            .bind(trigger.enabled)
            .bind(trigger.next_fire_at.map(to_millis))
            .bind(&trigger.disabled_reason)
            .bind(to_millis(trigger.updated_at))
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
            sqlx::query_scalar("SELECT MIN(next_fire_at) FROM triggers WHERE enabled = TRUE")
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
                "{SELECT_TRIGGER} WHERE enabled = TRUE AND next_fire_at <= $1 ORDER BY next_fire_at LIMIT $2"
            )))
            .bind(to_millis(now))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Takes the firing of a trigger due at `due_at`: moves its next firing to `next` and
    /// records `firings` (outcome, reason) due at the given times, in one transaction — unless
    /// another node took it first (answers `None`). Answers the recorded firings.
    pub async fn take_trigger_firing(
        &self,
        trigger_id: &str,
        due_at: Timestamp,
        next: Option<Timestamp>,
        firings: &[(Timestamp, &str, Option<String>)],
        now: Timestamp,
    ) -> StoreResult<Option<Vec<FiringRecord>>> {
        let mut recorded = Vec::with_capacity(firings.len());
        dispatch!(self, writer, pool => {
            let mut tx = pool.begin().await?;
            let taken = sqlx::query(
                "UPDATE triggers SET next_fire_at = $3 WHERE id = $1 AND next_fire_at = $2",
            )
            .bind(trigger_id)
            .bind(to_millis(due_at))
            .bind(next.map(to_millis))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if taken == 0 {
                return Ok(None);
            }
            for (at, outcome, reason) in firings {
                let row: FiringRow = sqlx::query_as(
                    "INSERT INTO trigger_firings (trigger_id, due_at, outcome, reason, recorded_at) \
                     VALUES ($1, $2, $3, $4, $5) \
                     RETURNING id, trigger_id, due_at, outcome, reason, run_id, recorded_at",
                )
                .bind(trigger_id)
                .bind(to_millis(*at))
                .bind(*outcome)
                .bind(reason)
                .bind(to_millis(now))
                .fetch_one(&mut *tx)
                .await?;
                recorded.push(FiringRecord::try_from(row)?);
            }
            tx.commit().await?;
        });
        Ok(Some(recorded))
    }

    /// Records what became of a firing taken earlier.
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
                 WHERE id = $1",
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

    /// Firings taken but not settled: a node stopped between taking and starting them.
    pub async fn unsettled_firings(&self) -> StoreResult<Vec<FiringRecord>> {
        let rows: Vec<FiringRow> = dispatch!(self, reader, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_FIRING} WHERE outcome = 'due' ORDER BY id")))
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
}
