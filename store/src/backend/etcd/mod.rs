//! The etcd backend (cargo feature `etcd`): etcd's v3 API through
//! [`etcd-client`](https://docs.rs/etcd-client).
//!
//! # URL
//!
//! ```text
//! etcd://[user:password@]host[:port][,host[:port]…][/namespace][?option=value&…]
//! ```
//!
//! * Hosts: one or more endpoints of **one** cluster (port 2379 if omitted),
//!   plain HTTP/2, or HTTP/2 over TLS with the TLS options below. All traffic goes to one active endpoint; when it fails at
//!   the connection level (refused, reset, timed out, member without a
//!   leader) the next one becomes active. Reads, plain `put`, `delete`,
//!   `delete_tree` and lease grants are retried there at once; compare-and-
//!   swap writes and lock acquisitions are not (their outcome is unknown),
//!   they fail with a transient error and the next call uses the new
//!   endpoint. A lock *release* is safe to repeat and retries transient
//!   failures (with backoff) until the server answers, the session lease is
//!   lost or the store closes, even if the caller of `unlock()` gave up. Watches and the session keep-alive reconnect to it by
//!   themselves.
//! * The path is the namespace: `etcd://h/app` stores key `x` as `app/x`.
//! * Options:
//!   * `username`, `password` — etcd authentication (or give them as
//!     `user:password@`, not both). The auth token is refreshed
//!     automatically when it expires. Wrong credentials are
//!     [`Error::Unauthorized`].
//!   * `session_ttl` (default `10s`) — TTL of the handle's session lease, in
//!     whole seconds (rounded up; etcd raises it to its minimum, 2 s by
//!     default).
//!   * `connect_timeout` (default `5s`) — TCP connect (and HTTP/2 ping)
//!     timeout per endpoint.
//!   * `request_timeout` (default `10s`) — how long one request may take
//!     before it fails with [`Error::Timeout`] (and the next endpoint becomes
//!     active).
//!   * `tls` (default `false`, `true` if any file below is given) — TLS to
//!     every endpoint (rustls with ring; the system's roots unless `ca_file`).
//!   * `ca_file` — PEM file with the CA certificate(s) the members'
//!     certificates must chain to.
//!   * `cert_file`, `key_file` — PEM client certificate and its private key
//!     (together), for members started with `--client-cert-auth`.
//!
//!   TLS files are read when the URL is checked (at open, and by
//!   [`validate`](crate::url::validate)); one that cannot be read is an
//!   [`Error::InvalidUrl`] naming the option and the path (never a key's
//!   contents). A member certificate that does not chain to `ca_file`
//!   fails the open with [`Error::Backend`]; a member that refuses the
//!   client certificate, or its absence, fails it with
//!   [`Error::Unauthorized`] (both final, not retried; their source says
//!   why).
//!
//!   Like every duration anykv takes (TTLs, lock TTLs), these are at most
//!   [`MAX_DURATION`](crate::types::MAX_DURATION) (ten years); longer ones
//!   are [`Error::InvalidUrl`] (TTLs: [`Error::InvalidArgument`]).
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> anykv::Result<()> {
//! use anykv::prelude::*;
//! let store = anykv::open("etcd://127.0.0.1:2379,127.0.0.2:2379/app?session_ttl=5s").await?;
//! store.put("config", "on", PutOptions::new()).await?;
//! # Ok(()) }
//! ```
//!
//! # How the contract maps to etcd
//!
//! * **Versions** are mod revisions: [`KvPair::last_index`](crate::KvPair::last_index) is the revision
//!   of the key's last write. Revisions are global and never reused, so a key
//!   deleted and re-created gets a higher version (no ABA).
//! * **Compare-and-swap**: `atomic_put` / `atomic_delete` are one Txn each,
//!   comparing `create_revision == 0` (create only) or the mod revision;
//!   the failure branch reads the key to tell `KeyModified` from
//!   `KeyNotFound`. One round trip.
//! * **TTL**: a lease per write (`LeaseGrant` + a Txn with the `Put`), so
//!   the key expires TTL after the grant unless rewritten (a rewrite without
//!   TTL detaches it). etcd leases count whole seconds, so TTLs are rounded
//!   up, and etcd raises them to its minimum (⌈1.5 × election timeout⌉, 2 s
//!   with default settings); expiry is checked every 500 ms by the server.
//!   **Rewrites leave no leases behind**: a TTL lease's ID is chosen by
//!   anykv and carries a tag (`0x616b…` and check bits); every write and
//!   delete reads, in its own Txn, the lease the key carried before, and
//!   revokes it if it is such a per-key lease — it held only this key, which
//!   is now off it. So a key rewritten any number of times (a heartbeat)
//!   has at most one live lease, a deleted or detached key none. A lease
//!   without the tag (a handle's session lease, another client's) is never
//!   revoked. The revoke is a third round trip, after the write; if it
//!   fails, the old lease expires by its TTL, holding nothing. A TTL write
//!   whose answer was lost is retried on the next endpoint with a new lease,
//!   never the same one, so a revoked lease is never attached again.
//! * **Ephemeral** keys carry the handle's session lease, granted at
//!   [`open`](crate::open) and kept alive by a background task every TTL/3.
//!   `close()` revokes it (etcd deletes its keys at once); a crashed
//!   process's keys go when the lease expires, `session_ttl` after its last
//!   keep-alive. If the lease is lost (expired during an outage, or no
//!   keep-alive confirmed before a client-side deadline of TTL − TTL/10 after
//!   the last confirmed one was sent) the handle's locks report
//!   [`LockGuard::lost`](crate::LockGuard::lost), a new lease is granted as
//!   soon as the cluster answers, and later ephemeral writes use it; keys of
//!   the lost session are gone and must be written again.
//! * **Watches**: a read, then an etcd watch from the read's revision + 1,
//!   so nothing falls between snapshot and watch. After a disconnect the
//!   watch resumes from the last seen revision + 1 (reporting one transient
//!   `Err`); if that revision was compacted it re-syncs with a fresh read.
//!   Dropping the stream cancels the server-side watch; no task is spawned.
//! * **Locks** are native, the revision queue of etcd's `concurrency.Mutex`,
//!   arranged so that `get(lock_key)` returns the holder's value:
//!   * each acquisition attempt writes a *waiter key*
//!     `\0anykv-lock\0<namespace>/<lock key>\0<lease hex>-<seq hex>` with the
//!     session lease. It starts with a NUL byte, which no anykv key can
//!     contain, so it lies outside every namespace: `list`, `watch_tree` and
//!     `delete_tree` never see it (in the root namespace their ranges start at
//!     `\x01`). Waiters are ordered by create revision; each one watches only
//!     the deletion of its predecessor (no thundering herd);
//!   * the waiter at the head of the queue writes the *lock key itself*
//!     (user-visible, value = [`LockOptions::value`](crate::LockOptions::value), session lease) in the
//!     same Txn that checks it is at the head, so `get(lock_key)` returns the
//!     holder's value while held. The fencing token is the lock key's
//!     modification revision, new for every holder, so it strictly increases;
//!   * uncontended, `lock`/`try_lock` is one Txn; a release with a waiter
//!     next in line hands the lock to it in one Txn (the lock key written
//!     with the waiter's value and lease, its waiter key marked held), so a
//!     hand-over is one commit and one watch event; with no one waiting it
//!     deletes both keys if the lock key is still ours. The release retries
//!     transient failures until it is confirmed, so an `unlock()` abandoned
//!     during an outage still frees the lock as soon as the server answers;
//!   * `lost()` fires when the session lease is lost (see above), when the
//!     lock key is deleted or rewritten by anyone (a watch from the token
//!     revision, resumed across disconnects), or when the store closes;
//!   * a `lock()` future dropped mid-way removes its waiter key in the
//!     background, so it never blocks the queue. Locks live as long as the
//!     session (`lock_ttl_per_lock = false`).
//!
//! # Capabilities
//!
//! | field | value | why |
//! |---|---|---|
//! | `max_value_size` | 1 MiB | etcd's default `--max-request-bytes` is 1.5 MiB per request, which must also hold the key and Txn framing |
//! | `min_ttl` | 2 s | etcd's minimum lease TTL with the default 1 s election timeout |
//! | `ttl_slack` | 2 s | rounding up to whole seconds (< 1 s) + the server's 500 ms expiry check + the revoke |
//! | `session_ttl` | the granted session lease TTL | |
//! | `session_slack` | 1 s | the 500 ms expiry check + the revoke |
//! | `lock_ttl_per_lock` | false | locks use the session lease |
//!
//! # Limits
//!
//! * Servers with a larger election timeout have a larger minimum TTL than
//!   stated; servers with a smaller `--max-request-bytes` reject values that
//!   are accepted here.
//! * A TTL key may disappear up to one round trip before its TTL (the lease
//!   is granted just before the write).
//! * A TTL write takes three round trips when it replaces a TTL write
//!   (grant, Txn, revoke), two otherwise.
//! * In the root namespace, `list("")` covers every key of the cluster
//!   (except anykv's hidden lock queues); keys that are not valid UTF-8 or
//!   not valid anykv keys are skipped.
//! * No TLS (`https`) endpoints yet.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::proto::PbResponseHeader;
use etcd_client::{GetOptions, LeaseGrantOptions};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::key::Namespace;
use crate::store::Store;
use crate::task::Tasks;
use crate::types::{Expiry, PutOptions};
use crate::url::{HandshakeFailure, StoreUrl};

mod builder;
mod cluster;
mod kv;
pub use self::builder::EtcdBuilder;
pub(crate) mod config;
mod error;
mod lock;
mod session;
mod tls_probe;
mod ttl;
mod watch;

use self::cluster::{CallError, Cluster};
use self::config::Config;
use self::error::Kind;
use self::lock::EtcdLock;
use self::session::{Lease, Session};
use self::watch::{KeyView, TreeView, Watcher};

/// The largest value this backend accepts (1 MiB); see the module docs.
pub const MAX_VALUE_SIZE: usize = 1024 * 1024;
/// The shortest TTL etcd honours with default settings.
pub const MIN_TTL: Duration = Duration::from_secs(2);
/// How late after its TTL a key may still be visible.
pub const TTL_SLACK: Duration = Duration::from_secs(2);
/// How late after the session TTL a crashed handle's keys may still be visible.
pub const SESSION_SLACK: Duration = Duration::from_secs(1);

/// Opens a store from a parsed URL of this backend's scheme.
pub(crate) async fn open(url: StoreUrl) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(EtcdStore::from_url(url).await?))
}

