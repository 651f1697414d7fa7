//! The life of a run: its states, which operations each allows, how an ending becomes a final
//! state, and what automation does afterwards (restart policy, backoff, crash-loop guard).

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

use crate::{
    agent::AgentId,
    robot::{CrashLoopGuard, RestartBackoff, RestartPolicy},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunState {
    Queued,
    Starting,
    Running,
    Paused,
    Stopping,
    Succeeded,
    Failed,
    Stopped,
    Killed,
    TimedOut,
    Lost,
}

impl RunState {
    pub const ALL: [RunState; 11] = [
        RunState::Queued,
        RunState::Starting,
        RunState::Running,
        RunState::Paused,
        RunState::Stopping,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Stopped,
        RunState::Killed,
        RunState::TimedOut,
        RunState::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Starting => "starting",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Stopping => "stopping",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Stopped => "stopped",
            RunState::Killed => "killed",
            RunState::TimedOut => "timed_out",
            RunState::Lost => "lost",
        }
    }

    pub fn parse(text: &str) -> Option<RunState> {
        RunState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
    }

    /// Whether the run has ended for good.
    pub fn is_final(self) -> bool {
        !self.is_active()
    }

    /// Whether the run is waiting, starting or alive (and counts against limits).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RunState::Queued
                | RunState::Starting
                | RunState::Running
                | RunState::Paused
                | RunState::Stopping
        )
    }

    /// Whether the run occupies a place on an agent.
    pub fn holds_agent(self) -> bool {
        self.is_active() && self != RunState::Queued
    }
}

/// A run: one execution of a robot on one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub id: String,
    pub robot: String,
    pub agent_id: Option<AgentId>,
    /// The name of the agent, when placed.
    pub agent: Option<String>,
    pub state: RunState,
    pub reason: Option<String>,
    pub stop_requested: bool,
    /// Created by automation (restart policy, triggers) rather than by an operator.
    pub automatic: bool,
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// A queued run is not placed before this time (restart backoff).
    pub not_before: Option<Timestamp>,
    /// Arguments appended to the robot's command for this run (from a trigger).
    pub args: Vec<String>,
    /// Environment variables added to the robot's for this run (from a trigger).
    pub env: BTreeMap<String, String>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    /// The graphical session (its number on the agent) the run was given.
    pub session: Option<u32>,
    /// Bumped by every stored change: a change is stored only over the version it was
    /// decided on (compare-and-set), so that two nodes never both apply one.
    pub version: u64,
}

/// One change of a run's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub state: RunState,
    pub at: Timestamp,
    /// `user:NAME`, `agent:NAME`, `restart_policy`, `rule:…`.
    pub cause: String,
    pub reason: Option<String>,
}

/// What an operator can do to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Pause,
    Resume,
    Stop,
    Kill,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Pause => "pause",
            Operation::Resume => "resume",
            Operation::Stop => "stop",
            Operation::Kill => "kill",
        }
    }
}

/// Whether `operation` makes sense for a run in `state`; the error says why not.
pub fn check_operation(state: RunState, operation: Operation) -> Result<(), String> {
    let allowed = match operation {
        Operation::Pause => state == RunState::Running,
        Operation::Resume => state == RunState::Paused,
        Operation::Stop | Operation::Kill => state.is_active(),
    };
    if allowed {
        return Ok(());
    }
    let wants = match operation {
        Operation::Pause => "only a running run can be paused",
        Operation::Resume => "only a paused run can be resumed",
        Operation::Stop | Operation::Kill => "the run has ended already",
    };
    Err(format!("{wants}; this one is {}", state.as_str()))
}

/// How a run's process ended, as its agent saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Natural,
    Stopped,
    Killed,
    TimedOut,
    /// Its agent restarted and could not supervise it any more: killed if still alive.
    Abandoned,
}

/// The final state of a run that ended this way.
pub fn final_state(ending: Ending, exit_code: Option<i32>, stop_requested: bool) -> RunState {
    match ending {
        Ending::Natural if stop_requested => RunState::Stopped,
        Ending::Natural if exit_code == Some(0) => RunState::Succeeded,
        Ending::Natural => RunState::Failed,
        Ending::Stopped => RunState::Stopped,
        Ending::Killed => RunState::Killed,
        Ending::TimedOut => RunState::TimedOut,
        Ending::Abandoned => RunState::Lost,
    }
}

/// Whether the restart policy starts the robot again after a run ended in `state`.
pub fn should_restart(policy: RestartPolicy, state: RunState) -> bool {
    match policy {
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => matches!(
            state,
            RunState::Failed | RunState::TimedOut | RunState::Lost
        ),
        RestartPolicy::Always => state.is_final(),
    }
}

