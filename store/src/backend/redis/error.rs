//! The one place where `redis` client errors become [`crate::Error`]s.

use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::error::Error;
use crate::url::{handshake_failure, HandshakeFailure};

/// The backend name used in errors.
pub(crate) const BACKEND: &str = "redis";

/// Maps a client error about `target` (a key, or the URL) on the store at
/// `url` (redacted).
///
/// * refused credentials or missing permissions → [`Error::Unauthorized`];
/// * connection trouble, a server still loading, a replica that cannot take
///   writes → [`Error::Unavailable`] (transient);
/// * a request that timed out → [`Error::Timeout`] (transient);
/// * data the client could not accept, above all a TLS certificate it does
///   not trust → [`Error::Backend`]: retrying cannot help;
/// * anything else → [`Error::Backend`] with the client error as source.
///
/// The client's errors carry the server's message, never our password, so
/// they are safe to keep as `source`.
pub(crate) fn map(err: RedisError, target: &str, url: &str, timeout: Duration) -> Error {
    if is_auth(&err) || handshake_failure(&err) == Some(HandshakeFailure::ClientRefused) {
        return Error::Unauthorized {
            backend: BACKEND,
            url: url.to_owned(),
            source: Some(Box::new(err)),
        };
    }
    if err.is_timeout() {
        return Error::Timeout {
            operation: "redis request",
            target: target.to_owned(),
            after: timeout,
        };
    }
    if io_kind(&err) == Some(std::io::ErrorKind::InvalidData) {
        return Error::Backend {
            backend: BACKEND,
            target: target.to_owned(),
            source: Box::new(err),
        };
    }
    if is_unavailable(&err) {
        return unavailable(url, err);
    }
    Error::Backend {
        backend: BACKEND,
        target: target.to_owned(),
        source: Box::new(err),
    }
}

/// [`Error::Unavailable`] for the store at `url`.
pub(crate) fn unavailable(url: &str, source: impl Into<crate::error::BoxError>) -> Error {
    Error::Unavailable {
        backend: BACKEND,
        url: url.to_owned(),
        source: Some(source.into()),
    }
}

/// The kind of the I/O error inside `err`, if it is one.
fn io_kind(err: &RedisError) -> Option<std::io::ErrorKind> {
    let source = std::error::Error::source(err)?;
    if let Some(io) = source.downcast_ref::<std::io::Error>() {
        return Some(io.kind());
    }
    // The client keeps its inner error behind an `Arc`.
    source
        .downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>()
        .and_then(|inner| inner.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind)
}

fn is_auth(err: &RedisError) -> bool {
    matches!(
        err.kind(),
        ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm)
    ) || matches!(err.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
        // Redis 7.0 refuses a command inside a script with a plain error.
        || err.to_string().contains("user executing the script can't run this command")
}

fn is_unavailable(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || matches!(
            err.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::ClusterDown
            )
        )
        || matches!(err.code(), Some("LOADING" | "MASTERDOWN" | "READONLY"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_transient_and_auth_is_not() {
        let io: RedisError =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into();
        let e = map(io, "k", "redis://h", Duration::from_secs(1));
        assert!(e.is_transient(), "{e:?}");

        let auth: RedisError = (ErrorKind::AuthenticationFailed, "WRONGPASS").into();
        let e = map(auth, "k", "redis://u:***@h", Duration::from_secs(1));
        assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
        assert!(!e.is_transient());

        let tls: RedisError =
            std::io::Error::new(std::io::ErrorKind::InvalidData, "invalid peer certificate").into();
        let e = map(tls, "k", "rediss://h", Duration::from_secs(1));
        assert!(matches!(e, Error::Backend { .. }), "{e:?}");

        let timeout: RedisError = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow").into();
        let e = map(timeout, "k", "redis://h", Duration::from_secs(1));
        assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    }
}
