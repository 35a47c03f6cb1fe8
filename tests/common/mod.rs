//! A harness for process-level tests: real `kvnode` processes on loopback, with real certificates.
//!
//! Each test gets its own block of loopback addresses (`127.0.0.{first_ip + i}`) and ports, so
//! tests in one binary, or in several binaries, can run in parallel without meeting. Certificates
//! are made with `certs::init_certs` in a temporary directory, configurations are written with
//! `NodeConfig::to_toml`, and each node's output goes to `node-<id>.log` next to them, at the
//! level `REPLIKV_TEST_LOG` names (a tracing filter, `info` when unset).
//!
//! A [`Cluster`] owns its child processes: dropping it kills every one of them, and if the test
//! is panicking it first prints the tail of every node's log, so a failure explains itself.
//!
//! Nothing here asserts timing. Waiting is always "until a condition holds", with a generous
//! deadline ([`PATIENCE`]); the 2-core CI machine is noisy.

// Each test binary that includes this module uses a different subset of it.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use replikv::certs::{self, CertRole, CertsInit, TlsFiles};
use replikv::client::{Client, ClientOptions};
use replikv::config::{ClientConfig, NodeConfig};
use replikv::net::tls;
use replikv::wire::client::{ClusterStatus, Role};
use replikv::wire::message::{LogIndex, Member};
use replikv::wire::CLIENT_ALPN;
use replikv::{NodeId, WriteConcern};

/// How long a test waits for anything (an election, a catch-up) before it fails. Generous on
/// purpose: this bounds a failing test, it does not measure a passing one.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The deadline of client operations in tests, retries included.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Client certificates every test cluster has.
pub const READWRITE_CLIENT: &str = "rw";
pub const READONLY_CLIENT: &str = "ro";
pub const ADMIN_CLIENT: &str = "admin";

/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES: usize = 80;

/// Where a test cluster lives on the network.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Number of nodes, with ids 1..=nodes.
    pub nodes: u64,
    /// Node `id` binds `127.0.0.{first_ip + id - 1}`.
    pub first_ip: u8,
    /// Client port of every node; the peer port is the next one.
    pub client_port: u16,
    /// The nodes' `log_retention_bytes`, if not the default.
    pub log_retention_bytes: Option<u64>,
    /// Whether every node opens a RESP door (TCP, on the port after the peer port).
    pub resp: bool,
    /// The role the nodes give callers without credentials (`anonymous_role`), if any.
    pub anonymous_role: Option<CertRole>,
    /// Whether the RESP doors speak TLS with the cluster CA.
    pub resp_tls: bool,
}

impl ClusterSpec {
    pub fn new(nodes: u64, first_ip: u8, client_port: u16) -> ClusterSpec {
        ClusterSpec {
            nodes,
            first_ip,
            client_port,
            log_retention_bytes: None,
            resp: false,
            anonymous_role: None,
            resp_tls: false,
        }
    }

    /// This cluster with a RESP door on every node ([`ClusterSpec::resp_addr`]), serving callers
    /// without credentials as `readwrite` (the operator's opt-in `anonymous_role`).
    pub fn with_resp(mut self) -> ClusterSpec {
        self.resp = true;
        self.anonymous_role = Some(CertRole::ReadWrite);
        self
    }

    /// This cluster with a RESP door on every node that serves only authenticated callers.
    pub fn with_authenticated_resp(mut self) -> ClusterSpec {
        self.resp = true;
        self.anonymous_role = None;
        self
    }

    /// RESP doors over TLS with the cluster CA.
    pub fn with_resp_tls(mut self) -> ClusterSpec {
        self.resp_tls = true;
        self
    }

    pub fn resp_addr(&self, id: NodeId) -> String {
        format!("{}:{}", self.ip(id), self.client_port + 2)
    }

    pub fn ip(&self, id: NodeId) -> String {
        let last_octet = u64::from(self.first_ip) + id - 1;
        assert!(last_octet < 255, "address block overflows 127.0.0.x");
        format!("127.0.0.{last_octet}")
    }

    pub fn client_addr(&self, id: NodeId) -> String {
        format!("{}:{}", self.ip(id), self.client_port)
    }

    pub fn peer_addr(&self, id: NodeId) -> String {
        format!("{}:{}", self.ip(id), self.client_port + 1)
    }

    /// The HTTP door (TLS with the cluster CA, the default), on the port after the RESP door's.
    pub fn http_addr(&self, id: NodeId) -> String {
        format!("{}:{}", self.ip(id), self.client_port + 3)
    }
}

/// One node of a test cluster.
pub struct TestNode {
    pub id: NodeId,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub client_addr: String,
    child: Option<Child>,
}

