//! A durable FIFO work queue over the store: push, a pop that waits (woken
//! by a watch), claims with a visibility timeout, and acks.
//!
//! ```
//! # #[tokio::main] async fn main() -> anykv::Result<()> {
//! use std::time::Duration;
//! use anykv_recipes::queue::Queue;
//!
//! let store = anykv::open("memory://").await?;
//! let producer = Queue::new(store.clone(), "emails")?;
//! let consumer = Queue::new(store, "emails")?.visibility_timeout(Duration::from_secs(30));
//! producer.push("to: ada").await?;
//! producer.push("to: bob").await?;
//! let first = consumer.pop().await?; // waits for an item if there is none
//! assert_eq!(first.payload(), "to: ada"); // FIFO
//! assert_eq!(first.attempt(), 1); // 2, 3, … after a timed-out claim
//! first.ack().await?; // done: the item is gone for good
//! let second = consumer.pop().await?;
//! drop(second); // not acked: delivered again once its claim times out
//! assert!(consumer.try_pop().await?.is_none()); // still claimed
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! A queue `NAME` keeps, in its store:
//!
//! * `NAME/seq`: written by every push; the version the store gives that
//!   write ([`KvPair::last_index`], which strictly increases with every
//!   write of a key and never repeats) is the item's sequence number. So
//!   every push gets a distinct number, in the order the store applied the
//!   pushes, in one write and without producers racing for a number (as
//!   they would with a compare-and-swap counter).
//! * `NAME/items/SEQ`: one key per item, `SEQ` zero-padded to 20 digits, so
//!   that [`anykv::Store::list`]'s key order is push order. The value holds
//!   a small header (the claim, if any, and the delivery count) and the
//!   payload.
//! * `NAME/pushed`: rewritten after every push (and release), only to wake
//!   waiting consumers through a watch on that one key.
//!
//! # Claims and delivery
//!
//! * **Exactly one consumer claims an item** at a time: a claim rewrites
//!   the item with a compare-and-swap on the version the consumer read
//!   ([`anykv::PutMode::Update`]), so of several consumers that try, one
//!   wins; the others move on to the next item. [`Delivery::ack`] deletes
//!   the item only if it still has the claim's version, so a consumer whose
//!   claim timed out and was taken over cannot ack it
//!   ([`Error::LockLost`]).
//! * **Visibility timeout**: a claim records its deadline (the claiming
//!   consumer's wall clock plus the queue's timeout). Once it has passed,
//!   any consumer may claim the item again — the same compare-and-swap —
//!   so the item of a consumer that crashed, hung or dropped its
//!   [`Delivery`] is delivered again, with [`Delivery::attempt`] one higher.
//!   [`Delivery::extend`] pushes the deadline back. The deadline is kept in
//!   the item rather than left to a key TTL because TTLs are coarse on some
//!   backends (Consul: at least 10 s, and up to twice the TTL late; etcd: at
//!   least 2 s) and a TTL write costs a server-side session or lease per
//!   claim there; the price is that consumers' clocks must agree to well
//!   within the timeout (skew makes a redelivery early or late by as much).
//! * Delivery is therefore **at least once**: an item is delivered again
//!   when its consumer does not ack it before its claim times out. An item
//!   whose consumer acks in time is delivered exactly once.
//! * **Order**: items are claimed in push order. One consumer of one
//!   queue gets the items in push order; with several, items *start* in
//!   push order but may finish in any. An item delivered again after a
//!   timeout is taken when a consumer next lists the queue (see below).
//! * **No thundering herd on the items**: a consumer lists the queue once
//!   and works through that listing, trying the items in order; an item
//!   another consumer claimed first (a lost compare-and-swap) is not
//!   retried. After a lost race the consumer also skips a random few of
//!   the next items (up to twice its losses in a row, at most 16), so that
//!   consumers that collided spread out over the listing instead of all
//!   trying the same next item; what it skipped and nobody took it finds
//!   when it lists again, which it does only once its listing is used up. Idle consumers watch the one `pushed` key: a push wakes each
//!   of them for one listing and at most one compare-and-swap, of which one
//!   wins.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anykv::retry::Backoff;
use anykv::{
    Bytes, DeleteOptions, Error, KvPair, PutMode, PutOptions, Result, Store, StoreExt, WatchStream,
};
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

/// The visibility timeout of a [`Queue`] unless set otherwise.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);

/// The header of an item's value.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Header {
    /// How many times the item has been claimed.
    #[serde(default)]
    n: u32,
    /// The claiming consumer, while claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    by: Option<String>,
    /// The claim's deadline, ms since the Unix epoch, while claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until: Option<u64>,
}

