//! The CLI verbs: each builds a [`Client`] from flags, environment and the kept session,
//! calls the API and prints a table for people or, with `--json`, JSON for scripts.
//!
//! Exit codes: 0 done, 1 failed, 2 bad usage, 3 not logged in or not allowed, 4 not found,
//! 5 conflict (exists already), 6 invalid input, 7 server unreachable.

pub(crate) mod activity;
pub(crate) mod audit;
pub(crate) mod graphical;
pub(crate) mod logs;
pub(crate) mod node;
pub(crate) mod queue;
pub(crate) mod retention;
pub(crate) mod robot;
pub(crate) mod run;
pub(crate) mod session;
pub(crate) mod token;
pub(crate) mod trigger;
pub(crate) mod user;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use dirigent_client::{Client, ClientError, Trust};
use serde::Serialize;

/// Where the server is and who is calling; shared by every client verb.
#[derive(Debug, Clone, Args)]
pub(crate) struct ClientArgs {
    /// Server URL [default: the one logged in to, else http://127.0.0.1:8420].
    #[arg(long, env = "DIRIGENT_URL", global = true)]
    url: Option<String>,
    /// A session or API token [default: a robot's DIRIGENT_RUN_TOKEN, else the one kept by
    /// `dirigent login`].
    #[arg(long, env = "DIRIGENT_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// A PEM file of CA certificates to trust besides the system's, for an `https` server
    /// [default: the one given at `dirigent login`].
    #[arg(long, env = "DIRIGENT_CA_FILE", global = true, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

pub(crate) const DEFAULT_URL: &str = "http://127.0.0.1:8420";

impl ClientArgs {
    /// The server URL to use: the flag or environment, else the kept session's, else the
    /// default.
    pub(crate) fn url(&self) -> String {
        self.url
            .clone()
            .or_else(|| session::Kept::load().ok().flatten().map(|kept| kept.url))
            .unwrap_or_else(|| DEFAULT_URL.to_owned())
    }

    /// A client with the token from the flag or environment, else the kept session's token
    /// for this URL.
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        let url = self.url();
        let kept = session::Kept::load()?.filter(|kept| kept.url == url);
        // Inside a robot, its run token.
        let run_token = std::env::var("DIRIGENT_RUN_TOKEN").ok();
        let token = self
            .token
            .clone()
            .or(run_token)
            .or_else(|| kept.as_ref().map(|kept| kept.token.clone()));
        let ca_file = self
            .ca_file
            .clone()
            .or_else(|| kept.and_then(|kept| kept.ca_file));
        Ok(Client::with_trust(&url, token, &trust(ca_file))?)
    }

    /// A client without credentials, trusting what the flags say.
    pub(crate) fn anonymous_client(&self) -> anyhow::Result<Client> {
        Ok(Client::with_trust(
            &self.url(),
            None,
            &trust(self.ca_file.clone()),
        )?)
    }

    pub(crate) fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }
}

/// The system's trusted certificates, and those of `ca_file` if given.
pub(crate) fn trust(ca_file: Option<PathBuf>) -> Trust {
    ca_file.map_or(Trust::System, Trust::ExtraCa)
}

/// The exit code for an error: see the module documentation.
pub(crate) fn exit_code(err: &anyhow::Error) -> u8 {
    if let Some(activity::Exit(code)) = err.downcast_ref::<activity::Exit>() {
        return *code;
    }
    if err.is::<queue::NothingReady>() {
        return 4;
    }
    if err.is::<queue::NotAllDone>() {
        return 5;
    }
    match err.downcast_ref::<ClientError>() {
        Some(ClientError::Api { status, .. }) => match status.as_u16() {
            401 | 403 => 3,
            404 => 4,
            409 => 5,
            400 | 413 | 415 | 422 => 6,
            _ => 1,
        },
        Some(ClientError::Unreachable { .. }) => 7,
        Some(ClientError::InvalidUrl { .. }) => 6,
        _ => 1,
    }
}

/// Adds what a person needs to know to an API error: how to log in.
pub(crate) fn explain(err: ClientError) -> anyhow::Error {
    match err {
        ClientError::Api { status, mut body } if status.as_u16() == 401 => {
            body.message = format!(
                "{} (log in with `dirigent login`, or set DIRIGENT_TOKEN)",
                body.message
            );
            anyhow::Error::new(ClientError::Api { status, body })
        }
        err => anyhow::Error::new(err),
    }
}

/// Prints a line on standard output, like `println!`, except that a reader gone away (`| head`)
/// ends the program quietly and successfully, as Unix tools do, instead of a panic.
macro_rules! out {
    () => {
        $crate::cli::print_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::print_line(format_args!($($arg)*))
    };
}
pub(crate) use out;

pub(crate) fn print_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = writeln!(stdout, "{line}").and_then(|()| stdout.flush())
        && err.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// `--env KEY=VALUE` flags as a map.
pub(crate) fn parse_env(
    pairs: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
            None => Err(anyhow::format_err!("--env takes KEY=VALUE, not {pair:?}")),
        })
        .collect()
}

pub(crate) fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("rendering JSON")?;
    out!("{text}");
    Ok(())
}

/// Prints rows under a header, each column as wide as its widest cell.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let render = |cells: &mut dyn Iterator<Item = &str>| {
        let line: Vec<String> = cells
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out!("{}", line.join("  ").trim_end());
    };
    render(&mut header.iter().copied());
    for row in rows {
        render(&mut row.iter().map(String::as_str));
    }
}
