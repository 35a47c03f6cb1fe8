//! A node's configuration: the `node.toml` file ([`NodeConfig`]) and the `kvnode` flags
//! ([`NodeOverrides`]) that override it.
//!
//! Invariants:
//! - A [`NodeConfig`] that passed [`NodeConfig::validate`] has parseable, distinct addresses, lists
//!   its own node among unique members (or only itself, to join), and has tunables the protocol
//!   can work with.
//! - The tunables are keys of the same table as the node's own settings (not a sub-table): they
//!   are declared from the one list in [`tuning`], so the file, the flags and the core options
//!   cannot disagree on them.
//! - A flag that is given replaces the file's value; one that is not leaves it alone. The
//!   tunables follow the same rule through [`Tuning::overridden_by`].

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use super::tuning::{self, Tuning, DEFAULT_LOG_LEVEL};
use super::{beside, in_file, is_host_port, parse_socket_addr, read_toml, to_toml};
use crate::certs::{CertRole, TlsFiles};
use crate::core::Options;
use crate::error::{Error, Result};
use crate::wire::message::{Member, NodeId};

/// Declares [`NodeConfig`], whose fields are the keys of `node.toml`: the node's own settings, and
/// one optional field per tunable of the [`tuning::tunables`] list.
macro_rules! declare_node_config {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident: $type:ty = $default:expr, flag $value_name:literal;
    )*) => {
        /// A node's configuration, as in `node.toml`.
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct NodeConfig {
            /// This node's id; must match its certificate (and be one of `members`, if they are
            /// given).
            pub id: NodeId,
            /// Address the client port binds (`ip:port`).
            pub client_addr: String,
            /// Address the peer port binds (`ip:port`); other nodes dial it.
            pub peer_addr: String,
            /// Directory of the sled database.
            pub data_dir: PathBuf,
            /// Directory of the certificates made by `kvctl certs init` or `kvnode dev`.
            pub certs_dir: PathBuf,
            /// The initial cluster. The membership in the node's log, once it has one, wins over
            /// this. May be left out with `join`: the node then starts knowing only itself, as a
            /// learner.
            #[serde(default, deserialize_with = "deserialize_members")]
            pub members: Vec<Member>,
            /// Client addresses of existing members (any one is enough): at start, the node asks
            /// the cluster to add it as a learner, through whichever member answers (`kvnode
            /// --join`). Safe to keep on restarts: a node that is already a member does not
            /// register again.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub join: Vec<String>,
            /// Address of the RESP door (`ip:port`, TCP), where Redis clients connect; left out,
            /// the node speaks no RESP.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub resp_addr: Option<String>,
            /// Whether the RESP door speaks TLS with the node's certificate (the cluster CA), for
            /// `redis-cli --tls`; a client certificate, if presented, gives the connection its
            /// role. Left out, it does not: plain TCP, as Redis.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub resp_tls: Option<bool>,
            /// The role of callers that present no credentials (no AUTH on RESP, no token,
            /// password or certificate on HTTP): `readonly`, `readwrite` or `admin`. Left out,
            /// such callers are refused and told to authenticate: an operator's opt-in.
            #[serde(default, skip_serializing_if = "Option::is_none", with = "optional_client_role")]
            pub anonymous_role: Option<CertRole>,
            /// Address the HTTP door binds (`ip:port`): health, metrics and the HTTP/JSON API.
            /// Left out, the node serves no HTTP.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub http_addr: Option<String>,
            /// Whether the HTTP door speaks TLS with the node's certificate (the cluster CA).
            /// Left out, it does; `kvnode dev` sets `false` on its loopback cluster.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub http_tls: Option<bool>,
            $(
                $(#[doc = $doc])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $name: Option<$type>,
            )*
            /// A `tracing` filter such as `info` or `replikv=debug`; `RUST_LOG` wins over it.
            #[serde(default = "default_log_level")]
            pub log_level: String,
        }

        /// No address, no member, no tunable: a base for struct updates, not a valid
        /// configuration.
        impl Default for NodeConfig {
            fn default() -> Self {
                NodeConfig {
                    id: NodeId::default(),
                    client_addr: String::new(),
                    peer_addr: String::new(),
                    data_dir: PathBuf::new(),
                    certs_dir: PathBuf::new(),
                    members: Vec::new(),
                    join: Vec::new(),
                    resp_addr: None,
                    anonymous_role: None,
                    http_addr: None,
                    http_tls: None,
                    resp_tls: None,
                    $($name: None,)*
                    log_level: default_log_level(),
                }
            }
        }

        impl NodeConfig {
            /// The tunables this configuration gives.
            pub fn tuning(&self) -> Tuning {
                Tuning {
                    $($name: self.$name,)*
                }
            }

            /// Replaces every tunable with those of `tuning`.
            pub fn set_tuning(&mut self, tuning: Tuning) {
                $(self.$name = tuning.$name;)*
            }
        }
    };
}

