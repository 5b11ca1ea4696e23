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

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use super::codec::{push_base64, push_json_string};
use super::error::{is_acl_message, ConsulError};
use super::http::Entry;
use super::ConsulStore;
use crate::error::Error;

/// Attempts before a write that keeps meeting a changing lock holder gives up.
const MAX_WRITE_ATTEMPTS: usize = 8;

/// A fresh value for a written entry's `Flags`.
///
/// Consul skips a write that changes nothing (same value, flags and
/// session), keeping the old `ModifyIndex`; the contract counts every write
/// as a change. Stamping each write's `Flags` with a number that differs from
/// the previous write's makes Consul apply it. anykv has no other use for
/// `Flags`. The numbers hash a process-wide counter with per-process random
/// keys, so two writers repeating each other's stamp is a 2^-64 event.
fn write_stamp() -> u64 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = KEYS.get_or_init(RandomState::new).build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
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

/// A transaction body under construction: a JSON list of `{"KV": {...}}`.
pub(crate) struct Ops {
    body: String,
    empty: bool,
    /// The `Flags` stamp of the last value-writing operation.
    stamp: Option<u64>,
}

impl Ops {
    /// `key_len` sizes the buffer; values add their own room.
    pub(crate) fn new(key_len: usize) -> Self {
        let mut body = String::with_capacity(64 + 2 * key_len);
        body.push('[');
        Ops {
            body,
            empty: true,
            stamp: None,
        }
    }

    fn op(
        &mut self,
        verb: &str,
        key: &str,
        index: Option<u64>,
        session: Option<&str>,
        value: Option<&[u8]>,
    ) {
        if let Some(value) = value {
            self.body
                .reserve(super::codec::base64_len(value.len()) + key.len() + 96);
        }
        if !self.empty {
            self.body.push(',');
        }
        self.empty = false;
        self.body.push_str("{\"KV\":{\"Verb\":\"");
        self.body.push_str(verb);
        self.body.push_str("\",\"Key\":");
        push_json_string(&mut self.body, key);
        if let Some(index) = index {
            self.body.push_str(",\"Index\":");
            self.body.push_str(&index.to_string());
        }
        if let Some(session) = session {
            self.body.push_str(",\"Session\":");
            push_json_string(&mut self.body, session);
        }
        if let Some(value) = value {
            let stamp = write_stamp();
            self.stamp = Some(stamp);
            self.body.push_str(",\"Flags\":");
            self.body.push_str(&stamp.to_string());
            if !value.is_empty() {
                self.body.push_str(",\"Value\":\"");
                push_base64(&mut self.body, value);
                self.body.push('"');
            }
        }
        self.body.push_str("}}");
    }

    pub(crate) fn check_not_exists(&mut self, key: &str) {
        self.op("check-not-exists", key, None, None, None);
    }

    pub(crate) fn check_index(&mut self, key: &str, index: u64) {
        self.op("check-index", key, Some(index), None, None);
    }

    pub(crate) fn set(&mut self, key: &str, value: &[u8]) {
        self.op("set", key, None, None, Some(value));
    }

    pub(crate) fn lock(&mut self, key: &str, session: &str, value: &[u8]) {
        self.op("lock", key, None, Some(session), Some(value));
    }

    /// Clears `session`'s lock on the key and writes `value`.
    pub(crate) fn unlock(&mut self, key: &str, session: &str, value: &[u8]) {
        self.op("unlock", key, None, Some(session), Some(value));
    }

    pub(crate) fn delete(&mut self, key: &str) {
        self.op("delete", key, None, None, None);
    }

    pub(crate) fn delete_tree(&mut self, prefix: &str) {
        self.op("delete-tree", prefix, None, None, None);
    }

    /// The `Flags` stamp of the last operation that writes a value.
    pub(crate) fn stamp(&self) -> Option<u64> {
        self.stamp
    }

    pub(crate) fn finish(mut self) -> String {
        self.body.push(']');
        self.body
    }
}

/// The entry a transaction that ends with a write must return.
fn written(entry: Option<Entry>) -> Result<Entry, ConsulError> {
    entry.ok_or_else(|| ConsulError::Protocol("transaction returned no KV result".into()))
}

impl ConsulStore {
    /// Writes `value` to `full` if `expect` holds, bound to `session` (or to
    /// none), and returns the new `ModifyIndex`.
    pub(crate) async fn write(
        &self,
        user: &str,
        full: &str,
        value: &[u8],
        expect: Expect,
        session: Option<&str>,
    ) -> Result<u64, WriteError> {
        self.write_stamped(user, full, value, expect, session, &mut Vec::new())
            .await
    }

    /// [`ConsulStore::write`] that also records in `stamps` the `Flags`
    /// stamp of every transaction it sent: after an answer was lost (a
    /// timeout, a cut connection), an entry carrying one of them is this
    /// write, applied.
    pub(crate) async fn write_stamped(
        &self,
        user: &str,
        full: &str,
        value: &[u8],
        expect: Expect,
        session: Option<&str>,
        stamps: &mut Vec<u64>,
    ) -> Result<u64, WriteError> {
        let map = |e: ConsulError| WriteError::Failed(e.into_error("write", user, self.url()));
        let mut foreign: Option<String> = None;
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let mut ops = Ops::new(full.len());
            match expect {
                Expect::Any => {}
                Expect::Absent => ops.check_not_exists(full),
                Expect::Version(index) => ops.check_index(full, index),
            }
            match (session, foreign.as_deref()) {
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
                    foreign = current
                        .and_then(|e| e.session)
                        .filter(|holder| Some(holder.as_str()) != session);
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
            Ok(entry) => Ok(written(entry)
                .map_err(|e| e.into_error("write", user, self.url()))?
                .modify_index),
            Err(ConsulError::TxnRejected { what }) if !is_acl_message(&what) => Ok(index),
            Err(e) => Err(WriteError::Failed(e.into_error("write", user, self.url()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::consul::codec::Json;

    #[test]
    fn builds_a_valid_transaction_body() {
        let mut ops = Ops::new(8);
        ops.check_index("a\"b", 7);
        ops.unlock("a\"b", "s1", &[]);
        ops.lock("a\"b", "s2", b"hi");
        let body = ops.finish();
        let json = Json::parse(body.as_bytes()).unwrap();
        let ops: Vec<&Json<'_>> = json
            .as_array()
            .unwrap()
            .iter()
            .map(|op| op.get("KV").unwrap())
            .collect();
        let field = |i: usize, name: &str| ops[i].get(name).cloned();
        assert_eq!(ops.len(), 3);
        assert_eq!(field(0, "Verb"), Some(Json::String("check-index".into())));
        assert_eq!(field(0, "Key"), Some(Json::String("a\"b".into())));
        assert_eq!(field(0, "Index"), Some(Json::Number("7")));
        assert_eq!(field(0, "Flags"), None);
        assert_eq!(field(1, "Verb"), Some(Json::String("unlock".into())));
        assert_eq!(field(1, "Session"), Some(Json::String("s1".into())));
        assert_eq!(field(1, "Value"), None);
        assert_eq!(field(2, "Verb"), Some(Json::String("lock".into())));
        assert_eq!(field(2, "Value"), Some(Json::String("aGk=".into())));
        // Every write is stamped, and no two stamps repeat.
        let stamp = |i: usize| field(i, "Flags").and_then(|f| f.as_u64()).unwrap();
        assert_ne!(stamp(1), stamp(2));
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
        assert!(ops.finish().len() <= 512 * 1024);
    }
}
