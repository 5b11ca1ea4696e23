//! The raw-client baseline for lock handover: the least each backend's own
//! client needs for a safe exclusive hold that the next waiter takes as soon
//! as it is given back, without anykv.
//!
//! * etcd: the holder deletes its key; each waiter watches the key from the
//!   revision its failed create saw and, on the delete, creates it again in
//!   a Txn guarded by `create_revision == 0`, with a lease of its own.
//! * ZooKeeper: the holder deletes its ephemeral znode; each waiter has an
//!   exists-watch on it and, when it fires, creates it again.
//! * Redis: the holder runs one script that deletes the key if it still
//!   holds it and publishes on the lock's channel; each waiter is subscribed
//!   to that channel and answers a message with `SET NX PX`.
//! * Consul: the holder releases the key (`?release=`); each waiter has a
//!   blocking query on it and, when it returns with no session holding it,
//!   acquires it (`?acquire=`) with a session of its own.
//!
//! Every waiter is woken by every release (no queue): that is the herd the
//! 50-waiter figure shows for the raw recipe.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anykv::{Lock, LockGuard};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use crate::BoxError;

/// Longest wait for any single event.
const PATIENCE: Duration = Duration::from_secs(60);

/// One participant's connection and identity.
pub(crate) enum RawLock {
    Etcd {
        client: Box<etcd_client::Client>,
        key: String,
        id: String,
        lease: i64,
    },
    Zk {
        client: zk::Client,
        path: String,
    },
    Redis {
        conn: redis::aio::MultiplexedConnection,
        pubsub: redis::aio::PubSub,
        key: String,
        channel: String,
        id: String,
    },
    Consul {
        client: reqwest::Client,
        origin: String,
        key: String,
        session: String,
    },
}

fn origin_of(base: &str, scheme: &str, replacement: &str) -> String {
    base.split('?')
        .next()
        .unwrap_or(base)
        .replacen(scheme, replacement, 1)
        .trim_end_matches('/')
        .to_owned()
}

