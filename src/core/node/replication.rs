//! Log replication, from both sides.
//!
//! The primary sends heartbeats (which also renew its read lease), appends new entries to every
//! member from the cache, catches up members that fell behind it from storage, retransmits after
//! two heartbeat intervals without progress, and commits what a majority holds durably. The backup
//! checks each append against its log, moves a divergent suffix to the rollback tree, appends, and
//! acknowledges what it holds durably.
//!
//! Invariants:
//! - Only an entry of the primary's own epoch is committed by counting; earlier ones commit with it.
//! - The commit index never decreases, and a committed entry is never truncated: a backup asked to
//!   do so stops with an error instead (fail-stop).
//! - Entries are applied in log order, only once committed.
//! - A backup acknowledges only the prefix that is both durable and verified against the current
//!   primary's log (`min(durable_index, verified_index)`).
//! - Appends to a member stay within `max_inflight_entries` of its match index (flow control), and
//!   stop while a snapshot is being streamed to it.

use std::collections::BTreeSet;

use tracing::{debug, info, warn};

use crate::core::progress;
use crate::core::Timestamp;
use crate::error::{Error, Result};
use crate::wire::message::{
    Entry, Epoch, LogIndex, Membership, MessageBody, NodeId, Operation, RequestId,
};

use super::{Node, RoleState};

impl Node {
    // --- the primary: heartbeats and the lease ---

    /// The time by which a majority of voters (the primary included) had last been heard from.
    pub(super) fn majority_contact(&self) -> Timestamp {
        let RoleState::Primary(state) = &self.role else {
            return 0;
        };
        let mut contacts: Vec<Timestamp> = self
            .membership
            .voters()
            .map(|id| {
                if id == self.id {
                    self.now
                } else {
                    state
                        .progress
                        .get(&id)
                        .and_then(|p| p.last_contact)
                        // A new primary counts its election as contact, so it gets a full timeout.
                        .unwrap_or(state.elected_at)
                }
            })
            .collect();
        contacts.sort_unstable_by(|a, b| b.cmp(a));
        contacts
            .get(self.membership.majority().saturating_sub(1))
            .copied()
            .unwrap_or(0)
    }

    pub(super) fn send_heartbeats(&mut self) {
        let now = self.now;
        let interval = self.options.heartbeat_interval_ms;
        let commit_index = self.commit_index;
        let membership = self.membership.clone();
        let members = self.other_members();
        let Some(state) = self.primary_state() else {
            return;
        };
        state.round += 1;
        let round = state.round;
        state.rounds.insert(round, (now, BTreeSet::new()));
        while state.rounds.len() > 16 {
            state.rounds.pop_first();
        }
        state.next_heartbeat = now + interval;
        for member in members {
            self.send(
                member,
                MessageBody::Heartbeat {
                    commit_index,
                    membership: membership.clone(),
                    round,
                },
            );
        }
        // A single voter confirms its own leadership.
        self.renew_lease(round);
    }

    fn renew_lease(&mut self, round: u64) {
        let majority = self.membership.majority();
        let voters: BTreeSet<NodeId> = self.membership.voters().collect();
        // A primary that a pending change removes from the voters is no part of the majority
        // that could elect its successor, so it does not count itself.
        let own_vote = usize::from(voters.contains(&self.id));
        let lease = self.options.lease_ms();
        let Some(state) = self.primary_state() else {
            return;
        };
        let Some((sent_at, acks)) = state.rounds.get(&round) else {
            return;
        };
        // Voters never vote for another within `failure_timeout` (on their clocks) of
        // acknowledging a heartbeat, which they received after `sent_at`; the lease is that
        // timeout less the clocks' possible drift.
        if acks.intersection(&voters).count() + own_vote >= majority {
            state.lease_until = state.lease_until.max(sent_at + lease);
        }
    }

    pub(super) fn on_heartbeat_ack(
        &mut self,
        from: NodeId,
        round: u64,
        durable_index: LogIndex,
        last_index: LogIndex,
    ) -> Result<()> {
        let now = self.now;
        let primary_last = self.log.last_index();
        let Some(state) = self.primary_state() else {
            return Ok(());
        };
        let Some(progress) = state.progress.get_mut(&from) else {
            return Ok(());
        };
        progress.last_contact = Some(now);
        progress.reported_durable = Some(durable_index);
        progress.reported_last = Some(last_index);
        if progress.match_index >= primary_last {
            // Idle and caught up: in sync as of now.
            progress.caught_up_at = Some(now);
        }
        if let Some((_, acks)) = state.rounds.get_mut(&round) {
            acks.insert(from);
        }
        self.renew_lease(round);
        self.answer_reads()?;
        self.answer_writes();
        Ok(())
    }

