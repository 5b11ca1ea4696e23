//! The measurements, each on one backend through `Arc<dyn Store>`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anykv::StoreExt;
use anykv::{LockOptions, PutOptions, Store};
use anykv_leadership::Candidate;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::handover;
use crate::raw::Raw;
use crate::{BoxError, Target};

/// Value size for the put+get items.
pub(crate) const VALUE_SIZE: usize = 100;
/// Keys the sequential item cycles through; the concurrent item gives each
/// task one of its own.
pub(crate) const KEYS: usize = 64;
/// Tasks in the concurrent item.
pub(crate) const TASKS: usize = 64;
/// Longest wait for any single event before the item is called failed.
const PATIENCE: Duration = Duration::from_secs(60);

/// Throughput of both sides of a put+get comparison.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Throughput {
    /// anykv, operations (a put or a get) per second.
    pub(crate) anykv: f64,
    /// The raw client, operations per second; `None` for memory.
    pub(crate) raw: Option<f64>,
    /// Median over back-to-back chunk pairs of raw time / anykv time.
    pub(crate) median_ratio: Option<f64>,
}

impl Throughput {
    /// anykv / raw by total time.
    pub(crate) fn ratio(&self) -> Option<f64> {
        self.raw.map(|raw| self.anykv / raw)
    }
}

/// Percentiles of a latency sample.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Latency {
    pub p50: Duration,
    pub p99: Duration,
}

