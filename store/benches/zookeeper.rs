//! Sequential put + get through anykv and through the raw `zookeeper-client`
//! on the same server, in the same run, the two taking turns pair by pair.
//!
//! ```text
//! eval "$(scripts/services.sh env)"
//! cargo bench -p anykv --features zookeeper --bench zookeeper
//! ```
//! Uses `ANYKV_TEST_ZK_URL`; `ANYKV_BENCH_OPS` sets the put+get pairs per
//! round (default 1000), `ANYKV_BENCH_ROUNDS` the rounds (default 5).

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
    // same server, disk and machine load; the times are summed per client.
    let mut ours = Times::default();
    let mut theirs = Times::default();
    let mut round_ratios = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let (mut round_ours, mut round_theirs) = (Times::default(), Times::default());
        for i in 0..ops {
            if i % 2 == 0 {
                round_ours.add(anykv_pair(&*store, &value).await);
                round_theirs.add(raw_pair(&raw, &raw_path, &value).await);
            } else {
                round_theirs.add(raw_pair(&raw, &raw_path, &value).await);
                round_ours.add(anykv_pair(&*store, &value).await);
            }
        }
        round_ratios.push(round_theirs.total().as_secs_f64() / round_ours.total().as_secs_f64());
        ours.merge(&round_ours);
        theirs.merge(&round_theirs);
    }
    let n = ops * rounds;

    println!();
    println!(
        "ZooKeeper at {base}: one 64-byte key, {n} sequential put+get pairs per client, \
         the two clients alternating pair by pair"
    );
    println!();
    println!("| operation | anykv ops/s | raw zookeeper-client ops/s | ratio |");
    println!("|-----------|------------:|---------------------------:|------:|");
    for (name, a, r) in [
        ("put", ours.put, theirs.put),
        ("get", ours.get, theirs.get),
        ("put+get", ours.total(), theirs.total()),
    ] {
        let ops_of = |d: Duration| {
            let per_pair = if name == "put+get" { 2.0 } else { 1.0 };
            per_pair * n as f64 / d.as_secs_f64()
        };
        println!(
            "| {name:<9} | {:>11.0} | {:>26.0} | {:>5.3} |",
            ops_of(a),
            ops_of(r),
            r.as_secs_f64() / a.as_secs_f64()
        );
    }
    println!();
    println!(
        "ratio anykv / raw (put+get) = {:.3} (median of per-round ratios {:.3})",
        theirs.total().as_secs_f64() / ours.total().as_secs_f64(),
        median(&mut round_ratios)
    );

    store.delete_tree("").await.expect("cleanup anykv keys");
    store.close().await.expect("close anykv store");
    raw.delete(&raw_path, None)
        .await
        .expect("cleanup raw znode");
}

/// Time spent in puts and in gets.
#[derive(Default)]
struct Times {
    put: Duration,
    get: Duration,
}

impl Times {
    fn add(&mut self, (put, get): (Duration, Duration)) {
        self.put += put;
        self.get += get;
    }

    fn merge(&mut self, other: &Times) {
        self.put += other.put;
        self.get += other.get;
    }

    fn total(&self) -> Duration {
        self.put + self.get
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

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}
