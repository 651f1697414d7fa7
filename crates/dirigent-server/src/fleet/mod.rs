//! The fleet: connected agents and the runs on them.
//!
//! Every change of a run's state goes through [`Fleet`], in this order: decide with the
//! domain's rules, store (a compare-and-set on the run's version, so that of two nodes
//! deciding on one run only one change is stored; the other is re-read and decided again or
//! refused), send the agent its command (durably queued first), publish a [`FleetEvent`]
//! (to this node's listeners, and through the cluster's relay to the other nodes'). A run's
//! end is one transaction with everything it brings (token revoked, work items released,
//! the restart policy's next run). Inside a node one lock orders the changes.
//!
//! The agents' WebSocket connections (`link`) feed agent events back in through
//! [`Fleet::apply_event`]; commands reach an agent through the node that holds its
//! connection, woken by the database when another node queued them ([`Fleet::deliver`]).
//! Nothing here polls: placement runs when something that can change it happens (a run is
//! created or ends, an agent connects or is drained, a robot changes), and timers wake it for
//! restart backoff; the cluster's singleton duties mark the runs of silent agents lost.

mod activities;
pub mod link;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use dirigent_domain::{
    agent::{Agent, AgentId, AgentSlot, place},
    robot::{Robot, RobotDefinition, RobotMode},
    run::{self, Ending, Operation, Run, RunState, Transition},
    session::SessionState,
};
use dirigent_proto::{
    link::{AgentCommand, AgentEvent, AgentReply, AgentRequest, LiveRun, ServerFrame, StartSpec},
    session::SessionReport,
};
use dirigent_store::{LogRecord, Placement, RunEnd, SessionUpdate, Store, StoreError};
use jiff::Timestamp;
use tokio::sync::{broadcast, mpsc, oneshot};

pub use activities::MaintenanceMode;
pub use link::connect;
pub(crate) use link::enroll;

use crate::{Clock, auth::secrets, lock};

/// How the fleet treats silence.
#[derive(Debug, Clone, Copy)]
pub struct FleetSettings {
    /// An agent silent this long has its runs marked `lost`.
    pub lost_after: Duration,
    /// A connection with no frame (not even a ping) for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for FleetSettings {
    fn default() -> FleetSettings {
        FleetSettings {
            lost_after: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(45),
        }
    }
}

/// Something that happened in the fleet, for live views.
#[derive(Debug, Clone)]
pub enum FleetEvent {
    /// A run changed; this is its new state.
    Run(Box<Run>),
    /// New output lines of a run.
    Output {
        run_id: String,
        lines: Arc<Vec<LogRecord>>,
    },
    /// New records in the log store: followers read what is past their cursor.
    Logged,
    /// An agent connected, disconnected or changed.
    Agent { name: String },
    /// A trigger was created, changed or deleted: schedulers look again.
    Triggers,
    /// An activity changed: its state, or (`output`) its output grew.
    Activity { id: String, output: bool },
}

/// A session's display, run id and reason are cut to this many characters.
const MAX_SESSION_TEXT: usize = 512;
/// Changes of a watched screen waiting for a slow watcher; beyond them it is dropped.
const WATCH_BACKLOG: usize = 32;

/// A part of a watched session's screen that changed, as PNG, and where it goes.
#[derive(Debug)]
pub struct ScreenRegion {
    pub x: u16,
    pub y: u16,
    pub png: Vec<u8>,
}

/// A frame of a run's screen larger than this is dropped.
const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Why an operation on the fleet failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("no robot named {0:?}")]
    RobotNotFound(String),
    #[error("no run with id {0:?}")]
    RunNotFound(String),
    #[error("{0}")]
    InvalidState(String),
    /// The agent cannot answer now (connected to another node, or silent).
    #[error("{0}")]
    AgentUnavailable(String),
    /// The orchestrator is in maintenance: no new run starts.
    #[error("{0}")]
    Maintenance(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

pub type FleetResult<T> = Result<T, FleetError>;

/// What a run starts with beyond its robot's definition.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Appended to the robot's command.
    pub args: Vec<String>,
    /// Added to (and overriding) the robot's environment.
    pub env: BTreeMap<String, String>,
}

impl Launch {
    /// What `run` started with, for a run that repeats it.
    pub fn of(run: &Run) -> Launch {
        Launch {
            args: run.args.clone(),
            env: run.env.clone(),
        }
    }
}

/// Who asked for a change; recorded as the transition's cause.
#[derive(Debug, Clone)]
pub enum Cause {
    User(String),
    Agent(String),
    RestartPolicy,
    Rule(&'static str),
    /// A trigger's firing.
    Trigger {
        trigger: String,
        firing: i64,
    },
}

impl Cause {
    pub fn label(&self) -> String {
        match self {
            Cause::User(name) => format!("user:{name}"),
            Cause::Agent(name) => format!("agent:{name}"),
            Cause::RestartPolicy => "restart_policy".to_owned(),
            Cause::Rule(rule) => format!("rule:{rule}"),
            Cause::Trigger { trigger, firing } => format!("trigger:{trigger}#{firing}"),
        }
    }
}

/// An agent's connection to this node.
struct Connection {
    serial: u64,
    frames: mpsc::UnboundedSender<ServerFrame>,
    /// The id of the last command sent on it: commands go out in order, each once.
    last_sent: u64,
}

/// How many times a change decided on a run that another node changed meanwhile is decided
/// again before giving up.
const STALE_RETRIES: usize = 3;

pub struct Fleet {
    store: Store,
    clock: Arc<dyn Clock>,
    settings: FleetSettings,
    /// This node's id: recorded on the agents connected here.
    node: String,
    connections: Mutex<HashMap<AgentId, Connection>>,
    next_serial: std::sync::atomic::AtomicU64,
    /// Requests sent to agents connected here, waiting for their replies.
    requests: Mutex<HashMap<u64, oneshot::Sender<AgentReply>>>,
    /// Screens followed live for watchers on this node: where each watch's changes go.
    watches: Mutex<HashMap<u64, mpsc::Sender<ScreenRegion>>>,
    next_request: std::sync::atomic::AtomicU64,
    changes: tokio::sync::Mutex<()>,
    events: broadcast::Sender<FleetEvent>,
    /// Where events go for the other nodes (PostgreSQL only).
    relay: std::sync::OnceLock<mpsc::UnboundedSender<FleetEvent>>,
    /// Told of every run that ends here (unlike `events`, never lagging behind).
    run_ends: Mutex<Vec<mpsc::UnboundedSender<Run>>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// The robots and agents of runs whose output came lately.
    placements: Mutex<HashMap<String, (String, Option<AgentId>)>>,
}

/// How many runs' placements are remembered before the memory is emptied.
const PLACEMENTS_KEPT: usize = 10_000;

impl Fleet {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        settings: FleetSettings,
        node: String,
    ) -> Arc<Fleet> {
        let (events, _) = broadcast::channel(4096);
        Arc::new(Fleet {
            store,
            clock,
            settings,
            node,
            connections: Mutex::new(HashMap::new()),
            next_serial: std::sync::atomic::AtomicU64::new(1),
            requests: Mutex::default(),
            watches: Mutex::default(),
            next_request: std::sync::atomic::AtomicU64::new(1),
            changes: tokio::sync::Mutex::new(()),
            events,
            relay: std::sync::OnceLock::new(),
            run_ends: Mutex::default(),
            metrics: Arc::default(),
            placements: Mutex::default(),
        })
    }

