//! Trigger definitions: from a stored spec to the schedule it follows and the calendar it
//! obeys, with every field checked and named when wrong.

use std::collections::BTreeMap;

use dirigent_domain::{
    InvalidField,
    queue::check_queue_name,
    robot::{check_args, check_env},
    schedule::{self, Cron, OffDay, Schedule},
};
use dirigent_proto::trigger::{CalendarSpec, TriggerSpec};
use dirigent_store::{CalendarRecord, Store, StoreError, TriggerRecord};
use jiff::{SignedDuration, Timestamp, civil::Time, tz::TimeZone};

use crate::error::ApiError;

/// Days of the week as triggers and calendars name them, Monday first.
pub(crate) const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// The calendar a trigger follows, and what it does on an off day.
pub(crate) type Obeyed = Option<(schedule::Calendar, OffDay)>;

/// When a trigger fires.
pub(crate) enum Timing {
    /// At the times of a schedule.
    Schedule(Schedule),
    /// While a queue holds items ready to claim.
    Queue(QueueWatch),
}

/// What a queue trigger watches, and how many runs it keeps.
pub(crate) struct QueueWatch {
    pub queue: String,
    /// Ready items per run.
    pub min_items: u32,
    /// Active runs at most.
    pub max_runs: u32,
}

/// The timing of a spec and the calendar it follows, every field checked.
pub(crate) async fn definition(
    store: &Store,
    spec: &TriggerSpec,
) -> Result<(Timing, Obeyed), ApiError> {
    let timing = timing(spec)?;
    check_policies(spec)?;
    Ok((timing, calendar_of(store, spec).await?))
}

/// When a spec fires.
pub(crate) fn timing(spec: &TriggerSpec) -> Result<Timing, ApiError> {
    let invalid = |field: &str, reason: String| ApiError::invalid(InvalidField::new(field, reason));
    let required = |field: &str| invalid(field, format!("is required for a {} trigger", spec.kind));
    let zone = match &spec.time_zone {
        Some(name) => TimeZone::get(name)
            .map_err(|_| invalid("time_zone", format!("{name:?} is not an IANA time zone")))?,
        None => TimeZone::system(),
    };
    let schedule = match spec.kind.as_str() {
        "cron" => Schedule::Cron {
            cron: Cron::parse(spec.cron.as_deref().ok_or_else(|| required("cron"))?)
                .map_err(ApiError::invalid)?,
            zone,
        },
        "interval" => {
            let seconds = spec
                .every_seconds
                .ok_or_else(|| required("every_seconds"))?;
            if !(1..=366 * 24 * 3600).contains(&seconds) {
                return Err(invalid(
                    "every_seconds",
                    "must be between 1 and a year".into(),
                ));
            }
            Schedule::Interval {
                every: SignedDuration::from_secs(seconds.cast_signed()),
                anchor: spec.anchor.ok_or_else(|| required("anchor"))?,
            }
        }
        "once" => Schedule::Once {
            at: spec.at.ok_or_else(|| required("at"))?,
        },
        "weekly" => {
            let days = days_of(spec)?;
            let times = spec
                .times
                .as_deref()
                .ok_or_else(|| required("times"))?
                .iter()
                .map(|text| time_of("times", text))
                .collect::<Result<Vec<_>, _>>()?;
            if times.is_empty() {
                return Err(invalid("times", "give at least one time".into()));
            }
            Schedule::Weekly { days, times, zone }
        }
        "window" => {
            if spec.calendar.is_some() {
                return Err(invalid(
                    "calendar",
                    "window triggers do not follow calendars".into(),
                ));
            }
            Schedule::Window(schedule::Window {
                days: days_of(spec)?,
                open: time_of(
                    "open",
                    spec.open.as_deref().ok_or_else(|| required("open"))?,
                )?,
                close: time_of(
                    "close",
                    spec.close.as_deref().ok_or_else(|| required("close"))?,
                )?,
                zone,
            })
        }
        "queue" => {
            if spec.calendar.is_some() {
                return Err(invalid(
                    "calendar",
                    "queue triggers do not follow calendars".into(),
                ));
            }
            let queue = spec.queue.clone().ok_or_else(|| required("queue"))?;
            check_queue_name(&queue).map_err(|err| invalid("queue", err.reason))?;
            let min_items = spec.min_items.unwrap_or(1);
            if !(1..=1_000_000).contains(&min_items) {
                return Err(invalid("min_items", "must be between 1 and 1000000".into()));
            }
            let max_runs = spec.max_runs.unwrap_or(1);
            if !(1..=1000).contains(&max_runs) {
                return Err(invalid("max_runs", "must be between 1 and 1000".into()));
            }
            return Ok(Timing::Queue(QueueWatch {
                queue,
                min_items,
                max_runs,
            }));
        }
        other => {
            return Err(invalid(
                "kind",
                format!("{other:?} is not one of cron, interval, once, weekly, window, queue"),
            ));
        }
    };
    Ok(Timing::Schedule(schedule))
}