impl Latency {
    pub(crate) fn of(mut samples: Vec<Duration>) -> Result<Latency, BoxError> {
        if samples.is_empty() {
            return Err("no samples".into());
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Ok(Latency {
            p50: at(0.50),
            p99: at(0.99),
        })
    }
}

fn value() -> Bytes {
    Bytes::from(vec![b'v'; VALUE_SIZE])
}

async fn patient<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T, BoxError> {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .map_err(|_| format!("{what}: nothing within {PATIENCE:?}").into())
}

async fn anykv_put_get(store: &dyn Store, key: &str, value: &Bytes) -> Result<(), BoxError> {
    store.put(key, value.clone(), PutOptions::new()).await?;
    let got = store.get(key).await?;
    if got.value != *value {
        return Err(format!("anykv get of {key} did not return the value written").into());
    }
    Ok(())
}

/// Runs one warm-up and then `rounds` timed rounds of each side, in A-B-B-A
/// order so both sides see the same machine load; each round does `ops`
/// operations. Without a raw side, anykv alone.
async fn compare<A, AF, R, RF>(
    rounds: usize,
    ops: usize,
    mut anykv: A,
    raw: Option<R>,
) -> Result<Throughput, BoxError>
where
    A: FnMut() -> AF,
    AF: std::future::Future<Output = Result<Duration, BoxError>>,
    R: FnMut() -> RF,
    RF: std::future::Future<Output = Result<Duration, BoxError>>,
{
    anykv().await?;
    let Some(mut raw) = raw else {
        let mut total = Duration::ZERO;
        for _ in 0..rounds {
            total += anykv().await?;
        }
        return Ok(Throughput {
            anykv: rate(ops * rounds, total),
            raw: None,
            median_ratio: None,
        });
    };
    raw().await?;
    let (mut anykv_total, mut raw_total) = (Duration::ZERO, Duration::ZERO);
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (a, r) = if round % 2 == 0 {
            let a = anykv().await?;
            (a, raw().await?)
        } else {
            let r = raw().await?;
            (anykv().await?, r)
        };
        anykv_total += a;
        raw_total += r;
        ratios.push(r.as_secs_f64() / a.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    Ok(Throughput {
        anykv: rate(ops * rounds, anykv_total),
        raw: Some(rate(ops * rounds, raw_total)),
        median_ratio: ratios.get(ratios.len() / 2).copied(),
    })
}

/// Item 1: `pairs` sequential put+get pairs on each side, in chunks of 100
/// (see [`compare`]).
pub(crate) async fn sequential(
    store: &dyn Store,
    raw: Option<&Raw>,
    namespace: &str,
    pairs: usize,
) -> Result<Throughput, BoxError> {
    const CHUNK: usize = 100;
    let value = value();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("seq/k{i}")).collect();
    let raw_keys: Vec<String> = raw
        .map(|raw| (0..KEYS).map(|i| raw.key(namespace, i)).collect())
        .unwrap_or_default();
    let anykv_chunk = || async {
        let start = Instant::now();
        for i in 0..CHUNK {
            anykv_put_get(store, &keys[i % KEYS], &value).await?;
        }
        Ok::<_, BoxError>(start.elapsed())
    };
    let raw_chunk = raw.map(|raw| {
        let (keys, value) = (&raw_keys, &value);
        move || {
            let mut raw = raw.clone();
            async move {
                let start = Instant::now();
                for i in 0..CHUNK {
                    raw.put_get(&keys[i % KEYS], value).await?;
                }
                Ok::<_, BoxError>(start.elapsed())
            }
        }
    });
    compare((pairs / CHUNK).max(2), CHUNK * 2, anykv_chunk, raw_chunk).await
}

/// Item 2: [`TASKS`] tasks, each doing `per_task` put+get pairs on a key of
/// its own, all through one handle (or one raw client), in 6 rounds per side
/// (see [`compare`]).
pub(crate) async fn concurrent(
    store: &Arc<dyn Store>,
    raw: Option<&Raw>,
    namespace: &str,
    per_task: usize,
) -> Result<Throughput, BoxError> {
    let value = value();
    let anykv_round = || async {
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..TASKS {
            let store = Arc::clone(store);
            let value = value.clone();
            tasks.spawn(async move {
                let key = format!("conc/k{t}");
                for _ in 0..per_task {
                    anykv_put_get(store.as_ref(), &key, &value).await?;
                }
                Ok::<_, BoxError>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok::<_, BoxError>(start.elapsed())
    };
    let raw_round = raw.map(|raw| {
        let value = &value;
        move || async move {
            let start = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for t in 0..TASKS {
                let mut raw = raw.clone();
                let value = value.clone();
                let key = raw.key(namespace, t);
                tasks.spawn(async move {
                    for _ in 0..per_task {
                        raw.put_get(&key, &value).await?;
                    }
                    Ok::<_, BoxError>(())
                });
            }
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            Ok::<_, BoxError>(start.elapsed())
        }
    });
    compare(6, TASKS * per_task * 2, anykv_round, raw_round).await
}

/// Item 3: a watcher on its own handle; `writes` puts, one at a time, each
/// timed from the moment `put` returned to the moment the watcher's stream
/// yielded that version. An event that arrives before the writer saw the
/// reply counts as 0.
pub(crate) async fn watch_latency(
    writer: &dyn Store,
    watcher: &dyn Store,
    writes: usize,
) -> Result<Latency, BoxError> {
    let key = "watched";
    writer
        .put(key, Bytes::from_static(b"0"), PutOptions::new())
        .await?;
    let mut stream = watcher.watch(key).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<(u64, Instant), String>>();
    let reader = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            let now = Instant::now();
            let sent = match item {
                Ok(Some(pair)) => tx.send(Ok((pair.last_index, now))),
                Ok(None) => Ok(()),
                Err(e) if e.is_transient() => Ok(()),
                Err(e) => tx.send(Err(e.to_string())),
            };
            if sent.is_err() {
                break;
            }
        }
    });
    // The first item is the current state.
    patient("first watch item", rx.recv()).await?;

    let mut samples = Vec::with_capacity(writes);
    for i in 0..writes {
        let pair = writer
            .put(key, Bytes::from(i.to_string()), PutOptions::new())
            .await?;
        let returned = Instant::now();
        loop {
            match patient("watch event", rx.recv()).await? {
                Some(Ok((index, at))) if index >= pair.last_index => {
                    samples.push(at.saturating_duration_since(returned));
                    break;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("watch failed: {e}").into()),
                None => return Err("watch stream ended".into()),
            }
        }
    }
    reader.abort();
    Latency::of(samples)
}

/// Item 3b: `watch_tree` latency with `keys` keys under the prefix: from
/// the call of `put` of one key in it to the tree watch (on a handle of its
/// own) yielding a listing with that version. Each prefix is filled by 64
/// concurrent puts first. The caller alternates the sizes write by write
/// ([`TreeProbe::sample`]), so drift in the machine's state (another
/// server's background work, a core going idle) hits every size alike, as
/// the A-B-B-A rounds do for the hand-over ratios.
pub(crate) struct TreeProbe {
    pub(crate) keys: usize,
    prefix: String,
    probe: String,
    rx: mpsc::UnboundedReceiver<Result<(u64, usize, Instant), String>>,
    reader: tokio::task::JoinHandle<()>,
    pub(crate) samples: Vec<Duration>,
}

impl Drop for TreeProbe {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl TreeProbe {
    /// Fills the prefix `tree<keys>` and opens the watch on it.
    pub(crate) async fn start(
        writer: &dyn Store,
        watcher: &dyn Store,
        keys: usize,
    ) -> Result<TreeProbe, BoxError> {
        let prefix = format!("tree{keys}");
        writer.delete_tree(&prefix).await?;
        {
            let filler = Bytes::from(vec![b'v'; VALUE_SIZE]);
            let prefix = prefix.as_str();
            let puts = futures::stream::iter(0..keys)
                .map(|i| {
                    let key = format!("{prefix}/k{i:06}");
                    let value = filler.clone();
                    async move { writer.put(&key, value, PutOptions::new()).await }
                })
                .buffer_unordered(64);
            futures::pin_mut!(puts);
            while let Some(put) = puts.next().await {
                put?;
            }
        }
        let probe = format!("{prefix}/k{:06}", keys / 2);
        let mut stream = watcher.watch_tree(&prefix).await?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Result<(u64, usize, Instant), String>>();
        let wanted = probe.clone();
        let reader = tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let now = Instant::now();
                let sent = match item {
                    Ok(listing) => {
                        let index = listing
                            .binary_search_by(|p| p.key.as_str().cmp(&wanted))
                            .map_or(0, |i| listing[i].last_index);
                        tx.send(Ok((index, listing.len(), now)))
                    }
                    Err(e) if e.is_transient() => Ok(()),
                    Err(e) => tx.send(Err(e.to_string())),
                };
                if sent.is_err() {
                    break;
                }
            }
        });
        // The first item is the current listing, with every key in it.
        let first = patient("first watch_tree listing", rx.recv()).await;
        let tree = TreeProbe {
            keys,
            prefix,
            probe,
            rx,
            reader,
            samples: Vec::new(),
        };
        match first? {
            Some(Ok((_, len, _))) if len == keys => Ok(tree),
            Some(Ok((_, len, _))) => {
                Err(format!("first listing has {len} keys, not {keys}").into())
            }
            Some(Err(e)) => Err(format!("watch_tree failed: {e}").into()),
            None => Err("watch_tree stream ended".into()),
        }
    }

    /// One write of the probe key, timed until the watch shows it.
    pub(crate) async fn sample(&mut self, writer: &dyn Store, i: usize) -> Result<(), BoxError> {
        // From the call: on a store whose notification can arrive before
        // the put's own answer (etcd), timing from the return would hide the
        // listing's cost.
        let called = Instant::now();
        let pair = writer
            .put(&self.probe, Bytes::from(i.to_string()), PutOptions::new())
            .await?;
        loop {
            match patient("watch_tree listing", self.rx.recv()).await? {
                Some(Ok((index, _, at))) if index >= pair.last_index => {
                    self.samples.push(at.saturating_duration_since(called));
                    return Ok(());
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("watch_tree failed: {e}").into()),
                None => return Err("watch_tree stream ended".into()),
            }
        }
    }

    /// Stops the watch and deletes the prefix.
    pub(crate) async fn finish(self, writer: &dyn Store) -> Result<(), BoxError> {
        self.reader.abort();
        writer.delete_tree(&self.prefix).await?;
        Ok(())
    }
}

