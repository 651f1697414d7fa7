//! What each operation does on this machine: a program run without a shell (output streamed,
//! its process group killed at the timeout or on cancel), the processes, a signal, files,
//! the machine's facts, a restart of the agent, its graphical sessions.

use std::{
    collections::HashMap, os::unix::process::ExitStatusExt, path::PathBuf, process::Stdio,
    sync::Arc, time::Duration,
};

use base64::Engine;
use dirigent_proto::{
    activity::{
        AgentInfo, AgentOperation, ExecArgs, ExecResult, Outcome, ProcessInfo, Screenshot,
        SignalArgs,
    },
    link::{AgentEvent, OutputLine},
    run::Stream,
};
use serde_json::json;
use tokio::{
    io::AsyncWriteExt,
    sync::{mpsc, watch},
};

use super::{Done, Shared, files};
use crate::runner::{now, read_lines};

/// The most output one activity keeps; the rest is read and dropped.
const MAX_OUTPUT_BYTES: usize = 4 * 1024 * 1024;
/// Output waits this long to go out with what follows it.
const OUTPUT_BATCH: Duration = Duration::from_millis(50);

/// An activity's output, numbered, sent in batches.
pub(super) struct Output {
    id: String,
    events: mpsc::UnboundedSender<AgentEvent>,
    next_seq: u64,
    kept_bytes: usize,
    truncated: bool,
}

impl Output {
    pub(super) fn new(id: String, events: mpsc::UnboundedSender<AgentEvent>) -> Output {
        Output {
            id,
            events,
            next_seq: 1,
            kept_bytes: 0,
            truncated: false,
        }
    }

    fn send(&mut self, lines: Vec<(Stream, String)>) {
        let mut batch = Vec::with_capacity(lines.len());
        for (stream, text) in lines {
            if MAX_OUTPUT_BYTES < self.kept_bytes + text.len() {
                self.truncated = true;
                continue;
            }
            self.kept_bytes += text.len();
            batch.push(OutputLine {
                seq: self.next_seq,
                stream,
                at: now(),
                text,
            });
            self.next_seq += 1;
        }
        if !batch.is_empty() {
            let _ = self.events.send(AgentEvent::ActivityOutput {
                id: self.id.clone(),
                lines: batch,
            });
        }
    }
}

/// When an activity must stop: at its timeout, or when cancelled.
pub(super) struct Stop {
    deadline: tokio::time::Instant,
    cancelled: watch::Receiver<bool>,
}

impl Stop {
    pub(super) fn new(timeout: Duration, cancelled: watch::Receiver<bool>) -> Stop {
        Stop {
            deadline: tokio::time::Instant::now() + timeout,
            cancelled,
        }
    }

    /// Resolves when the activity must stop, with why.
    async fn reached(&mut self) -> Outcome {
        tokio::select! {
            () = tokio::time::sleep_until(self.deadline) => Outcome::TimedOut,
            _ = self.cancelled.wait_for(|cancelled| *cancelled) => Outcome::Cancelled,
        }
    }
}

fn stopped(outcome: Outcome) -> Done {
    Done {
        outcome,
        result: None,
        reason: Some(
            match outcome {
                Outcome::TimedOut => "its timeout passed",
                _ => "cancelled",
            }
            .to_owned(),
        ),
    }
}

