//! Triggers and calendars through the API: definitions checked, next firings computed across
//! daylight-saving changes and holidays, enabling and disabling.

use axum::http::{Method, StatusCode};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use crate::support::TestApp;

async fn setup() -> (TestApp, String) {
    let app = TestApp::new().await;
    let admin = app.admin().await;
    let robot = json!({"name": "invoices", "argv": ["true"]});
    let created = app
        .send(Method::POST, "/api/v1/robots", Some(&admin), Some(robot))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    (app, admin)
}

fn times(preview: &Value) -> Vec<&str> {
    preview
        .as_array()
        .unwrap()
        .iter()
        .map(|time| time["at"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_cron_trigger_previews_its_firings_across_a_dst_change() {
    let (app, admin) = setup().await;
    let spec = json!({"robot": "invoices", "kind": "cron", "cron": "30 2 * * *",
                      "time_zone": "Europe/Berlin"});
    let created = app
        .send(Method::POST, "/api/v1/triggers", Some(&admin), Some(spec))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("trg_"));
    assert_eq!(created.body["enabled"], true);
    // The clock of the test app stands at 2027-01-15T08:00:00Z.
    assert_eq!(created.body["next_fire_at"], "2027-01-16T01:30:00Z");

    let preview = app
        .send(
            Method::GET,
            &format!("/api/v1/triggers/{id}/preview?from=2027-03-27T12:00:00Z&count=2"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(preview.status, StatusCode::OK, "{:?}", preview.body);
    assert_eq!(
        times(&preview.body),
        ["2027-03-28T01:00:00Z", "2027-03-29T00:30:00Z"],
        "the skipped 02:30 fires once, when the clocks jump"
    );
    assert_eq!(preview.body[0]["offset"], "+02");
    assert_eq!(
        preview.body[1]["local"],
        "2027-03-29T02:30:00+02:00[Europe/Berlin]"
    );

    let disabled = app
        .send(
            Method::POST,
            &format!("/api/v1/triggers/{id}/disable"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(disabled.body["enabled"], false);
    assert!(disabled.body.get("next_fire_at").is_none());
    app.clock.advance(SignedDuration::from_hours(24));
    let admin = app.admin().await;
    let enabled = app
        .send(
            Method::POST,
            &format!("/api/v1/triggers/{id}/enable"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        enabled.body["next_fire_at"], "2027-01-17T01:30:00Z",
        "{:?}",
        enabled.body
    );
}

#[tokio::test]
async fn calendars_import_holidays_that_triggers_skip_or_move() {
    let (app, admin) = setup().await;
    let calendar = json!({"name": "de-office",
                          "import": "date,name\n2027-12-24,Christmas Eve\n2027-12-27,Holiday\n"});
    let created = app
        .send(
            Method::POST,
            "/api/v1/calendars",
            Some(&admin),
            Some(calendar),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(
        created.body["working_days"],
        json!(["mon", "tue", "wed", "thu", "fri"])
    );
    assert_eq!(
        created.body["excluded_dates"],
        json!(["2027-12-24", "2027-12-27"])
    );

    let preview = |off_day: &'static str| {
        let app = &app;
        let admin = admin.clone();
        async move {
            let spec = json!({"robot": "invoices", "kind": "weekly", "days": ["fri"],
                              "times": ["08:00"], "time_zone": "Europe/Berlin",
                              "calendar": "de-office", "off_day": off_day});
            let created = app
                .send(Method::POST, "/api/v1/triggers", Some(&admin), Some(spec))
                .await;
            assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
            let id = created.body["id"].as_str().unwrap();
            let path = format!("/api/v1/triggers/{id}/preview?from=2027-12-20T00:00:00Z&count=2");
            app.send(Method::GET, &path, Some(&admin), None).await.body
        }
    };
    assert_eq!(
        times(&preview("skip").await),
        ["2027-12-31T07:00:00Z", "2028-01-07T07:00:00Z"]
    );
    assert_eq!(
        times(&preview("next_working_day").await),
        ["2027-12-28T07:00:00Z", "2027-12-31T07:00:00Z"]
    );

    let in_use = app
        .send(
            Method::DELETE,
            "/api/v1/calendars/de-office",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(in_use.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn bad_definitions_name_their_field() {
    let (app, admin) = setup().await;
    for (spec, field) in [
        (
            json!({"robot": "nobody", "kind": "once", "at": "2030-01-01T00:00:00Z"}),
            "robot",
        ),
        (json!({"robot": "invoices", "kind": "hourly"}), "kind"),
        (json!({"robot": "invoices", "kind": "cron"}), "cron"),
        (
            json!({"robot": "invoices", "kind": "cron", "cron": "61 * * * *"}),
            "cron",
        ),
        (
            json!({"robot": "invoices", "kind": "cron", "cron": "0 * * * *", "time_zone": "Mars/Olympus"}),
            "time_zone",
        ),
        (
            json!({"robot": "invoices", "kind": "interval", "every_seconds": 0}),
            "every_seconds",
        ),
        (
            json!({"robot": "invoices", "kind": "weekly", "days": ["someday"], "times": ["08:00"]}),
            "days",
        ),
        (
            json!({"robot": "invoices", "kind": "weekly", "days": ["mon"], "times": ["25:00"]}),
            "times",
        ),
        (
            json!({"robot": "invoices", "kind": "once", "at": "2030-01-01T00:00:00Z", "calendar": "none"}),
            "calendar",
        ),
        (
            json!({"robot": "invoices", "kind": "once", "at": "2030-01-01T00:00:00Z", "overlap": "sometimes"}),
            "overlap",
        ),
        (
            json!({"robot": "invoices", "kind": "once", "colour": "red"}),
            "colour",
        ),
    ] {
        let answer = app
            .send(
                Method::POST,
                "/api/v1/triggers",
                Some(&admin),
                Some(spec.clone()),
            )
            .await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{spec}");
        assert_eq!(answer.body["field"], field, "{spec}: {:?}", answer.body);
    }
    let missing = app
        .send(
            Method::GET,
            "/api/v1/triggers/trg_nothing",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(missing.code(), "trigger_not_found");
    let listed = app
        .send(Method::GET, "/api/v1/triggers", Some(&admin), None)
        .await;
    assert_eq!(listed.body, json!([]), "nothing refused was stored");
    let once: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
    let spec = json!({"robot": "invoices", "kind": "once", "at": once.to_string()});
    let created = app
        .send(Method::POST, "/api/v1/triggers", Some(&admin), Some(spec))
        .await;
    assert_eq!(created.body["next_fire_at"], once.to_string());
}
