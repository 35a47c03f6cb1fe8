//! Named scenarios for `core::Node`: short, deterministic stories, each named after what it shows.
//!
//! They complement the random simulator (`tests/simulation.rs`): the simulator searches for a
//! history that breaks an invariant, these pin down one rule each so that a change that breaks it
//! fails with the rule's name. Each test drives one to three nodes on `MemoryStorage` by hand:
//! there is no random delay or loss, messages are delivered in the order they were sent, and a
//! node flushes at once unless the test holds its flushes to show what waits for them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use replikv::core::{
    ClientToken, Node, Options, Output, Timestamp, CUT_OFF_AFTER_FAILURE_TIMEOUTS,
};
use replikv::storage::expiry::deadline_key;
use replikv::storage::memory::MemoryStorage;
use replikv::storage::Storage;
use replikv::wire::client::{
    Answer, Condition, Expiry, ReadConsistency, Request, Response, Role, Write, WriteConcern,
};
use replikv::wire::message::{
    Change, Entry, Epoch, ExpiredSession, LogIndex, Member, Membership, Message, MessageBody,
    NodeId, Operation, Rank, RequestId, Versioned,
};
use replikv::Error;

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

fn member(id: NodeId, voter: bool) -> Member {
    Member {
        id,
        client_addr: format!("client-{id}"),
        peer_addr: format!("peer-{id}"),
        voter,
    }
}

fn voters(count: u64) -> Membership {
    Membership::new((1..=count).map(|id| member(id, true)).collect())
}

fn entry(epoch: Epoch, index: LogIndex, operation: Operation) -> Entry {
    Entry {
        epoch,
        index,
        operation,
        request_id: None,
    }
}

fn put(key: &str, value: &str) -> Operation {
    Operation::Put {
        key: key.into(),
        value: value.into(),
    }
}

/// Storage holding `entries` durably, as left by an earlier life in `epoch`.
fn storage_with(epoch: Epoch, entries: &[Entry]) -> Arc<MemoryStorage> {
    let storage = Arc::new(MemoryStorage::new());
    storage.set_epoch_and_vote(epoch, None).expect("set epoch");
    storage.append(entries).expect("append");
    storage.flush().expect("flush");
    storage
}

/// A few nodes, a FIFO network and a clock, all driven by hand.
struct Cluster {
    now: Timestamp,
    nodes: BTreeMap<NodeId, Node>,
    storages: BTreeMap<NodeId, Arc<MemoryStorage>>,
    in_flight: VecDeque<Message>,
    /// Every message any node sent, in order (including dropped ones).
    sent: Vec<Message>,
    /// Messages to or from these nodes are dropped.
    isolated: BTreeSet<NodeId>,
    /// These nodes flush only when the test calls [`Cluster::flush`].
    held_flushes: BTreeSet<NodeId>,
    replies: BTreeMap<ClientToken, Response>,
    next_token: ClientToken,
    options: Options,
}

impl Cluster {
    /// `count` voters on empty storage.
    fn new(count: u64) -> Cluster {
        let storages = (1..=count)
            .map(|id| (id, Arc::new(MemoryStorage::new())))
            .collect();
        Cluster::on(voters(count), storages)
    }

    /// One node per storage, all configured with `membership`.
    fn on(membership: Membership, storages: BTreeMap<NodeId, Arc<MemoryStorage>>) -> Cluster {
        Cluster::with_options(membership, storages, options())
    }

    fn with_options(
        membership: Membership,
        storages: BTreeMap<NodeId, Arc<MemoryStorage>>,
        options: Options,
    ) -> Cluster {
        let mut cluster = Cluster {
            now: 0,
            nodes: BTreeMap::new(),
            storages: BTreeMap::new(),
            in_flight: VecDeque::new(),
            sent: Vec::new(),
            isolated: BTreeSet::new(),
            held_flushes: BTreeSet::new(),
            replies: BTreeMap::new(),
            next_token: 1,
            options,
        };
        for (id, storage) in storages {
            cluster.start(id, membership.clone(), storage);
        }
        cluster
    }

    fn start(&mut self, id: NodeId, membership: Membership, storage: Arc<MemoryStorage>) {
        let options = self.options.clone();
        let node =
            Node::new(id, membership, storage.clone(), options, id, self.now).expect("node starts");
        self.nodes.insert(id, node);
        self.storages.insert(id, storage);
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[&id]
    }

    fn storage(&self, id: NodeId) -> &Arc<MemoryStorage> {
        &self.storages[&id]
    }

    /// Runs an entry point on node `id`, then routes its outputs (and flushes, unless held).
    fn call(
        &mut self,
        id: NodeId,
        entry_point: impl FnOnce(&mut Node, Timestamp) -> replikv::Result<()>,
    ) -> replikv::Result<()> {
        let now = self.now;
        let node = self.nodes.get_mut(&id).expect("a node of the cluster");
        let result = entry_point(node, now);
        self.collect(id);
        result
    }

    fn collect(&mut self, id: NodeId) {
        loop {
            let now = self.now;
            let node = self.nodes.get_mut(&id).expect("a node of the cluster");
            for output in node.finish_pass().expect("a pass finishes") {
                match output {
                    Output::Send(message) => {
                        self.sent.push(message.clone());
                        if !self.isolated.contains(&message.from)
                            && !self.isolated.contains(&message.to)
                        {
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

    /// Flushes node `id` now, whether or not its flushes are held.
    fn flush(&mut self, id: NodeId) {
        let ticket = self.nodes[&id].flush_needed().expect("something to flush");
        self.storages[&id].flush().expect("flush");
        self.call(id, |node, now| node.flushed(now, ticket))
            .expect("flushed");
    }

    /// Stops holding flushes and flushes every node that has something to flush.
    fn release_flushes(&mut self) {
        self.held_flushes.clear();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            if self.nodes[&id].flush_needed().is_some() {
                self.flush(id);
            }
        }
    }

    /// Delivers messages until none is left, except those `hold` selects, which are returned.
    fn deliver_except(&mut self, mut hold: impl FnMut(&Message) -> bool) -> Vec<Message> {
        let mut held = Vec::new();
        let mut delivered = 0;
        while let Some(message) = self.in_flight.pop_front() {
            delivered += 1;
            assert!(delivered < 100_000, "the cluster never went quiet");
            if hold(&message) {
                held.push(message);
                continue;
            }
            if !self.nodes.contains_key(&message.to) {
                continue;
            }
            let to = message.to;
            self.call(to, |node, now| node.step(now, message))
                .expect("step");
        }
        held
    }

    /// Delivers every message until the network is quiet.
    fn deliver(&mut self) {
        self.deliver_except(|_| false);
    }

    /// Like [`Cluster::run_until`], but the messages `lose` selects are lost.
    fn run_losing(&mut self, until: Timestamp, mut lose: impl FnMut(&Message) -> bool) {
        while self.now < until {
            self.now = (self.now + 10).min(until);
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.call(id, |node, now| node.tick(now)).expect("tick");
            }
            self.deliver_except(&mut lose);
        }
    }

    /// Ticks and delivers one message at a time until `stop` holds (then every message still
    /// in flight is lost), or panics at `until`.
    fn run_until_stop(&mut self, until: Timestamp, stop: impl Fn(&Cluster) -> bool) {
        loop {
            assert!(self.now < until, "the awaited moment never came");
            self.now += 10;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.call(id, |node, now| node.tick(now)).expect("tick");
            }
            while let Some(message) = self.in_flight.pop_front() {
                let to = message.to;
                if self.nodes.contains_key(&to) {
                    self.call(to, |node, now| node.step(now, message))
                        .expect("step");
                }
                if stop(self) {
                    self.in_flight.clear();
                    return;
                }
            }
        }
    }

    /// Advances the clock to `until` in 10 ms ticks of every node, delivering messages after each.
    fn run_until(&mut self, until: Timestamp) {
        while self.now < until {
            self.now = (self.now + 10).min(until);
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.call(id, |node, now| node.tick(now)).expect("tick");
            }
            self.deliver();
        }
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

    fn write(&mut self, id: NodeId, key: &str, concern: WriteConcern) -> ClientToken {
        let sequence = self.next_token;
        self.write_with_id(
            id,
            key,
            concern,
            RequestId {
                client_id: 7,
                sequence,
            },
        )
    }

    fn write_with_id(
        &mut self,
        id: NodeId,
        key: &str,
        concern: WriteConcern,
        request_id: RequestId,
    ) -> ClientToken {
        self.request(
            id,
            Request::Write {
                request_id,
                write: Write::Put {
                    key: key.into(),
                    value: b"value".to_vec(),
                },
                write_concern: concern,
                timeout_ms: 1_000,
            },
        )
    }

    fn get(&mut self, id: NodeId, key: &str, consistency: ReadConsistency) -> ClientToken {
        self.request(
            id,
            Request::Get {
                key: key.into(),
                consistency,
            },
        )
    }

    fn reply(&self, token: ClientToken) -> Option<&Response> {
        self.replies.get(&token)
    }

    /// The messages sent from `from` to `to` so far.
    fn sent_between(&self, from: NodeId, to: NodeId) -> Vec<&MessageBody> {
        self.sent
            .iter()
            .filter(|message| message.from == from && message.to == to)
            .map(|message| &message.body)
            .collect()
    }
}

fn written_index(response: Option<&Response>) -> LogIndex {
    match response {
        Some(Response::Written { result, .. }) => result.index,
        other => panic!("expected a write acknowledgement, got {other:?}"),
    }
}

// --- elections ---

#[test]
fn the_freshest_log_wins_the_election_even_if_another_node_times_out_first() {
    // Node 1 holds an entry of epoch 1 that nodes 2 and 3 lack; all three are in epoch 1.
    let fresher = entry(1, 1, put("k", "v"));
    let storages = BTreeMap::from([
        (1, storage_with(1, std::slice::from_ref(&fresher))),
        (2, storage_with(1, &[])),
        (3, storage_with(1, &[])),
    ]);
    let mut cluster = Cluster::on(voters(3), storages);
    // Node 3 (the highest id) times out first, but node 1 outranks it by its log: node 3 is told
    // to stand down, and node 1 runs (a split vote may take it a few rounds).
    cluster.now = FAILURE_TIMEOUT_MS;
    cluster.call(3, |node, now| node.tick(now)).expect("tick");
    cluster.deliver();
    assert!(cluster
        .sent_between(1, 3)
        .iter()
        .any(|body| matches!(body, MessageBody::Alive { .. })));
    let until = cluster.now + 10 * FAILURE_TIMEOUT_MS;
    cluster.run_until(until);
    assert_eq!(cluster.node(1).role(), Role::Primary);
    for id in [2, 3] {
        assert_eq!(
            cluster.node(id).primary(),
            Some(1),
            "node {id} follows node 1"
        );
        assert_eq!(
            cluster.storage(id).entry(1).expect("entry"),
            Some(fresher.clone()),
            "node {id} received node 1's entry"
        );
    }
    assert!(
        cluster.node(1).commit_index() > 1,
        "committed with the new no-op"
    );
}

/// The primary writes every client write of one pass to storage in one append (on sled an
/// append costs an insert whatever its length: docs/ARCHITECTURE.md, "Durability on disk"), and
/// the writes commit and are answered as before, each at its own index.
#[test]
fn a_pass_of_client_writes_is_one_storage_append() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    let appends_before = cluster.storage(3).appends();
    let first_token = cluster.next_token;
    cluster.next_token += 10;
    cluster
        .call(3, |node, now| {
            for (sequence, token) in (first_token..first_token + 10).enumerate() {
                let request = Request::Write {
                    request_id: RequestId {
                        client_id: 7,
                        sequence: sequence as u64 + 1,
                    },
                    write: Write::Put {
                        key: format!("k{sequence}").into_bytes(),
                        value: b"value".to_vec(),
                    },
                    write_concern: WriteConcern::Majority,
                    timeout_ms: 1_000,
                };
                node.request(now, token, request)?;
            }
            Ok(())
        })
        .expect("requests");
    assert_eq!(
        cluster.storage(3).appends() - appends_before,
        1,
        "ten client writes in one pass, one storage append"
    );
    cluster.deliver();
    let indexes: Vec<LogIndex> = (first_token..first_token + 10)
        .map(|token| written_index(cluster.reply(token)))
        .collect();
    let first = indexes[0];
    assert_eq!(indexes, (first..first + 10).collect::<Vec<_>>());
    for id in [1, 2, 3] {
        assert_eq!(
            cluster
                .storage(id)
                .entries(first, first + 9, usize::MAX)
                .expect("entries")
                .len(),
            10,
            "node {id} stored the ten writes"
        );
    }
}

#[test]
fn a_stale_primary_steps_down_on_a_higher_epoch() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    cluster.held_flushes.extend([1, 2, 3]);
    let pending = cluster.write(3, "k", WriteConcern::Majority);
    let epoch = cluster.node(3).epoch();
    let newer = Message {
        from: 2,
        to: 3,
        epoch: epoch + 1,
        body: MessageBody::StaleEpoch,
    };
    cluster
        .call(3, |node, now| node.step(now, newer))
        .expect("step");
    assert_eq!(cluster.node(3).role(), Role::Backup);
    assert_eq!(cluster.node(3).epoch(), epoch + 1);
    assert!(
        matches!(
            cluster.reply(pending),
            Some(Response::Error(Error::NotPrimary { .. }))
        ),
        "a write it was holding is answered so the client retries elsewhere: {:?}",
        cluster.reply(pending)
    );
}

#[test]
fn a_message_from_a_lower_epoch_is_answered_with_stale_epoch() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    let epoch = cluster.node(1).epoch();
    let old = Message {
        from: 2,
        to: 1,
        epoch: epoch - 1,
        body: MessageBody::Coordinator,
    };
    cluster
        .call(1, |node, now| node.step(now, old))
        .expect("step");
    assert_eq!(
        cluster.node(1).primary(),
        Some(3),
        "the old message changed nothing"
    );
    assert_eq!(
        cluster.sent.last().map(|m| (m.to, m.epoch, &m.body)),
        Some((2, epoch, &MessageBody::StaleEpoch))
    );
}

