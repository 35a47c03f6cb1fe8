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
//!   that covers it has been reported through [`Node::flushed`], or made at opening: [`Node::new`]
//!   flushes the store before it counts the log it finds as durable.
//! - Any protocol invariant found broken (two primaries in one epoch, an order to truncate a
//!   committed entry, a gap in an append) is returned as [`Error::Internal`], whose kind stops
//!   the node ([`crate::error::ErrorKind::stops_the_node`]): it no longer trusts its own state.
//! - A linearizable read is served only while the primary holds a lease: a majority acknowledged a
//!   heartbeat sent less than `failure_timeout` ago, so no other primary can have been elected.
//!
//! This file holds the state, construction, the entry points and their dispatch. The handlers are
//! `impl Node` blocks in one file per idea:
//! - `election`: roles, pre-votes, elections, becoming primary or backup;
//! - `log`: the [`Log`] type (positions, cache, reads and writes of entries);
//! - `replication`: the primary's side (heartbeats, lease, appends, commit) and the backup's side
//!   (appends, conflicts, acks);
//! - `requests`: client writes, write concern and reads;
//! - `decide`: what a write changes and answers, judged on the primary's speculative state;
//! - `expiry`: hiding keys past their deadline from reads, and the primary's sweep deleting them;
//! - `snapshot`: log compaction, and sending and installing snapshots;
//! - `sessions`: expiring idle client sessions (decided by the primary, replicated in the log);
//! - `membership`: the membership in force, changes to it, and learner promotion.

mod decide;
mod election;
mod expiry;
mod log;
mod membership;
mod replication;
mod requests;
mod sessions;
mod snapshot;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tracing::{debug, info, warn};

use crate::core::progress::Progress;
use crate::core::{ClientToken, FlushTicket, Options, Output, Timestamp};
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::wire::client::{
    ClusterStatus, MemberHealth, MemberStatus, Request, Response, ResponseMeta, Role,
};
use crate::wire::message::{Epoch, LogIndex, Membership, Message, MessageBody, NodeId, RequestId};

pub use self::decide::{parse_integer, NOT_AN_INTEGER, OVERFLOW};
use self::expiry::KeyExpiry;
use self::log::Log;
use self::membership::MembershipChange;
pub use self::requests::MAX_REQUEST_TIMEOUT_MS;
use self::requests::{PendingRead, PendingWrite};
use self::sessions::SessionExpiry;
pub use self::snapshot::SnapshotCounters;
use self::snapshot::{Chunk, ChunkHeader, IncomingSnapshot, SnapshotTransfer};

/// Committed entries a backup leaves unapplied until its next tick; past this many it applies at
/// the end of the pass, so the entries kept in memory for its apply stay bounded.
pub const MAX_UNAPPLIED_ON_BACKUP: LogIndex = 4096;

/// Failure timeouts without a word from a live primary after which a node that is not one is cut
/// off ([`Node::cut_off_from_primary`]): more than an election takes, with room for a second
/// round, so a failover alone does not cut its backups off.
pub const CUT_OFF_AFTER_FAILURE_TIMEOUTS: u64 = 3;

/// This node's part in the current epoch.
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

/// State that exists only while this node is primary.
#[derive(Debug)]
struct PrimaryState {
    /// What this primary knows about each other member's log.
    progress: BTreeMap<NodeId, Progress>,
    /// The current heartbeat round.
    round: u64,
    /// The recent rounds: when each was sent, and who acknowledged it (for the lease).
    rounds: BTreeMap<u64, (Timestamp, BTreeSet<NodeId>)>,
    /// When the next heartbeat round is due.
    next_heartbeat: Timestamp,
    /// Linearizable reads may be served before this time.
    lease_until: Timestamp,
    /// When this node won its election: members not yet heard from count as heard from then.
    elected_at: Timestamp,
    /// The no-op of this epoch: nothing is committed for reads until it is.
    noop_index: LogIndex,
    /// Writes waiting for their write concern, by log index.
    writes: BTreeMap<LogIndex, Vec<PendingWrite>>,
    /// Log index of each write request in the unapplied suffix, so a retry joins it; ordered by
    /// client then sequence, so a client's newest sequence in flight is one lookup away.
    requests: BTreeMap<RequestId, LogIndex>,
    /// Linearizable reads waiting for the lease and this epoch's no-op to commit.
    reads: Vec<PendingRead>,
    /// Snapshots being streamed to members whose next entry was compacted away.
    transfers: BTreeMap<NodeId, SnapshotTransfer>,
    /// The id of the last snapshot transfer started.
    next_transfer: u64,
    /// When clients were last seen, and the sweep that expires idle sessions.
    session_expiry: SessionExpiry,
    /// The sweep that deletes keys past their deadline.
    key_expiry: KeyExpiry,
}

