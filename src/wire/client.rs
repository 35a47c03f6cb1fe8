//! The client protocol: requests a client sends to any node's client port, and the responses.
//!
//! A client session is one bidirectional QUIC stream carrying request and response frames in
//! turn. Every response says which node answered, at which epoch, and which log index it reflects.

use serde::{Deserialize, Serialize};

use crate::error::Error;
pub use crate::wire::message::{Answer, WriteResult};
use crate::wire::message::{Epoch, LogIndex, Member, NodeId, RequestId};

/// How many replicas must have a write before the client is acknowledged (see "Replication and write
/// concern" in `docs/ARCHITECTURE.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteConcern {
    /// The primary has flushed the entry. May be rolled back by a failover (kept in `rollback`).
    One,
    /// `n` voters, the primary included, have flushed the entry.
    Count(u32),
    /// The entry is committed: durable on a majority of voters. Never lost.
    #[default]
    Majority,
    /// Committed, and flushed by every member of the in-sync set.
    All,
}

impl std::str::FromStr for WriteConcern {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "majority" => Ok(WriteConcern::Majority),
            "all" => Ok(WriteConcern::All),
            "1" => Ok(WriteConcern::One),
            other => match other.parse::<u32>() {
                Ok(0) | Err(_) => Err(Error::InvalidRequest(format!(
                    "write concern {other:?} is not one of 1, N (a positive number), majority, all"
                ))),
                Ok(count) => Ok(WriteConcern::Count(count)),
            },
        }
    }
}

impl std::fmt::Display for WriteConcern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteConcern::One => write!(f, "1"),
            WriteConcern::Count(n) => write!(f, "{n}"),
            WriteConcern::Majority => write!(f, "majority"),
            WriteConcern::All => write!(f, "all"),
        }
    }
}

/// How fresh a read must be (see "Replication and write concern" in `docs/ARCHITECTURE.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadConsistency {
    /// Served by the primary once it has confirmed it still leads, reflecting every write
    /// committed before the read began.
    #[default]
    Linearizable,
    /// The primary's applied state, without confirming leadership.
    Local,
    /// Any node's applied state; may be behind.
    Stale,
}

impl std::str::FromStr for ReadConsistency {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "linearizable" => Ok(ReadConsistency::Linearizable),
            "local" => Ok(ReadConsistency::Local),
            "stale" => Ok(ReadConsistency::Stale),
            other => Err(Error::InvalidRequest(format!(
                "read consistency {other:?} is not one of linearizable, local, stale"
            ))),
        }
    }
}

impl std::fmt::Display for ReadConsistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            ReadConsistency::Linearizable => "linearizable",
            ReadConsistency::Local => "local",
            ReadConsistency::Stale => "stale",
        };
        f.write_str(name)
    }
}

/// A client request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Read one key.
    Get {
        key: Vec<u8>,
        consistency: ReadConsistency,
    },
    /// One page of the pairs whose key starts with `prefix`, in key order: those after
    /// `start_after` (the last key of the previous page; `None` for the first page), at most
    /// `limit` of them. The node also caps the page (`max_scan_page_pairs`,
    /// `max_scan_page_bytes`), so a page always fits one client frame; [`Response::Pairs`] says
    /// whether more remain. Each page is consistent at its own index (`meta.index`); a scan of
    /// many pages is not one snapshot.
    Scan {
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: u32,
        consistency: ReadConsistency,
    },
    /// The expiry of one key (`TTL`, `PTTL`), at the consistency asked, as a read sees it.
    GetExpiry {
        key: Vec<u8>,
        consistency: ReadConsistency,
    },
    /// A write: put or delete.
    Write {
        request_id: RequestId,
        write: Write,
        write_concern: WriteConcern,
        /// How long the node may wait for the write concern before answering
        /// [`Error::WriteConcernNotMet`].
        timeout_ms: u64,
    },
    /// This node's view of the cluster.
    Status,
    /// Adds a member as a non-voting learner; the primary makes it a voter once it has caught up.
    /// Allowed to `admin` certificates, and to a node's own certificate for itself (`--join`).
    AddMember { member: Member },
    /// Removes a member. Allowed to `admin` certificates only. Removing the primary makes it step
    /// down once the change is committed.
    RemoveMember { id: NodeId },
    /// A change or listing of users and API tokens (admin only; served by the primary).
    Credentials(CredentialsRequest),
    /// Opens a change feed: the stream is answered with [`WatchEvent`] frames, not one
    /// [`Response`], until the watch ends. Every committed change of a key under `prefix` with a
    /// log index of at least `from` (or, when `None`, after the index the node has applied), in
    /// index order. With `initial`, the values under the prefix at one index come first
    /// ([`WatchEvent::Initial`]), then every change after that index. Any node serves it, from its
    /// own committed log; a `readonly` certificate may watch.
    Watch {
        prefix: Vec<u8>,
        from: Option<LogIndex>,
        initial: bool,
    },
    /// How many client keys the state holds (`DBSIZE`), read at `consistency` like a key;
    /// answered [`Response::KeyCount`]. A key past its deadline counts until the primary deletes
    /// it, as in Redis.
    CountKeys { consistency: ReadConsistency },
}

