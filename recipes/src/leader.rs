//! Leader-only jobs: run a job only while this node leads.
//!
//! ```
//! # #[tokio::main] async fn main() -> anykv::Result<()> {
//! use anykv_leadership::Candidate;
//! use anykv_recipes::leader::LeaderJob;
//!
//! let store = anykv::open("memory://").await?;
//! let candidate = Candidate::new(store, "indexer/leader", "node-1");
//! let (job, _errors) = LeaderJob::start(candidate, |term| async move {
//!     // Runs once per term, with the term's fencing token.
//!     println!("leading with token {}", term.token());
//!     term.cancelled().await; // leadership is, or may be, lost: stop
//! })
//! .await?;
//! let mut status = job.status();
//! status.wait_for(|s| s.is_leader()).await.expect("job running");
//! assert!(job.token().is_some());
//! job.stop().await; // the job is cancelled and awaited, then the lock released
//! assert!(!job.is_leader());
//! # Ok(()) }
//! ```
//!
//! [`LeaderJob::start`] campaigns with a [`Candidate`] and, for every term
//! it wins, spawns the job with a [`Term`]: the term's fencing token and its
//! cancellation. The cancellation fires when the term's lock is or may be
//! lost — on the lock's client-side deadline, which comes before the store
//! could grant the lock to another node ([`Candidate::leader_term`]) — and
//! when this node resigns or stops. On [`LeaderJob::resign`] and
//! [`LeaderJob::stop`] the job is cancelled and *awaited* before the lock is
//! released, so the next leader's job starts only after this one returned.
//! A job that ignores its cancellation is aborted after a grace period
//! ([`DEFAULT_STOP_GRACE`]).
//!
//! A deposed leader that was paused (GC, swap, SIGSTOP) for longer than the
//! lock's TTL can still run for a moment after another leader began; give
//! [`Term::token`] to every resource the job writes and have it reject
//! lower tokens.
//!
//! [`LeaderJob::status`] is a [`tokio::sync::watch::Receiver`] of
//! [`LeaderStatus`]: read it at any time (`borrow()`), or wait for a change
//! (`changed()`, `wait_for`). Its [`LeaderStatus::is_leader`] reads the
//! term's loss signal itself, so it turns false the moment the lock may be
//! lost, before the change is published.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anykv::{LossSignal, Result};
use anykv_leadership::{Candidate, ElectedStream, ErrorStream};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// How long [`LeaderJob::resign`], [`LeaderJob::stop`] and a lost term wait
/// for a cancelled job to return before aborting its task.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// One term of leadership, as the job sees it: its fencing token and its
/// cancellation. Cheap to clone.
#[derive(Clone)]
pub struct Term {
    token: u64,
    loss: LossSignal,
    ended: CancellationToken,
}

impl fmt::Debug for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Term")
            .field("token", &self.token)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl Term {
    fn new(token: u64, loss: LossSignal) -> Self {
        Term {
            token,
            loss,
            ended: CancellationToken::new(),
        }
    }

    /// The term's fencing token: strictly greater than that of every
    /// earlier term on the election key, whichever node held it.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// True once the term is over or may be: the lock is or may be lost,
    /// or this node resigns or stops. Read without waiting, from the lock's
    /// own loss signal.
    pub fn is_cancelled(&self) -> bool {
        self.ended.is_cancelled() || self.loss.is_lost()
    }

    /// Resolves when [`Term::is_cancelled`] becomes true.
    pub async fn cancelled(&self) {
        if self.is_cancelled() {
            return;
        }
        tokio::select! {
            () = self.loss.lost() => {}
            () = self.ended.cancelled() => {}
        }
    }

    fn end(&self) {
        self.ended.cancel();
    }
}

/// Whether this node leads, and with which token; see [`LeaderJob::status`].
#[derive(Clone, Default)]
pub struct LeaderStatus {
    term: Option<Term>,
    terms: u64,
}

impl fmt::Debug for LeaderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderStatus")
            .field("is_leader", &self.is_leader())
            .field("token", &self.token())
            .field("terms", &self.terms)
            .finish()
    }
}

