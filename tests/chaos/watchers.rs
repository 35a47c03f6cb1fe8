//! Watchers in the chaos run: change feeds followed through kills, pauses, partitions and
//! failovers, then judged against the log the healed cluster agrees on.
//!
//! Each watcher follows one prefix from index 1 with [`Client::watch`], which resumes on another
//! node by itself. If the stream still ends with an error (no node served it for the client's
//! timeout), the watcher opens a new one after the last index it delivered, as a user would, and
//! skips the changes of a half-delivered batch it already has. Once the cluster is healed and
//! quiet, every watcher must reach the index all nodes applied, and a reference watch of every
//! key from index 1 is read. The checks ([`check`]):
//! - each watcher delivered exactly the reference's changes under its prefix, up to that index:
//!   in order, none missing, none twice, none the reference lacks (a rolled-back write);
//! - the reference itself, replayed, gives each node's final state at the index its scans
//!   reflect, so the reference is not merely the watch machinery agreeing with itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use replikv::client::Client;
use replikv::wire::client::WatchEvent;
use replikv::{Error, NodeId};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::checks::Dump;

/// The prefixes watched: the registers (every door writes them), a quarter of the write-once
/// buckets, and every key.
pub const WATCHED_PREFIXES: [&str; 3] = ["r/", "w/0", ""];

/// Watchers per prefix: each stream picks its node at random, so several per prefix make it
/// likely that every kill or pause moves some of them.
pub const WATCHERS_PER_PREFIX: usize = 3;

/// Pause before a watcher whose stream ended opens a new one.
const REOPEN_PAUSE: Duration = Duration::from_millis(200);

/// One delivered change, as text (the chaos workload writes text).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Seen {
    pub index: u64,
    pub key: String,
    /// `None` for a delete.
    pub value: Option<String>,
}

impl Seen {
    fn of(change: replikv::wire::client::Change) -> Seen {
        Seen {
            index: change.index,
            key: String::from_utf8_lossy(&change.key).into_owned(),
            value: change
                .value
                .map(|value| String::from_utf8_lossy(&value).into_owned()),
        }
    }
}

/// What one watcher received.
#[derive(Clone, Debug, Default)]
pub struct WatcherLog {
    pub prefix: String,
    pub changes: Vec<Seen>,
    /// The last index up to which every change was delivered.
    pub position: u64,
    /// How often the stream moved to another node by itself (the client library's resumption).
    pub node_changes: usize,
    /// Why each stream the watcher opened again had ended.
    pub reopened_after: Vec<String>,
    /// Why the watcher gave up, if it did.
    pub ended: Option<String>,
}

impl WatcherLog {
    /// Notes an event of a stream that resumed at `position + 1`: a change at that index the
    /// watcher already has (its stream ended in the middle of a batch) is skipped.
    fn receive(&mut self, event: WatchEvent, skip_at_resume: &mut usize) {
        match event {
            WatchEvent::Change(change) => {
                if *skip_at_resume > 0 && change.index == self.position + 1 {
                    *skip_at_resume -= 1;
                    return;
                }
                self.changes.push(Seen::of(change));
            }
            WatchEvent::Progress { index } => self.position = self.position.max(index),
            WatchEvent::Initial { .. } | WatchEvent::End(_) => {}
        }
    }

    /// How many changes the watcher has at `index`.
    fn changes_at(&self, index: u64) -> usize {
        self.changes
            .iter()
            .rev()
            .take_while(|seen| seen.index >= index)
            .filter(|seen| seen.index == index)
            .count()
    }
}

/// Running watchers; [`Watchers::finish`] ends them.
pub struct Watchers {
    logs: Vec<Arc<Mutex<WatcherLog>>>,
    /// The index every watcher must reach before it stops; `None` during the faulty phase.
    target: watch::Sender<Option<u64>>,
    tasks: JoinSet<()>,
}

