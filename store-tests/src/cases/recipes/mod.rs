//! The recipes of anykv-recipes on this backend. One group, `recipes`, whose
//! case names start with the recipe they prove.

mod cron;
mod leader;
pub(crate) mod queue;

/// Every case of the recipes group.
pub(crate) fn cases() -> Vec<crate::cases::Case> {
    [leader::cases(), cron::cases(), queue::cases()]
        .into_iter()
        .flatten()
        .collect()
}
