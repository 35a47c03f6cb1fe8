//! [`Log`]: this node's operation log as the protocol sees it, in the style of toyDB's `Log` and
//! raft-rs's `RaftLog`. It owns the log's positions (start, last, durable), the in-memory cache of
//! recent entries, and every read and write of log entries in storage; the state, the sessions and
//! the metadata are the node's business.
//!
//! Invariants:
//! - `start <= last_index + 1`: entries before `start` were compacted into the state, and
//!   `start - 1` is the snapshot point.
//! - `durable_index <= written_index <= last_index`: an entry is durable only once it was written
//!   to storage, and written only once it exists. Appends go to the cache at once and to
//!   storage at the next [`Log::write`], which the node calls once per pass and before anything
//!   that reads the log back from storage or applies it: one storage append for a whole pass of
//!   client writes, since sled's cost is per insert (docs/BENCHMARKS.md).
//! - The cache, when not empty, holds exactly the entries `[cache_first_index() ..= last_index]`,
//!   in order: appends extend it at the end, truncation cuts it at the same index as the log, and
//!   only applied and written entries are dropped from its front, so it holds every entry not yet
//!   written. It never reaches before `start`:
//!   compaction drops the entries it removes from the cache too.
//! - `generation` changes whenever entries are removed from the end (truncation, snapshot), so a
//!   [`FlushTicket`] issued before cannot mark the new entries durable.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::core::FlushTicket;
use crate::error::{Error, Result};
use crate::storage::{check_append, Storage};
use crate::wire::message::{Answer, Change, Entry, Epoch, LogIndex, Operation};

/// Entries kept in memory so live replication never reads them back from storage.
const MAX_CACHED_ENTRIES: usize = 100_000;

/// ... and at most this many bytes of them (approximate encoded size).
const MAX_CACHED_BYTES: usize = 64 * 1024 * 1024;

/// Encoded bytes of entries read from storage in one batch.
const READ_BATCH_BYTES: usize = 4 << 20;

/// Cached entries handed out in one batch by [`Log::batch`].
const CACHED_BATCH_ENTRIES: usize = 4096;

/// The log's positions, its cache, and its storage.
pub(super) struct Log {
    /// The node's storage; log entries are read and written only through this type.
    storage: Arc<dyn Storage>,
    /// Index of the last entry (the snapshot point if the log is empty).
    last_index: LogIndex,
    /// Epoch of the last entry.
    last_epoch: Epoch,
    /// Entries up to here are flushed.
    durable_index: LogIndex,
    /// Entries up to here are written to storage; the later ones are only in the cache.
    written_index: LogIndex,
    /// The first index in the log; entries before it were compacted into the state.
    start: LogIndex,
    /// Bumped whenever entries are removed from the end; see [`FlushTicket`].
    generation: u64,
    /// Recent entries `[cache first index ..= last_index]`, for replication and speculation.
    cache: VecDeque<Entry>,
    /// Approximate bytes of the entries in `cache`.
    cache_bytes: usize,
}

impl Log {
    /// Opens the log in `storage`, which starts at `start` (from the node's metadata). Whatever
    /// the log holds on opening is durable: it survived the restart.
    pub(super) fn open(storage: Arc<dyn Storage>, start: LogIndex) -> Result<Log> {
        let (last_epoch, last_index) = storage.last()?;
        Ok(Log {
            storage,
            last_index,
            last_epoch,
            durable_index: last_index,
            written_index: last_index,
            start,
            generation: 0,
            cache: VecDeque::new(),
            cache_bytes: 0,
        })
    }

    pub(super) fn last_index(&self) -> LogIndex {
        self.last_index
    }

    pub(super) fn last_epoch(&self) -> Epoch {
        self.last_epoch
    }

    pub(super) fn durable_index(&self) -> LogIndex {
        self.durable_index
    }

    /// The first index in the log.
    pub(super) fn start(&self) -> LogIndex {
        self.start
    }

    /// The last index compacted into the state (0 if none).
    pub(super) fn snapshot_index(&self) -> LogIndex {
        self.start - 1
    }

    // --- durability ---

    /// A flush the log needs, if it has written entries that are not yet durable.
    pub(super) fn flush_needed(&self) -> Option<FlushTicket> {
        (self.durable_index < self.written_index).then_some(FlushTicket {
            index: self.written_index,
            generation: self.generation,
        })
    }

    /// Writes the entries appended since the last write to storage (buffered), in one append
    /// (two when the cache's ring wraps between them).
    pub(super) fn write(&mut self) -> Result<()> {
        if self.written_index == self.last_index {
            return Ok(());
        }
        let first = self.cache_first_index();
        assert!(
            first <= self.written_index + 1,
            "every entry not yet written is in the cache"
        );
        let skip = (self.written_index + 1 - first) as usize;
        let (front, back) = self.cache.as_slices();
        if skip < front.len() {
            self.storage.append(&front[skip..])?;
            self.storage.append(back)?;
        } else {
            self.storage.append(&back[skip - front.len()..])?;
        }
        self.written_index = self.last_index;
        Ok(())
    }

