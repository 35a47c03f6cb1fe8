//! Node and client configuration, with every default of the crate in one place.
//!
//! A node is configured by a TOML file ([`NodeConfig`]), by command-line flags
//! ([`NodeOverrides`], which win over the file), or both. A client (`kvctl`, the benchmarks) reads
//! a [`ClientConfig`] that it finds on its own ([`ClientConfig::discover`]), so that after
//! `kvnode dev` no flags are needed.
//!
//! Invariants:
//! - Configuration is untrusted input: every problem is an [`Error::Config`] that names the file
//!   and the field at fault, never a panic. Unknown fields are errors, so a typo cannot silently
//!   fall back to a default.
//! - A [`NodeConfig`] that passed [`NodeConfig::validate`] has parseable, distinct addresses, lists
//!   its own node among unique members, and has timings the protocol can work with.
//! - Relative paths in a file are relative to the directory of that file, so a cluster directory
//!   can be moved or used from anywhere.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::core::Options;
use crate::error::{Error, Result};
use crate::net::tls::TlsFiles;
use crate::wire::client::WriteConcern;
use crate::wire::frame::{MAX_CLIENT_FRAME_BYTES, MAX_PEER_FRAME_BYTES};
use crate::wire::message::{Member, NodeId};

// --- protocol timing and sizes (the defaults of `core::Options`) ---

/// How often the primary sends heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 100;

/// How many heartbeat intervals of silence make a failure (DESIGN §5: 3 × heartbeat).
pub const FAILURE_TIMEOUT_HEARTBEATS: u64 = 3;

/// Silence after which a backup elects and a primary without a majority steps down.
pub const DEFAULT_FAILURE_TIMEOUT_MS: u64 =
    FAILURE_TIMEOUT_HEARTBEATS * DEFAULT_HEARTBEAT_INTERVAL_MS;

/// Upper bound of the random extra added to each node's election timer, so that nodes rarely
/// start elections together.
pub const DEFAULT_FAILURE_JITTER_MS: u64 = 150;

/// A voter that has not caught up within this long leaves the in-sync set (`w=all`).
pub const DEFAULT_REPLICA_LAG_TIMEOUT_MS: u64 = 1000;

/// Largest encoded size of the entries of one append message.
pub const DEFAULT_MAX_APPEND_BYTES: usize = 1024 * 1024;

/// Most entries in flight to one member before the primary waits for acks.
pub const DEFAULT_MAX_INFLIGHT_ENTRIES: u64 = 8192;

/// How many bytes of log a node keeps before it compacts the applied prefix into its state
/// (DESIGN §6, compaction: the state is the snapshot). A member that returns after the entries it
/// needs were compacted is sent a snapshot of the state first, then the log from there. Larger
/// keeps more history for members that were away a while (a log catch-up is cheaper than a
/// snapshot); smaller bounds the disk the log takes.
pub const DEFAULT_LOG_RETENTION_BYTES: u64 = 64 * 1024 * 1024;

/// Largest allowed `max_append_bytes`: an append may exceed it by one entry (at most a client
/// frame), and the whole message must still fit in a peer frame.
pub const MAX_APPEND_BYTES_LIMIT: usize = MAX_PEER_FRAME_BYTES - MAX_CLIENT_FRAME_BYTES - 64 * 1024;

// --- the I/O shell (`net`) ---

/// How often the event loop calls `Node::tick`. Well below the heartbeat interval so timers fire
/// close to when they are due.
pub const TICK_INTERVAL_MS: u64 = 10;

/// Capacity of the event loop's inbox of peer messages. When it is full, stream readers wait,
/// which pushes back on the peer through QUIC flow control.
pub const PEER_INBOX_CAPACITY: usize = 4096;

/// Capacity of the event loop's inbox of client requests. Separate from the peers' inbox, so a
/// flood of requests never delays heartbeats and votes; when full, sessions wait.
pub const CLIENT_INBOX_CAPACITY: usize = 4096;

/// Most messages (and, separately, requests) the event loop takes in one batch before it
/// dispatches outputs, so a flood cannot starve ticks and flushes.
pub const MAX_EVENTS_PER_BATCH: usize = 1024;

/// Capacity of each peer's heartbeat/election queue. Older heartbeats are worthless, so the queue
/// is short; a full queue drops the message (the protocol tolerates loss).
pub const PEER_HEARTBEAT_QUEUE_CAPACITY: usize = 64;

/// Capacity of each peer's replication queue, in messages (each at most `max_append_bytes`).
pub const PEER_REPLICATION_QUEUE_CAPACITY: usize = 256;

/// Capacity of each peer's resync queue, in messages: catch-up appends read from storage and
/// snapshot chunks (each at most about `max_append_bytes`). A resync has its own queue and
/// stream, so a large transfer never delays heartbeats or live replication; the primary's flow
/// control keeps only a few of these in flight, and a full queue drops (they are resent).
pub const PEER_RESYNC_QUEUE_CAPACITY: usize = 32;

/// Capacity of the event loop's inbox of resync messages from peers. Separate from
/// [`PEER_INBOX_CAPACITY`], so a member being caught up still handles heartbeats and live appends
/// at once; when full, the resync stream's reader waits, which pushes back through QUIC.
pub const PEER_RESYNC_INBOX_CAPACITY: usize = 64;

/// Most resync messages the event loop takes in one batch, after everything live. Each may carry
/// a megabyte of entries to append and apply (a good part of a heartbeat interval on a small
/// machine), so one per pass keeps heartbeats, acks and flushes on time while a transfer runs.
pub const MAX_RESYNC_EVENTS_PER_BATCH: usize = 1;

/// First delay before redialling a peer after a failure; doubled up to the maximum.
pub const RECONNECT_BACKOFF_MIN_MS: u64 = 50;

