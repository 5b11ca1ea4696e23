//! anykv against each backend's raw client, on the real servers, in one run.
//!
//! ```text
//! scripts/bench.sh                       # starts the servers, runs this, writes docs/
//! eval "$(scripts/services.sh env)"      # or by hand, against running servers:
//! cargo bench -p anykv-store-tests --features full --bench backends -- [--quick] [--backends etcd,redis] [--out docs]
//! ```
//!
//! Per backend (memory always; the others when their `ANYKV_TEST_*_URL` is
//! set, as `scripts/services.sh env` prints them):
//!
//! 1. sequential put+get through `Arc<dyn Store>` and through the raw client;
//! 2. the same from 64 concurrent tasks through one handle / one client;
//! 3. watch latency, from `put` returning to the watcher's stream yielding it;
//!    and `watch_tree` latency the same way, with 100, 3,000 and 30,000 keys
//!    under the prefix (`--only-watch-tree` runs this item alone; in a full
//!    run it comes last, after item 7, as its bulk writes slow what follows);
//! 4. lock acquire+release uncontended, and handover from `unlock` to the
//!    next waiter's `lock()` returning, with 2 and with 50 waiters;
//! 5. leadership handover, from `resign()` to the next leader's elected event,
//!    with 2 and 50 candidates;
//! 6. resident-memory growth per 1,000 open watches and per 1,000 candidates,
//!    each measured in a fresh child process.
//!
//! The client side runs on one current-thread tokio runtime, anykv and the
//! raw clients alike, so that on a small machine the servers keep the other
//! cores. Figures and targets go to stdout and, with `--out DIR`, to
//! `DIR/benchmarks.md` and `DIR/benchmarks.svg`. The exit status is non-zero
//! when a measurement failed (a missed target is reported, not an error).

// A benchmark's output is its report.
#![allow(clippy::print_stdout)]

mod handover;
mod measure;
mod raw;
mod recipes;
mod report;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anykv::Store;

use crate::measure::{Latency, Throughput};
use crate::raw::Raw;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A target a figure is held against.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    AtLeast(f64),
    AtMost(f64),
}

/// Waiter / candidate counts for items 4 and 5.
pub(crate) const CROWDS: [usize; 2] = [2, 50];

/// One backend's figures; `None` where the item failed (see `failures`)
/// or does not apply.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    pub(crate) backend: &'static str,
    pub(crate) sequential: Option<Throughput>,
    pub(crate) concurrent: Option<Throughput>,
    pub(crate) watch: Option<Latency>,
    /// Item 3b: `watch_tree` put→seen latency by number of keys under the
    /// prefix.
    pub(crate) watch_tree: Vec<(usize, Latency)>,
    pub(crate) lock: Option<Latency>,
    pub(crate) lock_handover: Vec<(usize, Latency)>,
    /// The raw-client handover recipe ([`handover`]), measured in the same
    /// A-B-B-A rounds as `lock_handover`; networked backends only.
    pub(crate) raw_handover: Vec<(usize, Latency)>,
    pub(crate) leader_handover: Vec<(usize, Latency)>,
    /// Item 7: queue push→pop latency.
    pub(crate) queue_latency: Option<Latency>,
    /// Item 7: queue drain rate (items/s) by number of consumers.
    pub(crate) queue_rate: Vec<(usize, f64)>,
    /// Item 7: lateness of the first cron firing after a handover.
    pub(crate) cron_gap: Option<Latency>,
    /// Item 7: discovery register→seen by a watcher on another handle.
    pub(crate) discovery: Option<Latency>,
    pub(crate) watches_kib: Option<f64>,
    pub(crate) candidates_kib: Option<f64>,
    /// Redis only: the server's own time per put+get pair during item 1,
    /// anykv (`EVALSHA` + `HMGET`) and raw (`SET` + `GET`), in µs.
    pub(crate) server_us: Option<(f64, f64)>,
    pub(crate) failures: Vec<String>,
}

