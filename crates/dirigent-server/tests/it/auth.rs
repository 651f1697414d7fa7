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

/// Sends a request carrying `cookie` and, when given, the CSRF header.
async fn with_cookie(
    app: &TestApp,
    method: Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<serde_json::Value>,
) -> crate::support::Answer {
    let mut request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("cookie", format!("theme=dark; {cookie}"));
    if let Some(csrf) = csrf {
        request = request.header("x-csrf-token", csrf);
    }
    let body = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            axum::body::Body::from(serde_json::to_vec(&body).unwrap())
        }
        None => axum::body::Body::empty(),
    };
    app.raw(request.body(body).unwrap()).await
}

#[tokio::test]
async fn a_cookie_session_reads_freely_and_writes_only_with_its_csrf_token() {
    let app = TestApp::new().await;
    let login = app
        .send(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"username": "admin", "password": ADMIN_PASSWORD, "cookie": true})),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{:?}", login.body);
    assert!(
        login.body.get("token").is_none(),
        "the token stays in the cookie"
    );
    let csrf = login.body["csrf_token"].as_str().unwrap().to_owned();
    let set_cookie = login.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("; HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("; SameSite=Strict"), "{set_cookie}");
    assert!(set_cookie.contains("; Max-Age=43200"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with("dirigent_session=dgs_"), "{cookie}");

    let me = with_cookie(&app, Method::GET, "/api/v1/me", &cookie, None, None).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["username"], "admin");

    // A forged write — the cookie without the CSRF token, or with another one — is refused,
    // and nothing is created.
    let robot = json!({"name": "forged", "argv": ["x"]});
    for forged in [None, Some("0123456789abcdef0123456789abcdef")] {
        let answer = with_cookie(
            &app,
            Method::POST,
            "/api/v1/robots",
            &cookie,
            forged,
            Some(robot.clone()),
        )
        .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{:?}", answer.body);
        assert!(
            answer.body["message"]
                .as_str()
                .unwrap()
                .contains("X-CSRF-Token")
        );
    }
    let robots = with_cookie(&app, Method::GET, "/api/v1/robots", &cookie, None, None).await;
    assert_eq!(robots.body.as_array().unwrap().len(), 0);

    let created = with_cookie(
        &app,
        Method::POST,
        "/api/v1/robots",
        &cookie,
        Some(&csrf),
        Some(robot),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);

    // Logging out ends the session and tells the browser to drop the cookie.
    let logout = with_cookie(
        &app,
        Method::POST,
        "/api/v1/logout",
        &cookie,
        Some(&csrf),
        None,
    )
    .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let cleared = logout.headers["set-cookie"].to_str().unwrap();
    assert!(cleared.starts_with("dirigent_session=;") && cleared.contains("Max-Age=0"));
    let me = with_cookie(&app, Method::GET, "/api/v1/me", &cookie, None, None).await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_login_command_checks_passwords_the_local_ones_do_not_match() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // Stands in for PAM or LDAP: accepts `ext` with the password `directory-pass-1`, read
    // from standard input, and records the environment it was given.
    let script = dir.path().join("check-password");
    let seen = dir.path().join("seen-env");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv > {}\npassword=$(cat)\n[ \"$DIRIGENT_USERNAME\" = ext ] && [ \"$password\" = directory-pass-1 ]\n",
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = TestApp::with_config(|config| {
        config.login_command = Some(dirigent_server::auth::external::LoginCommand {
            argv: vec![script.display().to_string()],
            timeout: std::time::Duration::from_secs(10),
        });
    })
    .await;
    let login = |username: &'static str, password: &'static str| {
        let app = &app;
        async move {
            app.send(
                Method::POST,
                "/api/v1/login",
                None,
                Some(json!({"username": username, "password": password})),
            )
            .await
            .status
        }
    };
    app.user_with_roles("ext", &["viewer"]).await;

    assert_eq!(login("ext", "directory-pass-1").await, StatusCode::OK);
    let env = std::fs::read_to_string(&seen).unwrap();
    assert!(env.contains("DIRIGENT_USERNAME=ext"), "{env}");
    assert!(
        !env.contains("directory-pass-1"),
        "the password is not in the environment"
    );
    // The local password still works; a wrong one is refused by both.
    assert_eq!(login("ext", "user-password-1").await, StatusCode::OK);
    assert_eq!(
        login("ext", "wrong-password-1").await,
        StatusCode::UNAUTHORIZED
    );
    // The program accepts only users Dirigent knows and has enabled.
    assert_eq!(
        login("nobody", "directory-pass-1").await,
        StatusCode::UNAUTHORIZED
    );
    let admin = app.admin().await;
    let disabled = app
        .send(
            Method::PUT,
            "/api/v1/users/ext",
            Some(&admin),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(disabled.status, StatusCode::OK, "{:?}", disabled.body);
    assert_eq!(
        login("ext", "directory-pass-1").await,
        StatusCode::UNAUTHORIZED
    );
}
