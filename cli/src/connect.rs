//! Opening the store named by `--url`/`ANYKV_URL`, and keeping the URL's
//! secrets out of everything the CLI prints.

use std::sync::Arc;

use anykv::Store;

use crate::exit::{code_of, describe, CliError, USAGE};

/// Words that mark a query option as a secret (as anykv's redaction does).
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "token",
    "secret",
    "auth",
    "credential",
    "key",
];

/// The store URL as given, with what must never be printed.
#[derive(Clone)]
pub struct Target {
    url: String,
    /// The URL as messages show it (anykv's redaction).
    pub shown: String,
    secrets: Vec<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Target").field(&self.shown).finish()
    }
}

impl Target {
    /// The target of `--url`/`ANYKV_URL`; exit 2 if neither is given.
    pub fn from_arg(url: Option<String>) -> Result<Target, CliError> {
        let url = url.filter(|u| !u.trim().is_empty()).ok_or_else(|| {
            CliError::new(
                USAGE,
                "no store URL: pass --url URL or set ANYKV_URL \
                 (e.g. etcd://127.0.0.1:2379/app; see `anykv --help`)",
            )
        })?;
        let secrets = secrets_of(&url);
        Ok(Target {
            shown: anykv::url::redact(&url),
            secrets,
            url,
        })
    }

    /// Opens the store.
    pub async fn open(&self) -> Result<Arc<dyn Store>, CliError> {
        anykv::open(&self.url).await.map_err(|error| {
            let described = describe(&error);
            let message = if described.contains(&self.shown) {
                format!("cannot open the store: {described}")
            } else {
                format!("cannot open store {}: {described}", self.shown)
            };
            CliError::new(code_of(&error), self.scrub(&message))
        })
    }

    /// An anykv error as a CLI failure, its message scrubbed.
    pub fn error(&self, error: &anykv::Error) -> CliError {
        CliError::new(code_of(error), self.scrub(&describe(error)))
    }

    /// `text` with every secret of the URL replaced by `***`: anykv's own
    /// messages are already redacted, this also covers what a client
    /// library may have put in an error's cause.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "***");
        }
        text
    }
}

/// The password and secret option values of `url`, raw and decoded; only
/// those of at least three characters (shorter ones would garble messages
/// and reveal little).
fn secrets_of(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    let after_scheme = url.find("://").map_or(url, |i| &url[i + 3..]);
    if let Some(at) = after_scheme.rfind('@') {
        let userinfo = &after_scheme[..at];
        let password = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
        secrets.push(password.to_owned());
    }
    if let Ok(parsed) = anykv::StoreUrl::parse(url) {
        secrets.extend(parsed.password.clone());
    }
    if let Some((_, query)) = url.split_once('?') {
        for piece in query.split('&') {
            if let Some((name, value)) = piece.split_once('=') {
                let name = name.to_ascii_lowercase();
                if SECRET_WORDS.iter().any(|w| name.contains(w)) {
                    secrets.push(value.to_owned());
                    secrets.push(percent_decode(value));
                }
            }
        }
    }
    secrets.retain(|s| s.len() >= 3);
    // Longest first, so a secret containing another is hidden whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    secrets
}

/// Percent-decoding, lossy for bytes that are not UTF-8.
fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_scrubbed() {
        let target =
            Target::from_arg(Some("redis://bob:s3cr3t@h:1/x?token=t%40ken&db=0".into())).unwrap();
        let text = target.scrub("failed s3cr3t t@ken t%40ken");
        assert!(
            !text.contains("s3cr3t") && !text.contains("t@ken"),
            "{text}"
        );
        assert!(!target.shown.contains("s3cr3t"));
        assert!(format!("{target:?}").contains("bob:***@h:1"));
    }

    #[test]
    fn a_missing_url_is_a_usage_error() {
        let err = Target::from_arg(None).unwrap_err();
        assert_eq!(err.code, USAGE);
        assert!(err.message.contains("ANYKV_URL"));
    }
}
