//! Locks on ephemeral sequential znodes (the ZooKeeper recipe).
//!
//! * Queue: each attempt creates an `EPHEMERAL_SEQUENTIAL` znode
//!   `lock-<token>-<seq>` in the key's lock queue directory (a container next
//!   to the leaf, see [`super::path`]). The token (session id + counter) lets
//!   an attempt find its own znode after a connection loss during `create`.
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
//!   expires or the store closes, and when the connection stays down for half
//!   the negotiated session timeout: the client notices a silent server after
//!   at most 2/5 of the timeout, so this fires before the server can expire
//!   the session and give the lock to someone else.
//! * Release deletes the leaf and the queue znode in one `multi`; both are
//!   ephemeral, so a crashed holder releases within the session timeout.
//!
//! Locks live exactly as long as the handle's session: [`LockOptions::ttl`]
//! is ignored.
//!
//! [`LockOptions::ttl`]: crate::LockOptions::ttl

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::lock::{LockBackend, LockGuard};

use super::error::{is_session_end, map};
use super::kv;
use super::path::{join, sequence_of, KeyPaths};
use super::session::{Fail, Inner, Session};

type Outcome<T> = std::result::Result<T, Fail>;

/// Makes queue znode names unique within a session.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

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

    /// Creates our queue znode; survives a connection loss during `create`.
    async fn enqueue(&self, session: &Session) -> Outcome<String> {
        let token = format!(
            "{:x}x{:x}",
            session.id as u64,
            NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
        );
        let name_prefix = format!("lock-{token}-");
        let prefix = join(&self.queue, &name_prefix);
        let options = zk::CreateMode::EphemeralSequential.with_acls(self.acls());
        for _ in 0..16 {
            match session.client.create(&prefix, &[], &options).await {
                Ok((_, sequence)) => return Ok(format!("{prefix}{sequence}")),
                Err(zk::Error::NoNode) => {
                    let dir = zk::CreateMode::Container.with_acls(self.acls());
                    session.client.mkdir(&self.queue, &dir).await?;
                }
                Err(zk::Error::ConnectionLoss) => {
                    // The create may have happened: look for our token.
                    match session.client.list_children(&self.queue).await {
                        Ok(children) => {
                            if let Some(name) =
                                children.iter().find(|n| n.starts_with(&name_prefix))
                            {
                                return Ok(join(&self.queue, name));
                            }
                        }
                        Err(zk::Error::NoNode | zk::Error::ConnectionLoss) => {}
                        Err(e) => return Err(Fail::Zk(e)),
                    }
                }
                Err(e) => return Err(Fail::Zk(e)),
            }
        }
        Err(Fail::Zk(zk::Error::ConnectionLoss))
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
        let node = self.enqueue(session).await?;
        let name = node.rsplit('/').next().unwrap_or_default().to_owned();
        let mut cleanup = Cleanup::new(session, node.clone(), self.paths.leaf.clone());
        loop {
            let children = match session.client.list_children(&self.queue).await {
                Ok(children) => children,
                Err(zk::Error::NoNode) => Vec::new(),
                Err(e) => return Err(Fail::Zk(e)),
            };
            let mut queue: Vec<(u64, &String)> = children
                .iter()
                .filter_map(|n| sequence_of(n).map(|s| (s, n)))
                .collect();
            queue.sort_unstable();
            let Some(position) = queue.iter().position(|(_, n)| **n == name) else {
                cleanup.disarm();
                return Ok(Pass::Requeue);
            };
            if position == 0 {
                cleanup.published = true;
                let Some(stat) = self.publish(session, &node).await? else {
                    cleanup.disarm();
                    return Ok(Pass::Requeue);
                };
                cleanup.disarm();
                return Ok(Pass::Held(self.guard(session, node, stat)));
            }
            if !wait {
                cleanup.disarm();
                match session.client.delete(&node, None).await {
                    Ok(()) | Err(zk::Error::NoNode) => {}
                    Err(e) => {
                        tracing::debug!(%node, error = %e, "try_lock: could not remove queue znode");
                    }
                }
                return Err(Error::Locked {
                    key: self.user.clone(),
                }
                .into());
            }
            let predecessor = join(&self.queue, queue[position - 1].1);
            self.wait_gone(session, &predecessor).await?;
        }
    }

    /// Returns when `path` is gone, or when the connection came back (events
    /// may have been missed; the caller re-lists).
    async fn wait_gone(&self, session: &Session, path: &str) -> Outcome<()> {
        let watch = session.client.watch(path, zk::AddWatchMode::Persistent);
        let exists = session.client.check_stat(path);
        let mut watcher = watch.await?;
        if exists.await?.is_none() {
            return Ok(());
        }
        loop {
            let event = tokio::select! {
                biased;
                _ = self.inner.closed.cancelled() => return Err(self.inner.closed_error().into()),
                event = watcher.changed() => event,
            };
            match (event.event_type, event.session_state) {
                (zk::EventType::NodeDeleted, _) => return Ok(()),
                (zk::EventType::Session, zk::SessionState::SyncConnected) => return Ok(()),
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

    fn guard(&self, session: &Arc<Session>, node: String, stat: zk::Stat) -> LockGuard {
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let held = Held {
            session: Arc::downgrade(session),
            node,
            paths: self.paths.clone(),
            leaf: self.paths.leaf.clone(),
            mzxid: stat.mzxid,
            version: stat.version,
        };
        let monitor = held.clone();
        let (monitor_lost, monitor_stop) = (lost.clone(), stop.clone());
        let closed = self.inner.closed.clone();
        let key = self.user.clone();
        tokio::spawn(async move {
            let lost_then_give_up = async {
                let reason = tokio::select! {
                    biased;
                    _ = closed.cancelled() => "the store was closed",
                    reason = monitor.watch() => reason,
                };
                tracing::info!(%key, reason, "ZooKeeper lock lost");
                monitor_lost.cancel();
                // The holder was told; keeping our znodes would only block
                // the next waiter until the guard is dropped.
                monitor.give_up().await;
            };
            tokio::select! {
                biased;
                _ = monitor_stop.cancelled() => {}
                _ = lost_then_give_up => {}
            }
        });
        let key = self.user.clone();
        let url = self.inner.url().to_owned();
        let release = async move { held.release(&key, &url).await }.boxed();
        LockGuard::new(
            self.user.clone(),
            u64::try_from(stat.mzxid).unwrap_or(0),
            lost,
            release,
            Some(stop.drop_guard()),
        )
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

/// Deletes an unfinished attempt's queue znode (and, if it may have been
/// written, our value at the leaf) in the background unless disarmed: an
/// acquisition that is cancelled or fails must not leave a znode that would
/// later block the queue for as long as our session lives.
struct Cleanup {
    session: Weak<Session>,
    node: String,
    leaf: String,
    published: bool,
    armed: bool,
}

impl Cleanup {
    fn new(session: &Arc<Session>, node: String, leaf: String) -> Self {
        Cleanup {
            session: Arc::downgrade(session),
            node,
            leaf,
            published: false,
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (Some(session), Ok(runtime)) = (
            self.session.upgrade(),
            tokio::runtime::Handle::try_current(),
        ) else {
            return;
        };
        let node = std::mem::take(&mut self.node);
        let leaf = std::mem::take(&mut self.leaf);
        let published = self.published;
        runtime.spawn(async move {
            if published {
                if let Ok(Some(stat)) = session.client.check_stat(&leaf).await {
                    if stat.ephemeral_owner == session.id {
                        let _ = session.client.delete(&leaf, Some(stat.version)).await;
                    }
                }
            }
            for _ in 0..8 {
                match session.client.delete(&node, None).await {
                    Err(zk::Error::ConnectionLoss) => continue,
                    _ => break,
                }
            }
        });
    }
}

/// A held lock: our queue znode and the value we wrote at the leaf.
#[derive(Clone)]
struct Held {
    session: Weak<Session>,
    node: String,
    paths: KeyPaths,
    leaf: String,
    mzxid: i64,
    version: i32,
}

impl Held {
    /// Resolves (with the reason) when the lock is, or may be, lost.
    async fn watch(&self) -> &'static str {
        // Set while the connection is down: when the lock must be given up.
        let mut deadline: Option<Instant> = None;
        loop {
            let Some(session) = self.session.upgrade() else {
                return SESSION_ENDED;
            };
            let timeout = session.timeout;
            // (Re-)add the watches: the server drops them with a connection,
            // and zookeeper-client 0.11 does not re-register persistent ones.
            let watch_node = session
                .client
                .watch(&self.node, zk::AddWatchMode::Persistent);
            let watch_leaf = session
                .client
                .watch(&self.leaf, zk::AddWatchMode::Persistent);
            let watchers = match (watch_node.await, watch_leaf.await) {
                (Ok(a), Ok(b)) => Some((a, b)),
                (Err(e), _) | (_, Err(e)) if is_session_end(&e) => return SESSION_ENDED,
                _ => None,
            };
            // Anything that happened before the watches were in place.
            let verified = match watchers {
                Some(_) => self.verify(&session).await,
                None => Verified::Unknown,
            };
            let mut state = session.client.state_watcher();
            drop(session);
            match verified {
                Verified::Lost(reason) => return reason,
                Verified::Held => deadline = None,
                Verified::Unknown => {
                    deadline.get_or_insert_with(|| Instant::now() + timeout / 2);
                }
            }
            let Some((mut node_events, mut leaf_events)) = watchers else {
                // The connection dropped while arming: wait for it to come
                // back (then arm again) or for the deadline.
                if let Err(reason) = reconnected(&mut state, deadline).await {
                    return reason;
                }
                continue;
            };
            loop {
                let event = tokio::select! {
                    event = node_events.changed() => event,
                    event = leaf_events.changed() => event,
                    _ = sleep_until(deadline) => return DISCONNECTED,
                };
                match event.event_type {
                    zk::EventType::Session => match event.session_state {
                        zk::SessionState::Disconnected => {
                            deadline.get_or_insert_with(|| Instant::now() + timeout / 2);
                        }
                        // Arm again; the deadline stays until verified.
                        zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                            break
                        }
                        // Terminal: the watchers must not be polled again.
                        _ => return SESSION_ENDED,
                    },
                    zk::EventType::NodeDeleted if event.path == self.node => return QUEUE_DELETED,
                    zk::EventType::NodeDeleted => return KEY_DELETED,
                    zk::EventType::NodeDataChanged | zk::EventType::NodeCreated
                        if event.path == self.leaf =>
                    {
                        return KEY_OVERWRITTEN
                    }
                    _ => {}
                }
            }
        }
    }

    /// Checks that our queue znode and our value at the leaf are still there.
    async fn verify(&self, session: &Session) -> Verified {
        let node = session.client.check_stat(&self.node);
        let leaf = session.client.check_stat(&self.leaf);
        match (node.await, leaf.await) {
            (Ok(Some(_)), Ok(Some(stat))) if stat.mzxid == self.mzxid => Verified::Held,
            (Ok(None), _) => Verified::Lost(QUEUE_DELETED),
            (_, Ok(None)) => Verified::Lost(KEY_DELETED),
            (_, Ok(Some(_))) => Verified::Lost(KEY_OVERWRITTEN),
            (Err(e), _) | (_, Err(e)) if is_session_end(&e) => Verified::Lost(SESSION_ENDED),
            // A connection error: the session events decide.
            _ => Verified::Unknown,
        }
    }

    /// After a loss: removes whatever is left of ours (our value at the key,
    /// if it is still ours, and our queue znode), retrying through
    /// reconnects until the session ends.
    async fn give_up(&self) {
        for _ in 0..64 {
            let Some(session) = self.session.upgrade() else {
                return;
            };
            if session.is_ended() {
                return;
            }
            // Guarded like any compare-and-delete: a value written by the
            // next holder is never touched.
            let key_done =
                match kv::compare_and_delete(&session, "", &self.paths, self.index()).await {
                    Ok(()) | Err(Fail::Done(_)) => true,
                    Err(Fail::Zk(e)) => e != zk::Error::ConnectionLoss,
                };
            let node_done = !matches!(
                session.client.delete(&self.node, None).await,
                Err(zk::Error::ConnectionLoss)
            );
            if key_done && node_done {
                return;
            }
            let mut state = session.client.state_watcher();
            drop(session);
            if reconnected(&mut state, None).await.is_err() {
                return;
            }
        }
    }

    fn index(&self) -> u64 {
        u64::try_from(self.mzxid).unwrap_or(0)
    }

    /// Deletes our value and queue znode in one transaction.
    async fn release(&self, key: &str, url: &str) -> Result<()> {
        let lost = || Error::LockLost {
            key: key.to_owned(),
        };
        let Some(session) = self.session.upgrade() else {
            return Err(lost());
        };
        let mut maybe_applied = false;
        for _ in 0..16 {
            let mut m = session.client.new_multi_writer();
            let ops = m
                .add_delete(&self.leaf, Some(self.version))
                .and_then(|()| m.add_delete(&self.node, None));
            if let Err(e) = ops {
                return Err(map(e, key, url));
            }
            match m.commit().await {
                Ok(_) => return Ok(()),
                Err(zk::MultiWriteError::RequestFailed {
                    source: zk::Error::ConnectionLoss,
                }) => maybe_applied = true,
                Err(zk::MultiWriteError::OperationFailed { index: 0, .. }) => {
                    // Our value is gone or overwritten; give up our place.
                    return match session.client.delete(&self.node, None).await {
                        Err(zk::Error::NoNode) if maybe_applied => Ok(()),
                        Ok(()) | Err(zk::Error::NoNode) => Err(lost()),
                        Err(e) if is_session_end(&e) => Err(lost()),
                        Err(e) => Err(map(e, key, url)),
                    };
                }
                Err(zk::MultiWriteError::OperationFailed { .. }) => {
                    // Our queue znode is gone: the lock was lost. Take our
                    // value away unless the next holder replaced it already.
                    let _ = kv::compare_and_delete(&session, key, &self.paths, self.index()).await;
                    return Err(lost());
                }
                Err(e) => {
                    let e = zk::Error::from(e);
                    return Err(if is_session_end(&e) {
                        lost()
                    } else {
                        map(e, key, url)
                    });
                }
            }
        }
        Err(map(zk::Error::ConnectionLoss, key, url))
    }
}

const SESSION_ENDED: &str = "the session expired or was closed";
const DISCONNECTED: &str = "the connection to ZooKeeper was down for half the session timeout";
const QUEUE_DELETED: &str = "its queue znode was deleted";
const KEY_DELETED: &str = "the lock key was deleted";
const KEY_OVERWRITTEN: &str = "the lock key was overwritten";

/// What a check of the lock znodes found.
enum Verified {
    Held,
    Lost(&'static str),
    /// The check failed on a connection error.
    Unknown,
}

/// Waits until the session is connected again; `Err` with the reason if it
/// ended or `deadline` passed first.
async fn reconnected(
    state: &mut zk::StateWatcher,
    deadline: Option<Instant>,
) -> Result<(), &'static str> {
    loop {
        match state.state() {
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => return Ok(()),
            s if s.is_terminated() => return Err(SESSION_ENDED),
            _ => {}
        }
        tokio::select! {
            _ = state.changed() => {}
            _ = sleep_until(deadline) => return Err(DISCONNECTED),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
