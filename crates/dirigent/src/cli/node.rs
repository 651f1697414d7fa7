//! `dirigent node ls`: the orchestrator nodes sharing the server's database.

use clap::Subcommand;

use crate::cli::{ClientArgs, explain, print_json, print_table};

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// List the nodes: alive or silent, which one leads, how many agents each holds.
    Ls(ClientArgs),
}

pub(crate) async fn run(command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Ls(client) => {
            let nodes = client.client()?.nodes().await.map_err(explain)?;
            if client.json {
                return print_json(&nodes);
            }
            let rows: Vec<Vec<String>> = nodes
                .into_iter()
                .map(|node| {
                    vec![
                        node.id,
                        format!("{:?}", node.state).to_lowercase(),
                        if node.leading { "yes" } else { "" }.to_owned(),
                        node.agents.to_string(),
                        node.version,
                        node.heartbeat_at.to_string(),
                    ]
                })
                .collect();
            print_table(
                &["ID", "STATE", "LEADING", "AGENTS", "VERSION", "HEARTBEAT"],
                &rows,
            );
            Ok(())
        }
    }
}
