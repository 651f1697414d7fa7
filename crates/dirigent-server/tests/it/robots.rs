//! Robot definitions through the API: the whole life of one, the rejection of bad ones, and a
//! start by hand with arguments and environment.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::TestApp;

#[tokio::test]
async fn a_robot_is_created_read_listed_replaced_and_deleted() {
    let app = TestApp::new().await;
    let token = app.admin().await;
    let token = Some(token.as_str());

    let answer = app
        .send(
            Method::POST,
            "/api/v1/robots",
            token,
            Some(json!({
                "name": "invoices",
                "description": "Books supplier invoices",
                "argv": ["python3", "-u", "invoices.py"],
                "env": {"MODE": "prod"},
                "agent": "os=linux",
                "restart_policy": "on_failure",
                "crash_loop": {"max_starts": 3, "window_seconds": 60}
            })),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
    assert_eq!(answer.headers["location"], "/api/v1/robots/invoices");
    let created = answer.body;
    assert_eq!(created["argv"], json!(["python3", "-u", "invoices.py"]));
    assert_eq!(created["max_parallel"], 1);
    assert_eq!(created["stop_grace_seconds"], 30);
    assert_eq!(created["max_duration_seconds"], Value::Null);
    assert_eq!(
        created["restart_backoff"],
        json!({"initial_seconds": 1, "max_seconds": 300})
    );
    assert_eq!(
        created["crash_loop"],
        json!({"max_starts": 3, "window_seconds": 60})
    );
    assert_eq!(created["created_at"], "2027-01-15T08:00:00Z");

    let again = app
        .send(
            Method::POST,
            "/api/v1/robots",
            token,
            Some(json!({"name": "invoices", "argv": ["x"]})),
        )
        .await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::CONFLICT, "robot_exists")
    );

    let read = app
        .send(Method::GET, "/api/v1/robots/invoices", token, None)
        .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body, created);

    app.clock.advance(jiff::SignedDuration::from_secs(60));
    let replaced = app
        .send(
            Method::PUT,
            "/api/v1/robots/invoices",
            token,
            Some(json!({"argv": ["sh", "-c", "echo hello"], "max_duration_seconds": 600, "needs_display": true})),
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK, "{:?}", replaced.body);
    assert_eq!(replaced.body["max_duration_seconds"], 600);
    assert_eq!(
        replaced.body["env"],
        json!({}),
        "PUT replaces the whole definition"
    );
    assert_eq!(replaced.body["created_at"], created["created_at"]);
    assert_eq!(replaced.body["updated_at"], "2027-01-15T08:01:00Z");

    let renamed = app
        .send(
            Method::PUT,
            "/api/v1/robots/invoices",
            token,
            Some(json!({"name": "other", "argv": ["x"]})),
        )
        .await;
    assert_eq!(
        (renamed.status, renamed.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("name"))
    );

    app.send(
        Method::POST,
        "/api/v1/robots",
        token,
        Some(json!({"name": "archive", "argv": ["x"]})),
    )
    .await;
    let listed = app.send(Method::GET, "/api/v1/robots", token, None).await;
    let names: Vec<&str> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["archive", "invoices"]);

    let deleted = app
        .send(Method::DELETE, "/api/v1/robots/invoices", token, None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    for method in [Method::GET, Method::DELETE] {
        let gone = app
            .send(method, "/api/v1/robots/invoices", token, None)
            .await;
        assert_eq!(
            (gone.status, gone.code()),
            (StatusCode::NOT_FOUND, "robot_not_found")
        );
    }
    let gone = app
        .send(
            Method::PUT,
            "/api/v1/robots/invoices",
            token,
            Some(json!({"argv": ["x"]})),
        )
        .await;
    assert_eq!(
        (gone.status, gone.code()),
        (StatusCode::NOT_FOUND, "robot_not_found")
    );
}

