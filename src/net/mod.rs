//! The I/O shell around [`crate::core::Node`]: TLS, QUIC endpoints, peer connections and the event
//! loop. Everything here is thin; the protocol's decisions live in `core`.
//!
//! Shape of a running node ([`server::run_node`]):
//!
//! ```text
//!  client port (CLIENT_ALPN) ─ session per bi stream ─► client inbox (request + oneshot) ─┐
//!  peer port   (PEER_ALPN)   ─ reader per uni stream ─► peer inbox (Message) ────────────┤
//!                                                                                        ▼
//!      event loop: owns core::Node; ticks every 10 ms; batches whatever is queued, then:
//!        Send(msg)         ─► that peer's queue for msg's stream (heartbeat | replication) ─► link
//!        Reply             ─► the session's oneshot
//!        Topology          ─► watch ─► one pusher per client connection (server-opened uni stream)
//!        flush_needed()    ─► spawn_blocking(storage.flush()) ─► node.flushed(ticket)
//! ```
//!
//! Only the event loop touches the `Node`, so the protocol needs no locks. Nothing the event loop
//! does waits on the network: peer queues are `try_send` (a full queue drops, which the protocol
//! tolerates), replies are oneshots, and flushes run on the blocking pool.

mod client_port;
mod endpoint;
pub(crate) mod event_loop;
mod peer;
pub mod server;
pub(crate) mod shutdown;
pub mod tls;

/// The client port's bounds on what clients can make a node hold (tests and docs refer to them).
pub use client_port::{
    CONNECTION_RECEIVE_WINDOW, CONNECTION_REQUEST_SHARE, CONNECTION_RESERVED_REQUEST_BYTES,
    FRAME_BODY_DEADLINE, MAX_BUFFERED_REQUEST_BYTES, MAX_CLIENT_CONNECTIONS,
};

use quinn::VarInt;

/// QUIC close code: the node is shutting down (or a link was stopped on purpose).
pub const CLOSE_SHUTTING_DOWN: VarInt = VarInt::from_u32(0);

/// QUIC close code: the certificate's role may not use this port; the reason says why.
pub const CLOSE_REFUSED: VarInt = VarInt::from_u32(1);

/// QUIC close (or stream stop) code: the peer sent bytes that are not a valid frame.
pub const CLOSE_PROTOCOL_ERROR: VarInt = VarInt::from_u32(2);

/// QUIC stream reset code: a watcher whose client stopped reading fell behind the node's watch
/// ring and was cut off; the client resumes from its last index, as after
/// [`crate::error::Error::WatchLagging`].
pub const WATCH_LAGGING_CODE: VarInt = VarInt::from_u32(0x5741);
