//! The handle's session: its view, and a forced loss (`Session::expire`)
//! that every backend must report as a replacement, with the session's
//! ephemeral keys gone and its locks lost.

use std::sync::Arc;
use std::time::Duration;

use anykv::{Error, LockOptions, PutOptions, Store, StoreExt};

use crate::harness::{eventually, CaseResult, Ctx, Done};

crate::cases::cases!("session":
    a_new_handle_starts_at_generation_one_and_views_agree,
    an_expired_session_is_reported_replaced_and_its_ephemeral_keys_go,
    an_expired_session_with_open_watches_is_replaced_and_its_ephemeral_keys_go,
    ephemeral_keys_written_again_after_a_replacement_live_on,
    a_call_polled_once_and_held_does_not_hold_up_the_next_session,
    an_expired_session_reports_its_locks_lost_and_frees_them,
    closing_the_handle_ends_every_view,
);

/// How long a backend may take to notice its own session's end and open the
/// next: its session TTL and slack, plus generous room for a loaded machine.
fn bound(cx_caps: &anykv::Capabilities) -> Duration {
    cx_caps
        .session_ttl
        .saturating_add(cx_caps.session_slack)
        .saturating_add(Duration::from_secs(10))
}

async fn a_new_handle_starts_at_generation_one_and_views_agree(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let a = store.session();
    let b = store.session();
    assert_eq!(a.generation(), 1);
    assert_eq!(b.generation(), 1);
    assert!(!a.is_closed());
    Ok(Done::Passed)
}

/// Expires `owner`'s session; checks the replacement is reported with a
/// higher generation and the ephemeral key `svc/me` goes, as `other` sees
/// it. `Some` (not applicable) if the backend cannot expire a session.
async fn expire_and_see_svc_me_go(
    owner: &Arc<dyn Store>,
    other: &Arc<dyn Store>,
    bound: Duration,
) -> Result<Option<Done>, Box<dyn std::error::Error + Send + Sync>> {
    let mut session = owner.session();
    let before = session.generation();
    match session.expire().await {
        Err(Error::Unsupported { .. }) => {
            return Ok(Some(Done::NotApplicable(
                "this backend cannot expire a session".into(),
            )))
        }
        other => other?,
    }
    let replaced = tokio::time::timeout(bound, session.replaced())
        .await
        .map_err(|_| format!("no replacement reported within {bound:?}"))?;
    let generation = replaced.ok_or("the view ended instead of reporting a replacement")?;
    assert!(generation > before, "{generation} after {before}");
    eventually(bound, "the old session's ephemeral key to go", || async {
        matches!(other.get_opt("svc/me").await, Ok(None))
    })
    .await;
    Ok(None)
}

async fn an_expired_session_is_reported_replaced_and_its_ephemeral_keys_go(cx: Ctx) -> CaseResult {
    let owner = cx.store().await;
    let other = cx.store().await;
    let bound = bound(&owner.capabilities());
    owner.put("svc/me", "here", PutOptions::ephemeral()).await?;
    owner.put("plain", "stays", PutOptions::new()).await?;
    if let Some(done) = expire_and_see_svc_me_go(&owner, &other, bound).await? {
        return Ok(done);
    }
    assert_eq!(other.get("plain").await?.value, "stays");
    Ok(Done::Passed)
}

/// The same with watches of the handle open across the expiry: whatever a
/// watch holds on to, the session must still end on the server.
async fn an_expired_session_with_open_watches_is_replaced_and_its_ephemeral_keys_go(
    cx: Ctx,
) -> CaseResult {
    let owner = cx.store().await;
    let other = cx.store().await;
    let bound = bound(&owner.capabilities());
    owner.put("svc/me", "here", PutOptions::ephemeral()).await?;
    let _key_watch = owner.watch("svc/me").await?;
    let _tree_watch = owner.watch_tree("svc").await?;
    if let Some(done) = expire_and_see_svc_me_go(&owner, &other, bound).await? {
        return Ok(done);
    }
    // The handle goes on: a write after the replacement is served at once.
    tokio::time::timeout(
        Duration::from_secs(10),
        owner.put("svc/me", "again", PutOptions::ephemeral()),
    )
    .await
    .map_err(|_| "a write after the replacement hung")??;
    Ok(Done::Passed)
}

