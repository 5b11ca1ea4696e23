//! The command that `lock` and `elect` run: started, signalled, ended.
//!
//! The command is started through the CLI's own binary in a hidden mode
//! (`anykv __exec PARENT CMD ARGS…`): that process asks the kernel to send
//! it SIGKILL when its parent dies (`PR_SET_PDEATHSIG`), checks that the
//! parent is still the CLI, then replaces itself with CMD (`execvp`). CMD
//! thus keeps the death signal (it survives `exec`, except for set-user-ID
//! programs) and has the pid the CLI signals, so a CLI killed with SIGKILL
//! never leaves its command running. Processes CMD starts itself are CMD's
//! business: signals go to CMD's pid only.
//!
//! The runtime is single-threaded on purpose: the death signal follows the
//! *thread* that started the child, and the main thread lives as long as
//! the process.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::exit::{signal_code, CliError, CANNOT_EXECUTE, COMMAND_NOT_FOUND, FAILURE};

/// The hidden first argument that selects the exec mode.
pub const EXEC_MODE: &str = "__exec";

/// A running command.
#[derive(Debug)]
pub struct Child {
    inner: tokio::process::Child,
    pid: Option<Pid>,
    name: String,
}

impl Child {
    /// Starts `command` (program and arguments) with `env` added to the
    /// CLI's environment.
    pub fn spawn(command: &[String], env: &[(&str, String)]) -> Result<Child, CliError> {
        let name = command.first().cloned().unwrap_or_default();
        let exe = std::env::current_exe().map_err(|e| {
            CliError::new(FAILURE, format!("cannot find the anykv executable: {e}"))
        })?;
        let mut process = tokio::process::Command::new(exe);
        process
            .arg(EXEC_MODE)
            .arg(std::process::id().to_string())
            .args(command);
        for (name, value) in env {
            process.env(name, value);
        }
        let inner = process
            .spawn()
            .map_err(|e| CliError::new(FAILURE, format!("cannot start {name:?}: {e}")))?;
        let pid = inner
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        Ok(Child { inner, pid, name })
    }

    /// The command's name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for the command to end; its exit code (128+N after signal N).
    /// Cancel-safe.
    pub async fn wait(&mut self) -> Result<u8, CliError> {
        let status =
            self.inner.wait().await.map_err(|e| {
                CliError::new(FAILURE, format!("cannot wait for {:?}: {e}", self.name))
            })?;
        self.pid = None;
        Ok(code_of_status(status))
    }

    /// Sends `signal` to the command, if it still runs.
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid {
            // ESRCH: it has just ended; its exit is collected by `wait`.
            let _ = kill(pid, signal);
        }
    }

    /// Ends the command: SIGTERM now, SIGKILL if it still runs after
    /// `grace`. Returns its exit code.
    pub async fn end(&mut self, grace: Duration) -> Result<u8, CliError> {
        self.signal(Signal::SIGTERM);
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(code) => code,
            Err(_) => {
                crate::warn(&format!(
                    "{:?} still runs {grace:?} after SIGTERM: sending SIGKILL",
                    self.name
                ));
                self.signal(Signal::SIGKILL);
                self.wait().await
            }
        }
    }
}

/// An exit status as an exit code: the code itself, or 128+N for signal N.
fn code_of_status(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(FAILURE),
        (None, Some(signo)) => signal_code(signo),
        (None, None) => FAILURE,
    }
}

/// The exec mode: `args` are `PARENT CMD ARGS…`. Only returns on failure.
pub fn exec_main(args: &[OsString]) -> ExitCode {
    let (Some(parent), Some(program)) = (args.first(), args.get(1)) else {
        eprintln!("anykv: {EXEC_MODE} needs the parent pid and a command");
        return ExitCode::from(FAILURE);
    };
    let name = program.to_string_lossy().into_owned();
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        eprintln!("anykv: cannot tie {name:?} to the life of anykv: {e}");
        return ExitCode::from(FAILURE);
    }
    // The parent may have died before the death signal was set.
    let expected = parent.to_str().and_then(|p| p.parse::<i32>().ok());
    if expected != Some(nix::unistd::getppid().as_raw()) {
        eprintln!("anykv: the anykv process that started {name:?} is gone; not running it");
        return ExitCode::from(FAILURE);
    }
    let argv: Result<Vec<CString>, _> = args[1..]
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect();
    let Ok(argv) = argv else {
        eprintln!("anykv: an argument of {name:?} contains a NUL byte");
        return ExitCode::from(FAILURE);
    };
    let error = match nix::unistd::execvp(&argv[0], &argv) {
        Ok(never) => match never {},
        Err(error) => error,
    };
    eprintln!("anykv: cannot run {name:?}: {}", error.desc());
    ExitCode::from(match error {
        Errno::ENOENT | Errno::ENOTDIR => COMMAND_NOT_FOUND,
        _ => CANNOT_EXECUTE,
    })
}
