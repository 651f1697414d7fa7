//! The graphical sessions page: each session's state, display, size and run, with its screen,
//! refreshed every few seconds while the page is open (nothing is captured while nobody
//! looks); an operator takes a session over here, and their clicks and keys on its screen go
//! to it.

use askama::Template;
use axum::{
    Json,
    extract::{Query, State},
    response::Response,
};
use dirigent_proto::session::{Session, SessionState};
use serde::Deserialize;

use dirigent_domain::access::{Action, Resource};

use super::{Frame, Viewer, robots::Button};
use crate::{AppState, api, error::ApiError};

#[derive(Template)]
#[template(path = "sessions.html")]
struct SessionsPage<'a> {
    frame: &'a Frame,
    sessions: Vec<SessionCard>,
    /// The agent the page shows the sessions of, if only one.
    agent: Option<String>,
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
    let caller = &viewer.caller;
    let Json(sessions) =
        api::sessions::list_sessions(State(state.clone()), caller.clone(), query).await?;
    let sessions = sessions
        .into_iter()
        .map(|session| {
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
        })
        .collect();
    Ok(SessionsPage {
        frame: &viewer.frame,
        sessions,
        agent,
    })
}
