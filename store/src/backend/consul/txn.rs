//! Writes through `/v1/txn`.
//!
//! Every write is one transaction, because only a transaction returns the new
//! `ModifyIndex` (the version anykv hands back) in the same round trip, and
//! only a transaction can combine a precondition (`check-not-exists`,
//! `check-index`) with a session lock (`lock`, i.e. `?acquire=`).
//!
//! Session binding is where Consul differs from a plain KV: a key locked by
//! session S keeps S through a plain `set`, and refuses `lock` by any other
//! session. anykv's writes set the key's lifetime, so a write over a key
//! that another session holds first `unlock`s it (in the same transaction).
//! Which session holds a key is only known from reading it, so the first
//! attempt assumes none, and a rollback is followed by one read that tells a
//! failed precondition (`KeyExists`, `KeyModified`, `KeyNotFound`) from a
//! foreign lock, which the next attempt then releases.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;

use super::error::{is_acl_message, ConsulError};
use super::http::Entry;
use super::session::{create_ttl_session, is_ttl_session};
use super::ConsulStore;
use crate::error::Error;

/// Attempts before a write that keeps meeting a changing lock holder gives up.
const MAX_WRITE_ATTEMPTS: usize = 8;

/// The top 32 bits of the `Flags` of an entry bound to a per-key TTL
/// session ("aktt"); no other write's stamp has them.
const TTL_MARK: u64 = 0x616b_7474;

/// A fresh value for a written entry's `Flags`.
///
/// Consul skips a write that changes nothing (same value, flags and
/// session), keeping the old `ModifyIndex`; the contract counts every write
/// as a change. Stamping each write's `Flags` with a number that differs from
/// the previous write's makes Consul apply it. The stamps are random
/// ([`crate::retry::random_u64`]), so two writers repeating each other's
/// stamp is a 2^-64 event (2^-32 for TTL writes, whose session changes or is
/// renewed anyway).
///
/// The stamp also says whether the write bound the key to a per-key TTL
/// session: then its top 32 bits are [`TTL_MARK`], which other stamps never
/// carry. A later write that takes the key off that session can tell it is
/// one to destroy (or, with the same TTL, to renew and reuse) without asking
/// Consul about it. anykv has no other use for `Flags`.
fn write_stamp(ttl_session: bool) -> u64 {
    let random = crate::retry::random_u64();
    if ttl_session {
        TTL_MARK << 32 | (random & 0xffff_ffff)
    } else if random >> 32 == TTL_MARK {
        random ^ 1 << 32
    } else {
        random
    }
}

/// True if an entry with these `Flags` was bound to a per-key TTL session
/// by the write that produced it (see [`write_stamp`]).
pub(crate) fn bound_to_ttl_session(flags: u64) -> bool {
    flags >> 32 == TTL_MARK
}

/// What the key must look like for a write to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Anything (plain upsert).
    Any,
    /// Absent (create only).
    Absent,
    /// Present at this `ModifyIndex`.
    Version(u64),
}

/// Why a write did not happen.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// Final for this call.
    Failed(Error),
    /// The session we tried to bind the key to does not exist (any more).
    InvalidSession,
    /// Consul's lock-delay keeps the key from any session for now.
    LockDelay,
}

impl From<Error> for WriteError {
    fn from(e: Error) -> Self {
        WriteError::Failed(e)
    }
}

/// The length of the standard, padded base64 encoding of `n` bytes: what a
/// value costs in a transaction body.
pub(crate) const fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// The KV verbs anykv's transactions use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Verb {
    CheckNotExists,
    CheckIndex,
    Set,
    Lock,
    Unlock,
    Delete,
    DeleteTree,
}

/// One operation of a transaction: `{"KV": {...}}`.
#[derive(Debug, Serialize)]
struct TxnOp {
    #[serde(rename = "KV")]
    kv: KvOp,
}

/// A KV operation; members a verb does not take are left out.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct KvOp {
    verb: Verb,
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flags: Option<u64>,
    /// Standard padded base64; left out for an empty value.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
}

/// A finished transaction, ready for [`super::http::Http::txn`].
#[derive(Debug)]
pub(crate) struct Txn {
    ops: Vec<TxnOp>,
    /// Room the JSON body is expected to take.
    size_hint: usize,
}

