//! Watches against real `kvnode` processes: a watch resumed after `kill -9` of the node serving
//! it delivers exactly the acknowledged writes (no gap, no duplicate, in index order); a watch from
//! a compacted index gets the `Compacted` error with the oldest index available; a watcher that
//! stops reading is cut off while another on the same node keeps pace; a watch on a node removed
//! from the cluster ends instead of stalling; keyspace notifications on the RESP door, in RESP2's
//! subscribed mode and as RESP3 pushes.
//!
//! Address block 127.0.0.191-199, ports 25300-25349 (see tests/process.rs for the others).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{eventually, Cluster, ClusterSpec, ADMIN_CLIENT, READONLY_CLIENT, READWRITE_CLIENT};
use replikv::client::Client;
use replikv::net::WATCH_LAGGING_CODE;
use replikv::wire::client::{Change, Request, WatchEvent};
use replikv::wire::frame::{read_frame, write_frame, MAX_CLIENT_FRAME_BYTES};
use replikv::{Error, WriteConcern};

/// The next change of `stream`, skipping progress notifications, within `limit`.
async fn next_change(stream: &mut replikv::client::WatchStream, limit: Duration) -> Change {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Ok(WatchEvent::Change(change))) => return change,
            Ok(Ok(_)) => continue,
            Ok(Err(err)) => panic!("the watch failed: {err}"),
            Err(_) => panic!("no change within {} s", limit.as_secs()),
        }
    }
}

