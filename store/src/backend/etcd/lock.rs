//! Native etcd locks: a revision-ordered queue of waiter keys, with the
//! holder's value in the user-visible lock key.
//!
//! # Keys
//! For the lock key `K` (namespace included) there are two kinds of keys,
//! both attached to the session lease of the handle that wrote them:
//!
//! * **Waiter keys** `\0anykv-lock\0K\0<lease hex>-<seq hex>`, one per
//!   acquisition attempt. They start with a NUL byte, which no anykv key
//!   can contain, so they lie outside every namespace: `list`, `watch_tree`
//!   and `delete_tree` never see them (the root namespace's ranges start at
//!   `\x01`). Their create revisions order the queue, as in etcd's
//!   `concurrency.Mutex`.
//! * **The lock key `K` itself**, written by the waiter at the head of the
//!   queue with [`LockOptions::value`](crate::LockOptions), so that
//!   `get(K)` returns the holder's value while the lock is held. Its
//!   modification revision is the fencing token: every holder writes it
//!   anew (creating it, or a hand-over rewriting it), so tokens strictly
//!   increase.
//!
//! # Acquire
//! 1. One Txn: if the queue is empty and `K` absent, create our waiter key
//!    (marked `held`) and `K` → held, in one round trip. Otherwise
//!    `try_lock` fails with `Locked` (nothing was written); `lock` enqueues
//!    its waiter key in the same Txn and reads its predecessor.
//! 2. A waiter watches only its immediate predecessor's key (the waiter with
//!    the highest create revision below its own) for deletion, from the
//!    revision it last read — no thundering herd, nothing missed.
//! 3. Then one Txn: if no waiter below ours exists, ours still exists and
//!    `K` is absent, write `K` and mark ours `held`. Otherwise the same Txn
//!    returns the new predecessor (or `K`'s holder, e.g. after a foreign
//!    `put` on `K`) and the waiter waits again.
//!
//! # Release and hand-over
//! The release reads the queue's first waiters (a member-local read) and,
//! if a waiter is next in line, hands the lock to it in one Txn: `K` is
//! written with that waiter's value and lease (the Txn's revision, `K`'s
//! modification revision, is the new holder's fencing token), its waiter
//! key is marked `held`, and ours is rewritten to name it (`to:<its key>`,
//! bound to its lease; the new holder deletes it with its own keys, or its
//! lease's end does). The Txn applies only while `K` is still ours and that
//! waiter's key unchanged. The waiter, watching our waiter key, sees the
//! rewrite naming it and holds the lock without a Txn of its own: a
//! hand-over is one commit and one watch event. Waiter keys hold `w` and
//! the waiter's value, so a releaser knows the value to write; a waiter
//! key of an older version (an empty value) is never handed the lock.
//!
//! Otherwise (no one waiting, the waiter gone meanwhile, its lease ended)
//! the release is one Txn deleting `K` and our waiter key if `K` is still
//! ours, and the next waiter takes the lock itself (step 3). That Txn is
//! safe to repeat, so the release retries transient failures
//! ([`crate::retry::until_settled`]) until the server answers, the session
//! lease is lost (its end removes both keys) or the store closes: an
//! `unlock()` whose caller gave up during an outage still frees the lock as
//! soon as the server is back.
//!
//! # Lost
//! The guard's `lost()` fires when the session lease is lost (expired,
//! revoked, or no keep-alive confirmed before the client-side deadline, see
//! the session module), when `K` is deleted or rewritten by anyone (a watch
//! from the token revision, resumed across disconnects), or when the store
//! closes.
//!
//! # Cancellation
//! A `lock()` future dropped mid-way deletes its waiter key (and `K`, if the
//! waiter had already been marked `held`) in the background, retrying
//! transient failures until the session lease is lost, so it never blocks
//! the queue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::proto::{PbKeyValue, PbTxnOpResponse, PbTxnResponse};
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp};
use tokio_util::sync::CancellationToken;

