//! The schedule loop: sleeps until the earliest trigger is due (or a trigger changed), takes
//! each due firing in the database — so that, with several nodes, each happens once — records
//! it, and starts its run as the trigger's policies say. Missed firings after downtime follow
//! the trigger's `missed` policy; every firing, skip and miss is recorded with its reason.

use std::{sync::Arc, time::Duration};

use dirigent_domain::{
    InvalidField,
    robot::RobotMode,
    schedule::{self, Cron, Missed, OffDay, Schedule},
};
use dirigent_proto::trigger::{CalendarSpec, TriggerSpec};
use dirigent_store::{CalendarRecord, FiringRecord, Store, StoreError, TriggerRecord};
use jiff::{SignedDuration, Timestamp, civil::Time, tz::TimeZone};
use tokio::sync::Notify;

use crate::{
    Clock,
    error::ApiError,
    fleet::{Cause, Fleet},
};

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
    let invalid = |reason: String| ApiError::invalid(InvalidField::new("days", reason));
    let names = spec
        .days
        .as_deref()
        .ok_or_else(|| invalid(format!("is required for a {} trigger", spec.kind)))?;
    let mut days = [false; 7];
    for day in names {
        let index = DAYS
            .iter()
            .position(|name| day.eq_ignore_ascii_case(name))
            .ok_or_else(|| invalid(format!("{day:?} is not one of mon … sun")))?;
        days[index] = true;
    }
    if !days.contains(&true) {
        return Err(invalid("give at least one day".into()));
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
    let mut working_days = [false; 7];
    for day in spec.working_days.as_deref().unwrap_or_default() {
        let index = DAYS
            .iter()
            .position(|name| day.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                ApiError::invalid(InvalidField::new(
                    "working_days",
                    format!("{day:?} is not one of mon … sun"),
                ))
            })?;
        working_days[index] = true;
    }
    Ok(schedule::Calendar {
        working_days,
        excluded: spec.excluded_dates.iter().flatten().copied().collect(),
    })
}

pub(crate) fn stored_calendar(record: &CalendarRecord) -> Result<CalendarSpec, ApiError> {
    serde_json::from_str(&record.spec).map_err(ApiError::internal)
}

/// A due firing counts as on time within this; later, the trigger's `missed` policy decides.
const ON_TIME: SignedDuration = SignedDuration::from_secs(60);
/// Missed firings looked at per trigger, at most.
const MAX_MISSED: usize = 1000;

/// The schedule loop's handle.
pub struct Scheduler {
    store: Store,
    fleet: Arc<Fleet>,
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
}

