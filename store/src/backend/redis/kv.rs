//! [`crate::request::Backend`] for [`RedisStore`]: each operation in terms of
//! the [`Core`] commands.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::error::BACKEND;
use super::hub::Topic;
use super::scripts::{COUNTER, DATA_PREFIX, DELETE_TREE, INDEX};
use super::watch::{glob_escape, ChangeWatcher, KeyTarget, Watcher};
use crate::error::{Error, Result};
use crate::key::Namespace;
use crate::lock::Lock;
use crate::request::{Backend, Key};
use crate::types::{
    Capabilities, KvPair, LockOptions, PutOptions, TreeChangeStream, TreeWatchStream, WatchStream,
};

/// Largest value accepted (32 MiB); see the module docs for why it is
use super::*;

impl Backend for RedisStore {
    const NAME: &'static str = "redis";

    fn namespace(&self) -> &Namespace {
        &self.core().namespace
    }

    fn check_open(&self) -> Result<()> {
        self.core().check_open()
    }

    async fn put(&self, key: Key, value: Bytes, options: PutOptions) -> Result<KvPair> {
        let core = self.core();
        let Key { user, full } = key;
        let lifetime = core.lifetime(&options);
        let outcome = core
            .write(&user, &full, &value, Expect::Any, lifetime)
            .await?;
        pair_or_error(user, value, outcome, core)
    }

    async fn put_if(
        &self,
        key: Key,
        value: Bytes,
        previous: Option<u64>,
        options: PutOptions,
    ) -> Result<KvPair> {
        let core = self.core();
        let Key { user, full } = key;
        let lifetime = core.lifetime(&options);
        let expect = match previous {
            None => Expect::Create,
            Some(p) => Expect::Version(p),
        };
        let outcome = core.write(&user, &full, &value, expect, lifetime).await?;
        pair_or_error(user, value, outcome, core)
    }

    async fn delete(&self, key: Key) -> Result<()> {
        let core = self.core();
        let Key { user, full } = key;
        match core.remove(&user, &full, None).await? {
            Outcome::Written(_) | Outcome::Absent => Ok(()),
            other => Err(core.protocol_error(&user, "delete", other)),
        }
    }

    async fn delete_if(&self, key: Key, previous: u64) -> Result<()> {
        let core = self.core();
        let Key { user, full } = key;
        let expected = previous.to_string();
        match core.remove(&user, &full, Some(("i", &expected))).await? {
            Outcome::Written(_) => Ok(()),
            Outcome::Missing => Err(Error::not_found(&user)),
            Outcome::Modified => Err(Error::modified(&user)),
            other => Err(core.protocol_error(&user, "atomic_delete", other)),
        }
    }

    async fn get(&self, key: Key) -> Result<Option<KvPair>> {
        let core = self.core();
        let Key { user, full } = key;
        let mut conn = core.conn.clone();
        let (value, version): (Option<Vec<u8>>, Option<u64>) = redis::cmd("HMGET")
            .arg(core.data_key(&full))
            .arg("v")
            .arg("i")
            .query_async(&mut conn)
            .await
            .map_err(|e| core.map_err(e, &user))?;
        match (value, version) {
            (Some(value), Some(last_index)) => Ok(Some(KvPair {
                key: user,
                value: Bytes::from(value),
                last_index,
            })),
            _ => Ok(None),
        }
    }

    async fn list(&self, prefix: Key) -> Result<Vec<KvPair>> {
        let core = self.core();
        let Key { full, .. } = prefix;
        Ok(core.read_tree(&full).await?.item)
    }

    async fn delete_tree(&self, prefix: Key) -> Result<()> {
        let core = self.core();
        let Key { user, full } = prefix;
        let (min, max) = lex_range(&full);
        // The prefix itself is a key too, unless it is the namespace root.
        let exact = if user.is_empty() { "" } else { full.as_str() };
        let mut cmd = DELETE_TREE.cmd();
        cmd.arg(2)
            .arg(COUNTER)
            .arg(INDEX)
            .arg(min)
            .arg(max)
            .arg(DATA_PREFIX)
            .arg(&core.channel_prefix)
            .arg(exact)
            .arg(&core.wake_prefix)
            .arg(&core.grant_prefix);
        core.eval(&DELETE_TREE, &cmd, &user).await?;
        Ok(())
    }

