//! The endpoints of one etcd cluster, and failover between them.
//!
//! etcd-client's own multi-endpoint channel balances requests over every
//! endpoint and keeps sending a share of them to a dead one. Here each
//! endpoint has its own client, connected on first use, and all traffic goes
//! to one *active* endpoint; when a call to it fails with a connection-level
//! error, the next endpoint becomes active, so later calls (and retries of
//! idempotent ones) go elsewhere.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, GetResponse, Identity, KvClient, LeaseClient,
    PutOptions, PutResponse, TlsOptions, Txn, TxnResponse, WatchClient,
};
use tokio::sync::OnceCell;

use super::config::Config;
use super::error::Kind;

/// Responses (a `list` of many large values, a watch batch) may be far
/// larger than tonic's 4 MiB default; etcd itself bounds what it sends.
const MAX_DECODING_MESSAGE_SIZE: usize = usize::MAX;

/// HTTP/2 keep-alive pings detect a silently dead connection. etcd's default
/// `--grpc-keepalive-min-time` is 5 s: pinging more often gets us cut off.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Idle KV clients kept per endpoint (see [`Node::kv`]).
const KV_POOL_SIZE: usize = 32;

/// The per-service clients of one endpoint.
pub(crate) struct Node {
    kv: KvClient,
    kv_pool: Arc<Mutex<Vec<KvClient>>>,
    pub(crate) watch: WatchClient,
    pub(crate) lease: LeaseClient,
}

impl Node {
    /// A KV client for one request. etcd-client's calls take `&mut self`, so
    /// concurrent requests need their own client; a fresh clone also has to
    /// set up its channel handle on first use, so clients are reused from a
    /// small pool instead of cloned per request.
    pub(crate) fn kv(&self) -> PooledKv {
        let pooled = self.kv_pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        PooledKv {
            client: pooled.unwrap_or_else(|| self.kv.clone()),
            pool: self.kv_pool.clone(),
        }
    }
}

/// A KV client for one request. Each call consumes it and puts the client
/// back into its endpoint's pool once answered; a call that is dropped
/// mid-way drops the client instead.
pub(crate) struct PooledKv {
    client: KvClient,
    pool: Arc<Mutex<Vec<KvClient>>>,
}

impl PooledKv {
    fn release(self) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < KV_POOL_SIZE {
            pool.push(self.client);
        }
    }

    pub(crate) async fn get(
        mut self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<GetResponse, etcd_client::Error> {
        let response = self.client.get(key, options).await;
        self.release();
        response
    }

    pub(crate) async fn put(
        mut self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> Result<PutResponse, etcd_client::Error> {
        let response = self.client.put(key, value, options).await;
        self.release();
        response
    }

    pub(crate) async fn txn(mut self, txn: Txn) -> Result<TxnResponse, etcd_client::Error> {
        let response = self.client.txn(txn).await;
        self.release();
        response
    }
}

/// The endpoints of a store handle.
pub(crate) struct Cluster {
    endpoints: Vec<String>,
    nodes: Vec<OnceCell<Node>>,
    active: AtomicUsize,
    options: ConnectOptions,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("endpoints", &self.endpoints)
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish()
    }
}

impl Cluster {
    pub(crate) fn new(config: &Config) -> Self {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(HTTP2_KEEPALIVE_INTERVAL, config.connect_timeout)
            .with_keep_alive_while_idle(false)
            // A member cut off from its leader fails requests (and watches)
            // instead of serving stale data, so we move to another endpoint.
            .with_require_leader(true);
        if let Some(files) = &config.tls {
            let mut tls = TlsOptions::new();
            tls = match &files.ca {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
                // Like the other backends: the system's roots by default.
                None => tls.with_native_roots(),
            };
            if let Some(id) = &files.identity {
                tls = tls.identity(Identity::from_pem(&id.cert, id.key()));
            }
            options = options.with_tls(tls);
        }
        if let Some((user, password)) = &config.credentials {
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        Cluster {
            nodes: config.endpoints.iter().map(|_| OnceCell::new()).collect(),
            endpoints: config.endpoints.clone(),
            active: AtomicUsize::new(0),
            options,
        }
    }

    /// Number of endpoints.
    pub(crate) fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// The index of the endpoint calls go to now.
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Reports that endpoint `index` failed at the connection level: the next
    /// one becomes active (unless someone already moved on).
    pub(crate) fn failed(&self, index: usize) {
        let next = (index + 1) % self.endpoints.len().max(1);
        if next != index
            && self
                .active
                .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::info!(
                failed = self.endpoints.get(index).map(String::as_str).unwrap_or("?"),
                next = self.endpoints.get(next).map(String::as_str).unwrap_or("?"),
                "etcd endpoint failed; switching endpoint"
            );
        }
    }

    /// The clients of endpoint `index`, connecting (and authenticating) on
    /// first use. A failed connect is retried on the next call.
    pub(crate) async fn node(&self, index: usize) -> Result<&Node, etcd_client::Error> {
        let (Some(cell), Some(endpoint)) = (self.nodes.get(index), self.endpoints.get(index))
        else {
            return Err(etcd_client::Error::InvalidArgs(format!(
                "no endpoint number {index}"
            )));
        };
        if let Some(node) = cell.get() {
            return Ok(node);
        }
        // Boxed: the connect future is large, and every request's future
        // would otherwise reserve room for it.
        cell.get_or_try_init(|| Box::pin(self.connect(endpoint)))
            .await
    }

    async fn connect(&self, endpoint: &str) -> Result<Node, etcd_client::Error> {
        let client = Client::connect([endpoint], Some(self.options.clone())).await?;
        Ok(Node {
            kv_pool: Arc::default(),
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            lease: client.lease_client(),
        })
    }
}

/// Why a [`Cluster::call`] failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The client (or server) reported an error.
    Client(etcd_client::Error),
    /// No answer within the request timeout.
    Timeout(Duration),
    /// The task that made the call ended abnormally (the runtime is
    /// shutting down): the outcome is unknown.
    Aborted(String),
}

impl CallError {
    /// The error class, see [`super::error::Kind`].
    pub(crate) fn kind(&self) -> Kind {
        match self {
            CallError::Client(e) => super::error::kind(e),
            CallError::Timeout(_) => Kind::Transient,
            CallError::Aborted(_) => Kind::Other,
        }
    }
}

impl From<etcd_client::Error> for CallError {
    fn from(e: etcd_client::Error) -> Self {
        CallError::Client(e)
    }
}

impl Cluster {
    /// Runs one request against the active endpoint, within `timeout`.
    ///
    /// A connection-level failure (or timeout) makes the next endpoint
    /// active. An `idempotent` request is then retried there, up to once per
    /// endpoint; others return the error (their outcome is unknown).
    pub(crate) async fn call<T, F, Fut>(
        &self,
        timeout: Duration,
        idempotent: bool,
        mut request: F,
    ) -> Result<T, CallError>
    where
        F: FnMut(&Node) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let attempts = if idempotent { self.len().max(1) } else { 1 };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let index = self.active();
            let outcome = tokio::time::timeout(timeout, async {
                let node = self.node(index).await?;
                request(node).await
            })
            .await;
            let error = match outcome {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => CallError::Client(e),
                Err(_) => CallError::Timeout(timeout),
            };
            if error.kind() != Kind::Transient {
                return Err(error);
            }
            self.failed(index);
            if attempt >= attempts {
                return Err(error);
            }
            tracing::debug!(?error, "etcd request failed; retrying on the next endpoint");
        }
    }
}
