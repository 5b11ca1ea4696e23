//! # anykv
//!
//! One async [`Store`] trait for coordination data — plain keys, versions,
//! compare-and-swap, TTL and session-bound (ephemeral) keys, watches and
//! locks with fencing tokens — over etcd, Consul, ZooKeeper, Redis or an
//! embedded in-memory store, chosen by a URL string.
//!
//! ```
//! # #[tokio::main] async fn main() -> anykv::Result<()> {
//! use anykv::{PutOptions, Store};
//! use futures::StreamExt;
//!
//! let store = anykv::open("memory://").await?;
//! store.put("services/web/1", "10.0.0.1:80".into(), PutOptions::new()).await?;
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
//! [`url`] module for URL formats, [`Store`] for the contract, and
//! [`Lock`] for locks.

#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod backend;
pub mod error;
pub mod key;
pub mod lock;
pub(crate) mod retry;
pub mod store;
pub mod types;
pub mod url;

pub use crate::backend::memory::MemoryStore;
pub use crate::error::{BoxError, Error, Result};
pub use crate::lock::{GenericLock, Lock, LockBackend, LockGuard, LossSignal};
pub use crate::store::Store;
pub use crate::types::{
    Capabilities, Expiry, KvPair, LockOptions, PutOptions, TreeWatchStream, WatchStream,
};
pub use crate::url::{open, StoreUrl};

// Re-exported so backend implementors and users name the same versions.
pub use async_trait::async_trait;
pub use bytes::Bytes;
