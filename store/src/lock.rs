//! Distributed locks with fencing tokens.
//!
//! [`Lock`] is what [`crate::Store::new_lock`] returns. A backend either
//! brings its own implementation of [`LockBackend`] (etcd's revision queue,
//! ZooKeeper's sequential nodes, …) or uses [`GenericLock`], which any store
//! with compare-and-swap, ephemeral keys and watches gets for free.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::{BoxFuture, CatchUnwind};
use futures::FutureExt;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::store::{Store, StoreExt};
use crate::task::Tasks;
use crate::time::later;
use crate::types::{KvPair, LockOptions, PutOptions};

/// The backend side of a [`Lock`]: acquire once, return a guard.
///
/// A guard's `lost` token must fire before anyone else can be granted the
/// lock, also when the store becomes unreachable: an implementation needs a
/// client-side deadline, not only server notifications. [`GenericLock`] has
/// one (TTL/2 after the last confirming read), which is sound if the backend
/// renews its sessions at least every third of their TTL, so that a key seen
/// at time `t` lives until at least `t + 2/3·TTL`.
#[async_trait]
pub trait LockBackend: Send + Sync + fmt::Debug {
    /// Acquires the lock. With `wait = false`, fails at once with
    /// [`Error::Locked`] if someone else holds it; with `wait = true`, waits
    /// (woken by a watch, not by polling) until it is held.
    async fn acquire(&self, wait: bool) -> Result<LockGuard>;
}

/// A lock on one key, created by [`crate::Store::new_lock`].
///
/// The lock is not reentrant: a second `lock()` waits for the first guard to
/// be released, even on the same handle.
///
/// ```
/// # #[tokio::main] async fn main() -> anykv::Result<()> {
/// use anykv::prelude::*;
/// let store = anykv::open("memory://").await?;
/// let lock = store.new_lock("jobs/nightly", LockOptions::new("worker-1")).await?;
/// let guard = lock.lock().await?;
/// // While held, the key holds the holder's value.
/// assert_eq!(store.get("jobs/nightly").await?.value, "worker-1");
/// let first = guard.fencing_token();
/// guard.unlock().await?;
/// let guard = lock.lock().await?;
/// assert!(guard.fencing_token() > first);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Lock {
    key: String,
    backend: Arc<dyn LockBackend>,
    /// The backend's name in metrics; `custom` unless a built-in set it.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    backend_name: &'static str,
}

impl Lock {
    /// Wraps a backend implementation; `key` is the user-facing lock key.
    pub fn new(key: impl Into<String>, backend: Arc<dyn LockBackend>) -> Self {
        Lock {
            key: key.into(),
            backend,
            backend_name: "custom",
        }
    }

    /// Names the backend in this lock's metrics.
    pub(crate) fn named(mut self, backend: &'static str) -> Self {
        self.backend_name = backend;
        self
    }

    /// The lock's key, relative to the store's namespace.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Waits until the lock is held and returns the guard.
    ///
    /// Cancel-safe: if this future is dropped (a timeout, a `select!`) at any
    /// point — also after the store applied the grant but before its answer
    /// arrived — the grant and any waiter state are released promptly by the
    /// acquisition's own task, not left to the handle's session. Every
    /// backend is held to this by the conformance suite.
    pub async fn lock(&self) -> Result<LockGuard> {
        #[cfg(feature = "metrics")]
        let started = Instant::now();
        let outcome = self.backend.acquire(true).await;
        #[cfg(feature = "metrics")]
        crate::metrics::lock_acquisition(self.backend_name, started.elapsed(), &outcome);
        outcome
    }

    /// Takes the lock if it is free; [`Error::Locked`] at once if not.
    pub async fn try_lock(&self) -> Result<LockGuard> {
        #[cfg(feature = "metrics")]
        let started = Instant::now();
        let outcome = self.backend.acquire(false).await;
        #[cfg(feature = "metrics")]
        crate::metrics::lock_acquisition(self.backend_name, started.elapsed(), &outcome);
        outcome
    }
}

