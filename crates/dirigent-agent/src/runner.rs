//! The runner: starts robot processes, each in its own process group, and carries out pause,
//! resume, safe stop and force stop on the whole group. Each run is supervised by a task that
//! reads its output line by line, enforces its grace period and maximum duration, reaps it and
//! reports every change as an [`AgentEvent`].
//!
//! The live runs are also recorded in a file (pid and process start time): after a restart of
//! the agent, [`Runner::abandon_orphans`] kills the process groups of those still alive and
//! reports each run's end, so that no robot runs on unsupervised and none runs twice.
//!
//! **Architecture Invariant.** This is the only module of Dirigent that spawns robot
//! processes. Runs are spawned without `pre_exec`, so the standard library can use
//! `posix_spawn`; the group is made with `process_group(0)`.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    process::Stdio,
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
    process::Command,
    sync::mpsc,
    time::Instant,
};

/// A line longer than this is cut into several lines.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// Output is sent in batches of at most this many lines...
const BATCH_LINES: usize = 500;
/// ...or after at most this long.
const BATCH_DELAY: Duration = Duration::from_millis(50);
/// After the robot's process ends, its output pipes get this long to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What the runner needs to know beyond each run's spec.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The orchestrator's URL, given to robots as `DIRIGENT_URL`.
    pub server_url: String,
    /// Where the live runs are recorded for after a restart of the agent; none for a runner
    /// that leaves nothing behind.
    pub live_record: Option<PathBuf>,
}

/// A live run as recorded on disk: enough to tell its process from a later one with the same
/// pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Recorded {
    pid: u32,
    /// The process's start time, in clock ticks after boot (`/proc/PID/stat`).
    started: u64,
}

/// The live runs of this agent.
pub struct Runner {
    config: RunnerConfig,
    events: mpsc::UnboundedSender<AgentEvent>,
    runs: HashMap<String, LiveHandle>,
    ended: mpsc::UnboundedReceiver<String>,
    ended_tx: mpsc::UnboundedSender<String>,
}

