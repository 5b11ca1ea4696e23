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