#[test]
fn a_vote_is_never_granted_to_a_less_fresh_log() {
    let fresher = storage_with(1, &[entry(1, 1, Operation::Noop)]);
    let storages = BTreeMap::from([(1, fresher)]);
    let mut cluster = Cluster::on(voters(3), storages);
    cluster.now = FAILURE_TIMEOUT_MS;
    let stale_rank = Rank {
        last_epoch: 0,
        last_index: 0,
        node_id: 2,
    };
    let election = Message {
        from: 2,
        to: 1,
        epoch: 2,
        body: MessageBody::Election { rank: stale_rank },
    };
    cluster
        .call(1, |node, now| node.step(now, election))
        .expect("step");
    let answers = cluster.sent_between(1, 2);
    assert!(
        !answers.contains(&&MessageBody::Vote { granted: true }),
        "voted for a less fresh log: {answers:?}"
    );
    assert!(
        matches!(answers.first(), Some(MessageBody::Alive { .. })),
        "the bully answers that it outranks the candidate: {answers:?}"
    );
    assert_eq!(cluster.storage(1).meta().expect("meta").vote, None);
}

#[test]
fn a_vote_is_durable_before_it_is_sent_and_granted_once_per_epoch() {
    let mut cluster = Cluster::new(3);
    cluster.now = FAILURE_TIMEOUT_MS;
    let rank = |node_id| Rank {
        last_epoch: 0,
        last_index: 0,
        node_id,
    };
    let from_2 = Message {
        from: 2,
        to: 1,
        epoch: 1,
        body: MessageBody::Election { rank: rank(2) },
    };
    cluster
        .call(1, |node, now| node.step(now, from_2))
        .expect("step");
    assert_eq!(
        cluster.sent_between(1, 2),
        vec![&MessageBody::Vote { granted: true }]
    );
    // A crash right after sending loses nothing unflushed: the vote was flushed first.
    cluster.storage(1).crash();
    assert_eq!(cluster.storage(1).meta().expect("meta").vote, Some(2));
    let from_3 = Message {
        from: 3,
        to: 1,
        epoch: 1,
        body: MessageBody::Election { rank: rank(3) },
    };
    cluster
        .call(1, |node, now| node.step(now, from_3))
        .expect("step");
    assert_eq!(
        cluster.sent_between(1, 3),
        vec![&MessageBody::Vote { granted: false }],
        "a second candidate of the same epoch is refused, however well ranked"
    );
}

#[test]
fn a_pre_vote_is_refused_while_a_live_primary_is_heard() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    let epoch = cluster.node(3).epoch();
    // Node 2 (which outranks node 1) hears nothing and asks for pre-votes in vain.
    cluster.isolated.insert(2);
    let until = cluster.now + 2 * FAILURE_TIMEOUT_MS;
    cluster.run_until(until);
    assert_eq!(cluster.node(2).role(), Role::Candidate);
    cluster.isolated.clear();
    // Its pre-election now reaches node 1, which still hears the primary and refuses.
    let pre_election = cluster
        .sent
        .iter()
        .rev()
        .find(|m| m.from == 2 && m.to == 1 && matches!(m.body, MessageBody::PreElection { .. }))
        .cloned()
        .expect("node 2 asked node 1");
    assert!(pre_election.epoch > epoch, "it asks about a later epoch");
    cluster.in_flight.push_back(pre_election);
    cluster.deliver();
    assert_eq!(
        cluster.sent_between(1, 2).last(),
        Some(&&MessageBody::PreVote { granted: false })
    );
    let until = cluster.now + FAILURE_TIMEOUT_MS;
    cluster.run_until(until);
    assert_eq!(cluster.node(3).role(), Role::Primary);
    for id in [1, 2, 3] {
        assert_eq!(cluster.node(id).epoch(), epoch, "node {id} kept the epoch");
    }
    assert_eq!(cluster.node(2).primary(), Some(3), "node 2 follows again");
}

#[test]
fn an_entry_of_an_earlier_epoch_commits_only_with_one_of_the_current_epoch() {
    // Node 3 holds an entry of epoch 1 that nodes 1 and 2 lack; one entry per append.
    let storages = BTreeMap::from([
        (1, storage_with(1, &[])),
        (2, storage_with(1, &[])),
        (3, storage_with(1, &[entry(1, 1, put("k", "v"))])),
    ]);
    let one_entry_per_append = Options {
        max_append_bytes: 1,
        ..options()
    };
    let mut cluster = Cluster::with_options(voters(3), storages, one_entry_per_append);
    cluster.now = FAILURE_TIMEOUT_MS;
    cluster.call(3, |node, now| node.tick(now)).expect("tick");
    // Each member gets the epoch-1 entry, but only the first append of the new no-op (which it
    // rejects, as it lacks the entry before it); the resent no-op is held back.
    let mut first_noop_append = BTreeSet::new();
    let held = cluster.deliver_except(|message| {
        let carries_noop = matches!(&message.body, MessageBody::Append { entries, .. }
            if entries.iter().any(|entry| entry.index == 2));
        carries_noop && !first_noop_append.insert(message.to)
    });
    assert_eq!(cluster.node(3).role(), Role::Primary);
    for id in [1, 2] {
        assert_eq!(
            cluster.node(id).durable_index(),
            1,
            "node {id} flushed entry 1"
        );
    }
    assert_eq!(
        cluster.node(3).commit_index(),
        0,
        "entry 1 is on every node, but it is of an earlier epoch: counting does not commit it"
    );
    cluster.in_flight.extend(held);
    cluster.deliver();
    assert_eq!(
        cluster.node(3).commit_index(),
        2,
        "it commits with the no-op"
    );
}

// --- write concern ---

#[test]
fn a_write_at_w_majority_is_answered_only_after_a_majority_flushed_it() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    cluster.held_flushes.extend([1, 2, 3]);
    let token = cluster.write(3, "k", WriteConcern::Majority);
    cluster.deliver();
    assert!(cluster.reply(token).is_none(), "nobody flushed it yet");
    cluster.flush(3);
    cluster.deliver();
    assert!(
        cluster.reply(token).is_none(),
        "only the primary flushed it"
    );
    cluster.flush(1);
    cluster.deliver();
    let index = written_index(cluster.reply(token));
    assert_eq!(cluster.node(3).commit_index(), index);
    assert_eq!(
        cluster.node(2).durable_index(),
        index - 1,
        "node 2 never flushed it"
    );
}

#[test]
fn a_write_at_w_1_is_answered_once_the_primary_flushed_it() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    cluster.held_flushes.extend([1, 2, 3]);
    let token = cluster.write(3, "k", WriteConcern::One);
    cluster.deliver();
    assert!(cluster.reply(token).is_none(), "not durable anywhere yet");
    cluster.flush(3);
    let index = written_index(cluster.reply(token));
    assert!(
        cluster.node(3).commit_index() < index,
        "answered before it committed"
    );
}

#[test]
fn a_write_at_w_all_waits_for_every_in_sync_voter() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    cluster.held_flushes.extend([1, 2, 3]);
    let token = cluster.write(3, "k", WriteConcern::All);
    cluster.deliver();
    cluster.flush(3);
    cluster.flush(1);
    cluster.deliver();
    let index = cluster.node(3).last_index();
    assert_eq!(
        cluster.node(3).commit_index(),
        index,
        "committed by a majority"
    );
    assert!(
        cluster.reply(token).is_none(),
        "node 2 is in sync and has not flushed"
    );
    cluster.flush(2);
    cluster.deliver();
    assert_eq!(written_index(cluster.reply(token)), index);
}

#[test]
fn an_unmet_write_concern_expires_with_what_was_acknowledged() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    cluster.held_flushes.extend([1, 2]);
    let token = cluster.write(3, "k", WriteConcern::Majority);
    cluster.deliver();
    // The write's timeout is 1,000 ms.
    let until = cluster.now + 990;
    cluster.run_until(until);
    assert!(
        cluster.reply(token).is_none(),
        "the deadline is not reached yet"
    );
    let until = cluster.now + 20;
    cluster.run_until(until);
    match cluster.reply(token) {
        Some(Response::Error(Error::WriteConcernNotMet {
            acknowledged,
            required,
        })) => assert_eq!((*acknowledged, *required), (1, 2)),
        other => panic!("expected WriteConcernNotMet, got {other:?}"),
    }
}

