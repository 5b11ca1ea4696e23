//! [`Candidate`]: campaign for leadership of a key.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anykv::{Error, LockOptions, LossSignal, Result, Store};
use futures::stream::{self, StreamExt};
use tokio::sync::watch;

use crate::campaign::{Run, Status};
use crate::{ElectedStream, ErrorStream};

/// How long a resigning leader stays out of the election unless it sees
/// another candidate take over sooner. Long enough for waiting candidates to
/// wake up and take the lock (one store round trip, plus scheduling delays
/// on a busy machine); short enough that a vacancy nobody fills — no other
/// candidate, or one whose short term the watch coalesced away — is brief.
pub const DEFAULT_RESIGN_GRACE: Duration = Duration::from_millis(500);

/// A participant in the election for one key.
///
/// A candidate campaigns by taking the lock [`Store::new_lock`] gives for
/// the key, with its `node_id` as the lock's value — so while it leads,
/// `store.get(key)` returns its `node_id`, which is what a
/// [`Follower`](crate::Follower) reports. Each term's
/// [fencing token](Candidate::leader_token) is the lock's: strictly greater
/// than that of every earlier term on the key, whichever node held it.
///
/// One background task per running candidate does all the work; it never
/// waits for a consumer, so a stream left unread never delays lock renewal
/// (the store does that) or the election of another node. While it leads,
/// it also keeps a watch on the key, opened at the start of the term: a
/// resign then sends only its release, and the watch that tells the
/// resigned leader of its successor is already in place.
///
/// * [`run_for_election`](Candidate::run_for_election) starts the campaign.
/// * [`resign`](Candidate::resign) steps down and campaigns again.
/// * [`stop`](Candidate::stop) steps down and ends the campaign and its
///   streams. Dropping the candidate does the same without waiting.
///
/// `node_id` must be unique among the candidates of a key: it is how a
/// resigning leader recognises that someone else has taken over, and how
/// followers tell leaders apart.
///
/// ```
/// # #[tokio::main] async fn main() -> anykv::Result<()> {
/// use anykv::StoreExt;
/// use anykv_leadership::Candidate;
/// use futures::StreamExt;
///
/// let store = anykv::open("memory://").await?;
/// let candidate = Candidate::new(store.clone(), "jobs/leader", "node-1");
/// let (mut elected, _errors) = candidate.run_for_election().await?;
/// assert_eq!(elected.next().await, Some(false)); // always the first item
/// assert_eq!(elected.next().await, Some(true)); // alone, so elected
/// assert!(candidate.is_leader());
/// assert_eq!(store.get("jobs/leader").await?.value, "node-1");
/// let token = candidate.leader_token().expect("leading");
///
/// candidate.resign().await; // alone: leads again after the resign grace
/// assert_eq!(elected.next().await, Some(false));
/// assert_eq!(elected.next().await, Some(true));
/// assert!(candidate.leader_token() > Some(token)); // a new term
///
/// candidate.stop().await;
/// assert_eq!(elected.next().await, Some(false));
/// assert_eq!(elected.next().await, None); // stop ends the streams
/// # Ok(()) }
/// ```
#[must_use = "a candidate stops campaigning when dropped"]
pub struct Candidate {
    store: Arc<dyn Store>,
    key: String,
    node_id: String,
    ttl: Option<Duration>,
    resign_grace: Duration,
    run: Mutex<Option<Run>>,
}

impl fmt::Debug for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidate")
            .field("key", &self.key)
            .field("node_id", &self.node_id)
            .field("ttl", &self.ttl)
            .field("leader", &self.is_leader())
            .finish()
    }
}

impl Candidate {
    /// A candidate for leadership of `key` on `store`, known as `node_id`.
    /// Nothing happens until [`Candidate::run_for_election`].
    pub fn new(store: Arc<dyn Store>, key: impl Into<String>, node_id: impl Into<String>) -> Self {
        Candidate {
            store,
            key: key.into(),
            node_id: node_id.into(),
            ttl: None,
            resign_grace: DEFAULT_RESIGN_GRACE,
            run: Mutex::new(None),
        }
    }