struct LiveHandle {
    pid: u32,
    /// The run's grace period for a safe stop.
    grace: Duration,
    /// Its process's start time (`/proc/PID/stat`), if it could be read.
    started: Option<u64>,
    paused: bool,
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
                pid: handle.pid,
                paused: handle.paused,
            })
            .collect();
        live.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        live
    }

    pub fn n_live(&mut self) -> usize {
        self.forget_ended();
        self.runs.len()
    }

    /// Carries out a command of the server. Commands about runs that are not alive here are
    /// answered with the run's end where that makes sense, and otherwise ignored.
    pub fn apply(&mut self, command: AgentCommand) {
        self.forget_ended();
        match command {
            AgentCommand::Start(spec) => self.start(spec),
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
        }
    }

    /// Safe-stops every live run, each with its own grace period.
    pub fn stop_all(&mut self) {
        self.forget_ended();
        for handle in self.runs.values() {
            let _ = handle.control.send(Control::Stop {
                grace: handle.grace,
            });
        }
    }

    fn control(&mut self, run_id: &str, control: Control) {
        let Some(handle) = self.runs.get_mut(run_id) else {
            tracing::info!(run_id, ?control, "command for a run that is not alive here");
            return;
        };
        match control {
            Control::Pause => handle.paused = true,
            Control::Resume => handle.paused = false,
            Control::Stop { .. } | Control::Kill => {}
        }
        let _ = handle.control.send(control);
    }

    fn forget_ended(&mut self) {
        let mut forgot = false;
        while let Ok(run_id) = self.ended.try_recv() {
            forgot |= self.runs.remove(&run_id).is_some();
        }
        if forgot {
            self.record_live();
        }
    }

    /// Records the live runs (pid and start time) for after a restart of the agent. Not
    /// synced: it is for when the agent dies, not the machine (which takes the robots along).
    fn record_live(&self) {
        let Some(path) = &self.config.live_record else {
            return;
        };
        let live: BTreeMap<&str, Recorded> = self
            .runs
            .iter()
            .filter_map(|(run_id, handle)| {
                let started = handle.started?;
                Some((
                    run_id.as_str(),
                    Recorded {
                        pid: handle.pid,
                        started,
                    },
                ))
            })
            .collect();
        let written = serde_json::to_vec(&live)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let partial = path.with_extension("partial");
                std::fs::write(&partial, bytes)?;
                std::fs::rename(&partial, path)
            });
        if let Err(err) = written {
            tracing::error!(%err, path = %path.display(), "recording the live runs");
        }
    }

    /// After a restart of the agent: the runs its earlier life recorded as live cannot be
    /// supervised any more (their output pipes and exit statuses went with it). Kills the
    /// process group of each that is still alive, and reports every one as ended
    /// ([`Ending::Abandoned`]). Answers how many it reported.
    pub fn abandon_orphans(&mut self) -> usize {
        let Some(path) = &self.config.live_record else {
            return 0;
        };
        let recorded: BTreeMap<String, Recorded> = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                tracing::error!(%err, path = %path.display(), "unreadable record of live runs");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        let now = now();
        for (run_id, run) in &recorded {
            let alive = process_start_time(run.pid) == Some(run.started);
            if alive {
                let group = Pid::from_raw(i32::try_from(run.pid).unwrap_or(i32::MAX));
                let _ = killpg(group, Signal::SIGKILL);
            }
            tracing::warn!(
                run_id,
                pid = run.pid,
                killed = alive,
                "abandoning a run of an earlier life"
            );
            let _ = self.events.send(AgentEvent::Exited {
                run_id: run_id.clone(),
                at: now,
                exit_code: None,
                signal: alive.then_some(Signal::SIGKILL as i32),
                ending: Ending::Abandoned,
            });
        }
        self.record_live();
        recorded.len()
    }

    fn start(&mut self, spec: StartSpec) {
        if self.runs.contains_key(&spec.run_id) {
            tracing::info!(
                run_id = spec.run_id,
                "start of a run that is alive already: ignored"
            );
            return;
        }
        let now = now();
        let child = match spawn(&self.config, &spec) {
            Ok(child) => child,
            Err(reason) => {
                let _ = self.events.send(AgentEvent::StartFailed {
                    run_id: spec.run_id,
                    reason,
                    at: now,
                });
                return;
            }
        };
        let Some(pid) = child.id() else {
            let reason = "the process ended before it could be watched".to_owned();
            let _ = self.events.send(AgentEvent::StartFailed {
                run_id: spec.run_id,
                reason,
                at: now,
            });
            return;
        };
        let _ = self.events.send(AgentEvent::Started {
            run_id: spec.run_id.clone(),
            pid,
            at: now,
            token_digest: spec.run_token.as_deref().map(token_digest),
        });
        let (control, control_rx) = mpsc::unbounded_channel();
        self.runs.insert(
            spec.run_id.clone(),
            LiveHandle {
                pid,
                grace: Duration::from_secs(u64::from(spec.stop_grace_seconds)),
                started: process_start_time(pid),
                paused: false,
                control,
            },
        );
        self.record_live();
        let supervisor = Supervisor {
            spec,
            pid,
            events: self.events.clone(),
            ended: self.ended_tx.clone(),
        };
        tokio::spawn(supervisor.run(child, control_rx));
    }
}

fn spawn(config: &RunnerConfig, spec: &StartSpec) -> Result<tokio::process::Child, String> {
    let Some((program, args)) = spec.argv.split_first() else {
        return Err("the robot has no program to run".to_owned());
    };
    #[allow(
        clippy::disallowed_methods,
        reason = "the runner is where robot processes are spawned"
    )]
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(&spec.env)
        .env("DIRIGENT_URL", &config.server_url)
        .env("DIRIGENT_RUN_ID", &spec.run_id)
        .env("DIRIGENT_ROBOT", &spec.robot)
        .envs(
            spec.run_token
                .iter()
                .map(|token| ("DIRIGENT_RUN_TOKEN", token)),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(dir) = &spec.working_dir {
        command.current_dir(dir);
    }
    command
        .spawn()
        .map_err(|err| format!("cannot start {program:?}: {err}"))
}