    /// Asks an agent a question and waits (at most `timeout`) for its answer. The agent must
    /// be connected to this node.
    pub async fn ask(
        &self,
        agent: &Agent,
        request: AgentRequest,
        timeout: Duration,
    ) -> FleetResult<AgentReply> {
        if !agent.online {
            return Err(FleetError::InvalidState(format!(
                "agent {} is offline",
                agent.name
            )));
        }
        let id = self
            .next_request
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        lock(&self.requests).insert(id, reply);
        let sent = self
            .lock_connections()
            .get(&agent.id)
            .is_some_and(|connection| {
                connection
                    .frames
                    .send(ServerFrame::Request { id, request })
                    .is_ok()
            });
        if !sent {
            lock(&self.requests).remove(&id);
            let node = agent.node.as_deref().unwrap_or("another node");
            return Err(FleetError::AgentUnavailable(format!(
                "agent {} is connected to {node}, not to this node ({}): ask that one",
                agent.name, self.node
            )));
        }
        let answered = tokio::time::timeout(timeout, answer).await;
        lock(&self.requests).remove(&id);
        match answered {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(FleetError::AgentUnavailable(format!(
                "agent {} went away before it answered",
                agent.name
            ))),
            Err(_) => Err(FleetError::AgentUnavailable(format!(
                "agent {} did not answer within {} s",
                agent.name,
                timeout.as_secs()
            ))),
        }
    }

    /// An agent answered a request.
    pub(crate) fn answered(&self, id: u64, reply: AgentReply) {
        if let Some(waiting) = lock(&self.requests).remove(&id) {
            let _ = waiting.send(reply);
        }
    }

    /// Follows a session's screen live: its agent sends the changes (the whole screen first)
    /// to the receiver. Call [`Fleet::unwatch`] when done.
    pub async fn watch(
        &self,
        agent: &Agent,
        session: u32,
    ) -> FleetResult<(u64, mpsc::Receiver<ScreenRegion>)> {
        let watch = self
            .next_request
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (regions, received) = mpsc::channel(WATCH_BACKLOG);
        lock(&self.watches).insert(watch, regions);
        let request = AgentRequest::Watch { session, watch };
        let answer = self.ask(agent, request, Duration::from_secs(10)).await;
        match answer {
            Ok(AgentReply::Done) => Ok((watch, received)),
            Ok(AgentReply::Failed { message }) => {
                lock(&self.watches).remove(&watch);
                Err(FleetError::InvalidState(message))
            }
            Ok(AgentReply::Screenshot { .. }) => {
                lock(&self.watches).remove(&watch);
                Err(FleetError::Internal("a screenshot for a watch".to_owned()))
            }
            Err(err) => {
                lock(&self.watches).remove(&watch);
                Err(err)
            }
        }
    }

    /// Stops following a screen for a watcher.
    pub fn unwatch(&self, agent: AgentId, watch: u64) {
        lock(&self.watches).remove(&watch);
        let id = self
            .next_request
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(connection) = self.lock_connections().get(&agent) {
            let request = AgentRequest::Unwatch { watch };
            let _ = connection.frames.send(ServerFrame::Request { id, request });
        }
    }

    /// A part of a watched screen changed. A watcher that does not keep up (or is gone) is
    /// dropped, and the agent told to stop.
    pub(crate) fn screen_changed(&self, agent: AgentId, watch: u64, x: u16, y: u16, png: &str) {
        use base64::Engine;
        let Ok(png) = base64::engine::general_purpose::STANDARD.decode(png) else {
            tracing::warn!(watch, "a screen change that is not base64");
            return;
        };
        let delivered = lock(&self.watches)
            .get(&watch)
            .is_some_and(|regions| regions.try_send(ScreenRegion { x, y, png }).is_ok());
        if !delivered {
            self.unwatch(agent, watch);
        }
    }

