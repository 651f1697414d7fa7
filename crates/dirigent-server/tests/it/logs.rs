//! Searching the log store through the API: what each caller may read (robots by name
//! pattern, agents' records, the orchestrator's own), cursors, and bad queries.

use axum::http::{Method, StatusCode};
use dirigent_domain::log::{Level, Source};
use dirigent_server::Clock;
use dirigent_store::LogRecord;
use serde_json::{Value, json};

use crate::support::TestApp;

fn record(source: Source, robot: Option<&str>, text: &str, at: jiff::Timestamp) -> LogRecord {
    LogRecord {
        id: 0,
        at,
        source,
        level: Level::Info,
        robot: robot.map(str::to_owned),
        run_id: None,
        activity_id: None,
        agent: (source == Source::Agent).then(|| "pc-1".to_owned()),
        node: (source == Source::Server).then(|| "node-a".to_owned()),
        seq: None,
        stream: None,
        fields: None,
        text: text.to_owned(),
    }
}

async fn texts(app: &TestApp, token: &str, query: &str) -> Vec<String> {
    let answer = app
        .send(
            Method::GET,
            &format!("/api/v1/logs{query}"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{query}: {:?}", answer.body);
    answer.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn each_caller_reads_what_their_permissions_allow() {
    let app = TestApp::new().await;
    let admin = app.admin().await;
    let now = app.clock.now();
    app.store
        .add_logs(&[
            record(
                Source::Robot,
                Some("finance-invoices"),
                "alpha finance",
                now,
            ),
            record(Source::Robot, Some("hr-payroll"), "alpha payroll", now),
            record(Source::Agent, None, "alpha agent", now),
            record(Source::Server, None, "alpha server", now),
        ])
        .await
        .unwrap();
    let role = json!({"name": "finance-logs", "permissions": [
        {"resource": "logs", "actions": ["read"], "pattern": "finance-*"}
    ]});
    let created = app
        .send(Method::POST, "/api/v1/roles", Some(&admin), Some(role))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let finance = app.user_with_roles("fiona", &["finance-logs"]).await;
    let viewer = app.user_with_roles("vera", &["viewer"]).await;
    let limited = app
        .send(
            Method::POST,
            "/api/v1/tokens",
            Some(&admin),
            Some(json!({"name": "hr-logs", "permissions": [
                {"resource": "logs", "actions": ["read"], "pattern": "hr-*"}
            ]})),
        )
        .await;
    let limited = limited.body["token"].as_str().unwrap().to_owned();

    assert_eq!(
        texts(&app, &admin, "?q=alpha").await,
        [
            "alpha server",
            "alpha agent",
            "alpha payroll",
            "alpha finance"
        ]
    );
    assert_eq!(
        texts(&app, &viewer, "?q=alpha").await,
        ["alpha agent", "alpha payroll", "alpha finance"],
        "the orchestrator's own records are for administrators"
    );
    assert_eq!(texts(&app, &finance, "?q=alpha").await, ["alpha finance"]);
    assert_eq!(
        texts(&app, &limited, "?q=alpha").await,
        ["alpha payroll"],
        "a token's limits hold"
    );
    let asked = app
        .send(
            Method::GET,
            "/api/v1/logs?source=agent,robot",
            Some(&finance),
            None,
        )
        .await;
    assert_eq!(asked.status, StatusCode::FORBIDDEN);
    assert_eq!(
        asked.body["message"],
        "fiona may not read the agent records: that needs logs:read on every robot"
    );

    // A page at a time, by the cursor each page gives.
    let first = app
        .send(Method::GET, "/api/v1/logs?limit=3", Some(&admin), None)
        .await;
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let rest = texts(&app, &admin, &format!("?limit=3&cursor={cursor}")).await;
    assert_eq!(rest, ["alpha finance"]);
    let oldest = texts(&app, &admin, "?order=oldest&limit=1").await;
    assert_eq!(oldest, ["alpha finance"]);

    for (query, field, message) in [
        ("?q=%22alpha", "q", "q: at 1: a quote that is not closed"),
        (
            "?q=alpha%20OR",
            "q",
            "q: at 7: OR needs a term on each side",
        ),
        (
            "?cursor=x",
            "cursor",
            "cursor: is not a cursor this API gave (a record's id)",
        ),
        (
            "?order=sideways",
            "order",
            "order: must be newest or oldest",
        ),
        (
            "?since=2030-01-02T00:00:00Z&until=2030-01-01T00:00:00Z",
            "until",
            "until: must be after since",
        ),
        ("?limit=1001", "limit", "limit: must be between 1 and 1000"),
    ] {
        let answer = app
            .send(
                Method::GET,
                &format!("/api/v1/logs{query}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(
            (answer.status, &answer.body["field"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &Value::from(field)),
            "{query}: {:?}",
            answer.body
        );
        assert_eq!(answer.body["message"], message, "{query}");
    }
}
