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
