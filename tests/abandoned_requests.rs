//! A request whose client went away, end to end against real `kvnode` processes: the client port
//! notices the stopped stream, the event loop drops the pending reply and has the node forget the
//! request, instead of holding it until its deadline (up to a minute) for nobody.
//!
//! Address block 127.0.0.171-173, ports 25240-25241 (see tests/process.rs for the others).

mod common;

use common::{eventually, Cluster, ClusterSpec, READWRITE_CLIENT};
use replikv::wire::client::{Request, Write};
use replikv::wire::frame::{write_frame, MAX_CLIENT_FRAME_BYTES};
use replikv::wire::message::RequestId;
use replikv::WriteConcern;

/// The node's log line when it forgets requests whose clients went away (`net/event_loop.rs`).
const FORGOT: &str = "forgot requests whose clients went away";

/// Lines of `text` that say requests were forgotten, without ANSI colours.
fn forgotten_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(without_colours)
        .filter(|line| line.contains(FORGOT))
        .collect()
}

/// `line` without ANSI escape sequences (`ESC [ ... letter`), which colour the log's fields.
fn without_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for code in chars.by_ref() {
                if code.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_client_stops_its_stream_is_forgotten_by_the_node() {
    let mut cluster = Cluster::start(ClusterSpec::new(3, 171, 25240));
    let (primary, _) = cluster.wait_for_primary().await;
    let backup = (1..=3).find(|id| *id != primary).expect("a backup");
    cluster.kill(backup);
    let client = cluster.client(READWRITE_CLIENT);
    let before = client
        .status_of(&cluster.node(primary).client_addr)
        .await
        .expect("the primary's status")
        .last_index;

    // A write that waits on all three voters, one of which is down: it can only wait, for as long
    // as the node allows (its timeout is capped at a minute, past the test's patience).
    let addr = cluster.node(primary).client_addr.clone();
    let (_endpoint, connection) = cluster.raw_connection(primary, READWRITE_CLIENT).await;
    let (mut send, mut recv) = connection.open_bi().await.expect("open a stream");
    let write = Request::Write {
        request_id: RequestId {
            client_id: 0x5eed_ab0d,
            sequence: 1,
        },
        write: Write::Put {
            key: b"abandoned".to_vec(),
            value: b"nobody waits".to_vec(),
        },
        write_concern: WriteConcern::Count(3),
        timeout_ms: 600_000,
    };
    write_frame(&mut send, &write, MAX_CLIENT_FRAME_BYTES)
        .await
        .expect("send the write");

    // The write is in the primary's log, so the node holds a waiter for it.
    eventually("the write reaches the primary's log", || {
        let (client, addr) = (&client, &addr);
        async move {
            let status = client.status_of(addr).await.ok()?;
            (status.last_index > before).then_some(())
        }
    })
    .await;
    let log_path = cluster.node(primary).log_path.clone();
    let log = std::fs::read_to_string(&log_path).expect("read the primary's log");
    assert!(
        forgotten_lines(&log).is_empty(),
        "the node forgot a request before any client went away: {:?}",
        forgotten_lines(&log)
    );

    // The client gives up: it resets its half and stops the node's.
    send.reset(0u32.into()).expect("reset the stream");
    recv.stop(0u32.into()).expect("stop the stream");

    let forgotten = eventually("the primary forgets the abandoned write", || {
        let log_path = log_path.clone();
        async move {
            let log = std::fs::read_to_string(&log_path).ok()?;
            let lines = forgotten_lines(&log);
            (!lines.is_empty()).then_some(lines)
        }
    })
    .await;
    assert_eq!(forgotten.len(), 1, "{forgotten:?}");
    assert!(
        forgotten[0].contains("forgotten=1") && forgotten[0].contains("pending=0"),
        "the node still holds requests after forgetting the abandoned one: {}",
        forgotten[0]
    );

    // The node goes on serving: with the backup back, a write at w=all is acknowledged.
    cluster.restart(backup);
    client
        .put("after", "ok", WriteConcern::All, common::CLIENT_TIMEOUT)
        .await
        .expect("a write once the backup is back");
    connection.close(0u32.into(), b"done");
}
