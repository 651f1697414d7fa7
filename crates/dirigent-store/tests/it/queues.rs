//! Work-item queues on both backends: claim order, leases, retries, references, filters,
//! statistics, and many consumers at once.

use dirigent_domain::queue::{ErrorKind, ItemStatus, Priority, QueueSettings};
use dirigent_store::{
    Claimer, Completion, ItemFilter, NewItem, QueueAnswer, QueueOp, QueueOpError, Store, StoreError,
};
use jiff::{SignedDuration, Timestamp};

use crate::backends::store_test;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

fn item(payload: &str) -> NewItem {
    NewItem {
        payload: payload.to_owned(),
        reference: None,
        priority: Priority::Normal,
        deadline: None,
        postpone_until: None,
    }
}

fn claimer() -> Claimer {
    Claimer {
        run_id: Some("run_1".to_owned()),
        name: "run:run_1".to_owned(),
    }
}

/// Applies one operation and answers its outcome.
async fn one(store: &Store, op: QueueOp, now: Timestamp) -> Result<QueueAnswer, QueueOpError> {
    let mut session = store.write_session().await.unwrap();
    store
        .apply_queue_ops(&mut session, &[op], &[], |_, _| None, now)
        .await
        .unwrap()
        .answers
        .pop()
        .unwrap()
}

async fn add(store: &Store, queue: &str, items: Vec<NewItem>, now: Timestamp) -> Vec<i64> {
    match one(
        store,
        QueueOp::Add {
            queue: queue.to_owned(),
            items,
        },
        now,
    )
    .await
    {
        Ok(QueueAnswer::Added(ids)) => ids,
        other => panic!("add: {other:?}"),
    }
}

/// Claims with lease token digest `lease`; answers the item's id and payload, if any.
async fn claim(store: &Store, queue: &str, lease: &str, now: Timestamp) -> Option<(i64, String)> {
    match one(
        store,
        QueueOp::Claim {
            queue: queue.to_owned(),
            lease_digest: lease.to_owned(),
            claimer: claimer(),
            count: 1,
        },
        now,
    )
    .await
    {
        Ok(QueueAnswer::Claimed(found)) => {
            found.into_iter().next().map(|item| (item.id, item.payload))
        }
        other => panic!("claim: {other:?}"),
    }
}

