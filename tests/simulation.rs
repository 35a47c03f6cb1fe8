//! The seeded cluster simulator (see `docs/ARCHITECTURE.md`): clusters of `core::Node`s on
//! in-memory storage, with a simulated network and clock, driven through thousands of random
//! histories with partitions, crashes that lose unflushed data, restarts and message loss. The
//! protocol's invariants (`docs/PROTOCOL.md`) are checked after every step; a failure prints the
//! seed, and `REPLIKV_SIM_SEED=<seed>` replays it.
//!
//! - `REPLIKV_SIM_SEEDS=<n>` runs `n` histories per test instead of the default.
//! - `REPLIKV_SIM_SEED=<seed>` runs that one history (with `RUST_LOG=debug` to watch it).
//! - `REPLIKV_SIM_DIGEST=1` prints one line per history with a hash of every node's final state
//!   and log, and the numbers of steps and messages (run with `-- --nocapture`). Two builds that
//!   print the same lines ran the same histories: a refactoring shows it changed no behaviour.
//! - `REPLIKV_SIM_NO_DRIFT_MARGIN=1` makes the nodes of the drifting-clock histories assume
//!   perfect clocks (`max_clock_drift_ppm = 0`) while their clocks still drift: an experiment
//!   showing what the lease's drift margin is for (the read checker then finds stale reads).
//! - `REPLIKV_SIM_LONG_SEEDS=<n>` runs `n` long histories (default 3) and
//!   `REPLIKV_SIM_LONG_ENTRIES=<n>` makes each commit `n` entries (default 120,000).
//!
//! Clocks: in the drifting-clock histories each node sees `now` scaled by its own rate, fixed
//! for the history and drawn within `1 ± max_clock_drift_ppm` of true time; every other history
//! runs perfect clocks. A node's wall clock (what key deadlines are judged against) is its own
//! `now` after [`WALL_CLOCK_START_MS`]. The checkers use true (simulator) time, except that a
//! read must hide a key whose deadline the serving node's wall clock had reached.
//!
//! Network: every peer message crosses it as the frame a peer link sends (`wire::frame`, under
//! `MAX_PEER_FRAME_BYTES`) and is decoded on delivery; a message over the limit is dropped, as
//! the link drops it. Messages are delayed 1 to 12 ms each, so they are reordered, and lost at
//! the history's loss rate.
//!
//! Clients: most histories run three clients that wait for each answer; besides puts, deletes and
//! reads of a few keys, they increment a few counters (`INCR`, decided on the primary) and set
//! keys of their own that expire a few hundred ms later (`SET … PX`), which the primary deletes
//! as their deadlines pass and every read must hide from then on; the pipelined ones run
//! several sessions with several operations in flight each, whose writes may reach the primary
//! out of sequence order. The long histories commit 100,000+ entries under pipelined load with a
//! log of a few kilobytes, so compaction, snapshots to a backup back from a long absence, and the
//! pruning of the node's entry cache (`core/node/log.rs`) all happen under load.
//!
//! Checks: the invariants of `docs/ARCHITECTURE.md` after every step; at the end, every
//! acknowledged write and every read against the committed log applied as the apply step applies
//! it (each request id at most once; a key whose deadline the serving node's clock had reached
//! reads as absent), every counter's committed values (1, 2, 3, … with no
//! repeat: no increment decided on a state missing an earlier one) and acknowledged answers, and
//! every node's state and sessions against the same.
//!
//! Everything is deterministic: nodes draw from seeded generators, the network from the
//! simulator's generator, and all iteration is over ordered maps.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use replikv::core::{FlushTicket, Node, Options, Output, SnapshotCounters, Timestamp};
use replikv::storage::expiry::{deadline_key, decode_deadline};
use replikv::storage::memory::MemoryStorage;
use replikv::storage::system_keys::is_system_key;
use replikv::storage::Storage;
use replikv::wire::client::{
    Condition, Expiry, ReadConsistency, Request, Response, Role, Write, WriteConcern,
};
use replikv::wire::frame::{self, MAX_PEER_FRAME_BYTES};
use replikv::wire::message::{
    Answer, Change, Entry, Epoch, LogIndex, Member, Membership, Message, NodeId, RequestId,
    Versioned,
};
use replikv::Error;

/// Simulated milliseconds between ticks delivered to every node.
const TICK_MS: u64 = 10;

/// Where the nodes' wall clocks start (ms since the Unix epoch): a node's wall clock is this plus
/// its own `now`, so deadlines are real-looking times and drift with the node's clock.
const WALL_CLOCK_START_MS: u64 = 1_800_000_000_000;

/// Keys the clients set with a deadline (`x0`, `x1`, …), apart from the others, so that whether
/// one of them exists (which depends on the primary's clock when it decides) never enters the
/// checks of the other writes.
const EXPIRING_KEYS: u64 = 3;

/// The longest a client sets a key to live, in ms of true time.
const MAX_KEY_LIFETIME_MS: u64 = 400;

/// The drift bound of the drifting-clock histories: the default `max_clock_drift_ppm`.
const DRIFT_BOUND_PPM: u64 = 100_000;

/// Parts per million in one.
const PPM: i128 = 1_000_000;

/// The nodes' `session_ttl_ms` in most histories: longer than any history, so no session
/// expires and the sweep only reads.
const NO_EXPIRY_MS: u64 = 1 << 40;

/// The nodes' `session_ttl_ms` in the expiring-session histories: well below a history's length,
/// so sessions of clients stuck behind partitions and failovers expire during it.
const SHORT_SESSION_TTL_MS: u64 = 1_000;

/// The log retention of the long histories: about a hundred entries, so the log is compacted all
/// the time.
const LONG_HISTORY_RETENTION_BYTES: u64 = 4 * 1024;

/// Entries each long history commits unless `REPLIKV_SIM_LONG_ENTRIES` says otherwise: past the
/// entry cache's 100,000, so the cache is pruned too (`core/node/log.rs`).
const LONG_HISTORY_ENTRIES: u64 = 120_000;

/// Simulated time a long history may take per entry to commit before it counts as stuck.
const LONG_HISTORY_MS_PER_ENTRY: u64 = 10;

/// One simulated node: its storage survives crashes, its protocol state does not.
struct SimNode {
    storage: Arc<MemoryStorage>,
    node: Option<Node>,
    flush: Option<(FlushTicket, Timestamp)>,
    restart_at: Option<Timestamp>,
    /// Highest commit index already checked against the global committed log.
    checked_commit: LogIndex,
    incarnation: u64,
    /// The membership the node was started with (a joiner knows only itself).
    initial_membership: Membership,
    /// How far this node's clock runs fast (positive) or slow against true time, in ppm.
    clock_rate_ppm: i64,
}

/// A client operation in flight.
#[derive(Clone, Debug)]
struct ClientOp {
    client: usize,
    request: Request,
    invoked_at: Timestamp,
    node: NodeId,
}

/// An acknowledged write.
#[derive(Clone, Debug)]
struct AckedWrite {
    request_id: RequestId,
    key: Vec<u8>,
    /// `None` for a delete.
    value: Option<Vec<u8>>,
    index: LogIndex,
    /// Whether the answer said the key existed before the write.
    existed: bool,
    concern: WriteConcern,
    acked_at: Timestamp,
}

/// An acknowledged increment (by 1) of a counter key, and the counter's value it answered.
#[derive(Clone, Debug)]
struct AckedIncrement {
    request_id: RequestId,
    key: Vec<u8>,
    answered: i64,
    index: LogIndex,
    concern: WriteConcern,
}

/// An acknowledged compare-and-set (`Set` if the key is at `expected_version`), and whether the
/// primary answered that it applied.
#[derive(Clone, Debug)]
struct AckedCompareAndSet {
    request_id: RequestId,
    key: Vec<u8>,
    value: Vec<u8>,
    expected_version: LogIndex,
    applied: bool,
    index: LogIndex,
    concern: WriteConcern,
}

/// An acknowledged `SET` of an expiring key with its deadline (on the writer's wall clock).
#[derive(Clone, Debug)]
struct AckedExpiringSet {
    request_id: RequestId,
    key: Vec<u8>,
    value: Vec<u8>,
    deadline: u64,
    index: LogIndex,
    concern: WriteConcern,
}

/// A watch as a node's hub serves it (`api::watch`): it follows one node's committed log from an
/// index, taking each entry's changes under its prefix (`changes_of`, the hub's own), and when
/// its node is down or no longer holds the next index (compacted), it resumes on another live
/// node after the last index it examined, as the client library does.
#[derive(Debug)]
struct SimWatcher {
    prefix: Vec<u8>,
    /// The node it reads now.
    node: NodeId,
    /// Where it started: every committed change under the prefix from here is owed.
    start: LogIndex,
    /// The next index to examine.
    next: LogIndex,
    delivered: Vec<replikv::wire::client::Change>,
    /// Every live node had compacted the next index: the watch ended with `Compacted`.
    compacted: bool,
}

/// Counters the clients increment, apart from the keys they put, delete and read.
const COUNTERS: u64 = 3;

/// A completed read. Every read reflects the committed log at its index (state is applied only
/// once committed); a linearizable one also reflects every write acknowledged before it began.
#[derive(Clone, Debug)]
struct CompletedRead {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    /// The version the read gave: the index of the write of `value` (0 when absent).
    version: LogIndex,
    index: LogIndex,
    invoked_at: Timestamp,
    linearizable: bool,
    /// The serving node's wall clock when it answered.
    wall_clock: u64,
}

/// A node's whole state, in key order, each value with its version.
type StatePairs = Vec<(Vec<u8>, Versioned)>;

/// `storage`'s whole state with versions (`None` if it cannot be read).
fn whole_state(storage: &dyn Storage) -> Option<StatePairs> {
    // Not a scan, which skips the system keyspace: key deadlines, users and tokens must agree too.
    storage
        .state_chunk(None, usize::MAX)
        .ok()
        .map(|page| page.pairs)
}

/// A node's whole state in key order, and its sessions table by client id: invariant 4 covers
/// both (sessions decide which retries apply, so they must agree too).
type StateAndSessions = (StatePairs, Vec<(u64, replikv::wire::message::Session)>);

