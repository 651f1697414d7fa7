//! Graphical sessions: the desktops (X servers) agents keep for robots that need one.

use jiff::Timestamp;

use crate::agent::AgentId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Starting,
    Ready,
    InUse,
    Restarting,
    Failed,
}

impl SessionState {
    pub const ALL: [SessionState; 5] = [
        SessionState::Starting,
        SessionState::Ready,
        SessionState::InUse,
        SessionState::Restarting,
        SessionState::Failed,
    ];

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
        SessionState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

/// A session as its agent last reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub agent_id: AgentId,
    pub agent: String,
    pub agent_online: bool,
    /// 1, 2, … on its agent.
    pub number: u32,
    pub display: Option<String>,
    pub width: u32,
    pub height: u32,
    pub state: SessionState,
    pub run_id: Option<String>,
    pub reason: Option<String>,
    pub updated_at: Timestamp,
    /// The operator who has taken it over, and since when.
    pub controlled_by: Option<(String, Timestamp)>,
}

impl Session {
    /// `AGENT/NUMBER`: how the API names it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.agent, self.number)
    }
}

/// One change of a session's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionChange {
    pub state: SessionState,
    pub run_id: Option<String>,
    pub reason: Option<String>,
    pub at: Timestamp,
}
