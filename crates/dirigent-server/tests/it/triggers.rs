//! Triggers and calendars through the API: definitions checked, next firings computed across
//! daylight-saving changes and holidays, enabling and disabling.

use axum::http::{Method, StatusCode};
use dirigent_store::{FiringTake, NewFiring};
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
        (json!({"robot": "invoices", "kind": "queue"}), "queue"),
        (
            json!({"robot": "invoices", "kind": "queue", "queue": "nowhere"}),
            "queue",
        ),
        (
            json!({"robot": "invoices", "kind": "queue", "queue": "inbox", "max_runs": 0}),
            "max_runs",
        ),
        (
            json!({"robot": "invoices", "kind": "once", "at": "2030-01-01T00:00:00Z", "env": {"9X": "v"}}),
            "env.9X",
        ),
        (
            json!({"robot": "invoices", "kind": "once", "at": "2030-01-01T00:00:00Z", "args": ["a\u{0}b"]}),
            "args[0]",
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

/// Creates a trigger from `spec` and answers its id.
async fn trigger(app: &TestApp, admin: &str, spec: Value) -> String {
    let created = app
        .send(Method::POST, "/api/v1/triggers", Some(admin), Some(spec))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    created.body["id"].as_str().unwrap().to_owned()
}

/// Starts a run of `invoices` as an operator does; answers its id.
async fn start_by_hand(app: &TestApp, admin: &str) -> String {
    let started = app
        .send(
            Method::POST,
            "/api/v1/runs",
            Some(admin),
            Some(json!({"robot": "invoices"})),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{:?}", started.body);
    started.body["id"].as_str().unwrap().to_owned()
}

/// The trigger's firings, oldest first, as (outcome, reason).
async fn firings(app: &TestApp, admin: &str, id: &str) -> Vec<(String, String)> {
    let listed = app
        .send(
            Method::GET,
            &format!("/api/v1/triggers/{id}/firings"),
            Some(admin),
            None,
        )
        .await;
    let mut firings: Vec<(String, String)> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|firing| {
            (
                firing["outcome"].as_str().unwrap().to_owned(),
                firing["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    firings.reverse();
    firings
}

fn outcomes(firings: &[(String, String)]) -> Vec<&str> {
    firings
        .iter()
        .map(|(outcome, _)| outcome.as_str())
        .collect()
}

#[tokio::test]
async fn a_due_trigger_starts_a_run_and_records_the_firing() {
    let (app, admin) = setup().await;
    let id = trigger(
        &app,
        &admin,
        json!({"robot": "invoices", "kind": "interval", "every_seconds": 60, "overlap": "allow"}),
    )
    .await;
    app.scheduler.fire_due().await.unwrap();
    assert!(firings(&app, &admin, &id).await.is_empty(), "not due yet");

    app.clock.advance(SignedDuration::from_secs(60));
    app.scheduler.fire_due().await.unwrap();
    let listed = app
        .send(
            Method::GET,
            &format!("/api/v1/triggers/{id}/firings"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(listed.body[0]["outcome"], "started", "{:?}", listed.body);
    let run_id = listed.body[0]["run_id"].as_str().unwrap();
    let run = app
        .send(
            Method::GET,
            &format!("/api/v1/runs/{run_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(run.body["robot"], "invoices");
    let cause = run.body["transitions"][0]["cause"].as_str().unwrap();
    assert!(cause.starts_with(&format!("trigger:{id}#")), "{cause}");
    let shown = app
        .send(
            Method::GET,
            &format!("/api/v1/triggers/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(shown.body["next_fire_at"], "2027-01-15T08:02:00Z");
}

#[tokio::test]
async fn firings_missed_during_downtime_follow_the_missed_policy() {
    let (app, admin) = setup().await;
    let mut ids = Vec::new();
    for missed in [
        json!({"missed": "skip"}),
        json!({"missed": "run_once"}),
        json!({"missed": "run_all", "catch_up_seconds": 180}),
    ] {
        let mut spec = json!({"robot": "invoices", "kind": "interval", "every_seconds": 60,
                              "overlap": "allow"});
        spec.as_object_mut()
            .unwrap()
            .extend(missed.as_object().unwrap().clone());
        ids.push(trigger(&app, &admin, spec).await);
    }
    // Down for ten minutes: firings were due at +1 … +10 min.
    app.clock.advance(SignedDuration::from_secs(10 * 60 + 30));
    app.scheduler.fire_due().await.unwrap();
    let count = |firings: &[(String, String)], outcome: &str| {
        firings.iter().filter(|(o, _)| o == outcome).count()
    };
    let skip = firings(&app, &admin, &ids[0]).await;
    assert_eq!((count(&skip, "started"), count(&skip, "missed")), (0, 10));
    assert!(skip[0].1.contains("orchestrator was down"), "{skip:?}");
    let once = firings(&app, &admin, &ids[1]).await;
    assert_eq!((count(&once, "started"), count(&once, "missed")), (1, 9));
    assert_eq!(once.last().unwrap().0, "started", "the latest runs");
    let all = firings(&app, &admin, &ids[2]).await;
    assert_eq!((count(&all, "started"), count(&all, "missed")), (3, 7));
}

#[tokio::test]
async fn manual_robots_and_overlaps_are_skipped_with_a_reason() {
    let (app, admin) = setup().await;
    let queue_one = trigger(
        &app,
        &admin,
        json!({"robot": "invoices", "kind": "interval", "every_seconds": 60, "overlap": "queue_one"}),
    )
    .await;
    let skip = trigger(
        &app,
        &admin,
        json!({"robot": "invoices", "kind": "interval", "every_seconds": 60, "anchor": "2027-01-15T08:01:30Z"}),
    )
    .await;
    // Without an agent the first run stays queued.
    app.clock.advance(SignedDuration::from_secs(60));
    app.scheduler.fire_due().await.unwrap();
    app.clock.advance(SignedDuration::from_secs(40));
    app.scheduler.fire_due().await.unwrap();
    app.clock.advance(SignedDuration::from_secs(20));
    app.scheduler.fire_due().await.unwrap();
    let queued = firings(&app, &admin, &queue_one).await;
    assert_eq!(outcomes(&queued), ["started", "skipped"], "{queued:?}");
    assert!(queued[1].1.contains("queued already"), "{queued:?}");
    let skipped = firings(&app, &admin, &skip).await;
    assert_eq!(outcomes(&skipped), ["skipped"]);
    assert!(skipped[0].1.contains("overlap: skip"), "{skipped:?}");

    // An operator's start leaves the robot in auto mode; stopping a run takes control, and
    // then triggers leave it alone.
    let id = start_by_hand(&app, &admin).await;
    let robot = app
        .send(Method::GET, "/api/v1/robots/invoices", Some(&admin), None)
        .await;
    assert_eq!(robot.body["mode"], "auto", "{:?}", robot.body);
    let stopped = app
        .send(
            Method::POST,
            &format!("/api/v1/runs/{id}/stop"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(stopped.status, StatusCode::OK, "{:?}", stopped.body);
    app.clock.advance(SignedDuration::from_secs(60));
    app.scheduler.fire_due().await.unwrap();
    let manual = firings(&app, &admin, &queue_one).await;
    assert_eq!(manual.last().unwrap().0, "skipped");
    assert!(
        manual.last().unwrap().1.contains("manual mode"),
        "{manual:?}"
    );
}

/// The mode rules, operation by trigger: an operator's start leaves a scheduled robot in auto
/// mode (its triggers go on firing); a stop or a kill takes manual control (its triggers skip,
/// saying why).
#[tokio::test]
async fn an_operators_start_keeps_the_schedule_and_a_stop_or_kill_takes_control() {
    let schedules = [
        json!({"kind": "interval", "every_seconds": 60, "overlap": "allow"}),
        json!({"kind": "cron", "cron": "* * * * *", "overlap": "allow"}),
    ];
    for (operation, mode, outcome) in [
        ("start", "auto", "started"),
        ("stop", "manual", "skipped"),
        ("kill", "manual", "skipped"),
    ] {
        for schedule in &schedules {
            let (app, admin) = setup().await;
            let mut spec = schedule.clone();
            spec["robot"] = "invoices".into();
            let id = trigger(&app, &admin, spec).await;
            let run = start_by_hand(&app, &admin).await;
            if operation != "start" {
                let path = format!("/api/v1/runs/{run}/{operation}");
                let done = app.send(Method::POST, &path, Some(&admin), None).await;
                assert_eq!(done.status, StatusCode::OK, "{operation}: {:?}", done.body);
            }
            let robot = app
                .send(Method::GET, "/api/v1/robots/invoices", Some(&admin), None)
                .await;
            assert_eq!(robot.body["mode"], mode, "{operation} {schedule}");
            app.clock.advance(SignedDuration::from_secs(60));
            app.scheduler.fire_due().await.unwrap();
            let fired = firings(&app, &admin, &id).await;
            let (last, reason) = fired.last().unwrap();
            assert_eq!(last, outcome, "{operation} {schedule}: {fired:?}");
            if mode == "manual" {
                assert!(reason.contains("manual mode"), "{reason}");
            }
        }
    }
}

#[tokio::test]
async fn a_firing_taken_before_a_stop_is_started_once_after_it() {
    let (app, admin) = setup().await;
    let id = trigger(
        &app,
        &admin,
        json!({"robot": "invoices", "kind": "once", "at": "2027-01-15T09:00:00Z", "overlap": "allow"}),
    )
    .await;
    // A node took the firing and stopped before starting its run.
    let due: Timestamp = "2027-01-15T09:00:00Z".parse().unwrap();
    let take = FiringTake {
        trigger_id: id.clone(),
        due_at: due,
        next: None,
        firings: vec![NewFiring {
            due_at: due,
            outcome: "due",
            reason: None,
        }],
    };
    let taken = app
        .store
        .take_trigger_firings(std::slice::from_ref(&take), "stopped-node", due)
        .await
        .unwrap();
    assert_eq!(taken[0].as_ref().map(|taken| taken.due.len()), Some(1));
    // No second node takes it again.
    let again = app
        .store
        .take_trigger_firings(&[take], "test-node", due)
        .await
        .unwrap();
    assert!(again[0].is_none());
    // The node that took it never beat again: whoever settles it (twice, even) starts one run.
    app.scheduler.resume_unsettled(due, None).await.unwrap();
    app.scheduler.resume_unsettled(due, None).await.unwrap();
    let all = firings(&app, &admin, &id).await;
    assert_eq!(outcomes(&all), ["started"]);
    let runs = app
        .send(
            Method::GET,
            "/api/v1/runs?robot=invoices",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(runs.body.as_array().unwrap().len(), 1, "started once");
}

#[tokio::test]
async fn jitter_delays_the_next_firing_by_at_most_its_bound() {
    let (app, admin) = setup().await;
    let id = trigger(
        &app,
        &admin,
        json!({"robot": "invoices", "kind": "interval", "every_seconds": 60,
               "jitter_seconds": 30, "overlap": "allow"}),
    )
    .await;
    let (earliest, latest): (Timestamp, Timestamp) = (
        "2027-01-15T08:02:00Z".parse().unwrap(),
        "2027-01-15T08:02:30Z".parse().unwrap(),
    );
    app.clock.advance(SignedDuration::from_secs(60));
    app.scheduler.fire_due().await.unwrap();
    let shown = app
        .send(
            Method::GET,
            &format!("/api/v1/triggers/{id}"),
            Some(&admin),
            None,
        )
        .await;
    let next: Timestamp = shown.body["next_fire_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(earliest <= next && next <= latest, "{next}");
}

#[tokio::test]
async fn replace_stops_the_active_run_and_starts_a_new_one() {
    let (app, admin) = setup().await;
    let id = trigger(
        &app,
        &admin,
        json!({"robot": "invoices", "kind": "interval", "every_seconds": 60, "overlap": "replace"}),
    )
    .await;
    for _ in 0..2 {
        app.clock.advance(SignedDuration::from_secs(60));
        app.scheduler.fire_due().await.unwrap();
    }
    assert_eq!(
        outcomes(&firings(&app, &admin, &id).await),
        ["started", "started"]
    );
    let runs = app
        .send(
            Method::GET,
            "/api/v1/runs?robot=invoices",
            Some(&admin),
            None,
        )
        .await;
    let states: Vec<&str> = runs
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.len(), 2, "{:?}", runs.body);
    assert!(
        states.contains(&"stopped") && states.contains(&"queued"),
        "{states:?}"
    );
    let robot = app
        .send(Method::GET, "/api/v1/robots/invoices", Some(&admin), None)
        .await;
    assert_eq!(
        robot.body["mode"], "auto",
        "a trigger's stop keeps the robot in auto mode"
    );
}

#[tokio::test]
async fn a_window_starts_the_robot_when_it_opens_and_stops_it_when_it_closes() {
    let (app, admin) = setup().await;
    // Friday 2027-01-15, 08:00 UTC: the window opens at 09:00.
    let id = trigger(
        &app,
        &admin,
        json!({"robot": "invoices", "kind": "window", "days": ["mon", "tue", "wed", "thu", "fri"],
               "open": "09:00", "close": "17:00", "time_zone": "UTC"}),
    )
    .await;
    assert_eq!(next_fire(&app, &admin, &id).await, "2027-01-15T09:00:00Z");
    app.clock.advance(SignedDuration::from_hours(1));
    app.scheduler.fire_due().await.unwrap();
    assert_eq!(next_fire(&app, &admin, &id).await, "2027-01-15T17:00:00Z");
    app.clock.advance(SignedDuration::from_hours(8));
    let admin = app.admin().await;
    app.scheduler.fire_due().await.unwrap();
    let all = firings(&app, &admin, &id).await;
    assert_eq!(outcomes(&all), ["started", "stopped"], "{all:?}");
    assert!(all[1].1.contains("1 runs asked to stop"), "{all:?}");
    assert_eq!(
        next_fire(&app, &admin, &id).await,
        "2027-01-18T09:00:00Z",
        "Monday"
    );
    let robot = app
        .send(Method::GET, "/api/v1/robots/invoices", Some(&admin), None)
        .await;
    assert_eq!(robot.body["mode"], "auto");

    // Created inside a window, it starts the robot at once.
    app.clock.advance(SignedDuration::from_hours(64)); // Monday 09:00
    let admin = app.admin().await;
    let inside = trigger(
        &app,
        &admin,
        json!({"robot": "invoices", "kind": "window", "days": ["mon"], "open": "08:00",
               "close": "12:00", "time_zone": "UTC"}),
    )
    .await;
    assert_eq!(
        next_fire(&app, &admin, &inside).await,
        "2027-01-18T09:00:00Z"
    );
}

/// The trigger's next firing, as the API shows it.
async fn next_fire(app: &TestApp, admin: &str, id: &str) -> Value {
    let path = format!("/api/v1/triggers/{id}");
    app.send(Method::GET, &path, Some(admin), None).await.body["next_fire_at"].clone()
}

/// Adds `items` to `queue` as the admin; each item a JSON object.
async fn add_items(app: &TestApp, admin: &str, queue: &str, items: Value) {
    let path = format!("/api/v1/queues/{queue}/items");
    let added = app
        .send(Method::POST, &path, Some(admin), Some(items))
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{:?}", added.body);
}

/// The states of the robot's runs.
async fn run_states(app: &TestApp, admin: &str) -> Vec<String> {
    let runs = app
        .send(
            Method::GET,
            "/api/v1/runs?robot=invoices",
            Some(admin),
            None,
        )
        .await;
    runs.body
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["state"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_queue_trigger_starts_runs_for_ready_items_up_to_its_limit() {
    let (app, admin) = setup().await;
    let queue = json!({"name": "inbox"});
    let created = app
        .send(Method::POST, "/api/v1/queues", Some(&admin), Some(queue))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = trigger(
        &app,
        &admin,
        json!({"robot": "invoices", "kind": "queue", "queue": "inbox", "min_items": 2,
               "max_runs": 3, "args": ["--batch"], "env": {"SOURCE": "inbox"}}),
    )
    .await;
    // An empty queue: nothing starts, and the trigger sleeps until items come.
    app.scheduler.fire_due().await.unwrap();
    assert!(run_states(&app, &admin).await.is_empty());
    assert_eq!(next_fire(&app, &admin, &id).await, Value::Null);
    let preview = app
        .send(
            Method::GET,
            &format!("/api/v1/triggers/{id}/preview"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(preview.status, StatusCode::UNPROCESSABLE_ENTITY);

    // One item is fewer than min_items; the second makes a run; five make two.
    add_items(&app, &admin, "inbox", json!({"payload": {"n": 1}})).await;
    app.scheduler.fire_due().await.unwrap();
    assert!(run_states(&app, &admin).await.is_empty());
    add_items(
        &app,
        &admin,
        "inbox",
        json!([{"payload": {"n": 2}}, {"payload": {"n": 3}}]),
    )
    .await;
    assert_eq!(
        next_fire(&app, &admin, &id).await,
        "2027-01-15T08:00:00Z",
        "woken by the add"
    );
    app.scheduler.fire_due().await.unwrap();
    assert_eq!(run_states(&app, &admin).await, ["queued"]);
    add_items(
        &app,
        &admin,
        "inbox",
        json!([{"payload": {"n": 4}}, {"payload": {"n": 5}}]),
    )
    .await;
    app.scheduler.fire_due().await.unwrap();
    assert_eq!(run_states(&app, &admin).await, ["queued", "queued"]);
    // Plenty of items, but never more than max_runs at a time.
    let many: Vec<Value> = (6..30).map(|n| json!({"payload": {"n": n}})).collect();
    add_items(&app, &admin, "inbox", Value::Array(many)).await;
    app.scheduler.fire_due().await.unwrap();
    app.scheduler.fire_due().await.unwrap();
    assert_eq!(run_states(&app, &admin).await.len(), 3);
    let all = firings(&app, &admin, &id).await;
    assert_eq!(outcomes(&all), ["started", "started", "started"], "{all:?}");

    // Runs carry the trigger's arguments and environment.
    let runs = app
        .send(
            Method::GET,
            "/api/v1/runs?robot=invoices",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(runs.body[0]["args"], json!(["--batch"]));
    assert_eq!(runs.body[0]["env"], json!({"SOURCE": "inbox"}));

    // A run that ends makes room: the trigger looks again and starts another.
    let run_id = runs.body[0]["id"].as_str().unwrap().to_owned();
    let stopped = app
        .send(
            Method::POST,
            &format!("/api/v1/runs/{run_id}/kill"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(stopped.status, StatusCode::OK, "{:?}", stopped.body);
    app.scheduler.handle_run_ends().await.unwrap();
    // The operator's action put the robot in manual mode: the trigger leaves it alone, and
    // says so once, however often it looks.
    app.scheduler.fire_due().await.unwrap();
    add_items(&app, &admin, "inbox", json!({"payload": {"n": 99}})).await;
    app.scheduler.fire_due().await.unwrap();
    let all = firings(&app, &admin, &id).await;
    assert_eq!(
        outcomes(&all),
        ["started", "started", "started", "skipped"],
        "{all:?}"
    );
    assert!(all[3].1.contains("manual mode"), "{all:?}");
    let auto = app
        .send(
            Method::POST,
            "/api/v1/robots/invoices/auto",
            Some(&admin),
            None,
        )
        .await;
    assert!(auto.status.is_success(), "{:?}", auto.body);
    add_items(&app, &admin, "inbox", json!({"payload": {"n": 100}})).await;
    app.scheduler.fire_due().await.unwrap();
    let states = run_states(&app, &admin).await;
    assert_eq!(
        states.iter().filter(|state| *state == "queued").count(),
        3,
        "{states:?}"
    );
}

#[tokio::test]
async fn a_queue_trigger_waits_for_postponed_items() {
    let (app, admin) = setup().await;
    let queue = json!({"name": "inbox"});
    app.send(Method::POST, "/api/v1/queues", Some(&admin), Some(queue))
        .await;
    let id = trigger(
        &app,
        &admin,
        json!({"robot": "invoices", "kind": "queue", "queue": "inbox"}),
    )
    .await;
    add_items(
        &app,
        &admin,
        "inbox",
        json!({"payload": {}, "postpone_until": "2027-01-15T09:30:00Z"}),
    )
    .await;
    app.scheduler.fire_due().await.unwrap();
    assert!(run_states(&app, &admin).await.is_empty());
    assert_eq!(next_fire(&app, &admin, &id).await, "2027-01-15T09:30:00Z");
    app.clock.advance(SignedDuration::from_mins(90));
    app.scheduler.fire_due().await.unwrap();
    assert_eq!(run_states(&app, &admin).await, ["queued"]);
}

#[tokio::test]
async fn a_dry_run_trigger_records_firings_without_starting_runs() {
    let (app, admin) = setup().await;
    let id = trigger(
        &app,
        &admin,
        json!({"robot": "invoices", "kind": "interval", "every_seconds": 60, "dry_run": true}),
    )
    .await;
    for _ in 0..3 {
        app.clock.advance(SignedDuration::from_secs(60));
        app.scheduler.fire_due().await.unwrap();
    }
    let all = firings(&app, &admin, &id).await;
    assert_eq!(outcomes(&all), ["dry_run", "dry_run", "dry_run"]);
    assert!(run_states(&app, &admin).await.is_empty());
}

#[tokio::test]
async fn many_due_triggers_fire_in_batches_each_once() {
    let (app, admin) = setup().await;
    let mut ids = Vec::new();
    for _ in 0..1_200 {
        let spec = json!({"robot": "invoices", "kind": "once", "at": "2027-01-15T08:00:30Z",
                          "dry_run": true});
        ids.push(trigger(&app, &admin, spec).await);
    }
    app.clock.advance(SignedDuration::from_secs(30));
    assert_eq!(app.scheduler.fire_due().await.unwrap(), 1_200);
    assert_eq!(app.scheduler.fire_due().await.unwrap(), 0);
    for id in [&ids[0], &ids[599], &ids[1_199]] {
        assert_eq!(outcomes(&firings(&app, &admin, id).await), ["dry_run"]);
    }
}

#[tokio::test]
async fn a_limit_outside_its_range_is_refused() {
    let (app, admin) = setup().await;
    let id = trigger(
        &app,
        &admin,
        json!({"robot": "invoices", "kind": "interval", "every_seconds": 60}),
    )
    .await;
    for (path, max) in [
        (format!("/api/v1/triggers/{id}/firings"), 1000),
        ("/api/v1/runs".to_owned(), 1000),
        ("/api/v1/audit".to_owned(), 1000),
        ("/api/v1/logs".to_owned(), 1000),
    ] {
        for limit in [0, max + 1] {
            let answer = app
                .send(
                    Method::GET,
                    &format!("{path}?limit={limit}"),
                    Some(&admin),
                    None,
                )
                .await;
            assert_eq!(
                (answer.status, answer.body["field"].as_str()),
                (StatusCode::UNPROCESSABLE_ENTITY, Some("limit")),
                "{path}?limit={limit}: {:?}",
                answer.body
            );
        }
        let fine = app
            .send(
                Method::GET,
                &format!("{path}?limit={max}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(fine.status, StatusCode::OK, "{path}");
    }
}
