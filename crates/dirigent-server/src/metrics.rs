//! Prometheus metrics at `GET /metrics` (text exposition format 0.0.4), for a scraper holding
//! an API token that may read settings.
//!
//! Two kinds: figures read from the database at each scrape, the same on every node (runs by
//! robot and state, queue items by status and the oldest waiting item's age, agents and nodes
//! by state), and this node's own, kept in memory since it started (HTTP requests and their
//! latency by route, the latency from a run's creation to its robot running, the lateness of
//! trigger firings, the database pool). Each line carries `node` where it is this node's.

use std::{collections::BTreeMap, fmt::Write, sync::Mutex, time::Duration};

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use dirigent_domain::access::{Action, Resource};

use crate::{AppState, auth::Caller, error::ApiError, lock};

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds of the batch size buckets, in writes.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// This node's metrics kept in memory.
pub struct Metrics {
    /// By (method, route, status class): the request latency.
    http: Mutex<BTreeMap<(String, String, &'static str), Histogram>>,
    /// From a run's creation to its robot running.
    run_start: Mutex<Histogram>,
    /// From a firing's due time to its recording.
    trigger_lateness: Mutex<Histogram>,
    /// How many writes (work-item operations, audit records) each group commit held.
    write_batches: Mutex<Histogram>,
    /// Runs created here, by robot.
    runs_created: Mutex<BTreeMap<String, u64>>,
    /// Runs ended here, by robot and final state.
    runs_ended: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            http: Mutex::default(),
            run_start: Mutex::new(Histogram::new(LATENCY_BUCKETS)),
            trigger_lateness: Mutex::new(Histogram::new(LATENCY_BUCKETS)),
            write_batches: Mutex::new(Histogram::new(BATCH_BUCKETS)),
            runs_created: Mutex::default(),
            runs_ended: Mutex::default(),
        }
    }
}

#[derive(Debug, Clone)]
struct Histogram {
    /// The buckets' upper bounds.
    bounds: &'static [f64],
    /// Observations at or below each bound.
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.buckets) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += value;
    }

    /// Writes the histogram's lines, `labels` (`key="value",…`) on each.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let separator = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

impl Metrics {
    /// An HTTP request answered with `status` after `elapsed`; `route` is the matched route
    /// (never the raw path, so that ids do not make new series).
    pub fn observe_http(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        lock(&self.http)
            .entry((method.to_owned(), route.to_owned(), class))
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
            .observe(elapsed.as_secs_f64());
    }

    /// A run's robot is running, `waited` after the run was created.
    pub fn observe_run_start(&self, waited: Duration) {
        lock(&self.run_start).observe(waited.as_secs_f64());
    }

    /// A run of `robot` was created.
    pub fn count_run_created(&self, robot: &str) {
        *lock(&self.runs_created)
            .entry(robot.to_owned())
            .or_default() += 1;
    }

    /// A run of `robot` ended in `state`.
    pub fn count_run_ended(&self, robot: &str, state: &'static str) {
        *lock(&self.runs_ended)
            .entry((robot.to_owned(), state))
            .or_default() += 1;
    }

    /// A group commit of `writes` writes.
    pub fn observe_write_batch(&self, writes: usize) {
        lock(&self.write_batches).observe(writes as f64);
    }

    /// A firing was recorded `late` after it was due.
    pub fn observe_trigger_lateness(&self, late: Duration) {
        lock(&self.trigger_lateness).observe(late.as_secs_f64());
    }
}

/// The metrics, in Prometheus' text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain"),
        (status = 401, body = dirigent_proto::error::ErrorBody),
        (status = 403, body = dirigent_proto::error::ErrorBody),
    )
)]
pub(crate) async fn scrape(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Resource::Settings, Action::Read, None)?;
    let mut out = String::new();
    shared(&state, &mut out).await?;
    own(&state, &mut out);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