impl Txn {
    /// The JSON list of operations.
    pub(crate) fn into_body(self) -> Result<Bytes, ConsulError> {
        let mut body = Vec::with_capacity(self.size_hint);
        serde_json::to_writer(&mut body, &self.ops)
            .map_err(|e| ConsulError::Protocol(format!("cannot encode the transaction: {e}")))?;
        Ok(Bytes::from(body))
    }
}

/// A transaction under construction.
pub(crate) struct Ops {
    ops: Vec<TxnOp>,
    size_hint: usize,
    /// The `Flags` stamp of the last value-writing operation.
    stamp: Option<u64>,
    /// Whether the key is bound to a per-key TTL session (see [`write_stamp`]).
    ttl_session: bool,
}

impl Ops {
    /// `key_len` sizes the body; values add their own room.
    pub(crate) fn new(key_len: usize) -> Self {
        Ops {
            ops: Vec::with_capacity(3),
            size_hint: 64 + 2 * key_len,
            stamp: None,
            ttl_session: false,
        }
    }

    /// Marks the stamps of this transaction's writes: they bind the key to
    /// a per-key TTL session.
    pub(crate) fn binding_ttl_session(mut self) -> Self {
        self.ttl_session = true;
        self
    }

    fn op(
        &mut self,
        verb: Verb,
        key: &str,
        index: Option<u64>,
        session: Option<&str>,
        value: Option<&[u8]>,
    ) {
        let mut flags = None;
        let mut encoded = None;
        if let Some(value) = value {
            self.size_hint += base64_len(value.len()) + key.len() + 96;
            let stamp = write_stamp(self.ttl_session);
            self.stamp = Some(stamp);
            flags = Some(stamp);
            if !value.is_empty() {
                encoded = Some(STANDARD.encode(value));
            }
        }
        self.ops.push(TxnOp {
            kv: KvOp {
                verb,
                key: key.to_owned(),
                index,
                session: session.map(str::to_owned),
                flags,
                value: encoded,
            },
        });
    }

    pub(crate) fn check_not_exists(&mut self, key: &str) {
        self.op(Verb::CheckNotExists, key, None, None, None);
    }

    pub(crate) fn check_index(&mut self, key: &str, index: u64) {
        self.op(Verb::CheckIndex, key, Some(index), None, None);
    }

    pub(crate) fn set(&mut self, key: &str, value: &[u8]) {
        self.op(Verb::Set, key, None, None, Some(value));
    }

    pub(crate) fn lock(&mut self, key: &str, session: &str, value: &[u8]) {
        self.op(Verb::Lock, key, None, Some(session), Some(value));
    }

    /// Clears `session`'s lock on the key and writes `value`.
    pub(crate) fn unlock(&mut self, key: &str, session: &str, value: &[u8]) {
        self.op(Verb::Unlock, key, None, Some(session), Some(value));
    }

    pub(crate) fn delete(&mut self, key: &str) {
        self.op(Verb::Delete, key, None, None, None);
    }

    pub(crate) fn delete_tree(&mut self, prefix: &str) {
        self.op(Verb::DeleteTree, prefix, None, None, None);
    }

    /// The `Flags` stamp of the last operation that writes a value.
    pub(crate) fn stamp(&self) -> Option<u64> {
        self.stamp
    }

    pub(crate) fn finish(self) -> Txn {
        Txn {
            ops: self.ops,
            size_hint: self.size_hint,
        }
    }
}

/// The entry a transaction that ends with a write must return.
fn written(entry: Option<Entry>) -> Result<Entry, ConsulError> {
    entry.ok_or_else(|| ConsulError::Protocol("transaction returned no KV result".into()))
}

impl ConsulStore {
    /// Writes `value` to `full` if `expect` holds, bound to `session` (or to
    /// none), and returns the new `ModifyIndex`. `ttl_session`: `session` is
    /// a per-key TTL session.
    pub(crate) async fn write(
        &self,
        user: &str,
        full: &str,
        value: &[u8],
        expect: Expect,
        session: Option<&str>,
        ttl_session: bool,
    ) -> Result<u64, WriteError> {
        self.write_stamped(
            user,
            full,
            value,
            expect,
            session,
            ttl_session,
            &mut Vec::new(),
        )
        .await
    }

