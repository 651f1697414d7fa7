//! `dirigent serve`: settings from an optional TOML file, overridden by environment variables,
//! overridden by flags; then the orchestrator runs until SIGINT or SIGTERM.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context, bail};
use clap::Args;
use dirigent_server::{
    RunningServer,
    auth::{external::LoginCommand, secrets},
    cluster::ClusterSettings,
    fleet::FleetSettings,
    tls::TlsFiles,
};
use dirigent_server::{
    ServerConfig,
    clock::SystemClock,
    config::{DatabaseUrl, Retention, Secret},
};
use jiff::SignedDuration;
use serde::Deserialize;
use std::time::Duration;

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
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "DIRIGENT_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "DIRIGENT_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Do not run the built-in local agent.
    #[arg(long)]
    no_local_agent: bool,
    /// When stopping, safe-stop the robots of the built-in local agent first (by default they
    /// keep running, and report again when `serve` starts).
    #[arg(long)]
    stop_robots_on_exit: bool,
    /// This node's id among the nodes sharing a PostgreSQL database; stable across restarts
    /// [default: the host name and the data directory].
    #[arg(long, env = "DIRIGENT_NODE_ID", value_name = "ID")]
    node_id: Option<String>,
    /// Graphical sessions (Xvfb desktops) the built-in local agent keeps for robots that need
    /// a display [default: 1].
    #[arg(long, env = "DIRIGENT_LOCAL_AGENT_SESSIONS", value_name = "N")]
    local_agent_sessions: Option<u32>,
}

/// The built-in local agent's settings.
struct LocalAgent {
    /// Its orchestrator unreachable this long, it stops its robots and itself.
    orphan_limit: Duration,
    /// `serve` safe-stops its robots when it stops.
    stop_robots_on_exit: bool,
    /// Graphical sessions it offers.
    sessions: u32,
}