/// How many of each thing one run does.
#[derive(Clone, Copy, Debug)]
struct Counts {
    sequential_pairs: usize,
    concurrent_per_task: usize,
    watch_writes: usize,
    tree_sizes: &'static [usize],
    tree_writes: usize,
    /// Only item 3b.
    tree_only: bool,
    /// Only items 4b and 5 (handovers).
    handover_only: bool,
    lock_rounds: usize,
    lock_handovers: usize,
    leader_handovers: usize,
    memory_items: usize,
    queue_rounds: usize,
    queue_items: usize,
    cron_handovers: usize,
}

impl Counts {
    fn new(backend: &str, quick: bool) -> Counts {
        let (sequential_pairs, concurrent_per_task) = match backend {
            "memory" => (200_000, 1_000),
            "redis" => (20_000, 300),
            "consul" => (3_000, 60),
            _ => (4_000, 60),
        };
        let full = Counts {
            sequential_pairs,
            concurrent_per_task,
            watch_writes: 1_000,
            tree_sizes: &[100, 3_000, 30_000],
            tree_writes: 200,
            tree_only: false,
            handover_only: false,
            lock_rounds: 500,
            lock_handovers: 200,
            leader_handovers: 200,
            memory_items: 1_000,
            queue_rounds: 200,
            queue_items: 500,
            cron_handovers: 10,
        };
        if !quick {
            return full;
        }
        Counts {
            sequential_pairs: full.sequential_pairs / 10,
            concurrent_per_task: full.concurrent_per_task / 5,
            watch_writes: 100,
            tree_sizes: &[100, 1_000, 3_000],
            tree_writes: 20,
            tree_only: false,
            handover_only: false,
            lock_rounds: 50,
            lock_handovers: 20,
            leader_handovers: 20,
            memory_items: 100,
            queue_rounds: 20,
            queue_items: 100,
            cron_handovers: 3,
        }
    }
}

/// The backends in report order, with the variable naming their server.
const BACKENDS: [(&str, Option<&str>); 5] = [
    ("memory", None),
    ("etcd", Some("ANYKV_TEST_ETCD_URL")),
    ("consul", Some("ANYKV_TEST_CONSUL_URL")),
    ("zookeeper", Some("ANYKV_TEST_ZK_URL")),
    ("redis", Some("ANYKV_TEST_REDIS_URL")),
];

struct Args {
    quick: bool,
    tree_only: bool,
    handover_only: bool,
    only: Option<Vec<String>>,
    out: Option<PathBuf>,
    child: Option<(String, String, String)>,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args {
        quick: false,
        tree_only: false,
        handover_only: false,
        only: None,
        out: None,
        child: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--only-watch-tree" => args.tree_only = true,
            "--only-handover" => args.handover_only = true,
            "--backends" => {
                let list = it.next().ok_or("--backends needs a list")?;
                args.only = Some(list.split(',').map(str::to_owned).collect());
            }
            "--out" => args.out = Some(it.next().ok_or("--out needs a directory")?.into()),
            "--child" => {
                let kind = it.next().ok_or("--child needs a kind")?;
                let backend = it.next().ok_or("--child needs a backend")?;
                let count = it.next().ok_or("--child needs a count")?;
                args.child = Some((kind, backend, count));
            }
            // What cargo passes to every bench binary.
            "--bench" => {}
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok(args)
}

fn main() {
    let result = parse_args().and_then(|args| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        match &args.child {
            Some((kind, backend, count)) => runtime.block_on(child(kind, backend, count)),
            None => runtime.block_on(run(&args)),
        }
    });
    if let Err(e) = result {
        eprintln!("benchmark failed: {e}");
        std::process::exit(1);
    }
}

