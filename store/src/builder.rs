//! Typed builders: the same settings as a store URL, as methods.
//!
//! Every networked backend has one (`EtcdStore::builder()`,
//! `ConsulStore::builder()`, `ZookeeperStore::builder()`,
//! `RedisStore::builder()`; the memory store needs none beyond
//! `MemoryStore::new()`), with one naming scheme: a method per URL part
//! or option, named like it (`endpoints`, `namespace`, `session_ttl`,
//! `connect_timeout`, `request_timeout`, `credentials`, …). A builder can
//! also start from a URL (`…::builder_from_url(url)`), which it refuses if the
//! URL names another backend, and then override parts of it.
//!
//! A builder is a typed front for the URL: `build()` turns its settings into
//! the equivalent URL and opens that, so a builder and a URL cannot disagree
//! on defaults, bounds or validation — a bad setting is the same
//! [`crate::Error::InvalidUrl`] (with secrets redacted) that the URL would
//! give, reported by `build()`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::error::Result;
use crate::url::StoreUrl;

/// Everything but unreserved characters is encoded in user names,
/// passwords, path segments and option values.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The settings shared by every builder, as URL parts.
#[derive(Clone, Default)]
pub(crate) struct Parts {
    scheme: &'static str,
    hosts: Vec<String>,
    user: Option<(String, Option<String>)>,
    namespace: String,
    options: BTreeMap<String, String>,
}

impl fmt::Debug for Parts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::url::redact(&self.url()))
    }
}

impl Parts {
    pub(crate) fn new(scheme: &'static str) -> Self {
        Parts {
            scheme,
            ..Parts::default()
        }
    }

    /// The builder for `url`, which must use one of `schemes`.
    pub(crate) fn from_url(url: &str, schemes: &[&'static str]) -> Result<Self> {
        let parsed = StoreUrl::parse_expecting(url, schemes)?;
        let scheme = schemes
            .iter()
            .copied()
            .find(|s| *s == parsed.scheme)
            .unwrap_or(schemes.first().copied().unwrap_or(""));
        let mut parts = Parts::new(scheme);
        parts.hosts = parsed.hosts.clone();
        parts.user = parsed
            .username
            .clone()
            .map(|user| (user, parsed.password.clone()))
            .or_else(|| parsed.password.clone().map(|p| (String::new(), Some(p))));
        parts.namespace = parsed.namespace.prefix().to_owned();
        parts.options = parsed.options().clone();
        parts.duration("session_ttl", parsed.session_ttl);
        parts.duration("connect_timeout", parsed.connect_timeout);
        Ok(parts)
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn set_scheme(&mut self, scheme: &'static str) {
        self.scheme = scheme;
    }

    pub(crate) fn hosts<I, S>(&mut self, hosts: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hosts = hosts.into_iter().map(Into::into).collect();
    }

    #[cfg_attr(
        not(any(feature = "etcd", feature = "zookeeper", feature = "redis")),
        allow(dead_code)
    )]
    pub(crate) fn user(&mut self, user: &str, password: Option<&str>) {
        self.user = Some((user.to_owned(), password.map(str::to_owned)));
    }

    pub(crate) fn namespace(&mut self, namespace: &str) {
        self.namespace = namespace.trim_matches('/').to_owned();
    }

    pub(crate) fn option(&mut self, key: &'static str, value: impl Into<String>) {
        self.options.insert(key.to_owned(), value.into());
    }

    /// A file path option (a path that is not UTF-8 is carried lossily).
    pub(crate) fn path(&mut self, key: &'static str, path: &std::path::Path) {
        self.option(key, path.to_string_lossy().into_owned());
    }

    /// The client certificate options `cert_file` and `key_file`.
    pub(crate) fn client_cert(&mut self, cert: &std::path::Path, key: &std::path::Path) {
        self.path("cert_file", cert);
        self.path("key_file", key);
    }

    pub(crate) fn duration(&mut self, key: &'static str, value: Duration) {
        self.option(key, format!("{}ms", value.as_millis()));
    }

    /// The equivalent URL (with secrets in it: never print it unredacted).
    pub(crate) fn url(&self) -> String {
        let mut url = format!("{}://", self.scheme);
        if let Some((user, password)) = &self.user {
            url.push_str(&utf8_percent_encode(user, COMPONENT).to_string());
            if let Some(password) = password {
                url.push(':');
                url.push_str(&utf8_percent_encode(password, COMPONENT).to_string());
            }
            url.push('@');
        }
        url.push_str(&self.hosts.join(","));
        // Segments as given: an empty one is refused by the URL's rules.
        for segment in self.namespace.split('/') {
            if self.namespace.is_empty() {
                break;
            }
            url.push('/');
            url.push_str(&utf8_percent_encode(segment, COMPONENT).to_string());
        }
        let query = self
            .options
            .iter()
            .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, COMPONENT)))
            .collect::<Vec<_>>();
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query.join("&"));
        }
        url
    }

    /// Parses the equivalent URL: the one validation path (its errors
    /// name the URL redacted, as for any URL).
    pub(crate) fn store_url(&self) -> Result<StoreUrl> {
        StoreUrl::parse(&self.url())
    }
}

/// Defines the setters every builder has.
macro_rules! common_setters {
    () => {
        /// The server addresses, `host[:port]` each (the URL's authority).
        pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<String>,
        {
            self.parts.hosts(endpoints);
            self
        }

        /// The key namespace (the URL path): every key of the handle lives
        /// below it.
        pub fn namespace(mut self, namespace: &str) -> Self {
            self.parts.namespace(namespace);
            self
        }

        /// The session TTL (URL option `session_ttl`).
        pub fn session_ttl(mut self, ttl: std::time::Duration) -> Self {
            self.parts.duration("session_ttl", ttl);
            self
        }

        /// How long connecting may take (URL option `connect_timeout`).
        pub fn connect_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.parts.duration("connect_timeout", timeout);
            self
        }
    };
}
pub(crate) use common_setters;

/// Defines a backend's builder type, its `build()`, and `builder()` /
/// `builder_from_url()` on the store type.
macro_rules! define_builder {
    ($builder:ident, $store:ident, $default_host:expr, [$($scheme:literal),+]) => {
        #[doc = concat!("Typed settings for a [`", stringify!($store), "`]: the same as its URL (see the module docs), as methods.")]
        ///
        /// Made by `builder()` (defaults: the local server, no namespace) or
        /// `builder_from_url(url)`; `build()` opens the store. Settings are
        /// validated by `build()` exactly as the URL's would be.
        #[derive(Clone, Debug)]
        #[must_use]
        pub struct $builder {
            parts: $crate::builder::Parts,
        }

        impl $builder {
            $crate::builder::common_setters!();

            /// The equivalent URL, secrets redacted (`***`).
            pub fn redacted_url(&self) -> String {
                $crate::url::redact(&self.parts.url())
            }
        }

        impl $store {
            #[doc = concat!("A builder for a [`", stringify!($store), "`], starting from the defaults and the local server.")]
            pub fn builder() -> $builder {
                let mut parts = $crate::builder::Parts::new([$($scheme),+][0]);
                parts.hosts([$default_host]);
                $builder { parts }
            }

            /// A builder starting from `url`'s settings; another backend's
            /// URL is an [`crate::Error::InvalidUrl`].
            pub fn builder_from_url(url: &str) -> $crate::Result<$builder> {
                Ok($builder {
                    parts: $crate::builder::Parts::from_url(url, &[$($scheme),+])?,
                })
            }
        }
    };
}
pub(crate) use define_builder;
