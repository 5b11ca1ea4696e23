//! Sequential put+get against the Consul agent at `ANYKV_TEST_CONSUL_URL`,
//! through anykv and through the same HTTP calls made directly with reqwest,
//! in one run, interleaved pair by pair so both see the same agent and machine load.
//!
//! The calls per pair, on both sides: `PUT /v1/txn` with one `set` operation
//! (base64 value, `Flags`), then `GET /v1/kv/<key>`. anykv also decodes the
//! answers (the new `ModifyIndex`, the JSON entry, the base64 value); the raw
//! side only checks the status and reads the body.
//!
//! `cargo bench -p anykv --features consul --bench consul`
//! (`ANYKV_BENCH_PAIRS`, default 5000, sets the pairs per side.)
//!
//! Both the throughput over all pairs and the one of the median pair are
//! printed: on a shared machine a few pairs that waited for a CPU dominate
//! the totals, the median does not.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::time::{Duration, Instant};

use anykv::{Bytes, PutOptions, Store};
use base64::Engine as _;

const VALUE_LEN: usize = 64;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("value-{i:08}-").into_bytes();
    v.resize(VALUE_LEN, b'x');
    v
}

/// The same requests anykv makes, built and sent by hand.
struct Raw {
    client: reqwest::Client,
    txn_url: String,
    kv_url: String,
    key: String,
}

impl Raw {
    async fn put(&self, i: usize) -> Result<(), String> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(value(i));
        let body = format!(
            r#"[{{"KV":{{"Verb":"set","Key":"{}","Flags":{i},"Value":"{encoded}"}}}}]"#,
            self.key
        );
        let response = self
            .client
            .put(&self.txn_url)
            .timeout(Duration::from_secs(10))
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() || body.is_empty() {
            return Err(format!("txn: {status}"));
        }
        Ok(())
    }

    async fn get(&self) -> Result<(), String> {
        let response = self
            .client
            .get(&self.kv_url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() || body.is_empty() {
            return Err(format!("get: {status}"));
        }
        Ok(())
    }
}

async fn anykv_pair(store: &dyn Store, i: usize) -> anykv::Result<Duration> {
    let expected = Bytes::from(value(i));
    let start = Instant::now();
    store.put("k", expected.clone(), PutOptions::new()).await?;
    let got = store.get("k").await?;
    let elapsed = start.elapsed();
    assert_eq!(got.value, expected);
    Ok(elapsed)
}

async fn raw_pair(raw: &Raw, i: usize) -> Result<Duration, String> {
    let start = Instant::now();
    raw.put(i).await?;
    raw.get().await?;
    Ok(start.elapsed())
}

/// Timings of one side.
struct Summary {
    total: Duration,
    count: usize,
    median: Duration,
    p90: Duration,
}

impl Summary {
    fn of(times: &mut [Duration]) -> Summary {
        times.sort_unstable();
        Summary {
            total: times.iter().sum(),
            count: times.len(),
            median: times[times.len() / 2],
            p90: times[times.len() * 9 / 10],
        }
    }

    fn row(&self, name: &str) {
        let all = self.count as f64 / self.total.as_secs_f64();
        let median = 1.0 / self.median.as_secs_f64();
        println!(
            "{name:<16} {:>14.0} {:>14.0} {:>14.0} {:>10.0} {:>10.0}",
            2.0 * all,
            2.0 * median,
            median,
            self.median.as_secs_f64() * 1e6,
            self.p90.as_secs_f64() * 1e6
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Ok(base) = std::env::var("ANYKV_TEST_CONSUL_URL") else {
        println!(
            "consul bench skipped: ANYKV_TEST_CONSUL_URL is not set (scripts/services.sh env)"
        );
        return Ok(());
    };
    let total = env_usize("ANYKV_BENCH_PAIRS", 5000).max(10);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let namespace = format!("anykv-bench/{}", std::process::id());
        let store = anykv::open(&format!("{base}/{namespace}")).await?;
        let origin = base.replacen("consul://", "http://", 1);
        let origin = origin.trim_end_matches('/');
        let key = format!("{namespace}/raw");
        let raw = Raw {
            // The same client settings as the backend's.
            client: reqwest::Client::builder()
                .use_rustls_tls()
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .pool_max_idle_per_host(1)
                .build()?,
            txn_url: format!("{origin}/v1/txn?"),
            kv_url: format!("{origin}/v1/kv/{key}?"),
            key,
        };
        // Warm up connections and the agent.
        for i in 0..200 {
            anykv_pair(&*store, i).await?;
            raw_pair(&raw, i).await?;
        }
        // Pair by pair, alternating who goes first, so load from anything
        // else on the machine falls on both sides alike.
        let (mut anykv_times, mut raw_times) = (Vec::with_capacity(total), Vec::with_capacity(total));
        for i in 0..total {
            if i % 2 == 0 {
                anykv_times.push(anykv_pair(&*store, i).await?);
                raw_times.push(raw_pair(&raw, i).await?);
            } else {
                raw_times.push(raw_pair(&raw, i).await?);
                anykv_times.push(anykv_pair(&*store, i).await?);
            }
        }
        println!(
            "consul sequential put+get (PUT /v1/txn + GET /v1/kv), {VALUE_LEN} B values, {total} pairs per side, interleaved"
        );
        println!(
            "{:<16} {:>14} {:>14} {:>14} {:>10} {:>10}",
            "", "ops/s (all)", "ops/s (median)", "pairs/s (med)", "p50 us", "p90 us"
        );
        let a = Summary::of(&mut anykv_times);
        let r = Summary::of(&mut raw_times);
        a.row("anykv");
        r.row("reqwest (raw)");
        println!(
            "ratio anykv/raw: {:.3} (median pair), {:.3} (all pairs, includes scheduler stalls)",
            r.median.as_secs_f64() / a.median.as_secs_f64(),
            r.total.as_secs_f64() / a.total.as_secs_f64(),
        );
        store.delete_tree("").await?;
        store.close().await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