impl LocalAgent {
    const DEFAULT_ORPHAN_LIMIT: Duration = Duration::from_secs(3600);
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
    /// An agent silent this long has its runs marked lost.
    agent_lost_after_seconds: Option<u32>,
    local_agent: Option<bool>,
    /// When stopping, safe-stop the local agent's robots first.
    stop_robots_on_exit: Option<bool>,
    /// A local agent whose orchestrator stays unreachable this long stops its robots and
    /// itself (default one hour).
    local_agent_orphan_limit_seconds: Option<u32>,
    /// Graphical sessions the local agent offers (default 1).
    local_agent_sessions: Option<u32>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    /// A program checking passwords the local ones do not match (PAM, LDAP, …): argv.
    login_command: Option<Vec<String>>,
    login_command_timeout_seconds: Option<u32>,
    node_id: Option<String>,
    /// Load balancers whose `X-Forwarded-For` names the client.
    trusted_proxies: Option<Vec<String>>,
    /// A node silent this long is dead: another takes over its duties and agents.
    takeover_after_seconds: Option<u32>,
    /// How long finished data is kept (a table; each key optional, 0 keeps forever).
    retention: Option<RetentionFile>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionFile {
    runs_days: Option<u32>,
    run_output_max_mib: Option<u64>,
    trigger_firings_days: Option<u32>,
    work_item_attempts_days: Option<u32>,
    activities_days: Option<u32>,
    audit_days: Option<u32>,
    agent_logs_days: Option<u32>,
    agent_logs_max_mib: Option<u64>,
    server_logs_days: Option<u32>,
    server_logs_max_mib: Option<u64>,
    activity_output_max_mib: Option<u64>,
}

impl RetentionFile {
    fn settings(self) -> Retention {
        let default = Retention::default();
        Retention {
            runs_days: self.runs_days.unwrap_or(default.runs_days),
            run_output_max_mib: self
                .run_output_max_mib
                .unwrap_or(default.run_output_max_mib),
            trigger_firings_days: self
                .trigger_firings_days
                .unwrap_or(default.trigger_firings_days),
            work_item_attempts_days: self
                .work_item_attempts_days
                .unwrap_or(default.work_item_attempts_days),
            activities_days: self.activities_days.unwrap_or(default.activities_days),
            audit_days: self.audit_days.unwrap_or(default.audit_days),
            agent_logs_days: self.agent_logs_days.unwrap_or(default.agent_logs_days),
            agent_logs_max_mib: self
                .agent_logs_max_mib
                .unwrap_or(default.agent_logs_max_mib),
            server_logs_days: self.server_logs_days.unwrap_or(default.server_logs_days),
            server_logs_max_mib: self
                .server_logs_max_mib
                .unwrap_or(default.server_logs_max_mib),
            activity_output_max_mib: self
                .activity_output_max_mib
                .unwrap_or(default.activity_output_max_mib),
        }
    }
}

#[expect(
    clippy::disallowed_macros,
    reason = "the server's banner: a server whose output is gone should fail loudly"
)]
pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (config, data_dir, local_agent) = resolve(args)?;
    let own_logs = crate::own_logs::init();
    let database = config.database_url.to_string();
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let config_tls_cert = config.tls.as_ref().map(|tls| tls.cert.clone());
    // Alone with its database a node's local agent is `local`; nodes sharing one each have
    // their own, named after the node.
    let local_agent_name = match database.starts_with("sqlite:") {
        true => "local".to_owned(),
        false => local_agent_name(&config.cluster.node_id),
    };
    let mut server = dirigent_server::start(config, Arc::new(SystemClock)).await?;
    server.keep_own_logs(own_logs);
    if let Some(local) = &local_agent {
        let pinned = config_tls_cert.as_deref();
        start_local_agent(&server, &local_agent_name, &data_dir, local, pinned).await?;
    }
    if let Some(password) = server.generated_admin_password() {
        println!("Created the first user: admin, password: {password}");
        println!(
            "This password is shown only once. Log in with: dirigent login --url {scheme}://{}",
            server.local_addr()
        );
    }
    // The banner comes last: whoever waits for it has seen everything printed at start.
    println!(
        "Dirigent {} listening on {scheme}://{} (data: {}, database: {database})",
        env!("CARGO_PKG_VERSION"),
        server.local_addr(),
        data_dir.display(),
    );
    crate::shutdown_signal().await;
    match &local_agent {
        Some(local) if local.stop_robots_on_exit => {
            let stopped = server.stop_runs_on(&local_agent_name).await?;
            eprintln!(
                "stopping: safe-stopped {} of the local agent",
                robots(stopped)
            );
        }
        Some(_) => {
            let running = server.active_runs_on(&local_agent_name).await?.len();
            if 0 < running {
                eprintln!(
                    "stopping: {} running under the local agent, which keeps them and reports \
                     again when `dirigent serve` starts. To stop them: `dirigent run stop RUN`, \
                     or `dirigent serve --stop-robots-on-exit` next time",
                    robots(running)
                );
            }
        }
        None => {}
    }
    eprintln!("stopping: finishing requests in flight");
    server.shutdown().await.context("stopping the server")?;
    Ok(())
}

