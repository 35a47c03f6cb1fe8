//! Roles and elections: pre-votes, elections with the bully's rank, the vote tally, and the moves
//! between backup, candidate and primary.
//!
//! Invariants:
//! - The epoch never decreases, and epoch and vote are flushed before a vote or an election
//!   message is sent, so a node grants at most one vote per epoch, even across a crash.
//! - A vote (or pre-vote) goes only to a candidate that outranks the voter, so the winner's log
//!   holds every committed entry.
//! - A node that hears a live primary grants no pre-vote and ignores elections, so a node cut off
//!   from that primary cannot depose it (the primary's read lease rests on this).
//! - Leaving the primary role answers every request the primary was holding.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use tracing::{debug, info};

use crate::core::progress::Progress;
use crate::core::Output;
use crate::error::{Error, Result};
use crate::wire::client::Response;
use crate::wire::message::{Epoch, Message, MessageBody, NodeId, Operation, Rank};

use super::sessions::SessionExpiry;
use super::{Node, PrimaryState, RoleState, CUT_OFF_AFTER_FAILURE_TIMEOUTS};

impl Node {
    /// This node's standing in an election: its log's freshness, then its id.
    fn rank(&self) -> Rank {
        Rank {
            last_epoch: self.log.last_epoch(),
            last_index: self.log.last_index(),
            node_id: self.id,
        }
    }

    /// Whether this node has heard from a live primary within `failure_timeout` (or is one that
    /// still hears a majority).
    pub(super) fn hears_live_primary(&self) -> bool {
        match &self.role {
            RoleState::Primary(_) => {
                self.majority_contact() + self.options.failure_timeout_ms > self.now
            }
            _ => self.now < self.last_heard_primary + self.options.failure_timeout_ms,
        }
    }

    /// Whether this node, not a primary, has heard from no live primary for
    /// [`CUT_OFF_AFTER_FAILURE_TIMEOUTS`] failure timeouts: longer than an election takes, so it is
    /// not merely between two primaries but cut off (partitioned, or removed from the cluster),
    /// and what it serves may be stale. Its watches end, so that their clients resume on a node
    /// that hears the primary, and it reports itself not ready.
    pub fn cut_off_from_primary(&self) -> bool {
        let silence = self
            .options
            .failure_timeout_ms
            .saturating_mul(CUT_OFF_AFTER_FAILURE_TIMEOUTS);
        !self.is_primary() && self.now >= self.last_heard_primary.saturating_add(silence)
    }

    pub(super) fn reset_election_timer(&mut self) {
        let jitter = match self.options.failure_jitter_ms {
            0 => 0,
            max => self.rng.gen_range(0..=max),
        };
        self.election_deadline = self.now + self.options.failure_timeout_ms + jitter;
    }

    fn persist_epoch_and_vote(&mut self) -> Result<()> {
        self.storage.set_epoch_and_vote(self.epoch, self.vote)?;
        // Epoch and vote are rare; flushing them here keeps the vote durable before it is sent.
        self.storage.flush()
    }

    /// Moves to `epoch` (if higher) as a backup of `primary`.
    pub(super) fn become_backup(&mut self, epoch: Epoch, primary: Option<NodeId>) -> Result<()> {
        assert!(epoch >= self.epoch, "epochs never go backwards");
        if epoch > self.epoch {
            self.epoch = epoch;
            self.vote = None;
            self.persist_epoch_and_vote()?;
            self.verified_index = 0;
            self.acked_index = 0;
        }
        let was_primary = self.is_primary();
        if was_primary || primary != self.primary {
            info!(node = self.id, epoch, ?primary, "following as backup");
        }
        self.step_down_cleanup();
        self.role = RoleState::Backup;
        self.set_primary(primary);
        Ok(())
    }

    /// Answers every request a primary was holding: the client retries elsewhere.
    fn step_down_cleanup(&mut self) {
        let RoleState::Primary(state) = std::mem::replace(&mut self.role, RoleState::Backup) else {
            return;
        };
        let error = Error::NotPrimary {
            node: self.id,
            epoch: self.epoch,
            hint: None,
        };
        for waiters in state.writes.into_values() {
            for waiter in waiters {
                self.reply(waiter.token, Response::Error(error.clone()));
            }
        }
        for read in state.reads {
            self.reply(read.token, Response::Error(error.clone()));
        }
    }

