//! The one path of every change of work items: robots' operations and the audit records of
//! every request, gathered into batches that the store applies in one transaction each (one
//! fsync for many acknowledged writes); operators' bulk requeues and deletions; and the timer
//! that returns work items whose leases expired. Each wakes the queue triggers it concerns.
//!
//! **Architecture Invariant.** A write is answered only after the transaction that holds it
//! committed: an acknowledged add or complete, and the audit record of any request, survive a
//! crash.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use dirigent_store::{
    AppliedOps, AuditRecord, BackendKind, ItemFilter, QueueAnswer, QueueOp, QueueOpError, Store,
    StoreError, WriteSession,
};
use jiff::Timestamp;
use tokio::sync::Notify;

use crate::{
    Clock,
    api::queues::answer_status,
    batch::{Batcher, Writers},
    error::ApiError,
    scheduler::Scheduler,
};

/// Writes one transaction takes at most.
const MAX_BATCH: usize = 512;

/// Batches one writer applies in a row on the write connection it holds, at most, while more
/// writes wait; then it hands the connection back, so that other writers get their turn.
const HOLD_BATCHES: u32 = 8;

/// The outcome of a work-item operation.
pub type QueueReply = Result<Result<QueueAnswer, QueueOpError>, ApiError>;

/// The outcome of a write: the operation's answer, or nothing for an audit record.
type Written = Result<Option<Result<QueueAnswer, QueueOpError>>, ApiError>;

/// A write waiting for its batch.
enum Write {
    /// An operation, and the audit record of its request, whose outcome its answer decides.
    Queue(QueueOp, Option<AuditRecord>),
    Audit(AuditRecord),
}

/// The handle request handlers and the audit middleware write through.
pub struct Writer {
    batcher: Batcher<Write, Written>,
    store: Store,
    clock: Arc<dyn Clock>,
    scheduler: Arc<Scheduler>,
}

impl Writer {
    /// Starts the batch writers (on SQLite one, on a thread of its own: its writes are serial
    /// anyway, and each batch runs synchronously; on PostgreSQL several tasks) and the lease
    /// reaper. Operations that leave items ready wake the queue
    /// triggers of their queues.
    pub fn start(store: Store, clock: Arc<dyn Clock>, scheduler: Arc<Scheduler>) -> Arc<Writer> {
        // The lease expiry the reaper sleeps until (milliseconds; `i64::MAX` when none).
        let reaper_target = Arc::new(AtomicI64::new(i64::MAX));
        let reaper_wake = Arc::new(Notify::new());
        let writers = match store.backend_kind() {
            BackendKind::Sqlite => Writers::Thread,
            BackendKind::Postgres => Writers::Tasks(4),
        };
        let held = Arc::new(HeldSessions::default());
        let batcher = {
            let (store, clock) = (store.clone(), clock.clone());
            let (target, wake) = (reaper_target.clone(), reaper_wake.clone());
            let scheduler = scheduler.clone();
            Batcher::spawn(writers, MAX_BATCH, move |writes: Vec<Write>, more| {
                let (store, clock) = (store.clone(), clock.clone());
                let (target, wake) = (target.clone(), wake.clone());
                let (scheduler, held) = (scheduler.clone(), held.clone());
                async move {
                    scheduler.metrics().observe_write_batch(writes.len());
                    let (mut ops, mut op_audit, mut audit, mut is_op) =
                        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                    for write in writes {
                        is_op.push(matches!(write, Write::Queue(..)));
                        match write {
                            Write::Queue(op, record) => {
                                ops.push(op);
                                op_audit.push(record);
                            }
                            Write::Audit(record) => audit.push(record),
                        }
                    }
                    let now = clock.now();
                    let audit_of = |index: usize, answer: &_| {
                        let mut record: AuditRecord = op_audit.get_mut(index)?.take()?;
                        let status = answer_status(answer);
                        record.at = now;
                        record.outcome = crate::audit::outcome(status).to_owned();
                        record.status = status.as_u16();
                        Some(record)
                    };
                    let applied = match held.take(&store).await {
                        Ok((mut session, used)) => {
                            let applied = store
                                .apply_queue_ops(&mut session, &ops, &audit, audit_of, now)
                                .await;
                            if applied.is_ok() {
                                held.keep(session, used + 1, more);
                            }
                            applied
                        }
                        Err(err) => Err(err),
                    };
                    let AppliedOps {
                        answers,
                        woken_triggers,
                    } = match applied {
                        Ok(applied) => applied,
                        Err(err) => {
                            let err = ApiError::from(err);
                            return is_op.iter().map(|_| Err(err.clone())).collect();
                        }
                    };
                    let earliest_lease = answers
                        .iter()
                        .filter_map(|answer| match answer {
                            Ok(QueueAnswer::Claimed(items)) => {
                                items.first().and_then(|item| item.lease_expires_at)
                            }
                            _ => None,
                        })
                        .min();
                    if let Some(expiry) = earliest_lease
                        && expiry.as_millisecond() < target.load(Ordering::Relaxed)
                    {
                        wake.notify_one();
                    }
                    if 0 < woken_triggers {
                        scheduler.changed();
                    }
                    // Answers in the order of the writes.
                    let mut answers = answers.into_iter();
                    is_op
                        .into_iter()
                        .map(|is_op| Ok(if is_op { answers.next() } else { None }))
                        .collect()
                }
            })
        };
        let writer = Arc::new(Writer {
            batcher,
            store,
            clock,
            scheduler,
        });
        tokio::spawn(reap_leases(
            Arc::downgrade(&writer),
            reaper_target,
            reaper_wake,
        ));
        writer
    }

