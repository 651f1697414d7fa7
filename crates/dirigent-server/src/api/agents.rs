//! Agents: list and read them, drain them, create enrollment tokens, and the enrollment
//! itself (`POST /agent/v1/enroll`, authenticated by the enrollment token in the body).

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use dirigent_domain::{
    InvalidField,
    access::{Action, Resource},
    agent as domain,
    robot::RobotName,
};
use dirigent_proto::{
    agent::{
        Agent, AgentState, CreateEnrollmentToken, DrainRequest, EnrollRequest, EnrollResponse,
        EnrollmentToken,
    },
    error::{ErrorBody, ErrorCode},
};
use jiff::SignedDuration;

use crate::{
    AppState,
    api::{ApiJson, PathSegment},
    auth::{Caller, secrets},
    error::ApiError,
    fleet::{self, FleetError},
};

/// Every agent with its state and load.
#[utoipa::path(
    get,
    path = "/agents",
    tag = "agents",
    security(("bearer" = [])),
    responses((status = 200, body = [Agent]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn list_agents(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Agent>>, ApiError> {
    caller.require(Resource::Agents, Action::Read, None)?;
    let agents = state.store.agents().await?;
    let visible = agents
        .into_iter()
        .filter(|agent| caller.may(Resource::Agents, Action::Read, Some(&agent.name)));
    Ok(Json(visible.map(to_wire).collect()))
}

/// One agent.
#[utoipa::path(
    get,
    path = "/agents/{name}",
    tag = "agents",
    security(("bearer" = [])),
    params(("name" = String, Path)),
    responses(
        (status = 200, body = Agent),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub(super) async fn get_agent(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(name): PathSegment,
) -> Result<Json<Agent>, ApiError> {
    caller.require(Resource::Agents, Action::Read, Some(&name))?;
    let agent = state
        .store
        .agent(&name)
        .await
        .map_err(|err| agent_error(err, &name))?;
    Ok(Json(to_wire(agent)))
}

/// Drains an agent (it finishes its runs and takes no new ones), or ends the draining.
#[utoipa::path(
    post,
    path = "/agents/{name}/drain",
    tag = "agents",
    security(("bearer" = [])),
    params(("name" = String, Path)),
    request_body = DrainRequest,
    responses(
        (status = 200, body = Agent),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub(super) async fn drain_agent(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(name): PathSegment,
    ApiJson(request): ApiJson<DrainRequest>,
) -> Result<Json<Agent>, ApiError> {
    caller.require(Resource::Agents, Action::Admin, Some(&name))?;
    state
        .fleet
        .set_draining(&name, request.draining)
        .await
        .map_err(|err| match err {
            FleetError::Store(err) => agent_error(err, &name),
            other => other.into(),
        })?;
    let agent = state
        .store
        .agent(&name)
        .await
        .map_err(|err| agent_error(err, &name))?;
    Ok(Json(to_wire(agent)))
}

/// Creates a one-time enrollment token for a new agent (shown once).
#[utoipa::path(
    post,
    path = "/agents/enrollment-tokens",
    tag = "agents",
    security(("bearer" = [])),
    request_body = CreateEnrollmentToken,
    responses(
        (status = 201, body = EnrollmentToken),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub(super) async fn create_enrollment_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateEnrollmentToken>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Resource::Agents, Action::Admin, None)?;
    let seconds = request.expires_in_seconds.unwrap_or(3600);
    if !(60..=7 * 24 * 3600).contains(&seconds) {
        return Err(ApiError::invalid(InvalidField::new(
            "expires_in_seconds",
            "must be between 60 and 604800",
        )));
    }
    let token = secrets::new_token(secrets::ENROLLMENT_PREFIX).map_err(ApiError::internal)?;
    let now = state.clock.now();
    let expires_at = now
        .saturating_add(SignedDuration::from_secs(i64::from(seconds)))
        .map_err(ApiError::internal)?;
    state
        .store
        .insert_enrollment_token(&secrets::token_digest(&token), now, expires_at)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(EnrollmentToken { token, expires_at }),
    ))
}

/// Exchanges an enrollment token (once) for the agent's own credential.
#[utoipa::path(
    post,
    path = "/agent/v1/enroll",
    tag = "agents",
    request_body = EnrollRequest,
    responses(
        (status = 201, body = EnrollResponse),
        (status = 401, description = "The enrollment token is unknown, used or expired", body = ErrorBody),
        (status = 409, description = "An agent of this name exists", body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub(super) async fn enroll(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<EnrollRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let name = RobotName::parse(&request.name)
        .map_err(|err| ApiError::invalid(InvalidField::new("name", err.reason)))?;
    let refused = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidCredentials,
            "the enrollment token is unknown, used or expired",
        )
    };
    let taken = || {
        ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::AgentExists,
            format!("an agent named {:?} is enrolled already", request.name),
        )
    };
    let credential = fleet::enroll(&state.fleet, &request.token, name.as_str())
        .await
        .map_err(|err| ApiError::from_store(err, refused, taken))?;
    let location = format!("/api/v1/agents/{name}");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(EnrollResponse {
            name: name.to_string(),
            credential,
        }),
    ))
}

fn agent_error(err: dirigent_store::StoreError, name: &str) -> ApiError {
    ApiError::from_lookup(
        err,
        ErrorCode::AgentNotFound,
        format!("no agent named {name:?}"),
    )
}

fn to_wire(agent: domain::Agent) -> Agent {
    let state = match (agent.online, agent.draining) {
        (false, _) => AgentState::Offline,
        (true, true) => AgentState::Draining,
        (true, false) => AgentState::Online,
    };
    Agent {
        name: agent.name,
        state,
        host: agent.host,
        os_user: agent.os_user,
        labels: agent.labels,
        capacity: agent.capacity,
        active_runs: agent.active_runs,
        version: agent.version,
        last_seen_at: agent.last_seen_at,
        node: agent.node,
        sessions: agent.sessions_offered,
    }
}

/// The orchestrator nodes sharing the database: alive or silent, which leads, how many agents
/// each holds.
#[utoipa::path(
    get,
    path = "/nodes",
    tag = "agents",
    security(("bearer" = [])),
    responses((status = 200, body = [dirigent_proto::agent::Node]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(super) async fn list_nodes(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<dirigent_proto::agent::Node>>, ApiError> {
    caller.require(Resource::Agents, Action::Read, None)?;
    let nodes = state.store.nodes().await?;
    let leader = state.store.lease_holder(crate::cluster::SINGLETONS).await?;
    let agents = state.store.agents().await?;
    let alive_after = state.clock.now() - state.config.cluster.takeover_after;
    Ok(Json(
        nodes
            .into_iter()
            .map(|node| dirigent_proto::agent::Node {
                state: match alive_after <= node.heartbeat_at {
                    true => dirigent_proto::agent::NodeState::Alive,
                    false => dirigent_proto::agent::NodeState::Silent,
                },
                leading: leader.as_deref() == Some(node.id.as_str()),
                agents: u32::try_from(
                    agents
                        .iter()
                        .filter(|agent| agent.online && agent.node.as_deref() == Some(&node.id))
                        .count(),
                )
                .unwrap_or(u32::MAX),
                id: node.id,
                version: node.version,
                started_at: node.started_at,
                heartbeat_at: node.heartbeat_at,
            })
            .collect(),
    ))
}