/// Merges file, environment and flags into the server's settings, and creates the data
/// directory. Answers the settings and the data directory.
fn resolve(args: ServeArgs) -> anyhow::Result<(ServerConfig, PathBuf, Option<LocalAgent>)> {
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
    let mut fleet = FleetSettings::default();
    match file.agent_lost_after_seconds {
        Some(0) => bail!("agent_lost_after_seconds must be at least 1"),
        Some(seconds) => fleet.lost_after = Duration::from_secs(u64::from(seconds)),
        None => {}
    }
    let orphan_limit = match file.local_agent_orphan_limit_seconds {
        Some(0) => bail!("local_agent_orphan_limit_seconds must be at least 1"),
        Some(seconds) => Duration::from_secs(u64::from(seconds)),
        None => LocalAgent::DEFAULT_ORPHAN_LIMIT,
    };
    let sessions = args
        .local_agent_sessions
        .or(file.local_agent_sessions)
        .unwrap_or(1);
    if 64 < sessions {
        bail!("local_agent_sessions must be between 0 and 64");
    }
    let local_agent =
        (!args.no_local_agent && file.local_agent.unwrap_or(true)).then(|| LocalAgent {
            orphan_limit,
            stop_robots_on_exit: args.stop_robots_on_exit
                || file.stop_robots_on_exit.unwrap_or(false),
            sessions,
        });
    let node_id = match args.node_id.or(file.node_id) {
        Some(id) if id.is_empty() || 200 < id.len() || id.chars().any(char::is_control) => {
            bail!("node_id must be 1 to 200 printable characters, not {id:?}")
        }
        Some(id) => id,
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_owned())
                .unwrap_or_else(|_| "localhost".to_owned());
            let dir = std::path::absolute(&data_dir).unwrap_or_else(|_| data_dir.clone());
            format!("{host}:{}", dir.display())
        }
    };
    let trusted_proxies = file
        .trusted_proxies
        .unwrap_or_default()
        .iter()
        .map(|address| {
            address.parse().map_err(|_| {
                anyhow::format_err!("trusted_proxies: {address:?} is not an IP address")
            })
        })
        .collect::<anyhow::Result<Vec<std::net::IpAddr>>>()?;
    let takeover_after = match file.takeover_after_seconds {
        Some(0) => bail!("takeover_after_seconds must be at least 1"),
        Some(seconds) => Duration::from_secs(u64::from(seconds)),
        None => ClusterSettings::DEFAULT_TAKEOVER_AFTER,
    };
    let tls = match (
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
    ) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        (Some(_), None) => bail!("tls_cert is set without tls_key: HTTPS needs both"),
        (None, Some(_)) => bail!("tls_key is set without tls_cert: HTTPS needs both"),
    };
    let login_command = match (file.login_command, file.login_command_timeout_seconds) {
        (Some(argv), _) if argv.first().is_none_or(|program| !program.starts_with('/')) => {
            bail!(
                "login_command must start with an absolute program path, such as [\"/usr/local/bin/check-ldap\"]"
            )
        }
        (Some(_), Some(0)) => bail!("login_command_timeout_seconds must be at least 1"),
        (Some(argv), seconds) => Some(LoginCommand {
            argv,
            timeout: seconds.map_or(LoginCommand::DEFAULT_TIMEOUT, |seconds| {
                Duration::from_secs(u64::from(seconds))
            }),
        }),
        (None, Some(_)) => bail!("login_command_timeout_seconds is set without login_command"),
        (None, None) => None,
    };
    let config = ServerConfig {
        listen,
        database_url: DatabaseUrl::new(database_url),
        admin_password: admin_password.map(Secret::new),
        session_ttl,
        max_body_bytes,
        fleet,
        cluster: ClusterSettings {
            node_id,
            takeover_after,
        },
        tls,
        trusted_proxies,
        login_command,
        retention: file.retention.unwrap_or_default().settings(),
    };
    Ok((config, data_dir, local_agent))
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

