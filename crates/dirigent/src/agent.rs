//! `dirigent agent`: without a subcommand, runs the agent of this robot machine; with one
//! (`ls`, `enroll-token`, `drain`, `undrain`, `ps`, `info`, `restart`, `cp`), manages agents
//! through the API.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use dirigent_agent::AgentConfig;
use dirigent_client::{Client, Trust};

use crate::cli::{ClientArgs, activity, explain, out, print_json, print_table};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct AgentArgs {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    #[command(flatten)]
    run: RunAgentArgs,
}

#[derive(Debug, Args)]
struct RunAgentArgs {
    /// A TOML settings file: `server`, `labels` (a table), `capacity`, `sessions`,
    /// `session_size`, `session_desktop` (argv), `session_frame_seconds`, `xvfb`,
    /// `journal_max_mib`, and the policy: `allow`, `file_roots`, `exec_user`. Flags and environment variables win over
    /// it.
    #[arg(long, env = "DIRIGENT_AGENT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The orchestrator's URL; with several nodes, their URLs separated by commas (the agent
    /// moves to the next when its node goes away).
    #[arg(long, env = "DIRIGENT_SERVER", value_name = "URL[,URL…]")]
    server: Option<String>,
    /// Where the credential and the journal are kept.
    #[arg(
        long,
        env = "DIRIGENT_AGENT_DATA",
        value_name = "DIR",
        default_value = "./dirigent-agent"
    )]
    data: PathBuf,
    /// A one-time enrollment token (from `dirigent agent enroll-token`), needed on the first start.
    #[arg(
        long,
        env = "DIRIGENT_ENROLL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    enroll_token: Option<String>,
    /// The name to enroll under [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// Labels robots can select this agent by: `key=value,key=value`.
    #[arg(long, value_name = "LABELS")]
    labels: Option<String>,
    /// Runs this agent takes at once [default: 16].
    #[arg(long, value_name = "N")]
    capacity: Option<u32>,
    /// Graphical sessions (X servers, Debian's `xvfb`) it keeps for robots that need a
    /// desktop [default: 0].
    #[arg(long, env = "DIRIGENT_AGENT_SESSIONS", value_name = "N")]
    sessions: Option<u32>,
    /// The screen size of its graphical sessions [default: 1920x1080].
    #[arg(long, value_name = "WIDTHxHEIGHT")]
    session_size: Option<String>,
    /// A window manager or desktop to start in each graphical session (a program and its
    /// arguments, separated by spaces).
    #[arg(long, value_name = "COMMAND")]
    session_desktop: Option<String>,
    /// How often a run's screen is kept as a thumbnail while it runs (0: never); its last
    /// screen is always kept [default: 5].
    #[arg(long, value_name = "SECONDS")]
    session_frame_seconds: Option<u64>,
    /// The X server program of the graphical sessions [default: Xvfb].
    #[arg(long, env = "DIRIGENT_XVFB", value_name = "PROGRAM")]
    xvfb: Option<String>,
    /// A PEM file of CA certificates to trust besides the system's, for an `https` server.
    #[arg(
        long,
        env = "DIRIGENT_CA_FILE",
        value_name = "FILE",
        conflicts_with = "pin_cert"
    )]
    ca_file: Option<PathBuf>,
    /// Trust only the server presenting the first certificate of this PEM file, whatever
    /// host name it is reached by.
    #[arg(long, value_name = "FILE")]
    pin_cert: Option<PathBuf>,
    /// The operations the orchestrator's activities may run here, separated by commas (`*`:
    /// all) [default: info,processes,agent.restart]. This machine's owner decides: the
    /// orchestrator cannot widen it.
    #[arg(long, value_name = "OPERATIONS")]
    allow: Option<String>,
    /// A directory under which activities may list, read and write files (repeatable).
    #[arg(long, value_name = "DIR")]
    file_root: Vec<PathBuf>,
    /// The user programs run by `exec` run as (the agent must be able to switch to it).
    #[arg(long, value_name = "USER")]
    exec_user: Option<String>,
    /// How much output and other reports the agent keeps while the orchestrator has not
    /// acknowledged them, in MiB; beyond it the robots' output waits (their writes block)
    /// [default: 256].
    #[arg(long, value_name = "MIB")]
    journal_max_mib: Option<u64>,
    /// The built-in local agent: its robots' working directories are file roots too.
    #[arg(long, hide = true)]
    allow_robot_dirs: bool,
    /// The built-in local agent: stop when no run is alive and the server was unreachable
    /// this many seconds.
    #[arg(long, value_name = "SECONDS", hide = true)]
    exit_when_orphaned: Option<u64>,
    /// The built-in local agent: with runs alive, safe-stop them and stop when the server was
    /// unreachable this many seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        hide = true,
        requires = "exit_when_orphaned"
    )]
    stop_robots_when_orphaned: Option<u64>,
    /// The built-in local agent: its orchestrator's data directory; removed, the orchestrator
    /// is gone for good.
    #[arg(long, value_name = "DIR", hide = true, requires = "exit_when_orphaned")]
    orchestrator_data: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// List the agents with their state and load.
    Ls(ClientArgs),
    /// Create a one-time enrollment token for a new agent (printed once).
    EnrollToken {
        /// How long it can be used, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
        expires_in: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop giving an agent new runs; it finishes those it has.
    Drain {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Give a drained agent runs again.
    Undrain {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The processes of an agent's machine.
    Ps {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// An agent's machine and the agent: OS, memory, disk, load, version, policy.
    Info {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Restart an agent; its robots keep running.
    Restart {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Replace an agent's binary (checked by SHA-256 and tried before it is swapped in) and
    /// restart it; its robots keep running.
    Update {
        name: String,
        /// The new `dirigent` binary.
        #[arg(long, value_name = "FILE")]
        binary: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Copy a file to or from an agent's machine: `cp AGENT:/PATH LOCAL` or
    /// `cp LOCAL AGENT:/PATH` (checked by SHA-256).
    Cp {
        source: String,
        destination: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The keeper of an agent's robots: started by the agent itself.
    #[command(hide = true)]
    Keeper {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
}

/// The data directory of the keeper to run, for `dirigent agent keeper`: it runs on plain
/// threads, before any async runtime starts (it takes `SIGCHLD` itself).
pub(crate) fn keeper_data_dir(args: &AgentArgs) -> Option<&std::path::Path> {
    match &args.command {
        Some(AgentCommand::Keeper { data }) => Some(data),
        _ => None,
    }
}

pub(crate) async fn run(args: AgentArgs) -> anyhow::Result<()> {
    match args.command {
        None => run_agent(args.run).await,
        Some(AgentCommand::Ls(client_args)) => {
            let agents = client_args.client()?.agents().await.map_err(explain)?;
            if client_args.json {
                return print_json(&agents);
            }
            let rows: Vec<Vec<String>> = agents
                .into_iter()
                .map(|agent| {
                    let labels: Vec<String> = agent
                        .labels
                        .iter()
                        .map(|(key, value)| format!("{key}={value}"))
                        .collect();
                    vec![
                        agent.name,
                        format!("{:?}", agent.state).to_lowercase(),
                        format!("{}/{}", agent.active_runs, agent.capacity),
                        agent.host,
                        agent.os_user,
                        labels.join(","),
                        agent.node.unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(
                &["NAME", "STATE", "RUNS", "HOST", "USER", "LABELS", "NODE"],
                &rows,
            );
            Ok(())
        }
        Some(AgentCommand::EnrollToken { expires_in, client }) => {
            let token = client
                .client()?
                .create_enrollment_token(Some(expires_in))
                .await
                .map_err(explain)?;
            if client.json {
                return print_json(&token);
            }
            eprintln!("Enrollment token, usable once until {}:", token.expires_at);
            out!("{}", token.token);
            Ok(())
        }
        Some(AgentCommand::Drain { name, client }) => drain(&name, true, &client).await,
        Some(AgentCommand::Undrain { name, client }) => drain(&name, false, &client).await,
        Some(AgentCommand::Ps { name, client }) => activity::processes(&name, &client).await,
        Some(AgentCommand::Info { name, client }) => activity::info(&name, &client).await,
        Some(AgentCommand::Restart { name, client }) => activity::restart(&name, &client).await,
        Some(AgentCommand::Update {
            name,
            binary,
            client,
        }) => activity::update(&name, &binary, &client).await,
        Some(AgentCommand::Cp {
            source,
            destination,
            client,
        }) => activity::copy(&source, &destination, &client).await,
        Some(AgentCommand::Keeper { .. }) => bail!("the keeper runs outside the async runtime"),
    }
}

async fn drain(name: &str, draining: bool, client_args: &ClientArgs) -> anyhow::Result<()> {
    let agent = client_args
        .client()?
        .drain_agent(name, draining)
        .await
        .map_err(explain)?;
    if client_args.json {
        return print_json(&agent);
    }
    eprintln!(
        "Agent {} is {}.",
        agent.name,
        format!("{:?}", agent.state).to_lowercase()
    );
    Ok(())
}

/// The agent's settings file. Every key is optional; flags and environment variables win.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    server: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    capacity: Option<u32>,
    sessions: Option<u32>,
    session_size: Option<String>,
    session_desktop: Option<Vec<String>>,
    session_frame_seconds: Option<u64>,
    xvfb: Option<String>,
    allow: Option<Vec<String>>,
    file_roots: Option<Vec<PathBuf>>,
    exec_user: Option<String>,
    journal_max_mib: Option<u64>,
}

async fn run_agent(args: RunAgentArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading settings file {}", path.display()))?;
            toml::from_str::<AgentFile>(&text).map_err(|err| {
                let err = err.to_string();
                anyhow::format_err!(
                    "{}: {}",
                    path.display(),
                    err.lines().collect::<Vec<_>>().join(" ")
                )
            })?
        }
        None => AgentFile::default(),
    };
    let Some(servers) = args.server.or(file.server) else {
        bail!("give the orchestrator's URL: dirigent agent --server http://HOST:8420");
    };
    let server_urls: Vec<String> = servers
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(url) = server_urls
        .iter()
        .find(|url| !url.starts_with("http://") && !url.starts_with("https://"))
    {
        bail!("--server takes http:// or https:// URLs, not {url:?}");
    }
    let Some(server) = server_urls.first().cloned() else {
        bail!("give the orchestrator's URL: dirigent agent --server http://HOST:8420");
    };
    let labels = match args.labels {
        Some(text) => parse_labels(&text)?,
        None => file.labels.unwrap_or_default(),
    };
    let capacity = args.capacity.or(file.capacity).unwrap_or(16);
    let sessions = args.sessions.or(file.sessions).unwrap_or(0);
    let session_size = args
        .session_size
        .or(file.session_size)
        .unwrap_or_else(|| "1920x1080".to_owned());
    let frame_seconds = args
        .session_frame_seconds
        .or(file.session_frame_seconds)
        .unwrap_or(5);
    let desktop = match args.session_desktop {
        Some(command) => command.split_whitespace().map(str::to_owned).collect(),
        None => file.session_desktop.unwrap_or_default(),
    };
    let xvfb = args.xvfb.or(file.xvfb).unwrap_or_else(|| "Xvfb".to_owned());
    let trust = match (args.pin_cert, args.ca_file) {
        (Some(pinned), _) => Trust::Pinned(pinned),
        (None, ca_file) => crate::cli::trust(ca_file),
    };
    if capacity == 0 || 10_000 < capacity {
        bail!("--capacity must be between 1 and 10000");
    }
    if 64 < sessions {
        bail!("--sessions must be between 0 and 64");
    }
    let (width, height) = parse_size(&session_size)?;
    let journal_max_mib = args.journal_max_mib.or(file.journal_max_mib).unwrap_or(256);
    if !(1..=1024 * 1024).contains(&journal_max_mib) {
        bail!("--journal-max-mib must be between 1 and 1048576");
    }
    let policy = policy(
        args.allow.as_deref(),
        file.allow,
        match args.file_root.is_empty() {
            true => file.file_roots.unwrap_or_default(),
            false => args.file_root,
        },
        args.exec_user.or(file.exec_user),
        args.allow_robot_dirs,
    )?;
    let credential = match dirigent_agent::stored_credential(&args.data)? {
        Some(credential) => credential,
        None => {
            let Some(token) = args.enroll_token else {
                bail!(
                    "this agent is not enrolled: give --enroll-token (create one with `dirigent agent enroll-token`)"
                );
            };
            let name = match args.name {
                Some(name) => name,
                None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|name| name.trim().to_lowercase())
                    .context("reading the host name (or give --name)")?,
            };
            let enrolled = Client::with_trust(&server, None, &trust)?
                .enroll(&token, &name)
                .await
                .map_err(explain)?;
            dirigent_agent::store_credential(&args.data, &enrolled.credential)?;
            eprintln!("Enrolled as agent {}.", enrolled.name);
            enrolled.credential
        }
    };
    let own_logs = crate::own_logs::init();
    let data_dir = std::path::absolute(&args.data)
        .with_context(|| format!("resolving {}", args.data.display()))?;
    let exe = std::env::current_exe().context("finding the dirigent binary")?;
    let keeper = vec![
        exe.into_os_string(),
        "agent".into(),
        "keeper".into(),
        "--data".into(),
        data_dir.clone().into_os_string(),
    ];
    let config = AgentConfig {
        server_urls,
        trust,
        data_dir,
        keeper,
        sessions: dirigent_agent::sessions::SessionsConfig {
            count: sessions,
            width,
            height,
            desktop,
            xvfb,
            frame_every: (0 < frame_seconds).then(|| Duration::from_secs(frame_seconds)),
        },
        labels,
        capacity,
        policy,
        journal_max_bytes: journal_max_mib * 1024 * 1024,
        heartbeat: Duration::from_secs(15),
        orphaned: args
            .exit_when_orphaned
            .map(|idle| dirigent_agent::Orphaned {
                idle_exit_after: Duration::from_secs(idle),
                stop_robots_after: Duration::from_secs(
                    args.stop_robots_when_orphaned.unwrap_or(u64::MAX / 4),
                ),
                orchestrator_data: args.orchestrator_data,
            }),
    };
    dirigent_agent::run(config, credential, Some(own_logs), crate::shutdown_signal()).await?;
    Ok(())
}

/// The agent's policy from its flags (which win) and its settings file.
fn policy(
    flag: Option<&str>,
    file: Option<Vec<String>>,
    file_roots: Vec<PathBuf>,
    exec_user: Option<String>,
    robot_dirs: bool,
) -> anyhow::Result<dirigent_agent::activities::Policy> {
    let mut policy = dirigent_agent::activities::Policy::enrolled();
    let allowed: Option<Vec<String>> = match flag {
        Some(text) => Some(
            text.split(',')
                .map(|op| op.trim().to_owned())
                .filter(|op| !op.is_empty())
                .collect(),
        ),
        None => file,
    };
    if let Some(allowed) = allowed {
        let known: Vec<&str> = dirigent_domain::activity::CATALOG
            .iter()
            .filter(|op| op.runs == dirigent_domain::activity::Runs::OnAgent)
            .map(|op| op.name)
            .collect();
        if let Some(unknown) = allowed
            .iter()
            .find(|op| *op != "*" && !known.contains(&op.as_str()))
        {
            bail!(
                "--allow: {unknown:?} is not an operation of agents: use {} or *",
                known.join(", ")
            );
        }
        policy.operations = allowed.into_iter().collect();
    }
    for root in &file_roots {
        if !root.is_absolute() {
            bail!(
                "--file-root takes absolute directories, not {}",
                root.display()
            );
        }
    }
    policy.file_roots = file_roots;
    policy.exec_user = exec_user;
    policy.robot_dirs = robot_dirs;
    Ok(policy)
}

/// `1920x1080` as (1920, 1080), within what Xvfb takes.
fn parse_size(text: &str) -> anyhow::Result<(u32, u32)> {
    let parsed = text
        .split_once('x')
        .and_then(|(width, height)| Some((width.parse().ok()?, height.parse().ok()?)));
    match parsed {
        Some((width, height)) if (64..=8192).contains(&width) && (64..=8192).contains(&height) => {
            Ok((width, height))
        }
        _ => bail!("--session-size takes WIDTHxHEIGHT between 64x64 and 8192x8192, not {text:?}"),
    }
}

fn parse_labels(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for pair in text
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
    {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--labels takes key=value pairs, not {pair:?}");
        };
        labels.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    Ok(labels)
}
