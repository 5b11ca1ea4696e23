//! A leader-only scheduler: cron expressions and fixed intervals, each
//! firing run once cluster-wide, also across a handover.
//!
//! ```
//! # #[tokio::main] async fn main() -> anykv::Result<()> {
//! use std::time::Duration;
//! use anykv_leadership::Candidate;
//! use anykv_recipes::cron::{LeaderCron, Schedule};
//!
//! let store = anykv::open("memory://").await?;
//! let candidate = Candidate::new(store.clone(), "report/leader", "node-1");
//! let every = Schedule::every(Duration::from_millis(50))?; // or Schedule::cron("0 0 3 * * *")?
//! let (fired, mut firings) = tokio::sync::mpsc::unbounded_channel();
//! let (cron, _errors) = LeaderCron::start(candidate, store, "report/last", every, move |firing| {
//!     let _ = fired.send(firing.fire_time()); // the job; `firing.token()` fences it
//!     async {}
//! })
//! .await?;
//! let (a, b) = (firings.recv().await.unwrap(), firings.recv().await.unwrap());
//! assert_eq!(b.duration_since(a).unwrap(), Duration::from_millis(50)); // no gap
//! cron.stop().await;
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! [`LeaderCron`] is a [`LeaderJob`] whose job is the schedule. The leader
//! keeps, in one state key, the last fire time it *claimed*, with the
//! fencing token of its term. For each firing it waits until the next fire
//! time after the recorded one, then claims it with a compare-and-swap on
//! the state key's version ([`PutMode::Update`]) — refusing to write if the
//! recorded token is greater than its own (a later leader has taken over) —
//! and only then runs the job. A new leader resumes from the recorded fire
//! time, so a firing that fell due during a handover runs late, once, as
//! soon as the new leader is elected; several missed firings run one after
//! the other, in order. The first leader of a schedule records the time it
//! started, so no firing before that is run, and none after it is skipped.
//!
//! Interval schedules fire at the multiples of the interval since the Unix
//! epoch; cron expressions (the `cron` crate's syntax: seconds, minutes,
//! hours, day of month, month, day of week, optional year; UTC) at their
//! matching times. Fire times are whole milliseconds of the leader's wall
//! clock.
//!
//! # Delivery: at most once per fire time
//!
//! * Every fire time is claimed at most once: each claim moves the recorded
//!   fire time forward with a compare-and-swap, so two leaders (or a
//!   deposed leader that has not noticed yet) can never both claim one.
//! * The claim is recorded **before** the job runs. A leader that crashes,
//!   or is cut off, after the claim and before the job finished does not
//!   have that firing run again by its successor: the firing is *at most
//!   once*. The same holds when a claim's write times out but did happen.
//!   A job that must not be lost makes itself resumable (for instance it
//!   writes its own progress, fenced by [`Firing::token`]).
//! * A job that is still running when the term ends (resign, stop, loss)
//!   sees [`Firing::is_cancelled`]; it is awaited (and aborted after the
//!   [`LeaderJob`] grace) before the lock is released.
//! * A job that takes longer than the schedule's period delays the next
//!   firings, which then run late, in order; firings never overlap on one
//!   leader.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anykv::retry::Backoff;
use anykv::{Error, PutMode, PutOptions, Result, Store, StoreExt};
use anykv_leadership::{Candidate, ErrorStream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::leader::{LeaderJob, LeaderStatus, Term};

/// How many unreported scheduler errors are kept; newer ones are dropped
/// while the error stream is not read.
const ERROR_CAPACITY: usize = 32;

/// A schedule that cannot be used: a cron expression that does not parse,
/// or an interval shorter than a millisecond.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSchedule {
    schedule: String,
    reason: String,
}

impl fmt::Display for InvalidSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid schedule {:?}: {}", self.schedule, self.reason)
    }
}

impl std::error::Error for InvalidSchedule {}

impl From<InvalidSchedule> for Error {
    fn from(invalid: InvalidSchedule) -> Self {
        Error::InvalidArgument {
            key: invalid.schedule,
            reason: invalid.reason,
        }
    }
}

/// When a [`LeaderCron`] fires.
#[derive(Clone, Debug)]
pub struct Schedule {
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Every(u64),
    Cron(Box<cron::Schedule>),
}

impl Schedule {
    /// Every `interval`, at the multiples of it since the Unix epoch (so
    /// every node agrees on the fire times). At least one millisecond;
    /// whole milliseconds are used.
    pub fn every(interval: Duration) -> std::result::Result<Schedule, InvalidSchedule> {
        let millis = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        if millis == 0 {
            return Err(InvalidSchedule {
                schedule: format!("every {interval:?}"),
                reason: "the interval must be at least 1 ms".into(),
            });
        }
        Ok(Schedule {
            kind: Kind::Every(millis),
        })
    }

