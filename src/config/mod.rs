//! Node and client configuration.
//!
//! - [`node`]: a node's configuration, from a TOML file ([`NodeConfig`]), from `kvnode` flags
//!   ([`NodeOverrides`], which win over the file), or both.
//! - [`client`]: a client's configuration (`kvctl`, the benchmarks), which it finds on its own
//!   ([`ClientConfig::discover`]), so that after `kvnode dev` no flags are needed.
//! - [`dev`]: the layout of the local cluster that `kvnode dev` runs ([`DevCluster`]).
//! - [`tuning`]: every tunable and every default of the crate, each declared once.
//!
//! Invariants:
//! - Configuration is untrusted input: every problem is an [`Error::Config`] that names the file
//!   and the field at fault, never a panic. Unknown fields are errors, so a typo cannot silently
//!   fall back to a default.
//! - Relative paths in a file are relative to the directory of that file, so a cluster directory
//!   can be moved or used from anywhere.
//! - This module imports nothing from `net`: the I/O shell reads its settings from here, never
//!   the other way round.

pub mod client;
pub mod dev;
pub mod node;
pub mod tuning;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

pub use client::ClientConfig;
pub use dev::{DevCluster, DEV_CLIENT_NAME};
pub use node::{parse_member, NodeConfig, NodeOverrides};
pub use tuning::Tuning;

/// Reads a TOML file into `T`, with errors that name the file (the TOML error names the field).
fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| Error::Config(format!("cannot read {}: {err}", path.display())))?;
    toml::from_str(&text).map_err(|err| {
        Error::Config(format!(
            "{}: {}",
            path.display(),
            err.to_string().trim_end()
        ))
    })
}

/// Writes a configuration as TOML; `what` names it in the error.
fn to_toml(config: &impl serde::Serialize, what: &str) -> Result<String> {
    toml::to_string_pretty(config)
        .map_err(|err| Error::Config(format!("cannot write the {what} configuration: {err}")))
}

/// Prefixes a validation error with the file it came from.
fn in_file(path: &Path, err: Error) -> Error {
    match err {
        Error::Config(message) => Error::Config(format!("{}: {message}", path.display())),
        other => other,
    }
}

/// `relative` read from the file at `path`: relative to that file's directory.
fn beside(path: &Path, relative: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new("")).join(relative)
}

/// Whether `text` looks like `host:port`: a non-empty host and a port number.
pub fn is_host_port(text: &str) -> bool {
    text.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

fn parse_socket_addr(field: &str, text: &str) -> Result<SocketAddr> {
    text.parse().map_err(|_| {
        Error::Config(format!(
            "{field} {text:?} is not an ip:port address (for example 127.0.0.11:7379)"
        ))
    })
}

/// Serializes a value through its `Display` and `FromStr` (for example a write concern written as
/// `"majority"` or `2`).
mod as_text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Text(String),
        Number(u64),
    }

    pub fn serialize<T: Display, S: Serializer>(
        value: &T,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn deserialize<'de, T, D>(deserializer: D) -> std::result::Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let text = match Text::deserialize(deserializer)? {
            Text::Text(text) => text,
            Text::Number(number) => number.to_string(),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses a duration given by a person: "500ms", "5s", "1.5s", "2m", "1h", "30d"; a bare number
/// is seconds. `kvctl`'s flags and the HTTP door's `ttl` take it.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
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
        "d" => 86_400.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use ms, s, m, h or d (e.g. 5s, 30d)"
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
mod test_files {
    use std::path::{Path, PathBuf};

    use crate::error::{Error, Result};

    pub(crate) fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    pub(crate) fn config_error(result: Result<impl std::fmt::Debug>) -> String {
        match result {
            Err(Error::Config(message)) => message,
            other => panic!("expected a config error, got {other:?}"),
        }
    }
}
