//! `anykv::open`: scheme dispatch, feature errors, option checking, and the
//! memory store's naming rules. Runs with and without backend features.

use anykv::StoreExt;
use anykv::{Error, PutOptions};

#[tokio::test]
async fn unknown_scheme_lists_the_compiled_schemes() {
    let err = anykv::open("foo://x").await.unwrap_err();
    let Error::InvalidUrl { url, reason } = &err else {
        panic!("expected InvalidUrl, got {err:?}");
    };
    assert_eq!(url, "foo://x");
    for scheme in anykv::url::compiled_schemes() {
        assert!(reason.contains(scheme), "{reason} does not list {scheme}");
    }
    assert!(reason.contains("memory"));
}

#[tokio::test]
async fn scheme_of_a_disabled_backend_names_its_feature() {
    let cases = [
        ("etcd://h:1", "etcd", cfg!(feature = "etcd")),
        ("consul://h:1", "consul", cfg!(feature = "consul")),
        ("zk://h:1", "zookeeper", cfg!(feature = "zookeeper")),
        ("redis://h:1", "redis", cfg!(feature = "redis")),
        ("rediss://h:1", "redis", cfg!(feature = "redis")),
    ];
    let mut checked = 0;
    for (url, feature, enabled) in cases {
        if enabled {
            continue;
        }
        match anykv::open(url).await {
            Err(Error::BackendNotEnabled { feature: f, .. }) => assert_eq!(f, feature),
            other => panic!(
                "{url}: expected BackendNotEnabled, got {:?}",
                other.map(|_| ())
            ),
        }
        let message = anykv::open(url).await.unwrap_err().to_string();
        assert!(message.contains(&format!("`{feature}`")), "{message}");
        checked += 1;
    }
    if checked == 0 {
        eprintln!("every backend feature is enabled in this build: nothing to check here");
    }
}

#[tokio::test]
async fn unknown_option_is_rejected() {
    let err = anykv::open("memory://?bogus=1").await.unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
    assert!(err.to_string().contains("bogus"), "{err}");
}

#[tokio::test]
async fn shared_options_are_accepted_by_memory() {
    let store = anykv::open("memory://?session_ttl=3s&connect_timeout=1s")
        .await
        .unwrap();
    assert_eq!(
        store.capabilities().session_ttl,
        std::time::Duration::from_secs(3)
    );
}

#[tokio::test]
async fn credentials_are_rejected_for_memory_without_echoing_the_password() {
    let err = anykv::open("memory://bob:hunter2@name").await.unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[tokio::test]
async fn malformed_urls_are_invalid_url_errors() {
    for url in [
        "",
        "memory",
        "memory:/x",
        "etcd://h:notaport/",
        "memory://a,b/",
    ] {
        match anykv::open(url).await {
            Err(Error::InvalidUrl { .. }) => {}
            other => panic!("{url:?}: expected InvalidUrl, got {:?}", other.map(|_| ())),
        }
    }
}

#[tokio::test]
async fn memory_stores_share_data_by_name_only() {
    let a = anykv::open("memory://share-test").await.unwrap();
    let b = anykv::open("memory://share-test").await.unwrap();
    let private = anykv::open("memory://").await.unwrap();
    let other_name = anykv::open("memory://share-test-2").await.unwrap();
    a.put("k", "v", PutOptions::new()).await.unwrap();
    assert_eq!(b.get("k").await.unwrap().value, "v");
    assert!(!private.exists("k").await.unwrap());
    assert!(!other_name.exists("k").await.unwrap());
}

#[tokio::test]
async fn memory_url_path_is_a_namespace() {
    let root = anykv::open("memory://ns-test").await.unwrap();
    let app = anykv::open("memory://ns-test/app").await.unwrap();
    app.put("x", "1", PutOptions::new()).await.unwrap();
    assert_eq!(root.get("app/x").await.unwrap().value, "1");
    assert_eq!(app.list("").await.unwrap().len(), 1);
}

#[tokio::test]
async fn named_store_data_lives_while_a_handle_does() {
    let first = anykv::open("memory://lifetime-test").await.unwrap();
    first.put("k", "v", PutOptions::new()).await.unwrap();
    let second = anykv::open("memory://lifetime-test").await.unwrap();
    drop(first);
    assert!(second.exists("k").await.unwrap());
    drop(second);
    let third = anykv::open("memory://lifetime-test").await.unwrap();
    assert!(
        !third.exists("k").await.unwrap(),
        "data outlived every handle"
    );
}