fn complete(queue: &str, item: i64, lease: &str) -> QueueOp {
    QueueOp::Complete {
        queue: queue.to_owned(),
        item,
        lease_digest: lease.to_owned(),
        output: Some(r#"{"ok":true}"#.to_owned()),
    }
}

fn fail(queue: &str, item: i64, lease: &str, kind: ErrorKind) -> QueueOp {
    QueueOp::Fail {
        queue: queue.to_owned(),
        item,
        lease_digest: lease.to_owned(),
        kind,
        message: "it broke".to_owned(),
    }
}

store_test!(
    items_are_claimed_by_deadline_then_priority_then_arrival,
    |store| {
        store
            .create_queue("q", &QueueSettings::default(), at(0))
            .await
            .unwrap();
        let with =
            |payload: &str, priority, deadline: Option<i64>, postpone: Option<i64>| NewItem {
                payload: format!("\"{payload}\""),
                reference: None,
                priority,
                deadline: deadline.map(at),
                postpone_until: postpone.map(at),
            };
        add(
            &store,
            "q",
            vec![
                with("normal", Priority::Normal, None, None),
                with("high", Priority::High, None, None),
                with("low-deadline-late", Priority::Low, Some(900), None),
                with("high-postponed", Priority::High, None, Some(100)),
                with("low-deadline-early", Priority::Low, Some(500), None),
                with("high-2", Priority::High, None, None),
            ],
            at(0),
        )
        .await;
        let mut order = Vec::new();
        while let Some((_, payload)) = claim(&store, "q", "l", at(10)).await {
            order.push(payload);
        }
        assert_eq!(
            order,
            [
                "\"low-deadline-early\"",
                "\"low-deadline-late\"",
                "\"high\"",
                "\"high-2\"",
                "\"normal\""
            ]
        );
        // The postponed item waits for its time.
        assert_eq!(
            claim(&store, "q", "l", at(100)).await.unwrap().1,
            "\"high-postponed\""
        );
    }
);

store_test!(
    a_claim_takes_several_items_under_one_lease_and_they_complete_together,
    |store| {
        store
            .create_queue("q", &QueueSettings::default(), at(0))
            .await
            .unwrap();
        let mut urgent = item("urgent");
        urgent.priority = Priority::High;
        let ids = add(
            &store,
            "q",
            vec![item("1"), item("2"), urgent, item("3")],
            at(0),
        )
        .await;
        let claimed = one(
            &store,
            QueueOp::Claim {
                queue: "q".to_owned(),
                lease_digest: "batch".to_owned(),
                claimer: claimer(),
                count: 3,
            },
            at(1),
        )
        .await;
        let Ok(QueueAnswer::Claimed(claimed)) = claimed else {
            panic!("{claimed:?}")
        };
        let claimed: Vec<i64> = claimed.iter().map(|item| item.id).collect();
        assert_eq!(claimed, [ids[2], ids[0], ids[1]], "claim order");
        let completion = |item: i64, lease: &str| Completion {
            item,
            lease_digest: lease.to_owned(),
            output: Some("[1]".to_owned()),
        };
        let done = one(
            &store,
            QueueOp::CompleteMany {
                queue: "q".to_owned(),
                items: vec![
                    completion(ids[2], "batch"),
                    completion(ids[0], "wrong"),
                    completion(ids[3], "batch"),
                    completion(ids[1], "batch"),
                ],
            },
            at(2),
        )
        .await;
        assert_eq!(
            done,
            Ok(QueueAnswer::Completed(vec![
                Ok(()),
                Err(QueueOpError::StaleLease),
                Err(QueueOpError::WrongStatus(ItemStatus::New)),
                Ok(()),
            ]))
        );
        let status = |id| {
            let store = store.clone();
            async move { store.queue_item("q", id).await.unwrap().status }
        };
        assert_eq!(status(ids[2]).await, ItemStatus::Successful);
        assert_eq!(status(ids[0]).await, ItemStatus::InProgress);
        assert_eq!(status(ids[1]).await, ItemStatus::Successful);
        // The last item is the only one left; a claim of many takes what there is.
        let rest = one(
            &store,
            QueueOp::Claim {
                queue: "q".to_owned(),
                lease_digest: "next".to_owned(),
                claimer: claimer(),
                count: 10,
            },
            at(3),
        )
        .await;
        let Ok(QueueAnswer::Claimed(rest)) = rest else {
            panic!("{rest:?}")
        };
        assert_eq!(
            rest.iter().map(|item| item.id).collect::<Vec<_>>(),
            [ids[3]]
        );
    }
);

store_test!(
    the_claims_of_one_batch_share_the_ready_items_out_in_order,
    |store| {
        for queue in ["q", "r"] {
            store
                .create_queue(queue, &QueueSettings::default(), at(0))
                .await
                .unwrap();
        }
        let mut urgent = item("urgent");
        urgent.priority = Priority::High;
        let ids = add(
            &store,
            "q",
            vec![item("1"), item("2"), item("3"), urgent, item("4")],
            at(0),
        )
        .await;
        let other = add(&store, "r", vec![item("r1")], at(0)).await;
        let claim = |queue: &str, lease: &str, count| QueueOp::Claim {
            queue: queue.to_owned(),
            lease_digest: lease.to_owned(),
            claimer: claimer(),
            count,
        };
        // One session holds the write connection for this batch and the next.
        let mut session = store.write_session().await.unwrap();
        let applied = store
            .apply_queue_ops(
                &mut session,
                &[
                    claim("q", "a", 2),
                    claim("none", "x", 1),
                    claim("r", "r", 3),
                    claim("q", "b", 1),
                    claim("q", "c", 5),
                    claim("q", "d", 1),
                ],
                &[],
                |_, _| None,
                at(1),
            )
            .await
            .unwrap();
        let got: Vec<Result<Vec<(i64, String)>, QueueOpError>> = applied
            .answers
            .into_iter()
            .map(|answer| match answer {
                Ok(QueueAnswer::Claimed(items)) => Ok(items
                    .into_iter()
                    .map(|item| (item.id, item.payload))
                    .collect()),
                Ok(other) => panic!("{other:?}"),
                Err(err) => Err(err),
            })
            .collect();
        let none_left = store
            .apply_queue_ops(&mut session, &[claim("q", "e", 1)], &[], |_, _| None, at(1))
            .await
            .unwrap();
        assert!(
            matches!(&none_left.answers[..], [Ok(QueueAnswer::Claimed(items))] if items.is_empty())
        );
        drop(session);
        let held = |id: i64, payload: &str| (id, payload.to_owned());
        assert_eq!(
            got,
            [
                Ok(vec![held(ids[3], "urgent"), held(ids[0], "1")]),
                Err(QueueOpError::QueueNotFound),
                Ok(vec![held(other[0], "r1")]),
                Ok(vec![held(ids[1], "2")]),
                Ok(vec![held(ids[2], "3"), held(ids[4], "4")]),
                Ok(vec![]),
            ]
        );
        // Each holds its items under its own lease.
        let extend = |item: i64, lease: &str| QueueOp::Extend {
            queue: "q".to_owned(),
            item,
            lease_digest: lease.to_owned(),
        };
        assert!(one(&store, extend(ids[1], "b"), at(2)).await.is_ok());
        assert_eq!(
            one(&store, extend(ids[1], "a"), at(2)).await,
            Err(QueueOpError::StaleLease)
        );
        let attempts = store.item_attempts(ids[2]).await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].claimed_by, "run:run_1");
        assert_eq!(attempts[0].run_id.as_deref(), Some("run_1"));
    }
);

