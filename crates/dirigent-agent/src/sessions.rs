//! Graphical sessions: the X servers (Debian's `xvfb`) this agent runs and keeps for robots
//! that need a desktop. Each session has its own display and X authority cookie (never an open
//! display), and optionally a window manager or desktop started in it.
//!
//! One task owns the sessions: it starts their X servers, hands a ready one to a run (its
//! `DISPLAY` and `XAUTHORITY`), makes it anew when the run ends (so that no window of one run
//! is left for the next), and watches each X server: one that dies is started again, the
//! change reported with its cause, and the run using it told so. Every change is reported as
//! an [`AgentEvent::Session`].
//!
//! X servers are recorded in `DATA/sessions/N/server.json`: after a restart of the agent those
//! still alive are kept, with the runs using them.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use dirigent_proto::{
    link::{AgentEvent, AgentFrame},
    session::{InputEvent, SessionOffer, SessionReport, SessionState},
};
use nix::sys::signal::{Signal, killpg};
use tokio::sync::{mpsc, oneshot};

/// How often the X servers are looked at.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// How long an X server gets to come up.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// After this many failed starts in a row a session is `failed`, and tried again only at
/// this pace.
const FAILED_AFTER: u32 = 3;
const FAILED_RETRY: Duration = Duration::from_secs(30);
/// The displays tried: `:100` and up, clear of those people use.
const FIRST_DISPLAY: u32 = 100;
const LAST_DISPLAY: u32 = 999;
/// The length of an X cookie (`MIT-MAGIC-COOKIE-1`).
const COOKIE_BYTES: usize = 16;
/// A screenshot holds at most this many pixels (8K).
const MAX_SCREENSHOT_PIXELS: u64 = 7680 * 4320;
/// Frames kept with runs are at most this wide.
const FRAME_WIDTH: u32 = 640;
/// A watched screen is looked at for changes this often (at most 25 frames a second).
const WATCH_FRAME_EVERY: Duration = Duration::from_millis(40);

/// The sessions an agent offers.
#[derive(Debug, Clone)]
pub struct SessionsConfig {
    pub count: u32,
    pub width: u32,
    pub height: u32,
    /// A window manager or desktop started in each session (argv).
    pub desktop: Vec<String>,
    /// The X server program.
    pub xvfb: String,
    /// How often a run's screen is kept as a thumbnail while it runs; `None` for never.
    pub frame_every: Option<Duration>,
}

impl SessionsConfig {
    /// What the agent says it offers: nothing usable when the X server program is missing.
    pub fn offer(&self) -> SessionOffer {
        SessionOffer {
            count: self.count,
            width: self.width,
            height: self.height,
            unavailable: (0 < self.count && find_program(&self.xvfb).is_none())
                .then(|| format!("`xvfb` is not installed (no {} program)", self.xvfb)),
        }
    }
}

/// Where the runner asks for sessions.
#[derive(Debug, Clone)]
pub struct SessionsHandle {
    requests: mpsc::UnboundedSender<Request>,
}

/// The environment a run gets for its session.
pub type DisplayEnv = Vec<(String, String)>;

