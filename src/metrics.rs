//! The node's Prometheus metrics: one [`Metrics`] per node, shared by the tasks that count
//! (event loop, peer links, client doors) and encoded by `GET /metrics` of the HTTP door.
//!
//! Names follow etcd's, with `replikv_` in place of `etcd_` (`etcd_server_is_leader` becomes
//! `replikv_server_is_primary`, `etcd_disk_wal_fsync_duration_seconds` becomes
//! `replikv_disk_wal_fsync_duration_seconds`, and so on), so that dashboards and alert rules
//! translate; `docs/OPERATIONS.md` lists every metric. The process's own metrics keep the
//! standard `process_*` names and are read from `/proc/self` at each scrape.
//!
//! Invariants:
//! - Counting never blocks and never fails: every handle is an atomic (or a family of them under
//!   a short lock), so the event loop pays a few nanoseconds per count.
//! - Nothing here decides anything: the metrics mirror what the node reports (its role, indexes
//!   and status) and what the shell measures around it (flush time, bytes on the peer links).
//! - Each node has its own registry, so nodes that share a process (tests) never mix counts.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::core::Node;
use crate::error::{Error, ErrorKind};
use crate::net::shutdown::Shutdown;
use crate::storage::Storage;
use crate::wire::client::{ClusterStatus, CredentialsRequest, Request, Response, Role, Write};
use crate::wire::message::{LogIndex, Message, MessageBody, NodeId};

/// How often the sessions and the store's size are sampled: each sample may walk every session.
const STORAGE_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// The `Content-Type` of [`Metrics::encode`]: Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A member of the cluster, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabel {
    pub member: NodeId,
}

/// The peer a message is sent to (etcd labels its network metrics `To` and `From`).
#[allow(non_snake_case)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToPeer {
    pub To: NodeId,
}

/// The peer a message came from.
#[allow(non_snake_case)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FromPeer {
    pub From: NodeId,
}

/// A client request's kind and how it ended: `ok`, or the [`ErrorKind`] name of its error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub kind: &'static str,
    pub outcome: &'static str,
}

/// A client request's kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Buckets for disk and apply latencies: 100 µs to about 3.3 s, doubling (etcd's fsync buckets
/// start at 1 ms; an SSD flush is often faster).
fn disk_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 16)
}

