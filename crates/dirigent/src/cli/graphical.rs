//! `dirigent session ls|show|screenshot|restart|control|release|type|key|click`: the graphical
//! sessions (desktops) agents keep for robots that need one, watched and taken over.

use anyhow::{Context, bail};
use clap::Subcommand;

use dirigent_proto::session::InputEvent;

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
    /// Take a session over: your input goes to it (type, key, click) until you release it.
    /// The run using it is paused meanwhile.
    Control {
        #[arg(value_name = "AGENT/NUMBER")]
        id: String,
        /// Leave the run using it running.
        #[arg(long)]
        no_pause: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Give a session back: the run paused for you resumes.
    Release {
        #[arg(value_name = "AGENT/NUMBER")]
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Type text into a session you control.
    Type {
        #[arg(value_name = "AGENT/NUMBER")]
        id: String,
        text: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Press a key (`Return`, `Tab`, `Escape`, `F5`, …) in a session you control.
    Key {
        #[arg(value_name = "AGENT/NUMBER")]
        id: String,
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Click at a point of a session you control.
    Click {
        #[arg(value_name = "AGENT/NUMBER")]
        id: String,
        x: u16,
        y: u16,
        /// 1 left, 2 middle, 3 right.
        #[arg(long, default_value_t = 1)]
        button: u8,
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

/// Sends input to the session `id`.
async fn send(id: &str, client: &ClientArgs, events: Vec<InputEvent>) -> anyhow::Result<()> {
    let (agent, number) = parse_id(id)?;
    client
        .client()?
        .session_input(agent, number, events)
        .await
        .map_err(explain)
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
        SessionCommand::Control {
            id,
            no_pause,
            client,
        } => {
            let (agent, number) = parse_id(&id)?;
            let session = client
                .client()?
                .take_session_control(agent, number, !no_pause)
                .await
                .map_err(explain)?;
            if client.json {
                return print_json(&session);
            }
            eprintln!("You control {id}; give it back with `dirigent session release {id}`.");
            Ok(())
        }
        SessionCommand::Release { id, client } => {
            let (agent, number) = parse_id(&id)?;
            client
                .client()?
                .give_session_back(agent, number)
                .await
                .map_err(explain)?;
            eprintln!("Gave {id} back.");
            Ok(())
        }
        SessionCommand::Type { id, text, client } => {
            send(&id, &client, vec![InputEvent::Text { text }]).await
        }
        SessionCommand::Key { id, key, client } => {
            send(&id, &client, vec![InputEvent::Key { key }]).await
        }
        SessionCommand::Click {
            id,
            x,
            y,
            button,
            client,
        } => {
            let events = vec![InputEvent::Move { x, y }, InputEvent::Click { button }];
            send(&id, &client, events).await
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
                (
                    "controlled by",
                    match (&session.controlled_by, session.controlled_since) {
                        (Some(user), Some(since)) => format!("{user} since {since}"),
                        _ => "-".to_owned(),
                    },
                ),
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
