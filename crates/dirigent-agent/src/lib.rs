//! `dirigent agent`: runs on each robot machine, keeps a WebSocket to the orchestrator open,
//! carries out its commands with the [`runner`](runner) and reports every event through the
//! durable [`journal`](journal). Its robots are children of its [`keeper`](keeper), so that
//! they live through a restart of the agent.
//!
//! One task owns the journal, the runner and the connection: events from the runs are
//! journaled whether or not the server is reachable, and sent when it is. The connection is
//! re-opened after any failure with jittered exponential backoff.
//!
//! **Architecture Invariant.** The agent never touches the database; it knows the server only
//! through the link protocol (`dirigent_proto::link`) and the HTTP API.

pub mod activities;
pub mod journal;
pub mod keeper;
pub mod runner;
pub mod screen;
pub mod sessions;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use dirigent_proto::link::{AgentCommand, AgentEvent, AgentFrame, Hello, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

use crate::{
    activities::Activities,
    journal::{Journal, JournalError},
    runner::{Runner, RunnerConfig},
};

/// Everything `dirigent agent` needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The orchestrator's base URLs, `http://host:port` or `https://host:port`: one, or one per
    /// node when several share a database. The agent connects to the first that answers and
    /// moves on to the next when its node goes away; robots are given the first.
    pub server_urls: Vec<String>,
    /// Which certificates to trust under `https`.
    pub trust: dirigent_client::Trust,
    /// Where the credential and the journal live.
    pub data_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub capacity: u32,
    /// Heartbeat interval (WebSocket ping).
    pub heartbeat: Duration,
    /// For the built-in local agent, which should not outlive its orchestrator for nothing:
    /// when it is orphaned.
    pub orphaned: Option<Orphaned>,
    /// How to start the keeper of the robots (`dirigent agent keeper --data DIR`).
    pub keeper: keeper::KeeperCommand,
    /// The graphical sessions it offers.
    pub sessions: sessions::SessionsConfig,
    /// What activities may do here.
    pub policy: activities::Policy,
    /// The most the journal keeps unacknowledged before the robots' output waits.
    pub journal_max_bytes: u64,
}

/// When a local agent's orchestrator is gone, and what the agent then does.
#[derive(Debug, Clone)]
pub struct Orphaned {
    /// With no run alive, stop once the server has been unreachable this long.
    pub idle_exit_after: Duration,
    /// With runs alive, safe-stop them and then stop once the server has been unreachable
    /// this long: it is gone for good.
    pub stop_robots_after: Duration,
    /// The orchestrator's data directory: when it is removed, the orchestrator is gone for
    /// good at once.
    pub orchestrator_data: Option<PathBuf>,
}

