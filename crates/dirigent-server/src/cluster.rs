//! Several `dirigent serve` nodes on one database behave as one orchestrator.
//!
//! Each node has a stable id and writes a heartbeat; the work that must happen once — marking
//! the agents of dead nodes offline, the runs of silent agents lost, starting the firings a
//! dead node took, returning expired work-item leases, the janitor — runs on the node that
//! holds the `singletons` lease, renewed at every heartbeat; when that node dies, another takes
//! the lease within `takeover_after`. On PostgreSQL the nodes wake each other through
//! `LISTEN/NOTIFY`: the store notifies at commit when an agent has new commands (the node that
//! holds its connection sends them), and the relay here carries each node's fleet events (run
//! changes, output, agents) to the others' live views. The database stays the truth: a
//! notification only says where to read.
//!
//! On SQLite one node is alone with its database; the same loop runs and always holds the
//! lease, and nothing is relayed.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use dirigent_domain::agent::AgentId;
use dirigent_store::{COMMANDS_CHANNEL, Store};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    Clock,
    fleet::{Fleet, FleetEvent},
    scheduler::Scheduler,
};

/// The channel of relayed fleet events.
const EVENTS_CHANNEL: &str = "dirigent_fleet_events";
/// The lease of the singleton duties.
pub(crate) const SINGLETONS: &str = "singletons";
/// The most events relayed in one statement.
const RELAY_BATCH: usize = 512;

/// How this node takes part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node's stable id (by default the host name and the data directory).
    pub node_id: String,
    /// A node silent this long is dead: another takes over its duties and its agents.
    pub takeover_after: Duration,
}

impl ClusterSettings {
    pub const DEFAULT_TAKEOVER_AFTER: Duration = Duration::from_secs(10);

    /// The heartbeat interval: several heartbeats fit in the takeover delay.
    fn heartbeat(&self) -> Duration {
        (self.takeover_after / 5).max(Duration::from_millis(100))
    }
}

/// Why a node could not join.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Store(#[from] dirigent_store::StoreError),
    #[error(
        "another running node has the id {0:?}: give each node its own (--node-id, or node_id in the settings file)"
    )]
    IdInUse(String),
}

/// The last heartbeat of the node `id`, if it is known.
async fn beat_of(store: &Store, id: &str) -> Result<Option<Timestamp>, ClusterError> {
    let nodes = store.nodes().await?;
    Ok(nodes
        .into_iter()
        .find(|node| node.id == id)
        .map(|node| node.heartbeat_at))
}

/// This node's part in the cluster.
pub struct Cluster {
    store: Store,
    fleet: Arc<Fleet>,
    scheduler: Arc<Scheduler>,
    clock: Arc<dyn Clock>,
    settings: ClusterSettings,
    started_at: Timestamp,
    leading: AtomicBool,
}

impl Cluster {
    /// Makes sure no other running node has this node's id, before the node does anything:
    /// while the id still beats, waits one takeover delay for it to stop (this node's own
    /// earlier life, killed moments ago), and refuses when it goes on. Alone with an SQLite
    /// database, a node has no one to share its id with.
    pub async fn claim_id(
        store: &Store,
        clock: &dyn Clock,
        settings: &ClusterSettings,
    ) -> Result<(), ClusterError> {
        if store.backend_kind() != dirigent_store::BackendKind::Postgres {
            return Ok(());
        }
        let Some(earlier) = beat_of(store, &settings.node_id).await? else {
            return Ok(());
        };
        let age = clock.now().duration_since(earlier).unsigned_abs();
        if settings.takeover_after <= age {
            return Ok(());
        }
        tracing::warn!(
            node = settings.node_id,
            "a node with this id beat {} ms ago: waiting for it to stop",
            age.as_millis()
        );
        tokio::time::sleep(settings.takeover_after - age + settings.heartbeat()).await;
        if beat_of(store, &settings.node_id).await? != Some(earlier) {
            return Err(ClusterError::IdInUse(settings.node_id.clone()));
        }
        Ok(())
    }