/// The server URL of `backend`, or why there is none.
fn server_url(backend: &str) -> Result<String, String> {
    match BACKENDS.iter().find(|(name, _)| *name == backend) {
        Some((_, None)) => Ok("memory://".to_owned()),
        Some((_, Some(var))) => std::env::var(var)
            .map_err(|_| format!("{var} is not set (eval \"$(scripts/services.sh env)\")")),
        None => Err(format!("unknown backend {backend}")),
    }
}

/// `base` with `namespace` as its path, keeping any query.
fn with_namespace(base: &str, namespace: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (base, None),
    };
    let mut url = format!("{}/{namespace}", head.trim_end_matches('/'));
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// Opens handles on one backend, all under one namespace; for memory they
/// share one named store.
struct Opener {
    base: String,
    namespace: String,
}

impl Opener {
    fn new(backend: &str, base: String) -> Opener {
        let namespace = format!("anykv-bench-{}-{backend}", std::process::id());
        let base = if backend == "memory" {
            format!("memory://{namespace}")
        } else {
            base
        };
        Opener { base, namespace }
    }

    async fn open(&self) -> Result<Arc<dyn Store>, BoxError> {
        Ok(anykv::open(&with_namespace(&self.base, &self.namespace)).await?)
    }

    async fn open_many(&self, n: usize) -> Result<Vec<Arc<dyn Store>>, BoxError> {
        let mut handles = Vec::with_capacity(n);
        for _ in 0..n {
            handles.push(self.open().await?);
        }
        Ok(handles)
    }
}

async fn close_all(handles: Vec<Arc<dyn Store>>) {
    for handle in handles {
        let _ = handle.close().await;
    }
}

async fn run(args: &Args) -> Result<(), BoxError> {
    let started = std::time::Instant::now();
    let mut all = Vec::new();
    for (backend, _) in BACKENDS {
        if let Some(only) = &args.only {
            if !only.iter().any(|b| b == backend) {
                continue;
            }
        }
        let base = match server_url(backend) {
            Ok(base) => base,
            Err(why) => {
                eprintln!("{backend}: skipped, {why}");
                continue;
            }
        };
        eprintln!("{backend}: measuring");
        let figures = measure_backend(
            backend,
            base,
            Counts {
                tree_only: args.tree_only,
                handover_only: args.handover_only,
                ..Counts::new(backend, args.quick)
            },
        )
        .await;
        for failure in &figures.failures {
            eprintln!("{backend}: {failure}");
        }
        println!("{}", report::tables(std::slice::from_ref(&figures)));
        all.push(figures);
    }
    if all.is_empty() {
        return Err("no backend to measure".into());
    }
    let took = started.elapsed();
    let document = report::document(&all, args.quick, took);
    println!("{}", report::targets(&all));
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("benchmarks.md"), document)?;
        std::fs::write(dir.join("benchmarks.svg"), report::chart(&all))?;
        eprintln!(
            "wrote {} and {}",
            dir.join("benchmarks.md").display(),
            dir.join("benchmarks.svg").display()
        );
    }
    let failed: usize = all.iter().map(|f| f.failures.len()).sum();
    if failed > 0 {
        return Err(format!("{failed} measurement(s) failed; see above").into());
    }
    Ok(())
}

/// Runs every item on one backend; a failed item is recorded and the rest
/// still run.
/// Server time per put+get pair between two `INFO commandstats` readings:
/// anykv's `EVALSHA` + `HMGET` against the raw `SET` + `GET`.
fn server_time_per_pair(
    before: &HashMap<String, (u64, u64)>,
    after: &HashMap<String, (u64, u64)>,
) -> Option<(f64, f64)> {
    let per_call = |name: &str| {
        let (calls0, usec0) = before.get(name).copied().unwrap_or((0, 0));
        let (calls1, usec1) = after.get(name).copied()?;
        let calls = calls1.checked_sub(calls0).filter(|&c| c > 0)?;
        Some(usec1.saturating_sub(usec0) as f64 / calls as f64)
    };
    Some((
        per_call("evalsha")? + per_call("hmget")?,
        per_call("set")? + per_call("get")?,
    ))
}

