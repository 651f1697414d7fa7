//! `dirigent run start | ls | show | pause | resume | stop | kill | restart | logs | wait`.

use clap::Subcommand;
use dirigent_proto::run::{Run, RunDetail, StartRunRequest, Stream};
use jiff::Timestamp;

use crate::cli::{ClientArgs, explain, out, print_json, print_table};

#[derive(Debug, Subcommand)]
pub(crate) enum RunCommand {
    /// Start a run of a robot (the robot switches to manual mode).
    Start {
        robot: String,
        /// An argument appended to the robot's command for this run (repeatable).
        #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
        args: Vec<String>,
        /// An environment variable for this run (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Wait until it runs (or ends) before answering.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List runs, newest first.
    Ls {
        /// Only runs of this robot.
        #[arg(long)]
        robot: Option<String>,
        /// Only runs that have not ended.
        #[arg(long)]
        active: bool,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a run and its history.
    Show {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pause a running run (SIGSTOP to its process group).
    Pause(Target),
    /// Resume a paused run (SIGCONT).
    Resume(Target),
    /// Safe stop: SIGTERM, then SIGKILL after the robot's grace period.
    Stop(Target),
    /// Force stop: SIGKILL at once.
    Kill(Target),
    /// Safe stop, then start the robot again.
    Restart(Target),
    /// Print a run's output; `--follow` keeps printing until it ends.
    Logs {
        id: String,
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Wait until a run is in one of the states (comma-separated) or has ended.
    Wait {
        id: String,
        #[arg(long, default_value = "running")]
        state: String,
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        timeout: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    id: String,
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) async fn run(command: RunCommand) -> anyhow::Result<()> {
    match command {
        RunCommand::Start {
            robot,
            args,
            env,
            wait,
            client,
        } => {
            let request = StartRunRequest {
                robot,
                args,
                env: crate::cli::parse_env(&env)?,
            };
            let api = client.client()?;
            let mut run = api.start_run(&request).await.map_err(explain)?;
            if wait {
                run = api
                    .wait_run(&run.id, &["running"], 60)
                    .await
                    .map_err(explain)?
                    .run;
            }
            report(&client, &run)
        }
        RunCommand::Ls {
            robot,
            active,
            limit,
            client,
        } => {
            let runs = client
                .client()?
                .runs(robot.as_deref(), active, limit)
                .await
                .map_err(explain)?;
            if client.json {
                return print_json(&runs);
            }
            let rows: Vec<Vec<String>> = runs
                .iter()
                .map(|run| {
                    vec![
                        run.id.clone(),
                        run.robot.clone(),
                        run.state.as_str().to_owned(),
                        run.agent.clone().unwrap_or_else(|| "-".to_owned()),
                        run.created_at.to_string(),
                        run.reason.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(
                &["ID", "ROBOT", "STATE", "AGENT", "CREATED", "REASON"],
                &rows,
            );
            Ok(())
        }
        RunCommand::Show { id, client } => {
            let detail = client.client()?.run(&id).await.map_err(explain)?;
            if client.json {
                return print_json(&detail);
            }
            print_detail(&detail);
            Ok(())
        }
        RunCommand::Pause(target) => operate(target, "pause").await,
        RunCommand::Resume(target) => operate(target, "resume").await,
        RunCommand::Stop(target) => operate(target, "stop").await,
        RunCommand::Kill(target) => operate(target, "kill").await,
        RunCommand::Restart(target) => operate(target, "restart").await,
        RunCommand::Logs { id, follow, client } => {
            let api = client.client()?;
            let print = |line: dirigent_proto::run::LogLine| {
                if client.json {
                    let _ = print_json(&line);
                } else if line.stream == Stream::Stderr {
                    eprintln!("{}", line.text);
                } else {
                    out!("{}", line.text);
                }
            };
            if follow {
                let run = api.follow_logs(&id, 0, print).await.map_err(explain)?;
                if !client.json {
                    eprintln!("run {} {}", run.id, run.state.as_str());
                }
                return Ok(());
            }
            let mut after = 0;
            loop {
                let lines = api.run_logs(&id, after, 10_000).await.map_err(explain)?;
                let Some(last) = lines.last() else {
                    return Ok(());
                };
                after = last.seq;
                lines.into_iter().for_each(print);
            }
        }
        RunCommand::Wait {
            id,
            state,
            timeout,
            client,
        } => {
            let states: Vec<&str> = state.split(',').map(str::trim).collect();
            let detail = client
                .client()?
                .wait_run(&id, &states, timeout)
                .await
                .map_err(explain)?;
            report(&client, &detail.run)
        }
    }
}

async fn operate(target: Target, operation: &str) -> anyhow::Result<()> {
    let run = target
        .client
        .client()?
        .operate_run(&target.id, operation)
        .await
        .map_err(explain)?;
    report(&target.client, &run)
}

fn report(client: &ClientArgs, run: &Run) -> anyhow::Result<()> {
    if client.json {
        return print_json(run);
    }
    let reason = run
        .reason
        .as_deref()
        .map(|reason| format!(" ({reason})"))
        .unwrap_or_default();
    out!("{} {} {}{reason}", run.id, run.robot, run.state.as_str());
    Ok(())
}

fn print_detail(detail: &RunDetail) {
    let run = &detail.run;
    let when =
        |time: Option<Timestamp>| time.map_or_else(|| "-".to_owned(), |time| time.to_string());
    let fields = [
        ("id", run.id.clone()),
        ("robot", run.robot.clone()),
        ("state", run.state.as_str().to_owned()),
        ("reason", run.reason.clone().unwrap_or_default()),
        ("agent", run.agent.clone().unwrap_or_else(|| "-".to_owned())),
        (
            "pid",
            run.pid
                .map_or_else(|| "-".to_owned(), |pid| pid.to_string()),
        ),
        (
            "exit code",
            run.exit_code
                .map_or_else(|| "-".to_owned(), |code| code.to_string()),
        ),
        (
            "stop requested",
            if run.stop_requested { "yes" } else { "no" }.to_owned(),
        ),
        ("created", run.created_at.to_string()),
        ("started", when(run.started_at)),
        ("ended", when(run.ended_at)),
    ];
    for (label, value) in fields {
        out!("{label:<15} {value}");
    }
    out!();
    let rows: Vec<Vec<String>> = detail
        .transitions
        .iter()
        .map(|transition| {
            vec![
                transition.at.to_string(),
                transition.state.as_str().to_owned(),
                transition.cause.clone(),
                transition.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["AT", "STATE", "CAUSE", "REASON"], &rows);
}
