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
//! | `cert_file`, `key_file` | none | `rediss://` only: PEM client certificate and its private key (together), for a server with `tls-auth-clients yes` |
//!
//! TLS files are read when the URL is checked (at open, and by
//! [`validate`](crate::url::validate)); one that cannot be read is an
//! [`Error::InvalidUrl`] naming the option and the path (never a key's
//! contents). A server certificate that does not chain to `ca_file` fails
//! the open with [`Error::Backend`] (its source names the certificate); a
//! server that refuses the client certificate, or its absence, fails it
//! with [`Error::Unauthorized`].
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
//!   The deadline lives on the key's own hash: a TTL write creates no other
//!   server object, so rewriting a key (a heartbeat) leaves just its hash.
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
//! * **Cost of a tree change.** A change message names its key (the
//!   channel) and carries the change's version, so a tree watch
//!   (`watch_tree_changes`, and `watch_tree`, which keeps its listing
//!   client-side over it) re-reads only the keys that changed, a burst in
//!   one script — one `HMGET` and `PTTL` per key, whatever the size of the
//!   prefix. The whole prefix is read again only to start and when messages
//!   may have been lost (pub/sub reconnect, a watcher far behind); see the
//!   `watch` module. Building each `watch_tree` listing still copies it on
//!   the client.
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
//! * `list` and `delete_tree` (and a tree watch's first read and resyncs)
//!   run as one script over the prefix: very large trees block the server
//!   for the script's duration.

mod builder;
mod commands;
mod kv;
mod reply;
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
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisResult;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::config::Config;
use self::error::{map, BACKEND};
use self::hub::Hub;
use self::scripts::COUNTER;
use self::scripts::{SESSION_OPEN, SESSION_PREFIX};
use crate::error::{Error, Result};
use crate::key::Namespace;
use crate::store::Store;
use crate::task::Tasks;
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
            // Never block in Drop: end the session in the background, on
            // the handle's runtime; if that is gone, its keys expire by
            // themselves.
            let tasks = core.tasks.clone();
            tasks.spawn(async move {
                if let Err(error) = session::end(&core).await {
                    tracing::debug!(url = %core.url, %error,
                        "ending the session of a dropped handle failed; its keys expire by themselves");
                }
            });
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
    /// Prefix of a lock waiter's own grant channel (by owner token): a
    /// release that hands the lock on to it sends the fencing token there.
    pub(crate) grant_prefix: String,
    pub(crate) session_id: String,
    pub(crate) session_set: String,
    pub(crate) session_ttl: Duration,
    request_timeout: Duration,
    pub(crate) closed: CancellationToken,
    /// The handle's background tasks.
    pub(crate) tasks: Tasks,
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
    /// that waiter's lease ends in this many ms. `server` as in `Granted`;
    /// `seen`, the version counter then.
    Queued {
        lease_ms: i64,
        server: String,
        seen: u64,
    },
    /// A waiting lock found the key held; its `PTTL` (-1 none). `server`
    /// as in `Granted`; `seen`, the holder's version.
    Held {
        pttl: i64,
        server: String,
        seen: u64,
    },
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
        let tasks = Tasks::current(&config.url)?;
        let hub = Hub::start(
            config.client.clone(),
            config.url.clone(),
            config.connect_timeout,
            closed.clone(),
            &tasks,
        );
        let mut core = Core {
            conn,
            url: config.url.clone(),
            namespace: config.namespace.clone(),
            channel_prefix: format!("anykv:{}:k:", config.db),
            wake_prefix: format!("anykv:{}:w:", config.db),
            grant_prefix: format!("anykv:{}:g:", config.db),
            session_id: String::new(),
            session_set: String::new(),
            session_ttl: config.session_ttl,
            request_timeout: config.request_timeout,
            closed,
            tasks,
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
                    // What a lapsed session leaves: its keys and liveness
                    // marker gone; the next refresh reports it replaced.
                    Some(core) => session::end(&core).await,
                    None => Ok(()),
                }
            })
        }));
        session::arm(&core).await?;
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
            let what = crate::task::panic_message(panic.as_ref()).unwrap_or_default();
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

pub use self::reply::MAX_TTL;
pub(crate) use self::reply::*;
