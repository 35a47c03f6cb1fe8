//! The in-memory engine, for the simulator: the same contract as sled, with honest durability.
//!
//! The engine keeps two copies of its contents: `live`, which every read sees, and `durable`, what
//! a disk would hold. Every write method changes `live` and records the write in a redo journal;
//! [`Storage::flush`] replays the journal onto `durable`, so a flush costs what was written since
//! the last one, not the size of the store. [`MemoryStorage::crash`] throws `live` away and
//! restarts from `durable`: everything not flushed is lost. [`MemoryStorage::crash_keeping`] keeps
//! a prefix of the unflushed writes instead, as a disk that wrote some of its queue would; it never
//! keeps a later write without the earlier ones.
//!
//! Invariant: replaying the journal onto `durable` yields `live`. It holds because every write is
//! deterministic and is journaled only when it succeeded on `live`.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::{Error, Result};
use crate::storage::apply::{apply_entries, ApplyTarget};
use crate::storage::rules::{
    check_append, check_compact, collect_page, encoded_len, fits, rebuild_after_compaction,
    scan_start, truncate_before_start, FIRST_INDEX,
};
use crate::storage::system_keys::{count_client_keys, shown_by_scan};
use crate::storage::{Meta, RolledBack, ScanPage, Storage};
use crate::wire::message::{
    Entry, Epoch, LogIndex, Membership, NodeId, Session, SnapshotFinish, StagedSnapshot, Versioned,
    WriteResult,
};

/// A [`Storage`] held in memory. Share it as `Arc<MemoryStorage>`: after [`MemoryStorage::crash`]
/// the simulator reopens a node on the same value.
pub struct MemoryStorage {
    inner: Mutex<Inner>,
}

struct Inner {
    live: Contents,
    durable: Contents,
    /// Writes applied to `live` but not yet to `durable`, oldest first.
    unflushed: Vec<Write>,
    /// Non-empty appends taken, for tests of how the node batches its writes.
    appends: u64,
    /// Single-entry lookups served, for tests of how the node reads its log.
    entry_lookups: u64,
}

/// One successful write, as journaled for replay onto the durable copy.
enum Write {
    Append(Vec<Entry>),
    TruncateSuffix {
        from: LogIndex,
        epoch: Epoch,
    },
    EpochAndVote(Epoch, Option<NodeId>),
    CommitIndex(LogIndex),
    Membership(Membership),
    Apply(Vec<Entry>),
    Compact(LogIndex),
    BeginSnapshot,
    StageSnapshot(
        Vec<(Vec<u8>, Option<Versioned>)>,
        Vec<(u64, Option<Session>)>,
        StagedSnapshot,
    ),
    InstallSnapshot {
        finish: SnapshotFinish,
        commit_index: LogIndex,
        epoch: Epoch,
    },
}

/// Everything a node stores, as the sled trees hold it.
#[derive(Clone, Debug)]
struct Contents {
    /// Entries `meta.log_start ..`, contiguous, so entry `i` is at `i - meta.log_start`.
    log: Vec<Entry>,
    state: BTreeMap<Vec<u8>, Versioned>,
    sessions: BTreeMap<u64, Session>,
    rollback: Vec<RolledBack>,
    meta: Meta,
    /// A snapshot being received, beside the live state.
    staged: BTreeMap<Vec<u8>, Versioned>,
    /// Its sessions, beside the live ones.
    staged_sessions: BTreeMap<u64, Session>,
    /// How far the staging got (staged in the same write as the pairs it covers, so a crash
    /// keeps both or neither: stricter than sled's order, which the contract allows).
    staged_progress: Option<StagedSnapshot>,
}

impl MemoryStorage {
    /// An empty store, as a new node's.
    pub fn new() -> MemoryStorage {
        MemoryStorage {
            inner: Mutex::new(Inner {
                live: Contents::new(),
                durable: Contents::new(),
                unflushed: Vec::new(),
                appends: 0,
                entry_lookups: 0,
            }),
        }
    }

