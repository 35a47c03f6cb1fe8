//! [`Node`]: one replica's protocol state, driven by messages, ticks, client requests and flush
//! completions.
//!
//! Roles: every node starts as a backup. A voter that hears no primary for `failure_timeout` (plus
//! jitter) becomes a candidate in `epoch + 1`; with votes from a majority it becomes primary,
//! announces `Coordinator` and appends a no-op. A learner (non-voter) only follows.
//!
//! Invariants enforced here (the simulator checks them across nodes):
//! - Epoch and vote are flushed before a vote is granted or an election is started, so a node
//!   never votes twice in one epoch, even across a crash.
//! - A vote is granted only to a candidate whose rank `(last epoch, last index, id)` is higher than
//!   the voter's own, so the winner's log holds every committed entry (Raft's election restriction,
//!   with the bully's id tie-break).
//! - The commit index never decreases, and a committed entry is never truncated.
//! - Entries are applied in log order, only once committed. A rolled-back entry was therefore
//!   never applied, and state at a given applied index is the same on every node.
//! - Nothing that promises durability (an `AppendAck`, a write reply) is produced before the flush
//!   that covers it has been reported through [`Node::flushed`].
//! - A linearizable read is served only while the primary holds a lease: a majority acknowledged a
//!   heartbeat sent less than `failure_timeout` ago, so no other primary can have been elected.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::wire::client::{
    ClusterStatus, MemberHealth, MemberStatus, ReadConsistency, Request, Response, ResponseMeta,
    Role, Write, WriteConcern, WriteResult,
};
use crate::wire::message::{
    Entry, Epoch, LogIndex, Member, Membership, Message, MessageBody, NodeId, Operation, Rank,
    RequestId, SnapshotFinish,
};

use super::progress::{self, Progress};

/// Milliseconds on the driver's monotonic clock.
pub type Timestamp = u64;

/// Identifies a pending client request in the driver; echoed back in [`Output::Reply`].
pub type ClientToken = u64;

/// Timing and size settings of the protocol. Defaults live in [`crate::config`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// How often the primary sends heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Silence after which a backup elects, and a primary without a majority steps down.
    pub failure_timeout_ms: u64,
    /// Up to this much random extra per election timer, so that nodes rarely start together.
    pub failure_jitter_ms: u64,
    /// A voter that has not caught up within this long leaves the in-sync set (`w=all`).
    pub replica_lag_timeout_ms: u64,
    /// Largest encoded size of one append message's entries.
    pub max_append_bytes: usize,
    /// Most entries in flight to one member before the primary waits for acks (flow control).
    pub max_inflight_entries: u64,
    /// Log bytes kept before the applied prefix is compacted into the state.
    pub log_retention_bytes: u64,
}

/// Something the node wants its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send a message to a peer.
    Send(Message),
    /// Answer the client request identified by `token`.
    Reply {
        token: ClientToken,
        response: Response,
    },
    /// The node's view of who leads changed; the driver tells connected clients.
    Topology {
        epoch: Epoch,
        primary: Option<NodeId>,
        membership: Membership,
    },
}

/// A flush the node asks for: once the driver has flushed storage, it passes the ticket back to
/// [`Node::flushed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushTicket {
    /// The last log index written before the flush started.
    pub index: LogIndex,
    /// Changes whenever the log is truncated, so a flush that raced a truncation is ignored.
    pub generation: u64,
}

/// Entries the primary keeps in memory so live replication never reads them back from storage.
const MAX_CACHED_ENTRIES: usize = 100_000;

/// ... and at most this many bytes of them (approximate encoded size).
const MAX_CACHED_BYTES: usize = 64 * 1024 * 1024;

/// A membership change asked for by a client.
#[derive(Clone, Debug)]
enum MembershipChange {
    Add(Member),
    Remove(NodeId),
}

/// A client write waiting for its write concern.
#[derive(Clone, Debug)]
struct PendingWrite {
    token: ClientToken,
    concern: WriteConcern,
    deadline: Timestamp,
    result: WriteResult,
}

/// A client read waiting for the primary to confirm its leadership.
#[derive(Clone, Debug)]
struct PendingRead {
    token: ClientToken,
    request: Request,
    deadline: Timestamp,
}

/// State that exists only while this node is primary.
#[derive(Debug)]
struct PrimaryState {
    progress: BTreeMap<NodeId, Progress>,
    /// The current heartbeat round and when each recent round was sent.
    round: u64,
    rounds: BTreeMap<u64, (Timestamp, BTreeSet<NodeId>)>,
    next_heartbeat: Timestamp,
    /// Linearizable reads may be served before this time.
    lease_until: Timestamp,
    /// When this node won its election: members not yet heard from count as heard from then.
    elected_at: Timestamp,
    /// The no-op of this epoch: nothing is committed for reads until it is.
    noop_index: LogIndex,
    /// Writes waiting for their write concern, by log index.
    writes: BTreeMap<LogIndex, Vec<PendingWrite>>,
    /// Log index of each write request in the uncommitted suffix, so a retry joins it.
    requests: HashMap<RequestId, LogIndex>,
    reads: Vec<PendingRead>,
    /// Snapshots being streamed to members whose next entry was compacted away.
    transfers: BTreeMap<NodeId, SnapshotTransfer>,
    next_transfer: u64,
}

/// A snapshot of the primary's state on its way to one member.
///
/// The state is read in chunks while the primary keeps applying writes, so the chunks alone are
/// fuzzy. Every key applied after the transfer began is recorded in `dirty`, and the last chunk
/// carries the current value of each (or its deletion), with the sessions, at the applied index of
/// that moment. So the member ends with exactly the state at that index.
#[derive(Debug)]
struct SnapshotTransfer {
    id: u64,
    /// The last key sent; the next chunk starts after it.
    cursor: Option<Vec<u8>>,
    scan_done: bool,
    /// The final chunk was sent; the transfer ends when the member acknowledges the index.
    finished: bool,
    dirty: BTreeSet<Vec<u8>>,
    next_sequence: u64,
    acked_sequence: Option<u64>,
    last_activity: Timestamp,
}

/// Snapshot chunks in flight to one member before the primary waits for acks.
const SNAPSHOT_WINDOW: u64 = 4;

/// A snapshot this backup is receiving.
///
/// A transfer is named by `(epoch, from, transfer)`: transfer ids restart in every primary term,
/// so without the epoch a chunk of a new term's transfer could continue a stale one of an earlier
/// term, and the snapshot installed would mix two states.
#[derive(Debug)]
struct IncomingSnapshot {
    epoch: Epoch,
    from: NodeId,
    transfer: u64,
    next_sequence: u64,
}

#[derive(Debug)]
enum RoleState {
    Backup,
    /// Asking for pre-votes before starting an election; the epoch has not moved yet.
    PreCandidate {
        votes: BTreeSet<NodeId>,
    },
    Candidate {
        votes: BTreeSet<NodeId>,
    },
    Primary(Box<PrimaryState>),
}

/// A replikv node's protocol state.
pub struct Node {
    id: NodeId,
    options: Options,
    storage: Arc<dyn Storage>,
    rng: StdRng,
    /// The membership in force: the latest membership entry in the log, or the applied one.
    membership: Membership,
    /// Index of the log entry that set `membership` (0 when it came from storage or config).
    membership_index: LogIndex,
    /// The membership of the latest applied membership entry (persisted with the state).
    applied_membership: Membership,
    epoch: Epoch,
    vote: Option<NodeId>,
    role: RoleState,
    /// The primary of the current epoch, once known.
    primary: Option<NodeId>,
    last_index: LogIndex,
    last_epoch: Epoch,
    durable_index: LogIndex,
    commit_index: LogIndex,
    persisted_commit_index: LogIndex,
    applied_index: LogIndex,
    /// Bumped on every truncation; see [`FlushTicket`].
    generation: u64,
    /// Backup: this node's log matches the current primary's up to here.
    verified_index: LogIndex,
    /// Backup: the last `match_index` sent in an `AppendAck`.
    acked_index: LogIndex,
    /// When this node last heard from a live primary (or started: a restarted node must not vote
    /// at once, or it could undercut the lease of a primary it simply forgot about).
    last_heard_primary: Timestamp,
    election_deadline: Timestamp,
    /// Recent entries `[cache first index ..= last_index]`, for replication and speculation.
    cache: VecDeque<Entry>,
    /// Approximate bytes of the entries in `cache`.
    cache_bytes: usize,
    /// The first index in the log; entries before it were compacted into the state.
    log_start: LogIndex,
    /// No compaction step before this time.
    next_compaction: Timestamp,
    incoming_snapshot: Option<IncomingSnapshot>,
    rolled_back_entries: u64,
    now: Timestamp,
    outputs: Vec<Output>,
}

