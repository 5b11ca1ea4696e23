//! One pub/sub connection per store handle, shared by its watches and locks.
//!
//! A task owns the connection. Watchers register a [`Topic`] and get a
//! [`Subscription`]: the first registration of a topic subscribes on the
//! server (and waits for the server's confirmation, so no message published
//! after [`Hub::subscribe`] returns is missed), the last one to drop
//! unsubscribes. A message carries the changed key (its channel) and the
//! version of the change; the hub keeps the highest version per
//! subscription and wakes its owner. A subscription made with
//! [`Hub::subscribe_changes`] also logs which keys changed, up to
//! [`MAX_LOGGED`] of them; past that the log says it overflowed and its
//! owner re-syncs. Nothing else queues up behind a slow watcher.
//!
//! The connection is opened on the first subscription and closed (with its
//! driver task) shortly after the last one ends, so no server-side
//! subscription or task outlives the watches that needed it.
//!
//! When the connection breaks, [`Link::outages`] goes up at once; the task
//! reconnects with backoff, re-subscribes every topic and only then bumps
//! [`Link::epoch`], so a watcher that re-reads after seeing the new epoch
//! cannot miss a change made while the link was down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::error::{map, unavailable};
use super::guarded_connect;
use crate::error::{Error, Result};
use crate::retry::Backoff;
use crate::task::Tasks;
use crate::time::later;

/// How often an idle connection is checked with `PING`, so a silently dead
/// server is noticed even when nothing is published.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long the connection stays open after its last subscription ended,
/// so a watch or lock that comes and goes does not reconnect every time.
const LINGER: Duration = Duration::from_secs(1);

/// What a subscription listens to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    /// One exact channel (`SUBSCRIBE`).
    Channel(String),
    /// A glob pattern (`PSUBSCRIBE`).
    Pattern(String),
}

/// The state of the shared connection, as watchers see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Link {
    /// Connected and every topic subscribed.
    pub up: bool,
    /// Bumped after every (re)connection once all topics are subscribed
    /// again: state read after a new epoch includes every change the link
    /// may have missed.
    pub epoch: u64,
    /// Bumped every time an established connection is lost.
    pub outages: u64,
}

/// How many changed keys a change log holds before it overflows.
pub(crate) const MAX_LOGGED: usize = 16_384;

/// The changes a subscription heard of and its owner has not taken yet.
#[derive(Debug, Default)]
pub(crate) struct ChangeLog {
    /// Channel name and version of each message, in arrival order.
    pub(crate) messages: Vec<(String, u64)>,
    /// Messages were dropped: the owner must re-read everything.
    pub(crate) overflowed: bool,
}

/// The highest change version seen on a topic, and a wake-up for its owner.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    version: AtomicU64,
    notify: Notify,
    /// Only for subscriptions that want each changed key.
    log: Option<std::sync::Mutex<ChangeLog>>,
}

impl Signal {
    /// The highest version announced so far (0 = none).
    pub(crate) fn latest(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Resolves after the next announcement (or at once if one came since
    /// the last call: a wake-up is never lost).
    pub(crate) async fn changed(&self) {
        self.notify.notified().await;
    }

    /// Takes what the change log holds (empty for a plain subscription).
    pub(crate) fn take_log(&self) -> ChangeLog {
        match &self.log {
            // A panic while holding the lock leaves a valid log behind.
            Some(log) => std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner())),
            None => ChangeLog::default(),
        }
    }

    fn announce(&self, channel: &str, version: u64) {
        if let Some(log) = &self.log {
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            if log.overflowed {
                // The owner re-reads everything anyway.
            } else if log.messages.len() < MAX_LOGGED {
                log.messages.push((channel.to_owned(), version));
            } else {
                log.overflowed = true;
                log.messages = Vec::new();
            }
        }
        self.version.fetch_max(version, Ordering::AcqRel);
        self.notify.notify_one();
    }
}