    // --- the primary: sending entries ---

    /// A member whose log matches but who cannot tell (it restarted, so it verified nothing in this
    /// epoch) would never advance its commit index: send it an empty append at its match index.
    ///
    /// A match index below the snapshot point names an entry this primary compacted away (a member
    /// back from a long absence): no probe can be built there, and none is needed, because the
    /// member is behind the log's start and retransmission sends it the state instead, which it
    /// verifies on installing.
    pub(super) fn probe_if_unverified(
        &mut self,
        member: NodeId,
        verified_index: LogIndex,
    ) -> Result<()> {
        let commit_index = self.commit_index;
        let snapshot_index = self.log.snapshot_index();
        let Some(progress) = self.progress_of(member) else {
            return Ok(());
        };
        let match_index = progress.match_index;
        if verified_index >= match_index.min(commit_index) || match_index < snapshot_index {
            return Ok(());
        }
        let base_epoch = self.log.epoch_at(match_index)?;
        self.send(
            member,
            MessageBody::Append {
                base_index: match_index,
                base_epoch,
                entries: Vec::new(),
                commit_index,
                catch_up: false,
            },
        );
        Ok(())
    }

    pub(super) fn on_append_ack(&mut self, from: NodeId, match_index: LogIndex) -> Result<()> {
        let now = self.now;
        let last_index = self.log.last_index();
        let Some(progress) = self.progress_of(from) else {
            return Ok(());
        };
        // A member cannot match entries the primary does not have.
        progress.record_match(match_index.min(last_index), now);
        self.send_appends_from_storage(from)?;
        self.advance_commit()?;
        self.answer_writes();
        self.answer_reads()?;
        Ok(())
    }

    pub(super) fn on_append_rejected(&mut self, from: NodeId, hint: LogIndex) -> Result<()> {
        let now = self.now;
        let id = self.id;
        let Some(progress) = self.progress_of(from) else {
            return Ok(());
        };
        progress.last_contact = Some(now);
        if hint < progress.match_index {
            // The member acknowledged entries it no longer has: its storage was wiped or
            // replaced. Its earlier acks cannot be trusted; start again from what it has.
            warn!(
                node = id,
                member = from,
                hint,
                match_index = progress.match_index,
                "member lost acknowledged entries; resending from its log's end"
            );
            progress.forget_match(hint);
        }
        let restart = (hint + 1).max(progress.match_index + 1);
        if restart < progress.next_index {
            debug!(
                node = id,
                member = from,
                restart,
                "member's log diverges; walking back"
            );
            progress.reset_to(restart, now);
            self.send_appends_from_storage(from)?;
        }
        Ok(())
    }

    /// Resends to members that made no progress for two heartbeat intervals: an append was lost,
    /// or the member restarted, or it is far behind (catch-up reads from storage).
    pub(super) fn retransmit(&mut self) -> Result<()> {
        let now = self.now;
        let last_index = self.log.last_index();
        let wait = 2 * self.options.heartbeat_interval_ms;
        let cache_first = self.log.cache_first_index();
        let Some(state) = self.primary_state() else {
            return Ok(());
        };
        let mut behind = Vec::new();
        for (&id, progress) in state.progress.iter_mut() {
            if progress.match_index >= last_index {
                continue;
            }
            let stalled = now.saturating_sub(progress.last_progress) >= wait;
            if stalled {
                // Resend from where the member last said its log ends (its heartbeat acks get
                // through when appends do not), never before its match index. The member checks
                // the base, and a mismatch walks back by its hint; resending from the match
                // index alone would send a member this primary has not yet matched (every
                // member, just after an election) the whole log again, or, once the log is
                // compacted, the whole state.
                let restart = progress
                    .reported_last
                    .map_or(progress.match_index + 1, |reported| {
                        reported.saturating_add(1).min(last_index)
                    });
                progress.reset_to(restart, now);
            }
            if stalled || progress.next_index < cache_first {
                behind.push(id);
            }
        }
        for id in behind {
            self.send_appends_from_storage(id)?;
        }
        Ok(())
    }

