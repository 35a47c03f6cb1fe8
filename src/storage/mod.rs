//! Durable storage for a node: the operation log, the state it produces, metadata and client
//! sessions (see "Durability on disk" in `docs/ARCHITECTURE.md`).
//!
//! [`Storage`] has two engines: [`sled_engine::SledStorage`] for real nodes and
//! [`memory::MemoryStorage`] for the simulator. Both pass one test suite, apply entries with one
//! implementation ([`apply`]) and check their inputs with one set of rules (`rules`).
//!
//! Durability contract, which the memory engine models exactly:
//! - Every write method is *buffered*: it is visible to reads at once but may be lost in a crash.
//! - [`Storage::flush`] makes every write that returned before the call durable.
//! - A crash keeps a *prefix* of the writes: never a later write without the earlier ones. So the
//!   applied index never survives ahead of the log entries it applied.
//! - [`Storage::apply`] is atomic: state changes, session records and the applied index move
//!   together.
//!
//! Methods take `&self` so the I/O shell can run a flush on another thread while the protocol
//! keeps appending (group commit).

pub mod apply;
pub mod expiry;
pub mod memory;
mod rules;
pub mod sled_engine;
pub mod system_keys;

pub(crate) use rules::check_append;
pub(crate) use rules::fits as fits_in_batch;
pub use rules::{
    framed_pair_bytes, session_record_bytes, PAIR_FRAMING_BYTES, SESSION_RECORD_BYTES,
};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::wire::message::{
    Entry, Epoch, LogIndex, Membership, NodeId, Session, SnapshotFinish, StagedSnapshot, Versioned,
    WriteResult,
};

/// Metadata a node persists besides its log (the `meta` tree).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The highest epoch this node has seen.
    pub epoch: Epoch,
    /// The candidate this node voted for in `epoch`, if any.
    pub vote: Option<NodeId>,
    /// The highest index this node knows to be committed.
    pub commit_index: LogIndex,
    /// The highest index applied to `state`; written atomically with the state.
    pub applied_index: LogIndex,
    /// The membership as last configured (the log's latest membership entry wins over it).
    pub membership: Option<Membership>,
    /// The first index still in the log; entries before it were compacted into `state`.
    pub log_start: LogIndex,
    /// `(epoch, index)` of the entry just before `log_start` (the snapshot's last entry).
    pub snapshot_epoch: Epoch,
    /// How many client keys the applied state holds (system keys are not counted; a key past its
    /// deadline counts until the primary deletes it, as Redis's `DBSIZE` counts it). Moves with
    /// the applied index.
    pub key_count: u64,
}

/// One page of a prefix scan ([`Storage::scan_page`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// Pairs in key order, each value with its version.
    pub pairs: Vec<(Vec<u8>, Versioned)>,
    /// Whether pairs of the prefix remain after the last one of this page.
    pub more: bool,
}

/// An entry removed from this node's log because it diverged from the primary's, kept for the
/// operator (the `rollback` tree).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    /// The epoch this node was in when it rolled the entry back.
    pub rolled_back_in_epoch: Epoch,
    pub entry: Entry,
}

/// A node's durable store. See the module docs for the durability contract.
pub trait Storage: Send + Sync {
    // --- the log ---

    /// Appends entries after the last one. `entries` must be contiguous and start at
    /// `last_index() + 1`; violating this is a caller bug and returns an error. Not atomic: a
    /// crash before the next flush may keep any prefix of `entries`.
    fn append(&self, entries: &[Entry]) -> Result<()>;

    /// The entry at `index`, if it is in the log (not compacted, not past the end).
    fn entry(&self, index: LogIndex) -> Result<Option<Entry>>;

    /// Entries from `from` to `to` inclusive, stopping early once `max_bytes` of encoded entries
    /// have been collected (at least one entry is returned if any is in range).
    fn entries(&self, from: LogIndex, to: LogIndex, max_bytes: usize) -> Result<Vec<Entry>>;

    /// `(epoch, index)` of the last entry; `(snapshot_epoch, log_start - 1)` for an empty log, which
    /// is `(0, 0)` for a new node.
    fn last(&self) -> Result<(Epoch, LogIndex)>;

    /// Removes the entries from `from` to the end and records them in the `rollback` tree, tagged
    /// with `epoch`. Returns the removed entries.
    fn truncate_suffix(&self, from: LogIndex, epoch: Epoch) -> Result<Vec<Entry>>;

    /// Every entry ever rolled back on this node, oldest first.
    fn rolled_back(&self) -> Result<Vec<RolledBack>>;

    // --- metadata ---

    /// Everything in the `meta` tree.
    fn meta(&self) -> Result<Meta>;

    /// Persists the epoch and the vote together (buffered: flush before answering a vote).
    fn set_epoch_and_vote(&self, epoch: Epoch, vote: Option<NodeId>) -> Result<()>;

    /// Persists the commit index (buffered).
    fn set_commit_index(&self, index: LogIndex) -> Result<()>;

    /// Persists the configured membership (buffered).
    fn set_membership(&self, membership: &Membership) -> Result<()>;

    // --- state ---

