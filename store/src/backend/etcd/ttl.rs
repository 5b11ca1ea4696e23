//! Per-key TTL leases: how a TTL write's lease is told apart from every
//! other lease, so that a rewrite can revoke the one it replaces.
//!
//! Every TTL write grants a lease of its own and attaches it to the one key
//! it writes, in exactly one request. anykv chooses that lease's ID itself
//! (etcd's `LeaseGrant` takes one):
//!
//! ```text
//! bit 63      0
//! bits 48–62  0x616b, the tag ("ak")
//! bits 16–47  32 random bits
//! bits 0–15   a check: a fixed hash of the random bits
//! ```
//!
//! Each TTL write of a key, each compare-and-swap and each delete reads the
//! lease the key carried just before it, in the same Txn (a keys-only range
//! ahead of the write). If that lease carries the tag and is not the one
//! just attached, it held this key and nothing else, and the write has just
//! taken the key off it: it is revoked (best effort; left alone it would
//! expire by its TTL, holding nothing). A plain `put` without TTL — the
//! common write — stays one bare put and reads nothing: the TTL lease it
//! takes the key off, if any, expires by its TTL, holding nothing, so the
//! key still has at most one live lease. Revoking it cannot delete anything, because
//! nothing can attach it again: its own write was sent once, and a TTL write
//! whose answer was lost is retried with a *new* lease, never with the same
//! one. So a key rewritten any number of times leaves at most one live
//! per-key lease.
//!
//! Leases that do not carry the tag — the handle's session lease, another
//! handle's, any other client's — are never revoked this way. etcd chooses
//! the IDs it grants from its member ID (top 16 bits) and a clock (the
//! rest); such an ID carries the tag and a matching check only by a chance
//! of about 2⁻³¹. A grant whose ID is taken (`lease already exists`) is
//! retried with another random ID.

use crate::retry::random_u64;

/// The tag in bits 48–62 of every per-key TTL lease ID.
const TAG: i64 = 0x616b;

/// Grants tried before a TTL write gives up on finding a free lease ID.
pub(super) const GRANT_ATTEMPTS: usize = 4;

/// A fresh per-key TTL lease ID.
pub(super) fn new_id() -> i64 {
    id_from(random_u64() as u32)
}

fn id_from(random: u32) -> i64 {
    (TAG << 48) | (i64::from(random) << 16) | i64::from(check(random))
}

/// True if `id` is a per-key TTL lease ID (see the module docs).
pub(super) fn is_ttl_lease(id: i64) -> bool {
    let random = ((id >> 16) & 0xffff_ffff) as u32;
    id >> 48 == TAG && (id & 0xffff) == i64::from(check(random))
}

/// The check bits of `random`: the same in every process and version.
fn check(random: u32) -> u16 {
    (u64::from(random).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_lease_ids_are_positive_tagged_and_recognised() {
        for _ in 0..1000 {
            let id = new_id();
            assert!(id > 0, "{id:x}");
            assert_eq!(id >> 48, 0x616b, "{id:x}");
            assert!(is_ttl_lease(id), "{id:x}");
        }
        assert_eq!(id_from(0) >> 16, 0x616b_0000_0000);
        assert!(is_ttl_lease(id_from(u32::MAX)));
    }

    #[test]
    fn other_lease_ids_are_not_ttl_leases() {
        let id = new_id();
        // Wrong check bits, or the tag without them.
        assert!(!is_ttl_lease(id ^ 1));
        assert!(!is_ttl_lease(0x616b << 48 | 0x1234_5678_0000));
        for other in [0, -1, i64::MAX, i64::MIN, 0x694d_7a2e_1f3c_0a01] {
            assert!(!is_ttl_lease(other), "{other:x}");
        }
        // Server-chosen IDs: member ID on top, a millisecond clock and a
        // counter below. Over a day of them, none carries the tag by
        // accident under a member ID that is not the tag itself.
        let start: i64 = 1_700_000_000_000;
        let mut hits = 0;
        for ms in (0..86_400_000).step_by(997) {
            let server = (0x3e2a << 48) | (((start + ms) & 0xff_ffff_ffff) << 8);
            hits += usize::from(is_ttl_lease(server));
        }
        assert_eq!(hits, 0);
    }
}
