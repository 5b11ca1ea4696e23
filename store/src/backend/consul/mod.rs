//! The Consul backend (cargo feature `consul`): Consul's KV store over its
//! HTTP API v1, through `reqwest` (rustls).
//!
//! # URL
//!
//! ```text
//! consul://host[:port][/prefix][?option=value&…]
//! ```
//!
//! `host:port` is one Consul agent (default port 8500); as with every Consul
//! client, the agent forwards to the servers. The path is the namespace: key
//! `x` of `consul://h:8500/app` is Consul key `app/x`.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `token` | none | ACL token, sent as the `X-Consul-Token` header; shown as `***` in every URL anykv prints |
//! | `datacenter` | the agent's | sent as `?dc=` on every request |
//! | `session_ttl` | `10s` | TTL of the handle's session (10 s to 24 h, Consul's bounds) |
//! | `lock_delay` | `0s` | the handle's session lock-delay (0 to 60 s); see *Locks* |
//! | `connect_timeout` | `5s` | TCP (and TLS) connect timeout |
//! | `request_timeout` | `10s` | bound on one non-blocking request |
//! | `tls` | `false` (`true` if `ca_file` or `cert_file` is set) | talk `https` to the agent |
//! | `ca_file` | system roots | PEM file with the CA certificate(s) to trust |
//! | `cert_file`, `key_file` | none | PEM client certificate and its private key (together), for an agent with `verify_incoming_https` |
//!
//! TLS files are read when the store is opened; one that cannot be read is
//! an [`Error::InvalidUrl`] naming the option and the path (never a key's
//! contents). A server certificate that does not chain to `ca_file` fails
//! the open with [`Error::Unavailable`] (its source says why); an agent that
//! refuses the client certificate, or its absence, fails it with
//! [`Error::Unauthorized`].
//!
//! Unknown options, a user name or password (use `token`), several hosts,
//! and out-of-range durations are [`Error::InvalidUrl`]. Opening checks that
//! the agent answers and knows a Raft leader.
//!
//! # How the contract maps to Consul
//!
//! * **Versions** are the key's `ModifyIndex`: a Raft index, so it never
//!   repeats, not even across delete and re-create (no ABA). Consul skips a
//!   write that changes nothing and keeps the old index, so every anykv write
//!   stamps the entry's `Flags` with a fresh random number: rewriting the
//!   same value is a new version, as the contract wants. anykv uses `Flags`
//!   for nothing else; other tools' `Flags` on keys anykv writes are lost.
//! * **Writes** (`put`, `atomic_put`) are one `/v1/txn` transaction each:
//!   only a transaction returns the new `ModifyIndex` in the same round trip
//!   and can combine a precondition (`check-not-exists` / `check-index`, i.e.
//!   `?cas=`) with a session lock (`?acquire=`). A write over a key that
//!   another session holds releases that session's hold in the same
//!   transaction (the write decides the key's lifetime; Consul would keep
//!   the old session otherwise). See the `txn` module.
//! * **Reads**: `get`/`exists` read `/v1/kv/<key>`; `list` and `watch_tree`
//!   read `/v1/kv/<prefix>/?recurse` (the trailing `/` keeps `prefix2/…`
//!   out); `delete_tree` is one transaction `delete-tree <prefix>/` +
//!   `delete <prefix>`. Reads use Consul's default consistency mode (served
//!   by the leader). Keys other tools wrote that anykv cannot address (folder
//!   markers ending in `/`, `a//b`) are left out of listings.
//! * **`atomic_delete`** is `check-index` + `delete` (Consul's `?cas=` delete
//!   reports success for a missing key, which the contract calls
//!   [`Error::KeyNotFound`]).
//! * **Sessions** (the handle's and the TTL writes') are TTL-only: created
//!   with no health checks (`Checks` and `NodeChecks` empty), so Consul ends
//!   them only when their TTL runs out or they are destroyed — never because
//!   the agent they were created through is seen failed. Consul's default
//!   (bound to that agent's `serfHealth`) would free a holder's locks a few
//!   seconds after its agent dies, stops or is cut off, while the holder
//!   hears [`LockGuard::lost`] only at its TTL deadline: two holders for
//!   several seconds (measured on a 3-server cluster: 3.3 s after a SIGKILL
//!   of the holder's client agent, 1.7 s after a SIGSTOP).
//! * **TTL** ([`PutOptions::ttl`]): a TTL key is bound to a session of its
//!   own (named `anykv-ttl`, with that TTL, `behavior=delete`, no
//!   lock-delay), which no task renews. Consul invalidates a session between
//!   TTL and 2×TTL after its last renewal, and deletes its keys then; TTLs
//!   under 10 s (Consul's minimum) are rounded up to 10 s, TTLs over 24 h are
//!   [`Error::InvalidArgument`]. The write stamps the entry's `Flags` with a
//!   mark that says "bound to a per-key TTL session" (see the `txn` module).
//!   **A rewrite keeps one session per key**: a TTL rewrite reads the key
//!   and, if it is bound to such a session with the same TTL, renews that
//!   session (which restarts its timer, as creating one does) and rewrites
//!   the key on it, conditioned on the index it read — three round trips,
//!   no new session. Otherwise (first write, another TTL, the key changed
//!   meanwhile) it binds the key to a new session, and any write — with
//!   TTL, without (which makes the key permanent again), or ephemeral — that
//!   takes the key off a per-key TTL session destroys that session
//!   afterwards: it holds nothing then, and nothing binds it again. The
//!   handle's own session and other handles' lock sessions are never
//!   destroyed this way (their writes carry no mark). Consul 1.8 has no
//!   session operations in `/v1/txn`, so the destroy is a request of its
//!   own; if it fails, the session expires by its TTL. `delete` of a TTL
//!   key leaves its session to expire by its TTL, holding nothing.
//! * **Ephemeral** ([`PutOptions::ephemeral`]): the key is bound to the
//!   handle's own session (`behavior=delete`, TTL `session_ttl`), created on
//!   first use and renewed every `session_ttl / 3` by a task the handle owns.
//!   [`Store::close`] destroys the session, which deletes its keys at once;
//!   dropping the last clone of the handle does the same in the background. If
//!   no renewal is confirmed for `session_ttl` (measured from when the last
//!   confirmed one was sent) the handle declares the session lost, destroys
//!   it best effort, and the next ephemeral write or lock starts a new one.
//! * **Watches** are blocking queries (`?index=&wait=60s`) pulled by the
//!   stream itself, with no background task: see the `watch` module for the
//!   index rules (reset when it goes backwards, never spin when it does not
//!   move) and the retry backoff. A deletion is a 404 that carries an index
//!   too. Dropping the stream drops the in-flight request.
//! * **Locks** are `check-not-exists` + `acquire` of the key with the
//!   handle's session; the fencing token is the acquiring `ModifyIndex`.
//!   Waiters block on the key (a blocking query) until it is deleted; unlock
//!   deletes it (`check-index` + `delete`) rather than `?release=`-ing it, so
//!   no stale holder value is left behind. The release retries transient
//!   failures until Consul answers or the session ends; each acquire
//!   transaction runs in a task of its own, so a `lock()` cancelled at any
//!   point leaves no held lock behind. See the `lock` module.
//! * **Errors**: HTTP 403 (or an ACL refusal inside a transaction) is
//!   [`Error::Unauthorized`] naming the redacted URL; connection failures,
//!   429/502/503/504 and "No cluster leader" are [`Error::Unavailable`]; a
//!   request over its timeout is [`Error::Timeout`]; anything else is
//!   [`Error::Backend`] with Consul's answer as the source. Consul filters
//!   listings by ACL instead of refusing them: `list` and `watch_tree` with
//!   the anonymous token leave out the keys it may not read (an unknown
//!   token is refused outright).
//!
//! # Capabilities and why
//!
//! * `max_value_size` = [`MAX_VALUE_SIZE`] (372 KiB). Consul's KV accepts 512
//!   KiB per value, but every anykv write is a transaction, and Consul caps a
//!   whole `/v1/txn` request at 512 KiB, with the value base64-encoded (4/3)
//!   and up to three operations of framing around it. 372 KiB is what fits
//!   with the longest key; larger values are [`Error::ValueTooLarge`] before
//!   any request.
//! * `min_ttl` = 10 s (Consul's minimum session TTL).
//! * `ttl_slack` = 12 s: Consul deletes a TTL key between TTL and 2×TTL
//!   after the write (its session timer runs 2×TTL), plus a Raft round; the
//!   figure is for the 10 s minimum TTL. **For a TTL `t` the slack is `t` (+
//!   about a second)**, which one fixed number cannot express.
//! * `session_ttl` = the `session_ttl` option; `session_slack` =
//!   `session_ttl` + `lock_delay` + 2 s: a crashed process's session (its ephemeral keys and
//!   locks) goes at most 2×`session_ttl` after its last renewal, which is
//!   before the crash. The same holds when the holder's agent dies or is
//!   cut off: sessions carry no health checks, so nothing ends them sooner
//!   than their TTL, and nothing later (a Consul leader change restarts
//!   every session timer, which can add up to one more 2×`session_ttl`).
//! * `lock_ttl_per_lock` = false: locks live as long as the handle's session.
//!
//! # Locks and lock-delay
//!
//! Consul's lock-delay (15 s by default in Consul) blocks every session from
//! re-acquiring a key for that long after the session that held it is
//! invalidated, so a holder that lost its session (a long GC pause, a
//! partition) can notice before someone else acts. anykv defaults it to
//! **0**: with it, a crashed holder's lock is free again within
//! 2×`session_ttl`, instead of 2×`session_ttl` + 15 s. Mutual exclusion
//! then rests on the holder noticing [`LockGuard::lost`], which fires when
//! no renewal is confirmed within `session_ttl` of sending it: Consul
//! expires a TTL-only session no sooner than `session_ttl` after the last
//! renewal it received, which was no earlier, so the holder hears `lost()`
//! first (measured with the holder's client agent SIGKILLed: `lost()` at
//! 9.5 s, the waiter through a server acquired at 19.5 s; SIGSTOPped 14 s:
//! 9.5 s and 14.1 s). A process paused longer than that (a GC pause, a
//! SIGSTOP of the holder itself) cannot hear anything in time; fencing
//! tokens cover that, not a grace period.
//!
//! **One case the TTL rule does not cover: a session's node is
//! deregistered.** A session belongs to the node of the agent it was created
//! through, and Consul invalidates every session of a node the moment that
//! node leaves the catalog — autopilot's dead-server cleanup removing a
//! failed *server* (seen about 7 s after the server stopped answering, with
//! `cleanup_dead_servers` on, its default), `consul force-leave`, or a
//! failed client agent reaped after `reconnect_timeout` (72 h by default).
//! The nemesis measured it: a holder connected to a server that was
//! SIGSTOPped lost its lock to a waiter 312 ms before its own `lost()`
//! fired. Connect through a client agent, or set `lock_delay` to at least
//! `session_ttl`: Consul then refuses the key to everyone for that long after
//! any invalidation, which the holder's deadline (at most `session_ttl` after
//! its last confirmed renewal was sent) always precedes. The nemesis runs
//! with `lock_delay` = `session_ttl` and finds no overlap.
//!
//! Set `lock_delay` to buy that grace period back; waiters
//! then retry every few hundred milliseconds while it lasts (there is
//! nothing to block on), and ephemeral writes of a key a dead session held
//! fail until it ends.
//!
//! # Limits
//!
//! * One agent per URL (no client-side failover between agents).
//! * Intermediate states are coalesced in watches under load (the stream
//!   delivers the latest state when polled).
//! * If the cluster's Raft index goes backwards (snapshot restore, a
//!   rebuilt cluster, a restarted `-dev` agent), a watch re-reads and
//!   continues, and the versions it then delivers are those of the new
//!   history, so `last_index` can be smaller than before that event.
//! * A TTL write costs three round trips (read, then renew and
//!   transaction, or create and transaction); replacing another session
//!   costs up to three more (a rolled-back transaction, a read, the
//!   destroy). `atomic_put` with create-only skips the read.
//! * Every request in flight at once (tasks sharing the handle, watches,
//!   lock monitors) has a connection of its own. Up to 64 finished ones are
//!   kept for reuse, each for one idle second, so concurrent callers keep
//!   their throughput and no connection lingers after its use.
//!   Each open watch holds one connection: the agent's
//!   `limits.http_max_conns_per_client` (200 by default) caps how many
//!   watches and waiting lock calls one host can have open on one agent.
//!
//! [`Error::InvalidUrl`]: crate::Error::InvalidUrl
//! [`Error::KeyNotFound`]: crate::Error::KeyNotFound
//! [`Error::InvalidArgument`]: crate::Error::InvalidArgument
//! [`Error::Unauthorized`]: crate::Error::Unauthorized
//! [`Error::Unavailable`]: crate::Error::Unavailable
//! [`Error::Timeout`]: crate::Error::Timeout
//! [`Error::Backend`]: crate::Error::Backend
//! [`Error::ValueTooLarge`]: crate::Error::ValueTooLarge
//! [`PutOptions::ttl`]: crate::PutOptions::ttl
//! [`PutOptions::ephemeral`]: crate::PutOptions::ephemeral
//! [`Store::close`]: crate::Store::close
//! [`LockGuard::lost`]: crate::LockGuard::lost

