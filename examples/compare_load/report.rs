//! The table of a comparison: the median of the rounds of every workload on every system, the
//! ratios replikv ÷ Redis and replikv ÷ etcd, and each goal of issue 11 next to its ratio,
//! marked met or missed (and by how much).
//!
//! A median of an even number of rounds is the mean of the two middle ones. Throughput ratios
//! are replikv's over the other's (higher is better for replikv); latency ratios, for the
//! single-client put and the p99 bound, are replikv's over the other's too (lower is better).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::measure::Measurement;
use crate::systems::{System, Workload};

/// One run of one workload on one system in one round.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub workload: Workload,
    pub system: System,
    pub round: usize,
    /// `None` if the run could not start (its error is in `error`).
    pub measurement: Option<Measurement>,
    pub error: Option<String>,
}

/// The medians over the rounds of one workload on one system.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub server_cpu_us_per_op: Option<f64>,
    pub generator_cpu_us_per_op: Option<f64>,
    pub generator_cores: Option<f64>,
    pub rounds: usize,
    /// Failed operations over all rounds.
    pub failed: u64,
}

/// The median of `values`, or `None` if there are none.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|value| value.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    })
}

/// The medians of every (workload, system) that has at least one measured round.
pub fn summarize(records: &[Record]) -> BTreeMap<(Workload, System), Summary> {
    let mut grouped: BTreeMap<(Workload, System), Vec<&Measurement>> = BTreeMap::new();
    for record in records {
        if let Some(measurement) = &record.measurement {
            grouped
                .entry((record.workload, record.system))
                .or_default()
                .push(measurement);
        }
    }
    grouped
        .into_iter()
        .filter_map(|(key, runs)| {
            let of =
                |field: fn(&Measurement) -> f64| median(runs.iter().map(|m| field(m)).collect());
            let of_optional = |field: fn(&Measurement) -> Option<f64>| {
                median(runs.iter().filter_map(|m| field(m)).collect())
            };
            let summary = Summary {
                throughput: of(|m| m.throughput)?,
                p50_ms: of(|m| m.p50_ms)?,
                p99_ms: of(|m| m.p99_ms)?,
                server_cpu_us_per_op: of_optional(|m| m.server_cpu_us_per_op),
                generator_cpu_us_per_op: of_optional(|m| m.generator_cpu_us_per_op),
                generator_cores: of_optional(|m| m.generator_cores),
                rounds: runs.len(),
                failed: runs.iter().map(|m| m.failed).sum(),
            };
            Some((key, summary))
        })
        .collect()
}

/// A goal of issue 11 on a ratio.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Goal {
    AtLeast(f64),
    /// Strictly below.
    Below(f64),
    AtMost(f64),
}

impl Goal {
    pub fn met(self, ratio: f64) -> bool {
        match self {
            Goal::AtLeast(bound) => ratio >= bound,
            Goal::Below(bound) => ratio < bound,
            Goal::AtMost(bound) => ratio <= bound,
        }
    }

    fn describe(self) -> String {
        match self {
            Goal::AtLeast(bound) => format!("≥ {bound}×"),
            Goal::Below(bound) => format!("< {bound}×"),
            Goal::AtMost(bound) => format!("≤ {bound}×"),
        }
    }

    /// "met", or "missed" with how far off in percent of the bound.
    pub fn verdict(self, ratio: f64) -> String {
        if self.met(ratio) {
            return "met".into();
        }
        let bound = match self {
            Goal::AtLeast(bound) | Goal::Below(bound) | Goal::AtMost(bound) => bound,
        };
        let off = ((ratio - bound) / bound * 100.0).abs();
        match self {
            Goal::AtLeast(_) => format!("missed, {off:.0}% short"),
            Goal::Below(_) | Goal::AtMost(_) => format!("missed, {off:.0}% over"),
        }
    }
}

