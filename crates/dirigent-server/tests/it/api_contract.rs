//! The contract every route keeps: documented in the OpenAPI document, closed without
//! credentials, and answering bad input with a JSON error, never a 500.

use std::collections::BTreeSet;

use axum::{
    body::Body,
    http::{Method, Request, StatusCode},
};
use serde_json::json;

use crate::support::TestApp;

/// Every operation the API offers. A route added without its OpenAPI description, or a
/// description without its route, fails `the_document_lists_every_route`.
pub(crate) const OPERATIONS: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Access::Open),
    ("GET", "/readyz", Access::Open),
    ("GET", "/api/v1/openapi.json", Access::Authenticated),
    ("POST", "/api/v1/login", Access::Open),
    ("POST", "/api/v1/logout", Access::Authenticated),
    ("GET", "/api/v1/me", Access::Authenticated),
    ("PUT", "/api/v1/me/language", Access::Authenticated),
    ("GET", "/api/v1/events", Access::Authenticated),
    ("GET", "/api/v1/tokens", Access::Authenticated),
    ("POST", "/api/v1/tokens", Access::Authenticated),
    ("DELETE", "/api/v1/tokens/{id}", Access::Authenticated),
    ("GET", "/api/v1/robots", Access::Authenticated),
    ("POST", "/api/v1/robots", Access::Authenticated),
    ("GET", "/api/v1/robots/{name}", Access::Authenticated),
    ("PUT", "/api/v1/robots/{name}", Access::Authenticated),
    ("DELETE", "/api/v1/robots/{name}", Access::Authenticated),
    ("POST", "/api/v1/robots/{name}/auto", Access::Authenticated),
    ("GET", "/api/v1/runs", Access::Authenticated),
    ("POST", "/api/v1/runs", Access::Authenticated),
    ("GET", "/api/v1/runs/{id}", Access::Authenticated),
    ("POST", "/api/v1/runs/{id}/pause", Access::Authenticated),
    ("POST", "/api/v1/runs/{id}/resume", Access::Authenticated),
    ("POST", "/api/v1/runs/{id}/stop", Access::Authenticated),
    ("POST", "/api/v1/runs/{id}/kill", Access::Authenticated),
    ("POST", "/api/v1/runs/{id}/restart", Access::Authenticated),
    ("GET", "/api/v1/runs/{id}/logs", Access::Authenticated),
    ("GET", "/api/v1/runs/{id}/frames", Access::Authenticated),
    (
        "GET",
        "/api/v1/runs/{id}/frames/{seq}",
        Access::Authenticated,
    ),
    ("GET", "/api/v1/sessions", Access::Authenticated),
    (
        "GET",
        "/api/v1/sessions/{agent}/{number}",
        Access::Authenticated,
    ),
    (
        "GET",
        "/api/v1/sessions/{agent}/{number}/screenshot",
        Access::Authenticated,
    ),
    (
        "POST",
        "/api/v1/sessions/{agent}/{number}/restart",
        Access::Authenticated,
    ),
    (
        "GET",
        "/api/v1/sessions/{agent}/{number}/live",
        Access::Authenticated,
    ),
    (
        "POST",
        "/api/v1/sessions/{agent}/{number}/control",
        Access::Authenticated,
    ),
    (
        "DELETE",
        "/api/v1/sessions/{agent}/{number}/control",
        Access::Authenticated,
    ),
    (
        "POST",
        "/api/v1/sessions/{agent}/{number}/input",
        Access::Authenticated,
    ),
    (
        "GET",
        "/api/v1/runs/{id}/logs/stream",
        Access::Authenticated,
    ),
    ("GET", "/api/v1/agents", Access::Authenticated),
    ("GET", "/api/v1/nodes", Access::Authenticated),
    ("GET", "/metrics", Access::Authenticated),
    ("GET", "/api/v1/agents/{name}", Access::Authenticated),
    ("POST", "/api/v1/agents/{name}/drain", Access::Authenticated),
    (
        "POST",
        "/api/v1/agents/enrollment-tokens",
        Access::Authenticated,
    ),
    ("GET", "/api/v1/audit", Access::Authenticated),
    ("GET", "/api/v1/logs", Access::Authenticated),
    ("GET", "/api/v1/logs/export", Access::Authenticated),
    ("GET", "/api/v1/logs/stream", Access::Authenticated),
    ("GET", "/api/v1/retention", Access::Authenticated),
    ("POST", "/api/v1/retention/sweep", Access::Authenticated),
    ("GET", "/api/v1/activities", Access::Authenticated),
    ("POST", "/api/v1/activities", Access::Authenticated),
    ("GET", "/api/v1/activities/catalog", Access::Authenticated),
    ("GET", "/api/v1/activities/{id}", Access::Authenticated),
    (
        "GET",
        "/api/v1/activities/{id}/output",
        Access::Authenticated,
    ),
    (
        "GET",
        "/api/v1/activities/{id}/output/stream",
        Access::Authenticated,
    ),
    (
        "POST",
        "/api/v1/activities/{id}/cancel",
        Access::Authenticated,
    ),
    ("GET", "/api/v1/users", Access::Authenticated),
    ("POST", "/api/v1/users", Access::Authenticated),
    ("GET", "/api/v1/users/{name}", Access::Authenticated),
    ("PUT", "/api/v1/users/{name}", Access::Authenticated),
    ("DELETE", "/api/v1/users/{name}", Access::Authenticated),
    ("POST", "/api/v1/users/{name}/logout", Access::Authenticated),
    ("POST", "/api/v1/me/password", Access::Authenticated),
    ("GET", "/api/v1/roles", Access::Authenticated),
    ("POST", "/api/v1/roles", Access::Authenticated),
    ("DELETE", "/api/v1/roles/{name}", Access::Authenticated),
    ("GET", "/api/v1/queues", Access::Authenticated),
    ("POST", "/api/v1/queues", Access::Authenticated),
    ("GET", "/api/v1/queues/{name}", Access::Authenticated),
    ("PUT", "/api/v1/queues/{name}", Access::Authenticated),
    ("DELETE", "/api/v1/queues/{name}", Access::Authenticated),
    ("GET", "/api/v1/queues/{name}/items", Access::Authenticated),
    ("POST", "/api/v1/queues/{name}/items", Access::Authenticated),
    ("POST", "/api/v1/queues/{name}/claim", Access::Authenticated),
    (
        "POST",
        "/api/v1/queues/{name}/claims",
        Access::Authenticated,
    ),
    (
        "POST",
        "/api/v1/queues/{name}/items/complete",
        Access::Authenticated,
    ),
    (
        "GET",
        "/api/v1/queues/{name}/items/{id}",
        Access::Authenticated,
    ),
    (
        "DELETE",
        "/api/v1/queues/{name}/items/{id}",
        Access::Authenticated,
    ),
    (
        "POST",
        "/api/v1/queues/{name}/items/{id}/extend",
        Access::Authenticated,
    ),
    (
        "POST",
        "/api/v1/queues/{name}/items/{id}/complete",
        Access::Authenticated,
    ),
    (
        "POST",
        "/api/v1/queues/{name}/items/{id}/fail",
        Access::Authenticated,
    ),
    (
        "POST",
        "/api/v1/queues/{name}/items/{id}/postpone",
        Access::Authenticated,
    ),
    (
        "POST",
        "/api/v1/queues/{name}/items/{id}/abandon",
        Access::Authenticated,
    ),
    (
        "POST",
        "/api/v1/queues/{name}/items/{id}/requeue",
        Access::Authenticated,
    ),
    (
        "POST",
        "/api/v1/queues/{name}/items/requeue",
        Access::Authenticated,
    ),
    (
        "POST",
        "/api/v1/queues/{name}/items/delete",
        Access::Authenticated,
    ),
    ("GET", "/api/v1/triggers", Access::Authenticated),
    ("POST", "/api/v1/triggers", Access::Authenticated),
    ("GET", "/api/v1/triggers/{id}", Access::Authenticated),
    ("PUT", "/api/v1/triggers/{id}", Access::Authenticated),
    ("DELETE", "/api/v1/triggers/{id}", Access::Authenticated),
    (
        "POST",
        "/api/v1/triggers/{id}/enable",
        Access::Authenticated,
    ),
    (
        "POST",
        "/api/v1/triggers/{id}/disable",
        Access::Authenticated,
    ),
    (
        "GET",
        "/api/v1/triggers/{id}/preview",
        Access::Authenticated,
    ),
    (
        "GET",
        "/api/v1/triggers/{id}/firings",
        Access::Authenticated,
    ),
    ("GET", "/api/v1/calendars", Access::Authenticated),
    ("POST", "/api/v1/calendars", Access::Authenticated),
    ("GET", "/api/v1/calendars/{name}", Access::Authenticated),
    ("PUT", "/api/v1/calendars/{name}", Access::Authenticated),
    ("DELETE", "/api/v1/calendars/{name}", Access::Authenticated),
    ("POST", "/agent/v1/enroll", Access::Open),
    ("GET", "/agent/v1/connect", Access::Authenticated),
    ("GET", "/agent/v1/blobs/{sha256}", Access::Authenticated),
    ("POST", "/api/v1/blobs", Access::Authenticated),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Open,
    Authenticated,
}

