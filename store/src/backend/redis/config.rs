//! `redis://` and `rediss://` URLs → a `redis::Client` plus anykv's options.

use std::fmt;
use std::time::Duration;

use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use crate::error::{Error, Result};
use crate::key::Namespace;
use crate::url::{StoreUrl, TlsSwitch};

/// Port used when the URL gives none.
pub(crate) const DEFAULT_PORT: u16 = 6379;

/// The shortest `session_ttl` accepted: the session is refreshed every third
/// of it, and below a second a loaded host or one slow round trip would let
/// the session lapse.
pub(crate) const MIN_SESSION_TTL: Duration = Duration::from_secs(1);

/// Per-request deadline floor: a request that takes longer is failed with
/// [`Error::Timeout`] so no call can hang on a silent server.
const MIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything `open` needs, parsed and validated before any I/O.
pub(crate) struct Config {
    /// The URL without password, for messages.
    pub url: String,
    /// The client (address, TLS, credentials, database).
    pub client: redis::Client,
    pub namespace: Namespace,
    pub db: i64,
    pub session_ttl: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub tls: bool,
}

impl fmt::Debug for Config {
    // The client holds the password: show only what is safe.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.url)
            .field("db", &self.db)
            .field("session_ttl", &self.session_ttl)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Validates the URL and builds the client. Reads `ca_file`,
    /// `cert_file` and `key_file` if given.
    pub(crate) fn from_url(mut url: StoreUrl) -> Result<Self> {
        let redacted = url.redacted.clone();
        let invalid = |reason: String| Error::InvalidUrl {
            url: redacted.clone(),
            reason,
        };
        let tls = match url.scheme.as_str() {
            "redis" => false,
            "rediss" => true,
            other => return Err(invalid(format!("not a redis scheme: {other}"))),
        };
        let db = match url.take_u64("db")? {
            None => 0,
            Some(db) => i64::try_from(db)
                .map_err(|_| invalid(format!("option `db`: {db} is out of range")))?,
        };
        let tls_paths = url.take_tls(TlsSwitch::Scheme {
            on: tls,
            tls_scheme: "rediss",
        })?;
        url.finish().map_err(|e| match e {
            Error::InvalidUrl { url, reason } => Error::InvalidUrl {
                url,
                reason: format!(
                    "{reason}; redis:// also takes: db, ca_file, cert_file, key_file (rediss:// only)"
                ),
            },
            other => other,
        })?;
        if url.session_ttl < MIN_SESSION_TTL {
            return Err(invalid(format!(
                "session_ttl must be at least {MIN_SESSION_TTL:?}"
            )));
        }
        if url.session_ttl > super::MAX_TTL {
            return Err(invalid(format!(
                "session_ttl must be at most {:?}",
                super::MAX_TTL
            )));
        }
        let endpoints = url.endpoints(DEFAULT_PORT)?;
        let [endpoint] = endpoints.as_slice() else {
            return Err(invalid(
                "redis:// takes exactly one host (Sentinel and Cluster are not supported)".into(),
            ));
        };
        let (host, port) = split_host_port(endpoint)
            .ok_or_else(|| invalid(format!("cannot read host and port from {endpoint:?}")))?;

        let mut settings = RedisConnectionInfo::default().set_db(db);
        match (&url.username, &url.password) {
            (Some(_), None) => {
                return Err(invalid(
                    "a user name needs a password: redis://user:password@host".into(),
                ))
            }
            (user, Some(password)) => {
                settings = settings.set_password(password);
                if let Some(user) = user {
                    settings = settings.set_username(user);
                }
            }
            (None, None) => {}
        }
        let addr = if tls {
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host, port)
        };
        let info = addr
            .into_connection_info()
            .map_err(|e| invalid(format!("redis client rejected the address: {e}")))?
            .set_redis_settings(settings);
        let files = match &tls_paths {
            Some(paths) if paths.any() => Some(paths.read(&redacted)?),
            _ => None,
        };
        let client = match files {
            None => redis::Client::open(info),
            Some(files) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: files.identity.map(|id| redis::ClientTlsConfig {
                        client_key: id.key().to_vec(),
                        client_cert: id.cert.clone(),
                    }),
                    root_cert: files.ca,
                },
            ),
        }
        .map_err(|e| invalid(format!("redis client rejected the configuration: {e}")))?;

        Ok(Config {
            url: url.redacted.clone(),
            client,
            namespace: url.namespace.clone(),
            db,
            session_ttl: url.session_ttl,
            connect_timeout: url.connect_timeout,
            request_timeout: url.connect_timeout.max(MIN_REQUEST_TIMEOUT),
            tls,
        })
    }
}

/// `host:port` or `[v6]:port` → (host without brackets, port).
fn split_host_port(endpoint: &str) -> Option<(String, u16)> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Config> {
        Config::from_url(StoreUrl::parse(url)?)
    }

    #[test]
    fn reads_options_and_defaults() {
        let c = parse("redis://h/app?db=3&session_ttl=4s").unwrap();
        assert_eq!(c.db, 3);
        assert_eq!(c.session_ttl, Duration::from_secs(4));
        assert_eq!(c.namespace.prefix(), "app");
        assert!(!c.tls);
        assert_eq!(c.client.get_connection_info().addr().to_string(), "h:6379");
        let c = parse("rediss://[::1]:7000/").unwrap();
        assert!(c.tls);
        assert_eq!(
            c.client.get_connection_info().addr().to_string(),
            "::1:7000"
        );
    }

    #[test]
    fn rejects_what_it_cannot_honour() {
        for bad in [
            "redis://a:1,b:2/",
            "redis://h/?ca_file=/x",
            "redis://h/?session_ttl=200ms",
            "redis://h/?session_ttl=9000h",
            "redis://h/?db=x",
            "redis://h/?tls=true",
            "redis://user@h/",
            "rediss://h/?ca_file=/nonexistent/ca.pem",
            "redis:///",
        ] {
            assert!(
                matches!(parse(bad), Err(Error::InvalidUrl { .. })),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let c = parse("redis://bob:hunter2@h/").unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("bob:***@h"), "{shown}");
    }
}
