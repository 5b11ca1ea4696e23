//! The [`Store`] trait that backends implement, and [`StoreExt`], the
//! conveniences every store gets on top of it.
//!
//! The split follows the rule that adding a convenience must never touch a
//! backend: [`Store`] is small and object-safe (what `anykv::open` returns is
//! an `Arc<dyn Store>`), and everything that can be written in terms of it —
//! the libkv names `get`, `put`, `atomic_put`, `delete`, `atomic_delete`,
//! `exists`, values as `impl Into<Bytes>`, the compare-and-swap loop
//! [`StoreExt::update`] — lives in [`StoreExt`], implemented once for every
//! `S: Store + ?Sized`. `use anykv::prelude::*` brings both into scope.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::lock::Lock;
use crate::session::Session;
use crate::types::{
    Capabilities, DeleteOptions, KvPair, LockOptions, PutMode, PutOptions, ServerTime,
    TreeChangeStream, TreeWatchStream, WatchStream,
};

/// An async key-value store with versions, compare-and-swap, expiry, watches
/// and locks: the trait a backend implements.
///
/// Users call these methods and the conveniences of [`StoreExt`]. Every
/// method takes `&self` and is cancel-safe: dropping a future mid-flight
/// leaves the store consistent (a write either happened or did not). Keys are
/// validated before any I/O (see [`crate::key`]); all keys are relative to the
/// handle's namespace (the URL path).
///
/// # Versions
/// [`KvPair::last_index`] strictly increases with every change of a key and
/// never repeats, even across delete and re-create. It is what
/// [`PutMode::Update`] and [`DeleteOptions::if_version`] compare, so a pair
/// read before a delete never matches the re-created key (no ABA).
///
/// # Sessions
/// Each handle owns one session ([`Store::session`]). [`PutOptions::ephemeral`]
/// keys and the handle's locks live as long as it: [`Store::close`] removes
/// them at once, and a crashed process's keys go within the session TTL
/// ([`Capabilities::session_ttl`], URL option `session_ttl`). When a session
/// is lost and the handle opens a new one, the old session's ephemeral keys
/// are gone; [`Session::replaced`] says so, and the owner writes them again.
///
/// ```
/// # #[tokio::main] async fn main() -> anykv::Result<()> {
/// use anykv::prelude::*;
/// let store = anykv::open("memory://").await?;
/// let v1 = store.put("app/config", "on", PutOptions::new()).await?;
/// assert_eq!(store.get("app/config").await?.value, "on");
/// // Compare-and-swap against the version we read.
/// let v2 = store.atomic_put("app/config", "off", Some(&v1), PutOptions::new()).await?;
/// assert!(v2.last_index > v1.last_index);
/// assert!(store.atomic_put("app/config", "x", Some(&v1), PutOptions::new()).await.is_err());
/// // The same write by version number.
/// let v3 = store
///     .put("app/config", "auto", PutOptions::new().with_mode(PutMode::Update(v2.last_index)))
///     .await?;
/// assert_eq!(store.get_opt("app/config").await?, Some(v3));
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Store: Send + Sync + Debug {
    /// Reads a key; `None` if it does not exist.
    async fn get_opt(&self, key: &str) -> Result<Option<KvPair>>;

    /// Writes a key as [`PutOptions::mode`] says and returns the new pair:
    ///
    /// * [`PutMode::Overwrite`]: unconditionally (upsert).
    /// * [`PutMode::Create`]: only if absent; [`Error::KeyExists`] if present.
    /// * [`PutMode::Update`]`(v)`: only if the key's current version is `v`;
    ///   [`Error::KeyModified`] on mismatch, [`Error::KeyNotFound`] if the
    ///   key is gone.
    async fn put_opts(&self, key: &str, value: Bytes, options: PutOptions) -> Result<KvPair>;

    /// Deletes a key. Without [`DeleteOptions::if_version`], deleting a
    /// missing key is `Ok`; with it, the key is deleted only if its version
    /// matches, with the errors of [`PutMode::Update`].
    async fn delete_opts(&self, key: &str, options: DeleteOptions) -> Result<()>;

    /// Every key strictly below `prefix/`, recursively, sorted by key. An
    /// empty result is `Ok(vec![])`. `""` lists the whole namespace.
    async fn list(&self, prefix: &str) -> Result<Vec<KvPair>>;

    /// Deletes `prefix` itself and everything below it. `""` empties the
    /// namespace.
    async fn delete_tree(&self, prefix: &str) -> Result<()>;

    /// Watches one key. The first item is the current state (`None` =
    /// absent), then every change; a deletion is `None`.
    ///
    /// Under load intermediate states may be coalesced, but the latest state
    /// is always delivered and `last_index` never goes backwards. Transient
    /// failures are retried internally and reported as an `Err` whose
    /// [`crate::Error::is_transient`] is true; the stream then continues. A
    /// terminal error (closed store, auth) is the last item. Dropping the
    /// stream cancels the watch.
    async fn watch(&self, key: &str) -> Result<WatchStream>;

    /// Watches every key below `prefix`; each item is the full sorted listing,
    /// as [`Store::list`] returns it, with the same rules as [`Store::watch`].
    /// A [`crate::Listing`] shares its pairs with the watch (etcd, ZooKeeper
    /// and Redis apply each change to the pairs they hold, so a change costs
    /// work in proportion to the change, not the prefix): drop it or take
    /// [`crate::Listing::into_vec`] before waiting for the next one.
    async fn watch_tree(&self, prefix: &str) -> Result<TreeWatchStream>;

    /// Watches every key below `prefix` as changes: first a
    /// [`TreeChange::Snapshot`] of the listing, then one
    /// [`TreeChange::Changed`] per key written or deleted, in the order the
    /// store applied them (changes to one key in a burst may be coalesced to
    /// its latest state, as in [`Store::watch`]). A transient failure is an
    /// `Err` item ([`crate::Error::is_transient`]) and the stream goes on
    /// with nothing missed: if it cannot tell what changed meanwhile, it
    /// sends a new `Snapshot`. A terminal error is the last item. Applying
    /// the items in order ([`TreeChange::apply`]) gives what
    /// [`Store::list`] returns.
    ///
    /// The provided implementation derives the changes from
    /// [`Store::watch_tree`]'s listings, so it costs what that costs; a
    /// backend that can report single changes overrides it.
    async fn watch_tree_changes(&self, prefix: &str) -> Result<TreeChangeStream> {
        Ok(crate::changes::from_listings(
            self.watch_tree(prefix).await?,
        ))
    }

    /// A lock on `key`. Nothing is acquired until [`Lock::lock`] or
    /// [`Lock::try_lock`].
    async fn new_lock(&self, key: &str, options: LockOptions) -> Result<Lock>;

    /// What this backend can do and how precisely.
    fn capabilities(&self) -> Capabilities;

    /// The handle's session: which one is current, and a signal when it is
    /// lost and replaced (its ephemeral keys and locks then gone).
    fn session(&self) -> Session;

    /// Ends the handle's session: its ephemeral keys and locks are removed at
    /// once, its watches end with [`crate::Error::Closed`], background tasks
    /// stop, and later calls fail with `Closed`. Idempotent.
    async fn close(&self) -> Result<()>;

    /// Reads the server's wall clock once, with the round trip it took and
    /// the resolution of the answer, so that callers can tell how far the
    /// local clock is from the store's (see `anykv-recipes`' `StoreClock`).
    ///
    /// Provided: a backend without a server clock need not implement it, and
    /// the default answers [`Error::Unsupported`]. The built-in backends:
    ///
    /// * Redis: `TIME`, microseconds.
    /// * ZooKeeper: writes an empty znode outside every namespace
    ///   (`/anykv%clock`) and reads its `mtime`, milliseconds (the leader's
    ///   clock when it applied the write); needs the right to create and
    ///   write that znode at the root.
    /// * Consul: the agent's HTTP `Date` header on a status request, one
    ///   second: enough to catch a clock that is off by seconds, no finer.
    /// * memory: the local clock (the store is its own server; offset 0).
    /// * etcd: [`Error::Unsupported`]; its API exposes no server time
    ///   (revisions and lease TTLs are counted, not dated).
    async fn server_time(&self) -> Result<ServerTime> {
        Err(Error::Unsupported {
            operation: "reading the server clock",
            backend: "anykv",
            hint: Some("this backend does not implement Store::server_time".into()),
        })
    }
}

