//! The log store on real processes: a robot's lines and structured records, the local agent's
//! and the orchestrator's own logs and an activity's output, found by one query, followed
//! live by `dirigent logs --follow`, exported as NDJSON; a long line kept cut; bad queries.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    process::Stdio,
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;

use crate::{
    lifecycle::{create_robot, server_with, wait_state},
    support::{KillOnDrop, enrolled_agent, eventually, fails, json, ok, run},
};

const ROBOT_SCRIPT: &str = r#"echo "okapi says hello"
echo '{"level": "error", "msg": "okapi could not book", "invoice": 7}'
printf 'okapi %070000d\n' 0
echo "okapi on stderr" >&2"#;

#[test]
fn every_source_is_found_by_one_query_and_followed_live() {
    let server = server_with(&[]);
    // The follower starts first: it must see what comes after it, as it comes.
    let mut follower = KillOnDrop(
        server
            .cli(&["logs", "okapi", "--follow", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (lines_tx, lines) = mpsc::channel::<Value>();
    let stdout = follower.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                return;
            }
        }
    });

    create_robot(&server, "okapi", &[], &["sh", "-c", ROBOT_SCRIPT]);
    let started = json(&server, &["run", "start", "okapi"]);
    let run_id = started["id"].as_str().unwrap().to_owned();
    wait_state(&server, &run_id, "succeeded");
    ok(run(server.cli(&[
        "exec",
        "local",
        "--",
        "echo",
        "okapi via exec",
    ])));

    // Followed live: all four sources, each record once, in the order stored.
    let mut followed: Vec<Value> = Vec::new();
    let sources = |records: &[Value]| -> BTreeSet<String> {
        records
            .iter()
            .map(|record| record["source"].as_str().unwrap().to_owned())
            .collect()
    };
    while sources(&followed).len() < 4 {
        let record = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the follower saw only {followed:?}"));
        followed.push(record);
    }
    let ids: Vec<u64> = followed.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");

    // One query finds them all.
    let page = json(&server, &["logs", "okapi", "--limit", "50"]);
    let records: Vec<Value> = page["records"].as_array().unwrap().clone();
    assert_eq!(
        sources(&records),
        ["activity", "agent", "robot", "server"]
            .into_iter()
            .map(str::to_owned)
            .collect::<BTreeSet<_>>(),
        "{records:#?}"
    );
    let of_run = |text: &str| {
        records
            .iter()
            .find(|record| record["run_id"] == run_id.as_str() && record["text"] == text)
            .unwrap_or_else(|| panic!("{text:?} in {records:#?}"))
            .clone()
    };
    assert_eq!(of_run("okapi says hello")["level"], "info");
    let structured = of_run("okapi could not book");
    assert_eq!(structured["level"], "error");
    assert_eq!(structured["fields"]["invoice"], 7);
    assert_eq!(of_run("okapi on stderr")["level"], "warn");
    let long = records
        .iter()
        .find(|record| record["text"].as_str().unwrap().starts_with("okapi 000"))
        .unwrap();
    let long = long["text"].as_str().unwrap();
    assert!(long.ends_with(" …[truncated]"), "marked");
    assert_eq!(
        long.len(),
        64 * 1024 + " …[truncated]".len(),
        "cut at 64 KiB"
    );
    let server_record = records
        .iter()
        .find(|record| record["source"] == "server")
        .unwrap();
    assert_eq!(server_record["robot"], "okapi");
    assert_eq!(server_record["fields"]["state"], "succeeded");

    // The same through the filters, and as NDJSON.
    let errors = json(&server, &["logs", "--robot", "okapi", "--level", "error"]);
    let texts: Vec<&str> = errors["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["okapi could not book"]);
    let exported = ok(run(server.cli(&["logs", "okapi", "--ndjson", "--oldest"])));
    let exported: Vec<Value> = exported
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(exported.len(), records.len());
    let exported_ids: Vec<u64> = exported.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert!(exported_ids.windows(2).all(|w| w[0] < w[1]), "oldest first");

    // The run page's search goes through the same store.
    let in_run = json(&server, &["logs", "book*", "--run", &run_id]);
    assert_eq!(in_run["records"].as_array().unwrap().len(), 1);

    // Bad input: where the query breaks, and which filter is wrong.
    fails(
        run(server.cli(&["logs", "okapi \"not closed"])),
        6,
        "q: at 7: a quote that is not closed",
    );
    fails(
        run(server.cli(&["logs", "--level", "loud"])),
        6,
        "level: \"loud\" is not one of trace, debug, info, warn, error",
    );
    fails(
        run(server.cli(&["logs", "--source", "robots"])),
        6,
        "source: \"robots\" is not one of robot, agent, server, activity",
    );
}

