//! How anykv keys map to znode paths.
//!
//! A key is stored in a *leaf* znode; every `/`-separated segment before the
//! last one is a *directory* znode, created as a ZooKeeper container (the
//! server removes it once its last child is gone). Names tell the two apart,
//! so a leaf never has children and a directory never holds a value:
//!
//! | what                          | znode name                | example (key `app/db/url`) |
//! |-------------------------------|---------------------------|----------------------------|
//! | directory for segment `s`     | `esc(s)` + `%`            | `/app%/db%`                |
//! | leaf of key whose last is `s` | `esc(s)`                  | `/app%/db%/url`            |
//! | lock queue of that key        | `esc(s)` + `%lock`        | `/app%/db%/url%lock`       |
//!
//! `esc` percent-encodes (UTF-8 bytes, `%XX`) the characters ZooKeeper
//! rejects in paths — anything outside the Basic Multilingual Plane (Java sees
//! surrogates), U+E000–U+F8FF and U+FFF0–U+FFFF — and `%` itself, so every
//! anykv key round-trips exactly. Because a bare `%` only ever starts a
//! two-hex-digit escape, the suffixes `%` and `%lock` cannot be produced by
//! `esc`, and a child name is unambiguously a directory, a leaf, a lock queue
//! or foreign (ignored).
//!
//! The namespace (URL path) is part of the key, so `zk://h/app` key `x` and
//! `zk://h` key `app/x` are the same znode, as on every other backend.

use std::fmt::Write as _;

/// Suffix of a directory znode name.
const DIR_MARK: char = '%';
/// Suffix of a lock queue directory name.
const LOCK_MARK: &str = "%lock";
/// The system znode at the ZooKeeper root; a root-level leaf of that name is
/// stored escaped.
const SYSTEM_NODE: &str = "zookeeper";

/// True for characters ZooKeeper refuses in a path (checked on the UTF-16
/// form by the server) or that we reserve (`%`).
fn must_escape(c: char) -> bool {
    let u = u32::from(c);
    c == '%'
        || u <= 0x1f
        || (0x7f..=0x9f).contains(&u)
        || (0xd800..=0xf8ff).contains(&u)
        || (0xfff0..=0xffff).contains(&u)
        || u > 0xffff
}

