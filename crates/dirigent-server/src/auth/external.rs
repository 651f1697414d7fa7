//! The extension point for passwords checked outside Dirigent — PAM, LDAP, a single sign-on
//! bridge: a program the operator names in the settings (`login_command`).
//!
//! When a user's local password does not match, the program runs with the username in
//! `DIRIGENT_USERNAME` and the password on standard input (no newline after it); exit status 0
//! accepts the login. It runs from argv (no shell), with an empty environment but `PATH`, its
//! output discarded and a time limit. The user must exist in Dirigent and be enabled: roles
//! stay Dirigent's, only the password check moves out.

use std::{process::Stdio, time::Duration};

use dirigent_store::{Store, StoreError, UserId};
use tokio::io::AsyncWriteExt;

use crate::error::ApiError;

/// The program that checks passwords, and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginCommand {
    /// The program and its arguments.
    pub argv: Vec<String>,
    pub timeout: Duration,
}

impl LoginCommand {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
}

/// The id of the enabled user `username` if `command` accepts `password` for them.
pub async fn check(
    store: &Store,
    command: &LoginCommand,
    username: &str,
    password: &str,
) -> Result<Option<UserId>, ApiError> {
    let record = match store.login_record(username).await {
        Ok(record) if !record.disabled => record,
        Ok(_) | Err(StoreError::NotFound) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    Ok(accepts(command, username, password)
        .await
        .then_some(record.user_id))
}

async fn accepts(command: &LoginCommand, username: &str, password: &str) -> bool {
    let Some((program, args)) = command.argv.split_first() else {
        return false;
    };
    #[allow(
        clippy::disallowed_methods,
        reason = "the operator's login program, not a robot"
    )]
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("DIRIGENT_USERNAME", username)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            tracing::error!(program, %err, "cannot run the login command");
            return false;
        }
    };
    let outcome = tokio::time::timeout(command.timeout, async {
        if let Some(mut stdin) = child.stdin.take() {
            // A program that exits without reading its input is answered by its status.
            let _ = stdin.write_all(password.as_bytes()).await;
        }
        child.wait().await
    })
    .await;
    match outcome {
        Ok(Ok(status)) => status.success(),
        Ok(Err(err)) => {
            tracing::error!(program, %err, "waiting for the login command");
            false
        }
        Err(_) => {
            tracing::warn!(program, timeout = ?command.timeout, "the login command took too long; refused");
            false
        }
    }
}
