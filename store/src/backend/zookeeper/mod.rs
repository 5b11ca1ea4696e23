//! The ZooKeeper backend (cargo feature `zookeeper`), on the
//! [`zookeeper-client`](https://docs.rs/zookeeper-client) crate, for
//! ZooKeeper 3.6 or later (persistent watches); tested with 3.8.
//!
//! # URL
//! ```text
//! zk://h1:2181,h2:2181/prefix?session_timeout=10s&connect_timeout=5s
//! zk://user:password@h1:2181/prefix
//! zookeeper://h1:2181/prefix?username=user&password=password
//! ```
//! Hosts without a port use 2181. The path is the key namespace. Options:
//!
//! | option | default | meaning |
//! |--------|---------|---------|
//! | `session_timeout` or `session_ttl` | 10s | session timeout asked of the server, which clamps it to its `minSessionTimeout`..`maxSessionTimeout` (4s..40s with the default `tickTime` of 2s). `session_timeout` wins if both are given. |
//! | `connect_timeout` | 5s | how long opening a session may take (at `open`, and after an expiry) |
//! | `username`, `password` | — | `digest` authentication, also accepted as `user:password@`. Znodes the handle creates then get the ACL "creator has all permissions", so other identities cannot read or change them; they get [`Error::Unauthorized`]. |
//! | `tick_time` | 2s | the ensemble's `tickTime`. Used for lock leases (see "Locks") and [`Capabilities::session_slack`]; overstating it is safe, understating it is not. |
//! | `container_check_interval` | 60s | the server's `znode.container.checkIntervalMs`: how often it reaps expired TTL znodes and empty containers. Only used for [`Capabilities::ttl_slack`]. |
//!
//! **No TLS.** The TLS options of the other backends (`tls=true`,
//! `ca_file`, `cert_file`, `key_file`) are refused with
//! [`Error::InvalidUrl`]; connections are plain TCP. ZooKeeper 3.8 can serve
//! TLS on a `secureClientPort` (Netty connection factory, PEM key and trust
//! stores) and the zookeeper-client crate has a `tls` feature (PEM CA and
//! client identity), but that feature compiles rustls with its default
//! `aws-lc-rs` provider next to the `ring` one the other backends use. With
//! two providers compiled in, rustls no longer picks one by itself, so every
//! application using `rediss://` would have to install one first, and the
//! build gains a large C library.
//!
//! # Keys and znodes
//! A key is a *leaf* znode holding the raw value. The segments before the
//! last one are *directory* znodes, created on demand as containers, which
//! the server deletes once their last child is gone. Names tell them apart,
//! so a parent is never mistaken for a key, a key and keys below it coexist,
//! an ephemeral key can have keys below it, and an empty value is still a
//! key:
//!
//! | znode | name | key `app/db/url` in `zk://h/ns` |
//! |-------|------|---------------------------------|
//! | directory of segment `s` | `esc(s)%` | `/ns%/app%/db%` |
//! | leaf of a key ending in `s` | `esc(s)` | `/ns%/app%/db%/url` |
//! | lock queue of that key | `esc(s)%lock` | `/ns%/app%/db%/url%lock` |
//!
//! `esc` percent-encodes (`%XX` of the UTF-8 bytes) `%` itself and the
//! characters ZooKeeper refuses in paths: everything outside the Basic
//! Multilingual Plane (emoji, …), U+E000–U+F8FF and U+FFF0–U+FFFF. So every
//! anykv key round-trips, and a bare `%` only ever ends a directory name or
//! starts `%lock`. A root-level key named `zookeeper` is stored as
//! `%7Aookeeper`. The namespace is mapped like the rest of the key, so
//! `zk://h/ns` key `x` and `zk://h` key `ns/x` are the same znode, as on every
//! backend. `get`, `exists`, `list`, `watch` and `watch_tree` only ever report
//! leaves; `delete` removes the leaf and leaves the directories to the server.
//!
//! # Versions and compare-and-swap
//! `last_index` is the leaf's `mzxid`, the zxid of the transaction that last
//! wrote it. Zxids only grow, so a pair read before a delete never matches
//! the re-created key, although ZooKeeper's own data version restarts at 0.
//! ZooKeeper compares only data versions, so a compare-and-swap reads the
//! stat, compares the `mzxid` and then writes with the data version it saw,
//! in a `multi` that also checks the parent directory's data version. Every
//! creation of a leaf bumps that version in the same transaction, so a
//! delete + re-create between the read and the write makes the `multi` fail
//! (it is then retried from the read). Costs: `get` one `GetData`, `put` of an
//! existing key one `SetData`, `put` of a new key one `multi`, a
//! compare-and-swap two round trips.
//!
//! # Expiry
//! * **TTL** keys are TTL znodes, which need the server started with
//!   `zookeeper.extendedTypesEnabled=true`; otherwise a TTL write fails with
//!   [`Error::Unsupported`] saying so. The server deletes a TTL znode that was
//!   not written for its TTL when its container manager next runs. A TTL
//!   write always re-creates the leaf (in one `multi`), which restarts the
//!   clock with the new TTL. ZooKeeper does not show a znode's TTL-ness in its
//!   stat, so anykv creates and deletes a child in the creating transaction:
//!   a TTL leaf has `cversion` 2, every other leaf 0, and a plain `put` on a
//!   TTL key knows to make it permanent. The TTL lives on the znode itself:
//!   a TTL write creates no session or other server object, so rewriting a
//!   key (a heartbeat) leaves exactly its one leaf.
//! * **Ephemeral** keys are ephemeral znodes of the handle's session. A `put`
//!   that asks for a different lifetime than the existing leaf has replaces
//!   the leaf in one `multi` (delete + create), so readers never see it
//!   missing.
//!
//! # Watches
//! `watch` adds a persistent watch on the leaf, `watch_tree` a persistent
//! recursive watch on the prefix's directory (ZooKeeper ≥ 3.6); both read
//! after each batch of events and never re-arm, so no change falls between two watches. The
//! streams work when polled (no task); dropping one removes its watch from
//! the server. When the connection drops the stream yields one transient
//! [`Error::Unavailable`]; when it comes back the stream adds its watch again
//! (the server forgets a connection's watches, and `zookeeper-client` 0.11
//! re-registers only one-shot ones) and re-reads, so the final state is never
//! missed. After a session expiry it moves to the handle's new session.
//! States older than one already delivered are skipped.
//!
//! A tree change costs one event and one `getData` of the changed leaf:
//! `watch_tree_changes` reads only the znodes its events name, and
//! `watch_tree` keeps its listing client-side over that stream. The prefix
//! is listed whole (level by level) only to start and after the watch was
//! added again, when events may have been lost; see the `watch` module.
//!
//! # Locks
//! The ZooKeeper recipe: each attempt creates an ephemeral sequential znode
//! in the key's lock queue; the lowest holds the lock, and every waiter
//! watches only its predecessor, so a release wakes one waiter. The holder
//! then writes its [`LockOptions::value`] to the lock key as an ephemeral
//! leaf, in a `multi` that checks its queue znode still exists; `get(key)`
//! shows the holder, and the fencing token is that write's zxid (the key's
//! `last_index`), which grows with every holder even when the queue container
//! is reaped and sequence numbers restart. `lock()` is cancel-safe: a
//! dropped call deletes whatever it created (the queue znode is named with a
//! token unique to the attempt, so even a `create` whose reply was lost is
//! found), and `unlock()` retries its delete through reconnects until it is
//! confirmed or the session ends, even when its caller gave up. A lost
//! holder removes its znodes so the next waiter proceeds.
//! [`LockOptions::ttl`] is ignored: locks live as long as the session.
//!
//! `lost()` fires when the queue znode or the key is deleted or the key
//! overwritten, when the session expires or the store closes, when the
//! connection stays down for half the negotiated session timeout, and when
//! the *leader* has not confirmed the session for the lock's lease. A server
//! cut off from its quorum goes on answering its clients' pings for
//! `syncLimit × tickTime` before it drops them, while the leader expires the
//! session `session_timeout` after the last touch of it that reached the
//! leader — so a connection that looks fine proves nothing. The holder
//! therefore sends a `sync` every quarter lease (a follower must forward it
//! to the leader) and counts the lease from the send of the last one
//! answered (the first from the acquiring write):
//!
//! ```text
//! lease = T − max(2·tick, tick/2 + T/5) − (100 ms + T/50)
//! ```
//!
//! with `T` the negotiated session timeout and `tick` = `tick_time`.
//! `tick/2 + T/5` bounds how long before a sync's send the leader may last have heard
//! of the session through a follower (followers report their clients'
//! session touches every `tick/2`; a client sends at least every `T/5`);
//! `2·tick` bounds how long a deposed leader, not knowing yet, may go on
//! answering syncs after the majority elected a new leader (which starts
//! every session's clock afresh). `syncLimit` does not enter: the lease does
//! not wait for the cut-off server to notice.
//!
//! **The relation to keep:** `lease ≥ T/4`, i.e. roughly `T ≥ 3 × tickTime`
//! (exactly `T ≥ (2·tick + 0.1 s) / 0.73` when `2·tick` dominates): 10 s
//! sessions with the default `tickTime` of 2 s (lease 5.7 s), 4 s sessions
//! with a `tickTime` of 200 ms (lease 2.9 s). Tell the store the ensemble's
//! `tickTime` with `tick_time` if it is not 2 s. With a shorter session the
//! lease falls back to `T/2` and a warning is logged: `lost()` may then fire
//! after a partitioned holder's lock was handed on. A standalone server has
//! no partitions to fear; there any lease works. The cost is one `sync`
//! round trip per held lock every quarter lease.
//!
//! # Sessions
//! The handle owns one ZooKeeper session. `close()` closes it and the server
//! deletes its ephemeral keys and lock znodes at once; a crashed process's go
//! when its session expires. Expiry ends a ZooKeeper session for good, but
//! not the store: the next operation runs on a new session. What the old
//! session owned is gone and is not recreated: its lock guards report
//! `lost()` and a warning is logged. Operations issued while the connection
//! is down wait for the client to reconnect, or fail with a transient error
//! once the session is given up.
//!
//! # Capabilities
//! * `max_value_size` = 1,000,000 bytes: the server's default `jute.maxbuffer`
//!   of 1 MiB bounds a whole request, paths and headers included.
//! * `min_ttl` = 1 ms (TTLs travel in milliseconds); `ttl_slack` =
//!   `container_check_interval` + 1 s, as TTL znodes are reaped only when the
//!   container manager runs.
//! * `session_ttl` = the negotiated session timeout; `session_slack` =
//!   `tick_time` + 1 s: the server expires sessions on `tickTime`
//!   boundaries, plus a second of margin. A change of leader restarts the
//!   clock of every session on the new leader, so across one a dead
//!   session's keys may last up to the election time longer.
//! * `lock_ttl_per_lock` = false.
//!
//! # Limits
//! * Keys directly under the ZooKeeper root (a URL without a path) are not
//!   guarded against a delete + re-create between the read and the write of a
//!   compare-and-swap, since anykv never writes to `/`. Nor is a directory
//!   that is reaped and re-created within that window. Use a namespace.
//! * The namespace belongs to anykv: znodes in it that anykv did not create
//!   but whose names are valid escaped segments are read as keys.
//! * `list` and `watch_tree` read one tree level per request, not as one
//!   snapshot.

