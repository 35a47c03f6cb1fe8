//! Commit-to-delivery delay of watches, on a running cluster (`kvnode dev`, or the cluster of the
//! client configuration `kvctl` finds): `WATCHERS` watchers spread over the nodes (each node
//! serves its own), one writer putting `WRITES` keys one after another at `w=majority`. For each
//! write and watcher, the delay from the write's acknowledgement to the watcher receiving it
//! (zero when the change arrived before the acknowledgement did).
//!
//! `cargo run --release --example watch_latency -- [WATCHERS] [WRITES]`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use replikv::client::Client;
use replikv::config::ClientConfig;
use replikv::wire::client::WatchEvent;
use replikv::WriteConcern;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let watchers: usize = args.next().map_or(Ok(100), |text| text.parse())?;
    let writes: usize = args.next().map_or(Ok(1000), |text| text.parse())?;
    let (config, _) = ClientConfig::discover(None)?;
    let prefix = format!("latency/{}/", rand_suffix());
    // When each index was delivered, per watcher.
    let delivered: Arc<Mutex<Vec<HashMap<u64, Instant>>>> =
        Arc::new(Mutex::new(vec![HashMap::new(); watchers]));
    let mut tasks = Vec::new();
    for watcher in 0..watchers {
        // One client per node in turn, so the watchers spread over the nodes.
        let node = config.nodes[watcher % config.nodes.len()].clone();
        let client = Client::with_tls(vec![node], &config.tls_files(), Default::default())?;
        let mut stream = client.watch(prefix.as_bytes(), None, false);
        stream.next().await?; // the watch is open
        let delivered = Arc::clone(&delivered);
        tasks.push(tokio::spawn(async move {
            let _client = client;
            let mut seen = 0;
            while seen < writes {
                if let Ok(WatchEvent::Change(change)) = stream.next().await {
                    let now = Instant::now();
                    if let Ok(mut delivered) = delivered.lock() {
                        delivered[watcher].insert(change.index, now);
                    }
                    seen += 1;
                }
            }
        }));
    }
    let writer = Client::connect(&config).await?;
    let mut acknowledged = Vec::with_capacity(writes);
    let started = Instant::now();
    for n in 0..writes {
        let key = format!("{prefix}{n}");
        let (result, _) = writer
            .put(&key, "x", WriteConcern::Majority, Duration::from_secs(5))
            .await?;
        acknowledged.push((result.index, Instant::now()));
    }
    let elapsed = started.elapsed();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task).await??;
    }
    let delivered = delivered.lock().map_err(|_| "poisoned")?;
    let mut delays: Vec<Duration> = Vec::new();
    for (index, acked_at) in &acknowledged {
        for watcher in delivered.iter() {
            let at = watcher.get(index).ok_or("a change was not delivered")?;
            delays.push(at.saturating_duration_since(*acked_at));
        }
    }
    delays.sort_unstable();
    if delays.is_empty() {
        println!(
            "no watchers, {writes} writes at w=majority in {:.1} s ({:.0}/s)",
            elapsed.as_secs_f64(),
            writes as f64 / elapsed.as_secs_f64()
        );
        return Ok(());
    }
    let quantile = |q: f64| delays[((delays.len() - 1) as f64 * q) as usize];
    println!(
        "{watchers} watchers, {writes} writes at w=majority in {:.1} s ({:.0}/s); \
         acknowledgement to delivery: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        elapsed.as_secs_f64(),
        writes as f64 / elapsed.as_secs_f64(),
        quantile(0.5).as_secs_f64() * 1e3,
        quantile(0.99).as_secs_f64() * 1e3,
        quantile(1.0).as_secs_f64() * 1e3,
    );
    Ok(())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}
