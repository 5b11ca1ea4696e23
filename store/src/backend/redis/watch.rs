//! `watch` and `watch_tree`: a pub/sub subscription that says *when* to
//! re-read, and consistent re-reads that say *what* changed.
//!
//! A watcher re-reads when
//! * a change message carries a version above the counter its last read saw
//!   (older messages are already reflected, so they cost nothing);
//! * the hub reconnected (a new [`Link::epoch`]): messages may have been
//!   lost while the link was down;
//! * the nearest expiry it knows of has passed. Redis expires keys without
//!   telling anyone, so every read also returns each key's `PTTL` and the
//!   watcher arms one timer for the earliest. This is a bounded timer per
//!   known expiry, never a poll: a watch on keys without expiry makes no
//!   request until something changes.
//!
//! Each read is one script, so the state delivered is always a real,
//! consistent state of the store, and a key's version only grows.
//!
//! # Tree changes
//!
//! `watch_tree_changes` ([`ChangeWatcher`]) reads the prefix once, for its
//! first [`TreeChange::Snapshot`]. After that a change message names the
//! key that changed (its channel) and the version of the change, so the
//! watcher re-reads only the keys whose messages carry a version above what
//! it already has, all keys of a burst in one script ([`READ_MANY`]), and
//! sends one [`TreeChange::Changed`] per key whose state moved. A tree
//! change costs the server one `PUBLISH` per subscribed pattern and one
//! `HMGET` + `PTTL` for the read, the client one small reply, whatever the
//! size of the prefix. The prefix is read whole again — and sent as a new
//! `Snapshot` — only when messages may have been missed: the pub/sub link
//! reconnected, or the watcher fell more than [`MAX_LOGGED`] messages
//! behind. Expiries are handled as for the other watches, but per key: at a
//! key's known expiry that key alone is re-read. `watch_tree` keeps its
//! listing client-side over this stream
//! ([`crate::changes::listings_from_changes`]).
//!
//! [`READ_MANY`]: super::scripts::READ_MANY
//! [`MAX_LOGGED`]: super::hub::MAX_LOGGED

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use super::hub::{Link, Subscription};
use super::Core;
use crate::error::Result;
use crate::key::{is_below, Namespace};
use crate::retry::Backoff;
use crate::time::later;
use crate::types::{KvPair, TreeChange};

/// One consistent read of a watched key or tree.
pub(crate) struct Snapshot<T> {
    /// The version counter when the read ran.
    pub counter: u64,
    pub item: T,
    /// The earliest expiry among the keys read.
    pub expires: Option<Instant>,
}

/// What a watcher reads: one key or a tree.
pub(crate) trait Target: Send + Sync + 'static {
    type Item: Clone + PartialEq + Send + 'static;
    fn read<'a>(&'a self, core: &'a Core) -> BoxFuture<'a, Result<Snapshot<Self::Item>>>;
}

/// A watched key.
pub(crate) struct KeyTarget {
    pub user: String,
    pub full: String,
}

impl Target for KeyTarget {
    type Item = Option<KvPair>;
    fn read<'a>(&'a self, core: &'a Core) -> BoxFuture<'a, Result<Snapshot<Self::Item>>> {
        Box::pin(core.read_key(&self.user, &self.full))
    }
}

/// The state of one watch stream. Owns its subscription: dropping the
/// stream unregisters it from the hub.
pub(crate) struct Watcher<T: Target> {
    core: Arc<Core>,
    target: T,
    subscription: Subscription,
    link: watch::Receiver<Link>,
    seen_epoch: u64,
    seen_outages: u64,
    /// The counter of the last good read; messages at or below it are stale.
    seen: u64,
    delivered: Option<T::Item>,
    need_read: bool,
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// A transient error was yielded since the last good read (one per
    /// failure streak is enough; the rest go to the log).
    reported: bool,
    expires: Option<Instant>,
    done: bool,
}

impl<T: Target> Watcher<T> {
    pub(crate) fn new(core: Arc<Core>, target: T, subscription: Subscription) -> Self {
        let mut link = core.hub.link();
        let now = *link.borrow_and_update();
        Watcher {
            core,
            target,
            subscription,
            link,
            seen_epoch: now.epoch,
            seen_outages: now.outages,
            seen: 0,
            delivered: None,
            need_read: true,
            retry_at: None,
            backoff: Backoff::new(),
            reported: false,
            expires: None,
            done: false,
        }
    }

