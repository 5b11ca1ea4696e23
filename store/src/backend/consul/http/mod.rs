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
use serde::Deserialize;
use url::Url;

use super::config::Config;
use super::error::ConsulError;
use crate::error::Error;
use crate::url::TlsPaths;

mod kv;
mod session;
mod txn;

pub(crate) use self::kv::Entry;
pub(crate) use self::session::SessionInfo;

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
        let paths = TlsPaths {
            ca_file: config.ca_file.clone(),
            identity: config.client_identity.clone(),
        };
        let files = paths.read(&config.redacted).map_err(|e| match e {
            Error::InvalidUrl { reason, .. } => ConsulError::Setup(reason),
            other => ConsulError::Setup(other.to_string()),
        })?;
        if let (Some(pem), Some(path)) = (&files.ca, &config.ca_file) {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
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
        if let (Some(id), Some((cert, key))) = (&files.identity, &config.client_identity) {
            let mut pem = id.cert.clone();
            pem.push(b'\n');
            pem.extend_from_slice(id.key());
            let identity = reqwest::Identity::from_pem(&pem);
            pem.iter_mut().for_each(|b| *b = 0);
            // The library's message is left out: it is about key material.
            let identity = identity.map_err(|_| {
                ConsulError::Setup(format!(
                    "cert_file {} and key_file {} are not a usable PEM certificate and key",
                    cert.display(),
                    key.display()
                ))
            })?;
            builder = builder.identity(identity);
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
    use super::txn::TxnAnswer;
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

    pub(super) fn entry(body: &str) -> Result<Entry, ConsulError> {
        decode(body.as_bytes(), "KV entry")
    }

    pub(super) fn protocol_error<T: std::fmt::Debug>(result: Result<T, ConsulError>) -> String {
        match result {
            Err(ConsulError::Protocol(message)) => message,
            other => panic!("expected a protocol error, got {other:?}"),
        }
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
}