/// Largest delay between two dials of an unreachable peer.
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 1000;

/// How long a dial (QUIC and TLS handshake) to a peer may take before it is abandoned and
/// retried. Below quinn's first retransmission (about 1 s with its initial RTT estimate), so a
/// dial whose first packet was lost (the peer was still starting) is retried sooner. Sized for
/// LAN round trips.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 500;

/// How long shutdown waits for the node's tasks to finish.
pub const SHUTDOWN_GRACE_MS: u64 = 2000;

/// How long shutdown waits for closed connections to drain. The close frames go out at once;
/// this only gives them a chance to be delivered (QUIC's full draining period can be seconds).
pub const SHUTDOWN_DRAIN_MS: u64 = 500;

/// First pause before a joining node (`kvnode --join`) retries its registration; doubled up to
/// [`JOIN_RETRY_MAX_MS`].
pub const JOIN_RETRY_MIN_MS: u64 = 200;

/// Longest pause between two registration attempts of a joining node.
pub const JOIN_RETRY_MAX_MS: u64 = 5000;

/// Deadline of one registration attempt, redirects and the commit of the change included.
pub const JOIN_ATTEMPT_TIMEOUT_MS: u64 = 10_000;

/// Default log filter when neither `RUST_LOG` nor the config sets one.
pub const DEFAULT_LOG_LEVEL: &str = "info";

// --- clients ---

/// Environment variable naming the client configuration file.
pub const CLIENT_CONFIG_ENV: &str = "REPLIKV_CONFIG";

/// Default per-request timeout of clients.
pub const DEFAULT_CLIENT_TIMEOUT_MS: u64 = 5000;

/// File name of the client configuration inside a cluster directory.
pub const CLIENT_CONFIG_FILE: &str = "client.toml";

// --- `kvnode dev` ---

/// Directory of the local development cluster.
pub const DEFAULT_DEV_DIR: &str = ".replikv";

/// Nodes in the local development cluster.
pub const DEFAULT_DEV_NODES: u64 = 3;

/// Client port of every dev node; the peer port is the next one. Each node has its own loopback
/// address (127.0.0.{10+id}), so the ports can be the same on all of them.
pub const DEFAULT_DEV_BASE_PORT: u16 = 7379;

/// Name of the client certificate `kvnode dev` makes (role admin).
pub const DEV_CLIENT_NAME: &str = "admin";

/// How long `kvnode dev` waits for its nodes to stop after SIGTERM before it kills them.
pub const DEV_STOP_GRACE_MS: u64 = 5000;

impl Default for Options {
    fn default() -> Self {
        Options {
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            failure_timeout_ms: DEFAULT_FAILURE_TIMEOUT_MS,
            failure_jitter_ms: DEFAULT_FAILURE_JITTER_MS,
            replica_lag_timeout_ms: DEFAULT_REPLICA_LAG_TIMEOUT_MS,
            max_append_bytes: DEFAULT_MAX_APPEND_BYTES,
            max_inflight_entries: DEFAULT_MAX_INFLIGHT_ENTRIES,
            log_retention_bytes: DEFAULT_LOG_RETENTION_BYTES,
        }
    }
}

/// A node's configuration, as in `node.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id; must match its certificate (and be one of `members`, if they are given).
    pub id: NodeId,
    /// Address the client port binds (`ip:port`).
    pub client_addr: String,
    /// Address the peer port binds (`ip:port`); other nodes dial it.
    pub peer_addr: String,
    /// Directory of the sled database.
    pub data_dir: PathBuf,
    /// Directory of the certificates made by `kvctl certs init` or `kvnode dev`.
    pub certs_dir: PathBuf,
    /// The initial cluster. The membership in the node's log, once it has one, wins over this.
    /// May be left out with `join`: the node then starts knowing only itself, as a learner.
    #[serde(default, deserialize_with = "deserialize_members")]
    pub members: Vec<Member>,
    /// Client addresses of existing members (any one is enough): at start, the node asks the
    /// cluster to add it as a learner, through whichever member answers (`kvnode --join`). Safe
    /// to keep on restarts: a node that is already a member does not register again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub join: Vec<String>,
    /// Overrides [`DEFAULT_HEARTBEAT_INTERVAL_MS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Overrides the failure timeout, which is otherwise [`FAILURE_TIMEOUT_HEARTBEATS`] heartbeat
    /// intervals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_timeout_ms: Option<u64>,
    /// Overrides [`DEFAULT_FAILURE_JITTER_MS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_jitter_ms: Option<u64>,
    /// Overrides [`DEFAULT_REPLICA_LAG_TIMEOUT_MS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_lag_timeout_ms: Option<u64>,
    /// Overrides [`DEFAULT_MAX_APPEND_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_append_bytes: Option<usize>,
    /// Overrides [`DEFAULT_MAX_INFLIGHT_ENTRIES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inflight_entries: Option<u64>,
    /// Overrides [`DEFAULT_LOG_RETENTION_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_retention_bytes: Option<u64>,
    /// A `tracing` filter such as `info` or `replikv=debug`; `RUST_LOG` wins over it.
    #[serde(default = "default_log_level")]
    pub log_level: String,
}

fn default_log_level() -> String {
    DEFAULT_LOG_LEVEL.to_string()
}

/// A member as written in a config file: like [`Member`], but `voter` defaults to true and
/// unknown fields are errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberEntry {
    id: NodeId,
    client_addr: String,
    peer_addr: String,
    #[serde(default = "default_voter")]
    voter: bool,
}

fn default_voter() -> bool {
    true
}

fn deserialize_members<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<Member>, D::Error> {
    let entries = Vec::<MemberEntry>::deserialize(deserializer)?;
    Ok(entries
        .into_iter()
        .map(|entry| Member {
            id: entry.id,
            client_addr: entry.client_addr,
            peer_addr: entry.peer_addr,
            voter: entry.voter,
        })
        .collect())
}

