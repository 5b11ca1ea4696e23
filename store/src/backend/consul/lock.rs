//! Locks on the handle's session.
//!
//! * Acquire: one transaction, `check-not-exists` + `lock` (Consul's
//!   `?acquire=`) of the key with the handle's session and the lock's value.
//!   The key exists exactly while someone holds the lock, so a second lock on
//!   the same handle waits like any other contender (Consul alone would let
//!   the same session re-acquire).
//! * Wait: a blocking query on the key until it is gone, then try again; a
//!   release hands over within about one round trip.
//! * Fencing token: the `ModifyIndex` of the acquiring write. It is a Raft
//!   index, so it never repeats and every later holder's is larger (the
//!   key's `LockIndex` is not enough: it restarts at 1 when the key is
//!   deleted, which every release does).
//! * Lost: the handle's session is gone or may be gone (see
//!   [`super::session`]), the key was deleted or rewritten (blocking query),
//!   or the store was closed.
//! * Cancel safety: each acquire transaction runs in a task of its own that
//!   the caller only awaits (through a oneshot channel). If the caller is
//!   gone when the answer comes (its `lock()` was dropped or timed out) and
//!   the lock was taken, the task releases it. If the transaction fails
//!   without an answer (a timeout, a cut connection), it may still have been
//!   applied: the task reads the key (retrying until the session ends) and
//!   counts the lock as taken if the key holds our session and the `Flags`
//!   stamp of one of its transactions. If it does not, `lock()` fails, and
//!   for a minute a blocking query on the key watches for that transaction
//!   being applied late and then releases it, so it does not stay bound to
//!   a session the handle goes on renewing.
//! * Release: a transaction `check-index` (our index) + `delete`, retried
//!   on transient failures (`crate::retry::until_settled`) until Consul
//!   answers or the session ends (lost, replaced, or the handle closed: a
//!   session's `lost` is a child of the handle's `closed`), which releases
//!   the lock with it. If the index no longer matches, the lock was lost
//!   and `unlock` says so — unless an earlier attempt went unanswered
//!   while the session is live, in which case that attempt deleted it. The
//!   key is deleted rather than `?release=`d: the contract wants it gone
//!   after unlock, and a released key would linger with the old holder's
//!   value, looking held to `get` (and to a leadership `Follower`).
//! * Lock-delay: only with `lock_delay` > 0, after a holder's session ends
//!   Consul refuses the key to every session for that long; waiters then
//!   retry with a short backoff, as there is nothing to block on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::http::Http;
use super::session::Session;
use super::txn::{Expect, Ops, WriteError};
use super::watch::{KeyWatch, WatchContext};
use super::ConsulStore;
use crate::error::{Error, Result};
use crate::lock::{LockBackend, LockGuard};
use crate::retry::until_settled;
use crate::retry::Backoff;
use crate::time::later;
use crate::types::KvPair;

/// A lock on one key of a Consul store handle.
#[derive(Debug)]
pub(crate) struct ConsulLock {
    store: ConsulStore,
    user: String,
    full: String,
    value: Bytes,
}

impl ConsulLock {
    pub(crate) fn new(store: ConsulStore, user: String, full: String, value: Bytes) -> Self {
        ConsulLock {
            store,
            user,
            full,
            value,
        }
    }

    /// Returns once the lock key is absent.
    async fn wait_until_free(&self) -> Result<()> {
        let mut watch = KeyWatch::new(
            self.store.watch_context(),
            self.user.clone(),
            self.full.clone(),
        );
        loop {
            match watch.next().await {
                Some(Ok(None)) => return Ok(()),
                Some(Ok(Some(_))) => {}
                Some(Err(e)) if e.is_transient() => {
                    tracing::debug!(key = %self.user, error = %e, "lock wait: transient error");
                }
                Some(Err(e)) => return Err(e),
                None => return Err(self.store.closed_error()),
            }
        }
    }

