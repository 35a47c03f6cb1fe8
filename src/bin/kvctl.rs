//! `kvctl`: the command line of replikv.
//!
//! Thin by design: it parses flags, finds the client configuration (`--config`, else
//! `$REPLIKV_CONFIG`, else `./.replikv/client.toml` as written by `kvnode dev`), calls the client
//! library and prints the answer. Results go to stdout (the bare value for `get`, so it composes
//! in shell pipelines, or JSON with `--json`); diagnostics go to stderr. Each kind of failure has
//! its own exit code, listed in [`EXIT_CODES_HELP`].

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;

use replikv::bench::{self, BenchOptions, StopAfter};
use replikv::certs::{self, CertRole, CertsInit};
use replikv::client::Client;
use replikv::config::ClientConfig;
use replikv::wire::client::{ClusterStatus, MemberHealth, MemberStatus, ResponseMeta, Role};
use replikv::wire::message::Member;
use replikv::{Error, NodeId, ReadConsistency, WriteConcern};

/// Printed at the end of `kvctl --help`.
const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  other error (configuration, storage, internal)
  2  usage error (bad flags or arguments, or a request the cluster cannot accept as given)
  3  key not found (get)
  4  write concern not met before the timeout (the write may still apply)
  5  unavailable: no node reachable, or no primary in time
  6  refused: the certificate's role does not allow this, or TLS failed (wrong CA, no certificate)

The client configuration is taken from --config, else $REPLIKV_CONFIG, else ./.replikv/client.toml
(written by `kvnode dev`).";

/// Exit code of a successful command.
const EXIT_OK: u8 = 0;
/// Any failure without a code of its own.
const EXIT_OTHER: u8 = 1;
/// A usage error; clap uses the same code for bad flags.
const EXIT_USAGE: u8 = 2;
/// `get` found no value.
const EXIT_NOT_FOUND: u8 = 3;
/// The write concern was not met in time.
const EXIT_WRITE_CONCERN: u8 = 4;
/// No node reachable, or no primary in time.
const EXIT_UNAVAILABLE: u8 = 5;
/// Refused by role or TLS.
const EXIT_REFUSED: u8 = 6;

#[derive(Parser, Debug)]
#[command(
    name = "kvctl",
    version,
    about = "Command line of replikv, a replicated key-value store",
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    /// Client configuration file (nodes, certificates, defaults).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    /// Print results as JSON, for scripts.
    #[arg(long, global = true)]
    json: bool,

    /// Deadline of the whole operation, retries included, e.g. 500ms, 5s, 1m.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the value of KEY (exit code 3 if it does not exist).
    Get {
        key: String,
        /// linearizable (the primary, leadership confirmed), local (the primary, no wait) or
        /// stale (any node).
        #[arg(long, default_value = "linearizable", value_parser = parse_consistency)]
        consistency: ReadConsistency,
        /// Ask this node only (client address), without following redirects.
        #[arg(long, value_name = "ADDR")]
        node: Option<String>,
    },
    /// Set KEY to VALUE.
    Put {
        key: String,
        value: String,
        /// Write concern: 1, N (a number of voters), majority or all. Default from the config.
        #[arg(long = "w", value_name = "W", value_parser = parse_write_concern)]
        write_concern: Option<WriteConcern>,
    },
    /// Remove KEY (succeeds whether or not it existed; --json says which).
    Delete {
        key: String,
        /// Write concern: 1, N (a number of voters), majority or all. Default from the config.
        #[arg(long = "w", value_name = "W", value_parser = parse_write_concern)]
        write_concern: Option<WriteConcern>,
    },
    /// Print the pairs whose key starts with PREFIX, one `key<TAB>value` per line.
    Scan {
        /// Key prefix; all keys when omitted.
        prefix: Option<String>,
        /// Most pairs to print.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long, default_value = "linearizable", value_parser = parse_consistency)]
        consistency: ReadConsistency,
        /// Ask this node only (client address), without following redirects.
        #[arg(long, value_name = "ADDR")]
        node: Option<String>,
    },
    /// Show the cluster: members, roles, log positions, lag and health.
    Status {
        /// Ask this node (client address) for its own view instead of the primary's.
        #[arg(long, value_name = "ADDR")]
        node: Option<String>,
    },
    /// Cluster membership.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Certificates for nodes and clients.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Load the cluster with concurrent sessions; report throughput and latency percentiles.
    Bench(BenchArgs),
}