store_test!(
    a_lease_token_guards_every_change_of_a_claimed_item,
    |store| {
        store
            .create_queue("q", &QueueSettings::default(), at(0))
            .await
            .unwrap();
        let ids = add(&store, "q", vec![item("1")], at(0)).await;
        let (id, _) = claim(&store, "q", "lease-a", at(1)).await.unwrap();
        assert_eq!(id, ids[0]);
        assert_eq!(
            one(&store, complete("q", id, "lease-b"), at(2)).await,
            Err(QueueOpError::StaleLease)
        );
        assert_eq!(
            one(&store, complete("q", 999_999, "lease-a"), at(2)).await,
            Err(QueueOpError::ItemNotFound)
        );
        assert_eq!(
            one(&store, complete("other", id, "lease-a"), at(2)).await,
            Err(QueueOpError::QueueNotFound)
        );
        let extended = one(
            &store,
            QueueOp::Extend {
                queue: "q".to_owned(),
                item: id,
                lease_digest: "lease-a".to_owned(),
            },
            at(200),
        )
        .await;
        let Ok(QueueAnswer::Item(extended)) = extended else {
            panic!("{extended:?}")
        };
        assert_eq!(extended.lease_expires_at, Some(at(500)));
        let Ok(QueueAnswer::Item(done)) = one(&store, complete("q", id, "lease-a"), at(400)).await
        else {
            panic!()
        };
        assert_eq!(done.status, ItemStatus::Successful);
        assert_eq!(done.output.as_deref(), Some(r#"{"ok":true}"#));
        assert_eq!(done.finished_at, Some(at(400)));
        // Completing twice is refused: the item is no longer held.
        assert_eq!(
            one(&store, complete("q", id, "lease-a"), at(401)).await,
            Err(QueueOpError::WrongStatus(ItemStatus::Successful))
        );
        let attempts = store.item_attempts(id).await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].outcome.as_deref(), Some("successful"));
        assert_eq!(attempts[0].run_id.as_deref(), Some("run_1"));
    }
);