/// Buckets for client requests: 100 µs to about 13 s, doubling (a write may wait for its
/// concern up to its timeout).
fn request_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 18)
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of one node. Cheap to share: hold it in an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    // --- server (etcd_server_*) ---
    pub is_primary: Gauge,
    pub has_primary: Gauge,
    pub primary_changes_seen: Counter,
    pub epoch: Gauge,
    pub proposals_committed: Gauge,
    pub proposals_applied: Gauge,
    pub proposals_pending: Gauge,
    pub proposals_failed: Counter,
    pub apply_duration: Histogram,
    pub member_lag_entries: Family<MemberLabel, Gauge>,
    pub member_heartbeat_age: Family<MemberLabel, Gauge<f64, AtomicU64>>,
    pub rolled_back_entries: Gauge,
    pub client_requests: Family<RequestLabel, Counter>,
    pub client_request_duration: HistogramFamily<KindLabel>,
    // --- disk (etcd_disk_*) ---
    pub wal_fsync_duration: Histogram,
    pub log_size_bytes: Gauge,
    // --- the state (etcd_mvcc_*), sampled every few seconds off the event loop ---
    pub db_total_size: Gauge,
    pub sessions: Gauge,
    pub keys: Gauge,
    // --- network (etcd_network_*) ---
    pub peer_sent_bytes: Family<ToPeer, Counter>,
    pub peer_received_bytes: Family<FromPeer, Counter>,
    pub peer_sent_failures: Family<ToPeer, Counter>,
    pub peer_round_trip_time: HistogramFamily<ToPeer>,
    pub snapshot_sent_chunks: Family<ToPeer, Counter>,
    pub snapshot_sent_bytes: Family<ToPeer, Counter>,
    pub snapshot_send_success: Family<ToPeer, Counter>,
    pub snapshot_received_chunks: Family<FromPeer, Counter>,
    pub snapshot_received_bytes: Family<FromPeer, Counter>,
    pub snapshot_receive_success: Family<FromPeer, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let metrics = Metrics {
            registry: Registry::default(),
            is_primary: Gauge::default(),
            has_primary: Gauge::default(),
            primary_changes_seen: Counter::default(),
            epoch: Gauge::default(),
            proposals_committed: Gauge::default(),
            proposals_applied: Gauge::default(),
            proposals_pending: Gauge::default(),
            proposals_failed: Counter::default(),
            apply_duration: Histogram::new(disk_buckets()),
            member_lag_entries: Family::default(),
            member_heartbeat_age: Family::default(),
            rolled_back_entries: Gauge::default(),
            client_requests: Family::default(),
            client_request_duration: Family::new_with_constructor(|| {
                Histogram::new(request_buckets())
            }),
            wal_fsync_duration: Histogram::new(disk_buckets()),
            log_size_bytes: Gauge::default(),
            db_total_size: Gauge::default(),
            keys: Gauge::default(),
            sessions: Gauge::default(),
            peer_sent_bytes: Family::default(),
            peer_received_bytes: Family::default(),
            peer_sent_failures: Family::default(),
            peer_round_trip_time: Family::new_with_constructor(|| Histogram::new(disk_buckets())),
            snapshot_sent_chunks: Family::default(),
            snapshot_sent_bytes: Family::default(),
            snapshot_send_success: Family::default(),
            snapshot_received_chunks: Family::default(),
            snapshot_received_bytes: Family::default(),
            snapshot_receive_success: Family::default(),
        };
        let replikv = registry.sub_registry_with_prefix("replikv");
        metrics.register(replikv);
        Metrics {
            registry,
            ..metrics
        }
    }

    fn register(&self, registry: &mut Registry) {
        let server = registry.sub_registry_with_prefix("server");
        server.register(
            "is_primary",
            "Whether this node is the primary (1) or not (0)",
            self.is_primary.clone(),
        );
        server.register(
            "has_primary",
            "Whether this node knows a primary (1) or not (0)",
            self.has_primary.clone(),
        );
        server.register(
            "primary_changes_seen",
            "Times this node learned of a new primary",
            self.primary_changes_seen.clone(),
        );
        server.register("epoch", "The epoch this node is in", self.epoch.clone());
        server.register(
            "proposals_committed",
            "The commit index this node knows (entries committed)",
            self.proposals_committed.clone(),
        );
        server.register(
            "proposals_applied",
            "The applied index of this node (entries applied to the state)",
            self.proposals_applied.clone(),
        );
        server.register(
            "proposals_pending",
            "Entries in the primary's log not committed yet (0 on a backup)",
            self.proposals_pending.clone(),
        );
        server.register(
            "proposals_failed",
            "Writes handed to this node's event loop that were answered with an error",
            self.proposals_failed.clone(),
        );
        server.register(
            "apply_duration_seconds",
            "Time of one event-loop call that applied committed entries (one observation per applied batch)",
            self.apply_duration.clone(),
        );
        server.register(
            "member_lag_entries",
            "Entries a member is behind the primary's last index (reported by the primary)",
            self.member_lag_entries.clone(),
        );
        server.register(
            "member_heartbeat_age_seconds",
            "Time since a member last acknowledged the primary (reported by the primary)",
            self.member_heartbeat_age.clone(),
        );
        server.register(
            "rolled_back_entries",
            "Entries this node moved to its rollback tree, over its lifetime",
            self.rolled_back_entries.clone(),
        );
        server.register(
            "client_requests",
            "Client requests answered by this node, by kind and outcome (ok or the error kind)",
            self.client_requests.clone(),
        );
        server.register(
            "client_request_duration_seconds",
            "Time from a client request's arrival to its answer, by kind",
            self.client_request_duration.clone(),
        );
        let disk = registry.sub_registry_with_prefix("disk");
        disk.register(
            "wal_fsync_duration_seconds",
            "Time of one log flush (group commit: one flush covers a batch of writes)",
            self.wal_fsync_duration.clone(),
        );
        disk.register(
            "log_size_bytes",
            "Encoded bytes of the entries in the log (compacted past log_retention_bytes)",
            self.log_size_bytes.clone(),
        );
        let state = registry.sub_registry_with_prefix("mvcc");
        state.register(
            "db_total_size_in_bytes",
            "Bytes the store takes on disk: log, state, sessions and metadata (sled's files)",
            self.db_total_size.clone(),
        );
        state.register(
            "sessions",
            "Client sessions the state holds (one per client id that wrote and has not expired)",
            self.sessions.clone(),
        );
        state.register(
            "keys",
            "Client keys the applied state holds, as DBSIZE counts them",
            self.keys.clone(),
        );
        let network = registry.sub_registry_with_prefix("network");
        network.register(
            "peer_sent_bytes",
            "Bytes of peer messages written to each peer",
            self.peer_sent_bytes.clone(),
        );
        network.register(
            "peer_received_bytes",
            "Bytes of peer messages read from each peer",
            self.peer_received_bytes.clone(),
        );
        network.register(
            "peer_sent_failures",
            "Peer messages dropped before sending (queue full or no link)",
            self.peer_sent_failures.clone(),
        );
        network.register(
            "peer_round_trip_time_seconds",
            "Round-trip time to each peer: the QUIC connection's smoothed estimate, sampled once \
             a second while the link is up",
            self.peer_round_trip_time.clone(),
        );
        network.register(
            "snapshot_sent_chunks",
            "Snapshot chunks sent to each peer",
            self.snapshot_sent_chunks.clone(),
        );
        network.register(
            "snapshot_sent_bytes",
            "Bytes of snapshot chunks sent to each peer",
            self.snapshot_sent_bytes.clone(),
        );
        network.register(
            "snapshot_send_success",
            "Snapshots sent whole to each peer (their last chunk written)",
            self.snapshot_send_success.clone(),
        );
        network.register(
            "snapshot_received_chunks",
            "Snapshot chunks received from each peer",
            self.snapshot_received_chunks.clone(),
        );
        network.register(
            "snapshot_received_bytes",
            "Bytes of snapshot chunks received from each peer",
            self.snapshot_received_bytes.clone(),
        );
        network.register(
            "snapshot_receive_success",
            "Snapshots received whole from each peer (their last chunk read)",
            self.snapshot_receive_success.clone(),
        );
    }

    /// Every metric in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; a collector that fails leaves its part out.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }

    /// Records the node's own view, read after each pass of the event loop.
    pub fn observe_node(&self, view: &NodeView) {
        let is_primary = view.role == Role::Primary;
        self.is_primary.set(i64::from(is_primary));
        self.has_primary.set(i64::from(view.primary.is_some()));
        self.epoch.set(to_gauge(view.epoch));
        self.proposals_committed.set(to_gauge(view.commit_index));
        self.proposals_applied.set(to_gauge(view.applied_index));
        let pending = if is_primary {
            view.last_index.saturating_sub(view.commit_index)
        } else {
            0
        };
        self.proposals_pending.set(to_gauge(pending));
    }

    /// Records what the primary knows of each member (lag, heartbeat age), from its status.
    pub fn observe_status(&self, status: &ClusterStatus) {
        self.rolled_back_entries
            .set(to_gauge(status.rolled_back_entries));
        self.member_lag_entries.clear();
        self.member_heartbeat_age.clear();
        if status.role != Role::Primary {
            return;
        }
        for member in &status.members {
            let label = MemberLabel {
                member: member.member.id,
            };
            if let Some(lag) = member.lag {
                self.member_lag_entries
                    .get_or_create(&label)
                    .set(to_gauge(lag));
            }
            if let Some(age_ms) = member.last_heartbeat_ms {
                self.member_heartbeat_age
                    .get_or_create(&label)
                    .set(Duration::from_millis(age_ms).as_secs_f64());
            }
        }
    }

    /// Samples what only a walk of storage knows (the sessions), the store's size and its key
    /// count, every
    /// [`STORAGE_SAMPLE_INTERVAL`] on the blocking pool, until shutdown. A failed read leaves the
    /// last sample in place.
    pub(crate) async fn sample_storage(
        self: Arc<Self>,
        storage: Arc<dyn Storage>,
        mut shutdown: Shutdown,
    ) {
        let mut every = tokio::time::interval(STORAGE_SAMPLE_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.requested() => return,
                _ = every.tick() => {}
            }
            let storage = Arc::clone(&storage);
            let sampled = tokio::task::spawn_blocking(move || {
                (
                    storage.session_count(),
                    storage.size_bytes(),
                    storage.key_count(),
                )
            })
            .await;
            if let Ok((sessions, size, keys)) = sampled {
                if let Ok(keys) = keys {
                    self.keys.set(to_gauge(keys));
                }
                if let Ok(sessions) = sessions {
                    self.sessions.set(to_gauge(sessions));
                }
                if let Ok(size) = size {
                    self.db_total_size.set(to_gauge(size));
                }
            }
        }
    }

    /// Counts one answered client request and its duration.
    pub fn observe_request(&self, kind: &'static str, response: &Response, elapsed: Duration) {
        let outcome = match response {
            Response::Error(err) => err.kind().name(),
            _ => "ok",
        };
        self.observe_outcome(kind, outcome, elapsed);
    }

    /// Counts one answered client request whose outcome is known by name (`ok` or an
    /// [`ErrorKind`] name).
    pub fn observe_outcome(&self, kind: &'static str, outcome: &'static str, elapsed: Duration) {
        self.client_requests
            .get_or_create(&RequestLabel { kind, outcome })
            .inc();
        self.client_request_duration
            .get_or_create(&KindLabel { kind })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a peer message of `bytes` framed bytes written to `to`.
    pub fn observe_peer_sent(&self, to: NodeId, message: &Message, bytes: usize) {
        let label = ToPeer { To: to };
        let bytes = bytes as u64;
        self.peer_sent_bytes.get_or_create(&label).inc_by(bytes);
        if let MessageBody::SnapshotChunk { finish, .. } = &message.body {
            self.snapshot_sent_chunks.get_or_create(&label).inc();
            self.snapshot_sent_bytes.get_or_create(&label).inc_by(bytes);
            if finish.is_some() {
                self.snapshot_send_success.get_or_create(&label).inc();
            }
        }
    }

    /// Records one sample of the round-trip time to `to`.
    pub fn observe_peer_round_trip(&self, to: NodeId, round_trip: Duration) {
        self.peer_round_trip_time
            .get_or_create(&ToPeer { To: to })
            .observe(round_trip.as_secs_f64());
    }

    /// Counts a peer message of `bytes` framed bytes read from `from`.
    pub fn observe_peer_received(&self, from: NodeId, message: &Message, bytes: usize) {
        let label = FromPeer { From: from };
        let bytes = bytes as u64;
        self.peer_received_bytes.get_or_create(&label).inc_by(bytes);
        if let MessageBody::SnapshotChunk { finish, .. } = &message.body {
            self.snapshot_received_chunks.get_or_create(&label).inc();
            self.snapshot_received_bytes
                .get_or_create(&label)
                .inc_by(bytes);
            if finish.is_some() {
                self.snapshot_receive_success.get_or_create(&label).inc();
            }
        }
    }

    /// Counts a client request refused before it reached the node (by the door).
    pub fn observe_refusal(&self, kind: &'static str, err: &Error, elapsed: Duration) {
        self.observe_outcome(kind, ErrorKind::name(err.kind()), elapsed);
    }
}

