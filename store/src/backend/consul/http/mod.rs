//! The HTTP calls this backend makes to the Consul agent (API v1).
//!
//! Every request carries the ACL token in the `X-Consul-Token` header (never
//! in the URL, so it cannot leak into an error message) and `dc=` when a
//! datacenter is configured. Non-blocking requests are bounded by
//! `request_timeout`; blocking queries by their `wait` plus Consul's jitter
//! (wait/16) plus `request_timeout`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::{Deserializer, Error as _};
use serde::Deserialize;
use url::Url;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::config::Config;
use super::error::ConsulError;
use super::session::SessionRequest;
use super::txn::Txn;

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

/// One KV entry as Consul returns it (`GET /v1/kv/…` items, `KV` of a
/// transaction result). Members anykv has no use for (`CreateIndex`,
/// `LockIndex`, …) are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Entry {
    /// The full (namespaced) key.
    pub(crate) key: String,
    /// The value, sent as standard padded base64; absent or `null` in
    /// transaction results and for empty values.
    #[serde(default, deserialize_with = "base64_value")]
    pub(crate) value: Bytes,
    pub(crate) modify_index: u64,
    /// The session holding the key's lock, if any (Consul may send `""`).
    #[serde(default, deserialize_with = "non_empty")]
    pub(crate) session: Option<String>,
    /// The entry's `Flags`: the stamp of the write that produced it (see
    /// the `txn` module); 0 when absent.
    #[serde(default)]
    pub(crate) flags: u64,
}

/// A JSON string, borrowed from the body when it has no escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// `Value`: standard padded base64 (Go's `[]byte`), or `null` for empty.
fn base64_value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    match Option::<Text<'de>>::deserialize(deserializer)? {
        None => Ok(Bytes::new()),
        Some(Text(text)) => STANDARD
            .decode(text.as_bytes())
            .map(Bytes::from)
            .map_err(|e| D::Error::custom(format_args!("Value is not base64: {e}"))),
    }
}

/// An optional string where `""` means none.
fn non_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.filter(|s| !s.is_empty()))
}

/// The answer of `/v1/txn`: HTTP 200 with `Results`, or 409 with `Errors`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnAnswer {
    /// One result per operation that returns one (`null` when none does).
    #[serde(default)]
    results: Option<Vec<TxnResult>>,
    #[serde(default)]
    errors: Option<Vec<TxnFailure>>,
}

/// One result of a transaction.
#[derive(Debug, Deserialize)]
struct TxnResult {
    /// The entry a KV operation touched (value left out by Consul).
    #[serde(rename = "KV", default)]
    kv: Option<Entry>,
}

/// Why a transaction rolled back.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnFailure {
    #[serde(default)]
    what: Option<String>,
}

/// The answer of `/v1/session/create`.
#[derive(Debug, Deserialize)]
struct SessionCreated {
    #[serde(rename = "ID", default)]
    id: Option<String>,
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

    /// The body as `T`; anything else (not JSON, a member missing or of the
    /// wrong type, nested too deeply) is a [`ConsulError::Protocol`] naming
    /// `what` was read.
    fn parse<'a, T: Deserialize<'a>>(&'a self, what: &str) -> Result<T, ConsulError> {
        decode(&self.body, what)
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
        let entry = answer
            .parse::<Vec<Entry>>("KV read")?
            .into_iter()
            .next()
            .ok_or_else(|| ConsulError::Protocol("KV read returned no entry".into()))?;
        Ok((index, Some(entry)))
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
        Ok((index, answer.parse("KV listing")?))
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

    /// Runs a transaction. Returns the KV entry of the last result (the
    /// outcome of the last write, if the transaction ends with one), or
    /// [`ConsulError::TxnRejected`] if it rolled back.
    pub(crate) async fn txn(&self, txn: Txn) -> Result<Option<Entry>, ConsulError> {
        let url = self.inner.txn.clone();
        let body = txn.into_body()?;
        let answer = self
            .send(Method::PUT, url, Some(body), self.inner.request_timeout)
            .await?;
        match answer.status {
            StatusCode::OK => {
                let results = answer
                    .parse::<TxnAnswer>("transaction result")?
                    .results
                    .ok_or_else(|| ConsulError::Protocol("transaction without Results".into()))?;
                Ok(results.into_iter().next_back().and_then(|r| r.kv))
            }
            StatusCode::CONFLICT => {
                let what = answer
                    .parse::<TxnAnswer>("transaction errors")?
                    .errors
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|e| e.what)
                    .collect::<Vec<_>>()
                    .join("; ");
                Err(ConsulError::TxnRejected { what })
            }
            _ => Err(answer.error()),
        }
    }

