//! [`crate::request::Backend`] for [`EtcdStore`]: each operation as etcd
//! requests (ranges, Txns with revision compares, leases for TTL keys).

use std::sync::Arc;

use bytes::Bytes;
use etcd_client::proto::PbTxnOpResponse;
use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};

use crate::error::{Error, Result};
use crate::key::Namespace;
use crate::lock::Lock;
use crate::request::{Backend, Key};
use crate::types::{Capabilities, KvPair, LockOptions, PutOptions, TreeWatchStream, WatchStream};

use super::*;

impl Backend for EtcdStore {
    const NAME: &'static str = "etcd";

    fn namespace(&self) -> &Namespace {
        &self.handle.core.namespace
    }

    fn check_open(&self) -> Result<()> {
        self.core().check_open()
    }

    async fn put(&self, key: Key, value: Bytes, options: PutOptions) -> Result<KvPair> {
        let Key { user, full } = key;
        if options.expiry == crate::types::Expiry::Never {
            // The common case: one plain put. A TTL lease the key carried
            // is left to expire by itself, holding nothing (see `ttl`).
            let response = self
                .core()
                .call("put", &user, true, |node| {
                    let kv = node.kv();
                    let full = full.clone();
                    let bytes = value.to_vec();
                    async move { kv.put(full, bytes, None).await }
                })
                .await?;
            let last_index = revision(response.0.header.as_ref(), &user)?;
            return Ok(KvPair {
                key: user,
                value,
                last_index,
            });
        }
        // The keys-only range ahead of the put reads the lease the key
        // carried, without its value (see `retire_lease`).
        let (response, attached) =
            Box::pin(
                self.write_with_lease("put", &user, &options, true, |node, put_options| {
                    let kv = node.kv();
                    let txn = Txn::new().and_then([
                        TxnOp::get(full.clone(), Some(GetOptions::new().with_keys_only())),
                        TxnOp::put(full.clone(), value.to_vec(), put_options),
                    ]);
                    async move { kv.txn(txn).await }
                }),
            )
            .await?;
        let last_index = revision(response.0.header.as_ref(), &user)?;
        self.retire_lease(&user, lease_read(&response.0.responses), attached)
            .await;
        Ok(KvPair {
            key: user,
            value,
            last_index,
        })
    }

    async fn put_if(
        &self,
        key: Key,
        value: Bytes,
        previous: Option<u64>,
        options: PutOptions,
    ) -> Result<KvPair> {
        let Key { user, full } = key;
        let compares = match previous {
            None => vec![Compare::create_revision(full.clone(), CompareOp::Equal, 0)],
            Some(previous) => vec![
                Compare::mod_revision(full.clone(), CompareOp::Equal, version(previous)),
                Compare::create_revision(full.clone(), CompareOp::Greater, 0),
            ],
        };
        let (response, attached) = self
            .write_with_lease("atomic_put", &user, &options, false, |node, put_options| {
                let kv = node.kv();
                let txn = Txn::new()
                    .when(compares.clone())
                    .and_then([
                        TxnOp::get(full.clone(), Some(GetOptions::new().with_keys_only())),
                        TxnOp::put(full.clone(), value.to_vec(), put_options),
                    ])
                    .or_else([TxnOp::get(
                        full.clone(),
                        Some(GetOptions::new().with_count_only()),
                    )]);
                async move { kv.txn(txn).await }
            })
            .await?;
        let response = response.0;
        if response.succeeded {
            let last_index = revision(response.header.as_ref(), &user)?;
            self.retire_lease(&user, lease_read(&response.responses), attached)
                .await;
            return Ok(KvPair {
                key: user,
                value,
                last_index,
            });
        }
        Err(match previous {
            None => Error::KeyExists { key: user },
            Some(_) if present(response.responses.into_iter().next()) => {
                Error::KeyModified { key: user }
            }
            Some(_) => Error::KeyNotFound { key: user },
        })
    }

