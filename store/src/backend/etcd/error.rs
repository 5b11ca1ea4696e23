//! The one place where `etcd_client` errors become [`crate::Error`]s.

use etcd_client::Error as ClientError;

use crate::error::Error;
use crate::url::{handshake_failure, HandshakeFailure};

pub(crate) const BACKEND: &str = "etcd";

/// How an etcd client error is to be treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The server could not be reached or cannot serve now: retry later,
    /// possibly on another endpoint.
    Transient,
    /// Credentials missing, wrong, or not allowed to do this.
    Unauthorized,
    /// The lease a write referred to is gone (expired or revoked).
    LeaseNotFound,
    /// A lease grant named an ID that is already in use.
    LeaseExists,
    /// The revision a watch wanted to resume from was compacted away.
    Compacted,
    /// Anything else: final for this call.
    Other,
}

/// Classifies a client error.
pub(crate) fn kind(err: &ClientError) -> Kind {
    // A refused handshake is final: retrying (or another member with the
    // same certificates) cannot help.
    match handshake_failure(err) {
        Some(HandshakeFailure::ClientRefused) => return Kind::Unauthorized,
        Some(HandshakeFailure::ServerNotTrusted) => return Kind::Other,
        None => {}
    }
    match err {
        ClientError::GRpcStatus(status) => status_kind(status.code() as i32, status.message()),
        ClientError::TransportError(_) | ClientError::IoError(_) => Kind::Transient,
        // The request or response stream of a watch / keep-alive went away.
        ClientError::WatchError(_) | ClientError::EndpointError(_) => Kind::Transient,
        ClientError::LeaseKeepAliveError(msg) if msg.contains("not found") => Kind::LeaseNotFound,
        ClientError::LeaseKeepAliveError(_) => Kind::Transient,
        _ => Kind::Other,
    }
}

/// gRPC status codes (fixed by the gRPC spec), so that this module need not
/// name tonic's `Code` type.
mod code {
    pub(super) const CANCELLED: i32 = 1;
    pub(super) const UNKNOWN: i32 = 2;
    pub(super) const INVALID_ARGUMENT: i32 = 3;
    pub(super) const DEADLINE_EXCEEDED: i32 = 4;
    pub(super) const NOT_FOUND: i32 = 5;
    pub(super) const PERMISSION_DENIED: i32 = 7;
    pub(super) const FAILED_PRECONDITION: i32 = 9;
    pub(super) const ABORTED: i32 = 10;
    pub(super) const OUT_OF_RANGE: i32 = 11;
    pub(super) const INTERNAL: i32 = 13;
    pub(super) const UNAVAILABLE: i32 = 14;
    pub(super) const UNAUTHENTICATED: i32 = 16;
}

fn status_kind(code: i32, message: &str) -> Kind {
    use code::*;
    match code {
        UNAVAILABLE | DEADLINE_EXCEEDED | CANCELLED | ABORTED => Kind::Transient,
        // tonic reports a connection torn down mid-call (server killed) as
        // Unknown/Internal with an h2 or transport message.
        UNKNOWN | INTERNAL
            if message.contains("transport")
                || message.contains("h2 protocol")
                || message.contains("connection")
                || message.contains("broken pipe") =>
        {
            Kind::Transient
        }
        UNAUTHENTICATED | PERMISSION_DENIED => Kind::Unauthorized,
        // etcd answers these with InvalidArgument / FailedPrecondition.
        INVALID_ARGUMENT | FAILED_PRECONDITION
            if message.contains("authentication")
                || message.contains("user name")
                || message.contains("invalid auth token")
                || message.contains("permission denied") =>
        {
            Kind::Unauthorized
        }
        NOT_FOUND if message.contains("lease not found") => Kind::LeaseNotFound,
        FAILED_PRECONDITION if message.contains("lease already exists") => Kind::LeaseExists,
        OUT_OF_RANGE if message.contains("compacted") => Kind::Compacted,
        _ => Kind::Other,
    }
}

/// Maps a client error about `target` (a key, or the URL) of the store at
/// `url` (already without secrets).
pub(crate) fn map(err: ClientError, url: &str, target: &str) -> Error {
    match kind(&err) {
        Kind::Transient => Error::Unavailable {
            backend: BACKEND,
            url: url.to_owned(),
            source: Some(Box::new(err)),
        },
        Kind::Unauthorized => Error::Unauthorized {
            backend: BACKEND,
            url: url.to_owned(),
            source: Some(Box::new(err)),
        },
        Kind::LeaseNotFound | Kind::LeaseExists | Kind::Compacted | Kind::Other => Error::Backend {
            backend: BACKEND,
            target: target.to_owned(),
            source: Box::new(err),
        },
    }
}

/// An error for a response that lacks what etcd always sends.
pub(crate) fn malformed(target: &str, what: &'static str) -> Error {
    Error::Backend {
        backend: BACKEND,
        target: target.to_owned(),
        source: what.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::code::*;
    use super::*;

    #[test]
    fn classifies_etcd_status_codes() {
        assert_eq!(
            status_kind(UNAVAILABLE, "etcdserver: no leader"),
            Kind::Transient
        );
        assert_eq!(
            status_kind(
                INVALID_ARGUMENT,
                "etcdserver: authentication failed, invalid user ID or password"
            ),
            Kind::Unauthorized
        );
        assert_eq!(
            status_kind(INVALID_ARGUMENT, "etcdserver: user name is empty"),
            Kind::Unauthorized
        );
        assert_eq!(
            status_kind(PERMISSION_DENIED, "etcdserver: permission denied"),
            Kind::Unauthorized
        );
        assert_eq!(
            status_kind(NOT_FOUND, "etcdserver: requested lease not found"),
            Kind::LeaseNotFound
        );
        assert_eq!(
            status_kind(
                OUT_OF_RANGE,
                "etcdserver: mvcc: required revision has been compacted"
            ),
            Kind::Compacted
        );
        assert_eq!(
            status_kind(INVALID_ARGUMENT, "etcdserver: request is too large"),
            Kind::Other
        );
    }

    #[test]
    fn mapped_errors_name_url_or_key_and_tell_transient() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = map(ClientError::IoError(io), "etcd://h:1/app", "k");
        assert!(e.is_transient());
        assert!(e.to_string().contains("etcd://h:1/app"), "{e}");
        let e = map(
            ClientError::InvalidArgs("nope".into()),
            "etcd://h:1",
            "some/key",
        );
        assert!(!e.is_transient());
        assert!(e.to_string().contains("some/key"), "{e}");
    }
}