/// A registration on the hub; dropping it unregisters (and unsubscribes on
/// the server when it was the topic's last one).
#[derive(Debug)]
pub(crate) struct Subscription {
    id: u64,
    topic: Topic,
    signal: Arc<Signal>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Subscription {
    /// The change signal of this subscription.
    pub(crate) fn signal(&self) -> &Signal {
        &self.signal
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Fails only when the hub task is gone, and then nothing is left
        // to unsubscribe.
        let _ = self.commands.send(Command::Unsubscribe {
            topic: self.topic.clone(),
            id: self.id,
        });
    }
}

enum Command {
    Subscribe {
        topic: Topic,
        id: u64,
        signal: Arc<Signal>,
        ack: oneshot::Sender<Result<()>>,
    },
    Unsubscribe {
        topic: Topic,
        id: u64,
    },
}

/// The handle on the hub task; the task ends when this is dropped or the
/// store is closed.
#[derive(Debug)]
pub(crate) struct Hub {
    commands: mpsc::UnboundedSender<Command>,
    link: watch::Receiver<Link>,
    next_id: AtomicU64,
    url: String,
    task: JoinHandle<()>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hub {
    /// Starts the hub task. It connects lazily, on the first subscription.
    pub(crate) fn start(
        client: redis::Client,
        url: String,
        connect_timeout: Duration,
        closed: CancellationToken,
        tasks: &Tasks,
    ) -> Hub {
        let (commands, rx) = mpsc::unbounded_channel();
        let (link_tx, link) = watch::channel(Link::default());
        let task = HubTask {
            client,
            url: url.clone(),
            connect_timeout,
            rx,
            link: link_tx,
            topics: HashMap::new(),
            conn: None,
            retry_at: None,
            idle_since: None,
            backoff: Backoff::new(),
        };
        let task = tasks.spawn(task.run(closed));
        Hub {
            commands,
            link,
            next_id: AtomicU64::new(1),
            url,
            task,
        }
    }

    /// Registers on `topic`; returns once the server confirmed the
    /// subscription (or it already existed).
    pub(crate) async fn subscribe(&self, topic: Topic) -> Result<Subscription> {
        self.register(topic, Signal::default()).await
    }

    /// Like [`Hub::subscribe`], with a [`ChangeLog`] of every changed key.
    pub(crate) async fn subscribe_changes(&self, topic: Topic) -> Result<Subscription> {
        let signal = Signal {
            log: Some(Default::default()),
            ..Signal::default()
        };
        self.register(topic, signal).await
    }

    async fn register(&self, topic: Topic, signal: Signal) -> Result<Subscription> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(signal);
        let (ack, answer) = oneshot::channel();
        let closed = || Error::Closed {
            url: self.url.clone(),
        };
        self.commands
            .send(Command::Subscribe {
                topic: topic.clone(),
                id,
                signal: signal.clone(),
                ack,
            })
            .map_err(|_| closed())?;
        // Built before waiting, so a cancelled caller still unregisters.
        let subscription = Subscription {
            id,
            topic,
            signal,
            commands: self.commands.clone(),
        };
        answer.await.map_err(|_| closed())??;
        Ok(subscription)
    }

