//! TLS with client certificates against the servers of
//! `scripts/tls-services.sh` (`ANYKV_TEST_ETCD_TLS_URL`,
//! `ANYKV_TEST_CONSUL_TLS_URL`, `ANYKV_TEST_REDIS_MTLS_URL`, each carrying
//! `ca_file`, `cert_file` and `key_file`): the typed builders reach them with
//! the same files, and a CA that did not sign the server's certificate or a
//! missing client certificate fails the open with a clear error that names
//! the redacted URL and no secret, within the connect/request timeouts.
//! Without the variables each case is ignored (failed under CI).

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anykv::backend::consul::ConsulStore;
use anykv::backend::etcd::EtcdStore;
use anykv::backend::redis::RedisStore;
use anykv::{Error, PutOptions, Store, StoreExt};
use libtest_mimic::Arguments;
use support::{BoxResult, Env};

const ETCD: &str = "ANYKV_TEST_ETCD_TLS_URL";
const CONSUL: &str = "ANYKV_TEST_CONSUL_TLS_URL";
const REDIS: &str = "ANYKV_TEST_REDIS_MTLS_URL";

/// Short bounds, so a refused handshake cannot look like a slow server.
const ETCD_LIMITS: &str = "connect_timeout=2s&request_timeout=3s";
const CONSUL_LIMITS: &str = "connect_timeout=2s&request_timeout=3s";
const REDIS_LIMITS: &str = "connect_timeout=2s";
/// The longest any failing open may take: the bounds above plus slack for
/// a loaded machine.
const OPEN_BOUND: Duration = Duration::from_secs(15);

fn main() {
    // rustls needs a process-wide crypto provider for rediss://; the
    // application picks it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    for (backend, var, limits) in [
        ("etcd", ETCD, ETCD_LIMITS),
        ("consul", CONSUL, CONSUL_LIMITS),
        ("redis", REDIS, REDIS_LIMITS),
    ] {
        let needs: &'static [&'static str] = match backend {
            "etcd" => &[ETCD],
            "consul" => &[CONSUL],
            _ => &[REDIS],
        };
        trials.push(
            support::async_trial(
                "the_builder_with_the_same_files_reads_and_writes",
                needs,
                move |env: Env| builder_works(backend, env.get(var).to_owned()),
            )
            .with_kind(backend),
        );
        trials.push(
            support::async_trial(
                "a_ca_that_did_not_sign_the_server_certificate_fails_the_open",
                needs,
                move |env: Env| wrong_ca(backend, env.get(var).to_owned(), limits),
            )
            .with_kind(backend),
        );
        trials.push(
            support::async_trial(
                "no_client_certificate_is_unauthorized_at_open",
                needs,
                move |env: Env| no_client_cert(backend, env.get(var).to_owned(), limits),
            )
            .with_kind(backend),
        );
        trials.push(
            support::async_trial(
                "an_unreadable_key_file_is_an_invalid_url_naming_option_and_path",
                needs,
                move |env: Env| missing_key_file(env.get(var).to_owned()),
            )
            .with_kind(backend),
        );
    }
    libtest_mimic::run(&args, trials).exit()
}

/// The URL's base (`scheme://host:port`) and its options, in order.
fn split(url: &str) -> (String, Vec<(String, String)>) {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let options = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    (base.trim_end_matches('/').to_owned(), options)
}

fn option(url: &str, key: &str) -> Result<PathBuf, String> {
    split(url)
        .1
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| PathBuf::from(v))
        .ok_or_else(|| format!("the test URL has no `{key}`"))
}