impl Node {
    /// Opens the node on `storage`, recovering its epoch, vote, log and applied state.
    /// `membership` is used when storage holds none.
    pub fn new(
        id: NodeId,
        membership: Membership,
        storage: Arc<dyn Storage>,
        options: Options,
        seed: u64,
        now: Timestamp,
    ) -> Result<Node> {
        let meta = storage.meta()?;
        let (last_epoch, last_index) = storage.last()?;
        // The applied membership wins over the configured one. A node outside it (a joiner part
        // way through the history, or a removed node) neither votes nor runs; it follows
        // whichever primary contacts it and learns the membership from it.
        let membership = meta.membership.clone().unwrap_or(membership);
        let rolled_back_entries = storage.rolled_back()?.len() as u64;
        let mut node = Node {
            id,
            options,
            storage,
            rng: StdRng::seed_from_u64(seed),
            membership: membership.clone(),
            membership_index: 0,
            applied_membership: membership,
            epoch: meta.epoch,
            vote: meta.vote,
            role: RoleState::Backup,
            primary: None,
            last_index,
            last_epoch,
            durable_index: last_index,
            commit_index: meta.commit_index.max(meta.applied_index).min(last_index),
            persisted_commit_index: meta.commit_index,
            applied_index: meta.applied_index,
            generation: 0,
            verified_index: 0,
            acked_index: 0,
            last_heard_primary: now,
            election_deadline: now,
            cache: VecDeque::new(),
            cache_bytes: 0,
            log_start: meta.log_start,
            next_compaction: now,
            incoming_snapshot: None,
            rolled_back_entries,
            now,
            outputs: Vec::new(),
        };
        node.reset_election_timer();
        node.recompute_membership()?;
        node.apply_committed()?;
        if node.membership.get(id).is_none() {
            warn!(
                node = id,
                "this node is not in the membership it knows; waiting to hear from a primary"
            );
        }
        info!(
            node = id,
            epoch = node.epoch,
            last_index,
            applied = node.applied_index,
            "node started as backup"
        );
        Ok(node)
    }

    // --- accessors ---

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn role(&self) -> Role {
        match self.role {
            RoleState::Primary(_) => Role::Primary,
            RoleState::Candidate { .. } | RoleState::PreCandidate { .. } => Role::Candidate,
            RoleState::Backup if !self.membership.is_voter(self.id) => Role::Learner,
            RoleState::Backup => Role::Backup,
        }
    }

    /// The primary this node follows (itself if primary), if known.
    pub fn primary(&self) -> Option<NodeId> {
        self.primary
    }

    pub fn last_index(&self) -> LogIndex {
        self.last_index
    }

    pub fn durable_index(&self) -> LogIndex {
        self.durable_index
    }

    pub fn commit_index(&self) -> LogIndex {
        self.commit_index
    }

    pub fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The storage the node runs on (the driver flushes it).
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    fn rank(&self) -> Rank {
        Rank {
            last_epoch: self.last_epoch,
            last_index: self.last_index,
            node_id: self.id,
        }
    }

    // --- entry points ---

