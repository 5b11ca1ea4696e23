//! The shared state of a memory store: entries, versions, lifetimes, the
//! change feed and the TTL reaper.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::task::Tasks;

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) events: broadcast::Sender<Arc<Event>>,
    pub(super) reaper_wake: Arc<Notify>,
    pub(super) shutdown: CancellationToken,
    /// The runtime the reaper runs on, once it was started.
    pub(super) reaper: std::sync::OnceLock<Tasks>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[derive(Default)]
pub(super) struct State {
    pub(super) entries: BTreeMap<String, Entry>,
    /// Deadlines of TTL keys; may hold stale items for rewritten keys.
    pub(super) deadlines: BTreeSet<(Instant, String)>,
    pub(super) version: u64,
    pub(super) next_session: u64,
}

pub(super) struct Entry {
    pub(super) value: Bytes,
    pub(super) version: u64,
    pub(super) expiry: Lifetime,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Lifetime {
    Forever,
    Until(Instant),
    Session(u64),
}

/// One change, as seen by watchers. `value` is `None` for a deletion.
pub(super) struct Event {
    pub(super) key: String,
    pub(super) version: u64,
    pub(super) value: Option<Bytes>,
}

impl Shared {
    pub(super) fn new() -> Arc<Self> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            events,
            reaper_wake: Arc::new(Notify::new()),
            shutdown: CancellationToken::new(),
            reaper: std::sync::OnceLock::new(),
        });
        spawn_reaper(&shared);
        shared
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-written
        // (every mutation is a single map operation), so poison is harmless.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.purge_expired(&mut state, Instant::now());
        state
    }

    pub(super) fn purge_expired(&self, state: &mut State, now: Instant) {
        while let Some((deadline, _)) = state.deadlines.first() {
            if *deadline > now {
                break;
            }
            let Some((deadline, key)) = state.deadlines.pop_first() else {
                break;
            };
            let still_due = state
                .entries
                .get(&key)
                .is_some_and(|e| e.expiry == Lifetime::Until(deadline));
            if still_due {
                state.entries.remove(&key);
                self.bump_and_notify(state, &key, None);
            }
        }
    }

    pub(super) fn bump_and_notify(
        &self,
        state: &mut State,
        key: &str,
        value: Option<Bytes>,
    ) -> u64 {
        state.version += 1;
        let version = state.version;
        if self.events.receiver_count() > 0 {
            // Sent under the state lock, so events arrive in version order.
            let _ = self.events.send(Arc::new(Event {
                key: key.to_owned(),
                version,
                value,
            }));
        }
        version
    }

    pub(super) fn write(
        &self,
        state: &mut State,
        key: &str,
        value: Bytes,
        expiry: Lifetime,
    ) -> u64 {
        let version = self.bump_and_notify(state, key, Some(value.clone()));
        if let Lifetime::Until(deadline) = expiry {
            let first = state.deadlines.first().map(|(d, _)| *d);
            state.deadlines.insert((deadline, key.to_owned()));
            if first.is_none_or(|f| deadline < f) {
                self.reaper_wake.notify_one();
            }
        }
        let entry = Entry {
            value,
            version,
            expiry,
        };
        match state.entries.get_mut(key) {
            Some(slot) => *slot = entry,
            None => {
                state.entries.insert(key.to_owned(), entry);
            }
        }
        version
    }

    pub(super) fn remove(&self, state: &mut State, key: &str) -> bool {
        if state.entries.remove(key).is_some() {
            self.bump_and_notify(state, key, None);
            true
        } else {
            false
        }
    }

    pub(super) fn end_session(&self, session: u64) {
        let mut state = self.lock();
        self.end_session_locked(&mut state, session);
    }

    /// [`Shared::end_session`] with the state lock already held.
    pub(super) fn end_session_locked(&self, state: &mut State, session: u64) {
        let doomed: Vec<String> = state
            .entries
            .iter()
            .filter(|(_, e)| e.expiry == Lifetime::Session(session))
            .map(|(k, _)| k.clone())
            .collect();
        for key in doomed {
            self.remove(state, &key);
        }
    }
}

/// Removes expired keys on time so watchers see them go. The task holds only
/// a weak reference and ends when the store is dropped. Started once, on the
/// first runtime the store meets: at creation, or at its first operation if
/// it was created outside a runtime.
pub(super) fn spawn_reaper(shared: &Arc<Shared>) {
    if shared.reaper.get().is_some() {
        return;
    }
    let Some(tasks) = Tasks::try_current() else {
        return; // the first operation, inside a runtime, starts it
    };
    if shared.reaper.set(tasks.clone()).is_err() {
        return; // started by a concurrent first operation
    }
    let weak = Arc::downgrade(shared);
    let wake = shared.reaper_wake.clone();
    let shutdown = shared.shutdown.clone();
    tasks.spawn(async move {
        loop {
            let next = {
                let Some(shared) = weak.upgrade() else { return };
                let state = shared.lock();
                state.deadlines.first().map(|(d, _)| *d)
            };
            let sleep = async {
                match next {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.notified() => {}
                _ = sleep => {}
            }
        }
    });
}
