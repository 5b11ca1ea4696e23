//! The one error type of anykv.

use std::time::Duration;

/// A boxed error from a backend's client library, kept only as a `source`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with anykv's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in anykv.
///
/// Variants are semantic: match on them, not on messages. Every message names
/// the key or the (password-free) URL involved. Client library error types
/// never appear here except boxed as a `source`.
///
/// [`Error::is_transient`] tells errors worth retrying (the store may answer
/// next time) from final ones.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key does not exist.
    #[error("key not found: {key:?}")]
    KeyNotFound {
        /// The key, relative to the store's namespace.
        key: String,
    },

    /// A create-only write found the key already present.
    #[error("key already exists: {key:?}")]
    KeyExists {
        /// The key, relative to the store's namespace.
        key: String,
    },

    /// A compare-and-swap found a different version than the one expected.
    #[error("key was modified concurrently: {key:?}")]
    KeyModified {
        /// The key, relative to the store's namespace.
        key: String,
    },

    /// The key (or prefix) is not a valid anykv key. Raised before any I/O.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key as the caller passed it (control characters escaped by `Debug`).
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The value is larger than the backend accepts. Raised before any I/O.
    #[error("value for key {key:?} is {size} bytes; this backend accepts at most {max}")]
    ValueTooLarge {
        /// The key being written.
        key: String,
        /// The value's size in bytes.
        size: usize,
        /// [`crate::Capabilities::max_value_size`] of the backend.
        max: usize,
    },

    /// An argument other than key or value was rejected (e.g. a zero TTL).
    #[error("invalid argument for key {key:?}: {reason}")]
    InvalidArgument {
        /// The key the call was about.
        key: String,
        /// What is wrong.
        reason: String,
    },

    /// `try_lock` found the lock held by someone else.
    #[error("lock {key:?} is held by another owner")]
    Locked {
        /// The lock's key.
        key: String,
    },

    /// The lock was lost (session expired, key deleted or taken over) before
    /// the operation that needed it.
    #[error("lock {key:?} was lost")]
    LockLost {
        /// The lock's key.
        key: String,
    },

    /// The backend cannot do this operation (or not with these options).
    #[error("{backend} does not support {operation}{}", hint_suffix(.hint))]
    Unsupported {
        /// What was attempted.
        operation: &'static str,
        /// The backend's scheme name.
        backend: &'static str,
        /// How to make it work, if there is a way.
        hint: Option<String>,
    },

    /// The URL could not be understood.
    #[error("invalid store URL {url}: {reason}")]
    InvalidUrl {
        /// The URL with any password or token replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The URL's scheme belongs to a backend this build does not include.
    #[error(
        "the {scheme}:// backend is not compiled in: enable the cargo feature `{feature}` of anykv"
    )]
    BackendNotEnabled {
        /// The URL scheme.
        scheme: String,
        /// The cargo feature that enables it.
        feature: &'static str,
    },

    /// The server refused our credentials (or their absence).
    #[error("{backend} at {url} refused the credentials")]
    Unauthorized {
        /// The backend's scheme name.
        backend: &'static str,
        /// The URL with any password or token replaced by `***`.
        url: String,
        /// The client library's error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The store could not be reached or answered that it cannot serve now.
    /// Transient: retrying later may succeed.
    #[error("{backend} at {url} is unavailable")]
    Unavailable {
        /// The backend's scheme name.
        backend: &'static str,
        /// The URL with any password or token replaced by `***`.
        url: String,
        /// The underlying cause.
        #[source]
        source: Option<BoxError>,
    },

    /// An operation did not complete in time. Transient.
    #[error("{operation} timed out after {after:?} ({target})")]
    Timeout {
        /// What timed out.
        operation: &'static str,
        /// The key or URL it was about.
        target: String,
        /// How long we waited.
        after: Duration,
    },

    /// The store handle was closed (or its session ended for good).
    #[error("store {url} is closed")]
    Closed {
        /// The URL of the closed handle, without secrets.
        url: String,
    },

    /// Any other error the backend reported, kept as its source.
    #[error("{backend} error at {target}")]
    Backend {
        /// The backend's scheme name.
        backend: &'static str,
        /// The key or URL it was about.
        target: String,
        /// The client library's error.
        #[source]
        source: BoxError,
    },
}

fn hint_suffix(hint: &Option<String>) -> String {
    match hint {
        Some(h) => format!(" ({h})"),
        None => String::new(),
    }
}

impl Error {
    /// True for errors that may go away by themselves: the server was
    /// unreachable or slow. Retrying such an operation later is reasonable;
    /// every other error is final for that call.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Timeout { .. })
    }

    /// True if this is [`Error::KeyNotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::KeyNotFound { .. })
    }

    pub(crate) fn not_found(key: &str) -> Self {
        Error::KeyNotFound {
            key: key.to_owned(),
        }
    }

    pub(crate) fn exists(key: &str) -> Self {
        Error::KeyExists {
            key: key.to_owned(),
        }
    }

    pub(crate) fn modified(key: &str) -> Self {
        Error::KeyModified {
            key: key.to_owned(),
        }
    }
}

