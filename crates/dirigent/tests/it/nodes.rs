//! Several `dirigent serve` nodes on one real PostgreSQL database, as an operator runs them:
//! an agent connected to one node is commanded through another, the panel on one node follows
//! runs started through another, failed logins count on every node, the agent fails over when
//! its node is killed, and under a mixed load with nodes killed nothing is lost or done twice.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    browser::Browser,
    panel,
    support::{KillOnDrop, ServerProcess, dirigent, eventually, json, ok, run, stop_agent},
};

const PASSWORD: &str = "nodes-password-1";

/// A schema of its own in the test database, and the URL that uses it.
struct Schema {
    base: String,
    name: String,
}

impl Schema {
    fn create() -> Schema {
        let base = std::env::var("DIRIGENT_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        static SCHEMAS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SCHEMAS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("nodes_{}_{n}", std::process::id());
        psql(&base, &format!("CREATE SCHEMA {name}"));
        Schema { base, name }
    }

    fn url(&self) -> String {
        let separator = if self.base.contains('?') { '&' } else { '?' };
        format!(
            "{}{separator}options=-c%20search_path%3D{}",
            self.base, self.name
        )
    }

    /// One value the query answers, as text.
    fn query(&self, sql: &str) -> String {
        psql(&self.url(), sql)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        psql(&self.base, &format!("DROP SCHEMA {} CASCADE", self.name));
    }
}

fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .args([url, "-Atqc", sql])
        .output()
        .unwrap_or_else(|err| panic!("psql is needed by the several-nodes tests: {err}"));
    assert!(output.status.success(), "{sql}: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A node on the shared database, with the CLI logged in to it.
fn node(dir: Arc<tempfile::TempDir>, listen: &str, id: &str, url: &str) -> ServerProcess {
    std::fs::write(
        dir.path().join("node.toml"),
        "takeover_after_seconds = 2\nagent_lost_after_seconds = 30\n\
         trusted_proxies = [\"127.0.0.1\"]\n",
    )
    .unwrap();
    let server = ServerProcess::start_in(
        dir,
        listen,
        &[
            "--no-local-agent",
            "--config",
            "node.toml",
            "--node-id",
            id,
            "--database-url",
            url,
        ],
        &[("DIRIGENT_ADMIN_PASSWORD", PASSWORD)],
    );
    server.login(PASSWORD);
    server
}

/// Sends one HTTP request on a fresh connection; answers the connection after the request.
fn http(
    server: &ServerProcess,
    request_line: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    let mut request = format!("{request_line} HTTP/1.1\r\nHost: {}\r\n", server.addr());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(request.as_bytes()).unwrap();
    BufReader::new(stream)
}

/// The status of a login attempt as `admin` with `password`, from the client `address`
/// (behind a trusted proxy).
fn login_status(server: &ServerProcess, password: &str, address: &str) -> u16 {
    let body = format!("{{\"username\":\"admin\",\"password\":\"{password}\"}}");
    let mut answer = http(
        server,
        "POST /api/v1/login",
        &[("X-Forwarded-For", address)],
        &body,
    );
    let mut status = String::new();
    answer.read_line(&mut status).unwrap();
    status.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn free_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[test]
fn nodes_on_one_database_behave_as_one_orchestrator() {
    let schema = Schema::create();
    let url = schema.url();
    let a_listen = free_port();
    let a_dir = Arc::new(tempfile::tempdir().unwrap());
    let a = node(Arc::clone(&a_dir), &a_listen, "node-a", &url);
    let b = node(
        Arc::new(tempfile::tempdir().unwrap()),
        "127.0.0.1:0",
        "node-b",
        &url,
    );

    ok(run(b.cli(&[
        "robot",
        "create",
        "ticker",
        "--agent",
        "site=lab",
        "--",
        "sh",
        "-c",
        "while true; do echo tick; sleep 0.1; done",
    ])));
    let token = ok(run(a.cli(&["agent", "enroll-token"]))).trim().to_owned();
    let agent_dir = a_dir.path().join("lab-agent");
    // Connected to node A first; node B is where it goes when A goes away.
    let agent = dirigent(&a.config_dir())
        .args(["agent", "--server", &format!("{},{}", a.url, b.url)])
        .args(["--name", "lab-1", "--labels", "site=lab", "--capacity", "4"])
        .args(["--enroll-token", &token])
        .arg("--data")
        .arg(&agent_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agent = KillOnDrop(agent);
    eventually("the agent online on node A", || {
        let agents = json(&a, &["agent", "ls"]);
        (agents[0]["state"] == "online").then_some(())
    });
    assert_eq!(
        schema.query("SELECT node_id FROM agents WHERE name = 'lab-1'"),
        "node-a"
    );

    // A third node given node B's id waits for B's heartbeat to stop, and refuses to start
    // when it goes on.
    let clash = dirigent(&a.config_dir())
        .args(["serve", "--listen", "127.0.0.1:0", "--no-local-agent"])
        .args(["--node-id", "node-b", "--database-url", &url, "--config"])
        .arg(a_dir.path().join("node.toml"))
        .arg("--data")
        .arg(a_dir.path().join("clash"))
        .env("DIRIGENT_ADMIN_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert_eq!(clash.status.code(), Some(1), "{clash:?}");
    assert!(
        String::from_utf8_lossy(&clash.stderr)
            .contains("another running node has the id \"node-b\""),
        "{clash:?}"
    );

    // The panel open on node A, before the run starts through node B.
    let browser = Browser::start("en-US");
    browser.open(&format!("{}/", a.url));
    panel::log_in(&browser, &a, "admin", PASSWORD);
    browser.wait_text("#runs-now", "0");
    panel::mark_page(&browser);

    // Started through node B, carried out by the agent on node A, seen running from node B
    // (its events relayed from A), stopped through B.
    let started = json(&b, &["run", "start", "ticker", "--wait"]);
    assert_eq!(started["state"], "running", "{started}");
    assert_eq!(started["agent"], "lab-1");
    let first = started["id"].as_str().unwrap().to_owned();
    browser.wait_text("#active-runs", &first);
    assert!(
        panel::page_was_kept(&browser),
        "node A's panel followed a run started through node B without reloading"
    );
    drop(browser);
    ok(run(b.cli(&["run", "stop", &first])));
    let stopped = json(&b, &["run", "wait", &first, "--timeout", "30"]);
    assert_eq!(stopped["state"], "stopped", "{stopped}");

    // Failed logins are counted by every node, per user name and client address: guessing
    // through node A locks admin from that address on node B too, not from another address.
    for _ in 0..4 {
        assert_eq!(login_status(&a, "wrong-password-1", "203.0.113.7"), 401);
    }
    assert_eq!(
        login_status(&a, "wrong-password-1", "203.0.113.7"),
        429,
        "the fifth failure locks"
    );
    assert_eq!(login_status(&b, PASSWORD, "203.0.113.7"), 429);
    assert_eq!(login_status(&b, PASSWORD, "198.51.100.2"), 200);

    // Node A dies with the agent's connection: the agent moves to node B, its run goes on.
    let second = json(&b, &["run", "start", "ticker", "--wait"]);
    assert_eq!(second["state"], "running", "{second}");
    let second = second["id"].as_str().unwrap().to_owned();
    let pid = json(&b, &["run", "show", &second])["pid"].as_u64().unwrap();
    drop(a.kill9());
    eventually("the agent on node B", || {
        let node = schema.query("SELECT node_id || ':' || online FROM agents WHERE name = 'lab-1'");
        (node == "node-b:true").then_some(())
    });
    // Node B holds the singleton duties now (node A's heartbeat stopped).
    eventually("node B leading", || {
        (schema.query("SELECT holder FROM leases WHERE name = 'singletons'") == "node-b")
            .then_some(())
    });
    // Once its heartbeat is older than the takeover delay, node A shows as silent (node B may
    // have led since before A died, if A's renewal was ever late).
    let nodes = eventually("node A silent in node ls", || {
        let nodes = json(&b, &["node", "ls"]);
        let silent = nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|node| node["id"] == "node-a" && node["state"] == "silent");
        silent.then_some(nodes)
    });
    let listed = |id: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|node| node["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(
        (&listed("node-b")["state"], &listed("node-b")["leading"]),
        (&Value::from("alive"), &Value::from(true)),
        "{nodes}"
    );
    assert_eq!(listed("node-b")["agents"], 1, "{nodes}");
    assert_eq!(json(&b, &["agent", "ls"])[0]["node"], "node-b");
    let shown = json(&b, &["run", "show", &second]);
    assert_eq!(shown["state"], "running", "not lost: its agent is alive");
    assert_eq!(shown["pid"].as_u64(), Some(pid), "the same process");

    // Node A comes back (same id, same address); a stop through it reaches the agent on B.
    let a = node(Arc::clone(&a_dir), &a_listen, "node-a", &url);
    ok(run(a.cli(&["run", "stop", &second])));
    let stopped = json(&a, &["run", "wait", &second, "--timeout", "30"]);
    assert_eq!(stopped["state"], "stopped", "{stopped}");

    // Checked from the database: each run placed once, no run lost, no command left behind.
    assert_eq!(
        schema.query("SELECT COUNT(*) FROM run_transitions WHERE state = 'starting'"),
        "2"
    );
    assert_eq!(
        schema.query("SELECT COUNT(*) FROM runs WHERE state = 'lost'"),
        "0"
    );
    eventually("every command acknowledged", || {
        (schema.query("SELECT COUNT(*) FROM agent_commands") == "0").then_some(())
    });
    assert_eq!(
        schema.query("SELECT COUNT(*) FROM runs WHERE token_hash IS NOT NULL"),
        "0",
        "no token outlives its run"
    );

    drop(agent);
    stop_agent(&agent_dir);
    drop(a);
    drop(b);
}

/// A node of the chaos test: up (with its process) or killed (its directory kept).
struct Member {
    id: &'static str,
    listen: String,
    dir: Arc<tempfile::TempDir>,
    process: Option<ServerProcess>,
}

#[test]
fn three_nodes_under_load_lose_and_double_nothing_while_nodes_are_killed() {
    let schema = Schema::create();
    let url = schema.url();
    let mut members: Vec<Member> = ["node-a", "node-b", "node-c"]
        .into_iter()
        .map(|id| {
            let listen = free_port();
            let dir = Arc::new(tempfile::tempdir().unwrap());
            let process = Some(node(Arc::clone(&dir), &listen, id, &url));
            Member {
                id,
                listen,
                dir,
                process,
            }
        })
        .collect();
    let first = members[0].process.as_ref().unwrap();
    let urls: Vec<String> = members
        .iter()
        .map(|member| format!("http://{}", member.listen))
        .collect();
    for (name, max_parallel, script) in [
        ("ticker", "3", "echo tick; sleep 0.3"),
        (
            "worker",
            "4",
            "trap 'exit 0' TERM; while true; do sleep 0.05; done",
        ),
    ] {
        ok(run(first.cli(&[
            "robot",
            "create",
            name,
            "--max-parallel",
            max_parallel,
            "--",
            "sh",
            "-c",
            script,
        ])));
    }
    let trigger = json(
        first,
        &[
            "trigger",
            "create",
            "ticker",
            "--every",
            "1",
            "--overlap",
            "allow",
        ],
    );
    let trigger = trigger["id"].as_str().unwrap().to_owned();
    ok(run(first.cli(&["queue", "create", "parcels"])));

    // Two agents, each knowing every node, in different orders.
    let mut agents = Vec::new();
    for (n, order) in [[0, 1, 2], [2, 1, 0]].into_iter().enumerate() {
        let token = ok(run(first.cli(&["agent", "enroll-token"])))
            .trim()
            .to_owned();
        let servers: Vec<&str> = order.iter().map(|&i| urls[i].as_str()).collect();
        let dir = members[0].dir.path().join(format!("agent-{n}"));
        let process = dirigent(&members[0].dir.path().join("config"))
            .args(["agent", "--server", &servers.join(",")])
            .args(["--name", &format!("pc-{n}"), "--capacity", "4"])
            .args(["--enroll-token", &token])
            .arg("--data")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        agents.push((KillOnDrop(process), dir));
    }

    // The load: manual starts and stops, items added, claimed and completed, each through
    // whichever node is up, while every few seconds a node is killed and later restarted.
    let mut added = 0;
    let mut completed: Vec<String> = Vec::new();
    let began = Instant::now();
    let mut step = 0usize;
    let mut kills = 0;
    while began.elapsed() < Duration::from_secs(24) {
        step += 1;
        let phase = began.elapsed().as_secs();
        let victim = usize::try_from(phase / 8).unwrap() % members.len();
        let down = phase % 8 < 3;
        for (i, member) in members.iter_mut().enumerate() {
            if i == victim && down && member.process.is_some() {
                drop(member.process.take().unwrap().kill9());
                kills += 1;
            } else if !(i == victim && down) && member.process.is_none() {
                member.process = Some(node(
                    Arc::clone(&member.dir),
                    &member.listen,
                    member.id,
                    &url,
                ));
            }
        }
        let Some(through) = members
            .iter()
            .cycle()
            .skip(step)
            .take(members.len())
            .find_map(|member| member.process.as_ref())
        else {
            continue;
        };
        // Any call may meet a node as it dies; what was acknowledged is what counts.
        match step % 4 {
            0 => {
                let _ = run(through.cli(&["run", "start", "worker"]));
            }
            1 => {
                let output =
                    run(through.cli(&["run", "ls", "--robot", "worker", "--active", "--json"]));
                if let Ok(Value::Array(active)) = serde_json::from_slice::<Value>(&output.stdout)
                    && let Some(id) = active.first().and_then(|run| run["id"].as_str())
                {
                    let _ = run(through.cli(&["run", "stop", id]));
                }
            }
            2 => {
                let output =
                    run(through.cli(&["queue", "add", "parcels", "--payload", &added.to_string()]));
                if output.status.success() {
                    added += 1;
                }
            }
            _ => {
                let output = run(through.cli(&["queue", "claim", "parcels", "--json"]));
                let Ok(claim) = serde_json::from_slice::<Value>(&output.stdout) else {
                    continue;
                };
                let (Some(id), Some(lease)) =
                    (claim["item"]["id"].as_i64(), claim["lease_token"].as_str())
                else {
                    continue;
                };
                let id = id.to_string();
                let done =
                    run(through.cli(&["queue", "complete", "parcels", &id, "--lease", lease]));
                if done.status.success() {
                    completed.push(id);
                }
            }
        }
    }

    // Everything up again, then quiet: the trigger off, the workers stopped.
    for member in &mut members {
        if member.process.is_none() {
            member.process = Some(node(
                Arc::clone(&member.dir),
                &member.listen,
                member.id,
                &url,
            ));
        }
    }
    let any = members[1].process.as_ref().unwrap();
    ok(run(any.cli(&["trigger", "disable", &trigger])));
    eventually("every run ended", || {
        let active = json(any, &["run", "ls", "--active", "--limit", "500"]);
        let active = active.as_array().unwrap().clone();
        for run_ in &active {
            if run_["robot"] == "worker" && run_["state"] == "running" {
                let _ = run(any.cli(&["run", "stop", run_["id"].as_str().unwrap()]));
            }
        }
        active.is_empty().then_some(())
    });
    eventually("every command acknowledged", || {
        (schema.query("SELECT COUNT(*) FROM agent_commands") == "0").then_some(())
    });

    // Checked from the database.
    let count = |sql: &str| schema.query(sql).parse::<u64>().unwrap();
    assert!(count("SELECT COUNT(*) FROM runs") > 10, "the load ran");
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM (SELECT run_id FROM run_transitions WHERE state = 'starting' GROUP BY run_id HAVING COUNT(*) > 1) AS twice"
        ),
        0,
        "no run placed twice"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM runs WHERE state = 'lost'"),
        0,
        "no run lost: every agent lived"
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM (SELECT cause FROM run_transitions WHERE cause LIKE 'trigger:%' GROUP BY cause HAVING COUNT(*) > 1) AS twice"
        ),
        0,
        "no firing started twice"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM trigger_firings WHERE outcome = 'due'"),
        0,
        "every firing settled"
    );
    assert!(count("SELECT COUNT(*) FROM trigger_firings WHERE outcome = 'started'") > 5);
    for (what, key, limit) in [
        ("robot ticker", "robot = 'ticker'", 3),
        ("robot worker", "robot = 'worker'", 4),
        (
            "agent pc-0",
            "agent_id = (SELECT id FROM agents WHERE name = 'pc-0')",
            4,
        ),
        (
            "agent pc-1",
            "agent_id = (SELECT id FROM agents WHERE name = 'pc-1')",
            4,
        ),
    ] {
        let held = most_held_at_once(&schema, key);
        assert!(
            held <= limit,
            "{what} held {held} places at once, more than {limit}"
        );
    }
    assert_eq!(
        count("SELECT COUNT(*) FROM queue_items"),
        added,
        "no item lost"
    );
    let mut distinct = completed.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), completed.len(), "no item completed twice");
    assert_eq!(
        count("SELECT COUNT(*) FROM queue_items WHERE status = 'successful'"),
        u64::try_from(completed.len()).unwrap(),
        "every acknowledged completion, and only those"
    );

    eprintln!(
        "chaos: {} runs, {} firings started, {added} items added, {} completed, {} node kills",
        count("SELECT COUNT(*) FROM runs"),
        count("SELECT COUNT(*) FROM trigger_firings WHERE outcome = 'started'"),
        completed.len(),
        kills,
    );
    for (process, dir) in agents {
        drop(process);
        stop_agent(&dir);
    }
}

/// The most runs that held a place at once, among those matching `key` (SQL on `runs`): from
/// each run's placement (`starting`) to its end.
fn most_held_at_once(schema: &Schema, key: &str) -> usize {
    let rows = schema.query(&format!(
        "SELECT t.at || ' ' || COALESCE(r.ended_at, 9223372036854775807) FROM runs r \
         JOIN run_transitions t ON t.run_id = r.id AND t.state = 'starting' WHERE r.{key}"
    ));
    let mut changes: Vec<(i64, i32)> = Vec::new();
    for line in rows.lines() {
        let (start, end) = line.split_once(' ').unwrap();
        changes.push((start.parse().unwrap(), 1));
        changes.push((end.parse().unwrap(), -1));
    }
    // At the same millisecond an end comes before a start: the store placed after the end.
    changes.sort();
    let (mut held, mut most) = (0i32, 0i32);
    for (_, change) in changes {
        held += change;
        most = most.max(held);
    }
    usize::try_from(most).unwrap()
}