    /// How long the leadership outlives a leader that stops renewing it
    /// (crashed or cut off): the lock TTL, [`LockOptions::ttl`]. By default
    /// the store handle's session TTL. Backends whose locks live exactly as
    /// long as the handle's session ignore it
    /// ([`anykv::Capabilities::lock_ttl_per_lock`]). Zero or more than
    /// [`anykv::types::MAX_DURATION`] is refused by
    /// [`Candidate::run_for_election`] ([`Error::InvalidArgument`]).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long a leader that [resigned](Candidate::resign) stays out of the
    /// election when no other candidate takes over (default
    /// [`DEFAULT_RESIGN_GRACE`]). It campaigns again as soon as it sees
    /// another candidate hold the key, so this only matters when there is
    /// none (or its term was too short to be seen). Zero is allowed; more
    /// than [`anykv::types::MAX_DURATION`] is refused by
    /// [`Candidate::run_for_election`] ([`Error::InvalidArgument`]).
    pub fn resign_grace(mut self, grace: Duration) -> Self {
        self.resign_grace = grace;
        self
    }

    /// The key this candidate campaigns for.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// This candidate's identity: the lock value, what followers see.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Starts campaigning and returns the elected stream and the error
    /// stream.
    ///
    /// **Elected stream**: the first item is `false`; then `true` when this
    /// candidate becomes leader and `false` when it stops being leader (it
    /// resigned, stopped, or the lock was or may have been lost). Items are
    /// computed from the campaign's current state when the consumer reads,
    /// so a slow consumer sees a shortened history that is still safe: it
    /// never reads `true` when the candidate is not leader at that moment;
    /// a term that began and ended unread is skipped as a whole; and two
    /// different terms are always separated by a `false`, so every `true`
    /// means "a new term began" (read [`Candidate::leader_token`] for its
    /// token). The stream ends after [`Candidate::stop`] or drop, with a
    /// final `false` if it last said `true`.
    ///
    /// **Error stream**: every failure of the campaign — the store
    /// unreachable, an unexpected loss of the lock
    /// ([`Error::LockLost`]), a failed release. After each, the candidate
    /// keeps campaigning, with exponential backoff (up to 2 s) between
    /// failed attempts. It holds the latest 32 errors; older unread ones are
    /// dropped. Only a closed store ([`Error::Closed`]) ends the campaign:
    /// it is then the last error and both streams end.
    ///
    /// Errors returned here are final and found before campaigning: an
    /// invalid key, lock TTL or resign grace, a closed store, no tokio runtime to run the
    /// campaign on, or a campaign already running
    /// ([`Error::InvalidArgument`]; [`Candidate::stop`] it first — a stopped
    /// candidate may run again, with new streams).
    pub async fn run_for_election(&self) -> Result<(ElectedStream, ErrorStream)> {
        if self.resign_grace > anykv::types::MAX_DURATION {
            return Err(Error::InvalidArgument {
                key: self.key.clone(),
                reason: format!(
                    "resign grace of {:?} is longer than the longest supported duration, {:?} (anykv::types::MAX_DURATION)",
                    self.resign_grace,
                    anykv::types::MAX_DURATION
                ),
            });
        }
        let mut options = LockOptions::new(self.node_id.clone());
        if let Some(ttl) = self.ttl {
            options = options.with_ttl(ttl);
        }
        let runtime = crate::runtime(&self.key, "run_for_election")?;
        let lock = self.store.new_lock(&self.key, options).await?;

        let mut slot = self.lock_run();
        if slot.as_ref().is_some_and(|run| !run.stop.is_cancelled()) {
            return Err(Error::InvalidArgument {
                key: self.key.clone(),
                reason: format!(
                    "candidate {:?} is already campaigning; stop() it before running again",
                    self.node_id
                ),
            });
        }
        let (run, errors) = Run::start(
            &runtime,
            self.store.clone(),
            lock,
            self.key.clone(),
            self.node_id.clone(),
            self.resign_grace,
        );
        let status = run.status.clone();
        *slot = Some(run);
        Ok((elected_stream(status), errors.into_stream(())))
    }

    /// True while this candidate is the leader: between the elected
    /// stream's `true` and the following `false`, read without waiting.
    ///
    /// It observes the term's lock itself: once the lock is or may be lost,
    /// this is false at once, even before the elected stream says `false`.
    pub fn is_leader(&self) -> bool {
        self.status().is_some_and(|s| s.leading())
    }

    /// The fencing token of the current term while this candidate leads,
    /// `None` otherwise. It strictly increases from term to term on this
    /// key, whichever candidate holds it: give it to every resource the
    /// leader writes to, and have the resource reject tokens lower than
    /// the highest it has seen, so that a deposed leader that has not yet
    /// noticed cannot do harm.
    pub fn leader_token(&self) -> Option<u64> {
        self.status().filter(|s| s.leading()).map(|s| s.token)
    }