/// A handle on an etcd cluster: one session (lease), any number of watches
/// and locks. Cheap to clone; clones share the session, which ends when the
/// last clone is dropped or on [`Store::close`].
///
/// Open it with [`anykv::open`](crate::open) or [`EtcdStore::connect`].
#[derive(Clone)]
pub struct EtcdStore {
    handle: Arc<Handle>,
}

/// Ends the session when the last clone of the store goes.
struct Handle {
    core: Arc<Core>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.core.shut_down_in_background();
    }
}

/// What watches, locks and the store share.
pub(crate) struct Core {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) session: Session,
    pub(crate) namespace: Namespace,
    /// The URL without secrets.
    pub(crate) url: String,
    pub(crate) request_timeout: Duration,
    /// Cancelled by `close` (or when the store is dropped).
    pub(crate) closed: CancellationToken,
    /// The handle's background tasks.
    pub(crate) tasks: Tasks,
}

impl Core {
    pub(crate) fn check_open(&self) -> Result<()> {
        crate::request::check_open(&self.closed, &self.url)
    }

    pub(crate) fn closed_error(&self) -> Error {
        Error::Closed {
            url: self.url.clone(),
        }
    }

    /// Maps a failed call about `target` (a key or prefix).
    pub(crate) fn call_error(&self, e: CallError, operation: &'static str, target: &str) -> Error {
        match e {
            CallError::Client(e) => error::map(e, &self.url, target),
            CallError::Timeout(after) => Error::Timeout {
                operation,
                target: format!("{target:?} at {}", self.url),
                after,
            },
            CallError::Aborted(reason) => Error::Backend {
                backend: error::BACKEND,
                target: format!("{operation} {target:?} at {}", self.url),
                source: reason.into(),
            },
        }
    }

