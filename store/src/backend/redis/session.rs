//! The handle's session: ephemeral keys kept alive by a background task.
//!
//! An ephemeral write stores the session id and the session TTL in the key's
//! hash, sets `PEXPIRE session_ttl` and adds the key to the session's set,
//! all in the write script. Every `session_ttl / 3` the refresh task re-arms
//! the expiry of every key the set lists that still belongs to the session
//! (keys rewritten by someone else, or deleted, are dropped from the set).
//! A crashed process stops refreshing, so its keys expire at most
//! `session_ttl` after its last refresh, i.e. within `session_ttl` of the
//! crash. `close()` (or dropping the last clone of the handle) deletes them
//! at once, with change messages, in one script.
//!
//! Lock keys are in the set too (so `close()` releases them), but their
//! expiry belongs to their guard's renewal, not to the session: a guard
//! that is gone stops holding the lock after the lock TTL even if the
//! handle lives on.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::scripts::{COUNTER, DATA_PREFIX, INDEX, SESSION_CLOSE, SESSION_REFRESH};
use super::{int_at, Core};
use crate::error::Result;
use crate::session::CloseOnDrop;
use crate::time::Renewal;

/// Arms the session's liveness marker; the open awaits it before the
/// handle is handed out, so a session lost from then on (its marker gone)
/// is always reported, even one lost before the refresh task first ran.
pub(crate) async fn arm(core: &Core) -> Result<()> {
    refresh(core).await.map(|_| ())
}

/// Starts the refresh task (after [`arm`]); it ends when the store is
/// closed or dropped.
pub(crate) fn spawn_refresh(core: Arc<Core>) -> JoinHandle<()> {
    let every = Renewal::new(core.session_ttl).interval();
    // After a failed refresh, try again sooner: two misses in a row must
    // not let the keys lapse.
    let after_failure = (every / 4).max(Duration::from_millis(50));
    core.tasks.clone().spawn(async move {
        let _views = CloseOnDrop(core.tracker.clone());
        // The marker was armed by the open: from here on its absence means
        // the session's keys may be gone.
        let mut wait = every;
        loop {
            tokio::select! {
                _ = core.closed.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = match refresh(&core).await {
                Ok((kept, dropped, alive)) => {
                    tracing::trace!(session = %core.session_id, kept, dropped, alive, "session refreshed");
                    if !alive {
                        tracing::warn!(url = %core.url, session = %core.session_id,
                            "session lapsed (missed refreshes or the server lost its data): its ephemeral keys may be gone");
                        core.tracker.replaced();
                    }
                    every
                }
                Err(error) => {
                    tracing::warn!(url = %core.url, session = %core.session_id, %error,
                        "session refresh failed; ephemeral keys expire if this persists");
                    after_failure
                }
            };
        }
    })
}

async fn refresh(core: &Core) -> Result<(i64, i64, bool)> {
    let mut cmd = SESSION_REFRESH.cmd();
    let ttl_ms = u64::try_from(core.session_ttl.as_millis()).unwrap_or(u64::MAX);
    cmd.arg(2)
        .arg(&core.session_set)
        .arg(marker(core))
        .arg(&core.session_id)
        .arg(DATA_PREFIX)
        .arg(ttl_ms.max(1));
    let reply = core.eval(&SESSION_REFRESH, &cmd, &core.url).await?;
    match (int_at(&reply, 0), int_at(&reply, 1), int_at(&reply, 2)) {
        (Some(kept), Some(dropped), Some(alive)) => Ok((kept, dropped, alive != 0)),
        _ => Err(core.reply_error(&core.url, &SESSION_REFRESH)),
    }
}

/// The session's liveness marker key.
pub(crate) fn marker(core: &Core) -> String {
    format!("{}:alive", core.session_set)
}

/// Deletes every key the session still owns and its liveness marker. Safe
/// to call more than once.
pub(crate) async fn end(core: &Core) -> Result<()> {
    let mut cmd = SESSION_CLOSE.cmd();
    cmd.arg(4)
        .arg(&core.session_set)
        .arg(COUNTER)
        .arg(INDEX)
        .arg(marker(core))
        .arg(&core.session_id)
        .arg(DATA_PREFIX)
        .arg(&core.channel_prefix)
        .arg(&core.wake_prefix)
        .arg(&core.grant_prefix);
    let reply = core.eval(&SESSION_CLOSE, &cmd, &core.url).await?;
    tracing::debug!(url = %core.url, session = %core.session_id, deleted = ?reply, "session ended");
    Ok(())
}
