//! The workload: concurrent logical clients driving the cluster through the client library while
//! the nemesis works, recording every operation in the [`History`].
//!
//! Each worker is one Jepsen "process" at a time: one [`Client::session`], one operation in
//! flight. When an operation ends indeterminate, the worker continues as a new process with a new
//! session, because the old operation may still be applied later.
//!
//! Two workloads run side by side:
//! - **Registers** (`r/<n>`): linearizable reads and `majority`/`all` writes of unique values on a
//!   small set of keys that rotates, so each key's history stays short enough to check. Besides
//!   the QUIC client's workers, some register workers go through the RESP door (`SET`/`GET`) and
//!   the HTTP door (`PUT`/`GET /v1/kv/…`) of a node chosen at random ([`crate::doors`]), so the
//!   linearizability checker covers every door.
//! - **Write-once keys** (`w/<bucket>/<n>`): each key written once, with `majority`, `all` or
//!   `w=1`, and read back at the end to find lost writes. The bucket keeps each final scan small.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replikv::client::Client;
use replikv::wire::client::ResponseMeta;
use replikv::{Error, ReadConsistency, WriteConcern};
use tokio::task::JoinSet;

use crate::doors::{DoorAddresses, DoorClient};
use crate::history::{Door, History, Op, Outcome, Record, Served};

/// Prefix of the register keys.
pub const REGISTER_PREFIX: &str = "r/";
/// Prefix of the write-once keys.
pub const WRITE_ONCE_PREFIX: &str = "w/";
/// Write-once keys are spread over this many `w/<bucket>/` prefixes.
pub const WRITE_ONCE_BUCKETS: u64 = 64;

/// The prefixes that together cover every key the chaos test writes (`x/` holds barriers).
pub fn all_prefixes() -> Vec<String> {
    let mut prefixes = vec![REGISTER_PREFIX.to_string(), "x/".to_string()];
    prefixes
        .extend((0..WRITE_ONCE_BUCKETS).map(|bucket| format!("{WRITE_ONCE_PREFIX}{bucket:02x}/")));
    prefixes
}

/// The shape of the load.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Register workers using the Rust client over QUIC.
    pub register_workers: usize,
    /// Register workers using the RESP door (writes at its default write concern, `majority`).
    pub resp_register_workers: usize,
    /// Register workers using the HTTP door.
    pub http_register_workers: usize,
    pub write_once_workers: usize,
    /// Deadline of each operation, retries included.
    pub op_timeout: Duration,
    /// Register keys in use at any time.
    pub active_registers: u64,
    /// Operations each register key receives before it is retired.
    pub ops_per_register: u64,
    /// Longest pause a worker takes between two operations.
    pub max_think: Duration,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            register_workers: 4,
            resp_register_workers: 1,
            http_register_workers: 1,
            write_once_workers: 2,
            op_timeout: Duration::from_secs(3),
            active_registers: 3,
            ops_per_register: 100,
            max_think: Duration::from_millis(10),
        }
    }
}

/// Running workers; [`Workload::stop`] ends them.
pub struct Workload {
    stop: Arc<AtomicBool>,
    workers: JoinSet<()>,
}

/// What every worker shares.
struct Shared {
    client: Client,
    /// The RESP and HTTP doors, for the workers that use them.
    doors: DoorAddresses,
    history: Arc<History>,
    config: WorkloadConfig,
    stop: Arc<AtomicBool>,
    /// Counts register operations; its value picks the key generation.
    register_ops: AtomicU64,
    /// Numbers write-once keys and makes every written value unique.
    sequence: AtomicU64,
}

