//! `dirigent audit`: the audit log, newest first.

use clap::Args;

use crate::cli::{ClientArgs, explain, print_json, print_table};

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// Only this actor, such as `user:alice`.
    #[arg(long)]
    actor: Option<String>,
    /// Only what concerns this resource, such as `robot:hr-b`, `run:run_4f0c…`, `user:alice`.
    #[arg(long)]
    resource: Option<String>,
    /// Only denials.
    #[arg(long, conflicts_with = "outcome")]
    denied: bool,
    /// Only `allowed`, `denied` or `failed`.
    #[arg(long)]
    outcome: Option<String>,
    #[arg(long, default_value_t = 50)]
    limit: u32,
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let outcome = if args.denied {
        Some("denied".to_owned())
    } else {
        args.outcome
    };
    let entries = args
        .client
        .client()?
        .audit(
            args.actor.as_deref(),
            args.resource.as_deref(),
            outcome.as_deref(),
            args.limit,
        )
        .await
        .map_err(explain)?;
    if args.client.json {
        return print_json(&entries);
    }
    let rows: Vec<Vec<String>> = entries
        .into_iter()
        .map(|entry| {
            vec![
                entry.at.to_string(),
                entry.actor,
                format!("{} {}", entry.outcome, entry.status),
                entry.action,
                entry.resources.join(" "),
                entry.address,
                entry
                    .changes
                    .map(|changes| changes.to_string())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "AT", "ACTOR", "OUTCOME", "ACTION", "ABOUT", "ADDRESS", "CHANGES",
        ],
        &rows,
    );
    Ok(())
}
