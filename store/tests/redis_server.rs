//! Redis backend tests that need more than the conformance suite: a private
//! server restarted under a watch, a SIGKILLed child process, ACL users, and
//! TLS certificate checks.
//!
//! Needs `ANYKV_TEST_REDIS_URL` and `ANYKV_TEST_REDIS_BIN` (from
//! `scripts/services.sh env`); the TLS case also `ANYKV_TEST_REDISS_URL`
//! (from `scripts/redis-tls.sh env`). Without them each case is ignored with
//! the reason, or fails under `CI=true`.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anykv::StoreExt;
use anykv::{Error, LockOptions, PutOptions, Store};
use futures::StreamExt;
use libtest_mimic::{Arguments, Failed};
use support::child::Holder;
use support::process::{self, Process};
use support::Env;

/// The helper child of
/// `killed_child_releases_ephemeral_key_and_lock_within_session_ttl_plus_2s`.
const CHILD: Holder = Holder {
    url_env: "ANYKV_REDIS_TEST_CHILD_URL",
    key: "eph",
    lock: "lock",
};

type TestResult = Result<(), Failed>;

fn main() {
    CHILD.serve_if_child();
    // rediss:// needs a rustls crypto provider; the application picks it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Arguments::from_args();
    let tests = vec![
        support::async_trial(
            "watches_report_a_transient_error_across_a_server_restart_then_deliver_later_changes",
            &["ANYKV_TEST_REDIS_BIN"],
            watch_survives_restart,
        ),
        support::async_trial(
            "fencing_tokens_increase_across_a_restart_and_an_older_restored_counter",
            &["ANYKV_TEST_REDIS_BIN"],
            fencing_survives_counter_loss,
        ),
        support::async_trial(
            "restart_without_persistence_reports_the_lock_lost_before_a_waiter_retakes_it",
            &["ANYKV_TEST_REDIS_BIN"],
            lost_before_retaken_after_restart,
        ),
        support::async_trial(
            "flushall_while_held_reports_the_lock_lost_within_250ms_of_a_new_grant",
            &["ANYKV_TEST_REDIS_BIN"],
            lost_after_flushall,
        ),
        support::async_trial(
            "restart_with_appendfsync_always_keeps_the_lock_key_and_tokens_increasing",
            &["ANYKV_TEST_REDIS_BIN"],
            restart_with_persistence,
        ),
        support::async_trial(
            "unlock_abandoned_while_the_server_is_stopped_still_releases_after_it_resumes",
            &["ANYKV_TEST_REDIS_BIN"],
            unlock_survives_a_stopped_server,
        ),
        support::async_trial(
            "huge_ttls_are_invalid_arguments_naming_the_key_never_a_panic_or_a_write",
            &["ANYKV_TEST_REDIS_URL"],
            huge_ttls_rejected,
        ),
        support::async_trial(
            "close_leaves_no_session_state_on_the_server",
            &["ANYKV_TEST_REDIS_URL"],
            close_leaves_no_session_state,
        ),
        support::async_trial(
            "a_release_with_a_waiter_hands_the_lock_key_on_in_one_change_with_one_message",
            &["ANYKV_TEST_REDIS_URL"],
            hand_on_is_one_change,
        ),
        support::async_trial(
            "a_waiter_dropped_while_its_link_is_cut_leaves_the_queue_once_the_link_is_back",
            &["ANYKV_TEST_REDIS_URL"],
            dropped_waiter_leaves_after_an_outage,
        ),
        support::async_trial(
            "lock_reports_lost_when_its_keeper_task_ends",
            &["ANYKV_TEST_REDIS_URL"],
            lost_when_keeper_ends,
        ),
        support::async_trial(
            "killed_child_releases_ephemeral_key_and_lock_within_session_ttl_plus_2s",
            &["ANYKV_TEST_REDIS_URL"],
            killed_child_releases,
        ),
        support::async_trial(
            "acl_user_with_wrong_password_is_unauthorized_and_the_password_is_never_shown",
            &["ANYKV_TEST_REDIS_URL"],
            acl_user,
        ),
        support::async_trial(
            "rediss_checks_the_server_certificate_against_ca_file",
            &["ANYKV_TEST_REDISS_URL"],
            tls_checks_certificate,
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}

fn fail(msg: impl std::fmt::Display) -> Failed {
    msg.to_string().into()
}

// ------------------------------------------------------------------ restart

/// A private `redis-server` on a free loopback port, data in a temp dir;
/// killed when dropped.
struct PrivateRedis {
    bin: String,
    port: u16,
    dir: PathBuf,
    /// Persistence settings (the default: none).
    persistence: Vec<&'static str>,
    process: Process,
}

impl PrivateRedis {
    fn start(bin: &str) -> Result<Self, Failed> {
        Self::start_with(bin, &["--save", "", "--appendonly", "no"])
    }

    /// Started with these persistence settings instead of none.
    fn start_with(bin: &str, persistence: &[&'static str]) -> Result<Self, Failed> {
        let port = process::free_port().map_err(|e| fail(format!("no free port: {e}")))?;
        let dir = support::scratch_dir("redis-server-test-data");
        std::fs::create_dir_all(&dir).map_err(fail)?;
        let server = PrivateRedis {
            bin: bin.to_owned(),
            port,
            dir,
            persistence: persistence.to_vec(),
            process: Process::new(format!("private redis-server {bin}")),
        };
        server.spawn()?;
        Ok(server)
    }

    /// Starts (or restarts) the server and waits until it answers PING.
    fn spawn(&self) -> TestResult {
        self.process.start(
            Command::new(&self.bin)
                .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
                .args(&self.persistence)
                .args(["--protected-mode", "no"])
                .arg("--dir")
                .arg(&self.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        let pong = || {
            let Ok(client) = redis::Client::open(self.url()) else {
                return false;
            };
            let Ok(mut conn) = client.get_connection() else {
                return false;
            };
            redis::cmd("PING").query::<String>(&mut conn).is_ok()
        };
        self.process
            .wait_ready_blocking(Duration::from_secs(20), Duration::from_millis(50), pong)
            .map_err(fail)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn watch_survives_restart(env: Env) -> TestResult {
    let server = PrivateRedis::start(env.get("ANYKV_TEST_REDIS_BIN"))?;
    let store = anykv::open(&format!("{}/restart?session_ttl=2s", server.url()))
        .await
        .map_err(fail)?;
    let before = store
        .put("k", "before", PutOptions::new())
        .await
        .map_err(fail)?;
    let mut watch = store.watch("k").await.map_err(fail)?;
    match watch.next().await {
        Some(Ok(Some(p))) if p == before => {}
        other => {
            return Err(fail(format!(
                "first item should be the current state: {other:?}"
            )))
        }
    }
    // A tree change stream re-syncs too: messages of the outage are lost.
    let mut changes = store.watch_tree_changes("").await.map_err(fail)?;
    let mut tree = std::collections::BTreeMap::new();
    match changes.next().await {
        Some(Ok(snapshot @ anykv::TreeChange::Snapshot(_))) => snapshot.apply(&mut tree),
        other => {
            return Err(fail(format!(
                "first change should be a snapshot: {other:?}"
            )))
        }
    }

    server.process.kill();
    match tokio::time::timeout(Duration::from_secs(15), watch.next()).await {
        Ok(Some(Err(e))) if e.is_transient() => {}
        other => return Err(fail(format!("expected a transient error item: {other:?}"))),
    }
    server.spawn()?;

    // The handle reconnects by itself; writes may fail until it has.
    let after = support::retry(Duration::from_secs(15), || {
        store.put("k", "after", PutOptions::new())
    })
    .await
    .map_err(|e| fail(format!("put after restart: {e}")))?;
    // The server lost its data (no persistence); versions still increase.
    if after.last_index <= before.last_index {
        return Err(fail(format!(
            "version went backwards across the restart: {} then {}",
            before.last_index, after.last_index
        )));
    }
    let mut last = before.last_index;
    let seen = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(item) = watch.next().await {
            match item {
                Ok(Some(p)) => {
                    if p.last_index < last {
                        return Err(fail("last_index went backwards"));
                    }
                    last = p.last_index;
                    if p.value == "after" {
                        return Ok(());
                    }
                }
                Ok(None) => {}
                Err(e) if e.is_transient() => {}
                Err(e) => return Err(fail(format!("terminal watch error: {e}"))),
            }
        }
        Err(fail("watch ended"))
    })
    .await;
    seen.map_err(|_| fail("the change made after the restart never arrived"))??;
    let converged = tokio::time::timeout(Duration::from_secs(15), async {
        while tree.get("k").map(|p: &anykv::KvPair| p.value.as_ref()) != Some(&b"after"[..]) {
            match changes.next().await {
                Some(Ok(change)) => change.apply(&mut tree),
                Some(Err(e)) if e.is_transient() => {}
                other => return Err(fail(format!("change stream ended: {other:?}"))),
            }
        }
        Ok(())
    })
    .await;
    converged
        .map_err(|_| fail("the tree change stream never saw the change after the restart"))??;
    store.close().await.map_err(fail)?;
    Ok(())
}

async fn fencing_survives_counter_loss(env: Env) -> TestResult {
    let server = PrivateRedis::start(env.get("ANYKV_TEST_REDIS_BIN"))?;
    let url = format!("{}/fencing?session_ttl=2s", server.url());
    let token = |url: String| async move {
        let store = anykv::open(&url).await.map_err(fail)?;
        let guard = store
            .new_lock("lock", LockOptions::new("me"))
            .await
            .map_err(fail)?
            .lock()
            .await
            .map_err(fail)?;
        let token = guard.fencing_token();
        guard.unlock().await.map_err(fail)?;
        store.close().await.map_err(fail)?;
        Ok::<u64, Failed>(token)
    };
    let first = token(url.clone()).await?;

    // A restart without persistence loses the counter altogether.
    server.process.kill();
    server.spawn()?;
    let after_restart = token(url.clone()).await?;
    if after_restart <= first {
        return Err(fail(format!(
            "token went backwards across a restart: {first} then {after_restart}"
        )));
    }

    // A restored snapshot (or a failover) brings back an older counter.
    let client = redis::Client::open(server.url()).map_err(fail)?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(fail)?;
    redis::cmd("SET")
        .arg("anykv:version")
        .arg(first - 1000)
        .query_async::<()>(&mut conn)
        .await
        .map_err(fail)?;
    let after_rollback = token(url).await?;
    if after_rollback <= after_restart {
        return Err(fail(format!(
            "token repeated after the counter was rolled back: {after_restart} then {after_rollback}"
        )));
    }
    Ok(())
}

// ------------------------------------------------------------ lock resets

/// When `guard.lost()` resolves, on the test's one `Instant` clock.
fn lost_clock(guard: &anykv::LockGuard) -> tokio::task::JoinHandle<Instant> {
    let lost = guard.lost();
    tokio::spawn(async move {
        lost.await;
        Instant::now()
    })
}

/// Polls `try_lock` every 5 ms (an eager competitor) until it succeeds;
/// transient errors (the server restarting) are retried. Bounded by `within`.
async fn take_when_free(
    lock: &anykv::Lock,
    within: Duration,
) -> Result<(anykv::LockGuard, Instant), Failed> {
    let deadline = Instant::now() + within;
    loop {
        match lock.try_lock().await {
            Ok(guard) => return Ok((guard, Instant::now())),
            Err(Error::Locked { .. }) => {}
            Err(e) if e.is_transient() => {}
            Err(e) => return Err(fail(format!("try_lock: {e}"))),
        }
        if Instant::now() > deadline {
            return Err(fail(format!("the lock was not free within {within:?}")));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `lost` minus `acquired` in ms, signed (negative: lost() came first).
fn gap_ms(lost: Instant, acquired: Instant) -> f64 {
    if lost >= acquired {
        (lost - acquired).as_secs_f64() * 1e3
    } else {
        -((acquired - lost).as_secs_f64() * 1e3)
    }
}

/// A holder and a competitor on two handles of `url`; the holder holds.
async fn holder_and_competitor(
    url: &str,
    ttl: Duration,
) -> Result<
    (
        Arc<dyn Store>,
        Arc<dyn Store>,
        anykv::LockGuard,
        anykv::Lock,
    ),
    Failed,
> {
    let holder = anykv::open(url).await.map_err(fail)?;
    let competitor = anykv::open(url).await.map_err(fail)?;
    let guard = holder
        .new_lock("lock", LockOptions::new("holder").with_ttl(ttl))
        .await
        .map_err(fail)?
        .try_lock()
        .await
        .map_err(fail)?;
    let lock = competitor
        .new_lock("lock", LockOptions::new("competitor").with_ttl(ttl))
        .await
        .map_err(fail)?;
    match lock.try_lock().await {
        Err(Error::Locked { .. }) => {}
        other => return Err(fail(format!("the holder should hold the lock: {other:?}"))),
    }
    // Let the holder's keeper subscribe and confirm its first renewal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if guard.is_lost() {
        return Err(fail("lost before anything happened"));
    }
    Ok((holder, competitor, guard, lock))
}

async fn lost_before_retaken_after_restart(env: Env) -> TestResult {
    let server = PrivateRedis::start(env.get("ANYKV_TEST_REDIS_BIN"))?;
    let url = format!("{}/reset", server.url());
    let ttl = Duration::from_secs(9);
    let (holder, competitor, guard, lock) = holder_and_competitor(&url, ttl).await?;
    let lost_at = lost_clock(&guard);

    let killed = Instant::now();
    server.process.kill();
    server.spawn()?; // empty: no persistence
    let up = Instant::now();
    let (taken, acquired) = take_when_free(&lock, Duration::from_secs(15)).await?;
    let lost = tokio::time::timeout(ttl, lost_at)
        .await
        .map_err(|_| fail("the holder never learned that its lock was lost"))?
        .map_err(fail)?;
    eprintln!(
        "killed at 0, server up at {:?}, holder lost() at {:?}, competitor acquired at {:?}: \
         lost() {:+.1} ms after the competitor's acquire",
        up - killed,
        lost - killed,
        acquired - killed,
        gap_ms(lost, acquired),
    );
    if lost > acquired {
        return Err(fail(format!(
            "two holders: the competitor acquired {:.1} ms before the holder's lost() fired",
            gap_ms(lost, acquired)
        )));
    }
    drop(guard);
    drop(taken);
    let _ = holder.close().await;
    let _ = competitor.close().await;
    Ok(())
}

async fn lost_after_flushall(env: Env) -> TestResult {
    let server = PrivateRedis::start(env.get("ANYKV_TEST_REDIS_BIN"))?;
    let url = format!("{}/flush", server.url());
    let ttl = Duration::from_secs(9);
    let client = redis::Client::open(server.url()).map_err(fail)?;
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .map_err(fail)?;
    let (holder, competitor, guard, lock) = holder_and_competitor(&url, ttl).await?;
    let lost_at = lost_clock(&guard);

    let flushed = Instant::now();
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut raw)
        .await
        .map_err(fail)?;
    let (taken, acquired) = take_when_free(&lock, Duration::from_secs(5)).await?;
    let lost = tokio::time::timeout(ttl, lost_at)
        .await
        .map_err(|_| fail("the holder never learned that its lock was lost"))?
        .map_err(fail)?;
    let gap = gap_ms(lost, acquired);
    eprintln!(
        "FLUSHALL at 0, competitor acquired at {:?}, holder lost() at {:?}: \
         lost() {gap:+.2} ms after the competitor's acquire (renewal every {:?})",
        acquired - flushed,
        lost - flushed,
        ttl / 3,
    );
    // A FLUSHALL publishes nothing; the competitor's grant does, on the key's
    // change channel, and the holder's keeper hears it.
    if gap > 250.0 {
        return Err(fail(format!(
            "the holder learned of the loss {gap:.1} ms after the competitor's grant"
        )));
    }
    drop(guard);
    drop(taken);
    let _ = holder.close().await;
    let _ = competitor.close().await;
    Ok(())
}

async fn restart_with_persistence(env: Env) -> TestResult {
    let server = PrivateRedis::start_with(
        env.get("ANYKV_TEST_REDIS_BIN"),
        &[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ],
    )?;
    let url = format!("{}/durable", server.url());
    let ttl = Duration::from_secs(20);
    let (holder, competitor, guard, lock) = holder_and_competitor(&url, ttl).await?;
    let first = guard.fencing_token();
    let lost_at = lost_clock(&guard);

    let killed = Instant::now();
    server.process.kill();
    server.spawn()?; // replays the AOF: the lock key is back
                     // Documented: any restart may have lost the lock, so the guard says so.
    let lost = tokio::time::timeout(Duration::from_secs(5), lost_at)
        .await
        .map_err(|_| fail("a restart should report the lock lost"))?
        .map_err(fail)?;
    eprintln!("holder lost() {:?} after the kill", lost - killed);
    // The key survived the restart: nobody else gets the lock meanwhile.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match lock.try_lock().await {
            Err(Error::Locked { .. }) => break,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => {
                return Err(fail(format!(
                    "the persisted lock key should still hold the lock: {other:?}"
                )))
            }
        }
    }
    // unlock() says the lock was lost, and still deletes the key.
    match tokio::time::timeout(Duration::from_secs(10), guard.unlock()).await {
        Ok(Err(Error::LockLost { .. })) => {}
        other => return Err(fail(format!("unlock after a restart: {other:?}"))),
    }
    let (taken, _) = take_when_free(&lock, Duration::from_secs(5)).await?;
    if taken.fencing_token() <= first {
        return Err(fail(format!(
            "token did not increase across the restart: {first} then {}",
            taken.fencing_token()
        )));
    }
    drop(taken);
    let _ = holder.close().await;
    let _ = competitor.close().await;
    Ok(())
}

async fn unlock_survives_a_stopped_server(env: Env) -> TestResult {
    let server = PrivateRedis::start(env.get("ANYKV_TEST_REDIS_BIN"))?;
    let url = format!("{}/stopped", server.url());
    let ttl = Duration::from_secs(60);
    let (holder, competitor, guard, lock) = holder_and_competitor(&url, ttl).await?;
    let waiting = tokio::spawn(async move {
        let guard = lock.lock().await;
        (guard, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    server.process.pause()?;
    let stopped = Instant::now();
    let gave_up = tokio::time::timeout(Duration::from_secs(1), guard.unlock()).await;
    if let Ok(result) = gave_up {
        return Err(fail(format!(
            "unlock should not finish while the server is stopped: {result:?}"
        )));
    }
    tokio::time::sleep_until((stopped + Duration::from_secs(2)).into()).await;
    server.process.resume()?;
    let resumed = Instant::now();
    let (taken, at) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .map_err(|_| fail("the waiter did not get the lock within 5 s of SIGCONT"))?
        .map_err(fail)?;
    let taken = taken.map_err(fail)?;
    eprintln!(
        "waiter took the lock {:?} after SIGCONT (lock TTL {ttl:?})",
        at - resumed
    );
    drop(taken);
    let _ = holder.close().await;
    let _ = competitor.close().await;
    Ok(())
}

async fn huge_ttls_rejected(env: Env) -> TestResult {
    let ns = support::unique("redis-server-test-huge");
    let store = anykv::open(&format!("{}/{ns}", env.get("ANYKV_TEST_REDIS_URL")))
        .await
        .map_err(fail)?;
    for ttl in [Duration::MAX, Duration::from_secs(u64::MAX - 1)] {
        match store
            .new_lock("lock", LockOptions::new("me").with_ttl(ttl))
            .await
        {
            Err(Error::InvalidArgument { key, .. }) if key == "lock" => {}
            Ok(lock) => {
                let guard = lock.try_lock().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                let shown = guard.as_ref().map(|g| (g.fencing_token(), g.is_lost()));
                return Err(fail(format!(
                    "a lock TTL of {ttl:?} was accepted (try_lock: (token, lost) = {shown:?})"
                )));
            }
            other => return Err(fail(format!("lock TTL {ttl:?}: {other:?}"))),
        }
        let puts = [
            store.put("k", "v", PutOptions::ttl(ttl)).await,
            store.atomic_put("k", "v", None, PutOptions::ttl(ttl)).await,
        ];
        for put in puts {
            match put {
                Err(Error::InvalidArgument { key, .. }) if key == "k" => {}
                other => return Err(fail(format!("put with TTL {ttl:?}: {other:?}"))),
            }
        }
        if store.exists("k").await.map_err(fail)? {
            return Err(fail(format!("a put with TTL {ttl:?} wrote the key")));
        }
    }
    store.delete_tree("").await.map_err(fail)?;
    store.close().await.map_err(fail)?;
    Ok(())
}

async fn lost_when_keeper_ends(env: Env) -> TestResult {
    let ns = support::unique("redis-server-test-keeper");
    let url = format!("{}/{ns}?session_ttl=2s", env.get("ANYKV_TEST_REDIS_URL"));
    let inner = url.clone();
    // The keeper runs on a runtime of its own; dropping that runtime ends
    // every task on it, the keeper's too.
    let lost = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(fail)?;
        let guard = runtime.block_on(async {
            let store = anykv::open(&inner).await.map_err(fail)?;
            let guard = store
                .new_lock("lock", LockOptions::new("me"))
                .await
                .map_err(fail)?
                .try_lock()
                .await
                .map_err(fail)?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            if guard.is_lost() {
                return Err(fail("lost too early"));
            }
            Ok::<_, Failed>(guard)
        })?;
        drop(runtime);
        let lost = guard.is_lost();
        drop(guard); // no runtime: the lock key expires by itself
        Ok::<bool, Failed>(lost)
    })
    .await
    .map_err(fail)??;
    if !lost {
        return Err(fail("the keeper task ended and lost() did not fire"));
    }
    let store = anykv::open(&url).await.map_err(fail)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    store.delete_tree("").await.map_err(fail)?;
    store.close().await.map_err(fail)?;
    Ok(())
}

// ------------------------------------------------------------- killed child

async fn killed_child_releases(env: Env) -> TestResult {
    let session_ttl = Duration::from_secs(2);
    let url = format!(
        "{}/{}?session_ttl=2s",
        env.get("ANYKV_TEST_REDIS_URL"),
        support::unique("redis-server-test-child")
    );
    let mut child = CHILD.spawn(&url).map_err(fail)?;
    let child_token = child.fencing_token();

    let store = anykv::open(&url).await.map_err(fail)?;
    let lock = store
        .new_lock("lock", LockOptions::new("parent"))
        .await
        .map_err(fail)?;
    match lock.try_lock().await {
        Err(Error::Locked { .. }) => {}
        other => return Err(fail(format!("the child should hold the lock: {other:?}"))),
    }
    let mut watch = store.watch("eph").await.map_err(fail)?;
    match watch.next().await {
        Some(Ok(Some(p))) if p.value == "child" => {}
        other => return Err(fail(format!("the child's key should be there: {other:?}"))),
    }

    let killed = child.kill(); // SIGKILL
    let bound = session_ttl + Duration::from_secs(2);

    let key_gone = async {
        loop {
            match watch.next().await {
                Some(Ok(None)) => return Ok(killed.elapsed()),
                Some(Ok(Some(_))) | Some(Err(_)) => {}
                None => return Err(fail("watch ended")),
            }
        }
    };
    let lock_taken = async {
        let guard = lock.lock().await.map_err(fail)?;
        let took = killed.elapsed();
        let token = guard.fencing_token();
        guard.unlock().await.map_err(fail)?;
        Ok::<_, Failed>((took, token))
    };
    let (gone, taken) = tokio::time::timeout(bound + Duration::from_secs(10), async {
        tokio::join!(key_gone, lock_taken)
    })
    .await
    .map_err(|_| fail("neither the key nor the lock was released in time"))?;
    let gone = gone?;
    let (taken, token) = taken?;
    eprintln!("ephemeral key gone after {gone:?}, lock taken after {taken:?} (bound {bound:?})");
    if gone > bound || taken > bound {
        return Err(fail(format!(
            "released too late: key after {gone:?}, lock after {taken:?}, bound {bound:?}"
        )));
    }
    if token <= child_token {
        return Err(fail(format!(
            "fencing token did not increase: child {child_token}, parent {token}"
        )));
    }
    store.delete_tree("").await.map_err(fail)?;
    store.close().await.map_err(fail)?;
    Ok(())
}

// ---------------------------------------------------------------------- ACL

/// Deletes the ACL user when dropped.
struct AclUser {
    client: redis::Client,
    name: String,
}

impl Drop for AclUser {
    fn drop(&mut self) {
        if let Ok(mut conn) = self.client.get_connection() {
            let _ = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(&self.name)
                .query::<i64>(&mut conn);
        }
    }
}

/// The commands the backend sends (directly or from its scripts), for the
/// minimal ACL in the backend docs.
const MINIMAL_COMMANDS: &str = "+@connection +evalsha +script|load +hmget +exists \
     +subscribe +psubscribe +unsubscribe +punsubscribe +select \
     +incr +time +get +set +del +hget +hset +pexpire +pttl \
     +sadd +srem +smembers +zadd +zrem +zrange +zscore +zrangebylex +hdel +publish";

async fn acl_user(env: Env) -> TestResult {
    let base = env.get("ANYKV_TEST_REDIS_URL");
    let (scheme, host) = base
        .split_once("://")
        .ok_or_else(|| fail("bad ANYKV_TEST_REDIS_URL"))?;
    let client = redis::Client::open(base).map_err(fail)?;
    let user = AclUser {
        client: client.clone(),
        name: support::unique("redis-server-test-acl"),
    };
    let password = "correct-horse-battery-staple";
    let wrong = "s3cret-but-wrong";
    {
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(fail)?;
        // The least a user needs, as the backend docs list it.
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&user.name)
            .arg("on")
            .arg(format!(">{password}"))
            .arg("resetkeys")
            .arg("~anykv:*")
            // watch_tree uses PSUBSCRIBE, whose patterns Redis ACLs compare
            // literally: see the backend docs.
            .arg("allchannels")
            .arg("-@all")
            .arg(MINIMAL_COMMANDS.split_whitespace().collect::<Vec<_>>())
            .query_async::<()>(&mut conn)
            .await
            .map_err(fail)?;
    }

    let url = |pass: &str, who: &str| format!("{scheme}://{who}:{pass}@{host}/{}", user.name);
    for (pass, who) in [(wrong, user.name.as_str()), (wrong, "no-such-user-anykv")] {
        match anykv::open(&url(pass, who)).await {
            Err(e @ Error::Unauthorized { .. }) => {
                let shown = format!("{e} {e:?} {:?}", std::error::Error::source(&e));
                if shown.contains(pass) {
                    return Err(fail(format!("the password leaked into the error: {shown}")));
                }
            }
            other => {
                return Err(fail(format!(
                    "wrong credentials for {who} should be Unauthorized: {other:?}"
                )))
            }
        }
    }

    let store: Arc<dyn Store> = anykv::open(&url(password, &user.name))
        .await
        .map_err(fail)?;
    let shown = format!("{store:?} {:?}", store.capabilities());
    if shown.contains(password) {
        return Err(fail(format!("the password leaked into Debug: {shown}")));
    }
    // Everything the backend does works with the minimal permissions.
    let mut watch = store.watch_tree("").await.map_err(fail)?;
    support::next_within(&mut watch, Duration::from_secs(10))
        .await
        .map_err(fail)?
        .map_err(fail)?;
    store.put("k", "v", PutOptions::new()).await.map_err(fail)?;
    support::next_within(&mut watch, Duration::from_secs(10))
        .await
        .map_err(fail)?
        .map_err(fail)?;
    let got = store.get("k").await.map_err(fail)?;
    if got.value != "v" || !store.exists("k").await.map_err(fail)? {
        return Err(fail("read back something else"));
    }
    store
        .atomic_put("k", "w", Some(&got), PutOptions::new())
        .await
        .map_err(fail)?;
    store
        .put("e", "x", PutOptions::ephemeral())
        .await
        .map_err(fail)?;
    store
        .put("t", "x", PutOptions::ttl(Duration::from_secs(30)))
        .await
        .map_err(fail)?;
    let guard = store
        .new_lock("l", LockOptions::new("me"))
        .await
        .map_err(fail)?
        .try_lock()
        .await
        .map_err(fail)?;
    if store.list("").await.map_err(fail)?.len() != 4 {
        return Err(fail("listing should show k, e, t and the lock l"));
    }
    // A waiting lock (the waiter queue) on a second handle of the same user.
    let other: Arc<dyn Store> = anykv::open(&url(password, &user.name))
        .await
        .map_err(fail)?;
    let waiting = other
        .new_lock("l", LockOptions::new("next"))
        .await
        .map_err(fail)?;
    let waiter = tokio::spawn(async move { waiting.lock().await.map(|g| g.fencing_token()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = guard.fencing_token();
    guard.unlock().await.map_err(fail)?;
    match tokio::time::timeout(Duration::from_secs(10), waiter).await {
        Ok(Ok(Ok(token))) if token > first => {}
        other => {
            return Err(fail(format!(
                "the waiter should take the lock after the release: {other:?}"
            )))
        }
    }
    other.close().await.map_err(fail)?;
    store.delete("t").await.map_err(fail)?;
    drop(watch);

    // Take the user's permission to run scripts away: a write is refused
    // as Unauthorized, not as a generic error.
    {
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(fail)?;
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&user.name)
            .arg("-evalsha")
            .query_async::<()>(&mut conn)
            .await
            .map_err(fail)?;
    }
    match store.put("k", "w", PutOptions::new()).await {
        Err(Error::Unauthorized { .. }) => {}
        other => {
            return Err(fail(format!(
                "a refused command should be Unauthorized: {other:?}"
            )))
        }
    }
    let _ = store.close().await;
    let cleanup = anykv::open(&format!("{base}/{}", user.name))
        .await
        .map_err(fail)?;
    cleanup.delete_tree("").await.map_err(fail)?;
    cleanup.close().await.map_err(fail)?;
    Ok(())
}

// ---------------------------------------------------------------------- TLS

async fn tls_checks_certificate(env: Env) -> TestResult {
    let with_ca = env.get("ANYKV_TEST_REDISS_URL");
    let (base, query) = with_ca.split_once('?').unwrap_or((with_ca, ""));
    let ns = support::unique("redis-server-test-tls");
    let store = anykv::open(&format!("{base}/{ns}?{query}"))
        .await
        .map_err(fail)?;
    store
        .put("k", "over tls", PutOptions::new())
        .await
        .map_err(fail)?;
    if store.get("k").await.map_err(fail)?.value != "over tls" {
        return Err(fail("read back something else"));
    }
    store.delete_tree("").await.map_err(fail)?;
    store.close().await.map_err(fail)?;

    // Without the CA the server's certificate is not trusted: a final
    // error (retrying cannot help), never a panic and never a silent
    // plaintext fallback.
    let plain = format!("{base}/{ns}?connect_timeout=2s");
    match anykv::open(&plain).await {
        Err(e @ Error::Backend { .. }) => {
            let shown = format!("{:?}", std::error::Error::source(&e));
            if !shown.contains("certificate") {
                return Err(fail(format!(
                    "the error should name the certificate: {e:?}"
                )));
            }
        }
        other => {
            return Err(fail(format!(
                "an untrusted certificate should be a final error: {other:?}"
            )))
        }
    }
    // A plain redis:// client against the TLS port fails too.
    let downgraded = plain.replacen("rediss://", "redis://", 1);
    if anykv::open(&downgraded).await.is_ok() {
        return Err(fail("a plaintext connection to the TLS port succeeded"));
    }
    Ok(())
}

/// `session:*` keys (session sets and liveness markers) in database `db`.
fn session_keys(base: &str, db: u32) -> Result<Vec<String>, Failed> {
    let client = redis::Client::open(format!("{base}/{db}")).map_err(fail)?;
    let mut conn = client.get_connection().map_err(fail)?;
    redis::cmd("KEYS")
        .arg("anykv:*session:*")
        .query::<Vec<String>>(&mut conn)
        .map_err(fail)
}

async fn close_leaves_no_session_state(env: Env) -> TestResult {
    // A database of its own, so other tests' sessions do not count.
    const DB: u32 = 11;
    let base = env.get("ANYKV_TEST_REDIS_URL").to_owned();
    let before = session_keys(&base, DB)?;
    let ns = support::unique("redis-server-test-close");
    let store = anykv::open(&format!("{base}/{ns}?db={DB}"))
        .await
        .map_err(fail)?;
    store
        .put("e", "v", PutOptions::ephemeral())
        .await
        .map_err(fail)?;
    // The session's state exists while it is open (the refresh task arms
    // the liveness marker right after opening).
    let deadline = Instant::now() + Duration::from_secs(5);
    while session_keys(&base, DB)?.len() < before.len() + 2 {
        if Instant::now() > deadline {
            return Err(fail(format!(
                "no session set and marker appeared: {:?}",
                session_keys(&base, DB)?
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.close().await.map_err(fail)?;
    let after = session_keys(&base, DB)?;
    if after.len() != before.len() {
        return Err(fail(format!(
            "close left session state behind: before {before:?}, after {after:?}"
        )));
    }
    Ok(())
}

/// A release with a waiter in line is one change: the lock key goes from
/// the holder straight to the next holder, with one change message (a
/// release that deleted and then granted would send two), whose version is
/// the new holder's fencing token and the key's version after it.
async fn hand_on_is_one_change(env: Env) -> TestResult {
    const PATIENCE: Duration = Duration::from_secs(10);
    let base = env.get("ANYKV_TEST_REDIS_URL");
    let ns = support::unique("redis-server-test-hand-on");
    let url = format!("{base}/{ns}");
    let holder = anykv::open(&url).await.map_err(fail)?;
    let next = anykv::open(&url).await.map_err(fail)?;
    let held = holder
        .new_lock("l", LockOptions::new("first"))
        .await
        .map_err(fail)?
        .lock()
        .await
        .map_err(fail)?;
    let client = redis::Client::open(base).map_err(fail)?;
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(fail)?;
    let keys = |pattern: String| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("KEYS")
                .arg(pattern)
                .query_async::<Vec<String>>(&mut conn)
                .await
                .map_err(fail)
        }
    };
    let data = keys(format!("anykv:k:{ns}*")).await?;
    let [data] = data.as_slice() else {
        return Err(fail(format!("expected one data key, found {data:?}")));
    };
    let full = data.trim_start_matches("anykv:k:");
    let mut pubsub = client.get_async_pubsub().await.map_err(fail)?;
    pubsub
        .subscribe(format!("anykv:0:k:{full}"))
        .await
        .map_err(fail)?;
    let lock = next
        .new_lock("l", LockOptions::new("second"))
        .await
        .map_err(fail)?;
    let waiter = tokio::spawn(async move { lock.lock().await });
    // The waiter is in line once the server's queue holds it.
    let deadline = Instant::now() + PATIENCE;
    while keys(format!("anykv:q:{ns}*")).await?.is_empty() {
        if Instant::now() > deadline {
            return Err(fail("the waiter never joined the queue"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held.unlock().await.map_err(fail)?;
    let guard = tokio::time::timeout(PATIENCE, waiter)
        .await
        .map_err(|_| fail("the waiter did not get the lock"))?
        .map_err(fail)?
        .map_err(fail)?;
    let mut versions = Vec::new();
    {
        let mut messages = pubsub.on_message();
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(300), messages.next()).await
        {
            versions.push(String::from_utf8_lossy(message.get_payload_bytes()).into_owned());
        }
    }
    let token = guard.fencing_token().to_string();
    if versions != [token.clone()] {
        return Err(fail(format!(
            "the hand-over should be one change message carrying the new holder's token \
             {token}; got {versions:?}"
        )));
    }
    let now = next.get("l").await.map_err(fail)?;
    if now.value != "second" || now.last_index != guard.fencing_token() {
        return Err(fail(format!("after the hand-over the key reads {now:?}")));
    }
    guard.unlock().await.map_err(fail)?;
    for store in [holder, next] {
        store.close().await.map_err(fail)?;
    }
    Ok(())
}

/// A waiter whose `lock()` is dropped while its link to the server is cut
/// (through a proxy) cannot leave the queue then; once the link is back it
/// does, before the holder's release could hand it the lock. Otherwise the
/// release hands the lock to the departed waiter, whose lease (the lock
/// TTL, 20 s here) keeps it in line, and the lock sits unclaimed until that
/// grant's TTL ends. Another handle must take the lock within 2 s of the
/// holder's release.
async fn dropped_waiter_leaves_after_an_outage(env: Env) -> TestResult {
    const PATIENCE: Duration = Duration::from_secs(10);
    let base = env.get("ANYKV_TEST_REDIS_URL").trim_end_matches('/');
    let port = base
        .rsplit(':')
        .next()
        .and_then(|port| port.parse::<u16>().ok())
        .ok_or_else(|| fail(format!("no port in {base}")))?;
    let proxy = support::proxy::CutProxy::start(port).await.map_err(fail)?;
    let ns = support::unique("redis-server-test-dropped-waiter");
    let direct = format!("{base}/{ns}");
    let canceller = anykv::open(&format!("redis://{}/{ns}", proxy.addr()))
        .await
        .map_err(fail)?;
    let holder = anykv::open(&direct).await.map_err(fail)?;
    let other = anykv::open(&direct).await.map_err(fail)?;
    let ttl = Duration::from_secs(20);
    let held = holder
        .new_lock("l", LockOptions::new("holder").with_ttl(ttl))
        .await
        .map_err(fail)?
        .lock()
        .await
        .map_err(fail)?;
    let lock = canceller
        .new_lock("l", LockOptions::new("dropped").with_ttl(ttl))
        .await
        .map_err(fail)?;
    let waiting = tokio::spawn(async move { lock.lock().await });
    let client = redis::Client::open(base).map_err(fail)?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(fail)?;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let queued: Vec<String> = redis::cmd("KEYS")
            .arg(format!("anykv:q:{ns}*"))
            .query_async(&mut conn)
            .await
            .map_err(fail)?;
        if !queued.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(fail("the waiter never joined the queue"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    proxy.set_cut(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    waiting.abort(); // the lock() future is dropped: its waiter must leave
    let _ = waiting.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.set_cut(false);
    // Long enough for the leaving handle to reconnect and be heard.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    held.unlock().await.map_err(fail)?;

    let contender = other
        .new_lock("l", LockOptions::new("other"))
        .await
        .map_err(fail)?;
    let start = Instant::now();
    let window = Duration::from_secs(2);
    let guard = loop {
        match contender.try_lock().await {
            Ok(guard) => break guard,
            Err(Error::Locked { .. }) if start.elapsed() < window => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                return Err(fail(format!(
                    "the lock was still held {:?} after the holder released it, \
                     handed to the waiter that had gone ({e})",
                    start.elapsed()
                )))
            }
        }
    };
    guard.unlock().await.map_err(fail)?;
    for store in [canceller, holder, other] {
        store.close().await.map_err(fail)?;
    }
    Ok(())
}