    fn set_primary(&mut self, primary: Option<NodeId>) {
        if self.primary != primary {
            self.primary = primary;
            self.outputs.push(Output::Topology {
                epoch: self.epoch,
                primary,
                membership: self.membership.clone(),
            });
        }
    }

    /// A message from the primary of the current epoch arrived.
    pub(super) fn follow(&mut self, primary: NodeId) -> Result<()> {
        if let RoleState::Primary(_) = self.role {
            // Two primaries in one epoch would break invariant 1; with votes persisted before they
            // are granted it cannot happen, so stop rather than diverge (fail-stop).
            return Err(Error::Internal(format!(
                "node {} is primary of epoch {} and heard from another primary {primary}",
                self.id, self.epoch
            )));
        }
        if matches!(
            self.role,
            RoleState::Candidate { .. } | RoleState::PreCandidate { .. }
        ) {
            self.role = RoleState::Backup;
        }
        self.last_heard_primary = self.now;
        self.reset_election_timer();
        self.set_primary(Some(primary));
        Ok(())
    }

    /// Asks the voters whether they would elect this node, without changing epoch or vote.
    pub(super) fn start_pre_election(&mut self) -> Result<()> {
        self.step_down_cleanup();
        self.role = RoleState::PreCandidate {
            votes: BTreeSet::from([self.id]),
        };
        self.set_primary(None);
        self.reset_election_timer();
        debug!(node = self.id, epoch = self.epoch, "asking for pre-votes");
        if self.membership.majority() <= 1 {
            return self.start_election();
        }
        let rank = self.rank();
        let proposed = self.epoch + 1;
        for voter in self.other_voters() {
            self.outputs.push(Output::Send(Message {
                from: self.id,
                to: voter,
                epoch: proposed,
                body: MessageBody::PreElection { rank },
            }));
        }
        Ok(())
    }

    /// Answers a would-be candidate asking whether this node would elect it in `epoch`.
    pub(super) fn on_pre_election(
        &mut self,
        candidate: NodeId,
        epoch: Epoch,
        rank: Rank,
    ) -> Result<()> {
        // As in Raft, a node answers whatever its own membership says: the candidate counts only
        // the voters of its membership, and a node whose membership is behind (or that a pending
        // change removes) must still be able to help elect a primary.
        let granted = epoch > self.epoch && rank > self.rank() && !self.hears_live_primary();
        self.send(candidate, MessageBody::PreVote { granted });
        if !granted && self.rank() > rank && !self.hears_live_primary() && !self.is_primary() {
            // The bully: a higher-ranked node that also hears no primary runs itself.
            if matches!(self.role, RoleState::Backup) && self.membership.is_voter(self.id) {
                self.start_pre_election()?;
            }
        }
        Ok(())
    }

    pub(super) fn on_pre_vote(&mut self, voter: NodeId) -> Result<()> {
        if matches!(self.role, RoleState::PreCandidate { .. }) && self.tally(voter) {
            self.start_election()?;
        }
        Ok(())
    }

    /// Counts a (pre-)vote from `voter` if it is a voter of this node's membership; returns
    /// whether the (pre-)candidate now has a majority.
    fn tally(&mut self, voter: NodeId) -> bool {
        let majority = self.membership.majority();
        let counts = self.membership.is_voter(voter);
        match &mut self.role {
            RoleState::PreCandidate { votes } | RoleState::Candidate { votes } => {
                if counts {
                    votes.insert(voter);
                }
                votes.len() >= majority
            }
            RoleState::Backup | RoleState::Primary(_) => false,
        }
    }

