//! Work-item queues end to end: a Python robot using the SDK, a shell robot using the CLI,
//! and acknowledged items surviving `kill -9` of the server.

use serde_json::Value;

use crate::support::{ServerProcess, fails, json, ok, run};

const PASSWORD: &str = "queues-password-1";

fn server() -> ServerProcess {
    let server = ServerProcess::start(&[], &[("DIRIGENT_ADMIN_PASSWORD", PASSWORD)]);
    server.login(PASSWORD);
    server
}

/// Starts a run of `robot` and waits for it to succeed; answers its id.
fn run_to_success(server: &ServerProcess, robot: &str) -> String {
    let started = json(server, &["run", "start", robot]);
    let id = started["id"].as_str().unwrap().to_owned();
    let ended = json(
        server,
        &[
            "run",
            "wait",
            &id,
            "--state",
            "succeeded",
            "--timeout",
            "60",
        ],
    );
    let logs = ok(run(server.cli(&["run", "logs", &id])));
    assert_eq!(ended["state"], "succeeded", "{ended}\n{logs}");
    id
}

#[test]
fn a_python_robot_processes_a_queue_with_the_sdk() {
    let server = server();
    ok(run(server.cli(&["queue", "create", "invoices"])));
    let items: Vec<Value> = (0..20)
        .map(|n| serde_json::json!({"payload": {"n": n}, "reference": format!("inv-{n}")}))
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

    // The first loop takes four items under one lease, answers one and leaves: the other
    // three go back at once and the second loop takes them again.
    let script = r#"
from dirigent import queue
for item in queue("invoices", batch=4):
    item.complete({"first": True})
    break
for item in queue("invoices", batch=3):
    n = item.payload["n"]
    if n % 2:
        item.complete({"double": 2 * n})
    else:
        item.fail("business", "even numbers are refused")
print("done", flush=True)
"#;
    let sdk = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sdk/python");
    ok(run(server.cli(&[
        "robot",
        "create",
        "bookkeeper",
        "--queue",
        "invoices",
        "--env",
        &format!("PYTHONPATH={sdk}"),
        "--",
        "python3",
        "-u",
        "-c",
        script,
    ])));
    let run_id = run_to_success(&server, "bookkeeper");

    let queue = json(&server, &["queue", "show", "invoices"]);
    assert_eq!(queue["stats"]["counts"]["successful"], 11, "{queue}");
    assert_eq!(queue["stats"]["counts"]["failed"], 9, "{queue}");
    let done = json(&server, &["queue", "items", "invoices", "--field", "n=7"]);
    assert_eq!(done[0]["output"]["double"], 14);
    let first = json(&server, &["queue", "items", "invoices", "--field", "n=0"]);
    assert_eq!(first[0]["output"]["first"], true);
    let put_back = json(&server, &["queue", "items", "invoices", "--field", "n=1"]);
    assert_eq!(put_back[0]["attempts"], 2, "{put_back}");
    assert_eq!(put_back[0]["output"]["double"], 2);
    assert_eq!(done[0]["run_id"], run_id.as_str());
    assert_eq!(done[0]["claimed_by"], format!("run:{run_id}"));
}

#[test]
fn the_cli_claims_several_items_and_completes_them_at_once() {
    let server = server();
    ok(run(server.cli(&["queue", "create", "parcels"])));
    for n in 0..3 {
        ok(run(server.cli(&[
            "queue",
            "add",
            "parcels",
            "--payload",
            &n.to_string(),
        ])));
    }
    let claimed = ok(run(
        server.cli(&["queue", "claim", "parcels", "--count", "2"])
    ));
    let mut lines = claimed.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("Claimed 2 items until "), "{claimed}");
    let lease = header.rsplit(' ').next().unwrap().to_owned();
    let ids: Vec<String> = lines
        .map(|line| line.split('\t').next().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2, "{claimed}");

    let done = run(server.cli(&[
        "queue", "complete", "parcels", &ids[0], &ids[1], "--lease", &lease,
    ]));
    let said = crate::support::stderr(&done);
    ok(done);
    assert!(
        said.contains(&format!("Completed items {}, {}.", ids[0], ids[1])),
        "{said}"
    );

    // Completing again is refused, item by item, with the conflict's exit code.
    let again = run(server.cli(&[
        "queue", "complete", "parcels", &ids[0], &ids[1], "--lease", &lease,
    ]));
    assert_eq!(again.status.code(), Some(5));
    let said = crate::support::stderr(&again);
    assert!(
        said.contains(&format!("Item {}: the item is successful", ids[0])),
        "{said}"
    );
    assert!(
        said.contains("not all items were done: 2 refused"),
        "{said}"
    );

    let json_claim = json(&server, &["queue", "claim", "parcels", "--count", "5"]);
    assert_eq!(json_claim["items"].as_array().unwrap().len(), 1);
    fails(
        run(server.cli(&["queue", "claim", "parcels", "--count", "5"])),
        4,
        "no item is ready in queue parcels",
    );
}