/// The source of a shared error, for its copies: shows and chains to the
/// original's source.
#[cfg_attr(not(any(feature = "zookeeper", feature = "consul")), allow(dead_code))]
#[derive(Debug)]
struct SourceOf(std::sync::Arc<Error>);

impl std::fmt::Display for SourceOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::error::Error::source(&*self.0) {
            Some(source) => std::fmt::Display::fmt(source, f),
            None => Ok(()),
        }
    }
}

impl std::error::Error for SourceOf {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0).and_then(|s| s.source())
    }
}

impl Error {
    /// A copy of an error that several callers share (one attempt whose
    /// outcome each of its waiters reports): the same variant and fields, the
    /// source reached through the shared original.
    #[cfg_attr(not(any(feature = "zookeeper", feature = "consul")), allow(dead_code))]
    pub(crate) fn copy_of(shared: &std::sync::Arc<Error>) -> Error {
        let source = || -> BoxError { Box::new(SourceOf(shared.clone())) };
        let optional = |s: &Option<BoxError>| s.as_ref().map(|_| source());
        match &**shared {
            Error::KeyNotFound { key } => Error::KeyNotFound { key: key.clone() },
            Error::KeyExists { key } => Error::KeyExists { key: key.clone() },
            Error::KeyModified { key } => Error::KeyModified { key: key.clone() },
            Error::InvalidKey { key, reason } => Error::InvalidKey {
                key: key.clone(),
                reason,
            },
            Error::ValueTooLarge { key, size, max } => Error::ValueTooLarge {
                key: key.clone(),
                size: *size,
                max: *max,
            },
            Error::InvalidArgument { key, reason } => Error::InvalidArgument {
                key: key.clone(),
                reason: reason.clone(),
            },
            Error::Locked { key } => Error::Locked { key: key.clone() },
            Error::LockLost { key } => Error::LockLost { key: key.clone() },
            Error::Unsupported {
                operation,
                backend,
                hint,
            } => Error::Unsupported {
                operation,
                backend,
                hint: hint.clone(),
            },
            Error::InvalidUrl { url, reason } => Error::InvalidUrl {
                url: url.clone(),
                reason: reason.clone(),
            },
            Error::BackendNotEnabled { scheme, feature } => Error::BackendNotEnabled {
                scheme: scheme.clone(),
                feature,
            },
            Error::Unauthorized {
                backend,
                url,
                source: s,
            } => Error::Unauthorized {
                backend,
                url: url.clone(),
                source: optional(s),
            },
            Error::Unavailable {
                backend,
                url,
                source: s,
            } => Error::Unavailable {
                backend,
                url: url.clone(),
                source: optional(s),
            },
            Error::Timeout {
                operation,
                target,
                after,
            } => Error::Timeout {
                operation,
                target: target.clone(),
                after: *after,
            },
            Error::Closed { url } => Error::Closed { url: url.clone() },
            Error::Backend {
                backend, target, ..
            } => Error::Backend {
                backend,
                target: target.clone(),
                source: source(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_are_only_unavailable_and_timeout() {
        let unavailable = Error::Unavailable {
            backend: "etcd",
            url: "etcd://h:1".into(),
            source: None,
        };
        assert!(unavailable.is_transient());
        assert!(!Error::not_found("a").is_transient());
        assert!(!Error::Closed {
            url: "memory://".into()
        }
        .is_transient());
    }

    #[test]
    fn messages_name_the_key() {
        let e = Error::ValueTooLarge {
            key: "app/x".into(),
            size: 10,
            max: 5,
        };
        assert!(e.to_string().contains("app/x"));
        let e = Error::Unsupported {
            operation: "ttl",
            backend: "zk",
            hint: Some("enable extended types".into()),
        };
        assert!(e.to_string().contains("enable extended types"));
    }

    #[test]
    fn a_copy_of_a_shared_error_keeps_its_variant_message_and_source() {
        use std::error::Error as _;
        let cause = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused here");
        let shared = std::sync::Arc::new(Error::Unavailable {
            backend: "zk",
            url: "zk://h:1".into(),
            source: Some(Box::new(cause)),
        });
        let copy = Error::copy_of(&shared);
        assert!(matches!(copy, Error::Unavailable { backend: "zk", .. }));
        assert_eq!(copy.to_string(), shared.to_string());
        let source = copy.source().map(|s| s.to_string());
        assert_eq!(source.as_deref(), Some("refused here"));
        let none = std::sync::Arc::new(Error::Timeout {
            operation: "connecting",
            target: "zk://h:1".into(),
            after: Duration::from_secs(1),
        });
        let copy = Error::copy_of(&none);
        assert!(copy.source().is_none());
        assert_eq!(copy.to_string(), none.to_string());
    }
}
