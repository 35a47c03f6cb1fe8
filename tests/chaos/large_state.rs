//! The large-state profile (`REPLIKV_CHAOS_PROFILE=large`, docs/CHAOS.md): the same run and
//! checkers, on a cluster that holds about a million keys of 1 KiB and keeps little log, so a
//! backup that was away comes back through a snapshot of the whole state, under load.
//!
//! - **Prefill**: before the faults, keys `p/<bucket>/<n>` get 1 KiB values (version 0) at
//!   `majority`, from many sessions at once.
//! - **Load**: during the faults, a few writers overwrite random prefilled keys with new 1 KiB
//!   versions at `majority`, so the log fills and is compacted while snapshots stream. Each writer
//!   owns the keys `n ≡ writer (mod writers)` and remembers, per key, the last acknowledged version
//!   and every version whose write ended indeterminate.
//! - **Check**, after heal and quiet: every prefilled key is read back, bucket by bucket, with
//!   `linearizable` from the primary and `stale` from every node. Each key must be present with
//!   the last acknowledged version or one written indeterminately (an older acknowledged version
//!   is a lost write), and every node's buckets must hash equal to the primary's. The node logs
//!   must show snapshots installed: a profile that never streamed one did not test what it is for.
//!
//! Invariant: values are self-describing (`<n>:<version>:` then padding), so a value in the wrong
//! key, a version nobody wrote, or a torn value is recognised without keeping the values.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replikv::client::Client;
use replikv::{NodeId, ReadConsistency, WriteConcern};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::common::Cluster;

/// Prefix of the prefilled keys: no other workload writes under it.
pub const PREFIX: &str = "p/";

/// Keys are spread over this many buckets, so one bucket's scan (about 1 MiB at a million keys)
/// stays well inside the client frame limit.
const BUCKETS: u64 = 1024;

/// Size of every prefilled and overwritten value.
const VALUE_BYTES: usize = 1024;

/// Sessions writing the prefill at once.
const PREFILL_SESSIONS: usize = 64;

/// Writers overwriting prefilled keys during the faults.
const LOAD_WRITERS: usize = 4;

/// Deadline of one write of the prefill or the load, retries included.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Deadline of one bucket's scan in the final check, and attempts before it counts as failed.
const SCAN_TIMEOUT: Duration = Duration::from_secs(30);
const SCAN_ATTEMPTS: u32 = 3;

/// What the profile changes.
#[derive(Clone, Debug)]
pub struct LargeStateConfig {
    /// Prefilled keys (`REPLIKV_CHAOS_LARGE_KEYS`, default a million).
    pub keys: u64,
    /// The nodes' `log_retention_bytes`: small, so an absent backup soon needs a snapshot.
    pub log_retention_bytes: u64,
}

impl LargeStateConfig {
    pub const DEFAULT_KEYS: u64 = 1_000_000;
    pub const LOG_RETENTION_BYTES: u64 = 4 * 1024 * 1024;
}

/// The key of prefilled key number `n`.
pub fn key(n: u64) -> String {
    format!("{PREFIX}{:03x}/{n:08}", n % BUCKETS)
}

fn bucket_prefix(bucket: u64) -> String {
    format!("{PREFIX}{bucket:03x}/")
}

/// The value of version `version` of key `n`: `<n>:<version>:` padded to [`VALUE_BYTES`].
pub fn value(n: u64, version: u64) -> Vec<u8> {
    let mut value = format!("{n}:{version}:").into_bytes();
    value.resize(VALUE_BYTES.max(value.len()), b'.');
    value
}

/// The key number and version a value names, if it is one [`value`] made.
pub fn parse_value(bytes: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.splitn(3, ':');
    let n = parts.next()?.parse().ok()?;
    let version = parts.next()?.parse().ok()?;
    let padding = parts.next()?;
    let well_formed = bytes.len() == VALUE_BYTES && padding.bytes().all(|byte| byte == b'.');
    well_formed.then_some((n, version))
}

