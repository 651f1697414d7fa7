//! The program's own log: `tracing` events go to standard error and, for `serve` and
//! `agent`, to the log store (the orchestrator stores its own; an agent ships its own over its
//! link, journaled like its robots' output).

use std::sync::atomic::{AtomicU64, Ordering};

use dirigent_proto::log::{LogLevel, OwnLog};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tracing::{Event, Level, Subscriber, field::Field};
use tracing_subscriber::{Layer, layer::Context, prelude::*};

/// Records waiting for the store beyond this many are dropped (and counted).
const BACKLOG: usize = 16 * 1024;

/// Sets up the program's log: `DIRIGENT_LOG` takes a filter (default `info`), which applies to
/// standard error and to the records captured alike. Answers where the captured records of
/// Dirigent's own code come.
pub(crate) fn init() -> mpsc::Receiver<OwnLog> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DIRIGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (sender, receiver) = mpsc::channel(BACKLOG);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(std::io::stderr),
        )
        .with(Capture {
            sender,
            dropped: AtomicU64::new(0),
        })
        .init();
    receiver
}

/// Turns events of Dirigent's own code into records.
struct Capture {
    sender: mpsc::Sender<OwnLog>,
    dropped: AtomicU64,
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let metadata = event.metadata();
        if !metadata.target().starts_with("dirigent") {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if 0 < dropped {
            fields
                .fields
                .insert("dropped_before".to_owned(), Value::from(dropped));
        }
        #[allow(
            clippy::disallowed_methods,
            reason = "a log record's time is when it was written"
        )]
        let at = jiff::Timestamp::now();
        let record = OwnLog {
            at,
            level: level(*metadata.level()),
            target: metadata.target().to_owned(),
            text: fields.message,
            fields: fields.fields,
        };
        if self.sender.try_send(record).is_err() {
            self.dropped.fetch_add(dropped + 1, Ordering::Relaxed);
        }
    }
}

fn level(level: Level) -> LogLevel {
    match level {
        Level::TRACE => LogLevel::Trace,
        Level::DEBUG => LogLevel::Debug,
        Level::INFO => LogLevel::Info,
        Level::WARN => LogLevel::Warn,
        _ => LogLevel::Error,
    }
}

/// An event's message and other fields.
#[derive(Default)]
struct Fields {
    message: String,
    fields: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = match value {
                Value::String(text) => text,
                other => other.to_string(),
            };
        } else {
            self.fields.insert(field.name().to_owned(), value);
        }
    }
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
}