    /// [`ConsulStore::write`] that also records in `stamps` the `Flags`
    /// stamp of every transaction it sent: after an answer was lost (a
    /// timeout, a cut connection), an entry carrying one of them is this
    /// write, applied.
    ///
    /// A write that takes the key off a per-key TTL session destroys that
    /// session afterwards (see [`ConsulStore::retire_ttl_session`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn write_stamped(
        &self,
        user: &str,
        full: &str,
        value: &[u8],
        expect: Expect,
        session: Option<&str>,
        ttl_session: bool,
        stamps: &mut Vec<u64>,
    ) -> Result<u64, WriteError> {
        let map = |e: ConsulError| WriteError::Failed(e.into_error("write", user, self.url()));
        // The session holding the key, as last read, and whether the entry
        // read says it is a per-key TTL session.
        let mut foreign: Option<(String, bool)> = None;
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let mut ops = Ops::new(full.len());
            if ttl_session {
                ops = ops.binding_ttl_session();
            }
            match expect {
                Expect::Any => {}
                Expect::Absent => ops.check_not_exists(full),
                Expect::Version(index) => ops.check_index(full, index),
            }
            let holder = foreign.as_ref().map(|(holder, _)| holder.as_str());
            match (session, holder) {
                (None, None) => ops.set(full, value),
                (None, Some(holder)) => ops.unlock(full, holder, value),
                (Some(ours), None) => ops.lock(full, ours, value),
                (Some(ours), Some(holder)) => {
                    ops.unlock(full, holder, &[]);
                    ops.lock(full, ours, value);
                }
            }
            stamps.extend(ops.stamp());
            match self.http().txn(ops.finish()).await {
                Ok(entry) => {
                    let entry = written(entry).map_err(map)?;
                    if let (None, None, Some(holder)) = (session, &foreign, &entry.session) {
                        // `set` kept another session's lock on the key.
                        return self
                            .release_kept_lock(user, full, value, entry.modify_index, holder)
                            .await;
                    }
                    if let Some((holder, true)) = &foreign {
                        // The unlock applied: the key is off `holder`.
                        self.retire_ttl_session(user, holder).await;
                    }
                    return Ok(entry.modify_index);
                }
                Err(ConsulError::TxnRejected { what }) if !is_acl_message(&what) => {
                    let (_, current) = self.http().get(full, None).await.map_err(map)?;
                    match (expect, &current) {
                        (Expect::Absent, Some(_)) => return Err(Error::exists(user).into()),
                        (Expect::Version(_), None) => return Err(Error::not_found(user).into()),
                        (Expect::Version(v), Some(e)) if e.modify_index != v => {
                            return Err(Error::modified(user).into())
                        }
                        _ => {}
                    }
                    // The precondition holds, so the lock juggling failed.
                    if what.contains("lock delay") {
                        return Err(WriteError::LockDelay);
                    }
                    if what.contains("invalid session") {
                        return Err(WriteError::InvalidSession);
                    }
                    foreign = current.and_then(|e| {
                        let marked = bound_to_ttl_session(e.flags);
                        e.session
                            .filter(|holder| Some(holder.as_str()) != session)
                            .map(|holder| (holder, marked))
                    });
                    tracing::debug!(key = %user, %what, foreign = foreign.is_some(), "write rolled back; retrying");
                }
                Err(e) => return Err(map(e)),
            }
        }
        Err(Error::Backend {
            backend: super::error::BACKEND,
            target: user.to_owned(),
            source: format!(
                "gave up after {MAX_WRITE_ATTEMPTS} attempts: the session holding the key kept changing"
            )
            .into(),
        }
        .into())
    }

    /// After a plain write landed at `index` on a key that session `holder`
    /// has locked, releases that lock (rewriting the value) unless the key
    /// changed again meanwhile, in which case our write stands as it was.
    /// A released per-key TTL session is destroyed.
    async fn release_kept_lock(
        &self,
        user: &str,
        full: &str,
        value: &[u8],
        index: u64,
        holder: &str,
    ) -> Result<u64, WriteError> {
        let mut ops = Ops::new(full.len());
        ops.check_index(full, index);
        ops.unlock(full, holder, value);
        match self.http().txn(ops.finish()).await {
            Ok(entry) => {
                let index = written(entry)
                    .map_err(|e| e.into_error("write", user, self.url()))?
                    .modify_index;
                // The `set` overwrote the stamp that would have told, so ask.
                match self.http().session_info(holder).await {
                    Ok(Some(info)) if is_ttl_session(&info, None) => {
                        self.retire_ttl_session(user, holder).await;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(key = %user, session = %holder, %error, "could not read the session a write released");
                    }
                }
                Ok(index)
            }
            Err(ConsulError::TxnRejected { what }) if !is_acl_message(&what) => Ok(index),
            Err(e) => Err(WriteError::Failed(e.into_error("write", user, self.url()))),
        }
    }

    /// Destroys `session`, a per-key TTL session that a write of `user` has
    /// just taken the key off. It holds nothing then, and nothing binds it
    /// again: only its own write and same-TTL rewrites on it do, and those
    /// are conditioned on the key's `ModifyIndex` from a read that showed
    /// it bound to the session, which the write that took it off has
    /// changed. Best effort: a session left behind expires by its TTL.
    pub(crate) async fn retire_ttl_session(&self, user: &str, session: &str) {
        if let Err(error) = self.http().session_destroy(session).await {
            tracing::debug!(key = %user, %session, %error, "could not destroy the TTL session a write replaced; it expires by its TTL");
        }
    }

    /// A TTL write bound to a per-key session with `ttl`.
    ///
    /// If the key is bound to a per-key TTL session with the same TTL (its
    /// stamp says it is one; renewing it confirms name, behaviour and TTL),
    /// that session is renewed and the key rewritten on it, if it has not
    /// changed since it was read: no new session. Otherwise the key is bound
    /// to a new session, and the one it replaces (if a per-key TTL session)
    /// is destroyed. Renewing restarts the session's timer as creating one
    /// does, so the key expires `ttl` to 2×`ttl` after this write either way.
    pub(crate) async fn write_ttl(
        &self,
        user: &str,
        full: &str,
        value: &[u8],
        expect: Expect,
        ttl: std::time::Duration,
    ) -> Result<u64, WriteError> {
        if expect != Expect::Absent {
            if let Some(index) = self
                .rewrite_on_ttl_session(user, full, value, expect, ttl)
                .await?
            {
                return Ok(index);
            }
        }
        let id = create_ttl_session(self.http(), ttl)
            .await
            .map_err(|e| WriteError::Failed(e.into_error("put", user, self.url())))?;
        let result = self.write(user, full, value, expect, Some(&id), true).await;
        if let Err(e) = &result {
            if nothing_written(e) {
                if let Err(error) = self.http().session_destroy(&id).await {
                    tracing::debug!(session = %id, %error, "destroying an unused TTL session failed");
                }
            }
            // Otherwise the write may have applied: the session then
            // carries the key and expires with it.
        }
        result
    }

    /// See [`ConsulStore::write_ttl`]: `None` when there is no session to
    /// reuse or the key changed since it was read.
    async fn rewrite_on_ttl_session(
        &self,
        user: &str,
        full: &str,
        value: &[u8],
        expect: Expect,
        ttl: std::time::Duration,
    ) -> Result<Option<u64>, WriteError> {
        let map = |e: ConsulError| WriteError::Failed(e.into_error("put", user, self.url()));
        let (_, current) = self.http().get(full, None).await.map_err(map)?;
        let Some(entry) = current else {
            return match expect {
                Expect::Version(_) => Err(Error::not_found(user).into()),
                _ => Ok(None),
            };
        };
        if let Expect::Version(version) = expect {
            if entry.modify_index != version {
                return Err(Error::modified(user).into());
            }
        }
        let Some(holder) = entry.session.filter(|_| bound_to_ttl_session(entry.flags)) else {
            return Ok(None);
        };
        match self.http().session_renew_info(&holder).await.map_err(map)? {
            Some(info) if is_ttl_session(&info, Some(ttl)) => {}
            _ => return Ok(None),
        }
        let mut ops = Ops::new(full.len()).binding_ttl_session();
        ops.check_index(full, entry.modify_index);
        ops.lock(full, &holder, value);
        match self.http().txn(ops.finish()).await {
            Ok(entry) => Ok(Some(written(entry).map_err(map)?.modify_index)),
            Err(ConsulError::TxnRejected { what }) if !is_acl_message(&what) => {
                tracing::debug!(key = %user, %what, "key changed since read; writing on a new TTL session");
                Ok(None)
            }
            Err(e) => Err(map(e)),
        }
    }
}

