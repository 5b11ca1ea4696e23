//! The Redis backend (cargo feature `redis`): `redis://` and `rediss://`.
//!
//! # URL
//!
//! ```text
//! redis://[user:password@]host[:port][/prefix][?options]
//! rediss://[user:password@]host[:port][/prefix][?options]     (TLS)
//! ```
//!
//! * One host (default port 6379). Redis Cluster and Sentinel are not
//!   supported: every write is a multi-key script on one server.
//! * `user:password` authenticates with `AUTH user password` (ACL users);
//!   `:password@` alone authenticates the `default` user. Percent-encode
//!   special characters. A refused login is [`Error::Unauthorized`]. The
//!   password never appears in `Debug`, `Display`, errors or logs.
//! * The path is the namespace (key prefix), as for every backend.
//!
//! | option            | default | meaning |
//! |-------------------|---------|---------|
//! | `db`              | `0`     | database number (`SELECT`) |
//! | `session_ttl`     | `10s`   | how long a crashed handle's ephemeral keys survive it; at least `1s` |
//! | `connect_timeout` | `5s`    | per connection attempt; requests time out after `max(connect_timeout, 5s)` |
//! | `ca_file`         | system roots | `rediss://` only: PEM file with the CA(s) that signed the server certificate |
//!
//! `rediss://` uses rustls. rustls needs a process-wide crypto provider: the
//! `redis` feature compiles in rustls' `ring`, which rustls picks by itself
//! when it is the only provider compiled in. If your build also compiles in
//! `aws-lc-rs` (through another crate), install one with
//! `rustls::crypto::CryptoProvider::install_default` before opening the store
//! (without one, opening fails with an error that says so instead of crashing).
//!
//! ```no_run
//! # async fn demo() -> anykv::Result<()> {
//! let store = anykv::open("redis://app:s3cret@10.0.0.5:6379/services?db=2&session_ttl=5s").await?;
//! # Ok(()) }
//! ```
//!
//! # How the contract maps to Redis
//!
//! * **Keys.** Each anykv key is a hash `anykv:k:<namespace>/<key>` holding
//!   the value (`v`) and the version (`i`); a sorted set `anykv:index` (all
//!   scores 0) lists every key so `list`/`watch_tree`/`delete_tree` read a
//!   prefix in key order with `ZRANGEBYLEX` instead of scanning the keyspace.
//!   Everything anykv writes starts with `anykv:`.
//! * **Writes are scripts.** Every write (`put`, `atomic_put`, `delete`,
//!   `atomic_delete`, `delete_tree`, lock grant and release, session close)
//!   is one Lua script that checks its precondition, writes, bumps the
//!   version counter and publishes a change message, atomically. `get` and
//!   `exists` are single native commands (`HMGET`, `EXISTS`).
//! * **Versions.** One counter per database (`anykv:version`), shared by
//!   all namespaces so nested namespaces see one history of a key. A key's
//!   `last_index` is the counter value of its last write, so it strictly
//!   increases and a version is never reused: a stale pair never matches
//!   after delete + re-create (no ABA). When the counter is missing (new
//!   database, or a restart that lost it) it restarts from the server clock
//!   in microseconds, above every version handed out before, so versions
//!   keep increasing across a restart without persistence (provided the
//!   server clock does not step back). See below for partial persistence.
//! * **TTL.** `PEXPIRE`, millisecond precision; Redis removes the key at its
//!   deadline for every reader. Rewriting a key without TTL removes the TTL.
//! * **Ephemeral keys.** Each handle has a session (an id from the counter).
//!   An ephemeral key expires `session_ttl` after its last refresh and the
//!   handle's background task refreshes all of them every `session_ttl / 3`;
//!   `close()` or dropping the handle deletes them at once. A crashed
//!   process's keys go within `session_ttl` of the crash.
//! * **Watches.** One pub/sub connection per handle, shared by its watches
//!   and locks; each watch subscribes to its key's channel (or a pattern for
//!   a tree) and re-reads on a change message newer than its last read. The
//!   server's keyspace-notification setting is not used. Expiry publishes
//!   nothing, so each read also returns the keys' `PTTL` and the watcher arms
//!   a timer for the earliest: an expired key is reported within
//!   `ttl_slack`, with no polling. After the pub/sub connection breaks the
//!   watch yields one transient error, reconnects with backoff,
//!   re-subscribes and re-reads, so the latest state is never missed.
//!   Dropping the stream unsubscribes.
//! * **Locks.** Native, on the lock key itself (`get(lock_key)` returns the
//!   holder's value): owner token, per-lock TTL ([`crate::LockOptions::ttl`],
//!   default `session_ttl`) renewed by the guard every third of it, a
//!   fencing token that is the grant's version (bumped in the grant script),
//!   waiters queued in arrival order, only the first woken when the key is
//!   deleted (or when the holder's key expires). The guard reports the lock
//!   lost as soon as a reset of the server *can* have happened: when the
//!   pub/sub connection it listens on breaks, when a renewal answers with
//!   another server `run_id` than the grant, or finds the key missing or
//!   owned by someone else; also on any change of the key, when no renewal
//!   was confirmed by `sent + ttl − ttl/10` (before the server can let the
//!   key expire), and whenever its background task ends. See
//!   [what a Redis lock guarantees](#what-a-redis-lock-guarantees).
//!   `unlock()` retries transient failures until the server answers, the
//!   store closes, or the key has expired by itself.
//! * **TTL bound.** Key TTLs, lock TTLs and `session_ttl` are at most
//!   [`MAX_TTL`] (one year); more is [`Error::InvalidArgument`] naming the
//!   key (the URL, for `session_ttl`), before anything is written.
//!
//! # Fencing tokens and persistence
//!
//! The counter, like every key, lives only as long as Redis keeps its data.
//!
//! * **No persistence** (the default of many deployments, and of the test
//!   servers): a restart loses the counter and every lock key. anykv
//!   restarts the counter from the server clock, so new fencing tokens are
//!   still greater than all old ones *if the server clock is sane*. A lock
//!   held before the restart is simply gone: its guard reports it lost (on
//!   reconnecting it re-checks the owner and finds none, or its deadline
//!   passes), but another process may take the lock as soon as the server is
//!   back, before the old holder noticed. The resource must then reject the
//!   old holder's lower token: that is what fencing tokens are for.
//! * **Partial persistence** (RDB snapshots, or AOF with `appendfsync
//!   everysec`), or a **failover** to a replica that missed the last writes
//!   (replication is asynchronous): the server comes back with an *older*
//!   counter and may have lost recent grants. Every lock grant therefore
//!   also lifts the counter to the server clock in microseconds when it
//!   lags, so a new fencing token is still above every token handed out
//!   before, as long as the (new) server's clock is not behind the old one
//!   by more than the outage lasted. Plain versions are only lifted when the
//!   counter is missing: with partial persistence a key's `last_index` may
//!   repeat a version that was lost, so a `KvPair` read just before such a
//!   crash should not be trusted for compare-and-swap afterwards.
//! * **`appendonly yes` + `appendfsync always`**: counter and locks survive
//!   restarts; nothing repeats, whatever the clocks do.
//!
//! # What a Redis lock guarantees
//!
//! A guard's [`crate::LockGuard::lost`] fires when the lock is or may be
//! lost:
//!
//! 1. the handle's pub/sub connection (which the guard listens on) breaks:
//!    a restart, a failover, a network failure. This fires at once when the
//!    connection is closed (a killed or restarted server: measured 2–7 ms
//!    after `SIGKILL` on loopback), within the hub's `PING` interval (5 s)
//!    plus `connect_timeout` when it goes silent. It fires even when the
//!    server comes back with the key intact (the client cannot tell);
//! 2. a renewal (every third of the lock TTL) finds the key missing or owned
//!    by another, or answers with another `run_id` (`INFO server`) than the
//!    grant did: a restart or failover seen only through the command
//!    connection. The `run_id` check needs the user to be allowed `INFO`;
//!    without it the check is skipped;
//! 3. a change message on the key newer than the grant: a delete, an
//!    overwrite, or *another handle's grant*;
//! 4. no renewal confirmed by `sent + ttl − ttl/10`; the store closed; the
//!    guard's task ended for any reason.
//!
//! Mutual exclusion — nobody else is granted the lock before the holder's
//! `lost()` fired — then holds as follows:
//!
//! | server | after a restart | two holders? |
//! |---|---|---|
//! | `appendonly yes` + `appendfsync always` | the key is back | no: the key holds the lock until it is released or expires; the guard reports it lost anyway (1.) and renews it no more, its `unlock()` still deletes it (answering [`Error::LockLost`]) |
//! | no persistence, RDB snapshots, or `appendfsync everysec` | the key may be gone | no, provided the holder's client sees its connection close before the server is back: measured, `lost()` 2–7 ms after the kill, the first competing grant 63–75 ms after it (a loopback restart takes 55–67 ms). A server that is silently partitioned from the holder *and* restarted voids this: the holder learns at its next `PING` or renewal |
//! | failover to a replica (asynchronous replication) | the key may be gone | as the row above: the connection to the old primary breaks |
//!
//! It also needs:
//!
//! * **`maxmemory-policy noeviction`** (the default). An evicted lock key
//!   behaves like the next point.
//! * **No `FLUSHALL`/`FLUSHDB`/`DEL` of `anykv:*` keys by operators.** Such a
//!   deletion on a live connection publishes nothing (`FLUSHALL` emits no
//!   keyspace notifications either, checked on Redis 7.0, so enabling them
//!   would not help), so the holder learns at the earliest of: the next
//!   grant of the key to someone else, whose change message it hears
//!   (measured on loopback: `lost()` fired 0.3 ms before to 1.2 ms after the
//!   competitor's `try_lock()` returned, over 7 runs), or its own next
//!   renewal (at most a third of the lock TTL later). Two holders thus
//!   overlap for about one pub/sub delivery — longer only if the holder's
//!   pub/sub connection is slow or partitioned, up to its renewal deadline.
//!
//! Beyond that, Redis locks are efficiency locks unless the resource checks
//! fencing tokens, which stay increasing across all of the above (see the
//! previous section for the clock conditions).
//!
//! # Capabilities
//!
//! * `max_value_size`: 32 MiB. Redis accepts 512 MB strings, but a value
//!   passes through a Lua script (copied into the script's memory) and is
//!   read back whole by watchers; anykv caps it to bound that cost.
//! * `min_ttl`: 1 ms (`PEXPIRE` resolution).
//! * `ttl_slack`: 500 ms. Readers never see an expired key (Redis checks the
//!   deadline on access); a watcher learns of an expiry by its timer, one
//!   round trip after the deadline; the rest is margin for loaded hosts.
//! * `session_ttl`: the URL's; `session_slack`: 500 ms (the keys expire
//!   within `session_ttl` of the crash; watchers see it within `ttl_slack`).
//! * `lock_ttl_per_lock`: true.
//!
//! # ACL users
//!
//! A user needs the `anykv:*` keys, the commands below, and for
//! `watch_tree` the right to `PSUBSCRIBE`: Redis compares `PSUBSCRIBE`
//! patterns *literally* against channel rules, so give it `allchannels`, or
//! the exact patterns `&anykv:<db>:k:<namespace>/<prefix>/*` it will watch
//! (`watch` and the writes need only `&anykv:*`). This is tested:
//!
//! ```text
//! ACL SETUSER app on >password resetkeys ~anykv:* allchannels -@all +@connection
//!     +evalsha +script|load +hmget +exists +subscribe +psubscribe +unsubscribe
//!     +punsubscribe +select +incr +time +get +set +del +hget +hset +pexpire +pttl
//!     +sadd +srem +smembers +zadd +zrem +zrange +zscore +zrangebylex +hdel
//!     +publish
//! ```
//!
//! A command the user may not run fails with [`Error::Unauthorized`].
//! Add `+info` to let lock grants and renewals read the server's `run_id`
//! (the scripts call `INFO server`; without the permission they skip that
//! check, see [what a Redis lock guarantees](#what-a-redis-lock-guarantees)).
//!
//! # Known limits
//!
//! * Single server only (no Cluster, no Sentinel discovery).
//! * Run Redis with `maxmemory-policy noeviction` (the default): eviction
//!   removes keys without a change message (watchers notice late, a lock's
//!   holder at the next grant or its next renewal), and an evicted
//!   `anykv:index` hides keys from `list`/`watch_tree`.
//! * Lock TTLs below 300 ms are rejected ([`Error::InvalidArgument`]).
//! * `FLUSHDB`/`FLUSHALL` or external edits of `anykv:*` keys publish
//!   nothing: watchers notice only at their next re-read, lock holders as
//!   said above.
//! * `list`, `watch_tree` and `delete_tree` run as one script over the
//!   prefix: very large trees block the server for the script's duration.

