//! watch: one key.

use std::time::Duration;

use anykv::PutOptions;
use anykv::StoreExt;

use crate::harness::{alive_tasks, assert_quiet, eventually, next_item, CaseResult, Ctx, Done};

crate::cases::cases!("watch":
    first_item_is_the_current_value,
    first_item_is_none_for_a_missing_key,
    reports_put_update_and_delete_in_order,
    reports_a_delete_as_none,
    reports_recreate_after_delete,
    ignores_children_and_name_siblings,
    last_index_never_goes_backwards_and_final_state_arrives,
    two_watchers_see_the_same_changes,
    sees_writes_of_other_handles,
    dropped_watch_leaves_no_task_behind,
);

async fn first_item_is_the_current_value(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let put = store.put("w", "now", PutOptions::new()).await?;
    let mut watch = store.watch("w").await?;
    assert_eq!(next_item(&mut watch, "initial").await?, Some(put));
    Ok(Done::Passed)
}

async fn first_item_is_none_for_a_missing_key(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let mut watch = store.watch("w").await?;
    assert_eq!(next_item(&mut watch, "initial").await?, None);
    Ok(Done::Passed)
}

async fn reports_put_update_and_delete_in_order(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let mut watch = store.watch("w").await?;
    assert_eq!(next_item(&mut watch, "initial").await?, None);
    let v1 = store.put("w", "1", PutOptions::new()).await?;
    assert_eq!(next_item(&mut watch, "create").await?, Some(v1));
    let v2 = store.put("w", "2", PutOptions::new()).await?;
    assert_eq!(next_item(&mut watch, "update").await?, Some(v2));
    store.delete("w").await?;
    assert_eq!(next_item(&mut watch, "delete").await?, None);
    Ok(Done::Passed)
}

async fn reports_a_delete_as_none(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.put("w", "v", PutOptions::new()).await?;
    let mut watch = store.watch("w").await?;
    assert!(next_item(&mut watch, "initial").await?.is_some());
    store.delete("w").await?;
    assert_eq!(next_item(&mut watch, "delete").await?, None);
    Ok(Done::Passed)
}

async fn reports_recreate_after_delete(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let first = store.put("w", "v", PutOptions::new()).await?;
    let mut watch = store.watch("w").await?;
    assert_eq!(next_item(&mut watch, "initial").await?, Some(first.clone()));
    store.delete("w").await?;
    assert_eq!(next_item(&mut watch, "delete").await?, None);
    let again = store.put("w", "v", PutOptions::new()).await?;
    let seen = next_item(&mut watch, "recreate").await?;
    assert_eq!(seen, Some(again.clone()));
    assert!(again.last_index > first.last_index);
    Ok(Done::Passed)
}

async fn ignores_children_and_name_siblings(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let mut watch = store.watch("w").await?;
    assert_eq!(next_item(&mut watch, "initial").await?, None);
    store.put("w/child", "c", PutOptions::new()).await?;
    store.put("wx", "s", PutOptions::new()).await?;
    store.delete("w/child").await?;
    let mine = store.put("w", "mine", PutOptions::new()).await?;
    // The first item after the noise is our key's own change.
    assert_eq!(next_item(&mut watch, "own change").await?, Some(mine));
    Ok(Done::Passed)
}

async fn last_index_never_goes_backwards_and_final_state_arrives(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let writer = cx.store().await;
    let mut watch = store.watch("w").await?;
    assert_eq!(next_item(&mut watch, "initial").await?, None);
    let mut last = None;
    for i in 0..100 {
        last = Some(writer.put("w", format!("{i}"), PutOptions::new()).await?);
    }
    let last = last.unwrap_or_else(|| unreachable!());
    let mut previous = 0;
    loop {
        let item = next_item(&mut watch, "burst").await?;
        let pair = item.unwrap_or_else(|| panic!("key reported absent during a burst of puts"));
        assert!(
            pair.last_index > previous,
            "last_index went from {previous} to {}",
            pair.last_index
        );
        previous = pair.last_index;
        if pair == last {
            break;
        }
        assert!(
            pair.last_index < last.last_index,
            "saw {pair:?} past the final write {last:?}"
        );
    }
    Ok(Done::Passed)
}

async fn two_watchers_see_the_same_changes(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let mut a = store.watch("w").await?;
    let mut b = cx.store().await.watch("w").await?;
    assert_eq!(next_item(&mut a, "a initial").await?, None);
    assert_eq!(next_item(&mut b, "b initial").await?, None);
    let put = store.put("w", "v", PutOptions::new()).await?;
    assert_eq!(next_item(&mut a, "a put").await?, Some(put.clone()));
    assert_eq!(next_item(&mut b, "b put").await?, Some(put));
    Ok(Done::Passed)
}

async fn sees_writes_of_other_handles(cx: Ctx) -> CaseResult {
    let watcher = cx.store().await;
    let writer = cx.store().await;
    let mut watch = watcher.watch("w").await?;
    assert_eq!(next_item(&mut watch, "initial").await?, None);
    let put = writer.put("w", "x", PutOptions::new()).await?;
    assert_eq!(
        next_item(&mut watch, "other handle's put").await?,
        Some(put)
    );
    writer.delete("w").await?;
    assert_eq!(next_item(&mut watch, "other handle's delete").await?, None);
    assert_quiet(&mut watch, Duration::from_millis(200), "after delete").await;
    Ok(Done::Passed)
}

async fn dropped_watch_leaves_no_task_behind(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.put("w", "v", PutOptions::new()).await?;
    // Let any per-handle background work settle first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = alive_tasks();
    let mut watches = Vec::new();
    for _ in 0..5 {
        let mut watch = store.watch("w").await?;
        assert!(next_item(&mut watch, "initial").await?.is_some());
        watches.push(watch);
    }
    store.put("w", "v2", PutOptions::new()).await?;
    for watch in &mut watches {
        next_item(watch, "update").await?;
    }
    drop(watches);
    eventually(Duration::from_secs(5), "watch tasks ended", || async {
        alive_tasks() <= before
    })
    .await;
    Ok(Done::Passed)
}
