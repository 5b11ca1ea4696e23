//! Locks: exclusion, handover, loss, fencing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anykv::StoreExt;
use anykv::{Error, LockOptions, PutOptions};

use crate::harness::{assert_err, eventually, CaseResult, Ctx, Done, PATIENCE};

crate::cases::cases!("lock":
    lock_and_unlock,
    try_lock_on_a_held_lock_is_locked,
    try_lock_succeeds_after_release,
    holder_value_is_readable_while_held,
    lock_key_is_absent_after_unlock,
    eight_contenders_never_overlap_and_tokens_increase,
    fencing_token_increases_across_handles,
    release_hands_over_to_a_waiter_promptly,
    dropped_guard_releases_the_lock,
    unlock_dropped_after_its_first_poll_still_releases,
    lost_fires_when_the_lock_key_is_deleted,
    lost_fires_when_the_holder_closes_its_store,
    close_releases_the_lock_for_others,
    unlock_after_loss_reports_lock_lost,
    lock_of_killed_process_is_released,
    timed_out_waits_on_a_held_lock_leave_no_waiter_behind,
    lock_cancelled_mid_acquire_on_a_free_lock_is_released_promptly,
);

/// Handover is event-driven (a watch), so it takes about one round trip. A
/// poll loop with a sleep would blow this bound, a generous one for noisy CI.
const HANDOVER_BOUND: Duration = Duration::from_secs(1);

async fn lock_and_unlock(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let lock = store.new_lock("l", LockOptions::new("me")).await?;
    let guard = lock.lock().await?;
    assert_eq!(guard.key(), "l");
    assert!(!guard.is_lost());
    guard.unlock().await?;
    let again = lock.lock().await?;
    again.unlock().await?;
    Ok(Done::Passed)
}

async fn try_lock_on_a_held_lock_is_locked(cx: Ctx) -> CaseResult {
    let a = cx.store().await;
    let b = cx.store().await;
    let _held = a.new_lock("l", LockOptions::new("a")).await?.lock().await?;
    let other = b.new_lock("l", LockOptions::new("b")).await?;
    assert_err!(other.try_lock().await, Error::Locked { .. });
    Ok(Done::Passed)
}

async fn try_lock_succeeds_after_release(cx: Ctx) -> CaseResult {
    let a = cx.store().await;
    let b = cx.store().await;
    let held = a.new_lock("l", LockOptions::new("a")).await?.lock().await?;
    let other = b.new_lock("l", LockOptions::new("b")).await?;
    held.unlock().await?;
    let guard = other.try_lock().await?;
    guard.unlock().await?;
    Ok(Done::Passed)
}

async fn holder_value_is_readable_while_held(cx: Ctx) -> CaseResult {
    let holder = cx.store().await;
    let reader = cx.store().await;
    let guard = holder
        .new_lock("leader", LockOptions::new("node-1"))
        .await?
        .lock()
        .await?;
    assert_eq!(reader.get("leader").await?.value, "node-1");
    guard.unlock().await?;
    Ok(Done::Passed)
}

async fn lock_key_is_absent_after_unlock(cx: Ctx) -> CaseResult {
    let holder = cx.store().await;
    let reader = cx.store().await;
    let guard = holder
        .new_lock("l", LockOptions::new("x"))
        .await?
        .lock()
        .await?;
    guard.unlock().await?;
    assert_err!(reader.get("l").await, Error::KeyNotFound { .. });
    Ok(Done::Passed)
}

