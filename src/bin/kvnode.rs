//! `kvnode`: the replikv node daemon, and `kvnode dev`, a local cluster in one command.
//!
//! Thin by design: parse flags, build the configuration with [`replikv::config`], and call
//! [`replikv::net::server::run_node`]. `kvnode dev` only plans files, makes certificates and
//! supervises child processes; each node runs as its own process, exactly as in production.
//!
//! Exit codes: 0 ok, 2 usage or configuration error, 1 anything else.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use tokio::sync::{mpsc, watch};

use replikv::api::http;
use replikv::certs::{self, CertRole, CertsInit};
use replikv::client::join;
use replikv::client::Client;
use replikv::config::client::CLIENT_CONFIG_ENV;
use replikv::config::dev::{
    DevCluster, DEFAULT_DEV_BASE_PORT, DEFAULT_DEV_DIR, DEFAULT_DEV_FIRST_IP, DEFAULT_DEV_NODES,
    DEFAULT_DEV_RESP_PORT, DEV_ADMIN_TOKEN_NAME, DEV_ADMIN_USER, DEV_CLIENT_NAME,
};
use replikv::config::tuning::{DEFAULT_LOG_LEVEL, DEV_STOP_GRACE_MS};
use replikv::config::{NodeConfig, NodeOverrides};
use replikv::credentials;
use replikv::net::server::{run_node, shutdown_signal};
use replikv::wire::client::ClientRole;
use replikv::wire::message::NodeId;
use replikv::{Error, ErrorKind, Result};

#[derive(Parser)]
#[command(
    name = "kvnode",
    version,
    about = "The replikv node daemon",
    long_about = "The replikv node daemon.\n\nRun a node with `kvnode --config node.toml` (flags override the file), \
                  or a whole local cluster with `kvnode dev`. A new node joins a running cluster with \
                  `kvnode --id 4 --client-addr .. --peer-addr .. --data-dir .. --certs-dir .. --join ADDR`, \
                  ADDR being the client address of any member; it needs a node certificate of the cluster CA \
                  (`kvctl certs init --dir CERTS --nodes 4` issues the missing ones).",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local cluster: make certificates, write configs, start every node as a process.
    Dev(DevArgs),
    /// Probe a node's HTTP door: exit 0 if it answers /healthz (or /readyz with --ready). The
    /// healthcheck of containers, whose image has no shell and no curl.
    Health(HealthArgs),
}

#[derive(Args)]
struct HealthArgs {
    /// The node's HTTP address, host:port.
    #[arg(long, value_name = "ADDR")]
    addr: String,
    /// The cluster CA certificate: probe over TLS, trusting only it. Without it, plain HTTP.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Ask /readyz (knows a primary, not catching up) instead of /healthz (runs, storage answers).
    #[arg(long)]
    ready: bool,
}

#[derive(Args)]
struct NodeArgs {
    /// Node configuration file (TOML); flags given as well override its values.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: NodeOverrides,
}

#[derive(Args)]
struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = DEFAULT_DEV_NODES)]
    nodes: u64,
    /// Directory of the cluster: certificates, configs, logs and data (kept between runs).
    #[arg(long, default_value = DEFAULT_DEV_DIR)]
    dir: PathBuf,
    /// Client port of every node (each node has its own 127.0.0.x); the peer port is the next.
    #[arg(long, default_value_t = DEFAULT_DEV_BASE_PORT)]
    base_port: u16,
    /// Loopback address of node 1; node i gets the i-th address from it. Change it to run a
    /// second dev cluster beside the first.
    #[arg(long, default_value_t = DEFAULT_DEV_FIRST_IP)]
    first_ip: Ipv4Addr,
    /// RESP (Redis protocol) port of every node, on the node's own address.
    #[arg(long, default_value_t = DEFAULT_DEV_RESP_PORT)]
    resp_port: u16,
}

/// How long `kvnode dev` waits before restarting a node that died, so that a user who killed the
/// primary sees the others elect a new one first.
const DEV_RESTART_DELAY: Duration = Duration::from_secs(2);

