//! Trigger definitions: from a stored spec to the schedule it follows and the calendar it
//! obeys, with every field checked and named when wrong.

use dirigent_domain::{
    InvalidField,
    schedule::{self, Cron, OffDay, Schedule},
};
use dirigent_proto::trigger::{CalendarSpec, TriggerSpec};
use dirigent_store::{CalendarRecord, Store, StoreError, TriggerRecord};
use jiff::{SignedDuration, Timestamp, civil::Time, tz::TimeZone};

use crate::error::ApiError;

/// Days of the week as triggers and calendars name them, Monday first.
pub(crate) const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// The schedule of a spec, and the calendar it follows.
pub(crate) async fn definition(
    store: &Store,
    spec: &TriggerSpec,
) -> Result<(Schedule, Option<(schedule::Calendar, OffDay)>), ApiError> {
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
        other => {
            return Err(invalid(
                "kind",
                format!("{other:?} is not one of cron, interval, once, weekly, window"),
            ));
        }
    };
    let calendar = match &spec.calendar {
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
    };
    check_policies(spec)?;
    Ok((schedule, calendar))
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
/// its next opening or closing (now, if it is open and just enabled).
pub(crate) fn next_look(
    schedule: &Schedule,
    calendar: Option<(&schedule::Calendar, OffDay)>,
    now: Timestamp,
    just_enabled: bool,
) -> Option<Timestamp> {
    match schedule {
        Schedule::Window(window) => match window.state(now) {
            (true, _) if just_enabled => Some(now),
            (_, change) => change,
        },
        schedule => schedule.next_with_calendar(now, calendar),
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
