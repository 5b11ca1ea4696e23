//! What the commands print: human lines or one JSON object per line.
//!
//! JSON objects carry `key`; pairs also `value`, `encoding` (`"utf-8"` when
//! `value` is the value itself, `"base64"` when the value is not UTF-8 and
//! `value` is its standard base64) and `version` (the key's `last_index`,
//! what `--if-version` takes). Watch lines add `event`: `"put"` or
//! `"delete"`.

use std::io::{self, Write};

use anykv::KvPair;
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::exit::{CliError, FAILURE, OK};

/// Where and how results are printed.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// One JSON object per line instead of human text.
    pub json: bool,
}

/// A value as JSON text and its encoding name.
pub fn encode(value: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(value) {
        Ok(text) => (text.to_owned(), "utf-8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(value),
            "base64",
        ),
    }
}

/// A value for human eyes: the text, or a note when it is not UTF-8.
fn shown(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) => text.to_owned(),
        Err(_) => format!("<{} bytes, not UTF-8>", value.len()),
    }
}

/// The JSON object of a pair.
pub fn pair_json(pair: &KvPair) -> Map<String, Value> {
    let (value, encoding) = encode(&pair.value);
    let mut object = Map::new();
    object.insert("key".into(), json!(pair.key));
    object.insert("value".into(), json!(value));
    object.insert("encoding".into(), json!(encoding));
    object.insert("version".into(), json!(pair.last_index));
    object
}

impl Output {
    /// Writes `bytes` to stdout and flushes.
    pub fn write(&self, bytes: &[u8]) -> Result<(), CliError> {
        let mut out = io::stdout().lock();
        out.write_all(bytes)
            .and_then(|()| out.flush())
            .map_err(write_error)
    }

    /// Writes one line.
    pub fn line(&self, line: &str) -> Result<(), CliError> {
        let mut text = String::with_capacity(line.len() + 1);
        text.push_str(line);
        text.push('\n');
        self.write(text.as_bytes())
    }

    /// Writes one JSON object as a line.
    pub fn object(&self, object: Map<String, Value>) -> Result<(), CliError> {
        self.line(&Value::Object(object).to_string())
    }

    /// A pair as a listing line: `key = value (version N)` or its JSON.
    pub fn pair(&self, pair: &KvPair) -> Result<(), CliError> {
        if self.json {
            self.object(pair_json(pair))
        } else {
            self.line(&format!(
                "{} = {} (version {})",
                pair.key,
                shown(&pair.value),
                pair.last_index
            ))
        }
    }

    /// A watch event: the key now holds `pair`.
    pub fn put_event(&self, pair: &KvPair) -> Result<(), CliError> {
        if self.json {
            let mut object = pair_json(pair);
            object.insert("event".into(), json!("put"));
            self.object(object)
        } else {
            self.line(&format!(
                "PUT {} = {} (version {})",
                pair.key,
                shown(&pair.value),
                pair.last_index
            ))
        }
    }

    /// A watch event: `key` is absent.
    pub fn delete_event(&self, key: &str) -> Result<(), CliError> {
        if self.json {
            let mut object = Map::new();
            object.insert("event".into(), json!("delete"));
            object.insert("key".into(), json!(key));
            self.object(object)
        } else {
            self.line(&format!("DELETE {key}"))
        }
    }
}

/// A failed write to stdout: a closed pipe (`anykv watch k | head -1`) is a
/// normal end, anything else a failure.
fn write_error(error: io::Error) -> CliError {
    if error.kind() == io::ErrorKind::BrokenPipe {
        CliError::silent(OK)
    } else {
        CliError::new(FAILURE, format!("cannot write to stdout: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_are_not_utf8_are_base64() {
        assert_eq!(encode(b"on"), ("on".to_owned(), "utf-8"));
        assert_eq!(encode(&[0xff, 0x00]), ("/wA=".to_owned(), "base64"));
        let object = pair_json(&KvPair::new("a/b", "x", 7));
        assert_eq!(object["version"], json!(7));
        assert_eq!(object["key"], json!("a/b"));
    }
}
