//! The one request path of the built-in backends.
//!
//! Every operation of a built-in store goes through the functions here
//! (its [`Store`](crate::Store) implementation is [`impl_store!`] over its [`Backend`]), which does once what every backend
//! needs before any I/O — and the backends cannot skip it, because their
//! methods only receive what it produced:
//!
//! 1. the key (or prefix) is validated and normalised ([`crate::key`]) and
//!    joined with the handle's namespace into a [`Key`];
//! 2. a value is checked against [`Capabilities::max_value_size`], a TTL or
//!    lock TTL against [`Capabilities::max_ttl`];
//! 3. a closed handle answers [`crate::Error::Closed`];
//! 4. the operation runs inside a `tracing` span named `anykv` with the
//!    fields `backend`, `op` and `key`; a failure is recorded as a `debug`
//!    event with the error in that span. Without a subscriber this costs a
//!    relaxed atomic load per operation;
//! 5. with the cargo feature `metrics`, it is counted and timed
//!    ([`crate::metrics`]).
//!
//! The write modes are dispatched here too: a backend implements a plain
//! write, a conditional write and the two deletes, and [`PutMode`] maps onto
//! them in one place.

use std::fmt::Debug;
use std::future::Future;
#[cfg(feature = "metrics")]
use std::time::Instant;

use bytes::Bytes;
use tracing::Instrument;

use crate::error::Result;
use crate::key::Namespace;
use crate::lock::Lock;
use crate::session::Session;
use crate::types::{
    Capabilities, DeleteOptions, Expiry, KvPair, LockOptions, PutMode, PutOptions, ServerTime,
    TreeChangeStream, TreeWatchStream, WatchStream,
};

/// A key or prefix after validation: the user's normalised form (what
/// errors and returned pairs name) and the backend's namespaced form.
#[derive(Clone, Debug)]
pub(crate) struct Key {
    /// The normalised key as the user names it, relative to the namespace.
    pub(crate) user: String,
    /// The key joined with the namespace, as the backend stores it.
    pub(crate) full: String,
}

/// What a built-in backend implements; its [`Store`](crate::Store) implementation comes
/// from [`impl_store!`], with the shared prelude in front of each method.
///
/// Its methods return plain (unboxed) futures: the one boxing of an
/// operation is `Store`'s own, so the shared path adds no allocation.
pub(crate) trait Backend: Send + Sync + Debug + 'static {
    /// The backend's scheme name, for spans.
    const NAME: &'static str;

    /// The handle's namespace (its URL path).
    fn namespace(&self) -> &Namespace;

    /// `Err(Closed)` once the handle is closed.
    fn check_open(&self) -> Result<()>;

    /// Reads a key.
    fn get(&self, key: Key) -> impl Future<Output = Result<Option<KvPair>>> + Send;

    /// Writes unconditionally ([`PutMode::Overwrite`]).
    fn put(
        &self,
        key: Key,
        value: Bytes,
        options: PutOptions,
    ) -> impl Future<Output = Result<KvPair>> + Send;

    /// Writes only if the key is absent (`previous == None`) or has version
    /// `previous`.
    fn put_if(
        &self,
        key: Key,
        value: Bytes,
        previous: Option<u64>,
        options: PutOptions,
    ) -> impl Future<Output = Result<KvPair>> + Send;

    /// Deletes unconditionally; a missing key is `Ok`.
    fn delete(&self, key: Key) -> impl Future<Output = Result<()>> + Send;

    /// Deletes only if the key has version `previous`.
    fn delete_if(&self, key: Key, previous: u64) -> impl Future<Output = Result<()>> + Send;

    /// Lists the keys below a prefix.
    fn list(&self, prefix: Key) -> impl Future<Output = Result<Vec<KvPair>>> + Send;

    /// Deletes a prefix and everything below it.
    fn delete_tree(&self, prefix: Key) -> impl Future<Output = Result<()>> + Send;

    /// Watches one key.
    fn watch(&self, key: Key) -> impl Future<Output = Result<WatchStream>> + Send;

    /// Watches a prefix.
    fn watch_tree(&self, prefix: Key) -> impl Future<Output = Result<TreeWatchStream>> + Send;

    /// [`Store::watch_tree_changes`](crate::Store::watch_tree_changes) below a
    /// validated prefix; by default derived from [`Backend::watch_tree`].
    fn watch_tree_changes(
        &self,
        prefix: Key,
    ) -> impl Future<Output = Result<TreeChangeStream>> + Send {
        async move {
            Ok(crate::changes::from_listings(
                Backend::watch_tree(self, prefix).await?,
            ))
        }
    }

    /// Creates a lock handle (no I/O needed beyond what the backend wants).
    fn new_lock(&self, key: Key, options: LockOptions)
        -> impl Future<Output = Result<Lock>> + Send;

    /// The handle's session.
    fn session(&self) -> Session;

    /// What the backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Closes the handle.
    fn close(&self) -> impl Future<Output = Result<()>> + Send;

    /// Reads the server's clock once ([`crate::Store::server_time`]).
    fn server_time(&self) -> impl Future<Output = Result<ServerTime>> + Send;
}