/// The node's own view, as the event loop reads it from `core::Node` after each pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub role: Role,
    pub epoch: u64,
    pub primary: Option<NodeId>,
    pub last_index: LogIndex,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    /// Whether the node has heard from no live primary for three failure timeouts
    /// ([`Node::cut_off_from_primary`]): its watches end and it opens none.
    pub cut_off: bool,
}

impl NodeView {
    /// What `node` says of itself now.
    pub fn of(node: &Node) -> NodeView {
        NodeView {
            role: node.role(),
            epoch: node.epoch(),
            primary: node.primary(),
            last_index: node.last_index(),
            commit_index: node.commit_index(),
            applied_index: node.applied_index(),
            cut_off: node.cut_off_from_primary(),
        }
    }
}

/// The kind of a client request, as the `kind` label names it.
pub fn request_kind(request: &Request) -> &'static str {
    match request {
        Request::Get { .. } => "get",
        Request::GetExpiry { .. } => "get_expiry",
        Request::Scan { .. } => "scan",
        Request::CountKeys { .. } => "count_keys",
        Request::Write { write, .. } => match write {
            Write::Put { .. } => "put",
            Write::Delete { .. } => "delete",
            Write::Set { .. } => "set",
            Write::Increment { .. } => "increment",
            Write::Append { .. } => "append",
            Write::GetDelete { .. } => "get_delete",
            Write::Expire { .. } => "expire",
            Write::PutMany { .. } => "put_many",
        },
        Request::Status => "status",
        Request::AddMember { .. } => "add_member",
        Request::RemoveMember { .. } => "remove_member",
        Request::Credentials(request) => match request {
            CredentialsRequest::UserAdd { .. } => "user_add",
            CredentialsRequest::UserPasswd { .. } => "user_passwd",
            CredentialsRequest::UserRemove { .. } => "user_remove",
            CredentialsRequest::UserList => "user_list",
            CredentialsRequest::TokenCreate { .. } => "token_create",
            CredentialsRequest::TokenList => "token_list",
            CredentialsRequest::TokenRevoke { .. } => "token_revoke",
        },
        Request::Watch { .. } => "watch",
    }
}

