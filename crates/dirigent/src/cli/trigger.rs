//! `dirigent trigger …` and `dirigent calendar …`: what starts robots and when, from flags or
//! a JSON file of the API's shape.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use dirigent_proto::trigger::{CalendarSpec, Trigger, TriggerSpec};
use jiff::Timestamp;

use crate::cli::{ClientArgs, explain, out, print_json, print_table};

#[derive(Debug, Subcommand)]
pub(crate) enum TriggerCommand {
    /// List the triggers, with their next firing.
    Ls {
        /// Only those of this robot.
        #[arg(long)]
        robot: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a trigger.
    Show {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create a trigger for a robot: `--cron`, `--every`, `--at`, `--weekly` with `--times`,
    /// `--window` with `--open` and `--close`, `--queue` (with `--min-items`, `--max-runs`),
    /// or a JSON file of the API's shape.
    Create {
        /// The robot it starts [default: the file's `robot`].
        robot: Option<String>,
        #[command(flatten)]
        fields: Box<TriggerFlags>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a trigger: the given flags change only their fields.
    Update {
        id: String,
        #[command(flatten)]
        fields: Box<TriggerFlags>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a trigger.
    Rm {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Enable a trigger: it fires from its next time on.
    Enable {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Disable a trigger.
    Disable {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The next firings, with their local times.
    Preview {
        id: String,
        /// From this time (RFC 3339) [default: now].
        #[arg(long, value_name = "TIME")]
        from: Option<Timestamp>,
        #[arg(long, default_value_t = 10)]
        count: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// What became of the last firings: started, skipped or missed, and why.
    Firings {
        id: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// One flag per field of a trigger; each given flag overrides that field.
#[derive(Debug, Args)]
pub(crate) struct TriggerFlags {
    /// A JSON file with the whole definition; flags override its fields.
    #[arg(long, short, value_name = "FILE")]
    file: Option<PathBuf>,
    /// A cron expression: 5 fields, or 6 with seconds first.
    #[arg(long, value_name = "EXPR", conflicts_with_all = ["every", "at", "weekly"])]
    cron: Option<String>,
    /// Every this many seconds.
    #[arg(long, value_name = "SECONDS", conflicts_with_all = ["at", "weekly"])]
    every: Option<u64>,
    /// Once, at this time (RFC 3339).
    #[arg(long, value_name = "TIME", conflicts_with = "weekly")]
    at: Option<Timestamp>,
    /// These days of the week: `mon,wed,fri`; with `--times`.
    #[arg(long, value_name = "DAYS")]
    weekly: Option<String>,
    /// Local times `08:00,16:30`, for `--weekly`.
    #[arg(long, value_name = "TIMES")]
    times: Option<String>,
    /// Keep the robot running on these days (`mon,tue`) between `--open` and `--close`.
    #[arg(long, value_name = "DAYS", conflicts_with_all = ["cron", "every", "at", "weekly"])]
    window: Option<String>,
    /// Start runs while this queue holds items ready to claim.
    #[arg(long, value_name = "QUEUE", conflicts_with_all = ["cron", "every", "at", "weekly", "window"])]
    queue: Option<String>,
    /// For `--queue`: ready items per run [default: 1].
    #[arg(long, value_name = "N")]
    min_items: Option<u32>,
    /// For `--queue`: runs active at once, at most [default: 1].
    #[arg(long, value_name = "N")]
    max_runs: Option<u32>,
    /// When the window opens, `HH:MM`.
    #[arg(long, value_name = "TIME")]
    open: Option<String>,
    /// When the window closes, `HH:MM`.
    #[arg(long, value_name = "TIME")]
    close: Option<String>,
    /// An IANA time zone such as Europe/Berlin [default: the server's].
    #[arg(long, value_name = "ZONE")]
    time_zone: Option<String>,
    /// Follow this calendar.
    #[arg(long, value_name = "NAME")]
    calendar: Option<String>,
    /// On a calendar's off day: skip or next_working_day.
    #[arg(long, value_name = "WHAT")]
    off_day: Option<String>,
    /// While a run is active: skip, queue_one, allow or replace.
    #[arg(long, value_name = "POLICY")]
    overlap: Option<String>,
    /// Firings missed during downtime: skip, run_once or run_all.
    #[arg(long, value_name = "POLICY")]
    missed: Option<String>,
    /// How far back run_all catches up.
    #[arg(long, value_name = "SECONDS")]
    catch_up: Option<u32>,
    /// A random delay of up to this many seconds before each firing.
    #[arg(long, value_name = "SECONDS")]
    jitter: Option<u32>,
    /// Disable the trigger after this many failed runs in a row.
    #[arg(long, value_name = "N")]
    max_failures: Option<u32>,
    /// An argument appended to the robot's command for the runs it starts (repeatable).
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    args: Vec<String>,
    /// An environment variable for the runs it starts (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Record the firings without starting runs (`--dry-run=false` to start them again).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    dry_run: Option<bool>,
    #[arg(long)]
    description: Option<String>,
    /// Create it disabled.
    #[arg(long)]
    disabled: bool,
}

impl TriggerFlags {
    fn apply(self, spec: &mut TriggerSpec) -> anyhow::Result<()> {
        let list = |text: &str| text.split(',').map(|part| part.trim().to_owned()).collect();
        if let Some(cron) = self.cron {
            spec.kind = "cron".to_owned();
            spec.cron = Some(cron);
        }
        if let Some(every) = self.every {
            spec.kind = "interval".to_owned();
            spec.every_seconds = Some(every);
        }
        if let Some(at) = self.at {
            spec.kind = "once".to_owned();
            spec.at = Some(at);
        }
        if let Some(days) = self.weekly {
            spec.kind = "weekly".to_owned();
            spec.days = Some(list(&days));
        }
        if let Some(times) = self.times {
            spec.times = Some(list(&times));
        }
        if let Some(days) = self.window {
            spec.kind = "window".to_owned();
            spec.days = Some(list(&days));
        }
        if let Some(queue) = self.queue {
            spec.kind = "queue".to_owned();
            spec.queue = Some(queue);
        }
        if !self.args.is_empty() {
            spec.args = Some(self.args);
        }
        if !self.env.is_empty() {
            spec.env
                .get_or_insert_default()
                .extend(crate::cli::parse_env(&self.env)?);
        }
        let fields = [
            (&mut spec.time_zone, self.time_zone),
            (&mut spec.calendar, self.calendar),
            (&mut spec.off_day, self.off_day),
            (&mut spec.overlap, self.overlap),
            (&mut spec.missed, self.missed),
            (&mut spec.description, self.description),
            (&mut spec.open, self.open),
            (&mut spec.close, self.close),
        ];
        for (field, value) in fields {
            if value.is_some() {
                *field = value;
            }
        }
        spec.catch_up_seconds = self.catch_up.or(spec.catch_up_seconds);
        spec.jitter_seconds = self.jitter.or(spec.jitter_seconds);
        spec.min_items = self.min_items.or(spec.min_items);
        spec.max_runs = self.max_runs.or(spec.max_runs);
        spec.max_consecutive_failures = self.max_failures.or(spec.max_consecutive_failures);
        spec.dry_run = self.dry_run.or(spec.dry_run);
        if self.disabled {
            spec.enabled = Some(false);
        }
        if spec.kind.is_empty() {
            bail!(
                "say when it fires: --cron, --every, --at, --weekly, --window or --queue \
                 (or --file)"
            );
        }
        Ok(())
    }

    fn spec_from_file(&self) -> anyhow::Result<Option<TriggerSpec>> {
        let Some(path) = &self.file else {
            return Ok(None);
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let spec = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a trigger definition", path.display()))?;
        Ok(Some(spec))
    }
}

pub(crate) async fn run(command: TriggerCommand) -> anyhow::Result<()> {
    match command {
        TriggerCommand::Ls { robot, client } => {
            let triggers = client
                .client()?
                .triggers(robot.as_deref())
                .await
                .map_err(explain)?;
            if client.json {
                return print_json(&triggers);
            }
            let rows: Vec<Vec<String>> = triggers
                .iter()
                .map(|trigger| {
                    vec![
                        trigger.id.clone(),
                        trigger.spec.robot.clone(),
                        describe(trigger),
                        if trigger.enabled { "yes" } else { "no" }.to_owned(),
                        trigger
                            .next_fire_at
                            .map_or_else(|| "-".to_owned(), |at| at.to_string()),
                    ]
                })
                .collect();
            print_table(&["ID", "ROBOT", "WHEN", "ENABLED", "NEXT"], &rows);
            Ok(())
        }
        TriggerCommand::Show { id, client } => {
            let trigger = client.client()?.trigger(&id).await.map_err(explain)?;
            show(&trigger, client.json)
        }
        TriggerCommand::Create {
            robot,
            fields,
            client,
        } => {
            let mut spec = fields.spec_from_file()?.unwrap_or_default();
            if let Some(robot) = robot {
                spec.robot = robot;
            }
            if spec.robot.is_empty() {
                bail!("name the robot: dirigent trigger create ROBOT …");
            }
            fields.apply(&mut spec)?;
            let trigger = client
                .client()?
                .create_trigger(&spec)
                .await
                .map_err(explain)?;
            if !client.json {
                eprintln!("Created trigger {}.", trigger.id);
            }
            show(&trigger, client.json)
        }
        TriggerCommand::Update { id, fields, client } => {
            let api = client.client()?;
            let mut spec = match fields.spec_from_file()? {
                Some(spec) => spec,
                None => api.trigger(&id).await.map_err(explain)?.spec,
            };
            fields.apply(&mut spec)?;
            let trigger = api.replace_trigger(&id, &spec).await.map_err(explain)?;
            show(&trigger, client.json)
        }
        TriggerCommand::Rm { id, client } => {
            client
                .client()?
                .delete_trigger(&id)
                .await
                .map_err(explain)?;
            eprintln!("Deleted trigger {id}.");
            Ok(())
        }
        TriggerCommand::Enable { id, client } => set_enabled(&id, &client, true).await,
        TriggerCommand::Disable { id, client } => set_enabled(&id, &client, false).await,
        TriggerCommand::Preview {
            id,
            from,
            count,
            client,
        } => {
            let times = client
                .client()?
                .preview_trigger(&id, from, count)
                .await
                .map_err(explain)?;
            if client.json {
                return print_json(&times);
            }
            let rows: Vec<Vec<String>> = times
                .iter()
                .map(|time| vec![time.at.to_string(), time.local.clone(), time.offset.clone()])
                .collect();
            print_table(&["AT (UTC)", "LOCAL", "OFFSET"], &rows);
            Ok(())
        }
        TriggerCommand::Firings { id, limit, client } => {
            let firings = client
                .client()?
                .trigger_firings(&id, limit)
                .await
                .map_err(explain)?;
            if client.json {
                return print_json(&firings);
            }
            let rows: Vec<Vec<String>> = firings
                .iter()
                .map(|firing| {
                    vec![
                        firing.due_at.to_string(),
                        firing.outcome.clone(),
                        firing.run_id.clone().unwrap_or_default(),
                        firing.reason.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(&["DUE", "OUTCOME", "RUN", "REASON"], &rows);
            Ok(())
        }
    }
}

async fn set_enabled(id: &str, client: &ClientArgs, enabled: bool) -> anyhow::Result<()> {
    let trigger = client
        .client()?
        .set_trigger_enabled(id, enabled)
        .await
        .map_err(explain)?;
    show(&trigger, client.json)
}

fn describe(trigger: &Trigger) -> String {
    let spec = &trigger.spec;
    let zone = spec
        .time_zone
        .as_deref()
        .map(|zone| format!(" ({zone})"))
        .unwrap_or_default();
    match spec.kind.as_str() {
        "cron" => format!("cron {}{zone}", spec.cron.as_deref().unwrap_or_default()),
        "interval" => format!("every {} s", spec.every_seconds.unwrap_or_default()),
        "once" => format!(
            "once at {}",
            spec.at.map(|at| at.to_string()).unwrap_or_default()
        ),
        "weekly" => format!(
            "{} at {}{zone}",
            spec.days.clone().unwrap_or_default().join(","),
            spec.times.clone().unwrap_or_default().join(",")
        ),
        "window" => format!(
            "{} {}–{}{zone}",
            spec.days.clone().unwrap_or_default().join(","),
            spec.open.as_deref().unwrap_or_default(),
            spec.close.as_deref().unwrap_or_default()
        ),
        "queue" => format!(
            "{} per {} ready items of queue {}, at most {} at once",
            if spec.dry_run == Some(true) {
                "a dry run"
            } else {
                "a run"
            },
            spec.min_items.unwrap_or(1),
            spec.queue.as_deref().unwrap_or_default(),
            spec.max_runs.unwrap_or(1)
        ),
        other => other.to_owned(),
    }
}

fn show(trigger: &Trigger, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(trigger);
    }
    let spec = &trigger.spec;
    let optional = |value: Option<&str>| value.unwrap_or("-").to_owned();
    let fields = [
        ("id", trigger.id.clone()),
        ("robot", spec.robot.clone()),
        ("when", describe(trigger)),
        (
            "enabled",
            if trigger.enabled { "yes" } else { "no" }.to_owned(),
        ),
        (
            "next",
            trigger
                .next_fire_at
                .map_or_else(|| "-".to_owned(), |at| at.to_string()),
        ),
        ("calendar", optional(spec.calendar.as_deref())),
        (
            "overlap",
            optional(spec.overlap.as_deref().or(Some("skip"))),
        ),
        (
            "missed",
            optional(spec.missed.as_deref().or(Some("run_once"))),
        ),
        ("args", spec.args.clone().unwrap_or_default().join(" ")),
        (
            "env",
            spec.env
                .iter()
                .flatten()
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        (
            "dry run",
            if spec.dry_run == Some(true) {
                "yes"
            } else {
                "no"
            }
            .to_owned(),
        ),
        (
            "failures",
            match spec.max_consecutive_failures {
                Some(limit) => format!(
                    "{} in a row (disabled at {limit})",
                    trigger.consecutive_failures
                ),
                None => format!("{} in a row", trigger.consecutive_failures),
            },
        ),
        ("disabled why", optional(trigger.disabled_reason.as_deref())),
    ];
    for (label, value) in fields {
        out!("{label:<13} {value}");
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub(crate) enum CalendarCommand {
    /// List the calendars.
    Ls(ClientArgs),
    /// Show a calendar with its excluded dates.
    Show {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create a calendar.
    Create {
        name: String,
        #[command(flatten)]
        fields: CalendarFlags,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a calendar: working days, or more excluded dates.
    Update {
        name: String,
        #[command(flatten)]
        fields: CalendarFlags,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a calendar no trigger follows.
    Rm {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
pub(crate) struct CalendarFlags {
    /// Working days: `mon,tue,wed,thu,fri`.
    #[arg(long, value_name = "DAYS")]
    working_days: Option<String>,
    /// Excluded dates from a CSV or iCalendar file (added to those there are).
    #[arg(long, value_name = "FILE")]
    import: Option<PathBuf>,
    #[arg(long)]
    description: Option<String>,
}

impl CalendarFlags {
    fn apply(self, spec: &mut CalendarSpec) -> anyhow::Result<()> {
        if let Some(days) = self.working_days {
            spec.working_days = Some(days.split(',').map(|day| day.trim().to_owned()).collect());
        }
        if let Some(path) = self.import {
            spec.import = Some(
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
            );
        }
        if self.description.is_some() {
            spec.description = self.description;
        }
        Ok(())
    }
}

pub(crate) async fn run_calendar(command: CalendarCommand) -> anyhow::Result<()> {
    match command {
        CalendarCommand::Ls(client) => {
            let calendars = client.client()?.calendars().await.map_err(explain)?;
            if client.json {
                return print_json(&calendars);
            }
            let rows: Vec<Vec<String>> = calendars
                .iter()
                .map(|calendar| {
                    vec![
                        calendar.name.clone(),
                        calendar.working_days.join(","),
                        calendar.excluded_dates.len().to_string(),
                    ]
                })
                .collect();
            print_table(&["NAME", "WORKING DAYS", "EXCLUDED DATES"], &rows);
            Ok(())
        }
        CalendarCommand::Show { name, client } => {
            let calendar = client.client()?.calendar(&name).await.map_err(explain)?;
            print_json(&calendar)
        }
        CalendarCommand::Create {
            name,
            fields,
            client,
        } => {
            let mut spec = CalendarSpec {
                name: Some(name),
                ..CalendarSpec::default()
            };
            fields.apply(&mut spec)?;
            let calendar = client
                .client()?
                .create_calendar(&spec)
                .await
                .map_err(explain)?;
            eprintln!(
                "Created calendar {} ({} excluded dates).",
                calendar.name,
                calendar.excluded_dates.len()
            );
            Ok(())
        }
        CalendarCommand::Update {
            name,
            fields,
            client,
        } => {
            let api = client.client()?;
            let current = api.calendar(&name).await.map_err(explain)?;
            let mut spec = CalendarSpec {
                name: Some(name.clone()),
                description: Some(current.description),
                working_days: Some(current.working_days),
                excluded_dates: Some(current.excluded_dates),
                import: None,
            };
            fields.apply(&mut spec)?;
            let calendar = api.replace_calendar(&name, &spec).await.map_err(explain)?;
            eprintln!(
                "Updated calendar {} ({} excluded dates).",
                calendar.name,
                calendar.excluded_dates.len()
            );
            Ok(())
        }
        CalendarCommand::Rm { name, client } => {
            client
                .client()?
                .delete_calendar(&name)
                .await
                .map_err(explain)?;
            eprintln!("Deleted calendar {name}.");
            Ok(())
        }
    }
}