fn encode(key: &str, header: &Header, payload: &[u8]) -> Result<Bytes> {
    let mut value = serde_json::to_vec(header).map_err(|e| Error::InvalidArgument {
        key: key.to_owned(),
        reason: format!("cannot encode the queue item header: {e}"),
    })?;
    value.push(b'\n');
    value.extend_from_slice(payload);
    Ok(Bytes::from(value))
}

fn decode(value: &Bytes) -> Option<(Header, Bytes)> {
    let split = value.iter().position(|&b| b == b'\n')?;
    let header = serde_json::from_slice(&value[..split]).ok()?;
    Some((header, value.slice(split + 1..)))
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A random number, for consumer ids and jitter.
fn random() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// A handle on one queue, for producing and consuming. Handles of one
/// queue may live in any number of tasks and processes; each consuming
/// handle keeps its own listing, so give each consumer its own handle (a
/// handle's concurrent [`Queue::pop`] calls take turns).
pub struct Queue {
    store: Arc<dyn Store>,
    name: String,
    seq_key: String,
    items: String,
    pushed_key: String,
    visibility: Duration,
    consumer_id: String,
    consumer: tokio::sync::Mutex<Consumer>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .field("visibility", &self.visibility)
            .field("consumer_id", &self.consumer_id)
            .finish()
    }
}

/// A consuming handle's own state.
#[derive(Default)]
struct Consumer {
    /// The rest of the last listing, in order.
    listing: VecDeque<KvPair>,
    /// The earliest claim deadline seen in the last listing.
    earliest: Option<u64>,
    /// The watch on the `pushed` key, once waiting began.
    watch: Option<WatchStream>,
    backoff: Backoff,
    /// Compare-and-swaps lost in a row.
    losses: u32,
}

impl Queue {
    /// A handle on the queue `name` of `store`. Nothing is written until the
    /// first push. [`Error::InvalidKey`] if `name` is not a valid key.
    pub fn new(store: Arc<dyn Store>, name: &str) -> Result<Queue> {
        let name = anykv::key::normalize_key(name)?;
        static CONSUMERS: AtomicU64 = AtomicU64::new(0);
        let consumer_id = format!(
            "{:x}-{:x}-{}",
            std::process::id(),
            random() & 0xffff_ffff,
            CONSUMERS.fetch_add(1, Ordering::Relaxed)
        );
        Ok(Queue {
            store,
            seq_key: format!("{name}/seq"),
            items: format!("{name}/items"),
            pushed_key: format!("{name}/pushed"),
            name,
            visibility: DEFAULT_VISIBILITY_TIMEOUT,
            consumer_id,
            consumer: tokio::sync::Mutex::new(Consumer::default()),
        })
    }

