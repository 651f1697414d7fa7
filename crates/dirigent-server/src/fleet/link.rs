//! The server's end of the agent link: `GET /agent/v1/connect`, a WebSocket authenticated by
//! the agent's credential. See `dirigent_proto::link` for the protocol.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{
        FromRequestParts, State,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    http::request::Parts,
    response::Response,
};
use dirigent_domain::agent::Agent;
use dirigent_proto::link::{AgentEvent, AgentFrame, Hello, ServerFrame};
use dirigent_store::{AgentFacts, StoreError};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::{AppState, auth::secrets, error::ApiError, fleet::Fleet};

/// The largest frame an agent may send.
const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;
/// An agent must say hello this soon after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// An agent authenticated by its credential (`Authorization: Bearer dga_…`).
pub struct AgentCaller(pub Agent);

impl FromRequestParts<AppState> for AgentCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<AgentCaller, ApiError> {
        let refused = || {
            ApiError::unauthenticated(
                "an agent credential is required: Authorization: Bearer dga_…",
            )
        };
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .filter(|token| token.starts_with(secrets::AGENT_CREDENTIAL_PREFIX))
            .ok_or_else(refused)?;
        let agent = state
            .store
            .agent_by_credential(&secrets::token_digest(token))
            .await
            .map_err(|err| ApiError::from_store(err, refused, refused))?;
        crate::audit::AuditSlot::name(&parts.extensions, format!("agent:{}", agent.name));
        Ok(AgentCaller(agent))
    }
}

/// The agent link.
#[utoipa::path(
    get,
    path = "/agent/v1/connect",
    tag = "agents",
    security(("bearer" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket agent link"),
        (status = 400, description = "Not a WebSocket upgrade", body = dirigent_proto::error::ErrorBody),
        (status = 401, body = dirigent_proto::error::ErrorBody),
    )
)]
pub async fn connect(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    upgrade: WebSocketUpgrade,
) -> Response {
    let fleet = Arc::clone(&state.fleet);
    upgrade
        .max_message_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| async move {
            let name = agent.name.clone();
            if let Err(reason) = serve(fleet, agent, socket).await {
                tracing::info!(agent = name, reason, "agent link ended");
            }
        })
}

async fn serve(fleet: Arc<Fleet>, agent: Agent, socket: WebSocket) -> Result<(), String> {
    let (mut sink, mut stream) = socket.split();
    let hello = tokio::time::timeout(HELLO_TIMEOUT, next_frame(&mut stream))
        .await
        .map_err(|_| "no hello in time".to_owned())??;
    let Some(AgentFrame::Hello(hello)) = hello else {
        return Err("the first frame was not a hello".to_owned());
    };
    let facts = facts(hello)?;
    let now = fleet.clock.now();
    let last_event_id = fleet
        .store
        .agent_connected(agent.id, &facts, &fleet.node, now)
        .await
        .map_err(|err| err.to_string())?;

    let (frames, mut outgoing) = mpsc::unbounded_channel::<ServerFrame>();
    let _ = frames.send(ServerFrame::Welcome { last_event_id });
    // Registered as having been sent nothing: `deliver` then sends every command the agent
    // has not acknowledged, in order, and commands queued meanwhile after them.
    let serial = fleet.register(agent.id, frames.clone(), 0);
    fleet
        .deliver(agent.id, u64::MAX)
        .await
        .map_err(|err| err.to_string())?;
    fleet.agent_changed(&agent.name);
    tracing::info!(agent = agent.name, host = facts.host, "agent connected");

    let writer = tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            let Ok(text) = serde_json::to_string(&frame) else {
                continue;
            };
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
    });

    let ended = read_frames(&fleet, &agent, last_event_id, &frames, &mut stream).await;
    writer.abort();
    if fleet.unregister(agent.id, serial) {
        // Unless it connected to another node meanwhile, it is offline from now on, and its
        // runs are lost if it stays silent (the cluster's singleton duties look).
        let _ = fleet
            .store
            .agent_disconnected(agent.id, &fleet.node, fleet.clock.now())
            .await;
        fleet.agent_changed(&agent.name);
    }
    ended
}

