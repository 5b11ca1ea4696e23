//! Sequential put+get through anykv vs. raw `redis` SET+GET, same server,
//! same run.
//!
//! ```text
//! eval "$(scripts/services.sh env)"
//! cargo bench -p anykv --features redis --bench redis
//! ```
//!
//! Each side runs `ANYKV_BENCH_OPS` (default 40000) put+get pairs on 64 keys
//! with 100-byte values, one request at a time, after a warm-up. The pairs
//! run in chunks of 250, alternating the sides in A-B-B-A order, so both see
//! the same machine load (the ratio is what matters; absolute numbers depend
//! on what else the host runs). One "op" is one request (a put or a get); a
//! pair is one of each. The table gives the ratio of the totals and, because
//! a busy host's load spikes hit single chunks, also the median of the
//! ratios of back-to-back chunk pairs.

// A benchmark's output is its table.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anykv::{Bytes, PutOptions, Store};

const KEYS: usize = 64;
const VALUE_SIZE: usize = 100;
const CHUNK: usize = 250;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Ok(base) = std::env::var("ANYKV_TEST_REDIS_URL") else {
        eprintln!("redis bench skipped: ANYKV_TEST_REDIS_URL is not set (eval \"$(scripts/services.sh env)\")");
        return Ok(());
    };
    let ops = env_usize("ANYKV_BENCH_OPS", 40_000).max(CHUNK);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(&base, ops))
}

async fn run(base: &str, ops: usize) -> Result<(), Box<dyn std::error::Error>> {
    let namespace = format!("bench-{}", std::process::id());
    let store = anykv::open(&format!("{base}/{namespace}")).await?;
    let client = redis::Client::open(base)?;
    let mut raw = client.get_multiplexed_async_connection().await?;

    let value = Bytes::from(vec![b'x'; VALUE_SIZE]);
    let anykv_keys: Vec<String> = (0..KEYS).map(|i| format!("k{i}")).collect();
    let raw_keys: Vec<String> = (0..KEYS).map(|i| format!("{namespace}-raw/k{i}")).collect();

    // Warm-up: connections, script cache, allocator.
    anykv_round(store.as_ref(), &anykv_keys, &value, ops / 4).await?;
    raw_round(&mut raw, &raw_keys, &value, ops / 4).await?;

    let chunks = ops / CHUNK;
    let mut anykv_time = Duration::ZERO;
    let mut raw_time = Duration::ZERO;
    let mut paired = Vec::with_capacity(chunks);
    for chunk in 0..chunks {
        // A-B-B-A: neither side always runs first.
        let (a, r) = if chunk % 2 == 0 {
            let a = anykv_round(store.as_ref(), &anykv_keys, &value, CHUNK).await?;
            (a, raw_round(&mut raw, &raw_keys, &value, CHUNK).await?)
        } else {
            let r = raw_round(&mut raw, &raw_keys, &value, CHUNK).await?;
            (
                anykv_round(store.as_ref(), &anykv_keys, &value, CHUNK).await?,
                r,
            )
        };
        anykv_time += a;
        raw_time += r;
        paired.push(r.as_secs_f64() / a.as_secs_f64());
    }
    let pairs = chunks * CHUNK;
    let anykv_rate = rate(pairs, anykv_time);
    let raw_rate = rate(pairs, raw_time);
    paired.sort_by(f64::total_cmp);
    let paired_median = paired[paired.len() / 2];

    println!();
    println!(
        "sequential put+get, {pairs} pairs per client in {chunks} interleaved chunks, \
         {VALUE_SIZE}-byte values, {base}"
    );
    println!("{:<30} {:>12} {:>12}", "client", "ops/s", "pairs/s");
    println!(
        "{:<30} {:>12.0} {:>12.0}",
        "anykv (put + get)",
        anykv_rate * 2.0,
        anykv_rate
    );
    println!(
        "{:<30} {:>12.0} {:>12.0}",
        "raw redis (SET + GET)",
        raw_rate * 2.0,
        raw_rate
    );
    println!(
        "{:<30} {:>12.3}",
        "ratio anykv / raw (totals)",
        anykv_rate / raw_rate
    );
    println!(
        "{:<30} {:>12.3}",
        "ratio, median of chunk pairs", paired_median
    );

    store.delete_tree("").await?;
    let _: () = redis::cmd("DEL")
        .arg(&raw_keys)
        .query_async(&mut raw)
        .await?;
    store.close().await?;
    Ok(())
}

async fn anykv_round(
    store: &dyn Store,
    keys: &[String],
    value: &Bytes,
    ops: usize,
) -> anykv::Result<Duration> {
    let start = Instant::now();
    for i in 0..ops {
        let key = &keys[i % keys.len()];
        store.put(key, value.clone(), PutOptions::new()).await?;
        let got = store.get(key).await?;
        std::hint::black_box(got);
    }
    Ok(start.elapsed())
}

async fn raw_round(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
    value: &Bytes,
    ops: usize,
) -> redis::RedisResult<Duration> {
    let start = Instant::now();
    for i in 0..ops {
        let key = &keys[i % keys.len()];
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value.as_ref())
            .query_async(conn)
            .await?;
        let got: Vec<u8> = redis::cmd("GET").arg(key).query_async(conn).await?;
        std::hint::black_box(got);
    }
    Ok(start.elapsed())
}

fn rate(ops: usize, took: Duration) -> f64 {
    ops as f64 / took.as_secs_f64()
}
