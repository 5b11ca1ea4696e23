//! Consul-specific behaviour against real agents: the shared one from
//! `scripts/services.sh` (`ANYKV_TEST_CONSUL_URL`) and private `-dev` agents
//! this binary starts itself from `ANYKV_TEST_CONSUL_BIN` (on free loopback
//! ports, so restarting or killing them disturbs nobody).
//!
//! Without those variables each case is ignored with the reason, except under
//! CI (`CI=true`), where that is a failure.

#![allow(clippy::print_stdout)] // the cases report what they measured on stdout

mod support;

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anykv::StoreExt;
use anykv::{Error, LockOptions, PutOptions};
use futures::StreamExt;
use libtest_mimic::{Arguments, Trial};
use support::child::Holder;
use support::process::{self, Process};
use support::BoxResult as CaseResult;

const URL_ENV: &str = "ANYKV_TEST_CONSUL_URL";
const BIN_ENV: &str = "ANYKV_TEST_CONSUL_BIN";
/// The helper child of the kill case.
const CHILD: Holder = Holder {
    url_env: "ANYKV_CONSUL_SERVER_TEST_CHILD",
    key: "owned",
    lock: "lock",
};
/// Consul's shortest session TTL, used by every case.
const SESSION_TTL: Duration = Duration::from_secs(10);
/// A guard against hanging forever; not a behaviour bound.
const PATIENCE: Duration = Duration::from_secs(60);

fn main() {
    CHILD.serve_if_child();
    let args = Arguments::from_args();
    let trials = vec![
        needs_bin(
            "watch_survives_an_agent_restart_with_a_transient_error",
            watch_survives_an_agent_restart_with_a_transient_error,
        ),
        needs_url(
            "killed_process_releases_its_ephemeral_key_and_lock_within_two_session_ttls",
            killed_process_releases_its_ephemeral_key_and_lock_within_two_session_ttls,
        ),
        needs_bin(
            "acl_default_deny_rejects_missing_and_wrong_tokens_and_accepts_the_right_one",
            acl_default_deny_rejects_missing_and_wrong_tokens_and_accepts_the_right_one,
        ),
        needs_bin(
            "lock_is_reported_lost_within_the_session_ttl_when_the_agent_dies",
            lock_is_reported_lost_within_the_session_ttl_when_the_agent_dies,
        ),
        needs_bin(
            "an_abandoned_unlock_during_an_agent_stall_still_releases_the_lock",
            an_abandoned_unlock_during_an_agent_stall_still_releases_the_lock,
        ),
        needs_bin(
            "an_unlock_that_meets_a_cut_connection_retries_until_the_lock_is_released",
            an_unlock_that_meets_a_cut_connection_retries_until_the_lock_is_released,
        ),
        needs_bin(
            "an_acquire_applied_after_its_answer_was_given_up_on_does_not_leave_the_lock_held",
            an_acquire_applied_after_its_answer_was_given_up_on_does_not_leave_the_lock_held,
        ),
        needs_url(
            "a_lock_call_cancelled_at_any_point_leaves_the_lock_free",
            a_lock_call_cancelled_at_any_point_leaves_the_lock_free,
        ),
        needs_bin(
            "tls_with_ca_file_works_and_an_unknown_ca_is_refused",
            tls_with_ca_file_works_and_an_unknown_ca_is_refused,
        ),
        support::async_trial("open_of_an_unreachable_agent_is_unavailable", &[], |_| {
            open_of_an_unreachable_agent_is_unavailable()
        }),
    ];
    libtest_mimic::run(&args, trials).exit()
}

// ------------------------------------------------------------------ cases