/// A watch of `prefix` from now on a stream of its own over `connection`, with no client library
/// in between to resume it: what the node does is what is seen. The send side must be kept open.
async fn open_raw_watch(
    connection: &quinn::Connection,
    prefix: &[u8],
) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = connection.open_bi().await.expect("open a stream");
    let watch = Request::Watch {
        prefix: prefix.to_vec(),
        from: None,
        initial: false,
    };
    write_frame(&mut send, &watch, MAX_CLIENT_FRAME_BYTES)
        .await
        .expect("ask for the watch");
    (send, recv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_its_node_is_killed_with_no_gap_and_no_duplicate() {
    let mut cluster = Cluster::start(ClusterSpec::new(3, 191, 25300));
    cluster.wait_for_primary().await;
    let writer = cluster.client(READWRITE_CLIENT);
    writer
        .put(
            "other/before",
            "x",
            WriteConcern::Majority,
            common::CLIENT_TIMEOUT,
        )
        .await
        .expect("a first write");
    // A read-only certificate may watch.
    let watcher = cluster.client(READONLY_CLIENT);
    let mut stream = watcher.watch(b"w/", None, false);
    let start = match stream.next().await.expect("the watch opens") {
        WatchEvent::Progress { index } => index,
        other => panic!("a watch starts with its position, got {other:?}"),
    };
    let watched_addr = stream.node().expect("a node serves the watch").to_string();
    let watched = cluster
        .nodes
        .iter()
        .find(|node| node.client_addr == watched_addr)
        .map(|node| node.id)
        .expect("the watched node is a member");

    const WRITES: usize = 300;
    const KILL_AFTER: usize = 100;
    let writes = tokio::spawn(async move {
        let mut acknowledged = BTreeMap::new();
        let mut attempted = BTreeMap::new();
        for n in 0..WRITES {
            let (key, value) = (format!("w/{:04}", n % 50), format!("v{n}"));
            attempted.insert(value.clone(), key.clone());
            match writer
                .put(&key, &value, WriteConcern::Majority, common::CLIENT_TIMEOUT)
                .await
            {
                Ok((result, _)) => {
                    acknowledged.insert(result.index, (key, value));
                }
                // A write whose answer was lost in the failover may still apply.
                Err(err) => eprintln!("write {n} not acknowledged: {err}"),
            }
            if n % 7 == 0 {
                let noise = format!("other/{n}");
                let _ = writer
                    .put(&noise, "x", WriteConcern::Majority, common::CLIENT_TIMEOUT)
                    .await;
            }
        }
        (acknowledged, attempted)
    });

    let mut changes: Vec<Change> = Vec::new();
    let mut last = start;
    let mut record = |change: Change, changes: &mut Vec<Change>| {
        assert!(change.index > last, "index {} after {last}", change.index);
        last = change.index;
        changes.push(change);
        last
    };
    while changes.len() < KILL_AFTER {
        let change = next_change(&mut stream, Duration::from_secs(60)).await;
        record(change, &mut changes);
    }
    cluster.kill(watched);
    let (acknowledged, attempted) = writes.await.expect("the writer");
    let last_acknowledged = *acknowledged.keys().last().expect("writes acknowledged");
    let mut position = changes.last().map_or(start, |change| change.index);
    while position < last_acknowledged {
        let change = next_change(&mut stream, Duration::from_secs(60)).await;
        position = record(change, &mut changes);
    }
    assert_ne!(
        stream.node(),
        Some(watched_addr.as_str()),
        "the watch resumed on another node"
    );
    let delivered: BTreeMap<_, _> = changes
        .iter()
        .map(|change| {
            let value = change.value.clone().expect("only puts were made");
            let value = String::from_utf8(value).expect("utf-8 values");
            let key = String::from_utf8(change.key.clone()).expect("utf-8 keys");
            (change.index, (key, value))
        })
        .collect();
    assert_eq!(delivered.len(), changes.len(), "no duplicate index");
    for (index, write) in &acknowledged {
        assert_eq!(
            delivered.get(index),
            Some(write),
            "acknowledged write at {index} delivered as written"
        );
    }
    for (index, (key, value)) in &delivered {
        assert_eq!(
            attempted.get(value),
            Some(key),
            "change at {index} is a write that was made"
        );
    }
    // Every delivered change after the start is one of ours, and the acknowledged ones are all
    // there: nothing between them was skipped.
    assert!(delivered.len() >= acknowledged.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_index_names_the_oldest_one_available() {
    let mut spec = ClusterSpec::new(3, 194, 25310);
    spec.log_retention_bytes = Some(64 * 1024);
    let cluster = Cluster::start(spec);
    cluster.wait_for_primary().await;
    let writer = cluster.client(READWRITE_CLIENT);
    let value = "v".repeat(1024);
    for n in 0..400 {
        writer
            .put(
                &format!("c/{n}"),
                &value,
                WriteConcern::All,
                common::CLIENT_TIMEOUT,
            )
            .await
            .expect("write");
    }
    let watcher = cluster.client(READONLY_CLIENT);
    let oldest = eventually("every node compacted its log", || {
        let watcher = &watcher;
        async move {
            match watcher.watch(b"c/", Some(1), false).next().await {
                Err(Error::Compacted { requested, oldest }) => {
                    assert_eq!(requested, 1);
                    Some(oldest)
                }
                _ => None,
            }
        }
    })
    .await;
    assert!(oldest > 1, "the log starts at {oldest}");
    // From the oldest index a node still holds, a watch serves what is there. Each node compacts
    // on its own, so the node that serves this watch may have compacted further than the one
    // that answered above: its own error names its own oldest index, from which it serves.
    let from = std::sync::Mutex::new(oldest);
    let first = eventually("a node serves the watch from the oldest index", || {
        let (watcher, from) = (&watcher, &from);
        async move {
            let requested = *from.lock().expect("lock");
            let mut stream = watcher.watch(b"c/", Some(requested), false);
            match stream.next().await {
                Ok(WatchEvent::Progress { index }) => Some((stream, index, requested)),
                Err(Error::Compacted { oldest, .. }) => {
                    *from.lock().expect("lock") = oldest;
                    None
                }
                _ => None,
            }
        }
    })
    .await;
    let (mut stream, index, requested) = first;
    assert_eq!(
        index + 1,
        requested,
        "the watch starts where it was asked to"
    );
    let change = next_change(&mut stream, Duration::from_secs(30)).await;
    assert!(change.index >= requested);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_cut_off_while_another_keeps_pace() {
    let cluster = Cluster::start(ClusterSpec::new(3, 197, 25320));
    cluster.wait_for_primary().await;
    let addr = cluster.node(1).client_addr.clone();

    // The slow one: a raw watch stream on node 1 that is never read.
    let (_endpoint, connection) = cluster.raw_connection(1, READONLY_CLIENT).await;
    let (_send, mut slow) = open_raw_watch(&connection, b"s/").await;

    // The brisk one, on the same node, reads everything.
    let files = cluster.client_files(READONLY_CLIENT);
    let brisk_client = Client::with_tls(vec![addr.clone()], &files, common::test_options())
        .expect("a client of node 1");
    let mut brisk = brisk_client.watch(b"s/", None, false);
    brisk.next().await.expect("the brisk watch opens");

    // 64 KiB values: the hub's ring (32 MiB) holds about 500 of them.
    const WRITES: usize = 1000;
    let writer = cluster.client(READWRITE_CLIENT);
    let writes = tokio::spawn(async move {
        let value = "s".repeat(64 * 1024);
        let mut tasks = Vec::new();
        for worker in 0..8 {
            let session = writer.session();
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                let mut indexes = Vec::new();
                for n in (worker..WRITES).step_by(8) {
                    let (result, _) = session
                        .put(
                            &format!("s/{n}"),
                            &value,
                            WriteConcern::Majority,
                            common::CLIENT_TIMEOUT,
                        )
                        .await
                        .expect("write");
                    indexes.push(result.index);
                }
                indexes
            }));
        }
        let mut indexes = Vec::new();
        for task in tasks {
            indexes.extend(task.await.expect("writer"));
        }
        indexes.sort_unstable();
        indexes
    });
    let mut seen = Vec::new();
    while seen.len() < WRITES {
        let change = next_change(&mut brisk, Duration::from_secs(60)).await;
        assert!(seen.last().is_none_or(|last| change.index > *last));
        seen.push(change.index);
    }
    let indexes = writes.await.expect("the writes");
    assert_eq!(seen, indexes, "the brisk watcher saw every write, in order");

    // The slow one was cut off: its stream ends with the lagging reset, not with more changes.
    let mut frames = 0usize;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match replikv::wire::frame::read_frame::<WatchEvent, _>(
                &mut slow,
                MAX_CLIENT_FRAME_BYTES,
            )
            .await
            {
                Ok(Some(_)) => frames += 1,
                Ok(None) => return None,
                Err(_) => return slow.received_reset().await.ok().flatten(),
            }
        }
    })
    .await
    .expect("the slow watch ended");
    assert_eq!(ended, Some(WATCH_LAGGING_CODE), "after {frames} frames");
    assert!(frames < WRITES, "the slow watcher got only part: {frames}");
    connection.close(0u32.into(), b"done");
}