impl Watchers {
    /// Starts [`WATCHERS_PER_PREFIX`] watchers per prefix of [`WATCHED_PREFIXES`] on `client`.
    pub fn start(client: &Client) -> Watchers {
        let (target, _) = watch::channel(None);
        let mut tasks = JoinSet::new();
        let mut logs = Vec::new();
        let prefixes = WATCHED_PREFIXES
            .iter()
            .flat_map(|prefix| std::iter::repeat_n(prefix, WATCHERS_PER_PREFIX));
        for prefix in prefixes {
            let log = Arc::new(Mutex::new(WatcherLog {
                prefix: prefix.to_string(),
                ..WatcherLog::default()
            }));
            logs.push(log.clone());
            tasks.spawn(follow(client.session(), log, target.subscribe()));
        }
        Watchers {
            logs,
            target,
            tasks,
        }
    }

    /// Lets every watcher run until it has delivered everything up to `target`, for at most
    /// `patience`, then stops them and returns what each received.
    pub async fn finish(mut self, target: u64, patience: Duration) -> Vec<WatcherLog> {
        self.target.send_replace(Some(target));
        let all_done = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(patience, all_done).await.is_err() {
            self.tasks.abort_all();
        }
        self.logs
            .iter()
            .map(|log| log.lock().expect("a watcher panicked").clone())
            .collect()
    }
}

/// One watcher: follows its prefix from index 1 until it reaches the target.
async fn follow(client: Client, log: Arc<Mutex<WatcherLog>>, target: watch::Receiver<Option<u64>>) {
    let prefix = log.lock().expect("a watcher panicked").prefix.clone();
    let mut stream = client.watch(prefix.as_bytes(), Some(1), false);
    let mut skip_at_resume = 0;
    let mut serving: Option<String> = None;
    loop {
        let position = log.lock().expect("a watcher panicked").position;
        if target.borrow().is_some_and(|target| position >= target) {
            return;
        }
        // Progress notifications wake an idle watcher, so the target is checked now and then
        // without cancelling a read halfway through a frame.
        let event = stream.next().await;
        let reopen_from = {
            let mut log = log.lock().expect("a watcher panicked");
            match event {
                Ok(event) => {
                    log.receive(event, &mut skip_at_resume);
                    if let Some(streamed) = stream.position() {
                        log.position = log.position.max(streamed);
                    }
                    let node = stream.node().map(str::to_string);
                    if serving.is_some() && node.is_some() && node != serving {
                        log.node_changes += 1;
                    }
                    serving = node.or(serving);
                    None
                }
                Err(error @ Error::Compacted { .. }) => {
                    log.ended = Some(format!("the watch ended: {error}"));
                    return;
                }
                Err(error) => {
                    log.reopened_after.push(error.to_string());
                    skip_at_resume = log.changes_at(log.position + 1);
                    Some(log.position + 1)
                }
            }
        };
        if let Some(from) = reopen_from {
            tokio::time::sleep(REOPEN_PAUSE).await;
            stream = client.watch(prefix.as_bytes(), Some(from), false);
        }
    }
}

/// Reads every key's changes from index 1 up to `target` through a fresh watch: the log the
/// healed cluster agrees on. `Err` says why it could not.
pub async fn reference(
    client: &Client,
    target: u64,
    patience: Duration,
) -> std::result::Result<Vec<Seen>, String> {
    let read = async {
        let mut stream = client.watch(b"", Some(1), false);
        let mut changes = Vec::new();
        while stream.position().is_none_or(|position| position < target) {
            match stream.next().await {
                Ok(WatchEvent::Change(change)) => changes.push(Seen::of(change)),
                Ok(_) => {}
                Err(error) => return Err(format!("the reference watch ended: {error}")),
            }
        }
        Ok(changes)
    };
    tokio::time::timeout(patience, read)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the reference watch did not reach {target} in time"
            ))
        })
}