impl TestNode {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A running cluster of `kvnode` processes.
pub struct Cluster {
    pub spec: ClusterSpec,
    /// Holds the certificates, configurations, data directories and logs; removed on drop.
    pub dir: tempfile::TempDir,
    pub certs_dir: PathBuf,
    pub nodes: Vec<TestNode>,
}

impl Cluster {
    /// Makes certificates and configurations for `spec` and starts every node.
    pub fn start(spec: ClusterSpec) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("replikv-process-")
            .tempdir()
            .expect("create a temporary directory");
        let certs_dir = dir.path().join("certs");
        make_certs(&certs_dir, &spec);

        let members: Vec<Member> = (1..=spec.nodes)
            .map(|id| Member {
                id,
                client_addr: spec.client_addr(id),
                peer_addr: spec.peer_addr(id),
                voter: true,
            })
            .collect();
        let mut nodes = Vec::new();
        for member in &members {
            let config = NodeConfig {
                id: member.id,
                client_addr: member.client_addr.clone(),
                peer_addr: member.peer_addr.clone(),
                data_dir: dir.path().join(format!("node-{}", member.id)),
                certs_dir: certs_dir.clone(),
                members: members.clone(),
                join: Vec::new(),
                resp_addr: spec.resp.then(|| spec.resp_addr(member.id)),
                anonymous_role: spec.anonymous_role,
                http_addr: Some(spec.http_addr(member.id)),
                http_tls: None,
                resp_tls: spec.resp_tls.then_some(true),
                heartbeat_interval_ms: None,
                failure_timeout_ms: None,
                failure_jitter_ms: None,
                replica_lag_timeout_ms: None,
                max_append_bytes: None,
                max_inflight_entries: None,
                log_retention_bytes: spec.log_retention_bytes,
                max_clock_drift_ppm: None,
                max_scan_page_pairs: None,
                max_scan_page_bytes: None,
                session_ttl_ms: None,
                log_level: std::env::var("REPLIKV_TEST_LOG").unwrap_or_else(|_| "info".to_string()),
            };
            let config_path = dir.path().join(format!("node-{}.toml", member.id));
            let toml = config.to_toml().expect("node configuration as TOML");
            std::fs::write(&config_path, toml).expect("write the node configuration");
            nodes.push(TestNode {
                id: member.id,
                config_path,
                log_path: dir.path().join(format!("node-{}.log", member.id)),
                client_addr: member.client_addr.clone(),
                child: None,
            });
        }
        let mut cluster = Cluster {
            spec,
            dir,
            certs_dir,
            nodes,
        };
        for id in 1..=cluster.spec.nodes {
            cluster.restart(id);
        }
        cluster
    }

    pub fn node(&self, id: NodeId) -> &TestNode {
        &self.nodes[index(id)]
    }

