//! Bad input: typed errors before any I/O, nothing written.

use std::time::Duration;

use anykv::StoreExt;
use anykv::{Bytes, Error, KvPair, LockOptions, PutOptions};

use crate::harness::{assert_err, CaseResult, Ctx, Done};

crate::cases::cases!("bad_input":
    invalid_keys_rejected_by_get,
    invalid_keys_rejected_by_put,
    invalid_keys_rejected_by_delete,
    invalid_keys_rejected_by_exists,
    invalid_keys_rejected_by_atomic_put,
    invalid_keys_rejected_by_atomic_delete,
    invalid_keys_rejected_by_watch,
    invalid_keys_rejected_by_new_lock,
    invalid_prefixes_rejected_by_list_watch_tree_and_delete_tree,
    oversized_value_rejected_by_put,
    oversized_value_rejected_by_atomic_put,
    oversized_value_leaves_existing_value_intact,
    invalid_key_error_names_the_key,
    overlong_put_ttl_is_an_invalid_argument_naming_the_key,
    overlong_lock_ttl_is_an_invalid_argument_naming_the_key,
);

/// TTLs far beyond any supported duration (anykv caps every duration at
/// `anykv::types::MAX_DURATION`); they once overflowed deadline arithmetic.
fn overlong_durations() -> [Duration; 2] {
    [Duration::MAX, Duration::from_secs(u64::MAX)]
}

fn invalid_keys() -> Vec<String> {
    vec![
        String::new(),
        "/".into(),
        "//".into(),
        "a//b".into(),
        "./a".into(),
        "a/./b".into(),
        "a/..".into(),
        "..".into(),
        "nul\0byte".into(),
        "new\nline".into(),
        "tab\tkey".into(),
        "del\u{7f}".into(),
        "k".repeat(anykv::key::MAX_KEY_LEN + 1),
    ]
}

fn any_pair() -> KvPair {
    KvPair::new("x", Bytes::new(), 1)
}

async fn invalid_keys_rejected_by_get(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    for key in invalid_keys() {
        assert_err!(store.get(&key).await, Error::InvalidKey { .. });
    }
    Ok(Done::Passed)
}

async fn invalid_keys_rejected_by_put(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    for key in invalid_keys() {
        assert_err!(
            store.put(&key, "v", PutOptions::new()).await,
            Error::InvalidKey { .. }
        );
    }
    assert!(
        store.list("").await?.is_empty(),
        "a rejected put wrote something"
    );
    Ok(Done::Passed)
}

async fn invalid_keys_rejected_by_delete(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    for key in invalid_keys() {
        assert_err!(store.delete(&key).await, Error::InvalidKey { .. });
    }
    Ok(Done::Passed)
}

async fn invalid_keys_rejected_by_exists(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    for key in invalid_keys() {
        assert_err!(store.exists(&key).await, Error::InvalidKey { .. });
    }
    Ok(Done::Passed)
}

async fn invalid_keys_rejected_by_atomic_put(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let pair = any_pair();
    for key in invalid_keys() {
        assert_err!(
            store.atomic_put(&key, "v", None, PutOptions::new()).await,
            Error::InvalidKey { .. }
        );
        assert_err!(
            store
                .atomic_put(&key, "v", Some(&pair), PutOptions::new())
                .await,
            Error::InvalidKey { .. }
        );
    }
    assert!(store.list("").await?.is_empty());
    Ok(Done::Passed)
}

async fn invalid_keys_rejected_by_atomic_delete(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let pair = any_pair();
    for key in invalid_keys() {
        assert_err!(
            store.atomic_delete(&key, &pair).await,
            Error::InvalidKey { .. }
        );
    }
    Ok(Done::Passed)
}

async fn invalid_keys_rejected_by_watch(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    for key in invalid_keys() {
        assert_err!(store.watch(&key).await, Error::InvalidKey { .. });
    }
    Ok(Done::Passed)
}

