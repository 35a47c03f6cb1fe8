//! The peer protocol: messages between nodes, and the log entries they carry.
//!
//! Every [`Message`] carries the sender's epoch. A receiver that sees a higher epoch adopts it and
//! steps down to backup; a message from a lower epoch is refused with [`MessageBody::StaleEpoch`]
//! so that a deposed primary learns of its demotion from the first reply. This is the fence that
//! keeps at most one primary per epoch effective.

use serde::{Deserialize, Serialize};

/// A node's identity, fixed for its lifetime and written in its certificate.
pub type NodeId = u64;

/// A primary's reign. Every election moves to a higher epoch; at most one primary per epoch.
pub type Epoch = u64;

/// A position in the operation log. The first entry has index 1; index 0 means "before the log".
pub type LogIndex = u64;

/// Identifies a client request so that a retry is applied at most once: the client id is random per
/// client session and the sequence grows by one per write of that session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub client_id: u64,
    pub sequence: u64,
}

/// The result of a write as remembered in the sessions table, so that a retry gets the same answer.
/// It answers a client write (`Response::Written` of the client protocol) and travels in snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    /// The log index of the entry that performed the write.
    pub index: LogIndex,
    /// Whether the key existed before the write.
    pub existed: bool,
    /// The answer of a read-modify-write, as the primary decided it (`None` for a plain put or
    /// delete). It is logged with the outcome, so a retry is answered the same on any node.
    pub answer: Option<Answer>,
}

/// What a read-modify-write answers, decided by the primary against its state including the
/// writes it accepted but has not applied yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// Whether the write's condition held and it changed the state (`SETNX`, `SET NX|XX`,
    /// compare-and-set, `EXPIRE`, `PERSIST`).
    Applied(bool),
    /// The key's live value before the write (`GETDEL`, `SET … GET`).
    Previous(Option<Vec<u8>>),
    /// A number: the new value of `INCR`, the new length of `APPEND`.
    Integer(i64),
}

/// One change of an [`Operation::Batch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

impl Change {
    /// The key this change writes.
    pub fn key(&self) -> &[u8] {
        match self {
            Change::Put { key, .. } | Change::Delete { key } => key,
        }
    }
}

/// The last result of one client session: a row of a node's `sessions` table, carried to a
/// lagging member inside a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub last_sequence: u64,
    pub result: WriteResult,
}

/// A change to the replicated state, as stored in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// Appended by a new primary in its epoch; committing it commits every earlier entry.
    Noop,
    /// Set `key` to `value`.
    Put { key: Vec<u8>, value: Vec<u8> },
    /// Remove `key`.
    Delete { key: Vec<u8> },
    /// Replace the membership. Takes effect on each node as soon as it is appended to its log.
    Membership(Membership),
    /// Forget these client sessions: the primary found them idle for longer than
    /// `session_ttl_ms` on its clock. Applied like any entry, so every node drops the same
    /// sessions at the same index. A session whose last sequence moved on since is kept.
    ExpireSessions(Vec<ExpiredSession>),
    /// Changes applied together, atomically, as one entry: a multi-key put (`MSET`), or the
    /// outcome of a read-modify-write (a key and its expiry records). `answer` is what the
    /// primary decided the request answers; it is stored in the session like any result.
    Batch {
        changes: Vec<Change>,
        answer: Option<Answer>,
    },
}

impl Operation {
    /// Every key of the state this operation writes, client and system keys alike (a snapshot
    /// being streamed must resend each of them).
    pub fn touched_keys(&self) -> Vec<&[u8]> {
        match self {
            Operation::Put { key, .. } | Operation::Delete { key } => vec![key.as_slice()],
            Operation::Batch { changes, .. } => changes.iter().map(Change::key).collect(),
            Operation::Noop | Operation::Membership(_) | Operation::ExpireSessions(_) => Vec::new(),
        }
    }
}

/// A value of the state with its version: the index of the log entry that last wrote its key
/// (etcd's `mod_revision`). Every node applies the same entry at the same index, so every node
/// agrees on a key's version; a snapshot carries it. A compare-and-set names it
/// ([`Condition::IfVersion`](crate::wire::client::Condition::IfVersion)).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    pub version: LogIndex,
    pub value: Vec<u8>,
}

/// A session the primary decided to expire, as it was when it decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiredSession {
    pub client_id: u64,
    /// The session's last sequence when the primary chose it; a newer write keeps the session.
    pub last_sequence: u64,
}