mod builder;
pub use self::builder::ConsulBuilder;
pub(crate) mod config;
mod error;
mod http;
mod lock;
mod session;
mod txn;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use self::config::Config;
use self::error::BACKEND;
use self::http::Http;
use self::session::{Session, Sessions};
use self::txn::{Expect, Ops, WriteError};
use self::watch::WatchContext;
use crate::error::{Error, Result};
use crate::key::Namespace;
use crate::lock::Lock;
use crate::request::{Backend, Key};
use crate::store::Store;
use crate::task::Tasks;
use crate::types::{
    Capabilities, Expiry, KvPair, LockOptions, PutOptions, TreeWatchStream, WatchStream,
};
use crate::url::StoreUrl;

/// The largest value this backend writes: 372 KiB (380 928 bytes), what
/// fits in Consul's 512 KiB `/v1/txn` request once base64-encoded (see the
/// [module docs](self)).
pub const MAX_VALUE_SIZE: usize = 372 * 1024;

/// Consul's shortest session TTL, hence the shortest key TTL.
pub const MIN_TTL: Duration = Duration::from_secs(10);

/// Consul's longest session TTL, hence the longest key TTL.
pub const MAX_TTL: Duration = Duration::from_secs(86_400);

/// Room for Raft and timers on top of Consul's 2×TTL reaping.
const REAP_MARGIN: Duration = Duration::from_secs(2);