    /// Sends entries `[next_index ..]` to `member`: from storage while the member is behind the
    /// cache (a few bounded batches per call, within the flow-control window), then from the cache.
    fn send_appends_from_storage(&mut self, member: NodeId) -> Result<()> {
        const BATCHES_PER_CALL: usize = 4;
        for _ in 0..BATCHES_PER_CALL {
            let Some((next, limit)) = self.send_window(member) else {
                return Ok(());
            };
            let cache_first = self.log.cache_first_index();
            if next >= cache_first {
                break;
            }
            if next < self.log.start() {
                // The entries this member needs were compacted away: send the state instead.
                return self.send_snapshot(member);
            }
            let entries = self.log.read(
                next,
                limit.min(cache_first - 1),
                self.options.max_append_bytes,
            )?;
            if entries.is_empty() {
                return Err(Error::Storage(format!("log entry {next} is missing")));
            }
            let base_epoch = self.log.epoch_at(next - 1)?;
            self.send_append(member, next - 1, base_epoch, entries, true);
        }
        self.replicate_member_from_cache(member);
        Ok(())
    }

    /// `(next index, last index allowed by flow control)` for a member, if anything may be sent.
    fn send_window(&self, member: NodeId) -> Option<(LogIndex, LogIndex)> {
        let RoleState::Primary(state) = &self.role else {
            return None;
        };
        if state.transfers.contains_key(&member) {
            return None; // appends resume once the snapshot is installed
        }
        let progress = state.progress.get(&member)?;
        let limit = progress
            .send_limit(self.options.max_inflight_entries)
            .min(self.log.last_index());
        (progress.next_index <= limit).then_some((progress.next_index, limit))
    }

    fn send_append(
        &mut self,
        member: NodeId,
        base_index: LogIndex,
        base_epoch: Epoch,
        entries: Vec<Entry>,
        catch_up: bool,
    ) {
        let Some(last) = entries.last().map(|entry| entry.index) else {
            return;
        };
        let now = self.now;
        let commit_index = self.commit_index;
        if let Some(progress) = self.progress_of(member) {
            progress.next_index = last + 1;
            progress.record_send(last, now);
        }
        self.send(
            member,
            MessageBody::Append {
                base_index,
                base_epoch,
                entries,
                commit_index,
                catch_up,
            },
        );
    }

    /// Sends what the cache holds to every member that is within it (live replication).
    pub(super) fn replicate_from_cache(&mut self) {
        if !self.is_primary() {
            return;
        }
        for member in self.other_members() {
            self.replicate_member_from_cache(member);
        }
    }

    fn replicate_member_from_cache(&mut self, member: NodeId) {
        let max_bytes = self.options.max_append_bytes;
        loop {
            let Some((next, limit)) = self.send_window(member) else {
                return;
            };
            if next < self.log.cache_first_index() {
                return; // catch-up from storage happens on tick
            }
            let Ok(base_epoch) = self.log.epoch_at(next - 1) else {
                return;
            };
            let entries = self.log.cached_batch(next, limit, max_bytes);
            self.send_append(member, next - 1, base_epoch, entries, false);
        }
    }

    // --- the primary: appending and committing ---

    /// Appends one entry in the current epoch to the primary's log.
    pub(super) fn append(
        &mut self,
        operation: Operation,
        request_id: Option<RequestId>,
    ) -> Result<LogIndex> {
        assert!(self.is_primary(), "only a primary appends client entries");
        let index = self.log.last_index() + 1;
        let entry = Entry {
            epoch: self.epoch,
            index,
            operation,
            request_id,
        };
        self.append_to_log(vec![entry])?;
        Ok(index)
    }

    /// Appends entries that follow the log's last one. A membership entry takes effect as soon as
    /// it is appended.
    fn append_to_log(&mut self, entries: Vec<Entry>) -> Result<()> {
        let memberships: Vec<(LogIndex, Membership)> = entries
            .iter()
            .filter_map(|entry| match &entry.operation {
                Operation::Membership(membership) => Some((entry.index, membership.clone())),
                _ => None,
            })
            .collect();
        self.log.append(entries, self.applied_index)?;
        for (index, membership) in memberships {
            self.adopt_membership(membership, index);
        }
        Ok(())
    }

    /// Commits what a majority has durably, once an entry of this epoch is among it.
    pub(super) fn advance_commit(&mut self) -> Result<()> {
        let RoleState::Primary(state) = &self.role else {
            return Ok(());
        };
        let candidate = progress::majority_index(
            &self.membership,
            self.id,
            self.log.durable_index(),
            &state.progress,
        );
        if candidate <= self.commit_index {
            return Ok(());
        }
        // Only an entry of the primary's own epoch is committed by counting (earlier entries are
        // committed with it); otherwise a later primary could still overwrite it.
        if self.log.epoch_at(candidate)? != self.epoch {
            return Ok(());
        }
        self.commit_through(candidate);
        Ok(())
    }

