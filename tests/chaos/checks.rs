//! The checkers that need more than the history: final reads, node logs and node states.
//!
//! - **Lost writes** (invariant 5 of docs/ARCHITECTURE.md): every write-once key acknowledged at `majority` or
//!   above must be in the final linearizable read from the primary and in every node's stale read
//!   after the cluster healed and went quiet. Writes acknowledged at `w=1` may be rolled back by a
//!   failover; they are counted, not judged. A value present that no write put there is
//!   "unexpected", and so is a failed write that took effect.
//! - **Primaries per epoch** (invariant 1): each node logs `elected primary node=<id>
//!   epoch=<e>` when it wins an election; every acknowledgment also names the node and epoch that
//!   served it. Two different nodes for one epoch is a split brain.
//! - **Divergence** (invariant 4): after heal and quiet, every node's whole state hashes equal to
//!   the primary's.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use replikv::{Epoch, NodeId, WriteConcern};
use serde::Serialize;

use crate::history::{Nanos, Op, Outcome, Record, Served};

/// A node's state as read back: key to value.
pub type Dump = BTreeMap<String, String>;

/// Whether a write acknowledged at `concern` must survive any failure, in a cluster whose
/// majority is `majority` voters.
pub fn is_durable(concern: WriteConcern, majority: usize) -> bool {
    match concern {
        WriteConcern::Majority | WriteConcern::All => true,
        WriteConcern::Count(count) => count as usize >= majority,
        WriteConcern::One => majority <= 1,
    }
}

/// An acknowledged (or failed) write as the lost-write report shows it.
#[derive(Clone, Debug, Serialize)]
pub struct WriteSummary {
    pub key: String,
    pub value: String,
    pub concern: String,
    /// Seconds on the history's clock.
    pub completed_at_s: f64,
    pub served: Option<Served>,
    /// What the final read found instead (`None`: the key is absent).
    pub found: Option<String>,
}

/// A value in a final read that no write could have put there.
#[derive(Clone, Debug, Serialize)]
pub struct UnexpectedValue {
    /// `None` for the final linearizable read, else the node whose stale read showed it.
    pub node: Option<NodeId>,
    pub key: String,
    pub value: String,
}

/// The verdict of the lost-write checker.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LostWriteReport {
    /// Writes acknowledged at `majority` or above: these must all survive.
    pub acknowledged_durable: usize,
    /// Writes acknowledged at a smaller `w`: allowed to be rolled back.
    pub acknowledged_weak: usize,
    /// Of those, how many are not in the final read.
    pub weak_lost: usize,
    pub indeterminate: usize,
    /// Of the indeterminate writes, how many did take effect.
    pub indeterminate_applied: usize,
    pub failed: usize,
    /// Durable acknowledged writes absent from the final linearizable read.
    pub lost: Vec<WriteSummary>,
    /// Durable acknowledged writes absent from a node's stale read after heal and quiet.
    pub missing_on_nodes: Vec<(NodeId, WriteSummary)>,
    /// Writes that failed (certainly not performed) yet are present.
    pub failed_but_applied: Vec<WriteSummary>,
    pub unexpected: Vec<UnexpectedValue>,
}