/// The calendar a spec follows.
pub(crate) async fn calendar_of(store: &Store, spec: &TriggerSpec) -> Result<Obeyed, ApiError> {
    let invalid = |field: &str, reason: String| ApiError::invalid(InvalidField::new(field, reason));
    Ok(match &spec.calendar {
        None => None,
        Some(name) => {
            let record = store.calendar(name).await.map_err(|err| match err {
                StoreError::NotFound => invalid("calendar", format!("no calendar named {name:?}")),
                err => err.into(),
            })?;
            let off_day = match spec.off_day.as_deref() {
                None | Some("skip") => OffDay::Skip,
                Some("next_working_day") => OffDay::NextWorkingDay,
                Some(other) => {
                    return Err(invalid(
                        "off_day",
                        format!("{other:?} is not skip or next_working_day"),
                    ));
                }
            };
            Some((calendar_rules(&stored_calendar(&record)?)?, off_day))
        }
    })
}

/// The days of the week a spec names, Monday first.
fn days_of(spec: &TriggerSpec) -> Result<[bool; 7], ApiError> {
    let names = spec.days.as_deref().ok_or_else(|| {
        ApiError::invalid(InvalidField::new(
            "days",
            format!("is required for a {} trigger", spec.kind),
        ))
    })?;
    let days = day_set("days", names)?;
    if !days.contains(&true) {
        return Err(ApiError::invalid(InvalidField::new(
            "days",
            "give at least one day",
        )));
    }
    Ok(days)
}

/// The days named `mon` … `sun` in the field `field`, Monday first.
fn day_set(field: &str, names: &[String]) -> Result<[bool; 7], ApiError> {
    let mut days = [false; 7];
    for day in names {
        let index = DAYS
            .iter()
            .position(|name| day.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                ApiError::invalid(InvalidField::new(
                    field,
                    format!("{day:?} is not one of mon … sun"),
                ))
            })?;
        days[index] = true;
    }
    Ok(days)
}

/// A local time `HH:MM` or `HH:MM:SS` of the field `field`.
fn time_of(field: &str, text: &str) -> Result<Time, ApiError> {
    text.parse::<Time>().map_err(|_| {
        ApiError::invalid(InvalidField::new(
            field,
            format!("{text:?} is not a time HH:MM"),
        ))
    })
}

/// When a trigger should next be looked at from `now`: its next firing — or for a window,
/// its next opening or closing (now, if it is open and just enabled); a queue trigger at
/// once, to count what its queue holds.
pub(crate) fn next_look(
    timing: &Timing,
    calendar: &Obeyed,
    now: Timestamp,
    just_enabled: bool,
) -> Option<Timestamp> {
    let calendar = calendar
        .as_ref()
        .map(|(calendar, off_day)| (calendar, *off_day));
    match timing {
        Timing::Queue(_) => Some(now),
        Timing::Schedule(Schedule::Window(window)) => match window.state(now) {
            (true, _) if just_enabled => Some(now),
            (_, change) => change,
        },
        Timing::Schedule(schedule) => schedule.next_with_calendar(now, calendar),
    }
}

pub(crate) fn check_policies(spec: &TriggerSpec) -> Result<(), ApiError> {
    let invalid = |field: &str, reason: &str| ApiError::invalid(InvalidField::new(field, reason));
    if let Some(overlap) = spec.overlap.as_deref()
        && !["skip", "queue_one", "allow", "replace"].contains(&overlap)
    {
        return Err(invalid(
            "overlap",
            "must be skip, queue_one, allow or replace",
        ));
    }
    if let Some(missed) = spec.missed.as_deref()
        && !["skip", "run_once", "run_all"].contains(&missed)
    {
        return Err(invalid("missed", "must be skip, run_once or run_all"));
    }
    if spec.jitter_seconds.is_some_and(|jitter| 3600 < jitter) {
        return Err(invalid("jitter_seconds", "must be at most 3600"));
    }
    if spec.max_consecutive_failures == Some(0) {
        return Err(invalid("max_consecutive_failures", "must be at least 1"));
    }
    check_args("args", spec.args.as_deref().unwrap_or_default()).map_err(ApiError::invalid)?;
    check_env(spec.env.as_ref().unwrap_or(&BTreeMap::new())).map_err(ApiError::invalid)?;
    Ok(())
}

pub(crate) fn stored_spec(record: &TriggerRecord) -> Result<TriggerSpec, ApiError> {
    serde_json::from_str(&record.spec).map_err(ApiError::internal)
}

/// The rules of a calendar spec.
pub(crate) fn calendar_rules(spec: &CalendarSpec) -> Result<schedule::Calendar, ApiError> {
    Ok(schedule::Calendar {
        working_days: day_set(
            "working_days",
            spec.working_days.as_deref().unwrap_or_default(),
        )?,
        excluded: spec.excluded_dates.iter().flatten().copied().collect(),
    })
}

pub(crate) fn stored_calendar(record: &CalendarRecord) -> Result<CalendarSpec, ApiError> {
    serde_json::from_str(&record.spec).map_err(ApiError::internal)
}
