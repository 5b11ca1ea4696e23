//! The metrics anykv records, through the
//! [`metrics`](https://docs.rs/metrics) facade crate, when it is built with
//! the cargo feature `metrics`.
//!
//! Without the feature no metrics code is compiled: there is no cost at all.
//! With it, anykv installs no recorder: an application that wants these
//! figures installs one (a Prometheus exporter, say) with
//! `metrics::set_global_recorder` or its exporter's `install`, and every
//! store handle reports to it from then on. The facade offers no way to ask
//! whether a recorder is installed, so with the feature on and no recorder
//! each operation still reads the monotonic clock twice and builds its
//! metric keys: measured on the memory store (an in-process map, where this
//! shows most) as about a quarter of its throughput — 3.0 M instead of 4.1 M
//! put/get operations per second in one task, on the machine of
//! `docs/benchmarks.md`; on a networked backend it is below the run-to-run
//! noise of one round trip.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `anykv_operations_total` | counter | `backend`, `op`, `outcome` | operations of the [`Store`](crate::Store) methods (`op`: `get`, `put`, `delete`, `list`, `delete_tree`, `watch`, `watch_tree`, `watch_tree_changes`, `new_lock`, `server_time`, `close`; `outcome`: `ok` or `error`) |
//! | `anykv_operation_duration_seconds` | histogram | `backend`, `op` | how long each of those took, failures included |
//! | `anykv_watch_reconnects_total` | counter | `backend` | times a watch or tree watch lost its server-side stream and opened a new one |
//! | `anykv_lock_wait_seconds` | histogram | `backend` | from [`Lock::lock`](crate::Lock::lock) or `try_lock` to the guard, for acquisitions that succeeded |
//! | `anykv_lock_acquisitions_total` | counter | `backend`, `outcome` | lock and try_lock calls that ended (`outcome`: `acquired`, `locked` (try_lock on a held lock), `error`) |
//!
//! The leadership crate adds `anykv_elections_won_total` (counter) and
//! `anykv_elections_lost_total` (counter, by `reason`: `lock_lost`,
//! `resigned`, `stopped`); see its docs.
//!
//! Keys are never labels: their number is unbounded, and a metrics backend
//! keeps one series per label set. `backend` is the URL scheme's backend
//! name (`etcd`, `consul`, `zookeeper`, `redis`, `memory`) or, for a lock of
//! a third-party backend, `custom`.

#[cfg(feature = "metrics")]
use std::time::Duration;

#[cfg(feature = "metrics")]
use crate::error::{Error, Result};

/// Counter: operations by `backend`, `op` and `outcome`.
pub const OPERATIONS_TOTAL: &str = "anykv_operations_total";
/// Histogram (seconds): operation durations by `backend` and `op`.
pub const OPERATION_DURATION_SECONDS: &str = "anykv_operation_duration_seconds";
/// Counter: watch reconnects by `backend`.
pub const WATCH_RECONNECTS_TOTAL: &str = "anykv_watch_reconnects_total";
/// Histogram (seconds): time to a lock guard by `backend`.
pub const LOCK_WAIT_SECONDS: &str = "anykv_lock_wait_seconds";
/// Counter: ended lock acquisitions by `backend` and `outcome`.
pub const LOCK_ACQUISITIONS_TOTAL: &str = "anykv_lock_acquisitions_total";

/// Records one finished operation.
#[cfg(feature = "metrics")]
pub(crate) fn operation(backend: &'static str, op: &'static str, ok: bool, took: Duration) {
    let outcome = if ok { "ok" } else { "error" };
    ::metrics::counter!(OPERATIONS_TOTAL, "backend" => backend, "op" => op, "outcome" => outcome)
        .increment(1);
    ::metrics::histogram!(OPERATION_DURATION_SECONDS, "backend" => backend, "op" => op)
        .record(took.as_secs_f64());
}

/// Records that a watch of `backend` reconnected.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
#[allow(dead_code)] // unused when only the memory store is compiled
pub(crate) fn watch_reconnect(backend: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(WATCH_RECONNECTS_TOTAL, "backend" => backend).increment(1);
}

/// Records the end of a lock acquisition that took `waited`.
#[cfg(feature = "metrics")]
pub(crate) fn lock_acquisition<T>(backend: &'static str, waited: Duration, outcome: &Result<T>) {
    let label = match outcome {
        Ok(_) => {
            ::metrics::histogram!(LOCK_WAIT_SECONDS, "backend" => backend)
                .record(waited.as_secs_f64());
            "acquired"
        }
        Err(Error::Locked { .. }) => "locked",
        Err(_) => "error",
    };
    ::metrics::counter!(LOCK_ACQUISITIONS_TOTAL, "backend" => backend, "outcome" => label)
        .increment(1);
}
