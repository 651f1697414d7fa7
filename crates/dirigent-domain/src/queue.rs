//! Work-item queues: a queue's settings and their bounds, the statuses of an item, the order
//! in which items are handed out, and what happens after a failure or an expired lease.

use std::{fmt, str::FromStr};

use jiff::{SignedDuration, Timestamp};

use crate::{InvalidField, user::check_name};

/// Bounds on queue settings and items.
pub mod limits {
    pub const MAX_ATTEMPTS: u32 = 100;
    pub const MAX_RETRY_DELAY_SECONDS: u32 = 7 * 24 * 3600;
    pub const MAX_RETRY_BACKOFF: u32 = 10;
    pub const MAX_LEASE_SECONDS: u32 = 7 * 24 * 3600;
    pub const MAX_RETENTION_DAYS: u32 = 3650;
    /// The largest payload a queue may allow; the server's request limit may be lower.
    pub const MAX_PAYLOAD_BYTES: u32 = 16 * 1024 * 1024;
    pub const MAX_REFERENCE_BYTES: usize = 256;
    pub const MAX_MESSAGE_BYTES: usize = 4096;
    /// Items in one bulk add.
    pub const MAX_BULK_ITEMS: usize = 10_000;
    /// The longest a retry waits, whatever the backoff says.
    pub const MAX_RETRY_WAIT_SECONDS: i64 = 7 * 24 * 3600;
}

/// A queue's settings, as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    pub description: String,
    /// Attempts (claims) an item gets before an application error or an expired lease is final.
    pub max_attempts: u32,
    /// The wait before the first retry after an application error.
    pub retry_delay_seconds: u32,
    /// Each further retry waits this many times longer (1 = always the same).
    pub retry_backoff: u32,
    /// How long a claim holds an item unless extended.
    pub lease_seconds: u32,
    /// No two items that are not deleted share a reference.
    pub enforce_unique_reference: bool,
    /// Finished items are removed this many days after they finished; 0 keeps them.
    pub retention_days: u32,
    /// The largest payload (and output) accepted, in bytes of JSON.
    pub max_payload_bytes: u32,
}

impl Default for QueueSettings {
    fn default() -> QueueSettings {
        QueueSettings {
            description: String::new(),
            max_attempts: 3,
            retry_delay_seconds: 60,
            retry_backoff: 2,
            lease_seconds: 300,
            enforce_unique_reference: false,
            retention_days: 30,
            max_payload_bytes: 64 * 1024,
        }
    }
}

impl QueueSettings {
    /// Checks every bound, naming the field at fault.
    pub fn validate(&self) -> Result<(), InvalidField> {
        let range = |field: &str, value: u32, low: u32, high: u32| {
            if value < low || high < value {
                return Err(InvalidField::new(
                    field,
                    format!("must be between {low} and {high}"),
                ));
            }
            Ok(())
        };
        if 4096 < self.description.len() {
            return Err(InvalidField::new(
                "description",
                "is longer than 4096 bytes",
            ));
        }
        range("max_attempts", self.max_attempts, 1, limits::MAX_ATTEMPTS)?;
        range(
            "retry_delay_seconds",
            self.retry_delay_seconds,
            0,
            limits::MAX_RETRY_DELAY_SECONDS,
        )?;
        range(
            "retry_backoff",
            self.retry_backoff,
            1,
            limits::MAX_RETRY_BACKOFF,
        )?;
        range(
            "lease_seconds",
            self.lease_seconds,
            1,
            limits::MAX_LEASE_SECONDS,
        )?;
        range(
            "retention_days",
            self.retention_days,
            0,
            limits::MAX_RETENTION_DAYS,
        )?;
        range(
            "max_payload_bytes",
            self.max_payload_bytes,
            2,
            limits::MAX_PAYLOAD_BYTES,
        )
    }

