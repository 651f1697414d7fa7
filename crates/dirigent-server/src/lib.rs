//! The Dirigent orchestrator: `dirigent serve` in a library.
//!
//! [`start`] opens the store, makes sure an administrator exists, binds the listener and
//! serves the HTTP API until [`RunningServer::shutdown`]. The binary only turns its flags and
//! config file into a [`ServerConfig`] and prints what [`start`] reports.
//!
//! Code map: `api/` holds the routes of `/api/v1` (thin: parse, authorize, call the store,
//! render), `ui/` the control panel's pages, `auth/` who the caller is and what they may do, `http` the cross-cutting
//! middleware (request ids, error bodies, size limits), `error` the one error type every route
//! answers with.

pub mod activities;
pub mod api;
pub mod audit;
pub mod auth;
mod batch;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod error;
pub mod fleet;
mod http;
mod janitor;
mod logs;
pub mod metrics;
pub mod scheduler;
pub mod tls;
pub mod ui;
pub mod writer;

pub use http::app;

use std::{net::SocketAddr, sync::Arc};

use dirigent_store::{Store, StoreError};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

pub use crate::{clock::Clock, config::ServerConfig};

/// What every request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub fleet: Arc<fleet::Fleet>,
    pub writer: Arc<writer::Writer>,
    pub scheduler: Arc<scheduler::Scheduler>,
    pub credentials: Arc<auth::cache::CredentialCache>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<ServerConfig>,
    /// Who watches which graphical session, for the audit log.
    pub watchers: Arc<api::sessions::Watchers>,
    pub activities: Arc<activities::Activities>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("database {url}: {source}")]
    Store { url: String, source: StoreError },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot create the first administrator: {0}")]
    Bootstrap(String),
    #[error("joining the other nodes: {0}")]
    Cluster(String),
}

/// A server that is accepting connections.
pub struct RunningServer {
    local_addr: SocketAddr,
    generated_admin_password: Option<String>,
    store: Store,
    stop: oneshot::Sender<()>,
    serving: JoinHandle<std::io::Result<()>>,
    fleet: Arc<fleet::Fleet>,
    cluster: Arc<cluster::Cluster>,
    /// The janitor and the cluster's loops.
    background: Vec<JoinHandle<()>>,
}

/// Opens the database (applying migrations), creates the `admin` user on an empty database,
/// binds the listener and starts serving.
pub async fn start(
    config: ServerConfig,
    clock: Arc<dyn Clock>,
) -> Result<RunningServer, StartError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(files.server_config().map_err(StartError::Tls)?)),
        None => None,
    };
    let store = Store::open(config.database_url.expose())
        .await
        .map_err(|source| StartError::Store {
            url: config.database_url.to_string(),
            source,
        })?;
    let generated_admin_password =
        auth::bootstrap_admin(&store, config.admin_password.as_ref(), clock.now()).await?;

    let cluster_error = |err| match err {
        cluster::ClusterError::Store(source) => StartError::Store {
            url: config.database_url.to_string(),
            source,
        },
        other => StartError::Cluster(other.to_string()),
    };
    cluster::Cluster::claim_id(&store, clock.as_ref(), &config.cluster)
        .await
        .map_err(cluster_error)?;
    let fleet = fleet::Fleet::new(
        store.clone(),
        clock.clone(),
        config.fleet,
        config.cluster.node_id.clone(),
    );
    let credentials = auth::cache::CredentialCache::following_runs(&fleet);
    let scheduler = scheduler::Scheduler::start(store.clone(), fleet.clone(), clock.clone());
    let (cluster, mut background) = cluster::Cluster::join(
        store.clone(),
        fleet.clone(),
        scheduler.clone(),
        clock.clone(),
        config.cluster.clone(),
    )
    .await
    .map_err(cluster_error)?;
    fleet
        .recover()
        .await
        .map_err(|err| StartError::Bootstrap(format!("recovering runs: {err}")))?;
    fleet
        .recover_activities()
        .await
        .map_err(|err| StartError::Bootstrap(format!("recovering activities: {err}")))?;
    let activities = Arc::new(activities::Activities::new(clock.now()));
    background.push(activities::spawn_timer(
        fleet.clone(),
        clock.clone(),
        activities.clone(),
    ));
    background.push(janitor::spawn(
        store.clone(),
        clock.clone(),
        cluster.clone(),
        config.retention,
    ));
    let config_listen = config.listen;
    let state = AppState {
        store: store.clone(),
        fleet: fleet.clone(),
        writer: writer::Writer::start(store.clone(), clock.clone(), scheduler.clone()),
        scheduler,
        credentials,
        clock,
        config: Arc::new(config),
        watchers: Arc::default(),
        activities,
    };
    let app = http::app(state);
    let (stop, stopped) = oneshot::channel::<()>();
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    let until_stopped = async move {
        let _ = stopped.await;
    };
    let serving = match tls {
        Some(tls) => {
            let listener =
                tls::TlsListener::new(listener, tls).map_err(|source| StartError::Listen {
                    addr: config_listen,
                    source,
                })?;
            // A no-op tap: it lends the listener axum's connect-info support.
            let listener = axum::serve::ListenerExt::tap_io(listener, |_| {});
            tokio::spawn(
                axum::serve(listener, service)
                    .with_graceful_shutdown(until_stopped)
                    .into_future(),
            )
        }
        None => {
            // Agent frames and API answers are small: no Nagle delay on any connection.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            tokio::spawn(
                axum::serve(listener, service)
                    .with_graceful_shutdown(until_stopped)
                    .into_future(),
            )
        }
    };
    tracing::info!(%local_addr, backend = ?store.backend_kind(), node = cluster.node_id(), "serving");
    Ok(RunningServer {
        local_addr,
        generated_admin_password,
        store,
        stop,
        serving,
        fleet,
        cluster,
        background,
    })
}

