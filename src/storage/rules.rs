//! The rules both storage engines share, so that they accept and refuse the same operations with
//! the same messages: which appends keep the log contiguous, which truncations and compactions are
//! allowed, and how reads are cut into batches of at most `max_bytes` (and pages of at most
//! `max_pairs`). A batch's bytes count what the pairs cost once encoded in a message, framing
//! included, so a batch within its budget fits the frame it was sized for.
//!
//! Every refusal here is an [`Error::Storage`]: it means the caller broke the storage contract,
//! and a node that meets one stops rather than serve from a store it cannot trust.

use std::ops::Bound;

use crate::error::{Error, Result};
use crate::storage::ScanPage;
use crate::wire::message::{Answer, Entry, Epoch, LogIndex, Session, Versioned};

/// The most postcard adds to a pair's key and value bytes in a message: two length prefixes (at
/// most 5 bytes each below 32 GiB), the tag of an optional value, and the value's version that a
/// snapshot carries (a varint `u64`, at most 10 bytes).
pub const PAIR_FRAMING_BYTES: usize = 26;

/// The most one `(client id, Option<Session>)` of a snapshot chunk takes encoded, apart from a
/// value its answer holds (see [`session_record_bytes`]): three varint `u64`s of at most 10 bytes,
/// a bool, the option tags, the answer's variant tag and an `i64` varint of at most 10 bytes.
pub const SESSION_RECORD_BYTES: usize = 48;

/// The most one `(client id, Option<Session>)` of a snapshot chunk takes encoded: a session
/// remembers its write's answer, which for `GETDEL` or `SET … GET` is a whole value.
pub fn session_record_bytes(session: Option<&Session>) -> usize {
    let value = match session.and_then(|session| session.result.answer.as_ref()) {
        Some(Answer::Previous(Some(value))) => value.len().saturating_add(PAIR_FRAMING_BYTES),
        _ => 0,
    };
    SESSION_RECORD_BYTES.saturating_add(value)
}

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

/// Collects pairs in order into a page of at most `max_pairs` pairs and `max_bytes` of encoded
/// pairs (at least one pair unless `max_pairs` is 0), and says whether any pair is left after it:
/// the paging rule of [`Storage::scan_page`](super::Storage::scan_page) and of
/// [`Storage::state_chunk`](super::Storage::state_chunk) (no pair limit). Reads at most one pair
/// past the page.
pub(crate) fn collect_page<K: AsRef<[u8]>>(
    pairs: impl Iterator<Item = Result<(K, Versioned)>>,
    max_pairs: usize,
    max_bytes: usize,
) -> Result<ScanPage> {
    let mut page = Vec::new();
    let mut bytes = 0usize;
    for pair in pairs {
        let (key, versioned) = pair?;
        let key = key.as_ref();
        let size = framed_pair_bytes(key, &versioned.value);
        if page.len() >= max_pairs || !fits(page.len(), bytes, size, max_bytes) {
            return Ok(ScanPage {
                pairs: page,
                more: true,
            });
        }
        bytes += size;
        page.push((key.to_vec(), versioned));
    }
    Ok(ScanPage {
        pairs: page,
        more: false,
    })
}

/// What a pair costs in a message: its bytes and their framing.
pub fn framed_pair_bytes(key: &[u8], value: &[u8]) -> usize {
    key.len()
        .saturating_add(value.len())
        .saturating_add(PAIR_FRAMING_BYTES)
}

/// Where a scan of `prefix` resumes: after `after` if it is past the prefix's first key, else at
/// the prefix itself.
pub(crate) fn scan_start<'a>(prefix: &'a [u8], after: Option<&'a [u8]>) -> Bound<&'a [u8]> {
    match after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    }
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
