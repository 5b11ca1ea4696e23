//! `watch` and `watch_tree` on Consul blocking queries.
//!
//! A watch is a pull loop, not a task: each `next()` on the stream issues
//! `GET /v1/kv/…?index=I&wait=…` and returns when the state differs from the
//! one last delivered. Nothing runs between polls, so a slow consumer simply
//! gets the latest state (intermediate ones coalesced), and dropping the
//! stream drops the in-flight request, which closes its connection.
//!
//! Index rules from Consul's blocking-query documentation:
//! * the first read is non-blocking and yields the current state and index;
//! * an index that goes backwards (snapshot restore, a rebuilt cluster, a
//!   restarted `-dev` agent, tombstone reaping under a prefix) resets the
//!   cursor to the index that came back with the fresh state;
//! * a query sent with index ≥ 1 that comes back early without the index
//!   moving is a server oddity, and the next query waits a second instead of
//!   spinning.
//!
//! A failed request becomes an `Err` item whose `is_transient()` is true; the
//! next poll retries after an exponential backoff (100 ms doubling to 5 s)
//! with a non-blocking read, then blocks again from there. The read after a
//! failure must not block: an agent that came back with a younger history
//! would hold a query for an index it has not reached yet for the whole
//! `wait`, hiding the reset (and every change) until then. Comparing states
//! rather than replaying events means nothing is missed across the gap; the
//! states in it are coalesced. A non-transient error (ACL refusal, closed
//! store) is the last item.
//!
//! # Cost of a tree change
//! A blocking query on a prefix answers with the whole prefix: Consul has no
//! API that returns only what changed under it. So every change under a
//! watched prefix costs the agent the encoding of every entry below it and
//! the client their transfer and decoding, whatever the size of the change
//! — this grows with the prefix and cannot be avoided through the HTTP API.
//! What the client can avoid, it does: `watch_tree_changes`
//! ([`ChangeWatch`]) compares each answer with the `ModifyIndex` it holds
//! per key and sends one [`TreeChange::Changed`] per key that moved (no
//! second listing is built, no other key is copied); nothing is missed
//! across a failure, because the next answer is compared with the same
//! state, so it never needs to send a second [`TreeChange::Snapshot`].

use std::collections::HashMap;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::http::{Entry, Http};
use crate::error::{Error, Result};
use crate::key::{is_below, normalize_key, Namespace};
use crate::retry::Backoff;
use crate::types::{KvPair, Listing, TreeChange, TreeChangeStream, TreeWatchStream, WatchStream};

/// How long one blocking query may wait on the server. It also bounds how
/// long a silently dead connection goes unnoticed.
pub(crate) const BLOCKING_WAIT: Duration = Duration::from_secs(60);

/// Pause after a blocking query that returned early without progress.
const STALL_PAUSE: Duration = Duration::from_secs(1);

/// What a watch needs from its store handle.
#[derive(Clone)]
pub(crate) struct WatchContext {
    pub(crate) http: Http,
    pub(crate) closed: CancellationToken,
    /// The redacted store URL, for errors.
    pub(crate) url: String,
}

/// The blocking-query cursor and retry state shared by both watch kinds.
struct Cursor {
    ctx: WatchContext,
    /// The index of the state last read (0 before the first read).
    index: u64,
    /// False for the first read and after a failure: read without blocking.
    block: bool,
    retry: Backoff,
    pause: Option<Duration>,
    done: bool,
}

enum Poll<T> {
    /// The state at the (new) cursor.
    State(T),
    /// An item to hand to the consumer as is (an error).
    Item(Error),
}

impl Cursor {
    fn new(ctx: WatchContext) -> Self {
        Cursor {
            ctx,
            index: 0,
            block: false,
            retry: Backoff::new(),
            pause: None,
            done: false,
        }
    }

