//! The item state machine against a model: random sequences of operations, applied to a real
//! SQLite store and to a plain in-memory model of the rules, must answer alike and leave the
//! items alike.

use dirigent_domain::queue::{
    AfterAttempt, ErrorKind, ItemStatus, Priority, QueueSettings, after_failure, after_lost_lease,
};
use dirigent_store::{Claimer, Completion, NewItem, QueueAnswer, QueueOp, QueueOpError};
use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

const QUEUE: &str = "q";

fn settings() -> QueueSettings {
    QueueSettings {
        max_attempts: 2,
        retry_delay_seconds: 10,
        retry_backoff: 2,
        lease_seconds: 60,
        enforce_unique_reference: true,
        ..QueueSettings::default()
    }
}

/// An item to add: its priority, and in seconds from now its deadline and postponement; its
/// reference, one of a few.
type Draft = (Priority, Option<u8>, Option<u8>, Option<u8>);

/// An operation as generated: items and leases are picked by index among those that exist.
#[derive(Debug, Clone)]
enum Step {
    Add(Vec<Draft>),
    Claim(u8),
    Complete(usize),
    CompleteMany(Vec<usize>),
    Fail(usize, bool),
    Extend(usize),
    Abandon(usize),
    PostponeHeld(usize, u8),
    PostponeNew(usize, u8),
    Requeue(usize),
    Delete(usize),
    Advance(u8),
    ExpireLeases,
    ReleaseRun,
}

fn step() -> impl Strategy<Value = Step> {
    let priority = prop_oneof![
        Just(Priority::High),
        Just(Priority::Normal),
        Just(Priority::Low)
    ];
    let new_item = (
        priority,
        proptest::option::of(0u8..50),
        proptest::option::of(0u8..30),
        proptest::option::of(0u8..4),
    );
    prop_oneof![
        3 => proptest::collection::vec(new_item, 1..4).prop_map(Step::Add),
        4 => (1u8..4).prop_map(Step::Claim),
        2 => any::<usize>().prop_map(Step::Complete),
        1 => proptest::collection::vec(any::<usize>(), 1..4).prop_map(Step::CompleteMany),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(i, business)| Step::Fail(i, business)),
        1 => any::<usize>().prop_map(Step::Extend),
        1 => any::<usize>().prop_map(Step::Abandon),
        1 => (any::<usize>(), 0u8..60).prop_map(|(i, s)| Step::PostponeHeld(i, s)),
        1 => (any::<usize>(), 0u8..60).prop_map(|(i, s)| Step::PostponeNew(i, s)),
        1 => any::<usize>().prop_map(Step::Requeue),
        1 => any::<usize>().prop_map(Step::Delete),
        2 => (1u8..90).prop_map(Step::Advance),
        1 => Just(Step::ExpireLeases),
        1 => Just(Step::ReleaseRun),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelItem {
    id: i64,
    status: ItemStatus,
    attempts: u32,
    available_at: Timestamp,
    priority: Priority,
    deadline: Option<Timestamp>,
    reference: Option<String>,
    lease: Option<(String, Timestamp)>,
}

/// What the model answers besides a refusal.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Done,
    /// The ids claimed, in claim order.
    Claimed(Vec<i64>),
    Completed(Vec<Result<(), QueueOpError>>),
}

struct Model {
    settings: QueueSettings,
    items: Vec<ModelItem>,
    now: Timestamp,
}

impl Model {
    fn item(&mut self, id: i64) -> Option<&mut ModelItem> {
        self.items.iter_mut().find(|item| item.id == id)
    }

    fn held(&mut self, id: i64, lease: &str) -> Result<&mut ModelItem, QueueOpError> {
        let now = self.now;
        let item = self.item(id).ok_or(QueueOpError::ItemNotFound)?;
        if item.status != ItemStatus::InProgress {
            return Err(QueueOpError::WrongStatus(item.status));
        }
        match &item.lease {
            Some((token, expires)) if token == lease && now < *expires => Ok(item),
            _ => Err(QueueOpError::StaleLease),
        }
    }