    /// Simulates a crash: every write since the last flush is lost.
    pub fn crash(&self) {
        self.crash_keeping(0);
    }

    /// Simulates a crash in which the disk had written the oldest `writes` unflushed writes (all
    /// of them if there are fewer) and lost the rest.
    pub fn crash_keeping(&self, writes: usize) {
        let mut inner = self.lock();
        let kept = writes.min(inner.unflushed.len());
        let lost = inner.unflushed.split_off(kept);
        drop(lost);
        // Replaying a journaled write cannot fail (it succeeded on `live`), so this only reports.
        if let Err(err) = inner.persist_unflushed() {
            tracing::error!(%err, "memory storage: replaying journaled writes failed");
        }
        inner.live = inner.durable.clone();
    }

    /// How many writes a crash would lose now.
    pub fn unflushed_writes(&self) -> usize {
        self.lock().unflushed.len()
    }

    /// How many non-empty appends this store has taken. On sled each costs an insert whatever
    /// its length, so tests check with it that the node batches its appends.
    pub fn appends(&self) -> u64 {
        self.lock().appends
    }

    /// How many single-entry lookups ([`Storage::entry`]) this store has served. On sled a
    /// lookup decodes its entry's run up to the entry, so tests check with it that the node
    /// reads a range of its log in one read, not entry by entry.
    pub fn entry_lookups(&self) -> u64 {
        self.lock().entry_lookups
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent contents: every method validates before
        // it changes anything.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `write` on the live contents and journals it if it succeeded.
    fn write<T>(&self, write: Write, run: impl FnOnce(&mut Contents) -> Result<T>) -> Result<T> {
        let mut inner = self.lock();
        let output = run(&mut inner.live)?;
        inner.unflushed.push(write);
        Ok(output)
    }
}

impl Default for MemoryStorage {
    fn default() -> Self {
        MemoryStorage::new()
    }
}

impl Inner {
    fn persist_unflushed(&mut self) -> Result<()> {
        for write in std::mem::take(&mut self.unflushed) {
            self.durable.replay(write).map_err(|err| {
                Error::Internal(format!(
                    "memory storage: a journaled write failed on replay: {err}"
                ))
            })?;
        }
        Ok(())
    }
}

impl Contents {
    fn new() -> Contents {
        Contents {
            log: Vec::new(),
            state: BTreeMap::new(),
            sessions: BTreeMap::new(),
            rollback: Vec::new(),
            meta: Meta {
                log_start: FIRST_INDEX,
                ..Meta::default()
            },
            staged: BTreeMap::new(),
            staged_sessions: BTreeMap::new(),
            staged_progress: None,
        }
    }

    fn replay(&mut self, write: Write) -> Result<()> {
        match write {
            Write::Append(entries) => {
                check_append(self.last(), &entries)?;
                self.log.extend(entries);
            }
            Write::TruncateSuffix { from, epoch } => {
                self.truncate_suffix(from, epoch)?;
            }
            Write::EpochAndVote(epoch, vote) => {
                self.meta.epoch = epoch;
                self.meta.vote = vote;
            }
            Write::CommitIndex(index) => self.meta.commit_index = index,
            Write::Membership(membership) => self.meta.membership = Some(membership),
            Write::Apply(entries) => {
                self.apply(&entries)?;
            }
            Write::Compact(through) => self.compact(through)?,
            Write::BeginSnapshot => self.begin_snapshot(),
            Write::StageSnapshot(pairs, sessions, progress) => {
                self.stage(&pairs, &sessions, progress)
            }
            Write::InstallSnapshot {
                finish,
                commit_index,
                epoch,
            } => {
                self.install_snapshot(&finish, commit_index, epoch);
            }
        }
        Ok(())
    }

    fn compact(&mut self, through: LogIndex) -> Result<()> {
        check_compact(
            through,
            self.meta.log_start,
            self.last().1,
            self.meta.applied_index,
        )?;
        if through < self.meta.log_start {
            return Ok(());
        }
        let epoch = self.log[self.position(through)].epoch;
        self.log.drain(..=self.position(through));
        self.meta.log_start = through + 1;
        self.meta.snapshot_epoch = epoch;
        Ok(())
    }

