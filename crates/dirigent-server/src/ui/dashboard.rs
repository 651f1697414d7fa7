//! The dashboard: agents online, robots by state, the runs now and the failures of the last
//! 24 hours — each part shown only to readers who may read what it counts.

use askama::Template;
use axum::{Json, extract::State, response::Response};
use dirigent_domain::access::{Action, Resource};
use dirigent_proto::{
    agent::AgentState,
    robot::{Robot, RobotMode},
    run::Run,
};
use jiff::SignedDuration;

use super::{Frame, Viewer, robots::active_runs};
use crate::{AppState, api, error::ApiError};

/// How many recent failures the dashboard lists (and counts, beyond which it says "N+").
const FAILURES_SHOWN: u32 = 500;

/// A robot's state as the dashboard counts it.
pub(super) struct StateCount {
    pub label: &'static str,
    pub count: usize,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage<'a> {
    frame: &'a Frame,
    /// Online and all agents; none when the reader may not read agents.
    agents: Option<(usize, usize)>,
    robots: Option<Vec<StateCount>>,
    runs_now: Option<Vec<Run>>,
    failures: Option<Vec<Run>>,
    failures_capped: bool,
}

pub(super) async fn page(State(state): State<AppState>, viewer: Viewer) -> Response {
    viewer.page(dashboard(&state, &viewer).await)
}

async fn dashboard<'a>(
    state: &AppState,
    viewer: &'a Viewer,
) -> Result<DashboardPage<'a>, ApiError> {
    let caller = &viewer.caller;
    let agents = if caller.may(Resource::Agents, Action::Read, None) {
        let Json(agents) = api::agents::list_agents(State(state.clone()), caller.clone()).await?;
        let online = agents
            .iter()
            .filter(|agent| agent.state == AgentState::Online)
            .count();
        Some((online, agents.len()))
    } else {
        None
    };
    let runs_now = active_runs(state, caller).await?;
    let (failures, failures_capped) = if runs_now.is_some() {
        let since = state
            .clock
            .now()
            .saturating_sub(SignedDuration::from_hours(24))
            .map_err(ApiError::internal)?;
        let failed = state.store.failed_runs_since(since, FAILURES_SHOWN).await?;
        let capped = failed.len() == FAILURES_SHOWN as usize;
        let failures: Vec<Run> = failed
            .into_iter()
            .filter(|run| caller.may(Resource::Runs, Action::Read, Some(&run.robot)))
            .map(api::runs::to_wire)
            .collect();
        (Some(failures), capped)
    } else {
        (None, false)
    };
    let robots = if caller.may(Resource::Robots, Action::Read, None) {
        let Json(robots) = api::robots::list_robots(State(state.clone()), caller.clone()).await?;
        Some(robot_states(
            &robots,
            runs_now.as_deref().unwrap_or_default(),
        ))
    } else {
        None
    };
    Ok(DashboardPage {
        frame: &viewer.frame,
        agents,
        robots,
        runs_now,
        failures,
        failures_capped,
    })
}

/// Counts robots as running (a run is active), paused (all its active runs are paused),
/// manual (an operator took control, nothing runs) and idle.
fn robot_states(robots: &[Robot], runs_now: &[Run]) -> Vec<StateCount> {
    let mut counts = [("running", 0), ("paused", 0), ("manual", 0), ("idle", 0)];
    for robot in robots {
        let active: Vec<&Run> = runs_now
            .iter()
            .filter(|run| run.robot == robot.name)
            .collect();
        let index = if active.is_empty() {
            if robot.mode == RobotMode::Manual {
                2
            } else {
                3
            }
        } else if active
            .iter()
            .all(|run| run.state == dirigent_proto::run::RunState::Paused)
        {
            1
        } else {
            0
        };
        counts[index].1 += 1;
    }
    counts
        .into_iter()
        .map(|(label, count)| StateCount { label, count })
        .collect()
}