/// How many times [`StoreExt::update`] re-reads and retries after losing a
/// race before it gives up with [`Error::KeyModified`].
pub const UPDATE_ATTEMPTS: usize = 64;

/// The conveniences every [`Store`] has, written once in terms of it (the
/// libkv names among them). Implemented for every `S: Store + ?Sized`; it
/// cannot be implemented by hand, so adding a method here is never a
/// breaking change for a backend.
pub trait StoreExt: Store {
    /// Reads a key; a missing key is [`Error::KeyNotFound`].
    fn get<'a>(&'a self, key: &'a str) -> impl Future<Output = Result<KvPair>> + Send + 'a {
        async move {
            match self.get_opt(key).await? {
                Some(pair) => Ok(pair),
                None => Err(Error::not_found(key)),
            }
        }
    }

    /// True if the key exists.
    fn exists<'a>(&'a self, key: &'a str) -> impl Future<Output = Result<bool>> + Send + 'a {
        async move { Ok(self.get_opt(key).await?.is_some()) }
    }

    /// Writes a key, as [`PutOptions::mode`] says (by default unconditionally);
    /// see [`Store::put_opts`].
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: impl Into<Bytes>,
        options: PutOptions,
    ) -> impl Future<Output = Result<KvPair>> + Send + 'a {
        let value = value.into();
        self.put_opts(key, value, options)
    }

    /// Creates a key that must not exist yet ([`Error::KeyExists`] if it does).
    fn create<'a>(
        &'a self,
        key: &'a str,
        value: impl Into<Bytes>,
        options: PutOptions,
    ) -> impl Future<Output = Result<KvPair>> + Send + 'a {
        let value = value.into();
        self.put_opts(key, value, options.with_mode(PutMode::Create))
    }

    /// Compare-and-swap write, in libkv's shape.
    ///
    /// * `previous = None`: create only; [`Error::KeyExists`] if present.
    /// * `previous = Some(p)`: only if the key's current version equals
    ///   `p.last_index`; [`Error::KeyModified`] on mismatch,
    ///   [`Error::KeyNotFound`] if the key is gone.
    fn atomic_put<'a>(
        &'a self,
        key: &'a str,
        value: impl Into<Bytes>,
        previous: Option<&KvPair>,
        options: PutOptions,
    ) -> impl Future<Output = Result<KvPair>> + Send + 'a {
        let mode = match previous {
            None => PutMode::Create,
            Some(p) => PutMode::Update(p.last_index),
        };
        let value = value.into();
        self.put_opts(key, value, options.with_mode(mode))
    }

    /// Deletes a key. Deleting a missing key is `Ok`.
    fn delete<'a>(&'a self, key: &'a str) -> impl Future<Output = Result<()>> + Send + 'a {
        self.delete_opts(key, DeleteOptions::new())
    }

    /// Deletes the key only if its version equals `previous.last_index`, with
    /// the errors of [`StoreExt::atomic_put`].
    fn atomic_delete<'a>(
        &'a self,
        key: &'a str,
        previous: &KvPair,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        self.delete_opts(key, DeleteOptions::new().if_version(previous.last_index))
    }

    /// Read-modify-write with compare-and-swap: `f` gets the current pair
    /// (`None` if absent) and returns the new value; the write succeeds only
    /// if nobody changed the key in between, else the key is read again and
    /// `f` called again (up to [`UPDATE_ATTEMPTS`] times, with a short
    /// jittered pause after each lost race). Returns the written pair, or
    /// [`Error::KeyModified`] if every attempt lost its race. Other errors
    /// are returned at once.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anykv::Result<()> {
    /// use anykv::prelude::*;
    /// let store = anykv::open("memory://").await?;
    /// let bump = |current: Option<&KvPair>| {
    ///     let n: u64 = current
    ///         .and_then(|p| std::str::from_utf8(&p.value).ok()?.parse().ok())
    ///         .unwrap_or(0);
    ///     (n + 1).to_string()
    /// };
    /// store.update("counter", bump).await?;
    /// assert_eq!(store.update("counter", bump).await?.value, "2");
    /// # Ok(()) }
    /// ```
    fn update<'a, F, V>(
        &'a self,
        key: &'a str,
        f: F,
    ) -> impl Future<Output = Result<KvPair>> + Send + 'a
    where
        F: FnMut(Option<&KvPair>) -> V + Send + 'a,
        V: Into<Bytes>,
    {
        self.update_opts(key, PutOptions::new(), f)
    }

    /// [`StoreExt::update`] writing with `options` (a TTL, ephemeral); its
    /// mode is set by the update itself.
    fn update_opts<'a, F, V>(
        &'a self,
        key: &'a str,
        options: PutOptions,
        mut f: F,
    ) -> impl Future<Output = Result<KvPair>> + Send + 'a
    where
        F: FnMut(Option<&KvPair>) -> V + Send + 'a,
        V: Into<Bytes>,
    {
        async move {
            let mut pause = Duration::from_millis(1);
            for _ in 0..UPDATE_ATTEMPTS {
                let current = self.get_opt(key).await?;
                let value: Bytes = f(current.as_ref()).into();
                let mode = match &current {
                    None => PutMode::Create,
                    Some(p) => PutMode::Update(p.last_index),
                };
                match self.put_opts(key, value, options.with_mode(mode)).await {
                    Ok(pair) => return Ok(pair),
                    Err(Error::KeyExists { .. })
                    | Err(Error::KeyModified { .. })
                    | Err(Error::KeyNotFound { .. }) => {
                        tokio::time::sleep(crate::retry::jitter(pause)).await;
                        pause = (pause * 2).min(Duration::from_millis(50));
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(Error::modified(key))
        }
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

macro_rules! forward_store {
    ($ty:ty) => {
        #[async_trait]
        impl<T: Store + ?Sized> Store for $ty {
            async fn get_opt(&self, key: &str) -> Result<Option<KvPair>> {
                (**self).get_opt(key).await
            }
            async fn put_opts(
                &self,
                key: &str,
                value: Bytes,
                options: PutOptions,
            ) -> Result<KvPair> {
                (**self).put_opts(key, value, options).await
            }
            async fn delete_opts(&self, key: &str, options: DeleteOptions) -> Result<()> {
                (**self).delete_opts(key, options).await
            }
            async fn list(&self, prefix: &str) -> Result<Vec<KvPair>> {
                (**self).list(prefix).await
            }
            async fn delete_tree(&self, prefix: &str) -> Result<()> {
                (**self).delete_tree(prefix).await
            }
            async fn watch(&self, key: &str) -> Result<WatchStream> {
                (**self).watch(key).await
            }
            async fn watch_tree(&self, prefix: &str) -> Result<TreeWatchStream> {
                (**self).watch_tree(prefix).await
            }
            async fn watch_tree_changes(&self, prefix: &str) -> Result<TreeChangeStream> {
                (**self).watch_tree_changes(prefix).await
            }
            async fn new_lock(&self, key: &str, options: LockOptions) -> Result<Lock> {
                (**self).new_lock(key, options).await
            }
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }
            fn session(&self) -> Session {
                (**self).session()
            }
            async fn close(&self) -> Result<()> {
                (**self).close().await
            }
            async fn server_time(&self) -> Result<ServerTime> {
                (**self).server_time().await
            }
        }
    };
}

forward_store!(Arc<T>);
forward_store!(Box<T>);
forward_store!(&T);
