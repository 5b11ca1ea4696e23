//! Reads and writes of keys: the znode recipes behind the [`Store`] methods.
//!
//! # Versions and compare-and-swap
//! `last_index` is the leaf's `mzxid`: the zxid of the transaction that last
//! wrote it. Zxids are global and only grow, so a pair read before a delete
//! never matches the re-created key, although ZooKeeper's own data version
//! restarts at 0.
//!
//! ZooKeeper can only compare the data *version*, so a compare-and-swap reads
//! the leaf's stat first, checks its `mzxid` and then writes with the data
//! version it saw. To close the window between the two (the key deleted and
//! re-created at the same data version meanwhile), every *creation* of a leaf
//! also bumps the data version of its parent directory in the same
//! transaction, and the guarded write checks the parent's version in a
//! `multi`: a re-creation in between makes it fail, and it is retried from
//! the read. Leaves directly under the ZooKeeper root (no namespace) skip the
//! parent check: anykv never writes to `/`.
//!
//! # Lifetimes
//! A leaf is persistent, ephemeral (owned by the handle's session) or a TTL
//! znode. A put that asks for a different lifetime than the existing leaf has
//! replaces it in one `multi` (delete + create), so watchers never see it
//! missing. ZooKeeper does not show TTL znodes as such in their stat; anykv
//! marks them by creating and deleting a child in the creating transaction,
//! so a TTL leaf has `cversion` 2 while every other leaf has 0.
//!
//! [`Store`]: crate::Store

use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use zookeeper_client as zk;

use crate::error::Error;
use crate::key::Namespace;
use crate::types::{Expiry, KvPair, PutOptions};

use super::error::TTL_HINT;
use super::path::{classify, dir_path, join, join_key, Child, KeyPaths};
use super::session::{Fail, Session};
use super::BACKEND;

/// Operations per multi-read request.
const MAX_BATCH: usize = 128;

/// How often a write retries when a container directory vanished under it or
/// a sibling was created during a compare-and-swap.
const MAX_ATTEMPTS: usize = 64;

/// Name of the marker child that tags a TTL leaf (created and deleted in the
/// same transaction).
const TTL_MARK: &str = "/ttl";

type Outcome<T> = std::result::Result<T, Fail>;

/// The lifetime requested for a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Persistent,
    Ephemeral,
    Ttl(Duration),
}

impl Mode {
    pub fn of(options: &PutOptions) -> Mode {
        match options.expiry {
            Expiry::Ttl(ttl) => Mode::Ttl(ttl),
            Expiry::Ephemeral => Mode::Ephemeral,
            _ => Mode::Persistent,
        }
    }

    /// True if the existing leaf with `stat` already has this lifetime, so it
    /// can be written in place. TTL writes always re-create the leaf, which
    /// restarts its clock with the new TTL.
    fn kept_by(self, stat: &zk::Stat, session: i64) -> bool {
        match self {
            Mode::Persistent => stat.ephemeral_owner == 0 && stat.cversion == 0,
            Mode::Ephemeral => stat.ephemeral_owner == session,
            Mode::Ttl(_) => false,
        }
    }
}

/// The pair for a leaf's data and stat.
pub(super) fn pair(key: String, value: Bytes, stat: &zk::Stat) -> KvPair {
    KvPair {
        key,
        value,
        last_index: zxid(stat.mzxid),
    }
}

fn zxid(z: i64) -> u64 {
    u64::try_from(z).unwrap_or(0)
}

/// The stat of the last `SetData` in a multi's results.
fn last_stat(results: Vec<zk::MultiWriteResult>) -> Outcome<zk::Stat> {
    for result in results.into_iter().rev() {
        if let zk::MultiWriteResult::SetData { stat } = result {
            return Ok(stat);
        }
    }
    Err(Fail::Zk(zk::Error::UnexpectedError(
        "multi without a SetData result".into(),
    )))
}

/// Appends the operations that create `paths.leaf` with `value` and `mode`;
/// the last one is a `SetData` whose stat is the new version (ZooKeeper 3.8
/// answers a plain create inside a multi without a stat).
fn add_create(
    m: &mut zk::MultiWriter<'_>,
    paths: &KeyPaths,
    value: &[u8],
    mode: Mode,
    acls: zk::Acls<'static>,
) -> Result<(), zk::Error> {
    match mode {
        Mode::Persistent => m.add_create(
            &paths.leaf,
            &[],
            &zk::CreateMode::Persistent.with_acls(acls),
        )?,
        Mode::Ephemeral => {
            m.add_create(&paths.leaf, &[], &zk::CreateMode::Ephemeral.with_acls(acls))?
        }
        Mode::Ttl(ttl) => {
            let ttl = ttl.max(Duration::from_millis(1));
            m.add_create(
                &paths.leaf,
                &[],
                &zk::CreateMode::Persistent.with_acls(acls).with_ttl(ttl),
            )?;
            let marker = format!("{}{TTL_MARK}", paths.leaf);
            m.add_create(&marker, &[], &zk::CreateMode::Persistent.with_acls(acls))?;
            m.add_delete(&marker, None)?;
        }
    }
    m.add_set_data(&paths.leaf, value, Some(0))
}

