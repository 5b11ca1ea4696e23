//! Native Redis locks: an owner token, renewal, and a fencing token bumped in
//! the same script as the grant.
//!
//! * **Grant**: the write script, create-only, on the lock key itself (so
//!   `get(lock_key)` returns the holder's value). The hash also records the
//!   owner token (`<session id>:<n>`, unique per grant), the handle's session
//!   (so `close()` deletes it) and the lock TTL. The key expires after the
//!   lock TTL unless renewed.
//! * **Fencing token**: the grant's version, taken from the version counter
//!   in the same script (and lifted to the server clock in microseconds if
//!   the counter lags it), so it is strictly greater than every earlier
//!   holder's token. See the module docs of the backend for what restarts
//!   and failovers do to it.
//! * **Renewal**: the guard's task re-arms the TTL every third of it, only if
//!   the owner token still matches.
//! * **Lost**: the guard listens on the key's change channel; any change
//!   after the grant (delete, overwrite, takeover) means lost at once. A
//!   renewal that finds another owner means lost. And if no renewal is
//!   confirmed by `sent + ttl − ttl/10` (`sent` = when the last confirmed
//!   renewal, or the grant, was sent: the server's expiry is at least `ttl`
//!   after that), the guard reports the lock lost before the server can hand
//!   it to anyone else. Closing the store reports it lost too.
//! * **Waiting**: a waiter subscribes to the key's channel *before* trying,
//!   then tries again on every change message, on reconnection, and when
//!   the holder's key is due to expire (its `PTTL`, returned by the failed
//!   grant): a crashed holder's lock is taken within its TTL, a released one
//!   within about one round trip.
//! * **Release**: delete only if the owner token still matches.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::hub::{Subscription, Topic};
use super::{Core, Expect, Lifetime, Outcome, RedisStore};
use crate::error::{Error, Result};
use crate::lock::{LockBackend, LockGuard};

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
        // Subscribe first: a release between a failed try and the wait
        // below then still wakes us.
        let subscription = core
            .hub
            .subscribe(Topic::Channel(core.channel(&self.full)))
            .await?;
        let mut link = core.hub.link();
        loop {
            let owner = core.next_owner();
            let sent = Instant::now();
            let outcome = core
                .write(
                    &self.user,
                    &self.full,
                    &self.value,
                    Expect::Create,
                    Lifetime::Lock {
                        ttl: self.ttl,
                        owner: &owner,
                    },
                )
                .await?;
            let holder_ttl = match outcome {
                Outcome::Written(token) => {
                    return Ok(self.guard(core, token, owner, sent, subscription));
                }
                Outcome::Exists { .. } if !wait => {
                    return Err(Error::Locked {
                        key: self.user.clone(),
                    });
                }
                Outcome::Exists { pttl } => pttl,
                other => return Err(core.protocol_error(&self.user, "put", other)),
            };
            // -1: the key has no expiry (a plain key sits on the lock key);
            // -2: it vanished meanwhile, try again at once.
            let retry_at = match holder_ttl {
                -2 => continue,
                ms if ms >= 0 => Some(Instant::now() + Duration::from_millis(ms as u64 + 1)),
                _ => None,
            };
            tokio::select! {
                _ = core.closed.cancelled() => return Err(core.closed_error()),
                _ = subscription.signal().changed() => {}
                changed = link.changed() => {
                    if changed.is_err() {
                        return Err(core.closed_error());
                    }
                }
                _ = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
            }
        }
    }
}

impl RedisLock {
    fn guard(
        &self,
        core: &Arc<Core>,
        token: u64,
        owner: String,
        sent: Instant,
        subscription: Subscription,
    ) -> LockGuard {
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let keeper = Keeper {
            core: core.clone(),
            user: self.user.clone(),
            full: self.full.clone(),
            owner: owner.clone(),
            token,
            ttl: self.ttl,
            subscription,
        };
        tokio::spawn(keeper.run(sent, lost.clone(), stop.clone()));
        let store = self.store.clone();
        let user = self.user.clone();
        let full = self.full.clone();
        let release = Box::pin(async move {
            let core = store.core();
            match core.remove(&user, &full, Some(("o", &owner))).await? {
                Outcome::Written(_) => Ok(()),
                Outcome::Missing | Outcome::Modified => Err(Error::LockLost { key: user }),
                other => Err(core.protocol_error(&user, "delete", other)),
            }
        });
        LockGuard::new(
            self.user.clone(),
            token,
            lost,
            release,
            Some(stop.drop_guard()),
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
    subscription: Subscription,
}

impl Keeper {
    async fn run(self, granted: Instant, lost: CancellationToken, stop: CancellationToken) {
        tokio::select! {
            _ = stop.cancelled() => {}
            why = self.keep(granted) => {
                tracing::info!(key = %self.user, why, "lock lost");
                lost.cancel();
            }
        }
    }

    /// Returns (with the reason) when the lock is or may be lost.
    async fn keep(&self, granted: Instant) -> &'static str {
        let margin = self.ttl / 10;
        let every = self.ttl / 3;
        let mut deadline = granted + self.ttl - margin;
        let mut next_renewal = granted + every;
        let mut link = self.core.hub.link();
        let signal = self.subscription.signal();
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
                    // Change messages may have been missed: check now.
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
                        Ok(Ok(true)) => {
                            deadline = sent + self.ttl - margin;
                            next_renewal = sent + every;
                        }
                        Ok(Ok(false)) => return "lock taken over or expired",
                        Ok(Err(error)) => {
                            tracing::debug!(key = %self.user, %error, "lock renewal failed; retrying");
                            next_renewal = Instant::now() + (every / 4).max(Duration::from_millis(50));
                        }
                        Err(_) => return "no renewal confirmed before the lock could expire",
                    }
                }
            }
        }
    }
}
