//! Activities on real processes: `dirigent exec` and `dirigent activity` against a real
//! `dirigent serve`, its local agent and enrolled agents with their own policies.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Stdio},
    sync::Arc,
};

use serde_json::Value;

use crate::{
    lifecycle::{create_robot, server_with, start_running},
    support::{KillOnDrop, ServerProcess, eventually, fails, json, ok, run, stderr, stdout},
};

const PASSWORD: &str = "activities-password-1";

/// The activities listed, newest first.
fn activities(server: &ServerProcess) -> Vec<Value> {
    json(server, &["activity", "ls"])
        .as_array()
        .unwrap()
        .clone()
}

/// The activity of `operation` whose arguments mention `needle`, once it is in `state`.
fn activity_in(server: &ServerProcess, needle: &str, state: &str) -> Value {
    eventually(&format!("an activity with {needle} {state}"), || {
        activities(server).into_iter().find(|activity| {
            activity["args"].to_string().contains(needle) && activity["state"] == state
        })
    })
}

/// `dirigent exec` in the background, its stdout piped.
fn exec_in_background(server: &ServerProcess, args: &[&str]) -> Child {
    let mut all = vec!["exec"];
    all.extend_from_slice(args);
    server
        .cli(&all)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_owned()
}

fn gone(pid: &str) -> Option<()> {
    (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
}

#[test]
fn exec_streams_output_keeps_the_exit_code_and_kills_the_group_at_its_timeout_or_cancel() {
    let server = server_with(&[]);
    let output = run(server.cli(&[
        "exec",
        "local",
        "--",
        "sh",
        "-c",
        "echo one; echo two >&2; exit 7",
    ]));
    assert_eq!(output.status.code(), Some(7), "{}", stderr(&output));
    assert_eq!(stdout(&output), "one\n");
    assert!(stderr(&output).contains("two"), "{}", stderr(&output));
    let ended = activity_in(&server, "echo one", "failed");
    assert_eq!(ended["result"]["exit_code"], 7, "{ended}");
    assert_eq!(ended["reason"], "exited with code 7");
    let shown = json(
        &server,
        &["activity", "show", ended["id"].as_str().unwrap()],
    );
    let lines: Vec<&str> = shown["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["text"].as_str().unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{shown}");
    assert!(lines.contains(&"one") && lines.contains(&"two"));

    // At its timeout the whole process group goes, the grandchild too.
    let group = "sleep 300 & echo $!; wait";
    let mut timed = exec_in_background(
        &server,
        &["local", "--timeout", "2", "--", "sh", "-c", group],
    );
    let grandchild = first_line(&mut timed);
    assert_eq!(timed.wait().unwrap().code(), Some(124));
    eventually("the grandchild killed", || gone(&grandchild));
    let timed_out = activity_in(&server, "sleep 300", "timed_out");
    assert_eq!(timed_out["reason"], "its timeout passed");

    // Cancelled, likewise.
    let mut cancelled = exec_in_background(
        &server,
        &["local", "--", "sh", "-c", "sleep 301 & echo $!; wait"],
    );
    let grandchild = first_line(&mut cancelled);
    let running = activity_in(&server, "sleep 301", "running");
    ok(run(server.cli(&[
        "activity",
        "cancel",
        running["id"].as_str().unwrap(),
    ])));
    assert_eq!(cancelled.wait().unwrap().code(), Some(130));
    eventually("the grandchild killed", || gone(&grandchild));
    let ended = activity_in(&server, "sleep 301", "cancelled");
    assert!(ended["ended_at"].is_string(), "{ended}");
    let again = run(server.cli(&["activity", "cancel", ended["id"].as_str().unwrap()]));
    fails(again, 5, "has ended (cancelled)");
}

#[test]
fn sequential_activities_run_in_order_and_parallel_ones_overlap() {
    let server = server_with(&[]);
    let dir = server.dir.path();
    let (go, log) = (dir.join("go"), dir.join("order.log"));
    let first = format!(
        "while [ ! -e {go} ]; do sleep 0.05; done; echo first >> {log}",
        go = go.display(),
        log = log.display()
    );
    let second = format!("echo second >> {}", log.display());
    let _first = KillOnDrop(exec_in_background(
        &server,
        &["local", "--", "sh", "-c", &first],
    ));
    activity_in(&server, "echo first", "running");
    let _second = KillOnDrop(exec_in_background(
        &server,
        &["local", "--", "sh", "-c", &second],
    ));
    // The second waits in the agent's queue behind the first, which waits for `go`.
    let waiting = activity_in(&server, "echo second", "queued");
    assert!(waiting["started_at"].is_null(), "{waiting}");
    std::fs::write(&go, "").unwrap();
    let done_first = activity_in(&server, "echo first", "succeeded");
    let done_second = activity_in(&server, "echo second", "succeeded");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "first\nsecond\n");
    assert!(
        done_first["ended_at"].as_str().unwrap() <= done_second["started_at"].as_str().unwrap(),
        "{done_first} {done_second}"
    );

    // Parallel ones run beside each other: the first ends only once the second has run.
    let flag = dir.join("flag");
    let waits = format!("while [ ! -e {} ]; do sleep 0.05; done", flag.display());
    let sets = format!("touch {}", flag.display());
    let mut waiter = exec_in_background(
        &server,
        &[
            "local",
            "--parallel",
            "--timeout",
            "60",
            "--",
            "sh",
            "-c",
            &waits,
        ],
    );
    activity_in(&server, &waits, "running");
    let setter = run(server.cli(&["exec", "local", "--parallel", "--", "sh", "-c", &sets]));
    assert_eq!(setter.status.code(), Some(0), "{}", stderr(&setter));
    assert_eq!(waiter.wait().unwrap().code(), Some(0));
}