    /// A cron expression, in UTC: `sec min hour day-of-month month
    /// day-of-week [year]`, as the `cron` crate reads it (for example
    /// `"0 30 2 * * Mon-Fri"`: 02:30:00 on weekdays).
    pub fn cron(expression: &str) -> std::result::Result<Schedule, InvalidSchedule> {
        match cron::Schedule::from_str(expression) {
            Ok(schedule) => Ok(Schedule {
                kind: Kind::Cron(Box::new(schedule)),
            }),
            Err(error) => Err(InvalidSchedule {
                schedule: expression.to_owned(),
                reason: error.to_string(),
            }),
        }
    }

    /// The first fire time strictly after `after`, in whole milliseconds;
    /// `None` if the schedule never fires again.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use anykv_recipes::cron::Schedule;
    /// let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
    /// let hourly = Schedule::cron("0 0 * * * *").unwrap();
    /// assert_eq!(hourly.next_after(at(10)), Some(at(3600)));
    /// let every = Schedule::every(Duration::from_secs(60)).unwrap();
    /// assert_eq!(every.next_after(at(60)), Some(at(120)));
    /// ```
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        match &self.kind {
            Kind::Every(interval) => {
                let now = unix_millis(after);
                let next = (now / interval).checked_add(1)?.checked_mul(*interval)?;
                UNIX_EPOCH.checked_add(Duration::from_millis(next))
            }
            Kind::Cron(schedule) => {
                let after = chrono::DateTime::<chrono::Utc>::from(after);
                let next = schedule.after(&after).next()?;
                // Cron times are whole seconds; keep to milliseconds anyway.
                let millis = u64::try_from(next.timestamp_millis()).ok()?;
                UNIX_EPOCH.checked_add(Duration::from_millis(millis))
            }
        }
    }
}

/// Milliseconds since the Unix epoch (0 before it, saturating far after).
fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn from_unix_millis(millis: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(millis))
        .unwrap_or(UNIX_EPOCH)
}

/// One firing, handed to the job.
#[derive(Clone, Debug)]
pub struct Firing {
    fire_time: SystemTime,
    term: Term,
}

impl Firing {
    /// The fire time this firing is for (it may run later than that, after
    /// a handover or a slow previous firing).
    pub fn fire_time(&self) -> SystemTime {
        self.fire_time
    }

    /// The fencing token of the term that claimed this firing.
    pub fn token(&self) -> u64 {
        self.term.token()
    }

    /// The term that claimed this firing: its cancellation fires when the
    /// leadership is or may be lost, or this node resigns or stops.
    pub fn term(&self) -> &Term {
        &self.term
    }

    /// True once the term that claimed this firing is over or may be.
    pub fn is_cancelled(&self) -> bool {
        self.term.is_cancelled()
    }
}

/// What the state key holds.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct State {
    /// The last claimed fire time, in ms since the Unix epoch (at first, the
    /// time the schedule started).
    last_ms: u64,
    /// The fencing token of the term that wrote it.
    token: u64,
}

/// A schedule run by whichever node leads; see the [module docs](self).
/// Dropping it stops it like [`LeaderCron::stop`], in the background.
#[must_use = "a leader cron stops when dropped"]
#[derive(Debug)]
pub struct LeaderCron {
    job: LeaderJob,
}

impl LeaderCron {
    /// Campaigns with `candidate` (which must not be running) and, while it
    /// leads, runs `job` at every fire time of `schedule`, recording the
    /// claimed fire times in `state_key` of `store` (use the same key, and
    /// the same election key, on every node of the schedule; the handle is
    /// usually the candidate's). Returns the handle and an error stream with
    /// the candidate's errors and the scheduler's (failed reads or claims,
    /// which it retries with backoff).
    pub async fn start<F, Fut>(
        candidate: Candidate,
        store: Arc<dyn Store>,
        state_key: impl Into<String>,
        schedule: Schedule,
        job: F,
    ) -> Result<(LeaderCron, ErrorStream)>
    where
        F: FnMut(Firing) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let state_key = state_key.into();
        let state_key = anykv::key::normalize_key(&state_key)?;
        let (errors_tx, errors_rx) = mpsc::channel(ERROR_CAPACITY);
        let shared = Arc::new(Shared {
            store,
            key: state_key,
            schedule,
            job: tokio::sync::Mutex::new(job),
            errors: errors_tx,
        });
        let (job, candidate_errors) = LeaderJob::start(candidate, move |term| {
            let shared = shared.clone();
            async move { shared.run_term(term).await }
        })
        .await?;
        let own_errors = futures::stream::unfold(errors_rx, |mut rx| async move {
            let error = rx.recv().await?;
            Some((error, rx))
        });
        let errors = futures::stream::select(candidate_errors, own_errors).boxed();
        Ok((LeaderCron { job }, errors))
    }

    /// The leader status; see [`LeaderJob::status`].
    pub fn status(&self) -> watch::Receiver<LeaderStatus> {
        self.job.status()
    }

    /// True while this node leads the schedule.
    pub fn is_leader(&self) -> bool {
        self.job.is_leader()
    }

    /// The candidate campaigning for this schedule.
    pub fn candidate(&self) -> &Candidate {
        self.job.candidate()
    }

    /// Steps down (a running firing is cancelled and awaited first) and
    /// campaigns again; see [`LeaderJob::resign`].
    pub async fn resign(&self) {
        self.job.resign().await
    }

    /// Stops scheduling on this node (a running firing is cancelled and
    /// awaited first) and ends the campaign; see [`LeaderJob::stop`].
    pub async fn stop(&self) {
        self.job.stop().await
    }
}