mod builder;
pub use self::builder::RedisBuilder;
pub(crate) mod config;
mod error;
mod hub;
mod lock;
mod scripts;
mod session;
mod watch;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Value};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::config::Config;
use self::error::{map, BACKEND};
use self::hub::{Hub, Topic};
use self::scripts::{Script, COUNTER, DATA_PREFIX, DELETE, DELETE_TREE, INDEX, LIST, LOCK_RENEW};
use self::scripts::{LEASE_PREFIX, LOCK_LEAVE, LOCK_TAKE, QUEUE_PREFIX};
use self::scripts::{PUT, PUT_PLAIN, READ, SESSION_OPEN, SESSION_PREFIX};
use self::watch::{glob_escape, KeyTarget, Snapshot, TreeTarget, Watcher};
use crate::error::{Error, Result};
use crate::key::Namespace;
use crate::lock::Lock;
use crate::request::{Backend, Key};
use crate::store::Store;
use crate::types::{
    Capabilities, Expiry, KvPair, LockOptions, PutOptions, TreeWatchStream, WatchStream,
};
use crate::url::StoreUrl;

/// Largest value accepted (32 MiB); see the module docs for why it is
/// below Redis's own 512 MB.
pub const MAX_VALUE_SIZE: usize = 32 * 1024 * 1024;

