//! Tree watches as changes: [`TreeChange`] and the diff of listings that
//! gives every backend a change stream.

use std::collections::BTreeMap;

use futures::StreamExt;

use crate::types::{KvPair, TreeChange, TreeChangeStream, TreeWatchStream};

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
    let state: Option<Vec<KvPair>> = None;
    listings
        .scan(state, |last, item| {
            let out: Vec<crate::Result<TreeChange>> = match item {
                Err(error) => vec![Err(error)],
                Ok(listing) => {
                    let changes = match last.as_deref() {
                        None => vec![TreeChange::Snapshot(listing.clone())],
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
