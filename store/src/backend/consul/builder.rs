//! [`ConsulBuilder`]: the `consul://` URL's settings as methods.

use std::path::Path;
use std::time::Duration;

use super::ConsulStore;
use crate::error::Result;

crate::builder::define_builder!(ConsulBuilder, ConsulStore, "127.0.0.1:8500", ["consul"]);

impl ConsulBuilder {
    /// The ACL token (URL option `token`; never printed).
    pub fn token(mut self, token: &str) -> Self {
        self.parts.option("token", token);
        self
    }

    /// The datacenter (URL option `datacenter`).
    pub fn datacenter(mut self, datacenter: &str) -> Self {
        self.parts.option("datacenter", datacenter);
        self
    }

    /// The lock delay of the handle's sessions (URL option `lock_delay`,
    /// 0 to 60 s).
    pub fn lock_delay(mut self, delay: Duration) -> Self {
        self.parts.duration("lock_delay", delay);
        self
    }

    /// How long one request may take (URL option `request_timeout`).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.parts.duration("request_timeout", timeout);
        self
    }

    /// HTTPS to the agent (URL option `tls`).
    pub fn tls(mut self, on: bool) -> Self {
        self.parts.option("tls", if on { "true" } else { "false" });
        self
    }

    /// The CA certificate (PEM) that signed the agent's certificate; implies
    /// TLS (URL option `ca_file`).
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.parts.path("ca_file", path.as_ref());
        self
    }

    /// A client certificate (PEM, `cert`) and its private key (PEM, `key`)
    /// for an agent that verifies clients (`verify_incoming_https`); implies
    /// TLS (URL options `cert_file` and `key_file`).
    pub fn client_cert(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.parts.client_cert(cert.as_ref(), key.as_ref());
        self
    }

    /// Connects to the agent and checks the token.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> anykv::Result<()> {
    /// use anykv::backend::consul::ConsulStore;
    /// let store = ConsulStore::builder()
    ///     .endpoints(["127.0.0.1:8500"])
    ///     .namespace("app")
    ///     .token("…")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn build(self) -> Result<ConsulStore> {
        ConsulStore::from_url(self.parts.store_url()?).await
    }
}