/// Item 4a: uncontended `lock()` + `unlock()` on one handle.
pub(crate) async fn lock_uncontended(
    store: &dyn Store,
    rounds: usize,
) -> Result<Latency, BoxError> {
    let lock = store
        .new_lock("lock/uncontended", LockOptions::new("bench"))
        .await?;
    // Warm-up.
    lock.lock().await?.unlock().await?;
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        let guard = lock.lock().await?;
        guard.unlock().await?;
        samples.push(start.elapsed());
    }
    Latency::of(samples)
}

/// Item 4b: one holder and `waiters` waiting, each on a handle of its own,
/// through anykv's lock; see [`handover::handover`].
pub(crate) async fn lock_handover(
    handles: &[Arc<dyn Store>],
    handovers: usize,
) -> Result<Vec<Duration>, BoxError> {
    let key = format!("lock/handover-{}", handles.len());
    let mut participants = Vec::with_capacity(handles.len());
    for (i, handle) in handles.iter().enumerate() {
        let lock = handle
            .new_lock(&key, LockOptions::new(format!("w{i}")))
            .await?;
        participants.push(handover::AnykvLock::new(lock));
    }
    handover::handover(participants, handovers).await
}

/// How long each leader of item 5 leads before it resigns, and each holder
/// of item 4 (anykv's and the raw recipe's) holds the lock: the same for
/// all, so the hand-overs compared start from the same idle time (on this
/// kind of machine a server left idle for 50 ms answers the next request
/// markedly slower than one left idle for 10 ms).
pub(crate) const TERM: Duration = Duration::from_millis(10);

