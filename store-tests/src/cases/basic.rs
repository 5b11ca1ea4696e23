//! get / put / delete / exists.

use anykv::StoreExt;
use anykv::{Error, PutOptions};

use crate::harness::{assert_err, CaseResult, Ctx, Done};

crate::cases::cases!("basic":
    get_missing_key_is_key_not_found,
    put_then_get_returns_the_value,
    put_returns_the_pair_that_get_returns,
    overwrite_increases_version,
    delete_removes_the_key,
    delete_of_missing_key_is_ok,
    exists_follows_put_and_delete,
    version_after_recreate_is_higher_than_before_delete,
    second_handle_sees_first_handles_writes,
    error_names_the_key,
);

async fn get_missing_key_is_key_not_found(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    assert_err!(store.get("nope").await, Error::KeyNotFound { .. });
    Ok(Done::Passed)
}

async fn put_then_get_returns_the_value(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.put("k", "v1", PutOptions::new()).await?;
    let got = store.get("k").await?;
    assert_eq!(got.key, "k");
    assert_eq!(got.value, "v1");
    assert!(got.last_index > 0);
    Ok(Done::Passed)
}

async fn put_returns_the_pair_that_get_returns(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let put = store.put("dir/k", "v", PutOptions::new()).await?;
    let got = store.get("dir/k").await?;
    assert_eq!(put, got);
    Ok(Done::Passed)
}

async fn overwrite_increases_version(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let first = store.put("k", "1", PutOptions::new()).await?;
    let second = store.put("k", "2", PutOptions::new()).await?;
    assert!(second.last_index > first.last_index);
    let third = store.put("k", "2", PutOptions::new()).await?;
    assert!(
        third.last_index > second.last_index,
        "rewriting the same value is a change too"
    );
    assert_eq!(store.get("k").await?.value, "2");
    Ok(Done::Passed)
}

async fn delete_removes_the_key(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.put("k", "v", PutOptions::new()).await?;
    store.delete("k").await?;
    assert_err!(store.get("k").await, Error::KeyNotFound { .. });
    Ok(Done::Passed)
}

async fn delete_of_missing_key_is_ok(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.delete("never-there").await?;
    store.put("k", "v", PutOptions::new()).await?;
    store.delete("k").await?;
    store.delete("k").await?;
    Ok(Done::Passed)
}

async fn exists_follows_put_and_delete(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    assert!(!store.exists("k").await?);
    store.put("k", "v", PutOptions::new()).await?;
    assert!(store.exists("k").await?);
    store.delete("k").await?;
    assert!(!store.exists("k").await?);
    Ok(Done::Passed)
}

async fn version_after_recreate_is_higher_than_before_delete(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let before = store.put("k", "v", PutOptions::new()).await?;
    store.delete("k").await?;
    let after = store.put("k", "v", PutOptions::new()).await?;
    assert!(after.last_index > before.last_index);
    Ok(Done::Passed)
}

async fn second_handle_sees_first_handles_writes(cx: Ctx) -> CaseResult {
    let a = cx.store().await;
    let b = cx.store().await;
    let put = a.put("shared", "from-a", PutOptions::new()).await?;
    assert_eq!(b.get("shared").await?, put);
    b.delete("shared").await?;
    assert!(!a.exists("shared").await?);
    Ok(Done::Passed)
}

async fn error_names_the_key(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let err = store.get("some/missing-key").await.unwrap_err();
    assert!(err.to_string().contains("some/missing-key"), "{err}");
    Ok(Done::Passed)
}
