//! Running one case: runtime, handles, cleanup, the child process, helpers.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anykv::StoreExt;
use anykv::{Capabilities, Error, LockOptions, PutOptions, Store};
use futures::{Stream, StreamExt};
use libtest_mimic::{Completion, Failed};

use crate::cases::Case;
use crate::{Factory, CHILD_ENV};

/// How long any single expected event may take before a case fails. Generous:
/// CI machines are noisy; behaviour, not speed, is under test here.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// What a case concludes.
#[derive(Debug)]
pub enum Done {
    /// The behaviour held.
    Passed,
    /// The case does not apply to this backend, for this reason.
    NotApplicable(String),
}

/// The result type of a case body.
pub type CaseResult = std::result::Result<Done, Box<dyn std::error::Error + Send + Sync>>;

/// A case's view of the backend under test.
#[derive(Clone)]
pub struct Ctx {
    factory: Factory,
    namespace: String,
    opened: Arc<Mutex<Vec<Arc<dyn Store>>>>,
}

impl Ctx {
    /// A new handle (new session) in this case's namespace.
    pub async fn store(&self) -> Arc<dyn Store> {
        self.store_in("").await
    }

    /// A new handle whose namespace is `sub` below this case's namespace.
    pub async fn store_in(&self, sub: &str) -> Arc<dyn Store> {
        let ns = if sub.is_empty() {
            self.namespace.clone()
        } else {
            format!("{}/{sub}", self.namespace)
        };
        let store = (self.factory)(ns)
            .await
            .unwrap_or_else(|e| panic!("the factory could not open a store: {e}"));
        self.opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(store.clone());
        store
    }

    /// A new handle in this case's namespace that the harness does not keep:
    /// dropping it really drops the handle.
    pub async fn store_uncached(&self) -> Arc<dyn Store> {
        (self.factory)(self.namespace.clone())
            .await
            .unwrap_or_else(|e| panic!("the factory could not open a store: {e}"))
    }

    /// The namespace of this case (for the child process).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Starts this test binary as the helper child: it opens a handle in the
    /// case namespace, writes the ephemeral key `owned`, takes the lock
    /// `lock` (value `child`), and reports ready. The caller kills it.
    pub(crate) fn spawn_child(&self) -> ChildProcess {
        self.spawn_child_as(ChildRole::Holder)
    }

    /// Starts this test binary as a helper child that runs a leadership
    /// [`anykv_leadership::Candidate`] for the key `leader` in the case
    /// namespace, as node `child`, and reports ready once it is elected. The
    /// caller must make sure nobody else leads yet. The caller kills it.
    pub(crate) fn spawn_candidate_child(&self) -> ChildProcess {
        self.spawn_child_as(ChildRole::Candidate)
    }

    pub(crate) fn spawn_child_as(&self, role: ChildRole) -> ChildProcess {
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
        let mut child = Command::new(exe)
            .env(CHILD_ENV, &self.namespace)
            .env(CHILD_ROLE_ENV, role.name())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start the child process: {e}"));
        let stdout = child
            .stdout
            .take()
            .unwrap_or_else(|| panic!("child has no stdout"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.trim() == "READY" => ChildProcess { child },
            Ok(line) => {
                let _ = child.kill();
                panic!("child process failed: {line:?}")
            }
            Err(_) => {
                let _ = child.kill();
                panic!("child process did not become ready in 60s")
            }
        }
    }
}

/// A running helper child; killed (SIGKILL) on drop if still alive.
pub(crate) struct ChildProcess {
    child: Child,
}

impl ChildProcess {
    /// SIGKILL: no chance to clean up.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Names the helper child's job (environment variable [`CHILD_ROLE_ENV`]);
/// unset means [`ChildRole::Holder`].
pub(crate) const CHILD_ROLE_ENV: &str = "ANYKV_SUITE_CHILD_ROLE";

/// What the helper child does before it reports `READY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChildRole {
    /// Writes the ephemeral key `owned` and takes the lock `lock`.
    Holder,
    /// Runs a leadership candidate for `leader` as node `child` until elected.
    Candidate,
    /// Claims the one item of the work queue `queue` and never acks it.
    QueueConsumer,
    /// Registers the discovery instance `web/child` and holds the one
    /// permit of the semaphore `sem` (see `cases::recipes::discovery`).
    RecipeHolder,
}

impl ChildRole {
    fn name(self) -> &'static str {
        match self {
            ChildRole::Holder => "holder",
            ChildRole::Candidate => "candidate",
            ChildRole::QueueConsumer => "queue-consumer",
            ChildRole::RecipeHolder => "recipe-holder",
        }
    }

    fn from_env() -> Self {
        match std::env::var(CHILD_ROLE_ENV).as_deref() {
            Ok("candidate") => ChildRole::Candidate,
            Ok("queue-consumer") => ChildRole::QueueConsumer,
            Ok("recipe-holder") => ChildRole::RecipeHolder,
            _ => ChildRole::Holder,
        }
    }
}

