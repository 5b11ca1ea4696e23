//! Generated store URLs and keys: parsing and validation never panic, and a
//! password or token given in a URL never shows in an error, a `Debug` or a
//! `Display`.
//!
//! URLs are generated for every scheme, with random userinfo (passwords
//! heavy in `/?#@%:` and percent-escapes, raw or encoded), hosts, ports,
//! paths and options (durations huge, negative, fractional or garbage).
//! Nothing connects: URLs go through `StoreUrl::parse`, `url::validate`
//! (every backend's option parsing), `url::redact`, and `open` for
//! `memory://` only. Keys go through the `key` module and a memory store.
//!
//! Each property runs `PROPTEST_CASES` cases (default 5000, a few seconds
//! in all). With `ANYKV_PROPTEST_SECS=N` the properties instead run in turn,
//! in fresh batches, for about N seconds in all, and print how many cases
//! ran; `scripts/fuzz.sh [seconds]` does that.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anykv::key::{normalize_key, normalize_prefix, Namespace, MAX_KEY_LEN};
use anykv::url::{parse_duration, redact, validate};
use anykv::StoreExt;
use anykv::{PutOptions, Store, StoreUrl};
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// Cases per property in the normal test run.
const DEFAULT_CASES: u32 = 5000;

/// Characters of generated passwords: the URL delimiters many times over,
/// then the rest. (No `*`, which redaction writes, and no `^`, the marker
/// every password carries.)
const PASSWORD_CHARS: &[char] = &[
    '/', '/', '/', '?', '?', '?', '#', '#', '#', '@', '@', '@', '%', '%', '%', ':', ':', ':', '&',
    '=', '+', ',', ';', '!', '$', '\'', '(', ')', '[', ']', '~', '-', '.', '_', ' ', 'a', 'b', 'z',
    'A', 'Z', '0', '1', '9', 'é', '\u{7f}', '\0', '\n',
];

/// Every generated password holds this character, which no anykv message
/// contains, so a password found in a message came from the URL.
const MARKER: char = '^';

// ---------------------------------------------------------------- strategies

/// How a secret is written into the URL.
#[derive(Clone, Copy, Debug)]
enum Encoding {
    /// Verbatim, delimiters and all.
    Raw,
    /// Every non-alphanumeric character percent-encoded.
    Encoded,
    /// Each character raw or encoded at random (the `Vec<bool>` decides).
    Mixed,
}

fn password() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            prop_oneof![
                8 => prop::sample::select(PASSWORD_CHARS).prop_map(String::from),
                2 => prop::sample::select(&["%2F", "%3F", "%23", "%40", "%25", "%3A", "%zz", "%", "%2", "%00", "%FF", "%C3%A9"][..])
                    .prop_map(String::from),
                1 => any::<char>().prop_map(String::from),
            ],
            0..12,
        ),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut parts, at)| {
            let i = at.index(parts.len() + 1);
            parts.insert(i, MARKER.to_string());
            parts.concat()
        })
}

fn encode(secret: &str, encoding: Encoding, mask: &[bool]) -> String {
    match encoding {
        Encoding::Raw => secret.to_owned(),
        Encoding::Encoded => utf8_percent_encode(secret, NON_ALPHANUMERIC).to_string(),
        Encoding::Mixed => secret
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if mask.get(i % mask.len().max(1)).copied().unwrap_or(true) {
                    utf8_percent_encode(c.encode_utf8(&mut [0; 4]), NON_ALPHANUMERIC).to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    }
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![
        Just(Encoding::Raw),
        Just(Encoding::Encoded),
        Just(Encoding::Mixed)
    ]
}

fn scheme() -> impl Strategy<Value = String> {
    prop::sample::select(
        &[
            "memory",
            "memory",
            "etcd",
            "etcd",
            "consul",
            "consul",
            "zk",
            "zookeeper",
            "redis",
            "redis",
            "rediss",
            "REDIS",
            "Etcd",
            "foo",
            "",
            "re dis",
            "a@b",
        ][..],
    )
    .prop_map(String::from)
}

fn user() -> impl Strategy<Value = String> {
    prop::sample::select(&["", "", "bob", "u-1.x_y", "b%40c", "%zz", "é", "root"][..])
        .prop_map(String::from)
}

fn host() -> impl Strategy<Value = String> {
    let name = prop::sample::select(
        &[
            "127.0.0.1",
            "localhost",
            "[::1]",
            "h1",
            "h-2.example",
            "",
            "[",
            "[]",
            "[::1",
            "x y",
            "name",
        ][..],
    );
    let port = prop_oneof![
        3 => Just(String::new()),
        3 => (0u32..70000).prop_map(|p| format!(":{p}")),
        1 => Just(":".to_owned()),
        1 => Just(":-1".to_owned()),
        1 => Just(":99999999999999999999".to_owned()),
        1 => Just(":abc".to_owned()),
    ];
    (name, port).prop_map(|(n, p)| format!("{n}{p}"))
}

fn hosts() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        6 => host(),
        2 => prop::collection::vec(host(), 2..4).prop_map(|h| h.join(",")),
    ]
}

