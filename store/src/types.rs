//! Plain data types shared by every backend.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::{Error, Result};

/// The longest duration anykv accepts wherever a caller passes one: a write's
/// TTL ([`PutOptions::ttl`]), a lock TTL ([`LockOptions::ttl`]), and the
/// `session_ttl` and timeout options of store URLs. Ten years (365-day
/// years).
///
/// Longer durations are rejected before any I/O — [`Error::InvalidArgument`]
/// naming the key for TTLs, [`Error::InvalidUrl`] naming the option for URL
/// options — on every backend, rather than overflowing deadline arithmetic
/// or being refused (or misread) by a server. A backend may accept less
/// (its own limits are in its module docs), never more.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Checks a caller-given duration (`what`, e.g. "ttl" or "lock ttl") for
/// `key`: greater than zero and at most [`MAX_DURATION`]. Every backend
/// calls this (through [`PutOptions::validate`] and
/// [`LockOptions::validate`], or directly) before any I/O.
pub(crate) fn check_duration(key: &str, what: &str, duration: Duration) -> Result<()> {
    if duration.is_zero() {
        return Err(Error::InvalidArgument {
            key: key.to_owned(),
            reason: format!("{what} must be greater than zero"),
        });
    }
    if duration > MAX_DURATION {
        return Err(Error::InvalidArgument {
            key: key.to_owned(),
            reason: format!(
                "{what} of {duration:?} is longer than the longest supported duration, {MAX_DURATION:?} (anykv::types::MAX_DURATION)"
            ),
        });
    }
    Ok(())
}

/// A key, its value and its version.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct KvPair {
    /// The key, relative to the store's namespace, normalised (no leading or
    /// trailing `/`).
    pub key: String,
    /// The value.
    pub value: Bytes,
    /// The key's version. It strictly increases with every change of the key
    /// and never repeats, not even after the key is deleted and created again,
    /// so a stale `KvPair` never matches in [`crate::StoreExt::atomic_put`].
    pub last_index: u64,
}

impl KvPair {
    /// A pair; for backend implementors (`key` relative to the namespace,
    /// normalised).
    pub fn new(key: impl Into<String>, value: impl Into<Bytes>, last_index: u64) -> Self {
        KvPair {
            key: key.into(),
            value: value.into(),
            last_index,
        }
    }
}

/// Under which condition [`crate::Store::put_opts`] writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PutMode {
    /// Unconditionally: create or replace (upsert).
    #[default]
    Overwrite,
    /// Only if the key does not exist ([`Error::KeyExists`] otherwise).
    Create,
    /// Only if the key exists at this version ([`KvPair::last_index`]):
    /// [`Error::KeyModified`] if it has another, [`Error::KeyNotFound`] if
    /// it is gone.
    Update(u64),
}

/// How long a written key lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expiry {
    /// Until deleted.
    #[default]
    Never,
    /// Until this long after the write, unless rewritten.
    Ttl(Duration),
    /// As long as the writing handle's session (see [`crate::Store::close`]).
    Ephemeral,
}

/// Options for [`crate::Store::put_opts`] (and [`crate::StoreExt::put`]):
/// when the key goes away by itself, and under which condition it is written.
///
/// ```
/// use std::time::Duration;
/// use anykv::{PutMode, PutOptions};
/// let o = PutOptions::ttl(Duration::from_secs(5));
/// assert_eq!(o.ttl_value(), Some(Duration::from_secs(5)));
/// assert_eq!(o.mode(), PutMode::Overwrite);
/// assert!(PutOptions::ephemeral().is_ephemeral());
/// let o = PutOptions::new().with_mode(PutMode::Update(7));
/// assert_eq!(o.mode(), PutMode::Update(7));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PutOptions {
    pub(crate) expiry: Expiry,
    pub(crate) mode: PutMode,
}

impl PutOptions {
    /// A plain write: the key lives until deleted.
    pub const fn new() -> Self {
        PutOptions {
            expiry: Expiry::Never,
            mode: PutMode::Overwrite,
        }
    }

