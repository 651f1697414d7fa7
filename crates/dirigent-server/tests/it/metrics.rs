//! `/metrics` after a known workload: the figures read from the database and this node's own,
//! in Prometheus' text format, for those who may read settings.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::TestApp;

/// The value of the sample `series` (name and labels exactly as written), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn a_scrape_shows_runs_queues_agents_and_requests() {
    let app = TestApp::new().await;
    let admin = app.admin().await;
    let robot = json!({"name": "bot", "argv": ["true"], "max_parallel": 5});
    let created = app
        .send(Method::POST, "/api/v1/robots", Some(&admin), Some(robot))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let mut runs = Vec::new();
    for _ in 0..2 {
        let started = app
            .send(
                Method::POST,
                "/api/v1/runs",
                Some(&admin),
                Some(json!({"robot": "bot"})),
            )
            .await;
        assert_eq!(started.status, StatusCode::CREATED);
        runs.push(started.body["id"].as_str().unwrap().to_owned());
    }
    let first_run = &runs[0];
    let queue = app
        .send(
            Method::POST,
            "/api/v1/queues",
            Some(&admin),
            Some(json!({"name": "parcels"})),
        )
        .await;
    assert_eq!(queue.status, StatusCode::CREATED, "{:?}", queue.body);
    let items = json!([{"payload": 1}, {"payload": 2}, {"payload": 3}]);
    let added = app
        .send(
            Method::POST,
            "/api/v1/queues/parcels/items",
            Some(&admin),
            Some(items),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{:?}", added.body);

    let stop = format!("/api/v1/runs/{first_run}/stop");
    let stopped = app.send(Method::POST, &stop, Some(&admin), None).await;
    assert_eq!(stopped.status, StatusCode::OK);

    let scraped = app.send(Method::GET, "/metrics", Some(&admin), None).await;
    assert_eq!(scraped.status, StatusCode::OK);
    assert!(
        scraped.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = scraped.body.as_str().unwrap();
    for (series, value) in [
        (r#"dirigent_runs{robot="bot",state="queued"}"#, 1.0),
        (r#"dirigent_runs{robot="bot",state="stopped"}"#, 1.0),
        (
            r#"dirigent_runs_created_total{node="test-node",robot="bot"}"#,
            2.0,
        ),
        (
            r#"dirigent_runs_ended_total{node="test-node",robot="bot",state="stopped"}"#,
            1.0,
        ),
        (r#"dirigent_queue_items{queue="parcels",status="new"}"#, 3.0),
        (r#"dirigent_agents{state="online"}"#, 0.0),
        (
            r#"dirigent_http_request_duration_seconds_count{node="test-node",method="POST",route="/api/v1/runs",status="2xx"}"#,
            2.0,
        ),
        (
            r#"dirigent_http_request_duration_seconds_bucket{node="test-node",method="POST",route="/api/v1/runs",status="2xx",le="+Inf"}"#,
            2.0,
        ),
    ] {
        assert_eq!(sample(text, series), Some(value), "{series} in\n{text}");
    }
    for series in [
        r#"dirigent_queue_oldest_new_item_age_seconds{queue="parcels"}"#,
        r#"dirigent_nodes{state="alive"}"#,
        r#"dirigent_run_start_latency_seconds_count{node="test-node"}"#,
        r#"dirigent_db_connections{node="test-node",state="idle"}"#,
        r#"dirigent_write_batch_size_count{node="test-node"}"#,
    ] {
        assert!(sample(text, series).is_some(), "{series} in\n{text}");
    }
    let batches = sample(text, r#"dirigent_write_batch_size_count{node="test-node"}"#);
    assert!(batches.is_some_and(|count| 1.0 <= count), "{text}");
    // Every sample line is a name, optional labels and a number.
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }

    let viewer = app.user_with_roles("vic", &["viewer"]).await;
    let refused = app.send(Method::GET, "/metrics", Some(&viewer), None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}
