//! The janitor: ages out finished data on a timer: expired login sessions (already refused,
//! but whose rows would otherwise stay), failed logins a day old, files uploaded for
//! activities a week old, finished work items past their queue's retention, and whatever the
//! retention settings say is old (runs, output over its size, firings, attempts, activities,
//! the audit log).
//! With several nodes, only the one holding the singleton duties does it.

use std::{sync::Arc, time::Duration};

use dirigent_store::Store;
use tokio::task::JoinHandle;

use dirigent_proto::retention::Deleted;

use crate::{Clock, cluster::Cluster, config::Retention};

/// The switch that keeps the last sweep, for the figures (`GET /api/v1/retention`).
pub(crate) const LAST_SWEEP: &str = "retention.last_sweep";

/// Deletes what the retention settings say is old, and notes when and what.
pub(crate) async fn sweep(
    store: &Store,
    clock: &dyn Clock,
    retention: &Retention,
) -> Result<Deleted, dirigent_store::StoreError> {
    let now = clock.now();
    let pruned = store.prune(&retention.cutoffs(now)).await?;
    let deleted = Deleted {
        runs: pruned.runs,
        run_outputs: pruned.outputs,
        trigger_firings: pruned.trigger_firings,
        work_item_attempts: pruned.work_item_attempts,
        activities: pruned.activities,
        audit_records: pruned.audit,
        agent_log_records: pruned.agent_logs,
        server_log_records: pruned.server_logs,
        activity_output_lines: pruned.activity_output,
    };
    let noted = serde_json::to_string(&deleted).unwrap_or_default();
    store
        .set_switch(LAST_SWEEP, Some(&noted), "janitor", now)
        .await?;
    Ok(deleted)
}

const EVERY: Duration = Duration::from_secs(3600);

/// Starts the janitor; it runs until the handle is aborted.
pub(crate) fn spawn(
    store: Store,
    clock: Arc<dyn Clock>,
    cluster: Arc<Cluster>,
    retention: Retention,
) -> JoinHandle<()> {
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
            match sweep(&store, clock.as_ref(), &retention).await {
                Ok(deleted) => tracing::info!(?deleted, "retention"),
                Err(err) => tracing::warn!(%err, "retention"),
            }
        }
    })
}
