//! Triggers (what starts runs, and when) and the calendars they follow.

use std::collections::BTreeMap;

use jiff::{Timestamp, civil::Date};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/v1/calendars` and `PUT /api/v1/calendars/{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CalendarSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Working days: `mon` … `sun` (default Monday to Friday).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_days: Option<Vec<String>>,
    /// Excluded dates (holidays), `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub excluded_dates: Option<Vec<Date>>,
    /// More excluded dates, as CSV (a date first on each line) or iCalendar text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<String>,
}

/// A calendar.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Calendar {
    pub name: String,
    pub description: String,
    pub working_days: Vec<String>,
    #[schema(value_type = Vec<String>)]
    pub excluded_dates: Vec<Date>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// `POST /api/v1/triggers` and `PUT /api/v1/triggers/{id}`. Which fields apply depends on
/// `kind`: `cron` (`cron`, `time_zone`), `interval` (`every_seconds`, `anchor`), `once`
/// (`at`), `weekly` (`days`, `times`, `time_zone`), `window` (`days`, `open`, `close`,
/// `time_zone`: the robot runs inside the window, started when it opens, safe-stopped when
/// it closes), `queue` (`queue`, `min_items`, `max_runs`: runs start while the queue holds
/// items ready to claim, one per `min_items` of them, at most `max_runs` at a time).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// The robot it starts.
    pub robot: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// 5 fields, or 6 with seconds first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// An IANA time zone such as `Europe/Berlin` (default: the server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_seconds: Option<u64>,
    /// Interval firings fall on `anchor + k × every_seconds` (default: when created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub anchor: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub at: Option<Timestamp>,
    /// `mon` … `sun`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<Vec<String>>,
    /// Local times `HH:MM` or `HH:MM:SS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<Vec<String>>,
    /// For a window: when it opens and closes each day, `HH:MM` local time (a close at or
    /// before the opening runs past midnight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<String>,
    /// For a queue trigger: the queue it watches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// For a queue trigger: items ready to claim that start a run (default 1); each further
    /// `min_items` start one more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_items: Option<u32>,
    /// For a queue trigger: runs of the robot active at once, at most (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_runs: Option<u32>,
    /// A calendar to follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar: Option<String>,
    /// On a calendar's off day: `skip` (default) or `next_working_day`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off_day: Option<String>,
    /// When a run of the robot is active: `skip` (default), `queue_one`, `allow`, `replace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<String>,
    /// Firings missed while the orchestrator was down: `skip`, `run_once` (default),
    /// `run_all` (within `catch_up_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up_seconds: Option<u32>,
    /// A random delay of up to this many seconds before each firing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_seconds: Option<u32>,
    /// Disable the trigger after this many failed runs in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_consecutive_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Extra environment variables for the runs it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Arguments appended to the robot's command for the runs it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Record each firing (outcome `dry_run`) without starting a run: to try a schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

/// A trigger: its definition, its id and where it stands.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Trigger {
    pub id: String,
    pub spec: TriggerSpec,
    pub enabled: bool,
    /// The next firing, when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_fire_at: Option<Timestamp>,
    /// Why it was disabled automatically, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Runs it started that failed in a row (reset by a success or by enabling it).
    pub consecutive_failures: u32,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// One coming firing: the instant, and the local time and offset in the trigger's zone.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FireTime {
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// Local time with its offset, such as `2027-03-28T03:00:00+02:00[Europe/Berlin]`.
    pub local: String,
    /// The offset from UTC then, such as `+02:00`.
    pub offset: String,
}

/// A firing of a trigger and what became of it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Firing {
    /// When the schedule said it should fire.
    #[schema(value_type = String, format = DateTime)]
    pub due_at: Timestamp,
    /// `started`, `skipped`, `missed`, `dry_run`, `disabled` (after failed runs), or `due`
    /// while its run is being started.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub recorded_at: Timestamp,
}