    async fn watch(&self, key: Key) -> Result<WatchStream> {
        let core = self.core();
        let Key { user, full } = key;
        let subscription = core
            .hub
            .subscribe(Topic::Channel(core.channel(&full)))
            .await?;
        let target = KeyTarget { user, full };
        Ok(Watcher::new(core.clone(), target, subscription).into_stream())
    }

    async fn watch_tree(&self, prefix: Key) -> Result<TreeWatchStream> {
        let changes = Backend::watch_tree_changes(self, prefix).await?;
        Ok(crate::changes::listings_from_changes(changes))
    }

    async fn watch_tree_changes(&self, prefix: Key) -> Result<TreeChangeStream> {
        let core = self.core();
        let Key { user, full } = prefix;
        let pattern = if full.is_empty() {
            format!("{}*", glob_escape(&core.channel_prefix))
        } else {
            format!(
                "{}{}/*",
                glob_escape(&core.channel_prefix),
                glob_escape(&full)
            )
        };
        let subscription = core.hub.subscribe_changes(Topic::Pattern(pattern)).await?;
        let watcher = ChangeWatcher::new(
            core.clone(),
            self.namespace().clone(),
            user,
            full,
            subscription,
        );
        Ok(watcher.into_stream())
    }

    async fn new_lock(&self, key: Key, options: LockOptions) -> Result<Lock> {
        let core = self.core();
        let Key { user, full } = key;
        // A lock TTL was checked by the request path; the session TTL by the URL.
        let ttl = options.ttl.unwrap_or(core.session_ttl);
        if ttl < lock::MIN_LOCK_TTL {
            return Err(Error::InvalidArgument {
                key: user,
                reason: format!("a redis lock TTL must be at least {:?}", lock::MIN_LOCK_TTL),
            });
        }
        let backend = lock::RedisLock {
            store: self.clone(),
            user: user.clone(),
            full,
            value: options.value,
            ttl,
        };
        Ok(Lock::new(user, Arc::new(backend)))
    }

    fn session(&self) -> crate::session::Session {
        self.core().tracker.session()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_value_size: MAX_VALUE_SIZE,
            min_ttl: Duration::from_millis(1),
            max_ttl: MAX_TTL,
            ttl_slack: TTL_SLACK,
            session_ttl: self.core().session_ttl,
            session_slack: TTL_SLACK,
            shared_between_processes: true,
            lock_ttl_per_lock: true,
            ..Capabilities::new(BACKEND)
        }
    }

    async fn close(&self) -> Result<()> {
        let core = self.core();
        if !core.begin_close() {
            return Ok(());
        }
        self.handle.refresh.abort();
        core.tracker.close();
        session::end(core).await
    }

    /// `TIME`: seconds and microseconds of the server's clock.
    async fn server_time(&self) -> Result<crate::types::ServerTime> {
        let core = self.core();
        crate::request::timed_reading(Duration::from_micros(1), async {
            let mut conn = core.conn.clone();
            let (secs, micros): (u64, u64) = redis::cmd("TIME")
                .query_async(&mut conn)
                .await
                .map_err(|e| core.map_err(e, "TIME"))?;
            std::time::UNIX_EPOCH
                .checked_add(Duration::from_secs(secs))
                .and_then(|t| t.checked_add(Duration::from_micros(micros)))
                .ok_or_else(|| Error::Backend {
                    backend: BACKEND,
                    target: "TIME".to_owned(),
                    source: format!("the server answered a time out of range: {secs}.{micros:06}")
                        .into(),
                })
        })
        .await
    }
}

crate::request::impl_store!(RedisStore);
