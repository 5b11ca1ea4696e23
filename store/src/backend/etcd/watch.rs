//! `watch` and `watch_tree`: a read, then an etcd watch from the read's
//! revision, resumed after failures.
//!
//! * The initial read's header revision `R` is the snapshot; the etcd watch
//!   starts at `R + 1`, so no change falls between snapshot and watch.
//! * Every event's revision advances the resume point. After a broken stream
//!   (server restart, endpoint failure) the watch is re-created from the last
//!   seen revision + 1 on the active endpoint, so nothing is missed or
//!   repeated. The failure is reported as one transient `Err` item (repeated
//!   at most every few seconds while the outage lasts).
//! * If etcd compacted that revision away, the watch re-syncs: a fresh read
//!   becomes the new snapshot (intermediate states are coalesced, the latest
//!   state is delivered if it differs from what was delivered last).
//! * `watch_tree_changes` is the same watch seen through [`ChangeView`]:
//!   each event is one [`TreeChange::Changed`] built from the event alone
//!   (its key, value and mod revision), so a tree change costs the server
//!   one event and the client one item, whatever the size of the prefix. A
//!   resume after a broken stream needs nothing more (etcd replays from the
//!   revision); a compacted history is a fresh read, sent as a
//!   [`TreeChange::Snapshot`]. `watch_tree` keeps its listing client-side
//!   ([`TreeView`]) and applies the same events; only building the listing
//!   it hands out grows with the prefix.
//! * The stream is a state machine polled by the consumer: no task is
//!   spawned. Dropping it drops the gRPC stream, which cancels the watch on
//!   the server.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::proto::{PbEvent, PbKeyValue};
use etcd_client::{GetOptions, WatchOptions};
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

use super::cluster::CallError;
use super::error::{Kind, BACKEND};
use super::{user_key, Core};
use crate::error::{Error, Result};
use crate::key::Namespace;
use crate::retry::Backoff;
use crate::types::{KvPair, Listing, SortedPairs, TreeChange};

/// While an outage lasts, a transient `Err` item is repeated at most this often.
const ERROR_REPEAT: Duration = Duration::from_secs(5);

/// At most this many ready responses are merged into one tree item.
const MAX_COALESCE: usize = 64;

/// `PUT` in etcd's `mvccpb.Event.EventType`.
const EVENT_PUT: i32 = 0;
/// `DELETE` in etcd's `mvccpb.Event.EventType`.
const EVENT_DELETE: i32 = 1;

/// What a watcher keeps of the watched range and turns into items.
pub(crate) trait View: Send + 'static {
    /// What the stream yields.
    type Item: Send + 'static;
    /// Replaces the state with a fresh read of the range; queues an item if
    /// it differs from what was delivered.
    fn reset(&mut self, kvs: Vec<PbKeyValue>, out: &mut VecDeque<Self::Item>);
    /// Applies the events of one watch response; queues the resulting items.
    fn apply(&mut self, events: Vec<PbEvent>, out: &mut VecDeque<Self::Item>);
}

/// One key: items are `Some(pair)` per write, `None` per deletion.
pub(crate) struct KeyView {
    user: String,
    /// Version (mod revision) of the last queued state; `None` = absent.
    /// Outer `None` = nothing delivered yet.
    delivered: Option<Option<i64>>,
}

impl KeyView {
    /// A view that has delivered nothing yet.
    pub(crate) fn new(user: String) -> Self {
        KeyView {
            user,
            delivered: None,
        }
    }

    /// A view that considers the key's state at `mod_revision` (`None` =
    /// absent) already delivered.
    pub(crate) fn after(user: String, mod_revision: Option<i64>) -> Self {
        KeyView {
            user,
            delivered: Some(mod_revision),
        }
    }

    fn offer(&mut self, state: Option<KvPair>, out: &mut VecDeque<Option<KvPair>>) {
        let version = state.as_ref().map(|p| p.last_index as i64);
        if self.delivered != Some(version) {
            self.delivered = Some(version);
            out.push_back(state);
        }
    }

    fn pair(&self, kv: PbKeyValue) -> KvPair {
        KvPair {
            key: self.user.clone(),
            value: Bytes::from(kv.value),
            last_index: u64::try_from(kv.mod_revision).unwrap_or(0),
        }
    }
}

impl View for KeyView {
    type Item = Option<KvPair>;

    fn reset(&mut self, kvs: Vec<PbKeyValue>, out: &mut VecDeque<Self::Item>) {
        let state = kvs.into_iter().next().map(|kv| self.pair(kv));
        self.offer(state, out);
    }

