//! `watch` and `watch_tree` on persistent watches.
//!
//! # Cost of a tree change
//! `watch_tree_changes` ([`ChangeWatch`]) lists the prefix once for its
//! first [`TreeChange::Snapshot`]. After that each event of the recursive
//! watch names the znode that changed; the stream maps it to its key (events
//! of directories and lock queues are dropped) and reads only those leaves,
//! a burst in one multi-read per [`MAX_BATCH`] leaves, then sends one
//! [`TreeChange::Changed`] per key whose state moved. So a change costs the
//! server one event and one `getData`, the client one small read, whatever
//! the size of the prefix. The prefix is listed again — a new `Snapshot` —
//! only when events may have been lost: the watch was added again (a
//! reconnect or a new session), a read failed, or more than
//! [`MAX_PENDING`] events queued up. `watch_tree` keeps its listing
//! client-side over this stream
//! ([`crate::changes::listings_from_changes`]).
//!
//! A stream adds one persistent watch — `Persistent` on the key's leaf,
//! `PersistentRecursive` on the prefix's directory — and re-reads after
//! events: it never re-arms, so nothing falls between two one-shot watches.
//! Queued events are coalesced into one read. The streams do their work when
//! polled; there is no background task, and dropping a stream drops the
//! watcher, which removes the watch on the server.
//!
//! Connection trouble: when the session disconnects the stream yields one
//! transient [`Error::Unavailable`] and waits; when it reconnects it adds its
//! watch again and re-reads, so the final state is never missed. (The server
//! drops a connection's watches when it closes; `zookeeper-client` 0.11
//! re-registers one-shot watches on reconnect but not persistent ones, and
//! ZooKeeper may drop events of the disconnected period anyway,
//! ZOOKEEPER-4698.) When
//! the session expires the stream reports a transient error, re-adds its
//! watch on the handle's new session and re-reads. States older than what
//! was already delivered (possible only across sessions) are skipped, so
//! `last_index` never goes backwards.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use futures::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use crate::error::Error;
use crate::key::Namespace;
use crate::retry::Backoff;
use crate::time::later;
use crate::types::{KvPair, TreeChange, TreeChangeStream, WatchStream};

use super::error::{map, unavailable};
use super::kv;
use super::path::{classify, join, join_key, Child};
use super::session::{Fail, Inner, Session};

/// Leaves per multi-read of a tree change stream.
const MAX_BATCH: usize = 128;

/// Changed znodes a tree change stream queues before it lists the prefix
/// again instead.
const MAX_PENDING: usize = 16_384;

/// What the watch loop asks its owner to do next.
enum Step {
    /// (Re-)read the watched state with this session.
    Read(Arc<Session>),
    /// Report a transient error; the stream goes on.
    Fail(Error),
    /// Report a terminal error; the stream ends after it.
    End(Error),
    /// The stream has ended.
    Done,
}

/// The session-and-events half shared by both kinds of stream.
struct Core {
    inner: Weak<Inner>,
    closed: CancellationToken,
    url: String,
    key: String,
    path: String,
    mode: zk::AddWatchMode,
    watcher: Option<zk::PersistentWatcher>,
    /// The connection came back: add the watch again before reading.
    rewatch: bool,
    /// Session the watch was added on (0 = none yet).
    session_id: i64,
    need_read: bool,
    /// A disconnect was reported and no successful read followed yet.
    reported: bool,
    backoff: Backoff,
    retry_at: Option<Instant>,
    done: bool,
    /// Paths of node events not yet read, for a tree change stream
    /// (`None` for the others, which re-read everything anyway).
    changed: Option<Vec<String>>,
    /// Events may have been missed: the owner must read everything.
    full: bool,
}

impl Core {
    fn new(inner: &Arc<Inner>, key: String, path: String, mode: zk::AddWatchMode) -> Self {
        Core {
            inner: Arc::downgrade(inner),
            closed: inner.closed.clone(),
            url: inner.url().to_owned(),
            key,
            path,
            mode,
            watcher: None,
            rewatch: false,
            session_id: 0,
            need_read: true,
            reported: false,
            backoff: Backoff::new(),
            retry_at: None,
            done: false,
            changed: None,
            full: true,
        }
    }

