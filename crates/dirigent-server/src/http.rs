//! The HTTP application: the API routes and the control panel's pages, plus the middleware every response passes through —
//! request ids, JSON error bodies, size limits, security headers, tracing.

use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, Request},
    http::{HeaderName, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::Response,
};
use tower_http::{set_header::SetResponseHeaderLayer, trace::TraceLayer};

use crate::{AppState, api, audit, error::ApiError, ui};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP application over `state`, ready to serve.
pub fn app(state: AppState) -> Router {
    let (routes, _openapi) = api::router().split_for_parts();
    routes
        .merge(ui::router())
        .fallback(|| async { ApiError::for_status(StatusCode::NOT_FOUND) })
        .layer(middleware::from_fn_with_state(state.clone(), audit::record))
        .layer(middleware::from_fn_with_state(state.clone(), measure))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn(render_errors))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Counts each request and how long it took, by method, matched route and status class.
async fn measure(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let began = std::time::Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    state.fleet.metrics().observe_http(
        &method,
        &route,
        response.status().as_u16(),
        began.elapsed(),
    );
    response
}

/// Gives every response an `x-request-id` and every error response the JSON [`ErrorBody`],
/// whether the error came from a handler ([`ApiError`] in the extensions) or from the router
/// and its layers (a bare status). Logs the hidden detail of server errors.
async fn render_errors(request: Request, next: Next) -> Response {
    let request_id = match getrandom::u64() {
        Ok(n) => format!("{n:016x}"),
        Err(_) => "unknown".to_owned(),
    };
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status();
    let page = response.extensions().get::<ui::RenderedPage>().is_some();
    if page || (!status.is_client_error() && !status.is_server_error()) {
        return response;
    }
    let error = response
        .extensions_mut()
        .remove::<ApiError>()
        .unwrap_or_else(|| ApiError::for_status(status));
    if error.status.is_server_error() {
        tracing::error!(%request_id, %method, path, status = error.status.as_u16(), detail = error.detail.as_deref().unwrap_or(""), "request failed");
    }
    let body = error.body(Some(request_id));
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let (mut parts, _) = response.into_parts();
    parts.status = error.status;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(seconds) = error.retry_after {
        parts
            .headers
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if error.status == StatusCode::UNAUTHORIZED {
        parts
            .headers
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    Response::from_parts(parts, Body::from(json))
}

/// The client's address: the socket's peer, or, when the peer is one of the `trusted`
/// proxies, the address it appended last to `X-Forwarded-For`. `None` without a socket (a
/// router driven in process).
pub(crate) fn client_address(
    extensions: &axum::http::Extensions,
    headers: &axum::http::HeaderMap,
    trusted: &[std::net::IpAddr],
) -> Option<std::net::IpAddr> {
    let peer = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()?
        .0
        .ip();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|hop| hop.trim().parse().ok())
        .next_back();
    Some(forwarded.unwrap_or(peer))
}
