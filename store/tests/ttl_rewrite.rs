//! A key rewritten with a TTL again and again (a heartbeat) leaves at most
//! one live server-side object for it, and still expires after its TTL.
//!
//! * etcd: a lease per TTL write; the write that replaces it revokes it.
//!   Counted with `LeaseLeases` through the raw `etcd-client`.
//! * Consul: a session per TTL key; a rewrite with the same TTL renews and
//!   reuses it, any other destroys the one it replaces. Counted with
//!   `/v1/session/list`.
//! * Redis (`PEXPIRE`), ZooKeeper (TTL znodes) and memory keep the deadline
//!   on the key itself: nothing else to count but the keys (znodes) the
//!   namespace holds.
//!
//! Each case reads its server from `ANYKV_TEST_ETCD_URL`,
//! `ANYKV_TEST_CONSUL_URL`, `ANYKV_TEST_REDIS_URL` or `ANYKV_TEST_ZK_URL`
//! (`scripts/services.sh env`); without it the case is ignored, or fails
//! under `CI=true`.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anykv::{PutOptions, Store, StoreExt};
use futures::FutureExt;
use libtest_mimic::Arguments;
use support::{BoxResult, Env};

/// How often the heartbeat key is rewritten.
const REWRITES: usize = 200;

/// The heartbeat's TTL: long enough that nothing expires by itself while
/// the case runs, so every object still alive at the end is a leak.
const HEARTBEAT_TTL: Duration = Duration::from_secs(60);

/// At most this many live objects per key after the rewrites.
const AT_MOST: usize = 2;

const ETCD: &str = "ANYKV_TEST_ETCD_URL";
const CONSUL: &str = "ANYKV_TEST_CONSUL_URL";
const REDIS: &str = "ANYKV_TEST_REDIS_URL";
const ZK: &str = "ANYKV_TEST_ZK_URL";

