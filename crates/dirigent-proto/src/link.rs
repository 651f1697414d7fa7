//! The agent link: the frames an agent and the server exchange over the WebSocket at
//! `/agent/v1/connect`, as JSON text messages.
//!
//! Each side numbers what it sends (`id`, from 1, increasing) and the other acknowledges it.
//! After a reconnect the sender resends what was not acknowledged, and the receiver applies
//! only ids above the last one it applied: every event and command takes effect exactly once.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{
    activity::{AgentOperation, Mode, Outcome},
    run::Stream,
    session::{SessionOffer, SessionReport},
};

/// From agent to server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentFrame {
    /// First frame on every connection.
    Hello(Hello),
    Event {
        id: u64,
        event: AgentEvent,
    },
    /// Acknowledges the server's commands up to and including `id`.
    Ack {
        id: u64,
    },
    /// Sent after the resent events: the runs alive on the agent now, and its graphical
    /// sessions.
    Synced {
        live_runs: Vec<LiveRun>,
        #[serde(default)]
        sessions: Vec<SessionReport>,
        /// The activities it holds now (queued or running).
        #[serde(default)]
        live_activities: Vec<String>,
        /// The last command it applied: an activity whose command is at or below it, not
        /// ended and not live, was lost with an earlier life of the agent.
        #[serde(default)]
        last_applied_command: u64,
    },
    /// Answers a request of the server.
    Reply {
        id: u64,
        reply: AgentReply,
    },
    /// A part of a watched session's screen that changed (the whole screen first).
    Screen {
        watch: u64,
        x: u16,
        y: u16,
        /// A PNG, base64-encoded.
        png: String,
    },
}

/// From server to agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Answers `Hello`: the last event id the server applied.
    Welcome {
        last_event_id: u64,
    },
    Command {
        id: u64,
        command: AgentCommand,
    },
    /// Acknowledges the agent's events up to and including `id`.
    Ack {
        id: u64,
    },
    /// A question answered at once (a `Reply` with the same id), not journaled: lost with the
    /// connection, and then asked again by whoever wants the answer.
    Request {
        id: u64,
        request: AgentRequest,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AgentRequest {
    /// A screenshot of a graphical session.
    Screenshot {
        session: u32,
    },
    /// Make a graphical session anew; one in use only with `force` (its run's display dies).
    RestartSession {
        session: u32,
        force: bool,
    },
    /// An operator's input to a session they control.
    Input {
        session: u32,
        events: Vec<crate::session::InputEvent>,
    },
    /// Someone watches a session live: its screen's changes come as `Screen` frames with this
    /// watch number until `Unwatch` (or the connection ends).
    Watch {
        session: u32,
        watch: u64,
    },
    Unwatch {
        watch: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentReply {
    /// A PNG, base64-encoded.
    Screenshot {
        png: String,
    },
    /// Done as asked.
    Done,
    Failed {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub host: String,
    pub os_user: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: u32,
    pub version: String,
    /// The graphical sessions it offers.
    #[serde(default)]
    pub sessions: SessionOffer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveRun {
    pub run_id: String,
    pub pid: u32,
    pub paused: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AgentCommand {
    Start(StartSpec),
    Pause {
        run_id: String,
    },
    Resume {
        run_id: String,
    },
    /// Safe stop: SIGTERM to the group, SIGKILL after `grace_seconds`.
    Stop {
        run_id: String,
        grace_seconds: u32,
    },
    /// Force stop: SIGKILL to the group.
    Kill {
        run_id: String,
    },
    /// Run an activity; its timeout counts from when the agent takes it.
    Activity {
        id: String,
        mode: Mode,
        timeout_seconds: u32,
        operation: AgentOperation,
    },
    /// Cancel an activity: if it runs, its process group is killed.
    CancelActivity {
        id: String,
    },
}

/// Everything an agent needs to start a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartSpec {
    pub run_id: String,
    pub robot: String,
    pub argv: Vec<String>,
    pub working_dir: Option<String>,
    pub env: BTreeMap<String, String>,
    pub stop_grace_seconds: u32,
    pub max_duration_seconds: Option<u32>,
    /// The graphical session (its number on the agent) the run gets: `DISPLAY` and
    /// `XAUTHORITY` for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u32>,
    /// The run's token (`DIRIGENT_RUN_TOKEN`); the server does not keep it, so a start
    /// command sent again carries a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentEvent {
    Started {
        run_id: String,
        pid: u32,
        at: Timestamp,
        /// The SHA-256 (hex) of the token the robot was given: the one that works, when a
        /// start command was sent twice with different tokens.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_digest: Option<String>,
    },
    StartFailed {
        run_id: String,
        reason: String,
        at: Timestamp,
    },
    Paused {
        run_id: String,
        at: Timestamp,
    },
    Resumed {
        run_id: String,
        at: Timestamp,
    },
    Stopping {
        run_id: String,
        at: Timestamp,
    },
    Exited {
        run_id: String,
        at: Timestamp,
        exit_code: Option<i32>,
        signal: Option<i32>,
        ending: Ending,
        /// What else the run's reason should say (its output pipes lost, say).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    Output {
        run_id: String,
        lines: Vec<OutputLine>,
    },
    /// The agent's own log records.
    Logs {
        records: Vec<crate::log::OwnLog>,
    },
    /// A graphical session changed.
    Session(SessionReport),
    /// A frame of a run's screen: a thumbnail taken every few seconds while it runs, and its
    /// screen as it ended (`last`).
    Frame {
        run_id: String,
        at: Timestamp,
        /// A PNG, base64-encoded.
        png: String,
        last: bool,
    },
    ActivityStarted {
        id: String,
        at: Timestamp,
    },
    ActivityOutput {
        id: String,
        lines: Vec<OutputLine>,
    },
    ActivityEnded {
        id: String,
        at: Timestamp,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<serde_json::Value>,
        /// Why it failed, timed out or was cancelled.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// How a run's end came about, as the agent saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// It exited by itself.
    Natural,
    /// It exited within the grace period of a safe stop.
    Stopped,
    /// It was killed: force stop, or a safe stop out of grace.
    Killed,
    /// Its maximum duration ran out.
    TimedOut,
    /// The agent restarted and could not supervise it any more: its process group was killed
    /// (`signal` set) or it had ended meanwhile (exit status unknown).
    Abandoned,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputLine {
    pub seq: u64,
    pub stream: Stream,
    pub at: Timestamp,
    pub text: String,
}
