//! A linearizability checker in the style of Porcupine: Wing & Gong's search with Lowe's
//! memoization, applied per key (P-compositionality: a history of independent registers is
//! linearizable exactly when each register's sub-history is).
//!
//! The search walks a doubly linked list of call and return events in time order. At each step it
//! tries to linearize a pending call (apply it to the model state); reaching a return event means
//! that operation was not linearized before it returned, so the search backtracks. A cache of
//! (set of linearized operations, model state) pairs prunes every configuration already explored,
//! which keeps the search polynomial on the histories real systems produce.
//!
//! Operations with an indeterminate outcome have no return event: they may take effect at any
//! moment after their invocation, or never. The search succeeds once every operation that did
//! return is linearized, whatever became of the indeterminate ones. Failed operations and
//! indeterminate reads are dropped before the search: they constrain nothing.
//!
//! Each key gets a time budget; a key whose search exceeds it is reported `Unknown`, never
//! silently passed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::history::{Nanos, Op, Outcome, Record};

/// A sequential specification: the state an operation moves the object to, if it can happen.
pub trait Model {
    type State: Clone + Eq + Hash;
    type Op: Debug;
    fn init(&self) -> Self::State;
    /// The state after `op` in `state`, or `None` if `op` cannot happen there (a read that
    /// returned another value).
    fn step(&self, state: &Self::State, op: &Self::Op) -> Option<Self::State>;
}

/// One operation of a sub-history, with its real-time interval.
#[derive(Clone, Debug)]
pub struct Entry<O> {
    pub op: O,
    pub call: Nanos,
    /// `None`: indeterminate; may take effect any time after `call`, or never.
    pub ret: Option<Nanos>,
    /// Index of the record it came from, to explain a violation.
    pub record: usize,
}

/// The verdict on one sub-history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No linearization exists. `longest_prefix` is the longest sequence of entries (indices into
    /// the input) the search managed to linearize; `blocked_by` is the entry whose return ended
    /// that attempt: it could not be placed after that prefix.
    NotLinearizable {
        longest_prefix: Vec<usize>,
        blocked_by: Option<usize>,
    },
    /// The budget ran out first.
    Unknown {
        explored: u64,
    },
}

/// A register over unique values: `None` is "the key does not exist".
pub struct Register;

/// Values of one register are interned to small integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    Write(u32),
    Read(Option<u32>),
}

impl Model for Register {
    type State = Option<u32>;
    type Op = RegisterOp;

    fn init(&self) -> Option<u32> {
        None
    }

    fn step(&self, state: &Option<u32>, op: &RegisterOp) -> Option<Option<u32>> {
        match op {
            RegisterOp::Write(value) => Some(Some(*value)),
            RegisterOp::Read(seen) => (seen == state).then_some(*state),
        }
    }
}

/// A fixed-size set of entry indices.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(size: usize) -> BitSet {
        BitSet(vec![0; size.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

const NIL: usize = usize::MAX;
/// The list's head sentinel.
const HEAD: usize = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Head,
    Call(usize),
    Return(usize),
}

/// The event list with O(1) removal and restoration (dancing links).
struct Events {
    event: Vec<Event>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each entry, the node of its return event, if it has one.
    return_node: Vec<Option<usize>>,
}

impl Events {
    fn new<O>(entries: &[Entry<O>]) -> Events {
        // Calls sort before returns at equal times: ops that touch in time count as concurrent,
        // which can only make the checker more lenient, never report a false violation.
        let mut timeline: Vec<(Nanos, u8, Event)> = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            timeline.push((entry.call, 0, Event::Call(i)));
            if let Some(ret) = entry.ret {
                timeline.push((ret.max(entry.call), 1, Event::Return(i)));
            }
        }
        timeline.sort_by_key(|(time, order, event)| {
            let i = match event {
                Event::Call(i) | Event::Return(i) => *i,
                Event::Head => 0,
            };
            (*time, *order, i)
        });
        let mut event = vec![Event::Head];
        event.extend(timeline.into_iter().map(|(_, _, event)| event));
        let count = event.len();
        let next = (0..count)
            .map(|i| if i + 1 < count { i + 1 } else { NIL })
            .collect();
        let prev = (0..count)
            .map(|i| if i == 0 { NIL } else { i - 1 })
            .collect();
        let mut return_node = vec![None; entries.len()];
        for (node, event) in event.iter().enumerate() {
            if let Event::Return(i) = event {
                return_node[*i] = Some(node);
            }
        }
        Events {
            event,
            next,
            prev,
            return_node,
        }
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        if next != NIL {
            self.prev[next] = node;
        }
    }

    /// Removes a call and its return.
    fn lift(&mut self, call_node: usize, entry: usize) {
        self.unlink(call_node);
        if let Some(ret) = self.return_node[entry] {
            self.unlink(ret);
        }
    }

    /// Undoes [`Events::lift`]; calls must be undone in reverse order.
    fn unlift(&mut self, call_node: usize, entry: usize) {
        if let Some(ret) = self.return_node[entry] {
            self.relink(ret);
        }
        self.relink(call_node);
    }
}