/// A node that exits by itself sooner than this after being started is not restarted: it cannot
/// start (an address in use, a bad configuration), and restarting it would only repeat the
/// failure. A node killed by a signal is always restarted.
const DEV_MIN_UPTIME: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let cli = Cli::parse(); // exits 2 on a usage error
    let result = match cli.command {
        Some(Command::Dev(args)) => run_dev(args),
        Some(Command::Health(args)) => run_health(args),
        None => run_one_node(cli.node),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kvnode: {err}");
            // A configuration to fix is a usage error, as in kvctl; anything else failed at run time.
            match err.kind() {
                ErrorKind::Config => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

fn run_one_node(args: NodeArgs) -> Result<()> {
    let config = NodeConfig::resolve(args.config.as_deref(), args.overrides)?;
    init_logging(&config.log_level);
    runtime()?.block_on(run_node(config, shutdown_signal(), join::register))
}

/// Logs to stderr, filtered by `RUST_LOG` or else `default_filter`; colours only on a terminal.
fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_LEVEL));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run_health(args: HealthArgs) -> Result<()> {
    let path = if args.ready { "/readyz" } else { "/healthz" };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::Internal(format!("cannot start the async runtime: {err}")))?;
    let body = runtime.block_on(http::probe(&args.addr, path, args.ca.as_deref()))?;
    println!("{}", body.trim());
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::Internal(format!("cannot start the async runtime: {err}")))
}

// --- kvnode dev ---

fn run_dev(args: DevArgs) -> Result<()> {
    let cluster = DevCluster::plan_at(&args.dir, args.nodes, args.first_ip, args.base_port)?
        .with_resp_port(args.resp_port);
    certs::init_certs(&CertsInit {
        dir: cluster.certs_dir.clone(),
        nodes: cluster
            .nodes
            .iter()
            .map(|node| (node.id, vec![cluster.node_ip(node.id)]))
            .collect(),
        clients: vec![(DEV_CLIENT_NAME.to_string(), CertRole::Admin)],
        force: false,
    })?;
    cluster.write_configs()?;
    let exe = std::env::current_exe()
        .map_err(|err| Error::Internal(format!("cannot find the kvnode executable: {err}")))?;
    runtime()?.block_on(supervise(&cluster, &exe, &args.dir))
}

/// A node process and what the table shows about it.
struct Started {
    id: NodeId,
    pid: u32,
    log: PathBuf,
}

/// Starts every node, prints the table, then waits for Ctrl-C/SIGTERM and stops the nodes. A node
/// that dies is reported and restarted after [`DEV_RESTART_DELAY`] (the others keep running: the
/// user may be testing failover), unless it died right after starting.
async fn supervise(cluster: &DevCluster, exe: &Path, dir_flag: &Path) -> Result<()> {
    let (stop, stop_requested) = watch::channel(false);
    let (events, mut event) = mpsc::unbounded_channel::<NodeEvent>();
    let mut started = Vec::new();
    let mut watchers = Vec::new();
    for node in &cluster.nodes {
        let log = cluster.node_log_path(node.id);
        let launcher = Launcher {
            id: node.id,
            exe: exe.to_path_buf(),
            config: cluster.node_config_path(node.id),
            log: log.clone(),
        };
        let child = launcher.spawn()?;
        let pid = child.id().unwrap_or_default();
        started.push(Started {
            id: node.id,
            pid,
            log,
        });
        let watcher = watch_node(launcher, child, stop_requested.clone(), events.clone());
        watchers.push(tokio::spawn(watcher));
    }
    drop(events);
    let access = match dev_credentials(cluster).await {
        Ok(access) => Some(access),
        Err(err) => {
            say(&format!(
                "could not make the admin user and token ({err}); kvctl still works with the \
                 admin certificate"
            ));
            None
        }
    };
    print_table(cluster, &started, dir_flag, access.as_ref());

    let mut running = started.len();
    let all_exited = loop {
        tokio::select! {
            _ = shutdown_signal() => break false,
            report = event.recv() => match report {
                None => break true,
                Some(NodeEvent::Note(text)) => say(&text),
                Some(NodeEvent::GaveUp(text)) => {
                    say(&text);
                    running -= 1;
                    if running == 0 {
                        break true;
                    }
                    say("the other nodes keep running; Ctrl-C stops them");
                }
            },
        }
    };
    if all_exited {
        return Err(Error::Unavailable(format!(
            "every node has exited; see the logs in {}",
            cluster.dir.display()
        )));
    }
    say("stopping the cluster...");
    stop.send_replace(true);
    for watcher in watchers {
        let _ = watcher.await;
    }
    say(&format!(
        "cluster stopped; its data is kept in {}",
        cluster.dir.display()
    ));
    Ok(())
}

/// The admin user's password and an admin API token of a dev cluster.
struct DevAccess {
    password: String,
    token: String,
}

/// How long `kvnode dev` waits for a primary to record the admin user and token.
const DEV_CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(60);

/// The admin user and token of the dev cluster: read from beside `client.toml` if an earlier run
/// made them and the cluster still knows the user; otherwise made now (once the cluster has a
/// primary, through the admin certificate) and written there, mode 0600.
async fn dev_credentials(cluster: &DevCluster) -> Result<DevAccess> {
    let client = Client::connect(&cluster.client)
        .await?
        .with_timeout(DEV_CREDENTIALS_TIMEOUT);
    let access = make_dev_credentials(cluster, &client).await;
    client.close().await;
    access
}

