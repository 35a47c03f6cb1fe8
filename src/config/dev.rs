//! The local development cluster that `kvnode dev` runs: its layout and its files.
//!
//! Invariants:
//! - Node `i` (1..=n) listens on its own loopback address, the `i`-th from `first_ip`
//!   (`127.0.0.{10+i}` by default), clients on `base_port`, peers on `base_port + 1`, HTTP (plain,
//!   no TLS: loopback only) on `base_port + 2`; everything lives in one directory.
//! - Planning writes nothing; [`DevCluster::write_configs`] rewrites the configuration files on
//!   every run and leaves the data directories alone, so a restart resumes.
//! - Every node runs with the default tunables and log level ([`NodeConfig::default`]).
//! - `kvnode dev` gives every node a RESP door ([`DevCluster::with_resp_port`], port 6379 of its
//!   own address); a plan alone has none, so tests that plan clusters bind no fixed TCP port.
//! - No node serves callers without credentials: `kvnode dev` makes an admin user
//!   ([`DEV_ADMIN_USER`]) with a generated password and an admin API token once the cluster has
//!   a primary, and keeps them beside `client.toml` ([`DevCluster::admin_password_path`],
//!   [`DevCluster::admin_token_path`], mode 0600) for redis-cli and curl.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::client::{ClientConfig, CLIENT_CONFIG_FILE};
use super::node::NodeConfig;
use super::tuning::CLIENT_TIMEOUT_MS;
use crate::error::{Error, Result};
use crate::wire::client::WriteConcern;
use crate::wire::message::{Member, NodeId};

/// Directory of the local development cluster.
pub const DEFAULT_DEV_DIR: &str = ".replikv";

/// Nodes in the local development cluster.
pub const DEFAULT_DEV_NODES: u64 = 3;

/// Client port of every dev node; the peer port is the next one. Each node has its own loopback
/// address (127.0.0.{10+id}), so the ports can be the same on all of them.
pub const DEFAULT_DEV_BASE_PORT: u16 = 7379;

/// RESP (Redis protocol) port of every dev node, on its own loopback address: Redis's own port.
pub const DEFAULT_DEV_RESP_PORT: u16 = 6379;

/// Address of dev node 1; node `i` has the `i`-th loopback address from it.
pub const DEFAULT_DEV_FIRST_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// Name of the client certificate `kvnode dev` makes (role admin).
pub const DEV_CLIENT_NAME: &str = "admin";

/// The user `kvnode dev` makes (role admin), whose password it keeps in `admin.password`.
pub const DEV_ADMIN_USER: &str = "admin";

/// The name of the admin API token `kvnode dev` makes and keeps in `admin.token`.
pub const DEV_ADMIN_TOKEN_NAME: &str = "kvnode-dev";

/// Most nodes of a dev cluster: one loopback address each, 127.0.0.11 to 127.0.0.255.
const MAX_DEV_NODES: u64 = 245;

/// The layout of the local cluster that `kvnode dev` runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevCluster {
    /// The cluster directory, absolute.
    pub dir: PathBuf,
    /// The address of node 1; node `i` has the `i`-th address from it.
    pub first_ip: Ipv4Addr,
    /// `dir/certs`.
    pub certs_dir: PathBuf,
    pub nodes: Vec<NodeConfig>,
    pub client: ClientConfig,
}

impl DevCluster {
    /// Plans a cluster of `nodes` nodes in `dir` at the default addresses. Writes nothing.
    pub fn plan(dir: &Path, nodes: u64, base_port: u16) -> Result<DevCluster> {
        Self::plan_at(dir, nodes, DEFAULT_DEV_FIRST_IP, base_port)
    }

    /// Plans a cluster of `nodes` nodes in `dir`, node 1 at `first_ip`. Writes nothing.
    pub fn plan_at(
        dir: &Path,
        nodes: u64,
        first_ip: Ipv4Addr,
        base_port: u16,
    ) -> Result<DevCluster> {
        if !(1..=MAX_DEV_NODES).contains(&nodes) {
            return Err(Error::Config(format!(
                "--nodes {nodes} is out of range: a dev cluster has 1 to {MAX_DEV_NODES} nodes (one loopback address each)"
            )));
        }
        let last_ip = dev_node_ip(first_ip, nodes).filter(|ip| ip.is_loopback());
        if !first_ip.is_loopback() || last_ip.is_none() {
            return Err(Error::Config(format!(
                "--first-ip {first_ip} with {nodes} nodes leaves the loopback range 127.0.0.0/8: \
                 every dev node needs its own loopback address"
            )));
        }
        let (peer_port, http_port) = base_port
            .checked_add(1)
            .zip(base_port.checked_add(2))
            .filter(|_| base_port != 0)
            .ok_or_else(|| {
                Error::Config(format!(
                    "--base-port {base_port} is out of range: it and the next two ports must be between 1 and 65535"
                ))
            })?;
        let dir = std::path::absolute(dir).map_err(|err| {
            Error::Config(format!(
                "cannot resolve the directory {}: {err}",
                dir.display()
            ))
        })?;
        let certs_dir = dir.join("certs");
        let members: Vec<Member> = (1..=nodes)
            .map(|id| {
                let ip = dev_node_ip(first_ip, id).unwrap_or(first_ip);
                Member {
                    id,
                    client_addr: format!("{ip}:{base_port}"),
                    peer_addr: format!("{ip}:{peer_port}"),
                    voter: true,
                }
            })
            .collect();
        let node_configs = members
            .iter()
            .map(|member| NodeConfig {
                id: member.id,
                client_addr: member.client_addr.clone(),
                peer_addr: member.peer_addr.clone(),
                data_dir: dir.join(format!("node-{}", member.id)),
                certs_dir: certs_dir.clone(),
                members: members.clone(),
                http_addr: Some(format!(
                    "{}:{http_port}",
                    dev_http_host(&member.client_addr)
                )),
                http_tls: Some(false),
                ..NodeConfig::default()
            })
            .collect();
        let client = ClientConfig {
            nodes: members.iter().map(|m| m.client_addr.clone()).collect(),
            certs_dir: certs_dir.clone(),
            client_name: DEV_CLIENT_NAME.to_string(),
            default_write_concern: WriteConcern::default(),
            timeout_ms: CLIENT_TIMEOUT_MS,
        };
        Ok(DevCluster {
            dir,
            first_ip,
            certs_dir,
            nodes: node_configs,
            client,
        })
    }

