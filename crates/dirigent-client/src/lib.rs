//! A typed client of Dirigent's HTTP API, used by the CLI, the agent and the tests.
//!
//! Every method maps one route; an error answer of the server becomes
//! [`ClientError::Api`] carrying the server's stable code and message.

mod activities;
mod logs;
mod queues;
pub mod tls;
mod triggers;

use std::fmt;

pub use activities::ActivityFilter;
use dirigent_proto::{
    agent::{
        Agent, CreateEnrollmentToken, DrainRequest, EnrollRequest, EnrollResponse, EnrollmentToken,
    },
    auth::{
        AuditEntry, ChangePassword, CreateTokenRequest, CreateUser, CreatedToken, Health,
        LoginRequest, LoginResponse, Me, RoleSpec, TokenInfo, UpdateUser, User,
    },
    error::ErrorBody,
    robot::{Robot, RobotSpec},
    run::{LogLine, Run, RunDetail, StartRunRequest},
};
pub use logs::LogFilter;
use reqwest::{Method, StatusCode, Url};
use serde::{Serialize, de::DeserializeOwned};
pub use tls::Trust;

/// What can go wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{}", .body.message)]
    Api { status: StatusCode, body: ErrorBody },
    #[error("the server URL {url:?} is not valid: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot reach the server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the server's answer could not be read: {0}")]
    Decode(String),
}

