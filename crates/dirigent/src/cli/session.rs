//! `dirigent login`, `logout` and `whoami`, and the kept session: the server URL and token in
//! `credentials.toml` under the config directory, readable by the user alone.

use std::{io::BufRead, path::PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::cli::{ClientArgs, explain, print_json, print_table};

#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The username [default: asked for].
    #[arg(long, short)]
    username: Option<String>,
    /// Read the password from standard input instead of asking for it.
    #[arg(long)]
    password_stdin: bool,
}

/// The session `dirigent login` keeps for the next commands.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Kept {
    pub(crate) url: String,
    pub(crate) token: String,
    /// The CA file given at login, for an `https` server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca_file: Option<PathBuf>,
}

impl Kept {
    fn path() -> anyhow::Result<PathBuf> {
        let dir = crate::config_dir().context("no home directory: set DIRIGENT_CONFIG_DIR")?;
        Ok(dir.join("credentials.toml"))
    }

    /// The kept session, or `None` when there is none.
    pub(crate) fn load() -> anyhow::Result<Option<Kept>> {
        let path = Kept::path()?;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let kept = toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(kept))
    }

    fn save(&self) -> anyhow::Result<PathBuf> {
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        let path = Kept::path()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = toml::to_string(self).context("rendering the credentials")?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    fn forget() -> anyhow::Result<()> {
        let path = Kept::path()?;
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(err).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }
}

pub(crate) async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let client = args.client.anonymous_client()?;
    let username = match args.username {
        Some(username) => username,
        None if args.password_stdin => bail!("--password-stdin needs --username"),
        None => prompt("Username: ")?,
    };
    let password = if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        rpassword::prompt_password("Password: ")
            .context("reading the password (use --password-stdin without a terminal)")?
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    let session = client.login(&username, &password).await?;
    let path = Kept {
        url: client.base_url().to_owned(),
        token: session
            .token
            .context("the server answered the login without a session token")?,
        ca_file: args
            .client
            .ca_file()
            .map(std::path::absolute)
            .transpose()
            .context("finding the CA file")?,
    }
    .save()?;
    eprintln!(
        "Logged in to {} as {username}; the session lasts until {} (kept in {}).",
        client.base_url(),
        session.expires_at,
        path.display()
    );
    Ok(())
}

pub(crate) async fn logout(args: ClientArgs) -> anyhow::Result<()> {
    let client = args.client()?;
    let outcome = client.logout().await;
    Kept::forget()?;
    outcome.map_err(explain)?;
    eprintln!("Logged out of {}.", client.base_url());
    Ok(())
}

pub(crate) async fn whoami(args: ClientArgs) -> anyhow::Result<()> {
    let client = args.client()?;
    let me = client.me().await.map_err(explain)?;
    if args.json {
        return print_json(&me);
    }
    print_table(
        &["USER", "ROLES", "CREDENTIAL", "SERVER"],
        &[vec![
            me.username,
            me.roles.join(","),
            me.credential,
            client.base_url().to_owned(),
        ]],
    );
    Ok(())
}

fn prompt(question: &str) -> anyhow::Result<String> {
    use std::io::Write;
    eprint!("{question}");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading from standard input")?;
    let answer = line.trim().to_owned();
    if answer.is_empty() {
        bail!("no username given (use --username)");
    }
    Ok(answer)
}
