//! The keeper: one small process per agent that is the parent of its robots, so that the agent
//! itself can restart (an upgrade, a crash, `kill -9`) without its robots noticing.
//!
//! The keeper spawns each robot in its own process group with its output going to two named
//! pipes in the run's directory (`runs/RUN_ID/` in the agent's data directory), of which it
//! keeps a reading end open: the robot never
//! writes into a pipe without a reader (no `SIGPIPE`), and what it writes while the agent is
//! away waits in the pipe (the robot blocks when the pipe is full: back-pressure, not loss).
//! It reaps its children and keeps each exit status until the agent has journaled it. The
//! agent reads the pipes, signals the process groups and learns exits from the keeper over a
//! Unix socket, `keeper.sock`, readable by the agent's user alone.
//!
//! After a restart the agent connects to the keeper still running, which answers with the runs
//! alive and those that ended meanwhile, and supervises them again ([`crate::runner`]).
//!
//! The protocol is one JSON object per line each way ([`Request`], [`Notice`]).

mod process;

use std::{
    collections::HashMap,
    ffi::OsString,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixStream, unix::OwnedWriteHalf},
    sync::{mpsc, oneshot},
};

pub use process::serve;

use crate::lock;

const SOCKET_FILE: &str = "keeper.sock";
const LOCK_FILE: &str = "keeper.lock";
const RUNS_DIR: &str = "runs";
/// Where the keeper says what went wrong.
const LOG_FILE: &str = "keeper.log";
/// How long a freshly started keeper gets to open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// From the agent to the keeper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Start a robot. Asked again for a run it keeps, it answers with that run's process.
    Spawn {
        run_id: String,
        argv: Vec<String>,
        /// The robot's whole environment.
        env: Vec<(String, String)>,
        working_dir: Option<String>,
    },
    /// The agent has journaled the run's end: close its pipes and forget it.
    Forget { run_id: String },
    /// Stop now if no robot is alive.
    Quit,
}

/// From the keeper to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// The first line on every connection: the runs it keeps.
    Hello {
        pid: u32,
        runs: Vec<Kept>,
    },
    Spawned {
        run_id: String,
        pid: u32,
    },
    SpawnFailed {
        run_id: String,
        reason: String,
    },
    Exited {
        run_id: String,
        exit: Exit,
    },
}

/// A run the keeper keeps: alive, or ended and not yet forgotten.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    pub run_id: String,
    pub pid: u32,
    pub exit: Option<Exit>,
}

/// How a robot's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// Where everything about one run lives: its pipes, and the agent's record of it. The keeper
/// removes it when it forgets the run.
pub fn run_dir(data_dir: &Path, run_id: &str) -> PathBuf {
    data_dir.join(RUNS_DIR).join(run_id)
}

/// The runs that have a directory.
pub fn run_dirs(data_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(data_dir.join(RUNS_DIR)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|run_id| valid_run_id(run_id))
        .collect()
}

/// The named pipes of a run's standard output and error.
pub fn pipe_paths(run_dir: &Path) -> [PathBuf; 2] {
    [run_dir.join("stdout"), run_dir.join("stderr")]
}