/// One log entry. Entries are appended, never rewritten; only a divergent suffix is moved aside
/// (to the `rollback` tree) during log repair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub epoch: Epoch,
    pub index: LogIndex,
    pub operation: Operation,
    /// Present for client writes; used to apply each request at most once.
    pub request_id: Option<RequestId>,
}

/// A member of the cluster as every node knows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    /// Address clients connect to (`host:port`).
    pub client_addr: String,
    /// Address peers connect to (`host:port`).
    pub peer_addr: String,
    /// Voters count towards majorities and may become primary; learners only receive the log.
    pub voter: bool,
}

/// The cluster's membership: sorted by id so that every iteration order is deterministic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub members: Vec<Member>,
}

impl Membership {
    /// Builds a membership, sorting the members by id.
    pub fn new(mut members: Vec<Member>) -> Self {
        members.sort_by_key(|member| member.id);
        Membership { members }
    }

    /// The member with this id, if any.
    pub fn get(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|member| member.id == id)
    }

    /// Ids of the voters, ascending.
    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().filter(|m| m.voter).map(|m| m.id)
    }

    /// Whether `id` is a voter.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.get(id).is_some_and(|member| member.voter)
    }

    /// The number of voters that makes a majority.
    pub fn majority(&self) -> usize {
        self.voters().count() / 2 + 1
    }
}

/// A node's standing in an election: freshness of its log first, then its id. Compared
/// lexicographically, so `derive(Ord)` on this field order is the ranking rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rank {
    pub last_epoch: Epoch,
    pub last_index: LogIndex,
    pub node_id: NodeId,
}

/// A message between two nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's current epoch: the fence of the protocol.
    pub epoch: Epoch,
    pub body: MessageBody,
}

/// The meaning of each message in the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Primary → member, every `heartbeat_interval`, on the heartbeat stream. Says "I still lead
    /// this epoch", carries the commit index and the membership, and opens a round `round` that
    /// the primary uses to confirm its leadership for linearizable reads.
    Heartbeat {
        commit_index: LogIndex,
        membership: Membership,
        round: u64,
    },
    /// Member → primary, answer to a heartbeat. `durable_index` and `last_index` describe the
    /// member's log, for status and for retransmission decisions; they do not prove a log match.
    HeartbeatAck {
        round: u64,
        durable_index: LogIndex,
        last_index: LogIndex,
        /// How far the member knows its log matches the primary's in this epoch. A member that
        /// restarted knows nothing; the primary then probes it with an empty append.
        verified_index: LogIndex,
    },
    /// Primary → member, on the replication stream: `entries` follow the entry at
    /// `(base_epoch, base_index)`. Many appends may be in flight (pipelining).
    Append {
        base_index: LogIndex,
        base_epoch: Epoch,
        entries: Vec<Entry>,
        commit_index: LogIndex,
        /// Read back from storage for a member that is behind (resync); such appends travel on
        /// the resync stream so that live replication never waits behind them.
        catch_up: bool,
    },
    /// Member → primary: the member's log matches the primary's up to `match_index`, and that
    /// prefix is durable (flushed) on the member.
    AppendAck { match_index: LogIndex },
    /// Member → primary: the base of an append did not match. The member's log may match only up
    /// to `hint` (its last index, or the index before the first conflicting epoch); the primary
    /// walks back and resends from `hint + 1`.
    AppendRejected { hint: LogIndex },
    /// Would-be candidate → voters, before it moves to a new epoch (Raft's pre-vote): "would you
    /// elect me in the message epoch?". Nobody changes state on it, so a node cut off from a live
    /// primary cannot inflate its epoch and depose that primary when it reconnects.
    PreElection { rank: Rank },
    /// Voter → would-be candidate: whether it would grant its vote. Sent with the voter's own
    /// epoch, which may be lower than the one asked about.
    PreVote { granted: bool },
    /// Candidate → voters: "elect me for `epoch`". The message epoch is the candidate's new epoch.
    Election { rank: Rank },
    /// Voter → candidate: the bully's "I am bigger, stand down". The sender has a higher rank and
    /// runs its own election.
    Alive { rank: Rank },
    /// Voter → candidate: the vote for the message epoch, granted or not. A granted vote was
    /// persisted before it was sent; a voter grants at most one vote per epoch.
    Vote { granted: bool },
    /// New primary → members: "I am the primary of this epoch".
    Coordinator,
    /// Reply to a message from a lower epoch; the message epoch tells the sender the current one.
    StaleEpoch,
    /// Primary → member whose next entry was compacted away, on the resync stream: opens snapshot
    /// transfer `transfer`. The member answers [`MessageBody::SnapshotStaged`] with what it has
    /// staged from earlier transfers, so the transfer can resume there instead of from the first
    /// key. Resent until answered.
    SnapshotOffer { transfer: u64 },
    /// Member → primary: answer to [`MessageBody::SnapshotOffer`]: how far the member's staged
    /// snapshot got, if it holds one that a transfer may continue.
    SnapshotStaged {
        transfer: u64,
        staged: Option<StagedSnapshot>,
    },
    /// Primary → member, on the resync stream: one chunk of a snapshot of the primary's state and
    /// sessions. Chunks of one `transfer` are numbered from 0 and staged by the member strictly in
    /// sequence order (go-back-N); the chunk carrying `finish` installs the whole snapshot
    /// atomically. Every chunk, the last included, stays within the sender's `max_append_bytes`
    /// (plus at most one pair and the key of `position`), so it always fits a peer frame.
    SnapshotChunk {
        transfer: u64,
        sequence: u64,
        /// Every value staged so far, this chunk's included, is the committed value at an index
        /// at or above this one (the transfer's begin index).
        begin_index: LogIndex,
        /// Chunk 0 only: discard whatever is staged first (the transfer does not resume).
        discard_staged: bool,
        /// Where the transfer stands once this chunk is staged (what a resumed transfer sends
        /// next).
        position: SnapshotPosition,
        /// Keys and their versioned values; `None` deletes a key staged by an earlier chunk.
        pairs: Vec<(Vec<u8>, Option<Versioned>)>,
        /// Session records by client id; `None` deletes a session staged by an earlier chunk.
        sessions: Vec<(u64, Option<Session>)>,
        finish: Option<SnapshotFinish>,
    },
    /// Member → primary: every chunk of `transfer` before `next_sequence` is staged. Sent for
    /// every chunk received, in order or not, so a gap shows as a repeated `next_sequence` and
    /// the primary resends from there.
    SnapshotAck { transfer: u64, next_sequence: u64 },
}