    fn apply(&mut self, events: Vec<PbEvent>, out: &mut VecDeque<Self::Item>) {
        for event in events {
            let Some(kv) = event.kv else { continue };
            match event.r#type {
                EVENT_PUT => {
                    let pair = self.pair(kv);
                    self.offer(Some(pair), out);
                }
                EVENT_DELETE => self.offer(None, out),
                _ => {}
            }
        }
    }
}

/// Every key strictly below a prefix: items are full sorted listings.
pub(crate) struct TreeView {
    namespace: Namespace,
    entries: SortedPairs,
    /// True once a listing was queued; later listings only when changed.
    delivered: bool,
}

impl TreeView {
    pub(crate) fn new(namespace: Namespace) -> Self {
        TreeView {
            namespace,
            entries: SortedPairs::default(),
            delivered: false,
        }
    }

    fn pair(&self, kv: PbKeyValue) -> Option<KvPair> {
        let key = user_key(&self.namespace, &kv.key)?;
        Some(KvPair {
            key,
            value: Bytes::from(kv.value),
            last_index: u64::try_from(kv.mod_revision).unwrap_or(0),
        })
    }

    fn queue(&mut self, out: &mut VecDeque<Listing>) {
        self.delivered = true;
        // A listing not yet taken is an intermediate state: replace it.
        out.clear();
        out.push_back(self.entries.listing());
    }
}

impl View for TreeView {
    type Item = Listing;

    fn reset(&mut self, kvs: Vec<PbKeyValue>, out: &mut VecDeque<Self::Item>) {
        let mut entries: Vec<KvPair> = kvs.into_iter().filter_map(|kv| self.pair(kv)).collect();
        // etcd answers in key order of the full keys; the user keys (the
        // namespace removed) keep it, but sort anyway: a listing is sorted.
        entries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        entries.dedup_by(|a, b| a.key == b.key);
        if !self.delivered || entries.as_slice() != self.entries.as_slice() {
            self.entries.replace(entries);
            self.queue(out);
        }
    }

    fn apply(&mut self, events: Vec<PbEvent>, out: &mut VecDeque<Self::Item>) {
        // A listing queued and not yet taken is replaced below anyway: drop
        // it first, so the change is applied in place instead of copying
        // the pairs it shares.
        let pending = !out.is_empty();
        out.clear();
        let mut changed = false;
        for event in events {
            let Some(kv) = event.kv else { continue };
            match event.r#type {
                EVENT_PUT => {
                    if let Some(pair) = self.pair(kv) {
                        changed |= self.entries.set(pair);
                    }
                }
                EVENT_DELETE => {
                    if let Some(key) = user_key(&self.namespace, &kv.key) {
                        changed |= self.entries.remove(&key);
                    }
                }
                _ => {}
            }
        }
        if changed || pending {
            self.queue(out);
        }
    }
}

/// Every key strictly below a prefix, as changes: items are
/// [`TreeChange`]s taken from the events themselves; no state is kept.
pub(crate) struct ChangeView {
    namespace: Namespace,
}

impl ChangeView {
    pub(crate) fn new(namespace: Namespace) -> Self {
        ChangeView { namespace }
    }
}

impl View for ChangeView {
    type Item = TreeChange;

    fn reset(&mut self, kvs: Vec<PbKeyValue>, out: &mut VecDeque<Self::Item>) {
        let mut pairs: Vec<KvPair> = kvs
            .into_iter()
            .filter_map(|kv| {
                Some(KvPair {
                    key: user_key(&self.namespace, &kv.key)?,
                    value: Bytes::from(kv.value),
                    last_index: u64::try_from(kv.mod_revision).unwrap_or(0),
                })
            })
            .collect();
        pairs.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        // Changes not yet taken are older than this read: it replaces them.
        out.clear();
        out.push_back(TreeChange::Snapshot(pairs));
    }

    fn apply(&mut self, events: Vec<PbEvent>, out: &mut VecDeque<Self::Item>) {
        for event in events {
            let Some(kv) = event.kv else { continue };
            let Some(key) = user_key(&self.namespace, &kv.key) else {
                continue;
            };
            let pair = match event.r#type {
                EVENT_PUT => Some(KvPair {
                    key: key.clone(),
                    value: Bytes::from(kv.value),
                    last_index: u64::try_from(kv.mod_revision).unwrap_or(0),
                }),
                EVENT_DELETE => None,
                _ => continue,
            };
            out.push_back(TreeChange::Changed { key, pair });
        }
    }
}

/// A resumable etcd watch on one key or range, turned into items by a [`View`].
pub(crate) struct Watcher<V: View> {
    core: Arc<Core>,
    view: V,
    /// Key or prefix named in errors.
    target: String,
    key: Vec<u8>,
    /// Empty for a single key.
    range_end: Vec<u8>,
    /// Every change up to this revision has been seen.
    revision: i64,
    stream: Option<(etcd_client::WatchStream, usize)>,
    queue: VecDeque<V::Item>,
    /// A fresh read is needed before watching again (history compacted).
    resync: bool,
    backoff: Backoff,
    failing: bool,
    last_error: Option<Instant>,
    /// An error to yield once the queued items are taken.
    pending_error: Option<Error>,
    done: bool,
}