/// Checks write-once keys under `prefix` against the final reads.
pub fn check_lost_writes(
    records: &[Record],
    prefix: &str,
    majority: usize,
    final_read: &Dump,
    node_reads: &BTreeMap<NodeId, Dump>,
) -> LostWriteReport {
    let mut report = LostWriteReport::default();
    let mut attempted: BTreeMap<&str, &str> = BTreeMap::new();
    for record in records {
        let Op::Write {
            key,
            value,
            concern,
        } = &record.op
        else {
            continue;
        };
        if !key.starts_with(prefix) {
            continue;
        }
        attempted.insert(key, value);
        let found = final_read.get(key);
        let summary = || WriteSummary {
            key: key.clone(),
            value: value.clone(),
            concern: concern.to_string(),
            completed_at_s: seconds(record.completed_at),
            served: record.served,
            found: found.cloned(),
        };
        let present = found == Some(value);
        match record.outcome {
            Outcome::WriteOk if is_durable(*concern, majority) => {
                report.acknowledged_durable += 1;
                if !present {
                    report.lost.push(summary());
                }
                for (node, dump) in node_reads {
                    if dump.get(key) != Some(value) {
                        let mut missing = summary();
                        missing.found = dump.get(key).cloned();
                        report.missing_on_nodes.push((*node, missing));
                    }
                }
            }
            Outcome::WriteOk => {
                report.acknowledged_weak += 1;
                if !present {
                    report.weak_lost += 1;
                }
            }
            Outcome::Info { .. } => {
                report.indeterminate += 1;
                if present {
                    report.indeterminate_applied += 1;
                }
            }
            Outcome::Fail { .. } => {
                report.failed += 1;
                if present {
                    report.failed_but_applied.push(summary());
                }
            }
            Outcome::ReadOk { .. } => {}
        }
    }
    report
        .missing_on_nodes
        .sort_by(|(a, x), (b, y)| (a, &x.key).cmp(&(b, &y.key)));
    let reads = std::iter::once((None, final_read))
        .chain(node_reads.iter().map(|(node, dump)| (Some(*node), dump)));
    for (node, dump) in reads {
        for (key, value) in dump.range::<str, _>((Bound::Included(prefix), Bound::Unbounded)) {
            if !key.starts_with(prefix) {
                break;
            }
            if attempted.get(key.as_str()) != Some(&value.as_str()) {
                report.unexpected.push(UnexpectedValue {
                    node,
                    key: key.clone(),
                    value: value.clone(),
                });
            }
        }
    }
    report
}

/// Two or more primaries claimed one epoch.
#[derive(Clone, Debug, Serialize)]
pub struct EpochConflict {
    pub epoch: Epoch,
    /// Nodes that logged winning this epoch's election.
    pub elected: BTreeSet<NodeId>,
    /// Nodes that acknowledged operations as primary of this epoch.
    pub served: BTreeSet<NodeId>,
}

/// The verdict of the primaries-per-epoch checker.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PrimaryReport {
    /// `elected primary` lines found in the node logs.
    pub elections: usize,
    /// Epoch to the nodes elected in it, from the logs.
    pub elected: BTreeMap<Epoch, BTreeSet<NodeId>>,
    pub conflicts: Vec<EpochConflict>,
}

/// Finds every epoch with more than one primary, from node logs (`(node id, log text)`) and from
/// the nodes that served acknowledged writes and linearizable reads.
pub fn check_primaries(logs: &[(NodeId, String)], records: &[Record]) -> PrimaryReport {
    let mut report = PrimaryReport::default();
    for (file_node, text) in logs {
        for line in text.lines() {
            if let Some((node, epoch)) = parse_election(line) {
                report.elections += 1;
                report
                    .elected
                    .entry(epoch)
                    .or_default()
                    .insert(node.unwrap_or(*file_node));
            }
        }
    }
    let mut served: BTreeMap<Epoch, BTreeSet<NodeId>> = BTreeMap::new();
    for record in records {
        // Only primaries acknowledge writes and serve linearizable reads.
        if let (Some(by), Outcome::WriteOk | Outcome::ReadOk { .. }) =
            (record.served, &record.outcome)
        {
            served.entry(by.epoch).or_default().insert(by.node);
        }
    }
    let epochs: BTreeSet<Epoch> = report
        .elected
        .keys()
        .chain(served.keys())
        .copied()
        .collect();
    for epoch in epochs {
        let elected = report.elected.get(&epoch).cloned().unwrap_or_default();
        let by_ack = served.get(&epoch).cloned().unwrap_or_default();
        let all: BTreeSet<NodeId> = elected.union(&by_ack).copied().collect();
        if all.len() > 1 {
            report.conflicts.push(EpochConflict {
                epoch,
                elected,
                served: by_ack,
            });
        }
    }
    report
}