fn documented_operations() -> BTreeSet<(String, String)> {
    let doc = serde_json::to_value(dirigent_server::api::openapi()).unwrap();
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

/// The document passes a maintained validator (openapi-spec-validator, which `scripts/test`
/// installs), and every operation lists the answers the layers under its handler can give.
#[test]
fn the_document_is_valid_and_lists_every_answer_an_operation_can_give() {
    let document = dirigent_server::api::openapi();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, document.to_json().unwrap()).unwrap();
    #[expect(
        clippy::disallowed_methods,
        reason = "the validator is a program, not a robot"
    )]
    let checked = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "openapi-spec-validator (run scripts/test, which installs it): {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let value: serde_json::Value = serde_json::from_str(&document.to_json().unwrap()).unwrap();
    for (path, item) in value["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let answers = operation["responses"].as_object().unwrap();
            let mut needed = vec!["500", "503"];
            if operation.get("requestBody").is_some() {
                needed.extend(["400", "413", "415", "422"]);
            }
            if operation["security"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
            {
                needed.extend(["401", "403"]);
            }
            for status in needed {
                assert!(answers.contains_key(status), "{method} {path}: no {status}");
            }
            for (status, answer) in answers {
                assert!(
                    answer["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty()),
                    "{method} {path} {status}: no description"
                );
            }
        }
    }
}

