//! The keeper process (`dirigent agent keeper`): plain threads, no async runtime. The main
//! thread accepts the agent's connections, one thread per connection carries out its requests,
//! one thread reaps children on `SIGCHLD`, and one watches whether the keeper is still needed.
//! One mutex guards everything, and spawning and reaping both happen under it, so that no
//! child is reaped before it is known.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader, Write},
    os::unix::{
        fs::{OpenOptionsExt, PermissionsExt},
        net::{UnixListener, UnixStream},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use nix::{
    sys::{
        signal::{SigSet, Signal, killpg},
        stat::Mode,
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};

use super::{
    Exit, Kept, LOCK_FILE, Notice, RUNS_DIR, Request, SOCKET_FILE, lock, pipe_paths, run_dir,
    valid_run_id,
};

/// With no agent connected and no robot alive for this long, the keeper stops.
const IDLE_EXIT: Duration = Duration::from_secs(10);
/// How often the keeper looks whether it is still needed.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// A write to an agent that does not read for this long drops the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

struct State {
    data_dir: PathBuf,
    /// The connection to the agent, if one is connected.
    agent: Option<UnixStream>,
    /// Counts connections, so that the end of a replaced one does not drop its successor.
    connection: u64,
    runs: BTreeMap<String, Run>,
}

struct Run {
    pid: u32,
    exit: Option<Exit>,
    /// The reading ends kept open so that the robot's pipes always have a reader.
    _keep_open: [File; 2],
}

type Shared = Arc<Mutex<State>>;

/// Runs the keeper of the agent whose data directory is `data_dir` until it is not needed: no
/// robot alive and no agent connected, or the data directory removed.
pub fn serve(data_dir: &Path) -> Result<(), String> {
    // Children's ends are taken with sigwait by the reaper: the signal stays blocked in every
    // thread (they inherit this mask; the robots do not, the standard library resets it).
    SigSet::from(Signal::SIGCHLD)
        .thread_block()
        .map_err(|err| format!("blocking SIGCHLD: {err}"))?;
    let _lock = take_lock(data_dir)?;
    let socket = data_dir.join(SOCKET_FILE);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .map_err(|err| format!("binding {}: {err}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|err| format!("securing {}: {err}", socket.display()))?;
    let runs = data_dir.join(RUNS_DIR);
    std::fs::create_dir_all(&runs)
        .and_then(|()| std::fs::set_permissions(&runs, std::fs::Permissions::from_mode(0o700)))
        .map_err(|err| format!("creating {}: {err}", runs.display()))?;

    let state: Shared = Arc::new(Mutex::new(State {
        data_dir: data_dir.to_owned(),
        agent: None,
        connection: 0,
        runs: BTreeMap::new(),
    }));
    {
        let state = state.clone();
        std::thread::spawn(move || reap(&state));
    }
    {
        let state = state.clone();
        let socket = socket.clone();
        std::thread::spawn(move || watch(&state, &socket));
    }
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let Ok(writer) = stream.try_clone() else {
            continue;
        };
        let connection = {
            let mut state = lock(&state);
            let runs = state
                .runs
                .iter()
                .map(|(run_id, run)| Kept {
                    run_id: run_id.clone(),
                    pid: run.pid,
                    exit: run.exit,
                })
                .collect();
            // A new connection replaces the old: there is one agent per data directory.
            state.agent = Some(writer);
            state.connection += 1;
            state.tell(&Notice::Hello {
                pid: std::process::id(),
                runs,
            });
            state.connection
        };
        let state = state.clone();
        std::thread::spawn(move || {
            serve_agent(&state, stream);
            let mut state = lock(&state);
            if state.connection == connection {
                state.agent = None;
            }
        });
    }
    Ok(())
}

/// One lock per data directory: two keepers would each think they own its pipes. It holds the
/// keeper's pid, for people looking for it.
fn take_lock(data_dir: &Path) -> Result<nix::fcntl::Flock<File>, String> {
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|err| format!("opening {}: {err}", path.display()))?;
    let mut lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| format!("another keeper is running for {}", data_dir.display()))?;
    use std::io::Seek;
    let _ = lock.set_len(0);
    let _ = lock.rewind();
    let _ = write!(lock, "{}", std::process::id());
    Ok(lock)
}

impl State {
    /// Tells the connected agent; a connection that fails is dropped (the agent reconnects
    /// and hears everything it needs in the hello).
    fn tell(&mut self, notice: &Notice) {
        let Some(agent) = &mut self.agent else {
            return;
        };
        let Ok(mut line) = serde_json::to_vec(notice) else {
            return;
        };
        line.push(b'\n');
        if agent.write_all(&line).is_err() {
            self.agent = None;
        }
    }

    fn spawn(
        &mut self,
        run_id: &str,
        argv: &[String],
        env: &[(String, String)],
        working_dir: Option<&str>,
    ) -> Notice {
        let failed = |reason: String| Notice::SpawnFailed {
            run_id: run_id.to_owned(),
            reason,
        };
        if !valid_run_id(run_id) {
            return failed(format!("invalid run id {run_id:?}"));
        }
        if let Some(run) = self.runs.get(run_id) {
            return Notice::Spawned {
                run_id: run_id.to_owned(),
                pid: run.pid,
            };
        }
        let Some((program, args)) = argv.split_first() else {
            return failed("the robot has no program to run".to_owned());
        };
        let dir = run_dir(&self.data_dir, run_id);
        if let Err(err) = std::fs::create_dir(&dir) {
            return failed(format!("cannot make {}: {err}", dir.display()));
        }
        let paths = pipe_paths(&dir);
        let opened = paths
            .each_ref()
            .map(|path| open_pipe(path).map_err(|err| format!("{}: {err}", path.display())));
        let [Ok((out_read, out_write)), Ok((err_read, err_write))] = opened else {
            let _ = std::fs::remove_dir_all(&dir);
            let reason = opened.into_iter().find_map(Result::err).unwrap_or_default();
            return failed(format!("cannot make the robot's output pipes: {reason}"));
        };
        #[allow(
            clippy::disallowed_methods,
            reason = "the keeper is where robot processes are spawned"
        )]
        let mut command = std::process::Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(out_write)
            .stderr(err_write)
            .process_group(0);
        if let Some(dir) = working_dir {
            command.current_dir(dir);
        }
        match command.spawn() {
            Ok(child) => {
                let pid = child.id();
                self.runs.insert(
                    run_id.to_owned(),
                    Run {
                        pid,
                        exit: None,
                        _keep_open: [out_read, err_read],
                    },
                );
                Notice::Spawned {
                    run_id: run_id.to_owned(),
                    pid,
                }
            }
            Err(err) => {
                let _ = std::fs::remove_dir_all(&dir);
                failed(format!("cannot start {program:?}: {err}"))
            }
        }
    }

    /// Forgets an ended run and removes its directory (also that of a run an earlier keeper
    /// kept); a run still alive is kept.
    fn forget(&mut self, run_id: &str) {
        if !valid_run_id(run_id) || self.runs.get(run_id).is_some_and(|run| run.exit.is_none()) {
            return;
        }
        self.runs.remove(run_id);
        let _ = std::fs::remove_dir_all(run_dir(&self.data_dir, run_id));
    }

    fn alive(&self) -> usize {
        self.runs.values().filter(|run| run.exit.is_none()).count()
    }
}

