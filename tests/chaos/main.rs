//! Chaos tests (docs/CHAOS.md): a cluster of real `kvnode` processes under a Jepsen-style nemesis,
//! with a workload recording a history and checkers judging it.
//!
//! One run: start the cluster on `127.0.0.141..` (client port 24141, peer port 24142), start the
//! workload, play a seeded fault schedule (kills, pauses, partitions, packet loss; see
//! [`nemesis`]), heal everything, wait for a primary and for every node to converge, read every
//! node's state back, then check: linearizability of the register histories, lost acknowledged
//! writes, primaries per epoch, divergence. The report is printed and written as JSON; any
//! violation fails the test. Node logs and the history are kept under `target/chaos-<seed>/`.
//!
//! - `REPLIKV_CHAOS_SECONDS=600`: length of the faulty phase (default 100) for a soak.
//! - `REPLIKV_CHAOS_SEED=<n>`: replays a fault schedule (timing still varies between runs).
//! - `REPLIKV_CHAOS_NODES=5`: cluster size (default 3; five adds the ring of majorities).
//! - `REPLIKV_CHAOS_REPORT=<path>`: where the JSON report goes.
//! - `REPLIKV_CHAOS_PROFILE=large`: the large-state profile ([`large_state`]): a million keys of
//!   1 KiB prefilled, a small `log_retention_bytes`, long backup outages every other fault, and a
//!   check of every prefilled key; its faulty phase defaults to 1800 s.
//!   `REPLIKV_CHAOS_LARGE_KEYS=<n>` changes the number of keys.
//!
//! Partitions need root and a working iptables. Without them the run is skipped with a message,
//! except under `CI=true`, where it fails: CI must exercise it. See `docs/CHAOS.md`.

#[path = "../common/mod.rs"]
mod common;

mod checks;
mod doors;
mod history;
mod large_state;
mod linearizability;
mod nemesis;
mod report;
mod watchers;
mod workload;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use replikv::client::{Client, ClientOptions};
use replikv::wire::client::{ClusterStatus, Role};
use replikv::{NodeId, ReadConsistency, Result, WriteConcern};
use tokio::task::{block_in_place, JoinSet};

use checks::Dump;
use common::{Cluster, ClusterSpec, READWRITE_CLIENT};
use doors::DoorAddresses;
use history::{Door, History, Nanos, Op, Outcome, Record};
use large_state::{LargeStateConfig, LargeStateReport};
use nemesis::{FaultRecord, Firewall, Nemesis};
use report::ChaosReport;
use watchers::Watchers;
use workload::{Workload, WorkloadConfig};

/// The chaos cluster's address block and ports: distinct from every other test's.
const FIRST_IP: u8 = 141;
const CLIENT_PORT: u16 = 24141;

const DEFAULT_FAULT_SECONDS: u64 = 100;
const DEFAULT_NODES: u64 = 3;

/// The large-state profile's default faulty phase: the soak of docs/CHAOS.md.
const LARGE_STATE_FAULT_SECONDS: u64 = 1800;

/// How long the cluster gets to elect a primary and converge once every fault is healed. It bounds
/// a failing run; a healthy cluster needs a second or two.
const RECOVERY_PATIENCE: Duration = Duration::from_secs(60);

/// The same in the large-state profile, where a node may need a snapshot of the whole state.
const LARGE_STATE_RECOVERY_PATIENCE: Duration = Duration::from_secs(600);

/// Deadline of a status request to one node.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the watchers' client keeps trying when no node serves a watch.
const WATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Search budget of the linearizability checker, per key.
const LINEARIZABILITY_BUDGET: Duration = Duration::from_secs(10);

/// Largest number of pairs one final scan asks for; each prefix holds far fewer.
const SCAN_LIMIT: u32 = 1_000_000;