/// The loss of one [`LockGuard`], observable apart from the guard; see
/// [`LockGuard::loss_signal`].
#[derive(Clone, Debug)]
pub struct LossSignal {
    lost: CancellationToken,
}

impl LossSignal {
    /// True once the guard's lock is, or may be, lost (or was released).
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Resolves when [`LossSignal::is_lost`] becomes true.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.lost.clone().cancelled_owned()
    }
}

/// The backend's side of a guard's loss: it fires the trigger when the lock
/// is or may be lost. For backend implementors ([`LockGuard::new`]).
#[derive(Clone, Debug, Default)]
pub struct LossTrigger {
    lost: CancellationToken,
}

impl LossTrigger {
    /// A trigger that has not fired.
    pub fn new() -> Self {
        LossTrigger::default()
    }

    pub(crate) fn from_token(lost: CancellationToken) -> Self {
        LossTrigger { lost }
    }

    /// Reports the lock lost (or possibly lost). Idempotent.
    pub fn fire(&self) {
        self.lost.cancel();
    }

    /// True once fired.
    pub fn is_fired(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// What the guard's holder observes.
    pub fn signal(&self) -> LossSignal {
        LossSignal {
            lost: self.lost.clone(),
        }
    }
}

/// Proof of holding a lock.
///
/// * [`LockGuard::fencing_token`] strictly increases across successive
///   holders of the same key: pass it to the resource you protect and have it
///   reject smaller tokens.
/// * [`LockGuard::lost`] resolves when the lock is, or may be, lost.
/// * [`LockGuard::unlock`] releases it; dropping the guard releases it in the
///   background (best effort, never blocking).
///
/// A guard is `Send + Sync`: it can be shared by reference across tasks.
#[must_use = "dropping the guard releases the lock"]
pub struct LockGuard {
    key: String,
    token: u64,
    lost: CancellationToken,
    /// Only ever touched through `&mut self`; the mutex makes the guard
    /// `Sync` although the future is not.
    release: std::sync::Mutex<Option<BoxFuture<'static, Result<()>>>>,
    /// The runtime the guard was made on: a release handed off by `Drop`
    /// runs there, wherever the guard is dropped.
    runtime: Option<Tasks>,
    _tasks: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .field("fencing_token", &self.token)
            .field("lost", &self.lost.is_cancelled())
            .finish()
    }
}

impl LockGuard {
    /// Builds a guard. For backend implementors.
    ///
    /// * `lost` is fired by the backend when the lock is or may be lost.
    /// * `release` is a lazy future that releases the lock; it runs on
    ///   [`LockGuard::unlock`] or, spawned, on drop. It must retry transient
    ///   failures until the release is settled (done, the lock found lost,
    ///   or the session ended).
    /// * `tasks` is dropped with the guard (and before the release runs);
    ///   use it to stop keep-alive or monitor tasks.
    pub fn new(
        key: impl Into<String>,
        fencing_token: u64,
        lost: LossTrigger,
        release: BoxFuture<'static, Result<()>>,
        tasks: Option<Box<dyn std::any::Any + Send + Sync>>,
    ) -> Self {
        LockGuard {
            key: key.into(),
            token: fencing_token,
            lost: lost.lost,
            release: std::sync::Mutex::new(Some(release)),
            runtime: Tasks::try_current(),
            _tasks: tasks,
        }
    }

    fn take_release(&mut self) -> Option<BoxFuture<'static, Result<()>>> {
        match self.release.get_mut() {
            Ok(release) => release.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    /// The lock's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The fencing token of this holding: strictly greater than the token of
    /// every earlier holder of this key.
    pub fn fencing_token(&self) -> u64 {
        self.token
    }

    /// Resolves when the lock is lost or may be lost (session expired, key
    /// deleted or taken over, store unreachable for too long, store closed).
    /// The returned future owns what it needs and may outlive the guard.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.lost.clone().cancelled_owned()
    }