    /// Writes the first heartbeat and starts the heartbeat loop and (on PostgreSQL) the relay.
    pub async fn join(
        store: Store,
        fleet: Arc<Fleet>,
        scheduler: Arc<Scheduler>,
        clock: Arc<dyn Clock>,
        settings: ClusterSettings,
    ) -> Result<(Arc<Cluster>, Vec<JoinHandle<()>>), ClusterError> {
        let started_at = clock.now();
        store
            .node_heartbeat(
                &settings.node_id,
                env!("CARGO_PKG_VERSION"),
                started_at,
                started_at,
            )
            .await?;
        let cluster = Arc::new(Cluster {
            store: store.clone(),
            fleet: fleet.clone(),
            scheduler,
            clock,
            settings,
            started_at,
            leading: AtomicBool::new(false),
        });
        let mut tasks = vec![tokio::spawn(Arc::clone(&cluster).beat())];
        if let Some(listener) = store.listen(&[EVENTS_CHANNEL, COMMANDS_CHANNEL]).await? {
            let (relay, relayed) = mpsc::unbounded_channel();
            fleet.relay_to(relay);
            tasks.push(tokio::spawn(relay_events(
                store.clone(),
                cluster.settings.node_id.clone(),
                relayed,
            )));
            tasks.push(tokio::spawn(Arc::clone(&cluster).listen(listener)));
        }
        Ok((cluster, tasks))
    }

    /// Whether this node holds the singleton duties now.
    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.settings.node_id
    }

    /// Leaves the cluster at a clean stop: the lease is given up and the node forgotten, so
    /// that another node takes over at once.
    pub async fn leave(&self) {
        let node = &self.settings.node_id;
        let _ = self.store.release_lease(SINGLETONS, node).await;
        let _ = self.store.remove_node(node).await;
    }

    /// The heartbeat loop: the node's heartbeat, the lease, and when held the duties.
    async fn beat(self: Arc<Cluster>) {
        let mut ticks = tokio::time::interval(self.settings.heartbeat());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = self.clock.now();
            let node = &self.settings.node_id;
            if let Err(err) = self
                .store
                .node_heartbeat(node, env!("CARGO_PKG_VERSION"), self.started_at, now)
                .await
            {
                tracing::warn!(%err, "writing this node's heartbeat");
            }
            let until = now.checked_add(self.settings.takeover_after).unwrap_or(now);
            let leading = match self.store.take_lease(SINGLETONS, node, now, until).await {
                Ok(leading) => leading,
                Err(err) => {
                    tracing::warn!(%err, "renewing the singleton lease");
                    false
                }
            };
            if leading != self.leading.swap(leading, Ordering::Relaxed) {
                tracing::info!(node, leading, "singleton duties changed hands");
            }
            if leading {
                self.do_duties(now).await;
            }
        }
    }

    /// The work one node at a time does.
    async fn do_duties(&self, now: Timestamp) {
        let dead_before = now - self.settings.takeover_after;
        match self
            .store
            .disconnect_agents_of_dead_nodes(dead_before)
            .await
        {
            Ok(names) => {
                for name in names {
                    tracing::info!(agent = name, "its node stopped: the agent is offline");
                    self.fleet.agent_changed(&name);
                }
            }
            Err(err) => tracing::warn!(%err, "disconnecting the agents of dead nodes"),
        }
        match self.fleet.mark_silent_runs_lost().await {
            Ok(0) => {}
            Ok(n_lost) => tracing::warn!(n_lost, "runs of silent agents marked lost"),
            Err(err) => tracing::warn!(%err, "marking the runs of silent agents lost"),
        }
        if let Err(err) = self.scheduler.resume_unsettled(dead_before, None).await {
            tracing::warn!(?err, "starting the firings of dead nodes");
        }
    }

    /// Applies what other nodes say: commands to send to agents connected here, and events
    /// for this node's live views.
    async fn listen(self: Arc<Cluster>, mut listener: dirigent_store::Listener) {
        loop {
            match listener.recv().await {
                Ok(Some((channel, payload))) if channel == COMMANDS_CHANNEL => {
                    let Some((agent, command)) = payload.split_once(':') else {
                        continue;
                    };
                    let (Ok(agent), Ok(command)) = (agent.parse(), command.parse()) else {
                        continue;
                    };
                    if let Err(err) = self.fleet.deliver(AgentId(agent), command).await {
                        tracing::warn!(%err, "sending commands queued by another node");
                    }
                }
                Ok(Some((_, payload))) => match serde_json::from_str::<Relayed>(&payload) {
                    Ok(relayed) if relayed.node != self.settings.node_id => {
                        self.replay(relayed).await;
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(%err, "ignoring an unreadable relayed event"),
                },
                // The connection was lost and made again: what was said meanwhile is lost,
                // so send every connected agent what it is owed.
                Ok(None) => self.fleet.deliver_all().await,
                Err(err) => {
                    tracing::warn!(%err, "listening to the other nodes");
                    tokio::time::sleep(self.settings.heartbeat()).await;
                }
            }
        }
    }

    /// Publishes here what another node published, read back from the database.
    async fn replay(&self, relayed: Relayed) {
        let event = match relayed.what {
            What::Run { id } => match self.store.run(&id).await {
                Ok(run) => FleetEvent::Run(Box::new(run)),
                Err(err) => return tracing::debug!(%err, run = id, "a relayed run"),
            },
            What::Agent { name } => FleetEvent::Agent { name },
            What::Triggers => {
                self.scheduler.changed();
                FleetEvent::Triggers
            }
            What::Activity { id, output } => FleetEvent::Activity { id, output },
            What::Logged => FleetEvent::Logged,
            What::Output { run_id, after_seq } => {
                let output = dirigent_store::OutputOf::Run(&run_id);
                match self.store.output(output, after_seq, 10_000).await {
                    Ok(lines) if !lines.is_empty() => FleetEvent::Output {
                        run_id,
                        lines: Arc::new(lines),
                    },
                    Ok(_) => return,
                    Err(err) => return tracing::debug!(%err, run = run_id, "relayed output"),
                }
            }
        };
        self.fleet.publish_local(event);
    }
}

