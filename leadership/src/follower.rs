//! [`Follower`]: who leads a key, as a stream.

use std::sync::Arc;

use anykv::{Error, Result, Store, WatchStream};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::mailbox;
use crate::{ErrorStream, LeaderStream, ERROR_CAPACITY};

/// How many leader changes a consumer may fall behind before the oldest
/// unread ones are dropped (the latest is always kept).
const LEADER_CAPACITY: usize = 256;

/// Follows the election for one key without taking part in it.
///
/// The leader is the value of the key while a [`Candidate`](crate::Candidate)
/// holds its lock: that candidate's `node_id`. A follower watches the key
/// with [`Store::watch`], so it learns of a new leader about one round trip
/// after the store does, without polling.
///
/// ```
/// # #[tokio::main] async fn main() -> anykv::Result<()> {
/// use anykv_leadership::{Candidate, Follower};
/// use futures::StreamExt;
///
/// let store = anykv::open("memory://").await?;
/// let follower = Follower::new(store.clone(), "jobs/leader");
/// let (mut leaders, _errors) = follower.follow_election().await?;
/// assert_eq!(leaders.next().await, Some(None)); // nobody leads yet
///
/// let candidate = Candidate::new(store.clone(), "jobs/leader", "node-1");
/// let _streams = candidate.run_for_election().await?;
/// assert_eq!(leaders.next().await, Some(Some("node-1".to_owned())));
///
/// candidate.stop().await;
/// assert_eq!(leaders.next().await, Some(None));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Follower {
    store: Arc<dyn Store>,
    key: String,
}

impl Follower {
    /// A follower of the election for `key` on `store`.
    pub fn new(store: Arc<dyn Store>, key: impl Into<String>) -> Self {
        Follower {
            store,
            key: key.into(),
        }
    }

    /// The key this follower follows.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Starts following and returns the leader stream and the error stream.
    ///
    /// **Leader stream**: the current leader first (`None` when nobody
    /// leads), then every change — `Some(node_id)` for a new leader, `None`
    /// when the leadership falls vacant. Consecutive equal items are merged.
    /// A term that lasts at least one watch round trip is always seen, in
    /// order; shorter ones may be coalesced by the store's watch, and a
    /// consumer more than 256 changes behind loses the oldest unread ones.
    /// The latest state always arrives. A leader value that is not UTF-8 is
    /// shown lossily.
    ///
    /// **Error stream**: watch failures. The follower keeps following: a
    /// transient failure is retried by the store's watch; after any other
    /// failure it watches again, with exponential backoff (up to 2 s). Only
    /// a closed store ([`Error::Closed`]) ends it, as the last error. It
    /// holds the latest 32 errors; older unread ones are dropped.
    ///
    /// Both streams end when the store is closed. The follower's task ends
    /// when both streams have been dropped; the `Follower` itself may be
    /// dropped at any time.
    ///
    /// Errors returned here are final: an invalid key, a closed store, or
    /// no tokio runtime to follow on. A store that cannot be reached yet is
    /// reported on the error stream instead, and the follower keeps trying.
    pub async fn follow_election(&self) -> Result<(LeaderStream, ErrorStream)> {
        let runtime = crate::runtime(&self.key, "follow_election")?;
        let (leaders_tx, leaders_rx) = mailbox::channel(LEADER_CAPACITY);
        let (errors_tx, errors_rx) = mailbox::channel(ERROR_CAPACITY);
        let first = match self.store.watch(&self.key).await {
            Ok(watch) => Some(watch),
            Err(error) if error.is_transient() => {
                tracing::warn!(key = %self.key, %error, "cannot watch the leader key yet");
                errors_tx.send(error);
                None
            }
            Err(error) => return Err(error),
        };
        let consumers_gone = CancellationToken::new();
        let consumers = Arc::new(consumers_gone.clone().drop_guard());
        let task = Follow {
            store: self.store.clone(),
            key: self.key.clone(),
            leaders: leaders_tx,
            errors: errors_tx,
            consumers_gone,
            last: None,
            backoff: Backoff::new(),
        };
        // Owned by the two streams: the task ends when both are dropped.
        runtime.spawn(task.run(first));
        Ok((
            leaders_rx.into_stream(consumers.clone()),
            errors_rx.into_stream(consumers),
        ))
    }
}

/// The follow task's state.
struct Follow {
    store: Arc<dyn Store>,
    key: String,
    leaders: mailbox::Sender<Option<String>>,
    errors: mailbox::Sender<Error>,
    consumers_gone: CancellationToken,
    /// The last leader sent; `None` before the first.
    last: Option<Option<String>>,
    backoff: Backoff,
}

impl Follow {
    async fn run(mut self, mut watch: Option<WatchStream>) {
        loop {
            let mut current = match watch.take() {
                Some(watch) => watch,
                None => {
                    let watched = tokio::select! {
                        biased;
                        () = self.consumers_gone.cancelled() => return,
                        watched = self.store.watch(&self.key) => watched,
                    };
                    match watched {
                        Ok(watch) => watch,
                        Err(error) => {
                            if self.failed(error).await {
                                continue;
                            }
                            return;
                        }
                    }
                }
            };
            loop {
                let item = tokio::select! {
                    biased;
                    () = self.consumers_gone.cancelled() => return,
                    item = current.next() => item,
                };
                match item {
                    Some(Ok(pair)) => {
                        self.backoff.reset();
                        let leader = pair.map(|p| String::from_utf8_lossy(&p.value).into_owned());
                        self.publish(leader);
                    }
                    Some(Err(error)) if error.is_transient() => {
                        tracing::debug!(key = %self.key, %error, "leader watch interrupted; the store retries");
                        self.report(error);
                    }
                    Some(Err(error)) => {
                        if self.failed(error).await {
                            break;
                        }
                        return;
                    }
                    // A watch ends only after a final error; watch again.
                    None => {
                        if self.pause().await {
                            break;
                        }
                        return;
                    }
                }
            }
        }
    }

    fn publish(&mut self, leader: Option<String>) {
        if self.last.as_ref() == Some(&leader) {
            return;
        }
        tracing::debug!(key = %self.key, leader = ?leader, "leader changed");
        self.last = Some(leader.clone());
        self.leaders.send(leader);
    }

    /// Reports a failure; false if following must end (closed store, or the
    /// consumers went away during the backoff).
    async fn failed(&mut self, error: Error) -> bool {
        let closed = matches!(error, Error::Closed { .. });
        tracing::warn!(key = %self.key, %error, "following the leader failed");
        self.report(error);
        !closed && self.pause().await
    }

    async fn pause(&mut self) -> bool {
        let delay = self.backoff.next_delay();
        tokio::select! {
            biased;
            () = self.consumers_gone.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    fn report(&self, error: Error) {
        self.errors.send(error);
    }
}