#[derive(Debug)]
enum Request {
    /// A run takes (or, adopted after a restart, takes again) a session; `died` is told why
    /// should its X server die under it.
    Acquire {
        number: u32,
        run_id: String,
        died: oneshot::Sender<String>,
        reply: oneshot::Sender<Result<DisplayEnv, String>>,
    },
    /// The run ended: the session is made anew for the next.
    Release {
        number: u32,
        run_id: String,
    },
    Snapshot {
        reply: oneshot::Sender<Result<Vec<SessionReport>, String>>,
    },
    /// The agent stops with no run alive: the X servers go.
    Shutdown {
        done: oneshot::Sender<()>,
    },
    Screenshot {
        number: u32,
        reply: oneshot::Sender<Result<Vec<u8>, String>>,
    },
    Input {
        number: u32,
        events: Vec<InputEvent>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// The run's screen as it ends, kept with it; `done` once reported.
    LastFrame {
        number: u32,
        run_id: String,
        done: oneshot::Sender<()>,
    },
    /// Someone watches a session: its changes go to `screens` until `Unwatch`.
    Watch {
        number: u32,
        watch: u64,
        screens: mpsc::UnboundedSender<AgentFrame>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Unwatch {
        watch: u64,
    },
    /// An operator makes a session anew.
    Restart {
        number: u32,
        force: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

impl SessionsHandle {
    /// Sends the request `make` builds around its reply channel, and waits for the answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Request,
    ) -> Result<T, String> {
        let (reply, answer) = oneshot::channel();
        if self.requests.send(make(reply)).is_err() {
            return Err("this agent offers no graphical sessions".to_owned());
        }
        answer
            .await
            .unwrap_or_else(|_| Err("the graphical sessions stopped".to_owned()))
    }

    /// Sends the request `make` builds around its completion channel, and waits until done.
    async fn tell(&self, make: impl FnOnce(oneshot::Sender<()>) -> Request) {
        let (done, finished) = oneshot::channel();
        if self.requests.send(make(done)).is_ok() {
            let _ = finished.await;
        }
    }

    pub async fn acquire(
        &self,
        number: u32,
        run_id: &str,
        died: oneshot::Sender<String>,
    ) -> Result<DisplayEnv, String> {
        let run_id = run_id.to_owned();
        self.ask(|reply| Request::Acquire {
            number,
            run_id,
            died,
            reply,
        })
        .await
    }

    pub fn release(&self, number: u32, run_id: &str) {
        let _ = self.requests.send(Request::Release {
            number,
            run_id: run_id.to_owned(),
        });
    }

    /// Stops every X server (the agent stops with no run alive).
    pub async fn shutdown(&self) {
        self.tell(|done| Request::Shutdown { done }).await;
    }

    /// A screenshot of a session, as PNG.
    pub async fn screenshot(&self, number: u32) -> Result<Vec<u8>, String> {
        self.ask(|reply| Request::Screenshot { number, reply })
            .await
    }

    /// Sends an operator's input to a session.
    pub async fn input(&self, number: u32, events: Vec<InputEvent>) -> Result<(), String> {
        self.ask(|reply| Request::Input {
            number,
            events,
            reply,
        })
        .await
    }

    /// Takes the screen a run ends on and reports it (before the run's end is reported).
    pub async fn last_frame(&self, number: u32, run_id: &str) {
        let run_id = run_id.to_owned();
        self.tell(|done| Request::LastFrame {
            number,
            run_id,
            done,
        })
        .await;
    }

    /// Follows a session's screen for a watcher: the changes go to `screens` as
    /// [`AgentFrame::Screen`] until [`SessionsHandle::unwatch`].
    pub async fn watch(
        &self,
        number: u32,
        watch: u64,
        screens: mpsc::UnboundedSender<AgentFrame>,
    ) -> Result<(), String> {
        self.ask(|reply| Request::Watch {
            number,
            watch,
            screens,
            reply,
        })
        .await
    }

    pub fn unwatch(&self, watch: u64) {
        let _ = self.requests.send(Request::Unwatch { watch });
    }

    /// Makes a session anew (one in use only with `force`: its run is told its display died).
    pub async fn restart(&self, number: u32, force: bool) -> Result<(), String> {
        self.ask(|reply| Request::Restart {
            number,
            force,
            reply,
        })
        .await
    }

    /// Every session's state now.
    pub async fn snapshot(&self) -> Vec<SessionReport> {
        self.ask(|reply| Request::Snapshot { reply })
            .await
            .unwrap_or_default()
    }
}

/// Starts the task that keeps the sessions; answers where to ask for them.
pub fn start(
    config: SessionsConfig,
    data_dir: &Path,
    events: mpsc::UnboundedSender<AgentEvent>,
) -> SessionsHandle {
    let (requests, incoming) = mpsc::unbounded_channel();
    let slots = (1..=config.count)
        .map(|number| Slot {
            number,
            dir: data_dir.join("sessions").join(number.to_string()),
            server: None,
            state: SessionState::Starting,
            run: None,
            reason: None,
            failures: 0,
            retry_at: None,
            next_frame: None,
            cause: None,
        })
        .collect();
    let sessions = Sessions {
        config,
        events,
        slots,
        watches: std::collections::HashMap::new(),
    };
    tokio::spawn(sessions.run(incoming));
    SessionsHandle { requests }
}

struct Sessions {
    config: SessionsConfig,
    events: mpsc::UnboundedSender<AgentEvent>,
    slots: Vec<Slot>,
    /// The screens followed for watchers, each stopped by dropping its sender.
    watches: std::collections::HashMap<u64, std::sync::mpsc::Sender<()>>,
}

struct Slot {
    number: u32,
    dir: PathBuf,
    server: Option<Server>,
    state: SessionState,
    /// The run using it, and where to tell it that the display died.
    run: Option<(String, Option<oneshot::Sender<String>>)>,
    reason: Option<String>,
    /// Failed starts in a row.
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
    /// When the run using it has its next thumbnail taken.
    next_frame: Option<tokio::time::Instant>,
    /// Why its X server is being started (the reason shown once it is ready).
    cause: Option<String>,
}

/// A running X server, as recorded for after a restart of the agent.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Recorded {
    display: u32,
    pid: u32,
    started: Option<u64>,
    run_id: Option<String>,
}

struct Server {
    display: u32,
    pid: u32,
    /// Its process start time, to tell it from a later process with its pid.
    started: Option<u64>,
    /// The process, when this life of the agent started it (to reap it).
    child: Option<Child>,
}

impl Server {
    /// `None` while it runs; otherwise how it ended.
    fn ended(&mut self) -> Option<String> {
        if let Some(child) = &mut self.child {
            return match child.try_wait() {
                Ok(None) => None,
                Ok(Some(status)) => Some(status.to_string()),
                Err(err) => Some(err.to_string()),
            };
        }
        match crate::runner::process_start_time(self.pid) {
            Some(started) if Some(started) == self.started => None,
            _ => Some("ended".to_owned()),
        }
    }

    /// Kills it and what runs in its group, waits until it is gone (an adopted one is not
    /// this agent's child: it is watched), and removes the files it leaves behind.
    async fn kill(&mut self) {
        if 1 < self.pid
            && let Ok(group) = i32::try_from(self.pid)
        {
            let _ = killpg(nix::unistd::Pid::from_raw(group), Signal::SIGKILL);
        }
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        while self.ended().is_none() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.remove_files();
    }

    /// Removes the lock file and socket of its display (a killed X server leaves them): only
    /// once it is gone.
    fn remove_files(&self) {
        let _ = std::fs::remove_file(format!("/tmp/.X{}-lock", self.display));
        let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{}", self.display));
    }
}

impl Sessions {
    async fn run(mut self, mut incoming: mpsc::UnboundedReceiver<Request>) {
        let unavailable = self.config.offer().unavailable;
        for index in 0..self.slots.len() {
            if let Some(reason) = &unavailable {
                let slot = &mut self.slots[index];
                slot.state = SessionState::Failed;
                slot.reason = Some(reason.clone());
                self.report(index);
                continue;
            }
            if !self.adopt(index) {
                self.start(index, SessionState::Starting).await;
            }
        }
        if unavailable.is_some() {
            // Nothing to keep: answer requests only.
            while let Some(request) = incoming.recv().await {
                self.handle(request).await;
            }
            return;
        }
        let mut watch = tokio::time::interval(WATCH_EVERY);
        loop {
            tokio::select! {
                request = incoming.recv() => match request {
                    Some(request) => self.handle(request).await,
                    None => return,
                },
                _ = watch.tick() => self.watch().await,
            }
        }
    }

    async fn handle(&mut self, request: Request) {
        match request {
            Request::Acquire {
                number,
                run_id,
                died,
                reply,
            } => {
                let _ = reply.send(self.acquire(number, run_id, died));
            }
            Request::Release { number, run_id } => {
                let Some(index) = self.index(number) else {
                    return;
                };
                if self.slots[index]
                    .run
                    .as_ref()
                    .is_some_and(|(using, _)| *using == run_id)
                {
                    self.slots[index].run = None;
                    self.slots[index].next_frame = None;
                    if let Some(server) = &mut self.slots[index].server {
                        server.kill().await;
                    }
                    self.slots[index].server = None;
                    self.slots[index].reason = Some(format!("made anew after run {run_id}"));
                    self.start(index, SessionState::Restarting).await;
                }
            }
            Request::Snapshot { reply } => {
                let reports = (0..self.slots.len())
                    .map(|index| self.describe(index))
                    .collect();
                let _ = reply.send(Ok(reports));
            }
            Request::Screenshot { number, reply } => {
                self.off_task(number, reply, |display, cookie| {
                    crate::screen::screenshot(display, cookie, MAX_SCREENSHOT_PIXELS, u32::MAX)
                });
            }
            Request::Input {
                number,
                events,
                reply,
            } => {
                self.off_task(number, reply, move |display, cookie| {
                    crate::screen::send_input(display, cookie, &events)
                });
            }
            Request::Watch {
                number,
                watch,
                screens,
                reply,
            } => {
                let (display, cookie) = match self.screen_of(number) {
                    Ok(screen) => screen,
                    Err(err) => {
                        let _ = reply.send(Err(err));
                        return;
                    }
                };
                let (stop, stopped) = std::sync::mpsc::channel();
                self.watches.insert(watch, stop);
                std::thread::spawn(move || {
                    let send = |region: crate::screen::Region| {
                        use base64::Engine;
                        let frame = AgentFrame::Screen {
                            watch,
                            x: region.x,
                            y: region.y,
                            png: base64::engine::general_purpose::STANDARD.encode(region.png),
                        };
                        screens.send(frame).is_ok()
                    };
                    let followed =
                        crate::screen::follow(display, &cookie, WATCH_FRAME_EVERY, &stopped, send);
                    if let Err(err) = followed {
                        tracing::info!(watch, err, "stopped following a session's screen");
                    }
                });
                let _ = reply.send(Ok(()));
            }
            Request::Unwatch { watch } => {
                // Dropping the sender stops the thread that follows the screen.
                self.watches.remove(&watch);
            }
            Request::LastFrame {
                number,
                run_id,
                done,
            } => {
                let frame = self.index(number).and_then(|index| {
                    let using = self.slots[index].run.as_ref()?;
                    (using.0 == run_id).then(|| self.frame(index, true))?
                });
                // Waited for beside this task: the run's end waits, not the other sessions.
                tokio::spawn(async move {
                    if let Some(frame) = frame {
                        let _ = frame.await;
                    }
                    let _ = done.send(());
                });
            }
            Request::Restart {
                number,
                force,
                reply,
            } => {
                let Some(index) = self.index(number) else {
                    let _ = reply.send(Err(format!(
                        "this agent has no graphical session {number} (it offers {})",
                        self.slots.len()
                    )));
                    return;
                };
                let slot = &mut self.slots[index];
                if let Some((run_id, _)) = &slot.run
                    && !force
                {
                    let _ = reply.send(Err(format!(
                        "graphical session {number} is in use by run {run_id}: restarting it ends \
                         that run's display (force it to)"
                    )));
                    return;
                }
                if let Some((_, Some(died))) = slot.run.take() {
                    let _ =
                        died.send("its display died: an operator restarted its session".to_owned());
                }
                if let Some(mut server) = slot.server.take() {
                    server.kill().await;
                }
                slot.reason = Some("restarted by an operator".to_owned());
                slot.failures = 0;
                self.start(index, SessionState::Restarting).await;
                let _ = reply.send(Ok(()));
            }
            Request::Shutdown { done } => {
                for index in 0..self.slots.len() {
                    if let Some(mut server) = self.slots[index].server.take() {
                        server.kill().await;
                    }
                    self.record(index);
                }
                let _ = done.send(());
            }
        }
    }

    fn index(&self, number: u32) -> Option<usize> {
        self.slots.iter().position(|slot| slot.number == number)
    }

    /// A session's display and cookie, while its X server runs.
    fn screen_of(&self, number: u32) -> Result<(u32, Vec<u8>), String> {
        let slot = self.index(number).map(|index| &self.slots[index]);
        let Some((slot, server)) = slot.and_then(|slot| Some((slot, slot.server.as_ref()?))) else {
            return Err(format!("graphical session {number} has no X server now"));
        };
        Ok((server.display, read_cookie(&slot.dir.join("Xauthority"))?))
    }

    /// Works on a session's screen off this task (X requests and encoding take a while):
    /// `work` gets its display and cookie, and its answer goes to `reply`.
    fn off_task<T: Send + 'static>(
        &self,
        number: u32,
        reply: oneshot::Sender<Result<T, String>>,
        work: impl FnOnce(u32, &[u8]) -> Result<T, String> + Send + 'static,
    ) {
        match self.screen_of(number) {
            Ok((display, cookie)) => {
                tokio::task::spawn_blocking(move || {
                    let _ = reply.send(work(display, &cookie));
                });
            }
            Err(err) => {
                let _ = reply.send(Err(err));
            }
        }
    }

    fn acquire(
        &mut self,
        number: u32,
        run_id: String,
        died: oneshot::Sender<String>,
    ) -> Result<DisplayEnv, String> {
        let Some(index) = self.index(number) else {
            return Err(format!(
                "this agent has no graphical session {number} (it offers {})",
                self.slots.len()
            ));
        };
        let slot = &mut self.slots[index];
        let adopted = slot
            .run
            .as_ref()
            .is_some_and(|(using, sender)| *using == run_id && sender.is_none());
        if !adopted && slot.state != SessionState::Ready {
            let why = slot.reason.clone().unwrap_or_default();
            return Err(format!(
                "graphical session {number} is {}{}",
                slot.state.as_str(),
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {why}")
                }
            ));
        }
        let Some(server) = &slot.server else {
            let _ = died.send(format!("its graphical session {number} is gone"));
            return Err(format!("graphical session {number} has no X server"));
        };
        let env = vec![
            ("DISPLAY".to_owned(), format!(":{}", server.display)),
            (
                "XAUTHORITY".to_owned(),
                slot.dir.join("Xauthority").display().to_string(),
            ),
        ];
        slot.run = Some((run_id, Some(died)));
        slot.state = SessionState::InUse;
        slot.reason = None;
        self.record(index);
        self.report(index);
        Ok(env)
    }