async fn make_dev_credentials(cluster: &DevCluster, client: &Client) -> Result<DevAccess> {
    let (password_path, token_path) = (cluster.admin_password_path(), cluster.admin_token_path());
    let admin_known = client
        .users()
        .await?
        .iter()
        .any(|user| user.name == DEV_ADMIN_USER);
    // What an earlier run kept, if the cluster still knows it.
    let kept_password = std::fs::read_to_string(&password_path)
        .ok()
        .map(|password| password.trim().to_string())
        .filter(|password| admin_known && !password.is_empty());
    let known_tokens: Vec<String> = client.tokens().await?.into_iter().map(|t| t.id).collect();
    let kept_token = std::fs::read_to_string(&token_path)
        .ok()
        .map(|token| token.trim().to_string())
        .filter(|token| {
            known_tokens.contains(&credentials::token_id(&credentials::token_digest(token)))
        });
    let password = match kept_password {
        Some(password) => password,
        None => {
            let password = credentials::hex(&rand::random::<[u8; 16]>());
            if admin_known {
                client.user_passwd(DEV_ADMIN_USER, &password).await?;
            } else {
                client
                    .user_add(DEV_ADMIN_USER, ClientRole::Admin, &password)
                    .await?;
            }
            certs::write_secret(&password_path, password.as_bytes())?;
            password
        }
    };
    let token = match kept_token {
        Some(token) => token,
        None => {
            let (token, _) = client
                .token_create(DEV_ADMIN_TOKEN_NAME, ClientRole::Admin, None)
                .await?;
            certs::write_secret(&token_path, token.as_bytes())?;
            token
        }
    };
    Ok(DevAccess { password, token })
}

/// Prints a line of the supervisor's report; a closed stdout (the terminal went away) must not
/// stop the supervisor from stopping its nodes.
fn say(text: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{text}");
}

/// What a node's watcher reports to the supervisor.
enum NodeEvent {
    /// Something to print (a node died, a node was restarted).
    Note(String),
    /// The node is gone for good: it will not be restarted.
    GaveUp(String),
}

/// How to start one node's process.
struct Launcher {
    id: NodeId,
    exe: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl Launcher {
    fn spawn(&self) -> Result<tokio::process::Child> {
        let open_log = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .map_err(|err| {
                    Error::Internal(format!("cannot open {}: {err}", self.log.display()))
                })
        };
        tokio::process::Command::new(&self.exe)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(open_log()?)
            .stderr(open_log()?)
            // Own process group: Ctrl-C reaches only `kvnode dev`, which stops the nodes one way.
            .process_group(0)
            // If `kvnode dev` fails half-way, the nodes it started do not outlive it.
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| Error::Internal(format!("cannot start {}: {err}", self.exe.display())))
    }
}

/// Watches one node: restarts it when it dies (see [`supervise`]), or stops it when asked:
/// SIGTERM, then SIGKILL after a grace period.
async fn watch_node(
    launcher: Launcher,
    mut child: tokio::process::Child,
    mut stop: watch::Receiver<bool>,
    events: mpsc::UnboundedSender<NodeEvent>,
) {
    let id = launcher.id;
    loop {
        let pid = child.id().unwrap_or_default();
        let started_at = Instant::now();
        let status = tokio::select! {
            status = child.wait() => status,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        // Killed by a signal (`kill -9`): no exit code. A quick exit with a code is a node that
        // cannot start.
        let killed = status.as_ref().is_ok_and(|status| status.code().is_none());
        let status = status.map_or_else(|err| err.to_string(), |status| status.to_string());
        if !killed && started_at.elapsed() < DEV_MIN_UPTIME {
            let _ = events.send(NodeEvent::GaveUp(format!(
                "node {id} (pid {pid}) exited right after starting: {status}; not restarting it \
                 (see {})",
                launcher.log.display()
            )));
            return;
        }
        let _ = events.send(NodeEvent::Note(format!(
            "node {id} (pid {pid}) exited: {status}; restarting it in {}s",
            DEV_RESTART_DELAY.as_secs()
        )));
        tokio::select! {
            () = tokio::time::sleep(DEV_RESTART_DELAY) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        child = match launcher.spawn() {
            Ok(child) => child,
            Err(err) => {
                let _ = events.send(NodeEvent::GaveUp(format!(
                    "node {id} could not be restarted: {err}"
                )));
                return;
            }
        };
        let _ = events.send(NodeEvent::Note(format!(
            "node {id} restarted (pid {})",
            child.id().unwrap_or_default()
        )));
    }
    // `None` once the child was reaped: then there is nothing left to stop (and pid 0 would
    // signal our whole process group).
    let Some(pid) = child.id() else { return };
    if let Err(why) = send_sigterm(pid).await {
        say(&format!(
            "cannot send SIGTERM to node {id} ({why}); killing it"
        ));
        let _ = child.start_kill();
    }
    let grace = Duration::from_millis(DEV_STOP_GRACE_MS);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) if status.success() => say(&format!("node {id} stopped")),
        Ok(Ok(status)) => say(&format!("node {id} stopped: {status}")),
        Ok(Err(err)) => say(&format!("node {id}: {err}")),
        Err(_) => {
            say(&format!(
                "node {id} did not stop within {grace:?}; killing it"
            ));
            let _ = child.kill().await;
        }
    }
}

