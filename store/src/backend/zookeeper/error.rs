//! The one place where `zookeeper_client` errors become anykv errors.

use zookeeper_client as zk;

use crate::error::Error;

use super::BACKEND;

/// The hint returned with [`Error::Unsupported`] for TTL writes.
pub(super) const TTL_HINT: &str = "TTL znodes need the server started with \
    -Dzookeeper.extendedTypesEnabled=true (extendedTypesEnabled=true in zoo.cfg)";

/// Maps a client error about `key` (or the store, if `key` is empty) of the
/// store at `url`. Callers handle the key-level outcomes they expect
/// (`NoNode`, `NodeExists`, `BadVersion`) before falling back to this.
pub(super) fn map(error: zk::Error, key: &str, url: &str) -> Error {
    let target = || {
        if key.is_empty() {
            url.to_owned()
        } else {
            format!("key {key:?}")
        }
    };
    match error {
        zk::Error::NoNode => Error::KeyNotFound {
            key: key.to_owned(),
        },
        zk::Error::NodeExists => Error::KeyExists {
            key: key.to_owned(),
        },
        zk::Error::BadVersion => Error::KeyModified {
            key: key.to_owned(),
        },
        zk::Error::NoAuth | zk::Error::AuthFailed => Error::Unauthorized {
            backend: BACKEND,
            url: url.to_owned(),
            source: Some(Box::new(error)),
        },
        // Connection trouble, and a session that ended: the next call runs on
        // a new session, so both are worth retrying.
        zk::Error::ConnectionLoss
        | zk::Error::Timeout
        | zk::Error::NoHosts
        | zk::Error::Throttled
        | zk::Error::SessionExpired
        | zk::Error::SessionMoved
        | zk::Error::NotReadOnly
        | zk::Error::Custom(_) => Error::Unavailable {
            backend: BACKEND,
            url: url.to_owned(),
            source: Some(Box::new(error)),
        },
        zk::Error::ClientClosed => Error::Closed {
            url: url.to_owned(),
        },
        zk::Error::Unimplemented => Error::Unsupported {
            operation: "this operation",
            backend: BACKEND,
            hint: Some(format!("the server does not implement it ({})", target())),
        },
        other => Error::Backend {
            backend: BACKEND,
            target: target(),
            source: Box::new(other),
        },
    }
}

/// An [`Error::Unavailable`] without a client error, e.g. for a watch that
/// saw its connection drop.
pub(super) fn unavailable(url: &str, why: &str) -> Error {
    Error::Unavailable {
        backend: BACKEND,
        url: url.to_owned(),
        source: Some(why.to_owned().into()),
    }
}

/// True for errors after which the session is gone for good.
pub(super) fn is_session_end(error: &zk::Error) -> bool {
    matches!(error, zk::Error::SessionExpired | zk::Error::ClientClosed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_are_transient_and_auth_is_not() {
        assert!(map(zk::Error::ConnectionLoss, "k", "zk://h").is_transient());
        assert!(map(zk::Error::SessionExpired, "k", "zk://h").is_transient());
        let e = map(zk::Error::NoAuth, "k", "zk://u:***@h");
        assert!(matches!(e, Error::Unauthorized { .. }) && !e.is_transient());
        assert!(matches!(
            map(zk::Error::NoNode, "a/b", "zk://h"),
            Error::KeyNotFound { key } if key == "a/b"
        ));
        assert!(map(zk::Error::MarshallingError, "a/b", "zk://h")
            .to_string()
            .contains("a/b"));
    }
}
