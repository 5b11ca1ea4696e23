//! # anykv-leadership
//!
//! Leader election over any [`anykv::Store`]: a [`Candidate`] campaigns for a
//! key and streams whether it leads; a [`Follower`] streams who leads. Both
//! work unchanged on every backend (etcd, Consul, ZooKeeper, Redis, memory)
//! through `Arc<dyn Store>`.
//!
//! ```
//! # #[tokio::main] async fn main() -> anykv::Result<()> {
//! use anykv_leadership::{Candidate, Follower};
//! use futures::StreamExt;
//!
//! // Two nodes (two handles, two sessions) on one store.
//! let store_a = anykv::open("memory://crate-doc").await?;
//! let store_b = anykv::open("memory://crate-doc").await?;
//! let a = Candidate::new(store_a.clone(), "service/leader", "node-a");
//! let b = Candidate::new(store_b, "service/leader", "node-b");
//! let (mut a_elected, _a_errors) = a.run_for_election().await?;
//! assert_eq!(a_elected.next().await, Some(false));
//! assert_eq!(a_elected.next().await, Some(true)); // a is alone: elected
//! let (mut b_elected, _b_errors) = b.run_for_election().await?;
//! assert_eq!(b_elected.next().await, Some(false)); // b waits
//!
//! let (mut leaders, _errors) = Follower::new(store_a, "service/leader")
//!     .follow_election()
//!     .await?;
//! assert_eq!(leaders.next().await, Some(Some("node-a".into())));
//!
//! let token_a = a.leader_token().expect("a leads");
//! a.resign().await; // a steps down; b takes over within a round trip
//! assert_eq!(b_elected.next().await, Some(true));
//! assert!(b.leader_token() > Some(token_a)); // fencing tokens increase
//! assert_eq!(a_elected.next().await, Some(false));
//! // The follower may see a moment without a leader during the handover.
//! let mut next = leaders.next().await;
//! if next == Some(None) {
//!     next = leaders.next().await;
//! }
//! assert_eq!(next, Some(Some("node-b".into())));
//! # Ok(()) }
//! ```
//!
//! ## Guarantees and their limits
//!
//! A candidate leads while it holds the lock [`anykv::Store::new_lock`] gives
//! for the key, so the election is exactly as safe as that lock:
//!
//! * At most one candidate holds the lock at a time. A candidate announces
//!   the end of its term (`false`, `is_leader() == false`) *before* it
//!   releases the lock, and the next one announces its term only after it
//!   holds it, so the announced terms never overlap — as long as loss is
//!   detected in time: [`anykv::LockGuard::lost`] fires on a client-side
//!   deadline that comes before the store could hand the lock to someone
//!   else. A process paused for longer than that (GC, swap, SIGSTOP) may
//!   still believe it leads after it no longer does. That is why every term
//!   has a [fencing token](Candidate::leader_token): a resource that rejects
//!   tokens lower than the highest it has seen stays safe even then.
//! * A crashed leader is replaced once its lock expires: within the store's
//!   session TTL (plus the backend's reaping slack, see
//!   [`anykv::Capabilities`]) or the candidate's [`Candidate::ttl`].
//! * A resigning leader releases the lock, so the next candidate is elected
//!   about one store round trip later, without waiting for any TTL.
//! * Nothing a consumer does (or fails to do) with the streams can delay the
//!   campaign: streams are fed without waiting (see
//!   [`Candidate::run_for_election`] for how a slow reader's view is
//!   shortened safely), and lock renewal belongs to the store.
//!
//! Unlike Go's docker/leadership, a failure never ends a campaign (only a
//! closed store does): the candidate reports it and campaigns again with
//! backoff; `stop` and `resign` are idempotent and never block on a
//! consumer; a follower reports vacancies (`None`) and watch failures.

#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod backoff;
mod campaign;
mod candidate;
mod follower;
mod mailbox;

pub use anykv;
pub use candidate::{Candidate, DEFAULT_RESIGN_GRACE};
pub use follower::Follower;

use futures::stream::BoxStream;

/// The elected stream of [`Candidate::run_for_election`]: `false` first, then
/// `true` / `false` as this candidate gains and loses the leadership.
pub type ElectedStream = BoxStream<'static, bool>;

/// The leader stream of [`Follower::follow_election`]: the current leader's
/// node id first (`None` = nobody leads), then every change.
pub type LeaderStream = BoxStream<'static, Option<String>>;

/// The error stream of [`Candidate::run_for_election`] and
/// [`Follower::follow_election`]: failures the campaign or follower
/// recovered from (or, last, the one it could not: a closed store).
pub type ErrorStream = BoxStream<'static, anykv::Error>;

/// Metric (counter, through the [`metrics`](https://docs.rs/metrics) facade
/// like anykv's own, see [`anykv::metrics`]; recorded with the cargo feature
/// `metrics`): terms this process's candidates won.
pub const ELECTIONS_WON_TOTAL: &str = "anykv_elections_won_total";

/// Metric (counter): terms this process's candidates ended, by `reason`:
/// `lock_lost` (the store took the leadership away), `resigned`
/// ([`Candidate::resign`]) or `stopped` ([`Candidate::stop`], a drop, a
/// closed store). A term whose lock was lost as soon as it was granted was
/// never announced and counts neither as won nor as lost.
pub const ELECTIONS_LOST_TOTAL: &str = "anykv_elections_lost_total";

/// How many unread errors an error stream keeps; older ones are dropped.
const ERROR_CAPACITY: usize = 32;

/// The tokio runtime to run a background task on, or an error naming the
/// call (instead of the panic `tokio::spawn` would give).
fn runtime(key: &str, call: &str) -> anykv::Result<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current().map_err(|_| anykv::Error::InvalidArgument {
        key: key.to_owned(),
        reason: format!("{call} must be called within a tokio runtime"),
    })
}