/// `Err(Closed)` naming `url` once `closed` is cancelled: every backend's
/// closed check.
pub(crate) fn check_open(closed: &tokio_util::sync::CancellationToken, url: &str) -> Result<()> {
    if closed.is_cancelled() {
        return Err(crate::Error::Closed {
            url: url.to_owned(),
        });
    }
    Ok(())
}

/// The span every operation runs in.
fn span(backend: &'static str, op: &'static str, key: &str) -> tracing::Span {
    tracing::debug_span!("anykv", backend, op, key)
}

/// Runs `operation` in its span, recording a failure in it, and counts and
/// times it ([`crate::metrics`]).
async fn traced<T>(
    backend: &'static str,
    op: &'static str,
    key: &str,
    operation: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    #[cfg(feature = "metrics")]
    let started = Instant::now();
    let span = span(backend, op, key);
    let outcome = if span.is_disabled() {
        // No subscriber wants it: no span to enter on every poll.
        operation.await
    } else {
        async move {
            let outcome = operation.await;
            if let Err(error) = &outcome {
                tracing::debug!(%error, "failed");
            }
            outcome
        }
        .instrument(span)
        .await
    };
    #[cfg(feature = "metrics")]
    crate::metrics::operation(backend, op, outcome.is_ok(), started.elapsed());
    outcome
}

fn key_of<B: Backend>(backend: &B, key: &str) -> Result<Key> {
    let (user, full) = backend.namespace().key(key)?;
    backend.check_open()?;
    Ok(Key { user, full })
}

fn prefix_of<B: Backend>(backend: &B, prefix: &str) -> Result<Key> {
    let (user, full) = backend.namespace().prefix_of(prefix)?;
    backend.check_open()?;
    Ok(Key { user, full })
}

pub(crate) async fn get_opt<B: Backend>(this: &B, key: &str) -> Result<Option<KvPair>> {
    traced(B::NAME, "get", key, async {
        let key = key_of(this, key)?;
        Backend::get(this, key).await
    })
    .await
}

pub(crate) async fn put_opts<B: Backend>(
    this: &B,
    key: &str,
    value: Bytes,
    options: PutOptions,
) -> Result<KvPair> {
    traced(B::NAME, "put", key, async {
        let key = key_of(this, key)?;
        let caps = Backend::capabilities(this);
        caps.check_value(&key.user, &value)?;
        if let Expiry::Ttl(ttl) = options.expiry() {
            caps.check_ttl(&key.user, "ttl", ttl)?;
        }
        match options.mode() {
            PutMode::Overwrite => Backend::put(this, key, value, options).await,
            PutMode::Create => Backend::put_if(this, key, value, None, options).await,
            PutMode::Update(version) => {
                Backend::put_if(this, key, value, Some(version), options).await
            }
        }
    })
    .await
}

pub(crate) async fn delete_opts<B: Backend>(
    this: &B,
    key: &str,
    options: DeleteOptions,
) -> Result<()> {
    traced(B::NAME, "delete", key, async {
        let key = key_of(this, key)?;
        match options.version() {
            None => Backend::delete(this, key).await,
            Some(version) => Backend::delete_if(this, key, version).await,
        }
    })
    .await
}

pub(crate) async fn list<B: Backend>(this: &B, prefix: &str) -> Result<Vec<KvPair>> {
    traced(B::NAME, "list", prefix, async {
        let prefix = prefix_of(this, prefix)?;
        Backend::list(this, prefix).await
    })
    .await
}

pub(crate) async fn delete_tree<B: Backend>(this: &B, prefix: &str) -> Result<()> {
    traced(B::NAME, "delete_tree", prefix, async {
        let prefix = prefix_of(this, prefix)?;
        Backend::delete_tree(this, prefix).await
    })
    .await
}

pub(crate) async fn watch<B: Backend>(this: &B, key: &str) -> Result<WatchStream> {
    traced(B::NAME, "watch", key, async {
        let key = key_of(this, key)?;
        Backend::watch(this, key).await
    })
    .await
}

pub(crate) async fn watch_tree<B: Backend>(this: &B, prefix: &str) -> Result<TreeWatchStream> {
    traced(B::NAME, "watch_tree", prefix, async {
        let prefix = prefix_of(this, prefix)?;
        Backend::watch_tree(this, prefix).await
    })
    .await
}

