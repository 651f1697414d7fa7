//! The audit log and login throttling: who changed what, every denial, and brute force
//! refused.

use axum::http::{Method, StatusCode};
use dirigent_server::Clock;
use jiff::SignedDuration;
use serde_json::{Value, json};

use crate::support::{ADMIN_PASSWORD, TestApp};

async fn audit(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let answer = app
        .send(
            Method::GET,
            &format!("/api/v1/audit{query}"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.body.as_array().unwrap().clone()
}

#[tokio::test]
async fn changes_and_denials_are_recorded_and_cannot_be_edited() {
    let app = TestApp::new().await;
    let admin = app.admin().await;
    let viewer = app.user_with_roles("vera", &["viewer"]).await;

    let created = app
        .send(
            Method::POST,
            "/api/v1/robots",
            Some(&admin),
            Some(json!({"name": "payroll", "argv": ["x"]})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let denied = app
        .send(
            Method::PUT,
            "/api/v1/robots/payroll",
            Some(&viewer),
            Some(json!({"argv": ["y"]})),
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let anonymous = app
        .send(Method::DELETE, "/api/v1/robots/payroll", None, None)
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let read = app
        .send(Method::GET, "/api/v1/robots/payroll", Some(&viewer), None)
        .await;
    assert_eq!(read.status, StatusCode::OK);

    let records = audit(&app, &admin, "?limit=20").await;
    let summary: Vec<(String, String, String, u64)> = records
        .iter()
        .map(|r| {
            (
                r["actor"].as_str().unwrap().to_owned(),
                r["action"].as_str().unwrap().to_owned(),
                r["outcome"].as_str().unwrap().to_owned(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let expect = |actor: &str, action: &str, outcome: &str, status: u64| {
        (
            actor.to_owned(),
            action.to_owned(),
            outcome.to_owned(),
            status,
        )
    };
    assert_eq!(
        summary[..3],
        [
            expect("anonymous", "DELETE /api/v1/robots/{name}", "denied", 401),
            expect("user:vera", "PUT /api/v1/robots/{name}", "denied", 403),
            expect("user:admin", "POST /api/v1/robots", "allowed", 201),
        ],
        "newest first; reads are not recorded"
    );
    assert_eq!(records[1]["target"], "/api/v1/robots/payroll");
    assert!(
        summary.contains(&expect("user:vera", "POST /api/v1/login", "allowed", 200)),
        "logins are recorded"
    );

    let vera_only = audit(&app, &admin, "?actor=user:vera&outcome=denied").await;
    assert_eq!(vera_only.len(), 1);
    let next_page = audit(&app, &admin, &format!("?before={}", records[0]["id"])).await;
    assert_eq!(next_page[0]["id"], records[1]["id"]);

    assert_eq!(
        app.send(Method::GET, "/api/v1/audit", Some(&viewer), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let answer = app
            .send(method, "/api/v1/audit", Some(&admin), Some(json!({})))
            .await;
        assert_eq!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "the log cannot be changed"
        );
    }
    let bad = app
        .send(
            Method::GET,
            "/api/v1/audit?outcome=maybe",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        (bad.status, bad.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("outcome"))
    );
}

#[tokio::test]
async fn repeated_failed_logins_lock_the_user_for_a_while() {
    let app = TestApp::new().await;
    let attempt = |password: &'static str| {
        let app = &app;
        async move {
            app.send(
                Method::POST,
                "/api/v1/login",
                None,
                Some(json!({"username": "admin", "password": password})),
            )
            .await
        }
    };
    for _ in 0..4 {
        assert_eq!(
            attempt("wrong-password").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let locked = attempt("wrong-password").await;
    assert_eq!(
        (locked.status, locked.code()),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts")
    );
    assert_eq!(locked.headers["retry-after"], "30");
    let still = attempt(ADMIN_PASSWORD).await;
    assert_eq!(
        still.status,
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );

    app.clock.advance(SignedDuration::from_secs(30));
    assert_eq!(attempt(ADMIN_PASSWORD).await.status, StatusCode::OK);
    assert_eq!(
        attempt("wrong-password").await.status,
        StatusCode::UNAUTHORIZED,
        "a success clears the count"
    );

    let admin = app.admin().await;
    let denials = audit(&app, &admin, "?actor=user:admin&outcome=denied&limit=50").await;
    assert_eq!(denials.len(), 7, "every refused login is in the audit log");
}

#[tokio::test]
async fn retention_shows_what_is_kept_and_a_sweep_trims_the_audit_log_by_its_own_limit() {
    let app = TestApp::with_config(|config| config.retention.audit_days = 30).await;
    let admin = app.admin().await;
    let created = app
        .send(
            Method::POST,
            "/api/v1/robots",
            Some(&admin),
            Some(json!({"name": "payroll", "argv": ["x"]})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let run = app
        .send(
            Method::POST,
            "/api/v1/runs",
            Some(&admin),
            Some(json!({"robot": "payroll"})),
        )
        .await;
    assert_eq!(run.body["state"], "queued", "{:?}", run.body);

    let report = app
        .send(Method::GET, "/api/v1/retention", Some(&admin), None)
        .await;
    assert_eq!(report.status, StatusCode::OK, "{:?}", report.body);
    assert_eq!(report.body["settings"]["audit_days"], 30);
    assert_eq!(report.body["settings"]["runs_days"], 90);
    let kept = |report: &Value, kind: &str| {
        report["kept"]
            .as_array()
            .unwrap()
            .iter()
            .find(|kept| kept["kind"] == kind)
            .unwrap()["count"]
            .as_u64()
            .unwrap()
    };
    assert!(
        1 <= kept(&report.body, "audit_records"),
        "{:?}",
        report.body
    );

    // A month and a day later the audit records go; the queued run, still active, stays.
    app.clock.advance(SignedDuration::from_hours(24 * 31));
    let admin = app.admin().await;
    let swept = app
        .send(Method::POST, "/api/v1/retention/sweep", Some(&admin), None)
        .await;
    assert_eq!(swept.status, StatusCode::OK, "{:?}", swept.body);
    assert!(
        1 <= swept.body["audit_records"].as_u64().unwrap(),
        "{:?}",
        swept.body
    );
    assert_eq!(swept.body["runs"], 0);
    let after = app
        .send(Method::GET, "/api/v1/retention", Some(&admin), None)
        .await;
    assert_eq!(kept(&after.body, "runs"), 1);
    assert_eq!(after.body["last_sweep"]["deleted"], swept.body);
    assert_eq!(after.body["last_sweep"]["at"], app.clock.now().to_string());
    // Only the new login and the sweep's own request, recorded after it.
    assert!(kept(&after.body, "audit_records") <= 2, "{:?}", after.body);

    let viewer = app.user_with_roles("vera", &["viewer"]).await;
    let refused = app
        .send(Method::POST, "/api/v1/retention/sweep", Some(&viewer), None)
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_audit_log_names_what_each_request_was_about_allowed_or_denied() {
    let app = TestApp::new().await;
    let admin = app.admin().await;
    let viewer = app.user_with_roles("vera", &["viewer"]).await;
    let created = app
        .send(
            Method::POST,
            "/api/v1/robots",
            Some(&admin),
            Some(json!({"name": "hr-b", "argv": ["x"]})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let denied = app
        .send(
            Method::POST,
            "/api/v1/runs",
            Some(&viewer),
            Some(json!({"robot": "hr-b"})),
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let started = app
        .send(
            Method::POST,
            "/api/v1/runs",
            Some(&admin),
            Some(json!({"robot": "hr-b"})),
        )
        .await;
    let run = started.body["id"].as_str().unwrap().to_owned();
    let stopped = app
        .send(
            Method::POST,
            &format!("/api/v1/runs/{run}/stop"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(stopped.status, StatusCode::FORBIDDEN);

    // "Who started hr-b, and who tried?" — by the robot's name.
    let about_robot = audit(&app, &admin, "?resource=robot:hr-b").await;
    let summary: Vec<(String, String)> = about_robot
        .iter()
        .map(|entry| {
            (
                entry["actor"].as_str().unwrap().to_owned(),
                entry["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("user:admin".to_owned(), "POST /api/v1/runs".to_owned()),
            ("user:vera".to_owned(), "POST /api/v1/runs".to_owned()),
            ("user:admin".to_owned(), "POST /api/v1/robots".to_owned()),
        ]
    );
    assert_eq!(about_robot[1]["outcome"], "denied");
    assert_eq!(
        about_robot[0]["resources"],
        json!(["robot:hr-b", format!("run:{run}")])
    );
    // And by the run it created, whose stop was refused.
    let about_run = audit(&app, &admin, &format!("?resource=run:{run}")).await;
    assert_eq!(about_run.len(), 2, "{about_run:?}");
    assert_eq!(about_run[0]["action"], "POST /api/v1/runs/{id}/stop");
    assert_eq!(about_run[0]["outcome"], "denied");
}

#[tokio::test]
async fn a_change_records_the_fields_it_changed_with_secrets_redacted() {
    let app = TestApp::new().await;
    let admin = app.admin().await;
    let robot = json!({"name": "payroll", "argv": ["run.sh"], "env": {"API_KEY": "k-1"}});
    let created = app
        .send(Method::POST, "/api/v1/robots", Some(&admin), Some(robot))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let changed = json!({"argv": ["run.sh", "--fast"], "env": {"API_KEY": "k-2", "MODE": "x"}});
    let replaced = app
        .send(
            Method::PUT,
            "/api/v1/robots/payroll",
            Some(&admin),
            Some(changed),
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK, "{:?}", replaced.body);
    let entries = audit(&app, &admin, "?resource=robot:payroll").await;
    let changes = &entries[0]["changes"];
    assert_eq!(
        changes["argv"],
        json!([["run.sh"], ["run.sh", "--fast"]]),
        "{changes}"
    );
    assert_eq!(
        changes["env"],
        json!([{"API_KEY": "(redacted)"}, {"API_KEY": "(redacted)", "MODE": "(redacted)"}]),
        "the names, never the values: {changes}"
    );
    assert!(!entries[0].to_string().contains("k-2"));
    assert!(changes.get("updated_at").is_none());

    // The user whose roles changed, and a new password, named but not shown.
    app.user_with_roles("olga", &["viewer"]).await;
    let update = json!({"roles": ["operator"], "password": "a-new-password-1"});
    let updated = app
        .send(
            Method::PUT,
            "/api/v1/users/olga",
            Some(&admin),
            Some(update),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{:?}", updated.body);
    let entries = audit(&app, &admin, "?resource=user:olga").await;
    let changes = &entries[0]["changes"];
    assert_eq!(
        changes["roles"],
        json!([["viewer"], ["operator"]]),
        "{changes}"
    );
    assert_eq!(changes["password"], json!(["(redacted)", "(redacted)"]));
    assert!(!entries[0].to_string().contains("a-new-password-1"));
}
