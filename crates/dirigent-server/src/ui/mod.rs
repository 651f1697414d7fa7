//! The control panel: pages rendered on the server at `/` (askama templates in `templates/`),
//! one stylesheet and one script embedded in the binary (`assets/`).
//!
//! Pages read through the API's own handlers, so they show exactly what the API would answer
//! the same caller; every button and form of a page calls the JSON API (with the session
//! cookie and its CSRF token), so the panel can do nothing the API would refuse. Pages update
//! in place when `/api/v1/events` reports a change that concerns them.

mod admin;
mod agents;
mod console;
mod dashboard;
mod i18n;
mod logs;
mod queues;
mod robots;
mod sessions;
mod triggers;

use std::sync::LazyLock;

use askama::Template;
use axum::{
    Router,
    extract::{FromRequestParts, Path},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{Html, IntoResponse, Redirect, Response},
    routing::get,
};
use dirigent_domain::access::{Action, Resource};
use jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::{
    AppState,
    auth::{Caller, cookie},
    error::ApiError,
};

pub use i18n::Lang;

/// The panel's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/login", get(login))
        .route("/robots", get(robots::list))
        .route("/robots/{name}", get(robots::robot))
        .route("/runs/{id}", get(robots::run))
        .route("/agents", get(agents::list))
        .route("/sessions", get(sessions::list))
        .route("/sessions/{agent}/{number}", get(sessions::session))
        .route("/triggers", get(triggers::list))
        .route("/triggers/{id}", get(triggers::trigger))
        .route("/calendars", get(triggers::calendars))
        .route("/queues", get(queues::list))
        .route("/queues/{name}", get(queues::queue))
        .route("/console", get(console::console))
        .route("/activities/{id}", get(console::activity))
        .route("/users", get(admin::users))
        .route("/audit", get(admin::audit))
        .route("/logs", get(logs::logs))
        .route("/assets/{file}", get(asset))
}

/// What pages may load and do: only this server's own script, styles and API.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; \
    frame-ancestors 'none'";

/// Marks a response as a rendered page, which the JSON error renderer leaves as it is.
#[derive(Clone, Copy)]
pub(crate) struct RenderedPage;

struct Asset {
    body: &'static str,
    content_type: &'static str,
}

const STYLESHEET: Asset = Asset {
    body: include_str!("../../assets/panel.css"),
    content_type: "text/css; charset=utf-8",
};
const SCRIPT: Asset = Asset {
    body: include_str!("../../assets/panel.js"),
    content_type: "text/javascript; charset=utf-8",
};

/// A digest of the assets, put in their addresses so that browsers may keep them forever.
static ASSETS_VERSION: LazyLock<String> = LazyLock::new(|| {
    let digest = Sha256::new()
        .chain_update(STYLESHEET.body)
        .chain_update(SCRIPT.body)
        .finalize();
    digest[..6]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
});

async fn asset(Path(file): Path<String>) -> Response {
    let asset = match file.as_str() {
        "panel.css" => STYLESHEET,
        "panel.js" => SCRIPT,
        _ => return ApiError::for_status(StatusCode::NOT_FOUND).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        asset.body,
    )
        .into_response()
}

/// One entry of the navigation.
pub(crate) struct NavItem {
    pub href: &'static str,
    pub label: &'static str,
    pub current: bool,
}

/// What every page shows around its content: who is signed in, in which language, the
/// navigation they may use, and the CSRF token the script sends with every change.
pub(crate) struct Frame {
    pub lang: Lang,
    pub langs: [Lang; 2],
    pub username: String,
    pub csrf: String,
    pub nav: Vec<NavItem>,
    pub assets: &'static str,
}

impl Frame {
    /// `english` in the page's language.
    pub(crate) fn t<'a>(&self, english: &'a str) -> &'a str {
        self.lang.t(english)
    }

    /// A `<time>` element: UTC here, turned into the reader's local time by the script.
    /// Markup made only of digits and punctuation, so safe to include as it is.
    pub(crate) fn time(&self, time: &Timestamp) -> String {
        format!(
            "<time datetime=\"{time}\">{}</time>",
            time.strftime("%Y-%m-%d %H:%M:%S UTC")
        )
    }

    pub(crate) fn time_opt(&self, time: &Option<Timestamp>) -> String {
        time.as_ref()
            .map(|time| self.time(time))
            .unwrap_or_default()
    }
}