impl Orphaned {
    /// Why the agent should stop (its robots first), after `offline` without its server and
    /// with `live` runs; `None` while it should wait.
    fn verdict(&self, offline: Duration, live: usize) -> Option<String> {
        if let Some(dir) = &self.orchestrator_data
            && !dir.exists()
        {
            return Some(format!(
                "the orchestrator's data directory {} was removed",
                dir.display()
            ));
        }
        let limit = match live {
            0 => self.idle_exit_after,
            _ => self.stop_robots_after,
        };
        (limit <= offline).then(|| {
            format!(
                "the orchestrator has been unreachable for {} s",
                offline.as_secs()
            )
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{0}")]
    Setup(String),
}

const CREDENTIAL_FILE: &str = "credential";
/// Held locked by the running agent; holds its pid.
const LOCK_FILE: &str = "lock";
const JOURNAL_FILE: &str = "journal.jsonl";
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The credential kept in the data directory, if the agent is enrolled.
pub fn stored_credential(data_dir: &std::path::Path) -> Result<Option<String>, AgentError> {
    match std::fs::read_to_string(data_dir.join(CREDENTIAL_FILE)) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(AgentError::Setup(format!(
            "reading {}: {err}",
            data_dir.join(CREDENTIAL_FILE).display()
        ))),
    }
}

/// Keeps a credential in the data directory, readable by the agent's user alone.
pub fn store_credential(data_dir: &std::path::Path, credential: &str) -> Result<(), AgentError> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let setup = |err: std::io::Error| {
        AgentError::Setup(format!(
            "writing the credential in {}: {err}",
            data_dir.display()
        ))
    };
    std::fs::create_dir_all(data_dir).map_err(setup)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(data_dir.join(CREDENTIAL_FILE))
        .map_err(setup)?;
    file.write_all(credential.as_bytes()).map_err(setup)?;
    file.sync_all().map_err(setup)
}

/// Runs the agent until `shutdown` resolves. Robot processes keep running after the agent
/// stops (they are children of the keeper), through an orchestrator's restart and the agent's
/// own: its next start supervises them again.
pub async fn run(
    config: AgentConfig,
    credential: String,
    own_logs: Option<mpsc::Receiver<dirigent_proto::log::OwnLog>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|err| {
        AgentError::Setup(format!("creating {}: {err}", config.data_dir.display()))
    })?;
    let _lock = lock_data_dir(&config.data_dir)?;
    let Some(first_url) = config.server_urls.first().cloned() else {
        return Err(AgentError::Setup("no server URL given".to_owned()));
    };
    let tls = match config
        .server_urls
        .iter()
        .any(|url| url.starts_with("https:"))
    {
        true => Some(Arc::new(
            config.trust.client_config().map_err(AgentError::Setup)?,
        )),
        false => None,
    };
    let mut journal = Journal::open(
        &config.data_dir.join(JOURNAL_FILE),
        config.journal_max_bytes,
    )?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    if let Some(own_logs) = own_logs {
        tokio::spawn(ship_own_logs(own_logs, events_tx.clone()));
    }
    let sessions = (0 < config.sessions.count)
        .then(|| sessions::start(config.sessions.clone(), &config.data_dir, events_tx.clone()));
    let blobs = activities::BlobSource {
        server_urls: config.server_urls.clone(),
        credential: credential.clone(),
        trust: config.trust.clone(),
    };
    let (activities, mut restarts) = Activities::start(
        config.policy.clone(),
        config.data_dir.clone(),
        sessions.clone(),
        blobs,
        events_tx.clone(),
    );
    let mut runner = Runner::new(
        RunnerConfig {
            server_url: first_url.clone(),
            data_dir: config.data_dir.clone(),
            keeper: config.keeper.clone(),
            sessions: sessions.clone(),
            journal_full: journal.full(),
        },
        events_tx,
    );
    // The runs of this agent's earlier life are supervised again where the keeper kept them;
    // the others are ended now, and journaled before the first connection, so that the
    // server learns why before it hears which runs are alive.
    let (adopted, abandoned) = runner.adopt(|run_id| journal.last_output_seq(run_id)).await;
    if 0 < adopted + abandoned {
        tracing::warn!(
            adopted,
            abandoned,
            "took over the runs of this agent's earlier life"
        );
    }
    if 0 < config.sessions.count {
        runner.ensure_keeper().await;
    }
    if 0 < abandoned {
        let mut ended = Vec::new();
        while let Ok(event) = events.try_recv() {
            ended.push(event);
        }
        record(&mut journal, &mut runner, ended).await;
    }
    let mut failures: u32 = 0;
    let mut offline_since = tokio::time::Instant::now();
    // Which of the server URLs to try next.
    let mut next_url = 0;
    // Whether the robots are being stopped because the orchestrator is gone.
    let mut stopping_robots = false;
    tokio::pin!(shutdown);
    loop {
        let url = config
            .server_urls
            .get(next_url)
            .unwrap_or(&first_url)
            .clone();
        let link = Link {
            journal: &mut journal,
            runner: &mut runner,
            activities: &activities,
            events: &mut events,
            restarts: &mut restarts,
        };
        let ended = tokio::select! {
            ended = session(&config, (&url, tls.clone()), &credential, link, &mut failures) => ended,
            () = &mut shutdown => {
                runner.leave().await;
                return Ok(());
            }
        };
        match ended {
            Ok(never) => match never {},
            Err(SessionError::Restart) => return Err(restart(&activities, &mut runner).await),
            Err(SessionError::Refused(reason)) => {
                tracing::error!(reason, "the server refused this agent")
            }
            Err(SessionError::Link(reason)) => {
                tracing::info!(reason, server = url, "not connected")
            }
        }
        if failures == 0 {
            offline_since = tokio::time::Instant::now();
        }
        failures = failures.saturating_add(1);
        next_url = (next_url + 1) % config.server_urls.len();
        // Straight on to the next node while some were not tried since the last connection;
        // then back off.
        let n_urls = u32::try_from(config.server_urls.len()).unwrap_or(u32::MAX);
        if failures < n_urls {
            continue;
        }
        if let Some(orphaned) = &config.orphaned
            && let Some(reason) = orphaned.verdict(offline_since.elapsed(), runner.n_live())
        {
            if runner.n_live() == 0 {
                tracing::warn!(reason, "no run alive and the orchestrator gone: stopping");
                runner.leave().await;
                return Ok(());
            }
            if !stopping_robots {
                tracing::warn!(
                    reason,
                    n_live = runner.n_live(),
                    "the orchestrator is gone: safe-stopping the robots, then stopping"
                );
                runner.stop_all();
                stopping_robots = true;
            }
        }
        let delay = backoff(failures - n_urls + 1);
        // While waiting, keep journaling what the runs report.
        let wait = tokio::time::sleep(delay);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                () = &mut shutdown => {
                    runner.leave().await;
                    return Ok(());
                }
                Some(event) = events.recv() => {
                    record(&mut journal, &mut runner, drain_batch(event, &mut events)).await;
                }
                () = tokio::time::sleep(JOURNAL_RETRY), if journal.has_waiting() => {
                    record(&mut journal, &mut runner, Vec::new()).await;
                }
                Some(()) = restarts.recv() => {
                    record_waiting(&mut journal, &mut runner, &mut events).await;
                    return Err(restart(&activities, &mut runner).await);
                }
            }
        }
    }
}