    /// The connection state, for watchers.
    pub(crate) fn link(&self) -> watch::Receiver<Link> {
        self.link.clone()
    }
}

struct Conn {
    sink: PubSubSink,
    stream: PubSubStream,
}

struct HubTask {
    client: redis::Client,
    url: String,
    connect_timeout: Duration,
    rx: mpsc::UnboundedReceiver<Command>,
    link: watch::Sender<Link>,
    topics: HashMap<Topic, HashMap<u64, Arc<Signal>>>,
    conn: Option<Conn>,
    retry_at: Option<Instant>,
    /// When the last subscription ended (the connection closes `LINGER`
    /// later unless a new one comes).
    idle_since: Option<Instant>,
    backoff: Backoff,
}

impl HubTask {
    async fn run(mut self, closed: CancellationToken) {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let retry_at = self.retry_at;
            let close_at = self.idle_since.map(|t| t + LINGER);
            tokio::select! {
                biased;
                _ = closed.cancelled() => return,
                command = self.rx.recv() => match command {
                    Some(command) => self.command(command).await,
                    None => return,
                },
                message = next_message(&mut self.conn) => match message {
                    Some(message) => self.dispatch(message),
                    None => self.lost("the server closed the pub/sub connection"),
                },
                _ = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    self.retry_at = None;
                    if !self.topics.is_empty() && self.conn.is_none() {
                        if let Err(error) = self.connect().await {
                            tracing::debug!(url = %self.url, %error, "pub/sub reconnect failed");
                            self.schedule_retry();
                        }
                    }
                }
                _ = ping.tick(), if self.conn.is_some() => self.ping().await,
                _ = sleep_until(close_at.unwrap_or_else(Instant::now)), if close_at.is_some() => {
                    self.idle_since = None;
                    if self.topics.is_empty() && self.conn.take().is_some() {
                        tracing::debug!(url = %self.url, "pub/sub connection idle; closed");
                        // Not an outage: nobody is listening.
                        self.link.send_modify(|link| link.up = false);
                    }
                }
            }
        }
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Subscribe {
                topic,
                id,
                signal,
                ack,
            } => {
                let result = self.subscribe(topic, id, signal).await;
                if result.is_err() && self.topics.is_empty() && self.conn.is_some() {
                    // Nobody else needs the connection either.
                    self.idle_since = Some(Instant::now());
                }
                let _ = ack.send(result);
            }
            Command::Unsubscribe { topic, id } => {
                let Some(subscribers) = self.topics.get_mut(&topic) else {
                    return;
                };
                subscribers.remove(&id);
                if !subscribers.is_empty() {
                    return;
                }
                self.topics.remove(&topic);
                if self.topics.is_empty() {
                    self.idle_since = Some(Instant::now());
                }
                if let Some(conn) = self.conn.as_mut() {
                    let sent = match &topic {
                        Topic::Channel(c) => {
                            timeout(self.connect_timeout, conn.sink.unsubscribe(c)).await
                        }
                        Topic::Pattern(p) => {
                            timeout(self.connect_timeout, conn.sink.punsubscribe(p)).await
                        }
                    };
                    if !matches!(sent, Ok(Ok(()))) {
                        self.lost("unsubscribe failed");
                    }
                }
            }
        }
    }

    async fn subscribe(&mut self, topic: Topic, id: u64, signal: Arc<Signal>) -> Result<()> {
        self.idle_since = None;
        if let Some(subscribers) = self.topics.get_mut(&topic) {
            subscribers.insert(id, signal);
            return Ok(());
        }
        if self.conn.is_none() {
            if let Err(error) = self.connect().await {
                if !self.topics.is_empty() && self.retry_at.is_none() {
                    self.schedule_retry();
                }
                return Err(error);
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(unavailable(&self.url, "pub/sub connection is down"));
        };
        let sent = match &topic {
            Topic::Channel(c) => timeout(self.connect_timeout, conn.sink.subscribe(c)).await,
            Topic::Pattern(p) => timeout(self.connect_timeout, conn.sink.psubscribe(p)).await,
        };
        match sent {
            Ok(Ok(())) => {
                self.topics.entry(topic).or_default().insert(id, signal);
                Ok(())
            }
            Ok(Err(e)) => {
                let error = map(e, "pub/sub subscribe", &self.url, self.connect_timeout);
                if error.is_transient() {
                    self.lost("subscribe failed");
                }
                Err(error)
            }
            Err(_) => {
                self.lost("subscribe timed out");
                Err(Error::Timeout {
                    operation: "redis SUBSCRIBE",
                    target: self.url.clone(),
                    after: self.connect_timeout,
                })
            }
        }
    }

    /// Connects and subscribes every registered topic, then announces a new
    /// epoch.
    async fn connect(&mut self) -> Result<()> {
        let client = self.client.clone();
        let pubsub = guarded_connect(&self.url, self.connect_timeout, async move {
            client.get_async_pubsub().await
        })
        .await?;
        let (mut sink, stream) = pubsub.split();
        let channels: Vec<&String> = self
            .topics
            .keys()
            .filter_map(|t| match t {
                Topic::Channel(c) => Some(c),
                Topic::Pattern(_) => None,
            })
            .collect();
        let patterns: Vec<&String> = self
            .topics
            .keys()
            .filter_map(|t| match t {
                Topic::Pattern(p) => Some(p),
                Topic::Channel(_) => None,
            })
            .collect();
        let resubscribed = timeout(self.connect_timeout, async {
            if !channels.is_empty() {
                sink.subscribe(&channels).await?;
            }
            if !patterns.is_empty() {
                sink.psubscribe(&patterns).await?;
            }
            Ok::<(), redis::RedisError>(())
        })
        .await;
        match resubscribed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(map(e, "pub/sub subscribe", &self.url, self.connect_timeout)),
            Err(_) => {
                return Err(Error::Timeout {
                    operation: "redis SUBSCRIBE",
                    target: self.url.clone(),
                    after: self.connect_timeout,
                })
            }
        }
        self.conn = Some(Conn { sink, stream });
        self.backoff.reset();
        self.retry_at = None;
        self.link.send_modify(|link| {
            link.up = true;
            link.epoch += 1;
        });
        tracing::debug!(url = %self.url, topics = self.topics.len(), "pub/sub connected");
        Ok(())
    }

    fn lost(&mut self, why: &str) {
        if self.conn.take().is_some() {
            tracing::info!(url = %self.url, why, "pub/sub connection lost; reconnecting");
            crate::metrics::watch_reconnect("redis");
            self.link.send_modify(|link| {
                link.up = false;
                link.outages += 1;
            });
        }
        if !self.topics.is_empty() && self.retry_at.is_none() {
            self.schedule_retry();
        }
    }

    fn schedule_retry(&mut self) {
        self.retry_at = Some(later(Instant::now(), self.backoff.next_delay()));
    }

    async fn ping(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let answer = timeout(self.connect_timeout, conn.sink.ping::<redis::Value>()).await;
        if !matches!(answer, Ok(Ok(_))) {
            self.lost("PING failed");
        }
    }

    fn dispatch(&mut self, message: redis::Msg) {
        let topic = if message.from_pattern() {
            match message.get_pattern::<String>() {
                Ok(pattern) => Topic::Pattern(pattern),
                Err(_) => return,
            }
        } else {
            Topic::Channel(message.get_channel_name().to_owned())
        };
        let Some(version) = std::str::from_utf8(message.get_payload_bytes())
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        else {
            tracing::debug!(url = %self.url, "ignoring a change message without a version");
            return;
        };
        if let Some(subscribers) = self.topics.get(&topic) {
            let channel = message.get_channel_name();
            for signal in subscribers.values() {
                signal.announce(channel, version);
            }
        }
    }
}

async fn next_message(conn: &mut Option<Conn>) -> Option<redis::Msg> {
    match conn {
        Some(conn) => conn.stream.next().await,
        None => std::future::pending().await,
    }
}
