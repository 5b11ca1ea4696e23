//! A counting semaphore: at most `N` holders of a named semaphore at once,
//! each permit with a fencing token and a loss signal.
//!
//! ```
//! # #[tokio::main] async fn main() -> anykv::Result<()> {
//! use anykv_recipes::semaphore::Semaphore;
//!
//! let store = anykv::open("memory://semaphore-doc").await?;
//! let pool = Semaphore::new(store, "db-connections", 2);
//! let first = pool.acquire().await?;
//! let second = pool.acquire().await?;
//! assert!(pool.try_acquire().await.is_err()); // both permits are taken
//! assert!(second.fencing_token() > first.fencing_token());
//!
//! first.release().await?;
//! let third = pool.acquire().await?; // the freed permit
//! assert!(third.fencing_token() > second.fencing_token());
//! assert!(!third.is_lost());
//! # Ok(()) }
//! ```
//!
//! # How it works
//! The semaphore `s` with `N` permits is `N` slot locks `s/slots/0` …
//! `s/slots/N-1`, taken with the store's own [`anykv::Lock`]: a permit *is*
//! a held slot lock, so there can never be more than `N` holders, and a
//! permit is lost, released and reaped exactly as that lock is (a crashed
//! holder's permit comes back within the session TTL plus the backend's
//! slack; [`Permit::lost`] fires before anyone else can take its slot).
//!
//! * **Fencing token**: a lock's token only orders the holders of one slot.
//!   So after taking a slot the holder writes the key `s/token`; the version
//!   ([`anykv::KvPair::last_index`]) of that write is the permit's token.
//!   A key's versions strictly increase with every write and never repeat,
//!   even across delete and re-create, and the writes are linearisable: a
//!   permit acquired after another was granted has a greater token, across
//!   every slot.
//! * **Waiting**: a caller first tries the slots its listing shows free.
//!   If none is, it queues on the lock `s/queue`; only the head of that
//!   queue watches the slots ([`anykv::Store::watch_tree`] of `s/slots`) and
//!   takes a slot as soon as one is freed, then leaves the queue. A release
//!   therefore wakes one waiter, not all of them (how the queue itself wakes
//!   its next waiter is the backend's lock: a revision or sequence queue on
//!   etcd, ZooKeeper and Redis, a watch on the others).
//!
//! Every process must use the same `N` for a name. Changing it needs all
//! holders gone first.

use std::sync::Arc;

use anykv::{Error, LockGuard, LockOptions, LossSignal, PutOptions, Result, Store, StoreExt};
use bytes::Bytes;
use futures::StreamExt;

/// A named semaphore with a fixed number of permits, on one store handle
/// (whose session owns the permits it grants).
#[derive(Clone, Debug)]
pub struct Semaphore {
    store: Arc<dyn Store>,
    name: String,
    permits: usize,
    holder: Bytes,
}

impl Semaphore {
    /// The semaphore `name` with `permits` permits on `store`. Nothing is
    /// written until a permit is acquired.
    pub fn new(store: Arc<dyn Store>, name: impl Into<String>, permits: usize) -> Self {
        Semaphore {
            store,
            name: name.into().trim_matches('/').to_owned(),
            permits,
            holder: Bytes::new(),
        }
    }

    /// The value the held slot keys and the token key show (who holds a
    /// permit; empty by default).
    pub fn with_holder(mut self, holder: impl Into<Bytes>) -> Self {
        self.holder = holder.into();
        self
    }

    /// The semaphore's name (its key prefix).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of permits.
    pub fn permits(&self) -> usize {
        self.permits
    }

    fn check(&self) -> Result<()> {
        if self.permits == 0 {
            return Err(Error::InvalidArgument {
                key: self.name.clone(),
                reason: "a semaphore needs at least one permit".into(),
            });
        }
        if self.name.is_empty() {
            return Err(Error::InvalidArgument {
                key: self.name.clone(),
                reason: "the semaphore name is empty".into(),
            });
        }
        Ok(())
    }

    fn slots_dir(&self) -> String {
        format!("{}/slots", self.name)
    }

    fn slot_key(&self, slot: usize) -> String {
        format!("{}/slots/{slot}", self.name)
    }

    /// Takes a permit if one is free; [`Error::Locked`] naming the
    /// semaphore at once if all are held.
    pub async fn try_acquire(&self) -> Result<Permit> {
        self.check()?;
        match self.try_free_slots().await? {
            Some(permit) => Ok(permit),
            None => Err(Error::Locked {
                key: self.name.clone(),
            }),
        }
    }

