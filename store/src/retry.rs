//! Retry pacing: the one [`Backoff`] every retry loop of anykv uses (the
//! backends, their sessions and watches, and `anykv-leadership`), and the
//! crate's loop for work that must not give up on a transient failure (a
//! lock release, a cleanup), bounded by the life of its session.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::Result;

/// First delay after a failure.
const BASE: Duration = Duration::from_millis(50);
/// Longest delay: a store coming back is noticed within about a second.
const CAP: Duration = Duration::from_secs(1);

/// Exponential backoff with jitter between failed attempts: 50 ms doubling
/// up to 1 s, each delay scaled by a random factor in [0.5, 1.0] so that
/// many clients that failed together do not retry in lockstep.
///
/// ```
/// use std::time::Duration;
/// let mut backoff = anykv::retry::Backoff::new();
/// let first = backoff.next_delay();
/// assert!(first >= Duration::from_millis(25) && first <= Duration::from_millis(50));
/// for _ in 0..10 {
///     assert!(backoff.next_delay() <= Duration::from_secs(1));
/// }
/// backoff.reset(); // after a success
/// assert!(backoff.next_delay() <= Duration::from_millis(50));
/// ```
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
    random: std::collections::hash_map::RandomState,
}

impl Backoff {
    /// A backoff at its first delay.
    pub fn new() -> Self {
        Self::default()
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The delay before the next attempt; each call counts one failure.
    pub fn next_delay(&mut self) -> Duration {
        let exponent = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        let full = BASE.saturating_mul(1 << exponent).min(CAP);
        let mut hasher = self.random.build_hasher();
        hasher.write_u32(self.failures);
        let fraction = 0.5 + (hasher.finish() % 1000) as f64 / 2000.0;
        full.mul_f64(fraction)
    }
}

/// 64 random bits: a process-wide counter hashed with per-process random
/// keys (std's `RandomState`), so two calls, in one process or two, repeat
/// each other only by a 2^-64 chance.
/// For identifiers and stamps, not for secrets.
#[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
pub(crate) fn random_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = KEYS
        .get_or_init(std::collections::hash_map::RandomState::new)
        .build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

/// `full` scaled by a random factor in [0.5, 1.0], so that callers that
/// collided do not collide again in step.
pub(crate) fn jitter(full: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new();
    let fraction = 0.5 + (random.build_hasher().finish() % 1000) as f64 / 2000.0;
    full.mul_f64(fraction)
}

/// Runs `attempt` until it returns anything but a transient error, or until
/// `ended` is cancelled between attempts (the session ended or the store closed: whatever the
/// attempt was for is settled by the session's end). Returns the last
/// attempt's result.
pub(crate) async fn until_settled<T, F, Fut>(ended: &CancellationToken, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut backoff = Backoff::default();
    loop {
        // An attempt is bounded by the backend's request timeout.
        match attempt().await {
            Err(error) if error.is_transient() && !ended.is_cancelled() => {
                tracing::debug!(%error, "retrying after a transient failure");
                tokio::select! {
                    biased;
                    () = ended.cancelled() => return Err(error),
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn transient() -> Error {
        Error::Timeout {
            operation: "test",
            target: "k".into(),
            after: Duration::from_millis(1),
        }
    }

    #[tokio::test]
    async fn retries_transient_failures_until_success() {
        let calls = Arc::new(AtomicU32::new(0));
        let ended = CancellationToken::new();
        let c = calls.clone();
        let out = until_settled(&ended, move || {
            let c = c.clone();
            async move {
                if c.fetch_add(1, Ordering::SeqCst) < 5 {
                    Err(transient())
                } else {
                    Ok(7)
                }
            }
        })
        .await;
        assert_eq!(out.ok(), Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn stops_at_a_final_error_or_when_the_session_ends() {
        let ended = CancellationToken::new();
        let out: Result<()> = until_settled(&ended, || async { Err(Error::not_found("k")) }).await;
        assert!(matches!(out, Err(Error::KeyNotFound { .. })));

        let ended = CancellationToken::new();
        let e2 = ended.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            e2.cancel();
        });
        let out: Result<()> = until_settled(&ended, || async { Err(transient()) }).await;
        assert!(matches!(out, Err(ref e) if e.is_transient()));
    }

    #[test]
    fn delays_stay_within_the_cap() {
        let mut b = Backoff::default();
        for _ in 0..40 {
            let d = b.next_delay();
            assert!(d <= CAP && d >= BASE / 2, "{d:?}");
        }
    }
}
