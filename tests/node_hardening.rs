//! Scenarios for the hardening items of `core::Node` (lease and log-compaction edge cases).
//!
//! Like `tests/node_scenarios.rs`, each test drives a few nodes on `MemoryStorage` by hand: no
//! random delay or loss, messages delivered in the order they were sent, flushes at once unless a
//! test holds them. The harness is a trimmed copy of that file's, plus partitions (a node talks
//! only to nodes of its own side) and messages held back to model a slow link.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use replikv::core::{ClientToken, Node, Options, Output, Timestamp};
use replikv::storage::memory::MemoryStorage;
use replikv::storage::Storage;
use replikv::wire::client::{ReadConsistency, Request, Response, Role, Write, WriteConcern};
use replikv::wire::message::{Member, Membership, Message, MessageBody, NodeId, RequestId};

const HEARTBEAT_MS: u64 = 100;
const FAILURE_TIMEOUT_MS: u64 = 300;

/// Protocol settings without jitter, so every timer fires at a known time.
fn options() -> Options {
    Options {
        heartbeat_interval_ms: HEARTBEAT_MS,
        failure_timeout_ms: FAILURE_TIMEOUT_MS,
        failure_jitter_ms: 0,
        replica_lag_timeout_ms: 1_000,
        max_append_bytes: 16 * 1024,
        max_inflight_entries: 256,
        log_retention_bytes: 1 << 30,
        max_clock_drift_ppm: 0,
        max_scan_page_pairs: 1000,
        max_scan_page_bytes: 1024 * 1024,
        session_ttl_ms: 3_600_000,
    }
}

fn voters(count: u64) -> Membership {
    Membership::new(
        (1..=count)
            .map(|id| Member {
                id,
                client_addr: format!("client-{id}"),
                peer_addr: format!("peer-{id}"),
                voter: true,
            })
            .collect(),
    )
}

/// A few nodes, a FIFO network and a clock, all driven by hand.
struct Cluster {
    now: Timestamp,
    nodes: BTreeMap<NodeId, Node>,
    storages: BTreeMap<NodeId, Arc<MemoryStorage>>,
    in_flight: VecDeque<Message>,
    /// A node listed here talks only to the nodes listed with the same side number.
    sides: BTreeMap<NodeId, u8>,
    /// These nodes flush only when the test calls [`Cluster::release_flushes`].
    held_flushes: BTreeSet<NodeId>,
    replies: BTreeMap<ClientToken, Response>,
    next_token: ClientToken,
    options: Options,
    /// Each node's clock: `(true time, its time then, rate in ppm)`; perfect unless set.
    clocks: BTreeMap<NodeId, (Timestamp, Timestamp, i64)>,
    /// When each node last sent a heartbeat round (true time).
    last_heartbeat: BTreeMap<NodeId, Timestamp>,
}

impl Cluster {
    /// `count` voters on empty storage.
    fn new(count: u64, options: Options) -> Cluster {
        let mut cluster = Cluster {
            now: 0,
            nodes: BTreeMap::new(),
            storages: BTreeMap::new(),
            in_flight: VecDeque::new(),
            sides: BTreeMap::new(),
            held_flushes: BTreeSet::new(),
            replies: BTreeMap::new(),
            next_token: 1,
            options,
            clocks: BTreeMap::new(),
            last_heartbeat: BTreeMap::new(),
        };
        for id in 1..=count {
            cluster.start(id, Arc::new(MemoryStorage::new()));
        }
        cluster
    }

    /// Starts (or restarts, forgetting everything not in storage) node `id` on `storage`.
    fn start(&mut self, id: NodeId, storage: Arc<MemoryStorage>) {
        let membership = voters(self.nodes.len().max(id as usize) as u64);
        let node = Node::new(
            id,
            membership,
            storage.clone(),
            self.options.clone(),
            id,
            self.now,
        )
        .expect("node starts");
        self.nodes.insert(id, node);
        self.storages.insert(id, storage);
    }

