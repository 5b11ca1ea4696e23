//! Service discovery: instances register under session-bound keys, and
//! anyone can list or watch the live set of a service.
//!
//! ```
//! # #[tokio::main] async fn main() -> anykv::Result<()> {
//! use anykv_recipes::discovery::{Discovery, Instance};
//! use futures::StreamExt;
//!
//! let store = anykv::open("memory://discovery-doc").await?;
//! let discovery = Discovery::new(store, "services");
//! let (mut sets, _errors) = discovery.watch("web").await?;
//! assert!(sets.next().await.unwrap().is_empty()); // the current set first
//!
//! let web1 = Instance::new("web", "web-1", "10.0.0.1:80").with_metadata("zone", "a");
//! let registration = discovery.register(web1.clone()).await?;
//! assert_eq!(sets.next().await.unwrap(), vec![web1.clone()]);
//! assert_eq!(discovery.instances("web").await?, vec![web1]);
//!
//! registration.deregister().await?; // or drop it: the key goes either way
//! assert!(sets.next().await.unwrap().is_empty());
//! # Ok(()) }
//! ```
//!
//! # Keys and lifetimes
//! An instance of service `s` with id `i` is the key `<prefix>/s/i`, written
//! [ephemeral](anykv::PutOptions::ephemeral) with the [`Instance`] as JSON.
//! It lives as long as the registering handle's session:
//!
//! * [`Registration::deregister`] (or dropping the [`Registration`]) deletes
//!   it — only if it is still the registration's own write, so a newer
//!   registration of the same id by another process stays.
//! * A crashed process's instances go when its session does: within the
//!   store's [`session_ttl`](anykv::Capabilities::session_ttl) plus its
//!   [`session_slack`](anykv::Capabilities::session_slack).
//! * When the handle's session is lost and replaced
//!   ([`anykv::Session::replaced`]), the old session's keys are gone; the
//!   registration writes its key again at once, without any call from its
//!   owner. It also writes it again if anyone deletes it.
//!
//! Service names and instance ids must be non-empty and free of `/`
//! (otherwise [`anykv::Error::InvalidArgument`] naming the key), and form
//! valid anykv keys.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anykv::retry::Backoff;
use anykv::{DeleteOptions, Error, KvPair, PutOptions, Result, Store, StoreExt, WatchStream};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::feed::{self, ErrorStream, Producer, ERROR_CAPACITY};

/// The instance stream of [`Discovery::watch`]: the service's full set of
/// live instances (sorted by id), first the current one, then after every
/// change.
pub type InstanceStream = BoxStream<'static, Vec<Instance>>;

/// One instance of a service: what it registers and what watchers see.
/// Stored as JSON (`{"service":…,"id":…,"endpoint":…,"metadata":{…}}`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Instance {
    /// The service's name (no `/`).
    pub service: String,
    /// The instance's id, unique within the service (no `/`).
    pub id: String,
    /// Where to reach it (an address, a URL: opaque to discovery).
    pub endpoint: String,
    /// Free-form labels (zone, version, weight, …).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Instance {
    /// An instance `id` of `service`, reachable at `endpoint`, without
    /// metadata.
    pub fn new(
        service: impl Into<String>,
        id: impl Into<String>,
        endpoint: impl Into<String>,
    ) -> Self {
        Instance {
            service: service.into(),
            id: id.into(),
            endpoint: endpoint.into(),
            metadata: BTreeMap::new(),
        }
    }

    /// The same instance with the label `key` set to `value`.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// Registers and finds the instances of services below one key prefix.
///
/// Cheap to clone. All methods work through the given handle: its session
/// owns the registrations made with it.
#[derive(Clone, Debug)]
pub struct Discovery {
    store: Arc<dyn Store>,
    prefix: String,
}

impl Discovery {
    /// Discovery of the services below `prefix` (e.g. `"services"`; `""` is
    /// the handle's namespace itself) on `store`.
    pub fn new(store: Arc<dyn Store>, prefix: impl Into<String>) -> Self {
        Discovery {
            store,
            prefix: prefix.into().trim_matches('/').to_owned(),
        }
    }