/// Writes version 0 of every key at `majority`, retrying each until it is acknowledged.
/// `progress` is told every 10% or so.
pub async fn prefill(client: &Client, keys: u64, progress: impl Fn(String)) {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut sessions = JoinSet::new();
    for _ in 0..PREFILL_SESSIONS {
        let (session, next, done) = (client.session(), next.clone(), done.clone());
        sessions.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= keys {
                    return;
                }
                while session
                    .put(key(n), value(n, 0), WriteConcern::Majority, WRITE_TIMEOUT)
                    .await
                    .is_err()
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let step = (keys / 10).max(1);
    let mut reported = 0;
    while !sessions.is_empty() {
        tokio::select! {
            joined = sessions.join_next() => {
                if let Some(Err(error)) = joined {
                    if error.is_panic() {
                        std::panic::resume_unwind(error.into_panic());
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let written = done.load(Ordering::Relaxed);
        if written >= reported + step {
            reported = written;
            progress(format!("prefilled {written} of {keys} keys"));
        }
    }
}

/// What one writer knows of one key: the last acknowledged version, and every version whose
/// write ended indeterminate (each may have applied, at any time after it was sent).
#[derive(Clone, Debug, Default)]
struct KeyVersions {
    acknowledged: u64,
    indeterminate: Vec<u64>,
}

impl KeyVersions {
    fn allows(&self, version: u64) -> bool {
        version == self.acknowledged || self.indeterminate.contains(&version)
    }
}

/// The overwriting writers, running until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    writers: JoinSet<HashMap<u64, KeyVersions>>,
    acknowledged: Arc<AtomicU64>,
    indeterminate: Arc<AtomicU64>,
}

/// What the writers did, to judge the final read against.
pub struct LoadRecord {
    versions: HashMap<u64, KeyVersions>,
    pub acknowledged: u64,
    pub indeterminate: u64,
}

impl Load {
    pub fn start(client: &Client, keys: u64, seed: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let indeterminate = Arc::new(AtomicU64::new(0));
        // Versions are unique across writers: every write puts a value nobody else wrote.
        let versions = Arc::new(AtomicU64::new(1));
        let mut writers = JoinSet::new();
        for writer in 0..LOAD_WRITERS as u64 {
            let (stop, acknowledged, indeterminate, versions) = (
                stop.clone(),
                acknowledged.clone(),
                indeterminate.clone(),
                versions.clone(),
            );
            // Sessions share the client's endpoint; each writer makes its own from this one.
            let base = client.session();
            let mut rng = StdRng::seed_from_u64(seed ^ (0x5eed_0000 + writer));
            writers.spawn(async move {
                let mut known: HashMap<u64, KeyVersions> = HashMap::new();
                let mut session = base.session();
                let owned = keys.saturating_sub(writer).div_ceil(LOAD_WRITERS as u64);
                while !stop.load(Ordering::Relaxed) && owned > 0 {
                    let n = rng.gen_range(0..owned) * LOAD_WRITERS as u64 + writer;
                    let version = versions.fetch_add(1, Ordering::Relaxed);
                    let put = session
                        .put(
                            key(n),
                            value(n, version),
                            WriteConcern::Majority,
                            WRITE_TIMEOUT,
                        )
                        .await;
                    let entry = known.entry(n).or_default();
                    match put {
                        Ok(_) => {
                            entry.acknowledged = version;
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                        }
                        // Refused outright: never applied, so never allowed in the final read.
                        Err(error) if error.kind().is_permanent() => {}
                        Err(_) => {
                            entry.indeterminate.push(version);
                            indeterminate.fetch_add(1, Ordering::Relaxed);
                            // The old request may still apply: go on as a new session.
                            session = base.session();
                        }
                    }
                }
                known
            });
        }
        Load {
            stop,
            writers,
            acknowledged,
            indeterminate,
        }
    }

    /// Stops the writers after their current write, and returns what they did.
    pub async fn stop(mut self) -> LoadRecord {
        self.stop.store(true, Ordering::Relaxed);
        let mut versions = HashMap::new();
        while let Some(joined) = self.writers.join_next().await {
            match joined {
                Ok(known) => versions.extend(known),
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => {}
            }
        }
        LoadRecord {
            versions,
            acknowledged: self.acknowledged.load(Ordering::Relaxed),
            indeterminate: self.indeterminate.load(Ordering::Relaxed),
        }
    }
}

/// A prefilled key whose final value is wrong.
#[derive(Clone, Debug, Serialize)]
pub struct BadKey {
    pub key: String,
    /// What the final linearizable read found: a version, or what was wrong with it.
    pub found: String,
    /// The last acknowledged version, and the indeterminate ones that would also do.
    pub acknowledged: u64,
    pub indeterminate: Vec<u64>,
}

/// The verdict of the large-state check.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LargeStateReport {
    pub keys: u64,
    pub log_retention_bytes: u64,
    pub prefill_seconds: f64,
    pub load_acknowledged: u64,
    pub load_indeterminate: u64,
    /// Keys read back with `linearizable` from the primary.
    pub keys_checked: u64,
    /// Of the load's indeterminate writes, how many keys hold one (they did apply).
    pub indeterminate_applied: u64,
    /// Keys absent, holding an older acknowledged version, or holding a value nobody wrote.
    pub bad_keys: Vec<BadKey>,
    pub bad_key_count: u64,
    /// Per node: prefilled keys read with `stale`, and a digest of them all.
    pub node_keys: BTreeMap<NodeId, u64>,
    pub node_digests: BTreeMap<NodeId, String>,
    /// Nodes whose buckets differ from the primary's, with the first differing buckets.
    pub divergent_buckets: BTreeMap<NodeId, Vec<String>>,
    /// Scans that failed (a node or the primary did not answer).
    pub read_errors: Vec<String>,
    /// From the node logs: snapshots a primary offered (each offer starts or resumes a transfer),
    /// and snapshots installed, per node.
    pub snapshots_offered: BTreeMap<NodeId, usize>,
    pub snapshots_installed: BTreeMap<NodeId, usize>,
}

/// Bad keys kept in the report (all are counted).
const BAD_KEYS_KEPT: usize = 100;
/// Differing buckets named per node.
const BUCKETS_NAMED: usize = 10;

impl LargeStateReport {
    /// Every reason this profile fails the run.
    pub fn violations(&self) -> Vec<String> {
        let mut violations = Vec::new();
        for bad in self.bad_keys.iter().take(20) {
            violations.push(format!(
                "prefilled key {} holds {} after heal; the last acknowledged version is {} \
                 (indeterminate: {:?})",
                bad.key, bad.found, bad.acknowledged, bad.indeterminate
            ));
        }
        if self.bad_key_count > 20 {
            violations.push(format!(
                "... {} prefilled keys are wrong in all (the JSON report lists {})",
                self.bad_key_count,
                self.bad_keys.len()
            ));
        }
        for (node, buckets) in &self.divergent_buckets {
            violations.push(format!(
                "node {node}'s prefilled keys differ from the primary's in buckets {buckets:?}"
            ));
        }
        violations.extend(self.read_errors.iter().cloned());
        if self.snapshots_installed.values().sum::<usize>() == 0 {
            violations.push(
                "the large-state profile installed no snapshot on any node (no `installed a \
                 snapshot` line in the logs): it did not test snapshots under load"
                    .to_string(),
            );
        }
        violations
    }

    pub fn summary(&self) -> String {
        format!(
            "large state: {} keys of {VALUE_BYTES} B prefilled in {:.0}s, log_retention_bytes {}; \
             load {} acknowledged, {} indeterminate ({} applied); {} keys checked, {} wrong; \
             keys per node {:?}, digests {:?}, divergent buckets {:?}; snapshots offered {:?}, \
             installed {:?}",
            self.keys,
            self.prefill_seconds,
            self.log_retention_bytes,
            self.load_acknowledged,
            self.load_indeterminate,
            self.indeterminate_applied,
            self.keys_checked,
            self.bad_key_count,
            self.node_keys,
            self.node_digests,
            self.divergent_buckets,
            self.snapshots_offered,
            self.snapshots_installed,
        )
    }
}

/// FNV-1a 64, folded over `key \0 value \0`, as `checks::digest` does for the other keys.
fn fold(mut hash: u64, key: &[u8], value: &[u8]) -> u64 {
    for &byte in key.iter().chain(&[0]).chain(value).chain(&[0]) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Reads every prefilled key back (the cluster is healed and quiet, with `primary` agreed) and
/// judges it against `load`.
pub async fn check(
    cluster: &Cluster,
    client: &Client,
    primary: NodeId,
    load: &LoadRecord,
    report: &mut LargeStateReport,
) {
    report.load_acknowledged = load.acknowledged;
    report.load_indeterminate = load.indeterminate;
    let linearizable = client.session().with_timeout(SCAN_TIMEOUT);
    let pinned: Vec<(NodeId, Client)> = cluster
        .nodes
        .iter()
        .map(|node| {
            (
                node.id,
                client
                    .pinned_to(&node.client_addr)
                    .with_timeout(SCAN_TIMEOUT),
            )
        })
        .collect();
    let mut digests: BTreeMap<NodeId, u64> =
        pinned.iter().map(|(id, _)| (*id, FNV_OFFSET)).collect();
    let mut seen = vec![false; usize::try_from(report.keys).unwrap_or(usize::MAX)];
    let limit = u32::try_from(report.keys / BUCKETS * 2 + 1024).unwrap_or(u32::MAX);
    // Buckets the primary could not be read for: their keys are not reported missing one by one.
    let mut unread = BTreeSet::new();
    for bucket in 0..BUCKETS {
        let prefix = bucket_prefix(bucket);
        let mut attempts = 0;
        let reference = loop {
            attempts += 1;
            match linearizable
                .scan(&prefix, limit, ReadConsistency::Linearizable)
                .await
            {
                Ok((pairs, _)) => break Some(pairs),
                Err(_) if attempts < SCAN_ATTEMPTS => continue,
                Err(error) => {
                    report.read_errors.push(format!(
                        "linearizable scan of {prefix} failed {attempts} times: {error}"
                    ));
                    break None;
                }
            }
        };
        let Some(reference) = reference else {
            unread.insert(bucket);
            continue;
        };
        let reference_digest = reference
            .iter()
            .fold(FNV_OFFSET, |hash, (k, v)| fold(hash, k, v));
        for (key_bytes, value_bytes) in &reference {
            judge_key(key_bytes, value_bytes, load, &mut seen, report);
        }
        for (node, session) in &pinned {
            match session.scan(&prefix, limit, ReadConsistency::Stale).await {
                Ok((pairs, _)) => {
                    *report.node_keys.entry(*node).or_default() += pairs.len() as u64;
                    let mut bucket_digest = FNV_OFFSET;
                    for (k, v) in &pairs {
                        bucket_digest = fold(bucket_digest, k, v);
                        let total = digests.entry(*node).or_insert(FNV_OFFSET);
                        *total = fold(*total, k, v);
                    }
                    if bucket_digest != reference_digest {
                        let named = report.divergent_buckets.entry(*node).or_default();
                        if named.len() < BUCKETS_NAMED {
                            named.push(prefix.clone());
                        }
                    }
                }
                Err(error) => report.read_errors.push(format!(
                    "stale scan of {prefix} on node {node} failed: {error}"
                )),
            }
        }
    }
    for (n, seen) in seen.iter().enumerate() {
        let n = n as u64;
        if !seen && !unread.contains(&(n % BUCKETS)) {
            let versions = load.versions.get(&n).cloned().unwrap_or_default();
            report.bad_key(key(n), "nothing (absent)".to_string(), &versions);
        }
    }
    report.node_digests = digests
        .into_iter()
        .map(|(node, digest)| (node, format!("{digest:016x}")))
        .collect();
    // The primary read its own state with `stale` too: it is the reference, never divergent.
    report.divergent_buckets.remove(&primary);
}

impl LargeStateReport {
    /// Counts, in every node's log, the snapshots it offered as primary and those it installed.
    pub fn count_snapshots(&mut self, logs: &[(NodeId, String)]) {
        for (node, log) in logs {
            let count = |needle: &str| log.lines().filter(|line| line.contains(needle)).count();
            self.snapshots_offered
                .insert(*node, count("offering a snapshot"));
            self.snapshots_installed
                .insert(*node, count("installed a snapshot"));
        }
    }

    fn bad_key(&mut self, key: String, found: String, versions: &KeyVersions) {
        self.bad_key_count += 1;
        if self.bad_keys.len() < BAD_KEYS_KEPT {
            self.bad_keys.push(BadKey {
                key,
                found,
                acknowledged: versions.acknowledged,
                indeterminate: versions.indeterminate.clone(),
            });
        }
    }
}

/// Judges one pair of the final linearizable read.
fn judge_key(
    key_bytes: &[u8],
    value_bytes: &[u8],
    load: &LoadRecord,
    seen: &mut [bool],
    report: &mut LargeStateReport,
) {
    let key_text = String::from_utf8_lossy(key_bytes).into_owned();
    let n = key_text
        .rsplit_once('/')
        .and_then(|(_, number)| number.parse::<u64>().ok())
        .filter(|n| key(*n) == key_text);
    let Some(n) = n else {
        report.bad_key(
            key_text,
            "a key the test never wrote".into(),
            &KeyVersions::default(),
        );
        return;
    };
    let versions = load.versions.get(&n).cloned().unwrap_or_default();
    match usize::try_from(n).ok().and_then(|i| seen.get_mut(i)) {
        Some(slot) => *slot = true,
        None => {
            report.bad_key(key_text, "a key beyond the prefill".into(), &versions);
            return;
        }
    }
    report.keys_checked += 1;
    match parse_value(value_bytes) {
        Some((named, version)) if named == n && versions.allows(version) => {
            if version != versions.acknowledged {
                report.indeterminate_applied += 1;
            }
        }
        Some((named, version)) if named == n => {
            report.bad_key(key_text, format!("version {version}"), &versions)
        }
        Some((named, version)) => report.bad_key(
            key_text,
            format!("key {named}'s version {version}"),
            &versions,
        ),
        None => report.bad_key(
            key_text,
            format!("a malformed value of {} bytes", value_bytes.len()),
            &versions,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_describe_themselves() {
        let v = value(42, 7);
        assert_eq!(v.len(), VALUE_BYTES);
        assert_eq!(parse_value(&v), Some((42, 7)));
        let mut torn = v.clone();
        torn.truncate(100);
        assert_eq!(parse_value(&torn), None);
        let mut scribbled = v;
        scribbled[VALUE_BYTES - 1] = b'x';
        assert_eq!(parse_value(&scribbled), None);
        assert_eq!(parse_value(b"not a value"), None);
    }

    #[test]
    fn keys_fall_in_their_bucket_and_outside_the_other_workloads() {
        for n in [0, 1, 1023, 1024, 999_999] {
            assert!(key(n).starts_with(&bucket_prefix(n % BUCKETS)));
        }
        for prefix in crate::workload::all_prefixes() {
            assert!(!PREFIX.starts_with(prefix.as_str()) && !prefix.starts_with(PREFIX));
        }
    }

    fn record(n: u64, acknowledged: u64, indeterminate: Vec<u64>) -> LoadRecord {
        LoadRecord {
            versions: HashMap::from([(
                n,
                KeyVersions {
                    acknowledged,
                    indeterminate,
                },
            )]),
            acknowledged: 0,
            indeterminate: 0,
        }
    }

    #[test]
    fn an_older_acknowledged_version_is_a_lost_write() {
        let load = record(5, 9, vec![12]);
        let mut report = LargeStateReport {
            keys: 10,
            ..LargeStateReport::default()
        };
        let mut seen = vec![false; 10];
        judge_key(
            key(5).as_bytes(),
            &value(5, 9),
            &load,
            &mut seen,
            &mut report,
        );
        judge_key(
            key(5).as_bytes(),
            &value(5, 12),
            &load,
            &mut seen,
            &mut report,
        );
        assert_eq!(report.bad_key_count, 0);
        assert_eq!(report.indeterminate_applied, 1);
        // Version 3 was acknowledged once, then overwritten by 9: finding it is a lost write.
        judge_key(
            key(5).as_bytes(),
            &value(5, 3),
            &load,
            &mut seen,
            &mut report,
        );
        // Another key's value in this key.
        judge_key(
            key(6).as_bytes(),
            &value(5, 0),
            &load,
            &mut seen,
            &mut report,
        );
        assert_eq!(report.bad_key_count, 2);
        assert!(!report.violations().is_empty());
    }
}