    fn guard(&self, session: &Session, index: u64) -> LockGuard {
        let lost = session.lost.child_token();
        let stop = CancellationToken::new();
        self.store.tasks().spawn(monitor(
            self.store.watch_context(),
            self.user.clone(),
            self.full.clone(),
            index,
            lost.clone(),
            stop.clone(),
        ));
        let http = self.store.http().clone();
        let url = self.store.url().to_owned();
        let user = self.user.clone();
        let full = self.full.clone();
        let ended = session.lost.clone();
        let release = Box::pin(async move { release(http, url, user, full, index, ended).await });
        LockGuard::new(
            self.user.clone(),
            index,
            crate::lock::LossTrigger::from_token(lost),
            release,
            Some(Box::new(stop.drop_guard())),
        )
    }
}

#[async_trait]
impl LockBackend for ConsulLock {
    async fn acquire(&self, wait: bool) -> Result<LockGuard> {
        let mut backoff = Backoff::new();
        loop {
            self.store.check_open()?;
            let session = self.store.session().await?;
            match self.attempt(&session).await {
                // No await between the grant and the guard: once the
                // attempt's answer is here, the caller owns the lock.
                Ok(index) => return Ok(self.guard(&session, index)),
                Err(WriteError::Failed(Error::KeyExists { .. })) if !wait => {
                    return Err(Error::Locked {
                        key: self.user.clone(),
                    })
                }
                Err(WriteError::Failed(Error::KeyExists { .. })) => self.wait_until_free().await?,
                Err(WriteError::LockDelay) if !wait => {
                    return Err(Error::Locked {
                        key: self.user.clone(),
                    })
                }
                Err(WriteError::LockDelay) => {
                    tracing::debug!(key = %self.user, "lock-delay in effect; retrying");
                    let closed = self.store.closed_token();
                    tokio::select! {
                        _ = closed.cancelled() => return Err(self.store.closed_error()),
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
                Err(WriteError::InvalidSession) => self.store.sessions().invalidate(&session),
                Err(WriteError::Failed(e)) => return Err(e),
            }
        }
    }
}

/// The receiving end of an acquire attempt's answer. Dropped unread — the
/// caller's `lock()` went away after the task sent a grant but before it was
/// read — it gives the grant back.
struct Unread {
    answered: Option<oneshot::Receiver<Result<u64, WriteError>>>,
    store: ConsulStore,
    user: String,
    full: String,
    session: Arc<Session>,
}

impl Drop for Unread {
    fn drop(&mut self) {
        let Some(mut answered) = self.answered.take() else {
            return;
        };
        let Some(Ok(index)) = settle_unread(&mut answered) else {
            return; // no answer yet: the task sees the closed channel itself
        };
        tracing::debug!(key = %self.user, "lock() was dropped with a grant unread; releasing it");
        self.store.tasks().spawn(give_back(
            self.store.clone(),
            self.user.clone(),
            self.full.clone(),
            index,
            self.session.clone(),
        ));
    }
}

/// The answer sent on a channel whose reader is going away, if one was
/// sent; once this returned `None`, no send can succeed, so a sender that
/// answers later keeps its value (and gives a grant back itself).
fn settle_unread<T>(answered: &mut oneshot::Receiver<T>) -> Option<T> {
    // Closed first: a send racing with the read then either lands before
    // the close (and is read below) or fails.
    answered.close();
    answered.try_recv().ok()
}

/// Releases a grant nobody took (a cancelled `lock()`).
async fn give_back(
    store: ConsulStore,
    user: String,
    full: String,
    index: u64,
    session: Arc<Session>,
) {
    let http = store.http().clone();
    let url = store.url().to_owned();
    let ended = session.lost.clone();
    if let Err(error) = release(http, url, user.clone(), full, index, ended).await {
        tracing::debug!(key = %user, %error, "releasing the lock of a cancelled lock() failed");
    }
}

fn unreachable_answer(user: &str) -> Result<u64, WriteError> {
    Err(WriteError::Failed(Error::Backend {
        backend: super::error::BACKEND,
        target: user.to_string(),
        source: "the lock attempt has no answer channel".into(),
    }))
}

impl ConsulLock {
    /// One acquire transaction, run in a task of its own that the caller
    /// only awaits. If the caller is gone when the task has its answer (its
    /// `lock()` future was dropped or timed out) and the lock was taken, the
    /// task releases it, so a cancelled `lock()` never leaves a held lock
    /// behind on a session that goes on being renewed.
    async fn attempt(&self, session: &Arc<Session>) -> Result<u64, WriteError> {
        let (answer, answered) = oneshot::channel();
        let store = self.store.clone();
        let user = self.user.clone();
        let full = self.full.clone();
        let value = self.value.clone();
        let session = session.clone();
        let mut unread = Unread {
            answered: Some(answered),
            store: self.store.clone(),
            user: self.user.clone(),
            full: self.full.clone(),
            session: session.clone(),
        };
        self.store.tasks().spawn(async move {
            let result = take(&store, &user, &full, &value, &session).await;
            if let Err(Ok(index)) = answer.send(result) {
                tracing::debug!(key = %user, "lock() was cancelled after the lock was taken; releasing it");
                give_back(store, user, full, index, session).await;
            }
        });
        let Some(answered) = unread.answered.as_mut() else {
            return unreachable_answer(&self.user);
        };
        let outcome = answered.await;
        // Read: from here on the caller owns the answer.
        unread.answered = None;
        match outcome {
            Ok(result) => result,
            Err(_) => Err(WriteError::Failed(Error::Backend {
                backend: super::error::BACKEND,
                target: self.user.clone(),
                source: "the lock attempt's task ended without an answer".into(),
            })),
        }
    }
}

/// The acquire transaction on `session`. When it fails in a way that may
/// hide an applied transaction (a timeout, a connection lost before the
/// answer), reads the key until that is settled: if it holds one of this
/// attempt's stamps and our session, the lock is ours after all.
async fn take(
    store: &ConsulStore,
    user: &str,
    full: &str,
    value: &[u8],
    session: &Arc<Session>,
) -> Result<u64, WriteError> {
    let mut stamps = Vec::new();
    let written = store
        .write_stamped(
            user,
            full,
            value,
            Expect::Absent,
            Some(&session.id),
            false,
            &mut stamps,
        )
        .await;
    match written {
        Err(WriteError::Failed(error)) if error.is_transient() && !stamps.is_empty() => {
            let read = until_settled(&session.lost, || async {
                store
                    .http()
                    .get(full, None)
                    .await
                    .map_err(|e| e.into_error("lock", user, store.url()))
            })
            .await;
            match read {
                Ok((_, Some(entry)))
                    if entry.session.as_deref() == Some(session.id.as_str())
                        && stamps.contains(&entry.flags) =>
                {
                    tracing::debug!(key = %user, "the acquire transaction was applied though its answer was lost");
                    Ok(entry.modify_index)
                }
                // Not ours (yet: the transaction may still be on its way
                // to the leader); or the session ended, and with it
                // whatever it took.
                _ => {
                    if !session.lost.is_cancelled() {
                        store.tasks().spawn(sweep_late_grant(
                            store.clone(),
                            user.to_owned(),
                            full.to_owned(),
                            stamps,
                            session.clone(),
                        ));
                    }
                    Err(WriteError::Failed(error))
                }
            }
        }
        other => other,
    }
}

/// How long [`sweep_late_grant`] watches for an acquire transaction that is
/// applied after its answer was given up on.
const LATE_GRANT_WATCH: Duration = Duration::from_secs(60);

/// After an acquire whose answer was lost, and whose key did not show it
/// when read: the transaction may still be applied (Consul goes on with a
/// request whose client hung up, and a write forwarded to a busy or newly
/// elected leader can take seconds). Applied, it would bind the key to our
/// session, which the handle goes on renewing, with no guard to release
/// it. So for [`LATE_GRANT_WATCH`] (or until the session ends) a blocking
/// query watches the key, and an entry that holds our session and one of
/// the attempt's stamps is released at its index. A transaction applied
/// later still holds the key until the session ends.
async fn sweep_late_grant(
    store: ConsulStore,
    user: String,
    full: String,
    stamps: Vec<u64>,
    session: Arc<Session>,
) {
    let until = later(Instant::now(), LATE_GRANT_WATCH);
    let ended = session.lost.clone();
    let mut index = 0;
    let mut backoff = Backoff::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let read = tokio::select! {
            _ = ended.cancelled() => return,
            read = store.http().get(&full, Some((index, left))) => read,
        };
        match read {
            Ok((at, entry)) => {
                backoff.reset();
                if let Some(entry) = entry.filter(|e| {
                    e.session.as_deref() == Some(session.id.as_str()) && stamps.contains(&e.flags)
                }) {
                    tracing::debug!(key = %user, "an acquire transaction was applied after its answer was given up on; releasing it");
                    let (http, url) = (store.http().clone(), store.url().to_owned());
                    if let Err(error) =
                        release(http, url, user.clone(), full, entry.modify_index, ended).await
                    {
                        tracing::debug!(key = %user, %error, "releasing a late-applied acquire failed");
                    }
                    return;
                }
                // An index that went back (a restored or new leader) restarts.
                index = if at < index { 0 } else { at };
            }
            Err(error) => {
                tracing::debug!(key = %user, ?error, "watching for a late-applied acquire");
                tokio::select! {
                    _ = ended.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay().min(left)) => {}
                }
            }
        }
    }
}

