//! The access matrix: every operation × every kind of credential → allowed or denied, in one
//! table, against the whole application served on a real socket. "Allowed" means the request
//! got past authentication and authorization (any answer but `unauthenticated` and
//! `forbidden`); what it then did is other tests' business.

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use dirigent_domain::agent::AgentId;
use dirigent_proto::link::AgentCommand;
use dirigent_server::{Clock, auth::secrets};
use dirigent_store::AgentFacts;
use serde_json::{Value, json};

use crate::{
    api_contract::{Access, OPERATIONS},
    support::TestApp,
};

/// The credentials, in the order of the table's columns.
const WHO: [&str; 9] = [
    "admin",
    "operator",
    "developer",
    "viewer",
    "scoped",
    "subset",
    "run",
    "agent",
    "none",
];

/// Each operation with, per credential in `WHO` order, `Y` (allowed) or `.` (denied).
/// `{run}` is a run of `finance-invoices`; `scoped` holds a custom role with robots read+run
/// on `finance-*`; `subset` is an admin API token limited to robots read. Rows run in order:
/// those that end the run or the session come last.
const MATRIX: &[(&str, &str, Option<&str>, &str)] = &[
    ("GET", "/api/v1/openapi.json", None, "YYYYYYY.."),
    ("GET", "/api/v1/me", None, "YYYYYYY.."),
    (
        "PUT",
        "/api/v1/me/language",
        Some(r#"{"language": "ru"}"#),
        "YYYYYY...",
    ),
    ("GET", "/api/v1/events", None, "YYYYYY..."),
    (
        "POST",
        "/api/v1/me/password",
        Some(r#"{"current_password": "not-the-password", "new_password": "new-password-1"}"#),
        "YYYYYY...",
    ),
    ("GET", "/api/v1/robots", None, "YYYYYY..."),
    ("GET", "/api/v1/robots/finance-invoices", None, "YYYYYY..."),
    ("GET", "/api/v1/robots/hr-payroll", None, "YYYY.Y..."),
    (
        "POST",
        "/api/v1/robots",
        Some(r#"{"name": "finance-new", "argv": ["x"]}"#),
        "Y.Y......",
    ),
    (
        "PUT",
        "/api/v1/robots/finance-invoices",
        Some(r#"{"argv": ["y"], "max_parallel": 100, "queues": ["finance-*"]}"#),
        "Y.Y......",
    ),
    (
        "POST",
        "/api/v1/robots/finance-invoices/auto",
        None,
        "YYY.Y....",
    ),
    (
        "POST",
        "/api/v1/runs",
        Some(r#"{"robot": "finance-invoices"}"#),
        "YYY.Y....",
    ),
    ("GET", "/api/v1/runs", None, "YYYY....."),
    ("GET", "/api/v1/runs/{run}", None, "YYYY..Y.."),
    ("GET", "/api/v1/runs/{run}/logs", None, "YYYY..Y.."),
    // Permission before existence: a run that does not exist is refused as one that does.
    ("GET", "/api/v1/runs/run_missing", None, "YYYY..Y.."),
    ("GET", "/api/v1/runs/run_missing/logs", None, "YYYY..Y.."),
    ("POST", "/api/v1/runs/run_missing/pause", None, "YYY......"),
    ("GET", "/api/v1/runs/{run}/frames", None, "YYY......"),
    ("GET", "/api/v1/runs/{run}/frames/1", None, "YYY......"),
    ("GET", "/api/v1/runs/{run}/logs/stream", None, "YYYY..Y.."),
    ("POST", "/api/v1/runs/{run}/pause", None, "YYY......"),
    ("POST", "/api/v1/runs/{run}/resume", None, "YYY......"),
    ("POST", "/api/v1/runs/{run}/stop", None, "YYY......"),
    ("GET", "/api/v1/agents", None, "YYYY....."),
    ("GET", "/api/v1/agents/local", None, "YYYY....."),
    ("GET", "/api/v1/nodes", None, "YYYY....."),
    ("GET", "/api/v1/sessions", None, "YYY......"),
    ("GET", "/api/v1/sessions/local/1", None, "YYY......"),
    (
        "GET",
        "/api/v1/sessions/local/1/screenshot",
        None,
        "YYY......",
    ),
    (
        "POST",
        "/api/v1/sessions/local/1/restart",
        None,
        "Y........",
    ),
    ("GET", "/api/v1/sessions/local/1/live", None, "YYY......"),
    (
        "POST",
        "/api/v1/sessions/local/1/control",
        Some("{}"),
        "YYY......",
    ),
    (
        "POST",
        "/api/v1/sessions/local/1/input",
        Some(r#"{"events": []}"#),
        "YYY......",
    ),
    (
        "DELETE",
        "/api/v1/sessions/local/1/control",
        None,
        "YYY......",
    ),
    ("GET", "/metrics", None, "YYY......"),
    ("GET", "/api/v1/retention", None, "YYY......"),
    ("POST", "/api/v1/retention/sweep", None, "Y........"),
    ("GET", "/api/v1/activities", None, "YYYYY...."),
    (
        "POST",
        "/api/v1/activities",
        Some(r#"{"target": "server", "operation": "info"}"#),
        "YYY......",
    ),
    ("GET", "/api/v1/activities/catalog", None, "YYYYYYY.."),
    ("GET", "/api/v1/activities/{activity}", None, "Y.Y......"),
    (
        "GET",
        "/api/v1/activities/{activity}/output",
        None,
        "Y.Y......",
    ),
    (
        "GET",
        "/api/v1/activities/{activity}/output/stream",
        None,
        "Y.Y......",
    ),
    (
        "POST",
        "/api/v1/activities/{activity}/cancel",
        None,
        "Y.Y......",
    ),
    (
        "POST",
        "/api/v1/agents/local/drain",
        Some(r#"{"draining": false}"#),
        "Y........",
    ),
    (
        "POST",
        "/api/v1/agents/enrollment-tokens",
        Some("{}"),
        "Y........",
    ),
    ("GET", "/agent/v1/connect", None, ".......Y."),
    (
        "GET",
        "/agent/v1/blobs/0000000000000000000000000000000000000000000000000000000000000000",
        None,
        ".......Y.",
    ),
    ("POST", "/api/v1/blobs", Some("{}"), "Y........"),
    ("GET", "/api/v1/users", None, "Y........"),
    (
        "POST",
        "/api/v1/users",
        Some(r#"{"username": "newbie", "password": "newbie-pass-1"}"#),
        "Y........",
    ),
    ("GET", "/api/v1/users/newbie", None, "Y........"),
    (
        "PUT",
        "/api/v1/users/newbie",
        Some(r#"{"roles": ["viewer"]}"#),
        "Y........",
    ),
    ("POST", "/api/v1/users/newbie/logout", None, "Y........"),
    ("DELETE", "/api/v1/users/newbie", None, "Y........"),
    ("GET", "/api/v1/roles", None, "Y........"),
    (
        "POST",
        "/api/v1/roles",
        Some(r#"{"name": "another", "permissions": []}"#),
        "Y........",
    ),
    ("DELETE", "/api/v1/roles/another", None, "Y........"),
    ("GET", "/api/v1/audit", None, "Y........"),
    ("GET", "/api/v1/logs", None, "YYYY....."),
    ("GET", "/api/v1/logs?source=robot", None, "YYYY....."),
    ("GET", "/api/v1/logs?source=agent", None, "YYYY....."),
    ("GET", "/api/v1/logs?source=activity", None, "Y.Y......"),
    ("GET", "/api/v1/logs?source=server", None, "Y........"),
    ("GET", "/api/v1/logs/export", None, "YYYY....."),
    ("GET", "/api/v1/logs/stream", None, "YYYY....."),
    (
        "POST",
        "/api/v1/tokens",
        Some(r#"{"name": "t"}"#),
        "YYYYY....",
    ),
    ("GET", "/api/v1/tokens", None, "YYYYYY..."),
    (
        "DELETE",
        "/api/v1/tokens/tok_0000000000000000",
        None,
        "YYYYYY...",
    ),
    ("GET", "/api/v1/queues", None, "YYYY..Y.."),
    (
        "POST",
        "/api/v1/queues",
        Some(r#"{"name": "finance-new-q"}"#),
        "Y.Y......",
    ),
    ("GET", "/api/v1/queues/finance-q", None, "YYYY..Y.."),
    ("GET", "/api/v1/queues/hr-q", None, "YYYY....."),
    ("PUT", "/api/v1/queues/finance-q", Some("{}"), "Y.Y......"),
    ("GET", "/api/v1/queues/finance-q/items", None, "YYYY..Y.."),
    (
        "POST",
        "/api/v1/queues/finance-q/items",
        Some(r#"{"payload": {"n": 1}}"#),
        "YYY...Y..",
    ),
    ("POST", "/api/v1/queues/finance-q/claim", None, "YYY...Y.."),
    ("POST", "/api/v1/queues/hr-q/claim", None, "YYY......"),
    (
        "POST",
        "/api/v1/queues/finance-q/claims",
        Some(r#"{"count": 2}"#),
        "YYY...Y..",
    ),
    (
        "POST",
        "/api/v1/queues/hr-q/claims",
        Some(r#"{"count": 2}"#),
        "YYY......",
    ),
    (
        "POST",
        "/api/v1/queues/finance-q/items/complete",
        Some(r#"{"items": [{"id": 1, "lease_token": "dgl_stale"}]}"#),
        "YYY...Y..",
    ),
    (
        "GET",
        "/api/v1/queues/finance-q/items/{item}",
        None,
        "YYYY..Y..",
    ),
    (
        "POST",
        "/api/v1/queues/finance-q/items/{item}/extend",
        Some(r#"{"lease_token": "dgl_stale"}"#),
        "YYY...Y..",
    ),
    (
        "POST",
        "/api/v1/queues/finance-q/items/{item}/complete",
        Some(r#"{"lease_token": "dgl_stale"}"#),
        "YYY...Y..",
    ),
    (
        "POST",
        "/api/v1/queues/finance-q/items/{item}/fail",
        Some(r#"{"lease_token": "dgl_stale", "kind": "business"}"#),
        "YYY...Y..",
    ),
    (
        "POST",
        "/api/v1/queues/finance-q/items/{item}/postpone",
        Some(r#"{"lease_token": "dgl_stale", "until": "2030-01-01T00:00:00Z"}"#),
        "YYY...Y..",
    ),
    (
        "POST",
        "/api/v1/queues/finance-q/items/{item}/abandon",
        Some(r#"{"lease_token": "dgl_stale"}"#),
        "YYY...Y..",
    ),
    (
        "POST",
        "/api/v1/queues/finance-q/items/{item}/requeue",
        None,
        "YYY...Y..",
    ),
    (
        "POST",
        "/api/v1/queues/finance-q/items/requeue",
        Some("{}"),
        "YYY...Y..",
    ),
    (
        "POST",
        "/api/v1/queues/finance-q/items/delete",
        Some(r#"{"status": "failed"}"#),
        "Y.Y......",
    ),
    (
        "DELETE",
        "/api/v1/queues/finance-q/items/{item}",
        None,
        "Y.Y......",
    ),
    ("DELETE", "/api/v1/queues/finance-new-q", None, "Y.Y......"),
    ("GET", "/api/v1/calendars", None, "YYYY....."),
    (
        "POST",
        "/api/v1/calendars",
        Some(r#"{"name": "finance-holidays"}"#),
        "Y.Y......",
    ),
    (
        "GET",
        "/api/v1/calendars/finance-holidays",
        None,
        "YYYY.....",
    ),
    (
        "PUT",
        "/api/v1/calendars/finance-holidays",
        Some(r#"{"excluded_dates": ["2027-12-24"]}"#),
        "Y.Y......",
    ),
    ("GET", "/api/v1/triggers", None, "YYYY....."),
    (
        "POST",
        "/api/v1/triggers",
        Some(r#"{"robot": "finance-invoices", "kind": "interval", "every_seconds": 60}"#),
        "Y.Y......",
    ),
    ("GET", "/api/v1/triggers/{trigger}", None, "YYYY....."),
    (
        "GET",
        "/api/v1/triggers/{trigger}/preview",
        None,
        "YYYY.....",
    ),
    (
        "GET",
        "/api/v1/triggers/{trigger}/firings",
        None,
        "YYYY.....",
    ),
    (
        "PUT",
        "/api/v1/triggers/{trigger}",
        Some(r#"{"robot": "finance-invoices", "kind": "once", "at": "2030-01-01T00:00:00Z"}"#),
        "Y.Y......",
    ),
    (
        "POST",
        "/api/v1/triggers/{trigger}/disable",
        None,
        "Y.Y......",
    ),
    (
        "POST",
        "/api/v1/triggers/{trigger}/enable",
        None,
        "Y.Y......",
    ),
    ("DELETE", "/api/v1/triggers/{trigger}", None, "Y.Y......"),
    (
        "DELETE",
        "/api/v1/calendars/finance-holidays",
        None,
        "Y.Y......",
    ),
    ("DELETE", "/api/v1/robots/hr-payroll", None, "Y.Y......"),
    ("POST", "/api/v1/runs/{run}/restart", None, "YYY......"),
    ("POST", "/api/v1/runs/{run}/kill", None, "YYY......"),
    // A run token and an API token pass the checks, and are told logout is for sessions.
    ("POST", "/api/v1/logout", None, "YYYYYYY.."),
];

#[tokio::test]
async fn every_operation_by_every_kind_of_credential() {
    let app = TestApp::new().await;
    let admin = app.admin().await;
    let send = |method: Method, path: &str, token: &str, body: Value| {
        let app = &app;
        let (path, token) = (path.to_owned(), token.to_owned());
        async move { app.send(method, &path, Some(&token), Some(body)).await }
    };
    for name in ["finance-invoices", "hr-payroll"] {
        send(
            Method::POST,
            "/api/v1/robots",
            &admin,
            json!({"name": name, "argv": ["x"], "max_parallel": 100, "queues": ["finance-*"]}),
        )
        .await;
    }
    for queue in ["finance-q", "hr-q"] {
        let created = send(
            Method::POST,
            "/api/v1/queues",
            &admin,
            json!({"name": queue}),
        )
        .await;
        assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    }
    let added = send(
        Method::POST,
        "/api/v1/queues/finance-q/items",
        &admin,
        json!([{"payload": {"n": 0}}]),
    )
    .await;
    let item_id = added.body["ids"][0].as_i64().unwrap().to_string();
    let trigger = send(
        Method::POST,
        "/api/v1/triggers",
        &admin,
        json!({"robot": "finance-invoices", "kind": "cron", "cron": "0 9 * * *", "time_zone": "UTC"}),
    )
    .await;
    assert_eq!(trigger.status, StatusCode::CREATED, "{:?}", trigger.body);
    let trigger_id = trigger.body["id"].as_str().unwrap().to_owned();
    let role = json!({"name": "finance-operator", "permissions": [{"resource": "robots", "actions": ["read", "run"], "pattern": "finance-*"}]});
    assert_eq!(
        send(Method::POST, "/api/v1/roles", &admin, role)
            .await
            .status,
        StatusCode::CREATED
    );
    let subset = send(
        Method::POST,
        "/api/v1/tokens",
        &admin,
        json!({"name": "ro", "permissions": [{"resource": "robots", "actions": ["read"]}]}),
    )
    .await;

    // An agent, online, so that a run is placed and gets its run token.
    let credential = secrets::new_token(secrets::AGENT_CREDENTIAL_PREFIX).unwrap();
    let digest = secrets::token_digest(&credential);
    app.store
        .upsert_agent_credential("local", &digest, app.clock.now())
        .await
        .unwrap();
    let agent = app.store.agent_by_credential(&digest).await.unwrap();
    let facts = AgentFacts {
        host: "h".into(),
        os_user: "u".into(),
        labels: Default::default(),
        capacity: 100,
        version: "t".into(),
        sessions_offered: 0,
        sessions_unavailable: None,
    };
    app.store
        .agent_connected(agent.id, &facts, "test-node", app.clock.now())
        .await
        .unwrap();
    let run = send(
        Method::POST,
        "/api/v1/runs",
        &admin,
        json!({"robot": "finance-invoices"}),
    )
    .await;
    let run_id = run.body["id"].as_str().unwrap().to_owned();
    assert_eq!(run.body["state"], "starting", "{:?}", run.body);

    let activity = send(
        Method::POST,
        "/api/v1/activities",
        &admin,
        json!({"target": "local", "operation": "info"}),
    )
    .await;
    assert_eq!(activity.status, StatusCode::CREATED, "{:?}", activity.body);
    let activity_id = activity.body["id"].as_str().unwrap().to_owned();

    let tokens = [
        admin.clone(),
        app.user_with_roles("olivia", &["operator"]).await,
        app.user_with_roles("dmitri", &["developer"]).await,
        app.user_with_roles("vera", &["viewer"]).await,
        app.user_with_roles("fiona", &["finance-operator"]).await,
        subset.body["token"].as_str().unwrap().to_owned(),
        run_token(&app, agent.id, &run_id).await,
        credential,
    ];

    // Every operation is checked through a real socket, as a client would send it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let base = app.serve().await;
    let http = reqwest::Client::new();
    let mut wrong = Vec::new();
    let documented = documented_answers();
    for (method, path, body, expect) in MATRIX {
        let listed = documented
            .get(&(
                method.to_lowercase(),
                normalize(path.split('?').next().unwrap_or(path)),
            ))
            .cloned()
            .unwrap_or_default();
        let path = path
            .replace("{run}", &run_id)
            .replace("{item}", &item_id)
            .replace("{trigger}", &trigger_id)
            .replace("{activity}", &activity_id);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        for (idx, who) in WHO.iter().enumerate() {
            let mut request = http.request(method.clone(), format!("{base}{path}"));
            if let Some(token) = tokens.get(idx) {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/json")
                    .body(*body);
            }
            let answer = request.send().await.unwrap();
            let status = answer.status();
            if !listed.contains(&status.as_u16().to_string()) {
                wrong.push(format!(
                    "{method} {path} by {who}: {status}, which the document does not list"
                ));
            }
            // Only error answers are read: a granted log stream would never end.
            let code = match status.is_success() {
                true => String::new(),
                false => answer.json::<Value>().await.unwrap()["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            };
            let allowed = !["unauthenticated", "forbidden"].contains(&code.as_str());
            let expected = expect.as_bytes()[idx] == b'Y';
            if allowed != expected {
                wrong.push(format!(
                    "{method} {path} by {who}: expected {}, got {status} {code}",
                    if expected { "allowed" } else { "denied" },
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The statuses the OpenAPI document lists, by (method, normalized path).
fn documented_answers() -> std::collections::BTreeMap<(String, String), BTreeSet<String>> {
    let document: Value =
        serde_json::from_str(&dirigent_server::api::openapi().to_json().unwrap()).unwrap();
    let mut answers = std::collections::BTreeMap::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let statuses = operation["responses"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            answers.insert((method.clone(), normalize(path)), statuses);
        }
    }
    answers
}

#[test]
fn the_matrix_covers_every_authenticated_operation() {
    let covered: BTreeSet<(&str, String)> = MATRIX
        .iter()
        .map(|(method, path, _, _)| (*method, normalize(path)))
        .collect();
    let missing: Vec<String> = OPERATIONS
        .iter()
        .filter(|(_, _, access)| *access == Access::Authenticated)
        .filter(|(method, path, _)| !covered.contains(&(*method, normalize(path))))
        .map(|(method, path, _)| format!("{method} {path}"))
        .collect();
    assert!(missing.is_empty(), "not in the matrix: {missing:?}");
}

/// A concrete path with its names replaced by `{}`, and a route template likewise.
fn normalize(path: &str) -> String {
    const NAMES: [&str; 16] = [
        "run_missing",
        "finance-invoices",
        "hr-payroll",
        "local",
        "newbie",
        "another",
        "tok_0000000000000000",
        "{run}",
        "finance-q",
        "finance-new-q",
        "hr-q",
        "{item}",
        "{trigger}",
        "{activity}",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "finance-holidays",
    ];
    path.split('/')
        .map(|segment| {
            let number = !segment.is_empty() && segment.bytes().all(|byte| byte.is_ascii_digit());
            if segment.starts_with('{') || NAMES.contains(&segment) || number {
                "{}"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A token for the starting run, issued as when its start command is sent again: the start
/// command queued for its agent carries none (the server keeps no run token).
async fn run_token(app: &TestApp, agent: AgentId, run_id: &str) -> String {
    let commands = app.store.pending_agent_commands(agent, 0).await.unwrap();
    let start = commands
        .iter()
        .find_map(|(_, body)| match serde_json::from_str(body) {
            Ok(AgentCommand::Start(spec)) if spec.run_id == run_id => Some(spec),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no start command for {run_id}"));
    assert_eq!(start.run_token, None);
    assert!(!start.env.contains_key("DIRIGENT_RUN_TOKEN"));
    let token = secrets::new_token(secrets::RUN_TOKEN_PREFIX).unwrap();
    let digest = secrets::token_digest(&token);
    assert!(app.store.renew_run_token(run_id, &digest).await.unwrap());
    token
}