/// What every term of a [`LeaderCron`] shares.
struct Shared<F> {
    store: Arc<dyn Store>,
    key: String,
    schedule: Schedule,
    job: tokio::sync::Mutex<F>,
    errors: mpsc::Sender<Error>,
}

/// The outcome of one read of the state key.
enum Read {
    State(State, u64),
    /// Try again (after a pause if it failed).
    Again,
    /// The term is over, or cannot go on.
    Stop,
}

impl<F, Fut> Shared<F>
where
    F: FnMut(Firing) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    /// The schedule during one term.
    async fn run_term(&self, term: Term) {
        let mut backoff = Backoff::new();
        // The state as our own last write left it, so that the next firing
        // needs no read.
        let mut known: Option<(State, u64)> = None;
        // A claim whose write failed in a way that leaves its outcome open.
        let mut unsure: Option<u64> = None;
        loop {
            if term.is_cancelled() {
                return;
            }
            let (state, version) = match known.take() {
                Some(known) => known,
                None => match self.read(&term, &mut backoff).await {
                    Read::State(state, version) => (state, version),
                    Read::Again => continue,
                    Read::Stop => return,
                },
            };
            if state.token > term.token() {
                tracing::warn!(key = %self.key, token = term.token(), recorded = state.token, "a later leader has claimed firings; this term claims none");
                term.cancelled().await;
                return;
            }
            if unsure.take() == Some(state.last_ms) && state.token == term.token() {
                // The claim went through after all: it is ours to run.
                self.fire(state.last_ms, &term).await;
                continue;
            }
            let Some(next) = self.schedule.next_after(from_unix_millis(state.last_ms)) else {
                tracing::info!(key = %self.key, "the schedule has no more fire times");
                term.cancelled().await;
                return;
            };
            if !wait_until(next, &term).await {
                return;
            }
            let claim = State {
                last_ms: unix_millis(next),
                token: term.token(),
            };
            let value = match serde_json::to_vec(&claim) {
                Ok(value) => value,
                Err(error) => {
                    self.report(Error::InvalidArgument {
                        key: self.key.clone(),
                        reason: format!("cannot encode the schedule state: {error}"),
                    });
                    term.cancelled().await;
                    return;
                }
            };
            // Not cancelled midway: a claim whose answer was dropped would
            // leave its firing unrun.
            let written = self
                .store
                .put(
                    &self.key,
                    value,
                    PutOptions::new().with_mode(PutMode::Update(version)),
                )
                .await;
            match written {
                Ok(pair) => {
                    backoff.reset();
                    known = Some((claim, pair.last_index));
                    self.fire(claim.last_ms, &term).await;
                }
                // Someone else wrote: read again (and find out who).
                Err(Error::KeyModified { .. }) | Err(Error::KeyNotFound { .. }) => {}
                Err(error) => {
                    if error.is_transient() {
                        unsure = Some(claim.last_ms);
                    }
                    self.report(error);
                    if !pause(&term, &mut backoff).await {
                        return;
                    }
                }
            }
        }
    }

    async fn read(&self, term: &Term, backoff: &mut Backoff) -> Read {
        let read = tokio::select! {
            biased;
            () = term.cancelled() => return Read::Stop,
            read = self.store.get_opt(&self.key) => read,
        };
        let failed = match read {
            Ok(Some(pair)) => match serde_json::from_slice::<State>(&pair.value) {
                Ok(state) => return Read::State(state, pair.last_index),
                Err(error) => {
                    self.report(Error::InvalidArgument {
                        key: self.key.clone(),
                        reason: format!("the schedule state is not readable: {error}"),
                    });
                    term.cancelled().await;
                    return Read::Stop;
                }
            },
            Ok(None) => {
                // A new schedule: it starts now, on this leader's clock.
                let state = State {
                    last_ms: unix_millis(SystemTime::now()),
                    token: term.token(),
                };
                let value = match serde_json::to_vec(&state) {
                    Ok(value) => value,
                    Err(_) => return Read::Stop,
                };
                match self
                    .store
                    .put(
                        &self.key,
                        value,
                        PutOptions::new().with_mode(PutMode::Create),
                    )
                    .await
                {
                    Ok(pair) => return Read::State(state, pair.last_index),
                    Err(Error::KeyExists { .. }) => return Read::Again,
                    Err(error) => error,
                }
            }
            Err(error) => error,
        };
        let closed = matches!(failed, Error::Closed { .. });
        self.report(failed);
        if closed || !pause(term, backoff).await {
            Read::Stop
        } else {
            Read::Again
        }
    }

    /// Runs the job for the claimed fire time `millis`.
    async fn fire(&self, millis: u64, term: &Term) {
        let firing = Firing {
            fire_time: from_unix_millis(millis),
            term: term.clone(),
        };
        tracing::debug!(key = %self.key, fire_ms = millis, token = term.token(), "firing");
        let run = {
            let mut job = self.job.lock().await;
            (*job)(firing)
        };
        run.await;
    }

    fn report(&self, error: Error) {
        tracing::debug!(key = %self.key, %error, "leader cron");
        let _ = self.errors.try_send(error);
    }
}