/// The fault schedule's knobs for one history.
#[derive(Clone, Debug)]
struct Faults {
    loss: f64,
    crash_probability: f64,
    partition_probability: f64,
    /// How long a crashed node stays down, in ms.
    outage_ms: std::ops::Range<Timestamp>,
    /// Crashes only ever hit backups (partitions are off too, see [`Simulation::under_load`]).
    spare_primary: bool,
}

struct Simulation {
    seed: u64,
    rng: StdRng,
    now: Timestamp,
    options: Options,
    nodes: BTreeMap<NodeId, SimNode>,
    /// Frames in flight, encoded as a peer link encodes them: (delivery time, sequence) → frame.
    network: BTreeMap<(Timestamp, u64), Vec<u8>>,
    sequence: u64,
    /// Messages the nodes sent, including those the network dropped.
    messages: u64,
    /// Messages dropped because they do not fit in a peer frame, as a peer link drops them.
    oversized: u64,
    /// Directed links that drop every message.
    cut: BTreeSet<(NodeId, NodeId)>,
    faults: Faults,
    next_token: u64,
    pending: BTreeMap<(NodeId, u64), ClientOp>,
    clients: Vec<ClientState>,
    /// Requests to send again (same request id) at the given time.
    retries: Vec<(Timestamp, ClientOp)>,
    acked: Vec<AckedWrite>,
    increments: Vec<AckedIncrement>,
    compare_and_sets: Vec<AckedCompareAndSet>,
    expiring_sets: Vec<AckedExpiringSet>,
    reads: Vec<CompletedRead>,
    primaries: BTreeMap<Epoch, NodeId>,
    committed: BTreeMap<LogIndex, Entry>,
    steps: u64,
    /// Probability per tick of asking the primary to add or remove a member.
    membership_change_probability: f64,
    /// Probability that a client, once an operation is done, goes on as a new client (a new
    /// client id, as a new `kvctl` run does), leaving its old session idle.
    new_client_probability: f64,
    next_client_id: u64,
    next_node_id: NodeId,
    /// Each node's clock rate is drawn within this bound, from `clock_rng` (0: perfect clocks).
    clock_drift_ppm: u64,
    /// Separate from `rng`, so a history with drifting clocks meets the same faults and load
    /// draws as the same seed with perfect clocks.
    clock_rng: StdRng,
    /// Clients write and read keys `k0 .. k{keys - 1}` (an `i32`, the type this draw always had,
    /// so that the histories of a seed stay the same).
    keys: i32,
    /// Snapshot transfer counts of the node incarnations that crashed.
    retired_snapshot_counters: Vec<SnapshotCounters>,
    /// Whether clients also compare-and-set, on the version their last read of the key gave.
    compare_and_set: bool,
    watchers: Vec<SimWatcher>,
}

/// One client session: a client id, its write sequence, and its operations in flight.
#[derive(Clone, Debug)]
struct ClientState {
    id: u64,
    /// The sequence of the last write issued.
    sequence: u64,
    /// Operations issued and not yet settled (answered, or given up).
    in_flight: usize,
    /// Most operations in flight at once: 1 for a client that waits for each answer, more for
    /// one that pipelines (concurrent calls on one session, as the client library allows).
    max_in_flight: usize,
    next_op_at: Timestamp,
    /// The version each key had in this client's last read of it.
    versions_seen: BTreeMap<Vec<u8>, LogIndex>,
}

impl Simulation {
    /// A history on perfect clocks.
    fn new(seed: u64, node_count: u64) -> Self {
        Simulation::with_clocks(seed, node_count, 0, NO_EXPIRY_MS)
    }

    /// A history whose nodes' clocks drift within [`DRIFT_BOUND_PPM`], the bound they are
    /// configured with (unless `REPLIKV_SIM_NO_DRIFT_MARGIN` is set).
    fn drifting(seed: u64, node_count: u64) -> Self {
        Simulation::with_clocks(seed, node_count, DRIFT_BOUND_PPM, NO_EXPIRY_MS)
    }

    /// A history on perfect clocks whose nodes expire client sessions idle for
    /// [`SHORT_SESSION_TTL_MS`].
    fn expiring_sessions(seed: u64, node_count: u64) -> Self {
        let mut simulation = Simulation::with_clocks(seed, node_count, 0, SHORT_SESSION_TTL_MS);
        simulation.new_client_probability = 0.05;
        simulation
    }

    fn with_clocks(seed: u64, node_count: u64, clock_drift_ppm: u64, session_ttl_ms: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut clock_rng = StdRng::seed_from_u64(seed ^ 0xc10c_d21f);
        let no_margin = std::env::var_os("REPLIKV_SIM_NO_DRIFT_MARGIN").is_some();
        let members = (1..=node_count)
            .map(|id| Member {
                id,
                client_addr: format!("client-{id}"),
                peer_addr: format!("peer-{id}"),
                voter: true,
            })
            .collect();
        let membership = Membership::new(members);
        let options = Options {
            heartbeat_interval_ms: 100,
            failure_timeout_ms: 300,
            failure_jitter_ms: 150,
            replica_lag_timeout_ms: 1000,
            max_append_bytes: 16 * 1024,
            max_inflight_entries: 256,
            // Some histories keep a tiny log, so members fall behind it and need snapshots.
            log_retention_bytes: if rng.gen_bool(0.3) { 2_000 } else { 1 << 30 },
            max_clock_drift_ppm: if no_margin { 0 } else { clock_drift_ppm },
            max_scan_page_pairs: 1000,
            max_scan_page_bytes: 1024 * 1024,
            session_ttl_ms,
        };
        let faults = Faults {
            loss: [0.0, 0.01, 0.05, 0.2][rng.gen_range(0..4)],
            crash_probability: [0.0, 0.001, 0.003][rng.gen_range(0..3)],
            partition_probability: [0.0, 0.002, 0.005][rng.gen_range(0..3)],
            outage_ms: 200..2000,
            spare_primary: false,
        };
        let mut nodes = BTreeMap::new();
        for id in 1..=node_count {
            let storage = Arc::new(MemoryStorage::new());
            let clock_rate_ppm = clock_rate(&mut clock_rng, clock_drift_ppm);
            let node = Node::new(
                id,
                membership.clone(),
                storage.clone(),
                options.clone(),
                rng.gen(),
                0,
            )
            .expect("node starts on empty storage");
            nodes.insert(
                id,
                SimNode {
                    storage,
                    node: Some(node),
                    flush: None,
                    restart_at: None,
                    checked_commit: 0,
                    incarnation: 0,
                    initial_membership: membership.clone(),
                    clock_rate_ppm,
                },
            );
        }
        let clients = (0..3).map(|i| ClientState::new(1000 + i, 1)).collect();
        Simulation {
            seed,
            rng,
            now: 0,
            options,
            nodes,
            network: BTreeMap::new(),
            sequence: 0,
            messages: 0,
            oversized: 0,
            cut: BTreeSet::new(),
            faults,
            next_token: 1,
            pending: BTreeMap::new(),
            clients,
            retries: Vec::new(),
            acked: Vec::new(),
            increments: Vec::new(),
            compare_and_sets: Vec::new(),
            expiring_sets: Vec::new(),
            reads: Vec::new(),
            primaries: BTreeMap::new(),
            committed: BTreeMap::new(),
            steps: 0,
            membership_change_probability: 0.0,
            new_client_probability: 0.0,
            next_client_id: 2000,
            next_node_id: node_count + 1,
            clock_drift_ppm,
            clock_rng,
            keys: 8,
            retired_snapshot_counters: Vec::new(),
            compare_and_set: false,
            watchers: Vec::new(),
        }
    }

    /// Watchers that follow the nodes' applied logs, each from index 1 on a node of its own:
    /// every key, one key's prefix, and the counters (see [`SimWatcher`]). They read storage
    /// only and draw nothing from `rng`, so a seed's history is the same with them or without.
    fn with_watchers(mut self) -> Self {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for (i, prefix) in [&b"k"[..], b"k1", b"n"].into_iter().enumerate() {
            self.watchers.push(SimWatcher {
                prefix: prefix.to_vec(),
                node: ids[i % ids.len()],
                start: 1,
                next: 1,
                delivered: Vec::new(),
                compacted: false,
            });
        }
        self
    }

    /// Clients also compare-and-set (one write in ten), each on the version its last read of
    /// the key gave (0, "absent", if it has not read it): often stale, so both outcomes occur.
    fn with_compare_and_set(mut self) -> Self {
        self.compare_and_set = true;
        self
    }

    /// Clients that pipeline: `sessions` client sessions at once, each with up to `depth`
    /// operations in flight. Each operation is first sent after a random pause of up to two
    /// ticks, so concurrent calls of one session may reach a node out of sequence order, as two
    /// tasks sharing a client session can.
    fn with_pipelining(mut self, sessions: u64, depth: usize) -> Self {
        self.clients = (0..sessions)
            .map(|i| ClientState::new(1000 + i, depth))
            .collect();
        self
    }

    /// A history that runs long under load ([`Simulation::run_until_committed`]): five nodes, a
    /// small log (compacted all the time, so a member that falls behind needs a snapshot),
    /// eight pipelining client sessions on 64 keys, and crashes that keep a node down for seconds.
    ///
    /// Even seeds spare the primary (only backups crash, no partitions): one primary then takes
    /// every write, so its entry cache, which a new primary refills from its applied index,
    /// reaches its bound and is pruned, and the backup away since the start comes back behind both
    /// the compacted log and the cache. Odd seeds crash and partition anyone, primary included,
    /// and drift the clocks.
    fn under_load(seed: u64) -> Self {
        let spare_primary = seed % 2 == 0;
        let drift = if spare_primary { 0 } else { DRIFT_BOUND_PPM };
        let mut sim = Simulation::with_clocks(seed, 5, drift, NO_EXPIRY_MS).with_pipelining(8, 8);
        sim.keys = 64;
        sim.options.log_retention_bytes = LONG_HISTORY_RETENTION_BYTES;
        sim.faults = Faults {
            loss: [0.0, 0.01, 0.05][sim.rng.gen_range(0..3)],
            crash_probability: 0.0005,
            partition_probability: if spare_primary { 0.0 } else { 0.0005 },
            outage_ms: 1_000..8_000,
            spare_primary,
        };
        // The nodes were built with the default options: start them again with these.
        let ids: Vec<NodeId> = sim.nodes.keys().copied().collect();
        for id in ids {
            let seed = sim.rng.gen();
            let sim_node = &sim.nodes[&id];
            let node = Node::new(
                id,
                sim_node.initial_membership.clone(),
                sim_node.storage.clone(),
                sim.options.clone(),
                seed,
                0,
            )
            .expect("node starts on empty storage");
            if let Some(sim_node) = sim.nodes.get_mut(&id) {
                sim_node.node = Some(node);
            }
        }
        sim
    }

