//! The metrics of `anykv::metrics` and the leadership crate reach an
//! installed recorder with the documented names and labels: operations
//! (counted by outcome, timed), lock acquisitions and waits, elections won
//! and lost, and — on a real Redis whose pub/sub connection is killed — watch
//! reconnects.
//!
//! One recorder is installed for the whole binary, so every check reads a
//! delta, and the cases on the memory store run one at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anykv::metrics::{
    LOCK_ACQUISITIONS_TOTAL, LOCK_WAIT_SECONDS, OPERATIONS_TOTAL, OPERATION_DURATION_SECONDS,
    WATCH_RECONNECTS_TOTAL,
};
use anykv::prelude::*;
use anykv_leadership::{Candidate, ELECTIONS_LOST_TOTAL, ELECTIONS_WON_TOTAL};
use futures::StreamExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// The memory cases share labels (`backend=memory`): one at a time.
static MEMORY_CASES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .unwrap_or_else(|e| panic!("no other recorder is installed here: {e}"));
        snapshotter
    })
}

/// Everything recorded so far, summed over snapshots: a snapshot of the
/// debugging recorder hands over (and resets) what it has seen since the
/// last one, and the cases here run in parallel.
fn totals() -> std::sync::MutexGuard<'static, Totals> {
    static TOTALS: OnceLock<Mutex<Totals>> = OnceLock::new();
    let mut totals = TOTALS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort_unstable();
        let entry = totals.entry((key.name().to_owned(), labels)).or_default();
        match value {
            DebugValue::Counter(n) => entry.0 += n,
            DebugValue::Histogram(samples) => entry.1 += samples.len(),
            DebugValue::Gauge(_) => {}
        }
    }
    totals
}

/// Per metric name and sorted labels: the counter's sum, the histogram's
/// sample count.
type Totals = HashMap<(String, Vec<(String, String)>), (u64, usize)>;

fn entry(name: &str, labels: &[(&str, &str)]) -> (u64, usize) {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort_unstable();
    totals()
        .get(&(name.to_owned(), labels))
        .copied()
        .unwrap_or_default()
}

/// The counter `name` with exactly these labels (0 if never recorded).
fn counter(name: &str, labels: &[(&str, &str)]) -> u64 {
    entry(name, labels).0
}

/// How many samples the histogram `name` with these labels got in all.
fn histogram_samples(name: &str, labels: &[(&str, &str)]) -> usize {
    entry(name, labels).1
}

#[tokio::test]
async fn operations_are_counted_by_outcome_and_timed() {
    let _one_at_a_time = MEMORY_CASES.lock().await;
    snapshotter();
    let ok_put = [("backend", "memory"), ("op", "put"), ("outcome", "ok")];
    let failed_put = [("backend", "memory"), ("op", "put"), ("outcome", "error")];
    let ok_get = [("backend", "memory"), ("op", "get"), ("outcome", "ok")];
    let before = (
        counter(OPERATIONS_TOTAL, &ok_put),
        counter(OPERATIONS_TOTAL, &failed_put),
        counter(OPERATIONS_TOTAL, &ok_get),
    );
    let timed = histogram_samples(
        OPERATION_DURATION_SECONDS,
        &[("backend", "memory"), ("op", "get")],
    );

    let store = anykv::open("memory://metrics-ops").await.expect("open");
    for i in 0..3 {
        store
            .put(&format!("k{i}"), "v", PutOptions::new())
            .await
            .expect("put");
    }
    assert!(
        store.put("", "v", PutOptions::new()).await.is_err(),
        "an empty key is refused"
    );
    store.get_opt("k0").await.expect("get");
    store
        .get_opt("missing")
        .await
        .expect("get of a missing key is Ok(None)");

    assert_eq!(counter(OPERATIONS_TOTAL, &ok_put) - before.0, 3);
    assert_eq!(counter(OPERATIONS_TOTAL, &failed_put) - before.1, 1);
    assert_eq!(counter(OPERATIONS_TOTAL, &ok_get) - before.2, 2);
    assert_eq!(
        histogram_samples(
            OPERATION_DURATION_SECONDS,
            &[("backend", "memory"), ("op", "get")]
        ) - timed,
        2,
        "each get is timed once"
    );
    store.close().await.expect("close");
}

