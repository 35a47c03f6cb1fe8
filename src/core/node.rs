//! Placeholder: the Node state machine is being written.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::wire::client::{ClusterStatus, Request, Response};
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

/// A replikv node's protocol state.
pub struct Node {
    #[allow(dead_code)]
    storage: Arc<dyn Storage>,
}

impl Node {
    /// Opens the node on `storage`, recovering its epoch, vote, log and applied state.
    pub fn new(
        _id: NodeId,
        _membership: Membership,
        storage: Arc<dyn Storage>,
        _options: Options,
        _seed: u64,
        _now: Timestamp,
    ) -> Result<Node> {
        Ok(Node { storage })
    }

    /// Handles a message from a peer.
    pub fn step(&mut self, _now: Timestamp, _message: Message) -> Result<()> {
        Err(Error::Internal("core::Node is being written".into()))
    }

    /// Advances timers.
    pub fn tick(&mut self, _now: Timestamp) -> Result<()> {
        Ok(())
    }

    /// Handles a client request; the answer comes later as an [`Output::Reply`].
    pub fn request(
        &mut self,
        _now: Timestamp,
        _token: ClientToken,
        _request: Request,
    ) -> Result<()> {
        Err(Error::Internal("core::Node is being written".into()))
    }

    /// A flush the node needs, if its storage has writes that are not yet durable.
    pub fn flush_needed(&self) -> Option<FlushTicket> {
        None
    }

    /// The driver finished the flush for `ticket`.
    pub fn flushed(&mut self, _now: Timestamp, _ticket: FlushTicket) -> Result<()> {
        Ok(())
    }

    /// Takes the outputs produced so far.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        Vec::new()
    }

    /// This node's view of the cluster.
    pub fn status(&self, _now: Timestamp) -> ClusterStatus {
        unimplemented!("being written")
    }

    /// The storage the node runs on (the driver flushes it).
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }
}

#[allow(dead_code)]
fn _unused(_: Response) {}