use super::cluster::CallError;
use super::error::Kind;
use super::session::Lease;
use super::watch::{KeyView, Watcher};
use super::{prefix_end, Core, EtcdStore};
use crate::error::{Error, Result};
use crate::lock::{LockBackend, LockGuard};
use crate::retry::Backoff;

/// Value of a waiter key whose owner holds the lock.
const HELD: &[u8] = b"held";
/// First byte of a waiter key still waiting; the rest is the waiter's lock
/// value, so that a releasing holder can hand the lock on with it. (Waiter
/// keys of older versions hold an empty value and are never handed the
/// lock; they take it themselves.)
const WAITING: u8 = b'w';
/// Prefix of a waiter key whose holder handed the lock on at its release;
/// the rest is the key of the waiter it handed it to. Such a key is bound
/// to that next holder's lease and left for it to delete (in its own
/// release or cleanup); its lease's end removes it otherwise.
const HANDED: &[u8] = b"to:";

/// The value a releasing holder leaves in its waiter key when it hands
/// the lock to the waiter `next`.
fn handed_to(next: &[u8]) -> Vec<u8> {
    [HANDED, next].concat()
}

/// How a wait for the predecessor ended.
enum Woken {
    /// It is gone (or the watch cannot tell): try to take the lock.
    Gone,
    /// It handed the lock to us at this revision (our fencing token).
    Handed(i64),
}

/// Makes waiter keys unique per acquisition attempt within a lease.
static NEXT_WAITER: AtomicU64 = AtomicU64::new(1);

/// The queue prefix of lock key `full`.
fn queue_prefix(full: &str) -> Vec<u8> {
    let mut prefix = b"\0anykv-lock\0".to_vec();
    prefix.extend_from_slice(full.as_bytes());
    prefix.push(0);
    prefix
}

/// A lock on one key of an [`EtcdStore`]; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct EtcdLock {
    /// Holding the store keeps the session (and so the lock) alive.
    store: EtcdStore,
    user: String,
    full: Vec<u8>,
    queue: Vec<u8>,
    queue_end: Vec<u8>,
    value: Bytes,
}

/// Why one acquisition attempt ended without a guard.
enum Failure {
    /// The session lease vanished under us: try once more with a new one.
    LeaseGone,
    Error(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Error(e)
    }
}

/// What a waiter waits for: the deletion of `key`, seen at `revision`.
struct Blocker {
    key: Vec<u8>,
    revision: i64,
}

impl EtcdLock {
    pub(crate) fn new(store: EtcdStore, user: String, full: String, value: Bytes) -> Self {
        let queue = queue_prefix(&full);
        EtcdLock {
            store,
            user,
            queue_end: prefix_end(&queue),
            queue,
            full: full.into_bytes(),
            value,
        }
    }

    fn core(&self) -> &Arc<Core> {
        self.store.core()
    }

    /// The value of our waiter key while it waits.
    fn waiting_value(&self) -> Vec<u8> {
        let mut value = Vec::with_capacity(self.value.len() + 1);
        value.push(WAITING);
        value.extend_from_slice(&self.value);
        value
    }

    fn lease_put(lease: &Lease) -> Option<PutOptions> {
        Some(PutOptions::new().with_lease(lease.id))
    }

    /// The two writes that make `waiter` the holder.
    fn take_ops(&self, lease: &Lease, waiter: &[u8]) -> Vec<TxnOp> {
        vec![
            TxnOp::put(waiter.to_vec(), HELD.to_vec(), Self::lease_put(lease)),
            TxnOp::put(
                self.full.clone(),
                self.value.to_vec(),
                Self::lease_put(lease),
            ),
        ]
    }