/// Settings given as flags; each one that is present replaces the file's value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeOverrides {
    pub id: Option<NodeId>,
    pub client_addr: Option<String>,
    pub peer_addr: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub certs_dir: Option<PathBuf>,
    /// When not empty, replaces the file's members entirely.
    pub members: Vec<Member>,
    /// When not empty, replaces the file's `join` addresses.
    pub join: Vec<String>,
    pub heartbeat_interval_ms: Option<u64>,
    pub failure_timeout_ms: Option<u64>,
    pub failure_jitter_ms: Option<u64>,
    pub replica_lag_timeout_ms: Option<u64>,
    pub max_append_bytes: Option<usize>,
    pub max_inflight_entries: Option<u64>,
    pub log_retention_bytes: Option<u64>,
    pub log_level: Option<String>,
}

impl NodeConfig {
    /// Reads and validates a node configuration file.
    pub fn load(path: &Path) -> Result<NodeConfig> {
        let config = Self::read(path)?;
        config.validate().map_err(|err| in_file(path, err))?;
        Ok(config)
    }

    /// Builds the configuration from an optional file and flags (flags win), then validates it.
    /// Without a file, the flags must give every required setting.
    pub fn resolve(file: Option<&Path>, overrides: NodeOverrides) -> Result<NodeConfig> {
        let config = match file {
            Some(path) => {
                let config = Self::read(path)?;
                config.apply(overrides)
            }
            None => Self::from_overrides(overrides)?,
        };
        config.validate().map_err(|err| match file {
            Some(path) => in_file(path, err),
            None => err,
        })?;
        Ok(config)
    }

    /// Parses the file without validating it; relative paths become relative to its directory.
    fn read(path: &Path) -> Result<NodeConfig> {
        let mut config: NodeConfig = read_toml(path)?;
        let base = path.parent().unwrap_or(Path::new(""));
        config.data_dir = base.join(&config.data_dir);
        config.certs_dir = base.join(&config.certs_dir);
        Ok(config)
    }

    fn from_overrides(overrides: NodeOverrides) -> Result<NodeConfig> {
        fn required<T>(value: Option<T>, flag: &str) -> Result<T> {
            value.ok_or_else(|| {
                Error::Config(format!(
                    "missing {flag}: give it as a flag or pass --config FILE (or run `kvnode dev` for a local cluster)"
                ))
            })
        }
        if overrides.members.is_empty() && overrides.join.is_empty() {
            return Err(Error::Config(
                "missing --member ID=CLIENT_ADDR,PEER_ADDR (one per member, this node included), \
                 or --join ADDR to join a running cluster, or pass --config FILE"
                    .into(),
            ));
        }
        Ok(NodeConfig {
            id: required(overrides.id, "--id")?,
            client_addr: required(overrides.client_addr, "--client-addr")?,
            peer_addr: required(overrides.peer_addr, "--peer-addr")?,
            data_dir: required(overrides.data_dir, "--data-dir")?,
            certs_dir: required(overrides.certs_dir, "--certs-dir")?,
            members: overrides.members,
            join: overrides.join,
            heartbeat_interval_ms: overrides.heartbeat_interval_ms,
            failure_timeout_ms: overrides.failure_timeout_ms,
            failure_jitter_ms: overrides.failure_jitter_ms,
            replica_lag_timeout_ms: overrides.replica_lag_timeout_ms,
            max_append_bytes: overrides.max_append_bytes,
            max_inflight_entries: overrides.max_inflight_entries,
            log_retention_bytes: overrides.log_retention_bytes,
            log_level: overrides.log_level.unwrap_or_else(default_log_level),
        })
    }

    /// This configuration with every present override applied.
    pub fn apply(mut self, overrides: NodeOverrides) -> NodeConfig {
        fn set<T>(target: &mut T, value: Option<T>) {
            if let Some(value) = value {
                *target = value;
            }
        }
        fn set_optional<T>(target: &mut Option<T>, value: Option<T>) {
            if value.is_some() {
                *target = value;
            }
        }
        set(&mut self.id, overrides.id);
        set(&mut self.client_addr, overrides.client_addr);
        set(&mut self.peer_addr, overrides.peer_addr);
        set(&mut self.data_dir, overrides.data_dir);
        set(&mut self.certs_dir, overrides.certs_dir);
        if !overrides.members.is_empty() {
            self.members = overrides.members;
        }
        if !overrides.join.is_empty() {
            self.join = overrides.join;
        }
        set_optional(
            &mut self.heartbeat_interval_ms,
            overrides.heartbeat_interval_ms,
        );
        set_optional(&mut self.failure_timeout_ms, overrides.failure_timeout_ms);
        set_optional(&mut self.failure_jitter_ms, overrides.failure_jitter_ms);
        set_optional(
            &mut self.replica_lag_timeout_ms,
            overrides.replica_lag_timeout_ms,
        );
        set_optional(&mut self.max_append_bytes, overrides.max_append_bytes);
        set_optional(
            &mut self.max_inflight_entries,
            overrides.max_inflight_entries,
        );
        set_optional(&mut self.log_retention_bytes, overrides.log_retention_bytes);
        set(&mut self.log_level, overrides.log_level);
        self
    }