store_test!(
    application_errors_retry_with_backoff_and_business_errors_are_final,
    |store| {
        let settings = QueueSettings {
            max_attempts: 2,
            retry_delay_seconds: 10,
            ..QueueSettings::default()
        };
        store.create_queue("q", &settings, at(0)).await.unwrap();
        let ids = add(&store, "q", vec![item("1"), item("2")], at(0)).await;

        let (first, _) = claim(&store, "q", "a", at(0)).await.unwrap();
        assert_eq!(first, ids[0]);
        let Ok(QueueAnswer::Item(retried)) =
            one(&store, fail("q", first, "a", ErrorKind::Application), at(1)).await
        else {
            panic!()
        };
        assert_eq!(retried.status, ItemStatus::New);
        assert_eq!(retried.available_at, at(11));
        assert_eq!(retried.error_kind.as_deref(), Some("application"));

        let (second, _) = claim(&store, "q", "b", at(2)).await.unwrap();
        assert_eq!(second, ids[1], "the failed item waits for its retry delay");
        let Ok(QueueAnswer::Item(final_business)) =
            one(&store, fail("q", second, "b", ErrorKind::Business), at(3)).await
        else {
            panic!()
        };
        assert_eq!(final_business.status, ItemStatus::Failed);

        assert_eq!(claim(&store, "q", "c", at(10)).await, None);
        let (again, _) = claim(&store, "q", "c", at(11)).await.unwrap();
        assert_eq!(again, first);
        let Ok(QueueAnswer::Item(exhausted)) = one(
            &store,
            fail("q", first, "c", ErrorKind::Application),
            at(12),
        )
        .await
        else {
            panic!()
        };
        assert_eq!(exhausted.status, ItemStatus::Failed);
        assert_eq!(exhausted.attempts, 2);
        let outcomes: Vec<Option<String>> = store
            .item_attempts(first)
            .await
            .unwrap()
            .into_iter()
            .map(|attempt| attempt.outcome)
            .collect();
        assert_eq!(
            outcomes,
            [Some("retried".to_owned()), Some("failed".to_owned())]
        );

        // An operator puts it back, attempts reset.
        let Ok(QueueAnswer::Item(requeued)) = one(
            &store,
            QueueOp::Requeue {
                queue: "q".to_owned(),
                item: first,
            },
            at(20),
        )
        .await
        else {
            panic!()
        };
        assert_eq!((requeued.status, requeued.attempts), (ItemStatus::New, 0));
    }
);

store_test!(expired_leases_and_lost_runs_give_items_back, |store| {
    let settings = QueueSettings {
        max_attempts: 2,
        lease_seconds: 60,
        ..QueueSettings::default()
    };
    store.create_queue("q", &settings, at(0)).await.unwrap();
    let ids = add(&store, "q", vec![item("1"), item("2")], at(0)).await;
    let (first, _) = claim(&store, "q", "a", at(0)).await.unwrap();
    assert_eq!(store.next_lease_expiry().await.unwrap(), Some(at(60)));
    assert_eq!(store.expire_leases(at(59)).await.unwrap(), 0);
    assert_eq!(store.expire_leases(at(60)).await.unwrap(), 1);
    assert_eq!(store.next_lease_expiry().await.unwrap(), None);
    // The holder's late completion is refused.
    assert_eq!(
        one(&store, complete("q", first, "a"), at(61)).await,
        Err(QueueOpError::WrongStatus(ItemStatus::New))
    );
    let (again, _) = claim(&store, "q", "b", at(61)).await.unwrap();
    assert_eq!(again, first);
    // Its run is lost: after the last attempt the item is abandoned, at once.
    assert_eq!(
        store
            .release_run_items("run_1", true, at(62))
            .await
            .unwrap(),
        1
    );
    let item = store.queue_item("q", first).await.unwrap();
    assert_eq!(item.status, ItemStatus::Abandoned);
    assert_eq!(item.error_message.as_deref(), Some("its run was lost"));
    let attempts = store.item_attempts(first).await.unwrap();
    assert_eq!(attempts[0].outcome.as_deref(), Some("lease_expired"));
    assert_eq!(attempts[1].outcome.as_deref(), Some("run_lost"));
    assert_eq!(
        store.queue_item("q", ids[1]).await.unwrap().status,
        ItemStatus::New
    );
});

