//! Failover time: SIGKILL the primary of a 3-node cluster, measure how long until a write
//! succeeds on the new primary, restart the killed node, and repeat.
//!
//! The cluster is real `kvnode` processes (default settings: 100 ms heartbeats, failure timeout
//! 3 heartbeats plus up to 150 ms jitter) on 127.0.0.84-86, with certificates and data in a
//! temporary directory. Two clocks start at the kill:
//!
//! - **cluster**: probes write to each surviving node directly, a new one every few milliseconds
//!   without waiting for the earlier ones, and without following redirects; the first one that a
//!   node acknowledges at `w=majority` ends the clock.
//!   This is the failover of the cluster itself: detection, election, the new primary's no-op
//!   committed, a write committed.
//! - **client**: one ordinary session that writes in a loop, as an application would, with the
//!   client library's discovery, redirects and retries; its first acknowledged write after the
//!   kill ends the clock. This adds what the client needs to notice the old primary is gone.
//! - **fresh kvctl**: `kvctl put` with `--timeout 1s`, run again and again, a new process each
//!   time, as a user retrying by hand or a script would; the first one that exits 0 ends the
//!   clock. A fresh process knows no primary: this measures the client's discovery from its
//!   configuration (nodes in id order), dead primary included.
//!
//! Run it with `scripts/failover-bench.sh` (which builds `kvnode` first), or
//! `cargo build --release && cargo run --release --example failover_bench -- --trials 10`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::sync::Mutex;

use replikv::certs::{self, CertRole, CertsInit, TlsFiles};
use replikv::client::{Client, ClientOptions};
use replikv::config::{DevCluster, DEV_CLIENT_NAME};
use replikv::wire::client::{MemberHealth, Role};
use replikv::{NodeId, WriteConcern};

#[derive(Parser, Debug)]
#[command(
    about = "Measure failover time: SIGKILL the primary, time the first write on the new one"
)]
struct Args {
    /// Number of kill-and-recover rounds.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// The kvnode binary (default: next to this example's target directory).
    #[arg(long)]
    kvnode: Option<PathBuf>,
    /// The kvctl binary of the "fresh kvctl" clock (default: next to kvnode).
    #[arg(long)]
    kvctl: Option<PathBuf>,
    /// Client port of every node; the peer port is the next one.
    #[arg(long, default_value_t = 27679)]
    port: u16,
    /// Print the trials and the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Node `i` binds `127.0.0.{FIRST_OCTET + i - 1}`: a block no test or bench uses.
const FIRST_OCTET: u64 = 84;
const NODES: u64 = 3;
/// How long to wait for a primary, a failover or a catch-up before giving up.
const PATIENCE: Duration = Duration::from_secs(60);
/// Pause between the launches of two probes of one node.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// Deadline of one probe (a write the node may hold while it waits for a majority).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Deadline of each write of the client loop, as an application might set it.
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// `--timeout` of each fresh `kvctl put`.
const KVCTL_TIMEOUT: &str = "1s";

/// The node processes; dropping this kills every one still running.
struct Processes {
    kvnode: PathBuf,
    dir: PathBuf,
    children: Vec<Option<Child>>,
}

impl Processes {
    fn start(&mut self, id: NodeId) -> std::io::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{id}.log")))?;
        let child = Command::new(&self.kvnode)
            .arg("--config")
            .arg(self.dir.join(format!("node-{id}.toml")))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.children[slot(id)] = Some(child);
        Ok(())
    }

