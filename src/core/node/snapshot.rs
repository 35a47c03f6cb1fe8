//! Log compaction, and snapshots for members whose next entry was compacted away.
//!
//! The primary streams its state and its sessions table to such a member in chunks, within a
//! window of [`SNAPSHOT_WINDOW`] unacknowledged chunks; the member stages the chunks beside its
//! live state and sessions and installs them with the last one, atomically. A transfer opens with
//! an offer that the member answers with what it has staged already ([`StagedSnapshot`]: a begin
//! index and a position), so a transfer cut short by an election, a stall or a lost message
//! resumes where the staging stands instead of at the first key.
//!
//! Why resuming is safe. A transfer's *begin index* `B` is the primary's applied index when it
//! began. Every value staged since is the committed value of its key (or session) at some index
//! `>= B`: each chunk is read from the applied, hence committed, state. So a key whose staged
//! value differs from the value at any later committed index `F` was touched by an entry in
//! `(B, F]`. A primary resuming a transfer at `B` (as the member reports it) therefore marks
//! dirty every key and session touched by its log entries in `(B', last index]`, with
//! `B' = min(B, applied index)`: every committed entry is in its log (a primary's log holds the
//! whole committed history), and the state it scans from now on is at its applied index, at or
//! above `B'`. It resumes the scan at the reported position with `B'` as the new begin index,
//! and the dirty keys go out again before the final chunk, as for any transfer. When its log no
//! longer reaches back to `B' + 1` it cannot know what changed, and starts from scratch.
//!
//! Invariants:
//! - Only the applied prefix of the log is compacted, in bounded steps.
//! - Every chunk holds at most `max_append_bytes` of encoded pairs and sessions (or a single
//!   larger pair), the last one included, so every chunk fits a peer frame however large the
//!   state, the sessions table or the set of keys written during the transfer.
//! - Every value a member stages is the committed value at an index at or above the begin index
//!   its staging record names; a transfer resumes only from a primary whose log holds every entry
//!   after that index, and with every key and session those entries touch marked dirty.
//! - A member ends a transfer with exactly the primary's state and sessions at the snapshot's
//!   index: keys and sessions changed since the begin index are sent again, as they are then;
//!   the final chunk is built only once every change has been sent, at the applied index of that
//!   moment.
//! - A member's staging record (begin index, position) lives in storage beside the staging, never
//!   ahead of it and never with a begin index above that of a staged value, so a member that
//!   restarted resumes too; only a transfer from scratch discards the staging.
//! - A backup stages only the chunks of the transfer it last answered an offer for, in its
//!   current epoch, strictly in sequence order (go-back-N): it acknowledges the next sequence it
//!   expects for every chunk it receives, and the primary resends every unacknowledged chunk,
//!   unchanged, on a repeated acknowledgement or a timeout. A resent chunk is the one sent first,
//!   so the staged result is that of the original sequence.
//! - A transfer ends when the member's append acknowledgement shows the snapshot's index; until
//!   then the final chunk is resent on a timeout and the member, which remembers the transfer it
//!   finished, acknowledges it again (both acknowledgements): a lost final chunk or
//!   acknowledgement never starts a new transfer.
//! - A snapshot never moves a node's commit index backwards: one at or below it is only
//!   acknowledged, not installed.

use std::collections::{BTreeSet, VecDeque};

use tracing::{debug, info};

use crate::core::Timestamp;
use crate::error::Result;
use crate::storage::{
    fits_in_batch, framed_pair_bytes, session_record_bytes, SESSION_RECORD_BYTES,
};
use crate::wire::message::{
    Entry, Epoch, LogIndex, MessageBody, NodeId, Operation, Session, SnapshotFinish,
    SnapshotPosition, StagedSnapshot, Versioned,
};

use super::Node;

/// Snapshot chunks in flight to one member before the primary waits for acks.
const SNAPSHOT_WINDOW: u64 = 4;

/// What a transfer does next.
#[derive(Clone, Debug)]
enum TransferPhase {
    /// The offer is out; the member's answer says where the transfer starts.
    Offered,
    /// Chunks go out from this position.
    Streaming(SnapshotPosition),
    /// The final chunk, of the snapshot at this index, was sent; the transfer ends when the
    /// member's append acknowledgement reaches the index.
    Finished { index: LogIndex },
}

