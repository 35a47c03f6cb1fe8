//! The sled engine: what a real node keeps on disk (see "Durability on disk" in
//! `docs/ARCHITECTURE.md`).
//!
//! | tree | key | value (postcard) |
//! |---|---|---|
//! | `log` | index of a run's first entry, u64 big-endian | a run: contiguous [`Entry`]s, back to back |
//! | `state` | user key | the key's version (u64 big-endian), then its value (raw bytes) |
//! | `meta` | fixed names (see the `META_*` constants) | epoch and vote, commit index, applied index, membership, log start, snapshot epoch, install marker, staged-snapshot record |
//! | `sessions` | client id, u64 big-endian | [`Session`] |
//! | `rollback` | sequence number, u64 big-endian | [`RolledBack`] |
//! | `snapshot` | user key | as in `state`: the state of a snapshot being received |
//! | `snapshot_sessions` | client id, u64 big-endian | [`Session`]: its sessions |
//!
//! Big-endian keys make sled's byte order the numeric order, so range scans walk the log in order.
//! `meta` also records the store's format ([`STATE_FORMAT`]): a store written before the state
//! kept versions is refused with a clear error, never misread.
//! Rollback records are keyed by a counter rather than by `(epoch, index)`: the counter is unique
//! even if the same position is rolled back twice, and its order is exactly "oldest first".
//!
//! Invariants:
//! - `log` holds the contiguous entries `log_start ..= last`. `tail` caches `last`, so
//!   [`Storage::last`] does not touch the tree; appends and truncations hold the `tail` lock while
//!   they write, so the cache and the tree never disagree.
//! - An append is one plain insert per run of up to [`MAX_RUN_BYTES`] of entries, in order (a
//!   crash keeps a prefix of the runs). Runs never overlap: a truncation or a compaction that
//!   falls inside a run rewrites the part that stays. An apply is one transaction over `state`,
//!   `sessions` and `meta`,
//!   so the applied index never moves without its state changes. A truncation is one transaction
//!   over all five trees; if it removes applied entries it also rebuilds the state from the entries
//!   that remain, so the state is always what the log `log_start ..= applied_index` produces.
//! - sled's concurrency control is one process-wide lock that transactions and batches take for
//!   writing, so nothing reads a plain tree inside a transaction (that would deadlock).
//! - The staged-snapshot record is written after the staged pairs it covers, lowered (its begin
//!   index) before them, and removed before the staging is cleared, so after a crash it never
//!   vouches for more than is staged.
//! - Bytes read from disk are decoded as untrusted: corruption is an [`Error::Storage`] naming the
//!   tree and key, never a panic.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Batch, IVec, Transactional, Tree};

use crate::error::{Error, Result};
use crate::storage::apply::{apply_entries, ApplyTarget};
use crate::storage::rules::{
    check_append, check_compact, collect_page, fits, rebuild_after_compaction, scan_start,
    truncate_before_start, FIRST_INDEX,
};
use crate::storage::system_keys::{count_client_keys, shown_by_scan};
use crate::storage::{Meta, RolledBack, ScanPage, Storage};
use crate::wire::message::{
    Entry, Epoch, LogIndex, Membership, NodeId, Session, SnapshotFinish, StagedSnapshot, Versioned,
    WriteResult,
};

const META_EPOCH_AND_VOTE: &[u8] = b"epoch_and_vote";
const META_COMMIT_INDEX: &[u8] = b"commit_index";
const META_APPLIED_INDEX: &[u8] = b"applied_index";
const META_MEMBERSHIP: &[u8] = b"membership";
const META_LOG_START: &[u8] = b"log_start";
const META_SNAPSHOT_EPOCH: &[u8] = b"snapshot_epoch";
/// Present while a snapshot is being installed: what to finish after a crash.
const META_INSTALLING: &[u8] = b"installing_snapshot";
/// The record of the staged snapshot ([`StagedSnapshot`]): how far its transfer got.
const META_STAGED_SNAPSHOT: &[u8] = b"staged_snapshot";
/// How many client keys `state` holds ([`Meta::key_count`]).
const META_KEY_COUNT: &[u8] = b"key_count";
/// The format of the `state` and `snapshot` values ([`STATE_FORMAT`]).
const META_STATE_FORMAT: &[u8] = b"state_format";

/// The format of the store. 3 keeps the log in runs of entries; 2 kept one entry per value,
/// which is a log of one-entry runs, so a format-2 store is upgraded by rewriting this record
/// alone (and an older kvnode then refuses it rather than misread it). 2 and 3 prefix each value
/// of `state` and `snapshot` with its version; format 1 (raw values) had no record.
pub const STATE_FORMAT: u64 = 3;

/// The format of the stores written before the log was kept in runs.
const ONE_ENTRY_PER_VALUE_FORMAT: u64 = 2;

/// Bytes of the version that starts a stored value.
const VERSION_BYTES: usize = 8;

/// Large enough for any postcard-encoded `u64` or [`Session`] (at most 21 bytes), so the hot
/// path encodes them without allocating; values this small are stored inline by sled's `IVec`.
const SMALL_VALUE_BYTES: usize = 32;

