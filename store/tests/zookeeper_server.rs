//! ZooKeeper behaviour that needs a server of our own: restarts, outages
//! longer than the session timeout, a killed client process, a server without
//! extended types, digest ACLs.
//!
//! Each test starts a private ZooKeeper (`ANYKV_TEST_JAVA`,
//! `ANYKV_TEST_ZK_CLASSPATH`, optional `ANYKV_TEST_ZK_MAIN`, as printed by
//! `scripts/services.sh env`) on a free loopback port with its data in a
//! temporary directory, and restarts it on the same port and data. Without
//! those variables the tests are ignored, or fail under `CI=true`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anykv::StoreExt;
use anykv::{Error, LockOptions, PutOptions};
use futures::StreamExt;
use libtest_mimic::{Arguments, Failed};
use support::child::Holder;
use support::process::{self, Process};
use support::{block_on, next_within, Env};

type TestResult = Result<(), Failed>;

/// A test: what it proves, the body, and whether the server needs extended
/// types (TTL znodes).
type Case = (&'static str, fn(&Server) -> TestResult, bool);

const JAVA_ENV: &str = "ANYKV_TEST_JAVA";
const CLASSPATH_ENV: &str = "ANYKV_TEST_ZK_CLASSPATH";

/// The helper child of `killed_child_releases_*`.
const CHILD: Holder = Holder {
    url_env: "ANYKV_ZK_TEST_CHILD_URL",
    key: "eph",
    lock: "leader",
};

fn main() {
    CHILD.serve_if_child();
    let args = Arguments::from_args();
    let tests: Vec<Case> = vec![
        (
            "watch_reports_transient_error_across_server_restart_then_continues",
            watch_across_restart,
            true,
        ),
        (
            "lock_lost_when_server_down_past_session_timeout_then_store_recovers",
            outage_past_session_timeout,
            true,
        ),
        (
            "killed_child_releases_ephemeral_key_and_lock_within_session_timeout",
            killed_child_releases,
            true,
        ),
        (
            "ttl_put_without_extended_types_is_unsupported_with_hint",
            ttl_without_extended_types,
            false,
        ),
        ("digest_acl_refuses_other_identity", digest_acl, true),
        (
            "unlock_abandoned_during_server_pause_still_releases_after_resume",
            unlock_abandoned_during_pause,
            false,
        ),
        (
            "cancelled_lock_calls_leave_no_queue_znode_behind",
            cancelled_lock_calls,
            false,
        ),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, test, extended)| {
            support::trial(name, &[JAVA_ENV, CLASSPATH_ENV], move |env| {
                let server = Server::start(Tools::from_env(&env), extended)?;
                test(&server)
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

fn check(ok: bool, what: impl std::fmt::Display) -> TestResult {
    if ok {
        Ok(())
    } else {
        Err(what.into())
    }
}

// ----------------------------------------------------------------- tests ---

/// Server restarted in the middle of a watch: a transient error, then later
/// changes still arrive.
fn watch_across_restart(server: &Server) -> TestResult {
    block_on(async {
        // A session that outlives the restart, so the watch resumes on it.
        let url = server.url("restart", "session_ttl=20s");
        let store = anykv::open(&url).await?;
        let mut watch = store.watch("k").await?;
        check(
            next_within(&mut watch, Duration::from_secs(10))
                .await??
                .is_none(),
            "first item: absent",
        )?;
        store.put("k", "1", PutOptions::new()).await?;
        let item = next_within(&mut watch, Duration::from_secs(10)).await??;
        check(item.map(|p| p.value) == Some("1".into()), "saw 1")?;
        // A tree change stream lists again once its watch is back.
        let mut changes = store.watch_tree_changes("").await?;
        let mut tree = std::collections::BTreeMap::new();
        match next_within(&mut changes, Duration::from_secs(10)).await?? {
            snapshot @ anykv::TreeChange::Snapshot(_) => snapshot.apply(&mut tree),
            other => return Err(format!("first change: {other:?}").into()),
        }

        server.process.kill();
        match next_within(&mut watch, Duration::from_secs(10)).await? {
            Err(e) if e.is_transient() => {}
            other => return Err(format!("expected a transient error, got {other:?}").into()),
        }
        server.restart()?;

        // A change made by another client after the restart...
        let other = anykv::open(&url).await?;
        other.put("k", "2", PutOptions::new()).await?;
        await_value(&mut watch, "2").await?;
        while tree.get("k").map(|p: &anykv::KvPair| p.value.as_ref()) != Some(&b"2"[..]) {
            match next_within(&mut changes, Duration::from_secs(20)).await? {
                Ok(change) => change.apply(&mut tree),
                Err(e) if e.is_transient() => {}
                Err(e) => return Err(e.into()),
            }
        }
        // ... and later ones made through the watching handle.
        store.put("k", "3", PutOptions::new()).await?;
        await_value(&mut watch, "3").await?;
        other.delete("k").await?;
        loop {
            match next_within(&mut watch, Duration::from_secs(20)).await? {
                Ok(None) => break,
                Ok(Some(p)) => return Err(format!("unexpected state {p:?}").into()),
                Err(e) if e.is_transient() => {}
                Err(e) => return Err(e.into()),
            }
        }
        other.close().await?;
        store.close().await?;
        Ok(())
    })
}

async fn await_value(watch: &mut anykv::WatchStream, want: &str) -> TestResult {
    let mut last = 0;
    loop {
        match next_within(watch, Duration::from_secs(30)).await? {
            Ok(Some(p)) => {
                check(p.last_index > last, "last_index goes forward")?;
                last = p.last_index;
                if p.value == want {
                    return Ok(());
                }
            }
            Ok(None) => return Err(format!("key vanished while waiting for {want}").into()),
            Err(e) if e.is_transient() => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Server stopped for longer than the session timeout: the holder's `lost()`
/// fires, and afterwards the same handle works on a new session.
fn outage_past_session_timeout(server: &Server) -> TestResult {
    block_on(async {
        let url = server.url("outage", "session_ttl=3s&connect_timeout=2s");
        let store = anykv::open(&url).await?;
        let session_ttl = store.capabilities().session_ttl;
        store.put("eph", "e", PutOptions::ephemeral()).await?;
        let lock = store.new_lock("leader", LockOptions::new("me")).await?;
        let guard = lock.lock().await?;
        let first_token = guard.fencing_token();

        let stopped = Instant::now();
        server.process.kill();
        // The lock must be reported lost before the server could expire the
        // session, i.e. within the session timeout.
        tokio::time::timeout(session_ttl, guard.lost())
            .await
            .map_err(|_| {
                format!("lost() did not fire within {session_ttl:?} of the server stopping")
            })?;
        // Stay down past the session timeout (and the client's own expiry).
        tokio::time::sleep((session_ttl * 2).saturating_sub(stopped.elapsed())).await;
        // While the server is down, calls fail with transient errors.
        match store.get("eph").await {
            Err(e) if e.is_transient() => {}
            other => {
                return Err(format!("expected a transient error while down, got {other:?}").into())
            }
        }
        server.restart()?;

        // Same handle, new session.
        let put = support::retry(Duration::from_secs(30), || {
            store.put("after", "ok", PutOptions::new())
        })
        .await?;
        check(put.value == "ok", "put after the outage")?;
        check(
            store.get("after").await?.value == "ok",
            "get after the outage",
        )?;
        match guard.unlock().await {
            Err(Error::LockLost { .. }) => {}
            other => return Err(format!("unlock of a lost lock: {other:?}").into()),
        }
        // The old session's ephemeral key is gone, not recreated (the
        // restarted server expires the old session after its timeout).
        let deadline = Instant::now() + session_ttl + store.capabilities().session_slack;
        while store.exists("eph").await? {
            check(
                Instant::now() < deadline,
                "old session's ephemeral key still there",
            )?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The lock can be taken again through the same handle.
        let again = tokio::time::timeout(Duration::from_secs(15), lock.lock())
            .await
            .map_err(|_| "lock not re-acquired")??;
        check(
            again.fencing_token() > first_token,
            "fencing token grows across sessions",
        )?;
        check(
            store.get("leader").await?.value == "me",
            "holder value after re-acquiring",
        )?;
        again.unlock().await?;
        store.close().await?;
        Ok(())
    })
}

/// A SIGKILLed child holding an ephemeral key and a lock releases both within
/// the session timeout + 2 s.
fn killed_child_releases(server: &Server) -> TestResult {
    let url = server.url("killed", "session_ttl=3s");
    let mut child = CHILD.spawn(&url)?;
    block_on(async {
        let store = anykv::open(&url).await?;
        let session_ttl = store.capabilities().session_ttl;
        check(
            store.get("eph").await?.value == "child",
            "child's ephemeral key",
        )?;
        check(
            store.get("leader").await?.value == "child",
            "child holds the lock",
        )?;
        let lock = store.new_lock("leader", LockOptions::new("parent")).await?;
        check(
            matches!(lock.try_lock().await, Err(Error::Locked { .. })),
            "lock is held",
        )?;
        let mut eph = store.watch("eph").await?;
        check(
            next_within(&mut eph, Duration::from_secs(5))
                .await??
                .is_some(),
            "eph present",
        )?;

        let killed = child.kill();
        let bound = session_ttl + Duration::from_secs(2);
        let acquired = tokio::time::timeout(bound, async {
            let (gone, guard) = tokio::join!(
                async {
                    loop {
                        match eph.next().await {
                            Some(Ok(None)) => return Ok(killed.elapsed()),
                            Some(Ok(Some(_))) => {}
                            Some(Err(e)) if e.is_transient() => {}
                            Some(Err(e)) => return Err(e),
                            None => return Err(Error::Closed { url: String::new() }),
                        }
                    }
                },
                lock.lock()
            );
            Ok::<_, Error>((gone?, guard?, killed.elapsed()))
        })
        .await
        .map_err(|_| format!("not released within {bound:?} of the kill"))??;
        let (gone_after, guard, locked_after) = acquired;
        eprintln!("ephemeral key gone after {gone_after:?}, lock taken after {locked_after:?} (bound {bound:?})");
        check(
            store.get("leader").await?.value == "parent",
            "new holder's value",
        )?;
        guard.unlock().await?;
        store.close().await?;
        Ok(())
    })
}

/// A server without `extendedTypesEnabled` refuses TTL znodes; anykv says how
/// to enable them.
fn ttl_without_extended_types(server: &Server) -> TestResult {
    block_on(async {
        let store = anykv::open(&server.url("plain", "")).await?;
        match store
            .put("t", "v", PutOptions::ttl(Duration::from_secs(5)))
            .await
        {
            Err(e @ Error::Unsupported { .. }) => {
                check(
                    e.to_string().contains("extendedTypesEnabled"),
                    format!("hint in {e}"),
                )?;
            }
            other => return Err(format!("expected Unsupported, got {other:?}").into()),
        }
        // Everything else still works.
        store.put("p", "v", PutOptions::new()).await?;
        check(store.get("p").await?.value == "v", "plain put")?;
        store.close().await?;
        Ok(())
    })
}

/// Keys created with digest credentials are not readable by another identity.
fn digest_acl(server: &Server) -> TestResult {
    block_on(async {
        let alice = anykv::open(&server.url_with_user("alice:pw1@", "acl", "")).await?;
        alice.put("secret", "s", PutOptions::new()).await?;
        check(alice.get("secret").await?.value == "s", "owner reads")?;
        let bob = anykv::open(&server.url_with_user("bob:pw2@", "acl", "")).await?;
        match bob.get("secret").await {
            Err(Error::Unauthorized { .. }) => {}
            other => return Err(format!("expected Unauthorized, got {other:?}").into()),
        }
        let shown = format!("{alice:?}");
        check(
            !shown.contains("pw1"),
            format!("password in Debug: {shown}"),
        )?;
        alice.delete_tree("").await?;
        alice.close().await?;
        bob.close().await?;
        Ok(())
    })
}

/// An `unlock()` whose caller gives up while the server is paused (SIGSTOP,
/// shorter than the session timeout, long enough for the client to drop
/// the connection) still releases once the server is back: another handle
/// gets the lock within seconds of the resume, although the holder's
/// session lives on.
fn unlock_abandoned_during_pause(server: &Server) -> TestResult {
    block_on(async {
        let url = server.url("pause", "session_ttl=5s");
        let holder = anykv::open(&url).await?;
        let other = anykv::open(&url).await?;
        let lock = holder.new_lock("l", LockOptions::new("holder")).await?;
        let guard = lock.lock().await?;
        let theirs = other.new_lock("l", LockOptions::new("other")).await?;
        check(
            matches!(theirs.try_lock().await, Err(Error::Locked { .. })),
            "held before the pause",
        )?;

        let paused = Instant::now();
        let resume = server.process.paused()?;
        // The release goes out while the server is silent; the caller gives up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let gave_up = tokio::time::timeout(Duration::from_secs(1), guard.unlock()).await;
        check(
            gave_up.is_err(),
            format!("unlock finished while paused: {gave_up:?}"),
        )?;
        // Past the client's connection timeout (2/5 of 5 s), below the session timeout.
        tokio::time::sleep(Duration::from_millis(2800).saturating_sub(paused.elapsed())).await;
        drop(resume);
        let resumed = Instant::now();

        let taken = tokio::time::timeout(Duration::from_secs(4), async {
            loop {
                match theirs.lock().await {
                    Ok(guard) => return Ok(guard),
                    Err(e) if e.is_transient() => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .map_err(|_| "the abandoned unlock never released: no lock 4 s after the resume")??;
        eprintln!(
            "lock taken {:?} after the resume (paused for {:?})",
            resumed.elapsed(),
            resumed - paused
        );
        check(other.get("l").await?.value == "other", "new holder's value")?;
        taken.unlock().await?;
        holder.close().await?;
        other.close().await?;
        Ok(())
    })
}

/// `lock()` cancelled at every point of its life (a sweep of timeouts, on a
/// free lock and on a held one) leaves nothing behind: afterwards another
/// handle takes the lock at once, and the queue holds only its znode.
fn cancelled_lock_calls(server: &Server) -> TestResult {
    block_on(async {
        let url = server.url("cancel", "session_ttl=20s");
        let a = anykv::open(&url).await?;
        let b = anykv::open(&url).await?;
        let raw = zookeeper_client::Client::connect(&format!("127.0.0.1:{}", server.port))
            .await
            .map_err(|e| format!("raw client: {e}"))?;
        let queue = "/cancel%/l%lock";
        let lock_a = a.new_lock("l", LockOptions::new("a")).await?;
        let lock_b = b.new_lock("l", LockOptions::new("b")).await?;

        for held in [false, true] {
            let holder = if held {
                Some(lock_b.lock().await?)
            } else {
                None
            };
            let mut outcomes = [0u32; 3];
            // Timers tick in milliseconds; the machine's jitter fills the gaps.
            for step in 0..80u64 {
                let d = Duration::from_millis(step % 40);
                match tokio::time::timeout(d, lock_a.lock()).await {
                    Err(_) => outcomes[0] += 1,
                    Ok(Ok(guard)) => {
                        outcomes[1] += 1;
                        guard.unlock().await?;
                    }
                    Ok(Err(e)) => {
                        outcomes[2] += 1;
                        eprintln!("lock() failed: {e}");
                    }
                }
            }
            eprintln!(
                "held={held}: cancelled {}, acquired {}, failed {}",
                outcomes[0], outcomes[1], outcomes[2]
            );
            if let Some(guard) = holder {
                guard.unlock().await?;
            }
            // Another handle takes the lock at once (no stray znode of a's
            // session ahead of it in the queue).
            let guard = tokio::time::timeout(Duration::from_secs(3), lock_b.lock())
                .await
                .map_err(|_| {
                    format!("held={held}: lock not free 3 s after the sweep (a stray queue znode?)")
                })??;
            // Only the new holder's znode is left, after cleanups had a moment.
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                let children = match raw.list_children(queue).await {
                    Ok(c) => c,
                    Err(zookeeper_client::Error::NoNode) => Vec::new(),
                    Err(e) => return Err(format!("list {queue}: {e}").into()),
                };
                if children.len() <= 1 {
                    break;
                }
                check(
                    Instant::now() < deadline,
                    format!("held={held}: stray queue znodes after the sweep: {children:?}"),
                )?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            guard.unlock().await?;
        }
        a.close().await?;
        b.close().await?;
        Ok(())
    })
}

// ------------------------------------------------------ private server ---

struct Tools {
    java: String,
    classpath: String,
    main: String,
}

impl Tools {
    fn from_env(env: &Env) -> Tools {
        Tools {
            java: env.get(JAVA_ENV).to_owned(),
            classpath: env.get(CLASSPATH_ENV).to_owned(),
            main: std::env::var("ANYKV_TEST_ZK_MAIN")
                .unwrap_or_else(|_| "org.apache.zookeeper.server.quorum.QuorumPeerMain".into()),
        }
    }
}

/// A private standalone ZooKeeper on a free loopback port.
struct Server {
    tools: Tools,
    dir: PathBuf,
    port: u16,
    extended_types: bool,
    process: Process,
}

impl Server {
    fn start(tools: Tools, extended_types: bool) -> Result<Server, Failed> {
        let port = process::free_port()?;
        let dir = support::scratch_dir("anykv-zk-test");
        std::fs::create_dir_all(dir.join("data"))?;
        std::fs::write(
            dir.join("zoo.cfg"),
            format!(
                "tickTime=2000\ninitLimit=10\nsyncLimit=5\nminSessionTimeout=2000\n\
                 maxSessionTimeout=60000\ndataDir={}\nclientPort={port}\n\
                 clientPortAddress=127.0.0.1\nmaxClientCnxns=0\nadmin.enableServer=false\n\
                 4lw.commands.whitelist=*\nextendedTypesEnabled={extended_types}\n",
                dir.join("data").display()
            ),
        )?;
        let server = Server {
            tools,
            dir,
            port,
            extended_types,
            process: Process::new("the private ZooKeeper"),
        };
        server.restart()?;
        Ok(server)
    }

    fn url(&self, namespace: &str, query: &str) -> String {
        self.url_with_user("", namespace, query)
    }

    fn url_with_user(&self, userinfo: &str, namespace: &str, query: &str) -> String {
        let sep = if query.is_empty() { "" } else { "&" };
        format!(
            "zk://{userinfo}127.0.0.1:{}/{namespace}?container_check_interval=1s{sep}{query}",
            self.port
        )
    }

    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// (Re)starts the server on the same port and data directory.
    fn restart(&self) -> TestResult {
        let mut command = Command::new(&self.tools.java);
        command
            .arg("-Xmx256m")
            .arg("-cp")
            .arg(&self.tools.classpath)
            .arg(format!(
                "-Dzookeeper.extendedTypesEnabled={}",
                self.extended_types
            ))
            .arg("-Dznode.container.checkIntervalMs=1000")
            .arg("-Dzookeeper.admin.enableServer=false")
            .arg(format!("-Dzookeeper.log.dir={}", self.dir.display()))
            .arg(&self.tools.main)
            .arg(self.dir.join("zoo.cfg"));
        self.process
            .start(process::log_to(&mut command, &self.log())?)?;
        self.process
            .wait_ready_blocking(Duration::from_secs(60), Duration::from_millis(100), || {
                self.ready()
            })
            .map_err(|e| format!("{e}; log:\n{}", process::log_tail(&self.log(), 60)).into())
    }

    fn ready(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let mut answer = String::new();
        conn.write_all(b"srvr").is_ok()
            && conn.read_to_string(&mut answer).is_ok()
            && answer.contains("Mode: standalone")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
