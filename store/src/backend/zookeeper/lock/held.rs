//! A held lock: its guard, the lease, the monitor that tells when the lock
//! is or may be lost (watches, verification, reconnects, heartbeats), and
//! the release.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use crate::backend::zookeeper::error::{is_session_end, map, unavailable};
use crate::backend::zookeeper::kv;
use crate::backend::zookeeper::path::KeyPaths;
use crate::backend::zookeeper::session::{Fail, Session};
use crate::error::{Error, Result};
use crate::lock::LockGuard;
use crate::time::later;

use super::{connected, ZkLock};

impl ZkLock {
    /// The guard of a lock won with our queue znode `node` and the leaf
    /// write `stat`, sent at `confirmed`; starts the loss monitor.
    pub(super) fn guard(
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
        // Cancelled when the release ends or is dropped unrun.
        let released = CancellationToken::new();
        let release_settled = released.clone().drop_guard();
        self.inner.tasks.spawn(async move {
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
            let mut lost_then_give_up = std::pin::pin!(lost_then_give_up);
            let stopped = tokio::select! {
                biased;
                _ = monitor_stop.cancelled() => true,
                _ = lost_then_give_up.as_mut() => false,
            };
            if stopped {
                // Dropping an unfired watch asks the server to remove it: a
                // request that would queue on the session ahead of the
                // release, which the next holder waits for. They are kept,
                // unpolled, until the release has its answer; by then its
                // deletes have fired them, and nothing is sent.
                tokio::select! {
                    _ = released.cancelled() => {}
                    _ = closed.cancelled() => {}
                }
            }
        });
        let key = self.user.clone();
        let url = self.inner.url().to_owned();
        let release = async move {
            let _settled = release_settled;
            held.release(&key, &url).await
        }
        .boxed();
        LockGuard::new(
            self.user.clone(),
            u64::try_from(stat.mzxid).unwrap_or(0),
            crate::lock::LossTrigger::from_token(lost),
            release,
            Some(Box::new(stop.drop_guard())),
        )
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
    ///
    /// One-shot `exists` watches on our queue znode and on the leaf, each
    /// set by the request that also checks it (so nothing that happened
    /// before is missed): any event on either means the lock is gone. The
    /// client sets them again after a reconnect, with the last zxid it saw,
    /// and the server then fires those whose node changed meanwhile. Unlike
    /// persistent watches, the release's own deletes use them up, so no
    /// removal request follows the release and the next holder's create of
    /// the leaf fires nothing of ours.
    async fn watch(&self) -> &'static str {
        // Set while the connection is down: when the lock must be given up.
        let mut deadline: Option<Instant> = None;
        let Some(session) = self.session.upgrade() else {
            return SESSION_ENDED;
        };
        let timeout = session.timeout;
        let mut state = session.client.state_watcher();
        let (node_events, leaf_events) = loop {
            let node = session.client.check_and_watch_stat(&self.node);
            let leaf = session.client.check_and_watch_stat(&self.leaf);
            match (node.await, leaf.await) {
                (Ok((Some(_), node)), Ok((Some(stat), leaf))) if stat.mzxid == self.mzxid => {
                    break (node, leaf)
                }
                (Ok((None, _)), _) => return QUEUE_DELETED,
                (_, Ok((None, _))) => return KEY_DELETED,
                (Ok(_), Ok(_)) => return KEY_OVERWRITTEN,
                (Err(e), _) | (_, Err(e)) if is_session_end(&e) => return SESSION_ENDED,
                // A connection error: wait for the connection to come back
                // (then arm again) or for the deadline.
                _ => {
                    deadline.get_or_insert_with(|| later(Instant::now(), timeout / 2));
                    if let Err(reason) = reconnected(&mut state, deadline).await {
                        return reason;
                    }
                }
            }
        };
        drop(session);
        deadline = None;
        let node_changed = node_events.changed();
        let leaf_changed = leaf_events.changed();
        tokio::pin!(node_changed, leaf_changed);
        loop {
            let event = tokio::select! {
                event = &mut node_changed => event,
                event = &mut leaf_changed => event,
                now = state.changed() => {
                    match now {
                        zk::SessionState::Disconnected => {
                            deadline.get_or_insert_with(|| later(Instant::now(), timeout / 2));
                        }
                        zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                            // The client set our watches again: a change
                            // made meanwhile fires them now.
                            deadline = None;
                        }
                        s if s.is_terminated() => return SESSION_ENDED,
                        _ => {}
                    }
                    continue;
                }
                _ = sleep_until(deadline) => return DISCONNECTED,
            };
            return match event.event_type {
                zk::EventType::Session => SESSION_ENDED,
                zk::EventType::NodeDeleted if event.path == self.node => QUEUE_DELETED,
                zk::EventType::NodeDeleted => KEY_DELETED,
                _ => KEY_OVERWRITTEN,
            };
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
