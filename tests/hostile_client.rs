//! Hostile clients against a real node: a client holding a valid certificate must not be able to
//! exhaust the node's memory, and the node keeps serving everyone else while it tries: a client
//! that may write holds at most its connections' shares of the request budget, and the others'
//! requests are answered while it holds them, not once its stalled frames time out.
//!
//! Address blocks 127.0.0.121 and 127.0.0.123, ports 25200-25201 and 25210-25211 (see tests/process.rs for the others).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, Cluster, ClusterSpec, CLIENT_TIMEOUT, READONLY_CLIENT, READWRITE_CLIENT};
use replikv::net::{tls, CONNECTION_REQUEST_SHARE, MAX_BUFFERED_REQUEST_BYTES};
use replikv::wire::frame::MAX_CLIENT_FRAME_BYTES;
use replikv::wire::CLIENT_ALPN;
use replikv::{ReadConsistency, WriteConcern};

/// Connections the hostile client opens, and streams on each: every stream announces a frame of
/// the largest size and sends all of it but the last byte. Unbounded, the node would buffer
/// about 3 GiB; the connections' shares together ask for more than the node-wide budget, so frames
/// also queue for it.
const HOSTILE_CONNECTIONS: usize = 12;
const STREAMS_PER_CONNECTION: usize = 64;

/// Put-and-read rounds of the legitimate clients while the attack holds the budget.
const LEGITIMATE_ROUNDS: usize = 20;

// The attack asks for more than the budget: its connections' shares together exceed it.
const _: () = assert!(HOSTILE_CONNECTIONS * CONNECTION_REQUEST_SHARE > MAX_BUFFERED_REQUEST_BYTES);

/// How long the attack may run before the node's memory is judged.
const ATTACK_TIME: Duration = Duration::from_secs(20);

/// The bound docs/PROTOCOL.md states for a node's resident memory under hostile clients.
const RESIDENT_MEMORY_BOUND_BYTES: u64 = 256 * 1024 * 1024;

/// A node's resident set size, from /proc.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status");
    kib * 1024
}

async fn connect(cluster: &Cluster, client: &str) -> quinn::Connection {
    let addr = cluster.node(1).client_addr.clone();
    let config =
        tls::client_config(&cluster.client_files(client), CLIENT_ALPN).expect("client TLS config");
    let mut endpoint =
        quinn::Endpoint::client("0.0.0.0:0".parse().expect("address")).expect("endpoint");
    endpoint.set_default_client_config(config);
    endpoint
        .connect(
            addr.parse().expect("address"),
            &tls::server_name(&addr).expect("name"),
        )
        .expect("connect")
        .await
        .expect("handshake with a valid certificate")
}

/// What the attack's streams have done so far.
#[derive(Default)]
struct AttackProgress {
    /// Streams that sent the length of their frame: the node reserves budget for it, or waits to.
    announced: AtomicUsize,
    /// Streams that sent all of their frame but the last byte: the node read it, or holds it.
    delivered: AtomicUsize,
    /// Streams that ended: the node stopped them (a refused frame, or one whose deadline passed).
    stopped: AtomicUsize,
}

impl AttackProgress {
    fn describe(&self) -> String {
        format!(
            "{} streams announced a frame, {} delivered it, {} were stopped",
            self.announced.load(Ordering::SeqCst),
            self.delivered.load(Ordering::SeqCst),
            self.stopped.load(Ordering::SeqCst)
        )
    }
}

/// Announces a frame of the largest size on a new stream and sends all of it but the last byte,
/// then holds the stream open. Errors (the node refusing the stream) end it early; that is the
/// point.
async fn stalled_frame(connection: quinn::Connection, progress: Arc<AttackProgress>) {
    stall_frame(connection, &progress).await;
    progress.stopped.fetch_add(1, Ordering::SeqCst);
}

async fn stall_frame(connection: quinn::Connection, progress: &AttackProgress) {
    let Ok((mut send, _recv)) = connection.open_bi().await else {
        return;
    };
    let len = MAX_CLIENT_FRAME_BYTES as u32;
    if send.write_all(&len.to_be_bytes()).await.is_err() {
        return;
    }
    progress.announced.fetch_add(1, Ordering::SeqCst);
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut left = MAX_CLIENT_FRAME_BYTES - 1;
    while left > 0 {
        let part = left.min(chunk.len());
        if send.write_all(&chunk[..part]).await.is_err() {
            return;
        }
        left -= part;
    }
    progress.delivered.fetch_add(1, Ordering::SeqCst);
    // Never finish: hold the stream until the node stops it (or the test ends).
    let _ = tokio::time::timeout(Duration::from_secs(120), send.stopped()).await;
}

