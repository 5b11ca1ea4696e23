//! Locks on ephemeral sequential znodes (the ZooKeeper recipe).
//!
//! * Queue: each attempt creates an `EPHEMERAL_SEQUENTIAL` znode
//!   `lock-<token>-<seq>` in the key's lock queue directory (a container next
//!   to the leaf, see [`super::path`]). The token (session id + counter) is
//!   unique to the attempt, like Curator's "protected" names: an attempt
//!   whose `create` reply was lost finds its znode by it.
//! * Cancel-safe: the `create` runs in a task of its own, which hands back
//!   an armed [`Cleanup`] — armed *before* the first `create` is sent. If
//!   the `lock()` future is dropped at any point, the cleanup deletes our
//!   queue znode (by path, or by the token if the reply was lost), and our
//!   value at the leaf if it may have been written, retrying through
//!   reconnects until the session ends.
//! * The lowest sequence number holds the lock. A waiter watches only its
//!   immediate predecessor and re-lists when it goes, so a release wakes one
//!   waiter (no herd) and hands over within about one round trip.
//! * The holder then writes the lock's value to the key's own leaf as an
//!   ephemeral znode, in a `multi` that checks its queue znode still exists.
//!   So `get(key)` and `watch(key)` show the holder's value, and the fencing
//!   token is that write's zxid (the key's `last_index`), which grows with
//!   every holder even when the queue container is reaped and its sequence
//!   numbers restart.
//! * Lost: a monitor task watches the queue znode and the leaf. The guard is
//!   lost when either is deleted or the leaf is overwritten, when the session
//!   expires or the store closes, when the connection stays down for half
//!   the negotiated session timeout, and when the leader has not confirmed
//!   the session for the lock's *lease* (see [`lease`]): the monitor sends a
//!   `sync` every quarter lease, which a follower must forward to the
//!   leader, and the lease runs from the send of the last one answered (the
//!   first from the acquiring write). A follower cut off from its quorum
//!   keeps answering pings for `syncLimit × tickTime`, so the connection
//!   alone proves nothing; the leader expires the session `session_timeout`
//!   after the last session touch it received, and the lease ends before.
//! * Release deletes the leaf and the queue znode in one `multi`, retried
//!   (waiting for each reconnect) until it is confirmed, the lock is found
//!   lost, or the session ends or the store closes; both znodes are
//!   ephemeral, so a crashed holder releases within the session timeout.
//!
//! Locks live exactly as long as the handle's session: [`LockOptions::ttl`]
//! is ignored.
//!
//! [`LockOptions::ttl`]: crate::LockOptions::ttl
//! [`lease`]: held::lease

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::lock::{LockBackend, LockGuard};

use super::error::{is_session_end, map};
use super::path::{join, sequence_of, KeyPaths};
use super::session::{Fail, Inner, Session};

use self::queue::{enqueue, Cleanup};

mod held;
mod queue;

type Outcome<T> = std::result::Result<T, Fail>;

/// A lock on one key of a ZooKeeper store.
pub(super) struct ZkLock {
    inner: Arc<Inner>,
    user: String,
    paths: KeyPaths,
    queue: String,
    value: Bytes,
}

impl std::fmt::Debug for ZkLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkLock")
            .field("key", &self.user)
            .field("queue", &self.queue)
            .finish()
    }
}

/// What one pass over the queue ended with.
enum Pass {
    Held(LockGuard),
    /// Our queue znode vanished (e.g. `delete_tree`): queue again.
    Requeue,
}

impl ZkLock {
    pub fn new(inner: Arc<Inner>, user: String, paths: KeyPaths, value: Bytes) -> Self {
        let queue = paths.lock_queue();
        ZkLock {
            inner,
            user,
            paths,
            queue,
            value,
        }
    }