    /// Node `id`'s clock shows `now` as this.
    fn local_now(&self, id: NodeId) -> Timestamp {
        let (base, local_base, rate) = self.clocks.get(&id).copied().unwrap_or((0, 0, 0));
        let elapsed = i128::from(self.now - base) * (1_000_000 + i128::from(rate)) / 1_000_000;
        local_base + u64::try_from(elapsed).expect("a clock never runs backwards")
    }

    /// From now on, node `id`'s clock runs `rate_ppm` fast (slow if negative).
    fn set_clock_rate(&mut self, id: NodeId, rate_ppm: i64) {
        let local = self.local_now(id);
        self.clocks.insert(id, (self.now, local, rate_ppm));
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[&id]
    }

    fn connected(&self, from: NodeId, to: NodeId) -> bool {
        self.sides.get(&from) == self.sides.get(&to)
    }

    /// Runs an entry point on node `id`, then routes its outputs (and flushes, unless held).
    fn call(
        &mut self,
        id: NodeId,
        entry_point: impl FnOnce(&mut Node, Timestamp) -> replikv::Result<()>,
    ) -> replikv::Result<()> {
        let now = self.local_now(id);
        let node = self.nodes.get_mut(&id).expect("a node of the cluster");
        let result = entry_point(node, now);
        self.collect(id);
        result
    }

    fn collect(&mut self, id: NodeId) {
        loop {
            let now = self.local_now(id);
            let node = self.nodes.get_mut(&id).expect("a node of the cluster");
            for output in node.finish_pass().expect("a pass finishes") {
                match output {
                    Output::Send(message) => {
                        if matches!(message.body, MessageBody::Heartbeat { .. }) {
                            self.last_heartbeat.insert(message.from, self.now);
                        }
                        if self.connected(message.from, message.to) {
                            self.in_flight.push_back(message);
                        }
                    }
                    Output::Reply { token, response } => {
                        self.replies.insert(token, response);
                    }
                    Output::Topology { .. } => {}
                }
            }
            if self.held_flushes.contains(&id) {
                return;
            }
            let node = self.nodes.get_mut(&id).expect("a node of the cluster");
            let Some(ticket) = node.flush_needed() else {
                return;
            };
            self.storages[&id].flush().expect("flush");
            node.flushed(now, ticket).expect("flushed");
        }
    }

    /// Stops holding flushes and flushes every node that has something to flush.
    fn release_flushes(&mut self) {
        self.held_flushes.clear();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.collect(id);
        }
    }

    /// Delivers messages until none is left, except those `hold` selects, which are returned.
    fn deliver_except(&mut self, mut hold: impl FnMut(&Message) -> bool) -> Vec<Message> {
        let mut held = Vec::new();
        while let Some(message) = self.in_flight.pop_front() {
            if hold(&message) {
                held.push(message);
                continue;
            }
            if !self.connected(message.from, message.to) || !self.nodes.contains_key(&message.to) {
                continue;
            }
            let to = message.to;
            self.call(to, |node, now| node.step(now, message))
                .expect("step");
        }
        held
    }

    fn deliver(&mut self) {
        self.deliver_except(|_| false);
    }

    /// Advances the clock to `until` in 10 ms ticks of `ids`, delivering messages after each.
    fn run_nodes_until(&mut self, ids: &[NodeId], until: Timestamp) {
        while self.now < until {
            self.now = (self.now + 10).min(until);
            for &id in ids {
                self.call(id, |node, now| node.tick(now)).expect("tick");
            }
            self.deliver();
        }
    }

    fn run_until(&mut self, until: Timestamp) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        self.run_nodes_until(&ids, until);
    }

    /// Lets node `id` time out first and runs the election it starts to the end.
    fn elect(&mut self, id: NodeId) {
        self.now = self.now.max(FAILURE_TIMEOUT_MS);
        self.call(id, |node, now| node.tick(now)).expect("tick");
        self.deliver();
        assert_eq!(self.node(id).role(), Role::Primary, "node {id} won");
    }

    fn request(&mut self, id: NodeId, request: Request) -> ClientToken {
        let token = self.next_token;
        self.next_token += 1;
        self.call(id, |node, now| node.request(now, token, request))
            .expect("request");
        token
    }

    fn put(&mut self, id: NodeId, key: &[u8], value: Vec<u8>) -> ClientToken {
        let sequence = self.next_token;
        self.request(
            id,
            Request::Write {
                request_id: RequestId {
                    client_id: 7,
                    sequence,
                },
                write: Write::Put {
                    key: key.to_vec(),
                    value,
                },
                write_concern: WriteConcern::Majority,
                timeout_ms: 1_000,
            },
        )
    }

    fn get(&mut self, id: NodeId, key: &[u8]) -> ClientToken {
        self.request(
            id,
            Request::Get {
                key: key.to_vec(),
                consistency: ReadConsistency::Linearizable,
            },
        )
    }

    fn reply(&self, token: ClientToken) -> Option<&Response> {
        self.replies.get(&token)
    }

    /// Node `id`, still primary, does not answer a linearizable read of `key` with `stale`.
    fn assert_no_stale_read(&mut self, id: NodeId, key: &[u8], stale: &[u8]) {
        assert_eq!(self.node(id).role(), Role::Primary, "not stepped down yet");
        let read = self.get(id, key);
        assert!(
            !matches!(
                self.reply(read),
                Some(Response::Value { value: Some(value), .. }) if value.as_slice() == stale
            ),
            "a stale linearizable read: {:?}",
            self.reply(read)
        );
    }
}

