//! The partitioner (anykv-recipes' `Partitioner`) on this backend: after
//! every membership change — a join, a leave, a lost session — each live
//! member's own view converges on the live members, and then every key of a
//! sample has exactly one owner.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anykv::{Error, Store, StoreExt};
use anykv_recipes::partitioner::{Membership, Partitioner};

use crate::harness::{eventually, CaseResult, Ctx, Done, PATIENCE};

crate::cases::cases!("recipes":
    partitioner_every_key_has_one_owner_after_each_join_leave_and_session_loss,
);

const GROUP: &str = "workers";
const SAMPLE: usize = 1000;

/// A member on a handle of its own.
struct Member {
    store: Arc<dyn Store>,
    membership: Membership,
}

async fn join(cx: &Ctx, id: &str) -> Result<Member, Error> {
    let store = cx.store().await;
    let membership = Partitioner::new(store.clone(), GROUP, id).join().await?;
    Ok(Member { store, membership })
}

/// Waits until every member's own view shows exactly the live members, then
/// checks that each key of the sample is owned by exactly one of them, and
/// that every member owns some.
async fn converged(members: &BTreeMap<&str, Member>, step: &str) {
    let live: Vec<String> = members.keys().map(|id| (*id).to_owned()).collect();
    for (id, member) in members {
        eventually(PATIENCE, &format!("{step}: {id}'s view"), || async {
            member.membership.assignment().members() == live.as_slice()
        })
        .await;
    }
    let views: Vec<_> = members
        .values()
        .map(|m| m.membership.assignment())
        .collect();
    let mut owned = vec![0usize; views.len()];
    for k in 0..SAMPLE {
        let key = format!("orders/{k}");
        let owners: Vec<usize> = (0..views.len()).filter(|&m| views[m].owns(&key)).collect();
        assert_eq!(
            owners.len(),
            1,
            "{step}: {key} has owners {owners:?} of {live:?}"
        );
        owned[owners[0]] += 1;
    }
    for (m, count) in owned.iter().enumerate() {
        // Rendezvous hashing spreads the sample: far from nothing for anyone.
        assert!(
            *count > SAMPLE / (4 * views.len()),
            "{step}: {} owns only {count} of {SAMPLE} keys",
            live[m]
        );
    }
}

async fn partitioner_every_key_has_one_owner_after_each_join_leave_and_session_loss(
    cx: Ctx,
) -> CaseResult {
    let mut members = BTreeMap::new();
    for id in ["a", "b", "c"] {
        members.insert(id, join(&cx, id).await?);
        converged(&members, &format!("{id} joined")).await;
    }

    let b = members.remove("b").ok_or("b is a member")?;
    b.membership.leave().await?;
    converged(&members, "b left").await;

    // c loses its session: its key goes, comes back, and the views follow.
    let observer = cx.store().await;
    let c = members.get("c").ok_or("c is a member")?;
    let c_key = c.membership.key().to_owned();
    let before = observer.get(&c_key).await?.last_index;
    match c.store.session().expire().await {
        // Nothing to lose on purpose here; the other changes still count.
        Err(Error::Unsupported { .. }) => {}
        other => {
            other?;
            eventually(PATIENCE, "c registered again", || async {
                matches!(observer.get_opt(&c_key).await, Ok(Some(p)) if p.last_index > before)
            })
            .await;
            converged(&members, "c lost its session").await;
        }
    }

    members.insert("d", join(&cx, "d").await?);
    converged(&members, "d joined").await;

    // A dropped member is gone from every view too.
    drop(members.remove("a"));
    converged(&members, "a dropped").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(Done::Passed)
}