/// Settings of one run, from the environment.
struct Settings {
    seed: u64,
    nodes: u64,
    fault_phase: Duration,
    /// The large-state profile, if chosen.
    large: Option<LargeStateConfig>,
    /// How long recovery after heal may take before the run fails.
    recovery_patience: Duration,
}

fn settings() -> Settings {
    let number = |name: &str| {
        std::env::var(name).ok().map(|text| {
            text.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number"))
        })
    };
    let large = match std::env::var("REPLIKV_CHAOS_PROFILE").ok().as_deref() {
        None | Some("") | Some("bounded") => None,
        Some("large") => Some(LargeStateConfig {
            keys: number("REPLIKV_CHAOS_LARGE_KEYS").unwrap_or(LargeStateConfig::DEFAULT_KEYS),
            log_retention_bytes: LargeStateConfig::LOG_RETENTION_BYTES,
        }),
        Some(other) => {
            panic!("REPLIKV_CHAOS_PROFILE={other:?}: the profiles are `large` and `bounded`")
        }
    };
    let default_seconds = if large.is_some() {
        LARGE_STATE_FAULT_SECONDS
    } else {
        DEFAULT_FAULT_SECONDS
    };
    Settings {
        seed: number("REPLIKV_CHAOS_SEED").unwrap_or_else(|| u64::from(rand::random::<u32>())),
        nodes: number("REPLIKV_CHAOS_NODES").unwrap_or(DEFAULT_NODES),
        fault_phase: Duration::from_secs(
            number("REPLIKV_CHAOS_SECONDS").unwrap_or(default_seconds),
        ),
        recovery_patience: if large.is_some() {
            LARGE_STATE_RECOVERY_PATIENCE
        } else {
            RECOVERY_PATIENCE
        },
        large,
    }
}

