//! How `kvctl` shows its results: text for people, JSON (`--json`) for scripts.
//!
//! Results go to stdout, diagnostics to stderr. Keys and values are bytes: UTF-8 is printed as is
//! and anything else as `0x` hex, with its encoding named in JSON. Every write to stdout goes
//! through [`print_text`], so a closed pipe is an error, never a panic.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::json;

pub use replikv::api::json::{
    change_json, get_json, meta_json, pairs_json, printable, scan_json, write_json,
};
use replikv::wire::client::{
    Change, ClusterStatus, MemberHealth, MemberStatus, ResponseMeta, Role, TokenInfo, UserInfo,
    WriteResult,
};
use replikv::{Error, NodeId};

use crate::bench::{BenchReport, LatencySummary, StopAfter};

/// Prints a value alone on its line; a non-UTF-8 value is printed as hex with a note on stderr.
pub fn print_value(bytes: &[u8]) -> Result<(), Error> {
    let (text, encoding) = printable(bytes);
    if encoding == "hex" {
        eprintln!("note: the value is not UTF-8; printed as hex");
    }
    print_text(&format!("{text}\n"))
}

/// Pretty JSON on stdout, fields in declaration order.
pub fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|err| Error::Internal(format!("cannot format JSON: {err}")))?;
    print_text(&format!("{text}\n"))
}

/// Compact JSON on one line of stdout (a stream of objects, as `kvctl watch --json` prints).
pub fn print_json_line<T: serde::Serialize + ?Sized>(value: &T) -> Result<(), Error> {
    let text = serde_json::to_string(value)
        .map_err(|err| Error::Internal(format!("cannot format JSON: {err}")))?;
    print_text(&format!("{text}\n"))
}

/// The text line of one watched change: `put KEY VALUE` or `delete KEY`, then the index and the
/// epoch, tab-separated.
pub fn change_text(change: &Change) -> String {
    let (key, _) = printable(&change.key);
    match &change.value {
        Some(value) => {
            let (value, _) = printable(value);
            format!(
                "put\t{key}\t{value}\tindex={}\tepoch={}\n",
                change.index, change.epoch
            )
        }
        None => format!(
            "delete\t{key}\tindex={}\tepoch={}\n",
            change.index, change.epoch
        ),
    }
}

