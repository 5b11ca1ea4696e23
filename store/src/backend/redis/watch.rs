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

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use super::hub::{Link, Subscription};
use super::Core;
use crate::error::Result;
use crate::retry::Backoff;
use crate::time::later;
use crate::types::KvPair;

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

/// A watched tree.
pub(crate) struct TreeTarget {
    pub full_prefix: String,
}

impl Target for TreeTarget {
    type Item = Vec<KvPair>;
    fn read<'a>(&'a self, core: &'a Core) -> BoxFuture<'a, Result<Snapshot<Self::Item>>> {
        Box::pin(core.read_tree(&self.full_prefix))
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
