//! The runner: has robot processes started by the [keeper](crate::keeper), each in its own
//! process group, and carries out pause, resume, safe stop and force stop on the whole group.
//! Each run is supervised by a task that reads its output line by line, enforces its grace
//! period and maximum duration, learns its exit from the keeper and reports every change as an
//! [`AgentEvent`].
//!
//! The live runs are also recorded in a file (pid, process start time, grace period, deadline,
//! pause and stop): after a restart of the agent, [`Runner::adopt`] supervises again the runs
//! its keeper still keeps, output and exit status included. Runs the keeper lost (it died with
//! the agent) cannot be supervised: their process groups are killed and their ends reported,
//! so that no robot runs on unsupervised and none runs twice.
//!
//! **Architecture Invariant.** The runner and the keeper are the only modules of Dirigent that
//! start robot processes.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::Duration,
};

use dirigent_proto::{
    link::{AgentCommand, AgentEvent, Ending, LiveRun, OutputLine, StartSpec},
    run::Stream,
};
use jiff::Timestamp;
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader},
    sync::{mpsc, oneshot},
    time::Instant,
};

use crate::keeper::{self, ExitReceiver, KeeperCommand, KeeperLink, Kept, Request, SpawnError};
use crate::sessions::SessionsHandle;

/// Output is sent in batches of at most this many lines...
const BATCH_LINES: usize = 500;
/// ...or after at most this long.
const BATCH_DELAY: Duration = Duration::from_millis(50);
/// After the robot's process ends, its output pipes get this long to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a robot whose keeper is gone is looked at, to learn that it ended.
const ORPHAN_POLL: Duration = Duration::from_millis(500);
/// The grace period of an adopted run that was not recorded.
const DEFAULT_GRACE_SECONDS: u32 = 10;
/// The agent's record of a live run, in the run's directory.
const RECORD_FILE: &str = "record.json";

/// What the runner needs to know beyond each run's spec.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The orchestrator's URL, given to robots as `DIRIGENT_URL`.
    pub server_url: String,
    /// The agent's data directory: the keeper's socket, the robots' pipes and the record of
    /// live runs.
    pub data_dir: PathBuf,
    /// How to start a keeper when none is running.
    pub keeper: KeeperCommand,
    /// The graphical sessions, if the agent offers any.
    pub sessions: Option<SessionsHandle>,
    /// Whether the journal is full: then runs stop reading their robots' output.
    pub journal_full: tokio::sync::watch::Receiver<bool>,
}

/// A live run as recorded on disk: enough to tell its process from a later one with the same
/// pid, and to go on supervising it after a restart of the agent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Recorded {
    pid: u32,
    /// The process's start time, in clock ticks after boot (`/proc/PID/stat`); `None` if it
    /// ended before it could be read.
    started: Option<u64>,
    grace_seconds: u32,
    /// When its maximum duration runs out.
    #[serde(default)]
    deadline: Option<Timestamp>,
    #[serde(default)]
    paused: bool,
    /// A stop under way: how it will end, and when the group is killed.
    #[serde(default)]
    stopping: Option<(Ending, Timestamp)>,
    /// The graphical session it uses.
    #[serde(default)]
    session: Option<u32>,
}

/// The live runs of this agent.
pub struct Runner {
    config: RunnerConfig,
    events: mpsc::UnboundedSender<AgentEvent>,
    keeper: Option<KeeperLink>,
    runs: HashMap<String, LiveHandle>,
    ended: mpsc::UnboundedReceiver<String>,
    ended_tx: mpsc::UnboundedSender<String>,
}

struct LiveHandle {
    record: Recorded,
    control: mpsc::UnboundedSender<Control>,
}

#[derive(Debug, Clone, Copy)]
enum Control {
    Pause,
    Resume,
    Stop { grace: Duration },
    Kill,
}

impl Runner {
    /// A runner that reports on `events`.
    pub fn new(config: RunnerConfig, events: mpsc::UnboundedSender<AgentEvent>) -> Runner {
        let (ended_tx, ended) = mpsc::unbounded_channel();
        Runner {
            config,
            events,
            keeper: None,
            runs: HashMap::new(),
            ended,
            ended_tx,
        }
    }