    /// True once [`LockGuard::lost`] has resolved.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// A handle on this guard's loss that can be kept apart from the guard,
    /// for code that must tell at any moment whether the lock may be gone
    /// without owning the guard. It also reads "lost" once the guard has been
    /// released or dropped.
    pub fn loss_signal(&self) -> LossSignal {
        LossSignal {
            lost: self.lost.clone(),
        }
    }

    /// Releases the lock. Returns [`Error::LockLost`] if the lock had already
    /// been lost (someone else may have held it meanwhile).
    ///
    /// The release is run by this future on the guard's runtime (elsewhere,
    /// in a task of its own there, which this future merely awaits): if this
    /// future is dropped, times out or its caller gives up, what is left of
    /// the release goes on in a task of its own. The backend's release
    /// retries transient failures until the store confirms the release,
    /// finds the lock already lost, or the handle's session ends (which
    /// releases every lock of the session) — so an `unlock()` never leaves a
    /// lock behind that its own handle's renewed session keeps alive. An error returned after the
    /// session ended says that the release was not confirmed; the lock went
    /// with the session.
    pub async fn unlock(mut self) -> Result<()> {
        // Stop monitors first so our own release is not reported as a loss.
        self._tasks.take();
        let was_lost = self.lost.is_cancelled();
        let release = self.take_release();
        self.lost.cancel();
        let result = match release {
            Some(release) => release_owned(self.runtime.as_ref(), &self.key, release).await,
            None => Ok(()),
        };
        match result {
            Ok(()) if was_lost => Err(Error::LockLost {
                key: self.key.clone(),
            }),
            other => other,
        }
    }
}

/// Runs `release` to its end. On the guard's runtime the caller's future
/// polls it, with no task hop before the release's first request; should
/// that future be dropped first, [`Unfinished`] hands the rest to a task.
/// Called from another runtime, it runs in a task on the guard's runtime,
/// where its I/O and timers belong.
async fn release_owned(
    runtime: Option<&Tasks>,
    key: &str,
    release: BoxFuture<'static, Result<()>>,
) -> Result<()> {
    let Some(runtime) = runtime.cloned().or_else(Tasks::try_current) else {
        return release.await;
    };
    let ended = if runtime.is_current() {
        Unfinished {
            release: Some(AssertUnwindSafe(release).catch_unwind()),
            runtime,
            key: key.to_owned(),
        }
        .await
        .map_err(|panic| crate::task::panic_message(panic.as_ref()).unwrap_or_default())
    } else {
        runtime
            .spawn(release)
            .await
            .map_err(|join| join.to_string())
    };
    ended.unwrap_or_else(|why| {
        Err(Error::Backend {
            backend: "anykv",
            target: format!("unlock of {key}"),
            source: format!("the release ended abnormally: {why}").into(),
        })
    })
}

/// A release its caller polls (a panic in it caught and handed back);
/// dropped before the release finished, it spawns the rest on the guard's
/// runtime, so the release still runs to its end.
struct Unfinished {
    release: Option<CatchUnwind<AssertUnwindSafe<BoxFuture<'static, Result<()>>>>>,
    runtime: Tasks,
    key: String,
}

impl Future for Unfinished {
    type Output = std::thread::Result<Result<()>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(release) = self.release.as_mut() else {
            return Poll::Ready(Ok(Ok(())));
        };
        let ended = std::task::ready!(release.poll_unpin(cx));
        self.release = None;
        Poll::Ready(ended)
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            let key = std::mem::take(&mut self.key);
            self.runtime.spawn(async move {
                match release.await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::debug!(%key, %error, "lock release failed after unlock() was dropped");
                    }
                    Err(_) => tracing::warn!(%key, "lock release panicked after unlock() was dropped"),
                }
            });
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self._tasks.take();
        self.lost.cancel();
        if let Some(release) = self.take_release() {
            // Never block in Drop: release in the background, on the
            // runtime the guard was made on.
            let key = self.key.clone();
            match self.runtime.clone().or_else(Tasks::try_current) {
                Some(tasks) => {
                    tasks.spawn(async move {
                        if let Err(error) = release.await {
                            tracing::debug!(%key, %error, "background lock release failed");
                        }
                    });
                }
                None => tracing::warn!(
                    %key,
                    "lock guard made and dropped outside any tokio runtime: \
                     nothing can run its release; the session's end frees the lock"
                ),
            }
        }
    }
}