/// A signed-in reader of a page: the caller (with the permissions the API checks) and the
/// page's frame. Without a session the reader is sent to the login page.
pub(crate) struct Viewer {
    pub caller: Caller,
    pub frame: Frame,
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Viewer, Response> {
        let caller = match Caller::from_request_parts(parts, state).await {
            Ok(caller) if caller.user_id.is_some() => caller,
            Ok(_) => {
                return Err(ApiError::forbidden("the control panel is for users").into_response());
            }
            Err(err) if err.status == StatusCode::UNAUTHORIZED => {
                let back = parts.uri.path_and_query().map_or("/", |path| path.as_str());
                let next: String = form_urlencoded::byte_serialize(back.as_bytes()).collect();
                return Err(Redirect::to(&format!("/login?next={next}")).into_response());
            }
            Err(err) => return Err(err.into_response()),
        };
        let saved = match state.store.user(&caller.username).await {
            Ok(user) => user.language.as_deref().and_then(Lang::from_code),
            Err(_) => None,
        };
        let lang = saved.unwrap_or_else(|| browser_language(&parts.headers));
        let csrf = cookie::session_token(&parts.headers)
            .map(cookie::csrf_token)
            .unwrap_or_default();
        let path = parts.uri.path();
        let nav = [
            ("/", "Dashboard", None),
            ("/robots", "Robots", Some((Resource::Robots, Action::Read))),
            ("/agents", "Agents", Some((Resource::Agents, Action::Read))),
            (
                "/sessions",
                "Sessions",
                Some((Resource::Sessions, Action::View)),
            ),
            (
                "/triggers",
                "Triggers",
                Some((Resource::Triggers, Action::Read)),
            ),
            (
                "/calendars",
                "Calendars",
                Some((Resource::Calendars, Action::Read)),
            ),
            ("/queues", "Queues", Some((Resource::Queues, Action::Read))),
            ("/logs", "Logs", Some((Resource::Logs, Action::Read))),
            (
                "/console",
                "Console",
                Some((Resource::Console, Action::Use)),
            ),
            ("/users", "Users", Some((Resource::Users, Action::Admin))),
            (
                "/audit",
                "Audit log",
                Some((Resource::Users, Action::Admin)),
            ),
        ]
        .into_iter()
        .filter(|(_, _, needs)| {
            needs.is_none_or(|(resource, action)| caller.may(resource, action, None))
        })
        .map(|(href, label, _)| NavItem {
            href,
            label,
            current: path == href || (href != "/" && path.starts_with(href)),
        })
        .collect();
        let frame = Frame {
            lang,
            langs: Lang::ALL,
            username: caller.username.clone(),
            csrf,
            nav,
            assets: ASSETS_VERSION.as_str(),
        };
        Ok(Viewer { caller, frame })
    }
}

fn browser_language(headers: &HeaderMap) -> Lang {
    headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|value| value.to_str().ok())
        .map_or(Lang::En, Lang::from_accept_language)
}

impl Viewer {
    /// The page `template` renders, or the page that says why there is none.
    pub(crate) fn page<T: Template>(&self, template: Result<T, ApiError>) -> Response {
        match template {
            Ok(template) => render(StatusCode::OK, &template),
            Err(err) => self.error(err),
        }
    }

    /// A page saying why the request failed, in the reader's language.
    pub(crate) fn error(&self, err: ApiError) -> Response {
        let (status, title) = match err.status {
            StatusCode::NOT_FOUND => (err.status, "Not found"),
            StatusCode::FORBIDDEN => (err.status, "Not allowed"),
            status if status.is_client_error() => (status, "Something went wrong"),
            _ => {
                tracing::error!(
                    detail = err.detail.as_deref().unwrap_or(""),
                    "a panel page failed"
                );
                (err.status, "Something went wrong")
            }
        };
        let message = if err.status.is_server_error() {
            String::new()
        } else {
            err.message
        };
        render(
            status,
            &MessagePage {
                frame: &self.frame,
                title,
                message,
            },
        )
    }
}

/// A rendered page with the panel's headers.
fn render(status: StatusCode, template: &impl Template) -> Response {
    let mut response = match template.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(err) => {
            tracing::error!(%err, "a panel template failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html(
                    "<!doctype html><title>Dirigent</title><p>The page could not be rendered.</p>"
                        .to_owned(),
                ),
            )
                .into_response()
        }
    };
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response.extensions_mut().insert(RenderedPage);
    response
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    frame: &'a Frame,
    title: &'static str,
    message: String,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    frame: Frame,
}

/// The login form; it logs in through `POST /api/v1/login` and goes on to `next`.
async fn login(headers: HeaderMap) -> Response {
    let frame = Frame {
        lang: browser_language(&headers),
        langs: Lang::ALL,
        username: String::new(),
        csrf: String::new(),
        nav: Vec::new(),
        assets: ASSETS_VERSION.as_str(),
    };
    render(StatusCode::OK, &LoginPage { frame })
}
