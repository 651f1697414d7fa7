//! Activities on agents as the fleet carries them: queued with the agent command that takes
//! them there, and moved on by what the agent reports (started, output, ended). An end is
//! stored once (compare-and-set on the state), written to the audit log, and settles the
//! fan-out it belongs to. The orchestrator's maintenance switch lives here too.

use std::sync::Arc;

use dirigent_domain::{
    activity::{State, fan_out_state},
    agent::Agent,
};
use dirigent_proto::{
    activity::Outcome,
    link::{AgentCommand, AgentEvent},
};
use dirigent_store::{ActivityRecord, AuditRecord, NewActivity, StoreError};
use jiff::{SignedDuration, Timestamp};

use super::{Fleet, FleetError, FleetEvent, FleetResult};

/// A running activity whose agent has not reported its end this long after its deadline is
/// timed out by the orchestrator.
const END_GRACE: SignedDuration = SignedDuration::from_secs(30);
/// What an activity's output and reason keep of a longer text.
const MAX_REASON: usize = 2000;
/// The switch that holds the maintenance mode.
const MAINTENANCE: &str = "maintenance";

/// Maintenance as it is switched on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceMode {
    pub reason: String,
    pub by: String,
    pub since: Timestamp,
}

impl MaintenanceMode {
    /// Why a start is refused.
    pub fn refusal(&self) -> String {
        let why = match self.reason.is_empty() {
            true => String::new(),
            false => format!(": {}", self.reason),
        };
        format!(
            "the orchestrator is in maintenance since {} ({} switched it on{why}); no new run starts",
            self.since, self.by
        )
    }
}

impl Fleet {
    /// Stores new activities (a fan-out with its children), queues their agents' commands,
    /// and sends those at once to the agents connected here.
    pub(crate) async fn queue_activities(
        self: &Arc<Fleet>,
        activities: Vec<NewActivity>,
    ) -> FleetResult<()> {
        self.store.insert_activities(&activities).await?;
        for new in &activities {
            if let Ok(record) = self.store.activity(&new.record.id).await
                && let (Some(agent), Some(id)) = (record.agent_id, record.command_id)
            {
                self.deliver(agent, id).await?;
            }
            self.activity_changed(&new.record.id);
        }
        Ok(())
    }

    /// Tells listeners that an activity's state changed.
    pub(crate) fn activity_changed(&self, id: &str) {
        self.publish(FleetEvent::Activity {
            id: id.to_owned(),
            output: false,
        });
    }

