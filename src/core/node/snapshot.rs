//! Log compaction, and snapshots for members whose next entry was compacted away.
//!
//! The primary streams its state and its sessions table to such a member in chunks, within a
//! window of [`SNAPSHOT_WINDOW`] unacknowledged chunks; the member stages the chunks beside its
//! live state and sessions and installs them with the last one, atomically.
//!
//! Invariants:
//! - Only the applied prefix of the log is compacted, in bounded steps.
//! - Every chunk holds at most `max_append_bytes` of encoded pairs and sessions (or a single
//!   larger pair), the last one included, so every chunk fits a peer frame however large the
//!   state, the sessions table or the set of keys written during the transfer.
//! - A member ends a transfer with exactly the primary's state and sessions at the snapshot's
//!   index: keys and sessions changed while the transfer runs are sent again, as they are then;
//!   the final chunk is built only once every change has been sent, at the applied index of that
//!   moment.
//! - A backup stages only the chunks of one transfer of its current epoch, in sequence order; any
//!   other chunk is ignored, and the transfer restarts.
//! - A snapshot never moves a node's commit index backwards: one at or below it is only
//!   acknowledged, not installed.

use std::collections::BTreeSet;

use tracing::{debug, info};

use crate::core::Timestamp;
use crate::error::Result;
use crate::storage::{fits_in_batch, framed_pair_bytes, SESSION_RECORD_BYTES};
use crate::wire::message::{Entry, Epoch, MessageBody, NodeId, Operation, Session, SnapshotFinish};

use super::Node;

/// Snapshot chunks in flight to one member before the primary waits for acks.
const SNAPSHOT_WINDOW: u64 = 4;

/// What a transfer sends next.
#[derive(Clone, Debug)]
enum TransferPhase {
    /// The state, in key order, after the key sent last.
    State { cursor: Option<Vec<u8>> },
    /// The sessions table, by client id, after the client sent last.
    Sessions { cursor: Option<u64> },
    /// The keys and sessions changed since the transfer began, as they are now, until none is
    /// left: that chunk is the final one.
    Changes,
    /// The final chunk was sent; the transfer ends when the member acknowledges the index.
    Finished,
}

/// A snapshot of the primary's state on its way to one member.
///
/// The state and sessions are read in chunks while the primary keeps applying writes, so the
/// chunks alone are fuzzy. Every key and session changed after the transfer began is recorded as
/// dirty and sent again, as it is then, after the scans; the final chunk goes out once nothing
/// dirty is left, and names the applied index of that moment. So the member ends with exactly the
/// state at that index.
#[derive(Debug)]
pub(super) struct SnapshotTransfer {
    /// Numbers this primary's transfers (restarts with every primary term).
    id: u64,
    phase: TransferPhase,
    /// Keys applied since the transfer began and not sent since.
    dirty_keys: BTreeSet<Vec<u8>>,
    /// Client ids whose session changed since the transfer began and was not sent since.
    dirty_sessions: BTreeSet<u64>,
    /// The sequence number of the next chunk.
    next_sequence: u64,
    /// The highest chunk the member acknowledged.
    acked_sequence: Option<u64>,
    /// The last chunk sent or acknowledged, to end a stalled transfer.
    last_activity: Timestamp,
}

/// What one chunk carries (the fields of [`MessageBody::SnapshotChunk`] past its numbering).
#[derive(Default)]
pub(super) struct Chunk {
    pub(super) pairs: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub(super) sessions: Vec<(u64, Option<Session>)>,
    pub(super) finish: Option<SnapshotFinish>,
}

/// A snapshot this backup is receiving.
///
/// A transfer is named by `(epoch, from, transfer)`: transfer ids restart in every primary term,
/// so without the epoch a chunk of a new term's transfer could continue a stale one of an earlier
/// term, and the snapshot installed would mix two states.
#[derive(Debug)]
pub(super) struct IncomingSnapshot {
    /// This node's epoch when the transfer began.
    epoch: Epoch,
    /// The primary sending it.
    from: NodeId,
    /// The sender's id for the transfer.
    transfer: u64,
    /// The sequence number of the next chunk to stage.
    next_sequence: u64,
}

impl Node {
    /// The snapshot transfer to `member` in progress, if any.
    fn transfer_to(&mut self, member: NodeId) -> Option<&mut SnapshotTransfer> {
        self.primary_state()?.transfers.get_mut(&member)
    }

    // --- compaction ---