    fn begin_snapshot(&mut self) {
        self.staged.clear();
        self.staged_sessions.clear();
        self.staged_progress = None;
    }

    fn stage(
        &mut self,
        pairs: &[(Vec<u8>, Option<Versioned>)],
        sessions: &[(u64, Option<Session>)],
        progress: StagedSnapshot,
    ) {
        self.staged_progress = Some(progress);
        for (key, value) in pairs {
            match value {
                Some(value) => self.staged.insert(key.clone(), value.clone()),
                None => self.staged.remove(key),
            };
        }
        for (client_id, session) in sessions {
            match session {
                Some(session) => self.staged_sessions.insert(*client_id, session.clone()),
                None => self.staged_sessions.remove(client_id),
            };
        }
    }

    fn install_snapshot(
        &mut self,
        finish: &SnapshotFinish,
        commit_index: LogIndex,
        epoch: Epoch,
    ) -> Vec<Entry> {
        let log = std::mem::take(&mut self.log);
        let removed: Vec<Entry> = log.into_iter().filter(|e| e.index > commit_index).collect();
        self.rollback.extend(removed.iter().map(|entry| RolledBack {
            rolled_back_in_epoch: epoch,
            entry: entry.clone(),
        }));
        self.state = std::mem::take(&mut self.staged);
        self.meta.key_count = count_client_keys(self.state.keys());
        self.sessions = std::mem::take(&mut self.staged_sessions);
        self.staged_progress = None;
        self.meta.applied_index = finish.index;
        self.meta.commit_index = self.meta.commit_index.max(finish.index);
        self.meta.log_start = finish.index + 1;
        self.meta.snapshot_epoch = finish.epoch;
        self.meta.membership = Some(finish.membership.clone());
        removed
    }

    fn last(&self) -> (Epoch, LogIndex) {
        match self.log.last() {
            Some(entry) => (entry.epoch, entry.index),
            None => (
                self.meta.snapshot_epoch,
                self.meta.log_start.saturating_sub(1),
            ),
        }
    }

    /// Position of `index` in `log`, which may be `log.len()` (one past the end).
    fn position(&self, index: LogIndex) -> usize {
        let offset = index.saturating_sub(self.meta.log_start);
        usize::try_from(offset).map_or(self.log.len(), |offset| offset.min(self.log.len()))
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<WriteResult>> {
        let applied_index = self.meta.applied_index;
        apply_entries(&mut StateTarget(self), applied_index, entries)
    }

    fn truncate_suffix(&mut self, from: LogIndex, epoch: Epoch) -> Result<Vec<Entry>> {
        if from < self.meta.log_start {
            return Err(truncate_before_start(from, self.meta.log_start));
        }
        // Removing applied entries means the state reflects entries no longer in the log.
        let rebuild = from <= self.meta.applied_index && from <= self.last().1;
        if rebuild && self.meta.log_start != FIRST_INDEX {
            return Err(rebuild_after_compaction(
                from,
                self.meta.applied_index,
                self.meta.log_start,
            ));
        }
        let removed = self.log.split_off(self.position(from));
        self.rollback.extend(removed.iter().map(|entry| RolledBack {
            rolled_back_in_epoch: epoch,
            entry: entry.clone(),
        }));
        if rebuild {
            self.state.clear();
            self.sessions.clear();
            self.meta.applied_index = self.meta.log_start - 1;
            self.meta.key_count = 0;
            let log = std::mem::take(&mut self.log);
            let reapplied = self.apply(&log);
            self.log = log;
            reapplied?;
        }
        Ok(removed)
    }
}

/// The memory engine's side of [`apply_entries`].
struct StateTarget<'a>(&'a mut Contents);

impl ApplyTarget for StateTarget<'_> {
    type Error = Error;

    fn session(&mut self, client_id: u64) -> Result<Option<Session>> {
        Ok(self.0.sessions.get(&client_id).cloned())
    }

