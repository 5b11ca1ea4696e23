//! A handle's session, seen from outside: which one is current, and a signal
//! when it is lost and replaced.
//!
//! Every backend binds a handle's ephemeral keys and locks to one server-side
//! session (an etcd lease, a ZooKeeper session, a Consul session, a Redis
//! session key). When that session is lost — it expired while the store was
//! unreachable, or was ended by the server — the backend opens a new one and
//! carries on, but the old session's ephemeral keys are gone and its locks
//! were reported lost. [`Session::replaced`] tells the owner of such keys
//! (a service registration, say) to write them again.

use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// Ends a backend's current session on purpose; see [`Session::expire`].
pub type Expirer = Arc<dyn Fn() -> BoxFuture<'static, Result<()>> + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    generation: u64,
    closed: bool,
}

/// A view of one handle's session, from [`crate::Store::session`].
///
/// Cheap to clone; each clone remembers the generation it last reported.
///
/// ```
/// # #[tokio::main] async fn main() -> anykv::Result<()> {
/// use anykv::prelude::*;
/// let store = anykv::MemoryStore::new();
/// let mut session = store.session();
/// assert_eq!(session.generation(), 1);
/// store.put("svc/web/1", "10.0.0.1:80", PutOptions::ephemeral()).await?;
/// // The memory store can lose its session on purpose, as a server would.
/// store.expire_session();
/// assert_eq!(session.replaced().await, Some(2));
/// assert!(!store.exists("svc/web/1").await?); // write it again
/// store.close().await?;
/// assert_eq!(session.replaced().await, None);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Session {
    state: watch::Receiver<State>,
    /// The generation this view last reported (or saw when made).
    seen: u64,
    expirer: Option<Expirer>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = *self.state.borrow();
        f.debug_struct("Session")
            .field("generation", &state.generation)
            .field("closed", &state.closed)
            .field("seen", &self.seen)
            .finish()
    }
}

impl Session {
    /// The current session's generation: 1 for the handle's first session,
    /// one more for each replacement.
    pub fn generation(&self) -> u64 {
        self.state.borrow().generation
    }

    /// Ends the handle's current session the way the server ends a lost one
    /// (the etcd lease revoked, the Consul session destroyed, the ZooKeeper
    /// session closed, the Redis session's keys and liveness marker
    /// deleted): its ephemeral keys go, its locks report lost, and the
    /// handle goes on with a new session, which [`Session::replaced`]
    /// reports. For testing code that must survive a session loss.
    /// [`crate::Error::Unsupported`] if the backend cannot.
    pub async fn expire(&self) -> Result<()> {
        match &self.expirer {
            Some(expire) => expire().await,
            None => Err(Error::Unsupported {
                operation: "expire a session",
                backend: "anykv",
                hint: Some("this backend does not offer it".into()),
            }),
        }
    }

    /// True once the handle is closed (no session will follow).
    pub fn is_closed(&self) -> bool {
        self.state.borrow().closed
    }

    /// Resolves when a session newer than the one this view last reported
    /// is in place — its ephemeral keys are then gone, and writing them again
    /// binds them to the new session — with the new generation; `None` once
    /// the handle is closed. Several replacements in a row are reported
    /// once, with the latest generation. Cancel-safe.
    pub async fn replaced(&mut self) -> Option<u64> {
        loop {
            let state = *self.state.borrow_and_update();
            if state.closed {
                return None;
            }
            if state.generation > self.seen {
                self.seen = state.generation;
                return Some(state.generation);
            }
            if self.state.changed().await.is_err() {
                // The backend is gone without saying: as closed.
                return None;
            }
        }
    }
}

/// The backend's side of [`Session`]: it reports each replacement and the
/// close. For backend implementors.
pub struct SessionTracker {
    state: watch::Sender<State>,
    expirer: OnceLock<Expirer>,
}

impl std::fmt::Debug for SessionTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTracker")
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

impl Default for SessionTracker {
    fn default() -> Self {
        SessionTracker::new()
    }
}

impl SessionTracker {
    /// A tracker whose first session has generation 1.
    pub fn new() -> Self {
        let (state, _) = watch::channel(State {
            generation: 1,
            closed: false,
        });
        SessionTracker {
            state,
            expirer: OnceLock::new(),
        }
    }

    /// Sets what [`Session::expire`] runs (once; later calls are ignored).
    /// Views made before this call cannot expire the session. The closure
    /// should hold the backend weakly, so views do not keep it alive.
    pub fn set_expirer(&self, expire: Expirer) {
        let _ = self.expirer.set(expire);
    }

    /// A view for [`crate::Store::session`]; it reports replacements after
    /// this call.
    pub fn session(&self) -> Session {
        let state = self.state.subscribe();
        let seen = state.borrow().generation;
        Session {
            state,
            seen,
            expirer: self.expirer.get().cloned(),
        }
    }

    /// The session was lost and a new one is in place: its generation.
    pub fn replaced(&self) -> u64 {
        let mut generation = 0;
        self.state.send_modify(|s| {
            if !s.closed {
                s.generation = s.generation.saturating_add(1);
            }
            generation = s.generation;
        });
        generation
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.state.borrow().generation
    }

    /// The handle closed: every view's [`Session::replaced`] returns `None`.
    pub fn close(&self) {
        self.state.send_modify(|s| s.closed = true);
    }
}

/// Closes the tracker when dropped: held by the task that keeps a backend's
/// session, so every view learns of the end however the task ends.
#[derive(Debug)]
#[cfg_attr(not(any(feature = "etcd", feature = "redis")), allow(dead_code))]
pub(crate) struct CloseOnDrop(pub(crate) std::sync::Arc<SessionTracker>);

#[cfg_attr(not(any(feature = "etcd", feature = "redis")), allow(dead_code))]
impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replacements_are_reported_once_each_view_and_close_ends_them() {
        let tracker = SessionTracker::new();
        let mut a = tracker.session();
        assert_eq!(tracker.replaced(), 2);
        assert_eq!(tracker.replaced(), 3);
        let mut b = tracker.session();
        assert_eq!(a.replaced().await, Some(3));
        assert_eq!(a.generation(), 3);
        let pending = tokio::time::timeout(std::time::Duration::from_millis(20), b.replaced());
        assert!(
            pending.await.is_err(),
            "b saw generation 3 when it was made"
        );
        tracker.close();
        assert_eq!(a.replaced().await, None);
        assert_eq!(b.replaced().await, None);
        assert!(a.is_closed());
        assert_eq!(tracker.replaced(), 3, "no generation after close");
    }
}
