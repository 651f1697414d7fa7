//! A load generator for work-item queues over HTTP, used by `scripts/bench/queues.py`:
//! bulk adds, then the add → claim → complete cycle with many consumers, timing each claim.
//! In the cycle every request carries BATCH items (default 1): producers add BATCH items at
//! once, consumers claim up to BATCH under one lease and complete them in one request.
//! Prints one JSON object of figures.
//!
//!     queue_load URL TOKEN QUEUE ITEMS CONSUMERS [BATCH]

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use dirigent_client::Client;
use dirigent_proto::queue::{AddItems, CompleteItems, CompleteRequest, ItemCompletion, NewItem};

const BULK: usize = 1000;

fn item(n: usize) -> anyhow::Result<NewItem> {
    Ok(NewItem {
        payload: serde_json::value::to_raw_value(&serde_json::json!({
            "invoice": n, "customer": format!("c-{}", n % 997), "amount": n as f64 * 1.5,
        }))?,
        reference: None,
        priority: None,
        deadline: None,
        postpone_until: None,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, token, queue, items, consumers, batch) = match args.as_slice() {
        [url, token, queue, items, consumers] => (url, token, queue, items, consumers, "1"),
        [url, token, queue, items, consumers, batch] => {
            (url, token, queue, items, consumers, batch.as_str())
        }
        _ => bail!("usage: queue_load URL TOKEN QUEUE ITEMS CONSUMERS [BATCH]"),
    };
    let items: usize = items.parse().context("ITEMS")?;
    let consumers: usize = consumers.parse().context("CONSUMERS")?;
    let batch: usize = batch.parse().context("BATCH")?;
    let client = Client::new(url, Some(token.clone()))?;

    // 1. Bulk adds: batches of 1,000 from 4 concurrent senders.
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..4 {
        let (client, queue, next) = (client.clone(), queue.clone(), next.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(BULK, Ordering::Relaxed);
                if items <= first {
                    return anyhow::Ok(());
                }
                let batch = (first..(first + BULK).min(items))
                    .map(item)
                    .collect::<anyhow::Result<_>>()?;
                client.add_items(&queue, &AddItems::Many(batch)).await?;
            }
        }));
    }
    for sender in senders {
        sender.await??;
    }
    let bulk_seconds = started.elapsed().as_secs_f64();

    // 2. The cycle: producers add items BATCH at a time while consumers claim and complete.
    //    The items added in bulk are drained as well; every item is counted once it completes.
    let total = items * 2;
    let completed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let next = Arc::new(AtomicUsize::new(0));
    for _ in 0..(consumers / 4).max(1) {
        let (client, queue, next) = (client.clone(), queue.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(batch, Ordering::Relaxed) < items {
                let added = match batch {
                    1 => AddItems::One(item(0)?),
                    _ => AddItems::Many((0..batch).map(item).collect::<anyhow::Result<_>>()?),
                };
                client.add_items(&queue, &added).await?;
            }
            anyhow::Ok(Vec::new())
        }));
    }
    for _ in 0..consumers {
        let (client, queue, completed) = (client.clone(), queue.clone(), completed.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while completed.load(Ordering::Relaxed) < total {
                let asked = Instant::now();
                if batch == 1 {
                    let claim = client.claim(&queue).await?;
                    latencies.push(asked.elapsed());
                    let Some(claim) = claim else {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    };
                    let done = CompleteRequest {
                        lease_token: claim.lease_token,
                        output: None,
                    };
                    client.complete_item(&queue, claim.item.id, &done).await?;
                    completed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let claims = client.claim_items(&queue, batch as u32).await?;
                latencies.push(asked.elapsed());
                let Some(claims) = claims else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                let done = CompleteItems {
                    items: claims
                        .items
                        .iter()
                        .map(|item| ItemCompletion {
                            id: item.id,
                            lease_token: claims.lease_token.clone(),
                            output: None,
                        })
                        .collect(),
                };
                let results = client.complete_items(&queue, &done).await?.results;
                if let Some(refused) = results.iter().find_map(|result| result.error.as_ref()) {
                    bail!("a completion was refused: {}", refused.message);
                }
                completed.fetch_add(results.len(), Ordering::Relaxed);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let cycle_seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies
            .get(index)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let figures = serde_json::json!({
        "bulk_items": items,
        "bulk_items_per_second": items as f64 / bulk_seconds,
        "cycle_items": total,
        "cycle_items_per_second": total as f64 / cycle_seconds,
        "consumers": consumers,
        "batch": batch,
        "claims": latencies.len(),
        "claim_p50_ms": percentile(0.50),
        "claim_p99_ms": percentile(0.99),
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
