//! The embedded in-memory store: `memory://` and `memory://NAME`.
//!
//! * `memory://` opens a private store that lives as long as its handles.
//! * `memory://NAME` handles opened with the same `NAME` in one process share
//!   data (each with its own session), until the last of them is dropped.
//! * A path is a namespace as for every backend: `memory://NAME/app`.
//!
//! Versions come from one counter per store, bumped by every write, delete
//! and expiry, so `last_index` never repeats. Watches are driven by change
//! notifications (no polling); TTLs are exact to the reader (expired keys are
//! purged before every operation) and reaped for watchers by a timer task
//! that ends with the store. A TTL is a deadline stored with the key, so a
//! rewrite replaces it and leaves nothing else behind.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::key::{is_below, Namespace};
use crate::lock::{GenericLock, Lock};
use crate::request::{Backend, Key};
use crate::store::Store;
use crate::types::{
    Capabilities, Expiry, KvPair, Listing, LockOptions, PutOptions, TreeChangeStream,
    TreeWatchStream, WatchStream,
};
use crate::url::StoreUrl;

mod state;
mod watch;

use self::state::*;
use self::watch::*;

/// Largest value the memory store accepts (16 MiB).
pub const MAX_VALUE_SIZE: usize = 16 * 1024 * 1024;

/// How many change events a slow watcher may fall behind before it re-syncs
/// from a fresh read (intermediate states are then coalesced).
const EVENT_BUFFER: usize = 4096;

static NAMED: LazyLock<Mutex<HashMap<String, Weak<Shared>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// A handle on an in-memory store. Cheap to clone; clones share the handle's
/// session, which ends when the last clone is dropped or on [`Store::close`].
///
/// ```
/// # #[tokio::main] async fn main() -> anykv::Result<()> {
/// use anykv::prelude::*;
/// use anykv::MemoryStore;
/// let a = MemoryStore::open_named("demo-doc")?;
/// let b = MemoryStore::open_named("demo-doc")?;
/// a.put("k", "v", PutOptions::ephemeral()).await?;
/// assert!(b.exists("k").await?);
/// a.close().await?; // a's session ends: its ephemeral key goes
/// assert!(!b.exists("k").await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    /// The current session's id ([`MemoryStore::expire_session`] moves on).
    session: std::sync::atomic::AtomicU64,
    tracker: crate::session::SessionTracker,
    closed: CancellationToken,
    namespace: Namespace,
    url: String,
    session_ttl: Duration,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.closed.cancel();
        self.tracker.close();
        self.shared.end_session(self.session());
    }
}

impl Handle {
    fn session(&self) -> u64 {
        self.session.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("url", &self.handle.url)
            .field("session", &self.handle.session())
            .finish()
    }
}

impl MemoryStore {
    /// A new private store (what `memory://` opens).
    pub fn new() -> Self {
        Self::with_shared(
            Shared::new(),
            Namespace::default(),
            "memory://".into(),
            crate::url::DEFAULT_SESSION_TTL,
        )
    }

    /// A handle on the process-wide store called `name` (what
    /// `memory://NAME` opens), created if no handle on it is alive.
    pub fn open_named(name: &str) -> Result<Self> {
        let mut url = StoreUrl::parse(&format!("memory://{name}"))?;
        url.hosts = vec![name.to_owned()];
        Self::from_url(url)
    }

    /// Opens from a parsed `memory://` URL.
    pub fn from_url(url: StoreUrl) -> Result<Self> {
        check_url(&url)?;
        let shared = match url.hosts.as_slice() {
            [name] => {
                let mut named = NAMED.lock().unwrap_or_else(|p| p.into_inner());
                named.retain(|_, weak| weak.strong_count() > 0);
                match named.get(name).and_then(Weak::upgrade) {
                    Some(shared) => shared,
                    None => {
                        let shared = Shared::new();
                        named.insert(name.clone(), Arc::downgrade(&shared));
                        shared
                    }
                }
            }
            _ => Shared::new(),
        };
        Ok(Self::with_shared(
            shared,
            url.namespace.clone(),
            url.redacted.clone(),
            url.session_ttl,
        ))
    }