/// Opens a store from a parsed `consul://` URL (what [`crate::open`] calls).
pub(crate) async fn open(url: StoreUrl) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(ConsulStore::from_url(url).await?))
}

/// A handle on a Consul KV store. Cheap to clone; clones share the handle's
/// session, which ends on [`Store::close`] or when the last clone is dropped.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> anykv::Result<()> {
/// use anykv::backend::consul::ConsulStore;
/// use anykv::prelude::*;
/// let store = ConsulStore::open("consul://127.0.0.1:8500/app?token=…").await?;
/// store.put("config/mode", "on", PutOptions::new()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConsulStore {
    inner: Arc<Inner>,
}

struct Inner {
    http: Http,
    config: Config,
    closed: CancellationToken,
    sessions: Sessions,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closed.cancel();
        self.sessions.close_views();
        let Some(session) = self.sessions.take_now() else {
            return;
        };
        session.lost.cancel();
        // Never block in Drop: destroy in the background, on the handle's
        // runtime; if that is gone, the session lapses within 2×session_ttl.
        let http = self.http.clone();
        self.sessions.tasks().spawn(async move {
            if let Err(error) = http.session_destroy(&session.id).await {
                tracing::debug!(session = %session.id, %error, "destroying the session of a dropped handle failed");
            }
        });
    }
}