    /// Sets the visibility timeout of this handle's claims (default
    /// [`DEFAULT_VISIBILITY_TIMEOUT`]): how long after a claim other
    /// consumers may take the item again. At least a millisecond.
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility = timeout.max(Duration::from_millis(1));
        self
    }

    /// The queue's name (its key prefix).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Appends an item; returns its sequence number (increasing with every
    /// push, across all producers, though not by one). A push that fails midway may leave an
    /// unused sequence number behind, never a partial item.
    pub async fn push(&self, payload: impl Into<Bytes>) -> Result<u64> {
        let payload = payload.into();
        let seq = self.next_seq().await?;
        let key = self.item_key(seq);
        let value = encode(&key, &Header::default(), &payload)?;
        self.store.create(&key, value, PutOptions::new()).await?;
        self.wake().await?;
        Ok(seq)
    }

    /// How many items the queue holds, claimed or not.
    pub async fn len(&self) -> Result<usize> {
        Ok(self.store.list(&self.items).await?.len())
    }

    /// True if the queue holds no item.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// Claims the next item, waiting for one if there is none: woken by a
    /// watch when an item is pushed or released, and when the earliest claim
    /// it saw times out. A failed store call is returned; calling `pop`
    /// again goes on.
    ///
    /// Cancel-safe in the sense that no item is lost: an item whose claim
    /// was written just before the `pop` future was dropped is delivered
    /// again after the visibility timeout.
    pub async fn pop(&self) -> Result<Delivery> {
        let mut consumer = self.consumer.lock().await;
        loop {
            if let Some(delivery) = self.claim_listed(&mut consumer).await? {
                return Ok(delivery);
            }
            self.list_again(&mut consumer).await?;
            if let Some(delivery) = self.claim_listed(&mut consumer).await? {
                return Ok(delivery);
            }
            self.wait(&mut consumer).await?;
        }
    }

    /// Claims the next item if there is one now, without waiting.
    pub async fn try_pop(&self) -> Result<Option<Delivery>> {
        let mut consumer = self.consumer.lock().await;
        if let Some(delivery) = self.claim_listed(&mut consumer).await? {
            return Ok(Some(delivery));
        }
        consumer.listing = self.store.list(&self.items).await?.into();
        consumer.earliest = None;
        self.claim_listed(&mut consumer).await
    }

    fn item_key(&self, seq: u64) -> String {
        format!("{}/{seq:020}", self.items)
    }

    /// The next sequence number: the version the store gives the sequence
    /// key for this write. Versions of a key strictly increase with every
    /// write and never repeat ([`KvPair::last_index`]), so every push gets
    /// its own number, in the order the store applied the writes — without
    /// a read, and without producers racing each other for a number.
    async fn next_seq(&self) -> Result<u64> {
        let pair = self
            .store
            .put(&self.seq_key, self.consumer_id.clone(), PutOptions::new())
            .await?;
        Ok(pair.last_index)
    }

    /// Tells waiting consumers to list again.
    async fn wake(&self) -> Result<()> {
        self.store
            .put(
                &self.pushed_key,
                now_millis().to_string(),
                PutOptions::new(),
            )
            .await
            .map(|_| ())
    }

    /// Tries the listed items in order; the first claim won is delivered.
    async fn claim_listed(&self, consumer: &mut Consumer) -> Result<Option<Delivery>> {
        while let Some(pair) = consumer.listing.pop_front() {
            let Some(seq) = pair
                .key
                .rsplit('/')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let Some((header, payload)) = decode(&pair.value) else {
                tracing::warn!(key = %pair.key, "skipping a queue item that is not readable");
                continue;
            };
            let now = now_millis();
            if let Some(until) = header.until {
                if until > now {
                    consumer.earliest = Some(consumer.earliest.map_or(until, |e| e.min(until)));
                    continue;
                }
            }
            let until = now.saturating_add(millis(self.visibility));
            let claim = Header {
                n: header.n.saturating_add(1),
                by: Some(self.consumer_id.clone()),
                until: Some(until),
            };
            let value = encode(&pair.key, &claim, &payload)?;
            let written = self
                .store
                .put(
                    &pair.key,
                    value,
                    PutOptions::new().with_mode(PutMode::Update(pair.last_index)),
                )
                .await;
            match written {
                Ok(written) => {
                    consumer.losses = 0;
                    return Ok(Some(Delivery {
                        store: self.store.clone(),
                        pushed_key: self.pushed_key.clone(),
                        key: pair.key,
                        seq,
                        payload,
                        version: written.last_index,
                        header: claim,
                    }));
                }
                // Taken (or acked) by another consumer. The other losers
                // of this race move on too: rather than all trying the same
                // next item, skip a random few (more after every loss in a
                // row), so that consumers spread out over the listing. A
                // skipped item that stays unclaimed is found by the next
                // listing.
                Err(Error::KeyModified { .. }) | Err(Error::KeyNotFound { .. }) => {
                    consumer.losses = consumer.losses.saturating_add(1);
                    let spread = u64::from(consumer.losses.min(8)) * 2;
                    let skip = usize::try_from(random() % (spread + 1)).unwrap_or(0);
                    let skip = skip.min(consumer.listing.len());
                    consumer.listing.drain(..skip);
                    continue;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(None)
    }

    /// Lists the queue again, first taking note of the wake-ups so far, so
    /// that a push after the listing began always wakes [`Queue::wait`].
    async fn list_again(&self, consumer: &mut Consumer) -> Result<()> {
        if consumer.watch.is_none() {
            match self.store.watch(&self.pushed_key).await {
                Ok(watch) => consumer.watch = Some(watch),
                Err(error @ Error::Closed { .. }) => return Err(error),
                // Waiting falls back to the backoff delay; watch again then.
                Err(error) => {
                    tracing::debug!(queue = %self.name, %error, "cannot watch the queue")
                }
            }
        }
        if let Some(watch) = consumer.watch.as_mut() {
            while let Some(item) = watch.next().now_or_never() {
                match item {
                    Some(Ok(_)) => {}
                    Some(Err(error)) if error.is_transient() => {}
                    Some(Err(error @ Error::Closed { .. })) => return Err(error),
                    Some(Err(_)) | None => {
                        consumer.watch = None;
                        break;
                    }
                }
            }
        }
        consumer.listing = self.store.list(&self.items).await?.into();
        consumer.earliest = None;
        Ok(())
    }

    /// Waits for a push or release, or for the earliest claim seen to time
    /// out.
    async fn wait(&self, consumer: &mut Consumer) -> Result<()> {
        let timeout = consumer.earliest.map(|until| {
            // A millisecond late, so that the claim has surely timed out.
            Duration::from_millis(until.saturating_sub(now_millis()).saturating_add(1))
        });
        let timer = async {
            match timeout {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        };
        let Some(watch) = consumer.watch.as_mut() else {
            // No watch: list again after a backoff delay (or the timeout).
            let delay = consumer.backoff.next_delay();
            tokio::select! {
                () = timer => {}
                () = tokio::time::sleep(delay) => {}
            }
            return Ok(());
        };
        tokio::select! {
            () = timer => {}
            item = watch.next() => match item {
                Some(Ok(_)) => consumer.backoff.reset(),
                Some(Err(error)) if error.is_transient() => {}
                Some(Err(error @ Error::Closed { .. })) => return Err(error),
                Some(Err(error)) => {
                    tracing::debug!(queue = %self.name, %error, "the queue watch ended");
                    consumer.watch = None;
                }
                None => consumer.watch = None,
            },
        }
        Ok(())
    }
}

/// A claimed item: its payload and claim. [`Delivery::ack`] it once done;
/// dropping it abandons the claim, and the item is delivered again when the
/// claim times out.
pub struct Delivery {
    store: Arc<dyn Store>,
    pushed_key: String,
    key: String,
    seq: u64,
    payload: Bytes,
    version: u64,
    header: Header,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("key", &self.key)
            .field("attempt", &self.header.n)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl Delivery {
    /// The item's payload, as pushed.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The item's sequence number (from [`Queue::push`]).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Which delivery of the item this is: 1 the first time, one more after
    /// every claim that timed out.
    pub fn attempt(&self) -> u32 {
        self.header.n
    }

    /// When the claim times out (on this consumer's clock), unless extended.
    pub fn deadline(&self) -> SystemTime {
        UNIX_EPOCH
            .checked_add(Duration::from_millis(self.header.until.unwrap_or(0)))
            .unwrap_or(UNIX_EPOCH)
    }

    /// Done with the item: deletes it, if the claim still holds.
    /// [`Error::LockLost`] if the claim had timed out and the item was
    /// claimed again (or acked) by another consumer meanwhile; then the other
    /// consumer has it. A retry after a failed ack that did go through also
    /// reads `LockLost`.
    pub async fn ack(self) -> Result<()> {
        let options = DeleteOptions::new().if_version(self.version);
        match self.store.delete_opts(&self.key, options).await {
            Ok(()) => Ok(()),
            Err(Error::KeyModified { .. }) | Err(Error::KeyNotFound { .. }) => {
                Err(Error::LockLost { key: self.key })
            }
            Err(error) => Err(error),
        }
    }

    /// Moves the claim's deadline to `timeout` from now, if the claim still
    /// holds ([`Error::LockLost`] otherwise).
    pub async fn extend(&mut self, timeout: Duration) -> Result<()> {
        let mut header = self.header.clone();
        header.until = Some(now_millis().saturating_add(millis(timeout)));
        self.rewrite(&header).await?;
        self.header = header;
        Ok(())
    }

    /// Gives the item back unacked, for any consumer to take at once (its
    /// [`Delivery::attempt`] count is kept). [`Error::LockLost`] if the
    /// claim no longer holds.
    pub async fn release(mut self) -> Result<()> {
        let header = Header {
            n: self.header.n,
            by: None,
            until: None,
        };
        self.rewrite(&header).await?;
        self.store
            .put(
                &self.pushed_key,
                now_millis().to_string(),
                PutOptions::new(),
            )
            .await
            .map(|_| ())
    }

    async fn rewrite(&mut self, header: &Header) -> Result<()> {
        let value = encode(&self.key, header, &self.payload)?;
        let options = PutOptions::new().with_mode(PutMode::Update(self.version));
        match self.store.put(&self.key, value, options).await {
            Ok(pair) => {
                self.version = pair.last_index;
                Ok(())
            }
            Err(Error::KeyModified { .. }) | Err(Error::KeyNotFound { .. }) => {
                Err(Error::LockLost {
                    key: self.key.clone(),
                })
            }
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_keep_their_payload_through_claims() {
        let header = Header {
            n: 2,
            by: Some("c".into()),
            until: Some(7),
        };
        let value = encode("k", &header, b"a\nb").expect("encodes");
        let (back, payload) = decode(&value).expect("decodes");
        assert_eq!(payload, "a\nb");
        assert_eq!((back.n, back.until), (2, Some(7)));
        assert!(decode(&Bytes::from_static(b"no header")).is_none());
    }

    #[tokio::test]
    async fn sequence_numbers_sort_as_pushed() {
        let store = anykv::open("memory://").await.expect("memory");
        let queue = Queue::new(store.clone(), "q").expect("valid name");
        let mut seqs = Vec::new();
        for i in 0..12 {
            seqs.push(queue.push(format!("{i}")).await.expect("push"));
        }
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let keys: Vec<String> = store
            .list("q/items")
            .await
            .expect("list")
            .into_iter()
            .map(|p| p.key)
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(keys.len(), 12);
        assert!(keys[9].ends_with(&format!("{:020}", seqs[9])), "{keys:?}");
    }
}
