//! Watches under load, on a running cluster (`kvnode dev`, or the cluster of the client
//! configuration `kvctl` finds). Two modes:
//!
//! - `watch_latency [WATCHERS] [WRITES] [WRITERS]`: `WATCHERS` watchers of one prefix spread
//!   over the nodes (each node serves its own; up to [`WATCHES_PER_CLIENT`] share one client
//!   connection), while `WRITERS` concurrent sessions put `WRITES` keys under it in all at
//!   `w=majority`: every write goes to every watcher. For each write and watcher, the delay from
//!   the write's acknowledgement to the watcher receiving it (zero when the change arrived before
//!   the acknowledgement did), and the writes per second, which with 0 watchers is the baseline
//!   for the cost watchers add.
//! - `watch_latency spread WATCHERS WRITES WRITERS`: the same, but watcher `i` watches a prefix of
//!   its own (`…/i/`) and write `n` goes under watcher `n % WATCHERS`'s: every write goes to one
//!   watcher, as when each client of an application follows its own keys.
//! - `watch_latency idle COUNT PID`: opens `COUNT` idle watchers on the first node of the
//!   configuration, whose process is `PID`, and prints that process's resident memory before and
//!   after (from `/proc/PID/status`).
//!
//! `cargo run --release --example watch_latency -- 1000 20000 64`

use std::collections::HashMap;
use std::time::{Duration, Instant};

use replikv::client::{Client, WatchStream};
use replikv::config::ClientConfig;
use replikv::wire::client::WatchEvent;
use replikv::WriteConcern;

/// Watch streams sharing one client connection: below a node's limit of concurrent streams per
/// connection (1,024).
const WATCHES_PER_CLIENT: usize = 1000;

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (config, _) = ClientConfig::discover(None)?;
    if args.first().map(String::as_str) == Some("idle") {
        let count: usize = args.get(1).ok_or("idle COUNT PID")?.parse()?;
        let pid: u32 = args.get(2).ok_or("idle COUNT PID")?.parse()?;
        return idle(&config, count, pid).await;
    }
    let spread = args.first().map(String::as_str) == Some("spread");
    let args = &args[usize::from(spread)..];
    let number = |at: usize, default: usize| -> Result<usize, Failure> {
        Ok(args.get(at).map_or(Ok(default), |text| text.parse())?)
    };
    let watchers = number(0, 100)?;
    let writes = number(1, 1000)?;
    let writers = number(2, 1)?.max(1);
    let prefix = format!("latency/{}/", rand_suffix());
    // The prefix watcher `w` watches, and the key of write `n`.
    let watched = |watcher: usize| match spread {
        true => format!("{prefix}{watcher}/"),
        false => prefix.clone(),
    };
    let watcher_of = move |n: usize| spread.then(|| n % watchers.max(1));

    // Each watcher records when each change arrived, in its own list (in index order): nothing
    // shared, so the measuring costs the example little next to receiving the changes.
    let streams = open_watches(&config, watchers, &watched, |watcher| {
        config.nodes[watcher % config.nodes.len()].clone()
    })
    .await?;
    let mut tasks = Vec::new();
    for (watcher, mut stream) in streams.into_iter().enumerate() {
        let expected = (0..writes)
            .filter(|&n| watcher_of(n).is_none_or(|of| of == watcher))
            .count();
        tasks.push(tokio::spawn(async move {
            let mut arrivals: Vec<(u64, Instant)> = Vec::with_capacity(expected);
            while arrivals.len() < expected {
                if let Ok(WatchEvent::Change(change)) = stream.next().await {
                    arrivals.push((change.index, Instant::now()));
                }
            }
            arrivals
        }));
    }

    let writer = Client::connect(&config).await?;
    let started = Instant::now();
    let mut sessions = Vec::new();
    for session_number in 0..writers {
        let session = writer.session();
        let mine: Vec<(usize, String)> = (session_number..writes)
            .step_by(writers)
            .map(|n| (n, format!("{}{n}", watched(watcher_of(n).unwrap_or(0)))))
            .collect();
        sessions.push(tokio::spawn(async move {
            let mut acknowledged = Vec::with_capacity(mine.len());
            for (n, key) in mine {
                let (result, _) = session
                    .put(&key, "x", WriteConcern::Majority, Duration::from_secs(5))
                    .await?;
                acknowledged.push((result.index, n, Instant::now()));
            }
            Ok::<_, replikv::Error>(acknowledged)
        }));
    }
    let mut acknowledged = Vec::with_capacity(writes);
    for session in sessions {
        acknowledged.extend(session.await??);
    }
    let elapsed = started.elapsed();
    let mut delivered = Vec::with_capacity(tasks.len());
    for task in tasks {
        delivered.push(tokio::time::timeout(Duration::from_secs(120), task).await??);
    }
    // A watcher's arrivals and the writes under its prefix are both in index order and hold the
    // same indexes: walk them side by side.
    acknowledged.sort_unstable_by_key(|(index, _, _)| *index);
    let mut delays: Vec<Duration> = Vec::with_capacity(writes * if spread { 1 } else { watchers });
    for (watcher, arrivals) in delivered.iter().enumerate() {
        let expected = acknowledged
            .iter()
            .filter(|(_, n, _)| watcher_of(*n).is_none_or(|of| of == watcher));
        for ((index, _, acked_at), (arrived, at)) in expected.zip(arrivals) {
            if index != arrived {
                return Err(format!("expected change {index}, the watcher got {arrived}").into());
            }
            delays.push(at.saturating_duration_since(*acked_at));
        }
    }
    delays.sort_unstable();
    let rate = writes as f64 / elapsed.as_secs_f64();
    if delays.is_empty() {
        println!(
            "no watchers, {writes} writes by {writers} writers at w=majority in {:.1} s \
             ({rate:.0}/s)",
            elapsed.as_secs_f64(),
        );
        return Ok(());
    }
    let quantile = |q: f64| delays[((delays.len() - 1) as f64 * q) as usize];
    println!(
        "{watchers} watchers{}, {writes} writes by {writers} writers at w=majority in {:.1} s \
         ({rate:.0}/s); acknowledgement to delivery: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        if spread {
            " (a prefix each)"
        } else {
            " (one prefix)"
        },
        elapsed.as_secs_f64(),
        quantile(0.5).as_secs_f64() * 1e3,
        quantile(0.99).as_secs_f64() * 1e3,
        quantile(1.0).as_secs_f64() * 1e3,
    );
    Ok(())
}

