//! `dirigent`: the one binary. `dirigent serve` runs the orchestrator; every other verb is a
//! thin client of its HTTP API (`dirigent login`, `dirigent robot …`, `dirigent token …`).
//!
//! This file only declares the command line and hands each verb to its module.

mod agent;
mod cli;
mod own_logs;
mod serve;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// Dirigent keeps an array of software robots working without interruption.
#[derive(Debug, Parser)]
#[command(name = "dirigent", version, propagate_version = true)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the orchestrator (HTTP API; embedded SQLite unless a database URL is given).
    Serve(serve::ServeArgs),
    /// Log in to a server and keep the session token for the next commands.
    Login(cli::session::LoginArgs),
    /// End the kept session and forget its token.
    Logout(cli::ClientArgs),
    /// Show who the current credentials belong to.
    Whoami(cli::ClientArgs),
    /// Run the agent of this robot machine (`--server URL`), or manage agents: ls,
    /// enroll-token, drain, undrain, ps, info, restart, cp.
    Agent(Box<agent::AgentArgs>),
    /// The orchestrator nodes sharing the database: ls.
    #[command(subcommand)]
    Node(cli::node::NodeCommand),
    /// Graphical sessions (desktops) agents keep for robots: ls, show, screenshot, restart,
    /// control, release, type, key, click.
    #[command(subcommand)]
    Session(cli::graphical::SessionCommand),
    /// Runs: start, ls, show, pause, resume, stop, kill, restart, logs, wait.
    #[command(subcommand)]
    Run(cli::run::RunCommand),
    /// Robot definitions: ls, show, create, update, auto, rm.
    #[command(subcommand)]
    Robot(cli::robot::RobotCommand),
    /// Work-item queues: ls, show, create, update, rm; items: add, claim, complete, fail,
    /// extend, postpone, abandon, items, item, requeue, delete.
    #[command(subcommand)]
    Queue(cli::queue::QueueCommand),
    /// Triggers: ls, show, create, update, rm, enable, disable, preview, firings.
    #[command(subcommand)]
    Trigger(cli::trigger::TriggerCommand),
    /// Calendars of working days and holidays: ls, show, create, update, rm.
    #[command(subcommand)]
    Calendar(cli::trigger::CalendarCommand),
    /// Users: ls, show, create, update, rm, logout-everywhere, passwd.
    #[command(subcommand)]
    User(cli::user::UserCommand),
    /// Roles: ls, create, rm.
    #[command(subcommand)]
    Role(cli::user::RoleCommand),
    /// How long finished data is kept and how much is kept now; `--sweep` deletes what is old.
    Retention(cli::retention::RetentionArgs),
    /// Run a program on an agent's machine (no shell): its output here, its exit code as
    /// this command's.
    Exec(cli::activity::ExecArgs),
    /// Activities (typed operations on agents and on the orchestrator): ls, show, cancel, run,
    /// catalog.
    #[command(subcommand)]
    Activity(cli::activity::ActivityCommand),
    /// The audit log: every change and every denial, newest first.
    Audit(cli::audit::AuditArgs),
    /// Search the log store, export a search as NDJSON, or follow it live.
    Logs(cli::logs::LogsArgs),
    /// Your API tokens: ls, create, revoke.
    #[command(subcommand)]
    Token(cli::token::TokenCommand),
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Command::Agent(agent_args) = &args.command
        && let Some(data_dir) = agent::keeper_data_dir(agent_args)
    {
        return match dirigent_agent::keeper::serve(data_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match args.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Login(args) => cli::session::login(args).await,
            Command::Logout(args) => cli::session::logout(args).await,
            Command::Whoami(args) => cli::session::whoami(args).await,
            Command::Agent(args) => agent::run(*args).await,
            Command::Node(command) => cli::node::run(command).await,
            Command::Session(command) => cli::graphical::run(command).await,
            Command::Run(command) => cli::run::run(command).await,
            Command::Robot(command) => cli::robot::run(command).await,
            Command::Token(command) => cli::token::run(command).await,
            Command::Queue(command) => cli::queue::run(command).await,
            Command::Trigger(command) => cli::trigger::run(command).await,
            Command::Calendar(command) => cli::trigger::run_calendar(command).await,
            Command::Audit(args) => cli::audit::run(args).await,
            Command::Logs(args) => cli::logs::run(args).await,
            Command::Exec(args) => cli::activity::exec(args).await,
            Command::Retention(args) => cli::retention::run(args).await,
            Command::Activity(command) => cli::activity::run(command).await,
            Command::User(command) => cli::user::run_user(command).await,
            Command::Role(command) => cli::user::run_role(command).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<cli::activity::Exit>() => ExitCode::from(cli::exit_code(&err)),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(cli::exit_code(&err))
        }
    }
}

/// Where the CLI keeps its session token: `$DIRIGENT_CONFIG_DIR`, else
/// `$XDG_CONFIG_HOME/dirigent`, else `~/.config/dirigent`.
fn config_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DIRIGENT_CONFIG_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|dir| !dir.is_empty()) {
        return Some(PathBuf::from(dir).join("dirigent"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config").join("dirigent"))
}

/// Resolves on SIGINT or SIGTERM.
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