    /// The watch stream over this watcher.
    pub(crate) fn into_stream(self) -> stream::BoxStream<'static, Result<T::Item>> {
        stream::unfold(self, |mut w| async move {
            let item = w.next().await?;
            Some((item, w))
        })
        .boxed()
    }

    async fn next(&mut self) -> Option<Result<T::Item>> {
        if self.done {
            return None;
        }
        loop {
            if self.core.closed.is_cancelled() {
                self.done = true;
                return Some(Err(self.core.closed_error()));
            }
            if self.need_read && self.retry_at.is_none() {
                if let Some(item) = self.read().await {
                    return Some(item);
                }
            }
            let expires = self.expires;
            let retry_at = self.retry_at;
            tokio::select! {
                biased;
                _ = self.core.closed.cancelled() => {}
                changed = self.link.changed() => {
                    if changed.is_err() {
                        // The hub is gone: the store was dropped.
                        self.done = true;
                        return Some(Err(self.core.closed_error()));
                    }
                    let link = *self.link.borrow_and_update();
                    if link.up && link.epoch != self.seen_epoch {
                        self.seen_epoch = link.epoch;
                        self.need_read = true;
                        self.retry_at = None;
                    }
                    if link.outages != self.seen_outages {
                        self.seen_outages = link.outages;
                        self.need_read = true;
                        if !self.reported {
                            self.reported = true;
                            return Some(Err(self.core.unavailable(
                                "the pub/sub connection was lost; re-syncing the watch",
                            )));
                        }
                    }
                }
                _ = self.subscription.signal().changed() => {
                    if self.subscription.signal().latest() > self.seen {
                        self.need_read = true;
                    }
                }
                _ = sleep_until(expires.unwrap_or_else(Instant::now)), if expires.is_some() => {
                    self.expires = None;
                    self.need_read = true;
                }
                _ = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    self.retry_at = None;
                }
            }
        }
    }

    /// Re-reads; returns an item to yield, if any.
    async fn read(&mut self) -> Option<Result<T::Item>> {
        let result = tokio::select! {
            biased;
            _ = self.core.closed.cancelled() => return None,
            r = self.target.read(&self.core) => r,
        };
        match result {
            Ok(snapshot) => {
                self.need_read = false;
                self.reported = false;
                self.backoff.reset();
                self.seen = self.seen.max(snapshot.counter);
                self.expires = snapshot.expires;
                if self.delivered.as_ref() != Some(&snapshot.item) {
                    self.delivered = Some(snapshot.item.clone());
                    return Some(Ok(snapshot.item));
                }
                None
            }
            Err(error) if error.is_transient() => {
                self.retry_at = Some(later(Instant::now(), self.backoff.next_delay()));
                if self.reported {
                    tracing::debug!(url = %self.core.url, %error, "watch re-read failed again");
                    return None;
                }
                self.reported = true;
                Some(Err(error))
            }
            Err(error) => {
                self.done = true;
                Some(Err(error))
            }
        }
    }
}

/// Most keys one re-read of a tree watcher covers (the rest wait for the
/// next one), so one script never runs long.
const MAX_READ_KEYS: usize = 512;

/// Deleted keys a tree watcher remembers, to skip late messages about them;
/// past this many they are forgotten (a late message then costs one read).
const MAX_TOMBSTONES: usize = 4096;

/// The state of one `watch_tree_changes` stream (see the module docs). Owns
/// its subscription: dropping the stream unregisters it from the hub.
pub(crate) struct ChangeWatcher {
    core: Arc<Core>,
    namespace: Namespace,
    /// The user prefix, for errors.
    target: String,
    full_prefix: String,
    subscription: Subscription,
    link: watch::Receiver<Link>,
    seen_epoch: u64,
    seen_outages: u64,
    /// The counter of the last full read: messages at or below it are
    /// reflected in it.
    base: u64,
    /// Every key of the tree (full name) and the version delivered.
    present: HashMap<String, u64>,
    /// Keys found absent, with the counter of the read that found them so.
    gone: HashMap<String, u64>,
    /// Keys to re-read, `(full, user)`, in the order their messages came.
    pending: VecDeque<(String, String)>,
    pending_set: HashSet<String>,
    /// Known expiries (deadline, full key), earliest first.
    expiries: BTreeSet<(Instant, String)>,
    expiry_of: HashMap<String, Instant>,
    queue: VecDeque<TreeChange>,
    need_snapshot: bool,
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// A transient error was yielded since the last good read.
    reported: bool,
    done: bool,
}