/// The most encoded bytes an append puts into one run before it starts another. Well below
/// sled's threshold for storing a value as a separate blob file (a quarter of its 512 KiB
/// segment), so a run costs one insert into sled's own log. An entry larger than this is a run
/// of its own, as every entry was before runs.
const MAX_RUN_BYTES: usize = 64 * 1024;

/// One stored run of the `log` tree: the key is the index of its first entry, the value the
/// entries' postcard encodings back to back (postcard's encoding delimits itself). A store
/// written before runs has a run of one entry per key, which reads the same way.
struct Run {
    first: LogIndex,
    value: IVec,
}

impl Run {
    fn from_item(item: sled::Result<(IVec, IVec)>) -> Result<Run> {
        let (key, value) = item?;
        let first = decode_key(&key, "log")?;
        if value.is_empty() {
            return Err(Error::Storage(format!(
                "corrupt log: the run stored under index {first} is empty"
            )));
        }
        Ok(Run { first, value })
    }

    fn key(&self) -> [u8; 8] {
        self.first.to_be_bytes()
    }

    /// The run's entries in order, each with the byte offset just past its encoding. Each must
    /// carry the index that follows the previous one, from the run's key on.
    fn entries(&self) -> impl Iterator<Item = Result<(Entry, usize)>> + '_ {
        let mut rest: &[u8] = &self.value;
        let mut expected = self.first;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let decoded = postcard::take_from_bytes::<Entry>(rest).map_err(|err| {
                Error::Storage(format!("corrupt log entry {expected} on disk: {err}"))
            });
            let item = decoded.and_then(|(entry, remaining)| {
                if entry.index != expected {
                    return Err(Error::Storage(format!(
                        "corrupt log: the entry stored as index {expected} says it is entry {}",
                        entry.index
                    )));
                }
                rest = remaining;
                expected += 1;
                Ok((entry, self.value.len() - remaining.len()))
            });
            if item.is_err() {
                rest = &[];
            }
            Some(item)
        })
    }

    /// The run's last entry.
    fn last(&self) -> Result<Entry> {
        let mut last = None;
        for item in self.entries() {
            last = Some(item?.0);
        }
        last.ok_or_else(|| Error::Storage(format!("corrupt log: run {} is empty", self.first)))
    }
}

/// A [`Storage`] on a sled database.
pub struct SledStorage {
    db: sled::Db,
    log: Tree,
    state: Tree,
    meta: Tree,
    sessions: Tree,
    rollback: Tree,
    /// A snapshot being received, staged beside `state` until it is installed.
    snapshot: Tree,
    /// The sessions of that snapshot, staged beside `sessions`.
    snapshot_sessions: Tree,
    path: PathBuf,
    /// The data directory, held open so that [`Storage::flush`] can sync its file system.
    directory: std::fs::File,
    tail: Mutex<Tail>,
    /// Held by `apply` and `truncate_suffix`, so a truncation sees a stable applied index.
    applying: Mutex<()>,
}

/// The end of the log, cached; the lock around it serializes appends and truncations.
#[derive(Clone, Copy, Debug)]
struct Tail {
    /// `(epoch, index)` of the last entry, or of the snapshot point if the log is empty.
    last: (Epoch, LogIndex),
    log_start: LogIndex,
    snapshot_epoch: Epoch,
    /// Key of the next rollback record.
    next_rollback: u64,
    /// Encoded bytes of the entries in `log`.
    log_bytes: u64,
}

