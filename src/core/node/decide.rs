//! Deciding a client write on the primary: what it changes and what it answers.
//!
//! Every write, plain or read-modify-write (`INCR`, `SET NX`, `GETDEL`, `APPEND`, expiry
//! changes, `MSET`), is decided here against the primary's *speculative* state: the applied state
//! with every entry it has appended but not yet applied on top. The decision is logged as its
//! outcome: a plain `Put`/`Delete`, or a `Batch` of changes with the answer, so applying it
//! decides nothing and every node, replay and snapshot agrees.
//!
//! Invariants:
//! - A key past its deadline is absent to every decision, as it is to every read
//!   ([`Node::is_expired`]); its leftover records are removed by whatever change touches it.
//! - A change of a key's value clears its expiry records unless the write keeps them (`KEEPTTL`,
//!   `INCR`, `APPEND` on a live key), so a deadline never outlives the value it was set for.
//! - A write whose condition fails still logs an empty batch with its answer: a retry with the
//!   same request id is answered from the session, never re-decided.
//! - A write refused (not an integer, an overflow, a value too long) changes nothing and logs
//!   nothing.

use crate::error::{Error, Result};
use crate::storage::expiry::{clear_deadline, deadline_key, decode_deadline, set_deadline};
use crate::wire::client::{Condition, Expiry, Write};
use crate::wire::frame::MAX_CLIENT_FRAME_BYTES;
use crate::wire::message::{Answer, Change, LogIndex, Operation, Versioned};

use super::Node;

/// Redis's text for a value that is not a decimal 64-bit integer.
pub const NOT_AN_INTEGER: &str = "value is not an integer or out of range";
/// Redis's text for an increment that leaves the 64-bit range.
pub const OVERFLOW: &str = "increment or decrement would overflow";

/// The longest value a read-modify-write may produce: what a read can still return in one frame.
const MAX_DECIDED_VALUE_BYTES: usize = MAX_CLIENT_FRAME_BYTES / 2;

/// What the primary decided for a write: the operation to log, and the result it answers.
pub(super) struct Decision {
    pub(super) operation: Operation,
    pub(super) existed: bool,
    pub(super) answer: Option<Answer>,
}

/// A key as the primary sees it before the next entry.
struct Current {
    /// The live value (`None` if absent or expired).
    value: Option<Vec<u8>>,
    /// The live value's version: the index of the entry that wrote it (0 if absent or expired).
    version: LogIndex,
    /// The deadline recorded for the key, expired or not (its records exist).
    recorded_deadline: Option<u64>,
}

impl Current {
    /// The live key's deadline; `None` if it has none or is absent.
    fn live_deadline(&self) -> Option<u64> {
        self.recorded_deadline.filter(|_| self.value.is_some())
    }
}

