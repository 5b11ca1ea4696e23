//! Follower API behaviour on the memory store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anykv::StoreExt;
use anykv::{Error, PutOptions, Store};
use anykv_leadership::Follower;
use futures::{Stream, StreamExt};

const PATIENCE: Duration = Duration::from_secs(10);

async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("nothing arrived in time")
}

async fn store(name: &str) -> Arc<dyn Store> {
    anykv::open(&format!("memory://follower-tests-{name}"))
        .await
        .expect("memory store")
}

#[tokio::test]
async fn equal_consecutive_leaders_are_merged_and_changes_come_in_order() {
    let store = store("order").await;
    let (mut leaders, _errors) = Follower::new(store.clone(), "leader")
        .follow_election()
        .await
        .expect("follow");
    assert_eq!(next(&mut leaders).await, Some(None));
    for value in ["a", "a", "b", "b", "c"] {
        store
            .put("leader", value, PutOptions::new())
            .await
            .expect("put");
    }
    store.delete("leader").await.expect("delete");
    let mut seen = Vec::new();
    while seen.last() != Some(&None) {
        seen.push(next(&mut leaders).await.expect("open"));
    }
    assert_eq!(
        seen,
        vec![Some("a".into()), Some("b".into()), Some("c".into()), None]
    );
}

#[tokio::test]
async fn a_closed_store_ends_both_streams_with_a_closed_error() {
    let store = store("closed").await;
    let (mut leaders, errors) = Follower::new(store.clone(), "leader")
        .follow_election()
        .await
        .expect("follow");
    assert_eq!(next(&mut leaders).await, Some(None));
    store.close().await.expect("close");
    assert_eq!(next(&mut leaders).await, None);
    let errors: Vec<Error> = tokio::time::timeout(PATIENCE, errors.collect())
        .await
        .expect("errors end");
    assert!(
        matches!(errors.as_slice(), [Error::Closed { .. }]),
        "{errors:?}"
    );
}

#[tokio::test]
async fn final_errors_are_returned_at_once() {
    let store = store("final").await;
    assert!(matches!(
        Follower::new(store.clone(), "a//b").follow_election().await,
        Err(Error::InvalidKey { .. })
    ));
    store.close().await.expect("close");
    assert!(matches!(
        Follower::new(store, "leader").follow_election().await,
        Err(Error::Closed { .. })
    ));
}

#[tokio::test]
async fn the_task_ends_when_both_streams_are_dropped_not_before() {
    let store = store("drop").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = alive_tasks();
    let follower = Follower::new(store.clone(), "leader");
    let (leaders, mut errors) = follower.follow_election().await.expect("follow");
    drop(follower);
    drop(leaders);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        alive_tasks() > before,
        "the error stream still needs the task"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(50), errors.next())
            .await
            .is_err(),
        "no error, and the stream is still open"
    );
    drop(errors);
    let start = Instant::now();
    while alive_tasks() > before {
        assert!(start.elapsed() < PATIENCE, "the follow task did not end");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}
