//! The live feed of changes: run states and agents, as server-sent events, each filtered by
//! what the caller may read. The control panel listens to it to update pages in place.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use dirigent_domain::access::{Action, Resource};
use dirigent_proto::error::ErrorBody;
use futures_util::stream::{self, Stream};
use jiff::SignedDuration;
use tokio::sync::broadcast::error::RecvError;

use crate::{AppState, api::runs, auth::Caller, error::ApiError, fleet::FleetEvent};

/// How stale the knowledge that the caller's credential still works may be before an event
/// is sent: a stream outlives its request, and ends soon after a logout or expiry.
const RECHECK: SignedDuration = SignedDuration::from_secs(5);

/// Follows changes as server-sent events: `run` (a Run, whenever its state changes), `agent`
/// (`{"name"}`, whenever an agent connects, disconnects or changes), and `resync` when events
/// were dropped for a slow reader (read again what is shown). The stream ends once the
/// credential stops working.
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "text/event-stream of `run`, `agent`, `activity` and `resync` events", content_type = "text/event-stream"),
        (status = 401, body = ErrorBody),
    )
)]
pub(super) async fn follow_events(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    caller.user()?;
    let events = state.fleet.subscribe();
    let checked = state.clock.now();
    let follower = (events, caller, state, checked);
    let stream = stream::unfold(
        follower,
        |(mut events, caller, state, mut checked)| async move {
            loop {
                let event = match events.recv().await {
                    Ok(FleetEvent::Run(run))
                        if caller.may(Resource::Runs, Action::Read, Some(&run.robot)) =>
                    {
                        Event::default()
                            .event("run")
                            .json_data(runs::to_wire(*run))
                            .ok()
                    }
                    Ok(FleetEvent::Agent { name })
                        if caller.may(Resource::Agents, Action::Read, Some(&name)) =>
                    {
                        Event::default()
                            .event("agent")
                            .json_data(serde_json::json!({ "name": name }))
                            .ok()
                    }
                    Ok(FleetEvent::Activity { id, output: false })
                        if caller.may(Resource::Console, Action::Use, None) =>
                    {
                        Event::default()
                            .event("activity")
                            .json_data(serde_json::json!({ "id": id }))
                            .ok()
                    }
                    Ok(_) => None,
                    Err(RecvError::Lagged(_)) => Some(Event::default().event("resync").data("")),
                    Err(RecvError::Closed) => return None,
                };
                let Some(event) = event else { continue };
                let now = state.clock.now();
                if RECHECK <= now.duration_since(checked) {
                    if !caller.still_valid(&state).await {
                        return None;
                    }
                    checked = now;
                }
                return Some((Ok(event), (events, caller, state, checked)));
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