/// A lock built only on [`StoreExt::atomic_put`] with an ephemeral key,
/// [`Store::watch`] and [`StoreExt::atomic_delete`].
///
/// * Acquire: create the key (create-only, ephemeral, holding the lock's
///   value). If it exists, watch it until it is gone and try again, so a
///   release hands over within about one round trip.
/// * Fencing token: the created key's `last_index`, which never repeats or
///   decreases for a key, so successive holders get increasing tokens.
/// * Lost: a watch on the key fires when it disappears or changes version
///   (deleted, taken over, session ended), when the watch reports an error
///   (the store cannot confirm we still hold it), or when the watch ends.
/// * Client-side deadline: the watch alone cannot tell a quiet store from an
///   unreachable one. So the guard also reads the key every TTL/6 and fires
///   `lost()` at the latest TTL/2 after the *start* of the last read that
///   found the key still at our version (the first such "read" is the write
///   that took the lock), however long later reads hang. TTL is the lock
///   TTL if the backend honours one per lock
///   ([`crate::Capabilities::lock_ttl_per_lock`]) and it was given, else the
///   session TTL ([`crate::Capabilities::session_ttl`]).
///
///   This keeps the promise "`lost()` fires before anyone else can be
///   granted the lock" **only if the backend renews its sessions (or lock
///   TTLs) at least every third of the TTL**, so that a key seen at time `t`
///   lives until at least `t + 2/3·TTL`: the deadline then comes TTL/6
///   before the key can expire. A backend that renews less often must bring
///   its own [`LockBackend`].
/// * Release: delete the key only if it is still our version, retrying
///   transient failures for up to twice the session TTL.
/// * Cancellation: each attempt's create-only write runs in a task of its
///   own. If the `lock()`/`try_lock()` future is dropped before it took the
///   write's outcome, the write still finishes and, if it took the lock, the
///   key is released at once — a cancelled acquisition never leaves the lock
///   held until the session ends.
#[derive(Debug, Clone)]
pub struct GenericLock {
    store: Arc<dyn Store>,
    key: String,
    value: Bytes,
    /// The lock's background work (monitors, abandoned claims).
    tasks: Option<Tasks>,
}

impl GenericLock {
    /// A generic lock on `key` of `store` (the caller's handle: its session
    /// owns the lock).
    pub fn new(store: Arc<dyn Store>, key: impl Into<String>, options: LockOptions) -> Self {
        GenericLock {
            store,
            key: key.into(),
            value: options.value,
            tasks: Tasks::try_current(),
        }
    }

    /// How long the lock key outlives its last renewal: it is written
    /// ephemeral, so it lives by the handle's session whatever the lock's
    /// own TTL says.
    /// Where the lock's tasks run: the runtime it was made on, else the
    /// current one (its methods are async, so there is one).
    fn tasks(&self) -> Result<Tasks> {
        match self.tasks.clone() {
            Some(tasks) => Ok(tasks),
            None => Tasks::current(&self.key),
        }
    }

    fn key_ttl(&self) -> Duration {
        self.store.capabilities().session_ttl
    }

    /// Convenience: the [`Lock`] of a generic lock.
    pub fn into_lock(self) -> Lock {
        Lock::new(self.key.clone(), Arc::new(self))
    }

    async fn wait_until_free(&self) -> Result<()> {
        let mut watch = self.store.watch(&self.key).await?;
        while let Some(item) = watch.next().await {
            match item {
                Ok(None) => return Ok(()),
                Ok(Some(_)) => {}
                Err(e) if e.is_transient() => {
                    tracing::debug!(key = %self.key, error = %e, "lock wait: transient watch error");
                }
                Err(e) => return Err(e),
            }
        }
        // A watch only ends after a terminal error item; be defensive anyway.
        Err(Error::Closed {
            url: format!(
                "{}:// (lock {})",
                self.store.capabilities().backend,
                self.key
            ),
        })
    }