    /// When an item whose `attempts`-th attempt failed with an application error may be
    /// claimed again: the delay grows by `retry_backoff` with each attempt, up to a week.
    pub fn retry_at(&self, attempts: u32, now: Timestamp) -> Timestamp {
        let mut seconds = i64::from(self.retry_delay_seconds);
        for _ in 1..attempts {
            seconds = seconds.saturating_mul(i64::from(self.retry_backoff));
            if limits::MAX_RETRY_WAIT_SECONDS <= seconds {
                break;
            }
        }
        let wait = SignedDuration::from_secs(seconds.min(limits::MAX_RETRY_WAIT_SECONDS));
        now.saturating_add(wait).unwrap_or(now)
    }

    /// The lease a claim or an extension at `now` gives.
    pub fn lease_until(&self, now: Timestamp) -> Timestamp {
        now.saturating_add(SignedDuration::from_secs(i64::from(self.lease_seconds)))
            .unwrap_or(now)
    }
}

/// A valid queue name: like a robot's.
pub fn check_queue_name(name: &str) -> Result<(), InvalidField> {
    check_name("name", name, "._-")
}

/// Where an item is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ItemStatus {
    /// Waiting to be claimed (perhaps postponed, or waiting for a retry).
    New,
    /// Claimed under a lease.
    InProgress,
    Successful,
    /// A business error, or an application error after the last attempt.
    Failed,
    /// Given up by its robot, or its lease expired after the last attempt.
    Abandoned,
    Deleted,
}

impl ItemStatus {
    pub const ALL: [ItemStatus; 6] = [
        ItemStatus::New,
        ItemStatus::InProgress,
        ItemStatus::Successful,
        ItemStatus::Failed,
        ItemStatus::Abandoned,
        ItemStatus::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::New => "new",
            ItemStatus::InProgress => "in_progress",
            ItemStatus::Successful => "successful",
            ItemStatus::Failed => "failed",
            ItemStatus::Abandoned => "abandoned",
            ItemStatus::Deleted => "deleted",
        }
    }

    /// Whether the item is done with, one way or another.
    pub fn is_finished(self) -> bool {
        !matches!(self, ItemStatus::New | ItemStatus::InProgress)
    }

    /// Whether an operator may put the item back to `new`.
    pub fn can_requeue(self) -> bool {
        matches!(
            self,
            ItemStatus::Failed | ItemStatus::Abandoned | ItemStatus::Deleted
        )
    }

    /// Whether an operator may delete the item: not while a robot holds it.
    pub fn can_delete(self) -> bool {
        !matches!(self, ItemStatus::InProgress | ItemStatus::Deleted)
    }
}

impl fmt::Display for ItemStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ItemStatus {
    type Err = InvalidField;

    fn from_str(text: &str) -> Result<ItemStatus, InvalidField> {
        ItemStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| {
                InvalidField::new(
                    "status",
                    format!(
                        "{text:?} is not one of new, in_progress, successful, failed, abandoned, deleted"
                    ),
                )
            })
    }
}

/// How urgent an item is; among items of equal deadline, higher priority goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// The stored rank: lower is served first.
    pub fn rank(self) -> i64 {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }

    pub fn from_rank(rank: i64) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.rank() == rank)
    }
}

impl FromStr for Priority {
    type Err = InvalidField;

    fn from_str(text: &str) -> Result<Priority, InvalidField> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| {
                InvalidField::new(
                    "priority",
                    format!("{text:?} is not one of high, normal, low"),
                )
            })
    }
}

/// Why an attempt failed: bad data (final) or a fault of the robot or its systems (retried).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Business,
    Application,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Business => "business",
            ErrorKind::Application => "application",
        }
    }
}

impl FromStr for ErrorKind {
    type Err = InvalidField;

    fn from_str(text: &str) -> Result<ErrorKind, InvalidField> {
        match text {
            "business" => Ok(ErrorKind::Business),
            "application" => Ok(ErrorKind::Application),
            _ => Err(InvalidField::new(
                "kind",
                format!("{text:?} is not business or application"),
            )),
        }
    }
}