/// The child side of [`Ctx::spawn_child`] and [`Ctx::spawn_candidate_child`]:
/// does its role's setup, reports `READY` (or `ERROR …`) on stdout, then
/// holds what it set up until killed. Never returns.
pub(crate) fn child_main(factory: Factory, namespace: String) -> ! {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("ERROR runtime: {e}");
            std::process::exit(2)
        }
    };
    runtime.block_on(async move {
        let outcome = match ChildRole::from_env() {
            ChildRole::Holder => hold_key_and_lock(factory, namespace)
                .await
                .map(|held| Box::new(held) as Box<dyn Send>),
            ChildRole::Candidate => lead(factory, namespace)
                .await
                .map(|held| Box::new(held) as Box<dyn Send>),
            ChildRole::QueueConsumer => {
                crate::cases::recipes::queue::claim_and_hold(factory, namespace)
                    .await
                    .map(|held| Box::new(held) as Box<dyn Send>)
            }
            ChildRole::RecipeHolder => crate::cases::recipes::discovery::hold(factory, namespace)
                .await
                .map(|held| Box::new(held) as Box<dyn Send>),
        };
        match outcome {
            Ok(held) => {
                println!("READY");
                let _ = std::io::stdout().flush();
                // Hold everything until killed; give up after a while so a
                // lost parent never leaves this process behind for good.
                tokio::time::sleep(Duration::from_secs(300)).await;
                drop(held);
                std::process::exit(0)
            }
            Err(e) => {
                println!("ERROR {e}");
                let _ = std::io::stdout().flush();
                std::process::exit(1)
            }
        }
    })
}

/// The holder role: the ephemeral key `owned` and the lock `lock`.
async fn hold_key_and_lock(
    factory: Factory,
    namespace: String,
) -> Result<(Arc<dyn Store>, anykv::LockGuard), Error> {
    let store = factory(namespace).await?;
    store.put("owned", "child", PutOptions::ephemeral()).await?;
    let lock = store.new_lock("lock", LockOptions::new("child")).await?;
    let guard = lock.lock().await?;
    Ok((store, guard))
}

/// The candidate role: campaigns for `leader` as node `child` until elected.
async fn lead(factory: Factory, namespace: String) -> Result<impl Send, Error> {
    let store = factory(namespace).await?;
    let candidate = anykv_leadership::Candidate::new(store, "leader", "child");
    let (mut elected, errors) = candidate.run_for_election().await?;
    let became_leader = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(leader) = elected.next().await {
            if leader {
                return true;
            }
        }
        false
    })
    .await;
    if became_leader != Ok(true) {
        return Err(Error::InvalidArgument {
            key: "leader".into(),
            reason: "the candidate child was not elected within 60s".into(),
        });
    }
    Ok((candidate, elected, errors))
}

pub(crate) fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", nanos & 0xffff_ffff_ffff, std::process::id())
}

pub(crate) fn run_case(
    case: Case,
    factory: Factory,
    namespace: String,
) -> Result<Completion, Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("runtime: {e}")))?;
    let ctx = Ctx {
        factory: factory.clone(),
        namespace: namespace.clone(),
        opened: Arc::default(),
    };
    let result = runtime.block_on(async {
        let outcome = (case.run)(ctx.clone()).await;
        // Clean up whatever the case left, on a fresh handle.
        let handles: Vec<_> =
            std::mem::take(&mut *ctx.opened.lock().unwrap_or_else(|p| p.into_inner()));
        for store in handles {
            let _ = tokio::time::timeout(PATIENCE, store.close()).await;
        }
        if let Ok(Ok(store)) = tokio::time::timeout(PATIENCE, factory(namespace)).await {
            let _ = tokio::time::timeout(PATIENCE, store.delete_tree("")).await;
            let _ = tokio::time::timeout(PATIENCE, store.close()).await;
        }
        outcome
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(Done::Passed) => Ok(Completion::Completed),
        Ok(Done::NotApplicable(reason)) => Ok(Completion::ignored_with(reason)),
        Err(e) => Err(Failed::from(e.to_string())),
    }
}

// ------------------------------------------------------------------ helpers

/// The next item of a stream, failing the case if none comes within `PATIENCE`.
pub(crate) async fn next_item<S, T>(stream: &mut S, what: &str) -> T
where
    S: Stream<Item = T> + Unpin,
{
    match tokio::time::timeout(PATIENCE, stream.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("{what}: stream ended"),
        Err(_) => panic!("{what}: nothing arrived within {PATIENCE:?}"),
    }
}

/// Asserts that no item arrives within `quiet`.
pub(crate) async fn assert_quiet<S, T>(stream: &mut S, quiet: Duration, what: &str)
where
    S: Stream<Item = T> + Unpin,
    T: std::fmt::Debug,
{
    if let Ok(item) = tokio::time::timeout(quiet, stream.next()).await {
        panic!("{what}: expected no item, got {item:?}");
    }
}

/// Polls `check` every 20 ms until it returns true or `deadline` passes.
/// Returns how long it took. (Polling is the test's business, not the
/// library's: it only observes.)
pub(crate) async fn eventually<F, Fut>(deadline: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        if start.elapsed() > deadline {
            panic!("{what}: not true within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The TTL the timing cases use: at least the backend's minimum, at least 1 s.
pub(crate) fn test_ttl(caps: &Capabilities) -> Duration {
    caps.min_ttl.max(Duration::from_secs(1))
}

/// The number of live tokio tasks on the current runtime.
pub(crate) fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Asserts that `result` is the error variant named by the pattern.
macro_rules! assert_err {
    ($result:expr, $pattern:pat) => {
        match $result {
            Err($pattern) => {}
            Err(other) => panic!(
                "expected {} from `{}`, got Err({:?})",
                stringify!($pattern),
                stringify!($result),
                other
            ),
            Ok(_) => panic!(
                "expected {} from `{}`, got Ok",
                stringify!($pattern),
                stringify!($result)
            ),
        }
    };
}
pub(crate) use assert_err;