    /// Compacts the applied prefix of the log once it holds more than `log_retention_bytes`,
    /// down to about three quarters of that, in bounded steps.
    pub(super) fn compact_log(&mut self) -> Result<()> {
        // Compaction runs inside the event loop, so it goes in small steps, at most one per
        // heartbeat interval (about 20,000 entries a second): a large step would hold up
        // heartbeats long enough for the primary to lose its majority.
        const MAX_ENTRIES_PER_STEP: u64 = 2_000;
        if self.now < self.next_compaction {
            return Ok(());
        }
        self.next_compaction = self.now + self.options.heartbeat_interval_ms;
        let retention = self.options.log_retention_bytes;
        let log_bytes = self.log.stored_bytes()?;
        let (log_start, last_index) = (self.log.start(), self.log.last_index());
        if log_bytes <= retention || last_index < log_start {
            return Ok(());
        }
        let entries = last_index - log_start + 1;
        let average = (log_bytes / entries).max(1);
        let excess = (log_bytes - retention * 3 / 4) / average + 1;
        let through = (log_start - 1 + excess.min(MAX_ENTRIES_PER_STEP)).min(self.applied_index);
        if through < log_start {
            return Ok(());
        }
        self.log.compact(through)?;
        debug!(node = self.id, through, "compacted the log");
        Ok(())
    }

    // --- the primary: sending ---

    /// Starts (or continues) a snapshot transfer to `member`.
    pub(super) fn send_snapshot(&mut self, member: NodeId) -> Result<()> {
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
                    phase: TransferPhase::State { cursor: None },
                    dirty_keys: BTreeSet::new(),
                    dirty_sessions: BTreeSet::new(),
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
        loop {
            let Some(transfer) = self.transfer_to(member) else {
                return Ok(());
            };
            let in_flight = transfer.next_sequence - transfer.acked_sequence.map_or(0, |s| s + 1);
            if matches!(transfer.phase, TransferPhase::Finished) || in_flight >= SNAPSHOT_WINDOW {
                return Ok(());
            }
            let (id, sequence) = (transfer.id, transfer.next_sequence);
            let Some(chunk) = self.next_chunk(member)? else {
                return Ok(());
            };
            let now = self.now;
            let Some(transfer) = self.transfer_to(member) else {
                return Ok(());
            };
            transfer.next_sequence += 1;
            transfer.last_activity = now;
            if let Some(finish) = &chunk.finish {
                transfer.phase = TransferPhase::Finished;
                let index = finish.index;
                // Appends resume after the snapshot's index once the member acknowledges it.
                if let Some(progress) = self.progress_of(member) {
                    progress.reset_to(index + 1, now);
                }
            }
            self.send(
                member,
                MessageBody::SnapshotChunk {
                    transfer: id,
                    sequence,
                    pairs: chunk.pairs,
                    sessions: chunk.sessions,
                    finish: chunk.finish,
                },
            );
        }
    }

    /// The next chunk of `member`'s transfer, within `max_append_bytes`, advancing its phase.
    /// A phase that ends inside a chunk leaves the rest of the budget to the next one, so a small
    /// snapshot travels as one chunk: every chunk a member must receive in order is one more
    /// chance for the network to reorder or lose it and the transfer to restart.
    fn next_chunk(&mut self, member: NodeId) -> Result<Option<Chunk>> {
        let budget = self.options.max_append_bytes;
        let mut chunk = Chunk::default();
        let mut bytes = 0usize;
        loop {
            let Some(transfer) = self.transfer_to(member) else {
                return Ok(None);
            };
            match transfer.phase.clone() {
                TransferPhase::State { cursor } => {
                    // The state phase starts the transfer's first chunk, so it has the budget.
                    let page =
                        self.storage
                            .scan_page(b"", cursor.as_deref(), usize::MAX, budget)?;
                    bytes += page
                        .pairs
                        .iter()
                        .map(|(key, value)| framed_pair_bytes(key, value))
                        .sum::<usize>();
                    let last = page.pairs.last().map(|(key, _)| key.clone());
                    chunk.pairs.extend(
                        page.pairs
                            .into_iter()
                            .map(|(key, value)| (key, Some(value))),
                    );
                    let Some(transfer) = self.transfer_to(member) else {
                        return Ok(None);
                    };
                    if page.more {
                        transfer.phase = TransferPhase::State { cursor: last };
                        return Ok(Some(chunk));
                    }
                    transfer.phase = TransferPhase::Sessions { cursor: None };
                }
                TransferPhase::Sessions { cursor } => {
                    let mut room = budget.saturating_sub(bytes) / SESSION_RECORD_BYTES;
                    if chunk.pairs.is_empty() {
                        room = room.max(1);
                    }
                    if room == 0 {
                        return Ok(Some(chunk));
                    }
                    // One more than there is room for, to learn whether the table goes on.
                    let mut sessions = self.storage.sessions_after(cursor, room + 1)?;
                    let more = sessions.len() > room;
                    sessions.truncate(room);
                    bytes += sessions.len() * SESSION_RECORD_BYTES;
                    let last = sessions.last().map(|(client_id, _)| *client_id);
                    chunk.sessions.extend(
                        sessions
                            .into_iter()
                            .map(|(client_id, session)| (client_id, Some(session))),
                    );
                    let Some(transfer) = self.transfer_to(member) else {
                        return Ok(None);
                    };
                    if more {
                        transfer.phase = TransferPhase::Sessions { cursor: last };
                        return Ok(Some(chunk));
                    }
                    transfer.phase = TransferPhase::Changes;
                }
                TransferPhase::Changes => {
                    self.add_changes(member, &mut chunk, bytes)?;
                    return Ok(Some(chunk));
                }
                TransferPhase::Finished => return Ok(None),
            }
        }
    }

