//! Follow an election: print who leads a key, live, until Ctrl-C.
//!
//! ```text
//! cargo run --features full --example follow -- etcd://127.0.0.1:2379/demo election-demo/leader
//! cargo run --example follow                          # in-process demo on memory://
//! ```
//! Run the `election` example against the same URL in another terminal to
//! watch its leaders come and go. `memory://` stores live in one process,
//! so without a URL this example runs two demo candidates itself.

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anykv_leadership::{Candidate, Follower};
use futures::StreamExt;

#[tokio::main]
async fn main() -> anykv::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "memory://follow-demo".to_owned());
    let key = args
        .next()
        .unwrap_or_else(|| "election-demo/leader".to_owned());
    let store = anykv::open(&url).await?;
    let start = Instant::now();
    let stamp = move || format!("{:>7.3}s", start.elapsed().as_secs_f64());

    // Without another process to follow, make some leaders to look at.
    let _demo = if store.capabilities().shared_between_processes {
        None
    } else {
        println!(
            "{} memory:// is per process: running two demo candidates here",
            stamp()
        );
        Some(demo_candidates(&url, &key).await?)
    };

    println!(
        "{} following {key:?} on {} (Ctrl-C to stop)",
        stamp(),
        anykv::url::redact(&url)
    );
    let (mut leaders, mut errors) = Follower::new(store.clone(), key).follow_election().await?;
    loop {
        tokio::select! {
            leader = leaders.next() => match leader {
                Some(Some(node)) => println!("{} leader: {node}", stamp()),
                Some(None) => println!("{} no leader", stamp()),
                None => break,
            },
            Some(error) = errors.next() => println!("{} error: {error}", stamp()),
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    store.close().await
}

/// Two candidates whose leader resigns every 2 s; they stop when dropped.
async fn demo_candidates(url: &str, key: &str) -> anykv::Result<tokio::task::JoinHandle<()>> {
    let mut candidates = Vec::new();
    for name in ["demo-a", "demo-b"] {
        let candidate = Candidate::new(anykv::open(url).await?, key, name);
        // Nobody reads these streams; that never holds a candidate back.
        let _streams = candidate.run_for_election().await?;
        candidates.push(candidate);
    }
    Ok(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            for candidate in &candidates {
                candidate.resign().await;
            }
        }
    }))
}