fn segment() -> impl Strategy<Value = String> {
    prop::sample::select(
        &[
            "app", "v1", "", ".", "..", "%2F", "%00", "%zz", "ключ", "値", "a b", "x:y", "%40",
            "a%2Fb", "~", "%FF",
        ][..],
    )
    .prop_map(String::from)
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        4 => prop::collection::vec(segment(), 0..4).prop_map(|s| format!("/{}", s.join("/"))),
    ]
}

/// A duration option value: plausible, huge, negative, fractional or junk.
fn duration_value() -> impl Strategy<Value = String> {
    let unit = prop::sample::select(&["", "ms", "s", "m", "h", "d", "us", "S", " s"][..]);
    prop_oneof![
        (0u64..100_000, unit.clone()).prop_map(|(n, u)| format!("{n}{u}")),
        (any::<u64>(), unit.clone()).prop_map(|(n, u)| format!("{n}{u}")),
        (any::<f64>(), unit.clone()).prop_map(|(n, u)| format!("{n}{u}")),
        (any::<i64>(), unit).prop_map(|(n, u)| format!("{n}{u}")),
        prop::sample::select(
            &[
                "",
                "-1s",
                "-0",
                "0",
                "0s",
                "NaN",
                "inf",
                "1e300s",
                "1e-300s",
                ".s",
                ".",
                "..5s",
                "5.5.5s",
                "315360000",
                "315360001",
                "315360000.000000001",
                "87600h",
                "87601h",
                "18446744073709551616",
                "0.0000000001ms",
                "1_000s",
                "+5s",
                "5s5",
                "%35s",
            ][..],
        )
        .prop_map(String::from),
    ]
}

fn option() -> impl Strategy<Value = (String, String)> {
    let durations = prop::sample::select(
        &[
            "session_ttl",
            "connect_timeout",
            "request_timeout",
            "session_timeout",
            "container_check_interval",
            "tick_time",
            "lock_delay",
        ][..],
    );
    let others = prop::sample::select(
        &[
            "db",
            "tls",
            "datacenter",
            "username",
            "ca_file",
            "bogus",
            "",
            "session_ttl",
        ][..],
    );
    let other_value = prop::sample::select(
        &[
            "",
            "0",
            "1",
            "true",
            "no",
            "-1",
            "9223372036854775808",
            "dc1",
            "bob",
            "/nonexistent/ca.pem",
            "%zz",
            "a%26b",
            "x y",
        ][..],
    );
    prop_oneof![
        (durations, duration_value()).prop_map(|(k, v)| (k.to_owned(), v)),
        (others, other_value).prop_map(|(k, v)| (k.to_owned(), v.to_owned())),
    ]
}

/// Where the generated password goes.
#[derive(Clone, Debug)]
enum Secret {
    /// `user:password@` (user may be empty).
    Userinfo { user: String },
    /// A query option such as `token=` or `password=`.
    Option { name: String },
    /// No secret in this URL.
    None,
}

fn secret_place() -> impl Strategy<Value = Secret> {
    prop_oneof![
        5 => user().prop_map(|user| Secret::Userinfo { user }),
        3 => prop::sample::select(&["token", "password", "Token", "PASSWORD", "%74oken", "auth_token", "secret"][..])
            .prop_map(|n| Secret::Option { name: n.to_owned() }),
        1 => Just(Secret::None),
    ]
}

/// A generated URL and the password it holds, as written and as meant.
#[derive(Clone, Debug)]
struct GeneratedUrl {
    url: String,
    /// The secrets to look for: as written in the URL and percent-decoded.
    secrets: Vec<String>,
}

