//! Work-item queues: their settings, their items and each item's attempts.
//!
//! The operations robots call at high rates — add, claim, extend, complete, fail, postpone,
//! abandon — go through [`Store::apply_queue_ops`], which applies many of them in one
//! transaction (one fsync for all) and answers each separately. Claims take the first ready
//! items in claim order; on PostgreSQL with `FOR UPDATE SKIP LOCKED`, so that concurrent
//! transactions of several nodes never hand out one item twice.

use std::collections::{BTreeMap, HashMap};

use dirigent_domain::queue::{
    AfterAttempt, ErrorKind, ItemStatus, Priority, QueueSettings, after_failure,
};
use jiff::{SignedDuration, Timestamp};

use crate::{
    BackendKind, BeginWrite, Store, StoreError, StoreResult,
    batch::{Arg, BatchConn, Row, args},
    dispatch, from_millis, from_millis_opt, to_millis,
};

/// Releases, inside the transaction `$tx`, the items held by the run `$run_id` (an
/// `Option<&str>`), or with `None` those whose leases expired by `$now`; `$outcome` says why
/// (`run_lost`, `run_ended`, `lease_expired`). Each item's update re-checks what selected it,
/// so an item extended or claimed again meanwhile (by another node) is left alone. Evaluates
/// to how many items were released.
macro_rules! release_held_items {
    ($tx:expr, $run_id:expr, $now:expr, $outcome:expr) => {{
        let run_id: Option<&str> = $run_id;
        let now: jiff::Timestamp = $now;
        let outcome: &str = $outcome;
        let at = $crate::to_millis(now);
        let mut released: u64 = 0;
        let held: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT id, queue_id, attempts FROM queue_items WHERE status = 'in_progress' \
             AND (run_id = $1 OR ($1 IS NULL AND lease_expires_at <= $2))",
        )
        .bind(run_id)
        .bind(at)
        .fetch_all(&mut **$tx)
        .await?;
        let mut settings: std::collections::HashMap<i64, dirigent_domain::queue::QueueSettings> =
            std::collections::HashMap::new();
        for (id, queue_id, attempts) in held {
            if let std::collections::hash_map::Entry::Vacant(slot) = settings.entry(queue_id) {
                let row: $crate::queues::QueueRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{} WHERE id = $1",
                    $crate::queues::SELECT_QUEUE
                )))
                .bind(queue_id)
                .fetch_one(&mut **$tx)
                .await?;
                slot.insert($crate::queues::QueueRecord::try_from(row)?.settings);
            }
            let Some(queue) = settings.get(&queue_id) else {
                continue;
            };
            let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
            let (status, finished) =
                match dirigent_domain::queue::after_lost_lease(queue, attempts, now) {
                    dirigent_domain::queue::AfterAttempt::Retry { .. } => {
                        (dirigent_domain::queue::ItemStatus::New, None)
                    }
                    dirigent_domain::queue::AfterAttempt::Final(status) => (status, Some(at)),
                };
            let message = match outcome {
                "run_lost" => "its run was lost",
                "run_ended" => "its run ended without finishing it",
                _ => "its lease expired",
            };
            released += sqlx::query(
                "UPDATE queue_items SET status = $2, available_at = COALESCE($6, available_at), \
                 lease_digest = NULL, lease_expires_at = NULL, finished_at = $4, updated_at = $3, \
                 error_kind = CASE WHEN $4 IS NULL THEN error_kind ELSE 'application' END, \
                 error_message = CASE WHEN $4 IS NULL THEN error_message ELSE $5 END, \
                 last_outcome = $7 WHERE id = $1 AND status = 'in_progress' \
                 AND (run_id = $8 OR ($8 IS NULL AND lease_expires_at <= $3))",
            )
            .bind(id)
            .bind(status.as_str())
            .bind(at)
            .bind(finished)
            .bind(message)
            .bind(finished.is_none().then_some(at))
            .bind(outcome)
            .bind(run_id)
            .execute(&mut **$tx)
            .await?
            .rows_affected();
        }
        released
    }};
}
pub(crate) use release_held_items;

/// A queue as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRecord {
    pub id: i64,
    pub name: String,
    pub settings: QueueSettings,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// An item to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewItem {
    /// JSON text.
    pub payload: String,
    pub reference: Option<String>,
    pub priority: Priority,
    pub deadline: Option<Timestamp>,
    pub postpone_until: Option<Timestamp>,
}

/// An item as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRecord {
    pub id: i64,
    pub status: ItemStatus,
    pub priority: Priority,
    pub reference: Option<String>,
    /// JSON text.
    pub payload: String,
    /// JSON text.
    pub output: Option<String>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub attempts: u32,
    pub deadline: Option<Timestamp>,
    /// Not claimable before this time (postponed, or waiting for a retry).
    pub available_at: Timestamp,
    pub lease_expires_at: Option<Timestamp>,
    pub run_id: Option<String>,
    pub claimed_by: Option<String>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub updated_at: Timestamp,
}

/// One attempt at an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub run_id: Option<String>,
    pub claimed_by: String,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub outcome: Option<String>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
}

/// Who claims: a run (through its token) or a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimer {
    pub run_id: Option<String>,
    /// `run:ID` or `user:NAME`.
    pub name: String,
}

/// An operation of a robot (or an operator) on a queue's items. Those on a claimed item carry
/// the digest of its lease token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueOp {
    /// Adds all the items or none.
    Add {
        queue: String,
        items: Vec<NewItem>,
    },
    /// Claims up to `count` ready items under one lease.
    Claim {
        queue: String,
        lease_digest: String,
        claimer: Claimer,
        count: u32,
    },
    Extend {
        queue: String,
        item: i64,
        lease_digest: String,
    },
    Complete {
        queue: String,
        item: i64,
        lease_digest: String,
        output: Option<String>,
    },
    /// Completes each item on its own: one refused leaves the others done.
    CompleteMany {
        queue: String,
        items: Vec<Completion>,
    },
    Fail {
        queue: String,
        item: i64,
        lease_digest: String,
        kind: ErrorKind,
        message: String,
    },
    /// A claimed item (with its lease) or a new one (without) waits until `until`.
    Postpone {
        queue: String,
        item: i64,
        lease_digest: Option<String>,
        until: Timestamp,
    },
    Abandon {
        queue: String,
        item: i64,
        lease_digest: String,
        message: Option<String>,
    },
    /// A failed, abandoned or deleted item goes back to `new` with its attempts reset.
    Requeue {
        queue: String,
        item: i64,
    },
    Delete {
        queue: String,
        item: i64,
    },
}

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueAnswer {
    /// The ids of the added items, in the order given.
    Added(Vec<i64>),
    /// The claimed items in claim order; none when none is ready.
    Claimed(Vec<ItemRecord>),
    /// Per item of a `CompleteMany`, in the order given: done, or why not.
    Completed(Vec<Result<(), QueueOpError>>),
    /// The item after the operation.
    Item(Box<ItemRecord>),
}

/// An item to complete and what the robot produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub item: i64,
    pub lease_digest: String,
    /// JSON text.
    pub output: Option<String>,
}