    /// Runs one read (blocking unless the cursor is fresh) with `read`, then
    /// moves the cursor.
    async fn poll<T, F, Fut>(&mut self, operation: &'static str, target: &str, read: F) -> Poll<T>
    where
        F: FnOnce(Http, Option<(u64, Duration)>) -> Fut,
        Fut: std::future::Future<Output = Result<(u64, T), super::error::ConsulError>>,
    {
        let closed = self.ctx.closed.clone();
        if let Some(pause) = self.pause.take() {
            tokio::select! {
                biased;
                _ = closed.cancelled() => return Poll::Item(self.closed_error()),
                _ = tokio::time::sleep(pause) => {}
            }
        }
        let block = (self.block && self.index > 0).then_some((self.index, BLOCKING_WAIT));
        let started = Instant::now();
        let outcome = tokio::select! {
            biased;
            _ = closed.cancelled() => return Poll::Item(self.closed_error()),
            outcome = read(self.ctx.http.clone(), block) => outcome,
        };
        match outcome {
            Ok((index, state)) => {
                self.retry.reset();
                self.block = true;
                if index < self.index {
                    tracing::debug!(from = self.index, to = index, %target, "consul index went backwards; cursor reset");
                } else if block.is_some()
                    && index == self.index
                    && started.elapsed() < BLOCKING_WAIT / 2
                {
                    tracing::debug!(index, %target, "blocking query returned early without progress");
                    self.pause = Some(STALL_PAUSE);
                }
                // The state came with this index, whichever way it moved.
                self.index = index;
                Poll::State(state)
            }
            Err(e) => {
                let error = e.into_error(operation, target, &self.ctx.url);
                self.block = false;
                if error.is_transient() {
                    crate::metrics::watch_reconnect("consul");
                    self.pause = Some(self.retry.next_delay());
                } else {
                    self.done = true;
                }
                Poll::Item(error)
            }
        }
    }

    fn closed_error(&mut self) -> Error {
        self.done = true;
        Error::Closed {
            url: self.ctx.url.clone(),
        }
    }
}

/// The state machine behind [`watch`]; also used by locks to wait for and
/// monitor their key.
pub(crate) struct KeyWatch {
    cursor: Cursor,
    user: String,
    full: String,
    delivered: Option<Option<KvPair>>,
}

impl KeyWatch {
    pub(crate) fn new(ctx: WatchContext, user: String, full: String) -> Self {
        KeyWatch {
            cursor: Cursor::new(ctx),
            user,
            full,
            delivered: None,
        }
    }