    async fn delete(&self, key: Key) -> Result<()> {
        let Key { user, full } = key;
        let core = self.core();
        let txn = Txn::new().and_then([
            TxnOp::get(full.clone(), Some(GetOptions::new().with_keys_only())),
            TxnOp::delete(full, None),
        ]);
        let response = core
            .call("delete", &user, true, |node| {
                let kv = node.kv();
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        self.retire_lease(&user, lease_read(&response.0.responses), 0)
            .await;
        Ok(())
    }

    async fn delete_if(&self, key: Key, previous: u64) -> Result<()> {
        let Key { user, full } = key;
        let core = self.core();
        let txn = Txn::new()
            .when([
                Compare::mod_revision(full.clone(), CompareOp::Equal, version(previous)),
                Compare::create_revision(full.clone(), CompareOp::Greater, 0),
            ])
            .and_then([
                TxnOp::get(full.clone(), Some(GetOptions::new().with_keys_only())),
                TxnOp::delete(full.clone(), None),
            ])
            .or_else([TxnOp::get(full, Some(GetOptions::new().with_count_only()))]);
        let response = core
            .call("atomic_delete", &user, false, |node| {
                let kv = node.kv();
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?
            .0;
        if response.succeeded {
            self.retire_lease(&user, lease_read(&response.responses), 0)
                .await;
            return Ok(());
        }
        if present(response.responses.into_iter().next()) {
            Err(Error::KeyModified { key: user })
        } else {
            Err(Error::KeyNotFound { key: user })
        }
    }

    async fn get(&self, key: Key) -> Result<Option<KvPair>> {
        let Key { user, full } = key;
        let core = self.core();
        let mut response = core
            .call("get", &user, true, |node| {
                let kv = node.kv();
                let full = full.clone();
                async move { kv.get(full, None).await }
            })
            .await?;
        match response.0.kvs.pop() {
            Some(kv) => Ok(Some(KvPair {
                key: user,
                value: Bytes::from(kv.value),
                last_index: u64::try_from(kv.mod_revision).unwrap_or(0),
            })),
            None => Ok(None),
        }
    }

    async fn list(&self, prefix: Key) -> Result<Vec<KvPair>> {
        let Key { user, full } = prefix;
        let core = self.core();
        let (start, end) = below(&full);
        let response = core
            .call("list", &user, true, |node| {
                let kv = node.kv();
                let start = start.clone();
                let options = GetOptions::new().with_range(end.clone());
                async move { kv.get(start, Some(options)).await }
            })
            .await?;
        let namespace = self.namespace();
        Ok(response
            .0
            .kvs
            .into_iter()
            .filter_map(|kv| {
                Some(KvPair {
                    key: user_key(namespace, &kv.key)?,
                    value: Bytes::from(kv.value),
                    last_index: u64::try_from(kv.mod_revision).unwrap_or(0),
                })
            })
            .collect())
    }

    async fn delete_tree(&self, prefix: Key) -> Result<()> {
        let Key { user, full } = prefix;
        let core = self.core();
        let (start, end) = below(&full);
        let mut ops = vec![TxnOp::delete(
            start,
            Some(DeleteOptions::new().with_range(end)),
        )];
        // The prefix itself is a key of this namespace only if the user
        // named one; `""` is the namespace root, which belongs to the parent.
        if !user.is_empty() {
            ops.push(TxnOp::delete(full, None));
        }
        let txn = Txn::new().and_then(ops);
        core.call("delete_tree", &user, true, |node| {
            let kv = node.kv();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await?;
        Ok(())
    }

    async fn watch(&self, key: Key) -> Result<WatchStream> {
        let Key { user, full } = key;
        let core = self.core();
        let watcher = Watcher::new(
            core.clone(),
            KeyView::new(user.clone()),
            user,
            full.into_bytes(),
            Vec::new(),
            0,
        );
        Ok(watcher.start().await?.into_stream())
    }

    async fn watch_tree(&self, prefix: Key) -> Result<TreeWatchStream> {
        let Key { user, full } = prefix;
        let core = self.core();
        let (start, end) = below(&full);
        let watcher = Watcher::new(
            core.clone(),
            TreeView::new(self.namespace().clone()),
            user,
            start,
            end,
            0,
        );
        Ok(watcher.start().await?.into_stream())
    }

    async fn watch_tree_changes(&self, prefix: Key) -> Result<crate::types::TreeChangeStream> {
        let Key { user, full } = prefix;
        let (start, end) = below(&full);
        let view = super::watch::ChangeView::new(self.namespace().clone());
        let watcher = Watcher::new(self.core().clone(), view, user, start, end, 0);
        Ok(watcher.start().await?.into_stream())
    }

    async fn new_lock(&self, key: Key, options: LockOptions) -> Result<Lock> {
        let Key { user, full } = key;
        let lock = EtcdLock::new(self.clone(), user.clone(), full, options.value);
        Ok(Lock::new(user, Arc::new(lock)))
    }

    fn session(&self) -> crate::session::Session {
        self.core().session.view()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_value_size: MAX_VALUE_SIZE,
            min_ttl: MIN_TTL,
            ttl_slack: TTL_SLACK,
            session_ttl: self.core().session.ttl(),
            session_slack: SESSION_SLACK,
            shared_between_processes: true,
            lock_ttl_per_lock: false,
            ..Capabilities::new("etcd")
        }
    }

    async fn close(&self) -> Result<()> {
        self.core().close().await
    }

    /// etcd's API dates nothing: revisions are counters and lease TTLs are
    /// durations, so there is no server clock to read.
    async fn server_time(&self) -> Result<crate::types::ServerTime> {
        Err(Error::Unsupported {
            operation: "reading the server clock",
            backend: "etcd",
            hint: Some(
                "etcd's API exposes no server time (revisions and lease TTLs carry no date)".into(),
            ),
        })
    }
}

crate::request::impl_store!(EtcdStore);

/// True if a count-only range response (a Txn's failure branch) found the key.
pub(super) fn present(op: Option<etcd_client::proto::PbResponseOp>) -> bool {
    matches!(
        op.and_then(|op| op.response),
        Some(PbTxnOpResponse::ResponseRange(range)) if range.count > 0
    )
}
