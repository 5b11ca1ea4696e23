//! The handle's ZooKeeper session, swapped for a new one after expiry.
//!
//! A ZooKeeper session that expired is dead for good, but the store handle is
//! not: the next operation opens a new session. Whatever the old session
//! owned (ephemeral keys, locks) died with it on the server and is *not*
//! recreated; lock guards of the old session report [`LockGuard::lost`].
//!
//! Only [`Inner`] holds the [`zk::Client`] of the current session strongly.
//! Watch streams, lock monitors and lock guards keep weak references, so
//! [`Inner::close`] (or dropping the last store handle) really closes the
//! session, which makes the server delete its ephemeral znodes at once.
//!
//! [`LockGuard::lost`]: crate::LockGuard::lost

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::session::SessionTracker;
use crate::task::{Attempt, SharedAttempt, Tasks};

use super::config::Config;
use super::error::{is_session_end, map};

/// One ZooKeeper session.
pub(super) struct Session {
    /// The client; the session closes when the last clone is dropped.
    pub client: zk::Client,
    /// The session id (ephemeral owner of the session's znodes).
    pub id: i64,
    /// The negotiated session timeout.
    pub timeout: Duration,
}

impl Session {
    /// True once the session expired, failed authentication or was closed.
    pub fn is_ended(&self) -> bool {
        self.client.state().is_terminated()
    }
}

/// Why an operation failed: a client error still to be mapped (and maybe
/// retried on a new session), or a final anykv error.
#[derive(Debug)]
pub(super) enum Fail {
    Zk(zk::Error),
    Done(Error),
}

impl From<zk::Error> for Fail {
    fn from(error: zk::Error) -> Self {
        Fail::Zk(error)
    }
}

impl From<Error> for Fail {
    fn from(error: Error) -> Self {
        Fail::Done(error)
    }
}

/// The shared state of a store handle.
pub(super) struct Inner {
    pub cfg: Config,
    /// `digest` identities own what they create; otherwise everything is open.
    pub acls: zk::Acls<'static>,
    current: Mutex<Option<Arc<Session>>>,
    /// The attempt to open the next session, while one runs (see
    /// [`Inner::session`]).
    connecting: SharedAttempt,
    /// The handle itself, for the task that opens the next session.
    me: Weak<Inner>,
    /// Cancelled by `close` or when the last handle is dropped.
    pub closed: CancellationToken,
    /// Negotiated session timeout of the latest session, in milliseconds.
    negotiated_ms: AtomicU64,
    /// Set once the warning about a session timeout too short for the
    /// ensemble's `tickTime` was logged.
    pub lease_warned: AtomicBool,
    /// Reports each session that ended while the handle is open (the next
    /// operation opens its successor).
    tracker: Arc<SessionTracker>,
    /// The handle's background tasks.
    pub tasks: Tasks,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closed.cancel();
        self.tracker.close();
    }
}