    /// The next state that differs from the last one returned (the current
    /// state first), or an error item; `None` after a final error.
    pub(crate) async fn next(&mut self) -> Option<Result<Option<KvPair>>> {
        loop {
            if self.cursor.done {
                return None;
            }
            let full = self.full.clone();
            let poll = self
                .cursor
                .poll("watch", &self.user, |http, block| async move {
                    http.get(&full, block).await
                })
                .await;
            match poll {
                Poll::Item(error) => return Some(Err(error)),
                Poll::State(entry) => {
                    let state = entry.map(|e| pair(self.user.clone(), e));
                    if self.delivered.as_ref() != Some(&state) {
                        self.delivered = Some(state.clone());
                        return Some(Ok(state));
                    }
                }
            }
        }
    }
}

struct TreeWatch {
    cursor: Cursor,
    namespace: Namespace,
    user_prefix: String,
    full_prefix: String,
    delivered: Option<Vec<KvPair>>,
}

impl TreeWatch {
    async fn next(&mut self) -> Option<Result<Vec<KvPair>>> {
        loop {
            if self.cursor.done {
                return None;
            }
            let full = self.full_prefix.clone();
            let poll = self
                .cursor
                .poll("watch_tree", &self.user_prefix, |http, block| async move {
                    http.list(&full, block).await
                })
                .await;
            match poll {
                Poll::Item(error) => return Some(Err(error)),
                Poll::State(entries) => {
                    let listing = listing(&self.namespace, &self.user_prefix, entries);
                    if self.delivered.as_ref() != Some(&listing) {
                        self.delivered = Some(listing.clone());
                        return Some(Ok(listing));
                    }
                }
            }
        }
    }
}

/// The state machine behind `watch_tree_changes` (see the module docs).
struct ChangeWatch {
    cursor: Cursor,
    namespace: Namespace,
    user_prefix: String,
    full_prefix: String,
    /// The `ModifyIndex` delivered for every key, by user key; `None`
    /// before the first answer.
    known: Option<HashMap<String, u64>>,
    queue: std::collections::VecDeque<TreeChange>,
}

impl ChangeWatch {
    async fn next(&mut self) -> Option<Result<TreeChange>> {
        loop {
            if let Some(change) = self.queue.pop_front() {
                return Some(Ok(change));
            }
            if self.cursor.done {
                return None;
            }
            let full = self.full_prefix.clone();
            let poll = self
                .cursor
                .poll("watch_tree", &self.user_prefix, |http, block| async move {
                    http.list(&full, block).await
                })
                .await;
            let entries = match poll {
                Poll::Item(error) => return Some(Err(error)),
                Poll::State(entries) => entries,
            };
            let Some(known) = self.known.as_mut() else {
                let pairs = listing(&self.namespace, &self.user_prefix, entries);
                self.known = Some(
                    pairs
                        .iter()
                        .map(|p| (p.key.clone(), p.last_index))
                        .collect(),
                );
                return Some(Ok(TreeChange::Snapshot(pairs)));
            };
            let mut changed = Vec::new();
            let mut present = std::collections::HashSet::with_capacity(entries.len());
            for entry in entries {
                let Some(user) = addressable(&self.namespace, &self.user_prefix, &entry.key) else {
                    continue;
                };
                present.insert(user.to_owned());
                if known.get(user) == Some(&entry.modify_index) {
                    continue;
                }
                let user = user.to_owned();
                known.insert(user.clone(), entry.modify_index);
                changed.push(pair(user, entry));
            }
            let mut gone: Vec<String> = known
                .keys()
                .filter(|k| !present.contains(*k))
                .cloned()
                .collect();
            for key in &gone {
                known.remove(key);
            }
            changed.sort_unstable_by(|a, b| a.key.cmp(&b.key));
            gone.sort_unstable();
            self.queue
                .extend(changed.into_iter().map(|p| TreeChange::Changed {
                    key: p.key.clone(),
                    pair: Some(p),
                }));
            self.queue.extend(
                gone.into_iter()
                    .map(|key| TreeChange::Changed { key, pair: None }),
            );
        }
    }
}

/// The stream of [`crate::Store::watch_tree_changes`].
pub(crate) fn watch_tree_changes(
    ctx: WatchContext,
    namespace: Namespace,
    user_prefix: String,
    full_prefix: String,
) -> TreeChangeStream {
    let watch = ChangeWatch {
        cursor: Cursor::new(ctx),
        namespace,
        user_prefix,
        full_prefix,
        known: None,
        queue: std::collections::VecDeque::new(),
    };
    stream::unfold(watch, |mut w| async move {
        let item = w.next().await?;
        Some((item, w))
    })
    .boxed()
}

/// The stream of [`crate::Store::watch`].
pub(crate) fn watch(ctx: WatchContext, user: String, full: String) -> WatchStream {
    stream::unfold(KeyWatch::new(ctx, user, full), |mut w| async move {
        let item = w.next().await?;
        Some((item, w))
    })
    .boxed()
}

/// The stream of [`crate::Store::watch_tree`].
pub(crate) fn watch_tree(
    ctx: WatchContext,
    namespace: Namespace,
    user_prefix: String,
    full_prefix: String,
) -> TreeWatchStream {
    let watch = TreeWatch {
        cursor: Cursor::new(ctx),
        namespace,
        user_prefix,
        full_prefix,
        delivered: None,
    };
    stream::unfold(watch, |mut w| async move {
        let item = w.next().await?.map(Listing::from);
        Some((item, w))
    })
    .boxed()
}

/// An entry as the pair of a known user key.
pub(crate) fn pair(user: String, entry: Entry) -> KvPair {
    KvPair {
        key: user,
        value: entry.value,
        last_index: entry.modify_index,
    }
}

/// The user key of an entry's full key if `list(user_prefix)` would
/// return it (see [`listing`]).
fn addressable<'a>(namespace: &Namespace, user_prefix: &str, full: &'a str) -> Option<&'a str> {
    let user = namespace.strip(full)?;
    if !is_below(user_prefix, user) || normalize_key(user).ok()? != user {
        return None;
    }
    Some(user)
}

/// What `list(user_prefix)` returns for these entries: keys inside the
/// namespace, strictly below the prefix, sorted. Keys another tool wrote that
/// anykv cannot address (`dir/` folder markers, `a//b`) are left out.
pub(crate) fn listing(
    namespace: &Namespace,
    user_prefix: &str,
    entries: Vec<Entry>,
) -> Vec<KvPair> {
    let mut pairs: Vec<KvPair> = entries
        .into_iter()
        .filter_map(|entry| {
            let user = addressable(namespace, user_prefix, &entry.key)?.to_owned();
            Some(pair(user, entry))
        })
        .collect();
    pairs.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    pairs
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn entry(key: &str, index: u64) -> Entry {
        Entry {
            key: key.into(),
            value: Bytes::from_static(b"v"),
            modify_index: index,
            session: None,
            flags: 0,
        }
    }

    #[test]
    fn listing_keeps_only_addressable_keys_below_the_prefix() {
        let ns = Namespace::new("app").unwrap();
        let entries = vec![
            entry("app/t/b", 3),
            entry("app/t", 1),
            entry("app/t/a", 2),
            entry("app/t/dir/", 4),
            entry("app/tt/x", 5),
            entry("app/t//x", 6),
            entry("apple/t/x", 7),
        ];
        let keys: Vec<String> = listing(&ns, "t", entries)
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(keys, vec!["t/a", "t/b"]);
    }
}