    /// `now` as node `id`'s clock shows it (true time for a node not yet created).
    fn local_now(&self, id: NodeId) -> Timestamp {
        let rate = self.nodes.get(&id).map_or(0, |sim| sim.clock_rate_ppm);
        local_time(self.now, rate)
    }

    /// Also adds and removes members during the history.
    fn with_membership_changes(mut self) -> Self {
        self.membership_change_probability = 0.01;
        self
    }

    /// Asks the primary to add a fresh node (started as a lone learner, as `kvnode --join` does)
    /// or to remove a member. The change may be refused or lost; the log says what happened.
    fn change_membership(&mut self) {
        let Some(primary) = self.current_primary() else {
            return;
        };
        let members = self.nodes[&primary]
            .node
            .as_ref()
            .map(|n| n.membership().clone())
            .unwrap_or_default();
        let request = if members.members.len() < 5 && self.rng.gen_bool(0.6) {
            let id = self.next_node_id;
            self.next_node_id += 1;
            let member = Member {
                id,
                client_addr: format!("client-{id}"),
                peer_addr: format!("peer-{id}"),
                voter: false,
            };
            let alone = Membership::new(vec![member.clone()]);
            let storage = Arc::new(MemoryStorage::new());
            let clock_rate_ppm = clock_rate(&mut self.clock_rng, self.clock_drift_ppm);
            let node = Node::new(
                id,
                alone.clone(),
                storage.clone(),
                self.options.clone(),
                self.rng.gen(),
                local_time(self.now, clock_rate_ppm),
            )
            .expect("a joiner starts on empty storage");
            self.nodes.insert(
                id,
                SimNode {
                    storage,
                    node: Some(node),
                    flush: None,
                    restart_at: None,
                    checked_commit: 0,
                    incarnation: 0,
                    initial_membership: alone,
                    clock_rate_ppm,
                },
            );
            Request::AddMember { member }
        } else if members.members.len() > 3 {
            let ids: Vec<NodeId> = members.members.iter().map(|m| m.id).collect();
            Request::RemoveMember {
                id: ids[self.rng.gen_range(0..ids.len())],
            }
        } else {
            return;
        };
        let token = self.next_token;
        self.next_token += 1;
        self.with_node(primary, |n, now| n.request(now, token, request));
    }

    /// The members as the freshest primary sees them (all nodes before any change).
    fn members(&self) -> BTreeSet<NodeId> {
        let freshest = self
            .nodes
            .values()
            .filter_map(|s| s.node.as_ref())
            .max_by_key(|n| (n.role() == Role::Primary, n.epoch(), n.last_index()));
        match freshest {
            Some(node) => node.membership().members.iter().map(|m| m.id).collect(),
            None => self.nodes.keys().copied().collect(),
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "simulation seed {} failed at t={}ms step {}: {what}\nreplay with REPLIKV_SIM_SEED={}",
            self.seed, self.now, self.steps, self.seed
        );
    }

    /// Runs `duration` ms of faults and load, then heals, waits, and checks the end state.
    fn run(&mut self, duration: Timestamp) {
        while self.now < duration {
            self.step(true);
        }
        self.settle();
    }

    /// Runs faults and load until the checker has seen `entries` entries committed, then heals,
    /// waits, and checks the end state. One backup is down from the start until 90% of them are
    /// committed: it comes back behind the primary's compacted log and its entry cache, and is
    /// sent a snapshot while the load goes on. Fails if `entries` are not committed within
    /// `deadline` ms of simulated time (the cluster stopped making progress).
    fn run_until_committed(&mut self, entries: u64, deadline: Timestamp) {
        // Let the cluster commit a little on every node, then take a backup that acknowledged
        // some of it away for the long stretch.
        while self.committed.len() < 100 && self.now < deadline {
            self.step(false);
            self.client_load(true);
        }
        let primary = self.current_primary();
        let absent = self
            .live_nodes()
            .find(|&(id, node, _)| Some(id) != primary && node.applied_index() > 0)
            .map(|(id, _, _)| id);
        if let Some(absent) = absent {
            self.crash(absent);
            if let Some(sim) = self.nodes.get_mut(&absent) {
                sim.restart_at = None;
            }
        }
        let mut absent = absent;
        while (self.committed.len() as u64) < entries {
            if self.now >= deadline {
                self.fail(format!(
                    "only {} entries committed after {deadline} ms",
                    self.committed.len()
                ));
            }
            if absent.is_some() && self.committed.len() as u64 >= entries / 10 * 9 {
                if let Some(id) = absent.take() {
                    if self.nodes[&id].node.is_none() {
                        self.restart(id);
                    }
                }
            }
            self.step(true);
        }
        self.settle();
        let counters = self.snapshot_counters();
        println!(
            "seed {}: {} entries committed; snapshot transfers offered {}, started from scratch \
             {}, resumed {}, completed {}; chunks sent {}; snapshots installed {}",
            self.seed,
            self.committed.len(),
            counters.offered,
            counters.started_from_scratch,
            counters.resumed,
            counters.completed,
            counters.chunks_sent,
            counters.installed
        );
    }

    /// The snapshot transfer counts of every node incarnation of this history, summed.
    fn snapshot_counters(&self) -> SnapshotCounters {
        let live = self
            .nodes
            .values()
            .filter_map(|sim| sim.node.as_ref().map(Node::snapshot_counters));
        let mut total = SnapshotCounters::default();
        for counters in self.retired_snapshot_counters.iter().copied().chain(live) {
            total += counters;
        }
        total
    }

    /// Heals every fault, stops the load, waits for the cluster to converge, and checks the end
    /// state.
    fn settle(&mut self) {
        self.heal();
        let quiet_until = self.now + 10_000;
        while self.now < quiet_until {
            self.step(false);
            if self.converged() {
                break;
            }
        }
        self.check_final();
        if std::env::var_os("REPLIKV_SIM_DIGEST").is_some() {
            println!("{}", self.digest());
        }
    }

    /// One line that names this history's outcome: a hash of every node's final protocol state,
    /// log, state, sessions and rollback tree, with the counts of steps, messages and answers.
    fn digest(&self) -> String {
        let mut hasher = DefaultHasher::new();
        for (id, sim) in &self.nodes {
            id.hash(&mut hasher);
            sim.incarnation.hash(&mut hasher);
            let storage = &sim.storage;
            let meta = storage.meta().ok();
            let (_, last) = storage.last().unwrap_or((0, 0));
            let from = meta.as_ref().map_or(1, |meta| meta.log_start.max(1));
            let stored = (
                meta,
                storage.entries(from, last, usize::MAX).ok(),
                whole_state(storage.as_ref()),
                storage.sessions().ok(),
                storage.rolled_back().ok(),
            );
            format!("{stored:?}").hash(&mut hasher);
            if let Some(node) = &sim.node {
                format!(
                    "{:?}",
                    node.status(local_time(self.now, sim.clock_rate_ppm))
                )
                .hash(&mut hasher);
            }
        }
        format!("{:?} {:?}", self.committed, self.primaries).hash(&mut hasher);
        format!(
            "sim-digest seed={} hash={:016x} steps={} messages={} delivered={} acked={} reads={} now={}",
            self.seed,
            hasher.finish(),
            self.steps,
            self.messages,
            self.sequence,
            self.acked.len(),
            self.reads.len(),
            self.now
        )
    }

    fn step(&mut self, faults: bool) {
        self.steps += 1;
        // Advance to the next tick or message, whichever comes first.
        let next_tick = (self.now / TICK_MS + 1) * TICK_MS;
        let next_message = self.network.keys().next().map(|&(at, _)| at);
        let next_flush = self
            .nodes
            .values()
            .filter_map(|n| n.flush.map(|(_, at)| at))
            .min();
        let next = [Some(next_tick), next_message, next_flush]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_tick);
        self.now = next.max(self.now);