/// Appends `segment`, escaped, to `out`.
fn push_escaped(out: &mut String, segment: &str) {
    if !segment.chars().any(must_escape) {
        out.push_str(segment);
        return;
    }
    let mut buf = [0u8; 4];
    for c in segment.chars() {
        if must_escape(c) {
            for b in c.encode_utf8(&mut buf).bytes() {
                // Writing to a String cannot fail.
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

/// Appends the leaf name of `segment`; `at_root` says whether the leaf sits
/// directly under `/`, where the name `zookeeper` is taken by the server.
fn push_leaf_name(out: &mut String, segment: &str, at_root: bool) {
    if at_root && segment == SYSTEM_NODE {
        out.push_str("%7Aookeeper");
    } else {
        push_escaped(out, segment);
    }
}

/// Decodes an escaped segment. `None` if it is not in canonical `esc` form
/// (a foreign znode, which anykv ignores).
fn unescape(name: &str, at_root: bool) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    let decoded = if name.contains('%') {
        let bytes = name.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = name.get(i + 1..i + 3)?;
                if !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
                {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).ok()?
    } else {
        name.to_owned()
    };
    // Only the canonical spelling is ours: `get` of the decoded key must find
    // this very znode.
    let mut canonical = String::with_capacity(name.len());
    push_leaf_name(&mut canonical, &decoded, at_root);
    (canonical == name).then_some(decoded)
}

/// What a child znode of a directory is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Child {
    /// A directory holding keys below `segment`.
    Dir(String),
    /// The leaf of a key whose last segment is `segment`.
    Leaf(String),
    /// The lock queue of the key whose last segment is `segment`.
    LockQueue(String),
    /// A znode anykv did not create.
    Other,
}

/// Classifies the child `name` of the directory znode `dir`.
pub(super) fn classify(dir: &str, name: &str) -> Child {
    let at_root = dir == "/";
    if at_root && name == SYSTEM_NODE {
        return Child::Other;
    }
    if let Some(stem) = name.strip_suffix(LOCK_MARK) {
        return match unescape(stem, at_root) {
            Some(segment) => Child::LockQueue(segment),
            None => Child::Other,
        };
    }
    if let Some(stem) = name.strip_suffix(DIR_MARK) {
        return match unescape(stem, false) {
            Some(segment) => Child::Dir(segment),
            None => Child::Other,
        };
    }
    match unescape(name, at_root) {
        Some(segment) => Child::Leaf(segment),
        None => Child::Other,
    }
}

/// The directory znode for a normalised full prefix (`""` → `/`).
pub(super) fn dir_path(prefix: &str) -> String {
    if prefix.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::with_capacity(prefix.len() + 8);
    for segment in prefix.split('/') {
        out.push('/');
        push_escaped(&mut out, segment);
        out.push(DIR_MARK);
    }
    out
}

/// `parent/name`, with `/` as the root.
pub(super) fn join(parent: &str, name: &str) -> String {
    let mut out = String::with_capacity(parent.len() + name.len() + 1);
    if parent != "/" {
        out.push_str(parent);
    }
    out.push('/');
    out.push_str(name);
    out
}

/// The znodes of one key. One allocation: the parent directory is a prefix
/// of the leaf path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct KeyPaths {
    /// The leaf holding the value.
    pub leaf: String,
    /// Length of the parent directory's path within `leaf` (1 for `/`).
    parent_end: usize,
}

impl KeyPaths {
    /// The paths of the normalised, non-empty full key `full` (namespace
    /// included).
    pub fn new(full: &str) -> Self {
        Self::within("", full)
    }

    /// The paths of the normalised user key `key` in the normalised
    /// namespace `namespace` (possibly empty), without joining them first.
    pub fn within(namespace: &str, key: &str) -> Self {
        let mut leaf = String::with_capacity(namespace.len() + key.len() + 8);
        let (key_dirs, last) = match key.rfind('/') {
            Some(i) => (&key[..i], &key[i + 1..]),
            None => ("", key),
        };
        for segment in namespace
            .split('/')
            .chain(key_dirs.split('/'))
            .filter(|s| !s.is_empty())
        {
            leaf.push('/');
            push_escaped(&mut leaf, segment);
            leaf.push(DIR_MARK);
        }
        let parent_end = leaf.len().max(1);
        let at_root = leaf.is_empty();
        leaf.push('/');
        push_leaf_name(&mut leaf, last, at_root);
        KeyPaths { leaf, parent_end }
    }

    /// The directory holding the leaf (`/` at the root).
    pub fn parent(&self) -> &str {
        &self.leaf[..self.parent_end]
    }

    /// The directory of the lock queue of this key (a sibling of the leaf).
    pub fn lock_queue(&self) -> String {
        let mut out = String::with_capacity(self.leaf.len() + LOCK_MARK.len());
        out.push_str(&self.leaf);
        out.push_str(LOCK_MARK);
        out
    }

    /// The directory holding the keys below this key.
    pub fn below(&self) -> String {
        // A root-level `zookeeper` leaf is stored escaped, its directory not:
        // directory names can never clash with the system node.
        if self.parent_is_root() && self.leaf == "/%7Aookeeper" {
            return "/zookeeper%".to_owned();
        }
        let mut out = String::with_capacity(self.leaf.len() + 1);
        out.push_str(&self.leaf);
        out.push(DIR_MARK);
        out
    }

    /// True if the parent is the ZooKeeper root, which anykv never writes to.
    pub fn parent_is_root(&self) -> bool {
        self.parent_end == 1
    }
}

/// Joins a user key below `prefix` (both normalised; `prefix` may be empty).
pub(super) fn join_key(prefix: &str, segment: &str) -> String {
    if prefix.is_empty() {
        segment.to_owned()
    } else {
        let mut out = String::with_capacity(prefix.len() + segment.len() + 1);
        out.push_str(prefix);
        out.push('/');
        out.push_str(segment);
        out
    }
}

/// The sequence number ZooKeeper appended to a sequential node's name.
pub(super) fn sequence_of(name: &str) -> Option<u64> {
    let digits = name.rsplit('-').next()?;
    if digits.len() < 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_keys_map_to_readable_paths() {
        let p = KeyPaths::new("app/db/url");
        assert_eq!(p.leaf, "/app%/db%/url");
        assert_eq!(p.parent(), "/app%/db%");
        assert!(!p.parent_is_root());
        assert_eq!(KeyPaths::within("app", "db/url"), p);
        assert_eq!(KeyPaths::within("app/db", "url"), p);
        assert_eq!(p.lock_queue(), "/app%/db%/url%lock");
        assert_eq!(p.below(), "/app%/db%/url%");
        let root = KeyPaths::new("x");
        assert_eq!(root.leaf, "/x");
        assert_eq!(root.parent(), "/");
        assert!(root.parent_is_root());
        assert_eq!(dir_path(""), "/");
        assert_eq!(dir_path("a/b"), "/a%/b%");
    }

    #[test]
    fn unsupported_characters_and_percent_are_escaped() {
        assert_eq!(KeyPaths::new("🔑/50%").leaf, "/%F0%9F%94%91%/50%25");
        assert_eq!(KeyPaths::new("a\u{e000}").leaf, "/a%EE%80%80");
        assert_eq!(KeyPaths::new("ключ/値 x:y@z").leaf, "/ключ%/値 x:y@z");
    }

    #[test]
    fn children_classify_back_to_segments() {
        for segment in ["plain", "🔑", "50%", "%41", "a b", "\u{fff0}", "..."] {
            let mut leaf = String::new();
            push_leaf_name(&mut leaf, segment, false);
            assert_eq!(classify("/d%", &leaf), Child::Leaf(segment.to_owned()));
            let dir = format!("{leaf}%");
            assert_eq!(classify("/d%", &dir), Child::Dir(segment.to_owned()));
            assert_eq!(
                classify("/d%", &format!("{leaf}%lock")),
                Child::LockQueue(segment.to_owned())
            );
        }
    }

    #[test]
    fn foreign_and_non_canonical_names_are_ignored() {
        for name in ["a%4", "a%zz", "a%41", "%e2%82%ac", "%C3", ""] {
            assert_eq!(classify("/d%", name), Child::Other, "{name}");
        }
    }

    #[test]
    fn the_system_node_is_never_a_key() {
        assert_eq!(classify("/", "zookeeper"), Child::Other);
        let p = KeyPaths::new("zookeeper");
        assert_eq!(p.leaf, "/%7Aookeeper");
        assert_eq!(
            classify("/", "%7Aookeeper"),
            Child::Leaf("zookeeper".into())
        );
        assert_eq!(p.below(), "/zookeeper%");
        assert_eq!(classify("/", "zookeeper%"), Child::Dir("zookeeper".into()));
        // Deeper down, `zookeeper` is an ordinary name.
        assert_eq!(KeyPaths::new("a/zookeeper").leaf, "/a%/zookeeper");
        assert_eq!(classify("/a%", "%7Aookeeper"), Child::Other);
    }

    #[test]
    fn sequence_numbers_parse() {
        assert_eq!(sequence_of("lock-ab12-0000000042"), Some(42));
        assert_eq!(sequence_of("lock-ab12-42"), None);
        assert_eq!(sequence_of("x"), None);
    }
}
