//! Group commit: requests from many handlers gathered into batches, each applied in one go
//! (one transaction, one fsync), every request answered with its own result.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

/// Requests waiting for a batch at most; submitters wait beyond.
const BACKLOG: usize = 8192;

/// Where the batch writers run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Writers {
    /// This many tasks on the current runtime.
    Tasks(usize),
    /// One writer on a thread of its own, for batches that block their thread while they run.
    Thread,
}

/// Submits requests of type `T` to batch writers and answers each with an `R`.
pub(crate) struct Batcher<T, R> {
    submit: mpsc::Sender<(T, oneshot::Sender<R>)>,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts `writers` that each take whatever requests wait, up to `max_batch`, and answer
    /// them with `apply`, which returns one result per request, in order; it learns whether
    /// more requests were waiting when the batch was taken. The writers end when the batcher
    /// is dropped.
    pub(crate) fn spawn<F, Fut>(writers: Writers, max_batch: usize, apply: F) -> Batcher<T, R>
    where
        F: Fn(Vec<T>, bool) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send,
    {
        let (submit, pending) = mpsc::channel::<(T, oneshot::Sender<R>)>(BACKLOG);
        let pending = Arc::new(Mutex::new(pending));
        let apply = Arc::new(apply);
        let writer = move || {
            let (pending, apply) = (pending.clone(), apply.clone());
            async move {
                let mut batch = Vec::with_capacity(max_batch);
                loop {
                    let more = {
                        let mut pending = pending.lock().await;
                        if pending.recv_many(&mut batch, max_batch).await == 0 {
                            return;
                        }
                        !pending.is_empty()
                    };
                    let (requests, replies): (Vec<T>, Vec<oneshot::Sender<R>>) =
                        batch.drain(..).unzip();
                    for (reply, result) in replies.into_iter().zip(apply(requests, more).await) {
                        let _ = reply.send(result);
                    }
                }
            }
        };
        match writers {
            Writers::Tasks(count) => {
                for _ in 0..count {
                    tokio::spawn(writer());
                }
            }
            Writers::Thread => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let started = runtime.and_then(|runtime| {
                    let writer = writer();
                    std::thread::Builder::new()
                        .name("batch-writer".to_owned())
                        .spawn(move || runtime.block_on(writer))
                });
                if let Err(err) = started {
                    tracing::error!(%err, "cannot start the batch writer's thread; it runs as a task");
                    tokio::spawn(writer());
                }
            }
        }
        Batcher { submit }
    }

    /// Submits one request and waits for its result; `None` once the writers are gone.
    pub(crate) async fn submit(&self, request: T) -> Option<R> {
        let (reply, result) = oneshot::channel();
        self.submit.send((request, reply)).await.ok()?;
        result.await.ok()
    }
}
