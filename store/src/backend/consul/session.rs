//! Consul sessions: the handle's own (renewed, for ephemeral keys and locks)
//! and the per-key sessions behind TTL keys (renewed only by rewrites of
//! their key, destroyed by the write that takes the key off them).

use crate::session::SessionTracker;
use crate::task::{Attempt, SharedAttempt, Tasks};
use crate::time::{later, Renewal};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use serde::Serialize;

use super::error::ConsulError;
use super::http::{Http, SessionInfo};
use crate::error::{Error, Result};

/// One live session of the handle.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: String,
    /// Cancelled when the session is gone or may be gone: Consul said so, no
    /// renewal was confirmed within the TTL, or the handle was closed (it is
    /// a child of the handle's `closed` token). Lock guards hang their
    /// `lost` tokens below it; lock releases retry until it is cancelled.
    pub(crate) lost: CancellationToken,
}

struct Live {
    session: Arc<Session>,
    /// Stops the renewal task when this session is replaced or dropped.
    _renewal: DropGuard,
}

/// The handle's session, created on first use and renewed in the background
/// until the handle closes. If it is lost, the next use creates a new one.
///
/// The creation runs as a task of its own, shared by every caller that needs
/// it: a call that started it and is then held without being polled (a
/// future kept across a `select!` loop) holds up nobody.
pub(crate) struct Sessions {
    http: Http,
    url: String,
    ttl: Duration,
    lock_delay: Duration,
    closed: CancellationToken,
    current: Arc<Mutex<Option<Live>>>,
    /// The creation under way, if one is.
    creating: SharedAttempt,
    /// Reports each session lost while the handle is open: the next use
    /// then creates its successor.
    tracker: Arc<SessionTracker>,
    /// The handle's background tasks (renewals, loss reports).
    tasks: Tasks,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("ttl", &self.ttl)
            .field("lock_delay", &self.lock_delay)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    pub(crate) fn new(
        http: Http,
        url: String,
        ttl: Duration,
        lock_delay: Duration,
        closed: CancellationToken,
        tasks: Tasks,
    ) -> Self {
        Sessions {
            tasks,
            http,
            url,
            ttl,
            lock_delay,
            closed,
            current: Arc::new(Mutex::new(None)),
            creating: SharedAttempt::default(),
            tracker: Arc::new(SessionTracker::new()),
        }
        .with_expirer()
    }

    /// `Session::expire`: destroy the live session, as Consul does when its
    /// TTL runs out; the next use creates the next one.
    fn with_expirer(self) -> Self {
        let current = Arc::downgrade(&self.current);
        let http = self.http.clone();
        let url = self.url.clone();
        self.tracker.set_expirer(Arc::new(move || {
            let current = current.clone();
            let http = http.clone();
            let url = url.clone();
            Box::pin(async move {
                let Some(current) = current.upgrade() else {
                    return Ok(());
                };
                let live = lock(&current).as_ref().map(|l| l.session.clone());
                let Some(session) = live else {
                    return Ok(());
                };
                http.session_destroy(&session.id)
                    .await
                    .map_err(|e| e.into_error("destroy session", &url, &url))?;
                session.lost.cancel();
                Ok(())
            })
        }));
        self
    }

    /// The user's view ([`crate::Store::session`]). Sessions are created on
    /// first use, so a loss is reported as a replacement at once: the next
    /// write is bound to a new session.
    pub(crate) fn view(&self) -> crate::session::Session {
        self.tracker.session()
    }

    /// The handle closed: every view learns it.
    pub(crate) fn close_views(&self) {
        self.tracker.close();
    }

    /// The handle's background tasks.
    pub(crate) fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// The live session, created (and its renewal started) if there is none.
    pub(crate) async fn get(&self) -> Result<Arc<Session>> {
        loop {
            if self.closed.is_cancelled() {
                return Err(Error::Closed {
                    url: self.url.clone(),
                });
            }
            if let Some(session) = self.live() {
                return Ok(session);
            }
            let attempt = self.attempt();
            tokio::select! {
                created = attempt => created.map_err(|e| Error::copy_of(&e))?,
                _ = self.closed.cancelled() => {}
            }
        }
    }

    fn live(&self) -> Option<Arc<Session>> {
        lock(&self.current)
            .as_ref()
            .filter(|live| !live.session.lost.is_cancelled())
            .map(|live| live.session.clone())
    }