    /// The guard of a lock held at `held`, written by a request sent at
    /// `sent` (the first confirmation that we hold it).
    fn guard(&self, tasks: &Tasks, held: KvPair, sent: Instant) -> LockGuard {
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let monitor_lost = lost.clone();
        let monitor_stop = stop.clone();
        let store = self.store.clone();
        let key = self.key.clone();
        let index = held.last_index;
        let ttl = self.key_ttl();
        tasks.spawn(async move {
            tokio::select! {
                _ = monitor_stop.cancelled() => {}
                _ = monitor(store.clone(), key.clone(), index) => monitor_lost.cancel(),
                _ = confirm(store, key, index, ttl, sent) => monitor_lost.cancel(),
            }
        });
        let store = self.store.clone();
        let key = self.key.clone();
        let release = Box::pin(async move { release_held(&store, &key, &held).await });
        LockGuard::new(
            self.key.clone(),
            index,
            crate::lock::LossTrigger::from_token(lost),
            release,
            Some(Box::new(stop.drop_guard())),
        )
    }
}

/// Returns when the lock held at version `index` is, or may be, lost.
async fn monitor(store: Arc<dyn Store>, key: String, index: u64) {
    let mut watch = match store.watch(&key).await {
        Ok(w) => w,
        Err(error) => {
            tracing::warn!(%key, %error, "lock monitor could not watch the lock key");
            return;
        }
    };
    while let Some(item) = watch.next().await {
        match item {
            Ok(Some(pair)) if pair.last_index == index => {}
            Ok(_) => {
                tracing::info!(%key, "lock key deleted or taken over: lock lost");
                return;
            }
            Err(error) => {
                tracing::warn!(%key, %error, "lock state unknown: reporting lock as lost");
                return;
            }
        }
    }
}

/// How often [`confirm`] reads the lock key, as a fraction of the TTL.
const CONFIRM_EVERY: u32 = 6;

/// Returns when the lock held at version `index` can no longer be vouched
/// for: `ttl / 2` after the start of the last read that found the key still
/// at our version (the first "read" being the write that took the lock,
/// started at `confirmed`), or as soon as a read finds it gone or changed.
/// Reads every `ttl / 6`, each bounded by the deadline, so a store that
/// stops answering is noticed by the deadline, not by a hung read.
///
/// Sound under the assumption documented on [`GenericLock`]: a key seen at
/// time `t` lives until at least `t + 2/3 · ttl`, so the deadline comes
/// `ttl / 6` before anyone else could be granted the lock.
async fn confirm(
    store: Arc<dyn Store>,
    key: String,
    index: u64,
    ttl: Duration,
    confirmed: Instant,
) {
    let half = ttl / 2;
    let every = (ttl / CONFIRM_EVERY).max(Duration::from_millis(1));
    let mut deadline = later(confirmed, half);
    let mut next_read = later(confirmed, every);
    loop {
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(deadline) => break,
            () = tokio::time::sleep_until(next_read) => {}
        }
        let started = Instant::now();
        next_read = later(started, every);
        let read = tokio::select! {
            biased;
            () = tokio::time::sleep_until(deadline) => break,
            read = store.get(&key) => read,
        };
        match read {
            Ok(pair) if pair.last_index == index => {
                deadline = deadline.max(later(started, half));
            }
            Ok(_) | Err(Error::KeyNotFound { .. }) => {
                tracing::info!(%key, "lock key deleted or taken over: lock lost");
                return;
            }
            Err(error) if error.is_transient() => {
                tracing::debug!(%key, %error, "lock confirmation failed; retrying until the deadline");
            }
            Err(error) => {
                tracing::warn!(%key, %error, "lock state unknown: reporting lock as lost");
                return;
            }
        }
    }
    tracing::warn!(
        %key,
        ?half,
        "lock key not confirmed within half its TTL: reporting lock as lost"
    );
}