/// Searches for a linearization of `entries` under `model`, giving up after `budget`.
pub fn check<M: Model>(model: &M, entries: &[Entry<M::Op>], budget: Duration) -> Verdict {
    let started = Instant::now();
    let mut events = Events::new(entries);
    let definite_total = entries.iter().filter(|entry| entry.ret.is_some()).count();
    let mut definite_done = 0;
    let mut linearized = BitSet::new(entries.len());
    let mut cache: HashSet<(BitSet, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut longest_prefix: Vec<usize> = Vec::new();
    let mut blocked_by = None;
    let mut explored: u64 = 0;
    let mut node = events.next[HEAD];

    loop {
        if definite_done == definite_total {
            return Verdict::Linearizable;
        }
        explored += 1;
        if explored % 4096 == 0 && started.elapsed() > budget {
            return Verdict::Unknown { explored };
        }
        match (node != NIL).then(|| events.event[node]) {
            Some(Event::Call(i)) => {
                if let Some(next_state) = model.step(&state, &entries[i].op) {
                    let mut next_linearized = linearized.clone();
                    next_linearized.set(i);
                    if cache.insert((next_linearized.clone(), next_state.clone())) {
                        stack.push((node, std::mem::replace(&mut state, next_state)));
                        linearized = next_linearized;
                        events.lift(node, i);
                        if entries[i].ret.is_some() {
                            definite_done += 1;
                        }
                        node = events.next[HEAD];
                        continue;
                    }
                }
                node = events.next[node];
            }
            // A return (or the end of the list) before its operation was linearized: undo the
            // most recent choice and try the next candidate after it.
            Some(Event::Return(_)) | Some(Event::Head) | None => {
                if stack.len() >= longest_prefix.len() {
                    longest_prefix = stack
                        .iter()
                        .filter_map(|(call, _)| match events.event[*call] {
                            Event::Call(i) => Some(i),
                            _ => None,
                        })
                        .collect();
                    blocked_by = match (node != NIL).then(|| events.event[node]) {
                        Some(Event::Return(i)) => Some(i),
                        _ => None,
                    };
                }
                let Some((call_node, previous_state)) = stack.pop() else {
                    return Verdict::NotLinearizable {
                        longest_prefix,
                        blocked_by,
                    };
                };
                let Event::Call(i) = events.event[call_node] else {
                    unreachable!("only call nodes are pushed on the stack");
                };
                linearized.clear(i);
                if entries[i].ret.is_some() {
                    definite_done -= 1;
                }
                state = previous_state;
                events.unlift(call_node, i);
                node = events.next[call_node];
            }
        }
    }
}

/// A problem found on one key.
#[derive(Clone, Debug, Serialize)]
pub struct KeyViolation {
    pub key: String,
    pub operations: usize,
    /// What went wrong, in words.
    pub explanation: String,
    /// The records involved (the end of the longest linearizable prefix, and the op that could
    /// not follow it), as JSON-friendly text.
    pub context: Vec<String>,
}

/// The verdict over every register key of a history.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LinearizabilityReport {
    pub keys_checked: usize,
    pub operations_checked: usize,
    pub violations: Vec<KeyViolation>,
    /// Keys whose search exceeded its budget.
    pub unknown_keys: Vec<String>,
}