/// The CPU goal of issue 11: a `w=majority` put costs at most this many µs across the cluster.
pub const CPU_PER_PUT_GOAL_US: f64 = 100.0;

/// How a workload is compared: on throughput, or (one client) on p50 latency.
fn compares_latency(workload: Workload) -> bool {
    workload == Workload::PutSingleClient
}

/// Issue 11's goals for `workload` against Redis and against etcd.
pub fn goals(workload: Workload) -> (Option<Goal>, Option<Goal>) {
    match workload {
        Workload::PutMajority => (Some(Goal::AtLeast(1.0)), Some(Goal::AtLeast(5.0))),
        Workload::PutAll => (Some(Goal::AtLeast(1.0)), None),
        Workload::PutOne => (Some(Goal::AtLeast(0.6)), None),
        Workload::PutSingleClient => (Some(Goal::AtMost(1.0)), None),
        Workload::GetLinearizable => (Some(Goal::AtLeast(1.0)), None),
    }
}

/// The p99 goal of `w=majority` puts: replikv's p99 under twice Redis's.
pub const P99_GOAL: Goal = Goal::Below(2.0);

/// replikv's figure over `other`'s: throughput, or p50 latency for the one-client workload.
fn ratio(workload: Workload, replikv: &Summary, other: &Summary) -> Option<f64> {
    let (numerator, denominator) = if compares_latency(workload) {
        (replikv.p50_ms, other.p50_ms)
    } else {
        (replikv.throughput, other.throughput)
    };
    (denominator > 0.0).then(|| numerator / denominator)
}

fn cell(workload: Workload, summary: Option<&Summary>) -> String {
    match summary {
        None => "-".into(),
        Some(summary) if compares_latency(workload) => format!(
            "p50 {:.2} ms, p99 {:.2} ms ({}/s)",
            summary.p50_ms,
            summary.p99_ms,
            thousands(summary.throughput)
        ),
        Some(summary) => format!(
            "{}/s, p50 {:.2} ms, p99 {:.2} ms",
            thousands(summary.throughput),
            summary.p50_ms,
            summary.p99_ms
        ),
    }
}

/// The ratio and goal cells of replikv against `other` for `workload`.
fn comparison(
    workload: Workload,
    replikv: Option<&Summary>,
    other: Option<&Summary>,
    goal: Option<Goal>,
    with_p99: bool,
) -> (String, String) {
    let (Some(replikv), Some(other)) = (replikv, other) else {
        return (
            "-".into(),
            goal.map_or("-".into(), |goal| {
                format!("{}: not measured", goal.describe())
            }),
        );
    };
    let Some(ratio) = ratio(workload, replikv, other) else {
        return ("-".into(), "-".into());
    };
    let what = if compares_latency(workload) {
        "p50 "
    } else {
        ""
    };
    let mut ratio_cell = format!("{what}{ratio:.2}×");
    let mut goal_cell = match goal {
        Some(goal) => format!("{what}{}: {}", goal.describe(), goal.verdict(ratio)),
        None => "(no goal)".into(),
    };
    if with_p99 && other.p99_ms > 0.0 {
        let p99_ratio = replikv.p99_ms / other.p99_ms;
        let _ = write!(ratio_cell, "; p99 {p99_ratio:.2}×");
        let _ = write!(
            goal_cell,
            "; p99 {}: {}",
            P99_GOAL.describe(),
            P99_GOAL.verdict(p99_ratio)
        );
    }
    (ratio_cell, goal_cell)
}

