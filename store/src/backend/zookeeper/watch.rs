//! `watch` and `watch_tree` on persistent watches.
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
use crate::types::{KvPair, TreeWatchStream, WatchStream};

use super::error::{map, unavailable};
use super::kv;
use super::session::{Fail, Inner, Session};

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
        Ok(session)
    }

    /// Handles one event; `Some` if it must be reported at once.
    fn on_event(&mut self, event: zk::WatchedEvent) -> Option<Step> {
        if event.event_type != zk::EventType::Session {
            self.need_read = true;
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

/// A `watch_tree(prefix)` stream.
struct TreeWatch {
    core: Core,
    namespace: Namespace,
    /// The full (namespaced) prefix.
    prefix: String,
    delivered: Option<Vec<KvPair>>,
}

impl TreeWatch {
    /// True if `listing` shows some key at an older version than delivered.
    fn is_stale(&self, listing: &[KvPair]) -> bool {
        let Some(delivered) = &self.delivered else {
            return false;
        };
        listing.iter().any(|p| {
            delivered
                .binary_search_by(|d| d.key.cmp(&p.key))
                .is_ok_and(|i| delivered[i].last_index > p.last_index)
        })
    }

    async fn next(&mut self) -> Option<crate::Result<Vec<KvPair>>> {
        loop {
            match self.core.step().await {
                Step::Read(session) => {
                    let listing = match kv::list(&session, &self.namespace, &self.prefix).await {
                        Ok(listing) => listing,
                        Err(e) => match self.core.read_failed(e) {
                            Step::Fail(e) | Step::End(e) => return Some(Err(e)),
                            _ => continue,
                        },
                    };
                    self.core.read_ok();
                    if self.delivered.as_ref() == Some(&listing) || self.is_stale(&listing) {
                        continue;
                    }
                    self.delivered = Some(listing.clone());
                    return Some(Ok(listing));
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

/// The stream of `watch_tree(user)`: `prefix` is the full prefix, `dir` its
/// directory znode.
pub(super) fn watch_tree(
    inner: &Arc<Inner>,
    user: String,
    prefix: String,
    dir: String,
) -> TreeWatchStream {
    let core = Core::new(inner, user, dir, zk::AddWatchMode::PersistentRecursive);
    let state = TreeWatch {
        core,
        namespace: inner.cfg.namespace.clone(),
        prefix,
        delivered: None,
    };
    stream::unfold(state, |mut w| async move {
        let item = w.next().await?;
        Some((item, w))
    })
    .boxed()
}