store_test!(
    unique_references_and_bulk_adds_are_all_or_nothing,
    |store| {
        let settings = QueueSettings {
            enforce_unique_reference: true,
            max_payload_bytes: 16,
            ..QueueSettings::default()
        };
        store.create_queue("q", &settings, at(0)).await.unwrap();
        let referenced = |reference: &str| NewItem {
            reference: Some(reference.to_owned()),
            ..item("{}")
        };
        let ids = add(&store, "q", vec![referenced("inv-1")], at(0)).await;
        let refused = one(
            &store,
            QueueOp::Add {
                queue: "q".to_owned(),
                items: vec![referenced("inv-2"), referenced("inv-1")],
            },
            at(1),
        )
        .await;
        assert_eq!(
            refused,
            Err(QueueOpError::DuplicateReference {
                reference: "inv-1".to_owned(),
                existing: ids[0]
            })
        );
        let repeated = one(
            &store,
            QueueOp::Add {
                queue: "q".to_owned(),
                items: vec![referenced("inv-3"), referenced("inv-3")],
            },
            at(1),
        )
        .await;
        assert_eq!(
            repeated,
            Err(QueueOpError::RepeatedReference("inv-3".to_owned()))
        );
        let too_big = one(
            &store,
            QueueOp::Add {
                queue: "q".to_owned(),
                items: vec![item("[1,2,3,4,5,6,7,8,9]")],
            },
            at(1),
        )
        .await;
        assert_eq!(
            too_big,
            Err(QueueOpError::PayloadTooLarge {
                index: 0,
                limit: 16
            })
        );
        let all = store
            .queue_items("q", &ItemFilter::default(), None, 100)
            .await
            .unwrap();
        assert_eq!(all.len(), 1, "nothing of the refused adds was stored");

        // Deleting frees the reference.
        one(
            &store,
            QueueOp::Delete {
                queue: "q".to_owned(),
                item: ids[0],
            },
            at(2),
        )
        .await
        .unwrap();
        add(&store, "q", vec![referenced("inv-1")], at(3)).await;
    }
);

