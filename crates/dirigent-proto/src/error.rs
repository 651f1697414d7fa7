//! The error body every failed API request returns, and its stable machine-readable codes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every 4xx and 5xx answer of the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable reason; scripts match on this, never on `message`.
    pub code: ErrorCode,
    /// A sentence for people.
    pub message: String,
    /// The input field at fault, as a path such as `crash_loop.max_starts`, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// With `duplicate_reference`: the id of the item that has the reference already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_id: Option<i64>,
    /// The id the server logged this request under (also in the `x-request-id` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Stable error codes. New codes may be added; existing ones never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not well-formed JSON, or a query parameter is malformed.
    MalformedRequest,
    /// 401: no credentials, or they are unknown, expired or revoked.
    Unauthenticated,
    /// 401: the username or password given to `/login` is wrong.
    InvalidCredentials,
    /// 403: the caller is known but lacks the permission.
    Forbidden,
    /// 404: no route matches the path.
    RouteNotFound,
    /// 404: the named robot does not exist.
    RobotNotFound,
    /// 404: the API token does not exist (or belongs to someone else).
    TokenNotFound,
    /// 404: no run has this id.
    RunNotFound,
    /// 404: no user has this name.
    UserNotFound,
    /// 404: no role has this name.
    RoleNotFound,
    /// 404: no agent has this name.
    AgentNotFound,
    /// 404: no queue has this name.
    QueueNotFound,
    /// 404: the queue has no item of this id.
    ItemNotFound,
    /// 404: no trigger has this id.
    TriggerNotFound,
    /// 404: no calendar has this name.
    CalendarNotFound,
    /// 404: the agent has no graphical session of this number.
    SessionNotFound,
    /// 404: the run has no frame of this number.
    FrameNotFound,
    /// 404: no activity has this id.
    ActivityNotFound,
    /// 404: no uploaded file has this SHA-256.
    BlobNotFound,
    /// 405: the route exists but not for this method.
    MethodNotAllowed,
    /// 409: a robot with this name exists already.
    RobotExists,
    /// 409: the caller has a live API token of this name already.
    TokenExists,
    /// 409: a user or role of this name exists already.
    NameTaken,
    /// 409: an agent of this name is enrolled already.
    AgentExists,
    /// 409: an item with this reference is in the queue already (`existing_id` says which).
    DuplicateReference,
    /// 409: the lease token is not the item's current one, or its lease expired.
    StaleLease,
    /// 409: the run's state does not allow the operation (pausing an ended run, say).
    InvalidState,
    /// 413: the request body is larger than the server accepts.
    PayloadTooLarge,
    /// 415: the body is not declared as `application/json`.
    UnsupportedMediaType,
    /// 422: the body is JSON but a field is missing, unknown or invalid; `field` names it.
    InvalidField,
    /// 429: too many failed logins for this username; `Retry-After` says when to try again.
    TooManyAttempts,
    /// 503: the database cannot be reached.
    Unavailable,
    /// 503: the orchestrator is in maintenance: no new run starts.
    Maintenance,
    /// 500: a fault inside the server; the detail is in the server's log under `request_id`.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedRequest => "malformed_request",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RouteNotFound => "route_not_found",
            ErrorCode::RobotNotFound => "robot_not_found",
            ErrorCode::TokenNotFound => "token_not_found",
            ErrorCode::RunNotFound => "run_not_found",
            ErrorCode::AgentNotFound => "agent_not_found",
            ErrorCode::UserNotFound => "user_not_found",
            ErrorCode::RoleNotFound => "role_not_found",
            ErrorCode::QueueNotFound => "queue_not_found",
            ErrorCode::ItemNotFound => "item_not_found",
            ErrorCode::DuplicateReference => "duplicate_reference",
            ErrorCode::StaleLease => "stale_lease",
            ErrorCode::TriggerNotFound => "trigger_not_found",
            ErrorCode::CalendarNotFound => "calendar_not_found",
            ErrorCode::SessionNotFound => "session_not_found",
            ErrorCode::FrameNotFound => "frame_not_found",
            ErrorCode::ActivityNotFound => "activity_not_found",
            ErrorCode::BlobNotFound => "blob_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RobotExists => "robot_exists",
            ErrorCode::TokenExists => "token_exists",
            ErrorCode::AgentExists => "agent_exists",
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::TooManyAttempts => "too_many_attempts",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Maintenance => "maintenance",
            ErrorCode::Internal => "internal",
        }
    }
}