    /// Applies `entries` (which must start at `applied_index + 1`) to the state atomically with
    /// the applied index and the session records. A write whose request id is not newer than its
    /// session's last sequence is a duplicate: it changes nothing and its result is the stored one.
    /// A key an entry puts takes the entry's index as its version; the key count
    /// ([`Meta::key_count`]) moves with every client key created or removed.
    fn apply(&self, entries: &[Entry]) -> Result<Vec<WriteResult>>;

    /// The value of `key` in the applied state, with its version.
    fn get_versioned(&self, key: &[u8]) -> Result<Option<Versioned>>;

    /// The value of `key` in the applied state.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.get_versioned(key)?.map(|versioned| versioned.value))
    }

    /// One page of the pairs whose key starts with `prefix` and comes after `after` (from the
    /// prefix's first key when `None`), in key order: at most `max_pairs` pairs and `max_bytes` of
    /// encoded pairs ([`framed_pair_bytes`]), but at least one pair if any is left and
    /// `max_pairs > 0`. Reads at most one pair past the page, to say whether more remain.
    /// Skips the system keyspace unless `prefix` lies inside it
    /// ([`system_keys::shown_by_scan`]).
    fn scan_page(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        max_pairs: usize,
        max_bytes: usize,
    ) -> Result<ScanPage>;

    /// Up to `limit` pairs whose key starts with `prefix`, in key order, in one read (for tests
    /// and tools; the node reads pages).
    fn scan(&self, prefix: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let page = self.scan_page(prefix, None, limit, usize::MAX)?;
        Ok(page
            .pairs
            .into_iter()
            .map(|(key, versioned)| (key, versioned.value))
            .collect())
    }

    /// The session record of `client_id`, if any.
    fn session(&self, client_id: u64) -> Result<Option<Session>>;

    /// Up to `limit` session records of the clients after `after` (from the first when `None`),
    /// by client id.
    fn sessions_after(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, Session)>>;

    /// Every session record, by client id, in one read (for tests and tools; the node reads
    /// pages).
    fn sessions(&self) -> Result<Vec<(u64, Session)>> {
        self.sessions_after(None, usize::MAX)
    }

    // --- compaction and snapshots ---

    /// Encoded bytes of the entries in the log, for the retention bound.
    fn log_bytes(&self) -> Result<u64>;

    /// How many client keys the applied state holds ([`Meta::key_count`]), in one read.
    fn key_count(&self) -> Result<u64>;

    /// How many client sessions the state holds. May walk them all: for metrics, sampled off the
    /// event loop.
    fn session_count(&self) -> Result<u64>;

    /// Bytes the store takes: sled's files on disk; for the memory engine, the keys and values of
    /// its state and the encoded entries of its log.
    fn size_bytes(&self) -> Result<u64>;

    /// Removes the entries up to and including `through`, which must be applied. The log then
    /// starts at `through + 1` and remembers the epoch of `through` as the snapshot epoch.
    fn compact(&self, through: LogIndex) -> Result<()>;

    /// Up to `max_bytes` of encoded state pairs ([`framed_pair_bytes`]) whose keys come strictly
    /// after `after`, in key order (at least one pair if any is left), and whether pairs remain
    /// after them. The whole state: unlike [`Storage::scan_page`], it skips no system key, so a
    /// snapshot carries users, tokens and key deadlines. Reads at most one pair past the chunk.
    fn state_chunk(&self, after: Option<&[u8]>, max_bytes: usize) -> Result<ScanPage>;

    /// Discards any staged snapshot and its record, and starts staging a new one, beside the
    /// live state and sessions.
    fn begin_snapshot(&self) -> Result<()>;

    /// Stages snapshot pairs and session records (`None` removes a staged key or session), then
    /// records `progress` as how far the staging got. After a crash the record found is never
    /// ahead of the staged pairs, and never names a begin index above that of a staged value: a
    /// lower begin index is recorded before the pairs, the new position after them.
    fn stage_snapshot(
        &self,
        pairs: &[(Vec<u8>, Option<Versioned>)],
        sessions: &[(u64, Option<Session>)],
        progress: &StagedSnapshot,
    ) -> Result<()>;

    /// The record of the staged snapshot (see [`Storage::stage_snapshot`]), if any: a transfer
    /// may resume on the staging, across restarts.
    fn staged_snapshot(&self) -> Result<Option<StagedSnapshot>>;

    /// Replaces state and sessions with the staged ones (and drops the staging record), as one
    /// step that a crash either completes (on reopening) or never started: applied index, commit index and the log
    /// start move to `finish.index`, the membership to `finish.membership`. The old log is dropped;
    /// its entries above `commit_index` are moved to `rollback`, tagged `epoch`, and returned.
    fn install_snapshot(
        &self,
        finish: &SnapshotFinish,
        commit_index: LogIndex,
        epoch: Epoch,
    ) -> Result<Vec<Entry>>;

    // --- durability ---

    /// Makes every earlier write durable (fsync).
    fn flush(&self) -> Result<()>;
}

pub use memory::MemoryStorage;
pub use sled_engine::SledStorage;

#[cfg(test)]
mod suite;
