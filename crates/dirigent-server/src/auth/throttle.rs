//! Brute-force protection for logins, counted in the database so that every node sees the
//! same figures and a restart forgets nothing.
//!
//! Failed attempts are counted for three subjects at once:
//! - the user name from one client address: from the third failure on, answers are slowed;
//!   from the fifth on, that pair is locked for a while that doubles with each further failure
//!   (30 s up to 15 min);
//! - the client address, whatever user names it tries: locked the same way from the 20th;
//! - the user name, from any address: only slowed (from the 10th), never locked, so that
//!   guessing from elsewhere cannot lock a user out from everywhere.
//!
//! A success clears the pair and the user name (not the address).

use std::{net::IpAddr, time::Duration};

use dirigent_store::{LoginFailures, Store, StoreError};
use jiff::{SignedDuration, Timestamp};

const FIRST_LOCK: SignedDuration = SignedDuration::from_secs(30);
const LONGEST_LOCK: SignedDuration = SignedDuration::from_secs(15 * 60);
/// Failures are forgotten this long after the last one (unless a lock lasts longer).
const FORGET_AFTER: SignedDuration = SignedDuration::from_hours(24);

/// How failures of one kind of subject are answered.
#[derive(Debug, Clone, Copy)]
struct Rule {
    slow_from: Option<u32>,
    lock_from: Option<u32>,
}

const PAIR: Rule = Rule {
    slow_from: Some(3),
    lock_from: Some(5),
};
const ADDRESS: Rule = Rule {
    slow_from: None,
    lock_from: Some(20),
};
const USER: Rule = Rule {
    slow_from: Some(10),
    lock_from: None,
};

/// What to do with a login attempt before checking its password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Check it, answering no sooner than after this delay.
    Check { delay: Duration },
    /// Refuse it without checking: locked until then.
    Locked { until: Timestamp },
}

/// The subjects of one login attempt, with their rules.
pub struct Attempt {
    subjects: [(String, Rule); 3],
}

impl Attempt {
    /// An attempt to log in as `username` from `address` (unknown when served by a test
    /// router without a socket).
    pub fn new(username: &str, address: Option<IpAddr>) -> Attempt {
        let address = address.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        Attempt {
            subjects: [
                (format!("pair:{username}@{address}"), PAIR),
                (format!("address:{address}"), ADDRESS),
                (format!("user:{username}"), USER),
            ],
        }
    }

    fn names(&self) -> Vec<String> {
        self.subjects.iter().map(|(name, _)| name.clone()).collect()
    }

    /// Whether to check this attempt, and how slowly.
    pub async fn admit(&self, store: &Store, now: Timestamp) -> Result<Admission, StoreError> {
        let recorded = store.login_failures(&self.names()).await?;
        Ok(admission(
            self.subjects.iter().map(|(name, rule)| {
                let failures = recorded
                    .iter()
                    .find(|(subject, _)| subject == name)
                    .map(|(_, failures)| *failures);
                (*rule, failures)
            }),
            now,
        ))
    }

    /// Counts a failed attempt; answers the lock it caused, if any.
    pub async fn failed(
        &self,
        store: &Store,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        let mut locked: Option<Timestamp> = None;
        for (name, rule) in &self.subjects {
            let count = store.count_login_failure(name, now).await?;
            if let Some(until) = lock_after(*rule, count, now) {
                store.lock_login(name, until).await?;
                locked = Some(locked.map_or(until, |other| other.max(until)));
            }
        }
        Ok(locked)
    }

    /// A success: the user's own counts start again (the address's do not).
    pub async fn succeeded(&self, store: &Store) -> Result<(), StoreError> {
        let names: Vec<String> = self
            .subjects
            .iter()
            .filter(|(name, _)| !name.starts_with("address:"))
            .map(|(name, _)| name.clone())
            .collect();
        store.clear_login_failures(&names).await
    }
}

/// Forgets failures older than a day (the janitor's).
pub async fn forget_old(store: &Store, now: Timestamp) -> Result<u64, StoreError> {
    store.forget_login_failures(now - FORGET_AFTER).await
}

/// The answer to an attempt whose subjects have these rules and recorded failures.
fn admission(
    subjects: impl Iterator<Item = (Rule, Option<LoginFailures>)>,
    now: Timestamp,
) -> Admission {
    let mut delay = Duration::ZERO;
    let mut locked: Option<Timestamp> = None;
    for (rule, failures) in subjects {
        let Some(failures) = failures else { continue };
        if let Some(until) = failures.locked_until.filter(|until| now < *until) {
            locked = Some(locked.map_or(until, |other| other.max(until)));
        }
        if rule.slow_from.is_some_and(|from| from <= failures.count) {
            delay = delay.max(Duration::from_millis(
                200 * u64::from(failures.count.min(10)),
            ));
        }
    }
    match locked {
        Some(until) => Admission::Locked { until },
        None => Admission::Check { delay },
    }
}

/// The lock that the `count`th failure brings under `rule`, if any.
fn lock_after(rule: Rule, count: u32, now: Timestamp) -> Option<Timestamp> {
    let from = rule.lock_from.filter(|from| *from <= count)?;
    let doublings = (count - from).min(10);
    let lock = (FIRST_LOCK * (1 << doublings)).min(LONGEST_LOCK);
    Some(now.saturating_add(lock).unwrap_or(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + seconds).unwrap()
    }

    fn failures(count: u32, locked_until: Option<Timestamp>) -> Option<LoginFailures> {
        Some(LoginFailures {
            count,
            last: at(0),
            locked_until,
        })
    }

    #[track_caller]
    fn check(rule: Rule, count: u32, lock: Option<i64>) {
        assert_eq!(lock_after(rule, count, at(0)), lock.map(at), "{count}");
    }

    #[test]
    fn failures_lock_with_doubling() {
        for (count, lock) in [(4, None), (5, Some(30)), (6, Some(60)), (30, Some(900))] {
            check(PAIR, count, lock);
        }
        check(ADDRESS, 19, None);
        check(ADDRESS, 20, Some(30));
        check(USER, 1000, None);
    }

    #[test]
    fn admission_takes_the_longest_lock_and_delay() {
        let quiet = Admission::Check {
            delay: Duration::ZERO,
        };
        assert_eq!(admission([(PAIR, None)].into_iter(), at(0)), quiet);
        assert_eq!(
            admission(
                [(PAIR, failures(3, None)), (USER, failures(2, None))].into_iter(),
                at(0)
            ),
            Admission::Check {
                delay: Duration::from_millis(600)
            }
        );
        assert_eq!(
            admission([(USER, failures(12, None))].into_iter(), at(0)),
            Admission::Check {
                delay: Duration::from_secs(2)
            },
            "a user name tried everywhere is slowed, never locked"
        );
        assert_eq!(
            admission(
                [
                    (PAIR, failures(5, Some(at(30)))),
                    (ADDRESS, failures(21, Some(at(60))))
                ]
                .into_iter(),
                at(10)
            ),
            Admission::Locked { until: at(60) }
        );
        assert_eq!(
            admission([(PAIR, failures(5, Some(at(30))))].into_iter(), at(30)),
            Admission::Check {
                delay: Duration::from_secs(1)
            },
            "a lock ends"
        );
    }
}
