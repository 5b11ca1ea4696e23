//! What the server-control tests (`*_server.rs`) share: trials that need
//! environment variables (ignored without them, failed under CI), a tokio
//! runtime per case, retries and stream reads with deadlines, unique names,
//! and in the submodules the processes, the helper child, a cutting proxy and
//! test certificates.
//!
//! Every test binary that declares `mod support;` compiles all of it and uses
//! only part, hence the `dead_code` allowance.

#![allow(dead_code)]

pub mod certs;
pub mod child;
// Shared with the fault-injection crate's clusters (std only).
#[path = "../../../nemesis/src/ports.rs"]
pub mod ports;
pub mod process;
pub mod proxy;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anykv::Error;
use futures::{Stream, StreamExt};
use libtest_mimic::{Completion, Failed, Trial};

/// The error type of cases that collect any error with `?`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The result of such a case, or of one of its steps.
pub type BoxResult<T = ()> = Result<T, BoxError>;

/// How a case's error becomes a failed trial.
pub trait IntoFailed {
    /// The trial failure that reports `self`.
    fn into_failed(self) -> Failed;
}

impl IntoFailed for Failed {
    fn into_failed(self) -> Failed {
        self
    }
}

impl IntoFailed for BoxError {
    /// Debug, not Display: it shows the error's kind and source too.
    fn into_failed(self) -> Failed {
        Failed::from(format!("{self:?}"))
    }
}

/// Whether this is a CI run (`CI=true` or `CI=1`), where a test server that
/// is not configured is a failure rather than a reason to skip.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The outcome of a trial that cannot run because `var` is not set: ignored
/// with the reason, or failed under CI.
pub fn missing(var: &str) -> Result<Completion, Failed> {
    let reason = format!("{var} is not set: eval \"$(scripts/services.sh env)\"");
    if under_ci() {
        Err(Failed::from(format!("{reason} (required under CI)")))
    } else {
        Ok(Completion::ignored_with(reason))
    }
}

/// The environment variables a trial declared it needs, read when it starts.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: HashMap<&'static str, String>,
}

impl Env {
    /// Reads `names`; the error is the first one that is unset or empty.
    pub fn read(names: &[&'static str]) -> Result<Env, &'static str> {
        let mut vars = HashMap::new();
        for &name in names {
            match std::env::var(name) {
                Ok(value) if !value.is_empty() => {
                    vars.insert(name, value);
                }
                _ => return Err(name),
            }
        }
        Ok(Env { vars })
    }

    /// The value of a declared variable (empty for one not declared).
    pub fn get(&self, name: &str) -> &str {
        self.vars.get(name).map(String::as_str).unwrap_or_default()
    }

    /// A declared variable as a path (a server binary, say).
    pub fn path(&self, name: &str) -> PathBuf {
        PathBuf::from(self.get(name))
    }
}

/// A trial that runs `case` with the variables in `needs`, or is
/// [`missing`] when one of them is not set.
pub fn trial<F, E>(name: &'static str, needs: &'static [&'static str], case: F) -> Trial
where
    F: FnOnce(Env) -> Result<(), E> + Send + 'static,
    E: IntoFailed,
{
    Trial::ignorable_test(name, move || match Env::read(needs) {
        Ok(env) => case(env)
            .map(|()| Completion::Completed)
            .map_err(IntoFailed::into_failed),
        Err(var) => missing(var),
    })
}

/// [`trial`] for an async case, run by [`block_on`].
pub fn async_trial<F, Fut, E>(name: &'static str, needs: &'static [&'static str], case: F) -> Trial
where
    F: FnOnce(Env) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>>,
    E: IntoFailed + From<std::io::Error>,
{
    trial(name, needs, move |env| block_on(case(env)))
}

/// Runs `case` on a fresh two-worker tokio runtime, then shuts the runtime
/// down, giving leftover blocking tasks at most 5 s.
pub fn block_on<T, E>(case: impl Future<Output = Result<T, E>>) -> Result<T, E>
where
    E: From<std::io::Error>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(case);
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

/// A name no other call, test process or earlier run uses: `prefix`, the
/// process id, the clock and a counter.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{:x}-{:x}-{}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A path in the temporary directory named by [`unique`]; not created.
pub fn scratch_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(unique(prefix))
}

/// Runs `op` until it returns something other than a transient or `Locked`
/// error, retrying every 100 ms for up to `within`; then the last result.
pub async fn retry<T, F, Fut>(within: Duration, mut op: F) -> anykv::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anykv::Result<T>>,
{
    let start = Instant::now();
    loop {
        match op().await {
            Err(e)
                if (e.is_transient() || matches!(e, Error::Locked { .. }))
                    && start.elapsed() < within =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// The next item of `stream`; an error when it ends or nothing comes
/// within `within`.
pub async fn next_within<S>(stream: &mut S, within: Duration) -> Result<S::Item, String>
where
    S: Stream + Unpin,
{
    match tokio::time::timeout(within, stream.next()).await {
        Ok(Some(item)) => Ok(item),
        Ok(None) => Err("stream ended".into()),
        Err(_) => Err(format!("nothing arrived within {within:?}")),
    }
}

/// The next item of a store stream that is not a transient error, each item
/// awaited as by [`next_within`].
pub async fn next_ok_within<T, S>(
    stream: &mut S,
    within: Duration,
) -> Result<anykv::Result<T>, String>
where
    S: Stream<Item = anykv::Result<T>> + Unpin,
{
    loop {
        match next_within(stream, within).await? {
            Err(e) if e.is_transient() => continue,
            other => return Ok(other),
        }
    }
}