    fn acls(&self) -> zk::Acls<'static> {
        self.inner.acls
    }

    /// Creates our queue znode and returns its armed cleanup. The work runs
    /// in a task of its own: if this future is dropped, the task goes on and
    /// its result (the cleanup) deletes the znode.
    async fn enqueue(&self, session: &Arc<Session>) -> Outcome<Cleanup> {
        let task = self.inner.tasks.spawn(enqueue(
            session.clone(),
            self.queue.clone(),
            self.paths.leaf.clone(),
            self.acls(),
            self.inner.closed.clone(),
            self.inner.tasks.clone(),
        ));
        match task.await {
            Ok(outcome) => outcome,
            Err(join) => Err(Fail::Done(Error::Backend {
                backend: super::BACKEND,
                target: format!("lock {:?}", self.user),
                source: format!("the enqueue task ended abnormally: {join}").into(),
            })),
        }
    }

    /// Writes the lock value to the key's leaf if `node` still exists.
    /// `Ok(None)` if `node` is gone.
    async fn publish(&self, session: &Session, node: &str) -> Outcome<Option<zk::Stat>> {
        let mut replace = false;
        for _ in 0..16 {
            let mut m = session.client.new_multi_writer();
            m.add_check_version(node, -1)?;
            if !self.paths.parent_is_root() {
                m.add_set_data(self.paths.parent(), &[], None)?;
            }
            if replace {
                m.add_delete(&self.paths.leaf, None)?;
            }
            m.add_create(
                &self.paths.leaf,
                &[],
                &zk::CreateMode::Ephemeral.with_acls(self.acls()),
            )?;
            m.add_set_data(&self.paths.leaf, &self.value, Some(0))?;
            match m.commit().await {
                Ok(results) => {
                    for result in results.into_iter().rev() {
                        if let zk::MultiWriteResult::SetData { stat } = result {
                            return Ok(Some(stat));
                        }
                    }
                    return Err(Fail::Zk(zk::Error::UnexpectedError(
                        "multi without a SetData result".into(),
                    )));
                }
                Err(zk::MultiWriteError::OperationFailed { index: 0, .. }) => return Ok(None),
                // A stale value (a holder that lost its queue znode, or a
                // plain write to the lock key): ours replaces it.
                Err(zk::MultiWriteError::OperationFailed {
                    source: zk::Error::NodeExists,
                    ..
                }) => replace = true,
                // Deleted between our attempts.
                Err(zk::MultiWriteError::OperationFailed {
                    source: zk::Error::NoNode,
                    ..
                }) if replace => replace = false,
                Err(e) => return Err(Fail::Zk(e.into())),
            }
        }
        Err(Fail::Zk(zk::Error::NodeExists))
    }

    /// One acquisition attempt on `session`.
    async fn pass(&self, session: &Arc<Session>, wait: bool) -> Outcome<Pass> {
        let mut cleanup = self.enqueue(session).await?;
        let Some(node) = cleanup.node.clone() else {
            // `enqueue` only returns a cleanup that knows its znode.
            return Ok(Pass::Requeue);
        };
        let name = node.rsplit('/').next().unwrap_or_default().to_owned();
        // Set once the only znode ahead of ours is gone: later znodes get
        // higher sequence numbers, so ours is then the lowest without
        // listing the queue again.
        let mut head = false;
        let mut predecessor = String::new();
        // The watch that saw the predecessor go: dropping it asks the server
        // to remove it, a request that would queue ahead of the take, so it
        // is kept until the take's answer is in.
        let mut seen_gone: Option<zk::PersistentWatcher> = None;
        loop {
            let position = if head {
                0
            } else {
                let children = match session.client.list_children(&self.queue).await {
                    Ok(children) => children,
                    Err(zk::Error::NoNode) => Vec::new(),
                    Err(e) => return Err(Fail::Zk(e)),
                };
                let mut queue: Vec<(u64, String)> = children
                    .into_iter()
                    .filter_map(|n| sequence_of(&n).map(|s| (s, n)))
                    .collect();
                queue.sort_unstable();
                let Some(position) = queue.iter().position(|(_, n)| *n == name) else {
                    cleanup.disarm();
                    return Ok(Pass::Requeue);
                };
                if position > 0 {
                    predecessor = join(&self.queue, &queue[position - 1].1);
                }
                position
            };
            if position == 0 {
                cleanup.published = true;
                // The write goes through the leader: the lease starts here.
                let sent = Instant::now();
                let published = self.publish(session, &node).await;
                drop(seen_gone);
                let Some(stat) = published? else {
                    cleanup.disarm();
                    return Ok(Pass::Requeue);
                };
                cleanup.disarm();
                return Ok(Pass::Held(self.guard(session, node, stat, sent)));
            }
            if !wait {
                // If this fails (or the caller goes away), the cleanup
                // removes the znode in the background.
                match session.client.delete(&node, None).await {
                    Ok(()) | Err(zk::Error::NoNode) => cleanup.disarm(),
                    Err(e) => {
                        tracing::debug!(%node, error = %e, "try_lock: could not remove queue znode");
                    }
                }
                return Err(Error::Locked {
                    key: self.user.clone(),
                }
                .into());
            }
            let (deleted, watcher) = self.wait_gone(session, &predecessor).await?;
            seen_gone = Some(watcher);
            head = deleted && position == 1;
        }
    }

    /// Returns when `path` is gone (true), or when the connection came back
    /// (false: events may have been missed; the caller re-lists), with the
    /// watch it used.
    async fn wait_gone(
        &self,
        session: &Session,
        path: &str,
    ) -> Outcome<(bool, zk::PersistentWatcher)> {
        let watch = session.client.watch(path, zk::AddWatchMode::Persistent);
        let exists = session.client.check_stat(path);
        let mut watcher = watch.await?;
        if exists.await?.is_none() {
            return Ok((true, watcher));
        }
        loop {
            let event = tokio::select! {
                biased;
                _ = self.inner.closed.cancelled() => return Err(self.inner.closed_error().into()),
                event = watcher.changed() => event,
            };
            match (event.event_type, event.session_state) {
                (zk::EventType::NodeDeleted, _) => return Ok((true, watcher)),
                (zk::EventType::Session, zk::SessionState::SyncConnected) => {
                    return Ok((false, watcher))
                }
                (zk::EventType::Session, zk::SessionState::AuthFailed) => {
                    return Err(Fail::Zk(zk::Error::AuthFailed))
                }
                (zk::EventType::Session, state) if state.is_terminated() => {
                    return Err(Fail::Zk(zk::Error::SessionExpired))
                }
                _ => {}
            }
        }
    }
}

#[async_trait]
impl LockBackend for ZkLock {
    async fn acquire(&self, wait: bool) -> Result<LockGuard> {
        let mut session_ends = 0;
        loop {
            let session = self.inner.session().await?;
            match self.pass(&session, wait).await {
                Ok(Pass::Held(guard)) => return Ok(guard),
                Ok(Pass::Requeue) => {}
                Err(Fail::Done(e)) => return Err(e),
                Err(Fail::Zk(e)) if is_session_end(&e) && session_ends < 3 => {
                    // Nothing of ours survives a session; queue again on the
                    // handle's next one.
                    session_ends += 1;
                }
                Err(Fail::Zk(e)) => return Err(map(e, &self.user, self.inner.url())),
            }
        }
    }
}

/// Waits until `session` is connected; false if it ended or the store
/// closed first.
async fn connected(session: &Session, closed: &CancellationToken) -> bool {
    let mut state = session.client.state_watcher();
    loop {
        match state.state() {
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => return true,
            s if s.is_terminated() => return false,
            _ => {}
        }
        tokio::select! {
            biased;
            _ = closed.cancelled() => return false,
            _ = state.changed() => {}
        }
    }
}
