//! `dirigent serve`: settings from an optional TOML file, overridden by environment variables,
//! overridden by flags; then the orchestrator runs until SIGINT or SIGTERM.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context, bail};
use clap::Args;
use dirigent_server::{
    ServerConfig,
    clock::SystemClock,
    config::{DatabaseUrl, Secret},
};
use jiff::SignedDuration;
use serde::Deserialize;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// A TOML settings file; unknown keys are refused.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address and port to listen on [default: 127.0.0.1:8420].
    #[arg(long, env = "DIRIGENT_LISTEN", value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// Data directory, created if missing [default: ./dirigent-data].
    #[arg(long, env = "DIRIGENT_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// sqlite://PATH or postgres://USER@HOST/DB [default: SQLite in the data directory].
    #[arg(
        long,
        env = "DIRIGENT_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// Password of the `admin` user created on an empty database [default: generated and
    /// printed once]. Prefer the environment variable to the flag.
    #[arg(
        long,
        env = "DIRIGENT_ADMIN_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    admin_password: Option<String>,
}

/// The settings file. Every key is optional; flags and environment variables win over it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    listen: Option<String>,
    data: Option<PathBuf>,
    database_url: Option<String>,
    admin_password: Option<String>,
    session_ttl_seconds: Option<u32>,
    max_body_bytes: Option<usize>,
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (config, data_dir) = resolve(args)?;
    init_tracing();
    let database = config.database_url.to_string();
    let server = dirigent_server::start(config, Arc::new(SystemClock)).await?;
    if let Some(password) = server.generated_admin_password() {
        println!("Created the first user: admin, password: {password}");
        println!(
            "This password is shown only once. Log in with: dirigent login --url http://{}",
            server.local_addr()
        );
    }
    // The banner comes last: whoever waits for it has seen everything printed at start.
    println!(
        "Dirigent {} listening on http://{} (data: {}, database: {database})",
        env!("CARGO_PKG_VERSION"),
        server.local_addr(),
        data_dir.display(),
    );
    shutdown_signal().await;
    eprintln!("stopping: finishing requests in flight");
    server.shutdown().await.context("stopping the server")?;
    Ok(())
}

/// Merges file, environment and flags into the server's settings, and creates the data
/// directory. Answers the settings and the data directory.
fn resolve(args: ServeArgs) -> anyhow::Result<(ServerConfig, PathBuf)> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading settings file {}", path.display()))?;
            toml::from_str::<SettingsFile>(&text).map_err(|err| {
                anyhow::format_err!("{}: {}", path.display(), one_line(&err.to_string()))
            })?
        }
        None => SettingsFile::default(),
    };

    let listen_text = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| ServerConfig::DEFAULT_LISTEN.to_owned());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        anyhow::format_err!(
            "listen address {listen_text:?} is not ADDRESS:PORT, such as 127.0.0.1:8420"
        )
    })?;

    let data_dir = args
        .data
        .or(file.data)
        .unwrap_or_else(|| PathBuf::from("./dirigent-data"));
    create_private_dir(&data_dir)?;

    let database_url = match args.database_url.or(file.database_url) {
        Some(url) => url,
        None => format!("sqlite://{}", data_dir.join("dirigent.db").display()),
    };
    if !["sqlite:", "postgres:", "postgresql:"]
        .iter()
        .any(|scheme| database_url.starts_with(scheme))
    {
        bail!(
            "database URL must start with sqlite:// or postgres://, not {:?}",
            DatabaseUrl::new(database_url).to_string()
        );
    }

    let admin_password = args.admin_password.or(file.admin_password);
    if let Some(password) = &admin_password {
        dirigent_domain::user::check_password("admin password", password)
            .map_err(|err| anyhow::format_err!("{err}"))?;
    }
    let session_ttl = match file.session_ttl_seconds {
        Some(0) => bail!("session_ttl_seconds must be at least 1"),
        Some(seconds) => SignedDuration::from_secs(i64::from(seconds)),
        None => ServerConfig::DEFAULT_SESSION_TTL,
    };
    let max_body_bytes = match file.max_body_bytes {
        Some(bytes) if bytes < 1024 => bail!("max_body_bytes must be at least 1024"),
        Some(bytes) => bytes,
        None => ServerConfig::DEFAULT_MAX_BODY_BYTES,
    };
    let config = ServerConfig {
        listen,
        database_url: DatabaseUrl::new(database_url),
        admin_password: admin_password.map(Secret::new),
        session_ttl,
        max_body_bytes,
    };
    Ok((config, data_dir))
}

fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))
}

/// toml's messages span several lines with a source excerpt; the first line and the key do.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('|'))
        .collect::<Vec<_>>()
        .join(" ")
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DIRIGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = interrupt => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = interrupt.await;
        }
    }
}
