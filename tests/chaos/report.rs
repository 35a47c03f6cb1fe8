//! The chaos report: what ran, what the nemesis did, and every checker's verdict, printed as a
//! summary and written as JSON (`target/chaos-report-<seed>.json`, or `$REPLIKV_CHAOS_REPORT`).
//!
//! [`ChaosReport::violations`] is the single place that decides pass or fail: any entry there fails
//! the test. Budget-exceeded ("unknown") linearizability keys are shown but do not fail the run,
//! since they say the checker gave up, not that the cluster misbehaved.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use replikv::NodeId;
use serde::Serialize;

use crate::checks::{seconds, DivergenceReport, LostWriteReport, PrimaryReport};
use crate::history::{Door, Nanos, Op, Outcome, OutcomeClass, Record};
use crate::large_state::LargeStateReport;
use crate::linearizability::LinearizabilityReport;
use crate::nemesis::{FaultKind, FaultRecord};
use crate::watchers::WatchReport;
use crate::workload::REGISTER_PREFIX;

/// Count and total duration of one kind of fault.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultTotals {
    pub count: usize,
    pub seconds: f64,
}

/// The longest stretch without an acknowledged write.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WriteGap {
    pub seconds: f64,
    pub from_s: f64,
    pub to_s: f64,
}

/// Everything a chaos run found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub nodes: u64,
    pub iptables: String,
    /// Length of the faulty phase, and of the whole run.
    pub fault_phase_seconds: f64,
    pub total_seconds: f64,
    /// Workload (`register-read`, `register-write`, `write-once`, and `register-final-read` for
    /// the reads after heal) to outcome to count.
    pub operations: BTreeMap<String, BTreeMap<String, usize>>,
    pub faults_by_kind: BTreeMap<String, FaultTotals>,
    pub faults: Vec<FaultRecord>,
    pub longest_write_gap: WriteGap,
    pub primaries: PrimaryReport,
    pub linearizability: LinearizabilityReport,
    pub lost_writes: LostWriteReport,
    pub divergence: DivergenceReport,
    /// Rolled-back entries per node (`kvctl status`), after heal. Expected only for `w=1` writes
    /// and for indeterminate ones.
    pub rolled_back_entries: BTreeMap<NodeId, u64>,
    /// The watchers' check (the bounded profile), when the cluster recovered.
    pub watch: Option<WatchReport>,
    /// The large-state profile's check of the prefilled keys, when that profile ran.
    pub large_state: Option<LargeStateReport>,
    /// Liveness and harness problems: no primary after heal, nodes that never converged, nodes
    /// that exited on their own.
    pub problems: Vec<String>,
    /// Where the node logs and the history were saved.
    pub artifacts: String,
}

impl ChaosReport {
    /// Counts operations by workload and outcome.
    pub fn count_operations(&mut self, records: &[Record]) {
        for record in records {
            let workload = match &record.op {
                // The final reads of the registers are added without a serving node (a QUIC
                // read that succeeds always names one).
                Op::Read { .. }
                    if record.door == Door::Quic
                        && record.served.is_none()
                        && record.outcome.class() == OutcomeClass::Ok =>
                {
                    "register-final-read"
                }
                Op::Read { .. } => "register-read",
                Op::Write { key, .. } if key.starts_with(REGISTER_PREFIX) => "register-write",
                Op::Write { .. } => "write-once",
            };
            let workload = match record.door {
                Door::Quic => workload.to_string(),
                door => format!("{workload} via {}", door.name()),
            };
            *self
                .operations
                .entry(workload)
                .or_default()
                .entry(record.outcome.class().to_string())
                .or_default() += 1;
        }
    }

    /// Adds the nemesis's faults and their totals by kind.
    pub fn add_faults(&mut self, faults: &[FaultRecord]) {
        for fault in faults {
            let totals = self
                .faults_by_kind
                .entry(FaultKind::name(fault.kind).to_string())
                .or_default();
            totals.count += 1;
            totals.seconds += seconds(fault.ended_at.saturating_sub(fault.started_at));
        }
        self.faults = faults.to_vec();
    }