    /// Checks everything a node needs before it binds a port. The error names the bad field.
    pub fn validate(&self) -> Result<()> {
        let client_addr = parse_socket_addr("client_addr", &self.client_addr)?;
        let peer_addr = parse_socket_addr("peer_addr", &self.peer_addr)?;
        if client_addr == peer_addr {
            return Err(Error::Config(format!(
                "client_addr and peer_addr are both {client_addr}: the client and peer ports must differ"
            )));
        }
        if self.members.is_empty() && self.join.is_empty() {
            return Err(Error::Config(
                "members is empty: list every member of the cluster, this node included, \
                 or give join (kvnode --join ADDR) to join a running cluster"
                    .into(),
            ));
        }
        for addr in &self.join {
            if !is_host_port(addr) {
                return Err(Error::Config(format!(
                    "join address {addr:?} is not host:port: give the client address of any \
                     member (for example 127.0.0.11:7379)"
                )));
            }
        }
        let members = self.initial_members();
        let mut seen_ids = std::collections::BTreeSet::new();
        let mut seen_addrs = std::collections::BTreeSet::new();
        for member in &members {
            if !seen_ids.insert(member.id) {
                return Err(Error::Config(format!(
                    "members lists node {} twice: member ids must be unique",
                    member.id
                )));
            }
            let field = |name: &str| format!("members[id={}].{name}", member.id);
            let member_client = parse_socket_addr(&field("client_addr"), &member.client_addr)?;
            let member_peer = parse_socket_addr(&field("peer_addr"), &member.peer_addr)?;
            for addr in [member_client, member_peer] {
                if !seen_addrs.insert(addr) {
                    return Err(Error::Config(format!(
                        "address {addr} is used twice in members: every port must be distinct"
                    )));
                }
            }
        }
        // A node that knows only itself as a learner waits to be added by a primary (after
        // `--join`, or `kvctl member add`); any other membership needs a voter to ever elect one.
        let lone_learner = matches!(members.as_slice(), [only] if only.id == self.id);
        if !lone_learner && !members.iter().any(|member| member.voter) {
            return Err(Error::Config(
                "members has no voter: at least one member must have voter = true".into(),
            ));
        }
        let Some(own) = members.iter().find(|member| member.id == self.id) else {
            return Err(Error::Config(format!(
                "id {} is not in members: add this node to the member list",
                self.id
            )));
        };
        check_own_address("client_addr", client_addr, &own.client_addr)?;
        check_own_address("peer_addr", peer_addr, &own.peer_addr)?;

        let options = self.core_options();
        if options.heartbeat_interval_ms == 0 {
            return Err(Error::Config(
                "heartbeat_interval_ms must be at least 1".into(),
            ));
        }
        if options.heartbeat_interval_ms >= options.failure_timeout_ms {
            return Err(Error::Config(format!(
                "heartbeat_interval_ms ({}) must be less than failure_timeout_ms ({}): \
                 a failure is several missed heartbeats (the default is {FAILURE_TIMEOUT_HEARTBEATS})",
                options.heartbeat_interval_ms, options.failure_timeout_ms
            )));
        }
        if options.max_append_bytes == 0 || options.max_append_bytes > MAX_APPEND_BYTES_LIMIT {
            return Err(Error::Config(format!(
                "max_append_bytes ({}) must be between 1 and {MAX_APPEND_BYTES_LIMIT}",
                options.max_append_bytes
            )));
        }
        if options.max_inflight_entries == 0 {
            return Err(Error::Config(
                "max_inflight_entries must be at least 1".into(),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|err| {
            Error::Config(format!(
                "log_level {:?} is not a valid filter: {err}",
                self.log_level
            ))
        })?;
        Ok(())
    }

    /// The protocol options: the defaults with this file's overrides. A heartbeat interval given
    /// without a failure timeout keeps the failure timeout at [`FAILURE_TIMEOUT_HEARTBEATS`]
    /// intervals.
    pub fn core_options(&self) -> Options {
        let defaults = Options::default();
        let heartbeat_interval_ms = self
            .heartbeat_interval_ms
            .unwrap_or(defaults.heartbeat_interval_ms);
        Options {
            heartbeat_interval_ms,
            failure_timeout_ms: self
                .failure_timeout_ms
                .unwrap_or(heartbeat_interval_ms.saturating_mul(FAILURE_TIMEOUT_HEARTBEATS)),
            failure_jitter_ms: self.failure_jitter_ms.unwrap_or(defaults.failure_jitter_ms),
            replica_lag_timeout_ms: self
                .replica_lag_timeout_ms
                .unwrap_or(defaults.replica_lag_timeout_ms),
            max_append_bytes: self.max_append_bytes.unwrap_or(defaults.max_append_bytes),
            max_inflight_entries: self
                .max_inflight_entries
                .unwrap_or(defaults.max_inflight_entries),
            log_retention_bytes: self
                .log_retention_bytes
                .unwrap_or(defaults.log_retention_bytes),
        }
    }

    /// The membership the node starts with when its storage holds none: `members`, or, for a
    /// joining node that lists none, only itself as a learner (it learns the rest from the
    /// primary once it has been added).
    pub fn initial_members(&self) -> Vec<Member> {
        if self.members.is_empty() {
            vec![Member {
                id: self.id,
                client_addr: self.client_addr.clone(),
                peer_addr: self.peer_addr.clone(),
                voter: false,
            }]
        } else {
            self.members.clone()
        }
    }

    /// This node's entry in [`NodeConfig::initial_members`]: what it asks to be added as when it
    /// joins (the core adds every new member as a learner, whatever it asks).
    pub fn own_member(&self) -> Option<Member> {
        self.initial_members()
            .into_iter()
            .find(|member| member.id == self.id)
    }

    /// This node's certificate, key and CA.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles::for_node(&self.certs_dir, self.id)
    }

    /// The configuration as TOML, as `kvnode dev` writes it.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|err| Error::Config(format!("cannot write the node configuration: {err}")))
    }
}