    /// Creates a session; returns its ID.
    pub(crate) async fn session_create(
        &self,
        request: &SessionRequest<'_>,
    ) -> Result<String, ConsulError> {
        let url = self.api_url("session/create")?;
        let body = serde_json::to_vec(request).map_err(|e| {
            ConsulError::Protocol(format!("cannot encode the session request: {e}"))
        })?;
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
            .parse::<SessionCreated>("session/create")?
            .id
            .filter(|id| !id.is_empty())
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
        answer.parse("status/leader")
    }
}

/// `body` as `T`, or a [`ConsulError::Protocol`] saying why not, naming
/// `what` was read. serde_json refuses nesting deeper than 128 levels, so a
/// hostile body cannot exhaust the stack.
fn decode<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, ConsulError> {
    serde_json::from_slice(body).map_err(|e| ConsulError::Protocol(format!("{what}: {e}")))
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

    fn entry(body: &str) -> Result<Entry, ConsulError> {
        decode(body.as_bytes(), "KV entry")
    }

    fn protocol_error<T: std::fmt::Debug>(result: Result<T, ConsulError>) -> String {
        match result {
            Err(ConsulError::Protocol(message)) => message,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_kv_listing_as_consul_sends_it() {
        let body = br#"[
    {
        "LockIndex": 1,
        "Key": "app/\u003ckey\u003e \u0026 \ud83d\ude00",
        "Flags": 18446744073709551615,
        "Value": "aGVsbG8=",
        "Session": "07ea4712-4330-05c3-ef95-2d990bcc25f8",
        "CreateIndex": 17,
        "ModifyIndex": 18446744073709551615
    },
    {"Key": "app/b", "Value": "YW55IGNhcm5hbCBwbGVhcw==", "ModifyIndex": 9, "Unknown": {"x": [1, null]}}
]"#;
        let entries: Vec<Entry> = decode(body, "KV listing").unwrap();
        assert_eq!(
            entries,
            [
                Entry {
                    key: "app/<key> & 😀".into(),
                    value: Bytes::from_static(b"hello"),
                    modify_index: u64::MAX,
                    session: Some("07ea4712-4330-05c3-ef95-2d990bcc25f8".into()),
                    flags: u64::MAX,
                },
                Entry {
                    key: "app/b".into(),
                    value: Bytes::from_static(b"any carnal pleas"),
                    modify_index: 9,
                    session: None,
                    flags: 0,
                },
            ]
        );
    }

    #[test]
    fn entry_without_value_is_empty() {
        let parsed = entry(r#"{"Key":"k","ModifyIndex":7,"Value":null,"Session":""}"#).unwrap();
        assert!(parsed.value.is_empty());
        assert_eq!(parsed.session, None);
        assert_eq!(parsed.modify_index, 7);
        assert!(entry(r#"{"Key":"k","ModifyIndex":7}"#)
            .unwrap()
            .value
            .is_empty());
    }

    #[test]
    fn malformed_entries_are_protocol_errors() {
        for bad in [
            r#"{"Key":"k"}"#,
            r#"{"ModifyIndex":1}"#,
            r#"{"Key":7,"ModifyIndex":1}"#,
            r#"{"Key":"k","ModifyIndex":"1"}"#,
            r#"{"Key":"k","ModifyIndex":-1}"#,
            r#"{"Key":"k","ModifyIndex":1.5}"#,
            // One past u64::MAX: an index is never rounded.
            r#"{"Key":"k","ModifyIndex":18446744073709551616}"#,
            r#"{"Key":"k","ModifyIndex":1,"Flags":18446744073709551616}"#,
            r#"{"Key":"k","ModifyIndex":1,"Value":7}"#,
            r#"{"Key":"k","ModifyIndex":1,"Value":"not base64!"}"#,
            r#"{"Key":"k","ModifyIndex":1,"Value":"YQ"}"#,
            r#"{"Key":"k","ModifyIndex":1,"Value":"YQ==YQ=="}"#,
            r#"{"Key":"k","ModifyIndex":1,"Session":5}"#,
            r#"{"Key":"k","ModifyIndex":1,"Key":"again"}"#,
            r#"{"Key":"k","ModifyIndex":1} trailing"#,
            r#"{"Key":"k","ModifyIndex":1"#,
            "",
            "[]",
            "null",
        ] {
            let message = protocol_error(entry(bad));
            assert!(message.starts_with("KV entry: "), "{bad:?}: {message}");
        }
        let message = protocol_error(entry(r#"{"Key":"k","ModifyIndex":1,"Value":"*"}"#));
        assert!(message.contains("Value is not base64"), "{message}");
        protocol_error(decode::<Entry>(
            b"{\"Key\":\"\xff\",\"ModifyIndex\":1}",
            "KV entry",
        ));
    }

    #[test]
    fn deeply_nested_or_oversized_bodies_are_protocol_errors() {
        // Nesting far past serde_json's recursion limit (128) where a typed
        // value is read: refused, not a stack overflow.
        let deep = "[".repeat(100_000);
        protocol_error(decode::<Vec<Entry>>(deep.as_bytes(), "KV listing"));
        protocol_error(decode::<TxnAnswer>(deep.as_bytes(), "transaction result"));
        protocol_error(decode::<String>(deep.as_bytes(), "status/leader"));
        let deep_object = format!(
            "{}{}",
            r#"{"Results":[{"KV":{"Key":"#.repeat(1_000),
            "}".repeat(3_000)
        );
        protocol_error(decode::<TxnAnswer>(
            deep_object.as_bytes(),
            "transaction result",
        ));
        let deep_value = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let message = protocol_error(decode::<serde_json::Value>(
            deep_value.as_bytes(),
            "transaction result",
        ));
        assert!(message.contains("recursion limit"), "{message}");
        // An ignored member is skipped without recursing, so even deep
        // nesting there costs no stack; unbalanced, it is malformed.
        let ignored = format!(
            r#"{{"Key":"k","ModifyIndex":1,"Extra":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(entry(&ignored).unwrap().modify_index, 1);
        let unbalanced = format!(
            r#"{{"Key":"k","ModifyIndex":1,"Extra":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(99_999)
        );
        protocol_error(entry(&unbalanced));
        // A listing of many large entries parses, and one bad entry among
        // them spoils the whole answer.
        let item = format!(
            r#"{{"Key":"k","ModifyIndex":1,"Value":"{}"}}"#,
            "QUJD".repeat(100_000)
        );
        let mut items = vec![item; 20];
        let listing = format!("[{}]", items.join(","));
        let entries: Vec<Entry> = decode(listing.as_bytes(), "KV listing").unwrap();
        assert_eq!(entries.len(), 20);
        assert!(entries.iter().all(|e| e.value.len() == 300_000));
        items.push(r#"{"Key":"k","ModifyIndex":1,"Value":"QUJ"}"#.into());
        let listing = format!("[{}]", items.join(","));
        protocol_error(decode::<Vec<Entry>>(listing.as_bytes(), "KV listing"));
    }

    #[test]
    fn transaction_answers() {
        let ok: TxnAnswer = decode(
            br#"{"Results":[{"KV":{"Key":"a","ModifyIndex":3,"Value":null}},{"KV":{"LockIndex":0,"Key":"b","Flags":42,"Value":null,"Session":"s","CreateIndex":4,"ModifyIndex":18446744073709551615}}],"Errors":null,"Index":0}"#,
            "transaction result",
        )
        .unwrap();
        let last = ok.results.unwrap().pop().unwrap().kv.unwrap();
        assert_eq!(last.modify_index, u64::MAX);
        assert_eq!(last.flags, 42);
        assert_eq!(last.session.as_deref(), Some("s"));
        let empty: TxnAnswer =
            decode(br#"{"Results":[],"Errors":null}"#, "transaction result").unwrap();
        assert!(empty.results.unwrap().is_empty());
        let missing: TxnAnswer = decode(br#"{"Errors":null}"#, "transaction result").unwrap();
        assert!(missing.results.is_none());
        let failed: TxnAnswer = decode(
            br#"{"Results":null,"Errors":[{"OpIndex":0,"What":"failed to check index"},{"OpIndex":1}],"Index":0,"KnownLeader":true}"#,
            "transaction errors",
        )
        .unwrap();
        let what: Vec<_> = failed
            .errors
            .unwrap()
            .into_iter()
            .filter_map(|e| e.what)
            .collect();
        assert_eq!(what, ["failed to check index"]);
        for bad in [
            &br#"{"Results":{}}"#[..],
            br#"{"Results":[{"KV":{"Key":"a"}}]}"#,
            br#"{"Errors":[{"What":1}]}"#,
            b"<html>",
        ] {
            protocol_error(decode::<TxnAnswer>(bad, "transaction result"));
        }
    }

    #[test]
    fn session_and_leader_answers() {
        let created: SessionCreated = decode(
            br#"{"ID":"adf4238a-882b-9ddc-4a9d-5b6758e4159e"}"#,
            "session/create",
        )
        .unwrap();
        assert_eq!(
            created.id.as_deref(),
            Some("adf4238a-882b-9ddc-4a9d-5b6758e4159e")
        );
        let created: SessionCreated = decode(b"{}", "session/create").unwrap();
        assert_eq!(created.id, None);
        protocol_error(decode::<SessionCreated>(br#"{"ID":1}"#, "session/create"));
        let leader: String = decode(br#""127.0.0.1:8300""#, "status/leader").unwrap();
        assert_eq!(leader, "127.0.0.1:8300");
        let leader: String = decode(br#""""#, "status/leader").unwrap();
        assert!(leader.is_empty());
        protocol_error(decode::<String>(b"127", "status/leader"));
    }
}
