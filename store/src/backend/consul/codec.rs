//! The two encodings Consul's HTTP API speaks: JSON bodies and base64 values.
//!
//! The `consul` feature depends on `reqwest` alone, so this module carries the
//! small part of JSON that the KV, transaction and session endpoints use: a
//! strict reader into a tiny document tree (numbers kept as text so 64-bit
//! indexes stay exact) and a string escaper for the bodies we build. Values
//! travel as standard base64 with padding, as Go's `encoding/json` writes
//! `[]byte`.

use std::borrow::Cow;
use std::fmt::Write as _;

/// A parsed JSON value, borrowing from the input where it can (strings
/// without escapes, numbers), so reading an answer allocates little.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool(bool),
    /// The number's text as it appeared (parsed on demand, exactly).
    Number(&'a str),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// Members in document order (Consul objects are small; a scan is cheap).
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Parses a complete JSON document (surrounding whitespace allowed).
    pub(crate) fn parse(input: &'a [u8]) -> Result<Json<'a>, String> {
        let text = std::str::from_utf8(input).map_err(|e| format!("JSON is not UTF-8: {e}"))?;
        let mut parser = Parser { text, pos: 0 };
        parser.skip_ws();
        let value = parser.value(0)?;
        parser.skip_ws();
        if parser.pos != text.len() {
            return Err(parser.error("trailing characters after the JSON value"));
        }
        Ok(value)
    }

    /// The member `name` of an object.
    pub(crate) fn get(&self, name: &str) -> Option<&Json<'a>> {
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

    pub(crate) fn as_array(&self) -> Option<&[Json<'a>]> {
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
    /// The whole document, already known to be UTF-8. The parser only stops
    /// at ASCII bytes, so every slice it takes is on a character boundary.
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn error(&self, what: &str) -> String {
        format!("invalid JSON at byte {}: {what}", self.pos)
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes().get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    fn expect_literal(&mut self, literal: &str, value: Json<'a>) -> Result<Json<'a>, String> {
        if self.text[self.pos..].starts_with(literal) {
            self.pos += literal.len();
            Ok(value)
        } else {
            Err(self.error("unknown literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json<'a>, String> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Json::String),
            Some(b't') => self.expect_literal("true", Json::Bool(true)),
            Some(b'f') => self.expect_literal("false", Json::Bool(false)),
            Some(b'n') => self.expect_literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("unexpected character")),
            None => Err(self.error("unexpected end of input")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json<'a>, String> {
        self.pos += 1; // '{'
        let mut members = Vec::with_capacity(8);
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

    fn array(&mut self, depth: usize) -> Result<Json<'a>, String> {
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

    /// `-? digits (. digits)? ([eE] [+-]? digits)?`, kept as text.
    fn number(&mut self) -> Result<Json<'a>, String> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let mut valid = self.digits();
        if self.peek() == Some(b'.') {
            self.pos += 1;
            valid &= self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            valid &= self.digits();
        }
        if !valid {
            return Err(self.error("malformed number"));
        }
        Ok(Json::Number(&self.text[start..self.pos]))
    }

    /// Skips ASCII digits; true if there was at least one.
    fn digits(&mut self) -> bool {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos > start
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .text
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("truncated \\u escape"))?;
        let code = u32::from_str_radix(digits, 16).map_err(|_| self.error("bad \\u escape"))?;
        self.pos += 4;
        Ok(code)
    }

    /// Skips to the next quote, backslash or control byte.
    fn plain_run(&mut self) -> &'a str {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b == b'"' || b == b'\\' || b < 0x20 {
                break;
            }
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    fn string(&mut self) -> Result<Cow<'a, str>, String> {
        self.pos += 1; // opening quote
        let run = self.plain_run();
        if self.peek() == Some(b'"') {
            // The common case: no escapes, borrow.
            self.pos += 1;
            return Ok(Cow::Borrowed(run));
        }
        let mut out = String::from(run);
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escaped = self.peek().ok_or_else(|| self.error("truncated escape"))?;
                    self.pos += 1;
                    let c = match escaped {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err(self.error("unknown escape")),
                    };
                    out.push(c);
                }
                Some(_) => return Err(self.error("control character in string")),
                None => return Err(self.error("unterminated string")),
            }
            out.push_str(self.plain_run());
        }
    }

    /// The character of a `\\uXXXX` escape (after the `u`), joining
    /// surrogate pairs.
    fn unicode_escape(&mut self) -> Result<char, String> {
        let mut code = self.hex4()?;
        if (0xD800..0xDC00).contains(&code) {
            // A high surrogate must be followed by a low one.
            if self.text.get(self.pos..self.pos + 2) != Some("\\u") {
                return Err(self.error("lone surrogate"));
            }
            self.pos += 2;
            let low = self.hex4()?;
            if !(0xDC00..0xE000).contains(&low) {
                return Err(self.error("invalid surrogate pair"));
            }
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
        }
        char::from_u32(code).ok_or_else(|| self.error("invalid code point"))
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
    if !bytes.len().is_multiple_of(4) {
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
                        Json::Number("1"),
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
            b"1.",
            b"1e",
            b"--1",
            b".5",
        ] {
            assert!(
                Json::parse(bad).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(Json::parse(b"\"\xff\"").is_err(), "invalid UTF-8 accepted");
        let deep = "[".repeat(MAX_DEPTH + 5);
        assert!(Json::parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn borrows_plain_strings_and_owns_escaped_ones() {
        let doc = Json::parse(br#"{"plain":"abc","escaped":"a\tb"}"#).unwrap();
        assert!(matches!(
            doc.get("plain"),
            Some(Json::String(Cow::Borrowed("abc")))
        ));
        assert!(matches!(doc.get("escaped"), Some(Json::String(Cow::Owned(s))) if s == "a\tb"));
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
