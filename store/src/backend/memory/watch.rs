//! Watches on a memory store: driven by its change feed, no polling.
//!
//! `watch_tree_changes` turns each event of the feed below the prefix into
//! one [`TreeChange::Changed`], so a tree change costs one item whatever the
//! size of the prefix; a watcher that fell behind the feed (it holds
//! `EVENT_BUFFER` events) re-reads and sends a [`TreeChange::Snapshot`].

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::error::{Error, Result};
use crate::key::{is_below, Namespace};
use crate::types::{KvPair, TreeChange};

pub(super) struct KeyWatcher {
    pub(super) shared: Arc<Shared>,
    pub(super) events: broadcast::Receiver<Arc<Event>>,
    pub(super) closed: CancellationToken,
    pub(super) url: String,
    pub(super) user: String,
    pub(super) full: String,
    /// The store version our view is current to; older events are skipped.
    pub(super) seen: u64,
    /// The version of the state last delivered; `None` = "absent" delivered.
    pub(super) delivered: Option<u64>,
    pub(super) pending_initial: Option<Option<KvPair>>,
    pub(super) done: bool,
}

impl KeyWatcher {
    pub(super) async fn next(&mut self) -> Option<Result<Option<KvPair>>> {
        if self.done {
            return None;
        }
        if let Some(initial) = self.pending_initial.take() {
            self.delivered = initial.as_ref().map(|p| p.last_index);
            return Some(Ok(initial));
        }
        loop {
            let current = match next_event(&mut self.events, &self.closed).await {
                Next::Event(event) if event.key == self.full && event.version > self.seen => {
                    self.seen = event.version;
                    event.value.as_ref().map(|value| KvPair {
                        key: self.user.clone(),
                        value: value.clone(),
                        last_index: event.version,
                    })
                }
                Next::Event(_) => continue,
                Next::Lagged => {
                    // Fell behind: coalesce to the current state.
                    let state = self.shared.lock();
                    self.seen = state.version;
                    state
                        .entries
                        .get(&self.full)
                        .map(|e| MemoryStore::pair(&self.user, e))
                }
                Next::Closed => {
                    self.done = true;
                    return Some(Err(Error::Closed {
                        url: self.url.clone(),
                    }));
                }
            };
            let version = current.as_ref().map(|p| p.last_index);
            if version != self.delivered {
                self.delivered = version;
                return Some(Ok(current));
            }
        }
    }
}

pub(super) struct TreeWatcher {
    pub(super) shared: Arc<Shared>,
    pub(super) events: broadcast::Receiver<Arc<Event>>,
    pub(super) closed: CancellationToken,
    pub(super) url: String,
    pub(super) namespace: Namespace,
    pub(super) full: String,
    pub(super) seen: u64,
    pub(super) delivered: Option<Vec<KvPair>>,
    pub(super) done: bool,
}

impl TreeWatcher {
    pub(super) fn concerns(&self, event: &Event) -> bool {
        event.version > self.seen && is_below(&self.full, &event.key)
    }

    pub(super) async fn next(&mut self) -> Option<Result<Vec<KvPair>>> {
        if self.done {
            return None;
        }
        if self.delivered.is_none() {
            let listing = {
                let state = self.shared.lock();
                self.seen = state.version;
                list_entries(&state, &self.namespace, &self.full)
            };
            self.delivered = Some(listing.clone());
            return Some(Ok(listing));
        }
        loop {
            match next_event(&mut self.events, &self.closed).await {
                Next::Event(event) if self.concerns(&event) => {}
                Next::Event(_) => continue,
                Next::Lagged => {}
                Next::Closed => {
                    self.done = true;
                    return Some(Err(Error::Closed {
                        url: self.url.clone(),
                    }));
                }
            }
            // Coalesce whatever else is already queued, then list once.
            while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) =
                self.events.try_recv()
            {}
            let listing = {
                let state = self.shared.lock();
                self.seen = state.version;
                list_entries(&state, &self.namespace, &self.full)
            };
            if self.delivered.as_ref() != Some(&listing) {
                self.delivered = Some(listing.clone());
                return Some(Ok(listing));
            }
        }
    }
}

pub(super) struct ChangeWatcher {
    pub(super) tree: TreeWatcher,
    /// The first snapshot was sent.
    pub(super) started: bool,
}

impl ChangeWatcher {
    fn snapshot(&mut self) -> TreeChange {
        let tree = &mut self.tree;
        let state = tree.shared.lock();
        tree.seen = state.version;
        TreeChange::Snapshot(list_entries(&state, &tree.namespace, &tree.full))
    }

    pub(super) async fn next(&mut self) -> Option<Result<TreeChange>> {
        if self.tree.done {
            return None;
        }
        if !self.started {
            self.started = true;
            return Some(Ok(self.snapshot()));
        }
        loop {
            match next_event(&mut self.tree.events, &self.tree.closed).await {
                Next::Event(event) if self.tree.concerns(&event) => {
                    self.tree.seen = event.version;
                    let Some(user) = self.tree.namespace.strip(&event.key) else {
                        continue;
                    };
                    let pair = event.value.as_ref().map(|value| KvPair {
                        key: user.to_owned(),
                        value: value.clone(),
                        last_index: event.version,
                    });
                    return Some(Ok(TreeChange::Changed {
                        key: user.to_owned(),
                        pair,
                    }));
                }
                Next::Event(_) => continue,
                Next::Lagged => return Some(Ok(self.snapshot())),
                Next::Closed => {
                    self.tree.done = true;
                    return Some(Err(Error::Closed {
                        url: self.tree.url.clone(),
                    }));
                }
            }
        }
    }
}

pub(super) enum Next {
    Event(Arc<Event>),
    Lagged,
    Closed,
}

pub(super) async fn next_event(
    events: &mut broadcast::Receiver<Arc<Event>>,
    closed: &CancellationToken,
) -> Next {
    tokio::select! {
        biased;
        _ = closed.cancelled() => Next::Closed,
        r = events.recv() => match r {
            Ok(event) => Next::Event(event),
            Err(broadcast::error::RecvError::Lagged(_)) => Next::Lagged,
            Err(broadcast::error::RecvError::Closed) => Next::Closed,
        },
    }
}

pub(super) fn list_entries(state: &State, namespace: &Namespace, full_prefix: &str) -> Vec<KvPair> {
    let start = if full_prefix.is_empty() {
        String::new()
    } else {
        format!("{full_prefix}/")
    };
    state
        .entries
        .range(start.clone()..)
        .take_while(|(k, _)| k.starts_with(&start))
        .filter_map(|(k, e)| namespace.strip(k).map(|user| MemoryStore::pair(user, e)))
        .collect()
}
