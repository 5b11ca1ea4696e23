//! The queue znode of one acquisition attempt: its creation, in a task of
//! its own, and the armed [`Cleanup`] that removes it unless the attempt
//! ends holding the lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use crate::backend::zookeeper::error::{is_session_end, map};
use crate::backend::zookeeper::path::join;
use crate::backend::zookeeper::session::{Fail, Session};
use crate::error::Result;
use crate::task::Tasks;

use super::{connected, Outcome};

/// Makes queue znode names unique within a session.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// The work of [`ZkLock::enqueue`], in its own task: creates our queue znode
/// with a cleanup armed before the first `create`, so that a `create` whose
/// reply was lost (or a caller that went away) never leaves a znode behind.
pub(super) async fn enqueue(
    session: Arc<Session>,
    queue: String,
    leaf: String,
    acls: zk::Acls<'static>,
    closed: CancellationToken,
    tasks: Tasks,
) -> Outcome<Cleanup> {
    let token = format!(
        "{:x}x{:x}",
        session.id as u64,
        NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
    );
    let name_prefix = format!("lock-{token}-");
    let prefix = join(&queue, &name_prefix);
    let mut cleanup = Cleanup {
        tasks,
        session: Arc::downgrade(&session),
        closed,
        queue: queue.clone(),
        name_prefix: name_prefix.clone(),
        node: None,
        leaf,
        maybe_created: false,
        published: false,
        armed: true,
    };
    let options = zk::CreateMode::EphemeralSequential.with_acls(acls);
    for _ in 0..16 {
        match session.client.create(&prefix, &[], &options).await {
            Ok((_, sequence)) => {
                cleanup.node = Some(format!("{prefix}{sequence}"));
                return Ok(cleanup);
            }
            Err(zk::Error::NoNode) => {
                let dir = zk::CreateMode::Container.with_acls(acls);
                session.client.mkdir(&queue, &dir).await?;
            }
            Err(zk::Error::ConnectionLoss) => {
                // The create may have happened: look for our token.
                cleanup.maybe_created = true;
                if !connected(&session, &cleanup.closed).await {
                    return Err(Fail::Zk(zk::Error::SessionExpired));
                }
                match session.client.list_children(&queue).await {
                    Ok(children) => {
                        if let Some(name) = children.iter().find(|n| n.starts_with(&name_prefix)) {
                            cleanup.node = Some(join(&queue, name));
                            return Ok(cleanup);
                        }
                    }
                    Err(zk::Error::NoNode | zk::Error::ConnectionLoss) => {}
                    Err(e) => return Err(Fail::Zk(e)),
                }
            }
            Err(e) => return Err(Fail::Zk(e)),
        }
    }
    Err(Fail::Zk(zk::Error::ConnectionLoss))
}

/// Deletes an unfinished attempt's queue znode (and, if it may have been
/// written, our value at the leaf) in the background unless disarmed: an
/// acquisition that is cancelled or fails must not leave a znode that would
/// later block the queue for as long as our session lives. Without a known
/// path (a `create` whose reply was lost) it deletes the queue's znodes
/// carrying the attempt's unique name prefix.
pub(super) struct Cleanup {
    /// Where the cleanup runs if the attempt is dropped.
    tasks: Tasks,
    session: Weak<Session>,
    closed: CancellationToken,
    queue: String,
    name_prefix: String,
    pub(super) node: Option<String>,
    leaf: String,
    /// A `create` of ours failed with a connection loss.
    maybe_created: bool,
    pub(super) published: bool,
    armed: bool,
}

impl Cleanup {
    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }

    /// One attempt at the whole cleanup; transient errors are retried.
    async fn run(&self) -> Result<()> {
        let Some(session) = self.session.upgrade() else {
            return Ok(());
        };
        if !connected(&session, &self.closed).await {
            // The session ended (taking our znodes) or the store closed.
            return Ok(());
        }
        let fail = |e: zk::Error| {
            if is_session_end(&e) {
                Ok(())
            } else {
                Err(map(e, "", ""))
            }
        };
        if self.published {
            match session.client.check_stat(&self.leaf).await {
                Ok(Some(stat)) if stat.ephemeral_owner == session.id => {
                    match session.client.delete(&self.leaf, Some(stat.version)).await {
                        Ok(()) | Err(zk::Error::NoNode | zk::Error::BadVersion) => {}
                        Err(e) => return fail(e),
                    }
                }
                Ok(_) => {}
                Err(e) => return fail(e),
            }
        }
        let nodes = match &self.node {
            Some(node) => vec![node.clone()],
            None => match session.client.list_children(&self.queue).await {
                Ok(children) => children
                    .iter()
                    .filter(|n| n.starts_with(&self.name_prefix))
                    .map(|n| join(&self.queue, n))
                    .collect(),
                Err(zk::Error::NoNode) => Vec::new(),
                Err(e) => return fail(e),
            },
        };
        for node in nodes {
            match session.client.delete(&node, None).await {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(e) => return fail(e),
            }
        }
        Ok(())
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed || (self.node.is_none() && !self.maybe_created) {
            return;
        }
        self.armed = false;
        let cleanup = Cleanup {
            tasks: self.tasks.clone(),
            session: std::mem::take(&mut self.session),
            closed: self.closed.clone(),
            queue: std::mem::take(&mut self.queue),
            name_prefix: std::mem::take(&mut self.name_prefix),
            node: self.node.take(),
            leaf: std::mem::take(&mut self.leaf),
            maybe_created: self.maybe_created,
            published: self.published,
            armed: false,
        };
        self.tasks.spawn(async move {
            let closed = cleanup.closed.clone();
            if let Err(error) = crate::retry::until_settled(&closed, || cleanup.run()).await {
                tracing::debug!(%error, "lock attempt cleanup did not finish");
            }
        });
    }
}