/// `kvctl watch` until `lines` lines are printed (it runs until killed), with `args`.
async fn kvctl_watch_lines(args: &[&str], lines: usize) -> Vec<String> {
    kvctl_watch_lines_signalling(args, lines, None).await
}

/// As [`kvctl_watch_lines`], telling `first_line` once kvctl has printed its first line.
async fn kvctl_watch_lines_signalling(
    args: &[&str],
    lines: usize,
    mut first_line: Option<tokio::sync::oneshot::Sender<()>>,
) -> Vec<String> {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run kvctl watch");
    let stdout = child.stdout.take().expect("kvctl stdout");
    let mut reader = tokio::io::BufReader::new(stdout).lines();
    let mut printed = Vec::new();
    while printed.len() < lines {
        let line = tokio::time::timeout(Duration::from_secs(30), reader.next_line())
            .await
            .expect("kvctl watch printed in time")
            .expect("read kvctl's output")
            .expect("kvctl watch still running");
        printed.push(line);
        if let Some(first_line) = first_line.take() {
            let _ = first_line.send(());
        }
    }
    child.kill().await.expect("stop kvctl watch");
    printed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_watch_lists_at_one_index_then_prints_each_change() {
    let cluster = Cluster::start(ClusterSpec::new(3, 191, 25330));
    cluster.wait_for_primary().await;
    let writer = cluster.client(READWRITE_CLIENT);
    let put = |key: &'static str, value: &'static str| {
        let writer = &writer;
        async move {
            writer
                .put(key, value, WriteConcern::Majority, common::CLIENT_TIMEOUT)
                .await
                .expect("write")
                .0
                .index
        }
    };
    put("k/a", "1").await;
    let listed_b = put("k/b", "1").await;
    // kvctl may list on a backup, from what that node has applied (a listing is a stale read at
    // one index): wait until every node has applied both writes, so the listing holds them
    // whichever node serves it.
    cluster.wait_until_applied(listed_b).await;
    let config = cluster.write_client_config(READONLY_CLIENT);
    let config = config.to_str().expect("utf-8 path");

    let (listed, listing_printed) = tokio::sync::oneshot::channel();
    let watch = tokio::spawn({
        let args: Vec<String> = ["--config", config, "--json", "watch", "k/", "--initial"]
            .iter()
            .map(|arg| arg.to_string())
            .collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kvctl_watch_lines_signalling(&args, 3, Some(listed)).await
        }
    });
    // The changes come once the listing is printed (a slow start of kvctl on a busy machine
    // would otherwise list them too).
    tokio::time::timeout(Duration::from_secs(30), listing_printed)
        .await
        .expect("kvctl printed its listing in time")
        .expect("kvctl watch still running");
    let changed_a = put("k/a", "2").await;
    put("other/x", "1").await;
    let deleted_b = writer
        .delete("k/b", WriteConcern::Majority, common::CLIENT_TIMEOUT)
        .await
        .expect("delete")
        .0
        .index;
    let lines = watch.await.expect("kvctl watch");
    let json: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let listed_at = json[0]["index"].as_u64().expect("the listing's index");
    assert!(
        listed_at >= listed_b && listed_at < changed_a,
        "{}",
        lines[0]
    );
    let listed: Vec<(&str, &str)> = json[0]["initial"]
        .as_array()
        .expect("pairs")
        .iter()
        .map(|pair| {
            (
                pair["key"].as_str().expect("key"),
                pair["value"].as_str().expect("value"),
            )
        })
        .collect();
    assert_eq!(listed, [("k/a", "1"), ("k/b", "1")]);
    assert_eq!(
        (
            json[1]["op"].as_str(),
            json[1]["key"].as_str(),
            json[1]["value"].as_str()
        ),
        (Some("put"), Some("k/a"), Some("2"))
    );
    assert_eq!(json[1]["index"].as_u64(), Some(changed_a));
    assert_eq!(
        (json[2]["op"].as_str(), json[2]["key"].as_str()),
        (Some("delete"), Some("k/b"))
    );
    assert_eq!(json[2]["index"].as_u64(), Some(deleted_b));

    // From the index a write answered: text lines, the same changes.
    let from = changed_a.to_string();
    let lines = kvctl_watch_lines(&["--config", config, "watch", "k/", "--from", &from], 2).await;
    assert!(
        lines[0].starts_with(&format!("put\tk/a\t2\tindex={changed_a}\tepoch=")),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(&format!("delete\tk/b\tindex={deleted_b}\t")),
        "{}",
        lines[1]
    );
}