    /// Takes a frame of the screen of the run using the slot, and reports it; answers the
    /// task doing it (`None` without a run or an X server).
    fn frame(&self, index: usize, last: bool) -> Option<tokio::task::JoinHandle<()>> {
        let slot = &self.slots[index];
        let run_id = slot.run.as_ref()?.0.clone();
        let (display, cookie) = self.screen_of(slot.number).ok()?;
        let events = self.events.clone();
        Some(tokio::task::spawn_blocking(
            move || match crate::screen::screenshot(
                display,
                &cookie,
                MAX_SCREENSHOT_PIXELS,
                FRAME_WIDTH,
            ) {
                Ok(png) => {
                    use base64::Engine;
                    let _ = events.send(AgentEvent::Frame {
                        run_id,
                        at: crate::runner::now(),
                        png: base64::engine::general_purpose::STANDARD.encode(png),
                        last,
                    });
                }
                Err(err) => tracing::warn!(run_id, err, "cannot take a frame"),
            },
        ))
    }

    /// Looks at every X server; one that died is started again, and its run told. Runs get
    /// their thumbnails.
    async fn watch(&mut self) {
        let now = tokio::time::Instant::now();
        for index in 0..self.slots.len() {
            let Some(every) = self.config.frame_every else {
                break;
            };
            let slot = &mut self.slots[index];
            if slot.run.is_none() {
                continue;
            }
            match slot.next_frame {
                Some(at) if now < at => {}
                _ => {
                    slot.next_frame = Some(now + every);
                    let _ = self.frame(index, false);
                }
            }
        }
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            let ended = match &mut slot.server {
                Some(server) => server.ended().map(|how| {
                    server.remove_files();
                    (server.display, how)
                }),
                None => None,
            };
            if let Some((display, how)) = ended {
                let reason = format!("the X server of :{display} died ({how})");
                tracing::warn!(
                    session = slot.number,
                    reason,
                    "restarting a graphical session"
                );
                slot.server = None;
                if let Some((_, Some(died))) = slot.run.take() {
                    let _ = died.send(format!("its display died: {reason}"));
                }
                slot.reason = Some(reason);
                self.start(index, SessionState::Restarting).await;
            } else if slot.server.is_none()
                && slot
                    .retry_at
                    .is_some_and(|at| at <= tokio::time::Instant::now())
            {
                self.start(index, SessionState::Restarting).await;
            }
        }
    }

    /// Keeps the X server an earlier life of the agent recorded, if it still runs.
    fn adopt(&mut self, index: usize) -> bool {
        let slot = &mut self.slots[index];
        let Ok(bytes) = std::fs::read(slot.dir.join("server.json")) else {
            return false;
        };
        let Ok(recorded) = serde_json::from_slice::<Recorded>(&bytes) else {
            return false;
        };
        let mut server = Server {
            display: recorded.display,
            pid: recorded.pid,
            started: recorded.started,
            child: None,
        };
        if recorded.started.is_none() || server.ended().is_some() {
            return false;
        }
        tracing::info!(
            session = slot.number,
            display = recorded.display,
            "adopting an X server"
        );
        slot.server = Some(server);
        match recorded.run_id {
            // Its run is adopted too (and takes it again), or ends and releases it.
            Some(run_id) => {
                slot.run = Some((run_id, None));
                slot.state = SessionState::InUse;
            }
            None => slot.state = SessionState::Ready,
        }
        self.report(index);
        true
    }

    /// Starts the slot's X server (and its desktop), reporting `state` first and then ready
    /// or failed.
    async fn start(&mut self, index: usize, state: SessionState) {
        self.slots[index].state = state;
        if self.slots[index].failures == 0 {
            self.slots[index].cause = self.slots[index].reason.clone();
        }
        self.report(index);
        let started = self.start_server(index).await;
        let slot = &mut self.slots[index];
        match started {
            Ok(server) => {
                // Why it was (re)started, rather than the failures on the way.
                slot.reason = slot.cause.take();
                slot.server = Some(server);
                slot.state = SessionState::Ready;
                slot.failures = 0;
                slot.retry_at = None;
            }
            Err(reason) => {
                tracing::error!(session = slot.number, reason, "cannot start an X server");
                slot.failures += 1;
                slot.reason = Some(reason);
                slot.state = match slot.failures < FAILED_AFTER {
                    true => SessionState::Restarting,
                    false => SessionState::Failed,
                };
                let wait = match slot.failures < FAILED_AFTER {
                    true => Duration::ZERO,
                    false => FAILED_RETRY,
                };
                slot.retry_at = Some(tokio::time::Instant::now() + wait);
            }
        }
        self.record(index);
        self.report(index);
    }

    async fn start_server(&mut self, index: usize) -> Result<Server, String> {
        let slot = &self.slots[index];
        std::fs::create_dir_all(&slot.dir)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&slot.dir, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|err| format!("creating {}: {err}", slot.dir.display()))?;
        let display = free_display().ok_or("no free X display between :100 and :999")?;
        let authority = slot.dir.join("Xauthority");
        write_authority(&authority, display)?;
        let log_path = slot.dir.join("xvfb.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|err| format!("opening {}: {err}", log_path.display()))?;
        #[allow(
            clippy::disallowed_methods,
            reason = "the agent runs the X servers of its graphical sessions"
        )]
        let mut command = std::process::Command::new(&self.config.xvfb);
        let screen = format!("{}x{}x24", self.config.width, self.config.height);
        command
            .arg(format!(":{display}"))
            .args([
                "-screen",
                "0",
                &screen,
                "-nolisten",
                "tcp",
                "-noreset",
                "-auth",
            ])
            .arg(&authority)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", self.config.xvfb))?;
        let socket = PathBuf::from(format!("/tmp/.X11-unix/X{display}"));
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the X server of :{display} stopped at once ({status}); see {}",
                    log_path.display()
                ));
            }
            if socket.exists() {
                break;
            }
            if deadline <= tokio::time::Instant::now() {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the X server of :{display} did not come up"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pid = child.id();
        if !self.config.desktop.is_empty() {
            self.start_desktop(pid, display, &authority);
        }
        Ok(Server {
            display,
            pid,
            started: crate::runner::process_start_time(pid),
            child: Some(child),
        })
    }

    /// Starts the session's window manager or desktop in the X server's process group, so
    /// that it goes with it.
    fn start_desktop(&self, group: u32, display: u32, authority: &Path) {
        let Some((program, args)) = self.config.desktop.split_first() else {
            return;
        };
        #[allow(
            clippy::disallowed_methods,
            reason = "the agent runs the desktops of its graphical sessions"
        )]
        let mut command = std::process::Command::new(program);
        command
            .args(args)
            .env("DISPLAY", format!(":{display}"))
            .env("XAUTHORITY", authority)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(
            &mut command,
            i32::try_from(group).unwrap_or(0),
        );
        // Reaped with the group's end: the X server's death ends it, and init reaps it.
        if let Err(err) = command.spawn() {
            tracing::warn!(%err, program, "cannot start the sessions' desktop");
        }
    }

    fn record(&self, index: usize) {
        let slot = &self.slots[index];
        let path = slot.dir.join("server.json");
        let Some(server) = &slot.server else {
            let _ = std::fs::remove_file(&path);
            return;
        };
        let recorded = Recorded {
            display: server.display,
            pid: server.pid,
            started: server.started,
            run_id: slot.run.as_ref().map(|(run_id, _)| run_id.clone()),
        };
        if let Ok(bytes) = serde_json::to_vec(&recorded)
            && let Err(err) = std::fs::write(&path, bytes)
        {
            tracing::error!(%err, path = %path.display(), "recording an X server");
        }
    }

    fn describe(&self, index: usize) -> SessionReport {
        let slot = &self.slots[index];
        SessionReport {
            number: slot.number,
            display: slot
                .server
                .as_ref()
                .map(|server| format!(":{}", server.display)),
            width: self.config.width,
            height: self.config.height,
            state: slot.state,
            run_id: slot.run.as_ref().map(|(run_id, _)| run_id.clone()),
            reason: slot.reason.clone(),
            at: crate::runner::now(),
        }
    }

    fn report(&self, index: usize) {
        let _ = self.events.send(AgentEvent::Session(self.describe(index)));
    }
}

