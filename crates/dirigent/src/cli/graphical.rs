//! `dirigent session ls|show|screenshot|restart`: the graphical sessions (desktops) agents keep for
//! robots that need one.

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::cli::{ClientArgs, explain, out, print_json, print_table};

#[derive(Debug, Subcommand)]
pub(crate) enum SessionCommand {
    /// List the graphical sessions: state, display, size and the run using each.
    Ls {
        /// Only the sessions of this agent.
        #[arg(long)]
        agent: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one session (`AGENT/NUMBER`) with its history.
    Show {
        #[arg(value_name = "AGENT/NUMBER")]
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a session anew (its X server stopped and started again).
    Restart {
        #[arg(value_name = "AGENT/NUMBER")]
        id: String,
        /// Restart it even while a run uses it (that run's display dies, and the run fails).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Save a screenshot of a session as PNG.
    Screenshot {
        #[arg(value_name = "AGENT/NUMBER")]
        id: String,
        /// Where to write it [default: AGENT-NUMBER.png]; `-` for standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `AGENT/NUMBER` as its two parts.
fn parse_id(id: &str) -> anyhow::Result<(&str, &str)> {
    match id.rsplit_once('/') {
        Some(parts) => Ok(parts),
        None => bail!("a session is named AGENT/NUMBER (see `dirigent session ls`), not {id:?}"),
    }
}

pub(crate) async fn run(command: SessionCommand) -> anyhow::Result<()> {
    match command {
        SessionCommand::Ls { agent, client } => {
            let sessions = client
                .client()?
                .sessions(agent.as_deref())
                .await
                .map_err(explain)?;
            if client.json {
                return print_json(&sessions);
            }
            let rows: Vec<Vec<String>> = sessions
                .into_iter()
                .map(|session| {
                    vec![
                        session.id,
                        match session.agent_online {
                            true => session.state.as_str().to_owned(),
                            false => format!("{} (agent offline)", session.state.as_str()),
                        },
                        session.display.unwrap_or_else(|| "-".to_owned()),
                        format!("{}x{}", session.width, session.height),
                        session.run_id.unwrap_or_default(),
                        session.reason.unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(&["ID", "STATE", "DISPLAY", "SIZE", "RUN", "REASON"], &rows);
            Ok(())
        }
        SessionCommand::Screenshot { id, output, client } => {
            let (agent, number) = parse_id(&id)?;
            let png = client
                .client()?
                .session_screenshot(agent, number)
                .await
                .map_err(explain)?;
            let path = output.unwrap_or_else(|| format!("{agent}-{number}.png").into());
            if path.as_os_str() == "-" {
                use std::io::Write;
                return std::io::stdout()
                    .write_all(&png)
                    .context("writing the screenshot to standard output");
            }
            std::fs::write(&path, &png).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("Saved {} ({} bytes).", path.display(), png.len());
            Ok(())
        }
        SessionCommand::Restart { id, force, client } => {
            let (agent, number) = parse_id(&id)?;
            client
                .client()?
                .restart_session(agent, number, force)
                .await
                .map_err(explain)?;
            eprintln!("Session {id} restarted.");
            Ok(())
        }
        SessionCommand::Show { id, client } => {
            let (agent, number) = parse_id(&id)?;
            let detail = client
                .client()?
                .session(agent, number)
                .await
                .map_err(explain)?;
            if client.json {
                return print_json(&detail);
            }
            let session = &detail.session;
            let fields = [
                ("id", session.id.clone()),
                ("state", session.state.as_str().to_owned()),
                (
                    "agent online",
                    if session.agent_online { "yes" } else { "no" }.to_owned(),
                ),
                (
                    "display",
                    session.display.clone().unwrap_or_else(|| "-".to_owned()),
                ),
                ("size", format!("{}x{}", session.width, session.height)),
                (
                    "run",
                    session.run_id.clone().unwrap_or_else(|| "-".to_owned()),
                ),
                ("reason", session.reason.clone().unwrap_or_default()),
                ("updated", session.updated_at.to_string()),
            ];
            for (label, value) in fields {
                out!("{label:<13} {value}");
            }
            out!("");
            let rows: Vec<Vec<String>> = detail
                .history
                .iter()
                .map(|change| {
                    vec![
                        change.at.to_string(),
                        change.state.as_str().to_owned(),
                        change.run_id.clone().unwrap_or_default(),
                        change.reason.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(&["AT", "STATE", "RUN", "REASON"], &rows);
            Ok(())
        }
    }
}
