//! Store URLs and [`open`].
//!
//! ```text
//! memory://[NAME][/prefix]
//! etcd://h1:2379,h2:2379/prefix?username=u&password=p
//! consul://h:8500/prefix?token=…&datacenter=dc1
//! zk://h1:2181,h2:2181/prefix?session_timeout=10s
//! redis://[user:pass@]h:6379/prefix?db=0     rediss://… (TLS)
//! ```
//!
//! TLS takes the same options on etcd, Consul and Redis: `ca_file` (PEM CA
//! certificates to trust instead of the system's roots), `cert_file` and
//! `key_file` (a PEM client certificate and its key, together). Any of them
//! turns TLS on; so does `tls=true` on etcd and Consul, and the `rediss://`
//! scheme on Redis (`etcd://h:2379/app?ca_file=/ca.pem&cert_file=/c.pem&key_file=/c.key`).
//! The files are read when the store is opened; one that cannot be read is
//! an [`Error::InvalidUrl`] naming the option and the path. `key_file`'s
//! value is redacted like a password (its option name holds `key`).
//!
//! The path is the namespace (key prefix). Options shared by every backend:
//! `session_ttl` (default 10s) and `connect_timeout` (default 5s); durations
//! are written `500ms`, `10s`, `2m` or as plain seconds. Unknown options are
//! an error, never ignored.
//!
//! Reserved characters in a user name, password or option value are
//! percent-encoded: `%2F` for `/`, `%3F` for `?`, `%23` for `#`, `%40` for
//! `@`, `%25` for `%`. An `@` after the host is refused rather than guessed
//! at (`redis://u:pa/ss@h` is either the password `pa/ss` or the host `u`),
//! and a `#` anywhere. Errors, `Debug` and `Display` show a URL only through
//! [`redact`], which hides the password and the values of `token=`,
//! `password=` and similar options.

use std::collections::BTreeMap;
use std::time::Duration;

use percent_encoding::percent_decode_str;

use crate::error::{Error, Result};
use crate::key::Namespace;
use crate::types::MAX_DURATION;

mod duration;
mod redaction;
mod scheme;
mod tls;

pub use self::duration::parse_duration;
pub use self::redaction::{redact, scrub};
pub use self::scheme::{compiled_schemes, open, validate};

use self::duration::parse_any_duration;
#[cfg_attr(
    not(any(
        feature = "etcd",
        feature = "consul",
        feature = "redis",
        feature = "zookeeper"
    )),
    allow(unused_imports)
)]
pub(crate) use self::tls::{handshake_failure, HandshakeFailure, TlsFiles, TlsPaths, TlsSwitch};

