//! The janitor: ages out finished data on a timer (today: expired login sessions, which are
//! already refused, but whose rows would otherwise stay).

use std::{sync::Arc, time::Duration};

use dirigent_store::Store;
use tokio::task::JoinHandle;

use crate::Clock;

const EVERY: Duration = Duration::from_secs(3600);

/// Starts the janitor; it runs until the handle is aborted.
pub(crate) fn spawn(store: Store, clock: Arc<dyn Clock>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(EVERY);
        loop {
            ticks.tick().await;
            match store.delete_expired_sessions(clock.now()).await {
                Ok(0) => {}
                Ok(n_deleted) => tracing::info!(n_deleted, "deleted expired sessions"),
                Err(err) => tracing::warn!(%err, "deleting expired sessions"),
            }
        }
    })
}
