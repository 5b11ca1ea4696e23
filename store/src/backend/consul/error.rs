//! The backend's private error type and its one mapping into [`crate::Error`].

use std::time::Duration;

use crate::error::Error;
use crate::url::{handshake_failure, HandshakeFailure};

pub(crate) const BACKEND: &str = "consul";

/// What went wrong talking to Consul, before it becomes a [`crate::Error`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConsulError {
    /// The request did not complete: connection refused or reset, TLS, a
    /// body cut short. The agent may answer next time.
    #[error("request failed: {0}")]
    Transport(#[source] reqwest::Error),
    /// The request took longer than its timeout.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The agent answered with an error status.
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    /// A transaction was rolled back; `what` is Consul's reason.
    #[error("transaction rejected: {what}")]
    TxnRejected { what: String },
    /// The answer was not what the API documents.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// A local file (the CA bundle) could not be used.
    #[error("{0}")]
    Setup(String),
}

impl ConsulError {
    pub(crate) fn transport(error: reqwest::Error, timeout: Duration) -> Self {
        if error.is_timeout() {
            ConsulError::TimedOut(timeout)
        } else {
            ConsulError::Transport(error)
        }
    }

    /// True if Consul refused the token (or its absence).
    fn is_auth(&self) -> bool {
        match self {
            ConsulError::Status { status, .. } => matches!(status, 401 | 403),
            ConsulError::TxnRejected { what } => is_acl_message(what),
            // The agent (verify_incoming_https) refused the client
            // certificate or its absence.
            ConsulError::Transport(e) => {
                handshake_failure(e) == Some(HandshakeFailure::ClientRefused)
            }
            _ => false,
        }
    }

    /// True if the agent or the servers cannot serve right now.
    fn is_unavailable(&self) -> bool {
        match self {
            ConsulError::Transport(_) => true,
            ConsulError::Status { status, body } => {
                matches!(status, 429 | 502 | 503 | 504)
                    || (*status == 500 && is_unavailable_message(body))
            }
            ConsulError::TxnRejected { what } => is_unavailable_message(what),
            _ => false,
        }
    }

    /// Maps into anykv's error. `operation` and `target` (a key, or the
    /// redacted URL) go into the message; `url` is the redacted store URL.
    pub(crate) fn into_error(self, operation: &'static str, target: &str, url: &str) -> Error {
        match self {
            ConsulError::TimedOut(after) => Error::Timeout {
                operation,
                target: target.to_owned(),
                after,
            },
            e if e.is_auth() => Error::Unauthorized {
                backend: BACKEND,
                url: url.to_owned(),
                source: Some(Box::new(e)),
            },
            e if e.is_unavailable() => Error::Unavailable {
                backend: BACKEND,
                url: url.to_owned(),
                source: Some(Box::new(e)),
            },
            ConsulError::Status { status: 413, .. } => Error::Backend {
                backend: BACKEND,
                target: target.to_owned(),
                source: "the agent refused the request as too large".into(),
            },
            e => Error::Backend {
                backend: BACKEND,
                target: target.to_owned(),
                source: Box::new(e),
            },
        }
    }
}

/// Consul's words for an ACL refusal (HTTP 403 bodies and transaction errors).
pub(crate) fn is_acl_message(what: &str) -> bool {
    what.contains("Permission denied") || what.contains("ACL not found")
}

/// Consul's words for "no leader right now" and friends.
fn is_unavailable_message(what: &str) -> bool {
    [
        "No cluster leader",
        "leadership lost",
        // A fresh agent before it registered its own node.
        "Missing node registration",
        "rpc error",
        "i/o timeout",
        "connection refused",
        "EOF",
    ]
    .iter()
    .any(|needle| what.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, body: &str) -> ConsulError {
        ConsulError::Status {
            status,
            body: body.into(),
        }
    }

    #[test]
    fn acl_refusals_are_unauthorized_and_name_the_url() {
        for e in [
            status(403, "ACL not found"),
            status(403, "Permission denied"),
            ConsulError::TxnRejected {
                what: "Permission denied".into(),
            },
        ] {
            let mapped = e.into_error("get", "k", "consul://h:8500/app?token=***");
            assert!(matches!(mapped, Error::Unauthorized { .. }), "{mapped:?}");
            assert!(mapped.to_string().contains("consul://h:8500/app?token=***"));
        }
    }

    #[test]
    fn leaderless_cluster_is_transient() {
        let mapped =
            status(500, "rpc error making call: No cluster leader").into_error("put", "k", "u");
        assert!(mapped.is_transient(), "{mapped:?}");
        let mapped = status(500, "something else").into_error("put", "k", "u");
        assert!(matches!(mapped, Error::Backend { .. }), "{mapped:?}");
        let mapped = ConsulError::TimedOut(Duration::from_secs(1)).into_error("put", "k", "u");
        assert!(matches!(mapped, Error::Timeout { .. }) && mapped.is_transient());
    }
}
