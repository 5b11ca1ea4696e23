//! The server side of each operation: the script calls and their replies, on
//! the handle's [`Core`].

use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Value;
use tokio::time::Instant;

use super::error::{map, BACKEND};
use super::scripts::{Script, COUNTER, DATA_PREFIX, DELETE, INDEX, LIST, LOCK_RENEW};
use super::scripts::{LEASE_PREFIX, LOCK_LEAVE, LOCK_TAKE, QUEUE_PREFIX};
use super::scripts::{PUT, PUT_PLAIN, READ, READ_MANY};
use super::watch::Snapshot;
use crate::error::{Error, Result};
use crate::types::{Expiry, KvPair, PutOptions};

/// Largest value accepted (32 MiB); see the module docs for why it is
use super::*;

impl Core {
    pub(crate) fn check_open(&self) -> Result<()> {
        crate::request::check_open(&self.closed, &self.url)
    }

    pub(crate) fn closed_error(&self) -> Error {
        Error::Closed {
            url: self.url.clone(),
        }
    }

    pub(crate) fn unavailable(&self, why: &'static str) -> Error {
        error::unavailable(&self.url, why)
    }

    /// Marks the store closed; true for the first caller only.
    pub(super) fn begin_close(&self) -> bool {
        self.closed.cancel();
        !self.ended.swap(true, Ordering::AcqRel)
    }

    pub(super) fn data_key(&self, full: &str) -> String {
        let mut key = String::with_capacity(DATA_PREFIX.len() + full.len());
        key.push_str(DATA_PREFIX);
        key.push_str(full);
        key
    }

    pub(crate) fn channel(&self, full: &str) -> String {
        let mut channel = String::with_capacity(self.channel_prefix.len() + full.len());
        channel.push_str(&self.channel_prefix);
        channel.push_str(full);
        channel
    }

