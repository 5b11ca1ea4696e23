//! Exponential backoff with jitter between failed attempts.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// First delay after a failure.
pub(crate) const BASE: Duration = Duration::from_millis(50);
/// Longest delay. Short enough that a store coming back is noticed within
/// about two seconds; long enough not to hammer a store that is down.
pub(crate) const CAP: Duration = Duration::from_secs(2);

/// Delays between consecutive failures: `BASE`, doubling up to `CAP`, each
/// scaled by a random factor in [0.5, 1.0] so that many candidates that lost
/// the store together do not come back in lockstep.
#[derive(Debug)]
pub(crate) struct Backoff {
    failures: u32,
    random: RandomState,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff {
            failures: 0,
            random: RandomState::new(),
        }
    }

    /// Back to the first delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// The delay before the next attempt; each call counts one more failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let exponent = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        let full = BASE.saturating_mul(1 << exponent).min(CAP);
        let mut hasher = self.random.build_hasher();
        hasher.write_u32(self.failures);
        // 0.5 + [0, 0.5): never zero, never above the full delay.
        let fraction = 0.5 + (hasher.finish() % 1000) as f64 / 2000.0;
        full.mul_f64(fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::new();
        let first = backoff.next_delay();
        assert!(first >= BASE / 2 && first <= BASE, "{first:?}");
        for _ in 0..20 {
            let d = backoff.next_delay();
            assert!(d <= CAP, "{d:?}");
        }
        assert!(backoff.next_delay() >= CAP / 2);
        backoff.reset();
        assert!(backoff.next_delay() <= BASE);
    }
}