impl RunningServer {
    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The password generated for `admin` on an empty database; to be shown once.
    pub fn generated_admin_password(&self) -> Option<&str> {
        self.generated_admin_password.as_deref()
    }

    /// Keeps this node's own log records (`tracing` events the program captures) in the log
    /// store, as they come.
    pub fn keep_own_logs(&mut self, own: tokio::sync::mpsc::Receiver<dirigent_proto::log::OwnLog>) {
        self.background
            .push(tokio::spawn(logs::keep_own_logs(self.fleet.clone(), own)));
    }

    /// Gives the agent `name` this credential, enrolling it if needed: the built-in local
    /// agent's enrollment.
    pub async fn provision_agent(&self, name: &str, credential: &str) -> Result<(), StoreError> {
        #[allow(
            clippy::disallowed_methods,
            reason = "a creation time, outside any rule"
        )]
        let now = clock::SystemClock.now();
        self.store
            .upsert_agent_credential(name, &auth::secrets::token_digest(credential), now)
            .await
    }

    /// The runs placed on the agent `agent` that have not ended.
    pub async fn active_runs_on(
        &self,
        agent: &str,
    ) -> Result<Vec<dirigent_domain::run::Run>, StoreError> {
        let active = self.store.active_runs().await?;
        Ok(active
            .into_iter()
            .filter(|run| run.state.holds_agent() && run.agent.as_deref() == Some(agent))
            .collect())
    }

    /// Safe-stops the runs on the agent `agent` (without taking their robots out of auto
    /// mode) and waits until they end, each within its grace period and a few seconds more;
    /// answers how many ended.
    pub async fn stop_runs_on(&self, agent: &str) -> Result<usize, fleet::FleetError> {
        let runs = self.active_runs_on(agent).await?;
        let cause = || fleet::Cause::Rule("shutdown");
        for run in &runs {
            let stop = dirigent_domain::run::Operation::Stop;
            if let Err(err) = self.fleet.operate(&run.id, stop, cause()).await {
                tracing::warn!(run = run.id, %err, "stopping a run at shutdown");
            }
        }
        let mut ended = 0;
        for run in &runs {
            let grace = match self.store.robot(&run.robot).await {
                Ok(robot) => u64::from(robot.definition.stop_grace_seconds),
                Err(_) => 30,
            };
            let waited = std::time::Duration::from_secs(grace + 5);
            if self
                .fleet
                .wait_for(&run.id, &[], waited)
                .await?
                .state
                .is_final()
            {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Stops accepting connections, lets requests in flight finish, leaves the cluster (so
    /// that another node takes over at once), closes the database.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.stop.send(());
        for task in &self.background {
            task.abort();
        }
        let served = self
            .serving
            .await
            .unwrap_or_else(|err| Err(std::io::Error::other(err)));
        self.cluster.leave().await;
        self.store.close().await;
        served
    }
}

/// Locks a mutex; one poisoned by a panic elsewhere is still used (its data stays consistent:
/// no code here panics halfway through a change).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