/// The agent's own records waiting to be journaled, at most this many in one event...
const OWN_LOGS_BATCH: usize = 256;
/// ...or after at most this long.
const OWN_LOGS_DELAY: Duration = Duration::from_millis(250);

/// Turns the agent's own records into events, in batches: journaled and sent like the
/// robots' output.
async fn ship_own_logs(
    mut own_logs: mpsc::Receiver<dirigent_proto::log::OwnLog>,
    events: mpsc::UnboundedSender<AgentEvent>,
) {
    while let Some(first) = own_logs.recv().await {
        let mut records = vec![first];
        let deadline = tokio::time::Instant::now() + OWN_LOGS_DELAY;
        while records.len() < OWN_LOGS_BATCH {
            match tokio::time::timeout_at(deadline, own_logs.recv()).await {
                Ok(Some(record)) => records.push(record),
                Ok(None) | Err(_) => break,
            }
        }
        if events.send(AgentEvent::Logs { records }).is_err() {
            return;
        }
    }
}

/// Restarts the agent in place (the same program and arguments): what it holds of
/// activities is cancelled, its robots stay with the keeper and are adopted again.
async fn restart(activities: &Activities, runner: &mut Runner) -> AgentError {
    use std::os::unix::process::CommandExt;
    tracing::warn!("restarting, as an activity asked");
    activities.cancel_all();
    runner.leave().await;
    let exe = match activities::running_program() {
        Ok(exe) => exe,
        Err(err) => return AgentError::Setup(format!("restarting: {err}")),
    };
    #[allow(
        clippy::disallowed_methods,
        reason = "the agent replaces itself with a new life of its own program"
    )]
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .exec();
    AgentError::Setup(format!("restarting the agent: {err}"))
}

/// Journals the events waiting in the channel.
async fn record_waiting(
    journal: &mut Journal,
    runner: &mut Runner,
    events: &mut mpsc::UnboundedReceiver<AgentEvent>,
) {
    let mut waiting = Vec::new();
    while let Ok(event) = events.try_recv() {
        waiting.push(event);
    }
    record(journal, runner, waiting).await;
}

/// Journals events (one sync; after those waiting from a write that failed), then lets the
/// keeper forget the runs whose ends are journaled. Answers what was journaled, with ids.
async fn record(
    journal: &mut Journal,
    runner: &mut Runner,
    events: Vec<AgentEvent>,
) -> Vec<(u64, AgentEvent)> {
    let journaled = journal.append_all(events).await;
    let ended: Vec<String> = journaled
        .iter()
        .filter_map(|(_, event)| match event {
            AgentEvent::Exited { run_id, .. } => Some(run_id.clone()),
            _ => None,
        })
        .collect();
    runner.forget_kept(ended).await;
    journaled
}

/// How often events that could not be journaled are tried again.
const JOURNAL_RETRY: Duration = Duration::from_secs(1);

/// The event just received and those already waiting behind it (up to a bound), to be
/// journaled with one sync.
fn drain_batch(
    first: AgentEvent,
    events: &mut mpsc::UnboundedReceiver<AgentEvent>,
) -> Vec<AgentEvent> {
    let mut batch = vec![first];
    while batch.len() < 256 {
        match events.try_recv() {
            Ok(event) => batch.push(event),
            Err(_) => break,
        }
    }
    batch
}

