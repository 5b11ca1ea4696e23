//! The cases, by group. Each case is an `async fn(Ctx) -> CaseResult` whose
//! name says the behaviour it proves.

use futures::future::BoxFuture;

use crate::harness::{CaseResult, Ctx};

mod atomic;
mod bad_input;
mod basic;
mod close;
mod ephemeral;
mod keys;
mod leadership;
mod list;
mod lock;
mod modes;
pub(crate) mod recipes;
mod session;
mod ttl;
mod watch;
mod watch_tree;

/// One named case.
pub(crate) struct Case {
    pub(crate) group: &'static str,
    pub(crate) name: &'static str,
    pub(crate) run: fn(Ctx) -> BoxFuture<'static, CaseResult>,
}

/// Lists the async fns of a group module as `Case`s.
macro_rules! cases {
    ($group:literal: $($name:ident),* $(,)?) => {
        pub(crate) fn cases() -> Vec<crate::cases::Case> {
            vec![$(crate::cases::Case {
                group: $group,
                name: stringify!($name),
                run: |ctx| Box::pin($name(ctx)),
            }),*]
        }
    };
}
pub(crate) use cases;

/// Every case of every group.
pub(crate) fn all() -> Vec<Case> {
    [
        keys::cases(),
        basic::cases(),
        list::cases(),
        atomic::cases(),
        modes::cases(),
        ttl::cases(),
        ephemeral::cases(),
        session::cases(),
        watch::cases(),
        watch_tree::cases(),
        lock::cases(),
        close::cases(),
        bad_input::cases(),
        leadership::cases(),
        recipes::cases(),
    ]
    .into_iter()
    .flatten()
    .collect()
}