impl<V: View> Watcher<V> {
    /// A watcher that has seen everything up to `revision` (its view knows
    /// the state then). Nothing is sent until it is first polled.
    pub(crate) fn new(
        core: Arc<Core>,
        view: V,
        target: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
        revision: i64,
    ) -> Self {
        Watcher {
            core,
            view,
            target,
            key,
            range_end,
            revision,
            stream: None,
            queue: VecDeque::new(),
            resync: false,
            backoff: Backoff::default(),
            failing: false,
            last_error: None,
            pending_error: None,
            done: false,
        }
    }

    /// Opens the etcd watch at the current revision, then reads the current
    /// state (the first item); events the read already saw are skipped. If
    /// the watch cannot be opened first, it is opened after the read.
    /// Errors here are returned to the caller of `watch`.
    pub(crate) async fn start(mut self) -> Result<Self> {
        if let Err(e) = self.open(true).await {
            tracing::debug!(error = ?e, target = %self.target, "etcd watch from now not opened; opening after the read");
        }
        self.read().await.map_err(|e| self.error(e))?;
        if self.stream.is_some() {
            return Ok(self);
        }
        if let Err(e) = self.open(false).await {
            if e.kind() != Kind::Transient {
                return Err(self.error(e));
            }
            // Reported (and retried) when the stream is polled.
            tracing::debug!(error = ?e, target = %self.target, "etcd watch not opened yet");
        }
        Ok(self)
    }