fn to_gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The standard `process_*` metrics, read from `/proc/self` at each scrape (Linux only; elsewhere
/// they are left out).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(process) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(process.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                process.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                process.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                process.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                process.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                process.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// What `/proc/self` says about this process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    open_fds: f64,
    max_fds: f64,
    start_time_seconds: f64,
}

impl ProcessStats {
    fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| parse_boot_time(&text))
            .unwrap_or(0.0);
        let mut stats = parse_stat(&stat, clock_ticks_per_second(), page_size(), boot_time)?;
        stats.open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|dir| dir.count() as f64)
            .unwrap_or(0.0);
        stats.max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|text| parse_max_open_files(&text))
            .unwrap_or(0.0);
        Some(stats)
    }
}

/// Parses `/proc/self/stat` (fields numbered as in proc(5)): utime (14), stime (15), starttime
/// (22), vsize (23), rss (24). The command name (2) may hold spaces, so fields are counted from
/// its closing parenthesis.
fn parse_stat(stat: &str, ticks: f64, page_size: f64, boot_time: f64) -> Option<ProcessStats> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |number: usize| -> Option<f64> { fields.get(number - 3)?.parse().ok() };
    Some(ProcessStats {
        cpu_seconds: (field(14)? + field(15)?) / ticks,
        start_time_seconds: boot_time + field(22)? / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page_size,
        ..ProcessStats::default()
    })
}

