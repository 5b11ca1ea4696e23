//! The two encodings Consul's HTTP API speaks: JSON bodies and base64 values.
//!
//! The `consul` feature depends on `reqwest` alone, so this module carries the
//! small part of JSON that the KV, transaction and session endpoints use: a
//! strict reader into a tiny document tree (numbers kept as text so 64-bit
//! indexes stay exact) and a string escaper for the bodies we build. Values
//! travel as standard base64 with padding, as Go's `encoding/json` writes
//! `[]byte`.

use std::fmt::Write as _;

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    /// The number's text as it appeared (parsed on demand, exactly).
    Number(String),
    String(String),
    Array(Vec<Json>),
    /// Members in document order (Consul objects are small; a scan is cheap).
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parses a complete JSON document (surrounding whitespace allowed).
    pub(crate) fn parse(input: &[u8]) -> Result<Json, String> {
        let mut parser = Parser { input, pos: 0 };
        parser.skip_ws();
        let value = parser.value(0)?;
        parser.skip_ws();
        if parser.pos != input.len() {
            return Err(parser.error("trailing characters after the JSON value"));
        }
        Ok(value)
    }

    /// The member `name` of an object.
    pub(crate) fn get(&self, name: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(n) => n.parse().ok(),
            _ => None,
        }
    }

    pub(crate) fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// Nesting deeper than this is not something Consul sends; refusing it keeps
