//! The recipes of anykv-recipes on this backend. One group, `recipes`, whose
//! case names start with the recipe they prove.

mod clock;
mod cron;
pub(crate) mod discovery;
mod leader;
mod partitioner;
pub(crate) mod queue;
mod semaphore;

/// Every case of the recipes group.
pub(crate) fn cases() -> Vec<crate::cases::Case> {
    [
        leader::cases(),
        cron::cases(),
        queue::cases(),
        discovery::cases(),
        semaphore::cases(),
        partitioner::cases(),
        clock::cases(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Known defect, reported instead of a flaky failure: on ZooKeeper a handle
/// whose session is ended on purpose (`Session::expire`) while its recipe
/// tasks are busy can stall for good in opening the next session (the
/// connect attempt's own timeout never fires; seen in about half of the
/// runs of this case alone). The plain session cases pass; this one needs
/// the backend fixed first.
pub(crate) const ZK_EXPIRE_STALL: &str = "known defect: a ZooKeeper handle can stall opening its next session after Session::expire while recipe tasks are busy (see the README's known limits)";
