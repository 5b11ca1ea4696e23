//! `etcd://` URL → connection settings.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::key::Namespace;
use crate::url::{StoreUrl, TlsFiles, TlsSwitch};

/// Port used for a host given without one.
pub(crate) const DEFAULT_PORT: u16 = 2379;

/// Default for the `request_timeout` option.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything [`super::EtcdStore`] needs from its URL.
#[derive(Clone)]
pub(crate) struct Config {
    /// `http://host:port` (`https://` with TLS) per endpoint, in the order
    /// given.
    pub(crate) endpoints: Vec<String>,
    /// User name and password, if any.
    pub(crate) credentials: Option<(String, String)>,
    pub(crate) namespace: Namespace,
    /// Requested session lease TTL (etcd rounds it up to whole seconds and to
    /// its own minimum).
    pub(crate) session_ttl: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    /// The URL without secrets, for messages.
    pub(crate) url: String,
    /// TLS material (read at open), or `None` for plain HTTP/2.
    pub(crate) tls: Option<TlsFiles>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.url)
            .field("endpoints", &self.endpoints)
            .field("session_ttl", &self.session_ttl)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Reads the etcd options out of `url`; unknown options are an error.
    pub(crate) fn from_url(mut url: StoreUrl) -> Result<Self> {
        let invalid = |url: &StoreUrl, reason: String| Error::InvalidUrl {
            url: url.redacted.clone(),
            reason,
        };
        let query_user = url.take("username");
        let query_password = url.take("password");
        let request_timeout = url
            .take_duration("request_timeout")?
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        let tls_paths = url.take_tls(TlsSwitch::Option)?;
        url.finish()?;
        let tls = match &tls_paths {
            Some(paths) => Some(paths.read(&url.redacted)?),
            None => None,
        };

        let from_userinfo = url.username.is_some() || url.password.is_some();
        let from_query = query_user.is_some() || query_password.is_some();
        if from_userinfo && from_query {
            return Err(invalid(
                &url,
                "give the credentials either as user:password@ or as username=/password= options, not both".into(),
            ));
        }
        let (user, password) = if from_query {
            (query_user, query_password)
        } else {
            (url.username.clone(), url.password.clone())
        };
        let credentials = match (user, password) {
            (None, None) => None,
            (Some(user), Some(password)) if !user.is_empty() => Some((user, password)),
            (Some(_), None) => {
                return Err(invalid(&url, "a user name needs a password".into()));
            }
            _ => return Err(invalid(&url, "a password needs a user name".into())),
        };

        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoints = url
            .endpoints(DEFAULT_PORT)?
            .into_iter()
            .map(|host| format!("{scheme}://{host}"))
            .collect();

        Ok(Config {
            endpoints,
            credentials,
            namespace: url.namespace.clone(),
            session_ttl: url.session_ttl,
            connect_timeout: url.connect_timeout,
            request_timeout,
            url: url.redacted.clone(),
            tls,
        })
    }
}

/// A TTL in whole seconds as etcd leases take it: rounded up, at least 1.
pub(crate) fn ttl_secs(ttl: Duration) -> i64 {
    let mut secs = ttl.as_secs();
    if ttl.subsec_nanos() > 0 {
        secs = secs.saturating_add(1);
    }
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> Result<Config> {
        Config::from_url(StoreUrl::parse(url)?)
    }

    #[test]
    fn parses_hosts_namespace_and_options() {
        let c =
            config("etcd://h1,h2:2380/app/v1?session_ttl=3s&connect_timeout=1s&request_timeout=2s")
                .unwrap();
        assert_eq!(c.endpoints, vec!["http://h1:2379", "http://h2:2380"]);
        assert_eq!(c.namespace.prefix(), "app/v1");
        assert_eq!(c.session_ttl, Duration::from_secs(3));
        assert_eq!(c.connect_timeout, Duration::from_secs(1));
        assert_eq!(c.request_timeout, Duration::from_secs(2));
        assert!(c.credentials.is_none());
    }

    #[test]
    fn credentials_from_userinfo_or_query_but_not_both() {
        let c = config("etcd://bob:s3cret@h/").unwrap();
        assert_eq!(c.credentials, Some(("bob".to_owned(), "s3cret".to_owned())));
        let c = config("etcd://h/?username=bob&password=s3cret").unwrap();
        assert_eq!(c.credentials, Some(("bob".to_owned(), "s3cret".to_owned())));
        assert!(!format!("{c:?}").contains("s3cret"));
        for bad in [
            "etcd://bob:x@h/?username=bob&password=y",
            "etcd://h/?username=bob",
            "etcd://h/?password=y",
        ] {
            let err = config(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{bad}: {err}");
            assert!(!err.to_string().contains("=y"), "{err}");
        }
    }

    #[test]
    fn rejects_unknown_options_and_missing_hosts() {
        assert!(matches!(
            config("etcd://h/?bogus=1"),
            Err(Error::InvalidUrl { .. })
        ));
        assert!(matches!(
            config("etcd:///app"),
            Err(Error::InvalidUrl { .. })
        ));
    }

    #[test]
    fn tls_options_switch_to_https() {
        let c = config("etcd://h1,h2:2380/?tls=true").unwrap();
        assert_eq!(c.endpoints, vec!["https://h1:2379", "https://h2:2380"]);
        assert!(c.tls.is_some());
        let err = config("etcd://h/?ca_file=/nonexistent/ca.pem").unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
        assert!(err.to_string().contains("ca_file"), "{err}");
        assert!(config("etcd://h/?cert_file=/c.pem").is_err());
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(ttl_secs(Duration::from_secs(3)), 3);
        assert_eq!(ttl_secs(Duration::from_millis(2500)), 3);
    }
}
