//! Leader election, live: N candidates campaign for one key; every few
//! seconds the leader resigns and another takes over. Every change is
//! printed as it happens, with the node and its fencing token, next to what
//! a follower sees.
//!
//! ```text
//! cargo run --example election                        # 3 candidates on memory://election
//! cargo run --example election -- memory://x 5        # 5 candidates
//! cargo run --features full --example election -- etcd://127.0.0.1:2379/demo
//! ```
//! Ctrl-C stops every candidate (the leader steps down first) and exits.
//! Each candidate opens its own handle (its own session), as separate
//! processes would; `memory://NAME` handles of one process share data.
//!
//! Each candidate's stream is printed by its own task, so two changes in the
//! same millisecond may print in either order. The order that matters is
//! guaranteed: a leader says `false` before it releases the lock, and the
//! next one says `true` only after taking it — with a larger token.

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anykv_leadership::{Candidate, Follower};
use futures::StreamExt;

const KEY: &str = "election-demo/leader";
const RESIGN_EVERY: Duration = Duration::from_secs(3);

#[tokio::main]
async fn main() -> anykv::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "memory://election".to_owned());
    let count: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(3);
    let start = Instant::now();
    let stamp = move || format!("{:>7.3}s", start.elapsed().as_secs_f64());
    println!(
        "{} {count} candidates for {KEY:?} on {}",
        stamp(),
        anykv::url::redact(&url)
    );

    let watcher = anykv::open(&url).await?;
    let (mut leaders, mut follower_errors) = Follower::new(watcher.clone(), KEY)
        .follow_election()
        .await?;
    let follower = tokio::spawn(async move {
        while let Some(leader) = leaders.next().await {
            match leader {
                Some(node) => println!("{}   follower: the leader is {node}", stamp()),
                None => println!("{}   follower: no leader", stamp()),
            }
        }
    });
    let follower_errors = tokio::spawn(async move {
        while let Some(error) = follower_errors.next().await {
            println!("{}   follower error: {error}", stamp());
        }
    });

    let mut candidates = Vec::new();
    for i in 1..=count {
        let store = anykv::open(&url).await?;
        let candidate = Arc::new(Candidate::new(store, KEY, format!("node-{i}")));
        let (mut elected, mut errors) = candidate.run_for_election().await?;
        let me = candidate.clone();
        tokio::spawn(async move {
            while let Some(leader) = elected.next().await {
                let node = me.node_id();
                match (leader, me.leader_token()) {
                    (true, Some(token)) => {
                        println!("{} {node} ELECTED, fencing token {token}", stamp())
                    }
                    (true, None) => println!("{} {node} elected (term already over)", stamp()),
                    (false, _) => println!("{} {node} is not leader", stamp()),
                }
            }
        });
        let me = candidate.clone();
        tokio::spawn(async move {
            while let Some(error) = errors.next().await {
                println!("{} {} error: {error}", stamp(), me.node_id());
            }
        });
        candidates.push(candidate);
    }

    let mut ticks = tokio::time::interval(RESIGN_EVERY);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if let Some(leader) = candidates.iter().find(|c| c.is_leader()) {
                    println!("{} {} resigns", stamp(), leader.node_id());
                    let asked = Instant::now();
                    leader.resign().await;
                    println!(
                        "{} {} has stepped down ({:?})",
                        stamp(),
                        leader.node_id(),
                        asked.elapsed()
                    );
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    println!("{} stopping", stamp());
    for candidate in &candidates {
        candidate.stop().await;
    }
    follower.abort();
    follower_errors.abort();
    watcher.close().await?;
    Ok(())
}
