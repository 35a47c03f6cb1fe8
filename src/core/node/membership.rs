//! The membership in force, changes to it, and the promotion of learners.
//!
//! A membership entry takes effect on each node as soon as it is in its log (not when it commits);
//! a truncation or a snapshot recomputes it. The primary keeps its progress table in step with it.
//!
//! Invariants:
//! - The membership in force is the latest membership entry in the unapplied log, else the applied
//!   one (`membership_index` says which entry set it, 0 for the applied or configured one).
//! - At most one change is in flight: a change is appended only once the previous one and this
//!   primary's no-op are committed (the single-server change rule).
//! - A member joins as a learner; the primary makes it a voter once it has caught up.

use tracing::info;

use crate::core::progress::Progress;
use crate::core::{ClientToken, Output};
use crate::error::{Error, Result};
use crate::wire::client::{Response, WriteConcern, WriteResult};
use crate::wire::message::{LogIndex, Member, Membership, NodeId, Operation};

use super::requests::PendingWrite;
use super::{Node, RoleState};

/// A membership change asked for by a client.
#[derive(Clone, Debug)]
pub(super) enum MembershipChange {
    Add(Member),
    Remove(NodeId),
}

impl Node {
    /// Sets the membership in force, keeping the primary's progress table in step with it.
    pub(super) fn adopt_membership(&mut self, membership: Membership, index: LogIndex) {
        if membership == self.membership {
            self.membership_index = index.max(self.membership_index);
            return;
        }
        info!(
            node = self.id,
            epoch = self.epoch,
            index,
            members = ?membership.members.iter().map(|m| (m.id, m.voter)).collect::<Vec<_>>(),
            "membership changed"
        );
        self.membership = membership;
        self.membership_index = index;
        let last_index = self.log.last_index();
        let now = self.now;
        let members: Vec<NodeId> = self.other_members();
        if let Some(state) = self.primary_state() {
            state.progress.retain(|id, _| members.contains(id));
            for id in members {
                state
                    .progress
                    .entry(id)
                    .or_insert_with(|| Progress::new(last_index, now));
            }
        }
        self.outputs.push(Output::Topology {
            epoch: self.epoch,
            primary: self.primary,
            membership: self.membership.clone(),
        });
    }

    /// The membership is the latest membership entry in the unapplied log, else the applied one.
    pub(super) fn recompute_membership(&mut self) -> Result<()> {
        let mut latest = (self.applied_membership.clone(), 0);
        self.log
            .scan(self.applied_index + 1, self.log.last_index(), |entry| {
                if let Operation::Membership(membership) = entry.operation {
                    latest = (membership, entry.index);
                }
            })?;
        self.adopt_membership(latest.0, latest.1);
        Ok(())
    }

    /// Appends a membership change: one at a time, and only once this primary's no-op is
    /// committed (the single-server change rule; the no-op closes the gap Raft's had).
    pub(super) fn change_membership(
        &mut self,
        token: ClientToken,
        change: MembershipChange,
    ) -> Result<()> {
        let noop_committed = match &self.role {
            RoleState::Primary(state) => self.commit_index >= state.noop_index,
            _ => {
                let error = self.not_primary();
                self.reply(token, Response::Error(error));
                return Ok(());
            }
        };
        if !noop_committed || self.membership_index > self.commit_index {
            let error = Error::Unavailable(
                "a membership change or election is still being committed: retry shortly".into(),
            );
            self.reply(token, Response::Error(error));
            return Ok(());
        }
        let mut members = self.membership.members.clone();
        match change {
            MembershipChange::Add(member) => {
                if let Some(existing) = self.membership.get(member.id) {
                    let same = existing.client_addr == member.client_addr
                        && existing.peer_addr == member.peer_addr;
                    let response = if same {
                        // A retried join: already a member.
                        Response::Written {
                            result: WriteResult {
                                index: self.membership_index,
                                existed: true,
                                answer: None,
                            },
                            meta: self.meta(),
                        }
                    } else {
                        Response::Error(Error::InvalidRequest(format!(
                            "node {} is already a member with other addresses; remove it first",
                            member.id
                        )))
                    };
                    self.reply(token, response);
                    return Ok(());
                }
                members.push(Member {
                    voter: false,
                    ..member
                });
            }
            MembershipChange::Remove(id) => {
                if self.membership.get(id).is_none() {
                    // Already gone (a retried removal, say): removal is idempotent, like a delete.
                    let response = Response::Written {
                        result: WriteResult {
                            index: self.membership_index,
                            existed: false,
                            answer: None,
                        },
                        meta: self.meta(),
                    };
                    self.reply(token, response);
                    return Ok(());
                }
                members.retain(|member| member.id != id);
                if !members.iter().any(|member| member.voter) {
                    let error = Error::InvalidRequest(
                        "removing the last voter would leave no cluster".into(),
                    );
                    self.reply(token, Response::Error(error));
                    return Ok(());
                }
            }
        }
        let index = self.append(Operation::Membership(Membership::new(members)), None)?;
        let deadline = self.now + self.options.failure_timeout_ms * 10;
        if let Some(state) = self.primary_state() {
            state.writes.entry(index).or_default().push(PendingWrite {
                token,
                concern: WriteConcern::Majority,
                deadline,
                result: WriteResult {
                    index,
                    existed: false,
                    answer: None,
                },
            });
        }
        Ok(())
    }

    /// Makes a caught-up learner a voter (one change at a time).
    pub(super) fn promote_caught_up_learner(&mut self) -> Result<()> {
        const CAUGHT_UP_LAG: LogIndex = 1000;
        let RoleState::Primary(state) = &self.role else {
            return Ok(());
        };
        if self.membership_index > self.commit_index || self.commit_index < state.noop_index {
            return Ok(());
        }
        let last_index = self.log.last_index();
        let learner = self.membership.members.iter().find(|member| {
            !member.voter
                && state.progress.get(&member.id).is_some_and(|p| {
                    p.match_index > 0 && p.match_index + CAUGHT_UP_LAG >= last_index
                })
        });
        let Some(learner) = learner.map(|m| m.id) else {
            return Ok(());
        };
        info!(
            node = self.id,
            epoch = self.epoch,
            learner,
            "learner caught up; making it a voter"
        );
        let members = self
            .membership
            .members
            .iter()
            .map(|member| Member {
                voter: member.voter || member.id == learner,
                ..member.clone()
            })
            .collect();
        self.append(Operation::Membership(Membership::new(members)), None)?;
        Ok(())
    }
}