/// The main table, in Markdown, from the summaries.
pub fn render(summaries: &BTreeMap<(Workload, System), Summary>, workloads: &[Workload]) -> String {
    let mut out = String::new();
    out.push_str("| workload | replikv | Redis | etcd | replikv ÷ Redis | goal vs Redis (issue 11) | replikv ÷ etcd | goal vs etcd (issue 11) |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for &workload in workloads {
        let get = |system| summaries.get(&(workload, system));
        let replikv = get(System::Replikv);
        let (redis_goal, etcd_goal) = goals(workload);
        let with_p99 = workload == Workload::PutMajority;
        let (redis_ratio, redis_verdict) =
            comparison(workload, replikv, get(System::Redis), redis_goal, with_p99);
        let (etcd_ratio, etcd_verdict) = if etcd_applies(workload) {
            comparison(workload, replikv, get(System::Etcd), etcd_goal, false)
        } else {
            ("n/a".into(), "n/a".into())
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {redis_ratio} | {redis_verdict} | {etcd_ratio} | {etcd_verdict} |",
            workload.describe(),
            cell(workload, replikv),
            cell(workload, get(System::Redis)),
            if etcd_applies(workload) { cell(workload, get(System::Etcd)) } else { "n/a".into() },
        );
    }
    if workloads.contains(&Workload::PutMajority) {
        let cpu = |system| {
            summaries
                .get(&(Workload::PutMajority, system))
                .and_then(total_cpu_us_per_op)
        };
        let show = |value: Option<f64>| value.map_or("-".into(), |us| format!("{us:.0} µs"));
        let replikv = cpu(System::Replikv);
        let verdict = replikv.map_or("not measured".into(), |us| {
            Goal::AtMost(CPU_PER_PUT_GOAL_US).verdict(us)
        });
        let _ = writeln!(
            out,
            "| CPU per put, w=majority (servers + generator) | {} | {} | {} | | ≤ {CPU_PER_PUT_GOAL_US:.0} µs (replikv): {verdict} | | |",
            show(replikv),
            show(cpu(System::Redis)),
            show(cpu(System::Etcd)),
        );
    }
    out
}

/// replikv's three doors side by side, from the same run: the QUIC client, the HTTP door and the
/// RESP door, each with its throughput relative to QUIC's (every door reaches the same request
/// path; the difference is the protocol and its client).
pub fn render_doors(
    summaries: &BTreeMap<(Workload, System), Summary>,
    workloads: &[Workload],
) -> String {
    let mut out = String::new();
    out.push_str(
        "| workload | replikv, QUIC client | HTTP door | HTTP ÷ QUIC | RESP door | RESP ÷ QUIC |\n",
    );
    out.push_str("|---|---|---|---|---|---|\n");
    for &workload in workloads {
        let get = |system| summaries.get(&(workload, system));
        let quic = get(System::Replikv);
        let relative = |door: Option<&Summary>| match (door, quic) {
            (Some(door), Some(quic)) if compares_latency(workload) && door.p50_ms > 0.0 => {
                format!("p50 {:.2}×", door.p50_ms / quic.p50_ms)
            }
            (Some(door), Some(quic)) if quic.throughput > 0.0 => {
                format!("{:.2}×", door.throughput / quic.throughput)
            }
            _ => "-".into(),
        };
        let (http, resp) = (get(System::ReplikvHttp), get(System::ReplikvResp));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            workload.describe(),
            cell(workload, quic),
            cell(workload, http),
            relative(http),
            cell(workload, resp),
            relative(resp),
        );
    }
    out
}

/// etcd has no `w=1` or `w=all`.
fn etcd_applies(workload: Workload) -> bool {
    !matches!(workload, Workload::PutAll | Workload::PutOne)
}

/// CPU per operation of the servers and the generator together, as `docs/BENCHMARKS.md` counts
/// it (all nodes and the load generator).
fn total_cpu_us_per_op(summary: &Summary) -> Option<f64> {
    Some(summary.server_cpu_us_per_op? + summary.generator_cpu_us_per_op?)
}

