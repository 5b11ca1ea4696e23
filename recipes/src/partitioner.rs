//! A partitioner: the members of a group share a key space by rendezvous
//! (highest-random-weight) hashing, and each member follows who owns what
//! as members come and go.
//!
//! ```
//! # #[tokio::main] async fn main() -> anykv::Result<()> {
//! use anykv_recipes::partitioner::Partitioner;
//! use futures::StreamExt;
//!
//! let store = anykv::open("memory://partitioner-doc").await?;
//! let a = Partitioner::new(store.clone(), "workers", "a").join().await?;
//! let b = Partitioner::new(store.clone(), "workers", "b").join().await?;
//! let mut changes = a.changes();
//! let mut view = changes.next().await.unwrap();
//! while view.members().len() < 2 {
//!     view = changes.next().await.unwrap(); // a learns of b
//! }
//! let key = "orders/42";
//! assert_eq!(view.owner(key), Some(if view.owns(key) { "a" } else { "b" }));
//! b.leave().await?;
//! while a.assignment().members().len() > 1 {
//!     changes.next().await;
//! }
//! assert!(a.assignment().owns(key)); // a alone owns every key
//! # Ok(()) }
//! ```
//!
//! # How it works
//! A member is a session-bound key `<group>/members/<id>` (written and kept
//! like a [discovery](crate::discovery) registration: again after a session
//! loss, deleted on leave or drop, gone within the session TTL after a
//! crash). Each member watches the group with [`anykv::Store::watch_tree`]
//! and turns every member set into an [`Assignment`]: key `k` belongs to the
//! member `m` with the highest [`score`]`(m, k)`. The score is a hash written
//! here (FNV-1a, then a SplitMix64 finaliser), fixed forever, so every
//! process, version and platform agrees on it. When a member joins, it takes
//! about `1/n` of the keys, each from one other member; when one leaves, only
//! its keys move.
//!
//! Members agree once their views agree: during a change, two members may
//! briefly both (or neither) claim a key, for about one watch round trip.
//! Work that must never run twice needs a lock or fencing on top.

use std::sync::Arc;

use anykv::{Result, Store};
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::watch;

use crate::discovery::{Discovery, Instance, Registration};
use crate::feed::{self, ErrorStream};

/// The stream of [`Membership::changes`]: the current assignment first, then
/// every change of the member set.
pub type AssignmentStream = BoxStream<'static, Assignment>;

/// The service name of the members below a group.
const MEMBERS: &str = "members";

/// The stable rendezvous score of `member` for `key`: the key is owned by
/// the member with the highest score (ties, practically never seen, go to
/// the greater member id).
pub fn score(member: &str, key: &str) -> u64 {
    // FNV-1a over key, a separator byte UTF-8 never contains, and member.
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in key
        .as_bytes()
        .iter()
        .chain(std::iter::once(&0xff))
        .chain(member.as_bytes())
    {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    // SplitMix64's finaliser: FNV's low bits alone mix poorly.
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The owner of `key` among `members`: the one with the highest
/// [`score`]. `None` if there are no members.
pub fn owner_of<'a>(members: &'a [String], key: &str) -> Option<&'a str> {
    members
        .iter()
        .max_by(|a, b| {
            score(a, key)
                .cmp(&score(b, key))
                .then_with(|| a.as_str().cmp(b.as_str()))
        })
        .map(String::as_str)
}

/// One member's view of the group: who is in it, and so who owns which key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    me: Arc<str>,
    members: Arc<[String]>,
}

impl Assignment {
    fn new(me: Arc<str>, members: Vec<String>) -> Self {
        Assignment {
            me,
            members: members.into(),
        }
    }

    /// The members in this view, sorted by id.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// The id of the member whose view this is.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// True if this member is in its own view (it is registered): a member
    /// whose key is gone owns nothing until it is written again.
    pub fn is_member(&self) -> bool {
        self.members.iter().any(|m| **m == *self.me)
    }

    /// The owner of `key` in this view; `None` if the group is empty.
    pub fn owner(&self, key: &str) -> Option<&str> {
        owner_of(&self.members, key)
    }

    /// True if this member owns `key` in this view.
    pub fn owns(&self, key: &str) -> bool {
        self.owner(key) == Some(&*self.me)
    }
}

/// Joins members to a group.
#[derive(Clone, Debug)]
pub struct Partitioner {
    discovery: Discovery,
    group: String,
    member: String,
}

