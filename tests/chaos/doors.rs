//! The chaos workload's clients of the RESP and HTTP doors.
//!
//! Every door reaches the one request path of the node (the service), so an operation sent
//! through RESP or HTTP is recorded in the same [`History`](crate::history::History) as the QUIC
//! client's and checked by the same linearizability and loss checkers. These clients are
//! deliberately plain: one connection to one node at a time, no retries of their own. A node that
//! is not the primary forwards the request (any node accepts any command), so a worker stays on
//! its node until a failure, and then the next logical process picks a node at random.
//!
//! Outcomes are classified as conservatively as the checkers need: only an answer that proves the
//! request was refused before it reached any log (an HTTP 4xx the door sends for bad input or
//! credentials) is a definite failure. Every other error, a lost connection or a timeout is
//! indeterminate: the write may still apply.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use replikv::wire::client::WriteConcern;
use replikv::NodeId;
use reqwest::StatusCode;

use crate::common::Cluster;
use crate::history::{Door, Outcome, Served};

/// Where the doors of every node are, and the one HTTP client (mutual TLS, a readwrite
/// certificate) that the HTTP workers share.
#[derive(Clone)]
pub struct DoorAddresses {
    /// `(node, host:port)` of each node's RESP door.
    pub resp: Vec<(NodeId, String)>,
    /// `(node, host:port)` of each node's HTTP door.
    pub http: Vec<(NodeId, String)>,
    pub http_client: reqwest::Client,
}

impl DoorAddresses {
    /// The doors of `cluster`, which must have been started with a RESP door.
    pub fn of(cluster: &Cluster, certificate: &str, timeout: Duration) -> DoorAddresses {
        assert!(cluster.spec.resp, "the chaos cluster runs a RESP door");
        let ids = 1..=cluster.spec.nodes;
        let ca = std::fs::read(cluster.certs_dir.join("ca.pem")).expect("read the cluster CA");
        let files = cluster.client_files(certificate);
        let mut identity = std::fs::read(&files.cert).expect("read the client certificate");
        identity.extend(std::fs::read(&files.key).expect("read the client key"));
        let http_client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("the CA as PEM"))
            .identity(reqwest::Identity::from_pem(&identity).expect("the identity as PEM"))
            .timeout(timeout)
            .build()
            .expect("build the HTTP client");
        DoorAddresses {
            resp: ids
                .clone()
                .map(|id| (id, cluster.spec.resp_addr(id)))
                .collect(),
            http: ids.map(|id| (id, cluster.spec.http_addr(id))).collect(),
            http_client,
        }
    }
}

/// One logical process's connection through a RESP or HTTP door.
pub enum DoorClient {
    Resp {
        node: NodeId,
        address: String,
        /// Opened on first use; dropped after any failure.
        connection: Option<redis::aio::MultiplexedConnection>,
    },
    Http {
        node: NodeId,
        address: String,
        client: reqwest::Client,
    },
}

impl DoorClient {
    /// A client of `door` on a node chosen at random.
    pub fn connect(door: Door, doors: &DoorAddresses, rng: &mut StdRng) -> DoorClient {
        match door {
            Door::Resp => {
                let (node, address) = doors.resp[rng.gen_range(0..doors.resp.len())].clone();
                DoorClient::Resp {
                    node,
                    address,
                    connection: None,
                }
            }
            Door::Http => {
                let (node, address) = doors.http[rng.gen_range(0..doors.http.len())].clone();
                DoorClient::Http {
                    node,
                    address,
                    client: doors.http_client.clone(),
                }
            }
            Door::Quic => unreachable!("QUIC workers use the Rust client"),
        }
    }

    /// A linearizable read of `key`.
    pub async fn read(&mut self, key: &str, timeout: Duration) -> (Outcome, Option<Served>) {
        match self {
            DoorClient::Resp { .. } => {
                let mut command = redis::cmd("GET");
                command.arg(key);
                match self.resp_query::<Option<String>>(command, timeout).await {
                    Ok(value) => (Outcome::ReadOk { value }, None),
                    Err(error) => (Outcome::Info { error }, None),
                }
            }
            DoorClient::Http {
                node,
                address,
                client,
            } => {
                let url = format!(
                    "https://{address}/v1/kv/{}?consistency=linearizable&format=json",
                    path_segment(key)
                );
                let response = match client.get(url).send().await {
                    Ok(response) => response,
                    Err(error) => return (http_failure(*node, None, &error.to_string()), None),
                };
                let status = response.status();
                let served = served(&response);
                if status != StatusCode::OK {
                    let body = response.text().await.unwrap_or_default();
                    return (http_failure(*node, Some(status), &body), None);
                }
                // `?format=json` answers a missing key with `found: false`, so a 404 can only mean
                // something else went wrong.
                let body: serde_json::Value = match response.json().await {
                    Ok(body) => body,
                    Err(error) => return (http_failure(*node, None, &error.to_string()), None),
                };
                let value = match (&body["found"], &body["value"], &body["encoding"]) {
                    (serde_json::Value::Bool(false), _, _) => None,
                    (serde_json::Value::Bool(true), serde_json::Value::String(text), encoding)
                        if encoding == "utf8" =>
                    {
                        Some(text.clone())
                    }
                    _ => {
                        let error = format!("unexpected answer from node {node}: {body}");
                        return (Outcome::Info { error }, None);
                    }
                };
                (Outcome::ReadOk { value }, served)
            }
        }
    }

