//! The local development cluster that `kvnode dev` runs: its layout and its files.
//!
//! Invariants:
//! - Node `i` (1..=n) listens on its own loopback address `127.0.0.{10+i}`, clients on
//!   `base_port`, peers on `base_port + 1`; everything lives in one directory.
//! - Planning writes nothing; [`DevCluster::write_configs`] rewrites the configuration files on
//!   every run and leaves the data directories alone, so a restart resumes.
//! - Every node runs with the default tunables and log level ([`NodeConfig::default`]).

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

/// Name of the client certificate `kvnode dev` makes (role admin).
pub const DEV_CLIENT_NAME: &str = "admin";

/// Most nodes of a dev cluster: one loopback address each, 127.0.0.11 to 127.0.0.255.
const MAX_DEV_NODES: u64 = 245;

/// The layout of the local cluster that `kvnode dev` runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevCluster {
    /// The cluster directory, absolute.
    pub dir: PathBuf,
    /// `dir/certs`.
    pub certs_dir: PathBuf,
    pub nodes: Vec<NodeConfig>,
    pub client: ClientConfig,
}

impl DevCluster {
    /// Plans a cluster of `nodes` nodes in `dir`. Writes nothing.
    pub fn plan(dir: &Path, nodes: u64, base_port: u16) -> Result<DevCluster> {
        if !(1..=MAX_DEV_NODES).contains(&nodes) {
            return Err(Error::Config(format!(
                "--nodes {nodes} is out of range: a dev cluster has 1 to {MAX_DEV_NODES} nodes (one loopback address each)"
            )));
        }
        let peer_port = base_port.checked_add(1).filter(|_| base_port != 0).ok_or_else(|| {
            Error::Config(format!(
                "--base-port {base_port} is out of range: it and the next port must be between 1 and 65535"
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
                let ip = Self::node_ip(id);
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
            certs_dir,
            nodes: node_configs,
            client,
        })
    }

    /// The loopback address of dev node `id`.
    pub fn node_ip(id: NodeId) -> String {
        format!("127.0.0.{}", 10 + id)
    }

    /// `dir/node-<id>.toml`.
    pub fn node_config_path(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.toml"))
    }

    /// `dir/node-<id>.log`.
    pub fn node_log_path(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_cluster_round_trips_through_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = DevCluster::plan(&dir.path().join("cluster"), 3, 7379).unwrap();
        assert_eq!(cluster.nodes[1].client_addr, "127.0.0.12:7379");
        assert_eq!(cluster.nodes[1].peer_addr, "127.0.0.12:7380");
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
    }
}
