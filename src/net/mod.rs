//! The I/O shell around [`crate::core::Node`]: TLS, QUIC endpoints, peer connections and the event
//! loop. Everything here is thin; the protocol's decisions live in `core`.

pub mod tls;