/// The X servers recorded in an agent's data directory, for its keeper: when the agent is
/// gone for good (nothing kept, nobody connected, or its data directory removed), the keeper
/// stops them rather than leave them running for nobody.
pub(crate) fn recorded_servers(data_dir: &Path) -> Vec<(u32, u32, Option<u64>)> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("sessions")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let bytes = std::fs::read(entry.path().join("server.json")).ok()?;
            let recorded: Recorded = serde_json::from_slice(&bytes).ok()?;
            Some((recorded.display, recorded.pid, recorded.started))
        })
        .collect()
}

/// Kills a recorded X server's group if its process is still the recorded one, and removes
/// the files of its display.
pub(crate) fn kill_recorded(display: u32, pid: u32, started: Option<u64>) {
    if started.is_none() || crate::runner::process_start_time(pid) != started {
        return;
    }
    if let Ok(group) = i32::try_from(pid)
        && 1 < group
    {
        let _ = killpg(nix::unistd::Pid::from_raw(group), Signal::SIGKILL);
    }
    let _ = std::fs::remove_file(format!("/tmp/.X{display}-lock"));
    let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{display}"));
}

/// The cookie of an X authority file written by [`write_authority`]: its last field.
fn read_cookie(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|err| format!("reading {}: {err}", path.display()))?;
    match bytes.len().checked_sub(COOKIE_BYTES) {
        Some(start) => Ok(bytes[start..].to_vec()),
        None => Err(format!("{} holds no cookie", path.display())),
    }
}

