//! The campaign behind a [`Candidate`](crate::Candidate): the background
//! task that takes the lock, holds the term, and releases it again, and
//! the handle and published status through which the candidate drives it.

use std::sync::Arc;
use std::time::Duration;

use anykv::{Error, Lock, LockGuard, LossSignal, Result, Store};
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::backoff::Backoff;
use crate::mailbox;
use crate::ERROR_CAPACITY;

/// How long [`Candidate::stop`](crate::Candidate::stop) waits for the store to confirm the release of
/// the last term's lock. The release goes on after that in a task of its
/// own (see [`LockGuard::unlock`]) until the store confirms it or the
/// session ends; the candidate has already stopped acting as leader. A
/// resign or a lost term never gives up waiting: the candidate campaigns
/// again only once its previous lock is released, so it can never queue
/// behind a lock of its own.
const STOP_RELEASE_WAIT: Duration = Duration::from_secs(15);

/// The state a campaign publishes, read by `is_leader`, `leader_token`,
/// `resign` and the elected stream.
#[derive(Clone, Debug, Default)]
pub(crate) struct Status {
    /// True while this candidate leads, unless `loss` says the term's lock
    /// is already lost (read through [`Status::leading`]).
    pub(crate) leader: bool,
    /// The loss of the current term's lock, so that readers see a loss at
    /// once, before the campaign's task has run to announce it.
    pub(crate) loss: Option<LossSignal>,
    /// How many terms this campaign has won; the current (or last) term.
    pub(crate) term: u64,
    /// The fencing token of `term`.
    pub(crate) token: u64,
    /// The last term whose lock has been given back (or given up on).
    pub(crate) released: u64,
}

impl Status {
    /// True while this candidate leads and the term's lock is not lost.
    pub(crate) fn leading(&self) -> bool {
        self.leader && !self.loss.as_ref().is_some_and(LossSignal::is_lost)
    }
}

/// One running campaign, owned by the candidate. Dropping it stops the
/// campaign's task.
pub(crate) struct Run {
    /// What the campaign publishes.
    pub(crate) status: watch::Receiver<Status>,
    /// The highest term whose leader was asked to resign.
    pub(crate) resign: watch::Sender<u64>,
    /// Cancelled to end the campaign.
    pub(crate) stop: CancellationToken,
    /// Cancelled when the campaign's task has ended.
    pub(crate) finished: CancellationToken,
}

