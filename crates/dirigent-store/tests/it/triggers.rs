//! Triggers on both backends: a due firing is taken once, however many nodes try at once;
//! queue triggers wake when told; failed runs in a row are counted and disable a trigger.

use dirigent_store::{FiringTake, NewFiring, Store, TriggerRecord};
use jiff::{SignedDuration, Timestamp};

use crate::backends::store_test;

async fn robot_and_triggers(store: &Store, at: Timestamp, triggers: &[(&str, Option<&str>)]) {
    store
        .insert_robot(
            &dirigent_domain::robot::RobotDraft {
                name: "r".to_owned(),
                argv: vec!["true".to_owned()],
                ..Default::default()
            }
            .validate()
            .unwrap(),
            at,
        )
        .await
        .unwrap();
    for (id, queue) in triggers {
        store
            .insert_trigger(&TriggerRecord {
                id: (*id).to_owned(),
                robot: "r".to_owned(),
                calendar: None,
                queue: queue.map(str::to_owned),
                spec: "{}".to_owned(),
                enabled: true,
                next_fire_at: queue.is_none().then_some(at),
                disabled_reason: None,
                consecutive_failures: 0,
                created_at: at,
                updated_at: at,
            })
            .await
            .unwrap();
    }
}

fn take(id: &str, due: Timestamp, next: Timestamp) -> FiringTake {
    FiringTake {
        trigger_id: id.to_owned(),
        due_at: due,
        next: Some(next),
        firings: vec![NewFiring {
            due_at: due,
            outcome: "due",
            reason: None,
        }],
    }
}