/// How late a watcher may report an expired key (see the module docs).
pub const TTL_SLACK: Duration = Duration::from_millis(500);

/// Opens a store from a parsed URL of this backend's scheme.
pub(crate) async fn open(url: StoreUrl) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(RedisStore::from_url(url).await?))
}

/// A handle on a Redis server: one session, one command connection
/// (multiplexed, reconnecting), one pub/sub connection for watches and locks.
///
/// Cheap to clone; clones share the session, which ends when the last clone
/// is dropped or on [`Store::close`]. Usually opened through
/// [`crate::open`]; see the [module docs](self) for the URL.
#[derive(Clone)]
pub struct RedisStore {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.handle.core.url)
            .field("session", &self.handle.core.session_id)
            .finish()
    }
}

impl std::fmt::Display for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.handle.core.url)
    }
}

/// Owns the session: ending it is what dropping the last clone does.
struct Handle {
    core: Arc<Core>,
    refresh: JoinHandle<()>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.refresh.abort();
        let core = self.core.clone();
        if core.begin_close() {
            // Never block in Drop: end the session in the background if a
            // runtime is there; otherwise its keys expire by themselves.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(error) = session::end(&core).await {
                        tracing::debug!(url = %core.url, %error,
                            "ending the session of a dropped handle failed; its keys expire by themselves");
                    }
                });
            }
        }
    }
}

/// What the handle, its watch streams, lock guards and tasks share.
pub(crate) struct Core {
    pub(crate) conn: ConnectionManager,
    pub(crate) url: String,
    namespace: Namespace,
    /// `anykv:<db>:k:` — channel names are not scoped by database.
    pub(crate) channel_prefix: String,
    /// Prefix of a lock waiter's own wake-up channel (by owner token).
    pub(crate) wake_prefix: String,
    pub(crate) session_id: String,
    pub(crate) session_set: String,
    pub(crate) session_ttl: Duration,
    request_timeout: Duration,
    pub(crate) closed: CancellationToken,
    ended: AtomicBool,
    pub(crate) hub: Hub,
    lock_seq: AtomicU64,
    /// Reports a lapsed session (see `session.rs`) to the views.
    pub(crate) tracker: Arc<crate::session::SessionTracker>,
}

/// The precondition of a write.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect {
    Any,
    Create,
    Version(u64),
}

/// How long a written key lives.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Lifetime {
    Forever,
    Ttl(Duration),
    Ephemeral,
}