fn generated_url() -> impl Strategy<Value = GeneratedUrl> {
    (
        scheme(),
        secret_place(),
        password(),
        encoding(),
        prop::collection::vec(any::<bool>(), 1..8),
        hosts(),
        path(),
        prop::collection::vec(option(), 0..4),
        any::<prop::sample::Index>(),
    )
        .prop_map(
            |(scheme, place, password, encoding, mask, hosts, path, mut options, at)| {
                let written = encode(&password, encoding, &mask);
                let mut userinfo = String::new();
                match &place {
                    Secret::Userinfo { user } => userinfo = format!("{user}:{written}@"),
                    Secret::Option { name } => {
                        // `&` would end the value: as a user would, encode it.
                        let value = written.replace('&', "%26");
                        let i = at.index(options.len() + 1);
                        options.insert(i, (name.clone(), value));
                    }
                    Secret::None => {}
                }
                let query = if options.is_empty() {
                    String::new()
                } else {
                    let pairs: Vec<String> =
                        options.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("?{}", pairs.join("&"))
                };
                let url = format!("{scheme}://{userinfo}{hosts}{path}{query}");
                let secrets = match place {
                    Secret::None => Vec::new(),
                    Secret::Userinfo { .. } | Secret::Option { .. } => {
                        let mut secrets = vec![written.clone(), password.clone()];
                        if let Secret::Option { .. } = place {
                            secrets.push(written.replace('&', "%26"));
                        }
                        secrets.push(
                            percent_decode_str(&written)
                                .decode_utf8_lossy()
                                .into_owned(),
                        );
                        secrets
                    }
                };
                GeneratedUrl { url, secrets }
            },
        )
}

fn key() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(&["a", "b/c", "/", "//", ".", "..", "\0", "\n", " ", "ключ", "値", "🦀", "\u{7f}", "\u{200b}", "%2F", "@", ":"][..])
            .prop_map(String::from),
        2 => any::<char>().prop_map(String::from),
        1 => (1usize..1500).prop_map(|n| "k".repeat(n)),
        1 => (1usize..700).prop_map(|n| "é".repeat(n)),
    ];
    prop_oneof![
        1 => Just(String::new()),
        8 => prop::collection::vec(piece, 0..8).prop_map(|p| p.concat()),
    ]
}

// ---------------------------------------------------------------- properties

/// The texts a URL can show through anykv without connecting.
fn everything_shown(url: &str, runtime: &tokio::runtime::Runtime) -> Vec<String> {
    let mut shown = vec![redact(url)];
    match StoreUrl::parse(url) {
        Ok(parsed) => shown.push(format!("{parsed} {parsed:?} {}", parsed.redacted)),
        Err(e) => shown.push(format!("{e} {e:?}")),
    }
    if let Err(e) = validate(url) {
        shown.push(format!("{e} {e:?}"));
    }
    if url.to_ascii_lowercase().starts_with("memory://") {
        match runtime.block_on(anykv::open(url)) {
            Ok(store) => shown.push(format!("{store:?}")),
            Err(e) => shown.push(format!("{e} {e:?}")),
        }
    }
    shown
}

fn url_property(
    generated: GeneratedUrl,
    runtime: &tokio::runtime::Runtime,
) -> Result<(), TestCaseError> {
    let shown = everything_shown(&generated.url, runtime);
    for secret in &generated.secrets {
        if secret.chars().count() < 4 {
            continue;
        }
        for text in &shown {
            prop_assert!(
                !text.contains(secret.as_str()),
                "secret {secret:?} of {:?} shows in {text}",
                generated.url
            );
        }
    }
    // Whatever validate accepts, parse accepts, and the other way round
    // for what parse refuses.
    if validate(&generated.url).is_ok() {
        prop_assert!(StoreUrl::parse(&generated.url).is_ok());
    }
    Ok(())
}

fn duration_property(raw: String) -> Result<(), TestCaseError> {
    if let Some(d) = parse_duration(&raw) {
        prop_assert!(d <= anykv::types::MAX_DURATION, "{raw:?} -> {d:?}");
    }
    for option in ["session_ttl", "connect_timeout"] {
        let url = format!(
            "memory://?{option}={}",
            utf8_percent_encode(&raw, NON_ALPHANUMERIC)
        );
        match StoreUrl::parse(&url) {
            Ok(parsed) => {
                prop_assert!(parsed.session_ttl <= anykv::types::MAX_DURATION);
                prop_assert!(parsed.connect_timeout <= anykv::types::MAX_DURATION);
                prop_assert!(!parsed.session_ttl.is_zero() && !parsed.connect_timeout.is_zero());
            }
            Err(e) => prop_assert!(e.to_string().contains(option), "{url}: {e}"),
        }
    }
    Ok(())
}

