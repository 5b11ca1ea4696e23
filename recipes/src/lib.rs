//! # anykv-recipes
//!
//! Coordination recipes built once over `Arc<dyn anykv::Store>`, so they run
//! unchanged on etcd, Consul, ZooKeeper, Redis and the memory store.
//!
//! Every recipe follows the leadership crate's rules: background work runs in
//! tasks the recipe's handle owns, results arrive as streams (with a separate
//! error stream for failures it recovered from), a watch wakes it rather than
//! a poll, and stopping or dropping the handle ends everything it started.

#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub use anykv;

pub mod cron;
pub mod leader;
pub mod queue;
// Service discovery, the semaphore, the partitioner and store time.
pub mod clock;
pub mod discovery;
mod feed;
pub mod partitioner;
pub mod semaphore;

pub use clock::{ClockOffset, StoreClock};
pub use discovery::{Discovery, Instance, InstanceStream, Registration};
pub use feed::ErrorStream;
pub use partitioner::{Assignment, AssignmentStream, Membership, Partitioner};
pub use semaphore::{Permit, Semaphore};