/// Default session TTL when the URL gives none.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(10);
/// Default connect timeout when the URL gives none.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed store URL. Backends take their options from it.
#[derive(Clone)]
#[non_exhaustive]
pub struct StoreUrl {
    /// Lower-case scheme.
    pub scheme: String,
    /// Percent-decoded user name, if any.
    pub username: Option<String>,
    /// Percent-decoded password, if any (never printed).
    pub password: Option<String>,
    /// `host[:port]` entries of the authority, in order (may be empty).
    pub hosts: Vec<String>,
    /// The key namespace from the path.
    pub namespace: Namespace,
    /// `session_ttl` option or [`DEFAULT_SESSION_TTL`].
    pub session_ttl: Duration,
    /// `connect_timeout` option or [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// The URL as given, with its password and secret options replaced by
    /// `***` ([`redact`]).
    pub redacted: String,
    options: BTreeMap<String, String>,
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StoreUrl").field(&self.redacted).finish()
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl StoreUrl {
    /// Parses `scheme://[user[:pass]@]host[:port][,host[:port]…][/path][?k=v&…]`.
    pub fn parse(url: &str) -> Result<Self> {
        let redacted = redact(url);
        let bad = |reason: String| Error::InvalidUrl {
            url: redacted.clone(),
            reason,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://…".into()))?;
        if !valid_scheme(scheme) {
            // Not echoed: an unparsable URL may hold a password anywhere.
            return Err(bad(
                "the scheme must be ASCII letters, digits, '+', '-' or '.'".into(),
            ));
        }
        let scheme = scheme.to_ascii_lowercase();
        if rest.contains('#') {
            return Err(bad(
                "fragments (#…) are not allowed; write '#' in a password or option as %23".into(),
            ));
        }
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], &before_query[i..]),
            None => (before_query, ""),
        };
        // `u:pa/ss@h` is the password `pa/ss` or the host `u` with the path
        // `/ss@h`: refuse to guess, and never show either reading.
        if path.contains('@') || query.is_some_and(|q| q.contains('@')) {
            return Err(bad(
                "'@' after the host: write it as %40 in a path or option, and write \
                 '/', '?' or '#' in a user name or password as %2F, %3F or %23"
                    .into(),
            ));
        }
        let (userinfo, hostlist) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let decode = |s: &str| -> Result<String> {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| bad("user name or password is not valid UTF-8".into()))
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (
                    (!user.is_empty()).then(|| decode(user)).transpose()?,
                    Some(decode(pass)?),
                ),
                None => ((!u.is_empty()).then(|| decode(u)).transpose()?, None),
            },
        };
        let mut hosts = Vec::new();
        if !hostlist.is_empty() {
            for host in hostlist.split(',') {
                check_host(host).map_err(|reason| bad(format!("host {host:?}: {reason}")))?;
                hosts.push(host.to_owned());
            }
        }
        let path = percent_decode_str(path)
            .decode_utf8()
            .map_err(|_| bad("path is not valid UTF-8".into()))?;
        let namespace = Namespace::new(&path).map_err(|e| bad(format!("path: {e}")))?;

        let mut options = BTreeMap::new();
        if let Some(q) = query {
            for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
                if options.insert(k.to_string(), v.to_string()).is_some() {
                    return Err(bad(format!("option `{k}` given twice")));
                }
            }
        }

        let mut parsed = StoreUrl {
            scheme,
            username,
            password,
            hosts,
            namespace,
            session_ttl: DEFAULT_SESSION_TTL,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            redacted,
            options,
        };
        if let Some(ttl) = parsed.take_duration("session_ttl")? {
            parsed.session_ttl = ttl;
        }
        if let Some(t) = parsed.take_duration("connect_timeout")? {
            parsed.connect_timeout = t;
        }
        Ok(parsed)
    }

    /// Parses `url` and checks that its scheme is one of `schemes`; what a
    /// backend's typed constructor calls before reading its options.
    pub fn parse_expecting(url: &str, schemes: &[&str]) -> Result<Self> {
        let parsed = Self::parse(url)?;
        parsed.expect_scheme(schemes)?;
        Ok(parsed)
    }

    /// `Err(InvalidUrl)` unless the scheme is one of `schemes`: a backend's
    /// constructors refuse another backend's URL.
    pub fn expect_scheme(&self, schemes: &[&str]) -> Result<()> {
        if !schemes.contains(&self.scheme.as_str()) {
            return Err(self.invalid(format!(
                "expected a URL with scheme {}",
                schemes
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
        Ok(())
    }

    fn invalid(&self, reason: String) -> Error {
        Error::InvalidUrl {
            url: self.redacted.clone(),
            reason,
        }
    }

    /// The options not taken yet.
    #[cfg_attr(
        not(any(
            feature = "etcd",
            feature = "consul",
            feature = "zookeeper",
            feature = "redis"
        )),
        allow(dead_code)
    )]
    pub(crate) fn options(&self) -> &BTreeMap<String, String> {
        &self.options
    }

    /// Removes and returns a string option.
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.options.remove(key)
    }

    /// Removes and parses a duration option (`500ms`, `10s`, `2m`, `1h`, or
    /// plain seconds). Zero and durations longer than
    /// [`crate::types::MAX_DURATION`] are rejected
    /// ([`Error::InvalidUrl`] naming the option).
    pub fn take_duration(&mut self, key: &str) -> Result<Option<Duration>> {
        let Some(raw) = self.take(key) else {
            return Ok(None);
        };
        match parse_any_duration(&raw) {
            Some(d) if d > MAX_DURATION => Err(self.invalid(format!(
                "option `{key}`: {raw:?} is longer than the longest supported duration, {MAX_DURATION:?}"
            ))),
            Some(d) if !d.is_zero() => Ok(Some(d)),
            _ => Err(self.invalid(format!(
                "option `{key}`: {raw:?} is not a positive duration like 500ms, 10s or 2m"
            ))),
        }
    }

    /// Removes and parses an unsigned integer option.
    pub fn take_u64(&mut self, key: &str) -> Result<Option<u64>> {
        let Some(raw) = self.take(key) else {
            return Ok(None);
        };
        raw.parse()
            .map(Some)
            .map_err(|_| self.invalid(format!("option `{key}`: {raw:?} is not a whole number")))
    }

    /// Removes and parses a boolean option (`true`/`false`/`1`/`0`).
    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>> {
        let Some(raw) = self.take(key) else {
            return Ok(None);
        };
        match raw.as_str() {
            "true" | "1" | "yes" => Ok(Some(true)),
            "false" | "0" | "no" => Ok(Some(false)),
            _ => Err(self.invalid(format!("option `{key}`: {raw:?} is not true or false"))),
        }
    }

    /// Fails if any option was not taken: unknown options are an error.
    pub fn finish(&self) -> Result<()> {
        if let Some(k) = self.options.keys().next() {
            let known = "session_ttl, connect_timeout";
            return Err(self.invalid(format!(
                "unknown option `{k}` for {}:// (options shared by all backends: {known}; see the backend's docs for its own)",
                self.scheme
            )));
        }
        Ok(())
    }

    /// `hosts`, with `default_port` added where a host has none; fails if
    /// there is no host.
    pub fn endpoints(&self, default_port: u16) -> Result<Vec<String>> {
        if self.hosts.is_empty() {
            return Err(self.invalid("no host given".into()));
        }
        Ok(self
            .hosts
            .iter()
            .map(|h| {
                if has_port(h) {
                    h.clone()
                } else {
                    format!("{h}:{default_port}")
                }
            })
            .collect())
    }
}

