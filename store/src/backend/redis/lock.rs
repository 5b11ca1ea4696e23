//! Native Redis locks: an owner token, renewal, and a fencing token bumped in
//! the same script as the grant.
//!
//! * **Grant**: one script (`LOCK_TAKE`), only if the key is free, on the
//!   lock key itself (so `get(lock_key)` returns the holder's value). The
//!   hash also records the
//!   owner token (`<session id>:<n>`, unique per grant), the handle's session
//!   (so `close()` deletes it) and the lock TTL. The key expires after the
//!   lock TTL unless renewed.
//! * **Fencing token**: the grant's version, taken from the version counter
//!   in the same script (and lifted to the server clock in microseconds if
//!   the counter lags it), so it is strictly greater than every earlier
//!   holder's token. See the module docs of the backend for what restarts
//!   and failovers do to it.
//! * **Renewal**: the guard's task re-arms the TTL every third of it, only if
//!   the owner token still matches. The grant and each renewal also return
//!   the server's `run_id`.
//! * **Lost**: the guard listens on the key's change channel (subscribed
//!   right after the grant, then checked with a renewal, so a change in
//!   between is caught by the owner token); any change after the grant
//!   (delete, overwrite, takeover) means lost at once. A
//!   renewal that finds another owner means lost. And if no renewal is
//!   confirmed by `sent + ttl − ttl/10` (`sent` = when the last confirmed
//!   renewal, or the grant, was sent: the server's expiry is at least `ttl`
//!   after that), the guard reports the lock lost before the server can hand
//!   it to anyone else. Closing the store reports it lost too.
//! * **Reset**: a restart without its data, an AOF that lost the last
//!   second, a failover or a `FLUSHALL` drops the key, and a waiter may take
//!   it at once. So the guard also reports the lock lost when the pub/sub
//!   connection breaks (any outage after the moment the grant was sent),
//!   when a renewal answers with another `run_id` than the grant, and when a
//!   renewal finds the key missing. A `FLUSHALL` on a live connection is
//!   heard through the next grant's change message. The backend's module
//!   docs say what that guarantees, under which server settings.
//! * **The task ends, the guard knows**: the keeper holds `lost` in a drop
//!   guard, so however its task ends (a panic, its runtime shutting down)
//!   `lost()` fires; only its guard's release or drop ends it quietly.
//! * **Waiting**: `lock()` joins the key's waiter queue (a sorted set, by
//!   arrival) with a lease it renews every third of the lock TTL while it
//!   waits, and with its value and lock TTL. Only the first waiter whose
//!   lease has not ended may take a free lock.
//! * **Hand-on**: the script that deletes a lock key with waiters (release,
//!   `close()`, `delete`, `delete_tree`, a dropped waiter that was first)
//!   grants the lock in the same step to the first live waiter, with a
//!   fencing token of its own, and sends the token on that waiter's grant
//!   channel. A single-key delete (a release) and its grant are one change
//!   with one version: a watcher of the key sees it pass from one holder to
//!   the next, never free in between. The waiter holds the lock when the message arrives, with no
//!   request of its own: a hand-over costs one script and one message, the
//!   way an etcd or ZooKeeper waiter holds the lock once its predecessor's
//!   key is gone. The grant's moment is bounded from below by the send of
//!   the waiter's last request that left it in line (that request ran
//!   before the grant, or it would have been answered with the grant), so
//!   the guard's deadlines count from there; its outage count and the
//!   server's `run_id` come from that request too. Should the message be
//!   lost, the waiter's next attempt (on reconnection, or its lease
//!   renewal) is answered with the grant and re-arms its TTL. Waiters are
//!   served in arrival order and a release reaches one waiter, not all. A
//!   waiter also tries again on reconnection and when the holder's key is
//!   due to expire (its `PTTL`, returned by the failed attempt), so a
//!   crashed holder's lock is taken within its TTL; a crashed waiter's
//!   place is dropped when its lease ends (one handed the lock just before
//!   it crashed keeps it for one lock TTL, as a crashed holder does); a
//!   dropped `lock()` leaves the queue at once (in the background), handing
//!   the lock on to the next waiter if it is free, and gives back a grant
//!   it got meanwhile. `try_lock()` does not queue: it takes a free lock
//!   even while others wait in line.
//! * **Release**: delete only if the owner token still matches, retrying
//!   transient failures ([`crate::retry::until_settled`]) until the server
//!   answers, the store closes (its session's end deletes the key), or the
//!   key has expired by itself: the keeper, stopped first, renews it no
//!   more, so after the lock TTL from the last confirmed renewal it is gone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::hub::{Subscription, Topic};
use super::{Core, Outcome, RedisStore};
use crate::error::{Error, Result};
use crate::lock::{LockBackend, LockGuard};
use crate::retry::until_settled;
use crate::time::{later, Renewal};