impl LeaderStatus {
    /// True while this node leads and the term is not cancelled.
    pub fn is_leader(&self) -> bool {
        self.term.as_ref().is_some_and(|t| !t.is_cancelled())
    }

    /// The current term's fencing token while [`LeaderStatus::is_leader`].
    pub fn token(&self) -> Option<u64> {
        self.term
            .as_ref()
            .filter(|t| !t.is_cancelled())
            .map(Term::token)
    }

    /// How many terms this node has begun so far (its job was started that
    /// many times).
    pub fn terms(&self) -> u64 {
        self.terms
    }
}

enum Command {
    Resign(oneshot::Sender<()>),
}

/// A job that runs only while its [`Candidate`] leads; see the
/// [module docs](self). Dropping it stops it like [`LeaderJob::stop`],
/// in the background.
#[must_use = "a leader job stops when dropped"]
pub struct LeaderJob {
    candidate: Arc<Candidate>,
    status: watch::Receiver<LeaderStatus>,
    commands: mpsc::UnboundedSender<Command>,
    stop: CancellationToken,
    finished: CancellationToken,
}

impl fmt::Debug for LeaderJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderJob")
            .field("candidate", &self.candidate)
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl LeaderJob {
    /// Starts campaigning with `candidate` (which must not be running) and
    /// runs `job` in a task of its own for every term won, with a grace of
    /// [`DEFAULT_STOP_GRACE`]. Returns the handle and the candidate's error
    /// stream (see [`Candidate::run_for_election`]).
    ///
    /// A job that returns while the term goes on is not started again
    /// before the next term.
    pub async fn start<F, Fut>(candidate: Candidate, job: F) -> Result<(LeaderJob, ErrorStream)>
    where
        F: FnMut(Term) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::start_with_grace(candidate, DEFAULT_STOP_GRACE, job).await
    }

    /// [`LeaderJob::start`] with another grace: how long a cancelled job
    /// may take to return before its task is aborted.
    pub async fn start_with_grace<F, Fut>(
        candidate: Candidate,
        grace: Duration,
        job: F,
    ) -> Result<(LeaderJob, ErrorStream)>
    where
        F: FnMut(Term) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| anykv::Error::InvalidArgument {
                key: candidate.key().to_owned(),
                reason: "LeaderJob::start must be called within a tokio runtime".into(),
            })?;
        let candidate = Arc::new(candidate);
        let (elected, errors) = candidate.run_for_election().await?;
        let (status_tx, status) = watch::channel(LeaderStatus::default());
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let finished = CancellationToken::new();
        let driver = Driver {
            candidate: candidate.clone(),
            elected,
            status: status_tx,
            commands: commands_rx,
            stop: stop.clone(),
            grace,
            runtime: runtime.clone(),
        };
        // Owned through `stop`, which the handle cancels when stopped or
        // dropped; the task then ends the term and the campaign.
        runtime.spawn(driver.run(job, finished.clone().drop_guard()));
        Ok((
            LeaderJob {
                candidate,
                status,
                commands,
                stop,
                finished,
            },
            errors,
        ))
    }

    /// The candidate campaigning for this job (its key and node id).
    pub fn candidate(&self) -> &Candidate {
        &self.candidate
    }

    /// The leader status, as a [`tokio::sync::watch::Receiver`]: read it
    /// with `borrow()`, wait for changes with `changed()` or `wait_for`.
    /// A change is published at the start and the end of every term;
    /// `changed()` fails once the job has stopped.
    pub fn status(&self) -> watch::Receiver<LeaderStatus> {
        self.status.clone()
    }

    /// True while this node leads and its term is not cancelled.
    pub fn is_leader(&self) -> bool {
        self.status.borrow().is_leader()
    }

    /// The current term's fencing token while leading.
    pub fn token(&self) -> Option<u64> {
        self.status.borrow().token()
    }

    /// Steps down if leading: cancels the term, waits for the job to return
    /// (aborting it after the grace), then resigns the candidate, which
    /// releases the lock and campaigns again (see [`Candidate::resign`]).
    /// Returns once the lock is released; at once if not leading.
    pub async fn resign(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Resign(reply)).is_ok() {
            let _ = done.await;
        }
    }

    /// Cancels the term and awaits the job (aborting it after the grace),
    /// then stops the candidate: the lock is released and the campaign and
    /// its streams end. Returns once all of that is done. Idempotent.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.finished.cancelled().await;
    }
}