    /// The key expires `ttl` after this write unless it is rewritten. Each
    /// backend honours it within [`Capabilities::min_ttl`] and
    /// [`Capabilities::ttl_slack`].
    pub const fn ttl(ttl: Duration) -> Self {
        PutOptions::new().with_expiry(Expiry::Ttl(ttl))
    }

    /// The key lives as long as this handle's session: [`crate::Store::close`]
    /// removes it at once, a crashed process's keys go within the session TTL.
    pub const fn ephemeral() -> Self {
        PutOptions::new().with_expiry(Expiry::Ephemeral)
    }

    /// These options with another expiry.
    pub const fn with_expiry(mut self, expiry: Expiry) -> Self {
        self.expiry = expiry;
        self
    }

    /// These options with another write mode.
    pub const fn with_mode(mut self, mode: PutMode) -> Self {
        self.mode = mode;
        self
    }

    /// When the key goes away by itself.
    pub const fn expiry(&self) -> Expiry {
        self.expiry
    }

    /// Under which condition the key is written.
    pub const fn mode(&self) -> PutMode {
        self.mode
    }

    /// The TTL, if this is a TTL write.
    pub const fn ttl_value(&self) -> Option<Duration> {
        match self.expiry {
            Expiry::Ttl(d) => Some(d),
            _ => None,
        }
    }

    /// True for an ephemeral (session-bound) write.
    pub const fn is_ephemeral(&self) -> bool {
        matches!(self.expiry, Expiry::Ephemeral)
    }

    /// Rejects a zero TTL or one longer than [`MAX_DURATION`], naming `key`
    /// ([`Error::InvalidArgument`]). Backends call this before I/O.
    pub fn validate(&self, key: &str) -> Result<()> {
        if let Expiry::Ttl(d) = self.expiry {
            check_duration(key, "ttl", d)?;
        }
        Ok(())
    }
}

/// Options for [`crate::Store::delete_opts`].
///
/// ```
/// use anykv::DeleteOptions;
/// assert_eq!(DeleteOptions::new().version(), None);
/// assert_eq!(DeleteOptions::new().if_version(3).version(), Some(3));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeleteOptions {
    pub(crate) version: Option<u64>,
}

impl DeleteOptions {
    /// An unconditional delete (a missing key is `Ok`).
    pub const fn new() -> Self {
        DeleteOptions { version: None }
    }

    /// Delete only if the key exists at this version
    /// ([`KvPair::last_index`]): [`Error::KeyModified`] if it has another,
    /// [`Error::KeyNotFound`] if it is gone.
    pub const fn if_version(mut self, version: u64) -> Self {
        self.version = Some(version);
        self
    }

    /// The version the delete is conditional on, if any.
    pub const fn version(&self) -> Option<u64> {
        self.version
    }
}

/// Options for [`crate::Store::new_lock`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockOptions {
    /// What `get(lock_key)` returns while the lock is held: the holder's
    /// identity. A leadership `Follower` reads the leader from it.
    pub value: Bytes,
    /// How long the lock outlives a silent holder. `None` = the handle's
    /// session TTL. Backends whose locks are bound to the handle's session
    /// ignore it (see [`Capabilities::lock_ttl_per_lock`]).
    pub ttl: Option<Duration>,
}

impl LockOptions {
    /// Lock options holding `value` while locked.
    pub fn new(value: impl Into<Bytes>) -> Self {
        LockOptions {
            value: value.into(),
            ttl: None,
        }
    }

    /// Sets the lock TTL.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Rejects a zero lock TTL or one longer than [`MAX_DURATION`], naming
    /// `key` ([`Error::InvalidArgument`]) — also on backends that ignore the
    /// lock TTL, so that code behaves the same on every backend.
    /// `new_lock` calls this before I/O.
    pub fn validate(&self, key: &str) -> Result<()> {
        if let Some(ttl) = self.ttl {
            check_duration(key, "lock ttl", ttl)?;
        }
        Ok(())
    }
}

