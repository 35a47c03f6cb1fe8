//! The systems compared, the workloads, and what each workload means on each system: the one
//! place where "put at `w=majority`" becomes `SET` + `WAIT 2` for Redis or a v3 put for etcd.
//!
//! A [`Connection`] is one worker's link to one system: a replikv session (all sessions of a run
//! share one `Client` and its QUIC connections), or a TCP connection of its own to Redis or etcd.
//! Each worker has one operation in flight at a time on its connection (a closed loop).

use std::fmt;
use std::time::Duration;

use replikv::client::Client;
use replikv::{Error, ReadConsistency, Result, WriteConcern};
use serde::Serialize;

use crate::etcd::{encode_value, EtcdConnection};
use crate::http::HttpConnection;
use crate::resp::{RespConnection, WaitFor};

/// A system under test. The two no-op ones are the generator's own ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    Replikv,
    Redis,
    Etcd,
    /// The Redis driver against the no-op server.
    NoopResp,
    /// The etcd driver against the no-op server.
    NoopHttp,
    /// replikv through the primary's HTTP door (`PUT`/`GET /v1/kv/{key}`), on the generator's
    /// own HTTP/1.1 client.
    ReplikvHttp,
    /// replikv through the primary's RESP door, on the Redis driver (`SET` at the door's
    /// default, `majority`; a linearizable `GET`).
    ReplikvResp,
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            System::Replikv => "replikv",
            System::Redis => "Redis",
            System::Etcd => "etcd",
            System::NoopResp => "no-op (RESP driver)",
            System::NoopHttp => "no-op (HTTP driver)",
            System::ReplikvHttp => "replikv (HTTP door)",
            System::ReplikvResp => "replikv (RESP door)",
        })
    }
}

/// A workload of issue 11. Every one runs with the same value size, key space and warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Put at `w=majority` with `--clients` clients.
    PutMajority,
    /// Put at `w=all`.
    PutAll,
    /// Put at `w=1`.
    PutOne,
    /// Put at `w=majority` with one client: latency.
    PutSingleClient,
    /// Linearizable get (Redis: a plain `GET` on the primary) of prefilled keys.
    GetLinearizable,
}

impl Workload {
    pub fn describe(self) -> &'static str {
        match self {
            Workload::PutMajority => "put, w=majority",
            Workload::PutAll => "put, w=all",
            Workload::PutOne => "put, w=1",
            Workload::PutSingleClient => "put, w=majority, 1 client",
            Workload::GetLinearizable => "get, linearizable",
        }
    }

    /// Clients of this workload, given the run's `--clients`.
    pub fn clients(self, clients: usize) -> usize {
        match self {
            Workload::PutSingleClient => 1,
            _ => clients,
        }
    }

    pub fn reads(self) -> bool {
        self == Workload::GetLinearizable
    }
}

/// What one operation of a workload is on one system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    ReplikvPut(WriteConcern),
    ReplikvGet,
    RedisSet(Option<WaitFor>),
    RedisGet,
    EtcdPut,
    EtcdGet,
    /// `PUT /v1/kv/{key}?w=…` on replikv's HTTP door.
    HttpPut(WriteConcern),
    /// `GET /v1/kv/{key}` (linearizable, the default) on replikv's HTTP door.
    HttpGet,
}

/// How the workloads map onto Redis.
#[derive(Clone, Copy, Debug)]
pub struct RedisPlan {
    /// Replicas the `WAIT` after a `w=majority` `SET` asks for (issue 11 compares with 2).
    pub majority_replicas: u32,
    /// Replicas of the `w=all` `WAIT` (every replica).
    pub all_replicas: u32,
    /// The `WAIT` timeout; a `WAIT` that ends with fewer replicas counts as a failed put.
    pub wait_timeout: Duration,
}

