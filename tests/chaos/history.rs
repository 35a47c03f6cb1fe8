//! The history of a chaos run, as Jepsen records it: every client operation with the time it was
//! invoked, the time it completed and how it completed.
//!
//! - `ok`: the operation took effect (a write was acknowledged, a read returned a value).
//! - `fail`: the operation certainly did not take effect (the node refused it before appending).
//! - `info`: indeterminate. A write may have taken effect or not, now or later; a read tells us
//!   nothing. The client that issued it continues under a **new process id**, because the old
//!   operation may still be in flight and a process has at most one operation outstanding.
//!
//! All timestamps come from one monotonic clock ([`History::now`]), read before the request is
//! sent and after the answer arrives, so an operation's interval always contains the moment it
//! took effect. That is the only timing fact the checkers rely on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use replikv::{Epoch, NodeId, WriteConcern};
use serde::{Serialize, Serializer};

/// Nanoseconds on the run's monotonic clock, since the history began.
pub type Nanos = u64;

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "f", rename_all = "kebab-case")]
pub enum Op {
    /// A read of one key.
    Read { key: String },
    /// A put of a unique value, acknowledged at `concern`.
    Write {
        key: String,
        value: String,
        #[serde(serialize_with = "as_display")]
        concern: WriteConcern,
    },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Read { key } | Op::Write { key, .. } => key,
        }
    }
}

/// How an operation completed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Outcome {
    /// A read returned `value` (`None`: the key does not exist).
    ReadOk { value: Option<String> },
    /// A write was acknowledged at its write concern.
    WriteOk,
    /// Certainly not performed.
    Fail { error: String },
    /// Indeterminate: may or may not have taken effect.
    Info { error: String },
}

/// The three outcome classes of Jepsen's histories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutcomeClass {
    Ok,
    Fail,
    Info,
}

impl std::fmt::Display for OutcomeClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OutcomeClass::Ok => "ok",
            OutcomeClass::Fail => "fail",
            OutcomeClass::Info => "info",
        })
    }
}

impl Outcome {
    pub fn class(&self) -> OutcomeClass {
        match self {
            Outcome::ReadOk { .. } | Outcome::WriteOk => OutcomeClass::Ok,
            Outcome::Fail { .. } => OutcomeClass::Fail,
            Outcome::Info { .. } => OutcomeClass::Info,
        }
    }
}

/// Which node answered a successful operation, in which epoch, at which log index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Served {
    pub node: NodeId,
    pub epoch: Epoch,
    pub index: u64,
}

/// The door a worker's operations go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Door {
    /// The Rust client over QUIC (retries, sessions, failover).
    Quic,
    /// Redis's protocol, `SET` and `GET`, on a plain TCP connection to one node.
    Resp,
    /// The HTTP/JSON API over TLS, `PUT` and `GET /v1/kv/{key}`, on one node.
    Http,
}

impl Door {
    pub fn name(self) -> &'static str {
        match self {
            Door::Quic => "quic",
            Door::Resp => "resp",
            Door::Http => "http",
        }
    }
}

/// One operation, from invocation to completion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    /// The logical client that issued it; it has no other operation in flight meanwhile.
    pub process: u64,
    /// The door it went through ([`crate::doors`]).
    pub door: Door,
    pub op: Op,
    pub invoked_at: Nanos,
    pub completed_at: Nanos,
    pub outcome: Outcome,
    /// Set for `ok` outcomes.
    pub served: Option<Served>,
}

/// A concurrent recorder of [`Record`]s against one monotonic clock.
pub struct History {
    clock: Instant,
    next_process: AtomicU64,
    records: Mutex<Vec<Record>>,
}

impl History {
    /// A history whose clock starts now.
    pub fn new() -> History {
        History {
            clock: Instant::now(),
            next_process: AtomicU64::new(0),
            records: Mutex::new(Vec::new()),
        }
    }

    /// The time on the history's clock.
    pub fn now(&self) -> Nanos {
        self.at(Instant::now())
    }

    /// `instant` on the history's clock.
    pub fn at(&self, instant: Instant) -> Nanos {
        u64::try_from(instant.saturating_duration_since(self.clock).as_nanos()).unwrap_or(u64::MAX)
    }

    /// A process id never handed out before.
    pub fn new_process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a completed operation.
    pub fn record(&self, record: Record) {
        lock(&self.records).push(record);
    }

    /// Every record so far, ordered by invocation time.
    pub fn records(&self) -> Vec<Record> {
        let mut records = lock(&self.records).clone();
        records.sort_by_key(|record| (record.invoked_at, record.completed_at, record.process));
        records
    }
}

/// Locks a mutex, recovering from poisoning: a panicking worker leaves a valid vector behind.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn as_display<T: std::fmt::Display, S: Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_never_reused() {
        let history = History::new();
        let ids: Vec<u64> = (0..100).map(|_| history.new_process()).collect();
        let mut unique = ids.clone();
        unique.dedup();
        assert_eq!(ids, unique);
    }

    #[test]
    fn records_come_back_in_invocation_order() {
        let history = History::new();
        for (process, invoked_at) in [(1, 30), (2, 10), (3, 20)] {
            history.record(Record {
                process,
                door: Door::Quic,
                op: Op::Read { key: "k".into() },
                invoked_at,
                completed_at: invoked_at + 5,
                outcome: Outcome::ReadOk { value: None },
                served: None,
            });
        }
        let order: Vec<u64> = history.records().iter().map(|r| r.process).collect();
        assert_eq!(order, vec![2, 3, 1]);
    }

    #[test]
    fn records_serialize_as_json_lines() {
        let record = Record {
            process: 4,
            door: Door::Quic,
            op: Op::Write {
                key: "r/1".into(),
                value: "v9".into(),
                concern: WriteConcern::Majority,
            },
            invoked_at: 1,
            completed_at: 2,
            outcome: Outcome::Info {
                error: "timeout".into(),
            },
            served: None,
        };
        let json = serde_json::to_string(&record).expect("serialize a record");
        assert!(json.contains(r#""f":"write""#), "{json}");
        assert!(json.contains(r#""concern":"majority""#), "{json}");
        assert!(json.contains(r#""type":"info""#), "{json}");
    }
}
