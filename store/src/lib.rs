//! # anykv
//!
//! One async [`Store`] trait for coordination data — plain keys, versions,
//! compare-and-swap, TTL and session-bound (ephemeral) keys, watches and
//! locks with fencing tokens — over etcd, Consul, ZooKeeper, Redis or an
//! embedded in-memory store, chosen by a URL string.
//!
//! ```
//! # #[tokio::main] async fn main() -> anykv::Result<()> {
//! use anykv::prelude::*;
//! use futures::StreamExt;
//!
//! let store = anykv::open("memory://").await?;
//! store.put("services/web/1", "10.0.0.1:80", PutOptions::new()).await?;
//!
//! let mut watch = store.watch("services/web/1").await?;
//! assert!(watch.next().await.unwrap()?.is_some()); // current state first
//! store.delete("services/web/1").await?;
//! assert_eq!(watch.next().await.unwrap()?, None); // a deletion is None
//! # Ok(()) }
//! ```
//!
//! Backends: `memory://` (always), and behind cargo features `etcd`,
//! `consul`, `zookeeper`, `redis` (or `full` for all). See [`open`] and the
//! [`url`] module for URL formats, [`Store`] for the contract (what a
//! backend implements), [`StoreExt`] for the conveniences every store has,
//! and [`Lock`] for locks. `use anykv::prelude::*` brings the traits and
//! option types into scope.
//!
//! Each networked backend also has a typed builder with the URL's settings
//! as methods (`EtcdStore::builder()`, `ConsulStore::builder()`,
//! `ZookeeperStore::builder()`, `RedisStore::builder()`, in
//! [`backend`]); a builder opens exactly what the equivalent URL opens.
//!
//! Every operation of a built-in store runs in a `tracing` span named
//! `anykv` (fields `backend`, `op`, `key`; failures recorded as `debug`
//! events), and retries use one policy, [`retry::Backoff`].

#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod backend;
#[cfg(any(
    feature = "etcd",
    feature = "consul",
    feature = "zookeeper",
    feature = "redis"
))]
pub(crate) mod builder;
mod changes;
pub mod error;
pub mod key;
pub mod lock;
pub mod metrics;
pub(crate) mod request;
pub mod retry;
pub mod session;
pub mod store;
pub(crate) mod task;
pub(crate) mod time;
pub mod types;
pub mod url;

pub use crate::backend::memory::MemoryStore;
pub use crate::error::{BoxError, Error, Result};
pub use crate::lock::{GenericLock, Lock, LockBackend, LockGuard, LossSignal, LossTrigger};
pub use crate::session::{Session, SessionTracker};
pub use crate::store::{Store, StoreExt};
pub use crate::types::{
    Capabilities, DeleteOptions, Expiry, KvPair, Listing, LockOptions, PutMode, PutOptions,
    ServerTime, TreeChange, TreeChangeStream, TreeWatchStream, WatchStream,
};

/// The traits and option types most code needs: `use anykv::prelude::*;`.
pub mod prelude {
    pub use crate::lock::{Lock, LockGuard};
    pub use crate::session::Session;
    pub use crate::store::{Store, StoreExt};
    pub use crate::types::{
        DeleteOptions, Expiry, KvPair, Listing, LockOptions, PutMode, PutOptions, TreeChange,
    };
    pub use bytes::Bytes;
}
pub use crate::url::{open, StoreUrl};

// Re-exported so backend implementors and users name the same versions.
pub use async_trait::async_trait;
pub use bytes::Bytes;