/// The flags of `kvctl bench` (see `replikv::bench` for what a run does).
#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Concurrent sessions, each with one operation in flight.
    #[arg(long, default_value_t = bench::DEFAULT_CLIENTS)]
    clients: usize,
    /// Stop after this many operations in all.
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    requests: Option<u64>,
    /// Stop after this long, e.g. 10s, 1m (default 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Bytes per value written.
    #[arg(long, value_name = "BYTES", default_value_t = bench::DEFAULT_VALUE_SIZE)]
    value_size: usize,
    /// Keys are drawn uniformly from this many.
    #[arg(long, value_name = "N", default_value_t = bench::DEFAULT_KEY_SPACE)]
    key_space: u64,
    /// Write concern of the puts: 1, N, majority or all. Default from the config.
    #[arg(long = "w", value_name = "W", value_parser = parse_write_concern)]
    write_concern: Option<WriteConcern>,
    /// Consistency of the gets: linearizable, local or stale.
    #[arg(long, default_value = "linearizable", value_parser = parse_consistency)]
    consistency: ReadConsistency,
    /// Fraction of operations that are gets: 0.0 only puts, 1.0 only gets.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0)]
    read_ratio: f64,
    /// Write every key of the key space once before the clock starts (so gets find values).
    #[arg(long)]
    prefill: bool,
}

#[derive(Subcommand, Debug)]
enum MemberCommand {
    /// List the members as the cluster knows them.
    List,
    /// Add node ID as a learner (admin certificate). The primary streams it the log once a node
    /// with that id runs at PEER_ADDR, and makes it a voter when it has caught up. Start the node
    /// with `kvnode --config FILE` listing itself (as a learner), or use `kvnode --join ADDR`
    /// instead of this command.
    Add {
        id: NodeId,
        /// The node's client address, host:port.
        #[arg(value_parser = parse_host_port)]
        client_addr: String,
        /// The node's peer address, host:port.
        #[arg(value_parser = parse_host_port)]
        peer_addr: String,
        /// Wait until the node has caught up and is a voter, showing its progress (Ctrl-C stops
        /// waiting, not the catch-up).
        #[arg(long)]
        wait: bool,
    },
    /// Remove node ID (admin certificate). Removing the primary makes it step down once the
    /// change is committed; the others elect a new primary.
    Remove { id: NodeId },
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Make a cluster CA, node certificates and client certificates (keys are written 0600).
    Init {
        /// Directory to write the files to.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Number of nodes; node i (from 1) is dialled at 127.0.0.(10+i) unless --node-host says
        /// otherwise.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// ID=HOST: a host (IP or DNS name) node ID is dialled by; repeat for several. Replaces
        /// the default 127.0.0.(10+ID) for that node.
        #[arg(long = "node-host", value_name = "ID=HOST", value_parser = parse_node_host)]
        node_hosts: Vec<(NodeId, String)>,
        /// NAME:ROLE with ROLE one of admin, readwrite, readonly; repeat for several. Default:
        /// admin:admin.
        #[arg(long = "client", value_name = "NAME:ROLE", value_parser = parse_client)]
        clients: Vec<(String, CertRole)>,
        /// Make a new CA and reissue every certificate even if a CA exists.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_OTHER);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            exit_code(&error)
        }
    };
    ExitCode::from(code)
}

/// The exit code for a failure (see [`EXIT_CODES_HELP`]).
fn exit_code(error: &Error) -> u8 {
    match error {
        Error::WriteConcernNotMet { .. } => EXIT_WRITE_CONCERN,
        Error::Unavailable(_)
        | Error::NotPrimary { .. }
        | Error::Network(_)
        | Error::ShuttingDown => EXIT_UNAVAILABLE,
        Error::Refused(_) => EXIT_REFUSED,
        Error::InvalidRequest(_) | Error::WriteConcernImpossible { .. } => EXIT_USAGE,
        Error::Protocol(_)
        | Error::Config(_)
        | Error::Storage(_)
        | Error::StaleRequest { .. }
        | Error::Internal(_) => EXIT_OTHER,
    }
}