tuning::tunables!(declare_node_config);

fn default_log_level() -> String {
    DEFAULT_LOG_LEVEL.to_string()
}

/// A member as written in a config file: like [`Member`], but `voter` defaults to true and
/// unknown fields are errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberEntry {
    id: NodeId,
    client_addr: String,
    peer_addr: String,
    #[serde(default = "default_voter")]
    voter: bool,
}

fn default_voter() -> bool {
    true
}

fn deserialize_members<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<Member>, D::Error> {
    let entries = Vec::<MemberEntry>::deserialize(deserializer)?;
    Ok(entries
        .into_iter()
        .map(|entry| Member {
            id: entry.id,
            client_addr: entry.client_addr,
            peer_addr: entry.peer_addr,
            voter: entry.voter,
        })
        .collect())
}

/// `anonymous_role` as a client role's name (`readwrite`), the way `kvctl certs init` names
/// roles; a node role is not a valid value.
mod optional_client_role {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::certs::CertRole;

    pub fn serialize<S: Serializer>(
        role: &Option<CertRole>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match role {
            Some(role) => serializer.serialize_str(role.organizational_unit()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<CertRole>, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

/// Settings given as `kvnode` flags; each one that is present replaces the file's value.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct NodeOverrides {
    /// This node's id (must match its certificate).
    #[arg(long)]
    pub id: Option<NodeId>,
    /// Address of the client port, ip:port.
    #[arg(long, value_name = "ADDR")]
    pub client_addr: Option<String>,
    /// Address of the peer port, ip:port.
    #[arg(long, value_name = "ADDR")]
    pub peer_addr: Option<String>,
    /// Directory of the node's data.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory of the cluster certificates.
    #[arg(long, value_name = "DIR")]
    pub certs_dir: Option<PathBuf>,
    /// A member of the cluster, this node included; repeat for each. Replaces the file's members.
    #[arg(long = "member", value_name = "ID=CLIENT_ADDR,PEER_ADDR[,learner]", value_parser = member_flag)]
    pub members: Vec<Member>,
    #[command(flatten)]
    pub tuning: Tuning,
    /// Log filter, e.g. info or replikv=debug (RUST_LOG wins).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Join a running cluster: ask the member at this client address (any member; repeat the flag
    /// to give several) to add this node. The node starts knowing only itself, as a learner,
    /// catches up, and becomes a voter. Harmless on restarts.
    #[arg(long, value_name = "ADDR")]
    pub join: Vec<String>,
    /// Address of the RESP door, ip:port (TCP): Redis clients connect here.
    #[arg(long, value_name = "ADDR")]
    pub resp_addr: Option<String>,
    /// Whether the RESP door speaks TLS with the cluster CA (default false: plain TCP).
    #[arg(long, value_name = "BOOL")]
    pub resp_tls: Option<bool>,
    /// Serve callers without any credentials with this role: readonly, readwrite or admin.
    /// Without it they are refused (an opt-in for trusted networks).
    #[arg(long, value_name = "ROLE")]
    pub anonymous_role: Option<CertRole>,
    /// Address of the HTTP door, ip:port (health, metrics, the HTTP/JSON API).
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<String>,
    /// Whether the HTTP door speaks TLS with the cluster CA (default true).
    #[arg(long, value_name = "BOOL")]
    pub http_tls: Option<bool>,
}

/// [`parse_member`] for clap, which wants the message alone.
fn member_flag(text: &str) -> std::result::Result<Member, String> {
    parse_member(text).map_err(|err| match err {
        Error::Config(message) => message,
        other => other.to_string(),
    })
}

impl NodeConfig {
    /// Reads and validates a node configuration file.
    pub fn load(path: &Path) -> Result<NodeConfig> {
        let config = Self::read(path)?;
        config.validate().map_err(|err| in_file(path, err))?;
        Ok(config)
    }

    /// Builds the configuration from an optional file and flags (flags win), then validates it.
    /// Without a file, the flags must give every required setting.
    pub fn resolve(file: Option<&Path>, overrides: NodeOverrides) -> Result<NodeConfig> {
        let config = match file {
            Some(path) => {
                let config = Self::read(path)?;
                config.apply(overrides)
            }
            None => Self::from_overrides(overrides)?,
        };
        config.validate().map_err(|err| match file {
            Some(path) => in_file(path, err),
            None => err,
        })?;
        Ok(config)
    }

    /// Parses the file without validating it; relative paths become relative to its directory.
    fn read(path: &Path) -> Result<NodeConfig> {
        let mut config: NodeConfig = read_toml(path)?;
        config.data_dir = beside(path, &config.data_dir);
        config.certs_dir = beside(path, &config.certs_dir);
        Ok(config)
    }

    fn from_overrides(overrides: NodeOverrides) -> Result<NodeConfig> {
        fn required<T>(value: Option<T>, flag: &str) -> Result<T> {
            value.ok_or_else(|| {
                Error::Config(format!(
                    "missing {flag}: give it as a flag or pass --config FILE (or run `kvnode dev` for a local cluster)"
                ))
            })
        }
        if overrides.members.is_empty() && overrides.join.is_empty() {
            return Err(Error::Config(
                "missing --member ID=CLIENT_ADDR,PEER_ADDR (one per member, this node included), \
                 or --join ADDR to join a running cluster, or pass --config FILE"
                    .into(),
            ));
        }
        let mut config = NodeConfig {
            id: required(overrides.id, "--id")?,
            client_addr: required(overrides.client_addr, "--client-addr")?,
            peer_addr: required(overrides.peer_addr, "--peer-addr")?,
            data_dir: required(overrides.data_dir, "--data-dir")?,
            certs_dir: required(overrides.certs_dir, "--certs-dir")?,
            members: overrides.members,
            join: overrides.join,
            resp_addr: overrides.resp_addr,
            anonymous_role: overrides.anonymous_role,
            http_addr: overrides.http_addr,
            http_tls: overrides.http_tls,
            resp_tls: overrides.resp_tls,
            log_level: overrides.log_level.unwrap_or_else(default_log_level),
            ..NodeConfig::default()
        };
        config.set_tuning(overrides.tuning);
        Ok(config)
    }

    /// This configuration with every present override applied.
    pub fn apply(mut self, overrides: NodeOverrides) -> NodeConfig {
        fn set<T>(target: &mut T, value: Option<T>) {
            if let Some(value) = value {
                *target = value;
            }
        }
        set(&mut self.id, overrides.id);
        set(&mut self.client_addr, overrides.client_addr);
        set(&mut self.peer_addr, overrides.peer_addr);
        set(&mut self.data_dir, overrides.data_dir);
        set(&mut self.certs_dir, overrides.certs_dir);
        if overrides.resp_addr.is_some() {
            self.resp_addr = overrides.resp_addr;
        }
        if overrides.anonymous_role.is_some() {
            self.anonymous_role = overrides.anonymous_role;
        }
        if overrides.http_addr.is_some() {
            self.http_addr = overrides.http_addr;
        }
        if overrides.http_tls.is_some() {
            self.http_tls = overrides.http_tls;
        }
        if overrides.resp_tls.is_some() {
            self.resp_tls = overrides.resp_tls;
        }
        if !overrides.members.is_empty() {
            self.members = overrides.members;
        }
        if !overrides.join.is_empty() {
            self.join = overrides.join;
        }
        self.set_tuning(self.tuning().overridden_by(overrides.tuning));
        set(&mut self.log_level, overrides.log_level);
        self
    }

    /// Checks everything a node needs before it binds a port. The error names the bad field.
    pub fn validate(&self) -> Result<()> {
        let client_addr = parse_socket_addr("client_addr", &self.client_addr)?;
        let peer_addr = parse_socket_addr("peer_addr", &self.peer_addr)?;
        if client_addr == peer_addr {
            return Err(Error::Config(format!(
                "client_addr and peer_addr are both {client_addr}: the client and peer ports must differ"
            )));
        }
        if let Some(http_addr) = &self.http_addr {
            // TCP, so it may share a port number with the UDP ports; parsing is the check.
            parse_socket_addr("http_addr", http_addr)?;
        }
        if self.members.is_empty() && self.join.is_empty() {
            return Err(Error::Config(
                "members is empty: list every member of the cluster, this node included, \
                 or give join (kvnode --join ADDR) to join a running cluster"
                    .into(),
            ));
        }
        for addr in &self.join {
            if !is_host_port(addr) {
                return Err(Error::Config(format!(
                    "join address {addr:?} is not host:port: give the client address of any \
                     member (for example 127.0.0.11:7379)"
                )));
            }
        }
        if let Some(resp_addr) = &self.resp_addr {
            parse_socket_addr("resp_addr", resp_addr)?;
        }
        let members = self.initial_members();
        let mut seen_ids = BTreeSet::new();
        let mut seen_addrs = BTreeSet::new();
        for member in &members {
            if !seen_ids.insert(member.id) {
                return Err(Error::Config(format!(
                    "members lists node {} twice: member ids must be unique",
                    member.id
                )));
            }
            let field = |name: &str| format!("members[id={}].{name}", member.id);
            let member_client = parse_socket_addr(&field("client_addr"), &member.client_addr)?;
            let member_peer = parse_socket_addr(&field("peer_addr"), &member.peer_addr)?;
            for addr in [member_client, member_peer] {
                if !seen_addrs.insert(addr) {
                    return Err(Error::Config(format!(
                        "address {addr} is used twice in members: every port must be distinct"
                    )));
                }
            }
        }
        // A node that knows only itself as a learner waits to be added by a primary (after
        // `--join`, or `kvctl member add`); any other membership needs a voter to ever elect one.
        let lone_learner = matches!(members.as_slice(), [only] if only.id == self.id);
        if !lone_learner && !members.iter().any(|member| member.voter) {
            return Err(Error::Config(
                "members has no voter: at least one member must have voter = true".into(),
            ));
        }
        let Some(own) = members.iter().find(|member| member.id == self.id) else {
            return Err(Error::Config(format!(
                "id {} is not in members: add this node to the member list",
                self.id
            )));
        };
        check_own_address("client_addr", client_addr, &own.client_addr)?;
        check_own_address("peer_addr", peer_addr, &own.peer_addr)?;

        tuning::check_options(&self.core_options())?;
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|err| {
            Error::Config(format!(
                "log_level {:?} is not a valid filter: {err}",
                self.log_level
            ))
        })?;
        Ok(())
    }

    /// The protocol options: the defaults with this configuration's tunables.
    pub fn core_options(&self) -> Options {
        self.tuning().options()
    }

    /// The membership the node starts with when its storage holds none: `members`, or, for a
    /// joining node that lists none, only itself as a learner (it learns the rest from the
    /// primary once it has been added).
    pub fn initial_members(&self) -> Vec<Member> {
        if self.members.is_empty() {
            vec![Member {
                id: self.id,
                client_addr: self.client_addr.clone(),
                peer_addr: self.peer_addr.clone(),
                voter: false,
            }]
        } else {
            self.members.clone()
        }
    }

    /// This node's entry in [`NodeConfig::initial_members`]: what it asks to be added as when it
    /// joins (the core adds every new member as a learner, whatever it asks).
    pub fn own_member(&self) -> Option<Member> {
        self.initial_members()
            .into_iter()
            .find(|member| member.id == self.id)
    }

    /// Whether the HTTP door (if any) speaks TLS: unless `http_tls = false`.
    pub fn http_uses_tls(&self) -> bool {
        self.http_tls.unwrap_or(true)
    }

    /// Whether the RESP door (if any) speaks TLS: only with `resp_tls = true`.
    pub fn resp_uses_tls(&self) -> bool {
        self.resp_tls.unwrap_or(false)
    }

    /// This node's certificate, key and CA.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles::for_node(&self.certs_dir, self.id)
    }

    /// The configuration as TOML, as `kvnode dev` writes it.
    pub fn to_toml(&self) -> Result<String> {
        to_toml(self, "node")
    }
}

/// Parses `ID=CLIENT_ADDR,PEER_ADDR[,learner]`, the form of `kvnode --member`.
pub fn parse_member(text: &str) -> Result<Member> {
    let usage = || {
        Error::Config(format!(
            "member {text:?} is not ID=CLIENT_ADDR,PEER_ADDR[,learner] (for example 1=127.0.0.11:7379,127.0.0.11:7380)"
        ))
    };
    let (id, addrs) = text.split_once('=').ok_or_else(usage)?;
    let id: NodeId = id.trim().parse().map_err(|_| usage())?;
    let parts: Vec<&str> = addrs.split(',').map(str::trim).collect();
    let (client_addr, peer_addr, voter) = match parts.as_slice() {
        [client, peer] => (*client, *peer, true),
        [client, peer, "learner"] => (*client, *peer, false),
        [client, peer, "voter"] => (*client, *peer, true),
        _ => return Err(usage()),
    };
    parse_socket_addr("member client address", client_addr)?;
    parse_socket_addr("member peer address", peer_addr)?;
    Ok(Member {
        id,
        client_addr: client_addr.to_string(),
        peer_addr: peer_addr.to_string(),
        voter,
    })
}

/// The address this node binds must be the one the others know it by. Binding the unspecified
/// address (0.0.0.0) is allowed as long as the port matches.
fn check_own_address(field: &str, bound: SocketAddr, advertised: &str) -> Result<()> {
    let advertised_addr = parse_socket_addr(field, advertised)?;
    let matches = bound.port() == advertised_addr.port()
        && (bound.ip().is_unspecified() || bound.ip() == advertised_addr.ip());
    if matches {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{field} is {bound} but this node's entry in members says {advertised}: they must agree"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_files::{config_error, write_file};
    use crate::wire::frame::MAX_PEER_FRAME_BYTES;

    const NODE_TOML: &str = r#"
id = 1
client_addr = "127.0.0.11:7379"
peer_addr = "127.0.0.11:7380"
data_dir = "node-1"
certs_dir = "/etc/replikv/certs"

[[members]]
id = 1
client_addr = "127.0.0.11:7379"
peer_addr = "127.0.0.11:7380"

[[members]]
id = 2
client_addr = "127.0.0.12:7379"
peer_addr = "127.0.0.12:7380"
voter = false
"#;

    fn valid_config() -> NodeConfig {
        NodeConfig::from_overrides(NodeOverrides {
            id: Some(1),
            client_addr: Some("127.0.0.11:7379".into()),
            peer_addr: Some("127.0.0.11:7380".into()),
            data_dir: Some("data".into()),
            certs_dir: Some("certs".into()),
            members: vec![
                parse_member("1=127.0.0.11:7379,127.0.0.11:7380").unwrap(),
                parse_member("2=127.0.0.12:7379,127.0.0.12:7380").unwrap(),
            ],
            ..NodeOverrides::default()
        })
        .unwrap()
    }

    #[test]
    fn loads_a_node_file_with_defaults_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "node.toml", NODE_TOML);
        let config = NodeConfig::load(&path).unwrap();
        assert_eq!(config.id, 1);
        assert_eq!(config.data_dir, dir.path().join("node-1"));
        assert_eq!(config.certs_dir, PathBuf::from("/etc/replikv/certs"));
        assert!(config.members[0].voter, "voter defaults to true");
        assert!(!config.members[1].voter);
        assert_eq!(config.log_level, DEFAULT_LOG_LEVEL);
        assert_eq!(config.core_options(), Options::default());
    }

