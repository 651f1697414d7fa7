//! `ApiError`, the one error every route answers with. It becomes a response carrying the
//! error in its extensions; the `http` middleware renders the JSON body with the request id
//! and logs the detail of 5xx errors, which never reaches the client.

use std::fmt;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use dirigent_domain::InvalidField;
use dirigent_proto::error::ErrorCode;
use dirigent_store::StoreError;

use crate::fleet::FleetError;

/// A failed request: a status, a stable code, a message for people and maybe the field at
/// fault. `detail` is for the server log only.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
    pub detail: Option<String>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// The item that holds a duplicate reference.
    pub existing_id: Option<i64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            detail: None,
            retry_after: None,
            existing_id: None,
        }
    }

    pub fn invalid(err: InvalidField) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: ErrorCode::InvalidField,
            message: err.to_string(),
            field: Some(err.field),
            detail: None,
            retry_after: None,
            existing_id: None,
        }
    }

    /// The body that tells the client, under the request id if one is given.
    pub fn body(&self, request_id: Option<String>) -> dirigent_proto::error::ErrorBody {
        dirigent_proto::error::ErrorBody {
            code: self.code,
            message: self.message.clone(),
            field: self.field.clone(),
            existing_id: self.existing_id,
            request_id,
        }
    }

    /// 404 for a named thing that does not exist.
    pub fn not_found(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    /// Maps a store error of a lookup: `NotFound` becomes a 404 with `code` and `message`,
    /// the rest as [`ApiError::from_store`] does.
    pub fn from_lookup(err: StoreError, code: ErrorCode, message: impl Into<String>) -> ApiError {
        let missing = || ApiError::not_found(code, message);
        match err {
            StoreError::NotFound => missing(),
            err => err.into(),
        }
    }

    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            message,
        )
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    /// A fault of the server; the client sees a generic message, the log sees `detail`.
    pub fn internal(detail: impl fmt::Display) -> ApiError {
        ApiError {
            detail: Some(detail.to_string()),
            ..ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "internal error; the server log has the detail under this request id",
            )
        }
    }

    /// The generic error for a status produced outside the handlers (by the router or a
    /// middleware layer).
    pub fn for_status(status: StatusCode) -> ApiError {
        let (code, message) = match status {
            StatusCode::NOT_FOUND => (ErrorCode::RouteNotFound, "no such route"),
            StatusCode::METHOD_NOT_ALLOWED => (
                ErrorCode::MethodNotAllowed,
                "this route does not accept this method",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => {
                (ErrorCode::PayloadTooLarge, "the request body is too large")
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                ErrorCode::UnsupportedMediaType,
                "the request body must be application/json",
            ),
            StatusCode::UNAUTHORIZED => (ErrorCode::Unauthenticated, "authentication required"),
            StatusCode::FORBIDDEN => (ErrorCode::Forbidden, "not allowed"),
            status if status.is_client_error() => (ErrorCode::MalformedRequest, "bad request"),
            _ => return ApiError::internal(format!("status {status} without an error")),
        };
        ApiError::new(status, code, message)
    }

    /// Maps a store error to a response: `NotFound` and `Conflict` become the given errors,
    /// an unreachable database a 503, anything else a 500.
    pub fn from_store(
        err: StoreError,
        not_found: impl FnOnce() -> ApiError,
        conflict: impl FnOnce() -> ApiError,
    ) -> ApiError {
        match err {
            StoreError::NotFound => not_found(),
            StoreError::Conflict => conflict(),
            StoreError::Stale => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::InvalidState,
                "it changed meanwhile (another request got there first); read it again and retry",
            ),
            StoreError::Connect(_) | StoreError::Unavailable(_) => ApiError {
                detail: Some(err.to_string()),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "the database cannot be reached; try again shortly",
                )
            },
            err => ApiError::internal(err),
        }
    }
}

/// `?` on a store call where neither not-found nor conflict can happen: both would be faults.
impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        let fault = err.to_string();
        ApiError::from_store(
            err,
            || ApiError::internal(&fault),
            || ApiError::internal(&fault),
        )
    }
}

impl From<FleetError> for ApiError {
    fn from(err: FleetError) -> ApiError {
        match err {
            FleetError::RobotNotFound(name) => {
                ApiError::not_found(ErrorCode::RobotNotFound, format!("no robot named {name:?}"))
            }
            FleetError::RunNotFound(id) => {
                ApiError::not_found(ErrorCode::RunNotFound, format!("no run with id {id:?}"))
            }
            FleetError::InvalidState(reason) => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::InvalidState, reason)
            }
            FleetError::AgentUnavailable(reason) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                reason,
            ),
            FleetError::Maintenance(reason) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Maintenance,
                reason,
            ),
            FleetError::Store(err) => err.into(),
            FleetError::Internal(detail) => ApiError::internal(detail),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}