/// What a batch of operations did.
#[derive(Debug)]
pub struct AppliedOps {
    /// One answer per operation, in order.
    pub answers: Vec<Result<QueueAnswer, QueueOpError>>,
    /// How many queue triggers were woken because items became ready.
    pub woken_triggers: u64,
}

/// Why an operation was refused; nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueOpError {
    #[error("no queue of this name")]
    QueueNotFound,
    #[error("no item of this id in the queue")]
    ItemNotFound,
    #[error("the lease token is not the item's current one, or its lease has expired")]
    StaleLease,
    #[error("the item is {0}")]
    WrongStatus(ItemStatus),
    #[error("an item with reference {reference:?} exists already: {existing}")]
    DuplicateReference { reference: String, existing: i64 },
    #[error("reference {0:?} appears more than once among the items")]
    RepeatedReference(String),
    #[error("item {index}: the payload is larger than the queue's limit of {limit} bytes")]
    PayloadTooLarge { index: usize, limit: u32 },
}

/// Which items to list, requeue or delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemFilter {
    pub status: Option<ItemStatus>,
    pub reference: Option<String>,
    /// Added at or after.
    pub created_from: Option<Timestamp>,
    /// Added before.
    pub created_to: Option<Timestamp>,
    /// A payload field (`customer.id`) and the value it must have, compared as text.
    pub payload_field: Option<(Vec<String>, String)>,
}

/// Per-queue figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    pub counts: BTreeMap<ItemStatus, u64>,
    /// Items finished successfully in the last hour.
    pub successful_last_hour: u64,
    /// Mean time from claim to success over the last 24 hours.
    pub average_processing: Option<SignedDuration>,
    pub oldest_new_at: Option<Timestamp>,
}

macro_rules! item_columns {
    () => {
        "id, status, priority, reference, payload, output, error_kind, error_message, attempts, \
         deadline, available_at, lease_expires_at, run_id, claimed_by, created_at, started_at, \
         finished_at, updated_at"
    };
}

#[derive(sqlx::FromRow)]
struct ItemRow {
    id: i64,
    status: String,
    priority: i64,
    reference: Option<String>,
    payload: String,
    output: Option<String>,
    error_kind: Option<String>,
    error_message: Option<String>,
    attempts: i64,
    deadline: Option<i64>,
    available_at: i64,
    lease_expires_at: Option<i64>,
    run_id: Option<String>,
    claimed_by: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    updated_at: i64,
}

/// The columns of `item_columns!`, in order.
impl Row for ItemRow {
    fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<ItemRow> {
        Ok(ItemRow {
            id: row.get(0)?,
            status: row.get(1)?,
            priority: row.get(2)?,
            reference: row.get(3)?,
            payload: row.get(4)?,
            output: row.get(5)?,
            error_kind: row.get(6)?,
            error_message: row.get(7)?,
            attempts: row.get(8)?,
            deadline: row.get(9)?,
            available_at: row.get(10)?,
            lease_expires_at: row.get(11)?,
            run_id: row.get(12)?,
            claimed_by: row.get(13)?,
            created_at: row.get(14)?,
            started_at: row.get(15)?,
            finished_at: row.get(16)?,
            updated_at: row.get(17)?,
        })
    }
}

impl TryFrom<ItemRow> for ItemRecord {
    type Error = StoreError;

