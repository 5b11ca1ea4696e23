//! A backend written outside anykv, the way a third party would: it
//! implements only the required [`Store`] methods (here by wrapping the
//! memory store, as a caching or instrumenting layer would) and gets every
//! user-facing method — the libkv names, write modes, `update`, locks,
//! watches, sessions — from anykv. The whole conformance suite runs on it.

use std::sync::Arc;

use anykv::{
    async_trait, Bytes, Capabilities, DeleteOptions, KvPair, Lock, LockOptions, PutOptions, Result,
    Session, Store, TreeWatchStream, WatchStream,
};

/// The whole backend: one field and the eleven required methods.
#[derive(Debug)]
struct Wrapped {
    inner: Arc<dyn Store>,
}

#[async_trait]
impl Store for Wrapped {
    async fn get_opt(&self, key: &str) -> Result<Option<KvPair>> {
        self.inner.get_opt(key).await
    }
    async fn put_opts(&self, key: &str, value: Bytes, options: PutOptions) -> Result<KvPair> {
        self.inner.put_opts(key, value, options).await
    }
    async fn delete_opts(&self, key: &str, options: DeleteOptions) -> Result<()> {
        self.inner.delete_opts(key, options).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<KvPair>> {
        self.inner.list(prefix).await
    }
    async fn delete_tree(&self, prefix: &str) -> Result<()> {
        self.inner.delete_tree(prefix).await
    }
    async fn watch(&self, key: &str) -> Result<WatchStream> {
        self.inner.watch(key).await
    }
    async fn watch_tree(&self, prefix: &str) -> Result<TreeWatchStream> {
        self.inner.watch_tree(prefix).await
    }
    async fn new_lock(&self, key: &str, options: LockOptions) -> Result<Lock> {
        self.inner.new_lock(key, options).await
    }
    fn capabilities(&self) -> Capabilities {
        let mut caps = self.inner.capabilities();
        caps.backend = "third-party";
        caps
    }
    fn session(&self) -> Session {
        self.inner.session()
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

fn main() {
    anykv_store_tests::run("third-party", |namespace: String| async move {
        let inner =
            anykv::open(&format!("memory://third-party/{namespace}?session_ttl=1s")).await?;
        let store: Arc<dyn Store> = Arc::new(Wrapped { inner });
        Ok(store)
    })
}