/// The operation of `workload` on `system`, or `None` where the system has no such mode (etcd
/// commits every put through Raft: it has no `w=1` or `w=all`; replikv's RESP door writes at
/// `majority`, its default, as Redis's protocol has no per-command write concern).
pub fn step_for(system: System, workload: Workload, redis: RedisPlan) -> Option<Step> {
    let wait = |replicas| {
        Some(WaitFor {
            replicas,
            timeout: redis.wait_timeout,
        })
    };
    match (system, workload) {
        (System::Replikv, Workload::PutMajority | Workload::PutSingleClient) => {
            Some(Step::ReplikvPut(WriteConcern::Majority))
        }
        (System::Replikv, Workload::PutAll) => Some(Step::ReplikvPut(WriteConcern::All)),
        (System::Replikv, Workload::PutOne) => Some(Step::ReplikvPut(WriteConcern::One)),
        (System::Replikv, Workload::GetLinearizable) => Some(Step::ReplikvGet),
        (System::ReplikvHttp, Workload::PutMajority | Workload::PutSingleClient) => {
            Some(Step::HttpPut(WriteConcern::Majority))
        }
        (System::ReplikvHttp, Workload::PutAll) => Some(Step::HttpPut(WriteConcern::All)),
        (System::ReplikvHttp, Workload::PutOne) => Some(Step::HttpPut(WriteConcern::One)),
        (System::ReplikvHttp, Workload::GetLinearizable) => Some(Step::HttpGet),
        (System::ReplikvResp, Workload::PutMajority | Workload::PutSingleClient) => {
            Some(Step::RedisSet(None))
        }
        (System::ReplikvResp, Workload::GetLinearizable) => Some(Step::RedisGet),
        (System::ReplikvResp, Workload::PutAll | Workload::PutOne) => None,
        (System::Redis | System::NoopResp, Workload::PutMajority | Workload::PutSingleClient) => {
            Some(Step::RedisSet(wait(redis.majority_replicas)))
        }
        (System::Redis | System::NoopResp, Workload::PutAll) => {
            Some(Step::RedisSet(wait(redis.all_replicas)))
        }
        (System::Redis | System::NoopResp, Workload::PutOne) => Some(Step::RedisSet(None)),
        (System::Redis | System::NoopResp, Workload::GetLinearizable) => Some(Step::RedisGet),
        (System::Etcd | System::NoopHttp, Workload::PutMajority | Workload::PutSingleClient) => {
            Some(Step::EtcdPut)
        }
        (System::Etcd | System::NoopHttp, Workload::GetLinearizable) => Some(Step::EtcdGet),
        (System::Etcd | System::NoopHttp, Workload::PutAll | Workload::PutOne) => None,
    }
}

/// One worker's link to the system under test.
pub enum Connection {
    Replikv(Client),
    Redis(RespConnection),
    Etcd(EtcdConnection),
    /// A connection to a replikv node's HTTP door.
    ReplikvHttp(HttpConnection),
}

