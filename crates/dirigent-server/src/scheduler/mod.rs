//! The schedule loop: sleeps until the earliest trigger is due (or a trigger changed), takes
//! each due firing in the database — so that, with several nodes, each happens once — records
//! it, and starts its run as the trigger's policies say. Missed firings after downtime follow
//! the trigger's `missed` policy; every firing, skip and miss is recorded with its reason.

mod definition;

use std::{collections::HashMap, sync::Arc, time::Duration};

use dirigent_domain::{
    robot::RobotMode,
    run::{Run, RunState},
    schedule::{self, Missed, Schedule},
};
use dirigent_proto::trigger::TriggerSpec;
use dirigent_store::{
    FiringRecord, FiringTake, NewFiring, Store, StoreError, Taken, TriggerRecord,
};
use jiff::{SignedDuration, Timestamp};
use tokio::sync::{Notify, mpsc};

pub(crate) use definition::{
    DAYS, Obeyed, QueueWatch, Timing, calendar_of, calendar_rules, definition, next_look,
    stored_calendar, stored_spec, timing,
};

use crate::{
    Clock,
    error::ApiError,
    fleet::{Cause, Fleet, FleetError, Launch},
};

/// Due triggers one transaction takes, at most.
const BATCH: u32 = 500;
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
    /// Runs that ended and are not yet looked at (taken by the loop when it starts).
    run_ends: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Run>>>,
}

impl Scheduler {
    /// A scheduler that fires only when told to ([`Scheduler::fire_due`]) and looks at
    /// ended runs only when told to ([`Scheduler::handle_run_ends`]); for tests.
    pub fn new(store: Store, fleet: Arc<Fleet>, clock: Arc<dyn Clock>) -> Arc<Scheduler> {
        let run_ends = fleet.run_ends();
        Arc::new(Scheduler {
            store,
            fleet,
            clock,
            wake: Arc::new(Notify::new()),
            run_ends: std::sync::Mutex::new(Some(run_ends)),
        })
    }