        // Deliver due messages.
        while let Some(entry) = self.network.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let bytes = entry.remove();
            let message = self.receive_frame(&bytes);
            let to = message.to;
            self.with_node(to, |node, now| node.step(now, message));
        }
        // Complete due flushes: the flush happens now, covering everything written so far.
        let due: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.flush.is_some_and(|(_, at)| at <= self.now))
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            let Some(sim) = self.nodes.get_mut(&id) else {
                continue;
            };
            let Some((ticket, _)) = sim.flush.take() else {
                continue;
            };
            if let Err(err) = sim.storage.flush() {
                self.fail(format!("flush of node {id} failed: {err}"));
            }
            self.with_node(id, |node, now| node.flushed(now, ticket));
        }
        if self.now % TICK_MS == 0 {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.with_node(id, |node, now| node.tick(now));
            }
            if faults {
                self.inject_faults();
                if self.membership_change_probability > 0.0
                    && self.rng.gen_bool(self.membership_change_probability)
                {
                    self.change_membership();
                }
            }
            self.restart_due();
            self.client_load(faults);
            self.feed_watchers();
        }
        self.check_invariants();
    }

    /// Lets every watcher take what its node knows is committed since it last looked (as the
    /// hub follows the commit index, which on a backup runs ahead of its applied index).
    fn feed_watchers(&mut self) {
        let mut watchers = std::mem::take(&mut self.watchers);
        for watcher in &mut watchers {
            if watcher.compacted {
                continue;
            }
            // Its node first, then the others in id order (no rng: histories stay the same).
            let mut candidates: Vec<NodeId> = vec![watcher.node];
            candidates.extend(self.nodes.keys().copied().filter(|&id| id != watcher.node));
            let mut every_live_node_compacted = true;
            let mut live_nodes = 0;
            for id in candidates {
                let Some(sim) = self.nodes.get(&id) else {
                    continue;
                };
                let Some(node) = sim.node.as_ref() else {
                    continue;
                };
                live_nodes += 1;
                let log_start = sim.storage.meta().map_or(1, |meta| meta.log_start);
                if watcher.next < log_start {
                    continue; // compacted here: try another node
                }
                every_live_node_compacted = false;
                watcher.node = id;
                let committed = node.commit_index();
                if watcher.next <= committed {
                    let entries = sim
                        .storage
                        .entries(watcher.next, committed, usize::MAX)
                        .unwrap_or_else(|err| self.fail(format!("node {id}'s log: {err}")));
                    for entry in &entries {
                        if entry.index != watcher.next {
                            self.fail(format!(
                                "node {id} served entry {} to a watcher at {}",
                                entry.index, watcher.next
                            ));
                        }
                        watcher.next += 1;
                        watcher.delivered.extend(
                            replikv::api::watch::changes_of(entry)
                                .into_iter()
                                .filter(|change| change.key.starts_with(&watcher.prefix)),
                        );
                    }
                }
                break;
            }
            watcher.compacted = live_nodes > 0 && every_live_node_compacted;
        }
        self.watchers = watchers;
    }

    /// Runs an entry point on a live node, then routes its outputs and schedules its flush.
    fn with_node(
        &mut self,
        id: NodeId,
        call: impl FnOnce(&mut Node, Timestamp) -> replikv::Result<()>,
    ) {
        let now = self.now;
        let local_now = self.local_now(id);
        let Some(sim) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(node) = sim.node.as_mut() else {
            return;
        };
        node.set_wall_clock(WALL_CLOCK_START_MS + local_now);
        if let Err(err) = call(node, local_now) {
            self.fail(format!("node {id} returned an error: {err}"));
        }
        let outputs = match node.finish_pass() {
            Ok(outputs) => outputs,
            Err(err) => self.fail(format!("node {id} failed to finish a pass: {err}")),
        };
        let flush = node.flush_needed();
        if sim.flush.is_none() {
            if let Some(ticket) = flush {
                let delay = self.rng.gen_range(1..=4);
                sim.flush = Some((ticket, now + delay));
            }
        }
        for output in outputs {
            match output {
                Output::Send(message) => self.transmit(message),
                Output::Reply { token, response } => self.on_reply(id, token, response),
                Output::Topology { .. } => {}
            }
        }
    }

    fn transmit(&mut self, message: Message) {
        self.messages += 1;
        if self.cut.contains(&(message.from, message.to)) {
            return;
        }
        if self.faults.loss > 0.0 && self.rng.gen_bool(self.faults.loss) {
            return;
        }
        let Some(bytes) = self.send_frame(&message) else {
            return;
        };
        let delay = self.rng.gen_range(1..=12);
        self.sequence += 1;
        self.network
            .insert((self.now + delay, self.sequence), bytes);
    }

    /// The frame a peer link writes for `message` (`net::peer::forward`): encoded with the real
    /// codec under the peer frame limit. A message over the limit is dropped, with a warning, as
    /// the link drops it; the node is not told. An encoding that does not decode back to the same
    /// message is a codec bug.
    fn send_frame(&mut self, message: &Message) -> Option<Vec<u8>> {
        let bytes = match frame::encode(message, MAX_PEER_FRAME_BYTES) {
            Ok(bytes) => bytes,
            Err(err) => {
                self.oversized += 1;
                let (from, to) = (message.from, message.to);
                tracing::warn!(from, to, %err, "cannot frame an outbound message; dropping it");
                return None;
            }
        };
        match frame::decode::<Message>(&bytes[4..]) {
            Ok(decoded) if decoded == *message => Some(bytes),
            Ok(decoded) => self.fail(format!(
                "the peer codec changed a message: sent {message:?}, decodes as {decoded:?}"
            )),
            Err(err) => self.fail(format!(
                "the peer codec cannot decode what it encoded ({err}): {message:?}"
            )),
        }
    }

    /// The message a peer link reads from `bytes` (`frame::read_frame`): the length prefix checked
    /// against the peer frame limit, then the body decoded. The simulated network neither cuts nor
    /// corrupts frames, so a frame that fails here is a codec bug.
    fn receive_frame(&self, bytes: &[u8]) -> Message {
        let Some((prefix, body)) = bytes.split_first_chunk::<4>() else {
            self.fail(format!(
                "a frame of {} bytes has no length prefix",
                bytes.len()
            ));
        };
        let length = u32::from_be_bytes(*prefix) as usize;
        let decoded = frame::check_length(length, MAX_PEER_FRAME_BYTES).and_then(|()| {
            if length == body.len() {
                frame::decode::<Message>(body)
            } else {
                Err(Error::Protocol(format!(
                    "the length prefix says {length} bytes, the body has {}",
                    body.len()
                )))
            }
        });
        match decoded {
            Ok(message) => message,
            Err(err) => self.fail(format!("a peer frame does not decode: {err}")),
        }
    }

    fn inject_faults(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let n = ids.len();
        // Crashes: never more than a minority down at once, so the cluster can make progress.
        if self.rng.gen_bool(self.faults.crash_probability) {
            let down = self.nodes.values().filter(|s| s.node.is_none()).count();
            if down < (n - 1) / 2 {
                // Prefer the primary half the time: that is where failover bugs live.
                let primary = self.current_primary();
                let victim = if self.faults.spare_primary {
                    let backups: Vec<NodeId> = ids
                        .iter()
                        .copied()
                        .filter(|&id| Some(id) != primary)
                        .collect();
                    backups[self.rng.gen_range(0..backups.len())]
                } else {
                    match primary {
                        Some(p) if self.rng.gen_bool(0.5) => p,
                        _ => ids[self.rng.gen_range(0..n)],
                    }
                };
                self.crash(victim);
            }
        }
        if self.rng.gen_bool(self.faults.partition_probability) {
            self.cut.clear();
            match self.rng.gen_range(0..5) {
                0 => {
                    // Isolate the primary (or a random node).
                    let victim = self
                        .current_primary()
                        .unwrap_or(ids[self.rng.gen_range(0..n)]);
                    self.isolate(&[victim]);
                }
                1 => {
                    // Majority / minority split.
                    let mut shuffled = ids.clone();
                    shuffle(&mut self.rng, &mut shuffled);
                    let minority = &shuffled[..(n - 1) / 2];
                    self.isolate(minority);
                }
                2 => {
                    // A ring: each node hears only its neighbours, so each sees a different majority.
                    for (i, &a) in ids.iter().enumerate() {
                        for (j, &b) in ids.iter().enumerate() {
                            let distance = (i as i64 - j as i64).rem_euclid(n as i64);
                            let near = distance <= 1 || distance == n as i64 - 1;
                            if a != b && !near {
                                self.cut.insert((a, b));
                            }
                        }
                    }
                }
                3 => {
                    // One-way cut: a random node cannot send to another.
                    let a = ids[self.rng.gen_range(0..n)];
                    let b = ids[self.rng.gen_range(0..n)];
                    if a != b {
                        self.cut.insert((a, b));
                    }
                }
                _ => {} // heal
            }
        }
    }

    fn isolate(&mut self, group: &[NodeId]) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for &a in group {
            for &b in &ids {
                if !group.contains(&b) {
                    self.cut.insert((a, b));
                    self.cut.insert((b, a));
                }
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
        self.faults.loss = 0.0;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            if self.nodes[&id].node.is_none() {
                self.restart(id);
            }
        }
    }

    fn crash(&mut self, id: NodeId) {
        let keep = self.rng.gen_range(0..4);
        let Some(sim) = self.nodes.get_mut(&id) else {
            return;
        };
        if sim.node.is_none() {
            return;
        }
        let retired = sim.node.take().map(|node| node.snapshot_counters());
        sim.flush = None;
        // The disk wrote some prefix of its queue, maybe nothing.
        sim.storage.crash_keeping(keep);
        sim.restart_at = Some(self.now + self.rng.gen_range(self.faults.outage_ms.clone()));
        self.retired_snapshot_counters.extend(retired);
        // Requests in flight at the crashed node are indeterminate; their clients retry.
        let lost: Vec<(NodeId, u64)> = self
            .pending
            .keys()
            .filter(|(node, _)| *node == id)
            .copied()
            .collect();
        for key in lost {
            if let Some(op) = self.pending.remove(&key) {
                self.retry(op);
            }
        }
    }

    fn restart_due(&mut self) {
        let due: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, s)| s.restart_at.is_some_and(|at| at <= self.now))
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            self.restart(id);
        }
    }

    fn restart(&mut self, id: NodeId) {
        let seed = self.rng.gen();
        let now = self.local_now(id);
        let options = self.options.clone();
        let Some(sim) = self.nodes.get_mut(&id) else {
            return;
        };
        let membership = sim.initial_membership.clone();
        let storage: Arc<dyn Storage> = sim.storage.clone();
        match Node::new(id, membership, storage, options, seed, now) {
            Ok(node) => {
                sim.node = Some(node);
                sim.restart_at = None;
                sim.checked_commit = 0;
                sim.incarnation += 1;
            }
            Err(err) => self.fail(format!("node {id} failed to restart: {err}")),
        }
    }

    fn current_primary(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(&id, s)| s.node.as_ref().map(|n| (id, n)))
            .filter(|(_, n)| n.role() == Role::Primary)
            .max_by_key(|(_, n)| n.epoch())
            .map(|(id, _)| id)
    }

    // --- clients ---

    /// Sends due retries and, while `new_operations`, starts new operations on idle clients.
    fn client_load(&mut self, new_operations: bool) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retries)
            .into_iter()
            .partition(|(at, _)| *at <= self.now);
        self.retries = later;
        for (_, mut op) in due {
            op.node = self.pick_node();
            self.invoke(op);
        }
        if !new_operations {
            return;
        }
        for client in 0..self.clients.len() {
            // At most the free slots at the start of the tick: an operation answered at once
            // frees its slot for the next tick, not this one.
            let state = &self.clients[client];
            for _ in state.in_flight..state.max_in_flight {
                if self.clients[client].next_op_at > self.now {
                    break;
                }
                self.start_operation(client);
            }
        }
    }

    /// Starts a new operation of `client`: a write (with the session's next sequence) or a read.
    fn start_operation(&mut self, client: usize) {
        let key = format!("k{}", self.rng.gen_range(0..self.keys)).into_bytes();
        let request = if self.rng.gen_bool(0.7) {
            let state = &mut self.clients[client];
            state.sequence += 1;
            let request_id = RequestId {
                client_id: state.id,
                sequence: state.sequence,
            };
            let value = format!("c{}-{}", state.id, state.sequence).into_bytes();
            let write = match self.rng.gen_range(0..20) {
                0 | 1 => Write::Delete { key },
                2..=4 => Write::Increment {
                    key: format!("n{}", self.rng.gen_range(0..COUNTERS)).into_bytes(),
                    by: 1,
                },
                7 | 8 => Write::Set {
                    key: format!("x{}", self.rng.gen_range(0..EXPIRING_KEYS)).into_bytes(),
                    value,
                    condition: Condition::Always,
                    expiry: Expiry::At(
                        WALL_CLOCK_START_MS
                            + self.now
                            + self.rng.gen_range(1..=MAX_KEY_LIFETIME_MS),
                    ),
                    get: false,
                },
                5 | 6 if self.compare_and_set => Write::Set {
                    condition: Condition::IfVersion(
                        state.versions_seen.get(&key).copied().unwrap_or(0),
                    ),
                    key,
                    value,
                    expiry: Expiry::Clear,
                    get: false,
                },
                _ => Write::Put { key, value },
            };
            let concern = match self.rng.gen_range(0..4) {
                0 => WriteConcern::One,
                1 => WriteConcern::Count(2),
                2 => WriteConcern::All,
                _ => WriteConcern::Majority,
            };
            Request::Write {
                request_id,
                write,
                write_concern: concern,
                timeout_ms: 1000,
            }
        } else {
            let consistency = match self.rng.gen_range(0..10) {
                0 | 1 => ReadConsistency::Stale,
                2 | 3 => ReadConsistency::Local,
                _ => ReadConsistency::Linearizable,
            };
            let key = if self.rng.gen_bool(0.2) {
                format!("x{}", self.rng.gen_range(0..EXPIRING_KEYS)).into_bytes()
            } else {
                key
            };
            Request::Get { key, consistency }
        };
        let state = &mut self.clients[client];
        state.in_flight += 1;
        let pipelined = state.max_in_flight > 1;
        let node = self.pick_node();
        let op = ClientOp {
            client,
            request,
            invoked_at: self.now,
            node,
        };
        if pipelined {
            // Concurrent calls: this one may be sent after a later one of the same session.
            let at = self.now + self.rng.gen_range(0..=2) * TICK_MS;
            self.retries.push((at, op));
        } else {
            self.invoke(op);
        }
    }

    fn pick_node(&mut self) -> NodeId {
        match self.current_primary() {
            Some(primary) if self.rng.gen_bool(0.8) => primary,
            _ => {
                let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                ids[self.rng.gen_range(0..ids.len())]
            }
        }
    }

    fn invoke(&mut self, op: ClientOp) {
        let node = op.node;
        let alive = self.nodes.get(&node).is_some_and(|s| s.node.is_some());
        if !alive {
            self.retry(op);
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        let request = op.request.clone();
        self.pending.insert((node, token), op);
        self.with_node(node, |n, now| n.request(now, token, request));
    }

    /// Sends the same request (same request id) again, elsewhere, after a short pause. Writes keep
    /// their original invocation time: the history treats them as one operation.
    fn retry(&mut self, op: ClientOp) {
        if self.now > op.invoked_at + 5000 {
            // The client gives up; the write's outcome stays unknown.
            self.clients[op.client].in_flight -= 1;
            return;
        }
        let at = self.now + self.rng.gen_range(1..=5) * TICK_MS;
        self.retries.push((at, op));
    }

    fn on_reply(&mut self, node: NodeId, token: u64, response: Response) {
        let Some(op) = self.pending.remove(&(node, token)) else {
            return;
        };
        let client = op.client;
        match (&op.request, response) {
            (
                Request::Write {
                    request_id,
                    write,
                    write_concern,
                    ..
                },
                Response::Written { result, .. },
            ) => {
                let (key, value) = match write {
                    Write::Put { key, value } => (key.clone(), Some(value.clone())),
                    Write::Delete { key } => (key.clone(), None),
                    Write::Increment { key, .. } => {
                        let Some(Answer::Integer(answered)) = result.answer else {
                            self.fail(format!("an increment answered {result:?}: {op:?}"));
                        };
                        self.increments.push(AckedIncrement {
                            request_id: *request_id,
                            key: key.clone(),
                            answered,
                            index: result.index,
                            concern: *write_concern,
                        });
                        self.finish(client);
                        return;
                    }
                    Write::Set {
                        key,
                        value,
                        condition: Condition::IfVersion(expected_version),
                        ..
                    } => {
                        let Some(Answer::Applied(applied)) = result.answer else {
                            self.fail(format!("a compare-and-set answered {result:?}: {op:?}"));
                        };
                        self.compare_and_sets.push(AckedCompareAndSet {
                            request_id: *request_id,
                            key: key.clone(),
                            value: value.clone(),
                            expected_version: *expected_version,
                            applied,
                            index: result.index,
                            concern: *write_concern,
                        });
                        self.finish(client);
                        return;
                    }
                    Write::Set {
                        key,
                        value,
                        condition: Condition::Always,
                        expiry: Expiry::At(deadline),
                        ..
                    } => {
                        self.expiring_sets.push(AckedExpiringSet {
                            request_id: *request_id,
                            key: key.clone(),
                            value: value.clone(),
                            deadline: *deadline,
                            index: result.index,
                            concern: *write_concern,
                        });
                        self.finish(client);
                        return;
                    }
                    other => panic!(
                        "the simulated clients issue only puts, deletes, increments, \
                         compare-and-sets and sets with a deadline: {other:?}"
                    ),
                };
                self.acked.push(AckedWrite {
                    request_id: *request_id,
                    key,
                    value,
                    index: result.index,
                    existed: result.existed,
                    concern: *write_concern,
                    acked_at: self.now,
                });
                self.finish(client);
            }
            (
                Request::Get { key, consistency },
                Response::Value {
                    value,
                    version,
                    meta,
                },
            ) => {
                self.clients[client]
                    .versions_seen
                    .insert(key.clone(), version);
                let wall_clock = WALL_CLOCK_START_MS + self.local_now(node);
                self.reads.push(CompletedRead {
                    key: key.clone(),
                    value,
                    version,
                    index: meta.index,
                    invoked_at: op.invoked_at,
                    linearizable: *consistency == ReadConsistency::Linearizable,
                    wall_clock,
                });
                self.finish(client);
            }
            (_, Response::Error(Error::WriteConcernNotMet { .. })) => self.finish(client),
            (
                Request::Write {
                    write_concern: WriteConcern::Count(required),
                    ..
                },
                Response::Error(Error::WriteConcernImpossible { voters, .. }),
            ) if *required as usize > voters => self.finish(client),
            // A write overtaken by a later write of its session (pipelining) is refused; its
            // outcome is unknown (an earlier attempt may still apply it). Refusing anything else
            // (a client's latest write, or for a sequence it never issued) is a bug.
            (
                Request::Write { request_id, .. },
                Response::Error(Error::StaleRequest { latest, .. }),
            ) if latest > request_id.sequence && latest <= self.clients[client].sequence => {
                self.finish(client)
            }
            (_, Response::Error(Error::StaleRequest { .. })) => self.fail(format!(
                "stale request error for a client's latest request {op:?}"
            )),
            (_, Response::Error(Error::NotPrimary { .. } | Error::Unavailable(_))) => {
                self.retry(op)
            }
            (_, other) => self.fail(format!("unexpected reply {other:?} to {op:?}")),
        }
    }

    fn finish(&mut self, client: usize) {
        // A client takes a new identity only between operations, never with others in flight.
        if self.new_client_probability > 0.0
            && self.clients[client].in_flight == 1
            && self.rng.gen_bool(self.new_client_probability)
        {
            self.clients[client].id = self.next_client_id;
            self.clients[client].sequence = 0;
            self.next_client_id += 1;
        }
        let state = &mut self.clients[client];
        state.in_flight -= 1;
        state.next_op_at = self.now + self.rng.gen_range(0..30);
    }

    // --- invariants ---

    fn live_nodes(&self) -> impl Iterator<Item = (NodeId, &Node, &Arc<MemoryStorage>)> {
        self.nodes
            .iter()
            .filter_map(|(&id, s)| s.node.as_ref().map(|n| (id, n, &s.storage)))
    }

    fn check_invariants(&mut self) {
        // 1. At most one primary per epoch.
        let primaries: Vec<(NodeId, Epoch)> = self
            .live_nodes()
            .filter(|(_, n, _)| n.role() == Role::Primary)
            .map(|(id, n, _)| (id, n.epoch()))
            .collect();
        for (id, epoch) in primaries {
            match self.primaries.get(&epoch) {
                Some(&other) if other != id => {
                    self.fail(format!("two primaries in epoch {epoch}: {other} and {id}"))
                }
                Some(_) => {}
                None => {
                    self.primaries.insert(epoch, id);
                    // 2. A new primary's log holds every committed entry.
                    let storage = self.nodes[&id].storage.clone();
                    let log_start = storage.meta().map_or(1, |meta| meta.log_start);
                    for (index, committed) in self.committed.range(log_start..) {
                        let entry = storage.entry(*index).ok().flatten();
                        if entry.as_ref() != Some(committed) {
                            self.fail(format!(
                                "primary {id} of epoch {epoch} lacks committed entry {index}: has {entry:?}, committed {committed:?}"
                            ));
                        }
                    }
                }
            }
        }
        // 3. Committed prefixes agree with the global committed log (log matching for committed
        // entries) and are never rewritten.
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let sim = &self.nodes[&id];
            let Some(node) = sim.node.as_ref() else {
                continue;
            };
            let commit = node.commit_index();
            if commit <= sim.checked_commit {
                continue;
            }
            // Entries compacted away were checked before, or arrived in a snapshot.
            let log_start = sim.storage.meta().map_or(1, |meta| meta.log_start);
            let from = (sim.checked_commit + 1).max(log_start);
            if from > commit {
                continue;
            }
            let entries = match sim.storage.entries(from, commit, usize::MAX) {
                Ok(entries) => entries,
                Err(err) => self.fail(format!("node {id} cannot read its log: {err}")),
            };
            if entries.len() as u64 != commit - from + 1 {
                self.fail(format!(
                    "node {id} has commit index {commit} but only {} entries from {from}",
                    entries.len()
                ));
            }
            for entry in entries {
                match self.committed.get(&entry.index) {
                    Some(existing) if *existing != entry => self.fail(format!(
                        "node {id} committed {entry:?} but {existing:?} was committed at that index"
                    )),
                    Some(_) => {}
                    None => {
                        self.committed.insert(entry.index, entry);
                    }
                }
            }
            if let Some(sim) = self.nodes.get_mut(&id) {
                sim.checked_commit = commit;
            }
        }
        if self.steps % 200 == 0 {
            self.check_logs_match();
            self.check_states_match();
        }
    }

    /// Invariant 3: logs that share an `(epoch, index)` are identical up to it.
    fn check_logs_match(&self) {
        let logs: Vec<(NodeId, Vec<Entry>)> = self
            .nodes
            .iter()
            .map(|(&id, s)| {
                let (_, last) = s.storage.last().unwrap_or((0, 0));
                (
                    id,
                    s.storage.entries(1, last, usize::MAX).unwrap_or_default(),
                )
            })
            .collect();
        // Logs may start at different indexes (compaction): compare where both hold entries.
        for (i, (a, log_a)) in logs.iter().enumerate() {
            for (b, log_b) in logs.iter().skip(i + 1) {
                let (Some(first_a), Some(first_b)) = (log_a.first(), log_b.first()) else {
                    continue;
                };
                let start = first_a.index.max(first_b.index);
                let (skip_a, skip_b) = (start - first_a.index, start - first_b.index);
                if skip_a >= log_a.len() as u64 || skip_b >= log_b.len() as u64 {
                    continue; // no index held by both
                }
                let slice_a = &log_a[(start - first_a.index) as usize..];
                let slice_b = &log_b[(start - first_b.index) as usize..];
                let common = slice_a.len().min(slice_b.len());
                let Some(top) = (0..common)
                    .rev()
                    .find(|&k| slice_a[k].epoch == slice_b[k].epoch)
                else {
                    continue;
                };
                if slice_a[..=top] != slice_b[..=top] {
                    self.fail(format!(
                        "logs of {a} and {b} share (epoch {}, index {}) but differ before it",
                        slice_a[top].epoch, slice_a[top].index
                    ));
                }
            }
        }
    }

    /// Invariant 4: nodes at the same applied index have the same state.
    fn check_states_match(&self) {
        let mut by_index: BTreeMap<LogIndex, (NodeId, StateAndSessions)> = BTreeMap::new();
        for (id, node, storage) in self.live_nodes() {
            let state = (
                whole_state(storage.as_ref()).unwrap_or_default(),
                storage.sessions().unwrap_or_default(),
            );
            match by_index.get(&node.applied_index()) {
                Some((other, other_state)) if *other_state != state => self.fail(format!(
                    "nodes {other} and {id} differ at applied index {}",
                    node.applied_index()
                )),
                Some(_) => {}
                None => {
                    by_index.insert(node.applied_index(), (id, state));
                }
            }
        }
    }

    fn converged(&self) -> bool {
        let mut commits = BTreeSet::new();
        let mut applied = BTreeSet::new();
        let mut primaries = 0;
        // A new primary's log is committed only once its own first entry is: until then the
        // members may agree on a commit index below entries committed in an earlier epoch.
        let mut primary_log_committed = false;
        let members = self.members();
        for (_, node, _) in self.live_nodes().filter(|(id, _, _)| members.contains(id)) {
            commits.insert(node.commit_index());
            applied.insert(node.applied_index());
            if node.role() == Role::Primary {
                primaries += 1;
                primary_log_committed = node.commit_index() == node.last_index();
            }
        }
        let clients_idle = self.clients.iter().all(|c| c.in_flight == 0);
        commits.len() == 1
            && applied.len() == 1
            && primaries == 1
            && primary_log_committed
            && clients_idle
    }

    fn check_final(&mut self) {
        // Liveness after healing: one primary, every node caught up.
        if !self.converged() {
            let view: Vec<String> = self
                .live_nodes()
                .map(|(id, n, _)| {
                    format!(
                        "{id}:{:?} e{} last {} commit {} applied {}",
                        n.role(),
                        n.epoch(),
                        n.last_index(),
                        n.commit_index(),
                        n.applied_index()
                    )
                })
                .collect();
            self.fail(format!("cluster did not converge after healing: {view:?}"));
        }
        self.check_logs_match();
        self.check_states_match();
        let model = match AppliedModel::build(&self.committed) {
            Ok(model) => model,
            Err(err) => self.fail(err),
        };
        self.check_writes(&model);
        self.check_increments(&model);
        self.check_compare_and_sets(&model);
        self.check_expiring_sets(&model);
        self.check_watchers();
        self.check_reads(&model);
        self.check_final_states(&model);
    }

    /// Check 5: no acknowledged majority (or all) write is lost: it is committed at its index.
    /// Every acknowledged write found there took effect there, once (at most once: its request id
    /// is applied by no other entry), and was answered with whether its key existed before it.
    fn check_writes(&self, model: &AppliedModel) {
        let mut lost_minor = 0;
        for write in &self.acked {
            let committed = self.committed.get(&write.index);
            let present = committed.is_some_and(|entry| {
                let operation_matches = match (&entry.operation, &write.value) {
                    (replikv::Operation::Put { key, value }, Some(written)) => {
                        *key == write.key && value == written
                    }
                    (replikv::Operation::Delete { key }, None) => *key == write.key,
                    _ => false,
                };
                entry.request_id == Some(write.request_id) && operation_matches
            });
            let durable_concern =
                matches!(write.concern, WriteConcern::Majority | WriteConcern::All);
            if durable_concern && !present {
                self.fail(format!(
                    "acknowledged write lost: {write:?}; committed there: {committed:?}"
                ));
            }
            if !present {
                lost_minor += 1;
                continue;
            }
            match model.applied.get(&write.request_id) {
                Some(&index) if index == write.index => {}
                other => self.fail(format!(
                    "acknowledged write {write:?} did not take effect at its index: the apply step took its request at {other:?}"
                )),
            }
            let existed = model.value_before(&write.key, write.index).is_some();
            if write.existed != existed {
                self.fail(format!(
                    "acknowledged write {write:?} says the key existed: {}, the committed log says {existed}",
                    write.existed
                ));
            }
        }
        // w=1 and w=2 writes may be rolled back by a failover (kept in the rollback tree); that is
        // allowed, and the count shows up when a history is replayed with logging.
        tracing::info!(
            seed = self.seed,
            lost_minor,
            acked = self.acked.len(),
            oversized = self.oversized,
            "history checked"
        );
    }

    /// Check 5b (read-modify-write): each counter's committed values go 1, 2, 3, … (every
    /// increment was decided on a state holding every earlier one, and applied once), and every
    /// acknowledged increment took effect at its index, once, with the value it answered (one at
    /// w=1 or w=2 may have been rolled back, as a put may).
    /// Every acknowledged compare-and-set found committed took effect at its index, and was
    /// decided against the key's version just before that index: applied exactly when that
    /// version is the one it named, and then the key holds its value at its own index. A durable
    /// one must be found.
    fn check_compare_and_sets(&self, model: &AppliedModel) {
        for write in &self.compare_and_sets {
            let entry = self.committed.get(&write.index);
            let present = entry.is_some_and(|entry| {
                entry.request_id == Some(write.request_id)
                    && matches!(
                        &entry.operation,
                        replikv::Operation::Batch { answer: Some(Answer::Applied(applied)), .. }
                            if *applied == write.applied
                    )
            });
            if !present {
                if matches!(write.concern, WriteConcern::Majority | WriteConcern::All) {
                    self.fail(format!(
                        "acknowledged compare-and-set lost or answered other than logged: \
                         {write:?}; committed there: {entry:?}"
                    ));
                }
                continue;
            }
            if model.applied.get(&write.request_id) != Some(&write.index) {
                self.fail(format!(
                    "acknowledged compare-and-set {write:?} did not take effect at its index (it \
                     did at {:?})",
                    model.applied.get(&write.request_id)
                ));
            }
            let version_before = model
                .versioned_at(&write.key, write.index - 1)
                .map_or(0, |versioned| versioned.version);
            if (version_before == write.expected_version) != write.applied {
                self.fail(format!(
                    "compare-and-set {write:?} was decided against the wrong version: the key \
                     was at version {version_before} before it"
                ));
            }
            let after = model.versioned_at(&write.key, write.index);
            let written = Some(Versioned {
                version: write.index,
                value: write.value.clone(),
            });
            if write.applied && after != written {
                self.fail(format!(
                    "applied compare-and-set {write:?} left the key at {after:?}"
                ));
            }
        }
    }

    /// Every acknowledged `SET` with a deadline found committed took effect at its index, once,
    /// leaving its value at that index and its deadline recorded; a durable one must be found.
    fn check_expiring_sets(&self, model: &AppliedModel) {
        for write in &self.expiring_sets {
            let durable = matches!(write.concern, WriteConcern::Majority | WriteConcern::All);
            match model.applied.get(&write.request_id) {
                Some(&index) if index == write.index => {}
                None if !durable => continue, // rolled back by a failover, as w=1 may be
                other => self.fail(format!(
                    "acknowledged set {write:?} did not take effect at its index (it did at \
                     {other:?})"
                )),
            }
            let written = Some(Versioned {
                version: write.index,
                value: write.value.clone(),
            });
            let left = model.versioned_at(&write.key, write.index);
            let deadline = model.deadline_at(&write.key, write.index);
            if left != written || deadline != Some(write.deadline) {
                self.fail(format!(
                    "acknowledged set {write:?} left the key at {left:?} with deadline {deadline:?}"
                ));
            }
        }
    }

    /// Every watcher saw exactly the committed changes under its prefix from its start to where
    /// it got: in index order, none missing, none twice, none rolled back; and, once the cluster
    /// has converged, one on a member got to the index every member has applied (unless every
    /// node had compacted the index it needed: the watch ended with `Compacted`). A watcher on a node the
    /// cluster removed stops where that node stopped applying, as a real watch there does.
    fn check_watchers(&mut self) {
        self.feed_watchers();
        let members = self.members();
        // Converged: every live member has applied the same index.
        let applied = self
            .live_nodes()
            .filter(|(id, _, _)| members.contains(id))
            .map(|(_, node, _)| node.applied_index())
            .max()
            .unwrap_or(0);
        for watcher in &self.watchers {
            let on_a_member = members.contains(&watcher.node);
            if on_a_member && !watcher.compacted && watcher.next != applied + 1 {
                self.fail(format!(
                    "watcher {:?} on node {} stopped at {} after the cluster converged at \
                     applied index {applied}",
                    String::from_utf8_lossy(&watcher.prefix),
                    watcher.node,
                    watcher.next
                ));
            }
            let mut expected = Vec::new();
            for index in watcher.start..watcher.next {
                let Some(entry) = self.committed.get(&index) else {
                    self.fail(format!(
                        "watcher {:?} examined index {index}, which the checker never saw committed",
                        String::from_utf8_lossy(&watcher.prefix)
                    ));
                };
                expected.extend(
                    replikv::api::watch::changes_of(entry)
                        .into_iter()
                        .filter(|change| change.key.starts_with(&watcher.prefix)),
                );
            }
            if watcher.delivered != expected {
                self.fail(format!(
                    "watcher {:?} (on node {}, at {}) saw {} changes, the committed log gives {}: \
                     first difference {:?}",
                    String::from_utf8_lossy(&watcher.prefix),
                    watcher.node,
                    watcher.next,
                    watcher.delivered.len(),
                    expected.len(),
                    watcher
                        .delivered
                        .iter()
                        .zip(&expected)
                        .find(|(got, want)| got != want)
                ));
            }
        }
    }

    fn check_increments(&self, model: &AppliedModel) {
        for counter in 0..COUNTERS {
            let key = format!("n{counter}").into_bytes();
            let values: Vec<&Option<Vec<u8>>> = model
                .history
                .get(&key)
                .map(|writes| writes.values().collect())
                .unwrap_or_default();
            for (expected, value) in (1..).zip(&values) {
                let as_number = value
                    .as_deref()
                    .and_then(|bytes| std::str::from_utf8(bytes).ok())
                    .and_then(|text| text.parse::<i64>().ok());
                if as_number != Some(expected) {
                    self.fail(format!(
                        "counter n{counter}'s committed values are not 1, 2, 3, …: {values:?}"
                    ));
                }
            }
        }
        for increment in &self.increments {
            let entry = self.committed.get(&increment.index);
            let present = entry.is_some_and(|entry| {
                entry.request_id == Some(increment.request_id)
                    && matches!(
                        &entry.operation,
                        replikv::Operation::Batch { answer: Some(Answer::Integer(n)), .. }
                            if *n == increment.answered
                    )
            });
            if !present {
                if matches!(
                    increment.concern,
                    WriteConcern::Majority | WriteConcern::All
                ) {
                    self.fail(format!(
                        "acknowledged increment lost or answered other than logged: \
                         {increment:?}; committed there: {entry:?}"
                    ));
                }
                continue;
            }
            if model.applied.get(&increment.request_id) != Some(&increment.index) {
                self.fail(format!(
                    "acknowledged increment {increment:?} did not take effect at its index (it \
                     did at {:?})",
                    model.applied.get(&increment.request_id)
                ));
            }
            let value = model.value_at(&increment.key, increment.index);
            if value != Some(increment.answered.to_string().into_bytes()) {
                self.fail(format!(
                    "acknowledged increment {increment:?} answered other than the counter's \
                     committed value there, {value:?}"
                ));
            }
        }
    }

    /// Check 6 (reads): a linearizable read reflects every majority write acknowledged before it
    /// began, and every read returns the value that the committed log, applied at most once per
    /// request, holds for its key at the index it reflects.
    fn check_reads(&self, model: &AppliedModel) {
        // Durable writes by acknowledgement time, with the highest index acknowledged so far.
        let mut durable: Vec<&AckedWrite> = self
            .acked
            .iter()
            .filter(|write| matches!(write.concern, WriteConcern::Majority | WriteConcern::All))
            .collect();
        durable.sort_by_key(|write| write.acked_at);
        let mut highest: Vec<&AckedWrite> = Vec::with_capacity(durable.len());
        for &write in &durable {
            let top = highest.last().copied();
            highest.push(top.filter(|top| top.index >= write.index).unwrap_or(write));
        }
        for read in &self.reads {
            if read.linearizable {
                let before = durable.partition_point(|write| write.acked_at < read.invoked_at);
                if let Some(write) = before.checked_sub(1).map(|last| highest[last]) {
                    if write.index > read.index {
                        self.fail(format!(
                            "linearizable read {read:?} misses write {write:?} acknowledged before it began"
                        ));
                    }
                }
            }
            // A key whose deadline the serving node's clock had reached (within the margin that
            // covers clocks behind true time) is hidden: it reads as absent.
            let deadline = model.deadline_at(&read.key, read.index);
            let expired = deadline.is_some_and(|deadline| {
                deadline <= read.wall_clock + self.options.expiry_margin_ms()
            });
            let expected = model
                .versioned_at(&read.key, read.index)
                .filter(|_| !expired);
            let expected_version = expected.as_ref().map_or(0, |versioned| versioned.version);
            let expected = expected.map(|versioned| versioned.value);
            if (&expected, expected_version) != (&read.value, read.version) {
                self.fail(format!(
                    "read {read:?} returned {:?} at version {} but the committed log holds {expected:?} at version {expected_version} at that index (deadline {deadline:?}, expiry margin {} ms)",
                    read.value, read.version, self.options.expiry_margin_ms()
                ));
            }
        }
    }

    /// Check 7: every live node's state is the committed log applied up to its applied index, each
    /// request at most once, its sessions table holds the last request the log applied for each
    /// client, and the key count it keeps is the number of its keys.
    fn check_final_states(&self, model: &AppliedModel) {
        for (id, node, storage) in self.live_nodes() {
            let applied = node.applied_index();
            if applied > model.last_index {
                continue; // beyond what the checker saw committed (not a member any more)
            }
            let state = whole_state(storage.as_ref()).unwrap_or_default();
            // The kept count of client keys is the number of keys (scans skip system keys).
            let key_count = storage
                .meta()
                .map(|meta| meta.key_count)
                .unwrap_or_default();
            let client_keys = state.iter().filter(|(key, _)| !is_system_key(key)).count();
            if key_count != client_keys as u64 {
                self.fail(format!(
                    "node {id} counts {key_count} keys but holds {client_keys}"
                ));
            }
            let expected = model.state_at(applied);
            if state != expected {
                self.fail(format!(
                    "node {id} at applied index {applied} holds {state:?}, the committed log gives {expected:?}"
                ));
            }
            if applied != model.last_index {
                continue;
            }
            for (client_id, session) in storage.sessions().unwrap_or_default() {
                let expected = model.sessions.get(&client_id);
                if expected != Some(&(session.last_sequence, session.result.index)) {
                    self.fail(format!(
                        "node {id} has session {session:?} for client {client_id}; the committed log's last applied request of it is (sequence, index) {expected:?}"
                    ));
                }
            }
        }
    }
}

