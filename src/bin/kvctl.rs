//! `kvctl`: the command line of replikv.
//!
//! Thin by design: it parses flags, finds the client configuration (`--config`, else
//! `$REPLIKV_CONFIG`, else `./.replikv/client.toml` as written by `kvnode dev`), calls the client
//! library and prints the answer. Results go to stdout (the bare value for `get`, so it composes
//! in shell pipelines, or JSON with `--json`); diagnostics go to stderr. Each kind of failure has
//! its own exit code, listed in [`EXIT_CODES_HELP`].

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;

use replikv::client::Client;
use replikv::config::ClientConfig;
use replikv::net::tls::{self, CertRole, CertsInit};
use replikv::wire::client::{ClusterStatus, MemberHealth, MemberStatus, ResponseMeta, Role};
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
}

#[derive(Subcommand, Debug)]
enum MemberCommand {
    /// List the members as the cluster knows them.
    List,
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
        Command::Certs(_) => Err(Error::Internal(
            "certs commands do not need a client".into(),
        )),
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
    let written = tls::init_certs(&CertsInit {
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
        row.health.to_string(),
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