    /// Records a finished flush. Returns whether the durable index advanced.
    pub(super) fn flushed(&mut self, ticket: FlushTicket) -> bool {
        if ticket.generation != self.generation {
            return false; // the log was truncated meanwhile; a later flush covers the new entries
        }
        let durable = ticket.index.min(self.last_index);
        if durable <= self.durable_index {
            return false;
        }
        self.durable_index = durable;
        true
    }

    // --- changes ---

    /// Appends `entries`, which must follow the last entry, to the cache; [`Log::write`] writes
    /// them to storage. Entries above `applied_index` are never dropped from the cache
    /// (speculation needs them).
    pub(super) fn append(&mut self, entries: Vec<Entry>, applied_index: LogIndex) -> Result<()> {
        check_append((self.last_epoch, self.last_index), &entries)?;
        for entry in entries {
            self.last_index = entry.index;
            self.last_epoch = entry.epoch;
            self.push_cache(entry, applied_index);
        }
        Ok(())
    }

    fn push_cache(&mut self, entry: Entry, applied_index: LogIndex) {
        if let Some(last) = self.cache.back() {
            if last.index + 1 != entry.index {
                self.clear_cache();
            }
        }
        self.cache_bytes += entry_size(&entry);
        self.cache.push_back(entry);
        // Keep unapplied entries (speculation needs them) and unwritten ones (only the cache has
        // them); drop the oldest others.
        let droppable = applied_index.min(self.written_index);
        while (self.cache.len() > MAX_CACHED_ENTRIES || self.cache_bytes > MAX_CACHED_BYTES)
            && self.cache.front().is_some_and(|e| e.index <= droppable)
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

    /// Moves `[index ..]` to the rollback tree, tagged `epoch`, and returns the removed entries.
    /// The caller checks that none of them is committed.
    pub(super) fn truncate_from(&mut self, index: LogIndex, epoch: Epoch) -> Result<Vec<Entry>> {
        // Written first, so the rollback tree records every removed entry.
        self.write()?;
        let removed = self.storage.truncate_suffix(index, epoch)?;
        let (last_epoch, last_index) = self.storage.last()?;
        self.last_index = last_index;
        self.last_epoch = last_epoch;
        self.written_index = last_index;
        self.durable_index = self.durable_index.min(last_index);
        self.generation += 1;
        while self.cache.back().is_some_and(|e| e.index >= index) {
            if let Some(dropped) = self.cache.pop_back() {
                self.cache_bytes = self.cache_bytes.saturating_sub(entry_size(&dropped));
            }
        }
        Ok(removed)
    }

    /// Removes the entries up to and including `through`, which must be applied.
    pub(super) fn compact(&mut self, through: LogIndex) -> Result<()> {
        assert!(
            through >= self.start,
            "compaction only moves the log start forward"
        );
        assert!(
            through <= self.written_index,
            "only written entries are applied, so only they are compacted"
        );
        self.storage.compact(through)?;
        self.start = through + 1;
        // The cache holds only entries the log still has. A compacted entry left in it would let
        // a member whose next index is in the cache but before `start` be sent neither an append
        // (the epoch of the entry before it is gone) nor a snapshot (it is not behind the cache).
        while self.cache.front().is_some_and(|e| e.index <= through) {
            if let Some(dropped) = self.cache.pop_front() {
                self.cache_bytes = self.cache_bytes.saturating_sub(entry_size(&dropped));
            }
        }
        Ok(())
    }

    /// Encoded bytes of the entries in storage, for the retention bound.
    pub(super) fn stored_bytes(&self) -> Result<u64> {
        self.storage.log_bytes()
    }

    /// The log was replaced by a snapshot ending at `(epoch, index)`, which storage installed and
    /// flushed: the log is empty and starts after it.
    pub(super) fn reset_to_snapshot(&mut self, index: LogIndex, epoch: Epoch) {
        self.last_index = index;
        self.written_index = index;
        self.last_epoch = epoch;
        self.start = index + 1;
        self.durable_index = index;
        self.generation += 1;
        self.clear_cache();
    }

    // --- reads ---

    /// The first index in the cache (`last_index + 1` when it is empty).
    pub(super) fn cache_first_index(&self) -> LogIndex {
        self.cache.front().map_or(self.last_index + 1, |e| e.index)
    }

    /// The cached entries, oldest first.
    pub(super) fn cached_entries(&self) -> impl DoubleEndedIterator<Item = &Entry> {
        self.cache.iter()
    }

    /// Cached entries `[from ..= to]`, which must be in the cache, stopping once `max_bytes`
    /// (approximate) are collected; at least one.
    pub(super) fn cached_batch(
        &self,
        from: LogIndex,
        to: LogIndex,
        max_bytes: usize,
    ) -> Vec<Entry> {
        let first = self.cache_first_index();
        let mut bytes = 0usize;
        let mut entries = Vec::new();
        for entry in self
            .cache
            .range((from - first) as usize..=(to - first) as usize)
        {
            bytes += entry_size(entry);
            entries.push(entry.clone());
            if bytes >= max_bytes {
                break;
            }
        }
        entries
    }

    /// Reloads the cache with `[from ..= last_index]` from storage.
    pub(super) fn fill_cache_from(&mut self, from: LogIndex) -> Result<()> {
        self.write()?;
        self.clear_cache();
        let (cache, cache_bytes) = (&mut self.cache, &mut self.cache_bytes);
        read_batches(&*self.storage, from.max(1), self.last_index, |entries| {
            *cache_bytes += entries.iter().map(entry_size).sum::<usize>();
            cache.extend(entries);
        })
    }

    /// The epoch of the entry at `index` (0 for index 0, the snapshot's epoch for the snapshot
    /// point).
    pub(super) fn epoch_at(&self, index: LogIndex) -> Result<Epoch> {
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

    /// The epochs of the entries `[from ..= to]`, which must all be in the log, read at once:
    /// from the cache where it holds them, else in bounded batches from storage. Never one
    /// lookup per entry: on sled a lookup decodes its entry's run up to the entry, so looking up
    /// each entry of a run costs the square of the run's length (docs/CHAOS.md, "A backup that stopped
    /// catching up").
    pub(super) fn epochs(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Epoch>> {
        if from > to {
            return Ok(Vec::new());
        }
        if from < self.start || to > self.last_index {
            return Err(Error::Internal(format!(
                "epochs of entries {from}..={to} asked of a log holding {}..={}",
                self.start, self.last_index
            )));
        }
        let first = self.cache_first_index();
        let mut epochs = Vec::new();
        if from < first {
            read_batches(&*self.storage, from, to.min(first - 1), |entries| {
                epochs.extend(entries.iter().map(|entry| entry.epoch))
            })?;
        }
        if to >= first {
            let cached = (from.max(first) - first) as usize..=(to - first) as usize;
            epochs.extend(self.cache.range(cached).map(|entry| entry.epoch));
        }
        if epochs.len() as u64 != to - from + 1 {
            return Err(Error::Storage(format!(
                "log entries {from}..={to}: only {} of them are stored",
                epochs.len()
            )));
        }
        Ok(epochs)
    }

    /// Entries from `from` to `to`, stopping early once `max_bytes` are collected (at least one
    /// entry if any is in range), read from storage: `to` must be before the cache.
    pub(super) fn read(
        &self,
        from: LogIndex,
        to: LogIndex,
        max_bytes: usize,
    ) -> Result<Vec<Entry>> {
        assert!(
            to < self.cache_first_index(),
            "entries read from storage lie before the cache, so they are written"
        );
        self.storage.entries(from, to, max_bytes)
    }

    /// A bounded batch of the entries from `from` towards `to`: from the cache when it holds
    /// `from`, else one storage read that stops before the cache.
    pub(super) fn batch(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>> {
        let first = self.cache_first_index();
        if from >= first {
            return Ok(self
                .cache
                .range((from - first) as usize..=(to - first) as usize)
                .take(CACHED_BATCH_ENTRIES)
                .cloned()
                .collect());
        }
        read_batch(&*self.storage, from, to.min(first.saturating_sub(1)))
    }

    /// Hands every entry in `[from ..= to]` to `visit`, read from storage in bounded batches
    /// (after writing what the cache alone holds).
    pub(super) fn scan(
        &mut self,
        from: LogIndex,
        to: LogIndex,
        mut visit: impl FnMut(Entry),
    ) -> Result<()> {
        self.write()?;
        read_batches(&*self.storage, from, to, |entries| {
            entries.into_iter().for_each(&mut visit)
        })
    }
}

/// One read of `[from ..= to]` from storage, bounded by [`READ_BATCH_BYTES`].
fn read_batch(storage: &dyn Storage, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>> {
    storage.entries(from, to, READ_BATCH_BYTES)
}

/// Reads `[from ..= to]` from storage batch by batch, handing each batch to `visit`; stops early
/// if storage has no entry at the next index.
fn read_batches(
    storage: &dyn Storage,
    from: LogIndex,
    to: LogIndex,
    mut visit: impl FnMut(Vec<Entry>),
) -> Result<()> {
    let mut next = from;
    while next <= to {
        let entries = read_batch(storage, next, to)?;
        let Some(last) = entries.last().map(|e| e.index) else {
            break;
        };
        visit(entries);
        next = last + 1;
    }
    Ok(())
}

/// Approximate encoded size of an entry, for batching.
fn entry_size(entry: &Entry) -> usize {
    let payload = match &entry.operation {
        Operation::Put { key, value } => key.len() + value.len(),
        Operation::Delete { key } => key.len(),
        Operation::Noop => 0,
        Operation::Membership(membership) => membership.members.len() * 64,
        Operation::ExpireSessions(expired) => expired.len() * 20,
        Operation::Batch { changes, answer } => {
            let answer = match answer {
                Some(Answer::Previous(Some(value))) => value.len(),
                _ => 0,
            };
            let change = |change: &Change| match change {
                Change::Put { key, value } => key.len() + value.len() + 8,
                Change::Delete { key } => key.len() + 8,
            };
            changes.iter().map(change).sum::<usize>() + answer
        }
    };
    payload + 32
}
