//! The work queue (anykv-recipes' `Queue`) on this backend: exactly-once
//! consumption under concurrency, redelivery after a consumer dies, FIFO
//! order, and acks refused once a claim timed out.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anykv::Error;
use anykv_recipes::queue::Queue;

use crate::harness::{assert_err, CaseResult, ChildRole, Ctx, Done, PATIENCE};
use crate::Factory;

crate::cases::cases!("recipes":
    queue_1000_items_from_4_producers_are_consumed_exactly_once_by_4_consumers,
    queue_item_of_a_consumer_killed_mid_item_is_delivered_again_after_its_visibility_timeout,
    queue_one_producer_and_one_consumer_see_push_order,
    queue_ack_after_the_claim_timed_out_and_was_taken_over_is_refused,
);

const QUEUE: &str = "queue";

/// The visibility timeout of the killed consumer's claim.
const CHILD_VISIBILITY: Duration = Duration::from_secs(2);

/// The child side of the killed-consumer case: claims the one item of the
/// queue and holds the claim, never acking, until killed.
pub(crate) async fn claim_and_hold(
    factory: Factory,
    namespace: String,
) -> Result<impl Send, Error> {
    let store = factory(namespace).await?;
    let queue = Queue::new(store.clone(), QUEUE)?.visibility_timeout(CHILD_VISIBILITY);
    let delivery = match tokio::time::timeout(Duration::from_secs(60), queue.pop()).await {
        Ok(delivery) => delivery?,
        Err(_) => {
            return Err(Error::InvalidArgument {
                key: QUEUE.into(),
                reason: "the consumer child found no item within 60s".into(),
            })
        }
    };
    Ok((store, queue, delivery))
}

async fn queue_1000_items_from_4_producers_are_consumed_exactly_once_by_4_consumers(
    cx: Ctx,
) -> CaseResult {
    const PRODUCERS: usize = 4;
    const CONSUMERS: usize = 4;
    const PER_PRODUCER: usize = 250;
    const TOTAL: usize = PRODUCERS * PER_PRODUCER;
    let consumed = Arc::new(Mutex::new(Vec::<(String, u32)>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let (done_tx, done) = tokio::sync::watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let started = Instant::now();
    let mut consumers = Vec::new();
    for _ in 0..CONSUMERS {
        let queue =
            Queue::new(cx.store().await, QUEUE)?.visibility_timeout(Duration::from_secs(60));
        let (consumed, count, done_tx, mut done) = (
            consumed.clone(),
            count.clone(),
            done_tx.clone(),
            done.clone(),
        );
        consumers.push(tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    _ = done.wait_for(|d| *d) => return Ok::<(), Error>(()),
                    delivery = queue.pop() => delivery?,
                };
                let payload = String::from_utf8_lossy(delivery.payload()).into_owned();
                let attempt = delivery.attempt();
                delivery.ack().await?;
                consumed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((payload, attempt));
                if count.fetch_add(1, Ordering::SeqCst) + 1 >= TOTAL {
                    let _ = done_tx.send(true);
                }
            }
        }));
    }
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let queue = Queue::new(cx.store().await, QUEUE)?;
        producers.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..PER_PRODUCER {
                seqs.push(queue.push(format!("p{p}-{i}")).await?);
            }
            Ok::<_, Error>(seqs)
        }));
    }
    let bound = PATIENCE * 12;
    let mut seqs = Vec::new();
    for producer in producers {
        let mine = tokio::time::timeout(bound, producer)
            .await
            .map_err(|_| "the producers did not finish")???;
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "one producer's sequence numbers must increase"
        );
        seqs.extend(mine);
    }
    let pushed = started.elapsed();
    let mut done_wait = done.clone();
    tokio::time::timeout(bound, done_wait.wait_for(|d| *d))
        .await
        .map_err(|_| {
            format!(
                "only {} of {TOTAL} items consumed",
                count.load(Ordering::SeqCst)
            )
        })??;
    for consumer in consumers {
        tokio::time::timeout(PATIENCE, consumer).await???;
    }
    let all = started.elapsed();
    let consumed = consumed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(consumed.len(), TOTAL, "consumed more or fewer than pushed");
    let distinct: HashSet<&str> = consumed.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(distinct.len(), TOTAL, "an item was consumed twice");
    for p in 0..PRODUCERS {
        for i in 0..PER_PRODUCER {
            assert!(
                distinct.contains(format!("p{p}-{i}").as_str()),
                "p{p}-{i} lost"
            );
        }
    }
    assert!(
        consumed.iter().all(|(_, attempt)| *attempt == 1),
        "an item was delivered more than once"
    );
    let distinct_seqs: HashSet<u64> = seqs.iter().copied().collect();
    assert_eq!(
        distinct_seqs.len(),
        TOTAL,
        "two pushes got one sequence number"
    );
    let checker = Queue::new(cx.store().await, QUEUE)?;
    assert!(checker.is_empty().await?, "acked items left behind");
    timing_note(&format!(
        "{TOTAL} items: pushed in {pushed:?}, all consumed in {all:?}"
    ));
    Ok(Done::Passed)
}

