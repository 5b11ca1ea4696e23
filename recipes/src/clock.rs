//! Store time: how far the local clock is from the store server's clock.
//!
//! ```
//! # #[tokio::main] async fn main() -> anykv::Result<()> {
//! use anykv_recipes::clock::StoreClock;
//! use std::time::Duration;
//!
//! let store = anykv::open("memory://").await?;
//! let offset = StoreClock::new(store).offset().await?;
//! // The memory store's clock is the local clock.
//! assert!(offset.contains_zero());
//! assert!(offset.uncertainty() < Duration::from_millis(1));
//! println!("server clock {:+.6} s from ours", offset.as_secs_f64());
//! # Ok(()) }
//! ```
//!
//! Each sample is one [`anykv::Store::server_time`] call: the server read
//! its clock somewhere within the request's round trip and truncated it to
//! its resolution, so the sample bounds the offset (server minus local) to
//! an interval of half-width `round_trip/2 + resolution`. [`StoreClock`]
//! takes a few samples and intersects their intervals (falling back to the
//! narrowest one if they do not meet, e.g. after a clock step).
//!
//! Per backend (see [`anykv::Store::server_time`]): Redis `TIME` (1 µs),
//! ZooKeeper a znode's mtime (1 ms), Consul the HTTP `Date` header (1 s, so
//! only gross skew shows), the memory store its own (the local) clock;
//! etcd has no server clock in its API and answers
//! [`anykv::Error::Unsupported`].

use std::sync::Arc;
use std::time::Duration;

use anykv::{Result, ServerTime, Store};

/// How many samples [`StoreClock::offset`] takes by default.
pub const DEFAULT_SAMPLES: usize = 5;

/// Measures a store's clock against the local one.
#[derive(Clone, Debug)]
pub struct StoreClock {
    store: Arc<dyn Store>,
    samples: usize,
}

impl StoreClock {
    /// A clock reader for `store`, taking [`DEFAULT_SAMPLES`] samples.
    pub fn new(store: Arc<dyn Store>) -> Self {
        StoreClock {
            store,
            samples: DEFAULT_SAMPLES,
        }
    }

    /// Takes `samples` samples per measurement (at least one).
    pub fn with_samples(mut self, samples: usize) -> Self {
        self.samples = samples.max(1);
        self
    }

    /// Measures the offset of the server clock from the local clock.
    /// [`anykv::Error::Unsupported`] if the backend has no server clock;
    /// any other error of a sample is returned at once.
    pub async fn offset(&self) -> Result<ClockOffset> {
        let mut readings = Vec::with_capacity(self.samples);
        for _ in 0..self.samples {
            readings.push(self.store.server_time().await?);
        }
        Ok(ClockOffset::from_readings(&readings))
    }
}

/// The server clock minus the local clock, with its uncertainty: the true
/// offset lies within `as_nanos() ± uncertainty()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockOffset {
    nanos: i128,
    uncertainty: Duration,
    best: Option<ServerTime>,
}

impl ClockOffset {
    /// The offset the readings allow: the intersection of their intervals,
    /// or the narrowest reading's if they do not all meet. With no readings,
    /// zero with an unbounded uncertainty.
    pub fn from_readings(readings: &[ServerTime]) -> Self {
        let Some(best) = readings.iter().min_by_key(|r| r.uncertainty()).copied() else {
            return ClockOffset {
                nanos: 0,
                uncertainty: Duration::MAX,
                best: None,
            };
        };
        let bounds = |r: &ServerTime| {
            let half = r.uncertainty().as_nanos() as i128;
            (r.offset_nanos() - half, r.offset_nanos() + half)
        };
        let (mut low, mut high) = bounds(&best);
        for reading in readings {
            let (l, h) = bounds(reading);
            low = low.max(l);
            high = high.min(h);
        }
        if low > high {
            // The readings disagree (a clock stepped between them): trust
            // the narrowest one alone.
            (low, high) = bounds(&best);
        }
        let half = (high - low) / 2;
        ClockOffset {
            nanos: low + half,
            uncertainty: Duration::from_nanos(u64::try_from(half).unwrap_or(u64::MAX)),
            best: Some(best),
        }
    }

    /// The offset in nanoseconds; positive when the server clock is ahead.
    pub fn as_nanos(&self) -> i128 {
        self.nanos
    }

    /// The offset in seconds; positive when the server clock is ahead.
    pub fn as_secs_f64(&self) -> f64 {
        self.nanos as f64 / 1e9
    }

    /// How far the true offset may be from [`ClockOffset::as_nanos`].
    pub fn uncertainty(&self) -> Duration {
        self.uncertainty
    }

    /// True if the clocks may agree: zero lies within the uncertainty.
    pub fn contains_zero(&self) -> bool {
        self.nanos.unsigned_abs() <= self.uncertainty.as_nanos()
    }

    /// The reading with the smallest uncertainty (`None` only for an offset
    /// made from no readings).
    pub fn best_reading(&self) -> Option<&ServerTime> {
        self.best.as_ref()
    }
}
