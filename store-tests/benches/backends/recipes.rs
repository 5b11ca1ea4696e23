//! Item 7: the recipes of anykv-recipes on each backend — queue push→pop
//! latency and drain throughput, the cron handover gap, and discovery's
//! register→seen latency.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anykv::Store;
use anykv_leadership::Candidate;
use anykv_recipes::cron::{LeaderCron, Schedule};
use anykv_recipes::queue::Queue;

use crate::measure::Latency;
use crate::BoxError;

/// Longest wait for any single event.
const PATIENCE: Duration = Duration::from_secs(60);

async fn patient<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T, BoxError> {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .map_err(|_| format!("{what}: nothing within {PATIENCE:?}").into())
}

/// Queue push→pop: a consumer waits in `pop` on its own handle; the time
/// from the start of `push` to `pop` returning that item, `rounds` times.
pub(crate) async fn queue_latency(
    producer: Arc<dyn Store>,
    consumer: Arc<dyn Store>,
    rounds: usize,
) -> Result<Latency, BoxError> {
    let name = "bench-latency";
    let producer = Queue::new(producer, name)?;
    let consumer = Queue::new(consumer, name)?;
    let (popped_tx, mut popped_rx) = tokio::sync::mpsc::unbounded_channel();
    let (next_tx, mut next_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let consuming = tokio::spawn(async move {
        while next_rx.recv().await.is_some() {
            let delivery = consumer.pop().await?;
            let at = Instant::now();
            let payload = delivery.payload().clone();
            delivery.ack().await?;
            if popped_tx.send((payload, at)).is_err() {
                break;
            }
        }
        Ok::<_, anykv::Error>(())
    });
    let mut samples = Vec::with_capacity(rounds);
    let outcome = async {
        for i in 0..rounds {
            next_tx.send(()).map_err(|_| "consumer ended")?;
            // Let the consumer reach its wait before the push.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let start = Instant::now();
            producer.push(format!("item-{i}")).await?;
            let (payload, at) = patient("queue pop", popped_rx.recv())
                .await?
                .ok_or("consumer ended")?;
            if payload != format!("item-{i}").as_bytes() {
                return Err::<_, BoxError>(format!("popped {payload:?}, pushed item-{i}").into());
            }
            samples.push(at.saturating_duration_since(start));
        }
        Ok(())
    }
    .await;
    drop(next_tx);
    consuming.abort();
    outcome?;
    Latency::of(samples)
}

/// Queue drain: `items` pushed first, then `consumers` (each on its own
/// handle) pop and ack until all are done; items per second from the
/// consumers' start to the last ack. Checks every item was delivered once.
pub(crate) async fn queue_throughput(
    producer: Arc<dyn Store>,
    consumers: Vec<Arc<dyn Store>>,
    items: usize,
) -> Result<f64, BoxError> {
    let name = format!("bench-drain-{}", consumers.len());
    let producer = Queue::new(producer, &name)?;
    for i in 0..items {
        producer.push(format!("{i}")).await?;
    }
    let seen = Arc::new(Mutex::new(vec![0u32; items]));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for store in consumers {
        let queue = Queue::new(store, &name)?;
        let seen = Arc::clone(&seen);
        tasks.spawn(async move {
            while let Some(delivery) = queue.try_pop().await? {
                let index: usize = std::str::from_utf8(delivery.payload())
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or("an item that was not pushed")?;
                delivery.ack().await?;
                let mut seen = seen.lock().map_err(|_| "poisoned")?;
                *seen.get_mut(index).ok_or("an item out of range")? += 1;
            }
            Ok::<_, BoxError>(())
        });
    }
    while let Some(done) = patient("queue drain", tasks.join_next()).await? {
        done??;
    }
    let took = start.elapsed();
    let seen = seen.lock().map_err(|_| "poisoned")?;
    if let Some(i) = seen.iter().position(|n| *n != 1) {
        return Err(format!("item {i} was delivered {} times", seen[i]).into());
    }
    Ok(items as f64 / took.as_secs_f64())
}

/// The cron handover gap: two nodes run one 100 ms schedule; `handovers`
/// times the leader resigns, and the lateness of the first firing after it
/// (when it ran minus its fire time) is taken. Checks that no fire time ran
/// twice and none was skipped.
pub(crate) async fn cron_handover_gap(
    handles: [Arc<dyn Store>; 2],
    handovers: usize,
) -> Result<Latency, BoxError> {
    const INTERVAL: Duration = Duration::from_millis(100);
    let (fired_tx, mut fired_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, SystemTime)>();
    let mut nodes = Vec::new();
    for (i, store) in handles.into_iter().enumerate() {
        let candidate = Candidate::new(Arc::clone(&store), "bench-cron/leader", format!("n{i}"));
        let fired = fired_tx.clone();
        let (cron, _errors) = LeaderCron::start(
            candidate,
            store,
            "bench-cron/last",
            Schedule::every(INTERVAL)?,
            move |firing| {
                let _ = fired.send((i, firing.fire_time()));
                async {}
            },
        )
        .await?;
        nodes.push(cron);
    }
    drop(fired_tx);
    let mut fires: Vec<SystemTime> = Vec::new();
    let mut samples = Vec::with_capacity(handovers);
    let outcome = async {
        let (mut leader, first) = patient("first firing", fired_rx.recv())
            .await?
            .ok_or("cron ended")?;
        fires.push(first);
        for _ in 0..handovers {
            nodes[leader].resign().await;
            loop {
                let (node, fire) = patient("next firing", fired_rx.recv())
                    .await?
                    .ok_or("cron ended")?;
                fires.push(fire);
                if node != leader {
                    let late = SystemTime::now().duration_since(fire).unwrap_or_default();
                    samples.push(late);
                    leader = node;
                    break;
                }
            }
        }
        Ok::<_, BoxError>(())
    }
    .await;
    for node in &nodes {
        node.stop().await;
    }
    outcome?;
    for pair in fires.windows(2) {
        if pair[1].duration_since(pair[0]).ok() != Some(INTERVAL) {
            return Err(format!(
                "fire times {:?} then {:?}: a gap or a repeat",
                pair[0], pair[1]
            )
            .into());
        }
    }
    Latency::of(samples)
}

/// Discovery register→seen: a watcher on its own handle; `rounds` times an
/// instance registers, and the time from the start of `register` to the
/// watcher's set holding it is taken; then it deregisters (and the watcher
/// sees it go) before the next round.
pub(crate) async fn discovery_latency(
    registrar: Arc<dyn Store>,
    watcher: Arc<dyn Store>,
    rounds: usize,
) -> Result<Latency, BoxError> {
    use anykv_recipes::discovery::{Discovery, Instance};
    use futures::StreamExt;
    let (mut sets, _errors) = Discovery::new(watcher, "bench-services")
        .watch("web")
        .await?;
    let first = patient("first instance set", sets.next())
        .await?
        .ok_or("watch ended")?;
    if !first.is_empty() {
        return Err(format!("a fresh service has instances: {first:?}").into());
    }
    let discovery = Discovery::new(registrar, "bench-services");
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let id = format!("i{i}");
        let start = Instant::now();
        let registration = discovery
            .register(Instance::new("web", id.as_str(), "127.0.0.1:80"))
            .await?;
        loop {
            let set = patient("registered instance seen", sets.next())
                .await?
                .ok_or("watch ended")?;
            if set.iter().any(|instance| instance.id == id) {
                samples.push(start.elapsed());
                break;
            }
        }
        registration.deregister().await?;
        loop {
            let set = patient("deregistered instance gone", sets.next())
                .await?
                .ok_or("watch ended")?;
            if set.is_empty() {
                break;
            }
        }
    }
    Latency::of(samples)
}