/// The CPU table: where the CPU of each run went, and how busy the generator was.
pub fn render_cpu(summaries: &BTreeMap<(Workload, System), Summary>) -> String {
    let mut out = String::new();
    out.push_str("| workload | system | rounds | median ops/s | servers µs/op | generator µs/op | generator cores | failed ops (all rounds) |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    let show = |value: Option<f64>, digits: usize| {
        value.map_or("-".into(), |value| format!("{value:.digits$}"))
    };
    for ((workload, system), summary) in summaries {
        let _ = writeln!(
            out,
            "| {} | {system} | {} | {} | {} | {} | {} | {} |",
            workload.describe(),
            summary.rounds,
            thousands(summary.throughput),
            show(summary.server_cpu_us_per_op, 0),
            show(summary.generator_cpu_us_per_op, 1),
            show(summary.generator_cores, 2),
            summary.failed,
        );
    }
    out
}

/// A system whose throughput reaches this fraction of its driver's no-op ceiling may be measuring
/// the generator and the machine rather than itself.
pub const CEILING_WARNING: f64 = 0.7;

/// The generator's ceiling: what its Redis and etcd drivers push against the no-op server, and how
/// close each real system came to the ceiling of its driver.
pub fn render_ceiling(
    summaries: &BTreeMap<(Workload, System), Summary>,
    workloads: &[Workload],
) -> String {
    let mut out = String::new();
    out.push_str("| workload | no-op server, RESP driver | no-op server, HTTP driver | Redis ÷ its ceiling | etcd ÷ its ceiling |\n");
    out.push_str("|---|---|---|---|---|\n");
    let mut warnings = Vec::new();
    for &workload in workloads {
        let get = |system| summaries.get(&(workload, system));
        let (resp, http) = (get(System::NoopResp), get(System::NoopHttp));
        if resp.is_none() && http.is_none() {
            continue;
        }
        let show = |summary: Option<&Summary>| {
            summary.map_or("-".into(), |summary| {
                format!("{}/s", thousands(summary.throughput))
            })
        };
        let mut share = |system: System, ceiling: Option<&Summary>| match (get(system), ceiling) {
            (Some(measured), Some(ceiling)) if ceiling.throughput > 0.0 => {
                let fraction = measured.throughput / ceiling.throughput;
                if fraction >= CEILING_WARNING {
                    warnings.push(format!(
                        "{system}, {}: {fraction:.2}× the no-op ceiling of its driver; the generator or the machine may be its limit",
                        workload.describe()
                    ));
                }
                format!("{fraction:.2}×")
            }
            _ => "-".into(),
        };
        let redis = share(System::Redis, resp);
        let etcd = share(System::Etcd, http);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {redis} | {etcd} |",
            workload.describe(),
            show(resp),
            show(http)
        );
    }
    for warning in warnings {
        let _ = writeln!(out, "\nWarning: {warning}.");
    }
    out
}