#[test]
fn a_write_concern_above_the_voter_count_is_refused_at_once() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    let last = cluster.node(3).last_index();
    let token = cluster.write(3, "k", WriteConcern::Count(4));
    assert!(matches!(
        cluster.reply(token),
        Some(Response::Error(Error::WriteConcernImpossible {
            required: 4,
            voters: 3
        }))
    ));
    assert_eq!(cluster.node(3).last_index(), last, "nothing was appended");
}

#[test]
fn a_retried_write_joins_its_entry_instead_of_appending_it_twice() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    cluster.held_flushes.extend([1, 2, 3]);
    let request_id = RequestId {
        client_id: 9,
        sequence: 1,
    };
    let first = cluster.write_with_id(3, "k", WriteConcern::Majority, request_id);
    let last = cluster.node(3).last_index();
    let retry = cluster.write_with_id(3, "k", WriteConcern::Majority, request_id);
    assert_eq!(
        cluster.node(3).last_index(),
        last,
        "the retry appended nothing"
    );
    cluster.deliver();
    assert!(cluster.reply(first).is_none() && cluster.reply(retry).is_none());
    cluster.release_flushes();
    cluster.deliver();
    assert_eq!(written_index(cluster.reply(first)), last);
    assert_eq!(written_index(cluster.reply(retry)), last);
    // Once applied, a further retry is answered from the session record.
    let late = cluster.write_with_id(3, "k", WriteConcern::Majority, request_id);
    assert_eq!(written_index(cluster.reply(late)), last);
    assert_eq!(cluster.node(3).last_index(), last);
}

// --- reads ---

#[test]
fn a_linearizable_read_waits_for_the_lease() {
    let mut cluster = Cluster::new(3);
    let is_heartbeat_ack = |m: &Message| matches!(m.body, MessageBody::HeartbeatAck { .. });
    cluster.now = FAILURE_TIMEOUT_MS;
    cluster.call(3, |node, now| node.tick(now)).expect("tick");
    let held_acks = cluster.deliver_except(is_heartbeat_ack);
    assert_eq!(cluster.node(3).role(), Role::Primary);
    let noop = cluster.node(3).last_index();
    assert_eq!(
        cluster.node(3).commit_index(),
        noop,
        "the no-op is committed"
    );
    let token = cluster.get(3, "k", ReadConsistency::Linearizable);
    assert!(
        cluster.reply(token).is_none(),
        "no majority acknowledged a heartbeat: the primary holds no lease"
    );
    cluster.in_flight.extend(held_acks);
    cluster.deliver();
    assert!(matches!(
        cluster.reply(token),
        Some(Response::Value { value: None, .. })
    ));
}

#[test]
fn a_read_on_a_backup_is_refused_with_the_primary_as_hint_unless_stale() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    let token = cluster.get(1, "k", ReadConsistency::Linearizable);
    match cluster.reply(token) {
        Some(Response::Error(Error::NotPrimary { hint, .. })) => {
            assert_eq!(hint, &Some((3, "client-3".to_string())))
        }
        other => panic!("expected NotPrimary, got {other:?}"),
    }
    let stale = cluster.get(1, "k", ReadConsistency::Stale);
    assert!(matches!(
        cluster.reply(stale),
        Some(Response::Value { value: None, .. })
    ));
}

// --- log repair ---

#[test]
fn a_backup_moves_a_divergent_suffix_to_rollback() {
    // Node 1 holds two entries of epoch 1 that never committed; nodes 2 and 3 hold a fresher one.
    let divergent = [entry(1, 1, Operation::Noop), entry(1, 2, put("lost", "1"))];
    let storages = BTreeMap::from([
        (1, storage_with(1, &divergent)),
        (2, storage_with(2, &[entry(2, 1, Operation::Noop)])),
        (3, storage_with(2, &[entry(2, 1, Operation::Noop)])),
    ]);
    let mut cluster = Cluster::on(voters(3), storages);
    cluster.elect(3);
    let until = cluster.now + 3 * HEARTBEAT_MS;
    cluster.run_until(until);
    let rolled_back: Vec<Entry> = cluster
        .storage(1)
        .rolled_back()
        .expect("rollback tree")
        .into_iter()
        .map(|record| record.entry)
        .collect();
    assert_eq!(rolled_back, divergent.to_vec());
    let last = cluster.node(3).last_index();
    assert_eq!(cluster.node(1).last_index(), last);
    assert_eq!(
        cluster
            .storage(1)
            .entries(1, last, usize::MAX)
            .expect("log"),
        cluster
            .storage(3)
            .entries(1, last, usize::MAX)
            .expect("log"),
        "node 1's log now matches the primary's"
    );
    assert_eq!(cluster.node(1).status(cluster.now).rolled_back_entries, 2);
}

#[test]
fn a_backup_refuses_to_truncate_a_committed_entry() {
    let storage = storage_with(
        1,
        &[entry(1, 1, Operation::Noop), entry(1, 2, put("k", "v"))],
    );
    storage.set_commit_index(2).expect("commit index");
    storage.flush().expect("flush");
    let mut cluster = Cluster::on(voters(3), BTreeMap::from([(1, storage)]));
    assert_eq!(cluster.node(1).commit_index(), 2);
    let overwrite = Message {
        from: 2,
        to: 1,
        epoch: 2,
        body: MessageBody::Append {
            base_index: 0,
            base_epoch: 0,
            entries: vec![entry(2, 1, Operation::Noop)],
            commit_index: 0,
            catch_up: false,
        },
    };
    let error = refused_by_node_1_without_rollback(&mut cluster, overwrite);
    assert!(matches!(error, Error::Internal(_)), "{error:?}");
    assert_eq!(cluster.storage(1).last().expect("last"), (1, 2));
}

/// Node 1 handles `append` and must stop on it (a fail-stop error) with nothing rolled back;
/// returns the error.
fn refused_by_node_1_without_rollback(cluster: &mut Cluster, append: Message) -> Error {
    let result = cluster.call(1, |node, now| node.step(now, append));
    assert!(
        matches!(&result, Err(err) if err.kind().stops_the_node()),
        "fail-stop: {result:?}"
    );
    assert!(cluster
        .storage(1)
        .rolled_back()
        .expect("rollback")
        .is_empty());
    result.expect_err("checked above")
}

/// An append from `from` to node 1 in `epoch`. Whether it is a catch-up append changes only the
/// stream it travels on, not how the backup handles it.
fn append_to_node_1(
    from: NodeId,
    epoch: Epoch,
    base: (LogIndex, Epoch),
    entries: Vec<Entry>,
    commit_index: LogIndex,
) -> Message {
    Message {
        from,
        to: 1,
        epoch,
        body: MessageBody::Append {
            base_index: base.0,
            base_epoch: base.1,
            entries,
            commit_index,
            catch_up: true,
        },
    }
}

/// A backup's appends reach storage at the end of its pass, so one pass can hold an `Append` and
/// then a newer primary's `Append` that cuts into it. The entries the second one removes were
/// never written; the log writes them before it truncates, so the rollback tree still records
/// them and the log keeps the entry before the cut.
#[test]
fn a_backup_truncates_entries_appended_earlier_in_the_same_pass() {
    let mut cluster = Cluster::new(3);
    let first_primary = vec![
        entry(2, 1, Operation::Noop),
        entry(2, 2, put("a", "from epoch 2")),
        entry(2, 3, put("b", "from epoch 2")),
    ];
    let second_primary = vec![entry(3, 2, put("c", "from epoch 3"))];
    let (first, second) = (
        append_to_node_1(2, 2, (0, 0), first_primary.clone(), 1),
        append_to_node_1(3, 3, (1, 2), second_primary.clone(), 1),
    );
    cluster
        .call(1, |node, now| {
            node.step(now, first)?;
            node.step(now, second)
        })
        .expect("both appends in one pass");

    let storage = cluster.storage(1);
    assert_eq!(storage.last().expect("last"), (3, 2));
    assert_eq!(
        storage.entries(1, 2, usize::MAX).expect("log"),
        vec![first_primary[0].clone(), second_primary[0].clone()],
        "the entry before the cut stays, the new primary's entry follows it"
    );
    let rolled_back: Vec<Entry> = storage
        .rolled_back()
        .expect("rollback tree")
        .into_iter()
        .map(|record| record.entry)
        .collect();
    assert_eq!(rolled_back, first_primary[1..].to_vec());
    assert_eq!(cluster.node(1).last_index(), 2);
}

/// Node 1 handles `append` in one pass; returns how many single-entry lookups its storage served.
fn entry_lookups_to_handle(cluster: &mut Cluster, append: Message) -> u64 {
    let before = cluster.storage(1).entry_lookups();
    cluster
        .call(1, |node, now| node.step(now, append))
        .expect("the append is handled");
    cluster.storage(1).entry_lookups() - before
}

/// A restarted backup (nothing in its cache) that is sent a catch-up append of entries it
/// already holds skips them with one read of its log, not one lookup per entry: on sled a
/// lookup decodes the entry's run up to the entry (tens of microseconds), so per-entry lookups
/// made a 1 MiB catch-up append cost a few hundred milliseconds, and a backup chewing through a
/// queue of them stalled its event loop (docs/CHAOS.md, "A backup that stopped catching up").
#[test]
fn a_repeated_catch_up_append_is_checked_with_one_read_of_the_log() {
    const HELD: LogIndex = 500;
    let held: Vec<Entry> = (1..=HELD)
        .map(|index| entry(2, index, put(&format!("k{index}"), "v")))
        .collect();
    let storage = storage_with(2, &held);
    let mut cluster = Cluster::on(voters(3), BTreeMap::from([(1, storage)]));
    let repeated = append_to_node_1(2, 2, (0, 0), held.clone(), HELD);
    let lookups = entry_lookups_to_handle(&mut cluster, repeated);
    assert!(
        lookups <= 1,
        "{lookups} single-entry lookups for an append of {HELD} held entries"
    );
    assert_eq!(
        cluster.sent_between(1, 2),
        vec![&MessageBody::AppendAck { match_index: HELD }],
        "the repeated entries are acknowledged"
    );
    assert!(cluster
        .storage(1)
        .rolled_back()
        .expect("rollback")
        .is_empty());
    assert_eq!(cluster.node(1).last_index(), HELD);
}