/// What a write or delete script answered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Done; the change's version.
    Written(u64),
    /// An unconditional delete found nothing to delete.
    Absent,
    /// A create-only write found the key; its `PTTL` (-1 none, -2 gone).
    Exists { pttl: i64 },
    /// The precondition expected the key, it is not there.
    Missing,
    /// The precondition did not match.
    Modified,
    /// A waiting lock found the key free but another waiter first in line;
    /// that waiter's lease ends in this many ms.
    Queued { lease_ms: i64 },
    /// A lock was granted: its fencing token, and the server's `run_id`
    /// (`""` when the user may not run `INFO`).
    Granted { token: u64, server: String },
}

impl RedisStore {
    /// Connects to the server at `url` (`redis://` or `rediss://`).
    ///
    /// ```no_run
    /// # async fn demo() -> anykv::Result<()> {
    /// use anykv::backend::redis::RedisStore;
    /// let store = RedisStore::connect("redis://127.0.0.1:6379/app").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self> {
        Self::from_url(StoreUrl::parse(url)?).await
    }

    /// Connects from a parsed URL.
    pub async fn from_url(url: StoreUrl) -> Result<Self> {
        url.expect_scheme(&["redis", "rediss"])?;
        let config = Config::from_url(url)?;
        tracing::debug!(?config, "opening redis store");
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.request_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let client = config.client.clone();
        // Bounded by twice the connect timeout: one attempt plus one retry.
        let conn = guarded_connect(&config.url, config.connect_timeout * 2, async move {
            ConnectionManager::new_with_config(client, manager_config).await
        })
        .await?;

        let closed = CancellationToken::new();
        let hub = Hub::start(
            config.client.clone(),
            config.url.clone(),
            config.connect_timeout,
            closed.clone(),
        );
        let mut core = Core {
            conn,
            url: config.url.clone(),
            namespace: config.namespace.clone(),
            channel_prefix: format!("anykv:{}:k:", config.db),
            wake_prefix: format!("anykv:{}:w:", config.db),
            session_id: String::new(),
            session_set: String::new(),
            session_ttl: config.session_ttl,
            request_timeout: config.request_timeout,
            closed,
            ended: AtomicBool::new(false),
            hub,
            lock_seq: AtomicU64::new(0),
            tracker: Arc::new(crate::session::SessionTracker::new()),
        };
        // A fresh session id; also proves the credentials can run scripts.
        let mut cmd = SESSION_OPEN.cmd();
        cmd.arg(1).arg(COUNTER);
        let reply = core.eval(&SESSION_OPEN, &cmd, &config.url).await?;
        let id = uint(&reply).ok_or_else(|| core.reply_error(&config.url, &SESSION_OPEN))?;
        core.session_id = id.to_string();
        core.session_set = format!("{SESSION_PREFIX}{id}");

        let core = Arc::new(core);
        let weak = Arc::downgrade(&core);
        core.tracker.set_expirer(Arc::new(move || {
            let core = weak.upgrade();
            Box::pin(async move {
                match core {
                    Some(core) => session::lapse(&core).await,
                    None => Ok(()),
                }
            })
        }));
        let refresh = session::spawn_refresh(core.clone());
        Ok(RedisStore {
            handle: Arc::new(Handle { core, refresh }),
        })
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.handle.core
    }
}

/// Runs a connection attempt with a deadline, and turns a panic inside the
/// client (rustls without a crypto provider panics on the first TLS
/// connection) into an error.
pub(crate) async fn guarded_connect<T>(
    url: &str,
    limit: Duration,
    attempt: impl Future<Output = RedisResult<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, AssertUnwindSafe(attempt).catch_unwind()).await {
        Err(_) => Err(Error::Timeout {
            operation: "redis connect",
            target: url.to_owned(),
            after: limit,
        }),
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Error::Backend {
                backend: BACKEND,
                target: url.to_owned(),
                source: format!(
                    "the redis client panicked while connecting ({what}); for rediss:// this \
                     means rustls has no crypto provider: enable rustls' `ring` or `aws-lc-rs` \
                     feature, or call rustls::crypto::CryptoProvider::install_default first"
                )
                .into(),
            })
        }
        Ok(Ok(result)) => result.map_err(|e| map(e, url, url, limit)),
    }
}