    /// Sends an acquire Txn from a task of its own and waits for its answer.
    ///
    /// The task, not this future, owns the request: if the caller's `lock()`
    /// is dropped while the Txn is in flight, `cleanup` (which holds the
    /// task) first waits for the Txn's answer and only then deletes what it
    /// wrote. A cleanup sent while the Txn is still in flight could be
    /// applied before it and leave the lock held by nobody.
    async fn txn(
        &self,
        cleanup: &mut Cleanup,
        txn: Txn,
    ) -> std::result::Result<etcd_client::TxnResponse, CallError> {
        let core = self.core().clone();
        let tasks = core.tasks.clone();
        let task = tasks.spawn(async move {
            core.cluster
                .call(core.request_timeout, false, |node| {
                    let kv = node.kv();
                    let txn = txn.clone();
                    async move { kv.txn(txn).await }
                })
                .await
        });
        let in_flight = cleanup.in_flight.insert(task);
        let outcome = in_flight.await;
        cleanup.in_flight = None;
        outcome.unwrap_or_else(|join| Err(CallError::Aborted(join.to_string())))
    }

    fn failure(&self, e: CallError) -> Failure {
        if e.kind() == Kind::LeaseNotFound {
            return Failure::LeaseGone;
        }
        Failure::Error(self.core().call_error(e, "lock", &self.user))
    }

    /// The revision a Txn was applied at.
    fn revision(&self, response: &PbTxnResponse) -> std::result::Result<i64, Failure> {
        let revision = super::revision(response.header.as_ref(), &self.user)?;
        Ok(i64::try_from(revision).unwrap_or(i64::MAX))
    }

    fn lost(&self) -> Error {
        Error::LockLost {
            key: self.user.clone(),
        }
    }