// --- item 1: a backup back from a long absence ---

#[test]
fn a_primary_survives_a_backup_returning_behind_its_compacted_log_and_uncached_entries() {
    // A small log and large values: the primary compacts its log, and its entry cache (bounded
    // in bytes) drops the entries the absent backup last acknowledged.
    let small_log = Options {
        log_retention_bytes: 1 << 20,
        ..options()
    };
    let mut cluster = Cluster::new(3, small_log);
    cluster.elect(3);
    cluster.put(3, b"before", b"absence".to_vec());
    let until = cluster.now + 2 * HEARTBEAT_MS;
    cluster.run_until(until);
    assert!(cluster.node(1).applied_index() >= 2, "node 1 was in sync");
    cluster.sides.insert(1, 1);
    let value = vec![b'v'; 1024 * 1024];
    for i in 0..72u32 {
        cluster.put(3, format!("key-{}", i % 8).as_bytes(), value.clone());
        cluster.deliver();
    }
    let until = cluster.now + 40 * HEARTBEAT_MS;
    cluster.run_until(until);
    let log_start = cluster.storages[&3].meta().expect("meta").log_start;
    assert!(
        log_start > 20,
        "the primary compacted its log (it starts at {log_start})"
    );
    // Node 1 restarts (it verified nothing in this epoch) and comes back.
    let storage = cluster.storages[&1].clone();
    cluster.start(1, storage);
    cluster.sides.clear();
    let until = cluster.now + 10 * FAILURE_TIMEOUT_MS;
    cluster.run_until(until);
    assert_eq!(cluster.node(3).role(), Role::Primary);
    assert_eq!(cluster.node(1).primary(), Some(3));
    assert_eq!(
        cluster.node(1).applied_index(),
        cluster.node(3).applied_index(),
        "node 1 caught up"
    );
}

// --- item 3: a primary whose own removal is pending ---

