//! The queue service: robots' item operations gathered into batches that the store applies in
//! one transaction each (one fsync for many acknowledged operations), and the timer that
//! returns items whose leases expired.
//!
//! **Architecture Invariant.** An operation is answered only after the transaction that holds
//! it committed: an acknowledged add or complete survives a crash.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use dirigent_store::{BackendKind, QueueAnswer, QueueOp, QueueOpError, Store};
use jiff::Timestamp;
use tokio::sync::Notify;

use crate::{Clock, batch::Batcher, error::ApiError};

/// Operations one transaction takes at most.
const MAX_BATCH: usize = 512;

type Reply = Result<Result<QueueAnswer, QueueOpError>, ApiError>;

/// The handle request handlers submit operations through.
pub struct Queues {
    batcher: Batcher<QueueOp, Reply>,
    store: Store,
    clock: Arc<dyn Clock>,
}

impl Queues {
    /// Starts the batch writers (one on SQLite, whose writes are serial anyway; several on
    /// PostgreSQL) and the lease reaper.
    pub fn start(store: Store, clock: Arc<dyn Clock>) -> Arc<Queues> {
        // The lease expiry the reaper sleeps until (milliseconds; `i64::MAX` when none).
        let reaper_target = Arc::new(AtomicI64::new(i64::MAX));
        let reaper_wake = Arc::new(Notify::new());
        let writers = match store.backend_kind() {
            BackendKind::Sqlite => 1,
            BackendKind::Postgres => 4,
        };
        let batcher = {
            let (store, clock) = (store.clone(), clock.clone());
            let (target, wake) = (reaper_target.clone(), reaper_wake.clone());
            Batcher::spawn(writers, MAX_BATCH, move |ops: Vec<QueueOp>| {
                let (store, clock) = (store.clone(), clock.clone());
                let (target, wake) = (target.clone(), wake.clone());
                async move {
                    let answers = match store.apply_queue_ops(&ops, clock.now()).await {
                        Ok(answers) => answers,
                        Err(err) => {
                            let err = ApiError::from(err);
                            return ops.iter().map(|_| Err(err.clone())).collect();
                        }
                    };
                    let earliest_lease = answers
                        .iter()
                        .filter_map(|answer| match answer {
                            Ok(QueueAnswer::Claimed(Some(item))) => item.lease_expires_at,
                            _ => None,
                        })
                        .min();
                    if let Some(expiry) = earliest_lease
                        && expiry.as_millisecond() < target.load(Ordering::Relaxed)
                    {
                        wake.notify_one();
                    }
                    answers.into_iter().map(Ok).collect()
                }
            })
        };
        let queues = Arc::new(Queues {
            batcher,
            store,
            clock,
        });
        tokio::spawn(reap_leases(
            Arc::downgrade(&queues),
            reaper_target,
            reaper_wake,
        ));
        queues
    }

    /// Applies `op` in the next batch; answers once it is durable.
    pub async fn apply(&self, op: QueueOp) -> Reply {
        self.batcher
            .submit(op)
            .await
            .unwrap_or_else(|| Err(ApiError::internal("the queue service stopped")))
    }

    /// Returns the items whose leases expired by now to their queues; answers how many.
    pub async fn reap_expired(&self) -> Result<u64, ApiError> {
        Ok(self.store.expire_leases(self.clock.now()).await?)
    }
}

/// Sleeps until the earliest lease expires (or an earlier one is granted), then returns the
/// expired items. No scan on a timer.
async fn reap_leases(service: std::sync::Weak<Queues>, target: Arc<AtomicI64>, wake: Arc<Notify>) {
    loop {
        let Some(queues) = service.upgrade() else {
            return;
        };
        let wait = match queues.store.next_lease_expiry().await {
            Ok(Some(expiry)) => {
                target.store(expiry.as_millisecond(), Ordering::Relaxed);
                until(expiry, queues.clock.now())
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
        drop(queues);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wake.notified() => continue,
        }
        let Some(queues) = service.upgrade() else {
            return;
        };
        match queues.reap_expired().await {
            Ok(0) => {}
            Ok(n_released) => tracing::info!(n_released, "returned items whose leases expired"),
            Err(err) => tracing::warn!(?err, "returning items whose leases expired"),
        }
    }
}

fn until(at: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}
