//! Robot definitions: `/api/v1/robots` and `/api/v1/robots/{name}`.

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use dirigent_domain::{
    InvalidField,
    access::{Action, Resource},
    robot::{self as domain, RobotDraft},
};
use dirigent_proto::{
    error::{ErrorBody, ErrorCode},
    robot::{CrashLoop, RestartBackoff, RestartPolicy, Robot, RobotMode, RobotSpec},
};

use crate::{
    AppState,
    api::{ApiJson, PathSegment},
    audit::AuditSlot,
    auth::Caller,
    error::ApiError,
    fleet::FleetError,
};

/// The robots the caller may read, ordered by name.
#[utoipa::path(
    get,
    path = "/robots",
    tag = "robots",
    security(("bearer" = [])),
    responses((status = 200, body = [Robot]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn list_robots(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Robot>>, ApiError> {
    caller.require(Resource::Robots, Action::Read, None)?;
    let robots = state.store.robots().await?;
    let visible = robots
        .into_iter()
        .filter(|robot| {
            caller.may(
                Resource::Robots,
                Action::Read,
                Some(robot.definition.name.as_str()),
            )
        })
        .map(to_wire)
        .collect();
    Ok(Json(visible))
}

/// Defines a new robot.
#[utoipa::path(
    post,
    path = "/robots",
    tag = "robots",
    security(("bearer" = [])),
    request_body = RobotSpec,
    responses(
        (status = 201, body = Robot),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, description = "A robot of this name exists", body = ErrorBody),
        (status = 422, description = "A field is invalid; `field` names it", body = ErrorBody),
    )
)]
pub(super) async fn create_robot(
    State(state): State<AppState>,
    caller: Caller,
    audit: AuditSlot,
    ApiJson(spec): ApiJson<RobotSpec>,
) -> Result<impl IntoResponse, ApiError> {
    let Some(name) = spec.name.clone() else {
        return Err(ApiError::invalid(InvalidField::new("name", "is required")));
    };
    audit.about(format!("robot:{name}"));
    caller.require(Resource::Robots, Action::Edit, Some(&name))?;
    let definition = to_domain(name, spec).map_err(ApiError::invalid)?;
    let name = definition.name.to_string();
    let exists = || {
        ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::RobotExists,
            format!("a robot named {name:?} exists already"),
        )
    };
    let robot = state
        .fleet
        .create_robot(&definition)
        .await
        .map_err(|err| match err {
            FleetError::Store(err) => {
                ApiError::from_store(err, || ApiError::internal("robot vanished"), exists)
            }
            other => other.into(),
        })?;
    let location = format!("/api/v1/robots/{name}");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(to_wire(robot)),
    ))
}

/// One robot's definition.
#[utoipa::path(
    get,
    path = "/robots/{name}",
    tag = "robots",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The robot's name")),
    responses(
        (status = 200, body = Robot),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub(crate) async fn get_robot(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(name): PathSegment,
) -> Result<Json<Robot>, ApiError> {
    caller.require(Resource::Robots, Action::Read, Some(&name))?;
    let robot = state
        .store
        .robot(&name)
        .await
        .map_err(|err| robot_store_error(err, &name))?;
    Ok(Json(to_wire(robot)))
}

/// Replaces a robot's definition; fields left out take their defaults.
#[utoipa::path(
    put,
    path = "/robots/{name}",
    tag = "robots",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The robot's name")),
    request_body = RobotSpec,
    responses(
        (status = 200, body = Robot),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "A field is invalid; `field` names it", body = ErrorBody),
    )
)]
pub(super) async fn replace_robot(
    State(state): State<AppState>,
    caller: Caller,
    audit: AuditSlot,
    PathSegment(name): PathSegment,
    ApiJson(spec): ApiJson<RobotSpec>,
) -> Result<Json<Robot>, ApiError> {
    caller.require(Resource::Robots, Action::Edit, Some(&name))?;
    if spec
        .name
        .as_ref()
        .is_some_and(|body_name| *body_name != name)
    {
        return Err(ApiError::invalid(InvalidField::new(
            "name",
            format!("must be {name:?}, as in the path, or be left out (robots cannot be renamed)"),
        )));
    }
    let definition = to_domain(name.clone(), spec).map_err(ApiError::invalid)?;
    let before = state.store.robot(&name).await.ok().map(to_wire);
    let robot = state
        .fleet
        .replace_robot(&definition)
        .await
        .map_err(|err| robot_fleet_error(err, &name))?;
    let robot = to_wire(robot);
    if let Some(before) = before {
        audit.changed(&before, &robot);
    }
    Ok(Json(robot))
}