impl Scheduler {
    /// A scheduler that fires only when told to ([`Scheduler::fire_due`]); for tests.
    pub fn new(store: Store, fleet: Arc<Fleet>, clock: Arc<dyn Clock>) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            store,
            fleet,
            clock,
            wake: Arc::new(Notify::new()),
        })
    }

    /// Starts the loop: first the firings a stopped node had taken but not started, then
    /// the due ones, then sleep until the next.
    pub fn start(store: Store, fleet: Arc<Fleet>, clock: Arc<dyn Clock>) -> Arc<Scheduler> {
        let scheduler = Scheduler::new(store, fleet, clock);
        let this = Arc::downgrade(&scheduler);
        let wake = scheduler.wake.clone();
        tokio::spawn(async move {
            if let Some(scheduler) = this.upgrade()
                && let Err(err) = scheduler.resume_unsettled().await
            {
                tracing::error!(?err, "resuming firings taken before a stop");
            }
            loop {
                let Some(scheduler) = this.upgrade() else {
                    return;
                };
                if let Err(err) = scheduler.fire_due().await {
                    tracing::error!(?err, "firing due triggers");
                }
                let wait = match scheduler.store.next_trigger_due().await {
                    Ok(Some(next)) => {
                        Duration::try_from(next.duration_since(scheduler.clock.now()))
                            .unwrap_or(Duration::ZERO)
                    }
                    Ok(None) => Duration::from_secs(3600),
                    Err(err) => {
                        tracing::warn!(%err, "finding the next trigger");
                        Duration::from_secs(5)
                    }
                };
                drop(scheduler);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = wake.notified() => {}
                }
            }
        });
        scheduler
    }

    /// A trigger changed: look again when the next one is due.
    pub fn changed(&self) {
        self.wake.notify_one();
    }

    /// Fires every trigger due now; answers how many firings it took.
    pub async fn fire_due(&self) -> Result<usize, ApiError> {
        let now = self.clock.now();
        let mut taken = 0;
        for trigger in self.store.due_triggers(now, 500).await? {
            match self.fire(&trigger, now).await {
                Ok(n) => taken += n,
                Err(err) => tracing::error!(trigger = trigger.id, ?err, "firing a trigger"),
            }
        }
        Ok(taken)
    }

    async fn fire(&self, trigger: &TriggerRecord, now: Timestamp) -> Result<usize, ApiError> {
        let Some(due_at) = trigger.next_fire_at else {
            return Ok(0);
        };
        let spec = stored_spec(trigger)?;
        let (schedule, calendar) = definition(&self.store, &spec).await?;
        let calendar = calendar
            .as_ref()
            .map(|(calendar, off_day)| (calendar, *off_day));
        if let Schedule::Window(window) = &schedule {
            return self.fire_window(trigger, &spec, window, due_at, now).await;
        }
        let mut due = vec![due_at];
        due.extend(
            schedule
                .preview(due_at, MAX_MISSED, calendar)
                .into_iter()
                .take_while(|at| *at <= now),
        );
        let late = ON_TIME < now.duration_since(due_at);
        let to_fire: Vec<Timestamp> = if due.len() == 1 && !late {
            due.clone()
        } else {
            let policy = missed_policy(&spec);
            let last = due_at - SignedDuration::from_millis(1);
            schedule::missed_firings(&schedule, calendar, last, now, policy, MAX_MISSED)
        };
        let mut records: Vec<(Timestamp, &str, Option<String>)> = due
            .iter()
            .map(|at| match to_fire.contains(at) {
                true => (*at, "due", None),
                false => (
                    *at,
                    "missed",
                    Some(
                        "missed while the orchestrator was down; the missed policy skips it"
                            .to_owned(),
                    ),
                ),
            })
            .collect();
        records.sort_by_key(|(at, _, _)| *at);
        let next = schedule
            .next_with_calendar(now, calendar)
            .map(|next| next + jitter(spec.jitter_seconds.unwrap_or(0)));
        let Some(firings) = self
            .store
            .take_trigger_firing(&trigger.id, due_at, next, &records, now)
            .await?
        else {
            return Ok(0); // another node took it
        };
        let mut taken = 0;
        for firing in firings.iter().filter(|firing| firing.outcome == "due") {
            self.start_firing(trigger, &spec, firing).await?;
            taken += 1;
        }
        Ok(taken)
    }

    /// A window opened (start the robot unless it runs) or closed (safe-stop its runs).
    async fn fire_window(
        &self,
        trigger: &TriggerRecord,
        spec: &TriggerSpec,
        window: &schedule::Window,
        due_at: Timestamp,
        now: Timestamp,
    ) -> Result<usize, ApiError> {
        let (open, next) = window.state(now);
        let Some(firings) = self
            .store
            .take_trigger_firing(&trigger.id, due_at, next, &[(due_at, "due", None)], now)
            .await?
        else {
            return Ok(0);
        };
        for firing in &firings {
            if open {
                self.start_firing(trigger, spec, firing).await?;
                continue;
            }
            let cause = Cause::Trigger(format!("{}#{}", trigger.id, firing.id));
            let mut stopped = 0;
            for run in self.store.active_runs().await? {
                if run.robot == trigger.robot {
                    self.fleet
                        .operate(
                            &run.id,
                            dirigent_domain::run::Operation::Stop,
                            cause.clone(),
                        )
                        .await?;
                    stopped += 1;
                }
            }
            let reason = format!("the window closed; {stopped} runs asked to stop safely");
            self.store
                .settle_firing(firing.id, "stopped", Some(&reason), None, self.clock.now())
                .await?;
        }
        Ok(firings.len())
    }

    /// Starts the run of a taken firing, unless the robot's mode or the overlap policy says
    /// not to; records what became of it.
    async fn start_firing(
        &self,
        trigger: &TriggerRecord,
        spec: &TriggerSpec,
        firing: &FiringRecord,
    ) -> Result<(), ApiError> {
        let now = self.clock.now();
        let settle = |outcome: &'static str, reason: Option<String>, run: Option<String>| {
            let store = self.store.clone();
            let id = firing.id;
            async move {
                store
                    .settle_firing(id, outcome, reason.as_deref(), run.as_deref(), now)
                    .await
            }
        };
        let robot = match self.store.robot(&trigger.robot).await {
            Ok(robot) => robot,
            Err(StoreError::NotFound) => {
                let reason = format!("robot {:?} no longer exists", trigger.robot);
                return Ok(settle("skipped", Some(reason), None).await?);
            }
            Err(err) => return Err(err.into()),
        };
        if robot.mode != RobotMode::Auto {
            let why = robot.mode_reason.unwrap_or_default();
            let reason = format!("the robot is in manual mode ({why}); triggers leave it alone");
            return Ok(settle("skipped", Some(reason), None).await?);
        }
        let active: Vec<_> = self
            .store
            .active_runs()
            .await?
            .into_iter()
            .filter(|run| run.robot == trigger.robot)
            .collect();
        let overlap = spec.overlap.as_deref().unwrap_or("skip");
        if !active.is_empty() {
            let queued = active
                .iter()
                .any(|run| run.state == dirigent_domain::run::RunState::Queued);
            let skip = match overlap {
                "allow" => None,
                "replace" => {
                    // Safe-stop what runs (without taking the robot out of auto mode).
                    for run in &active {
                        let cause = Cause::Trigger(format!("{}#{}", trigger.id, firing.id));
                        if let Err(err) = self
                            .fleet
                            .operate(&run.id, dirigent_domain::run::Operation::Stop, cause)
                            .await
                        {
                            tracing::warn!(run = run.id, ?err, "stopping a run to replace it");
                        }
                    }
                    None
                }
                "queue_one" if queued => Some("a run of the robot is queued already"),
                "queue_one" => None,
                _ => Some("a run of the robot is active"),
            };
            if let Some(reason) = skip {
                return Ok(settle(
                    "skipped",
                    Some(format!("{reason} (overlap: {overlap})")),
                    None,
                )
                .await?);
            }
        }
        let cause = Cause::Trigger(format!("{}#{}", trigger.id, firing.id));
        let run = self.fleet.start_run(&trigger.robot, cause).await?;
        settle("started", None, Some(run.id)).await?;
        Ok(())
    }

    /// Settles the firings a stopped node took: those whose run exists as started, the others
    /// by starting them now.
    pub async fn resume_unsettled(&self) -> Result<(), ApiError> {
        for firing in self.store.unsettled_firings().await? {
            let label = Cause::Trigger(format!("{}#{}", firing.trigger_id, firing.id)).label();
            if let Some(run) = self.store.run_started_by(&label).await? {
                self.store
                    .settle_firing(firing.id, "started", None, Some(&run), self.clock.now())
                    .await?;
                continue;
            }
            let trigger = match self.store.trigger(&firing.trigger_id).await {
                Ok(trigger) => trigger,
                Err(StoreError::NotFound) => continue,
                Err(err) => return Err(err.into()),
            };
            let spec = stored_spec(&trigger)?;
            self.start_firing(&trigger, &spec, &firing).await?;
        }
        Ok(())
    }
}

/// A random delay of up to `seconds`, at millisecond resolution.
fn jitter(seconds: u32) -> SignedDuration {
    if seconds == 0 {
        return SignedDuration::ZERO;
    }
    let random = getrandom::u64().unwrap_or(0);
    let millis = random % (u64::from(seconds) * 1000 + 1);
    SignedDuration::from_millis(i64::try_from(millis).unwrap_or(0))
}

fn missed_policy(spec: &TriggerSpec) -> Missed {
    match spec.missed.as_deref() {
        Some("skip") => Missed::Skip,
        Some("run_all") => Missed::RunAll {
            within: SignedDuration::from_secs(i64::from(spec.catch_up_seconds.unwrap_or(3600))),
        },
        _ => Missed::RunOnce,
    }
}