    /// One request on the active endpoint, with the request timeout.
    async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        target: &str,
        idempotent: bool,
        request: F,
    ) -> Result<T>
    where
        F: FnMut(&cluster::Node) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.cluster
            .call(self.request_timeout, idempotent, request)
            .await
            .map_err(|e| self.call_error(e, operation, target))
    }

    async fn close(&self) -> Result<()> {
        if self.closed.is_cancelled() {
            return Ok(());
        }
        self.closed.cancel();
        let Some(lease) = self.session.current() else {
            return Ok(());
        };
        lease.lost.cancel();
        session::revoke(&self.cluster, lease.id, self.request_timeout)
            .await
            .map_err(|e| self.call_error(e, "close", "the session lease"))
    }

    fn shut_down_in_background(&self) {
        if self.closed.is_cancelled() {
            return;
        }
        self.closed.cancel();
        let Some(lease) = self.session.current() else {
            return;
        };
        lease.lost.cancel();
        // On the store's runtime, wherever the store is dropped; if that
        // runtime is gone, the lease simply expires.
        let cluster = self.cluster.clone();
        let timeout = self.request_timeout;
        self.tasks.spawn(async move {
            if let Err(error) = session::revoke(&cluster, lease.id, timeout).await {
                tracing::debug!(
                    ?error,
                    "could not revoke the session lease of a dropped store"
                );
            }
        });
    }
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let core = &self.handle.core;
        f.debug_struct("EtcdStore")
            .field("url", &core.url)
            .field("lease", &core.session.current().map(|l| l.id))
            .field("closed", &core.closed.is_cancelled())
            .finish()
    }
}