    fn start_election(&mut self) -> Result<()> {
        self.step_down_cleanup();
        self.epoch += 1;
        self.vote = Some(self.id);
        self.persist_epoch_and_vote()?;
        self.verified_index = 0;
        self.acked_index = 0;
        self.role = RoleState::Candidate {
            votes: BTreeSet::from([self.id]),
        };
        self.set_primary(None);
        self.reset_election_timer();
        info!(node = self.id, epoch = self.epoch, rank = ?self.rank(), "starting an election");
        if self.membership.majority() <= 1 {
            return self.become_primary();
        }
        let rank = self.rank();
        for voter in self.other_voters() {
            self.send(voter, MessageBody::Election { rank });
        }
        Ok(())
    }

    pub(super) fn on_election(&mut self, candidate: NodeId, rank: Rank) -> Result<()> {
        let own = self.rank();
        if own > rank {
            // Never vote for a less fresh log (that is what keeps committed entries). A voter
            // answers as the bully: I outrank you, and I will run myself unless a primary is live.
            // A non-voter just declines: telling the candidate to stand down for a node that will
            // not run would stall the election.
            if !self.membership.is_voter(self.id) {
                self.send(candidate, MessageBody::Vote { granted: false });
                return Ok(());
            }
            self.send(candidate, MessageBody::Alive { rank: own });
            if matches!(self.role, RoleState::Backup) && !self.hears_live_primary() {
                self.start_pre_election()?;
            }
            return Ok(());
        }
        let granted = match self.vote {
            None if !self.hears_live_primary() && matches!(self.role, RoleState::Backup) => {
                self.vote = Some(candidate);
                self.persist_epoch_and_vote()?;
                self.reset_election_timer();
                true
            }
            Some(voted) => voted == candidate,
            None => false,
        };
        debug!(
            node = self.id,
            epoch = self.epoch,
            candidate,
            granted,
            "answering an election"
        );
        self.send(candidate, MessageBody::Vote { granted });
        Ok(())
    }

    /// A higher-ranked node answered this (pre-)candidate's election: it runs instead.
    pub(super) fn on_alive(&mut self, bully: NodeId, rank: Rank) {
        if matches!(
            self.role,
            RoleState::Candidate { .. } | RoleState::PreCandidate { .. }
        ) && rank > self.rank()
        {
            info!(
                node = self.id,
                epoch = self.epoch,
                bully,
                "a higher-ranked node is alive; standing down"
            );
            self.role = RoleState::Backup;
            self.reset_election_timer();
        }
    }

    pub(super) fn on_vote(&mut self, voter: NodeId) -> Result<()> {
        if matches!(self.role, RoleState::Candidate { .. }) && self.tally(voter) {
            self.become_primary()?;
        }
        Ok(())
    }

    fn become_primary(&mut self) -> Result<()> {
        let last_index = self.log.last_index();
        info!(
            node = self.id,
            epoch = self.epoch,
            last_index,
            "elected primary"
        );
        let now = self.now;
        let progress = self
            .membership
            .members
            .iter()
            .filter(|member| member.id != self.id)
            .map(|member| (member.id, Progress::new(last_index, now)))
            .collect();
        // Entries past the commit index may be retried client writes: index their request ids so a
        // retry joins the entry instead of appending a duplicate.
        self.log.fill_cache_from(self.applied_index + 1)?;
        let requests = self
            .log
            .cached_entries()
            .filter_map(|entry| entry.request_id.map(|id| (id, entry.index)))
            .collect();
        self.role = RoleState::Primary(Box::new(PrimaryState {
            progress,
            round: 0,
            rounds: BTreeMap::new(),
            next_heartbeat: now,
            lease_until: 0,
            elected_at: now,
            noop_index: last_index + 1,
            writes: BTreeMap::new(),
            requests,
            reads: Vec::new(),
            transfers: BTreeMap::new(),
            next_transfer: 0,
            session_expiry: SessionExpiry::new(now),
            key_expiry: Default::default(),
        }));
        self.set_primary(Some(self.id));
        for member in self.other_members() {
            self.send(member, MessageBody::Coordinator);
        }
        self.append(Operation::Noop, None)?;
        self.send_heartbeats();
        self.advance_commit()?;
        Ok(())
    }
}
