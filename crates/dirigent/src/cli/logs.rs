//! `dirigent logs [QUERY…]`: search the log store (robots' output and records, agents' and
//! the orchestrator's own, activities' output), export a query as NDJSON, or follow it live.

use clap::Args;
use dirigent_client::LogFilter;
use dirigent_proto::log::{LogLevel, LogRecord, LogSource};
use jiff::{SignedDuration, Timestamp};

use crate::cli::{ClientArgs, explain, out, print_json};

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// What to find: words (all must occur), "a phrase", prefix*, a OR b, -word.
    query: Vec<String>,
    /// Only these sources, comma-separated: robot, agent, server, activity.
    #[arg(long)]
    source: Option<String>,
    /// Only this level and above: trace, debug, info, warn, error.
    #[arg(long)]
    level: Option<String>,
    #[arg(long)]
    robot: Option<String>,
    #[arg(long)]
    run: Option<String>,
    #[arg(long)]
    activity: Option<String>,
    #[arg(long)]
    agent: Option<String>,
    /// From this time: RFC 3339, or a time ago such as 15m, 2h, 3d.
    #[arg(long, value_parser = parse_time)]
    since: Option<Timestamp>,
    /// Before this time: RFC 3339, or a time ago such as 15m, 2h, 3d.
    #[arg(long, value_parser = parse_time)]
    until: Option<Timestamp>,
    /// Oldest first (newest first by default).
    #[arg(long, conflicts_with = "follow")]
    oldest: bool,
    /// How many records (with --follow: how many of the latest come first).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Keep printing new records as they are stored.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Print every record the query matches as NDJSON, one JSON record a line.
    #[arg(long, conflicts_with = "json")]
    ndjson: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// A time given on the command line: RFC 3339, or an amount of time ago.
fn parse_time(text: &str) -> Result<Timestamp, String> {
    if let Ok(at) = text.parse::<Timestamp>() {
        return Ok(at);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} is neither RFC 3339 nor a time ago such as 15m"))?;
    let (amount, unit) = text.split_at(split);
    let amount: i64 = amount
        .parse()
        .map_err(|_| format!("{text:?} is neither RFC 3339 nor a time ago such as 15m"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{unit:?} is not a unit: use s, m, h or d")),
    };
    #[allow(
        clippy::disallowed_methods,
        reason = "a time ago is counted from the moment the command is given"
    )]
    let now = Timestamp::now();
    now.checked_sub(SignedDuration::from_secs(amount.saturating_mul(seconds)))
        .map_err(|err| format!("{text:?}: {err}"))
}

pub(crate) async fn run(args: LogsArgs) -> anyhow::Result<()> {
    let api = args.client.client()?;
    let query = args.query.join(" ");
    let filter = LogFilter {
        q: (!query.trim().is_empty()).then_some(query),
        source: args.source.clone(),
        level: args.level.clone(),
        robot: args.robot.clone(),
        run: args.run.clone(),
        activity: args.activity.clone(),
        agent: args.agent.clone(),
        since: args.since.map(|at| at.to_string()),
        until: args.until.map(|at| at.to_string()),
        cursor: None,
        order: args.oldest.then(|| "oldest".to_owned()),
        limit: Some(args.limit),
    };
    if args.follow {
        let json = args.client.json || args.ndjson;
        return api
            .follow_log_records(&filter, |record| print_record(&record, json))
            .await
            .map_err(explain);
    }
    if args.ndjson {
        let filter = LogFilter {
            limit: None,
            ..filter
        };
        return api
            .export_logs(&filter, |line| out!("{line}"))
            .await
            .map_err(explain);
    }
    let page = api.logs(&filter).await.map_err(explain)?;
    if args.client.json {
        return print_json(&page);
    }
    // Newest first is how they are found; the terminal reads top to bottom.
    let records: Box<dyn Iterator<Item = &LogRecord>> = match args.oldest {
        true => Box::new(page.records.iter()),
        false => Box::new(page.records.iter().rev()),
    };
    for record in records {
        print_record(record, false);
    }
    if page.next_cursor.is_some() {
        eprintln!(
            "(the {} shown; more match: narrow the search, or --ndjson for all)",
            page.records.len()
        );
    }
    Ok(())
}

/// Prints one record: as a JSON line, or as `time level where: text fields`.
fn print_record(record: &LogRecord, json: bool) {
    if json {
        if let Ok(line) = serde_json::to_string(record) {
            out!("{line}");
        }
        return;
    }
    let level = match record.level {
        LogLevel::Trace => "TRACE",
        LogLevel::Debug => "DEBUG",
        LogLevel::Info => "INFO ",
        LogLevel::Warn => "WARN ",
        LogLevel::Error => "ERROR",
    };
    let place = match record.source {
        LogSource::Robot => format!(
            "{} {}",
            record.robot.as_deref().unwrap_or("?"),
            record.run_id.as_deref().unwrap_or("")
        ),
        LogSource::Agent => format!("agent {}", record.agent.as_deref().unwrap_or("?")),
        LogSource::Server => format!("server {}", record.node.as_deref().unwrap_or("")),
        LogSource::Activity => format!("activity {}", record.activity_id.as_deref().unwrap_or("")),
    };
    let fields = record
        .fields
        .iter()
        .flatten()
        .map(|(key, value)| match value {
            serde_json::Value::String(text) => format!(" {key}={text}"),
            other => format!(" {key}={other}"),
        })
        .collect::<String>();
    out!("{} {level} {place}: {}{fields}", record.at, record.text);
}
