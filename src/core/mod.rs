//! The replication protocol as a deterministic state machine (see `docs/ARCHITECTURE.md`).
//!
//! [`Node`] performs no network I/O, reads no clock and draws randomness only from the seeded
//! generator it was built with. The I/O shell (`net`) and the simulator (`tests/simulation.rs`)
//! drive it through four entry points and collect what it wants done as [`Output`]s:
//!
//! - [`Node::step`]: a message from a peer;
//! - [`Node::tick`]: time has passed (`now` is milliseconds on the driver's monotonic clock);
//! - [`Node::request`]: a client request, answered later by an [`Output::Reply`];
//! - [`Node::flushed`]: the driver finished a flush that [`Node::flush_needed`] asked for.
//!
//! Writes go to [`crate::storage::Storage`] buffered; the driver performs the flushes (one per
//! batch, which is group commit) and reports them back, and only then does the node acknowledge
//! anything that promised durability.
//!
//! This file holds the small types that the node, the per-member progress (`progress`) and the
//! drivers share, so that `node` and `progress` depend on it and not on each other.

mod node;
mod progress;

pub use node::{
    parse_integer, Node, SnapshotCounters, CUT_OFF_AFTER_FAILURE_TIMEOUTS, MAX_REQUEST_TIMEOUT_MS,
    MAX_UNAPPLIED_ON_BACKUP, NOT_AN_INTEGER, OVERFLOW,
};

use crate::wire::client::Response;
use crate::wire::message::{Epoch, LogIndex, Membership, Message, NodeId};

/// Milliseconds on the driver's monotonic clock.
pub type Timestamp = u64;

/// Identifies a pending client request in the driver; echoed back in [`Output::Reply`].
pub type ClientToken = u64;

/// Timing and size settings of the protocol. Defaults live in [`crate::config`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// How often the primary sends heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Silence after which a backup elects, and a primary without a majority steps down.
    pub failure_timeout_ms: u64,
    /// Up to this much random extra per election timer, so that nodes rarely start together.
    pub failure_jitter_ms: u64,
    /// A voter that has not caught up within this long leaves the in-sync set (`w=all`).
    pub replica_lag_timeout_ms: u64,
    /// Largest encoded size of one append message's entries.
    pub max_append_bytes: usize,
    /// Most entries in flight to one member before the primary waits for acks (flow control).
    pub max_inflight_entries: u64,
    /// Log bytes kept before the applied prefix is compacted into the state.
    pub log_retention_bytes: u64,
    /// The most any node's clock may run fast or slow against true time, in parts per million.
    /// The read lease is shortened by it: see [`Options::lease_ms`].
    pub max_clock_drift_ppm: u64,
    /// Most pairs in one page of a scan, whatever limit the client asks for.
    pub max_scan_page_pairs: u32,
    /// Most encoded bytes of pairs in one page of a scan (at least one pair is always served), so
    /// a page fits one client frame and bounds the pause it costs the event loop.
    pub max_scan_page_bytes: usize,
    /// A client session that the primary has not seen a write from for this long is expired
    /// (replicated as a log entry); a retry after that is taken for a new request. The window
    /// within which retries are de-duplicated.
    pub session_ttl_ms: u64,
}

/// Parts per million in one.
const PPM: u128 = 1_000_000;

impl Options {
    /// How long, on the primary's clock, after sending a heartbeat round that a majority of
    /// voters acknowledged, the primary may serve linearizable reads.
    ///
    /// A voter that acknowledged the round received it after it was sent, and votes for no one
    /// else for `failure_timeout` on its own clock. With every clock's rate within `1 ± ρ` of true
    /// time (ρ = `max_clock_drift_ppm`), that promise lasts at least `failure_timeout / (1 + ρ)`
    /// of true time, and a lease of `L` on the primary's clock at most `L / (1 − ρ)`. So the lease
    /// is `failure_timeout × (1 − ρ) / (1 + ρ)`, rounded down.
    pub fn lease_ms(&self) -> u64 {
        let drift = u128::from(self.max_clock_drift_ppm).min(PPM);
        let lease = u128::from(self.failure_timeout_ms) * (PPM - drift) / (PPM + drift);
        // Never more than the timeout, so the conversion back cannot fail.
        u64::try_from(lease).unwrap_or(0)
    }

    /// How long before its deadline a key counts as expired: the drift bound applied to the
    /// failure timeout (30 ms of the defaults), so a node whose wall clock runs a little behind
    /// another's still hides a key no later than the primary deletes it.
    pub fn expiry_margin_ms(&self) -> u64 {
        let drift = u128::from(self.max_clock_drift_ppm).min(PPM);
        let margin = u128::from(self.failure_timeout_ms) * drift / PPM;
        u64::try_from(margin).unwrap_or(0)
    }
}

/// Something the node wants its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send a message to a peer.
    Send(Message),
    /// Answer the client request identified by `token`.
    Reply {
        token: ClientToken,
        response: Response,
    },
    /// The node's view of who leads changed; the driver tells connected clients.
    Topology {
        epoch: Epoch,
        primary: Option<NodeId>,
        membership: Membership,
    },
}

/// A flush the node asks for: once the driver has flushed storage, it passes the ticket back to
/// [`Node::flushed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushTicket {
    /// The last log index written before the flush started.
    pub index: LogIndex,
    /// Changes whenever the log is truncated, so a flush that raced a truncation is ignored.
    pub generation: u64,
}
