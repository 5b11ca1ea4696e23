//! Reading Redis replies and the small conversions around them (lex ranges,
//! millisecond TTLs, expiry instants).

use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::types::KvPair;

/// Largest value accepted (32 MiB); see the module docs for why it is
use super::*;

/// `ZRANGEBYLEX` bounds for every key strictly below `full_prefix`: from
/// `prefix/` (inclusive) to `prefix0` (exclusive; `0` follows `/`).
pub(super) fn lex_range(full_prefix: &str) -> (String, String) {
    if full_prefix.is_empty() {
        ("-".to_owned(), "+".to_owned())
    } else {
        (format!("[{full_prefix}/"), format!("({full_prefix}0"))
    }
}

/// The longest key TTL, lock TTL and `session_ttl` accepted: one year.
///
/// Redis itself takes relative expiries up to `i64::MAX` ms minus its clock
/// (larger ones fail with "invalid expire time"), but the scripts compare
/// TTLs as Lua numbers (doubles, exact to 2^53 ms) and the lock guard does
/// `Instant` arithmetic with them; a year is far inside both. Longer TTLs are
/// [`Error::InvalidArgument`] naming the key, checked before anything is sent.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Milliseconds, rounded up, at least 1, capped at [`MAX_TTL`] (callers
/// check the bound first; the cap only keeps a missed check harmless).
pub(super) fn millis(d: Duration) -> u64 {
    const CAP: u64 = MAX_TTL.as_secs() * 1000;
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(CAP).clamp(1, CAP)
}

pub(super) fn expiry(received: Instant, pttl_ms: i64) -> Option<Instant> {
    // +1 ms: Redis expires a key once its deadline is strictly in the past.
    // An expiry too far away to represent is no expiry worth a timer.
    u64::try_from(pttl_ms)
        .ok()
        .and_then(|ms| received.checked_add(Duration::from_millis(ms.saturating_add(1))))
}

pub(super) fn outcome(reply: Value) -> Option<Outcome> {
    match reply {
        Value::Int(0) => Some(Outcome::Absent),
        Value::Array(items) => match (items.first().and_then(text), items.get(1)) {
            (Some("exists"), pttl) => Some(Outcome::Exists {
                pttl: pttl.and_then(int).unwrap_or(-1),
            }),
            (Some("missing"), _) => Some(Outcome::Missing),
            (Some("modified"), _) => Some(Outcome::Modified),
            (Some("queued"), ms) => Some(Outcome::Queued {
                lease_ms: ms.and_then(int).unwrap_or(0),
                server: items.get(2).and_then(text).unwrap_or_default().to_owned(),
                seen: uint(items.get(3)?)?,
            }),
            (Some("held"), pttl) => Some(Outcome::Held {
                pttl: pttl.and_then(int).unwrap_or(-1),
                server: items.get(2).and_then(text).unwrap_or_default().to_owned(),
                seen: uint(items.get(3)?)?,
            }),
            (Some("granted"), Some(token)) => Some(Outcome::Granted {
                token: uint(token)?,
                server: items.get(2).and_then(text).unwrap_or_default().to_owned(),
            }),
            _ => None,
        },
        other => uint(&other).map(Outcome::Written),
    }
}

pub(super) fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

pub(super) fn uint(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

pub(super) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

/// The integer at `index` of an array reply.
pub(crate) fn int_at(v: &Value, index: usize) -> Option<i64> {
    match v {
        Value::Array(items) => items.get(index).and_then(int),
        _ => None,
    }
}

/// Moves a bulk string out of a reply (no copy).
pub(super) fn take_bytes(v: &mut Value) -> Option<Bytes> {
    match std::mem::take(v) {
        Value::BulkString(b) => Some(Bytes::from(b)),
        _ => None,
    }
}

pub(super) fn pair_or_error(
    user: String,
    value: Bytes,
    outcome: Outcome,
    core: &Core,
) -> Result<KvPair> {
    match outcome {
        Outcome::Written(last_index) => Ok(KvPair {
            key: user,
            value,
            last_index,
        }),
        Outcome::Exists { .. } => Err(Error::exists(&user)),
        Outcome::Missing => Err(Error::not_found(&user)),
        Outcome::Modified => Err(Error::modified(&user)),
        other => Err(core.protocol_error(&user, "put", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lex_range_covers_exactly_the_subtree() {
        assert_eq!(lex_range(""), ("-".into(), "+".into()));
        let (min, max) = lex_range("a/b");
        assert_eq!((min.as_str(), max.as_str()), ("[a/b/", "(a/b0"));
        // Every key below "a/b/" sorts inside, siblings outside.
        for inside in ["a/b/c", "a/b/\u{10ffff}", "a/b/ "] {
            assert!(inside > &min[1..] && inside < &max[1..], "{inside}");
        }
        for outside in ["a/b", "a/b-c", "a/bc", "a/b0"] {
            assert!(!(outside >= &min[1..] && outside < &max[1..]), "{outside}");
        }
    }

    #[test]
    fn millis_round_up_and_stay_positive() {
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::ZERO), 1);
        assert!(millis(Duration::MAX) > 0);
    }

    #[test]
    fn script_replies_parse() {
        assert_eq!(
            outcome(Value::BulkString(b"42".to_vec())),
            Some(Outcome::Written(42))
        );
        assert_eq!(outcome(Value::Int(0)), Some(Outcome::Absent));
        assert_eq!(
            outcome(Value::Array(vec![
                Value::BulkString(b"exists".to_vec()),
                Value::Int(1200)
            ])),
            Some(Outcome::Exists { pttl: 1200 })
        );
        assert_eq!(
            outcome(Value::Array(vec![Value::BulkString(b"modified".to_vec())])),
            Some(Outcome::Modified)
        );
        assert_eq!(outcome(Value::Nil), None);
        assert_eq!(
            outcome(Value::Array(vec![
                Value::BulkString(b"granted".to_vec()),
                Value::BulkString(b"17".to_vec()),
                Value::BulkString(b"ab12".to_vec()),
            ])),
            Some(Outcome::Granted {
                token: 17,
                server: "ab12".into()
            })
        );
        assert_eq!(
            outcome(Value::Array(vec![Value::BulkString(b"granted".to_vec())])),
            None
        );
    }

    #[test]
    fn far_deadlines_do_not_overflow() {
        let now = Instant::now();
        assert_eq!(crate::time::later(now, Duration::MAX), now);
        // Whatever the server answers, no overflow panic.
        let _ = expiry(now, i64::MAX);
    }

    #[test]
    fn glob_escape_neutralises_pattern_characters() {
        assert_eq!(
            super::super::watch::glob_escape("a*b?[c]\\d"),
            "a\\*b\\?\\[c\\]\\\\d"
        );
    }
}