/// The agent is restarted (a `-dev` agent comes back empty, its index starts
/// over) under a watch: the watch reports a transient error, resets its
/// index, and later changes still arrive.
async fn watch_survives_an_agent_restart_with_a_transient_error(bin: PathBuf) -> CaseResult {
    let agent = Agent::start(bin, Setup::Plain).await?;
    let store = anykv::open(&format!("{}/restart?session_ttl=10s", agent.url())).await?;
    let before = store.put("k", "before", PutOptions::new()).await?;
    let mut watch = store.watch("k").await?;
    assert_eq!(watch.next().await.ok_or("watch ended")??, Some(before));

    // Keep the watch polled (its blocking query in flight) from now on.
    let (tx, mut items) = tokio::sync::mpsc::unbounded_channel();
    let pump = tokio::spawn(async move {
        while let Some(item) = watch.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.restart().await?;

    let mut saw_transient = false;
    // The restarted agent may need a moment before it takes writes.
    let after = support::retry(PATIENCE, || store.put("k", "after", PutOptions::new())).await?;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let item = tokio::time::timeout_at(deadline.into(), items.recv())
            .await
            .map_err(|_| "the write after the restart never arrived")?
            .ok_or("the watch ended")?;
        match item {
            Err(e) if e.is_transient() => saw_transient = true,
            Err(e) => return Err(format!("non-transient error from the watch: {e}").into()),
            Ok(Some(pair)) if pair == after => break,
            Ok(_) => {}
        }
    }
    assert!(
        saw_transient,
        "the restart was not reported as a transient error"
    );
    pump.abort();
    store.close().await?;
    Ok(())
}

/// A child process holding an ephemeral key and a lock is SIGKILLed: both
/// are gone within 2 × session_ttl + 2 s, and the lock is then ours.
async fn killed_process_releases_its_ephemeral_key_and_lock_within_two_session_ttls(
    base: String,
) -> CaseResult {
    let url = format!(
        "{base}/anykv-consul-server/{}/killed?session_ttl=10s",
        support::unique("run")
    );
    let observer = anykv::open(&url).await?;
    let mut child = CHILD.spawn(&url)?;
    assert_eq!(observer.get("owned").await?.value, "child");
    let lock = observer
        .new_lock("lock", LockOptions::new("observer"))
        .await?;
    assert!(matches!(lock.try_lock().await, Err(Error::Locked { .. })));

    let mut watch = observer.watch("owned").await?;
    assert!(watch.next().await.ok_or("watch ended")??.is_some());
    let killed = child.kill();
    let bound = 2 * SESSION_TTL + Duration::from_secs(2);

    let key_gone = async {
        while let Some(item) = watch.next().await {
            if let Ok(None) = item {
                return Ok(killed.elapsed());
            }
        }
        Err("watch ended")
    };
    let lock_taken = async {
        let guard = lock.lock().await?;
        Ok::<_, Error>((killed.elapsed(), guard))
    };
    let (key_gone, lock_taken) =
        tokio::time::timeout(PATIENCE, async { tokio::join!(key_gone, lock_taken) })
            .await
            .map_err(|_| "the killed process's session was never released")?;
    let key_gone = key_gone?;
    let (lock_taken, guard) = lock_taken?;
    println!(
        "ephemeral key gone after {key_gone:?}, lock taken after {lock_taken:?} (bound {bound:?})"
    );
    assert!(
        key_gone <= bound,
        "ephemeral key gone after {key_gone:?} > {bound:?}"
    );
    assert!(
        lock_taken <= bound,
        "lock taken after {lock_taken:?} > {bound:?}"
    );
    assert_eq!(observer.get("lock").await?.value, "observer");
    guard.unlock().await?;
    observer.delete_tree("").await?;
    observer.close().await?;
    Ok(())
}

/// An agent with ACLs on and `default_policy = "deny"`: no token and a wrong
/// token are `Unauthorized` (naming the URL, never the token), the right
/// token works for reads, writes, sessions and locks.
async fn acl_default_deny_rejects_missing_and_wrong_tokens_and_accepts_the_right_one(
    bin: PathBuf,
) -> CaseResult {
    let management = pseudo_uuid(1);
    let wrong = pseudo_uuid(2);
    let agent = Agent::start(bin, Setup::Acl(&management)).await?;

    // The right token; retried while the fresh agent bootstraps its ACLs.
    let good = anykv::open(&format!("{}/acl?token={management}", agent.url())).await?;
    let deadline = Instant::now() + PATIENCE;
    let written = loop {
        match good.put("k", "v", PutOptions::new()).await {
            Ok(pair) => break pair,
            Err(e) if Instant::now() < deadline => {
                println!("waiting for ACL bootstrap: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => return Err(e.into()),
        }
    };
    assert_eq!(good.get("k").await?, written);
    good.put("e", "ephemeral", PutOptions::ephemeral()).await?;
    let guard = good
        .new_lock("l", LockOptions::new("me"))
        .await?
        .lock()
        .await?;
    assert_eq!(good.get("l").await?.value, "me");
    guard.unlock().await?;

    for (label, query) in [
        ("no token", String::new()),
        ("wrong token", format!("?token={wrong}")),
    ] {
        let store = anykv::open(&format!("{}/acl{query}", agent.url())).await?;
        let errors = [
            ("get", store.get("k").await.err()),
            ("put", store.put("k", "x", PutOptions::new()).await.err()),
            (
                "ephemeral put",
                store.put("k", "x", PutOptions::ephemeral()).await.err(),
            ),
            (
                "atomic_put",
                store
                    .atomic_put("k", "x", Some(&written), PutOptions::new())
                    .await
                    .err(),
            ),
            ("delete", store.delete("k").await.err()),
            ("delete_tree", store.delete_tree("").await.err()),
            (
                "watch",
                store.watch("k").await?.next().await.and_then(Result::err),
            ),
            (
                "lock",
                store
                    .new_lock("l", LockOptions::new("x"))
                    .await?
                    .try_lock()
                    .await
                    .err(),
            ),
        ];
        // Consul filters listings for the anonymous token rather than
        // refusing them; an unknown token is refused outright.
        match store.list("").await {
            Ok(listing) => assert!(listing.is_empty(), "{label}: list showed {listing:?}"),
            Err(Error::Unauthorized { .. }) => {}
            Err(e) => return Err(format!("{label}: list: {e:?}").into()),
        }
        for (operation, error) in errors {
            let error = error.ok_or(format!("{label}: {operation} succeeded"))?;
            assert!(
                matches!(error, Error::Unauthorized { .. }),
                "{label}: {operation}: expected Unauthorized, got {error:?}"
            );
            let shown = format!("{error} {error:?} {store:?}");
            assert!(shown.contains(&agent.url()), "{label}: {shown}");
            assert!(
                !shown.contains(&wrong) && !shown.contains(&management),
                "{label}: token in {shown}"
            );
        }
        store.close().await?;
    }
    assert_eq!(
        good.get("k").await?.value,
        "v",
        "a refused write changed the key"
    );
    good.close().await?;
    Ok(())
}

/// The agent dies under a lock holder: with no renewal confirmed, the guard
/// reports the lock lost by the client-side deadline (session_ttl after the
/// last confirmed renewal was sent), before Consul could give it away.
async fn lock_is_reported_lost_within_the_session_ttl_when_the_agent_dies(
    bin: PathBuf,
) -> CaseResult {
    let agent = Agent::start(bin, Setup::Plain).await?;
    let store = anykv::open(&format!("{}/lost?session_ttl=10s", agent.url())).await?;
    let guard = store
        .new_lock("l", LockOptions::new("me"))
        .await?
        .lock()
        .await?;
    let lost = guard.lost();
    agent.process.kill();
    let killed = Instant::now();
    tokio::time::timeout(PATIENCE, lost)
        .await
        .map_err(|_| "lost() never fired")?;
    let after = killed.elapsed();
    println!("lost() fired {after:?} after the agent died");
    // The deadline is session_ttl after the last confirmed renewal was sent,
    // which was before the kill; a second covers timer and scheduling delay.
    let bound = SESSION_TTL + Duration::from_secs(1);
    assert!(after <= bound, "lost() fired after {after:?} > {bound:?}");
    assert!(matches!(
        guard.unlock().await,
        Err(Error::LockLost { .. }) | Err(Error::Unavailable { .. })
    ));
    Ok(())
}

/// The agent stalls (SIGSTOP) while the holder unlocks, and the caller
/// gives up on `unlock()` after a second. The release must go on until it
/// lands: once the agent resumes, another handle takes the lock within a few
/// seconds, long before anything else would free it (the holder's handle
/// stays open and keeps renewing its session).
async fn an_abandoned_unlock_during_an_agent_stall_still_releases_the_lock(
    bin: PathBuf,
) -> CaseResult {
    let agent = Agent::start(bin, Setup::Plain).await?;
    // Requests give up after a second, so the release's first attempt fails
    // (a timeout) while the agent is stopped.
    let url = format!("{}/release?session_ttl=10s&request_timeout=1s", agent.url());
    let holder = anykv::open(&url).await?;
    let other = anykv::open(&url).await?;
    let guard = holder
        .new_lock("l", LockOptions::new("holder"))
        .await?
        .lock()
        .await?;
    let lock = other.new_lock("l", LockOptions::new("other")).await?;

    agent.process.pause()?;
    let paused = Instant::now();
    let gave_up = tokio::time::timeout(Duration::from_secs(1), guard.unlock()).await;
    assert!(
        gave_up.is_err(),
        "unlock finished while the agent was stopped: {gave_up:?}"
    );
    tokio::time::sleep_until((paused + Duration::from_millis(2500)).into()).await;
    agent.process.resume()?;
    let resumed = Instant::now();

    let window = Duration::from_secs(5);
    let taken = tokio::time::timeout(window, lock.lock()).await;
    let after = resumed.elapsed();
    let guard = taken.map_err(|_| {
        format!("the lock was still held {window:?} after the agent resumed: the abandoned release was dropped")
    })??;
    println!("the lock was taken {after:?} after the agent resumed");
    assert_eq!(other.get("l").await?.value, "other");
    guard.unlock().await?;
    holder.close().await?;
    other.close().await?;
    Ok(())
}

/// The holder reaches the agent through a proxy that resets every
/// connection for 2.5 s while it unlocks, and the caller gives up on
/// `unlock()` after a second. The release must retry until it lands: once
/// the link is back, another handle takes the lock within a few seconds,
/// although the holder's handle stays open and renews its session (nothing
/// else would ever free the lock).
async fn an_unlock_that_meets_a_cut_connection_retries_until_the_lock_is_released(
    bin: PathBuf,
) -> CaseResult {
    let agent = Agent::start(bin, Setup::Plain).await?;
    let cut = support::proxy::CutProxy::start(agent.ports[0]).await?;
    let holder = anykv::open(&format!(
        "consul://{}/cut?session_ttl=10s&request_timeout=1s",
        cut.addr()
    ))
    .await?;
    let other = anykv::open(&format!("{}/cut?session_ttl=10s", agent.url())).await?;
    let guard = holder
        .new_lock("l", LockOptions::new("holder"))
        .await?
        .lock()
        .await?;
    let lock = other.new_lock("l", LockOptions::new("other")).await?;

    cut.set_cut(true);
    let cut_at = Instant::now();
    let unlocked = tokio::time::timeout(Duration::from_secs(1), guard.unlock()).await;
    println!("unlock() during the cut: {unlocked:?}");
    tokio::time::sleep_until((cut_at + Duration::from_millis(2500)).into()).await;
    cut.set_cut(false);
    let healed = Instant::now();

    let window = Duration::from_secs(5);
    let taken = tokio::time::timeout(window, lock.lock()).await;
    let after = healed.elapsed();
    let guard = taken.map_err(|_| {
        format!("the lock was still held {window:?} after the link came back: the release gave up")
    })??;
    println!("the lock was taken {after:?} after the link came back");
    assert_eq!(other.get("l").await?.value, "other");
    guard.unlock().await?;
    holder.close().await?;
    other.close().await?;
    Ok(())
}

/// The caller's acquire transaction is held back in a proxy past the
/// request timeout: `lock()` fails (the read that settles a lost answer
/// finds the key free), and only then does the agent get the transaction
/// and apply it, so the key is bound to the caller's session, which its
/// handle goes on renewing. Nobody holds a guard for it; another handle
/// must still take the lock within a few seconds.
async fn an_acquire_applied_after_its_answer_was_given_up_on_does_not_leave_the_lock_held(
    bin: PathBuf,
) -> CaseResult {
    let agent = Agent::start(bin, Setup::Plain).await?;
    let proxy = support::proxy::CutProxy::start(agent.ports[0]).await?;
    let caller = anykv::open(&format!(
        "consul://{}/late?session_ttl=10s&request_timeout=1s",
        proxy.addr()
    ))
    .await?;
    let other = anykv::open(&format!("{}/late?session_ttl=10s", agent.url())).await?;
    let lock = caller.new_lock("l", LockOptions::new("caller")).await?;
    // The session exists before the acquire that is held back.
    lock.lock().await?.unlock().await?;

    proxy.set_hold_requests_containing(Some(b"/v1/txn"));
    let failed = tokio::time::timeout(Duration::from_secs(10), lock.lock()).await?;
    assert!(
        failed.is_err(),
        "lock() returned a guard although its transaction was held back"
    );
    println!("lock() with its transaction held back: {failed:?}");
    proxy.set_hold_requests_containing(None);

    let contender = other.new_lock("l", LockOptions::new("other")).await?;
    let released = Instant::now();
    let window = Duration::from_secs(5);
    let guard = loop {
        match contender.try_lock().await {
            Ok(guard) => break guard,
            Err(Error::Locked { .. }) if released.elapsed() < window => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(format!(
                    "the lock was still held {:?} after the late transaction reached the \
                     agent, by a session whose lock() had failed ({e})",
                    released.elapsed()
                )
                .into())
            }
        }
    };
    println!(
        "taken {:?} after the held transaction was let through",
        released.elapsed()
    );
    assert_eq!(other.get("l").await?.value, "other");
    guard.unlock().await?;
    caller.close().await?;
    other.close().await?;
    Ok(())
}

/// `lock()` on a free lock is cancelled after `d`, for `d` in small steps
/// around one round trip: whenever the call did not return a guard, the
/// lock must be free again at once (another handle takes it within a
/// second), not held by the cancelled caller's session until it ends.
async fn a_lock_call_cancelled_at_any_point_leaves_the_lock_free(base: String) -> CaseResult {
    let url = format!(
        "{base}/anykv-consul-server/{}/cancel?session_ttl=10s",
        support::unique("run")
    );
    let caller = anykv::open(&url).await?;
    let other = anykv::open(&url).await?;
    let lock = caller.new_lock("l", LockOptions::new("caller")).await?;
    let check = other.new_lock("l", LockOptions::new("other")).await?;
    // The session exists before the sweep, so the steps cover the acquire
    // transaction itself.
    lock.lock().await?.unlock().await?;
    let window = Duration::from_secs(1);
    let (mut cancelled, mut granted) = (0, 0);
    for step in 0..200u64 {
        let d = Duration::from_micros(100 * step);
        // The timer rounds short deadlines up to its next tick, so a fast
        // agent can answer within the first steps; step 0 is therefore a
        // single poll, dropped at once: cancelled before any answer.
        let attempt = if step == 0 {
            futures::FutureExt::now_or_never(lock.lock()).ok_or(())
        } else {
            tokio::time::timeout(d, lock.lock()).await.map_err(|_| ())
        };
        match attempt {
            Ok(guard) => {
                granted += 1;
                guard?.unlock().await?;
            }
            Err(_) => {
                cancelled += 1;
                let taken = tokio::time::timeout(window, check.lock())
                    .await
                    .map_err(|_| {
                        format!(
                            "lock() cancelled after {d:?} left the lock held: not free within {window:?}"
                        )
                    })??;
                taken.unlock().await?;
            }
        }
        if granted >= 40 && cancelled > 0 {
            break;
        }
    }
    println!("{cancelled} cancelled calls, {granted} granted");
    assert!(
        cancelled > 0 && granted > 0,
        "the sweep missed the round trip"
    );
    caller.delete_tree("").await?;
    caller.close().await?;
    other.close().await?;
    Ok(())
}

/// `ca_file` makes the store talk HTTPS and trust that CA; without it the
/// agent's certificate is refused, and nothing is sent in the clear.
async fn tls_with_ca_file_works_and_an_unknown_ca_is_refused(bin: PathBuf) -> CaseResult {
    let agent = Agent::start(bin, Setup::Tls).await?;
    let https = agent.ports[4];
    let ca = agent.dir.path().join("ca.pem");
    let url = format!("consul://127.0.0.1:{https}/tls?ca_file={}", ca.display());
    let store = anykv::open(&url).await?;
    let put = store.put("k", "over tls", PutOptions::new()).await?;
    assert_eq!(store.get("k").await?, put);
    store.put("e", "v", PutOptions::ephemeral()).await?;
    let mut watch = store.watch("k").await?;
    assert_eq!(watch.next().await.ok_or("watch ended")??, Some(put));
    store.close().await?;

    let untrusted = anykv::open(&format!("consul://127.0.0.1:{https}/tls?tls=true"))
        .await
        .err()
        .ok_or("a certificate from an unknown CA was accepted")?;
    assert!(
        matches!(untrusted, Error::Unavailable { .. }),
        "{untrusted:?}"
    );
    Ok(())
}

async fn open_of_an_unreachable_agent_is_unavailable() -> CaseResult {
    let port = process::free_port()?;
    let error = anykv::open(&format!("consul://127.0.0.1:{port}/x?token=t0ps3cret"))
        .await
        .err()
        .ok_or("opened a store on a dead port")?;
    assert!(error.is_transient(), "{error:?}");
    assert!(
        !format!("{error} {error:?}").contains("t0ps3cret"),
        "{error:?}"
    );
    Ok(())
}

// ------------------------------------------------------------- plumbing

fn needs_bin<F, Fut>(name: &'static str, case: F) -> Trial
where
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = CaseResult>,
{
    support::async_trial(name, &[BIN_ENV], move |env| case(env.path(BIN_ENV)))
}

fn needs_url<F, Fut>(name: &'static str, case: F) -> Trial
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: Future<Output = CaseResult>,
{
    support::async_trial(name, &[URL_ENV], move |env| {
        case(env.get(URL_ENV).to_owned())
    })
}

/// A UUID-shaped token, different per run and per `n`.
fn pseudo_uuid(n: u64) -> String {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let mut words = [0u64; 2];
    for (i, word) in words.iter_mut().enumerate() {
        let mut h = state.build_hasher();
        h.write_u64(n);
        h.write_usize(i);
        *word = h.finish();
    }
    let hex = format!("{:016x}{:016x}", words[0], words[1]);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// What a private agent runs with besides `-dev`.
enum Setup<'a> {
    Plain,
    /// ACLs on, default deny, this management token.
    Acl(&'a str),
    /// HTTPS on a second port with a certificate from a CA of its own
    /// (`ca.pem` in the agent's directory).
    Tls,
}

/// A private `consul agent -dev` on free loopback ports; killed on drop.
struct Agent {
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// http, server, serf LAN, serf WAN, https.
    ports: [u16; 5],
    process: Process,
    /// The management token when ACLs are on (for the readiness check).
    token: Option<String>,
}

impl Agent {
    async fn start(bin: PathBuf, setup: Setup<'_>) -> CaseResult<Agent> {
        let dir = tempfile::Builder::new()
            .prefix("anykv-consul-test")
            .tempdir()?;
        let ports = process::free_ports::<5>()?;
        let mut config = String::from("disable_update_check = true\n");
        match setup {
            Setup::Plain => {}
            Setup::Acl(token) => {
                // Consul before 1.11 calls the management token `master`.
                config.push_str(&format!(
                    "primary_datacenter = \"dc1\"\nacl {{\n  enabled = true\n  default_policy = \"deny\"\n  \
                     enable_token_persistence = false\n  tokens {{\n    master = \"{token}\"\n    agent = \"{token}\"\n  }}\n}}\n"
                ));
            }
            Setup::Tls => {
                support::certs::make_certificates(dir.path())?;
                let d = dir.path().display();
                config.push_str(&format!(
                    "ports {{\n  https = {}\n}}\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\n\
                     ca_file = \"{d}/ca.pem\"\nverify_incoming = false\nverify_outgoing = false\n",
                    ports[4]
                ));
            }
        }
        std::fs::write(dir.path().join("config.hcl"), config)?;
        let token = match setup {
            Setup::Acl(token) => Some(token.to_owned()),
            _ => None,
        };
        let agent = Agent {
            bin,
            dir,
            ports,
            process: Process::new("the consul agent"),
            token,
        };
        agent.spawn().await?;
        Ok(agent)
    }

    fn url(&self) -> String {
        format!("consul://127.0.0.1:{}", self.ports[0])
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    async fn spawn(&self) -> CaseResult {
        let [http, server, serf_lan, serf_wan, _] = self.ports;
        let mut command = Command::new(&self.bin);
        command
            .args(["agent", "-dev", "-node", &format!("anykv-private-{http}")])
            .args([
                "-client",
                "127.0.0.1",
                "-bind",
                "127.0.0.1",
                "-advertise",
                "127.0.0.1",
            ])
            .args([
                "-http-port",
                &http.to_string(),
                "-dns-port",
                "-1",
                "-grpc-port",
                "-1",
            ])
            .args(["-server-port", &server.to_string()])
            .args([
                "-serf-lan-port",
                &serf_lan.to_string(),
                "-serf-wan-port",
                &serf_wan.to_string(),
            ])
            .arg("-config-file")
            .arg(self.dir.path().join("config.hcl"));
        self.process
            .start(process::log_to(&mut command, &self.log())?)?;
        // Ready once it has a leader and has registered its own node:
        // sessions are refused ("Missing node registration") before that.
        let leader_url = format!("http://127.0.0.1:{http}/v1/status/leader");
        let node_url = format!("http://127.0.0.1:{http}/v1/catalog/node/anykv-private-{http}");
        let client = reqwest::Client::new();
        let text = |url: &str| {
            let mut request = client.get(url);
            if let Some(token) = &self.token {
                request = request.header("X-Consul-Token", token);
            }
            let request = request.send();
            async move { request.await.ok()?.text().await.ok() }
        };
        let (text, leader_url, node_url) = (&text, &leader_url, &node_url);
        let ready = move || async move {
            let leader = text(leader_url).await.unwrap_or_default();
            leader.trim().len() > 2
                && text(node_url)
                    .await
                    .unwrap_or_default()
                    .contains("\"Node\"")
        };
        self.process
            .wait_ready(PATIENCE, Duration::from_millis(100), ready)
            .await
            .map_err(|e| format!("{e}; log: {}", process::log_tail(&self.log(), 20)).into())
    }

    /// Kill and start again on the same ports (a `-dev` agent comes back empty).
    async fn restart(&self) -> CaseResult {
        self.process.kill();
        self.spawn().await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Before the directory goes.
        self.process.kill();
    }
}
