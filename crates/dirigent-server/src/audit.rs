//! The audit trail: a middleware records every state-changing request and every denial —
//! who, what, on which target, when, from which address, and the outcome — in the store's
//! append-only audit log. The extractors that identify a caller name the actor through the
//! [`AuditSlot`] the middleware puts in each request; the resources it is about come from the
//! path, and handlers whose body names one add it (`AuditSlot::about`). Records go through the group-commit
//! [`Writer`](crate::writer::Writer) before the response leaves; the record of a work-item
//! operation in the operation's own transaction.

use std::sync::{Arc, Mutex};

use axum::{
    extract::{FromRequestParts, MatchedPath, Request, State},
    http::{Method, StatusCode, request::Parts},
    middleware::Next,
    response::Response,
};
use dirigent_store::AuditRecord;

use crate::AppState;

/// The audit record of a request in the making: the middleware opens it, the extractor that
/// identifies the caller names the actor (`anonymous` until then). A handler whose operation
/// goes through the group-commit writer takes the record to store it in the operation's own
/// transaction; the middleware writes the others.
#[derive(Debug, Clone, Default)]
pub struct AuditSlot(Arc<Mutex<Slot>>);

#[derive(Debug, Default)]
struct Slot {
    actor: Option<String>,
    /// What the middleware knows of the request; gone once taken.
    record: Option<AuditRecord>,
    /// The route it matched, whose parameters name resources (read only if it is recorded).
    route: Option<String>,
}

impl AuditSlot {
    /// Names the actor of the request these parts belong to.
    pub fn name(extensions: &axum::http::Extensions, actor: String) {
        if let Some(slot) = extensions.get::<AuditSlot>() {
            slot.set(actor);
        }
    }

    pub fn set(&self, actor: String) {
        self.lock().actor = Some(actor);
    }

    /// Notes what a change changed: the fields of `before` and `after` (a resource as the API
    /// shows it) that differ, times left out; secrets (passwords, tokens, environment values)
    /// redacted.
    pub fn changed(&self, before: &impl serde::Serialize, after: &impl serde::Serialize) {
        let (Ok(serde_json::Value::Object(before)), Ok(serde_json::Value::Object(after))) =
            (serde_json::to_value(before), serde_json::to_value(after))
        else {
            return;
        };
        let mut changes = serde_json::Map::new();
        let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        for key in keys {
            let (old, new) = (before.get(key), after.get(key));
            if old == new || key.ends_with("_at") {
                continue;
            }
            changes.insert(
                key.clone(),
                serde_json::json!([shown(key, old), shown(key, new)]),
            );
        }
        if changes.is_empty() {
            return;
        }
        if let Some(record) = &mut self.lock().record {
            record.changes = Some(serde_json::Value::Object(changes).to_string());
        }
    }

    /// Notes a resource the request is about (`robot:hr-b`), for a record not yet taken.
    pub fn about(&self, resource: String) {
        if let Some(record) = &mut self.lock().record
            && !record.resources.contains(&resource)
        {
            record.resources.push(resource);
        }
    }

    /// The request's record, its actor named, for the handler to store with its operation (the
    /// outcome and status are the handler's to fill); the middleware writes no other.
    pub fn take(&self) -> Option<AuditRecord> {
        let mut slot = self.lock();
        let mut record = slot.record.take()?;
        record.actor = slot.actor.clone().unwrap_or_else(|| "anonymous".to_owned());
        if let Some(route) = &slot.route {
            let mut resources = resources_in(route, &record.target);
            resources.retain(|resource| !record.resources.contains(resource));
            resources.append(&mut record.resources);
            record.resources = resources;
        }
        Some(record)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A handler's view of its request's slot (an empty one where no middleware opened it).
impl<S: Send + Sync> FromRequestParts<S> for AuditSlot {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<AuditSlot>()
            .cloned()
            .unwrap_or_default())
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
    let address = crate::http::client_address(
        request.extensions(),
        request.headers(),
        &state.config.trusted_proxies,
    )
    .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    let slot = AuditSlot::default();
    slot.lock().route = route.clone();
    slot.lock().record = Some(AuditRecord {
        id: 0,
        at: state.clock.now(),
        actor: String::new(),
        action: format!("{method} {}", route.as_deref().unwrap_or(&target)),
        target,
        address,
        outcome: String::new(),
        status: 0,
        resources: Vec::new(),
        changes: None,
    });
    request.extensions_mut().insert(slot.clone());

    let response = next.run(request).await;

    let status = response.status();
    let changes_state = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !changes_state && outcome(status) != "denied" {
        return response;
    }
    // None when the handler stored the record with its operation.
    let Some(mut record) = slot.take() else {
        return response;
    };
    record.at = state.clock.now();
    (record.outcome, record.status) = (outcome(status).to_owned(), status.as_u16());
    let action = record.action.clone();
    if let Err(err) = state.writer.audit(record).await {
        tracing::error!(?err, action, "could not write the audit record");
    }
    response
}

/// A field's value as the audit log shows it: secrets redacted (an environment's names stay,
/// its values go), long values cut.
fn shown(key: &str, value: Option<&serde_json::Value>) -> serde_json::Value {
    const SECRET: [&str; 4] = ["password", "token", "secret", "credential"];
    let Some(value) = value else {
        return serde_json::Value::Null;
    };
    if SECRET.iter().any(|secret| key.contains(secret)) {
        return serde_json::Value::String(REDACTED.to_owned());
    }
    if key == "env"
        && let serde_json::Value::Object(env) = value
    {
        let names = env
            .keys()
            .map(|name| (name.clone(), serde_json::json!(REDACTED)));
        return serde_json::Value::Object(names.collect());
    }
    let text = value.to_string();
    match text.char_indices().nth(500) {
        Some((cut, _)) => serde_json::Value::String(format!("{}…", &text[..cut])),
        None => value.clone(),
    }
}

const REDACTED: &str = "(redacted)";

/// The resources a path names: each `{parameter}` of its route after a collection
/// (`/api/v1/robots/{name}` → `robot:NAME`; `/queues/{name}/items/{id}` → `queue:…`, `item:…`).
fn resources_in(route: &str, path: &str) -> Vec<String> {
    let route: Vec<&str> = route.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    route
        .iter()
        .zip(&path)
        .enumerate()
        .filter(|(_, (segment, _))| segment.starts_with('{'))
        .filter_map(|(at, (_, value))| {
            let collection = route.get(at.checked_sub(1)?)?;
            if collection.starts_with('{') {
                return None;
            }
            let kind = match collection.strip_suffix("ies") {
                Some(stem) => format!("{stem}y"),
                None => collection
                    .strip_suffix('s')
                    .unwrap_or(collection)
                    .to_owned(),
            };
            let value = percent_decoded(value);
            Some(format!("{kind}:{value}"))
        })
        .collect()
}

fn percent_decoded(segment: &str) -> String {
    // As in a path: `+` is itself.
    let segment = segment.replace('+', "%2B");
    form_urlencoded::parse(format!("v={segment}").as_bytes())
        .next()
        .map_or(segment, |(_, value)| value.into_owned())
}

/// `allowed`, `denied` or `failed`: how a request answered with `status` ended.
pub(crate) fn outcome(status: StatusCode) -> &'static str {
    let denied = status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || status == StatusCode::TOO_MANY_REQUESTS;
    if denied {
        "denied"
    } else if status.is_success() || status.is_redirection() {
        "allowed"
    } else {
        "failed"
    }
}