async fn read_frames(
    fleet: &Arc<Fleet>,
    agent: &Agent,
    mut last_applied: u64,
    frames: &mpsc::UnboundedSender<ServerFrame>,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
) -> Result<(), String> {
    let mut last_seen_written = fleet.clock.now();
    // A frame read while gathering log events, handled next.
    let mut pending = None;
    loop {
        let frame = match pending.take() {
            Some(frame) => Some(frame),
            None => tokio::time::timeout(fleet.settings.idle_timeout, next_frame(stream))
                .await
                .map_err(|_| "silent past the idle timeout".to_owned())??,
        };
        let now = fleet.clock.now();
        if jiff::SignedDuration::from_secs(30) <= now.duration_since(last_seen_written) {
            fleet
                .store
                .agent_seen(agent.id, now)
                .await
                .map_err(|err| err.to_string())?;
            last_seen_written = now;
        }
        match frame {
            None => {}
            Some(AgentFrame::Event { id, event }) if is_log(&event) => {
                // Output and own records already waiting behind it are stored with it, in one
                // transaction with the agent's last event.
                let mut batch = vec![(id, event)];
                while batch.len() < LOG_EVENTS_BATCH {
                    match next_frame(stream).now_or_never() {
                        Some(Ok(Some(AgentFrame::Event { id, event }))) if is_log(&event) => {
                            batch.push((id, event));
                        }
                        Some(Ok(None)) => {}
                        Some(Ok(Some(frame))) => {
                            pending = Some(frame);
                            break;
                        }
                        Some(Err(_)) | None => break,
                    }
                }
                let last = batch.last().map_or(id, |(id, _)| *id);
                let fresh: Vec<AgentEvent> = batch
                    .into_iter()
                    .filter(|(id, _)| last_applied < *id)
                    .map(|(_, event)| event)
                    .collect();
                if !fresh.is_empty() {
                    fleet
                        .apply_logs(agent, last, fresh)
                        .await
                        .map_err(|err| err.to_string())?;
                    last_applied = last;
                }
                let _ = frames.send(ServerFrame::Ack { id: last });
            }
            Some(AgentFrame::Event { id, event }) => {
                if last_applied < id {
                    fleet
                        .apply_event(agent, event)
                        .await
                        .map_err(|err| err.to_string())?;
                    fleet
                        .store
                        .set_agent_last_event(agent.id, id)
                        .await
                        .map_err(|err| err.to_string())?;
                    last_applied = id;
                }
                let _ = frames.send(ServerFrame::Ack { id });
            }
            Some(AgentFrame::Ack { id }) => {
                fleet
                    .store
                    .ack_agent_commands(agent.id, id)
                    .await
                    .map_err(|err| err.to_string())?;
            }
            Some(AgentFrame::Synced {
                live_runs,
                sessions,
                live_activities,
                last_applied_command,
            }) => {
                for session in &sessions {
                    fleet
                        .session_reported(agent, session, false)
                        .await
                        .map_err(|err| err.to_string())?;
                }
                fleet
                    .agent_synced(agent, &live_runs)
                    .await
                    .map_err(|err| err.to_string())?;
                fleet
                    .activities_synced(agent, &live_activities, last_applied_command)
                    .await
                    .map_err(|err| err.to_string())?;
            }
            Some(AgentFrame::Reply { id, reply }) => fleet.answered(id, reply),
            Some(AgentFrame::Screen { watch, x, y, png }) => {
                fleet.screen_changed(agent.id, watch, x, y, &png)
            }
            Some(AgentFrame::Hello(_)) => {
                tracing::warn!(agent = agent.name, "ignoring a second hello")
            }
        }
    }
}

/// The most log events stored in one transaction.
const LOG_EVENTS_BATCH: usize = 64;

/// Whether an event only adds records to the log store (a robot's output, the agent's own).
fn is_log(event: &AgentEvent) -> bool {
    matches!(event, AgentEvent::Output { .. } | AgentEvent::Logs { .. })
}

/// The next frame; `None` for control messages and malformed frames (which are logged).
async fn next_frame(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
) -> Result<Option<AgentFrame>, String> {
    match stream.next().await {
        Some(Ok(Message::Text(text))) => match serde_json::from_str(&text) {
            Ok(frame) => Ok(Some(frame)),
            Err(err) => {
                tracing::warn!(%err, "ignoring a malformed frame from an agent");
                Ok(None)
            }
        },
        Some(Ok(Message::Close(_))) | None => Err("closed by the agent".to_owned()),
        Some(Ok(_)) => Ok(None),
        Some(Err(err)) => Err(err.to_string()),
    }
}

fn facts(hello: Hello) -> Result<AgentFacts, String> {
    let too_long = |text: &str| 256 < text.len();
    if 64 < hello.labels.len()
        || hello
            .labels
            .iter()
            .any(|(key, value)| too_long(key) || too_long(value))
    {
        return Err("too many or too long labels".to_owned());
    }
    let unavailable = hello.sessions.unavailable.as_deref().unwrap_or_default();
    if too_long(&hello.host)
        || too_long(&hello.os_user)
        || too_long(&hello.version)
        || too_long(unavailable)
    {
        return Err("a field of the hello is too long".to_owned());
    }
    Ok(AgentFacts {
        host: hello.host,
        os_user: hello.os_user,
        labels: hello.labels,
        capacity: hello.capacity.min(10_000),
        version: hello.version,
        sessions_offered: hello.sessions.count.min(64),
        sessions_unavailable: hello.sessions.unavailable,
    })
}

/// Enrolls an agent: used by the agents' HTTP handlers.
pub(crate) async fn enroll(fleet: &Fleet, token: &str, name: &str) -> Result<String, StoreError> {
    let credential = secrets::new_token(secrets::AGENT_CREDENTIAL_PREFIX)
        .map_err(|err| StoreError::Corrupt(err.to_string()))?;
    fleet
        .store
        .enroll_agent(
            &secrets::token_digest(token),
            name,
            &secrets::token_digest(&credential),
            fleet.clock.now(),
        )
        .await?;
    Ok(credential)
}
