//! Logging in and out, session expiry, and API tokens.

use axum::http::{Method, StatusCode};
use jiff::SignedDuration;
use serde_json::json;

use crate::support::{ADMIN_PASSWORD, TestApp};

#[tokio::test]
async fn wrong_credentials_are_refused_alike() {
    let app = TestApp::new().await;
    for (username, password) in [
        ("admin", "wrong-password"),
        ("ghost", ADMIN_PASSWORD),
        ("admin", ""),
    ] {
        let answer = app
            .send(
                Method::POST,
                "/api/v1/login",
                None,
                Some(json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            "{username}"
        );
        assert_eq!(answer.body["message"], "wrong username or password");
    }
    let answer = app
        .send(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"username": "admin"})),
        )
        .await;
    assert_eq!(
        (answer.status, answer.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("password"))
    );
}

#[tokio::test]
async fn a_session_works_until_logout_or_expiry() {
    let app = TestApp::new().await;
    let token = app.admin().await;
    assert!(token.starts_with("dgs_"));

    let me = app
        .send(Method::GET, "/api/v1/me", Some(&token), None)
        .await;
    assert_eq!(
        me.body,
        json!({"username": "admin", "roles": ["admin"], "credential": "session"})
    );

    let answer = app
        .send(Method::POST, "/api/v1/logout", Some(&token), None)
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    let answer = app
        .send(Method::GET, "/api/v1/me", Some(&token), None)
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    let token = app.admin().await;
    app.clock
        .advance(SignedDuration::from_hours(12) - SignedDuration::from_secs(1));
    assert_eq!(
        app.send(Method::GET, "/api/v1/me", Some(&token), None)
            .await
            .status,
        StatusCode::OK
    );
    app.clock.advance(SignedDuration::from_secs(1));
    let answer = app
        .send(Method::GET, "/api/v1/me", Some(&token), None)
        .await;
    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
}

#[tokio::test]
async fn api_tokens_are_shown_once_used_listed_and_revoked() {
    let app = TestApp::new().await;
    let session = app.admin().await;

    let created = app
        .send(
            Method::POST,
            "/api/v1/tokens",
            Some(&session),
            Some(json!({"name": "deploy script"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let secret = created.body["token"].as_str().unwrap().to_owned();
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("dgt_"));

    let again = app
        .send(
            Method::POST,
            "/api/v1/tokens",
            Some(&session),
            Some(json!({"name": "deploy script"})),
        )
        .await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::CONFLICT, "token_exists")
    );

    let me = app
        .send(Method::GET, "/api/v1/me", Some(&secret), None)
        .await;
    assert_eq!(me.body["credential"], "api_token");
    let robots = app
        .send(Method::GET, "/api/v1/robots", Some(&secret), None)
        .await;
    assert_eq!(robots.status, StatusCode::OK);

    let listed = app
        .send(Method::GET, "/api/v1/tokens", Some(&session), None)
        .await;
    let listed = listed.body.as_array().unwrap().clone();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "deploy script");
    assert_eq!(listed[0]["last_used_at"], "2027-01-15T08:00:00Z");
    assert!(
        listed[0].get("token").is_none(),
        "the secret is never listed"
    );

    let logout = app
        .send(Method::POST, "/api/v1/logout", Some(&secret), None)
        .await;
    assert_eq!(logout.status, StatusCode::UNPROCESSABLE_ENTITY);

    let revoked = app
        .send(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            Some(&session),
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    let refused = app
        .send(Method::GET, "/api/v1/me", Some(&secret), None)
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let twice = app
        .send(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            Some(&session),
            None,
        )
        .await;
    assert_eq!(
        (twice.status, twice.code()),
        (StatusCode::NOT_FOUND, "token_not_found")
    );
}

#[tokio::test]
async fn expiring_tokens_stop_working_on_time() {
    let app = TestApp::new().await;
    let session = app.admin().await;
    let past = app
        .send(
            Method::POST,
            "/api/v1/tokens",
            Some(&session),
            Some(json!({"name": "old", "expires_at": "2020-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(
        (past.status, past.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("expires_at"))
    );
    let blank = app
        .send(
            Method::POST,
            "/api/v1/tokens",
            Some(&session),
            Some(json!({"name": "  "})),
        )
        .await;
    assert_eq!(
        (blank.status, blank.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("name"))
    );

    let created = app
        .send(
            Method::POST,
            "/api/v1/tokens",
            Some(&session),
            Some(json!({"name": "ci", "expires_at": "2027-01-15T09:00:00Z"})),
        )
        .await;
    let secret = created.body["token"].as_str().unwrap().to_owned();
    assert_eq!(
        app.send(Method::GET, "/api/v1/me", Some(&secret), None)
            .await
            .status,
        StatusCode::OK
    );
    app.clock.advance(SignedDuration::from_hours(1));
    assert_eq!(
        app.send(Method::GET, "/api/v1/me", Some(&secret), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn users_see_only_their_own_tokens() {
    let app = TestApp::new().await;
    let admin = app.admin().await;
    let vera = app.user_with_roles("vera", &["viewer"]).await;
    let created = app
        .send(
            Method::POST,
            "/api/v1/tokens",
            Some(&admin),
            Some(json!({"name": "a"})),
        )
        .await;
    let id = created.body["id"].as_str().unwrap();

    let listed = app
        .send(Method::GET, "/api/v1/tokens", Some(&vera), None)
        .await;
    assert_eq!(listed.body, json!([]));
    let revoke = app
        .send(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            Some(&vera),
            None,
        )
        .await;
    assert_eq!(revoke.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tokens_can_carry_a_subset_of_their_owners_permissions() {
    let app = TestApp::new().await;
    let admin = app.admin().await;
    let limited = app
        .send(
            Method::POST,
            "/api/v1/tokens",
            Some(&admin),
            Some(json!({"name": "reader", "permissions": [{"resource": "robots", "actions": ["read"]}]})),
        )
        .await;
    assert_eq!(limited.status, StatusCode::CREATED, "{:?}", limited.body);
    let secret = limited.body["token"].as_str().unwrap();
    assert_eq!(
        app.send(Method::GET, "/api/v1/robots", Some(secret), None)
            .await
            .status,
        StatusCode::OK
    );
    let write = app
        .send(
            Method::POST,
            "/api/v1/robots",
            Some(secret),
            Some(json!({"name": "x", "argv": ["x"]})),
        )
        .await;
    assert_eq!(
        write.status,
        StatusCode::FORBIDDEN,
        "the token holds less than its owner"
    );
    assert_eq!(
        app.send(Method::GET, "/api/v1/users", Some(secret), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    let vera = app.user_with_roles("vera", &["viewer"]).await;
    let escalate = app
        .send(
            Method::POST,
            "/api/v1/tokens",
            Some(&vera),
            Some(json!({"name": "more", "permissions": [{"resource": "robots", "actions": ["edit"]}]})),
        )
        .await;
    assert_eq!(
        (escalate.status, escalate.body["field"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("permissions[0].actions")
        )
    );
}