fn has_port(host: &str) -> bool {
    match host.rfind(':') {
        Some(i) => !host[..i].ends_with(':') && (host.starts_with('[') == host[..i].ends_with(']')),
        None => false,
    }
}

fn check_host(host: &str) -> std::result::Result<(), &'static str> {
    if host.is_empty() {
        return Err("empty host");
    }
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or("unclosed '['")?;
        if v6.is_empty() {
            return Err("empty IPv6 address");
        }
        match after {
            "" => (v6, None),
            p => (v6, Some(p.strip_prefix(':').ok_or("junk after ']'")?)),
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if name.is_empty() {
        return Err("empty host name");
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '@'))
    {
        return Err("invalid character in host name");
    }
    if let Some(p) = port {
        p.parse::<u16>()
            .map_err(|_| "port is not a number from 0 to 65535")?;
    }
    Ok(())
}

/// A URL scheme: ASCII letters, digits, `+`, `-` and `.`, not empty.
fn valid_scheme(scheme: &str) -> bool {
    !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_host_etcd_url() {
        let u = StoreUrl::parse("etcd://h1:2379,h2:2379/app/v1?session_ttl=3s").unwrap();
        assert_eq!(u.scheme, "etcd");
        assert_eq!(u.hosts, vec!["h1:2379", "h2:2379"]);
        assert_eq!(u.namespace.prefix(), "app/v1");
        assert_eq!(u.session_ttl, Duration::from_secs(3));
        u.finish().unwrap();
    }

    #[test]
    fn an_at_sign_after_the_host_is_refused_with_advice() {
        for url in [
            "redis://:pa/ss@h/x",
            "etcd://h/?username=bob@corp",
            "memory://x/a@b",
        ] {
            let err = StoreUrl::parse(url).unwrap_err();
            assert!(err.to_string().contains("%40"), "{url}: {err}");
        }
        let u = StoreUrl::parse("etcd://h/?username=bob%40corp&password=p%40ss").unwrap();
        assert_eq!(u.password, None);
        assert!(!format!("{u:?}").contains("p%40ss"));
    }

    #[test]
    fn unknown_option_is_an_error() {
        let mut u = StoreUrl::parse("memory://?bogus=1").unwrap();
        assert_eq!(u.take("other"), None);
        let err = u.finish().unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn rejects_malformed_urls() {
        for bad in [
            "nothing",
            "://x",
            "etcd://h:99999/",
            "etcd://h:1,,h2:2/",
            "etcd://h:1/a//b",
            "etcd://h/?session_ttl=soon",
            "etcd://h/?session_ttl=0s",
            "etcd://h/?a=1&a=2",
        ] {
            assert!(
                matches!(StoreUrl::parse(bad), Err(Error::InvalidUrl { .. })),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn endpoints_fill_default_port() {
        let u = StoreUrl::parse("zk://a,b:2,[::1],[::1]:5/").unwrap();
        assert_eq!(
            u.endpoints(2181).unwrap(),
            vec!["a:2181", "b:2", "[::1]:2181", "[::1]:5"]
        );
    }

    #[test]
    fn parse_expecting_checks_the_scheme() {
        assert!(StoreUrl::parse_expecting("etcd://h/", &["etcd"]).is_ok());
        let err = StoreUrl::parse_expecting("consul://h/", &["etcd"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("expected a URL with scheme etcd://"),
            "{err}"
        );
    }

    #[test]
    fn overlong_durations_are_invalid_urls_naming_the_option() {
        for option in ["session_ttl", "connect_timeout"] {
            for raw in [
                "10000000000000000000s",
                "100000000000h",
                "18446744073709551615",
            ] {
                let url = format!("etcd://h/?{option}={raw}");
                match StoreUrl::parse(&url) {
                    Err(e @ Error::InvalidUrl { .. }) => {
                        assert!(e.to_string().contains(option), "{e}")
                    }
                    other => panic!("{url}: {other:?}"),
                }
            }
        }
        let mut u = StoreUrl::parse("etcd://h/?request_timeout=100000000000h").unwrap();
        let err = u.take_duration("request_timeout").unwrap_err();
        assert!(err.to_string().contains("request_timeout"), "{err}");
    }
}