impl Partitioner {
    /// The member `member` of `group` on `store` (its handle's session owns
    /// the membership). Ids must be non-empty and free of `/`.
    pub fn new(store: Arc<dyn Store>, group: impl Into<String>, member: impl Into<String>) -> Self {
        let group = group.into();
        Partitioner {
            discovery: Discovery::new(store, group.clone()),
            group,
            member: member.into(),
        }
    }

    /// The group's key prefix.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Registers this member and starts following the group. Returns once
    /// the member key is written and the first member set is read (which
    /// includes this member, unless it was lost meanwhile).
    pub async fn join(&self) -> Result<Membership> {
        let instance = Instance::new(MEMBERS, self.member.clone(), "");
        let key = self.discovery.key_of(MEMBERS, &self.member)?;
        let runtime = feed::runtime(&key, "join")?;
        let mut registration = self.discovery.register(instance).await?;
        let (mut sets, set_errors) = self.discovery.watch(MEMBERS).await?;
        let me: Arc<str> = Arc::from(self.member.as_str());
        let first = match sets.next().await {
            Some(set) => ids(set),
            None => Vec::new(),
        };
        let (producer, _unused, errors) = feed::channel(Assignment::new(me.clone(), first));
        let view = producer.subscribe();
        let registration_errors = registration.errors();
        runtime.spawn(async move {
            let mut failures = futures::stream::select(set_errors, registration_errors);
            loop {
                tokio::select! {
                    biased;
                    () = producer.consumers_gone() => return,
                    set = sets.next() => match set {
                        Some(set) => producer.publish(Assignment::new(me.clone(), ids(set))),
                        None => return,
                    },
                    Some(error) = failures.next() => producer.report(error),
                }
            }
        });
        Ok(Membership {
            registration,
            view,
            errors: std::sync::Mutex::new(Some(errors)),
        })
    }
}

fn ids(set: Vec<Instance>) -> Vec<String> {
    set.into_iter().map(|i| i.id).collect()
}

/// A member of a group: keeps its membership and its view of the group
/// until [`Membership::leave`] or drop (both delete the member key; the
/// tasks end).
pub struct Membership {
    registration: Registration,
    view: watch::Receiver<Assignment>,
    /// Behind a mutex only to make the value `Sync`; taken once.
    errors: std::sync::Mutex<Option<ErrorStream>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("key", &self.registration.key())
            .field("assignment", &*self.view.borrow())
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// The member's current view.
    pub fn assignment(&self) -> Assignment {
        self.view.borrow().clone()
    }

    /// The member's view as a stream: the current one first, then one after
    /// every change of the member set (a reader that falls behind skips to
    /// the latest). Ends when the store closes. May be called many times.
    pub fn changes(&self) -> AssignmentStream {
        feed::states(self.view.clone())
    }

    /// Failures of keeping the membership or following the group (they are
    /// retried). The first call takes the stream; later calls get an empty
    /// one.
    pub fn errors(&mut self) -> ErrorStream {
        let errors = match self.errors.get_mut() {
            Ok(errors) => errors.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        errors.unwrap_or_else(|| futures::stream::empty().boxed())
    }

    /// The member key, relative to the store's namespace.
    pub fn key(&self) -> &str {
        self.registration.key()
    }

    /// Leaves the group: deletes the member key and waits for it (see
    /// [`Registration::deregister`]); the view's tasks end.
    pub async fn leave(self) -> Result<()> {
        self.registration.deregister().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_fixed_and_spread() {
        // Fixed forever: a change here would move keys between versions.
        assert_eq!(score("a", "k"), score("a", "k"));
        assert_ne!(score("a", "k"), score("b", "k"));
        let members: Vec<String> = (0..4).map(|i| format!("m{i}")).collect();
        let mut counts = [0usize; 4];
        for k in 0..4000 {
            let owner = owner_of(&members, &format!("key-{k}")).unwrap();
            counts[members.iter().position(|m| m == owner).unwrap()] += 1;
        }
        for c in counts {
            assert!((700..1300).contains(&c), "{counts:?}");
        }
        // Removing a member moves only its keys.
        let fewer = &members[..3];
        for k in 0..1000 {
            let key = format!("key-{k}");
            let before = owner_of(&members, &key).unwrap();
            if before != "m3" {
                assert_eq!(owner_of(fewer, &key), Some(before));
            }
        }
        assert_eq!(owner_of(&[], "k"), None);
    }
}