/// Parses `ID=CLIENT_ADDR,PEER_ADDR[,learner]`, the form of `kvnode --member`.
pub fn parse_member(text: &str) -> Result<Member> {
    let usage = || {
        Error::Config(format!(
            "member {text:?} is not ID=CLIENT_ADDR,PEER_ADDR[,learner] (for example 1=127.0.0.11:7379,127.0.0.11:7380)"
        ))
    };
    let (id, addrs) = text.split_once('=').ok_or_else(usage)?;
    let id: NodeId = id.trim().parse().map_err(|_| usage())?;
    let parts: Vec<&str> = addrs.split(',').map(str::trim).collect();
    let (client_addr, peer_addr, voter) = match parts.as_slice() {
        [client, peer] => (*client, *peer, true),
        [client, peer, "learner"] => (*client, *peer, false),
        [client, peer, "voter"] => (*client, *peer, true),
        _ => return Err(usage()),
    };
    parse_socket_addr("member client address", client_addr)?;
    parse_socket_addr("member peer address", peer_addr)?;
    Ok(Member {
        id,
        client_addr: client_addr.to_string(),
        peer_addr: peer_addr.to_string(),
        voter,
    })
}

/// A client's configuration, as in `client.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Client addresses of the nodes to try (`host:port`); any one is enough to find the rest.
    pub nodes: Vec<String>,
    /// Directory holding the CA certificate and this client's certificate and key.
    pub certs_dir: PathBuf,
    /// Name of this client's certificate (`<certs_dir>/<client_name>.crt`, see
    /// [`TlsFiles::for_client`]).
    pub client_name: String,
    /// Write concern of writes that do not name one: `1`, `N`, `majority` or `all`.
    #[serde(default, with = "as_text")]
    pub default_write_concern: WriteConcern,
    /// Per-request deadline, retries included.
    #[serde(default = "default_client_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_client_timeout_ms() -> u64 {
    DEFAULT_CLIENT_TIMEOUT_MS
}

impl ClientConfig {
    /// Reads and validates a client configuration file.
    pub fn load(path: &Path) -> Result<ClientConfig> {
        let mut config: ClientConfig = read_toml(path)?;
        let base = path.parent().unwrap_or(Path::new(""));
        config.certs_dir = base.join(&config.certs_dir);
        config.validate().map_err(|err| in_file(path, err))?;
        Ok(config)
    }

    /// Finds the client configuration: `explicit` if given, else the file named by
    /// `$REPLIKV_CONFIG`, else `./.replikv/client.toml`. Returns it with the path it came from.
    pub fn discover(explicit: Option<&Path>) -> Result<(ClientConfig, PathBuf)> {
        let from_env = std::env::var_os(CLIENT_CONFIG_ENV).map(PathBuf::from);
        Self::discover_from(explicit, from_env)
    }

    fn discover_from(
        explicit: Option<&Path>,
        from_env: Option<PathBuf>,
    ) -> Result<(ClientConfig, PathBuf)> {
        let path = match (explicit, from_env) {
            (Some(path), _) => path.to_path_buf(),
            (None, Some(path)) if !path.as_os_str().is_empty() => path,
            _ => {
                let default = Path::new(DEFAULT_DEV_DIR).join(CLIENT_CONFIG_FILE);
                if !default.exists() {
                    return Err(Error::Config(format!(
                        "no client configuration found: ${CLIENT_CONFIG_ENV} is not set and {} does not exist; \
                         start a local cluster with `kvnode dev`, or pass --config FILE",
                        default.display()
                    )));
                }
                default
            }
        };
        let config = Self::load(&path)?;
        Ok((config, path))
    }

    /// Checks the node list, the certificate name and the timeout.
    pub fn validate(&self) -> Result<()> {
        if self.nodes.is_empty() {
            return Err(Error::Config(
                "nodes is empty: list the client address of at least one node".into(),
            ));
        }
        for node in &self.nodes {
            if !is_host_port(node) {
                return Err(Error::Config(format!(
                    "nodes entry {node:?} is not host:port (for example 127.0.0.11:7379)"
                )));
            }
        }
        let name_is_plain = !self.client_name.is_empty()
            && self
                .client_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && !self.client_name.starts_with('.');
        if !name_is_plain {
            return Err(Error::Config(format!(
                "client_name {:?} must be a plain certificate name (letters, digits, '-', '_', '.')",
                self.client_name
            )));
        }
        if self.timeout_ms == 0 {
            return Err(Error::Config("timeout_ms must be at least 1".into()));
        }
        Ok(())
    }

    /// This client's certificate, key and CA.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles::for_client(&self.certs_dir, &self.client_name)
    }

    /// The configuration as TOML, as `kvnode dev` writes it.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|err| Error::Config(format!("cannot write the client configuration: {err}")))
    }
}

/// The layout of the local cluster that `kvnode dev` runs: node `i` (1..=n) listens on
/// `127.0.0.{10+i}`, clients on `base_port`, peers on `base_port + 1`; everything lives in `dir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevCluster {
    /// The cluster directory, absolute.
    pub dir: PathBuf,
    /// `dir/certs`.
    pub certs_dir: PathBuf,
    pub nodes: Vec<NodeConfig>,
    pub client: ClientConfig,
}