/// The shortest lock TTL accepted.
pub(crate) const MIN_LOCK_TTL: Duration = Duration::from_millis(300);

/// A lock on one key of a [`RedisStore`].
#[derive(Debug)]
pub(crate) struct RedisLock {
    /// Keeps the handle (and its session) alive as long as the lock.
    pub store: RedisStore,
    pub user: String,
    pub full: String,
    pub value: Bytes,
    pub ttl: Duration,
}

#[async_trait]
impl LockBackend for RedisLock {
    async fn acquire(&self, wait: bool) -> Result<LockGuard> {
        let core = self.store.core();
        core.check_open()?;
        let owner = core.next_owner();
        // Leaves the queue, and gives back a grant whose answer never
        // reached us, if this future is dropped (or fails) before a guard
        // exists.
        let mut place = Place {
            store: self.store.clone(),
            user: self.user.clone(),
            full: self.full.clone(),
            owner: Some(owner.clone()),
            ttl: self.ttl,
        };
        if !wait {
            let before = Before::now(core);
            return match core
                .lock_take(&self.user, &self.full, &self.value, self.ttl, &owner, false)
                .await?
            {
                Outcome::Granted { token, server } => {
                    place.owner = None;
                    Ok(self.guard(core, token, owner, server, before))
                }
                Outcome::Exists { .. } => Err(Error::Locked {
                    key: self.user.clone(),
                }),
                other => Err(core.protocol_error(&self.user, "lock", other)),
            };
        }

        let mut grants: Option<Subscription> = None;
        let mut link = core.hub.link();
        // What the last answer that left this waiter in line said. A
        // hand-on grant whose token is above that answer's version ran
        // after the answer's request was sent, so the request's moment
        // bounds the grant's from below (the server's expiry is at least
        // the lock TTL after it), and its outage count and server stand for
        // the grant's. A token not above it came before that answer, which
        // found the lock held by another or free: that grant lapsed unheard
        // and is ignored.
        let mut in_line: Option<(Before, String, u64)> = None;
        loop {
            let token = grants.as_ref().map_or(0, |grants| grants.signal().latest());
            if let Some((before, server, _)) = in_line.take_if(|(_, _, seen)| token > *seen) {
                place.owner = None;
                return Ok(self.guard(core, token, owner, server, before));
            }
            let before = Before::now(core);
            let sent = before.sent;
            let retry_in = match core
                .lock_take(&self.user, &self.full, &self.value, self.ttl, &owner, true)
                .await?
            {
                Outcome::Granted { token, server } => {
                    place.owner = None;
                    return Ok(self.guard(core, token, owner, server, before));
                }
                // -1: a key without expiry (a plain key) sits on the lock key.
                Outcome::Held { pttl, server, seen } => {
                    in_line = Some((before, server, seen));
                    u64::try_from(pttl).ok()
                }
                Outcome::Queued {
                    lease_ms,
                    server,
                    seen,
                } => {
                    in_line = Some((before, server, seen));
                    Some(u64::try_from(lease_ms).unwrap_or(0))
                }
                other => return Err(core.protocol_error(&self.user, "lock", other)),
            };
            if grants.is_none() {
                // Subscribed only once waiting; a grant sent before the
                // subscription is found by asking again at once (the take
                // answers it again).
                grants = Some(
                    core.hub
                        .subscribe(Topic::Channel(core.grant_channel(&owner)))
                        .await?,
                );
                continue;
            }
            let renew_at = Renewal::new(self.ttl).next(sent);
            let retry_at = retry_in
                .map(|ms| later(Instant::now(), Duration::from_millis(ms.saturating_add(1))))
                .map_or(renew_at, |at| at.min(renew_at));
            let granted = async {
                match &grants {
                    Some(grants) => grants.signal().changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = core.closed.cancelled() => return Err(core.closed_error()),
                _ = granted => {}
                changed = link.changed() => {
                    if changed.is_err() {
                        return Err(core.closed_error());
                    }
                }
                _ = sleep_until(retry_at) => {}
            }
        }
    }
}

/// A waiter's place in a lock key's queue; dropped before a guard was
/// built (the `lock()` future dropped, or an error), it leaves the queue in
/// the background and deletes the lock key if it was granted to this owner
/// after all (a take's answer not read, or a hand-on not yet heard). Both
/// commands go down the same connection after the one that was in flight,
/// so the server runs them after it; both are retried through an outage,
/// for at most the lock TTL (a waiter's lease, which ends its place in line
/// and any grant it did not claim).
struct Place {
    store: RedisStore,
    user: String,
    full: String,
    /// `None` once granted: nothing to leave.
    owner: Option<String>,
    /// The lock TTL: an unclaimed grant expires by then.
    ttl: Duration,
}

impl Drop for Place {
    fn drop(&mut self) {
        let Some(owner) = self.owner.take() else {
            return;
        };
        if self.store.core().closed.is_cancelled() {
            return;
        }
        let store = self.store.clone();
        let ttl = self.ttl;
        let user = std::mem::take(&mut self.user);
        let full = std::mem::take(&mut self.full);
        let tasks = store.core().tasks.clone();
        tasks.spawn(async move {
            let core = store.core();
            // Retried through an outage (leaving is safe to repeat), or a
            // release after it would hand the lock to this departed waiter;
            // bounded by the lock TTL, which ends its place in line anyway.
            let left = tokio::time::timeout(
                ttl,
                until_settled(&core.closed, || core.lock_leave(&user, &full, &owner)),
            )
            .await
            .unwrap_or(Ok(()));
            if let Err(e) = left {
                tracing::debug!(key = %user, error = %e, "leaving the lock queue failed; the lease will end it");
            }
            // Bounded by the lock TTL: by then an unclaimed grant has expired.
            let removed = tokio::time::timeout(
                ttl,
                until_settled(&core.closed, || core.remove(&user, &full, Some(("o", &owner)))),
            )
            .await
            .unwrap_or_else(|_| Ok(Outcome::Missing));
            if let Err(e) = removed {
                tracing::debug!(key = %user, error = %e, "giving back an unclaimed grant failed; its TTL will end it");
            }
        });
    }
}

/// What the guard must know of the moment just before a grant was sent.
struct Before {
    /// When the grant was sent: the server's expiry of the key is at least
    /// the lock TTL after this.
    sent: Instant,
    /// The pub/sub connection's outage count then: any outage after it may
    /// hide a restart.
    outages: u64,
}

impl Before {
    fn now(core: &Core) -> Before {
        let outages = core.hub.link().borrow().outages;
        Before {
            sent: Instant::now(),
            outages,
        }
    }
}

/// Until when the server keeps the lock key without a further renewal (at
/// least): the keeper moves it on each confirmed renewal, the release stops
/// retrying once it has passed.
type HeldUntil = Arc<Mutex<Instant>>;

fn held_until(held: &HeldUntil) -> Instant {
    *held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RedisLock {
    fn guard(
        &self,
        core: &Arc<Core>,
        token: u64,
        owner: String,
        server: String,
        before: Before,
    ) -> LockGuard {
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let held: HeldUntil = Arc::new(Mutex::new(later(before.sent, self.ttl)));
        let keeper = Keeper {
            core: core.clone(),
            user: self.user.clone(),
            full: self.full.clone(),
            owner: owner.clone(),
            token,
            ttl: self.ttl,
            server,
            outages: before.outages,
            held: held.clone(),
        };
        self.store
            .core()
            .tasks
            .spawn(keeper.run(before.sent, lost.clone(), stop.clone()));
        let store = self.store.clone();
        let user = self.user.clone();
        let full = self.full.clone();
        // Retries transient failures until the server answers, the store
        // closes (its session's end deletes the key), or the key has expired
        // by itself (the keeper, stopped first, renews it no more).
        let release = Box::pin(async move {
            let core = store.core();
            let expired = sleep_until(held_until(&held));
            let removed = tokio::select! {
                removed = until_settled(&core.closed, || {
                    core.remove(&user, &full, Some(("o", &owner)))
                }) => removed?,
                () = expired => return Err(Error::LockLost { key: user }),
            };
            match removed {
                Outcome::Written(_) => Ok(()),
                Outcome::Missing | Outcome::Modified => Err(Error::LockLost { key: user }),
                other => Err(core.protocol_error(&user, "delete", other)),
            }
        });
        LockGuard::new(
            self.user.clone(),
            token,
            crate::lock::LossTrigger::from_token(lost),
            release,
            Some(Box::new(stop.drop_guard())),
        )
    }
}

/// The guard's background task: renews, and reports loss.
struct Keeper {
    core: Arc<Core>,
    user: String,
    full: String,
    owner: String,
    token: u64,
    ttl: Duration,
    /// The server's `run_id` at the grant (`""`: unknown).
    server: String,
    /// The pub/sub connection's outage count just before the grant.
    outages: u64,
    held: HeldUntil,
}

impl Keeper {
    async fn run(self, granted: Instant, lost: CancellationToken, stop: CancellationToken) {
        // However this task ends (a panic, its runtime shutting down), the
        // guard learns that nobody keeps the lock any more.
        let fire = lost.drop_guard();
        tokio::select! {
            _ = stop.cancelled() => {
                // Released or dropped by its guard: not a loss.
                fire.disarm();
            }
            why = self.keep(granted) => {
                tracing::info!(key = %self.user, why, "lock lost");
            }
        }
    }

    /// Returns (with the reason) when the lock is or may be lost.
    async fn keep(&self, granted: Instant) -> &'static str {
        const RECONNECTED: &str =
            "the connection to the server broke: a restart may have dropped the lock";
        let renewal = Renewal::new(self.ttl);
        let every = renewal.interval();
        let mut deadline = renewal.deadline(granted);
        let mut link = self.core.hub.link();
        if link.borrow_and_update().outages != self.outages {
            return RECONNECTED;
        }
        // Listen for changes of the key from here on, then check at once
        // that it is still ours: a change between the grant and the
        // subscription was not heard, the owner token tells. (Waiters do not
        // listen to the key, so a release wakes one process, not every
        // waiter's.)
        let subscribed = tokio::select! {
            biased;
            _ = self.core.closed.cancelled() => return "store closed",
            _ = sleep_until(deadline) => {
                return "no renewal confirmed before the lock could expire";
            }
            subscribed = self
                .core
                .hub
                .subscribe(Topic::Channel(self.core.channel(&self.full))) => subscribed,
        };
        let Ok(subscription) = subscribed else {
            return "cannot listen for changes of the lock key";
        };
        let signal = subscription.signal();
        let mut next_renewal = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = self.core.closed.cancelled() => return "store closed",
                _ = sleep_until(deadline) => {
                    return "no renewal confirmed before the lock could expire";
                }
                _ = signal.changed() => {
                    if signal.latest() > self.token {
                        return "lock key deleted or overwritten";
                    }
                }
                changed = link.changed() => {
                    if changed.is_err() {
                        return "store dropped";
                    }
                    if link.borrow_and_update().outages != self.outages {
                        // The server may have restarted (without its data,
                        // or with an AOF that lost the last second) and
                        // handed the lock to someone else as soon as it was
                        // back: say so now, not at the next renewal.
                        return RECONNECTED;
                    }
                    // Connected (again): change messages may have been
                    // missed, check now.
                    next_renewal = Instant::now();
                }
                _ = sleep_until(next_renewal) => {
                    let sent = Instant::now();
                    let renewed = tokio::time::timeout_at(
                        deadline,
                        self.core.renew(&self.user, &self.full, &self.owner, self.ttl),
                    )
                    .await;
                    match renewed {
                        Ok(Ok(Some(server))) => {
                            if !server.is_empty()
                                && !self.server.is_empty()
                                && server != self.server
                            {
                                return "the server restarted or failed over (its run_id changed)";
                            }
                            deadline = renewal.deadline(sent);
                            next_renewal = renewal.next(sent);
                            *self.held.lock().unwrap_or_else(|p| p.into_inner()) =
                                later(sent, self.ttl);
                        }
                        Ok(Ok(None)) => return "lock key missing or taken over at renewal",
                        Ok(Err(error)) => {
                            tracing::debug!(key = %self.user, %error, "lock renewal failed; retrying");
                            next_renewal = later(
                                Instant::now(),
                                (every / 4).max(Duration::from_millis(50)),
                            );
                        }
                        Err(_) => return "no renewal confirmed before the lock could expire",
                    }
                }
            }
        }
    }
}
