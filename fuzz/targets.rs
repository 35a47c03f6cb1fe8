//! The decoders of untrusted bytes, as fuzz entry points. Shared by the cargo-fuzz targets in
//! `fuzz/fuzz_targets/` and by `tests/fuzz_corpus.rs`, which replays the committed corpus in every
//! `cargo test`. Each entry point must return (an error is fine) and never panic.

use replikv::config::{parse_member, ClientConfig, NodeConfig};
use replikv::wire::client::{Request, Response};
use replikv::wire::frame::{decode, MAX_CLIENT_FRAME_BYTES, MAX_PEER_FRAME_BYTES};
use replikv::wire::message::Message;

/// A frame as a node reads it from a client: length prefix checked before decoding.
pub fn client_frame(data: &[u8]) {
    if let Some(body) = frame_body(data, MAX_CLIENT_FRAME_BYTES) {
        let _ = decode::<Request>(body);
        let _ = decode::<Response>(body);
    }
}

/// A frame as a node reads it from a peer.
pub fn peer_frame(data: &[u8]) {
    if let Some(body) = frame_body(data, MAX_PEER_FRAME_BYTES) {
        let _ = decode::<Message>(body);
    }
}

/// A node or client configuration file, and a `--member` flag value.
pub fn config_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = toml::from_str::<NodeConfig>(text) {
        let _ = config.validate();
    }
    if let Ok(config) = toml::from_str::<ClientConfig>(text) {
        let _ = config.validate();
    }
    let _ = parse_member(text);
}

/// The body of a length-prefixed frame, if the prefix is complete, within `max` and no longer
/// than the data (as `read_frame` would find it).
fn frame_body(data: &[u8], max: usize) -> Option<&[u8]> {
    let prefix: [u8; 4] = data.get(..4)?.try_into().ok()?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return None;
    }
    data.get(4..4 + len)
}