impl DevCluster {
    /// Plans a cluster of `nodes` nodes in `dir`. Writes nothing.
    pub fn plan(dir: &Path, nodes: u64, base_port: u16) -> Result<DevCluster> {
        if !(1..=245).contains(&nodes) {
            return Err(Error::Config(format!(
                "--nodes {nodes} is out of range: a dev cluster has 1 to 245 nodes (one loopback address each)"
            )));
        }
        let peer_port = base_port.checked_add(1).filter(|_| base_port != 0).ok_or_else(|| {
            Error::Config(format!(
                "--base-port {base_port} is out of range: it and the next port must be between 1 and 65535"
            ))
        })?;
        let dir = std::path::absolute(dir).map_err(|err| {
            Error::Config(format!(
                "cannot resolve the directory {}: {err}",
                dir.display()
            ))
        })?;
        let certs_dir = dir.join("certs");
        let members: Vec<Member> = (1..=nodes)
            .map(|id| {
                let ip = Self::node_ip(id);
                Member {
                    id,
                    client_addr: format!("{ip}:{base_port}"),
                    peer_addr: format!("{ip}:{peer_port}"),
                    voter: true,
                }
            })
            .collect();
        let node_configs = members
            .iter()
            .map(|member| NodeConfig {
                id: member.id,
                client_addr: member.client_addr.clone(),
                peer_addr: member.peer_addr.clone(),
                data_dir: dir.join(format!("node-{}", member.id)),
                certs_dir: certs_dir.clone(),
                members: members.clone(),
                join: Vec::new(),
                heartbeat_interval_ms: None,
                failure_timeout_ms: None,
                failure_jitter_ms: None,
                replica_lag_timeout_ms: None,
                max_append_bytes: None,
                max_inflight_entries: None,
                log_retention_bytes: None,
                log_level: default_log_level(),
            })
            .collect();
        let client = ClientConfig {
            nodes: members.iter().map(|m| m.client_addr.clone()).collect(),
            certs_dir: certs_dir.clone(),
            client_name: DEV_CLIENT_NAME.to_string(),
            default_write_concern: WriteConcern::default(),
            timeout_ms: DEFAULT_CLIENT_TIMEOUT_MS,
        };
        Ok(DevCluster {
            dir,
            certs_dir,
            nodes: node_configs,
            client,
        })
    }

    /// The loopback address of dev node `id`.
    pub fn node_ip(id: NodeId) -> String {
        format!("127.0.0.{}", 10 + id)
    }

    /// `dir/node-<id>.toml`.
    pub fn node_config_path(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.toml"))
    }

    /// `dir/node-<id>.log`.
    pub fn node_log_path(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    /// `dir/client.toml`.
    pub fn client_config_path(&self) -> PathBuf {
        self.dir.join(CLIENT_CONFIG_FILE)
    }

    /// Writes every node's configuration and the client configuration (rewritten on every run;
    /// the data directories are left alone so a restart resumes).
    pub fn write_configs(&self) -> Result<()> {
        const HEADER: &str = "# Written by `kvnode dev`, which rewrites it on every run.\n\n";
        std::fs::create_dir_all(&self.dir)
            .map_err(|err| Error::Config(format!("cannot create {}: {err}", self.dir.display())))?;
        let write = |path: PathBuf, text: String| {
            std::fs::write(&path, format!("{HEADER}{text}"))
                .map_err(|err| Error::Config(format!("cannot write {}: {err}", path.display())))
        };
        for node in &self.nodes {
            write(self.node_config_path(node.id), node.to_toml()?)?;
        }
        write(self.client_config_path(), self.client.to_toml()?)
    }
}

/// Reads a TOML file into `T`, with errors that name the file (the TOML error names the field).
fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| Error::Config(format!("cannot read {}: {err}", path.display())))?;
    toml::from_str(&text).map_err(|err| {
        Error::Config(format!(
            "{}: {}",
            path.display(),
            err.to_string().trim_end()
        ))
    })
}

/// Prefixes a validation error with the file it came from.
fn in_file(path: &Path, err: Error) -> Error {
    match err {
        Error::Config(message) => Error::Config(format!("{}: {message}", path.display())),
        other => other,
    }
}

/// Whether `text` looks like `host:port`: a non-empty host and a port number.
pub fn is_host_port(text: &str) -> bool {
    text.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

fn parse_socket_addr(field: &str, text: &str) -> Result<SocketAddr> {
    text.parse().map_err(|_| {
        Error::Config(format!(
            "{field} {text:?} is not an ip:port address (for example 127.0.0.11:7379)"
        ))
    })
}

/// The address this node binds must be the one the others know it by. Binding the unspecified
/// address (0.0.0.0) is allowed as long as the port matches.
fn check_own_address(field: &str, bound: SocketAddr, advertised: &str) -> Result<()> {
    let advertised_addr = parse_socket_addr(field, advertised)?;
    let matches = bound.port() == advertised_addr.port()
        && (bound.ip().is_unspecified() || bound.ip() == advertised_addr.ip());
    if matches {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{field} is {bound} but this node's entry in members says {advertised}: they must agree"
        )))
    }
}