/// One reading of a store server's wall clock, from
/// [`crate::Store::server_time`].
///
/// The server read its clock at some moment between [`ServerTime::sent`]
/// and `sent + round_trip` (local clock), and reported it truncated to
/// [`ServerTime::resolution`]. So the server clock's offset from the local
/// one lies within [`ServerTime::offset_nanos`] ± [`ServerTime::uncertainty`].
///
/// ```
/// # #[tokio::main] async fn main() -> anykv::Result<()> {
/// use anykv::Store;
/// let store = anykv::open("memory://").await?;
/// let reading = store.server_time().await?;
/// // The memory store is its own server: its clock is the local clock.
/// assert!(reading.offset_nanos().unsigned_abs() <= reading.uncertainty().as_nanos());
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerTime {
    /// The server's wall-clock time, as it reported it.
    pub time: std::time::SystemTime,
    /// The local wall-clock time when the request was sent.
    pub sent: std::time::SystemTime,
    /// How long the request took, measured on the local monotonic clock.
    pub round_trip: Duration,
    /// The granularity of the server's answer (it truncates to it): 1 µs for
    /// Redis `TIME`, 1 ms for a ZooKeeper mtime, 1 s for an HTTP `Date`.
    pub resolution: Duration,
}

impl ServerTime {
    /// A reading: the server reported `time` (truncated to `resolution`) for
    /// a request sent at local time `sent` that took `round_trip`. For
    /// backend implementors.
    pub fn new(
        time: std::time::SystemTime,
        sent: std::time::SystemTime,
        round_trip: Duration,
        resolution: Duration,
    ) -> Self {
        ServerTime {
            time,
            sent,
            round_trip,
            resolution,
        }
    }

    /// The best estimate of the server clock minus the local clock, in
    /// nanoseconds (positive: the server is ahead): the middle of the
    /// interval the reading allows, `time + resolution/2 − (sent +
    /// round_trip/2)`.
    pub fn offset_nanos(&self) -> i128 {
        fn since_epoch(t: std::time::SystemTime) -> i128 {
            match t.duration_since(std::time::UNIX_EPOCH) {
                Ok(d) => d.as_nanos() as i128,
                Err(before) => -(before.duration().as_nanos() as i128),
            }
        }
        let server = since_epoch(self.time) + (self.resolution.as_nanos() / 2) as i128;
        let local = since_epoch(self.sent) + (self.round_trip.as_nanos() / 2) as i128;
        server - local
    }

    /// How far the true offset may lie from [`ServerTime::offset_nanos`]:
    /// half the round trip plus the resolution (a deliberately generous
    /// bound: the exact half-width is half of both).
    pub fn uncertainty(&self) -> Duration {
        (self.round_trip / 2).saturating_add(self.resolution)
    }
}

/// What a backend can do, and how precisely. The conformance suite tests each
/// backend against its own numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The URL scheme of the backend (`memory`, `etcd`, …).
    pub backend: &'static str,
    /// The largest value every layer of the backend accepts, in bytes.
    pub max_value_size: usize,
    /// The shortest TTL the backend honours; shorter TTLs are rounded up.
    pub min_ttl: Duration,
    /// The longest key or lock TTL the backend accepts (at most
    /// [`MAX_DURATION`]); a longer one is an [`Error::InvalidArgument`]
    /// naming the key, before any I/O.
    pub max_ttl: Duration,
    /// How long after its TTL a key may still be visible before the backend
    /// removes it (reaping delay).
    pub ttl_slack: Duration,
    /// The session TTL of this handle: how long a crashed process's
    /// ephemeral keys and locks survive it.
    pub session_ttl: Duration,
    /// How long after `session_ttl` a dead session's keys may still be visible.
    pub session_slack: Duration,
    /// True if two processes can share this store (false for `memory://`).
    pub shared_between_processes: bool,
    /// True if [`LockOptions::ttl`] is honoured per lock; false if locks live
    /// exactly as long as the handle's session.
    pub lock_ttl_per_lock: bool,
}

