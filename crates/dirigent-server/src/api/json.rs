//! Extractors whose failures are precise API errors: a JSON body that names the field at
//! fault, and a path segment.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{StatusCode, header, request::Parts},
};
use dirigent_proto::error::ErrorCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body. Answers 415 without `Content-Type: application/json`, 413 past the
/// body limit, 400 for malformed JSON, 422 naming the field for a missing, unknown or
/// mistyped one.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<ApiJson<T>, ApiError> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::for_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection| match rejection.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => {
                        ApiError::for_status(StatusCode::PAYLOAD_TOO_LARGE)
                    }
                    status => {
                        ApiError::new(status, ErrorCode::MalformedRequest, rejection.body_text())
                    }
                })?;
        parse_json(&bytes).map(ApiJson)
    }
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let err = match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => match deserializer.end() {
            Ok(()) => return Ok(value),
            Err(trailing) => return Err(malformed(&trailing)),
        },
        Err(err) => err,
    };
    let path = err.path().to_string();
    let inner = err.into_inner();
    if !inner.is_data() {
        return Err(malformed(&inner));
    }
    // serde reports a missing field on the object that lacks it; name the field itself.
    let reason = strip_position(&inner.to_string());
    let missing = reason
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    let (field, reason) = match missing {
        Some(missing) if path == "." => (missing.to_owned(), "is required".to_owned()),
        Some(missing) => (format!("{path}.{missing}"), "is required".to_owned()),
        None => (path, reason),
    };
    let (field, message) = if field == "." {
        (None, format!("the body does not fit: {reason}"))
    } else {
        (Some(field.clone()), format!("{field}: {reason}"))
    };
    Err(ApiError {
        field,
        ..ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidField,
            message,
        )
    })
}

fn malformed(err: &serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::MalformedRequest,
        format!("the body is not valid JSON: {err}"),
    )
}

/// serde_json appends " at line L column C", which says nothing to a caller who sent a field.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(idx) => message[..idx].to_owned(),
        None => message.to_owned(),
    }
}

/// Query parameters; unknown or malformed ones are a 422 naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<ApiQuery<T>, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(ApiQuery)
            .map_err(|err| {
                let path = err.path().to_string();
                let reason = err.into_inner().to_string();
                let field = (path != ".").then_some(path);
                let message = match &field {
                    Some(field) => format!("query parameter {field}: {reason}"),
                    None => format!("query: {reason}"),
                };
                ApiError {
                    field,
                    ..ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        ErrorCode::InvalidField,
                        message,
                    )
                }
            })
    }
}

/// A single path segment such as a robot name; undecodable segments are a 400.
pub struct PathSegment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathSegment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<PathSegment, ApiError> {
        let Path(segment) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::MalformedRequest,
                    rejection.body_text(),
                )
            })?;
        Ok(PathSegment(segment))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        inner: Option<Inner>,
        map: Option<BTreeMap<String, u32>>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    #[track_caller]
    fn check(body: &str, status: StatusCode, field: Option<&str>, message_part: &str) {
        let err = parse_json::<Outer>(body.as_bytes()).unwrap_err();
        assert_eq!(err.status, status, "{body}: {err:?}");
        assert_eq!(err.field.as_deref(), field, "{body}: {err:?}");
        assert!(
            err.message.contains(message_part),
            "{body}: {}",
            err.message
        );
    }

    #[test]
    fn errors_name_the_field() {
        check("{", StatusCode::BAD_REQUEST, None, "not valid JSON");
        check(
            r#"{"name": "x"} x"#,
            StatusCode::BAD_REQUEST,
            None,
            "not valid JSON",
        );
        check(
            r#""text""#,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            "invalid type",
        );
        check(
            "{}",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("name"),
            "name: is required",
        );
        check(
            r#"{"name": 1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("name"),
            "invalid type: integer",
        );
        check(
            r#"{"name": "x", "nmae": 1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("nmae"),
            "unknown field `nmae`",
        );
        check(
            r#"{"name": "x", "inner": {}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("inner.count"),
            "is required",
        );
        check(
            r#"{"name": "x", "inner": {"count": -1}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("inner.count"),
            "invalid value",
        );
        check(
            r#"{"name": "x", "map": {"a": "b"}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("map.a"),
            "invalid type",
        );
    }
}