/// A backup whose uncommitted suffix conflicts with a new primary's log finds where the two may
/// still match (the entry before its conflicting epoch began) with one read of that suffix, not
/// by looking up its entries one by one.
#[test]
fn a_conflicting_append_finds_its_hint_with_one_read_of_the_log() {
    const HELD: LogIndex = 500;
    let held: Vec<Entry> = (1..=HELD)
        .map(|index| entry(if index == 1 { 1 } else { 2 }, index, Operation::Noop))
        .collect();
    let storage = storage_with(2, &held);
    storage.set_commit_index(1).expect("commit index");
    let mut cluster = Cluster::on(voters(3), BTreeMap::from([(1, storage)]));
    let conflicting = append_to_node_1(
        3,
        3,
        (HELD, 3),
        vec![entry(3, HELD + 1, Operation::Noop)],
        1,
    );
    let lookups = entry_lookups_to_handle(&mut cluster, conflicting);
    assert!(
        lookups <= 1,
        "{lookups} single-entry lookups to walk back over {} entries of epoch 2",
        HELD - 1
    );
    assert_eq!(
        cluster.sent_between(1, 3),
        vec![&MessageBody::AppendRejected { hint: 1 }],
        "the logs may match up to the last entry before epoch 2"
    );
}

/// An append's entries are matched to this log by position, so an append whose entries do not
/// follow its base one by one is refused before it changes anything: matched out of place, its
/// entries would roll back an entry that did not conflict.
#[test]
fn an_append_with_entries_out_of_order_is_refused_before_it_changes_the_log() {
    let held = vec![entry(1, 1, Operation::Noop), entry(1, 2, Operation::Noop)];
    let storage = storage_with(1, &held);
    let mut cluster = Cluster::on(voters(3), BTreeMap::from([(1, storage)]));
    let out_of_order = append_to_node_1(
        2,
        1,
        (0, 0),
        vec![entry(2, 2, Operation::Noop), entry(1, 1, Operation::Noop)],
        0,
    );
    refused_by_node_1_without_rollback(&mut cluster, out_of_order);
    assert_eq!(
        cluster.storage(1).entries(1, 2, usize::MAX).expect("log"),
        held
    );
}

/// A new primary knows no member's match index. When a member's appends are lost for a while
/// (its replication stream stalled, or a full outbound queue dropped them) while its heartbeat
/// acks get through, the primary resends from where the member last said its log ends, not
/// from the start of the log: a whole log of repeated entries, or a snapshot of the whole state
/// once the log is compacted, is what a member that already holds them least needs.
#[test]
fn a_member_whose_appends_were_lost_is_resent_from_where_its_log_ends() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    for key in 0..20 {
        cluster.write(3, &format!("k{key}"), WriteConcern::Majority);
    }
    cluster.deliver();
    let held = cluster.node(1).last_index();
    assert!(held > 20, "node 1 holds the writes: {held}");
    cluster.isolated.insert(3);
    cluster.now += 2 * FAILURE_TIMEOUT_MS;
    let elected = cluster.sent.len();
    let lost =
        |message: &Message| message.from == 2 && matches!(message.body, MessageBody::Append { .. });
    cluster.call(2, |node, now| node.tick(now)).expect("tick");
    cluster.deliver_except(lost);
    assert_eq!(cluster.node(2).role(), Role::Primary, "node 2 won");
    cluster.run_losing(cluster.now + 3 * HEARTBEAT_MS, lost);
    cluster.run_until(cluster.now + 5 * HEARTBEAT_MS);

    assert_eq!(
        cluster.node(2).role(),
        Role::Primary,
        "node 2 kept its majority"
    );
    assert_eq!(
        cluster.node(1).last_index(),
        cluster.node(2).last_index(),
        "node 1 caught up"
    );
    let resent_bases: Vec<LogIndex> = cluster.sent[elected..]
        .iter()
        .filter(|message| message.from == 2 && message.to == 1)
        .filter_map(|message| match &message.body {
            MessageBody::Append {
                base_index,
                entries,
                ..
            } if !entries.is_empty() => Some(*base_index),
            _ => None,
        })
        .collect();
    assert!(
        resent_bases.iter().all(|&base| base >= held),
        "node 1 held entries 1..={held}, yet appends were sent from bases {resent_bases:?}"
    );
}

// --- membership and snapshots ---

#[test]
fn a_joining_learner_becomes_a_voter_once_caught_up() {
    let mut cluster = Cluster::new(1);
    cluster.elect(1);
    let joiner = member(2, false);
    cluster.start(
        2,
        Membership::new(vec![joiner.clone()]),
        Arc::new(MemoryStorage::new()),
    );
    let token = cluster.request(1, Request::AddMember { member: joiner });
    cluster.deliver();
    let index = written_index(cluster.reply(token));
    assert!(
        !cluster.node(1).membership().is_voter(2),
        "it joins as a learner"
    );
    let until = cluster.now + 6 * HEARTBEAT_MS;
    cluster.run_until(until);
    let membership = cluster.node(1).membership().clone();
    assert!(membership.is_voter(2), "promoted: {membership:?}");
    assert!(
        cluster.node(1).last_index() > index,
        "by a second membership entry"
    );
    assert_eq!(
        cluster.node(2).membership(),
        &membership,
        "the joiner learned it"
    );
    assert_eq!(cluster.node(2).role(), Role::Backup);
}

/// Restarts node 3 and runs until nodes 2 and 3 elect a primary, which it returns. A restarted
/// node has nothing cached: whoever leads next holds node 1's missing entries only in its state,
/// so it sends node 1 a snapshot.
fn restart_node_3_and_elect(cluster: &mut Cluster) -> NodeId {
    let storage = cluster.storage(3).clone();
    cluster.start(3, voters(3), storage);
    let until = cluster.now + 5 * FAILURE_TIMEOUT_MS;
    cluster.run_until(until);
    [2, 3]
        .into_iter()
        .find(|&id| cluster.node(id).role() == Role::Primary)
        .expect("nodes 2 and 3 elected a primary")
}

#[test]
fn a_member_behind_the_compacted_log_catches_up_from_a_snapshot() {
    let storages = (1..=3)
        .map(|id| (id, Arc::new(MemoryStorage::new())))
        .collect();
    // A tiny log: the applied prefix is compacted at most once per heartbeat interval.
    let tiny_log = Options {
        log_retention_bytes: 200,
        ..options()
    };
    let mut cluster = Cluster::with_options(voters(3), storages, tiny_log);
    cluster.elect(3);
    cluster.isolated.insert(1);
    // A key with a deadline: its records live in the system keyspace, which the snapshot must
    // carry like any other state.
    let expiring = Write::Set {
        key: b"expiring".to_vec(),
        value: b"soon".to_vec(),
        condition: Condition::Always,
        expiry: Expiry::At(4_000_000_000_000),
        get: false,
    };
    write_as(&mut cluster, 3, expiring, 50, 1);
    cluster.deliver();
    for i in 0..20 {
        cluster.write(3, &format!("key-{i:02}"), WriteConcern::Majority);
        cluster.deliver();
    }
    let until = cluster.now + 2 * HEARTBEAT_MS;
    cluster.run_until(until);
    for id in [2, 3] {
        let log_start = cluster.storage(id).meta().expect("meta").log_start;
        assert!(
            log_start > 2,
            "node {id} compacted its log (it starts at {log_start})"
        );
    }
    let primary = restart_node_3_and_elect(&mut cluster);
    cluster.isolated.clear();
    let until = cluster.now + 10 * FAILURE_TIMEOUT_MS;
    cluster.run_until(until);
    assert!(cluster
        .sent_between(primary, 1)
        .iter()
        .any(|body| matches!(body, MessageBody::SnapshotChunk { .. })));
    assert_eq!(cluster.node(1).primary(), Some(primary));
    assert_eq!(
        cluster.node(1).applied_index(),
        cluster.node(primary).applied_index()
    );
    assert_eq!(
        cluster.storage(1).scan(b"", usize::MAX).expect("scan"),
        cluster
            .storage(primary)
            .scan(b"", usize::MAX)
            .expect("scan"),
        "node 1 holds the primary's state"
    );
    assert_eq!(
        cluster
            .storage(1)
            .scan(b"key-", usize::MAX)
            .expect("scan")
            .len(),
        20
    );
    assert!(
        cluster
            .storage(1)
            .get(&deadline_key(b"expiring"))
            .expect("get")
            .is_some(),
        "node 1 holds the deadline of the expiring key"
    );
    assert_eq!(
        whole_state(cluster.storage(1)),
        whole_state(cluster.storage(primary)),
        "node 1 holds the primary's whole state, system keys included"
    );
}

/// Every pair of a node's state, system keys included (a scan skips those).
fn whole_state(storage: &MemoryStorage) -> Vec<(Vec<u8>, Versioned)> {
    storage.state_chunk(None, usize::MAX).expect("state").pairs
}

// --- hardening (issue 10): request deadlines, durability at open, fail-stop, retries ---

/// A write on node 3 of `cluster` with a timeout chosen by the client.
fn write_with_timeout(cluster: &mut Cluster, key: &str, timeout_ms: u64) -> ClientToken {
    let sequence = cluster.next_token;
    cluster.request(
        3,
        Request::Write {
            request_id: RequestId {
                client_id: 11,
                sequence,
            },
            write: Write::Put {
                key: key.into(),
                value: b"value".to_vec(),
            },
            write_concern: WriteConcern::Majority,
            timeout_ms,
        },
    )
}

#[test]
fn a_huge_client_timeout_neither_overflows_nor_outlives_the_maximum() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    cluster.held_flushes.extend([1, 2]);
    let token = write_with_timeout(&mut cluster, "k", u64::MAX);
    let until = cluster.now + 1_000;
    cluster.run_until(until);
    assert!(
        cluster.reply(token).is_none(),
        "a huge timeout must not wrap into one already past"
    );
    let until = cluster.now + replikv::core::MAX_REQUEST_TIMEOUT_MS;
    cluster.run_until(until);
    assert!(
        matches!(
            cluster.reply(token),
            Some(Response::Error(Error::WriteConcernNotMet { .. }))
        ),
        "the deadline is capped: {:?}",
        cluster.reply(token)
    );
}

#[test]
fn a_cancelled_request_is_forgotten_and_never_answered() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    cluster.held_flushes.extend([1, 2]);
    let gone = write_with_timeout(&mut cluster, "gone", 10_000);
    let kept = write_with_timeout(&mut cluster, "kept", 10_000);
    cluster.deliver();
    cluster
        .call(3, |node, _| {
            node.cancel(gone);
            Ok(())
        })
        .expect("cancel");
    cluster.release_flushes();
    cluster.deliver();
    assert!(cluster.reply(gone).is_none(), "nobody waits for it");
    written_index(cluster.reply(kept));
    assert_eq!(
        cluster.storage(3).get(b"gone").expect("get"),
        Some(b"value".to_vec()),
        "cancelling forgets the waiter, not the write"
    );
}

#[test]
fn opening_a_store_makes_its_log_durable_before_counting_it_durable() {
    let storage = storage_with(1, &[entry(1, 1, Operation::Noop)]);
    // Written before a crash of the process, never flushed: still in the page cache.
    storage
        .append(&[entry(1, 2, put("a", "1")), entry(1, 3, put("b", "2"))])
        .expect("append");
    let node = Node::new(1, voters(3), storage.clone(), options(), 1, 0).expect("node starts");
    let reported_durable = node.durable_index();
    assert_eq!(reported_durable, 3);
    storage.crash(); // a power cut now
    let (_, last) = storage.last().expect("last");
    assert!(
        last >= reported_durable,
        "the node reported {reported_durable} durable but only {last} survived a power cut"
    );
}

