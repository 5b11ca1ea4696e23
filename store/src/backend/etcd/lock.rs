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
//!   `get(K)` returns the holder's value while the lock is held. Its create
//!   revision is the fencing token: it is created anew by every holder, so
//!   tokens strictly increase.
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
//! A release (one Txn deleting `K` and the waiter key if `K` still has our
//! create revision) thus hands over in about two round trips. The Txn is
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
/// Value of a waiter key still waiting.
const WAITING: &[u8] = b"";

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
        };

        // 1. Free? Take it. Otherwise (lock) enqueue and look at who is ahead.
        let otherwise = if wait {
            vec![
                TxnOp::put(waiter.clone(), WAITING.to_vec(), Self::lease_put(lease)),
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
            return Ok(self.guard(lease, waiter, revision, cleanup));
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
                self.wait_deleted(lease, blocker).await?;
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
                return Ok(self.guard(lease, waiter, revision, cleanup));
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
                    // An earlier attempt of this Txn succeeded after all.
                    let token = held.create_revision;
                    return Ok(self.guard(lease, waiter, token, cleanup));
                }
            }
            blocker = ahead
                .map(|kv| kv.key)
                .or_else(|| holder.map(|_| self.full.clone()))
                .map(|key| Blocker { key, revision });
        }
    }

    /// Waits until `blocker` is deleted (or the watch cannot tell; the caller
    /// then re-checks).
    async fn wait_deleted(
        &self,
        lease: &Lease,
        blocker: Blocker,
    ) -> std::result::Result<(), Failure> {
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
                Some(Ok(None)) => return Ok(()),
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
        let full = self.full.clone();
        let key = self.user.clone();
        let ended = lease.lost.clone();
        let release = async move {
            let core = store.core();
            if core.closed.is_cancelled() {
                // close() revoked the session lease: the lock is released.
                return Ok(());
            }
            release(core, &ended, full, waiter, token, &key).await
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

/// Releases the lock held at `token` (the lock key's create revision) by
/// the waiter key `waiter`: deletes both keys if the lock key is still ours.
///
/// The Txn is safe to repeat, so transient failures are retried (with the
/// shared backoff) until the server answers, the session lease is lost
/// (`ended`: its end removes both keys) or the store closes (which revokes
/// the lease). A repeat after an attempt whose outcome is unknown may find
/// both keys already gone: that attempt was applied, and the release is
/// confirmed.
async fn release(
    core: &Arc<Core>,
    ended: &CancellationToken,
    full: Vec<u8>,
    waiter: Vec<u8>,
    token: i64,
    key: &str,
) -> Result<()> {
    let txn = Txn::new()
        .when([Compare::create_revision(
            full.clone(),
            CompareOp::Equal,
            token,
        )])
        .and_then([
            TxnOp::delete(full, None),
            TxnOp::delete(waiter.clone(), None),
        ])
        .or_else([
            TxnOp::get(waiter.clone(), Some(GetOptions::new().with_count_only())),
            TxnOp::delete(waiter, None),
        ]);
    let mut unknown_outcome = false;
    let (response, first) = crate::retry::until_settled(ended, || {
        let txn = txn.clone();
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
    if response.succeeded {
        return Ok(());
    }
    let waiter_was_there = super::kv::present(response.responses.into_iter().next());
    if !first && !waiter_was_there {
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
struct Cleanup {
    core: Arc<Core>,
    waiter: Vec<u8>,
    full: Vec<u8>,
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
        let lease = self.lease;
        let ended = self.ended.clone();
        let in_flight = self.in_flight.take();
        self.core.tasks.clone().spawn(async move {
            if let Some(in_flight) = in_flight {
                // Whatever it wrote is in place once it answered (or failed).
                let _ = in_flight.await;
            }
            let txn = Txn::new()
                .when([
                    Compare::value(waiter.clone(), CompareOp::Equal, HELD.to_vec()),
                    Compare::lease(full.clone(), CompareOp::Equal, lease),
                ])
                .and_then([
                    TxnOp::delete(waiter.clone(), None),
                    TxnOp::delete(full, None),
                ])
                .or_else([TxnOp::delete(waiter, None)]);
            // Safe to repeat; retried until the server answers or the
            // lease (whose end removes the keys anyway) is lost.
            let outcome = crate::retry::until_settled(&ended, || async {
                core.cluster
                    .call(core.request_timeout, true, |node| {
                        let kv = node.kv();
                        let txn = txn.clone();
                        async move { kv.txn(txn).await }
                    })
                    .await
                    .map_err(|e| core.call_error(e, "remove an abandoned lock waiter", ""))
            })
            .await;
            if let Err(error) = outcome {
                tracing::debug!(?error, "could not remove an abandoned lock waiter");
            }
        });
    }
}