impl Drop for LeaderJob {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The task behind a [`LeaderJob`].
struct Driver {
    candidate: Arc<Candidate>,
    elected: ElectedStream,
    status: watch::Sender<LeaderStatus>,
    commands: mpsc::UnboundedReceiver<Command>,
    stop: CancellationToken,
    grace: Duration,
    runtime: tokio::runtime::Handle,
}

/// Why a term ended.
enum End {
    Stop,
    Resign(oneshot::Sender<()>),
    Lost,
}

impl Driver {
    async fn run<F, Fut>(mut self, mut job: F, _finished: tokio_util::sync::DropGuard)
    where
        F: FnMut(Term) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        loop {
            // Wait for a term.
            let elected = tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                command = self.commands.recv() => match command {
                    // Not leading: nothing to resign.
                    Some(Command::Resign(reply)) => { let _ = reply.send(()); continue }
                    None => break,
                },
                elected = self.elected.next() => elected,
            };
            match elected {
                Some(true) => {}
                Some(false) => continue,
                None => break,
            }
            let Some((token, loss)) = self.candidate.leader_term() else {
                // The term ended before we saw it; its `false` follows.
                continue;
            };
            let term = Term::new(token, loss);
            self.status.send_modify(|s| {
                s.term = Some(term.clone());
                s.terms += 1;
            });
            tracing::debug!(key = %self.candidate.key(), token, "leader job starting");
            let mut task = Some(self.runtime.spawn(job(term.clone())));
            let end = loop {
                tokio::select! {
                    biased;
                    () = self.stop.cancelled() => break End::Stop,
                    () = term.cancelled() => break End::Lost,
                    command = self.commands.recv() => match command {
                        Some(Command::Resign(reply)) => break End::Resign(reply),
                        None => break End::Stop,
                    },
                    elected = self.elected.next() => match elected {
                        Some(true) => {}
                        Some(false) | None => break End::Lost,
                    },
                    outcome = join_running(&mut task) => {
                        if let Err(error) = outcome {
                            tracing::warn!(key = %self.candidate.key(), %error, "leader job failed");
                        }
                    }
                }
            };
            // Cancel the job first, and let it finish, before the lock goes.
            term.end();
            if let Some(task) = task {
                await_job(&self.candidate, self.grace, task).await;
            }
            self.status.send_modify(|s| s.term = None);
            match end {
                End::Stop => break,
                End::Resign(reply) => {
                    self.candidate.resign().await;
                    let _ = reply.send(());
                }
                End::Lost => {}
            }
        }
        self.status.send_modify(|s| {
            if let Some(term) = s.term.take() {
                term.end();
            }
        });
        self.candidate.stop().await;
    }
}

/// Waits up to `grace` for a cancelled job's task to return, then aborts it.
async fn await_job(candidate: &Candidate, grace: Duration, mut task: tokio::task::JoinHandle<()>) {
    match tokio::time::timeout(grace, &mut task).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(key = %candidate.key(), %error, "leader job failed")
        }
        Err(_) => {
            tracing::warn!(
                key = %candidate.key(),
                ?grace,
                "leader job did not return within its grace after cancellation; aborting it"
            );
            task.abort();
            let _ = task.await;
        }
    }
}

/// Waits for the job's task if it is still running (then forgets it);
/// never resolves once it has ended. Cancel-safe.
async fn join_running(
    task: &mut Option<tokio::task::JoinHandle<()>>,
) -> std::result::Result<(), tokio::task::JoinError> {
    match task {
        Some(running) => {
            let outcome = running.await;
            *task = None;
            outcome
        }
        None => std::future::pending().await,
    }
}