    fn with_shared(
        shared: Arc<Shared>,
        namespace: Namespace,
        url: String,
        session_ttl: Duration,
    ) -> Self {
        let session = {
            let mut state = shared.lock();
            state.next_session += 1;
            state.next_session
        };
        let store = MemoryStore {
            handle: Arc::new(Handle {
                shared,
                session: std::sync::atomic::AtomicU64::new(session),
                tracker: crate::session::SessionTracker::new(),
                closed: CancellationToken::new(),
                namespace,
                url,
                session_ttl,
            }),
        };
        let weak = Arc::downgrade(&store.handle);
        store.handle.tracker.set_expirer(Arc::new(
            move || -> futures::future::BoxFuture<'static, Result<()>> {
                if let Some(handle) = weak.upgrade() {
                    MemoryStore { handle }.expire_session();
                }
                Box::pin(async { Ok(()) })
            },
        ));
        store
    }

    /// Ends this handle's session as a server would after losing it, and
    /// starts a new one: its ephemeral keys are deleted (watchers see them
    /// go), its locks are lost, and [`crate::Session::replaced`] reports the
    /// new session. Other handles of the same store keep theirs. For
    /// testing code that must survive a session loss.
    pub fn expire_session(&self) {
        if self.handle.closed.is_cancelled() {
            return;
        }
        {
            // Under the state lock, as every ephemeral write reads the
            // session id: a write is bound either to the old session (and
            // removed here) or to the new one.
            let mut state = self.handle.shared.lock();
            state.next_session += 1;
            let next = state.next_session;
            let old = self
                .handle
                .session
                .swap(next, std::sync::atomic::Ordering::SeqCst);
            self.handle.shared.end_session_locked(&mut state, old);
        }
        self.handle.tracker.replaced();
    }

    fn check_open(&self) -> Result<()> {
        crate::request::check_open(&self.handle.closed, &self.handle.url)?;
        // Every operation passes here: a store made outside a runtime starts
        // its reaper on the first one.
        spawn_reaper(&self.handle.shared);
        Ok(())
    }

    fn lifetime(&self, key: &str, options: &PutOptions) -> Result<Lifetime> {
        options.validate(key)?;
        Ok(match options.expiry {
            Expiry::Never => Lifetime::Forever,
            // `validate` bounds the TTL, so this only fails on a clock
            // near the end of its range.
            Expiry::Ttl(ttl) => {
                Lifetime::Until(Instant::now().checked_add(ttl).ok_or_else(|| {
                    Error::InvalidArgument {
                        key: key.to_owned(),
                        reason: format!("ttl of {ttl:?} reaches beyond the clock's range"),
                    }
                })?)
            }
            // The id is read again under the state lock (`bound`).
            Expiry::Ephemeral => Lifetime::Session(0),
        })
    }

    /// `lifetime` with the current session filled in; called with the state
    /// lock held, which [`MemoryStore::expire_session`] takes too.
    fn bound(&self, lifetime: Lifetime) -> Lifetime {
        match lifetime {
            Lifetime::Session(_) => Lifetime::Session(self.handle.session()),
            other => other,
        }
    }

    fn pair(user_key: &str, entry: &Entry) -> KvPair {
        KvPair {
            key: user_key.to_owned(),
            value: entry.value.clone(),
            last_index: entry.version,
        }
    }
}