    /// The runs alive now.
    pub fn live_runs(&mut self) -> Vec<LiveRun> {
        self.forget_ended();
        let mut live: Vec<LiveRun> = self
            .runs
            .iter()
            .map(|(run_id, handle)| LiveRun {
                run_id: run_id.clone(),
                pid: handle.record.pid,
                paused: handle.record.paused,
            })
            .collect();
        live.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        live
    }

    /// Works out the answer to a request of the server (apart from the runner's state, so
    /// that it may take its time).
    /// Streams (a watched screen) go to `outgoing`.
    pub fn answer(
        &self,
        request: dirigent_proto::link::AgentRequest,
        outgoing: mpsc::UnboundedSender<dirigent_proto::link::AgentFrame>,
    ) -> impl Future<Output = dirigent_proto::link::AgentReply> + Send + 'static {
        use base64::Engine;
        use dirigent_proto::link::{AgentReply, AgentRequest};
        let sessions = self.config.sessions.clone();
        async move {
            let Some(sessions) = sessions else {
                return AgentReply::Failed {
                    message: "this agent offers no graphical sessions".to_owned(),
                };
            };
            let answer = match request {
                AgentRequest::Screenshot { session } => {
                    sessions
                        .screenshot(session)
                        .await
                        .map(|png| AgentReply::Screenshot {
                            png: base64::engine::general_purpose::STANDARD.encode(png),
                        })
                }
                AgentRequest::RestartSession { session, force } => sessions
                    .restart(session, force)
                    .await
                    .map(|()| AgentReply::Done),
                AgentRequest::Input { session, events } => sessions
                    .input(session, events)
                    .await
                    .map(|()| AgentReply::Done),
                AgentRequest::Watch { session, watch } => sessions
                    .watch(session, watch, outgoing)
                    .await
                    .map(|()| AgentReply::Done),
                AgentRequest::Unwatch { watch } => {
                    sessions.unwatch(watch);
                    Ok(AgentReply::Done)
                }
            };
            answer.unwrap_or_else(|message| AgentReply::Failed { message })
        }
    }

    /// The graphical sessions' states now.
    pub async fn sessions(&self) -> Vec<dirigent_proto::session::SessionReport> {
        match &self.config.sessions {
            Some(sessions) => sessions.snapshot().await,
            None => Vec::new(),
        }
    }

    pub fn n_live(&mut self) -> usize {
        self.forget_ended();
        self.runs.len()
    }

    /// Carries out a command of the server. Commands about runs that are not alive here are
    /// answered with the run's end where that makes sense, and otherwise ignored.
    pub async fn apply(&mut self, command: AgentCommand) {
        self.forget_ended();
        match command {
            AgentCommand::Start(spec) => self.start(spec).await,
            AgentCommand::Pause { run_id } => self.control(&run_id, Control::Pause),
            AgentCommand::Resume { run_id } => self.control(&run_id, Control::Resume),
            AgentCommand::Stop {
                run_id,
                grace_seconds,
            } => self.control(
                &run_id,
                Control::Stop {
                    grace: Duration::from_secs(u64::from(grace_seconds)),
                },
            ),
            AgentCommand::Kill { run_id } => self.control(&run_id, Control::Kill),
            AgentCommand::Activity { .. } | AgentCommand::CancelActivity { .. } => {}
        }
    }

    /// Safe-stops every live run, each with its own grace period.
    pub fn stop_all(&mut self) {
        self.forget_ended();
        let runs: Vec<(String, u32)> = self
            .runs
            .iter()
            .map(|(run_id, handle)| (run_id.clone(), handle.record.grace_seconds))
            .collect();
        for (run_id, grace) in runs {
            self.control(
                &run_id,
                Control::Stop {
                    grace: Duration::from_secs(u64::from(grace)),
                },
            );
        }
    }

    /// The ends of these runs are journaled: their keeper may forget them (and remove their
    /// directories, which the runner does itself when the keeper is gone).
    pub async fn forget_kept(&mut self, run_ids: Vec<String>) {
        for run_id in run_ids {
            if let Some(keeper) = &mut self.keeper {
                let forget = Request::Forget {
                    run_id: run_id.clone(),
                };
                match keeper.send(&forget).await {
                    Ok(()) => continue,
                    Err(err) => {
                        tracing::warn!(%err, "the keeper went away");
                        self.keeper = None;
                    }
                }
            }
            let _ = std::fs::remove_dir_all(keeper::run_dir(&self.config.data_dir, &run_id));
        }
    }

    /// The agent stops: with no robot alive, nothing is left behind (the keeper would linger
    /// a few seconds, the X servers for good). With robots alive, everything stays for them
    /// and for the agent's next start.
    pub async fn leave(&mut self) {
        if self.n_live() != 0 {
            return;
        }
        if let Some(keeper) = &mut self.keeper {
            let _ = keeper.send(&Request::Quit).await;
        }
        if let Some(sessions) = &self.config.sessions {
            sessions.shutdown().await;
        }
    }

    fn control(&mut self, run_id: &str, control: Control) {
        let Some(handle) = self.runs.get_mut(run_id) else {
            tracing::info!(run_id, ?control, "command for a run that is not alive here");
            return;
        };
        let record = &mut handle.record;
        let now = now();
        match control {
            Control::Pause if record.stopping.is_none() => record.paused = true,
            Control::Resume => record.paused = false,
            Control::Stop { grace } if record.stopping.is_none() => {
                record.paused = false;
                let kill_at = now
                    .checked_add(jiff::SignedDuration::try_from(grace).unwrap_or_default())
                    .unwrap_or(now);
                record.stopping = Some((Ending::Stopped, kill_at));
            }
            Control::Kill => record.stopping = Some((Ending::Killed, now)),
            _ => {}
        }
        let _ = handle.control.send(control);
        self.record(run_id);
    }

    fn forget_ended(&mut self) {
        while let Ok(run_id) = self.ended.try_recv() {
            self.runs.remove(&run_id);
        }
    }

    /// Records a live run in its directory for after a restart of the agent. Not synced: it
    /// is for when the agent dies, not the machine (which takes the robots along).
    fn record(&self, run_id: &str) {
        let Some(LiveHandle { record, .. }) = self.runs.get(run_id) else {
            return;
        };
        let path = keeper::run_dir(&self.config.data_dir, run_id).join(RECORD_FILE);
        let written = serde_json::to_vec(record)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let partial = path.with_extension("partial");
                std::fs::write(&partial, bytes)?;
                std::fs::rename(&partial, &path)
            });
        if let Err(err) = written {
            tracing::error!(%err, path = %path.display(), "recording a live run");
        }
    }

    /// The runs recorded in their directories.
    fn recorded(&self) -> BTreeMap<String, Option<Recorded>> {
        keeper::run_dirs(&self.config.data_dir)
            .into_iter()
            .map(|run_id| {
                let path = keeper::run_dir(&self.config.data_dir, &run_id).join(RECORD_FILE);
                let record = std::fs::read(&path)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok());
                (run_id, record)
            })
            .collect()
    }

    /// After a restart of the agent: supervises again the runs its earlier life left, as far
    /// as their keeper still keeps them; `last_seq` says how far each run's output was
    /// reported. The runs the keeper lost (their output pipes and exit statuses went with it)
    /// cannot be supervised: the process group of each that is still alive is killed, and
    /// every one is reported as ended ([`Ending::Abandoned`]). Answers how many runs were
    /// adopted and how many abandoned.
    pub async fn adopt(&mut self, last_seq: impl Fn(&str) -> u64) -> (usize, usize) {
        let mut recorded = self.recorded();
        let kept = match KeeperLink::connect(&self.config.data_dir).await {
            Ok((link, kept)) => {
                self.keeper = Some(link);
                kept
            }
            Err(_) => Vec::new(),
        };
        let adopted = kept.len();
        for (kept, exit) in kept {
            let record = recorded.remove(&kept.run_id).flatten();
            let seq = last_seq(&kept.run_id);
            self.adopt_one(kept, exit, record, seq).await;
        }
        let now = now();
        let mut abandoned = 0;
        for (run_id, run) in &recorded {
            let _ = std::fs::remove_dir_all(keeper::run_dir(&self.config.data_dir, run_id));
            // Without a record, the keeper died before the run could be reported started.
            let Some(run) = run else { continue };
            abandoned += 1;
            if let (Some(number), Some(sessions)) = (run.session, &self.config.sessions) {
                sessions.release(number, run_id);
            }
            let alive = run.started.is_some() && process_start_time(run.pid) == run.started;
            if alive {
                signal(pid_group(run.pid), Signal::SIGKILL);
            }
            tracing::warn!(run_id, pid = run.pid, killed = alive, "abandoning a run");
            let _ = self.events.send(AgentEvent::Exited {
                run_id: run_id.clone(),
                at: now,
                exit_code: None,
                signal: alive.then_some(Signal::SIGKILL as i32),
                ending: Ending::Abandoned,
                note: None,
            });
        }
        (adopted, abandoned)
    }

    async fn adopt_one(
        &mut self,
        kept: Kept,
        exit: ExitReceiver,
        record: Option<Recorded>,
        seq: u64,
    ) {
        tracing::info!(
            run_id = kept.run_id,
            pid = kept.pid,
            ended = kept.exit.is_some(),
            "adopting a run"
        );
        let record = record
            .filter(|record| record.pid == kept.pid)
            .unwrap_or_else(|| Recorded {
                pid: kept.pid,
                started: process_start_time(kept.pid),
                grace_seconds: DEFAULT_GRACE_SECONDS,
                deadline: None,
                paused: false,
                stopping: None,
                session: None,
            });
        // Its session is its own again; if it is gone, the run is told at once.
        let display_died = match record.session {
            Some(number) => {
                let (died, died_rx) = oneshot::channel();
                if let Err(reason) = self.acquire(number, &kept.run_id, died).await {
                    let (told, told_rx) = oneshot::channel();
                    let _ = told.send(format!("its display is gone: {reason}"));
                    Some(told_rx)
                } else {
                    Some(died_rx)
                }
            }
            None => None,
        };
        self.supervise(kept.run_id, record, exit, seq, display_died);
    }

    /// Takes a graphical session for a run: the environment that points the run at it.
    async fn acquire(
        &self,
        number: u32,
        run_id: &str,
        died: oneshot::Sender<String>,
    ) -> Result<crate::sessions::DisplayEnv, String> {
        match &self.config.sessions {
            Some(sessions) => sessions.acquire(number, run_id, died).await,
            None => Err("this agent offers no graphical sessions".to_owned()),
        }
    }

    async fn start(&mut self, spec: StartSpec) {
        if self.runs.contains_key(&spec.run_id) {
            tracing::info!(
                run_id = spec.run_id,
                "start of a run that is alive already: ignored"
            );
            return;
        }
        let now = now();
        let (died, died_rx) = oneshot::channel();
        let display = match spec.session {
            Some(number) => match self.acquire(number, &spec.run_id, died).await {
                Ok(env) => env,
                Err(reason) => {
                    let _ = self.events.send(AgentEvent::StartFailed {
                        run_id: spec.run_id,
                        reason,
                        at: now,
                    });
                    return;
                }
            },
            None => Vec::new(),
        };
        let (pid, exit) = match self.spawn(&spec, display).await {
            Ok(spawned) => spawned,
            Err(reason) => {
                if let (Some(number), Some(sessions)) = (spec.session, &self.config.sessions) {
                    sessions.release(number, &spec.run_id);
                }
                let _ = self.events.send(AgentEvent::StartFailed {
                    run_id: spec.run_id,
                    reason,
                    at: now,
                });
                return;
            }
        };
        tracing::info!(
            run_id = spec.run_id,
            robot = spec.robot,
            pid,
            "started a robot"
        );
        let _ = self.events.send(AgentEvent::Started {
            run_id: spec.run_id.clone(),
            pid,
            at: now,
            token_digest: spec.run_token.as_deref().map(token_digest),
        });
        let record = Recorded {
            pid,
            started: process_start_time(pid),
            grace_seconds: spec.stop_grace_seconds,
            deadline: spec.max_duration_seconds.and_then(|seconds| {
                now.checked_add(jiff::SignedDuration::from_secs(i64::from(seconds)))
                    .ok()
            }),
            paused: false,
            stopping: None,
            session: spec.session,
        };
        let display_died = spec.session.map(|_| died_rx);
        self.supervise(spec.run_id, record, exit, 0, display_died);
    }

    /// Starts a keeper if none runs: an agent with graphical sessions needs one from the
    /// start, to stop its X servers should the agent go away for good.
    pub async fn ensure_keeper(&mut self) {
        if self.keeper.is_none() {
            match KeeperLink::start(&self.config.data_dir, &self.config.keeper).await {
                Ok(keeper) => self.keeper = Some(keeper),
                Err(err) => tracing::error!(err, "cannot start the keeper"),
            }
        }
    }

    /// Has the keeper (started if need be) spawn the run's process.
    async fn spawn(
        &mut self,
        spec: &StartSpec,
        display: crate::sessions::DisplayEnv,
    ) -> Result<(u32, ExitReceiver), String> {
        if !keeper::valid_run_id(&spec.run_id) {
            return Err(format!("invalid run id {:?}", spec.run_id));
        }
        let mut env: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)))
            .collect();
        env.extend(spec.env.clone());
        env.extend(display);
        env.insert("DIRIGENT_URL".to_owned(), self.config.server_url.clone());
        env.insert("DIRIGENT_RUN_ID".to_owned(), spec.run_id.clone());
        env.insert("DIRIGENT_ROBOT".to_owned(), spec.robot.clone());
        match &spec.run_token {
            Some(token) => env.insert("DIRIGENT_RUN_TOKEN".to_owned(), token.clone()),
            None => env.remove("DIRIGENT_RUN_TOKEN"),
        };
        let request = Request::Spawn {
            run_id: spec.run_id.clone(),
            argv: spec.argv.clone(),
            env: env.into_iter().collect(),
            working_dir: spec.working_dir.clone(),
        };
        // A keeper that went away is replaced once.
        let mut gone = String::new();
        for _ in 0..2 {
            let keeper = match &mut self.keeper {
                Some(keeper) => keeper,
                None => self
                    .keeper
                    .insert(KeeperLink::start(&self.config.data_dir, &self.config.keeper).await?),
            };
            match keeper.spawn(&request).await {
                Ok(spawned) => return Ok(spawned),
                Err(SpawnError::Failed(reason)) => return Err(reason),
                Err(SpawnError::KeeperGone(reason)) => {
                    tracing::warn!(reason, "the keeper went away");
                    self.keeper = None;
                    gone = reason;
                }
            }
        }
        Err(format!("the robots' keeper keeps going away: {gone}"))
    }

    /// Supervises a run from `record` on; its output numbering goes on after `last_seq`;
    /// `display_died` tells it when the display of its graphical session died.
    fn supervise(
        &mut self,
        run_id: String,
        record: Recorded,
        exit: ExitReceiver,
        last_seq: u64,
        display_died: Option<oneshot::Receiver<String>>,
    ) {
        let (control, control_rx) = mpsc::unbounded_channel();
        let session = record
            .session
            .zip(self.config.sessions.clone())
            .zip(display_died);
        let supervisor = Supervisor {
            run_id: run_id.clone(),
            pid: record.pid,
            grace: Duration::from_secs(u64::from(record.grace_seconds)),
            pipes: keeper::pipe_paths(&keeper::run_dir(&self.config.data_dir, &run_id)),
            events: self.events.clone(),
            ended: self.ended_tx.clone(),
            journal_full: self.config.journal_full.clone(),
        };
        tokio::spawn(supervisor.run(exit, control_rx, record.clone(), last_seq, session));
        self.runs
            .insert(run_id.clone(), LiveHandle { record, control });
        self.record(&run_id);
    }
}

