//! The agents page: each agent's state, labels, capacity and current runs, and the button that
//! drains it (or gives it runs again).

use askama::Template;
use axum::{Json, extract::State, response::Response};
use dirigent_domain::access::{Action, Resource};
use dirigent_proto::{
    agent::{Agent, AgentState},
    run::Run,
};

use super::{
    Frame, Viewer,
    robots::{Button, active_runs},
};
use crate::{AppState, api, error::ApiError};

pub(super) struct AgentRow {
    pub agent: Agent,
    pub runs: Vec<Run>,
    pub drain: Option<Button>,
}

#[derive(Template)]
#[template(path = "agents.html")]
struct AgentsPage<'a> {
    frame: &'a Frame,
    agents: Vec<AgentRow>,
}

pub(super) async fn list(State(state): State<AppState>, viewer: Viewer) -> Response {
    viewer.page(agents_page(&state, &viewer).await)
}

async fn agents_page<'a>(state: &AppState, viewer: &'a Viewer) -> Result<AgentsPage<'a>, ApiError> {
    let caller = &viewer.caller;
    let Json(agents) = api::agents::list_agents(State(state.clone()), caller.clone()).await?;
    let active = active_runs(state, caller).await?.unwrap_or_default();
    let agents = agents
        .into_iter()
        .map(|agent| {
            let drain = caller
                .may(Resource::Agents, Action::Admin, Some(&agent.name))
                .then(|| {
                    let draining = agent.state != AgentState::Draining;
                    Button {
                        label: if draining { "Drain" } else { "Undrain" },
                        method: "POST",
                        path: format!("/api/v1/agents/{}/drain", agent.name),
                        body: serde_json::json!({ "draining": draining }).to_string(),
                        then: "refresh",
                        confirm: draining,
                        class: "",
                    }
                });
            AgentRow {
                runs: active
                    .iter()
                    .filter(|run| run.agent.as_deref() == Some(agent.name.as_str()))
                    .cloned()
                    .collect(),
                drain,
                agent,
            }
        })
        .collect();
    Ok(AgentsPage {
        frame: &viewer.frame,
        agents,
    })
}