    /// A lock owner token unique across every grant ever made on the server.
    pub(crate) fn next_owner(&self) -> String {
        let n = self.lock_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}:{n}", self.session_id)
    }

    pub(super) fn map_err(&self, err: redis::RedisError, target: &str) -> Error {
        map(err, target, &self.url, self.request_timeout)
    }

    pub(crate) fn reply_error(&self, target: &str, script: &Script) -> Error {
        Error::Backend {
            backend: BACKEND,
            target: target.to_owned(),
            source: format!("unexpected reply from the {} script", script.name).into(),
        }
    }

    pub(crate) fn protocol_error(&self, target: &str, operation: &str, got: Outcome) -> Error {
        Error::Backend {
            backend: BACKEND,
            target: target.to_owned(),
            source: format!("unexpected outcome of {operation}: {got:?}").into(),
        }
    }

    /// Runs a script call built from [`Script::cmd`]; loads the script if
    /// the server does not know it (first use, or after a restart).
    pub(crate) async fn eval(
        &self,
        script: &Script,
        cmd: &redis::Cmd,
        target: &str,
    ) -> Result<Value> {
        let mut conn = self.conn.clone();
        match cmd.query_async::<Value>(&mut conn).await {
            Ok(value) => Ok(value),
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(&script.source)
                    .query_async::<String>(&mut conn)
                    .await
                    .map_err(|e| self.map_err(e, target))?;
                cmd.query_async::<Value>(&mut conn)
                    .await
                    .map_err(|e| self.map_err(e, target))
            }
            Err(e) => Err(self.map_err(e, target)),
        }
    }

    /// The write script.
    pub(crate) async fn write(
        &self,
        user: &str,
        full: &str,
        value: &[u8],
        expect: Expect,
        lifetime: Lifetime,
    ) -> Result<Outcome> {
        self.check_open()?;
        if let (Expect::Any, Lifetime::Forever) = (expect, lifetime) {
            let mut cmd = PUT_PLAIN.cmd();
            cmd.arg(3)
                .arg(self.data_key(full))
                .arg(COUNTER)
                .arg(INDEX)
                .arg(value)
                .arg(full)
                .arg(self.channel(full));
            let reply = self.eval(&PUT_PLAIN, &cmd, user).await?;
            return outcome(reply).ok_or_else(|| self.reply_error(user, &PUT_PLAIN));
        }
        let (kind, ttl_ms) = match lifetime {
            Lifetime::Forever => ("n", 0),
            Lifetime::Ttl(ttl) => ("t", millis(ttl)),
            Lifetime::Ephemeral => ("e", millis(self.session_ttl)),
        };
        let mut cmd = PUT.cmd();
        cmd.arg(4)
            .arg(self.data_key(full))
            .arg(COUNTER)
            .arg(INDEX)
            .arg(&self.session_set)
            .arg(full)
            .arg(value);
        match expect {
            Expect::Any => cmd.arg(""),
            Expect::Create => cmd.arg("c"),
            Expect::Version(v) => cmd.arg(v),
        };
        cmd.arg(kind)
            .arg(ttl_ms)
            .arg(&self.session_id)
            .arg(self.channel(full));
        let reply = self.eval(&PUT, &cmd, user).await?;
        outcome(reply).ok_or_else(|| self.reply_error(user, &PUT))
    }

    /// The delete script; `condition` = (hash field, expected value).
    pub(crate) async fn remove(
        &self,
        user: &str,
        full: &str,
        condition: Option<(&str, &str)>,
    ) -> Result<Outcome> {
        self.check_open()?;
        let (field, expected) = condition.unwrap_or(("", ""));
        let mut cmd = DELETE.cmd();
        cmd.arg(3)
            .arg(self.data_key(full))
            .arg(COUNTER)
            .arg(INDEX)
            .arg(full)
            .arg(field)
            .arg(expected)
            .arg(self.channel(full))
            .arg(&self.wake_prefix)
            .arg(&self.grant_prefix);
        let reply = self.eval(&DELETE, &cmd, user).await?;
        outcome(reply).ok_or_else(|| self.reply_error(user, &DELETE))
    }

    /// One attempt to take a lock. `queue` (a waiting `lock()`): queue or
    /// renew the lease, and take the lock only if it is free and this
    /// waiter is first in line; otherwise (`try_lock()`) take it if free.
    pub(crate) async fn lock_take(
        &self,
        user: &str,
        full: &str,
        value: &[u8],
        ttl: Duration,
        owner: &str,
        queue: bool,
    ) -> Result<Outcome> {
        self.check_open()?;
        let mut cmd = LOCK_TAKE.cmd();
        cmd.arg(6)
            .arg(self.data_key(full))
            .arg(COUNTER)
            .arg(INDEX)
            .arg(&self.session_set)
            .arg(format!("{QUEUE_PREFIX}{full}"))
            .arg(format!("{LEASE_PREFIX}{full}"))
            .arg(full)
            .arg(value)
            .arg(millis(ttl))
            .arg(&self.session_id)
            .arg(owner)
            .arg(self.channel(full))
            // A waiter renews its lease every third of it.
            .arg(millis(ttl))
            .arg(if queue { "1" } else { "" });
        let reply = self.eval(&LOCK_TAKE, &cmd, user).await?;
        outcome(reply).ok_or_else(|| self.reply_error(user, &LOCK_TAKE))
    }

    /// Takes a waiter that gave up out of the key's queue.
    pub(crate) async fn lock_leave(&self, user: &str, full: &str, owner: &str) -> Result<()> {
        let mut cmd = LOCK_LEAVE.cmd();
        cmd.arg(5)
            .arg(format!("{QUEUE_PREFIX}{full}"))
            .arg(format!("{LEASE_PREFIX}{full}"))
            .arg(self.data_key(full))
            .arg(COUNTER)
            .arg(INDEX)
            .arg(owner)
            .arg(full)
            .arg(&self.wake_prefix)
            .arg(self.channel(full))
            .arg(&self.grant_prefix);
        self.eval(&LOCK_LEAVE, &cmd, user).await.map(drop)
    }

    /// The channel on which the waiter with this owner token is told that
    /// a release handed the lock on to it (the message is its fencing
    /// token).
    pub(crate) fn grant_channel(&self, owner: &str) -> String {
        format!("{}{owner}", self.grant_prefix)
    }

    /// Re-arms a lock's TTL if `owner` still holds it: the server's
    /// `run_id` (`""` when the user may not run `INFO`) if so, `None` if the
    /// key is missing or has another owner.
    pub(crate) async fn renew(
        &self,
        user: &str,
        full: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>> {
        self.check_open()?;
        let mut cmd = LOCK_RENEW.cmd();
        cmd.arg(1)
            .arg(self.data_key(full))
            .arg(owner)
            .arg(millis(ttl));
        let reply = self.eval(&LOCK_RENEW, &cmd, user).await?;
        match reply {
            Value::Int(0) => Ok(None),
            Value::Array(items) if items.first().and_then(int) == Some(1) => Ok(Some(
                items.get(1).and_then(text).unwrap_or_default().to_owned(),
            )),
            _ => Err(self.reply_error(user, &LOCK_RENEW)),
        }
    }

    /// One consistent read of a key, for watchers.
    pub(crate) async fn read_key(
        &self,
        user: &str,
        full: &str,
    ) -> Result<Snapshot<Option<KvPair>>> {
        self.check_open()?;
        let mut cmd = READ.cmd();
        cmd.arg(2).arg(self.data_key(full)).arg(COUNTER);
        let reply = self.eval(&READ, &cmd, user).await?;
        let received = Instant::now();
        let bad = || self.reply_error(user, &READ);
        let Value::Array(mut items) = reply else {
            return Err(bad());
        };
        let counter = items.first().and_then(uint).ok_or_else(bad)?;
        match items.as_mut_slice() {
            [_] => Ok(Snapshot {
                counter,
                item: None,
                expires: None,
            }),
            [_, value, version, pttl] => {
                let last_index = uint(version).ok_or_else(bad)?;
                let value = take_bytes(value).ok_or_else(bad)?;
                Ok(Snapshot {
                    counter,
                    item: Some(KvPair {
                        key: user.to_owned(),
                        value,
                        last_index,
                    }),
                    expires: int(pttl).and_then(|ms| expiry(received, ms)),
                })
            }
            _ => Err(bad()),
        }
    }

    /// One consistent read of several keys (full names) for a tree watcher:
    /// the counter, and per key its pair (named by `user`, its user key) and
    /// expiry, `None` if absent.
    pub(crate) async fn read_keys(
        &self,
        target: &str,
        keys: &[(String, String)],
    ) -> Result<(u64, Vec<Option<(KvPair, Option<Instant>)>>)> {
        self.check_open()?;
        let mut cmd = READ_MANY.cmd();
        cmd.arg(keys.len() + 1).arg(COUNTER);
        for (full, _) in keys {
            cmd.arg(self.data_key(full));
        }
        let reply = self.eval(&READ_MANY, &cmd, target).await?;
        let received = Instant::now();
        let bad = || self.reply_error(target, &READ_MANY);
        let Value::Array(mut items) = reply else {
            return Err(bad());
        };
        let Some((counter, rows)) = items.split_first_mut() else {
            return Err(bad());
        };
        let counter = uint(counter).ok_or_else(bad)?;
        if rows.len() != keys.len() * 3 {
            return Err(bad());
        }
        let mut out = Vec::with_capacity(keys.len());
        for ((_, user), row) in keys.iter().zip(rows.chunks_exact_mut(3)) {
            let last_index = uint(&row[1]).ok_or_else(bad)?;
            if last_index == 0 {
                out.push(None);
                continue;
            }
            let pair = KvPair {
                key: user.clone(),
                value: take_bytes(&mut row[0]).ok_or_else(bad)?,
                last_index,
            };
            out.push(Some((
                pair,
                int(&row[2]).and_then(|ms| expiry(received, ms)),
            )));
        }
        Ok((counter, out))
    }

    /// One consistent listing of every key strictly below `full_prefix`.
    pub(crate) async fn read_tree(&self, full_prefix: &str) -> Result<Snapshot<Vec<KvPair>>> {
        let (counter, rows) = self.read_tree_rows(full_prefix).await?;
        let mut expires: Option<Instant> = None;
        let mut pairs = Vec::with_capacity(rows.len());
        for (pair, at) in rows {
            if let Some(at) = at {
                expires = Some(expires.map_or(at, |e| e.min(at)));
            }
            pairs.push(pair);
        }
        Ok(Snapshot {
            counter,
            item: pairs,
            expires,
        })
    }

    /// [`Core::read_tree`] with each key's own expiry.
    pub(crate) async fn read_tree_rows(
        &self,
        full_prefix: &str,
    ) -> Result<(u64, Vec<(KvPair, Option<Instant>)>)> {
        self.check_open()?;
        let (min, max) = lex_range(full_prefix);
        let mut cmd = LIST.cmd();
        cmd.arg(2)
            .arg(COUNTER)
            .arg(INDEX)
            .arg(min)
            .arg(max)
            .arg(DATA_PREFIX);
        let reply = self.eval(&LIST, &cmd, full_prefix).await?;
        let received = Instant::now();
        let bad = || self.reply_error(full_prefix, &LIST);
        let Value::Array(mut items) = reply else {
            return Err(bad());
        };
        let Some((counter, rows)) = items.split_first_mut() else {
            return Err(bad());
        };
        let counter = uint(counter).ok_or_else(bad)?;
        if rows.len() % 4 != 0 {
            return Err(bad());
        }
        let mut pairs = Vec::with_capacity(rows.len() / 4);
        for row in rows.chunks_exact_mut(4) {
            let member = text(&row[0]).ok_or_else(bad)?;
            let Some(user) = self.namespace.strip(member) else {
                continue;
            };
            let pair = KvPair {
                key: user.to_owned(),
                value: take_bytes(&mut row[1]).ok_or_else(bad)?,
                last_index: uint(&row[2]).ok_or_else(bad)?,
            };
            pairs.push((pair, int(&row[3]).and_then(|ms| expiry(received, ms))));
        }
        Ok((counter, pairs))
    }

    /// The lifetime of a write (its TTL already checked against
    /// [`MAX_TTL`] by the request path).
    pub(super) fn lifetime(&self, options: &PutOptions) -> Lifetime {
        match options.expiry {
            Expiry::Ttl(ttl) => Lifetime::Ttl(ttl),
            Expiry::Ephemeral => Lifetime::Ephemeral,
            _ => Lifetime::Forever,
        }
    }
}