/// Opens `count` watches, the `n`-th of `prefix_of(n)` on the node `node_of(n)`, each client
/// connection carrying at most [`WATCHES_PER_CLIENT`] of them; returns once every one is open.
async fn open_watches(
    config: &ClientConfig,
    count: usize,
    prefix_of: impl Fn(usize) -> String,
    node_of: impl Fn(usize) -> String,
) -> Result<Vec<WatchStream>, Failure> {
    let mut clients: HashMap<(String, usize), Client> = HashMap::new();
    let mut on_node: HashMap<String, usize> = HashMap::new();
    let mut streams = Vec::with_capacity(count);
    for n in 0..count {
        let node = node_of(n);
        let opened = on_node.entry(node.clone()).or_default();
        let slot = (node.clone(), *opened / WATCHES_PER_CLIENT);
        *opened += 1;
        if !clients.contains_key(&slot) {
            let client = Client::with_tls(vec![node], &config.tls_files(), Default::default())?;
            clients.insert(slot.clone(), client);
        }
        let client = clients.get(&slot).ok_or("a client vanished")?;
        let mut stream = client.watch(prefix_of(n).as_bytes(), None, false);
        stream.next().await?; // the watch is open
        streams.push(stream);
        if (n + 1) % 1000 == 0 {
            eprintln!("{} watches open", n + 1);
        }
    }
    // The streams keep their clients' connections alive; the handles may go.
    drop(clients);
    Ok(streams)
}

/// Opens `count` idle watches on the first node, whose process is `pid`, and reports its
/// resident memory before and after.
async fn idle(config: &ClientConfig, count: usize, pid: u32) -> Result<(), Failure> {
    let node = config.nodes.first().ok_or("no nodes configured")?.clone();
    let before = resident_kib(pid)?;
    let prefix = format!("idle/{}/", rand_suffix());
    let streams = open_watches(config, count, |_| prefix.clone(), |_| node.clone()).await?;
    // Let the node settle (allocations of the last handshakes, a progress notification).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = resident_kib(pid)?;
    println!(
        "{count} idle watchers on {node}: resident memory {before} KiB before, {after} KiB after \
         ({:.1} KiB per watcher)",
        after.saturating_sub(before) as f64 / count.max(1) as f64
    );
    drop(streams);
    Ok(())
}

/// `VmRSS` of process `pid`, in KiB.
fn resident_kib(pid: u32) -> Result<u64, Failure> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .ok_or("no VmRSS line")?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .ok_or("an empty VmRSS line")?;
    Ok(kib.parse()?)
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}