#[tokio::test]
async fn invalid_definitions_name_their_field() {
    let app = TestApp::new().await;
    let token = app.admin().await;
    let cases: &[(Value, &str, &str)] = &[
        (json!({"argv": ["x"]}), "name", "is required"),
        (
            json!({"name": "Bad Name", "argv": ["x"]}),
            "name",
            "must start with",
        ),
        (json!({"name": "ok"}), "argv", "is required"),
        (
            json!({"name": "ok", "argv": []}),
            "argv",
            "at least the program",
        ),
        (
            json!({"name": "ok", "argv": "python3 bot.py"}),
            "argv",
            "invalid type",
        ),
        (
            json!({"name": "ok", "argv": ["x"], "working_dir": "tmp"}),
            "working_dir",
            "absolute",
        ),
        (
            json!({"name": "ok", "argv": ["x"], "env": {"DIRIGENT_URL": "x"}}),
            "env.DIRIGENT_URL",
            "reserved",
        ),
        (
            json!({"name": "ok", "argv": ["x"], "env": {"A": 1}}),
            "env.A",
            "invalid type",
        ),
        (
            json!({"name": "ok", "argv": ["x"], "max_parallel": 0}),
            "max_parallel",
            "between 1",
        ),
        (
            json!({"name": "ok", "argv": ["x"], "max_parallel": -1}),
            "max_parallel",
            "invalid value",
        ),
        (
            json!({"name": "ok", "argv": ["x"], "restart_policy": "sometimes"}),
            "restart_policy",
            "unknown variant",
        ),
        (
            json!({"name": "ok", "argv": ["x"], "crash_loop": {"max_starts": 3}}),
            "crash_loop.window_seconds",
            "is required",
        ),
        (
            json!({"name": "ok", "argv": ["x"], "restart_backoff": {"initial_seconds": 9, "max_seconds": 1}}),
            "restart_backoff.max_seconds",
            "less than",
        ),
        (
            json!({"name": "ok", "argv": ["x"], "agent": "a=b,a=c"}),
            "agent",
            "twice",
        ),
        (
            json!({"name": "ok", "argv": ["x"], "shell": true}),
            "shell",
            "unknown field",
        ),
    ];
    for (body, field, reason) in cases {
        let answer = app
            .send(
                Method::POST,
                "/api/v1/robots",
                Some(&token),
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {:?}",
            answer.body
        );
        assert_eq!(answer.code(), "invalid_field");
        assert_eq!(answer.body["field"], *field, "{body}: {:?}", answer.body);
        let message = answer.body["message"].as_str().unwrap();
        assert!(message.contains(reason), "{body}: {message}");
    }
    let listed = app
        .send(Method::GET, "/api/v1/robots", Some(&token), None)
        .await;
    assert_eq!(listed.body, json!([]), "nothing invalid was stored");
}

#[tokio::test]
async fn permissions_are_checked_on_every_robot_route() {
    let app = TestApp::new().await;
    let admin = app.admin().await;
    app.send(
        Method::POST,
        "/api/v1/robots",
        Some(&admin),
        Some(json!({"name": "payroll", "argv": ["x"]})),
    )
    .await;
    let viewer = app.user_with_roles("vera", &["viewer"]).await;
    let nobody = app.user_with_roles("nora", &[]).await;

    let read = app
        .send(Method::GET, "/api/v1/robots/payroll", Some(&viewer), None)
        .await;
    assert_eq!(read.status, StatusCode::OK);
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/robots",
            Some(json!({"name": "mine", "argv": ["x"]})),
        ),
        (
            Method::PUT,
            "/api/v1/robots/payroll",
            Some(json!({"argv": ["y"]})),
        ),
        (Method::DELETE, "/api/v1/robots/payroll", None),
    ] {
        let answer = app.send(method.clone(), path, Some(&viewer), body).await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{method} {path}"
        );
        assert!(
            answer.body["message"]
                .as_str()
                .unwrap()
                .starts_with("vera may not edit robots")
        );
    }
    for path in ["/api/v1/robots", "/api/v1/robots/payroll"] {
        let answer = app.send(Method::GET, path, Some(&nobody), None).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{path}");
    }
    let still = app
        .send(Method::GET, "/api/v1/robots/payroll", Some(&admin), None)
        .await;
    assert_eq!(
        still.body["argv"],
        json!(["x"]),
        "the denied edits changed nothing"
    );
}

#[tokio::test]
async fn a_manual_start_takes_arguments_and_environment() {
    let app = TestApp::new().await;
    let admin = app.admin().await;
    let robot = json!({"name": "report", "argv": ["sh", "-c", "echo $1"], "env": {"MODE": "prod"}});
    let created = app
        .send(Method::POST, "/api/v1/robots", Some(&admin), Some(robot))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let start =
        json!({"robot": "report", "args": ["--full"], "env": {"MODE": "test", "DAY": "mon"}});
    let started = app
        .send(Method::POST, "/api/v1/runs", Some(&admin), Some(start))
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{:?}", started.body);
    let id = started.body["id"].as_str().unwrap();
    let shown = app
        .send(
            Method::GET,
            &format!("/api/v1/runs/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(shown.body["args"], json!(["--full"]), "{:?}", shown.body);
    assert_eq!(shown.body["env"], json!({"DAY": "mon", "MODE": "test"}));

    for (body, field) in [
        (json!({"robot": "report", "env": {"BAD KEY": "x"}}), "env"),
        (json!({"robot": "report", "args": ["a\u{0}b"]}), "args"),
    ] {
        let refused = app
            .send(Method::POST, "/api/v1/runs", Some(&admin), Some(body))
            .await;
        assert_eq!(
            (refused.status, refused.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            "{:?}",
            refused.body
        );
        assert!(
            refused.body["field"].as_str().unwrap().starts_with(field),
            "{:?}",
            refused.body
        );
    }
}
