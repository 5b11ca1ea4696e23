//! The ZooKeeper backend (cargo feature `zookeeper`), on the
//! [`zookeeper-client`](https://docs.rs/zookeeper-client) crate.
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
//! | `connect_timeout` | 5s | how long opening a session may take (at `open` and after an expiry) |
//! | `username`, `password` | — | `digest` authentication, also accepted as `user:password@`. Znodes the handle creates then get the ACL `auth` (creator) with all permissions, so other identities cannot read or change them. |
//! | `container_check_interval` | 60s | the server's `znode.container.checkIntervalMs`: how often it reaps expired TTL znodes and empty containers. Only used for [`Capabilities::ttl_slack`]. |
//!
//! # How the store maps to znodes
//! * **Keys** are *leaf* znodes holding the raw value; the segments before
//!   the last are *directory* znodes, created on demand as containers that the
//!   server removes once empty. Names mark directories (`a%`), so a parent is
//!   never mistaken for a key, a key and keys below it coexist (`/a` and
//!   `/a%/b`), and an empty value is still a key. Characters ZooKeeper does
//!   not accept are percent-escaped. See [`path`] for the exact layout.
//!   `delete` removes the leaf only; directories go by themselves.
//! * **Versions**: `last_index` is the leaf's `mzxid`. Compare-and-swap reads
//!   the stat, compares the `mzxid` and writes with the data version, guarded
//!   against a delete + re-create in between by the parent directory's
//!   version (see [`kv`]). A CAS costs two round trips, a plain `put` of an
//!   existing key one `SetData`, a `get` one `GetData`.
//! * **TTL** keys are TTL znodes. They need the server started with
//!   `zookeeper.extendedTypesEnabled=true`; otherwise TTL writes fail with
//!   [`Error::Unsupported`] saying so. The server deletes a TTL znode once it
//!   was not written for the TTL, when its container manager next runs.
//! * **Ephemeral** keys are ephemeral znodes of the handle's session.
//! * **Watches** use persistent (recursive, for `watch_tree`) watches and
//!   re-read after each batch of events (see [`watch`]).
//! * **Locks** use the sequential-znode recipe; the holder's value is written
//!   to the lock key and the fencing token is that write's zxid (see
//!   [`lock`]).
//!
//! # Sessions
//! The handle owns one ZooKeeper session. `close()` closes it, and the server
//! deletes its ephemeral keys and lock znodes at once. A crashed process's
//! session expires after the session timeout. Expiry ends a ZooKeeper session
//! for good but not the store: the next operation opens a new session. The
//! old session's ephemeral keys and locks are gone (its lock guards report
//! `lost()`, a warning is logged); they are not recreated.
//!
//! # Capabilities
//! * `max_value_size` = 1,000,000 bytes: the server's default `jute.maxbuffer`
//!   (1 MiB) bounds a whole request, paths and headers included.
//! * `min_ttl` = 1 ms (TTLs are sent in milliseconds); `ttl_slack` =
//!   `container_check_interval` + 1 s, since TTL znodes are reaped only when
//!   the container manager runs.
//! * `session_ttl` = the negotiated session timeout; `session_slack` = 3 s:
//!   the server expires sessions on `tickTime` boundaries (2 s by default),
//!   plus a second of margin.
//! * `lock_ttl_per_lock` = false: locks live as long as the session.
//!
//! # Limits
//! * Keys directly under the ZooKeeper root (a URL without a path) are not
//!   guarded against a delete + re-create between the read and the write of a
//!   compare-and-swap, because anykv never writes to `/`. Use a namespace.
//! * The namespace is owned by anykv: znodes in it that anykv did not create
//!   and whose names are valid escaped segments are read as keys.
//! * `list` and `watch_tree` read level by level (one multi-read per tree
//!   level), not as one snapshot.

pub mod path;

mod config;
mod error;
mod kv;
mod lock;
mod session;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::lock::Lock;
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

