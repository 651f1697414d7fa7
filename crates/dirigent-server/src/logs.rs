//! The ways into the log store: a robot's output lines read as records (a line that is a JSON
//! object with a level is a structured record), agents' and this node's own records, and the
//! conversion of records to the wire.

use std::{sync::Arc, time::Duration};

use dirigent_domain::log::{Level, Source, bounded_line};
use dirigent_proto::{
    link::OutputLine,
    log::{LogLevel, LogSource, OwnLog},
    run::Stream,
};
use dirigent_store::LogRecord;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::fleet::{Fleet, FleetEvent};

/// Where a robot's output line came from.
pub(crate) struct OutputOrigin<'a> {
    pub robot: &'a str,
    pub agent: &'a str,
}

/// A robot's output line as a record. A line that is a JSON object with a `level` (or
/// `levelname`, `severity`) is a structured record: its `msg` (or `message`, `event`) is the
/// text, its other keys the fields. Other lines are `info` on stdout and `warn` on stderr.
pub(crate) fn output_record(
    run_id: &str,
    origin: &OutputOrigin<'_>,
    line: OutputLine,
) -> LogRecord {
    let stream = match line.stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    let plain_level = match line.stream {
        Stream::Stdout => Level::Info,
        Stream::Stderr => Level::Warn,
    };
    let (level, text, fields) = match structured(&line.text) {
        Some((level, text, fields)) => (level, text, Some(fields)),
        None => (plain_level, line.text, None),
    };
    LogRecord {
        id: 0,
        at: line.at,
        source: Source::Robot,
        level,
        robot: Some(origin.robot.to_owned()),
        run_id: Some(run_id.to_owned()),
        activity_id: None,
        agent: Some(origin.agent.to_owned()),
        node: None,
        seq: Some(line.seq),
        stream: Some(stream.to_owned()),
        fields: fields.map(|fields| Value::Object(fields).to_string()),
        text: bounded_line(text),
    }
}

/// An activity's output line as a record.
pub(crate) fn activity_record(id: &str, agent: Option<&str>, line: OutputLine) -> LogRecord {
    let (stream, level) = match line.stream {
        Stream::Stdout => ("stdout", Level::Info),
        Stream::Stderr => ("stderr", Level::Warn),
    };
    LogRecord {
        id: 0,
        at: line.at,
        source: Source::Activity,
        level,
        robot: None,
        run_id: None,
        activity_id: Some(id.to_owned()),
        agent: agent.map(str::to_owned),
        node: None,
        seq: Some(line.seq),
        stream: Some(stream.to_owned()),
        fields: None,
        text: bounded_line(line.text),
    }
}

/// An agent's or this node's own record (`source` agent or server). A `robot` field fills
/// the record's robot; the program's place goes into the fields as `target`.
pub(crate) fn own_record(
    source: Source,
    agent: Option<&str>,
    node: Option<&str>,
    log: OwnLog,
) -> LogRecord {
    let mut fields = log.fields;
    let robot = fields
        .get("robot")
        .and_then(Value::as_str)
        .map(str::to_owned);
    fields.insert("target".to_owned(), Value::String(log.target));
    LogRecord {
        id: 0,
        at: log.at,
        source,
        level: level_from_wire(log.level),
        robot,
        run_id: None,
        activity_id: None,
        agent: agent.map(str::to_owned),
        node: node.map(str::to_owned),
        seq: None,
        stream: None,
        fields: Some(Value::Object(fields).to_string()),
        text: bounded_line(log.text),
    }
}

/// A line read as a structured record: its level, message and other fields.
fn structured(text: &str) -> Option<(Level, String, Map<String, Value>)> {
    let trimmed = text.trim();
    if !trimmed.starts_with('{') || !trimmed.ends_with('}') {
        return None;
    }
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(trimmed) else {
        return None;
    };
    let level = ["level", "levelname", "severity"]
        .into_iter()
        .find_map(|key| match fields.get(key) {
            Some(Value::String(level)) => Level::parse(level).map(|level| (key, level)),
            _ => None,
        });
    let (level_key, level) = level?;
    fields.remove(level_key);
    let message = ["msg", "message", "event"]
        .into_iter()
        .find_map(|key| match fields.get(key) {
            Some(Value::String(_)) => fields.remove(key),
            _ => None,
        });
    let text = match message {
        Some(Value::String(message)) => message,
        _ => String::new(),
    };
    Some((level, text, fields))
}