mod builder;
pub use self::builder::ZookeeperBuilder;
pub(crate) mod config;
mod error;
mod kv;
mod lock;
mod path;
mod session;
mod watch;

use crate::key::Namespace;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::lock::Lock;
use crate::request::{Backend, Key};
use crate::store::Store;
use crate::types::{Capabilities, KvPair, LockOptions, PutOptions, TreeWatchStream, WatchStream};
use crate::url::StoreUrl;

use self::config::Config;
use self::kv::Mode;
use self::path::KeyPaths;
use self::session::{Fail, Inner};

/// The backend's name in errors and [`Capabilities::backend`].
pub(crate) const BACKEND: &str = "zookeeper";

/// Largest value accepted, in bytes (see the module docs).
pub const MAX_VALUE_SIZE: usize = 1_000_000;

/// Longest TTL a TTL znode can carry (40 bits of milliseconds).
const MAX_TTL: Duration = Duration::from_millis(0xFF_FFFF_FFFF);

/// Added to one `tickTime` for [`Capabilities::session_slack`].
const SESSION_SLACK_MARGIN: Duration = Duration::from_secs(1);

/// A store on a ZooKeeper ensemble. Cheap to clone; clones share the session.
///
/// Usually opened through [`crate::open`] with a `zk://` URL; see the
/// [module docs](self) for the URL and how keys map to znodes.
#[derive(Clone)]
pub struct ZookeeperStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ZookeeperStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZookeeperStore")
            .field("url", &self.inner.url())
            .finish()
    }
}