/// Where each system is reached during one run.
pub enum Endpoint<'a> {
    /// The run's replikv client; each worker takes a session of it.
    Replikv(&'a Client),
    /// `host:port` of a RESP server (the Redis primary, or the no-op server).
    Resp(&'a str),
    /// `host:port` of an etcd member (the leader), or of the no-op server.
    Http(&'a str),
    /// `host:port` of a replikv node's HTTP door (plain HTTP, as `kvnode dev` serves it), and
    /// the `Authorization` header value to send, if any.
    ReplikvHttp(&'a str, Option<&'a str>),
    /// `host:port` of a replikv node's RESP door, and the user and password each connection
    /// sends in `AUTH`, if any.
    ReplikvResp(&'a str, Option<(&'a str, &'a str)>),
}

impl Connection {
    pub async fn open(endpoint: &Endpoint<'_>) -> Result<Connection> {
        Ok(match endpoint {
            Endpoint::Replikv(client) => Connection::Replikv(client.session()),
            Endpoint::Resp(addr) => Connection::Redis(RespConnection::connect(addr).await?),
            Endpoint::Http(addr) => Connection::Etcd(EtcdConnection::connect(addr).await?),
            Endpoint::ReplikvResp(addr, credentials) => {
                let mut connection = RespConnection::connect(addr).await?;
                if let Some((user, password)) = credentials {
                    connection.auth(user, password).await?;
                }
                Connection::Redis(connection)
            }
            Endpoint::ReplikvHttp(addr, authorization) => Connection::ReplikvHttp(
                HttpConnection::connect(addr, authorization.map(str::to_string)).await?,
            ),
        })
    }

    /// One untimed round trip that sets up whatever is set up lazily (a replikv session's
    /// stream), as `kvctl bench` does before its clock starts.
    pub async fn warm(&mut self, key: &[u8]) -> Result<()> {
        match self {
            Connection::Replikv(session) => {
                session.get(key, ReadConsistency::Local).await.map(|_| ())
            }
            Connection::Redis(connection) => connection.ping().await,
            Connection::Etcd(connection) => connection.get(key).await.map(|_| ()),
            Connection::ReplikvHttp(connection) => http_get(connection, key).await.map(|_| ()),
        }
    }

    /// Runs one `step` on `key`: for a read, whether the key had a value.
    pub async fn run(
        &mut self,
        step: Step,
        key: &[u8],
        value: &Value,
        timeout: Duration,
    ) -> Result<bool> {
        match (self, step) {
            (Connection::Replikv(session), Step::ReplikvPut(write_concern)) => session
                .put(key, &value.raw, write_concern, timeout)
                .await
                .map(|_| false),
            (Connection::Replikv(session), Step::ReplikvGet) => session
                .get(key, ReadConsistency::Linearizable)
                .await
                .map(|(found, _)| found.is_some()),
            (Connection::Redis(connection), Step::RedisSet(wait)) => {
                bounded(timeout, connection.set(key, &value.raw, wait))
                    .await
                    .map(|_| false)
            }
            (Connection::Redis(connection), Step::RedisGet) => {
                bounded(timeout, connection.get(key)).await
            }
            (Connection::Etcd(connection), Step::EtcdPut) => {
                bounded(timeout, connection.put(key, &value.base64))
                    .await
                    .map(|_| false)
            }
            (Connection::Etcd(connection), Step::EtcdGet) => {
                bounded(timeout, connection.get(key)).await
            }
            (Connection::ReplikvHttp(connection), Step::HttpPut(write_concern)) => {
                let path = format!(
                    "/v1/kv/{}?w={write_concern}&timeout={}ms",
                    String::from_utf8_lossy(key),
                    timeout.as_millis()
                );
                let request =
                    connection.request("PUT", &path, "application/octet-stream", &value.raw);
                match bounded(timeout, request).await? {
                    (200, _) => Ok(false),
                    (status, body) => Err(http_error(status, body)),
                }
            }
            (Connection::ReplikvHttp(connection), Step::HttpGet) => {
                bounded(timeout, http_get(connection, key)).await
            }
            (_, step) => Err(Error::InvalidRequest(format!(
                "{step:?} does not apply to this connection"
            ))),
        }
    }

    /// Whether a failed operation leaves the connection unusable (a TCP stream half-way through
    /// a reply): then the worker opens a new one. A replikv session recovers by itself.
    pub fn reopen_after_error(&self) -> bool {
        !matches!(self, Connection::Replikv(_))
    }
}

/// A linearizable `GET /v1/kv/{key}` on replikv's HTTP door: whether the key has a value.
/// (Keys are the generator's own `bench-<n>` names: nothing in them needs escaping.)
async fn http_get(connection: &mut HttpConnection, key: &[u8]) -> Result<bool> {
    let path = format!("/v1/kv/{}", String::from_utf8_lossy(key));
    match connection.request("GET", &path, "text/plain", b"").await? {
        (200, _) => Ok(true),
        (404, _) => Ok(false),
        (status, body) => Err(http_error(status, body)),
    }
}

/// A non-success answer of replikv's HTTP door, with the start of its JSON error.
fn http_error(status: u16, body: &[u8]) -> Error {
    Error::Unavailable(format!(
        "the HTTP door answered {status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(200)])
    ))
}

/// The deadline of one operation, the same for every system: replikv's client enforces its own;
/// for Redis and etcd, this does (a `WAIT` has its own timeout too, equal to this one).
async fn bounded<T>(
    timeout: Duration,
    operation: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, operation).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Error::Unavailable(format!(
            "no answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// A worker's value, and its base64 form for etcd, made once.
pub struct Value {
    pub raw: Vec<u8>,
    pub base64: String,
}

impl Value {
    pub fn new(raw: Vec<u8>) -> Value {
        let base64 = encode_value(&raw);
        Value { raw, base64 }
    }
}

/// The key of number `n`, the same fixed-width names as `kvctl bench` uses.
pub fn key_name(n: u64) -> String {
    format!("bench-{n:012}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: RedisPlan = RedisPlan {
        majority_replicas: 2,
        all_replicas: 2,
        wait_timeout: Duration::from_millis(5000),
    };

    #[test]
    fn redis_waits_for_replicas_except_at_w1() {
        let wait_of = |workload| match step_for(System::Redis, workload, PLAN) {
            Some(Step::RedisSet(wait)) => wait.map(|wait| wait.replicas),
            other => panic!("{other:?}"),
        };
        assert_eq!(wait_of(Workload::PutMajority), Some(2));
        assert_eq!(wait_of(Workload::PutSingleClient), Some(2));
        assert_eq!(wait_of(Workload::PutAll), Some(2));
        assert_eq!(wait_of(Workload::PutOne), None);
    }

    #[test]
    fn etcd_has_only_majority_puts_and_linearizable_gets() {
        assert_eq!(step_for(System::Etcd, Workload::PutAll, PLAN), None);
        assert_eq!(step_for(System::Etcd, Workload::PutOne, PLAN), None);
        assert_eq!(
            step_for(System::Etcd, Workload::PutMajority, PLAN),
            Some(Step::EtcdPut)
        );
        assert_eq!(
            step_for(System::Etcd, Workload::GetLinearizable, PLAN),
            Some(Step::EtcdGet)
        );
    }

    #[test]
    fn replikv_uses_the_matching_write_concern() {
        assert_eq!(
            step_for(System::Replikv, Workload::PutAll, PLAN),
            Some(Step::ReplikvPut(WriteConcern::All))
        );
        assert_eq!(
            step_for(System::Replikv, Workload::PutOne, PLAN),
            Some(Step::ReplikvPut(WriteConcern::One))
        );
        assert_eq!(
            step_for(System::Replikv, Workload::GetLinearizable, PLAN),
            Some(Step::ReplikvGet)
        );
    }

    #[test]
    fn replikv_doors_map_onto_the_same_workloads() {
        assert_eq!(
            step_for(System::ReplikvHttp, Workload::PutAll, PLAN),
            Some(Step::HttpPut(WriteConcern::All))
        );
        assert_eq!(
            step_for(System::ReplikvHttp, Workload::GetLinearizable, PLAN),
            Some(Step::HttpGet)
        );
        assert_eq!(
            step_for(System::ReplikvResp, Workload::PutMajority, PLAN),
            Some(Step::RedisSet(None))
        );
        // RESP has no per-command write concern: no w=1 or w=all through that door.
        assert_eq!(step_for(System::ReplikvResp, Workload::PutAll, PLAN), None);
        assert_eq!(step_for(System::ReplikvResp, Workload::PutOne, PLAN), None);
    }

    #[test]
    fn only_the_single_client_workload_overrides_the_client_count() {
        assert_eq!(Workload::PutSingleClient.clients(64), 1);
        assert_eq!(Workload::PutMajority.clients(64), 64);
        assert_eq!(Workload::GetLinearizable.clients(64), 64);
    }
}