/// Whether an agent runs with the data directory `dir` (it holds the directory's lock).
pub fn is_running(dir: &std::path::Path) -> bool {
    let Ok(file) = std::fs::File::open(dir.join(LOCK_FILE)) else {
        return false;
    };
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
}

/// Holds an exclusive lock on the data directory for the agent's life: two agents sharing a
/// journal would corrupt it.
/// The SHA-256 of `bytes`, in hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    use std::fmt::Write;
    sha2::Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// Locks a mutex; a panic elsewhere while it was held does not make its data unusable.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock_data_dir(dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>, AgentError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|err| AgentError::Setup(format!("opening {}: {err}", path.display())))?;
    let mut lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| {
            AgentError::Setup(format!(
                "another agent is running with the data directory {}",
                dir.display()
            ))
        })?;
    // The holder's pid, for people (and scripts) looking for the agent.
    use std::io::{Seek, Write};
    let _ = lock.set_len(0);
    let _ = lock.rewind();
    let _ = write!(lock, "{}", std::process::id());
    Ok(lock)
}

/// The delay before reconnecting after `failures` failures in a row: exponential, capped,
/// with ±50 % jitter so that a fleet does not reconnect in step.
fn backoff(failures: u32) -> Duration {
    let exponential = BACKOFF_FIRST
        .saturating_mul(1 << failures.min(16))
        .min(BACKOFF_MAX);
    let jitter = getrandom::u32().unwrap_or(u32::MAX / 2);
    exponential.mul_f64(0.5 + f64::from(jitter) / f64::from(u32::MAX))
}

enum SessionError {
    Link(String),
    Refused(String),
    /// An activity asked the agent to restart.
    Restart,
}

/// What a connection works with.
struct Link<'a> {
    journal: &'a mut Journal,
    runner: &'a mut Runner,
    activities: &'a Activities,
    events: &'a mut mpsc::UnboundedReceiver<AgentEvent>,
    restarts: &'a mut mpsc::UnboundedReceiver<()>,
}

/// A command whose application cannot be journaled (the disk full) is not acknowledged: the
/// connection ends, and the server sends it again on the next.
impl From<JournalError> for SessionError {
    fn from(err: JournalError) -> SessionError {
        SessionError::Link(err.to_string())
    }
}

fn link_error(err: impl std::fmt::Display) -> SessionError {
    SessionError::Link(err.to_string())
}

