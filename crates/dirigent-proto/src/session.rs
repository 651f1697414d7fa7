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

/// One step of an operator's input to a session they control. Coordinates are the screen's
/// pixels; buttons are X's (1 left, 2 middle, 3 right, 4 and 5 the wheel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InputEvent {
    /// The pointer moves to (`x`, `y`).
    Move { x: u16, y: u16 },
    /// A button pressed and released where the pointer is.
    Click { button: u8 },
    /// Text typed, character by character.
    Text { text: String },
    /// A key pressed and released, by its X name: `Return`, `Tab`, `Escape`, `BackSpace`,
    /// `Delete`, `Left`, `Right`, `Up`, `Down`, `Home`, `End`, `F1`…`F12`, or one character.
    Key { key: String },
}

/// What an operator sends to a session they control.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InputRequest {
    /// At most 1000.
    pub events: Vec<InputEvent>,
}

/// Taking over a session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlRequest {
    /// Pause the run using it while the operator has control (default), and resume it when
    /// they give it back.
    #[serde(default = "pause_by_default")]
    pub pause_run: bool,
}

fn pause_by_default() -> bool {
    true
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
    /// The operator who has taken it over, if one has.
    #[serde(default)]
    pub controlled_by: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub controlled_since: Option<Timestamp>,
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