    fn live_reference(&self, reference: &str) -> Option<i64> {
        self.items
            .iter()
            .find(|item| {
                item.reference.as_deref() == Some(reference) && item.status != ItemStatus::Deleted
            })
            .map(|item| item.id)
    }

    fn apply(&mut self, op: &QueueOp) -> Result<Answer, QueueOpError> {
        let now = self.now;
        let settings = self.settings.clone();
        match op {
            QueueOp::Add { items, .. } => {
                let mut seen = Vec::new();
                for item in items {
                    if let Some(reference) = &item.reference {
                        if seen.contains(reference) {
                            return Err(QueueOpError::RepeatedReference(reference.clone()));
                        }
                        seen.push(reference.clone());
                        if let Some(existing) = self.live_reference(reference) {
                            return Err(QueueOpError::DuplicateReference {
                                reference: reference.clone(),
                                existing,
                            });
                        }
                    }
                }
                for item in items {
                    let id = self.items.len() as i64 + 1;
                    self.items.push(ModelItem {
                        id,
                        status: ItemStatus::New,
                        attempts: 0,
                        available_at: item.postpone_until.unwrap_or(now),
                        priority: item.priority,
                        deadline: item.deadline,
                        reference: item.reference.clone(),
                        lease: None,
                    });
                }
                Ok(Answer::Done)
            }
            QueueOp::Claim {
                lease_digest,
                count,
                ..
            } => {
                let mut claimed = Vec::new();
                for _ in 0..*count {
                    let next = self
                        .items
                        .iter_mut()
                        .filter(|item| item.status == ItemStatus::New && item.available_at <= now)
                        .min_by_key(|item| {
                            dirigent_domain::queue::claim_order(
                                item.deadline,
                                item.priority,
                                item.id,
                            )
                        });
                    let Some(item) = next else { break };
                    item.status = ItemStatus::InProgress;
                    item.attempts += 1;
                    item.lease = Some((lease_digest.clone(), settings.lease_until(now)));
                    claimed.push(item.id);
                }
                Ok(Answer::Claimed(claimed))
            }
            QueueOp::Complete {
                item, lease_digest, ..
            } => {
                let item = self.held(*item, lease_digest)?;
                item.status = ItemStatus::Successful;
                item.lease = None;
                Ok(Answer::Done)
            }
            QueueOp::CompleteMany { items, .. } => Ok(Answer::Completed(
                items
                    .iter()
                    .map(|completion| {
                        let item = self.held(completion.item, &completion.lease_digest)?;
                        item.status = ItemStatus::Successful;
                        item.lease = None;
                        Ok(())
                    })
                    .collect(),
            )),
            QueueOp::Fail {
                item,
                lease_digest,
                kind,
                ..
            } => {
                let item = self.held(*item, lease_digest)?;
                item.lease = None;
                match after_failure(&settings, *kind, item.attempts, now) {
                    AfterAttempt::Retry { at } => {
                        item.status = ItemStatus::New;
                        item.available_at = at;
                    }
                    AfterAttempt::Final(status) => item.status = status,
                }
                Ok(Answer::Done)
            }
            QueueOp::Extend {
                item, lease_digest, ..
            } => {
                let item = self.held(*item, lease_digest)?;
                item.lease = Some((lease_digest.clone(), settings.lease_until(now)));
                Ok(Answer::Done)
            }
            QueueOp::Abandon {
                item, lease_digest, ..
            } => {
                let item = self.held(*item, lease_digest)?;
                item.status = ItemStatus::Abandoned;
                item.lease = None;
                Ok(Answer::Done)
            }
            QueueOp::Postpone {
                item,
                lease_digest: Some(lease_digest),
                until,
                ..
            } => {
                let item = self.held(*item, lease_digest)?;
                item.status = ItemStatus::New;
                item.available_at = *until;
                item.lease = None;
                Ok(Answer::Done)
            }
            QueueOp::Postpone {
                item,
                lease_digest: None,
                until,
                ..
            } => {
                let item = self.item(*item).ok_or(QueueOpError::ItemNotFound)?;
                if item.status != ItemStatus::New {
                    return Err(QueueOpError::WrongStatus(item.status));
                }
                item.available_at = *until;
                Ok(Answer::Done)
            }
            QueueOp::Requeue { item, .. } => {
                let id = *item;
                let found = self.item(id).ok_or(QueueOpError::ItemNotFound)?.clone();
                if !found.status.can_requeue() {
                    return Err(QueueOpError::WrongStatus(found.status));
                }
                if found.status == ItemStatus::Deleted
                    && let Some(reference) = &found.reference
                    && let Some(existing) = self.live_reference(reference)
                {
                    return Err(QueueOpError::DuplicateReference {
                        reference: reference.clone(),
                        existing,
                    });
                }
                let item = self.item(id).ok_or(QueueOpError::ItemNotFound)?;
                item.status = ItemStatus::New;
                item.attempts = 0;
                item.available_at = now;
                Ok(Answer::Done)
            }
            QueueOp::Delete { item, .. } => {
                let item = self.item(*item).ok_or(QueueOpError::ItemNotFound)?;
                if !item.status.can_delete() {
                    return Err(QueueOpError::WrongStatus(item.status));
                }
                item.status = ItemStatus::Deleted;
                Ok(Answer::Done)
            }
        }
    }