    /// The key prefix of a service's instances.
    fn service_dir(&self, service: &str) -> Result<String> {
        let dir = if self.prefix.is_empty() {
            service.to_owned()
        } else {
            format!("{}/{service}", self.prefix)
        };
        check_name("service name", service, &dir)?;
        Ok(dir)
    }

    /// The key of one instance.
    pub fn key_of(&self, service: &str, id: &str) -> Result<String> {
        let key = format!("{}/{id}", self.service_dir(service)?);
        check_name("instance id", id, &key)?;
        Ok(key)
    }

    /// Registers `instance` under its session-bound key and keeps it
    /// registered (see the [module docs](self)) until the returned
    /// [`Registration`] is deregistered or dropped, or the store closes.
    ///
    /// Returns once the key is written. Errors: an invalid name
    /// ([`Error::InvalidArgument`] / [`Error::InvalidKey`]), a failed first
    /// write, or no tokio runtime to keep it on.
    pub async fn register(&self, instance: Instance) -> Result<Registration> {
        let key = self.key_of(&instance.service, &instance.id)?;
        let runtime = feed::runtime(&key, "register")?;
        let value =
            Bytes::from(
                serde_json::to_vec(&instance).map_err(|e| Error::InvalidArgument {
                    key: key.clone(),
                    reason: format!("the instance cannot be encoded as JSON: {e}"),
                })?,
            );
        // The view is taken before the write, so a replacement right after
        // it is not missed.
        let session = self.store.session();
        let written = self
            .store
            .put(&key, value.clone(), PutOptions::ephemeral())
            .await?;
        let stop = CancellationToken::new();
        let (errors_tx, errors_rx) = mpsc::channel(ERROR_CAPACITY);
        let keeper = Keeper {
            store: self.store.clone(),
            key: key.clone(),
            value,
            version: written.last_index,
            errors: errors_tx,
            backoff: Backoff::new(),
        };
        let task = runtime.spawn(keeper.run(session, stop.clone()));
        Ok(Registration {
            instance,
            key,
            stop,
            task: Some(task),
            errors: std::sync::Mutex::new(Some(feed::error_stream(errors_rx))),
        })
    }

    /// The live instances of `service` now, sorted by id. Entries that are
    /// not instances (foreign keys, deeper keys, malformed JSON) are
    /// skipped.
    pub async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        let dir = self.service_dir(service)?;
        let pairs = self.store.list(&dir).await?;
        Ok(parse_listing(&dir, &pairs, |_| {}))
    }

    /// Watches `service`: the instance stream (its current set first, then
    /// the full set after every change; equal consecutive sets are merged,
    /// and a reader that falls behind skips to the latest set) and the
    /// error stream (watch failures the watcher recovered from, and entries
    /// that are not instances; a closed store ends both, its error last).
    ///
    /// Driven by [`Store::watch_tree`]: no polling. The watching task ends
    /// when both streams are dropped or the store closes.
    pub async fn watch(&self, service: &str) -> Result<(InstanceStream, ErrorStream)> {
        let dir = self.service_dir(service)?;
        let runtime = feed::runtime(&dir, "watch")?;
        let mut first = self.store.watch_tree(&dir).await?;
        // The stream's first item is the first listing.
        let mut early = Vec::new();
        let initial = loop {
            match first.next().await {
                Some(Ok(pairs)) => break parse_listing(&dir, &pairs, |e| early.push(e)),
                Some(Err(e)) if e.is_transient() => early.push(e),
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(Error::Closed {
                        url: format!("(the watch of {dir} ended)"),
                    })
                }
            }
        };
        let (producer, sets, errors) = feed::channel(initial);
        for error in early {
            producer.report(error);
        }
        let watcher = Watcher {
            store: self.store.clone(),
            dir,
            producer,
            backoff: Backoff::new(),
        };
        runtime.spawn(watcher.run(first));
        Ok((sets, errors))
    }
}

/// Rejects an empty name or one with `/`, naming `key`.
pub(crate) fn check_name(what: &str, name: &str, key: &str) -> Result<()> {
    let reason = if name.is_empty() {
        format!("the {what} is empty")
    } else if name.contains('/') {
        format!("the {what} {name:?} contains '/'")
    } else {
        return Ok(());
    };
    Err(Error::InvalidArgument {
        key: key.to_owned(),
        reason,
    })
}