pub(super) async fn run(
    shared: &Arc<Shared>,
    operation: AgentOperation,
    output: Output,
    mut stop: Stop,
) -> Done {
    if let AgentOperation::Exec(args) = operation {
        return exec(shared, args, output, stop).await;
    }
    let work = async {
        let value = |result: Result<serde_json::Value, String>| match result {
            Ok(value) => Done::succeeded(value),
            Err(reason) => Done::failed(reason),
        };
        let roots = || roots(shared);
        match operation {
            AgentOperation::Exec(_) => Done::failed("unreachable"),
            AgentOperation::Processes(_) => value(to_json(blocking(processes).await)),
            AgentOperation::SignalProcess(args) => value(signal(&args).map(|()| json!({}))),
            AgentOperation::FilesList(args) => {
                let roots = roots();
                value(to_json(
                    blocking(move || files::list(&files::resolve(&roots, &args.path, false)?))
                        .await,
                ))
            }
            AgentOperation::FilesRead(args) => {
                let roots = roots();
                value(to_json(
                    blocking(move || {
                        files::read(&files::resolve(&roots, &args.path, false)?, &args)
                    })
                    .await,
                ))
            }
            AgentOperation::FilesWrite(args) => {
                let roots = roots();
                value(to_json(
                    blocking(move || {
                        files::write(&files::resolve(&roots, &args.path, true)?, &args)
                    })
                    .await,
                ))
            }
            AgentOperation::Info(_) => {
                let (data_dir, policy) = (shared.data_dir.clone(), shared.policy.info());
                let sessions = match &shared.sessions {
                    Some(sessions) => u32::try_from(sessions.snapshot().await.len()).unwrap_or(0),
                    None => 0,
                };
                value(to_json(
                    blocking(move || info(&data_dir, policy, sessions)).await,
                ))
            }
            AgentOperation::Update(args) => {
                let data_dir = shared.data_dir.clone();
                match shared.blobs.fetch(&args.sha256).await {
                    Ok(binary) => value(to_json(
                        super::update::swap_in(binary, args.sha256, data_dir).await,
                    )),
                    Err(reason) => Done::failed(reason),
                }
            }
            AgentOperation::Restart(_) => {
                // Nothing of this life is left running: the next one adopts the robots.
                Done::succeeded(json!({}))
            }
            AgentOperation::SessionScreenshot(args) => match &shared.sessions {
                None => Done::failed("this agent offers no graphical sessions"),
                Some(sessions) => value(sessions.screenshot(args.session).await.map(|png| {
                    json!(Screenshot {
                        png_base64: base64::engine::general_purpose::STANDARD.encode(png),
                    })
                })),
            },
            AgentOperation::SessionRestart(args) => match &shared.sessions {
                None => Done::failed("this agent offers no graphical sessions"),
                Some(sessions) => value(
                    sessions
                        .restart(args.session, args.force)
                        .await
                        .map(|()| json!({})),
                ),
            },
        }
    };
    tokio::select! {
        done = work => done,
        outcome = stop.reached() => stopped(outcome),
    }
}

fn roots(shared: &Shared) -> Vec<PathBuf> {
    let mut roots = shared.policy.file_roots.clone();
    if shared.policy.robot_dirs {
        roots.extend(crate::lock(&shared.robot_dirs).iter().cloned());
    }
    roots
}

fn to_json<T: serde::Serialize>(result: Result<T, String>) -> Result<serde_json::Value, String> {
    result.and_then(|value| serde_json::to_value(value).map_err(|err| err.to_string()))
}

/// Runs blocking file-system work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| format!("the work failed: {err}"))?
}