/// A snapshot of the primary's state on its way to one member.
///
/// The state and sessions are read in chunks while the primary keeps applying writes, so the
/// chunks alone are fuzzy. Every key and session changed after the begin index is recorded as
/// dirty and sent again, as it is then, after the scans; the final chunk goes out once nothing
/// dirty is left, and names the applied index of that moment. So the member ends with exactly the
/// state at that index.
#[derive(Debug)]
pub(super) struct SnapshotTransfer {
    /// Numbers this primary's transfers (restarts with every primary term).
    id: u64,
    phase: TransferPhase,
    /// Every value the member has staged is the committed value at this index or later.
    begin_index: LogIndex,
    /// The transfer starts from scratch: its chunk 0 tells the member to discard its staging.
    from_scratch: bool,
    /// Keys applied since the begin index and not sent since.
    dirty_keys: BTreeSet<Vec<u8>>,
    /// Client ids whose session changed since the begin index and was not sent since.
    dirty_sessions: BTreeSet<u64>,
    /// The sequence number of the next new chunk.
    next_sequence: u64,
    /// The member staged every chunk before this one.
    acked_sequence: u64,
    /// The chunks sent and not acknowledged, from `acked_sequence` on, to resend as they were.
    unacked: VecDeque<MessageBody>,
    /// The final chunk, once sent: resent until the member's append acknowledgement shows the
    /// snapshot installed, since that acknowledgement can be lost after the chunk's own.
    final_chunk: Option<MessageBody>,
    /// The acknowledged sequence at which unacknowledged chunks were last resent on a repeated
    /// acknowledgement (one fast resend per gap).
    fast_resent_at: Option<u64>,
    /// When the offer or a chunk was last sent, for the retransmit timeout.
    last_sent: Timestamp,
    /// When the member last answered with progress, to end a stalled transfer.
    last_progress: Timestamp,
}

/// What one chunk carries (the fields of [`MessageBody::SnapshotChunk`] past its numbering).
#[derive(Default)]
pub(super) struct Chunk {
    pub(super) pairs: Vec<(Vec<u8>, Option<Versioned>)>,
    pub(super) sessions: Vec<(u64, Option<Session>)>,
    pub(super) finish: Option<SnapshotFinish>,
}

/// How a received chunk is placed (the fields of [`MessageBody::SnapshotChunk`] besides its
/// contents).
pub(super) struct ChunkHeader {
    pub(super) transfer: u64,
    pub(super) sequence: u64,
    pub(super) begin_index: LogIndex,
    pub(super) discard_staged: bool,
    pub(super) position: SnapshotPosition,
}

/// The snapshot transfer this backup is receiving (the one whose offer it answered last).
///
/// A transfer is named by `(epoch, from, transfer)`: transfer ids restart in every primary term,
/// so without the epoch a chunk of a new term's transfer could continue a stale one of an earlier
/// term. What is staged outlives the transfer, and the node: storage keeps it with its record
/// ([`crate::storage::Storage::staged_snapshot`]).
#[derive(Debug)]
pub(super) struct IncomingSnapshot {
    /// This node's epoch when the offer came.
    epoch: Epoch,
    /// The primary sending it.
    from: NodeId,
    /// The sender's id for the transfer.
    transfer: u64,
    /// The sequence number of the next chunk to stage.
    next_sequence: u64,
    /// The final chunk was staged and the snapshot installed (or found already covered).
    finished: bool,
}

/// Counts of this node's snapshot transfers since it started, for tests, the simulator and
/// operators: how many transfers began, how many resumed on a member's staging, how many ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotCounters {
    /// Primary: offers made (each opens a transfer).
    pub offered: u64,
    /// Primary: transfers that started from the first key.
    pub started_from_scratch: u64,
    /// Primary: transfers that resumed on what the member had staged.
    pub resumed: u64,
    /// Primary: chunks sent, resent ones included.
    pub chunks_sent: u64,
    /// Primary: transfers that ended with the member acknowledging the snapshot's index.
    pub completed: u64,
    /// Backup: snapshots installed.
    pub installed: u64,
}

