//! The control panel's server side: pages need a session, show only what the reader may use,
//! speak the reader's language, and the live feed carries only what the reader may read.
//! (The panel in a real browser is tested with the binary.)

use std::time::Duration;

use axum::{
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::TestApp;

/// A page as the browser gets it with the session cookie `session`.
async fn page(
    app: &TestApp,
    path: &str,
    session: Option<&str>,
    language: &str,
) -> (StatusCode, header::HeaderMap, String) {
    let mut request = Request::get(path).header(header::ACCEPT_LANGUAGE, language);
    if let Some(session) = session {
        request = request.header(header::COOKIE, format!("dirigent_session={session}"));
    }
    let response = app
        .router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn pages_need_a_session_and_assets_are_served_from_the_binary() {
    let app = TestApp::new().await;
    let (status, headers, _) = page(&app, "/robots/x?a=1", None, "en").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        headers[header::LOCATION],
        "/login?next=%2Frobots%2Fx%3Fa%3D1"
    );

    let (status, headers, body) = page(&app, "/login", None, "en").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        policy.contains("script-src 'self'") && !policy.contains("unsafe"),
        "{policy}"
    );
    assert!(body.contains(r#"<form id="login""#), "{body}");

    let script = body
        .split('"')
        .find(|part| part.starts_with("/assets/panel.js?v="))
        .unwrap()
        .to_owned();
    let (status, headers, js) = page(&app, &script, None, "en").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert!(js.contains("x-csrf-token"));
    let (status, _, _) = page(&app, "/assets/../Cargo.toml", None, "en").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = page(&app, "/assets/other.js", None, "en").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn pages_show_only_the_buttons_the_reader_may_use() {
    let app = TestApp::new().await;
    let admin = app.admin().await;
    let created = app
        .send(
            Method::POST,
            "/api/v1/robots",
            Some(&admin),
            Some(json!({"name": "invoices", "argv": ["x"], "description": "<b>pays</b>"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let viewer = app.user_with_roles("vera", &["viewer"]).await;

    let (status, _, body) = page(&app, "/robots/invoices", Some(&admin), "en").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(r#"data-path="/api/v1/runs""#), "{body}");
    // What users typed is shown, never interpreted.
    assert!(
        body.contains("&#60;b&#62;pays&#60;/b&#62;") || body.contains("&lt;b&gt;pays"),
        "{body}"
    );
    let csrf = dirigent_server::auth::cookie::csrf_token(&admin);
    assert!(body.contains(&format!(r#"<meta name="csrf-token" content="{csrf}">"#)));

    let (status, _, body) = page(&app, "/robots/invoices", Some(&viewer), "en").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains("data-path=\"/api/v1/runs\""), "{body}");
    let (_, _, body) = page(&app, "/robots", Some(&viewer), "en").await;
    assert!(
        body.contains("/robots/invoices") && !body.contains("new-robot"),
        "{body}"
    );

    let (status, headers, body) = page(&app, "/robots/nobody", Some(&viewer), "en").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        body.contains("Not found") && body.contains("nobody"),
        "{body}"
    );
    let (status, _, body) = page(&app, "/runs/run_0", Some(&viewer), "ru").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("Не найдено"), "{body}");

    // A user without the permission to read agents is refused the page, in HTML.
    let role = json!({"name": "robots-only", "permissions": [{"resource": "robots", "actions": ["read"]}]});
    let made = app
        .send(Method::POST, "/api/v1/roles", Some(&admin), Some(role))
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{:?}", made.body);
    let narrow = app.user_with_roles("nora", &["robots-only"]).await;
    let (status, _, body) = page(&app, "/agents", Some(&narrow), "en").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("Not allowed"), "{body}");
    let (_, _, body) = page(&app, "/", Some(&narrow), "en").await;
    assert!(!body.contains(r#"href="/agents""#), "{body}");
}

#[tokio::test]
async fn a_queue_page_filters_and_pages_through_its_items() {
    let app = TestApp::new().await;
    let admin = app.admin().await;
    app.send(
        Method::POST,
        "/api/v1/queues",
        Some(&admin),
        Some(json!({"name": "inbox"})),
    )
    .await;
    let items: Vec<Value> = (1..=5)
        .map(|n| json!({"payload": {"n": n}, "reference": if n % 2 == 0 { "even" } else { "odd" }}))
        .collect();
    let added = app
        .send(
            Method::POST,
            "/api/v1/queues/inbox/items",
            Some(&admin),
            Some(Value::Array(items)),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{:?}", added.body);

    let (status, _, body) = page(
        &app,
        "/queues/inbox?reference=odd&limit=2",
        Some(&admin),
        "en",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("{&#34;n&#34;:1}") || body.contains("{&quot;n&quot;:1}"),
        "{body}"
    );
    assert!(
        !body.contains("&#34;n&#34;:2") && !body.contains("&#34;n&#34;:5"),
        "{body}"
    );
    assert!(
        body.contains(r#"href="/queues/inbox?reference=odd&#38;after=3""#)
            || body.contains(r#"href="/queues/inbox?reference=odd&amp;after=3""#),
        "{body}"
    );
    // The bulk buttons act on what the filters select.
    assert!(
        body.contains(r#"{&#34;reference&#34;:&#34;odd&#34;}"#)
            || body.contains("{&quot;reference&quot;:&quot;odd&quot;}"),
        "{body}"
    );

    let (status, _, body) = page(
        &app,
        "/queues/inbox?reference=odd&limit=2&after=3",
        Some(&admin),
        "en",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("&#34;n&#34;:5") || body.contains("&quot;n&quot;:5"),
        "{body}"
    );
    assert!(
        !body.contains("after="),
        "the last page links no further: {body}"
    );

    let (status, _, body) = page(&app, "/queues/inbox?status=lost", Some(&admin), "en").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body.contains("<!doctype html>") && body.contains("status"),
        "{body}"
    );
}

#[tokio::test]
async fn the_language_is_the_users_choice_else_the_browsers() {
    let app = TestApp::new().await;
    let admin = app.admin().await;
    let (_, _, body) = page(&app, "/", Some(&admin), "ru-RU,ru;q=0.9,en;q=0.5").await;
    assert!(
        body.contains(r#"<html lang="ru">"#) && body.contains("Роботы"),
        "{body}"
    );
    let (_, _, body) = page(&app, "/", Some(&admin), "en-GB").await;
    assert!(
        body.contains(r#"<html lang="en">"#) && body.contains("Robots"),
        "{body}"
    );

    let refused = app
        .send(
            Method::PUT,
            "/api/v1/me/language",
            Some(&admin),
            Some(json!({"language": "de"})),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.body["field"], "language");
    let saved = app
        .send(
            Method::PUT,
            "/api/v1/me/language",
            Some(&admin),
            Some(json!({"language": "ru"})),
        )
        .await;
    assert_eq!(saved.status, StatusCode::NO_CONTENT);
    let me = app
        .send(Method::GET, "/api/v1/me", Some(&admin), None)
        .await;
    assert_eq!(me.body["language"], "ru");
    let (_, _, body) = page(&app, "/", Some(&admin), "en-GB").await;
    assert!(body.contains("Обзор"), "the saved choice wins: {body}");

    app.send(
        Method::PUT,
        "/api/v1/me/language",
        Some(&admin),
        Some(json!({"language": null})),
    )
    .await;
    let (_, _, body) = page(&app, "/", Some(&admin), "en-GB").await;
    assert!(body.contains("Dashboard"), "{body}");
}

/// The next event of an event stream: its name and data.
async fn next_event(body: &mut axum::body::BodyDataStream) -> (String, Value) {
    let mut text = String::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        if let Some(end) = text.find("\n\n") {
            let event = &text[..end];
            let name = event
                .lines()
                .find_map(|line| line.strip_prefix("event: "))
                .unwrap_or_default();
            let data = event
                .lines()
                .find_map(|line| line.strip_prefix("data: "))
                .unwrap_or("null");
            return (name.to_owned(), serde_json::from_str(data).unwrap());
        }
    }
}

#[tokio::test]
async fn the_live_feed_carries_only_what_the_reader_may_read() {
    let app = TestApp::new().await;
    let admin = app.admin().await;
    for name in ["finance-invoices", "hr-payroll"] {
        app.send(
            Method::POST,
            "/api/v1/robots",
            Some(&admin),
            Some(json!({"name": name, "argv": ["x"]})),
        )
        .await;
    }
    let role = json!({"name": "finance-operator", "permissions": [
        {"resource": "robots", "actions": ["read", "run"], "pattern": "finance-*"},
        {"resource": "runs", "actions": ["read"], "pattern": "finance-*"}]});
    app.send(Method::POST, "/api/v1/roles", Some(&admin), Some(role))
        .await;
    let fiona = app.user_with_roles("fiona", &["finance-operator"]).await;
    let response = app
        .router
        .clone()
        .oneshot(
            Request::get("/api/v1/events")
                .header(header::AUTHORIZATION, format!("Bearer {fiona}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut events = response.into_body().into_data_stream();

    for robot in ["hr-payroll", "finance-invoices"] {
        let started = app
            .send(
                Method::POST,
                "/api/v1/runs",
                Some(&admin),
                Some(json!({"robot": robot})),
            )
            .await;
        assert_eq!(started.status, StatusCode::CREATED);
    }
    // The run of hr-payroll came first, and fiona never hears of it.
    let (name, run) = next_event(&mut events).await;
    assert_eq!(name, "run");
    assert_eq!(run["robot"], "finance-invoices", "{run}");
    assert_eq!(run["state"], "queued");

    // Once she has logged out, the stream ends instead of telling her more.
    let out = app
        .send(Method::POST, "/api/v1/logout", Some(&fiona), None)
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    app.clock.advance(jiff::SignedDuration::from_secs(6));
    app.send(
        Method::POST,
        "/api/v1/runs",
        Some(&admin),
        Some(json!({"robot": "finance-invoices"})),
    )
    .await;
    let end = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the stream ends within 10 s");
    assert!(end.is_none(), "no more events after the logout: {end:?}");
}
