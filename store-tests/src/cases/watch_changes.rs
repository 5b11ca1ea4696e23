//! watch_tree_changes: a prefix as a stream of single changes.

use std::collections::BTreeMap;
use std::time::Duration;

use anykv::StoreExt;
use anykv::{KvPair, PutOptions, TreeChange, TreeChangeStream};

use crate::harness::{alive_tasks, eventually, next_item, CaseResult, Ctx, Done};

crate::cases::cases!("watch_changes":
    first_item_is_a_snapshot_of_the_listing,
    reports_add_update_and_delete_as_single_changes,
    ignores_keys_outside_the_prefix,
    reports_delete_tree_as_a_deletion_of_every_key,
    applied_changes_converge_on_the_listing_after_a_burst_from_two_handles,
    dropped_change_stream_leaves_no_task_behind,
);

/// The next item, which must be a change (not an error).
async fn next_change(changes: &mut TreeChangeStream, what: &str) -> TreeChange {
    match next_item(changes, what).await {
        Ok(change) => change,
        Err(error) => panic!("{what}: the change stream failed: {error}"),
    }
}

async fn snapshot(changes: &mut TreeChangeStream) -> Vec<KvPair> {
    match next_change(changes, "initial").await {
        TreeChange::Snapshot(pairs) => pairs,
        other => panic!("the first item must be a snapshot, got {other:?}"),
    }
}

fn written(key: &str, pair: &KvPair) -> TreeChange {
    TreeChange::Changed {
        key: key.to_owned(),
        pair: Some(pair.clone()),
    }
}

fn deleted(key: &str) -> TreeChange {
    TreeChange::Changed {
        key: key.to_owned(),
        pair: None,
    }
}

async fn first_item_is_a_snapshot_of_the_listing(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.put("t/b", "2", PutOptions::new()).await?;
    store.put("t/a", "1", PutOptions::new()).await?;
    let mut changes = store.watch_tree_changes("t").await?;
    assert_eq!(snapshot(&mut changes).await, store.list("t").await?);
    let mut empty = store.watch_tree_changes("empty").await?;
    assert!(snapshot(&mut empty).await.is_empty());
    Ok(Done::Passed)
}

async fn reports_add_update_and_delete_as_single_changes(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let b = store.put("t/b", "untouched", PutOptions::new()).await?;
    let mut changes = store.watch_tree_changes("t").await?;
    assert_eq!(snapshot(&mut changes).await, vec![b]);
    let a = store.put("t/a", "1", PutOptions::new()).await?;
    assert_eq!(next_change(&mut changes, "add").await, written("t/a", &a));
    let a2 = store.put("t/a", "2", PutOptions::new()).await?;
    assert_eq!(
        next_change(&mut changes, "update").await,
        written("t/a", &a2)
    );
    store.delete("t/a").await?;
    assert_eq!(next_change(&mut changes, "delete").await, deleted("t/a"));
    Ok(Done::Passed)
}

async fn ignores_keys_outside_the_prefix(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let mut changes = store.watch_tree_changes("t").await?;
    assert!(snapshot(&mut changes).await.is_empty());
    store.put("tt/x", "sibling", PutOptions::new()).await?;
    store.put("other", "o", PutOptions::new()).await?;
    store
        .put("t", "the prefix itself", PutOptions::new())
        .await?;
    let inside = store.put("t/in", "in", PutOptions::new()).await?;
    // The first change is the one inside: nothing from outside came before.
    assert_eq!(
        next_change(&mut changes, "inside").await,
        written("t/in", &inside)
    );
    Ok(Done::Passed)
}

async fn reports_delete_tree_as_a_deletion_of_every_key(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.put("t/a", "1", PutOptions::new()).await?;
    store.put("t/b/c", "2", PutOptions::new()).await?;
    let mut changes = store.watch_tree_changes("t").await?;
    assert_eq!(snapshot(&mut changes).await.len(), 2);
    store.delete_tree("t").await?;
    let mut gone = Vec::new();
    while gone.len() < 2 {
        match next_change(&mut changes, "after delete_tree").await {
            TreeChange::Changed { key, pair: None } => gone.push(key),
            other => panic!("only deletions may follow delete_tree, got {other:?}"),
        }
    }
    gone.sort();
    assert_eq!(gone, vec!["t/a", "t/b/c"]);
    Ok(Done::Passed)
}

async fn applied_changes_converge_on_the_listing_after_a_burst_from_two_handles(
    cx: Ctx,
) -> CaseResult {
    let (one, two) = (cx.store().await, cx.store().await);
    one.put("t/00", "before", PutOptions::new()).await?;
    let mut changes = one.watch_tree_changes("t").await?;
    let mut tree = BTreeMap::new();
    TreeChange::Snapshot(snapshot(&mut changes).await).apply(&mut tree);
    for i in 0..60 {
        let store = if i % 2 == 0 { &one } else { &two };
        let key = format!("t/{:02}", i % 12);
        if i % 7 == 3 {
            store.delete(&key).await?;
        } else {
            store.put(&key, format!("{i}"), PutOptions::new()).await?;
        }
    }
    let expected: Vec<KvPair> = one.list("t").await?;
    while tree.values().cloned().collect::<Vec<_>>() != expected {
        next_change(&mut changes, "the burst's changes")
            .await
            .apply(&mut tree);
    }
    Ok(Done::Passed)
}

async fn dropped_change_stream_leaves_no_task_behind(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.put("t/a", "v", PutOptions::new()).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = alive_tasks();
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut changes = store.watch_tree_changes("t").await?;
        assert_eq!(snapshot(&mut changes).await.len(), 1);
        streams.push(changes);
    }
    store.put("t/b", "v", PutOptions::new()).await?;
    for changes in &mut streams {
        next_change(changes, "update").await;
    }
    drop(streams);
    eventually(
        Duration::from_secs(5),
        "change stream tasks ended",
        || async { alive_tasks() <= before },
    )
    .await;
    Ok(Done::Passed)
}