/// True if `error` proves the write did not apply (a rollback, or a refusal
/// before anything was written); a timeout or a lost connection does not.
fn nothing_written(error: &WriteError) -> bool {
    match error {
        WriteError::InvalidSession | WriteError::LockDelay => true,
        WriteError::Failed(e) => matches!(
            e,
            Error::KeyExists { .. }
                | Error::KeyModified { .. }
                | Error::KeyNotFound { .. }
                | Error::Unauthorized { .. }
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn body(ops: Ops) -> Vec<u8> {
        ops.finish().into_body().unwrap().to_vec()
    }

    #[test]
    fn builds_a_valid_transaction_body() {
        let mut ops = Ops::new(8);
        ops.check_index("a\"b\n", u64::MAX);
        ops.unlock("a\"b\n", "s1", &[]);
        ops.lock("a\"b\n", "s2", b"hi");
        ops.check_not_exists("c");
        ops.set("c", b"any carnal pleas");
        ops.delete("c");
        ops.delete_tree("d/");
        let stamp = ops.stamp().unwrap();
        let json: Value = serde_json::from_slice(&body(ops)).unwrap();
        let flags = |i: usize| json[i]["KV"]["Flags"].as_u64().unwrap();
        // Every write is stamped, and no two stamps repeat.
        assert_ne!(flags(1), flags(2));
        assert_ne!(flags(2), flags(4));
        assert_eq!(flags(4), stamp);
        assert_eq!(
            json,
            json!([
                {"KV": {"Verb": "check-index", "Key": "a\"b\n", "Index": u64::MAX}},
                {"KV": {"Verb": "unlock", "Key": "a\"b\n", "Session": "s1", "Flags": flags(1)}},
                {"KV": {"Verb": "lock", "Key": "a\"b\n", "Session": "s2", "Flags": flags(2), "Value": "aGk="}},
                {"KV": {"Verb": "check-not-exists", "Key": "c"}},
                {"KV": {"Verb": "set", "Key": "c", "Flags": flags(4), "Value": "YW55IGNhcm5hbCBwbGVhcw=="}},
                {"KV": {"Verb": "delete", "Key": "c"}},
                {"KV": {"Verb": "delete-tree", "Key": "d/"}},
            ])
        );
        let mut ops = Ops::new(0);
        ops.delete("k");
        assert_eq!(body(ops), br#"[{"KV":{"Verb":"delete","Key":"k"}}]"#);
    }

    #[test]
    fn base64_len_is_the_encoded_length() {
        let data = [0xffu8; 64];
        for n in 0..data.len() {
            assert_eq!(base64_len(n), STANDARD.encode(&data[..n]).len(), "{n}");
        }
    }

    #[test]
    fn the_largest_write_fits_in_a_transaction() {
        use crate::backend::consul::MAX_VALUE_SIZE;
        // Worst case: longest namespace and key, all quotes (escaped twice as
        // long), three operations, the largest value.
        let key = "\"".repeat(2 * crate::key::MAX_KEY_LEN + 1);
        let session = "00000000-0000-0000-0000-000000000000";
        let mut ops = Ops::new(key.len());
        ops.check_index(&key, u64::MAX);
        ops.unlock(&key, session, &[]);
        ops.lock(&key, session, &vec![0xff; MAX_VALUE_SIZE]);
        let txn = ops.finish();
        let hint = txn.size_hint;
        let body = txn.into_body().unwrap();
        assert!(body.len() <= 512 * 1024, "{}", body.len());
        // The room reserved up front covers the value and its framing.
        assert!(hint >= base64_len(MAX_VALUE_SIZE), "{hint}");
    }
}
