//! The recipes of anykv-recipes on this backend. One group, `recipes`, whose
//! case names start with the recipe they prove.

/// Every case of the recipes group.
pub(crate) fn cases() -> Vec<crate::cases::Case> {
    Vec::new()
}
