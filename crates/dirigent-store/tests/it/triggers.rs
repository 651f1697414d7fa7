//! Triggers on both backends: a due firing is taken once, however many nodes try at once.

use dirigent_store::TriggerRecord;
use jiff::Timestamp;

use crate::backends::store_test;

store_test!(a_due_firing_is_taken_by_one_node_only, |store| {
    let due = Timestamp::from_second(1_800_000_000).unwrap();
    let next = Timestamp::from_second(1_800_000_060).unwrap();
    store
        .insert_robot(
            &dirigent_domain::robot::RobotDraft {
                name: "r".to_owned(),
                argv: vec!["true".to_owned()],
                ..Default::default()
            }
            .validate()
            .unwrap(),
            due,
        )
        .await
        .unwrap();
    store
        .insert_trigger(&TriggerRecord {
            id: "trg_1".to_owned(),
            robot: "r".to_owned(),
            calendar: None,
            spec: "{}".to_owned(),
            enabled: true,
            next_fire_at: Some(due),
            disabled_reason: None,
            created_at: due,
            updated_at: due,
        })
        .await
        .unwrap();
    assert_eq!(store.next_trigger_due().await.unwrap(), Some(due));
    assert_eq!(store.due_triggers(due, 10).await.unwrap().len(), 1);

    // Eight "nodes" try to take the same firing at once.
    let mut attempts = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        attempts.push(tokio::spawn(async move {
            store
                .take_trigger_firing("trg_1", due, Some(next), &[(due, "due", None)], due)
                .await
                .unwrap()
        }));
    }
    let mut taken = 0;
    for attempt in attempts {
        if attempt.await.unwrap().is_some() {
            taken += 1;
        }
    }
    assert_eq!(taken, 1);
    let firings = store.trigger_firings("trg_1", 10).await.unwrap();
    assert_eq!(firings.len(), 1);
    assert_eq!(store.unsettled_firings().await.unwrap().len(), 1);
    store
        .settle_firing(firings[0].id, "started", None, Some("run_x"), due)
        .await
        .unwrap();
    assert!(store.unsettled_firings().await.unwrap().is_empty());
    assert_eq!(store.next_trigger_due().await.unwrap(), Some(next));
});