/// The first display with neither a socket nor a lock file.
fn free_display() -> Option<u32> {
    (FIRST_DISPLAY..=LAST_DISPLAY).find(|display| {
        !Path::new(&format!("/tmp/.X11-unix/X{display}")).exists()
            && !Path::new(&format!("/tmp/.X{display}-lock")).exists()
    })
}

/// Writes an X authority file holding a fresh random cookie for `display` on any host
/// (family "wild"), readable by the agent's user alone.
fn write_authority(path: &Path, display: u32) -> Result<(), String> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut cookie = [0u8; COOKIE_BYTES];
    getrandom::fill(&mut cookie).map_err(|err| format!("making an X cookie: {err}"))?;
    let mut entry = Vec::new();
    let field = |entry: &mut Vec<u8>, bytes: &[u8]| {
        entry.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(0).to_be_bytes());
        entry.extend_from_slice(bytes);
    };
    entry.extend_from_slice(&0xffffu16.to_be_bytes());
    field(&mut entry, b"");
    field(&mut entry, display.to_string().as_bytes());
    field(&mut entry, b"MIT-MAGIC-COOKIE-1");
    field(&mut entry, &cookie);
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(&entry))
        .map_err(|err| format!("writing {}: {err}", path.display()))
}

/// The program's path, looked up in `PATH` when it has no slash.
fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).exists().then(|| PathBuf::from(program));
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(program))
        .find(|path| path.exists())
}