/// The requests about users and API tokens, which are replicated state (docs/ARCHITECTURE.md,
/// "Users and API tokens"). Every one is allowed to the `admin` role only and is served by the
/// primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CredentialsRequest {
    /// Adds a user with a password (hashed by the primary) and a role.
    UserAdd {
        request_id: RequestId,
        name: String,
        role: ClientRole,
        password: Secret,
    },
    /// Sets a user's password, keeping the role.
    UserPasswd {
        request_id: RequestId,
        name: String,
        password: Secret,
    },
    /// Removes a user: from the index it applies at, no node accepts its password.
    UserRemove { request_id: RequestId, name: String },
    /// Every user, by name; answered [`Response::Users`].
    UserList,
    /// Records an API token. The client draws the secret and sends only its SHA-256 digest, so
    /// the token is shown once, by the client, and never crosses the network.
    TokenCreate {
        request_id: RequestId,
        digest: [u8; 32],
        name: String,
        role: ClientRole,
        /// How long the token is valid, from when the primary records it; `None` never expires.
        ttl_ms: Option<u64>,
    },
    /// Every token (never its secret); answered [`Response::Tokens`].
    TokenList,
    /// Revokes the one token whose id starts with `token`, or whose name is `token`.
    TokenRevoke {
        request_id: RequestId,
        token: String,
    },
}

/// The role of a user or an API token: what a client certificate's role can be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientRole {
    ReadOnly,
    ReadWrite,
    Admin,
}

impl Request {
    /// The consistency of a read of the state (a key, a scan page, a key's expiry), which a
    /// node answers at once or not at all; `None` for anything else.
    pub fn read_consistency(&self) -> Option<ReadConsistency> {
        match self {
            Request::Get { consistency, .. }
            | Request::Scan { consistency, .. }
            | Request::GetExpiry { consistency, .. }
            | Request::CountKeys { consistency } => Some(*consistency),
            _ => None,
        }
    }
}

impl ClientRole {
    pub fn name(self) -> &'static str {
        match self {
            ClientRole::ReadOnly => "readonly",
            ClientRole::ReadWrite => "readwrite",
            ClientRole::Admin => "admin",
        }
    }
}

impl std::fmt::Display for ClientRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ClientRole {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        [
            ClientRole::ReadOnly,
            ClientRole::ReadWrite,
            ClientRole::Admin,
        ]
        .into_iter()
        .find(|role| role.name() == text.trim().to_ascii_lowercase())
        .ok_or_else(|| {
            Error::InvalidRequest(format!(
                "role {text:?} is not one of readonly, readwrite, admin"
            ))
        })
    }
}

/// A password on its way to the node: shown as `<secret>` by `Debug`, so no log prints it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// One user, as [`Request::UserList`] answers it (never the password hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub role: ClientRole,
    /// When the user was added, in milliseconds since the Unix epoch (the primary's clock).
    pub created_ms: u64,
}

/// One API token, as [`Request::TokenList`] answers it (never the secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The first hex digits of the token's digest: enough to name it in `kvctl token revoke`.
    pub id: String,
    pub name: String,
    pub role: ClientRole,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
}