async fn ephemeral_keys_written_again_after_a_replacement_live_on(cx: Ctx) -> CaseResult {
    let owner = cx.store().await;
    let other = cx.store().await;
    let caps = owner.capabilities();
    let bound = bound(&caps);
    owner.put("svc/me", "v1", PutOptions::ephemeral()).await?;
    let mut session = owner.session();
    match session.expire().await {
        Err(Error::Unsupported { .. }) => {
            return Ok(Done::NotApplicable(
                "this backend cannot expire a session".into(),
            ))
        }
        other => other?,
    }
    tokio::time::timeout(bound, session.replaced())
        .await
        .map_err(|_| format!("no replacement reported within {bound:?}"))?
        .ok_or("the view ended")?;
    eventually(bound, "the old session's ephemeral key to go", || async {
        matches!(other.get_opt("svc/me").await, Ok(None))
    })
    .await;
    // What a registration does on the signal: write its keys again.
    owner.put("svc/me", "v2", PutOptions::ephemeral()).await?;
    tokio::time::sleep(caps.session_ttl + caps.session_slack + Duration::from_millis(500)).await;
    assert_eq!(other.get("svc/me").await?.value, "v2");
    owner.close().await?;
    eventually(bound, "the new session's key to go on close", || async {
        matches!(other.get_opt("svc/me").await, Ok(None))
    })
    .await;
    Ok(Done::Passed)
}

/// A call that started opening the next session and is then held without
/// being polled (a future kept across a `select!` loop, a stream left
/// unread) must not hold up other calls of the handle: the session is
/// opened whoever waits for it.
async fn a_call_polled_once_and_held_does_not_hold_up_the_next_session(cx: Ctx) -> CaseResult {
    let owner = cx.store().await;
    let other = cx.store().await;
    let bound = bound(&owner.capabilities());
    owner.put("svc/me", "here", PutOptions::ephemeral()).await?;
    if let Some(done) = expire_and_see_svc_me_go(&owner, &other, bound).await? {
        return Ok(done);
    }
    // Polled once: it starts whatever the next session needs, then waits.
    let mut held = Box::pin(owner.put("svc/held", "1", PutOptions::ephemeral()));
    let first = futures::FutureExt::now_or_never(held.as_mut());
    let second = tokio::time::timeout(
        Duration::from_secs(10),
        owner.put("svc/me", "again", PutOptions::ephemeral()),
    )
    .await
    .map_err(|_| "a write hung behind a call that was polled once and held")?;
    second?;
    match first {
        Some(done) => drop(done?),
        None => drop(
            tokio::time::timeout(Duration::from_secs(10), held)
                .await
                .map_err(|_| "the held call never completed")??,
        ),
    }
    assert_eq!(other.get("svc/held").await?.value, "1");
    assert_eq!(other.get("svc/me").await?.value, "again");
    Ok(Done::Passed)
}

async fn an_expired_session_reports_its_locks_lost_and_frees_them(cx: Ctx) -> CaseResult {
    let owner = cx.store().await;
    let waiter = cx.store().await;
    let bound = bound(&owner.capabilities());
    let lock = owner.new_lock("lock", LockOptions::new("owner")).await?;
    let guard = lock.lock().await?;
    let session = owner.session();
    match session.expire().await {
        Err(Error::Unsupported { .. }) => {
            return Ok(Done::NotApplicable(
                "this backend cannot expire a session".into(),
            ))
        }
        other => other?,
    }
    tokio::time::timeout(bound, guard.lost())
        .await
        .map_err(|_| format!("the guard did not report the lock lost within {bound:?}"))?;
    let theirs = waiter.new_lock("lock", LockOptions::new("waiter")).await?;
    let taken = tokio::time::timeout(bound, theirs.lock())
        .await
        .map_err(|_| format!("the lock was not free within {bound:?}"))??;
    assert!(taken.fencing_token() > guard.fencing_token());
    assert!(matches!(
        guard.unlock().await,
        Err(Error::LockLost { .. }) | Ok(())
    ));
    taken.unlock().await?;
    Ok(Done::Passed)
}

async fn closing_the_handle_ends_every_view(cx: Ctx) -> CaseResult {
    let store = cx.store_uncached().await;
    let mut session = store.session();
    store.close().await?;
    let ended = tokio::time::timeout(Duration::from_secs(10), session.replaced())
        .await
        .map_err(|_| "the view did not end within 10 s of close")?;
    assert_eq!(ended, None);
    assert!(session.is_closed());
    Ok(Done::Passed)
}
