//! Background tasks, and who owns them.
//!
//! Every task anykv starts — session keep-alives, lock monitors, watch
//! loops, releases and cleanups handed off by a `Drop` — is spawned through
//! a [`Tasks`] captured when its owner (a store handle, a lock, a guard) was
//! made inside a tokio runtime. That has two consequences:
//!
//! * Work handed off from a `Drop` runs on the owner's runtime even when the
//!   drop happens outside any runtime context (a guard dropped on a plain
//!   thread): it is never silently skipped. Only a runtime that is itself
//!   shutting down drops it, and then the server-side session end (lease,
//!   session or key TTL) settles what the task would have.
//! * Each task is counted by its owner's tracker, and each has an end: it
//!   stops when its owner's handle drops or the store closes (the tasks
//!   select on the owner's closed or stop token), or it is a bounded
//!   one-shot (a release retried until its session ends).

use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::future::{self, BoxFuture, FutureExt, Shared};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};

/// Where an owner's background tasks run, and their count.
#[derive(Clone, Debug)]
pub(crate) struct Tasks {
    runtime: Handle,
    tracker: TaskTracker,
}

impl Tasks {
    /// The tasks of an owner made now, on the current runtime; `what` names
    /// the owner in the error outside a runtime.
    pub(crate) fn current(what: &str) -> Result<Self> {
        let runtime = Handle::try_current().map_err(|_| Error::InvalidArgument {
            key: what.to_owned(),
            reason: "must be created inside a tokio runtime (its background tasks run there)"
                .into(),
        })?;
        Ok(Tasks::on(runtime))
    }

    /// The tasks of an owner made now, if a runtime is current.
    pub(crate) fn try_current() -> Option<Self> {
        Handle::try_current().ok().map(Tasks::on)
    }

    fn on(runtime: Handle) -> Self {
        Tasks {
            runtime,
            tracker: TaskTracker::new(),
        }
    }

    /// True when the current runtime is the owner's.
    pub(crate) fn is_current(&self) -> bool {
        Handle::try_current().is_ok_and(|current| current.id() == self.runtime.id())
    }

    /// Starts `task` on the owner's runtime.
    pub(crate) fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn_on(task, &self.runtime)
    }

    /// How many of this owner's tasks are running.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn running(&self) -> usize {
        self.tracker.len()
    }
}

/// One attempt at a piece of shared work (opening a handle's next session),
/// awaited by every caller that needs it. Its outcome holds nothing but
/// success or the error: what the work made lives with its owner.
pub(crate) type Attempt = Shared<BoxFuture<'static, Result<(), Arc<Error>>>>;

/// At most one [`Attempt`] under way. The work runs as a task of its own,
/// so a caller that started it and is then dropped or no longer polled (a
/// future kept across a `select!` loop, a stream left unread) holds up
/// nobody.
#[derive(Default)]
#[cfg_attr(not(any(feature = "zookeeper", feature = "consul")), allow(dead_code))]
pub(crate) struct SharedAttempt {
    slot: Mutex<Option<Attempt>>,
}

#[cfg_attr(not(any(feature = "zookeeper", feature = "consul")), allow(dead_code))]
impl SharedAttempt {
    /// The attempt under way; otherwise, unless `done()` says there is
    /// nothing left to do, a new one running `work()` on `tasks`. `url`
    /// names the owner in the error if that task is cut short.
    pub(crate) fn join<F>(
        &self,
        tasks: &Tasks,
        url: &str,
        done: impl FnOnce() -> bool,
        work: impl FnOnce() -> F,
    ) -> Attempt
    where
        F: Future<Output = Result<(), Arc<Error>>> + Send + 'static,
    {
        // The guarded value is a plain `Option`; a panic cannot leave it
        // half-written, so a poisoned lock is still usable.
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(attempt) = slot.as_ref() {
            if attempt.peek().is_none() {
                return attempt.clone();
            }
        }
        if done() {
            return future::ready(Ok(())).boxed().shared();
        }
        let task = tasks.spawn(work());
        let url = url.to_owned();
        let attempt = async move {
            task.await
                .unwrap_or_else(|_| Err(Arc::new(Error::Closed { url })))
        }
        .boxed()
        .shared();
        *slot = Some(attempt.clone());
        attempt
    }
}

/// The message of a caught panic, when it carried one.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> Option<String> {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn work_handed_off_outside_the_runtime_still_runs_there() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let tasks = runtime
            .block_on(async { Tasks::current("test") })
            .expect("inside");
        // This thread is not in the runtime's context.
        assert!(Handle::try_current().is_err());
        let (done, ran) = std::sync::mpsc::channel();
        tasks.spawn(async move {
            let _ = done.send(());
        });
        assert!(ran.recv_timeout(Duration::from_secs(5)).is_ok());
        for _ in 0..500 {
            if tasks.running() == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(tasks.running(), 0, "a finished task is no longer counted");
        assert!(Tasks::current("outside").is_err());
    }
}