/// Watches one run from spawn to reaping.
struct Supervisor {
    spec: StartSpec,
    pid: u32,
    events: mpsc::UnboundedSender<AgentEvent>,
    ended: mpsc::UnboundedSender<String>,
}

impl Supervisor {
    async fn run(
        self,
        mut child: tokio::process::Child,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) {
        let run_id = self.spec.run_id.clone();
        let group = Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX));
        let (lines_tx, mut lines) = mpsc::channel::<(Stream, String)>(1024);
        let readers = [
            child
                .stdout
                .take()
                .map(|out| tokio::spawn(read_lines(out, Stream::Stdout, lines_tx.clone()))),
            child
                .stderr
                .take()
                .map(|err| tokio::spawn(read_lines(err, Stream::Stderr, lines_tx.clone()))),
        ];
        drop(lines_tx);

        let mut output = OutputBatcher::new(run_id.clone());
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let mut deadline_duration = match self.spec.max_duration_seconds {
            Some(seconds) => Instant::now() + Duration::from_secs(u64::from(seconds)),
            None => far,
        };
        let mut deadline_grace = far;
        let mut flush_at = far;
        let mut ending = Ending::Natural;
        let mut stopping = false;
        let mut paused = false;

        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                Some((stream, text)) = lines.recv() => {
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
                        stopping = true;
                        ending = Ending::Stopped;
                        deadline_grace = self.safe_stop(group, grace, &mut paused);
                    }
                    Control::Kill => {
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
                    if !stopping {
                        stopping = true;
                        let grace = Duration::from_secs(u64::from(self.spec.stop_grace_seconds));
                        deadline_grace = self.safe_stop(group, grace, &mut paused);
                    }
                    ending = Ending::TimedOut;
                }
            }
        };

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
        for reader in readers.into_iter().flatten() {
            reader.abort();
        }
        self.send(output.take());

        let (exit_code, signal_number) = match status {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                (status.code(), status.signal())
            }
            Err(err) => {
                tracing::error!(run_id, %err, "waiting for the robot failed");
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
            run_id: self.spec.run_id.clone(),
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
    fn new(run_id: String) -> OutputBatcher {
        OutputBatcher {
            run_id,
            next_seq: 1,
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

async fn read_lines(
    pipe: impl AsyncRead + Unpin,
    stream: Stream,
    lines: mpsc::Sender<(Stream, String)>,
) {
    let mut reader = BufReader::new(pipe);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut buffer)
            .await;
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if buffer.last() == Some(&b'\n') {
                    buffer.pop();
                    if buffer.last() == Some(&b'\r') {
                        buffer.pop();
                    }
                }
                let text = String::from_utf8_lossy(&buffer).into_owned();
                if lines.send((stream, text)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The wall clock, at millisecond precision, for the times of events.
fn now() -> Timestamp {
    #[allow(
        clippy::disallowed_methods,
        reason = "events carry the agent's wall-clock time"
    )]
    let now = Timestamp::now();
    Timestamp::from_millisecond(now.as_millisecond()).unwrap_or(now)
}

/// The SHA-256 of a token in hex: how the server knows a run's token.
fn token_digest(token: &str) -> String {
    use sha2::Digest;
    use std::fmt::Write;
    let mut hex = String::with_capacity(64);
    for byte in sha2::Sha256::digest(token.as_bytes()) {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// When the process `pid` started, in clock ticks after boot (field 22 of `/proc/PID/stat`);
/// `None` when there is no such process.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after its end.
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.split_whitespace().nth(19)?.parse().ok()
}
