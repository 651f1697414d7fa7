//! Running the `dirigent` binary: a server process on 127.0.0.1:0 and CLI invocations with
//! their own config directory.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::Arc,
};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_dirigent");

/// A command of the binary with a clean environment of Dirigent variables.
pub(crate) fn dirigent(config_dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    for var in [
        "DIRIGENT_URL",
        "DIRIGENT_TOKEN",
        "DIRIGENT_LISTEN",
        "DIRIGENT_DATA",
        "DIRIGENT_DATABASE_URL",
        "DIRIGENT_ADMIN_PASSWORD",
        "DIRIGENT_CA_FILE",
        "DIRIGENT_TLS_CERT",
        "DIRIGENT_TLS_KEY",
    ] {
        command.env_remove(var);
    }
    // Local agents keep no X servers unless a test asks (`--local-agent-sessions`).
    command
        .env("DIRIGENT_CONFIG_DIR", config_dir)
        .env("DIRIGENT_LOCAL_AGENT_SESSIONS", "0")
        .env("NO_COLOR", "1");
    command
}

/// A `dirigent serve` process, stopped with SIGTERM when dropped.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) url: String,
    pub(crate) first_output: Vec<String>,
    pub(crate) dir: Arc<tempfile::TempDir>,
    /// The local agent outlives this server (another server takes the directory over).
    dir_keeps_agent: bool,
}

impl ServerProcess {
    /// Starts `dirigent serve` in a fresh directory with extra arguments and environment,
    /// and reads what it prints up to its banner, which names the address and comes last.
    pub(crate) fn start(extra: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        ServerProcess::start_in(
            Arc::new(tempfile::tempdir().unwrap()),
            "127.0.0.1:0",
            extra,
            env,
        )
    }

    /// Starts `dirigent serve` in `dir` (which may hold the data of an earlier server).
    pub(crate) fn start_in(
        dir: Arc<tempfile::TempDir>,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ServerProcess {
        let mut child = dirigent(&dir.path().join("config"))
            .current_dir(dir.path())
            .args(["serve", "--listen", listen])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first_output = Vec::new();
        loop {
            let mut line = String::new();
            assert_ne!(
                stdout.read_line(&mut line).unwrap(),
                0,
                "the server exited: {first_output:?}"
            );
            first_output.push(line.trim_end().to_owned());
            if line.contains(" listening on ") {
                break;
            }
        }
        let banner = first_output.last().unwrap();
        let url = banner
            .split_whitespace()
            .find(|word| word.starts_with("http://") || word.starts_with("https://"))
            .unwrap_or_else(|| panic!("no address in {first_output:?}"))
            .to_owned();
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        ServerProcess {
            child,
            url,
            first_output,
            dir,
            dir_keeps_agent: false,
        }
    }

    /// Logs the CLI in to this server as `admin`, keeping the session in the config directory.
    pub(crate) fn login(&self, password: &str) {
        let login = self.cli(&[
            "login",
            "--url",
            &self.url,
            "--username",
            "admin",
            "--password-stdin",
        ]);
        ok(run_with_input(login, &format!("{password}\n")));
    }

    pub(crate) fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// A CLI command aimed at this server.
    pub(crate) fn cli(&self, args: &[&str]) -> Command {
        let mut command = dirigent(&self.config_dir());
        command.current_dir(self.dir.path()).args(args);
        command
    }

    /// The address the server listens on.
    pub(crate) fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }

    /// Kills the server with SIGKILL, leaving its agents and robots alone; answers its
    /// directory, to start another server on.
    pub(crate) fn kill9(mut self) -> Arc<tempfile::TempDir> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = Arc::clone(&self.dir);
        self.dir_keeps_agent = true;
        dir
    }

    /// Stops the server with SIGTERM and answers its exit status and standard error.
    pub(crate) fn stop(mut self) -> (std::process::ExitStatus, String) {
        signal_process(self.child.id(), nix::sys::signal::Signal::SIGTERM);
        let mut stderr = String::new();
        std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        let status = self.child.wait().unwrap();
        (status, stderr)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir_keeps_agent {
            stop_agent(&self.dir.path().join("dirigent-data/local-agent"));
        }
    }
}

/// A process killed (SIGKILL) and reaped when dropped, so that a failing test leaves none
/// behind.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops the agent holding the data directory `dir`, if one does (its pid is in `lock`).
pub(crate) fn stop_agent(dir: &Path) {
    if let Ok(pid) = std::fs::read_to_string(dir.join("lock"))
        && let Ok(pid) = pid.trim().parse::<u32>()
    {
        signal_process(pid, nix::sys::signal::Signal::SIGTERM);
    }
}

/// Sends a signal to one process; refuses pids that would reach more than one.
pub(crate) fn signal_process(pid: u32, signal: nix::sys::signal::Signal) {
    assert!(1 < pid, "refusing to signal pid {pid}");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        signal,
    );
}

/// Sends a signal to a process group; refuses groups that would reach more than one.
pub(crate) fn signal_group(pgid: u32, signal: nix::sys::signal::Signal) {
    assert!(1 < pgid, "refusing to signal group {pgid}");
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(i32::try_from(pgid).unwrap()),
        signal,
    );
}

/// Runs a command with `input` on standard input.
pub(crate) fn run_with_input(mut command: Command, input: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub(crate) fn run(mut command: Command) -> Output {
    command.stdin(Stdio::null()).output().unwrap()
}

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the command succeeded and answers its standard output.
#[track_caller]
pub(crate) fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "failed with {:?}: {}",
        output.status,
        stderr(&output)
    );
    stdout(&output)
}

/// Asserts the command failed with `code` and a message containing `message`.
#[track_caller]
pub(crate) fn fails(output: Output, code: i32, message: &str) {
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(message), "expected {message:?} in: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

/// Runs a CLI command against `server` with `--json` and answers what it printed.
#[track_caller]
pub(crate) fn json(server: &ServerProcess, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&ok(run(server.cli(&all)))).unwrap()
}

/// An agent enrolled with `server` under `name`, its data in `data`, with extra flags; killed
/// when dropped.
pub(crate) fn enrolled_agent(
    server: &ServerProcess,
    name: &str,
    flags: &[&str],
    data: &Path,
) -> KillOnDrop {
    let token = ok(run(server.cli(&["agent", "enroll-token"])))
        .trim()
        .to_owned();
    let mut command = dirigent(&server.config_dir());
    command
        .args(["agent", "--server", &server.url, "--name", name])
        .args(["--enroll-token", &token])
        .args(flags)
        .arg("--data")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    KillOnDrop(command.spawn().unwrap())
}

/// Asks `check` again (every 50 ms, for at most 60 s) until it answers something: for the
/// conditions the server offers no wait for.
#[track_caller]
pub(crate) fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited 60 s for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
