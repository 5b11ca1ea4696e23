//! The HTTP calls this backend makes to the Consul agent (API v1).
//!
//! Every request carries the ACL token in the `X-Consul-Token` header (never
//! in the URL, so it cannot leak into an error message) and `dc=` when a
//! datacenter is configured. Non-blocking requests are bounded by
//! `request_timeout`; blocking queries by their `wait` plus Consul's jitter
//! (wait/16) plus `request_timeout`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

use super::codec::{decode_base64, Json};
use super::config::Config;
use super::error::ConsulError;

/// Bytes of a key left as they are in a URL path; everything else is
/// percent-encoded (Consul decodes the path before using it as the key).
const KEY_PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-consul-token");
const INDEX_HEADER: HeaderName = HeaderName::from_static("x-consul-index");

/// One KV entry as Consul returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The full (namespaced) key.
    pub(crate) key: String,
    pub(crate) value: Bytes,
    pub(crate) modify_index: u64,
    /// The session holding the key's lock, if any.
    pub(crate) session: Option<String>,
    /// The entry's `Flags`: the stamp of the write that produced it (see
    /// the `txn` module); 0 when absent.
    pub(crate) flags: u64,
}

impl Entry {
    /// Decodes one entry object. Values are absent (`null`) in transaction
    /// results and for empty values.
    pub(crate) fn from_json(json: &Json<'_>) -> Result<Entry, ConsulError> {
        let bad = |what: &str| ConsulError::Protocol(format!("KV entry {what}"));
        let key = json
            .get("Key")
            .and_then(Json::as_str)
            .ok_or_else(|| bad("without a Key"))?
            .to_owned();
        let modify_index = json
            .get("ModifyIndex")
            .and_then(Json::as_u64)
            .ok_or_else(|| bad("without a ModifyIndex"))?;
        let value = match json.get("Value") {
            None | Some(Json::Null) => Bytes::new(),
            Some(Json::String(text)) => Bytes::from(
                decode_base64(text).map_err(|e| bad(&format!("with a bad Value: {e}")))?,
            ),
            Some(_) => return Err(bad("with a Value that is not a string")),
        };
        let session = json
            .get("Session")
            .and_then(Json::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let flags = json.get("Flags").and_then(Json::as_u64).unwrap_or(0);
        Ok(Entry {
            key,
            value,
            modify_index,
            session,
            flags,
        })
    }
}

/// A raw answer: status, the `X-Consul-Index` header, the body.
struct Answer {
    status: StatusCode,
    index: Option<u64>,
    body: Bytes,
}

impl Answer {
    fn error(self) -> ConsulError {
        ConsulError::Status {
            status: self.status.as_u16(),
            body: String::from_utf8_lossy(&self.body)
                .trim()
                .chars()
                .take(512)
                .collect(),
        }
    }

    fn json(&self) -> Result<Json<'_>, ConsulError> {
        Json::parse(&self.body).map_err(ConsulError::Protocol)
    }

    /// The blocking-query index; Consul sends it on every KV read.
    fn require_index(&self) -> Result<u64, ConsulError> {
        self.index
            .ok_or_else(|| ConsulError::Protocol(format!("no {INDEX_HEADER} header")))
    }
}

/// The agent's HTTP API. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Http {
    inner: Arc<HttpInner>,
}

struct HttpInner {
    client: reqwest::Client,
    /// `http://host:port/`, parsed once: every request URL is a clone of it
    /// with path and query set, so no request re-parses scheme and host.
    origin: Url,
    /// `…/v1/txn?dc=…`, the URL of every write.
    txn: Url,
    /// `dc=…&` or empty; goes first in every query string.
    dc_query: String,
    token: Option<HeaderValue>,
    request_timeout: Duration,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("origin", &self.inner.origin.as_str())
            .finish_non_exhaustive()
    }
}

