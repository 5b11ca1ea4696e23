//! etcd backend behaviour that needs a server of its own: killed and
//! restarted servers, compaction, killed client processes, failover between
//! endpoints, frozen servers and authentication.
//!
//! Every case starts a private etcd (`ANYKV_TEST_ETCD_BIN`, see
//! `scripts/services.sh env`) on free loopback ports with a temporary data
//! directory, so it can kill, freeze and restart it without disturbing the
//! shared server. Without `ANYKV_TEST_ETCD_BIN` the cases are ignored, or
//! fail under CI.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anykv::StoreExt;
use anykv::{Error, LockOptions, PutOptions};
use libtest_mimic::Arguments;
use support::child::Holder;
use support::process::{self, Process};
use support::{block_on, next_ok_within, next_within, retry, BoxResult as TestResult};

/// A named case; it gets the etcd binary to start private servers with.
type Case = (&'static str, fn(PathBuf) -> TestResult);

/// How long any single expected event may take.
const PATIENCE: Duration = Duration::from_secs(15);

const BIN_ENV: &str = "ANYKV_TEST_ETCD_BIN";

/// The helper child of `killed_child_releases_*`.
const CHILD: Holder = Holder {
    url_env: "ANYKV_ETCD_TEST_CHILD_URL",
    key: "owned",
    lock: "lock",
};

fn main() {
    CHILD.serve_if_child();
    let args = Arguments::from_args();
    let cases: Vec<Case> = vec![
        (
            "watch_resumes_after_the_server_is_killed_and_restarted",
            watch_resumes_after_restart,
        ),
        (
            "watch_resyncs_when_its_history_was_compacted",
            watch_resyncs_after_compaction,
        ),
        (
            "killed_child_releases_its_ephemeral_key_and_lock",
            killed_child_releases_key_and_lock,
        ),
        (
            "dead_first_endpoint_fails_over_to_the_next",
            dead_first_endpoint_fails_over,
        ),
        (
            "operations_continue_when_a_cluster_member_dies",
            operations_continue_when_a_member_dies,
        ),
        (
            "lost_fires_when_keep_alives_are_not_confirmed",
            lost_fires_without_confirmed_keep_alives,
        ),
        (
            "dropped_lock_future_does_not_block_the_queue",
            dropped_lock_future_does_not_block,
        ),
        (
            "a_lock_cancelled_while_it_queues_and_then_handed_the_lock_leaves_nothing_behind",
            cancelled_waiter_handed_the_lock_leaves_nothing_behind,
        ),
        (
            "lock_queue_is_invisible_in_the_root_namespace",
            lock_queue_is_invisible,
        ),
        ("credentials_are_checked", credentials_are_checked),
        (
            "generic_lock_cancelled_mid_acquire_is_released_promptly",
            generic_lock_cancelled_mid_acquire_is_released_promptly,
        ),
        (
            "abandoned_unlock_during_a_server_pause_still_releases",
            abandoned_unlock_during_a_server_pause_still_releases,
        ),
    ];
    let trials = cases
        .into_iter()
        .map(|(name, case)| {
            support::trial(name, &[BIN_ENV], move |env| case(env.path(BIN_ENV))).with_kind("etcd")
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}

// ------------------------------------------------------------ the cases

/// The acceptance test of resumable watches: kill etcd mid-watch, see one
/// transient error, restart it (same data), see the change made after.
fn watch_resumes_after_restart(bin: PathBuf) -> TestResult {
    block_on(async move {
        let etcd = Etcd::single(bin)?;
        etcd.wait_ready().await?;
        let store = anykv::open(&etcd.url("resume", "session_ttl=3s&request_timeout=2s")).await?;
        let v1 = store.put("dir/k", "v1", PutOptions::new()).await?;
        let mut watch = store.watch("dir/k").await?;
        let mut tree = store.watch_tree("dir").await?;
        assert_eq!(next_within(&mut watch, PATIENCE).await??, Some(v1.clone()));
        assert_eq!(next_within(&mut tree, PATIENCE).await??, vec![v1.clone()]);

        etcd.process.kill();
        let err = next_within(&mut watch, PATIENCE)
            .await?
            .err()
            .ok_or("watch: no error after the kill")?;
        assert!(err.is_transient(), "watch: {err:?} is not transient");
        let err = next_within(&mut tree, PATIENCE)
            .await?
            .err()
            .ok_or("watch_tree: no error after the kill")?;
        assert!(err.is_transient(), "watch_tree: {err:?} is not transient");

        etcd.spawn()?;
        etcd.wait_ready().await?;
        let v2 = retry(PATIENCE, || store.put("dir/k", "v2", PutOptions::new())).await?;
        assert!(v2.last_index > v1.last_index);
        assert_eq!(
            next_ok_within(&mut watch, PATIENCE).await??,
            Some(v2.clone())
        );
        assert_eq!(
            next_ok_within(&mut tree, PATIENCE).await??,
            vec![v2.clone()]
        );
        // And it keeps going.
        store.delete("dir/k").await?;
        assert_eq!(next_ok_within(&mut watch, PATIENCE).await??, None);
        assert_eq!(next_ok_within(&mut tree, PATIENCE).await??, vec![]);
        Ok(())
    })
}

/// A watch that resumes from a compacted revision re-reads: it delivers the
/// latest state (intermediate ones coalesced), not an error.
fn watch_resyncs_after_compaction(bin: PathBuf) -> TestResult {
    block_on(async move {
        let etcd = Etcd::single(bin)?;
        etcd.wait_ready().await?;
        let url = etcd.url("compact", "request_timeout=2s");
        let store = anykv::open(&url).await?;
        let v1 = store.put("k", "v1", PutOptions::new()).await?;
        let mut watch = store.watch("k").await?;
        let mut tree = store.watch_tree("").await?;
        assert_eq!(next_within(&mut watch, PATIENCE).await??, Some(v1.clone()));
        assert_eq!(next_within(&mut tree, PATIENCE).await??, vec![v1]);

        // Break the streams; they reconnect only when polled again.
        etcd.process.kill();
        assert!(next_within(&mut watch, PATIENCE).await?.is_err());
        assert!(next_within(&mut tree, PATIENCE).await?.is_err());
        etcd.spawn()?;
        etcd.wait_ready().await?;

        let writer = retry(PATIENCE, || anykv::open(&url)).await?;
        writer.put("k", "v2", PutOptions::new()).await?;
        writer.put("other", "o", PutOptions::new()).await?;
        let v3 = writer.put("k", "v3", PutOptions::new()).await?;
        let mut raw = etcd_client::Client::connect([etcd.endpoint()], None).await?;
        raw.compact(i64::try_from(v3.last_index)?, None).await?;

        assert_eq!(
            next_ok_within(&mut watch, PATIENCE).await??,
            Some(v3.clone())
        );
        let listing = next_ok_within(&mut tree, PATIENCE).await??;
        let keys: Vec<&str> = listing.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["k", "other"]);
        assert_eq!(listing[0], v3);
        Ok(())
    })
}

/// A child process holding an ephemeral key and a lock is SIGKILLed: the key
/// goes and another handle gets the lock within `session_ttl` + 2 s.
fn killed_child_releases_key_and_lock(bin: PathBuf) -> TestResult {
    block_on(async move {
        let etcd = Etcd::single(bin)?;
        etcd.wait_ready().await?;
        let url = etcd.url("child", "session_ttl=3s");
        let mut child = CHILD.spawn(&url)?;

        let observer = anykv::open(&url).await?;
        assert_eq!(observer.get("owned").await?.value, "child");
        assert_eq!(observer.get("lock").await?.value, "child");
        let lock = observer
            .new_lock("lock", LockOptions::new("observer"))
            .await?;
        assert!(matches!(lock.try_lock().await, Err(Error::Locked { .. })));

        let bound = observer.capabilities().session_ttl + Duration::from_secs(2);
        let killed = child.kill();
        let guard = tokio::time::timeout(bound, lock.lock())
            .await
            .map_err(|_| format!("lock not released within {bound:?} of the kill"))??;
        let took = killed.elapsed();
        assert!(took <= bound, "took {took:?}");
        assert!(
            !observer.exists("owned").await?,
            "ephemeral key outlived the lock"
        );
        assert_eq!(observer.get("lock").await?.value, "observer");
        guard.unlock().await?;
        Ok(())
    })
}

/// The first endpoint of the URL refuses connections: open and every
/// operation go to the second.
fn dead_first_endpoint_fails_over(bin: PathBuf) -> TestResult {
    block_on(async move {
        let etcd = Etcd::single(bin)?;
        etcd.wait_ready().await?;
        let dead = process::free_port()?;
        let url = format!("etcd://127.0.0.1:{dead},{}/failover", etcd.endpoint());
        let store = anykv::open(&url).await?;
        let mut watch = store.watch("k").await?;
        assert_eq!(next_within(&mut watch, PATIENCE).await??, None);
        let put = store.put("k", "v", PutOptions::new()).await?;
        assert_eq!(store.get("k").await?, put);
        assert_eq!(next_ok_within(&mut watch, PATIENCE).await??, Some(put));
        let guard = store
            .new_lock("l", LockOptions::new("me"))
            .await?
            .try_lock()
            .await?;
        guard.unlock().await?;
        Ok(())
    })
}

/// A three-member cluster loses the member the handle talks to: reads,
/// writes and watches carry on through the others.
fn operations_continue_when_a_member_dies(bin: PathBuf) -> TestResult {
    block_on(async move {
        let members = Etcd::cluster(bin, 3)?;
        for member in &members {
            member.wait_ready().await?;
        }
        let endpoints: Vec<String> = members.iter().map(Etcd::endpoint).collect();
        let url = format!(
            "etcd://{}/members?session_ttl=5s&request_timeout=3s",
            endpoints.join(",")
        );
        let store = anykv::open(&url).await?;
        let v1 = store.put("k", "v1", PutOptions::new()).await?;
        let mut watch = store.watch("k").await?;
        assert_eq!(next_within(&mut watch, PATIENCE).await??, Some(v1));

        // The handle talks to the first endpoint until it fails.
        members[0].process.kill();
        let v2 = retry(PATIENCE, || store.put("k", "v2", PutOptions::new())).await?;
        assert_eq!(retry(PATIENCE, || store.get("k")).await?, v2);
        assert_eq!(next_ok_within(&mut watch, PATIENCE).await??, Some(v2));
        let e = retry(PATIENCE, || {
            store.put("e", "alive", PutOptions::ephemeral())
        })
        .await?;
        assert_eq!(store.get("e").await?, e);
        Ok(())
    })
}

/// A frozen server confirms no keep-alive: the client-side deadline fires
/// `lost()` while the server cannot have said anything. When the server
/// thaws, the handle gets a new session and the old lock is gone.
fn lost_fires_without_confirmed_keep_alives(bin: PathBuf) -> TestResult {
    block_on(async move {
        let etcd = Etcd::single(bin)?;
        etcd.wait_ready().await?;
        let url = etcd.url("frozen", "session_ttl=3s&request_timeout=2s");
        let store = anykv::open(&url).await?;
        let lock = store.new_lock("l", LockOptions::new("me")).await?;
        let guard = lock.lock().await?;
        let first_token = guard.fencing_token();

        etcd.process.pause()?;
        let lost = tokio::time::timeout(PATIENCE, guard.lost()).await;
        etcd.process.resume()?;
        lost.map_err(|_| "lost() did not fire while the server was frozen")?;

        // The new session works and the lost session's lock key is gone.
        let guard2 = retry(PATIENCE, || lock.try_lock()).await?;
        assert!(guard2.fencing_token() > first_token);
        assert_eq!(store.get("l").await?.value, "me");
        assert!(matches!(guard.unlock().await, Err(Error::LockLost { .. })));
        retry(PATIENCE, || store.put("e", "v", PutOptions::ephemeral())).await?;
        guard2.unlock().await?;
        Ok(())
    })
}

/// An `unlock()` whose caller gives up while the server is frozen still
/// releases the lock once the server answers again: the release retries its
/// (idempotent) Txn instead of failing once on the request timeout. Another
/// handle gets the lock within a few seconds of the thaw, long before the
/// holder's session could end and free it.
fn abandoned_unlock_during_a_server_pause_still_releases(bin: PathBuf) -> TestResult {
    block_on(async move {
        let etcd = Etcd::single(bin)?;
        etcd.wait_ready().await?;
        // The session outlives the whole test by far: only the release can
        // free the lock in time.
        let url = etcd.url(
            "paused",
            "session_ttl=30s&request_timeout=1s&connect_timeout=1s",
        );
        let holder = anykv::open(&url).await?;
        let other = anykv::open(&url).await?;
        let guard = holder
            .new_lock("l", LockOptions::new("holder"))
            .await?
            .lock()
            .await?;
        let contender = other.new_lock("l", LockOptions::new("other")).await?;

        etcd.process.pause()?;
        // The caller gives up before the request timeout (1 s) would end
        // the first attempt of the release.
        let gave_up = tokio::time::timeout(Duration::from_millis(500), guard.unlock()).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        etcd.process.resume()?;
        let resumed = Instant::now();
        assert!(
            gave_up.is_err(),
            "unlock finished on a frozen server: {gave_up:?}"
        );

        let bound = Duration::from_secs(5);
        let taken = loop {
            match contender.try_lock().await {
                Ok(guard) => break guard,
                Err(e) if e.is_transient() || matches!(e, Error::Locked { .. }) => {
                    if resumed.elapsed() > bound {
                        return Err(format!(
                            "the lock was still held {bound:?} after the server resumed (last: {e})"
                        )
                        .into());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        eprintln!(
            "lock taken by the other handle {:?} after the server resumed",
            resumed.elapsed()
        );
        assert_eq!(other.get("l").await?.value, "other");
        taken.unlock().await?;
        Ok(())
    })
}

/// [`anykv::GenericLock`] over a networked store (etcd's `atomic_put`,
/// `watch`, `atomic_delete`): a `lock()` cancelled at any point — before,
/// during or after its create-only write was applied — never leaves the key
/// held. Another handle takes the lock within 2 s of every cancellation,
/// far below the 30 s session whose end would otherwise free it.
fn generic_lock_cancelled_mid_acquire_is_released_promptly(bin: PathBuf) -> TestResult {
    block_on(async move {
        let etcd = Etcd::single(bin)?;
        etcd.wait_ready().await?;
        let url = etcd.url("generic", "session_ttl=30s");
        let canceller = anykv::open(&url).await?;
        let checker = anykv::open(&url).await?;
        let lock =
            anykv::GenericLock::new(canceller, "l", LockOptions::new("cancelled")).into_lock();
        let other = anykv::GenericLock::new(checker, "l", LockOptions::new("checker")).into_lock();
        let window = Duration::from_secs(2);
        let (mut granted, mut cancelled, mut slowest) = (0, 0, Duration::ZERO);
        for step in 0..40u64 {
            let delay = Duration::from_micros(step * 125);
            match tokio::time::timeout(delay, lock.lock()).await {
                Ok(guard) => {
                    granted += 1;
                    guard?.unlock().await?;
                }
                Err(_) => {
                    cancelled += 1;
                    let start = Instant::now();
                    let guard = loop {
                        match other.try_lock().await {
                            Ok(guard) => break guard,
                            Err(Error::Locked { .. }) if start.elapsed() < window => {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(e) => {
                                return Err(format!(
                                "lock() cancelled at {delay:?} left the lock held for {:?} ({e})",
                                start.elapsed()
                            )
                                .into())
                            }
                        }
                    };
                    slowest = slowest.max(start.elapsed());
                    guard.unlock().await?;
                }
            }
        }
        eprintln!("granted {granted}, cancelled {cancelled}, slowest recovery {slowest:?}");
        Ok(())
    })
}

/// A waiter that gives up (its `lock()` future is dropped) leaves the queue,
/// so the next waiter is not blocked behind it.
fn dropped_lock_future_does_not_block(bin: PathBuf) -> TestResult {
    block_on(async move {
        let etcd = Etcd::single(bin)?;
        etcd.wait_ready().await?;
        let url = etcd.url("queue", "session_ttl=5s");
        let (a, b, c) = (
            anykv::open(&url).await?,
            anykv::open(&url).await?,
            anykv::open(&url).await?,
        );
        let held = a.new_lock("l", LockOptions::new("a")).await?.lock().await?;
        let impatient = b.new_lock("l", LockOptions::new("b")).await?;
        assert!(
            tokio::time::timeout(Duration::from_millis(300), impatient.lock())
                .await
                .is_err(),
            "b got a held lock"
        );
        let waiter = c.new_lock("l", LockOptions::new("c")).await?;
        let waiting = tokio::spawn(async move { waiter.lock().await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        held.unlock().await?;
        // Well within b's session TTL: c is not waiting for b's lease.
        let guard = tokio::time::timeout(Duration::from_secs(2), waiting).await???;
        assert_eq!(c.get("l").await?.value, "c");
        guard.unlock().await?;
        Ok(())
    })
}

/// A `lock()` dropped while its enqueue Txn is in flight, whose waiter key
/// the holder then hands the lock to, gives the lock back in full: its
/// cleanup (which runs once the Txn answered) deletes the lock key, its
/// waiter key and the holder's leftover waiter key that named it. The
/// canceller's replies are held back in a proxy so that the order is
/// always: the checker takes the lock, the canceller queues behind it and
/// gives up, the checker releases (handing the lock on), then the cleanup.
/// Another handle must take the lock within 2 s, far below the 30 s session
/// whose end would otherwise free the leftover.
fn cancelled_waiter_handed_the_lock_leaves_nothing_behind(bin: PathBuf) -> TestResult {
    block_on(async move {
        let etcd = Etcd::single(bin)?;
        etcd.wait_ready().await?;
        let proxy = support::proxy::CutProxy::start(etcd.client_port).await?;
        let query = "session_ttl=30s&request_timeout=5s";
        let canceller = anykv::open(&format!("etcd://{}/handed?{query}", proxy.addr())).await?;
        let checker = anykv::open(&etcd.url("handed", query)).await?;
        let lock = canceller
            .new_lock("l", LockOptions::new("cancelled"))
            .await?;
        let other = checker.new_lock("l", LockOptions::new("checker")).await?;
        // The canceller's session lease exists before the replies are held.
        lock.lock().await?.unlock().await?;

        let held = other.try_lock().await?;
        proxy.set_hold_replies(true);
        let gave_up = tokio::time::timeout(Duration::from_millis(200), lock.lock()).await;
        assert!(
            gave_up.is_err(),
            "lock() on a held lock returned: {gave_up:?}"
        );
        // Its enqueue Txn reached the server; the answer waits in the proxy.
        tokio::time::sleep(Duration::from_millis(300)).await;
        held.unlock().await?;
        proxy.set_hold_replies(false);

        let window = Duration::from_secs(2);
        let start = Instant::now();
        let guard = loop {
            match other.try_lock().await {
                Ok(guard) => break guard,
                Err(Error::Locked { .. }) if start.elapsed() < window => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(format!(
                        "the cancelled waiter left the lock held for {:?} ({e})",
                        start.elapsed()
                    )
                    .into())
                }
            }
        };
        eprintln!("lock taken {:?} after the replies flowed", start.elapsed());
        assert_eq!(checker.get("l").await?.value, "checker");
        guard.unlock().await?;
        Ok(())
    })
}

/// In the root namespace `list("")` and `watch_tree("")` cover every key,
/// yet never show the hidden waiter keys of locks.
fn lock_queue_is_invisible(bin: PathBuf) -> TestResult {
    block_on(async move {
        let etcd = Etcd::single(bin)?;
        etcd.wait_ready().await?;
        let root = format!("etcd://{}", etcd.endpoint());
        let (a, b) = (anykv::open(&root).await?, anykv::open(&root).await?);
        let held = a
            .new_lock("jobs/l", LockOptions::new("a"))
            .await?
            .lock()
            .await?;
        let lock_b = b.new_lock("jobs/l", LockOptions::new("b")).await?;
        let waiting = tokio::spawn(async move { lock_b.lock().await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let keys: Vec<String> = a.list("").await?.into_iter().map(|p| p.key).collect();
        assert_eq!(keys, vec!["jobs/l"]);
        let mut tree = a.watch_tree("").await?;
        assert_eq!(next_within(&mut tree, PATIENCE).await??.len(), 1);
        held.unlock().await?;
        let guard = tokio::time::timeout(PATIENCE, waiting).await???;
        // The handover shows as one change of the lock key, nothing else.
        let listing = next_ok_within(&mut tree, PATIENCE).await??;
        let listing = if listing.is_empty() {
            next_ok_within(&mut tree, PATIENCE).await??
        } else {
            listing
        };
        assert_eq!(listing.len(), 1);
        assert_eq!(listing[0].value, "b");
        a.delete_tree("").await?;
        assert!(guard.is_lost() || tokio::time::timeout(PATIENCE, guard.lost()).await.is_ok());
        Ok(())
    })
}

/// With authentication on, missing or wrong credentials are `Unauthorized`
/// (and never echoed), right ones work, as `user:pass@` or as options.
fn credentials_are_checked(bin: PathBuf) -> TestResult {
    block_on(async move {
        let etcd = Etcd::single(bin)?;
        etcd.wait_ready().await?;
        let mut raw = etcd_client::Client::connect([etcd.endpoint()], None).await?;
        raw.role_add("root").await?;
        raw.user_add("root", "s3cret-pw", None).await?;
        raw.user_grant_role("root", "root").await?;
        raw.auth_enable().await?;

        let ep = etcd.endpoint();
        for url in [
            format!("etcd://{ep}/auth"),
            format!("etcd://root:wrong-pw@{ep}/auth"),
            format!("etcd://{ep}/auth?username=root&password=wrong-pw"),
        ] {
            match anykv::open(&url).await {
                Err(e @ Error::Unauthorized { .. }) => {
                    let shown = format!("{e} {e:?}");
                    assert!(!shown.contains("wrong-pw"), "{shown}");
                }
                other => return Err(format!("{url}: expected Unauthorized, got {other:?}").into()),
            }
        }
        for url in [
            format!("etcd://root:s3cret-pw@{ep}/auth"),
            format!("etcd://{ep}/auth?username=root&password=s3cret-pw"),
        ] {
            let store = anykv::open(&url).await?;
            assert!(!format!("{store:?}").contains("s3cret"));
            let put = store.put("k", "v", PutOptions::ephemeral()).await?;
            let mut watch = store.watch("k").await?;
            assert_eq!(next_within(&mut watch, PATIENCE).await??, Some(put));
            let guard = store
                .new_lock("l", LockOptions::new("x"))
                .await?
                .try_lock()
                .await?;
            guard.unlock().await?;
            store.close().await?;
        }
        Ok(())
    })
}

// ------------------------------------------------------------ the server

/// A private etcd member: its own ports and data directory.
struct Etcd {
    bin: PathBuf,
    dir: PathBuf,
    name: String,
    client_port: u16,
    peer_port: u16,
    initial_cluster: String,
    cluster_token: String,
    process: Process,
}

impl Etcd {
    /// A one-member cluster, started.
    fn single(bin: PathBuf) -> std::io::Result<Etcd> {
        Ok(Self::cluster(bin, 1)?.remove(0))
    }

    /// `n` members of one new cluster, started.
    fn cluster(bin: PathBuf, n: usize) -> std::io::Result<Vec<Etcd>> {
        let base = support::scratch_dir("anykv-etcd-test");
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Etcd {
                bin: bin.clone(),
                dir: base.join(format!("m{i}")),
                name: format!("m{i}"),
                client_port: process::free_port()?,
                peer_port: process::free_port()?,
                initial_cluster: String::new(),
                cluster_token: String::new(),
                process: Process::new(format!("etcd member m{i}")),
            });
        }
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let token = format!("anykv-test-{}", base.display());
        for member in &mut members {
            member.initial_cluster = initial.join(",");
            member.cluster_token = token.clone();
            std::fs::create_dir_all(&member.dir)?;
            member.spawn()?;
        }
        Ok(members)
    }

    /// Starts (or restarts, on the same data) the member.
    fn spawn(&self) -> std::io::Result<()> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(&self.bin);
        command
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.cluster_token])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        self.process
            .start(process::log_to(&mut command, &self.log())?)
    }

    fn log(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn url(&self, namespace: &str, query: &str) -> String {
        format!("etcd://{}/{namespace}?{query}", self.endpoint())
    }

    /// Waits until the member answers a status request.
    async fn wait_ready(&self) -> TestResult {
        let answers = || async {
            let status = async {
                let mut client = etcd_client::Client::connect([self.endpoint()], None).await?;
                client.status().await?;
                Ok::<_, etcd_client::Error>(())
            };
            matches!(
                tokio::time::timeout(Duration::from_secs(2), status).await,
                Ok(Ok(()))
            )
        };
        self.process
            .wait_ready(Duration::from_secs(60), Duration::from_millis(100), answers)
            .await
            .map_err(|e| {
                format!(
                    "private etcd on {}: {e}; see {}",
                    self.endpoint(),
                    self.log().display()
                )
                .into()
            })
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent); // once the last member is gone
        }
    }
}