    /// Adds to `chunk` (holding `bytes` already) the keys and sessions changed since the transfer
    /// began, as they are now, within `max_append_bytes`. When it takes the last of them, the
    /// chunk is the final one: the state and sessions sent so far are exactly those at the
    /// applied index, which it names.
    fn add_changes(&mut self, member: NodeId, chunk: &mut Chunk, mut bytes: usize) -> Result<()> {
        let budget = self.options.max_append_bytes;
        let Some(transfer) = self.transfer_to(member) else {
            return Ok(());
        };
        let mut dirty_keys = std::mem::take(&mut transfer.dirty_keys);
        let mut dirty_sessions = std::mem::take(&mut transfer.dirty_sessions);
        let taken = |chunk: &Chunk| chunk.pairs.len() + chunk.sessions.len();
        while let Some(key) = dirty_keys.first() {
            let value = self.storage.get(key)?;
            let size = framed_pair_bytes(key, value.as_deref().unwrap_or_default());
            if !fits_in_batch(taken(chunk), bytes, size, budget) {
                break;
            }
            bytes += size;
            if let Some(key) = dirty_keys.pop_first() {
                chunk.pairs.push((key, value));
            }
        }
        while let Some(&client_id) = dirty_sessions.first() {
            if !fits_in_batch(taken(chunk), bytes, SESSION_RECORD_BYTES, budget) {
                break;
            }
            bytes += SESSION_RECORD_BYTES;
            dirty_sessions.pop_first();
            chunk
                .sessions
                .push((client_id, self.storage.session(client_id)?));
        }
        let done = dirty_keys.is_empty() && dirty_sessions.is_empty();
        if let Some(transfer) = self.transfer_to(member) {
            transfer.dirty_keys = dirty_keys;
            transfer.dirty_sessions = dirty_sessions;
        }
        if done {
            chunk.finish = Some(SnapshotFinish {
                index: self.applied_index,
                epoch: self.log.epoch_at(self.applied_index)?,
                membership: self.applied_membership.clone(),
            });
        }
        Ok(())
    }

    pub(super) fn on_snapshot_ack(
        &mut self,
        member: NodeId,
        transfer_id: u64,
        sequence: u64,
    ) -> Result<()> {
        let now = self.now;
        let Some(transfer) = self.transfer_to(member) else {
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
        if let Some(progress) = self.progress_of(member) {
            progress.last_contact = Some(now);
        }
        self.send_snapshot_chunks(member)
    }

    /// Ends transfers that are installed (the member acknowledged the snapshot's index) or
    /// stalled (restarted from scratch on the next retransmission), and keeps the rest moving.
    pub(super) fn continue_snapshots(&mut self) -> Result<()> {
        let now = self.now;
        let stall = 2 * self.options.failure_timeout_ms;
        let Some(state) = self.primary_state() else {
            return Ok(());
        };
        let progress = &state.progress;
        state.transfers.retain(|member, transfer| {
            let installed = matches!(transfer.phase, TransferPhase::Finished)
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

    /// Keys and sessions changed by `entries` (just applied) are dirty for every snapshot being
    /// streamed.
    pub(super) fn record_dirty(&mut self, entries: &[Entry]) {
        let Some(state) = self.primary_state() else {
            return;
        };
        let streaming = |t: &&mut SnapshotTransfer| !matches!(t.phase, TransferPhase::Finished);
        for transfer in state.transfers.values_mut().filter(streaming) {
            for entry in entries {
                match &entry.operation {
                    Operation::Put { .. } | Operation::Delete { .. } | Operation::Batch { .. } => {
                        let keys = entry.operation.touched_keys().into_iter();
                        transfer.dirty_keys.extend(keys.map(<[u8]>::to_vec));
                    }
                    Operation::ExpireSessions(expired) => {
                        let clients = expired.iter().map(|expired| expired.client_id);
                        transfer.dirty_sessions.extend(clients);
                    }
                    Operation::Noop | Operation::Membership(_) => {}
                }
                if let Some(request_id) = entry.request_id {
                    transfer.dirty_sessions.insert(request_id.client_id);
                }
            }
        }
    }

    // --- the backup: receiving ---

    /// A backup stages snapshot chunks and installs the snapshot with its last chunk.
    pub(super) fn on_snapshot_chunk(
        &mut self,
        from: NodeId,
        transfer: u64,
        sequence: u64,
        chunk: Chunk,
    ) -> Result<()> {
        let Chunk {
            pairs,
            sessions,
            finish,
        } = chunk;
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
        self.storage.stage_snapshot(&pairs, &sessions)?;
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
        // The snapshot was flushed as it was installed.
        self.log.reset_to_snapshot(finish.index, finish.epoch);
        self.commit_index = finish.index;
        self.persisted_commit_index = finish.index;
        self.applied_index = finish.index;
        self.verified_index = finish.index;
        self.applied_membership = finish.membership;
        self.recompute_membership()?;
        self.ack_append(true);
        Ok(())
    }
}
