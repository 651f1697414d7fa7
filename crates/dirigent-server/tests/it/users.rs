//! Users and roles through the API: creation, scoped custom roles, disabling, password
//! changes, logging out everywhere.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::TestApp;

#[tokio::test]
async fn administrators_manage_users() {
    let app = TestApp::new().await;
    let admin = app.admin().await;
    let admin = Some(admin.as_str());
    let created = app
        .send(
            Method::POST,
            "/api/v1/users",
            admin,
            Some(json!({"username": "olga", "password": "olga-password-1", "roles": ["operator"]})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["roles"], json!(["operator"]));
    let cases = [
        (
            json!({"username": "olga", "password": "another-pass-1"}),
            StatusCode::CONFLICT,
            None,
        ),
        (
            json!({"username": "Bad Name", "password": "another-pass-1"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("username"),
        ),
        (
            json!({"username": "pat", "password": "short"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("password"),
        ),
        (
            json!({"username": "pat", "password": "another-pass-1", "roles": ["wizard"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("roles[0]"),
        ),
    ];
    for (body, status, field) in cases {
        let answer = app
            .send(Method::POST, "/api/v1/users", admin, Some(body.clone()))
            .await;
        assert_eq!(
            (answer.status, answer.body["field"].as_str()),
            (status, field),
            "{body}"
        );
    }
    let listed = app.send(Method::GET, "/api/v1/users", admin, None).await;
    let names: Vec<&str> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "olga"]);

    let olga = app.login("olga", "olga-password-1").await;
    assert_eq!(
        app.send(Method::GET, "/api/v1/users", Some(&olga), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    let disabled = app
        .send(
            Method::PUT,
            "/api/v1/users/olga",
            admin,
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(disabled.body["disabled"], true);
    assert_eq!(
        app.send(Method::GET, "/api/v1/me", Some(&olga), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED,
        "disabling ends sessions"
    );
    let refused = app
        .send(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"username": "olga", "password": "olga-password-1"})),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    app.send(
        Method::PUT,
        "/api/v1/users/olga",
        admin,
        Some(json!({"disabled": false, "password": "reset-password-1"})),
    )
    .await;
    let olga = app.login("olga", "reset-password-1").await;

    let changed = app
        .send(
            Method::POST,
            "/api/v1/me/password",
            Some(&olga),
            Some(json!({"current_password": "nope", "new_password": "olga-password-2"})),
        )
        .await;
    assert_eq!(
        (changed.status, changed.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("current_password"))
    );
    let changed = app
        .send(
            Method::POST,
            "/api/v1/me/password",
            Some(&olga),
            Some(
                json!({"current_password": "reset-password-1", "new_password": "olga-password-2"}),
            ),
        )
        .await;
    assert_eq!(changed.status, StatusCode::NO_CONTENT);
    let first = app.login("olga", "olga-password-2").await;
    let second = app.login("olga", "olga-password-2").await;
    assert_eq!(
        app.send(
            Method::POST,
            "/api/v1/users/olga/logout",
            Some(&first),
            None
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.send(Method::GET, "/api/v1/me", Some(&second), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED,
        "logged out everywhere"
    );

    let me = app
        .send(Method::DELETE, "/api/v1/users/admin", admin, None)
        .await;
    assert_eq!(
        (me.status, me.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("name"))
    );
    assert_eq!(
        app.send(Method::DELETE, "/api/v1/users/olga", admin, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let gone = app
        .send(Method::GET, "/api/v1/users/olga", admin, None)
        .await;
    assert_eq!(
        (gone.status, gone.code()),
        (StatusCode::NOT_FOUND, "user_not_found")
    );
}

#[tokio::test]
async fn custom_roles_reach_only_the_names_they_match() {
    let app = TestApp::new().await;
    let admin = app.admin().await;
    let admin = Some(admin.as_str());
    for name in ["finance-invoices", "hr-payroll"] {
        app.send(
            Method::POST,
            "/api/v1/robots",
            admin,
            Some(json!({"name": name, "argv": ["x"]})),
        )
        .await;
    }
    let bad = app
        .send(
            Method::POST,
            "/api/v1/roles",
            admin,
            Some(json!({"name": "x", "permissions": [{"resource": "robots", "actions": ["fly"]}]})),
        )
        .await;
    assert_eq!(
        (bad.status, bad.body["field"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("permissions[0].actions")
        )
    );
    let builtin = app
        .send(
            Method::POST,
            "/api/v1/roles",
            admin,
            Some(json!({"name": "admin", "permissions": []})),
        )
        .await;
    assert_eq!(builtin.status, StatusCode::CONFLICT);
    let role = app
        .send(
            Method::POST,
            "/api/v1/roles",
            admin,
            Some(json!({"name": "finance-operator", "permissions": [{"resource": "robots", "actions": ["read", "run"], "pattern": "finance-*"}]})),
        )
        .await;
    assert_eq!(role.status, StatusCode::CREATED, "{:?}", role.body);
    let roles = app.send(Method::GET, "/api/v1/roles", admin, None).await;
    let names: Vec<&str> = roles
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "admin",
            "operator",
            "developer",
            "viewer",
            "finance-operator"
        ]
    );

    app.send(
        Method::POST,
        "/api/v1/users",
        admin,
        Some(
            json!({"username": "fin", "password": "fin-password-1", "roles": ["finance-operator"]}),
        ),
    )
    .await;
    let fin = app.login("fin", "fin-password-1").await;
    let listed = app
        .send(Method::GET, "/api/v1/robots", Some(&fin), None)
        .await;
    let visible: Vec<&str> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(visible, ["finance-invoices"]);
    assert_eq!(
        app.send(
            Method::GET,
            "/api/v1/robots/finance-invoices",
            Some(&fin),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        app.send(Method::GET, "/api/v1/robots/hr-payroll", Some(&fin), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let edit = app
        .send(
            Method::DELETE,
            "/api/v1/robots/finance-invoices",
            Some(&fin),
            None,
        )
        .await;
    assert_eq!(edit.status, StatusCode::FORBIDDEN, "read and run, not edit");

    assert_eq!(
        app.send(Method::DELETE, "/api/v1/roles/viewer", admin, None)
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.send(
            Method::DELETE,
            "/api/v1/roles/finance-operator",
            admin,
            None
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.send(
            Method::GET,
            "/api/v1/robots/finance-invoices",
            Some(&fin),
            None
        )
        .await
        .status,
        StatusCode::FORBIDDEN,
        "a deleted role grants nothing at once"
    );
}
