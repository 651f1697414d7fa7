//! Work-item queues through the API: settings, adding, claiming under a lease, answering,
//! searching, and bad input answered precisely.

use axum::{
    body::Body,
    http::{Method, Request, StatusCode},
};
use jiff::SignedDuration;
use serde_json::{Value, json};

use crate::support::TestApp;

async fn setup() -> (TestApp, String) {
    let app = TestApp::new().await;
    let admin = app.admin().await;
    let created = app
        .send(
            Method::POST,
            "/api/v1/queues",
            Some(&admin),
            Some(
                json!({"name": "invoices", "max_attempts": 2, "lease_seconds": 60,
                        "enforce_unique_reference": true, "max_payload_bytes": 1024}),
            ),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    (app, admin)
}

#[tokio::test]
async fn items_are_added_claimed_and_answered_under_a_lease() {
    let (app, admin) = setup().await;
    let items = json!([
        {"payload": {"customer": {"id": 7}, "amount": 12.5}, "reference": "inv-7"},
        {"payload": {"customer": {"id": 8}}, "reference": "inv-8", "priority": "high"},
    ]);
    let added = app
        .send(
            Method::POST,
            "/api/v1/queues/invoices/items",
            Some(&admin),
            Some(items),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{:?}", added.body);
    let ids: Vec<i64> = added.body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_i64().unwrap())
        .collect();

    let claim = app
        .send(
            Method::POST,
            "/api/v1/queues/invoices/claim",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(claim.status, StatusCode::OK, "{:?}", claim.body);
    assert_eq!(claim.body["item"]["id"], ids[1], "high priority first");
    assert_eq!(claim.body["item"]["status"], "in_progress");
    assert_eq!(claim.body["item"]["claimed_by"], "user:admin");
    let lease = claim.body["lease_token"].as_str().unwrap().to_owned();
    assert!(lease.starts_with("dgl_"));

    let path = format!("/api/v1/queues/invoices/items/{}/complete", ids[1]);
    let stale = app
        .send(
            Method::POST,
            &path,
            Some(&admin),
            Some(json!({"lease_token": "dgl_forged"})),
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    assert_eq!(stale.code(), "stale_lease");
    let done = app
        .send(
            Method::POST,
            &path,
            Some(&admin),
            Some(json!({"lease_token": lease, "output": {"booked": true}})),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{:?}", done.body);
    assert_eq!(done.body["status"], "successful");
    assert_eq!(done.body["output"], json!({"booked": true}));

    // The other item: claimed, its lease expires, it comes back with the attempt counted.
    let claim = app
        .send(
            Method::POST,
            "/api/v1/queues/invoices/claim",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(claim.body["item"]["id"], ids[0]);
    assert_eq!(claim.body["item"]["payload"]["amount"], 12.5);
    app.clock.advance(SignedDuration::from_secs(61));
    assert_eq!(app.writer.reap_expired().await.unwrap(), 1);
    let item = app
        .send(
            Method::GET,
            &format!("/api/v1/queues/invoices/items/{}", ids[0]),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(item.body["status"], "new");
    assert_eq!(item.body["attempts"], 1);
    assert_eq!(item.body["history"][0]["outcome"], "lease_expired");

    let empty_after_second_claim = {
        let again = app
            .send(
                Method::POST,
                "/api/v1/queues/invoices/claim",
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(again.status, StatusCode::OK);
        app.send(
            Method::POST,
            "/api/v1/queues/invoices/claim",
            Some(&admin),
            None,
        )
        .await
    };
    assert_eq!(empty_after_second_claim.status, StatusCode::NO_CONTENT);

    let queue = app
        .send(Method::GET, "/api/v1/queues/invoices", Some(&admin), None)
        .await;
    assert_eq!(queue.body["stats"]["counts"]["successful"], 1);
    assert_eq!(queue.body["stats"]["counts"]["in_progress"], 1);
    assert_eq!(queue.body["stats"]["counts"]["new"], 0);
    assert_eq!(queue.body["stats"]["successful_last_hour"], 1);
}

#[tokio::test]
async fn several_items_are_claimed_under_one_lease_and_completed_in_one_request() {
    let (app, admin) = setup().await;
    let items: Vec<Value> = (0..5).map(|n| json!({"payload": {"n": n}})).collect();
    let added = app
        .send(
            Method::POST,
            "/api/v1/queues/invoices/items",
            Some(&admin),
            Some(Value::Array(items)),
        )
        .await;
    let ids = added.body["ids"].as_array().unwrap().clone();

    let claims = app
        .send(
            Method::POST,
            "/api/v1/queues/invoices/claims",
            Some(&admin),
            Some(json!({"count": 3})),
        )
        .await;
    assert_eq!(claims.status, StatusCode::OK, "{:?}", claims.body);
    let claimed: Vec<Value> = claims.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].clone())
        .collect();
    assert_eq!(claimed, ids[..3], "claim order");
    let lease = claims.body["lease_token"].as_str().unwrap();
    assert!(claims.body["lease_expires_at"].is_string());

    let done = app
        .send(
            Method::POST,
            "/api/v1/queues/invoices/items/complete",
            Some(&admin),
            Some(json!({"items": [
                {"id": ids[0], "lease_token": lease, "output": {"ok": 1}},
                {"id": ids[1], "lease_token": "dgl_forged"},
                {"id": ids[3], "lease_token": lease},
                {"id": 999_999, "lease_token": lease},
                {"id": ids[2], "lease_token": lease},
            ]})),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{:?}", done.body);
    let results = done.body["results"].as_array().unwrap();
    let codes: Vec<Option<&str>> = results
        .iter()
        .map(|result| result["error"]["code"].as_str())
        .collect();
    assert_eq!(
        codes,
        [
            None,
            Some("stale_lease"),
            Some("invalid_state"),
            Some("item_not_found"),
            None
        ]
    );
    assert_eq!(results[4]["id"], ids[2]);
    let first = app
        .send(
            Method::GET,
            &format!("/api/v1/queues/invoices/items/{}", ids[0]),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(first.body["status"], "successful");
    assert_eq!(first.body["output"], json!({"ok": 1}));

    // The two left are claimed; then none is ready.
    let rest = app
        .send(
            Method::POST,
            "/api/v1/queues/invoices/claims",
            Some(&admin),
            Some(json!({"count": 10})),
        )
        .await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 2);
    let none = app
        .send(
            Method::POST,
            "/api/v1/queues/invoices/claims",
            Some(&admin),
            Some(json!({"count": 10})),
        )
        .await;
    assert_eq!(none.status, StatusCode::NO_CONTENT);

    for (body, field) in [
        (json!({"count": 0}), "count"),
        (json!({"count": 10_001}), "count"),
    ] {
        let refused = app
            .send(
                Method::POST,
                "/api/v1/queues/invoices/claims",
                Some(&admin),
                Some(body),
            )
            .await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(refused.body["field"], field);
    }
    let empty = app
        .send(
            Method::POST,
            "/api/v1/queues/invoices/items/complete",
            Some(&admin),
            Some(json!({"items": []})),
        )
        .await;
    assert_eq!(empty.status, StatusCode::UNPROCESSABLE_ENTITY);
    let unknown = app
        .send(
            Method::POST,
            "/api/v1/queues/nope/items/complete",
            Some(&admin),
            Some(json!({"items": [{"id": ids[0], "lease_token": lease}]})),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // Each request is audited once, with the status it was answered with; the record is
    // written with the operation.
    let audit = app
        .send(Method::GET, "/api/v1/audit?limit=100", Some(&admin), None)
        .await;
    let records: Vec<(String, u64, String)> = audit
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter(|record| {
            record["action"]
                .as_str()
                .unwrap()
                .contains("/queues/{name}/")
        })
        .map(|record| {
            (
                record["action"].as_str().unwrap().to_owned(),
                record["status"].as_u64().unwrap(),
                record["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let record = |action: &str, status: u64, outcome: &str| {
        (format!("POST /api/v1{action}"), status, outcome.to_owned())
    };
    // Newest first.
    assert_eq!(
        records,
        [
            record("/queues/{name}/items/complete", 404, "failed"),
            record("/queues/{name}/items/complete", 422, "failed"),
            record("/queues/{name}/claims", 422, "failed"),
            record("/queues/{name}/claims", 422, "failed"),
            record("/queues/{name}/claims", 204, "allowed"),
            record("/queues/{name}/claims", 200, "allowed"),
            record("/queues/{name}/items/complete", 200, "allowed"),
            record("/queues/{name}/claims", 200, "allowed"),
            record("/queues/{name}/items", 201, "allowed"),
        ]
    );
}

#[tokio::test]
async fn items_are_searched_by_status_reference_and_payload_field() {
    let (app, admin) = setup().await;
    let items: Vec<Value> = (0..5)
        .map(|n| json!({"payload": {"customer": {"id": n}}, "reference": format!("inv-{n}")}))
        .collect();
    app.send(
        Method::POST,
        "/api/v1/queues/invoices/items",
        Some(&admin),
        Some(Value::Array(items)),
    )
    .await;
    let list = |query: &str| {
        let app = &app;
        let admin = admin.clone();
        let path = format!("/api/v1/queues/invoices/items{query}");
        async move { app.send(Method::GET, &path, Some(&admin), None).await }
    };
    let by_field = list("?field=customer.id&value=3").await;
    assert_eq!(by_field.body.as_array().unwrap().len(), 1);
    assert_eq!(by_field.body[0]["reference"], "inv-3");
    let by_reference = list("?reference=inv-1").await;
    assert_eq!(by_reference.body[0]["payload"]["customer"]["id"], 1);
    let page = list("?limit=2").await;
    let last = page.body[1]["id"].as_i64().unwrap();
    let rest = list(&format!("?after={last}")).await;
    assert_eq!(rest.body.as_array().unwrap().len(), 3);
    assert_eq!(list("?status=new").await.body.as_array().unwrap().len(), 5);
    let bad = list("?status=done").await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.body["field"], "status");
    let half = list("?field=customer.id").await;
    assert_eq!(half.body["field"], "value");

    let deleted = app
        .send(
            Method::POST,
            "/api/v1/queues/invoices/items/delete",
            Some(&admin),
            Some(json!({"field": "customer.id", "value": "4"})),
        )
        .await;
    assert_eq!(deleted.body["count"], 1);
    let requeued = app
        .send(
            Method::POST,
            "/api/v1/queues/invoices/items/requeue",
            Some(&admin),
            Some(json!({"status": "deleted"})),
        )
        .await;
    assert_eq!(requeued.body["count"], 1);
}

#[tokio::test]
async fn bad_input_gets_precise_errors_and_changes_nothing() {
    let (app, admin) = setup().await;
    let send = |method: Method, path: &str, body: Option<Value>| {
        let app = &app;
        let admin = admin.clone();
        let path = path.to_owned();
        async move { app.send(method, &path, Some(&admin), body).await }
    };
    let first = send(
        Method::POST,
        "/api/v1/queues/invoices/items",
        Some(json!({"payload": 1, "reference": "inv-1"})),
    )
    .await;
    let existing = first.body["ids"][0].as_i64().unwrap();

    let duplicate = send(
        Method::POST,
        "/api/v1/queues/invoices/items",
        Some(json!([{"payload": 2, "reference": "inv-2"}, {"payload": 3, "reference": "inv-1"}])),
    )
    .await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
    assert_eq!(duplicate.code(), "duplicate_reference");
    assert_eq!(duplicate.body["existing_id"], existing);

    let big = "x".repeat(2000);
    let oversized = send(
        Method::POST,
        "/api/v1/queues/invoices/items",
        Some(json!([{"payload": 1}, {"payload": big}])),
    )
    .await;
    assert_eq!(oversized.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(oversized.body["field"], "[1].payload");

    let priority = send(
        Method::POST,
        "/api/v1/queues/invoices/items",
        Some(json!([{"payload": 1}, {"payload": 1, "priority": "urgent"}])),
    )
    .await;
    assert_eq!(priority.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(priority.body["field"], "[1].priority");

    let unknown = send(
        Method::POST,
        "/api/v1/queues/payroll/items",
        Some(json!({"payload": 1})),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "queue_not_found");

    let malformed = app
        .raw(
            Request::post("/api/v1/queues/invoices/items")
                .header("authorization", format!("Bearer {admin}"))
                .header("content-type", "application/json")
                .body(Body::from(r#"{"payload": }"#))
                .unwrap(),
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);

    let bad_settings = send(
        Method::POST,
        "/api/v1/queues",
        Some(json!({"name": "q2", "lease_seconds": 0})),
    )
    .await;
    assert_eq!(bad_settings.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_settings.body["field"], "lease_seconds");
    let taken = send(
        Method::POST,
        "/api/v1/queues",
        Some(json!({"name": "invoices"})),
    )
    .await;
    assert_eq!(taken.status, StatusCode::CONFLICT);
    let not_an_id = send(Method::GET, "/api/v1/queues/invoices/items/abc", None).await;
    assert_eq!(not_an_id.code(), "item_not_found");
    let kind = send(
        Method::POST,
        &format!("/api/v1/queues/invoices/items/{existing}/fail"),
        Some(json!({"lease_token": "dgl_x", "kind": "cosmic"})),
    )
    .await;
    assert_eq!(kind.body["field"], "kind");

    let items = send(Method::GET, "/api/v1/queues/invoices/items", None).await;
    assert_eq!(
        items.body.as_array().unwrap().len(),
        1,
        "no refused add stored anything"
    );
}
