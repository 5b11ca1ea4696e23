//! Deadlines: the one checked `Instant + Duration` and the one renewal
//! schedule of session leases, lock keys and TTL sessions.

use std::time::Duration;

use tokio::time::Instant;

/// `at + after`, or `at` itself if the sum is beyond the clock's range
/// (only with durations of centuries). Every caller uses it for a deadline
/// or a next attempt, and earlier is the safe side of both: a renewal sent
/// early, a loss reported early.
pub(crate) fn later(at: Instant, after: Duration) -> Instant {
    at.checked_add(after).unwrap_or(at)
}

/// When something with a server-side TTL is renewed, and when its holder
/// must treat it as lost.
///
/// It is renewed every `ttl / 3`, so two renewals can fail before the
/// deadline. The deadline is `ttl − ttl / 10` after the *send* time of the
/// last confirmed renewal: the server's TTL clock started no earlier than
/// that send, so the server cannot have expired it (and handed its locks to
/// anyone) before the holder is told, with a tenth of the TTL left for
/// clock-rate differences and the holder's own reaction.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(
    not(any(feature = "etcd", feature = "consul", feature = "redis")),
    allow(dead_code)
)]
pub(crate) struct Renewal {
    ttl: Duration,
}

#[cfg_attr(
    not(any(feature = "etcd", feature = "consul", feature = "redis")),
    allow(dead_code)
)]
impl Renewal {
    pub(crate) fn new(ttl: Duration) -> Self {
        Renewal { ttl }
    }

    /// How often to renew.
    pub(crate) fn interval(&self) -> Duration {
        self.ttl / 3
    }

    /// When the next renewal is due after one sent at `sent`.
    pub(crate) fn next(&self, sent: Instant) -> Instant {
        later(sent, self.interval())
    }

    /// The loss deadline after a renewal sent at `sent` was confirmed.
    pub(crate) fn deadline(&self, sent: Instant) -> Instant {
        later(sent, self.ttl.saturating_sub(self.ttl / 10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_never_overflow_and_keep_a_margin() {
        let now = Instant::now();
        assert_eq!(later(now, Duration::MAX), now);
        let renewal = Renewal::new(Duration::from_secs(10));
        assert_eq!(
            renewal.interval(),
            Duration::from_millis(3333) + Duration::from_nanos(333_333)
        );
        assert_eq!(renewal.deadline(now) - now, Duration::from_secs(9));
        assert!(renewal.next(now) < renewal.deadline(now));
        assert_eq!(Renewal::new(Duration::MAX).deadline(now), now);
    }
}