/// Deletes a robot's definition.
#[utoipa::path(
    delete,
    path = "/robots/{name}",
    tag = "robots",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The robot's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub(super) async fn delete_robot(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(name): PathSegment,
) -> Result<StatusCode, ApiError> {
    caller.require(Resource::Robots, Action::Edit, Some(&name))?;
    state
        .fleet
        .delete_robot(&name)
        .await
        .map_err(|err| robot_fleet_error(err, &name))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Returns a robot to auto mode: automation (restart policy, triggers) acts on it again.
#[utoipa::path(
    post,
    path = "/robots/{name}/auto",
    tag = "robots",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The robot's name")),
    responses(
        (status = 200, body = Robot),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub(super) async fn set_auto(
    State(state): State<AppState>,
    caller: Caller,
    PathSegment(name): PathSegment,
) -> Result<Json<Robot>, ApiError> {
    caller.require(Resource::Robots, Action::Run, Some(&name))?;
    state.fleet.set_auto(&name, &caller.username).await?;
    let robot = state
        .store
        .robot(&name)
        .await
        .map_err(|err| robot_store_error(err, &name))?;
    Ok(Json(to_wire(robot)))
}

fn robot_store_error(err: dirigent_store::StoreError, name: &str) -> ApiError {
    ApiError::from_lookup(
        err,
        ErrorCode::RobotNotFound,
        format!("no robot named {name:?}"),
    )
}

fn robot_fleet_error(err: FleetError, name: &str) -> ApiError {
    match err {
        FleetError::Store(err) => robot_store_error(err, name),
        other => other.into(),
    }
}

fn to_domain(name: String, spec: RobotSpec) -> Result<domain::RobotDefinition, InvalidField> {
    RobotDraft {
        name,
        description: spec.description,
        argv: spec.argv,
        working_dir: spec.working_dir,
        env: spec.env,
        agent: spec.agent,
        max_parallel: spec.max_parallel,
        stop_grace_seconds: spec.stop_grace_seconds,
        max_duration_seconds: spec.max_duration_seconds,
        restart_policy: spec.restart_policy.map(|policy| match policy {
            RestartPolicy::Never => domain::RestartPolicy::Never,
            RestartPolicy::OnFailure => domain::RestartPolicy::OnFailure,
            RestartPolicy::Always => domain::RestartPolicy::Always,
        }),
        restart_backoff: spec.restart_backoff.map(|backoff| domain::RestartBackoff {
            initial_seconds: backoff.initial_seconds,
            max_seconds: backoff.max_seconds,
        }),
        crash_loop: spec.crash_loop.map(|guard| domain::CrashLoopGuard {
            max_starts: guard.max_starts,
            window_seconds: guard.window_seconds,
        }),
        needs_display: spec.needs_display,
        queues: spec.queues,
    }
    .validate()
}

fn to_wire(robot: domain::Robot) -> Robot {
    let definition = robot.definition;
    let agent = definition.agent.to_string();
    Robot {
        name: definition.name.to_string(),
        description: definition.description,
        argv: definition.argv,
        working_dir: definition.working_dir,
        env: definition.env,
        agent: (!agent.is_empty()).then_some(agent),
        max_parallel: definition.max_parallel,
        stop_grace_seconds: definition.stop_grace_seconds,
        max_duration_seconds: definition.max_duration_seconds,
        restart_policy: match definition.restart_policy {
            domain::RestartPolicy::Never => RestartPolicy::Never,
            domain::RestartPolicy::OnFailure => RestartPolicy::OnFailure,
            domain::RestartPolicy::Always => RestartPolicy::Always,
        },
        restart_backoff: RestartBackoff {
            initial_seconds: definition.restart_backoff.initial_seconds,
            max_seconds: definition.restart_backoff.max_seconds,
        },
        crash_loop: CrashLoop {
            max_starts: definition.crash_loop.max_starts,
            window_seconds: definition.crash_loop.window_seconds,
        },
        needs_display: definition.needs_display,
        queues: definition
            .queues
            .iter()
            .map(|pattern| pattern.as_str().to_owned())
            .collect(),
        mode: match robot.mode {
            domain::RobotMode::Auto => RobotMode::Auto,
            domain::RobotMode::Manual => RobotMode::Manual,
        },
        mode_reason: robot.mode_reason,
        created_at: robot.created_at,
        updated_at: robot.updated_at,
    }
}