fn key_property(
    (key, prefix): (String, String),
    store: &Arc<dyn Store>,
    runtime: &tokio::runtime::Runtime,
) -> Result<(), TestCaseError> {
    for result in [normalize_key(&key), normalize_prefix(&key)] {
        match result {
            Ok(normal) => {
                prop_assert!(normal.len() <= MAX_KEY_LEN);
                prop_assert!(!normal.starts_with('/') && !normal.ends_with('/'));
                prop_assert!(!normal.contains("//") && !normal.contains('\0'));
                prop_assert_eq!(normalize_prefix(&normal).ok(), Some(normal.clone()));
            }
            Err(e) => {
                // The key is echoed, capped: a huge key is not a huge message.
                let text = format!("{e} {e:?}");
                prop_assert!(text.len() < 2000, "{} bytes", text.len());
            }
        }
    }
    if let Ok(ns) = Namespace::new(&prefix) {
        match ns.key(&key) {
            Ok((user, full)) => {
                prop_assert_eq!(ns.strip(&full), Some(user.as_str()));
                prop_assert_eq!(ns.full_key(&key).ok(), Some(full));
            }
            Err(_) => prop_assert!(ns.full_key(&key).is_err()),
        }
        let _ = ns.prefix_of(&key);
    }
    runtime.block_on(async {
        let put = store.put(&key, "v", PutOptions::new()).await;
        let got = store.get(&key).await;
        prop_assert_eq!(put.is_ok(), normalize_key(&key).is_ok());
        prop_assert_eq!(got.is_ok(), put.is_ok());
        if put.is_ok() {
            store
                .delete(&key)
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        let _ = store.list(&key).await;
        Ok(())
    })
}

// ---------------------------------------------------------------- running

/// Runs `test` on `cases` values of `strategy`; panics (with the shrunk
/// value) on a failure or a panic inside `test`. Returns the cases run.
fn run<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> u64 {
    let count = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |value| {
        count.fetch_add(1, Ordering::Relaxed);
        test(value)
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, value)) => {
            panic!("{name}: {reason}\nminimal failing input: {value:?}")
        }
        Err(TestError::Abort(reason)) => panic!("{name}: aborted: {reason}"),
    }
    count.load(Ordering::Relaxed)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// `ANYKV_PROPTEST_SECS`, if set: run long instead.
fn long_run() -> Option<Duration> {
    let secs: u64 = std::env::var("ANYKV_PROPTEST_SECS").ok()?.parse().ok()?;
    Some(Duration::from_secs(secs))
}

fn memory_store(runtime: &tokio::runtime::Runtime) -> Arc<dyn Store> {
    runtime
        .block_on(anykv::open("memory://"))
        .expect("memory store")
}

fn url_cases(cases: u32) -> u64 {
    let rt = runtime();
    run("urls", cases, generated_url(), |g| url_property(g, &rt))
}

fn duration_cases(cases: u32) -> u64 {
    run("durations", cases, duration_value(), duration_property)
}

fn key_cases(cases: u32) -> u64 {
    let rt = runtime();
    let store = memory_store(&rt);
    run("keys", cases, (key(), key()), |k| {
        key_property(k, &store, &rt)
    })
}

#[test]
fn urls_never_panic_and_never_show_a_password() {
    if long_run().is_none() {
        url_cases(cases());
    }
}

#[test]
fn durations_are_bounded_or_refused_naming_the_option() {
    if long_run().is_none() {
        duration_cases(cases());
    }
}

#[test]
fn keys_never_panic_and_validate_consistently() {
    if long_run().is_none() {
        key_cases(cases());
    }
}

/// The long campaign (`ANYKV_PROPTEST_SECS` set): every property in turn,
/// in batches of fresh random cases, until the time is up.
#[test]
fn campaign() {
    let Some(budget) = long_run() else {
        return;
    };
    let start = Instant::now();
    let batch = 20_000;
    let (mut urls, mut durations, mut keys, mut batches) = (0u64, 0u64, 0u64, 0u64);
    while start.elapsed() < budget {
        urls += url_cases(batch);
        durations += duration_cases(batch);
        keys += key_cases(batch / 4);
        batches += 1;
    }
    eprintln!(
        "campaign: {} cases in {:.0?} ({batches} rounds): {urls} URLs, {durations} durations, \
         {keys} keys; 0 panics, 0 leaks",
        urls + durations + keys,
        start.elapsed()
    );
}