pub(crate) async fn watch_tree_changes<B: Backend>(
    this: &B,
    prefix: &str,
) -> Result<TreeChangeStream> {
    traced(B::NAME, "watch_tree_changes", prefix, async {
        let prefix = prefix_of(this, prefix)?;
        Backend::watch_tree_changes(this, prefix).await
    })
    .await
}

pub(crate) async fn new_lock<B: Backend>(
    this: &B,
    key: &str,
    options: LockOptions,
) -> Result<Lock> {
    traced(B::NAME, "new_lock", key, async {
        let key = key_of(this, key)?;
        let caps = Backend::capabilities(this);
        caps.check_value(&key.user, &options.value)?;
        // A lock TTL the backend ignores is held to the general bound only.
        match options.ttl {
            Some(ttl) if caps.lock_ttl_per_lock => caps.check_ttl(&key.user, "lock ttl", ttl)?,
            _ => options.validate(&key.user)?,
        }
        Ok(Backend::new_lock(this, key, options).await?.named(B::NAME))
    })
    .await
}

pub(crate) fn capabilities<B: Backend>(this: &B) -> Capabilities {
    Backend::capabilities(this)
}

pub(crate) fn session<B: Backend>(this: &B) -> Session {
    Backend::session(this)
}

pub(crate) async fn close<B: Backend>(this: &B) -> Result<()> {
    traced(B::NAME, "close", "", Backend::close(this)).await
}

pub(crate) async fn server_time<B: Backend>(this: &B) -> Result<ServerTime> {
    traced(B::NAME, "server_time", "", async {
        this.check_open()?;
        Backend::server_time(this).await
    })
    .await
}

/// Times one clock-reading request: `read` runs once and returns the
/// server's time; the local send time and round trip are measured around it.
#[cfg_attr(
    not(any(feature = "consul", feature = "zookeeper", feature = "redis")),
    allow(dead_code)
)]
pub(crate) async fn timed_reading(
    resolution: std::time::Duration,
    read: impl Future<Output = Result<std::time::SystemTime>>,
) -> Result<ServerTime> {
    let sent = std::time::SystemTime::now();
    let start = std::time::Instant::now();
    let time = read.await?;
    Ok(ServerTime::new(time, sent, start.elapsed(), resolution))
}

/// Implements [`Store`](crate::Store) for a [`Backend`] through the shared request path.
macro_rules! impl_store {
    ($ty:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::Store for $ty {
            async fn get_opt(&self, key: &str) -> $crate::Result<Option<$crate::KvPair>> {
                $crate::request::get_opt(self, key).await
            }
            async fn put_opts(
                &self,
                key: &str,
                value: bytes::Bytes,
                options: $crate::PutOptions,
            ) -> $crate::Result<$crate::KvPair> {
                $crate::request::put_opts(self, key, value, options).await
            }
            async fn delete_opts(
                &self,
                key: &str,
                options: $crate::DeleteOptions,
            ) -> $crate::Result<()> {
                $crate::request::delete_opts(self, key, options).await
            }
            async fn list(&self, prefix: &str) -> $crate::Result<Vec<$crate::KvPair>> {
                $crate::request::list(self, prefix).await
            }
            async fn delete_tree(&self, prefix: &str) -> $crate::Result<()> {
                $crate::request::delete_tree(self, prefix).await
            }
            async fn watch(&self, key: &str) -> $crate::Result<$crate::WatchStream> {
                $crate::request::watch(self, key).await
            }
            async fn watch_tree(&self, prefix: &str) -> $crate::Result<$crate::TreeWatchStream> {
                $crate::request::watch_tree(self, prefix).await
            }
            async fn watch_tree_changes(
                &self,
                prefix: &str,
            ) -> $crate::Result<$crate::TreeChangeStream> {
                $crate::request::watch_tree_changes(self, prefix).await
            }
            async fn new_lock(
                &self,
                key: &str,
                options: $crate::LockOptions,
            ) -> $crate::Result<$crate::Lock> {
                $crate::request::new_lock(self, key, options).await
            }
            fn capabilities(&self) -> $crate::Capabilities {
                $crate::request::capabilities(self)
            }
            fn session(&self) -> $crate::Session {
                $crate::request::session(self)
            }
            async fn close(&self) -> $crate::Result<()> {
                $crate::request::close(self).await
            }
            async fn server_time(&self) -> $crate::Result<$crate::ServerTime> {
                $crate::request::server_time(self).await
            }
        }
    };
}
pub(crate) use impl_store;
