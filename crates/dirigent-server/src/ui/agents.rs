//! The agents page: each agent's state, labels, capacity and current runs, the buttons that
//! drain it (or give it runs again) and restart it, and its ways into the console.

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
    pub restart: Option<Button>,
    /// Links into the console for this agent, if the reader may use it.
    pub console: Vec<(&'static str, String)>,
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
            let restart = caller
                .may(Resource::Agents, Action::Admin, Some(&agent.name))
                .then(|| Button {
                    label: "Restart",
                    method: "POST",
                    path: "/api/v1/activities".to_owned(),
                    body: serde_json::json!({
                        "target": agent.name,
                        "operation": "agent.restart",
                        "mode": "parallel",
                    })
                    .to_string(),
                    then: "refresh",
                    confirm: true,
                    class: "",
                });
            let console = match caller.may(Resource::Console, Action::Use, None) {
                true => [
                    ("Console", ""),
                    ("Info", "info"),
                    ("Processes", "processes"),
                    ("Files", "files.list"),
                ]
                .into_iter()
                .map(|(label, operation)| {
                    let link = match operation {
                        "" => format!("/console#target={}", agent.name),
                        operation => {
                            format!("/console#target={}&operation={operation}", agent.name)
                        }
                    };
                    (label, link)
                })
                .collect(),
                false => Vec::new(),
            };
            AgentRow {
                restart,
                console,
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