impl Core {
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.is_cancelled() {
            return Err(self.closed_error());
        }
        Ok(())
    }

    pub(crate) fn closed_error(&self) -> Error {
        Error::Closed {
            url: self.url.clone(),
        }
    }

    pub(crate) fn unavailable(&self, why: &'static str) -> Error {
        error::unavailable(&self.url, why)
    }

    /// Marks the store closed; true for the first caller only.
    fn begin_close(&self) -> bool {
        self.closed.cancel();
        !self.ended.swap(true, Ordering::AcqRel)
    }

    fn data_key(&self, full: &str) -> String {
        let mut key = String::with_capacity(DATA_PREFIX.len() + full.len());
        key.push_str(DATA_PREFIX);
        key.push_str(full);
        key
    }

    pub(crate) fn channel(&self, full: &str) -> String {
        let mut channel = String::with_capacity(self.channel_prefix.len() + full.len());
        channel.push_str(&self.channel_prefix);
        channel.push_str(full);
        channel
    }

    /// A lock owner token unique across every grant ever made on the server.
    pub(crate) fn next_owner(&self) -> String {
        let n = self.lock_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}:{n}", self.session_id)
    }

    fn map_err(&self, err: redis::RedisError, target: &str) -> Error {
        map(err, target, &self.url, self.request_timeout)
    }

    pub(crate) fn reply_error(&self, target: &str, script: &Script) -> Error {
        Error::Backend {
            backend: BACKEND,
            target: target.to_owned(),
            source: format!("unexpected reply from the {} script", script.name).into(),
        }
    }

    pub(crate) fn protocol_error(&self, target: &str, operation: &str, got: Outcome) -> Error {
        Error::Backend {
            backend: BACKEND,
            target: target.to_owned(),
            source: format!("unexpected outcome of {operation}: {got:?}").into(),
        }
    }

    /// Runs a script call built from [`Script::cmd`]; loads the script if
    /// the server does not know it (first use, or after a restart).
    pub(crate) async fn eval(
        &self,
        script: &Script,
        cmd: &redis::Cmd,
        target: &str,
    ) -> Result<Value> {
        let mut conn = self.conn.clone();
        match cmd.query_async::<Value>(&mut conn).await {
            Ok(value) => Ok(value),
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(&script.source)
                    .query_async::<String>(&mut conn)
                    .await
                    .map_err(|e| self.map_err(e, target))?;
                cmd.query_async::<Value>(&mut conn)
                    .await
                    .map_err(|e| self.map_err(e, target))
            }
            Err(e) => Err(self.map_err(e, target)),
        }
    }

    /// The write script.
    pub(crate) async fn write(
        &self,
        user: &str,
        full: &str,
        value: &[u8],
        expect: Expect,
        lifetime: Lifetime,
    ) -> Result<Outcome> {
        self.check_open()?;
        if let (Expect::Any, Lifetime::Forever) = (expect, lifetime) {
            let mut cmd = PUT_PLAIN.cmd();
            cmd.arg(3)
                .arg(self.data_key(full))
                .arg(COUNTER)
                .arg(INDEX)
                .arg(value)
                .arg(full)
                .arg(self.channel(full));
            let reply = self.eval(&PUT_PLAIN, &cmd, user).await?;
            return outcome(reply).ok_or_else(|| self.reply_error(user, &PUT_PLAIN));
        }
        let (kind, ttl_ms) = match lifetime {
            Lifetime::Forever => ("n", 0),
            Lifetime::Ttl(ttl) => ("t", millis(ttl)),
            Lifetime::Ephemeral => ("e", millis(self.session_ttl)),
        };
        let mut cmd = PUT.cmd();
        cmd.arg(4)
            .arg(self.data_key(full))
            .arg(COUNTER)
            .arg(INDEX)
            .arg(&self.session_set)
            .arg(full)
            .arg(value);
        match expect {
            Expect::Any => cmd.arg(""),
            Expect::Create => cmd.arg("c"),
            Expect::Version(v) => cmd.arg(v),
        };
        cmd.arg(kind)
            .arg(ttl_ms)
            .arg(&self.session_id)
            .arg(self.channel(full));
        let reply = self.eval(&PUT, &cmd, user).await?;
        outcome(reply).ok_or_else(|| self.reply_error(user, &PUT))
    }

    /// The delete script; `condition` = (hash field, expected value).
    pub(crate) async fn remove(
        &self,
        user: &str,
        full: &str,
        condition: Option<(&str, &str)>,
    ) -> Result<Outcome> {
        self.check_open()?;
        let (field, expected) = condition.unwrap_or(("", ""));
        let mut cmd = DELETE.cmd();
        cmd.arg(3)
            .arg(self.data_key(full))
            .arg(COUNTER)
            .arg(INDEX)
            .arg(full)
            .arg(field)
            .arg(expected)
            .arg(self.channel(full))
            .arg(&self.wake_prefix);
        let reply = self.eval(&DELETE, &cmd, user).await?;
        outcome(reply).ok_or_else(|| self.reply_error(user, &DELETE))
    }

    /// One attempt to take a lock. `queue` (a waiting `lock()`): queue or
    /// renew the lease, and take the lock only if it is free and this
    /// waiter is first in line; otherwise (`try_lock()`) take it if free.
    pub(crate) async fn lock_take(
        &self,
        user: &str,
        full: &str,
        value: &[u8],
        ttl: Duration,
        owner: &str,
        queue: bool,
    ) -> Result<Outcome> {
        self.check_open()?;
        let mut cmd = LOCK_TAKE.cmd();
        cmd.arg(6)
            .arg(self.data_key(full))
            .arg(COUNTER)
            .arg(INDEX)
            .arg(&self.session_set)
            .arg(format!("{QUEUE_PREFIX}{full}"))
            .arg(format!("{LEASE_PREFIX}{full}"))
            .arg(full)
            .arg(value)
            .arg(millis(ttl))
            .arg(&self.session_id)
            .arg(owner)
            .arg(self.channel(full))
            // A waiter renews its lease every third of it.
            .arg(millis(ttl))
            .arg(if queue { "1" } else { "" });
        let reply = self.eval(&LOCK_TAKE, &cmd, user).await?;
        outcome(reply).ok_or_else(|| self.reply_error(user, &LOCK_TAKE))
    }

    /// Takes a waiter that gave up out of the key's queue.
    pub(crate) async fn lock_leave(&self, user: &str, full: &str, owner: &str) -> Result<()> {
        let mut cmd = LOCK_LEAVE.cmd();
        cmd.arg(4)
            .arg(format!("{QUEUE_PREFIX}{full}"))
            .arg(format!("{LEASE_PREFIX}{full}"))
            .arg(self.data_key(full))
            .arg(COUNTER)
            .arg(owner)
            .arg(full)
            .arg(&self.wake_prefix);
        self.eval(&LOCK_LEAVE, &cmd, user).await.map(drop)
    }

    /// The channel on which the waiter with this owner token is woken.
    pub(crate) fn wake_channel(&self, owner: &str) -> String {
        format!("{}{owner}", self.wake_prefix)
    }

    /// Re-arms a lock's TTL if `owner` still holds it: the server's
    /// `run_id` (`""` when the user may not run `INFO`) if so, `None` if the
    /// key is missing or has another owner.
    pub(crate) async fn renew(
        &self,
        user: &str,
        full: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>> {
        self.check_open()?;
        let mut cmd = LOCK_RENEW.cmd();
        cmd.arg(1)
            .arg(self.data_key(full))
            .arg(owner)
            .arg(millis(ttl));
        let reply = self.eval(&LOCK_RENEW, &cmd, user).await?;
        match reply {
            Value::Int(0) => Ok(None),
            Value::Array(items) if items.first().and_then(int) == Some(1) => Ok(Some(
                items.get(1).and_then(text).unwrap_or_default().to_owned(),
            )),
            _ => Err(self.reply_error(user, &LOCK_RENEW)),
        }
    }

    /// One consistent read of a key, for watchers.
    pub(crate) async fn read_key(
        &self,
        user: &str,
        full: &str,
    ) -> Result<Snapshot<Option<KvPair>>> {
        self.check_open()?;
        let mut cmd = READ.cmd();
        cmd.arg(2).arg(self.data_key(full)).arg(COUNTER);
        let reply = self.eval(&READ, &cmd, user).await?;
        let received = Instant::now();
        let bad = || self.reply_error(user, &READ);
        let Value::Array(mut items) = reply else {
            return Err(bad());
        };
        let counter = items.first().and_then(uint).ok_or_else(bad)?;
        match items.as_mut_slice() {
            [_] => Ok(Snapshot {
                counter,
                item: None,
                expires: None,
            }),
            [_, value, version, pttl] => {
                let last_index = uint(version).ok_or_else(bad)?;
                let value = take_bytes(value).ok_or_else(bad)?;
                Ok(Snapshot {
                    counter,
                    item: Some(KvPair {
                        key: user.to_owned(),
                        value,
                        last_index,
                    }),
                    expires: int(pttl).and_then(|ms| expiry(received, ms)),
                })
            }
            _ => Err(bad()),
        }
    }

    /// One consistent listing of every key strictly below `full_prefix`.
    pub(crate) async fn read_tree(&self, full_prefix: &str) -> Result<Snapshot<Vec<KvPair>>> {
        self.check_open()?;
        let (min, max) = lex_range(full_prefix);
        let mut cmd = LIST.cmd();
        cmd.arg(2)
            .arg(COUNTER)
            .arg(INDEX)
            .arg(min)
            .arg(max)
            .arg(DATA_PREFIX);
        let reply = self.eval(&LIST, &cmd, full_prefix).await?;
        let received = Instant::now();
        let bad = || self.reply_error(full_prefix, &LIST);
        let Value::Array(mut items) = reply else {
            return Err(bad());
        };
        let Some((counter, rows)) = items.split_first_mut() else {
            return Err(bad());
        };
        let counter = uint(counter).ok_or_else(bad)?;
        if rows.len() % 4 != 0 {
            return Err(bad());
        }
        let mut pairs = Vec::with_capacity(rows.len() / 4);
        let mut expires: Option<Instant> = None;
        for row in rows.chunks_exact_mut(4) {
            let member = text(&row[0]).ok_or_else(bad)?;
            let Some(user) = self.namespace.strip(member) else {
                continue;
            };
            pairs.push(KvPair {
                key: user.to_owned(),
                value: take_bytes(&mut row[1]).ok_or_else(bad)?,
                last_index: uint(&row[2]).ok_or_else(bad)?,
            });
            if let Some(at) = int(&row[3]).and_then(|ms| expiry(received, ms)) {
                expires = Some(expires.map_or(at, |e| e.min(at)));
            }
        }
        Ok(Snapshot {
            counter,
            item: pairs,
            expires,
        })
    }

    fn lifetime(&self, user: &str, options: &PutOptions) -> Result<Lifetime> {
        options.validate(user)?;
        Ok(match options.expiry {
            Expiry::Ttl(ttl) => Lifetime::Ttl(check_ttl(user, ttl, "a key TTL")?),
            Expiry::Ephemeral => Lifetime::Ephemeral,
            _ => Lifetime::Forever,
        })
    }
}