/// Opens a store from a parsed URL of this backend's scheme.
pub(crate) async fn open(url: StoreUrl) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(ZookeeperStore::from_url(url).await?))
}

impl ZookeeperStore {
    /// Opens `zk://…` (or `zookeeper://…`): connects a session, failing with
    /// a transient error if no server answers within `connect_timeout`.
    pub async fn open(url: &str) -> Result<Self> {
        Self::from_url(StoreUrl::parse(url)?).await
    }

    /// Opens from a parsed URL.
    pub async fn from_url(url: StoreUrl) -> Result<Self> {
        url.expect_scheme(&["zk", "zookeeper"])?;
        let cfg = Config::from_url(url)?;
        Ok(ZookeeperStore {
            inner: Inner::open(cfg).await?,
        })
    }

    /// The znode paths of a key.
    fn paths(&self, key: Key) -> (String, KeyPaths) {
        let paths = KeyPaths::within(self.inner.cfg.namespace.prefix(), &key.user);
        (key.user, paths)
    }
}

impl Backend for ZookeeperStore {
    const NAME: &'static str = BACKEND;

    fn namespace(&self) -> &Namespace {
        &self.inner.cfg.namespace
    }

    fn check_open(&self) -> Result<()> {
        crate::request::check_open(&self.inner.closed, &self.inner.cfg.redacted)
    }