#[test]
fn the_document_lists_every_route() {
    let expected: BTreeSet<(String, String)> = OPERATIONS
        .iter()
        .map(|(method, path, _)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(documented_operations(), expected);
}

#[tokio::test]
async fn every_route_answers_401_without_credentials() {
    let app = TestApp::new().await;
    for (method, path, access) in OPERATIONS {
        let path = path
            .replace("{name}", "some-robot")
            .replace("{id}", "tok_0");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let body = [Method::POST, Method::PUT]
            .contains(&method)
            .then(|| json!({}));
        for token in [
            None,
            Some("dgs_not-a-real-session"),
            Some("dgt_not-a-real-token"),
            Some("garbage"),
        ] {
            let answer = app.send(method.clone(), &path, token, body.clone()).await;
            match access {
                Access::Authenticated => {
                    assert_eq!(
                        answer.status,
                        StatusCode::UNAUTHORIZED,
                        "{method} {path} with {token:?}"
                    );
                    assert_eq!(answer.code(), "unauthenticated");
                    assert_eq!(answer.headers["www-authenticate"], "Bearer");
                }
                Access::Open => assert_ne!(
                    answer.status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} is open"
                ),
            }
        }
    }
}

#[tokio::test]
async fn the_document_is_served_to_callers() {
    let app = TestApp::new().await;
    let token = app.admin().await;
    let answer = app
        .send(Method::GET, "/api/v1/openapi.json", Some(&token), None)
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body["openapi"].as_str().unwrap().starts_with("3."));
    assert!(answer.body["components"]["schemas"]["RobotSpec"].is_object());
    assert!(answer.body["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn errors_are_json_with_a_request_id() {
    let app = TestApp::new().await;
    let token = app.admin().await;

    let answer = app
        .send(Method::GET, "/api/v1/nothing-here", Some(&token), None)
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.code(), "route_not_found");
    let request_id = answer.body["request_id"].as_str().unwrap();
    assert_eq!(answer.headers["x-request-id"], request_id);

    let answer = app
        .send(Method::PATCH, "/api/v1/robots", Some(&token), None)
        .await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.code(), "method_not_allowed");

    let answer = app.send(Method::GET, "/healthz", None, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, json!({"status": "ok"}));
    assert_eq!(answer.headers["x-content-type-options"], "nosniff");
    assert_eq!(answer.headers["x-frame-options"], "DENY");
    assert_eq!(answer.headers["referrer-policy"], "no-referrer");
    assert_eq!(answer.headers["cache-control"], "no-store");
    assert!(
        answer.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let answer = app.send(Method::GET, "/readyz", None, None).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn bodies_are_bounded_typed_and_well_formed() {
    let app = TestApp::new().await;
    let token = app.admin().await;
    let post = |content_type: Option<&str>, body: Vec<u8>| {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/robots")
            .header("authorization", format!("Bearer {token}"));
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.body(Body::from(body)).unwrap()
    };

    let huge = format!(
        r#"{{"name": "big", "argv": ["x"], "description": "{}"}}"#,
        "a".repeat(100 * 1024)
    );
    let answer = app
        .raw(post(Some("application/json"), huge.into_bytes()))
        .await;
    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );

    let answer = app
        .raw(post(None, br#"{"name": "a", "argv": ["x"]}"#.to_vec()))
        .await;
    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );

    let answer = app
        .raw(post(
            Some("text/plain"),
            br#"{"name": "a", "argv": ["x"]}"#.to_vec(),
        ))
        .await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let answer = app
        .raw(post(Some("application/json"), b"{\"name\": ".to_vec()))
        .await;
    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::BAD_REQUEST, "malformed_request")
    );

    let answer = app
        .raw(post(
            Some("application/json; charset=utf-8"),
            br#"{"name": "a", "argv": ["x"]}"#.to_vec(),
        ))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
}
