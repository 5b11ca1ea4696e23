//! Tree watches as changes: [`TreeChange`], the diff of listings that gives
//! every backend a change stream, and the way back — listings kept
//! client-side from a change stream — for backends whose native stream is
//! the change stream.

use std::collections::BTreeMap;

use futures::{FutureExt, StreamExt};

use crate::error::Error;
use crate::types::{KvPair, Listing, SortedPairs, TreeChange, TreeChangeStream, TreeWatchStream};

/// At most this many ready changes are applied before a listing is built,
/// so a long burst still yields listings now and then.
#[cfg_attr(not(any(feature = "redis", feature = "zookeeper")), allow(dead_code))]
const MAX_COALESCE: usize = 4096;

impl TreeChange {
    /// Applies this change to a client-side copy of the tree, keyed by
    /// [`KvPair::key`]: a [`TreeChange::Snapshot`] replaces it, a
    /// [`TreeChange::Changed`] sets or removes one key. Applying every item
    /// of a change stream in order gives what [`crate::Store::list`] would
    /// return as of the last item.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anykv::Result<()> {
    /// use anykv::prelude::*;
    /// use futures::StreamExt;
    /// use std::collections::BTreeMap;
    ///
    /// let store = anykv::open("memory://").await?;
    /// let mut changes = store.watch_tree_changes("svc").await?;
    /// let mut tree = BTreeMap::new();
    /// changes.next().await.expect("the listing")?.apply(&mut tree); // empty at first
    /// store.put("svc/a", "1", PutOptions::new()).await?;
    /// let change = changes.next().await.expect("a change")?;
    /// assert!(matches!(&change, TreeChange::Changed { key, pair: Some(_) } if key == "svc/a"));
    /// change.apply(&mut tree);
    /// assert_eq!(tree.values().cloned().collect::<Vec<_>>(), store.list("svc").await?);
    /// # Ok(()) }
    /// ```
    pub fn apply(self, tree: &mut BTreeMap<String, KvPair>) {
        match self {
            TreeChange::Snapshot(pairs) => {
                tree.clear();
                tree.extend(pairs.into_iter().map(|p| (p.key.clone(), p)));
            }
            TreeChange::Changed {
                key,
                pair: Some(pair),
            } => {
                tree.insert(key, pair);
            }
            TreeChange::Changed { key, pair: None } => {
                tree.remove(&key);
            }
        }
    }
}

/// The changes between two sorted listings, in key order: every key that is
/// new or has another `last_index` with its pair, every key that is gone
/// with `None`.
pub(crate) fn diff(before: &[KvPair], after: &[KvPair]) -> Vec<TreeChange> {
    let mut changes = Vec::new();
    let (mut old, mut new) = (before.iter().peekable(), after.iter().peekable());
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(o), Some(n)) if o.key == n.key => {
                if o.last_index != n.last_index || o.value != n.value {
                    changes.push(changed(n));
                }
                old.next();
                new.next();
            }
            (Some(o), Some(n)) if o.key < n.key => {
                changes.push(removed(o));
                old.next();
            }
            (Some(o), None) => {
                changes.push(removed(o));
                old.next();
            }
            (_, Some(n)) => {
                changes.push(changed(n));
                new.next();
            }
        }
    }
    changes
}

fn changed(pair: &KvPair) -> TreeChange {
    TreeChange::Changed {
        key: pair.key.clone(),
        pair: Some(pair.clone()),
    }
}

fn removed(pair: &KvPair) -> TreeChange {
    TreeChange::Changed {
        key: pair.key.clone(),
        pair: None,
    }
}

/// A change stream from a listing stream: the first listing as a
/// [`TreeChange::Snapshot`], then the [`diff`] of each listing against the
/// one before. Errors pass through as they come (a transient one and the
/// stream goes on; the next listing is diffed against the last one
/// delivered, so nothing is missed).
pub(crate) fn from_listings(listings: TreeWatchStream) -> TreeChangeStream {
    let state: Option<Listing> = None;
    listings
        .scan(state, |last, item| {
            let out: Vec<crate::Result<TreeChange>> = match item {
                Err(error) => vec![Err(error)],
                Ok(listing) => {
                    let changes = match last.as_deref() {
                        None => vec![TreeChange::Snapshot(listing.to_vec())],
                        Some(before) => diff(before, &listing),
                    };
                    *last = Some(listing);
                    changes.into_iter().map(Ok).collect()
                }
            };
            futures::future::ready(Some(futures::stream::iter(out)))
        })
        .flatten()
        .boxed()
}

/// A listing stream kept client-side from a change stream: the tree is
/// applied change by change, and a listing is built once per batch of ready
/// changes (intermediate states coalesced), only when the tree changed. So a
/// change costs the backend what the change stream costs, and the client one
/// map update plus the copy of the listing it hands out.
///
/// The contract of [`crate::Store::watch_tree`] follows from the change
/// stream's: its first item is the snapshot, so the first listing is the
/// current one; a resync snapshot replaces the tree, so nothing is missed
/// across a failure; errors pass through in order, after the listing of the
/// changes before them.
#[cfg_attr(not(any(feature = "redis", feature = "zookeeper")), allow(dead_code))]
pub(crate) fn listings_from_changes(changes: TreeChangeStream) -> TreeWatchStream {
    let listings = Listings {
        changes,
        tree: SortedPairs::default(),
        delivered: false,
        pending_error: None,
        ended: false,
    };
    futures::stream::unfold(listings, |mut l| async move {
        let item = l.next().await?;
        Some((item, l))
    })
    .boxed()
}

