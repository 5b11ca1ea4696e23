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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::lock::{LockBackend, LockGuard};
use crate::time::later;

use super::error::{is_session_end, map, unavailable};
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

    /// Creates our queue znode and returns its armed cleanup. The work runs
    /// in a task of its own: if this future is dropped, the task goes on and
    /// its result (the cleanup) deletes the znode.
    async fn enqueue(&self, session: &Arc<Session>) -> Outcome<Cleanup> {
        let task = tokio::spawn(enqueue(
            session.clone(),
            self.queue.clone(),
            self.paths.leaf.clone(),
            self.acls(),
            self.inner.closed.clone(),
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
                // The write goes through the leader: the lease starts here.
                let sent = Instant::now();
                let Some(stat) = self.publish(session, &node).await? else {
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

    fn guard(
        &self,
        session: &Arc<Session>,
        node: String,
        stat: zk::Stat,
        confirmed: Instant,
    ) -> LockGuard {
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let (lease, sound) = lease(session.timeout, self.inner.cfg.tick_time);
        if !sound && !self.inner.lease_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                url = %self.inner.url(),
                session_timeout = ?session.timeout,
                tick_time = ?self.inner.cfg.tick_time,
                "ZooKeeper session timeout too short for the ensemble's tickTime: \
                 under a minority partition a lock's lost() may fire only after the \
                 lock was handed on (see the zookeeper backend docs)",
            );
        }
        let held = Held {
            session: Arc::downgrade(session),
            closed: self.inner.closed.clone(),
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
                    reason = monitor.heartbeat(confirmed, lease) => reason,
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
            crate::lock::LossTrigger::from_token(lost),
            release,
            Some(Box::new(stop.drop_guard())),
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

/// The work of [`ZkLock::enqueue`], in its own task: creates our queue znode
/// with a cleanup armed before the first `create`, so that a `create` whose
/// reply was lost (or a caller that went away) never leaves a znode behind.
async fn enqueue(
    session: Arc<Session>,
    queue: String,
    leaf: String,
    acls: zk::Acls<'static>,
    closed: CancellationToken,
) -> Outcome<Cleanup> {
    let token = format!(
        "{:x}x{:x}",
        session.id as u64,
        NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
    );
    let name_prefix = format!("lock-{token}-");
    let prefix = join(&queue, &name_prefix);
    let mut cleanup = Cleanup {
        session: Arc::downgrade(&session),
        closed,
        queue: queue.clone(),
        name_prefix: name_prefix.clone(),
        node: None,
        leaf,
        maybe_created: false,
        published: false,
        armed: true,
    };
    let options = zk::CreateMode::EphemeralSequential.with_acls(acls);
    for _ in 0..16 {
        match session.client.create(&prefix, &[], &options).await {
            Ok((_, sequence)) => {
                cleanup.node = Some(format!("{prefix}{sequence}"));
                return Ok(cleanup);
            }
            Err(zk::Error::NoNode) => {
                let dir = zk::CreateMode::Container.with_acls(acls);
                session.client.mkdir(&queue, &dir).await?;
            }
            Err(zk::Error::ConnectionLoss) => {
                // The create may have happened: look for our token.
                cleanup.maybe_created = true;
                if !connected(&session, &cleanup.closed).await {
                    return Err(Fail::Zk(zk::Error::SessionExpired));
                }
                match session.client.list_children(&queue).await {
                    Ok(children) => {
                        if let Some(name) = children.iter().find(|n| n.starts_with(&name_prefix)) {
                            cleanup.node = Some(join(&queue, name));
                            return Ok(cleanup);
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

/// Deletes an unfinished attempt's queue znode (and, if it may have been
/// written, our value at the leaf) in the background unless disarmed: an
/// acquisition that is cancelled or fails must not leave a znode that would
/// later block the queue for as long as our session lives. Without a known
/// path (a `create` whose reply was lost) it deletes the queue's znodes
/// carrying the attempt's unique name prefix.
struct Cleanup {
    session: Weak<Session>,
    closed: CancellationToken,
    queue: String,
    name_prefix: String,
    node: Option<String>,
    leaf: String,
    /// A `create` of ours failed with a connection loss.
    maybe_created: bool,
    published: bool,
    armed: bool,
}

impl Cleanup {
    fn disarm(&mut self) {
        self.armed = false;
    }

    /// One attempt at the whole cleanup; transient errors are retried.
    async fn run(&self) -> Result<()> {
        let Some(session) = self.session.upgrade() else {
            return Ok(());
        };
        if !connected(&session, &self.closed).await {
            // The session ended (taking our znodes) or the store closed.
            return Ok(());
        }
        let fail = |e: zk::Error| {
            if is_session_end(&e) {
                Ok(())
            } else {
                Err(map(e, "", ""))
            }
        };
        if self.published {
            match session.client.check_stat(&self.leaf).await {
                Ok(Some(stat)) if stat.ephemeral_owner == session.id => {
                    match session.client.delete(&self.leaf, Some(stat.version)).await {
                        Ok(()) | Err(zk::Error::NoNode | zk::Error::BadVersion) => {}
                        Err(e) => return fail(e),
                    }
                }
                Ok(_) => {}
                Err(e) => return fail(e),
            }
        }
        let nodes = match &self.node {
            Some(node) => vec![node.clone()],
            None => match session.client.list_children(&self.queue).await {
                Ok(children) => children
                    .iter()
                    .filter(|n| n.starts_with(&self.name_prefix))
                    .map(|n| join(&self.queue, n))
                    .collect(),
                Err(zk::Error::NoNode) => Vec::new(),
                Err(e) => return fail(e),
            },
        };
        for node in nodes {
            match session.client.delete(&node, None).await {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(e) => return fail(e),
            }
        }
        Ok(())
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed || (self.node.is_none() && !self.maybe_created) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.armed = false;
        let cleanup = Cleanup {
            session: std::mem::take(&mut self.session),
            closed: self.closed.clone(),
            queue: std::mem::take(&mut self.queue),
            name_prefix: std::mem::take(&mut self.name_prefix),
            node: self.node.take(),
            leaf: std::mem::take(&mut self.leaf),
            maybe_created: self.maybe_created,
            published: self.published,
            armed: false,
        };
        runtime.spawn(async move {
            let closed = cleanup.closed.clone();
            if let Err(error) = crate::retry::until_settled(&closed, || cleanup.run()).await {
                tracing::debug!(%error, "lock attempt cleanup did not finish");
            }
        });
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

/// The lock's lease for a negotiated session timeout `session` on an
/// ensemble with `tickTime` = `tick`: how long after the send of the last
/// request the leader answered the holder may still count on its lock, and
/// whether that bound is sound (see the backend docs, "Locks").
///
/// The leader expires the session `session` after the last touch of it that
/// reached the leader. Followers forward their clients' touches with their
/// answers to the leader's pings (every `tick / 2`), and a client sends at
/// least every `session / 5` (the client's ping interval plus its timer
/// step), so a request answered through a follower proves a touch at most
/// `tick / 2 + session / 5` before it was sent. A deposed leader that does
/// not know it yet answers `sync` itself for up to about `2 × tick` after
/// its followers elected a new leader, which starts every session's clock
/// afresh. The lease stays below both, with a margin of 100 ms + 2 % for
/// scheduling and clock rates:
///
/// `lease = session − max(2·tick, tick/2 + session/5) − (100 ms + session/50)`
///
/// It is sound while it leaves room for four heartbeats, `lease ≥ session/4`;
/// otherwise half the session timeout is used and the bound does not hold.
pub(super) fn lease(session: Duration, tick: Duration) -> (Duration, bool) {
    let lead = (tick * 2).max(tick / 2 + session / 5) + Duration::from_millis(100) + session / 50;
    let lease = session.saturating_sub(lead);
    if lease >= session / 4 && !lease.is_zero() {
        (lease, true)
    } else {
        (session / 2, false)
    }
}

/// A held lock: our queue znode and the value we wrote at the leaf.
#[derive(Clone)]
struct Held {
    session: Weak<Session>,
    /// The store's `closed` token.
    closed: CancellationToken,
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
                    deadline.get_or_insert_with(|| later(Instant::now(), timeout / 2));
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
                            deadline.get_or_insert_with(|| later(Instant::now(), timeout / 2));
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

    /// Resolves when the leader has not confirmed the session for `lease`:
    /// sends a `sync` (which a follower forwards to the leader) every
    /// quarter lease; each answered one renews the lease from its send.
    /// `confirmed` is the send of the acquiring write.
    async fn heartbeat(&self, mut confirmed: Instant, lease: Duration) -> &'static str {
        let interval = lease / 4;
        loop {
            let Some(session) = self.session.upgrade() else {
                return SESSION_ENDED;
            };
            let sent = Instant::now();
            let answer = tokio::select! {
                answer = session.client.sync("/") => answer,
                () = tokio::time::sleep_until(later(confirmed, lease)) => return NOT_CONFIRMED,
            };
            drop(session);
            match answer {
                Ok(()) => confirmed = sent,
                Err(e) if is_session_end(&e) => return SESSION_ENDED,
                // Connection trouble: try again; the lease keeps running.
                Err(_) => {}
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = tokio::time::sleep_until(later(confirmed, lease)) => return NOT_CONFIRMED,
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

    /// Deletes our value and queue znode in one transaction, retrying
    /// (after each reconnect) until that is confirmed, the lock turns out
    /// lost, or the session ends or the store closes.
    async fn release(&self, key: &str, url: &str) -> Result<()> {
        let maybe_applied = AtomicBool::new(false);
        crate::retry::until_settled(&self.closed, || self.release_once(key, url, &maybe_applied))
            .await
    }

    async fn release_once(&self, key: &str, url: &str, maybe_applied: &AtomicBool) -> Result<()> {
        let lost = || Error::LockLost {
            key: key.to_owned(),
        };
        let Some(session) = self.session.upgrade() else {
            return Err(lost());
        };
        if !connected(&session, &self.closed).await {
            return Err(if self.closed.is_cancelled() {
                Error::Closed {
                    url: url.to_owned(),
                }
            } else {
                lost()
            });
        }
        let mut m = session.client.new_multi_writer();
        let ops = m
            .add_delete(&self.leaf, Some(self.version))
            .and_then(|()| m.add_delete(&self.node, None));
        if let Err(e) = ops {
            return Err(map(e, key, url));
        }
        match m.commit().await {
            Ok(_) => Ok(()),
            Err(zk::MultiWriteError::RequestFailed {
                source: zk::Error::ConnectionLoss,
            }) => {
                maybe_applied.store(true, Ordering::Relaxed);
                Err(unavailable(url, "connection lost during the lock release"))
            }
            Err(zk::MultiWriteError::OperationFailed { index: 0, .. }) => {
                // Our value is gone or overwritten; give up our place.
                match session.client.delete(&self.node, None).await {
                    Err(zk::Error::NoNode) if maybe_applied.load(Ordering::Relaxed) => Ok(()),
                    Ok(()) | Err(zk::Error::NoNode) => Err(lost()),
                    Err(e) if is_session_end(&e) => Err(lost()),
                    // Retried: the next attempt finds our znode gone or deletes it.
                    Err(e) => Err(map(e, key, url)),
                }
            }
            Err(zk::MultiWriteError::OperationFailed { .. }) => {
                // Our queue znode is gone: the lock was lost. Take our
                // value away unless the next holder replaced it already.
                let _ = kv::compare_and_delete(&session, key, &self.paths, self.index()).await;
                Err(lost())
            }
            Err(e) => {
                let e = zk::Error::from(e);
                Err(if is_session_end(&e) {
                    lost()
                } else {
                    map(e, key, url)
                })
            }
        }
    }
}

const SESSION_ENDED: &str = "the session expired or was closed";
const DISCONNECTED: &str = "the connection to ZooKeeper was down for half the session timeout";
const NOT_CONFIRMED: &str =
    "the ZooKeeper leader did not confirm the session within the lock's lease";
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_stays_below_the_leader_side_expiry() {
        let ms = Duration::from_millis;
        // Default tickTime, default session: 10 − 4 − (0.1 + 0.2).
        assert_eq!(lease(ms(10_000), ms(2_000)), (ms(5_700), true));
        // The partition test's ensemble: 4 − max(0.4, 0.1 + 0.8) − 0.18.
        assert_eq!(lease(ms(4_000), ms(200)), (ms(2_920), true));
        // Too short for the tickTime: no sound lease, half the session.
        assert_eq!(lease(ms(3_000), ms(2_000)), (ms(1_500), false));
        assert!(!lease(ms(1), ms(2_000)).1);
    }
}