impl Run {
    /// Spawns the campaign task for `lock` on `runtime`. The error stream
    /// is made from the returned receiver.
    pub(crate) fn start(
        runtime: &tokio::runtime::Handle,
        store: Arc<dyn Store>,
        lock: Lock,
        key: String,
        node_id: String,
        resign_grace: Duration,
    ) -> (Run, mailbox::Receiver<Error>) {
        let (status_tx, status_rx) = watch::channel(Status::default());
        let (resign_tx, resign_rx) = watch::channel(0);
        let (errors_tx, errors_rx) = mailbox::channel(ERROR_CAPACITY);
        let stop = CancellationToken::new();
        let finished = CancellationToken::new();
        let campaign = Campaign {
            store,
            lock,
            key,
            node_id,
            resign_grace,
            status: status_tx,
            resign: resign_rx,
            stop: stop.clone(),
            errors: errors_tx,
            backoff: Backoff::new(),
        };
        // Owned through `stop` (cancelled when the candidate is stopped or
        // dropped) and `finished` (which the task cancels when it ends).
        runtime.spawn(campaign.run(finished.clone().drop_guard()));
        let run = Run {
            status: status_rx,
            resign: resign_tx,
            stop,
            finished,
        };
        (run, errors_rx)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How a term ended.
enum TermEnd {
    Stop,
    Resign,
    Lost,
}

/// The campaign's task state.
struct Campaign {
    store: Arc<dyn Store>,
    lock: Lock,
    key: String,
    node_id: String,
    resign_grace: Duration,
    status: watch::Sender<Status>,
    resign: watch::Receiver<u64>,
    stop: CancellationToken,
    errors: mailbox::Sender<Error>,
    backoff: Backoff,
}

impl Campaign {
    /// The campaign loop. Ends on stop or a closed store; dropping the
    /// status sender and the error sender then ends both streams.
    async fn run(mut self, _finished: DropGuard) {
        tracing::debug!(key = %self.key, node = %self.node_id, "campaign started");
        loop {
            let acquired = tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                acquired = self.lock.lock() => acquired,
            };
            let guard = match acquired {
                Ok(guard) => guard,
                Err(error) => {
                    if self.failed(error).await {
                        continue;
                    }
                    break;
                }
            };
            if guard.is_lost() {
                // Lost between the grant and now: never announce it.
                self.lost_before_announcing(guard).await;
                if self.pause().await {
                    continue;
                }
                break;
            }
            self.backoff.reset();
            let term = self.begin_term(&guard);
            // The watch a resign needs to see its successor is opened now,
            // while the term runs, so that a resign sends its release alone
            // and the watch is already in place when the successor takes
            // over (however soon that successor's own term ends).
            let mut successor =
                SuccessorWatch::Opening(open_watch(self.store.clone(), self.key.clone()));
            let end = loop {
                tokio::select! {
                    biased;
                    () = self.stop.cancelled() => break TermEnd::Stop,
                    () = guard.lost() => break TermEnd::Lost,
                    () = resign_requested(&mut self.resign, term) => break TermEnd::Resign,
                    () = successor.opened() => {}
                }
            };
            // Announce the end of the term before the lock goes, so that no
            // two candidates ever both claim to lead.
            self.end_term(&end);
            let lost = matches!(end, TermEnd::Lost);
            if lost {
                self.report(Error::LockLost {
                    key: self.key.clone(),
                });
            }
            let go_on = match end {
                TermEnd::Stop => {
                    self.release(guard, term, lost, true).await;
                    false
                }
                TermEnd::Lost => {
                    self.release(guard, term, lost, false).await;
                    self.pause().await
                }
                TermEnd::Resign => {
                    let watched = match successor {
                        SuccessorWatch::Open(Ok(watch)) => {
                            self.release(guard, term, lost, false).await;
                            Ok(watch)
                        }
                        // Still opening (a term shorter than a watch's
                        // start), or its opening failed: it goes on (again)
                        // while the release runs, not after, or a successor
                        // whose whole term fell in between would go unseen.
                        successor => {
                            let opening = match successor {
                                SuccessorWatch::Opening(opening) => opening,
                                SuccessorWatch::Open(_) => {
                                    open_watch(self.store.clone(), self.key.clone())
                                }
                            };
                            let grace = self.resign_grace;
                            let (watched, ()) = tokio::join!(
                                tokio::time::timeout(grace, opening),
                                self.release(guard, term, lost, false)
                            );
                            watched.unwrap_or_else(|_| {
                                Err(Error::Timeout {
                                    operation: "watch",
                                    target: self.key.clone(),
                                    after: grace,
                                })
                            })
                        }
                    };
                    self.await_successor(watched).await
                }
            };
            if !go_on {
                break;
            }
        }
        tracing::debug!(key = %self.key, node = %self.node_id, "campaign ended");
    }

    fn begin_term(&mut self, guard: &LockGuard) -> u64 {
        let mut term = 0;
        let token = guard.fencing_token();
        self.status.send_modify(|s| {
            s.term += 1;
            s.leader = true;
            s.loss = Some(guard.loss_signal());
            s.token = token;
            term = s.term;
        });
        tracing::info!(key = %self.key, node = %self.node_id, token, "elected leader");
        #[cfg(feature = "metrics")]
        metrics::counter!(crate::ELECTIONS_WON_TOTAL).increment(1);
        term
    }

    fn end_term(&mut self, end: &TermEnd) {
        self.status.send_modify(|s| {
            s.leader = false;
            s.loss = None;
        });
        let (why, _reason) = match end {
            TermEnd::Stop => ("stopped", "stopped"),
            TermEnd::Resign => ("resigned", "resigned"),
            TermEnd::Lost => ("lock lost", "lock_lost"),
        };
        tracing::info!(key = %self.key, node = %self.node_id, why, "no longer leader");
        #[cfg(feature = "metrics")]
        metrics::counter!(crate::ELECTIONS_LOST_TOTAL, "reason" => _reason).increment(1);
    }

    /// Gives the lock back and records that `term` is over for `resign`.
    ///
    /// The release itself never gives up before the store confirms it or the
    /// session ends (see [`LockGuard::unlock`]). When campaigning goes on,
    /// this waits for it to the end, so the next attempt can never queue
    /// behind this candidate's own lock; when stopping, it waits at most
    /// [`STOP_RELEASE_WAIT`] and leaves the rest to the release's own task.
    async fn release(&mut self, guard: LockGuard, term: u64, loss_reported: bool, stopping: bool) {
        let unlock = guard.unlock();
        tokio::pin!(unlock);
        let outcome = if stopping {
            tokio::time::timeout(STOP_RELEASE_WAIT, &mut unlock)
                .await
                .ok()
        } else {
            // Waits to the end, unless the candidate is stopped meanwhile:
            // then the stop's bound applies.
            let stop = self.stop.clone();
            tokio::select! {
                outcome = &mut unlock => Some(outcome),
                () = stop.cancelled() => tokio::time::timeout(STOP_RELEASE_WAIT, &mut unlock).await.ok(),
            }
        };
        match outcome {
            Some(Ok(())) => {}
            Some(Err(Error::LockLost { .. })) if loss_reported => {}
            // The next campaign attempt reports it (unless stopping, when
            // there is no one left to tell).
            Some(Err(Error::Closed { .. })) => {}
            Some(Err(error)) => {
                tracing::warn!(key = %self.key, node = %self.node_id, %error, "releasing the leadership lock failed");
                self.report(error);
            }
            None => {
                tracing::warn!(key = %self.key, node = %self.node_id, "stopping: the release of the leadership lock goes on in the background");
                self.report(Error::Timeout {
                    operation: "unlock",
                    target: self.key.clone(),
                    after: STOP_RELEASE_WAIT,
                });
            }
        }
        self.status
            .send_modify(|s| s.released = s.released.max(term));
    }

    async fn lost_before_announcing(&mut self, guard: LockGuard) {
        tracing::warn!(key = %self.key, node = %self.node_id, "leadership lock lost as soon as it was granted");
        self.report(Error::LockLost {
            key: self.key.clone(),
        });
        let term = self.status.borrow().term;
        self.release(guard, term, true, false).await;
    }

    /// Reports a failed campaign attempt. Returns false if the campaign
    /// must end (closed store, or stopped during the backoff).
    async fn failed(&mut self, error: Error) -> bool {
        let closed = matches!(error, Error::Closed { .. });
        tracing::warn!(key = %self.key, node = %self.node_id, %error, "campaign attempt failed");
        self.report(error);
        if closed {
            return false;
        }
        self.pause().await
    }

    /// Waits out the backoff delay; false if stopped meanwhile.
    async fn pause(&mut self) -> bool {
        let delay = self.backoff.next_delay();
        tokio::select! {
            biased;
            () = self.stop.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// After resigning: stay out of the election until another candidate
    /// holds the key, or for the resign grace. False if stopped meanwhile.
    async fn await_successor(&mut self, watched: Result<anykv::WatchStream>) -> bool {
        let grace = tokio::time::sleep(self.resign_grace);
        tokio::pin!(grace);
        let mut watch = match watched {
            Ok(watch) => Some(watch),
            Err(error) => {
                tracing::debug!(key = %self.key, %error, "cannot watch for a successor; waiting out the resign grace");
                None
            }
        };
        loop {
            let item = tokio::select! {
                biased;
                () = self.stop.cancelled() => return false,
                () = &mut grace => return true,
                item = next_or_pending(&mut watch) => item,
            };
            match item {
                // Our own hold may still show if the watch began first.
                Some(Ok(Some(pair))) if pair.value != self.node_id.as_bytes() => return true,
                Some(Ok(_)) => {}
                Some(Err(error)) if error.is_transient() => {}
                Some(Err(_)) | None => watch = None,
            }
        }
    }

    fn report(&self, error: Error) {
        if let Some(dropped) = self.errors.send(error) {
            if dropped > 0 {
                tracing::debug!(key = %self.key, dropped, "unread campaign errors dropped");
            }
        }
    }
}

/// Opens a watch on `key`, owning what it needs.
fn open_watch(
    store: Arc<dyn Store>,
    key: String,
) -> BoxFuture<'static, Result<anykv::WatchStream>> {
    Box::pin(async move { store.watch(&key).await })
}

/// The watch a leader opens at the start of its term, for a resign to see
/// its successor with.
enum SuccessorWatch {
    Opening(BoxFuture<'static, Result<anykv::WatchStream>>),
    Open(Result<anykv::WatchStream>),
}

impl SuccessorWatch {
    /// Resolves when the watch has opened (or failed to); never once it has.
    async fn opened(&mut self) {
        match self {
            SuccessorWatch::Opening(opening) => {
                let opened = opening.await;
                *self = SuccessorWatch::Open(opened);
            }
            SuccessorWatch::Open(_) => std::future::pending().await,
        }
    }
}

/// The next watch item, or never if there is no watch.
async fn next_or_pending(
    watch: &mut Option<anykv::WatchStream>,
) -> Option<Result<Option<anykv::KvPair>>> {
    match watch {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the leader of `term` was asked to resign.
async fn resign_requested(resign: &mut watch::Receiver<u64>, term: u64) {
    if resign.wait_for(|t| *t >= term).await.is_err() {
        // The candidate is gone; `stop` ends the term instead.
        std::future::pending::<()>().await;
    }
}