/// The instances among the pairs of a listing of `dir`: its direct children
/// that parse; every other child is reported and skipped.
fn parse_listing(dir: &str, pairs: &[KvPair], mut report: impl FnMut(Error)) -> Vec<Instance> {
    let mut instances = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let Some(id) = pair
            .key
            .strip_prefix(dir)
            .and_then(|rest| rest.strip_prefix('/'))
        else {
            continue;
        };
        if id.contains('/') {
            continue;
        }
        match serde_json::from_slice::<Instance>(&pair.value) {
            Ok(instance) => instances.push(instance),
            Err(e) => report(Error::InvalidArgument {
                key: pair.key.clone(),
                reason: format!("not a service instance (expected its JSON): {e}"),
            }),
        }
    }
    instances
}

/// A registered instance, kept registered by a task this value owns.
///
/// [`Registration::deregister`] deletes the key and waits for it; dropping
/// the registration hands the delete to that task (it still runs, in the
/// background). Either way the task ends.
#[must_use = "dropping the registration deregisters the instance"]
pub struct Registration {
    instance: Instance,
    key: String,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<()>>>,
    /// Behind a mutex only to make the value `Sync`; taken once.
    errors: std::sync::Mutex<Option<ErrorStream>>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// The registered instance.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// Its key, relative to the store's namespace.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The failures of keeping the instance registered (a re-registration
    /// that failed and is retried with backoff, a watch failure). The first
    /// call takes the stream; later calls get an empty one.
    pub fn errors(&mut self) -> ErrorStream {
        let errors = match self.errors.get_mut() {
            Ok(errors) => errors.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        errors.unwrap_or_else(|| futures::stream::empty().boxed())
    }

    /// Stops keeping the instance registered and deletes its key (if it is
    /// still this registration's write), retrying transient failures for up
    /// to twice the session TTL. The delete runs in the registration's own
    /// task: if this future is dropped, it still goes on.
    pub async fn deregister(mut self) -> Result<()> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|join| {
                Err(Error::Backend {
                    backend: "anykv-recipes",
                    target: self.key.clone(),
                    source: format!("the registration task ended abnormally: {join}").into(),
                })
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // The task deletes the key and ends.
        self.stop.cancel();
    }
}

/// The registration's task: writes the key again when the session is
/// replaced or the key is gone, and deletes it at the end.
struct Keeper {
    store: Arc<dyn Store>,
    key: String,
    value: Bytes,
    /// The version of our latest write.
    version: u64,
    errors: mpsc::Sender<Error>,
    backoff: Backoff,
}

impl Keeper {
    async fn run(mut self, mut session: anykv::Session, stop: CancellationToken) -> Result<()> {
        let mut watch: Option<WatchStream> = None;
        let mut rewrite = false;
        loop {
            if rewrite {
                let write = self
                    .store
                    .put(&self.key, self.value.clone(), PutOptions::ephemeral());
                // A write that hangs (a backend stuck on the old session) is
                // given up and tried again.
                let written = tokio::time::timeout(self.write_patience(), write)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::Timeout {
                            operation: "registering an instance again",
                            target: self.key.clone(),
                            after: self.write_patience(),
                        })
                    });
                match written {
                    Ok(pair) => {
                        tracing::debug!(key = %self.key, "instance registered again");
                        self.version = pair.last_index;
                        rewrite = false;
                        self.backoff.reset();
                    }
                    Err(Error::Closed { .. }) => return Ok(()),
                    Err(error) => {
                        tracing::warn!(key = %self.key, %error, "registering the instance again failed");
                        self.report(error);
                        if !self.pause(&stop).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let current = match watch.as_mut() {
                Some(current) => current,
                None => match self.store.watch(&self.key).await {
                    Ok(new) => watch.insert(new),
                    Err(Error::Closed { .. }) => return Ok(()),
                    Err(error) => {
                        self.report(error);
                        if !self.pause(&stop).await {
                            break;
                        }
                        continue;
                    }
                },
            };
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                replaced = session.replaced() => match replaced {
                    // Closed: the session's end removed the key.
                    None => return Ok(()),
                    Some(generation) => {
                        tracing::debug!(key = %self.key, generation, "session replaced; registering again");
                        rewrite = true;
                    }
                },
                item = current.next() => match item {
                    Some(Ok(None)) => rewrite = true,
                    Some(Ok(Some(_))) => {}
                    Some(Err(error)) if error.is_transient() => self.report(error),
                    Some(Err(Error::Closed { .. })) => return Ok(()),
                    Some(Err(error)) => {
                        self.report(error);
                        watch = None;
                        if !self.pause(&stop).await {
                            break;
                        }
                    }
                    None => watch = None,
                },
            }
        }
        drop(watch);
        self.delete().await
    }