/// `exec`: the program in its own process group, output streamed line by line; at the
/// timeout or on cancel the whole group is killed.
async fn exec(shared: &Arc<Shared>, args: ExecArgs, mut output: Output, mut stop: Stop) -> Done {
    let working_dir = match &args.working_dir {
        Some(dir) => match files::resolve(&roots(shared), dir, false) {
            Ok(dir) => dir,
            Err(refusal) => return Done::failed(format!("working_dir: {refusal}")),
        },
        None => shared.data_dir.clone(),
    };
    let Some((program, rest)) = args.argv.split_first() else {
        return Done::failed("argv names no program");
    };
    // Not a robot: an administrator's program, which ends with its activity (its group is
    // killed at the timeout), so the agent runs it itself rather than through the keeper.
    let mut command = tokio::process::Command::new(program);
    command
        .args(rest)
        .envs(&args.env)
        .current_dir(&working_dir)
        .stdin(match args.stdin {
            Some(_) => Stdio::piped(),
            None => Stdio::null(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(user) = &shared.policy.exec_user {
        match nix::unistd::User::from_name(user) {
            Ok(Some(user)) => {
                command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
            }
            Ok(None) => {
                return Done::failed(format!("exec_user {user:?} does not exist on this machine"));
            }
            Err(err) => return Done::failed(format!("looking up exec_user {user:?}: {err}")),
        }
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => return Done::failed(format!("starting {program:?}: {err}")),
    };
    let group = child.id().and_then(|pid| i32::try_from(pid).ok());
    if let (Some(text), Some(mut stdin)) = (args.stdin, child.stdin.take()) {
        tokio::spawn(async move {
            let _ = stdin.write_all(text.as_bytes()).await;
        });
    }
    let (lines_tx, mut lines) = mpsc::channel::<(Stream, String)>(1024);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(read_lines(stdout, Stream::Stdout, lines_tx.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(read_lines(stderr, Stream::Stderr, lines_tx.clone()));
    }
    drop(lines_tx);
    // Output is read to its end (both pipes closed) and the program waited for.
    let mut status = None;
    let mut ending: Option<Outcome> = None;
    let mut pending: Vec<(Stream, String)> = Vec::new();
    let mut pipes_open = true;
    let flush = tokio::time::sleep(OUTPUT_BATCH);
    tokio::pin!(flush);
    while pipes_open || status.is_none() {
        tokio::select! {
            line = lines.recv(), if pipes_open => match line {
                Some(line) => {
                    if pending.is_empty() {
                        flush.as_mut().reset(tokio::time::Instant::now() + OUTPUT_BATCH);
                    }
                    pending.push(line);
                    if 256 <= pending.len() {
                        output.send(std::mem::take(&mut pending));
                    }
                }
                None => pipes_open = false,
            },
            () = &mut flush, if !pending.is_empty() => output.send(std::mem::take(&mut pending)),
            exited = child.wait(), if status.is_none() => {
                status = Some(exited);
                // What is left of its group goes with it.
                kill_group(group);
            }
            outcome = stop.reached(), if ending.is_none() => {
                ending = Some(outcome);
                kill_group(group);
            }
        }
    }
    output.send(pending);
    let result = |exit_code, signal| {
        json!(ExecResult {
            exit_code,
            signal,
            output_truncated: output.truncated,
        })
    };
    match (ending, status) {
        (Some(outcome), _) => Done {
            result: Some(result(None, Some(9))),
            ..stopped(outcome)
        },
        (None, Some(Ok(status))) => {
            let (code, signal) = (status.code(), status.signal());
            let result = Some(result(code, signal));
            match (code, signal) {
                (Some(0), _) => Done {
                    outcome: Outcome::Succeeded,
                    result,
                    reason: None,
                },
                (Some(code), _) => Done {
                    outcome: Outcome::Failed,
                    result,
                    reason: Some(format!("exited with code {code}")),
                },
                (None, signal) => Done {
                    outcome: Outcome::Failed,
                    result,
                    reason: Some(format!("killed by signal {}", signal.unwrap_or(0))),
                },
            }
        }
        (None, Some(Err(err))) => Done::failed(format!("waiting for {program:?}: {err}")),
        (None, None) => Done::failed("lost track of the program"),
    }
}

fn kill_group(group: Option<i32>) {
    if let Some(group) = group {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(group),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn signal(args: &SignalArgs) -> Result<(), String> {
    use nix::sys::signal::Signal;
    if args.pid == std::process::id() {
        return Err("refused: not the agent itself (use agent.restart)".to_owned());
    }
    let signal = match args.signal.as_str() {
        "TERM" => Signal::SIGTERM,
        "KILL" => Signal::SIGKILL,
        "INT" => Signal::SIGINT,
        "HUP" => Signal::SIGHUP,
        "QUIT" => Signal::SIGQUIT,
        "STOP" => Signal::SIGSTOP,
        "CONT" => Signal::SIGCONT,
        "USR1" => Signal::SIGUSR1,
        "USR2" => Signal::SIGUSR2,
        other => return Err(format!("{other:?} is not a signal this agent sends")),
    };
    let pid = i32::try_from(args.pid).map_err(|_| format!("no process {}", args.pid))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .map_err(|err| format!("signalling process {}: {err}", args.pid))
}

/// Clock ticks per second in `/proc` (`USER_HZ`).
const TICKS_PER_SECOND: f64 = 100.0;

fn processes() -> Result<Vec<ProcessInfo>, String> {
    let users = user_names();
    let boot = boot_time();
    let page = page_size();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").map_err(|err| format!("/proc: {err}"))? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may end while it is read: skip it.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head
            .split_once('(')
            .map(|(_, name)| name)
            .unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| {
            fields
                .get(n)
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // After the name: state (0), ppid (1), … utime (11), stime (12), … starttime (19),
        // vsize (20), rss (21).
        let command: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .split(|byte| *byte == 0)
            .filter(|part| !part.is_empty())
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect();
        let uid = std::fs::metadata(format!("/proc/{pid}")).map(|meta| {
            use std::os::unix::fs::MetadataExt;
            meta.uid()
        });
        let started_at = boot.and_then(|boot| {
            let millis = boot * 1000 + field(19) * 10;
            jiff::Timestamp::from_millisecond(i64::try_from(millis).ok()?).ok()
        });
        found.push(ProcessInfo {
            pid,
            ppid: u32::try_from(field(1)).unwrap_or(0),
            user: uid
                .map(|uid| users.get(&uid).cloned().unwrap_or_else(|| uid.to_string()))
                .unwrap_or_default(),
            cpu_seconds: (field(11) + field(12)) as f64 / TICKS_PER_SECOND,
            memory_bytes: field(21) * page,
            started_at,
            command,
            name: name.to_owned(),
        });
    }
    found.sort_by_key(|process| process.pid);
    Ok(found)
}

fn user_names() -> HashMap<u32, String> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let uid = fields.nth(1)?.parse().ok()?;
            Some((uid, name.to_owned()))
        })
        .collect()
}

/// When the machine booted, in seconds since the epoch.
fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|size| u64::try_from(size).ok())
        .unwrap_or(4096)
}

/// The SHA-256 of the agent's own binary, read once: it does not change under a running agent
/// (an update restarts it).
fn own_digest() -> Result<String, String> {
    static DIGEST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(digest) = DIGEST.get() {
        return Ok(digest.clone());
    }
    let exe = std::fs::read("/proc/self/exe")
        .map_err(|err| format!("reading the agent's binary: {err}"))?;
    Ok(DIGEST.get_or_init(|| crate::sha256_hex(&exe)).clone())
}

fn info(
    data_dir: &std::path::Path,
    policy: dirigent_proto::activity::PolicyInfo,
    sessions: u32,
) -> Result<AgentInfo, String> {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let meminfo = read("/proc/meminfo");
    let mem = |key: &str| {
        meminfo
            .lines()
            .find_map(|line| {
                line.strip_prefix(key)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            * 1024
    };
    let os = read("/etc/os-release")
        .lines()
        .find_map(|line| {
            line.strip_prefix("PRETTY_NAME=")
                .map(|name| name.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| std::env::consts::OS.to_owned());
    let disk = nix::sys::statvfs::statvfs(data_dir)
        .map_err(|err| format!("{}: {err}", data_dir.display()))?;
    let fragment = disk.fragment_size() as u64;
    let load: Vec<f64> = read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .filter_map(|value| value.parse().ok())
        .collect();
    let uptime = read("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|value| value.parse::<f64>().ok())
        .unwrap_or(0.0);
    let live_runs = std::fs::read_dir(data_dir.join("runs")).map_or(0, |dir| dir.count());
    let agent_sha256 = own_digest()?;
    Ok(AgentInfo {
        host: read("/proc/sys/kernel/hostname").trim().to_owned(),
        os,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        cpus: std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(1)),
        memory_total_bytes: mem("MemTotal:"),
        memory_available_bytes: mem("MemAvailable:"),
        disk_total_bytes: disk.blocks() as u64 * fragment,
        disk_available_bytes: disk.blocks_available() as u64 * fragment,
        load,
        uptime_seconds: uptime as u64,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        agent_sha256,
        agent_pid: std::process::id(),
        live_runs: u32::try_from(live_runs).unwrap_or(u32::MAX),
        sessions,
        policy,
    })
}
