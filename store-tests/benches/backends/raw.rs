//! The baselines: each backend's own client doing what `put` + `get` do,
//! on keys of its own under the run's namespace.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use zookeeper_client as zk;

use crate::BoxError;

/// Raw Consul writes so far, for their `Flags`.
static WRITES: AtomicU64 = AtomicU64::new(0);

/// One connection (or connection pool) of a backend's raw client. Clones
/// share it, as clones of an anykv handle share theirs.
#[derive(Clone)]
pub(crate) enum Raw {
    Etcd(Box<etcd_client::KvClient>),
    Consul(Consul),
    Zk(zk::Client),
    Redis(redis::aio::MultiplexedConnection),
}

/// Consul has no client crate of its own; its baseline is the same HTTP
/// requests the backend sends (a one-operation `/v1/txn` write, a
/// `/v1/kv/<key>` read), through a `reqwest` client built with the same
/// settings.
#[derive(Clone)]
pub(crate) struct Consul {
    client: reqwest::Client,
    origin: String,
}

impl Raw {
    /// Connects to the server behind `base` (an anykv URL without a path).
    pub(crate) async fn connect(backend: &str, base: &str) -> Result<Raw, BoxError> {
        Ok(match backend {
            "etcd" => {
                let endpoints = anykv::StoreUrl::parse(base)?.endpoints(2379)?;
                Raw::Etcd(Box::new(
                    etcd_client::Client::connect(&endpoints, None)
                        .await?
                        .kv_client(),
                ))
            }
            "consul" => {
                let origin = base
                    .split('?')
                    .next()
                    .unwrap_or(base)
                    .replacen("consul://", "http://", 1)
                    .trim_end_matches('/')
                    .to_owned();
                let client = reqwest::Client::builder()
                    .use_rustls_tls()
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .build()?;
                Raw::Consul(Consul { client, origin })
            }
            "zookeeper" => {
                let hosts = base
                    .split('?')
                    .next()
                    .unwrap_or(base)
                    .trim_start_matches("zk://")
                    .trim_end_matches('/');
                Raw::Zk(
                    zk::Client::connector()
                        .with_session_timeout(Duration::from_secs(10))
                        .connect(hosts)
                        .await?,
                )
            }
            "redis" => {
                let client = redis::Client::open(base)?;
                Raw::Redis(client.get_multiplexed_async_connection().await?)
            }
            other => return Err(format!("no raw client for {other}").into()),
        })
    }

    /// The raw path of key number `i` of this run.
    pub(crate) fn key(&self, namespace: &str, i: usize) -> String {
        match self {
            Raw::Zk(_) => format!("/{namespace}-raw/k{i}"),
            _ => format!("{namespace}-raw/k{i}"),
        }
    }

    /// Creates what the keys need before a plain write works on them
    /// (ZooKeeper's `set_data` needs an existing znode).
    pub(crate) async fn prepare(&self, namespace: &str, keys: usize) -> Result<(), BoxError> {
        if let Raw::Zk(client) = self {
            let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
            let parent = format!("/{namespace}-raw");
            client.create(&parent, b"", &options).await?;
            for i in 0..keys {
                client
                    .create(&self.key(namespace, i), b"", &options)
                    .await?;
            }
        }
        Ok(())
    }

    /// Removes what [`Raw::prepare`] and the writes left behind.
    pub(crate) async fn cleanup(&mut self, namespace: &str, keys: usize) -> Result<(), BoxError> {
        let all: Vec<String> = (0..keys).map(|i| self.key(namespace, i)).collect();
        match self {
            Raw::Etcd(kv) => {
                let prefix = format!("{namespace}-raw/");
                kv.delete(
                    prefix.as_str(),
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                )
                .await?;
            }
            Raw::Consul(consul) => {
                let url = format!("{}/v1/kv/{namespace}-raw?recurse", consul.origin);
                consul.client.delete(url).send().await?.error_for_status()?;
            }
            Raw::Zk(client) => {
                for path in &all {
                    client.delete(path, None).await?;
                }
                client.delete(&format!("/{namespace}-raw"), None).await?;
            }
            Raw::Redis(conn) => {
                redis::cmd("DEL").arg(&all).query_async::<()>(conn).await?;
            }
        }
        Ok(())
    }

    /// Redis only: the server's own time per command so far, from
    /// `INFO commandstats`, as command name → (calls, microseconds).
    pub(crate) async fn redis_command_time(
        &mut self,
    ) -> Result<Option<HashMap<String, (u64, u64)>>, BoxError> {
        let Raw::Redis(conn) = self else {
            return Ok(None);
        };
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(conn)
            .await?;
        let mut stats = HashMap::new();
        // cmdstat_evalsha:calls=8001,usec=84581,usec_per_call=10.57,...
        for line in info.lines() {
            let Some((name, fields)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            if let (Some(calls), Some(usec)) = (field("calls"), field("usec")) {
                stats.insert(name.to_owned(), (calls, usec));
            }
        }
        Ok(Some(stats))
    }

    /// One write and one read of `key`; checks the read saw the write.
    pub(crate) async fn put_get(&mut self, key: &str, value: &Bytes) -> Result<(), BoxError> {
        let got = match self {
            Raw::Etcd(kv) => {
                kv.put(key, value.as_ref(), None).await?;
                let response = kv.get(key, None).await?;
                response.kvs().first().map(|kv| kv.value().len())
            }
            Raw::Consul(consul) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(value);
                // Consul skips a write that changes nothing (same value and
                // flags) without a Raft round; anykv stamps `Flags` so every
                // write is applied, and so does the baseline.
                let flags = WRITES.fetch_add(1, Ordering::Relaxed);
                let body = format!(
                    r#"[{{"KV":{{"Verb":"set","Key":"{key}","Flags":{flags},"Value":"{encoded}"}}}}]"#
                );
                let response = consul
                    .client
                    .put(format!("{}/v1/txn?", consul.origin))
                    .timeout(Duration::from_secs(10))
                    .body(body)
                    .send()
                    .await?
                    .error_for_status()?;
                response.bytes().await?;
                let response = consul
                    .client
                    .get(format!("{}/v1/kv/{key}?", consul.origin))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await?
                    .error_for_status()?;
                // What a caller of the HTTP API does with the answer: parse
                // the JSON and decode the value (anykv does the same).
                let body = response.bytes().await?;
                let entries: serde_json::Value = serde_json::from_slice(&body)?;
                let encoded = entries[0]["Value"].as_str().unwrap_or_default();
                let decoded = base64::engine::general_purpose::STANDARD.decode(encoded)?;
                let index = entries[0]["ModifyIndex"].as_u64();
                index.map(|_| decoded.len())
            }
            Raw::Zk(client) => {
                client.set_data(key, value, None).await?;
                let (data, _) = client.get_data(key).await?;
                Some(data.len())
            }
            Raw::Redis(conn) => {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value.as_ref())
                    .query_async::<()>(conn)
                    .await?;
                let data: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(conn).await?;
                data.map(|d| d.len())
            }
        };
        if got != Some(value.len()) {
            return Err(format!("raw read of {key} did not return the value written").into());
        }
        Ok(())
    }
}
