//! A leader-only schedule on three nodes: only the leader fires, each
//! firing runs once, and a handover in the middle of the schedule neither
//! skips nor repeats a firing. Every firing is printed with its fire time
//! and the node that ran it; at the end the fire times are checked for
//! duplicates and gaps.
//!
//! ```text
//! cargo run --example cron                                   # on memory://cron-demo
//! cargo run --features full --example cron -- etcd://127.0.0.1:2379/demo
//! ```
//! Each node opens its own handle (its own session), as separate processes
//! would. The run is bounded: 18 firings 250 ms apart, then it exits (1 if
//! a firing was skipped or repeated).

#![allow(clippy::print_stdout)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anykv_leadership::Candidate;
use anykv_recipes::cron::{LeaderCron, Schedule};

const INTERVAL: Duration = Duration::from_millis(250);
const FIRINGS: usize = 18;

#[tokio::main]
async fn main() -> anykv::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://cron-demo".to_owned());
    let start = Instant::now();
    let stamp = move || format!("{:>7.3}s", start.elapsed().as_secs_f64());
    println!(
        "{} three nodes, a firing every {INTERVAL:?}, on {}",
        stamp(),
        anykv::url::redact(&url)
    );
    let cleanup = anykv::open(&url).await?;
    // A fresh schedule for every run of the example.
    cleanup.delete_tree("cron-demo").await?;

    let fired: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let node = format!("node-{i}");
        let store = anykv::open(&url).await?;
        let candidate = Candidate::new(store.clone(), "cron-demo/leader", node.clone());
        let log = fired.clone();
        let (cron, _errors) = LeaderCron::start(
            candidate,
            store,
            "cron-demo/last",
            Schedule::every(INTERVAL)?,
            move |firing| {
                let at = firing
                    .fire_time()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                println!(
                    "{} fire time {}.{:03} run by {node} (token {})",
                    stamp(),
                    at / 1000,
                    at % 1000,
                    firing.token()
                );
                log.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((at, node.clone()));
                async {}
            },
        )
        .await?;
        nodes.push(cron);
    }

    let count = || fired.lock().unwrap_or_else(|p| p.into_inner()).len();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut handovers = 0;
    while count() < FIRINGS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Two handovers: a resign after a third of the firings, and the
        // leader stopped for good after two thirds.
        let due = (handovers + 1) * FIRINGS / 3;
        if handovers < 2 && count() >= due {
            if let Some(leader) = nodes.iter().position(|n| n.is_leader()) {
                let name = nodes[leader].candidate().node_id().to_owned();
                if handovers == 0 {
                    println!("{} {name} resigns", stamp());
                    nodes[leader].resign().await;
                } else {
                    println!("{} {name} stops", stamp());
                    nodes.remove(leader).stop().await;
                }
                handovers += 1;
            }
        }
    }
    for node in &nodes {
        node.stop().await;
    }
    cleanup.delete_tree("cron-demo").await?;
    cleanup.close().await?;

    let fired = fired.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let step = INTERVAL.as_millis() as u64;
    let bad: Vec<_> = fired
        .windows(2)
        .filter(|w| w[1].0.checked_sub(w[0].0) != Some(step))
        .collect();
    if fired.len() < FIRINGS || !bad.is_empty() {
        println!(
            "{} FAILED: {} firings, irregular steps {bad:?}",
            stamp(),
            fired.len()
        );
        std::process::exit(1);
    }
    println!(
        "{} {} firings, each once, {step} ms apart, across {handovers} handovers",
        stamp(),
        fired.len()
    );
    Ok(())
}