#[test]
fn a_primary_that_hears_another_primary_of_its_epoch_reports_a_fatal_error() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    let epoch = cluster.node(3).epoch();
    let usurper = Message {
        from: 2,
        to: 3,
        epoch,
        body: MessageBody::Coordinator,
    };
    let result = cluster.call(3, |node, now| node.step(now, usurper));
    assert!(
        matches!(&result, Err(err) if err.kind().stops_the_node()),
        "fail-stop: {result:?}"
    );
}

#[test]
fn an_append_that_leaves_a_gap_is_a_fatal_error() {
    let storage = storage_with(1, &[entry(1, 1, Operation::Noop)]);
    let mut cluster = Cluster::on(voters(3), BTreeMap::from([(1, storage)]));
    let gap = Message {
        from: 2,
        to: 1,
        epoch: 1,
        body: MessageBody::Append {
            base_index: 1,
            base_epoch: 1,
            entries: vec![entry(1, 3, put("k", "v"))],
            commit_index: 0,
            catch_up: false,
        },
    };
    let result = cluster.call(1, |node, now| node.step(now, gap));
    assert!(
        matches!(&result, Err(err) if err.kind().stops_the_node()),
        "fail-stop: {result:?}"
    );
    assert_eq!(cluster.storage(1).last().expect("last"), (1, 1));
}

#[test]
fn a_retry_answered_from_the_sessions_table_waits_for_its_own_write_concern() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    cluster.held_flushes.insert(2);
    let request_id = RequestId {
        client_id: 12,
        sequence: 1,
    };
    let first = cluster.write_with_id(3, "k", WriteConcern::Majority, request_id);
    cluster.deliver();
    let index = written_index(cluster.reply(first));
    assert!(cluster.node(3).applied_index() >= index, "applied");
    let retry = cluster.write_with_id(3, "k", WriteConcern::All, request_id);
    cluster.deliver();
    assert!(
        cluster.reply(retry).is_none(),
        "node 2 is in sync and has not flushed entry {index}: {:?}",
        cluster.reply(retry)
    );
    cluster.flush(2);
    cluster.deliver();
    assert_eq!(written_index(cluster.reply(retry)), index);
}

#[test]
fn a_write_overtaken_by_a_newer_sequence_of_its_client_is_refused_not_answered_with_its_result() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    cluster.held_flushes.extend([1, 2, 3]);
    let id = |sequence| RequestId {
        client_id: 13,
        sequence,
    };
    // Two concurrent calls of one session: sequence 2 reaches the primary before sequence 1.
    let second = cluster.write_with_id(3, "second", WriteConcern::Majority, id(2));
    let last = cluster.node(3).last_index();
    let first = cluster.write_with_id(3, "first", WriteConcern::Majority, id(1));
    assert!(
        matches!(
            cluster.reply(first),
            Some(Response::Error(Error::StaleRequest {
                sequence: 1,
                latest: 2,
                ..
            }))
        ),
        "refused at once: {:?}",
        cluster.reply(first)
    );
    assert_eq!(cluster.node(3).last_index(), last, "nothing was appended");
    cluster.release_flushes();
    cluster.deliver();
    assert_eq!(written_index(cluster.reply(second)), last);
    assert_eq!(cluster.storage(3).get(b"first").expect("get"), None);
}

#[test]
fn a_new_primary_refuses_a_sequence_older_than_one_it_inherited_in_flight() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    cluster.held_flushes.extend([1, 2, 3]);
    let id = |sequence| RequestId {
        client_id: 14,
        sequence,
    };
    cluster.write_with_id(3, "second", WriteConcern::Majority, id(2));
    cluster.deliver();
    // The old primary is cut off before anything commits; node 2 leads with the entry unapplied
    // (node 1 holds its flushes, so the new epoch's no-op cannot commit either).
    cluster.isolated.insert(3);
    cluster.flush(2);
    cluster.held_flushes = BTreeSet::from([1]);
    let until = cluster.now + 4 * FAILURE_TIMEOUT_MS;
    cluster.run_until(until);
    let primary = [1, 2]
        .into_iter()
        .find(|&id| cluster.node(id).role() == Role::Primary)
        .expect("nodes 1 and 2 elected a primary");
    let inherited = cluster.node(primary).applied_index() < cluster.node(primary).last_index();
    assert!(inherited, "the entry of sequence 2 is not applied yet");
    let first = cluster.write_with_id(primary, "first", WriteConcern::Majority, id(1));
    assert!(
        matches!(
            cluster.reply(first),
            Some(Response::Error(Error::StaleRequest { latest: 2, .. }))
        ),
        "refused at once: {:?}",
        cluster.reply(first)
    );
}

// --- hardening (issue 10): paged scans, bounded snapshot chunks, expiring sessions ---

/// A write of `value` to `key` by client `client_id` at `sequence`, on node `id`.
fn put_as(
    cluster: &mut Cluster,
    id: NodeId,
    key: &str,
    value: &[u8],
    client_id: u64,
    sequence: u64,
) -> ClientToken {
    let write = Write::Put {
        key: key.into(),
        value: value.to_vec(),
    };
    write_as(cluster, id, write, client_id, sequence)
}

/// Key-value pairs in key order.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// One scan page from node `id`: its pairs and whether more remain.
fn scan_page(
    cluster: &mut Cluster,
    id: NodeId,
    start_after: Option<Vec<u8>>,
    limit: u32,
    consistency: ReadConsistency,
) -> (Pairs, bool) {
    let token = cluster.request(
        id,
        Request::Scan {
            prefix: b"key-".to_vec(),
            start_after,
            limit,
            consistency,
        },
    );
    cluster.deliver();
    match cluster.reply(token) {
        Some(Response::Pairs { pairs, more, .. }) => (pairs.clone(), *more),
        other => panic!("expected a page of pairs, got {other:?}"),
    }
}

#[test]
fn a_scan_with_an_unbounded_limit_is_served_in_bounded_pages_that_walk_every_key_once() {
    let storages = (1..=3)
        .map(|id| (id, Arc::new(MemoryStorage::new())))
        .collect();
    let small_pages = Options {
        max_scan_page_pairs: 50,
        max_scan_page_bytes: 1024,
        ..options()
    };
    let mut cluster = Cluster::with_options(voters(3), storages, small_pages);
    cluster.elect(3);
    let value = [b'v'; 20];
    for i in 0..120 {
        put_as(&mut cluster, 3, &format!("key-{i:03}"), &value, 20, i + 1);
        cluster.deliver();
    }
    put_as(&mut cluster, 3, "other", &value, 20, 121);
    cluster.deliver();
    // A backup applies what is committed on its tick; the stale scan below reads its state.
    let next_tick = cluster.now + 10;
    cluster.run_until(next_tick);
    let pair_bytes = replikv::storage::framed_pair_bytes(b"key-000", &value);
    for (id, consistency) in [
        (3, ReadConsistency::Linearizable),
        (3, ReadConsistency::Local),
        (1, ReadConsistency::Stale),
    ] {
        let (first, more) = scan_page(&mut cluster, id, None, u32::MAX, consistency);
        assert!(
            !first.is_empty() && first.len() * pair_bytes <= 1024,
            "one page within the byte budget, not all 120 pairs: {} pairs",
            first.len()
        );
        assert!(more, "the page says more remain");
        let mut walked: Vec<Vec<u8>> = first.iter().map(|(key, _)| key.clone()).collect();
        let mut more = more;
        while more {
            let after = walked.last().cloned();
            let (page, next) = scan_page(&mut cluster, id, after, u32::MAX, consistency);
            assert!(!page.is_empty() && page.len() * pair_bytes <= 1024);
            walked.extend(page.into_iter().map(|(key, _)| key));
            more = next;
        }
        let expected: Vec<Vec<u8>> = (0..120)
            .map(|i| format!("key-{i:03}").into_bytes())
            .collect();
        assert_eq!(walked, expected, "every key once, in order ({consistency})");
    }
    // The pair cap holds too, and a client limit below both caps wins.
    let (page, more) = scan_page(&mut cluster, 3, None, 7, ReadConsistency::Local);
    assert_eq!((page.len(), more), (7, true));
}

#[test]
fn a_scan_page_always_fits_one_client_frame() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    // Three values of 2 MiB: together far over the 4 MiB client frame.
    let value = vec![b'x'; 2 * 1024 * 1024];
    for i in 0..3 {
        put_as(&mut cluster, 3, &format!("key-{i}"), &value, 21, i + 1);
        cluster.deliver();
    }
    let mut after = None;
    let mut keys = 0;
    loop {
        let token = cluster.request(
            3,
            Request::Scan {
                prefix: b"key-".to_vec(),
                start_after: after.clone(),
                limit: u32::MAX,
                consistency: ReadConsistency::Linearizable,
            },
        );
        cluster.deliver();
        let response = cluster.reply(token).cloned().expect("answered");
        replikv::wire::frame::encode(&response, replikv::wire::frame::MAX_CLIENT_FRAME_BYTES)
            .expect("the page fits one client frame");
        let Response::Pairs { pairs, more, .. } = response else {
            panic!("expected pairs, got {response:?}");
        };
        keys += pairs.len();
        after = pairs.last().map(|(key, _)| key.clone());
        if !more {
            break;
        }
    }
    assert_eq!(keys, 3);
}

/// The snapshot chunk budget (`max_append_bytes`) of [`small_chunk_cluster`].
const CHUNK_BUDGET: usize = 1024;

/// Three nodes with a tiny log (200 bytes retained) and [`CHUNK_BUDGET`]-byte snapshot chunks,
/// node 3 leading and node 1 isolated: whatever is written now reaches node 1 as a snapshot.
fn small_chunk_cluster() -> Cluster {
    let storages = (1..=3)
        .map(|id| (id, Arc::new(MemoryStorage::new())))
        .collect();
    let small_chunks = Options {
        log_retention_bytes: 200,
        max_append_bytes: CHUNK_BUDGET,
        ..options()
    };
    let mut cluster = Cluster::with_options(voters(3), storages, small_chunks);
    cluster.elect(3);
    cluster.isolated.insert(1);
    cluster
}