impl Node {
    /// Decides `write` on top of every entry appended so far. `Ok(Err(error))` refuses it.
    pub(super) fn decide(&self, write: Write) -> Result<std::result::Result<Decision, Error>> {
        let next = self.log.last_index() + 1;
        let decision = match write {
            Write::Put { key, value } => {
                let current = self.current(&key, next)?;
                let mut changes = vec![Change::Put {
                    key: key.clone(),
                    value,
                }];
                changes.extend(clear_deadline(&key, current.recorded_deadline));
                plain(changes, current.value.is_some())
            }
            Write::Delete { key } => {
                let current = self.current(&key, next)?;
                let mut changes = vec![Change::Delete { key: key.clone() }];
                changes.extend(clear_deadline(&key, current.recorded_deadline));
                plain(changes, current.value.is_some())
            }
            Write::Set {
                key,
                value,
                condition,
                expiry,
                get,
            } => {
                let current = self.current(&key, next)?;
                let holds = match condition {
                    Condition::Always => true,
                    Condition::IfAbsent => current.value.is_none(),
                    Condition::IfPresent => current.value.is_some(),
                    Condition::IfVersion(version) => current.version == version,
                };
                let mut changes = Vec::new();
                if holds {
                    changes.push(Change::Put {
                        key: key.clone(),
                        value,
                    });
                    changes.extend(self.expiry_changes(&key, &current, expiry));
                }
                let existed = current.value.is_some();
                let answer = if get {
                    Answer::Previous(current.value)
                } else {
                    Answer::Applied(holds)
                };
                batch(changes, existed, answer)
            }
            Write::Increment { key, by } => {
                let current = self.current(&key, next)?;
                let old = match current.value.as_deref().map(parse_integer) {
                    None => 0,
                    Some(Some(number)) => number,
                    Some(None) => return Ok(Err(Error::InvalidRequest(NOT_AN_INTEGER.into()))),
                };
                let Some(new) = old.checked_add(by) else {
                    return Ok(Err(Error::InvalidRequest(OVERFLOW.into())));
                };
                let changes = self.keep_live_deadline(&key, &current, new.to_string().into_bytes());
                batch(changes, current.value.is_some(), Answer::Integer(new))
            }
            Write::Append { key, suffix } => {
                let current = self.current(&key, next)?;
                let mut value = current.value.clone().unwrap_or_default();
                value.extend_from_slice(&suffix);
                if value.len() > MAX_DECIDED_VALUE_BYTES {
                    return Ok(Err(Error::InvalidRequest(format!(
                        "string exceeds maximum allowed size ({MAX_DECIDED_VALUE_BYTES} bytes)"
                    ))));
                }
                let length = i64::try_from(value.len()).unwrap_or(i64::MAX);
                let changes = self.keep_live_deadline(&key, &current, value);
                batch(changes, current.value.is_some(), Answer::Integer(length))
            }
            Write::GetDelete { key } => {
                let current = self.current(&key, next)?;
                let mut changes = Vec::new();
                if current.value.is_some() {
                    changes.push(Change::Delete { key: key.clone() });
                }
                changes.extend(clear_deadline(&key, current.recorded_deadline));
                let existed = current.value.is_some();
                batch(changes, existed, Answer::Previous(current.value))
            }
            Write::Expire { key, expiry } => {
                let current = self.current(&key, next)?;
                let (changes, applied) = match (&current.value, expiry) {
                    (None, _) => (clear_deadline(&key, current.recorded_deadline), false),
                    (Some(_), Expiry::Keep) => (Vec::new(), true),
                    (Some(_), Expiry::Clear) => (
                        clear_deadline(&key, current.recorded_deadline),
                        current.live_deadline().is_some(),
                    ),
                    (Some(_), Expiry::At(_)) => (self.expiry_changes(&key, &current, expiry), true),
                };
                batch(changes, current.value.is_some(), Answer::Applied(applied))
            }
            Write::PutMany { pairs } => {
                let mut changes = Vec::with_capacity(pairs.len());
                let mut existed = None;
                for (key, value) in pairs {
                    let current = self.current(&key, next)?;
                    existed.get_or_insert(current.value.is_some());
                    changes.extend(clear_deadline(&key, current.recorded_deadline));
                    changes.push(Change::Put { key, value });
                }
                Decision {
                    operation: Operation::Batch {
                        changes,
                        answer: None,
                    },
                    existed: existed.unwrap_or(false),
                    answer: None,
                }
            }
        };
        Ok(Ok(decision))
    }

    /// The changes that give `key` (just set) the expiry `expiry` asks for.
    fn expiry_changes(&self, key: &[u8], current: &Current, expiry: Expiry) -> Vec<Change> {
        match expiry {
            Expiry::Clear => clear_deadline(key, current.recorded_deadline),
            // A key that was absent has no deadline to keep; an expired one's is dropped.
            Expiry::Keep if current.value.is_none() => {
                clear_deadline(key, current.recorded_deadline)
            }
            Expiry::Keep => Vec::new(),
            Expiry::At(deadline) => set_deadline(key, current.recorded_deadline, deadline),
        }
    }