#[tokio::test]
async fn lock_acquisitions_and_waits_are_recorded() {
    let _one_at_a_time = MEMORY_CASES.lock().await;
    snapshotter();
    let acquired = [("backend", "memory"), ("outcome", "acquired")];
    let locked = [("backend", "memory"), ("outcome", "locked")];
    let before = (
        counter(LOCK_ACQUISITIONS_TOTAL, &acquired),
        counter(LOCK_ACQUISITIONS_TOTAL, &locked),
    );
    let waits = histogram_samples(LOCK_WAIT_SECONDS, &[("backend", "memory")]);

    let a = anykv::open("memory://metrics-locks").await.expect("open");
    let b = anykv::open("memory://metrics-locks").await.expect("open");
    let guard = a
        .new_lock("l", LockOptions::new("a"))
        .await
        .expect("lock")
        .lock()
        .await
        .expect("held");
    let other = b.new_lock("l", LockOptions::new("b")).await.expect("lock");
    assert!(matches!(
        other.try_lock().await,
        Err(anykv::Error::Locked { .. })
    ));
    guard.unlock().await.expect("unlock");
    other
        .lock()
        .await
        .expect("free again")
        .unlock()
        .await
        .expect("unlock");

    assert_eq!(counter(LOCK_ACQUISITIONS_TOTAL, &acquired) - before.0, 2);
    assert_eq!(counter(LOCK_ACQUISITIONS_TOTAL, &locked) - before.1, 1);
    assert!(histogram_samples(LOCK_WAIT_SECONDS, &[("backend", "memory")]) - waits >= 2);
}

#[tokio::test]
async fn elections_won_and_lost_are_counted_by_reason() {
    let _one_at_a_time = MEMORY_CASES.lock().await;
    snapshotter();
    let won = counter(ELECTIONS_WON_TOTAL, &[]);
    let resigned = counter(ELECTIONS_LOST_TOTAL, &[("reason", "resigned")]);
    let lost = counter(ELECTIONS_LOST_TOTAL, &[("reason", "lock_lost")]);

    let store: Arc<dyn Store> = anykv::open("memory://metrics-elections")
        .await
        .expect("open");
    let candidate = Candidate::new(store.clone(), "leader", "a");
    let (mut elected, _errors) = candidate.run_for_election().await.expect("campaign");
    assert_eq!(elected.next().await, Some(false));
    assert_eq!(elected.next().await, Some(true));
    candidate.resign().await;
    assert_eq!(elected.next().await, Some(false));
    // Alone, it is elected again after the resign grace; then its lock is
    // taken away by deleting the key, as an operator would.
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), elected.next())
            .await
            .ok()
            .flatten(),
        Some(true)
    );
    store.delete("leader").await.expect("delete the lock key");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), elected.next())
            .await
            .ok()
            .flatten(),
        Some(false)
    );
    candidate.stop().await;

    assert!(counter(ELECTIONS_WON_TOTAL, &[]) - won >= 2);
    assert_eq!(
        counter(ELECTIONS_LOST_TOTAL, &[("reason", "resigned")]) - resigned,
        1
    );
    assert_eq!(
        counter(ELECTIONS_LOST_TOTAL, &[("reason", "lock_lost")]) - lost,
        1
    );
}

/// A Redis watch whose pub/sub connection the server kills reconnects, and
/// says so. Needs `ANYKV_TEST_REDIS_URL` (from `scripts/services.sh env`);
/// under `CI=true` its absence fails.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_redis_watch_reconnect_is_counted() {
    snapshotter();
    let Ok(url) = std::env::var("ANYKV_TEST_REDIS_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "ANYKV_TEST_REDIS_URL is not set under CI: start scripts/services.sh"
        );
        eprintln!("skipped: ANYKV_TEST_REDIS_URL is not set");
        return;
    };
    let before = counter(WATCH_RECONNECTS_TOTAL, &[("backend", "redis")]);
    let store = anykv::open(&format!("{url}/anykv-metrics-{}", std::process::id()))
        .await
        .expect("open");
    let mut watch = store.watch("w").await.expect("watch");
    store.put("w", "1", PutOptions::new()).await.expect("put");
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next()).await;
    assert!(
        matches!(first, Ok(Some(Ok(_)))),
        "the first change arrives: {first:?}"
    );

    let client = redis::Client::open(url.as_str()).expect("redis url");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut raw)
        .await
        .expect("CLIENT KILL TYPE pubsub");
    let counted = tokio::time::timeout(Duration::from_secs(10), async {
        while counter(WATCH_RECONNECTS_TOTAL, &[("backend", "redis")]) == before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "no reconnect was counted within 10 s");
    store.delete_tree("").await.expect("clean up");
    store.close().await.expect("close");
}