impl std::fmt::Debug for ConsulStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulStore")
            .field("url", &self.inner.config.redacted)
            .field("closed", &self.inner.closed.is_cancelled())
            .finish()
    }
}

impl ConsulStore {
    /// Opens a `consul://` URL (see the [module docs](self) for the options).
    pub async fn open(url: &str) -> Result<Self> {
        Self::from_url(StoreUrl::parse_expecting(url, &["consul"])?).await
    }

    /// Opens from a parsed `consul://` URL.
    pub async fn from_url(url: StoreUrl) -> Result<Self> {
        url.expect_scheme(&["consul"])?;
        let config = Config::from_url(url)?;
        let tasks = Tasks::current(&config.redacted)?;
        let http = Http::new(&config).map_err(|e| Error::InvalidUrl {
            url: config.redacted.clone(),
            reason: e.to_string(),
        })?;
        let leader = http
            .leader()
            .await
            .map_err(|e| e.into_error("open", &config.redacted, &config.redacted))?;
        if leader.is_empty() {
            return Err(Error::Unavailable {
                backend: BACKEND,
                url: config.redacted.clone(),
                source: Some("the agent knows no Raft leader".into()),
            });
        }
        let closed = CancellationToken::new();
        let sessions = Sessions::new(
            http.clone(),
            config.redacted.clone(),
            config.session_ttl,
            config.lock_delay,
            closed.clone(),
            tasks,
        );
        Ok(ConsulStore {
            inner: Arc::new(Inner {
                http,
                config,
                closed,
                sessions,
            }),
        })
    }

    pub(crate) fn http(&self) -> &Http {
        &self.inner.http
    }