/// Creates the container directories down to `dir`.
async fn mkdir(session: &Session, dir: &str, acls: zk::Acls<'static>) -> Outcome<()> {
    if dir == "/" {
        return Ok(());
    }
    match session
        .client
        .mkdir(dir, &zk::CreateMode::Container.with_acls(acls))
        .await
    {
        Ok(()) => Ok(()),
        Err(e) => Err(Fail::Zk(e)),
    }
}

/// Maps a failed multi. `parent_first` says whether operation 0 was the
/// parent-directory guard; a failure there is [`Multi::Retry`].
enum Multi {
    Retry,
    Leaf(zk::Error),
    Request(zk::Error),
}

fn classify_multi(error: zk::MultiWriteError, parent_first: bool) -> Multi {
    match error {
        zk::MultiWriteError::OperationFailed { index: 0, .. } if parent_first => Multi::Retry,
        zk::MultiWriteError::OperationFailed { source, .. } => Multi::Leaf(source),
        zk::MultiWriteError::RequestFailed { source } => Multi::Request(source),
    }
}

fn ttl_unsupported(error: zk::Error, mode: Mode) -> Fail {
    match (error, mode) {
        (zk::Error::Unimplemented, Mode::Ttl(_)) => Fail::Done(Error::Unsupported {
            operation: "put with a TTL",
            backend: BACKEND,
            hint: Some(TTL_HINT.into()),
        }),
        (error, _) => Fail::Zk(error),
    }
}

/// Creates the leaf (create-only). `NodeExists` if it is there.
pub(super) async fn create(
    session: &Session,
    paths: &KeyPaths,
    value: &[u8],
    mode: Mode,
    acls: zk::Acls<'static>,
) -> Outcome<zk::Stat> {
    let guarded = !paths.parent_is_root();
    for _ in 0..MAX_ATTEMPTS {
        let mut m = session.client.new_multi_writer();
        if guarded {
            // Bump the parent's version: see "Versions" in the module docs.
            m.add_set_data(paths.parent(), &[], None)?;
        }
        add_create(&mut m, paths, value, mode, acls)?;
        match m.commit().await {
            Ok(results) => return last_stat(results),
            Err(e) => match classify_multi(e, false) {
                Multi::Leaf(zk::Error::NoNode) | Multi::Retry => {
                    mkdir(session, paths.parent(), acls).await?;
                }
                Multi::Leaf(e) | Multi::Request(e) => return Err(ttl_unsupported(e, mode)),
            },
        }
    }
    Err(Fail::Zk(zk::Error::NoNode))
}

/// Replaces the leaf (atomically delete + create) if its data version is
/// `version` (`None`: any). Fails with `NoNode` if it is gone.
async fn replace(
    session: &Session,
    paths: &KeyPaths,
    value: &[u8],
    mode: Mode,
    version: Option<i32>,
    acls: zk::Acls<'static>,
) -> Outcome<zk::Stat> {
    let mut m = session.client.new_multi_writer();
    if !paths.parent_is_root() {
        m.add_set_data(paths.parent(), &[], None)?;
    }
    m.add_delete(&paths.leaf, version)?;
    add_create(&mut m, paths, value, mode, acls)?;
    match m.commit().await {
        Ok(results) => last_stat(results),
        Err(e) => match classify_multi(e, false) {
            Multi::Retry => Err(Fail::Zk(zk::Error::NoNode)),
            Multi::Leaf(e) | Multi::Request(e) => Err(ttl_unsupported(e, mode)),
        },
    }
}

/// Upsert. A plain or ephemeral overwrite of a leaf that already has that
/// lifetime costs one `SetData`; TTL writes always (re-)create the leaf.
pub(super) async fn put(
    session: &Session,
    paths: &KeyPaths,
    value: &[u8],
    mode: Mode,
    acls: zk::Acls<'static>,
) -> Outcome<zk::Stat> {
    if !matches!(mode, Mode::Ttl(_)) {
        match session.client.set_data(&paths.leaf, value, None).await {
            Ok(stat) if mode.kept_by(&stat, session.id) => return Ok(stat),
            Ok(stat) => {
                // Written, but with the wrong lifetime: swap in a leaf with
                // the right one, unless someone wrote after us (then their
                // write wins and ours stays the version we return).
                return match replace(session, paths, value, mode, Some(stat.version), acls).await {
                    Ok(new) => Ok(new),
                    Err(Fail::Zk(zk::Error::BadVersion | zk::Error::NoNode)) => Ok(stat),
                    Err(e) => Err(e),
                };
            }
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(Fail::Zk(e)),
        }
    }
    for _ in 0..MAX_ATTEMPTS {
        match create(session, paths, value, mode, acls).await {
            Err(Fail::Zk(zk::Error::NodeExists)) => {}
            other => return other,
        }
        match replace(session, paths, value, mode, None, acls).await {
            Err(Fail::Zk(zk::Error::NoNode)) => {}
            other => return other,
        }
    }
    Err(Fail::Zk(zk::Error::NodeExists))
}

