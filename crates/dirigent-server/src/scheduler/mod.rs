//! The schedule loop: sleeps until the earliest trigger is due (or a trigger changed), takes
//! each due firing in the database — so that, with several nodes, each happens once — records
//! it, and starts its run as the trigger's policies say. Missed firings after downtime follow
//! the trigger's `missed` policy; every firing, skip and miss is recorded with its reason.

mod definition;

use std::{sync::Arc, time::Duration};

use dirigent_domain::{
    robot::RobotMode,
    schedule::{self, Missed, Schedule},
};
use dirigent_proto::trigger::TriggerSpec;
use dirigent_store::{FiringRecord, Store, StoreError, TriggerRecord};
use jiff::{SignedDuration, Timestamp};
use tokio::sync::Notify;

pub(crate) use definition::{
    DAYS, calendar_rules, definition, next_look, stored_calendar, stored_spec,
};

use crate::{
    Clock,
    error::ApiError,
    fleet::{Cause, Fleet},
};

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
            let active = self.active_runs_of(&trigger.robot).await?;
            for run in &active {
                let stop = dirigent_domain::run::Operation::Stop;
                self.fleet.operate(&run.id, stop, cause.clone()).await?;
            }
            let stopped = active.len();
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
        let active = self.active_runs_of(&trigger.robot).await?;
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

    /// The robot's queued and running runs.
    async fn active_runs_of(
        &self,
        robot: &str,
    ) -> Result<Vec<dirigent_domain::run::Run>, ApiError> {
        let query = dirigent_store::RunQuery {
            robot: Some(robot),
            active_only: true,
            limit: 10_000,
        };
        Ok(self.store.runs(&query).await?)
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