/// Progress lines, so a long run can be followed with `--nocapture`.
fn progress(history: &History, message: &str) {
    eprintln!("[chaos {:>7.2}s] {message}", checks::seconds(history.now()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_chaos_run_keeps_every_invariant() {
    let settings = settings();
    // Every node opens its RESP door too (its HTTP door is always open): some workers use them.
    let mut spec = ClusterSpec::new(settings.nodes, FIRST_IP, CLIENT_PORT).with_resp();
    spec.log_retention_bytes = settings
        .large
        .as_ref()
        .map(|large| large.log_retention_bytes);
    let firewall = match Firewall::install(nemesis::CHAIN, spec.client_port + 1) {
        Ok(firewall) => firewall,
        Err(why) => return skip_or_fail(&why),
    };
    if let Ok(filter) = std::env::var("RUST_LOG") {
        eprintln!(
            "note: RUST_LOG={filter:?} reaches the nodes; it must keep replikv::core::node at info \
             for the primaries-per-epoch check"
        );
    }
    let iptables = firewall.program().display().to_string();
    let history = Arc::new(History::new());
    progress(
        &history,
        &format!(
            "seed {} ({} nodes, {}s of faults, {iptables}{}); replay with REPLIKV_CHAOS_SEED={}",
            settings.seed,
            settings.nodes,
            settings.fault_phase.as_secs(),
            match &settings.large {
                Some(large) => format!(
                    ", large-state profile: {} keys, log_retention_bytes {}",
                    large.keys, large.log_retention_bytes
                ),
                None => String::new(),
            },
            settings.seed
        ),
    );
    let mut cluster = Cluster::start(spec.clone());
    let mut nemesis = Nemesis::new(firewall, spec.clone());
    let config = WorkloadConfig::default();
    let client = Client::with_tls(
        cluster.client_addrs(),
        &cluster.client_files(READWRITE_CLIENT),
        ClientOptions {
            timeout: config.op_timeout,
            default_write_concern: WriteConcern::Majority,
        },
    )
    .expect("build the chaos client");

    let first = agreed_primary(&cluster, &client, settings.recovery_patience).await;
    let first =
        first.unwrap_or_else(|views| panic!("the cluster never elected a primary: {views}"));
    let mut large_report = None;
    if let Some(large) = &settings.large {
        progress(
            &history,
            &format!("node {first} is primary; prefilling {} keys", large.keys),
        );
        let started = history.now();
        large_state::prefill(&client, large.keys, |line| progress(&history, &line)).await;
        large_report = Some(LargeStateReport {
            keys: large.keys,
            log_retention_bytes: large.log_retention_bytes,
            prefill_seconds: checks::seconds(history.now() - started),
            ..LargeStateReport::default()
        });
    }
    progress(
        &history,
        &format!("node {first} is primary; starting the workload"),
    );

    // Watchers follow the bounded run from index 1 (the large profile's small log retention
    // compacts index 1 away, so they would only meet `Compacted`). Their client waits longer
    // than the workload's for a node to serve them.
    let watchers = settings.large.is_none().then(|| {
        let watch_client = Client::with_tls(
            cluster.client_addrs(),
            &cluster.client_files(READWRITE_CLIENT),
            ClientOptions {
                timeout: WATCH_TIMEOUT,
                default_write_concern: WriteConcern::Majority,
            },
        )
        .expect("build the watchers' client");
        (Watchers::start(&watch_client), watch_client)
    });

    // --- the faulty phase ---
    let workload_started = history.now();
    let doors = DoorAddresses::of(&cluster, READWRITE_CLIENT, config.op_timeout);
    let workload = Workload::start(
        client.session(),
        doors,
        history.clone(),
        settings.seed,
        config,
    );
    let load = settings
        .large
        .as_ref()
        .map(|large| large_state::Load::start(&client, large.keys, settings.seed));
    play_schedule(&settings, &mut cluster, &mut nemesis, &client, &history).await;

    // --- heal, stop, recover ---
    block_in_place(|| nemesis.heal(&mut cluster))
        .unwrap_or_else(|error| panic!("the nemesis could not heal: {error}"));
    workload.stop().await;
    let load = match load {
        Some(load) => Some(load.stop().await),
        None => None,
    };
    let workload_ended = history.now();
    progress(&history, "workload stopped; waiting for recovery");
    let mut report = ChaosReport {
        seed: settings.seed,
        nodes: settings.nodes,
        iptables,
        fault_phase_seconds: settings.fault_phase.as_secs_f64(),
        ..ChaosReport::default()
    };
    let final_state = read_final_state(
        &cluster,
        &client,
        &history,
        settings.recovery_patience,
        &mut report.problems,
    )
    .await;
    block_in_place(|| nemesis.heal(&mut cluster))
        .unwrap_or_else(|error| panic!("the nemesis could not check the nodes: {error}"));
    report
        .problems
        .extend(nemesis.unexpected_exits.iter().cloned());
    report.total_seconds = checks::seconds(history.now());

    // --- artifacts and checks ---
    if let Some(state) = &final_state {
        record_final_register_reads(&history, state);
    }
    if let Some((watchers, watch_client)) = watchers {
        let target = final_state.as_ref().map_or(0, |state| state.applied_index);
        progress(
            &history,
            &format!("waiting for the watchers to reach index {target}"),
        );
        let logs = watchers.finish(target, settings.recovery_patience).await;
        if let Some(state) = &final_state {
            let reference =
                watchers::reference(&watch_client, target, settings.recovery_patience).await;
            report.watch = Some(watchers::check(&logs, reference, target, &state.nodes));
        }
    }
    let records = history.records();
    let artifacts = target_dir().join(format!("chaos-{}", settings.seed));
    save_artifacts(&cluster, &records, &artifacts);
    report.artifacts = artifacts.display().to_string();
    let logs: Vec<(NodeId, String)> = cluster
        .nodes
        .iter()
        .map(|node| {
            let text = std::fs::read_to_string(&node.log_path).unwrap_or_default();
            (node.id, text)
        })
        .collect();
    progress(&history, &format!("checking {} operations", records.len()));
    report.add_faults(&nemesis.records);
    report.longest_write_gap =
        report::longest_write_gap(&records, workload_started, workload_ended);
    judge(&mut report, &records, &logs, final_state.as_ref());
    if let (Some(mut large), Some(load)) = (large_report, load) {
        large.count_snapshots(&logs);
        match &final_state {
            Some(state) => {
                progress(
                    &history,
                    &format!("reading back {} prefilled keys from every node", large.keys),
                );
                large_state::check(&cluster, &client, state.primary, &load, &mut large).await;
            }
            None => large.read_errors.push(
                "the prefilled keys were not read back: the cluster did not recover".to_string(),
            ),
        }
        report.large_state = Some(large);
    }

    let summary = report.summary();
    eprintln!("{summary}");
    let report_path = std::env::var_os("REPLIKV_CHAOS_REPORT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join(format!("chaos-report-{}.json", settings.seed)));
    match report.write_json(&report_path) {
        Ok(()) => eprintln!("report written to {}", report_path.display()),
        Err(error) => eprintln!("could not write {}: {error}", report_path.display()),
    }
    let violations = report.violations();
    assert!(
        violations.is_empty(),
        "chaos run with seed {} found {} violations (report: {}, logs: {}); replay with \
         REPLIKV_CHAOS_SEED={}:\n{}",
        settings.seed,
        violations.len(),
        report_path.display(),
        artifacts.display(),
        settings.seed,
        violations.join("\n")
    );
}

/// Plays the seeded fault schedule for the length of the faulty phase, one fault at a time,
/// recording each fault in the nemesis.
async fn play_schedule(
    settings: &Settings,
    cluster: &mut Cluster,
    nemesis: &mut Nemesis,
    client: &Client,
    history: &History,
) {
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let plan = nemesis::schedule(
        &mut rng,
        settings.nodes,
        settings.fault_phase,
        settings.large.is_some(),
    );
    let phase_start = Instant::now();
    for (i, planned) in plan.iter().enumerate() {
        tokio::time::sleep_until((phase_start + planned.start).into()).await;
        let primary = if planned.kind.targets_primary() {
            current_primary(cluster, client).await
        } else {
            None
        };
        let action = nemesis::plan_action(&mut rng, planned.kind, settings.nodes, primary);
        progress(
            history,
            &format!(
                "start {} for {:.1}s: {action:?} (primary {primary:?})",
                planned.kind.name(),
                planned.length.as_secs_f64()
            ),
        );
        let started_at = history.now();
        block_in_place(|| nemesis.start(cluster, &action))
            .unwrap_or_else(|error| panic!("the nemesis could not start a fault: {error}"));
        tokio::time::sleep(planned.length).await;
        block_in_place(|| nemesis.heal(cluster))
            .unwrap_or_else(|error| panic!("the nemesis could not heal: {error}"));
        let ended_at = history.now();
        // Until the next fault, watch how long the cluster takes to agree on a primary again.
        let next_start = plan
            .get(i + 1)
            .map_or(settings.fault_phase, |next| next.start);
        let patience = (phase_start + next_start).saturating_duration_since(Instant::now());
        let recovered = agreed_primary(cluster, client, patience).await.ok();
        let recovered_after_s = recovered.map(|_| checks::seconds(history.now() - ended_at));
        progress(
            history,
            &format!(
                "healed {}; {}",
                planned.kind.name(),
                match (recovered, recovered_after_s) {
                    (Some(node), Some(after)) =>
                        format!("node {node} leads, agreed after {after:.2}s"),
                    _ => "no agreed primary before the next fault".to_string(),
                }
            ),
        );
        nemesis.records.push(FaultRecord {
            kind: planned.kind,
            action,
            primary,
            started_at,
            ended_at,
            recovered_after_s,
        });
    }
    tokio::time::sleep_until((phase_start + settings.fault_phase).into()).await;
}

/// Runs every checker on the history, the node logs and the final state, into `report`.
fn judge(
    report: &mut ChaosReport,
    records: &[Record],
    logs: &[(NodeId, String)],
    final_state: Option<&FinalState>,
) {
    report.count_operations(records);
    report.primaries = checks::check_primaries(logs, records);
    report.linearizability = linearizability::check_registers(
        records,
        |key| key.starts_with(workload::REGISTER_PREFIX),
        LINEARIZABILITY_BUDGET,
    );
    // Without a final state (the cluster never recovered, already a problem in the report),
    // every write would look lost: the lost-write and divergence checks need one.
    let Some(state) = final_state else {
        return;
    };
    let majority = usize::try_from(report.nodes / 2 + 1).unwrap_or(usize::MAX);
    let node_reads: BTreeMap<NodeId, Dump> = state
        .nodes
        .iter()
        .map(|(node, (_, dump))| (*node, dump.clone()))
        .collect();
    report.lost_writes = checks::check_lost_writes(
        records,
        workload::WRITE_ONCE_PREFIX,
        majority,
        &state.linearizable,
        &node_reads,
    );
    report.divergence = checks::check_divergence(&state.nodes, Some(state.primary));
    report.rolled_back_entries = state.rolled_back.clone();
}

/// Partitions need root and iptables: skip with a message, or fail under CI.
fn skip_or_fail(why: &str) {
    let ci = std::env::var("CI").is_ok_and(|value| value == "true" || value == "1");
    let message = format!(
        "the chaos test needs root and a working iptables to partition nodes: {why}. \
         Run it as root (for example `sudo -E cargo test --test chaos`)"
    );
    assert!(
        !ci,
        "CI=true, so the chaos test may not be skipped: {message}"
    );
    eprintln!("SKIPPED chaos test: {message}");
}

/// The cargo target directory: the test's `kvnode` lives in `<target>/<profile>/kvnode`.
fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kvnode"))
        .parent()
        .and_then(|profile| profile.parent())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// Each running node's answer to a status request, asked concurrently.
async fn node_statuses(cluster: &Cluster, client: &Client) -> Vec<(NodeId, Result<ClusterStatus>)> {
    let mut asks = JoinSet::new();
    for node in cluster.nodes.iter().filter(|node| node.is_running()) {
        let pinned = client
            .pinned_to(&node.client_addr)
            .with_timeout(STATUS_TIMEOUT);
        let id = node.id;
        asks.spawn(async move { (id, pinned.status().await) });
    }
    let mut answers = Vec::new();
    while let Some(joined) = asks.join_next().await {
        if let Ok(answer) = joined {
            answers.push(answer);
        }
    }
    answers.sort_by_key(|(id, _)| *id);
    answers
}

/// The node that says it is primary in the highest epoch, if any answers so.
async fn current_primary(cluster: &Cluster, client: &Client) -> Option<NodeId> {
    node_statuses(cluster, client)
        .await
        .into_iter()
        .filter_map(|(_, status)| status.ok())
        .filter(|status| status.role == Role::Primary)
        .max_by_key(|status| status.epoch)
        .map(|status| status.node_id)
}

/// Waits until every node answers, exactly one says it is primary, and all agree on it. `Err`
/// describes the last views seen.
async fn agreed_primary(
    cluster: &Cluster,
    client: &Client,
    patience: Duration,
) -> std::result::Result<NodeId, String> {
    let deadline = Instant::now() + patience;
    loop {
        let views = node_statuses(cluster, client).await;
        let answered: Vec<&ClusterStatus> =
            views.iter().filter_map(|(_, v)| v.as_ref().ok()).collect();
        let primaries: Vec<&&ClusterStatus> = answered
            .iter()
            .filter(|status| status.role == Role::Primary)
            .collect();
        if let [primary] = primaries.as_slice() {
            let everyone = answered.len() == views.len() && views.len() == cluster.nodes.len();
            if everyone && answered.iter().all(|s| s.primary == Some(primary.node_id)) {
                return Ok(primary.node_id);
            }
        }
        if Instant::now() > deadline {
            let described: Vec<String> = views
                .iter()
                .map(|(id, view)| match view {
                    Ok(s) => format!(
                        "node {id}: {} epoch {} primary {:?} applied {}",
                        s.role, s.epoch, s.primary, s.applied_index
                    ),
                    Err(error) => format!("node {id}: {error}"),
                })
                .collect();
            return Err(described.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the cluster holds once healed and quiet.
struct FinalState {
    primary: NodeId,
    /// The primary's state read with linearizable scans, and when that read began and ended.
    linearizable: Dump,
    linearizable_window: (Nanos, Nanos),
    /// Every node's state read with stale scans, and the log index it reflects.
    nodes: BTreeMap<NodeId, (u64, Dump)>,
    rolled_back: BTreeMap<NodeId, u64>,
    /// The index every node had applied once converged.
    applied_index: u64,
}

/// Heal is done: waits for a primary, writes a barrier at `w=all`, waits until every node has
/// applied the same index, then reads everything back. Problems go to `problems`; `None` when
/// the cluster never recovered enough to read it.
async fn read_final_state(
    cluster: &Cluster,
    client: &Client,
    history: &History,
    patience: Duration,
    problems: &mut Vec<String>,
) -> Option<FinalState> {
    let primary = match agreed_primary(cluster, client, patience).await {
        Ok(primary) => primary,
        Err(views) => {
            problems.push(format!(
                "no primary agreed by every node within {patience:?} after heal: {views}"
            ));
            return None;
        }
    };
    let barrier_index = match barrier(client, patience).await {
        Ok(index) => index,
        Err(error) => {
            problems.push(format!(
                "the cluster accepted no w=all write within {patience:?} after heal: {error}"
            ));
            return None;
        }
    };
    let statuses = match converged(cluster, client, barrier_index, patience).await {
        Ok(statuses) => statuses,
        Err(views) => {
            problems.push(format!(
                "nodes did not converge on one applied index (>= barrier {barrier_index}) within \
                 {patience:?} after heal: {views}"
            ));
            return None;
        }
    };
    let mut nodes = BTreeMap::new();
    for node in &cluster.nodes {
        let pinned = client.pinned_to(&node.client_addr);
        match read_all(&pinned, ReadConsistency::Stale).await {
            Ok(state) => {
                nodes.insert(node.id, state);
            }
            Err(error) => problems.push(format!("stale read of node {} failed: {error}", node.id)),
        }
    }
    let invoked_at = history.now();
    let linearizable = match read_all(client, ReadConsistency::Linearizable).await {
        Ok((_, dump)) => dump,
        Err(error) => {
            problems.push(format!("the final linearizable read failed: {error}"));
            return None;
        }
    };
    let rolled_back = statuses
        .iter()
        .map(|status| (status.node_id, status.rolled_back_entries))
        .collect();
    let linearizable_window = (invoked_at, history.now());
    let applied_index = statuses.first().map_or(0, |status| status.applied_index);
    Some(FinalState {
        applied_index,
        primary,
        linearizable,
        linearizable_window,
        nodes,
        rolled_back,
    })
}

/// Adds the final linearizable read of every register key to the history, as one more read per
/// key: the registers' final values must then fit their histories too.
fn record_final_register_reads(history: &History, state: &FinalState) {
    let keys: std::collections::BTreeSet<String> = history
        .records()
        .into_iter()
        .map(|record| record.op.key().to_string())
        .filter(|key| key.starts_with(workload::REGISTER_PREFIX))
        .collect();
    let (invoked_at, completed_at) = state.linearizable_window;
    for key in keys {
        history.record(Record {
            // One process per read: a process never has two operations in flight.
            process: history.new_process(),
            door: Door::Quic,
            outcome: Outcome::ReadOk {
                value: state.linearizable.get(&key).cloned(),
            },
            op: Op::Read { key },
            invoked_at,
            completed_at,
            served: None,
        });
    }
}

/// A `w=all` write after heal: once acknowledged, the primary has committed everything before it
/// and every in-sync node holds it. Returns its log index.
async fn barrier(client: &Client, patience: Duration) -> Result<u64> {
    let deadline = Instant::now() + patience;
    loop {
        let attempt = client
            .put(
                "x/barrier",
                "healed",
                WriteConcern::All,
                Duration::from_secs(10),
            )
            .await;
        match attempt {
            Ok((result, _)) => return Ok(result.index),
            Err(error) if Instant::now() > deadline => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Waits until every node answers with the same applied index, at or past `index`.
async fn converged(
    cluster: &Cluster,
    client: &Client,
    index: u64,
    patience: Duration,
) -> std::result::Result<Vec<ClusterStatus>, String> {
    let deadline = Instant::now() + patience;
    loop {
        let views = node_statuses(cluster, client).await;
        let statuses: Vec<ClusterStatus> = views
            .iter()
            .filter_map(|(_, v)| v.as_ref().ok().cloned())
            .collect();
        let all_answered = statuses.len() == cluster.nodes.len();
        let applied: Vec<u64> = statuses.iter().map(|s| s.applied_index).collect();
        if all_answered
            && applied.iter().all(|&a| a == applied[0])
            && applied.first().is_some_and(|&a| a >= index)
        {
            return Ok(statuses);
        }
        if Instant::now() > deadline {
            let described: Vec<String> = views
                .iter()
                .map(|(id, view)| match view {
                    Ok(s) => format!(
                        "node {id}: {} epoch {} last {} commit {} applied {}",
                        s.role, s.epoch, s.last_index, s.commit_index, s.applied_index
                    ),
                    Err(error) => format!("node {id}: {error}"),
                })
                .collect();
            return Err(described.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every key the test writes, read with `consistency` through `client`, and the log index the
/// reads reflect. The cluster is quiet, so every prefix's scan must reflect the same index; if
/// not, something wrote meanwhile and the read is repeated.
async fn read_all(client: &Client, consistency: ReadConsistency) -> Result<(u64, Dump)> {
    const ATTEMPTS: usize = 5;
    let mut last = (0, Dump::new());
    for _ in 0..ATTEMPTS {
        let mut dump = Dump::new();
        let mut indices = Vec::new();
        for prefix in workload::all_prefixes() {
            let (pairs, meta) = client.scan(&prefix, SCAN_LIMIT, consistency).await?;
            indices.push(meta.index);
            for (key, value) in pairs {
                dump.insert(
                    String::from_utf8_lossy(&key).into_owned(),
                    String::from_utf8_lossy(&value).into_owned(),
                );
            }
        }
        let index = indices.first().copied().unwrap_or(0);
        if indices.iter().all(|&i| i == index) {
            return Ok((index, dump));
        }
        last = (index, dump);
    }
    Ok(last)
}

/// Copies the node logs and writes the history as JSON lines into `dir`.
fn save_artifacts(cluster: &Cluster, records: &[history::Record], dir: &std::path::Path) {
    if let Err(error) = std::fs::create_dir_all(dir) {
        eprintln!("cannot create {}: {error}", dir.display());
        return;
    }
    for node in &cluster.nodes {
        let to = dir.join(format!("node-{}.log", node.id));
        if let Err(error) = std::fs::copy(&node.log_path, &to) {
            eprintln!("cannot copy {}: {error}", node.log_path.display());
        }
    }
    let path = dir.join("history.jsonl");
    let written = std::fs::File::create(&path).and_then(|file| {
        let mut out = std::io::BufWriter::new(file);
        for record in records {
            serde_json::to_writer(&mut out, record).map_err(std::io::Error::other)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    });
    if let Err(error) = written {
        eprintln!("cannot write {}: {error}", path.display());
    }
}