    async fn attempt(
        &self,
        lease: &Arc<Lease>,
        wait: bool,
    ) -> std::result::Result<LockGuard, Failure> {
        let core = self.core();
        let seq = NEXT_WAITER.fetch_add(1, Ordering::Relaxed);
        let mut waiter = self.queue.clone();
        waiter.extend_from_slice(format!("{:016x}-{seq:x}", lease.id).as_bytes());
        let mut cleanup = Cleanup {
            core: core.clone(),
            waiter: waiter.clone(),
            full: self.full.clone(),
            lease: lease.id,
            ended: lease.lost.clone(),
            armed: true,
            in_flight: None,
            predecessor: None,
            queue: self.queue.clone(),
            queue_end: self.queue_end.clone(),
        };

        // 1. Free? Take it. Otherwise (lock) enqueue and look at who is ahead.
        let otherwise = if wait {
            vec![
                TxnOp::put(waiter.clone(), self.waiting_value(), Self::lease_put(lease)),
                TxnOp::get(
                    self.queue.clone(),
                    Some(
                        GetOptions::new()
                            .with_range(self.queue_end.clone())
                            .with_sort(SortTarget::Create, SortOrder::Descend)
                            .with_limit(2)
                            .with_keys_only(),
                    ),
                ),
                TxnOp::get(self.full.clone(), Some(GetOptions::new().with_keys_only())),
            ]
        } else {
            Vec::new()
        };
        let txn = Txn::new()
            .when([
                Compare::create_revision(self.queue.clone(), CompareOp::Equal, 0)
                    .with_range(self.queue_end.clone()),
                Compare::create_revision(self.full.clone(), CompareOp::Equal, 0),
            ])
            .and_then(self.take_ops(lease, &waiter))
            .or_else(otherwise);
        let response = self
            .txn(&mut cleanup, txn)
            .await
            .map_err(|e| self.failure(e))?
            .0;
        let revision = self.revision(&response)?;
        if response.succeeded {
            return Ok(self.guard(lease, waiter, revision, cleanup, None));
        }
        if !wait {
            cleanup.armed = false; // nothing was written
            return Err(Error::Locked {
                key: self.user.clone(),
            }
            .into());
        }
        let mine = revision;
        let mut ops = response.responses.into_iter().map(|op| op.response);
        let _put = ops.next();
        let ahead = range_kvs(ops.next().flatten());
        let holder = range_kvs(ops.next().flatten());
        let mut blocker = ahead
            .into_iter()
            .find(|kv| kv.create_revision < mine)
            .map(|kv| kv.key)
            .or_else(|| holder.into_iter().next().map(|kv| kv.key))
            .map(|key| Blocker { key, revision });

        // 2./3. Wait for whoever is ahead, then try to take it.
        let mut backoff = Backoff::default();
        loop {
            if let Some(blocker) = blocker.take() {
                if blocker.key != self.full {
                    cleanup.predecessor = Some(blocker.key.clone());
                }
                let predecessor = cleanup.predecessor.clone();
                if let Woken::Handed(token) = self.wait_deleted(lease, blocker, &waiter).await? {
                    return Ok(self.guard(lease, waiter, token, cleanup, predecessor));
                }
            }
            let txn = Txn::new()
                .when([
                    Compare::create_revision(self.queue.clone(), CompareOp::Greater, mine - 1)
                        .with_range(self.queue_end.clone()),
                    Compare::create_revision(waiter.clone(), CompareOp::Equal, mine),
                    Compare::create_revision(self.full.clone(), CompareOp::Equal, 0),
                ])
                .and_then(self.take_ops(lease, &waiter))
                .or_else([
                    TxnOp::get(
                        self.queue.clone(),
                        Some(
                            GetOptions::new()
                                .with_range(self.queue_end.clone())
                                .with_max_create_revision(mine - 1)
                                .with_sort(SortTarget::Create, SortOrder::Descend)
                                .with_limit(1)
                                .with_keys_only(),
                        ),
                    ),
                    TxnOp::get(waiter.clone(), None),
                    TxnOp::get(self.full.clone(), None),
                ]);
            let response = match self.txn(&mut cleanup, txn).await {
                Ok(response) => response.0,
                Err(e) if e.kind() == Kind::Transient => {
                    // Safe to retry: a Txn that did take the lock is
                    // recognised below by our waiter being marked held.
                    tracing::debug!(error = ?e, key = %self.user, "lock: retrying after a transient error");
                    tokio::select! {
                        biased;
                        _ = core.closed.cancelled() => return Err(core.closed_error().into()),
                        _ = lease.lost.cancelled() => return Err(Failure::LeaseGone),
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                    continue;
                }
                Err(e) => return Err(self.failure(e)),
            };
            backoff.reset();
            let revision = self.revision(&response)?;
            if response.succeeded {
                return Ok(self.guard(lease, waiter, revision, cleanup, None));
            }
            let mut ops = response.responses.into_iter().map(|op| op.response);
            let ahead = range_kvs(ops.next().flatten()).into_iter().next();
            let Some(me) = range_kvs(ops.next().flatten()).into_iter().next() else {
                // Our waiter key is gone: the session lease ended.
                return Err(Failure::LeaseGone);
            };
            let holder = range_kvs(ops.next().flatten()).into_iter().next();
            if me.value == HELD {
                if let Some(held) = holder.as_ref().filter(|kv| kv.lease == lease.id) {
                    // An earlier attempt of this Txn succeeded after all, or
                    // the last holder handed the lock to us.
                    let token = held.mod_revision;
                    return Ok(self.guard(lease, waiter, token, cleanup, None));
                }
            }
            blocker = ahead
                .map(|kv| kv.key)
                .or_else(|| holder.map(|_| self.full.clone()))
                .map(|key| Blocker { key, revision });
        }
    }

    /// Waits until `blocker` is deleted (or the watch cannot tell; the caller
    /// then re-checks), or until it hands the lock to our waiter key `me`.
    async fn wait_deleted(
        &self,
        lease: &Lease,
        blocker: Blocker,
        me: &[u8],
    ) -> std::result::Result<Woken, Failure> {
        let handed = handed_to(me);
        let core = self.core();
        let watcher = || {
            Watcher::new(
                core.clone(),
                // "Present at some version": any deletion is news.
                KeyView::after(self.user.clone(), Some(0)),
                self.user.clone(),
                blocker.key.clone(),
                Vec::new(),
                blocker.revision,
            )
        };
        // Started, the watch opens at the current revision and then reads
        // (etcd serves such a watch at once, see `Watcher::start`); if that
        // fails, it resumes from the revision the blocker was seen at.
        let mut watch = match watcher().start().await {
            Ok(watch) => watch,
            Err(e) => {
                tracing::debug!(error = %e, key = %self.user, "lock wait: watch not started; resuming");
                watcher()
            }
        };
        loop {
            let item = tokio::select! {
                biased;
                _ = lease.lost.cancelled() => return Err(Failure::LeaseGone),
                item = watch.next() => item,
            };
            match item {
                Some(Ok(None)) => return Ok(Woken::Gone),
                Some(Ok(Some(pair))) if pair.value == handed => {
                    let token = i64::try_from(pair.last_index).unwrap_or(i64::MAX);
                    return Ok(Woken::Handed(token));
                }
                Some(Ok(Some(_))) => {} // rewritten, e.g. marked held: keep waiting
                Some(Err(e)) if e.is_transient() => {
                    tracing::debug!(error = %e, key = %self.user, "lock wait: transient watch error");
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Err(core.closed_error().into()),
            }
        }
    }

    fn guard(
        &self,
        lease: &Arc<Lease>,
        waiter: Vec<u8>,
        token: i64,
        mut cleanup: Cleanup,
        predecessor: Option<Vec<u8>>,
    ) -> LockGuard {
        cleanup.armed = false;
        let core = self.core().clone();
        let lost = lease.lost.child_token();
        let stop = CancellationToken::new();
        let watch = Watcher::new(
            core.clone(),
            KeyView::after(self.user.clone(), Some(token)),
            self.user.clone(),
            self.full.clone(),
            Vec::new(),
            token,
        );
        core.tasks.spawn(monitor(
            watch,
            self.user.clone(),
            lost.clone(),
            stop.clone(),
        ));

        let store = self.store.clone();
        let held = Held {
            full: self.full.clone(),
            predecessor,
            waiter,
            queue: self.queue.clone(),
            queue_end: self.queue_end.clone(),
            token,
        };
        let key = self.user.clone();
        let ended = lease.lost.clone();
        let release = async move {
            let core = store.core();
            if core.closed.is_cancelled() {
                // close() revoked the session lease: the lock is released.
                return Ok(());
            }
            release(core, &ended, held, &key).await
        };
        LockGuard::new(
            self.user.clone(),
            u64::try_from(token).unwrap_or(0),
            crate::lock::LossTrigger::from_token(lost),
            Box::pin(release),
            Some(Box::new(stop.drop_guard())),
        )
    }
}

/// What a guard releases: the lock key `full` written at revision `token`
/// (its fencing token) for the waiter key `waiter` of the queue
/// `queue`..`queue_end`.
struct Held {
    full: Vec<u8>,
    /// The waiter key of the holder that handed the lock to us, left for us
    /// to delete.
    predecessor: Option<Vec<u8>>,
    waiter: Vec<u8>,
    queue: Vec<u8>,
    queue_end: Vec<u8>,
    token: i64,
}

/// The waiter next in line after ours, if it can be handed the lock: a
/// member-local read of the first two waiters by create revision (ours
/// first). A read that is behind is harmless: the hand-over Txn compares
/// what it read.
async fn successor(core: &Arc<Core>, held: &Held) -> Option<PbKeyValue> {
    let options = GetOptions::new()
        .with_range(held.queue_end.clone())
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(3)
        .with_serializable();
    let read = core
        .cluster
        .call(core.request_timeout, true, |node| {
            let kv = node.kv();
            let queue = held.queue.clone();
            let options = options.clone();
            async move { kv.get(queue, Some(options)).await }
        })
        .await
        .ok()?;
    // The key of the holder that handed the lock to us may still be first.
    let mut kvs = read
        .0
        .kvs
        .into_iter()
        .filter(|kv| !kv.value.starts_with(HANDED));
    let first = kvs.next()?;
    let next = kvs.next()?;
    (first.key == held.waiter && next.value.first() == Some(&WAITING) && next.lease != 0)
        .then_some(next)
}

/// Releases the lock held at `held.token` by the waiter key `held.waiter`.
///
/// If another waiter is next in line, the release hands the lock to it in
/// the same Txn: the lock key is written with that waiter's value and
/// lease (its modification revision, this Txn's, is the new holder's
/// fencing token) and its waiter key marked held, so the next holder needs
/// no Txn of its own, only the notification. The Txn applies only while the
/// lock key is still ours and that waiter unchanged; otherwise (or if the
/// waiter's lease is gone) the release deletes both of our keys and the
/// next waiter takes the lock itself.
///
/// That plain release is safe to repeat, so transient failures are retried
/// (with the shared backoff) until the server answers, the session lease is
/// lost (`ended`: its end removes both keys) or the store closes (which
/// revokes the lease). A repeat after an attempt whose outcome is unknown
/// may find our waiter key already gone: that attempt was applied, and the
/// release is confirmed.
async fn release(core: &Arc<Core>, ended: &CancellationToken, held: Held, key: &str) -> Result<()> {
    let leftover: Vec<TxnOp> = held
        .predecessor
        .iter()
        .map(|key| TxnOp::delete(key.clone(), None))
        .collect();
    let plain = Txn::new()
        .when([Compare::mod_revision(
            held.full.clone(),
            CompareOp::Equal,
            held.token,
        )])
        .and_then(
            [
                TxnOp::delete(held.full.clone(), None),
                TxnOp::delete(held.waiter.clone(), None),
            ]
            .into_iter()
            .chain(leftover.clone())
            .collect::<Vec<_>>(),
        )
        .or_else(
            [
                TxnOp::get(held.waiter.clone(), None),
                TxnOp::delete(held.waiter.clone(), None),
            ]
            .into_iter()
            .chain(leftover.clone())
            .collect::<Vec<_>>(),
        );
    let mut unknown_outcome = false;
    if let Some(next) = successor(core, &held).await {
        let lease = Some(PutOptions::new().with_lease(next.lease));
        let lease_next = lease.clone();
        let handover = Txn::new()
            .when([
                Compare::mod_revision(held.full.clone(), CompareOp::Equal, held.token),
                Compare::mod_revision(next.key.clone(), CompareOp::Equal, next.mod_revision),
            ])
            .and_then(
                [
                    TxnOp::put(held.full.clone(), next.value[1..].to_vec(), lease.clone()),
                    TxnOp::put(next.key.clone(), HELD.to_vec(), lease),
                    // On the next holder's lease: if it dies, its end
                    // removes this key with its own, never blocking the
                    // waiters behind it.
                    TxnOp::put(held.waiter.clone(), handed_to(&next.key), lease_next),
                ]
                .into_iter()
                .chain(leftover)
                .collect::<Vec<_>>(),
            )
            .or_else([TxnOp::txn(plain.clone())]);
        let sent = core
            .cluster
            .call(core.request_timeout, false, |node| {
                let kv = node.kv();
                let txn = handover.clone();
                async move { kv.txn(txn).await }
            })
            .await;
        match sent {
            Ok(response) if response.0.succeeded => return Ok(()),
            Ok(response) => {
                // The plain release ran inside.
                let inner =
                    response
                        .0
                        .responses
                        .into_iter()
                        .next()
                        .and_then(|op| match op.response {
                            Some(PbTxnOpResponse::ResponseTxn(inner)) => Some(inner),
                            _ => None,
                        });
                if let Some(inner) = inner {
                    return plain_outcome(inner, true, key);
                }
                unknown_outcome = true;
            }
            // The next waiter's lease ended meanwhile: nothing was applied.
            Err(e) if e.kind() == Kind::LeaseNotFound => {}
            Err(e) => {
                tracing::debug!(error = ?e, %key, "unlock: the hand-over failed; releasing plainly");
                unknown_outcome = true;
            }
        }
    }
    let (response, first) = crate::retry::until_settled(ended, || {
        let txn = plain.clone();
        let first = !unknown_outcome;
        unknown_outcome = true;
        async move {
            let response = core
                .cluster
                .call(core.request_timeout, false, |node| {
                    let kv = node.kv();
                    let txn = txn.clone();
                    async move { kv.txn(txn).await }
                })
                .await
                .map_err(|e| core.call_error(e, "unlock", key))?;
            Ok((response.0, first))
        }
    })
    .await?;
    plain_outcome(response, first, key)
}

/// What the plain release Txn's answer says. `first`: no earlier attempt
/// may have been applied.
fn plain_outcome(response: PbTxnResponse, first: bool, key: &str) -> Result<()> {
    if response.succeeded {
        return Ok(());
    }
    let ours = range_kvs(
        response
            .responses
            .into_iter()
            .next()
            .and_then(|op| op.response),
    )
    .into_iter()
    .next();
    if ours.as_ref().is_some_and(|kv| kv.value.starts_with(HANDED)) {
        // A hand-over whose answer was lost went through.
        return Ok(());
    }
    if !first && ours.is_none() {
        // An earlier attempt, whose answer was lost, deleted both keys.
        return Ok(());
    }
    Err(Error::LockLost {
        key: key.to_owned(),
    })
}

#[async_trait]
impl LockBackend for EtcdLock {
    async fn acquire(&self, wait: bool) -> Result<LockGuard> {
        let core = self.core();
        core.check_open()?;
        let mut retried = false;
        loop {
            let lease = core.session.lease().await?;
            match self.attempt(&lease, wait).await {
                Ok(guard) => return Ok(guard),
                Err(Failure::Error(e)) => return Err(e),
                Err(Failure::LeaseGone) => {
                    core.session.lease_gone(&lease);
                    if retried || core.closed.is_cancelled() {
                        return Err(self.lost());
                    }
                    retried = true;
                }
            }
        }
    }
}

/// Reports the lock lost when its key changes or the store can no longer
/// tell. Ends when the guard goes (`stop`) or `lost` fires otherwise.
async fn monitor(
    mut watch: Watcher<KeyView>,
    key: String,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    loop {
        let item = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = lost.cancelled() => return,
            item = watch.next() => item,
        };
        match item {
            Some(Ok(_)) => {
                tracing::info!(%key, "etcd lock key deleted or rewritten: lock lost");
                lost.cancel();
                return;
            }
            // The session deadline covers outages; the watch resumes.
            Some(Err(e)) if e.is_transient() => {}
            Some(Err(error)) => {
                tracing::warn!(%key, %error, "etcd lock state unknown: reporting lock as lost");
                lost.cancel();
                return;
            }
            None => {
                lost.cancel();
                return;
            }
        }
    }
}

fn range_kvs(op: Option<PbTxnOpResponse>) -> Vec<PbKeyValue> {
    match op {
        Some(PbTxnOpResponse::ResponseRange(range)) => range.kvs,
        _ => Vec::new(),
    }
}

/// Deletes an abandoned waiter key (and the lock key, if that waiter had
/// taken it) when an acquisition is dropped before it returned a guard.
///
/// A waiter that was handed the lock may not know by whom: a hand-over can
/// land after the enqueue Txn was applied but before its answer reached
/// the dropped future. The holder's leftover waiter key, which names ours
/// (`to:<ours>`) and is bound to our lease, would then block the queue
/// until our session ended; so the cleanup reads the queue with its first
/// Txn and deletes any key naming ours, compared on that value.
struct Cleanup {
    core: Arc<Core>,
    waiter: Vec<u8>,
    /// The waiter key we wait behind: if its holder handed the lock to us,
    /// its leftover key is ours to delete.
    predecessor: Option<Vec<u8>>,
    full: Vec<u8>,
    queue: Vec<u8>,
    queue_end: Vec<u8>,
    lease: i64,
    /// The lease's loss: its end removes the keys, so retries stop there.
    ended: CancellationToken,
    armed: bool,
    /// The acquire Txn in flight, if any: the cleanup runs after its answer.
    in_flight:
        Option<tokio::task::JoinHandle<std::result::Result<etcd_client::TxnResponse, CallError>>>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed || self.core.closed.is_cancelled() {
            return;
        }
        let core = self.core.clone();
        let waiter = std::mem::take(&mut self.waiter);
        let full = std::mem::take(&mut self.full);
        let queue = std::mem::take(&mut self.queue);
        let queue_end = std::mem::take(&mut self.queue_end);
        let lease = self.lease;
        let ended = self.ended.clone();
        let in_flight = self.in_flight.take();
        let predecessor = self.predecessor.take();
        self.core.tasks.clone().spawn(async move {
            if let Some(in_flight) = in_flight {
                // Whatever it wrote is in place once it answered (or failed).
                let _ = in_flight.await;
            }
            let naming_ours = handed_to(&waiter);
            let read_queue = TxnOp::get(queue, Some(GetOptions::new().with_range(queue_end)));
            let leftover = predecessor.clone().map(|key| TxnOp::delete(key, None));
            let txn = Txn::new()
                .when([
                    Compare::value(waiter.clone(), CompareOp::Equal, HELD.to_vec()),
                    Compare::lease(full.clone(), CompareOp::Equal, lease),
                ])
                .and_then(
                    // Held: taken (the predecessor is gone already) or
                    // handed over (its leftover key goes too).
                    [
                        read_queue.clone(),
                        TxnOp::delete(waiter.clone(), None),
                        TxnOp::delete(full, None),
                    ]
                    .into_iter()
                    .chain(leftover)
                    .collect::<Vec<_>>(),
                )
                .or_else([read_queue, TxnOp::delete(waiter, None)]);
            // Each step is safe to repeat; retried until the server answers
            // or the lease (whose end removes the keys anyway) is lost.
            let send = |txn: Txn, what: &'static str| {
                let core = core.clone();
                let ended = ended.clone();
                async move {
                    crate::retry::until_settled(&ended, || async {
                        core.cluster
                            .call(core.request_timeout, true, |node| {
                                let kv = node.kv();
                                let txn = txn.clone();
                                async move { kv.txn(txn).await }
                            })
                            .await
                            .map(|response| response.0)
                            .map_err(|e| core.call_error(e, what, ""))
                    })
                    .await
                }
            };
            let response = match send(txn, "remove an abandoned lock waiter").await {
                Ok(response) => response,
                Err(error) => {
                    tracing::debug!(?error, "could not remove an abandoned lock waiter");
                    return;
                }
            };
            let queued = range_kvs(
                response
                    .responses
                    .into_iter()
                    .next()
                    .and_then(|op| op.response),
            );
            for kv in queued {
                if kv.value != naming_ours || predecessor.as_ref() == Some(&kv.key) {
                    continue;
                }
                // A hand-over we never heard of: its leftover goes too.
                let txn = Txn::new()
                    .when([Compare::value(
                        kv.key.clone(),
                        CompareOp::Equal,
                        naming_ours.clone(),
                    )])
                    .and_then([TxnOp::delete(kv.key, None)]);
                if let Err(error) = send(txn, "remove a leftover lock waiter").await {
                    tracing::debug!(?error, "could not remove a leftover lock waiter");
                }
            }
        });
    }
}