/// Reads the parent directory's data version and the leaf's stat, in that
/// order (one round trip: requests of a session are answered in order).
async fn read_guard(
    session: &Session,
    paths: &KeyPaths,
) -> Outcome<(Option<i32>, Option<zk::Stat>)> {
    let parent = (!paths.parent_is_root()).then(|| session.client.check_stat(paths.parent()));
    let leaf = session.client.check_stat(&paths.leaf);
    let parent_version = match parent {
        Some(parent) => parent.await?.map(|s| s.version),
        None => None,
    };
    Ok((parent_version, leaf.await?))
}

/// Compare-and-swap write against `previous` (an mzxid).
pub(super) async fn compare_and_put(
    session: &Session,
    user: &str,
    paths: &KeyPaths,
    value: &[u8],
    mode: Mode,
    previous: u64,
    acls: zk::Acls<'static>,
) -> Outcome<zk::Stat> {
    for _ in 0..MAX_ATTEMPTS {
        let (parent_version, leaf) = read_guard(session, paths).await?;
        let Some(leaf) = leaf else {
            return Err(Error::not_found(user).into());
        };
        if zxid(leaf.mzxid) != previous {
            return Err(Error::modified(user).into());
        }
        let mut m = session.client.new_multi_writer();
        let in_place = mode.kept_by(&leaf, session.id);
        if let Some(pv) = parent_version {
            if in_place {
                m.add_check_version(paths.parent(), pv)?;
            } else {
                m.add_set_data(paths.parent(), &[], Some(pv))?;
            }
        }
        if in_place {
            m.add_set_data(&paths.leaf, value, Some(leaf.version))?;
        } else {
            m.add_delete(&paths.leaf, Some(leaf.version))?;
            add_create(&mut m, paths, value, mode, acls)?;
        }
        match m.commit().await {
            Ok(results) => return last_stat(results),
            Err(e) => match classify_multi(e, parent_version.is_some()) {
                Multi::Retry => continue,
                Multi::Leaf(zk::Error::BadVersion) => return Err(Error::modified(user).into()),
                Multi::Leaf(zk::Error::NoNode) => return Err(Error::not_found(user).into()),
                Multi::Leaf(e) | Multi::Request(e) => return Err(ttl_unsupported(e, mode)),
            },
        }
    }
    Err(Error::modified(user).into())
}

/// Compare-and-delete against `previous` (an mzxid).
pub(super) async fn compare_and_delete(
    session: &Session,
    user: &str,
    paths: &KeyPaths,
    previous: u64,
) -> Outcome<()> {
    for _ in 0..MAX_ATTEMPTS {
        let (parent_version, leaf) = read_guard(session, paths).await?;
        let Some(leaf) = leaf else {
            return Err(Error::not_found(user).into());
        };
        if zxid(leaf.mzxid) != previous {
            return Err(Error::modified(user).into());
        }
        let mut m = session.client.new_multi_writer();
        if let Some(pv) = parent_version {
            m.add_check_version(paths.parent(), pv)?;
        }
        m.add_delete(&paths.leaf, Some(leaf.version))?;
        match m.commit().await {
            Ok(_) => return Ok(()),
            Err(e) => match classify_multi(e, parent_version.is_some()) {
                Multi::Retry => continue,
                Multi::Leaf(zk::Error::BadVersion) => return Err(Error::modified(user).into()),
                Multi::Leaf(zk::Error::NoNode) => return Err(Error::not_found(user).into()),
                Multi::Leaf(e) | Multi::Request(e) => return Err(Fail::Zk(e)),
            },
        }
    }
    Err(Error::modified(user).into())
}

/// One read in a breadth-first walk.
enum Read {
    Children { dir: String, key: String },
    Data { leaf: String, key: String },
}