/// Sends SIGTERM with the `kill` utility (std has no portable way, and the crate avoids a libc
/// dependency for this one call). A signal sent to our whole process group, as `timeout` does, can
/// hit the short-lived `kill` process before it moves to its own group; so it is retried.
async fn send_sigterm(pid: u32) -> std::result::Result<(), String> {
    const ATTEMPTS: usize = 3;
    let mut last_failure = String::new();
    for _ in 0..ATTEMPTS {
        let outcome = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .process_group(0)
            .status()
            .await;
        match outcome {
            Ok(status) if status.success() => return Ok(()),
            Ok(status) => last_failure = format!("kill: {status}"),
            Err(err) => last_failure = format!("kill: {err}"),
        }
    }
    Err(last_failure)
}

fn print_table(
    cluster: &DevCluster,
    started: &[Started],
    dir_flag: &Path,
    access: Option<&DevAccess>,
) {
    println!(
        "replikv dev cluster: {} nodes in {}\n",
        started.len(),
        cluster.dir.display()
    );
    println!(
        "  {:<4} {:<22} {:<22} {:<22} {:<29} {:<8} LOG",
        "ID", "CLIENT ADDRESS", "PEER ADDRESS", "RESP ADDRESS", "HTTP", "PID"
    );
    for (node, process) in cluster.nodes.iter().zip(started) {
        let http = node
            .http_addr
            .as_deref()
            .map_or_else(|| "-".to_string(), |addr| format!("http://{addr}"));
        println!(
            "  {:<4} {:<22} {:<22} {:<22} {:<29} {:<8} {}",
            process.id,
            node.client_addr,
            node.peer_addr,
            node.resp_addr.as_deref().unwrap_or("-"),
            http,
            process.pid,
            process.log.display()
        );
    }
    println!();
    if dir_flag != Path::new(DEFAULT_DEV_DIR) {
        println!(
            "kvctl finds ./{DEFAULT_DEV_DIR}/client.toml by itself; for this directory run:\n  export {CLIENT_CONFIG_ENV}={}\n",
            cluster.client_config_path().display()
        );
    }
    println!("Try:       kvctl put a 1 && kvctl get a");
    if let Some(http) = cluster
        .nodes
        .first()
        .and_then(|node| node.http_addr.as_deref())
    {
        if let Some(DevAccess { token, .. }) = access {
            let header = format!("-H 'Authorization: Bearer {token}'");
            println!(
                "HTTP:      curl {header} -X PUT --data-binary 1 http://{http}/v1/kv/a && curl {header} http://{http}/v1/kv/a"
            );
        }
        println!("Metrics:   curl http://{http}/metrics");
    }
    println!("Status:    kvctl status");
    if let Some((host, port)) = cluster
        .nodes
        .first()
        .and_then(|node| node.resp_addr.as_deref())
        .and_then(|addr| addr.rsplit_once(':'))
    {
        if let Some(DevAccess { password, .. }) = access {
            println!(
                "Redis:     redis-cli -h {host} -p {port} --user {DEV_ADMIN_USER} --pass {password}    (any node; writes reach the primary)"
            );
        }
    }
    println!(
        "Failover:  kill -9 the primary's pid, then run kvctl status again; a node that dies is \
         restarted after {}s (its new pid is printed here)",
        DEV_RESTART_DELAY.as_secs()
    );
    if access.is_some() {
        println!(
            "Access:    user {DEV_ADMIN_USER} (password in {}) and an admin token (in {}); more \
             with kvctl user add / kvctl token create",
            cluster.admin_password_path().display(),
            cluster.admin_token_path().display()
        );
    }
    println!(
        "Ctrl-C stops the cluster; data is kept in {}/node-<id>/ for the next run.",
        cluster.dir.display()
    );
}
