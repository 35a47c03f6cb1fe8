//! A client's configuration (`client.toml`), and how `kvctl` and the benchmarks find it.
//!
//! Invariants:
//! - A [`ClientConfig`] that passed [`ClientConfig::validate`] lists at least one `host:port`,
//!   names a client certificate that `kvctl certs init` could have issued (one rule,
//!   [`certs::check_client_name`]), and has a non-zero timeout.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::dev::DEFAULT_DEV_DIR;
use super::tuning::CLIENT_TIMEOUT_MS;
use super::{as_text, beside, in_file, is_host_port, read_toml, to_toml};
use crate::certs::{self, TlsFiles};
use crate::error::{Error, Result};
use crate::wire::client::WriteConcern;

/// Environment variable naming the client configuration file.
pub const CLIENT_CONFIG_ENV: &str = "REPLIKV_CONFIG";

/// File name of the client configuration inside a cluster directory.
pub const CLIENT_CONFIG_FILE: &str = "client.toml";

/// A client's configuration, as in `client.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Client addresses of the nodes to try (`host:port`); any one is enough to find the rest.
    pub nodes: Vec<String>,
    /// Directory holding the CA certificate and this client's certificate and key.
    pub certs_dir: PathBuf,
    /// Name of this client's certificate (`<certs_dir>/client-<client_name>.pem`, see
    /// [`TlsFiles::for_client`]).
    pub client_name: String,
    /// Write concern of writes that do not name one: `1`, `N`, `majority` or `all`.
    #[serde(default, with = "as_text")]
    pub default_write_concern: WriteConcern,
    /// Per-request deadline, retries included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    CLIENT_TIMEOUT_MS
}

impl ClientConfig {
    /// Reads and validates a client configuration file.
    pub fn load(path: &Path) -> Result<ClientConfig> {
        let mut config: ClientConfig = read_toml(path)?;
        config.certs_dir = beside(path, &config.certs_dir);
        config.validate().map_err(|err| in_file(path, err))?;
        Ok(config)
    }

    /// Finds the client configuration: `explicit` if given, else the file named by
    /// `$REPLIKV_CONFIG`, else `./.replikv/client.toml`. Returns it with the path it came from.
    pub fn discover(explicit: Option<&Path>) -> Result<(ClientConfig, PathBuf)> {
        let from_env = std::env::var_os(CLIENT_CONFIG_ENV).map(PathBuf::from);
        Self::discover_from(explicit, from_env)
    }

    fn discover_from(
        explicit: Option<&Path>,
        from_env: Option<PathBuf>,
    ) -> Result<(ClientConfig, PathBuf)> {
        let path = match (explicit, from_env) {
            (Some(path), _) => path.to_path_buf(),
            (None, Some(path)) if !path.as_os_str().is_empty() => path,
            _ => {
                let default = Path::new(DEFAULT_DEV_DIR).join(CLIENT_CONFIG_FILE);
                if !default.exists() {
                    return Err(Error::Config(format!(
                        "no client configuration found: ${CLIENT_CONFIG_ENV} is not set and {} does not exist; \
                         start a local cluster with `kvnode dev`, or pass --config FILE",
                        default.display()
                    )));
                }
                default
            }
        };
        let config = Self::load(&path)?;
        Ok((config, path))
    }

    /// Checks the node list, the certificate name and the timeout.
    pub fn validate(&self) -> Result<()> {
        if self.nodes.is_empty() {
            return Err(Error::Config(
                "nodes is empty: list the client address of at least one node".into(),
            ));
        }
        for node in &self.nodes {
            if !is_host_port(node) {
                return Err(Error::Config(format!(
                    "nodes entry {node:?} is not host:port (for example 127.0.0.11:7379)"
                )));
            }
        }
        certs::check_client_name(&self.client_name)?;
        if self.timeout_ms == 0 {
            return Err(Error::Config("timeout_ms must be at least 1".into()));
        }
        Ok(())
    }

    /// This client's certificate, key and CA.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles::for_client(&self.certs_dir, &self.client_name)
    }

    /// The configuration as TOML, as `kvnode dev` writes it.
    pub fn to_toml(&self) -> Result<String> {
        to_toml(self, "client")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_files::{config_error, write_file};

    #[test]
    fn client_config_parses_write_concern_as_text_or_number() {
        let dir = tempfile::tempdir().unwrap();
        let base =
            "nodes = [\"127.0.0.11:7379\"]\ncerts_dir = \"certs\"\nclient_name = \"admin\"\n";
        let path = write_file(dir.path(), "a.toml", base);
        let config = ClientConfig::load(&path).unwrap();
        assert_eq!(config.default_write_concern, WriteConcern::Majority);
        assert_eq!(config.timeout_ms, CLIENT_TIMEOUT_MS);
        assert_eq!(config.certs_dir, dir.path().join("certs"));

        let path = write_file(
            dir.path(),
            "b.toml",
            &format!("{base}default_write_concern = 2\n"),
        );
        assert_eq!(
            ClientConfig::load(&path).unwrap().default_write_concern,
            WriteConcern::Count(2)
        );

        let path = write_file(
            dir.path(),
            "c.toml",
            &format!("{base}default_write_concern = \"most\"\n"),
        );
        let message = config_error(ClientConfig::load(&path));
        assert!(message.contains("most"), "{message}");
    }

    #[test]
    fn client_config_rejects_unknown_fields_and_bad_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let text = "nodes = [\"127.0.0.11\"]\ncerts_dir = \"certs\"\nclient_name = \"admin\"\n";
        let path = write_file(dir.path(), "a.toml", text);
        let message = config_error(ClientConfig::load(&path));
        assert!(message.contains("host:port"), "{message}");

        let text =
            "nodes = [\"127.0.0.11:1\"]\ncerts_dir = \"c\"\nclient_name = \"admin\"\ncolor = 1\n";
        let path = write_file(dir.path(), "b.toml", text);
        let message = config_error(ClientConfig::load(&path));
        assert!(message.contains("color"), "{message}");
    }

    #[test]
    fn discover_prefers_explicit_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let text =
            "nodes = [\"127.0.0.11:7379\"]\ncerts_dir = \"certs\"\nclient_name = \"admin\"\n";
        let explicit = write_file(dir.path(), "explicit.toml", text);
        let from_env = write_file(dir.path(), "env.toml", text);
        let (_, found) =
            ClientConfig::discover_from(Some(&explicit), Some(from_env.clone())).unwrap();
        assert_eq!(found, explicit);
        let (_, found) = ClientConfig::discover_from(None, Some(from_env.clone())).unwrap();
        assert_eq!(found, from_env);
        let missing = dir.path().join("missing.toml");
        let message = config_error(ClientConfig::discover_from(Some(&missing), None));
        assert!(message.contains("missing.toml"), "{message}");
    }

    #[test]
    fn client_name_follows_the_certificate_name_rule() {
        let dir = tempfile::tempdir().unwrap();
        let text = |name: &str| {
            format!(
                "nodes = [\"127.0.0.11:7379\"]\ncerts_dir = \"certs\"\nclient_name = \"{name}\"\n"
            )
        };
        let path = write_file(dir.path(), "a.toml", &text("ops.team"));
        assert_eq!(ClientConfig::load(&path).unwrap().client_name, "ops.team");
        let path = write_file(dir.path(), "b.toml", &text(".hidden"));
        let message = config_error(ClientConfig::load(&path));
        assert!(message.contains(".hidden"), "{message}");
    }
}