impl RawLock {
    /// Participant `i` of the lock `name` under the run's namespace.
    pub(crate) async fn connect(
        backend: &str,
        base: &str,
        namespace: &str,
        name: &str,
        i: usize,
    ) -> Result<RawLock, BoxError> {
        let id = format!("raw-{i}");
        Ok(match backend {
            "etcd" => {
                let endpoints = anykv::StoreUrl::parse(base)?.endpoints(2379)?;
                let mut client = etcd_client::Client::connect(&endpoints, None).await?;
                let lease = client.lease_grant(60, None).await?.id();
                RawLock::Etcd {
                    client: Box::new(client),
                    key: format!("{namespace}-raw/{name}"),
                    id,
                    lease,
                }
            }
            "zookeeper" => {
                let hosts = origin_of(base, "zk://", "");
                let client = zk::Client::connector()
                    .with_session_timeout(Duration::from_secs(10))
                    .connect(&hosts)
                    .await?;
                let parent = format!("/{namespace}-raw-locks");
                let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                match client.create(&parent, b"", &persistent).await {
                    Ok(_) | Err(zk::Error::NodeExists) => {}
                    Err(e) => return Err(e.into()),
                }
                RawLock::Zk {
                    client,
                    path: format!("{parent}/{name}"),
                }
            }
            "redis" => {
                let client = redis::Client::open(base)?;
                let conn = client.get_multiplexed_async_connection().await?;
                let mut pubsub = client.get_async_pubsub().await?;
                let channel = format!("{namespace}-raw/{name}/released");
                pubsub.subscribe(&channel).await?;
                RawLock::Redis {
                    conn,
                    pubsub,
                    key: format!("{namespace}-raw/{name}"),
                    channel,
                    id,
                }
            }
            "consul" => {
                let origin = origin_of(base, "consul://", "http://");
                let client = reqwest::Client::builder()
                    .use_rustls_tls()
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .build()?;
                let created: serde_json::Value = client
                    .put(format!("{origin}/v1/session/create"))
                    .body(r#"{"TTL":"60s","LockDelay":"0s"}"#)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let session = created["ID"]
                    .as_str()
                    .ok_or("session create without an ID")?
                    .to_owned();
                RawLock::Consul {
                    client,
                    origin,
                    key: format!("{namespace}-raw/{name}"),
                    session,
                }
            }
            other => return Err(format!("no raw lock for {other}").into()),
        })
    }
}

/// One side of a handover measurement: something that waits for an
/// exclusive hold and gives it back — anykv's lock ([`AnykvLock`]) or the
/// raw recipe ([`RawLock`]).
pub(crate) trait Participant: Send + 'static {
    /// Waits until this participant holds the lock.
    fn acquire(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send;
    /// Gives the lock back.
    fn release(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send;
    /// Ends what this participant made on the server.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// anykv's lock as a participant.
pub(crate) struct AnykvLock {
    lock: Lock,
    guard: Option<LockGuard>,
}

impl AnykvLock {
    pub(crate) fn new(lock: Lock) -> Self {
        AnykvLock { lock, guard: None }
    }
}

impl Participant for AnykvLock {
    async fn acquire(&mut self) -> Result<(), BoxError> {
        self.guard = Some(self.lock.lock().await?);
        Ok(())
    }

    async fn release(&mut self) -> Result<(), BoxError> {
        match self.guard.take() {
            Some(guard) => Ok(guard.unlock().await?),
            None => Ok(()),
        }
    }

    async fn close(mut self) {
        let _ = self.release().await;
    }
}

impl Participant for RawLock {
    async fn acquire(&mut self) -> Result<(), BoxError> {
        match self {
            RawLock::Etcd {
                client,
                key,
                id,
                lease,
            } => loop {
                use etcd_client::{Compare, CompareOp, EventType, Txn, TxnOp};
                let put = etcd_client::PutOptions::new().with_lease(*lease);
                let txn = Txn::new()
                    .when(vec![Compare::create_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then(vec![TxnOp::put(key.as_str(), id.as_str(), Some(put))]);
                let response = client.txn(txn).await?;
                if response.succeeded() {
                    return Ok(());
                }
                let seen = response.header().map(|h| h.revision()).unwrap_or(0);
                let options = etcd_client::WatchOptions::new().with_start_revision(seen + 1);
                let mut stream = client.watch(key.as_str(), Some(options)).await?;
                'wait: while let Some(message) = stream.message().await? {
                    if message
                        .events()
                        .iter()
                        .any(|e| e.event_type() == EventType::Delete)
                    {
                        break 'wait;
                    }
                }
                // Dropping the stream ends the watch.
                drop(stream);
            },
            RawLock::Zk { client, path } => loop {
                let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
                match client.create(path, b"", &ephemeral).await {
                    Ok(_) => return Ok(()),
                    Err(zk::Error::NodeExists) => {}
                    Err(e) => return Err(e.into()),
                }
                let (stat, watcher) = client.check_and_watch_stat(path).await?;
                if stat.is_some() {
                    watcher.changed().await;
                }
            },
            RawLock::Redis {
                conn,
                pubsub,
                key,
                id,
                ..
            } => loop {
                let set: Option<String> = redis::cmd("SET")
                    .arg(key.as_str())
                    .arg(id.as_str())
                    .arg("NX")
                    .arg("PX")
                    .arg(60_000)
                    .query_async(conn)
                    .await?;
                if set.is_some() {
                    return Ok(());
                }
                pubsub
                    .on_message()
                    .next()
                    .await
                    .ok_or("pub/sub connection ended")?;
            },
            RawLock::Consul {
                client,
                origin,
                key,
                session,
            } => {
                let mut index = 0u64;
                loop {
                    let acquired: bool = client
                        .put(format!("{origin}/v1/kv/{key}?acquire={session}"))
                        .body("held")
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    if acquired {
                        return Ok(());
                    }
                    // Wait until no session holds it (a blocking query
                    // returns at once when `index` is behind).
                    loop {
                        let response = client
                            .get(format!("{origin}/v1/kv/{key}?index={index}&wait=30s"))
                            .send()
                            .await?;
                        index = response
                            .headers()
                            .get("X-Consul-Index")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        if response.status() == reqwest::StatusCode::NOT_FOUND {
                            break;
                        }
                        let entries: serde_json::Value =
                            response.error_for_status()?.json().await?;
                        if entries[0]["Session"].as_str().is_none() {
                            break;
                        }
                    }
                }
            }
        }
    }

    async fn release(&mut self) -> Result<(), BoxError> {
        match self {
            RawLock::Etcd { client, key, .. } => {
                client.delete(key.as_str(), None).await?;
            }
            RawLock::Zk { client, path } => client.delete(path, None).await?,
            RawLock::Redis {
                conn,
                key,
                channel,
                id,
                ..
            } => {
                static RELEASE: std::sync::LazyLock<redis::Script> =
                    std::sync::LazyLock::new(|| {
                        redis::Script::new(
                            "if redis.call('get', KEYS[1]) == ARGV[1] then \
                         redis.call('del', KEYS[1]); redis.call('publish', KEYS[2], '') end",
                        )
                    });
                RELEASE
                    .key(key.as_str())
                    .key(channel.as_str())
                    .arg(id.as_str())
                    .invoke_async::<()>(conn)
                    .await?;
            }
            RawLock::Consul {
                client,
                origin,
                key,
                session,
            } => {
                client
                    .put(format!("{origin}/v1/kv/{key}?release={session}"))
                    .send()
                    .await?
                    .error_for_status()?;
            }
        }
        Ok(())
    }

    async fn close(mut self) {
        if matches!(self, RawLock::Redis { .. }) {
            // A waiter stopped while its `SET NX` was in flight may hold
            // the key without knowing it: the key would block the next
            // round until its expiry, which wakes no one.
            let _ = self.release().await;
            return;
        }
        match self {
            RawLock::Etcd {
                mut client, lease, ..
            } => {
                let _ = client.lease_revoke(lease).await;
            }
            RawLock::Zk { client, .. } => drop(client),
            RawLock::Redis { .. } => {}
            RawLock::Consul {
                client,
                origin,
                session,
                ..
            } => {
                let _ = client
                    .put(format!("{origin}/v1/session/destroy/{session}"))
                    .send()
                    .await;
            }
        }
    }
}

/// Lock handover (item 4b, for anykv and the raw recipe alike): one holder
/// and the other participants waiting, each a task of its own; `handovers`
/// times the holder, [`crate::measure::TERM`] after its acquire returned,
/// releases and the time from the start of its release to the next
/// participant's acquire returning is taken. The one who released
/// queues again once another participant holds the lock: a hand-over goes
/// to a waiter, never back to the releaser (a recipe without a queue, such
/// as the raw ones, would otherwise often be won again by its releaser,
/// which needs no notification, and the figure would not be a hand-over),
/// and the waiters during a hand-over are the others. Checks that no two
/// ever held the lock together and that the lock never went back to the
/// participant that released it.
pub(crate) async fn handover<P: Participant>(
    participants: Vec<P>,
    handovers: usize,
) -> Result<Vec<Duration>, BoxError> {
    let count = participants.len();
    let stop = CancellationToken::new();
    let holders = Arc::new(AtomicUsize::new(0));
    let released_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let waiting = Arc::new(AtomicUsize::new(0));
    let (acquired_tx, mut acquired_rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    // Acquisitions so far, for a releaser waiting for the next holder.
    let (generation, _) = tokio::sync::watch::channel(0u64);
    let generation = Arc::new(generation);
    let mut release_txs = Vec::with_capacity(count);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut lock) in participants.into_iter().enumerate() {
        let (release_tx, mut release_rx) = mpsc::unbounded_channel::<()>();
        release_txs.push(release_tx);
        let generation = Arc::clone(&generation);
        let (stop, holders, released_at, waiting, acquired_tx) = (
            stop.clone(),
            Arc::clone(&holders),
            Arc::clone(&released_at),
            Arc::clone(&waiting),
            acquired_tx.clone(),
        );
        tasks.spawn(async move {
            let outcome = async {
                loop {
                    waiting.fetch_add(1, Ordering::SeqCst);
                    tokio::select! {
                        _ = stop.cancelled() => return Ok::<_, BoxError>(()),
                        acquired = lock.acquire() => acquired?,
                    }
                    let at = Instant::now();
                    waiting.fetch_sub(1, Ordering::SeqCst);
                    if holders.fetch_add(1, Ordering::SeqCst) != 0 {
                        return Err("two participants held the lock at once".into());
                    }
                    let mut mine = 0;
                    generation.send_modify(|g| {
                        *g += 1;
                        mine = *g;
                    });
                    let _ = acquired_tx.send((i, at));
                    let stopping = tokio::select! {
                        _ = stop.cancelled() => true,
                        _ = release_rx.recv() => false,
                    };
                    holders.fetch_sub(1, Ordering::SeqCst);
                    if let Ok(mut slot) = released_at.lock() {
                        *slot = Some(Instant::now());
                    }
                    let mut next_holder = generation.subscribe();
                    lock.release().await?;
                    if stopping {
                        return Ok(());
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        seen = next_holder.wait_for(|g| *g > mine) => {
                            seen.map_err(|_| "acquisition counter dropped")?;
                        }
                    }
                }
            }
            .await;
            lock.close().await;
            outcome
        });
    }
    drop(acquired_tx);

    let result = async {
        let (mut holder, _) = tokio::time::timeout(PATIENCE, acquired_rx.recv())
            .await
            .map_err(|_| "no first holder")?
            .ok_or("lock tasks ended")?;
        let waiters_ready = tokio::time::timeout(PATIENCE, async {
            while waiting.load(Ordering::SeqCst) < count - 1 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if waiters_ready.is_err() {
            return Err::<_, BoxError>("waiters did not start".into());
        }
        // Let every waiter reach its wait (watch, subscription, query).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut samples = Vec::with_capacity(handovers);
        for _ in 0..handovers {
            // The holder keeps the lock a moment, as any holder does, so the
            // last releaser's queueing (a write on a fair lock) has settled
            // and the hand-over timed is this release's alone.
            tokio::time::sleep(crate::measure::TERM).await;
            release_txs[holder]
                .send(())
                .map_err(|_| "holder task ended")?;
            let (next, at) = tokio::time::timeout(PATIENCE, acquired_rx.recv())
                .await
                .map_err(|_| "no next holder")?
                .ok_or("lock tasks ended")?;
            let released = released_at
                .lock()
                .map_err(|_| "poisoned")?
                .take()
                .ok_or("acquired before any release")?;
            if next == holder {
                return Err("the lock went back to the participant that released it".into());
            }
            samples.push(at.saturating_duration_since(released));
            holder = next;
        }
        Ok(samples)
    }
    .await;

    stop.cancel();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(e.into()),
        }
    }
    result
}