/// Item 3b, per tree size.
fn keep<T>(failures: &mut Vec<String>, item: &str, result: Result<T, BoxError>) -> Option<T> {
    result
        .map_err(|e| failures.push(format!("{item}: {e}")))
        .ok()
}

/// Items 1 to 4a.
async fn ordinary_items(
    backend: &str,
    opener: &Opener,
    store: &Arc<dyn Store>,
    raw: &mut Option<Raw>,
    counts: Counts,
    figures: &mut Figures,
) {
    let before = match raw.as_mut() {
        Some(raw) => raw.redis_command_time().await.ok().flatten(),
        None => None,
    };
    let f = &mut figures.failures;
    eprintln!("{backend}:   1. sequential put+get");
    figures.sequential = keep(
        f,
        "sequential put+get",
        measure::sequential(
            store.as_ref(),
            raw.as_ref(),
            &opener.namespace,
            counts.sequential_pairs,
        )
        .await,
    );
    if let (Some(before), Some(raw)) = (before, raw.as_mut()) {
        if let Ok(Some(after)) = raw.redis_command_time().await {
            figures.server_us = server_time_per_pair(&before, &after);
        }
    }
    let f = &mut figures.failures;
    eprintln!("{backend}:   2. concurrent put+get");
    figures.concurrent = keep(
        f,
        "concurrent put+get",
        measure::concurrent(
            store,
            raw.as_ref(),
            &opener.namespace,
            counts.concurrent_per_task,
        )
        .await,
    );
    eprintln!("{backend}:   3. watch latency");
    figures.watch = keep(
        f,
        "watch latency",
        async {
            let watcher = opener.open().await?;
            let latency =
                measure::watch_latency(store.as_ref(), watcher.as_ref(), counts.watch_writes).await;
            let _ = watcher.close().await;
            latency
        }
        .await,
    );
    let f = &mut figures.failures;
    eprintln!("{backend}:   4. locks");
    figures.lock = keep(
        f,
        "uncontended lock",
        measure::lock_uncontended(store.as_ref(), counts.lock_rounds).await,
    );
}

async fn watch_tree_item(
    backend: &str,
    opener: &Opener,
    store: &Arc<dyn Store>,
    counts: Counts,
    figures: &mut Figures,
) {
    // Every size gets a filled prefix and a watcher on a handle of its own;
    // then the writes go round the sizes, one each in turn.
    let mut probes = Vec::new();
    let mut watchers = Vec::new();
    for &keys in counts.tree_sizes {
        eprintln!("{backend}:   3b. watch_tree latency, {keys} keys: filling");
        let started = async {
            let watcher = opener.open().await?;
            let probe = measure::TreeProbe::start(store.as_ref(), watcher.as_ref(), keys).await;
            Ok::<_, BoxError>((watcher, probe))
        }
        .await;
        match started {
            Ok((watcher, Ok(probe))) => {
                watchers.push(watcher);
                probes.push(probe);
            }
            Ok((watcher, Err(e))) => {
                let _ = watcher.close().await;
                let _ = store.delete_tree(&format!("tree{keys}")).await;
                figures
                    .failures
                    .push(format!("watch_tree latency, {keys} keys: {e}"));
            }
            Err(e) => figures
                .failures
                .push(format!("watch_tree latency, {keys} keys: {e}")),
        }
    }
    eprintln!(
        "{backend}:   3b. watch_tree latency, {} writes per size, sizes alternating",
        counts.tree_writes
    );
    for i in 0..counts.tree_writes {
        let mut k = 0;
        while k < probes.len() {
            match probes[k].sample(store.as_ref(), i).await {
                Ok(()) => k += 1,
                Err(e) => {
                    let failed = probes.remove(k);
                    figures
                        .failures
                        .push(format!("watch_tree latency, {} keys: {e}", failed.keys));
                    let _ = failed.finish(store.as_ref()).await;
                }
            }
        }
    }
    for mut probe in probes {
        let samples = std::mem::take(&mut probe.samples);
        let keys = probe.keys;
        let finished = probe.finish(store.as_ref()).await;
        match measure::Latency::of(samples) {
            Ok(latency) if finished.is_ok() => figures.watch_tree.push((keys, latency)),
            Ok(_) => figures.failures.push(format!(
                "watch_tree latency, {keys} keys: cleanup failed: {}",
                finished.err().map(|e| e.to_string()).unwrap_or_default()
            )),
            Err(e) => figures
                .failures
                .push(format!("watch_tree latency, {keys} keys: {e}")),
        }
    }
    for watcher in watchers {
        let _ = watcher.close().await;
    }
}

