//! A single-producer, single-consumer queue whose sender never waits.
//!
//! When the consumer falls `capacity` items behind, the oldest item is
//! dropped to make room: the producer (a campaign or follow task) must never
//! be slowed down by a consumer that does not read.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::Notify;

struct Shared<T> {
    state: Mutex<State<T>>,
    notify: Notify,
}

struct State<T> {
    queue: VecDeque<T>,
    capacity: usize,
    sender_alive: bool,
    receiver_alive: bool,
    dropped: u64,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every critical section is a single queue operation; a poisoned lock
        // cannot hold a half-made change.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The producing side. Dropping it ends the stream once it is drained.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The consuming side.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// A queue holding at most `capacity` (at least 1) unread items.
pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            sender_alive: true,
            receiver_alive: true,
            dropped: 0,
        }),
        notify: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

impl<T> Sender<T> {
    /// Queues `item` without waiting, dropping the oldest unread item if the
    /// queue is full. Returns the number of items dropped so far, or `None`
    /// if the receiver is gone (the item is discarded).
    pub(crate) fn send(&self, item: T) -> Option<u64> {
        let mut state = self.shared.lock();
        if !state.receiver_alive {
            return None;
        }
        if state.queue.len() >= state.capacity {
            state.queue.pop_front();
            state.dropped += 1;
        }
        state.queue.push_back(item);
        let dropped = state.dropped;
        drop(state);
        // One consumer: a stored permit covers a wake-up that races with it.
        self.shared.notify.notify_one();
        Some(dropped)
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.lock().sender_alive = false;
        self.shared.notify.notify_one();
    }
}

impl<T> Receiver<T> {
    /// The next item; `None` once the sender is gone and the queue is empty.
    pub(crate) async fn recv(&self) -> Option<T> {
        loop {
            {
                let mut state = self.shared.lock();
                if let Some(item) = state.queue.pop_front() {
                    return Some(item);
                }
                if !state.sender_alive {
                    return None;
                }
            }
            self.shared.notify.notified().await;
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_alive = false;
        state.queue.clear();
    }
}

impl<T: Send + 'static> Receiver<T> {
    /// The receiver as a stream; `keep` is held as long as the stream lives
    /// (used to tell a task that its consumers are gone).
    pub(crate) fn into_stream<K: Send + 'static>(self, keep: K) -> BoxStream<'static, T> {
        stream::unfold((self, keep), |(rx, keep)| async move {
            let item = rx.recv().await?;
            Some((item, (rx, keep)))
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_drops_the_oldest_item_and_never_blocks() {
        let (tx, rx) = channel(2);
        assert_eq!(tx.send(1), Some(0));
        assert_eq!(tx.send(2), Some(0));
        assert_eq!(tx.send(3), Some(1));
        drop(tx);
        let items: Vec<i32> = rx.into_stream(()).collect().await;
        assert_eq!(items, vec![2, 3]);
    }

    #[tokio::test]
    async fn send_after_the_receiver_is_gone_reports_none() {
        let (tx, rx) = channel::<u8>(4);
        drop(rx);
        assert_eq!(tx.send(1), None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_on_send_and_on_sender_drop() {
        let (tx, rx) = channel(4);
        let reader = tokio::spawn(async move {
            let mut items = Vec::new();
            while let Some(item) = rx.recv().await {
                items.push(item);
            }
            items
        });
        tokio::task::yield_now().await;
        tx.send("a");
        tokio::task::yield_now().await;
        tx.send("b");
        drop(tx);
        assert_eq!(reader.await.ok(), Some(vec!["a", "b"]));
    }
}
