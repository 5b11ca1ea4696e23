//! [`RedisBuilder`]: the `redis://` / `rediss://` URL's settings as methods.

use std::path::Path;

use super::RedisStore;
use crate::error::Result;

crate::builder::define_builder!(
    RedisBuilder,
    RedisStore,
    "127.0.0.1:6379",
    ["redis", "rediss"]
);

impl RedisBuilder {
    /// User name (ACL) and password (the URL's `user:password@`).
    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.parts.user(user, Some(password));
        self
    }

    /// A password without a user name (the URL's `:password@`).
    pub fn password(mut self, password: &str) -> Self {
        self.parts.user("", Some(password));
        self
    }

    /// The logical database (URL option `db`).
    pub fn db(mut self, db: u32) -> Self {
        self.parts.option("db", db.to_string());
        self
    }

    /// TLS to the server (the `rediss://` scheme).
    pub fn tls(mut self, on: bool) -> Self {
        self.parts.set_scheme(if on { "rediss" } else { "redis" });
        self
    }

    /// The CA certificate (PEM) that signed the server's certificate; implies
    /// TLS (URL option `ca_file` of `rediss://`).
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.parts.set_scheme("rediss");
        self.parts.path("ca_file", path.as_ref());
        self
    }

    /// A client certificate (PEM, `cert`) and its private key (PEM, `key`)
    /// for a server that asks for one (`tls-auth-clients`); implies TLS
    /// (URL options `cert_file` and `key_file` of `rediss://`).
    pub fn client_cert(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.parts.set_scheme("rediss");
        self.parts.client_cert(cert.as_ref(), key.as_ref());
        self
    }

    /// Connects and starts the session.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> anykv::Result<()> {
    /// use anykv::backend::redis::RedisStore;
    /// let store = RedisStore::builder()
    ///     .endpoints(["127.0.0.1:6379"])
    ///     .db(2)
    ///     .namespace("app")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn build(self) -> Result<RedisStore> {
        RedisStore::from_url(self.parts.store_url()?).await
    }
}