store_test!(a_due_firing_is_taken_by_one_node_only, |store| {
    let due = Timestamp::from_second(1_800_000_000).unwrap();
    let next = Timestamp::from_second(1_800_000_060).unwrap();
    let ids = ["trg_1", "trg_2", "trg_3", "trg_4"];
    let triggers: Vec<_> = ids.iter().map(|id| (*id, None)).collect();
    robot_and_triggers(&store, due, &triggers).await;
    assert_eq!(store.next_trigger_due().await.unwrap(), Some(due));
    assert_eq!(store.due_triggers(due, 10).await.unwrap().len(), 4);

    // Eight "nodes" take overlapping batches of the same firings at once.
    let mut attempts = Vec::new();
    for node in 0..8 {
        let store = store.clone();
        let batch: Vec<FiringTake> = (0..3)
            .map(|k| take(ids[(node + k) % ids.len()], due, next))
            .collect();
        attempts.push(tokio::spawn(async move {
            let node = format!("node-{node}");
            store
                .node_heartbeat(&node, "0.1.0", due, due)
                .await
                .unwrap();
            let answers = store
                .take_trigger_firings(&batch, &node, due)
                .await
                .unwrap();
            batch
                .iter()
                .zip(answers)
                .filter_map(|(take, answer)| {
                    answer.map(|firings| (take.trigger_id.clone(), firings))
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut taken = Vec::new();
    for attempt in attempts {
        for (id, firings) in attempt.await.unwrap() {
            assert_eq!(firings.recorded, 1);
            assert_eq!(firings.due.len(), 1);
            assert_eq!(firings.due[0].trigger_id, id);
            taken.push(id);
        }
    }
    taken.sort();
    assert_eq!(taken, ids);
    for id in ids {
        assert_eq!(store.trigger_firings(id, 10).await.unwrap().len(), 1);
    }
    let alive_after = due - SignedDuration::from_secs(10);
    assert!(
        store
            .unsettled_firings(alive_after, None)
            .await
            .unwrap()
            .is_empty(),
        "a live node's firings are its own"
    );
    let dead_after = due + SignedDuration::from_secs(1);
    let unsettled = store.unsettled_firings(dead_after, None).await.unwrap();
    assert_eq!(unsettled.len(), 4, "every node stopped beating");
    store
        .settle_firing(unsettled[0].id, "started", None, Some("run_x"), due)
        .await
        .unwrap();
    store
        .settle_firing(unsettled[0].id, "skipped", None, None, due)
        .await
        .unwrap();
    assert_eq!(
        store
            .trigger_firings(&unsettled[0].trigger_id, 10)
            .await
            .unwrap()[0]
            .outcome,
        "started",
        "a firing is settled once"
    );
    assert_eq!(
        store
            .unsettled_firings(dead_after, None)
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(store.next_trigger_due().await.unwrap(), Some(next));
    assert_eq!(
        store.trigger_of_run("run_x").await.unwrap().as_deref(),
        Some(unsettled[0].trigger_id.as_str())
    );
});

store_test!(firings_without_runs_are_recorded_and_counted, |store| {
    let due = Timestamp::from_second(1_800_000_000).unwrap();
    let next = due + SignedDuration::from_secs(60);
    robot_and_triggers(&store, due, &[("trg_a", None), ("trg_b", None)]).await;
    let mut quiet = take("trg_a", due, next);
    quiet.firings = vec![
        NewFiring {
            due_at: due - SignedDuration::from_secs(60),
            outcome: "missed",
            reason: Some("down".to_owned()),
        },
        NewFiring {
            due_at: due,
            outcome: "dry_run",
            reason: None,
        },
    ];
    // trg_b is not due at this time any more: it is not taken, and neither is it recorded.
    let stale = take("trg_b", next, next);
    let answers = store
        .take_trigger_firings(&[quiet, stale], "node-a", due)
        .await
        .unwrap();
    let quiet = answers[0].as_ref().unwrap();
    assert_eq!((quiet.recorded, quiet.due.len()), (2, 0));
    assert!(answers[1].is_none());
    let recorded = store.trigger_firings("trg_a", 10).await.unwrap();
    let mut outcomes: Vec<&str> = recorded
        .iter()
        .map(|firing| firing.outcome.as_str())
        .collect();
    outcomes.sort_unstable();
    assert_eq!(outcomes, ["dry_run", "missed"]);
    assert!(store.trigger_firings("trg_b", 10).await.unwrap().is_empty());
    assert!(
        store
            .unsettled_firings(due, Some("node-a"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.next_trigger_due().await.unwrap(), Some(due));
});

store_test!(queue_triggers_wake_and_failures_disable, |store| {
    let now = Timestamp::from_second(1_800_000_000).unwrap();
    robot_and_triggers(
        &store,
        now,
        &[("trg_q", Some("inbox")), ("trg_o", Some("other"))],
    )
    .await;
    // Dormant until their queue fills.
    assert_eq!(store.next_trigger_due().await.unwrap(), None);
    assert_eq!(
        store
            .wake_queue_triggers(Some("inbox"), None, now)
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.next_trigger_due().await.unwrap(), Some(now));
    // Due already: waking again changes nothing (its due time stays).
    let later = now + SignedDuration::from_secs(5);
    assert_eq!(
        store
            .wake_queue_triggers(Some("inbox"), None, later)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .wake_queue_triggers(None, Some("r"), later)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .wake_queue_triggers(None, Some("nobody"), later)
            .await
            .unwrap(),
        0
    );

    // Readiness: items ready now, capped; the next postponed one.
    store
        .create_queue(
            "inbox",
            &dirigent_domain::queue::QueueSettings::default(),
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        store.queue_readiness("inbox", now, 10).await.unwrap(),
        (0, None)
    );
    assert_eq!(
        store.queue_readiness("missing", now, 10).await.unwrap(),
        (0, None)
    );

    // Failures in a row count up; a success starts again from zero.
    assert_eq!(
        store.count_trigger_run("trg_q", true).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        store.count_trigger_run("trg_q", true).await.unwrap(),
        Some(2)
    );
    assert_eq!(
        store.count_trigger_run("trg_q", false).await.unwrap(),
        Some(0)
    );
    assert_eq!(store.count_trigger_run("gone", true).await.unwrap(), None);
    assert!(
        store
            .disable_trigger("trg_q", "too many failures", Some("run_9"), now)
            .await
            .unwrap()
    );
    assert!(
        !store
            .disable_trigger("trg_q", "again", None, now)
            .await
            .unwrap()
    );
    let trigger = store.trigger("trg_q").await.unwrap();
    assert!(!trigger.enabled);
    assert_eq!(
        trigger.disabled_reason.as_deref(),
        Some("too many failures")
    );
    let firings = store.trigger_firings("trg_q", 10).await.unwrap();
    assert_eq!(firings.len(), 1);
    assert_eq!(firings[0].outcome, "disabled");
    assert_eq!(firings[0].run_id.as_deref(), Some("run_9"));
    // A disabled queue trigger is not woken.
    assert_eq!(
        store
            .wake_queue_triggers(Some("inbox"), None, later)
            .await
            .unwrap(),
        0
    );
});
