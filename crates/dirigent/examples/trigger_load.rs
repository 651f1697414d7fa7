//! Registers many triggers over HTTP, for `scripts/bench/triggers.py`: `COUNT` dry-run `once`
//! triggers of `ROBOT`, due from `FIRST_DUE` (RFC 3339) on, spread evenly over `SPREAD_MS`
//! milliseconds. Prints one JSON object of figures.
//!
//!     trigger_load URL TOKEN ROBOT COUNT FIRST_DUE SPREAD_MS

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use anyhow::{Context, bail};
use dirigent_client::Client;
use dirigent_proto::trigger::TriggerSpec;
use jiff::{SignedDuration, Timestamp};

/// Requests in flight at once.
const SENDERS: usize = 16;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, token, robot, count, first_due, spread_ms] = args.as_slice() else {
        bail!("usage: trigger_load URL TOKEN ROBOT COUNT FIRST_DUE SPREAD_MS");
    };
    let count: usize = count.parse().context("COUNT")?;
    let first_due: Timestamp = first_due.parse().context("FIRST_DUE")?;
    let spread_ms: i64 = spread_ms.parse().context("SPREAD_MS")?;
    let client = Client::new(url, Some(token.clone()))?;

    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let (client, robot, next) = (client.clone(), robot.clone(), next.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if count <= n {
                    return anyhow::Ok(());
                }
                let offset = spread_ms * i64::try_from(n)? / i64::try_from(count)?;
                let spec = TriggerSpec {
                    robot: robot.clone(),
                    kind: "once".to_owned(),
                    at: Some(first_due + SignedDuration::from_millis(offset)),
                    dry_run: Some(true),
                    ..TriggerSpec::default()
                };
                client.create_trigger(&spec).await?;
            }
        }));
    }
    for sender in senders {
        sender.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let figures = serde_json::json!({
        "registered": count,
        "seconds": seconds,
        "per_second": count as f64 / seconds,
    });
    #[expect(
        clippy::disallowed_macros,
        reason = "a load generator prints its figures for the bench script"
    )]
    {
        println!("{figures}");
    }
    Ok(())
}