impl ChangeWatcher {
    pub(crate) fn new(
        core: Arc<Core>,
        namespace: Namespace,
        target: String,
        full_prefix: String,
        subscription: Subscription,
    ) -> Self {
        let mut link = core.hub.link();
        let now = *link.borrow_and_update();
        ChangeWatcher {
            core,
            namespace,
            target,
            full_prefix,
            subscription,
            link,
            seen_epoch: now.epoch,
            seen_outages: now.outages,
            base: 0,
            present: HashMap::new(),
            gone: HashMap::new(),
            pending: VecDeque::new(),
            pending_set: HashSet::new(),
            expiries: BTreeSet::new(),
            expiry_of: HashMap::new(),
            queue: VecDeque::new(),
            need_snapshot: true,
            retry_at: None,
            backoff: Backoff::new(),
            reported: false,
            done: false,
        }
    }

    /// The change stream over this watcher.
    pub(crate) fn into_stream(self) -> stream::BoxStream<'static, Result<TreeChange>> {
        stream::unfold(self, |mut w| async move {
            let item = w.next().await?;
            Some((item, w))
        })
        .boxed()
    }

    async fn next(&mut self) -> Option<Result<TreeChange>> {
        loop {
            if let Some(change) = self.queue.pop_front() {
                return Some(Ok(change));
            }
            if self.done {
                return None;
            }
            if self.core.closed.is_cancelled() {
                self.done = true;
                return Some(Err(self.core.closed_error()));
            }
            self.take_log();
            self.take_due(Instant::now());
            if self.retry_at.is_none() && (self.need_snapshot || !self.pending.is_empty()) {
                let read = if self.need_snapshot {
                    self.snapshot().await
                } else {
                    self.read_pending().await
                };
                match read {
                    Ok(()) => {
                        self.reported = false;
                        self.backoff.reset();
                    }
                    Err(error) if error.is_transient() => {
                        self.retry_at = Some(later(Instant::now(), self.backoff.next_delay()));
                        if self.reported {
                            tracing::debug!(url = %self.core.url, %error, "tree watch re-read failed again");
                        } else {
                            self.reported = true;
                            return Some(Err(error));
                        }
                    }
                    Err(error) => {
                        self.done = true;
                        return Some(Err(error));
                    }
                }
                continue;
            }
            let expires = self.expiries.first().map(|(at, _)| *at);
            let retry_at = self.retry_at;
            tokio::select! {
                biased;
                _ = self.core.closed.cancelled() => {}
                changed = self.link.changed() => {
                    if changed.is_err() {
                        // The hub is gone: the store was dropped.
                        self.done = true;
                        return Some(Err(self.core.closed_error()));
                    }
                    let link = *self.link.borrow_and_update();
                    if link.up && link.epoch != self.seen_epoch {
                        // Messages may have been lost while the link was down.
                        self.seen_epoch = link.epoch;
                        self.need_snapshot = true;
                        self.retry_at = None;
                    }
                    if link.outages != self.seen_outages {
                        self.seen_outages = link.outages;
                        self.need_snapshot = true;
                        if !self.reported {
                            self.reported = true;
                            return Some(Err(self.core.unavailable(
                                "the pub/sub connection was lost; re-syncing the watch",
                            )));
                        }
                    }
                }
                _ = self.subscription.signal().changed() => {}
                _ = sleep_until(expires.unwrap_or_else(Instant::now)), if expires.is_some() => {}
                _ = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    self.retry_at = None;
                }
            }
        }
    }

    /// Moves the keys of new messages to `pending`; stale ones are dropped.
    fn take_log(&mut self) {
        let log = self.subscription.signal().take_log();
        if log.overflowed {
            tracing::debug!(url = %self.core.url, prefix = %self.target, "tree watch fell behind its messages; re-reading the prefix");
            self.need_snapshot = true;
        }
        if self.need_snapshot {
            // The full read covers them.
            return;
        }
        for (channel, version) in log.messages {
            if version <= self.base {
                continue;
            }
            let Some(full) = channel.strip_prefix(self.core.channel_prefix.as_str()) else {
                continue;
            };
            let known = self.present.get(full).or_else(|| self.gone.get(full));
            if known.is_some_and(|v| *v >= version) || self.pending_set.contains(full) {
                continue;
            }
            if !self.full_prefix.is_empty() && !is_below(&self.full_prefix, full) {
                continue;
            }
            let Some(user) = self.namespace.strip(full) else {
                continue;
            };
            self.pending_set.insert(full.to_owned());
            self.pending.push_back((full.to_owned(), user.to_owned()));
        }
    }

    /// Moves the keys whose known expiry has passed to `pending`.
    fn take_due(&mut self, now: Instant) {
        while let Some((at, _)) = self.expiries.first() {
            if *at > now {
                break;
            }
            let Some((_, full)) = self.expiries.pop_first() else {
                break;
            };
            self.expiry_of.remove(&full);
            if self.pending_set.contains(&full) {
                continue;
            }
            let Some(user) = self.namespace.strip(&full).map(str::to_owned) else {
                continue;
            };
            self.pending_set.insert(full.clone());
            self.pending.push_back((full, user));
        }
    }

    fn set_expiry(&mut self, full: &str, at: Option<Instant>) {
        if let Some(old) = self.expiry_of.remove(full) {
            self.expiries.remove(&(old, full.to_owned()));
        }
        if let Some(at) = at {
            self.expiry_of.insert(full.to_owned(), at);
            self.expiries.insert((at, full.to_owned()));
        }
    }

    /// Reads the whole prefix and queues it as a snapshot.
    async fn snapshot(&mut self) -> Result<()> {
        // The read reflects every message logged so far.
        let _ = self.subscription.signal().take_log();
        let read = tokio::select! {
            biased;
            _ = self.core.closed.cancelled() => return Err(self.core.closed_error()),
            read = self.core.read_tree_rows(&self.full_prefix) => read,
        };
        let (counter, rows) = read?;
        self.need_snapshot = false;
        self.base = counter;
        self.present.clear();
        self.gone.clear();
        self.pending.clear();
        self.pending_set.clear();
        self.expiries.clear();
        self.expiry_of.clear();
        let mut pairs = Vec::with_capacity(rows.len());
        for (pair, at) in rows {
            let full = self.namespace.join(&pair.key);
            self.set_expiry(&full, at);
            self.present.insert(full, pair.last_index);
            pairs.push(pair);
        }
        // Changes not yet taken are older than this read: it replaces them.
        self.queue.clear();
        self.queue.push_back(TreeChange::Snapshot(pairs));
        Ok(())
    }

    /// Re-reads the pending keys (up to [`MAX_READ_KEYS`]) in one script
    /// and queues a change for each whose state moved.
    async fn read_pending(&mut self) -> Result<()> {
        let n = self.pending.len().min(MAX_READ_KEYS);
        let batch: Vec<(String, String)> = self.pending.iter().take(n).cloned().collect();
        let read = tokio::select! {
            biased;
            _ = self.core.closed.cancelled() => return Err(self.core.closed_error()),
            read = self.core.read_keys(&self.target, &batch) => read,
        };
        let (counter, states) = read?;
        for _ in 0..n {
            if let Some((full, _)) = self.pending.pop_front() {
                self.pending_set.remove(&full);
            }
        }
        for ((full, user), state) in batch.into_iter().zip(states) {
            match state {
                Some((pair, at)) => {
                    self.set_expiry(&full, at);
                    self.gone.remove(&full);
                    let known = self.present.get(&full).copied();
                    // Never backwards, and nothing new if already delivered.
                    if known.is_some_and(|v| v >= pair.last_index) {
                        continue;
                    }
                    self.present.insert(full, pair.last_index);
                    self.queue.push_back(TreeChange::Changed {
                        key: user,
                        pair: Some(pair),
                    });
                }
                None => {
                    self.set_expiry(&full, None);
                    let was_present = self.present.remove(&full).is_some();
                    if self.gone.len() >= MAX_TOMBSTONES {
                        self.gone.clear();
                    }
                    self.gone.insert(full, counter);
                    if was_present {
                        self.queue.push_back(TreeChange::Changed {
                            key: user,
                            pair: None,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Escapes a string for a Redis glob pattern (`PSUBSCRIBE`).
pub(crate) fn glob_escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 4);
    for c in raw.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
