//! `zk://` URL options.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::key::Namespace;
use crate::url::{StoreUrl, TlsSwitch};

/// ZooKeeper's default client port.
const DEFAULT_PORT: u16 = 2181;

/// The server's default `znode.container.checkIntervalMs`.
const DEFAULT_CONTAINER_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// ZooKeeper's default `tickTime`.
const DEFAULT_TICK_TIME: Duration = Duration::from_secs(2);

/// Everything `open` needs, parsed from the URL.
#[derive(Clone)]
pub(crate) struct Config {
    /// `h1:2181,h2:2181`, the connect string without chroot.
    pub connect_string: String,
    /// The key namespace (URL path).
    pub namespace: Namespace,
    /// Requested session timeout (`session_timeout` / `session_ttl`).
    pub session_timeout: Duration,
    /// How long establishing a session may take.
    pub connect_timeout: Duration,
    /// `user:password` for the `digest` scheme, if given.
    pub digest: Option<String>,
    /// The server's `znode.container.checkIntervalMs`, as the user told us.
    pub container_check_interval: Duration,
    /// The ensemble's `tickTime`, as the user told us (`tick_time`).
    pub tick_time: Duration,
    /// The URL with secrets replaced by `***`.
    pub redacted: String,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.redacted)
            .field("session_timeout", &self.session_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("digest", &self.digest.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Config {
    /// Takes the ZooKeeper options out of `url`; unknown options are an error.
    pub fn from_url(mut url: StoreUrl) -> Result<Self> {
        let invalid = |url: &StoreUrl, reason: String| Error::InvalidUrl {
            url: url.redacted.clone(),
            reason,
        };
        let endpoints = url.endpoints(DEFAULT_PORT)?;
        let session_timeout = match url.take_duration("session_timeout")? {
            Some(t) => t,
            None => url.session_ttl,
        };
        if session_timeout.as_millis() > i32::MAX as u128 {
            return Err(invalid(&url, "session_timeout is too long".into()));
        }
        let container_check_interval = url
            .take_duration("container_check_interval")?
            .unwrap_or(DEFAULT_CONTAINER_CHECK_INTERVAL);
        let tick_time = url.take_duration("tick_time")?.unwrap_or(DEFAULT_TICK_TIME);
        if tick_time.is_zero() {
            return Err(invalid(&url, "tick_time must be positive".into()));
        }
        let query_user = url.take("username");
        let query_password = url.take("password");
        let tls_paths = url.take_tls(TlsSwitch::Option)?;
        url.finish()?;
        if tls_paths.is_some() {
            // The TLS options are known (the same as on the other
            // backends) so that asking for TLS is refused clearly rather
            // than as an unknown option.
            return Err(invalid(
                &url,
                "zk:// does not support TLS (tls, ca_file, cert_file, key_file); \
                 see the zookeeper backend docs"
                    .into(),
            ));
        }
        let (username, password) = match (url.username.take(), url.password.take()) {
            (None, None) => (query_user, query_password),
            (user, password) if query_user.is_none() && query_password.is_none() => (user, password),
            _ => {
                return Err(invalid(
                    &url,
                    "give credentials either as user:password@ or as username/password options, not both"
                        .into(),
                ))
            }
        };
        let digest = match (username, password) {
            (None, None) => None,
            (Some(user), Some(password)) => {
                if user.contains(':') {
                    return Err(invalid(
                        &url,
                        "a digest user name must not contain ':'".into(),
                    ));
                }
                Some(format!("{user}:{password}"))
            }
            _ => {
                return Err(invalid(
                    &url,
                    "digest authentication needs both a user name and a password".into(),
                ))
            }
        };
        Ok(Config {
            connect_string: endpoints.join(","),
            namespace: url.namespace.clone(),
            session_timeout,
            connect_timeout: url.connect_timeout,
            digest,
            container_check_interval,
            tick_time,
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
    fn hosts_prefix_and_timeouts() {
        let c = parse("zk://h1,h2:2182/app/v1?session_timeout=4s&connect_timeout=2s").unwrap();
        assert_eq!(c.connect_string, "h1:2181,h2:2182");
        assert_eq!(c.namespace.prefix(), "app/v1");
        assert_eq!(c.session_timeout, Duration::from_secs(4));
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert!(c.digest.is_none());
        assert_eq!(c.tick_time, Duration::from_secs(2));
        let c = parse("zk://h/?tick_time=200ms").unwrap();
        assert_eq!(c.tick_time, Duration::from_millis(200));
        assert!(parse("zk://h/?tick_time=0s").is_err());
    }

    #[test]
    fn session_ttl_is_the_session_timeout() {
        let c = parse("zk://h/?session_ttl=3s").unwrap();
        assert_eq!(c.session_timeout, Duration::from_secs(3));
        let c = parse("zk://h/").unwrap();
        assert_eq!(c.session_timeout, crate::url::DEFAULT_SESSION_TTL);
    }

    #[test]
    fn digest_credentials_from_userinfo_or_options() {
        let c = parse("zk://bob:s3cret@h/").unwrap();
        assert_eq!(c.digest.as_deref(), Some("bob:s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
        let c = parse("zk://h/?username=bob&password=s3cret").unwrap();
        assert_eq!(c.digest.as_deref(), Some("bob:s3cret"));
        assert!(!c.redacted.contains("s3cret"));
        assert!(parse("zk://bob:x@h/?username=bob&password=y").is_err());
        assert!(parse("zk://h/?username=bob").is_err());
    }

    #[test]
    fn tls_is_refused_clearly() {
        for url in ["zk://h/?tls=true", "zk://h/?ca_file=/ca.pem"] {
            let err = parse(url).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
            assert!(err.to_string().contains("does not support TLS"), "{err}");
        }
        assert!(parse("zk://h/?tls=false").is_ok());
    }

    #[test]
    fn unknown_options_and_missing_hosts_are_errors() {
        assert!(matches!(
            parse("zk://h/?bogus=1"),
            Err(Error::InvalidUrl { .. })
        ));
        assert!(matches!(parse("zk:///app"), Err(Error::InvalidUrl { .. })));
    }
}