/// The committed log applied as the apply step applies it (`storage::apply`): a write whose
/// session already holds its sequence, or a newer one, is a retry and changes nothing.
struct AppliedModel {
    /// Each key's value after every write that changed it, by index (`None`: deleted).
    history: BTreeMap<Vec<u8>, BTreeMap<LogIndex, Option<Vec<u8>>>>,
    /// The index at which each request took effect.
    applied: BTreeMap<RequestId, LogIndex>,
    /// Each client's last applied request: (sequence, index).
    sessions: BTreeMap<u64, (u64, LogIndex)>,
    /// The last committed index.
    last_index: LogIndex,
}

impl AppliedModel {
    /// Applies the committed log, which must hold every index from 1 without a gap.
    fn build(committed: &BTreeMap<LogIndex, Entry>) -> Result<AppliedModel, String> {
        let mut model = AppliedModel {
            history: BTreeMap::new(),
            applied: BTreeMap::new(),
            sessions: BTreeMap::new(),
            last_index: 0,
        };
        for (&index, entry) in committed {
            if index != model.last_index + 1 {
                return Err(format!(
                    "the committed log seen has a gap: index {index} follows {}",
                    model.last_index
                ));
            }
            model.last_index = index;
            let changes: Vec<(&Vec<u8>, Option<Vec<u8>>)> = match &entry.operation {
                replikv::Operation::Put { key, value } => vec![(key, Some(value.clone()))],
                replikv::Operation::Delete { key } => vec![(key, None)],
                replikv::Operation::Batch { changes, .. } => changes
                    .iter()
                    .map(|change| match change {
                        Change::Put { key, value } => (key, Some(value.clone())),
                        Change::Delete { key } => (key, None),
                    })
                    .collect(),
                _ => continue,
            };
            if let Some(request_id) = entry.request_id {
                let session = model.sessions.get(&request_id.client_id);
                if session.is_some_and(|&(last, _)| last >= request_id.sequence) {
                    continue; // a retry: applied at most once
                }
                model
                    .sessions
                    .insert(request_id.client_id, (request_id.sequence, index));
                model.applied.insert(request_id, index);
            }
            for (key, value) in changes {
                model
                    .history
                    .entry(key.clone())
                    .or_default()
                    .insert(index, value);
            }
        }
        Ok(model)
    }