/// The figures every node reads from the database.
async fn shared(state: &AppState, out: &mut String) -> Result<(), ApiError> {
    let now = state.clock.now();
    out.push_str(
        "# HELP dirigent_runs Runs by robot and state (ended ones since they were kept).\n",
    );
    out.push_str("# TYPE dirigent_runs gauge\n");
    for (robot, run_state, count) in state.store.run_counts().await? {
        let _ = writeln!(
            out,
            "dirigent_runs{{robot=\"{}\",state=\"{run_state}\"}} {count}",
            escape(&robot)
        );
    }
    out.push_str("# HELP dirigent_queue_items Work items by queue and status.\n");
    out.push_str("# TYPE dirigent_queue_items gauge\n");
    let mut ages = Vec::new();
    for queue in state.store.queues().await? {
        let stats = state.store.queue_stats(queue.id, now).await?;
        let name = escape(&queue.name);
        for (status, count) in &stats.counts {
            let _ = writeln!(
                out,
                "dirigent_queue_items{{queue=\"{name}\",status=\"{}\"}} {count}",
                status.as_str()
            );
        }
        let age = stats.oldest_new_at.map_or(0.0, |oldest| {
            now.duration_since(oldest).as_secs_f64().max(0.0)
        });
        ages.push((name, age));
    }
    out.push_str("# HELP dirigent_queue_oldest_new_item_age_seconds How long the oldest item waiting to be claimed has waited.\n");
    out.push_str("# TYPE dirigent_queue_oldest_new_item_age_seconds gauge\n");
    for (name, age) in ages {
        let _ = writeln!(
            out,
            "dirigent_queue_oldest_new_item_age_seconds{{queue=\"{name}\"}} {age}"
        );
    }
    let agents = state.store.agents().await?;
    out.push_str("# HELP dirigent_agents Agents by state.\n");
    out.push_str("# TYPE dirigent_agents gauge\n");
    for agent_state in ["online", "draining", "offline"] {
        let count = agents
            .iter()
            .filter(|agent| {
                let shown = match (agent.online, agent.draining) {
                    (false, _) => "offline",
                    (true, true) => "draining",
                    (true, false) => "online",
                };
                shown == agent_state
            })
            .count();
        let _ = writeln!(out, "dirigent_agents{{state=\"{agent_state}\"}} {count}");
    }
    let alive_after = now - state.config.cluster.takeover_after;
    let nodes = state.store.nodes().await?;
    let alive = nodes
        .iter()
        .filter(|node| alive_after <= node.heartbeat_at)
        .count();
    out.push_str("# HELP dirigent_nodes Orchestrator nodes by state.\n");
    out.push_str("# TYPE dirigent_nodes gauge\n");
    let _ = writeln!(out, "dirigent_nodes{{state=\"alive\"}} {alive}");
    let _ = writeln!(
        out,
        "dirigent_nodes{{state=\"silent\"}} {}",
        nodes.len() - alive
    );
    Ok(())
}

/// This node's own figures.
fn own(state: &AppState, out: &mut String) {
    let metrics = state.fleet.metrics();
    let node = escape(state.fleet.node());
    out.push_str("# HELP dirigent_http_request_duration_seconds HTTP requests by method, route and status class, and how long they took.\n");
    out.push_str("# TYPE dirigent_http_request_duration_seconds histogram\n");
    for ((method, route, class), histogram) in lock(&metrics.http).iter() {
        let labels = format!(
            "node=\"{node}\",method=\"{method}\",route=\"{}\",status=\"{class}\"",
            escape(route)
        );
        histogram.render(out, "dirigent_http_request_duration_seconds", &labels);
    }
    out.push_str("# HELP dirigent_runs_created_total Runs created through this node, by robot.\n");
    out.push_str("# TYPE dirigent_runs_created_total counter\n");
    for (robot, count) in lock(&metrics.runs_created).iter() {
        let robot = escape(robot);
        let _ = writeln!(
            out,
            "dirigent_runs_created_total{{node=\"{node}\",robot=\"{robot}\"}} {count}"
        );
    }
    out.push_str(
        "# HELP dirigent_runs_ended_total Runs ended through this node, by robot and outcome.\n",
    );
    out.push_str("# TYPE dirigent_runs_ended_total counter\n");
    for ((robot, run_state), count) in lock(&metrics.runs_ended).iter() {
        let robot = escape(robot);
        let _ = writeln!(
            out,
            "dirigent_runs_ended_total{{node=\"{node}\",robot=\"{robot}\",state=\"{run_state}\"}} {count}"
        );
    }
    let labels = format!("node=\"{node}\"");
    out.push_str("# HELP dirigent_run_start_latency_seconds From a run's creation to its robot running, for runs started without delay.\n");
    out.push_str("# TYPE dirigent_run_start_latency_seconds histogram\n");
    lock(&metrics.run_start).render(out, "dirigent_run_start_latency_seconds", &labels);
    out.push_str(
        "# HELP dirigent_trigger_lateness_seconds From a firing's due time to its recording.\n",
    );
    out.push_str("# TYPE dirigent_trigger_lateness_seconds histogram\n");
    lock(&metrics.trigger_lateness).render(out, "dirigent_trigger_lateness_seconds", &labels);
    out.push_str("# HELP dirigent_write_batch_size Writes per group commit of work-item operations and audit records.\n");
    out.push_str("# TYPE dirigent_write_batch_size histogram\n");
    lock(&metrics.write_batches).render(out, "dirigent_write_batch_size", &labels);
    let (size, idle) = state.store.pool_figures();
    out.push_str("# HELP dirigent_db_connections The database connections of this node's pool.\n");
    out.push_str("# TYPE dirigent_db_connections gauge\n");
    let _ = writeln!(
        out,
        "dirigent_db_connections{{{labels},state=\"idle\"}} {idle}"
    );
    let _ = writeln!(
        out,
        "dirigent_db_connections{{{labels},state=\"in_use\"}} {}",
        size.saturating_sub(idle)
    );
}

/// A label value with `\`, `"` and line breaks escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_into_every_bucket_at_or_above() {
        let mut histogram = Histogram::new(LATENCY_BUCKETS);
        histogram.observe(0.003);
        histogram.observe(2.0);
        let mut out = String::new();
        histogram.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.0025\"} 0\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"2.5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 2\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 2\n"), "{out}");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
