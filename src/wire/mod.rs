//! What crosses the network: the peer protocol ([`message`]), the client protocol ([`client`]) and
//! the framing both share ([`frame`]).
//!
//! Every frame is a 4-byte big-endian length followed by a postcard-encoded message. The length is
//! checked against a hard limit *before* anything is allocated, so a hostile peer cannot make a node
//! allocate from an unchecked length. Decoding errors are values, never panics.
//!
//! The ALPN ids carry the protocol version; a client speaking to the peer port (or an old version)
//! fails the TLS handshake instead of misreading frames.

pub mod client;
pub mod frame;
pub mod message;

/// ALPN id of the client protocol (the port an operator exposes).
pub const CLIENT_ALPN: &[u8] = b"replikv-client/1";

/// ALPN id of the peer protocol (internal port, `node` certificates only).
pub const PEER_ALPN: &[u8] = b"replikv-peer/2";