/// Watches one run from spawn (or adoption) to its end.
struct Supervisor {
    run_id: String,
    pid: u32,
    /// Its grace period when its maximum duration runs out.
    grace: Duration,
    /// Its standard output and error.
    pipes: [PathBuf; 2],
    events: mpsc::UnboundedSender<AgentEvent>,
    ended: mpsc::UnboundedSender<String>,
    journal_full: tokio::sync::watch::Receiver<bool>,
}

impl Supervisor {
    async fn run(
        mut self,
        exit: ExitReceiver,
        mut control: mpsc::UnboundedReceiver<Control>,
        resume: Recorded,
        last_seq: u64,
        session: Option<((u32, SessionsHandle), oneshot::Receiver<String>)>,
    ) {
        let run_id = self.run_id.clone();
        let group = pid_group(self.pid);
        let (lines_tx, mut lines) = mpsc::channel::<(Stream, String)>(1024);
        let mut lost_pipes = Vec::new();
        let mut readers = Vec::new();
        let streams = [
            (Stream::Stdout, "standard output"),
            (Stream::Stderr, "standard error"),
        ];
        for (path, (stream, name)) in self.pipes.iter().zip(streams) {
            match open_pipe(path) {
                Ok(pipe) => readers.push(tokio::spawn(read_lines(pipe, stream, lines_tx.clone()))),
                Err(err) => {
                    tracing::warn!(run_id, %err, path = %path.display(), "output pipe lost");
                    lost_pipes.push(name);
                }
            }
        }
        drop(lines_tx);

        let mut output = OutputBatcher::new(run_id.clone(), last_seq);
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let mut deadline_duration = resume.deadline.map_or(far, instant_at);
        let mut deadline_grace = far;
        let mut flush_at = far;
        let mut ending = Ending::Natural;
        let mut stopping = false;
        let mut paused = resume.paused;
        if let Some((stop_ending, kill_at)) = resume.stopping {
            // A stop under way when the agent restarted goes on.
            stopping = true;
            ending = stop_ending;
            deadline_grace = instant_at(kill_at);
            signal(group, Signal::SIGTERM);
            signal(group, Signal::SIGCONT);
            paused = false;
        }
        let exit = wait_exit(exit, self.pid);
        tokio::pin!(exit);
        let mut notes = Vec::new();
        let (session, display_died) = match session {
            Some((session, died)) => (Some(session), Some(died)),
            None => (None, None),
        };
        // Fused: once told (or never to be told), it stays quiet.
        let display_died = futures_util::FutureExt::fuse(async move {
            match display_died {
                Some(died) => died.await.ok(),
                None => None,
            }
        });
        tokio::pin!(display_died);

        // The screen the run ends on is kept once, just before the robot is signalled to end
        // (its windows go with it) or as soon as it has ended.
        let mut last_frame_kept = session.is_none();
        let keep_last_frame = async |kept: &mut bool| {
            if !*kept {
                *kept = true;
                if let Some((number, sessions)) = &session {
                    sessions.last_frame(*number, &run_id).await;
                }
            }
        };
        // While the journal is full, output is not read: the robot waits on its writes.
        let mut held_back = 0u32;
        let mut held = *self.journal_full.borrow_and_update();
        if held {
            held_back += 1;
        }
        let status = loop {
            tokio::select! {
                status = &mut exit => break status,
                Ok(()) = self.journal_full.changed() => {
                    let full = *self.journal_full.borrow_and_update();
                    if full && !held {
                        held_back += 1;
                    }
                    held = full;
                }
                Some(reason) = &mut display_died => {
                    // Its display is gone: it cannot go on, and ends as a failure.
                    notes.push(reason);
                    signal(group, Signal::SIGKILL);
                }
                Some((stream, text)) = lines.recv(), if !held => {
                    if output.push(stream, text) {
                        self.send(output.take());
                        flush_at = far;
                    } else if flush_at == far {
                        flush_at = Instant::now() + BATCH_DELAY;
                    }
                }
                () = tokio::time::sleep_until(flush_at) => {
                    self.send(output.take());
                    flush_at = far;
                }
                Some(control) = control.recv() => match control {
                    Control::Pause if !paused && !stopping => {
                        signal(group, Signal::SIGSTOP);
                        paused = true;
                        self.send(Some(AgentEvent::Paused { run_id: run_id.clone(), at: now() }));
                    }
                    Control::Resume if paused => {
                        signal(group, Signal::SIGCONT);
                        paused = false;
                        self.send(Some(AgentEvent::Resumed { run_id: run_id.clone(), at: now() }));
                    }
                    Control::Stop { grace } if !stopping => {
                        keep_last_frame(&mut last_frame_kept).await;
                        stopping = true;
                        ending = Ending::Stopped;
                        deadline_grace = self.safe_stop(group, grace, &mut paused);
                    }
                    Control::Kill => {
                        keep_last_frame(&mut last_frame_kept).await;
                        ending = Ending::Killed;
                        signal(group, Signal::SIGKILL);
                    }
                    control => tracing::debug!(run_id, ?control, "nothing to do"),
                },
                () = tokio::time::sleep_until(deadline_grace) => {
                    ending = if ending == Ending::TimedOut { Ending::TimedOut } else { Ending::Killed };
                    signal(group, Signal::SIGKILL);
                    deadline_grace = far;
                }
                () = tokio::time::sleep_until(deadline_duration) => {
                    deadline_duration = far;
                    keep_last_frame(&mut last_frame_kept).await;
                    if !stopping {
                        stopping = true;
                        deadline_grace = self.safe_stop(group, self.grace, &mut paused);
                    }
                    ending = Ending::TimedOut;
                }
            }
        };

        keep_last_frame(&mut last_frame_kept).await;
        // Nothing of the robot may outlive it: whatever is left of its group goes too.
        signal(group, Signal::SIGKILL);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while let Some((stream, text)) = lines.recv().await {
                if output.push(stream, text) {
                    self.send(output.take());
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                run_id,
                "output pipes still open after the run ended (a process left its group)"
            );
        }
        for reader in readers {
            reader.abort();
        }
        self.send(output.take());

        if let Some((number, sessions)) = &session {
            sessions.release(*number, &run_id);
        }
        if 0 < held_back {
            notes.push(format!(
                "its output waited {held_back} time(s) for the agent's journal, full while the \
                 orchestrator was away or slow: the robot's writes waited meanwhile"
            ));
        }
        if !lost_pipes.is_empty() {
            notes.push(format!(
                "its {} was lost when the agent restarted",
                lost_pipes.join(" and ")
            ));
        }
        let (exit_code, signal_number) = match status {
            Some(exit) => (exit.code, exit.signal),
            None => {
                if ending == Ending::Natural {
                    ending = Ending::Abandoned;
                }
                notes.push("its keeper went away, and its exit status with it".to_owned());
                (None, None)
            }
        };
        let _ = self.ended.send(run_id.clone());
        self.send(Some(AgentEvent::Exited {
            run_id,
            at: now(),
            exit_code,
            signal: signal_number,
            ending,
            note: (!notes.is_empty()).then(|| notes.join("; ")),
        }));
    }

