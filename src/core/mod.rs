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

pub use node::{Node, MAX_REQUEST_TIMEOUT_MS};

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
