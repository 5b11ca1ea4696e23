//! atomic_put / atomic_delete: compare-and-swap and its edge cases.

use std::sync::Arc;

use anykv::StoreExt;
use anykv::{Error, PutOptions, Store};

use crate::harness::{assert_err, CaseResult, Ctx, Done};

crate::cases::cases!("atomic":
    create_only_put_succeeds_when_absent,
    create_only_put_on_existing_key_is_key_exists,
    cas_with_current_version_succeeds,
    cas_with_stale_version_is_key_modified,
    cas_on_deleted_key_is_key_not_found,
    cas_rejects_stale_pair_after_delete_and_recreate,
    failed_cas_leaves_the_value_unchanged,
    atomic_delete_with_current_version_deletes,
    atomic_delete_with_stale_version_is_key_modified,
    atomic_delete_of_missing_key_is_key_not_found,
    atomic_delete_rejects_stale_pair_after_recreate,
    concurrent_cas_increments_lose_no_update,
    concurrent_create_only_puts_have_one_winner,
);

async fn create_only_put_succeeds_when_absent(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let created = store.atomic_put("k", "v", None, PutOptions::new()).await?;
    assert_eq!(created.key, "k");
    assert_eq!(store.get("k").await?, created);
    Ok(Done::Passed)
}

async fn create_only_put_on_existing_key_is_key_exists(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.put("k", "v", PutOptions::new()).await?;
    assert_err!(
        store.atomic_put("k", "w", None, PutOptions::new()).await,
        Error::KeyExists { .. }
    );
    assert_eq!(store.get("k").await?.value, "v");
    Ok(Done::Passed)
}

async fn cas_with_current_version_succeeds(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let v1 = store.put("k", "1", PutOptions::new()).await?;
    let v2 = store
        .atomic_put("k", "2", Some(&v1), PutOptions::new())
        .await?;
    assert!(v2.last_index > v1.last_index);
    assert_eq!(store.get("k").await?, v2);
    Ok(Done::Passed)
}

async fn cas_with_stale_version_is_key_modified(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let v1 = store.put("k", "1", PutOptions::new()).await?;
    store.put("k", "2", PutOptions::new()).await?;
    assert_err!(
        store
            .atomic_put("k", "3", Some(&v1), PutOptions::new())
            .await,
        Error::KeyModified { .. }
    );
    Ok(Done::Passed)
}

async fn cas_on_deleted_key_is_key_not_found(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let v1 = store.put("k", "1", PutOptions::new()).await?;
    store.delete("k").await?;
    assert_err!(
        store
            .atomic_put("k", "2", Some(&v1), PutOptions::new())
            .await,
        Error::KeyNotFound { .. }
    );
    assert!(
        !store.exists("k").await?,
        "a failed CAS must not create the key"
    );
    Ok(Done::Passed)
}

async fn cas_rejects_stale_pair_after_delete_and_recreate(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let old = store.put("k", "same", PutOptions::new()).await?;
    store.delete("k").await?;
    store.put("k", "same", PutOptions::new()).await?;
    assert_err!(
        store
            .atomic_put("k", "aba", Some(&old), PutOptions::new())
            .await,
        Error::KeyModified { .. }
    );
    assert_eq!(store.get("k").await?.value, "same");
    Ok(Done::Passed)
}

async fn failed_cas_leaves_the_value_unchanged(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let v1 = store.put("k", "1", PutOptions::new()).await?;
    let v2 = store.put("k", "2", PutOptions::new()).await?;
    let _ = store
        .atomic_put("k", "x", Some(&v1), PutOptions::new())
        .await;
    assert_eq!(store.get("k").await?, v2);
    Ok(Done::Passed)
}

async fn atomic_delete_with_current_version_deletes(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let v1 = store.put("k", "1", PutOptions::new()).await?;
    store.atomic_delete("k", &v1).await?;
    assert!(!store.exists("k").await?);
    Ok(Done::Passed)
}

async fn atomic_delete_with_stale_version_is_key_modified(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let v1 = store.put("k", "1", PutOptions::new()).await?;
    store.put("k", "2", PutOptions::new()).await?;
    assert_err!(
        store.atomic_delete("k", &v1).await,
        Error::KeyModified { .. }
    );
    assert_eq!(store.get("k").await?.value, "2");
    Ok(Done::Passed)
}

async fn atomic_delete_of_missing_key_is_key_not_found(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let v1 = store.put("k", "1", PutOptions::new()).await?;
    store.delete("k").await?;
    assert_err!(
        store.atomic_delete("k", &v1).await,
        Error::KeyNotFound { .. }
    );
    Ok(Done::Passed)
}

async fn atomic_delete_rejects_stale_pair_after_recreate(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let old = store.put("k", "v", PutOptions::new()).await?;
    store.delete("k").await?;
    store.put("k", "v", PutOptions::new()).await?;
    assert_err!(
        store.atomic_delete("k", &old).await,
        Error::KeyModified { .. }
    );
    assert!(store.exists("k").await?);
    Ok(Done::Passed)
}

async fn concurrent_cas_increments_lose_no_update(cx: Ctx) -> CaseResult {
    const TASKS: usize = 8;
    const INCREMENTS: usize = 50;
    let store = cx.store().await;
    store.put("counter", "0", PutOptions::new()).await?;
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store: Arc<dyn Store> = cx.store().await;
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            let mut conflicts = 0u64;
            while done < INCREMENTS {
                let current = store.get("counter").await?;
                let n: u64 = std::str::from_utf8(&current.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("counter holds {:?}", current.value));
                match store
                    .atomic_put(
                        "counter",
                        (n + 1).to_string(),
                        Some(&current),
                        PutOptions::new(),
                    )
                    .await
                {
                    Ok(_) => done += 1,
                    Err(Error::KeyModified { .. }) => conflicts += 1,
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, Error>(conflicts)
        }));
    }
    for task in tasks {
        task.await??;
    }
    let total = store.get("counter").await?;
    assert_eq!(total.value, (TASKS * INCREMENTS).to_string().as_bytes());
    Ok(Done::Passed)
}

async fn concurrent_create_only_puts_have_one_winner(cx: Ctx) -> CaseResult {
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = cx.store().await;
        tasks.push(tokio::spawn(async move {
            store
                .atomic_put("once", format!("{i}"), None, PutOptions::new())
                .await
        }));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await? {
            Ok(_) => winners += 1,
            Err(Error::KeyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    assert_eq!(winners, 1);
    Ok(Done::Passed)
}