/// Whether a run id can name files: the server's ids are letters, digits, `-` and `_`.
pub fn valid_run_id(run_id: &str) -> bool {
    !run_id.is_empty()
        && run_id.len() <= 64
        && run_id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// How the agent starts a keeper: the program and its arguments (`dirigent agent keeper
/// --data DIR`).
pub type KeeperCommand = Vec<OsString>;

/// Where a started robot's end will be told; `Err` when the keeper went away first, taking the
/// exit status with it.
pub type ExitReceiver = oneshot::Receiver<Exit>;

/// Why a spawn did not happen.
#[derive(Debug)]
pub enum SpawnError {
    /// The keeper is gone: a new one may be asked.
    KeeperGone(String),
    /// The keeper could not start the robot.
    Failed(String),
}

/// The agent's connection to its keeper.
pub struct KeeperLink {
    writer: OwnedWriteHalf,
    /// Answers to spawn requests, in the order asked.
    spawned: mpsc::UnboundedReceiver<Result<(u32, ExitReceiver), SpawnError>>,
}

/// Where each kept run's exit is to be told.
type ExitWaiters = Arc<Mutex<HashMap<String, oneshot::Sender<Exit>>>>;

impl KeeperLink {
    /// Connects to the keeper of `data_dir` if one is running. Answers the link and the runs it
    /// keeps, each with where its exit will be told.
    pub async fn connect(
        data_dir: &Path,
    ) -> std::io::Result<(KeeperLink, Vec<(Kept, ExitReceiver)>)> {
        let stream = UnixStream::connect(data_dir.join(SOCKET_FILE)).await?;
        let (reader, writer) = stream.into_split();
        let mut lines = BufReader::new(reader).lines();
        let hello = lines.next_line().await?;
        let Some(Ok(Notice::Hello { runs, .. })) = hello.map(|line| serde_json::from_str(&line))
        else {
            return Err(std::io::Error::other("the keeper did not say hello"));
        };
        let waiters = ExitWaiters::default();
        let kept = runs
            .into_iter()
            .map(|kept| {
                let (tx, rx) = oneshot::channel();
                match kept.exit {
                    Some(exit) => {
                        let _ = tx.send(exit);
                    }
                    None => {
                        lock(&waiters).insert(kept.run_id.clone(), tx);
                    }
                }
                (kept, rx)
            })
            .collect();
        let (spawned_tx, spawned) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let notice = match serde_json::from_str(&line) {
                    Ok(notice) => notice,
                    Err(err) => {
                        tracing::warn!(%err, "ignoring a malformed line from the keeper");
                        continue;
                    }
                };
                match notice {
                    Notice::Spawned { run_id, pid } => {
                        let (tx, rx) = oneshot::channel();
                        lock(&waiters).insert(run_id, tx);
                        let _ = spawned_tx.send(Ok((pid, rx)));
                    }
                    Notice::SpawnFailed { reason, .. } => {
                        let _ = spawned_tx.send(Err(SpawnError::Failed(reason)));
                    }
                    Notice::Exited { run_id, exit } => {
                        if let Some(waiter) = lock(&waiters).remove(&run_id) {
                            let _ = waiter.send(exit);
                        }
                    }
                    Notice::Hello { .. } => tracing::warn!("unexpected second hello"),
                }
            }
            tracing::warn!("the keeper went away");
            // Dropping the waiters tells every supervisor that its exit status is lost.
            lock(&waiters).clear();
        });
        Ok((KeeperLink { writer, spawned }, kept))
    }

    /// Starts a keeper for `data_dir` with `command` and connects to it.
    pub async fn start(data_dir: &Path, command: &KeeperCommand) -> Result<KeeperLink, String> {
        let Some((program, args)) = command.split_first() else {
            return Err("no keeper command".to_owned());
        };
        #[allow(
            clippy::disallowed_methods,
            reason = "the agent starts its keeper, which starts the robots"
        )]
        let mut keeper = std::process::Command::new(program);
        let log = data_dir.join(LOG_FILE);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|err| format!("opening {}: {err}", log.display()))?;
        // Its own process group: a Ctrl-C meant for the agent does not reach it.
        keeper
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .process_group(0);
        let mut child = keeper
            .spawn()
            .map_err(|err| format!("cannot start the keeper {program:?}: {err}"))?;
        let started = tokio::time::Instant::now();
        loop {
            match KeeperLink::connect(data_dir).await {
                Ok((link, _)) => return Ok(link),
                Err(err) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!("the keeper stopped at once ({status})"));
                    }
                    if START_TIMEOUT < started.elapsed() {
                        return Err(format!("the keeper does not answer: {err}"));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// Asks the keeper to start a robot; answers its pid and where its exit will be told.
    pub async fn spawn(&mut self, request: &Request) -> Result<(u32, ExitReceiver), SpawnError> {
        self.send(request)
            .await
            .map_err(|err| SpawnError::KeeperGone(err.to_string()))?;
        match self.spawned.recv().await {
            Some(answer) => answer,
            None => Err(SpawnError::KeeperGone("it went away".to_owned())),
        }
    }

    pub async fn send(&mut self, request: &Request) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.writer.write_all(&line).await
    }
}