#[cfg_attr(not(any(feature = "redis", feature = "zookeeper")), allow(dead_code))]
struct Listings {
    changes: TreeChangeStream,
    tree: SortedPairs,
    /// A listing was handed out (the first one is sent even if empty).
    delivered: bool,
    /// An error read while coalescing, handed out after the listing.
    pending_error: Option<Error>,
    /// The change stream ended.
    ended: bool,
}

#[cfg_attr(not(any(feature = "redis", feature = "zookeeper")), allow(dead_code))]
impl Listings {
    async fn next(&mut self) -> Option<crate::Result<Listing>> {
        loop {
            if let Some(error) = self.pending_error.take() {
                return Some(Err(error));
            }
            if self.ended {
                return None;
            }
            let mut dirty = match self.changes.next().await? {
                Ok(change) => self.apply(change),
                Err(error) => return Some(Err(error)),
            };
            for _ in 0..MAX_COALESCE {
                match self.changes.next().now_or_never() {
                    Some(Some(Ok(change))) => dirty |= self.apply(change),
                    Some(Some(Err(error))) => {
                        self.pending_error = Some(error);
                        break;
                    }
                    Some(None) => {
                        self.ended = true;
                        break;
                    }
                    None => break,
                }
            }
            if dirty || !self.delivered {
                self.delivered = true;
                return Some(Ok(self.tree.listing()));
            }
        }
    }

    /// Applies one change; true if the tree is now different.
    fn apply(&mut self, change: TreeChange) -> bool {
        match change {
            TreeChange::Snapshot(pairs) => {
                if pairs.as_slice() == self.tree.as_slice() {
                    return false;
                }
                self.tree.replace(pairs);
                true
            }
            TreeChange::Changed {
                pair: Some(pair), ..
            } => self.tree.set(pair),
            TreeChange::Changed { key, pair: None } => self.tree.remove(&key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, index: u64) -> KvPair {
        KvPair::new(key, value.to_owned(), index)
    }

    #[test]
    fn diff_reports_adds_updates_and_removals_in_key_order() {
        let before = [kv("a", "1", 1), kv("b", "1", 2), kv("d", "1", 3)];
        let after = [kv("a", "1", 1), kv("b", "2", 5), kv("c", "1", 6)];
        assert_eq!(
            diff(&before, &after),
            vec![changed(&after[1]), changed(&after[2]), removed(&before[2])]
        );
        assert!(diff(&after, &after).is_empty());
    }

    #[tokio::test]
    async fn listings_from_changes_coalesce_ready_changes_and_skip_no_ops() {
        let items: Vec<crate::Result<TreeChange>> = vec![
            Ok(TreeChange::Snapshot(vec![kv("a", "1", 1)])),
            Ok(changed(&kv("b", "1", 2))),
            Ok(changed(&kv("a", "2", 3))),
            Err(Error::Closed {
                url: "memory://".into(),
            }),
            // A resync that finds nothing new, then a removal of an absent key.
            Ok(TreeChange::Snapshot(vec![kv("a", "2", 3), kv("b", "1", 2)])),
            Ok(removed(&kv("c", "1", 4))),
            Ok(removed(&kv("b", "1", 2))),
        ];
        let mut listings = listings_from_changes(futures::stream::iter(items).boxed());
        let first = listings.next().await.expect("a listing").expect("ok");
        assert_eq!(first, vec![kv("a", "2", 3), kv("b", "1", 2)]);
        assert!(listings.next().await.expect("the error").is_err());
        let last = listings.next().await.expect("a listing").expect("ok");
        assert_eq!(last, vec![kv("a", "2", 3)]);
        assert!(listings.next().await.is_none());
    }

    #[tokio::test]
    async fn listings_from_changes_send_the_first_listing_even_if_empty() {
        let items = vec![Ok(TreeChange::Snapshot(Vec::new()))];
        let mut listings = listings_from_changes(futures::stream::iter(items).boxed());
        assert_eq!(
            listings.next().await.expect("a listing").expect("ok"),
            vec![]
        );
        assert!(listings.next().await.is_none());
    }

    #[test]
    fn applying_the_diff_gives_the_new_listing() {
        let cases: [(&[KvPair], &[KvPair]); 4] = [
            (&[], &[]),
            (&[], &[kv("a", "1", 1), kv("z", "1", 2)]),
            (&[kv("a", "1", 1), kv("z", "1", 2)], &[]),
            (
                &[kv("b", "1", 1), kv("c", "1", 2)],
                &[kv("a", "1", 3), kv("c", "2", 4)],
            ),
        ];
        for (before, after) in cases {
            let mut tree = BTreeMap::new();
            TreeChange::Snapshot(before.to_vec()).apply(&mut tree);
            for change in diff(before, after) {
                change.apply(&mut tree);
            }
            assert_eq!(tree.into_values().collect::<Vec<_>>(), after.to_vec());
        }
    }
}