    /// `key`'s value once the entries up to `index` are applied, with its version: the index of
    /// the write that set it.
    fn versioned_at(&self, key: &[u8], index: LogIndex) -> Option<Versioned> {
        let writes = self.history.get(key)?;
        let (version, value) = writes.range(..=index).next_back()?;
        value.clone().map(|value| Versioned {
            version: *version,
            value,
        })
    }

    /// `key`'s value once the entries up to `index` are applied.
    fn value_at(&self, key: &[u8], index: LogIndex) -> Option<Vec<u8>> {
        self.versioned_at(key, index)
            .map(|versioned| versioned.value)
    }

    /// `key`'s deadline (ms on the writer's wall clock) once the entries up to `index` are
    /// applied, read from its record in the system keyspace.
    fn deadline_at(&self, key: &[u8], index: LogIndex) -> Option<u64> {
        self.value_at(&deadline_key(key), index)
            .and_then(|deadline| decode_deadline(&deadline))
    }

    /// `key`'s value just before the entry at `index` is applied.
    fn value_before(&self, key: &[u8], index: LogIndex) -> Option<Vec<u8>> {
        index
            .checked_sub(1)
            .and_then(|before| self.value_at(key, before))
    }

    /// The whole state, system keys included, once the entries up to `index` are applied, in key
    /// order.
    fn state_at(&self, index: LogIndex) -> StatePairs {
        self.history
            .keys()
            .filter_map(|key| {
                self.versioned_at(key, index)
                    .map(|versioned| (key.clone(), versioned))
            })
            .collect()
    }
}

