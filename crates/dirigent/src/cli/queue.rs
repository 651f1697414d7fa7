//! `dirigent queue …`: queues and their work items, usable by people and by shell robots
//! (which find `DIRIGENT_URL` and `DIRIGENT_RUN_TOKEN` in their environment).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use dirigent_proto::queue::{
    AbandonRequest, AddItems, CompleteItems, CompleteRequest, FailRequest, Item, ItemCompletion,
    ItemFilter, LeaseRequest, NewItem, PostponeRequest, Queue, QueueSpec,
};
use jiff::Timestamp;
use serde_json::value::RawValue;

use crate::cli::{ClientArgs, explain, out, print_json, print_table};

#[derive(Debug, Subcommand)]
pub(crate) enum QueueCommand {
    /// List the queues with their counts.
    Ls(ClientArgs),
    /// Show a queue's settings and figures.
    Show {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create a queue.
    Create {
        name: String,
        #[command(flatten)]
        settings: SettingFlags,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a queue's settings: the given flags change only their fields.
    Update {
        name: String,
        #[command(flatten)]
        settings: SettingFlags,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a queue and its items.
    Rm {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add an item (`--payload JSON`), or the items of a JSON file (an item or an array of
    /// items, as the API takes; `-` reads standard input).
    Add(AddArgs),
    /// Claim the next ready item (or up to `--count` items under one lease); prints it with
    /// its lease token. Exits with 4 when no item is ready.
    Claim {
        queue: String,
        /// Claim up to this many items (1 to 10,000); prints a line per item: its id and
        /// payload.
        #[arg(long, value_name = "N")]
        count: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Mark claimed items successful (several at once when they share a lease). Exits with 5
    /// when any was refused; the others are done.
    Complete {
        queue: String,
        #[arg(required = true, num_args = 1..)]
        ids: Vec<i64>,
        #[arg(long, value_name = "TOKEN")]
        lease: String,
        /// What the robot produced, as JSON.
        #[arg(long, value_name = "JSON")]
        output: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Fail a claimed item: `business` errors are final, `application` errors retry.
    Fail {
        queue: String,
        id: i64,
        #[arg(long, value_name = "TOKEN")]
        lease: String,
        #[arg(long, value_parser = ["business", "application"])]
        kind: String,
        #[arg(long, default_value = "")]
        message: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Extend the lease of a claimed item.
    Extend {
        queue: String,
        id: i64,
        #[arg(long, value_name = "TOKEN")]
        lease: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Postpone an item until a time (RFC 3339); a claimed one needs its lease token.
    Postpone {
        queue: String,
        id: i64,
        #[arg(long, value_name = "TIME")]
        until: Timestamp,
        #[arg(long, value_name = "TOKEN")]
        lease: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Give up a claimed item; it is not retried.
    Abandon {
        queue: String,
        id: i64,
        #[arg(long, value_name = "TOKEN")]
        lease: String,
        #[arg(long)]
        message: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a queue's items, filtered.
    Items(ItemsArgs),
    /// Show one item with its attempts.
    Item {
        queue: String,
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Put failed, abandoned or deleted items back to new: one (`--id`) or those matching
    /// the filters.
    Requeue(BulkArgs),
    /// Delete items no robot holds: one (`--id`) or those matching the filters.
    Delete(BulkArgs),
}

/// One flag per queue setting.
#[derive(Debug, Args)]
pub(crate) struct SettingFlags {
    #[arg(long)]
    description: Option<String>,
    /// Attempts before an application error or an expired lease is final.
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,
    /// Seconds before the first retry.
    #[arg(long, value_name = "SECONDS")]
    retry_delay: Option<u32>,
    /// Each further retry waits this many times longer.
    #[arg(long, value_name = "FACTOR")]
    retry_backoff: Option<u32>,
    /// Seconds a claim holds an item.
    #[arg(long, value_name = "SECONDS")]
    lease: Option<u32>,
    /// Refuse an item whose reference a live item has.
    #[arg(long, value_name = "BOOL")]
    unique_reference: Option<bool>,
    /// Days finished items are kept; 0 keeps them.
    #[arg(long, value_name = "DAYS")]
    retention_days: Option<u32>,
    /// The largest payload, in bytes of JSON.
    #[arg(long, value_name = "BYTES")]
    max_payload_bytes: Option<u32>,
}

impl SettingFlags {
    fn apply(self, spec: &mut QueueSpec) {
        let SettingFlags {
            description,
            max_attempts,
            retry_delay,
            retry_backoff,
            lease,
            unique_reference,
            retention_days,
            max_payload_bytes,
        } = self;
        spec.description = description.or(spec.description.take());
        spec.max_attempts = max_attempts.or(spec.max_attempts);
        spec.retry_delay_seconds = retry_delay.or(spec.retry_delay_seconds);
        spec.retry_backoff = retry_backoff.or(spec.retry_backoff);
        spec.lease_seconds = lease.or(spec.lease_seconds);
        spec.enforce_unique_reference = unique_reference.or(spec.enforce_unique_reference);
        spec.retention_days = retention_days.or(spec.retention_days);
        spec.max_payload_bytes = max_payload_bytes.or(spec.max_payload_bytes);
    }
}

#[derive(Debug, Args)]
pub(crate) struct AddArgs {
    queue: String,
    /// The item's payload, as JSON.
    #[arg(long, value_name = "JSON", conflicts_with = "file")]
    payload: Option<String>,
    /// A JSON file of an item or an array of items; `-` for standard input.
    #[arg(long, short, value_name = "FILE")]
    file: Option<PathBuf>,
    #[arg(long)]
    reference: Option<String>,
    /// high, normal or low.
    #[arg(long)]
    priority: Option<String>,
    /// RFC 3339.
    #[arg(long, value_name = "TIME")]
    deadline: Option<Timestamp>,
    /// RFC 3339: not handed out before.
    #[arg(long, value_name = "TIME")]
    postpone_until: Option<Timestamp>,
    #[command(flatten)]
    client: ClientArgs,
}

/// Filters of items.
#[derive(Debug, Args)]
pub(crate) struct FilterFlags {
    /// new, in_progress, successful, failed, abandoned or deleted.
    #[arg(long)]
    status: Option<String>,
    #[arg(long)]
    reference: Option<String>,
    /// Added at or after (RFC 3339).
    #[arg(long, value_name = "TIME")]
    from: Option<Timestamp>,
    /// Added before (RFC 3339).
    #[arg(long, value_name = "TIME")]
    to: Option<Timestamp>,
    /// A payload field and the value it must have: `customer.id=42`.
    #[arg(long, value_name = "PATH=VALUE")]
    field: Option<String>,
}

impl FilterFlags {
    fn filter(self) -> anyhow::Result<ItemFilter> {
        let (field, value) = match self.field {
            Some(pair) => match pair.split_once('=') {
                Some((path, value)) => (Some(path.to_owned()), Some(value.to_owned())),
                None => bail!("--field takes PATH=VALUE, such as customer.id=42"),
            },
            None => (None, None),
        };
        Ok(ItemFilter {
            status: self.status,
            reference: self.reference,
            created_from: self.from,
            created_to: self.to,
            field,
            value,
        })
    }

    fn is_empty(&self) -> bool {
        self.status.is_none()
            && self.reference.is_none()
            && self.from.is_none()
            && self.to.is_none()
            && self.field.is_none()
    }
}

#[derive(Debug, Args)]
pub(crate) struct ItemsArgs {
    queue: String,
    #[command(flatten)]
    filters: FilterFlags,
    /// Only items after this id (the last of the previous page).
    #[arg(long, value_name = "ID")]
    after: Option<i64>,
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct BulkArgs {
    queue: String,
    /// Just this item.
    #[arg(long, value_name = "ID")]
    id: Option<i64>,
    #[command(flatten)]
    filters: FilterFlags,
    /// Every item the operation applies to, with no filter.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) async fn run(command: QueueCommand) -> anyhow::Result<()> {
    match command {
        QueueCommand::Ls(client_args) => {
            let queues = client_args.client()?.queues().await.map_err(explain)?;
            if client_args.json {
                return print_json(&queues);
            }
            let count = |queue: &Queue, status: &str| {
                queue
                    .stats
                    .counts
                    .get(status)
                    .copied()
                    .unwrap_or_default()
                    .to_string()
            };
            let rows: Vec<Vec<String>> = queues
                .iter()
                .map(|queue| {
                    vec![
                        queue.name.clone(),
                        count(queue, "new"),
                        count(queue, "in_progress"),
                        count(queue, "successful"),
                        count(queue, "failed"),
                        count(queue, "abandoned"),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAME",
                    "NEW",
                    "IN PROGRESS",
                    "SUCCESSFUL",
                    "FAILED",
                    "ABANDONED",
                ],
                &rows,
            );
            Ok(())
        }
        QueueCommand::Show { name, client } => {
            let queue = client.client()?.queue(&name).await.map_err(explain)?;
            show_queue(&queue, client.json)
        }
        QueueCommand::Create {
            name,
            settings,
            client,
        } => {
            let mut spec = QueueSpec {
                name: Some(name),
                ..QueueSpec::default()
            };
            settings.apply(&mut spec);
            let queue = client
                .client()?
                .create_queue(&spec)
                .await
                .map_err(explain)?;
            if !client.json {
                eprintln!("Created queue {}.", queue.name);
            }
            show_queue(&queue, client.json)
        }
        QueueCommand::Update {
            name,
            settings,
            client,
        } => {
            let api = client.client()?;
            let current = api.queue(&name).await.map_err(explain)?;
            let mut spec = QueueSpec {
                name: None,
                description: Some(current.description),
                max_attempts: Some(current.max_attempts),
                retry_delay_seconds: Some(current.retry_delay_seconds),
                retry_backoff: Some(current.retry_backoff),
                lease_seconds: Some(current.lease_seconds),
                enforce_unique_reference: Some(current.enforce_unique_reference),
                retention_days: Some(current.retention_days),
                max_payload_bytes: Some(current.max_payload_bytes),
            };
            settings.apply(&mut spec);
            let queue = api.replace_queue(&name, &spec).await.map_err(explain)?;
            show_queue(&queue, client.json)
        }
        QueueCommand::Rm { name, client } => {
            client
                .client()?
                .delete_queue(&name)
                .await
                .map_err(explain)?;
            eprintln!("Deleted queue {name} and its items.");
            Ok(())
        }
        QueueCommand::Add(args) => add(args).await,
        QueueCommand::Claim {
            queue,
            count: Some(count),
            client,
        } => {
            let claims = client.client()?.claim_items(&queue, count).await;
            let Some(claims) = claims.map_err(explain)? else {
                return Err(NothingReady(queue).into());
            };
            if client.json {
                return print_json(&claims);
            }
            out!(
                "Claimed {} items until {}; lease token: {}",
                claims.items.len(),
                claims.lease_expires_at,
                claims.lease_token
            );
            for item in &claims.items {
                out!("{}\t{}", item.id, item.payload.get());
            }
            Ok(())
        }
        QueueCommand::Claim {
            queue,
            count: None,
            client,
        } => {
            let claim = client.client()?.claim(&queue).await.map_err(explain)?;
            let Some(claim) = claim else {
                return Err(NothingReady(queue).into());
            };
            if client.json {
                return print_json(&claim);
            }
            out!(
                "Claimed item {} until {}; lease token: {}",
                claim.item.id,
                claim.lease_expires_at,
                claim.lease_token
            );
            out!("{}", claim.item.payload.get());
            Ok(())
        }
        QueueCommand::Complete {
            queue,
            ids,
            lease,
            output,
            client,
        } => {
            let output = output
                .map(|output| json_value("--output", output))
                .transpose()?;
            if let [id] = ids[..] {
                let request = CompleteRequest {
                    lease_token: lease,
                    output,
                };
                let item = client.client()?.complete_item(&queue, id, &request).await;
                return print_item(item.map_err(explain)?, client.json);
            }
            let request = CompleteItems {
                items: ids
                    .into_iter()
                    .map(|id| ItemCompletion {
                        id,
                        lease_token: lease.clone(),
                        output: output.clone(),
                    })
                    .collect(),
            };
            let done = client.client()?.complete_items(&queue, &request).await;
            let done = done.map_err(explain)?;
            if client.json {
                print_json(&done)?;
            }
            let (mut completed, mut refused) = (Vec::new(), 0);
            for result in done.results {
                match result.error {
                    None => completed.push(result.id.to_string()),
                    Some(error) => {
                        refused += 1;
                        eprintln!("Item {}: {}", result.id, error.message);
                    }
                }
            }
            if !client.json && !completed.is_empty() {
                eprintln!("Completed items {}.", completed.join(", "));
            }
            if 0 < refused {
                return Err(NotAllDone(refused).into());
            }
            Ok(())
        }
        QueueCommand::Fail {
            queue,
            id,
            lease,
            kind,
            message,
            client,
        } => {
            let request = FailRequest {
                lease_token: lease,
                kind,
                message,
            };
            let item = client.client()?.fail_item(&queue, id, &request).await;
            print_item(item.map_err(explain)?, client.json)
        }
        QueueCommand::Extend {
            queue,
            id,
            lease,
            client,
        } => {
            let request = LeaseRequest { lease_token: lease };
            let item = client.client()?.extend_lease(&queue, id, &request).await;
            print_item(item.map_err(explain)?, client.json)
        }
        QueueCommand::Postpone {
            queue,
            id,
            until,
            lease,
            client,
        } => {
            let request = PostponeRequest {
                lease_token: lease,
                until,
            };
            let item = client.client()?.postpone_item(&queue, id, &request).await;
            print_item(item.map_err(explain)?, client.json)
        }
        QueueCommand::Abandon {
            queue,
            id,
            lease,
            message,
            client,
        } => {
            let request = AbandonRequest {
                lease_token: lease,
                message,
            };
            let item = client.client()?.abandon_item(&queue, id, &request).await;
            print_item(item.map_err(explain)?, client.json)
        }
        QueueCommand::Items(args) => items(args).await,
        QueueCommand::Item { queue, id, client } => {
            let item = client.client()?.item(&queue, id).await.map_err(explain)?;
            if client.json {
                return print_json(&item);
            }
            show_item(&item);
            if !item.history.is_empty() {
                out!();
                let rows: Vec<Vec<String>> = item
                    .history
                    .iter()
                    .map(|attempt| {
                        vec![
                            attempt.attempt.to_string(),
                            attempt.claimed_by.clone(),
                            attempt.started_at.to_string(),
                            attempt
                                .outcome
                                .clone()
                                .unwrap_or_else(|| "(going on)".into()),
                            attempt.error_message.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                print_table(&["ATTEMPT", "BY", "STARTED", "OUTCOME", "ERROR"], &rows);
            }
            Ok(())
        }
        QueueCommand::Requeue(args) => bulk(args, true).await,
        QueueCommand::Delete(args) => bulk(args, false).await,
    }
}

async fn add(args: AddArgs) -> anyhow::Result<()> {
    let items = match (args.payload, args.file) {
        (Some(payload), None) => AddItems::One(NewItem {
            payload: json_value("--payload", payload)?,
            reference: args.reference,
            priority: args.priority,
            deadline: args.deadline,
            postpone_until: args.postpone_until,
        }),
        (None, Some(path)) => {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?
            };
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not an item or an array of items", path.display()))?
        }
        _ => bail!("give the item's --payload JSON, or --file with items"),
    };
    let added = args
        .client
        .client()?
        .add_items(&args.queue, &items)
        .await
        .map_err(explain)?;
    if args.client.json {
        return print_json(&added);
    }
    let ids: Vec<String> = added.ids.iter().map(ToString::to_string).collect();
    out!("{}", ids.join("\n"));
    Ok(())
}

async fn items(args: ItemsArgs) -> anyhow::Result<()> {
    let filter = args.filters.filter()?;
    let mut query = vec![("limit", args.limit.to_string())];
    let pairs = [
        ("status", filter.status),
        ("reference", filter.reference),
        ("created_from", filter.created_from.map(|t| t.to_string())),
        ("created_to", filter.created_to.map(|t| t.to_string())),
        ("field", filter.field),
        ("value", filter.value),
        ("after", args.after.map(|id| id.to_string())),
    ];
    query.extend(
        pairs
            .into_iter()
            .filter_map(|(key, value)| value.map(|value| (key, value))),
    );
    let items = args
        .client
        .client()?
        .items(&args.queue, &query)
        .await
        .map_err(explain)?;
    if args.client.json {
        return print_json(&items);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            vec![
                item.id.to_string(),
                item.status.clone(),
                item.priority.clone(),
                item.reference.clone().unwrap_or_default(),
                item.attempts.to_string(),
                item.created_at.to_string(),
                item.error_message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "STATUS",
            "PRIORITY",
            "REFERENCE",
            "ATTEMPTS",
            "ADDED",
            "ERROR",
        ],
        &rows,
    );
    Ok(())
}

async fn bulk(args: BulkArgs, requeue: bool) -> anyhow::Result<()> {
    let api = args.client.client()?;
    if let Some(id) = args.id {
        if !args.filters.is_empty() || args.all {
            bail!("--id names one item: give no filter and no --all with it");
        }
        let item = match requeue {
            true => api.requeue_item(&args.queue, id).await,
            false => api.delete_item(&args.queue, id).await,
        };
        return print_item(item.map_err(explain)?, args.client.json);
    }
    if args.filters.is_empty() && !args.all {
        bail!("give --id, filters (--status, --reference, --from, --to, --field), or --all");
    }
    let filter = args.filters.filter()?;
    let done = match requeue {
        true => api.requeue_items(&args.queue, &filter).await,
        false => api.delete_items(&args.queue, &filter).await,
    }
    .map_err(explain)?;
    if args.client.json {
        return print_json(&done);
    }
    let verb = if requeue { "Requeued" } else { "Deleted" };
    eprintln!("{verb} {} items.", done.count);
    Ok(())
}

/// Some items of a bulk operation were refused, the others done: exit code 5, as for a
/// conflict.
#[derive(Debug, thiserror::Error)]
#[error("not all items were done: {0} refused")]
pub(crate) struct NotAllDone(usize);

/// No item of the queue is ready to claim: exit code 4, as for anything not found.
#[derive(Debug, thiserror::Error)]
#[error("no item is ready in queue {0}")]
pub(crate) struct NothingReady(String);

fn json_value(flag: &str, text: String) -> anyhow::Result<Box<RawValue>> {
    RawValue::from_string(text).with_context(|| format!("{flag} is not valid JSON"))
}

fn print_item(item: Item, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&item);
    }
    show_item(&item);
    Ok(())
}

fn show_item(item: &Item) {
    let optional = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
    let fields = [
        ("id", item.id.to_string()),
        ("queue", item.queue.clone()),
        ("status", item.status.clone()),
        ("priority", item.priority.clone()),
        ("reference", optional(item.reference.clone())),
        ("attempts", item.attempts.to_string()),
        ("deadline", optional(item.deadline.map(|t| t.to_string()))),
        ("available at", item.available_at.to_string()),
        (
            "lease until",
            optional(item.lease_expires_at.map(|t| t.to_string())),
        ),
        ("run", optional(item.run_id.clone())),
        (
            "error",
            optional(item.error_message.clone().map(|message| {
                format!(
                    "{}: {message}",
                    item.error_kind.as_deref().unwrap_or("error")
                )
            })),
        ),
        ("added", item.created_at.to_string()),
        ("payload", item.payload.get().to_owned()),
        (
            "output",
            optional(item.output.as_ref().map(|output| output.get().to_owned())),
        ),
    ];
    for (label, value) in fields {
        out!("{label:<14} {value}");
    }
}

fn show_queue(queue: &Queue, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(queue);
    }
    let counts: Vec<String> = queue
        .stats
        .counts
        .iter()
        .map(|(status, count)| format!("{status} {count}"))
        .collect();
    let fields = [
        ("name", queue.name.clone()),
        ("description", queue.description.clone()),
        ("max attempts", queue.max_attempts.to_string()),
        (
            "retry",
            format!(
                "after {} s, ×{} each time",
                queue.retry_delay_seconds, queue.retry_backoff
            ),
        ),
        ("lease", format!("{} s", queue.lease_seconds)),
        (
            "unique refs",
            if queue.enforce_unique_reference {
                "yes"
            } else {
                "no"
            }
            .to_owned(),
        ),
        (
            "retention",
            match queue.retention_days {
                0 => "forever".to_owned(),
                days => format!("{days} days"),
            },
        ),
        ("max payload", format!("{} bytes", queue.max_payload_bytes)),
        ("items", counts.join(", ")),
        (
            "done last hour",
            queue.stats.successful_last_hour.to_string(),
        ),
        (
            "mean time",
            queue
                .stats
                .average_processing_seconds
                .map_or_else(|| "-".to_owned(), |seconds| format!("{seconds:.3} s")),
        ),
        (
            "oldest new",
            queue
                .stats
                .oldest_new_at
                .map_or_else(|| "-".to_owned(), |t| t.to_string()),
        ),
    ];
    for (label, value) in fields {
        out!("{label:<15} {value}");
    }
    Ok(())
}
