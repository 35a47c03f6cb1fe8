//! The side-by-side comparison of issue 11: one closed-loop load generator with a driver per
//! system (replikv through `replikv::client::Client`, Redis over RESP, etcd over its v3 JSON
//! gateway), run workload by workload, interleaved, with the median of the rounds printed as one
//! table of ratios and goals.
//!
//! `compare_load run` drives systems that are already running (`scripts/compare.sh` starts
//! them): for each workload, `--rounds` rounds, each round runs every system once (the order
//! rotates from round to round so no system always runs first), with the same clients, value
//! size, key space, warm-up and window. Before the gets, each system's key space is written once
//! (untimed). `compare_load noop-server` answers both protocols without doing anything; a run
//! with `--noop` adds it to the `w=majority` rounds, which shows what the generator itself can
//! push. See `docs/BENCHMARKS.md`, "Side by side with Redis and etcd".

mod etcd;
mod http;
mod measure;
mod noop;
mod report;
mod resp;
mod systems;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use replikv::client::{Client, MAX_VALUE_BYTES};
use replikv::config::tuning::{CLIENT_TIMEOUT_MS, MAX_CONCURRENT_BIDI_STREAMS};
use replikv::config::ClientConfig;
use replikv::{Error, ErrorKind, Result, WriteConcern};

use crate::etcd::EtcdConnection;
use crate::measure::{measure, open_connections, Measurement, Shape};
use crate::report::{render, render_ceiling, render_cpu, render_doors, summarize, Record};
use crate::systems::{
    key_name, step_for, Connection, Endpoint, RedisPlan, Step, System, Value, Workload,
};

/// The workloads whose rounds include the no-op server: the heaviest write and the read, both
/// at `--clients` clients, where the generator is most likely to be the limit.
const NOOP_WORKLOADS: [Workload; 2] = [Workload::PutMajority, Workload::GetLinearizable];

#[derive(Parser)]
#[command(
    about = "Side-by-side load generator: replikv, Redis and etcd under the same closed loop"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the comparison against running systems and print the table.
    Run(Box<RunArgs>),
    /// Answer RESP and HTTP requests at once, storing nothing (the generator's ceiling).
    NoopServer {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:26300")]
        listen: String,
    },
}