/// How long after a session timeout the server may still show the session's
/// ephemeral znodes (one `tickTime` of 2 s, plus a margin).
const SESSION_SLACK: Duration = Duration::from_secs(3);

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
        let cfg = Config::from_url(url)?;
        Ok(ZookeeperStore {
            inner: Inner::open(cfg).await?,
        })
    }

    fn key(&self, key: &str) -> Result<(String, KeyPaths)> {
        let user = crate::key::normalize_key(key)?;
        let paths = KeyPaths::within(self.inner.cfg.namespace.prefix(), &user);
        Ok((user, paths))
    }

    fn check_write(&self, user: &str, value: &[u8], options: &PutOptions) -> Result<Mode> {
        self.capabilities().check_value(user, value)?;
        options.validate(user)?;
        let mode = Mode::of(options);
        if let Mode::Ttl(ttl) = mode {
            if ttl > MAX_TTL {
                return Err(Error::InvalidArgument {
                    key: user.to_owned(),
                    reason: format!("ZooKeeper TTLs are at most {MAX_TTL:?}"),
                });
            }
        }
        Ok(mode)
    }
}

#[async_trait]
impl Store for ZookeeperStore {
    async fn get(&self, key: &str) -> Result<KvPair> {
        let (user, paths) = self.key(key)?;
        let (data, stat) = self
            .inner
            .run(&user, |s| {
                let leaf = &paths.leaf;
                async move { Ok(s.client.get_data(leaf).await?) }
            })
            .await?;
        Ok(kv::pair(user, Bytes::from(data), &stat))
    }

    async fn put(&self, key: &str, value: Bytes, options: PutOptions) -> Result<KvPair> {
        let (user, paths) = self.key(key)?;
        let mode = self.check_write(&user, &value, &options)?;
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

    async fn delete(&self, key: &str) -> Result<()> {
        let (user, paths) = self.key(key)?;
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

    async fn exists(&self, key: &str) -> Result<bool> {
        let (user, paths) = self.key(key)?;
        self.inner
            .run(&user, |s| {
                let leaf = &paths.leaf;
                async move { Ok(s.client.check_stat(leaf).await?.is_some()) }
            })
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KvPair>> {
        let (user, full) = self.inner.cfg.namespace.prefix_of(prefix)?;
        let namespace = &self.inner.cfg.namespace;
        self.inner
            .run(&user, |s| {
                let full = &full;
                async move { kv::list(&s, namespace, full).await }
            })
            .await
    }

    async fn delete_tree(&self, prefix: &str) -> Result<()> {
        let (user, full) = self.inner.cfg.namespace.prefix_of(prefix)?;
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

    async fn atomic_put(
        &self,
        key: &str,
        value: Bytes,
        previous: Option<&KvPair>,
        options: PutOptions,
    ) -> Result<KvPair> {
        let (user, paths) = self.key(key)?;
        let mode = self.check_write(&user, &value, &options)?;
        let acls = self.inner.acls;
        let previous = previous.map(|p| p.last_index);
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

    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        let (user, paths) = self.key(key)?;
        let index = previous.last_index;
        self.inner
            .run(&user, |s| {
                let (user, paths) = (&user, &paths);
                async move { kv::compare_and_delete(&s, user, paths, index).await }
            })
            .await
    }

    async fn watch(&self, key: &str) -> Result<WatchStream> {
        let (user, paths) = self.key(key)?;
        if self.inner.closed.is_cancelled() {
            return Err(self.inner.closed_error());
        }
        Ok(watch::watch_key(&self.inner, user, paths.leaf))
    }

    async fn watch_tree(&self, prefix: &str) -> Result<TreeWatchStream> {
        let (user, full) = self.inner.cfg.namespace.prefix_of(prefix)?;
        if self.inner.closed.is_cancelled() {
            return Err(self.inner.closed_error());
        }
        let dir = path::dir_path(&full);
        Ok(watch::watch_tree(&self.inner, user, full, dir))
    }

    async fn new_lock(&self, key: &str, options: LockOptions) -> Result<Lock> {
        let (user, paths) = self.key(key)?;
        self.capabilities().check_value(&user, &options.value)?;
        if self.inner.closed.is_cancelled() {
            return Err(self.inner.closed_error());
        }
        let backend = lock::ZkLock::new(self.inner.clone(), user.clone(), paths, options.value);
        Ok(Lock::new(user, Arc::new(backend)))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_value_size: MAX_VALUE_SIZE,
            min_ttl: Duration::from_millis(1),
            ttl_slack: self.inner.cfg.container_check_interval + Duration::from_secs(1),
            session_ttl: self.inner.session_timeout(),
            session_slack: SESSION_SLACK,
            shared_between_processes: true,
            lock_ttl_per_lock: false,
            ..Capabilities::new(BACKEND)
        }
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await;
        Ok(())
    }
}