/// A connection to one server, with or without credentials.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the server at `base_url` (`http://host:port`), sending `token` as
    /// `Authorization: Bearer` when given, trusting the certificates the system trusts.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Client, ClientError> {
        Client::with_trust(base_url, token, &Trust::System)
    }

    /// A client of the server at `base_url` that trusts the servers `trust` names over
    /// `https`.
    pub fn with_trust(
        base_url: &str,
        token: Option<String>,
        trust: &Trust,
    ) -> Result<Client, ClientError> {
        let invalid = |reason: String| ClientError::InvalidUrl {
            url: base_url.to_owned(),
            reason,
        };
        let base = Url::parse(base_url).map_err(|err| invalid(err.to_string()))?;
        if !["http", "https"].contains(&base.scheme()) || base.cannot_be_a_base() {
            return Err(invalid("it must start with http:// or https://".to_owned()));
        }
        let tls = trust.client_config().map_err(ClientError::Tls)?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("dirigent/", env!("CARGO_PKG_VERSION")))
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|err| invalid(err.to_string()))?;
        Ok(Client { http, base, token })
    }

    pub fn base_url(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, &["healthz"], None::<&()>).await
    }

    pub async fn login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<LoginResponse, ClientError> {
        let request = LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
            cookie: false,
        };
        self.call(Method::POST, &["api", "v1", "login"], Some(&request))
            .await
    }

    pub async fn logout(&self) -> Result<(), ClientError> {
        self.call_empty(Method::POST, &["api", "v1", "logout"], None::<&()>)
            .await
    }

    pub async fn me(&self) -> Result<Me, ClientError> {
        self.call(Method::GET, &["api", "v1", "me"], None::<&()>)
            .await
    }

    pub async fn robots(&self) -> Result<Vec<Robot>, ClientError> {
        self.call(Method::GET, &["api", "v1", "robots"], None::<&()>)
            .await
    }

    pub async fn robot(&self, name: &str) -> Result<Robot, ClientError> {
        self.call(Method::GET, &["api", "v1", "robots", name], None::<&()>)
            .await
    }

    pub async fn create_robot(&self, spec: &RobotSpec) -> Result<Robot, ClientError> {
        self.call(Method::POST, &["api", "v1", "robots"], Some(spec))
            .await
    }

    pub async fn replace_robot(&self, name: &str, spec: &RobotSpec) -> Result<Robot, ClientError> {
        self.call(Method::PUT, &["api", "v1", "robots", name], Some(spec))
            .await
    }

    pub async fn delete_robot(&self, name: &str) -> Result<(), ClientError> {
        self.call_empty(Method::DELETE, &["api", "v1", "robots", name], None::<&()>)
            .await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        self.call(Method::GET, &["api", "v1", "tokens"], None::<&()>)
            .await
    }

    pub async fn create_token(
        &self,
        request: &CreateTokenRequest,
    ) -> Result<CreatedToken, ClientError> {
        self.call(Method::POST, &["api", "v1", "tokens"], Some(request))
            .await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        self.call_empty(Method::DELETE, &["api", "v1", "tokens", id], None::<&()>)
            .await
    }

    pub async fn set_robot_auto(&self, name: &str) -> Result<Robot, ClientError> {
        self.call(
            Method::POST,
            &["api", "v1", "robots", name, "auto"],
            None::<&()>,
        )
        .await
    }

    /// Starts a run: of `request.robot`, with its arguments and environment if any.
    pub async fn start_run(&self, request: &StartRunRequest) -> Result<Run, ClientError> {
        self.call(Method::POST, &["api", "v1", "runs"], Some(request))
            .await
    }

    /// Runs, newest first: of one robot, or active ones only.
    pub async fn runs(
        &self,
        robot: Option<&str>,
        active_only: bool,
        limit: u32,
    ) -> Result<Vec<Run>, ClientError> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(robot) = robot {
            query.push(("robot", robot.to_owned()));
        }
        if active_only {
            query.push(("active", "true".to_owned()));
        }
        self.call_query(Method::GET, &["api", "v1", "runs"], &query)
            .await
    }

    pub async fn run(&self, id: &str) -> Result<RunDetail, ClientError> {
        self.call(Method::GET, &["api", "v1", "runs", id], None::<&()>)
            .await
    }

    /// Waits (up to `timeout_seconds`) until the run is in one of `states` or has ended.
    pub async fn wait_run(
        &self,
        id: &str,
        states: &[&str],
        timeout_seconds: u32,
    ) -> Result<RunDetail, ClientError> {
        let query = [
            ("wait_for", states.join(",")),
            ("timeout_seconds", timeout_seconds.to_string()),
        ];
        self.call_query(Method::GET, &["api", "v1", "runs", id], &query)
            .await
    }

    /// `operation` is `pause`, `resume`, `stop`, `kill` or `restart`.
    pub async fn operate_run(&self, id: &str, operation: &str) -> Result<Run, ClientError> {
        self.call(
            Method::POST,
            &["api", "v1", "runs", id, operation],
            None::<&()>,
        )
        .await
    }

    pub async fn run_logs(
        &self,
        id: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<LogLine>, ClientError> {
        let query = [("after", after.to_string()), ("limit", limit.to_string())];
        self.call_query(Method::GET, &["api", "v1", "runs", id, "logs"], &query)
            .await
    }

    /// Follows a run's output: calls `on_line` for each line as it comes, and answers the
    /// run once it has ended.
    pub async fn follow_logs(
        &self,
        id: &str,
        after: u64,
        on_line: impl FnMut(LogLine),
    ) -> Result<Run, ClientError> {
        self.follow(&["api", "v1", "runs", id, "logs", "stream"], after, on_line)
            .await
    }

    /// Follows a stream of `line` events (each given to `on_line`) until its `end` event,
    /// whose data it answers.
    async fn follow<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        after: u64,
        mut on_line: impl FnMut(LogLine),
    ) -> Result<T, ClientError> {
        let query = [("after", after.to_string())];
        self.events(segments, &query, |event, data| {
            let decode = |err: serde_json::Error| ClientError::Decode(err.to_string());
            match event {
                "line" => match serde_json::from_str(data) {
                    Ok(line) => {
                        on_line(line);
                        None
                    }
                    Err(err) => Some(Err(decode(err))),
                },
                "end" => Some(serde_json::from_str(data).map_err(decode)),
                _ => None,
            }
        })
        .await
    }

    /// Reads a stream of server-sent events, giving each (its name and data) to `on_event`
    /// until that answers.
    pub(crate) async fn events<T>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        mut on_event: impl FnMut(&str, &str) -> Option<Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let mut response = self.get_streaming(segments, query).await?;
        let mut pending = String::new();
        let mut event = String::new();
        let mut data = String::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| self.unreachable(&err))?
        {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(newline) = pending.find('\n') {
                let line: String = pending.drain(..=newline).collect();
                let line = line.trim_end_matches(['\r', '\n']);
                if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim().to_owned();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                } else if line.is_empty() && !data.is_empty() {
                    if let Some(answer) = on_event(&event, &data) {
                        return answer;
                    }
                    data.clear();
                    event.clear();
                }
            }
        }
        Err(ClientError::Unreachable {
            url: self.base_url().to_owned(),
            reason: "the stream ended early".to_owned(),
        })
    }

    /// Sends a GET whose answer is read as it comes.
    pub(crate) async fn get_streaming(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<reqwest::Response, ClientError> {
        let url = self.url(segments)?;
        self.respond(self.http.get(url).query(query)).await
    }

    /// Sends a request with the client's token; answers the response of a success, else the
    /// server's error.
    async fn respond(
        &self,
        mut request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|err| self.unreachable(&err))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|err| self.unreachable(&err))?;
        Err(api_error(status, &bytes))
    }

    fn unreachable(&self, err: &reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.base_url().to_owned(),
            reason: root_cause(err),
        }
    }

    pub async fn retention(
        &self,
    ) -> Result<dirigent_proto::retention::RetentionReport, ClientError> {
        self.call(Method::GET, &["api", "v1", "retention"], None::<&()>)
            .await
    }

    pub async fn sweep(&self) -> Result<dirigent_proto::retention::Deleted, ClientError> {
        self.call(
            Method::POST,
            &["api", "v1", "retention", "sweep"],
            None::<&()>,
        )
        .await
    }

    pub async fn users(&self) -> Result<Vec<User>, ClientError> {
        self.call(Method::GET, &["api", "v1", "users"], None::<&()>)
            .await
    }

    pub async fn user(&self, name: &str) -> Result<User, ClientError> {
        self.call(Method::GET, &["api", "v1", "users", name], None::<&()>)
            .await
    }

    pub async fn create_user(&self, request: &CreateUser) -> Result<User, ClientError> {
        self.call(Method::POST, &["api", "v1", "users"], Some(request))
            .await
    }

    pub async fn update_user(&self, name: &str, request: &UpdateUser) -> Result<User, ClientError> {
        self.call(Method::PUT, &["api", "v1", "users", name], Some(request))
            .await
    }

    pub async fn delete_user(&self, name: &str) -> Result<(), ClientError> {
        self.call_empty(Method::DELETE, &["api", "v1", "users", name], None::<&()>)
            .await
    }

    /// Ends every session of the user.
    pub async fn logout_user(&self, name: &str) -> Result<(), ClientError> {
        self.call_empty(
            Method::POST,
            &["api", "v1", "users", name, "logout"],
            None::<&()>,
        )
        .await
    }

    pub async fn change_password(&self, request: &ChangePassword) -> Result<(), ClientError> {
        self.call_empty(
            Method::POST,
            &["api", "v1", "me", "password"],
            Some(request),
        )
        .await
    }

    pub async fn roles(&self) -> Result<Vec<RoleSpec>, ClientError> {
        self.call(Method::GET, &["api", "v1", "roles"], None::<&()>)
            .await
    }

    pub async fn create_role(&self, role: &RoleSpec) -> Result<RoleSpec, ClientError> {
        self.call(Method::POST, &["api", "v1", "roles"], Some(role))
            .await
    }

    pub async fn delete_role(&self, name: &str) -> Result<(), ClientError> {
        self.call_empty(Method::DELETE, &["api", "v1", "roles", name], None::<&()>)
            .await
    }

    /// The audit log, newest first.
    pub async fn audit(
        &self,
        actor: Option<&str>,
        resource: Option<&str>,
        outcome: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, ClientError> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(actor) = actor {
            query.push(("actor", actor.to_owned()));
        }
        if let Some(resource) = resource {
            query.push(("resource", resource.to_owned()));
        }
        if let Some(outcome) = outcome {
            query.push(("outcome", outcome.to_owned()));
        }
        self.call_query(Method::GET, &["api", "v1", "audit"], &query)
            .await
    }

    pub async fn agents(&self) -> Result<Vec<Agent>, ClientError> {
        self.call(Method::GET, &["api", "v1", "agents"], None::<&()>)
            .await
    }

    /// The graphical sessions of every agent, or of one.
    pub async fn sessions(
        &self,
        agent: Option<&str>,
    ) -> Result<Vec<dirigent_proto::session::Session>, ClientError> {
        let query: Vec<(&str, String)> = agent
            .map(|agent| ("agent", agent.to_owned()))
            .into_iter()
            .collect();
        self.call_query(Method::GET, &["api", "v1", "sessions"], &query)
            .await
    }

    /// One graphical session (`AGENT/NUMBER`) with its history.
    pub async fn session(
        &self,
        agent: &str,
        number: &str,
    ) -> Result<dirigent_proto::session::SessionDetail, ClientError> {
        self.call(
            Method::GET,
            &["api", "v1", "sessions", agent, number],
            None::<&()>,
        )
        .await
    }

    /// A screenshot of a graphical session, as PNG.
    pub async fn session_screenshot(
        &self,
        agent: &str,
        number: &str,
    ) -> Result<Vec<u8>, ClientError> {
        self.send(
            Method::GET,
            &["api", "v1", "sessions", agent, number, "screenshot"],
            None::<&()>,
        )
        .await
    }

    /// Makes a graphical session anew (one in use only with `force`).
    pub async fn restart_session(
        &self,
        agent: &str,
        number: &str,
        force: bool,
    ) -> Result<(), ClientError> {
        let mut url = self.url(&["api", "v1", "sessions", agent, number, "restart"])?;
        if force {
            url.query_pairs_mut().append_pair("force", "true");
        }
        self.send_to(Method::POST, url, None::<&()>).await?;
        Ok(())
    }

    /// Takes a graphical session over (pausing its run unless `pause_run` is false).
    pub async fn take_session_control(
        &self,
        agent: &str,
        number: &str,
        pause_run: bool,
    ) -> Result<dirigent_proto::session::Session, ClientError> {
        let body = dirigent_proto::session::ControlRequest { pause_run };
        self.call(
            Method::POST,
            &["api", "v1", "sessions", agent, number, "control"],
            Some(&body),
        )
        .await
    }

    /// Gives a graphical session back.
    pub async fn give_session_back(&self, agent: &str, number: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &["api", "v1", "sessions", agent, number, "control"],
            None::<&()>,
        )
        .await?;
        Ok(())
    }

    /// Sends input to a graphical session the caller controls.
    pub async fn session_input(
        &self,
        agent: &str,
        number: &str,
        events: Vec<dirigent_proto::session::InputEvent>,
    ) -> Result<(), ClientError> {
        let body = dirigent_proto::session::InputRequest { events };
        self.send(
            Method::POST,
            &["api", "v1", "sessions", agent, number, "input"],
            Some(&body),
        )
        .await?;
        Ok(())
    }

    /// The orchestrator nodes sharing the server's database.
    pub async fn nodes(&self) -> Result<Vec<dirigent_proto::agent::Node>, ClientError> {
        self.call(Method::GET, &["api", "v1", "nodes"], None::<&()>)
            .await
    }

    pub async fn drain_agent(&self, name: &str, draining: bool) -> Result<Agent, ClientError> {
        self.call(
            Method::POST,
            &["api", "v1", "agents", name, "drain"],
            Some(&DrainRequest { draining }),
        )
        .await
    }

    pub async fn create_enrollment_token(
        &self,
        expires_in_seconds: Option<u32>,
    ) -> Result<EnrollmentToken, ClientError> {
        let request = CreateEnrollmentToken { expires_in_seconds };
        self.call(
            Method::POST,
            &["api", "v1", "agents", "enrollment-tokens"],
            Some(&request),
        )
        .await
    }

    /// Exchanges an enrollment token for an agent credential.
    pub async fn enroll(&self, token: &str, name: &str) -> Result<EnrollResponse, ClientError> {
        let request = EnrollRequest {
            token: token.to_owned(),
            name: name.to_owned(),
        };
        self.call(Method::POST, &["agent", "v1", "enroll"], Some(&request))
            .await
    }

    async fn call_query<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        let mut url = self.url(segments)?;
        url.query_pairs_mut().extend_pairs(query);
        let bytes = self.send_to(method, url, None::<&()>).await?;
        serde_json::from_slice(&bytes).map_err(|err| ClientError::Decode(err.to_string()))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let bytes = self.send(method, segments, body).await?;
        serde_json::from_slice(&bytes).map_err(|err| ClientError::Decode(err.to_string()))
    }

    async fn call_empty(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&impl Serialize>,
    ) -> Result<(), ClientError> {
        self.send(method, segments, body).await.map(drop)
    }

    async fn send(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&impl Serialize>,
    ) -> Result<Vec<u8>, ClientError> {
        let url = self.url(segments)?;
        self.send_to(method, url, body).await
    }

    async fn send_to(
        &self,
        method: Method,
        url: Url,
        body: Option<&impl Serialize>,
    ) -> Result<Vec<u8>, ClientError> {
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.answer(request).await
    }

    /// Sends `content` as it is, declared as `content_type`.
    async fn send_raw(
        &self,
        method: Method,
        segments: &[&str],
        content_type: &str,
        content: Vec<u8>,
    ) -> Result<Vec<u8>, ClientError> {
        let request = self
            .http
            .request(method, self.url(segments)?)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(content);
        self.answer(request).await
    }

    /// Sends a request with the client's token; answers the body of a success, else the
    /// server's error.
    async fn answer(&self, request: reqwest::RequestBuilder) -> Result<Vec<u8>, ClientError> {
        let response = self.respond(request).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|err| self.unreachable(&err))?;
        Ok(bytes.to_vec())
    }

    /// The URL of a route, each segment percent-encoded, so a name can never change the path.
    fn url(&self, segments: &[&str]) -> Result<Url, ClientError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ClientError::InvalidUrl {
                url: self.base.to_string(),
                reason: "cannot be a base".to_owned(),
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }
}

fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    let body = serde_json::from_slice::<ErrorBody>(bytes).unwrap_or_else(|_| ErrorBody {
        code: dirigent_proto::error::ErrorCode::Internal,
        message: format!("the server answered {status} without an error body"),
        field: None,
        existing_id: None,
        request_id: None,
    });
    ClientError::Api { status, body }
}

/// The innermost cause of a transport error: "Connection refused (os error 111)" rather than
/// "error sending request".
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}
