//! Sequential put+get through anykv and through the raw etcd-client, on the
//! same server in the same run:
//!
//! ```text
//! eval "$(scripts/services.sh env)"
//! cargo bench -p anykv --features etcd --bench etcd
//! ```
//!
//! One op is a `put` followed by a `get` of the same key (64-byte values,
//! 100 distinct keys). The two clients take turns op by op, in alternating
//! order, so that drift in the server's or the machine's speed (fsync, other
//! load) hits both alike; the ratio is anykv's ops/s over the raw client's.
//!
//! Without `ANYKV_TEST_ETCD_URL` it says so and exits. Run without `--bench`
//! (as `cargo test --all-targets` does) it only makes a few ops of each.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anykv::{Bytes, PutOptions, Store, StoreUrl};

const VALUE_SIZE: usize = 64;
const KEYS: usize = 100;

fn main() {
    let Ok(url) = std::env::var("ANYKV_TEST_ETCD_URL") else {
        eprintln!("etcd bench skipped: ANYKV_TEST_ETCD_URL is not set (eval \"$(scripts/services.sh env)\")");
        return;
    };
    let full = std::env::args().any(|a| a == "--bench");
    let (ops, warmup) = if full { (10_000, 500) } else { (20, 5) };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("etcd bench: no runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(&url, ops, warmup)) {
        eprintln!("etcd bench failed: {e}");
        std::process::exit(1);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn run(url: &str, ops: usize, warmup: usize) -> Result<(), BoxError> {
    let endpoints = StoreUrl::parse(url)?.endpoints(2379)?;
    let namespace = format!("anykv-bench/{}", std::process::id());
    let base = url.split('?').next().unwrap_or(url).trim_end_matches('/');
    let store: Arc<dyn Store> = anykv::open(&format!("{base}/{namespace}")).await?;
    let mut raw = etcd_client::Client::connect(&endpoints, None)
        .await?
        .kv_client();
    let value = Bytes::from(vec![b'v'; VALUE_SIZE]);
    let keys: Vec<String> = (0..KEYS).map(|i| format!("key-{i}")).collect();
    let raw_keys: Vec<String> = keys.iter().map(|k| format!("{namespace}/{k}")).collect();

    let mut anykv_times = Vec::with_capacity(ops);
    let mut raw_times = Vec::with_capacity(ops);
    for i in 0..warmup + ops {
        let key = &keys[i % KEYS];
        let raw_key = raw_keys[i % KEYS].as_str();
        // One op of each, in alternating order, so that drift in the
        // server's or the machine's speed hits both alike.
        let anykv_op = || async {
            let start = Instant::now();
            store.put(key, value.clone(), PutOptions::new()).await?;
            let got = store.get(key).await?;
            let took = start.elapsed();
            assert_eq!(got.value.len(), VALUE_SIZE);
            Ok::<_, BoxError>(took)
        };
        let (a, r) = if i % 2 == 0 {
            let a = anykv_op().await?;
            (a, raw_op(&mut raw, raw_key, &value).await?)
        } else {
            let r = raw_op(&mut raw, raw_key, &value).await?;
            (anykv_op().await?, r)
        };
        if i >= warmup {
            anykv_times.push(a);
            raw_times.push(r);
        }
    }
    store.delete_tree("").await?;
    store.close().await?;

    let anykv = Stats::of(&mut anykv_times);
    let raw = Stats::of(&mut raw_times);
    let out = format!(
        "etcd: sequential put+get (1 op = put + get of one key), {VALUE_SIZE}-byte values, \
         {ops} ops per client interleaved one by one, server {}\n\
         {:<16} {:>10} {:>12} {:>12} {:>12}\n\
         {}\n{}\n\
         ratio anykv / raw (ops/s): {:.3}   (median latency raw / anykv: {:.3})\n",
        endpoints.join(","),
        "client",
        "ops/s",
        "mean us/op",
        "median us",
        "p99 us",
        raw.row("raw etcd-client"),
        anykv.row("anykv"),
        anykv.rate / raw.rate,
        raw.median / anykv.median,
    );
    let mut stdout = std::io::stdout();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

async fn raw_op(
    raw: &mut etcd_client::KvClient,
    key: &str,
    value: &[u8],
) -> Result<Duration, BoxError> {
    let start = Instant::now();
    raw.put(key, value, None).await?;
    let got = raw.get(key, None).await?;
    let took = start.elapsed();
    assert_eq!(
        got.kvs().first().map(|kv| kv.value().len()),
        Some(VALUE_SIZE)
    );
    Ok(took)
}

struct Stats {
    rate: f64,
    mean: f64,
    median: f64,
    p99: f64,
}

impl Stats {
    fn of(times: &mut [Duration]) -> Stats {
        times.sort();
        let total: Duration = times.iter().sum();
        let at = |q: f64| {
            let i = ((times.len() as f64 - 1.0) * q).round() as usize;
            times.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
        };
        Stats {
            rate: times.len() as f64 / total.as_secs_f64(),
            mean: total.as_secs_f64() * 1e6 / times.len() as f64,
            median: at(0.5),
            p99: at(0.99),
        }
    }

    fn row(&self, name: &str) -> String {
        format!(
            "{name:<16} {:>10.0} {:>12.1} {:>12.1} {:>12.1}",
            self.rate, self.mean, self.median, self.p99
        )
    }
}
