//! Triggers end to end, with real robots: a queue trigger whose runs drain their queue with
//! the Python SDK, and a trigger that disables itself after failed runs in a row.

use serde_json::Value;

use crate::support::{ServerProcess, eventually, json, ok, run};

const PASSWORD: &str = "triggers-password-1";

fn server() -> ServerProcess {
    let server = ServerProcess::start(&[], &[("DIRIGENT_ADMIN_PASSWORD", PASSWORD)]);
    server.login(PASSWORD);
    server
}

#[test]
fn a_queue_trigger_starts_robots_that_drain_the_queue() {
    let server = server();
    ok(run(server.cli(&["queue", "create", "invoices"])));
    let script = r#"
import os, sys
from dirigent import queue
print("args", sys.argv[1:], "mode", os.environ["MODE"], flush=True)
for item in queue("invoices"):
    item.complete({"seen": item.payload["n"]})
"#;
    let sdk = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sdk/python");
    ok(run(server.cli(&[
        "robot",
        "create",
        "bookkeeper",
        "--queue",
        "invoices",
        "--max-parallel",
        "2",
        "--env",
        &format!("PYTHONPATH={sdk}"),
        "--",
        "python3",
        "-u",
        "-c",
        script,
    ])));
    let trigger = json(
        &server,
        &[
            "trigger",
            "create",
            "bookkeeper",
            "--queue",
            "invoices",
            "--min-items",
            "5",
            "--max-runs",
            "2",
            "--arg",
            "--fast",
            "--env",
            "MODE=quick",
        ],
    );
    let id = trigger["id"].as_str().unwrap();

    let items: Vec<Value> = (0..40)
        .map(|n| serde_json::json!({"payload": {"n": n}}))
        .collect();
    let file = server.dir.path().join("items.json");
    std::fs::write(&file, serde_json::to_string(&items).unwrap()).unwrap();
    ok(run(server.cli(&[
        "queue",
        "add",
        "invoices",
        "--file",
        file.to_str().unwrap(),
    ])));

    eventually("every item processed", || {
        let queue = json(&server, &["queue", "show", "invoices"]);
        (queue["stats"]["counts"]["successful"] == 40).then_some(())
    });
    let firings = json(&server, &["trigger", "firings", id]);
    let started: Vec<&str> = firings
        .as_array()
        .unwrap()
        .iter()
        .filter(|firing| firing["outcome"] == "started")
        .map(|firing| firing["run_id"].as_str().unwrap())
        .collect();
    assert!((1..=4).contains(&started.len()), "{firings}");
    let logs = ok(run(server.cli(&["run", "logs", started[0]])));
    assert!(logs.contains("args ['--fast'] mode quick"), "{logs}");
}

#[test]
fn a_trigger_disables_itself_after_failed_runs_in_a_row() {
    let server = server();
    ok(run(server.cli(&[
        "robot",
        "create",
        "flaky",
        "--",
        "sh",
        "-c",
        "echo broken; exit 3",
    ])));
    let trigger = json(
        &server,
        &[
            "trigger",
            "create",
            "flaky",
            "--every",
            "1",
            "--max-failures",
            "2",
        ],
    );
    let id = trigger["id"].as_str().unwrap();
    let disabled = eventually("the trigger disabled", || {
        let shown = json(&server, &["trigger", "show", id]);
        (shown["enabled"] == false).then_some(shown)
    });
    assert_eq!(disabled["consecutive_failures"], 2, "{disabled}");
    let reason = disabled["disabled_reason"].as_str().unwrap();
    assert!(reason.contains("2 failed runs in a row"), "{reason}");
    let firings = json(&server, &["trigger", "firings", id]);
    assert_eq!(firings[0]["outcome"], "disabled", "{firings}");

    // Shown, and re-enabled explicitly: the count starts again.
    let shown = ok(run(server.cli(&["trigger", "show", id])));
    assert!(shown.contains("failed runs in a row"), "{shown}");
    let enabled = json(&server, &["trigger", "enable", id]);
    assert_eq!(enabled["enabled"], true);
    assert_eq!(enabled["consecutive_failures"], 0);
    ok(run(server.cli(&["trigger", "disable", id])));
}
