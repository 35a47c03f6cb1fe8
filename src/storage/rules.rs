//! The rules both storage engines share, so that they accept and refuse the same operations with
//! the same messages: which appends keep the log contiguous, which truncations and compactions are
//! allowed, and how reads are cut into batches of at most `max_bytes`.
//!
//! Every refusal here is an [`Error::Storage`]: it means the caller broke the storage contract,
//! and a node that meets one stops rather than serve from a store it cannot trust.

use crate::error::{Error, Result};
use crate::wire::message::{Entry, Epoch, LogIndex};

/// The first log index of a node that has never compacted its log.
pub(crate) const FIRST_INDEX: LogIndex = 1;

/// Checks that `entries` may follow a log whose last entry is `last`: indexes contiguous from
/// `last.1 + 1` and epochs never decreasing. Both engines call this, so they refuse the same
/// appends with the same message.
pub(crate) fn check_append(last: (Epoch, LogIndex), entries: &[Entry]) -> Result<()> {
    let (mut previous_epoch, mut previous_index) = last;
    for entry in entries {
        if entry.index != previous_index + 1 {
            return Err(Error::Storage(format!(
                "cannot append entry {} after entry {previous_index}: the log must stay contiguous",
                entry.index
            )));
        }
        if entry.epoch < previous_epoch {
            return Err(Error::Storage(format!(
                "cannot append entry {} of epoch {} after epoch {previous_epoch}: epochs in a log never decrease",
                entry.index, entry.epoch
            )));
        }
        previous_epoch = entry.epoch;
        previous_index = entry.index;
    }
    Ok(())
}

/// The encoded size of `entry`, which is what `max_bytes` in [`Storage::entries`](super::Storage::entries) counts.
pub(crate) fn encoded_len(entry: &Entry) -> Result<usize> {
    postcard::experimental::serialized_size(entry)
        .map_err(|err| Error::Storage(format!("cannot size entry {}: {err}", entry.index)))
}

/// Collects state pairs in order until `max_bytes` of keys and values (at least one pair): the
/// chunking rule of [`Storage::state_chunk`](super::Storage::state_chunk), shared by both engines.
pub(crate) fn collect_chunk<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    pairs: impl Iterator<Item = Result<(K, V)>>,
    max_bytes: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut chunk = Vec::new();
    let mut bytes = 0usize;
    for pair in pairs {
        let (key, value) = pair?;
        let (key, value) = (key.as_ref(), value.as_ref());
        let size = key.len() + value.len();
        if !fits(chunk.len(), bytes, size, max_bytes) {
            break;
        }
        bytes += size;
        chunk.push((key.to_vec(), value.to_vec()));
    }
    Ok(chunk)
}

/// Whether a batch of `collected` items totalling `total_bytes` may take one more of `size` bytes:
/// the first always fits, later ones only while the total stays within `max_bytes`.
pub(crate) fn fits(collected: usize, total_bytes: usize, size: usize, max_bytes: usize) -> bool {
    collected == 0 || total_bytes.saturating_add(size) <= max_bytes
}

/// The error for truncating entries that were compacted away (or index 0).
pub(crate) fn truncate_before_start(from: LogIndex, log_start: LogIndex) -> Error {
    Error::Storage(format!(
        "cannot truncate the log from entry {from}: the log starts at entry {log_start}"
    ))
}

/// Refuses a compaction past the applied index or the end of the log.
pub(crate) fn check_compact(
    through: LogIndex,
    log_start: LogIndex,
    last: LogIndex,
    applied_index: LogIndex,
) -> Result<()> {
    if through > applied_index || through > last {
        return Err(Error::Storage(format!(
            "cannot compact the log through entry {through}: only entries up to {} are applied \
             (log {log_start}..={last})",
            applied_index.min(last)
        )));
    }
    Ok(())
}

/// The error for rolling back applied entries when the log no longer holds what produced the
/// state before them.
pub(crate) fn rebuild_after_compaction(
    from: LogIndex,
    applied_index: LogIndex,
    log_start: LogIndex,
) -> Error {
    Error::Storage(format!(
        "cannot roll back entries {from}..={applied_index}: they were applied and the log before \
         entry {log_start} was compacted, so the state cannot be rebuilt; resync this node from a snapshot"
    ))
}