async fn invalid_keys_rejected_by_new_lock(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    for key in invalid_keys() {
        assert_err!(
            store.new_lock(&key, LockOptions::new("v")).await,
            Error::InvalidKey { .. }
        );
    }
    Ok(Done::Passed)
}

async fn invalid_prefixes_rejected_by_list_watch_tree_and_delete_tree(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.put("keep", "v", PutOptions::new()).await?;
    // The empty prefix is valid for these (the whole namespace); the rest is not.
    for prefix in invalid_keys()
        .into_iter()
        .filter(|k| !k.trim_matches('/').is_empty())
    {
        assert_err!(store.list(&prefix).await, Error::InvalidKey { .. });
        assert_err!(store.watch_tree(&prefix).await, Error::InvalidKey { .. });
        assert_err!(store.delete_tree(&prefix).await, Error::InvalidKey { .. });
    }
    assert!(store.exists("keep").await?);
    Ok(Done::Passed)
}

async fn oversized_value_rejected_by_put(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let max = store.capabilities().max_value_size;
    let err = store
        .put("big", Bytes::from(vec![0u8; max + 1]), PutOptions::new())
        .await;
    assert_err!(err, Error::ValueTooLarge { .. });
    assert!(!store.exists("big").await?);
    Ok(Done::Passed)
}

async fn oversized_value_rejected_by_atomic_put(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let max = store.capabilities().max_value_size;
    assert_err!(
        store
            .atomic_put(
                "big",
                Bytes::from(vec![0u8; max + 1]),
                None,
                PutOptions::new()
            )
            .await,
        Error::ValueTooLarge { .. }
    );
    assert!(!store.exists("big").await?);
    Ok(Done::Passed)
}

async fn oversized_value_leaves_existing_value_intact(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let max = store.capabilities().max_value_size;
    let before = store.put("k", "small", PutOptions::new()).await?;
    assert_err!(
        store
            .put("k", Bytes::from(vec![1u8; max + 1]), PutOptions::new())
            .await,
        Error::ValueTooLarge { .. }
    );
    assert_eq!(store.get("k").await?, before);
    Ok(Done::Passed)
}

async fn invalid_key_error_names_the_key(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let err = store.get("bad//key").await.unwrap_err();
    assert!(err.to_string().contains("bad//key"), "{err}");
    Ok(Done::Passed)
}

async fn overlong_put_ttl_is_an_invalid_argument_naming_the_key(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    for ttl in overlong_durations() {
        for outcome in [
            store.put("forever-ish", "v", PutOptions::ttl(ttl)).await,
            store
                .atomic_put("forever-ish", "v", None, PutOptions::ttl(ttl))
                .await,
        ] {
            match outcome {
                Err(Error::InvalidArgument { ref key, .. }) if key == "forever-ish" => {}
                other => {
                    panic!("ttl {ttl:?}: expected InvalidArgument naming the key, got {other:?}")
                }
            }
        }
    }
    assert!(
        !store.exists("forever-ish").await?,
        "a rejected TTL write wrote the key"
    );
    // The handle still works.
    store.put("after", "v", PutOptions::new()).await?;
    assert_eq!(store.get("after").await?.value, "v");
    Ok(Done::Passed)
}

async fn overlong_lock_ttl_is_an_invalid_argument_naming_the_key(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    for ttl in overlong_durations() {
        let options = LockOptions::new("me").with_ttl(ttl);
        // Rejected when the lock is created, or at the latest when taken.
        let outcome = match store.new_lock("l", options).await {
            Ok(lock) => lock.lock().await.map(drop),
            Err(e) => Err(e),
        };
        match outcome {
            Err(Error::InvalidArgument { ref key, .. }) if key == "l" => {}
            other => {
                panic!("lock ttl {ttl:?}: expected InvalidArgument naming the key, got {other:?}")
            }
        }
    }
    assert!(!store.exists("l").await?, "a rejected lock left its key");
    // A lock with a sane TTL still works on the same handle.
    let guard = store
        .new_lock("l", LockOptions::new("me"))
        .await?
        .try_lock()
        .await?;
    guard.unlock().await?;
    Ok(Done::Passed)
}
