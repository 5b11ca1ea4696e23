//! Private server processes: free loopback ports, a guard that kills, stops
//! and resumes the process and waits for it to become ready, and its log.

use std::fs::File;
use std::future::Future;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A loopback port nobody listened on a moment ago, outside the ephemeral
/// range (see `ports`).
pub fn free_port() -> std::io::Result<u16> {
    super::ports::free_loopback_port()
}

/// `N` different free loopback ports, outside the ephemeral range.
pub fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    let found = super::ports::free_loopback_ports(N)?;
    let mut ports = [0u16; N];
    ports.copy_from_slice(&found);
    Ok(ports)
}

/// Points `command`'s stdout and stderr at the end of the file `log` and
/// gives it no stdin.
pub fn log_to<'a>(command: &'a mut Command, log: &Path) -> std::io::Result<&'a mut Command> {
    let log = File::options().create(true).append(true).open(log)?;
    Ok(command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log))
}

/// The last `lines` lines of the file `log` (empty if it cannot be read).
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A private server process, started again as often as a case likes;
/// killed when dropped. Every method takes `&self`, so a case holding a
/// shared reference to its server can still stop it.
pub struct Process {
    /// What it is, for error messages ("etcd", "the consul agent", ...).
    what: String,
    child: Mutex<Option<Child>>,
    /// Stopped by [`Process::pause`] and not resumed since.
    paused: AtomicBool,
}

impl Process {
    /// A guard with nothing running yet.
    pub fn new(what: impl Into<String>) -> Process {
        Process {
            what: what.into(),
            child: Mutex::new(None),
            paused: AtomicBool::new(false),
        }
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `command` as the process, killing one still running first.
    pub fn start(&self, command: &mut Command) -> std::io::Result<()> {
        self.kill();
        let child = command.spawn().map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot start {}: {e}", self.what))
        })?;
        *self.child() = Some(child);
        Ok(())
    }

    /// How it ended, if it has (`None` while it runs or when never started).
    pub fn exited(&self) -> std::io::Result<Option<ExitStatus>> {
        match self.child().as_mut() {
            Some(child) => child.try_wait(),
            None => Ok(None),
        }
    }

    /// SIGKILL, no chance to clean up; returns once it is gone. A paused
    /// process is resumed first, so it dies promptly. Nothing happens when
    /// it is not running.
    pub fn kill(&self) {
        if self.paused.swap(false, Ordering::SeqCst) {
            let _ = self.signal("CONT");
        }
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `kill -<signal>` to the running process.
    fn signal(&self, signal: &str) -> std::io::Result<()> {
        let pid = self
            .child()
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| std::io::Error::other(format!("{} is not running", self.what)))?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "kill -{signal} {pid} ({}) failed: {status}",
                self.what
            )));
        }
        Ok(())
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn pause(&self) -> std::io::Result<()> {
        self.signal("STOP")?;
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// SIGCONT after [`Process::pause`].
    pub fn resume(&self) -> std::io::Result<()> {
        self.signal("CONT")?;
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// [`Process::pause`], and a guard that resumes the process when
    /// dropped, so a failing case never leaves it frozen.
    pub fn paused(&self) -> std::io::Result<Paused<'_>> {
        self.pause()?;
        Ok(Paused(self))
    }

    /// Polls `ready` every `every` until it is true. An error if the
    /// process exits first or `within` passes; the caller adds where its log is.
    pub fn wait_ready_blocking(
        &self,
        within: Duration,
        every: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            self.check_running()?;
            if ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{} not ready within {within:?}", self.what));
            }
            std::thread::sleep(every);
        }
    }

    /// [`Process::wait_ready_blocking`] with an async probe.
    pub async fn wait_ready<F, Fut>(
        &self,
        within: Duration,
        every: Duration,
        mut ready: F,
    ) -> Result<(), String>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        loop {
            self.check_running()?;
            if ready().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{} not ready within {within:?}", self.what));
            }
            tokio::time::sleep(every).await;
        }
    }

    fn check_running(&self) -> Result<(), String> {
        match self.exited() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited ({status})", self.what)),
            Err(e) => Err(format!("{}: {e}", self.what)),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Resumes the process when dropped; from [`Process::paused`].
pub struct Paused<'a>(&'a Process);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        let _ = self.0.resume();
    }
}
