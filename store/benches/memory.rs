//! Memory backend throughput: sequential put+get through `Arc<dyn Store>`.
//!
//! `cargo bench -p anykv --bench memory` prints a table. Counts each put and
//! each get as one operation.

#![allow(clippy::print_stdout, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anykv::{Bytes, PutOptions, Store};

const KEYS: usize = 1024;

async fn put_get(
    store: &Arc<dyn Store>,
    keys: &[String],
    value: &Bytes,
    rounds: usize,
) -> anykv::Result<Duration> {
    let start = Instant::now();
    for i in 0..rounds {
        let key = &keys[i % KEYS];
        store.put(key, value.clone(), PutOptions::new()).await?;
        let got = store.get(key).await?;
        std::hint::black_box(got);
    }
    Ok(start.elapsed())
}

fn main() -> anykv::Result<()> {
    // `cargo test --benches` runs benches once in test mode: keep that quick.
    let quick = std::env::args().all(|a| a != "--bench");
    let rounds = if quick { 10_000 } else { 1_000_000 };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anykv::Error::InvalidArgument {
            key: String::new(),
            reason: format!("runtime: {e}"),
        })?;
    runtime.block_on(async {
        let store = anykv::open("memory://").await?;
        let keys: Vec<String> = (0..KEYS).map(|i| format!("bench/key-{i:04}")).collect();
        let value = Bytes::from(vec![b'v'; 128]);
        // Warm up, then measure the best of three.
        put_get(&store, &keys, &value, rounds / 10).await?;
        let mut best = Duration::MAX;
        for _ in 0..3 {
            best = best.min(put_get(&store, &keys, &value, rounds).await?);
        }
        let ops = (2 * rounds) as f64 / best.as_secs_f64();
        println!();
        println!("| backend | workload | rounds | ops/s (put and get each count) | put+get pairs/s |");
        println!("|---|---|---|---|---|");
        println!(
            "| memory | sequential put+get, 128 B values, 1 task, Arc<dyn Store> | {rounds} | {:.0} | {:.0} |",
            ops,
            ops / 2.0
        );
        Ok(())
    })
}
