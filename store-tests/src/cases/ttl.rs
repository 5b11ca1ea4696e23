//! Keys written with a TTL.

use std::time::{Duration, Instant};

use anykv::StoreExt;
use anykv::{Error, PutOptions};

use crate::harness::{assert_err, eventually, next_item, test_ttl, CaseResult, Ctx, Done};

crate::cases::cases!("ttl":
    ttl_key_is_readable_before_it_expires,
    ttl_key_expires_within_the_stated_slack,
    rewrite_without_ttl_makes_the_key_permanent,
    rewrite_with_ttl_extends_the_life,
    atomic_put_with_ttl_expires,
    watch_reports_ttl_expiry_as_none,
    tree_changes_report_ttl_expiry_as_a_deletion,
    zero_ttl_is_an_invalid_argument,
    ttl_beyond_the_backends_maximum_is_refused_before_any_write,
);

async fn ttl_key_is_readable_before_it_expires(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let ttl = test_ttl(&store.capabilities()).max(Duration::from_secs(5));
    store.put("t", "v", PutOptions::ttl(ttl)).await?;
    assert_eq!(store.get("t").await?.value, "v");
    Ok(Done::Passed)
}

async fn ttl_key_expires_within_the_stated_slack(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let caps = store.capabilities();
    let ttl = test_ttl(&caps);
    let start = Instant::now();
    store.put("t", "v", PutOptions::ttl(ttl)).await?;
    let bound = ttl + caps.ttl_slack + Duration::from_secs(1);
    eventually(bound, "ttl key gone", || async {
        matches!(store.exists("t").await, Ok(false))
    })
    .await;
    // Not before its time either (minus a little clock slack).
    assert!(
        start.elapsed() + Duration::from_millis(50) >= ttl,
        "expired after {:?}",
        start.elapsed()
    );
    Ok(Done::Passed)
}

async fn rewrite_without_ttl_makes_the_key_permanent(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let caps = store.capabilities();
    let ttl = test_ttl(&caps);
    store.put("t", "v", PutOptions::ttl(ttl)).await?;
    store.put("t", "forever", PutOptions::new()).await?;
    tokio::time::sleep(ttl + caps.ttl_slack + Duration::from_millis(500)).await;
    assert_eq!(store.get("t").await?.value, "forever");
    Ok(Done::Passed)
}

async fn rewrite_with_ttl_extends_the_life(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let ttl = test_ttl(&store.capabilities()).max(Duration::from_secs(2));
    store.put("t", "1", PutOptions::ttl(ttl)).await?;
    tokio::time::sleep(ttl / 2).await;
    store.put("t", "2", PutOptions::ttl(ttl)).await?;
    // Past the first deadline, well before the second.
    tokio::time::sleep(ttl / 2 + ttl / 4).await;
    assert_eq!(store.get("t").await?.value, "2");
    Ok(Done::Passed)
}

async fn atomic_put_with_ttl_expires(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let caps = store.capabilities();
    let ttl = test_ttl(&caps);
    store
        .atomic_put("t", "v", None, PutOptions::ttl(ttl))
        .await?;
    eventually(
        ttl + caps.ttl_slack + Duration::from_secs(1),
        "ttl key gone",
        || async { matches!(store.exists("t").await, Ok(false)) },
    )
    .await;
    Ok(Done::Passed)
}

async fn watch_reports_ttl_expiry_as_none(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let caps = store.capabilities();
    let ttl = test_ttl(&caps);
    store.put("t", "v", PutOptions::ttl(ttl)).await?;
    let mut watch = store.watch("t").await?;
    assert!(next_item(&mut watch, "initial").await?.is_some());
    let bound = ttl + caps.ttl_slack + Duration::from_secs(2);
    let item = tokio::time::timeout(bound, watch_until_none(&mut watch)).await;
    assert!(
        item.is_ok(),
        "watch did not report the expiry within {bound:?}"
    );
    Ok(Done::Passed)
}

async fn tree_changes_report_ttl_expiry_as_a_deletion(cx: Ctx) -> CaseResult {
    use futures::StreamExt;
    let store = cx.store().await;
    let caps = store.capabilities();
    let ttl = test_ttl(&caps);
    store.put("t/stays", "v", PutOptions::new()).await?;
    store.put("t/goes", "v", PutOptions::ttl(ttl)).await?;
    let mut changes = store.watch_tree_changes("t").await?;
    match next_item(&mut changes, "initial").await? {
        anykv::TreeChange::Snapshot(pairs) => assert_eq!(pairs.len(), 2),
        other => panic!("the first item must be a snapshot, got {other:?}"),
    }
    let bound = ttl + caps.ttl_slack + Duration::from_secs(2);
    let gone = tokio::time::timeout(bound, async {
        while let Some(item) = changes.next().await {
            match item {
                Ok(anykv::TreeChange::Changed { key, pair: None }) => return key,
                // A resync that no longer lists it says the same.
                Ok(anykv::TreeChange::Snapshot(pairs))
                    if pairs.iter().all(|p| p.key != "t/goes") =>
                {
                    return "t/goes".to_owned();
                }
                _ => {}
            }
        }
        panic!("the change stream ended before reporting the expiry");
    })
    .await;
    match gone {
        Ok(key) => assert_eq!(key, "t/goes"),
        Err(_) => panic!("the change stream did not report the expiry within {bound:?}"),
    }
    Ok(Done::Passed)
}

async fn watch_until_none(watch: &mut anykv::WatchStream) {
    use futures::StreamExt;
    while let Some(item) = watch.next().await {
        if let Ok(None) = item {
            return;
        }
    }
    panic!("watch ended before reporting the expiry");
}

async fn zero_ttl_is_an_invalid_argument(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    assert_err!(
        store.put("t", "v", PutOptions::ttl(Duration::ZERO)).await,
        Error::InvalidArgument { .. }
    );
    assert!(!store.exists("t").await?);
    Ok(Done::Passed)
}

async fn ttl_beyond_the_backends_maximum_is_refused_before_any_write(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let caps = store.capabilities();
    let too_long = caps
        .max_ttl
        .checked_add(Duration::from_secs(1))
        .unwrap_or(Duration::MAX);
    let err = store
        .put("t", "v", PutOptions::ttl(too_long))
        .await
        .expect_err("a TTL beyond max_ttl");
    assert!(
        matches!(&err, Error::InvalidArgument { key, .. } if key == "t"),
        "{err}"
    );
    assert!(!store.exists("t").await?);
    if caps.lock_ttl_per_lock {
        let err = store
            .new_lock("l", anykv::LockOptions::new("v").with_ttl(too_long))
            .await
            .expect_err("a lock TTL beyond max_ttl");
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    }
    // The maximum itself is accepted (the key is deleted at once).
    if caps.max_ttl < Duration::from_secs(400 * 24 * 3600) {
        store.put("t", "v", PutOptions::ttl(caps.max_ttl)).await?;
        store.delete("t").await?;
    }
    Ok(Done::Passed)
}