store_test!(filters_find_items_and_bulk_operations_use_them, |store| {
    store
        .create_queue("q", &QueueSettings::default(), at(0))
        .await
        .unwrap();
    let items: Vec<NewItem> = (0..10)
        .map(|n| NewItem {
            reference: Some(format!("ref-{}", n % 2)),
            ..item(&format!(r#"{{"customer": {{"id": {n}, "name": "c{n}"}}}}"#))
        })
        .collect();
    let ids = add(&store, "q", items, at(0)).await;
    assert_eq!(ids.len(), 10);
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    let by_field = |path: &[&str], value: &str| ItemFilter {
        payload_field: Some((
            path.iter().map(|key| (*key).to_owned()).collect(),
            value.to_owned(),
        )),
        ..ItemFilter::default()
    };
    let found = store
        .queue_items("q", &by_field(&["customer", "id"], "7"), None, 100)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, ids[7]);
    let found = store
        .queue_items("q", &by_field(&["customer", "name"], "c3"), None, 100)
        .await
        .unwrap();
    assert_eq!(found[0].id, ids[3]);
    let odd = ItemFilter {
        reference: Some("ref-1".to_owned()),
        ..ItemFilter::default()
    };
    let page = store.queue_items("q", &odd, None, 2).await.unwrap();
    let next = store
        .queue_items("q", &odd, Some(page[1].id), 100)
        .await
        .unwrap();
    assert_eq!(page.len() + next.len(), 5);

    assert_eq!(store.delete_items("q", &odd, at(1)).await.unwrap(), 5);
    let stats = store
        .queue_stats(store.queue("q").await.unwrap().id, at(1))
        .await
        .unwrap();
    assert_eq!(stats.counts[&ItemStatus::Deleted], 5);
    assert_eq!(stats.counts[&ItemStatus::New], 5);
    assert_eq!(stats.oldest_new_at, Some(at(0)));
    assert_eq!(store.requeue_items("q", &odd, at(2)).await.unwrap(), 5);

    // Processing times and throughput.
    for n in 0..3 {
        let (id, _) = claim(&store, "q", "l", at(10)).await.unwrap();
        one(&store, complete("q", id, "l"), at(12 + n))
            .await
            .unwrap();
    }
    let stats = store
        .queue_stats(store.queue("q").await.unwrap().id, at(20))
        .await
        .unwrap();
    assert_eq!(stats.successful_last_hour, 3);
    assert_eq!(stats.average_processing, Some(SignedDuration::from_secs(3)));
    let finished = ItemFilter {
        status: Some(ItemStatus::Successful),
        ..ItemFilter::default()
    };
    assert_eq!(store.delete_items("q", &finished, at(30)).await.unwrap(), 3);
    let settings = QueueSettings {
        retention_days: 1,
        ..QueueSettings::default()
    };
    store.update_queue("q", &settings, at(30)).await.unwrap();
    assert_eq!(store.purge_finished_items(at(86_000)).await.unwrap(), 0);
    assert_eq!(store.purge_finished_items(at(86_431)).await.unwrap(), 3);
});

store_test!(
    queues_are_named_and_not_deleted_while_an_item_is_held,
    |store| {
        store
            .create_queue("q", &QueueSettings::default(), at(0))
            .await
            .unwrap();
        assert!(matches!(
            store
                .create_queue("q", &QueueSettings::default(), at(0))
                .await,
            Err(StoreError::Conflict)
        ));
        add(&store, "q", vec![item("1")], at(0)).await;
        claim(&store, "q", "l", at(0)).await.unwrap();
        assert!(matches!(
            store.delete_queue("q").await,
            Err(StoreError::Conflict)
        ));
        store.expire_leases(at(10_000)).await.unwrap();
        store.delete_queue("q").await.unwrap();
        assert!(matches!(store.queue("q").await, Err(StoreError::NotFound)));
        assert!(store.queues().await.unwrap().is_empty());
    }
);

/// Has `consumers` consumers claim and complete the items of `queue` until none is ready;
/// answers the ids they completed, in order.
async fn consume_all(store: &Store, queue: &str, consumers: usize) -> Vec<i64> {
    let mut tasks = Vec::new();
    for consumer in 0..consumers {
        let (store, queue) = (store.clone(), queue.to_owned());
        tasks.push(tokio::spawn(async move {
            let lease = format!("lease-{consumer}");
            let mut done = Vec::new();
            while let Some((id, _)) = claim(&store, &queue, &lease, at(1)).await {
                match one(&store, complete(&queue, id, &lease), at(2)).await {
                    Ok(_) => done.push(id),
                    Err(err) => panic!("consumer {consumer} lost item {id}: {err}"),
                }
            }
            done
        }));
    }
    let mut processed = Vec::new();
    for task in tasks {
        processed.extend(task.await.unwrap());
    }
    processed.sort_unstable();
    processed
}

// On SQLite the batches and the pool write through two connections: a transaction of the
// pool that reads, then writes (releasing a run's items) must wait for the write lock, not
// fail because a batch committed in between.
store_test!(batches_and_other_writes_interleave, |store| {
    store
        .create_queue("q", &QueueSettings::default(), at(0))
        .await
        .unwrap();
    let retried = QueueSettings {
        max_attempts: 100,
        ..QueueSettings::default()
    };
    store.create_queue("other", &retried, at(0)).await.unwrap();
    let ids = add(
        &store,
        "q",
        (0..200).map(|n| item(&n.to_string())).collect(),
        at(0),
    )
    .await;
    add(&store, "other", vec![item("{}")], at(0)).await;
    let consumers = consume_all(&store, "q", 4);
    let releases = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut released = 0;
            for _ in 0..50 {
                let claimed = one(
                    &store,
                    QueueOp::Claim {
                        queue: "other".to_owned(),
                        lease_digest: "lease-other".to_owned(),
                        claimer: Claimer {
                            run_id: Some("run_2".to_owned()),
                            name: "run:run_2".to_owned(),
                        },
                        count: 1,
                    },
                    at(1),
                )
                .await;
                assert!(matches!(claimed, Ok(QueueAnswer::Claimed(items)) if items.len() == 1));
                released += store
                    .release_run_items("run_2", false, at(1))
                    .await
                    .unwrap();
            }
            released
        })
    };
    assert_eq!(consumers.await, ids, "every item once, none twice");
    assert_eq!(
        releases.await.unwrap(),
        50,
        "each claim of the other queue released"
    );
});

store_test!(many_consumers_process_every_item_once, |store| {
    store
        .create_queue("q", &QueueSettings::default(), at(0))
        .await
        .unwrap();
    let items: Vec<NewItem> = (0..400).map(|n| item(&n.to_string())).collect();
    let ids = add(&store, "q", items, at(0)).await;
    let processed = consume_all(&store, "q", 8).await;
    assert_eq!(processed, ids, "every item once, none twice");
});