impl ClientState {
    fn new(id: u64, max_in_flight: usize) -> Self {
        ClientState {
            id,
            sequence: 0,
            in_flight: 0,
            max_in_flight,
            next_op_at: 0,
            versions_seen: BTreeMap::new(),
        }
    }
}

/// A clock rate within `bound` ppm of true time: often at either extreme, where bugs live.
fn clock_rate(rng: &mut StdRng, bound: u64) -> i64 {
    let bound = i64::try_from(bound).expect("a drift bound in ppm fits in i64");
    if bound == 0 {
        return 0;
    }
    match rng.gen_range(0..3) {
        0 => -bound,
        1 => bound,
        _ => rng.gen_range(-bound..=bound),
    }
}

/// True time `now` on a clock running `rate_ppm` fast (or slow, if negative).
fn local_time(now: Timestamp, rate_ppm: i64) -> Timestamp {
    let local = i128::from(now) * (PPM + i128::from(rate_ppm)) / PPM;
    Timestamp::try_from(local).expect("a clock within the bound never runs backwards")
}

fn shuffle(rng: &mut StdRng, items: &mut [NodeId]) {
    for i in (1..items.len()).rev() {
        let j = rng.gen_range(0..=i);
        items.swap(i, j);
    }
}

fn seeds(default_count: u64, base: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("REPLIKV_SIM_SEED") {
        return vec![seed.parse().expect("REPLIKV_SIM_SEED is a number")];
    }
    let count = std::env::var("REPLIKV_SIM_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default_count);
    (0..count).map(|i| base + i).collect()
}

/// The seeds of the long histories: `REPLIKV_SIM_LONG_SEEDS` of them (not `REPLIKV_SIM_SEEDS`,
/// so a wide sweep of the short histories does not run thousands of long ones).
fn long_seeds(default_count: u64, base: u64) -> Vec<u64> {
    if std::env::var_os("REPLIKV_SIM_SEED").is_some() {
        return seeds(1, base);
    }
    let count = env_number("REPLIKV_SIM_LONG_SEEDS").unwrap_or(default_count);
    (0..count).map(|i| base + i).collect()
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|value| {
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} is a number, not {value:?}"))
    })
}

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

