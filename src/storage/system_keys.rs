//! The system keyspace: replicated state that every node must agree on but that no client names
//! directly, such as users, API tokens and key expiries (see "Replicated system state" in
//! `docs/ARCHITECTURE.md`).
//!
//! System records live in the `state` tree under [`SYSTEM_PREFIX`]. The log, snapshots, resync
//! and compaction therefore carry them with no machinery of their own, and a record changes on
//! every node at the same index, like any key.
//!
//! Invariants:
//! - A client request never names a system key: the service refuses it before it reaches the
//!   event loop (`api::service`).
//! - A client scan never returns one: both engines skip the system keyspace in `scan_page`
//!   unless the prefix itself is a system key, which the service refuses from clients.
//! - Only the primary writes system records, as the outcome of a request it decided (a user
//!   added, a token revoked, a key expired), so replay never re-decides them.

/// The prefix of every system key. It starts with `0xff 0x00`, which no text key and few binary
/// keys use; a client key that starts with the whole prefix is refused.
pub const SYSTEM_PREFIX: &[u8] = b"\xff\x00replikv/";

/// Whether `key` belongs to the system keyspace.
pub fn is_system_key(key: &[u8]) -> bool {
    key.starts_with(SYSTEM_PREFIX)
}

/// Whether a scan of `prefix` returns `key`: a scan skips the system keyspace unless its prefix
/// lies inside it (the node reading a family of records; clients may not name one).
pub fn shown_by_scan(prefix: &[u8], key: &[u8]) -> bool {
    is_system_key(prefix) || !is_system_key(key)
}

/// How many of `keys` are client keys (not system keys): the key count of a state.
pub fn count_client_keys<K: AsRef<[u8]>>(keys: impl IntoIterator<Item = K>) -> u64 {
    let mut count = 0;
    for key in keys {
        if !is_system_key(key.as_ref()) {
            count += 1;
        }
    }
    count
}

/// The system key of `name` in the record family `family` (for example `user`): the prefix, the
/// family, a `/`, then the name. Families are fixed ASCII words, so no two families overlap.
pub fn system_key(family: &str, name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(SYSTEM_PREFIX.len() + family.len() + 1 + name.len());
    key.extend_from_slice(SYSTEM_PREFIX);
    key.extend_from_slice(family.as_bytes());
    key.push(b'/');
    key.extend_from_slice(name);
    key
}

/// The prefix that every key of `family` starts with, for scanning one family.
pub fn system_family_prefix(family: &str) -> Vec<u8> {
    system_key(family, b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_keys_carry_the_prefix_and_their_family() {
        let key = system_key("user", b"alice");
        assert!(is_system_key(&key));
        assert!(key.starts_with(&system_family_prefix("user")));
        assert!(!key.starts_with(&system_family_prefix("token")));
        assert!(!is_system_key(b"user/alice"));
        assert!(!is_system_key(b"\xff\x00"));
    }
}