pub(crate) fn level_from_wire(level: LogLevel) -> Level {
    match level {
        LogLevel::Trace => Level::Trace,
        LogLevel::Debug => Level::Debug,
        LogLevel::Info => Level::Info,
        LogLevel::Warn => Level::Warn,
        LogLevel::Error => Level::Error,
    }
}

pub(crate) fn level_to_wire(level: Level) -> LogLevel {
    match level {
        Level::Trace => LogLevel::Trace,
        Level::Debug => LogLevel::Debug,
        Level::Info => LogLevel::Info,
        Level::Warn => LogLevel::Warn,
        Level::Error => LogLevel::Error,
    }
}

fn source_to_wire(source: Source) -> LogSource {
    match source {
        Source::Robot => LogSource::Robot,
        Source::Agent => LogSource::Agent,
        Source::Server => LogSource::Server,
        Source::Activity => LogSource::Activity,
    }
}

/// A stored record's fields as a JSON object (`None` when it has none, or they do not parse).
fn fields_of(record: &LogRecord) -> Option<Map<String, Value>> {
    match serde_json::from_str(record.fields.as_deref()?) {
        Ok(Value::Object(fields)) => Some(fields),
        _ => None,
    }
}

pub(crate) fn to_wire(record: LogRecord) -> dirigent_proto::log::LogRecord {
    let fields = fields_of(&record);
    dirigent_proto::log::LogRecord {
        id: record.id,
        at: record.at,
        source: source_to_wire(record.source),
        level: level_to_wire(record.level),
        robot: record.robot,
        run_id: record.run_id,
        activity_id: record.activity_id,
        agent: record.agent,
        node: record.node,
        stream: record.stream,
        fields,
        text: record.text,
    }
}

/// A run's or an activity's output record as a line of its output.
pub(crate) fn to_line(record: LogRecord) -> dirigent_proto::run::LogLine {
    let fields = fields_of(&record);
    dirigent_proto::run::LogLine {
        seq: record.seq.unwrap_or(0),
        stream: match record.stream.as_deref() {
            Some("stderr") => Stream::Stderr,
            _ => Stream::Stdout,
        },
        at: record.at,
        level: Some(level_to_wire(record.level)),
        fields,
        text: record.text,
    }
}

/// This node's own records waiting to be stored, at most this many at once...
const OWN_BATCH: usize = 512;
/// ...or after at most this long.
const OWN_DELAY: Duration = Duration::from_millis(200);

/// Stores this node's own records (`tracing` events, captured by the program) as they come,
/// in batches. A batch that cannot be stored is dropped and counted; the count is recorded
/// with the next batch that can (logging the failure would feed this very loop).
pub(crate) async fn keep_own_logs(fleet: Arc<Fleet>, mut own: mpsc::Receiver<OwnLog>) {
    let mut dropped = 0usize;
    while let Some(first) = own.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + OWN_DELAY;
        while batch.len() < OWN_BATCH {
            match tokio::time::timeout_at(deadline, own.recv()).await {
                Ok(Some(log)) => batch.push(log),
                Ok(None) | Err(_) => break,
            }
        }
        let node = fleet.node().to_owned();
        let mut records: Vec<LogRecord> = batch
            .into_iter()
            .map(|log| own_record(Source::Server, None, Some(&node), log))
            .collect();
        if 0 < dropped {
            records.push(LogRecord {
                level: Level::Warn,
                text: format!("{dropped} of this node's own log records could not be stored"),
                fields: None,
                ..records[0].clone()
            });
        }
        match fleet.store().add_logs(&records).await {
            Ok(()) => {
                dropped = 0;
                fleet.publish(FleetEvent::Logged);
            }
            Err(_) => dropped += records.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_with_a_level_is_a_structured_record() {
        let (level, text, fields) =
            structured(r#"{"level": "WARNING", "msg": "booked", "invoice": 7}"#).unwrap();
        assert_eq!(level, Level::Warn);
        assert_eq!(text, "booked");
        assert_eq!(fields.get("invoice"), Some(&Value::from(7)));
        assert!(!fields.contains_key("level") && !fields.contains_key("msg"));
        assert!(structured(r#"{"msg": "no level"}"#).is_none());
        assert!(structured(r#"{"level": "loud", "msg": "x"}"#).is_none());
        assert!(structured("[1, 2]").is_none());
        assert!(structured("{not json}").is_none());
    }
}
