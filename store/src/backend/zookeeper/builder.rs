//! [`ZookeeperBuilder`]: the `zk://` URL's settings as methods.

use std::time::Duration;

use super::ZookeeperStore;
use crate::error::Result;

crate::builder::define_builder!(
    ZookeeperBuilder,
    ZookeeperStore,
    "127.0.0.1:2181",
    ["zk", "zookeeper"]
);

impl ZookeeperBuilder {
    /// User name and password for the `digest` scheme (the URL's
    /// `user:password@`).
    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.parts.user(user, Some(password));
        self
    }

    /// The ZooKeeper session timeout (URL option `session_timeout`; the
    /// server clamps it to its own bounds).
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.parts.duration("session_timeout", timeout);
        self
    }

    /// The servers' `tickTime` (URL option `tick_time`), used for the lock
    /// loss deadline.
    pub fn tick_time(mut self, tick: Duration) -> Self {
        self.parts.duration("tick_time", tick);
        self
    }

    /// The servers' container reaping interval (URL option
    /// `container_check_interval`), used for the TTL slack.
    pub fn container_check_interval(mut self, interval: Duration) -> Self {
        self.parts.duration("container_check_interval", interval);
        self
    }

    /// Connects a session.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> anykv::Result<()> {
    /// use std::time::Duration;
    /// use anykv::backend::zookeeper::ZookeeperStore;
    /// let store = ZookeeperStore::builder()
    ///     .endpoints(["127.0.0.1:2181", "127.0.0.2:2181"])
    ///     .namespace("app")
    ///     .session_timeout(Duration::from_secs(10))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn build(self) -> Result<ZookeeperStore> {
        ZookeeperStore::from_url(self.parts.store_url()?).await
    }
}
