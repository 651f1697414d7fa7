//! `dirigent activity …`, `dirigent exec` and the agent administration verbs (`agent ps`,
//! `info`, `restart`, `cp`): all are activities, asked through the API and followed to
//! their end.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Args, Subcommand};
use dirigent_client::{ActivityFilter, Client};
use dirigent_proto::{
    activity::{Activity, ActivityRequest, ActivityState, FileContent, Mode, ProcessInfo},
    run::Stream,
};
use serde_json::json;
use sha2::Digest;

use crate::cli::{ClientArgs, explain, out, parse_env, print_json, print_table};

/// The program run by `dirigent exec` ended with this code (or an activity did not end well):
/// the CLI exits with it, saying nothing more.
#[derive(Debug)]
pub(crate) struct Exit(pub(crate) u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for Exit {}

#[derive(Debug, Subcommand)]
pub(crate) enum ActivityCommand {
    /// List activities, newest first.
    Ls {
        /// queued, running, succeeded, failed, timed_out or cancelled.
        #[arg(long)]
        state: Option<String>,
        /// `server`, an agent's name, or a selector.
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        operation: Option<String>,
        /// Only older than this activity (the last id of the previous page).
        #[arg(long, value_name = "ID")]
        before: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show an activity, its result and its output.
    Show {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel an activity (a running program's process group is killed).
    Cancel {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run an operation of the catalogue and follow it to its end.
    Run {
        operation: String,
        /// `server`, an agent's name, or a label selector `key=value,…` (one child per agent).
        #[arg(long)]
        target: String,
        /// Its arguments, as JSON.
        #[arg(long, default_value = "{}")]
        args: String,
        #[command(flatten)]
        options: RunOptions,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The operations: where each runs and the permission it needs.
    Catalog(ClientArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RunOptions {
    /// Run at once, beside the target's other activities, instead of in its queue.
    #[arg(long)]
    parallel: bool,
    /// Seconds until it times out, queueing included [default: 300].
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u32>,
}

/// `dirigent exec AGENT -- PROGRAM ARGS…`.
#[derive(Debug, Args)]
pub(crate) struct ExecArgs {
    /// The agent (or a label selector `key=value,…` for every matching agent).
    target: String,
    /// The program and its arguments (no shell).
    #[arg(last = true, required = true)]
    argv: Vec<String>,
    /// Its working directory on the agent's machine.
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// Added to its environment (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Give it this program's standard input.
    #[arg(long)]
    stdin: bool,
    #[command(flatten)]
    options: RunOptions,
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) async fn run(command: ActivityCommand) -> anyhow::Result<()> {
    match command {
        ActivityCommand::Ls {
            state,
            target,
            operation,
            before,
            limit,
            client,
        } => {
            let filter = ActivityFilter {
                state,
                target,
                operation,
                before,
                limit: Some(limit),
                ..ActivityFilter::default()
            };
            let activities = client
                .client()?
                .activities(&filter)
                .await
                .map_err(explain)?;
            if client.json {
                return print_json(&activities);
            }
            let rows: Vec<Vec<String>> = activities
                .into_iter()
                .map(|activity| {
                    vec![
                        activity.id,
                        activity.operation,
                        activity.target,
                        activity.state.as_str().to_owned(),
                        activity.requested_by,
                        activity.created_at.to_string(),
                        activity.reason.unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID",
                    "OPERATION",
                    "TARGET",
                    "STATE",
                    "BY",
                    "CREATED",
                    "REASON",
                ],
                &rows,
            );
            Ok(())
        }
        ActivityCommand::Show { id, client } => {
            let api = client.client()?;
            let activity = api.activity(&id, None).await.map_err(explain)?;
            let output = api.activity_output(&id).await.map_err(explain)?;
            if client.json {
                return print_json(&json!({ "activity": activity, "output": output }));
            }
            show(&activity);
            for line in output {
                let stream = match line.stream {
                    Stream::Stdout => "out",
                    Stream::Stderr => "err",
                };
                out!("{stream:<4} {}", line.text);
            }
            Ok(())
        }
        ActivityCommand::Cancel { id, client } => {
            let activity = client
                .client()?
                .cancel_activity(&id)
                .await
                .map_err(explain)?;
            if client.json {
                return print_json(&activity);
            }
            eprintln!("Activity {id} is {}.", activity.state.as_str());
            Ok(())
        }
        ActivityCommand::Run {
            operation,
            target,
            args,
            options,
            client,
        } => {
            let args: serde_json::Value =
                serde_json::from_str(&args).context("--args takes a JSON object")?;
            let api = client.client()?;
            let activity = ask(&api, &target, &operation, args, &options).await?;
            let ended = follow(&api, &activity, client.json).await?;
            if client.json {
                print_json(&ended)?;
            } else {
                show(&ended);
            }
            ended_well(&ended)
        }
        ActivityCommand::Catalog(client) => {
            let catalog = client.client()?.activity_catalog().await.map_err(explain)?;
            if client.json {
                return print_json(&catalog);
            }
            let rows: Vec<Vec<String>> = catalog
                .into_iter()
                .map(|entry| {
                    vec![
                        entry.operation,
                        format!("{:?}", entry.target).to_lowercase(),
                        entry.permission,
                        entry.description,
                    ]
                })
                .collect();
            print_table(&["OPERATION", "ON", "PERMISSION", "DESCRIPTION"], &rows);
            Ok(())
        }
    }
}

/// `dirigent exec`: the program's output on this terminal's stdout and stderr, and its exit
/// code as this command's.
pub(crate) async fn exec(args: ExecArgs) -> anyhow::Result<()> {
    let stdin = match args.stdin {
        true => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading standard input")?;
            Some(text)
        }
        false => None,
    };
    let env: BTreeMap<String, String> = parse_env(&args.env)?;
    let exec = json!({ "argv": args.argv, "working_dir": args.cwd, "env": env, "stdin": stdin });
    let api = args.client.client()?;
    let activity = ask(&api, &args.target, "exec", exec, &args.options).await?;
    let ended = follow(&api, &activity, false).await?;
    let code = ended
        .result
        .as_ref()
        .and_then(|result| result.get("exit_code")?.as_i64());
    match (ended.state, code) {
        (_, Some(code)) => match u8::try_from(code) {
            Ok(0) => Ok(()),
            Ok(code) => Err(Exit(code).into()),
            Err(_) => Err(Exit(1).into()),
        },
        (ActivityState::Succeeded, None) => Ok(()),
        _ => ended_well(&ended),
    }
}

/// `dirigent agent ps AGENT`.
pub(crate) async fn processes(agent: &str, client: &ClientArgs) -> anyhow::Result<()> {
    let ended = run_on(client, agent, "processes", json!({})).await?;
    let processes: Vec<ProcessInfo> = result_of(&ended)?;
    if client.json {
        return print_json(&processes);
    }
    let rows: Vec<Vec<String>> = processes
        .into_iter()
        .map(|process| {
            let command = match process.command.is_empty() {
                true => format!("[{}]", process.name),
                false => process.command.join(" "),
            };
            vec![
                process.pid.to_string(),
                process.ppid.to_string(),
                process.user,
                format!("{:.1}", process.cpu_seconds),
                format!("{}", process.memory_bytes / 1024),
                command,
            ]
        })
        .collect();
    print_table(
        &["PID", "PPID", "USER", "CPU s", "RSS KiB", "COMMAND"],
        &rows,
    );
    Ok(())
}

/// `dirigent agent info AGENT`.
pub(crate) async fn info(agent: &str, client: &ClientArgs) -> anyhow::Result<()> {
    let ended = run_on(client, agent, "info", json!({})).await?;
    let info = ended.result.unwrap_or_default();
    if client.json {
        return print_json(&info);
    }
    if let serde_json::Value::Object(fields) = info {
        for (key, value) in fields {
            let value = match value {
                serde_json::Value::String(text) => text,
                other => other.to_string(),
            };
            out!("{key:<24} {value}");
        }
    }
    Ok(())
}

/// `dirigent agent restart AGENT`.
pub(crate) async fn restart(agent: &str, client: &ClientArgs) -> anyhow::Result<()> {
    run_on(client, agent, "agent.restart", json!({})).await?;
    eprintln!("Agent {agent} is restarting; its robots keep running.");
    Ok(())
}

/// `dirigent agent update AGENT --binary FILE`.
pub(crate) async fn update(
    agent: &str,
    binary: &std::path::Path,
    client: &ClientArgs,
) -> anyhow::Result<()> {
    let content = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let blob = client
        .client()?
        .upload_blob(content)
        .await
        .map_err(explain)?;
    let ended = run_on(
        client,
        agent,
        "agent.update",
        json!({ "sha256": blob.sha256 }),
    )
    .await?;
    if client.json {
        return print_json(&ended);
    }
    let version = ended
        .result
        .as_ref()
        .and_then(|result| result.get("version")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    eprintln!(
        "Agent {agent} now runs {version} (SHA-256 {}); it is restarting, its robots keep running.",
        blob.sha256
    );
    Ok(())
}

/// `dirigent agent cp SOURCE DESTINATION`: one of them `AGENT:/PATH`.
pub(crate) async fn copy(
    source: &str,
    destination: &str,
    client: &ClientArgs,
) -> anyhow::Result<()> {
    let remote = |text: &str| {
        text.split_once(':')
            .filter(|(agent, path)| !agent.is_empty() && path.starts_with('/'))
            .map(|(agent, path)| (agent.to_owned(), path.to_owned()))
    };
    match (remote(source), remote(destination)) {
        (Some((agent, path)), None) => {
            let ended = run_on(client, &agent, "files.read", json!({ "path": path })).await?;
            let file: FileContent = result_of(&ended)?;
            let content = base64::engine::general_purpose::STANDARD
                .decode(&file.content_base64)
                .context("the agent's answer is not base64")?;
            if hex(&sha2::Sha256::digest(&content)) != file.sha256 {
                bail!("the content read does not match the SHA-256 the agent gave");
            }
            if (content.len() as u64) < file.size {
                bail!(
                    "{path} holds {} bytes, more than one read takes: read it in parts with `dirigent activity run files.read`",
                    file.size
                );
            }
            std::fs::write(destination, &content)
                .with_context(|| format!("writing {destination}"))?;
            eprintln!("Copied {} bytes (SHA-256 {}).", content.len(), file.sha256);
        }
        (None, Some((agent, path))) => {
            let content = std::fs::read(PathBuf::from(source))
                .with_context(|| format!("reading {source}"))?;
            let args = json!({
                "path": path,
                "content_base64": base64::engine::general_purpose::STANDARD.encode(&content),
                "sha256": hex(&sha2::Sha256::digest(&content)),
            });
            let ended = run_on(client, &agent, "files.write", args).await?;
            let sha = ended
                .result
                .as_ref()
                .and_then(|result| result.get("sha256")?.as_str().map(str::to_owned))
                .unwrap_or_default();
            eprintln!("Copied {} bytes (SHA-256 {sha}).", content.len());
        }
        _ => bail!("give one side as AGENT:/ABSOLUTE/PATH and the other as a local file"),
    }
    Ok(())
}

async fn run_on(
    client: &ClientArgs,
    target: &str,
    operation: &str,
    args: serde_json::Value,
) -> anyhow::Result<Activity> {
    let api = client.client()?;
    let options = RunOptions {
        parallel: true,
        timeout: None,
    };
    let activity = ask(&api, target, operation, args, &options).await?;
    let ended = follow(&api, &activity, true).await?;
    ended_well(&ended)?;
    Ok(ended)
}

async fn ask(
    api: &Client,
    target: &str,
    operation: &str,
    args: serde_json::Value,
    options: &RunOptions,
) -> anyhow::Result<Activity> {
    let request = ActivityRequest {
        target: target.to_owned(),
        operation: operation.to_owned(),
        args,
        mode: match options.parallel {
            true => Mode::Parallel,
            false => Mode::Sequential,
        },
        timeout_seconds: options.timeout,
    };
    api.create_activity(&request).await.map_err(explain)
}

/// Follows an activity to its end, its output on stdout and stderr (all on stderr when
/// stdout is for JSON); a fan-out's children one after another.
async fn follow(api: &Client, activity: &Activity, json: bool) -> anyhow::Result<Activity> {
    let print = |line: dirigent_proto::run::LogLine| match line.stream {
        Stream::Stdout if !json => out!("{}", line.text),
        _ => eprintln!("{}", line.text),
    };
    if activity.children.is_empty() {
        return api
            .follow_activity(&activity.id, print)
            .await
            .map_err(explain);
    }
    for child in &activity.children {
        let ended = api.follow_activity(child, |line| {
            let stream = line.stream;
            let text = format!("{child}: {}", line.text);
            print(dirigent_proto::run::LogLine {
                text,
                stream,
                ..line
            });
        });
        let ended = ended.await.map_err(explain)?;
        eprintln!("{child} on {}: {}", ended.target, ended.state.as_str());
    }
    api.activity(&activity.id, Some(30)).await.map_err(explain)
}

fn ended_well(activity: &Activity) -> anyhow::Result<()> {
    let code = match activity.state {
        ActivityState::Succeeded => return Ok(()),
        ActivityState::TimedOut => 124,
        ActivityState::Cancelled => 130,
        _ => 125,
    };
    eprintln!(
        "activity {} {}{}",
        activity.id,
        activity.state.as_str(),
        activity
            .reason
            .as_deref()
            .map(|reason| format!(": {reason}"))
            .unwrap_or_default()
    );
    Err(Exit(code).into())
}

fn result_of<T: serde::de::DeserializeOwned>(activity: &Activity) -> anyhow::Result<T> {
    serde_json::from_value(activity.result.clone().unwrap_or_default())
        .context("reading the activity's result")
}

fn show(activity: &Activity) {
    let fields = [
        ("id", activity.id.clone()),
        ("operation", activity.operation.clone()),
        ("target", activity.target.clone()),
        ("args", activity.args.to_string()),
        ("mode", activity.mode.as_str().to_owned()),
        ("state", activity.state.as_str().to_owned()),
        ("reason", activity.reason.clone().unwrap_or_default()),
        ("requested by", activity.requested_by.clone()),
        ("created", activity.created_at.to_string()),
        (
            "started",
            activity
                .started_at
                .map(|at| at.to_string())
                .unwrap_or_default(),
        ),
        (
            "ended",
            activity
                .ended_at
                .map(|at| at.to_string())
                .unwrap_or_default(),
        ),
        ("children", activity.children.join(" ")),
        (
            "result",
            activity
                .result
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        ),
    ];
    for (label, value) in fields {
        if !value.is_empty() {
            out!("{label:<13} {value}");
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