async fn run(cli: Cli) -> Result<u8, Error> {
    match cli.command {
        Command::Certs(CertsCommand::Init {
            dir,
            nodes,
            node_hosts,
            clients,
            force,
        }) => certs_init(dir, nodes, node_hosts, clients, force, cli.json),
        command => {
            let (config, _path) = ClientConfig::discover(cli.config.as_deref())?;
            let mut client = Client::connect(&config).await?;
            if let Some(timeout) = cli.timeout {
                client = client.with_timeout(timeout);
            }
            let code = run_with_client(&client, command, cli.json).await;
            client.close().await;
            code
        }
    }
}

async fn run_with_client(client: &Client, command: Command, json: bool) -> Result<u8, Error> {
    let timeout = client.timeout();
    let default_write_concern = client.options().default_write_concern;
    match command {
        Command::Get {
            key,
            consistency,
            node,
        } => {
            let session = pinned(client, node.as_deref());
            let (value, meta) = session.get(&key, consistency).await?;
            if json {
                let (text, encoding) = match &value {
                    Some(bytes) => {
                        let (text, encoding) = printable(bytes);
                        (json!(text), json!(encoding))
                    }
                    None => (serde_json::Value::Null, serde_json::Value::Null),
                };
                print_json(&json!({
                    "key": key,
                    "found": value.is_some(),
                    "value": text,
                    "encoding": encoding,
                    "meta": meta_json(&meta),
                }))?;
            }
            match value {
                Some(bytes) => {
                    if !json {
                        print_value(&bytes)?;
                    }
                    Ok(EXIT_OK)
                }
                None => {
                    eprintln!(
                        "key {key:?} not found (node {}, epoch {}, index {})",
                        meta.node_id, meta.epoch, meta.index
                    );
                    Ok(EXIT_NOT_FOUND)
                }
            }
        }
        Command::Put {
            key,
            value,
            write_concern,
        } => {
            let write_concern = write_concern.unwrap_or(default_write_concern);
            let (result, meta) = client.put(&key, &value, write_concern, timeout).await?;
            if json {
                print_json(&json!({
                    "key": key,
                    "index": result.index,
                    "existed": result.existed,
                    "write_concern": write_concern.to_string(),
                    "meta": meta_json(&meta),
                }))?;
            }
            Ok(EXIT_OK)
        }
        Command::Delete { key, write_concern } => {
            let write_concern = write_concern.unwrap_or(default_write_concern);
            let (result, meta) = client.delete(&key, write_concern, timeout).await?;
            if json {
                print_json(&json!({
                    "key": key,
                    "index": result.index,
                    "existed": result.existed,
                    "write_concern": write_concern.to_string(),
                    "meta": meta_json(&meta),
                }))?;
            }
            Ok(EXIT_OK)
        }
        Command::Scan {
            prefix,
            limit,
            consistency,
            node,
        } => {
            let session = pinned(client, node.as_deref());
            let prefix = prefix.unwrap_or_default();
            let (pairs, meta) = session.scan(&prefix, limit, consistency).await?;
            if json {
                let rows: Vec<_> = pairs
                    .iter()
                    .map(|(key, value)| {
                        let (key, key_encoding) = printable(key);
                        let (value, value_encoding) = printable(value);
                        json!({
                            "key": key, "key_encoding": key_encoding,
                            "value": value, "value_encoding": value_encoding,
                        })
                    })
                    .collect();
                print_json(&json!({ "pairs": rows, "meta": meta_json(&meta) }))?;
            } else {
                let mut out = std::io::stdout().lock();
                for (key, value) in &pairs {
                    let (key, _) = printable(key);
                    let (value, _) = printable(value);
                    writeln!(out, "{key}\t{value}").map_err(stdout_error)?;
                }
            }
            Ok(EXIT_OK)
        }
        Command::Status { node } => {
            let status = match node {
                Some(addr) => client.status_of(&addr).await?,
                None => client.status().await?,
            };
            if json {
                print_json(&status)?;
            } else {
                print_text(&render_status(&status))?;
            }
            Ok(EXIT_OK)
        }
        Command::Member(MemberCommand::List) => {
            let status = client.status().await?;
            if json {
                let members: Vec<_> = status.members.iter().map(|row| &row.member).collect();
                print_json(&members)?;
            } else {
                print_text(&render_members(&status))?;
            }
            Ok(EXIT_OK)
        }
        Command::Bench(args) => {
            let options = BenchOptions {
                clients: args.clients,
                stop: match (args.requests, args.duration) {
                    (Some(requests), _) => StopAfter::Requests(requests),
                    (None, Some(duration)) => StopAfter::Duration(duration),
                    (None, None) => StopAfter::Duration(bench::DEFAULT_DURATION),
                },
                value_size: args.value_size,
                key_space: args.key_space,
                write_concern: args.write_concern.unwrap_or(default_write_concern),
                consistency: args.consistency,
                read_ratio: args.read_ratio,
                timeout,
                prefill: args.prefill,
            };
            // Checked before anything is sent, so a bad flag is a usage error (exit 2).
            options.validate()?;
            let show_progress = !json && std::io::stderr().is_terminal();
            let interrupt = async {
                // Without a Ctrl-C handler the run simply cannot be interrupted early.
                if tokio::signal::ctrl_c().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            let report = bench::run(client, &options, show_progress, interrupt).await?;
            if json {
                print_json(&report)?;
            } else {
                print_text(&bench::render_report(&report))?;
            }
            Ok(EXIT_OK)
        }
        Command::Member(MemberCommand::Add {
            id,
            client_addr,
            peer_addr,
            wait,
        }) => {
            let member = Member {
                id,
                client_addr,
                peer_addr,
                voter: false,
            };
            let (result, meta) = client.add_member(member).await?;
            if json && !wait {
                print_json(&json!({
                    "id": id,
                    "index": result.index,
                    "already_member": result.existed,
                    "meta": meta_json(&meta),
                }))?;
            } else if !json {
                let text = if result.existed {
                    format!("node {id} is already a member with these addresses\n")
                } else {
                    format!(
                        "node {id} added as a learner (log index {}, epoch {}); the primary streams \
                         it the log and makes it a voter once it has caught up\n",
                        result.index, meta.epoch
                    )
                };
                print_text(&text)?;
            }
            if wait {
                let status = wait_until_voter(client, id, json).await?;
                if json {
                    print_json(&status)?;
                } else {
                    print_text(&format!("node {id} has caught up and is a voter\n"))?;
                }
            }
            Ok(EXIT_OK)
        }
        Command::Member(MemberCommand::Remove { id }) => {
            let (result, meta) = client.remove_member(id).await?;
            if json {
                print_json(&json!({
                    "id": id,
                    "index": result.index,
                    "meta": meta_json(&meta),
                }))?;
            } else {
                print_text(&format!(
                    "node {id} removed (log index {}, epoch {})\n",
                    result.index, meta.epoch
                ))?;
            }
            Ok(EXIT_OK)
        }
        Command::Certs(_) => Err(Error::Internal(
            "certs commands do not need a client".into(),
        )),
    }
}

/// Polls the primary's status until member `id` is a voter, showing how far behind it is on
/// stderr (when it is a terminal). Returns the status that shows it a voter.
async fn wait_until_voter(client: &Client, id: NodeId, json: bool) -> Result<ClusterStatus, Error> {
    const POLL: Duration = Duration::from_millis(500);
    let bar = if json || !std::io::stderr().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    loop {
        let status = client.status().await?;
        let Some(row) = status.members.iter().find(|row| row.member.id == id) else {
            bar.finish_and_clear();
            return Err(Error::InvalidRequest(format!(
                "node {id} is no longer a member (removed meanwhile?)"
            )));
        };
        if row.member.voter {
            bar.finish_and_clear();
            return Ok(status);
        }
        bar.set_message(format!("node {id}: {}", progress_text(&status, row)));
        bar.tick();
        tokio::time::sleep(POLL).await;
    }
}

/// How a member stands: its health, and for one that is behind, how far (entries, and the share
/// of the primary's log it holds).
fn progress_text(status: &ClusterStatus, row: &MemberStatus) -> String {
    match (row.health, row.lag, row.durable_index) {
        (MemberHealth::CatchingUp | MemberHealth::Lagging, Some(lag), Some(durable))
            if lag > 0 && status.last_index > 0 =>
        {
            let share = durable as f64 * 100.0 / status.last_index as f64;
            format!("{} ({lag} behind, {share:.0}%)", row.health)
        }
        (health, _, _) => health.to_string(),
    }
}

/// `client` itself, or a session pinned to `node`.
fn pinned(client: &Client, node: Option<&str>) -> Client {
    match node {
        Some(addr) => client.pinned_to(addr),
        None => client.session(),
    }
}

fn certs_init(
    dir: PathBuf,
    nodes: u64,
    node_hosts: Vec<(NodeId, String)>,
    clients: Vec<(String, CertRole)>,
    force: bool,
    json: bool,
) -> Result<u8, Error> {
    let nodes = node_certificates(nodes, &node_hosts)?;
    let clients = if clients.is_empty() {
        vec![("admin".to_string(), CertRole::Admin)]
    } else {
        clients
    };
    let written = certs::init_certs(&CertsInit {
        dir: dir.clone(),
        nodes,
        clients,
        force,
    })?;
    if json {
        let paths: Vec<String> = written
            .iter()
            .map(|path| path.display().to_string())
            .collect();
        print_json(&json!({ "dir": dir.display().to_string(), "written": paths }))?;
    } else if written.is_empty() {
        print_text(&format!(
            "every requested certificate already exists in {}; use --force to make a new CA and \
             reissue them all\n",
            dir.display()
        ))?;
    } else {
        let mut text = String::new();
        for path in &written {
            text.push_str(&format!("wrote {}\n", path.display()));
        }
        print_text(&text)?;
    }
    Ok(EXIT_OK)
}

/// The node certificates to make: ids 1..=count, each with its hosts from `--node-host`, or
/// 127.0.0.(10+id) by default. A `--node-host` for an id beyond `count` is a usage error.
fn node_certificates(
    count: u64,
    node_hosts: &[(NodeId, String)],
) -> Result<Vec<(NodeId, Vec<String>)>, Error> {
    if count == 0 {
        return Err(Error::InvalidRequest(
            "--nodes must be at least 1".to_string(),
        ));
    }
    let mut hosts: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
    for (id, host) in node_hosts {
        if *id == 0 || *id > count {
            return Err(Error::InvalidRequest(format!(
                "--node-host {id}={host} names node {id}, but nodes are numbered 1 to {count}: \
                 raise --nodes or fix the id"
            )));
        }
        hosts.entry(*id).or_default().push(host.clone());
    }
    Ok((1..=count)
        .map(|id| {
            let hosts = hosts
                .remove(&id)
                .unwrap_or_else(|| vec![default_node_host(id)]);
            (id, hosts)
        })
        .collect())
}

/// The loopback address `kvnode dev` gives node `id`.
fn default_node_host(id: NodeId) -> String {
    format!("127.0.0.{}", 10 + id)
}

/// The rows of `kvctl status`.
fn render_status(status: &ClusterStatus) -> String {
    let primary = match status.primary {
        Some(id) => format!("node {id}"),
        None => "none known".to_string(),
    };
    let mut text = format!(
        "answered by node {} ({}), epoch {}, primary: {primary}\n\
         commit index {}, applied index {}, last index {}, durable index {}, rolled-back entries {}\n\n",
        status.node_id,
        status.role,
        status.epoch,
        status.commit_index,
        status.applied_index,
        status.last_index,
        status.durable_index,
        status.rolled_back_entries,
    );
    let header = [
        "ID",
        "ADDRESS",
        "ROLE",
        "EPOCH",
        "LAST",
        "DURABLE",
        "LAG",
        "STATE",
        "HEARTBEAT",
    ]
    .map(String::from);
    let mut rows = vec![header.to_vec()];
    for row in &status.members {
        rows.push(status_row(status, row));
    }
    text.push_str(&table(&rows));
    if status.role != Role::Primary {
        text.push_str(
            "\n(this node is not the primary: lag, state and heartbeat ages are known only to the \
             primary)\n",
        );
    }
    text
}

fn status_row(status: &ClusterStatus, row: &MemberStatus) -> Vec<String> {
    let dash = || "-".to_string();
    let opt = |value: Option<u64>| value.map_or_else(dash, |value| value.to_string());
    // A member acknowledging this node's heartbeats (or the node itself) is in its epoch.
    let in_epoch = matches!(
        row.health,
        MemberHealth::Local
            | MemberHealth::Healthy
            | MemberHealth::Lagging
            | MemberHealth::CatchingUp
    );
    vec![
        row.member.id.to_string(),
        row.member.client_addr.clone(),
        row.role.map_or_else(dash, |role| role.to_string()),
        if in_epoch {
            status.epoch.to_string()
        } else {
            dash()
        },
        opt(row.last_index),
        opt(row.durable_index),
        opt(row.lag),
        progress_text(status, row),
        row.last_heartbeat_ms.map_or_else(dash, format_age),
    ]
}

/// The rows of `kvctl member list`.
fn render_members(status: &ClusterStatus) -> String {
    let mut rows = vec![["ID", "CLIENT ADDRESS", "PEER ADDRESS", "VOTER", "ROLE"]
        .map(String::from)
        .to_vec()];
    for row in &status.members {
        rows.push(vec![
            row.member.id.to_string(),
            row.member.client_addr.clone(),
            row.member.peer_addr.clone(),
            if row.member.voter {
                "yes"
            } else {
                "no (learner)"
            }
            .to_string(),
            row.role
                .map_or_else(|| "-".to_string(), |role| role.to_string()),
        ]);
    }
    table(&rows)
}

/// Left-aligned columns separated by two spaces.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// "850ms", "3.2s", "4m05s".
fn format_age(millis: u64) -> String {
    match millis {
        0..=999 => format!("{millis}ms"),
        1_000..=59_999 => format!("{:.1}s", millis as f64 / 1000.0),
        _ => format!("{}m{:02}s", millis / 60_000, (millis % 60_000) / 1000),
    }
}

/// Bytes as text: UTF-8 as is, anything else as `0x` hex. Returns the text and its encoding.
fn printable(bytes: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_string(), "utf8"),
        Err(_) => {
            let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
            (format!("0x{hex}"), "hex")
        }
    }
}

