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
use tokio::sync::{Mutex, Notify, mpsc, oneshot};

use crate::{Clock, error::ApiError};

/// Operations one transaction takes at most.
const MAX_BATCH: usize = 512;
/// Operations waiting for a transaction at most; senders wait beyond.
const BACKLOG: usize = 8192;

type Reply = Result<Result<QueueAnswer, QueueOpError>, ApiError>;

struct Pending {
    op: QueueOp,
    reply: oneshot::Sender<Reply>,
}

/// The handle request handlers submit operations through.
pub struct Queues {
    submit: mpsc::Sender<Pending>,
    store: Store,
    clock: Arc<dyn Clock>,
    /// The lease expiry the reaper sleeps until (milliseconds; `i64::MAX` when none).
    reaper_target: Arc<AtomicI64>,
    reaper_wake: Arc<Notify>,
}

impl Queues {
    /// Starts the batch writers (one on SQLite, whose writes are serial anyway; several on
    /// PostgreSQL) and the lease reaper.
    pub fn start(store: Store, clock: Arc<dyn Clock>) -> Arc<Queues> {
        let (submit, pending) = mpsc::channel(BACKLOG);
        let pending = Arc::new(Mutex::new(pending));
        let queues = Arc::new(Queues {
            submit,
            store: store.clone(),
            clock: clock.clone(),
            reaper_target: Arc::new(AtomicI64::new(i64::MAX)),
            reaper_wake: Arc::new(Notify::new()),
        });
        let writers = match store.backend_kind() {
            BackendKind::Sqlite => 1,
            BackendKind::Postgres => 4,
        };
        for _ in 0..writers {
            tokio::spawn(write_batches(
                pending.clone(),
                store.clone(),
                clock.clone(),
                queues.reaper_target.clone(),
                queues.reaper_wake.clone(),
            ));
        }
        tokio::spawn(reap_leases(
            Arc::downgrade(&queues),
            queues.reaper_target.clone(),
            queues.reaper_wake.clone(),
        ));
        queues
    }

    /// Applies `op` in the next batch; answers once it is durable.
    pub async fn apply(&self, op: QueueOp) -> Reply {
        let (reply, answer) = oneshot::channel();
        let stopped = || ApiError::internal("the queue service stopped");
        self.submit
            .send(Pending { op, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Returns the items whose leases expired by now to their queues; answers how many.
    pub async fn reap_expired(&self) -> Result<u64, ApiError> {
        Ok(self.store.expire_leases(self.clock.now()).await?)
    }
}

/// Takes whatever operations are waiting, up to a batch, applies them in one transaction and
/// answers each.
async fn write_batches(
    pending: Arc<Mutex<mpsc::Receiver<Pending>>>,
    store: Store,
    clock: Arc<dyn Clock>,
    reaper_target: Arc<AtomicI64>,
    reaper_wake: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut pending = pending.lock().await;
            if pending.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
        }
        let (ops, replies): (Vec<QueueOp>, Vec<oneshot::Sender<Reply>>) = batch
            .drain(..)
            .map(|pending| (pending.op, pending.reply))
            .unzip();
        match store.apply_queue_ops(&ops, clock.now()).await {
            Ok(answers) => {
                let earliest_lease = answers
                    .iter()
                    .filter_map(|answer| match answer {
                        Ok(QueueAnswer::Claimed(Some(item))) => item.lease_expires_at,
                        _ => None,
                    })
                    .min();
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
                if let Some(expiry) = earliest_lease
                    && expiry.as_millisecond() < reaper_target.load(Ordering::Relaxed)
                {
                    reaper_wake.notify_one();
                }
            }
            Err(err) => {
                let err = ApiError::from(err);
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
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
