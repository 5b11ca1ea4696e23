//! Key forms: what is accepted, how it is normalised, namespaces.

use anykv::StoreExt;
use anykv::{Bytes, PutOptions};

use crate::harness::{CaseResult, Ctx, Done};

crate::cases::cases!("keys":
    unicode_and_punctuation_keys_round_trip,
    leading_and_trailing_slashes_are_normalised,
    longest_allowed_key_round_trips,
    empty_value_round_trips_and_is_a_key,
    binary_value_round_trips,
    value_of_max_size_round_trips,
    key_can_be_both_a_value_and_a_parent,
    namespace_hides_keys_outside_it,
    namespaces_sharing_a_name_prefix_are_disjoint,
);

const ODD_KEYS: &[&str] = &[
    "with space",
    "colon:key",
    "at@sign",
    "dash-and_underscore",
    "dots.in.name",
    "ключ",
    "鍵/値",
    "emoji-😀",
    "percent%20sign",
    "plus+and=equals",
    "quote\"and'apos",
    "hash#and?question",
];

async fn unicode_and_punctuation_keys_round_trip(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    for key in ODD_KEYS {
        let put = store
            .put(key, Bytes::from(key.to_string()), PutOptions::new())
            .await?;
        assert_eq!(put.key, *key);
        let got = store.get(key).await?;
        assert_eq!(got.key, *key);
        assert_eq!(got.value, key.as_bytes());
        assert!(store.exists(key).await?, "{key:?} does not exist after put");
    }
    let mut expected: Vec<String> = ODD_KEYS.iter().map(|k| k.to_string()).collect();
    expected.sort();
    let listed: Vec<String> = store.list("").await?.into_iter().map(|p| p.key).collect();
    assert_eq!(listed, expected);
    for key in ODD_KEYS {
        store.delete(key).await?;
        assert!(!store.exists(key).await?);
    }
    Ok(Done::Passed)
}

async fn leading_and_trailing_slashes_are_normalised(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let put = store.put("/a/b/", "v", PutOptions::new()).await?;
    assert_eq!(put.key, "a/b");
    assert_eq!(store.get("a/b").await?.key, "a/b");
    assert_eq!(store.get("/a/b").await?.value, "v");
    assert_eq!(store.list("/a/").await?.len(), 1);
    Ok(Done::Passed)
}

async fn longest_allowed_key_round_trips(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    // 1024 bytes in segments of 100 (some stores limit a path segment).
    let mut key = String::new();
    while key.len() < anykv::key::MAX_KEY_LEN {
        if !key.is_empty() {
            key.push('/');
        }
        let room = anykv::key::MAX_KEY_LEN - key.len();
        key.push_str(&"k".repeat(room.min(100)));
    }
    assert_eq!(key.len(), anykv::key::MAX_KEY_LEN);
    store.put(&key, "long", PutOptions::new()).await?;
    assert_eq!(store.get(&key).await?.value, "long");
    Ok(Done::Passed)
}

async fn empty_value_round_trips_and_is_a_key(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.put("empty", Bytes::new(), PutOptions::new()).await?;
    let got = store.get("empty").await?;
    assert!(got.value.is_empty());
    assert!(store.exists("empty").await?);
    assert_eq!(store.list("").await?.len(), 1);
    Ok(Done::Passed)
}

async fn binary_value_round_trips(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let value: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    store
        .put("bin", Bytes::from(value.clone()), PutOptions::new())
        .await?;
    assert_eq!(store.get("bin").await?.value, value);
    Ok(Done::Passed)
}

async fn value_of_max_size_round_trips(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let max = store.capabilities().max_value_size;
    let value = Bytes::from(vec![b'x'; max]);
    store.put("big", value.clone(), PutOptions::new()).await?;
    assert_eq!(store.get("big").await?.value.len(), max);
    Ok(Done::Passed)
}

async fn key_can_be_both_a_value_and_a_parent(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.put("a", "parent", PutOptions::new()).await?;
    store.put("a/b", "child", PutOptions::new()).await?;
    assert_eq!(store.get("a").await?.value, "parent");
    assert_eq!(store.get("a/b").await?.value, "child");
    let below: Vec<String> = store.list("a").await?.into_iter().map(|p| p.key).collect();
    assert_eq!(below, vec!["a/b"]);
    let all: Vec<String> = store.list("").await?.into_iter().map(|p| p.key).collect();
    assert_eq!(all, vec!["a", "a/b"]);
    store.delete("a").await?;
    assert_eq!(store.get("a/b").await?.value, "child");
    assert!(!store.exists("a").await?);
    Ok(Done::Passed)
}

async fn namespace_hides_keys_outside_it(cx: Ctx) -> CaseResult {
    let outer = cx.store().await;
    let inner = cx.store_in("inner").await;
    inner.put("x", "in", PutOptions::new()).await?;
    outer.put("y", "out", PutOptions::new()).await?;
    assert_eq!(outer.get("inner/x").await?.value, "in");
    assert!(inner.get("y").await.is_err_and(|e| e.is_not_found()));
    let inner_keys: Vec<String> = inner.list("").await?.into_iter().map(|p| p.key).collect();
    assert_eq!(inner_keys, vec!["x"]);
    inner.delete_tree("").await?;
    assert_eq!(outer.get("y").await?.value, "out");
    Ok(Done::Passed)
}

async fn namespaces_sharing_a_name_prefix_are_disjoint(cx: Ctx) -> CaseResult {
    let app = cx.store_in("app").await;
    let apple = cx.store_in("apple").await;
    app.put("k", "app", PutOptions::new()).await?;
    apple.put("k", "apple", PutOptions::new()).await?;
    assert_eq!(app.get("k").await?.value, "app");
    assert_eq!(apple.list("").await?.len(), 1);
    app.delete_tree("").await?;
    assert_eq!(apple.get("k").await?.value, "apple");
    Ok(Done::Passed)
}