/// Writes to stdout, turning a closed pipe into an error instead of a panic.
pub fn print_text(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

pub fn stdout_error(err: std::io::Error) -> Error {
    Error::Internal(format!("cannot write to stdout: {err}"))
}

/// The text answer of `scan`: one `key<TAB>value` line per pair.
pub fn print_pairs(pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    for (key, value) in pairs {
        let (key, _) = printable(key);
        let (value, _) = printable(value);
        writeln!(out, "{key}\t{value}").map_err(stdout_error)?;
    }
    Ok(())
}

/// The JSON answer of `member add` (without `--wait`).
pub fn member_added_json(
    id: NodeId,
    result: &WriteResult,
    meta: &ResponseMeta,
) -> serde_json::Value {
    json!({
        "id": id,
        "index": result.index,
        "already_member": result.existed,
        "meta": meta_json(meta),
    })
}

/// The JSON answer of `member remove`.
pub fn member_removed_json(
    id: NodeId,
    result: &WriteResult,
    meta: &ResponseMeta,
) -> serde_json::Value {
    json!({
        "id": id,
        "index": result.index,
        "meta": meta_json(meta),
    })
}

/// The JSON answer of `certs init`: the directory and the files written.
pub fn certs_json(dir: &Path, written: &[PathBuf]) -> serde_json::Value {
    let paths: Vec<String> = written
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    json!({ "dir": dir.display().to_string(), "written": paths })
}

/// The rows of `kvctl status`.
pub fn render_status(status: &ClusterStatus) -> String {
    let primary = match status.primary {
        Some(id) => format!("node {id}"),
        None => "none known".to_string(),
    };
    let mut text = format!(
        "answered by node {} ({}), epoch {}, primary: {primary}\n\
         commit index {}, applied index {}, last index {}, durable index {}, rolled-back entries {}\n\n",
        status.node_id,
        status.role,
        status.epoch,
        status.commit_index,
        status.applied_index,
        status.last_index,
        status.durable_index,
        status.rolled_back_entries,
    );
    let header = [
        "ID",
        "ADDRESS",
        "ROLE",
        "EPOCH",
        "LAST",
        "DURABLE",
        "LAG",
        "STATE",
        "HEARTBEAT",
    ]
    .map(String::from);
    let mut rows = vec![header.to_vec()];
    for row in &status.members {
        rows.push(status_row(status, row));
    }
    text.push_str(&table(&rows));
    if status.role != Role::Primary {
        text.push_str(
            "\n(this node is not the primary: lag, state and heartbeat ages are known only to the \
             primary)\n",
        );
    }
    text
}

fn status_row(status: &ClusterStatus, row: &MemberStatus) -> Vec<String> {
    let dash = || "-".to_string();
    let opt = |value: Option<u64>| value.map_or_else(dash, |value| value.to_string());
    // A member acknowledging this node's heartbeats (or the node itself) is in its epoch.
    let in_epoch = matches!(
        row.health,
        MemberHealth::Local
            | MemberHealth::Healthy
            | MemberHealth::Lagging
            | MemberHealth::CatchingUp
    );
    vec![
        row.member.id.to_string(),
        row.member.client_addr.clone(),
        row.role.map_or_else(dash, |role| role.to_string()),
        if in_epoch {
            status.epoch.to_string()
        } else {
            dash()
        },
        opt(row.last_index),
        opt(row.durable_index),
        opt(row.lag),
        progress_text(status, row),
        row.last_heartbeat_ms.map_or_else(dash, format_age),
    ]
}

/// The rows of `kvctl member list`.
pub fn render_members(status: &ClusterStatus) -> String {
    let mut rows = vec![["ID", "CLIENT ADDRESS", "PEER ADDRESS", "VOTER", "ROLE"]
        .map(String::from)
        .to_vec()];
    for row in &status.members {
        rows.push(vec![
            row.member.id.to_string(),
            row.member.client_addr.clone(),
            row.member.peer_addr.clone(),
            if row.member.voter {
                "yes"
            } else {
                "no (learner)"
            }
            .to_string(),
            row.role
                .map_or_else(|| "-".to_string(), |role| role.to_string()),
        ]);
    }
    table(&rows)
}

/// How a member stands: its health, and for one that is behind, how far (entries, and the share
/// of the primary's log it holds).
pub fn progress_text(status: &ClusterStatus, row: &MemberStatus) -> String {
    match (row.health, row.lag, row.durable_index) {
        (MemberHealth::CatchingUp | MemberHealth::Lagging, Some(lag), Some(durable))
            if lag > 0 && status.last_index > 0 =>
        {
            let share = durable as f64 * 100.0 / status.last_index as f64;
            format!("{} ({lag} behind, {share:.0}%)", row.health)
        }
        (health, _, _) => health.to_string(),
    }
}

/// The rows of `kvctl user list`.
pub fn render_users(users: &[UserInfo]) -> String {
    let mut rows = vec![["NAME", "ROLE", "CREATED (UTC)"].map(String::from).to_vec()];
    for user in users {
        rows.push(vec![
            user.name.clone(),
            user.role.to_string(),
            utc_time(user.created_ms),
        ]);
    }
    table(&rows)
}

/// The rows of `kvctl token list`.
pub fn render_tokens(tokens: &[TokenInfo]) -> String {
    let mut rows = vec![["ID", "NAME", "ROLE", "CREATED (UTC)", "EXPIRES (UTC)"]
        .map(String::from)
        .to_vec()];
    for token in tokens {
        rows.push(vec![
            token.id.clone(),
            token.name.clone(),
            token.role.to_string(),
            utc_time(token.created_ms),
            token
                .expires_ms
                .map_or_else(|| "never".to_string(), utc_time),
        ]);
    }
    table(&rows)
}

/// "2026-12-07 01:02:03" for milliseconds since the Unix epoch (proleptic Gregorian, UTC).
pub fn utc_time(millis: u64) -> String {
    let seconds = millis / 1000;
    let (days, of_day) = ((seconds / 86_400) as i64, seconds % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        of_day / 3600,
        (of_day % 3600) / 60,
        of_day % 60
    )
}

/// Left-aligned columns separated by two spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// "850ms", "3.2s", "4m05s".
pub fn format_age(millis: u64) -> String {
    match millis {
        0..=999 => format!("{millis}ms"),
        1_000..=59_999 => format!("{:.1}s", millis as f64 / 1000.0),
        _ => format!("{}m{:02}s", millis / 60_000, (millis % 60_000) / 1000),
    }
}

/// A bench report as text: a summary line, a latency table and the errors.
pub fn render_bench_report(report: &BenchReport) -> String {
    let stop = match report.stop {
        StopAfter::Requests(total) => format!("{total} requests"),
        StopAfter::Duration(duration) => format!("{:.1}s", duration.as_secs_f64()),
    };
    let mut text = format!(
        "{} clients, {stop}, w={}, consistency={}, read ratio {}, {}-byte values, {} keys{}{}\n",
        report.clients,
        report.write_concern,
        report.consistency,
        report.read_ratio,
        report.value_size,
        report.key_space,
        if report.prefill { " (prefilled)" } else { "" },
        if report.interrupted {
            " (interrupted)"
        } else {
            ""
        },
    );
    text.push_str(&format!(
        "{} ok, {} failed in {:.2}s: {:.0} ops/s\n\n",
        report.succeeded, report.failed, report.elapsed_secs, report.throughput
    ));
    text.push_str(&format!(
        "{:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        "latency", "count", "mean ms", "p50", "p90", "p99", "p99.9", "max"
    ));
    let mut row = |name: &str, summary: &LatencySummary| {
        text.push_str(&format!(
            "{name:<8} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}\n",
            summary.count,
            summary.mean_ms,
            summary.p50_ms,
            summary.p90_ms,
            summary.p99_ms,
            summary.p999_ms,
            summary.max_ms
        ));
    };
    row("all", &report.latency);
    if let (Some(writes), Some(_)) = (&report.writes, &report.reads) {
        row("puts", writes);
    }
    if let (Some(reads), Some(_)) = (&report.reads, &report.writes) {
        row("gets", reads);
    }
    if let Some(reads) = &report.reads {
        text.push_str(&format!(
            "\ngets that found their key: {} of {}\n",
            report.read_hits, reads.count
        ));
    }
    if !report.errors.is_empty() {
        text.push_str("\nerrors:\n");
        for (kind, tally) in &report.errors {
            text.push_str(&format!(
                "  {kind}: {} (e.g. {})\n",
                tally.count, tally.example
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use replikv::wire::message::Member;

    use super::*;

    #[test]
    fn utc_times_are_civil_dates() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00");
        assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc_time(1_796_605_323_000), "2026-12-07 01:02:03");
    }

    #[test]
    fn non_utf8_values_print_as_hex() {
        assert_eq!(printable(b"hello"), ("hello".to_string(), "utf8"));
        assert_eq!(printable(&[0xff, 0x00]), ("0xff00".to_string(), "hex"));
    }

    #[test]
    fn a_member_behind_shows_its_progress() {
        let member = Member {
            id: 4,
            client_addr: "127.0.0.14:7379".into(),
            peer_addr: "127.0.0.14:7380".into(),
            voter: false,
        };
        let row = MemberStatus {
            member,
            role: Some(Role::Learner),
            last_index: Some(250),
            durable_index: Some(250),
            lag: Some(750),
            health: MemberHealth::CatchingUp,
            last_heartbeat_ms: Some(40),
        };
        let status = ClusterStatus {
            node_id: 1,
            role: Role::Primary,
            epoch: 2,
            primary: Some(1),
            last_index: 1000,
            durable_index: 1000,
            commit_index: 1000,
            applied_index: 1000,
            rolled_back_entries: 0,
            members: vec![row.clone()],
        };
        assert_eq!(
            progress_text(&status, &row),
            "catching-up (750 behind, 25%)"
        );
        let healthy = MemberStatus {
            lag: Some(0),
            health: MemberHealth::Healthy,
            ..row
        };
        assert_eq!(progress_text(&status, &healthy), "healthy");
    }

    #[test]
    fn ages_are_human_readable() {
        assert_eq!(format_age(850), "850ms");
        assert_eq!(format_age(3_200), "3.2s");
        assert_eq!(format_age(245_000), "4m05s");
    }

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["ID".to_string(), "ADDRESS".to_string()],
            vec!["10".to_string(), "a".to_string()],
        ];
        assert_eq!(table(&rows), "ID  ADDRESS\n10  a\n");
    }
}