impl SledStorage {
    /// Opens (or creates) the store in the directory `path` and recovers the end of its log.
    pub fn open(path: &Path) -> Result<SledStorage> {
        let cannot_open = |err: sled::Error| {
            Error::Storage(format!("cannot open storage at {}: {err}", path.display()))
        };
        let db = sled::Config::new().path(path).open().map_err(cannot_open)?;
        let directory = std::fs::File::open(path).map_err(|err| {
            Error::Storage(format!("cannot open storage at {}: {err}", path.display()))
        })?;
        let open_tree = |name: &str| db.open_tree(name).map_err(cannot_open);
        let log = open_tree("log")?;
        let state = open_tree("state")?;
        let meta = open_tree("meta")?;
        let sessions = open_tree("sessions")?;
        let rollback = open_tree("rollback")?;
        let snapshot = open_tree("snapshot")?;
        let snapshot_sessions = open_tree("snapshot_sessions")?;

        check_state_format(&meta, &log, &state, path)?;
        let log_start = read_value(&meta, META_LOG_START)?.unwrap_or(FIRST_INDEX);
        let snapshot_epoch = read_value(&meta, META_SNAPSHOT_EPOCH)?.unwrap_or_default();
        let last = match log.last()? {
            Some(item) => {
                let entry = Run::from_item(Ok(item))?.last()?;
                (entry.epoch, entry.index)
            }
            None => (snapshot_epoch, log_start.saturating_sub(1)),
        };
        let next_rollback = match rollback.last()? {
            Some((key, _)) => decode_key(&key, "rollback")?.saturating_add(1),
            None => 0,
        };
        let mut log_bytes = 0u64;
        for item in log.iter() {
            let (_, value) = item?;
            log_bytes += value.len() as u64;
        }
        let storage = SledStorage {
            db,
            log,
            state,
            meta,
            sessions,
            rollback,
            snapshot,
            snapshot_sessions,
            path: path.to_path_buf(),
            directory,
            tail: Mutex::new(Tail {
                last,
                log_start,
                snapshot_epoch,
                next_rollback,
                log_bytes,
            }),
            applying: Mutex::new(()),
        };
        // A crash in the middle of installing a snapshot: finish the job (it is idempotent).
        let installing: Option<(SnapshotFinish, LogIndex, Epoch)> =
            read_value(&storage.meta, META_INSTALLING)?;
        if let Some((finish, commit_index, epoch)) = installing {
            storage.finish_install(&finish, commit_index, epoch)?;
        }
        Ok(storage)
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock_tail(&self) -> MutexGuard<'_, Tail> {
        // The tail is only assigned after its write succeeded, so it is valid even after a panic.
        self.tail.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Storage for SledStorage {
    fn append(&self, entries: &[Entry]) -> Result<()> {
        let Some(last_entry) = entries.last() else {
            return Ok(());
        };
        let mut tail = self.lock_tail();
        check_append(tail.last, entries)?;
        // One plain insert per run of entries, in order, never a batch: in sled 0.34 every batch
        // (and every transaction) forces its in-memory log buffer to disk, twice; an insert does
        // not, and the group-commit flush makes the entries durable all the same. sled's cost
        // is per insert, so a run of entries costs about what one entry did (docs/BENCHMARKS.md).
        // A crash keeps a prefix of the runs, which is a shorter log, as the contract allows.
        let mut run = Vec::new();
        let mut bytes = 0u64;
        // Runs of up to MAX_RUN_BYTES, each cut after the entry that reaches it.
        let mut pending = entries;
        while let Some(first) = pending.first() {
            run.clear();
            let mut taken = 0;
            for entry in pending {
                run = postcard::to_extend(entry, run).map_err(|err| {
                    Error::Storage(format!("cannot encode log entry {}: {err}", entry.index))
                })?;
                taken += 1;
                if run.len() >= MAX_RUN_BYTES {
                    break;
                }
            }
            self.log
                .insert(&first.index.to_be_bytes()[..], run.as_slice())?;
            bytes += run.len() as u64;
            pending = &pending[taken..];
        }
        tail.last = (last_entry.epoch, last_entry.index);
        tail.log_bytes += bytes;
        Ok(())
    }

    fn entry(&self, index: LogIndex) -> Result<Option<Entry>> {
        let Some(run) = self.run_at(index)? else {
            return Ok(None);
        };
        for item in run.entries() {
            let (entry, _) = item?;
            if entry.index == index {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    fn entries(&self, from: LogIndex, to: LogIndex, max_bytes: usize) -> Result<Vec<Entry>> {
        let mut collected = Vec::new();
        if from > to {
            return Ok(collected);
        }
        let mut total_bytes = 0usize;
        for run in self.runs_from(from)? {
            let run = run?;
            if run.first > to {
                break;
            }
            let mut start = 0;
            for item in run.entries() {
                let (entry, end) = item?;
                let size = end - start;
                start = end;
                if entry.index < from {
                    continue;
                }
                if entry.index > to || !fits(collected.len(), total_bytes, size, max_bytes) {
                    return Ok(collected);
                }
                total_bytes += size;
                collected.push(entry);
            }
        }
        Ok(collected)
    }

    fn last(&self) -> Result<(Epoch, LogIndex)> {
        Ok(self.lock_tail().last)
    }

    fn truncate_suffix(&self, from: LogIndex, epoch: Epoch) -> Result<Vec<Entry>> {
        let _applying = self.lock_apply();
        let mut tail = self.lock_tail();
        if from < tail.log_start {
            return Err(truncate_before_start(from, tail.log_start));
        }
        if from > tail.last.1 {
            return Ok(Vec::new());
        }

        // Everything is read and encoded before the transaction: sled's concurrency control is
        // one process-wide lock that a transaction holds for writing, so reading a plain tree
        // inside it would deadlock. The locks held above keep these reads current.
        let mut removed = Vec::new();
        let mut records = Vec::new();
        let mut removed_runs = Vec::new();
        // The run holding `from` keeps the entries before it, cut at a byte offset.
        let mut kept_prefix = None;
        let mut removed_bytes = 0u64;
        for run in self.runs_from(from)? {
            let run = run?;
            let mut kept = 0;
            for item in run.entries() {
                let (entry, end) = item?;
                if entry.index < from {
                    kept = end;
                    continue;
                }
                let record = RolledBack {
                    rolled_back_in_epoch: epoch,
                    entry,
                };
                let rollback_key = (tail.next_rollback + records.len() as u64).to_be_bytes();
                let encoded = encode(&record, || {
                    format!("rollback record of entry {}", record.entry.index)
                })?;
                records.push((IVec::from(&rollback_key[..]), IVec::from(encoded)));
                removed.push(record.entry);
            }
            removed_bytes += (run.value.len() - kept) as u64;
            if kept > 0 {
                kept_prefix = Some((run.key(), IVec::from(&run.value[..kept])));
            } else {
                removed_runs.push(run.key());
            }
        }
        let new_last = if from == tail.log_start {
            (tail.snapshot_epoch, tail.log_start - 1)
        } else {
            match self.entry(from - 1)? {
                Some(entry) => (entry.epoch, entry.index),
                None => {
                    return Err(Error::Storage(format!(
                        "log entry {} is missing although the log runs from {} to {}",
                        from - 1,
                        tail.log_start,
                        tail.last.1
                    )))
                }
            }
        };
        let applied_index = read_value(&self.meta, META_APPLIED_INDEX)?.unwrap_or(0);
        let rebuild = if from <= applied_index {
            // The state reflects entries that are leaving the log: rebuild it from what remains,
            // in the same transaction.
            if tail.log_start != FIRST_INDEX {
                return Err(rebuild_after_compaction(
                    from,
                    applied_index,
                    tail.log_start,
                ));
            }
            Some(self.read_rebuild(tail.log_start, from)?)
        } else {
            None
        };

        let outcome = (
            &self.log,
            &self.rollback,
            &self.state,
            &self.sessions,
            &self.meta,
        )
            .transaction(|(log, rollback, state, sessions, meta)| {
                for key in &removed_runs {
                    log.remove(&key[..])?;
                }
                if let Some((key, prefix)) = &kept_prefix {
                    log.insert(&key[..], prefix)?;
                }
                for (rollback_key, record) in &records {
                    rollback.insert(rollback_key, record)?;
                }
                if let Some(rebuild) = &rebuild {
                    for key in &rebuild.state_keys {
                        state.remove(key)?;
                    }
                    for key in &rebuild.session_keys {
                        sessions.remove(key)?;
                    }
                    let mut target = TransactionTarget {
                        state,
                        sessions,
                        meta,
                    };
                    target.set_applied_index(rebuild.applied_index)?;
                    target.set_key_count(0)?;
                    apply_entries(&mut target, rebuild.applied_index, &rebuild.entries)?;
                }
                Ok(())
            });
        outcome.map_err(from_transaction_error)?;
        tail.next_rollback += records.len() as u64;
        tail.last = new_last;
        tail.log_bytes = tail.log_bytes.saturating_sub(removed_bytes);
        Ok(removed)
    }

    fn rolled_back(&self) -> Result<Vec<RolledBack>> {
        self.rollback
            .iter()
            .map(|item| {
                let (key, value) = item?;
                decode(&value, || format!("rollback record {key:?}"))
            })
            .collect()
    }

    fn meta(&self) -> Result<Meta> {
        let (epoch, vote) = read_value(&self.meta, META_EPOCH_AND_VOTE)?.unwrap_or_default();
        Ok(Meta {
            epoch,
            vote,
            commit_index: read_value(&self.meta, META_COMMIT_INDEX)?.unwrap_or_default(),
            applied_index: read_value(&self.meta, META_APPLIED_INDEX)?.unwrap_or_default(),
            membership: read_value(&self.meta, META_MEMBERSHIP)?,
            log_start: read_value(&self.meta, META_LOG_START)?.unwrap_or(FIRST_INDEX),
            snapshot_epoch: read_value(&self.meta, META_SNAPSHOT_EPOCH)?.unwrap_or_default(),
            key_count: self.key_count()?,
        })
    }

    fn set_epoch_and_vote(&self, epoch: Epoch, vote: Option<NodeId>) -> Result<()> {
        let value = encode(&(epoch, vote), || "epoch and vote".to_string())?;
        self.meta.insert(META_EPOCH_AND_VOTE, value)?;
        Ok(())
    }

    fn set_commit_index(&self, index: LogIndex) -> Result<()> {
        let mut buffer = [0u8; SMALL_VALUE_BYTES];
        let value = encode_small(&index, &mut buffer)?;
        self.meta.insert(META_COMMIT_INDEX, value)?;
        Ok(())
    }

    fn set_membership(&self, membership: &Membership) -> Result<()> {
        let value = encode(membership, || "membership".to_string())?;
        self.meta.insert(META_MEMBERSHIP, value)?;
        Ok(())
    }

    fn apply(&self, entries: &[Entry]) -> Result<Vec<WriteResult>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let _applying = self.lock_apply();
        (&self.state, &self.sessions, &self.meta)
            .transaction(|(state, sessions, meta)| {
                let applied_index = read_applied_index(meta)?;
                let mut target = TransactionTarget {
                    state,
                    sessions,
                    meta,
                };
                apply_entries(&mut target, applied_index, entries)
            })
            .map_err(from_transaction_error)
    }

    fn get_versioned(&self, key: &[u8]) -> Result<Option<Versioned>> {
        match self.state.get(key)? {
            Some(stored) => Ok(Some(decode_versioned(key, &stored)?)),
            None => Ok(None),
        }
    }

    fn scan_page(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        max_pairs: usize,
        max_bytes: usize,
    ) -> Result<ScanPage> {
        let pairs = self
            .state
            .range::<&[u8], _>((scan_start(prefix, after), std::ops::Bound::Unbounded))
            .map(|item| item.map_err(Error::from))
            .take_while(|item| {
                item.as_ref()
                    .map_or(true, |(key, _)| key.starts_with(prefix))
            })
            .filter(|item| {
                item.as_ref()
                    .map_or(true, |(key, _)| shown_by_scan(prefix, key))
            })
            .map(decode_pair);
        collect_page(pairs, max_pairs, max_bytes)
    }

    fn session(&self, client_id: u64) -> Result<Option<Session>> {
        let key = client_id.to_be_bytes();
        match self.sessions.get(key)? {
            Some(value) => Ok(Some(decode(&value, || {
                format!("session of client {client_id}")
            })?)),
            None => Ok(None),
        }
    }

    fn log_bytes(&self) -> Result<u64> {
        Ok(self.lock_tail().log_bytes)
    }

    fn key_count(&self) -> Result<u64> {
        Ok(read_value(&self.meta, META_KEY_COUNT)?.unwrap_or_default())
    }

    fn session_count(&self) -> Result<u64> {
        Ok(self.sessions.len() as u64)
    }

    fn size_bytes(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    fn compact(&self, through: LogIndex) -> Result<()> {
        let mut tail = self.lock_tail();
        let applied_index = read_value(&self.meta, META_APPLIED_INDEX)?.unwrap_or(0);
        check_compact(through, tail.log_start, tail.last.1, applied_index)?;
        if through < tail.log_start {
            return Ok(());
        }
        let mut removed_runs = Vec::new();
        let mut removed_bytes = 0u64;
        let mut last_run: Option<Run> = None;
        for item in self.log.range(..=through.to_be_bytes()) {
            if let Some(run) = last_run.replace(Run::from_item(item)?) {
                removed_bytes += run.value.len() as u64;
                removed_runs.push(run.key());
            }
        }
        // The last run holds `through` (its epoch becomes the snapshot epoch) and may go on past
        // it: its entries after it stay, as a run that starts at `through + 1`, cut at a byte
        // offset.
        let missing = || Error::Storage(format!("log entry {through} is missing"));
        let run = last_run.ok_or_else(missing)?;
        let mut cut = None;
        for item in run.entries() {
            let (entry, end) = item?;
            if entry.index == through {
                cut = Some((end, entry.epoch));
                break;
            }
        }
        let (cut, epoch) = cut.ok_or_else(missing)?;
        removed_bytes += cut as u64;
        removed_runs.push(run.key());
        let kept_suffix = (cut < run.value.len()).then(|| IVec::from(&run.value[cut..]));
        let log_start = encode(&(through + 1), || "log start".to_string())?;
        let snapshot_epoch = encode(&epoch, || "snapshot epoch".to_string())?;
        // One transaction, so the log never starts before `log_start` or after it.
        (&self.log, &self.meta)
            .transaction(|(log, meta)| {
                for key in &removed_runs {
                    log.remove(&key[..])?;
                }
                if let Some(suffix) = &kept_suffix {
                    log.insert(&(through + 1).to_be_bytes()[..], suffix)?;
                }
                meta.insert(META_LOG_START, log_start.as_slice())?;
                meta.insert(META_SNAPSHOT_EPOCH, snapshot_epoch.as_slice())?;
                Ok(())
            })
            .map_err(from_transaction_error)?;
        tail.log_start = through + 1;
        tail.snapshot_epoch = epoch;
        tail.log_bytes = tail.log_bytes.saturating_sub(removed_bytes);
        Ok(())
    }

    fn state_chunk(&self, after: Option<&[u8]>, max_bytes: usize) -> Result<ScanPage> {
        let range = match after {
            Some(after) => self
                .state
                .range::<&[u8], _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => self.state.iter(),
        };
        collect_page(
            range.map(|item| decode_pair(item.map_err(Error::from))),
            usize::MAX,
            max_bytes,
        )
    }

    fn sessions_after(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, Session)>> {
        let from = match after {
            Some(u64::MAX) => return Ok(Vec::new()),
            Some(after) => after + 1,
            None => 0,
        };
        self.sessions
            .range(from.to_be_bytes()..)
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                let client_id = decode_key(&key, "sessions")?;
                let session = decode(&value, || format!("session of client {client_id}"))?;
                Ok((client_id, session))
            })
            .collect()
    }

    fn begin_snapshot(&self) -> Result<()> {
        // The record goes first: a crash then leaves staged pairs that no record vouches for.
        self.meta.remove(META_STAGED_SNAPSHOT)?;
        self.snapshot.clear()?;
        self.snapshot_sessions.clear()?;
        Ok(())
    }

    fn stage_snapshot(
        &self,
        pairs: &[(Vec<u8>, Option<Versioned>)],
        sessions: &[(u64, Option<Session>)],
        progress: &StagedSnapshot,
    ) -> Result<()> {
        // sled keeps a prefix of the writes in a crash: a lower begin index is recorded before
        // the pairs read at it, and the new position after them.
        if let Some(recorded) = self.staged_snapshot()? {
            if progress.begin_index < recorded.begin_index {
                let lowered = StagedSnapshot {
                    begin_index: progress.begin_index,
                    position: recorded.position,
                };
                let encoded = encode(&lowered, || "staged snapshot record".to_string())?;
                self.meta.insert(META_STAGED_SNAPSHOT, encoded)?;
            }
        }
        let mut batch = Batch::default();
        for (key, value) in pairs {
            match value {
                Some(versioned) => batch.insert(
                    key.as_slice(),
                    encode_versioned(versioned.version, &versioned.value),
                ),
                None => batch.remove(key.as_slice()),
            }
        }
        self.snapshot.apply_batch(batch)?;
        let mut batch = Batch::default();
        for (client_id, session) in sessions {
            let key = client_id.to_be_bytes();
            match session {
                Some(session) => {
                    let value = encode(session, || format!("session of client {client_id}"))?;
                    batch.insert(&key[..], value);
                }
                None => batch.remove(&key[..]),
            }
        }
        self.snapshot_sessions.apply_batch(batch)?;
        let encoded = encode(progress, || "staged snapshot record".to_string())?;
        self.meta.insert(META_STAGED_SNAPSHOT, encoded)?;
        Ok(())
    }

    fn staged_snapshot(&self) -> Result<Option<StagedSnapshot>> {
        read_value(&self.meta, META_STAGED_SNAPSHOT)
    }

    fn install_snapshot(
        &self,
        finish: &SnapshotFinish,
        commit_index: LogIndex,
        epoch: Epoch,
    ) -> Result<Vec<Entry>> {
        // The staged pairs must be durable before the marker that says "install them".
        self.db.flush()?;
        let marker = encode(&(finish, commit_index, epoch), || {
            "snapshot marker".to_string()
        })?;
        self.meta.insert(META_INSTALLING, marker)?;
        self.db.flush()?;
        self.finish_install(finish, commit_index, epoch)
    }

    fn flush(&self) -> Result<()> {
        self.db.flush()?;
        sync_file_system(&self.directory).map_err(|err| {
            Error::Storage(format!(
                "cannot sync storage at {} to disk: {err}",
                self.path.display()
            ))
        })
    }
}

/// Makes what sled wrote durable against a power cut, not only a process crash. On Linux sled's
/// `flush` writes its log with `sync_file_range`, which persists neither the file's metadata (its
/// size, as the log grows) nor the disk's write cache, and it never syncs the files of large
/// values (`blobs/`); sled calls `fsync` only from a background thread every 500 ms. So an
/// acknowledged write could be lost by a power cut of a majority. `syncfs` on the data
/// directory's file system covers all of it: the log file, blob files and their directory
/// entries. One call per flush, and a flush covers a whole pass of the event loop.
fn sync_file_system(directory: &std::fs::File) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        rustix::fs::syncfs(directory).map_err(std::io::Error::from)
    }
    #[cfg(not(target_os = "linux"))]
    {
        directory.sync_all()
    }
}

impl SledStorage {
    /// Copies the staged snapshot into `state`, replaces the sessions and the log, then removes
    /// the marker. Idempotent, so a crash part way through is finished on reopening.
    fn finish_install(
        &self,
        finish: &SnapshotFinish,
        commit_index: LogIndex,
        epoch: Epoch,
    ) -> Result<Vec<Entry>> {
        let _applying = self.lock_apply();
        let mut tail = self.lock_tail();
        self.state.clear()?;
        let mut batch = Batch::default();
        let mut staged = 0usize;
        let mut key_count = 0u64;
        for item in self.snapshot.iter() {
            let (key, value) = item?;
            key_count += count_client_keys([&key]);
            batch.insert(key, value);
            staged += 1;
            if staged % 4096 == 0 {
                self.state.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        self.state.apply_batch(batch)?;
        self.sessions.clear()?;
        let mut batch = Batch::default();
        for item in self.snapshot_sessions.iter() {
            let (key, value) = item?;
            batch.insert(key, value);
        }
        self.sessions.apply_batch(batch)?;

        // Entries above the commit index may never have been committed: keep them for the
        // operator, as any rolled-back entry.
        let mut removed = Vec::new();
        for run in self.runs_from(commit_index + 1)? {
            let run = run?;
            for item in run.entries() {
                let (entry, _) = item?;
                if entry.index <= commit_index {
                    continue;
                }
                let record = RolledBack {
                    rolled_back_in_epoch: epoch,
                    entry,
                };
                let rollback_key = tail.next_rollback.to_be_bytes();
                tail.next_rollback += 1;
                let encoded = encode(&record, || "rollback record".to_string())?;
                self.rollback.insert(&rollback_key[..], encoded)?;
                removed.push(record.entry);
            }
        }
        self.log.clear()?;

        let mut batch = Batch::default();
        let commit = commit_index.max(finish.index);
        batch.insert(
            META_APPLIED_INDEX,
            encode(&finish.index, || "applied index".into())?,
        );
        batch.insert(
            META_COMMIT_INDEX,
            encode(&commit, || "commit index".into())?,
        );
        batch.insert(
            META_LOG_START,
            encode(&(finish.index + 1), || "log start".into())?,
        );
        batch.insert(
            META_SNAPSHOT_EPOCH,
            encode(&finish.epoch, || "snapshot epoch".into())?,
        );
        batch.insert(
            META_MEMBERSHIP,
            encode(&finish.membership, || "membership".into())?,
        );
        batch.insert(META_KEY_COUNT, encode(&key_count, || "key count".into())?);
        batch.remove(META_INSTALLING);
        batch.remove(META_STAGED_SNAPSHOT);
        self.meta.apply_batch(batch)?;
        self.snapshot.clear()?;
        self.snapshot_sessions.clear()?;
        self.db.flush()?;
        tail.last = (finish.epoch, finish.index);
        tail.log_start = finish.index + 1;
        tail.snapshot_epoch = finish.epoch;
        tail.log_bytes = 0;
        Ok(removed)
    }
}

/// A value as `state` and `snapshot` store it: its version, big-endian, then its bytes.
fn encode_versioned(version: LogIndex, value: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(VERSION_BYTES + value.len());
    stored.extend_from_slice(&version.to_be_bytes());
    stored.extend_from_slice(value);
    stored
}

/// Reads back what [`encode_versioned`] stored under `key`.
fn decode_versioned(key: &[u8], stored: &[u8]) -> Result<Versioned> {
    let Some((version, value)) = stored.split_first_chunk::<VERSION_BYTES>() else {
        return Err(Error::Storage(format!(
            "the state value of key {key:?} is {} bytes, shorter than its version",
            stored.len()
        )));
    };
    Ok(Versioned {
        version: u64::from_be_bytes(*version),
        value: value.to_vec(),
    })
}

fn decode_pair(item: Result<(IVec, IVec)>) -> Result<(IVec, Versioned)> {
    let (key, stored) = item?;
    let versioned = decode_versioned(&key, &stored)?;
    Ok((key, versioned))
}

/// Records [`STATE_FORMAT`] in a new store and upgrades a format-2 store; refuses a store written
/// in another format (one with a log or a state but no record was written before versions, in
/// format 1).
fn check_state_format(meta: &Tree, log: &Tree, state: &Tree, path: &Path) -> Result<()> {
    let format = match read_value::<u64>(meta, META_STATE_FORMAT)? {
        Some(format) => format,
        None if log.is_empty() && state.is_empty() && meta.is_empty() => {
            let encoded = encode(&STATE_FORMAT, || "state format".to_string())?;
            meta.insert(META_STATE_FORMAT, encoded)?;
            STATE_FORMAT
        }
        None => 1,
    };
    if format == ONE_ENTRY_PER_VALUE_FORMAT {
        let encoded = encode(&STATE_FORMAT, || "state format".to_string())?;
        meta.insert(META_STATE_FORMAT, encoded)?;
        return Ok(());
    }
    if format != STATE_FORMAT {
        return Err(Error::Storage(format!(
            "the data directory {} holds state format {format}, and this kvnode reads format \
             {ONE_ENTRY_PER_VALUE_FORMAT} and {STATE_FORMAT} only (a version with each key); it was left unchanged. Copy its keys \
             into a new cluster by client (`kvctl scan`, `kvctl put`); see docs/OPERATIONS.md",
            path.display()
        )));
    }
    Ok(())
}

/// What a truncation needs to rebuild the state from the log entries that remain.
struct Rebuild {
    state_keys: Vec<IVec>,
    session_keys: Vec<IVec>,
    /// The applied index of the empty state.
    applied_index: LogIndex,
    /// The entries that remain, to re-apply.
    entries: Vec<Entry>,
}

impl SledStorage {
    fn read_rebuild(&self, log_start: LogIndex, from: LogIndex) -> Result<Rebuild> {
        let state_keys = self.state.iter().keys().collect::<sled::Result<_>>()?;
        let session_keys = self.sessions.iter().keys().collect::<sled::Result<_>>()?;
        let mut entries = Vec::new();
        for item in self.log.range(..from.to_be_bytes()) {
            let run = Run::from_item(item)?;
            for item in run.entries() {
                let (entry, _) = item?;
                if entry.index < from {
                    entries.push(entry);
                }
            }
        }
        Ok(Rebuild {
            state_keys,
            session_keys,
            applied_index: log_start - 1,
            entries,
        })
    }

    /// The run that holds `index` if any entry does: the last one that starts at or before it
    /// (it may end before `index`).
    fn run_at(&self, index: LogIndex) -> Result<Option<Run>> {
        self.log
            .range(..=index.to_be_bytes())
            .next_back()
            .map(Run::from_item)
            .transpose()
    }

    /// The runs in order, from the one holding `from` on.
    fn runs_from(&self, from: LogIndex) -> Result<impl Iterator<Item = Result<Run>>> {
        let start = self.run_at(from)?.map_or(from, |run| run.first);
        Ok(self.log.range(start.to_be_bytes()..).map(Run::from_item))
    }

    fn lock_apply(&self) -> MutexGuard<'_, ()> {
        self.applying.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sled engine's side of [`apply_entries`]: the views of one transaction.
struct TransactionTarget<'a> {
    state: &'a TransactionalTree,
    sessions: &'a TransactionalTree,
    meta: &'a TransactionalTree,
}

impl ApplyTarget for TransactionTarget<'_> {
    type Error = ConflictableTransactionError<Error>;

    fn session(&mut self, client_id: u64) -> std::result::Result<Option<Session>, Self::Error> {
        match self.sessions.get(client_id.to_be_bytes())? {
            Some(value) => Ok(Some(decode(&value, || {
                format!("session of client {client_id}")
            })?)),
            None => Ok(None),
        }
    }

    fn set_session(
        &mut self,
        client_id: u64,
        session: Session,
    ) -> std::result::Result<(), Self::Error> {
        let mut buffer = [0u8; SMALL_VALUE_BYTES];
        let value = encode_small(&session, &mut buffer)?;
        self.sessions.insert(&client_id.to_be_bytes()[..], value)?;
        Ok(())
    }

    fn remove_session(&mut self, client_id: u64) -> std::result::Result<(), Self::Error> {
        self.sessions.remove(&client_id.to_be_bytes()[..])?;
        Ok(())
    }

    fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        version: LogIndex,
    ) -> std::result::Result<bool, Self::Error> {
        Ok(self
            .state
            .insert(key, encode_versioned(version, value))?
            .is_some())
    }