/// The delay before the automatic restart after `consecutive_failures` failed runs in a row
/// (at least 1): the initial delay, doubled per further failure, capped.
pub fn restart_delay(backoff: RestartBackoff, consecutive_failures: u32) -> SignedDuration {
    let doublings = consecutive_failures.saturating_sub(1).min(31);
    let seconds = u64::from(backoff.initial_seconds).saturating_mul(1 << doublings);
    let seconds = seconds.min(u64::from(backoff.max_seconds));
    SignedDuration::from_secs(i64::try_from(seconds).unwrap_or(i64::MAX))
}

/// Whether one more automatic start at `now` would make more than `max_starts` within the
/// window, given the times of earlier automatic starts.
pub fn is_crash_loop(
    guard: CrashLoopGuard,
    earlier_auto_starts: &[Timestamp],
    now: Timestamp,
) -> bool {
    let window_start = now - SignedDuration::from_secs(i64::from(guard.window_seconds));
    let in_window = earlier_auto_starts
        .iter()
        .filter(|at| window_start < **at && **at <= now)
        .count();
    u32::try_from(in_window + 1).unwrap_or(u32::MAX) > guard.max_starts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_by_state() {
        use Operation::*;
        use RunState::*;
        let table = [
            (Running, Pause, true),
            (Paused, Pause, false),
            (Paused, Resume, true),
            (Running, Resume, false),
            (Queued, Stop, true),
            (Paused, Stop, true),
            (Stopping, Kill, true),
            (Succeeded, Stop, false),
            (Lost, Kill, false),
        ];
        for (state, operation, expect) in table {
            assert_eq!(
                check_operation(state, operation).is_ok(),
                expect,
                "{operation:?} on {state:?}"
            );
        }
        assert_eq!(
            check_operation(Succeeded, Stop).unwrap_err(),
            "the run has ended already; this one is succeeded"
        );
    }

    #[test]
    fn endings_become_final_states() {
        assert_eq!(
            final_state(Ending::Natural, Some(0), false),
            RunState::Succeeded
        );
        assert_eq!(
            final_state(Ending::Natural, Some(3), false),
            RunState::Failed
        );
        assert_eq!(final_state(Ending::Natural, None, false), RunState::Failed);
        assert_eq!(
            final_state(Ending::Natural, Some(143), true),
            RunState::Stopped
        );
        assert_eq!(final_state(Ending::Killed, None, true), RunState::Killed);
        assert_eq!(
            final_state(Ending::TimedOut, Some(0), true),
            RunState::TimedOut
        );
        assert_eq!(final_state(Ending::Abandoned, None, true), RunState::Lost);
    }

    #[test]
    fn restart_policies() {
        assert!(!should_restart(RestartPolicy::Never, RunState::Failed));
        assert!(should_restart(RestartPolicy::OnFailure, RunState::Failed));
        assert!(should_restart(RestartPolicy::OnFailure, RunState::Lost));
        assert!(!should_restart(
            RestartPolicy::OnFailure,
            RunState::Succeeded
        ));
        assert!(should_restart(RestartPolicy::Always, RunState::Succeeded));
        assert!(!should_restart(RestartPolicy::Always, RunState::Running));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let backoff = RestartBackoff {
            initial_seconds: 2,
            max_seconds: 30,
        };
        let delays: Vec<i64> = (1..=6)
            .map(|n| restart_delay(backoff, n).as_secs())
            .collect();
        assert_eq!(delays, [2, 4, 8, 16, 30, 30]);
        assert_eq!(restart_delay(backoff, 0).as_secs(), 2);
        assert_eq!(
            restart_delay(
                RestartBackoff {
                    initial_seconds: 1,
                    max_seconds: 86_400
                },
                100
            )
            .as_secs(),
            86_400
        );
    }

    #[test]
    fn crash_loop_counts_starts_in_the_window() {
        let guard = CrashLoopGuard {
            max_starts: 3,
            window_seconds: 60,
        };
        let at = |s: i64| Timestamp::from_second(1_000_000 + s).unwrap();
        let now = at(100);
        assert!(!is_crash_loop(guard, &[], now));
        assert!(!is_crash_loop(guard, &[at(50), at(60)], now));
        assert!(is_crash_loop(guard, &[at(50), at(60), at(90)], now));
        assert!(
            !is_crash_loop(guard, &[at(10), at(40), at(60), at(90)], now),
            "at(10) and at(40) left the window"
        );
    }
}