    /// Expired leases (or all, for a lost run) end.
    fn release(&mut self, all: bool) {
        let (now, settings) = (self.now, self.settings.clone());
        for item in &mut self.items {
            let expired = item
                .lease
                .as_ref()
                .is_some_and(|(_, expires)| all || *expires <= now);
            if item.status == ItemStatus::InProgress && expired {
                item.lease = None;
                match after_lost_lease(&settings, item.attempts, now) {
                    AfterAttempt::Retry { at } => {
                        item.status = ItemStatus::New;
                        item.available_at = at;
                    }
                    AfterAttempt::Final(status) => item.status = status,
                }
            }
        }
    }
}

fn pick<T: Clone>(choices: &[T], index: usize) -> Option<T> {
    (!choices.is_empty()).then(|| choices[index % choices.len()].clone())
}

async fn run_case(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let (_dir, store) = crate::backends::fresh_sqlite().await;
    let start = Timestamp::from_second(1_800_000_000).unwrap();
    let queue_id = store
        .create_queue(QUEUE, &settings(), start)
        .await
        .unwrap()
        .id;
    let mut model = Model {
        settings: settings(),
        items: Vec::new(),
        now: start,
    };
    // Leases granted so far (item, token), and a counter for new tokens.
    let mut leases: Vec<(i64, String)> = Vec::new();
    for step in steps {
        let now = model.now;
        let at = |seconds: u8| now + SignedDuration::from_secs(i64::from(seconds));
        let ids: Vec<i64> = model.items.iter().map(|item| item.id).collect();
        let queue = QUEUE.to_owned();
        let op = match step {
            Step::Advance(seconds) => {
                model.now = at(seconds);
                continue;
            }
            Step::ExpireLeases => {
                store.expire_leases(now).await.unwrap();
                model.release(false);
                continue;
            }
            Step::ReleaseRun => {
                store.release_run_items("run_1", true, now).await.unwrap();
                model.release(true);
                continue;
            }
            Step::Add(items) => QueueOp::Add {
                queue,
                items: items
                    .into_iter()
                    .map(|(priority, deadline, postpone, reference)| NewItem {
                        payload: "{}".to_owned(),
                        reference: reference.map(|r| format!("ref-{r}")),
                        priority,
                        deadline: deadline.map(at),
                        postpone_until: postpone.map(at),
                    })
                    .collect(),
            },
            Step::Claim(count) => QueueOp::Claim {
                queue,
                lease_digest: format!("lease-{}", leases.len()),
                claimer: Claimer {
                    run_id: Some("run_1".to_owned()),
                    name: "run:run_1".to_owned(),
                },
                count: u32::from(count),
            },
            Step::CompleteMany(picks) => QueueOp::CompleteMany {
                queue,
                items: picks
                    .into_iter()
                    .filter_map(|i| pick(&leases, i))
                    .map(|(item, lease_digest)| Completion {
                        item,
                        lease_digest,
                        output: None,
                    })
                    .collect(),
            },
            Step::Complete(i)
            | Step::Fail(i, _)
            | Step::Extend(i)
            | Step::Abandon(i)
            | Step::PostponeHeld(i, _) => {
                let Some((item, lease_digest)) = pick(&leases, i) else {
                    continue;
                };
                match step {
                    Step::Complete(_) => QueueOp::Complete {
                        queue,
                        item,
                        lease_digest,
                        output: None,
                    },
                    Step::Fail(_, business) => QueueOp::Fail {
                        queue,
                        item,
                        lease_digest,
                        kind: if business {
                            ErrorKind::Business
                        } else {
                            ErrorKind::Application
                        },
                        message: String::new(),
                    },
                    Step::Extend(_) => QueueOp::Extend {
                        queue,
                        item,
                        lease_digest,
                    },
                    Step::Abandon(_) => QueueOp::Abandon {
                        queue,
                        item,
                        lease_digest,
                        message: None,
                    },
                    Step::PostponeHeld(_, seconds) => QueueOp::Postpone {
                        queue,
                        item,
                        lease_digest: Some(lease_digest),
                        until: at(seconds),
                    },
                    _ => unreachable!(),
                }
            }
            Step::PostponeNew(i, seconds) => {
                let Some(item) = pick(&ids, i) else { continue };
                QueueOp::Postpone {
                    queue,
                    item,
                    lease_digest: None,
                    until: at(seconds),
                }
            }
            Step::Requeue(i) => {
                let Some(item) = pick(&ids, i) else { continue };
                QueueOp::Requeue { queue, item }
            }
            Step::Delete(i) => {
                let Some(item) = pick(&ids, i) else { continue };
                QueueOp::Delete { queue, item }
            }
        };
        let mut session = store.write_session().await.unwrap();
        let stored = store
            .apply_queue_ops(
                &mut session,
                std::slice::from_ref(&op),
                &[],
                |_, _| None,
                now,
            )
            .await
            .unwrap()
            .answers
            .pop()
            .unwrap();
        let expected = model.apply(&op);
        match (&stored, &expected) {
            (Ok(QueueAnswer::Claimed(found)), Ok(Answer::Claimed(ids))) => {
                let found: Vec<i64> = found.iter().map(|item| item.id).collect();
                prop_assert_eq!(&found, ids, "claim of {:?}", op);
                if let QueueOp::Claim { lease_digest, .. } = &op {
                    leases.extend(ids.iter().map(|id| (*id, lease_digest.clone())));
                }
            }
            (Ok(QueueAnswer::Completed(done)), Ok(Answer::Completed(wanted))) => {
                prop_assert_eq!(done, wanted, "{:?}", op);
            }
            (Ok(_), Ok(_)) => {}
            (Err(stored), Err(expected)) => prop_assert_eq!(stored, expected, "{:?}", op),
            _ => prop_assert!(false, "{:?}: store {:?}, model {:?}", op, stored, expected),
        }
        // The items themselves agree.
        for expected in &model.items {
            let item = store.queue_item(QUEUE, expected.id).await.unwrap();
            let found = (
                item.status,
                item.attempts,
                item.available_at,
                item.lease_expires_at,
            );
            let wanted = (
                expected.status,
                expected.attempts,
                expected.available_at,
                expected.lease.as_ref().map(|(_, expires)| *expires),
            );
            prop_assert_eq!(found, wanted, "item {} after {:?}", expected.id, op);
        }
        // So do the counts the statistics keep.
        let stats = store.queue_stats(queue_id, now).await.unwrap();
        for status in ItemStatus::ALL {
            let expected = model
                .items
                .iter()
                .filter(|item| item.status == status)
                .count();
            prop_assert_eq!(
                stats.counts[&status],
                expected as u64,
                "{} after {:?}",
                status,
                op
            );
        }
    }
    store.close().await;
    Ok(())
}

proptest! {
    // A fixed seed: the same cases on every run, in CI as here.
    #![proptest_config(ProptestConfig {
        cases: 64,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x0d1e_6e47),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_store_follows_the_model(steps in proptest::collection::vec(step(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run_case(steps))?;
    }
}