    /// SIGTERM to the group (continued first if paused), and the deadline for SIGKILL.
    fn safe_stop(&self, group: Pid, grace: Duration, paused: &mut bool) -> Instant {
        signal(group, Signal::SIGTERM);
        if *paused {
            signal(group, Signal::SIGCONT);
            *paused = false;
        }
        self.send(Some(AgentEvent::Stopping {
            run_id: self.run_id.clone(),
            at: now(),
        }));
        Instant::now() + grace
    }

    fn send(&self, event: Option<AgentEvent>) {
        if let Some(event) = event {
            let _ = self.events.send(event);
        }
    }
}

/// The robot's exit as its keeper tells it; `None` when the keeper went away first, once the
/// process is seen gone.
async fn wait_exit(exit: ExitReceiver, pid: u32) -> Option<keeper::Exit> {
    if let Ok(exit) = exit.await {
        return Some(exit);
    }
    let started = process_start_time(pid);
    let mut poll = tokio::time::interval(ORPHAN_POLL);
    loop {
        poll.tick().await;
        // A zombie of the dead keeper's is reaped by init soon; until then it counts as gone.
        if started.is_none() || process_start_time(pid) != started || is_zombie(pid) {
            return None;
        }
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, after)| after.trim_start().starts_with('Z'))
    })
}

