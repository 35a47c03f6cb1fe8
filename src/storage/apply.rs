//! Applying log entries to the state: the one implementation both engines share.
//!
//! An engine exposes its state, sessions and applied index through [`ApplyTarget`] (for sled, the
//! views of one multi-tree transaction; for the memory engine, its maps) and calls
//! [`apply_entries`]. Keeping the rules in one place is what makes the two engines agree on every
//! result, which the shared test suite checks.
//!
//! Rules:
//! - Entries are applied in log order, contiguously from `applied_index + 1`; anything else is a
//!   caller bug, refused before any change is made.
//! - `Noop` changes no state; `Membership` records the membership in `meta`; both advance the
//!   applied index.
//! - `ExpireSessions` removes each listed session whose last sequence is still the listed one (a
//!   write applied since keeps its session). It decides nothing itself: the primary chose the
//!   sessions, so every node removes the same ones at the same index.
//! - A `Put` or `Delete` carrying a request id whose session already holds that sequence (or a
//!   newer one) is a retry: it changes nothing and its result is the stored one. A request is
//!   therefore never applied twice, whichever log entries carry it.
//! - A `Batch` applies all its changes in order, in the same transaction as the rest; its result
//!   says whether its first change's key existed and carries the answer the primary decided.
//! - A key put by an entry takes the entry's index as its version, so every node (and every
//!   replay) gives a key the same version.
//! - The key count moves by one for every client key created or removed (system keys are not
//!   counted), in the same transaction.
//! - The applied index ends at the last entry's index.

use tracing::debug;

use crate::error::Error;
use crate::storage::system_keys::is_system_key;
use crate::wire::message::{
    Change, Entry, ExpiredSession, LogIndex, Membership, Operation, Session, WriteResult,
};

/// The mutable state an engine hands to [`apply_entries`]. Writes through it must become visible
/// together (one transaction, or one critical section).
pub trait ApplyTarget {
    /// The engine's error; a sled transaction needs its own so that conflicts are retried.
    type Error: From<Error>;

    /// The session record of `client_id`, if any.
    fn session(&mut self, client_id: u64) -> Result<Option<Session>, Self::Error>;

    /// Replaces the session record of `client_id`.
    fn set_session(&mut self, client_id: u64, session: Session) -> Result<(), Self::Error>;

    /// Removes the session record of `client_id`.
    fn remove_session(&mut self, client_id: u64) -> Result<(), Self::Error>;

    /// Sets `key` to `value` at `version`; returns whether the key existed before.
    fn put(&mut self, key: &[u8], value: &[u8], version: LogIndex) -> Result<bool, Self::Error>;

    /// Removes `key`; returns whether it existed.
    fn delete(&mut self, key: &[u8]) -> Result<bool, Self::Error>;

    /// Records the new applied index.
    fn set_applied_index(&mut self, index: LogIndex) -> Result<(), Self::Error>;

    /// How many client keys the state holds.
    fn key_count(&mut self) -> Result<u64, Self::Error>;

    /// Records how many client keys the state holds.
    fn set_key_count(&mut self, count: u64) -> Result<(), Self::Error>;

    /// Records the membership of an applied membership entry, so that a restarted node knows the
    /// membership in force at its applied index.
    fn set_membership(&mut self, membership: &Membership) -> Result<(), Self::Error>;
}

/// Applies `entries` on top of a state whose applied index is `applied_index`, returning one
/// result per entry, in order. A `Noop` or `Membership` entry's result is `{ index, existed:
/// false }`; a duplicate request's result is the one stored in its session.
pub fn apply_entries<T: ApplyTarget>(
    target: &mut T,
    applied_index: LogIndex,
    entries: &[Entry],
) -> Result<Vec<WriteResult>, T::Error> {
    check_contiguous(applied_index, entries)?;
    let mut results = Vec::with_capacity(entries.len());
    // Keys created minus keys removed: the count is read and written only when it moves.
    let mut delta = 0i64;
    for entry in entries {
        results.push(apply_entry(target, entry, &mut delta)?);
    }
    if let Some(last) = entries.last() {
        target.set_applied_index(last.index)?;
    }
    if delta != 0 {
        let count = target.key_count()?.saturating_add_signed(delta);
        target.set_key_count(count)?;
    }
    Ok(results)
}