    async fn put(&self, key: Key, value: Bytes, options: PutOptions) -> Result<KvPair> {
        let (user, paths) = self.paths(key);
        let mode = Mode::of(&options);
        let acls = self.inner.acls;
        let stat = self
            .inner
            .run(&user, |s| {
                let (paths, value) = (&paths, &value);
                async move { kv::put(&s, paths, value, mode, acls).await }
            })
            .await?;
        Ok(kv::pair(user, value, &stat))
    }

    async fn put_if(
        &self,
        key: Key,
        value: Bytes,
        previous: Option<u64>,
        options: PutOptions,
    ) -> Result<KvPair> {
        let (user, paths) = self.paths(key);
        let mode = Mode::of(&options);
        let acls = self.inner.acls;

        let stat = self
            .inner
            .run(&user, |s| {
                let (user, paths, value) = (&user, &paths, &value);
                async move {
                    match previous {
                        None => match kv::create(&s, paths, value, mode, acls).await {
                            Err(Fail::Zk(zk::Error::NodeExists)) => Err(Error::exists(user).into()),
                            other => other,
                        },
                        Some(index) => {
                            kv::compare_and_put(&s, user, paths, value, mode, index, acls).await
                        }
                    }
                }
            })
            .await?;
        Ok(kv::pair(user, value, &stat))
    }

    async fn delete(&self, key: Key) -> Result<()> {
        let (user, paths) = self.paths(key);
        self.inner
            .run(&user, |s| {
                let leaf = &paths.leaf;
                async move {
                    match s.client.delete(leaf, None).await {
                        Ok(()) | Err(zk::Error::NoNode) => Ok(()),
                        Err(e) => Err(Fail::Zk(e)),
                    }
                }
            })
            .await
    }

    async fn delete_if(&self, key: Key, previous: u64) -> Result<()> {
        let (user, paths) = self.paths(key);
        let index = previous;
        self.inner
            .run(&user, |s| {
                let (user, paths) = (&user, &paths);
                async move { kv::compare_and_delete(&s, user, paths, index).await }
            })
            .await
    }