/// Starts the built-in local agent as a process of its own, in its own process group, so
/// that it and its robots outlive a restart of the orchestrator. It enrolls itself with a
/// credential kept in `dir`; if a previous one still runs, the new one finds the directory
/// locked and leaves. With nothing to run and no orchestrator for a minute, it stops.
async fn start_local_agent(
    server: &RunningServer,
    name: &str,
    orchestrator_data: &std::path::Path,
    local: &LocalAgent,
    tls_cert: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let dir = &orchestrator_data.join("local-agent");
    use std::os::unix::process::CommandExt;
    let credential = match dirigent_agent::stored_credential(dir)? {
        Some(credential) => credential,
        None => {
            let credential = secrets::new_token(secrets::AGENT_CREDENTIAL_PREFIX)
                .context("making a credential")?;
            dirigent_agent::store_credential(dir, &credential)?;
            credential
        }
    };
    server
        .provision_agent(name, &credential)
        .await
        .context("enrolling the local agent")?;
    let addr = server.local_addr();
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let exe = std::env::current_exe().context("finding the dirigent binary")?;
    // Its output goes to a file of its own: it must not depend on the terminal or pipe of an
    // orchestrator it outlives.
    let log_path = dir.join("agent.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .with_context(|| format!("opening {}", log_path.display()))?;
    #[allow(
        clippy::disallowed_methods,
        reason = "the orchestrator starts its local agent, not a robot"
    )]
    let mut command = std::process::Command::new(exe);
    let scheme = if tls_cert.is_some() { "https" } else { "http" };
    command
        .args([
            "agent",
            "--server",
            &format!("{scheme}://{host}:{}", addr.port()),
            "--exit-when-orphaned",
            "60",
            "--stop-robots-when-orphaned",
            &local.orphan_limit.as_secs().to_string(),
            "--sessions",
            &local.sessions.to_string(),
        ])
        .arg("--orchestrator-data")
        .arg(std::path::absolute(orchestrator_data)?)
        // The local agent serves its orchestrator's own machine: every operation, the
        // orchestrator's data directory and its robots' working directories.
        .args(["--allow", "*", "--allow-robot-dirs", "--file-root"])
        .arg(std::path::absolute(orchestrator_data)?)
        .arg("--data")
        .arg(dir)
        .env_remove("DIRIGENT_CA_FILE")
        .env_remove("DIRIGENT_ADMIN_PASSWORD")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .env("NO_COLOR", "1")
        .process_group(0);
    if let Some(cert) = tls_cert {
        // It trusts exactly its own orchestrator's certificate, whatever names it carries.
        command.arg("--pin-cert").arg(std::path::absolute(cert)?);
    }
    let child = command.spawn().context("starting the local agent")?;
    tokio::spawn(keep_local_agent(child, command, dir.clone()));
    Ok(())
}

/// Starts the local agent again whenever none runs while the orchestrator does (it crashed,
/// or was killed): back, it adopts its robots from their keeper. An agent of an earlier
/// `serve` still holding the directory is left alone. When the orchestrator stops, the agent
/// is left running on its own.
async fn keep_local_agent(
    child: std::process::Child,
    mut command: std::process::Command,
    dir: PathBuf,
) {
    let mut child = Some((child, tokio::time::Instant::now()));
    // Restarts in a row of agents that did not last: each waits longer, up to half a minute.
    let mut restarts: u32 = 0;
    let mut watch = tokio::time::interval(LOCAL_AGENT_WATCH);
    loop {
        watch.tick().await;
        if let Some((process, started)) = &mut child {
            let status = match process.try_wait() {
                Ok(None) => continue,
                Ok(Some(status)) => status.to_string(),
                Err(err) => err.to_string(),
            };
            if LOCAL_AGENT_STABLE <= started.elapsed() {
                restarts = 0;
            }
            child = None;
            if !dirigent_agent::is_running(&dir) {
                tracing::warn!(%status, "the local agent stopped; starting it again");
            }
        }
        if dirigent_agent::is_running(&dir) {
            continue;
        }
        tokio::time::sleep(Duration::from_secs((1 << restarts.min(5)) - 1)).await;
        restarts = restarts.saturating_add(1);
        match command.spawn() {
            Ok(process) => child = Some((process, tokio::time::Instant::now())),
            Err(err) => tracing::error!(%err, "cannot start the local agent"),
        }
    }
}

/// How often `serve` looks whether its local agent still runs.
const LOCAL_AGENT_WATCH: Duration = Duration::from_secs(1);
/// A local agent that ran this long was not crash-looping.
const LOCAL_AGENT_STABLE: Duration = Duration::from_secs(60);

/// The local agent's name on a node sharing its database: `local-` and the node's id, with
/// what is not a letter, digit, `.` or `-` made a `-`.
fn local_agent_name(node_id: &str) -> String {
    let id: String = node_id
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                true => c,
                false => '-',
            },
        )
        .collect();
    format!("local-{}", id.trim_matches('-'))
}

/// `1 robot`, `2 robots`.
fn robots(count: usize) -> String {
    match count {
        1 => "1 robot".to_owned(),
        _ => format!("{count} robots"),
    }
}