/// Checks a parsed `memory://` URL: no options left, no credentials, at
/// most one store name.
pub(crate) fn check_url(url: &StoreUrl) -> Result<()> {
    url.finish()?;
    if url.username.is_some() || url.password.is_some() {
        return Err(Error::InvalidUrl {
            url: url.redacted.clone(),
            reason: "memory:// takes no user name or password".into(),
        });
    }
    if url.hosts.len() > 1 {
        return Err(Error::InvalidUrl {
            url: url.redacted.clone(),
            reason: "memory:// takes one store name, not a host list".into(),
        });
    }
    Ok(())
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for MemoryStore {
    const NAME: &'static str = "memory";

    fn namespace(&self) -> &Namespace {
        &self.handle.namespace
    }

    fn check_open(&self) -> Result<()> {
        MemoryStore::check_open(self)
    }

    async fn put(&self, key: Key, value: Bytes, options: PutOptions) -> Result<KvPair> {
        let Key { user, full } = key;
        let lifetime = self.lifetime(&user, &options)?;
        let shared = &self.handle.shared;
        let mut state = shared.lock();
        let version = shared.write(&mut state, &full, value.clone(), self.bound(lifetime));
        Ok(KvPair {
            key: user,
            value,
            last_index: version,
        })
    }

    async fn put_if(
        &self,
        key: Key,
        value: Bytes,
        previous: Option<u64>,
        options: PutOptions,
    ) -> Result<KvPair> {
        let Key { user, full } = key;
        let lifetime = self.lifetime(&user, &options)?;
        let shared = &self.handle.shared;
        let mut state = shared.lock();
        match (state.entries.get(&full), previous) {
            (Some(_), None) => return Err(Error::exists(&user)),
            (None, Some(_)) => return Err(Error::not_found(&user)),
            (Some(current), Some(prev)) if current.version != prev => {
                return Err(Error::modified(&user))
            }
            _ => {}
        }
        let version = shared.write(&mut state, &full, value.clone(), self.bound(lifetime));
        Ok(KvPair {
            key: user,
            value,
            last_index: version,
        })
    }

    async fn delete(&self, key: Key) -> Result<()> {
        let full = key.full;
        let shared = &self.handle.shared;
        let mut state = shared.lock();
        shared.remove(&mut state, &full);
        Ok(())
    }

    async fn delete_if(&self, key: Key, previous: u64) -> Result<()> {
        let Key { user, full } = key;
        let shared = &self.handle.shared;
        let mut state = shared.lock();
        match state.entries.get(&full) {
            None => Err(Error::not_found(&user)),
            Some(current) if current.version != previous => Err(Error::modified(&user)),
            Some(_) => {
                shared.remove(&mut state, &full);
                Ok(())
            }
        }
    }

    async fn get(&self, key: Key) -> Result<Option<KvPair>> {
        let Key { user, full } = key;
        let state = self.handle.shared.lock();
        match state.entries.get(&full) {
            Some(entry) => Ok(Some(KvPair {
                key: user,
                value: entry.value.clone(),
                last_index: entry.version,
            })),
            None => Ok(None),
        }
    }

    async fn list(&self, prefix: Key) -> Result<Vec<KvPair>> {
        let Key { full, .. } = prefix;
        let state = self.handle.shared.lock();
        Ok(list_entries(&state, &self.handle.namespace, &full))
    }

    async fn delete_tree(&self, prefix: Key) -> Result<()> {
        let Key { full, .. } = prefix;
        let shared = &self.handle.shared;
        let mut state = shared.lock();
        let doomed: Vec<String> = state
            .entries
            .range(full.clone()..)
            .take_while(|(k, _)| k.starts_with(&full))
            .filter(|(k, _)| **k == full || is_below(&full, k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in doomed {
            shared.remove(&mut state, &key);
        }
        Ok(())
    }

    async fn watch(&self, key: Key) -> Result<WatchStream> {
        let Key { user, full } = key;
        let shared = self.handle.shared.clone();
        // Subscribe before the initial read so no change falls in between.
        let events = shared.events.subscribe();
        let (initial, seen) = {
            let state = shared.lock();
            let initial = state.entries.get(&full).map(|e| Self::pair(&user, e));
            (initial, state.version)
        };
        let watcher = KeyWatcher {
            shared,
            events,
            closed: self.handle.closed.clone(),
            url: self.handle.url.clone(),
            user,
            full,
            seen,
            delivered: None,
            pending_initial: Some(initial),
            done: false,
        };
        Ok(stream::unfold(watcher, |mut w| async move {
            let item = w.next().await?;
            Some((item, w))
        })
        .boxed())
    }

    async fn watch_tree(&self, prefix: Key) -> Result<TreeWatchStream> {
        let Key { full, .. } = prefix;
        let shared = self.handle.shared.clone();
        // Subscribe now; the first `next` reads the initial listing, so no
        // change falls between the two.
        let events = shared.events.subscribe();
        let watcher = TreeWatcher {
            shared,
            events,
            closed: self.handle.closed.clone(),
            url: self.handle.url.clone(),
            namespace: self.handle.namespace.clone(),
            full,
            seen: 0,
            delivered: None,
            done: false,
        };
        Ok(stream::unfold(watcher, |mut w| async move {
            let item = w.next().await?.map(Listing::from);
            Some((item, w))
        })
        .boxed())
    }

    async fn watch_tree_changes(&self, prefix: Key) -> Result<TreeChangeStream> {
        let Key { full, .. } = prefix;
        let shared = self.handle.shared.clone();
        // Subscribed before the first `next` reads the snapshot.
        let events = shared.events.subscribe();
        let watcher = ChangeWatcher {
            tree: TreeWatcher {
                shared,
                events,
                closed: self.handle.closed.clone(),
                url: self.handle.url.clone(),
                namespace: self.handle.namespace.clone(),
                full,
                seen: 0,
                delivered: None,
                done: false,
            },
            started: false,
        };
        Ok(stream::unfold(watcher, |mut w| async move {
            let item = w.next().await?;
            Some((item, w))
        })
        .boxed())
    }

    async fn new_lock(&self, key: Key, options: LockOptions) -> Result<Lock> {
        let Key { user, .. } = key;
        let store: Arc<dyn Store> = Arc::new(self.clone());
        Ok(GenericLock::new(store, user, options).into_lock())
    }

    fn session(&self) -> crate::session::Session {
        self.handle.tracker.session()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_value_size: MAX_VALUE_SIZE,
            min_ttl: Duration::from_millis(1),
            ttl_slack: Duration::from_millis(50),
            session_ttl: self.handle.session_ttl,
            session_slack: Duration::ZERO,
            shared_between_processes: false,
            lock_ttl_per_lock: false,
            ..Capabilities::new("memory")
        }
    }

    async fn close(&self) -> Result<()> {
        if !self.handle.closed.is_cancelled() {
            self.handle.closed.cancel();
            self.handle.tracker.close();
            self.handle.shared.end_session(self.handle.session());
        }
        Ok(())
    }

    /// The store lives in this process: its clock is the local clock, so
    /// the reading is exact (offset zero by definition, no round trip).
    async fn server_time(&self) -> Result<crate::types::ServerTime> {
        let now = std::time::SystemTime::now();
        Ok(crate::types::ServerTime::new(
            now,
            now,
            Duration::ZERO,
            Duration::from_nanos(1),
        ))
    }
}

crate::request::impl_store!(MemoryStore);

#[cfg(test)]
mod tests {
    use super::{Error, MemoryStore, PutOptions, Result, StoreUrl};
    use crate::store::{Store, StoreExt};

    /// An ephemeral write racing `expire_session` must end up either deleted
    /// with the old session or bound to the new one — never bound to the
    /// ended session, where nothing would ever remove it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ephemeral_writes_racing_a_session_expiry_are_not_orphaned() -> Result<()> {
        let name = format!("memory://expiry-race-{}", std::process::id());
        let store = MemoryStore::from_url(StoreUrl::parse(&name)?)?;
        let observer = MemoryStore::from_url(StoreUrl::parse(&name)?)?;
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..20_000u32 {
                    store
                        .put(&format!("e/{}", i % 64), "v", PutOptions::ephemeral())
                        .await?;
                }
                Ok::<_, Error>(())
            })
        };
        while !writer.is_finished() {
            store.expire_session();
            tokio::task::yield_now().await;
        }
        writer.await.map_err(|e| Error::InvalidArgument {
            key: "e".into(),
            reason: e.to_string(),
        })??;
        store.close().await?;
        drop(store);
        // The writer's handle is gone: none of its ephemeral keys may remain.
        let left = observer.list("e").await?;
        assert!(left.is_empty(), "orphaned ephemeral keys: {left:?}");
        Ok(())
    }

    /// A store made outside any runtime and used inside one later still
    /// reports a TTL expiry to its watchers (its reaper starts on first use).
    #[test]
    fn a_store_made_outside_a_runtime_reaps_ttl_keys_for_watchers() -> Result<()> {
        use futures::StreamExt;
        let store = MemoryStore::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::InvalidArgument {
                key: "runtime".into(),
                reason: e.to_string(),
            })?;
        runtime.block_on(async {
            let ttl = std::time::Duration::from_millis(100);
            store.put("t", "v", PutOptions::ttl(ttl)).await?;
            let mut watch = store.watch("t").await?;
            assert!(matches!(watch.next().await, Some(Ok(Some(_)))));
            let expired = tokio::time::timeout(ttl * 20, watch.next()).await;
            assert!(
                matches!(expired, Ok(Some(Ok(None)))),
                "no expiry reported: {expired:?}"
            );
            Ok(())
        })
    }
}
