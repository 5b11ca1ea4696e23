//! `consul://` URL options.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::key::Namespace;
use crate::url::{parse_duration, StoreUrl, TlsPaths, TlsSwitch};

/// The agent port when the URL names none.
pub(crate) const DEFAULT_PORT: u16 = 8500;
/// Consul accepts session TTLs from 10 s …
pub(crate) const MIN_SESSION_TTL: Duration = Duration::from_secs(10);
/// … to 24 h.
pub(crate) const MAX_SESSION_TTL: Duration = Duration::from_secs(86_400);
/// Consul caps a session's lock-delay at 60 s.
pub(crate) const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
/// Default bound on one non-blocking request.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything `open` needs, validated.
#[derive(Clone)]
pub(crate) struct Config {
    /// `http://host:port` or `https://host:port`.
    pub(crate) origin: String,
    pub(crate) token: Option<String>,
    pub(crate) datacenter: Option<String>,
    pub(crate) namespace: Namespace,
    pub(crate) session_ttl: Duration,
    pub(crate) lock_delay: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) ca_file: Option<PathBuf>,
    /// `cert_file` and `key_file` (read at open, by the HTTP client).
    pub(crate) client_identity: Option<(PathBuf, PathBuf)>,
    /// The URL with the token replaced by `***`.
    pub(crate) redacted: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.redacted)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub(crate) fn from_url(mut url: StoreUrl) -> Result<Self> {
        let invalid = |url: &StoreUrl, reason: String| Error::InvalidUrl {
            url: url.redacted.clone(),
            reason,
        };
        if url.username.is_some() || url.password.is_some() {
            return Err(invalid(
                &url,
                "consul:// takes no user name or password; pass an ACL token as `?token=…`".into(),
            ));
        }
        let endpoints = url.endpoints(DEFAULT_PORT)?;
        let [endpoint] = endpoints.as_slice() else {
            return Err(invalid(
                &url,
                "consul:// takes one agent address (Consul clients talk to one local agent, \
                 which forwards to the servers)"
                    .into(),
            ));
        };
        if url.session_ttl < MIN_SESSION_TTL || url.session_ttl > MAX_SESSION_TTL {
            return Err(invalid(
                &url,
                format!(
                    "session_ttl {:?} is outside what Consul accepts (10s to 24h)",
                    url.session_ttl
                ),
            ));
        }
        let token = url.take("token").filter(|t| !t.is_empty());
        if let Some(t) = &token {
            if t.chars().any(|c| c.is_control()) {
                return Err(invalid(
                    &url,
                    "the token contains control characters".into(),
                ));
            }
        }
        let datacenter = url.take("datacenter").filter(|d| !d.is_empty());
        let lock_delay = match url.take("lock_delay") {
            None => Duration::ZERO,
            Some(raw) => match parse_duration(&raw) {
                Some(d) if d <= MAX_LOCK_DELAY => d,
                _ => {
                    return Err(invalid(
                        &url,
                        format!("option `lock_delay`: {raw:?} is not a duration from 0s to 60s"),
                    ))
                }
            },
        };
        let request_timeout = url
            .take_duration("request_timeout")?
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        let tls_paths = url.take_tls(TlsSwitch::Option)?;
        let tls = tls_paths.is_some();
        let TlsPaths {
            ca_file,
            identity: client_identity,
        } = tls_paths.unwrap_or_default();
        url.finish()?;
        let scheme = if tls { "https" } else { "http" };
        Ok(Config {
            origin: format!("{scheme}://{endpoint}"),
            token,
            datacenter,
            namespace: url.namespace.clone(),
            session_ttl: url.session_ttl,
            lock_delay,
            connect_timeout: url.connect_timeout,
            request_timeout,
            ca_file,
            client_identity,
            redacted: url.redacted.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Config> {
        Config::from_url(StoreUrl::parse(url)?)
    }

    #[test]
    fn defaults() {
        let c = parse("consul://127.0.0.1/app").unwrap();
        assert_eq!(c.origin, "http://127.0.0.1:8500");
        assert_eq!(c.namespace.prefix(), "app");
        assert_eq!(c.session_ttl, Duration::from_secs(10));
        assert_eq!(c.lock_delay, Duration::ZERO);
        assert_eq!(c.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        assert!(c.token.is_none() && c.datacenter.is_none() && c.ca_file.is_none());
    }

    #[test]
    fn every_option() {
        let c = parse(
            "consul://agent:8501/x/y?token=s3cr3t&datacenter=dc2&session_ttl=30s&lock_delay=2s\
             &connect_timeout=1s&request_timeout=3s&ca_file=/etc/ca.pem",
        )
        .unwrap();
        assert_eq!(c.origin, "https://agent:8501");
        assert_eq!(c.token.as_deref(), Some("s3cr3t"));
        assert_eq!(c.datacenter.as_deref(), Some("dc2"));
        assert_eq!(c.session_ttl, Duration::from_secs(30));
        assert_eq!(c.lock_delay, Duration::from_secs(2));
        assert_eq!(c.connect_timeout, Duration::from_secs(1));
        assert_eq!(c.request_timeout, Duration::from_secs(3));
        assert_eq!(
            c.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert!(!format!("{c:?} {}", c.redacted).contains("s3cr3t"));
        assert_eq!(
            parse("consul://h?tls=true").unwrap().origin,
            "https://h:8500"
        );
        assert_eq!(
            parse("consul://h?lock_delay=0").unwrap().lock_delay,
            Duration::ZERO
        );
    }

    #[test]
    fn rejects_what_consul_would_refuse() {
        for bad in [
            "consul://h?session_ttl=3s",
            "consul://h?session_ttl=25h",
            "consul://h?lock_delay=61s",
            "consul://h?lock_delay=soon",
            "consul://a,b/",
            "consul:///app",
            "consul://u:p@h/",
            "consul://h?tls=false&ca_file=/x",
            "consul://h?bogus=1",
        ] {
            assert!(
                matches!(parse(bad), Err(Error::InvalidUrl { .. })),
                "{bad} accepted"
            );
        }
        let err = parse("consul://h?token=s3cr3t&bogus=1").err().unwrap();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }
}
