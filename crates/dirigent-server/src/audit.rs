//! The audit trail: a middleware records every state-changing request and every denial —
//! who, what, on which target, when, from which address, and the outcome — in the store's
//! append-only audit log. The extractors that identify a caller name the actor through the
//! [`AuditActor`] slot the middleware puts in each request. Records go through the
//! group-commit [`Writer`](crate::writer::Writer) before the response leaves.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    extract::{ConnectInfo, MatchedPath, Request, State},
    http::{Method, StatusCode},
    middleware::Next,
    response::Response,
};
use dirigent_store::AuditRecord;

use crate::AppState;

/// Who the request acts for, once an extractor knows; `anonymous` until then.
#[derive(Debug, Clone, Default)]
pub struct AuditActor(Arc<Mutex<Option<String>>>);

impl AuditActor {
    /// Names the actor of the request these parts belong to.
    pub fn name(extensions: &axum::http::Extensions, actor: String) {
        if let Some(slot) = extensions.get::<AuditActor>() {
            slot.set(actor);
        }
    }

    pub fn set(&self, actor: String) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(actor);
    }

    fn take(&self) -> String {
        let name = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        name.unwrap_or_else(|| "anonymous".to_owned())
    }
}

pub(crate) async fn record(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let target = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |info| info.0.ip().to_string());
    let actor = AuditActor::default();
    request.extensions_mut().insert(actor.clone());

    let response = next.run(request).await;

    let status = response.status();
    let changes_state = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let denied = status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || status == StatusCode::TOO_MANY_REQUESTS;
    if !changes_state && !denied {
        return response;
    }
    let outcome = if denied {
        "denied"
    } else if status.is_success() || status.is_redirection() {
        "allowed"
    } else {
        "failed"
    };
    let record = AuditRecord {
        id: 0,
        at: state.clock.now(),
        actor: actor.take(),
        action: format!("{method} {}", route.as_deref().unwrap_or(&target)),
        target,
        address,
        outcome: outcome.to_owned(),
        status: status.as_u16(),
    };
    let action = record.action.clone();
    if let Err(err) = state.writer.audit(record).await {
        tracing::error!(?err, action, "could not write the audit record");
    }
    response
}