/// One watcher's verdict.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WatcherSummary {
    pub prefix: String,
    pub changes: usize,
    pub position: u64,
    pub node_changes: usize,
    pub streams_reopened: usize,
}

/// The watch checks' verdict.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WatchReport {
    /// The index every watcher had to reach.
    pub target: u64,
    pub reference_changes: usize,
    pub watchers: Vec<WatcherSummary>,
    pub violations: Vec<String>,
}

impl WatchReport {
    pub fn summary(&self) -> String {
        let watchers: Vec<String> = self
            .watchers
            .iter()
            .map(|w| {
                format!(
                    "{:?}: {} changes to {}, moved node {} times, reopened {} times",
                    w.prefix, w.changes, w.position, w.node_changes, w.streams_reopened
                )
            })
            .collect();
        format!(
            "watchers (to index {}, reference {} changes): {}; {} violations",
            self.target,
            self.reference_changes,
            watchers.join("; "),
            self.violations.len()
        )
    }
}

/// Judges the watchers against the reference (every key's changes up to `target`) and the
/// reference against each node's final state (its scans' index and what they read).
pub fn check(
    logs: &[WatcherLog],
    reference: std::result::Result<Vec<Seen>, String>,
    target: u64,
    node_states: &BTreeMap<NodeId, (u64, Dump)>,
) -> WatchReport {
    let mut report = WatchReport {
        target,
        ..WatchReport::default()
    };
    for log in logs {
        report.watchers.push(WatcherSummary {
            prefix: log.prefix.clone(),
            changes: log.changes.len(),
            position: log.position,
            node_changes: log.node_changes,
            streams_reopened: log.reopened_after.len(),
        });
        if let Some(why) = &log.ended {
            report
                .violations
                .push(format!("watcher {:?} gave up: {why}", log.prefix));
        }
        if log.position < target {
            report.violations.push(format!(
                "watcher {:?} reached only index {} of {target} after heal",
                log.prefix, log.position
            ));
        }
    }
    let reference = match reference {
        Ok(reference) => reference,
        Err(why) => {
            report.violations.push(why);
            return report;
        }
    };
    report.reference_changes = reference.len();
    for log in logs {
        let expected: Vec<&Seen> = reference
            .iter()
            .filter(|seen| seen.key.starts_with(&log.prefix) && seen.index <= target)
            .collect();
        let delivered: Vec<&Seen> = log
            .changes
            .iter()
            .filter(|seen| seen.index <= target)
            .collect();
        if let Some(difference) = first_difference(&expected, &delivered) {
            report
                .violations
                .push(format!("watcher {:?}: {difference}", log.prefix));
        }
    }
    for (node, (index, dump)) in node_states {
        let mut replayed = Dump::new();
        for seen in reference.iter().filter(|seen| seen.index <= *index) {
            match &seen.value {
                Some(value) => replayed.insert(seen.key.clone(), value.clone()),
                None => replayed.remove(&seen.key),
            };
        }
        if replayed != *dump {
            let differing = replayed
                .keys()
                .chain(dump.keys())
                .find(|key| replayed.get(*key) != dump.get(*key))
                .cloned()
                .unwrap_or_default();
            report.violations.push(format!(
                "the reference watch replayed to index {index} differs from node {node}'s state: \
                 {differing:?} is {:?} replayed, {:?} on the node",
                replayed.get(&differing),
                dump.get(&differing)
            ));
        }
    }
    report
}