/// Refuses entries that do not continue the applied prefix, before anything changes.
fn check_contiguous(applied_index: LogIndex, entries: &[Entry]) -> Result<(), Error> {
    for (expected, entry) in (applied_index + 1..).zip(entries) {
        if entry.index != expected {
            return Err(Error::Storage(format!(
                "cannot apply entry {} when the next entry to apply is {expected} (applied index {applied_index})",
                entry.index
            )));
        }
    }
    Ok(())
}

fn apply_entry<T: ApplyTarget>(
    target: &mut T,
    entry: &Entry,
    delta: &mut i64,
) -> Result<WriteResult, T::Error> {
    let request_id = match &entry.operation {
        Operation::Membership(membership) => {
            target.set_membership(membership)?;
            return Ok(WriteResult {
                index: entry.index,
                ..WriteResult::default()
            });
        }
        Operation::Noop => {
            return Ok(WriteResult {
                index: entry.index,
                ..WriteResult::default()
            })
        }
        Operation::ExpireSessions(expired) => {
            expire_sessions(target, expired)?;
            return Ok(WriteResult {
                index: entry.index,
                ..WriteResult::default()
            });
        }
        Operation::Put { .. } | Operation::Delete { .. } | Operation::Batch { .. } => {
            entry.request_id
        }
    };

    if let Some(request_id) = request_id {
        if let Some(session) = target.session(request_id.client_id)? {
            if session.last_sequence >= request_id.sequence {
                if session.last_sequence > request_id.sequence {
                    debug!(
                        client_id = request_id.client_id,
                        sequence = request_id.sequence,
                        latest = session.last_sequence,
                        index = entry.index,
                        "skipping an older retried request; answering with the session's latest result"
                    );
                }
                return Ok(session.result);
            }
        }
    }

    let (existed, answer) = match &entry.operation {
        Operation::Put { key, value } => (put(target, key, value, entry.index, delta)?, None),
        Operation::Delete { key } => (delete(target, key, delta)?, None),
        Operation::Batch { changes, answer } => (
            apply_changes(target, changes, entry.index, delta)?,
            answer.clone(),
        ),
        Operation::Noop | Operation::Membership(_) | Operation::ExpireSessions(_) => (false, None),
    };
    let result = WriteResult {
        index: entry.index,
        existed,
        answer,
    };
    if let Some(request_id) = request_id {
        target.set_session(
            request_id.client_id,
            Session {
                last_sequence: request_id.sequence,
                result: result.clone(),
            },
        )?;
    }
    Ok(result)
}

/// Applies a batch's changes in order, at `version`; returns whether the first change's key
/// existed.
fn apply_changes<T: ApplyTarget>(
    target: &mut T,
    changes: &[Change],
    version: LogIndex,
    delta: &mut i64,
) -> Result<bool, T::Error> {
    let mut first_existed = None;
    for change in changes {
        let existed = match change {
            Change::Put { key, value } => put(target, key, value, version, delta)?,
            Change::Delete { key } => delete(target, key, delta)?,
        };
        first_existed.get_or_insert(existed);
    }
    Ok(first_existed.unwrap_or(false))
}

/// Puts `key`, counting it if it is a new client key; returns whether it existed.
fn put<T: ApplyTarget>(
    target: &mut T,
    key: &[u8],
    value: &[u8],
    version: LogIndex,
    delta: &mut i64,
) -> Result<bool, T::Error> {
    let existed = target.put(key, value, version)?;
    if !existed && !is_system_key(key) {
        *delta += 1;
    }
    Ok(existed)
}

/// Removes `key`, uncounting it if it was a client key; returns whether it existed.
fn delete<T: ApplyTarget>(target: &mut T, key: &[u8], delta: &mut i64) -> Result<bool, T::Error> {
    let existed = target.delete(key)?;
    if existed && !is_system_key(key) {
        *delta -= 1;
    }
    Ok(existed)
}

/// Removes the expired sessions that no write has touched since the primary chose them.
fn expire_sessions<T: ApplyTarget>(
    target: &mut T,
    expired: &[ExpiredSession],
) -> Result<(), T::Error> {
    for expired in expired {
        let unchanged = target
            .session(expired.client_id)?
            .is_some_and(|session| session.last_sequence == expired.last_sequence);
        if unchanged {
            target.remove_session(expired.client_id)?;
        }
    }
    Ok(())
}