    /// Every reason this run fails; empty when it passes.
    pub fn violations(&self) -> Vec<String> {
        let mut violations = Vec::new();
        let lost = &self.lost_writes;
        capped(
            &mut violations,
            "lost acknowledged writes",
            &lost.lost,
            |w| {
                format!(
                "lost acknowledged write: {} = {} (w={}, acknowledged at {:.3}s by {:?}); final read found {:?}",
                w.key, w.value, w.concern, w.completed_at_s, w.served, w.found
            )
            },
        );
        capped(
            &mut violations,
            "acknowledged writes missing on a node",
            &lost.missing_on_nodes,
            |(node, w)| {
                format!(
                    "node {node} lacks acknowledged write {} = {} (w={}); it has {:?}",
                    w.key, w.value, w.concern, w.found
                )
            },
        );
        capped(
            &mut violations,
            "failed writes that took effect",
            &lost.failed_but_applied,
            |w| format!("a write that failed took effect: {} = {}", w.key, w.value),
        );
        capped(
            &mut violations,
            "unexpected values",
            &lost.unexpected,
            |u| {
                let place = match u.node {
                    Some(node) => format!("node {node}"),
                    None => "the final linearizable read".to_string(),
                };
                format!(
                    "unexpected value in {place}: {} = {} was never written",
                    u.key, u.value
                )
            },
        );
        capped(
            &mut violations,
            "linearizability violations",
            &self.linearizability.violations,
            |violation| {
                let mut text = format!(
                    "linearizability violation on {} ({} ops): {}",
                    violation.key, violation.operations, violation.explanation
                );
                for line in &violation.context {
                    let _ = write!(text, "\n      {line}");
                }
                text
            },
        );
        for conflict in &self.primaries.conflicts {
            violations.push(format!(
                "epoch {} had more than one primary: elected {:?}, served operations {:?}",
                conflict.epoch, conflict.elected, conflict.served
            ));
        }
        let successes = self
            .operations
            .values()
            .filter_map(|outcomes| outcomes.get("ok"))
            .sum::<usize>();
        if self.primaries.elections == 0 && successes > 0 {
            violations.push(
                "no `elected primary` line found in any node log although operations succeeded: \
                 the log format changed or logging is filtered, so the primaries-per-epoch check \
                 saw nothing"
                    .to_string(),
            );
        }
        if !self.divergence.divergent.is_empty() {
            let mut text = format!(
                "nodes {:?} diverge from node {:?} after heal",
                self.divergence.divergent, self.divergence.reference
            );
            for line in &self.divergence.differences {
                let _ = write!(text, "\n      {line}");
            }
            violations.push(text);
        }
        if let Some(watch) = &self.watch {
            violations.extend(watch.violations.iter().cloned());
        }
        if let Some(large) = &self.large_state {
            violations.extend(large.violations());
        }
        violations.extend(self.problems.iter().cloned());
        violations
    }

    /// The human-readable summary.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "===== replikv chaos report =====");
        let _ = writeln!(
            out,
            "seed {}  nodes {}  faults for {:.0}s of {:.0}s  iptables {}",
            self.seed, self.nodes, self.fault_phase_seconds, self.total_seconds, self.iptables
        );
        let _ = writeln!(out, "operations:");
        for (workload, outcomes) in &self.operations {
            let counts: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
            let _ = writeln!(out, "  {workload:<15} {}", counts.join(", "));
        }
        let _ = writeln!(out, "faults:");
        for (kind, totals) in &self.faults_by_kind {
            let _ = writeln!(
                out,
                "  {kind:<32} x{:<3} {:>6.1}s",
                totals.count, totals.seconds
            );
        }
        let recoveries: Vec<f64> = self
            .faults
            .iter()
            .filter_map(|fault| fault.recovered_after_s)
            .collect();
        let slowest = recoveries.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "recovery after heal (all nodes agree on a primary): slowest {slowest:.2}s; {} of {} \
             faults not recovered before the next one",
            self.faults.len() - recoveries.len(),
            self.faults.len()
        );
        let _ = writeln!(
            out,
            "primary changes (elections won): {} over {} epochs",
            self.primaries.elections,
            self.primaries.elected.len()
        );
        let _ = writeln!(
            out,
            "longest window without an acknowledged write: {:.2}s ({:.2}s..{:.2}s)",
            self.longest_write_gap.seconds,
            self.longest_write_gap.from_s,
            self.longest_write_gap.to_s
        );
        let lost = &self.lost_writes;
        let _ = writeln!(
            out,
            "write-once: {} acknowledged at majority/all, {} lost, {} missing on some node; \
             w=1: {} acknowledged, {} rolled back (allowed); indeterminate: {} of {} applied",
            lost.acknowledged_durable,
            lost.lost.len(),
            lost.missing_on_nodes.len(),
            lost.acknowledged_weak,
            lost.weak_lost,
            lost.indeterminate_applied,
            lost.indeterminate
        );
        let lin = &self.linearizability;
        let _ = writeln!(
            out,
            "linearizability: {} keys, {} operations, {} violations, {} unknown (budget exceeded){}",
            lin.keys_checked,
            lin.operations_checked,
            lin.violations.len(),
            lin.unknown_keys.len(),
            if lin.unknown_keys.is_empty() {
                String::new()
            } else {
                format!(": {:?}", lin.unknown_keys)
            }
        );
        let _ = writeln!(
            out,
            "epochs with two primaries: {}",
            self.primaries.conflicts.len()
        );
        let states: Vec<String> = self
            .divergence
            .nodes
            .iter()
            .map(|n| format!("node {} {} keys @{} {}", n.node, n.keys, n.index, n.digest))
            .collect();
        let _ = writeln!(
            out,
            "divergent nodes: {:?}  ({})",
            self.divergence.divergent,
            states.join("; ")
        );
        let _ = writeln!(
            out,
            "rolled-back entries per node: {:?}",
            self.rolled_back_entries
        );
        if let Some(watch) = &self.watch {
            let _ = writeln!(out, "{}", watch.summary());
        }
        if let Some(large) = &self.large_state {
            let _ = writeln!(out, "{}", large.summary());
        }
        let violations = self.violations();
        if violations.is_empty() {
            let _ = writeln!(out, "RESULT: no violations");
        } else {
            let _ = writeln!(out, "RESULT: FAILED");
            for violation in violations {
                let _ = writeln!(out, "  - {violation}");
            }
        }
        let _ = writeln!(out, "artifacts (node logs, history): {}", self.artifacts);
        out
    }

    /// Writes the report as pretty JSON to `path`.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, json)
    }
}