/// A replikv node's protocol state.
pub struct Node {
    /// This node's id.
    id: NodeId,
    /// Timing and size settings.
    options: Options,
    /// The state machine, sessions and metadata (the log is reached through `log`).
    storage: Arc<dyn Storage>,
    /// The only source of randomness (election jitter), seeded by the driver.
    rng: StdRng,
    /// The membership in force: the latest membership entry in the log, or the applied one.
    membership: Membership,
    /// Index of the log entry that set `membership` (0 when it came from storage or config).
    membership_index: LogIndex,
    /// The membership of the latest applied membership entry (persisted with the state).
    applied_membership: Membership,
    /// The highest epoch this node has seen (persisted, with `vote`).
    epoch: Epoch,
    /// The candidate this node voted for in `epoch`, if any (persisted before it is sent).
    vote: Option<NodeId>,
    /// Backup, (pre-)candidate, or primary with its primary-only state.
    role: RoleState,
    /// The primary of the current epoch, once known.
    primary: Option<NodeId>,
    /// The operation log: its positions, its cache and its entries in storage.
    log: Log,
    /// The highest index known committed (durable on a majority, or told so by the primary).
    commit_index: LogIndex,
    /// The commit index last written to storage (it is persisted lazily, on tick).
    persisted_commit_index: LogIndex,
    /// The highest index applied to the state; never above `commit_index`.
    applied_index: LogIndex,
    /// Backup: this node's log matches the current primary's up to here.
    verified_index: LogIndex,
    /// Backup: the last `match_index` sent in an `AppendAck`.
    acked_index: LogIndex,
    /// When this node last heard from a live primary (or started: a restarted node must not vote
    /// at once, or it could undercut the lease of a primary it simply forgot about).
    last_heard_primary: Timestamp,
    /// A voter that reaches this time without hearing a primary asks for pre-votes.
    election_deadline: Timestamp,
    /// No compaction step before this time.
    next_compaction: Timestamp,
    /// Backup: the snapshot transfer being received, if any.
    incoming_snapshot: Option<IncomingSnapshot>,
    /// Snapshot transfers sent, resumed and installed since this node started.
    snapshot_counters: SnapshotCounters,
    /// Entries this node ever moved to the rollback tree, for status.
    rolled_back_entries: u64,
    /// The time of the entry point being handled.
    now: Timestamp,
    /// The driver's wall clock (ms since the Unix epoch), for key expiry; 0 until told.
    wall_clock: u64,
    /// Outputs produced since the last [`Node::finish_pass`].
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
        // What the log holds may still sit in a page cache (a crash of the process keeps it, a
        // power cut does not): flush it before the log counts it as durable.
        storage.flush()?;
        let meta = storage.meta()?;
        let log = Log::open(storage.clone(), meta.log_start)?;
        let last_index = log.last_index();
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
            log,
            commit_index: meta.commit_index.max(meta.applied_index).min(last_index),
            persisted_commit_index: meta.commit_index,
            applied_index: meta.applied_index,
            verified_index: 0,
            acked_index: 0,
            last_heard_primary: now,
            election_deadline: now,
            next_compaction: now,
            incoming_snapshot: None,
            snapshot_counters: SnapshotCounters::default(),
            rolled_back_entries,
            now,
            wall_clock: 0,
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
        self.log.last_index()
    }

    pub fn durable_index(&self) -> LogIndex {
        self.log.durable_index()
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

    /// Snapshot transfers sent, resumed and installed since this node started.
    pub fn snapshot_counters(&self) -> SnapshotCounters {
        self.snapshot_counters
    }

    /// The storage the node runs on (the driver flushes it).
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    // --- entry points ---

    /// Ends one pass of the driver (every entry point it called since the last pass) and takes
    /// the outputs produced. The work that batches well is done here, once per pass rather than
    /// once per message: every entry appended during the pass is written to storage in one append;
    /// on the primary, entries committed during the pass are applied in one storage apply; the writes and reads that this settles are answered; and every entry
    /// appended since the last pass goes out in one append per member.
    pub fn finish_pass(&mut self) -> Result<Vec<Output>> {
        // One storage append for every entry the pass appended (see `log`).
        self.log.write()?;
        // A backup's applied state serves only stale reads (watches follow the commit index),
        // so it applies once per tick instead (unless much is pending): one storage apply per
        // tick, not per `Append`.
        if self.is_primary() || self.commit_index - self.applied_index >= MAX_UNAPPLIED_ON_BACKUP {
            self.apply_committed()?;
        }
        self.answer_writes();
        self.answer_reads()?;
        self.replicate_from_cache();
        Ok(std::mem::take(&mut self.outputs))
    }

    /// A flush the node needs, if its log has entries that are not yet durable. Entries are
    /// written to storage by [`Node::finish_pass`], so a driver ends its pass before it asks.
    pub fn flush_needed(&self) -> Option<FlushTicket> {
        self.log.flush_needed()
    }

    /// The driver finished the flush for `ticket`: everything written before it started is durable.
    pub fn flushed(&mut self, now: Timestamp, ticket: FlushTicket) -> Result<()> {
        self.now = now;
        if !self.log.flushed(ticket) {
            return Ok(());
        }
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
        self.apply_committed()?;
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

    /// The primary's timers: step down without a majority, else heartbeats, retransmission,
    /// snapshots, learner promotion and request deadlines.
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
        self.expire_sessions()?;
        self.expire_keys()?;
        self.promote_caught_up_learner()?;
        self.expire_requests();
        self.answer_reads()?;
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
                return self.on_pre_election(message.from, message.epoch, rank);
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
            } => self.on_heartbeat(message.from, commit_index, membership, round)?,
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
            MessageBody::Alive { rank } => self.on_alive(message.from, rank),
            MessageBody::Vote { granted } => {
                if granted {
                    self.on_vote(message.from)?;
                }
            }
            MessageBody::Coordinator => self.follow(message.from)?,
            MessageBody::SnapshotOffer { transfer } => {
                self.follow(message.from)?;
                self.on_snapshot_offer(message.from, transfer)?;
            }
            MessageBody::SnapshotStaged { transfer, staged } => {
                self.on_snapshot_staged(message.from, transfer, staged)?
            }
            MessageBody::SnapshotChunk {
                transfer,
                sequence,
                begin_index,
                discard_staged,
                position,
                pairs,
                sessions,
                finish,
            } => {
                self.follow(message.from)?;
                let header = ChunkHeader {
                    transfer,
                    sequence,
                    begin_index,
                    discard_staged,
                    position,
                };
                let chunk = Chunk {
                    pairs,
                    sessions,
                    finish,
                };
                self.on_snapshot_chunk(message.from, header, chunk)?;
            }
            MessageBody::SnapshotAck {
                transfer,
                next_sequence,
            } => self.on_snapshot_ack(message.from, transfer, next_sequence)?,
            // The epoch was adopted above; a pre-vote from a higher epoch only carried it.
            MessageBody::StaleEpoch
            | MessageBody::PreElection { .. }
            | MessageBody::PreVote { .. } => {}
        }
        Ok(())
    }

    /// The client of request `token` went away: drop whatever the request still waits for, so it
    /// holds no memory until its deadline. No reply follows.
    pub fn cancel(&mut self, token: ClientToken) {
        self.forget_request(token);
    }

    /// Handles a client request; the answer comes as an [`Output::Reply`], now or later.
    pub fn request(&mut self, now: Timestamp, token: ClientToken, request: Request) -> Result<()> {
        self.now = now;
        match request {
            Request::Status => {
                let status = self.status(now);
                self.reply(token, Response::Status(Box::new(status)));
            }
            Request::Get { consistency, .. }
            | Request::Scan { consistency, .. }
            | Request::GetExpiry { consistency, .. }
            | Request::CountKeys { consistency } => {
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
            // The service turns these into reads and writes of system keys (api/auth.rs); one
            // that reaches the core is a caller's mistake, answered as such.
            Request::Credentials(_) => self.reply(
                token,
                Response::Error(Error::InvalidRequest(
                    "user and token requests are served by a node's service, not its core".into(),
                )),
            ),
            // Watches are served off the protocol, from the committed log (`api/watch.rs`).
            Request::Watch { .. } => self.reply(
                token,
                Response::Error(Error::InvalidRequest(
                    "a watch is served by the node's watch hub, not by the protocol core".into(),
                )),
            ),
        }
        Ok(())
    }

    /// This node's view of the cluster.
    pub fn status(&self, now: Timestamp) -> ClusterStatus {
        let primary_state = match &self.role {
            RoleState::Primary(state) => Some(state),
            _ => None,
        };
        let last_index = self.log.last_index();
        let members = self
            .membership
            .members
            .iter()
            .map(|member| {
                if member.id == self.id {
                    return MemberStatus {
                        member: member.clone(),
                        role: Some(self.role()),
                        last_index: Some(last_index),
                        durable_index: Some(self.log.durable_index()),
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
                let lag = last_index.saturating_sub(progress.match_index);
                let health = match age {
                    Some(age) if age < self.options.failure_timeout_ms => {
                        if lag == 0 {
                            MemberHealth::Healthy
                        } else if self.log.cache_first_index() > progress.next_index {
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
            last_index,
            durable_index: self.log.durable_index(),
            commit_index: self.commit_index,
            applied_index: self.applied_index,
            rolled_back_entries: self.rolled_back_entries,
            members,
        }
    }

    // --- helpers shared by the handlers ---

    fn is_primary(&self) -> bool {
        matches!(self.role, RoleState::Primary(_))
    }

    fn primary_state(&mut self) -> Option<&mut PrimaryState> {
        match &mut self.role {
            RoleState::Primary(state) => Some(state),
            _ => None,
        }
    }

    /// The primary's progress of `member`, if this node is primary and `member` is in it.
    fn progress_of(&mut self, member: NodeId) -> Option<&mut Progress> {
        self.primary_state()?.progress.get_mut(&member)
    }

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