/// One connection: hello, welcome, resend what is unacknowledged, report the live runs, then
/// relay events and commands until the connection ends.
async fn session(
    config: &AgentConfig,
    (server_url, tls): (&str, Option<Arc<rustls::ClientConfig>>),
    credential: &str,
    link: Link<'_>,
    failures: &mut u32,
) -> Result<std::convert::Infallible, SessionError> {
    let Link {
        journal,
        runner,
        activities,
        events,
        restarts,
    } = link;
    let url = link_url(server_url)?;
    let mut request = url.into_client_request().map_err(link_error)?;
    let bearer = HeaderValue::from_str(&format!("Bearer {credential}")).map_err(link_error)?;
    request.headers_mut().insert("authorization", bearer);
    // Frames are small and latency matters: no Nagle delay.
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    let (mut socket, _) = match tokio_tungstenite::connect_async_tls_with_config(
        request, None, true, connector,
    )
    .await
    {
        Ok(connected) => connected,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) if response.status() == 401 => {
            return Err(SessionError::Refused(
                "the credential is unknown or revoked; enroll again".to_owned(),
            ));
        }
        Err(err) => return Err(link_error(err)),
    };

    let hello = AgentFrame::Hello(Hello {
        host: host_name(),
        os_user: os_user(),
        labels: config.labels.clone(),
        capacity: config.capacity,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        sessions: config.sessions.offer(),
    });
    send(&mut socket, &hello).await?;
    let last_event_id = loop {
        match receive(&mut socket).await? {
            Some(ServerFrame::Welcome { last_event_id }) => break last_event_id,
            Some(other) => tracing::warn!(?other, "ignoring a frame before the welcome"),
            None => continue,
        }
    };
    *failures = 0;
    journal.ack(last_event_id).await;
    let resend: Vec<AgentFrame> = journal
        .unacked()
        .map(|(id, event)| AgentFrame::Event {
            id: *id,
            event: event.clone(),
        })
        .collect();
    for frame in &resend {
        send(&mut socket, frame).await?;
    }
    send(
        &mut socket,
        &AgentFrame::Synced {
            live_runs: runner.live_runs(),
            sessions: runner.sessions().await,
            live_activities: activities.live(),
            last_applied_command: journal.last_applied_command(),
        },
    )
    .await?;
    tracing::info!(server = server_url, resent = resend.len(), "connected");

    let mut heartbeat = tokio::time::interval(config.heartbeat);
    heartbeat.reset();
    // Answers to the server's requests and watched screens, worked out beside the loop.
    let (outgoing_tx, mut outgoing) = mpsc::unbounded_channel();
    loop {
        tokio::select! {
            Some(frame) = outgoing.recv() => send(&mut socket, &frame).await?,
            Some(event) = events.recv() => {
                let batch = drain_batch(event, events);
                for (id, event) in record(journal, runner, batch).await {
                    send(&mut socket, &AgentFrame::Event { id, event }).await?;
                }
            }
            () = tokio::time::sleep(JOURNAL_RETRY), if journal.has_waiting() => {
                for (id, event) in record(journal, runner, Vec::new()).await {
                    send(&mut socket, &AgentFrame::Event { id, event }).await?;
                }
            }
            frame = receive(&mut socket) => match frame? {
                Some(ServerFrame::Command { id, command }) => {
                    if journal.last_applied_command() < id {
                        match command {
                            // Taken at most once: noted before it runs (a restart meanwhile
                            // loses it, and the server learns so at the next sync).
                            AgentCommand::Activity { .. } | AgentCommand::CancelActivity { .. } => {
                                journal.applied(id).await?;
                                activities.apply(command);
                            }
                            command => {
                                if let AgentCommand::Start(spec) = &command {
                                    activities.note_run(spec);
                                }
                                runner.apply(command).await;
                                journal.applied(id).await?;
                            }
                        }
                    }
                    send(&mut socket, &AgentFrame::Ack { id }).await?;
                }
                Some(ServerFrame::Ack { id }) => journal.ack(id).await,
                Some(ServerFrame::Request { id, request }) => {
                    let answer = runner.answer(request, outgoing_tx.clone());
                    let replies = outgoing_tx.clone();
                    tokio::spawn(async move {
                        let _ = replies.send(AgentFrame::Reply { id, reply: answer.await });
                    });
                }
                Some(ServerFrame::Welcome { .. }) => tracing::warn!("unexpected second welcome"),
                None => {}
            },
            Some(()) = restarts.recv() => {
                record_waiting(journal, runner, events).await;
                return Err(SessionError::Restart);
            }
            _ = heartbeat.tick() => {
                socket.send(Message::Ping(Vec::new().into())).await.map_err(link_error)?;
            }
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(socket: &mut Socket, frame: &AgentFrame) -> Result<(), SessionError> {
    let text = serde_json::to_string(frame).map_err(link_error)?;
    socket
        .send(Message::Text(text.into()))
        .await
        .map_err(link_error)
}

/// The next frame of the server; `None` for control messages. The end of the connection is
/// an error.
async fn receive(socket: &mut Socket) -> Result<Option<ServerFrame>, SessionError> {
    match socket.next().await {
        Some(Ok(Message::Text(text))) => match serde_json::from_str(&text) {
            Ok(frame) => Ok(Some(frame)),
            Err(err) => {
                tracing::warn!(%err, "ignoring a malformed frame from the server");
                Ok(None)
            }
        },
        Some(Ok(Message::Close(close))) => {
            let reason = close
                .map(|close| close.reason.to_string())
                .unwrap_or_default();
            if reason.starts_with("refused:") {
                return Err(SessionError::Refused(reason));
            }
            Err(SessionError::Link(format!(
                "the server closed the connection {reason}"
            )))
        }
        Some(Ok(_)) => Ok(None),
        Some(Err(err)) => Err(link_error(err)),
        None => Err(SessionError::Link("the connection ended".to_owned())),
    }
}

fn link_url(server_url: &str) -> Result<String, SessionError> {
    let base = server_url.trim_end_matches('/');
    let rest = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        return Err(SessionError::Link(format!(
            "the server URL {server_url:?} must start with http:// or https://"
        )));
    };
    Ok(format!("{rest}/agent/v1/connect"))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

fn os_user() -> String {
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}