/// One committed change a watch delivers: the revision is the log index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The log index of the entry that made the change.
    pub index: LogIndex,
    /// The epoch in which the entry was appended.
    pub epoch: Epoch,
    pub key: Vec<u8>,
    /// The new value; `None` for a delete.
    pub value: Option<Vec<u8>>,
}

/// A frame of a watch stream ([`Request::Watch`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchEvent {
    /// Every change up to `index` under the prefix has been delivered. Sent first (where the
    /// watch starts: `from - 1`), and then whenever the watch has been idle for a while (etcd's
    /// progress notification), so a client knows how fresh it is and resumes after `index`.
    Progress { index: LogIndex },
    /// A committed change.
    Change(Change),
    /// A page of the values under the prefix at `index` (a watch with `initial`); `more` says
    /// whether pages follow. After the last one come the changes after `index`.
    Initial {
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        index: LogIndex,
        more: bool,
    },
    /// The watch ended: [`Error::Compacted`] (the log no longer holds `from`),
    /// [`Error::WatchLagging`] (the watcher fell too far behind; resume after its last index),
    /// [`Error::ShuttingDown`], or a refusal. Last frame of the stream.
    End(Error),
}

/// The write part of [`Request::Write`]. Every write is decided by the primary against its state
/// including the writes it has accepted but not applied yet, and logged as its outcome (plain
/// puts, deletes and batches), so replays and backups agree without deciding anything. A put
/// or delete also clears the key's expiry, as Redis's `SET` and `DEL` do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Sets `key` to `value` if `condition` holds; answers [`Answer::Applied`], or with `get`
    /// [`Answer::Previous`] (the value before, whether or not the condition held).
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
        condition: Condition,
        expiry: Expiry,
        get: bool,
    },
    /// Adds `by` to the decimal integer at `key` (0 if absent), keeping its expiry; answers
    /// [`Answer::Integer`] with the new value. A value that is not an integer, or a sum that
    /// overflows, is refused with [`Error::InvalidRequest`] and changes nothing.
    Increment {
        key: Vec<u8>,
        by: i64,
    },
    /// Appends `suffix` to the value at `key` (empty if absent), keeping its expiry; answers
    /// [`Answer::Integer`] with the new length.
    Append {
        key: Vec<u8>,
        suffix: Vec<u8>,
    },
    /// Removes `key`; answers [`Answer::Previous`] with its value.
    GetDelete {
        key: Vec<u8>,
    },
    /// Changes the expiry of an existing `key` (`Expiry::Keep` changes nothing); answers
    /// [`Answer::Applied`]: whether the key exists and, for `Expiry::Clear`, whether it had one.
    /// A deadline already past deletes the key.
    Expire {
        key: Vec<u8>,
        expiry: Expiry,
    },
    /// Sets every pair, in one log entry: all or none (`MSET`). Clears their expiries.
    PutMany {
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

impl Write {
    /// Every key the write names.
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            Write::Put { key, .. }
            | Write::Delete { key }
            | Write::Set { key, .. }
            | Write::Increment { key, .. }
            | Write::Append { key, .. }
            | Write::GetDelete { key }
            | Write::Expire { key, .. } => vec![key.as_slice()],
            Write::PutMany { pairs } => pairs.iter().map(|(key, _)| key.as_slice()).collect(),
        }
    }
}

/// When a [`Write::Set`] applies, judged on the key's live value (an expired key is absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    #[default]
    Always,
    /// Only if the key is absent (`NX`, `kvctl put --if-absent`).
    IfAbsent,
    /// Only if the key exists (`XX`).
    IfPresent,
    /// Only if the key's version (the index of the entry that last wrote it) is this one; 0
    /// means the key is absent (HTTP `if-version`, `kvctl put --if-version`). etcd's
    /// compare-and-set on `mod_revision`.
    IfVersion(LogIndex),
}

impl Condition {
    /// What the key was when this condition failed, as the doors say it ("key K exists").
    pub fn unmet(&self) -> String {
        match self {
            Condition::Always => "was not written".to_string(),
            Condition::IfAbsent => "exists".to_string(),
            Condition::IfPresent => "does not exist".to_string(),
            Condition::IfVersion(version) => format!("is not at version {version}"),
        }
    }
}