/// Sleeps until the wall clock reads `at` or later; false if the term ended.
async fn wait_until(at: SystemTime, term: &Term) -> bool {
    loop {
        if term.is_cancelled() {
            return false;
        }
        let left = match at.duration_since(SystemTime::now()) {
            Ok(left) if !left.is_zero() => left,
            _ => return true,
        };
        tokio::select! {
            biased;
            () = term.cancelled() => return false,
            () = tokio::time::sleep(left) => {}
        }
    }
}

/// Waits out the next backoff delay; false if the term ended meanwhile.
async fn pause(term: &Term, backoff: &mut Backoff) -> bool {
    let delay = backoff.next_delay();
    tokio::select! {
        biased;
        () = term.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_cron_expression_parses_and_gives_its_next_fire_times() {
        // 02:30:00 on weekdays. 1970-01-01 was a Thursday.
        let schedule = Schedule::cron("0 30 2 * * Mon-Fri").expect("parses");
        let day = 24 * 3600;
        let first = schedule.next_after(at(0)).expect("fires");
        assert_eq!(first, at(2 * 3600 + 30 * 60));
        let second = schedule.next_after(first).expect("fires");
        assert_eq!(second, at(day + 2 * 3600 + 30 * 60), "Friday");
        let third = schedule.next_after(second).expect("fires");
        assert_eq!(third, at(4 * day + 2 * 3600 + 30 * 60), "Monday");
        // Every 15 seconds.
        let quarter = Schedule::cron("*/15 * * * * *").expect("parses");
        assert_eq!(quarter.next_after(at(14)), Some(at(15)));
        assert_eq!(quarter.next_after(at(15)), Some(at(30)));
        assert_eq!(
            quarter.next_after(at(15) + Duration::from_millis(1)),
            Some(at(30))
        );
    }

    #[test]
    fn bad_schedules_are_refused() {
        assert!(Schedule::cron("not cron").is_err());
        assert!(Schedule::cron("0 61 * * * *").is_err());
        let invalid = Schedule::every(Duration::from_micros(10)).unwrap_err();
        assert!(invalid.to_string().contains("1 ms"), "{invalid}");
        let error: Error = invalid.into();
        assert!(matches!(error, Error::InvalidArgument { .. }));
    }

    #[test]
    fn intervals_fire_at_multiples_of_themselves() {
        let every = Schedule::every(Duration::from_millis(150)).expect("valid");
        let t = UNIX_EPOCH + Duration::from_millis(1_000);
        assert_eq!(
            every.next_after(t),
            Some(UNIX_EPOCH + Duration::from_millis(1_050))
        );
        assert_eq!(
            every.next_after(UNIX_EPOCH + Duration::from_millis(1_050)),
            Some(UNIX_EPOCH + Duration::from_millis(1_200))
        );
        assert_eq!(
            every.next_after(UNIX_EPOCH - Duration::from_secs(1)),
            Some(UNIX_EPOCH + Duration::from_millis(150))
        );
    }
}