    /// Moves the commit index up to `index`. The entries it covers are applied at the end of the
    /// pass ([`Node::finish_pass`]), with everything else committed meanwhile, in one apply.
    fn commit_through(&mut self, index: LogIndex) {
        assert!(
            index > self.commit_index,
            "the commit index never decreases"
        );
        self.commit_index = index;
    }

    /// Applies committed entries in order, recording the real result on waiting writes.
    pub(super) fn apply_committed(&mut self) -> Result<()> {
        // Storage keeps a prefix of its writes in a crash: the entries go first, so the applied
        // index never survives without them.
        if self.applied_index < self.commit_index {
            self.log.write()?;
        }
        while self.applied_index < self.commit_index {
            let from = self.applied_index + 1;
            let entries = self.log.batch(from, self.commit_index)?;
            if entries.is_empty() {
                return Err(Error::Storage(format!(
                    "committed entry {from} is missing from the log"
                )));
            }
            let results = self.storage.apply(&entries)?;
            let last = entries.last().map_or(from, |e| e.index);
            self.applied_index = last;
            for entry in &entries {
                if let Operation::Membership(membership) = &entry.operation {
                    self.applied_membership = membership.clone();
                }
            }
            self.record_dirty(&entries);
            if let Some(state) = self.primary_state() {
                for (entry, result) in entries.iter().zip(results) {
                    if let Some(request_id) = entry.request_id {
                        state.requests.remove(&request_id);
                    }
                    if let Some(waiters) = state.writes.get_mut(&entry.index) {
                        for waiter in waiters {
                            waiter.result = result.clone();
                        }
                    }
                }
            }
        }
        if self.is_primary()
            && self.membership.get(self.id).is_none()
            && self.membership_index <= self.commit_index
        {
            // This primary removed itself and the change is committed: hand over by stepping
            // down; the remaining voters elect among themselves.
            info!(
                node = self.id,
                epoch = self.epoch,
                "removed from the cluster; stepping down"
            );
            self.answer_writes();
            self.become_backup(self.epoch, None)?;
        }
        Ok(())
    }

    // --- the backup ---

    /// A heartbeat from the primary of this epoch: follow it, learn its commit index, and answer
    /// with this log's positions.
    pub(super) fn on_heartbeat(
        &mut self,
        from: NodeId,
        commit_index: LogIndex,
        membership: Membership,
        round: u64,
    ) -> Result<()> {
        // Bootstrapping a joiner: take the primary's view until the log brings one. Only a node
        // that has neither applied nor appended a membership entry is a joiner: a heartbeat that a
        // primary sent before removing itself can arrive late, and must never roll a member's
        // membership back to one with more voters (two disjoint majorities could elect).
        let joiner = self.membership_index == 0 && self.applied_index == 0;
        if joiner && self.membership.get(from).is_none() && membership.get(self.id).is_some() {
            self.adopt_membership(membership, 0);
        }
        self.follow(from)?;
        self.advance_backup_commit(commit_index)?;
        self.send(
            from,
            MessageBody::HeartbeatAck {
                round,
                durable_index: self.log.durable_index(),
                last_index: self.log.last_index(),
                verified_index: self.verified_index,
            },
        );
        Ok(())
    }

