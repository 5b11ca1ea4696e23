//! The streams the discovery, partitioner and semaphore recipes hand out,
//! and how their owning task learns that nobody reads them any more.
//!
//! * A *state* feed carries a whole state (an instance set, an assignment):
//!   the current one first, then every change. A consumer that falls behind
//!   skips intermediate states and gets the latest, which is all a state
//!   needs; the producer never waits for it.
//! * An *error* feed keeps the latest [`ERROR_CAPACITY`] unread errors; when
//!   it is full, new errors are dropped (the producer never waits).
//!
//! Both end when their producer (the task) ends; the task ends when both
//! consumers are gone ([`Producer::consumers_gone`]).

use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::{mpsc, watch};

/// How many unread errors an error stream keeps.
pub(crate) const ERROR_CAPACITY: usize = 32;

/// The error stream of the recipes: failures a background task recovered
/// from (it keeps going), or, last, the one it could not (a closed store).
pub type ErrorStream = BoxStream<'static, anykv::Error>;

/// The producing side of a state feed and an error feed.
pub(crate) struct Producer<T> {
    state: watch::Sender<T>,
    errors: mpsc::Sender<anykv::Error>,
}

/// A state feed starting at `initial`, and an error feed, with their
/// consumer streams.
pub(crate) fn channel<T>(initial: T) -> (Producer<T>, BoxStream<'static, T>, ErrorStream)
where
    T: Clone + Send + Sync + 'static,
{
    let (state, state_rx) = watch::channel(initial);
    let (errors, errors_rx) = mpsc::channel(ERROR_CAPACITY);
    (
        Producer { state, errors },
        states(state_rx),
        error_stream(errors_rx),
    )
}

/// The current state of `rx` first, then each new one; ends with the sender.
pub(crate) fn states<T>(rx: watch::Receiver<T>) -> BoxStream<'static, T>
where
    T: Clone + Send + Sync + 'static,
{
    stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let item = rx.borrow_and_update().clone();
        Some((item, (rx, false)))
    })
    .boxed()
}

/// The errors of `rx`, until its sender is gone.
pub(crate) fn error_stream(rx: mpsc::Receiver<anykv::Error>) -> ErrorStream {
    stream::unfold(rx, |mut rx| async move {
        let error = rx.recv().await?;
        Some((error, rx))
    })
    .boxed()
}

impl<T> Producer<T> {
    /// Publishes a new state unless it equals the current one.
    pub(crate) fn publish(&self, next: T)
    where
        T: PartialEq,
    {
        self.state.send_if_modified(|current| {
            if *current == next {
                false
            } else {
                *current = next;
                true
            }
        });
    }

    /// Reports an error without waiting (dropped if the stream is full).
    pub(crate) fn report(&self, error: anykv::Error) {
        let _ = self.errors.try_send(error);
    }

    /// A receiver of the state feed (a view that needs the current state).
    pub(crate) fn subscribe(&self) -> watch::Receiver<T> {
        self.state.subscribe()
    }

    /// Resolves once both the state stream (and every subscriber) and the
    /// error stream are dropped.
    pub(crate) async fn consumers_gone(&self) {
        self.state.closed().await;
        self.errors.closed().await;
    }
}

/// The tokio runtime to run a background task on, or an error naming the
/// call (instead of the panic `tokio::spawn` would give).
pub(crate) fn runtime(key: &str, call: &str) -> anykv::Result<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current().map_err(|_| anykv::Error::InvalidArgument {
        key: key.to_owned(),
        reason: format!("{call} must be called within a tokio runtime"),
    })
}
