//! The HTTP API: `/api/v1/…` plus `/healthz` and `/readyz`, each route registered together
//! with its OpenAPI description, so the document served at `/api/v1/openapi.json` is generated
//! from the same code that routes.
//!
//! Handlers are thin: take a [`Caller`](crate::auth::Caller), declare the permission they
//! need, parse, call the store, convert to wire types.

pub(crate) mod activities;
pub(crate) mod agents;
pub(crate) mod audit;
mod events;
mod health;
mod json;
pub(crate) mod logs;
pub(crate) mod queues;
mod retention;
pub(crate) mod robots;
pub(crate) mod runs;
mod session;
pub mod sessions;
mod tokens;
pub(crate) mod triggers;
pub(crate) mod users;

use std::sync::LazyLock;

use axum::response::IntoResponse;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{Http, HttpAuthScheme, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{AppState, auth::Caller, error::ApiError};

pub use json::{ApiJson, ApiQuery, PathSegment};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Dirigent API",
        description = "Dirigent keeps an array of software robots working without interruption. \
            Authenticate with `Authorization: Bearer TOKEN`, where TOKEN comes from \
            `POST /api/v1/login` or is an API token. Errors answer `{\"code\", \"message\", \"field\"?, \"request_id\"}`."
    ),
    modifiers(&BearerAuth),
    components(schemas(dirigent_proto::error::ErrorBody)),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Every route of the API with its description.
pub fn router() -> OpenApiRouter<AppState> {
    let v1 = OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .routes(routes!(session::login))
        .routes(routes!(session::logout))
        .routes(routes!(session::me))
        .routes(routes!(session::set_language))
        .routes(routes!(tokens::list_tokens, tokens::create_token))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(robots::list_robots, robots::create_robot))
        .routes(routes!(
            robots::get_robot,
            robots::replace_robot,
            robots::delete_robot
        ))
        .routes(routes!(robots::set_auto))
        .routes(routes!(runs::list_runs, runs::create_run))
        .routes(routes!(runs::get_run))
        .routes(routes!(runs::pause_run))
        .routes(routes!(runs::resume_run))
        .routes(routes!(runs::stop_run))
        .routes(routes!(runs::kill_run))
        .routes(routes!(runs::restart_run))
        .routes(routes!(runs::run_logs))
        .routes(routes!(runs::follow_logs))
        .routes(routes!(events::follow_events))
        .routes(routes!(agents::list_agents))
        .routes(routes!(agents::get_agent))
        .routes(routes!(agents::drain_agent))
        .routes(routes!(agents::create_enrollment_token))
        .routes(routes!(agents::list_nodes))
        .routes(routes!(sessions::list_sessions))
        .routes(routes!(sessions::get_session))
        .routes(routes!(sessions::screenshot))
        .routes(routes!(sessions::live))
        .routes(routes!(sessions::restart_session))
        .routes(routes!(sessions::take_control, sessions::give_back))
        .routes(routes!(sessions::send_input))
        .routes(routes!(sessions::run_frames))
        .routes(routes!(sessions::run_frame))
        .routes(routes!(activities::catalog))
        .routes(routes!(activities::get_activity))
        .routes(routes!(activities::activity_output))
        .routes(routes!(activities::follow_output))
        .routes(routes!(activities::cancel_activity))
        .routes(routes!(audit::list_audit))
        .routes(routes!(logs::search_logs))
        .routes(routes!(logs::export_logs))
        .routes(routes!(logs::tail_logs))
        .routes(routes!(retention::get_retention))
        .routes(routes!(retention::sweep))
        .routes(routes!(users::list_users, users::create_user))
        .routes(routes!(
            users::get_user,
            users::update_user,
            users::delete_user
        ))
        .routes(routes!(users::logout_user))
        .routes(routes!(users::change_password))
        .routes(routes!(users::list_roles, users::create_role))
        .routes(routes!(users::delete_role))
        .routes(routes!(queues::list_queues, queues::create_queue))
        .routes(routes!(
            queues::get_queue,
            queues::replace_queue,
            queues::delete_queue
        ))
        .routes(routes!(queues::list_items, queues::add_items))
        .routes(routes!(queues::claim_item))
        .routes(routes!(queues::claim_items))
        .routes(routes!(queues::get_item, queues::delete_item))
        .routes(routes!(queues::extend_lease))
        .routes(routes!(queues::complete_item))
        .routes(routes!(queues::complete_items))
        .routes(routes!(queues::fail_item))
        .routes(routes!(queues::postpone_item))
        .routes(routes!(queues::abandon_item))
        .routes(routes!(queues::requeue_item))
        .routes(routes!(queues::requeue_items))
        .routes(routes!(queues::delete_items))
        .routes(routes!(triggers::list_triggers, triggers::create_trigger))
        .routes(routes!(
            triggers::get_trigger,
            triggers::replace_trigger,
            triggers::delete_trigger
        ))
        .routes(routes!(triggers::enable_trigger))
        .routes(routes!(triggers::disable_trigger))
        .routes(routes!(triggers::preview_trigger))
        .routes(routes!(triggers::list_firings))
        .routes(routes!(triggers::list_calendars, triggers::create_calendar))
        .routes(routes!(
            triggers::get_calendar,
            triggers::replace_calendar,
            triggers::delete_calendar
        ));
    // An activity may carry a file to write: a larger body than other requests.
    let activities = OpenApiRouter::new()
        .routes(routes!(
            activities::list_activities,
            activities::create_activity
        ))
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::activities::MAX_REQUEST_BYTES,
        ));
    let blobs = OpenApiRouter::new()
        .routes(routes!(activities::upload_blob))
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::activities::MAX_BLOB_BYTES,
        ));
    let v1 = v1.merge(activities).merge(blobs);
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(crate::metrics::scrape))
        .routes(routes!(agents::enroll))
        .routes(routes!(crate::fleet::link::connect))
        .routes(routes!(activities::download_blob))
        .nest("/api/v1", v1)
}