#[test]
fn a_snapshot_whose_changes_and_sessions_exceed_a_chunk_is_sent_in_bounded_chunks_and_installed() {
    let mut cluster = small_chunk_cluster();
    // More state than the window of 4 chunks holds, so the transfer is still running (its
    // acknowledgements held) when the writes below come in.
    for i in 0..200 {
        put_as(
            &mut cluster,
            3,
            &format!("key-{i:03}"),
            b"before",
            100 + i,
            1,
        );
        cluster.deliver();
    }
    let until = cluster.now + 2 * HEARTBEAT_MS;
    cluster.run_until(until);
    let primary = restart_node_3_and_elect(&mut cluster);
    // Node 1 comes back; its acknowledgements are held, so the transfer stops at its window
    // while many keys and sessions change.
    cluster.isolated.clear();
    let is_ack = |message: &Message| {
        message.from == 1 && matches!(message.body, MessageBody::SnapshotAck { .. })
    };
    let mut held = Vec::new();
    let give_up = cluster.now + 10 * FAILURE_TIMEOUT_MS;
    while !cluster
        .sent_between(primary, 1)
        .iter()
        .any(|body| matches!(body, MessageBody::SnapshotChunk { .. }))
    {
        assert!(
            cluster.now < give_up,
            "the primary never sent node 1 a snapshot"
        );
        cluster.now += 10;
        for id in [1, 2, 3] {
            cluster.call(id, |node, now| node.tick(now)).expect("tick");
        }
        held.extend(cluster.deliver_except(is_ack));
    }
    for i in 0..300 {
        put_as(
            &mut cluster,
            primary,
            &format!("key-{i:03}"),
            b"during",
            1_000 + i,
            1,
        );
        held.extend(cluster.deliver_except(is_ack));
    }
    cluster.in_flight.extend(held);
    let until = cluster.now + 10 * FAILURE_TIMEOUT_MS;
    cluster.run_until(until);

    let chunks: Vec<&MessageBody> = cluster
        .sent_between(primary, 1)
        .into_iter()
        .filter(|body| matches!(body, MessageBody::SnapshotChunk { .. }))
        .collect();
    let sizes: Vec<usize> = chunks
        .iter()
        .map(|body| postcard::to_allocvec(body).expect("encodes").len())
        .collect();
    assert!(
        sizes.iter().all(|&size| size <= CHUNK_BUDGET + 256),
        "every chunk, the last included, stays within the budget: {sizes:?}"
    );
    let changes_chunks = chunks
        .iter()
        .filter(|body| {
            matches!(body, MessageBody::SnapshotChunk { pairs, .. }
                if pairs.iter().any(|(_, value)| value.as_ref().map(|versioned| versioned.value.as_slice()) == Some(&b"during"[..])))
        })
        .count();
    assert!(
        changes_chunks >= 5,
        "the keys written during the transfer needed many chunks, not one: {sizes:?}"
    );
    let final_chunks = chunks
        .iter()
        .filter(|body| {
            matches!(
                body,
                MessageBody::SnapshotChunk {
                    finish: Some(_),
                    ..
                }
            )
        })
        .count();
    assert_eq!(final_chunks, 1, "one transfer, finished once");
    assert_eq!(
        cluster.node(1).applied_index(),
        cluster.node(primary).applied_index()
    );
    let storage_1 = cluster.storage(1).clone();
    let storage_primary = cluster.storage(primary).clone();
    assert_eq!(
        storage_1.scan(b"", usize::MAX).expect("scan"),
        storage_primary.scan(b"", usize::MAX).expect("scan"),
        "node 1 holds the primary's state"
    );
    assert_eq!(storage_1.sessions().expect("sessions").len(), 500);
    assert_eq!(
        storage_1.sessions().expect("sessions"),
        storage_primary.sessions().expect("sessions"),
        "and its sessions"
    );
}

/// The `ExpireSessions` entries in node `id`'s log, by index.
fn expiry_entries(cluster: &Cluster, id: NodeId) -> Vec<(LogIndex, Operation)> {
    let storage = cluster.storage(id);
    let (_, last) = storage.last().expect("last");
    let start = storage.meta().expect("meta").log_start;
    storage
        .entries(start, last, usize::MAX)
        .expect("entries")
        .into_iter()
        .filter(|entry| matches!(entry.operation, Operation::ExpireSessions(_)))
        .map(|entry| (entry.index, entry.operation))
        .collect()
}

#[test]
fn idle_sessions_expire_on_every_node_at_one_index_and_only_later_retries_count_as_new() {
    const TTL_MS: u64 = 2_000;
    let storages = (1..=3)
        .map(|id| (id, Arc::new(MemoryStorage::new())))
        .collect();
    let short_sessions = Options {
        session_ttl_ms: TTL_MS,
        ..options()
    };
    let mut cluster = Cluster::with_options(voters(3), storages, short_sessions);
    cluster.elect(3);
    const IDLE: u64 = 30; // writes once, then only retries that write
    const BUSY: u64 = 31; // keeps writing
    let first = put_as(&mut cluster, 3, "idle", b"1", IDLE, 1);
    cluster.deliver();
    let first_index = written_index(cluster.reply(first));
    let mut busy_sequence = 1;
    put_as(&mut cluster, 3, "busy", b"1", BUSY, busy_sequence);
    cluster.deliver();

    // Inside the window a retry is recognised: same answer, nothing appended.
    let until = cluster.now + TTL_MS / 2;
    cluster.run_until(until);
    let last = cluster.node(3).last_index();
    let retry = put_as(&mut cluster, 3, "idle", b"1", IDLE, 1);
    cluster.deliver();
    assert_eq!(written_index(cluster.reply(retry)), first_index);
    assert_eq!(
        cluster.node(3).last_index(),
        last,
        "the retry appended nothing"
    );
    let retried_at = cluster.now;

    // Past the window, with the busy client writing every half TTL.
    while cluster.now < retried_at + 2 * TTL_MS {
        let until = cluster.now + TTL_MS / 2;
        cluster.run_until(until);
        busy_sequence += 1;
        put_as(&mut cluster, 3, "busy", b"2", BUSY, busy_sequence);
        cluster.deliver();
    }
    // Whatever was appended last reaches every node.
    let until = cluster.now + 3 * HEARTBEAT_MS;
    cluster.run_until(until);
    let expiries = expiry_entries(&cluster, 3);
    let expected = Operation::ExpireSessions(vec![ExpiredSession {
        client_id: IDLE,
        last_sequence: 1,
    }]);
    assert_eq!(
        expiries.iter().map(|(_, op)| op).collect::<Vec<_>>(),
        vec![&expected],
        "one entry expires the idle session, and nothing else"
    );
    let expired_at = expiries[0].0;
    for id in [1, 2, 3] {
        assert_eq!(
            expiry_entries(&cluster, id),
            expiries,
            "node {id} holds the same expiry at the same index"
        );
        assert!(cluster.node(id).applied_index() >= expired_at);
        let storage = cluster.storage(id);
        assert_eq!(storage.session(IDLE).expect("session"), None, "node {id}");
        assert_eq!(
            storage
                .session(BUSY)
                .expect("session")
                .map(|s| s.last_sequence),
            Some(busy_sequence),
            "node {id} keeps the busy session"
        );
    }

    // After expiry the old request id is a new request: appended and applied again.
    let late = put_as(&mut cluster, 3, "idle", b"1", IDLE, 1);
    cluster.deliver();
    let late_index = written_index(cluster.reply(late));
    let until = cluster.now + 3 * HEARTBEAT_MS;
    cluster.run_until(until);
    assert!(
        late_index > expired_at,
        "applied anew at {late_index}, after the expiry at {expired_at}"
    );
    assert_eq!(
        cluster
            .storage(1)
            .session(IDLE)
            .expect("session")
            .map(|s| s.result.index),
        Some(late_index)
    );
}

// --- read-modify-write and expiring keys (issue 12) ---

/// A write of `write` by client `client_id` at `sequence`, on node `id`, at `w=majority`.
fn write_as(
    cluster: &mut Cluster,
    id: NodeId,
    write: Write,
    client_id: u64,
    sequence: u64,
) -> ClientToken {
    cluster.request(
        id,
        Request::Write {
            request_id: RequestId {
                client_id,
                sequence,
            },
            write,
            write_concern: WriteConcern::Majority,
            timeout_ms: 1_000,
        },
    )
}

fn increment(key: &str, by: i64) -> Write {
    Write::Increment {
        key: key.into(),
        by,
    }
}

/// The answer of a write acknowledgement.
fn answer(response: Option<&Response>) -> Option<Answer> {
    match response {
        Some(Response::Written { result, .. }) => result.answer.clone(),
        other => panic!("expected a write acknowledgement, got {other:?}"),
    }
}

/// A session remembers its write's answer, and a `GETDEL`'s answer is a whole value: a snapshot
/// chunk counts such sessions by their size, so it stays within its budget.
#[test]
fn sessions_that_remember_whole_values_are_counted_by_size_in_snapshot_chunks() {
    const VALUE_BYTES: usize = 600;
    let mut cluster = small_chunk_cluster();
    for i in 0..20u64 {
        let key = format!("key-{i:02}");
        put_as(&mut cluster, 3, &key, &[b'v'; VALUE_BYTES], 100 + i, 1);
        cluster.deliver();
        let deleted = write_as(
            &mut cluster,
            3,
            Write::GetDelete {
                key: key.into_bytes(),
            },
            100 + i,
            2,
        );
        cluster.deliver();
        assert_eq!(
            answer(cluster.reply(deleted)),
            Some(Answer::Previous(Some(vec![b'v'; VALUE_BYTES])))
        );
    }
    let until = cluster.now + 2 * HEARTBEAT_MS;
    cluster.run_until(until);
    let primary = restart_node_3_and_elect(&mut cluster);
    cluster.isolated.clear();
    let until = cluster.now + 10 * FAILURE_TIMEOUT_MS;
    cluster.run_until(until);

    let sizes: Vec<usize> = cluster
        .sent_between(primary, 1)
        .into_iter()
        .filter(|body| matches!(body, MessageBody::SnapshotChunk { .. }))
        .map(|body| postcard::to_allocvec(body).expect("encodes").len())
        .collect();
    assert!(!sizes.is_empty(), "node 1 caught up from a snapshot");
    assert!(
        sizes.iter().all(|&size| size <= CHUNK_BUDGET + 256),
        "every chunk stays within the budget: {sizes:?}"
    );
    assert_eq!(
        cluster.node(1).applied_index(),
        cluster.node(primary).applied_index()
    );
    let session = cluster
        .storage(1)
        .session(100)
        .expect("read a session")
        .expect("node 1 has client 100's session");
    assert_eq!(
        session.result.answer,
        Some(Answer::Previous(Some(vec![b'v'; VALUE_BYTES])))
    );
}

/// Tells every node of the cluster that the wall clock reads `unix_ms`.
fn set_wall_clock(cluster: &mut Cluster, unix_ms: u64) {
    for node in cluster.nodes.values_mut() {
        node.set_wall_clock(unix_ms);
    }
}

#[test]
fn read_modify_writes_are_decided_on_pending_writes_and_retries_get_the_first_answer() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    cluster.held_flushes.extend([1, 2, 3]);
    // Neither increment is applied when the second is decided: it builds on the first anyway.
    let first = write_as(&mut cluster, 3, increment("n", 5), 21, 1);
    let second = write_as(&mut cluster, 3, increment("n", 2), 22, 1);
    let last = cluster.node(3).last_index();
    // A retry while in flight joins its entry and gets its answer, appending nothing.
    let retry_in_flight = write_as(&mut cluster, 3, increment("n", 5), 21, 1);
    assert_eq!(cluster.node(3).last_index(), last);
    cluster.release_flushes();
    cluster.deliver();
    assert_eq!(answer(cluster.reply(first)), Some(Answer::Integer(5)));
    assert_eq!(answer(cluster.reply(second)), Some(Answer::Integer(7)));
    assert_eq!(
        answer(cluster.reply(retry_in_flight)),
        Some(Answer::Integer(5))
    );
    // Once applied, a retry is answered from the session: not incremented again.
    let retry_applied = write_as(&mut cluster, 3, increment("n", 5), 21, 1);
    assert_eq!(
        answer(cluster.reply(retry_applied)),
        Some(Answer::Integer(5))
    );
    assert_eq!(cluster.node(3).last_index(), last);
    cluster.run_until(cluster.now + 2 * HEARTBEAT_MS);
    for id in 1..=3 {
        assert_eq!(
            cluster.storage(id).get(b"n").expect("get"),
            Some(b"7".to_vec()),
            "node {id} applied the outcomes, not the increments"
        );
    }
    // The logged operations are outcomes: puts of the new value.
    let logged = cluster
        .storage(1)
        .entry(last)
        .expect("entry")
        .expect("present");
    assert!(
        matches!(&logged.operation, Operation::Batch { changes, .. }
            if changes == &vec![Change::Put { key: b"n".to_vec(), value: b"7".to_vec() }]),
        "{logged:?}"
    );
}