/// The key items are handed out by, smallest first: earliest deadline (items without one
/// last), then priority, then the order they were added in (`id`).
pub fn claim_order(deadline: Option<Timestamp>, priority: Priority, id: i64) -> (i64, i64, i64) {
    (
        deadline.map_or(i64::MAX, Timestamp::as_millisecond),
        priority.rank(),
        id,
    )
}

/// Where an item goes after its attempt ended without success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAttempt {
    /// Back to `new`, claimable from this time.
    Retry { at: Timestamp },
    /// To this final status.
    Final(ItemStatus),
}

/// After a failure of `kind` on attempt number `attempts`.
pub fn after_failure(
    settings: &QueueSettings,
    kind: ErrorKind,
    attempts: u32,
    now: Timestamp,
) -> AfterAttempt {
    match kind {
        ErrorKind::Business => AfterAttempt::Final(ItemStatus::Failed),
        ErrorKind::Application if attempts < settings.max_attempts => AfterAttempt::Retry {
            at: settings.retry_at(attempts, now),
        },
        ErrorKind::Application => AfterAttempt::Final(ItemStatus::Failed),
    }
}

/// After the lease of attempt number `attempts` expired (or its run was lost): back to the
/// queue at once, unless that was the last attempt.
pub fn after_lost_lease(settings: &QueueSettings, attempts: u32, now: Timestamp) -> AfterAttempt {
    if attempts < settings.max_attempts {
        AfterAttempt::Retry { at: now }
    } else {
        AfterAttempt::Final(ItemStatus::Abandoned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap_or_default()
    }

    #[test]
    fn retries_wait_longer_each_time_up_to_a_week() {
        let settings = QueueSettings {
            retry_delay_seconds: 10,
            retry_backoff: 3,
            ..QueueSettings::default()
        };
        assert_eq!(settings.retry_at(1, at(0)), at(10));
        assert_eq!(settings.retry_at(2, at(0)), at(30));
        assert_eq!(settings.retry_at(3, at(0)), at(90));
        assert_eq!(settings.retry_at(99, at(0)), at(7 * 24 * 3600));
    }

    #[test]
    fn business_errors_are_final_and_application_errors_retry_until_the_last_attempt() {
        let settings = QueueSettings::default();
        assert_eq!(
            after_failure(&settings, ErrorKind::Business, 1, at(0)),
            AfterAttempt::Final(ItemStatus::Failed)
        );
        assert_eq!(
            after_failure(&settings, ErrorKind::Application, 2, at(0)),
            AfterAttempt::Retry { at: at(120) }
        );
        assert_eq!(
            after_failure(&settings, ErrorKind::Application, 3, at(0)),
            AfterAttempt::Final(ItemStatus::Failed)
        );
        assert_eq!(
            after_lost_lease(&settings, 1, at(5)),
            AfterAttempt::Retry { at: at(5) }
        );
        assert_eq!(
            after_lost_lease(&settings, 3, at(5)),
            AfterAttempt::Final(ItemStatus::Abandoned)
        );
    }

    #[test]
    fn deadlines_come_first_then_priority_then_arrival() {
        let mut items = [
            (claim_order(None, Priority::High, 1), "high, no deadline"),
            (
                claim_order(Some(at(100)), Priority::Low, 2),
                "low, late deadline",
            ),
            (
                claim_order(Some(at(50)), Priority::Low, 3),
                "low, early deadline",
            ),
            (claim_order(None, Priority::Normal, 4), "normal"),
            (claim_order(None, Priority::High, 5), "high, later"),
        ];
        items.sort();
        let order: Vec<&str> = items.iter().map(|(_, name)| *name).collect();
        assert_eq!(
            order,
            [
                "low, early deadline",
                "low, late deadline",
                "high, no deadline",
                "high, later",
                "normal"
            ]
        );
    }

    #[test]
    fn settings_out_of_bounds_name_their_field() {
        let bad = QueueSettings {
            lease_seconds: 0,
            ..QueueSettings::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "lease_seconds");
        assert!(QueueSettings::default().validate().is_ok());
        assert_eq!("in_progress".parse(), Ok(ItemStatus::InProgress));
        assert!("done".parse::<ItemStatus>().is_err());
    }
}