    fn set_session(&mut self, client_id: u64, session: Session) -> Result<()> {
        self.0.sessions.insert(client_id, session);
        Ok(())
    }

    fn remove_session(&mut self, client_id: u64) -> Result<()> {
        self.0.sessions.remove(&client_id);
        Ok(())
    }

    fn put(&mut self, key: &[u8], value: &[u8], version: LogIndex) -> Result<bool> {
        let versioned = Versioned {
            version,
            value: value.to_vec(),
        };
        Ok(self.0.state.insert(key.to_vec(), versioned).is_some())
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool> {
        Ok(self.0.state.remove(key).is_some())
    }

    fn set_applied_index(&mut self, index: LogIndex) -> Result<()> {
        self.0.meta.applied_index = index;
        Ok(())
    }

    fn key_count(&mut self) -> Result<u64> {
        Ok(self.0.meta.key_count)
    }

    fn set_key_count(&mut self, count: u64) -> Result<()> {
        self.0.meta.key_count = count;
        Ok(())
    }

    fn set_membership(&mut self, membership: &Membership) -> Result<()> {
        self.0.meta.membership = Some(membership.clone());
        Ok(())
    }
}

impl Storage for MemoryStorage {
    fn append(&self, entries: &[Entry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        check_append(self.lock().live.last(), entries)?;
        self.lock().appends += 1;
        // One journaled write per entry, so a crash may keep any prefix of the entries; that
        // covers every prefix of the runs sled inserts them in.
        for entry in entries {
            self.write(Write::Append(vec![entry.clone()]), |contents| {
                contents.log.push(entry.clone());
                Ok(())
            })?;
        }
        Ok(())
    }

    fn entry(&self, index: LogIndex) -> Result<Option<Entry>> {
        let mut inner = self.lock();
        inner.entry_lookups += 1;
        let contents = &inner.live;
        if index < contents.meta.log_start {
            return Ok(None);
        }
        Ok(contents.log.get(contents.position(index)).cloned())
    }

    fn entries(&self, from: LogIndex, to: LogIndex, max_bytes: usize) -> Result<Vec<Entry>> {
        let inner = self.lock();
        let contents = &inner.live;
        if from > to {
            return Ok(Vec::new());
        }
        let start = contents.position(from);
        let end = contents.position(to.saturating_add(1));
        let mut collected = Vec::new();
        let mut total_bytes = 0usize;
        for entry in &contents.log[start..end] {
            let size = encoded_len(entry)?;
            if !fits(collected.len(), total_bytes, size, max_bytes) {
                break;
            }
            total_bytes += size;
            collected.push(entry.clone());
        }
        Ok(collected)
    }

    fn last(&self) -> Result<(Epoch, LogIndex)> {
        Ok(self.lock().live.last())
    }

    fn truncate_suffix(&self, from: LogIndex, epoch: Epoch) -> Result<Vec<Entry>> {
        self.write(Write::TruncateSuffix { from, epoch }, |contents| {
            contents.truncate_suffix(from, epoch)
        })
    }

    fn rolled_back(&self) -> Result<Vec<RolledBack>> {
        Ok(self.lock().live.rollback.clone())
    }

    fn meta(&self) -> Result<Meta> {
        Ok(self.lock().live.meta.clone())
    }

    fn set_epoch_and_vote(&self, epoch: Epoch, vote: Option<NodeId>) -> Result<()> {
        self.write(Write::EpochAndVote(epoch, vote), |contents| {
            contents.meta.epoch = epoch;
            contents.meta.vote = vote;
            Ok(())
        })
    }

    fn set_commit_index(&self, index: LogIndex) -> Result<()> {
        self.write(Write::CommitIndex(index), |contents| {
            contents.meta.commit_index = index;
            Ok(())
        })
    }

    fn set_membership(&self, membership: &Membership) -> Result<()> {
        self.write(Write::Membership(membership.clone()), |contents| {
            contents.meta.membership = Some(membership.clone());
            Ok(())
        })
    }

    fn apply(&self, entries: &[Entry]) -> Result<Vec<WriteResult>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        self.write(Write::Apply(entries.to_vec()), |contents| {
            contents.apply(entries)
        })
    }