    /// Client addresses of every node, in id order.
    pub fn client_addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| node.client_addr.clone())
            .collect()
    }

    /// The certificate files of client `name` (one of the `*_CLIENT` constants).
    pub fn client_files(&self, name: &str) -> TlsFiles {
        TlsFiles::for_client(&self.certs_dir, name)
    }

    /// A client of every node, authenticated as `name`.
    pub fn client(&self, name: &str) -> Client {
        Client::with_tls(
            self.client_addrs(),
            &self.client_files(name),
            test_options(),
        )
        .expect("build a client")
    }

    /// A QUIC connection of its own to node `id`'s client port, authenticated as client `name`,
    /// for tests that speak frames directly. Keep the endpoint as long as the connection.
    pub async fn raw_connection(
        &self,
        id: NodeId,
        name: &str,
    ) -> (quinn::Endpoint, quinn::Connection) {
        let addr = self.node(id).client_addr.clone();
        let config =
            tls::client_config(&self.client_files(name), CLIENT_ALPN).expect("client TLS config");
        let mut endpoint =
            quinn::Endpoint::client("0.0.0.0:0".parse().expect("address")).expect("endpoint");
        endpoint.set_default_client_config(config);
        let connection = endpoint
            .connect(
                addr.parse().expect("address"),
                &tls::server_name(&addr).expect("name"),
            )
            .expect("connect")
            .await
            .expect("handshake");
        (endpoint, connection)
    }

    /// Writes a client configuration for `kvctl --config` and returns its path.
    pub fn write_client_config(&self, name: &str) -> PathBuf {
        let config = ClientConfig {
            nodes: self.client_addrs(),
            certs_dir: self.certs_dir.clone(),
            client_name: name.to_string(),
            default_write_concern: WriteConcern::Majority,
            timeout_ms: u64::try_from(CLIENT_TIMEOUT.as_millis()).expect("timeout fits"),
        };
        let path = self.dir.path().join(format!("client-{name}.toml"));
        let toml = config.to_toml().expect("client configuration as TOML");
        std::fs::write(&path, toml).expect("write the client configuration");
        path
    }

    /// Starts node `id` on its configuration and data directory (again, if it ran before).
    pub fn restart(&mut self, id: NodeId) {
        let node = &mut self.nodes[index(id)];
        assert!(node.child.is_none(), "node {id} is already running");
        let log = open_log(&node.log_path);
        let log_err = log.try_clone().expect("clone the log handle");
        let child = Command::new(env!("CARGO_BIN_EXE_kvnode"))
            .arg("--config")
            .arg(&node.config_path)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("start kvnode");
        node.child = Some(child);
    }

    /// SIGKILL: the node dies without flushing or closing anything.
    pub fn kill(&mut self, id: NodeId) {
        let node = &mut self.nodes[index(id)];
        let mut child = node.child.take().expect("the node to kill is running");
        // A node stopped with SIGSTOP still dies of SIGKILL.
        child.kill().expect("SIGKILL the node");
        child.wait().expect("reap the killed node");
    }

    /// SIGSTOP: the node freezes, its sockets stay open.
    pub fn pause(&self, id: NodeId) {
        self.signal(id, "-STOP");
    }

    /// SIGCONT: a paused node resumes.
    pub fn resume(&self, id: NodeId) {
        self.signal(id, "-CONT");
    }

    fn signal(&self, id: NodeId, signal: &str) {
        let pid = self.node(id).pid().expect("the node to signal is running");
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Waits until exactly one running node says it is the primary and every other node that
    /// answers agrees (a paused or starting node does not answer and is not counted). Returns
    /// the primary's id and status.
    pub async fn wait_for_primary(&self) -> (NodeId, ClusterStatus) {
        let client = self
            .client(READWRITE_CLIENT)
            .with_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + PATIENCE;
        let mut last_views = Vec::new();
        loop {
            last_views.clear();
            for node in self.nodes.iter().filter(|node| node.is_running()) {
                let view = client.status_of(&node.client_addr).await;
                last_views.push((node.id, view));
            }
            let primaries: Vec<&ClusterStatus> = last_views
                .iter()
                .filter_map(|(_, view)| view.as_ref().ok())
                .filter(|status| status.role == Role::Primary)
                .collect();
            if let [primary] = primaries.as_slice() {
                let agreed = last_views
                    .iter()
                    .filter_map(|(_, view)| view.as_ref().ok())
                    .all(|status| status.primary == Some(primary.node_id));
                if agreed {
                    return (primary.node_id, (*primary).clone());
                }
            }
            if Instant::now() > deadline {
                panic!("no agreed primary within {PATIENCE:?}; last views: {last_views:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running node has applied the log up to `index` (its status says so),
    /// for tests that then read or authenticate through any node.
    pub async fn wait_until_applied(&self, index: LogIndex) {
        let client = self.client(READWRITE_CLIENT);
        for node in self.nodes.iter().filter(|node| node.is_running()) {
            eventually(&format!("node {} applied index {index}", node.id), || {
                let (client, addr) = (&client, node.client_addr.clone());
                async move {
                    let status = client.status_of(&addr).await.ok()?;
                    (status.applied_index >= index).then_some(())
                }
            })
            .await;
        }
        client.close().await;
    }

    /// Prints the end of every node's log to stderr.
    pub fn dump_logs(&self) {
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.log_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "----- node {} ({}), last {} lines of {} -----",
                node.id,
                node.client_addr,
                tail.len(),
                node.log_path.display()
            );
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Waits until `check` returns `Some`, polling; panics with `what` after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("{what}: not reached within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The options of test clients: a deadline long enough for an election on a busy machine.
pub fn test_options() -> ClientOptions {
    ClientOptions {
        timeout: CLIENT_TIMEOUT,
        default_write_concern: WriteConcern::Majority,
    }
}

/// A CA, a certificate per node (naming its loopback address) and the three client roles.
pub fn make_certs(dir: &Path, spec: &ClusterSpec) {
    let options = CertsInit {
        dir: dir.to_path_buf(),
        nodes: (1..=spec.nodes).map(|id| (id, vec![spec.ip(id)])).collect(),
        clients: vec![
            (READWRITE_CLIENT.to_string(), CertRole::ReadWrite),
            (READONLY_CLIENT.to_string(), CertRole::ReadOnly),
            (ADMIN_CLIENT.to_string(), CertRole::Admin),
        ],
        force: false,
    };
    certs::init_certs(&options).expect("make certificates");
}

fn index(id: NodeId) -> usize {
    usize::try_from(id - 1).expect("node id fits in usize")
}

fn open_log(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the node log")
}