    fn try_from(row: ItemRow) -> StoreResult<ItemRecord> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("queue item {}: {what}", row.id));
        Ok(ItemRecord {
            id: row.id,
            status: row.status.parse().map_err(|_| corrupt("status"))?,
            priority: Priority::from_rank(row.priority).ok_or_else(|| corrupt("priority"))?,
            attempts: u32::try_from(row.attempts).map_err(|_| corrupt("attempts"))?,
            deadline: from_millis_opt("deadline", row.deadline)?,
            available_at: from_millis("available_at", row.available_at)?,
            lease_expires_at: from_millis_opt("lease_expires_at", row.lease_expires_at)?,
            created_at: from_millis("created_at", row.created_at)?,
            started_at: from_millis_opt("started_at", row.started_at)?,
            finished_at: from_millis_opt("finished_at", row.finished_at)?,
            updated_at: from_millis("updated_at", row.updated_at)?,
            reference: row.reference,
            payload: row.payload,
            output: row.output,
            error_kind: row.error_kind,
            error_message: row.error_message,
            run_id: row.run_id,
            claimed_by: row.claimed_by,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct QueueRow {
    id: i64,
    name: String,
    description: String,
    max_attempts: i64,
    retry_delay_seconds: i64,
    retry_backoff: i64,
    lease_seconds: i64,
    enforce_unique_reference: bool,
    retention_days: i64,
    max_payload_bytes: i64,
    created_at: i64,
    updated_at: i64,
}

/// The columns of `queue_columns!`, in order.
impl Row for QueueRow {
    fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<QueueRow> {
        Ok(QueueRow {
            id: row.get(0)?,
            name: row.get(1)?,
            description: row.get(2)?,
            max_attempts: row.get(3)?,
            retry_delay_seconds: row.get(4)?,
            retry_backoff: row.get(5)?,
            lease_seconds: row.get(6)?,
            enforce_unique_reference: row.get(7)?,
            retention_days: row.get(8)?,
            max_payload_bytes: row.get(9)?,
            created_at: row.get(10)?,
            updated_at: row.get(11)?,
        })
    }
}

/// An item's status and lease: `status, lease_digest, lease_expires_at`.
type LeaseRow = (String, Option<String>, Option<i64>);

impl Row for LeaseRow {
    fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<LeaseRow> {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    }
}

impl TryFrom<QueueRow> for QueueRecord {
    type Error = StoreError;

    fn try_from(row: QueueRow) -> StoreResult<QueueRecord> {
        let int = |column: &str, value: i64| {
            u32::try_from(value)
                .map_err(|_| StoreError::Corrupt(format!("queue {}: {column}", row.name)))
        };
        Ok(QueueRecord {
            settings: QueueSettings {
                description: row.description.clone(),
                max_attempts: int("max_attempts", row.max_attempts)?,
                retry_delay_seconds: int("retry_delay_seconds", row.retry_delay_seconds)?,
                retry_backoff: int("retry_backoff", row.retry_backoff)?,
                lease_seconds: int("lease_seconds", row.lease_seconds)?,
                enforce_unique_reference: row.enforce_unique_reference,
                retention_days: int("retention_days", row.retention_days)?,
                max_payload_bytes: int("max_payload_bytes", row.max_payload_bytes)?,
            },
            created_at: from_millis("created_at", row.created_at)?,
            updated_at: from_millis("updated_at", row.updated_at)?,
            id: row.id,
            name: row.name,
        })
    }
}

macro_rules! queue_columns {
    () => {
        "id, name, description, max_attempts, retry_delay_seconds, retry_backoff, lease_seconds, \
         enforce_unique_reference, retention_days, max_payload_bytes, created_at, updated_at"
    };
}

pub(crate) const SELECT_QUEUE: &str = concat!("SELECT ", queue_columns!(), " FROM queues");
const SELECT_QUEUE_BY_NAME: &str =
    concat!("SELECT ", queue_columns!(), " FROM queues WHERE name = $1");

/// Claims the first `$7` ready items of queue `$6` at time `$5`, in claim order.
const CLAIM_SQLITE: &str = concat!(
    "UPDATE queue_items SET status = 'in_progress', attempts = attempts + 1, lease_digest = $1, \
     lease_expires_at = $2, run_id = $3, claimed_by = $4, started_at = $5, updated_at = $5 \
     WHERE id IN (SELECT id FROM queue_items WHERE queue_id = $6 AND status = 'new' \
     AND available_at <= $5 ORDER BY deadline_key, priority, id LIMIT $7) RETURNING ",
    item_columns!()
);
const CLAIM_POSTGRES: &str = concat!(
    "UPDATE queue_items SET status = 'in_progress', attempts = attempts + 1, lease_digest = $1, \
     lease_expires_at = $2, run_id = $3, claimed_by = $4, started_at = $5, updated_at = $5 \
     WHERE id IN (SELECT id FROM queue_items WHERE queue_id = $6 AND status = 'new' \
     AND available_at <= $5 ORDER BY deadline_key, priority, id LIMIT $7 FOR UPDATE SKIP LOCKED) \
     RETURNING ",
    item_columns!()
);

/// The first `$3` ready items of queue `$1` at time `$2`, in claim order.
const READY_SQLITE: &str = "SELECT id FROM queue_items WHERE queue_id = $1 AND status = 'new' \
     AND available_at <= $2 ORDER BY deadline_key, priority, id LIMIT $3";
const READY_POSTGRES: &str = "SELECT id FROM queue_items WHERE queue_id = $1 AND status = 'new' \
     AND available_at <= $2 ORDER BY deadline_key, priority, id LIMIT $3 FOR UPDATE SKIP LOCKED";

/// Claims at time `$1` the items of the JSON array `$2`, each under its own lease
/// (`item`, `new_digest`, `new_expires`, `new_run`, `new_claimer` each).
const CLAIM_ASSIGNED_SQLITE: &str = concat!(
    "UPDATE queue_items SET status = 'in_progress', attempts = attempts + 1, \
     lease_digest = j.new_digest, lease_expires_at = j.new_expires, run_id = j.new_run, \
     claimed_by = j.new_claimer, started_at = $1, updated_at = $1 \
     FROM (SELECT value ->> 'item' AS item, value ->> 'new_digest' AS new_digest, \
     value ->> 'new_expires' AS new_expires, value ->> 'new_run' AS new_run, \
     value ->> 'new_claimer' AS new_claimer FROM json_each($2)) AS j \
     WHERE id = j.item AND status = 'new' RETURNING ",
    item_columns!()
);
const CLAIM_ASSIGNED_POSTGRES: &str = concat!(
    "UPDATE queue_items SET status = 'in_progress', attempts = attempts + 1, \
     lease_digest = j.new_digest, lease_expires_at = j.new_expires, run_id = j.new_run, \
     claimed_by = j.new_claimer, started_at = $1, updated_at = $1 \
     FROM json_to_recordset($2::json) AS j(item BIGINT, new_digest TEXT, new_expires BIGINT, \
     new_run TEXT, new_claimer TEXT) \
     WHERE id = j.item AND status = 'new' RETURNING ",
    item_columns!()
);

/// Completes at time `$1` the items of the JSON array `$2` (`item`, `queue_id`, `digest`,
/// `new_output` each) that are held under their digest: all completions of a batch in one
/// statement.
const COMPLETE_SQLITE: &str = concat!(
    "UPDATE queue_items SET status = 'successful', output = COALESCE(j.new_output, output), \
     error_kind = NULL, error_message = NULL, lease_digest = NULL, lease_expires_at = NULL, \
     finished_at = $1, updated_at = $1, last_outcome = 'successful' \
     FROM (SELECT value ->> 'item' AS item, value ->> 'item_queue' AS item_queue, \
     value ->> 'digest' AS digest, value ->> 'new_output' AS new_output FROM json_each($2)) AS j \
     WHERE id = j.item AND queue_id = j.item_queue AND status = 'in_progress' \
     AND lease_digest = j.digest AND lease_expires_at > $1 RETURNING ",
    item_columns!()
);
const COMPLETE_POSTGRES: &str = concat!(
    "UPDATE queue_items SET status = 'successful', output = COALESCE(j.new_output, output), \
     error_kind = NULL, error_message = NULL, lease_digest = NULL, lease_expires_at = NULL, \
     finished_at = $1, updated_at = $1, last_outcome = 'successful' \
     FROM json_to_recordset($2::json) AS j(item BIGINT, item_queue BIGINT, digest TEXT, new_output TEXT) \
     WHERE id = j.item AND queue_id = j.item_queue AND status = 'in_progress' \
     AND lease_digest = j.digest AND lease_expires_at > $1 RETURNING ",
    item_columns!()
);

/// Rows per multi-row INSERT of a bulk add (well under both backends' parameter limits).
const INSERT_CHUNK: usize = 500;

/// Where an item held under a lease goes, and the outcome its attempt records.
struct Ending<'a> {
    status: ItemStatus,
    available_at: Option<Timestamp>,
    output: Option<&'a str>,
    error: Option<(&'a str, &'a str)>,
    outcome: &'a str,
}

/// Appends ` AND …` conditions for `$filter` to the query builder `$query`; the payload field
/// is read with each backend's JSON functions.
macro_rules! push_filter {
    ($query:expr, $filter:expr, $kind:expr) => {{
        let filter: &ItemFilter = $filter;
        if let Some(status) = filter.status {
            $query.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(reference) = &filter.reference {
            $query
                .push(" AND reference = ")
                .push_bind(reference.clone());
        }
        if let Some(from) = filter.created_from {
            $query
                .push(" AND created_at >= ")
                .push_bind(to_millis(from));
        }
        if let Some(to) = filter.created_to {
            $query.push(" AND created_at < ").push_bind(to_millis(to));
        }
        if let Some((path, value)) = &filter.payload_field {
            match $kind {
                BackendKind::Sqlite => {
                    // json_extract yields typed values; compare their text.
                    let mut json_path = String::from("$");
                    for key in path {
                        json_path.push_str(&format!(".\"{}\"", key.replace('"', "")));
                    }
                    $query
                        .push(" AND CAST(json_extract(payload, ")
                        .push_bind(json_path)
                        .push(") AS TEXT) = ")
                        .push_bind(value.clone());
                }
                BackendKind::Postgres => {
                    // The path as an array literal, each key quoted.
                    let keys: Vec<String> = path
                        .iter()
                        .map(|key| {
                            format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""))
                        })
                        .collect();
                    $query
                        .push(" AND (payload::jsonb #>> CAST(")
                        .push_bind(format!("{{{}}}", keys.join(",")))
                        .push(" AS TEXT[])) = ")
                        .push_bind(value.clone());
                }
            }
        }
    }};
}