fn main() {
    let args = Arguments::from_args();
    let tests = vec![
        support::async_trial(
            "etcd_200_ttl_rewrites_leave_one_live_lease_and_the_key_expires_after_its_ttl",
            &[ETCD],
            etcd_rewrites,
        ),
        support::async_trial(
            "etcd_concurrent_ttl_rewriters_on_two_handles_leave_one_live_lease",
            &[ETCD],
            etcd_concurrent_rewriters,
        ),
        support::async_trial(
            "etcd_ttl_write_over_an_ephemeral_key_keeps_the_other_handles_session_lease",
            &[ETCD],
            etcd_keeps_session_lease,
        ),
        support::async_trial(
            "consul_200_ttl_rewrites_leave_one_live_session_and_the_key_expires_after_its_ttl",
            &[CONSUL],
            consul_rewrites,
        ),
        support::async_trial(
            "consul_concurrent_ttl_rewriters_on_two_handles_leave_one_live_session",
            &[CONSUL],
            consul_concurrent_rewriters,
        ),
        support::async_trial(
            "consul_ttl_write_over_an_ephemeral_key_keeps_the_other_handles_session",
            &[CONSUL],
            consul_keeps_handle_session,
        ),
        support::async_trial(
            "redis_200_ttl_rewrites_leave_one_key_and_the_key_expires_after_its_ttl",
            &[REDIS],
            redis_rewrites,
        ),
        support::async_trial(
            "zookeeper_200_ttl_rewrites_leave_one_znode_and_the_key_expires_after_its_ttl",
            &[ZK],
            zookeeper_rewrites,
        ),
        support::trial(
            "memory_200_ttl_rewrites_then_the_key_expires_after_its_ttl",
            &[],
            |_| support::block_on(memory_rewrites()),
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}

/// `base` (a test server URL, maybe with a query) with namespace `ns`.
fn with_namespace(base: &str, ns: &str) -> String {
    match base.split_once('?') {
        Some((origin, query)) => format!("{}/{ns}?{query}", origin.trim_end_matches('/')),
        None => format!("{}/{ns}", base.trim_end_matches('/')),
    }
}

/// `host:port` of a test server URL.
fn host_port(base: &str) -> BoxResult<String> {
    let url = url::Url::parse(base)?;
    let host = url.host_str().ok_or("test URL without a host")?;
    let port = url.port().ok_or("test URL without a port")?;
    Ok(format!("{host}:{port}"))
}

fn check(ok: bool, message: impl Into<String>) -> BoxResult {
    if ok {
        Ok(())
    } else {
        Err(message.into().into())
    }
}

/// Writes `key` [`REWRITES`] times with the heartbeat TTL, reading after
/// each write what the server bound it to (`bound`, `None` for nothing).
async fn heartbeat<F, Fut>(store: &dyn Store, key: &str, mut bound: F) -> BoxResult<Vec<String>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BoxResult<Option<String>>>,
{
    let mut seen = Vec::new();
    for i in 0..REWRITES {
        store
            .put(key, format!("beat {i}"), PutOptions::ttl(HEARTBEAT_TTL))
            .await?;
        if let Some(object) = bound().await? {
            seen.push(object);
        }
    }
    Ok(seen)
}

/// After a heartbeat of `hb` (and of `kept`): `hb` rewritten once with the
/// shortest TTL `ttl` is there until `ttl` after that write and gone within
/// `ttl + slack`; `kept`, rewritten without TTL, outlives that.
async fn expires_after_its_ttl(
    store: &dyn Store,
    hb: &str,
    kept: &str,
    ttl: Duration,
    slack: Duration,
) -> BoxResult {
    store.put(kept, "ttl", PutOptions::ttl(ttl)).await?;
    store.put(kept, "forever", PutOptions::new()).await?;
    let start = Instant::now();
    store.put(hb, "last", PutOptions::ttl(ttl)).await?;
    let written = Instant::now();
    // etcd grants the lease just before the write: a key may go up to one
    // round trip early; 100 ms covers that and the polling.
    let early = ttl.saturating_sub(Duration::from_millis(100));
    let late = ttl + slack + Duration::from_secs(1);
    loop {
        let present = store.get_opt(hb).await?.is_some();
        if !present {
            let after = start.elapsed();
            check(
                after >= early,
                format!("{hb:?} expired {after:?} after its last write, before its TTL {ttl:?}"),
            )?;
            eprintln!("{hb:?} (TTL {ttl:?}) expired {after:?} after its last write");
            break;
        }
        check(
            written.elapsed() <= late,
            format!("{hb:?} still there {late:?} after its last write (TTL {ttl:?})"),
        )?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check(
        store
            .get_opt(kept)
            .await?
            .is_some_and(|p| p.value == "forever"),
        format!("{kept:?}, rewritten without TTL, was deleted when its old TTL ran out"),
    )
}

/// How many of `seen` are in `alive`, and the distinct ones seen.
fn count_alive(seen: &[String], alive: &HashSet<String>) -> (usize, usize) {
    let distinct: HashSet<&String> = seen.iter().collect();
    (
        distinct.iter().filter(|s| alive.contains(**s)).count(),
        distinct.len(),
    )
}

// ---------------------------------------------------------------- etcd

async fn etcd_raw(env: &Env) -> BoxResult<etcd_client::Client> {
    Ok(etcd_client::Client::connect([host_port(env.get(ETCD))?], None).await?)
}

async fn etcd_leases(raw: &etcd_client::Client) -> BoxResult<HashSet<String>> {
    let leases = raw.lease_client().leases().await?;
    Ok(leases.leases().iter().map(|l| l.id().to_string()).collect())
}

/// The lease `full` is bound to, if any.
async fn etcd_lease_of(raw: &etcd_client::Client, full: &str) -> BoxResult<Option<String>> {
    let response = raw.kv_client().get(full, None).await?;
    Ok(response
        .kvs()
        .first()
        .map(|kv| kv.lease())
        .filter(|l| *l != 0)
        .map(|l| l.to_string()))
}

async fn etcd_rewrites(env: Env) -> BoxResult {
    let ns = support::unique("ttl-rewrite");
    let store = anykv::open(&with_namespace(env.get(ETCD), &ns)).await?;
    let raw = etcd_raw(&env).await?;
    let full = format!("{ns}/hb");
    let before = etcd_leases(&raw).await?.len();
    let started = Instant::now();
    let seen = heartbeat(&*store, "hb", || etcd_lease_of(&raw, &full)).await?;
    let took = started.elapsed();
    let alive = etcd_leases(&raw).await?;
    let (live, distinct) = count_alive(&seen, &alive);
    eprintln!(
        "etcd: {REWRITES} TTL rewrites in {took:?}: {distinct} leases used, {live} alive; \
         leases on the server {before} before, {} after",
        alive.len()
    );
    check(
        distinct == REWRITES,
        format!("expected a lease per write, saw {distinct}"),
    )?;
    check(
        live <= 1,
        format!("{live} of the heartbeat's leases are alive"),
    )?;
    let caps = store.capabilities();
    expires_after_its_ttl(&*store, "hb", "kept", caps.min_ttl, caps.ttl_slack).await?;
    // The expired key's lease and the detached one are gone.
    let alive = etcd_leases(&raw).await?;
    let (live, _) = count_alive(&seen, &alive);
    check(
        live == 0,
        format!("{live} heartbeat leases outlived the key"),
    )?;
    store.delete_tree("").await?;
    store.close().await?;
    Ok(())
}

async fn etcd_concurrent_rewriters(env: Env) -> BoxResult {
    let ns = support::unique("ttl-rewrite-2");
    let url = with_namespace(env.get(ETCD), &ns);
    let a = anykv::open(&url).await?;
    let b = anykv::open(&url).await?;
    let raw = etcd_raw(&env).await?;
    let full = format!("{ns}/hb");
    let (seen_a, seen_b) = tokio::try_join!(
        heartbeat(&*a, "hb", || etcd_lease_of(&raw, &full)),
        heartbeat(&*b, "hb", || etcd_lease_of(&raw, &full)),
    )?;
    let seen: Vec<String> = seen_a.into_iter().chain(seen_b).collect();
    let alive = etcd_leases(&raw).await?;
    let (live, distinct) = count_alive(&seen, &alive);
    eprintln!("etcd, two rewriters: {distinct} leases seen, {live} alive");
    check(live <= AT_MOST, format!("{live} heartbeat leases alive"))?;
    // The survivor still carries the key, which is there.
    check(
        a.get_opt("hb").await?.is_some(),
        "the key vanished after concurrent rewrites",
    )?;
    let current = etcd_lease_of(&raw, &full)
        .await?
        .ok_or("key has no lease")?;
    check(alive.contains(&current), "the key's own lease is not alive")?;
    a.delete_tree("").await?;
    a.close().await?;
    b.close().await?;
    Ok(())
}

async fn etcd_keeps_session_lease(env: Env) -> BoxResult {
    let ns = support::unique("ttl-rewrite-3");
    let url = with_namespace(env.get(ETCD), &ns);
    let a = anykv::open(&url).await?;
    let b = anykv::open(&url).await?;
    let raw = etcd_raw(&env).await?;
    let guard = b
        .new_lock("held", anykv::LockOptions::new("b"))
        .await?
        .lock()
        .await?;
    b.put("k", "b's", PutOptions::ephemeral()).await?;
    let session = etcd_lease_of(&raw, &format!("{ns}/k"))
        .await?
        .ok_or("ephemeral key without a lease")?;
    a.put("k", "a's", PutOptions::ttl(HEARTBEAT_TTL)).await?;
    a.put("k", "a's again", PutOptions::ttl(HEARTBEAT_TTL))
        .await?;
    check(
        etcd_leases(&raw).await?.contains(&session),
        "a TTL write revoked the session lease of the handle whose key it replaced",
    )?;
    check(
        guard.lost().now_or_never().is_none(),
        "the other handle's lock was lost",
    )?;
    guard.unlock().await?;
    a.delete_tree("").await?;
    a.close().await?;
    b.close().await?;
    Ok(())
}

// ---------------------------------------------------------------- Consul

/// A raw HTTP client on the Consul agent of the test URL.
struct ConsulRaw {
    http: reqwest::Client,
    origin: String,
    token: Option<String>,
}

impl ConsulRaw {
    fn new(env: &Env) -> BoxResult<Self> {
        let base = env.get(CONSUL);
        let url = url::Url::parse(base)?;
        let token = url
            .query_pairs()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned());
        Ok(ConsulRaw {
            http: reqwest::Client::new(),
            origin: format!("http://{}", host_port(base)?),
            token,
        })
    }

    async fn get(&self, path: &str) -> BoxResult<serde_json::Value> {
        let mut request = self.http.get(format!("{}/v1/{path}", self.origin));
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token);
        }
        let response = request.send().await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(serde_json::Value::Null);
        }
        Ok(response.error_for_status()?.json().await?)
    }

    async fn sessions(&self) -> BoxResult<HashSet<String>> {
        let list = self.get("session/list").await?;
        Ok(list
            .as_array()
            .ok_or("session/list is not a list")?
            .iter()
            .filter_map(|s| s["ID"].as_str().map(str::to_owned))
            .collect())
    }

    /// The session `full` is bound to, if any.
    async fn session_of(&self, full: &str) -> BoxResult<Option<String>> {
        let entry = self.get(&format!("kv/{full}")).await?;
        Ok(entry[0]["Session"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned))
    }
}

