//! `dirigent token ls | create | revoke`: your API tokens for scripts and robots.

use clap::Subcommand;
use dirigent_proto::auth::CreateTokenRequest;
use jiff::{SignedDuration, Timestamp};

use crate::cli::{ClientArgs, explain, out, print_json, print_table};

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// List your live API tokens.
    Ls(ClientArgs),
    /// Create an API token; its secret is printed once, on standard output.
    Create {
        /// A name to tell it by.
        name: String,
        /// Lifetime, such as `30d`, `12h` or `90m`; no expiry when absent.
        #[arg(long, value_name = "DURATION", value_parser = parse_lifetime)]
        expires_in: Option<SignedDuration>,
        /// Limit the token to this of your permissions (repeatable): RESOURCE:ACTIONS[:PATTERN].
        #[arg(long = "permission", value_name = "RESOURCE:ACTIONS[:PATTERN]")]
        permissions: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke one of your API tokens at once.
    Revoke {
        /// The token's id, as listed.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub(crate) async fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Ls(client_args) => {
            let tokens = client_args.client()?.tokens().await.map_err(explain)?;
            if client_args.json {
                return print_json(&tokens);
            }
            let when = |time: Option<Timestamp>, none: &str| {
                time.map_or_else(|| none.to_owned(), |t| t.to_string())
            };
            let rows: Vec<Vec<String>> = tokens
                .into_iter()
                .map(|token| {
                    vec![
                        token.id,
                        token.name,
                        token.created_at.to_string(),
                        when(token.expires_at, "never"),
                        when(token.last_used_at, "never"),
                    ]
                })
                .collect();
            print_table(&["ID", "NAME", "CREATED", "EXPIRES", "LAST USED"], &rows);
            Ok(())
        }
        TokenCommand::Create {
            name,
            expires_in,
            permissions,
            client,
        } => {
            let permissions = if permissions.is_empty() {
                None
            } else {
                let parsed: anyhow::Result<Vec<_>> = permissions
                    .iter()
                    .map(|text| crate::cli::user::parse_permission(text))
                    .collect();
                Some(parsed?)
            };
            #[allow(
                clippy::disallowed_methods,
                reason = "a deadline relative to the wall clock the user reads"
            )]
            let now = Timestamp::now();
            let expires_at = expires_in
                .map(|lifetime| now.saturating_add(lifetime))
                .transpose()?;
            let created = client
                .client()?
                .create_token(&CreateTokenRequest {
                    name,
                    expires_at,
                    permissions,
                })
                .await
                .map_err(explain)?;
            if client.json {
                return print_json(&created);
            }
            eprintln!(
                "Created token {} ({}); it is shown only now:",
                created.id, created.name
            );
            out!("{}", created.token);
            Ok(())
        }
        TokenCommand::Revoke { id, client } => {
            client.client()?.revoke_token(&id).await.map_err(explain)?;
            eprintln!("Revoked token {id}.");
            Ok(())
        }
    }
}

fn parse_lifetime(text: &str) -> Result<SignedDuration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30d, 12h or 90m"))?;
    let seconds = match unit {
        "d" => 86_400,
        "h" => 3600,
        "m" => 60,
        "s" => 1,
        _ => return Err(format!("{text:?}: the unit must be d, h, m or s")),
    };
    if number <= 0 || 3650 * 86_400 < number.saturating_mul(seconds) {
        return Err(format!("{text:?}: must be positive and at most ten years"));
    }
    Ok(SignedDuration::from_secs(number * seconds))
}
