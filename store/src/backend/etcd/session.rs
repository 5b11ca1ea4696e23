//! The handle's session: one etcd lease, kept alive in the background.
//!
//! * Granted when the handle opens, with the `session_ttl` rounded up to
//!   whole seconds (etcd may raise it to its minimum; [`Session::ttl`] is
//!   what the server granted).
//! * A background task sends a keep-alive every TTL/3 on one keep-alive
//!   stream and records, for each answer, when the request was *sent*: the
//!   server's expiry is at least that plus the TTL, so `sent + TTL − TTL/10`
//!   is a client-side deadline that always comes before the server can expire
//!   the lease and give its locks to someone else.
//! * The lease is declared lost when the server says it is gone (TTL 0 or
//!   "lease not found"), or when the deadline passes without a confirmed
//!   keep-alive. Its `lost` token fires (lock guards report it), a new lease
//!   is granted as soon as the cluster answers, and the old one is revoked
//!   best-effort (it may still be alive on the server after a partition).
//! * [`Session::close`] revokes the lease: etcd deletes the ephemeral keys
//!   and lock keys attached to it at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::watch;

use crate::retry::Backoff;
use crate::session::{CloseOnDrop, SessionTracker};
use crate::task::Tasks;
use crate::time::Renewal;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::cluster::{CallError, Cluster};
use super::error::{self, Kind};
use crate::error::{Error, Result};

/// One granted lease.
#[derive(Debug)]
pub(crate) struct Lease {
    /// The etcd lease ID.
    pub(crate) id: i64,
    /// The TTL the server granted.
    pub(crate) ttl: Duration,
    /// Cancelled when the lease is, or may be, gone.
    pub(crate) lost: CancellationToken,
}

/// The session of one store handle.
#[derive(Debug)]
pub(crate) struct Session {
    current: watch::Receiver<Option<Arc<Lease>>>,
    ttl: Duration,
    closed: CancellationToken,
    wait: Duration,
    url: String,
    tracker: Arc<SessionTracker>,
}

/// Why keeping one lease alive ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The store is closing.
    Closed,
    /// The server says the lease no longer exists.
    Expired,
    /// A request reported the lease missing (its `lost` token fired).
    Gone,
    /// No keep-alive was confirmed before the client-side deadline.
    Deadline,
}

impl Session {
    /// Grants the first lease and starts keeping it alive. The task ends when
    /// `closed` is cancelled.
    pub(crate) async fn start(
        cluster: Arc<Cluster>,
        ttl: Duration,
        request_timeout: Duration,
        closed: CancellationToken,
        url: String,
        tasks: &Tasks,
    ) -> Result<Self> {
        let ttl_secs = super::config::ttl_secs(ttl);
        let (lease, sent) = grant(&cluster, ttl_secs, request_timeout)
            .await
            .map_err(|e| call_error(e, &url, "grant session lease"))?;
        let granted = lease.ttl;
        let (tx, rx) = watch::channel(Some(lease.clone()));
        let task_closed = closed.clone();
        let tracker = Arc::new(SessionTracker::new());
        {
            // `Session::expire`: revoke the lease in use, as the server does
            // when it expires; the keep-alive task then grants the next one.
            let cluster = Arc::downgrade(&cluster);
            let current = rx.clone();
            let url = url.clone();
            tracker.set_expirer(Arc::new(move || {
                let cluster = cluster.upgrade();
                let lease = current.borrow().clone();
                let url = url.clone();
                Box::pin(async move {
                    let (Some(cluster), Some(lease)) = (cluster, lease) else {
                        return Ok(());
                    };
                    revoke(&cluster, lease.id, request_timeout)
                        .await
                        .map_err(|e| call_error(e, &url, "revoke the session lease"))
                })
            }));
        }
        let publish = Publish {
            current: tx,
            views: CloseOnDrop(tracker.clone()),
        };
        tasks.spawn(async move {
            run(
                cluster,
                publish,
                lease,
                sent,
                ttl_secs,
                request_timeout,
                task_closed,
            )
            .await;
        });
        Ok(Session {
            current: rx,
            ttl: granted,
            closed,
            wait: request_timeout,
            url,
            tracker,
        })
    }

    /// The user's view of the session ([`crate::Store::session`]).
    pub(crate) fn view(&self) -> crate::session::Session {
        self.tracker.session()
    }

    /// The TTL the server granted the session lease.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The current lease, lost or not (for `close`).
    pub(crate) fn current(&self) -> Option<Arc<Lease>> {
        self.current.borrow().clone()
    }