impl Capabilities {
    /// Capabilities with the given backend name and conservative defaults;
    /// a backend then sets the public fields that differ.
    pub fn new(backend: &'static str) -> Self {
        Capabilities {
            backend,
            max_value_size: 1024 * 1024,
            min_ttl: Duration::from_millis(1),
            max_ttl: MAX_DURATION,
            ttl_slack: Duration::from_millis(100),
            session_ttl: Duration::from_secs(10),
            session_slack: Duration::from_secs(1),
            shared_between_processes: true,
            lock_ttl_per_lock: false,
        }
    }

    /// Rejects a TTL (`what`: "ttl", "lock ttl") of zero or longer than
    /// [`Capabilities::max_ttl`], naming `key`.
    pub fn check_ttl(&self, key: &str, what: &str, ttl: Duration) -> Result<()> {
        check_duration(key, what, ttl)?;
        if ttl > self.max_ttl {
            return Err(Error::InvalidArgument {
                key: key.to_owned(),
                reason: format!(
                    "{what} of {ttl:?} is longer than {}'s maximum, {:?}",
                    self.backend, self.max_ttl
                ),
            });
        }
        Ok(())
    }

    /// Rejects a value larger than [`Capabilities::max_value_size`], naming `key`.
    pub fn check_value(&self, key: &str, value: &[u8]) -> Result<()> {
        if value.len() > self.max_value_size {
            return Err(Error::ValueTooLarge {
                key: key.to_owned(),
                size: value.len(),
                max: self.max_value_size,
            });
        }
        Ok(())
    }
}

/// The stream returned by [`crate::Store::watch`]: the current state first
/// (`None` = absent), then every change.
pub type WatchStream = BoxStream<'static, Result<Option<KvPair>>>;

/// The stream returned by [`crate::Store::watch_tree`]: the full sorted listing
/// first, then after every change.
pub type TreeWatchStream = BoxStream<'static, Result<Listing>>;

/// One listing of a watched prefix ([`crate::Store::watch_tree`]): its pairs
/// sorted by key, as [`crate::Store::list`] returns them.
///
/// A listing shares its pairs with the watch that made it: handing one out
/// copies no key or value, so a change below a large prefix costs work in
/// proportion to the change, not to the prefix. The watch applies the next
/// change in place when the listing it handed out before is no longer held,
/// and copies the pairs once when it is (a listing never changes under its
/// holder). So hold a listing as long as you need it, and drop it, or turn
/// it into a `Vec` with [`Listing::into_vec`], before you wait for the next.
///
/// It reads as a slice (`len`, `iter`, indexing, `binary_search_by`, …) and
/// compares equal to a `Vec<KvPair>` or slice with the same pairs.
///
/// ```
/// # #[tokio::main] async fn main() -> anykv::Result<()> {
/// use anykv::prelude::*;
/// use futures::StreamExt;
///
/// let store = anykv::open("memory://").await?;
/// store.put("svc/a", "1", PutOptions::new()).await?;
/// let mut tree = store.watch_tree("svc").await?;
/// let listing = tree.next().await.expect("the first listing")?;
/// assert_eq!(listing.len(), 1);
/// assert_eq!(listing[0].key, "svc/a");
/// assert_eq!(listing, store.list("svc").await?);
/// let pairs: Vec<KvPair> = listing.into_vec();
/// # let _ = pairs;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pairs: std::sync::Arc<Vec<KvPair>>,
}

impl Listing {
    /// A listing of `pairs`, which must be sorted by key without repeats (as
    /// [`crate::Store::list`] returns them); for backend implementors.
    pub fn new(pairs: Vec<KvPair>) -> Self {
        Listing {
            pairs: std::sync::Arc::new(pairs),
        }
    }

