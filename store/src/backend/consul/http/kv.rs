//! The KV calls: reads of one key or a prefix (optionally as blocking
//! queries), deletes, and the [`Entry`] they answer with.

use std::borrow::Cow;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde::de::{Deserializer, Error as _};
use serde::Deserialize;

use crate::backend::consul::error::ConsulError;

use super::{blocking_query, Answer, Http};

/// One KV entry as Consul returns it (`GET /v1/kv/…` items, `KV` of a
/// transaction result). Members anykv has no use for (`CreateIndex`,
/// `LockIndex`, …) are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Entry {
    /// The full (namespaced) key.
    pub(crate) key: String,
    /// The value, sent as standard padded base64; absent or `null` in
    /// transaction results and for empty values.
    #[serde(default, deserialize_with = "base64_value")]
    pub(crate) value: Bytes,
    pub(crate) modify_index: u64,
    /// The session holding the key's lock, if any (Consul may send `""`).
    #[serde(default, deserialize_with = "non_empty")]
    pub(crate) session: Option<String>,
    /// The entry's `Flags`: the stamp of the write that produced it (see
    /// the backend's `txn` module); 0 when absent.
    #[serde(default)]
    pub(crate) flags: u64,
}

/// A JSON string, borrowed from the body when it has no escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// `Value`: standard padded base64 (Go's `[]byte`), or `null` for empty.
fn base64_value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    match Option::<Text<'de>>::deserialize(deserializer)? {
        None => Ok(Bytes::new()),
        Some(Text(text)) => STANDARD
            .decode(text.as_bytes())
            .map(Bytes::from)
            .map_err(|e| D::Error::custom(format_args!("Value is not base64: {e}"))),
    }
}

/// An optional string where `""` means none.
fn non_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.filter(|s| !s.is_empty()))
}

impl Http {
    /// A KV read of one key, or with `recurse` of every key under it, as a
    /// blocking query when `block = Some((index, wait))`. Returns the
    /// `X-Consul-Index` and the answer, `None` when nothing matched.
    async fn kv_read(
        &self,
        full: &str,
        recurse: bool,
        block: Option<(u64, Duration)>,
    ) -> Result<(u64, Option<Answer>), ConsulError> {
        let plain = if recurse { "recurse" } else { "" };
        let (url, timeout) = match block {
            None => (
                self.kv_url(full, recurse, plain)?,
                self.inner.request_timeout,
            ),
            Some((index, wait)) => {
                let prefix = if recurse { "recurse&" } else { "" };
                (
                    self.kv_url(full, recurse, &blocking_query(prefix, index, wait))?,
                    self.blocking_timeout(wait),
                )
            }
        };
        let answer = self.send(Method::GET, url, None, timeout).await?;
        match answer.status {
            StatusCode::OK => Ok((answer.require_index()?, Some(answer))),
            StatusCode::NOT_FOUND => Ok((answer.require_index()?, None)),
            _ => Err(answer.error()),
        }
    }

