//! Server processes of a cluster: start, signal, reap; free loopback ports.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Errors of the cluster launchers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `n` distinct free ports on 127.0.0.1, outside the ephemeral range
/// ([`crate::ports`]).
pub fn free_ports(n: usize) -> Result<Vec<u16>, BoxError> {
    Ok(crate::ports::free_loopback_ports(n)?)
}

/// 127.0.0.1:`port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One server process, SIGKILLed when dropped.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
}

impl Server {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(mut command: Command, log: &Path) -> Result<Server, BoxError> {
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {command:?}: {e}"))?;
        Ok(Server { child: Some(child) })
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process has not exited.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A plain HTTP/1.0 GET on loopback; the body, or `None` on any failure.
pub async fn http_get(addr: SocketAddr, path: &str, within: Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.").then(|| body.to_string())
    };
    tokio::time::timeout(within, fetch).await.ok().flatten()
}

#[cfg(test)]
mod port_tests {
    use crate::ports::*;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn ports_are_distinct_outside_the_ephemeral_range_and_bindable() {
        let ports = free_loopback_ports(50).expect("ports");
        let again = free_loopback_ports(50).expect("ports");
        let mut all: Vec<u16> = ports.iter().chain(&again).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 100, "no port returned twice");
        if let Some((low, high)) = ephemeral_range() {
            assert!(
                all.iter().all(|p| *p < low || *p > high),
                "{all:?} vs {low}-{high}"
            );
        }
        assert!(all.iter().all(|p| *p >= WINDOW_LOW));
        for p in &all {
            assert!(
                TcpListener::bind((Ipv4Addr::LOCALHOST, *p)).is_ok(),
                "port {p}"
            );
        }
    }
}