/// Item 5: one candidate per handle; `handovers` times the leader resigns
/// and the time until another candidate's elected stream says `true` is
/// taken.
pub(crate) async fn leadership_handover(
    handles: &[Arc<dyn Store>],
    handovers: usize,
) -> Result<Latency, BoxError> {
    let key = format!("leader-{}", handles.len());
    let (elected_tx, mut elected_rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let errors = Arc::new(AtomicUsize::new(0));
    let mut candidates = Vec::with_capacity(handles.len());
    let mut tasks = tokio::task::JoinSet::new();
    for (i, handle) in handles.iter().enumerate() {
        let candidate = Arc::new(Candidate::new(
            Arc::clone(handle),
            &key,
            format!("node-{i}"),
        ));
        let (mut elected, mut errs) = candidate.run_for_election().await?;
        let tx = elected_tx.clone();
        tasks.spawn(async move {
            while let Some(leading) = elected.next().await {
                if leading && tx.send((i, Instant::now())).is_err() {
                    break;
                }
            }
        });
        let errors = Arc::clone(&errors);
        tasks.spawn(async move {
            while errs.next().await.is_some() {
                errors.fetch_add(1, Ordering::SeqCst);
            }
        });
        candidates.push(candidate);
    }
    drop(elected_tx);

    let result = async {
        let (mut leader, _) = patient("first leader", elected_rx.recv())
            .await?
            .ok_or("candidates ended")?;
        // Let every candidate reach the queue.
        tokio::time::sleep(Duration::from_millis(500 + 20 * handles.len() as u64)).await;
        let mut samples = Vec::with_capacity(handovers);
        for _ in 0..handovers {
            // Each term lasts a moment, as real ones do: long enough for the
            // candidate that resigned last to see it and queue again.
            tokio::time::sleep(TERM).await;
            let start = Instant::now();
            candidates[leader].resign().await;
            let (next, at) = patient("next leader", elected_rx.recv())
                .await?
                .ok_or("candidates ended")?;
            if next == leader {
                return Err(format!(
                    "after handover {}: the leader that resigned was elected again \
                     ({:?} after resign()); no other candidate took over within its resign grace",
                    samples.len(),
                    at.saturating_duration_since(start)
                )
                .into());
            }
            samples.push(at.saturating_duration_since(start));
            leader = next;
        }
        Latency::of(samples)
    }
    .await;

    for candidate in &candidates {
        candidate.stop().await;
    }
    tasks.abort_all();
    let errors = errors.load(Ordering::SeqCst);
    match result {
        Ok(latency) if errors == 0 => Ok(latency),
        Ok(_) => Err(format!("candidates reported {errors} errors").into()),
        Err(e) => Err(e),
    }
}

/// Resident memory of this process in KiB, from `/proc/self/status`.
pub(crate) fn rss_kib() -> Result<u64, BoxError> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS in /proc/self/status".into())
}

/// Item 6a (run in a child process): growth of resident memory while
/// `count` watches on distinct keys are open on one handle.
pub(crate) async fn watches_memory(store: &dyn Store, count: usize) -> Result<f64, BoxError> {
    // Warm-up: one watch opened and dropped, so the first one's one-off
    // allocations (subscriber connection, buffers) are not counted.
    let mut warm = store.watch("mem/warm").await?;
    patient("first watch item", warm.next()).await?;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib()?;
    let mut streams = Vec::with_capacity(count);
    for i in 0..count {
        let mut stream = store.watch(&format!("mem/w{i}")).await?;
        match patient("first watch item", stream.next()).await? {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err("watch ended".into()),
        }
        streams.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib()?;
    drop(streams);
    Ok((after.saturating_sub(before)) as f64 * 1000.0 / count as f64)
}

/// Item 6b (run in a child process): growth of resident memory while
/// `count` candidates for one key run on one handle (one leads, the rest
/// wait).
pub(crate) async fn candidates_memory(
    store: &Arc<dyn Store>,
    count: usize,
) -> Result<f64, BoxError> {
    let before = rss_kib()?;
    let mut candidates = Vec::with_capacity(count);
    let mut first_items = Vec::with_capacity(count);
    for i in 0..count {
        let candidate = Candidate::new(Arc::clone(store), "mem/leader", format!("node-{i}"));
        let (mut elected, errors) = candidate.run_for_election().await?;
        first_items.push(async move { (elected.next().await, elected, errors) });
        candidates.push(candidate);
    }
    let mut streams = Vec::with_capacity(count);
    for first in first_items {
        let (item, elected, errors) = patient("first elected item", first).await?;
        if item.is_none() {
            return Err("elected stream ended".into());
        }
        streams.push((elected, errors));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib()?;
    for candidate in &candidates {
        candidate.stop().await;
    }
    Ok((after.saturating_sub(before)) as f64 * 1000.0 / count as f64)
}

fn rate(ops: usize, took: Duration) -> f64 {
    ops as f64 / took.as_secs_f64()
}

/// Whether a figure meets its target, for the report.
pub(crate) fn meets(target: Target, value: f64) -> bool {
    match target {
        Target::AtLeast(t) => value >= t,
        Target::AtMost(t) => value <= t,
    }
}