    /// Starts the loop: first the firings a stopped node had taken but not started, then
    /// the due ones, then sleep until the next. Beside it, a task that looks at each run
    /// that ends.
    pub fn start(store: Store, fleet: Arc<Fleet>, clock: Arc<dyn Clock>) -> Arc<Scheduler> {
        let scheduler = Scheduler::new(store, fleet, clock);
        let this = Arc::downgrade(&scheduler);
        if let Some(mut run_ends) = scheduler.take_run_ends() {
            let this = this.clone();
            tokio::spawn(async move {
                while let Some(run) = run_ends.recv().await {
                    let Some(scheduler) = this.upgrade() else {
                        return;
                    };
                    if let Err(err) = scheduler.run_ended(&run).await {
                        tracing::error!(run = run.id, ?err, "counting an ended run");
                    }
                }
            });
        }
        let wake = scheduler.wake.clone();
        tokio::spawn(async move {
            // What this node left in its earlier life (and nodes that left), before firing
            // anything; the firings of other dead nodes are the cluster's singleton duty.
            if let Some(scheduler) = this.upgrade()
                && let Err(err) = scheduler
                    .resume_unsettled(Timestamp::MIN, Some(scheduler.fleet.node()))
                    .await
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

    fn take_run_ends(&self) -> Option<mpsc::UnboundedReceiver<Run>> {
        self.run_ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// This node's metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        self.fleet.metrics()
    }

    /// A trigger changed: look again when the next one is due.
    pub fn changed(&self) {
        self.wake.notify_one();
    }

    /// Items of these queues became ready, now or later: their queue triggers look again.
    pub async fn queues_filled(&self, queues: &[&str]) -> Result<(), ApiError> {
        let now = self.clock.now();
        let mut woken = 0;
        for queue in queues {
            woken += self
                .store
                .wake_queue_triggers(Some(queue), None, now)
                .await?;
        }
        if 0 < woken {
            self.changed();
        }
        Ok(())
    }

    /// Items of some queues became ready: every queue trigger looks again.
    pub async fn some_queues_filled(&self) -> Result<(), ApiError> {
        let now = self.clock.now();
        if 0 < self.store.wake_queue_triggers(None, None, now).await? {
            self.changed();
        }
        Ok(())
    }

    /// Looks at the runs that ended since last asked; for a scheduler without its loop.
    pub async fn handle_run_ends(&self) -> Result<(), ApiError> {
        let mut ended = Vec::new();
        if let Some(run_ends) = self
            .run_ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
        {
            while let Ok(run) = run_ends.try_recv() {
                ended.push(run);
            }
        }
        for run in &ended {
            self.run_ended(run).await?;
        }
        Ok(())
    }

    /// A run ended: its robot's queue triggers look again (a run fewer, items released), and
    /// if a trigger started it, the trigger counts it — and disables itself after too many
    /// failures in a row.
    async fn run_ended(&self, run: &Run) -> Result<(), ApiError> {
        let now = self.clock.now();
        if 0 < self
            .store
            .wake_queue_triggers(None, Some(&run.robot), now)
            .await?
        {
            self.changed();
        }
        let failed = match run.state {
            RunState::Failed | RunState::TimedOut | RunState::Lost => true,
            RunState::Succeeded => false,
            _ => return Ok(()), // stopped or killed: no verdict on the robot
        };
        let Some(trigger_id) = self.store.trigger_of_run(&run.id).await? else {
            return Ok(());
        };
        let Some(failures) = self.store.count_trigger_run(&trigger_id, failed).await? else {
            return Ok(());
        };
        let trigger = self.store.trigger(&trigger_id).await?;
        let limit = stored_spec(&trigger)?.max_consecutive_failures;
        if let Some(limit) = limit
            && failed
            && limit <= failures
        {
            let reason = format!(
                "disabled after {failures} failed runs in a row (the last: {}); enable it to \
                 fire again",
                run.id
            );
            if self
                .store
                .disable_trigger(&trigger_id, &reason, Some(&run.id), now)
                .await?
            {
                tracing::warn!(trigger = trigger_id, reason, "trigger disabled");
            }
        }
        Ok(())
    }

    /// Fires every trigger due now, in batches (one transaction takes a batch); answers how
    /// many firings it took.
    pub async fn fire_due(&self) -> Result<usize, ApiError> {
        let mut taken = 0;
        loop {
            // Read per batch: what is recorded as fired carries the time it really was.
            let now = self.clock.now();
            let due = self.store.due_triggers(now, BATCH).await?;
            let full = due.len() == BATCH as usize;
            let (fired, handled) = self.fire_batch(due, now).await?;
            taken += fired;
            // A batch none of which could be handled would come back as it is.
            if !full || handled == 0 {
                return Ok(taken);
            }
        }
    }

    /// Fires a batch of due triggers; answers the firings taken and the triggers handled.
    async fn fire_batch(
        &self,
        due: Vec<TriggerRecord>,
        now: Timestamp,
    ) -> Result<(usize, usize), ApiError> {
        let (mut taken, mut handled) = (0, 0);
        let mut calendars: HashMap<(String, Option<String>), Obeyed> = HashMap::new();
        let mut scheduled = Vec::new();
        for trigger in due {
            let defined = stored_spec(&trigger).and_then(|spec| Ok((timing(&spec)?, spec)));
            let (timing, spec) = match defined {
                Ok(defined) => defined,
                Err(err) => {
                    self.disable_broken(&trigger, &err, now).await?;
                    handled += 1;
                    continue;
                }
            };
            let fired = match &timing {
                Timing::Queue(watch) => self.fire_queue(&trigger, &spec, watch, now).await,
                Timing::Schedule(Schedule::Window(window)) => {
                    self.fire_window(&trigger, &spec, window, now).await
                }
                Timing::Schedule(_) => {
                    let key = (
                        spec.calendar.clone().unwrap_or_default(),
                        spec.off_day.clone(),
                    );
                    let calendar = match calendars.get(&key) {
                        Some(calendar) => calendar.clone(),
                        None => match calendar_of(&self.store, &spec).await {
                            Ok(calendar) => calendars.entry(key).or_insert(calendar).clone(),
                            Err(err) => {
                                self.disable_broken(&trigger, &err, now).await?;
                                handled += 1;
                                continue;
                            }
                        },
                    };
                    scheduled.push((trigger, spec, timing, calendar));
                    continue;
                }
            };
            match fired {
                Ok(n) => (taken, handled) = (taken + n, handled + 1),
                Err(err) => tracing::error!(trigger = trigger.id, ?err, "firing a trigger"),
            }
        }
        let takes: Vec<FiringTake> = scheduled
            .iter()
            .filter_map(|(trigger, spec, timing, calendar)| match timing {
                Timing::Schedule(schedule) => Some(plan(trigger, spec, schedule, calendar, now)),
                Timing::Queue(_) => None,
            })
            .collect();
        let results = self
            .store
            .take_trigger_firings(&takes, self.fleet.node(), now)
            .await?;
        handled += takes.len();
        for ((trigger, spec, _, _), result) in scheduled.iter().zip(results) {
            let Some(result) = result else { continue };
            taken += result.recorded;
            for firing in &result.due {
                let late = firing.recorded_at.duration_since(firing.due_at);
                self.fleet
                    .metrics()
                    .observe_trigger_lateness(late.unsigned_abs());
                if let Err(err) = self.start_firing(trigger, spec, firing).await {
                    tracing::error!(trigger = trigger.id, ?err, "starting a firing's run");
                }
            }
        }
        Ok((taken, handled))
    }

    /// A trigger whose definition no longer holds (a calendar it follows is gone, say) is
    /// disabled, with the reason, rather than looked at again and again.
    async fn disable_broken(
        &self,
        trigger: &TriggerRecord,
        err: &ApiError,
        now: Timestamp,
    ) -> Result<(), ApiError> {
        let reason = format!("its definition no longer holds: {}", err.message);
        tracing::error!(trigger = trigger.id, reason, "trigger disabled");
        self.store
            .disable_trigger(&trigger.id, &reason, None, now)
            .await?;
        Ok(())
    }

    /// A queue trigger looks at its queue: runs start while ready items outnumber what the
    /// active runs take on (`min_items` each, `max_runs` at most). It then sleeps until items
    /// are added or released, a run of its robot ends, or a postponed item becomes ready.
    async fn fire_queue(
        &self,
        trigger: &TriggerRecord,
        spec: &TriggerSpec,
        watch: &QueueWatch,
        now: Timestamp,
    ) -> Result<usize, ApiError> {
        let Some(due_at) = trigger.next_fire_at else {
            return Ok(0);
        };
        let cap = watch.min_items.saturating_mul(watch.max_runs);
        let (ready, next_ready) = self.store.queue_readiness(&watch.queue, now, cap).await?;
        let active = self.active_runs_of(&trigger.robot).await?.len() as u64;
        let wanted = u64::from(watch.max_runs).min(ready / u64::from(watch.min_items));
        let to_start = wanted.saturating_sub(active);
        let next = (ready < u64::from(watch.min_items))
            .then_some(next_ready)
            .flatten();
        let mut firings = Vec::new();
        if 0 < to_start {
            let robot = self.store.robot(&trigger.robot).await;
            let manual = match &robot {
                Ok(robot) if robot.mode != RobotMode::Auto => Some(format!(
                    "the robot is in manual mode ({}); triggers leave it alone",
                    robot.mode_reason.as_deref().unwrap_or_default()
                )),
                _ => None,
            };
            match manual {
                // Recorded once, not at every item added while the robot stays manual.
                Some(reason) => {
                    let last = self.store.trigger_firings(&trigger.id, 1).await?;
                    if last.first().and_then(|firing| firing.reason.as_ref()) != Some(&reason) {
                        firings.push(NewFiring {
                            due_at: now,
                            outcome: "skipped",
                            reason: Some(reason),
                        });
                    }
                }
                None => {
                    let reason = format!(
                        "{ready} items ready in queue {:?}, {active} runs active",
                        watch.queue
                    );
                    firings.extend((0..to_start).map(|_| NewFiring {
                        due_at: now,
                        outcome: due_outcome(spec),
                        reason: Some(reason.clone()),
                    }));
                }
            }
        }
        let take = FiringTake {
            trigger_id: trigger.id.clone(),
            due_at,
            next,
            firings,
        };
        let Some(taken) = self.take_one(take, now).await? else {
            return Ok(0);
        };
        for firing in &taken.due {
            self.start_firing(trigger, spec, firing).await?;
        }
        Ok(taken.recorded)
    }

    /// A window opened (start the robot unless it runs) or closed (safe-stop its runs).
    async fn fire_window(
        &self,
        trigger: &TriggerRecord,
        spec: &TriggerSpec,
        window: &schedule::Window,
        now: Timestamp,
    ) -> Result<usize, ApiError> {
        let Some(due_at) = trigger.next_fire_at else {
            return Ok(0);
        };
        let (open, next) = window.state(now);
        let take = FiringTake {
            trigger_id: trigger.id.clone(),
            due_at,
            next,
            firings: vec![NewFiring {
                due_at,
                outcome: due_outcome(spec),
                reason: Some(
                    if open {
                        "the window opened"
                    } else {
                        "the window closed"
                    }
                    .into(),
                ),
            }],
        };
        let Some(taken) = self.take_one(take, now).await? else {
            return Ok(0);
        };
        for firing in &taken.due {
            if open {
                self.start_firing(trigger, spec, firing).await?;
                continue;
            }
            let cause = Cause::Trigger {
                trigger: trigger.id.clone(),
                firing: firing.id,
            };
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
        Ok(taken.recorded)
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
        if let Some(mode) = self.fleet.maintenance().await? {
            return Ok(settle("skipped", Some(mode.refusal()), None).await?);
        }
        let active = self.active_runs_of(&trigger.robot).await?;
        // A queue trigger counted the active runs already.
        let overlap = match spec.kind.as_str() {
            "queue" => "allow",
            _ => spec.overlap.as_deref().unwrap_or("skip"),
        };
        if !active.is_empty() {
            let queued = active
                .iter()
                .any(|run| run.state == dirigent_domain::run::RunState::Queued);
            let skip = match overlap {
                "allow" => None,
                "replace" => {
                    // Safe-stop what runs (without taking the robot out of auto mode).
                    for run in &active {
                        let cause = Cause::Trigger {
                            trigger: trigger.id.clone(),
                            firing: firing.id,
                        };
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
        let cause = Cause::Trigger {
            trigger: trigger.id.clone(),
            firing: firing.id,
        };
        let launch = Launch {
            args: spec.args.clone().unwrap_or_default(),
            env: spec.env.clone().unwrap_or_default(),
        };
        // The run and the firing's settlement are stored together; a firing that another
        // node settled meanwhile starts nothing here.
        match self.fleet.start_run(&trigger.robot, cause, launch).await {
            Ok(_) | Err(FleetError::Store(StoreError::Stale)) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Takes the firings of one trigger, unless another node took them first.
    async fn take_one(&self, take: FiringTake, now: Timestamp) -> Result<Option<Taken>, ApiError> {
        let mut answers = self
            .store
            .take_trigger_firings(&[take], self.fleet.node(), now)
            .await?;
        Ok(answers.pop().flatten())
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

    /// Settles the firings that stopped nodes took (nodes silent since `alive_after`, and
    /// `earlier_life`): those whose run exists as started, the others by starting them now.
    pub async fn resume_unsettled(
        &self,
        alive_after: Timestamp,
        earlier_life: Option<&str>,
    ) -> Result<(), ApiError> {
        for firing in self
            .store
            .unsettled_firings(alive_after, earlier_life)
            .await?
        {
            let label = Cause::Trigger {
                trigger: firing.trigger_id.clone(),
                firing: firing.id,
            }
            .label();
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

/// What a schedule's due firing of a trigger takes: the firing due at `trigger`'s next fire
/// time and any it missed by `now` (recorded as the `missed` policy says), and its next fire
/// time after `now`, jittered.
fn plan(
    trigger: &TriggerRecord,
    spec: &TriggerSpec,
    schedule: &Schedule,
    calendar: &Obeyed,
    now: Timestamp,
) -> FiringTake {
    let due_at = trigger.next_fire_at.unwrap_or(now);
    let calendar = calendar
        .as_ref()
        .map(|(calendar, off_day)| (calendar, *off_day));
    let mut due = vec![due_at];
    due.extend(
        schedule
            .preview(due_at, MAX_MISSED, calendar)
            .into_iter()
            .take_while(|at| *at <= now),
    );
    let late = ON_TIME < now.duration_since(due_at);
    let policy = missed_policy(spec);
    let to_fire: Vec<Timestamp> = if due.len() == 1 && !late {
        due.clone()
    } else {
        let last = due_at - SignedDuration::from_millis(1);
        schedule::missed_firings(schedule, calendar, last, now, policy, MAX_MISSED)
    };
    let firings = due
        .iter()
        .map(|at| match to_fire.contains(at) {
            true => NewFiring {
                due_at: *at,
                outcome: due_outcome(spec),
                reason: None,
            },
            false => NewFiring {
                due_at: *at,
                outcome: "missed",
                reason: Some(format!(
                    "not fired in time: looked at only at {now} (the orchestrator was down \
                     or busy); the missed policy {} skips it",
                    spec.missed.as_deref().unwrap_or("run_once")
                )),
            },
        })
        .collect();
    FiringTake {
        trigger_id: trigger.id.clone(),
        due_at,
        next: schedule
            .next_with_calendar(now, calendar)
            .map(|next| next + jitter(spec.jitter_seconds.unwrap_or(0))),
        firings,
    }
}

/// The outcome a firing due now records: `due` (its run is being started), or `dry_run`.
fn due_outcome(spec: &TriggerSpec) -> &'static str {
    match spec.dry_run {
        Some(true) => "dry_run",
        _ => "due",
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