impl EtcdStore {
    /// Opens an `etcd://` URL (see the module docs): connects, authenticates
    /// and grants the session lease, trying each endpoint in turn.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::from_url(StoreUrl::parse_expecting(url, &["etcd"])?).await
    }

    /// Opens from a parsed `etcd://` URL.
    pub async fn from_url(url: StoreUrl) -> Result<Self> {
        url.expect_scheme(&["etcd"])?;
        let config = Config::from_url(url)?;
        let tasks = Tasks::current(&config.url)?;
        if let (Some(files), Some(first)) = (&config.tls, config.endpoints.first()) {
            // A refused client certificate is told apart from a member that
            // is down here, before the gRPC client can blur the two.
            if let Some((failure, source)) =
                tls_probe::probe(first, files, config.connect_timeout).await
            {
                return Err(match failure {
                    HandshakeFailure::ClientRefused => Error::Unauthorized {
                        backend: error::BACKEND,
                        url: config.url.clone(),
                        source: Some(Box::new(source)),
                    },
                    HandshakeFailure::ServerNotTrusted => Error::Backend {
                        backend: error::BACKEND,
                        target: config.url.clone(),
                        source: Box::new(source),
                    },
                });
            }
        }
        let cluster = Arc::new(Cluster::new(&config));
        // Connect (and authenticate) with a read in the namespace: etcd does
        // not check permissions on lease grants, and a wrong or missing
        // password should fail here, not at the first operation.
        let (probe, _) = below(config.namespace.prefix());
        cluster
            .call(config.request_timeout, true, |node| {
                let kv = node.kv();
                let probe = probe.clone();
                async move {
                    kv.get(probe, Some(GetOptions::new().with_count_only()))
                        .await
                }
            })
            .await
            .map_err(|e| session::call_error(e, &config.url, "connect"))?;
        let closed = CancellationToken::new();
        let session = Session::start(
            cluster.clone(),
            config.session_ttl,
            config.request_timeout,
            closed.clone(),
            config.url.clone(),
            &tasks,
        )
        .await?;
        Ok(EtcdStore {
            handle: Arc::new(Handle {
                core: Arc::new(Core {
                    cluster,
                    session,
                    namespace: config.namespace,
                    url: config.url,
                    request_timeout: config.request_timeout,
                    closed,
                    tasks,
                }),
            }),
        })
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.handle.core
    }

    fn namespace(&self) -> &Namespace {
        &self.handle.core.namespace
    }

    /// The lease a write with `options` attaches to (0 = none), and the
    /// session lease if that is the one.
    async fn lease_for(
        &self,
        user: &str,
        options: &PutOptions,
    ) -> Result<(i64, Option<Arc<Lease>>)> {
        match options.expiry {
            Expiry::Never => Ok((0, None)),
            Expiry::Ttl(ttl) => Ok((self.grant_ttl_lease(user, ttl).await?, None)),
            Expiry::Ephemeral => {
                let lease = self.core().session.lease().await?;
                Ok((lease.id, Some(lease)))
            }
        }
    }

    /// Grants the lease of one TTL write, with a tagged ID of our choosing
    /// (see the `ttl` module); an ID already in use is replaced by another.
    async fn grant_ttl_lease(&self, user: &str, ttl: Duration) -> Result<i64> {
        let core = self.core();
        let secs = config::ttl_secs(ttl);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let id = ttl::new_id();
            let outcome = core
                .cluster
                .call(core.request_timeout, true, |node| {
                    let mut lease = node.lease.clone();
                    let options = LeaseGrantOptions::new().with_id(id);
                    async move { lease.grant(secs, Some(options)).await }
                })
                .await;
            match outcome {
                Ok(granted) => return Ok(granted.id()),
                // Most likely our own grant, applied by an attempt whose
                // answer was lost; either way the ID is not ours to use.
                Err(e) if e.kind() == Kind::LeaseExists && attempt < ttl::GRANT_ATTEMPTS => {
                    tracing::debug!(lease = id, "etcd lease ID in use; granting another");
                }
                Err(e) => return Err(core.call_error(e, "grant a TTL lease", user)),
            }
        }
    }

    /// Runs a write that may carry a lease; returns its answer and the lease
    /// it attached (0 = none). A session lease found missing is replaced and
    /// the write tried once more.
    ///
    /// A TTL lease goes out in one request only: after a connection-level
    /// failure an `idempotent` TTL write is retried on the next endpoint
    /// with a newly granted lease, never with the same one, so that no lease
    /// a later write has replaced (and revokes) is attached again.
    async fn write_with_lease<T, F, Fut>(
        &self,
        operation: &'static str,
        user: &str,
        options: &PutOptions,
        idempotent: bool,
        mut request: F,
    ) -> Result<(T, i64)>
    where
        F: FnMut(&cluster::Node, Option<etcd_client::PutOptions>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let core = self.core();
        let ttl = matches!(options.expiry, Expiry::Ttl(_));
        let mut fresh_lease_retries = if ttl && idempotent {
            core.cluster.len().saturating_sub(1)
        } else {
            0
        };
        let mut retried = false;
        loop {
            let (lease, session_lease) = self.lease_for(user, options).await?;
            let put_options =
                (lease != 0).then(|| etcd_client::PutOptions::new().with_lease(lease));
            let outcome = core
                .cluster
                .call(core.request_timeout, idempotent && !ttl, |node| {
                    request(node, put_options.clone())
                })
                .await;
            match outcome {
                Ok(value) => return Ok((value, lease)),
                Err(e) if e.kind() == Kind::LeaseNotFound && !retried => {
                    if let Some(lease) = session_lease {
                        core.session.lease_gone(&lease);
                    }
                    retried = true;
                }
                Err(e) if e.kind() == Kind::Transient && fresh_lease_retries > 0 => {
                    tracing::debug!(error = ?e, "etcd TTL write failed; retrying with a new lease");
                    fresh_lease_retries -= 1;
                }
                Err(e) => return Err(core.call_error(e, operation, user)),
            }
        }
    }

    /// After a write of `user` that attached `attached` (0 = none) and took
    /// the key off `replaced`: revokes `replaced` if it is a per-key TTL
    /// lease (see the `ttl` module), which then holds nothing. Best effort:
    /// a lease left behind expires by its TTL.
    async fn retire_lease(&self, user: &str, replaced: i64, attached: i64) {
        if replaced == attached || !ttl::is_ttl_lease(replaced) {
            return;
        }
        let core = self.core();
        if let Err(error) = session::revoke(&core.cluster, replaced, core.request_timeout).await {
            tracing::debug!(
                key = %user,
                lease = replaced,
                ?error,
                "could not revoke the TTL lease a write replaced; it expires by its TTL"
            );
        }
    }
}