store_test!(
    concurrent_adds_of_one_unique_reference_leave_one_item,
    |store| {
        let settings = QueueSettings {
            enforce_unique_reference: true,
            ..QueueSettings::default()
        };
        store.create_queue("q", &settings, at(0)).await.unwrap();
        let mut adds = Vec::new();
        for n in 0..8 {
            let store = store.clone();
            adds.push(tokio::spawn(async move {
                let op = QueueOp::Add {
                    queue: "q".to_owned(),
                    items: vec![
                        item(&n.to_string()),
                        NewItem {
                            reference: Some("inv-1".to_owned()),
                            ..item("0")
                        },
                    ],
                };
                one(&store, op, at(0)).await
            }));
        }
        let mut added = Vec::new();
        let mut refused = Vec::new();
        for add in adds {
            match add.await.unwrap() {
                Ok(QueueAnswer::Added(ids)) => added.push(ids),
                Err(QueueOpError::DuplicateReference { existing, .. }) => refused.push(existing),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(added.len(), 1, "one add wins");
        assert_eq!(refused.len(), 7);
        assert!(refused.iter().all(|existing| *existing == added[0][1]));
        let all = store
            .queue_items("q", &ItemFilter::default(), None, 100)
            .await
            .unwrap();
        assert_eq!(all.len(), 2, "the refused adds left nothing");
    }
);

// A run's end is one transaction: a failure injected at its last step (the restart policy's
// run clashing with an existing id) leaves the run as it was — active, its token working, its
// items held — and the end that then succeeds does everything at once.
store_test!(a_run_ends_all_at_once_or_not_at_all, |store| {
    use dirigent_domain::run::{Run, RunState};
    use dirigent_store::{Placement, RunEnd};

    use crate::agents_and_runs::{queued, transition};

    let agent = crate::agents_and_runs::online_agent(&store, 2).await;
    let mut run = queued("run_1", "invoices", 0);
    let first = transition(RunState::Queued, 0, "user:admin");
    store.insert_run(&run, &first, None).await.unwrap();
    run.agent_id = Some(agent);
    run.state = RunState::Starting;
    let placed = transition(RunState::Starting, 1, "rule:dispatch");
    assert!(matches!(
        store
            .place_run(&mut run, &placed, "token-digest", "{}", 1)
            .await
            .unwrap(),
        Placement::Placed { .. }
    ));
    run.state = RunState::Running;
    store
        .update_run(
            &mut run,
            Some(&transition(RunState::Running, 2, "agent:pc-1")),
        )
        .await
        .unwrap();
    store
        .create_queue("q", &QueueSettings::default(), at(0))
        .await
        .unwrap();
    let ids = add(&store, "q", vec![item("1")], at(0)).await;
    assert_eq!(
        claim(&store, "q", "a", at(3)).await.map(|(id, _)| id),
        Some(ids[0])
    );

    let mut ending = run.clone();
    ending.state = RunState::Failed;
    ending.ended_at = Some(at(4));
    let clash = Run {
        automatic: true,
        ..queued("run_1", "invoices", 4)
    };
    let clash_first = transition(RunState::Queued, 4, "restart_policy");

    let failed = store
        .end_run(
            &mut ending,
            &transition(RunState::Failed, 4, "agent:pc-1"),
            RunEnd {
                restart: Some((&clash, &clash_first)),
                manual: Some("crash loop"),
            },
        )
        .await;
    assert!(matches!(failed, Err(StoreError::Conflict)), "{failed:?}");
    let stored = store.run("run_1").await.unwrap();
    assert_eq!(
        (stored.state, stored.version),
        (RunState::Running, run.version)
    );
    assert_eq!(
        store.run_by_token("token-digest").await.unwrap().id,
        "run_1"
    );
    let held = store.queue_item("q", ids[0]).await.unwrap();
    assert_eq!(held.status, ItemStatus::InProgress, "still held by the run");
    assert_eq!(store.run_transitions("run_1").await.unwrap().len(), 3);

    let restart = queued("run_2", "invoices", 4);
    store
        .end_run(
            &mut ending,
            &transition(RunState::Failed, 4, "agent:pc-1"),
            RunEnd {
                restart: Some((&restart, &clash_first)),
                manual: Some("crash loop"),
            },
        )
        .await
        .unwrap();
    assert_eq!(store.run("run_1").await.unwrap().state, RunState::Failed);
    assert!(matches!(
        store.run_by_token("token-digest").await.unwrap_err(),
        StoreError::NotFound
    ));
    assert_eq!(
        store.queue_item("q", ids[0]).await.unwrap().status,
        ItemStatus::New
    );
    assert_eq!(store.run("run_2").await.unwrap().state, RunState::Queued);
});
