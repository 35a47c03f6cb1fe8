//! # replikv
//!
//! A replicated key-value store. Every node keeps an append-only operation log and the state it
//! produces in sled. One node is the **primary**; it appends each client write to its log and
//! streams it to the **backups** over mutually authenticated QUIC. When the primary falls silent the
//! backups elect a new one with a bully election ranked by log freshness and fenced by epochs.
//!
//! The crate is layered so that the protocol can be tested without any I/O:
//!
//! - [`wire`]: the messages that cross the network, their framing and size limits.
//! - [`storage`]: the [`storage::Storage`] trait with a sled engine and an in-memory engine that
//!   models durability honestly (what was not flushed is lost in a simulated crash).
//! - [`core`]: the replication protocol as a deterministic state machine. It performs no I/O, reads
//!   no clock and draws randomness only from a seeded generator. The simulator in `tests/` drives
//!   thousands of seeded cluster histories through it.
//! - [`net`]: the I/O shell: the TLS handshake, quinn endpoints, peer connections and the event
//!   loop that feeds messages, ticks and flush completions into [`core::Node`].
//! - [`client`]: the async client library used by `kvctl`, the tests and the benchmarks.
//! - [`config`]: node and client settings; every tunable and default declared once, in
//!   [`config::tuning`].
//! - [`certs`]: the cluster's certificates: the names and roles they carry, and their issuance.
//! - [`metrics`]: the node's Prometheus metrics, named after etcd's.
//!
//! See `docs/ARCHITECTURE.md` for the module map and `docs/PROTOCOL.md` for the messages.

pub mod api;
pub mod certs;
pub mod client;
pub mod config;
pub mod core;
pub mod credentials;
pub mod error;
pub mod metrics;
pub mod net;
pub mod storage;
pub mod wire;

pub use error::{Error, ErrorKind, Result};
pub use wire::client::{ReadConsistency, WriteConcern};
pub use wire::message::{Entry, Epoch, LogIndex, NodeId, Operation, RequestId};