    #[test]
    fn the_http_door_is_optional_and_speaks_tls_unless_told_not_to() {
        let config = valid_config();
        assert_eq!(config.http_addr, None);
        assert!(config.http_uses_tls());
        let dir = tempfile::tempdir().unwrap();
        let text = NODE_TOML.replacen(
            "id = 1\n",
            "id = 1\nhttp_addr = \"127.0.0.11:8080\"\nhttp_tls = false\n",
            1,
        );
        let config = NodeConfig::load(&write_file(dir.path(), "node.toml", &text)).unwrap();
        assert_eq!(config.http_addr.as_deref(), Some("127.0.0.11:8080"));
        assert!(!config.http_uses_tls());
        let bad = NODE_TOML.replacen("id = 1\n", "id = 1\nhttp_addr = \"localhost\"\n", 1);
        let message = config_error(NodeConfig::load(&write_file(dir.path(), "bad.toml", &bad)));
        assert!(message.contains("http_addr"), "{message}");
    }

    #[test]
    fn unknown_field_is_named_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = NODE_TOML.replace("id = 1\n", "id = 1\nheartbeat_ms = 5\n");
        let path = write_file(dir.path(), "node.toml", &text);
        let message = config_error(NodeConfig::load(&path));
        assert!(message.contains("heartbeat_ms"), "{message}");
        assert!(message.contains("node.toml"), "{message}");
    }

    #[test]
    fn unknown_member_field_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let text = NODE_TOML.replace("voter = false", "votre = false");
        let path = write_file(dir.path(), "node.toml", &text);
        let message = config_error(NodeConfig::load(&path));
        assert!(message.contains("votre"), "{message}");
    }

    #[test]
    fn bad_address_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let text = NODE_TOML.replacen(
            "client_addr = \"127.0.0.11:7379\"",
            "client_addr = \"localhost\"",
            1,
        );
        let path = write_file(dir.path(), "node.toml", &text);
        let message = config_error(NodeConfig::load(&path));
        assert!(
            message.contains("client_addr") && message.contains("localhost"),
            "{message}"
        );
        assert!(message.contains("node.toml"), "{message}");
    }

    #[test]
    fn missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let message = config_error(NodeConfig::load(&path));
        assert!(message.contains("absent.toml"), "{message}");
    }

    #[test]
    fn own_id_must_be_a_member() {
        let mut config = valid_config();
        config.id = 7;
        let message = config_error(config.validate());
        assert!(message.contains("id 7 is not in members"), "{message}");
    }

    #[test]
    fn member_ids_must_be_unique() {
        let mut config = valid_config();
        config.members[1].id = 1;
        let message = config_error(config.validate());
        assert!(message.contains("twice"), "{message}");
    }

    #[test]
    fn member_addresses_must_be_distinct() {
        let mut config = valid_config();
        config.members[1].peer_addr = config.members[0].peer_addr.clone();
        let message = config_error(config.validate());
        assert!(message.contains("used twice"), "{message}");
    }

    #[test]
    fn own_address_must_match_the_member_entry() {
        let mut config = valid_config();
        config.peer_addr = "127.0.0.11:9999".into();
        let message = config_error(config.validate());
        assert!(message.contains("peer_addr"), "{message}");
        config.peer_addr = "0.0.0.0:7380".into();
        config.validate().unwrap();
    }

    #[test]
    fn heartbeat_must_be_below_failure_timeout() {
        let mut config = valid_config();
        config.heartbeat_interval_ms = Some(200);
        config.failure_timeout_ms = Some(200);
        let message = config_error(config.validate());
        assert!(message.contains("heartbeat_interval_ms"), "{message}");
    }

    #[test]
    fn append_size_is_bounded_by_the_frame_limit() {
        let mut config = valid_config();
        config.max_append_bytes = Some(MAX_PEER_FRAME_BYTES);
        let message = config_error(config.validate());
        assert!(message.contains("max_append_bytes"), "{message}");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "node.toml", NODE_TOML);
        let overrides = NodeOverrides {
            tuning: Tuning {
                heartbeat_interval_ms: Some(20),
                ..Tuning::default()
            },
            log_level: Some("debug".into()),
            ..NodeOverrides::default()
        };
        let config = NodeConfig::resolve(Some(&path), overrides).unwrap();
        assert_eq!(config.heartbeat_interval_ms, Some(20));
        assert_eq!(config.log_level, "debug");
        assert_eq!(
            config.members.len(),
            2,
            "members untouched without --member"
        );
    }

    #[test]
    fn flags_alone_must_be_complete() {
        let overrides = NodeOverrides {
            id: Some(1),
            members: vec![parse_member("1=127.0.0.11:7379,127.0.0.11:7380").unwrap()],
            ..NodeOverrides::default()
        };
        let message = config_error(NodeConfig::resolve(None, overrides));
        assert!(message.contains("--client-addr"), "{message}");
    }

    #[test]
    fn parses_member_flags() {
        let member = parse_member("3=127.0.0.13:7379,127.0.0.13:7380,learner").unwrap();
        assert_eq!(member.id, 3);
        assert!(!member.voter);
        assert!(parse_member("3=127.0.0.13:7379").is_err());
        assert!(parse_member("x=127.0.0.13:7379,127.0.0.13:7380").is_err());
        assert!(parse_member("3=nowhere,127.0.0.13:7380").is_err());
    }

    #[test]
    fn a_joining_node_needs_no_members_and_starts_as_a_lone_learner() {
        let overrides = NodeOverrides {
            id: Some(4),
            client_addr: Some("127.0.0.14:7379".into()),
            peer_addr: Some("127.0.0.14:7380".into()),
            data_dir: Some("data".into()),
            certs_dir: Some("certs".into()),
            join: vec!["127.0.0.11:7379".into()],
            ..NodeOverrides::default()
        };
        let config = NodeConfig::resolve(None, overrides).unwrap();
        assert!(config.members.is_empty());
        let own = Member {
            id: 4,
            client_addr: "127.0.0.14:7379".into(),
            peer_addr: "127.0.0.14:7380".into(),
            voter: false,
        };
        assert_eq!(config.initial_members(), vec![own.clone()]);
        assert_eq!(config.own_member(), Some(own));

        // The same as a file: `members` may be left out, `join` round-trips.
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "joiner.toml", &config.to_toml().unwrap());
        let loaded = NodeConfig::load(&path).unwrap();
        assert_eq!(loaded.join, config.join);
        assert!(loaded.members.is_empty());
    }

    #[test]
    fn join_addresses_are_checked() {
        let mut config = valid_config();
        config.join = vec!["127.0.0.12".into()];
        let message = config_error(config.validate());
        assert!(
            message.contains("join") && message.contains("host:port"),
            "{message}"
        );
    }

    #[test]
    fn only_a_lone_learner_may_have_no_voter() {
        let mut config = valid_config();
        config.members.truncate(1);
        config.members[0].voter = false;
        config.validate().unwrap();
        config.members = valid_config().members;
        for member in &mut config.members {
            member.voter = false;
        }
        let message = config_error(config.validate());
        assert!(message.contains("no voter"), "{message}");
    }

    #[test]
    fn log_retention_defaults_and_overrides() {
        let mut config = valid_config();
        assert_eq!(
            config.core_options().log_retention_bytes,
            Options::default().log_retention_bytes
        );
        config = config.apply(NodeOverrides {
            tuning: Tuning {
                log_retention_bytes: Some(65536),
                ..Tuning::default()
            },
            ..NodeOverrides::default()
        });
        assert_eq!(config.core_options().log_retention_bytes, 65536);
    }

    #[test]
    fn tunables_are_keys_of_the_node_table() {
        let dir = tempfile::tempdir().unwrap();
        let text = NODE_TOML.replacen(
            "id = 1\n",
            "id = 1\nheartbeat_interval_ms = 20\nmax_append_bytes = 4096\n",
            1,
        );
        let path = write_file(dir.path(), "node.toml", &text);
        let config = NodeConfig::load(&path).unwrap();
        assert_eq!(config.heartbeat_interval_ms, Some(20));
        assert_eq!(config.core_options().failure_timeout_ms, 60);
        assert_eq!(config.core_options().max_append_bytes, 4096);

        // Written back, the file holds what was given and nothing more.
        let written = config.to_toml().unwrap();
        assert!(written.contains("heartbeat_interval_ms = 20"), "{written}");
        assert!(!written.contains("failure_timeout_ms"), "{written}");
        let path = write_file(dir.path(), "again.toml", &written);
        assert_eq!(NodeConfig::load(&path).unwrap(), config);
    }

    #[test]
    fn flags_are_named_after_the_keys() {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            overrides: NodeOverrides,
        }
        let flags = <Flags as clap::Parser>::try_parse_from([
            "kvnode",
            "--id",
            "1",
            "--member",
            "1=127.0.0.11:7379,127.0.0.11:7380,learner",
            "--heartbeat-interval-ms",
            "20",
            "--log-retention-bytes",
            "65536",
            "--join",
            "127.0.0.12:7379",
        ])
        .unwrap();
        let overrides = flags.overrides;
        assert_eq!(overrides.id, Some(1));
        assert!(!overrides.members[0].voter);
        assert_eq!(overrides.tuning.heartbeat_interval_ms, Some(20));
        assert_eq!(overrides.tuning.log_retention_bytes, Some(65536));
        assert_eq!(overrides.join, vec!["127.0.0.12:7379".to_string()]);
        assert!(
            <Flags as clap::Parser>::try_parse_from(["kvnode", "--heartbeat-ms", "20"]).is_err()
        );
    }
}