#[test]
fn a_python_robot_writes_structured_records_with_the_sdk() {
    let server = server_with(&[]);
    let script = r#"
import logging
from dirigent import log, LogHandler
log.info("booked", invoice=7, supplier="ACME")
logger = logging.getLogger("portal")
logger.addHandler(LogHandler())
logger.warning("portal slow", extra={"seconds": 3.5})
try:
    1 / 0
except ZeroDivisionError:
    logger.exception("could not total")
"#;
    let sdk = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sdk/python");
    create_robot(
        &server,
        "ledger",
        &["--env", &format!("PYTHONPATH={sdk}")],
        &["python3", "-c", script],
    );
    let run_id = json(&server, &["run", "start", "ledger"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_state(&server, &run_id, "succeeded");

    let found = |args: &[&str]| -> Vec<Value> {
        let mut all = vec!["logs", "--run", &run_id, "--oldest"];
        all.extend_from_slice(args);
        json(&server, &all)["records"].as_array().unwrap().clone()
    };
    let records = found(&[]);
    let summary: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r["level"].as_str().unwrap(), r["text"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("info", "booked"),
            ("warn", "portal slow"),
            ("error", "could not total")
        ]
    );
    assert_eq!(records[0]["fields"]["supplier"], "ACME");
    assert_eq!(records[1]["fields"]["seconds"], 3.5);
    assert_eq!(records[1]["fields"]["logger"], "portal");
    assert!(
        records[2]["fields"]["exception"]
            .as_str()
            .unwrap()
            .contains("ZeroDivisionError")
    );
    // Fields are searched as words.
    let by_field = found(&["acme"]);
    assert_eq!(by_field.len(), 1);
    assert_eq!(by_field[0]["text"], "booked");
    assert_eq!(found(&["zerodivisionerror"]).len(), 1);
}

/// A size-limited tmpfs, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: std::path::PathBuf, mib: u32) -> SmallDisk {
        std::fs::create_dir_all(&path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs at {}", path.display());
        SmallDisk(path)
    }

    /// Fills what is left, to the last byte the file system gives.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        for chunk in [64 * 1024, 4096, 1] {
            let bytes = vec![0u8; chunk];
            while file.write_all(&bytes).is_ok() {}
        }
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn on_a_full_disk_an_agents_lines_wait_and_arrive_later_none_lost() {
    let server = server_with(&["--no-local-agent"]);
    let disk = SmallDisk::mount(server.dir.path().join("small"), 8);
    let _agent = enrolled_agent(&server, "cramped", &[], &disk.0.join("agent"));
    eventually("the agent online", || {
        let agents = json(&server, &["agent", "ls"]);
        (agents[0]["state"] == "online").then_some(())
    });
    let go = server.dir.path().join("go");
    let done = server.dir.path().join("done");
    let script = format!(
        "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo \"line $i\"; \
         if [ $i = 100 ]; then while [ ! -e {go} ]; do sleep 0.02; done; fi; done; touch {done}",
        go = go.display(),
        done = done.display()
    );
    create_robot(&server, "scribe", &[], &["sh", "-c", &script]);
    let run_id = json(&server, &["run", "start", "scribe"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    crate::lifecycle::await_output(&server, &run_id, "line 100");

    // The disk fills; the robot writes the rest and ends meanwhile.
    let filler = disk.fill();
    std::fs::write(&go, "").unwrap();
    eventually("the robot done", || done.exists().then_some(()));
    let shown = json(&server, &["run", "show", &run_id]);
    assert_eq!(
        shown["state"], "running",
        "its end waits in the agent's memory: {shown}"
    );
    let stored = ok(run(server.cli(&["run", "logs", &run_id])));
    assert!(stored.lines().count() < 3000, "not all arrived while full");

    // Space again: everything arrives, in order, once.
    std::fs::remove_file(filler).unwrap();
    wait_state(&server, &run_id, "succeeded");
    let lines = ok(run(server.cli(&["run", "logs", &run_id])));
    let numbers: Vec<u32> = lines
        .lines()
        .map(|line| line.strip_prefix("line ").unwrap().parse().unwrap())
        .collect();
    assert_eq!(numbers, (1..=3000).collect::<Vec<_>>());
    let said = json(
        &server,
        &["logs", "--source", "agent", "\"cannot write the journal\""],
    );
    assert_eq!(said["records"].as_array().unwrap().len(), 1, "{said}");
}
