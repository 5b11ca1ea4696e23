//! [`EtcdBuilder`]: the `etcd://` URL's settings as methods.

use std::path::Path;
use std::time::Duration;

use super::EtcdStore;
use crate::error::Result;

crate::builder::define_builder!(EtcdBuilder, EtcdStore, "127.0.0.1:2379", ["etcd"]);

impl EtcdBuilder {
    /// User name and password for etcd authentication (the URL's
    /// `user:password@`).
    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.parts.user(user, Some(password));
        self
    }

    /// How long one request may take (URL option `request_timeout`).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.parts.duration("request_timeout", timeout);
        self
    }

    /// TLS to the members (URL option `tls`), with the system's roots unless
    /// [`ca_file`](Self::ca_file) names others.
    pub fn tls(mut self, on: bool) -> Self {
        self.parts.option("tls", if on { "true" } else { "false" });
        self
    }

    /// The CA certificate(s) (PEM) that signed the members' certificates;
    /// implies TLS (URL option `ca_file`).
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.parts.path("ca_file", path.as_ref());
        self
    }

    /// A client certificate (PEM, `cert`) and its private key (PEM, `key`)
    /// for members started with `--client-cert-auth`; implies TLS (URL
    /// options `cert_file` and `key_file`).
    pub fn client_cert(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.parts.client_cert(cert.as_ref(), key.as_ref());
        self
    }

    /// Connects, authenticates and grants the session lease.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> anykv::Result<()> {
    /// use std::time::Duration;
    /// use anykv::backend::etcd::EtcdStore;
    /// let store = EtcdStore::builder()
    ///     .endpoints(["127.0.0.1:2379", "127.0.0.2:2379"])
    ///     .namespace("app")
    ///     .session_ttl(Duration::from_secs(10))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn build(self) -> Result<EtcdStore> {
        EtcdStore::from_url(self.parts.store_url()?).await
    }
}