    /// This node's metrics kept in memory.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn subscribe(&self) -> broadcast::Receiver<FleetEvent> {
        self.events.subscribe()
    }

    /// Sends every event published here to `relay` too (for the other nodes), from now on.
    pub(crate) fn relay_to(&self, relay: mpsc::UnboundedSender<FleetEvent>) {
        let _ = self.relay.set(relay);
    }

    /// Tells this node's listeners and the other nodes.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn publish(&self, event: FleetEvent) {
        if let Some(relay) = self.relay.get() {
            let _ = relay.send(event.clone());
        }
        let _ = self.events.send(event);
    }

    /// Tells this node's listeners of something that happened on another node.
    pub(crate) fn publish_local(&self, event: FleetEvent) {
        let _ = self.events.send(event);
    }

    /// Tells listeners that an agent changed (its drain flag, say).
    pub fn agent_changed(&self, name: &str) {
        self.publish(FleetEvent::Agent {
            name: name.to_owned(),
        });
    }

    /// Drains an agent (it takes no new runs) or ends its draining (queued runs may go there
    /// now).
    pub async fn set_draining(self: &Arc<Fleet>, name: &str, draining: bool) -> FleetResult<()> {
        self.store.set_agent_draining(name, draining).await?;
        self.agent_changed(name);
        if !draining {
            self.dispatch().await?;
        }
        Ok(())
    }

    /// A trigger was created, changed or deleted: every node's scheduler looks again.
    pub fn triggers_changed(&self) {
        self.publish(FleetEvent::Triggers);
    }

    /// Creates a robot's definition.
    pub async fn create_robot(&self, definition: &RobotDefinition) -> FleetResult<Robot> {
        Ok(self
            .store
            .insert_robot(definition, self.clock.now())
            .await?)
    }

    /// Replaces a robot's definition: its queued runs may be placed now (more parallel runs
    /// allowed, another agent selector).
    pub async fn replace_robot(
        self: &Arc<Fleet>,
        definition: &RobotDefinition,
    ) -> FleetResult<Robot> {
        let robot = self
            .store
            .replace_robot(definition, self.clock.now())
            .await?;
        self.dispatch().await?;
        Ok(robot)
    }

    /// Deletes a robot's definition: its queued runs fail now (those running may still be
    /// stopped).
    pub async fn delete_robot(self: &Arc<Fleet>, name: &str) -> FleetResult<()> {
        self.store.delete_robot(name).await?;
        self.dispatch().await
    }

    /// Every run that ends from now on, in order, none skipped.
    pub fn run_ends(&self) -> mpsc::UnboundedReceiver<Run> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.lock_run_ends().push(sender);
        receiver
    }

    fn lock_run_ends(&self) -> std::sync::MutexGuard<'_, Vec<mpsc::UnboundedSender<Run>>> {
        self.run_ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// At start no agent is connected to this node: those that were (in its earlier life)
    /// are offline until they come back, here or elsewhere. Agents of other nodes are theirs.
    pub async fn recover(self: &Arc<Fleet>) -> FleetResult<()> {
        self.store.mark_node_agents_offline(&self.node).await?;
        self.dispatch().await
    }

    /// Creates a run of `robot_name`, queued until placed on an agent.
    pub async fn start_run(
        self: &Arc<Fleet>,
        robot_name: &str,
        cause: Cause,
        launch: Launch,
    ) -> FleetResult<Run> {
        self.refuse_in_maintenance().await?;
        let run = {
            let _changes = self.changes.lock().await;
            // An ad-hoc start is not taking control: the robot's mode stays as it is.
            let robot = self.robot(robot_name).await?;
            let run = self.new_run(&robot, &cause, None, launch)?;
            let firing = match cause {
                Cause::Trigger { firing, .. } => Some(firing),
                _ => None,
            };
            self.store.insert_run(&run.0, &run.1, firing).await?;
            self.metrics.count_run_created(&run.0.robot);
            self.publish(FleetEvent::Run(Box::new(run.0.clone())));
            run.0
        };
        self.dispatch().await?;
        Ok(self.store.run(&run.id).await?)
    }

    /// Pauses, resumes, safe-stops or force-stops a run. An operator's action switches the
    /// robot to manual mode; automation's (a trigger replacing a run) does not.
    pub async fn operate(
        self: &Arc<Fleet>,
        run_id: &str,
        operation: Operation,
        cause: Cause,
    ) -> FleetResult<Run> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.operate_once(run_id, operation, &cause).await {
                Err(FleetError::Store(StoreError::Stale)) if attempt < STALE_RETRIES => {}
                done => return done,
            }
        }
    }

    async fn operate_once(
        self: &Arc<Fleet>,
        run_id: &str,
        operation: Operation,
        cause: &Cause,
    ) -> FleetResult<Run> {
        let run = {
            let _changes = self.changes.lock().await;
            let mut run = self.run(run_id).await?;
            run::check_operation(run.state, operation).map_err(FleetError::InvalidState)?;
            // The robot may have been deleted since; its runs can still be stopped.
            let robot = self.store.robot(&run.robot).await.ok();
            if let (Some(robot), Cause::User(user)) = (&robot, cause) {
                self.take_manual_control(
                    robot,
                    user,
                    &format!("asked to {} a run", operation.as_str()),
                )
                .await?;
            }
            if run.state == RunState::Queued {
                // Never started: it ends here.
                let state = if operation == Operation::Kill {
                    RunState::Killed
                } else {
                    RunState::Stopped
                };
                run.stop_requested = true;
                run.ended_at = Some(self.clock.now());
                self.transition(
                    &mut run,
                    state,
                    cause,
                    Some("cancelled before it started".to_owned()),
                )
                .await?;
            } else {
                let Some(agent_id) = run.agent_id else {
                    return Err(FleetError::Internal(format!(
                        "run {run_id} is {} without an agent",
                        run.state.as_str()
                    )));
                };
                let command = match operation {
                    Operation::Pause => AgentCommand::Pause {
                        run_id: run.id.clone(),
                    },
                    Operation::Resume => AgentCommand::Resume {
                        run_id: run.id.clone(),
                    },
                    Operation::Stop => {
                        let grace_seconds = robot
                            .as_ref()
                            .map_or(30, |robot| robot.definition.stop_grace_seconds);
                        AgentCommand::Stop {
                            run_id: run.id.clone(),
                            grace_seconds,
                        }
                    }
                    Operation::Kill => AgentCommand::Kill {
                        run_id: run.id.clone(),
                    },
                };
                if matches!(operation, Operation::Stop | Operation::Kill) && !run.stop_requested {
                    run.stop_requested = true;
                    if run.state == RunState::Stopping {
                        self.store.update_run(&mut run, None).await?;
                    } else {
                        self.transition(&mut run, RunState::Stopping, cause, None)
                            .await?;
                    }
                }
                self.send(agent_id, command).await?;
            }
            run
        };
        Ok(run)
    }

    /// Safe-stops a run (if it is active) and queues a new run of its robot.
    pub async fn restart_run(self: &Arc<Fleet>, run_id: &str, user: &str) -> FleetResult<Run> {
        let run = self.run(run_id).await?;
        if run.state.is_active() && run.state != RunState::Stopping {
            self.operate(run_id, Operation::Stop, Cause::User(user.to_owned()))
                .await?;
        }
        let launch = Launch::of(&run);
        self.start_run(&run.robot, Cause::User(user.to_owned()), launch)
            .await
    }

    /// Returns a robot to auto mode.
    pub async fn set_auto(self: &Arc<Fleet>, robot_name: &str, user: &str) -> FleetResult<()> {
        let _changes = self.changes.lock().await;
        self.store
            .set_robot_mode(
                robot_name,
                RobotMode::Auto,
                &format!("switched to auto by {user}"),
            )
            .await
            .map_err(|err| not_found_as(err, || FleetError::RobotNotFound(robot_name.to_owned())))
    }

    /// Waits until the run reaches one of `states` or ends, for at most `timeout`; answers
    /// the run as it is then.
    pub async fn wait_for(
        &self,
        run_id: &str,
        states: &[RunState],
        timeout: Duration,
    ) -> FleetResult<Run> {
        let mut events = self.subscribe();
        let run = self.run(run_id).await?;
        if states.contains(&run.state) || run.state.is_final() {
            return Ok(run);
        }
        let reached = tokio::time::timeout(timeout, async {
            loop {
                match events.recv().await {
                    Ok(FleetEvent::Run(run))
                        if run.id == run_id
                            && (states.contains(&run.state) || run.state.is_final()) =>
                    {
                        return;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Ok(run) = self.store.run(run_id).await
                            && (states.contains(&run.state) || run.state.is_final())
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        })
        .await;
        let _ = reached;
        self.run(run_id).await
    }

    /// Applies one event reported by an agent.
    pub(crate) async fn apply_event(
        self: &Arc<Fleet>,
        agent: &Agent,
        event: AgentEvent,
    ) -> FleetResult<()> {
        if let AgentEvent::Session(report) = &event {
            return self.session_reported(agent, report, true).await;
        }
        if let AgentEvent::ActivityStarted { .. }
        | AgentEvent::ActivityOutput { .. }
        | AgentEvent::ActivityEnded { .. } = &event
        {
            return self.activity_event(agent, event).await;
        }
        if let AgentEvent::Frame {
            run_id,
            at,
            png,
            last,
        } = &event
        {
            return self.frame_reported(agent, run_id, *at, png, *last).await;
        }
        let mut attempt = 0;
        let ended = loop {
            attempt += 1;
            match self.apply_state_event(agent, &event).await {
                Err(FleetError::Store(StoreError::Stale)) if attempt < STALE_RETRIES => {}
                done => break done?,
            }
        };
        if ended {
            self.dispatch().await?;
        }
        Ok(())
    }

    /// Keeps what an agent's events up to `last_event` add to the log store — its robots'
    /// output and its own records — in one transaction with the agent's last event (once,
    /// however often the events are sent), and tells the live views.
    pub(crate) async fn apply_logs(
        &self,
        agent: &Agent,
        last_event: u64,
        events: Vec<AgentEvent>,
    ) -> FleetResult<()> {
        let mut records = Vec::new();
        let mut outputs = Vec::new();
        for event in events {
            match event {
                AgentEvent::Output { run_id, lines } => {
                    // Only the agent a run is placed on speaks for it.
                    let robot = match self.placement_of_run(&run_id).await {
                        Ok((robot, Some(placed))) if placed == agent.id => robot,
                        Ok(_) | Err(FleetError::RunNotFound(_)) => {
                            tracing::warn!(
                                agent = agent.name,
                                run_id,
                                "ignoring output of a run not placed on this agent"
                            );
                            continue;
                        }
                        Err(err) => return Err(err),
                    };
                    let origin = crate::logs::OutputOrigin {
                        robot: &robot,
                        agent: &agent.name,
                    };
                    let start = records.len();
                    records.extend(
                        lines
                            .into_iter()
                            .map(|line| crate::logs::output_record(&run_id, &origin, line)),
                    );
                    outputs.push((run_id, start..records.len()));
                }
                AgentEvent::Logs { records: logs } => {
                    records.extend(logs.into_iter().map(|log| {
                        crate::logs::own_record(
                            dirigent_domain::log::Source::Agent,
                            Some(&agent.name),
                            None,
                            log,
                        )
                    }));
                }
                _ => {}
            }
        }
        self.store
            .add_agent_logs(agent.id, last_event, &records)
            .await?;
        for (run_id, lines) in outputs {
            self.publish(FleetEvent::Output {
                run_id,
                lines: Arc::new(records[lines].to_vec()),
            });
        }
        self.publish(FleetEvent::Logged);
        Ok(())
    }

    /// The robot of a run and the agent it is placed on (remembered once placed: output
    /// comes in many batches per run).
    async fn placement_of_run(&self, run_id: &str) -> FleetResult<(String, Option<AgentId>)> {
        if let Some(known) = lock(&self.placements).get(run_id) {
            return Ok(known.clone());
        }
        let run = self
            .store
            .run(run_id)
            .await
            .map_err(|err| not_found_as(err, || FleetError::RunNotFound(run_id.to_owned())))?;
        let placement = (run.robot, run.agent_id);
        if placement.1.is_some() {
            let mut known = lock(&self.placements);
            if PLACEMENTS_KEPT <= known.len() {
                known.clear();
            }
            known.insert(run_id.to_owned(), placement.clone());
        }
        Ok(placement)
    }

    /// Stores a graphical session's state as its agent reports it (into its history too when
    /// `history`: an event, not the snapshot sent on connecting). A session that became
    /// ready may take a queued run.
    pub(crate) async fn session_reported(
        self: &Arc<Fleet>,
        agent: &Agent,
        report: &SessionReport,
        history: bool,
    ) -> FleetResult<()> {
        let bounded = |text: &Option<String>| {
            text.as_ref()
                .map(|text| text.chars().take(MAX_SESSION_TEXT).collect::<String>())
        };
        let state = match report.state {
            dirigent_proto::session::SessionState::Starting => SessionState::Starting,
            dirigent_proto::session::SessionState::Ready => SessionState::Ready,
            dirigent_proto::session::SessionState::InUse => SessionState::InUse,
            dirigent_proto::session::SessionState::Restarting => SessionState::Restarting,
            dirigent_proto::session::SessionState::Failed => SessionState::Failed,
        };
        let update = SessionUpdate {
            number: report.number.min(64),
            display: bounded(&report.display),
            width: report.width,
            height: report.height,
            state,
            run_id: bounded(&report.run_id),
            reason: bounded(&report.reason),
            at: report.at,
        };
        self.store
            .update_session(agent.id, &update, history)
            .await?;
        self.publish(FleetEvent::Agent {
            name: agent.name.clone(),
        });
        if state == SessionState::Ready {
            self.dispatch().await?;
        }
        Ok(())
    }

    /// Keeps a frame of a run's screen as its agent took it; one that is not a PNG of a run
    /// of this agent, or too large, is dropped.
    async fn frame_reported(
        &self,
        agent: &Agent,
        run_id: &str,
        at: Timestamp,
        png: &str,
        last: bool,
    ) -> FleetResult<()> {
        use base64::Engine;
        let png = match base64::engine::general_purpose::STANDARD.decode(png) {
            Ok(png) if png.starts_with(b"\x89PNG") && png.len() <= MAX_FRAME_BYTES => png,
            _ => {
                tracing::warn!(
                    agent = agent.name,
                    run_id,
                    "dropping a frame that is no PNG or too large"
                );
                return Ok(());
            }
        };
        match self.store.run(run_id).await {
            Ok(run) if run.agent_id == Some(agent.id) => {}
            Ok(_) | Err(StoreError::NotFound) => {
                tracing::warn!(
                    agent = agent.name,
                    run_id,
                    "a frame of a run placed elsewhere"
                );
                return Ok(());
            }
            Err(err) => return Err(err.into()),
        }
        self.store.add_run_frame(run_id, at, &png, last).await?;
        Ok(())
    }

    /// Applies an event that changes a run's state; answers whether the run ended (and so
    /// freed a place).
    async fn apply_state_event(
        self: &Arc<Fleet>,
        agent: &Agent,
        event: &AgentEvent,
    ) -> FleetResult<bool> {
        let run_id = match event {
            AgentEvent::Started { run_id, .. }
            | AgentEvent::StartFailed { run_id, .. }
            | AgentEvent::Paused { run_id, .. }
            | AgentEvent::Resumed { run_id, .. }
            | AgentEvent::Stopping { run_id, .. }
            | AgentEvent::Exited { run_id, .. } => run_id,
            AgentEvent::Session(_)
            | AgentEvent::Output { .. }
            | AgentEvent::Logs { .. }
            | AgentEvent::Frame { .. }
            | AgentEvent::ActivityStarted { .. }
            | AgentEvent::ActivityOutput { .. }
            | AgentEvent::ActivityEnded { .. } => return Ok(false),
        };
        let _changes = self.changes.lock().await;
        let mut run = match self.store.run(run_id).await {
            Ok(run) => run,
            Err(StoreError::NotFound) => {
                tracing::warn!(agent = agent.name, run_id, "event about an unknown run");
                return Ok(false);
            }
            Err(err) => return Err(err.into()),
        };
        if run.agent_id != Some(agent.id) {
            tracing::warn!(
                agent = agent.name,
                run_id,
                "event about a run placed elsewhere"
            );
            return Ok(false);
        }
        let cause = Cause::Agent(agent.name.clone());
        let ended = match event {
            AgentEvent::Started {
                pid,
                at,
                token_digest,
                ..
            } if run.state == RunState::Starting => {
                if let Some(digest) = token_digest {
                    self.store
                        .confirm_run_token(&run.id, agent.id, digest)
                        .await?;
                }
                run.pid = Some(*pid);
                run.started_at = Some(*at);
                self.transition(&mut run, RunState::Running, &cause, None)
                    .await?;
                if run.not_before.is_none() {
                    let waited = at.duration_since(run.created_at).unsigned_abs();
                    self.metrics.observe_run_start(waited);
                }
                false
            }
            AgentEvent::StartFailed { reason, at, .. } if run.state.is_active() => {
                run.ended_at = Some(*at);
                self.transition(&mut run, RunState::Failed, &cause, Some(reason.clone()))
                    .await?;
                true
            }
            AgentEvent::Paused { .. } if run.state == RunState::Running => {
                self.transition(&mut run, RunState::Paused, &cause, None)
                    .await?;
                false
            }
            AgentEvent::Resumed { .. } if run.state == RunState::Paused => {
                self.transition(&mut run, RunState::Running, &cause, None)
                    .await?;
                false
            }
            AgentEvent::Stopping { .. }
                if matches!(run.state, RunState::Running | RunState::Paused) =>
            {
                run.stop_requested = true;
                self.transition(&mut run, RunState::Stopping, &cause, None)
                    .await?;
                false
            }
            AgentEvent::Exited {
                at,
                exit_code,
                signal,
                ending,
                note,
                ..
            } if run.state.is_active() || run.state == RunState::Lost => {
                let ending = match ending {
                    dirigent_proto::link::Ending::Natural => Ending::Natural,
                    dirigent_proto::link::Ending::Stopped => Ending::Stopped,
                    dirigent_proto::link::Ending::Killed => Ending::Killed,
                    dirigent_proto::link::Ending::TimedOut => Ending::TimedOut,
                    dirigent_proto::link::Ending::Abandoned => Ending::Abandoned,
                };
                let state = run::final_state(ending, *exit_code, run.stop_requested);
                run.exit_code = *exit_code;
                run.signal = *signal;
                run.ended_at = Some(*at);
                let reason = match (ending, signal) {
                    (Ending::Abandoned, Some(_)) => "its agent restarted and could not \
                        supervise it any more: its process group was killed"
                        .to_owned(),
                    (Ending::Abandoned, None) => "its agent restarted and could not supervise \
                        it any more: it had ended meanwhile, exit status unknown"
                        .to_owned(),
                    _ => describe_exit(*exit_code, *signal),
                };
                let reason = match note {
                    Some(note) => format!("{reason}; {note}"),
                    None => reason,
                };
                let was_lost = run.state == RunState::Lost;
                self.transition(&mut run, state, &cause, Some(reason))
                    .await?;
                !was_lost
            }
            other => {
                tracing::debug!(
                    agent = agent.name,
                    run_id,
                    state = run.state.as_str(),
                    ?other,
                    "event changes nothing"
                );
                false
            }
        };
        Ok(ended)
    }

    /// Reconciles with what a (re)connected agent reports alive: runs it no longer has are
    /// lost; runs it has that ended here are killed there, so no second copy lives on.
    pub(crate) async fn agent_synced(
        self: &Arc<Fleet>,
        agent: &Agent,
        live_runs: &[LiveRun],
    ) -> FleetResult<()> {
        {
            let _changes = self.changes.lock().await;
            let alive: HashMap<&str, &LiveRun> = live_runs
                .iter()
                .map(|live| (live.run_id.as_str(), live))
                .collect();
            for mut run in self.store.active_runs().await? {
                let on_agent = run.agent_id == Some(agent.id);
                let alive_here = alive.contains_key(run.id.as_str());
                if on_agent
                    && !alive_here
                    && matches!(
                        run.state,
                        RunState::Running | RunState::Paused | RunState::Stopping
                    )
                {
                    run.ended_at = Some(self.clock.now());
                    let reason = Some("the agent no longer runs it (was it restarted?)".to_owned());
                    let cause = Cause::Agent(agent.name.clone());
                    let lost = self.transition(&mut run, RunState::Lost, &cause, reason);
                    unless_stale(lost.await)?;
                }
            }
            for live in live_runs {
                let known = self.store.run(&live.run_id).await;
                let keep = matches!(&known, Ok(run) if run.agent_id == Some(agent.id) && run.state.is_active());
                if !keep {
                    tracing::warn!(
                        agent = agent.name,
                        run_id = live.run_id,
                        "killing a run this server considers ended"
                    );
                    self.send(
                        agent.id,
                        AgentCommand::Kill {
                            run_id: live.run_id.clone(),
                        },
                    )
                    .await?;
                }
            }
        }
        self.dispatch().await
    }

    /// Places queued runs on agents with free places, in the order they were created. The
    /// store checks each placement again under its lock, so that nodes placing at once never
    /// exceed a robot's parallel runs or an agent's capacity.
    pub async fn dispatch(self: &Arc<Fleet>) -> FleetResult<()> {
        let _changes = self.changes.lock().await;
        let now = self.clock.now();
        let mut agents = self.store.agents().await?;
        let active = self.store.active_runs().await?;
        let mut holding: HashMap<String, u32> = HashMap::new();
        for run in active.iter().filter(|run| run.state.holds_agent()) {
            *holding.entry(run.robot.clone()).or_default() += 1;
        }
        // The graphical sessions ready and used by no run, per agent.
        let mut free_sessions: HashMap<AgentId, Vec<u32>> = HashMap::new();
        for session in self.store.sessions(None).await? {
            let used = active.iter().any(|run| {
                run.state.holds_agent()
                    && run.agent_id == Some(session.agent_id)
                    && run.session == Some(session.number)
            });
            if session.state == SessionState::Ready && !used {
                free_sessions
                    .entry(session.agent_id)
                    .or_default()
                    .push(session.number);
            }
        }
        let mut robots: HashMap<String, Option<Robot>> = HashMap::new();
        let mut next_wake: Option<Timestamp> = None;
        for mut run in active
            .into_iter()
            .filter(|run| run.state == RunState::Queued)
        {
            if let Some(not_before) = run.not_before.filter(|at| now < *at) {
                next_wake = Some(next_wake.map_or(not_before, |wake| wake.min(not_before)));
                continue;
            }
            if !robots.contains_key(&run.robot) {
                let robot = match self.store.robot(&run.robot).await {
                    Ok(robot) => Some(robot),
                    Err(StoreError::NotFound) => None,
                    Err(err) => return Err(err.into()),
                };
                robots.insert(run.robot.clone(), robot);
            }
            let Some(Some(robot)) = robots.get(&run.robot) else {
                run.ended_at = Some(now);
                let reason = Some("its robot was deleted".to_owned());
                let failed =
                    self.transition(&mut run, RunState::Failed, &Cause::Rule("dispatch"), reason);
                unless_stale(failed.await)?;
                continue;
            };
            let running = holding.get(&run.robot).copied().unwrap_or(0);
            let max_parallel = robot.definition.max_parallel;
            if max_parallel <= running {
                let reason =
                    format!("waiting: the robot runs {running} of {max_parallel} allowed at once");
                unless_stale(self.note_reason(&mut run, reason).await)?;
                continue;
            }
            let slots: Vec<_> = agents
                .iter()
                .map(|agent| AgentSlot {
                    free_sessions: free_sessions.get(&agent.id).cloned().unwrap_or_default(),
                    ..agent.slot()
                })
                .collect();
            let needs_display = robot.definition.needs_display;
            let placed = match place(&robot.definition.agent, needs_display, &slots) {
                Ok(slot) => slot.name.clone(),
                Err(reason) => {
                    unless_stale(self.note_reason(&mut run, reason).await)?;
                    continue;
                }
            };
            let Some(agent) = agents.iter_mut().find(|agent| agent.name == placed) else {
                continue;
            };
            let session = match needs_display {
                true => free_sessions
                    .get(&agent.id)
                    .and_then(|free| free.first().copied()),
                false => None,
            };
            let token = secrets::new_token(secrets::RUN_TOKEN_PREFIX)
                .map_err(|err| FleetError::Internal(err.to_string()))?;
            let token_hash = secrets::token_digest(&token);
            let mut env = robot.definition.env.clone();
            env.extend(run.env.clone());
            let mut argv = robot.definition.argv.clone();
            argv.extend(run.args.iter().cloned());
            let spec = StartSpec {
                run_id: run.id.clone(),
                robot: run.robot.clone(),
                argv,
                working_dir: robot.definition.working_dir.clone(),
                env,
                stop_grace_seconds: robot.definition.stop_grace_seconds,
                max_duration_seconds: robot.definition.max_duration_seconds,
                session,
                run_token: None,
            };
            // The stored command has no token: the token lives only in the frame sent now.
            let body = serde_json::to_string(&AgentCommand::Start(spec.clone()))
                .map_err(|err| FleetError::Internal(err.to_string()))?;
            let queued = run.clone();
            run.agent_id = Some(agent.id);
            run.agent = Some(agent.name.clone());
            run.session = session;
            run.state = RunState::Starting;
            run.reason = None;
            let transition = Transition {
                state: RunState::Starting,
                at: now,
                cause: Cause::Rule("dispatch").label(),
                reason: None,
            };
            let placement = self
                .store
                .place_run(&mut run, &transition, &token_hash, &body, max_parallel)
                .await;
            match placement {
                Ok(Placement::Placed { command_id }) => {
                    agent.active_runs += 1;
                    if let (Some(number), Some(free)) = (session, free_sessions.get_mut(&agent.id))
                    {
                        free.retain(|free| *free != number);
                    }
                    *holding.entry(run.robot.clone()).or_default() += 1;
                    let command = AgentCommand::Start(StartSpec {
                        run_token: Some(token),
                        ..spec
                    });
                    self.push(agent.id, command_id, command);
                    self.publish(FleetEvent::Run(Box::new(run)));
                }
                Ok(Placement::Refused(reason)) => {
                    let mut run = queued;
                    unless_stale(self.note_reason(&mut run, reason).await)?;
                }
                // Another node placed or ended it meanwhile.
                Err(StoreError::Stale) => {}
                Err(err) => return Err(err.into()),
            }
        }
        if let Some(wake) = next_wake {
            self.wake_at(wake);
        }
        Ok(())
    }

    /// What automation makes of a run that is ending: the restart policy's next run (with its
    /// first transition), guarded against crash loops, or the robot switched to manual mode
    /// when it loops. Decided before the end is stored, and stored with it.
    async fn after_end(&self, run: &Run) -> FleetResult<AfterEnd> {
        let robot = match self.store.robot(&run.robot).await {
            Ok(robot) => robot,
            Err(StoreError::NotFound) => return Ok(AfterEnd::default()),
            Err(err) => return Err(err.into()),
        };
        if robot.mode != RobotMode::Auto
            || !run::should_restart(robot.definition.restart_policy, run.state)
        {
            return Ok(AfterEnd::default());
        }
        let now = self.clock.now();
        let guard = robot.definition.crash_loop;
        let since = now - jiff::SignedDuration::from_secs(i64::from(guard.window_seconds));
        let earlier = self.store.automatic_starts(&run.robot, since).await?;
        if run::is_crash_loop(guard, &earlier, now) {
            let reason = format!(
                "crash loop: more than {} automatic starts within {} s; switched to manual",
                guard.max_starts, guard.window_seconds
            );
            tracing::warn!(robot = run.robot, reason, "crash-loop guard");
            return Ok(AfterEnd {
                restart: None,
                manual: Some(reason),
            });
        }
        let recent = self.store.ended_runs(&run.robot, 32).await?;
        let failures = std::iter::once(run)
            .chain(recent.iter().filter(|ended| ended.id != run.id))
            .take_while(|ended| {
                matches!(
                    ended.state,
                    RunState::Failed | RunState::TimedOut | RunState::Lost
                )
            })
            .count();
        let delay = run::restart_delay(
            robot.definition.restart_backoff,
            u32::try_from(failures).unwrap_or(u32::MAX),
        );
        let not_before = (!delay.is_zero()).then(|| now.saturating_add(delay).unwrap_or(now));
        let restart = self.new_run(&robot, &Cause::RestartPolicy, not_before, Launch::of(run))?;
        Ok(AfterEnd {
            restart: Some(restart),
            manual: None,
        })
    }

    /// A new queued run of `robot` with its first transition, not yet stored.
    fn new_run(
        &self,
        robot: &Robot,
        cause: &Cause,
        not_before: Option<Timestamp>,
        launch: Launch,
    ) -> FleetResult<(Run, Transition)> {
        let now = self.clock.now();
        let id = secrets::new_id("run_").map_err(|err| FleetError::Internal(err.to_string()))?;
        let reason = match not_before {
            Some(at) => format!("restart backoff until {at}"),
            None => "waiting for an agent".to_owned(),
        };
        let run = Run {
            id,
            robot: robot.definition.name.to_string(),
            agent_id: None,
            agent: None,
            state: RunState::Queued,
            reason: Some(reason.clone()),
            stop_requested: false,
            automatic: !matches!(cause, Cause::User(_)),
            pid: None,
            exit_code: None,
            signal: None,
            not_before,
            args: launch.args,
            env: launch.env,
            created_at: now,
            started_at: None,
            ended_at: None,
            session: None,
            version: 0,
        };
        let transition = Transition {
            state: RunState::Queued,
            at: now,
            cause: cause.label(),
            reason: Some(reason),
        };
        Ok((run, transition))
    }

    async fn take_manual_control(&self, robot: &Robot, user: &str, what: &str) -> FleetResult<()> {
        if robot.mode == RobotMode::Manual {
            return Ok(());
        }
        let reason = format!("{user} {what}");
        self.store
            .set_robot_mode(robot.definition.name.as_str(), RobotMode::Manual, &reason)
            .await?;
        Ok(())
    }

    /// Moves a run to `state`, recording why, over the version it was read at (`Stale` when
    /// it changed meanwhile: nothing is stored). A run that ends here ends in one
    /// transaction with its token revoked, its work items released and what the restart
    /// policy makes of it; all of that is published after the commit, so that whoever sees
    /// the end also sees what automation made of it.
    async fn transition(
        &self,
        run: &mut Run,
        state: RunState,
        cause: &Cause,
        reason: Option<String>,
    ) -> FleetResult<()> {
        let ends_here = state.is_final() && !run.state.is_final();
        let before = (run.state, run.reason.clone());
        run.state = state;
        run.reason = reason.clone();
        let transition = Transition {
            state,
            at: self.clock.now(),
            cause: cause.label(),
            reason,
        };
        let stored = if ends_here {
            match self.after_end(run).await {
                Ok(after) => {
                    let end = RunEnd {
                        restart: after.restart.as_ref().map(|(next, first)| (next, first)),
                        manual: after.manual.as_deref(),
                    };
                    self.store
                        .end_run(run, &transition, end)
                        .await
                        .map(|_| after.restart)
                        .map_err(FleetError::from)
                }
                Err(err) => Err(err),
            }
        } else {
            self.store
                .update_run(run, Some(&transition))
                .await
                .map(|()| None)
                .map_err(FleetError::from)
        };
        let restart = match stored {
            Ok(restart) => restart,
            Err(err) => {
                (run.state, run.reason) = before;
                return Err(err);
            }
        };
        self.publish(FleetEvent::Run(Box::new(run.clone())));
        if ends_here {
            tracing::info!(
                run_id = run.id,
                robot = run.robot,
                state = state.as_str(),
                reason = run.reason.as_deref().unwrap_or(""),
                "run ended"
            );
        }
        if let Some((next, _)) = restart {
            self.metrics.count_run_created(&next.robot);
            self.publish(FleetEvent::Run(Box::new(next)));
        }
        if ends_here {
            self.metrics.count_run_ended(&run.robot, run.state.as_str());
            self.lock_run_ends()
                .retain(|listener| listener.send(run.clone()).is_ok());
        }
        Ok(())
    }

    async fn note_reason(&self, run: &mut Run, reason: String) -> FleetResult<()> {
        if run.reason.as_deref() == Some(reason.as_str()) {
            return Ok(());
        }
        run.reason = Some(reason);
        self.store.update_run(run, None).await?;
        self.publish(FleetEvent::Run(Box::new(run.clone())));
        Ok(())
    }

    /// Queues a command for an agent durably, and sends it at once if it is connected here
    /// (the database wakes the node that holds it otherwise).
    async fn send(self: &Arc<Fleet>, agent_id: AgentId, command: AgentCommand) -> FleetResult<()> {
        let body =
            serde_json::to_string(&command).map_err(|err| FleetError::Internal(err.to_string()))?;
        let id = self
            .store
            .queue_agent_command(agent_id, &body, self.clock.now())
            .await?;
        self.push(agent_id, id, command);
        Ok(())
    }

    /// Sends a command already queued durably to its agent, if it is connected here: at once
    /// when it is the next one the connection is due, else after those before it
    /// ([`Fleet::deliver`]), so that commands reach the agent in order.
    fn push(self: &Arc<Fleet>, agent_id: AgentId, id: u64, command: AgentCommand) {
        let mut connections = self.lock_connections();
        let Some(connection) = connections.get_mut(&agent_id) else {
            return;
        };
        if connection.last_sent + 1 == id {
            let _ = connection.frames.send(ServerFrame::Command { id, command });
            connection.last_sent = id;
        } else if connection.last_sent < id {
            drop(connections);
            let fleet = Arc::clone(self);
            tokio::spawn(async move {
                if let Err(err) = fleet.deliver(agent_id, id).await {
                    tracing::warn!(%err, "sending queued commands");
                }
            });
        }
    }

    /// Sends an agent connected here the commands queued for it that it was not sent yet (up
    /// to `up_to` at least), in order. A start command read back from the database carries a
    /// new run token (the server keeps none) while its run is starting; the start of a run
    /// that ended meanwhile is forgotten, not sent.
    pub(crate) async fn deliver(
        self: &Arc<Fleet>,
        agent_id: AgentId,
        up_to: u64,
    ) -> FleetResult<()> {
        let after = match self.lock_connections().get(&agent_id) {
            Some(connection) if connection.last_sent < up_to => connection.last_sent,
            _ => return Ok(()),
        };
        let mut ready = Vec::new();
        for (id, body) in self.store.pending_agent_commands(agent_id, after).await? {
            let command = match serde_json::from_str(&body) {
                Ok(AgentCommand::Start(spec)) if spec.run_token.is_none() => {
                    let token = secrets::new_token(secrets::RUN_TOKEN_PREFIX)
                        .map_err(|err| FleetError::Internal(err.to_string()))?;
                    let digest = secrets::token_digest(&token);
                    if self.store.renew_run_token(&spec.run_id, &digest).await? {
                        Some(AgentCommand::Start(StartSpec {
                            run_token: Some(token),
                            ..spec
                        }))
                    } else if self
                        .run(&spec.run_id)
                        .await
                        .is_ok_and(|run| !run.state.is_final())
                    {
                        // Past starting but not ended: the agent has it (and ignores this), or
                        // a stop overtook it (and follows it). Its token is the one it had.
                        Some(AgentCommand::Start(spec))
                    } else {
                        // Ended: never to start. Nobody will acknowledge it; forget it.
                        self.store.drop_agent_command(agent_id, id).await?;
                        None
                    }
                }
                Ok(AgentCommand::Activity { id: activity, .. })
                    if !self.activity_still_wanted(&activity).await? =>
                {
                    // Ended before it was sent (cancelled, timed out): never to run.
                    self.store.drop_agent_command(agent_id, id).await?;
                    None
                }
                Ok(command) => Some(command),
                Err(err) => {
                    tracing::error!(agent = agent_id.0, id, %err, "unreadable queued command");
                    None
                }
            };
            ready.push((id, command));
        }
        let mut connections = self.lock_connections();
        let Some(connection) = connections.get_mut(&agent_id) else {
            return Ok(());
        };
        for (id, command) in ready {
            if id <= connection.last_sent {
                continue;
            }
            if let Some(command) = command {
                let _ = connection.frames.send(ServerFrame::Command { id, command });
            }
            connection.last_sent = id;
        }
        Ok(())
    }

    /// Sends every agent connected here what it was not sent yet: after notifications from
    /// other nodes may have been missed.
    pub(crate) async fn deliver_all(self: &Arc<Fleet>) {
        let connected: Vec<AgentId> = self.lock_connections().keys().copied().collect();
        for agent_id in connected {
            if let Err(err) = self.deliver(agent_id, u64::MAX).await {
                tracing::warn!(%err, "sending queued commands");
            }
        }
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, HashMap<AgentId, Connection>> {
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn robot(&self, name: &str) -> FleetResult<Robot> {
        self.store
            .robot(name)
            .await
            .map_err(|err| not_found_as(err, || FleetError::RobotNotFound(name.to_owned())))
    }

    pub async fn run(&self, id: &str) -> FleetResult<Run> {
        self.store
            .run(id)
            .await
            .map_err(|err| not_found_as(err, || FleetError::RunNotFound(id.to_owned())))
    }

    /// Dispatches again at `at` (restart backoff).
    fn wake_at(self: &Arc<Fleet>, at: Timestamp) {
        let delay = at.duration_since(self.clock.now()).unsigned_abs();
        let fleet = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(err) = fleet.dispatch().await {
                tracing::error!(%err, "dispatching after a backoff");
            }
        });
    }

    /// Marks lost the runs of agents that are connected to no live node and have been silent
    /// longer than `lost_after`, whichever node they were connected to: one of the cluster's
    /// singleton duties. Answers how many.
    pub(crate) async fn mark_silent_runs_lost(self: &Arc<Fleet>) -> FleetResult<usize> {
        let seconds = self.settings.lost_after.as_secs();
        let cutoff = self.clock.now() - self.settings.lost_after;
        let silent = self.store.runs_of_silent_agents(cutoff).await?;
        if silent.is_empty() {
            return Ok(0);
        }
        let mut marked = 0;
        {
            let _changes = self.changes.lock().await;
            for mut run in silent {
                run.ended_at = Some(self.clock.now());
                let reason = Some(format!("its agent was silent for more than {seconds} s"));
                let cause = Cause::Rule("agent_silent");
                match self
                    .transition(&mut run, RunState::Lost, &cause, reason)
                    .await
                {
                    Ok(()) => marked += 1,
                    // It changed meanwhile (its agent came back): not lost.
                    Err(FleetError::Store(StoreError::Stale)) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        self.dispatch().await?;
        Ok(marked)
    }

    /// Registers an agent's connection to this node, whose last command sent is `last_sent`.
    fn register(
        &self,
        agent_id: AgentId,
        frames: mpsc::UnboundedSender<ServerFrame>,
        last_sent: u64,
    ) -> u64 {
        let serial = self
            .next_serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock_connections().insert(
            agent_id,
            Connection {
                serial,
                frames,
                last_sent,
            },
        );
        serial
    }

    /// Forgets a connection; answers whether it was still the agent's current one.
    fn unregister(&self, agent_id: AgentId, serial: u64) -> bool {
        let mut connections = self.lock_connections();
        if connections
            .get(&agent_id)
            .is_some_and(|connection| connection.serial == serial)
        {
            connections.remove(&agent_id);
            return true;
        }
        false
    }
}

/// What automation makes of a run's end.
#[derive(Default)]
struct AfterEnd {
    restart: Option<(Run, Transition)>,
    manual: Option<String>,
}

/// Lets a change pass that found its run changed meanwhile (another node decided): the
/// next look at the run decides again.
fn unless_stale(result: FleetResult<()>) -> FleetResult<()> {
    match result {
        Err(FleetError::Store(StoreError::Stale)) => Ok(()),
        other => other,
    }
}

fn describe_exit(exit_code: Option<i32>, signal: Option<i32>) -> String {
    match (exit_code, signal) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("ended by signal {signal}"),
        (None, None) => "ended".to_owned(),
    }
}

fn not_found_as(err: StoreError, not_found: impl FnOnce() -> FleetError) -> FleetError {
    match err {
        StoreError::NotFound => not_found(),
        err => FleetError::Store(err),
    }
}
