//! A fresh application on a temporary SQLite database with a manual clock, and a compact way
//! to send it requests.

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Method, Request, StatusCode},
};
use dirigent_server::{
    AppState, Clock, ServerConfig,
    clock::ManualClock,
    config::{DatabaseUrl, Secret},
};
use dirigent_store::Store;
use jiff::Timestamp;
use serde_json::{Value, json};
use tower::ServiceExt;

pub(crate) const ADMIN_PASSWORD: &str = "admin-password-1";

pub(crate) struct TestApp {
    pub(crate) router: Router,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) store: Store,
    pub(crate) writer: std::sync::Arc<dirigent_server::writer::Writer>,
    pub(crate) scheduler: std::sync::Arc<dirigent_server::scheduler::Scheduler>,
    _database: TestDatabase,
}

/// Where a test application keeps its data: an SQLite file in a directory of its own, or,
/// with `DIRIGENT_TEST_SERVER_DB=postgres`, a schema of its own in the test PostgreSQL database
/// (`DIRIGENT_TEST_PG_URL`), so that every server test runs on both backends.
pub(crate) enum TestDatabase {
    Sqlite(tempfile::TempDir),
    Postgres { base: String, schema: String },
}

impl TestDatabase {
    pub(crate) fn create() -> TestDatabase {
        if std::env::var("DIRIGENT_TEST_SERVER_DB").as_deref() != Ok("postgres") {
            return TestDatabase::Sqlite(tempfile::tempdir().unwrap());
        }
        static SCHEMAS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SCHEMAS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = std::env::var("DIRIGENT_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let schema = format!("server_{}_{n}", std::process::id());
        psql(&base, &format!("CREATE SCHEMA {schema}"));
        TestDatabase::Postgres { base, schema }
    }

    pub(crate) fn url(&self) -> String {
        match self {
            TestDatabase::Sqlite(dir) => {
                format!("sqlite://{}", dir.path().join("dirigent.db").display())
            }
            TestDatabase::Postgres { base, schema } => {
                let separator = if base.contains('?') { '&' } else { '?' };
                format!("{base}{separator}options=-c%20search_path%3D{schema}")
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let TestDatabase::Postgres { base, schema } = self {
            psql(base, &format!("DROP SCHEMA {schema} CASCADE"));
        }
    }
}

fn psql(url: &str, sql: &str) {
    #[expect(
        clippy::disallowed_methods,
        reason = "psql makes the test database's schemas, not a robot"
    )]
    let output = std::process::Command::new("psql")
        .args([url, "-Atqc", sql])
        .output()
        .unwrap_or_else(|err| {
            panic!("psql is needed to run the server tests on PostgreSQL: {err}")
        });
    assert!(output.status.success(), "{sql}: {output:?}");
}

pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

impl Answer {
    /// The error code of an error answer.
    pub(crate) fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_default()
    }
}

pub(crate) fn config(database_url: String) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: DatabaseUrl::new(database_url),
        admin_password: Some(Secret::new(ADMIN_PASSWORD.to_owned())),
        session_ttl: ServerConfig::DEFAULT_SESSION_TTL,
        max_body_bytes: 64 * 1024,
        fleet: dirigent_server::fleet::FleetSettings::default(),
        cluster: dirigent_server::cluster::ClusterSettings {
            node_id: "test-node".to_owned(),
            takeover_after: dirigent_server::cluster::ClusterSettings::DEFAULT_TAKEOVER_AFTER,
        },
        tls: None,
        trusted_proxies: Vec::new(),
        login_command: None,
        retention: dirigent_server::config::Retention::default(),
    }
}

impl TestApp {
    pub(crate) async fn new() -> TestApp {
        TestApp::with_config(|_| {}).await
    }

    /// A fresh application whose settings `configure` adjusts.
    pub(crate) async fn with_config(configure: impl FnOnce(&mut ServerConfig)) -> TestApp {
        let database = TestDatabase::create();
        let url = database.url();
        let store = Store::open(&url).await.unwrap();
        let clock = Arc::new(ManualClock::new(
            Timestamp::from_second(1_800_000_000).unwrap(),
        ));
        let mut config = config(url);
        configure(&mut config);
        dirigent_server::auth::bootstrap_admin(&store, config.admin_password.as_ref(), clock.now())
            .await
            .unwrap();
        let fleet = dirigent_server::fleet::Fleet::new(
            store.clone(),
            clock.clone(),
            config.fleet,
            config.cluster.node_id.clone(),
        );
        let scheduler =
            dirigent_server::scheduler::Scheduler::new(store.clone(), fleet.clone(), clock.clone());
        let writer =
            dirigent_server::writer::Writer::start(store.clone(), clock.clone(), scheduler.clone());
        let state = AppState {
            store: store.clone(),
            credentials: dirigent_server::auth::cache::CredentialCache::following_runs(&fleet),
            fleet,
            writer: writer.clone(),
            scheduler: scheduler.clone(),
            clock: clock.clone(),
            config: Arc::new(config),
            watchers: Arc::default(),
            activities: Arc::new(dirigent_server::activities::Activities::new(clock.now())),
        };
        TestApp {
            router: dirigent_server::app(state),
            clock,
            store,
            writer,
            scheduler,
            _database: database,
        }
    }

    /// Serves the application on a real socket of 127.0.0.1; answers its base URL.
    pub(crate) async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = self
            .router
            .clone()
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, service).await });
        format!("http://{addr}")
    }

    /// Sends a request; `body` is sent as JSON when given.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&body).unwrap())),
            None => request.body(Body::empty()),
        };
        self.raw(request.unwrap()).await
    }

    pub(crate) async fn raw(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = headers
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/plain"));
        let body = if bytes.is_empty() {
            Value::Null
        } else if text {
            Value::String(String::from_utf8(bytes.to_vec()).unwrap())
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn login(&self, username: &str, password: &str) -> String {
        let answer = self
            .send(
                Method::POST,
                "/api/v1/login",
                None,
                Some(json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        answer.body["token"].as_str().unwrap().to_owned()
    }

    pub(crate) async fn admin(&self) -> String {
        self.login("admin", ADMIN_PASSWORD).await
    }

    /// Creates a user holding `roles` and answers a session token of theirs.
    pub(crate) async fn user_with_roles(&self, username: &str, roles: &[&str]) -> String {
        let hash = dirigent_server::auth::secrets::hash_password("user-password-1").unwrap();
        let roles: Vec<String> = roles.iter().map(|role| (*role).to_owned()).collect();
        self.store
            .insert_user(username, &hash, &roles, self.clock.now())
            .await
            .unwrap();
        self.login(username, "user-password-1").await
    }
}