    /// The pairs as a `Vec`; copies them only if another holder of the
    /// same listing is alive.
    pub fn into_vec(self) -> Vec<KvPair> {
        std::sync::Arc::unwrap_or_clone(self.pairs)
    }

    /// The pair of `key`, found by binary search.
    pub fn get(&self, key: &str) -> Option<&KvPair> {
        self.pairs
            .binary_search_by(|p| p.key.as_str().cmp(key))
            .ok()
            .map(|i| &self.pairs[i])
    }
}

impl From<Vec<KvPair>> for Listing {
    fn from(pairs: Vec<KvPair>) -> Self {
        Listing::new(pairs)
    }
}

impl From<Listing> for Vec<KvPair> {
    fn from(listing: Listing) -> Self {
        listing.into_vec()
    }
}

impl std::ops::Deref for Listing {
    type Target = [KvPair];
    fn deref(&self) -> &[KvPair] {
        &self.pairs
    }
}

impl AsRef<[KvPair]> for Listing {
    fn as_ref(&self) -> &[KvPair] {
        &self.pairs
    }
}

impl IntoIterator for Listing {
    type Item = KvPair;
    type IntoIter = std::vec::IntoIter<KvPair>;
    fn into_iter(self) -> Self::IntoIter {
        self.into_vec().into_iter()
    }
}

impl<'a> IntoIterator for &'a Listing {
    type Item = &'a KvPair;
    type IntoIter = std::slice::Iter<'a, KvPair>;
    fn into_iter(self) -> Self::IntoIter {
        self.pairs.iter()
    }
}

impl PartialEq<Vec<KvPair>> for Listing {
    fn eq(&self, other: &Vec<KvPair>) -> bool {
        self.pairs.as_slice() == other.as_slice()
    }
}

impl PartialEq<Listing> for Vec<KvPair> {
    fn eq(&self, other: &Listing) -> bool {
        self.as_slice() == other.pairs.as_slice()
    }
}

impl PartialEq<[KvPair]> for Listing {
    fn eq(&self, other: &[KvPair]) -> bool {
        self.pairs.as_slice() == other
    }
}

impl<const N: usize> PartialEq<[KvPair; N]> for Listing {
    fn eq(&self, other: &[KvPair; N]) -> bool {
        self.pairs.as_slice() == other.as_slice()
    }
}

/// The pairs below a watched prefix, kept sorted by key, from which
/// [`Listing`]s are handed out without copying: a change is applied in place
/// unless a listing handed out before is still held.
#[derive(Debug, Default)]
pub(crate) struct SortedPairs {
    pairs: std::sync::Arc<Vec<KvPair>>,
}

#[cfg_attr(
    not(any(feature = "etcd", feature = "redis", feature = "zookeeper")),
    allow(dead_code)
)]
impl SortedPairs {
    pub(crate) fn as_slice(&self) -> &[KvPair] {
        &self.pairs
    }

    fn find(&self, key: &str) -> std::result::Result<usize, usize> {
        self.pairs.binary_search_by(|p| p.key.as_str().cmp(key))
    }

    /// Replaces every pair; `pairs` must be sorted by key without repeats.
    pub(crate) fn replace(&mut self, pairs: Vec<KvPair>) {
        self.pairs = std::sync::Arc::new(pairs);
    }

    /// Sets `pair` (its key's old pair, if any, goes); false if the same
    /// pair was there already.
    pub(crate) fn set(&mut self, pair: KvPair) -> bool {
        match self.find(&pair.key) {
            Ok(i) if self.pairs[i] == pair => false,
            Ok(i) => {
                std::sync::Arc::make_mut(&mut self.pairs)[i] = pair;
                true
            }
            Err(i) => {
                std::sync::Arc::make_mut(&mut self.pairs).insert(i, pair);
                true
            }
        }
    }