    /// The creation under way, or a new one.
    fn attempt(&self) -> Attempt {
        self.creating.join(
            &self.tasks,
            &self.url,
            || self.live().is_some(),
            || {
                Create {
                    http: self.http.clone(),
                    url: self.url.clone(),
                    ttl: self.ttl,
                    lock_delay: self.lock_delay,
                    closed: self.closed.clone(),
                    current: Arc::downgrade(&self.current),
                    tracker: self.tracker.clone(),
                    tasks: self.tasks.clone(),
                }
                .run()
            },
        )
    }

    /// Marks `session` lost (Consul no longer knows it); the next
    /// [`Sessions::get`] creates a new one.
    pub(crate) fn invalidate(&self, session: &Session) {
        tracing::info!(session = %session.id, "consul session is gone; a new one will be created");
        session.lost.cancel();
    }

    /// Takes the live session out (for `close`), stopping its renewal.
    pub(crate) async fn take(&self) -> Option<Arc<Session>> {
        lock(&self.current).take().map(|live| live.session.clone())
    }

    /// Like [`Sessions::take`] but never waits (for `Drop`).
    pub(crate) fn take_now(&self) -> Option<Arc<Session>> {
        lock(&self.current).take().map(|live| live.session.clone())
    }
}

/// The guarded values are plain `Option`s that a panic cannot leave
/// half-written, so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The task that creates the handle's next session, starts its renewal and
/// makes it the current one.
struct Create {
    http: Http,
    url: String,
    ttl: Duration,
    lock_delay: Duration,
    closed: CancellationToken,
    current: Weak<Mutex<Option<Live>>>,
    tracker: Arc<SessionTracker>,
    tasks: Tasks,
}

impl Create {
    async fn run(self) -> Result<(), Arc<Error>> {
        let closed = || {
            Arc::new(Error::Closed {
                url: self.url.clone(),
            })
        };
        // The deadline counts from before the request: Consul starts the
        // TTL when it creates the session, which is no earlier than this.
        let sent = Instant::now();
        let body = session_body("anykv", self.ttl, self.lock_delay);
        let created = tokio::select! {
            created = self.http.session_create(&body) => created,
            _ = self.closed.cancelled() => return Err(closed()),
        };
        let id =
            created.map_err(|e| Arc::new(e.into_error("create session", &self.url, &self.url)))?;
        let session = Arc::new(Session {
            id,
            // Closing the handle ends its session.
            lost: self.closed.child_token(),
        });
        tracing::debug!(session = %session.id, ttl = ?self.ttl, "consul session created");
        let Some(current) = self.current.upgrade() else {
            return Err(closed());
        };
        let mut current = lock(&current);
        if self.closed.is_cancelled() {
            return Err(closed());
        }
        let stop = CancellationToken::new();
        self.tasks.spawn(renew(
            self.http.clone(),
            session.clone(),
            self.ttl,
            sent,
            stop.clone(),
            self.closed.clone(),
        ));
        // Report the session's loss to the views, unless the handle closed.
        let lost = session.lost.clone();
        let closed_token = self.closed.clone();
        let tracker = self.tracker.clone();
        self.tasks.spawn(async move {
            lost.cancelled().await;
            if !closed_token.is_cancelled() {
                tracker.replaced();
            }
        });
        // Replacing the lost one stops its renewal.
        *current = Some(Live {
            session,
            _renewal: stop.drop_guard(),
        });
        Ok(())
    }
}

/// The JSON body of `session/create`, as [`session_body`] fills it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SessionRequest<'a> {
    name: &'a str,
    /// A Go duration: `"10000ms"`.
    #[serde(rename = "TTL")]
    ttl: String,
    behavior: &'static str,
    lock_delay: String,
    checks: [&'static str; 0],
    node_checks: [&'static str; 0],
}

/// The body of `session/create`: keys die with the session
/// (behavior=delete), and the session lives `ttl` past its last renewal.
///
/// No health checks: by default Consul binds a session to the `serfHealth`
/// check of the agent that created it, and invalidates it (freeing its
/// locks) the moment that agent is seen failed — a few seconds after it
/// dies, stops or is cut off, long before the holder, unable to renew, is
/// told at its TTL deadline. A TTL-only session ends only by its TTL (or by
/// being destroyed), which the holder's deadline always precedes. Consul
/// 1.7+ reads the empty `NodeChecks`; older ones read `Checks` (1.8 takes
/// either).
pub(crate) fn session_body(name: &str, ttl: Duration, lock_delay: Duration) -> SessionRequest<'_> {
    SessionRequest {
        name,
        ttl: go_duration(ttl),
        behavior: "delete",
        lock_delay: go_duration(lock_delay),
        checks: [],
        node_checks: [],
    }
}

