//! Agents as the API shows them, and enrolling a new one.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Connected and taking runs.
    Online,
    /// Connected, finishing its runs, taking no new ones.
    Draining,
    /// Not connected.
    Offline,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Online => "online",
            AgentState::Draining => "draining",
            AgentState::Offline => "offline",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Agent {
    pub name: String,
    pub state: AgentState,
    pub host: String,
    pub os_user: String,
    pub labels: BTreeMap<String, String>,
    /// Runs it may hold at once.
    pub capacity: u32,
    pub active_runs: u32,
    pub version: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen_at: Option<Timestamp>,
    /// The orchestrator node that holds (or last held) its connection.
    #[serde(default)]
    pub node: Option<String>,
    /// The graphical sessions it offers.
    #[serde(default)]
    pub sessions: u32,
}

/// An orchestrator node sharing the database, as its heartbeats tell it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub id: String,
    pub version: String,
    /// `alive` while its heartbeat is recent, else `silent` (dead, or cut off).
    pub state: NodeState,
    /// It does the work one node at a time does (lost runs, dead nodes' firings, janitor).
    pub leading: bool,
    /// Agents connected to it now.
    pub agents: u32,
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub heartbeat_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Alive,
    Silent,
}

/// `POST /api/v1/agents/enrollment-tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentToken {
    /// How long the token can be used (default one hour).
    #[serde(default)]
    pub expires_in_seconds: Option<u32>,
}

/// A one-time token an agent exchanges for its own credential.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentToken {
    pub token: String,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
}

/// `POST /agent/v1/enroll`, sent by an agent with an enrollment token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    /// The agent's unique name, `[a-z0-9][a-z0-9._-]*`.
    pub name: String,
}

/// The agent's credential; shown once, kept by the agent in its data directory.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollResponse {
    pub name: String,
    pub credential: String,
}

/// `POST /api/v1/agents/{name}/drain`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// `true` to stop giving it new runs, `false` to give it runs again.
    pub draining: bool,
}