/// Where `delivered` first departs from `expected`, described.
fn first_difference(expected: &[&Seen], delivered: &[&Seen]) -> Option<String> {
    let at = expected
        .iter()
        .zip(delivered)
        .position(|(expected, delivered)| expected != delivered)
        .unwrap_or(expected.len().min(delivered.len()));
    match (expected.get(at), delivered.get(at)) {
        (None, None) => None,
        (Some(missing), None) => Some(format!(
            "{} committed changes never delivered, from {missing:?}",
            expected.len() - at
        )),
        (None, Some(extra)) => Some(format!(
            "{} changes delivered beyond the committed ones, from {extra:?}",
            delivered.len() - at
        )),
        (Some(expected), Some(delivered)) => Some(format!(
            "change number {at} is {delivered:?}, the committed log has {expected:?} there \
             (a gap, a duplicate, a reordering or a rolled-back write)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(index: u64, key: &str, value: Option<&str>) -> Seen {
        Seen {
            index,
            key: key.into(),
            value: value.map(Into::into),
        }
    }

    fn log(prefix: &str, changes: Vec<Seen>, position: u64) -> WatcherLog {
        WatcherLog {
            prefix: prefix.into(),
            changes,
            position,
            ..WatcherLog::default()
        }
    }

    fn committed() -> Vec<Seen> {
        vec![
            seen(1, "r/1", Some("a")),
            seen(2, "w/00/1", Some("b")),
            seen(3, "r/1", None),
            seen(4, "r/2", Some("c")),
            seen(4, "r/3", Some("d")),
        ]
    }

    fn states(index: u64, pairs: &[(&str, &str)]) -> BTreeMap<NodeId, (u64, Dump)> {
        let dump = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        BTreeMap::from([(1, (index, dump))])
    }

    #[test]
    fn exactly_the_committed_changes_pass() {
        let registers = committed()
            .into_iter()
            .filter(|s| s.key.starts_with("r/"))
            .collect();
        let report = check(
            &[log("r/", registers, 4), log("", committed(), 5)],
            Ok(committed()),
            4,
            &states(4, &[("w/00/1", "b"), ("r/2", "c"), ("r/3", "d")]),
        );
        assert!(report.violations.is_empty(), "{:?}", report.violations);
    }

    #[test]
    fn a_gap_a_duplicate_or_a_rolled_back_write_fails() {
        let mut gap = committed();
        gap.remove(1);
        let mut duplicate = committed();
        duplicate.insert(4, seen(4, "r/2", Some("c")));
        let mut rolled_back = committed();
        rolled_back.insert(2, seen(3, "r/9", Some("never committed")));
        for (name, delivered) in [
            ("gap", gap),
            ("duplicate", duplicate),
            ("rolled back", rolled_back),
        ] {
            let report = check(
                &[log("", delivered, 4)],
                Ok(committed()),
                4,
                &BTreeMap::new(),
            );
            assert_eq!(
                report.violations.len(),
                1,
                "{name}: {:?}",
                report.violations
            );
        }
    }

    #[test]
    fn a_watcher_short_of_the_target_fails() {
        let report = check(
            &[log("", committed(), 3)],
            Ok(committed()),
            4,
            &BTreeMap::new(),
        );
        assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
        assert!(report.violations[0].contains("reached only index 3"));
    }

    #[test]
    fn a_reference_that_does_not_replay_to_the_state_fails() {
        let report = check(&[], Ok(committed()), 4, &states(2, &[("r/1", "a")]));
        assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
        assert!(report.violations[0].contains("w/00/1"));
    }

    #[test]
    fn a_resumed_stream_skips_what_the_watcher_has_of_a_batch() {
        let mut watcher = log("r/", vec![seen(4, "r/2", Some("c"))], 3);
        let mut skip = watcher.changes_at(4);
        assert_eq!(skip, 1);
        for change in [seen(4, "r/2", Some("c")), seen(4, "r/3", Some("d"))] {
            let event = WatchEvent::Change(replikv::wire::client::Change {
                index: change.index,
                epoch: 1,
                key: change.key.into_bytes(),
                value: change.value.map(String::into_bytes),
            });
            watcher.receive(event, &mut skip);
        }
        assert_eq!(
            watcher.changes,
            vec![seen(4, "r/2", Some("c")), seen(4, "r/3", Some("d"))]
        );
    }
}
