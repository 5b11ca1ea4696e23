//! Sequential put + get through anykv and through the raw `zookeeper-client`
//! on the same server, in the same run, the two taking turns pair by pair.
//!
//! ```text
//! eval "$(scripts/services.sh env)"
//! cargo bench -p anykv --features zookeeper --bench zookeeper
//! ```
//! Uses `ANYKV_TEST_ZK_URL`; `ANYKV_BENCH_OPS` x `ANYKV_BENCH_ROUNDS` (default
//! 1000 x 5) put+get pairs per client.

// A benchmark reports on stdout.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anykv::{PutOptions, Store};
use bytes::Bytes;
use zookeeper_client as zk;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us without
    // it and only wants to know that we build and start.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Ok(base) = std::env::var("ANYKV_TEST_ZK_URL") else {
        eprintln!("ANYKV_TEST_ZK_URL is not set (eval \"$(scripts/services.sh env)\"); nothing to measure");
        return;
    };
    let ops = env_usize("ANYKV_BENCH_OPS", 1000);
    let rounds = env_usize("ANYKV_BENCH_ROUNDS", 5);
    // One thread for the benchmark loop and both clients' session tasks:
    // fewer cross-thread wake-ups, so less scheduling noise in the ratio.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(&base, ops, rounds));
}

async fn run(base: &str, ops: usize, rounds: usize) {
    let namespace = format!("anykv-bench-{}", std::process::id());
    let store = anykv::open(&format!("{base}/{namespace}"))
        .await
        .expect("open anykv store");
    let hosts = base.trim_start_matches("zk://").trim_end_matches('/');
    let raw = zk::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(hosts)
        .await
        .expect("connect raw client");
    let raw_path = format!("/{namespace}-raw");
    let value = Bytes::from(vec![b'v'; 64]);
    raw.create(
        &raw_path,
        &value,
        &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
    )
    .await
    .expect("create raw znode");
    store
        .put("key", value.clone(), PutOptions::new())
        .await
        .expect("create anykv key");

    // Warm up both paths.
    for _ in 0..ops / 10 + 1 {
        anykv_pair(&*store, &value).await;
        raw_pair(&raw, &raw_path, &value).await;
    }

    // The two clients take turns pair by pair (ABBA order), so both see the
    // same server, disk and machine load.
    let mut ours = Samples::default();
    let mut theirs = Samples::default();
    for i in 0..ops * rounds {
        if i % 2 == 0 {
            ours.add(anykv_pair(&*store, &value).await);
            theirs.add(raw_pair(&raw, &raw_path, &value).await);
        } else {
            theirs.add(raw_pair(&raw, &raw_path, &value).await);
            ours.add(anykv_pair(&*store, &value).await);
        }
    }
    let n = ops * rounds;

    println!();
    println!(
        "ZooKeeper at {base}: one 64-byte key, {n} sequential put+get pairs per client, \
         the two clients alternating pair by pair"
    );
    println!(
        "ops/s from the total time (mean) and from the median latency (robust to a busy machine)"
    );
    println!();
    println!("| operation | anykv ops/s (mean) | raw ops/s (mean) | ratio | anykv ops/s (median) | raw ops/s (median) | ratio |");
    println!("|-----------|-------------------:|-----------------:|------:|---------------------:|-------------------:|------:|");
    for (name, pick) in [
        ("put", (|(p, _)| p) as fn((Duration, Duration)) -> Duration),
        ("get", |(_, g)| g),
        ("put+get", |(p, g)| p + g),
    ] {
        let per = if name == "put+get" { 2.0 } else { 1.0 };
        let mean = |s: &Samples| per * n as f64 / s.total(pick).as_secs_f64();
        let med = |s: &Samples| per / s.median(pick).as_secs_f64();
        let (am, rm, ad, rd) = (mean(&ours), mean(&theirs), med(&ours), med(&theirs));
        println!(
            "| {name:<9} | {am:>18.0} | {rm:>16.0} | {:>5.3} | {ad:>20.0} | {rd:>18.0} | {:>5.3} |",
            am / rm,
            ad / rd
        );
    }
    let both = |(p, g): (Duration, Duration)| p + g;
    println!();
    println!(
        "ratio anykv / raw (put+get): {:.3} by total time, {:.3} by median latency",
        theirs.total(both).as_secs_f64() / ours.total(both).as_secs_f64(),
        theirs.median(both).as_secs_f64() / ours.median(both).as_secs_f64(),
    );

    store.delete_tree("").await.expect("cleanup anykv keys");
    store.close().await.expect("close anykv store");
    raw.delete(&raw_path, None)
        .await
        .expect("cleanup raw znode");
}

/// (put, get) latencies of every pair.
#[derive(Default)]
struct Samples(Vec<(Duration, Duration)>);

impl Samples {
    fn add(&mut self, pair: (Duration, Duration)) {
        self.0.push(pair);
    }

    fn total(&self, pick: fn((Duration, Duration)) -> Duration) -> Duration {
        self.0.iter().map(|p| pick(*p)).sum()
    }

    fn median(&self, pick: fn((Duration, Duration)) -> Duration) -> Duration {
        let mut v: Vec<Duration> = self.0.iter().map(|p| pick(*p)).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }
}

/// One put and one get through anykv.
async fn anykv_pair(store: &dyn Store, value: &Bytes) -> (Duration, Duration) {
    let start = Instant::now();
    store
        .put("key", value.clone(), PutOptions::new())
        .await
        .expect("anykv put");
    let put = start.elapsed();
    let start = Instant::now();
    let got = store.get("key").await.expect("anykv get");
    let get = start.elapsed();
    assert_eq!(got.value.len(), value.len());
    (put, get)
}

/// One put and one get through the raw client.
async fn raw_pair(client: &zk::Client, path: &str, value: &Bytes) -> (Duration, Duration) {
    let start = Instant::now();
    client
        .set_data(path, value, None)
        .await
        .expect("raw set_data");
    let put = start.elapsed();
    let start = Instant::now();
    let (data, _) = client.get_data(path).await.expect("raw get_data");
    let get = start.elapsed();
    assert_eq!(data.len(), value.len());
    (put, get)
}