    /// Removes `key`'s pair; false if there was none.
    pub(crate) fn remove(&mut self, key: &str) -> bool {
        match self.find(key) {
            Ok(i) => {
                std::sync::Arc::make_mut(&mut self.pairs).remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// A listing of the pairs as they are now, sharing them.
    pub(crate) fn listing(&self) -> Listing {
        Listing {
            pairs: self.pairs.clone(),
        }
    }
}

/// One item of [`crate::Store::watch_tree_changes`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TreeChange {
    /// The full sorted listing of the prefix, as [`crate::Store::list`]
    /// returns it: always the first item, and again whenever the stream
    /// cannot tell what changed (it lost its place in the store's history);
    /// replace what you hold with it.
    Snapshot(Vec<KvPair>),
    /// `key` (relative to the namespace, as in [`KvPair::key`]) was written —
    /// `pair` is its new state — or deleted (`pair` is `None`).
    Changed {
        /// The key that changed.
        key: String,
        /// Its new state; `None` once deleted.
        pair: Option<KvPair>,
    },
}

/// The stream returned by [`crate::Store::watch_tree_changes`].
pub type TreeChangeStream = BoxStream<'static, Result<TreeChange>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, index: u64) -> KvPair {
        KvPair::new(key, value.to_owned(), index)
    }

    #[test]
    fn sorted_pairs_keep_key_order_and_report_what_changed() {
        let mut tree = SortedPairs::default();
        assert!(tree.set(kv("m", "1", 1)));
        assert!(tree.set(kv("a", "1", 2)));
        assert!(tree.set(kv("z", "1", 3)));
        assert!(
            !tree.set(kv("a", "1", 2)),
            "the same pair again is no change"
        );
        assert!(tree.set(kv("a", "2", 4)));
        assert!(tree.remove("m"));
        assert!(!tree.remove("m"));
        assert_eq!(tree.listing(), vec![kv("a", "2", 4), kv("z", "1", 3)]);
        assert_eq!(tree.listing().get("z"), Some(&kv("z", "1", 3)));
        assert_eq!(tree.listing().get("m"), None);
        tree.replace(vec![kv("b", "1", 5)]);
        assert_eq!(tree.listing(), [kv("b", "1", 5)]);
    }

    #[test]
    fn a_held_listing_never_changes_and_a_dropped_one_is_not_copied() {
        let mut tree = SortedPairs::default();
        tree.set(kv("a", "1", 1));
        let held = tree.listing();
        tree.set(kv("b", "1", 2));
        tree.remove("a");
        assert_eq!(
            held,
            vec![kv("a", "1", 1)],
            "the holder's listing stays as handed out"
        );
        let shared = tree.listing();
        let before = shared.as_ptr();
        drop(shared);
        tree.set(kv("c", "1", 3));
        // Applied in place: the pairs did not move to a copy.
        assert_eq!(tree.listing().as_ptr(), before);
        assert_eq!(
            tree.listing().into_vec(),
            vec![kv("b", "1", 2), kv("c", "1", 3)]
        );
    }

    #[test]
    fn durations_up_to_the_bound_pass_and_beyond_it_name_the_key() {
        assert!(PutOptions::ttl(MAX_DURATION).validate("k").is_ok());
        assert!(LockOptions::new("v")
            .with_ttl(MAX_DURATION)
            .validate("k")
            .is_ok());
        let just_over = MAX_DURATION + Duration::from_nanos(1);
        for bad in [Duration::ZERO, just_over, Duration::MAX] {
            for err in [
                PutOptions::ttl(bad).validate("k").unwrap_err(),
                LockOptions::new("v")
                    .with_ttl(bad)
                    .validate("k")
                    .unwrap_err(),
            ] {
                assert!(
                    matches!(err, Error::InvalidArgument { ref key, .. } if key == "k"),
                    "{err:?}"
                );
            }
        }
        assert!(PutOptions::new().validate("k").is_ok());
        assert!(LockOptions::new("v").validate("k").is_ok());
    }
}