    /// A write of `value` to `key` at `concern` (RESP writes at the node's default, `majority`).
    pub async fn write(
        &mut self,
        key: &str,
        value: &str,
        concern: WriteConcern,
        timeout: Duration,
    ) -> (Outcome, Option<Served>) {
        match self {
            DoorClient::Resp { .. } => {
                let mut command = redis::cmd("SET");
                command.arg(key).arg(value);
                match self.resp_query::<String>(command, timeout).await {
                    Ok(status) if status == "OK" => (Outcome::WriteOk, None),
                    Ok(other) => (
                        Outcome::Info {
                            error: format!("SET answered {other:?}"),
                        },
                        None,
                    ),
                    Err(error) => (Outcome::Info { error }, None),
                }
            }
            DoorClient::Http {
                node,
                address,
                client,
            } => {
                let url = format!(
                    "https://{address}/v1/kv/{}?w={concern}&timeout={}ms",
                    path_segment(key),
                    timeout.as_millis()
                );
                let response = match client.put(url).body(value.to_string()).send().await {
                    Ok(response) => response,
                    Err(error) => return (http_failure(*node, None, &error.to_string()), None),
                };
                let status = response.status();
                let served = served(&response);
                if status.is_success() {
                    (Outcome::WriteOk, served)
                } else {
                    let body = response.text().await.unwrap_or_default();
                    (http_failure(*node, Some(status), &body), None)
                }
            }
        }
    }

    /// Sends one RESP command on this process's connection, opening it if needed. Any failure
    /// drops the connection: the caller starts a new process after an indeterminate outcome.
    async fn resp_query<T: redis::FromRedisValue>(
        &mut self,
        command: redis::Cmd,
        timeout: Duration,
    ) -> Result<T, String> {
        let DoorClient::Resp {
            node,
            address,
            connection,
        } = self
        else {
            unreachable!("resp_query on an HTTP client");
        };
        let attempt = async {
            if connection.is_none() {
                let client = redis::Client::open(format!("redis://{address}"))
                    .map_err(|error| error.to_string())?;
                *connection = Some(
                    client
                        .get_multiplexed_async_connection()
                        .await
                        .map_err(|error| error.to_string())?,
                );
            }
            let Some(open) = connection.as_mut() else {
                unreachable!("opened above");
            };
            command
                .query_async::<T>(open)
                .await
                .map_err(|error| error.to_string())
        };
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        if result.is_err() {
            *connection = None;
        }
        result.map_err(|error| format!("RESP on node {node}: {error}"))
    }
}

/// `key` as one path segment: every byte but the unreserved ones percent-encoded (the keys hold
/// `/`, which would otherwise split the path).
fn path_segment(key: &str) -> String {
    key.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// The node, epoch and index an HTTP answer names in its headers (the node that served it,
/// which for a forwarded write is the primary, not the door's node).
fn served(response: &reqwest::Response) -> Option<Served> {
    let header =
        |name: &str| -> Option<u64> { response.headers().get(name)?.to_str().ok()?.parse().ok() };
    Some(Served {
        node: header(replikv::api::http::NODE_HEADER)?,
        epoch: header(replikv::api::http::EPOCH_HEADER)?,
        index: header(replikv::api::http::INDEX_HEADER)?,
    })
}

/// An HTTP failure: definite only when the door refused the request as given (bad input or
/// credentials, too large), which it does before anything reaches a log.
fn http_failure(node: NodeId, status: Option<StatusCode>, detail: &str) -> Outcome {
    let error = match status {
        Some(status) => format!("HTTP {status} from node {node}: {detail}"),
        None => format!("HTTP to node {node}: {detail}"),
    };
    match status {
        Some(
            StatusCode::BAD_REQUEST
            | StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::PAYLOAD_TOO_LARGE,
        ) => Outcome::Fail { error },
        _ => Outcome::Info { error },
    }
}