impl std::ops::AddAssign for SnapshotCounters {
    /// Sums the counts of several nodes, or of several lives of one node.
    fn add_assign(&mut self, other: SnapshotCounters) {
        self.offered += other.offered;
        self.started_from_scratch += other.started_from_scratch;
        self.resumed += other.resumed;
        self.chunks_sent += other.chunks_sent;
        self.completed += other.completed;
        self.installed += other.installed;
    }
}

/// Adds to `keys` and `sessions` the keys and client sessions that `entry` changes when applied:
/// one notion of "touched" for the dirty sets of running transfers and of resumed ones.
fn touched_by(entry: &Entry, keys: &mut BTreeSet<Vec<u8>>, sessions: &mut BTreeSet<u64>) {
    match &entry.operation {
        Operation::Put { .. } | Operation::Delete { .. } | Operation::Batch { .. } => {
            keys.extend(
                entry
                    .operation
                    .touched_keys()
                    .into_iter()
                    .map(<[u8]>::to_vec),
            );
        }
        Operation::ExpireSessions(expired) => {
            sessions.extend(expired.iter().map(|expired| expired.client_id));
        }
        Operation::Noop | Operation::Membership(_) => {}
    }
    if let Some(request_id) = entry.request_id {
        sessions.insert(request_id.client_id);
    }
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

    /// Starts (with an offer) or continues a snapshot transfer to `member`.
    pub(super) fn send_snapshot(&mut self, member: NodeId) -> Result<()> {
        let now = self.now;
        let failure_timeout = self.options.failure_timeout_ms;
        let Some(state) = self.primary_state() else {
            return Ok(());
        };
        if state.transfers.contains_key(&member) {
            return self.send_snapshot_chunks(member);
        }
        let reachable = state
            .progress
            .get(&member)
            .and_then(|progress| progress.last_contact)
            .is_some_and(|at| now.saturating_sub(at) < failure_timeout);
        if !reachable {
            return Ok(()); // no point reading the whole state for a member that is down
        }
        state.next_transfer += 1;
        let id = state.next_transfer;
        state.transfers.insert(
            member,
            SnapshotTransfer {
                id,
                phase: TransferPhase::Offered,
                begin_index: 0,
                from_scratch: true,
                dirty_keys: BTreeSet::new(),
                dirty_sessions: BTreeSet::new(),
                next_sequence: 0,
                acked_sequence: 0,
                unacked: VecDeque::new(),
                final_chunk: None,
                fast_resent_at: None,
                last_sent: now,
                last_progress: now,
            },
        );
        self.snapshot_counters.offered += 1;
        info!(
            node = self.id,
            epoch = self.epoch,
            member,
            transfer = id,
            "member is behind the compacted log; offering a snapshot"
        );
        self.send(member, MessageBody::SnapshotOffer { transfer: id });
        Ok(())
    }

    /// The member's answer to an offer: the transfer resumes on what it staged when this node's
    /// log reaches back to its begin index, and starts from scratch otherwise.
    pub(super) fn on_snapshot_staged(
        &mut self,
        member: NodeId,
        transfer_id: u64,
        staged: Option<StagedSnapshot>,
    ) -> Result<()> {
        let now = self.now;
        let (applied_index, last_index) = (self.applied_index, self.log.last_index());
        let snapshot_index = self.log.snapshot_index();
        let Some(transfer) = self.transfer_to(member) else {
            return Ok(());
        };
        if transfer.id != transfer_id {
            return Ok(()); // a late answer to an earlier offer
        }
        if !matches!(transfer.phase, TransferPhase::Offered) {
            // The member does not follow this transfer (it restarted), or this is a repeated
            // answer: either way a new offer learns where its staging stands, and resumes there.
            if let Some(state) = self.primary_state() {
                state.transfers.remove(&member);
            }
            return self.send_snapshot(member);
        }
        // The member's begin index was an applied (so committed) index of some primary; every
        // committed index is in this node's log, so one past its end cannot be resumed from.
        let resume = staged.and_then(|staged| {
            let begin = staged.begin_index.min(applied_index);
            (staged.begin_index <= last_index && begin >= snapshot_index)
                .then_some((begin, staged.position))
        });
        let mut dirty_keys = BTreeSet::new();
        let mut dirty_sessions = BTreeSet::new();
        let (begin_index, position, from_scratch) = match resume {
            Some((begin, position)) => {
                self.log.scan(begin + 1, last_index, |entry| {
                    touched_by(&entry, &mut dirty_keys, &mut dirty_sessions)
                })?;
                (begin, position, false)
            }
            None => (applied_index, SnapshotPosition::State { after: None }, true),
        };
        assert!(
            begin_index <= applied_index && begin_index >= snapshot_index,
            "a transfer begins at an applied index this node's log reaches back to"
        );
        if from_scratch {
            self.snapshot_counters.started_from_scratch += 1;
        } else {
            self.snapshot_counters.resumed += 1;
        }
        let Some(transfer) = self.transfer_to(member) else {
            return Ok(());
        };
        debug!(
            member,
            transfer = transfer_id,
            begin_index,
            from_scratch,
            ?position,
            dirty_keys = dirty_keys.len(),
            "snapshot transfer starts streaming"
        );
        transfer.begin_index = begin_index;
        transfer.from_scratch = from_scratch;
        transfer.phase = TransferPhase::Streaming(position);
        transfer.dirty_keys = dirty_keys;
        transfer.dirty_sessions = dirty_sessions;
        transfer.last_progress = now;
        self.send_snapshot_chunks(member)
    }

    /// Sends new chunks of `member`'s transfer while the window allows.
    fn send_snapshot_chunks(&mut self, member: NodeId) -> Result<()> {
        loop {
            let Some(transfer) = self.transfer_to(member) else {
                return Ok(());
            };
            let in_flight = transfer.next_sequence - transfer.acked_sequence;
            if !matches!(transfer.phase, TransferPhase::Streaming(_))
                || in_flight >= SNAPSHOT_WINDOW
            {
                return Ok(());
            }
            let Some(chunk) = self.next_chunk(member)? else {
                return Ok(());
            };
            let now = self.now;
            let Some(transfer) = self.transfer_to(member) else {
                return Ok(());
            };
            let sequence = transfer.next_sequence;
            let finish_index = chunk.finish.as_ref().map(|finish| finish.index);
            let position = match &transfer.phase {
                TransferPhase::Streaming(position) => position.clone(),
                TransferPhase::Offered | TransferPhase::Finished { .. } => {
                    SnapshotPosition::Changes
                }
            };
            if let Some(index) = finish_index {
                transfer.phase = TransferPhase::Finished { index };
            }
            let body = MessageBody::SnapshotChunk {
                transfer: transfer.id,
                sequence,
                begin_index: transfer.begin_index,
                discard_staged: sequence == 0 && transfer.from_scratch,
                position,
                pairs: chunk.pairs,
                sessions: chunk.sessions,
                finish: chunk.finish,
            };
            transfer.next_sequence += 1;
            transfer.last_sent = now;
            transfer.unacked.push_back(body.clone());
            if finish_index.is_some() {
                transfer.final_chunk = Some(body.clone());
            }
            if let Some(index) = finish_index {
                // Appends resume after the snapshot's index once the member acknowledges it.
                if let Some(progress) = self.progress_of(member) {
                    progress.reset_to(index + 1, now);
                }
            }
            self.snapshot_counters.chunks_sent += 1;
            self.send(member, body);
        }
    }

    /// Resends every unacknowledged chunk of `member`'s transfer, as it was first sent; the final
    /// chunk if every chunk is acknowledged but the snapshot is not (yet) known installed.
    fn resend_unacked(&mut self, member: NodeId) {
        let now = self.now;
        let Some(transfer) = self.transfer_to(member) else {
            return;
        };
        transfer.last_sent = now;
        let chunks: Vec<MessageBody> = if transfer.unacked.is_empty() {
            transfer.final_chunk.iter().cloned().collect()
        } else {
            transfer.unacked.iter().cloned().collect()
        };
        self.snapshot_counters.chunks_sent += chunks.len() as u64;
        for chunk in chunks {
            self.send(member, chunk);
        }
    }

    /// The next chunk of `member`'s transfer, within `max_append_bytes`, advancing its position.
    /// A phase that ends inside a chunk leaves the rest of the budget to the next one, so a small
    /// snapshot travels as one chunk.
    fn next_chunk(&mut self, member: NodeId) -> Result<Option<Chunk>> {
        let budget = self.options.max_append_bytes;
        let mut chunk = Chunk::default();
        let mut bytes = 0usize;
        loop {
            let Some(transfer) = self.transfer_to(member) else {
                return Ok(None);
            };
            let TransferPhase::Streaming(position) = transfer.phase.clone() else {
                return Ok(None);
            };
            match position {
                SnapshotPosition::State { after } => {
                    // The state phase starts the chunk (nothing precedes it), so it has the budget.
                    let room = budget.saturating_sub(bytes).max(1);
                    // The whole state, system keys included (key deadlines and their index,
                    // users): a scan page would skip them, and the member would serve keys
                    // that never expire and lose users.
                    let page = self.storage.state_chunk(after.as_deref(), room)?;
                    bytes += page
                        .pairs
                        .iter()
                        .map(|(key, versioned)| framed_pair_bytes(key, &versioned.value))
                        .sum::<usize>();
                    let last = page.pairs.last().map(|(key, _)| key.clone()).or(after);
                    chunk.pairs.extend(
                        page.pairs
                            .into_iter()
                            .map(|(key, value)| (key, Some(value))),
                    );
                    let Some(transfer) = self.transfer_to(member) else {
                        return Ok(None);
                    };
                    if page.more {
                        transfer.phase =
                            TransferPhase::Streaming(SnapshotPosition::State { after: last });
                        return Ok(Some(chunk));
                    }
                    transfer.phase =
                        TransferPhase::Streaming(SnapshotPosition::Sessions { after: None });
                }
                SnapshotPosition::Sessions { after } => {
                    // At most this many fit: each takes at least SESSION_RECORD_BYTES. Those
                    // whose answer holds a value take more, so they are counted one by one.
                    let room = budget.saturating_sub(bytes) / SESSION_RECORD_BYTES;
                    if room == 0 && !chunk.pairs.is_empty() {
                        return Ok(Some(chunk));
                    }
                    // One more than there is room for, to learn whether the table goes on.
                    let mut sessions = self.storage.sessions_after(after, room.max(1) + 1)?;
                    let mut fitting = 0;
                    for (_, session) in &sessions {
                        let size = session_record_bytes(Some(session));
                        if !fits_in_batch(chunk.pairs.len() + fitting, bytes, size, budget) {
                            break;
                        }
                        bytes += size;
                        fitting += 1;
                    }
                    let more = sessions.len() > fitting;
                    sessions.truncate(fitting);
                    let last = sessions.last().map(|(client_id, _)| *client_id).or(after);
                    chunk.sessions.extend(
                        sessions
                            .into_iter()
                            .map(|(client_id, session)| (client_id, Some(session))),
                    );
                    let Some(transfer) = self.transfer_to(member) else {
                        return Ok(None);
                    };
                    if more {
                        transfer.phase =
                            TransferPhase::Streaming(SnapshotPosition::Sessions { after: last });
                        return Ok(Some(chunk));
                    }
                    transfer.phase = TransferPhase::Streaming(SnapshotPosition::Changes);
                }
                SnapshotPosition::Changes => {
                    self.add_changes(member, &mut chunk, bytes)?;
                    return Ok(Some(chunk));
                }
            }
        }
    }

    /// Adds to `chunk` (holding `bytes` already) the keys and sessions changed since the begin
    /// index, as they are now, within `max_append_bytes`. When it takes the last of them, the
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
            let value = self.storage.get_versioned(key)?;
            let size = framed_pair_bytes(
                key,
                value.as_ref().map_or(&[][..], |versioned| &versioned.value),
            );
            if !fits_in_batch(taken(chunk), bytes, size, budget) {
                break;
            }
            bytes += size;
            if let Some(key) = dirty_keys.pop_first() {
                chunk.pairs.push((key, value));
            }
        }
        while let Some(&client_id) = dirty_sessions.first() {
            let session = self.storage.session(client_id)?;
            let size = session_record_bytes(session.as_ref());
            if !fits_in_batch(taken(chunk), bytes, size, budget) {
                break;
            }
            bytes += size;
            dirty_sessions.pop_first();
            chunk.sessions.push((client_id, session));
        }
        let done = dirty_keys.is_empty() && dirty_sessions.is_empty();
        let applied_index = self.applied_index;
        if let Some(transfer) = self.transfer_to(member) {
            transfer.dirty_keys = dirty_keys;
            transfer.dirty_sessions = dirty_sessions;
            assert!(
                transfer.begin_index <= applied_index,
                "a snapshot names an index at or after its transfer's begin index"
            );
        }
        if done {
            chunk.finish = Some(SnapshotFinish {
                index: applied_index,
                epoch: self.log.epoch_at(applied_index)?,
                membership: self.applied_membership.clone(),
            });
        }
        Ok(())
    }

    /// The member staged every chunk before `next_sequence`. One that does not move forward while
    /// chunks are unacknowledged reports a gap (a lost or reordered chunk): resend from there.
    pub(super) fn on_snapshot_ack(
        &mut self,
        member: NodeId,
        transfer_id: u64,
        next_sequence: u64,
    ) -> Result<()> {
        let now = self.now;
        if let Some(progress) = self.progress_of(member) {
            progress.last_contact = Some(now);
        }
        let Some(transfer) = self.transfer_to(member) else {
            return Ok(());
        };
        if transfer.id != transfer_id || next_sequence > transfer.next_sequence {
            return Ok(());
        }
        if next_sequence > transfer.acked_sequence {
            let newly_acked = next_sequence - transfer.acked_sequence;
            for _ in 0..newly_acked {
                transfer.unacked.pop_front();
            }
            transfer.acked_sequence = next_sequence;
            transfer.last_progress = now;
            transfer.fast_resent_at = None;
        } else if next_sequence == transfer.acked_sequence
            && !transfer.unacked.is_empty()
            && transfer.fast_resent_at != Some(next_sequence)
        {
            transfer.fast_resent_at = Some(next_sequence);
            self.resend_unacked(member);
            return Ok(());
        }
        self.send_snapshot_chunks(member)
    }

    /// Ends transfers that are installed (the member acknowledged the snapshot's index) or
    /// stalled (the member answers nothing: a new offer resumes on what it staged), resends what
    /// a timeout says is lost, and keeps the rest moving.
    pub(super) fn continue_snapshots(&mut self) -> Result<()> {
        let now = self.now;
        let stall = 2 * self.options.failure_timeout_ms;
        let resend_wait = 2 * self.options.heartbeat_interval_ms;
        let Some(state) = self.primary_state() else {
            return Ok(());
        };
        let mut installed = 0;
        let mut stalled = Vec::new();
        let mut offers = Vec::new();
        let mut resends = Vec::new();
        let progress = &state.progress;
        state.transfers.retain(|member, transfer| {
            // Installed: the member matches the log at the snapshot's index. (Not "next index
            // reached": retransmission rewinds the next index to the match after a quiet spell.)
            if let TransferPhase::Finished { index } = transfer.phase {
                if progress.get(member).is_some_and(|p| p.match_index >= index) {
                    installed += 1;
                    return false;
                }
            }
            if now.saturating_sub(transfer.last_progress) > stall {
                stalled.push(*member);
                return false;
            }
            if now.saturating_sub(transfer.last_sent) >= resend_wait {
                match transfer.phase {
                    TransferPhase::Offered => offers.push((*member, transfer.id)),
                    TransferPhase::Streaming(_) if transfer.unacked.is_empty() => {}
                    TransferPhase::Streaming(_) | TransferPhase::Finished { .. } => {
                        resends.push(*member)
                    }
                }
            }
            true
        });
        self.snapshot_counters.completed += installed;
        for member in stalled {
            debug!(
                node = self.id,
                member, "snapshot transfer stalled; a new offer resumes it"
            );
        }
        for (member, transfer) in offers {
            if let Some(state) = self.transfer_to(member) {
                state.last_sent = now;
            }
            self.send(member, MessageBody::SnapshotOffer { transfer });
        }
        for member in resends {
            self.resend_unacked(member);
        }
        let Some(state) = self.primary_state() else {
            return Ok(());
        };
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
        let streaming =
            |t: &&mut SnapshotTransfer| !matches!(t.phase, TransferPhase::Finished { .. });
        for transfer in state.transfers.values_mut().filter(streaming) {
            for entry in entries {
                touched_by(
                    entry,
                    &mut transfer.dirty_keys,
                    &mut transfer.dirty_sessions,
                );
            }
        }
    }

    // --- the backup: receiving ---

    /// An offer opens a transfer: this backup follows it from now on, and says what it staged.
    pub(super) fn on_snapshot_offer(&mut self, from: NodeId, transfer: u64) -> Result<()> {
        let epoch = self.epoch;
        let current = self
            .incoming_snapshot
            .as_ref()
            .is_some_and(|s| s.epoch == epoch && s.from == from && s.transfer == transfer);
        if !current {
            self.incoming_snapshot = Some(IncomingSnapshot {
                epoch,
                from,
                transfer,
                next_sequence: 0,
                finished: false,
            });
        }
        let staged = self.storage.staged_snapshot()?;
        self.send(from, MessageBody::SnapshotStaged { transfer, staged });
        Ok(())
    }

    /// A backup stages the chunks of the transfer it follows, in sequence order, and installs the
    /// snapshot with the last one. Every chunk of that transfer is answered with the next sequence
    /// it expects, so the primary learns of a gap, a lost acknowledgement or a lost final chunk.
    pub(super) fn on_snapshot_chunk(
        &mut self,
        from: NodeId,
        header: ChunkHeader,
        chunk: Chunk,
    ) -> Result<()> {
        let epoch = self.epoch;
        let Some(incoming) = self
            .incoming_snapshot
            .as_ref()
            .filter(|s| s.epoch == epoch && s.from == from && s.transfer == header.transfer)
        else {
            // A chunk of a transfer this node answered no offer for (it restarted since): say
            // what is staged, so the primary offers again and resumes there.
            let staged = self.storage.staged_snapshot()?;
            let transfer = header.transfer;
            self.send(from, MessageBody::SnapshotStaged { transfer, staged });
            return Ok(());
        };
        let (next_sequence, finished) = (incoming.next_sequence, incoming.finished);
        let transfer = header.transfer;
        if header.sequence != next_sequence {
            // A duplicate, or one past a gap: say again what is staged. A resent final chunk
            // means the primary missed an acknowledgement: repeat the append one too.
            self.send(
                from,
                MessageBody::SnapshotAck {
                    transfer,
                    next_sequence,
                },
            );
            if finished {
                self.ack_append(true);
            }
            return Ok(());
        }
        if header.sequence == 0 {
            if header.discard_staged {
                self.storage.begin_snapshot()?;
            } else if self.storage.staged_snapshot()?.is_none() {
                return Ok(()); // nothing to resume on; the primary's next offer starts afresh
            }
        }
        let Chunk {
            pairs,
            sessions,
            finish,
        } = chunk;
        let progress = StagedSnapshot {
            begin_index: header.begin_index,
            position: header.position,
        };
        self.storage.stage_snapshot(&pairs, &sessions, &progress)?;
        if let Some(incoming) = self.incoming_snapshot.as_mut() {
            incoming.next_sequence += 1;
            incoming.finished = finish.is_some();
        }
        if let Some(finish) = finish {
            self.install_snapshot(finish)?;
        }
        self.send(
            from,
            MessageBody::SnapshotAck {
                transfer,
                next_sequence: next_sequence + 1,
            },
        );
        Ok(())
    }

    fn install_snapshot(&mut self, finish: SnapshotFinish) -> Result<()> {
        // The transfer record stays, to acknowledge a resent final chunk. Storage drops the
        // staging record as it installs; a snapshot not installed stays staged, as good as any to
        // resume on.
        if finish.index <= self.commit_index {
            // This node already holds everything the snapshot holds: its committed prefix is in
            // the log of every later primary (invariant 2), so it matches this primary's log up to
            // its commit index. Say so, or the primary never learns where to resume appends.
            self.verified_index = self.verified_index.max(self.commit_index);
            self.ack_append(true);
            return Ok(());
        }
        // Written first, so the entries storage rolls back as it installs are all recorded.
        self.log.write()?;
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
        self.snapshot_counters.installed += 1;
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