#[test]
fn a_failed_condition_or_a_refused_increment_keeps_its_answer_or_appends_nothing() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    put_as(&mut cluster, 3, "k", b"text", 30, 1);
    cluster.deliver();
    let if_absent = Write::Set {
        key: b"k".to_vec(),
        value: b"new".to_vec(),
        condition: Condition::IfAbsent,
        expiry: Expiry::Clear,
        get: false,
    };
    let refused = write_as(&mut cluster, 3, if_absent.clone(), 31, 1);
    cluster.deliver();
    assert_eq!(answer(cluster.reply(refused)), Some(Answer::Applied(false)));
    // The key goes away; a retry of the refused write still gets its first answer.
    write_as(&mut cluster, 3, Write::Delete { key: b"k".to_vec() }, 30, 2);
    cluster.deliver();
    let retry = write_as(&mut cluster, 3, if_absent, 31, 1);
    cluster.deliver();
    assert_eq!(answer(cluster.reply(retry)), Some(Answer::Applied(false)));
    assert_eq!(cluster.storage(3).get(b"k").expect("get"), None);
    // An increment of a value that is not an integer is refused and logs nothing.
    put_as(&mut cluster, 3, "word", b"abc", 30, 3);
    cluster.deliver();
    let last = cluster.node(3).last_index();
    let not_integer = write_as(&mut cluster, 3, increment("word", 1), 32, 1);
    assert!(
        matches!(cluster.reply(not_integer), Some(Response::Error(Error::InvalidRequest(m))) if m == replikv::core::NOT_AN_INTEGER),
        "{:?}",
        cluster.reply(not_integer)
    );
    put_as(
        &mut cluster,
        3,
        "max",
        i64::MAX.to_string().as_bytes(),
        30,
        4,
    );
    cluster.deliver();
    let last_after_put = cluster.node(3).last_index();
    assert_eq!(last_after_put, last + 1);
    let overflow = write_as(&mut cluster, 3, increment("max", 1), 32, 2);
    assert!(
        matches!(cluster.reply(overflow), Some(Response::Error(Error::InvalidRequest(m))) if m == replikv::core::OVERFLOW),
        "{:?}",
        cluster.reply(overflow)
    );
    assert_eq!(cluster.node(3).last_index(), last_after_put);
}

#[test]
fn an_expired_key_is_hidden_from_every_read_then_deleted_by_the_primary_on_every_node() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    let start = 1_700_000_000_000;
    set_wall_clock(&mut cluster, start);
    let with_ttl = Write::Set {
        key: b"session".to_vec(),
        value: b"token".to_vec(),
        condition: Condition::Always,
        expiry: Expiry::At(start + 5_000),
        get: false,
    };
    write_as(&mut cluster, 3, with_ttl, 40, 1);
    put_as(&mut cluster, 3, "plain", b"stays", 40, 2);
    cluster.run_until(cluster.now + 2 * HEARTBEAT_MS);
    let stale_read = |cluster: &mut Cluster, id| {
        let token = cluster.get(id, "session", ReadConsistency::Stale);
        match cluster.reply(token) {
            Some(Response::Value { value, .. }) => value.clone(),
            other => panic!("a stale read: {other:?}"),
        }
    };
    assert_eq!(stale_read(&mut cluster, 1), Some(b"token".to_vec()));
    let expiry = cluster.request(
        1,
        Request::GetExpiry {
            key: b"session".to_vec(),
            consistency: ReadConsistency::Stale,
        },
    );
    assert!(
        matches!(cluster.reply(expiry), Some(Response::Expiry { exists: true, deadline: Some(d), .. }) if *d == start + 5_000),
        "{:?}",
        cluster.reply(expiry)
    );
    // Past the deadline on node 1's clock only: node 1 hides the key before anyone deletes it.
    cluster
        .nodes
        .get_mut(&1)
        .expect("node 1")
        .set_wall_clock(start + 5_000);
    assert_eq!(stale_read(&mut cluster, 1), None);
    assert!(cluster.storage(1).get(b"session").expect("get").is_some());
    assert_eq!(stale_read(&mut cluster, 2), Some(b"token".to_vec()));
    // Past it on every clock: the primary's sweep deletes the key and its records everywhere.
    set_wall_clock(&mut cluster, start + 5_000);
    cluster.run_until(cluster.now + 3 * HEARTBEAT_MS);
    for id in 1..=3 {
        let storage = cluster.storage(id);
        assert_eq!(storage.get(b"session").expect("get"), None, "node {id}");
        assert_eq!(
            storage
                .get(&replikv::storage::expiry::deadline_key(b"session"))
                .expect("get"),
            None
        );
        assert!(storage
            .scan(&replikv::storage::expiry::due_prefix(), 10)
            .expect("scan")
            .is_empty());
        assert_eq!(storage.get(b"plain").expect("get"), Some(b"stays".to_vec()));
    }
}

#[test]
fn a_plain_put_clears_a_deadline_and_keepttl_keeps_it() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    let start = 1_700_000_000_000;
    set_wall_clock(&mut cluster, start);
    let set = |value: &str, expiry| Write::Set {
        key: b"k".to_vec(),
        value: value.into(),
        condition: Condition::Always,
        expiry,
        get: true,
    };
    let first = write_as(&mut cluster, 3, set("1", Expiry::At(start + 1_000)), 50, 1);
    let kept = write_as(&mut cluster, 3, set("2", Expiry::Keep), 50, 2);
    cluster.deliver();
    assert_eq!(answer(cluster.reply(first)), Some(Answer::Previous(None)));
    assert_eq!(
        answer(cluster.reply(kept)),
        Some(Answer::Previous(Some(b"1".to_vec())))
    );
    let deadline_key = replikv::storage::expiry::deadline_key(b"k");
    assert!(cluster
        .storage(3)
        .get(&deadline_key)
        .expect("get")
        .is_some());
    put_as(&mut cluster, 3, "k", b"3", 50, 3);
    cluster.deliver();
    assert_eq!(cluster.storage(3).get(&deadline_key).expect("get"), None);
    set_wall_clock(&mut cluster, start + 2_000);
    let token = cluster.get(3, "k", ReadConsistency::Local);
    assert!(
        matches!(cluster.reply(token), Some(Response::Value { value: Some(v), .. }) if v == b"3"),
        "{:?}",
        cluster.reply(token)
    );
}

// --- resumable snapshot transfers ---

/// Keys node 1 misses in the resumable-transfer scenarios: with 64-byte values and 1 KiB chunks,
/// a transfer takes about twenty chunks.
const BEHIND_KEYS: usize = 200;

/// Three nodes with a small log and small chunks, holding [`BEHIND_KEYS`] keys (each from its
/// own client) that node 1, isolated meanwhile, missed and can only get from a snapshot: nodes 2
/// and 3 compacted their logs past them and restarted (so no cache holds them either), and one
/// of them leads, which this returns. Node 1 is still isolated. The log keeps a few dozen
/// entries: enough for a new primary to resume a transfer begun a few writes earlier.
fn cluster_with_node_1_behind() -> (Cluster, NodeId) {
    let storages = (1..=3)
        .map(|id| (id, Arc::new(MemoryStorage::new())))
        .collect();
    let small = Options {
        log_retention_bytes: 4_000,
        max_append_bytes: 1024,
        ..options()
    };
    let mut cluster = Cluster::with_options(voters(3), storages, small);
    cluster.elect(3);
    cluster.isolated.insert(1);
    for i in 0..BEHIND_KEYS {
        let key = format!("key-{i:03}");
        put_as(&mut cluster, 3, &key, &[b'v'; 64], 100 + i as u64, 1);
        cluster.deliver();
    }
    let until = cluster.now + 2 * HEARTBEAT_MS;
    cluster.run_until(until);
    for id in [2, 3] {
        let log_start = cluster.storage(id).meta().expect("meta").log_start;
        assert!(
            log_start > BEHIND_KEYS as u64 / 2,
            "node {id} compacted its log (it starts at {log_start})"
        );
        let storage = cluster.storage(id).clone();
        cluster.start(id, voters(3), storage);
    }
    let until = cluster.now + 5 * FAILURE_TIMEOUT_MS;
    cluster.run_until(until);
    let primary = [2, 3]
        .into_iter()
        .find(|&id| cluster.node(id).role() == Role::Primary)
        .expect("nodes 2 and 3 elected a primary");
    (cluster, primary)
}

/// Snapshot acknowledgements node `from` sent node `to`: one per chunk staged when nothing is lost.
fn snapshot_acks(cluster: &Cluster, from: NodeId, to: NodeId) -> usize {
    cluster
        .sent_between(from, to)
        .into_iter()
        .filter(|body| matches!(body, MessageBody::SnapshotAck { .. }))
        .count()
}

/// Pairs sent in the snapshot chunks from `from` to `to` whose sequence is below `below`.
fn snapshot_pairs(cluster: &Cluster, from: NodeId, to: NodeId, below: u64) -> usize {
    cluster
        .sent_between(from, to)
        .into_iter()
        .map(|body| match body {
            MessageBody::SnapshotChunk {
                sequence, pairs, ..
            } if *sequence < below => pairs.len(),
            _ => 0,
        })
        .sum()
}

/// Snapshot chunks numbered 0 from `from` to `to`: one per transfer started.
fn transfers_started(cluster: &Cluster, from: NodeId, to: NodeId) -> usize {
    cluster
        .sent_between(from, to)
        .into_iter()
        .filter(|body| matches!(body, MessageBody::SnapshotChunk { sequence: 0, .. }))
        .count()
}

/// Node `id` holds exactly node `reference`'s state and sessions, at the same applied index.
fn assert_same_state(cluster: &Cluster, id: NodeId, reference: NodeId) {
    assert_eq!(
        cluster.node(id).applied_index(),
        cluster.node(reference).applied_index(),
        "node {id} applied as far as node {reference}"
    );
    let (storage, expected) = (cluster.storage(id), cluster.storage(reference));
    assert_eq!(
        whole_state(storage),
        whole_state(expected),
        "node {id} holds node {reference}'s state, system keys included"
    );
    assert_eq!(
        storage.sessions().expect("sessions"),
        expected.sessions().expect("sessions"),
        "node {id} holds node {reference}'s sessions"
    );
}

