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
//! The path is the namespace (key prefix). Options shared by every backend:
//! `session_ttl` (default 10s) and `connect_timeout` (default 5s); durations
//! are written `500ms`, `10s`, `2m` or as plain seconds. Unknown options are
//! an error, never ignored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::percent_decode_str;

use crate::error::{Error, Result};
use crate::key::Namespace;
use crate::store::Store;
use crate::types::MAX_DURATION;

/// Default session TTL when the URL gives none.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(10);
/// Default connect timeout when the URL gives none.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Query keys whose values are secrets and are shown as `***`.
const SECRET_OPTIONS: &[&str] = &["password", "token"];

/// The schemes this build can open, for error messages.
pub fn compiled_schemes() -> Vec<&'static str> {
    let mut schemes = vec!["memory"];
    if cfg!(feature = "etcd") {
        schemes.push("etcd");
    }
    if cfg!(feature = "consul") {
        schemes.push("consul");
    }
    if cfg!(feature = "zookeeper") {
        schemes.push("zk");
    }
    if cfg!(feature = "redis") {
        schemes.push("redis");
        schemes.push("rediss");
    }
    schemes
}

/// Opens a store by URL. See the [module docs](self) for the formats.
///
/// ```
/// # #[tokio::main] async fn main() -> anykv::Result<()> {
/// let store = anykv::open("memory://").await?;
/// assert_eq!(store.capabilities().backend, "memory");
///
/// let err = anykv::open("foo://x").await.unwrap_err();
/// assert!(err.to_string().contains("memory"));
/// assert!(anykv::open("memory://?bogus=1").await.is_err());
/// # Ok(()) }
/// ```
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    let parsed = StoreUrl::parse(url)?;
    match parsed.scheme.as_str() {
        "memory" => Ok(Arc::new(crate::backend::memory::MemoryStore::from_url(
            parsed,
        )?)),
        "etcd" => {
            #[cfg(feature = "etcd")]
            return crate::backend::etcd::open(parsed).await;
            #[cfg(not(feature = "etcd"))]
            return Err(not_enabled(&parsed.scheme, "etcd"));
        }
        "consul" => {
            #[cfg(feature = "consul")]
            return crate::backend::consul::open(parsed).await;
            #[cfg(not(feature = "consul"))]
            return Err(not_enabled(&parsed.scheme, "consul"));
        }
        "zk" | "zookeeper" => {
            #[cfg(feature = "zookeeper")]
            return crate::backend::zookeeper::open(parsed).await;
            #[cfg(not(feature = "zookeeper"))]
            return Err(not_enabled(&parsed.scheme, "zookeeper"));
        }
        "redis" | "rediss" => {
            #[cfg(feature = "redis")]
            return crate::backend::redis::open(parsed).await;
            #[cfg(not(feature = "redis"))]
            return Err(not_enabled(&parsed.scheme, "redis"));
        }
        other => Err(Error::InvalidUrl {
            url: parsed.redacted.clone(),
            reason: format!(
                "unknown scheme `{other}`; this build knows: {}",
                compiled_schemes().join(", ")
            ),
        }),
    }
}

#[allow(dead_code)] // unused when every backend feature is on
fn not_enabled(scheme: &str, feature: &'static str) -> Error {
    Error::BackendNotEnabled {
        scheme: scheme.to_owned(),
        feature,
    }
}

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
    /// The URL with password and secret options replaced by `***`.
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
        let fallback = redact_raw(url);
        let bad = |reason: String| Error::InvalidUrl {
            url: fallback.clone(),
            reason,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://…".into()))?;
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(bad(format!("invalid scheme {scheme:?}")));
        }
        let scheme = scheme.to_ascii_lowercase();
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        if before_query.contains('#') || query.is_some_and(|q| q.contains('#')) {
            return Err(bad("fragments (#…) are not allowed".into()));
        }
        let (authority, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], &before_query[i..]),
            None => (before_query, ""),
        };
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
            redacted: String::new(),
            options,
        };
        parsed.redacted = parsed.render_redacted(hostlist, path.as_ref());
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
        if !schemes.contains(&parsed.scheme.as_str()) {
            return Err(parsed.invalid(format!(
                "expected a URL with scheme {}",
                schemes
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
        Ok(parsed)
    }

    fn render_redacted(&self, hostlist: &str, path: &str) -> String {
        let mut out = format!("{}://", self.scheme);
        match (&self.username, &self.password) {
            (Some(u), Some(_)) => out.push_str(&format!("{u}:***@")),
            (None, Some(_)) => out.push_str(":***@"),
            (Some(u), None) => out.push_str(&format!("{u}@")),
            (None, None) => {}
        }
        out.push_str(hostlist);
        out.push_str(path);
        if !self.options.is_empty() {
            let query: Vec<String> = self
                .options
                .iter()
                .map(|(k, v)| {
                    if SECRET_OPTIONS.contains(&k.as_str()) {
                        format!("{k}=***")
                    } else {
                        format!("{k}={v}")
                    }
                })
                .collect();
            out.push('?');
            out.push_str(&query.join("&"));
        }
        out
    }

    fn invalid(&self, reason: String) -> Error {
        Error::InvalidUrl {
            url: self.redacted.clone(),
            reason,
        }
    }

    /// Removes and returns a string option.
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.options.remove(key)
    }

    /// Removes and parses a duration option (`500ms`, `10s`, `2m`, `1h`, or
    /// plain seconds). Zero and durations longer than
    /// [`MAX_DURATION`](crate::types::MAX_DURATION) are rejected
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

/// Parses `500ms`, `10s`, `2m`, `1h` or plain seconds (`10`, `0.5`).
/// `None` if it is none of these or longer than
/// [`MAX_DURATION`](crate::types::MAX_DURATION).
pub fn parse_duration(raw: &str) -> Option<Duration> {
    parse_any_duration(raw).filter(|d| *d <= MAX_DURATION)
}

/// [`parse_duration`] without the upper bound.
fn parse_any_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let (number, unit) = match raw.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&raw[..i], &raw[i..]),
        None => (raw, "s"),
    };
    let n: f64 = number.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// Best-effort redaction for URLs we could not parse.
fn redact_raw(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some((scheme, rest)) = url.split_once("://") {
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@') {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            out = format!("{scheme}://{user}:***@{}", &rest[at + 1..]);
        }
    }
    if let Some((base, query)) = out.clone().split_once('?') {
        let parts: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if SECRET_OPTIONS.contains(&k) => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{base}?{}", parts.join("&"));
    }
    out
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
    fn redacts_password_and_token() {
        let u = StoreUrl::parse("redis://bob:s3cret@h:6379/x?token=t0k&db=1").unwrap();
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        let shown = format!("{u} {u:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0k"),
            "{shown}"
        );
        assert!(shown.contains("bob:***@h:6379/x"));
        let err = StoreUrl::parse("redis://bob:s3cret@h:notaport/").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
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

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("-1s"), None);
    }
}
