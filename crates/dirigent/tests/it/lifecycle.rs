//! The robot lifecycle on real processes and signals: a real `dirigent serve` with its local
//! agent (or a separately enrolled agent), shell and Python robots, and the CLI.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use serde_json::Value;

use crate::support::{KillOnDrop, ServerProcess, dirigent, eventually, json, ok, run, stop_agent};

const PASSWORD: &str = "lifecycle-password-1";

pub(crate) fn server_with(extra: &[&str]) -> ServerProcess {
    let server = ServerProcess::start(extra, &[("DIRIGENT_ADMIN_PASSWORD", PASSWORD)]);
    server.login(PASSWORD);
    server
}

pub(crate) fn create_robot(server: &ServerProcess, name: &str, flags: &[&str], argv: &[&str]) {
    let mut args = vec!["robot", "create", name];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend_from_slice(argv);
    ok(run(server.cli(&args)));
}

/// Starts a run and waits until it runs; answers its id and pid.
pub(crate) fn start_running(server: &ServerProcess, robot: &str) -> (String, u32) {
    let started = json(server, &["run", "start", robot, "--wait"]);
    assert_eq!(started["state"], "running", "{started}");
    let id = started["id"].as_str().unwrap().to_owned();
    let pid = json(server, &["run", "show", &id])["pid"].as_u64().unwrap();
    (id, u32::try_from(pid).unwrap())
}

/// Waits until the run is in `state` (or has ended) and asserts it is `state`.
#[track_caller]
pub(crate) fn wait_state(server: &ServerProcess, id: &str, state: &str) -> Value {
    let run = json(
        server,
        &["run", "wait", id, "--state", state, "--timeout", "30"],
    );
    assert_eq!(run["state"], state, "{run}");
    run
}

/// Follows the run's output until a line contains `needle`; answers the lines read.
pub(crate) fn await_output(server: &ServerProcess, id: &str, needle: &str) -> Vec<String> {
    let mut follow = server
        .cli(&["run", "logs", id, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let needle = needle.to_owned();
    let (found, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let done = line.contains(&needle);
            seen.push(line);
            if done {
                break;
            }
        }
        let _ = found.send(seen);
    });
    let seen = lines
        .recv_timeout(Duration::from_secs(30))
        .expect("the output line did not come");
    let _ = follow.kill();
    let _ = follow.wait();
    seen
}

/// The processes whose process group is `pgid`.
pub(crate) fn group_members(pgid: u32) -> Vec<u32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(after_name) = stat.rfind(')').map(|idx| &stat[idx + 2..]) else {
            continue;
        };
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        if fields.get(2).and_then(|pgrp| pgrp.parse::<u32>().ok()) == Some(pgid) && fields[0] != "Z"
        {
            members.push(pid);
        }
    }
    members
}

fn process_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap()
}

const HANDLES_TERM: &str =
    "trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.05; done";
const IGNORES_TERM: &str = "trap '' TERM; echo ready; while true; do sleep 0.05; done";