/// Timing notes go to stderr, where the test runner shows them with
/// `--nocapture`; nothing asserts on them.
fn timing_note(note: &str) {
    if std::env::var_os("ANYKV_SUITE_TIMINGS").is_some() {
        eprintln!("{note}");
    }
}

async fn queue_item_of_a_consumer_killed_mid_item_is_delivered_again_after_its_visibility_timeout(
    cx: Ctx,
) -> CaseResult {
    let store = cx.store().await;
    let producer = Queue::new(store.clone(), QUEUE)?;
    producer.push("the work").await?;
    let shared = store.capabilities().shared_between_processes;
    let claimed = Instant::now();
    // The consumer that dies holding the claim: another process, SIGKILLed,
    // where the store is shared between processes; else a handle dropped
    // mid-item.
    if shared {
        let mut child = cx.spawn_child_as(ChildRole::QueueConsumer);
        child.kill();
    } else {
        let held = cx.store_uncached().await;
        let queue = Queue::new(held, QUEUE)?.visibility_timeout(CHILD_VISIBILITY);
        let delivery = queue.pop().await?;
        assert_eq!(delivery.attempt(), 1);
        drop((delivery, queue));
    }
    let consumer = Queue::new(cx.store().await, QUEUE)?;
    if claimed.elapsed() < CHILD_VISIBILITY / 2 {
        // Well within the visibility timeout, the item is still claimed.
        assert!(
            consumer.try_pop().await?.is_none(),
            "the item was delivered again before its visibility timeout"
        );
    }
    let again = tokio::time::timeout(CHILD_VISIBILITY + PATIENCE, consumer.pop())
        .await
        .map_err(|_| "the item was not delivered again")??;
    assert_eq!(again.payload(), "the work");
    assert_eq!(again.attempt(), 2, "the second delivery counts as such");
    again.ack().await?;
    assert!(consumer.is_empty().await?);
    Ok(Done::Passed)
}

async fn queue_one_producer_and_one_consumer_see_push_order(cx: Ctx) -> CaseResult {
    const ITEMS: usize = 60;
    let consumer = Queue::new(cx.store().await, QUEUE)?;
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < ITEMS {
            let delivery = consumer.pop().await?;
            seen.push((
                String::from_utf8_lossy(delivery.payload()).into_owned(),
                delivery.seq(),
            ));
            delivery.ack().await?;
        }
        Ok::<_, Error>(seen)
    });
    // The consumer is waiting on an empty queue: the first push must wake it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let producer = Queue::new(cx.store().await, QUEUE)?;
    let mut pushed = Vec::new();
    for i in 0..ITEMS {
        let payload = format!("item-{i}");
        pushed.push((payload.clone(), producer.push(payload).await?));
        if i % 20 == 19 {
            // Let the consumer drain and wait again now and then.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let seen = tokio::time::timeout(PATIENCE * 3, reader)
        .await
        .map_err(|_| "the consumer did not get every item")???;
    assert_eq!(seen, pushed, "pop order differs from push order");
    Ok(Done::Passed)
}

async fn queue_ack_after_the_claim_timed_out_and_was_taken_over_is_refused(cx: Ctx) -> CaseResult {
    let visibility = Duration::from_millis(300);
    let slow = Queue::new(cx.store().await, QUEUE)?.visibility_timeout(visibility);
    let fast = Queue::new(cx.store().await, QUEUE)?.visibility_timeout(PATIENCE);
    slow.push("job").await?;
    let mut first = slow.pop().await?;
    assert!(fast.try_pop().await?.is_none(), "claimed twice");
    // Extending keeps it claimed past the first deadline.
    first.extend(visibility * 2).await?;
    tokio::time::sleep(visibility + Duration::from_millis(100)).await;
    assert!(
        fast.try_pop().await?.is_none(),
        "an extended claim timed out"
    );
    let second = tokio::time::timeout(PATIENCE, fast.pop())
        .await
        .map_err(|_| "the timed-out claim was not taken over")??;
    assert_eq!(second.attempt(), 2);
    assert_err!(first.ack().await, Error::LockLost { .. });
    second.ack().await?;
    assert!(fast.is_empty().await?);
    Ok(Done::Passed)
}
