//! The decoders of untrusted bytes, as fuzz entry points. Shared by the cargo-fuzz targets in
//! `fuzz/fuzz_targets/` and by `tests/fuzz_corpus.rs`, which replays the committed corpus in every
//! `cargo test`. Each entry point must return (an error is fine) and never panic.
//!
//! What decodes goes on into the protocol core, as it would in a node: a peer message into
//! `Node::step` of a backup and of a primary, a client request into `Node::request` of a primary
//! (followed by a tick and a flush, so waiting requests are judged too). The message is addressed
//! to the node under test, so its body is examined rather than dropped at the door.

use std::sync::Arc;

use replikv::config::{parse_member, ClientConfig, NodeConfig};
use replikv::core::{Node, Options, Timestamp};
use replikv::storage::{MemoryStorage, Storage};
use replikv::wire::client::{Request, Response, Role};
use replikv::wire::frame::{decode, MAX_CLIENT_FRAME_BYTES, MAX_PEER_FRAME_BYTES};
use replikv::wire::message::{Member, Membership, Message, NodeId};

/// The node under test; the fuzzed input plays any other party.
const NODE_UNDER_TEST: NodeId = 1;

/// A frame as a node reads it from a client: length prefix checked before decoding; a request
/// that decodes is handed to a primary.
pub fn client_frame(data: &[u8]) {
    if let Some(body) = frame_body(data, MAX_CLIENT_FRAME_BYTES) {
        if let Ok(request) = decode::<Request>(body) {
            if let Some((mut node, storage, now)) = primary() {
                let _ = node.request(now, 1, request);
                settle(&mut node, &storage, now);
            }
        }
        let _ = decode::<Response>(body);
    }
}

/// A frame as a node reads it from a peer; a message that decodes is stepped into a backup of a
/// three-node cluster and into a primary.
pub fn peer_frame(data: &[u8]) {
    if let Some(body) = frame_body(data, MAX_PEER_FRAME_BYTES) {
        if let Ok(mut message) = decode::<Message>(body) {
            message.to = NODE_UNDER_TEST;
            if let Some((mut node, storage)) = backup() {
                let _ = node.step(0, message.clone());
                settle(&mut node, &storage, 0);
            }
            if let Some((mut node, storage, now)) = primary() {
                let _ = node.step(now, message);
                settle(&mut node, &storage, now);
            }
        }
    }
}

fn member(id: NodeId) -> Member {
    Member {
        id,
        client_addr: format!("127.0.0.{}:7379", 10 + id),
        peer_addr: format!("127.0.0.{}:7380", 10 + id),
        voter: true,
    }
}

/// A backup of a three-node cluster that has heard from nobody yet.
fn backup() -> Option<(Node, Arc<MemoryStorage>)> {
    let storage = Arc::new(MemoryStorage::new());
    let membership = Membership::new((1..=3).map(member).collect());
    let node = Node::new(
        NODE_UNDER_TEST,
        membership,
        storage.clone(),
        Options::default(),
        0,
        0,
    )
    .ok()?;
    Some((node, storage))
}

/// The primary of a one-node cluster, elected by its own ticks, with its no-op committed.
fn primary() -> Option<(Node, Arc<MemoryStorage>, Timestamp)> {
    let storage = Arc::new(MemoryStorage::new());
    let membership = Membership::new(vec![member(NODE_UNDER_TEST)]);
    let mut node = Node::new(
        NODE_UNDER_TEST,
        membership,
        storage.clone(),
        Options::default(),
        0,
        0,
    )
    .ok()?;
    let mut now = 0;
    while !(node.role() == Role::Primary && node.commit_index() > 0) {
        now += 10;
        if now > 60_000 {
            return None;
        }
        settle(&mut node, &storage, now);
    }
    Some((node, storage, now))
}

/// One tick and, if asked for, one flush; outputs are dropped.
fn settle(node: &mut Node, storage: &MemoryStorage, now: Timestamp) {
    let _ = node.tick(now + 1);
    if let Some(ticket) = node.flush_needed() {
        if storage.flush().is_ok() {
            let _ = node.flushed(now + 1, ticket);
        }
    }
    let _ = node.finish_pass();
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