    /// Applies what an agent reports of an activity.
    pub(crate) async fn activity_event(
        self: &Arc<Fleet>,
        agent: &Agent,
        event: AgentEvent,
    ) -> FleetResult<()> {
        // Only the agent an activity was sent to speaks for it.
        let (AgentEvent::ActivityStarted { id, .. }
        | AgentEvent::ActivityOutput { id, .. }
        | AgentEvent::ActivityEnded { id, .. }) = &event
        else {
            return Ok(());
        };
        match self.store.activity(id).await {
            Ok(activity) if activity.agent_id == Some(agent.id) => {}
            Ok(_) | Err(StoreError::NotFound) => {
                tracing::warn!(
                    agent = agent.name,
                    activity = id,
                    "ignoring an event of an activity not sent to this agent"
                );
                return Ok(());
            }
            Err(err) => return Err(err.into()),
        }
        match event {
            AgentEvent::ActivityStarted { id, at } => {
                if self.store.start_activity(&id, at, None).await? {
                    self.settle_parent_start(&id, at).await?;
                } else if self.is_ended(&id).await? {
                    // It ended here (cancelled or timed out) before the agent took it.
                    self.send(agent.id, AgentCommand::CancelActivity { id: id.clone() })
                        .await?;
                }
                self.activity_changed(&id);
            }
            AgentEvent::ActivityOutput { id, lines } => {
                let records: Vec<_> = lines
                    .into_iter()
                    .map(|line| crate::logs::activity_record(&id, Some(&agent.name), line))
                    .collect();
                self.store.add_logs(&records).await?;
                self.publish(FleetEvent::Activity { id, output: true });
                self.publish(FleetEvent::Logged);
            }
            AgentEvent::ActivityEnded {
                id,
                at,
                outcome,
                result,
                reason,
            } => {
                let result = result.map(|value| value.to_string());
                self.end_activity(&id, outcome_state(outcome), reason, result, at)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// After an agent's sync: its activities that it took (their command is at or below the
    /// last it applied) and no longer holds were lost with an earlier life of it.
    pub(crate) async fn activities_synced(
        self: &Arc<Fleet>,
        agent: &Agent,
        live: &[String],
        last_applied_command: u64,
    ) -> FleetResult<()> {
        let now = self.clock.now();
        for activity in self.store.active_activities(Some(agent.id)).await? {
            let taken = activity
                .command_id
                .is_some_and(|id| id <= last_applied_command);
            if taken && !live.contains(&activity.id) {
                let reason = "the agent restarted while it held this activity".to_owned();
                self.end_activity(&activity.id, State::Failed, Some(reason), None, now)
                    .await?;
            }
        }
        Ok(())
    }

    /// Ends an activity unless it has ended; records the end in the audit log, tells
    /// listeners, and settles its fan-out. Answers it as ended, or `None`.
    pub(crate) async fn end_activity(
        self: &Arc<Fleet>,
        id: &str,
        state: State,
        reason: Option<String>,
        result: Option<String>,
        at: Timestamp,
    ) -> FleetResult<Option<ActivityRecord>> {
        let reason = reason.map(|text| bounded(&text, MAX_REASON));
        let Some(ended) = self
            .store
            .end_activity(id, state, reason.as_deref(), result.as_deref(), at)
            .await?
        else {
            return Ok(None);
        };
        self.store.insert_audit(&[audit_record(&ended)]).await?;
        self.activity_changed(id);
        if let Some(parent) = &ended.parent {
            self.settle_parent_end(parent, at).await?;
        }
        Ok(Some(ended))
    }

    /// Cancels an activity: one not started ends at once (its agent drops it, or stops it if
    /// it started meanwhile); one running on an agent is killed there, and ends when the
    /// agent says so. A fan-out cancels its children.
    pub(crate) async fn cancel_activity(
        self: &Arc<Fleet>,
        activity: &ActivityRecord,
        by: &str,
    ) -> FleetResult<()> {
        let now = self.clock.now();
        let reason = Some(format!("cancelled by {by}"));
        for child in self.store.activity_children(&activity.id).await? {
            Box::pin(self.cancel_activity(&child, by)).await?;
        }
        match (activity.state, activity.agent_id) {
            (State::Running, Some(agent)) => {
                self.send(
                    agent,
                    AgentCommand::CancelActivity {
                        id: activity.id.clone(),
                    },
                )
                .await?;
            }
            (State::Queued, _) | (State::Running, None) => {
                self.end_activity(&activity.id, State::Cancelled, reason, None, now)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Times out what is past its deadline; answers when the next one falls due.
    pub(crate) async fn expire_activities(self: &Arc<Fleet>) -> FleetResult<Option<Timestamp>> {
        let now = self.clock.now();
        let mut next: Option<Timestamp> = None;
        for activity in self.store.active_activities(None).await? {
            let on_agent_running = activity.agent_id.is_some() && activity.state == State::Running;
            let fan_out = activity.is_fan_out();
            let due = match on_agent_running {
                // Its agent times it out; the orchestrator only if the agent stays silent.
                true => activity.deadline().saturating_add(END_GRACE).unwrap_or(now),
                false => activity.deadline(),
            };
            if fan_out {
                continue;
            }
            if now < due {
                next = Some(next.map_or(due, |next| next.min(due)));
                continue;
            }
            let reason = match (activity.state, activity.agent_id) {
                (State::Queued, Some(_)) => format!(
                    "not taken by its agent within {} s{}",
                    activity.timeout.as_secs(),
                    activity
                        .reason
                        .as_deref()
                        .map(|why| format!(" ({why})"))
                        .unwrap_or_default()
                ),
                (State::Running, Some(_)) => {
                    "its agent did not report its end by the deadline".to_owned()
                }
                _ => format!("not done within {} s", activity.timeout.as_secs()),
            };
            if let Some(ended) = self
                .end_activity(&activity.id, State::TimedOut, Some(reason), None, now)
                .await?
                && let (Some(agent), State::Running) = (ended.agent_id, activity.state)
            {
                self.send(
                    agent,
                    AgentCommand::CancelActivity {
                        id: activity.id.clone(),
                    },
                )
                .await?;
            }
        }
        Ok(next)
    }

    /// Marks an activity this node runs itself as running; false if it ended meanwhile.
    pub(crate) async fn start_activity_here(&self, id: &str) -> FleetResult<bool> {
        let started = self
            .store
            .start_activity(id, self.clock.now(), Some(&self.node))
            .await?;
        if started {
            self.activity_changed(id);
        }
        Ok(started)
    }

    /// At start: the activities this node was running itself when it stopped ended with it.
    pub(crate) async fn recover_activities(self: &Arc<Fleet>) -> FleetResult<()> {
        let now = self.clock.now();
        for activity in self.store.active_activities(None).await? {
            if activity.agent_id.is_none() && activity.node.as_deref() == Some(self.node.as_str()) {
                let reason = "the orchestrator node restarted while it held this activity";
                self.end_activity(
                    &activity.id,
                    State::Failed,
                    Some(reason.to_owned()),
                    None,
                    now,
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Whether an activity whose agent command is queued is still to be sent.
    pub(crate) async fn activity_still_wanted(&self, id: &str) -> FleetResult<bool> {
        Ok(!self.is_ended(id).await?)
    }

    async fn is_ended(&self, id: &str) -> FleetResult<bool> {
        match self.store.activity(id).await {
            Ok(activity) => Ok(activity.state.is_final()),
            Err(StoreError::NotFound) => Ok(true),
            Err(err) => Err(err.into()),
        }
    }

    async fn settle_parent_start(&self, child: &str, at: Timestamp) -> FleetResult<()> {
        let activity = self.store.activity(child).await?;
        if let Some(parent) = &activity.parent
            && self.store.start_activity(parent, at, None).await?
        {
            self.activity_changed(parent);
        }
        Ok(())
    }

    async fn settle_parent_end(self: &Arc<Fleet>, parent: &str, at: Timestamp) -> FleetResult<()> {
        let states: Vec<State> = self
            .store
            .activity_children(parent)
            .await?
            .iter()
            .map(|child| child.state)
            .collect();
        if let Some((state, reason)) = fan_out_state(&states) {
            Box::pin(self.end_activity(parent, state, reason, None, at)).await?;
        }
        Ok(())
    }

    /// Maintenance, if it is on.
    pub async fn maintenance(&self) -> FleetResult<Option<MaintenanceMode>> {
        Ok(self
            .store
            .switch(MAINTENANCE)
            .await?
            .map(|switch| MaintenanceMode {
                reason: switch.value,
                by: switch.changed_by,
                since: switch.changed_at,
            }))
    }

    /// Switches maintenance on (with why) or off.
    pub async fn set_maintenance(&self, on: Option<&str>, by: &str) -> FleetResult<()> {
        self.store
            .set_switch(MAINTENANCE, on, by, self.clock.now())
            .await?;
        Ok(())
    }

    /// Refuses a start while in maintenance.
    pub(crate) async fn refuse_in_maintenance(&self) -> FleetResult<()> {
        match self.maintenance().await? {
            Some(mode) => Err(FleetError::Maintenance(mode.refusal())),
            None => Ok(()),
        }
    }
}

fn outcome_state(outcome: Outcome) -> State {
    match outcome {
        Outcome::Succeeded => State::Succeeded,
        Outcome::Failed => State::Failed,
        Outcome::TimedOut => State::TimedOut,
        Outcome::Cancelled => State::Cancelled,
    }
}

fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The audit record of an activity's end: who asked what of which target, with which
/// arguments (secrets redacted), and how it ended.
fn audit_record(activity: &ActivityRecord) -> AuditRecord {
    let why = activity
        .reason
        .as_deref()
        .map(|reason| format!(" — {reason}"))
        .unwrap_or_default();
    AuditRecord {
        id: 0,
        at: activity.ended_at.unwrap_or(activity.created_at),
        actor: format!("user:{}", activity.requested_by),
        action: bounded(
            &format!("ACTIVITY {} {}{why}", activity.operation, activity.args),
            1000,
        ),
        target: format!("activity:{} on {}", activity.id, activity.target),
        address: String::new(),
        outcome: activity.state.as_str().to_owned(),
        status: 0,
        changes: None,
        resources: match activity.agent_id {
            Some(_) => vec![
                format!("activity:{}", activity.id),
                format!("agent:{}", activity.target),
            ],
            None => vec![format!("activity:{}", activity.id)],
        },
    }
}