    /// This cluster with a RESP door on every node, at `port` of the node's loopback address.
    pub fn with_resp_port(mut self, port: u16) -> DevCluster {
        for node in &mut self.nodes {
            let ip = dev_node_ip(self.first_ip, node.id).unwrap_or(self.first_ip);
            node.resp_addr = Some(format!("{ip}:{port}"));
        }
        self
    }

    /// The loopback address of dev node `id`.
    pub fn node_ip(&self, id: NodeId) -> String {
        dev_node_ip(self.first_ip, id)
            .unwrap_or(self.first_ip)
            .to_string()
    }

    /// `dir/node-<id>.toml`.
    pub fn node_config_path(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.toml"))
    }

    /// `dir/node-<id>.log`.
    pub fn node_log_path(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    /// `dir/admin.password`: the password of [`DEV_ADMIN_USER`], beside `client.toml`.
    pub fn admin_password_path(&self) -> PathBuf {
        self.dir.join("admin.password")
    }

    /// `dir/admin.token`: the admin API token, beside `client.toml`.
    pub fn admin_token_path(&self) -> PathBuf {
        self.dir.join("admin.token")
    }

    /// `dir/client.toml`.
    pub fn client_config_path(&self) -> PathBuf {
        self.dir.join(CLIENT_CONFIG_FILE)
    }

    /// Writes every node's configuration and the client configuration (rewritten on every run;
    /// the data directories are left alone so a restart resumes).
    pub fn write_configs(&self) -> Result<()> {
        const HEADER: &str = "# Written by `kvnode dev`, which rewrites it on every run.\n\n";
        std::fs::create_dir_all(&self.dir)
            .map_err(|err| Error::Config(format!("cannot create {}: {err}", self.dir.display())))?;
        let write = |path: PathBuf, text: String| {
            std::fs::write(&path, format!("{HEADER}{text}"))
                .map_err(|err| Error::Config(format!("cannot write {}: {err}", path.display())))
        };
        for node in &self.nodes {
            write(self.node_config_path(node.id), node.to_toml()?)?;
        }
        write(self.client_config_path(), self.client.to_toml()?)
    }
}

/// The host part of a dev node's `ip:port` client address.
fn dev_http_host(client_addr: &str) -> &str {
    client_addr
        .rsplit_once(':')
        .map_or(client_addr, |(host, _)| host)
}

/// The address of dev node `id` when node 1 has `first_ip`: the `id`-th address from it, or
/// `None` past the end of the address space.
pub fn dev_node_ip(first_ip: Ipv4Addr, id: NodeId) -> Option<Ipv4Addr> {
    let offset = u32::try_from(id.checked_sub(1)?).ok()?;
    u32::from(first_ip).checked_add(offset).map(Ipv4Addr::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_cluster_round_trips_through_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = DevCluster::plan(&dir.path().join("cluster"), 3, 7379).unwrap();
        assert_eq!(cluster.nodes[1].client_addr, "127.0.0.12:7379");
        assert_eq!(cluster.nodes[1].peer_addr, "127.0.0.12:7380");
        let cluster = cluster.with_resp_port(DEFAULT_DEV_RESP_PORT);
        assert_eq!(
            cluster.nodes[1].resp_addr.as_deref(),
            Some("127.0.0.12:6379")
        );
        assert_eq!(cluster.nodes[1].anonymous_role, None);
        assert_eq!(
            cluster.nodes[1].http_addr.as_deref(),
            Some("127.0.0.12:7381")
        );
        assert!(!cluster.nodes[1].http_uses_tls());
        cluster.write_configs().unwrap();
        for node in &cluster.nodes {
            let loaded = NodeConfig::load(&cluster.node_config_path(node.id)).unwrap();
            assert_eq!(&loaded, node);
        }
        let client = ClientConfig::load(&cluster.client_config_path()).unwrap();
        assert_eq!(client, cluster.client);
    }

    #[test]
    fn dev_cluster_rejects_bad_sizes() {
        assert!(DevCluster::plan(Path::new("x"), 0, 7379).is_err());
        assert!(DevCluster::plan(Path::new("x"), 3, 65535).is_err());
        assert!(DevCluster::plan(Path::new("x"), 3, 65534).is_err());
        let first_ip = Ipv4Addr::new(127, 0, 0, 161);
        let moved = DevCluster::plan_at(Path::new("x"), 3, first_ip, 7379).unwrap();
        assert_eq!(moved.nodes[2].client_addr, "127.0.0.163:7379");
        assert_eq!(moved.node_ip(3), "127.0.0.163");
        let outside = Ipv4Addr::new(127, 255, 255, 254);
        assert!(DevCluster::plan_at(Path::new("x"), 3, outside, 7379).is_err());
        assert!(DevCluster::plan_at(Path::new("x"), 1, Ipv4Addr::new(10, 0, 0, 1), 7379).is_err());
    }
}