impl Workload {
    /// Starts the workers on `client` and `doors`; each draws from its own generator seeded from
    /// `seed`.
    pub fn start(
        client: Client,
        doors: DoorAddresses,
        history: Arc<History>,
        seed: u64,
        config: WorkloadConfig,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            client,
            doors,
            history,
            config: config.clone(),
            stop: stop.clone(),
            register_ops: AtomicU64::new(0),
            sequence: AtomicU64::new(0),
        });
        let mut workers = JoinSet::new();
        let kinds = std::iter::repeat_n(Kind::Register(Door::Quic), config.register_workers)
            .chain(std::iter::repeat_n(
                Kind::Register(Door::Resp),
                config.resp_register_workers,
            ))
            .chain(std::iter::repeat_n(
                Kind::Register(Door::Http),
                config.http_register_workers,
            ))
            .chain(std::iter::repeat_n(
                Kind::WriteOnce,
                config.write_once_workers,
            ));
        for (worker, kind) in kinds.enumerate() {
            let rng = StdRng::seed_from_u64(
                seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(worker as u64 + 1)),
            );
            workers.spawn(run_worker(shared.clone(), kind, rng));
        }
        Workload { stop, workers }
    }

    /// Asks every worker to stop after its current operation and waits for them.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(joined) = self.workers.join_next().await {
            if let Err(error) = joined {
                if error.is_panic() {
                    std::panic::resume_unwind(error.into_panic());
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Register operations through this door.
    Register(Door),
    /// Write-once keys, through the Rust client.
    WriteOnce,
}

impl Kind {
    fn door(self) -> Door {
        match self {
            Kind::Register(door) => door,
            Kind::WriteOnce => Door::Quic,
        }
    }
}

/// A logical process's connection: a client session, or one connection through a door.
enum Connection {
    Quic(Client),
    Door(DoorClient),
}

impl Connection {
    fn open(shared: &Shared, kind: Kind, rng: &mut StdRng) -> Connection {
        match kind {
            Kind::Register(door @ (Door::Resp | Door::Http)) => {
                Connection::Door(DoorClient::connect(door, &shared.doors, rng))
            }
            Kind::Register(Door::Quic) | Kind::WriteOnce => {
                Connection::Quic(shared.client.session())
            }
        }
    }

    async fn perform(&mut self, op: &Op, timeout: Duration) -> (Outcome, Option<Served>) {
        match (self, op) {
            (Connection::Quic(session), op) => perform(session, op, timeout).await,
            (Connection::Door(door), Op::Read { key }) => door.read(key, timeout).await,
            (
                Connection::Door(door),
                Op::Write {
                    key,
                    value,
                    concern,
                },
            ) => door.write(key, value, *concern, timeout).await,
        }
    }
}

async fn run_worker(shared: Arc<Shared>, kind: Kind, mut rng: StdRng) {
    let mut connection = Connection::open(&shared, kind, &mut rng);
    let mut process = shared.history.new_process();
    while !shared.stop.load(Ordering::Relaxed) {
        let op = match kind {
            Kind::Register(door) => next_register_op(&shared, &mut rng, process, door),
            Kind::WriteOnce => next_write_once_op(&shared, &mut rng, process),
        };
        let invoked_at = shared.history.now();
        let (outcome, served) = connection.perform(&op, shared.config.op_timeout).await;
        let completed_at = shared.history.now();
        let indeterminate = matches!(outcome, Outcome::Info { .. });
        shared.history.record(Record {
            process,
            door: kind.door(),
            op,
            invoked_at,
            completed_at,
            outcome,
            served,
        });
        if indeterminate {
            connection = Connection::open(&shared, kind, &mut rng);
            process = shared.history.new_process();
        }
        let think = rng.gen_range(Duration::ZERO..=shared.config.max_think);
        tokio::time::sleep(think).await;
    }
}

fn next_register_op(shared: &Shared, rng: &mut StdRng, process: u64, door: Door) -> Op {
    let config = &shared.config;
    let count = shared.register_ops.fetch_add(1, Ordering::Relaxed);
    let generation = count / (config.ops_per_register * config.active_registers).max(1);
    let key = format!(
        "{REGISTER_PREFIX}{}",
        generation * config.active_registers + rng.gen_range(0..config.active_registers.max(1))
    );
    if rng.gen_bool(0.5) {
        Op::Read { key }
    } else {
        // RESP has no per-request write concern: its writes use the node's default, majority.
        let concern = if door == Door::Resp || rng.gen_bool(0.8) {
            WriteConcern::Majority
        } else {
            WriteConcern::All
        };
        let value = format!(
            "p{process}-{}",
            shared.sequence.fetch_add(1, Ordering::Relaxed)
        );
        Op::Write {
            key,
            value,
            concern,
        }
    }
}

fn next_write_once_op(shared: &Shared, rng: &mut StdRng, process: u64) -> Op {
    let n = shared.sequence.fetch_add(1, Ordering::Relaxed);
    let concern = match rng.gen_range(0..100) {
        0..=54 => WriteConcern::Majority,
        55..=84 => WriteConcern::All,
        _ => WriteConcern::One,
    };
    Op::Write {
        key: format!("{WRITE_ONCE_PREFIX}{:02x}/{n:010}", n % WRITE_ONCE_BUCKETS),
        value: format!("p{process}-{n}"),
        concern,
    }
}

/// Performs `op` through `session` and classifies the result.
async fn perform(session: &Client, op: &Op, timeout: Duration) -> (Outcome, Option<Served>) {
    match op {
        Op::Read { key } => match session.get(key, ReadConsistency::Linearizable).await {
            Ok((value, meta)) => (
                Outcome::ReadOk {
                    value: value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
                },
                Some(served(meta)),
            ),
            Err(error) => (failure(&error), None),
        },
        Op::Write {
            key,
            value,
            concern,
        } => match session.put(key, value, *concern, timeout).await {
            Ok((_, meta)) => (Outcome::WriteOk, Some(served(meta))),
            Err(error) => (failure(&error), None),
        },
    }
}

pub fn served(meta: ResponseMeta) -> Served {
    Served {
        node: meta.node_id,
        epoch: meta.epoch,
        index: meta.index,
    }
}

/// A failed operation is `fail` (certainly had no effect) only when the error's kind says the
/// request can never succeed as sent: it was refused before it reached any log. Anything else (a
/// timeout, a lost connection, a write concern not met) is `info`: a write may still apply, and
/// the checkers treat it as indeterminate; a read has no effect either way.
pub fn failure(error: &Error) -> Outcome {
    let error_text = error.to_string();
    if error.kind().is_permanent() {
        Outcome::Fail { error: error_text }
    } else {
        Outcome::Info { error: error_text }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_outright_refusals_are_definite_write_failures() {
        let indeterminate = [
            Error::WriteConcernNotMet {
                acknowledged: 1,
                required: 2,
            },
            Error::Unavailable("no primary".into()),
            Error::Network("connection lost".into()),
            Error::ShuttingDown,
            Error::NotPrimary {
                node: 1,
                epoch: 2,
                hint: None,
            },
            Error::Internal("?".into()),
        ];
        for error in indeterminate {
            assert!(matches!(failure(&error), Outcome::Info { .. }), "{error:?}");
        }
        let refused = [
            Error::Refused("readonly".into()),
            Error::WriteConcernImpossible {
                required: 5,
                voters: 3,
            },
        ];
        for error in refused {
            assert!(matches!(failure(&error), Outcome::Fail { .. }), "{error:?}");
        }
    }

    #[test]
    fn every_written_key_is_under_a_scanned_prefix() {
        let prefixes = all_prefixes();
        for n in [0u64, 1, 63, 64, 1_000_003] {
            let key = format!("{WRITE_ONCE_PREFIX}{:02x}/{n:010}", n % WRITE_ONCE_BUCKETS);
            assert!(
                prefixes.iter().any(|p| key.starts_with(p.as_str())),
                "{key}"
            );
        }
        assert!(prefixes.iter().any(|p| "r/17".starts_with(p.as_str())));
        // Buckets do not overlap: no prefix is a prefix of another.
        for a in &prefixes {
            for b in &prefixes {
                assert!(a == b || !b.starts_with(a.as_str()), "{a} and {b}");
            }
        }
    }
}
