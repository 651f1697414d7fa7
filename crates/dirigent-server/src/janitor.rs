//! The janitor: ages out finished data on a timer: expired login sessions (already refused,
//! but whose rows would otherwise stay), failed logins a day old, files uploaded for
//! activities a week old, and finished work items past their queue's retention.
//! With several nodes, only the one holding the singleton duties does it.

use std::{sync::Arc, time::Duration};

use dirigent_store::Store;
use tokio::task::JoinHandle;

use crate::{Clock, cluster::Cluster};

const EVERY: Duration = Duration::from_secs(3600);

/// Starts the janitor; it runs until the handle is aborted.
pub(crate) fn spawn(store: Store, clock: Arc<dyn Clock>, cluster: Arc<Cluster>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(EVERY);
        loop {
            ticks.tick().await;
            if !cluster.is_leading() {
                continue;
            }
            match store.delete_expired_sessions(clock.now()).await {
                Ok(0) => {}
                Ok(n_deleted) => tracing::info!(n_deleted, "deleted expired sessions"),
                Err(err) => tracing::warn!(%err, "deleting expired sessions"),
            }
            match crate::auth::throttle::forget_old(&store, clock.now()).await {
                Ok(0) => {}
                Ok(n_deleted) => tracing::info!(n_deleted, "forgot old failed logins"),
                Err(err) => tracing::warn!(%err, "forgetting old failed logins"),
            }
            match store
                .delete_blobs_before(clock.now() - jiff::SignedDuration::from_hours(24 * 7))
                .await
            {
                Ok(0) => {}
                Ok(n_deleted) => tracing::info!(n_deleted, "forgot uploaded files a week old"),
                Err(err) => tracing::warn!(%err, "forgetting uploaded files"),
            }
            match store.purge_finished_items(clock.now()).await {
                Ok(0) => {}
                Ok(n_deleted) => tracing::info!(
                    n_deleted,
                    "removed finished work items past their retention"
                ),
                Err(err) => tracing::warn!(%err, "removing finished work items"),
            }
        }
    })
}