/// Prints a value alone on its line; a non-UTF-8 value is printed as hex with a note on stderr.
fn print_value(bytes: &[u8]) -> Result<(), Error> {
    let (text, encoding) = printable(bytes);
    if encoding == "hex" {
        eprintln!("note: the value is not UTF-8; printed as hex");
    }
    print_text(&format!("{text}\n"))
}

fn meta_json(meta: &ResponseMeta) -> serde_json::Value {
    json!({ "node_id": meta.node_id, "epoch": meta.epoch, "index": meta.index })
}

/// Pretty JSON on stdout, fields in declaration order.
fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|err| Error::Internal(format!("cannot format JSON: {err}")))?;
    print_text(&format!("{text}\n"))
}

/// Writes to stdout, turning a closed pipe into an error instead of a panic.
fn print_text(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

fn stdout_error(err: std::io::Error) -> Error {
    Error::Internal(format!("cannot write to stdout: {err}"))
}

fn parse_host_port(text: &str) -> Result<String, String> {
    if replikv::config::is_host_port(text) {
        Ok(text.to_string())
    } else {
        Err(format!("{text:?} is not host:port (e.g. 127.0.0.14:7379)"))
    }
}

fn parse_write_concern(text: &str) -> Result<WriteConcern, String> {
    text.parse().map_err(|err: Error| match err {
        Error::InvalidRequest(message) => message,
        other => other.to_string(),
    })
}

fn parse_consistency(text: &str) -> Result<ReadConsistency, String> {
    text.parse().map_err(|err: Error| match err {
        Error::InvalidRequest(message) => message,
        other => other.to_string(),
    })
}

fn parse_node_host(text: &str) -> Result<(NodeId, String), String> {
    let (id, host) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not ID=HOST (e.g. 2=10.0.0.12 or 2=node-2.example)"))?;
    let id: NodeId = id
        .trim()
        .parse()
        .map_err(|_| format!("node id {id:?} in {text:?} is not a number"))?;
    let host = host.trim();
    if host.is_empty() {
        return Err(format!("{text:?} names no host after '='"));
    }
    Ok((id, host.to_string()))
}

fn parse_client(text: &str) -> Result<(String, CertRole), String> {
    let (name, role) = text.split_once(':').ok_or_else(|| {
        format!(
            "{text:?} is not NAME:ROLE (e.g. alice:readwrite; roles: admin, readwrite, readonly)"
        )
    })?;
    let role: CertRole = role.trim().parse().map_err(|err: Error| match err {
        Error::Config(message) | Error::InvalidRequest(message) => message,
        other => other.to_string(),
    })?;
    Ok((name.trim().to_string(), role))
}

/// Parses "500ms", "5s", "1.5s", "2m", "1h"; a bare number is seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 5s, 1.5s, 2m or 1h"))?;
    let seconds_per_unit = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use ms, s, m or h (e.g. 5s)"
            ))
        }
    };
    let duration = Duration::try_from_secs_f64(number * seconds_per_unit)
        .map_err(|_| format!("{text:?} is out of range"))?;
    if duration.is_zero() {
        return Err(format!("{text:?} is zero: give a positive duration"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn write_concern_flag_is_checked() {
        assert_eq!(parse_write_concern("majority"), Ok(WriteConcern::Majority));
        assert_eq!(parse_write_concern("2"), Ok(WriteConcern::Count(2)));
        let message = parse_write_concern("most").unwrap_err();
        assert!(message.contains("majority"), "{message}");
        let parsed = Cli::try_parse_from(["kvctl", "put", "a", "1", "--w", "most"]);
        let error = parsed.unwrap_err();
        assert_eq!(error.exit_code(), i32::from(EXIT_USAGE));
    }

    #[test]
    fn bench_flags_are_checked() {
        let parsed = Cli::try_parse_from(["kvctl", "bench", "--w", "all", "--read-ratio", "0.5"])
            .expect("valid bench flags");
        match parsed.command {
            Command::Bench(args) => {
                assert_eq!(args.clients, bench::DEFAULT_CLIENTS);
                assert_eq!(args.write_concern, Some(WriteConcern::All));
                assert_eq!(args.read_ratio, 0.5);
            }
            other => panic!("expected bench, got {other:?}"),
        }
        for bad in [
            vec!["kvctl", "bench", "--requests", "10", "--duration", "5s"],
            vec!["kvctl", "bench", "--clients", "many"],
            vec!["kvctl", "bench", "--duration", "5 parsecs"],
            vec!["kvctl", "bench", "--consistency", "strong"],
        ] {
            let error = Cli::try_parse_from(&bad).unwrap_err();
            assert_eq!(error.exit_code(), i32::from(EXIT_USAGE), "{bad:?}");
        }
    }

    #[test]
    fn node_hosts_default_and_override() {
        let nodes = node_certificates(3, &[(2, "10.0.0.2".into()), (2, "db-2".into())]).unwrap();
        assert_eq!(
            nodes,
            vec![
                (1, vec!["127.0.0.11".to_string()]),
                (2, vec!["10.0.0.2".to_string(), "db-2".to_string()]),
                (3, vec!["127.0.0.13".to_string()]),
            ]
        );
        assert!(node_certificates(2, &[(3, "x".into())]).is_err());
        assert!(node_certificates(0, &[]).is_err());
        assert_eq!(parse_node_host("4=host"), Ok((4, "host".to_string())));
        assert!(parse_node_host("four=host").is_err());
        assert!(parse_node_host("4").is_err());
    }

    #[test]
    fn client_flag_parses_roles() {
        assert_eq!(
            parse_client("alice:readonly"),
            Ok(("alice".to_string(), CertRole::ReadOnly))
        );
        assert!(parse_client("alice").is_err());
        assert!(parse_client("alice:root").is_err());
    }

    #[test]
    fn exit_codes_are_distinct_per_kind() {
        let cases = [
            (
                Error::WriteConcernNotMet {
                    acknowledged: 1,
                    required: 2,
                },
                EXIT_WRITE_CONCERN,
            ),
            (Error::Unavailable("down".into()), EXIT_UNAVAILABLE),
            (Error::Refused("readonly".into()), EXIT_REFUSED),
            (Error::InvalidRequest("bad".into()), EXIT_USAGE),
            (Error::Storage("disk".into()), EXIT_OTHER),
        ];
        for (error, code) in cases {
            assert_eq!(exit_code(&error), code, "{error:?}");
        }
    }

    #[test]
    fn non_utf8_values_print_as_hex() {
        assert_eq!(printable(b"hello"), ("hello".to_string(), "utf8"));
        assert_eq!(printable(&[0xff, 0x00]), ("0xff00".to_string(), "hex"));
    }

    #[test]
    fn member_commands_parse_and_check_addresses() {
        let parsed = Cli::try_parse_from([
            "kvctl",
            "member",
            "add",
            "4",
            "127.0.0.14:7379",
            "127.0.0.14:7380",
        ])
        .expect("valid member add");
        match parsed.command {
            Command::Member(MemberCommand::Add {
                id,
                client_addr,
                peer_addr,
                wait,
            }) => {
                assert_eq!((id, wait), (4, false));
                assert_eq!(client_addr, "127.0.0.14:7379");
                assert_eq!(peer_addr, "127.0.0.14:7380");
            }
            other => panic!("expected member add, got {other:?}"),
        }
        let bad = Cli::try_parse_from(["kvctl", "member", "add", "4", "nowhere", "127.0.0.14:1"]);
        assert_eq!(bad.unwrap_err().exit_code(), i32::from(EXIT_USAGE));
        let remove = Cli::try_parse_from(["kvctl", "member", "remove", "3"]).expect("remove");
        assert!(matches!(
            remove.command,
            Command::Member(MemberCommand::Remove { id: 3 })
        ));
    }

    #[test]
    fn a_member_behind_shows_its_progress() {
        let member = Member {
            id: 4,
            client_addr: "127.0.0.14:7379".into(),
            peer_addr: "127.0.0.14:7380".into(),
            voter: false,
        };
        let row = MemberStatus {
            member,
            role: Some(Role::Learner),
            last_index: Some(250),
            durable_index: Some(250),
            lag: Some(750),
            health: MemberHealth::CatchingUp,
            last_heartbeat_ms: Some(40),
        };
        let status = ClusterStatus {
            node_id: 1,
            role: Role::Primary,
            epoch: 2,
            primary: Some(1),
            last_index: 1000,
            durable_index: 1000,
            commit_index: 1000,
            applied_index: 1000,
            rolled_back_entries: 0,
            members: vec![row.clone()],
        };
        assert_eq!(
            progress_text(&status, &row),
            "catching-up (750 behind, 25%)"
        );
        let healthy = MemberStatus {
            lag: Some(0),
            health: MemberHealth::Healthy,
            ..row
        };
        assert_eq!(progress_text(&status, &healthy), "healthy");
    }

    #[test]
    fn ages_are_human_readable() {
        assert_eq!(format_age(850), "850ms");
        assert_eq!(format_age(3_200), "3.2s");
        assert_eq!(format_age(245_000), "4m05s");
    }

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["ID".to_string(), "ADDRESS".to_string()],
            vec!["10".to_string(), "a".to_string()],
        ];
        assert_eq!(table(&rows), "ID  ADDRESS\n10  a\n");
    }
}