/// Violations shown per category; the rest are counted.
const SHOWN_PER_CATEGORY: usize = 20;

/// Renders up to [`SHOWN_PER_CATEGORY`] of `items` into `out`, then counts the rest.
fn capped<T>(out: &mut Vec<String>, category: &str, items: &[T], render: impl Fn(&T) -> String) {
    out.extend(items.iter().take(SHOWN_PER_CATEGORY).map(render));
    if items.len() > SHOWN_PER_CATEGORY {
        out.push(format!(
            "... and {} more {category} (all of them are in the JSON report)",
            items.len() - SHOWN_PER_CATEGORY
        ));
    }
}

/// The longest interval within `[start, end]` with no acknowledged write completing in it.
pub fn longest_write_gap(records: &[Record], start: Nanos, end: Nanos) -> WriteGap {
    let mut acks: Vec<Nanos> = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::WriteOk))
        .map(|r| r.completed_at.clamp(start, end))
        .collect();
    acks.push(start);
    acks.push(end);
    acks.sort_unstable();
    acks.windows(2)
        .map(|pair| (pair[1] - pair[0], pair[0], pair[1]))
        .max()
        .map(|(gap, from, to)| WriteGap {
            seconds: seconds(gap),
            from_s: seconds(from),
            to_s: seconds(to),
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{LostWriteReport, WriteSummary};
    use replikv::WriteConcern;

    fn ack(at: Nanos) -> Record {
        Record {
            process: 0,
            door: Door::Quic,
            op: Op::Write {
                key: "w/00/1".into(),
                value: "v".into(),
                concern: WriteConcern::Majority,
            },
            invoked_at: at.saturating_sub(1),
            completed_at: at,
            outcome: Outcome::WriteOk,
            served: None,
        }
    }

    #[test]
    fn the_longest_gap_includes_the_edges() {
        let s = 1_000_000_000;
        let gap = longest_write_gap(&[ack(2 * s), ack(3 * s)], 0, 10 * s);
        assert_eq!(gap.seconds, 7.0);
        assert_eq!(gap.from_s, 3.0);
        let gap = longest_write_gap(&[ack(2 * s), ack(8 * s)], 0, 10 * s);
        assert_eq!((gap.from_s, gap.to_s), (2.0, 8.0));
        assert_eq!(longest_write_gap(&[], 0, 5 * s).seconds, 5.0);
    }

    #[test]
    fn any_lost_write_is_a_violation() {
        let mut report = ChaosReport::default();
        assert!(report.violations().is_empty());
        report.lost_writes = LostWriteReport {
            lost: vec![WriteSummary {
                key: "w/00/1".into(),
                value: "v".into(),
                concern: "majority".into(),
                completed_at_s: 1.0,
                served: None,
                found: None,
            }],
            ..LostWriteReport::default()
        };
        let violations = report.violations();
        assert_eq!(violations.len(), 1);
        assert!(violations[0].contains("lost acknowledged write"));
        assert!(report.summary().contains("RESULT: FAILED"));
    }

    #[test]
    fn long_lists_are_capped_but_counted() {
        let mut out = Vec::new();
        let items: Vec<u32> = (0..25).collect();
        capped(&mut out, "things", &items, |i| format!("thing {i}"));
        assert_eq!(out.len(), SHOWN_PER_CATEGORY + 1);
        assert!(out.last().unwrap().contains("5 more things"));
    }

    #[test]
    fn successes_without_any_election_in_the_logs_are_suspicious() {
        let mut report = ChaosReport::default();
        report.count_operations(&[ack(5)]);
        assert_eq!(report.operations["write-once"]["ok"], 1);
        assert_eq!(report.violations().len(), 1);
        report.primaries.elections = 1;
        assert!(report.violations().is_empty());
    }
}
