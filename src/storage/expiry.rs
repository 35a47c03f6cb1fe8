//! Key expiry records in the system keyspace: a key's deadline, and an index of keys by deadline.
//!
//! A key `k` that expires at `t` (milliseconds since the Unix epoch) has two records, written in
//! the same log entry as the change that set them:
//! - `expiry/k` → `t` as 8 big-endian bytes: what reads check;
//! - `expiry-at/t k` (the deadline as 8 big-endian bytes, then the key) → empty: ordered by
//!   deadline, so the primary's sweep reads only keys that are due.
//!
//! Invariants:
//! - The two records exist together or not at all, and `expiry-at` holds exactly the deadline of
//!   `expiry/k`: every change of a deadline removes the old index record in the same entry.
//! - Records are written only as outcomes the primary decided (`core::node::decide`), so replay
//!   and backups never decide an expiry.

use crate::storage::system_keys::{system_family_prefix, system_key};
use crate::wire::message::Change;

/// The family of a key's deadline record.
const DEADLINE_FAMILY: &str = "expiry";
/// The family of the index by deadline.
const DUE_FAMILY: &str = "expiry-at";

/// The system key holding the deadline of `key`.
pub fn deadline_key(key: &[u8]) -> Vec<u8> {
    system_key(DEADLINE_FAMILY, key)
}

/// The index record of `key` expiring at `deadline`.
pub fn due_key(deadline: u64, key: &[u8]) -> Vec<u8> {
    let mut name = Vec::with_capacity(8 + key.len());
    name.extend_from_slice(&deadline.to_be_bytes());
    name.extend_from_slice(key);
    system_key(DUE_FAMILY, &name)
}

/// The prefix of every index record, in deadline order.
pub fn due_prefix() -> Vec<u8> {
    system_family_prefix(DUE_FAMILY)
}

/// The deadline and key of an index record, or `None` if `record` is not one.
pub fn parse_due_key(record: &[u8]) -> Option<(u64, &[u8])> {
    let name = record.strip_prefix(due_prefix().as_slice())?;
    let (deadline, key) = name.split_at_checked(8)?;
    Some((u64::from_be_bytes(deadline.try_into().ok()?), key))
}

/// The deadline a deadline record's value holds (`None` if malformed, which no node writes).
pub fn decode_deadline(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

/// The changes that give `key` the deadline `deadline`, replacing `previous` if it had one.
pub fn set_deadline(key: &[u8], previous: Option<u64>, deadline: u64) -> Vec<Change> {
    let mut changes = Vec::with_capacity(3);
    if let Some(previous) = previous.filter(|&previous| previous != deadline) {
        changes.push(Change::Delete {
            key: due_key(previous, key),
        });
    }
    changes.push(Change::Put {
        key: deadline_key(key),
        value: deadline.to_be_bytes().to_vec(),
    });
    changes.push(Change::Put {
        key: due_key(deadline, key),
        value: Vec::new(),
    });
    changes
}

/// The changes that remove the deadline `previous` of `key`, if it had one.
pub fn clear_deadline(key: &[u8], previous: Option<u64>) -> Vec<Change> {
    match previous {
        None => Vec::new(),
        Some(previous) => vec![
            Change::Delete {
                key: deadline_key(key),
            },
            Change::Delete {
                key: due_key(previous, key),
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::system_keys::is_system_key;

    #[test]
    fn index_records_sort_by_deadline_and_parse_back() {
        let early = due_key(5, b"zzz");
        let late = due_key(256, b"aaa");
        assert!(early < late);
        assert!(is_system_key(&early) && is_system_key(&deadline_key(b"k")));
        assert_eq!(parse_due_key(&late), Some((256, &b"aaa"[..])));
        assert_eq!(parse_due_key(&deadline_key(b"k")), None);
        assert_eq!(decode_deadline(&9u64.to_be_bytes()), Some(9));
    }

    #[test]
    fn a_new_deadline_replaces_the_old_index_record() {
        let changes = set_deadline(b"k", Some(5), 9);
        assert_eq!(
            changes[0],
            Change::Delete {
                key: due_key(5, b"k")
            }
        );
        assert_eq!(set_deadline(b"k", Some(9), 9).len(), 2);
        assert!(clear_deadline(b"k", None).is_empty());
    }
}