    /// Applies a work-item operation in the next batch, with the audit record of its request
    /// (if not written otherwise); answers once both are durable.
    pub async fn queue_op(&self, op: QueueOp, audit: Option<AuditRecord>) -> QueueReply {
        match self.batcher.submit(Write::Queue(op, audit)).await {
            Some(Ok(Some(answer))) => Ok(answer),
            Some(Ok(None)) => Err(ApiError::internal("an operation without its answer")),
            Some(Err(err)) => Err(err),
            None => Err(ApiError::internal("the writer stopped")),
        }
    }

    /// Appends an audit record in the next batch; answers once it is durable.
    pub async fn audit(&self, record: AuditRecord) -> Result<(), ApiError> {
        match self.batcher.submit(Write::Audit(record)).await {
            Some(written) => written.map(drop),
            None => Err(ApiError::internal("the writer stopped")),
        }
    }

    /// Puts the items of `queue` matching `filter` back to be claimed again (attempts reset);
    /// the queue's triggers look again. Answers how many.
    pub async fn requeue_items(&self, queue: &str, filter: &ItemFilter) -> Result<u64, ApiError> {
        let count = self
            .store
            .requeue_items(queue, filter, self.clock.now())
            .await?;
        self.scheduler.queues_filled(&[queue]).await?;
        Ok(count)
    }

    /// Deletes the items of `queue` matching `filter` that no robot holds; answers how many.
    pub async fn delete_items(&self, queue: &str, filter: &ItemFilter) -> Result<u64, ApiError> {
        Ok(self
            .store
            .delete_items(queue, filter, self.clock.now())
            .await?)
    }

    /// Returns the items whose leases expired by now to their queues; answers how many.
    pub async fn reap_expired(&self) -> Result<u64, ApiError> {
        let released = self.store.expire_leases(self.clock.now()).await?;
        if 0 < released {
            self.scheduler.some_queues_filled().await?;
        }
        Ok(released)
    }
}

/// Write connections kept between batches while more writes wait, each with how many batches
/// in a row it has applied.
#[derive(Default)]
struct HeldSessions(Mutex<Vec<(WriteSession, u32)>>);

impl HeldSessions {
    /// A kept connection, or a new one.
    async fn take(&self, store: &Store) -> Result<(WriteSession, u32), StoreError> {
        let kept = self.0.lock().unwrap_or_else(PoisonError::into_inner).pop();
        match kept {
            Some(kept) => Ok(kept),
            None => Ok((store.write_session().await?, 0)),
        }
    }

    /// Keeps a connection that applied `used` batches in a row for the next batch, when more
    /// writes wait and it may apply one more; else hands it back.
    fn keep(&self, session: WriteSession, used: u32, more: bool) {
        if more && used < HOLD_BATCHES {
            let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            kept.push((session, used));
        }
    }
}

/// Sleeps until the earliest lease expires (or an earlier one is granted), then returns the
/// expired items. No scan on a timer.
async fn reap_leases(service: std::sync::Weak<Writer>, target: Arc<AtomicI64>, wake: Arc<Notify>) {
    loop {
        let Some(writer) = service.upgrade() else {
            return;
        };
        let wait = match writer.store.next_lease_expiry().await {
            Ok(Some(expiry)) => {
                target.store(expiry.as_millisecond(), Ordering::Relaxed);
                until(expiry, writer.clock.now())
            }
            Ok(None) => {
                target.store(i64::MAX, Ordering::Relaxed);
                Duration::from_secs(3600)
            }
            Err(err) => {
                tracing::warn!(%err, "finding the next lease expiry");
                Duration::from_secs(5)
            }
        };
        drop(writer);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wake.notified() => continue,
        }
        let Some(writer) = service.upgrade() else {
            return;
        };
        match writer.reap_expired().await {
            Ok(0) => {}
            Ok(n_released) => tracing::info!(n_released, "returned items whose leases expired"),
            Err(err) => tracing::warn!(?err, "returning items whose leases expired"),
        }
    }
}

fn until(at: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}
