//! Ephemeral (session-bound) keys.

use std::time::Duration;

use anykv::PutOptions;
use anykv::StoreExt;

use crate::harness::{eventually, CaseResult, Ctx, Done};

crate::cases::cases!("ephemeral":
    ephemeral_key_is_visible_to_other_handles,
    ephemeral_key_outlives_the_session_ttl_while_its_handle_lives,
    ephemeral_key_goes_at_once_on_close,
    ephemeral_key_goes_when_its_handle_is_dropped,
    ephemeral_key_goes_when_its_process_is_killed,
    other_handles_keys_survive_a_close,
    plain_rewrite_of_an_ephemeral_key_outlives_the_session,
);

async fn ephemeral_key_is_visible_to_other_handles(cx: Ctx) -> CaseResult {
    let owner = cx.store().await;
    let other = cx.store().await;
    owner.put("e", "mine", PutOptions::ephemeral()).await?;
    assert_eq!(other.get("e").await?.value, "mine");
    Ok(Done::Passed)
}

async fn ephemeral_key_outlives_the_session_ttl_while_its_handle_lives(cx: Ctx) -> CaseResult {
    let owner = cx.store().await;
    let caps = owner.capabilities();
    owner.put("e", "kept", PutOptions::ephemeral()).await?;
    // Longer than the session TTL plus its slack: only keep-alive can explain survival.
    tokio::time::sleep(caps.session_ttl + caps.session_slack + Duration::from_millis(500)).await;
    let other = cx.store().await;
    assert_eq!(other.get("e").await?.value, "kept");
    Ok(Done::Passed)
}

async fn ephemeral_key_goes_at_once_on_close(cx: Ctx) -> CaseResult {
    let owner = cx.store().await;
    let other = cx.store().await;
    owner.put("e", "v", PutOptions::ephemeral()).await?;
    owner.close().await?;
    // "At once": the close has returned, so the key is gone for everyone.
    assert!(!other.exists("e").await?);
    Ok(Done::Passed)
}

async fn ephemeral_key_goes_when_its_handle_is_dropped(cx: Ctx) -> CaseResult {
    let other = cx.store().await;
    let caps = other.capabilities();
    {
        // Not through `cx.store()`, which keeps handles for cleanup.
        let owner = cx.store_uncached().await;
        owner.put("e", "v", PutOptions::ephemeral()).await?;
        assert!(other.exists("e").await?);
    }
    let bound = caps.session_ttl + caps.session_slack + Duration::from_secs(2);
    eventually(bound, "ephemeral key of a dropped handle gone", || async {
        matches!(other.exists("e").await, Ok(false))
    })
    .await;
    Ok(Done::Passed)
}

async fn ephemeral_key_goes_when_its_process_is_killed(cx: Ctx) -> CaseResult {
    let observer = cx.store().await;
    let caps = observer.capabilities();
    if !caps.shared_between_processes {
        return Ok(Done::NotApplicable(format!(
            "{} stores live in one process: no other process can hold a key",
            caps.backend
        )));
    }
    let mut child = cx.spawn_child();
    assert_eq!(observer.get("owned").await?.value, "child");
    child.kill();
    let bound = caps.session_ttl + caps.session_slack + Duration::from_secs(2);
    eventually(bound, "killed process's ephemeral key gone", || async {
        matches!(observer.exists("owned").await, Ok(false))
    })
    .await;
    Ok(Done::Passed)
}

async fn other_handles_keys_survive_a_close(cx: Ctx) -> CaseResult {
    let a = cx.store().await;
    let b = cx.store().await;
    a.put("a-key", "a", PutOptions::ephemeral()).await?;
    b.put("b-key", "b", PutOptions::ephemeral()).await?;
    b.put("plain", "p", PutOptions::new()).await?;
    a.close().await?;
    assert!(b.exists("b-key").await?);
    assert!(b.exists("plain").await?);
    assert!(!b.exists("a-key").await?);
    Ok(Done::Passed)
}

/// A plain `put` over an ephemeral key detaches it from the session, whoever
/// writes it: the key is then permanent, like any plain key.
async fn plain_rewrite_of_an_ephemeral_key_outlives_the_session(cx: Ctx) -> CaseResult {
    let owner = cx.store().await;
    let other = cx.store().await;
    owner.put("own", "e", PutOptions::ephemeral()).await?;
    owner.put("own", "plain", PutOptions::new()).await?;
    owner.put("theirs", "e", PutOptions::ephemeral()).await?;
    other.put("theirs", "plain", PutOptions::new()).await?;
    owner.close().await?;
    assert_eq!(other.get("own").await?.value, "plain");
    assert_eq!(other.get("theirs").await?.value, "plain");
    Ok(Done::Passed)
}