/// Node 1 stages part of a snapshot from `primary` (at least `chunks` chunks), then the
/// transfer is cut off: every message in flight is lost and node 1 is isolated. Returns the
/// pairs node 1 staged.
fn stage_part_of_a_snapshot(cluster: &mut Cluster, primary: NodeId, chunks: usize) -> usize {
    cluster.isolated.clear();
    let give_up = cluster.now + 10 * FAILURE_TIMEOUT_MS;
    cluster.run_until_stop(give_up, |cluster| {
        snapshot_acks(cluster, 1, primary) >= chunks
    });
    cluster.isolated.insert(1);
    let staged_chunks = snapshot_acks(cluster, 1, primary) as u64;
    snapshot_pairs(cluster, primary, 1, staged_chunks)
}

/// `primary` overwrites one key node 1 staged and deletes another, committed with the third
/// node.
fn change_staged_keys(cluster: &mut Cluster, primary: NodeId) {
    put_as(cluster, primary, "key-000", b"changed", 900, 1);
    cluster.request(
        primary,
        Request::Write {
            request_id: RequestId {
                client_id: 901,
                sequence: 1,
            },
            write: Write::Delete {
                key: b"key-001".to_vec(),
            },
            write_concern: WriteConcern::Majority,
            timeout_ms: 1_000,
        },
    );
    cluster.deliver();
}

#[test]
fn a_transfer_cut_short_by_an_election_resumes_on_the_new_primary_from_the_staged_position() {
    let (mut cluster, first) = cluster_with_node_1_behind();
    let staged_pairs = stage_part_of_a_snapshot(&mut cluster, first, 8);
    assert!(
        staged_pairs >= BEHIND_KEYS / 4,
        "node 1 staged a good part of the state first ({staged_pairs} pairs)"
    );
    change_staged_keys(&mut cluster, first);
    // The first primary goes away; node 1 helps elect the other, which sends it the rest.
    let second = 5 - first;
    cluster.isolated = BTreeSet::from([first]);
    cluster.in_flight.clear();
    let until = cluster.now + 10 * FAILURE_TIMEOUT_MS;
    cluster.run_until(until);
    assert_eq!(cluster.node(second).role(), Role::Primary);
    assert_eq!(cluster.node(1).primary(), Some(second));

    let resent = snapshot_pairs(&cluster, second, 1, u64::MAX);
    assert!(
        resent <= BEHIND_KEYS - staged_pairs + 10,
        "node {second} sent {resent} pairs, not the {} node 1 did not stage (plus the keys \
         changed since): it restarted the transfer",
        BEHIND_KEYS - staged_pairs
    );
    assert_eq!(
        cluster.node(second).snapshot_counters().resumed,
        1,
        "{:?}",
        cluster.node(second).snapshot_counters()
    );
    assert_same_state(&cluster, 1, second);
    let storage = cluster.storage(1);
    assert_eq!(
        storage.get(b"key-000").expect("get").as_deref(),
        Some(&b"changed"[..]),
        "a key changed after node 1 staged it is sent again"
    );
    assert_eq!(
        storage.get(b"key-001").expect("get"),
        None,
        "a key deleted after node 1 staged it is deleted"
    );
}

#[test]
fn a_new_primary_whose_log_no_longer_reaches_the_begin_index_starts_the_transfer_afresh() {
    let (mut cluster, first) = cluster_with_node_1_behind();
    stage_part_of_a_snapshot(&mut cluster, first, 8);
    change_staged_keys(&mut cluster, first);
    // More writes, so the other node compacts its log past the index the transfer began at.
    let second = 5 - first;
    let compacted_before = cluster.storage(second).meta().expect("meta").log_start;
    for i in 0..BEHIND_KEYS {
        let key = format!("later-{i:03}");
        put_as(&mut cluster, first, &key, b"later", 2_000 + i as u64, 1);
        cluster.deliver();
    }
    let until = cluster.now + 3 * HEARTBEAT_MS;
    cluster.run_until(until);
    let log_start = cluster.storage(second).meta().expect("meta").log_start;
    assert!(
        log_start > compacted_before + BEHIND_KEYS as u64 / 2,
        "node {second} compacted past the transfer's begin index ({compacted_before} to \
         {log_start})"
    );
    cluster.isolated = BTreeSet::from([first]);
    cluster.in_flight.clear();
    let until = cluster.now + 10 * FAILURE_TIMEOUT_MS;
    cluster.run_until(until);
    assert_eq!(cluster.node(second).role(), Role::Primary);
    let counters = cluster.node(second).snapshot_counters();
    assert_eq!(
        (counters.started_from_scratch, counters.resumed),
        (1, 0),
        "{counters:?}"
    );
    assert!(snapshot_pairs(&cluster, second, 1, u64::MAX) >= 2 * BEHIND_KEYS - 1);
    assert_same_state(&cluster, 1, second);
}

#[test]
fn a_lost_chunk_is_resent_without_restarting_the_transfer() {
    let (mut cluster, primary) = cluster_with_node_1_behind();
    cluster.isolated.clear();
    let mut lost = false;
    let until = cluster.now + 10 * FAILURE_TIMEOUT_MS;
    cluster.run_losing(until, |message| {
        let lose = !lost
            && message.to == 1
            && matches!(message.body, MessageBody::SnapshotChunk { sequence: 3, .. });
        lost |= lose;
        lose
    });
    assert!(lost, "chunk 3 was sent and lost");
    assert_eq!(
        transfers_started(&cluster, primary, 1),
        1,
        "one transfer, never restarted"
    );
    let sent = snapshot_pairs(&cluster, primary, 1, u64::MAX);
    assert!(
        sent < BEHIND_KEYS * 3 / 2,
        "only the window after the lost chunk was resent ({sent} pairs sent)"
    );
    assert_same_state(&cluster, 1, primary);
}

#[test]
fn a_lost_acknowledgement_of_the_final_chunk_does_not_restart_the_transfer() {
    let (mut cluster, primary) = cluster_with_node_1_behind();
    cluster.isolated.clear();
    let (mut finished, mut lost_chunk_ack, mut lost_append_ack) = (false, false, false);
    let until = cluster.now + 10 * FAILURE_TIMEOUT_MS;
    cluster.run_losing(until, |message| {
        if message.to == 1 {
            finished |= matches!(
                message.body,
                MessageBody::SnapshotChunk {
                    finish: Some(_),
                    ..
                }
            );
            return false;
        }
        if !finished || message.from != 1 {
            return false;
        }
        // Both acknowledgements of the install are lost: the chunk's and the append one.
        match message.body {
            MessageBody::SnapshotAck { .. } if !lost_chunk_ack => {
                lost_chunk_ack = true;
                true
            }
            MessageBody::AppendAck { .. } if !lost_append_ack => {
                lost_append_ack = true;
                true
            }
            _ => false,
        }
    });
    assert!(lost_chunk_ack && lost_append_ack, "both were lost");
    assert_eq!(
        transfers_started(&cluster, primary, 1),
        1,
        "one transfer: the final chunk was resent, not the snapshot"
    );
    assert_same_state(&cluster, 1, primary);
    // The primary appends to node 1 again.
    put_as(&mut cluster, primary, "after", b"1", 5_000, 1);
    let until = cluster.now + 3 * HEARTBEAT_MS;
    cluster.run_until(until);
    assert_same_state(&cluster, 1, primary);
}

#[test]
fn a_backup_restarted_in_the_middle_of_a_transfer_resumes_it() {
    let (mut cluster, primary) = cluster_with_node_1_behind();
    let staged_pairs = stage_part_of_a_snapshot(&mut cluster, primary, 8);
    let sent_before = snapshot_pairs(&cluster, primary, 1, u64::MAX);
    let storage = cluster.storage(1).clone();
    cluster.start(1, voters(3), storage);
    cluster.isolated.clear();
    let until = cluster.now + 10 * FAILURE_TIMEOUT_MS;
    cluster.run_until(until);

    // What node 1 did not stage, plus at most the window of chunks (4 of 1 KiB, under 50 pairs)
    // resent before node 1 said it follows no transfer; a restart sends all.
    let resent = snapshot_pairs(&cluster, primary, 1, u64::MAX) - sent_before;
    assert!(
        resent <= BEHIND_KEYS - staged_pairs + 50 && resent < BEHIND_KEYS,
        "{resent} pairs sent after the restart, not the {} node 1 did not stage",
        BEHIND_KEYS - staged_pairs
    );
    assert_eq!(
        cluster.node(primary).snapshot_counters().resumed,
        1,
        "{:?}",
        cluster.node(primary).snapshot_counters()
    );
    assert_same_state(&cluster, 1, primary);
}

/// A backup applies what it learns is committed on its tick, not in the pass that learns it
/// (its watchers follow the commit index, so nothing waits for its apply but stale reads).
#[test]
fn a_backup_applies_what_it_learns_is_committed_on_its_tick() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    for key in ["a", "b", "c"] {
        cluster.write(3, key, WriteConcern::Majority);
        cluster.deliver();
    }
    let backup = cluster.node(1);
    assert!(
        backup.commit_index() > backup.applied_index(),
        "a backup waits for its tick: commit {}, applied {}",
        backup.commit_index(),
        backup.applied_index()
    );
    let committed = backup.commit_index();
    cluster.call(1, |node, now| node.tick(now)).expect("tick");
    assert_eq!(cluster.node(1).applied_index(), committed);
}

/// A node that hears no primary for `CUT_OFF_AFTER_FAILURE_TIMEOUTS` failure timeouts is cut off
/// (its watches end, `/readyz` says not ready); before that, and once it hears the primary again,
/// it is not; a primary never is.
#[test]
fn a_backup_is_cut_off_only_after_three_failure_timeouts_without_a_primary() {
    let mut cluster = Cluster::new(3);
    cluster.elect(3);
    cluster.run_until(cluster.now + 10 * FAILURE_TIMEOUT_MS);
    let cut_off = |cluster: &Cluster| -> Vec<NodeId> {
        (1..=3)
            .filter(|id| cluster.node(*id).cut_off_from_primary())
            .collect()
    };
    assert_eq!(cut_off(&cluster), Vec::<NodeId>::new());

    // Node 1 is partitioned from both others: it hears no primary from here on.
    let partitioned = |message: &Message| message.from == 1 || message.to == 1;
    let start = cluster.now;
    let silence = CUT_OFF_AFTER_FAILURE_TIMEOUTS * FAILURE_TIMEOUT_MS;
    cluster.run_losing(start + silence - HEARTBEAT_MS - 10, partitioned);
    assert_eq!(cut_off(&cluster), Vec::<NodeId>::new(), "not yet");
    cluster.run_losing(start + silence + 10, partitioned);
    assert_eq!(cut_off(&cluster), vec![1]);
    assert_eq!(cluster.node(3).role(), Role::Primary);

    cluster.run_until(cluster.now + 2 * FAILURE_TIMEOUT_MS);
    assert_eq!(cluster.node(1).primary(), Some(3));
    assert_eq!(cut_off(&cluster), Vec::<NodeId>::new(), "healed");
}