/// An agent enrolled with its own labels and flags, its data beside the server's.
fn enrolled_agent(server: &ServerProcess, name: &str, flags: &[&str]) -> KillOnDrop {
    crate::support::enrolled_agent(server, name, flags, &server.dir.path().join(name))
}

#[test]
fn a_selector_fans_out_and_each_agent_keeps_to_its_own_policy() {
    let server = server_with(&["--no-local-agent"]);
    let _agents: Vec<KillOnDrop> = ["lab-1", "lab-2", "lab-3"]
        .into_iter()
        .map(|name| {
            enrolled_agent(
                &server,
                name,
                &["--labels", "site=lab", "--allow", "exec,info"],
            )
        })
        .collect();
    let _strict = enrolled_agent(&server, "strict", &["--labels", "site=office"]);
    eventually("four agents online", || {
        let agents = json(&server, &["agent", "ls"]);
        let online = agents
            .as_array()?
            .iter()
            .filter(|agent| agent["state"] == "online")
            .count();
        (online == 4).then_some(())
    });

    let fan_out = run(server.cli(&[
        "activity",
        "run",
        "exec",
        "--target",
        "site=lab",
        "--args",
        r#"{"argv":["sh","-c","echo from $PPID"]}"#,
        "--json",
    ]));
    let ended: Value =
        serde_json::from_str(&stdout(&fan_out)).unwrap_or_else(|_| panic!("{}", stderr(&fan_out)));
    assert_eq!(ended["state"], "succeeded", "{ended}");
    assert_eq!(ended["target"], "site=lab");
    let children = ended["children"].as_array().unwrap();
    assert_eq!(children.len(), 3, "{ended}");
    let mut targets: Vec<String> = children
        .iter()
        .map(|child| {
            let child = json(&server, &["activity", "show", child.as_str().unwrap()]);
            assert_eq!(child["activity"]["state"], "succeeded", "{child}");
            assert_eq!(child["output"].as_array().unwrap().len(), 1, "{child}");
            child["activity"]["target"].as_str().unwrap().to_owned()
        })
        .collect();
    targets.sort();
    assert_eq!(targets, ["lab-1", "lab-2", "lab-3"]);

    // An enrolled agent allows only info, processes and restarting unless its owner says
    // more: even an administrator's exec is refused there, and the refusal is recorded.
    let refused = run(server.cli(&["exec", "strict", "--", "true"]));
    assert_eq!(refused.status.code(), Some(125));
    assert!(
        stderr(&refused).contains(
            "refused by this agent's policy: it allows agent.restart, info, processes only"
        ),
        "{}",
        stderr(&refused)
    );
    let audit = ok(run(server.cli(&["audit", "--json"])));
    assert!(
        audit.contains("ACTIVITY exec")
            && audit.contains("refused by this agent")
            && audit.contains(r#""outcome": "failed""#),
        "{audit}"
    );
    let info = json(&server, &["agent", "info", "strict"]);
    assert_eq!(
        info["policy"]["operations"],
        serde_json::json!(["agent.restart", "info", "processes"])
    );

    // An agent that is offline: the activity waits, says why, and times out.
    drop(_strict);
    eventually("strict offline", || {
        let agents = json(&server, &["agent", "ls"]);
        agents
            .as_array()?
            .iter()
            .any(|agent| agent["name"] == "strict" && agent["state"] == "offline")
            .then_some(())
    });
    let timed_out = run(server.cli(&[
        "activity",
        "run",
        "info",
        "--target",
        "strict",
        "--timeout",
        "1",
        "--json",
    ]));
    assert_eq!(timed_out.status.code(), Some(124), "{}", stderr(&timed_out));
    let shown: Value = serde_json::from_str(&stdout(&timed_out)).unwrap();
    assert_eq!(
        shown["reason"],
        "not taken by its agent within 1 s (waiting for agent strict, which is offline)",
        "{shown}"
    );
}

#[test]
fn files_go_both_ways_checked_and_paths_out_of_bounds_are_refused() {
    let server = server_with(&[]);
    let data = server.dir.path().join("dirigent-data");
    let local = server.dir.path().join("report.bin");
    let content: Vec<u8> = (0..200_000u32).map(|n| (n % 251) as u8).collect();
    std::fs::write(&local, &content).unwrap();
    let remote = format!("local:{}/copy.bin", data.display());
    let to = run(server.cli(&["agent", "cp", local.to_str().unwrap(), &remote]));
    assert!(to.status.success(), "{}", stderr(&to));
    let back = server.dir.path().join("back.bin");
    ok(run(server.cli(&[
        "agent",
        "cp",
        &remote,
        back.to_str().unwrap(),
    ])));
    assert_eq!(std::fs::read(&back).unwrap(), content);

    let read = |path: String| {
        let args = serde_json::json!({ "path": path }).to_string();
        run(server.cli(&[
            "activity",
            "run",
            "files.read",
            "--target",
            "local",
            "--args",
            &args,
        ]))
    };
    let dotdot = read(format!("{}/../secret", data.display()));
    assert_eq!(dotdot.status.code(), Some(125));
    assert!(
        stderr(&dotdot).contains("holds `..`"),
        "{}",
        stderr(&dotdot)
    );
    let outside = read("/etc/hostname".to_owned());
    assert!(
        stderr(&outside).contains("outside this agent's file roots"),
        "{}",
        stderr(&outside)
    );
    std::os::unix::fs::symlink("/etc/hostname", data.join("leak")).unwrap();
    let link = read(format!("{}/leak", data.display()));
    assert!(
        stderr(&link).contains("a symlink leads to /etc/hostname"),
        "{}",
        stderr(&link)
    );

    // Over the limit: refused before it is queued.
    let big = server.dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 5 * 1024 * 1024]).unwrap();
    let too_big = run(server.cli(&["agent", "cp", big.to_str().unwrap(), &remote]));
    fails(too_big, 6, "at most 4 MiB");
}