/// Parses a node log line announcing an election win: tracing's default format, e.g.
/// `2025-01-01T00:00:00.1Z  INFO replikv::core::node: elected primary node=3 epoch=5
/// last_index=17`, with or without ANSI colours. Returns the node (if the line names it) and
/// the epoch.
pub fn parse_election(line: &str) -> Option<(Option<NodeId>, Epoch)> {
    let line = strip_ansi(line);
    let (_, fields) = line.split_once("elected primary")?;
    let field = |name: &str| {
        fields
            .split_whitespace()
            .find_map(|token| token.strip_prefix(name)?.strip_prefix('='))
            .and_then(|value| {
                value
                    .trim_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .ok()
            })
    };
    Some((field("node"), field("epoch")?))
}

/// Removes ANSI escape sequences (`ESC [ ... final byte`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// One node's final state, summarized.
#[derive(Clone, Debug, Serialize)]
pub struct NodeDigest {
    pub node: NodeId,
    /// The log index the node's reads reflected.
    pub index: u64,
    pub keys: usize,
    /// FNV-1a over every key and value in order, in hex.
    pub digest: String,
}

/// The verdict of the divergence checker.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DivergenceReport {
    pub nodes: Vec<NodeDigest>,
    /// The node whose state the others were compared with.
    pub reference: Option<NodeId>,
    pub divergent: Vec<NodeId>,
    /// A few keys on which each divergent node differs: `node N: key: ours vs reference`.
    pub differences: Vec<String>,
}

/// Keys shown per divergent node.
const DIFFERENCES_SHOWN: usize = 10;

/// Compares every node's state with `reference`'s (the primary's), or with the most common state
/// when there is no reference.
pub fn check_divergence(
    dumps: &BTreeMap<NodeId, (u64, Dump)>,
    reference: Option<NodeId>,
) -> DivergenceReport {
    let mut report = DivergenceReport::default();
    let digests: BTreeMap<NodeId, u64> = dumps
        .iter()
        .map(|(node, (_, dump))| (*node, digest(dump)))
        .collect();
    for (node, (index, dump)) in dumps {
        report.nodes.push(NodeDigest {
            node: *node,
            index: *index,
            keys: dump.len(),
            digest: format!("{:016x}", digests[node]),
        });
    }
    let reference = reference
        .filter(|node| dumps.contains_key(node))
        .or_else(|| {
            // The digest most nodes share; ties go to the lowest node id.
            let mut counts: BTreeMap<u64, (usize, NodeId)> = BTreeMap::new();
            for (node, digest) in &digests {
                let entry = counts.entry(*digest).or_insert((0, *node));
                entry.0 += 1;
            }
            counts
                .values()
                .max_by_key(|(count, node)| (*count, std::cmp::Reverse(*node)))
                .map(|(_, node)| *node)
        });
    report.reference = reference;
    let Some(reference) = reference else {
        return report;
    };
    let expected = &dumps[&reference].1;
    for (node, (_, dump)) in dumps {
        if digests[node] == digests[&reference] {
            continue;
        }
        report.divergent.push(*node);
        let keys: BTreeSet<&String> = dump.keys().chain(expected.keys()).collect();
        let differing = keys
            .into_iter()
            .filter(|key| dump.get(*key) != expected.get(*key))
            .take(DIFFERENCES_SHOWN);
        for key in differing {
            report.differences.push(format!(
                "node {node}: {key}: {:?} vs {:?} on node {reference}",
                dump.get(key),
                expected.get(key)
            ));
        }
    }
    report
}