    pub(super) fn on_append(
        &mut self,
        from: NodeId,
        mut base_index: LogIndex,
        mut base_epoch: Epoch,
        mut entries: Vec<Entry>,
        commit_index: LogIndex,
    ) -> Result<()> {
        // A primary only ever sends entries that follow the base one index at a time; anything
        // else is a broken protocol invariant (fail-stop, as for a gap).
        if let Some((entry, expected)) = entries
            .iter()
            .zip(base_index.saturating_add(1)..)
            .find(|(entry, index)| entry.index != *index)
        {
            return Err(Error::Internal(format!(
                "append from {from} leaves a gap: entry {} where {expected} belongs",
                entry.index
            )));
        }
        // Entries at or below this node's snapshot point are committed and applied here already.
        let snapshot_index = self.log.snapshot_index();
        if base_index < snapshot_index {
            let covered = entries.last().map_or(base_index, |e| e.index);
            entries.retain(|entry| entry.index > snapshot_index);
            base_index = snapshot_index;
            base_epoch = self.log.epoch_at(snapshot_index)?;
            if entries.is_empty() {
                self.verified_index = self.verified_index.max(covered.min(snapshot_index));
                self.advance_backup_commit(commit_index)?;
                self.ack_append(true);
                return Ok(());
            }
        }
        if base_index > self.log.last_index() {
            self.send(
                from,
                MessageBody::AppendRejected {
                    hint: self.log.last_index(),
                },
            );
            return Ok(());
        }
        let local_base_epoch = self.log.epoch_at(base_index)?;
        if local_base_epoch != base_epoch {
            let hint = self.conflict_hint(base_index, local_base_epoch)?;
            self.send(from, MessageBody::AppendRejected { hint });
            return Ok(());
        }
        // After this append the log matches the primary's up to its last entry.
        let verified = entries.last().map_or(base_index, |e| e.index);
        // Skip what this node already has; truncate from the first conflict. The epochs of the
        // entries this log already holds are read at once (a catch-up append may repeat
        // thousands of them).
        let overlap_end = verified.min(self.log.last_index());
        let local_epochs = self.log.epochs(base_index + 1, overlap_end)?;
        let mut new_entries = Vec::new();
        let mut retransmission = true;
        // The entries follow the base one by one (checked above), so entry `position` is the
        // one whose local epoch is `local_epochs[position]`, if this log holds it.
        for (position, entry) in entries.into_iter().enumerate() {
            let local_epoch = local_epochs.get(position).copied();
            if !new_entries.is_empty() || local_epoch.is_none() {
                retransmission = false;
                new_entries.push(entry);
                continue;
            }
            if local_epoch == Some(entry.epoch) {
                continue;
            }
            self.truncate_from(entry.index)?;
            new_entries.push(entry);
            retransmission = false;
        }
        if let Some(first) = new_entries.first() {
            if first.index != self.log.last_index() + 1 {
                return Err(Error::Internal(format!(
                    "append from {from} leaves a gap: entry {} after {}",
                    first.index,
                    self.log.last_index()
                )));
            }
            self.append_to_log(new_entries)?;
        }
        // The entries up to the append's end now match the primary's log.
        self.verified_index = self.verified_index.max(verified);
        self.advance_backup_commit(commit_index)?;
        // An append that brought nothing new is a retransmission: the earlier ack may have been
        // lost, so repeat it.
        self.ack_append(retransmission);
        Ok(())
    }

    /// Where a diverging log may still match: just before the first entry of the conflicting epoch.
    fn conflict_hint(&self, index: LogIndex, conflicting_epoch: Epoch) -> Result<LogIndex> {
        let before = index.saturating_sub(1);
        let floor = self.commit_index.max(self.log.snapshot_index());
        if before <= floor {
            return Ok(before);
        }
        // Committed entries match every primary's log, so the walk back stops at the floor.
        let epochs = self.log.epochs(floor + 1, before)?;
        Ok(epochs
            .iter()
            .rposition(|&epoch| epoch != conflicting_epoch)
            .map_or(floor, |position| floor + 1 + position as LogIndex))
    }

    /// Moves `[index ..]` to the rollback tree. Only uncommitted entries may diverge.
    fn truncate_from(&mut self, index: LogIndex) -> Result<()> {
        if index <= self.commit_index {
            // Invariant 2: a committed entry is in every later primary's log. A primary asking to
            // overwrite one is a protocol violation; stop rather than lose it (fail-stop).
            return Err(Error::Internal(format!(
                "node {} was asked to truncate committed entry {index} (commit index {})",
                self.id, self.commit_index
            )));
        }
        let removed = self.log.truncate_from(index, self.epoch)?;
        warn!(
            node = self.id,
            epoch = self.epoch,
            from = index,
            entries = removed.len(),
            "rolled back a divergent log suffix (kept in the rollback tree)"
        );
        self.rolled_back_entries += removed.len() as u64;
        if self.membership_index >= index {
            self.recompute_membership()?;
        }
        Ok(())
    }

    fn advance_backup_commit(&mut self, primary_commit: LogIndex) -> Result<()> {
        let commit = primary_commit.min(self.verified_index);
        if commit > self.commit_index {
            self.commit_through(commit);
        }
        Ok(())
    }

    /// Acknowledges the durable, verified prefix to the primary, if it grew or `repeat` is set.
    pub(super) fn ack_append(&mut self, repeat: bool) {
        let Some(primary) = self.primary else {
            return;
        };
        if primary == self.id {
            return;
        }
        let match_index = self.log.durable_index().min(self.verified_index);
        if match_index > self.acked_index || (repeat && match_index > 0) {
            self.acked_index = match_index;
            self.send(primary, MessageBody::AppendAck { match_index });
        }
    }
}