    /// SIGKILL: no flush, no goodbye to the peers.
    fn kill(&mut self, id: NodeId) -> std::io::Result<()> {
        if let Some(mut child) = self.children[slot(id)].take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn slot(id: NodeId) -> usize {
    usize::try_from(id - 1).unwrap_or(usize::MAX)
}

/// One kill-and-recover round.
#[derive(Debug, serde::Serialize)]
struct Trial {
    killed: NodeId,
    new_primary: NodeId,
    cluster_ms: f64,
    client_ms: f64,
    fresh_kvctl_ms: f64,
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Failure> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Failure> {
    let kvnode = match args.kvnode.clone() {
        Some(path) => path,
        None => binary_next_to_example("kvnode")?,
    };
    let kvctl = match args.kvctl.clone() {
        Some(path) => path,
        None => kvnode.with_file_name("kvctl"),
    };
    if !kvctl.exists() {
        return Err(format!(
            "{} does not exist: build kvctl, or pass --kvctl",
            kvctl.display()
        )
        .into());
    }
    let dir = tempfile::Builder::new()
        .prefix("replikv-failover-")
        .tempdir()?;
    let addrs = plan_cluster(dir.path(), args.port)?;
    let fresh_kvctl = FreshKvctl {
        kvctl,
        config: dir.path().join("client.toml"),
    };
    let mut processes = Processes {
        kvnode,
        dir: dir.path().to_path_buf(),
        children: (0..NODES).map(|_| None).collect(),
    };
    for id in 1..=NODES {
        processes.start(id)?;
    }
    let client = Client::with_tls(
        addrs.clone(),
        &TlsFiles::for_client(&dir.path().join("certs"), DEV_CLIENT_NAME),
        ClientOptions {
            timeout: Duration::from_secs(5),
            default_write_concern: WriteConcern::Majority,
        },
    )?;

    let mut trials = Vec::new();
    for number in 1..=args.trials {
        let primary = wait_until_healthy(&client, &addrs).await?;
        let trial = one_trial(&client, &addrs, &fresh_kvctl, &mut processes, primary).await?;
        if !args.json {
            println!(
                "trial {number:>2}: killed node {}, node {} took over; cluster {:.0} ms, client {:.0} ms, fresh kvctl {:.0} ms",
                trial.killed, trial.new_primary, trial.cluster_ms, trial.client_ms, trial.fresh_kvctl_ms
            );
        }
        processes.start(trial.killed)?;
        trials.push(trial);
    }
    client.close().await;

    let cluster: Vec<f64> = trials.iter().map(|trial| trial.cluster_ms).collect();
    let client_side: Vec<f64> = trials.iter().map(|trial| trial.client_ms).collect();
    let fresh: Vec<f64> = trials.iter().map(|trial| trial.fresh_kvctl_ms).collect();
    if args.json {
        let summary = serde_json::json!({
            "trials": trials,
            "cluster_ms": { "median": median(&cluster), "max": max(&cluster), "min": min(&cluster) },
            "client_ms": { "median": median(&client_side), "max": max(&client_side), "min": min(&client_side) },
            "fresh_kvctl_ms": { "median": median(&fresh), "max": max(&fresh), "min": min(&fresh) },
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "cluster failover: median {:.0} ms, min {:.0} ms, max {:.0} ms over {} trials",
            median(&cluster),
            min(&cluster),
            max(&cluster),
            cluster.len()
        );
        println!(
            "client failover:  median {:.0} ms, min {:.0} ms, max {:.0} ms",
            median(&client_side),
            min(&client_side),
            max(&client_side)
        );
        println!(
            "fresh kvctl:      median {:.0} ms, min {:.0} ms, max {:.0} ms",
            median(&fresh),
            min(&fresh),
            max(&fresh)
        );
    }
    Ok(())
}

/// `target/<profile>/<name>`, next to `target/<profile>/examples/failover_bench`.
fn binary_next_to_example(name: &str) -> Result<PathBuf, Failure> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot locate the target directory")?;
    let binary = profile_dir.join(name);
    if !binary.exists() {
        return Err(format!(
            "{} does not exist: run `cargo build --release` first, or pass --{name}",
            binary.display()
        )
        .into());
    }
    Ok(binary)
}

/// How to run a fresh `kvctl` against the bench cluster.
struct FreshKvctl {
    kvctl: PathBuf,
    config: PathBuf,
}

impl FreshKvctl {
    /// Runs `kvctl put` in new processes, one after the other, until one exits 0; returns the
    /// time from `since` to that exit.
    async fn first_success(&self, since: Instant) -> Result<Duration, Failure> {
        let deadline = since + PATIENCE;
        loop {
            let status = tokio::process::Command::new(&self.kvctl)
                .arg("--config")
                .arg(&self.config)
                .args(["--timeout", KVCTL_TIMEOUT, "put", "failover-kvctl", "after"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await?;
            if status.success() {
                return Ok(since.elapsed());
            }
            if Instant::now() > deadline {
                return Err("no fresh kvctl wrote within a minute".into());
            }
        }
    }
}

/// Writes certificates and node configurations into `dir`; returns the client addresses.
fn plan_cluster(dir: &Path, port: u16) -> Result<Vec<String>, Failure> {
    let mut plan = DevCluster::plan(dir, NODES, port)?;
    let ip = |id: NodeId| format!("127.0.0.{}", FIRST_OCTET + id - 1);
    for config in &mut plan.nodes {
        config.client_addr = format!("{}:{port}", ip(config.id));
        config.peer_addr = format!("{}:{}", ip(config.id), port + 1);
    }
    let members: Vec<_> = plan
        .nodes
        .iter()
        .map(|config| {
            let mut member = config.members[slot(config.id)].clone();
            member.client_addr = config.client_addr.clone();
            member.peer_addr = config.peer_addr.clone();
            member
        })
        .collect();
    for config in &mut plan.nodes {
        config.members = members.clone();
        config.log_level = "info".to_string();
    }
    certs::init_certs(&CertsInit {
        dir: plan.certs_dir.clone(),
        nodes: (1..=NODES).map(|id| (id, vec![ip(id)])).collect(),
        clients: vec![(DEV_CLIENT_NAME.to_string(), CertRole::Admin)],
        force: false,
    })?;
    for config in &plan.nodes {
        std::fs::write(
            dir.join(format!("node-{}.toml", config.id)),
            config.to_toml()?,
        )?;
    }
    let mut client = plan.client.clone();
    client.nodes = members
        .iter()
        .map(|member| member.client_addr.clone())
        .collect();
    std::fs::write(dir.join("client.toml"), client.to_toml()?)?;
    Ok(members
        .iter()
        .map(|member| member.client_addr.clone())
        .collect())
}

/// Waits until one node is primary and sees every member healthy; returns its id.
async fn wait_until_healthy(client: &Client, addrs: &[String]) -> Result<NodeId, Failure> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        for addr in addrs {
            let Ok(status) = client.status_of(addr).await else {
                continue;
            };
            let all_healthy = status.members.iter().all(|row| {
                matches!(row.health, MemberHealth::Healthy | MemberHealth::Local)
                    && row.lag == Some(0)
            });
            if status.role == Role::Primary && all_healthy {
                return Ok(status.node_id);
            }
        }
        if Instant::now() > deadline {
            return Err("no healthy cluster within a minute: see the node logs".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn one_trial(
    client: &Client,
    addrs: &[String],
    fresh_kvctl: &FreshKvctl,
    processes: &mut Processes,
    primary: NodeId,
) -> Result<Trial, Failure> {
    // The application's session: warmed up on the current primary.
    let writer = client.session();
    writer
        .put(
            "failover",
            "before",
            WriteConcern::Majority,
            CLIENT_WRITE_TIMEOUT,
        )
        .await?;

    processes.kill(primary)?;
    let killed_at = Instant::now();

    // The first write a surviving node acknowledged, as (node, time since the kill). Probes are
    // launched every few milliseconds without waiting for earlier ones, so one stuck on a
    // candidate that loses its election does not delay the observation.
    let first_probe: Arc<Mutex<Option<(NodeId, Duration)>>> = Arc::default();
    let mut launchers = Vec::new();
    for (id, addr) in (1..=NODES).zip(addrs) {
        if id == primary {
            continue;
        }
        let probe_client = client.pinned_to(addr).with_timeout(PROBE_TIMEOUT);
        let first_probe = Arc::clone(&first_probe);
        launchers.push(tokio::spawn(async move {
            let deadline = killed_at + PATIENCE;
            let mut probes = tokio::task::JoinSet::new();
            while first_probe.lock().await.is_none() && Instant::now() < deadline {
                let session = probe_client.session();
                let first_probe = Arc::clone(&first_probe);
                probes.spawn(async move {
                    let probe = session
                        .put("probe", "after", WriteConcern::Majority, PROBE_TIMEOUT)
                        .await;
                    if let Ok((_, meta)) = probe {
                        let elapsed = killed_at.elapsed();
                        first_probe
                            .lock()
                            .await
                            .get_or_insert((meta.node_id, elapsed));
                    }
                });
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
            probes.shutdown().await;
        }));
    }
    let client_side = async {
        let deadline = killed_at + PATIENCE;
        loop {
            let write = writer
                .put(
                    "failover",
                    "after",
                    WriteConcern::Majority,
                    CLIENT_WRITE_TIMEOUT,
                )
                .await;
            match write {
                Ok((_, meta)) if meta.node_id != primary => return Ok(killed_at.elapsed()),
                _ if Instant::now() > deadline => {
                    return Err::<Duration, Failure>("the client never wrote again".into())
                }
                _ => {}
            }
        }
    };
    let (client_elapsed, fresh_kvctl_elapsed) =
        tokio::try_join!(client_side, fresh_kvctl.first_success(killed_at))?;
    for launcher in launchers {
        launcher.await?;
    }
    let (new_primary, cluster_elapsed) = first_probe
        .lock()
        .await
        .ok_or("no surviving node took writes within a minute")?;
    Ok(Trial {
        killed: primary,
        new_primary,
        cluster_ms: cluster_elapsed.as_secs_f64() * 1000.0,
        client_ms: client_elapsed.as_secs_f64() * 1000.0,
        fresh_kvctl_ms: fresh_kvctl_elapsed.as_secs_f64() * 1000.0,
    })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => sorted[len / 2],
        len => (sorted[len / 2 - 1] + sorted[len / 2]) / 2.0,
    }
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::min)
}
