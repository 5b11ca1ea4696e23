//! A work queue with two producers and three consumers. One consumer is
//! "killed" in the middle of an item (it drops the item without acking it);
//! the item is delivered again once its visibility timeout has passed, and
//! every item is processed. Each delivery is printed with its consumer and
//! attempt.
//!
//! ```text
//! cargo run --example queue                                  # on memory://queue-demo
//! cargo run --features full --example queue -- redis://127.0.0.1:6379/demo
//! ```
//! Each producer and consumer opens its own handle, as separate processes
//! would. The run is bounded (30 s at most) and exits 1 if an item was lost
//! or processed twice.

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anykv_recipes::queue::Queue;

const PER_PRODUCER: usize = 10;
const VISIBILITY: Duration = Duration::from_secs(1);

#[tokio::main]
async fn main() -> anykv::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://queue-demo".to_owned());
    let start = Instant::now();
    let stamp = move || format!("{:>7.3}s", start.elapsed().as_secs_f64());
    println!(
        "{} 2 producers, 3 consumers, visibility timeout {VISIBILITY:?}, on {}",
        stamp(),
        anykv::url::redact(&url)
    );
    let cleanup = anykv::open(&url).await?;
    cleanup.delete_tree("queue-demo").await?;

    // The consumer that dies: it takes the first item and never acks it.
    let doomed =
        Queue::new(anykv::open(&url).await?, "queue-demo/jobs")?.visibility_timeout(VISIBILITY);
    let first = Queue::new(anykv::open(&url).await?, "queue-demo/jobs")?;
    first.push("job p0-first").await?;
    let abandoned = doomed.pop().await?;
    println!(
        "{} doomed   took {:?} (attempt {}) and dies without acking it",
        stamp(),
        String::from_utf8_lossy(abandoned.payload()),
        abandoned.attempt()
    );
    drop(abandoned);
    drop(doomed);

    let done: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let total = 2 * PER_PRODUCER + 1;
    let mut consumers = Vec::new();
    for c in 1..=3 {
        let queue =
            Queue::new(anykv::open(&url).await?, "queue-demo/jobs")?.visibility_timeout(VISIBILITY);
        let done = done.clone();
        consumers.push(tokio::spawn(async move {
            loop {
                if done.lock().unwrap_or_else(|p| p.into_inner()).len() >= total {
                    return Ok::<(), anykv::Error>(());
                }
                let Ok(delivery) =
                    tokio::time::timeout(Duration::from_millis(200), queue.pop()).await
                else {
                    continue;
                };
                let delivery = delivery?;
                let payload = String::from_utf8_lossy(delivery.payload()).into_owned();
                println!(
                    "{} consumer-{c} got {payload:?} (attempt {})",
                    stamp(),
                    delivery.attempt()
                );
                tokio::time::sleep(Duration::from_millis(30)).await; // the work
                delivery.ack().await?;
                *done
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(payload)
                    .or_default() += 1;
            }
        }));
    }
    for p in 0..2 {
        let queue = Queue::new(anykv::open(&url).await?, "queue-demo/jobs")?;
        for i in 0..PER_PRODUCER {
            queue.push(format!("job p{p}-{i}")).await?;
        }
        println!("{} producer-{p} pushed {PER_PRODUCER} jobs", stamp());
    }
    let finished = tokio::time::timeout(Duration::from_secs(30), async {
        for consumer in consumers {
            match consumer.await {
                Ok(result) => result?,
                Err(join) => println!("a consumer failed: {join}"),
            }
        }
        Ok::<(), anykv::Error>(())
    })
    .await;
    cleanup.delete_tree("queue-demo").await?;
    cleanup.close().await?;
    let done = done.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let twice: Vec<_> = done.iter().filter(|(_, n)| **n != 1).collect();
    if finished.is_err() || done.len() != total || !twice.is_empty() {
        println!(
            "{} FAILED: {} of {total} jobs done, done more than once: {twice:?}",
            stamp(),
            done.len()
        );
        std::process::exit(1);
    }
    finished.unwrap_or(Ok(()))?;
    println!(
        "{} all {total} jobs done once each, the abandoned one after its timeout",
        stamp()
    );
    Ok(())
}