/// Opens the reading end of a robot's output pipe.
fn open_pipe(path: &Path) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::OpenOptions::new().open_receiver(path)
}

/// The `Instant` of a wall-clock time (now, if it is past).
fn instant_at(at: Timestamp) -> Instant {
    let ahead = at.duration_since(now());
    Instant::now() + Duration::try_from(ahead).unwrap_or_default()
}

fn pid_group(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

fn signal(group: Pid, signal: Signal) {
    // A group id of 0 or 1 would reach the agent's own group or every process: never a run.
    if group.as_raw() <= 1 {
        tracing::error!(
            group = group.as_raw(),
            "refusing to signal this process group"
        );
        return;
    }
    // ESRCH means the group is gone already: nothing to do.
    let _ = killpg(group, signal);
}

/// Collects output lines into numbered batches.
struct OutputBatcher {
    run_id: String,
    next_seq: u64,
    lines: Vec<OutputLine>,
}

impl OutputBatcher {
    /// A batcher whose first line follows `last_seq`.
    fn new(run_id: String, last_seq: u64) -> OutputBatcher {
        OutputBatcher {
            run_id,
            next_seq: last_seq + 1,
            lines: Vec::new(),
        }
    }

    /// Adds a line; answers whether the batch is full.
    fn push(&mut self, stream: Stream, text: String) -> bool {
        self.lines.push(OutputLine {
            seq: self.next_seq,
            stream,
            at: now(),
            text,
        });
        self.next_seq += 1;
        BATCH_LINES <= self.lines.len()
    }

    fn take(&mut self) -> Option<AgentEvent> {
        if self.lines.is_empty() {
            return None;
        }
        Some(AgentEvent::Output {
            run_id: self.run_id.clone(),
            lines: std::mem::take(&mut self.lines),
        })
    }
}

/// Reads a pipe line by line until its end. A line longer than the log store keeps is cut,
/// marked, and the rest of it skipped.
pub(crate) async fn read_lines(
    pipe: impl AsyncRead + Unpin,
    stream: Stream,
    lines: mpsc::Sender<(Stream, String)>,
) {
    use dirigent_domain::log::{MAX_LINE_BYTES, TRUNCATED_MARKER};
    let mut reader = BufReader::new(pipe);
    let mut buffer = Vec::new();
    let mut skipped = Vec::new();
    loop {
        buffer.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut buffer)
            .await;
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let mut cut = false;
                if buffer.last() == Some(&b'\n') {
                    buffer.pop();
                    if buffer.last() == Some(&b'\r') {
                        buffer.pop();
                    }
                } else if buffer.len() == MAX_LINE_BYTES {
                    // The rest of the line, up to its end, is not kept.
                    loop {
                        skipped.clear();
                        match (&mut reader)
                            .take(MAX_LINE_BYTES as u64)
                            .read_until(b'\n', &mut skipped)
                            .await
                        {
                            Ok(0) | Err(_) => break,
                            Ok(_) if skipped.last() == Some(&b'\n') => break,
                            Ok(_) => {}
                        }
                    }
                    cut = true;
                }
                let mut text = String::from_utf8_lossy(&buffer).into_owned();
                if cut {
                    text.push_str(TRUNCATED_MARKER);
                }
                if lines.send((stream, text)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The wall clock, at millisecond precision, for the times of events.
pub(crate) fn now() -> Timestamp {
    #[allow(
        clippy::disallowed_methods,
        reason = "events carry the agent's wall-clock time"
    )]
    let now = Timestamp::now();
    Timestamp::from_millisecond(now.as_millisecond()).unwrap_or(now)
}

/// The SHA-256 of a token in hex: how the server knows a run's token.
fn token_digest(token: &str) -> String {
    crate::sha256_hex(token.as_bytes())
}

/// When the process `pid` started, in clock ticks after boot (field 22 of `/proc/PID/stat`);
/// `None` when there is no such process.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after its end.
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.split_whitespace().nth(19)?.parse().ok()
}