#[test]
fn pause_resume_and_safe_stop_a_robot_that_handles_sigterm() {
    let server = server_with(&[]);
    create_robot(&server, "polite", &[], &["sh", "-c", HANDLES_TERM]);
    let (id, pid) = start_running(&server, "polite");
    await_output(&server, &id, "ready");

    ok(run(server.cli(&["run", "pause", &id])));
    wait_state(&server, &id, "paused");
    assert_eq!(process_state(pid), 'T', "SIGSTOP reached the robot");
    ok(run(server.cli(&["run", "resume", &id])));
    wait_state(&server, &id, "running");
    assert_ne!(process_state(pid), 'T');

    ok(run(server.cli(&["run", "stop", &id])));
    let ended = wait_state(&server, &id, "stopped");
    assert_eq!(ended["exit_code"], 0, "{ended}");
    let logs = ok(run(server.cli(&["run", "logs", &id])));
    assert!(logs.contains("got TERM"), "{logs}");
    assert!(group_members(pid).is_empty());

    let detail = json(&server, &["run", "show", &id]);
    let history: Vec<&str> = detail["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        history,
        [
            "queued", "starting", "running", "paused", "running", "stopping", "stopped"
        ]
    );
    let causes: Vec<&str> = detail["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["cause"].as_str().unwrap())
        .collect();
    assert_eq!(causes[0], "user:admin");
    assert_eq!(causes[2], "agent:local");
    assert_eq!(
        json(&server, &["robot", "show", "polite"])["mode"],
        "manual",
        "an operator's pause or stop takes manual control"
    );
}

#[test]
fn a_robot_that_ignores_sigterm_is_killed_after_its_grace() {
    let server = server_with(&[]);
    create_robot(
        &server,
        "stubborn",
        &["--stop-grace", "1"],
        &["sh", "-c", IGNORES_TERM],
    );
    let (id, pid) = start_running(&server, "stubborn");
    await_output(&server, &id, "ready");
    ok(run(server.cli(&["run", "stop", &id])));
    let ended = wait_state(&server, &id, "killed");
    assert_eq!(ended["signal"], 9, "{ended}");
    assert!(group_members(pid).is_empty());

    // Paused robots get SIGCONT with their SIGTERM, and force stop needs no grace.
    let (id, pid) = start_running(&server, "stubborn");
    ok(run(server.cli(&["run", "pause", &id])));
    wait_state(&server, &id, "paused");
    ok(run(server.cli(&["run", "kill", &id])));
    wait_state(&server, &id, "killed");
    assert!(group_members(pid).is_empty());
}

#[test]
fn grandchildren_are_gone_after_stop_and_after_kill() {
    let server = server_with(&[]);
    let script = "sleep 1000 & sleep 1000 & (trap '' TERM; sleep 1000) & echo spawned; wait";
    create_robot(
        &server,
        "family",
        &["--stop-grace", "1"],
        &["sh", "-c", script],
    );
    for operation in ["stop", "kill"] {
        let (id, pid) = start_running(&server, "family");
        await_output(&server, &id, "spawned");
        assert!(
            4 <= group_members(pid).len(),
            "the robot and its grandchildren: {:?}",
            group_members(pid)
        );
        ok(run(server.cli(&["run", operation, &id])));
        let ended = json(
            &server,
            &[
                "run",
                "wait",
                &id,
                "--state",
                "stopped,killed",
                "--timeout",
                "30",
            ],
        );
        assert!(ended["ended_at"].is_string(), "{ended}");
        assert_eq!(
            group_members(pid),
            Vec::<u32>::new(),
            "nothing left after {operation}"
        );
    }
}

#[test]
fn a_python_robot_reads_its_stop_flag_with_its_run_token() {
    let server = server_with(&[]);
    let script = r#"
import json, os, signal, sys, time, urllib.request
signal.signal(signal.SIGTERM, signal.SIG_IGN)
url = os.environ["DIRIGENT_URL"] + "/api/v1/runs/" + os.environ["DIRIGENT_RUN_ID"]
request = urllib.request.Request(url, headers={"Authorization": "Bearer " + os.environ["DIRIGENT_RUN_TOKEN"]})
print("working", flush=True)
while True:
    run = json.load(urllib.request.urlopen(request))
    if run["stop_requested"]:
        print("stop requested, finishing", flush=True)
        sys.exit(0)
    time.sleep(0.05)
"#;
    create_robot(
        &server,
        "pybot",
        &["--stop-grace", "20"],
        &["python3", "-u", "-c", script],
    );
    let (id, _) = start_running(&server, "pybot");
    await_output(&server, &id, "working");
    ok(run(server.cli(&["run", "stop", &id])));
    let ended = wait_state(&server, &id, "stopped");
    assert_eq!(
        ended["exit_code"], 0,
        "it left by itself, before the grace ran out: {ended}"
    );
    let logs = ok(run(server.cli(&["run", "logs", &id])));
    assert!(logs.contains("stop requested, finishing"), "{logs}");
}

#[test]
fn limits_queue_runs_and_time_them_out() {
    let server = server_with(&[]);
    create_robot(&server, "single", &[], &["sh", "-c", HANDLES_TERM]);
    let (first, _) = start_running(&server, "single");
    let second = json(&server, &["run", "start", "single"]);
    assert_eq!(second["state"], "queued");
    assert_eq!(
        second["reason"],
        "waiting: the robot runs 1 of 1 allowed at once"
    );
    let second = second["id"].as_str().unwrap().to_owned();
    ok(run(server.cli(&["run", "kill", &first])));
    wait_state(&server, &second, "running");
    // More parallel runs allowed: a queued run starts at once, nothing else needed.
    let third = json(&server, &["run", "start", "single"]);
    assert_eq!(third["state"], "queued");
    let third = third["id"].as_str().unwrap().to_owned();
    ok(run(server.cli(&[
        "robot",
        "update",
        "single",
        "--max-parallel",
        "2",
    ])));
    wait_state(&server, &third, "running");
    for id in [&second, &third] {
        ok(run(server.cli(&["run", "kill", id])));
        wait_state(&server, id, "killed");
    }

    create_robot(
        &server,
        "slow",
        &["--max-duration", "1", "--stop-grace", "1"],
        &["sh", "-c", IGNORES_TERM],
    );
    let (id, pid) = start_running(&server, "slow");
    let ended = wait_state(&server, &id, "timed_out");
    assert!(
        ended["reason"].as_str().unwrap().contains("signal 9"),
        "{ended}"
    );
    assert!(group_members(pid).is_empty());

    let cancelled = json(&server, &["run", "start", "single"]);
    let cancelled = cancelled["id"].as_str().unwrap();
    wait_state(&server, cancelled, "running");
    let missing = run(server.cli(&["run", "pause", "run_nope"]));
    assert_eq!(missing.status.code(), Some(4));
    ok(run(server.cli(&["run", "kill", cancelled])));
    wait_state(&server, cancelled, "killed");
    let again = run(server.cli(&["run", "resume", cancelled]));
    assert_eq!(
        again.status.code(),
        Some(5),
        "resuming an ended run is a conflict"
    );
}

#[test]
fn a_crash_loop_switches_the_robot_to_manual() {
    let server = server_with(&[]);
    let gate = server.dir.path().join("gate");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.02; done; echo boom; exit 3",
        gate.display()
    );
    create_robot(
        &server,
        "crashy",
        &[
            "--restart-policy",
            "on-failure",
            "--backoff-initial",
            "0",
            "--backoff-max",
            "0",
            "--crash-loop-max-starts",
            "2",
            "--crash-loop-window",
            "600",
        ],
        &["sh", "-c", &script],
    );
    let (first, _) = start_running(&server, "crashy");
    ok(run(server.cli(&["robot", "auto", "crashy"])));
    std::fs::write(&gate, "").unwrap();

    // The operator's run fails, then the restart policy starts it twice more; the third
    // automatic start would exceed the guard.
    wait_state(&server, &first, "failed");
    for _ in 0..2 {
        let runs = json(&server, &["run", "ls", "--robot", "crashy"]);
        let newest = runs[0]["id"].as_str().unwrap().to_owned();
        let ended = json(
            &server,
            &[
                "run",
                "wait",
                &newest,
                "--state",
                "failed",
                "--timeout",
                "30",
            ],
        );
        assert_eq!(ended["state"], "failed", "{ended}");
    }
    let runs = json(&server, &["run", "ls", "--robot", "crashy"]);
    assert_eq!(runs.as_array().unwrap().len(), 3, "{runs}");
    let robot = json(&server, &["robot", "show", "crashy"]);
    assert_eq!(robot["mode"], "manual", "{robot}");
    assert!(
        robot["mode_reason"]
            .as_str()
            .unwrap()
            .starts_with("crash loop: more than 2 automatic starts within 600 s"),
        "{robot}"
    );
    let detail = json(&server, &["run", "show", runs[0]["id"].as_str().unwrap()]);
    assert_eq!(detail["transitions"][0]["cause"], "restart_policy");
}

