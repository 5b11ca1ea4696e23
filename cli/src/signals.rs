//! The signals the CLI reacts to: SIGINT, SIGTERM and SIGHUP.

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};

use crate::exit::{CliError, FAILURE};

/// Listeners for SIGINT, SIGTERM and SIGHUP. While this exists, those
/// signals no longer end the process by themselves.
#[derive(Debug)]
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening.
    pub fn new() -> Result<Signals, CliError> {
        let listen = |kind| {
            signal(kind)
                .map_err(|e| CliError::new(FAILURE, format!("cannot listen for signals: {e}")))
        };
        Ok(Signals {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
            hangup: listen(SignalKind::hangup())?,
        })
    }

    /// The next signal received.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::SIGINT,
            _ = self.terminate.recv() => Signal::SIGTERM,
            _ = self.hangup.recv() => Signal::SIGHUP,
        }
    }
}