    fn get_versioned(&self, key: &[u8]) -> Result<Option<Versioned>> {
        Ok(self.lock().live.state.get(key).cloned())
    }

    fn scan_page(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        max_pairs: usize,
        max_bytes: usize,
    ) -> Result<ScanPage> {
        let inner = self.lock();
        let pairs = inner
            .live
            .state
            .range::<[u8], _>((scan_start(prefix, after), std::ops::Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter(|(key, _)| shown_by_scan(prefix, key))
            .map(|(key, versioned)| Ok((key, versioned.clone())));
        collect_page(pairs, max_pairs, max_bytes)
    }

    fn session(&self, client_id: u64) -> Result<Option<Session>> {
        Ok(self.lock().live.sessions.get(&client_id).cloned())
    }

    fn log_bytes(&self) -> Result<u64> {
        let inner = self.lock();
        let mut total = 0u64;
        for entry in &inner.live.log {
            total += encoded_len(entry)? as u64;
        }
        Ok(total)
    }

    fn key_count(&self) -> Result<u64> {
        Ok(self.lock().live.meta.key_count)
    }

    fn session_count(&self) -> Result<u64> {
        Ok(self.lock().live.sessions.len() as u64)
    }

    fn size_bytes(&self) -> Result<u64> {
        let state_bytes: usize = self
            .lock()
            .live
            .state
            .iter()
            .map(|(key, versioned)| key.len() + versioned.value.len())
            .sum();
        Ok(state_bytes as u64 + self.log_bytes()?)
    }

    fn compact(&self, through: LogIndex) -> Result<()> {
        self.write(Write::Compact(through), |contents| {
            contents.compact(through)
        })
    }

    fn state_chunk(&self, after: Option<&[u8]>, max_bytes: usize) -> Result<ScanPage> {
        let inner = self.lock();
        let range = match after {
            Some(after) => inner
                .live
                .state
                .range::<[u8], _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => inner.live.state.range::<[u8], _>(..),
        };
        collect_page(
            range.map(|(key, versioned)| Ok((key, versioned.clone()))),
            usize::MAX,
            max_bytes,
        )
    }

    fn sessions_after(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, Session)>> {
        let start = match after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        Ok(self
            .lock()
            .live
            .sessions
            .range((start, std::ops::Bound::Unbounded))
            .take(limit)
            .map(|(id, session)| (*id, session.clone()))
            .collect())
    }

    fn begin_snapshot(&self) -> Result<()> {
        self.write(Write::BeginSnapshot, |contents| {
            contents.begin_snapshot();
            Ok(())
        })
    }

    fn stage_snapshot(
        &self,
        pairs: &[(Vec<u8>, Option<Versioned>)],
        sessions: &[(u64, Option<Session>)],
        progress: &StagedSnapshot,
    ) -> Result<()> {
        let write = Write::StageSnapshot(pairs.to_vec(), sessions.to_vec(), progress.clone());
        self.write(write, |contents| {
            contents.stage(pairs, sessions, progress.clone());
            Ok(())
        })
    }

    fn staged_snapshot(&self) -> Result<Option<StagedSnapshot>> {
        Ok(self.lock().live.staged_progress.clone())
    }

    fn install_snapshot(
        &self,
        finish: &SnapshotFinish,
        commit_index: LogIndex,
        epoch: Epoch,
    ) -> Result<Vec<Entry>> {
        let write = Write::InstallSnapshot {
            finish: finish.clone(),
            commit_index,
            epoch,
        };
        let removed = self.write(write, |contents| {
            Ok(contents.install_snapshot(finish, commit_index, epoch))
        })?;
        // The sled engine flushes as it installs; so does this model.
        self.flush()?;
        Ok(removed)
    }

    fn flush(&self) -> Result<()> {
        self.lock().persist_unflushed()
    }
}
