//! The semaphore (anykv-recipes' `Semaphore`) on this backend: never more
//! than N holders under contention, fencing tokens that increase across
//! every slot, `try_acquire` when full, and a killed holder's permit back
//! within the session TTL.

use std::time::{Duration, Instant};

use anykv::Error;
use anykv_recipes::semaphore::Semaphore;

use super::discovery::CHILD_SEMAPHORE;
use crate::harness::{assert_err, CaseResult, ChildRole, Ctx, Done, PATIENCE};

crate::cases::cases!("recipes":
    semaphore_never_more_than_n_holders_over_200_acquisitions_and_tokens_increase,
    semaphore_try_acquire_fails_while_every_permit_is_held,
    semaphore_killed_holders_permit_comes_back_within_session_ttl_and_slack,
);

const PERMITS: usize = 3;
const CONTENDERS: usize = 8;
const ACQUISITIONS: usize = 200;

/// One holding, on the test's monotonic clock.
#[derive(Clone, Copy, Debug)]
struct Held {
    /// Before `acquire()` was called.
    asked: Instant,
    /// After it returned.
    acquired: Instant,
    /// Before `release()` was called.
    released: Instant,
    token: u64,
}

async fn semaphore_never_more_than_n_holders_over_200_acquisitions_and_tokens_increase(
    cx: Ctx,
) -> CaseResult {
    let mut contenders = Vec::new();
    for c in 0..CONTENDERS {
        let store = cx.store().await;
        let semaphore = Semaphore::new(store, "pool", PERMITS).with_holder(format!("c{c}"));
        let rounds = ACQUISITIONS / CONTENDERS;
        contenders.push(tokio::spawn(async move {
            let mut held = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let asked = Instant::now();
                let permit = tokio::time::timeout(PATIENCE, semaphore.acquire())
                    .await
                    .map_err(|_| format!("no permit within {PATIENCE:?}"))?
                    .map_err(|e| e.to_string())?;
                let acquired = Instant::now();
                assert!(permit.slot() < PERMITS);
                tokio::time::sleep(Duration::from_millis(1)).await;
                let released = Instant::now();
                let token = permit.fencing_token();
                permit.release().await.map_err(|e| e.to_string())?;
                held.push(Held {
                    asked,
                    acquired,
                    released,
                    token,
                });
            }
            Ok::<_, String>(held)
        }));
    }
    let mut all = Vec::with_capacity(ACQUISITIONS);
    for contender in contenders {
        all.extend(contender.await??);
    }
    assert_eq!(all.len(), ACQUISITIONS);

    // Never more than PERMITS holders: sweep the recorded intervals (each
    // lies inside the real holding, so the real overlap is at least this).
    let mut events: Vec<(Instant, i32)> = all
        .iter()
        .flat_map(|h| [(h.acquired, 1), (h.released, -1)])
        .collect();
    // At equal instants, a release counts before an acquisition.
    events.sort();
    let (mut holders, mut most) = (0, 0);
    for (_, step) in events {
        holders += step;
        most = most.max(holders);
    }
    assert!(
        most <= PERMITS as i32,
        "{most} holders at once with {PERMITS} permits"
    );

    // Tokens: all distinct, and a permit asked for after another was
    // granted has a greater token.
    let mut tokens: Vec<u64> = all.iter().map(|h| h.token).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), ACQUISITIONS, "fencing tokens repeat");
    for earlier in &all {
        for later in &all {
            if earlier.acquired < later.asked {
                assert!(
                    earlier.token < later.token,
                    "token {} granted before token {} was asked for",
                    earlier.token,
                    later.token
                );
            }
        }
    }
    Ok(Done::Passed)
}

async fn semaphore_try_acquire_fails_while_every_permit_is_held(cx: Ctx) -> CaseResult {
    let a = Semaphore::new(cx.store().await, "pair", 2);
    let b = Semaphore::new(cx.store().await, "pair", 2);
    let first = a.try_acquire().await?;
    let second = b.try_acquire().await?;
    assert_ne!(first.slot(), second.slot());
    assert!(second.fencing_token() > first.fencing_token());
    assert_err!(a.try_acquire().await, Error::Locked { .. });
    assert_err!(
        Semaphore::new(cx.store().await, "none", 0)
            .try_acquire()
            .await,
        Error::InvalidArgument { .. }
    );

    // A waiter gets the permit that is released, and it is a fresh token.
    let waiter = tokio::spawn(async move { b.acquire().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter waits while both are held"
    );
    let top = second.fencing_token();
    first.release().await?;
    let third = tokio::time::timeout(PATIENCE, waiter).await???;
    assert!(third.fencing_token() > top);
    assert!(!third.is_lost());
    drop(second);
    third.release().await?;
    Ok(Done::Passed)
}

async fn semaphore_killed_holders_permit_comes_back_within_session_ttl_and_slack(
    cx: Ctx,
) -> CaseResult {
    let store = cx.store().await;
    let caps = store.capabilities();
    if !caps.shared_between_processes {
        return Ok(Done::NotApplicable(format!(
            "{} stores live in one process: no other process can hold a permit",
            caps.backend
        )));
    }
    let semaphore = Semaphore::new(store, CHILD_SEMAPHORE, 1);
    let mut child = cx.spawn_child_as(ChildRole::RecipeHolder);
    assert_err!(semaphore.try_acquire().await, Error::Locked { .. });

    let waiting = tokio::spawn(async move { semaphore.acquire().await });
    child.kill();
    let bound = caps.session_ttl + caps.session_slack + Duration::from_secs(2);
    let permit = tokio::time::timeout(bound, waiting).await.map_err(|_| {
        format!("the killed holder's permit did not come back within {bound:?}")
    })???;
    assert!(!permit.is_lost());
    permit.release().await?;
    Ok(Done::Passed)
}