/// The lease of the key a keys-only range read, as the first operation of a
/// Txn's responses (0 = none, or no such key).
fn lease_read(responses: &[etcd_client::proto::PbResponseOp]) -> i64 {
    match responses.first().and_then(|op| op.response.as_ref()) {
        Some(etcd_client::proto::PbTxnOpResponse::ResponseRange(range)) => {
            range.kvs.first().map_or(0, |kv| kv.lease)
        }
        _ => 0,
    }
}

/// The revision of a response.
fn revision(header: Option<&PbResponseHeader>, target: &str) -> Result<u64> {
    header
        .and_then(|h| u64::try_from(h.revision).ok())
        .filter(|r| *r > 0)
        .ok_or_else(|| error::malformed(target, "etcd response without a revision"))
}

/// A version as etcd compares it; one that cannot exist never matches.
fn version(last_index: u64) -> i64 {
    i64::try_from(last_index).unwrap_or(-1)
}

/// The first key after every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every key: etcd's "to the end" marker.
    vec![0]
}

/// The key range `[start, end)` strictly below the backend prefix `full`
/// (`""`: every key except the hidden lock queues, which start with NUL).
fn below(full: &str) -> (Vec<u8>, Vec<u8>) {
    if full.is_empty() {
        return (vec![1], vec![0]);
    }
    let mut start = full.as_bytes().to_vec();
    start.push(b'/');
    let end = prefix_end(&start);
    (start, end)
}

/// The user key of a backend key, or `None` if it is outside the namespace
/// or not a valid anykv key (not UTF-8, control characters).
pub(crate) fn user_key(namespace: &Namespace, full: &[u8]) -> Option<String> {
    let full = std::str::from_utf8(full).ok()?;
    let user = namespace.strip(full)?;
    if user.chars().any(char::is_control) {
        return None;
    }
    Some(user.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_below_a_prefix_exclude_name_siblings() {
        assert_eq!(below("app"), (b"app/".to_vec(), b"app0".to_vec()));
        assert_eq!(below(""), (vec![1], vec![0]));
        assert_eq!(prefix_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn user_keys_skip_foreign_and_hidden_keys() {
        let ns = Namespace::new("app").unwrap();
        assert_eq!(user_key(&ns, b"app/x/y").as_deref(), Some("x/y"));
        assert_eq!(user_key(&ns, b"apple/x"), None);
        assert_eq!(user_key(&ns, b"app/\xff"), None);
        let root = Namespace::default();
        assert_eq!(user_key(&root, b"\0anykv-lock\0k\0w"), None);
        assert_eq!(user_key(&root, b"k"), Some("k".to_owned()));
    }
}