impl Http {
    pub(crate) fn new(config: &Config) -> Result<Http, ConsulError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            // Concurrent requests (many tasks sharing the handle, watches,
            // lock monitors, renewals) each need a connection of their own.
            // Keep up to 64 idle ones so bursts reuse them instead of
            // reconnecting, but only for a second: no connection, nor the
            // task driving it, outlives its use by long.
            .pool_max_idle_per_host(64)
            .pool_idle_timeout(Duration::from_secs(1));
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                ConsulError::Setup(format!("cannot read ca_file {}: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                ConsulError::Setup(format!(
                    "ca_file {} holds no usable PEM certificate: {e}",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(ConsulError::Setup(format!(
                    "ca_file {} holds no PEM certificate",
                    path.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| ConsulError::Setup(format!("cannot build the HTTP client: {e}")))?;
        let token = match &config.token {
            None => None,
            Some(t) => {
                let mut value = HeaderValue::from_str(t).map_err(|_| {
                    ConsulError::Setup("the token is not a valid HTTP header value".into())
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let dc_query = match &config.datacenter {
            Some(dc) => format!("dc={}&", utf8_percent_encode(dc, NON_ALPHANUMERIC)),
            None => String::new(),
        };
        let origin = Url::parse(&format!("{}/", config.origin))
            .map_err(|e| ConsulError::Setup(format!("cannot form the agent's URL: {e}")))?;
        let mut txn = String::from("/v1/txn");
        push_query(&mut txn, &dc_query, "");
        let txn = join(&origin, &txn)?;
        Ok(Http {
            inner: Arc::new(HttpInner {
                client,
                origin,
                txn,
                dc_query,
                token,
                request_timeout: config.request_timeout,
            }),
        })
    }

    /// `…/v1/kv/<key>[/]?dc=…&<query>`.
    fn kv_url(&self, full: &str, trailing_slash: bool, query: &str) -> Result<Url, ConsulError> {
        let inner = &self.inner;
        let mut relative = String::with_capacity(
            10 + full.len() + full.len() / 2 + inner.dc_query.len() + query.len(),
        );
        relative.push_str("/v1/kv/");
        relative.extend(utf8_percent_encode(full, KEY_PATH));
        if trailing_slash && !full.is_empty() {
            relative.push('/');
        }
        push_query(&mut relative, &inner.dc_query, query);
        join(&inner.origin, &relative)
    }

    /// `…/v1/<path>?dc=…`.
    fn api_url(&self, path: &str) -> Result<Url, ConsulError> {
        let mut relative = format!("/v1/{path}");
        push_query(&mut relative, &self.inner.dc_query, "");
        join(&self.inner.origin, &relative)
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Answer, ConsulError> {
        let mut request = self.inner.client.request(method, url).timeout(timeout);
        if let Some(token) = &self.inner.token {
            request = request.header(TOKEN_HEADER, token.clone());
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ConsulError::transport(e, timeout))?;
        let status = response.status();
        let index = response
            .headers()
            .get(INDEX_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = response
            .bytes()
            .await
            .map_err(|e| ConsulError::transport(e, timeout))?;
        Ok(Answer {
            status,
            index,
            body,
        })
    }

    fn blocking_timeout(&self, wait: Duration) -> Duration {
        wait + wait / 16 + self.inner.request_timeout
    }

    /// A KV read of one key, or with `recurse` of every key under it, as a
    /// blocking query when `block = Some((index, wait))`. Returns the
    /// `X-Consul-Index` and the answer, `None` when nothing matched.
    async fn kv_read(
        &self,
        full: &str,
        recurse: bool,
        block: Option<(u64, Duration)>,
    ) -> Result<(u64, Option<Answer>), ConsulError> {
        let plain = if recurse { "recurse" } else { "" };
        let (url, timeout) = match block {
            None => (
                self.kv_url(full, recurse, plain)?,
                self.inner.request_timeout,
            ),
            Some((index, wait)) => {
                let prefix = if recurse { "recurse&" } else { "" };
                (
                    self.kv_url(full, recurse, &blocking_query(prefix, index, wait))?,
                    self.blocking_timeout(wait),
                )
            }
        };
        let answer = self.send(Method::GET, url, None, timeout).await?;
        match answer.status {
            StatusCode::OK => Ok((answer.require_index()?, Some(answer))),
            StatusCode::NOT_FOUND => Ok((answer.require_index()?, None)),
            _ => Err(answer.error()),
        }
    }

    /// Reads one key. With `block = Some((index, wait))` this is a blocking
    /// query that returns once the key's index passes `index` or `wait`
    /// elapses. Returns the `X-Consul-Index` and the entry (`None` = absent).
    pub(crate) async fn get(
        &self,
        full: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(u64, Option<Entry>), ConsulError> {
        let (index, answer) = self.kv_read(full, false, block).await?;
        let Some(answer) = answer else {
            return Ok((index, None));
        };
        let json = answer.json()?;
        let entry = json
            .as_array()
            .and_then(|entries| entries.first())
            .ok_or_else(|| ConsulError::Protocol("KV read returned no entry".into()))?;
        Ok((index, Some(Entry::from_json(entry)?)))
    }

    /// Every entry whose key starts with `full_prefix + "/"` (or every entry
    /// when `full_prefix` is empty), optionally as a blocking query.
    pub(crate) async fn list(
        &self,
        full_prefix: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(u64, Vec<Entry>), ConsulError> {
        let (index, answer) = self.kv_read(full_prefix, true, block).await?;
        let Some(answer) = answer else {
            return Ok((index, Vec::new()));
        };
        let entries = answer
            .json()?
            .as_array()
            .ok_or_else(|| ConsulError::Protocol("KV listing is not an array".into()))?
            .iter()
            .map(Entry::from_json)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((index, entries))
    }

    /// Deletes one key (no error if it is missing).
    pub(crate) async fn delete(&self, full: &str) -> Result<(), ConsulError> {
        let url = self.kv_url(full, false, "")?;
        let answer = self
            .send(Method::DELETE, url, None, self.inner.request_timeout)
            .await?;
        if answer.status != StatusCode::OK {
            return Err(answer.error());
        }
        Ok(())
    }

    /// Runs a transaction (`body` is the JSON list of operations). Returns
    /// the KV entry of the last result (the outcome of the last write, if the
    /// transaction ends with one), or [`ConsulError::TxnRejected`] if it
    /// rolled back.
    pub(crate) async fn txn(&self, body: String) -> Result<Option<Entry>, ConsulError> {
        let url = self.inner.txn.clone();
        let answer = self
            .send(
                Method::PUT,
                url,
                Some(Bytes::from(body)),
                self.inner.request_timeout,
            )
            .await?;
        match answer.status {
            StatusCode::OK => {
                let json = answer.json()?;
                let results = json
                    .get("Results")
                    .and_then(Json::as_array)
                    .ok_or_else(|| ConsulError::Protocol("transaction without Results".into()))?;
                match results.last().and_then(|r| r.get("KV")) {
                    Some(kv) => Ok(Some(Entry::from_json(kv)?)),
                    None => Ok(None),
                }
            }
            StatusCode::CONFLICT => {
                let json = answer.json()?;
                let what = json
                    .get("Errors")
                    .and_then(Json::as_array)
                    .map(|errors| {
                        errors
                            .iter()
                            .filter_map(|e| e.get("What").and_then(Json::as_str))
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .unwrap_or_default();
                Err(ConsulError::TxnRejected { what })
            }
            _ => Err(answer.error()),
        }
    }

    /// Creates a session from a JSON body; returns its ID.
    pub(crate) async fn session_create(&self, body: String) -> Result<String, ConsulError> {
        let url = self.api_url("session/create")?;
        let answer = self
            .send(
                Method::PUT,
                url,
                Some(Bytes::from(body)),
                self.inner.request_timeout,
            )
            .await?;
        if answer.status != StatusCode::OK {
            return Err(answer.error());
        }
        answer
            .json()?
            .get("ID")
            .and_then(Json::as_str)
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| ConsulError::Protocol("session/create returned no ID".into()))
    }

    /// Renews a session. `Ok(false)` if Consul no longer knows it.
    pub(crate) async fn session_renew(&self, id: &str) -> Result<bool, ConsulError> {
        let url = self.api_url(&format!("session/renew/{id}"))?;
        let answer = self
            .send(Method::PUT, url, None, self.inner.request_timeout)
            .await?;
        match answer.status {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(answer.error()),
        }
    }

    /// Destroys a session: Consul deletes the keys it holds (behavior=delete).
    pub(crate) async fn session_destroy(&self, id: &str) -> Result<(), ConsulError> {
        let url = self.api_url(&format!("session/destroy/{id}"))?;
        let answer = self
            .send(Method::PUT, url, None, self.inner.request_timeout)
            .await?;
        if answer.status != StatusCode::OK {
            return Err(answer.error());
        }
        Ok(())
    }

    /// The address of the Raft leader; empty if there is none.
    pub(crate) async fn leader(&self) -> Result<String, ConsulError> {
        let url = self.api_url("status/leader")?;
        let answer = self
            .send(Method::GET, url, None, self.inner.request_timeout)
            .await?;
        if answer.status != StatusCode::OK {
            return Err(answer.error());
        }
        Ok(answer.json()?.as_str().unwrap_or_default().to_owned())
    }
}

/// `base` joined with an absolute, already percent-encoded path and query
/// (a relative join parses neither scheme nor host again).
fn join(base: &Url, relative: &str) -> Result<Url, ConsulError> {
    base.join(relative)
        .map_err(|e| ConsulError::Protocol(format!("cannot form a request URL: {e}")))
}

/// Appends `?dc_query query` (either may be empty; nothing if both are).
fn push_query(out: &mut String, dc_query: &str, query: &str) {
    let dc_query = if query.is_empty() {
        dc_query.trim_end_matches('&')
    } else {
        dc_query
    };
    if !dc_query.is_empty() || !query.is_empty() {
        out.push('?');
        out.push_str(dc_query);
        out.push_str(query);
    }
}

/// `index=…&wait=…ms` after `prefix`. Consul treats index 0 as "do not
/// block", so a blocking query always sends at least 1.
fn blocking_query(prefix: &str, index: u64, wait: Duration) -> String {
    format!("{prefix}index={}&wait={}ms", index.max(1), wait.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::url::StoreUrl;

    fn http(url: &str) -> Http {
        let config = Config::from_url(StoreUrl::parse(url).unwrap()).unwrap();
        Http::new(&config).unwrap()
    }

    #[test]
    fn key_urls_are_percent_encoded_but_keep_slashes() {
        let h = http("consul://127.0.0.1:8500/ns?datacenter=dc 2");
        assert_eq!(
            h.kv_url("ns/a b/ключ?#%", false, "").unwrap().as_str(),
            "http://127.0.0.1:8500/v1/kv/ns/a%20b/%D0%BA%D0%BB%D1%8E%D1%87%3F%23%25?dc=dc%202"
        );
        assert_eq!(
            h.kv_url("ns", true, "recurse").unwrap().as_str(),
            "http://127.0.0.1:8500/v1/kv/ns/?dc=dc%202&recurse"
        );
        assert_eq!(
            h.kv_url("", true, "recurse").unwrap().as_str(),
            "http://127.0.0.1:8500/v1/kv/?dc=dc%202&recurse"
        );
        assert_eq!(
            h.inner.txn.as_str(),
            "http://127.0.0.1:8500/v1/txn?dc=dc%202"
        );
        let plain = http("consul://[::1]:8500");
        assert_eq!(
            plain.kv_url("a.b/c", false, "").unwrap().as_str(),
            "http://[::1]:8500/v1/kv/a.b/c"
        );
        assert_eq!(
            plain.api_url("session/renew/x").unwrap().as_str(),
            "http://[::1]:8500/v1/session/renew/x"
        );
    }

    #[test]
    fn blocking_index_is_at_least_one() {
        assert_eq!(
            blocking_query("", 0, Duration::from_secs(1)),
            "index=1&wait=1000ms"
        );
        assert_eq!(
            blocking_query("recurse&", 42, Duration::from_millis(1500)),
            "recurse&index=42&wait=1500ms"
        );
    }

    #[test]
    fn entry_without_value_is_empty() {
        let json =
            Json::parse(br#"{"Key":"k","ModifyIndex":7,"Value":null,"Session":""}"#).unwrap();
        let entry = Entry::from_json(&json).unwrap();
        assert!(entry.value.is_empty());
        assert_eq!(entry.session, None);
        assert_eq!(entry.modify_index, 7);
        assert!(Entry::from_json(&Json::parse(br#"{"Key":"k"}"#).unwrap()).is_err());
    }
}