/// Cancels `lost` when the lock held at `index` is or may be lost, unless
/// `stop` (the guard went away) comes first.
async fn monitor(
    ctx: WatchContext,
    user: String,
    full: String,
    index: u64,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let mut watch = KeyWatch::new(ctx, user.clone(), full);
    let outcome = async {
        loop {
            match watch.next().await {
                Some(Ok(Some(KvPair { last_index, .. }))) if last_index == index => {}
                Some(Ok(_)) => return "the lock key was deleted or taken over",
                // The session deadline covers an unreachable agent.
                Some(Err(e)) if e.is_transient() => {
                    tracing::debug!(key = %user, error = %e, "lock monitor: transient error");
                }
                Some(Err(_)) | None => return "the lock key can no longer be watched",
            }
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = lost.cancelled() => {}
        why = outcome => {
            tracing::info!(key = %user, why, "lock lost");
            lost.cancel();
        }
    }
}

/// Deletes the lock key if it is still the one we wrote at `index`,
/// retrying transient failures until Consul answers or `ended` (the
/// session's `lost`: the session ended, or the handle was closed) is
/// cancelled, which releases the lock with the session.
async fn release(
    http: Http,
    url: String,
    user: String,
    full: String,
    index: u64,
    ended: CancellationToken,
) -> Result<()> {
    // Set once an attempt failed without an answer: it may have been applied.
    let unanswered = AtomicBool::new(false);
    until_settled(&ended, || async {
        let mut ops = Ops::new(full.len());
        ops.check_index(&full, index);
        ops.delete(&full);
        match http.txn(ops.finish()).await {
            Ok(_) => Ok(()),
            Err(super::error::ConsulError::TxnRejected { what })
                if !super::error::is_acl_message(&what) =>
            {
                // With the session still live, the key is gone or changed
                // because an earlier attempt deleted it (its answer lost),
                // or because a write took it over; neither leaves it ours.
                if unanswered.load(Ordering::Relaxed) && !ended.is_cancelled() {
                    Ok(())
                } else {
                    Err(Error::LockLost { key: user.clone() })
                }
            }
            Err(e) => {
                unanswered.store(true, Ordering::Relaxed);
                Err(e.into_error("unlock", &user, &url))
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer sent after its reader settled the channel as unanswered is
    /// refused, so the sender still has the grant to give back: it is never
    /// dropped with the channel, held by nobody.
    #[test]
    fn an_answer_sent_after_the_reader_settled_comes_back_to_the_sender() {
        let (answer, mut answered) = oneshot::channel::<u64>();
        assert_eq!(settle_unread(&mut answered), None);
        assert_eq!(
            answer.send(7),
            Err(7),
            "the late answer was accepted and lost"
        );
    }

    #[test]
    fn an_answer_sent_before_the_reader_settled_is_read() {
        let (answer, mut answered) = oneshot::channel::<u64>();
        assert_eq!(answer.send(7), Ok(()));
        assert_eq!(settle_unread(&mut answered), Some(7));
    }
}
