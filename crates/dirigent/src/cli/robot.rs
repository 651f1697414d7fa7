//! `dirigent robot ls | show | create | update | rm`: robot definitions from flags or from a
//! TOML or JSON file.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use dirigent_proto::robot::{
    CrashLoop, RestartBackoff, RestartPolicy, Robot, RobotMode, RobotSpec,
};

use crate::cli::{ClientArgs, explain, out, print_json, print_table};

#[derive(Debug, Subcommand)]
pub(crate) enum RobotCommand {
    /// List the robots you may see.
    Ls(ClientArgs),
    /// Show one robot's definition.
    Show {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Define a new robot: `dirigent robot create NAME [FLAGS] -- PROGRAM [ARGS…]`, or from
    /// a file with `--file robot.toml`.
    Create(CreateArgs),
    /// Change a robot: the given flags change only their fields; `--file` replaces the
    /// whole definition.
    Update(UpdateArgs),
    /// Return a robot to auto mode: automation (restart policy, triggers) acts on it again.
    Auto {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a robot's definition.
    Rm {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// The robot's name [default: the file's `name`].
    name: Option<String>,
    /// A TOML or JSON file with the definition; flags override its fields.
    #[arg(long, short, value_name = "FILE")]
    file: Option<PathBuf>,
    #[command(flatten)]
    fields: FieldFlags,
    /// The program and its arguments, after `--`; run without a shell.
    #[arg(last = true, value_name = "ARGV")]
    argv: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    name: String,
    /// Replace the whole definition with this TOML or JSON file; flags override its fields.
    #[arg(long, short, value_name = "FILE")]
    file: Option<PathBuf>,
    #[command(flatten)]
    fields: FieldFlags,
    /// Remove an environment variable (repeatable).
    #[arg(long, value_name = "KEY")]
    unset_env: Vec<String>,
    /// Remove the limit on a run's duration.
    #[arg(long, conflicts_with = "max_duration")]
    no_max_duration: bool,
    /// A new program and arguments, after `--`.
    #[arg(last = true, value_name = "ARGV")]
    argv: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// One flag per field of a definition; each given flag overrides that field.
#[derive(Debug, Args)]
struct FieldFlags {
    #[arg(long)]
    description: Option<String>,
    /// Absolute directory to run in.
    #[arg(long, value_name = "DIR")]
    working_dir: Option<String>,
    /// An environment variable for the runs (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// An agent name, or labels `key=value,…`; empty for any agent.
    #[arg(long, value_name = "AGENT")]
    agent: Option<String>,
    /// Runs allowed at once.
    #[arg(long, value_name = "N")]
    max_parallel: Option<u32>,
    /// Seconds from the safe stop's SIGTERM to SIGKILL.
    #[arg(long, value_name = "SECONDS")]
    stop_grace: Option<u32>,
    /// Seconds after which a run is stopped as timed out.
    #[arg(long, value_name = "SECONDS")]
    max_duration: Option<u32>,
    #[arg(long, value_enum)]
    restart_policy: Option<RestartPolicyArg>,
    /// First delay before an automatic restart (doubles per failure).
    #[arg(long, value_name = "SECONDS")]
    backoff_initial: Option<u32>,
    /// Longest delay before an automatic restart.
    #[arg(long, value_name = "SECONDS")]
    backoff_max: Option<u32>,
    /// Automatic starts allowed within the crash-loop window.
    #[arg(long, value_name = "N")]
    crash_loop_max_starts: Option<u32>,
    /// The crash-loop window.
    #[arg(long, value_name = "SECONDS")]
    crash_loop_window: Option<u32>,
    /// Whether the robot needs a graphical session.
    #[arg(long, value_name = "BOOL")]
    needs_display: Option<bool>,
    /// A queue (or pattern such as `invoices-*`) the robot's runs may use (repeatable).
    #[arg(long = "queue", value_name = "NAME")]
    queues: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RestartPolicyArg {
    Never,
    OnFailure,
    Always,
}

pub(crate) async fn run(command: RobotCommand) -> anyhow::Result<()> {
    match command {
        RobotCommand::Ls(client_args) => {
            let robots = client_args.client()?.robots().await.map_err(explain)?;
            if client_args.json {
                return print_json(&robots);
            }
            let rows: Vec<Vec<String>> = robots
                .iter()
                .map(|robot| {
                    vec![
                        robot.name.clone(),
                        robot.agent.clone().unwrap_or_else(|| "any".to_owned()),
                        robot.max_parallel.to_string(),
                        robot.restart_policy.as_str().to_owned(),
                        shell_words(&robot.argv),
                    ]
                })
                .collect();
            print_table(&["NAME", "AGENT", "PARALLEL", "RESTART", "COMMAND"], &rows);
            Ok(())
        }
        RobotCommand::Show { name, client } => {
            let robot = client.client()?.robot(&name).await.map_err(explain)?;
            if client.json {
                return print_json(&robot);
            }
            print_robot(&robot);
            Ok(())
        }
        RobotCommand::Create(args) => {
            let mut spec = match &args.file {
                Some(path) => read_spec(path)?,
                None => RobotSpec::default(),
            };
            match (&args.name, &spec.name) {
                (Some(name), Some(in_file)) if name != in_file => {
                    bail!("the name {name:?} differs from the file's name {in_file:?}")
                }
                (Some(name), _) => spec.name = Some(name.clone()),
                (None, Some(_)) => {}
                (None, None) => {
                    bail!("name the robot: dirigent robot create NAME -- PROGRAM [ARGS…]")
                }
            }
            args.fields.apply(&mut spec)?;
            if !args.argv.is_empty() {
                spec.argv = args.argv;
            }
            if spec.argv.is_empty() {
                bail!(
                    "give the program to run after `--`, e.g. dirigent robot create NAME -- python3 bot.py"
                );
            }
            let robot = args
                .client
                .client()?
                .create_robot(&spec)
                .await
                .map_err(explain)?;
            report(&args.client, &robot, "Created")
        }
        RobotCommand::Update(args) => {
            let client = args.client.client()?;
            let mut spec = match &args.file {
                Some(path) => read_spec(path)?,
                None => client.robot(&args.name).await.map_err(explain)?.to_spec(),
            };
            args.fields.apply(&mut spec)?;
            let env = spec.env.get_or_insert_with(BTreeMap::new);
            for key in &args.unset_env {
                if env.remove(key).is_none() {
                    bail!("the robot has no environment variable {key:?}");
                }
            }
            if args.no_max_duration {
                spec.max_duration_seconds = None;
            }
            if !args.argv.is_empty() {
                spec.argv = args.argv;
            }
            let robot = client
                .replace_robot(&args.name, &spec)
                .await
                .map_err(explain)?;
            report(&args.client, &robot, "Updated")
        }
        RobotCommand::Auto { name, client } => {
            let robot = client
                .client()?
                .set_robot_auto(&name)
                .await
                .map_err(explain)?;
            report(&client, &robot, "Switched to auto:")
        }
        RobotCommand::Rm { name, client } => {
            client
                .client()?
                .delete_robot(&name)
                .await
                .map_err(explain)?;
            if !client.json {
                eprintln!("Deleted robot {name}.");
            }
            Ok(())
        }
    }
}

impl FieldFlags {
    fn apply(&self, spec: &mut RobotSpec) -> anyhow::Result<()> {
        let set = |target: &mut Option<u32>, value: Option<u32>| {
            if value.is_some() {
                *target = value;
            }
        };
        if let Some(description) = &self.description {
            spec.description = Some(description.clone());
        }
        if let Some(dir) = &self.working_dir {
            spec.working_dir = Some(dir.clone());
        }
        if !self.env.is_empty() {
            spec.env
                .get_or_insert_with(BTreeMap::new)
                .extend(crate::cli::parse_env(&self.env)?);
        }
        if let Some(agent) = &self.agent {
            spec.agent = (!agent.is_empty()).then(|| agent.clone());
        }
        set(&mut spec.max_parallel, self.max_parallel);
        set(&mut spec.stop_grace_seconds, self.stop_grace);
        set(&mut spec.max_duration_seconds, self.max_duration);
        if let Some(policy) = self.restart_policy {
            spec.restart_policy = Some(match policy {
                RestartPolicyArg::Never => RestartPolicy::Never,
                RestartPolicyArg::OnFailure => RestartPolicy::OnFailure,
                RestartPolicyArg::Always => RestartPolicy::Always,
            });
        }
        if self.backoff_initial.is_some() || self.backoff_max.is_some() {
            let current = spec.restart_backoff.unwrap_or(RestartBackoff {
                initial_seconds: 1,
                max_seconds: 300,
            });
            spec.restart_backoff = Some(RestartBackoff {
                initial_seconds: self.backoff_initial.unwrap_or(current.initial_seconds),
                max_seconds: self.backoff_max.unwrap_or(current.max_seconds),
            });
        }
        if self.crash_loop_max_starts.is_some() || self.crash_loop_window.is_some() {
            let current = spec.crash_loop.unwrap_or(CrashLoop {
                max_starts: 5,
                window_seconds: 300,
            });
            spec.crash_loop = Some(CrashLoop {
                max_starts: self.crash_loop_max_starts.unwrap_or(current.max_starts),
                window_seconds: self.crash_loop_window.unwrap_or(current.window_seconds),
            });
        }
        if self.needs_display.is_some() {
            spec.needs_display = self.needs_display;
        }
        if !self.queues.is_empty() {
            spec.queues = Some(self.queues.clone());
        }
        Ok(())
    }
}

/// Reads a definition from TOML or JSON (by extension, else by content).
fn read_spec(path: &Path) -> anyhow::Result<RobotSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let is_json = match path.extension().and_then(|ext| ext.to_str()) {
        Some("json") => true,
        Some("toml") => false,
        _ => text.trim_start().starts_with('{'),
    };
    let parsed = if is_json {
        serde_json::from_str(&text).map_err(|err| err.to_string())
    } else {
        toml::from_str(&text).map_err(|err| err.to_string())
    };
    parsed.map_err(|err| {
        let first_line = err
            .lines()
            .find(|line| !line.trim().is_empty())
            .unwrap_or_default()
            .to_owned();
        let detail: Vec<&str> = err
            .lines()
            .filter(|line| !line.trim().is_empty() && !line.contains('|'))
            .collect();
        anyhow::format_err!(
            "{}: {}",
            path.display(),
            if detail.is_empty() {
                first_line
            } else {
                detail.join(" ")
            }
        )
    })
}

fn report(client: &ClientArgs, robot: &Robot, verb: &str) -> anyhow::Result<()> {
    if client.json {
        return print_json(robot);
    }
    eprintln!("{verb} robot {}.", robot.name);
    print_robot(robot);
    Ok(())
}

fn print_robot(robot: &Robot) {
    let optional = |value: Option<u32>, none: &str| {
        value.map_or_else(|| none.to_owned(), |n| format!("{n} s"))
    };
    let env = robot
        .env
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(" ");
    let fields = [
        ("name", robot.name.clone()),
        ("description", robot.description.clone()),
        ("command", shell_words(&robot.argv)),
        (
            "working dir",
            robot
                .working_dir
                .clone()
                .unwrap_or_else(|| "(the agent's)".to_owned()),
        ),
        (
            "env",
            if env.is_empty() {
                "(none)".to_owned()
            } else {
                env
            },
        ),
        (
            "agent",
            robot.agent.clone().unwrap_or_else(|| "any".to_owned()),
        ),
        ("max parallel", robot.max_parallel.to_string()),
        ("stop grace", format!("{} s", robot.stop_grace_seconds)),
        ("max duration", optional(robot.max_duration_seconds, "none")),
        ("restart policy", robot.restart_policy.as_str().to_owned()),
        (
            "restart backoff",
            format!(
                "{} s doubling to {} s",
                robot.restart_backoff.initial_seconds, robot.restart_backoff.max_seconds
            ),
        ),
        (
            "crash loop",
            format!(
                "more than {} starts in {} s",
                robot.crash_loop.max_starts, robot.crash_loop.window_seconds
            ),
        ),
        (
            "needs display",
            if robot.needs_display { "yes" } else { "no" }.to_owned(),
        ),
        (
            "queues",
            match robot.queues.is_empty() {
                true => "(none)".to_owned(),
                false => robot.queues.join(", "),
            },
        ),
        ("mode", describe_mode(robot)),
        ("created", robot.created_at.to_string()),
        ("updated", robot.updated_at.to_string()),
    ];
    for (label, value) in fields {
        out!("{label:<16} {value}");
    }
}

/// The argv as a person would type it, quoting what needs quoting.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The robot's mode, why, and for a manual robot how to give it back to automation.
fn describe_mode(robot: &Robot) -> String {
    let reason = robot
        .mode_reason
        .as_deref()
        .map(|reason| format!(" ({reason})"))
        .unwrap_or_default();
    match robot.mode {
        RobotMode::Auto => format!("auto{reason}"),
        RobotMode::Manual => format!(
            "manual{reason}; its triggers and restart policy leave it alone until \
             `dirigent robot auto {}`",
            robot.name
        ),
    }
}