/// The name of every per-key TTL session (the handle's own is `anykv`).
pub(crate) const TTL_SESSION_NAME: &str = "anykv-ttl";

/// Creates the session of a TTL key: never renewed by a task, no
/// lock-delay, its key deleted when Consul invalidates it. It is only ever
/// bound to the one key it was created for; a rewrite of that key with the
/// same TTL renews it (see [`is_ttl_session`]), any other rewrite destroys
/// it once the key is off it.
pub(crate) async fn create_ttl_session(http: &Http, ttl: Duration) -> Result<String, ConsulError> {
    http.session_create(&session_body(TTL_SESSION_NAME, ttl, Duration::ZERO))
        .await
}

/// True if `info` describes a per-key TTL session anykv created, and (with
/// `ttl`) one created with that TTL.
pub(crate) fn is_ttl_session(info: &SessionInfo, ttl: Option<Duration>) -> bool {
    info.name == TTL_SESSION_NAME
        && info.behavior == "delete"
        && ttl.is_none_or(|ttl| info.ttl == go_duration(ttl))
}

/// A duration as anykv sends it to Consul (`"10000ms"`), and as Consul
/// hands it back.
fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Renews `session` on the shared [`Renewal`] schedule. Declares it lost
/// when Consul no longer knows it, or at the renewal deadline after the last
/// confirmed renewal was *sent*: Consul cannot have invalidated the session
/// (nor handed its locks to anyone) before that deadline, so a holder told
/// "lost" at the deadline stops before anyone else can start.
async fn renew(
    http: Http,
    session: Arc<Session>,
    ttl: Duration,
    mut confirmed: Instant,
    stop: CancellationToken,
    closed: CancellationToken,
) {
    let renewal = Renewal::new(ttl);
    let retry = (ttl / 10).max(Duration::from_millis(250));
    let mut next = renewal.next(confirmed);
    loop {
        let deadline = renewal.deadline(confirmed);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = closed.cancelled() => return,
            _ = session.lost.cancelled() => return,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(
                    session = %session.id, ?ttl,
                    "no session renewal confirmed within session_ttl: its ephemeral keys and locks may be gone"
                );
                session.lost.cancel();
                // Make the server agree with what lock holders were just told.
                if let Err(error) = http.session_destroy(&session.id).await {
                    tracing::debug!(session = %session.id, %error, "destroying the lapsed session failed");
                }
                return;
            }
            _ = tokio::time::sleep_until(next) => {}
        }
        let sent = Instant::now();
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            _ = closed.cancelled() => return,
            // The loop head then handles the deadline.
            _ = tokio::time::sleep_until(deadline) => continue,
            outcome = http.session_renew(&session.id) => outcome,
        };
        match outcome {
            Ok(true) => {
                confirmed = sent;
                next = renewal.next(sent);
            }
            Ok(false) => {
                tracing::warn!(session = %session.id, "consul session expired or was destroyed on the server");
                session.lost.cancel();
                return;
            }
            Err(error) => {
                tracing::debug!(session = %session.id, %error, "session renewal failed; retrying");
                next = later(Instant::now(), retry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_body_is_ttl_only_with_delete_behaviour_and_millisecond_durations() {
        let body = session_body(
            "anykv",
            Duration::from_secs(10),
            Duration::from_millis(1500),
        );
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"Name":"anykv","TTL":"10000ms","Behavior":"delete","LockDelay":"1500ms","Checks":[],"NodeChecks":[]}"#
        );
    }

    #[test]
    fn only_anykv_ttl_sessions_with_delete_behaviour_are_ttl_sessions() {
        let info = |name: &str, ttl: &str, behavior: &str| SessionInfo {
            name: name.into(),
            ttl: ttl.into(),
            behavior: behavior.into(),
        };
        let ten = Some(Duration::from_secs(10));
        assert!(is_ttl_session(&info("anykv-ttl", "10000ms", "delete"), ten));
        assert!(is_ttl_session(
            &info("anykv-ttl", "10000ms", "delete"),
            None
        ));
        assert!(!is_ttl_session(&info("anykv-ttl", "10s", "delete"), ten));
        assert!(!is_ttl_session(
            &info("anykv-ttl", "20000ms", "delete"),
            ten
        ));
        assert!(!is_ttl_session(&info("anykv", "10000ms", "delete"), None));
        assert!(!is_ttl_session(
            &info("anykv-ttl", "10000ms", "release"),
            None
        ));
    }
}