    /// Reads one key. With `block = Some((index, wait))` this is a blocking
    /// query that returns once the key's index passes `index` or `wait`
    /// elapses. Returns the `X-Consul-Index` and the entry (`None` = absent).
    pub(crate) async fn get(
        &self,
        full: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(u64, Option<Entry>), ConsulError> {
        let (index, answer) = self.kv_read(full, false, block).await?;
        let Some(answer) = answer else {
            return Ok((index, None));
        };
        let entry = answer
            .parse::<Vec<Entry>>("KV read")?
            .into_iter()
            .next()
            .ok_or_else(|| ConsulError::Protocol("KV read returned no entry".into()))?;
        Ok((index, Some(entry)))
    }

    /// Every entry whose key starts with `full_prefix + "/"` (or every entry
    /// when `full_prefix` is empty), optionally as a blocking query.
    pub(crate) async fn list(
        &self,
        full_prefix: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(u64, Vec<Entry>), ConsulError> {
        let (index, answer) = self.kv_read(full_prefix, true, block).await?;
        let Some(answer) = answer else {
            return Ok((index, Vec::new()));
        };
        Ok((index, answer.parse("KV listing")?))
    }

    /// Deletes one key (no error if it is missing).
    pub(crate) async fn delete(&self, full: &str) -> Result<(), ConsulError> {
        let url = self.kv_url(full, false, "")?;
        let answer = self
            .send(Method::DELETE, url, None, self.inner.request_timeout)
            .await?;
        if answer.status != StatusCode::OK {
            return Err(answer.error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{entry, protocol_error};
    use super::*;
    use crate::backend::consul::http::decode;

    #[test]
    fn parses_a_kv_listing_as_consul_sends_it() {
        let body = br#"[
    {
        "LockIndex": 1,
        "Key": "app/\u003ckey\u003e \u0026 \ud83d\ude00",
        "Flags": 18446744073709551615,
        "Value": "aGVsbG8=",
        "Session": "07ea4712-4330-05c3-ef95-2d990bcc25f8",
        "CreateIndex": 17,
        "ModifyIndex": 18446744073709551615
    },
    {"Key": "app/b", "Value": "YW55IGNhcm5hbCBwbGVhcw==", "ModifyIndex": 9, "Unknown": {"x": [1, null]}}
]"#;
        let entries: Vec<Entry> = decode(body, "KV listing").unwrap();
        assert_eq!(
            entries,
            [
                Entry {
                    key: "app/<key> & 😀".into(),
                    value: Bytes::from_static(b"hello"),
                    modify_index: u64::MAX,
                    session: Some("07ea4712-4330-05c3-ef95-2d990bcc25f8".into()),
                    flags: u64::MAX,
                },
                Entry {
                    key: "app/b".into(),
                    value: Bytes::from_static(b"any carnal pleas"),
                    modify_index: 9,
                    session: None,
                    flags: 0,
                },
            ]
        );
    }

    #[test]
    fn entry_without_value_is_empty() {
        let parsed = entry(r#"{"Key":"k","ModifyIndex":7,"Value":null,"Session":""}"#).unwrap();
        assert!(parsed.value.is_empty());
        assert_eq!(parsed.session, None);
        assert_eq!(parsed.modify_index, 7);
        assert!(entry(r#"{"Key":"k","ModifyIndex":7}"#)
            .unwrap()
            .value
            .is_empty());
    }

    #[test]
    fn malformed_entries_are_protocol_errors() {
        for bad in [
            r#"{"Key":"k"}"#,
            r#"{"ModifyIndex":1}"#,
            r#"{"Key":7,"ModifyIndex":1}"#,
            r#"{"Key":"k","ModifyIndex":"1"}"#,
            r#"{"Key":"k","ModifyIndex":-1}"#,
            r#"{"Key":"k","ModifyIndex":1.5}"#,
            // One past u64::MAX: an index is never rounded.
            r#"{"Key":"k","ModifyIndex":18446744073709551616}"#,
            r#"{"Key":"k","ModifyIndex":1,"Flags":18446744073709551616}"#,
            r#"{"Key":"k","ModifyIndex":1,"Value":7}"#,
            r#"{"Key":"k","ModifyIndex":1,"Value":"not base64!"}"#,
            r#"{"Key":"k","ModifyIndex":1,"Value":"YQ"}"#,
            r#"{"Key":"k","ModifyIndex":1,"Value":"YQ==YQ=="}"#,
            r#"{"Key":"k","ModifyIndex":1,"Session":5}"#,
            r#"{"Key":"k","ModifyIndex":1,"Key":"again"}"#,
            r#"{"Key":"k","ModifyIndex":1} trailing"#,
            r#"{"Key":"k","ModifyIndex":1"#,
            "",
            "[]",
            "null",
        ] {
            let message = protocol_error(entry(bad));
            assert!(message.starts_with("KV entry: "), "{bad:?}: {message}");
        }
        let message = protocol_error(entry(r#"{"Key":"k","ModifyIndex":1,"Value":"*"}"#));
        assert!(message.contains("Value is not base64"), "{message}");
        protocol_error(decode::<Entry>(
            b"{\"Key\":\"\xff\",\"ModifyIndex\":1}",
            "KV entry",
        ));
    }
}
