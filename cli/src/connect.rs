//! Opening the store named by `--url`/`ANYKV_URL`, and keeping the URL's
//! secrets out of everything the CLI prints.

use std::sync::Arc;

use anykv::Store;

use crate::exit::{code_of, describe, CliError, USAGE};

/// The store URL as given, with what must never be printed.
#[derive(Clone)]
pub struct Target {
    url: String,
    /// The URL as messages show it (anykv's redaction).
    pub shown: String,
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
        Ok(Target {
            shown: anykv::url::redact(&url),
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
        anykv::url::scrub(&self.url, text)
    }
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
