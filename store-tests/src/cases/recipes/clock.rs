//! Store time (anykv's `Store::server_time` and anykv-recipes'
//! `StoreClock`) on this backend: where the backend has a server clock, the
//! measured offset is zero within its stated uncertainty (the servers of
//! the suite run on this machine, so the clocks are one); where it has none,
//! the answer is `Unsupported`.

use std::time::Duration;

use anykv::{Error, Store};
use anykv_recipes::clock::StoreClock;

use crate::harness::{CaseResult, Ctx, Done};

crate::cases::cases!("recipes":
    clock_offset_is_zero_within_its_uncertainty_or_unsupported,
);

/// The resolution each built-in backend states for its clock; `None` for a
/// built-in backend without one. Other (third-party) backends may do either.
fn expected(backend: &str) -> Option<Option<Duration>> {
    match backend {
        "memory" => Some(Some(Duration::from_nanos(1))),
        "redis" => Some(Some(Duration::from_micros(1))),
        "zookeeper" => Some(Some(Duration::from_millis(1))),
        "consul" => Some(Some(Duration::from_secs(1))),
        "etcd" => Some(None),
        _ => None,
    }
}

async fn clock_offset_is_zero_within_its_uncertainty_or_unsupported(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let backend = store.capabilities().backend;
    let expected = expected(backend);
    let reading = store.server_time().await;
    let offset = StoreClock::new(store.clone())
        .with_samples(3)
        .offset()
        .await;
    match (expected, reading, offset) {
        (Some(None) | None, Err(Error::Unsupported { .. }), Err(Error::Unsupported { .. })) => {}
        (Some(None), reading, offset) => {
            return Err(format!(
                "{backend} has no server clock, yet answered {reading:?} / {offset:?}"
            )
            .into())
        }
        (Some(Some(resolution)), Ok(reading), Ok(offset)) => {
            assert_eq!(
                reading.resolution, resolution,
                "{backend}'s stated resolution"
            );
            check(&reading, &offset);
        }
        (None, Ok(reading), Ok(offset)) => check(&reading, &offset),
        (_, reading, offset) => {
            return Err(format!("{backend}: server_time {reading:?}, offset {offset:?}").into())
        }
    }
    Ok(Done::Passed)
}

/// The single reading and the measured offset both allow zero.
fn check(reading: &anykv::ServerTime, offset: &anykv_recipes::ClockOffset) {
    assert!(
        reading.offset_nanos().unsigned_abs() <= reading.uncertainty().as_nanos(),
        "one reading puts the server clock {} ns off, beyond ±{:?}: {reading:?}",
        reading.offset_nanos(),
        reading.uncertainty()
    );
    assert!(
        offset.contains_zero(),
        "the measured offset {} ns ± {:?} excludes zero",
        offset.as_nanos(),
        offset.uncertainty()
    );
}
