//! The graphical sessions page: each session's state, display, size and run, with its screen,
//! refreshed every few seconds while the page is open (nothing is captured while nobody
//! looks).

use askama::Template;
use axum::{
    Json,
    extract::{Query, State},
    response::Response,
};
use dirigent_proto::session::{Session, SessionState};
use serde::Deserialize;

use super::{Frame, Viewer};
use crate::{AppState, api, error::ApiError};

#[derive(Template)]
#[template(path = "sessions.html")]
struct SessionsPage<'a> {
    frame: &'a Frame,
    sessions: Vec<Session>,
    /// The agent the page shows the sessions of, if only one.
    agent: Option<String>,
}

impl SessionsPage<'_> {
    /// Whether there is a screen to show: an X server runs and its agent is connected.
    fn shows_screen(&self, session: &Session) -> bool {
        session.agent_online && matches!(session.state, SessionState::Ready | SessionState::InUse)
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct Filter {
    agent: Option<String>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(filter): Query<Filter>,
) -> Response {
    viewer.page(sessions_page(&state, &viewer, filter.agent).await)
}

async fn sessions_page<'a>(
    state: &AppState,
    viewer: &'a Viewer,
    agent: Option<String>,
) -> Result<SessionsPage<'a>, ApiError> {
    let query = api::ApiQuery(api::sessions::ListQuery {
        agent: agent.clone(),
    });
    let Json(sessions) =
        api::sessions::list_sessions(State(state.clone()), viewer.caller.clone(), query).await?;
    Ok(SessionsPage {
        frame: &viewer.frame,
        sessions,
        agent,
    })
}
