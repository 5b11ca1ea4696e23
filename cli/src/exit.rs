//! Exit codes and the error type every command returns.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | any other failure (a backend error, an I/O error) |
//! | 2 | usage: bad arguments, no or invalid store URL, invalid key, TTL or value, backend not compiled in |
//! | 3 | key not found |
//! | 4 | precondition failed: `--create` found the key, `--if-version` found another version, `lock --try` found the lock held |
//! | 5 | the store refused the credentials |
//! | 6 | the store is unreachable, timed out or closed |
//! | 7 | `lock`/`elect`: the lock or leadership was lost and the command was ended |
//! | 8 | the backend does not support the operation |
//! | 126 | `lock`/`elect`: the command could not be executed |
//! | 127 | `lock`/`elect`: the command was not found |
//! | 128+N | the CLI (or its command) was ended by signal N (130 for SIGINT, 143 for SIGTERM) |
//!
//! Otherwise `lock` and `elect` exit with their command's own exit code.

use std::fmt;

/// Success.
pub const OK: u8 = 0;
/// Any failure without a code of its own.
pub const FAILURE: u8 = 1;
/// Bad usage: arguments, URL, key, TTL, value (clap also uses 2).
pub const USAGE: u8 = 2;
/// The key does not exist.
pub const NOT_FOUND: u8 = 3;
/// A create-only write, a version check or a `--try` lock failed.
pub const PRECONDITION: u8 = 4;
/// The store refused the credentials.
pub const UNAUTHORIZED: u8 = 5;
/// The store could not be reached, timed out or was closed.
pub const UNAVAILABLE: u8 = 6;
/// The lock or the leadership was lost; the command was ended.
pub const LOST: u8 = 7;
/// The backend cannot do this.
pub const UNSUPPORTED: u8 = 8;
/// The command exists but could not be executed.
pub const CANNOT_EXECUTE: u8 = 126;
/// The command was not found.
pub const COMMAND_NOT_FOUND: u8 = 127;

/// The exit code for an end by signal `signo`: 128 + `signo`, as shells do.
pub fn signal_code(signo: i32) -> u8 {
    u8::try_from(128 + signo.clamp(0, 127)).unwrap_or(FAILURE)
}

/// A failure of a command: the message for stderr (already free of
/// secrets) and the exit code.
#[derive(Debug)]
pub struct CliError {
    /// The exit code.
    pub code: u8,
    /// What went wrong; empty when nothing is to be printed.
    pub message: String,
}

impl CliError {
    /// A failure with `code` and `message`.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
        }
    }

    /// An exit with `code` and nothing to print (the reason was already
    /// shown, or there is none, as for a child's own exit code).
    pub fn silent(code: u8) -> Self {
        CliError {
            code,
            message: String::new(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The exit code of an anykv error.
pub fn code_of(error: &anykv::Error) -> u8 {
    use anykv::Error as E;
    match error {
        E::KeyNotFound { .. } => NOT_FOUND,
        E::KeyExists { .. } | E::KeyModified { .. } | E::Locked { .. } => PRECONDITION,
        E::InvalidKey { .. }
        | E::ValueTooLarge { .. }
        | E::InvalidArgument { .. }
        | E::InvalidUrl { .. }
        | E::BackendNotEnabled { .. } => USAGE,
        E::LockLost { .. } => LOST,
        E::Unsupported { .. } => UNSUPPORTED,
        E::Unauthorized { .. } => UNAUTHORIZED,
        E::Unavailable { .. } | E::Timeout { .. } | E::Closed { .. } => UNAVAILABLE,
        _ => FAILURE,
    }
}

/// The message of an anykv error with its causes (`error: cause: cause`).
pub fn describe(error: &anykv::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_error_kind() {
        assert_eq!(
            code_of(&anykv::Error::KeyNotFound { key: "a".into() }),
            NOT_FOUND
        );
        assert_eq!(
            code_of(&anykv::Error::KeyModified { key: "a".into() }),
            PRECONDITION
        );
        assert_eq!(
            code_of(&anykv::Error::Closed {
                url: "etcd://h".into()
            }),
            UNAVAILABLE
        );
        assert_eq!(signal_code(15), 143);
        assert_eq!(signal_code(2), 130);
    }
}