impl Store {
    /// Creates a queue; `Conflict` when the name is taken.
    pub async fn create_queue(
        &self,
        name: &str,
        settings: &QueueSettings,
        now: Timestamp,
    ) -> StoreResult<QueueRecord> {
        let now = to_millis(now);
        let row: QueueRow = dispatch!(self, writer, pool => {
            sqlx::query_as(concat!(
                "INSERT INTO queues (name, description, max_attempts, retry_delay_seconds, \
                 retry_backoff, lease_seconds, enforce_unique_reference, retention_days, \
                 max_payload_bytes, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) RETURNING ",
                queue_columns!()
            ))
            .bind(name)
            .bind(&settings.description)
            .bind(i64::from(settings.max_attempts))
            .bind(i64::from(settings.retry_delay_seconds))
            .bind(i64::from(settings.retry_backoff))
            .bind(i64::from(settings.lease_seconds))
            .bind(settings.enforce_unique_reference)
            .bind(i64::from(settings.retention_days))
            .bind(i64::from(settings.max_payload_bytes))
            .bind(now)
            .fetch_one(pool)
            .await?
        });
        row.try_into()
    }

    /// Replaces a queue's settings. Items added before keep their reference uniqueness.
    pub async fn update_queue(
        &self,
        name: &str,
        settings: &QueueSettings,
        now: Timestamp,
    ) -> StoreResult<QueueRecord> {
        let done = dispatch!(self, writer, pool => {
            sqlx::query(
                "UPDATE queues SET description = $2, max_attempts = $3, retry_delay_seconds = $4, \
                 retry_backoff = $5, lease_seconds = $6, enforce_unique_reference = $7, \
                 retention_days = $8, max_payload_bytes = $9, updated_at = $10 WHERE name = $1",
            )
            .bind(name)
            .bind(&settings.description)
            .bind(i64::from(settings.max_attempts))
            .bind(i64::from(settings.retry_delay_seconds))
            .bind(i64::from(settings.retry_backoff))
            .bind(i64::from(settings.lease_seconds))
            .bind(settings.enforce_unique_reference)
            .bind(i64::from(settings.retention_days))
            .bind(i64::from(settings.max_payload_bytes))
            .bind(to_millis(now))
            .execute(pool)
            .await?
            .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        self.queue(name).await
    }

    /// Deletes a queue and its items; `Conflict` while a robot holds one of them.
    pub async fn delete_queue(&self, name: &str) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            let held: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM queue_items i JOIN queues q ON q.id = i.queue_id \
                 WHERE q.name = $1 AND i.status = 'in_progress'",
            )
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
            if 0 < held {
                return Err(StoreError::Conflict);
            }
            let id: Option<i64> = sqlx::query_scalar("DELETE FROM queues WHERE name = $1 RETURNING id")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(id) = id else {
                return Err(StoreError::NotFound);
            };
            for figures in ["DELETE FROM queue_counts WHERE queue_id = $1", "DELETE FROM queue_minutes WHERE queue_id = $1"] {
                sqlx::query(figures).bind(id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn queue(&self, name: &str) -> StoreResult<QueueRecord> {
        let row: QueueRow = dispatch!(self, reader, pool => {
            sqlx::query_as(SELECT_QUEUE_BY_NAME)
                .bind(name)
                .fetch_one(pool)
                .await?
        });
        row.try_into()
    }

    pub async fn queues(&self) -> StoreResult<Vec<QueueRecord>> {
        let rows: Vec<QueueRow> = dispatch!(self, reader, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_QUEUE} ORDER BY name")))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Applies `ops` in one transaction and answers each: the completions first, in one
    /// statement, then the others in order (the operations of a batch are concurrent requests,
    /// so any order is theirs). In the same transaction it appends the `audit` records, the
    /// record `audit_of` makes of each operation and its answer, and wakes the queue triggers
    /// of the queues whose items became ready. A refused operation changes nothing; the others
    /// are applied all the same. A database failure fails all.
    pub async fn apply_queue_ops(
        &self,
        session: &mut crate::WriteSession,
        ops: &[QueueOp],
        audit: &[crate::AuditRecord],
        audit_of: impl FnMut(usize, &Result<QueueAnswer, QueueOpError>) -> Option<crate::AuditRecord>
        + Send,
        now: Timestamp,
    ) -> StoreResult<AppliedOps> {
        let mut batch = match &mut session.0 {
            crate::SessionConnection::Sqlite(connection) => {
                let connection = connection
                    .as_mut()
                    .ok_or(StoreError::Unavailable(sqlx::Error::PoolClosed))?;
                BatchConn::begin_sqlite(connection).await?
            }
            crate::SessionConnection::Postgres(conn) => BatchConn::begin_postgres(conn).await?,
        };
        let applied = apply_ops(&mut batch, ops, audit, audit_of, now).await?;
        batch.commit().await?;
        Ok(applied)
    }

    /// One item of a queue.
    pub async fn queue_item(&self, queue: &str, item: i64) -> StoreResult<ItemRecord> {
        let row: ItemRow = dispatch!(self, reader, pool => {
            sqlx::query_as(concat!(
                "SELECT ", item_columns!(), " FROM queue_items WHERE id = $1 \
                 AND queue_id = (SELECT id FROM queues WHERE name = $2)"
            ))
            .bind(item)
            .bind(queue)
            .fetch_one(pool)
            .await?
        });
        row.try_into()
    }

    /// The attempts at an item, oldest first.
    pub async fn item_attempts(&self, item: i64) -> StoreResult<Vec<AttemptRecord>> {
        type Row = (
            i64,
            Option<String>,
            String,
            i64,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = dispatch!(self, reader, pool => {
            sqlx::query_as(
                "SELECT attempt, run_id, claimed_by, started_at, ended_at, outcome, error_kind, \
                 error_message FROM queue_item_attempts WHERE item_id = $1 ORDER BY id",
            )
            .bind(item)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|row| {
                Ok(AttemptRecord {
                    attempt: u32::try_from(row.0).unwrap_or_default(),
                    run_id: row.1,
                    claimed_by: row.2,
                    started_at: from_millis("started_at", row.3)?,
                    ended_at: from_millis_opt("ended_at", row.4)?,
                    outcome: row.5,
                    error_kind: row.6,
                    error_message: row.7,
                })
            })
            .collect()
    }

    /// A queue's items matching `filter`, by id, after `after_id`, at most `limit`.
    pub async fn queue_items(
        &self,
        queue: &str,
        filter: &ItemFilter,
        after_id: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<ItemRecord>> {
        let kind = self.backend_kind();
        let rows: Vec<ItemRow> = dispatch!(self, reader, pool => {
            let mut query = sqlx::QueryBuilder::new(concat!(
                "SELECT ", item_columns!(), " FROM queue_items WHERE queue_id = (SELECT id FROM queues WHERE name = "
            ));
            query.push_bind(queue).push(")");
            push_filter!(query, filter, kind);
            if let Some(after_id) = after_id {
                query.push(" AND id > ").push_bind(after_id);
            }
            query.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit));
            query.build_query_as().fetch_all(pool).await?
        });
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Puts every failed, abandoned or deleted item matching `filter` back to `new`; answers
    /// how many. Deleted items whose unique reference was taken since stay deleted.
    pub async fn requeue_items(
        &self,
        queue: &str,
        filter: &ItemFilter,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let kind = self.backend_kind();
        let at = to_millis(now);
        let done = dispatch!(self, writer, pool => {
            let mut query = sqlx::QueryBuilder::new(
                "UPDATE queue_items SET status = 'new', attempts = 0, error_kind = NULL, \
                 error_message = NULL, finished_at = NULL, available_at = ",
            );
            query.push_bind(at).push(", updated_at = ").push_bind(at);
            query.push(" WHERE queue_id = (SELECT id FROM queues WHERE name = ").push_bind(queue).push(")");
            query.push(" AND status IN ('failed', 'abandoned', 'deleted')");
            query.push(
                " AND NOT (status = 'deleted' AND unique_reference = TRUE AND EXISTS (SELECT 1 FROM \
                 queue_items other WHERE other.queue_id = queue_items.queue_id AND other.reference = \
                 queue_items.reference AND other.unique_reference = TRUE AND other.status <> 'deleted'))",
            );
            push_filter!(query, filter, kind);
            query.build().execute(pool).await?.rows_affected()
        });
        Ok(done)
    }

    /// Deletes every item matching `filter` that no robot holds; answers how many.
    pub async fn delete_items(
        &self,
        queue: &str,
        filter: &ItemFilter,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let kind = self.backend_kind();
        let at = to_millis(now);
        let done = dispatch!(self, writer, pool => {
            let mut query = sqlx::QueryBuilder::new("UPDATE queue_items SET status = 'deleted', finished_at = ");
            query.push_bind(at).push(", updated_at = ").push_bind(at);
            query.push(" WHERE queue_id = (SELECT id FROM queues WHERE name = ").push_bind(queue).push(")");
            query.push(" AND status NOT IN ('in_progress', 'deleted')");
            push_filter!(query, filter, kind);
            query.build().execute(pool).await?.rows_affected()
        });
        Ok(done)
    }

    /// Counts per status, throughput over the last hour, mean processing time over the last
    /// day (from per-minute figures), and the oldest waiting item.
    pub async fn queue_stats(&self, queue_id: i64, now: Timestamp) -> StoreResult<QueueStats> {
        let this_minute = to_millis(now) / 60_000;
        type Figures = (Vec<(String, i64)>, (i64, i64, i64), Option<i64>);
        let (counts, recent, oldest): Figures = dispatch!(self, reader, pool => {
            let counts = sqlx::query_as("SELECT status, count FROM queue_counts WHERE queue_id = $1")
                .bind(queue_id)
                .fetch_all(pool)
                .await?;
            let recent = sqlx::query_as(
                "SELECT CAST(COALESCE(SUM(CASE WHEN minute > $2 THEN successful ELSE 0 END), 0) AS BIGINT), \
                 CAST(COALESCE(SUM(successful), 0) AS BIGINT), \
                 CAST(COALESCE(SUM(processing_ms), 0) AS BIGINT) \
                 FROM queue_minutes WHERE queue_id = $1 AND minute > $3",
            )
            .bind(queue_id)
            .bind(this_minute - 60)
            .bind(this_minute - 1440)
            .fetch_one(pool)
            .await?;
            let oldest = sqlx::query_scalar(
                "SELECT created_at FROM queue_items WHERE queue_id = $1 AND status = 'new' \
                 ORDER BY id LIMIT 1",
            )
            .bind(queue_id)
            .fetch_optional(pool)
            .await?;
            (counts, recent, oldest)
        });
        let mut by_status: BTreeMap<ItemStatus, u64> = ItemStatus::ALL
            .into_iter()
            .map(|status| (status, 0))
            .collect();
        for (status, count) in counts {
            let status: ItemStatus = status
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("queue item status {status:?}")))?;
            by_status.insert(status, u64::try_from(count).unwrap_or_default());
        }
        Ok(QueueStats {
            counts: by_status,
            successful_last_hour: u64::try_from(recent.0).unwrap_or_default(),
            average_processing: (0 < recent.1)
                .then(|| SignedDuration::from_millis(recent.2 / recent.1)),
            oldest_new_at: from_millis_opt("created_at", oldest)?,
        })
    }

    /// Ends every lease that expired by `now`: each item goes back to `new`, or to
    /// `abandoned` after its last attempt. Answers how many.
    pub async fn expire_leases(&self, now: Timestamp) -> StoreResult<u64> {
        self.release_items(None, now, "lease_expired").await
    }

    /// Releases at once the items held by the run `run_id`, which ended (`lost` or not)
    /// without finishing them.
    pub async fn release_run_items(
        &self,
        run_id: &str,
        lost: bool,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let outcome = if lost { "run_lost" } else { "run_ended" };
        self.release_items(Some(run_id), now, outcome).await
    }

    async fn release_items(
        &self,
        run_id: Option<&str>,
        now: Timestamp,
        outcome: &str,
    ) -> StoreResult<u64> {
        let released = dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            let released = release_held_items!(&mut tx, run_id, now, outcome);
            tx.commit().await?;
            released
        });
        Ok(released)
    }

    /// When the next lease expires, if any is held.
    pub async fn next_lease_expiry(&self) -> StoreResult<Option<Timestamp>> {
        let next: Option<i64> = dispatch!(self, reader, pool => {
            sqlx::query_scalar("SELECT MIN(lease_expires_at) FROM queue_items WHERE status = 'in_progress'")
                .fetch_one(pool)
                .await?
        });
        from_millis_opt("lease_expires_at", next)
    }

    /// Removes finished items older than their queue's retention, and per-minute figures
    /// older than two days; answers how many items.
    pub async fn purge_finished_items(&self, now: Timestamp) -> StoreResult<u64> {
        let done = dispatch!(self, writer, pool => {
            sqlx::query("DELETE FROM queue_minutes WHERE minute < $1")
                .bind(to_millis(now) / 60_000 - 2 * 1440)
                .execute(pool)
                .await?;
            sqlx::query(
                "DELETE FROM queue_items WHERE id IN (SELECT i.id FROM queue_items i \
                 JOIN queues q ON q.id = i.queue_id WHERE q.retention_days > 0 \
                 AND i.status IN ('successful', 'failed', 'abandoned', 'deleted') \
                 AND i.finished_at < $1 - q.retention_days * 86400000)",
            )
            .bind(to_millis(now))
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(done)
    }
}

impl QueueOp {
    /// Whether the operation, when it succeeds, may leave items ready to claim (now or later).
    pub fn fills(&self) -> bool {
        matches!(
            self,
            QueueOp::Add { .. }
                | QueueOp::Fail { .. }
                | QueueOp::Postpone { .. }
                | QueueOp::Requeue { .. }
        )
    }

    /// The name of the queue the operation is on.
    pub fn queue(&self) -> &str {
        match self {
            QueueOp::Add { queue, .. }
            | QueueOp::Claim { queue, .. }
            | QueueOp::Extend { queue, .. }
            | QueueOp::Complete { queue, .. }
            | QueueOp::CompleteMany { queue, .. }
            | QueueOp::Fail { queue, .. }
            | QueueOp::Postpone { queue, .. }
            | QueueOp::Abandon { queue, .. }
            | QueueOp::Requeue { queue, .. }
            | QueueOp::Delete { queue, .. } => queue,
        }
    }
}

/// The body of [`Store::apply_queue_ops`] on the batch's open transaction.
async fn apply_ops(
    conn: &mut BatchConn<'_>,
    ops: &[QueueOp],
    audit: &[crate::AuditRecord],
    mut audit_of: impl FnMut(usize, &Result<QueueAnswer, QueueOpError>) -> Option<crate::AuditRecord>
    + Send,
    now: Timestamp,
) -> StoreResult<AppliedOps> {
    let (claim_sql, ready_sql, claim_assigned_sql, complete_sql) = match conn.kind() {
        BackendKind::Sqlite => (
            CLAIM_SQLITE,
            READY_SQLITE,
            CLAIM_ASSIGNED_SQLITE,
            COMPLETE_SQLITE,
        ),
        BackendKind::Postgres => (
            CLAIM_POSTGRES,
            READY_POSTGRES,
            CLAIM_ASSIGNED_POSTGRES,
            COMPLETE_POSTGRES,
        ),
    };
    let at = to_millis(now);
    let mut answers = Vec::with_capacity(ops.len());
    let mut woken_triggers = 0;
    let mut queues: HashMap<&str, Option<QueueRecord>> = HashMap::new();
    for op in ops {
        let name = op.queue();
        if !queues.contains_key(name) {
            let found: Option<QueueRow> = conn.row(SELECT_QUEUE_BY_NAME, args![name]).await?;
            queues.insert(name, found.map(TryInto::try_into).transpose()?);
        }
    }
    // The completions of the batch go first, in one statement (its operations are
    // concurrent: any order is theirs). An item named twice is sent once; the others,
    // and those not completed, take the way of one operation below, which says why.
    let mut completed = HashMap::new();
    let mut sent = std::collections::HashSet::new();
    let mut completions = Vec::new();
    for op in ops {
        let Some(Some(queue)) = queues.get(op.queue()) else {
            continue;
        };
        let mut send = |item: i64, digest: &str, output: Option<&String>| {
            if sent.insert(item) {
                completions.push(serde_json::json!({
                    "item": item, "item_queue": queue.id, "digest": digest, "new_output": output,
                }));
            }
        };
        match op {
            QueueOp::Complete {
                item,
                lease_digest,
                output,
                ..
            } => send(*item, lease_digest, output.as_ref()),
            QueueOp::CompleteMany { items, .. } => {
                for completion in items {
                    send(
                        completion.item,
                        &completion.lease_digest,
                        completion.output.as_ref(),
                    );
                }
            }
            _ => {}
        }
    }
    if !completions.is_empty() {
        let rows: Vec<ItemRow> = conn
            .rows(
                complete_sql,
                args![at, &serde_json::Value::Array(completions).to_string()],
            )
            .await?;
        completed = by_id(rows)?;
    }
    // With several claims, the ready items of each queue are read once, in claim order,
    // shared out among its claims in order, and all claimed in one statement.
    let claims: Vec<(usize, &QueueRecord, &String, &Claimer, u32)> = ops
        .iter()
        .enumerate()
        .filter_map(|(index, op)| match (op, queues.get(op.queue())) {
            (
                QueueOp::Claim {
                    lease_digest,
                    claimer,
                    count,
                    ..
                },
                Some(Some(queue)),
            ) => Some((index, queue, lease_digest, claimer, *count)),
            _ => None,
        })
        .collect();
    let shared_claims = 1 < claims.len();
    let mut claimed: HashMap<usize, Vec<ItemRecord>> = HashMap::new();
    if shared_claims {
        let mut totals: BTreeMap<i64, i64> = BTreeMap::new();
        for (_, queue, _, _, count) in &claims {
            *totals.entry(queue.id).or_default() += i64::from(*count);
        }
        let mut ready: HashMap<i64, std::vec::IntoIter<i64>> = HashMap::new();
        for (queue_id, total) in totals {
            let ids: Vec<(i64,)> = conn.rows(ready_sql, args![queue_id, at, total]).await?;
            let ids: Vec<i64> = ids.into_iter().map(|(id,)| id).collect();
            ready.insert(queue_id, ids.into_iter());
        }
        let mut assignments = Vec::new();
        let mut order: HashMap<usize, Vec<i64>> = HashMap::new();
        for (index, queue, digest, claimer, count) in &claims {
            let Some(ids) = ready.get_mut(&queue.id) else {
                continue;
            };
            for id in ids.by_ref().take(*count as usize) {
                order.entry(*index).or_default().push(id);
                assignments.push(serde_json::json!({
                    "item": id, "new_digest": digest,
                    "new_expires": to_millis(queue.settings.lease_until(now)),
                    "new_run": claimer.run_id, "new_claimer": claimer.name,
                }));
            }
        }
        let mut records = HashMap::new();
        if !assignments.is_empty() {
            let rows: Vec<ItemRow> = conn
                .rows(
                    claim_assigned_sql,
                    args![at, &serde_json::Value::Array(assignments).to_string()],
                )
                .await?;
            records = by_id(rows)?;
        }
        for (index, ids) in order {
            let items = ids.iter().filter_map(|id| records.remove(id)).collect();
            claimed.insert(index, items);
        }
    }
    // The items added, per queue: they count as new.
    let mut added: BTreeMap<i64, i64> = BTreeMap::new();
    for (index, op) in ops.iter().enumerate() {
        let name = op.queue();
        let Some(Some(queue)) = queues.get(name) else {
            answers.push(Err(QueueOpError::QueueNotFound));
            continue;
        };
        let settings = &queue.settings;

        // The item an operation names, if it is in this queue.
        macro_rules! fetch_item {
            ($item:expr) => {{
                let row: Option<ItemRow> = conn
                    .row(
                        concat!(
                            "SELECT ",
                            item_columns!(),
                            " FROM queue_items WHERE id = $1 AND queue_id = $2"
                        ),
                        args![$item, queue.id],
                    )
                    .await?;
                match row {
                    Some(row) => Some(ItemRecord::try_from(row)?),
                    None => None,
                }
            }};
        }
        // The item of the queue that holds the unique reference `$reference`, if any.
        macro_rules! live_reference {
            ($reference:expr) => {{
                let existing: Option<(i64,)> = conn
                    .row(
                        "SELECT id FROM queue_items WHERE queue_id = $1 AND reference = $2 \
                     AND unique_reference = TRUE AND status <> 'deleted'",
                        args![queue.id, $reference],
                    )
                    .await?;
                existing.map(|(id,)| id)
            }};
        }
        // `Ok` if the item is held under `$digest`, or why not.
        macro_rules! held_item {
            ($item:expr, $digest:expr) => {{
                let row: Option<LeaseRow> = conn
                    .row(
                        "SELECT status, lease_digest, lease_expires_at FROM queue_items \
                     WHERE id = $1 AND queue_id = $2",
                        args![$item, queue.id],
                    )
                    .await?;
                match row {
                    None => Err(QueueOpError::ItemNotFound),
                    Some((status, _, _)) if status != "in_progress" => {
                        Err(QueueOpError::WrongStatus(status.parse().map_err(|_| {
                            StoreError::Corrupt(format!("queue item {}: status", $item))
                        })?))
                    }
                    Some((_, digest, expires))
                        if digest.as_deref() != Some($digest.as_str())
                            || expires.is_none_or(|expires| expires <= at) =>
                    {
                        Err(QueueOpError::StaleLease)
                    }
                    Some(_) => Ok(()),
                }
            }};
        }
        // Ends the attempt of a held item: the item to `$ending.status`.
        // Ends the attempt of the item held under `$digest`: the item to
        // `$ending.status` (a trigger closes its attempt row). Answers the item, or why
        // it is not held.
        macro_rules! end_attempt {
            ($item:expr, $digest:expr, $ending:expr) => {{
                let ending: Ending<'_> = $ending;
                let finished = ending.status.is_finished().then_some(at);
                let (kind, message) = match ending.error {
                    Some((kind, message)) => (Some(kind), Some(message)),
                    None => (None, None),
                };
                let row: Option<ItemRow> = conn.row(concat!(
                    "UPDATE queue_items SET status = $3, available_at = COALESCE($4, available_at), \
                     output = COALESCE($5, output), error_kind = $6, error_message = $7, \
                     lease_digest = NULL, lease_expires_at = NULL, finished_at = $8, updated_at = $9, \
                     last_outcome = $10 WHERE id = $1 AND queue_id = $2 AND status = 'in_progress' \
                     AND lease_digest = $11 AND lease_expires_at > $9 RETURNING ", item_columns!()
                ), args![$item, queue.id, ending.status.as_str(), ending.available_at.map(to_millis), ending.output, kind, message, finished, at, ending.outcome, $digest]).await?;
                match row {
                    Some(row) => Ok(QueueAnswer::Item(Box::new(ItemRecord::try_from(row)?))),
                    None => held_item!($item, $digest).and(Err(QueueOpError::StaleLease)),
                }
            }};
        }

        let answer = match op {
            QueueOp::Add { items, .. } => {
                let mut refused = None;
                let mut seen = std::collections::HashSet::new();
                for (index, item) in items.iter().enumerate() {
                    if u32::try_from(item.payload.len())
                        .map_or(true, |len| settings.max_payload_bytes < len)
                    {
                        refused = Some(QueueOpError::PayloadTooLarge {
                            index,
                            limit: settings.max_payload_bytes,
                        });
                        break;
                    }
                    if settings.enforce_unique_reference
                        && let Some(reference) = &item.reference
                    {
                        if !seen.insert(reference.as_str()) {
                            refused = Some(QueueOpError::RepeatedReference(reference.clone()));
                            break;
                        }
                        if let Some(existing) = live_reference!(reference) {
                            refused = Some(QueueOpError::DuplicateReference {
                                reference: reference.clone(),
                                existing,
                            });
                            break;
                        }
                    }
                }
                match refused {
                    Some(err) => Err(err),
                    None => {
                        // A savepoint confines a duplicate that another transaction
                        // committed since the check to this operation.
                        let unique = settings.enforce_unique_reference
                            && items.iter().any(|item| item.reference.is_some());
                        if unique {
                            conn.execute("SAVEPOINT queue_add", &[]).await?;
                        }
                        let mut ids = Vec::with_capacity(items.len());
                        let mut duplicate = false;
                        for chunk in items.chunks(INSERT_CHUNK) {
                            let sql = crate::batch::values_sql(
                                "INSERT INTO queue_items (queue_id, status, priority, reference, \
                                 unique_reference, payload, deadline, deadline_key, available_at, \
                                 created_at, updated_at)",
                                chunk.len(),
                                11,
                            ) + " RETURNING id";
                            let args: Vec<Arg<'_>> = chunk
                                .iter()
                                .flat_map(|item| {
                                    args![
                                        queue.id,
                                        "new",
                                        item.priority.rank(),
                                        &item.reference,
                                        settings.enforce_unique_reference
                                            && item.reference.is_some(),
                                        &item.payload,
                                        item.deadline.map(to_millis),
                                        item.deadline.map_or(i64::MAX, to_millis),
                                        item.postpone_until.map_or(at, to_millis),
                                        at,
                                        at,
                                    ]
                                    .to_owned()
                                })
                                .collect();
                            let inserted: StoreResult<Vec<(i64,)>> = conn.rows(&sql, &args).await;
                            match inserted {
                                Ok(chunk_ids) => {
                                    // Identities are assigned in the order of the rows.
                                    let mut chunk_ids: Vec<i64> =
                                        chunk_ids.into_iter().map(|(id,)| id).collect();
                                    chunk_ids.sort_unstable();
                                    ids.extend(chunk_ids);
                                }
                                Err(StoreError::Conflict) => {
                                    duplicate = true;
                                    break;
                                }
                                Err(err) => return Err(err),
                            }
                        }
                        if duplicate {
                            conn.execute("ROLLBACK TO SAVEPOINT queue_add", &[]).await?;
                            let mut found = None;
                            for reference in items.iter().filter_map(|item| item.reference.as_ref())
                            {
                                if let Some(existing) = live_reference!(reference) {
                                    found = Some(QueueOpError::DuplicateReference {
                                        reference: reference.clone(),
                                        existing,
                                    });
                                    break;
                                }
                            }
                            let err = found.ok_or_else(|| {
                                StoreError::Corrupt(
                                    "a unique reference clashed with no live item".to_owned(),
                                )
                            })?;
                            Err(err)
                        } else {
                            if unique {
                                conn.execute("RELEASE SAVEPOINT queue_add", &[]).await?;
                            }
                            *added.entry(queue.id).or_default() +=
                                i64::try_from(items.len()).unwrap_or(i64::MAX);
                            Ok(QueueAnswer::Added(ids))
                        }
                    }
                }
            }
            QueueOp::Claim { .. } if shared_claims => Ok(QueueAnswer::Claimed(
                claimed.remove(&index).unwrap_or_default(),
            )),
            QueueOp::Claim {
                lease_digest,
                claimer,
                count,
                ..
            } => {
                let rows: Vec<ItemRow> = conn
                    .rows(
                        claim_sql,
                        args![
                            lease_digest,
                            to_millis(settings.lease_until(now)),
                            &claimer.run_id,
                            &claimer.name,
                            at,
                            queue.id,
                            i64::from(*count)
                        ],
                    )
                    .await?;
                let mut items = rows
                    .into_iter()
                    .map(ItemRecord::try_from)
                    .collect::<StoreResult<Vec<_>>>()?;
                items.sort_unstable_by_key(|item| {
                    (
                        item.deadline.map_or(i64::MAX, to_millis),
                        item.priority.rank(),
                        item.id,
                    )
                });
                Ok(QueueAnswer::Claimed(items))
            }
            QueueOp::Extend {
                item, lease_digest, ..
            } => {
                let row: Option<ItemRow> = conn
                    .row(
                        concat!(
                            "UPDATE queue_items SET lease_expires_at = $3, updated_at = $4 \
                     WHERE id = $1 AND queue_id = $2 AND status = 'in_progress' \
                     AND lease_digest = $5 AND lease_expires_at > $4 RETURNING ",
                            item_columns!()
                        ),
                        args![
                            *item,
                            queue.id,
                            to_millis(settings.lease_until(now)),
                            at,
                            lease_digest
                        ],
                    )
                    .await?;
                match row {
                    Some(row) => Ok(QueueAnswer::Item(Box::new(row.try_into()?))),
                    None => held_item!(*item, lease_digest).and(Err(QueueOpError::StaleLease)),
                }
            }
            QueueOp::Complete {
                item,
                lease_digest,
                output,
                ..
            } => match completed.remove(item) {
                Some(record) => Ok(QueueAnswer::Item(Box::new(record))),
                None => end_attempt!(
                    *item,
                    lease_digest,
                    Ending {
                        status: ItemStatus::Successful,
                        available_at: None,
                        output: output.as_deref(),
                        error: None,
                        outcome: "successful",
                    }
                ),
            },
            QueueOp::CompleteMany { items, .. } => {
                let mut done = Vec::with_capacity(items.len());
                for completion in items {
                    if completed.remove(&completion.item).is_some() {
                        done.push(Ok(()));
                        continue;
                    }
                    let ended = end_attempt!(
                        completion.item,
                        &completion.lease_digest,
                        Ending {
                            status: ItemStatus::Successful,
                            available_at: None,
                            output: completion.output.as_deref(),
                            error: None,
                            outcome: "successful",
                        }
                    );
                    done.push(ended.map(drop));
                }
                Ok(QueueAnswer::Completed(done))
            }
            QueueOp::Fail {
                item,
                lease_digest,
                kind,
                message,
                ..
            } => {
                let attempts: Option<(i64,)> = conn
                    .row(
                        "SELECT attempts FROM queue_items WHERE id = $1 AND queue_id = $2",
                        args![*item, queue.id],
                    )
                    .await?;
                let attempts = attempts.map_or(0, |(n,)| u32::try_from(n).unwrap_or(u32::MAX));
                let (status, available_at, outcome) =
                    match after_failure(settings, *kind, attempts, now) {
                        AfterAttempt::Retry { at } => (ItemStatus::New, Some(at), "retried"),
                        AfterAttempt::Final(status) => (status, None, "failed"),
                    };
                end_attempt!(
                    *item,
                    lease_digest,
                    Ending {
                        status,
                        available_at,
                        output: None,
                        error: Some((kind.as_str(), message.as_str())),
                        outcome,
                    }
                )
            }
            QueueOp::Abandon {
                item,
                lease_digest,
                message,
                ..
            } => end_attempt!(
                *item,
                lease_digest,
                Ending {
                    status: ItemStatus::Abandoned,
                    available_at: None,
                    output: None,
                    error: message.as_deref().map(|message| ("abandoned", message)),
                    outcome: "abandoned",
                }
            ),
            QueueOp::Postpone {
                item,
                lease_digest: Some(lease_digest),
                until,
                ..
            } => end_attempt!(
                *item,
                lease_digest,
                Ending {
                    status: ItemStatus::New,
                    available_at: Some(*until),
                    output: None,
                    error: None,
                    outcome: "postponed",
                }
            ),
            QueueOp::Postpone {
                item,
                lease_digest: None,
                until,
                ..
            } => match fetch_item!(*item) {
                None => Err(QueueOpError::ItemNotFound),
                Some(found) if found.status != ItemStatus::New => {
                    Err(QueueOpError::WrongStatus(found.status))
                }
                Some(_) => {
                    let row: ItemRow = conn
                        .row(
                            concat!(
                                "UPDATE queue_items SET available_at = $3, updated_at = $4 \
                         WHERE id = $1 AND queue_id = $2 RETURNING ",
                                item_columns!()
                            ),
                            args![*item, queue.id, to_millis(*until), at],
                        )
                        .await?
                        .ok_or(StoreError::NotFound)?;
                    Ok(QueueAnswer::Item(Box::new(row.try_into()?)))
                }
            },
            QueueOp::Requeue { item, .. } => match fetch_item!(*item) {
                None => Err(QueueOpError::ItemNotFound),
                Some(found) if !found.status.can_requeue() => {
                    Err(QueueOpError::WrongStatus(found.status))
                }
                Some(found) => {
                    // A deleted item's unique reference may have been taken since.
                    let reference = found.reference.as_ref().filter(|_| {
                        found.status == ItemStatus::Deleted && settings.enforce_unique_reference
                    });
                    if let Some(reference) = reference
                        && let Some(existing) = live_reference!(reference)
                    {
                        answers.push(Err(QueueOpError::DuplicateReference {
                            reference: reference.clone(),
                            existing,
                        }));
                        continue;
                    }
                    let row: ItemRow = conn.row(concat!(
                        "UPDATE queue_items SET status = 'new', attempts = 0, available_at = $3, \
                         error_kind = NULL, error_message = NULL, finished_at = NULL, updated_at = $3 \
                         WHERE id = $1 AND queue_id = $2 RETURNING ", item_columns!()
                    ), args![*item, queue.id, at]).await?.ok_or(StoreError::NotFound)?;
                    Ok(QueueAnswer::Item(Box::new(row.try_into()?)))
                }
            },
            QueueOp::Delete { item, .. } => match fetch_item!(*item) {
                None => Err(QueueOpError::ItemNotFound),
                Some(found) if !found.status.can_delete() => {
                    Err(QueueOpError::WrongStatus(found.status))
                }
                Some(_) => {
                    let row: ItemRow = conn.row(concat!(
                        "UPDATE queue_items SET status = 'deleted', finished_at = $3, updated_at = $3 \
                         WHERE id = $1 AND queue_id = $2 RETURNING ", item_columns!()
                    ), args![*item, queue.id, at]).await?.ok_or(StoreError::NotFound)?;
                    Ok(QueueAnswer::Item(Box::new(row.try_into()?)))
                }
            },
        };
        answers.push(answer);
    }
    for (queue_id, count) in added {
        conn.execute(
            "INSERT INTO queue_counts (queue_id, status, count) VALUES ($1, 'new', $2) \
             ON CONFLICT (queue_id, status) DO UPDATE SET count = queue_counts.count + excluded.count",
            args![queue_id, count],
        ).await?;
    }
    let mut filled: Vec<&str> = ops
        .iter()
        .zip(&answers)
        .filter(|(op, answer)| op.fills() && answer.is_ok())
        .map(|(op, _)| op.queue())
        .collect();
    filled.sort_unstable();
    filled.dedup();
    for queue in filled {
        woken_triggers += conn
            .execute(
                crate::triggers::WAKE_QUEUE_TRIGGERS,
                args![queue, None::<&str>, at],
            )
            .await?;
    }
    let op_audit: Vec<crate::AuditRecord> = answers
        .iter()
        .enumerate()
        .filter_map(|(index, answer)| audit_of(index, answer))
        .collect();
    crate::audit::insert_audit_batch(conn, &op_audit).await?;
    crate::audit::insert_audit_batch(conn, audit).await?;
    Ok(AppliedOps {
        answers,
        woken_triggers,
    })
}

/// Rows read as items, by id.
fn by_id(rows: Vec<ItemRow>) -> StoreResult<HashMap<i64, ItemRecord>> {
    rows.into_iter()
        .map(|row| Ok((row.id, ItemRecord::try_from(row)?)))
        .collect()
}
