//! Write modes, conditional deletes, `get_opt` and the `update` helper.

use std::sync::Arc;

use anykv::{DeleteOptions, Error, KvPair, PutMode, PutOptions, Store, StoreExt};

use crate::harness::{assert_err, CaseResult, Ctx, Done};

crate::cases::cases!("modes":
    get_opt_is_none_for_a_missing_key_and_the_pair_for_a_present_one,
    overwrite_is_the_default_mode_and_replaces,
    create_mode_writes_once_and_then_is_key_exists,
    update_mode_writes_only_at_the_given_version,
    update_mode_on_a_missing_key_is_key_not_found,
    update_mode_refuses_a_version_from_before_delete_and_recreate,
    conditional_delete_deletes_only_at_the_given_version,
    conditional_delete_of_a_missing_key_is_key_not_found,
    update_helper_creates_then_modifies,
    concurrent_update_helpers_lose_no_increment,
);

async fn get_opt_is_none_for_a_missing_key_and_the_pair_for_a_present_one(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    assert_eq!(store.get_opt("k").await?, None);
    let written = store.put("k", "v", PutOptions::new()).await?;
    assert_eq!(store.get_opt("k").await?, Some(written));
    store.delete("k").await?;
    assert_eq!(store.get_opt("k").await?, None);
    Ok(Done::Passed)
}

async fn overwrite_is_the_default_mode_and_replaces(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    assert_eq!(PutOptions::new().mode(), PutMode::Overwrite);
    let first = store.put_opts("k", "1".into(), PutOptions::new()).await?;
    let second = store
        .put_opts(
            "k",
            "2".into(),
            PutOptions::new().with_mode(PutMode::Overwrite),
        )
        .await?;
    assert!(second.last_index > first.last_index);
    assert_eq!(store.get("k").await?, second);
    Ok(Done::Passed)
}

async fn create_mode_writes_once_and_then_is_key_exists(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let created = store.create("k", "first", PutOptions::new()).await?;
    assert_err!(
        store.create("k", "second", PutOptions::new()).await,
        Error::KeyExists { .. }
    );
    assert_eq!(store.get("k").await?, created);
    Ok(Done::Passed)
}

async fn update_mode_writes_only_at_the_given_version(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let v1 = store.put("k", "1", PutOptions::new()).await?;
    let v2 = store
        .put(
            "k",
            "2",
            PutOptions::new().with_mode(PutMode::Update(v1.last_index)),
        )
        .await?;
    assert!(v2.last_index > v1.last_index);
    assert_err!(
        store
            .put(
                "k",
                "stale",
                PutOptions::new().with_mode(PutMode::Update(v1.last_index)),
            )
            .await,
        Error::KeyModified { .. }
    );
    assert_eq!(store.get("k").await?, v2);
    Ok(Done::Passed)
}

async fn update_mode_on_a_missing_key_is_key_not_found(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    assert_err!(
        store
            .put("k", "v", PutOptions::new().with_mode(PutMode::Update(1)))
            .await,
        Error::KeyNotFound { .. }
    );
    assert_eq!(store.get_opt("k").await?, None);
    Ok(Done::Passed)
}

async fn update_mode_refuses_a_version_from_before_delete_and_recreate(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let old = store.put("k", "old", PutOptions::new()).await?;
    store.delete("k").await?;
    let new = store.put("k", "new", PutOptions::new()).await?;
    assert_ne!(old.last_index, new.last_index);
    assert_err!(
        store
            .put(
                "k",
                "x",
                PutOptions::new().with_mode(PutMode::Update(old.last_index)),
            )
            .await,
        Error::KeyModified { .. }
    );
    assert_eq!(store.get("k").await?, new);
    Ok(Done::Passed)
}

async fn conditional_delete_deletes_only_at_the_given_version(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let v1 = store.put("k", "1", PutOptions::new()).await?;
    let v2 = store.put("k", "2", PutOptions::new()).await?;
    assert_err!(
        store
            .delete_opts("k", DeleteOptions::new().if_version(v1.last_index))
            .await,
        Error::KeyModified { .. }
    );
    assert_eq!(store.get("k").await?, v2);
    store
        .delete_opts("k", DeleteOptions::new().if_version(v2.last_index))
        .await?;
    assert_eq!(store.get_opt("k").await?, None);
    Ok(Done::Passed)
}

async fn conditional_delete_of_a_missing_key_is_key_not_found(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    assert_err!(
        store
            .delete_opts("k", DeleteOptions::new().if_version(1))
            .await,
        Error::KeyNotFound { .. }
    );
    // An unconditional delete of a missing key is fine.
    store.delete_opts("k", DeleteOptions::new()).await?;
    Ok(Done::Passed)
}

fn increment(current: Option<&KvPair>) -> String {
    let n: u64 = current
        .and_then(|p| std::str::from_utf8(&p.value).ok()?.parse().ok())
        .unwrap_or(0);
    (n + 1).to_string()
}

async fn update_helper_creates_then_modifies(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let first = store.update("counter", increment).await?;
    assert_eq!(first.value, "1");
    let second = store.update("counter", increment).await?;
    assert_eq!(second.value, "2");
    assert!(second.last_index > first.last_index);
    assert_eq!(store.get("counter").await?, second);
    Ok(Done::Passed)
}

async fn concurrent_update_helpers_lose_no_increment(cx: Ctx) -> CaseResult {
    const TASKS: usize = 4;
    const EACH: usize = 5;
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let store: Arc<dyn Store> = cx.store().await;
        handles.push(tokio::spawn(async move {
            for _ in 0..EACH {
                store.update("counter", increment).await?;
            }
            Ok::<(), Error>(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    let store = cx.store().await;
    assert_eq!(
        store.get("counter").await?.value,
        (TASKS * EACH).to_string()
    );
    Ok(Done::Passed)
}
