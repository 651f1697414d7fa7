//! Retention: how long finished data is kept, how much is kept now, and what the last sweep
//! deleted.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /api/v1/retention`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RetentionReport {
    pub settings: RetentionSettings,
    /// How much of each kind is kept now.
    pub kept: Vec<KeptKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sweep: Option<Sweep>,
}

/// Days each kind is kept (0: forever), and the most run output kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RetentionSettings {
    pub runs_days: u32,
    pub run_output_max_mib: u64,
    pub trigger_firings_days: u32,
    pub work_item_attempts_days: u32,
    pub activities_days: u32,
    pub audit_days: u32,
    /// Agents' own log records: days, and the most kept.
    pub agent_logs_days: u32,
    pub agent_logs_max_mib: u64,
    /// The orchestrator's own log records: days, and the most kept.
    pub server_logs_days: u32,
    pub server_logs_max_mib: u64,
    /// The most output of ended activities kept.
    pub activity_output_max_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeptKind {
    /// `runs`, `run_output_lines`, `run_output_bytes`, `agent_log_records`,
    /// `server_log_records`, `activity_output_lines`, `trigger_firings`,
    /// `work_item_attempts`, `activities` or `audit_records`.
    pub kind: String,
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub oldest: Option<Timestamp>,
}

/// What a sweep deleted, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Sweep {
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub deleted: Deleted,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    pub runs: u64,
    /// Runs whose output was deleted to keep the total under its cap.
    pub run_outputs: u64,
    pub trigger_firings: u64,
    pub work_item_attempts: u64,
    pub activities: u64,
    pub audit_records: u64,
    /// Agents' and the orchestrator's own log records.
    #[serde(default)]
    pub agent_log_records: u64,
    #[serde(default)]
    pub server_log_records: u64,
    /// Lines of ended activities' output, beyond its cap.
    #[serde(default)]
    pub activity_output_lines: u64,
}