/// How many records of the longest prefix a violation shows.
const CONTEXT_RECORDS: usize = 6;

/// Checks the register sub-history of every key for which `select` is true.
pub fn check_registers(
    records: &[Record],
    select: impl Fn(&str) -> bool,
    budget_per_key: Duration,
) -> LinearizabilityReport {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, record) in records.iter().enumerate() {
        if select(record.op.key()) {
            by_key.entry(record.op.key()).or_default().push(i);
        }
    }
    let mut report = LinearizabilityReport::default();
    for (key, indices) in by_key {
        let subhistory: Vec<&Record> = indices.iter().map(|&i| &records[i]).collect();
        let (entries, problem) = register_entries(&subhistory);
        report.keys_checked += 1;
        report.operations_checked += entries.len();
        if let Some(explanation) = problem {
            report.violations.push(KeyViolation {
                key: key.to_string(),
                operations: entries.len(),
                explanation,
                context: Vec::new(),
            });
            continue;
        }
        match check(&Register, &entries, budget_per_key) {
            Verdict::Linearizable => {}
            Verdict::Unknown { .. } => report.unknown_keys.push(key.to_string()),
            Verdict::NotLinearizable {
                longest_prefix,
                blocked_by,
            } => {
                let describe = |entry: usize| describe_record(subhistory[entries[entry].record]);
                let mut context: Vec<String> = longest_prefix
                    .iter()
                    .rev()
                    .take(CONTEXT_RECORDS)
                    .rev()
                    .map(|&entry| format!("linearized: {}", describe(entry)))
                    .collect();
                if let Some(entry) = blocked_by {
                    context.push(format!("cannot follow: {}", describe(entry)));
                }
                report.violations.push(KeyViolation {
                    key: key.to_string(),
                    operations: entries.len(),
                    explanation: format!(
                        "no linearization exists: at best {} of {} operations could be ordered",
                        longest_prefix.len(),
                        entries.len()
                    ),
                    context,
                });
            }
        }
    }
    report
}

/// The register entries of one key's records (indices in `record` point into `subhistory`),
/// and a description of any read that returned a value no write could have produced.
fn register_entries(subhistory: &[&Record]) -> (Vec<Entry<RegisterOp>>, Option<String>) {
    let mut values: HashMap<&str, u32> = HashMap::new();
    let mut failed: HashSet<&str> = HashSet::new();
    for record in subhistory {
        if let Op::Write { value, .. } = &record.op {
            match record.outcome {
                Outcome::Fail { .. } => {
                    failed.insert(value);
                }
                _ => {
                    let next = u32::try_from(values.len()).unwrap_or(u32::MAX);
                    values.entry(value).or_insert(next);
                }
            }
        }
    }
    let mut entries = Vec::new();
    let mut problem = None;
    for (i, record) in subhistory.iter().enumerate() {
        let op = match (&record.op, &record.outcome) {
            (Op::Write { .. }, Outcome::Fail { .. }) => continue,
            (Op::Write { value, .. }, _) => RegisterOp::Write(values[value.as_str()]),
            (Op::Read { .. }, Outcome::ReadOk { value }) => match value {
                None => RegisterOp::Read(None),
                Some(seen) => match values.get(seen.as_str()) {
                    Some(id) => RegisterOp::Read(Some(*id)),
                    None => {
                        let why = if failed.contains(seen.as_str()) {
                            "written only by a write that failed"
                        } else {
                            "never written to this key"
                        };
                        problem.get_or_insert(format!(
                            "a read returned {seen:?}, a value {why}: {}",
                            describe_record(record)
                        ));
                        continue;
                    }
                },
            },
            // Reads that failed or whose outcome is unknown say nothing.
            (Op::Read { .. }, _) => continue,
        };
        let ret = match record.outcome {
            Outcome::Info { .. } => None,
            _ => Some(record.completed_at),
        };
        entries.push(Entry {
            op,
            call: record.invoked_at,
            ret,
            record: i,
        });
    }
    (entries, problem)
}