/// A fleet event as relayed: which node, and where to read what changed.
#[derive(Debug, Serialize, Deserialize)]
struct Relayed {
    node: String,
    #[serde(flatten)]
    what: What,
}

#[derive(Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum What {
    Run { id: String },
    Agent { name: String },
    Output { run_id: String, after_seq: u64 },
    Triggers,
    Activity { id: String, output: bool },
    Logged,
}

impl What {
    fn of(event: &FleetEvent) -> What {
        match event {
            FleetEvent::Run(run) => What::Run { id: run.id.clone() },
            FleetEvent::Agent { name } => What::Agent { name: name.clone() },
            FleetEvent::Triggers => What::Triggers,
            FleetEvent::Logged => What::Logged,
            FleetEvent::Activity { id, output } => What::Activity {
                id: id.clone(),
                output: *output,
            },
            FleetEvent::Output { run_id, lines } => What::Output {
                run_id: run_id.clone(),
                after_seq: lines
                    .iter()
                    .filter_map(|line| line.seq)
                    .min()
                    .unwrap_or(1)
                    .saturating_sub(1),
            },
        }
    }
}

/// Sends this node's fleet events to the other nodes, as many as are waiting in one
/// statement (the same change twice only once).
async fn relay_events(store: Store, node: String, mut events: mpsc::UnboundedReceiver<FleetEvent>) {
    while let Some(first) = events.recv().await {
        let mut batch = vec![What::of(&first)];
        while batch.len() < RELAY_BATCH {
            match events.try_recv() {
                Ok(event) => batch.push(What::of(&event)),
                Err(_) => break,
            }
        }
        let mut seen = HashSet::new();
        let payloads: Vec<String> = batch
            .into_iter()
            .filter_map(|what| {
                let payload = serde_json::to_string(&Relayed {
                    node: node.clone(),
                    what,
                })
                .ok()?;
                seen.insert(payload.clone()).then_some(payload)
            })
            .collect();
        if let Err(err) = store.notify(EVENTS_CHANNEL, &payloads).await {
            tracing::warn!(%err, "relaying events to the other nodes");
        }
    }
}