    async fn get(&self, key: Key) -> Result<Option<KvPair>> {
        let (user, paths) = self.paths(key);
        let read = self
            .inner
            .run(&user, |s| {
                let leaf = &paths.leaf;
                async move { Ok(s.client.get_data(leaf).await?) }
            })
            .await;
        match read {
            Ok((data, stat)) => Ok(Some(kv::pair(user, Bytes::from(data), &stat))),
            Err(Error::KeyNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: Key) -> Result<Vec<KvPair>> {
        let Key { user, full } = prefix;
        let namespace = &self.inner.cfg.namespace;
        self.inner
            .run(&user, |s| {
                let full = &full;
                async move { kv::list(&s, namespace, full).await }
            })
            .await
    }

    async fn delete_tree(&self, prefix: Key) -> Result<()> {
        let Key { user, full } = prefix;
        // The namespace root itself is not a key of this handle.
        let (key, below) = if user.is_empty() {
            (None, path::dir_path(&full))
        } else {
            let paths = KeyPaths::new(&full);
            let below = paths.below();
            (Some(paths), below)
        };
        self.inner
            .run(&user, |s| {
                let (key, below) = (key.as_ref(), &below);
                async move { kv::delete_tree(&s, key, below).await }
            })
            .await
    }

    async fn watch(&self, key: Key) -> Result<WatchStream> {
        let (user, paths) = self.paths(key);
        Ok(watch::watch_key(&self.inner, user, paths.leaf))
    }

    async fn watch_tree(&self, prefix: Key) -> Result<TreeWatchStream> {
        let Key { user, full } = prefix;
        let dir = path::dir_path(&full);
        let changes = watch::watch_tree_changes(&self.inner, user, full, dir);
        Ok(crate::changes::listings_from_changes(changes))
    }

    async fn watch_tree_changes(&self, prefix: Key) -> Result<crate::types::TreeChangeStream> {
        let Key { user, full } = prefix;
        let dir = path::dir_path(&full);
        Ok(watch::watch_tree_changes(&self.inner, user, full, dir))
    }

    async fn new_lock(&self, key: Key, options: LockOptions) -> Result<Lock> {
        let (user, paths) = self.paths(key);
        let backend = lock::ZkLock::new(self.inner.clone(), user.clone(), paths, options.value);
        Ok(Lock::new(user, Arc::new(backend)))
    }

    fn session(&self) -> crate::session::Session {
        self.inner.view()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_value_size: MAX_VALUE_SIZE,
            min_ttl: Duration::from_millis(1),
            max_ttl: MAX_TTL,
            ttl_slack: self.inner.cfg.container_check_interval + Duration::from_secs(1),
            session_ttl: self.inner.session_timeout(),
            session_slack: self.inner.cfg.tick_time + SESSION_SLACK_MARGIN,
            shared_between_processes: true,
            lock_ttl_per_lock: false,
            ..Capabilities::new(BACKEND)
        }
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await;
        Ok(())
    }

    async fn server_time(&self) -> Result<crate::types::ServerTime> {
        let acls = self.inner.acls;
        crate::request::timed_reading(Duration::from_millis(1), async {
            let stat = self
                .inner
                .run(CLOCK_NODE, |s| async move { touch_clock(&s, acls).await })
                .await?;
            u64::try_from(stat.mtime)
                .ok()
                .and_then(|ms| std::time::UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
                .ok_or_else(|| Error::Backend {
                    backend: BACKEND,
                    target: CLOCK_NODE.to_owned(),
                    source: format!("the server answered an mtime out of range: {}", stat.mtime)
                        .into(),
                })
        })
        .await
    }
}

/// The znode whose mtime [`crate::Store::server_time`] reads: at the root,
/// and not a canonical key name (a bare `%` not followed by two hex digits),
/// so no namespace ever lists or watches it.
const CLOCK_NODE: &str = "/anykv%clock";

/// Writes [`CLOCK_NODE`] (creating it the first time) and returns its stat,
/// whose `mtime` is the server's clock when it applied the write.
async fn touch_clock(
    session: &session::Session,
    acls: zk::Acls<'static>,
) -> std::result::Result<zk::Stat, Fail> {
    match session.client.set_data(CLOCK_NODE, &[], None).await {
        Err(zk::Error::NoNode) => {}
        other => return other.map_err(Fail::Zk),
    }
    let create = zk::CreateMode::Persistent.with_acls(acls);
    match session.client.create(CLOCK_NODE, &[], &create).await {
        Ok((stat, _)) => Ok(stat),
        Err(zk::Error::NodeExists) => session
            .client
            .set_data(CLOCK_NODE, &[], None)
            .await
            .map_err(Fail::Zk),
        Err(e) => Err(Fail::Zk(e)),
    }
}

crate::request::impl_store!(ZookeeperStore);
