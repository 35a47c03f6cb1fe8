//! Expiring keys: reads hide keys past their deadline, and the primary deletes them.
//!
//! A key's deadline is replicated state (`storage::expiry` records), set and cleared only by
//! outcomes the primary decided (`decide`). Deadlines are wall-clock times, so the driver tells
//! the node its wall clock ([`Node::set_wall_clock`]); the node reads no clock itself, and a node
//! never told (the simulator) expires nothing.
//!
//! Invariants:
//! - No read, on any node and at any consistency, returns a key whose deadline is within
//!   [`crate::core::Options::expiry_margin_ms`] of this node's wall clock: a node whose clock is
//!   behind true time by less than the margin still hides the key in time.
//! - Only the primary deletes expired keys, as Redis does: a sweep from `tick`, at most once per
//!   heartbeat interval, reads one bounded page of the deadline index ([`KEYS_PER_SWEEP`]) and
//!   appends one `Batch` deleting each due key with its records. The next sweep waits until that
//!   entry is applied, so no key is listed twice.
//! - A key whose deadline a pending entry changed is left to that entry, which removes the old
//!   index record itself.

use crate::core::Timestamp;
use crate::error::Result;
use crate::storage::expiry::{
    clear_deadline, deadline_key, decode_deadline, due_prefix, parse_due_key,
};
use crate::wire::message::{Change, LogIndex, Operation};

use super::Node;

/// Due keys deleted at most per sweep entry.
pub(super) const KEYS_PER_SWEEP: usize = 256;

/// The primary's sweep of due keys.
#[derive(Debug, Default)]
pub(super) struct KeyExpiry {
    /// No sweep before this time (driver clock).
    next_sweep_at: Timestamp,
    /// The sweep entry appended last, until it is applied.
    pending: Option<LogIndex>,
}

impl Node {
    /// The driver's wall clock, in milliseconds since the Unix epoch: what key deadlines are
    /// judged against. Call it before the other entry points; it only ever matters for expiry.
    pub fn set_wall_clock(&mut self, unix_ms: u64) {
        self.wall_clock = unix_ms;
    }

    /// Whether a key with this deadline counts as expired on this node now.
    pub(super) fn is_expired(&self, deadline: u64) -> bool {
        self.wall_clock > 0
            && deadline
                <= self
                    .wall_clock
                    .saturating_add(self.options.expiry_margin_ms())
    }

    /// Whether `key` is past its deadline in the applied state (what reads check).
    pub(super) fn expired_in_state(&self, key: &[u8]) -> Result<bool> {
        let deadline = self.storage.get(&deadline_key(key))?;
        Ok(deadline
            .as_deref()
            .and_then(decode_deadline)
            .is_some_and(|deadline| self.is_expired(deadline)))
    }

    /// One step of the primary's sweep: appends an entry deleting the keys that are due.
    pub(super) fn expire_keys(&mut self) -> Result<()> {
        let (now, applied_index) = (self.now, self.applied_index);
        let interval = self.options.heartbeat_interval_ms;
        if self.wall_clock == 0 {
            return Ok(());
        }
        let Some(state) = self.primary_state() else {
            return Ok(());
        };
        let sweep = &mut state.key_expiry;
        let waiting = sweep.pending.is_some_and(|index| index > applied_index);
        if now < sweep.next_sweep_at || waiting {
            return Ok(());
        }
        sweep.pending = None;
        sweep.next_sweep_at = now.saturating_add(interval);
        let page = self
            .storage
            .scan_page(&due_prefix(), None, KEYS_PER_SWEEP, usize::MAX)?;
        let next = self.log.last_index() + 1;
        let mut changes = Vec::new();
        for (record, _) in &page.pairs {
            let Some((deadline, key)) = parse_due_key(record) else {
                continue;
            };
            if !self.is_expired(deadline) {
                break;
            }
            let recorded = self
                .speculate(&deadline_key(key), next)?
                .and_then(|recorded| decode_deadline(&recorded.value));
            if recorded == Some(deadline) {
                changes.push(Change::Delete { key: key.to_vec() });
                changes.extend(clear_deadline(key, Some(deadline)));
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let index = self.append(
            Operation::Batch {
                changes,
                answer: None,
            },
            None,
        )?;
        if let Some(state) = self.primary_state() {
            state.key_expiry.pending = Some(index);
        }
        Ok(())
    }
}