async fn consul_rewrites(env: Env) -> BoxResult {
    let ns = support::unique("ttl-rewrite");
    let store = anykv::open(&with_namespace(env.get(CONSUL), &ns)).await?;
    let raw = ConsulRaw::new(&env)?;
    let full = format!("{ns}/hb");
    let before = raw.sessions().await?.len();
    let started = Instant::now();
    let seen = heartbeat(&*store, "hb", || raw.session_of(&full)).await?;
    let took = started.elapsed();
    let alive = raw.sessions().await?;
    let (live, distinct) = count_alive(&seen, &alive);
    eprintln!(
        "consul: {REWRITES} TTL rewrites in {took:?}: {distinct} sessions used, {live} alive; \
         sessions on the server {before} before, {} after",
        alive.len()
    );
    check(
        live <= 1,
        format!("{live} of the heartbeat's sessions are alive"),
    )?;
    let caps = store.capabilities();
    expires_after_its_ttl(&*store, "hb", "kept", caps.min_ttl, caps.ttl_slack).await?;
    let alive = raw.sessions().await?;
    let (live, _) = count_alive(&seen, &alive);
    check(
        live == 0,
        format!("{live} heartbeat sessions outlived the change of TTL"),
    )?;
    store.delete_tree("").await?;
    store.close().await?;
    Ok(())
}

