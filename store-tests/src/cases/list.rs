//! list and delete_tree.

use anykv::StoreExt;
use anykv::{KvPair, PutOptions};

use crate::harness::{CaseResult, Ctx, Done};

crate::cases::cases!("list":
    list_returns_keys_below_prefix_sorted,
    list_is_recursive,
    list_of_missing_prefix_is_empty,
    list_excludes_the_prefix_itself_and_name_siblings,
    list_of_empty_prefix_lists_the_namespace,
    list_after_deleting_every_child_is_empty,
    delete_tree_removes_prefix_and_everything_below,
    delete_tree_keeps_name_siblings,
    delete_tree_of_missing_prefix_is_ok,
    put_after_delete_tree_works,
);

fn keys(pairs: Vec<KvPair>) -> Vec<String> {
    pairs.into_iter().map(|p| p.key).collect()
}

async fn list_returns_keys_below_prefix_sorted(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    for k in ["d/c", "d/a", "d/b"] {
        store.put(k, k, PutOptions::new()).await?;
    }
    let listed = store.list("d").await?;
    assert_eq!(keys(listed.clone()), vec!["d/a", "d/b", "d/c"]);
    for pair in listed {
        assert_eq!(pair.value, pair.key.as_bytes());
        assert_eq!(store.get(&pair.key).await?.last_index, pair.last_index);
    }
    Ok(Done::Passed)
}

async fn list_is_recursive(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    for k in ["t/a", "t/b/c", "t/b/d/e"] {
        store.put(k, "v", PutOptions::new()).await?;
    }
    assert_eq!(
        keys(store.list("t").await?),
        vec!["t/a", "t/b/c", "t/b/d/e"]
    );
    assert_eq!(keys(store.list("t/b").await?), vec!["t/b/c", "t/b/d/e"]);
    Ok(Done::Passed)
}

async fn list_of_missing_prefix_is_empty(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    assert!(store.list("nothing/here").await?.is_empty());
    assert!(store.list("").await?.is_empty());
    Ok(Done::Passed)
}

async fn list_excludes_the_prefix_itself_and_name_siblings(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    for k in ["p", "p/x", "pq", "pq/y"] {
        store.put(k, "v", PutOptions::new()).await?;
    }
    assert_eq!(keys(store.list("p").await?), vec!["p/x"]);
    Ok(Done::Passed)
}

async fn list_of_empty_prefix_lists_the_namespace(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    for k in ["b", "a/1", "c/2/3"] {
        store.put(k, "v", PutOptions::new()).await?;
    }
    assert_eq!(keys(store.list("").await?), vec!["a/1", "b", "c/2/3"]);
    assert_eq!(keys(store.list("/").await?), vec!["a/1", "b", "c/2/3"]);
    Ok(Done::Passed)
}

async fn list_after_deleting_every_child_is_empty(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.put("dir/sub/a", "v", PutOptions::new()).await?;
    store.put("dir/b", "v", PutOptions::new()).await?;
    store.delete("dir/sub/a").await?;
    store.delete("dir/b").await?;
    assert!(store.list("dir").await?.is_empty());
    assert!(store.list("").await?.is_empty());
    assert!(
        !store.exists("dir").await?,
        "a parent left behind is not a key"
    );
    Ok(Done::Passed)
}

async fn delete_tree_removes_prefix_and_everything_below(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    for k in ["tree", "tree/a", "tree/b/c"] {
        store.put(k, "v", PutOptions::new()).await?;
    }
    store.delete_tree("tree").await?;
    assert!(!store.exists("tree").await?);
    assert!(store.list("tree").await?.is_empty());
    Ok(Done::Passed)
}

async fn delete_tree_keeps_name_siblings(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    for k in ["tree/a", "treetop", "treetop/x"] {
        store.put(k, "v", PutOptions::new()).await?;
    }
    store.delete_tree("tree").await?;
    assert_eq!(keys(store.list("").await?), vec!["treetop", "treetop/x"]);
    Ok(Done::Passed)
}

async fn delete_tree_of_missing_prefix_is_ok(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.delete_tree("no/such/tree").await?;
    Ok(Done::Passed)
}

async fn put_after_delete_tree_works(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    store.put("re/a/b", "1", PutOptions::new()).await?;
    store.delete_tree("re").await?;
    store.put("re/a/b", "2", PutOptions::new()).await?;
    store.put("re/a", "3", PutOptions::new()).await?;
    assert_eq!(keys(store.list("re").await?), vec!["re/a", "re/a/b"]);
    assert_eq!(store.get("re/a/b").await?.value, "2");
    Ok(Done::Passed)
}