#[test]
fn a_robot_without_the_grant_is_refused_and_its_item_comes_back_when_it_ends() {
    let server = server();
    ok(run(server.cli(&["queue", "create", "orders"])));
    ok(run(server.cli(&[
        "queue",
        "add",
        "orders",
        "--payload",
        "42",
    ])));
    // A shell robot claims with the CLI and exits without answering the item.
    let cli = crate::support::BIN;
    let claim = format!("{cli} queue claim orders --json && {cli} queue claim payroll 2>&1");
    ok(run(server.cli(&[
        "robot", "create", "taker", "--queue", "orders", "--", "sh", "-c", &claim,
    ])));
    let started = json(&server, &["run", "start", "taker"]);
    let id = started["id"].as_str().unwrap();
    let ended = json(
        &server,
        &["run", "wait", id, "--state", "failed", "--timeout", "60"],
    );
    assert_eq!(ended["state"], "failed", "{ended}");
    let logs = ok(run(server.cli(&["run", "logs", id])));
    assert!(logs.contains("\"lease_token\""), "{logs}");
    assert!(
        logs.contains("may not process queues named \"payroll\""),
        "{logs}"
    );

    // The run ended holding the item: it is back at once, its attempt recorded.
    let items = json(&server, &["queue", "items", "orders"]);
    assert_eq!(items[0]["status"], "new", "{items}");
    let item = json(
        &server,
        &["queue", "item", "orders", &items[0]["id"].to_string()],
    );
    assert_eq!(item["history"][0]["outcome"], "run_ended", "{item}");
}

/// What the load saw acknowledged before the server died.
#[derive(Default)]
struct Acknowledged {
    added: Vec<i64>,
    completed: Vec<i64>,
}

#[test]
fn acknowledged_adds_and_completions_survive_kill_9() {
    use std::sync::{Arc, Mutex, mpsc};

    use dirigent_client::Client;
    use dirigent_proto::queue::{
        AddItems, CompleteItems, CompleteRequest, ItemCompletion, NewItem,
    };

    let server = server();
    ok(run(server.cli(&["queue", "create", "durable"])));
    let token = ok(run(server.cli(&["token", "create", "load"])))
        .trim()
        .to_owned();
    let client = Client::new(&server.url, Some(token.clone())).unwrap();
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let (progress, progressed) = mpsc::channel::<()>();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for producer in 0..4 {
        let (client, acked, progress) = (client.clone(), acked.clone(), progress.clone());
        runtime.spawn(async move {
            for batch in 0.. {
                let items = (0..5)
                    .map(|n| NewItem {
                        payload: serde_json::value::to_raw_value(&(producer, batch, n)).unwrap(),
                        reference: None,
                        priority: None,
                        deadline: None,
                        postpone_until: None,
                    })
                    .collect();
                let Ok(added) = client.add_items("durable", &AddItems::Many(items)).await else {
                    return;
                };
                acked.lock().unwrap().added.extend(added.ids);
                let _ = progress.send(());
            }
        });
    }
    for _ in 0..2 {
        let (client, acked, progress) = (client.clone(), acked.clone(), progress.clone());
        runtime.spawn(async move {
            loop {
                let Ok(claim) = client.claim("durable").await else {
                    return;
                };
                let Some(claim) = claim else { continue };
                let request = CompleteRequest {
                    lease_token: claim.lease_token,
                    output: None,
                };
                if client
                    .complete_item("durable", claim.item.id, &request)
                    .await
                    .is_err()
                {
                    return;
                }
                acked.lock().unwrap().completed.push(claim.item.id);
                let _ = progress.send(());
            }
        });
    }
    // A consumer of batches: several items under one lease, completed in one request.
    {
        let (client, acked, progress) = (client.clone(), acked.clone(), progress.clone());
        runtime.spawn(async move {
            loop {
                let Ok(claims) = client.claim_items("durable", 4).await else {
                    return;
                };
                let Some(claims) = claims else { continue };
                let request = CompleteItems {
                    items: claims
                        .items
                        .iter()
                        .map(|item| ItemCompletion {
                            id: item.id,
                            lease_token: claims.lease_token.clone(),
                            output: None,
                        })
                        .collect(),
                };
                let Ok(done) = client.complete_items("durable", &request).await else {
                    return;
                };
                let mut acked = acked.lock().unwrap();
                let done = done
                    .results
                    .into_iter()
                    .filter(|result| result.error.is_none());
                acked.completed.extend(done.map(|result| result.id));
                let _ = progress.send(());
            }
        });
    }
    // Kill the server in the middle of the load.
    loop {
        progressed.recv().unwrap();
        let acked = acked.lock().unwrap();
        if 500 <= acked.added.len() && 50 <= acked.completed.len() {
            break;
        }
    }
    let listen = server.addr();
    let config = server.config_dir();
    let dir = server.kill9();
    runtime.shutdown_background();
    let acked = std::mem::take(&mut *acked.lock().unwrap());

    let restarted =
        ServerProcess::start_in(dir, &listen, &[], &[("DIRIGENT_ADMIN_PASSWORD", PASSWORD)]);
    assert_eq!(restarted.config_dir(), config);
    let check = tokio::runtime::Runtime::new().unwrap();
    check.block_on(async {
        let client = Client::new(&restarted.url, Some(token)).unwrap();
        let mut stored = std::collections::BTreeMap::new();
        let mut after: Option<i64> = None;
        loop {
            let mut query = vec![("limit", "1000".to_owned())];
            if let Some(after) = after {
                query.push(("after", after.to_string()));
            }
            let page = client.items("durable", &query).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            stored.extend(page.into_iter().map(|item| (item.id, item)));
        }
        for id in &acked.added {
            assert!(stored.contains_key(id), "acknowledged item {id} was lost");
        }
        for id in &acked.completed {
            assert_eq!(stored[id].status, "successful", "item {id}");
        }
        // Each completion acknowledged once was the item's only attempt: it was never handed
        // out again, and a successful item never is.
        for id in &acked.completed {
            assert_eq!(stored[id].attempts, 1, "item {id} processed twice");
        }
    });
}