/// Runs the attack with certificate `attacker` against a fresh one-node cluster at `first_ip` and
/// `client_port`, and checks the node's memory and that it serves everyone else meanwhile. With
/// `holds_budget`, the attacker may send frames of the largest size, asking for far more than the
/// node-wide budget: the test waits until the attack has announced twice the budget's worth of
/// frames (the node reserves a frame's bytes when its length arrives), and then requires that the node stops none of the attack's streams while the
/// other clients are served. It stops one only once a frame's deadline passes, and only that gives
/// budget back: so the others did not wait for the attack's frames to time out.
async fn stalled_frames_are_bounded(
    attacker: &str,
    first_ip: u8,
    client_port: u16,
    holds_budget: bool,
) {
    let cluster = Cluster::start(ClusterSpec::new(1, first_ip, client_port));
    cluster.wait_for_primary().await;
    let pid = cluster.node(1).pid().expect("node 1 runs");

    let peak = Arc::new(AtomicU64::new(resident_bytes(pid)));
    let attacking = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, attacking) = (peak.clone(), attacking.clone());
        tokio::spawn(async move {
            while attacking.load(Ordering::Relaxed) {
                peak.fetch_max(resident_bytes(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // The other clients connect before the attack, so what they do during it is only requests.
    let writer = cluster.client(READWRITE_CLIENT);
    let reader = cluster.client(READONLY_CLIENT);
    writer.status().await.expect("the writer connects");
    reader.status().await.expect("the reader connects");

    let progress = Arc::new(AttackProgress::default());
    let mut attack = Vec::new();
    for _ in 0..HOSTILE_CONNECTIONS {
        let connection = connect(&cluster, attacker).await;
        for _ in 0..STREAMS_PER_CONNECTION {
            attack.push(tokio::spawn(stalled_frame(
                connection.clone(),
                progress.clone(),
            )));
        }
    }
    let mut stopped_before = 0;
    if holds_budget {
        // Twice the budget's worth of frames announced: the node holds the whole budget, or all
        // the shares it lets the attack hold, and more frames wait for it.
        let asking = 2 * MAX_BUFFERED_REQUEST_BYTES / MAX_CLIENT_FRAME_BYTES;
        eventually(
            "the attack announces twice the budget's worth of frames",
            || {
                let ready = progress.announced.load(Ordering::SeqCst) >= asking;
                async move { ready.then_some(()) }
            },
        )
        .await;
        stopped_before = progress.stopped.load(Ordering::SeqCst);
    }

    // Meanwhile everyone else is served.
    for i in 0..LEGITIMATE_ROUNDS {
        let key = format!("during-attack-{i}");
        writer
            .put(&key, "ok", WriteConcern::Majority, CLIENT_TIMEOUT)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "a put while a hostile client stalls frames failed: {error} ({})",
                    progress.describe()
                )
            });
        let (value, _) = reader
            .get(&key, ReadConsistency::Linearizable)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "a read while a hostile client stalls frames failed: {error} ({})",
                    progress.describe()
                )
            });
        assert_eq!(value.as_deref(), Some(&b"ok"[..]));
    }
    if holds_budget {
        // Every answer came while the attack held what it had: the node stopped none of its
        // streams meanwhile, so no stalled frame gave back its bytes.
        assert_eq!(
            progress.stopped.load(Ordering::SeqCst),
            stopped_before,
            "the other clients were answered only as the attack's stalled frames timed out: they \
             waited for the attack to give back the request budget ({})",
            progress.describe()
        );
    }

    // Give the attack time to deliver what it can (unbounded, the node buffered 1 GiB in about
    // ten seconds here): streams the node stops end, the others are cut off by the timeout.
    let _ = tokio::time::timeout(ATTACK_TIME, async {
        for stream in attack.iter_mut() {
            let _ = stream.await;
        }
    })
    .await;
    peak.fetch_max(resident_bytes(pid), Ordering::Relaxed);
    attacking.store(false, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak <= RESIDENT_MEMORY_BOUND_BYTES,
        "the node's resident memory reached {} MiB under {attacker}'s stalled frames (bound {} MiB)",
        peak >> 20,
        RESIDENT_MEMORY_BOUND_BYTES >> 20
    );
    // And the node still serves.
    writer
        .put("after-attack", "ok", WriteConcern::Majority, CLIENT_TIMEOUT)
        .await
        .expect("a put after the attack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_client_cannot_exhaust_a_nodes_memory() {
    stalled_frames_are_bounded(READONLY_CLIENT, 121, 25200, false).await;
}

/// A client that may write sends frames of the full size, so what bounds it is the node-wide
/// budget of request bytes, each connection's share of it, and the per-connection flow-control
/// window; the other clients' requests are answered while it holds all it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_write_client_cannot_exhaust_a_nodes_memory_nor_delay_other_clients() {
    stalled_frames_are_bounded(READWRITE_CLIENT, 123, 25210, true).await;
}