async fn eight_contenders_never_overlap_and_tokens_increase(cx: Ctx) -> CaseResult {
    const CONTENDERS: usize = 8;
    const ROUNDS: usize = 3;
    let inside = Arc::new(AtomicBool::new(false));
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..CONTENDERS {
        let store = cx.store().await;
        let inside = inside.clone();
        let tokens = tokens.clone();
        tasks.push(tokio::spawn(async move {
            let lock = store
                .new_lock("l", LockOptions::new(format!("c{i}")))
                .await?;
            for _ in 0..ROUNDS {
                let guard = lock.lock().await?;
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                tokens
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(guard.fencing_token());
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.store(false, Ordering::SeqCst);
                guard.unlock().await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for task in tasks {
        tokio::time::timeout(PATIENCE * 6, task).await???;
    }
    let tokens = tokens.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(tokens.len(), CONTENDERS * ROUNDS);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens not strictly increasing in grant order: {tokens:?}"
    );
    Ok(Done::Passed)
}

async fn fencing_token_increases_across_handles(cx: Ctx) -> CaseResult {
    let a = cx.store().await;
    let b = cx.store().await;
    let first = a.new_lock("l", LockOptions::new("a")).await?.lock().await?;
    let t1 = first.fencing_token();
    first.unlock().await?;
    // Unrelated writes in between must not confuse the order.
    b.put("noise", "n", PutOptions::new()).await?;
    let second = b.new_lock("l", LockOptions::new("b")).await?.lock().await?;
    let t2 = second.fencing_token();
    second.unlock().await?;
    let third = a.new_lock("l", LockOptions::new("a")).await?.lock().await?;
    assert!(
        t1 < t2 && t2 < third.fencing_token(),
        "{t1} {t2} {}",
        third.fencing_token()
    );
    third.unlock().await?;
    Ok(Done::Passed)
}

async fn release_hands_over_to_a_waiter_promptly(cx: Ctx) -> CaseResult {
    let a = cx.store().await;
    let b = cx.store().await;
    for round in 0..5 {
        let held = a.new_lock("l", LockOptions::new("a")).await?.lock().await?;
        let waiter_lock = b.new_lock("l", LockOptions::new("b")).await?;
        let waiter = tokio::spawn(async move {
            let guard = waiter_lock.lock().await?;
            Ok::<_, Error>((Instant::now(), guard))
        });
        // Let the waiter start waiting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "waiter got a held lock");
        let released = Instant::now();
        held.unlock().await?;
        let (acquired, guard) = tokio::time::timeout(PATIENCE, waiter).await???;
        let handover = acquired.duration_since(released);
        assert!(
            handover < HANDOVER_BOUND,
            "round {round}: handover took {handover:?}; waiters must be woken by a watch"
        );
        guard.unlock().await?;
    }
    Ok(Done::Passed)
}

async fn dropped_guard_releases_the_lock(cx: Ctx) -> CaseResult {
    let a = cx.store().await;
    let b = cx.store().await;
    let held = a.new_lock("l", LockOptions::new("a")).await?.lock().await?;
    drop(held);
    let other = b.new_lock("l", LockOptions::new("b")).await?;
    let guard = tokio::time::timeout(PATIENCE, other.lock()).await??;
    guard.unlock().await?;
    Ok(Done::Passed)
}

/// `unlock()` polled once, then dropped (a caller that gave up at once):
/// the release it started still runs to its end, so a waiter gets the lock
/// within a hand-over's bound, long before the holder's session or lock TTL
/// could have freed it.
async fn unlock_dropped_after_its_first_poll_still_releases(cx: Ctx) -> CaseResult {
    use futures::FutureExt;
    let a = cx.store().await;
    let b = cx.store().await;
    let held = a.new_lock("l", LockOptions::new("a")).await?.lock().await?;
    let other = b.new_lock("l", LockOptions::new("b")).await?;
    let waiter = tokio::spawn(async move { other.lock().await });
    // Let the waiter queue up before the release.
    tokio::time::sleep(Duration::from_millis(100)).await;
    if let Some(unlocked) = held.unlock().now_or_never() {
        unlocked?;
    }
    let guard = tokio::time::timeout(HANDOVER_BOUND, waiter)
        .await
        .map_err(|_| "the waiter did not get the lock after a dropped unlock()")???;
    guard.unlock().await?;
    Ok(Done::Passed)
}

async fn lost_fires_when_the_lock_key_is_deleted(cx: Ctx) -> CaseResult {
    let holder = cx.store().await;
    let intruder = cx.store().await;
    let guard = holder
        .new_lock("l", LockOptions::new("h"))
        .await?
        .lock()
        .await?;
    let lost = guard.lost();
    intruder.delete("l").await?;
    tokio::time::timeout(PATIENCE, lost)
        .await
        .map_err(|_| "lost() did not fire after the lock key was deleted")?;
    assert!(guard.is_lost());
    Ok(Done::Passed)
}

async fn lost_fires_when_the_holder_closes_its_store(cx: Ctx) -> CaseResult {
    let holder = cx.store().await;
    let guard = holder
        .new_lock("l", LockOptions::new("h"))
        .await?
        .lock()
        .await?;
    let lost = guard.lost();
    holder.close().await?;
    tokio::time::timeout(PATIENCE, lost)
        .await
        .map_err(|_| "lost() did not fire after the holder's store was closed")?;
    Ok(Done::Passed)
}

async fn close_releases_the_lock_for_others(cx: Ctx) -> CaseResult {
    let holder = cx.store().await;
    let other = cx.store().await;
    let _guard = holder
        .new_lock("l", LockOptions::new("h"))
        .await?
        .lock()
        .await?;
    holder.close().await?;
    let lock = other.new_lock("l", LockOptions::new("o")).await?;
    let guard = tokio::time::timeout(PATIENCE, lock.lock()).await??;
    assert_eq!(other.get("l").await?.value, "o");
    guard.unlock().await?;
    Ok(Done::Passed)
}

async fn unlock_after_loss_reports_lock_lost(cx: Ctx) -> CaseResult {
    let holder = cx.store().await;
    let intruder = cx.store().await;
    let guard = holder
        .new_lock("l", LockOptions::new("h"))
        .await?
        .lock()
        .await?;
    intruder.delete("l").await?;
    tokio::time::timeout(PATIENCE, guard.lost())
        .await
        .map_err(|_| "lost() did not fire")?;
    assert_err!(guard.unlock().await, Error::LockLost { .. });
    Ok(Done::Passed)
}

async fn lock_of_killed_process_is_released(cx: Ctx) -> CaseResult {
    let observer = cx.store().await;
    let caps = observer.capabilities();
    if !caps.shared_between_processes {
        return Ok(Done::NotApplicable(format!(
            "{} stores live in one process: no other process can hold a lock",
            caps.backend
        )));
    }
    let mut child = cx.spawn_child();
    let lock = observer
        .new_lock("lock", LockOptions::new("observer"))
        .await?;
    assert_err!(lock.try_lock().await, Error::Locked { .. });
    child.kill();
    let bound = caps.session_ttl + caps.session_slack + Duration::from_secs(2);
    let started = Instant::now();
    let guard = tokio::time::timeout(bound, lock.lock())
        .await
        .map_err(|_| format!("lock of a killed process not released within {bound:?}"))??;
    assert!(started.elapsed() <= bound);
    eventually(Duration::from_secs(1), "holder value is ours", || async {
        observer
            .get("lock")
            .await
            .is_ok_and(|p| p.value == "observer")
    })
    .await;
    guard.unlock().await?;
    Ok(Done::Passed)
}

/// How long a cancelled acquisition may take to clean up after itself: half
/// the session TTL, so that the session's end (which would free anything
/// left behind, but only after a full TTL) cannot be what makes a case pass.
fn cleanup_window(caps: &anykv::Capabilities) -> Duration {
    caps.session_ttl / 2
}

/// Retries `try_lock` on `lock` (a handle that holds nothing) until it takes
/// the lock or `window` passes; returns how long it took.
async fn take_within(
    lock: &anykv::Lock,
    window: Duration,
    what: &str,
) -> Result<Duration, Box<dyn std::error::Error + Send + Sync>> {
    let start = Instant::now();
    loop {
        match lock.try_lock().await {
            Ok(guard) => {
                let took = start.elapsed();
                guard.unlock().await?;
                return Ok(took);
            }
            Err(e) if e.is_transient() || matches!(e, Error::Locked { .. }) => {
                if start.elapsed() > window {
                    return Err(format!(
                        "{what}: the lock could not be taken within {window:?} (last: {e})"
                    )
                    .into());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn timed_out_waits_on_a_held_lock_leave_no_waiter_behind(cx: Ctx) -> CaseResult {
    let holder = cx.store().await;
    let impatient = cx.store().await;
    let third = cx.store().await;
    let window = cleanup_window(&holder.capabilities());
    let held = holder
        .new_lock("l", LockOptions::new("holder"))
        .await?
        .lock()
        .await?;
    let lock = impatient
        .new_lock("l", LockOptions::new("impatient"))
        .await?;
    for (round, millis) in [0u64, 1, 5, 20, 50, 100].into_iter().enumerate() {
        let outcome = tokio::time::timeout(Duration::from_millis(millis), lock.lock()).await;
        assert!(
            outcome.is_err(),
            "round {round}: lock() got a held lock: {outcome:?}"
        );
    }
    held.unlock().await?;
    // Nothing the abandoned waits left (a waiter key, a queued claim) may
    // block a try_lock, which only succeeds on a free lock with no queue.
    let other = third.new_lock("l", LockOptions::new("third")).await?;
    take_within(&other, window, "after the holder unlocked").await?;
    // And no waiter state is visible in the namespace.
    eventually(window, "no keys left in the namespace", || async {
        third.list("").await.is_ok_and(|keys| keys.is_empty())
    })
    .await;
    // The impatient handle itself is not blocked by its own leftovers.
    take_within(&lock, window, "the impatient handle afterwards").await?;
    Ok(Done::Passed)
}

async fn lock_cancelled_mid_acquire_on_a_free_lock_is_released_promptly(cx: Ctx) -> CaseResult {
    const STEPS: u64 = 25;
    let canceller = cx.store().await;
    let checker = cx.store().await;
    let window = cleanup_window(&canceller.capabilities());
    let lock = canceller
        .new_lock("l", LockOptions::new("cancelled"))
        .await?;
    let other = checker.new_lock("l", LockOptions::new("checker")).await?;
    let started = Instant::now();
    let (mut granted, mut cancelled) = (0, 0);
    for step in 0..=STEPS {
        // 0 to 5 ms in 200 µs steps: some cancellations land before the
        // write, some while it is in flight, some after it was applied.
        let delay = Duration::from_micros(step * 200);
        match tokio::time::timeout(delay, lock.lock()).await {
            Ok(guard) => {
                granted += 1;
                guard?.unlock().await?;
            }
            Err(_) => {
                cancelled += 1;
                take_within(
                    &other,
                    window,
                    &format!("after lock() was cancelled at {delay:?}"),
                )
                .await?;
            }
        }
        assert!(started.elapsed() < PATIENCE * 6, "the sweep took too long");
    }
    assert_eq!(granted + cancelled, STEPS + 1);
    Ok(Done::Passed)
}
