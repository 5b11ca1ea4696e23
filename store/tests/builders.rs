//! Typed builders: they open the same store their URL would, refuse another
//! backend's URL, validate like the URL, and never show a secret.
#![cfg(all(
    feature = "etcd",
    feature = "consul",
    feature = "zookeeper",
    feature = "redis"
))]

use std::time::Duration;

use anykv::backend::consul::ConsulStore;
use anykv::backend::etcd::EtcdStore;
use anykv::backend::redis::RedisStore;
use anykv::backend::zookeeper::ZookeeperStore;
use anykv::prelude::*;
use anykv::{Error, StoreUrl};

/// The test server's URL, or `None` (a failure under CI, where every server
/// must be there).
fn server(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) => Some(url),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{var} is not set: scripts/services.sh starts the servers")
        }
        Err(_) => {
            eprintln!("{var} not set: skipping the real-server half of this test");
            None
        }
    }
}

fn unique(tag: &str) -> String {
    format!(
        "builders-{tag}-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    )
    .replace([' ', ':', '.', '{', '}', ',', '_'], "")
    .chars()
    .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
    .collect()
}

/// `host:port` of a test server URL.
fn host_of(url: &str) -> String {
    let parsed = StoreUrl::parse(url).expect("test server URL parses");
    parsed.hosts[0].clone()
}

async fn round_trip(store: &dyn Store, key: &str) -> anykv::Result<()> {
    store.put(key, "v", PutOptions::new()).await?;
    assert_eq!(store.get(key).await?.value, "v");
    store.delete(key).await?;
    store.close().await
}

#[tokio::test]
async fn a_backend_refuses_another_backends_url() {
    for url in ["etcd://127.0.0.1:1/x", "redis://127.0.0.1:1", "memory://"] {
        let err = ZookeeperStore::builder_from_url(url).expect_err(url);
        assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err}");
        // The constructors from a parsed URL refuse it too, before any I/O.
        let parsed = StoreUrl::parse(url).expect("parses");
        let err = ZookeeperStore::from_url(parsed)
            .await
            .expect_err("zk from another URL");
        assert!(err.to_string().contains("zk://"), "{err}");
    }
    assert!(EtcdStore::builder_from_url("zk://127.0.0.1:1").is_err());
    assert!(ConsulStore::builder_from_url("etcd://127.0.0.1:1").is_err());
    assert!(RedisStore::builder_from_url("consul://127.0.0.1:1").is_err());
    let err = RedisStore::connect("etcd://127.0.0.1:1")
        .await
        .expect_err("redis from an etcd URL");
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
}

#[tokio::test]
async fn builder_settings_are_validated_like_the_url() {
    let err = ConsulStore::builder()
        .endpoints(["127.0.0.1:1"])
        .lock_delay(Duration::from_secs(120))
        .build()
        .await
        .expect_err("a lock delay beyond 60 s");
    assert!(err.to_string().contains("lock_delay"), "{err}");
    let err = EtcdStore::builder()
        .namespace("a//b")
        .build()
        .await
        .expect_err("an empty namespace segment");
    assert!(
        matches!(err, Error::InvalidUrl { .. } | Error::InvalidKey { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn secrets_set_on_a_builder_never_show() {
    let secret = "pa/ss?w#rd@%x";
    let builder = RedisStore::builder()
        .endpoints(["127.0.0.1:1"])
        .credentials("bob", secret);
    for shown in [format!("{builder:?}"), builder.redacted_url()] {
        assert!(
            !shown.contains("pa/ss") && !shown.contains("pa%2Fss"),
            "{shown}"
        );
        assert!(shown.contains("bob"), "{shown}");
    }
    let token = "s3cr3t-token";
    let builder = ConsulStore::builder().token(token);
    assert!(!format!("{builder:?}").contains(token));
    let err = builder
        .endpoints(["127.0.0.1:1"])
        .connect_timeout(Duration::from_millis(200))
        .build()
        .await
        .expect_err("nothing listens on port 1");
    assert!(!err.to_string().contains(token), "{err}");
}

#[tokio::test]
async fn builders_open_the_real_servers() -> anykv::Result<()> {
    if let Some(url) = server("ANYKV_TEST_ETCD_URL") {
        let store = EtcdStore::builder()
            .endpoints([host_of(&url)])
            .namespace(&unique("etcd"))
            .session_ttl(Duration::from_secs(5))
            .build()
            .await?;
        assert_eq!(store.capabilities().session_ttl, Duration::from_secs(5));
        round_trip(&store, "k").await?;
    }
    if let Some(url) = server("ANYKV_TEST_CONSUL_URL") {
        let store = ConsulStore::builder()
            .endpoints([host_of(&url)])
            .namespace(&unique("consul"))
            .build()
            .await?;
        round_trip(&store, "k").await?;
    }
    if let Some(url) = server("ANYKV_TEST_ZK_URL") {
        let store = ZookeeperStore::builder()
            .endpoints([host_of(&url)])
            .namespace(&unique("zk"))
            .build()
            .await?;
        round_trip(&store, "k").await?;
    }
    if let Some(url) = server("ANYKV_TEST_REDIS_URL") {
        // From the URL, then a setting overridden.
        let store = RedisStore::builder_from_url(&url)?
            .db(3)
            .namespace(&unique("redis"))
            .build()
            .await?;
        round_trip(&store, "k").await?;
    }
    Ok(())
}