    /// Takes the outputs produced so far. Live replication is batched here: every entry appended
    /// since the last call goes out in one append per member.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        self.replicate_from_cache();
        std::mem::take(&mut self.outputs)
    }

    /// A flush the node needs, if its log has entries that are not yet durable.
    pub fn flush_needed(&self) -> Option<FlushTicket> {
        (self.durable_index < self.last_index).then_some(FlushTicket {
            index: self.last_index,
            generation: self.generation,
        })
    }

    /// The driver finished the flush for `ticket`: everything written before it started is durable.
    pub fn flushed(&mut self, now: Timestamp, ticket: FlushTicket) -> Result<()> {
        self.now = now;
        if ticket.generation != self.generation {
            return Ok(()); // the log was truncated meanwhile; a later flush covers the new entries
        }
        let durable = ticket.index.min(self.last_index);
        if durable <= self.durable_index {
            return Ok(());
        }
        self.durable_index = durable;
        if self.is_primary() {
            self.advance_commit()?;
            self.answer_writes();
        } else {
            self.ack_append(false);
        }
        Ok(())
    }

    /// Advances timers: heartbeats, elections, step-down, request deadlines, retransmission.
    pub fn tick(&mut self, now: Timestamp) -> Result<()> {
        self.now = now;
        self.compact_log()?;
        if self.commit_index > self.persisted_commit_index {
            self.storage.set_commit_index(self.commit_index)?;
            self.persisted_commit_index = self.commit_index;
        }
        match &self.role {
            RoleState::Primary(_) => self.tick_primary()?,
            RoleState::Backup | RoleState::Candidate { .. } | RoleState::PreCandidate { .. } => {
                if now >= self.election_deadline && self.membership.is_voter(self.id) {
                    self.start_pre_election()?;
                }
            }
        }
        Ok(())
    }

    /// Handles a message from a peer.
    pub fn step(&mut self, now: Timestamp, message: Message) -> Result<()> {
        self.now = now;
        // Messages from nodes outside this node's membership are handled too (the shell admits
        // only authenticated cluster nodes): a node whose membership is behind (a joiner, or one
        // that missed a change) must follow a primary it does not know yet and answer elections
        // of the membership in force, as in Raft. Epochs fence these messages like any other, and
        // votes, acks and progress count only for members of the receiver's membership.
        if message.to != self.id {
            debug!(
                node = self.id,
                ?message,
                "dropping a message for another node"
            );
            return Ok(());
        }
        // Pre-votes change no state and are answered whatever the epochs say.
        match message.body {
            MessageBody::PreElection { rank } => {
                // As in Raft, a node answers whatever its own membership says: the candidate counts
                // only the voters of its membership, and a node whose membership is behind (or
                // that a pending change removes) must still be able to help elect a primary.
                let granted =
                    message.epoch > self.epoch && rank > self.rank() && !self.hears_live_primary();
                self.send(message.from, MessageBody::PreVote { granted });
                if !granted
                    && self.rank() > rank
                    && !self.hears_live_primary()
                    && !self.is_primary()
                {
                    // The bully: a higher-ranked node that also hears no primary runs itself.
                    if matches!(self.role, RoleState::Backup) && self.membership.is_voter(self.id) {
                        self.start_pre_election()?;
                    }
                }
                return Ok(());
            }
            MessageBody::PreVote { granted } if message.epoch <= self.epoch => {
                if granted {
                    self.on_pre_vote(message.from)?;
                }
                return Ok(());
            }
            _ => {}
        }
        if message.epoch > self.epoch {
            if matches!(message.body, MessageBody::Election { .. }) && self.hears_live_primary() {
                // Protect the primary's lease: a candidate cut off from a live primary must not
                // disrupt it. Ignoring the higher epoch is safe; the candidate will time out.
                debug!(
                    node = self.id,
                    from = message.from,
                    "ignoring an election while a primary is live"
                );
                return Ok(());
            }
            let primary = match message.body {
                MessageBody::Heartbeat { .. }
                | MessageBody::Append { .. }
                | MessageBody::Coordinator => Some(message.from),
                _ => None,
            };
            self.become_backup(message.epoch, primary)?;
        } else if message.epoch < self.epoch {
            if !matches!(message.body, MessageBody::StaleEpoch) {
                self.send(message.from, MessageBody::StaleEpoch);
            }
            return Ok(());
        }

        match message.body {
            MessageBody::Heartbeat {
                commit_index,
                membership,
                round,
            } => {
                if self.membership.get(message.from).is_none() && membership.get(self.id).is_some()
                {
                    // Bootstrapping a joiner: take the primary's view until the log brings one.
                    self.adopt_membership(membership, 0);
                }
                self.follow(message.from)?;
                self.advance_backup_commit(commit_index)?;
                self.send(
                    message.from,
                    MessageBody::HeartbeatAck {
                        round,
                        durable_index: self.durable_index,
                        last_index: self.last_index,
                        verified_index: self.verified_index,
                    },
                );
            }
            MessageBody::HeartbeatAck {
                round,
                durable_index,
                last_index,
                verified_index,
            } => {
                self.on_heartbeat_ack(message.from, round, durable_index, last_index)?;
                self.probe_if_unverified(message.from, verified_index)?;
            }
            MessageBody::Append {
                base_index,
                base_epoch,
                entries,
                commit_index,
                catch_up: _,
            } => {
                self.follow(message.from)?;
                self.on_append(message.from, base_index, base_epoch, entries, commit_index)?;
            }
            MessageBody::AppendAck { match_index } => {
                self.on_append_ack(message.from, match_index)?
            }
            MessageBody::AppendRejected { hint } => self.on_append_rejected(message.from, hint)?,
            MessageBody::Election { rank } => self.on_election(message.from, rank)?,
            MessageBody::Alive { rank } => {
                if matches!(
                    self.role,
                    RoleState::Candidate { .. } | RoleState::PreCandidate { .. }
                ) && rank > self.rank()
                {
                    info!(
                        node = self.id,
                        epoch = self.epoch,
                        bully = message.from,
                        "a higher-ranked node is alive; standing down"
                    );
                    self.role = RoleState::Backup;
                    self.reset_election_timer();
                }
            }
            MessageBody::Vote { granted } => {
                if granted {
                    self.on_vote(message.from)?;
                }
            }
            MessageBody::Coordinator => self.follow(message.from)?,
            MessageBody::SnapshotChunk {
                transfer,
                sequence,
                pairs,
                finish,
            } => {
                self.follow(message.from)?;
                self.on_snapshot_chunk(message.from, transfer, sequence, pairs, finish)?;
            }
            MessageBody::SnapshotAck { transfer, sequence } => {
                self.on_snapshot_ack(message.from, transfer, sequence)?
            }
            // The epoch was adopted above; a pre-vote from a higher epoch only carried it.
            MessageBody::StaleEpoch
            | MessageBody::PreElection { .. }
            | MessageBody::PreVote { .. } => {}
        }
        Ok(())
    }

    /// Handles a client request; the answer comes as an [`Output::Reply`], now or later.
    pub fn request(&mut self, now: Timestamp, token: ClientToken, request: Request) -> Result<()> {
        self.now = now;
        match request {
            Request::Status => {
                let status = self.status(now);
                self.reply(token, Response::Status(Box::new(status)));
            }
            Request::Get { consistency, .. } | Request::Scan { consistency, .. } => {
                self.read(token, request.clone(), consistency)?
            }
            Request::Write {
                request_id,
                write,
                write_concern,
                timeout_ms,
            } => self.write(token, request_id, write, write_concern, timeout_ms)?,
            Request::AddMember { member } => {
                self.change_membership(token, MembershipChange::Add(member))?
            }
            Request::RemoveMember { id } => {
                self.change_membership(token, MembershipChange::Remove(id))?
            }
        }
        Ok(())
    }

    /// This node's view of the cluster.
    pub fn status(&self, now: Timestamp) -> ClusterStatus {
        let primary_state = match &self.role {
            RoleState::Primary(state) => Some(state),
            _ => None,
        };
        let members = self
            .membership
            .members
            .iter()
            .map(|member| {
                if member.id == self.id {
                    return MemberStatus {
                        member: member.clone(),
                        role: Some(self.role()),
                        last_index: Some(self.last_index),
                        durable_index: Some(self.durable_index),
                        lag: Some(0),
                        health: MemberHealth::Local,
                        last_heartbeat_ms: None,
                    };
                }
                let Some(progress) = primary_state.and_then(|state| state.progress.get(&member.id))
                else {
                    return MemberStatus {
                        member: member.clone(),
                        role: (self.primary == Some(member.id)).then_some(Role::Primary),
                        last_index: None,
                        durable_index: None,
                        lag: None,
                        health: MemberHealth::Unknown,
                        last_heartbeat_ms: None,
                    };
                };
                let age = progress.last_contact.map(|at| now.saturating_sub(at));
                let lag = self.last_index.saturating_sub(progress.match_index);
                let health = match age {
                    Some(age) if age < self.options.failure_timeout_ms => {
                        if lag == 0 {
                            MemberHealth::Healthy
                        } else if self.cache_first_index() > progress.next_index {
                            MemberHealth::CatchingUp
                        } else {
                            MemberHealth::Lagging
                        }
                    }
                    _ => MemberHealth::Unreachable,
                };
                MemberStatus {
                    member: member.clone(),
                    role: Some(if member.voter {
                        Role::Backup
                    } else {
                        Role::Learner
                    }),
                    last_index: progress.reported_last,
                    durable_index: Some(progress.match_index),
                    lag: Some(lag),
                    health,
                    last_heartbeat_ms: age,
                }
            })
            .collect();
        ClusterStatus {
            node_id: self.id,
            role: self.role(),
            epoch: self.epoch,
            primary: self.primary,
            last_index: self.last_index,
            durable_index: self.durable_index,
            commit_index: self.commit_index,
            applied_index: self.applied_index,
            rolled_back_entries: self.rolled_back_entries,
            members,
        }
    }

    // --- roles and elections ---

    fn is_primary(&self) -> bool {
        matches!(self.role, RoleState::Primary(_))
    }

    /// Whether this node has heard from a live primary within `failure_timeout` (or is one that
    /// still hears a majority).
    fn hears_live_primary(&self) -> bool {
        match &self.role {
            RoleState::Primary(_) => {
                self.majority_contact() + self.options.failure_timeout_ms > self.now
            }
            _ => self.now < self.last_heard_primary + self.options.failure_timeout_ms,
        }
    }

    fn reset_election_timer(&mut self) {
        let jitter = match self.options.failure_jitter_ms {
            0 => 0,
            max => self.rng.gen_range(0..=max),
        };
        self.election_deadline = self.now + self.options.failure_timeout_ms + jitter;
    }

    fn persist_epoch_and_vote(&mut self) -> Result<()> {
        self.storage.set_epoch_and_vote(self.epoch, self.vote)?;
        // Epoch and vote are rare; flushing them here keeps the vote durable before it is sent.
        self.storage.flush()
    }

    /// Moves to `epoch` (if higher) as a backup of `primary`.
    fn become_backup(&mut self, epoch: Epoch, primary: Option<NodeId>) -> Result<()> {
        assert!(epoch >= self.epoch, "epochs never go backwards");
        if epoch > self.epoch {
            self.epoch = epoch;
            self.vote = None;
            self.persist_epoch_and_vote()?;
            self.verified_index = 0;
            self.acked_index = 0;
        }
        let was_primary = self.is_primary();
        if was_primary || primary != self.primary {
            info!(node = self.id, epoch, ?primary, "following as backup");
        }
        self.step_down_cleanup();
        self.role = RoleState::Backup;
        self.set_primary(primary);
        Ok(())
    }

    /// Answers every request a primary was holding: the client retries elsewhere.
    fn step_down_cleanup(&mut self) {
        let RoleState::Primary(state) = std::mem::replace(&mut self.role, RoleState::Backup) else {
            return;
        };
        let error = Error::NotPrimary {
            node: self.id,
            epoch: self.epoch,
            hint: None,
        };
        for waiters in state.writes.into_values() {
            for waiter in waiters {
                self.reply(waiter.token, Response::Error(error.clone()));
            }
        }
        for read in state.reads {
            self.reply(read.token, Response::Error(error.clone()));
        }
    }

    fn set_primary(&mut self, primary: Option<NodeId>) {
        if self.primary != primary {
            self.primary = primary;
            self.outputs.push(Output::Topology {
                epoch: self.epoch,
                primary,
                membership: self.membership.clone(),
            });
        }
    }

    /// A message from the primary of the current epoch arrived.
    fn follow(&mut self, primary: NodeId) -> Result<()> {
        if let RoleState::Primary(_) = self.role {
            // Two primaries in one epoch would break invariant 1; with votes persisted before they
            // are granted it cannot happen, so stop rather than diverge (fail-stop).
            return Err(Error::Internal(format!(
                "node {} is primary of epoch {} and heard from another primary {primary}",
                self.id, self.epoch
            )));
        }
        if matches!(
            self.role,
            RoleState::Candidate { .. } | RoleState::PreCandidate { .. }
        ) {
            self.role = RoleState::Backup;
        }
        self.last_heard_primary = self.now;
        self.reset_election_timer();
        self.set_primary(Some(primary));
        Ok(())
    }

    /// Asks the voters whether they would elect this node, without changing epoch or vote.
    fn start_pre_election(&mut self) -> Result<()> {
        self.step_down_cleanup();
        self.role = RoleState::PreCandidate {
            votes: BTreeSet::from([self.id]),
        };
        self.set_primary(None);
        self.reset_election_timer();
        debug!(node = self.id, epoch = self.epoch, "asking for pre-votes");
        if self.membership.majority() <= 1 {
            return self.start_election();
        }
        let rank = self.rank();
        let proposed = self.epoch + 1;
        for voter in self.other_voters() {
            self.outputs.push(Output::Send(Message {
                from: self.id,
                to: voter,
                epoch: proposed,
                body: MessageBody::PreElection { rank },
            }));
        }
        Ok(())
    }

    fn on_pre_vote(&mut self, voter: NodeId) -> Result<()> {
        if matches!(self.role, RoleState::PreCandidate { .. }) && self.tally(voter) {
            self.start_election()?;
        }
        Ok(())
    }

    /// Counts a (pre-)vote from `voter` if it is a voter of this node's membership; returns
    /// whether the (pre-)candidate now has a majority.
    fn tally(&mut self, voter: NodeId) -> bool {
        let majority = self.membership.majority();
        let counts = self.membership.is_voter(voter);
        match &mut self.role {
            RoleState::PreCandidate { votes } | RoleState::Candidate { votes } => {
                if counts {
                    votes.insert(voter);
                }
                votes.len() >= majority
            }
            RoleState::Backup | RoleState::Primary(_) => false,
        }
    }

    fn start_election(&mut self) -> Result<()> {
        self.step_down_cleanup();
        self.epoch += 1;
        self.vote = Some(self.id);
        self.persist_epoch_and_vote()?;
        self.verified_index = 0;
        self.acked_index = 0;
        self.role = RoleState::Candidate {
            votes: BTreeSet::from([self.id]),
        };
        self.set_primary(None);
        self.reset_election_timer();
        info!(node = self.id, epoch = self.epoch, rank = ?self.rank(), "starting an election");
        if self.membership.majority() <= 1 {
            return self.become_primary();
        }
        let rank = self.rank();
        for voter in self.other_voters() {
            self.send(voter, MessageBody::Election { rank });
        }
        Ok(())
    }

    fn on_election(&mut self, candidate: NodeId, rank: Rank) -> Result<()> {
        let own = self.rank();
        if own > rank {
            // Never vote for a less fresh log (that is what keeps committed entries). A voter
            // answers as the bully: I outrank you, and I will run myself unless a primary is live.
            // A non-voter just declines: telling the candidate to stand down for a node that will
            // not run would stall the election.
            if !self.membership.is_voter(self.id) {
                self.send(candidate, MessageBody::Vote { granted: false });
                return Ok(());
            }
            self.send(candidate, MessageBody::Alive { rank: own });
            if matches!(self.role, RoleState::Backup) && !self.hears_live_primary() {
                self.start_pre_election()?;
            }
            return Ok(());
        }
        let granted = match self.vote {
            None if !self.hears_live_primary() && matches!(self.role, RoleState::Backup) => {
                self.vote = Some(candidate);
                self.persist_epoch_and_vote()?;
                self.reset_election_timer();
                true
            }
            Some(voted) => voted == candidate,
            None => false,
        };
        debug!(
            node = self.id,
            epoch = self.epoch,
            candidate,
            granted,
            "answering an election"
        );
        self.send(candidate, MessageBody::Vote { granted });
        Ok(())
    }

    fn on_vote(&mut self, voter: NodeId) -> Result<()> {
        if matches!(self.role, RoleState::Candidate { .. }) && self.tally(voter) {
            self.become_primary()?;
        }
        Ok(())
    }

    fn become_primary(&mut self) -> Result<()> {
        info!(
            node = self.id,
            epoch = self.epoch,
            last_index = self.last_index,
            "elected primary"
        );
        let now = self.now;
        let progress = self
            .membership
            .members
            .iter()
            .filter(|member| member.id != self.id)
            .map(|member| (member.id, Progress::new(self.last_index, now)))
            .collect();
        // Entries past the commit index may be retried client writes: index their request ids so a
        // retry joins the entry instead of appending a duplicate.
        self.fill_cache_from(self.applied_index + 1)?;
        let requests = self
            .cache
            .iter()
            .filter_map(|entry| entry.request_id.map(|id| (id, entry.index)))
            .collect();
        self.role = RoleState::Primary(Box::new(PrimaryState {
            progress,
            round: 0,
            rounds: BTreeMap::new(),
            next_heartbeat: now,
            lease_until: 0,
            elected_at: now,
            noop_index: self.last_index + 1,
            writes: BTreeMap::new(),
            requests,
            reads: Vec::new(),
            transfers: BTreeMap::new(),
            next_transfer: 0,
        }));
        self.set_primary(Some(self.id));
        for member in self.other_members() {
            self.send(member, MessageBody::Coordinator);
        }
        self.append(Operation::Noop, None)?;
        self.send_heartbeats();
        self.advance_commit()?;
        Ok(())
    }

    // --- the primary ---

    fn primary_state(&mut self) -> Option<&mut PrimaryState> {
        match &mut self.role {
            RoleState::Primary(state) => Some(state),
            _ => None,
        }
    }

    fn tick_primary(&mut self) -> Result<()> {
        let now = self.now;
        if self.majority_contact() + self.options.failure_timeout_ms <= now {
            warn!(
                node = self.id,
                epoch = self.epoch,
                "lost contact with a majority; stepping down"
            );
            return self.become_backup(self.epoch, None);
        }
        let Some(state) = self.primary_state() else {
            return Ok(());
        };
        if now >= state.next_heartbeat {
            self.send_heartbeats();
        }
        self.retransmit()?;
        self.continue_snapshots()?;
        self.promote_caught_up_learner()?;
        self.expire_requests();
        self.answer_reads()?;
        Ok(())
    }

    /// The time by which a majority of voters (the primary included) had last been heard from.
    fn majority_contact(&self) -> Timestamp {
        let RoleState::Primary(state) = &self.role else {
            return 0;
        };
        let mut contacts: Vec<Timestamp> = self
            .membership
            .voters()
            .map(|id| {
                if id == self.id {
                    self.now
                } else {
                    state
                        .progress
                        .get(&id)
                        .and_then(|p| p.last_contact)
                        // A new primary counts its election as contact, so it gets a full timeout.
                        .unwrap_or(state.elected_at)
                }
            })
            .collect();
        contacts.sort_unstable_by(|a, b| b.cmp(a));
        contacts
            .get(self.membership.majority().saturating_sub(1))
            .copied()
            .unwrap_or(0)
    }

    fn send_heartbeats(&mut self) {
        let now = self.now;
        let interval = self.options.heartbeat_interval_ms;
        let commit_index = self.commit_index;
        let membership = self.membership.clone();
        let members = self.other_members();
        let Some(state) = self.primary_state() else {
            return;
        };
        state.round += 1;
        let round = state.round;
        state.rounds.insert(round, (now, BTreeSet::new()));
        while state.rounds.len() > 16 {
            state.rounds.pop_first();
        }
        state.next_heartbeat = now + interval;
        for member in members {
            self.send(
                member,
                MessageBody::Heartbeat {
                    commit_index,
                    membership: membership.clone(),
                    round,
                },
            );
        }
        // A single voter confirms its own leadership.
        self.renew_lease(round);
    }

    fn renew_lease(&mut self, round: u64) {
        let majority = self.membership.majority();
        let voters: BTreeSet<NodeId> = self.membership.voters().collect();
        let timeout = self.options.failure_timeout_ms;
        let Some(state) = self.primary_state() else {
            return;
        };
        let Some((sent_at, acks)) = state.rounds.get(&round) else {
            return;
        };
        // The primary itself counts; voters never vote for another within `failure_timeout` of
        // acknowledging a heartbeat, which they received after `sent_at`.
        if acks.intersection(&voters).count() + 1 >= majority {
            state.lease_until = state.lease_until.max(sent_at + timeout);
        }
    }

    fn on_heartbeat_ack(
        &mut self,
        from: NodeId,
        round: u64,
        durable_index: LogIndex,
        last_index: LogIndex,
    ) -> Result<()> {
        let now = self.now;
        let primary_last = self.last_index;
        let Some(state) = self.primary_state() else {
            return Ok(());
        };
        let Some(progress) = state.progress.get_mut(&from) else {
            return Ok(());
        };
        progress.last_contact = Some(now);
        progress.reported_durable = Some(durable_index);
        progress.reported_last = Some(last_index);
        if progress.match_index >= primary_last {
            // Idle and caught up: in sync as of now.
            progress.caught_up_at = Some(now);
        }
        if let Some((_, acks)) = state.rounds.get_mut(&round) {
            acks.insert(from);
        }
        self.renew_lease(round);
        self.answer_reads()?;
        self.answer_writes();
        Ok(())
    }

    /// A member whose log matches but who cannot tell (it restarted, so it verified nothing in this
    /// epoch) would never advance its commit index: send it an empty append at its match index.
    fn probe_if_unverified(&mut self, member: NodeId, verified_index: LogIndex) -> Result<()> {
        let commit_index = self.commit_index;
        let Some(progress) = self
            .primary_state()
            .and_then(|state| state.progress.get(&member))
        else {
            return Ok(());
        };
        let match_index = progress.match_index;
        if verified_index >= match_index.min(commit_index) {
            return Ok(());
        }
        let base_epoch = self.epoch_at(match_index)?;
        self.send(
            member,
            MessageBody::Append {
                base_index: match_index,
                base_epoch,
                entries: Vec::new(),
                commit_index,
                catch_up: false,
            },
        );
        Ok(())
    }

    fn on_append_ack(&mut self, from: NodeId, match_index: LogIndex) -> Result<()> {
        let now = self.now;
        let last_index = self.last_index;
        let Some(state) = self.primary_state() else {
            return Ok(());
        };
        let Some(progress) = state.progress.get_mut(&from) else {
            return Ok(());
        };
        // A member cannot match entries the primary does not have.
        progress.record_match(match_index.min(last_index), now);
        self.send_appends_from_storage(from)?;
        self.advance_commit()?;
        self.answer_writes();
        self.answer_reads()?;
        Ok(())
    }

    fn on_append_rejected(&mut self, from: NodeId, hint: LogIndex) -> Result<()> {
        let now = self.now;
        let id = self.id;
        let Some(state) = self.primary_state() else {
            return Ok(());
        };
        let Some(progress) = state.progress.get_mut(&from) else {
            return Ok(());
        };
        progress.last_contact = Some(now);
        if hint < progress.match_index {
            // The member acknowledged entries it no longer has: its storage was wiped or
            // replaced. Its earlier acks cannot be trusted; start again from what it has.
            warn!(
                node = id,
                member = from,
                hint,
                match_index = progress.match_index,
                "member lost acknowledged entries; resending from its log's end"
            );
            progress.forget_match(hint);
        }
        let restart = (hint + 1).max(progress.match_index + 1);
        if restart < progress.next_index {
            debug!(
                node = id,
                member = from,
                restart,
                "member's log diverges; walking back"
            );
            progress.reset_to(restart, now);
            self.send_appends_from_storage(from)?;
        }
        Ok(())
    }

    /// Resends to members that made no progress for two heartbeat intervals: an append was lost,
    /// or the member restarted, or it is far behind (catch-up reads from storage).
    fn retransmit(&mut self) -> Result<()> {
        let now = self.now;
        let last_index = self.last_index;
        let wait = 2 * self.options.heartbeat_interval_ms;
        let cache_first = self.cache_first_index();
        let Some(state) = self.primary_state() else {
            return Ok(());
        };
        let mut behind = Vec::new();
        for (&id, progress) in state.progress.iter_mut() {
            if progress.match_index >= last_index {
                continue;
            }
            let stalled = now.saturating_sub(progress.last_progress) >= wait;
            if stalled {
                progress.reset_to(progress.match_index + 1, now);
            }
            if stalled || progress.next_index < cache_first {
                behind.push(id);
            }
        }
        for id in behind {
            self.send_appends_from_storage(id)?;
        }
        Ok(())
    }

    /// Sends entries `[next_index ..]` to `member`: from storage while the member is behind the
    /// cache (a few bounded batches per call, within the flow-control window), then from the cache.
    fn send_appends_from_storage(&mut self, member: NodeId) -> Result<()> {
        const BATCHES_PER_CALL: usize = 4;
        for _ in 0..BATCHES_PER_CALL {
            let Some((next, limit)) = self.send_window(member) else {
                return Ok(());
            };
            let cache_first = self.cache_first_index();
            if next >= cache_first {
                break;
            }
            if next < self.log_start {
                // The entries this member needs were compacted away: send the state instead.
                return self.send_snapshot(member);
            }
            let entries = self.storage.entries(
                next,
                limit.min(cache_first - 1),
                self.options.max_append_bytes,
            )?;
            if entries.is_empty() {
                return Err(Error::Storage(format!("log entry {next} is missing")));
            }
            let base_epoch = self.epoch_at(next - 1)?;
            self.send_append(member, next - 1, base_epoch, entries, true);
        }
        self.replicate_member_from_cache(member);
        Ok(())
    }

    /// `(next index, last index allowed by flow control)` for a member, if anything may be sent.
    fn send_window(&self, member: NodeId) -> Option<(LogIndex, LogIndex)> {
        let RoleState::Primary(state) = &self.role else {
            return None;
        };
        if state.transfers.contains_key(&member) {
            return None; // appends resume once the snapshot is installed
        }
        let progress = state.progress.get(&member)?;
        let limit = progress
            .send_limit(self.options.max_inflight_entries)
            .min(self.last_index);
        (progress.next_index <= limit).then_some((progress.next_index, limit))
    }

    fn send_append(
        &mut self,
        member: NodeId,
        base_index: LogIndex,
        base_epoch: Epoch,
        entries: Vec<Entry>,
        catch_up: bool,
    ) {
        let Some(last) = entries.last().map(|entry| entry.index) else {
            return;
        };
        let now = self.now;
        let commit_index = self.commit_index;
        if let Some(progress) = self
            .primary_state()
            .and_then(|state| state.progress.get_mut(&member))
        {
            progress.next_index = last + 1;
            progress.record_send(last, now);
        }
        self.send(
            member,
            MessageBody::Append {
                base_index,
                base_epoch,
                entries,
                commit_index,
                catch_up,
            },
        );
    }

    /// Sends what the cache holds to every member that is within it (live replication).
    fn replicate_from_cache(&mut self) {
        if !self.is_primary() {
            return;
        }
        for member in self.other_members() {
            self.replicate_member_from_cache(member);
        }
    }

    fn replicate_member_from_cache(&mut self, member: NodeId) {
        let max_bytes = self.options.max_append_bytes;
        loop {
            let Some((next, limit)) = self.send_window(member) else {
                return;
            };
            let first = self.cache_first_index();
            if next < first || self.cache.is_empty() {
                return; // catch-up from storage happens on tick
            }
            let base_epoch = if next == first {
                match self.epoch_at(next - 1) {
                    Ok(epoch) => epoch,
                    Err(_) => return,
                }
            } else {
                self.cache[(next - 1 - first) as usize].epoch
            };
            let mut bytes = 0usize;
            let mut entries = Vec::new();
            for entry in self
                .cache
                .range((next - first) as usize..=(limit - first) as usize)
            {
                bytes += entry_size(entry);
                entries.push(entry.clone());
                if bytes >= max_bytes {
                    break;
                }
            }
            self.send_append(member, next - 1, base_epoch, entries, false);
        }
    }

    fn write(
        &mut self,
        token: ClientToken,
        request_id: RequestId,
        write: Write,
        concern: WriteConcern,
        timeout_ms: u64,
    ) -> Result<()> {
        if !self.is_primary() {
            let error = self.not_primary();
            self.reply(token, Response::Error(error));
            return Ok(());
        }
        let voters = self.membership.voters().count();
        if let WriteConcern::Count(required) = concern {
            if required as usize > voters || required == 0 {
                let error = Error::WriteConcernImpossible {
                    required: required as usize,
                    voters,
                };
                self.reply(token, Response::Error(error));
                return Ok(());
            }
        }
        // A retry of a write already applied: answer with its first result.
        if let Some(session) = self.storage.session(request_id.client_id)? {
            if session.last_sequence == request_id.sequence {
                let meta = self.meta();
                self.reply(
                    token,
                    Response::Written {
                        result: session.result,
                        meta,
                    },
                );
                return Ok(());
            }
            if session.last_sequence > request_id.sequence {
                let error = Error::StaleRequest {
                    client_id: request_id.client_id,
                    sequence: request_id.sequence,
                    latest: session.last_sequence,
                };
                self.reply(token, Response::Error(error));
                return Ok(());
            }
        }
        let deadline = self.now + timeout_ms;
        let existing = self
            .primary_state()
            .and_then(|state| state.requests.get(&request_id).copied());
        let index = match existing {
            Some(index) => index, // a retry of a write still in flight joins it
            None => {
                let (operation, key) = match write {
                    Write::Put { key, value } => (
                        Operation::Put {
                            key: key.clone(),
                            value,
                        },
                        key,
                    ),
                    Write::Delete { key } => (Operation::Delete { key: key.clone() }, key),
                };
                let existed = self.speculate_existed(&key)?;
                let index = self.append(operation, Some(request_id))?;
                let waiter = PendingWrite {
                    token,
                    concern,
                    deadline,
                    result: WriteResult { index, existed },
                };
                if let Some(state) = self.primary_state() {
                    state.requests.insert(request_id, index);
                    state.writes.entry(index).or_default().push(waiter);
                }
                return Ok(());
            }
        };
        let result = WriteResult {
            index,
            existed: false,
        };
        if let Some(state) = self.primary_state() {
            let waiters = state.writes.entry(index).or_default();
            let result = waiters.first().map_or(result, |w| w.result);
            waiters.push(PendingWrite {
                token,
                concern,
                deadline,
                result,
            });
        }
        self.answer_writes();
        Ok(())
    }

    /// Whether `key` exists once every entry in the log so far is applied (the primary's view).
    fn speculate_existed(&self, key: &[u8]) -> Result<bool> {
        for entry in self.cache.iter().rev() {
            if entry.index <= self.applied_index {
                break;
            }
            match &entry.operation {
                Operation::Put { key: k, .. } if k.as_slice() == key => return Ok(true),
                Operation::Delete { key: k } if k.as_slice() == key => return Ok(false),
                _ => {}
            }
        }
        Ok(self.storage.get(key)?.is_some())
    }

    /// Appends one entry in the current epoch to the primary's log.
    fn append(&mut self, operation: Operation, request_id: Option<RequestId>) -> Result<LogIndex> {
        assert!(self.is_primary(), "only a primary appends client entries");
        let entry = Entry {
            epoch: self.epoch,
            index: self.last_index + 1,
            operation,
            request_id,
        };
        self.storage.append(std::slice::from_ref(&entry))?;
        self.last_index = entry.index;
        self.last_epoch = entry.epoch;
        let index = entry.index;
        if let Operation::Membership(membership) = &entry.operation {
            // A membership change takes effect as soon as it is appended.
            self.adopt_membership(membership.clone(), index);
        }
        self.push_cache(entry);
        Ok(index)
    }

    fn push_cache(&mut self, entry: Entry) {
        if let Some(last) = self.cache.back() {
            if last.index + 1 != entry.index {
                self.clear_cache();
            }
        }
        self.cache_bytes += entry_size(&entry);
        self.cache.push_back(entry);
        // Keep unapplied entries (speculation needs them); drop the oldest applied ones.
        while (self.cache.len() > MAX_CACHED_ENTRIES || self.cache_bytes > MAX_CACHED_BYTES)
            && self
                .cache
                .front()
                .is_some_and(|e| e.index <= self.applied_index)
        {
            if let Some(dropped) = self.cache.pop_front() {
                self.cache_bytes = self.cache_bytes.saturating_sub(entry_size(&dropped));
            }
        }
    }

    fn clear_cache(&mut self) {
        self.cache.clear();
        self.cache_bytes = 0;
    }

    /// Loads `[from ..= last_index]` into the cache from storage.
    fn fill_cache_from(&mut self, from: LogIndex) -> Result<()> {
        self.clear_cache();
        let mut next = from.max(1);
        while next <= self.last_index {
            let entries = self.storage.entries(next, self.last_index, 4 << 20)?;
            let Some(last) = entries.last().map(|e| e.index) else {
                break;
            };
            self.cache_bytes += entries.iter().map(entry_size).sum::<usize>();
            self.cache.extend(entries);
            next = last + 1;
        }
        Ok(())
    }

    fn cache_first_index(&self) -> LogIndex {
        self.cache.front().map_or(self.last_index + 1, |e| e.index)
    }

    /// The epoch of the entry at `index` (0 for index 0).
    fn epoch_at(&self, index: LogIndex) -> Result<Epoch> {
        if index == 0 {
            return Ok(0);
        }
        let first = self.cache_first_index();
        if index >= first && index <= self.last_index {
            return Ok(self.cache[(index - first) as usize].epoch);
        }
        match self.storage.entry(index)? {
            Some(entry) => Ok(entry.epoch),
            None => {
                let meta = self.storage.meta()?;
                if index + 1 == meta.log_start {
                    Ok(meta.snapshot_epoch)
                } else {
                    Err(Error::Storage(format!("log entry {index} is missing")))
                }
            }
        }
    }

    /// Commits what a majority has durably, once an entry of this epoch is among it.
    fn advance_commit(&mut self) -> Result<()> {
        let RoleState::Primary(state) = &self.role else {
            return Ok(());
        };
        let candidate = progress::majority_index(
            &self.membership,
            self.id,
            self.durable_index,
            &state.progress,
        );
        if candidate <= self.commit_index {
            return Ok(());
        }
        // Only an entry of the primary's own epoch is committed by counting (earlier entries are
        // committed with it); otherwise a later primary could still overwrite it.
        if self.epoch_at(candidate)? != self.epoch {
            return Ok(());
        }
        self.commit_index = candidate;
        self.apply_committed()
    }

    /// Applies committed entries in order, recording the real result on waiting writes.
    fn apply_committed(&mut self) -> Result<()> {
        while self.applied_index < self.commit_index {
            let from = self.applied_index + 1;
            let first = self.cache_first_index();
            let entries: Vec<Entry> = if from >= first {
                let end = (self.commit_index - first) as usize;
                self.cache
                    .range((from - first) as usize..=end)
                    .take(4096)
                    .cloned()
                    .collect()
            } else {
                self.storage.entries(
                    from,
                    self.commit_index.min(first.saturating_sub(1)),
                    4 << 20,
                )?
            };
            if entries.is_empty() {
                return Err(Error::Storage(format!(
                    "committed entry {from} is missing from the log"
                )));
            }
            let results = self.storage.apply(&entries)?;
            let last = entries.last().map_or(from, |e| e.index);
            self.applied_index = last;
            for entry in &entries {
                if let Operation::Membership(membership) = &entry.operation {
                    self.applied_membership = membership.clone();
                }
            }
            self.record_dirty_keys(&entries);
            if let Some(state) = self.primary_state() {
                for (entry, result) in entries.iter().zip(results) {
                    if let Some(request_id) = entry.request_id {
                        state.requests.remove(&request_id);
                    }
                    if let Some(waiters) = state.writes.get_mut(&entry.index) {
                        for waiter in waiters {
                            waiter.result = result;
                        }
                    }
                }
            }
        }
        if self.is_primary()
            && self.membership.get(self.id).is_none()
            && self.membership_index <= self.commit_index
        {
            // This primary removed itself and the change is committed: hand over by stepping
            // down; the remaining voters elect among themselves.
            info!(
                node = self.id,
                epoch = self.epoch,
                "removed from the cluster; stepping down"
            );
            self.answer_writes();
            self.become_backup(self.epoch, None)?;
        }
        Ok(())
    }

    // --- compaction and snapshots ---

    /// Compacts the applied prefix of the log once it holds more than `log_retention_bytes`,
    /// down to about three quarters of that, in bounded steps.
    fn compact_log(&mut self) -> Result<()> {
        // Compaction runs inside the event loop, so it goes in small steps, at most one per
        // heartbeat interval (about 20,000 entries a second): a large step would hold up
        // heartbeats long enough for the primary to lose its majority.
        const MAX_ENTRIES_PER_STEP: u64 = 2_000;
        if self.now < self.next_compaction {
            return Ok(());
        }
        self.next_compaction = self.now + self.options.heartbeat_interval_ms;
        let retention = self.options.log_retention_bytes;
        let log_bytes = self.storage.log_bytes()?;
        if log_bytes <= retention || self.last_index < self.log_start {
            return Ok(());
        }
        let entries = self.last_index - self.log_start + 1;
        let average = (log_bytes / entries).max(1);
        let excess = (log_bytes - retention * 3 / 4) / average + 1;
        let through =
            (self.log_start - 1 + excess.min(MAX_ENTRIES_PER_STEP)).min(self.applied_index);
        if through < self.log_start {
            return Ok(());
        }
        self.storage.compact(through)?;
        self.log_start = through + 1;
        debug!(node = self.id, through, "compacted the log");
        Ok(())
    }

    /// Starts (or continues) a snapshot transfer to `member`.
    fn send_snapshot(&mut self, member: NodeId) -> Result<()> {
        let now = self.now;
        let failure_timeout = self.options.failure_timeout_ms;
        let Some(state) = self.primary_state() else {
            return Ok(());
        };
        let reachable = state
            .progress
            .get(&member)
            .and_then(|progress| progress.last_contact)
            .is_some_and(|at| now.saturating_sub(at) < failure_timeout);
        if !state.transfers.contains_key(&member) && !reachable {
            return Ok(()); // no point reading the whole state for a member that is down
        }
        if !state.transfers.contains_key(&member) {
            state.next_transfer += 1;
            let id = state.next_transfer;
            state.transfers.insert(
                member,
                SnapshotTransfer {
                    id,
                    cursor: None,
                    scan_done: false,
                    finished: false,
                    dirty: BTreeSet::new(),
                    next_sequence: 0,
                    acked_sequence: None,
                    last_activity: now,
                },
            );
            info!(
                node = self.id,
                epoch = self.epoch,
                member,
                transfer = id,
                "member is behind the compacted log; streaming a snapshot"
            );
        }
        self.send_snapshot_chunks(member)
    }

    /// Sends chunks of `member`'s transfer while the window allows.
    fn send_snapshot_chunks(&mut self, member: NodeId) -> Result<()> {
        let max_bytes = self.options.max_append_bytes;
        loop {
            let Some(transfer) = self
                .primary_state()
                .and_then(|state| state.transfers.get(&member))
            else {
                return Ok(());
            };
            let in_flight = transfer.next_sequence - transfer.acked_sequence.map_or(0, |s| s + 1);
            if transfer.finished || in_flight >= SNAPSHOT_WINDOW {
                return Ok(());
            }
            let (id, sequence) = (transfer.id, transfer.next_sequence);
            let (pairs, finish) = if transfer.scan_done {
                // Every key that changed since the transfer began, as it is now.
                let dirty: Vec<Vec<u8>> = transfer.dirty.iter().cloned().collect();
                let mut pairs = Vec::with_capacity(dirty.len());
                for key in dirty {
                    let value = self.storage.get(&key)?;
                    pairs.push((key, value));
                }
                let finish = SnapshotFinish {
                    index: self.applied_index,
                    epoch: self.epoch_at(self.applied_index)?,
                    sessions: self.storage.sessions()?,
                    membership: self.applied_membership.clone(),
                };
                (pairs, Some(finish))
            } else {
                let cursor = transfer.cursor.clone();
                let chunk = self.storage.state_chunk(cursor.as_deref(), max_bytes)?;
                let pairs: Vec<(Vec<u8>, Option<Vec<u8>>)> = chunk
                    .into_iter()
                    .map(|(key, value)| (key, Some(value)))
                    .collect();
                (pairs, None)
            };
            let now = self.now;
            let Some(transfer) = self
                .primary_state()
                .and_then(|state| state.transfers.get_mut(&member))
            else {
                return Ok(());
            };
            transfer.next_sequence += 1;
            transfer.last_activity = now;
            if let Some(finish) = &finish {
                transfer.finished = true;
                let index = finish.index;
                // Appends resume after the snapshot's index once the member acknowledges it.
                if let Some(progress) = self
                    .primary_state()
                    .and_then(|state| state.progress.get_mut(&member))
                {
                    progress.reset_to(index + 1, now);
                }
            } else if pairs.is_empty() {
                transfer.scan_done = true;
                transfer.next_sequence -= 1;
                continue;
            } else {
                transfer.cursor = pairs.last().map(|(key, _)| key.clone());
            }
            self.send(
                member,
                MessageBody::SnapshotChunk {
                    transfer: id,
                    sequence,
                    pairs,
                    finish,
                },
            );
        }
    }

    fn on_snapshot_ack(&mut self, member: NodeId, transfer_id: u64, sequence: u64) -> Result<()> {
        let now = self.now;
        let Some(transfer) = self
            .primary_state()
            .and_then(|state| state.transfers.get_mut(&member))
        else {
            return Ok(());
        };
        if transfer.id != transfer_id {
            return Ok(());
        }
        transfer.acked_sequence = Some(
            transfer
                .acked_sequence
                .map_or(sequence, |s| s.max(sequence)),
        );
        transfer.last_activity = now;
        if let Some(progress) = self
            .primary_state()
            .and_then(|state| state.progress.get_mut(&member))
        {
            progress.last_contact = Some(now);
        }
        self.send_snapshot_chunks(member)
    }

    /// Ends transfers that are installed (the member acknowledged the snapshot's index) or
    /// stalled (restarted from scratch on the next retransmission), and keeps the rest moving.
    fn continue_snapshots(&mut self) -> Result<()> {
        let now = self.now;
        let stall = 2 * self.options.failure_timeout_ms;
        let Some(state) = self.primary_state() else {
            return Ok(());
        };
        let progress = &state.progress;
        state.transfers.retain(|member, transfer| {
            let installed = transfer.finished
                && progress
                    .get(member)
                    .is_some_and(|p| p.match_index + 1 >= p.next_index);
            let stalled = now.saturating_sub(transfer.last_activity) > stall;
            !(installed || stalled)
        });
        let members: Vec<NodeId> = state.transfers.keys().copied().collect();
        for member in members {
            self.send_snapshot_chunks(member)?;
        }
        Ok(())
    }

    /// Keys written by `entries` are dirty for every snapshot being streamed.
    fn record_dirty_keys(&mut self, entries: &[Entry]) {
        let Some(state) = self.primary_state() else {
            return;
        };
        for transfer in state.transfers.values_mut().filter(|t| !t.finished) {
            for entry in entries {
                match &entry.operation {
                    Operation::Put { key, .. } | Operation::Delete { key } => {
                        transfer.dirty.insert(key.clone());
                    }
                    Operation::Noop | Operation::Membership(_) => {}
                }
            }
        }
    }

    /// A backup stages snapshot chunks and installs the snapshot with its last chunk.
    fn on_snapshot_chunk(
        &mut self,
        from: NodeId,
        transfer: u64,
        sequence: u64,
        pairs: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        finish: Option<SnapshotFinish>,
    ) -> Result<()> {
        if sequence == 0 {
            self.storage.begin_snapshot()?;
            self.incoming_snapshot = Some(IncomingSnapshot {
                epoch: self.epoch,
                from,
                transfer,
                next_sequence: 0,
            });
        }
        let epoch = self.epoch;
        let expected = self.incoming_snapshot.as_ref().is_some_and(|s| {
            s.epoch == epoch
                && s.from == from
                && s.transfer == transfer
                && s.next_sequence == sequence
        });
        if !expected {
            return Ok(()); // a chunk of an abandoned transfer, or one out of order: it restarts
        }
        self.storage.stage_snapshot(&pairs)?;
        if let Some(incoming) = self.incoming_snapshot.as_mut() {
            incoming.next_sequence += 1;
        }
        if let Some(finish) = finish {
            self.install_snapshot(finish)?;
        }
        self.send(from, MessageBody::SnapshotAck { transfer, sequence });
        Ok(())
    }

    fn install_snapshot(&mut self, finish: SnapshotFinish) -> Result<()> {
        self.incoming_snapshot = None;
        if finish.index <= self.commit_index {
            // This node already holds everything the snapshot holds: its committed prefix is in
            // the log of every later primary (invariant 2), so it matches this primary's log up to
            // its commit index. Say so, or the primary never learns where to resume appends.
            self.verified_index = self.verified_index.max(self.commit_index);
            self.ack_append(true);
            return Ok(());
        }
        let removed = self
            .storage
            .install_snapshot(&finish, self.commit_index, self.epoch)?;
        info!(
            node = self.id,
            epoch = self.epoch,
            index = finish.index,
            rolled_back = removed.len(),
            "installed a snapshot"
        );
        self.rolled_back_entries += removed.len() as u64;
        self.last_index = finish.index;
        self.last_epoch = finish.epoch;
        self.log_start = finish.index + 1;
        self.commit_index = finish.index;
        self.persisted_commit_index = finish.index;
        self.applied_index = finish.index;
        self.verified_index = finish.index;
        // The snapshot was flushed as it was installed.
        self.durable_index = finish.index;
        self.generation += 1;
        self.clear_cache();
        self.applied_membership = finish.membership;
        self.recompute_membership()?;
        self.ack_append(true);
        Ok(())
    }

    // --- membership ---

    /// Sets the membership in force, keeping the primary's progress table in step with it.
    fn adopt_membership(&mut self, membership: Membership, index: LogIndex) {
        if membership == self.membership {
            self.membership_index = index.max(self.membership_index);
            return;
        }
        info!(
            node = self.id,
            epoch = self.epoch,
            index,
            members = ?membership.members.iter().map(|m| (m.id, m.voter)).collect::<Vec<_>>(),
            "membership changed"
        );
        self.membership = membership;
        self.membership_index = index;
        let last_index = self.last_index;
        let now = self.now;
        let members: Vec<NodeId> = self.other_members();
        if let Some(state) = self.primary_state() {
            state.progress.retain(|id, _| members.contains(id));
            for id in members {
                state
                    .progress
                    .entry(id)
                    .or_insert_with(|| Progress::new(last_index, now));
            }
        }
        self.outputs.push(Output::Topology {
            epoch: self.epoch,
            primary: self.primary,
            membership: self.membership.clone(),
        });
    }

    /// The membership is the latest membership entry in the unapplied log, else the applied one.
    fn recompute_membership(&mut self) -> Result<()> {
        let mut latest = (self.applied_membership.clone(), 0);
        let mut next = self.applied_index + 1;
        while next <= self.last_index {
            let entries = self.storage.entries(next, self.last_index, 4 << 20)?;
            let Some(last) = entries.last().map(|e| e.index) else {
                break;
            };
            for entry in entries {
                if let Operation::Membership(membership) = entry.operation {
                    latest = (membership, entry.index);
                }
            }
            next = last + 1;
        }
        self.adopt_membership(latest.0, latest.1);
        Ok(())
    }

    /// Appends a membership change: one at a time, and only once this primary's no-op is
    /// committed (the single-server change rule; the no-op closes the gap Raft's had).
    fn change_membership(&mut self, token: ClientToken, change: MembershipChange) -> Result<()> {
        let noop_committed = match &self.role {
            RoleState::Primary(state) => self.commit_index >= state.noop_index,
            _ => {
                let error = self.not_primary();
                self.reply(token, Response::Error(error));
                return Ok(());
            }
        };
        if !noop_committed || self.membership_index > self.commit_index {
            let error = Error::Unavailable(
                "a membership change or election is still being committed: retry shortly".into(),
            );
            self.reply(token, Response::Error(error));
            return Ok(());
        }
        let mut members = self.membership.members.clone();
        match change {
            MembershipChange::Add(member) => {
                if let Some(existing) = self.membership.get(member.id) {
                    let same = existing.client_addr == member.client_addr
                        && existing.peer_addr == member.peer_addr;
                    let response = if same {
                        // A retried join: already a member.
                        Response::Written {
                            result: WriteResult {
                                index: self.membership_index,
                                existed: true,
                            },
                            meta: self.meta(),
                        }
                    } else {
                        Response::Error(Error::InvalidRequest(format!(
                            "node {} is already a member with other addresses; remove it first",
                            member.id
                        )))
                    };
                    self.reply(token, response);
                    return Ok(());
                }
                members.push(Member {
                    voter: false,
                    ..member
                });
            }
            MembershipChange::Remove(id) => {
                if self.membership.get(id).is_none() {
                    // Already gone (a retried removal, say): removal is idempotent, like a delete.
                    let response = Response::Written {
                        result: WriteResult {
                            index: self.membership_index,
                            existed: false,
                        },
                        meta: self.meta(),
                    };
                    self.reply(token, response);
                    return Ok(());
                }
                members.retain(|member| member.id != id);
                if !members.iter().any(|member| member.voter) {
                    let error = Error::InvalidRequest(
                        "removing the last voter would leave no cluster".into(),
                    );
                    self.reply(token, Response::Error(error));
                    return Ok(());
                }
            }
        }
        let index = self.append(Operation::Membership(Membership::new(members)), None)?;
        let deadline = self.now + self.options.failure_timeout_ms * 10;
        if let Some(state) = self.primary_state() {
            state.writes.entry(index).or_default().push(PendingWrite {
                token,
                concern: WriteConcern::Majority,
                deadline,
                result: WriteResult {
                    index,
                    existed: false,
                },
            });
        }
        Ok(())
    }

    /// Makes a caught-up learner a voter (one change at a time).
    fn promote_caught_up_learner(&mut self) -> Result<()> {
        const CAUGHT_UP_LAG: LogIndex = 1000;
        let RoleState::Primary(state) = &self.role else {
            return Ok(());
        };
        if self.membership_index > self.commit_index || self.commit_index < state.noop_index {
            return Ok(());
        }
        let learner = self.membership.members.iter().find(|member| {
            !member.voter
                && state.progress.get(&member.id).is_some_and(|p| {
                    p.match_index > 0 && p.match_index + CAUGHT_UP_LAG >= self.last_index
                })
        });
        let Some(learner) = learner.map(|m| m.id) else {
            return Ok(());
        };
        info!(
            node = self.id,
            epoch = self.epoch,
            learner,
            "learner caught up; making it a voter"
        );
        let members = self
            .membership
            .members
            .iter()
            .map(|member| Member {
                voter: member.voter || member.id == learner,
                ..member.clone()
            })
            .collect();
        self.append(Operation::Membership(Membership::new(members)), None)?;
        Ok(())
    }

    /// Replies to every pending write whose write concern is met.
    fn answer_writes(&mut self) {
        let now = self.now;
        let lag_timeout = self.options.replica_lag_timeout_ms;
        let meta = self.meta();
        let RoleState::Primary(state) = &mut self.role else {
            return;
        };
        let in_sync =
            progress::in_sync_voters(&self.membership, self.id, &state.progress, now, lag_timeout);
        let mut done = Vec::new();
        for (&index, waiters) in state.writes.iter_mut() {
            let acknowledged = progress::acknowledged(
                index,
                &self.membership,
                self.id,
                self.durable_index,
                &state.progress,
            );
            let committed = self.commit_index >= index;
            let primary_durable = self.durable_index >= index;
            waiters.retain(|waiter| {
                // `1` and `N` include the primary's own flush; `majority` and `all` need the
                // entry committed (durable on a majority of the voters in force, which may not
                // include a primary that is removing itself).
                let met = match waiter.concern {
                    WriteConcern::One | WriteConcern::Count(_) => {
                        primary_durable
                            && acknowledged
                                >= progress::required_acknowledgements(
                                    waiter.concern,
                                    &self.membership,
                                    in_sync.len(),
                                )
                    }
                    WriteConcern::Majority => committed,
                    WriteConcern::All => {
                        committed
                            && in_sync.iter().all(|&id| {
                                progress::durable_of(
                                    id,
                                    self.id,
                                    self.durable_index,
                                    &state.progress,
                                ) >= index
                            })
                    }
                };
                if met {
                    done.push((waiter.token, waiter.result));
                }
                !met
            });
        }
        state.writes.retain(|_, waiters| !waiters.is_empty());
        for (token, result) in done {
            self.reply(token, Response::Written { result, meta });
        }
    }

    /// Fails writes and reads whose deadline passed.
    fn expire_requests(&mut self) {
        let now = self.now;
        let lag_timeout = self.options.replica_lag_timeout_ms;
        let RoleState::Primary(state) = &mut self.role else {
            return;
        };
        let in_sync =
            progress::in_sync_voters(&self.membership, self.id, &state.progress, now, lag_timeout);
        let mut expired = Vec::new();
        for (&index, waiters) in state.writes.iter_mut() {
            let acknowledged = progress::acknowledged(
                index,
                &self.membership,
                self.id,
                self.durable_index,
                &state.progress,
            );
            waiters.retain(|waiter| {
                if waiter.deadline > now {
                    return true;
                }
                let required = progress::required_acknowledgements(
                    waiter.concern,
                    &self.membership,
                    in_sync.len(),
                );
                expired.push((
                    waiter.token,
                    Error::WriteConcernNotMet {
                        acknowledged,
                        required,
                    },
                ));
                false
            });
        }
        state.writes.retain(|_, waiters| !waiters.is_empty());
        let mut reads_expired = Vec::new();
        state.reads.retain(|read| {
            if read.deadline > now {
                return true;
            }
            reads_expired.push(read.token);
            false
        });
        for (token, error) in expired {
            self.reply(token, Response::Error(error));
        }
        for token in reads_expired {
            let error = Error::Unavailable(
                "the primary could not confirm its leadership in time: retry".into(),
            );
            self.reply(token, Response::Error(error));
        }
    }

    // --- reads ---

    fn read(
        &mut self,
        token: ClientToken,
        request: Request,
        consistency: ReadConsistency,
    ) -> Result<()> {
        match consistency {
            ReadConsistency::Stale => self.serve_read(token, &request),
            ReadConsistency::Local | ReadConsistency::Linearizable if !self.is_primary() => {
                let error = self.not_primary();
                self.reply(token, Response::Error(error));
                Ok(())
            }
            ReadConsistency::Local => self.serve_read(token, &request),
            ReadConsistency::Linearizable => {
                let deadline = self.now + self.options.failure_timeout_ms * 2;
                if let Some(state) = self.primary_state() {
                    state.reads.push(PendingRead {
                        token,
                        request,
                        deadline,
                    });
                }
                self.answer_reads()
            }
        }
    }

    /// Serves queued linearizable reads if the lease is valid and this epoch's no-op is committed
    /// (so the applied state holds every write acknowledged by any earlier primary).
    fn answer_reads(&mut self) -> Result<()> {
        let now = self.now;
        let commit_index = self.commit_index;
        let Some(state) = self.primary_state() else {
            return Ok(());
        };
        if state.reads.is_empty() || now >= state.lease_until || commit_index < state.noop_index {
            return Ok(());
        }
        let reads = std::mem::take(&mut state.reads);
        for read in reads {
            self.serve_read(read.token, &read.request)?;
        }
        Ok(())
    }

    fn serve_read(&mut self, token: ClientToken, request: &Request) -> Result<()> {
        let meta = self.meta();
        let response = match request {
            Request::Get { key, .. } => Response::Value {
                value: self.storage.get(key)?,
                meta,
            },
            Request::Scan { prefix, limit, .. } => Response::Pairs {
                pairs: self.storage.scan(prefix, *limit as usize)?,
                meta,
            },
            _ => Response::Error(Error::Internal("not a read".into())),
        };
        self.reply(token, response);
        Ok(())
    }

    // --- the backup ---

    fn on_append(
        &mut self,
        from: NodeId,
        mut base_index: LogIndex,
        mut base_epoch: Epoch,
        mut entries: Vec<Entry>,
        commit_index: LogIndex,
    ) -> Result<()> {
        // Entries at or below this node's snapshot point are committed and applied here already.
        let snapshot_index = self.log_start - 1;
        if base_index < snapshot_index {
            let covered = entries.last().map_or(base_index, |e| e.index);
            entries.retain(|entry| entry.index > snapshot_index);
            base_index = snapshot_index;
            base_epoch = self.epoch_at(snapshot_index)?;
            if entries.is_empty() {
                self.verified_index = self.verified_index.max(covered.min(snapshot_index));
                self.advance_backup_commit(commit_index)?;
                self.ack_append(true);
                return Ok(());
            }
        }
        if base_index > self.last_index {
            self.send(
                from,
                MessageBody::AppendRejected {
                    hint: self.last_index,
                },
            );
            return Ok(());
        }
        let local_base_epoch = self.epoch_at(base_index)?;
        if local_base_epoch != base_epoch {
            let hint = self.conflict_hint(base_index, local_base_epoch)?;
            self.send(from, MessageBody::AppendRejected { hint });
            return Ok(());
        }
        // After this append the log matches the primary's up to its last entry.
        let verified = entries.last().map_or(base_index, |e| e.index);
        // Skip what this node already has; truncate from the first conflict.
        let mut new_entries = Vec::new();
        let mut retransmission = true;
        for entry in entries {
            if !new_entries.is_empty() || entry.index > self.last_index {
                retransmission = false;
                new_entries.push(entry);
                continue;
            }
            if self.epoch_at(entry.index)? == entry.epoch {
                continue;
            }
            self.truncate_from(entry.index)?;
            new_entries.push(entry);
            retransmission = false;
        }
        if let Some(first) = new_entries.first() {
            if first.index != self.last_index + 1 {
                return Err(Error::Internal(format!(
                    "append from {from} leaves a gap: entry {} after {}",
                    first.index, self.last_index
                )));
            }
            self.storage.append(&new_entries)?;
            for entry in new_entries {
                self.last_index = entry.index;
                self.last_epoch = entry.epoch;
                if let Operation::Membership(membership) = &entry.operation {
                    self.adopt_membership(membership.clone(), entry.index);
                }
                self.push_cache(entry);
            }
        }
        // The entries up to the append's end now match the primary's log.
        self.verified_index = self.verified_index.max(verified);
        self.advance_backup_commit(commit_index)?;
        // An append that brought nothing new is a retransmission: the earlier ack may have been
        // lost, so repeat it.
        self.ack_append(retransmission);
        Ok(())
    }

    /// Where a diverging log may still match: just before the first entry of the conflicting epoch.
    fn conflict_hint(&self, index: LogIndex, conflicting_epoch: Epoch) -> Result<LogIndex> {
        let mut hint = index.saturating_sub(1);
        let floor = self.commit_index.max(self.log_start - 1);
        while hint > floor {
            if self.epoch_at(hint)? != conflicting_epoch {
                break;
            }
            hint -= 1;
        }
        Ok(hint)
    }

    /// Moves `[index ..]` to the rollback tree. Only uncommitted entries may diverge.
    fn truncate_from(&mut self, index: LogIndex) -> Result<()> {
        if index <= self.commit_index {
            // Invariant 2: a committed entry is in every later primary's log. A primary asking to
            // overwrite one is a protocol violation; stop rather than lose it (fail-stop).
            return Err(Error::Internal(format!(
                "node {} was asked to truncate committed entry {index} (commit index {})",
                self.id, self.commit_index
            )));
        }
        let removed = self.storage.truncate_suffix(index, self.epoch)?;
        warn!(
            node = self.id,
            epoch = self.epoch,
            from = index,
            entries = removed.len(),
            "rolled back a divergent log suffix (kept in the rollback tree)"
        );
        self.rolled_back_entries += removed.len() as u64;
        let (last_epoch, last_index) = self.storage.last()?;
        self.last_index = last_index;
        self.last_epoch = last_epoch;
        self.durable_index = self.durable_index.min(last_index);
        self.generation += 1;
        while self.cache.back().is_some_and(|e| e.index >= index) {
            if let Some(dropped) = self.cache.pop_back() {
                self.cache_bytes = self.cache_bytes.saturating_sub(entry_size(&dropped));
            }
        }
        if self.membership_index >= index {
            self.recompute_membership()?;
        }
        Ok(())
    }

    fn advance_backup_commit(&mut self, primary_commit: LogIndex) -> Result<()> {
        let commit = primary_commit.min(self.verified_index);
        if commit > self.commit_index {
            self.commit_index = commit;
            self.apply_committed()?;
        }
        Ok(())
    }

    /// Acknowledges the durable, verified prefix to the primary, if it grew or `repeat` is set.
    fn ack_append(&mut self, repeat: bool) {
        let Some(primary) = self.primary else {
            return;
        };
        if primary == self.id {
            return;
        }
        let match_index = self.durable_index.min(self.verified_index);
        if match_index > self.acked_index || (repeat && match_index > 0) {
            self.acked_index = match_index;
            self.send(primary, MessageBody::AppendAck { match_index });
        }
    }

    // --- helpers ---

    fn other_members(&self) -> Vec<NodeId> {
        self.membership
            .members
            .iter()
            .map(|member| member.id)
            .filter(|&id| id != self.id)
            .collect()
    }

    fn other_voters(&self) -> Vec<NodeId> {
        self.membership
            .voters()
            .filter(|&id| id != self.id)
            .collect()
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.outputs.push(Output::Send(Message {
            from: self.id,
            to,
            epoch: self.epoch,
            body,
        }));
    }

    fn reply(&mut self, token: ClientToken, response: Response) {
        self.outputs.push(Output::Reply { token, response });
    }

    fn meta(&self) -> ResponseMeta {
        ResponseMeta {
            node_id: self.id,
            epoch: self.epoch,
            index: self.applied_index,
        }
    }

    fn not_primary(&self) -> Error {
        let hint = self
            .primary
            .filter(|&id| id != self.id)
            .and_then(|id| self.membership.get(id))
            .map(|member| (member.id, member.client_addr.clone()));
        Error::NotPrimary {
            node: self.id,
            epoch: self.epoch,
            hint,
        }
    }
}

/// Approximate encoded size of an entry, for batching.
fn entry_size(entry: &Entry) -> usize {
    let payload = match &entry.operation {
        Operation::Put { key, value } => key.len() + value.len(),
        Operation::Delete { key } => key.len(),
        Operation::Noop => 0,
        Operation::Membership(membership) => membership.members.len() * 64,
    };
    payload + 32
}
