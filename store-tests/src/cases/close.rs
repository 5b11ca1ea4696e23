//! close(): sessions end, watches end, other handles unaffected.

use anykv::StoreExt;
use anykv::{Error, LockOptions, PutOptions};
use futures::StreamExt;

use crate::harness::{assert_err, next_item, CaseResult, Ctx, Done, PATIENCE};

crate::cases::cases!("close":
    close_is_idempotent,
    operations_after_close_fail_with_closed,
    close_ends_open_watches_with_a_closed_error,
    close_leaves_other_handles_working,
);

async fn close_is_idempotent(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.close().await?;
    store.close().await?;
    Ok(Done::Passed)
}

async fn operations_after_close_fail_with_closed(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.put("k", "v", PutOptions::new()).await?;
    store.close().await?;
    assert_err!(store.get("k").await, Error::Closed { .. });
    assert_err!(
        store.put("k", "v", PutOptions::new()).await,
        Error::Closed { .. }
    );
    assert_err!(store.delete("k").await, Error::Closed { .. });
    assert_err!(store.list("").await, Error::Closed { .. });
    assert_err!(store.watch("k").await, Error::Closed { .. });
    assert_err!(
        store.new_lock("l", LockOptions::new("x")).await,
        Error::Closed { .. }
    );
    Ok(Done::Passed)
}

async fn close_ends_open_watches_with_a_closed_error(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let mut watch = store.watch("k").await?;
    let mut tree = store.watch_tree("").await?;
    assert_eq!(next_item(&mut watch, "initial").await?, None);
    assert!(next_item(&mut tree, "initial").await?.is_empty());
    store.close().await?;
    for (name, item) in [
        (
            "watch",
            next_item(&mut watch, "after close").await.map(|_| ()),
        ),
        (
            "watch_tree",
            next_item(&mut tree, "after close").await.map(|_| ()),
        ),
    ] {
        assert!(
            matches!(item, Err(Error::Closed { .. })),
            "{name}: {item:?}"
        );
    }
    assert!(tokio::time::timeout(PATIENCE, watch.next())
        .await?
        .is_none());
    assert!(tokio::time::timeout(PATIENCE, tree.next()).await?.is_none());
    Ok(Done::Passed)
}

async fn close_leaves_other_handles_working(cx: Ctx) -> CaseResult {
    let a = cx.store().await;
    let b = cx.store().await;
    let mut watch = b.watch("k").await?;
    assert_eq!(next_item(&mut watch, "initial").await?, None);
    a.close().await?;
    let put = b.put("k", "v", PutOptions::new()).await?;
    assert_eq!(
        next_item(&mut watch, "put after other close").await?,
        Some(put)
    );
    Ok(Done::Passed)
}
