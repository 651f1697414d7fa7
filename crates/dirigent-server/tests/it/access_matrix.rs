//! The access matrix: every kind of operation × every kind of credential → allowed or denied,
//! in one table, against the whole application. "Allowed" means the request got past
//! authentication and authorization (any status but 401 and 403); what it then did is other
//! tests' business.

use axum::http::{Method, StatusCode};
use dirigent_domain::agent::AgentId;
use dirigent_proto::link::AgentCommand;
use dirigent_server::{Clock, auth::secrets};
use dirigent_store::AgentFacts;
use serde_json::{Value, json};

use crate::support::TestApp;

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
/// on `finance-*`; `subset` is an admin API token limited to robots read.
const MATRIX: &[(&str, &str, Option<&str>, &str)] = &[
    ("GET", "/api/v1/me", None, "YYYYYYY.."),
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
        Some(r#"{"argv": ["y"]}"#),
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
    ("POST", "/api/v1/runs/{run}/pause", None, "YYY......"),
    ("POST", "/api/v1/runs/{run}/stop", None, "YYY......"),
    ("GET", "/api/v1/agents", None, "YYYY....."),
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
    ("GET", "/api/v1/users", None, "Y........"),
    (
        "POST",
        "/api/v1/users",
        Some(r#"{"username": "newbie", "password": "newbie-pass-1"}"#),
        "Y........",
    ),
    ("GET", "/api/v1/roles", None, "Y........"),
    (
        "POST",
        "/api/v1/roles",
        Some(r#"{"name": "another", "permissions": []}"#),
        "Y........",
    ),
    ("GET", "/api/v1/audit", None, "Y........"),
    (
        "POST",
        "/api/v1/tokens",
        Some(r#"{"name": "t"}"#),
        "YYYYY....",
    ),
    ("GET", "/api/v1/tokens", None, "YYYYYY..."),
    ("DELETE", "/api/v1/robots/hr-payroll", None, "Y.Y......"),
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
            json!({"name": name, "argv": ["x"], "max_parallel": 100}),
        )
        .await;
    }
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
    };
    app.store
        .agent_connected(agent.id, &facts, app.clock.now())
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

    let mut wrong = Vec::new();
    for (method, path, body, expect) in MATRIX {
        let path = path.replace("{run}", &run_id);
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let body: Option<Value> = body.map(|body| serde_json::from_str(body).unwrap());
        for (idx, who) in WHO.iter().enumerate() {
            let token = tokens.get(idx).map(String::as_str);
            let answer = app.send(method.clone(), &path, token, body.clone()).await;
            let allowed =
                ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&answer.status);
            let expected = expect.as_bytes()[idx] == b'Y';
            if allowed != expected {
                wrong.push(format!(
                    "{method} {path} by {who}: expected {}, got {}",
                    if expected { "allowed" } else { "denied" },
                    answer.status
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The run token the server gave the run, read from the start command queued for its agent.
async fn run_token(app: &TestApp, agent: AgentId, run_id: &str) -> String {
    let commands = app.store.pending_agent_commands(agent).await.unwrap();
    for (_, body) in commands {
        if let Ok(AgentCommand::Start(spec)) = serde_json::from_str(&body)
            && spec.run_id == run_id
        {
            return spec.env["DIRIGENT_RUN_TOKEN"].clone();
        }
    }
    panic!("no start command for {run_id}");
}