async fn consul_concurrent_rewriters(env: Env) -> BoxResult {
    let ns = support::unique("ttl-rewrite-2");
    let url = with_namespace(env.get(CONSUL), &ns);
    let a = anykv::open(&url).await?;
    let b = anykv::open(&url).await?;
    let raw = ConsulRaw::new(&env)?;
    let full = format!("{ns}/hb");
    let (seen_a, seen_b) = tokio::try_join!(
        heartbeat(&*a, "hb", || raw.session_of(&full)),
        heartbeat(&*b, "hb", || raw.session_of(&full)),
    )?;
    let seen: Vec<String> = seen_a.into_iter().chain(seen_b).collect();
    let alive = raw.sessions().await?;
    let (live, distinct) = count_alive(&seen, &alive);
    eprintln!("consul, two rewriters: {distinct} sessions seen, {live} alive");
    check(live <= AT_MOST, format!("{live} heartbeat sessions alive"))?;
    check(
        a.get_opt("hb").await?.is_some(),
        "the key vanished after concurrent rewrites",
    )?;
    let current = raw.session_of(&full).await?.ok_or("key has no session")?;
    check(
        alive.contains(&current),
        "the key's own session is not alive",
    )?;
    // Leave nothing behind: the last session goes with the key's change.
    a.put("hb", "done", PutOptions::new()).await?;
    check(
        !raw.sessions().await?.contains(&current),
        "a write without TTL left the key's TTL session alive",
    )?;
    a.delete_tree("").await?;
    a.close().await?;
    b.close().await?;
    Ok(())
}

async fn consul_keeps_handle_session(env: Env) -> BoxResult {
    let ns = support::unique("ttl-rewrite-3");
    let url = with_namespace(env.get(CONSUL), &ns);
    let a = anykv::open(&url).await?;
    let b = anykv::open(&url).await?;
    let raw = ConsulRaw::new(&env)?;
    let guard = b
        .new_lock("held", anykv::LockOptions::new("b"))
        .await?
        .lock()
        .await?;
    b.put("k", "b's", PutOptions::ephemeral()).await?;
    let session = raw
        .session_of(&format!("{ns}/k"))
        .await?
        .ok_or("ephemeral key without a session")?;
    a.put("k", "a's", PutOptions::ttl(HEARTBEAT_TTL)).await?;
    a.put("k", "a's again", PutOptions::ttl(HEARTBEAT_TTL))
        .await?;
    // And a write without TTL over a key the other handle holds.
    b.put("k2", "b's", PutOptions::ephemeral()).await?;
    a.put("k2", "a's", PutOptions::new()).await?;
    check(
        raw.sessions().await?.contains(&session),
        "a write destroyed the session of the handle whose key it replaced",
    )?;
    check(
        guard.lost().now_or_never().is_none(),
        "the other handle's lock was lost",
    )?;
    check(
        b.get_opt("held").await?.is_some(),
        "the other handle's lock key is gone",
    )?;
    guard.unlock().await?;
    a.put("k", "plain", PutOptions::new()).await?;
    a.delete_tree("").await?;
    a.close().await?;
    b.close().await?;
    Ok(())
}