/// `12345.6` as `12,346`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(throughput: f64, p50_ms: f64, p99_ms: f64) -> Summary {
        Summary {
            throughput,
            p50_ms,
            p99_ms,
            rounds: 1,
            ..Summary::default()
        }
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn verdicts_say_how_far_off() {
        assert_eq!(Goal::AtLeast(1.0).verdict(1.0), "met");
        assert_eq!(Goal::AtLeast(1.0).verdict(0.5), "missed, 50% short");
        assert_eq!(Goal::AtLeast(5.0).verdict(2.5), "missed, 50% short");
        assert_eq!(Goal::Below(2.0).verdict(2.0), "missed, 0% over");
        assert_eq!(Goal::AtMost(1.0).verdict(1.5), "missed, 50% over");
        assert_eq!(Goal::AtMost(100.0).verdict(100.0), "met");
    }

    #[test]
    fn the_table_compares_throughput_and_single_client_latency() {
        let mut summaries = BTreeMap::new();
        summaries.insert(
            (Workload::PutMajority, System::Replikv),
            summary(6000.0, 9.0, 20.0),
        );
        summaries.insert(
            (Workload::PutMajority, System::Redis),
            summary(12000.0, 5.0, 11.0),
        );
        summaries.insert(
            (Workload::PutMajority, System::Etcd),
            summary(1000.0, 60.0, 90.0),
        );
        summaries.insert(
            (Workload::PutSingleClient, System::Replikv),
            summary(500.0, 1.0, 3.0),
        );
        summaries.insert(
            (Workload::PutSingleClient, System::Redis),
            summary(900.0, 2.0, 4.0),
        );
        let table = render(
            &summaries,
            &[
                Workload::PutMajority,
                Workload::PutSingleClient,
                Workload::PutOne,
            ],
        );
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[2].contains("| 0.50×; p99 1.82× |"), "{}", lines[2]);
        assert!(
            lines[2].contains("≥ 1×: missed, 50% short; p99 < 2×: met"),
            "{}",
            lines[2]
        );
        assert!(lines[2].contains("| 6.00× | ≥ 5×: met |"), "{}", lines[2]);
        assert!(
            lines[3].contains("| p50 0.50× | p50 ≤ 1×: met |"),
            "{}",
            lines[3]
        );
        assert!(lines[4].contains("≥ 0.6×: not measured"), "{}", lines[4]);
        assert!(lines[4].contains("| n/a | n/a |"), "{}", lines[4]);
    }

    #[test]
    fn the_cpu_row_adds_servers_and_generator() {
        let mut summaries = BTreeMap::new();
        let mut replikv = summary(6000.0, 9.0, 20.0);
        replikv.server_cpu_us_per_op = Some(180.0);
        replikv.generator_cpu_us_per_op = Some(20.0);
        summaries.insert((Workload::PutMajority, System::Replikv), replikv);
        let table = render(&summaries, &[Workload::PutMajority]);
        assert!(table.contains("| 200 µs |"), "{table}");
        assert!(
            table.contains("≤ 100 µs (replikv): missed, 100% over"),
            "{table}"
        );
    }

    #[test]
    fn summaries_take_the_median_of_the_rounds() {
        let record = |round, throughput| Record {
            workload: Workload::PutOne,
            system: System::Redis,
            round,
            measurement: Some(Measurement {
                throughput,
                p50_ms: throughput / 1000.0,
                p99_ms: 1.0,
                failed: 1,
                ..Measurement::default()
            }),
            error: None,
        };
        let failed_to_start = Record {
            measurement: None,
            error: Some("refused".into()),
            ..record(3, 0.0)
        };
        let summaries = summarize(&[
            record(0, 1000.0),
            record(1, 3000.0),
            record(2, 2000.0),
            failed_to_start,
        ]);
        let summary = summaries[&(Workload::PutOne, System::Redis)];
        assert_eq!(summary.throughput, 2000.0);
        assert_eq!(summary.p50_ms, 2.0);
        assert_eq!(summary.rounds, 3);
        assert_eq!(summary.failed, 3);
    }

    #[test]
    fn the_ceiling_table_warns_when_a_system_nears_it() {
        let mut summaries = BTreeMap::new();
        summaries.insert(
            (Workload::GetLinearizable, System::NoopResp),
            summary(40000.0, 1.0, 2.0),
        );
        summaries.insert(
            (Workload::GetLinearizable, System::NoopHttp),
            summary(40000.0, 1.0, 2.0),
        );
        summaries.insert(
            (Workload::GetLinearizable, System::Redis),
            summary(36000.0, 1.0, 2.0),
        );
        summaries.insert(
            (Workload::GetLinearizable, System::Etcd),
            summary(4000.0, 1.0, 2.0),
        );
        let table = render_ceiling(&summaries, &[Workload::PutOne, Workload::GetLinearizable]);
        assert!(
            table.contains("| get, linearizable | 40,000/s | 40,000/s | 0.90× | 0.10× |"),
            "{table}"
        );
        assert!(!table.contains("put, w=1"), "{table}");
        assert!(
            table.contains("Warning: Redis, get, linearizable: 0.90×"),
            "{table}"
        );
        assert!(!table.contains("Warning: etcd"), "{table}");
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(26664.2), "26,664");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }
}