/// `ZRANGEBYLEX` bounds for every key strictly below `full_prefix`: from
/// `prefix/` (inclusive) to `prefix0` (exclusive; `0` follows `/`).
fn lex_range(full_prefix: &str) -> (String, String) {
    if full_prefix.is_empty() {
        ("-".to_owned(), "+".to_owned())
    } else {
        (format!("[{full_prefix}/"), format!("({full_prefix}0"))
    }
}

/// The longest key TTL, lock TTL and `session_ttl` accepted: one year.
///
/// Redis itself takes relative expiries up to `i64::MAX` ms minus its clock
/// (larger ones fail with "invalid expire time"), but the scripts compare
/// TTLs as Lua numbers (doubles, exact to 2^53 ms) and the lock guard does
/// `Instant` arithmetic with them; a year is far inside both. Longer TTLs are
/// [`Error::InvalidArgument`] naming the key, checked before anything is sent.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// `ttl` if it is at most [`MAX_TTL`], else the error naming `key`.
pub(crate) fn check_ttl(key: &str, ttl: Duration, what: &str) -> Result<Duration> {
    if ttl > MAX_TTL {
        return Err(Error::InvalidArgument {
            key: key.to_owned(),
            reason: format!("{what} must be at most {MAX_TTL:?} on redis, got {ttl:?}"),
        });
    }
    Ok(ttl)
}