#[test]
fn bad_requests_name_what_is_wrong() {
    let server = server_with(&[]);
    fails(
        run(server.cli(&["activity", "run", "nope", "--target", "local"])),
        6,
        "\"nope\" is not an operation of the catalogue",
    );
    fails(
        run(server.cli(&[
            "activity",
            "run",
            "exec",
            "--target",
            "local",
            "--args",
            r#"{"argv":["ls",1]}"#,
        ])),
        6,
        "/args/argv/1: invalid type: integer `1`, expected a string",
    );
    fails(
        run(server.cli(&[
            "activity", "run", "exec", "--target", "local", "--args", "{}",
        ])),
        6,
        "/args/argv: is required",
    );
    fails(
        run(server.cli(&["activity", "run", "exec", "--target", "server"])),
        6,
        "runs on agents, not on the orchestrator",
    );
    fails(
        run(server.cli(&["exec", "ghost", "--", "true"])),
        4,
        "no agent named \"ghost\"",
    );
    fails(
        run(server.cli(&["exec", "os=plan9", "--", "true"])),
        6,
        "no agent has the labels os=plan9",
    );
}

#[test]
fn maintenance_stops_new_runs_and_activities_reach_the_orchestrator() {
    let server = server_with(&[]);
    create_robot(&server, "sleeper", &[], &["sleep", "30"]);
    let (running, _) = start_running(&server, "sleeper");
    let on = json(
        &server,
        &[
            "activity",
            "run",
            "maintenance",
            "--target",
            "server",
            "--args",
            r#"{"on":true,"reason":"patching"}"#,
        ],
    );
    assert_eq!(on["result"]["on"], true, "{on}");
    fails(
        run(server.cli(&["run", "start", "sleeper"])),
        1,
        "maintenance since",
    );
    let info = json(&server, &["activity", "run", "info", "--target", "server"]);
    assert_eq!(
        info["result"]["maintenance"]["reason"], "patching",
        "{info}"
    );
    assert_eq!(info["result"]["active_runs"], 1, "the running run goes on");
    let shown = json(&server, &["run", "show", &running]);
    assert_eq!(shown["state"], "running");
    // The existing operations, through the same door and with the caller's rights.
    let stopped = json(
        &server,
        &[
            "activity",
            "run",
            "run.kill",
            "--target",
            "server",
            "--args",
            &format!(r#"{{"run":"{running}"}}"#),
        ],
    );
    assert_eq!(stopped["result"]["id"], running.as_str(), "{stopped}");
    json(
        &server,
        &[
            "activity",
            "run",
            "maintenance",
            "--target",
            "server",
            "--args",
            r#"{"on":false}"#,
        ],
    );
    ok(run(server.cli(&["run", "start", "sleeper"])));
}

#[test]
fn activities_queued_and_running_across_a_server_restart_end_exactly_once() {
    let server = server_with(&[]);
    let dir = server.dir.path().to_owned();
    let go = dir.join("go");
    let log = dir.join("once.log");
    let first = format!(
        "echo started >> {log}; while [ ! -e {go} ]; do sleep 0.05; done; echo done >> {log}",
        go = go.display(),
        log = log.display()
    );
    let second = format!("echo second >> {}", log.display());
    let _first = KillOnDrop(exec_in_background(
        &server,
        &["local", "--", "sh", "-c", &first],
    ));
    activity_in(&server, "echo started", "running");
    let _second = KillOnDrop(exec_in_background(
        &server,
        &["local", "--", "sh", "-c", &second],
    ));
    activity_in(&server, "echo second", "queued");
    let listen = server.addr();
    let dir = server.kill9();

    // While the orchestrator is away, the first goes on and ends, the second follows it.
    std::fs::write(&go, "").unwrap();
    let restarted = ServerProcess::start_in(
        Arc::clone(&dir),
        &listen,
        &[],
        &[("DIRIGENT_ADMIN_PASSWORD", PASSWORD)],
    );
    let first_done = activity_in(&restarted, "echo started", "succeeded");
    let second_done = activity_in(&restarted, "echo second", "succeeded");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "started\ndone\nsecond\n",
        "each ran once"
    );
    let audit = ok(run(restarted.cli(&["audit", "--json"])));
    for done in [first_done, second_done] {
        let id = done["id"].as_str().unwrap();
        assert_eq!(
            audit.matches(&format!("activity:{id} on local")).count(),
            1,
            "one end recorded: {audit}"
        );
    }
}

