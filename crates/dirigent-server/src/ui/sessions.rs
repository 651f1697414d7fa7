//! The graphical sessions page: each session's state, display, size and run, with its screen,
//! refreshed every few seconds while the page is open (nothing is captured while nobody
//! looks); an operator takes a session over here, and their clicks and keys on its screen go
//! to it.

use askama::Template;
use axum::{
    Json,
    extract::{Path, Query, State},
    response::Response,
};
use dirigent_proto::session::{Session, SessionChange, SessionState};
use serde::Deserialize;

use dirigent_domain::access::{Action, Resource};

use super::{Frame, Viewer, robots::Button};
use crate::{AppState, api, auth::Caller, error::ApiError};

#[derive(Template)]
#[template(path = "sessions.html")]
struct SessionsPage<'a> {
    frame: &'a Frame,
    sessions: Vec<SessionCard>,
    /// The agent the page shows the sessions of, if only one.
    agent: Option<String>,
}

#[derive(Template)]
#[template(path = "session.html")]
struct SessionPage<'a> {
    frame: &'a Frame,
    card: SessionCard,
    history: Vec<SessionChange>,
}

struct SessionCard {
    session: Session,
    /// Take over, or give back.
    buttons: Vec<Button>,
    /// Where the reader's input goes, when they control it.
    input: Option<String>,
}

impl SessionCard {
    /// Whether there is a screen to show: an X server runs and its agent is connected.
    fn shows_screen(&self) -> bool {
        self.session.agent_online
            && matches!(
                self.session.state,
                SessionState::Ready | SessionState::InUse
            )
    }
}

/// A session's card for `caller`: the buttons to take it over or give it back, and where
/// their input goes when they control it.
fn card(caller: &Caller, session: Session) -> SessionCard {
    let path = format!("/api/v1/sessions/{}/{}", session.agent, session.number);
    let may_control = caller.may(Resource::Sessions, Action::Control, Some(&session.agent));
    let mine = session.controlled_by.as_deref() == Some(caller.username.as_str());
    let button = |label, method| Button {
        label,
        method,
        path: format!("{path}/control"),
        body: match method {
            "POST" => "{}".to_owned(),
            _ => String::new(),
        },
        then: "refresh",
        confirm: false,
        class: "",
    };
    let buttons = match (may_control, mine, &session.controlled_by) {
        (true, true, _) => vec![button("Give back", "DELETE")],
        (true, false, None) => vec![button("Take over", "POST")],
        _ => Vec::new(),
    };
    SessionCard {
        input: mine.then(|| format!("{path}/input")),
        buttons,
        session,
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct Filter {
    agent: Option<String>,
}

pub(super) async fn session(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((agent, number)): Path<(String, String)>,
) -> Response {
    viewer.page(session_page(&state, &viewer, agent, number).await)
}

async fn session_page<'a>(
    state: &AppState,
    viewer: &'a Viewer,
    agent: String,
    number: String,
) -> Result<SessionPage<'a>, ApiError> {
    let Json(detail) = api::sessions::get_session(
        State(state.clone()),
        viewer.caller.clone(),
        Path((agent, number)),
    )
    .await?;
    Ok(SessionPage {
        frame: &viewer.frame,
        card: card(&viewer.caller, detail.session),
        history: detail.history,
    })
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
    let caller = &viewer.caller;
    let Json(sessions) =
        api::sessions::list_sessions(State(state.clone()), caller.clone(), query).await?;
    let sessions = sessions
        .into_iter()
        .map(|session| card(caller, session))
        .collect();
    Ok(SessionsPage {
        frame: &viewer.frame,
        sessions,
        agent,
    })
}