/// Milliseconds, rounded up, at least 1, capped at [`MAX_TTL`] (callers
/// check the bound first; the cap only keeps a missed check harmless).
fn millis(d: Duration) -> u64 {
    const CAP: u64 = MAX_TTL.as_secs() * 1000;
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(CAP).clamp(1, CAP)
}

fn expiry(received: Instant, pttl_ms: i64) -> Option<Instant> {
    // +1 ms: Redis expires a key once its deadline is strictly in the past.
    // An expiry too far away to represent is no expiry worth a timer.
    u64::try_from(pttl_ms)
        .ok()
        .and_then(|ms| received.checked_add(Duration::from_millis(ms.saturating_add(1))))
}

fn outcome(reply: Value) -> Option<Outcome> {
    match reply {
        Value::Int(0) => Some(Outcome::Absent),
        Value::Array(items) => match (items.first().and_then(text), items.get(1)) {
            (Some("exists"), pttl) => Some(Outcome::Exists {
                pttl: pttl.and_then(int).unwrap_or(-1),
            }),
            (Some("missing"), _) => Some(Outcome::Missing),
            (Some("modified"), _) => Some(Outcome::Modified),
            (Some("queued"), ms) => Some(Outcome::Queued {
                lease_ms: ms.and_then(int).unwrap_or(0),
            }),
            (Some("granted"), Some(token)) => Some(Outcome::Granted {
                token: uint(token)?,
                server: items.get(2).and_then(text).unwrap_or_default().to_owned(),
            }),
            _ => None,
        },
        other => uint(&other).map(Outcome::Written),
    }
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn uint(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

/// The integer at `index` of an array reply.
pub(crate) fn int_at(v: &Value, index: usize) -> Option<i64> {
    match v {
        Value::Array(items) => items.get(index).and_then(int),
        _ => None,
    }
}

/// Moves a bulk string out of a reply (no copy).
fn take_bytes(v: &mut Value) -> Option<Bytes> {
    match std::mem::take(v) {
        Value::BulkString(b) => Some(Bytes::from(b)),
        _ => None,
    }
}

fn pair_or_error(user: String, value: Bytes, outcome: Outcome, core: &Core) -> Result<KvPair> {
    match outcome {
        Outcome::Written(last_index) => Ok(KvPair {
            key: user,
            value,
            last_index,
        }),
        Outcome::Exists { .. } => Err(Error::exists(&user)),
        Outcome::Missing => Err(Error::not_found(&user)),
        Outcome::Modified => Err(Error::modified(&user)),
        other => Err(core.protocol_error(&user, "put", other)),
    }
}

#[async_trait]
impl Backend for RedisStore {
    const NAME: &'static str = "redis";

    fn namespace(&self) -> &Namespace {
        &self.core().namespace
    }

    fn check_open(&self) -> Result<()> {
        self.core().check_open()
    }

    async fn put(&self, key: Key, value: Bytes, options: PutOptions) -> Result<KvPair> {
        let core = self.core();
        let Key { user, full } = key;
        let lifetime = core.lifetime(&user, &options)?;
        let outcome = core
            .write(&user, &full, &value, Expect::Any, lifetime)
            .await?;
        pair_or_error(user, value, outcome, core)
    }

    async fn put_if(
        &self,
        key: Key,
        value: Bytes,
        previous: Option<u64>,
        options: PutOptions,
    ) -> Result<KvPair> {
        let core = self.core();
        let Key { user, full } = key;
        let lifetime = core.lifetime(&user, &options)?;
        let expect = match previous {
            None => Expect::Create,
            Some(p) => Expect::Version(p),
        };
        let outcome = core.write(&user, &full, &value, expect, lifetime).await?;
        pair_or_error(user, value, outcome, core)
    }

    async fn delete(&self, key: Key) -> Result<()> {
        let core = self.core();
        let Key { user, full } = key;
        match core.remove(&user, &full, None).await? {
            Outcome::Written(_) | Outcome::Absent => Ok(()),
            other => Err(core.protocol_error(&user, "delete", other)),
        }
    }

    async fn delete_if(&self, key: Key, previous: u64) -> Result<()> {
        let core = self.core();
        let Key { user, full } = key;
        let expected = previous.to_string();
        match core.remove(&user, &full, Some(("i", &expected))).await? {
            Outcome::Written(_) => Ok(()),
            Outcome::Missing => Err(Error::not_found(&user)),
            Outcome::Modified => Err(Error::modified(&user)),
            other => Err(core.protocol_error(&user, "atomic_delete", other)),
        }
    }

    async fn get(&self, key: Key) -> Result<Option<KvPair>> {
        let core = self.core();
        let Key { user, full } = key;
        let mut conn = core.conn.clone();
        let (value, version): (Option<Vec<u8>>, Option<u64>) = redis::cmd("HMGET")
            .arg(core.data_key(&full))
            .arg("v")
            .arg("i")
            .query_async(&mut conn)
            .await
            .map_err(|e| core.map_err(e, &user))?;
        match (value, version) {
            (Some(value), Some(last_index)) => Ok(Some(KvPair {
                key: user,
                value: Bytes::from(value),
                last_index,
            })),
            _ => Ok(None),
        }
    }

    async fn list(&self, prefix: Key) -> Result<Vec<KvPair>> {
        let core = self.core();
        let Key { full, .. } = prefix;
        Ok(core.read_tree(&full).await?.item)
    }

    async fn delete_tree(&self, prefix: Key) -> Result<()> {
        let core = self.core();
        let Key { user, full } = prefix;
        let (min, max) = lex_range(&full);
        // The prefix itself is a key too, unless it is the namespace root.
        let exact = if user.is_empty() { "" } else { full.as_str() };
        let mut cmd = DELETE_TREE.cmd();
        cmd.arg(2)
            .arg(COUNTER)
            .arg(INDEX)
            .arg(min)
            .arg(max)
            .arg(DATA_PREFIX)
            .arg(&core.channel_prefix)
            .arg(exact)
            .arg(&core.wake_prefix);
        core.eval(&DELETE_TREE, &cmd, &user).await?;
        Ok(())
    }

    async fn watch(&self, key: Key) -> Result<WatchStream> {
        let core = self.core();
        let Key { user, full } = key;
        let subscription = core
            .hub
            .subscribe(Topic::Channel(core.channel(&full)))
            .await?;
        let target = KeyTarget { user, full };
        Ok(Watcher::new(core.clone(), target, subscription).into_stream())
    }

    async fn watch_tree(&self, prefix: Key) -> Result<TreeWatchStream> {
        let core = self.core();
        let Key { full, .. } = prefix;
        let pattern = if full.is_empty() {
            format!("{}*", glob_escape(&core.channel_prefix))
        } else {
            format!(
                "{}{}/*",
                glob_escape(&core.channel_prefix),
                glob_escape(&full)
            )
        };
        let subscription = core.hub.subscribe(Topic::Pattern(pattern)).await?;
        let target = TreeTarget { full_prefix: full };
        Ok(Watcher::new(core.clone(), target, subscription).into_stream())
    }

    async fn new_lock(&self, key: Key, options: LockOptions) -> Result<Lock> {
        let core = self.core();
        let Key { user, full } = key;
        let ttl = check_ttl(&user, options.ttl.unwrap_or(core.session_ttl), "a lock TTL")?;
        if ttl < lock::MIN_LOCK_TTL {
            return Err(Error::InvalidArgument {
                key: user,
                reason: format!("a redis lock TTL must be at least {:?}", lock::MIN_LOCK_TTL),
            });
        }
        let backend = lock::RedisLock {
            store: self.clone(),
            user: user.clone(),
            full,
            value: options.value,
            ttl,
        };
        Ok(Lock::new(user, Arc::new(backend)))
    }

    fn session(&self) -> crate::session::Session {
        self.core().tracker.session()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_value_size: MAX_VALUE_SIZE,
            min_ttl: Duration::from_millis(1),
            ttl_slack: TTL_SLACK,
            session_ttl: self.core().session_ttl,
            session_slack: TTL_SLACK,
            shared_between_processes: true,
            lock_ttl_per_lock: true,
            ..Capabilities::new(BACKEND)
        }
    }

    async fn close(&self) -> Result<()> {
        let core = self.core();
        if !core.begin_close() {
            return Ok(());
        }
        self.handle.refresh.abort();
        core.tracker.close();
        session::end(core).await
    }
}

crate::request::impl_store!(RedisStore);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lex_range_covers_exactly_the_subtree() {
        assert_eq!(lex_range(""), ("-".into(), "+".into()));
        let (min, max) = lex_range("a/b");
        assert_eq!((min.as_str(), max.as_str()), ("[a/b/", "(a/b0"));
        // Every key below "a/b/" sorts inside, siblings outside.
        for inside in ["a/b/c", "a/b/\u{10ffff}", "a/b/ "] {
            assert!(inside > &min[1..] && inside < &max[1..], "{inside}");
        }
        for outside in ["a/b", "a/b-c", "a/bc", "a/b0"] {
            assert!(!(outside >= &min[1..] && outside < &max[1..]), "{outside}");
        }
    }

    #[test]
    fn millis_round_up_and_stay_positive() {
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::ZERO), 1);
        assert!(millis(Duration::MAX) > 0);
    }

    #[test]
    fn script_replies_parse() {
        assert_eq!(
            outcome(Value::BulkString(b"42".to_vec())),
            Some(Outcome::Written(42))
        );
        assert_eq!(outcome(Value::Int(0)), Some(Outcome::Absent));
        assert_eq!(
            outcome(Value::Array(vec![
                Value::BulkString(b"exists".to_vec()),
                Value::Int(1200)
            ])),
            Some(Outcome::Exists { pttl: 1200 })
        );
        assert_eq!(
            outcome(Value::Array(vec![Value::BulkString(b"modified".to_vec())])),
            Some(Outcome::Modified)
        );
        assert_eq!(outcome(Value::Nil), None);
        assert_eq!(
            outcome(Value::Array(vec![
                Value::BulkString(b"granted".to_vec()),
                Value::BulkString(b"17".to_vec()),
                Value::BulkString(b"ab12".to_vec()),
            ])),
            Some(Outcome::Granted {
                token: 17,
                server: "ab12".into()
            })
        );
        assert_eq!(
            outcome(Value::Array(vec![Value::BulkString(b"granted".to_vec())])),
            None
        );
    }

    #[test]
    fn ttls_beyond_the_bound_are_rejected_naming_the_key() {
        assert!(check_ttl("k", MAX_TTL, "a key TTL").is_ok());
        match check_ttl("k", Duration::MAX, "a key TTL") {
            Err(Error::InvalidArgument { key, .. }) => assert_eq!(key, "k"),
            other => panic!("{other:?}"),
        }
        let now = Instant::now();
        assert_eq!(crate::time::later(now, Duration::MAX), now);
        // Whatever the server answers, no overflow panic.
        let _ = expiry(now, i64::MAX);
    }

    #[test]
    fn glob_escape_neutralises_pattern_characters() {
        assert_eq!(glob_escape("a*b?[c]\\d"), "a\\*b\\?\\[c\\]\\\\d");
    }
}