    fn closed(&mut self) -> Step {
        self.done = true;
        self.watcher = None;
        Step::End(Error::Closed {
            url: self.url.clone(),
        })
    }

    /// Classifies `error`: transient errors back off and keep the stream.
    fn failed(&mut self, error: Error) -> Step {
        if error.is_transient() {
            crate::metrics::watch_reconnect("zookeeper");
            self.retry_at = Some(later(Instant::now(), self.backoff.next_delay()));
            Step::Fail(error)
        } else {
            self.done = true;
            self.watcher = None;
            Step::End(error)
        }
    }

    /// The owner read successfully.
    fn read_ok(&mut self) {
        self.need_read = false;
        self.reported = false;
        self.backoff.reset();
        self.retry_at = None;
    }

    /// The owner's read failed.
    fn read_failed(&mut self, error: Fail) -> Step {
        self.need_read = true;
        let error = match error {
            Fail::Done(e) => e,
            Fail::Zk(e) => map(e, &self.key, &self.url),
        };
        self.failed(error)
    }

    async fn session(&mut self) -> Result<Arc<Session>, Step> {
        let Some(inner) = self.inner.upgrade() else {
            return Err(self.closed());
        };
        match inner.session().await {
            Ok(session) => Ok(session),
            Err(Error::Closed { .. }) => Err(self.closed()),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Adds the watch on the current session (replacing the old watcher only
    /// once the new one is in place).
    async fn establish(&mut self) -> Result<Arc<Session>, Step> {
        let session = self.session().await?;
        let watcher = match session.client.watch(&self.path, self.mode).await {
            Ok(watcher) => watcher,
            Err(e) => return Err(self.failed(map(e, &self.key, &self.url))),
        };
        if self.session_id != 0 && self.session_id != session.id {
            // A new session may talk to a server that is behind the old one.
            let _ = session.client.sync(&self.path).await;
        }
        self.session_id = session.id;
        self.watcher = Some(watcher);
        self.rewatch = false;
        self.need_read = true;
        self.full = true;
        Ok(session)
    }

    /// Handles one event; `Some` if it must be reported at once.
    fn on_event(&mut self, event: zk::WatchedEvent) -> Option<Step> {
        if event.event_type != zk::EventType::Session {
            self.need_read = true;
            if let Some(changed) = self.changed.as_mut() {
                if changed.len() < MAX_PENDING {
                    changed.push(event.path);
                } else {
                    changed.clear();
                    self.full = true;
                }
            }
            return None;
        }
        match event.session_state {
            zk::SessionState::Disconnected => {
                if !self.reported {
                    self.reported = true;
                    return Some(Step::Fail(unavailable(
                        &self.url,
                        "connection to ZooKeeper lost; the watch resumes when it is back",
                    )));
                }
                None
            }
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                // The server forgot the watch with the old connection, and
                // events of the disconnected period may be lost.
                self.rewatch = true;
                self.need_read = true;
                None
            }
            zk::SessionState::AuthFailed => {
                self.done = true;
                self.watcher = None;
                Some(Step::End(map(zk::Error::AuthFailed, &self.key, &self.url)))
            }
            zk::SessionState::Expired | zk::SessionState::Closed => {
                // The watcher is dead; it must not be polled again.
                self.watcher = None;
                if self.closed.is_cancelled() {
                    return Some(self.closed());
                }
                Some(Step::Fail(unavailable(
                    &self.url,
                    "ZooKeeper session ended; the watch moves to a new session",
                )))
            }
        }
    }

    /// Waits until there is something to do.
    async fn step(&mut self) -> Step {
        loop {
            if self.done {
                return Step::Done;
            }
            if self.closed.is_cancelled() {
                return self.closed();
            }
            if let Some(at) = self.retry_at.take() {
                tokio::select! {
                    biased;
                    _ = self.closed.cancelled() => return self.closed(),
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            if self.watcher.is_none() || self.rewatch {
                match self.establish().await {
                    Ok(session) => return Step::Read(session),
                    Err(step) => return step,
                }
            }
            if self.need_read {
                return match self.session().await {
                    Ok(session) => Step::Read(session),
                    Err(step) => step,
                };
            }
            let Some(watcher) = self.watcher.as_mut() else {
                continue;
            };
            let event = tokio::select! {
                biased;
                _ = self.closed.cancelled() => return self.closed(),
                event = watcher.changed() => event,
            };
            if let Some(step) = self.on_event(event) {
                return step;
            }
            // Coalesce whatever else is queued into one read.
            while let Some(watcher) = self.watcher.as_mut() {
                let Some(event) = watcher.changed().now_or_never() else {
                    break;
                };
                if let Some(step) = self.on_event(event) {
                    return step;
                }
            }
        }
    }
}

/// A `watch(key)` stream.
struct KeyWatch {
    core: Core,
    user: String,
    /// `None` = nothing delivered yet; `Some(None)` = "absent" delivered.
    delivered: Option<Option<u64>>,
    high_water: u64,
}

impl KeyWatch {
    fn offer(&mut self, state: Option<KvPair>) -> Option<Option<KvPair>> {
        let index = state.as_ref().map(|p| p.last_index);
        if index.is_some_and(|i| i < self.high_water) {
            return None;
        }
        if self.delivered == Some(index) {
            return None;
        }
        self.delivered = Some(index);
        if let Some(i) = index {
            self.high_water = i;
        }
        Some(state)
    }

    async fn next(&mut self) -> Option<crate::Result<Option<KvPair>>> {
        loop {
            match self.core.step().await {
                Step::Read(session) => {
                    let state = match session.client.get_data(&self.core.path).await {
                        Ok((data, stat)) => {
                            Some(kv::pair(self.user.clone(), Bytes::from(data), &stat))
                        }
                        Err(zk::Error::NoNode) => None,
                        Err(e) => match self.core.read_failed(Fail::Zk(e)) {
                            Step::Fail(e) | Step::End(e) => return Some(Err(e)),
                            _ => continue,
                        },
                    };
                    self.core.read_ok();
                    if let Some(item) = self.offer(state) {
                        return Some(Ok(item));
                    }
                }
                Step::Fail(e) | Step::End(e) => return Some(Err(e)),
                Step::Done => return None,
            }
        }
    }
}

/// A `watch_tree_changes(prefix)` stream (see the module docs).
struct ChangeWatch {
    core: Core,
    namespace: Namespace,
    /// The full (namespaced) prefix and its directory znode.
    prefix: String,
    dir: String,
    /// The version delivered of every key in the tree, by user key.
    present: HashMap<String, u64>,
    queue: std::collections::VecDeque<TreeChange>,
}

impl ChangeWatch {
    /// The leaf and user key of an event's znode, if it is a key's leaf
    /// below the prefix.
    fn key_of(&self, path: &str) -> Option<(String, String)> {
        let rest = if self.dir == "/" {
            path
        } else {
            path.strip_prefix(self.dir.as_str())?
        };
        let rest = rest.strip_prefix('/')?;
        let mut parent = self.dir.clone();
        let mut key = self.prefix.clone();
        let mut names = rest.split('/').peekable();
        while let Some(name) = names.next() {
            match (classify(&parent, name), names.peek().is_none()) {
                (Child::Dir(segment), false) => key = join_key(&key, &segment),
                (Child::Leaf(segment), true) => key = join_key(&key, &segment),
                _ => return None,
            }
            parent = join(&parent, name);
        }
        let user = self.namespace.strip(&key)?.to_owned();
        Some((parent, user))
    }

    /// Lists the prefix and queues it as a snapshot.
    async fn snapshot(&mut self, session: &Session) -> Result<(), Fail> {
        if let Some(changed) = self.core.changed.as_mut() {
            // The listing reflects every event taken so far.
            changed.clear();
        }
        let listing = kv::list(session, &self.namespace, &self.prefix).await?;
        self.core.full = false;
        self.present = listing
            .iter()
            .map(|p| (p.key.clone(), p.last_index))
            .collect();
        // Changes not yet taken are older than this listing.
        self.queue.clear();
        self.queue.push_back(TreeChange::Snapshot(listing));
        Ok(())
    }

    /// Reads the leaves of the events taken so far and queues the changes.
    async fn read_changed(&mut self, session: &Session) -> Result<(), Fail> {
        let paths = self
            .core
            .changed
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut seen = HashSet::new();
        let leaves: Vec<(String, String)> = paths
            .iter()
            .filter_map(|path| self.key_of(path))
            .filter(|(leaf, _)| seen.insert(leaf.clone()))
            .collect();
        for batch in leaves.chunks(MAX_BATCH) {
            let mut reader = session.client.new_multi_reader();
            for (leaf, _) in batch {
                reader.add_get_data(leaf)?;
            }
            let results = reader.commit().await?;
            if results.len() != batch.len() {
                return Err(Fail::Zk(zk::Error::UnexpectedError(
                    "multi-read answered out of order".into(),
                )));
            }
            for ((_, user), result) in batch.iter().zip(results) {
                match result {
                    zk::MultiReadResult::Data { data, stat } => {
                        let pair = kv::pair(user.clone(), Bytes::from(data), &stat);
                        // Never backwards, and nothing new if delivered.
                        if self
                            .present
                            .get(user)
                            .is_some_and(|v| *v >= pair.last_index)
                        {
                            continue;
                        }
                        self.present.insert(user.clone(), pair.last_index);
                        self.queue.push_back(TreeChange::Changed {
                            key: user.clone(),
                            pair: Some(pair),
                        });
                    }
                    zk::MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    } => {
                        if self.present.remove(user).is_some() {
                            self.queue.push_back(TreeChange::Changed {
                                key: user.clone(),
                                pair: None,
                            });
                        }
                    }
                    zk::MultiReadResult::Error { err } => return Err(Fail::Zk(err)),
                    _ => {
                        return Err(Fail::Zk(zk::Error::UnexpectedError(
                            "multi-read answered out of order".into(),
                        )))
                    }
                }
            }
        }
        Ok(())
    }

    async fn next(&mut self) -> Option<crate::Result<TreeChange>> {
        loop {
            if let Some(change) = self.queue.pop_front() {
                return Some(Ok(change));
            }
            match self.core.step().await {
                Step::Read(session) => {
                    let read = if self.core.full {
                        self.snapshot(&session).await
                    } else {
                        self.read_changed(&session).await
                    };
                    match read {
                        Ok(()) => self.core.read_ok(),
                        Err(e) => {
                            // What the failed read should have covered is
                            // covered by listing again.
                            self.core.full = true;
                            match self.core.read_failed(e) {
                                Step::Fail(e) | Step::End(e) => return Some(Err(e)),
                                _ => continue,
                            }
                        }
                    }
                }
                Step::Fail(e) | Step::End(e) => return Some(Err(e)),
                Step::Done => return None,
            }
        }
    }
}

/// The stream of `watch(user)` on the leaf `leaf`.
pub(super) fn watch_key(inner: &Arc<Inner>, user: String, leaf: String) -> WatchStream {
    let core = Core::new(inner, user.clone(), leaf, zk::AddWatchMode::Persistent);
    let state = KeyWatch {
        core,
        user,
        delivered: None,
        high_water: 0,
    };
    stream::unfold(state, |mut w| async move {
        let item = w.next().await?;
        Some((item, w))
    })
    .boxed()
}

/// The stream of `watch_tree_changes(user)`: `prefix` is the full prefix,
/// `dir` its directory znode.
pub(super) fn watch_tree_changes(
    inner: &Arc<Inner>,
    user: String,
    prefix: String,
    dir: String,
) -> TreeChangeStream {
    let mut core = Core::new(
        inner,
        user,
        dir.clone(),
        zk::AddWatchMode::PersistentRecursive,
    );
    core.changed = Some(Vec::new());
    let state = ChangeWatch {
        core,
        namespace: inner.cfg.namespace.clone(),
        prefix,
        dir,
        present: HashMap::new(),
        queue: std::collections::VecDeque::new(),
    };
    stream::unfold(state, |mut w| async move {
        let item = w.next().await?;
        Some((item, w))
    })
    .boxed()
}
