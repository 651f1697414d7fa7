//! The log store on the wire: records as searched, exported and followed, and the records an
//! agent or the orchestrator writes of itself.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a record comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogSource {
    Robot,
    Agent,
    Server,
    Activity,
}

/// How much a record matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// One record of the log store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogRecord {
    /// Orders records as they were stored; a cursor.
    pub id: u64,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub source: LogSource,
    pub level: LogLevel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The orchestrator node that wrote it (its own records, and server activities').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `stdout` or `stderr`, for output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Structured fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
    pub text: String,
}

/// `GET /api/v1/logs`: a page of records and, when more may follow, the cursor of the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    pub records: Vec<LogRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A record an agent or the orchestrator writes of itself (a `tracing` event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnLog {
    pub at: Timestamp,
    pub level: LogLevel,
    /// Where in the program it was written (`dirigent_agent::runner`).
    pub target: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub fields: serde_json::Map<String, serde_json::Value>,
}