    /// A live lease, waiting (up to the request timeout) for a new one if the
    /// last was lost.
    pub(crate) async fn lease(&self) -> Result<Arc<Lease>> {
        if let Some(lease) = self.current.borrow().as_ref() {
            if !lease.lost.is_cancelled() {
                return Ok(lease.clone());
            }
        }
        let mut rx = self.current.clone();
        let wait = async {
            loop {
                if let Some(lease) = rx.borrow_and_update().as_ref() {
                    if !lease.lost.is_cancelled() {
                        return Some(lease.clone());
                    }
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::select! {
            biased;
            _ = self.closed.cancelled() => Err(self.closed_error()),
            outcome = tokio::time::timeout(self.wait, wait) => match outcome {
                Ok(Some(lease)) => Ok(lease),
                Ok(None) => Err(self.closed_error()),
                Err(_) => Err(Error::Timeout {
                    operation: "renew the session lease",
                    target: self.url.clone(),
                    after: self.wait,
                }),
            },
        }
    }

    /// Tells the session that a request found `lease` missing on the server.
    pub(crate) fn lease_gone(&self, lease: &Lease) {
        tracing::info!(
            lease = lease.id,
            "etcd session lease not found; renewing the session"
        );
        lease.lost.cancel();
    }

    fn closed_error(&self) -> Error {
        Error::Closed {
            url: self.url.clone(),
        }
    }
}

/// Maps a failed session call.
pub(crate) fn call_error(e: CallError, url: &str, operation: &'static str) -> Error {
    match e {
        CallError::Client(e) => error::map(e, url, url),
        CallError::Timeout(after) => Error::Timeout {
            operation,
            target: url.to_owned(),
            after,
        },
        CallError::Aborted(reason) => Error::Backend {
            backend: error::BACKEND,
            target: format!("{operation} at {url}"),
            source: reason.into(),
        },
    }
}

/// Grants a lease; returns it and when the request was sent.
async fn grant(
    cluster: &Cluster,
    ttl_secs: i64,
    timeout: Duration,
) -> std::result::Result<(Arc<Lease>, Instant), CallError> {
    let sent = Instant::now();
    let response = cluster
        .call(timeout, true, |node| {
            let mut lease = node.lease.clone();
            async move { lease.grant(ttl_secs, None).await }
        })
        .await?;
    let ttl = u64::try_from(response.ttl()).unwrap_or(0).max(1);
    Ok((
        Arc::new(Lease {
            id: response.id(),
            ttl: Duration::from_secs(ttl),
            lost: CancellationToken::new(),
        }),
        sent,
    ))
}

/// Revokes a lease, best effort.
pub(crate) async fn revoke(
    cluster: &Cluster,
    id: i64,
    timeout: Duration,
) -> std::result::Result<(), CallError> {
    let outcome = cluster
        .call(timeout, true, |node| {
            let mut lease = node.lease.clone();
            async move { lease.revoke(id).await }
        })
        .await;
    match outcome {
        Ok(_) => Ok(()),
        // Already gone: what we wanted.
        Err(e) if e.kind() == Kind::LeaseNotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The session task: keeps the current lease alive, replaces it when lost.
/// Where the session task reports: the lease in use, and the user's views
/// (closed when the task ends).
struct Publish {
    current: watch::Sender<Option<Arc<Lease>>>,
    views: CloseOnDrop,
}

async fn run(
    cluster: Arc<Cluster>,
    publish: Publish,
    mut lease: Arc<Lease>,
    mut confirmed: Instant,
    ttl_secs: i64,
    request_timeout: Duration,
    closed: CancellationToken,
) {
    loop {
        let end = keep_alive(&cluster, &lease, confirmed, request_timeout, &closed).await;
        lease.lost.cancel();
        if end == End::Closed || closed.is_cancelled() {
            // `close` revokes the lease itself.
            return;
        }
        match end {
            End::Deadline => tracing::warn!(
                lease = lease.id,
                "no etcd keep-alive confirmed before the session deadline: session lost"
            ),
            _ => tracing::warn!(lease = lease.id, "etcd session lease expired: session lost"),
        }
        publish.current.send_replace(None);

        let mut backoff = Backoff::default();
        let (next, sent) = loop {
            tokio::select! {
                biased;
                _ = closed.cancelled() => return,
                granted = grant(&cluster, ttl_secs, request_timeout) => match granted {
                    Ok(granted) => break granted,
                    Err(error) => {
                        tracing::debug!(?error, "could not grant a new etcd session lease");
                        tokio::select! {
                            _ = closed.cancelled() => return,
                            _ = sleep(backoff.next_delay()) => {}
                        }
                    }
                },
            }
        };
        if closed.is_cancelled() {
            let _ = revoke(&cluster, next.id, request_timeout).await;
            return;
        }
        tracing::info!(lease = next.id, "new etcd session lease granted");
        publish.current.send_replace(Some(next.clone()));
        publish.views.0.replaced();
        if end == End::Deadline {
            // It may still be alive on the server, holding keys we reported
            // as lost: make sure it is not.
            if let Err(error) = revoke(&cluster, lease.id, request_timeout).await {
                tracing::debug!(?error, lease = lease.id, "could not revoke the lost lease");
            }
        }
        lease = next;
        confirmed = sent;
    }
}

type KeepAlive = (LeaseKeeper, LeaseKeepAliveStream, usize);

/// Keeps `lease` alive until it is lost or the store closes. `confirmed` is
/// when the last confirmed keep-alive (or the grant) was sent.
async fn keep_alive(
    cluster: &Cluster,
    lease: &Lease,
    confirmed: Instant,
    request_timeout: Duration,
    closed: &CancellationToken,
) -> End {
    let renewal = Renewal::new(lease.ttl);
    let mut deadline = renewal.deadline(confirmed);
    let mut next_send = renewal.next(confirmed);
    let mut stream: Option<KeepAlive> = None;
    // Send times of keep-alives not answered yet, oldest first.
    let mut in_flight: VecDeque<Instant> = VecDeque::new();
    let mut backoff = Backoff::default();

    loop {
        let Some((keeper, responses, index)) = stream.as_mut() else {
            // (Re)open the stream; opening sends a keep-alive and waits for
            // its answer.
            let sent = Instant::now();
            let index = cluster.active();
            let open = async {
                let node = cluster.node(index).await?;
                node.lease.clone().keep_alive(lease.id).await
            };
            tokio::select! {
                biased;
                _ = closed.cancelled() => return End::Closed,
                _ = lease.lost.cancelled() => return End::Gone,
                _ = sleep_until(deadline) => return End::Deadline,
                opened = tokio::time::timeout(request_timeout, open) => match opened {
                    Ok(Ok((keeper, responses))) => {
                        deadline = renewal.deadline(sent);
                        next_send = renewal.next(sent);
                        in_flight.clear();
                        backoff.reset();
                        stream = Some((keeper, responses, index));
                    }
                    Ok(Err(e)) if error::kind(&e) == Kind::LeaseNotFound => return End::Expired,
                    outcome => {
                        tracing::debug!(?outcome, "etcd keep-alive stream could not be opened");
                        cluster.failed(index);
                        tokio::select! {
                            _ = closed.cancelled() => return End::Closed,
                            _ = lease.lost.cancelled() => return End::Gone,
                            _ = sleep_until(deadline) => return End::Deadline,
                            _ = sleep(backoff.next_delay()) => {}
                        }
                    }
                },
            }
            continue;
        };
        let index = *index;
        let step = tokio::select! {
            biased;
            _ = closed.cancelled() => return End::Closed,
            _ = lease.lost.cancelled() => return End::Gone,
            _ = sleep_until(deadline) => return End::Deadline,
            answer = responses.message() => Step::Answer(answer),
            _ = sleep_until(next_send) => Step::Send,
        };
        match step {
            Step::Answer(Ok(Some(response))) => {
                let sent = in_flight.pop_front();
                if response.ttl() <= 0 {
                    return End::Expired;
                }
                if let Some(sent) = sent {
                    let ttl = Duration::from_secs(u64::try_from(response.ttl()).unwrap_or(1));
                    deadline = deadline.max(Renewal::new(ttl).deadline(sent));
                }
            }
            Step::Answer(answer) => {
                tracing::debug!(?answer, "etcd keep-alive stream broke; reopening");
                cluster.failed(index);
                stream = None;
            }
            Step::Send => {
                in_flight.push_back(Instant::now());
                next_send = renewal.next(Instant::now());
                if keeper.keep_alive().await.is_err() {
                    cluster.failed(index);
                    stream = None;
                }
            }
        }
    }
}

enum Step {
    Answer(std::result::Result<Option<etcd_client::LeaseKeepAliveResponse>, etcd_client::Error>),
    Send,
}