/// Makes a named pipe and opens it: a reading end to keep, and the writing end for the robot.
fn open_pipe(path: &Path) -> std::io::Result<(File, File)> {
    nix::unistd::mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR)?;
    let read = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    // Opens at once: the pipe has a reader.
    let write = std::fs::OpenOptions::new().write(true).open(path)?;
    Ok((read, write))
}

fn serve_agent(state: &Shared, stream: UnixStream) {
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let request = match serde_json::from_str::<Request>(&line) {
            Ok(request) => request,
            Err(err) => {
                eprintln!("keeper: ignoring a malformed request: {err}");
                continue;
            }
        };
        let mut state = lock(state);
        match request {
            Request::Spawn {
                run_id,
                argv,
                env,
                working_dir,
            } => {
                let notice = state.spawn(&run_id, &argv, &env, working_dir.as_deref());
                state.tell(&notice);
            }
            Request::Forget { run_id } => state.forget(&run_id),
            Request::Quit => {
                if state.alive() == 0 {
                    let socket = state.data_dir.join(SOCKET_FILE);
                    let _ = std::fs::remove_file(socket);
                    std::process::exit(0);
                }
            }
        }
    }
}

/// Reaps every child that ends and tells the agent.
fn reap(state: &Shared) {
    let sigchld = SigSet::from(Signal::SIGCHLD);
    loop {
        if sigchld.wait().is_err() {
            continue;
        }
        let mut state = lock(state);
        loop {
            let (pid, exit) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (
                    pid,
                    Exit {
                        code: Some(code),
                        signal: None,
                    },
                ),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (
                    pid,
                    Exit {
                        code: None,
                        signal: Some(signal as i32),
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            let pid = u32::try_from(pid.as_raw()).unwrap_or(0);
            let ended = state
                .runs
                .iter_mut()
                .find(|(_, run)| run.pid == pid && run.exit.is_none());
            if let Some((run_id, run)) = ended {
                run.exit = Some(exit);
                let notice = Notice::Exited {
                    run_id: run_id.clone(),
                    exit,
                };
                state.tell(&notice);
            }
        }
    }
}

/// Stops the keeper, and the agent's X servers with it, when it is not needed any more:
/// nothing kept (no robot alive, no end left to tell) and nobody connected for a while, or
/// its socket removed (the data directory is gone, and the agent with it: its robots are
/// killed rather than left unsupervised).
fn watch(state: &Shared, socket: &Path) {
    let (_never, tick) = mpsc::channel::<()>();
    let mut idle_since = Instant::now();
    // The agent's X servers, as last recorded (read while the data directory exists).
    let mut x_servers = Vec::new();
    loop {
        let _ = tick.recv_timeout(WATCH_EVERY);
        let state = lock(state);
        if state.data_dir.exists() {
            x_servers = crate::sessions::recorded_servers(&state.data_dir);
        }
        let stop_x_servers = || {
            for (display, pid, started) in &x_servers {
                crate::sessions::kill_recorded(*display, *pid, *started);
            }
        };
        let connected = state.agent.is_some();
        if !connected && !socket.exists() {
            for run in state.runs.values().filter(|run| run.exit.is_none()) {
                let group = Pid::from_raw(i32::try_from(run.pid).unwrap_or(0));
                if 1 < group.as_raw() {
                    let _ = killpg(group, Signal::SIGKILL);
                }
            }
            stop_x_servers();
            std::process::exit(0);
        }
        if connected || !state.runs.is_empty() {
            idle_since = Instant::now();
        } else if IDLE_EXIT <= idle_since.elapsed() {
            stop_x_servers();
            let _ = std::fs::remove_file(socket);
            std::process::exit(0);
        }
    }
}
