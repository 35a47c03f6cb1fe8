//! `kvctl`: the command line of replikv.
//!
//! Thin by design: it parses flags, finds the client configuration (`--config`, else
//! `$REPLIKV_CONFIG`, else `./.replikv/client.toml` as written by `kvnode dev`), calls the client
//! library and prints the answer. Results go to stdout (the bare value for `get`, so it composes
//! in shell pipelines, or JSON with `--json`); diagnostics go to stderr. Each kind of failure has
//! its own exit code, listed in [`EXIT_CODES_HELP`] and derived from [`replikv::ErrorKind`].
//!
//! This file holds the flags and the dispatch; [`commands`] what each command does, [`output`]
//! how results are shown, and [`bench`] the load generator behind `kvctl bench`.

mod bench;
mod commands;
mod output;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use replikv::certs::CertRole;
use replikv::client::Client;
use replikv::config::{parse_duration, ClientConfig};
use replikv::wire::client::{ClientRole, Condition};
use replikv::wire::message::Member;
use replikv::{Error, ErrorKind, NodeId, ReadConsistency, WriteConcern};

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
  7  condition failed: put --if-absent found the key (nothing was written)

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
/// Exit code of a conditional put whose condition did not hold.
const EXIT_CONDITION_FAILED: u8 = 7;

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
    /// Set KEY to VALUE; without VALUE, or with `-`, the value is read from stdin (for large or
    /// binary values: `kvctl put photo < photo.jpg`).
    Put {
        key: String,
        value: Option<String>,
        /// Write only if KEY is absent (decided on the primary); exit code 7 if it exists.
        #[arg(long)]
        if_absent: bool,
        /// Compare-and-set: write only if KEY is at this version (the index of the write that
        /// set it, as `kvctl get --json` shows; 0 means absent); exit code 7 otherwise.
        #[arg(long, value_name = "VERSION", conflicts_with = "if_absent")]
        if_version: Option<u64>,
        /// The key expires this long after the write (e.g. 30s); without it a put clears any
        /// expiry, as Redis's SET does.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Write concern: 1, N (a number of voters), majority or all. Default from the config.
        #[arg(long = "w", value_name = "W", value_parser = parse_write_concern)]
        write_concern: Option<WriteConcern>,
    },
    /// Add BY (default 1) to the decimal integer at KEY (0 if absent), atomically on the
    /// primary; prints the new value.
    Incr {
        key: String,
        #[arg(allow_hyphen_values = true)]
        by: Option<i64>,
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
    /// Print the pairs whose key starts with PREFIX, one `key<TAB>value` per line, in key order.
    /// Read page by page: each page is consistent at its own index, the whole is not a snapshot.
    Scan {
        /// Key prefix; all keys when omitted.
        prefix: Option<String>,
        /// Most pairs to print (read in as many pages as needed).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long, default_value = "linearizable", value_parser = parse_consistency)]
        consistency: ReadConsistency,
        /// Ask this node only (client address), without following redirects.
        #[arg(long, value_name = "ADDR")]
        node: Option<String>,
    },
    /// Print every committed change of the keys under PREFIX as it commits, in log index order:
    /// `put KEY VALUE` or `delete KEY`, with its index and epoch (--json: one object per line).
    /// Runs until interrupted; resumes by itself on another node after a failover.
    Watch {
        /// Key prefix; all keys when omitted.
        prefix: Option<String>,
        /// Start at this log index (an index a write answered, for example) instead of now.
        #[arg(long, value_name = "INDEX")]
        from: Option<u64>,
        /// First print the current values under the prefix, at one index, then every change
        /// after it.
        #[arg(long)]
        initial: bool,
        /// Also print the progress notifications an idle watch receives.
        #[arg(long)]
        progress: bool,
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
    /// Users with passwords (for `AUTH` on the RESP port and HTTP Basic); admin only.
    #[command(subcommand)]
    User(UserCommand),
    /// API tokens (for HTTP `Authorization: Bearer` or `x-token`); admin only.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Certificates for nodes and clients.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Load the cluster with concurrent sessions; report throughput and latency percentiles.
    Bench(BenchArgs),
}

/// The flags of `kvctl bench` (see [`bench`] for what a run does).
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
enum UserCommand {
    /// Add user NAME. The password is read from a prompt, or from the first line of stdin when
    /// stdin is not a terminal.
    Add {
        name: String,
        /// readonly, readwrite or admin.
        #[arg(long, value_parser = parse_client_role)]
        role: ClientRole,
    },
    /// List the users and their roles.
    List,
    /// Set the password of user NAME (prompted, or the first line of stdin).
    Passwd { name: String },
    /// Remove user NAME: no node accepts its password once the removal is applied.
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Make an API token and print it: it is shown this once, and only its digest is kept.
    Create {
        /// readonly, readwrite or admin.
        #[arg(long, value_parser = parse_client_role)]
        role: ClientRole,
        /// How long the token is valid, e.g. 12h, 30d; without it, until revoked.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// A name to recognise the token by in `kvctl token list`.
        #[arg(long, default_value = "token")]
        name: String,
        /// Write the token to FILE (mode 0600) instead of printing it.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// List the tokens: id, name, role, creation and expiry (never the secret).
    List,
    /// Revoke a token, named by its id (or the start of it) or its name.
    Revoke { token: String },
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

/// The exit code for a failure (see [`EXIT_CODES_HELP`]), from its kind.
fn exit_code(error: &Error) -> u8 {
    match error.kind() {
        ErrorKind::WriteConcernNotMet => EXIT_WRITE_CONCERN,
        ErrorKind::Unavailable => EXIT_UNAVAILABLE,
        ErrorKind::Refused => EXIT_REFUSED,
        ErrorKind::InvalidRequest => EXIT_USAGE,
        ErrorKind::Config | ErrorKind::Storage | ErrorKind::Protocol | ErrorKind::Internal => {
            EXIT_OTHER
        }
    }
}

/// Runs the command `cli` names. Every command but `certs` talks to the cluster, through a client
/// made by [`with_client`].
async fn run(cli: Cli) -> Result<u8, Error> {
    let Cli {
        config,
        json,
        timeout,
        command,
    } = cli;
    let config = config.as_deref();
    match command {
        Command::Certs(CertsCommand::Init {
            dir,
            nodes,
            node_hosts,
            clients,
            force,
        }) => commands::certs_init(dir, nodes, node_hosts, clients, force, json),
        Command::Get {
            key,
            consistency,
            node,
        } => {
            with_client(config, timeout, async |client| {
                commands::get(client, &key, consistency, node.as_deref(), json).await
            })
            .await
        }
        Command::Put {
            key,
            value,
            if_absent,
            if_version,
            ttl,
            write_concern,
        } if if_absent || if_version.is_some() || ttl.is_some() => {
            let value = commands::put_value(value)?;
            let condition = match if_version {
                Some(version) => Condition::IfVersion(version),
                None if if_absent => Condition::IfAbsent,
                None => Condition::Always,
            };
            with_client(config, timeout, async |client| {
                let applied = commands::put_decided(
                    client,
                    &key,
                    &value,
                    (condition, ttl),
                    write_concern,
                    json,
                )
                .await?;
                Ok(if applied {
                    EXIT_OK
                } else {
                    EXIT_CONDITION_FAILED
                })
            })
            .await
        }
        Command::Put {
            key,
            value,
            write_concern,
            ..
        } => {
            let value = commands::put_value(value)?;
            with_client(config, timeout, async |client| {
                commands::put(client, &key, &value, write_concern, json).await
            })
            .await
        }
        Command::Incr {
            key,
            by,
            write_concern,
        } => {
            with_client(config, timeout, async |client| {
                commands::incr(client, &key, by.unwrap_or(1), write_concern, json).await
            })
            .await
        }
        Command::Delete { key, write_concern } => {
            with_client(config, timeout, async |client| {
                commands::delete(client, &key, write_concern, json).await
            })
            .await
        }
        Command::Scan {
            prefix,
            limit,
            consistency,
            node,
        } => {
            let prefix = prefix.unwrap_or_default();
            with_client(config, timeout, async |client| {
                commands::scan(client, &prefix, limit, consistency, node.as_deref(), json).await
            })
            .await
        }
        Command::Watch {
            prefix,
            from,
            initial,
            progress,
        } => {
            let prefix = prefix.unwrap_or_default();
            let options = commands::WatchOptions {
                from,
                initial,
                progress,
                json,
            };
            with_client(config, timeout, async |client| {
                commands::watch(client, &prefix, options).await
            })
            .await
        }
        Command::Status { node } => {
            with_client(config, timeout, async |client| {
                commands::status(client, node.as_deref(), json).await
            })
            .await
        }
        Command::Member(MemberCommand::List) => {
            with_client(config, timeout, async |client| {
                commands::member_list(client, json).await
            })
            .await
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
            with_client(config, timeout, async |client| {
                commands::member_add(client, member, wait, json).await
            })
            .await
        }
        Command::Member(MemberCommand::Remove { id }) => {
            with_client(config, timeout, async |client| {
                commands::member_remove(client, id, json).await
            })
            .await
        }
        Command::User(UserCommand::Add { name, role }) => {
            let password = commands::read_password(&format!("password for {name}: "))?;
            with_client(config, timeout, async |client| {
                commands::user_add(client, &name, role, &password, json).await
            })
            .await
        }
        Command::User(UserCommand::Passwd { name }) => {
            let password = commands::read_password(&format!("new password for {name}: "))?;
            with_client(config, timeout, async |client| {
                commands::user_passwd(client, &name, &password, json).await
            })
            .await
        }
        Command::User(UserCommand::Remove { name }) => {
            with_client(config, timeout, async |client| {
                commands::user_remove(client, &name, json).await
            })
            .await
        }
        Command::User(UserCommand::List) => {
            with_client(config, timeout, async |client| {
                commands::user_list(client, json).await
            })
            .await
        }
        Command::Token(TokenCommand::Create {
            role,
            ttl,
            name,
            output,
        }) => {
            with_client(config, timeout, async |client| {
                commands::token_create(client, &name, role, ttl, output.as_deref(), json).await
            })
            .await
        }
        Command::Token(TokenCommand::List) => {
            with_client(config, timeout, async |client| {
                commands::token_list(client, json).await
            })
            .await
        }
        Command::Token(TokenCommand::Revoke { token }) => {
            with_client(config, timeout, async |client| {
                commands::token_revoke(client, &token, json).await
            })
            .await
        }
        Command::Bench(args) => {
            with_client(config, timeout, async |client| {
                commands::bench(client, args, json).await
            })
            .await
        }
    }
}

/// Connects to the cluster of the client configuration (`--config`, else `$REPLIKV_CONFIG`, else
/// `./.replikv/client.toml`) with the deadline `timeout` if given, runs `command`, and closes the
/// connections whatever its outcome.
async fn with_client(
    config: Option<&Path>,
    timeout: Option<Duration>,
    command: impl AsyncFnOnce(&Client) -> Result<u8, Error>,
) -> Result<u8, Error> {
    let (config, _path) = ClientConfig::discover(config)?;
    let mut client = Client::connect(&config).await?;
    if let Some(timeout) = timeout {
        client = client.with_timeout(timeout);
    }
    let code = command(&client).await;
    client.close().await;
    code
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

fn parse_client_role(text: &str) -> Result<ClientRole, String> {
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
    fn node_host_flags_parse() {
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
            (
                Error::NotPrimary {
                    node: 1,
                    epoch: 2,
                    hint: None,
                },
                EXIT_UNAVAILABLE,
            ),
            (Error::Network("lost".into()), EXIT_UNAVAILABLE),
            (Error::ShuttingDown, EXIT_UNAVAILABLE),
            (Error::Refused("readonly".into()), EXIT_REFUSED),
            (Error::InvalidRequest("bad".into()), EXIT_USAGE),
            (
                Error::WriteConcernImpossible {
                    required: 5,
                    voters: 3,
                },
                EXIT_USAGE,
            ),
            (Error::Storage("disk".into()), EXIT_OTHER),
            (Error::Config("no nodes".into()), EXIT_OTHER),
            (Error::Protocol("bad frame".into()), EXIT_OTHER),
            (
                Error::StaleRequest {
                    client_id: 1,
                    sequence: 1,
                    latest: 2,
                },
                EXIT_OTHER,
            ),
            (Error::Internal("?".into()), EXIT_OTHER),
        ];
        for (error, code) in cases {
            assert_eq!(exit_code(&error), code, "{error:?}");
        }
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
}