    /// The stream of items.
    pub(crate) fn into_stream(self) -> futures::stream::BoxStream<'static, Result<V::Item>> {
        futures::stream::unfold(self, |mut w| async move {
            let item = w.next().await?;
            Some((item, w))
        })
        .boxed()
    }

    async fn read(&mut self) -> std::result::Result<(), CallError> {
        let mut options = GetOptions::new();
        if !self.range_end.is_empty() {
            options = options.with_range(self.range_end.clone());
        }
        let key = self.key.clone();
        let timeout = self.core.request_timeout;
        let mut response = self
            .core
            .cluster
            .call(timeout, true, |node| {
                let kv = node.kv();
                let key = key.clone();
                let options = options.clone();
                async move { kv.get(key, Some(options)).await }
            })
            .await?;
        let revision = response.0.header.as_ref().map_or(0, |h| h.revision);
        self.revision = self.revision.max(revision);
        self.view
            .reset(std::mem::take(&mut response.0.kvs), &mut self.queue);
        self.resync = false;
        Ok(())
    }

    /// Opens the etcd watch. `from_now`: at the current revision, waiting
    /// until etcd confirms it, for [`Watcher::start`], whose read then covers
    /// everything before (etcd serves a watch from a past revision through a
    /// catch-up loop that runs every 100 ms whenever anything was written
    /// since; one from now is served at once). Otherwise after the last
    /// revision seen, so nothing is missed.
    async fn open(&mut self, from_now: bool) -> std::result::Result<(), CallError> {
        let mut options = WatchOptions::new();
        if !from_now {
            options = options.with_start_revision(self.revision + 1);
        }
        if !self.range_end.is_empty() {
            options = options.with_range(self.range_end.clone());
        }
        let index = self.core.cluster.active();
        let key = self.key.clone();
        let cluster = &self.core.cluster;
        let opened = tokio::time::timeout(self.core.request_timeout, async {
            let node = cluster.node(index).await?;
            let mut stream = node.watch.clone().watch(key, Some(options)).await?;
            if from_now {
                match stream.message().await? {
                    Some(created) if created.created() && !created.canceled() => {}
                    _ => {
                        return Err(etcd_client::Error::WatchError(
                            "the watch was not confirmed".into(),
                        ))
                    }
                }
            }
            Ok(stream)
        })
        .await;
        match opened {
            Ok(Ok(stream)) => {
                self.stream = Some((stream, index));
                Ok(())
            }
            Ok(Err(e)) => {
                let e = CallError::Client(e);
                if e.kind() == Kind::Transient {
                    cluster.failed(index);
                }
                Err(e)
            }
            Err(_) => {
                cluster.failed(index);
                Err(CallError::Timeout(self.core.request_timeout))
            }
        }
    }

    fn error(&self, e: CallError) -> Error {
        self.core.call_error(e, "watch", &self.target)
    }

    fn closed(&mut self) -> Option<Result<V::Item>> {
        self.done = true;
        self.stream = None;
        Some(Err(self.core.closed_error()))
    }

    /// Handles a failed read, open or stream: transient ones are retried
    /// (and reported now and then), others end the stream.
    fn failed(&mut self, e: CallError) -> Option<Result<V::Item>> {
        self.stream = None;
        match e.kind() {
            Kind::Transient => {
                self.failing = true;
                let now = Instant::now();
                let report = self
                    .last_error
                    .is_none_or(|at| now.duration_since(at) >= ERROR_REPEAT);
                tracing::debug!(error = ?e, target = %self.target, "etcd watch failed; resuming");
                if report {
                    self.last_error = Some(now);
                    return Some(Err(self.error(e)));
                }
                None
            }
            Kind::Compacted => {
                self.resync = true;
                None
            }
            _ => {
                self.done = true;
                Some(Err(self.error(e)))
            }
        }
    }

    /// The next item: queued ones first, then whatever the watch brings.
    pub(crate) async fn next(&mut self) -> Option<Result<V::Item>> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some(Ok(item));
            }
            if let Some(e) = self.pending_error.take() {
                return Some(Err(e));
            }
            if self.done {
                return None;
            }
            if self.core.closed.is_cancelled() {
                return self.closed();
            }
            let Some((stream, index)) = self.stream.as_mut() else {
                if self.failing {
                    crate::metrics::watch_reconnect("etcd");
                    let delay = self.backoff.next_delay();
                    tokio::select! {
                        biased;
                        _ = self.core.closed.cancelled() => return self.closed(),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                if self.resync {
                    if let Err(e) = self.read().await {
                        if let Some(item) = self.failed(e) {
                            return Some(item);
                        }
                        continue;
                    }
                }
                if let Err(e) = self.open(false).await {
                    if let Some(item) = self.failed(e) {
                        return Some(item);
                    }
                }
                continue;
            };
            let index = *index;
            let message = tokio::select! {
                biased;
                _ = self.core.closed.cancelled() => return self.closed(),
                message = stream.message() => message,
            };
            match message {
                Ok(Some(response)) => {
                    self.failing = false;
                    self.last_error = None;
                    self.backoff.reset();
                    self.handle(response);
                    // Merge what else is already there (tree listings are
                    // coalesced; key states are queued in order).
                    for _ in 0..MAX_COALESCE {
                        let Some((stream, _)) = self.stream.as_mut() else {
                            break;
                        };
                        match stream.message().now_or_never() {
                            Some(Ok(Some(response))) => self.handle(response),
                            _ => break,
                        }
                    }
                }
                Ok(None) => {
                    let e = CallError::Client(etcd_client::Error::WatchError(
                        "the server ended the watch stream".into(),
                    ));
                    if let Some(item) = self.failed(e) {
                        return Some(item);
                    }
                }
                Err(e) => {
                    let e = CallError::Client(e);
                    if e.kind() == Kind::Transient {
                        self.core.cluster.failed(index);
                    }
                    if let Some(item) = self.failed(e) {
                        return Some(item);
                    }
                }
            }
        }
    }

    fn handle(&mut self, response: etcd_client::WatchResponse) {
        let response = response.0;
        if response.canceled {
            if response.compact_revision > 0 {
                tracing::info!(
                    target = %self.target,
                    compacted = response.compact_revision,
                    "etcd compacted the watch history; re-reading"
                );
                self.stream = None;
                self.resync = true;
                return;
            }
            let reason = response.cancel_reason;
            let e = if reason.contains("permission denied") {
                Error::Unauthorized {
                    backend: BACKEND,
                    url: self.core.url.clone(),
                    source: Some(reason.into()),
                }
            } else {
                Error::Unavailable {
                    backend: BACKEND,
                    url: self.core.url.clone(),
                    source: Some(format!("watch canceled by the server: {reason}").into()),
                }
            };
            self.stream = None;
            if e.is_transient() {
                self.failing = true;
                if self.last_error.is_none() {
                    self.last_error = Some(Instant::now());
                    self.queue_error(e);
                }
            } else {
                self.done = true;
                self.queue_error(e);
            }
            return;
        }
        // A watch opened before the first read also reports changes that
        // read already saw.
        let seen = self.revision;
        let events: Vec<_> = response
            .events
            .into_iter()
            .filter(|event| event.kv.as_ref().is_none_or(|kv| kv.mod_revision > seen))
            .collect();
        for event in &events {
            if let Some(kv) = &event.kv {
                self.revision = self.revision.max(kv.mod_revision);
            }
        }
        self.view.apply(events, &mut self.queue);
    }

    fn queue_error(&mut self, e: Error) {
        // Delivered by `next` right after the items queued before it.
        self.pending_error = Some(e);
    }
}