/// Serializes a value through its `Display` and `FromStr` (for example a write concern written as
/// `"majority"` or `2`).
mod as_text {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Text(String),
        Number(u64),
    }

    pub fn serialize<T: Display, S: Serializer>(
        value: &T,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn deserialize<'de, T, D>(deserializer: D) -> std::result::Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let text = match Text::deserialize(deserializer)? {
            Text::Text(text) => text,
            Text::Number(number) => number.to_string(),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE_TOML: &str = r#"
id = 1
client_addr = "127.0.0.11:7379"
peer_addr = "127.0.0.11:7380"
data_dir = "node-1"
certs_dir = "/etc/replikv/certs"

[[members]]
id = 1
client_addr = "127.0.0.11:7379"
peer_addr = "127.0.0.11:7380"

[[members]]
id = 2
client_addr = "127.0.0.12:7379"
peer_addr = "127.0.0.12:7380"
voter = false
"#;

    fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn config_error(result: Result<impl std::fmt::Debug>) -> String {
        match result {
            Err(Error::Config(message)) => message,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    fn valid_config() -> NodeConfig {
        NodeConfig::from_overrides(NodeOverrides {
            id: Some(1),
            client_addr: Some("127.0.0.11:7379".into()),
            peer_addr: Some("127.0.0.11:7380".into()),
            data_dir: Some("data".into()),
            certs_dir: Some("certs".into()),
            members: vec![
                parse_member("1=127.0.0.11:7379,127.0.0.11:7380").unwrap(),
                parse_member("2=127.0.0.12:7379,127.0.0.12:7380").unwrap(),
            ],
            ..NodeOverrides::default()
        })
        .unwrap()
    }

    #[test]
    fn loads_a_node_file_with_defaults_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "node.toml", NODE_TOML);
        let config = NodeConfig::load(&path).unwrap();
        assert_eq!(config.id, 1);
        assert_eq!(config.data_dir, dir.path().join("node-1"));
        assert_eq!(config.certs_dir, PathBuf::from("/etc/replikv/certs"));
        assert!(config.members[0].voter, "voter defaults to true");
        assert!(!config.members[1].voter);
        assert_eq!(config.log_level, DEFAULT_LOG_LEVEL);
        assert_eq!(config.core_options(), Options::default());
    }

    #[test]
    fn unknown_field_is_named_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = NODE_TOML.replace("id = 1\n", "id = 1\nheartbeat_ms = 5\n");
        let path = write_file(dir.path(), "node.toml", &text);
        let message = config_error(NodeConfig::load(&path));
        assert!(message.contains("heartbeat_ms"), "{message}");
        assert!(message.contains("node.toml"), "{message}");
    }

    #[test]
    fn unknown_member_field_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let text = NODE_TOML.replace("voter = false", "votre = false");
        let path = write_file(dir.path(), "node.toml", &text);
        let message = config_error(NodeConfig::load(&path));
        assert!(message.contains("votre"), "{message}");
    }

    #[test]
    fn bad_address_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let text = NODE_TOML.replacen(
            "client_addr = \"127.0.0.11:7379\"",
            "client_addr = \"localhost\"",
            1,
        );
        let path = write_file(dir.path(), "node.toml", &text);
        let message = config_error(NodeConfig::load(&path));
        assert!(
            message.contains("client_addr") && message.contains("localhost"),
            "{message}"
        );
        assert!(message.contains("node.toml"), "{message}");
    }

    #[test]
    fn missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let message = config_error(NodeConfig::load(&path));
        assert!(message.contains("absent.toml"), "{message}");
    }

    #[test]
    fn own_id_must_be_a_member() {
        let mut config = valid_config();
        config.id = 7;
        let message = config_error(config.validate());
        assert!(message.contains("id 7 is not in members"), "{message}");
    }

    #[test]
    fn member_ids_must_be_unique() {
        let mut config = valid_config();
        config.members[1].id = 1;
        let message = config_error(config.validate());
        assert!(message.contains("twice"), "{message}");
    }

    #[test]
    fn member_addresses_must_be_distinct() {
        let mut config = valid_config();
        config.members[1].peer_addr = config.members[0].peer_addr.clone();
        let message = config_error(config.validate());
        assert!(message.contains("used twice"), "{message}");
    }

    #[test]
    fn own_address_must_match_the_member_entry() {
        let mut config = valid_config();
        config.peer_addr = "127.0.0.11:9999".into();
        let message = config_error(config.validate());
        assert!(message.contains("peer_addr"), "{message}");
        config.peer_addr = "0.0.0.0:7380".into();
        config.validate().unwrap();
    }

    #[test]
    fn heartbeat_must_be_below_failure_timeout() {
        let mut config = valid_config();
        config.heartbeat_interval_ms = Some(200);
        config.failure_timeout_ms = Some(200);
        let message = config_error(config.validate());
        assert!(message.contains("heartbeat_interval_ms"), "{message}");
    }

    #[test]
    fn failure_timeout_follows_the_heartbeat() {
        let mut config = valid_config();
        config.heartbeat_interval_ms = Some(50);
        let options = config.core_options();
        assert_eq!(options.failure_timeout_ms, 50 * FAILURE_TIMEOUT_HEARTBEATS);
        config.failure_timeout_ms = Some(400);
        assert_eq!(config.core_options().failure_timeout_ms, 400);
    }

    #[test]
    fn append_size_is_bounded_by_the_frame_limit() {
        let mut config = valid_config();
        config.max_append_bytes = Some(MAX_PEER_FRAME_BYTES);
        let message = config_error(config.validate());
        assert!(message.contains("max_append_bytes"), "{message}");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "node.toml", NODE_TOML);
        let overrides = NodeOverrides {
            heartbeat_interval_ms: Some(20),
            log_level: Some("debug".into()),
            ..NodeOverrides::default()
        };
        let config = NodeConfig::resolve(Some(&path), overrides).unwrap();
        assert_eq!(config.heartbeat_interval_ms, Some(20));
        assert_eq!(config.log_level, "debug");
        assert_eq!(
            config.members.len(),
            2,
            "members untouched without --member"
        );
    }

    #[test]
    fn flags_alone_must_be_complete() {
        let overrides = NodeOverrides {
            id: Some(1),
            members: vec![parse_member("1=127.0.0.11:7379,127.0.0.11:7380").unwrap()],
            ..NodeOverrides::default()
        };
        let message = config_error(NodeConfig::resolve(None, overrides));
        assert!(message.contains("--client-addr"), "{message}");
    }

    #[test]
    fn parses_member_flags() {
        let member = parse_member("3=127.0.0.13:7379,127.0.0.13:7380,learner").unwrap();
        assert_eq!(member.id, 3);
        assert!(!member.voter);
        assert!(parse_member("3=127.0.0.13:7379").is_err());
        assert!(parse_member("x=127.0.0.13:7379,127.0.0.13:7380").is_err());
        assert!(parse_member("3=nowhere,127.0.0.13:7380").is_err());
    }

    #[test]
    fn a_joining_node_needs_no_members_and_starts_as_a_lone_learner() {
        let overrides = NodeOverrides {
            id: Some(4),
            client_addr: Some("127.0.0.14:7379".into()),
            peer_addr: Some("127.0.0.14:7380".into()),
            data_dir: Some("data".into()),
            certs_dir: Some("certs".into()),
            join: vec!["127.0.0.11:7379".into()],
            ..NodeOverrides::default()
        };
        let config = NodeConfig::resolve(None, overrides).unwrap();
        assert!(config.members.is_empty());
        let own = Member {
            id: 4,
            client_addr: "127.0.0.14:7379".into(),
            peer_addr: "127.0.0.14:7380".into(),
            voter: false,
        };
        assert_eq!(config.initial_members(), vec![own.clone()]);
        assert_eq!(config.own_member(), Some(own));

        // The same as a file: `members` may be left out, `join` round-trips.
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "joiner.toml", &config.to_toml().unwrap());
        let loaded = NodeConfig::load(&path).unwrap();
        assert_eq!(loaded.join, config.join);
        assert!(loaded.members.is_empty());
    }

    #[test]
    fn join_addresses_are_checked() {
        let mut config = valid_config();
        config.join = vec!["127.0.0.12".into()];
        let message = config_error(config.validate());
        assert!(
            message.contains("join") && message.contains("host:port"),
            "{message}"
        );
    }

    #[test]
    fn only_a_lone_learner_may_have_no_voter() {
        let mut config = valid_config();
        config.members.truncate(1);
        config.members[0].voter = false;
        config.validate().unwrap();
        config.members = valid_config().members;
        for member in &mut config.members {
            member.voter = false;
        }
        let message = config_error(config.validate());
        assert!(message.contains("no voter"), "{message}");
    }

    #[test]
    fn log_retention_defaults_and_overrides() {
        let mut config = valid_config();
        assert_eq!(
            config.core_options().log_retention_bytes,
            DEFAULT_LOG_RETENTION_BYTES
        );
        config = config.apply(NodeOverrides {
            log_retention_bytes: Some(65536),
            ..NodeOverrides::default()
        });
        assert_eq!(config.core_options().log_retention_bytes, 65536);
    }

    #[test]
    fn dev_cluster_round_trips_through_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = DevCluster::plan(&dir.path().join("cluster"), 3, 7379).unwrap();
        assert_eq!(cluster.nodes[1].client_addr, "127.0.0.12:7379");
        assert_eq!(cluster.nodes[1].peer_addr, "127.0.0.12:7380");
        cluster.write_configs().unwrap();
        for node in &cluster.nodes {
            let loaded = NodeConfig::load(&cluster.node_config_path(node.id)).unwrap();
            assert_eq!(&loaded, node);
        }
        let client = ClientConfig::load(&cluster.client_config_path()).unwrap();
        assert_eq!(client, cluster.client);
    }

    #[test]
    fn dev_cluster_rejects_bad_sizes() {
        assert!(DevCluster::plan(Path::new("x"), 0, 7379).is_err());
        assert!(DevCluster::plan(Path::new("x"), 3, 65535).is_err());
    }

    #[test]
    fn client_config_parses_write_concern_as_text_or_number() {
        let dir = tempfile::tempdir().unwrap();
        let base =
            "nodes = [\"127.0.0.11:7379\"]\ncerts_dir = \"certs\"\nclient_name = \"admin\"\n";
        let path = write_file(dir.path(), "a.toml", base);
        let config = ClientConfig::load(&path).unwrap();
        assert_eq!(config.default_write_concern, WriteConcern::Majority);
        assert_eq!(config.timeout_ms, DEFAULT_CLIENT_TIMEOUT_MS);
        assert_eq!(config.certs_dir, dir.path().join("certs"));

        let path = write_file(
            dir.path(),
            "b.toml",
            &format!("{base}default_write_concern = 2\n"),
        );
        assert_eq!(
            ClientConfig::load(&path).unwrap().default_write_concern,
            WriteConcern::Count(2)
        );

        let path = write_file(
            dir.path(),
            "c.toml",
            &format!("{base}default_write_concern = \"most\"\n"),
        );
        let message = config_error(ClientConfig::load(&path));
        assert!(message.contains("most"), "{message}");
    }

    #[test]
    fn client_config_rejects_unknown_fields_and_bad_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let text = "nodes = [\"127.0.0.11\"]\ncerts_dir = \"certs\"\nclient_name = \"admin\"\n";
        let path = write_file(dir.path(), "a.toml", text);
        let message = config_error(ClientConfig::load(&path));
        assert!(message.contains("host:port"), "{message}");

        let text =
            "nodes = [\"127.0.0.11:1\"]\ncerts_dir = \"c\"\nclient_name = \"admin\"\ncolor = 1\n";
        let path = write_file(dir.path(), "b.toml", text);
        let message = config_error(ClientConfig::load(&path));
        assert!(message.contains("color"), "{message}");
    }

    #[test]
    fn discover_prefers_explicit_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let text =
            "nodes = [\"127.0.0.11:7379\"]\ncerts_dir = \"certs\"\nclient_name = \"admin\"\n";
        let explicit = write_file(dir.path(), "explicit.toml", text);
        let from_env = write_file(dir.path(), "env.toml", text);
        let (_, found) =
            ClientConfig::discover_from(Some(&explicit), Some(from_env.clone())).unwrap();
        assert_eq!(found, explicit);
        let (_, found) = ClientConfig::discover_from(None, Some(from_env.clone())).unwrap();
        assert_eq!(found, from_env);
        let missing = dir.path().join("missing.toml");
        let message = config_error(ClientConfig::discover_from(Some(&missing), None));
        assert!(message.contains("missing.toml"), "{message}");
    }
}
