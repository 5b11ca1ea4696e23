//! Key validation, normalisation and namespace prefixing.
//!
//! Every backend calls into this module before any I/O, so the rules are the
//! same everywhere:
//!
//! * a key is a `/`-separated UTF-8 path; leading and trailing `/` are dropped;
//! * rejected: the empty key, an empty segment (`a//b`), `.` or `..` segments,
//!   NUL or any other control character, and keys longer than [`MAX_KEY_LEN`]
//!   bytes (after normalisation, before the namespace is added);
//! * anything else (Unicode, spaces, `:`, `-`, `_`, `@`, …) is kept exactly.

use crate::error::{Error, Result};

/// The longest key, in bytes, that anykv accepts (namespace not counted).
pub const MAX_KEY_LEN: usize = 1024;

/// Validates `key` and returns its normalised form (no leading or trailing `/`).
///
/// ```
/// assert_eq!(anykv::key::normalize_key("/app/x/").unwrap(), "app/x");
/// assert!(anykv::key::normalize_key("a//b").is_err());
/// ```
pub fn normalize_key(key: &str) -> Result<String> {
    let trimmed = key.trim_matches('/');
    if trimmed.is_empty() {
        return Err(invalid(key, "a key must not be empty"));
    }
    check(key, trimmed)?;
    Ok(trimmed.to_owned())
}

/// Like [`normalize_key`] but the empty prefix (`""` or `"/"`) is allowed and
/// means "the whole namespace". Used by `list`, `watch_tree` and `delete_tree`.
pub fn normalize_prefix(prefix: &str) -> Result<String> {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    check(prefix, trimmed)?;
    Ok(trimmed.to_owned())
}

fn check(original: &str, trimmed: &str) -> Result<()> {
    if trimmed.len() > MAX_KEY_LEN {
        return Err(invalid(original, "a key must be at most 1024 bytes"));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(invalid(
            original,
            "a key must not contain control characters",
        ));
    }
    for segment in trimmed.split('/') {
        match segment {
            "" => return Err(invalid(original, "a key must not contain an empty segment")),
            "." | ".." => {
                return Err(invalid(
                    original,
                    "a key must not contain '.' or '..' segments",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

fn invalid(key: &str, reason: &'static str) -> Error {
    // Cap what we echo back so a 1 MiB key does not become a 1 MiB message.
    let mut shown: String = key.chars().take(128).collect();
    if shown.len() < key.len() {
        shown.push('…');
    }
    Error::InvalidKey { key: shown, reason }
}

/// The namespace (key prefix) a store handle lives in, taken from the URL path.
///
/// `Namespace::new("app")` maps the user key `x` to the backend key `app/x`
/// and back; keys outside the namespace are never returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespace {
    /// Normalised prefix without trailing `/`; empty for the root.
    prefix: String,
}

impl Namespace {
    /// A namespace from a URL path such as `/app/v1`. The empty path is the root.
    pub fn new(path: &str) -> Result<Self> {
        let prefix = normalize_prefix(path)?;
        Ok(Namespace { prefix })
    }

    /// The normalised prefix (`""` for the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Validates a user key and returns `(user_key, backend_key)`.
    pub fn key(&self, key: &str) -> Result<(String, String)> {
        let user = normalize_key(key)?;
        let full = self.join(&user);
        Ok((user, full))
    }

    /// Validates a user key and returns the backend key only.
    pub fn full_key(&self, key: &str) -> Result<String> {
        let trimmed = key.trim_matches('/');
        if trimmed.is_empty() {
            return Err(invalid(key, "a key must not be empty"));
        }
        check(key, trimmed)?;
        Ok(self.join(trimmed))
    }

    /// Validates a user prefix and returns `(user_prefix, backend_prefix)`;
    /// both are `""`-able and carry no trailing `/`.
    pub fn prefix_of(&self, prefix: &str) -> Result<(String, String)> {
        let user = normalize_prefix(prefix)?;
        let full = self.join(&user);
        Ok((user, full))
    }

    /// The backend key for a normalised user key (or prefix).
    pub fn join(&self, user: &str) -> String {
        match (self.prefix.is_empty(), user.is_empty()) {
            (true, _) => user.to_owned(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{}", self.prefix, user),
        }
    }

    /// The user key for a backend key, or `None` if it lies outside the
    /// namespace (or is the namespace root itself).
    pub fn strip<'a>(&self, full: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            return (!full.is_empty()).then_some(full);
        }
        let rest = full.strip_prefix(self.prefix.as_str())?;
        let rest = rest.strip_prefix('/')?;
        (!rest.is_empty()).then_some(rest)
    }
}

/// True if the normalised `key` lies strictly below the normalised `prefix`
/// (`""` contains every key).
pub fn is_below(prefix: &str, key: &str) -> bool {
    if prefix.is_empty() {
        return !key.is_empty();
    }
    key.len() > prefix.len() + 1 && key.starts_with(prefix) && key.as_bytes()[prefix.len()] == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_slashes() {
        assert_eq!(normalize_key("/a/b/").unwrap(), "a/b");
        assert_eq!(normalize_key("a").unwrap(), "a");
        assert_eq!(normalize_prefix("/").unwrap(), "");
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in [
            "", "/", "a//b", "a/./b", "..", "a/..", "a\0b", "a\nb", "a\u{7f}",
        ] {
            assert!(
                matches!(normalize_key(bad), Err(Error::InvalidKey { .. })),
                "{bad:?} accepted"
            );
        }
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert!(matches!(
            normalize_key(&long),
            Err(Error::InvalidKey { .. })
        ));
        assert!(normalize_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
    }

    #[test]
    fn accepts_ordinary_punctuation_and_unicode() {
        for ok in ["a b", "a:b", "a-b_c@d", "ключ/値", "x.y", "...", "a/.b"] {
            assert_eq!(normalize_key(ok).unwrap(), ok);
        }
    }

    #[test]
    fn namespace_round_trips() {
        let ns = Namespace::new("/app/").unwrap();
        assert_eq!(ns.key("x/y").unwrap().1, "app/x/y");
        assert_eq!(ns.strip("app/x/y"), Some("x/y"));
        assert_eq!(ns.strip("apple/x"), None);
        assert_eq!(ns.strip("app"), None);
        let root = Namespace::default();
        assert_eq!(root.key("x").unwrap().1, "x");
        assert_eq!(root.strip("x"), Some("x"));
    }

    #[test]
    fn below_is_strict_and_segment_aware() {
        assert!(is_below("a", "a/b"));
        assert!(!is_below("a", "a"));
        assert!(!is_below("a", "ab/c"));
        assert!(is_below("", "a"));
    }
}