    fn delete(&mut self, key: &[u8]) -> std::result::Result<bool, Self::Error> {
        Ok(self.state.remove(key)?.is_some())
    }

    fn set_applied_index(&mut self, index: LogIndex) -> std::result::Result<(), Self::Error> {
        let mut buffer = [0u8; SMALL_VALUE_BYTES];
        let value = encode_small(&index, &mut buffer)?;
        self.meta.insert(META_APPLIED_INDEX, value)?;
        Ok(())
    }

    fn key_count(&mut self) -> std::result::Result<u64, Self::Error> {
        match self.meta.get(META_KEY_COUNT)? {
            Some(bytes) => Ok(decode(&bytes, || "key count".to_string())?),
            None => Ok(0),
        }
    }

    fn set_key_count(&mut self, count: u64) -> std::result::Result<(), Self::Error> {
        let mut buffer = [0u8; SMALL_VALUE_BYTES];
        let value = encode_small(&count, &mut buffer)?;
        self.meta.insert(META_KEY_COUNT, value)?;
        Ok(())
    }

    fn set_membership(&mut self, membership: &Membership) -> std::result::Result<(), Self::Error> {
        let value = encode(membership, || "membership".to_string())?;
        self.meta.insert(META_MEMBERSHIP, value)?;
        Ok(())
    }
}

/// Our errors abort a transaction; sled's own (conflicts, I/O) keep their meaning.
impl From<Error> for ConflictableTransactionError<Error> {
    fn from(err: Error) -> Self {
        ConflictableTransactionError::Abort(err)
    }
}

fn from_transaction_error(err: TransactionError<Error>) -> Error {
    match err {
        TransactionError::Abort(err) => err,
        TransactionError::Storage(err) => Error::from(err),
    }
}

/// The applied index as seen inside a transaction.
fn read_applied_index(
    meta: &TransactionalTree,
) -> std::result::Result<LogIndex, ConflictableTransactionError<Error>> {
    match meta.get(META_APPLIED_INDEX)? {
        Some(bytes) => Ok(decode(&bytes, || "applied index".to_string())?),
        None => Ok(0),
    }
}

/// A postcard-encoded value of the `meta` tree, if present.
fn read_value<T: DeserializeOwned>(meta: &Tree, name: &[u8]) -> Result<Option<T>> {
    match meta.get(name)? {
        Some(bytes) => decode(&bytes, || {
            format!("meta value {:?}", String::from_utf8_lossy(name))
        })
        .map(Some),
        None => Ok(None),
    }
}

/// A big-endian `u64` key.
fn decode_key(key: &[u8], tree: &str) -> Result<u64> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| {
        Error::Storage(format!(
            "corrupt {tree} tree: a key is {} bytes long instead of 8",
            key.len()
        ))
    })?;
    Ok(u64::from_be_bytes(bytes))
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T> {
    postcard::from_bytes(bytes)
        .map_err(|err| Error::Storage(format!("corrupt {} on disk: {err}", what())))
}

fn encode<T: Serialize>(value: &T, what: impl FnOnce() -> String) -> Result<Vec<u8>> {
    postcard::to_stdvec(value)
        .map_err(|err| Error::Storage(format!("cannot encode {}: {err}", what())))
}

fn encode_small<'b, T: Serialize>(value: &T, buffer: &'b mut [u8]) -> Result<&'b [u8]> {
    match postcard::to_slice(value, buffer) {
        Ok(encoded) => Ok(encoded),
        Err(err) => Err(Error::Storage(format!(
            "cannot encode a small value: {err}"
        ))),
    }
}
