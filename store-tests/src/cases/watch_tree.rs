//! watch_tree: a prefix.

use std::time::Duration;

use anykv::StoreExt;
use anykv::{KvPair, PutOptions};

use crate::harness::{alive_tasks, eventually, next_item, CaseResult, Ctx, Done};

crate::cases::cases!("watch_tree":
    first_item_is_the_current_listing,
    first_item_is_empty_for_an_empty_prefix,
    reports_add_update_and_delete,
    sees_nested_keys,
    ignores_keys_outside_the_prefix,
    reports_delete_tree_as_an_empty_listing,
    final_listing_arrives_after_a_burst,
    dropped_watch_tree_leaves_no_task_behind,
);

fn keys(pairs: &[KvPair]) -> Vec<&str> {
    pairs.iter().map(|p| p.key.as_str()).collect()
}

async fn first_item_is_the_current_listing(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.put("t/b", "2", PutOptions::new()).await?;
    store.put("t/a", "1", PutOptions::new()).await?;
    let mut watch = store.watch_tree("t").await?;
    let first = next_item(&mut watch, "initial").await?;
    assert_eq!(first, store.list("t").await?);
    assert_eq!(keys(&first), vec!["t/a", "t/b"]);
    Ok(Done::Passed)
}

async fn first_item_is_empty_for_an_empty_prefix(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let mut watch = store.watch_tree("t").await?;
    assert!(next_item(&mut watch, "initial").await?.is_empty());
    Ok(Done::Passed)
}

async fn reports_add_update_and_delete(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let mut watch = store.watch_tree("t").await?;
    assert!(next_item(&mut watch, "initial").await?.is_empty());
    let a = store.put("t/a", "1", PutOptions::new()).await?;
    assert_eq!(next_item(&mut watch, "add").await?, vec![a]);
    let a2 = store.put("t/a", "2", PutOptions::new()).await?;
    assert_eq!(next_item(&mut watch, "update").await?, vec![a2]);
    store.delete("t/a").await?;
    assert!(next_item(&mut watch, "delete").await?.is_empty());
    Ok(Done::Passed)
}

async fn sees_nested_keys(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let mut watch = store.watch_tree("t").await?;
    assert!(next_item(&mut watch, "initial").await?.is_empty());
    store.put("t/x/y/z", "deep", PutOptions::new()).await?;
    assert_eq!(
        keys(&next_item(&mut watch, "nested").await?),
        vec!["t/x/y/z"]
    );
    Ok(Done::Passed)
}

async fn ignores_keys_outside_the_prefix(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let mut watch = store.watch_tree("t").await?;
    assert!(next_item(&mut watch, "initial").await?.is_empty());
    store.put("tt/x", "sibling", PutOptions::new()).await?;
    store.put("other", "o", PutOptions::new()).await?;
    store
        .put("t", "the prefix itself", PutOptions::new())
        .await?;
    let inside = store.put("t/in", "in", PutOptions::new()).await?;
    // Whatever came before, the listing never holds outside keys.
    loop {
        let listing = next_item(&mut watch, "inside").await?;
        assert!(
            listing.iter().all(|p| p.key.starts_with("t/")),
            "{listing:?}"
        );
        if listing == vec![inside.clone()] {
            break;
        }
        assert!(listing.is_empty(), "{listing:?}");
    }
    Ok(Done::Passed)
}

async fn reports_delete_tree_as_an_empty_listing(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.put("t/a", "1", PutOptions::new()).await?;
    store.put("t/b/c", "2", PutOptions::new()).await?;
    let mut watch = store.watch_tree("t").await?;
    assert_eq!(next_item(&mut watch, "initial").await?.len(), 2);
    store.delete_tree("t").await?;
    loop {
        let listing = next_item(&mut watch, "after delete_tree").await?;
        if listing.is_empty() {
            break;
        }
        assert!(listing.len() < 2, "listing grew: {listing:?}");
    }
    Ok(Done::Passed)
}

async fn final_listing_arrives_after_a_burst(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let mut watch = store.watch_tree("t").await?;
    assert!(next_item(&mut watch, "initial").await?.is_empty());
    for i in 0..50 {
        store
            .put(
                &format!("t/{:02}", i % 10),
                format!("{i}"),
                PutOptions::new(),
            )
            .await?;
    }
    store.delete("t/00").await?;
    let expected = store.list("t").await?;
    assert_eq!(expected.len(), 9);
    loop {
        let listing = next_item(&mut watch, "burst").await?;
        if listing == expected {
            break;
        }
    }
    Ok(Done::Passed)
}

async fn dropped_watch_tree_leaves_no_task_behind(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.put("t/a", "v", PutOptions::new()).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = alive_tasks();
    let mut watches = Vec::new();
    for _ in 0..5 {
        let mut watch = store.watch_tree("t").await?;
        assert_eq!(next_item(&mut watch, "initial").await?.len(), 1);
        watches.push(watch);
    }
    store.put("t/b", "v", PutOptions::new()).await?;
    for watch in &mut watches {
        next_item(watch, "update").await?;
    }
    drop(watches);
    eventually(Duration::from_secs(5), "watch_tree tasks ended", || async {
        alive_tasks() <= before
    })
    .await;
    Ok(Done::Passed)
}