    /// The fencing token and the lock's [`LossSignal`] of the current term,
    /// read together, while this candidate leads; `None` otherwise.
    ///
    /// The signal fires as soon as the term's lock is or may be lost — on
    /// the lock's client-side deadline, before the store could grant it to
    /// another candidate (see [`anykv::LockGuard::lost`]) — and when the
    /// term ends by [`Candidate::resign`] or [`Candidate::stop`], before
    /// the lock is released. Work that must stop before another leader can
    /// start waits on it rather than on the elected stream's `false`, which
    /// the campaign's task announces a moment later.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anykv::Result<()> {
    /// use anykv_leadership::Candidate;
    /// use futures::StreamExt;
    ///
    /// let store = anykv::open("memory://").await?;
    /// let candidate = Candidate::new(store, "jobs/leader", "node-1");
    /// let (mut elected, _errors) = candidate.run_for_election().await?;
    /// assert_eq!(elected.next().await, Some(false));
    /// assert_eq!(elected.next().await, Some(true));
    /// let (token, loss) = candidate.leader_term().expect("leading");
    /// assert_eq!(candidate.leader_token(), Some(token));
    /// assert!(!loss.is_lost());
    /// candidate.resign().await;
    /// assert!(loss.is_lost()); // fired before the lock was released
    /// # Ok(()) }
    /// ```
    pub fn leader_term(&self) -> Option<(u64, LossSignal)> {
        let status = self.status().filter(|s| s.leading())?;
        let loss = status.loss?;
        Some((status.token, loss))
    }

    /// Steps down if this candidate leads, then campaigns again.
    ///
    /// Returns once the candidate no longer leads and has released the
    /// lock, so another candidate can be elected at once (about one store
    /// round trip). The resigned candidate campaigns again as soon as
    /// another one holds the key, or after the
    /// [resign grace](Candidate::resign_grace) if none does. Does nothing if
    /// this candidate is not leading (or not running); calling it twice is
    /// harmless.
    pub async fn resign(&self) {
        let (mut status, term) = {
            let slot = self.lock_run();
            let Some(run) = slot.as_ref() else { return };
            let now = run.status.borrow().clone();
            if !now.leader {
                return;
            }
            run.resign.send_modify(|t| *t = (*t).max(now.term));
            (run.status.clone(), now.term)
        };
        // An error means the campaign ended, which also releases the lock.
        let _ = status.wait_for(|s| s.released >= term).await;
    }

    /// Steps down if leading, releases the lock, and ends the campaign:
    /// both streams end. Returns once the campaign's task has ended.
    /// Idempotent. [`Candidate::run_for_election`] may start a new campaign
    /// afterwards.
    pub async fn stop(&self) {
        let finished = {
            let slot = self.lock_run();
            let Some(run) = slot.as_ref() else { return };
            run.stop.cancel();
            run.finished.clone()
        };
        finished.cancelled().await;
    }

    fn status(&self) -> Option<Status> {
        self.lock_run()
            .as_ref()
            .map(|run| run.status.borrow().clone())
    }

    fn lock_run(&self) -> MutexGuard<'_, Option<Run>> {
        // Critical sections only swap or read the slot; poison is harmless.
        self.run.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The elected stream over the campaign's status; see
/// [`Candidate::run_for_election`] for its rules.
fn elected_stream(status: watch::Receiver<Status>) -> ElectedStream {
    struct Reader {
        status: watch::Receiver<Status>,
        /// (leader, term) as the consumer last learnt it; `None` before the
        /// initial `false`.
        delivered: Option<(bool, u64)>,
        pending: VecDeque<bool>,
        ended: bool,
    }
    let reader = Reader {
        status,
        delivered: None,
        pending: VecDeque::new(),
        ended: false,
    };
    stream::unfold(reader, |mut r| async move {
        loop {
            if let Some(item) = r.pending.pop_front() {
                return Some((item, r));
            }
            let Some((was_leader, was_term)) = r.delivered else {
                r.delivered = Some((false, 0));
                return Some((false, r));
            };
            let now = r.status.borrow_and_update().clone();
            match (was_leader, now.leading()) {
                (false, true) => r.pending.push_back(true),
                (true, false) => r.pending.push_back(false),
                (true, true) if now.term != was_term => r.pending.extend([false, true]),
                // Unchanged, or a whole term came and went unread.
                _ => {}
            }
            if !r.pending.is_empty() {
                r.delivered = Some((now.leading(), now.term));
                continue;
            }
            if r.ended {
                return None;
            }
            if r.status.changed().await.is_err() {
                // The campaign ended; deliver its final state, then end.
                r.ended = true;
            }
        }
    })
    .boxed()
}