#[derive(Args, Clone, Debug, Serialize)]
struct RunArgs {
    /// Systems to drive (each needs its address below).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [System::Replikv, System::Redis, System::Etcd])]
    systems: Vec<System>,
    /// Workloads, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Workload::PutMajority, Workload::PutAll, Workload::PutOne, Workload::PutSingleClient, Workload::GetLinearizable])]
    workloads: Vec<Workload>,
    /// Rounds of each workload; the table shows the median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Length of the measured window of each run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Load before the window that is not counted, in seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup_seconds: f64,
    /// Concurrent clients, each with one operation in flight (1 for the single-client workload).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Keys are drawn uniformly from this many.
    #[arg(long, default_value_t = 100_000)]
    key_space: u64,
    /// Deadline of each operation on every system, and the timeout of Redis's `WAIT`, in ms.
    #[arg(long, default_value_t = CLIENT_TIMEOUT_MS)]
    timeout_ms: u64,
    /// replikv's client configuration (`client.toml` of `kvnode dev`).
    #[arg(long)]
    replikv_config: Option<PathBuf>,
    /// `host:port` of every replikv node's HTTP door, in node id order (plain HTTP, as `kvnode dev`
    /// serves it); the primary's is driven.
    #[arg(long, value_delimiter = ',')]
    replikv_http: Vec<String>,
    /// The `Authorization` header the HTTP door's requests carry, if any (`Bearer <token>`).
    #[arg(long)]
    #[serde(skip)]
    replikv_http_authorization: Option<String>,
    /// `host:port` of every replikv node's RESP door, in node id order; the primary's is driven.
    #[arg(long, value_delimiter = ',')]
    replikv_resp: Vec<String>,
    /// `USER:PASSWORD` each RESP connection to replikv sends in `AUTH`, if any.
    #[arg(long)]
    #[serde(skip)]
    replikv_resp_auth: Option<String>,
    /// Pids of the replikv nodes, for CPU per operation.
    #[arg(long, value_delimiter = ',')]
    replikv_pids: Vec<u32>,
    /// `host:port` of the Redis primary.
    #[arg(long)]
    redis: Option<String>,
    #[arg(long, value_delimiter = ',')]
    redis_pids: Vec<u32>,
    /// Replicas the `WAIT` after a `w=majority` `SET` waits for (issue 11 compares with 2, every
    /// replica; 1 would be a majority of three).
    #[arg(long, default_value_t = 2)]
    redis_majority_replicas: u32,
    /// Replicas of the Redis setup (the `w=all` `WAIT` waits for all of them).
    #[arg(long, default_value_t = 2)]
    redis_replicas: u32,
    /// `host:port` of every etcd member's client port; the leader is driven.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    etcd_pids: Vec<u32>,
    /// `host:port` of a no-op server: adds the generator's ceiling to the `w=majority` rounds.
    #[arg(long)]
    noop: Option<String>,
    #[arg(long, value_delimiter = ',')]
    noop_pids: Vec<u32>,
    /// Do not write the key space before the gets (their keys may then be missing).
    #[arg(long)]
    no_prefill: bool,
    /// Also write every round's figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl RunArgs {
    fn validate(&self) -> Result<()> {
        let invalid = |message: String| Err(Error::Config(message));
        let max_clients = MAX_CONCURRENT_BIDI_STREAMS as usize;
        if !(1..=max_clients).contains(&self.clients) {
            return invalid(format!("--clients must be 1 to {max_clients}"));
        }
        if self.rounds == 0 {
            return invalid("--rounds must be at least 1".into());
        }
        if !(self.seconds > 0.0 && self.seconds.is_finite()) {
            return invalid("--seconds must be positive".into());
        }
        if !(self.warmup_seconds >= 0.0 && self.warmup_seconds.is_finite()) {
            return invalid("--warmup-seconds must be 0 or more".into());
        }
        if self.value_size > MAX_VALUE_BYTES {
            return invalid(format!("--value-size must be at most {MAX_VALUE_BYTES}"));
        }
        if self.key_space == 0 {
            return invalid("--key-space must be at least 1".into());
        }
        if self.timeout_ms == 0 {
            return invalid("--timeout-ms must be positive".into());
        }
        if self
            .replikv_resp_auth
            .as_deref()
            .is_some_and(|auth| !auth.contains(':'))
        {
            return invalid("--replikv-resp-auth must be USER:PASSWORD".into());
        }
        for system in &self.systems {
            let missing = match system {
                System::Replikv => self.replikv_config.is_none().then_some("--replikv-config"),
                System::Redis => self.redis.is_none().then_some("--redis"),
                System::Etcd => self.etcd.is_empty().then_some("--etcd"),
                System::NoopResp | System::NoopHttp => self.noop.is_none().then_some("--noop"),
                System::ReplikvHttp if self.replikv_http.is_empty() => Some("--replikv-http"),
                System::ReplikvResp if self.replikv_resp.is_empty() => Some("--replikv-resp"),
                // The doors' primary is found through the QUIC client.
                System::ReplikvHttp | System::ReplikvResp => {
                    self.replikv_config.is_none().then_some("--replikv-config")
                }
            };
            if let Some(flag) = missing {
                return invalid(format!("{system} is to be driven but {flag} is not given"));
            }
        }
        Ok(())
    }

