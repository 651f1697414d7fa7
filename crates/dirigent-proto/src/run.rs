//! Runs — one execution of a robot on one agent — and their output, on the wire.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a run is in its life. `queued`, `starting`, `running`, `paused` and `stopping` are
/// active; the others are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for an agent with free capacity (or for the robot's `max_parallel`).
    Queued,
    /// Sent to an agent, not yet reported running.
    Starting,
    Running,
    /// Stopped with SIGSTOP; resumes with SIGCONT.
    Paused,
    /// A safe stop is under way: SIGTERM sent, SIGKILL after the grace period.
    Stopping,
    /// Exited with status 0.
    Succeeded,
    /// Exited with another status, by a signal it did not ask for, or could not start.
    Failed,
    /// Ended by a safe stop within its grace period.
    Stopped,
    /// Ended by a force stop, or by a safe stop that ran out of grace.
    Killed,
    /// Stopped because it ran longer than the robot's `max_duration_seconds`.
    TimedOut,
    /// Its agent went silent past the deadline; its fate is unknown.
    Lost,
}

impl RunState {
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

    pub fn is_final(self) -> bool {
        !matches!(
            self,
            RunState::Queued
                | RunState::Starting
                | RunState::Running
                | RunState::Paused
                | RunState::Stopping
        )
    }
}

/// A run as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Run {
    pub id: String,
    pub robot: String,
    /// The agent it was placed on; none while queued.
    pub agent: Option<String>,
    pub state: RunState,
    /// Why it is in this state, when there is more to say (why it waits, why it failed).
    pub reason: Option<String>,
    /// A safe stop was asked for; a robot reads this with its run token.
    pub stop_requested: bool,
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Arguments appended to the robot's command for this run (given by its trigger).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables added to the robot's for this run (given by its trigger).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<Timestamp>,
}

/// One change of a run's state, with who or what caused it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunTransition {
    pub state: RunState,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// `user:NAME`, `agent:NAME`, `restart_policy`, `rule:…`.
    pub cause: String,
    pub reason: Option<String>,
}

/// `GET /api/v1/runs/{id}`: the run and its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: Run,
    pub transitions: Vec<RunTransition>,
}

/// `POST /api/v1/runs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRunRequest {
    pub robot: String,
    /// Appended to the robot's command for this run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Added to (and overriding) the robot's environment for this run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of a run's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    /// Position in the run's output, from 1, without gaps.
    pub seq: u64,
    pub stream: Stream,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// The record's level (a structured record's own; `info` for stdout, `warn` for stderr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<crate::log::LogLevel>,
    /// A structured record's fields; its `text` is then its message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
    pub text: String,
}