#[test]
fn three_node_histories_keep_every_invariant() {
    init_logging();
    for seed in seeds(4_000, 1_000_000) {
        Simulation::new(seed, 3).with_watchers().run(6_000);
    }
}

#[test]
fn five_node_histories_keep_every_invariant() {
    init_logging();
    for seed in seeds(2_000, 5_000_000) {
        Simulation::new(seed, 5).with_watchers().run(6_000);
    }
}

#[test]
fn membership_changes_keep_every_invariant() {
    init_logging();
    for seed in seeds(2_000, 7_000_000) {
        Simulation::new(seed, 3)
            .with_membership_changes()
            .with_watchers()
            .run(6_000);
    }
}

/// Every node's clock runs at its own rate within the configured drift bound; the lease's margin
/// keeps linearizable reads linearizable (the read checker of `check_final`).
#[test]
fn drifting_clocks_keep_linearizable_reads_linearizable() {
    init_logging();
    for seed in seeds(1_000, 11_000_000) {
        Simulation::drifting(seed, 3).run(6_000);
    }
}

/// The same with five nodes and membership changes.
#[test]
fn drifting_clocks_keep_every_invariant_with_membership_changes() {
    init_logging();
    for seed in seeds(500, 13_000_000) {
        Simulation::drifting(seed, 5)
            .with_membership_changes()
            .run(6_000);
    }
}

/// Sessions expire during the history, with membership changes (joiners get the sessions table
/// in snapshots): every node must drop the same sessions at the same index (the state check
/// compares the sessions table too).
#[test]
fn expiring_sessions_keep_every_invariant() {
    init_logging();
    for seed in seeds(1_000, 15_000_000) {
        Simulation::expiring_sessions(seed, 3)
            .with_membership_changes()
            .run(6_000);
    }
}

/// Histories that wide sweeps found failing, replayed on every run whatever the seed settings.
/// The first two left a member stuck after healing: it needed entries that the primary had
/// compacted but still cached, so it was sent neither an append (the entry before them was gone)
/// nor a snapshot (it was not behind the cache). Fixed by compaction dropping those entries from
/// the cache. The third (a checker's fault): after healing, the members agreed on commit index
/// 36 while entry 37, committed in epoch 1 (and examined by a watcher), waited in every log for
/// the epoch-8 primary's first entry (38) to commit; the checker took that for convergence and
/// found the watcher "ahead" of the cluster. Fixed by convergence also asking that the
/// primary's whole log be committed.
#[test]
fn histories_that_once_failed_still_pass() {
    init_logging();
    Simulation::new(1_004_903, 3).with_watchers().run(6_000);
    Simulation::expiring_sessions(15_008_465, 3)
        .with_membership_changes()
        .run(6_000);
    Simulation::new(7_007_506, 3)
        .with_membership_changes()
        .run(6_000);
}

/// Clients pipeline: six client sessions, each with up to four operations in flight, whose
/// concurrent writes may reach the primary out of sequence order. Three or five nodes, some with
/// drifting clocks, some with membership changes.
#[test]
fn pipelined_clients_keep_every_invariant() {
    init_logging();
    for seed in seeds(500, 16_000_000) {
        let nodes = if seed % 2 == 0 { 3 } else { 5 };
        let drift = if seed % 4 >= 2 { DRIFT_BOUND_PPM } else { 0 };
        let mut sim =
            Simulation::with_clocks(seed, nodes, drift, NO_EXPIRY_MS).with_pipelining(6, 4);
        if seed % 3 == 0 {
            sim = sim.with_membership_changes();
        }
        sim.run(6_000);
    }
}

/// Clients compare-and-set on the versions their reads gave, beside puts, deletes and increments,
/// some pipelining (so a session's writes may reach the primary out of order), with three or
/// five nodes and membership changes on some seeds: every compare-and-set must be decided against
/// the version its key had just before its entry, and every node must agree on every version.
#[test]
fn compare_and_set_keeps_every_invariant() {
    init_logging();
    let (mut applied, mut refused) = (0, 0);
    for seed in seeds(1_000, 18_000_000) {
        let nodes = if seed % 2 == 0 { 3 } else { 5 };
        let mut sim = Simulation::new(seed, nodes)
            .with_compare_and_set()
            .with_watchers();
        if seed % 3 == 0 {
            sim = sim.with_pipelining(4, 3);
        }
        if seed % 5 == 0 {
            sim = sim.with_membership_changes();
        }
        sim.run(6_000);
        for write in &sim.compare_and_sets {
            if write.applied {
                applied += 1;
            } else {
                refused += 1;
            }
        }
    }
    // The workload must meet both outcomes, or it checks one side only.
    assert!(
        applied > 0 && refused > 0,
        "compare-and-sets applied {applied}, refused {refused}"
    );
}

/// Histories long enough to compact and snapshot under load: past the entry cache's bound, with a
/// backup away for most of the history and a log of a few kilobytes. CI runs three;
/// `REPLIKV_SIM_LONG_SEEDS=<n>` runs more, `REPLIKV_SIM_LONG_ENTRIES=<n>` makes each longer.
#[test]
fn long_histories_compact_and_snapshot_under_load() {
    init_logging();
    let entries = env_number("REPLIKV_SIM_LONG_ENTRIES").unwrap_or(LONG_HISTORY_ENTRIES);
    for seed in long_seeds(3, 17_000_000) {
        Simulation::under_load(seed)
            .with_watchers()
            .run_until_committed(entries, entries.saturating_mul(LONG_HISTORY_MS_PER_ENTRY));
    }
}

#[test]
fn single_node_cluster_elects_itself_and_serves() {
    init_logging();
    for seed in seeds(200, 9_000_000) {
        Simulation::new(seed, 1).run(2_000);
    }
}

// Regressions: seeds that once failed, each kept under the name of what it showed.

/// A new primary's snapshot transfer reuses transfer ids of the previous term's transfer; a
/// reordered final chunk of the new term must not complete a staged chunk 0 of the old one
/// (nodes 3 and 5 once differed at applied index 129).
#[test]
fn a_snapshot_chunk_never_continues_a_transfer_of_an_earlier_epoch() {
    init_logging();
    Simulation::new(7_004_387, 3)
        .with_membership_changes()
        .run(6_000);
}

/// A backup whose commit index is already past a snapshot's index acknowledges it, so the new
/// primary learns where to resume and its no-op commits (the cluster once never converged).
#[test]
fn a_backup_ahead_of_a_snapshot_acknowledges_it_three_nodes() {
    init_logging();
    Simulation::new(1_003_251, 3).run(6_000);
}

/// The same, in a five-node history.
#[test]
fn a_backup_ahead_of_a_snapshot_acknowledges_it_five_nodes() {
    init_logging();
    Simulation::new(5_007_556, 5).run(6_000);
}

/// A write's first primary crashed before answering; its retry reached the next primary, whose
/// log held the entry still unapplied, and joined it with `existed: false` although the key
/// existed (the answer at w=2 came before the apply that records the real result).
#[test]
fn a_retry_joining_an_earlier_primarys_entry_is_told_whether_its_key_existed() {
    init_logging();
    Simulation::new(1_000_062, 3).run(6_000);
}

/// A heartbeat that a primary sent before it removed itself arrived late at a member that had
/// already adopted the removal, and rolled its membership back to the larger one: the member then
/// won an election in that stale membership and lacked a committed entry (invariant 2).
#[test]
fn a_late_heartbeat_never_rolls_a_members_membership_back() {
    init_logging();
    Simulation::drifting(13_024_258, 5)
        .with_membership_changes()
        .run(6_000);
}

/// A small snapshot once took three chunks (state, sessions, the final changes); the network
/// reordered them on every attempt, so a member never installed it and the cluster never
/// converged. A phase that ends inside a chunk now leaves its room to the next, so a small
/// snapshot is one chunk.
#[test]
fn a_small_snapshot_travels_as_one_chunk() {
    init_logging();
    Simulation::drifting(13_002_361, 5)
        .with_membership_changes()
        .run(6_000);
}