    /// The redacted URL.
    pub(crate) fn url(&self) -> &str {
        &self.inner.config.redacted
    }

    fn namespace(&self) -> &Namespace {
        &self.inner.config.namespace
    }

    pub(crate) fn closed_token(&self) -> CancellationToken {
        self.inner.closed.clone()
    }

    pub(crate) fn closed_error(&self) -> Error {
        Error::Closed {
            url: self.url().to_owned(),
        }
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        crate::request::check_open(&self.inner.closed, self.url())
    }

    /// The handle's background tasks.
    pub(crate) fn tasks(&self) -> &Tasks {
        self.inner.sessions.tasks()
    }

    pub(crate) fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    pub(crate) async fn session(&self) -> Result<Arc<Session>> {
        self.inner.sessions.get().await
    }

    pub(crate) fn watch_context(&self) -> WatchContext {
        WatchContext {
            http: self.inner.http.clone(),
            closed: self.inner.closed.clone(),
            url: self.url().to_owned(),
        }
    }

    fn write_error(&self, user: &str, error: WriteError) -> Error {
        let reason = match error {
            WriteError::Failed(e) => return e,
            WriteError::InvalidSession => "Consul does not know the session the key was to be bound to",
            WriteError::LockDelay => {
                "Consul's lock-delay keeps the key from every session for a while after the session holding it ended"
            }
        };
        Error::Backend {
            backend: BACKEND,
            target: user.to_owned(),
            source: reason.into(),
        }
    }

    /// Every write mode: writes with the lifetime `options` asks for and
    /// returns the new pair.
    async fn put_checked(
        &self,
        key: Key,
        value: &Bytes,
        expect: Expect,
        options: PutOptions,
    ) -> Result<KvPair> {
        let Key { user, full } = key;
        let index = match options.expiry {
            Expiry::Never => self.write(&user, &full, value, expect, None, false).await,
            Expiry::Ephemeral => {
                let mut result = Err(WriteError::InvalidSession);
                // A second try covers a session that vanished under us.
                for _ in 0..2 {
                    let session = self.session().await?;
                    result = self
                        .write(&user, &full, value, expect, Some(&session.id), false)
                        .await;
                    match result {
                        Err(WriteError::InvalidSession) => self.sessions().invalidate(&session),
                        _ => break,
                    }
                }
                result
            }
            Expiry::Ttl(ttl) => {
                self.write_ttl(&user, &full, value, expect, ttl.max(MIN_TTL))
                    .await
            }
        };
        match index {
            Ok(last_index) => Ok(KvPair {
                key: user,
                value: value.clone(),
                last_index,
            }),
            Err(e) => Err(self.write_error(&user, e)),
        }
    }
}

impl Backend for ConsulStore {
    const NAME: &'static str = "consul";

    fn namespace(&self) -> &Namespace {
        &self.inner.config.namespace
    }

    fn check_open(&self) -> Result<()> {
        ConsulStore::check_open(self)
    }

    async fn put(&self, key: Key, value: Bytes, options: PutOptions) -> Result<KvPair> {
        self.put_checked(key, &value, Expect::Any, options).await
    }

    async fn put_if(
        &self,
        key: Key,
        value: Bytes,
        previous: Option<u64>,
        options: PutOptions,
    ) -> Result<KvPair> {
        let expect = match previous {
            None => Expect::Absent,
            Some(p) => Expect::Version(p),
        };
        self.put_checked(key, &value, expect, options).await
    }

    async fn delete(&self, key: Key) -> Result<()> {
        let Key { user, full } = key;
        self.http()
            .delete(&full)
            .await
            .map_err(|e| e.into_error("delete", &user, self.url()))
    }

    async fn delete_if(&self, key: Key, previous: u64) -> Result<()> {
        let Key { user, full } = key;
        let mut ops = Ops::new(full.len());
        ops.check_index(&full, previous);
        ops.delete(&full);
        match self.http().txn(ops.finish()).await {
            Ok(_) => Ok(()),
            Err(error::ConsulError::TxnRejected { what }) if !error::is_acl_message(&what) => {
                match self.http().get(&full, None).await {
                    Ok((_, None)) => Err(Error::not_found(&user)),
                    Ok((_, Some(_))) => Err(Error::modified(&user)),
                    Err(e) => Err(e.into_error("atomic_delete", &user, self.url())),
                }
            }
            Err(e) => Err(e.into_error("atomic_delete", &user, self.url())),
        }
    }