async fn measure_backend(backend: &'static str, base: String, counts: Counts) -> Figures {
    let mut figures = Figures {
        backend,
        ..Figures::default()
    };
    let opener = Opener::new(backend, base.clone());
    let store = match opener.open().await {
        Ok(store) => store,
        Err(e) => {
            figures.failures.push(format!("open: {e}"));
            return figures;
        }
    };
    let mut raw = None;
    if backend != "memory" {
        match Raw::connect(backend, &base).await {
            Ok(client) => match client.prepare(&opener.namespace, measure::KEYS).await {
                Ok(()) => raw = Some(client),
                Err(e) => figures.failures.push(format!("raw client setup: {e}")),
            },
            Err(e) => figures.failures.push(format!("raw client: {e}")),
        }
    }

    if counts.tree_only {
        watch_tree_item(backend, &opener, &store, counts, &mut figures).await;
        return figures;
    }
    if !counts.handover_only {
        ordinary_items(backend, &opener, &store, &mut raw, counts, &mut figures).await;
    }
    let f = &mut figures.failures;
    for waiters in CROWDS {
        // A-B-B-A: anykv, raw, raw, anykv, a quarter of the handovers each,
        // so both see the same machine load.
        let mut samples: (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
        let mut failed = None;
        let per_round = (counts.lock_handovers / 4).max(1);
        for round in 0..4 {
            let anykv_round = round == 0 || round == 3;
            if !anykv_round && backend == "memory" {
                continue;
            }
            let result = async {
                if anykv_round {
                    let handles = opener.open_many(waiters + 1).await?;
                    let got = measure::lock_handover(&handles, per_round).await;
                    close_all(handles).await;
                    got
                } else {
                    let mut participants = Vec::with_capacity(waiters + 1);
                    for i in 0..=waiters {
                        participants.push(
                            handover::RawLock::connect(
                                backend,
                                &base,
                                &opener.namespace,
                                &format!("handover-{waiters}"),
                                i,
                            )
                            .await?,
                        );
                    }
                    handover::handover(participants, per_round).await
                }
            }
            .await;
            match result {
                Ok(got) if anykv_round => samples.0.extend(got),
                Ok(got) => samples.1.extend(got),
                Err(e) => {
                    let side = if anykv_round { "lock" } else { "raw" };
                    failed = Some(format!("{side} handover, {waiters} waiters: {e}"));
                    break;
                }
            }
        }
        if let Some(failure) = failed {
            f.push(failure);
            continue;
        }
        if let Some(latency) = keep(f, "lock handover", Latency::of(samples.0)) {
            figures.lock_handover.push((waiters, latency));
        }
        if backend != "memory" {
            if let Some(latency) = keep(f, "raw handover", Latency::of(samples.1)) {
                figures.raw_handover.push((waiters, latency));
            }
        }
    }
    eprintln!("{backend}:   5. leadership");
    for candidates in CROWDS {
        let result = async {
            let handles = opener.open_many(candidates).await?;
            let latency = measure::leadership_handover(&handles, counts.leader_handovers).await;
            close_all(handles).await;
            latency
        }
        .await;
        if let Some(latency) = keep(f, &format!("leadership, {candidates} candidates"), result) {
            figures.leader_handover.push((candidates, latency));
        }
    }
    if counts.handover_only {
        return figures;
    }
    eprintln!("{backend}:   7. recipes");
    let result = async {
        let handles = opener.open_many(2).await?;
        let got =
            recipes::discovery_latency(handles[0].clone(), handles[1].clone(), counts.queue_rounds)
                .await;
        close_all(handles).await;
        got
    }
    .await;
    figures.discovery = keep(f, "discovery register→seen", result);
    let result = async {
        let handles = opener.open_many(2).await?;
        let got =
            recipes::queue_latency(handles[0].clone(), handles[1].clone(), counts.queue_rounds)
                .await;
        close_all(handles).await;
        got
    }
    .await;
    figures.queue_latency = keep(f, "queue push→pop", result);
    for consumers in [1, 16] {
        let result = async {
            let handles = opener.open_many(consumers + 1).await?;
            let producer = handles[0].clone();
            let got =
                recipes::queue_throughput(producer, handles[1..].to_vec(), counts.queue_items)
                    .await;
            close_all(handles).await;
            got
        }
        .await;
        if let Some(rate) = keep(f, &format!("queue drain, {consumers} consumers"), result) {
            figures.queue_rate.push((consumers, rate));
        }
    }
    let result = async {
        let handles = opener.open_many(2).await?;
        let got = recipes::cron_handover_gap(
            [handles[0].clone(), handles[1].clone()],
            counts.cron_handovers,
        )
        .await;
        close_all(handles).await;
        got
    }
    .await;
    figures.cron_gap = keep(f, "cron handover gap", result);
    // Last of the timed items: its bulk write and delete of 30,000 keys
    // keeps etcd busy (compaction) long after, and would slow what follows.
    watch_tree_item(backend, &opener, &store, counts, &mut figures).await;
    if let Err(e) = store.delete_tree("").await {
        figures.failures.push(format!("cleanup: {e}"));
    }
    if let Some(mut raw) = raw {
        if let Err(e) = raw.cleanup(&opener.namespace, measure::KEYS).await {
            figures.failures.push(format!("raw cleanup: {e}"));
        }
    }
    let _ = store.close().await;

    eprintln!("{backend}:   6. memory");
    let f = &mut figures.failures;
    figures.watches_kib = keep(
        f,
        "memory per 1000 watches",
        memory_child("watches", backend, counts.memory_items),
    );
    figures.candidates_kib = keep(
        f,
        "memory per 1000 candidates",
        memory_child("candidates", backend, counts.memory_items),
    );
    figures
}

/// Runs item 6 in a fresh process, so allocations from earlier items do not
/// hide the growth.
fn memory_child(kind: &str, backend: &str, count: usize) -> Result<f64, BoxError> {
    let exe = std::env::current_exe()?;
    let output = std::process::Command::new(exe)
        .args(["--child", kind, backend, &count.to_string()])
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "child failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("KIB_PER_1000 "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("child printed no figure: {stdout}").into())
}

async fn child(kind: &str, backend: &str, count: &str) -> Result<(), BoxError> {
    let count: usize = count.parse()?;
    let base = server_url(backend)?;
    let opener = Opener::new(backend, base);
    let store = opener.open().await?;
    let figure = match kind {
        "watches" => measure::watches_memory(store.as_ref(), count).await,
        "candidates" => measure::candidates_memory(&store, count).await,
        other => Err(format!("unknown child kind {other}").into()),
    };
    let _ = store.delete_tree("").await;
    let _ = tokio::time::timeout(Duration::from_secs(30), store.close()).await;
    println!("KIB_PER_1000 {:.1}", figure?);
    Ok(())
}