/// The `btime` line of `/proc/stat`: boot time, in seconds since the epoch.
fn parse_boot_time(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// The soft limit of "Max open files" in `/proc/self/limits`.
fn parse_max_open_files(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

fn page_size() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as f64
    } else {
        4096.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_end_of_the_command_name() {
        // A command name with a space and a parenthesis, as proc(5) allows.
        let stat = "42 (kv node) R 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1000 \
                    8192000 300 18446744073709551615";
        let stats = parse_stat(stat, 100.0, 4096.0, 1_700_000_000.0).unwrap();
        assert_eq!(stats.cpu_seconds, 3.0);
        assert_eq!(stats.start_time_seconds, 1_700_000_010.0);
        assert_eq!(stats.virtual_bytes, 8_192_000.0);
        assert_eq!(stats.resident_bytes, 300.0 * 4096.0);
        assert!(parse_stat("garbage", 100.0, 4096.0, 0.0).is_none());
    }

    #[test]
    fn limits_and_boot_time_are_found() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_open_files(limits), Some(1024.0));
        assert_eq!(parse_boot_time("cpu 1 2\nbtime 1700000000\n"), Some(1.7e9));
    }

    #[test]
    fn the_text_names_metrics_as_etcd_does() {
        let metrics = Metrics::new();
        metrics.primary_changes_seen.inc();
        metrics.observe_outcome("put", "ok", Duration::from_millis(3));
        metrics
            .peer_sent_bytes
            .get_or_create(&ToPeer { To: 2 })
            .inc_by(10);
        let text = metrics.encode();
        for name in [
            "replikv_server_is_primary ",
            "replikv_server_primary_changes_seen_total 1",
            "replikv_server_client_requests_total{kind=\"put\",outcome=\"ok\"} 1",
            "replikv_disk_wal_fsync_duration_seconds_bucket",
            "replikv_network_peer_sent_bytes_total{To=\"2\"} 10",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