/// What a write does to its key's expiry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expiry {
    /// Remove it: the key lives until deleted (a plain `SET`, `PERSIST`).
    #[default]
    Clear,
    /// Leave it as it is (`KEEPTTL`).
    Keep,
    /// The key expires at this time: milliseconds since the Unix epoch, on the primary's clock.
    /// Doors turn relative times (`EX`, `--ttl`) into this with their node's clock.
    At(u64),
}

/// Where a response comes from: the node, its epoch, and the log index the answer reflects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseMeta {
    pub node_id: NodeId,
    pub epoch: Epoch,
    pub index: LogIndex,
}

/// A response to a client request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answers [`Request::Get`]: the live value, and its version (the index of the entry that
    /// last wrote it; 0 when the key is absent).
    Value {
        value: Option<Vec<u8>>,
        version: LogIndex,
        meta: ResponseMeta,
    },
    /// A page of a [`Request::Scan`]. When `more` is set, pairs past this page remain: the next
    /// page starts after the last key of this one (its continuation key, not repeated here, so a
    /// page holding a maximal key and value still fits one frame).
    Pairs {
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        more: bool,
        meta: ResponseMeta,
    },
    Written {
        result: WriteResult,
        meta: ResponseMeta,
    },
    /// Answers [`Request::GetExpiry`]: whether the key exists (live), and its deadline in
    /// milliseconds since the Unix epoch, if it has one.
    Expiry {
        exists: bool,
        deadline: Option<u64>,
        meta: ResponseMeta,
    },
    Status(Box<ClusterStatus>),
    Error(Error),
    /// Answers [`Request::UserList`].
    Users(Vec<UserInfo>),
    /// Answers [`Request::TokenList`].
    Tokens(Vec<TokenInfo>),
    /// Answers [`Request::CountKeys`].
    KeyCount {
        count: u64,
        meta: ResponseMeta,
    },
}

/// The role a node plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Primary,
    Backup,
    Candidate,
    Learner,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
        };
        f.write_str(name)
    }
}

/// How the primary sees a member (see "Roles and elections" in `docs/ARCHITECTURE.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberHealth {
    /// Acks heartbeats and is caught up.
    Healthy,
    /// Reachable but behind.
    Lagging,
    /// A resync is in progress.
    CatchingUp,
    /// No ack for `failure_timeout`.
    Unreachable,
    /// This node itself.
    Local,
    /// Not known from this node (it is not the primary).
    Unknown,
}

impl std::fmt::Display for MemberHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            MemberHealth::Healthy => "healthy",
            MemberHealth::Lagging => "lagging",
            MemberHealth::CatchingUp => "catching-up",
            MemberHealth::Unreachable => "unreachable",
            MemberHealth::Local => "local",
            MemberHealth::Unknown => "unknown",
        };
        f.write_str(name)
    }
}

/// One row of `kvctl status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub member: Member,
    pub role: Option<Role>,
    /// Highest index known to be in the member's log.
    pub last_index: Option<LogIndex>,
    /// Highest index known to be durable on the member.
    pub durable_index: Option<LogIndex>,
    /// Entries behind the primary's last index.
    pub lag: Option<u64>,
    pub health: MemberHealth,
    /// Milliseconds since the member last acknowledged a heartbeat.
    pub last_heartbeat_ms: Option<u64>,
}

/// A node's view of the cluster, answered to [`Request::Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub role: Role,
    pub epoch: Epoch,
    pub primary: Option<NodeId>,
    pub last_index: LogIndex,
    pub durable_index: LogIndex,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    /// Entries this node has moved to its `rollback` tree, over its lifetime.
    pub rolled_back_entries: u64,
    pub members: Vec<MemberStatus>,
}

/// Pushed by a node to its connected clients (on a server-initiated unidirectional stream) when it
/// learns of a new primary, so clients redirect without waiting for an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub epoch: Epoch,
    pub primary: Option<NodeId>,
    pub members: Vec<Member>,
}
