//! [`anykv::GenericLock`]'s client-side deadline, over the shared etcd
//! reached through a [`Proxy`] (only this test's connections are
//! partitioned; the server itself is never touched).
//!
//! Needs `ANYKV_TEST_ETCD_URL` (see `scripts/services.sh env`); without it
//! the test is skipped, or fails under CI.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anykv::{GenericLock, LockOptions};
use anykv_nemesis::proxy::{Mode, Proxy};

/// The shared etcd's `host:port`, or `None` to skip.
fn upstream() -> Option<SocketAddr> {
    let Ok(url) = std::env::var("ANYKV_TEST_ETCD_URL") else {
        let under_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !under_ci,
            "ANYKV_TEST_ETCD_URL is not set (required under CI)"
        );
        eprintln!("skipped: ANYKV_TEST_ETCD_URL is not set");
        return None;
    };
    let rest = url.strip_prefix("etcd://").expect("an etcd:// URL");
    let host = rest
        .split(['/', '?', ','])
        .next()
        .expect("a host in the URL");
    Some(host.parse().expect("a loopback ip:port"))
}

/// A silent partition hides everything from the holder: the watch sees
/// nothing and reads hang. `lost()` must still fire within half the session
/// TTL (plus slack) of the last confirming read, which is before the
/// server could have expired the session lease and granted the lock to
/// anyone else (no earlier than 2/3 of the TTL after the partition, as the
/// session is renewed every third of its TTL). While the store answers, the
/// confirming reads keep the lock: no loss is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_lock_reports_loss_within_half_the_ttl_of_a_silent_partition() {
    let Some(upstream) = upstream() else {
        return;
    };
    let proxy = Proxy::start(upstream).await.expect("proxy");
    let namespace = format!(
        "nemesis-generic-lock-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    // HTTP/2 keep-alives (every 10 s, connect_timeout to answer) and the
    // request timeout are far longer than the window under test, so neither
    // breaks the connection first: only the lock's own deadline can fire.
    let url = format!(
        "etcd://{}/{namespace}?session_ttl=9s&connect_timeout=10s&request_timeout=10s",
        proxy.addr()
    );
    let store = anykv::open(&url).await.expect("open through the proxy");
    let ttl = store.capabilities().session_ttl;
    assert_eq!(ttl, Duration::from_secs(9));
    let lock = GenericLock::new(store.clone(), "l", LockOptions::new("me")).into_lock();
    let guard = lock.lock().await.expect("lock");

    // Longer than the deadline (ttl/2): only confirming reads keep it.
    tokio::time::sleep(ttl * 2 / 3).await;
    assert!(
        !guard.is_lost(),
        "lost() fired while the store was answering"
    );

    proxy.set(Mode::Drop);
    let partitioned = Instant::now();
    let lost = tokio::time::timeout(ttl, guard.lost()).await;
    let took = partitioned.elapsed();
    proxy.set(Mode::Pass);
    assert!(
        lost.is_ok(),
        "lost() did not fire within {ttl:?} of a silent partition"
    );
    let bound = ttl / 2 + Duration::from_secs(1);
    let server_expiry = ttl * 2 / 3;
    eprintln!("lost() fired {took:?} after the partition (bound {bound:?})");
    assert!(
        took <= bound && took < server_expiry,
        "lost() fired {took:?} after the partition: later than {bound:?}, or than the earliest server-side expiry {server_expiry:?}"
    );
    drop(guard);
    let _ = tokio::time::timeout(Duration::from_secs(10), store.close()).await;
}