/// Every key below the directory of the full prefix `prefix`, sorted.
/// One multi-read per tree level (and per [`MAX_BATCH`] nodes).
pub(super) async fn list(
    session: &Session,
    namespace: &Namespace,
    prefix: &str,
) -> Outcome<Vec<KvPair>> {
    let mut out = Vec::new();
    let mut level = vec![Read::Children {
        dir: dir_path(prefix),
        key: prefix.to_owned(),
    }];
    while !level.is_empty() {
        let mut next = Vec::new();
        let mut rest = level.as_slice();
        while !rest.is_empty() {
            let (batch, tail) = rest.split_at(rest.len().min(MAX_BATCH));
            rest = tail;
            let mut reader = session.client.new_multi_reader();
            for read in batch {
                match read {
                    Read::Children { dir, .. } => reader.add_get_children(dir)?,
                    Read::Data { leaf, .. } => reader.add_get_data(leaf)?,
                }
            }
            let results = reader.commit().await?;
            for (read, result) in batch.iter().zip(results) {
                match (read, result) {
                    (Read::Children { dir, key }, zk::MultiReadResult::Children { children }) => {
                        for name in children {
                            match classify(dir, &name) {
                                Child::Dir(segment) => next.push(Read::Children {
                                    dir: join(dir, &name),
                                    key: join_key(key, &segment),
                                }),
                                Child::Leaf(segment) => next.push(Read::Data {
                                    leaf: join(dir, &name),
                                    key: join_key(key, &segment),
                                }),
                                Child::LockQueue(_) | Child::Other => {}
                            }
                        }
                    }
                    (Read::Data { key, .. }, zk::MultiReadResult::Data { data, stat }) => {
                        if let Some(user) = namespace.strip(key) {
                            out.push(pair(user.to_owned(), Bytes::from(data), &stat));
                        }
                    }
                    // Deleted since its parent was listed.
                    (
                        _,
                        zk::MultiReadResult::Error {
                            err: zk::Error::NoNode,
                        },
                    ) => {}
                    (_, zk::MultiReadResult::Error { err }) => return Err(Fail::Zk(err)),
                    (_, _) => {
                        return Err(Fail::Zk(zk::Error::UnexpectedError(
                            "multi-read answered out of order".into(),
                        )))
                    }
                }
            }
        }
        level = next;
    }
    out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Every znode of the subtree at `dir`, level by level from the top (the
/// first level is `[dir]`, unless `dir` is `/`). At the root only anykv's own
/// znodes are included.
async fn subtree(session: &Session, dir: &str) -> Outcome<Vec<Vec<String>>> {
    let mut levels = Vec::new();
    let mut current = if dir == "/" {
        let children = match session.client.list_children("/").await {
            Ok(children) => children,
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => return Err(Fail::Zk(e)),
        };
        children
            .into_iter()
            .filter(|name| !matches!(classify("/", name), Child::Other))
            .map(|name| join("/", &name))
            .collect()
    } else {
        vec![dir.to_owned()]
    };
    while !current.is_empty() {
        let mut next = Vec::new();
        for batch in current.chunks(MAX_BATCH) {
            let mut reader = session.client.new_multi_reader();
            for path in batch {
                reader.add_get_children(path)?;
            }
            for (path, result) in batch.iter().zip(reader.commit().await?) {
                match result {
                    zk::MultiReadResult::Children { children } => {
                        next.extend(children.iter().map(|name| join(path, name)));
                    }
                    zk::MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    } => {}
                    zk::MultiReadResult::Error { err } => return Err(Fail::Zk(err)),
                    _ => {}
                }
            }
        }
        levels.push(std::mem::replace(&mut current, next));
    }
    Ok(levels)
}

/// Deletes `paths`, deepest level first, each level in one pipelined burst.
/// Returns false if something was created meanwhile (`NotEmpty`).
async fn delete_levels(session: &Session, levels: Vec<Vec<String>>) -> Outcome<bool> {
    let mut clean = true;
    for level in levels.iter().rev() {
        let results = join_all(level.iter().map(|p| session.client.delete(p, None))).await;
        for result in results {
            match result {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(zk::Error::NotEmpty) => clean = false,
                Err(e) => return Err(Fail::Zk(e)),
            }
        }
    }
    Ok(clean)
}

/// Deletes the key `key` (if given) with its lock queue, and everything
/// below the directory `below`.
pub(super) async fn delete_tree(
    session: &Session,
    key: Option<&KeyPaths>,
    below: &str,
) -> Outcome<()> {
    if let Some(paths) = key {
        let leaf = session.client.delete(&paths.leaf, None);
        let queue = paths.lock_queue();
        let levels = subtree(session, &queue).await?;
        match leaf.await {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(e) => return Err(Fail::Zk(e)),
        }
        delete_levels(session, levels).await?;
    }
    // A writer racing with us may refill a directory; try a few times, then
    // leave what was created after the call started.
    for _ in 0..3 {
        let levels = subtree(session, below).await?;
        if delete_levels(session, levels).await? {
            break;
        }
    }
    Ok(())
}