/// How far a snapshot transfer got through the primary's state: what it sends next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotPosition {
    /// The state, in key order, after `after` (from the first key when `None`).
    State { after: Option<Vec<u8>> },
    /// The sessions table, by client id, after `after`.
    Sessions { after: Option<u64> },
    /// The keys and sessions changed since the transfer began, until none is left.
    Changes,
}

/// What a member has staged of a snapshot: a transfer that resumes here stages on top of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedSnapshot {
    /// Every staged value is the committed value at an index at or above this one.
    pub begin_index: LogIndex,
    /// Where the transfer that staged it stood.
    pub position: SnapshotPosition,
}

/// The end of a snapshot: the log position that the staged state and sessions reflect, and the
/// membership. Small whatever the state: the sessions travel in chunks like the pairs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFinish {
    /// The snapshot reflects every entry up to and including `(epoch, index)`.
    pub index: LogIndex,
    pub epoch: Epoch,
    /// The membership in force at `index`.
    pub membership: Membership,
}

impl MessageBody {
    /// The stream a message travels on. Heartbeats and elections must never wait behind a large
    /// replication transfer, so they have a stream of their own.
    pub fn stream(&self) -> StreamKind {
        match self {
            MessageBody::Append { catch_up: true, .. }
            | MessageBody::SnapshotOffer { .. }
            | MessageBody::SnapshotStaged { .. }
            | MessageBody::SnapshotChunk { .. }
            | MessageBody::SnapshotAck { .. } => StreamKind::Resync,
            MessageBody::Append { .. }
            | MessageBody::AppendAck { .. }
            | MessageBody::AppendRejected { .. } => StreamKind::Replication,
            _ => StreamKind::Heartbeat,
        }
    }
}

/// The long-lived unidirectional QUIC streams between two nodes, one of each per direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum StreamKind {
    /// Heartbeats, their acks, and election messages.
    Heartbeat,
    /// Live log appends and their acks.
    Replication,
    /// Catch-up appends read from storage and snapshot chunks, for members that are behind.
    Resync,
}