    async fn get(&self, key: Key) -> Result<Option<KvPair>> {
        let Key { user, full } = key;
        match self.http().get(&full, None).await {
            Ok((_, Some(entry))) => Ok(Some(watch::pair(user, entry))),
            Ok((_, None)) => Ok(None),
            Err(e) => Err(e.into_error("get", &user, self.url())),
        }
    }

    async fn list(&self, prefix: Key) -> Result<Vec<KvPair>> {
        let Key { user, full } = prefix;
        match self.http().list(&full, None).await {
            Ok((_, entries)) => Ok(watch::listing(self.namespace(), &user, entries)),
            Err(e) => Err(e.into_error("list", &user, self.url())),
        }
    }

    async fn delete_tree(&self, prefix: Key) -> Result<()> {
        let Key { user, full } = prefix;
        let mut ops = Ops::new(full.len());
        if full.is_empty() {
            ops.delete_tree("");
        } else {
            ops.delete_tree(&format!("{full}/"));
        }
        if !user.is_empty() {
            ops.delete(&full);
        }
        match self.http().txn(ops.finish()).await {
            Ok(_) => Ok(()),
            Err(e) => Err(e.into_error("delete_tree", &user, self.url())),
        }
    }

    async fn watch(&self, key: Key) -> Result<WatchStream> {
        let Key { user, full } = key;
        Ok(watch::watch(self.watch_context(), user, full))
    }

    async fn watch_tree(&self, prefix: Key) -> Result<TreeWatchStream> {
        let Key { user, full } = prefix;
        Ok(watch::watch_tree(
            self.watch_context(),
            self.namespace().clone(),
            user,
            full,
        ))
    }

    async fn watch_tree_changes(&self, prefix: Key) -> Result<crate::types::TreeChangeStream> {
        let Key { user, full } = prefix;
        Ok(watch::watch_tree_changes(
            self.watch_context(),
            self.namespace().clone(),
            user,
            full,
        ))
    }

    async fn new_lock(&self, key: Key, options: LockOptions) -> Result<Lock> {
        let Key { user, full } = key;
        let lock = lock::ConsulLock::new(self.clone(), user.clone(), full, options.value);
        Ok(Lock::new(user, Arc::new(lock)))
    }

    /// * `max_value_size` 372 KiB: what fits in Consul's 512 KiB `/v1/txn`
    ///   request once base64-encoded (Consul's own KV limit is 512 KiB).
    /// * `min_ttl` 10 s: Consul's shortest session TTL; shorter TTLs are
    ///   rounded up.
    /// * `ttl_slack` 12 s: Consul deletes a TTL key between TTL and 2×TTL
    ///   after the write; this is the slack of the 10 s minimum TTL (for a
    ///   TTL `t` it is `t` plus about a second).
    /// * `session_slack` = `session_ttl` + `lock_delay` + 2 s: a crashed
    ///   holder's session ends at most 2×`session_ttl` after its last
    ///   renewal, and its locks are free again `lock_delay` after that.
    fn session(&self) -> crate::session::Session {
        self.inner.sessions.view()
    }

    fn capabilities(&self) -> Capabilities {
        let session_ttl = self.inner.config.session_ttl;
        Capabilities {
            max_value_size: MAX_VALUE_SIZE,
            min_ttl: MIN_TTL,
            max_ttl: MAX_TTL,
            ttl_slack: MIN_TTL + REAP_MARGIN,
            session_ttl,
            session_slack: session_ttl + self.inner.config.lock_delay + REAP_MARGIN,
            shared_between_processes: true,
            lock_ttl_per_lock: false,
            ..Capabilities::new(BACKEND)
        }
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.is_cancelled() {
            return Ok(());
        }
        self.inner.closed.cancel();
        self.inner.sessions.close_views();
        let Some(session) = self.inner.sessions.take().await else {
            return Ok(());
        };
        session.lost.cancel();
        self.http()
            .session_destroy(&session.id)
            .await
            .map_err(|e| e.into_error("close", self.url(), self.url()))
    }

    /// The agent's HTTP `Date` header: one-second resolution, so the offset
    /// it gives is good to about a second — enough to catch a clock that is
    /// off by seconds, no finer.
    async fn server_time(&self) -> Result<crate::types::ServerTime> {
        crate::request::timed_reading(Duration::from_secs(1), async {
            self.http()
                .date()
                .await
                .map_err(|e| e.into_error("server_time", "", self.url()))
        })
        .await
    }
}

crate::request::impl_store!(ConsulStore);
