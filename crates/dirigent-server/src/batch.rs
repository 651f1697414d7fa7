//! Group commit: requests from many handlers gathered into batches, each applied in one go
//! (one transaction, one fsync), every request answered with its own result.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

/// Requests waiting for a batch at most; submitters wait beyond.
const BACKLOG: usize = 8192;

/// Submits requests of type `T` to batch writers and answers each with an `R`.
pub(crate) struct Batcher<T, R> {
    submit: mpsc::Sender<(T, oneshot::Sender<R>)>,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts `writers` tasks that each take whatever requests wait, up to `max_batch`, and
    /// answer them with `apply`, which returns one result per request, in order; it learns
    /// whether more requests were waiting when the batch was taken. The tasks end when the
    /// batcher is dropped.
    pub(crate) fn spawn<F, Fut>(writers: usize, max_batch: usize, apply: F) -> Batcher<T, R>
    where
        F: Fn(Vec<T>, bool) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send,
    {
        let (submit, pending) = mpsc::channel::<(T, oneshot::Sender<R>)>(BACKLOG);
        let pending = Arc::new(Mutex::new(pending));
        let apply = Arc::new(apply);
        for _ in 0..writers {
            let (pending, apply) = (pending.clone(), apply.clone());
            tokio::spawn(async move {
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
            });
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