#[test]
fn robots_and_their_output_survive_a_server_restart() {
    let server = server_with(&[]);
    create_robot(
        &server,
        "ticker",
        &[],
        &[
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.02; done",
        ],
    );
    let (id, pid) = start_running(&server, "ticker");
    await_output(&server, &id, "tick 3");
    let listen = server.addr();
    let dir = server.kill9();
    assert!(
        !group_members(pid).is_empty(),
        "the robot outlives the server"
    );

    // Output goes on while the orchestrator is down; the agent journals it.
    let restarted = ServerProcess::start_in(
        Arc::clone(&dir),
        &listen,
        &[],
        &[("DIRIGENT_ADMIN_PASSWORD", PASSWORD)],
    );
    let after = await_output(&restarted, &id, "tick 200");
    assert!(
        after.iter().any(|line| line == "tick 1"),
        "the whole output is there"
    );
    let shown = json(&restarted, &["run", "show", &id]);
    assert_eq!(shown["state"], "running", "{shown}");
    assert_eq!(shown["pid"], pid, "the same process, not a second copy");
    let active = json(&restarted, &["run", "ls", "--active"]);
    assert_eq!(active.as_array().unwrap().len(), 1, "{active}");

    ok(run(restarted.cli(&["run", "kill", &id])));
    wait_state(&restarted, &id, "killed");
    let logs = ok(run(restarted.cli(&["run", "logs", &id])));
    let numbers: Vec<u64> = logs
        .lines()
        .filter_map(|line| line.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert!(200 <= numbers.len());
    assert!(
        numbers.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "no line lost or doubled"
    );
    // The agent's own record of starting it is kept once, and the output is in the log store.
    let started = json(&restarted, &["logs", "--source", "agent", &id]);
    let started: Vec<&Value> = started["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|record| record["text"] == "started a robot")
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
    let found = json(&restarted, &["logs", "\"tick 150\"", "--run", &id]);
    assert_eq!(found["records"].as_array().unwrap().len(), 1, "{found}");
}

#[test]
fn an_enrolled_agent_takes_queued_runs_and_its_silence_loses_them() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    std::fs::write(
        dir.path().join("fast.toml"),
        "agent_lost_after_seconds = 1\n",
    )
    .unwrap();
    let server = ServerProcess::start_in(
        Arc::clone(&dir),
        "127.0.0.1:0",
        &["--no-local-agent", "--config", "fast.toml"],
        &[("DIRIGENT_ADMIN_PASSWORD", PASSWORD)],
    );
    server.login(PASSWORD);
    create_robot(
        &server,
        "remote",
        &["--agent", "site=lab"],
        &["sh", "-c", HANDLES_TERM],
    );
    let queued = json(&server, &["run", "start", "remote"]);
    assert_eq!(queued["state"], "queued");
    assert_eq!(
        queued["reason"],
        "waiting for an agent labelled site=lab: none is enrolled"
    );
    let id = queued["id"].as_str().unwrap().to_owned();

    let token = ok(run(server.cli(&["agent", "enroll-token"])))
        .trim()
        .to_owned();
    let agent_dir = dir.path().join("lab-agent");
    let mut agent = dirigent(&server.config_dir())
        .args([
            "agent",
            "--server",
            &server.url,
            "--name",
            "lab-1",
            "--labels",
            "site=lab",
            "--capacity",
            "2",
            "--enroll-token",
            &token,
        ])
        .arg("--data")
        .arg(&agent_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = wait_state(&server, &id, "running");
    assert_eq!(running["agent"], "lab-1");
    let agents = json(&server, &["agent", "ls"]);
    assert_eq!(agents[0]["name"], "lab-1");
    assert_eq!(agents[0]["labels"]["site"], "lab");
    assert_eq!(agents[0]["active_runs"], 1);
    let pid = u32::try_from(
        json(&server, &["run", "show", &id])["pid"]
            .as_u64()
            .unwrap(),
    )
    .unwrap();

    let used_again = run(server.cli(&[
        "agent",
        "--server",
        &server.url,
        "--enroll-token",
        &token,
        "--data",
        "/tmp/nowhere-dirigent",
    ]));
    assert_eq!(
        used_again.status.code(),
        Some(3),
        "an enrollment token works once"
    );

    let _ = agent.kill();
    let _ = agent.wait();
    let lost = wait_state(&server, &id, "lost");
    assert!(
        lost["reason"].as_str().unwrap().contains("silent"),
        "{lost}"
    );
    assert_eq!(json(&server, &["agent", "ls"])[0]["state"], "offline");
    crate::support::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    stop_agent(&agent_dir);
}

#[test]
fn restart_replaces_a_run_and_a_drained_agent_takes_no_new_runs() {
    let server = server_with(&[]);
    create_robot(&server, "svc", &[], &["sh", "-c", HANDLES_TERM]);
    let (old, _) = start_running(&server, "svc");
    let new = json(&server, &["run", "restart", &old]);
    let new = new["id"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    wait_state(&server, &old, "stopped");
    wait_state(&server, &new, "running");

    let drained = json(&server, &["agent", "drain", "local"]);
    assert_eq!(drained["state"], "draining");
    assert_eq!(drained["active_runs"], 1, "it keeps its run");
    ok(run(server.cli(&["run", "kill", &new])));
    wait_state(&server, &new, "killed");
    let waiting = json(&server, &["run", "start", "svc"]);
    assert_eq!(waiting["state"], "queued");
    assert_eq!(waiting["reason"], "waiting for any agent: full or draining");
    ok(run(server.cli(&["agent", "undrain", "local"])));
    let id = waiting["id"].as_str().unwrap();
    wait_state(&server, id, "running");
    ok(run(server.cli(&["run", "kill", id])));
    wait_state(&server, id, "killed");
}

/// A robot that counts aloud while the file `talk` exists, says when it falls quiet, and says
/// goodbye when asked to stop.
fn counts(talk: &std::path::Path) -> String {
    format!(
        "trap 'echo bye; exit 0' TERM; i=0; q=0; while true; do \
         if [ -e {talk} ]; then i=$((i+1)); echo tick $i; \
         elif [ $q != $i ]; then q=$i; echo quiet after $i; fi; sleep 0.1; done",
        talk = talk.display()
    )
}

/// An agent enrolled as `pc-1` in the server's directory, started and killed by hand (and
/// killed when dropped, should a test fail).
struct ManualAgent<'a> {
    server: &'a ServerProcess,
    dir: std::path::PathBuf,
    token: Option<String>,
    process: Option<KillOnDrop>,
}

impl ManualAgent<'_> {
    fn new(server: &ServerProcess) -> ManualAgent<'_> {
        let token = ok(run(server.cli(&["agent", "enroll-token"])))
            .trim()
            .to_owned();
        ManualAgent {
            server,
            dir: server.dir.path().join("agent"),
            token: Some(token),
            process: None,
        }
    }

    fn start(&mut self) {
        let mut command = dirigent(&self.server.config_dir());
        command
            .args(["agent", "--server", &self.server.url, "--name", "pc-1"])
            .arg("--data")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(token) = self.token.take() {
            command.args(["--enroll-token", &token]);
        }
        self.process = Some(KillOnDrop(command.spawn().unwrap()));
    }

    fn kill9(&mut self) {
        self.process = None;
    }

    /// The pid of the agent's keeper, the parent of its robots.
    fn keeper(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("keeper.lock"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

/// The numbers of the `tick N` lines of a run's output, in order.
fn ticks(server: &ServerProcess, id: &str) -> Vec<u32> {
    ok(run(server.cli(&["run", "logs", id])))
        .lines()
        .filter_map(|line| line.rsplit_once("tick ")?.1.trim().parse().ok())
        .collect()
}

#[test]
fn an_agent_restart_adopts_its_robots() {
    let server = server_with(&["--no-local-agent"]);
    let talk = server.dir.path().join("talk");
    create_robot(
        &server,
        "counter",
        &["--restart-policy", "on-failure"],
        &["sh", "-c", &counts(&talk)],
    );
    let go = server.dir.path().join("go");
    let finishes = format!(
        "echo waiting; while [ ! -e {} ]; do sleep 0.05; done; echo finished; exit 3",
        go.display()
    );
    create_robot(&server, "finisher", &[], &["sh", "-c", &finishes]);
    let mut agent = ManualAgent::new(&server);
    agent.start();
    std::fs::write(&talk, "").unwrap();
    let (counter, pid) = start_running(&server, "counter");
    await_output(&server, &counter, "tick 3");
    let (finisher, finisher_pid) = start_running(&server, "finisher");
    await_output(&server, &finisher, "waiting");
    // Lines the agent has read but not yet journaled die with it (a few milliseconds' worth);
    // for nothing to be in flight when it dies, the robot falls quiet first.
    std::fs::remove_file(&talk).unwrap();
    let quiet = await_output(&server, &counter, "quiet after");

    // The agent dies; its robots do not: one ends meanwhile, the other talks on.
    agent.kill9();
    assert!(!group_members(pid).is_empty());
    std::fs::write(&go, "").unwrap();
    std::fs::write(&talk, "").unwrap();
    eventually("the finisher ended", || {
        group_members(finisher_pid).is_empty().then_some(())
    });
    let before_restart: u32 = quiet
        .last()
        .and_then(|line| line.rsplit_once("quiet after ")?.1.trim().parse().ok())
        .unwrap();

    // Back, the agent supervises them again: the end that came meanwhile with its exit
    // status and output, and the counter with its pid and all of its output.
    agent.start();
    let finished = wait_state(&server, &finisher, "failed");
    assert_eq!(finished["exit_code"], 3, "{finished}");
    let logs = ok(run(server.cli(&["run", "logs", &finisher])));
    assert!(
        logs.contains("waiting") && logs.contains("finished"),
        "{logs}"
    );
    await_output(&server, &counter, &format!("tick {}", before_restart + 20));
    let shown = json(&server, &["run", "show", &counter]);
    assert_eq!(shown["state"], "running", "{shown}");
    assert_eq!(
        shown["pid"].as_u64(),
        Some(u64::from(pid)),
        "the same process"
    );
    let seen = ticks(&server, &counter);
    let expected: Vec<u32> = (1..=u32::try_from(seen.len()).unwrap()).collect();
    assert_eq!(seen, expected, "no line lost or doubled across the restart");

    // Pause, resume and stop work on the adopted robot.
    ok(run(server.cli(&["run", "pause", &counter])));
    wait_state(&server, &counter, "paused");
    assert_eq!(process_state(pid), 'T');
    ok(run(server.cli(&["run", "resume", &counter])));
    wait_state(&server, &counter, "running");
    ok(run(server.cli(&["run", "stop", &counter])));
    let stopped = wait_state(&server, &counter, "stopped");
    assert_eq!(stopped["exit_code"], 0, "{stopped}");
    await_output(&server, &counter, "bye");
    assert!(group_members(pid).is_empty());
    let active = json(&server, &["run", "ls", "--active"]);
    assert_eq!(active, serde_json::json!([]), "no second copy");
}

/// Kills the local agent with SIGKILL, and waits until `serve` has started another and it is
/// online.
pub(crate) fn kill_local_agent(server: &ServerProcess) {
    let lock = server.dir.path().join("dirigent-data/local-agent/lock");
    let agent_pid = || -> Option<u32> { std::fs::read_to_string(&lock).ok()?.trim().parse().ok() };
    let first = agent_pid().unwrap();
    crate::support::signal_process(first, nix::sys::signal::Signal::SIGKILL);
    eventually("a new local agent online", || {
        let agents = json(server, &["agent", "ls"]);
        (agent_pid().is_some_and(|pid| pid != first) && agents[0]["state"] == "online")
            .then_some(())
    });
}

#[test]
fn serve_starts_a_killed_local_agent_again_which_adopts_its_robots() {
    let server = server_with(&[]);
    create_robot(&server, "polite", &[], &["sh", "-c", HANDLES_TERM]);
    let (id, pid) = start_running(&server, "polite");
    kill_local_agent(&server);
    let shown = json(&server, &["run", "show", &id]);
    assert_eq!(shown["state"], "running", "{shown}");
    assert_eq!(shown["pid"].as_u64(), Some(u64::from(pid)));
    ok(run(server.cli(&["run", "stop", &id])));
    wait_state(&server, &id, "stopped");
    await_output(&server, &id, "got TERM");
}

#[test]
fn an_agent_restart_without_its_keeper_leaves_no_robot_unsupervised() {
    let server = server_with(&["--no-local-agent"]);
    let talk = server.dir.path().join("talk");
    std::fs::write(&talk, "").unwrap();
    create_robot(
        &server,
        "counter",
        &["--restart-policy", "on-failure"],
        &["sh", "-c", &counts(&talk)],
    );
    let mut agent = ManualAgent::new(&server);
    agent.start();
    let (first, pid) = start_running(&server, "counter");

    // The agent and its keeper die: nobody holds the robot's exit status any more.
    let keeper = agent.keeper();
    agent.kill9();
    crate::support::signal_process(keeper, nix::sys::signal::Signal::SIGKILL);

    // Back, the agent cannot supervise the robot: it ends it (if the lost pipe has not
    // already) and says why; the restart policy starts one new copy.
    agent.start();
    let lost = wait_state(&server, &first, "lost");
    assert!(
        lost["reason"]
            .as_str()
            .unwrap()
            .contains("its agent restarted and could not supervise it any more"),
        "{lost}"
    );
    eventually("the robot's process group gone", || {
        group_members(pid).is_empty().then_some(())
    });
    let replacement = eventually("the restart policy's run", || {
        let runs = json(&server, &["run", "ls", "--active"]);
        let runs = runs.as_array().unwrap().clone();
        (runs.len() == 1 && runs[0]["state"] == "running").then(|| runs[0].clone())
    });
    let replacement = replacement["id"].as_str().unwrap();
    assert_ne!(
        json(&server, &["run", "show", replacement])["pid"].as_u64(),
        Some(u64::from(pid))
    );
    ok(run(server.cli(&["run", "kill", replacement])));
    wait_state(&server, replacement, "killed");
}

#[test]
fn a_run_started_by_hand_takes_arguments_and_environment() {
    let server = server_with(&[]);
    create_robot(
        &server,
        "greeter",
        &[],
        &["sh", "-c", "echo hello $0 $MODE"],
    );
    let started = json(
        &server,
        &[
            "run",
            "start",
            "greeter",
            "--arg",
            "world",
            "--env",
            "MODE=test",
        ],
    );
    let id = started["id"].as_str().unwrap();
    wait_state(&server, id, "succeeded");
    let logs = ok(run(server.cli(&["run", "logs", id])));
    assert!(logs.contains("hello world test"), "{logs}");
    let refused = run(server.cli(&["run", "start", "greeter", "--env", "NOEQUALS"]));
    crate::support::fails(refused, 1, "--env takes KEY=VALUE, not \"NOEQUALS\"");
}

#[test]
fn serve_says_which_robots_outlive_it_or_stops_them_first() {
    // By default the local agent keeps its robots through a stop of the orchestrator.
    let server = server_with(&[]);
    create_robot(&server, "keeper", &[], &["sh", "-c", HANDLES_TERM]);
    let (_, pid) = start_running(&server, "keeper");
    let (status, said) = server.stop();
    assert!(status.success(), "{said}");
    assert!(
        said.contains("1 robot running under the local agent"),
        "{said}"
    );
    assert!(!group_members(pid).is_empty(), "the robot goes on");
    crate::support::signal_group(pid, nix::sys::signal::Signal::SIGKILL);

    // With --stop-robots-on-exit they are safe-stopped first.
    let server = server_with(&["--stop-robots-on-exit"]);
    create_robot(&server, "keeper", &[], &["sh", "-c", HANDLES_TERM]);
    let (_, pid) = start_running(&server, "keeper");
    let (status, said) = server.stop();
    assert!(status.success(), "{said}");
    assert!(
        said.contains("safe-stopped 1 robot of the local agent"),
        "{said}"
    );
    assert!(group_members(pid).is_empty(), "the robot is gone");
}

#[test]
fn a_local_agent_whose_orchestrator_is_gone_stops_its_robots_and_itself() {
    let server = server_with(&[]);
    create_robot(&server, "keeper", &[], &["sh", "-c", HANDLES_TERM]);
    let (_, pid) = start_running(&server, "keeper");
    let data = server.dir.path().join("dirigent-data");
    let agent: u32 = std::fs::read_to_string(data.join("local-agent/lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dir = server.kill9();
    std::fs::remove_dir_all(&data).unwrap();
    eventually("the robot safe-stopped", || {
        group_members(pid).is_empty().then_some(())
    });
    eventually("the local agent gone", || {
        (!std::path::Path::new(&format!("/proc/{agent}")).exists() || process_state(agent) == 'Z')
            .then_some(())
    });
    drop(dir);

    // Or unreachable past its limit (here a second; an hour by default).
    let dir = Arc::new(tempfile::tempdir().unwrap());
    std::fs::write(
        dir.path().join("short.toml"),
        "local_agent_orphan_limit_seconds = 1\n",
    )
    .unwrap();
    let server = ServerProcess::start_in(
        Arc::clone(&dir),
        "127.0.0.1:0",
        &["--config", "short.toml"],
        &[("DIRIGENT_ADMIN_PASSWORD", PASSWORD)],
    );
    server.login(PASSWORD);
    create_robot(&server, "keeper", &[], &["sh", "-c", HANDLES_TERM]);
    let (_, pid) = start_running(&server, "keeper");
    drop(server.kill9());
    eventually("the robot safe-stopped", || {
        group_members(pid).is_empty().then_some(())
    });
}

/// Where the processes of `pids` wait in the kernel (`…pipe_write` for a blocked writer).
fn waiting_in(pids: &[u32]) -> Vec<String> {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/wchan")).ok())
        .collect()
}

#[test]
fn a_full_journal_makes_a_chatty_robot_wait_and_loses_nothing() {
    let server = server_with(&["--no-local-agent"]);
    let dir = server.dir.path().to_owned();
    let go = dir.join("go");
    let chatty = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; seq 1 60000; echo done",
        go.display()
    );
    create_robot(&server, "chatty", &[], &["sh", "-c", &chatty]);
    let agent_dir = dir.join("agent");
    let _agent =
        crate::support::enrolled_agent(&server, "pc-1", &["--journal-max-mib", "1"], &agent_dir);
    let (id, pid) = start_running(&server, "chatty");
    let listen = server.addr();
    let dir = server.kill9();

    // With the orchestrator away, the robot's output (some 4 MB as journaled events) would
    // pile up; past 1 MiB the agent stops reading, and the robot waits.
    std::fs::write(&go, "").unwrap();
    eventually("the robot waiting on its writes", || {
        waiting_in(&group_members(pid))
            .iter()
            .any(|wchan| wchan.ends_with("pipe_write"))
            .then_some(())
    });
    let journal = std::fs::metadata(agent_dir.join("journal.jsonl"))
        .unwrap()
        .len();
    assert!(
        journal < 3 * 1024 * 1024,
        "the journal stays near its cap: {journal} bytes"
    );

    // Back, the orchestrator acknowledges; the robot goes on and ends; nothing is lost.
    let restarted = ServerProcess::start_in(
        Arc::clone(&dir),
        &listen,
        &[],
        &[("DIRIGENT_ADMIN_PASSWORD", PASSWORD)],
    );
    let ended = wait_state(&restarted, &id, "succeeded");
    assert!(
        ended["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("waited"),
        "{ended}"
    );
    let logs = ok(run(restarted.cli(&["run", "logs", &id])));
    let numbers: Vec<u64> = logs.lines().filter_map(|line| line.parse().ok()).collect();
    assert_eq!(numbers.len(), 60_000);
    assert!(
        numbers.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "in order, none doubled"
    );
    assert_eq!(logs.lines().last(), Some("done"));
}