#[async_trait]
impl LockBackend for GenericLock {
    async fn acquire(&self, wait: bool) -> Result<LockGuard> {
        let tasks = self.tasks()?;
        loop {
            let sent = Instant::now();
            match self.claim(&tasks).await {
                Ok(held) => return Ok(self.guard(&tasks, held, sent)),
                Err(Error::KeyExists { .. }) if !wait => {
                    return Err(Error::Locked {
                        key: self.key.clone(),
                    })
                }
                Err(Error::KeyExists { .. }) => self.wait_until_free().await?,
                Err(e) => return Err(e),
            }
        }
    }
}

impl GenericLock {
    /// One acquisition attempt: the create-only ephemeral write, run in a
    /// task of its own. If this future is dropped before the write's outcome
    /// was taken, the write still runs to its end and a lock it took is
    /// released (see [`Claim`]), so a cancelled `lock()` never leaves the key
    /// held until the session ends.
    async fn claim(&self, tasks: &Tasks) -> Result<KvPair> {
        let store = self.store.clone();
        let key = self.key.clone();
        let value = self.value.clone();
        let write = tasks.spawn(async move {
            store
                .atomic_put(&key, value, None, PutOptions::ephemeral())
                .await
        });
        let mut claim = Claim {
            tasks: tasks.clone(),
            write: Some(write),
            store: self.store.clone(),
            key: self.key.clone(),
        };
        let Some(write) = claim.write.as_mut() else {
            return Err(self.task_failed("the claim is gone"));
        };
        let joined = write.await;
        // Taken in the same poll that completed the task: from here on the
        // outcome is ours, and nothing is left for `Claim::drop`.
        claim.write = None;
        match joined {
            Ok(outcome) => outcome,
            Err(join) => Err(self.task_failed(&join.to_string())),
        }
    }

    fn task_failed(&self, why: &str) -> Error {
        Error::Backend {
            backend: self.store.capabilities().backend,
            target: format!("lock {}", self.key),
            source: format!("the acquisition task ended abnormally: {why}").into(),
        }
    }
}

/// The pending write of one acquisition attempt. Dropped with the write
/// still pending (the caller of `lock()` went away), it lets the write finish
/// in the background and, if the write took the lock, releases it.
struct Claim {
    tasks: Tasks,
    write: Option<tokio::task::JoinHandle<Result<KvPair>>>,
    store: Arc<dyn Store>,
    key: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let Some(write) = self.write.take() else {
            return;
        };
        let store = self.store.clone();
        let key = std::mem::take(&mut self.key);
        self.tasks.spawn(async move {
            let Ok(Ok(held)) = write.await else {
                return; // nothing was taken
            };
            tracing::debug!(%key, "releasing a lock whose acquisition was abandoned");
            if let Err(error) = release_held(&store, &key, &held).await {
                tracing::debug!(%key, %error, "could not release an abandoned lock grant");
            }
        });
    }
}

/// Deletes the lock key if it is still at `held`'s version. Retries
/// transient failures (a release must not give up on those) for up to twice
/// the session TTL: by then the session whose ephemeral key this is has
/// ended or renewed through an outage the store did not survive, and its
/// end frees the key anyway.
async fn release_held(store: &Arc<dyn Store>, key: &str, held: &KvPair) -> Result<()> {
    let bound = store.capabilities().session_ttl.saturating_mul(2);
    // Never cancelled: the bound below ends the retries.
    let ended = CancellationToken::new();
    let retried = crate::retry::until_settled(&ended, || store.atomic_delete(key, held));
    let outcome = match tokio::time::timeout(bound, retried).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Error::Timeout {
            operation: "release a lock",
            target: key.to_owned(),
            after: bound,
        }),
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(Error::KeyModified { .. }) | Err(Error::KeyNotFound { .. }) => Err(Error::LockLost {
            key: key.to_owned(),
        }),
        Err(e) => Err(e),
    }
}