// ---------------------------------------------------------------- Redis

async fn redis_rewrites(env: Env) -> BoxResult {
    let ns = support::unique("ttl-rewrite");
    let base = env.get(REDIS);
    let store = anykv::open(&with_namespace(base, &ns)).await?;
    let mut raw = redis::Client::open(format!("redis://{}", host_port(base)?))?
        .get_multiplexed_async_connection()
        .await?;
    let pattern = format!("*{ns}*");
    let keys = || {
        let mut raw = raw.clone();
        let pattern = pattern.clone();
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut raw)
                .await?;
            BoxResult::Ok(keys)
        }
    };
    let seen = heartbeat(&*store, "hb", || async { Ok(None) }).await?;
    check(seen.is_empty(), "redis binds keys to nothing")?;
    let after = keys().await?;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(after.first().ok_or("no key in the namespace")?)
        .query_async(&mut raw)
        .await?;
    eprintln!(
        "redis: after {REWRITES} TTL rewrites the namespace holds {after:?} (PTTL {pttl} ms)"
    );
    check(
        after.len() == 1,
        format!("keys in the namespace: {after:?}"),
    )?;
    check(pttl > 0, "the key carries no TTL")?;
    let ttl = Duration::from_secs(1);
    expires_after_its_ttl(&*store, "hb", "kept", ttl, store.capabilities().ttl_slack).await?;
    store.delete_tree("").await?;
    store.close().await?;
    Ok(())
}

// ---------------------------------------------------------------- ZooKeeper

/// Every znode below `path`.
async fn zk_count(raw: &zookeeper_client::Client, path: &str) -> BoxResult<usize> {
    let mut count = 0;
    let mut todo = vec![path.to_owned()];
    while let Some(path) = todo.pop() {
        let children = match raw.list_children(&path).await {
            Ok(children) => children,
            Err(zookeeper_client::Error::NoNode) => Vec::new(),
            Err(e) => return Err(format!("list {path}: {e}").into()),
        };
        for child in children {
            count += 1;
            todo.push(format!("{path}/{child}"));
        }
    }
    Ok(count)
}

async fn zookeeper_rewrites(env: Env) -> BoxResult {
    let ns = support::unique("ttl-rewrite");
    let base = env.get(ZK);
    let store = anykv::open(&with_namespace(base, &ns)).await?;
    let raw = zookeeper_client::Client::connect(&host_port(base)?)
        .await
        .map_err(|e| format!("raw client: {e}"))?;
    let root = format!("/{ns}%");
    let ttl = Duration::from_secs(1);
    let probe = store.put("probe", "x", PutOptions::ttl(ttl)).await;
    if let Err(anykv::Error::Unsupported { .. }) = probe {
        return Err("the server does not take TTL znodes (extendedTypesEnabled)".into());
    }
    probe?;
    store.delete("probe").await?;
    let seen = heartbeat(&*store, "hb", || async { Ok(None) }).await?;
    check(seen.is_empty(), "zookeeper binds keys to nothing")?;
    let znodes = zk_count(&raw, &root).await?;
    eprintln!("zookeeper: after {REWRITES} TTL rewrites {znodes} znodes below {root}");
    check(znodes <= AT_MOST, format!("{znodes} znodes below {root}"))?;
    expires_after_its_ttl(&*store, "hb", "kept", ttl, store.capabilities().ttl_slack).await?;
    store.delete_tree("").await?;
    store.close().await?;
    Ok(())
}

// ---------------------------------------------------------------- memory

async fn memory_rewrites() -> BoxResult {
    let store: Arc<dyn Store> = anykv::open("memory://").await?;
    let seen = heartbeat(&*store, "hb", || async { Ok(None) }).await?;
    check(seen.is_empty(), "memory binds keys to nothing")?;
    check(store.list("").await?.len() == 1, "one key")?;
    let ttl = Duration::from_millis(500);
    expires_after_its_ttl(&*store, "hb", "kept", ttl, store.capabilities().ttl_slack).await?;
    Ok(())
}
