//! The one error type of the crate, and the one place that decides what kind each error is.
//!
//! `Error` is serializable because it crosses the wire: a node answers a client request with an
//! `Error` and the client library hands the same value to its caller. Each variant's message says
//! what happened and, where there is one, what to do about it.
//!
//! [`Error::kind`] sorts the variants into a few [`ErrorKind`]s, and every decision that depends
//! on what went wrong derives from it: whether the client retries ([`Error::is_transient`]),
//! `kvctl`'s exit code, how `kvctl bench` groups failures and whether it stops, and whether the
//! event loop stops the node ([`ErrorKind::stops_the_node`]: a storage failure or a broken
//! invariant). A new variant therefore needs one new line here, not one in each of those places.

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

    /// A request with this client id and a newer sequence number was already applied, or is
    /// already in the primary's log, so this older one is not appended (a client's writes enter
    /// the log in sequence order).
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

    /// The caller presented no credentials, and the door may not serve callers without them (a
    /// node serves them only with the role its `anonymous_role` setting names). Last among the
    /// variants so that older peers still decode the others.
    #[error("authentication required: {0}")]
    Unauthenticated(String),

    /// A watch asked for changes from an index the node's log no longer holds (compacted into the
    /// state, as etcd answers `ErrCompacted`). `oldest` is the first index still available there.
    #[error("compacted: the log starts at index {oldest}, after the requested index {requested}: watch from {oldest} or later (with --initial to start from the current values)")]
    Compacted { requested: u64, oldest: u64 },

    /// A watcher fell too far behind the changes it was sent (its client did not read them), and
    /// the node cut it off rather than buffer more. Resume after the last index delivered.
    #[error("the watcher lagged too far behind and was cut off: resume from index {next}")]
    WatchLagging { next: u64 },
}

/// What kind of failure an [`Error`] is: what its callers decide from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// No node could serve the request now: not the primary, no primary yet, unreachable,
    /// shutting down. Another node, or the same one later, may succeed.
    Unavailable,
    /// The write reached the log but not its write concern in time; it may still apply.
    WriteConcernNotMet,
    /// The caller's role does not allow the request, it gave no credentials, or TLS failed.
    Refused,
    /// The request can never be served as given (malformed, out of range, a write concern larger
    /// than the cluster).
    InvalidRequest,
    /// The local configuration is missing or wrong.
    Config,
    /// Storage failed; a node that sees this stops (fail-stop).
    Storage,
    /// A frame broke the protocol: undecodable, too large, or a request older than one already
    /// answered.
    Protocol,
    /// A bug or an unexpected state. Inside the node this is a protocol invariant found broken
    /// (two primaries in one epoch, an order to truncate a committed entry, a gap in an append):
    /// a node that sees it stops (fail-stop).
    Internal,
}

impl ErrorKind {
    /// Whether trying again, on another node or after a pause, may succeed. Only these failures
    /// are retried by the client: every other kind is an answer that settles the request.
    pub fn is_transient(self) -> bool {
        self == ErrorKind::Unavailable
    }

    /// Whether the same request can never succeed however often it is sent: the request, the
    /// certificate or the configuration has to change. Such a request was refused before it
    /// reached any log, so it certainly had no effect.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            ErrorKind::Refused | ErrorKind::InvalidRequest | ErrorKind::Config
        )
    }

    /// Whether a node that meets this failure can no longer trust its own state and must stop
    /// (fail-stop) rather than keep serving: its storage failed, or a protocol invariant was found
    /// broken. Every other kind is the fault of one input, answered or logged, and the node goes on.
    pub fn stops_the_node(self) -> bool {
        matches!(self, ErrorKind::Storage | ErrorKind::Internal)
    }

    /// A stable snake_case name, used to group failures in reports.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::WriteConcernNotMet => "write_concern_not_met",
            ErrorKind::Refused => "refused",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Config => "config",
            ErrorKind::Storage => "storage",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Error {
    /// The kind of this failure: the one classification every caller decides from.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotPrimary { .. }
            | Error::Unavailable(_)
            | Error::Network(_)
            | Error::ShuttingDown
            | Error::WatchLagging { .. } => ErrorKind::Unavailable,
            Error::WriteConcernNotMet { .. } => ErrorKind::WriteConcernNotMet,
            Error::Refused(_) | Error::Unauthenticated(_) => ErrorKind::Refused,
            Error::InvalidRequest(_)
            | Error::WriteConcernImpossible { .. }
            | Error::Compacted { .. } => ErrorKind::InvalidRequest,
            Error::Config(_) => ErrorKind::Config,
            Error::Storage(_) => ErrorKind::Storage,
            Error::Protocol(_) | Error::StaleRequest { .. } => ErrorKind::Protocol,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Whether another attempt, elsewhere or later, may succeed (see [`ErrorKind::is_transient`]).
    pub fn is_transient(&self) -> bool {
        self.kind().is_transient()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn one_of_each() -> Vec<Error> {
        vec![
            Error::NotPrimary {
                node: 1,
                epoch: 2,
                hint: Some((3, "127.0.0.13:7379".into())),
            },
            Error::NotPrimary {
                node: 1,
                epoch: 2,
                hint: None,
            },
            Error::WriteConcernNotMet {
                acknowledged: 1,
                required: 2,
            },
            Error::WriteConcernImpossible {
                required: 5,
                voters: 3,
            },
            Error::Unavailable("no majority".into()),
            Error::Refused("readonly".into()),
            Error::InvalidRequest("empty key".into()),
            Error::Protocol("bad frame".into()),
            Error::Config("no nodes".into()),
            Error::Storage("disk full".into()),
            Error::Network("connection lost".into()),
            Error::ShuttingDown,
            Error::StaleRequest {
                client_id: 1,
                sequence: 1,
                latest: 2,
            },
            Error::Internal("?".into()),
            Error::Unauthenticated("no credentials".into()),
            Error::Compacted {
                requested: 1,
                oldest: 5,
            },
            Error::WatchLagging { next: 7 },
        ]
    }

    #[test]
    fn only_unavailability_is_transient() {
        for error in one_of_each() {
            let transient = matches!(
                error,
                Error::NotPrimary { .. }
                    | Error::Unavailable(_)
                    | Error::Network(_)
                    | Error::ShuttingDown
                    | Error::WatchLagging { .. }
            );
            assert_eq!(error.is_transient(), transient, "{error:?}");
        }
    }

    #[test]
    fn only_storage_failures_and_broken_invariants_stop_the_node() {
        for error in one_of_each() {
            let fatal = matches!(error, Error::Storage(_) | Error::Internal(_));
            assert_eq!(error.kind().stops_the_node(), fatal, "{error:?}");
        }
    }

    #[test]
    fn a_failure_is_never_both_transient_and_permanent() {
        for error in one_of_each() {
            let kind = error.kind();
            assert!(!(kind.is_transient() && kind.is_permanent()), "{error:?}");
        }
        let permanent: Vec<ErrorKind> = one_of_each()
            .iter()
            .map(Error::kind)
            .filter(|kind| kind.is_permanent())
            .collect();
        assert_eq!(
            permanent,
            [
                ErrorKind::InvalidRequest,
                ErrorKind::Refused,
                ErrorKind::InvalidRequest,
                ErrorKind::Config,
                ErrorKind::Refused,
                ErrorKind::InvalidRequest
            ]
        );
    }
}