    /// Deletes our write, retrying transient failures for up to twice the
    /// session TTL (after that the session has surely ended too).
    async fn delete(&mut self) -> Result<()> {
        let patience = self
            .store
            .capabilities()
            .session_ttl
            .saturating_mul(2)
            .max(Duration::from_secs(1));
        let start = tokio::time::Instant::now();
        loop {
            let options = DeleteOptions::new().if_version(self.version);
            match self.store.delete_opts(&self.key, options).await {
                Ok(())
                | Err(Error::KeyModified { .. })
                | Err(Error::KeyNotFound { .. })
                | Err(Error::Closed { .. }) => return Ok(()),
                Err(error) if error.is_transient() && start.elapsed() < patience => {
                    tracing::debug!(key = %self.key, %error, "deregistering: retrying");
                    tokio::time::sleep(self.backoff.next_delay()).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn report(&self, error: Error) {
        let _ = self.errors.try_send(error);
    }

    /// How long one write of the key may take before it is tried again:
    /// the session TTL (at least a second), within which the key must be
    /// back anyway.
    fn write_patience(&self) -> Duration {
        self.store
            .capabilities()
            .session_ttl
            .max(Duration::from_secs(1))
    }

    /// Waits the next backoff delay; false if stopped meanwhile.
    async fn pause(&mut self, stop: &CancellationToken) -> bool {
        tokio::select! {
            biased;
            () = stop.cancelled() => false,
            () = tokio::time::sleep(self.backoff.next_delay()) => true,
        }
    }
}

/// The watch task of [`Discovery::watch`].
struct Watcher {
    store: Arc<dyn Store>,
    dir: String,
    producer: Producer<Vec<Instance>>,
    backoff: Backoff,
}

impl Watcher {
    async fn run(mut self, first: anykv::TreeWatchStream) {
        let mut watch = Some(first);
        loop {
            let current = match watch.as_mut() {
                Some(current) => current,
                None => {
                    let watched = tokio::select! {
                        biased;
                        () = self.producer.consumers_gone() => return,
                        watched = self.store.watch_tree(&self.dir) => watched,
                    };
                    match watched {
                        Ok(new) => watch.insert(new),
                        Err(error) => {
                            if !self.failed(error).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
            };
            let item = tokio::select! {
                biased;
                () = self.producer.consumers_gone() => return,
                item = current.next() => item,
            };
            match item {
                Some(Ok(pairs)) => {
                    self.backoff.reset();
                    let producer = &self.producer;
                    let set = parse_listing(&self.dir, &pairs, |e| producer.report(e));
                    self.producer.publish(set);
                }
                Some(Err(error)) if error.is_transient() => self.producer.report(error),
                Some(Err(error)) => {
                    watch = None;
                    if !self.failed(error).await {
                        return;
                    }
                }
                // A watch ends only after a final error; watch again.
                None => {
                    watch = None;
                    let pause = self.backoff.next_delay();
                    tokio::select! {
                        biased;
                        () = self.producer.consumers_gone() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    /// Reports a failure and backs off; false if watching must end (a
    /// closed store, or nobody reads any more).
    async fn failed(&mut self, error: Error) -> bool {
        let closed = matches!(error, Error::Closed { .. });
        tracing::debug!(dir = %self.dir, %error, "service watch failed");
        self.producer.report(error);
        if closed {
            return false;
        }
        tokio::select! {
            biased;
            () = self.producer.consumers_gone() => false,
            () = tokio::time::sleep(self.backoff.next_delay()) => true,
        }
    }
}
