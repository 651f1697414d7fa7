//! Brute-force protection for logins: failed attempts per username are counted; from the
//! third on, answers are slowed; from the fifth on, the username is locked for a while that
//! doubles with each further failure (30 s up to 15 min). A success clears the count.
//!
//! Kept in memory: a restart forgets it, and each node counts on its own.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use jiff::{SignedDuration, Timestamp};

const SLOW_FROM: u32 = 3;
const LOCK_FROM: u32 = 5;
const FIRST_LOCK: SignedDuration = SignedDuration::from_secs(30);
const LONGEST_LOCK: SignedDuration = SignedDuration::from_secs(15 * 60);
/// Forget usernames beyond this many, oldest first, so the map stays bounded.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<String, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Timestamp,
    locked_until: Option<Timestamp>,
}

/// What to do with a login attempt before checking its password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Check it, answering no sooner than after this delay.
    Check { delay: Duration },
    /// Refuse it without checking: locked until then.
    Locked { until: Timestamp },
}

impl LoginThrottle {
    pub fn admit(&self, username: &str, now: Timestamp) -> Admission {
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(entry) = failures.get(username) else {
            return Admission::Check {
                delay: Duration::ZERO,
            };
        };
        if let Some(until) = entry.locked_until.filter(|until| now < *until) {
            return Admission::Locked { until };
        }
        let delay = if SLOW_FROM <= entry.count {
            Duration::from_millis(200 * u64::from(entry.count.min(10)))
        } else {
            Duration::ZERO
        };
        Admission::Check { delay }
    }

    /// Records a failed attempt; answers the lock it caused, if any.
    pub fn failed(&self, username: &str, now: Timestamp) -> Option<Timestamp> {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if MAX_TRACKED <= failures.len()
            && !failures.contains_key(username)
            && let Some(oldest) = failures
                .iter()
                .min_by_key(|(_, entry)| entry.last)
                .map(|(name, _)| name.clone())
        {
            failures.remove(&oldest);
        }
        let entry = failures.entry(username.to_owned()).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: None,
        });
        entry.count += 1;
        entry.last = now;
        if entry.count < LOCK_FROM {
            return None;
        }
        let doublings = (entry.count - LOCK_FROM).min(10);
        let lock = (FIRST_LOCK * (1 << doublings)).min(LONGEST_LOCK);
        let until = now.saturating_add(lock).unwrap_or(now);
        entry.locked_until = Some(until);
        Some(until)
    }

    pub fn succeeded(&self, username: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(username);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_slow_then_lock_with_doubling() {
        let throttle = LoginThrottle::default();
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        let at = |s: i64| t0 + SignedDuration::from_secs(s);
        assert_eq!(
            throttle.admit("eve", t0),
            Admission::Check {
                delay: Duration::ZERO
            }
        );
        for _ in 0..3 {
            assert_eq!(throttle.failed("eve", t0), None);
        }
        assert_eq!(
            throttle.admit("eve", t0),
            Admission::Check {
                delay: Duration::from_millis(600)
            }
        );
        assert_eq!(throttle.failed("eve", t0), None);
        assert_eq!(
            throttle.failed("eve", t0),
            Some(at(30)),
            "the fifth failure locks"
        );
        assert_eq!(
            throttle.admit("eve", at(29)),
            Admission::Locked { until: at(30) }
        );
        assert!(matches!(
            throttle.admit("eve", at(30)),
            Admission::Check { .. }
        ));
        assert_eq!(throttle.failed("eve", at(30)), Some(at(90)), "doubled");
        assert_eq!(
            throttle.admit("bob", at(31)),
            Admission::Check {
                delay: Duration::ZERO
            },
            "per username"
        );
        throttle.succeeded("eve");
        assert_eq!(
            throttle.admit("eve", at(31)),
            Admission::Check {
                delay: Duration::ZERO
            }
        );
    }
}