    /// Sets `key` to `value`, keeping its deadline if it is live (`INCR`, `APPEND`).
    fn keep_live_deadline(&self, key: &[u8], current: &Current, value: Vec<u8>) -> Vec<Change> {
        let mut changes = vec![Change::Put {
            key: key.to_vec(),
            value,
        }];
        changes.extend(self.expiry_changes(key, current, Expiry::Keep));
        changes
    }

    /// `key` once every entry before `index` is applied, with its expiry judged now.
    fn current(&self, key: &[u8], index: LogIndex) -> Result<Current> {
        let versioned = self.speculate(key, index)?;
        let recorded_deadline = self
            .speculate(&deadline_key(key), index)?
            .and_then(|deadline| decode_deadline(&deadline.value));
        let live = recorded_deadline.is_none_or(|deadline| !self.is_expired(deadline));
        let versioned = versioned.filter(|_| live);
        Ok(Current {
            version: versioned.as_ref().map_or(0, |versioned| versioned.version),
            value: versioned.map(|versioned| versioned.value),
            recorded_deadline,
        })
    }

    /// The value of `key` and its version once every entry in the log before `index` is applied
    /// (the primary's view), whatever its expiry.
    pub(super) fn speculate(&self, key: &[u8], index: LogIndex) -> Result<Option<Versioned>> {
        for entry in self.log.cached_entries().rev() {
            if entry.index <= self.applied_index {
                break;
            }
            if entry.index >= index {
                continue;
            }
            let written = |value: &Vec<u8>| {
                Some(Versioned {
                    version: entry.index,
                    value: value.clone(),
                })
            };
            match &entry.operation {
                Operation::Put { key: k, value } if k.as_slice() == key => {
                    return Ok(written(value))
                }
                Operation::Delete { key: k } if k.as_slice() == key => return Ok(None),
                Operation::Batch { changes, .. } => {
                    let last = changes.iter().rev().find(|change| change.key() == key);
                    match last {
                        Some(Change::Put { value, .. }) => return Ok(written(value)),
                        Some(Change::Delete { .. }) => return Ok(None),
                        None => {}
                    }
                }
                _ => {}
            }
        }
        self.storage.get_versioned(key)
    }
}

/// A plain put or delete: logged as itself when it changes one key only.
fn plain(mut changes: Vec<Change>, existed: bool) -> Decision {
    let operation = if changes.len() == 1 {
        match changes.remove(0) {
            Change::Put { key, value } => Operation::Put { key, value },
            Change::Delete { key } => Operation::Delete { key },
        }
    } else {
        Operation::Batch {
            changes,
            answer: None,
        }
    };
    Decision {
        operation,
        existed,
        answer: None,
    }
}

/// A read-modify-write: a batch carrying its answer.
fn batch(changes: Vec<Change>, existed: bool, answer: Answer) -> Decision {
    Decision {
        operation: Operation::Batch {
            changes,
            answer: Some(answer.clone()),
        },
        existed,
        answer: Some(answer),
    }
}

/// A value as Redis reads an integer: optional `-`, decimal digits, no spaces, no leading `+` or
/// zeros, within 64 bits.
pub fn parse_integer(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|byte| byte.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && text != "-0";
    if !canonical {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_integer;

    #[test]
    fn integers_parse_as_redis_reads_them() {
        assert_eq!(parse_integer(b"42"), Some(42));
        assert_eq!(parse_integer(b"-7"), Some(-7));
        assert_eq!(parse_integer(b"0"), Some(0));
        assert_eq!(parse_integer(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b""[..],
            b" 1",
            b"1 ",
            b"+1",
            b"01",
            b"-0",
            b"1.5",
            b"9223372036854775808",
        ] {
            assert_eq!(parse_integer(bad), None, "{bad:?}");
        }
    }
}
