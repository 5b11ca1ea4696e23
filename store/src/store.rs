//! The [`Store`] trait: the contract every backend keeps.

use std::fmt::Debug;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;
use crate::lock::Lock;
use crate::types::{Capabilities, KvPair, LockOptions, PutOptions, TreeWatchStream, WatchStream};

/// An async key-value store with versions, compare-and-swap, expiry, watches
/// and locks.
///
/// Method names follow Go's libkv. Every method takes `&self` and is
/// cancel-safe: dropping a future mid-flight leaves the store consistent (a
/// write either happened or did not). Keys are validated before any I/O (see
/// [`crate::key`]); all keys are relative to the handle's namespace (the URL
/// path).
///
/// # Versions
/// [`KvPair::last_index`] strictly increases with every change of a key and
/// never repeats, even across delete and re-create. It is what
/// [`Store::atomic_put`] compares, so a pair read before a delete never
/// matches the re-created key (no ABA).
///
/// # Sessions
/// Each handle owns one session. [`PutOptions::ephemeral`] keys and the
/// handle's locks live as long as it: [`Store::close`] removes them at once,
/// and a crashed process's keys go within the session TTL
/// ([`Capabilities::session_ttl`], URL option `session_ttl`).
///
/// ```
/// # #[tokio::main] async fn main() -> anykv::Result<()> {
/// use anykv::{PutOptions, Store};
/// let store = anykv::open("memory://").await?;
/// let v1 = store.put("app/config", "on".into(), PutOptions::new()).await?;
/// assert_eq!(store.get("app/config").await?.value, "on");
/// // Compare-and-swap against the version we read.
/// let v2 = store.atomic_put("app/config", "off".into(), Some(&v1), PutOptions::new()).await?;
/// assert!(v2.last_index > v1.last_index);
/// assert!(store.atomic_put("app/config", "x".into(), Some(&v1), PutOptions::new()).await.is_err());
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Store: Send + Sync + Debug {
    /// Reads a key. A missing key is [`crate::Error::KeyNotFound`].
    async fn get(&self, key: &str) -> Result<KvPair>;

    /// Writes a key unconditionally (upsert) and returns the new pair.
    async fn put(&self, key: &str, value: Bytes, options: PutOptions) -> Result<KvPair>;

    /// Deletes a key. Deleting a missing key is `Ok`.
    async fn delete(&self, key: &str) -> Result<()>;

    /// True if the key exists.
    async fn exists(&self, key: &str) -> Result<bool>;

    /// Every key strictly below `prefix/`, recursively, sorted by key. An
    /// empty result is `Ok(vec![])`. `""` lists the whole namespace.
    async fn list(&self, prefix: &str) -> Result<Vec<KvPair>>;

    /// Deletes `prefix` itself and everything below it. `""` empties the
    /// namespace.
    async fn delete_tree(&self, prefix: &str) -> Result<()>;

    /// Compare-and-swap write.
    ///
    /// * `previous = None`: create only; [`crate::Error::KeyExists`] if present.
    /// * `previous = Some(p)`: only if the key's current version equals
    ///   `p.last_index`; [`crate::Error::KeyModified`] on mismatch,
    ///   [`crate::Error::KeyNotFound`] if the key is gone.
    async fn atomic_put(
        &self,
        key: &str,
        value: Bytes,
        previous: Option<&KvPair>,
        options: PutOptions,
    ) -> Result<KvPair>;

    /// Deletes the key only if its version equals `previous.last_index`, with
    /// the same errors as [`Store::atomic_put`].
    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()>;

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
    async fn watch_tree(&self, prefix: &str) -> Result<TreeWatchStream>;

    /// A lock on `key`. Nothing is acquired until [`Lock::lock`] or
    /// [`Lock::try_lock`].
    async fn new_lock(&self, key: &str, options: LockOptions) -> Result<Lock>;

    /// What this backend can do and how precisely.
    fn capabilities(&self) -> Capabilities;

    /// Ends the handle's session: its ephemeral keys and locks are removed at
    /// once, its watches end with [`crate::Error::Closed`], background tasks
    /// stop, and later calls fail with `Closed`. Idempotent.
    async fn close(&self) -> Result<()>;
}
