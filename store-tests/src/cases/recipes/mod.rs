//! The recipes of anykv-recipes on this backend. One group, `recipes`, whose
//! case names start with the recipe they prove.

mod clock;
pub(crate) mod discovery;
mod partitioner;
mod semaphore;

/// Every case of the recipes group.
pub(crate) fn cases() -> Vec<crate::cases::Case> {
    Vec::new()
        .into_iter()
        .chain(discovery::cases())
        .chain(semaphore::cases())
        .chain(partitioner::cases())
        .chain(clock::cases())
        .collect()
}