/// The OpenAPI document of the API, with the answers every operation of its kind can give.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut document = router().into_openapi();
    complete(&mut document);
    document
}

/// Adds to each operation the error answers that the layers under every handler give (an
/// operation's own annotations list its particular ones), and to every answer without one the
/// description a document must have (the status's reason phrase): a request body can be
/// malformed (400), too large (413), of another type (415) or invalid (422); query parameters
/// invalid (422); a path segment malformed (400); a credential missing (401) or not allowed
/// (403); and anything can meet an unreachable database (503) or a fault (500).
fn complete(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{
        ContentBuilder, Ref, RefOr, ResponseBuilder,
        path::{Operation, ParameterIn},
    };
    let error = || {
        let body = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build();
        ResponseBuilder::new().content("application/json", body)
    };
    let complete_operation = |operation: &mut Operation| {
        let mut statuses: Vec<u16> = vec![500, 503];
        if operation.request_body.is_some() {
            statuses.extend([400, 413, 415, 422]);
        }
        let parameters = operation.parameters.iter().flatten();
        for parameter in parameters {
            match parameter {
                RefOr::T(parameter) if parameter.parameter_in == ParameterIn::Query => {
                    statuses.push(422)
                }
                RefOr::T(parameter) if parameter.parameter_in == ParameterIn::Path => {
                    statuses.push(400)
                }
                _ => {}
            }
        }
        if operation
            .security
            .as_ref()
            .is_some_and(|security| !security.is_empty())
        {
            statuses.extend([401, 403]);
        }
        for status in statuses {
            operation
                .responses
                .responses
                .entry(status.to_string())
                .or_insert_with(|| RefOr::T(error().build()));
        }
        for (status, answer) in &mut operation.responses.responses {
            if let RefOr::T(answer) = answer
                && answer.description.is_empty()
            {
                answer.description = status
                    .parse::<u16>()
                    .ok()
                    .and_then(|code| axum::http::StatusCode::from_u16(code).ok())
                    .and_then(|code| code.canonical_reason())
                    .unwrap_or("Answer")
                    .to_owned();
            }
        }
    };
    for item in document.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            complete_operation(operation);
        }
    }
}

static OPENAPI_JSON: LazyLock<Result<String, String>> =
    LazyLock::new(|| openapi().to_pretty_json().map_err(|err| err.to_string()));

/// The OpenAPI 3 document of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json"),
        (status = 401, body = dirigent_proto::error::ErrorBody),
    )
)]
async fn openapi_json(_caller: Caller) -> Result<impl IntoResponse, ApiError> {
    let doc = OPENAPI_JSON.as_ref().map_err(ApiError::internal)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.clone(),
    ))
}

/// How many rows a list answers: `given`, else `default`; a number outside 1 to `max` is
/// refused (the document says the same range).
pub(crate) fn page_limit(given: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    let limit = given.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::invalid(dirigent_domain::InvalidField::new(
            "limit",
            format!("must be between 1 and {max}"),
        )));
    }
    Ok(limit)
}