    fn shape(&self, workload: Workload) -> Shape {
        Shape {
            clients: workload.clients(self.clients),
            value_size: self.value_size,
            key_space: self.key_space,
            warmup: Duration::from_secs_f64(self.warmup_seconds),
            duration: Duration::from_secs_f64(self.seconds),
            timeout: self.timeout(),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    fn redis_plan(&self) -> RedisPlan {
        RedisPlan {
            majority_replicas: self.redis_majority_replicas,
            all_replicas: self.redis_replicas,
            wait_timeout: self.timeout(),
        }
    }

    fn pids(&self, system: System) -> &[u32] {
        match system {
            System::Replikv | System::ReplikvHttp | System::ReplikvResp => &self.replikv_pids,
            System::Redis => &self.redis_pids,
            System::Etcd => &self.etcd_pids,
            System::NoopResp | System::NoopHttp => &self.noop_pids,
        }
    }

    /// The systems of one round of `workload`, rotated by `round`; the no-op ceiling joins the
    /// rounds of [`NOOP_WORKLOADS`] when a no-op server is given.
    fn round_systems(&self, workload: Workload, round: usize) -> Vec<System> {
        let mut systems = self.systems.clone();
        if self.noop.is_some() && NOOP_WORKLOADS.contains(&workload) {
            for noop in [System::NoopResp, System::NoopHttp] {
                if !systems.contains(&noop) {
                    systems.push(noop);
                }
            }
        }
        systems.retain(|system| step_for(*system, workload, self.redis_plan()).is_some());
        if !systems.is_empty() {
            let shift = round % systems.len();
            systems.rotate_left(shift);
        }
        systems
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|err| Error::Internal(format!("cannot start the async runtime: {err}")))
            .and_then(|runtime| runtime.block_on(run(*args))),
        // The no-op server keeps to one thread: see noop.rs.
        Command::NoopServer { listen } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| Error::Internal(format!("cannot start the async runtime: {err}")))
            .and_then(|runtime| runtime.block_on(noop::serve(&listen))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("compare_load: {err}");
            match err.kind() {
                ErrorKind::Config => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

async fn run(args: RunArgs) -> Result<()> {
    args.validate()?;
    let mut records = Vec::new();
    for &workload in &args.workloads {
        if workload.reads() && !args.no_prefill {
            let real = |system: &System| !matches!(system, System::NoopResp | System::NoopHttp);
            for system in args.round_systems(workload, 0).into_iter().filter(real) {
                if let Err(error) = prefill(&args, system).await {
                    eprintln!("prefill of {system} failed: {error}");
                }
            }
        }
        for round in 0..args.rounds {
            for system in args.round_systems(workload, round) {
                let record = run_one(&args, workload, system, round).await;
                eprintln!("{}", progress_line(&record));
                records.push(record);
            }
        }
    }

    let summaries = summarize(&records);
    println!(
        "Median of {} round(s) of {} s (after {} s of warm-up), {} clients, {}-byte values, {} keys.",
        args.rounds, args.seconds, args.warmup_seconds, args.clients, args.value_size, args.key_space
    );
    let loads: Vec<f64> = records
        .iter()
        .filter_map(|record| record.measurement.as_ref()?.load_average)
        .collect();
    if let (Some(low), Some(high)) = (
        loads.iter().copied().reduce(f64::min),
        loads.iter().copied().reduce(f64::max),
    ) {
        // A busy machine makes every figure a lower bound: say how busy it was.
        println!("1-minute load average when the windows opened: {low:.1} to {high:.1}.");
    }
    println!();
    println!("{}", render(&summaries, &args.workloads));
    if args
        .systems
        .iter()
        .any(|system| matches!(system, System::ReplikvHttp | System::ReplikvResp))
    {
        println!("{}", render_doors(&summaries, &args.workloads));
    }
    println!("{}", render_cpu(&summaries));
    if args.noop.is_some() {
        println!("{}", render_ceiling(&summaries, &args.workloads));
    }
    if let Some(path) = &args.json {
        #[derive(Serialize)]
        struct Output<'a> {
            args: &'a RunArgs,
            records: &'a [Record],
        }
        let json = serde_json::to_vec_pretty(&Output {
            args: &args,
            records: &records,
        })
        .map_err(|err| Error::Internal(format!("cannot encode the figures: {err}")))?;
        std::fs::write(path, json)
            .map_err(|err| Error::Config(format!("cannot write {}: {err}", path.display())))?;
    }
    Ok(())
}

/// One run of `workload` on `system`: connect, warm up, measure, disconnect.
async fn run_one(args: &RunArgs, workload: Workload, system: System, round: usize) -> Record {
    let outcome = measure_one(args, workload, system).await;
    let (measurement, error) = match outcome {
        Ok(measurement) => (Some(measurement), None),
        Err(error) => (None, Some(error.to_string())),
    };
    Record {
        workload,
        system,
        round,
        measurement,
        error,
    }
}

async fn measure_one(args: &RunArgs, workload: Workload, system: System) -> Result<Measurement> {
    let step = step_for(system, workload, args.redis_plan())
        .ok_or_else(|| Error::InvalidRequest(format!("{system} has no {}", workload.describe())))?;
    let shape = args.shape(workload);
    let pids = args.pids(system);
    match system {
        System::Replikv => {
            let client = replikv_client(args).await?;
            let connections =
                open_connections(&Endpoint::Replikv(&client), shape.clients, shape.key_space).await;
            let measured = match connections {
                Ok(connections) => Ok(measure(connections, step, shape, pids, || async {
                    Err(Error::Internal(
                        "a replikv session is never reopened".into(),
                    ))
                })
                .await),
                Err(error) => Err(error),
            };
            client.close().await;
            measured
        }
        System::Redis
        | System::NoopResp
        | System::Etcd
        | System::NoopHttp
        | System::ReplikvHttp
        | System::ReplikvResp => {
            let addr = tcp_target(args, system).await?;
            let connections = open_connections(
                &tcp_endpoint(system, &addr, args),
                shape.clients,
                shape.key_space,
            )
            .await?;
            let reopen_args = args.clone();
            Ok(measure(connections, step, shape, pids, move || {
                let (addr, args) = (addr.clone(), reopen_args.clone());
                async move { Connection::open(&tcp_endpoint(system, &addr, &args)).await }
            })
            .await)
        }
    }
}

/// How `system`, reached over TCP at `addr`, is spoken to (with the credentials `args` give
/// replikv's doors).
fn tcp_endpoint<'a>(system: System, addr: &'a str, args: &'a RunArgs) -> Endpoint<'a> {
    match system {
        System::Redis | System::NoopResp => Endpoint::Resp(addr),
        System::ReplikvResp => Endpoint::ReplikvResp(
            addr,
            args.replikv_resp_auth
                .as_deref()
                .and_then(|auth| auth.split_once(':')),
        ),
        System::ReplikvHttp => {
            Endpoint::ReplikvHttp(addr, args.replikv_http_authorization.as_deref())
        }
        System::Etcd | System::NoopHttp | System::Replikv => Endpoint::Http(addr),
    }
}

async fn replikv_client(args: &RunArgs) -> Result<Client> {
    let path = args
        .replikv_config
        .as_deref()
        .ok_or_else(|| Error::Config("--replikv-config is not given".into()))?;
    let config = ClientConfig::load(path)?;
    Client::connect(&config).await
}

/// The TCP address a RESP or HTTP system is driven at: the Redis primary, the etcd leader (asked
/// again for every run), or the no-op server.
async fn tcp_target(args: &RunArgs, system: System) -> Result<String> {
    let missing = |flag: &str| Error::Config(format!("{flag} is not given"));
    match system {
        System::Redis => args.redis.clone().ok_or_else(|| missing("--redis")),
        System::NoopResp | System::NoopHttp => args.noop.clone().ok_or_else(|| missing("--noop")),
        System::Etcd => etcd_leader(&args.etcd).await,
        System::ReplikvHttp => replikv_primary_door(args, &args.replikv_http).await,
        System::ReplikvResp => replikv_primary_door(args, &args.replikv_resp).await,
        System::Replikv => Err(Error::InvalidRequest(
            "replikv is not driven over TCP".into(),
        )),
    }
}

/// The door of replikv's primary among `doors` (in node id order), as the QUIC client finds it.
async fn replikv_primary_door(args: &RunArgs, doors: &[String]) -> Result<String> {
    let client = replikv_client(args).await?;
    let status = client.status().await;
    client.close().await;
    let primary = status?
        .primary
        .ok_or_else(|| Error::Unavailable("replikv has no primary".into()))?;
    usize::try_from(primary)
        .ok()
        .and_then(|id| doors.get(id.checked_sub(1)?))
        .cloned()
        .ok_or_else(|| Error::Config(format!("no door given for node {primary} in {doors:?}")))
}

/// The member of `members` that reports itself the leader.
async fn etcd_leader(members: &[String]) -> Result<String> {
    let mut last_error = Error::Unavailable("no etcd member given".into());
    for member in members {
        let outcome = match EtcdConnection::connect(member).await {
            Ok(mut connection) => connection.is_leader().await,
            Err(error) => Err(error),
        };
        match outcome {
            Ok(true) => return Ok(member.clone()),
            Ok(false) => {}
            Err(error) => last_error = error,
        }
    }
    Err(Error::Unavailable(format!(
        "no etcd member of {members:?} is the leader (last error: {last_error})"
    )))
}

/// Writes every key of the key space once on `system` (untimed), spread over `--clients`
/// connections, so that the gets find their keys. replikv writes at `w=majority`, Redis without
/// `WAIT` (its gets read the primary), etcd through Raft as always.
async fn prefill(args: &RunArgs, system: System) -> Result<()> {
    let step = match system {
        System::Replikv => Step::ReplikvPut(WriteConcern::Majority),
        System::Redis | System::NoopResp | System::ReplikvResp => Step::RedisSet(None),
        System::Etcd | System::NoopHttp => Step::EtcdPut,
        System::ReplikvHttp => Step::HttpPut(WriteConcern::Majority),
    };
    let started = std::time::Instant::now();
    let client = match system {
        System::Replikv => Some(replikv_client(args).await?),
        _ => None,
    };
    let addr = match system {
        System::Replikv => String::new(),
        _ => tcp_target(args, system).await?,
    };
    let endpoint = match &client {
        Some(client) => Endpoint::Replikv(client),
        None => tcp_endpoint(system, &addr, args),
    };
    let connections = open_connections(&endpoint, args.clients, args.key_space).await?;
    let stride = connections.len() as u64;
    let mut writers = tokio::task::JoinSet::new();
    for (first, mut connection) in (0u64..).zip(connections) {
        let (key_space, value, timeout) = (
            args.key_space,
            Value::new(vec![b'p'; args.value_size]),
            args.timeout(),
        );
        writers.spawn(async move {
            let mut failures = 0u64;
            let mut key = first;
            while key < key_space {
                if connection
                    .run(step, key_name(key).as_bytes(), &value, timeout)
                    .await
                    .is_err()
                {
                    failures += 1;
                }
                key += stride;
            }
            failures
        });
    }
    let mut failures = 0;
    while let Some(joined) = writers.join_next().await {
        failures += joined.unwrap_or(1);
    }
    if let Some(client) = client {
        client.close().await;
    }
    eprintln!(
        "prefill of {system}: {} keys in {:.1} s, {failures} failed",
        args.key_space,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn progress_line(record: &Record) -> String {
    let what = format!(
        "round {} {:<26} {:<20}",
        record.round + 1,
        record.workload.describe(),
        record.system.to_string()
    );
    match (&record.measurement, &record.error) {
        (Some(m), _) => format!(
            "{what} {:>9.0}/s p50 {:.2} ms p99 {:.2} ms failed {}{} servers {} µs/op generator {} µs/op load {}",
            m.throughput,
            m.p50_ms,
            m.p99_ms,
            m.failed,
            if record.workload.reads() && m.succeeded > 0 {
                format!(" found {:.0}%", m.read_hits as f64 * 100.0 / m.succeeded as f64)
            } else {
                String::new()
            },
            m.server_cpu_us_per_op.map_or("-".into(), |us| format!("{us:.0}")),
            m.generator_cpu_us_per_op.map_or("-".into(), |us| format!("{us:.1}")),
            m.load_average.map_or("-".into(), |load| format!("{load:.1}")),
        ),
        (None, error) => format!("{what} did not run: {}", error.as_deref().unwrap_or("?")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["compare_load", "run"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(args) => *args,
            Command::NoopServer { .. } => panic!("parsed as noop-server"),
        }
    }

    #[test]
    fn rounds_rotate_and_skip_systems_without_the_workload() {
        let args = run_args(&[]);
        assert_eq!(
            args.round_systems(Workload::PutMajority, 0),
            [System::Replikv, System::Redis, System::Etcd]
        );
        assert_eq!(
            args.round_systems(Workload::PutMajority, 1),
            [System::Redis, System::Etcd, System::Replikv]
        );
        assert_eq!(
            args.round_systems(Workload::PutAll, 1),
            [System::Redis, System::Replikv]
        );
    }

    #[test]
    fn the_noop_server_joins_its_workloads_once() {
        let args = run_args(&["--noop", "127.0.0.1:1", "--systems", "redis,noop-resp"]);
        assert_eq!(
            args.round_systems(Workload::GetLinearizable, 0),
            [System::Redis, System::NoopResp, System::NoopHttp]
        );
        assert_eq!(
            args.round_systems(Workload::PutOne, 0),
            [System::Redis, System::NoopResp]
        );
    }

    #[test]
    fn a_system_without_its_address_is_a_config_error() {
        let error = run_args(&["--systems", "etcd"]).validate().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config);
        assert!(error.to_string().contains("--etcd"), "{error}");
        let error = run_args(&["--redis", "x", "--systems", "redis", "--rounds", "0"])
            .validate()
            .unwrap_err();
        assert!(error.to_string().contains("--rounds"), "{error}");
        run_args(&["--redis", "x", "--systems", "redis"])
            .validate()
            .unwrap();
    }
}