/// One line describing a record for a report.
pub fn describe_record(record: &Record) -> String {
    let op = match &record.op {
        Op::Read { key } => format!("read {key}"),
        Op::Write {
            key,
            value,
            concern,
        } => format!("write {key}={value} (w={concern})"),
    };
    let outcome = match &record.outcome {
        Outcome::ReadOk { value } => format!("ok -> {value:?}"),
        Outcome::WriteOk => "ok".to_string(),
        Outcome::Fail { error } => format!("fail ({error})"),
        Outcome::Info { error } => format!("info ({error})"),
    };
    let served = record
        .served
        .map(|s| format!(" by node {} epoch {} index {}", s.node, s.epoch, s.index))
        .unwrap_or_default();
    format!(
        "process {} {op} [{:.3}s..{:.3}s] {outcome}{served}",
        record.process,
        record.invoked_at as f64 / 1e9,
        record.completed_at as f64 / 1e9
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Door;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use replikv::WriteConcern;

    const BUDGET: Duration = Duration::from_secs(10);

    fn write(
        process: u64,
        key: &str,
        value: &str,
        call: Nanos,
        ret: Nanos,
        outcome: Outcome,
    ) -> Record {
        Record {
            process,
            door: Door::Quic,
            op: Op::Write {
                key: key.into(),
                value: value.into(),
                concern: WriteConcern::Majority,
            },
            invoked_at: call,
            completed_at: ret,
            outcome,
            served: None,
        }
    }

    fn read(process: u64, key: &str, seen: Option<&str>, call: Nanos, ret: Nanos) -> Record {
        Record {
            process,
            door: Door::Quic,
            op: Op::Read { key: key.into() },
            invoked_at: call,
            completed_at: ret,
            outcome: Outcome::ReadOk {
                value: seen.map(str::to_string),
            },
            served: None,
        }
    }

    fn info() -> Outcome {
        Outcome::Info {
            error: "timeout".into(),
        }
    }

    fn fail() -> Outcome {
        Outcome::Fail {
            error: "refused".into(),
        }
    }

    fn verdict(records: &[Record]) -> LinearizabilityReport {
        check_registers(records, |_| true, BUDGET)
    }

    #[test]
    fn sequential_reads_of_the_last_write_pass() {
        let history = [
            read(1, "k", None, 0, 1),
            write(1, "k", "a", 2, 3, Outcome::WriteOk),
            read(2, "k", Some("a"), 4, 5),
            write(2, "k", "b", 6, 7, Outcome::WriteOk),
            read(1, "k", Some("b"), 8, 9),
        ];
        let report = verdict(&history);
        assert!(report.violations.is_empty(), "{report:?}");
        assert_eq!(report.operations_checked, 5);
    }

    #[test]
    fn concurrent_write_may_be_seen_or_not() {
        // The write overlaps both reads: one sees the old value, one the new; either order of
        // read and write is allowed as long as the reads do not go back in time.
        let history = [
            write(1, "k", "a", 0, 1, Outcome::WriteOk),
            write(2, "k", "b", 10, 40, Outcome::WriteOk),
            read(3, "k", Some("a"), 15, 20),
            read(3, "k", Some("b"), 25, 30),
        ];
        assert!(verdict(&history).violations.is_empty());
    }

    #[test]
    fn reads_that_go_back_in_time_fail() {
        let history = [
            write(1, "k", "a", 0, 1, Outcome::WriteOk),
            write(2, "k", "b", 10, 40, Outcome::WriteOk),
            read(3, "k", Some("b"), 15, 20),
            read(3, "k", Some("a"), 25, 30),
        ];
        let report = verdict(&history);
        assert_eq!(report.violations.len(), 1, "{report:?}");
        assert!(!report.violations[0].context.is_empty());
    }

    #[test]
    fn a_stale_read_after_a_completed_write_fails() {
        let history = [
            write(1, "k", "a", 0, 1, Outcome::WriteOk),
            write(1, "k", "b", 2, 3, Outcome::WriteOk),
            read(2, "k", Some("a"), 4, 5),
        ];
        assert_eq!(verdict(&history).violations.len(), 1);
    }

    #[test]
    fn a_read_of_a_never_written_value_fails() {
        let history = [
            write(1, "k", "a", 0, 1, Outcome::WriteOk),
            read(2, "k", Some("zzz"), 4, 5),
        ];
        let report = verdict(&history);
        assert_eq!(report.violations.len(), 1);
        assert!(
            report.violations[0].explanation.contains("never written"),
            "{report:?}"
        );
    }

    #[test]
    fn failed_writes_never_take_effect() {
        let history = [
            write(1, "k", "a", 0, 1, fail()),
            read(2, "k", Some("a"), 4, 5),
        ];
        let report = verdict(&history);
        assert_eq!(report.violations.len(), 1);
        assert!(report.violations[0].explanation.contains("failed"));
        // And a failed write is not required to be visible.
        let history = [write(1, "k", "a", 0, 1, fail()), read(2, "k", None, 4, 5)];
        assert!(verdict(&history).violations.is_empty());
    }

    #[test]
    fn indeterminate_writes_may_apply_late_or_never() {
        // Seen long after its invocation...
        let late = [
            write(1, "k", "a", 0, 1, Outcome::WriteOk),
            write(2, "k", "b", 2, 3, info()),
            read(3, "k", Some("a"), 10, 11),
            read(3, "k", Some("b"), 20, 21),
        ];
        assert!(verdict(&late).violations.is_empty());
        // ...or never seen at all.
        let never = [
            write(1, "k", "a", 0, 1, Outcome::WriteOk),
            write(2, "k", "b", 2, 3, info()),
            read(3, "k", Some("a"), 10, 11),
        ];
        assert!(verdict(&never).violations.is_empty());
        // But once seen, it cannot be unseen.
        let flicker = [
            write(1, "k", "a", 0, 1, Outcome::WriteOk),
            write(2, "k", "b", 2, 3, info()),
            read(3, "k", Some("b"), 10, 11),
            read(3, "k", Some("a"), 20, 21),
        ];
        assert_eq!(verdict(&flicker).violations.len(), 1);
        // Nor can it take effect before it was invoked.
        let early = [
            read(3, "k", Some("b"), 0, 1),
            write(2, "k", "b", 2, 3, info()),
        ];
        assert_eq!(verdict(&early).violations.len(), 1);
    }

    #[test]
    fn indeterminate_and_failed_reads_are_ignored() {
        let mut lost_read = read(3, "k", Some("zzz"), 10, 11);
        lost_read.outcome = info();
        let history = [write(1, "k", "a", 0, 1, Outcome::WriteOk), lost_read];
        let report = verdict(&history);
        assert!(report.violations.is_empty());
        assert_eq!(report.operations_checked, 1);
    }

    #[test]
    fn keys_are_checked_independently() {
        let history = [
            write(1, "x", "a", 0, 1, Outcome::WriteOk),
            write(1, "y", "b", 2, 3, Outcome::WriteOk),
            read(2, "x", Some("a"), 4, 5),
            read(2, "y", None, 6, 7),
        ];
        let report = verdict(&history);
        assert_eq!(report.keys_checked, 2);
        assert_eq!(report.violations.len(), 1);
        assert_eq!(report.violations[0].key, "y");
        let only_x = check_registers(&history, |key| key == "x", BUDGET);
        assert_eq!(only_x.keys_checked, 1);
        assert!(only_x.violations.is_empty());
    }

    #[test]
    fn an_exhausted_budget_is_unknown_not_a_pass() {
        // Many concurrent indeterminate writes, and a read that needs the first of them to take
        // effect after the last acknowledged write: the search tries subsets of the others first,
        // far more than it can in a zero budget.
        let mut history: Vec<Record> = (0..40)
            .map(|i| write(i, "k", &format!("v{i}"), 0, 1, info()))
            .collect();
        history.push(write(99, "k", "last", 2, 3, Outcome::WriteOk));
        history.push(read(100, "k", Some("v0"), 4, 5));
        let report = check_registers(&history, |_| true, Duration::ZERO);
        assert_eq!(report.unknown_keys, vec!["k".to_string()]);
        assert!(report.violations.is_empty());
    }

    /// A history that is linearizable by construction: a sequential run of reads and writes on
    /// one register, each operation then given an interval around its linearization point.
    /// Some writes are indeterminate (they took effect, or never did and nobody saw them), some
    /// failed (never took effect), some reads are indeterminate.
    fn linearizable_history(seed: u64, operations: usize, processes: u64) -> Vec<Record> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut current: Option<String> = None;
        let mut records = Vec::new();
        // Each process has one operation at a time: it may start only after its last one ended.
        let mut free_at: Vec<Nanos> = vec![0; processes as usize];
        let mut point: Nanos = 1_000;
        for n in 0..operations {
            point += rng.gen_range(1..50);
            let process = rng.gen_range(0..processes);
            let earliest = free_at[process as usize];
            if earliest >= point {
                continue;
            }
            let call = rng.gen_range(earliest..point);
            let ret = point + rng.gen_range(0..200);
            free_at[process as usize] = ret + 1;
            let value = format!("v{n}");
            let record = match rng.gen_range(0..10) {
                0..=3 => read(process, "k", current.as_deref(), call, ret),
                4..=7 => {
                    current = Some(value.clone());
                    write(process, "k", &value, call, ret, Outcome::WriteOk)
                }
                8 => {
                    // Indeterminate: applied at `point` half the time, never otherwise.
                    if rng.gen_bool(0.5) {
                        current = Some(value.clone());
                    }
                    free_at[process as usize] = Nanos::MAX;
                    write(process, "k", &value, call, ret, info())
                }
                _ => write(process, "k", &value, call, ret, fail()),
            };
            records.push(record);
            if free_at.iter().all(|&free| free == Nanos::MAX) {
                break;
            }
        }
        records
    }

    #[test]
    fn generated_linearizable_histories_pass() {
        for seed in 0..200 {
            let history = linearizable_history(seed, 120, 5);
            let report = verdict(&history);
            assert!(
                report.violations.is_empty() && report.unknown_keys.is_empty(),
                "seed {seed}: {report:#?}"
            );
        }
    }

    /// Makes a read return the value of a write that was followed, in real time, by another
    /// completed write before the read began. Returns false if the history has no such triple.
    fn make_stale_read(history: &mut [Record], pick: usize) -> bool {
        let acked_writes: Vec<(Nanos, Nanos, String)> = history
            .iter()
            .filter_map(|record| match (&record.op, &record.outcome) {
                (Op::Write { value, .. }, Outcome::WriteOk) => {
                    Some((record.invoked_at, record.completed_at, value.clone()))
                }
                _ => None,
            })
            .collect();
        let reads: Vec<usize> = (0..history.len())
            .filter(|&i| matches!(history[i].outcome, Outcome::ReadOk { .. }))
            .collect();
        for offset in 0..reads.len() {
            let target = reads[(pick + offset) % reads.len()];
            let read_call = history[target].invoked_at;
            for (_, first_ret, stale) in &acked_writes {
                let overwritten = acked_writes
                    .iter()
                    .any(|(call, ret, _)| call > first_ret && *ret < read_call);
                if overwritten {
                    history[target].outcome = Outcome::ReadOk {
                        value: Some(stale.clone()),
                    };
                    return true;
                }
            }
        }
        false
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn linearizable_by_construction(seed in any::<u64>(), ops in 1usize..150, procs in 1u64..8) {
            let history = linearizable_history(seed, ops, procs);
            let report = verdict(&history);
            prop_assert!(report.violations.is_empty(), "{:#?}", report);
            prop_assert!(report.unknown_keys.is_empty());
        }

        #[test]
        fn stale_reads_are_caught(seed in any::<u64>(), ops in 20usize..150, pick in any::<usize>()) {
            let mut history = linearizable_history(seed, ops, 4);
            prop_assume!(make_stale_read(&mut history, pick));
            let report = verdict(&history);
            prop_assert_eq!(report.violations.len(), 1, "{:#?}", report);
        }

        #[test]
        fn reads_of_unwritten_values_are_caught(seed in any::<u64>(), ops in 5usize..150, pick in any::<usize>()) {
            let mut history = linearizable_history(seed, ops, 4);
            let reads: Vec<usize> = (0..history.len())
                .filter(|&i| matches!(history[i].outcome, Outcome::ReadOk { .. }))
                .collect();
            prop_assume!(!reads.is_empty());
            history[reads[pick % reads.len()]].outcome = Outcome::ReadOk { value: Some("never".into()) };
            prop_assert_eq!(verdict(&history).violations.len(), 1);
        }

        /// On small arbitrary histories (mostly not linearizable), the search agrees with brute
        /// force over every order and every choice of which indeterminate writes took effect.
        #[test]
        fn agrees_with_brute_force(ops in proptest::collection::vec((0u8..4, 0u64..30, 0u64..30, 0u32..4), 1..7)) {
            let mut entries = Vec::new();
            for (i, (kind, start, length, read_of)) in ops.into_iter().enumerate() {
                // Kind 0: acknowledged write; 1: indeterminate write; 2, 3: read of a value that
                // entries 0..3 may have written, or of the absent key.
                let op = match kind {
                    0 | 1 => RegisterOp::Write(i as u32),
                    _ => RegisterOp::Read((read_of < 3).then_some(read_of)),
                };
                let ret = (kind != 1).then_some(start + length);
                entries.push(Entry { op, call: start, ret, record: i });
            }
            let expected = brute_force(&entries);
            let verdict = check(&Register, &entries, BUDGET);
            prop_assert_eq!(verdict == Verdict::Linearizable, expected, "{:?}", entries);
        }
    }

    /// Whether some subset of the indeterminate entries plus all definite ones has an order that
    /// respects real time and the register.
    fn brute_force(entries: &[Entry<RegisterOp>]) -> bool {
        let optional: Vec<usize> = (0..entries.len())
            .filter(|&i| entries[i].ret.is_none())
            .collect();
        (0..1u32 << optional.len()).any(|mask| {
            let chosen: Vec<usize> = (0..entries.len())
                .filter(|i| match optional.iter().position(|o| o == i) {
                    Some(bit) => mask & (1 << bit) != 0,
                    None => true,
                })
                .collect();
            permutations(&chosen).iter().any(|order| {
                let respects_time = order.iter().enumerate().all(|(pos, &a)| {
                    order[pos + 1..].iter().all(|&b| match entries[b].ret {
                        Some(b_ret) => b_ret >= entries[a].call,
                        None => true,
                    })
                });
                let mut state = None;
                respects_time
                    && order
                        .iter()
                        .all(|&i| match Register.step(&state, &entries[i].op) {
                            Some(next) => {
                                state = next;
                                true
                            }
                            None => false,
                        })
            })
        })
    }

    fn permutations(items: &[usize]) -> Vec<Vec<usize>> {
        if items.is_empty() {
            return vec![Vec::new()];
        }
        let mut all = Vec::new();
        for i in 0..items.len() {
            let mut rest = items.to_vec();
            let first = rest.remove(i);
            for mut tail in permutations(&rest) {
                tail.insert(0, first);
                all.push(tail);
            }
        }
        all
    }
}