#[test]
fn an_agent_restarted_by_an_activity_keeps_its_robots() {
    let server = server_with(&[]);
    create_robot(&server, "steady", &[], &["sleep", "60"]);
    let (id, pid) = start_running(&server, "steady");
    let before = json(&server, &["agent", "info", "local"]);
    let restarted = run(server.cli(&["agent", "restart", "local"]));
    assert!(restarted.status.success(), "{}", stderr(&restarted));
    let ended = eventually("the restart recorded", || {
        activities(&server)
            .into_iter()
            .find(|activity| activity["operation"] == "agent.restart")
    });
    assert_eq!(ended["state"], "succeeded", "{ended}");
    // A new life of the same program in the same process, connected again.
    let after = eventually("the agent back", || {
        let info = run(server.cli(&["agent", "info", "local", "--json"]));
        info.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&info.stdout).unwrap())
    });
    assert_eq!(after["agent_pid"], before["agent_pid"]);
    assert_eq!(after["agent_sha256"], before["agent_sha256"]);
    let shown = json(&server, &["run", "show", &id]);
    assert_eq!(shown["state"], "running", "{shown}");
    assert_eq!(shown["pid"], pid);
}

fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[test]
fn an_agent_updated_to_a_new_binary_keeps_its_robots_and_a_broken_one_changes_nothing() {
    let server = server_with(&["--no-local-agent"]);
    let dir = server.dir.path();
    // The agent runs a copy of the binary of its own, which the update replaces.
    std::fs::create_dir(dir.join("bin")).unwrap();
    let program = dir.join("bin/dirigent");
    std::fs::copy(crate::support::BIN, &program).unwrap();
    let token = ok(run(server.cli(&["agent", "enroll-token"])))
        .trim()
        .to_owned();
    let mut command = std::process::Command::new(&program);
    command
        .args([
            "agent",
            "--server",
            &server.url,
            "--name",
            "pc-up",
            "--enroll-token",
            &token,
        ])
        .args(["--allow", "agent.update,info", "--data"])
        .arg(dir.join("pc-up"))
        .env_remove("DIRIGENT_URL")
        .env_remove("DIRIGENT_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _agent = KillOnDrop(command.spawn().unwrap());
    create_robot(&server, "steady", &[], &["sleep", "120"]);
    let (id, pid) = start_running(&server, "steady");
    let before = json(&server, &["agent", "info", "pc-up"]);
    assert_eq!(before["agent_sha256"], sha256_of(&program));

    // A new build: the same program with bytes appended, so another digest.
    let new = dir.join("dirigent-new");
    let mut content = std::fs::read(&program).unwrap();
    content.extend_from_slice(b"\nanother build\n");
    std::fs::write(&new, &content).unwrap();
    let updated = run(server.cli(&[
        "agent",
        "update",
        "pc-up",
        "--binary",
        new.to_str().unwrap(),
    ]));
    assert!(updated.status.success(), "{}", stderr(&updated));
    assert!(
        stderr(&updated).contains("now runs dirigent "),
        "{}",
        stderr(&updated)
    );
    let after = eventually("the updated agent back", || {
        let info = json(&server, &["agent", "info", "pc-up"]);
        (info["agent_sha256"] == sha256_of(&new)).then_some(info)
    });
    assert_eq!(
        after["agent_pid"], before["agent_pid"],
        "restarted in place"
    );
    assert_eq!(sha256_of(&program), sha256_of(&new));
    assert_eq!(
        sha256_of(&dir.join("pc-up/dirigent.previous")),
        before["agent_sha256"].as_str().unwrap()
    );
    let shown = json(&server, &["run", "show", &id]);
    assert_eq!(
        (shown["state"].as_str(), shown["pid"].as_u64()),
        (Some("running"), Some(u64::from(pid)))
    );

    // A binary that does not run here is refused, and the agent stays as it was.
    let broken = dir.join("broken");
    std::fs::write(&broken, b"\x7fELF not really a program").unwrap();
    let refused = run(server.cli(&[
        "agent",
        "update",
        "pc-up",
        "--binary",
        broken.to_str().unwrap(),
    ]));
    assert_eq!(refused.status.code(), Some(125), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("the agent stays as it was"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(sha256_of(&program), sha256_of(&new));
    let still = json(&server, &["agent", "info", "pc-up"]);
    assert_eq!(still["agent_sha256"], sha256_of(&new));
    // An update naming nothing uploaded is refused before it is queued.
    let args = serde_json::json!({ "sha256": "0".repeat(64) }).to_string();
    fails(
        run(server.cli(&[
            "activity",
            "run",
            "agent.update",
            "--target",
            "pc-up",
            "--args",
            &args,
        ])),
        6,
        "no file with this SHA-256 was uploaded",
    );
}