/// One Server-Sent Event: its id, name and JSON data.
type Sse = (Option<u64>, String, serde_json::Value);

/// Reads `count` events from a `text/event-stream` response.
async fn read_events(
    response: &mut reqwest::Response,
    buffer: &mut String,
    count: usize,
) -> Vec<Sse> {
    let mut events = Vec::new();
    while events.len() < count {
        if let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut name, mut data) = (None, String::new(), serde_json::Value::Null);
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("id: ") {
                    id = Some(value.parse().expect("a numeric id"));
                } else if let Some(value) = line.strip_prefix("event: ") {
                    name = value.to_string();
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(value).expect("JSON data");
                }
            }
            events.push((id, name, data));
            continue;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(30), response.chunk())
            .await
            .expect("an event in time")
            .expect("the stream")
            .expect("the stream goes on");
        buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8 events"));
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_door_serves_a_watch_as_server_sent_events() {
    let cluster = Cluster::start(ClusterSpec::new(3, 194, 25340));
    let (primary, _) = cluster.wait_for_primary().await;
    let backup = (1..=3).find(|id| *id != primary).expect("a backup");
    let writer = cluster.client(READWRITE_CLIENT);
    let first = writer
        .put("e/a", "1", WriteConcern::Majority, common::CLIENT_TIMEOUT)
        .await
        .expect("write")
        .0
        .index;
    let ca = std::fs::read(cluster.certs_dir.join("ca.pem")).expect("the CA");
    let files = cluster.client_files(READONLY_CLIENT);
    let mut pem = std::fs::read(&files.cert).expect("certificate");
    pem.extend(std::fs::read(&files.key).expect("key"));
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA"))
        .identity(reqwest::Identity::from_pem(&pem).expect("identity"))
        .build()
        .expect("HTTP client");
    let url = format!("https://{}/v1/watch", cluster.spec.http_addr(backup));

    let mut response = http
        .get(format!("{url}?prefix=e/&from={first}"))
        .send()
        .await
        .expect("the watch");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().ok(),
        Some("text/event-stream")
    );
    let mut buffer = String::new();
    let events = read_events(&mut response, &mut buffer, 2).await;
    assert_eq!(
        (events[0].0, events[0].1.as_str()),
        (Some(first - 1), "progress")
    );
    assert_eq!((events[1].0, events[1].1.as_str()), (Some(first), "change"));
    assert_eq!(events[1].2["key"], "e/a");
    assert_eq!(events[1].2["value"], "1");
    let second = writer
        .delete("e/a", WriteConcern::Majority, common::CLIENT_TIMEOUT)
        .await
        .expect("delete")
        .0
        .index;
    let events = read_events(&mut response, &mut buffer, 1).await;
    assert_eq!(
        (events[0].0, events[0].1.as_str()),
        (Some(second), "change")
    );
    assert_eq!(events[0].2["op"], "delete");
    drop(response);

    // An EventSource resumes after the last id it saw.
    let mut resumed = http
        .get(format!("{url}?prefix=e/"))
        .header("last-event-id", first.to_string())
        .send()
        .await
        .expect("the resumed watch");
    let mut buffer = String::new();
    let events = read_events(&mut resumed, &mut buffer, 2).await;
    assert_eq!(
        (events[0].0, events[0].1.as_str()),
        (Some(first), "progress")
    );
    assert_eq!(
        (events[1].0, events[1].1.as_str()),
        (Some(second), "change")
    );

    let bad = http
        .get(format!("{url}?from=soon"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(bad.status(), reqwest::StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_removed_node_ends_instead_of_stalling() {
    let cluster = Cluster::start(ClusterSpec::new(3, 197, 25300));
    let (primary, _) = cluster.wait_for_primary().await;
    let removed = (1..=3).find(|id| *id != primary).expect("a backup");
    // A raw stream, so that nothing resumes it elsewhere: what the node itself does is seen.
    let (_endpoint, connection) = cluster.raw_connection(removed, READONLY_CLIENT).await;
    let (_send, mut recv) = open_raw_watch(&connection, b"r/").await;
    let first = read_frame::<WatchEvent, _>(&mut recv, MAX_CLIENT_FRAME_BYTES).await;
    assert!(
        matches!(first, Ok(Some(WatchEvent::Progress { .. }))),
        "the watch opens: {first:?}"
    );

    let admin = cluster.client(ADMIN_CLIENT);
    admin
        .remove_member(removed)
        .await
        .unwrap_or_else(|error| panic!("removing node {removed} failed: {error}"));

    // The primary no longer talks to the removed node; before, its watch went on with progress
    // notifications forever, and a client had no reason to move.
    let ended = tokio::time::timeout(common::PATIENCE, async {
        loop {
            match read_frame::<WatchEvent, _>(&mut recv, MAX_CLIENT_FRAME_BYTES).await {
                Ok(Some(WatchEvent::Progress { .. })) => continue,
                other => return other,
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        cluster.dump_logs();
        panic!("the watch on removed node {removed} is still open")
    });
    assert!(
        matches!(ended, Ok(Some(WatchEvent::End(Error::Unavailable(_))))),
        "the watch ends with a reason to move: {ended:?}"
    );

    // The client library moves to a member by itself: a write is seen.
    let files = cluster.client_files(READONLY_CLIENT);
    let addrs = vec![
        cluster.node(removed).client_addr.clone(),
        cluster.node(primary).client_addr.clone(),
    ];
    let watcher = Client::with_tls(addrs, &files, common::test_options()).expect("a client");
    let mut stream = watcher.watch(b"r/", None, false);
    stream.next().await.expect("the watch opens on a member");
    assert_ne!(
        stream.node(),
        Some(cluster.node(removed).client_addr.as_str()),
        "the removed node opens no watch"
    );
    let writer = cluster.client(READWRITE_CLIENT);
    let (written, _) = writer
        .put(
            "r/after",
            "x",
            WriteConcern::Majority,
            common::CLIENT_TIMEOUT,
        )
        .await
        .expect("a write after the removal");
    let change = next_change(&mut stream, common::PATIENCE).await;
    assert_eq!(
        (change.index, change.key.as_slice()),
        (written.index, &b"r/after"[..])
    );
}

/// One RESP2 or RESP3 value, rendered flat for assertions: an aggregate as its type byte and its
/// elements in brackets (`*[message,ch,set]`, `>[…]`), an error with its `-`, a null as `nil`,
/// any other value as its text.
async fn read_resp(reader: &mut tokio::io::BufReader<tokio::net::TcpStream>) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("a RESP line");
    let Some(line) = line.strip_suffix("\r\n") else {
        panic!("the door closed mid-value: {line:?}");
    };
    let (kind, rest) = line.split_at(1);
    let count = || rest.parse::<i64>().expect("a RESP length");
    match kind {
        "+" | ":" | "#" | "," => rest.to_string(),
        "-" => format!("-{rest}"),
        "_" => "nil".to_string(),
        "$" if count() < 0 => "nil".to_string(),
        "$" => {
            let mut data = vec![0; usize::try_from(count()).expect("a length") + 2];
            reader.read_exact(&mut data).await.expect("a bulk string");
            data.truncate(data.len() - 2);
            String::from_utf8_lossy(&data).into_owned()
        }
        "*" | ">" | "~" | "%" | "|" => {
            let items = match kind {
                "%" | "|" => 2 * count(),
                _ => count(),
            };
            let mut rendered = Vec::new();
            for _ in 0..items.max(0) {
                rendered.push(Box::pin(read_resp(reader)).await);
            }
            format!("{kind}[{}]", rendered.join(","))
        }
        other => panic!("not a RESP type: {other:?} in {line:?}"),
    }
}

/// A raw RESP connection: sends commands as arrays of bulk strings, reads values one at a time.
struct RespConnection(tokio::io::BufReader<tokio::net::TcpStream>);

impl RespConnection {
    async fn open(addr: &str) -> RespConnection {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to a RESP door");
        RespConnection(tokio::io::BufReader::new(stream))
    }

    async fn send(&mut self, args: &[&str]) {
        use tokio::io::AsyncWriteExt;
        let mut command = format!("*{}\r\n", args.len());
        for arg in args {
            command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.0
            .get_mut()
            .write_all(command.as_bytes())
            .await
            .expect("send a command");
    }

    async fn read(&mut self) -> String {
        tokio::time::timeout(common::PATIENCE, read_resp(&mut self.0))
            .await
            .expect("a reply or a notification in time")
    }

    async fn call(&mut self, args: &[&str]) -> String {
        self.send(args).await;
        self.read().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_notifications_speak_resp2_subscribed_mode_and_resp3_pushes() {
    let cluster = Cluster::start(ClusterSpec::new(3, 194, 25300).with_resp());
    let (primary, _) = cluster.wait_for_primary().await;
    let backup = (1..=3).find(|id| *id != primary).expect("a backup");
    let channel = "__keyspace@0__:n/1";

    // RESP2: once subscribed, only the (un)subscribe commands, PING and QUIT run, as in Redis.
    let mut resp2 = RespConnection::open(&cluster.spec.resp_addr(backup)).await;
    assert_eq!(
        resp2.call(&["SUBSCRIBE", channel]).await,
        format!("*[subscribe,{channel},1]")
    );
    let refused = resp2.call(&["GET", "n/1"]).await;
    assert!(
        refused.starts_with("-ERR Can't execute 'get': only (P|S)SUBSCRIBE"),
        "{refused}"
    );
    assert_eq!(resp2.call(&["PING"]).await, "*[pong,]");

    // RESP3: confirmations and messages are pushes, and any command still runs.
    let mut resp3 = RespConnection::open(&cluster.spec.resp_addr(backup)).await;
    let hello = resp3.call(&["HELLO", "3"]).await;
    assert!(hello.starts_with("%["), "HELLO 3 answers a map: {hello}");
    assert_eq!(
        resp3.call(&["SUBSCRIBE", channel]).await,
        format!(">[subscribe,{channel},1]")
    );
    assert_eq!(resp3.call(&["GET", "n/1"]).await, "nil");

    let mut writer = RespConnection::open(&cluster.spec.resp_addr(primary)).await;
    assert_eq!(writer.call(&["SET", "n/2", "unwatched"]).await, "OK");
    assert_eq!(writer.call(&["SET", "n/1", "v"]).await, "OK");
    // The unwatched key announced nothing: the first message is the watched one's.
    assert_eq!(resp2.read().await, format!("*[message,{channel},set]"));
    assert_eq!(resp3.read().await, format!(">[message,{channel},set]"));
    assert_eq!(resp3.call(&["GET", "n/1"]).await, "v");

    // Unsubscribed, the RESP2 connection runs every command again.
    assert_eq!(
        resp2.call(&["UNSUBSCRIBE", channel]).await,
        format!("*[unsubscribe,{channel},0]")
    );
    assert_eq!(resp2.call(&["GET", "n/1"]).await, "v");
}
