//! Candidate behaviour at the edges of a lock's life that the store decides:
//! a loss the campaign has not processed yet, and a release that takes
//! longer than any timeout a caller would pick.
//!
//! The store is a minimal third-party backend over the memory store whose
//! locks the test controls: it can fire a guard's loss by hand and make a
//! release take a given time. Everything else is the memory store.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anykv::{
    async_trait, Bytes, Capabilities, DeleteOptions, KvPair, Lock, LockBackend, LockGuard,
    LockOptions, LossTrigger, PutOptions, Result, Session, Store, TreeWatchStream, WatchStream,
};
use anykv_leadership::{Candidate, Follower};
use futures::{Stream, StreamExt};

const PATIENCE: Duration = Duration::from_secs(20);

async fn next<S: Stream + Unpin>(stream: &mut S) -> S::Item {
    match tokio::time::timeout(PATIENCE, stream.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("the stream ended"),
        Err(_) => panic!("nothing arrived within {PATIENCE:?}"),
    }
}

/// What the controlled locks do; shared by the test and the store.
#[derive(Debug, Default)]
struct Control {
    /// The loss tokens of the guards handed out, newest last.
    losses: Mutex<Vec<LossTrigger>>,
    /// How long a release takes before it reaches the inner lock.
    release_delay: Mutex<Duration>,
}

#[derive(Debug)]
struct Controlled {
    inner: Arc<dyn Store>,
    control: Arc<Control>,
}

#[derive(Debug)]
struct ControlledLock {
    inner: Lock,
    control: Arc<Control>,
}

#[async_trait]
impl LockBackend for ControlledLock {
    async fn acquire(&self, wait: bool) -> Result<LockGuard> {
        let guard = if wait {
            self.inner.lock().await?
        } else {
            self.inner.try_lock().await?
        };
        let lost = LossTrigger::new();
        self.control
            .losses
            .lock()
            .expect("losses")
            .push(lost.clone());
        let token = guard.fencing_token();
        let key = guard.key().to_string();
        let control = self.control.clone();
        let release = Box::pin(async move {
            let delay = *control.release_delay.lock().expect("delay");
            tokio::time::sleep(delay).await;
            guard.unlock().await
        });
        Ok(LockGuard::new(key, token, lost, release, None))
    }
}

#[async_trait]
impl Store for Controlled {
    async fn get_opt(&self, key: &str) -> Result<Option<KvPair>> {
        self.inner.get_opt(key).await
    }
    async fn put_opts(&self, key: &str, value: Bytes, options: PutOptions) -> Result<KvPair> {
        self.inner.put_opts(key, value, options).await
    }
    async fn delete_opts(&self, key: &str, options: DeleteOptions) -> Result<()> {
        self.inner.delete_opts(key, options).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<KvPair>> {
        self.inner.list(prefix).await
    }
    async fn delete_tree(&self, prefix: &str) -> Result<()> {
        self.inner.delete_tree(prefix).await
    }
    async fn watch(&self, key: &str) -> Result<WatchStream> {
        self.inner.watch(key).await
    }
    async fn watch_tree(&self, prefix: &str) -> Result<TreeWatchStream> {
        self.inner.watch_tree(prefix).await
    }
    async fn new_lock(&self, key: &str, options: LockOptions) -> Result<Lock> {
        let inner = self.inner.new_lock(key, options).await?;
        Ok(Lock::new(
            key,
            Arc::new(ControlledLock {
                inner,
                control: self.control.clone(),
            }),
        ))
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn session(&self) -> Session {
        self.inner.session()
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

async fn controlled(name: &str) -> (Arc<dyn Store>, Arc<Control>) {
    let inner = anykv::open(&format!("memory://lock-edges-{name}"))
        .await
        .expect("memory store");
    let control = Arc::new(Control::default());
    let store: Arc<dyn Store> = Arc::new(Controlled {
        inner,
        control: control.clone(),
    });
    (store, control)
}

/// `is_leader()` and `leader_token()` must observe the guard itself: once
/// the lock's `lost()` fired, they say "not leader" at once, even before
/// the campaign's task has run to announce it.
#[test]
fn is_leader_is_false_as_soon_as_the_guard_is_lost() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (store, control) = controlled("lost").await;
        let candidate = Candidate::new(store, "leader", "n1");
        let (mut elected, _errors) = candidate.run_for_election().await.expect("run");
        assert!(!next(&mut elected).await);
        assert!(next(&mut elected).await);
        assert!(candidate.is_leader());
        let loss = control
            .losses
            .lock()
            .expect("losses")
            .last()
            .cloned()
            .expect("a guard was handed out");
        // No await between the loss and the reads: on this single-threaded
        // runtime the campaign's task cannot have run yet.
        loss.fire();
        assert!(
            !candidate.is_leader(),
            "is_leader() still true after the guard's lost() fired"
        );
        assert_eq!(candidate.leader_token(), None);
        assert!(!next(&mut elected).await);
        candidate.stop().await;
    });
}

/// A resigning leader whose release takes longer than any timeout it could
/// pick (7 s here) must neither leave the lock behind nor queue behind its
/// own unreleased lock: the other candidate is elected once the release
/// completes, and a follower names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_release_is_completed_and_the_other_candidate_is_elected() {
    let (store, control) = controlled("slow").await;
    let a = Candidate::new(store.clone(), "leader", "a");
    let (mut a_elected, _a_errors) = a.run_for_election().await.expect("run a");
    assert!(!next(&mut a_elected).await);
    assert!(next(&mut a_elected).await);
    let b = Candidate::new(store.clone(), "leader", "b");
    let (mut b_elected, _b_errors) = b.run_for_election().await.expect("run b");
    assert!(!next(&mut b_elected).await);

    let delay = Duration::from_secs(7);
    *control.release_delay.lock().expect("delay") = delay;
    let follower = Follower::new(store.clone(), "leader");
    let (mut leaders, _follower_errors) = follower.follow_election().await.expect("follow");

    let started = Instant::now();
    a.resign().await;
    assert!(!a.is_leader());
    // b takes over once a's release is through, not never.
    assert!(next(&mut b_elected).await, "b was never elected");
    let took = started.elapsed();
    assert!(
        took >= delay,
        "b elected after {took:?}, before a's release completed"
    );
    assert!(!a.is_leader(), "a leads again while b leads");
    // The follower ends up naming b.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = next(&mut leaders).await;
        if seen.as_deref() == Some("b") {
            break;
        }
        assert!(Instant::now() < deadline, "follower never named b");
    }
    a.stop().await;
    b.stop().await;
}