/// FNV-1a 64 over `key \0 value \0` for every pair in key order: stable across runs.
pub fn digest(dump: &Dump) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (key, value) in dump {
        for byte in key.bytes().chain([0]).chain(value.bytes()).chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

pub fn seconds(at: Nanos) -> f64 {
    at as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Door;

    fn write(key: &str, value: &str, concern: WriteConcern, outcome: Outcome) -> Record {
        Record {
            process: 1,
            door: Door::Quic,
            op: Op::Write {
                key: key.into(),
                value: value.into(),
                concern,
            },
            invoked_at: 0,
            completed_at: 1,
            outcome,
            served: None,
        }
    }

    fn dump(pairs: &[(&str, &str)]) -> Dump {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn info() -> Outcome {
        Outcome::Info {
            error: "timeout".into(),
        }
    }

    #[test]
    fn acknowledged_majority_writes_must_survive() {
        let records = [
            write("w/1", "a", WriteConcern::Majority, Outcome::WriteOk),
            write("w/2", "b", WriteConcern::All, Outcome::WriteOk),
            write("w/3", "c", WriteConcern::Majority, Outcome::WriteOk),
        ];
        let final_read = dump(&[("w/1", "a"), ("w/2", "b")]);
        let nodes = BTreeMap::from([(1, final_read.clone()), (2, dump(&[("w/1", "a")]))]);
        let report = check_lost_writes(&records, "w/", 2, &final_read, &nodes);
        assert_eq!(report.acknowledged_durable, 3);
        let lost: Vec<&str> = report.lost.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(lost, vec!["w/3"]);
        let missing: Vec<(NodeId, &str)> = report
            .missing_on_nodes
            .iter()
            .map(|(node, w)| (*node, w.key.as_str()))
            .collect();
        assert_eq!(missing, vec![(1, "w/3"), (2, "w/2"), (2, "w/3")]);
        assert!(report.unexpected.is_empty());
    }

    #[test]
    fn weak_and_indeterminate_writes_are_counted_not_judged() {
        let records = [
            write("w/1", "a", WriteConcern::One, Outcome::WriteOk),
            write("w/2", "b", WriteConcern::One, Outcome::WriteOk),
            write("w/3", "c", WriteConcern::Majority, info()),
            write("w/4", "d", WriteConcern::Majority, info()),
        ];
        let final_read = dump(&[("w/1", "a"), ("w/3", "c")]);
        let report = check_lost_writes(&records, "w/", 2, &final_read, &BTreeMap::new());
        assert_eq!(report.acknowledged_weak, 2);
        assert_eq!(report.weak_lost, 1);
        assert_eq!(report.indeterminate, 2);
        assert_eq!(report.indeterminate_applied, 1);
        assert!(report.lost.is_empty() && report.unexpected.is_empty());
    }

    #[test]
    fn values_nobody_wrote_and_failed_writes_that_applied_are_flagged() {
        let refused = Outcome::Fail {
            error: "refused".into(),
        };
        let records = [
            write("w/1", "a", WriteConcern::Majority, Outcome::WriteOk),
            write("w/2", "b", WriteConcern::Majority, refused),
        ];
        let final_read = dump(&[("w/1", "a"), ("w/2", "b"), ("w/9", "z"), ("r/1", "x")]);
        let nodes = BTreeMap::from([(3, dump(&[("w/1", "not-a")]))]);
        let report = check_lost_writes(&records, "w/", 2, &final_read, &nodes);
        assert_eq!(report.failed_but_applied.len(), 1);
        let unexpected: Vec<(Option<NodeId>, &str)> = report
            .unexpected
            .iter()
            .map(|u| (u.node, u.key.as_str()))
            .collect();
        // Keys outside the prefix (r/1) are another workload's business.
        assert_eq!(unexpected, vec![(None, "w/9"), (Some(3), "w/1")]);
    }

    #[test]
    fn durability_follows_the_write_concern() {
        assert!(is_durable(WriteConcern::Majority, 2));
        assert!(is_durable(WriteConcern::All, 3));
        assert!(is_durable(WriteConcern::Count(2), 2));
        assert!(!is_durable(WriteConcern::Count(2), 3));
        assert!(!is_durable(WriteConcern::One, 2));
        assert!(is_durable(WriteConcern::One, 1));
    }

    #[test]
    fn election_lines_are_parsed_with_or_without_colour() {
        let plain = "2025-05-01T10:00:00.123456Z  INFO replikv::core::node: elected primary node=3 epoch=5 last_index=17";
        assert_eq!(parse_election(plain), Some((Some(3), 5)));
        let coloured = "\u{1b}[2m2025-05-01T10:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mreplikv::core::node\u{1b}[0m\u{1b}[2m:\u{1b}[0m elected primary \u{1b}[3mnode\u{1b}[0m\u{1b}[2m=\u{1b}[0m2 \u{1b}[3mepoch\u{1b}[0m\u{1b}[2m=\u{1b}[0m12";
        assert_eq!(parse_election(coloured), Some((Some(2), 12)));
        let in_span =
            "2025-05-01T10:00:00Z  INFO node{id=4}: replikv::core::node: elected primary epoch=7";
        assert_eq!(parse_election(in_span), Some((None, 7)));
        assert_eq!(
            parse_election("INFO replikv::core::node: following as backup node=1 epoch=5"),
            None
        );
        assert_eq!(parse_election("starting an election node=1 epoch=5"), None);
    }

    #[test]
    fn two_primaries_in_one_epoch_are_flagged() {
        let logs = vec![
            (1, "x INFO a: elected primary node=1 epoch=2 last_index=0\n".to_string()),
            (
                2,
                "x INFO a: elected primary node=2 epoch=3 last_index=4\nx INFO a: elected primary node=2 epoch=5 last_index=9\n"
                    .to_string(),
            ),
            (3, "x INFO a: elected primary node=3 epoch=5 last_index=9\n".to_string()),
        ];
        let report = check_primaries(&logs, &[]);
        assert_eq!(report.elections, 4);
        let conflicted: Vec<Epoch> = report.conflicts.iter().map(|c| c.epoch).collect();
        assert_eq!(conflicted, vec![5]);
    }

    #[test]
    fn acknowledgments_from_an_unelected_node_are_flagged() {
        let logs = vec![(1, "elected primary node=1 epoch=2\n".to_string())];
        let mut ack = write("w/1", "a", WriteConcern::Majority, Outcome::WriteOk);
        ack.served = Some(Served {
            node: 2,
            epoch: 2,
            index: 7,
        });
        let report = check_primaries(&logs, &[ack.clone()]);
        assert_eq!(report.conflicts.len(), 1);
        assert_eq!(report.conflicts[0].served, BTreeSet::from([2]));
        ack.served = Some(Served {
            node: 1,
            epoch: 2,
            index: 7,
        });
        assert!(check_primaries(&logs, &[ack]).conflicts.is_empty());
    }

    #[test]
    fn divergent_nodes_are_named() {
        let same = dump(&[("a", "1"), ("b", "2")]);
        let dumps = BTreeMap::from([
            (1, (10, same.clone())),
            (2, (10, same.clone())),
            (3, (10, dump(&[("a", "1"), ("b", "3")]))),
        ]);
        let by_majority = check_divergence(&dumps, None);
        assert_eq!(by_majority.reference, Some(1));
        assert_eq!(by_majority.divergent, vec![3]);
        assert!(by_majority.differences[0].contains("b"));
        let by_primary = check_divergence(&dumps, Some(3));
        assert_eq!(by_primary.divergent, vec![1, 2]);
        let converged = BTreeMap::from([(1, (4, same.clone())), (2, (4, same))]);
        assert!(check_divergence(&converged, Some(2)).divergent.is_empty());
    }

    #[test]
    fn the_digest_sees_keys_and_values_apart() {
        assert_ne!(digest(&dump(&[("ab", "c")])), digest(&dump(&[("a", "bc")])));
        assert_ne!(digest(&dump(&[])), digest(&dump(&[("", "")])));
    }
}