/// `url` in namespace `ns` with `drop` options removed and `add` appended.
fn variant(url: &str, ns: &str, drop: &[&str], add: &str) -> String {
    let (base, options) = split(url);
    let mut query: Vec<String> = options
        .into_iter()
        .filter(|(k, _)| !drop.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !add.is_empty() {
        query.push(add.to_owned());
    }
    format!("{base}/{ns}?{}", query.join("&"))
}

/// Bits of the client key that must never show up in a message.
fn key_fragments(url: &str) -> BoxResult<Vec<String>> {
    let key = std::fs::read_to_string(option(url, "key_file")?)?;
    Ok(key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(|l| l[..16].to_owned())
        .collect())
}

/// Opens `url`, which must fail within [`OPEN_BOUND`]; the error's text
/// (with its sources) must name the host and port, and hold no key bytes.
async fn open_fails(url: &str, secret_url: &str) -> BoxResult<(Error, String)> {
    let started = Instant::now();
    let opened = tokio::time::timeout(OPEN_BOUND, anykv::open(url))
        .await
        .map_err(|_| format!("open did not finish within {OPEN_BOUND:?}: {url}"))?;
    let error = match opened {
        Ok(store) => {
            let _ = store.close().await;
            return Err(format!("opened {url} though it should fail").into());
        }
        Err(e) => e,
    };
    let mut shown = format!("{error} | {error:?}");
    let mut source = std::error::Error::source(&error);
    while let Some(s) = source {
        shown.push_str(&format!(" | {s}"));
        source = s.source();
    }
    let (base, _) = split(url);
    let authority = base.split_once("://").map(|(_, a)| a).unwrap_or(&base);
    if !error.to_string().contains(authority) {
        return Err(format!("the error should name {authority}: {error}").into());
    }
    for fragment in key_fragments(secret_url)? {
        if shown.contains(&fragment) {
            return Err(format!("the error shows key material: {shown}").into());
        }
    }
    if shown.contains("PRIVATE KEY") {
        return Err(format!("the error shows key material: {shown}").into());
    }
    eprintln!("{url}: failed after {:?}: {shown}", started.elapsed());
    Ok((error, shown))
}

async fn round_trip(store: &dyn Store) -> BoxResult {
    let put = store.put("k", "over tls", PutOptions::new()).await?;
    let got = store.get("k").await?;
    if got != put || got.value != "over tls" {
        return Err(format!("read back {got:?}, wrote {put:?}").into());
    }
    store.delete_tree("").await?;
    Ok(())
}

async fn builder_works(backend: &'static str, url: String) -> BoxResult {
    let (base, _) = split(&url);
    let endpoint = base
        .split_once("://")
        .map(|(_, a)| a.to_owned())
        .unwrap_or(base);
    let ca = option(&url, "ca_file")?;
    let cert = option(&url, "cert_file")?;
    let key = option(&url, "key_file")?;
    let ns = support::unique("tls-builder");
    let timeout = Duration::from_secs(5);
    match backend {
        "etcd" => {
            let store = EtcdStore::builder()
                .endpoints([endpoint])
                .namespace(&ns)
                .ca_file(&ca)
                .client_cert(&cert, &key)
                .connect_timeout(timeout)
                .build()
                .await?;
            round_trip(&store).await?;
            store.close().await?;
        }
        "consul" => {
            let store = ConsulStore::builder()
                .endpoints([endpoint])
                .namespace(&ns)
                .ca_file(&ca)
                .client_cert(&cert, &key)
                .connect_timeout(timeout)
                .build()
                .await?;
            round_trip(&store).await?;
            store.close().await?;
        }
        _ => {
            let store = RedisStore::builder()
                .endpoints([endpoint])
                .namespace(&ns)
                .ca_file(&ca)
                .client_cert(&cert, &key)
                .connect_timeout(timeout)
                .build()
                .await?;
            round_trip(&store).await?;
            store.close().await?;
        }
    }
    Ok(())
}

/// A fresh CA (and a server certificate we do not use) made with openssl.
fn other_ca() -> BoxResult<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    support::certs::make_certificates(dir.path())?;
    let ca = dir.path().join("ca.pem");
    Ok((dir, ca))
}

async fn wrong_ca(backend: &'static str, url: String, limits: &'static str) -> BoxResult {
    let (_dir, ca) = other_ca()?;
    let ns = support::unique("tls-wrong-ca");
    let bad = variant(
        &url,
        &ns,
        &["ca_file"],
        &format!("ca_file={}&{limits}", ca.display()),
    );
    let (error, shown) = open_fails(&bad, &url).await?;
    // Final for etcd and Redis; Consul's HTTP client reports it as the
    // agent being unavailable (as it always has). Either way the cause
    // says it is the certificate.
    let kind_ok = match backend {
        "consul" => matches!(error, Error::Unavailable { .. }),
        _ => matches!(error, Error::Backend { .. }) && !error.is_transient(),
    };
    if !kind_ok {
        return Err(format!("unexpected error kind for an untrusted server: {error:?}").into());
    }
    if !shown.to_lowercase().contains("certificate") {
        return Err(format!("the error should say it is the certificate: {shown}").into());
    }
    Ok(())
}

async fn no_client_cert(backend: &'static str, url: String, limits: &'static str) -> BoxResult {
    let ns = support::unique("tls-no-client-cert");
    let bad = variant(&url, &ns, &["cert_file", "key_file"], limits);
    let (error, _) = open_fails(&bad, &url).await?;
    if !matches!(error, Error::Unauthorized { .. }) {
        return Err(format!(
            "{backend}: a refused client certificate should be Unauthorized: {error:?}"
        )
        .into());
    }
    Ok(())
}

async fn missing_key_file(url: String) -> BoxResult {
    let ns = support::unique("tls-missing-key");
    let nowhere = Path::new("/nonexistent/anykv-test/client.key");
    let bad = variant(
        &url,
        &ns,
        &["key_file"],
        &format!("key_file={}", nowhere.display()),
    );
    let (error, shown) = open_fails(&bad, &url).await?;
    if !matches!(error, Error::InvalidUrl { .. }) {
        return Err(format!("an unreadable key file should be InvalidUrl: {error:?}").into());
    }
    if !shown.contains("key_file") || !shown.contains(&nowhere.display().to_string()) {
        return Err(format!("the error should name key_file and its path: {shown}").into());
    }
    Ok(())
}