impl Inner {
    /// Connects the first session; fails if the servers cannot be reached.
    pub async fn open(cfg: Config) -> Result<Arc<Inner>> {
        let acls = if cfg.digest.is_some() {
            zk::Acls::creator_all()
        } else {
            zk::Acls::anyone_all()
        };
        let tasks = Tasks::current(&cfg.redacted)?;
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            tasks,
            acls,
            current: Mutex::new(None),
            connecting: SharedAttempt::default(),
            closed: CancellationToken::new(),
            negotiated_ms: AtomicU64::new(duration_ms(cfg.session_timeout)),
            lease_warned: AtomicBool::new(false),
            tracker: Arc::new(SessionTracker::new()),
            cfg,
        });
        // `Session::expire`: close the current session (the server deletes
        // its ephemeral znodes, as on expiry); the next use opens another.
        let weak = Arc::downgrade(&inner);
        inner.tracker.set_expirer(Arc::new(move || {
            if let Some(inner) = weak.upgrade() {
                let old = inner.current().take();
                drop(old);
            }
            Box::pin(async { Ok(()) })
        }));
        inner.session().await?;
        Ok(inner)
    }

    /// The redacted URL, for errors.
    pub fn url(&self) -> &str {
        &self.cfg.redacted
    }

    /// The error for calls on a closed handle.
    pub fn closed_error(&self) -> Error {
        Error::Closed {
            url: self.cfg.redacted.clone(),
        }
    }

    /// The negotiated timeout of the latest session.
    pub fn session_timeout(&self) -> Duration {
        Duration::from_millis(self.negotiated_ms.load(Ordering::Relaxed))
    }

    fn current(&self) -> MutexGuard<'_, Option<Arc<Session>>> {
        // The guarded value is a plain `Option<Arc>`; a panic cannot leave it
        // half-written, so a poisoned lock is still usable.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> Option<Arc<Session>> {
        self.current().as_ref().filter(|s| !s.is_ended()).cloned()
    }

    /// The current session, opening a new one if the last one ended.
    ///
    /// The opening runs as a task of its own, shared by every caller that
    /// needs it: a call that started it and is then held without being
    /// polled (a future kept across a `select!` loop, a stream left unread)
    /// holds up nobody.
    pub async fn session(&self) -> Result<Arc<Session>> {
        if self.closed.is_cancelled() {
            return Err(self.closed_error());
        }
        if let Some(session) = self.live() {
            return Ok(session);
        }
        loop {
            let attempt = self.attempt();
            tokio::select! {
                opened = attempt => opened.map_err(|e| Error::copy_of(&e))?,
                _ = self.closed.cancelled() => return Err(self.closed_error()),
            }
            // Opened (or found open); it may have ended already.
            if let Some(session) = self.live() {
                return Ok(session);
            }
            if self.closed.is_cancelled() {
                return Err(self.closed_error());
            }
        }
    }

    /// The attempt to open the next session under way, or a new one.
    fn attempt(&self) -> Attempt {
        self.connecting.join(
            &self.tasks,
            &self.cfg.redacted,
            || self.live().is_some(),
            || open_next(self.me.clone(), self.cfg.redacted.clone()),
        )
    }

    /// Makes `session` the current one (unless the handle closed meanwhile).
    fn install(&self, session: Session) -> Result<()> {
        let session = Arc::new(session);
        let mut current = self.current();
        if self.closed.is_cancelled() {
            return Err(self.closed_error());
        }
        if let Some(old) = current.take() {
            tracing::warn!(
                url = %self.cfg.redacted,
                session = format_args!("{:#x}", old.id),
                state = %old.client.state(),
                "ZooKeeper session ended; its ephemeral keys and locks are gone. Opening a new session",
            );
        }
        self.negotiated_ms
            .store(duration_ms(session.timeout), Ordering::Relaxed);
        *current = Some(session.clone());
        drop(current);
        self.report_end(&session);
        Ok(())
    }

    /// The user's view ([`crate::Store::session`]). Sessions are reopened
    /// on the next use after one ends, so an end is reported as a
    /// replacement at once: the next write is bound to a new session.
    pub fn view(&self) -> crate::session::Session {
        self.tracker.session()
    }

    /// Watches `session` until it ends, then reports it (unless the handle
    /// closed first). The task ends with the session or the handle.
    fn report_end(&self, session: &Session) {
        let mut state = session.client.state_watcher();
        let tracker = self.tracker.clone();
        let closed = self.closed.clone();
        self.tasks.spawn(async move {
            while !state.state().is_terminated() {
                tokio::select! {
                    _ = state.changed() => {}
                    () = closed.cancelled() => return,
                }
            }
            if !closed.is_cancelled() {
                tracker.replaced();
            }
        });
    }

    /// Runs `op` on the current session. If the session turns out to have
    /// ended, `op` runs once more on a new one: a request that failed with
    /// `SessionExpired` was never applied.
    pub async fn run<T, F, Fut>(&self, key: &str, op: F) -> Result<T>
    where
        F: Fn(Arc<Session>) -> Fut,
        Fut: Future<Output = std::result::Result<T, Fail>>,
    {
        let mut retried = false;
        loop {
            let session = self.session().await?;
            match op(session).await {
                Ok(value) => return Ok(value),
                Err(Fail::Done(error)) => return Err(error),
                Err(Fail::Zk(error)) if is_session_end(&error) && !retried => {
                    retried = true;
                    if self.closed.is_cancelled() {
                        return Err(self.closed_error());
                    }
                }
                Err(Fail::Zk(zk::Error::ClientClosed)) if self.closed.is_cancelled() => {
                    return Err(self.closed_error())
                }
                Err(Fail::Zk(error)) => return Err(map(error, key, &self.cfg.redacted)),
            }
        }
    }

    /// Ends the session: the server deletes its ephemeral znodes at once.
    /// Waits (at most `connect_timeout`) until the close went through.
    pub async fn close(&self) {
        self.closed.cancel();
        self.tracker.close();
        let Some(session) = self.current().take() else {
            return;
        };
        let mut state = session.client.state_watcher();
        let id = session.id;
        // Dropping the last client sends CloseSession; in-flight calls may
        // hold a clone for a moment longer.
        drop(session);
        let closed = async {
            loop {
                if state.state().is_terminated() {
                    return;
                }
                state.changed().await;
            }
        };
        if tokio::time::timeout(self.cfg.connect_timeout, closed)
            .await
            .is_err()
        {
            tracing::warn!(
                url = %self.cfg.redacted,
                session = format_args!("{id:#x}"),
                "ZooKeeper session did not close in time; the server will expire it",
            );
        }
    }
}

/// Opens a session with the handle's configuration.
async fn connect(cfg: &Config) -> Result<Session> {
    let mut connector = zk::Client::connector()
        .with_session_timeout(cfg.session_timeout)
        .with_fail_eagerly();
    if let Some(digest) = &cfg.digest {
        connector = connector.with_auth("digest", digest.as_bytes());
    }
    let client =
        match tokio::time::timeout(cfg.connect_timeout, connector.connect(&cfg.connect_string))
            .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => return Err(map(error, "", &cfg.redacted)),
            Err(_) => {
                return Err(Error::Timeout {
                    operation: "connecting to ZooKeeper",
                    target: cfg.redacted.clone(),
                    after: cfg.connect_timeout,
                })
            }
        };
    let session = Session {
        id: client.session_id().0,
        timeout: client.session_timeout(),
        client,
    };
    tracing::debug!(
        url = %cfg.redacted,
        session = format_args!("{:#x}", session.id),
        timeout = ?session.timeout,
        "ZooKeeper session established",
    );
    Ok(session)
}

/// The task that opens the next session of the handle `me` and makes it the
/// current one. It holds the handle only weakly while it waits, so dropping
/// the last handle meanwhile still closes it.
async fn open_next(me: Weak<Inner>, url: String) -> std::result::Result<(), Arc<Error>> {
    let closed_error = || Arc::new(Error::Closed { url: url.clone() });
    let Some(inner) = me.upgrade() else {
        return Err(closed_error());
    };
    let cfg = inner.cfg.clone();
    let closed = inner.closed.clone();
    drop(inner);
    let session = tokio::select! {
        s = connect(&cfg) => s.map_err(Arc::new)?,
        _ = closed.cancelled() => return Err(closed_error()),
    };
    match me.upgrade() {
        Some(inner) => inner.install(session).map_err(Arc::new),
        None => Err(closed_error()),
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
