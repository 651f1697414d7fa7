//! Graphical sessions: the desktops (X servers) agents keep for robots that need one, as the
//! agent reports them and as the API shows them.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Its X server is coming up.
    Starting,
    /// Free for the next run.
    Ready,
    /// A run uses it.
    InUse,
    /// Being made anew: after a run, or after its X server died.
    Restarting,
    /// Its X server cannot be started; the reason says why.
    Failed,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Starting => "starting",
            SessionState::Ready => "ready",
            SessionState::InUse => "in_use",
            SessionState::Restarting => "restarting",
            SessionState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<SessionState> {
        [
            SessionState::Starting,
            SessionState::Ready,
            SessionState::InUse,
            SessionState::Restarting,
            SessionState::Failed,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

/// The graphical sessions an agent offers (in its hello).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOffer {
    pub count: u32,
    pub width: u32,
    pub height: u32,
    /// Why it offers none although asked to (`xvfb` is not installed, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// A session's state as its agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReport {
    /// 1, 2, … on its agent.
    pub number: u32,
    /// The X display, `:100`.
    pub display: Option<String>,
    pub width: u32,
    pub height: u32,
    pub state: SessionState,
    pub run_id: Option<String>,
    pub reason: Option<String>,
    pub at: Timestamp,
}

/// A graphical session, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Session {
    /// `AGENT/NUMBER`.
    pub id: String,
    pub agent: String,
    pub number: u32,
    /// The X display on its agent's machine, `:100`.
    pub display: Option<String>,
    pub width: u32,
    pub height: u32,
    pub state: SessionState,
    /// Whether its agent is connected: otherwise the state is the last one it reported.
    pub agent_online: bool,
    /// The run using it.
    pub run_id: Option<String>,
    pub reason: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// A session with its history, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionDetail {
    #[serde(flatten)]
    pub session: Session,
    pub history: Vec<SessionChange>,
}

/// One change of a session's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionChange {
    pub state: SessionState,
    pub run_id: Option<String>,
    pub reason: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
}

/// A frame of a run's screen: a thumbnail taken while it ran, or the screen it ended on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunFrame {
    /// Its number within the run (`GET /runs/{id}/frames/{seq}` is its PNG).
    pub seq: u64,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// The screen the run ended on.
    pub last: bool,
    /// The PNG's size.
    pub bytes: u64,
}
