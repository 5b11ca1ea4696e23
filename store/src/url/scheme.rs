//! Scheme dispatch: which backend a URL's scheme names, [`open`] and
//! [`validate`] handing the parsed URL to it, and the schemes this build
//! knows.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::store::Store;

use super::StoreUrl;

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

/// Opens a store by URL. See the [module docs](crate::url) for the formats.
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
        _ => Err(unknown_scheme(&parsed)),
    }
}

/// Checks `url` as [`open`] would — scheme, hosts, namespace, credentials,
/// every option and its bounds — without connecting to anything (a
/// `rediss://` `ca_file` is read). The error is the one `open` would return.
///
/// ```
/// assert!(anykv::url::validate("memory://cache/app?session_ttl=3s").is_ok());
/// let err = anykv::url::validate("memory://?session_ttl=100000000h").unwrap_err();
/// assert!(err.to_string().contains("session_ttl"));
/// ```
pub fn validate(url: &str) -> Result<()> {
    let parsed = StoreUrl::parse(url)?;
    match parsed.scheme.as_str() {
        "memory" => crate::backend::memory::check_url(&parsed),
        "etcd" => {
            #[cfg(feature = "etcd")]
            return crate::backend::etcd::config::Config::from_url(parsed).map(drop);
            #[cfg(not(feature = "etcd"))]
            return Err(not_enabled(&parsed.scheme, "etcd"));
        }
        "consul" => {
            #[cfg(feature = "consul")]
            return crate::backend::consul::config::Config::from_url(parsed).map(drop);
            #[cfg(not(feature = "consul"))]
            return Err(not_enabled(&parsed.scheme, "consul"));
        }
        "zk" | "zookeeper" => {
            #[cfg(feature = "zookeeper")]
            return crate::backend::zookeeper::config::Config::from_url(parsed).map(drop);
            #[cfg(not(feature = "zookeeper"))]
            return Err(not_enabled(&parsed.scheme, "zookeeper"));
        }
        "redis" | "rediss" => {
            #[cfg(feature = "redis")]
            return crate::backend::redis::config::Config::from_url(parsed).map(drop);
            #[cfg(not(feature = "redis"))]
            return Err(not_enabled(&parsed.scheme, "redis"));
        }
        _ => Err(unknown_scheme(&parsed)),
    }
}

fn unknown_scheme(parsed: &StoreUrl) -> Error {
    Error::InvalidUrl {
        url: parsed.redacted.clone(),
        reason: format!(
            "unknown scheme `{}`; this build knows: {}",
            parsed.scheme,
            compiled_schemes().join(", ")
        ),
    }
}

#[allow(dead_code)] // unused when every backend feature is on
fn not_enabled(scheme: &str, feature: &'static str) -> Error {
    Error::BackendNotEnabled {
        scheme: scheme.to_owned(),
        feature,
    }
}
