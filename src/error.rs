//! The one error type of the crate.
//!
//! `Error` is serializable because it crosses the wire: a node answers a client request with an
//! `Error` and the client library hands the same value to its caller. Each variant's message says
//! what happened and, where there is one, what to do about it.

use serde::{Deserialize, Serialize};

use crate::wire::message::{Epoch, NodeId};

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Every failure replikv reports, locally or across the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Error {
    /// This node is not the primary. `hint` names the primary it knows of, if any, with its client
    /// address, so the client can redirect.
    #[error("node {node} is not the primary (epoch {epoch}); {}", match .hint {
        Some((id, addr)) => format!("the primary is node {id} at {addr}"),
        None => "no primary is known yet: retry shortly".to_string(),
    })]
    NotPrimary {
        node: NodeId,
        epoch: Epoch,
        hint: Option<(NodeId, String)>,
    },

    /// The write was appended but did not reach the requested write concern before its timeout.
    /// It may still be applied later, as with MongoDB's `wtimeout`.
    #[error("write concern not met ({acknowledged} of {required} acknowledged) before the timeout: the write may still apply; check the cluster with `kvctl status`")]
    WriteConcernNotMet {
        acknowledged: usize,
        required: usize,
    },

    /// The request asked for more replicas than the cluster has voters.
    #[error("write concern asks for {required} replicas but the cluster has {voters} voters: use a smaller --w")]
    WriteConcernImpossible { required: usize, voters: usize },

    /// No node could be reached or none could serve the request in time.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),

    /// The peer or client is not allowed to do this (certificate role, wrong CA, ...).
    #[error("refused: {0}")]
    Refused(String),

    /// The request was malformed or out of range.
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// A frame could not be decoded or broke a size limit.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// Configuration is missing or wrong.
    #[error("configuration error: {0}")]
    Config(String),

    /// Storage failed (I/O error, corruption).
    #[error("storage error: {0}")]
    Storage(String),

    /// A network or TLS failure.
    #[error("network error: {0}")]
    Network(String),

    /// The node is shutting down.
    #[error("node is shutting down: retry against another node")]
    ShuttingDown,

    /// A request with this client id and a newer sequence number was already applied, so this
    /// older retry cannot be answered.
    #[error(
        "stale request: client {client_id} already issued sequence {latest}, newer than {sequence}"
    )]
    StaleRequest {
        client_id: u64,
        sequence: u64,
        latest: u64,
    },

    /// Anything else; the string says what.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<sled::Error> for Error {
    fn from(err: sled::Error) -> Self {
        Error::Storage(err.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::Storage(err.to_string())
    }
}

impl From<postcard::Error> for Error {
    fn from(err: postcard::Error) -> Self {
        Error::Protocol(err.to_string())
    }
}