    /// Waits until a permit is held (woken by watches, never by polling).
    ///
    /// Cancel-safe: a dropped `acquire()` releases whatever it had taken (a
    /// slot, its place in the queue) in the background, as the store's
    /// locks do.
    pub async fn acquire(&self) -> Result<Permit> {
        self.check()?;
        if let Some(permit) = self.try_free_slots().await? {
            return Ok(permit);
        }
        // Queue; only the head of the queue watches the slots.
        let queue = self
            .store
            .new_lock(
                &format!("{}/queue", self.name),
                LockOptions::new(self.holder.clone()),
            )
            .await?;
        let place = queue.lock().await?;
        let mut slots = self.store.watch_tree(&self.slots_dir()).await?;
        let permit = loop {
            match slots.next().await {
                Some(Ok(pairs)) => {
                    let held: Vec<&str> = pairs.iter().map(|p| p.key.as_str()).collect();
                    if let Some(permit) = self.try_slots(&held).await? {
                        break permit;
                    }
                }
                Some(Err(error)) if error.is_transient() => {
                    tracing::debug!(semaphore = %self.name, %error, "slot watch interrupted; the store retries");
                }
                Some(Err(error)) => return Err(error),
                None => {
                    return Err(Error::Closed {
                        url: format!("(the slot watch of semaphore {} ended)", self.name),
                    })
                }
            }
        };
        drop(slots);
        // Leaving the queue wakes the next waiter; a failure here only
        // delays it until the release is retried or the session ends.
        if let Err(error) = place.unlock().await {
            tracing::debug!(semaphore = %self.name, %error, "leaving the semaphore queue failed");
        }
        Ok(permit)
    }

    /// Lists the held slots and tries the others.
    async fn try_free_slots(&self) -> Result<Option<Permit>> {
        let pairs = self.store.list(&self.slots_dir()).await?;
        let held: Vec<&str> = pairs.iter().map(|p| p.key.as_str()).collect();
        self.try_slots(&held).await
    }

    /// Tries to lock each slot whose key is not in `held`, starting at a
    /// random one (so contenders spread over the free slots).
    async fn try_slots(&self, held: &[&str]) -> Result<Option<Permit>> {
        let start = start_slot(self.permits);
        for i in 0..self.permits {
            let slot = (start + i) % self.permits;
            let key = self.slot_key(slot);
            if held.contains(&key.as_str()) {
                continue;
            }
            let lock = self
                .store
                .new_lock(&key, LockOptions::new(self.holder.clone()))
                .await?;
            match lock.try_lock().await {
                Ok(guard) => return self.granted(slot, guard).await.map(Some),
                Err(Error::Locked { .. }) => continue,
                Err(error) => return Err(error),
            }
        }
        Ok(None)
    }

    /// Draws the fencing token for a slot just taken.
    async fn granted(&self, slot: usize, guard: LockGuard) -> Result<Permit> {
        let token_key = format!("{}/token", self.name);
        match self
            .store
            .put(&token_key, self.holder.clone(), PutOptions::new())
            .await
        {
            Ok(pair) => Ok(Permit {
                slot,
                token: pair.last_index,
                guard,
            }),
            Err(error) => {
                if let Err(release) = guard.unlock().await {
                    tracing::debug!(semaphore = %self.name, error = %release, "releasing a slot without a token failed");
                }
                Err(error)
            }
        }
    }
}

/// A slot to try first, different for each call.
fn start_slot(permits: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_usize(permits);
    (hasher.finish() % permits.max(1) as u64) as usize
}

/// One held permit of a [`Semaphore`].
///
/// Dropping it releases it in the background; [`Permit::release`] releases
/// it and waits.
#[must_use = "dropping the permit releases it"]
#[derive(Debug)]
pub struct Permit {
    slot: usize,
    token: u64,
    guard: LockGuard,
}

impl Permit {
    /// The fencing token: greater than that of every permit of this
    /// semaphore granted before this one was, on any slot.
    pub fn fencing_token(&self) -> u64 {
        self.token
    }

    /// Which of the `N` slots this permit holds.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// Resolves when the permit is or may be lost (session expired, slot key
    /// deleted, store unreachable for too long, store closed); see
    /// [`LockGuard::lost`].
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.guard.lost()
    }

    /// True once [`Permit::lost`] has resolved.
    pub fn is_lost(&self) -> bool {
        self.guard.is_lost()
    }

    /// The loss of this permit, observable apart from it.
    pub fn loss_signal(&self) -> LossSignal {
        self.guard.loss_signal()
    }

    /// Releases the permit; [`Error::LockLost`] if it had already been lost.
    /// The release runs to its end even if this future is dropped.
    pub async fn release(self) -> Result<()> {
        self.guard.unlock().await
    }
}