#[test]
fn a_primary_whose_removal_is_pending_does_not_count_itself_toward_its_lease() {
    let mut cluster = Cluster::new(4, options());
    cluster.elect(4);
    cluster.put(4, b"x", b"old".to_vec());
    let until = cluster.now + 2 * HEARTBEAT_MS;
    cluster.run_until(until);
    // The primary proposes its own removal; nodes 2 and 3 append it but do not flush it yet, so
    // it stays uncommitted while the voters of the new membership are {1, 2, 3}.
    cluster.held_flushes.extend([2, 3]);
    cluster.request(4, Request::RemoveMember { id: 4 });
    cluster.deliver();
    assert!(cluster.node(2).membership().get(4).is_none());
    // One more heartbeat reaches 2 and 3; their acks take a slow path and arrive 150 ms late.
    let sent_at = cluster.now + HEARTBEAT_MS;
    cluster.now = sent_at;
    for id in [1, 2, 3, 4] {
        cluster.call(id, |node, now| node.tick(now)).expect("tick");
    }
    let late_acks = cluster.deliver_except(|message| {
        message.to == 4
            && matches!(message.body, MessageBody::HeartbeatAck { .. })
            && message.from != 1
    });
    assert_eq!(late_acks.len(), 2);
    // Then the network splits {1, 4} from {2, 3}.
    cluster.sides.extend([(1, 0), (4, 0), (2, 1), (3, 1)]);
    cluster.release_flushes();
    cluster.run_until(sent_at + 150);
    for ack in late_acks {
        cluster
            .call(4, |node, now| node.step(now, ack))
            .expect("step");
    }
    // 2 and 3 stop hearing the primary and elect one of theirs, which writes a new value.
    cluster.run_until(sent_at + FAILURE_TIMEOUT_MS + 20);
    let new_primary = [2, 3]
        .into_iter()
        .find(|&id| cluster.node(id).role() == Role::Primary)
        .expect("2 and 3 elected a primary");
    let write = cluster.put(new_primary, b"x", b"new".to_vec());
    cluster.run_until(sent_at + FAILURE_TIMEOUT_MS + 40);
    assert!(
        matches!(cluster.reply(write), Some(Response::Written { .. })),
        "the new primary committed x = new"
    );
    // The old primary, which has not noticed yet, must not serve a linearizable read: only node
    // 1 of the voters {1, 2, 3} acknowledged its heartbeats since `sent_at`.
    cluster.assert_no_stale_read(4, b"x", b"old");
}

// --- item 11: clocks that drift ---

#[test]
fn a_slow_primary_clock_does_not_outlast_the_promise_of_fast_voters() {
    let drift_bound = Options {
        max_clock_drift_ppm: 100_000,
        ..options()
    };
    let mut cluster = Cluster::new(3, drift_bound);
    cluster.elect(3);
    cluster.put(3, b"x", b"old".to_vec());
    let until = cluster.now + 2 * HEARTBEAT_MS;
    cluster.run_until(until);
    // Within the bound: the primary's clock runs 10% slow, the voters' 10% fast.
    cluster.set_clock_rate(3, -100_000);
    cluster.set_clock_rate(1, 100_000);
    cluster.set_clock_rate(2, 100_000);
    // Right after a heartbeat round that both voters acknowledged, the primary is cut off.
    let start = cluster.now;
    while cluster.last_heartbeat.get(&3) != Some(&cluster.now) {
        let until = cluster.now + 10;
        cluster.run_until(until);
        assert!(cluster.now < start + 1_000, "the primary sends heartbeats");
    }
    let cut_at = cluster.now;
    cluster.sides.extend([(3, 0), (1, 1), (2, 1)]);
    // The voters' promise ends after 300 ms on their clocks (273 ms); they elect and write.
    cluster.run_until(cut_at + 290);
    let new_primary = [1, 2]
        .into_iter()
        .find(|&id| cluster.node(id).role() == Role::Primary)
        .expect("1 and 2 elected a primary");
    let write = cluster.put(new_primary, b"x", b"new".to_vec());
    cluster.deliver();
    assert!(
        matches!(cluster.reply(write), Some(Response::Written { .. })),
        "the new primary committed x = new"
    );
    // 300 ms on the old primary's clock is 333 ms: it has not stepped down yet, but its lease,
    // shortened by the drift bound, has ended.
    cluster.run_until(cut_at + 300);
    cluster.assert_no_stale_read(3, b"x", b"old");
}
