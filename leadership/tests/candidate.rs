//! Candidate API behaviour on the memory store. (Behaviour that depends on
//! the backend is in the conformance suite's `leadership` group, which runs
//! on every backend.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use anykv::StoreExt;
use anykv::{Error, Store};
use anykv_leadership::Candidate;
use futures::{Stream, StreamExt};

const PATIENCE: Duration = Duration::from_secs(10);

async fn next<S: Stream + Unpin>(stream: &mut S) -> S::Item {
    match tokio::time::timeout(PATIENCE, stream.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("the stream ended"),
        Err(_) => panic!("nothing arrived within {PATIENCE:?}"),
    }
}

async fn quiet<S: Stream + Unpin>(stream: &mut S, for_: Duration)
where
    S::Item: std::fmt::Debug,
{
    if let Ok(item) = tokio::time::timeout(for_, stream.next()).await {
        panic!("expected nothing, got {item:?}");
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < PATIENCE,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

async fn store(name: &str) -> Arc<dyn Store> {
    anykv::open(&format!("memory://candidate-tests-{name}"))
        .await
        .expect("memory store")
}

#[tokio::test]
async fn a_second_run_while_campaigning_is_rejected_and_a_stopped_candidate_runs_again() {
    let store = store("rerun").await;
    let candidate = Candidate::new(store, "leader", "n1");
    let (mut elected, _errors) = candidate.run_for_election().await.expect("run");
    assert!(!next(&mut elected).await);
    assert!(next(&mut elected).await);
    match candidate.run_for_election().await {
        Err(Error::InvalidArgument { key, .. }) => assert_eq!(key, "leader"),
        other => panic!("expected InvalidArgument, got {:?}", other.map(|_| ())),
    }
    assert!(
        candidate.is_leader(),
        "the rejected run left the campaign alone"
    );

    candidate.stop().await;
    assert!(!next(&mut elected).await);
    assert_eq!(next_or_end(&mut elected).await, None);
    let (mut elected, _errors) = candidate.run_for_election().await.expect("run again");
    assert!(!next(&mut elected).await);
    assert!(next(&mut elected).await);
    assert!(candidate.is_leader());
}

async fn next_or_end<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("the stream neither ended nor yielded")
}

#[tokio::test]
async fn final_errors_are_returned_before_campaigning() {
    let store = store("final").await;
    let bad_key = Candidate::new(store.clone(), "a//b", "n1");
    assert!(matches!(
        bad_key.run_for_election().await,
        Err(Error::InvalidKey { .. })
    ));
    store.close().await.expect("close");
    let closed = Candidate::new(store, "leader", "n1");
    assert!(matches!(
        closed.run_for_election().await,
        Err(Error::Closed { .. })
    ));
    assert!(!closed.is_leader());
    // Nothing runs, so these return at once.
    closed.resign().await;
    closed.stop().await;
}

#[tokio::test]
async fn durations_beyond_the_bound_are_refused_naming_the_option() {
    let store = store("bounds").await;
    let over = anykv::types::MAX_DURATION + Duration::from_nanos(1);
    for candidate in [
        Candidate::new(store.clone(), "leader", "n1").resign_grace(over),
        Candidate::new(store.clone(), "leader", "n1").resign_grace(Duration::MAX),
    ] {
        match candidate.run_for_election().await {
            Err(e @ Error::InvalidArgument { .. }) => {
                assert!(e.to_string().contains("resign grace"), "{e}")
            }
            other => panic!("expected InvalidArgument, got {:?}", other.map(|_| ())),
        }
        assert!(!candidate.is_leader());
    }
    for candidate in [
        Candidate::new(store.clone(), "leader", "n1").ttl(over),
        Candidate::new(store.clone(), "leader", "n1").ttl(Duration::ZERO),
    ] {
        match candidate.run_for_election().await {
            Err(e @ Error::InvalidArgument { .. }) => {
                assert!(e.to_string().contains("ttl"), "{e}")
            }
            other => panic!("expected InvalidArgument, got {:?}", other.map(|_| ())),
        }
    }
    // The bound itself, and a zero grace, are fine.
    let candidate = Candidate::new(store, "leader", "n1")
        .resign_grace(anykv::types::MAX_DURATION)
        .ttl(anykv::types::MAX_DURATION);
    let (mut elected, _errors) = candidate.run_for_election().await.expect("run");
    assert!(!next(&mut elected).await);
    assert!(next(&mut elected).await);
    candidate.stop().await;
}

#[tokio::test]
async fn two_terms_read_late_are_separated_by_false() {
    let store = store("two-terms").await;
    let candidate = Candidate::new(store.clone(), "leader", "n1");
    let (mut elected, mut errors) = candidate.run_for_election().await.expect("run");
    assert!(!next(&mut elected).await);
    assert!(next(&mut elected).await);
    let first = candidate.leader_token().expect("leading");

    // The term ends (the lock key is deleted) and a new one begins while
    // nobody reads the stream.
    store.delete("leader").await.expect("delete");
    eventually("a second term", || {
        candidate.leader_token().is_some_and(|t| t > first)
    })
    .await;
    assert!(
        !next(&mut elected).await,
        "the first term's end is reported"
    );
    assert!(next(&mut elected).await, "then the new term");
    assert!(matches!(next(&mut errors).await, Error::LockLost { .. }));
}

#[tokio::test]
async fn a_term_that_ended_unread_is_never_reported_as_true() {
    let store = store("unread").await;
    let a = Candidate::new(store.clone(), "leader", "a");
    let (mut a_elected, _a_errors) = a.run_for_election().await.expect("run a");
    eventually("a leads", || a.is_leader()).await;
    let b = Candidate::new(store.clone(), "leader", "b");
    let (mut b_elected, _b_errors) = b.run_for_election().await.expect("run b");
    assert!(!next(&mut b_elected).await);
    a.resign().await;
    assert!(next(&mut b_elected).await);
    // a's whole term happened unread; reading now shows only that it is not
    // leader.
    assert!(!next(&mut a_elected).await);
    quiet(&mut a_elected, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn alone_a_resigned_leader_leads_again_after_the_grace() {
    let store = store("grace").await;
    let grace = Duration::from_millis(100);
    let candidate = Candidate::new(store, "leader", "n1").resign_grace(grace);
    let (mut elected, _errors) = candidate.run_for_election().await.expect("run");
    assert!(!next(&mut elected).await);
    assert!(next(&mut elected).await);
    let resigned = Instant::now();
    candidate.resign().await;
    assert!(!candidate.is_leader());
    assert!(!next(&mut elected).await);
    assert!(next(&mut elected).await);
    let out = resigned.elapsed();
    assert!(out >= grace && out < grace * 10, "out for {out:?}");
}

#[tokio::test]
async fn stop_is_prompt_while_waiting_for_the_lock() {
    let store = store("stop-waiting").await;
    let leader = Candidate::new(store.clone(), "leader", "a");
    let (mut leader_elected, _e) = leader.run_for_election().await.expect("run a");
    assert!(!next(&mut leader_elected).await);
    assert!(next(&mut leader_elected).await);
    let waiter = Candidate::new(store.clone(), "leader", "b");
    let (mut waiter_elected, _e) = waiter.run_for_election().await.expect("run b");
    assert!(!next(&mut waiter_elected).await);
    let asked = Instant::now();
    waiter.stop().await;
    assert!(asked.elapsed() < Duration::from_secs(1));
    assert_eq!(next_or_end(&mut waiter_elected).await, None);
    assert!(leader.is_leader());
    assert_eq!(store.get("leader").await.expect("held").value, "a");
}

#[tokio::test]
async fn the_error_stream_keeps_the_latest_32_errors() {
    let store = store("errors").await;
    let candidate = Candidate::new(store.clone(), "leader", "n1");
    let (_elected, errors) = candidate.run_for_election().await.expect("run");
    let mut token = 0;
    for _ in 0..40 {
        eventually("leading", || {
            candidate.leader_token().is_some_and(|t| t > token)
        })
        .await;
        token = candidate.leader_token().unwrap_or(token);
        store.delete("leader").await.expect("delete");
    }
    eventually("leading again", || {
        candidate.leader_token().is_some_and(|t| t > token)
    })
    .await;
    candidate.stop().await;
    let errors: Vec<Error> = errors.collect().await;
    assert_eq!(errors.len(), 32, "{errors:?}");
    assert!(errors.iter().all(|e| matches!(e, Error::LockLost { .. })));
}

#[tokio::test]
async fn a_dropped_candidate_leaves_no_task_and_frees_the_leadership() {
    let store = store("drop").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = alive_tasks();
    let candidate = Candidate::new(store.clone(), "leader", "n1");
    let (mut elected, errors) = candidate.run_for_election().await.expect("run");
    assert!(!next(&mut elected).await);
    assert!(next(&mut elected).await);
    drop(candidate);
    assert!(!next(&mut elected).await);
    assert_eq!(next_or_end(&mut elected).await, None);
    drop(errors);
    eventually("no task left", || alive_tasks() <= before).await;
    assert!(!store.exists("leader").await.expect("exists"));
}

#[tokio::test]
async fn many_candidates_elect_exactly_one_and_fail_over_on_drop() {
    let store = store("many").await;
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut streams = Vec::new();
    for i in 0..10 {
        let handle = anykv::open("memory://candidate-tests-many")
            .await
            .expect("handle");
        let candidate = Candidate::new(handle, "leader", format!("n{i}"));
        streams.push(candidate.run_for_election().await.expect("run"));
        candidates.push(candidate);
    }
    for _ in 0..9 {
        eventually("one leader", || {
            candidates.iter().filter(|c| c.is_leader()).count() == 1
        })
        .await;
        let leader = candidates
            .iter()
            .position(|c| c.is_leader())
            .expect("a leader");
        let token = candidates[leader].leader_token();
        assert_eq!(
            store.get("leader").await.expect("held").value,
            candidates[leader].node_id().as_bytes()
        );
        drop(candidates.remove(leader)); // dropping stops it
        eventually("a new leader", || {
            candidates.iter().any(|c| c.leader_token() > token)
        })
        .await;
    }
}

#[test]
fn without_a_tokio_runtime_running_is_an_error_not_a_panic() {
    futures::executor::block_on(async {
        let store = anykv::open("memory://").await.expect("memory store");
        let candidate = Candidate::new(store.clone(), "leader", "n1");
        assert!(matches!(
            candidate.run_for_election().await,
            Err(Error::InvalidArgument { .. })
        ));
        let follower = anykv_leadership::Follower::new(store, "leader");
        assert!(matches!(
            follower.follow_election().await,
            Err(Error::InvalidArgument { .. })
        ));
    });
}