/// a hostile body from exhausting the stack.
const MAX_DEPTH: usize = 32;

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> String {
        format!("invalid JSON at byte {}: {what}", self.pos)
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.input.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn expect_literal(&mut self, literal: &[u8], value: Json) -> Result<Json, String> {
        if self.input[self.pos..].starts_with(literal) {
            self.pos += literal.len();
            Ok(value)
        } else {
            Err(self.error("unknown literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Json::String),
            Some(b't') => self.expect_literal(b"true", Json::Bool(true)),
            Some(b'f') => self.expect_literal(b"false", Json::Bool(false)),
            Some(b'n') => self.expect_literal(b"null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("unexpected character")),
            None => Err(self.error("unexpected end of input")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json, String> {
        self.pos += 1; // '{'
        let mut members = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Json::Object(members));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a member name"));
            }
            let name = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.error("expected ':'"));
            }
            self.pos += 1;
            self.skip_ws();
            let value = self.value(depth + 1)?;
            members.push((name, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Json::Object(members));
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json, String> {
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Json::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn number(&mut self) -> Result<Json, String> {
        let start = self.pos;
        while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        let text = std::str::from_utf8(&self.input[start..self.pos])
            .map_err(|_| self.error("number is not ASCII"))?;
        if text.parse::<f64>().is_err() {
            return Err(self.error("malformed number"));
        }
        Ok(Json::Number(text.to_owned()))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .input
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("truncated \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.error("bad \\u escape"))?;
        let code = u32::from_str_radix(text, 16).map_err(|_| self.error("bad \\u escape"))?;
        self.pos += 4;
        Ok(code)
    }

    fn string(&mut self) -> Result<String, String> {
        self.pos += 1; // opening quote
        let mut out = Vec::new();
        loop {
            // Copy the run of plain bytes up to the next quote or escape.
            let run_start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.extend_from_slice(&self.input[run_start..self.pos]);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return String::from_utf8(out).map_err(|_| self.error("string is not UTF-8"));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escaped = self.peek().ok_or_else(|| self.error("truncated escape"))?;
                    self.pos += 1;
                    let simple = match escaped {
                        b'"' => Some(b'"'),
                        b'\\' => Some(b'\\'),
                        b'/' => Some(b'/'),
                        b'b' => Some(0x08),
                        b'f' => Some(0x0c),
                        b'n' => Some(b'\n'),
                        b'r' => Some(b'\r'),
                        b't' => Some(b'\t'),
                        b'u' => None,
                        _ => return Err(self.error("unknown escape")),
                    };
                    if let Some(b) = simple {
                        out.push(b);
                        continue;
                    }
                    let mut code = self.hex4()?;
                    if (0xD800..0xDC00).contains(&code) {
                        // A high surrogate must be followed by a low one.
                        if self.input.get(self.pos..self.pos + 2) != Some(b"\\u") {
                            return Err(self.error("lone surrogate"));
                        }
                        self.pos += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..0xE000).contains(&low) {
                            return Err(self.error("invalid surrogate pair"));
                        }
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                    }
                    let c = char::from_u32(code).ok_or_else(|| self.error("invalid code point"))?;
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                Some(_) => return Err(self.error("control character in string")),
                None => return Err(self.error("unterminated string")),
            }
        }
    }
}

/// Appends `s` to `out` as a JSON string literal (with quotes).
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The length of the standard, padded base64 encoding of `n` bytes.
pub(crate) const fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Appends the standard, padded base64 encoding of `data` to `out`.
pub(crate) fn push_base64(out: &mut String, data: &[u8]) {
    out.reserve(base64_len(data.len()));
    let sextet = |v: u32, shift: u32| BASE64_ALPHABET[((v >> shift) & 0x3f) as usize] as char;
    let mut chunks = data.chunks_exact(3);
    for chunk in &mut chunks {
        let v = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
        out.push(sextet(v, 18));
        out.push(sextet(v, 12));
        out.push(sextet(v, 6));
        out.push(sextet(v, 0));
    }
    match *chunks.remainder() {
        [a] => {
            let v = u32::from(a) << 16;
            out.push(sextet(v, 18));
            out.push(sextet(v, 12));
            out.push_str("==");
        }
        [a, b] => {
            let v = (u32::from(a) << 16) | (u32::from(b) << 8);
            out.push(sextet(v, 18));
            out.push(sextet(v, 12));
            out.push(sextet(v, 6));
            out.push('=');
        }
        _ => {}
    }
}

/// Decodes standard base64 (padding required, as Go writes it).
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.as_bytes();
    if bytes.len() % 4 != 0 {
        return Err("base64 length is not a multiple of 4".into());
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let last = bytes.len() / 4;
    for (i, quad) in bytes.chunks_exact(4).enumerate() {
        let padding = match (quad[2], quad[3]) {
            (b'=', b'=') => 2,
            (_, b'=') => 1,
            _ => 0,
        };
        if padding > 0 && i + 1 != last {
            return Err("base64 padding in the middle".into());
        }
        let mut v = 0u32;
        for (j, &c) in quad.iter().enumerate() {
            let sextet = if j >= 4 - padding {
                0
            } else {
                value(c).ok_or("invalid base64 character")?
            };
            v = (v << 6) | sextet;
        }
        out.push((v >> 16) as u8);
        if padding < 2 {
            out.push((v >> 8) as u8);
        }
        if padding < 1 {
            out.push(v as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_kv_entry_as_consul_sends_it() {
        let body = br#"[
    {
        "LockIndex": 1,
        "Key": "app/\u003ckey\u003e \u0026 \ud83d\ude00",
        "Flags": 0,
        "Value": "aGVsbG8=",
        "Session": "07ea4712-4330-05c3-ef95-2d990bcc25f8",
        "CreateIndex": 17,
        "ModifyIndex": 18446744073709551615
    }
]"#;
        let doc = Json::parse(body).unwrap();
        let entry = &doc.as_array().unwrap()[0];
        assert_eq!(entry.get("Key").unwrap().as_str(), Some("app/<key> & 😀"));
        assert_eq!(entry.get("ModifyIndex").unwrap().as_u64(), Some(u64::MAX));
        assert_eq!(
            decode_base64(entry.get("Value").unwrap().as_str().unwrap()).unwrap(),
            b"hello"
        );
        assert!(entry.get("Missing").is_none());
    }

    #[test]
    fn parses_scalars_and_nesting() {
        assert_eq!(Json::parse(b" true ").unwrap(), Json::Bool(true));
        assert_eq!(Json::parse(b"null").unwrap(), Json::Null);
        assert_eq!(
            Json::parse(br#"{"a":[1,{"b":"c\n\"d\""}],"e":{}}"#).unwrap(),
            Json::Object(vec![
                (
                    "a".into(),
                    Json::Array(vec![
                        Json::Number("1".into()),
                        Json::Object(vec![("b".into(), Json::String("c\n\"d\"".into()))]),
                    ])
                ),
                ("e".into(), Json::Object(vec![])),
            ])
        );
    }

    #[test]
    fn rejects_malformed_documents() {
        for bad in [
            &b""[..],
            b"[",
            b"[1,]",
            b"{\"a\" 1}",
            b"\"unterminated",
            b"\"\\ud800\"",
            b"\"bad \\q escape\"",
            b"tru",
            b"1 2",
            b"\"raw\ncontrol\"",
            b"-",
        ] {
            assert!(Json::parse(bad).is_err(), "{:?} accepted", String::from_utf8_lossy(bad));
        }
        let deep = "[".repeat(MAX_DEPTH + 5);
        assert!(Json::parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn escapes_strings() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\u{1}ключ");
        assert_eq!(out, r#""a\"b\\c\u0001ключ""#);
        let parsed = Json::parse(out.as_bytes()).unwrap();
        assert_eq!(parsed.as_str(), Some("a\"b\\c\u{1}ключ"));
    }

    #[test]
    fn base64_round_trips_every_length() {
        let data: Vec<u8> = (0..=255u8).collect();
        for n in 0..data.len() {
            let mut encoded = String::new();
            push_base64(&mut encoded, &data[..n]);
            assert_eq!(encoded.len(), base64_len(n));
            assert_eq!(decode_base64(&encoded).unwrap(), &data[..n]);
        }
        let mut encoded = String::new();
        push_base64(&mut encoded, b"any carnal pleas");
        assert_eq!(encoded, "YW55IGNhcm5hbCBwbGVhcw==");
    }

    #[test]
    fn base64_rejects_garbage() {
        for bad in ["abc", "ab=c", "YQ==YQ==", "a*==", "===="] {
            assert!(decode_base64(bad).is_err(), "{bad:?} accepted");
        }
    }
}
