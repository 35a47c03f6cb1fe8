//! What the primary knows about each member's log, and the write-concern arithmetic built on it.
//!
//! These are pure functions of the progress table, kept apart from [`super::Node`] so they can be
//! tested on their own. Invariants: `match_index` only grows within an epoch (a member's log never
//! un-matches the primary's), and `next_index > match_index`.

use std::collections::{BTreeMap, VecDeque};

use crate::wire::client::WriteConcern;
use crate::wire::message::{LogIndex, Membership, NodeId};

use super::Timestamp;

/// The primary's view of one member.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The next index to send.
    pub next_index: LogIndex,
    /// The member's log matches the primary's up to here, durably.
    pub match_index: LogIndex,
    /// Entries after this index and before `next_index` count as in flight (flow control). It is
    /// `match_index`, or the probe position after a reset, whichever is higher.
    pub window_start: LogIndex,
    /// When the member last sent anything in this epoch.
    pub last_contact: Option<Timestamp>,
    /// When `match_index` last advanced, or the send position was reset.
    pub last_progress: Timestamp,
    /// The member was caught up with the primary's log as of this time (Kafka's ISR rule).
    pub caught_up_at: Option<Timestamp>,
    /// `(last index sent, time)` of recent sends, to learn when the member caught up.
    pub sends: VecDeque<(LogIndex, Timestamp)>,
    /// From the last heartbeat ack, for status.
    pub reported_durable: Option<LogIndex>,
    pub reported_last: Option<LogIndex>,
}

impl Progress {
    /// A member about which nothing is known yet: sending starts right after the primary's log.
    pub fn new(last_index: LogIndex, now: Timestamp) -> Self {
        Progress {
            next_index: last_index + 1,
            match_index: 0,
            window_start: last_index,
            last_contact: None,
            last_progress: now,
            caught_up_at: None,
            sends: VecDeque::new(),
            reported_durable: None,
            reported_last: None,
        }
    }

    /// Records that entries up to `last_sent` were sent at `now`.
    pub fn record_send(&mut self, last_sent: LogIndex, now: Timestamp) {
        const MAX_REMEMBERED_SENDS: usize = 64;
        if self.sends.len() >= MAX_REMEMBERED_SENDS {
            self.sends.pop_front();
        }
        self.sends.push_back((last_sent, now));
    }

    /// Forgets acknowledgements beyond `index`: the member no longer has those entries.
    pub fn forget_match(&mut self, index: LogIndex) {
        self.match_index = index;
        self.window_start = index;
        self.sends.clear();
    }

    /// Restarts sending at `next_index` (a lost append, or a log that diverges).
    pub fn reset_to(&mut self, next_index: LogIndex, now: Timestamp) {
        self.next_index = next_index.max(self.match_index + 1);
        self.window_start = self.next_index - 1;
        self.last_progress = now;
    }

    /// The last index that may be sent now without exceeding `max_inflight` entries in flight.
    pub fn send_limit(&self, max_inflight: u64) -> LogIndex {
        self.window_start.max(self.match_index) + max_inflight
    }

    /// Records an acknowledged match. Returns whether it advanced.
    pub fn record_match(&mut self, match_index: LogIndex, now: Timestamp) -> bool {
        self.last_contact = Some(now);
        // The member had everything the primary sent up to `match_index`, as of the send time.
        while let Some(&(sent, at)) = self.sends.front() {
            if sent > match_index {
                break;
            }
            self.caught_up_at = Some(self.caught_up_at.map_or(at, |prev| prev.max(at)));
            self.sends.pop_front();
        }
        if match_index <= self.match_index {
            return false;
        }
        self.match_index = match_index;
        self.window_start = self.window_start.max(match_index);
        self.next_index = self.next_index.max(match_index + 1);
        self.last_progress = now;
        true
    }
}

/// The highest index durable on a majority of voters, given the primary's own durable index.
pub fn majority_index(
    membership: &Membership,
    primary: NodeId,
    primary_durable: LogIndex,
    progress: &BTreeMap<NodeId, Progress>,
) -> LogIndex {
    let mut durable: Vec<LogIndex> = membership
        .voters()
        .map(|id| durable_of(id, primary, primary_durable, progress))
        .collect();
    if durable.is_empty() {
        return 0;
    }
    durable.sort_unstable_by(|a, b| b.cmp(a));
    durable[membership.majority() - 1]
}

/// The highest index known durable on voter `id` (the primary's own durable index for itself).
pub fn durable_of(
    id: NodeId,
    primary: NodeId,
    primary_durable: LogIndex,
    progress: &BTreeMap<NodeId, Progress>,
) -> LogIndex {
    if id == primary {
        primary_durable
    } else {
        progress.get(&id).map_or(0, |p| p.match_index)
    }
}

/// Voters that have `index` durably, the primary included.
pub fn acknowledged(
    index: LogIndex,
    membership: &Membership,
    primary: NodeId,
    primary_durable: LogIndex,
    progress: &BTreeMap<NodeId, Progress>,
) -> usize {
    membership
        .voters()
        .filter(|&id| durable_of(id, primary, primary_durable, progress) >= index)
        .count()
}

/// The in-sync set: the primary plus the voters that caught up within `lag_timeout` (Kafka's ISR).
pub fn in_sync_voters(
    membership: &Membership,
    primary: NodeId,
    progress: &BTreeMap<NodeId, Progress>,
    now: Timestamp,
    lag_timeout: u64,
) -> Vec<NodeId> {
    membership
        .voters()
        .filter(|&id| {
            id == primary
                || progress
                    .get(&id)
                    .and_then(|p| p.caught_up_at)
                    .is_some_and(|at| now.saturating_sub(at) <= lag_timeout)
        })
        .collect()
}

/// What the primary knows at one moment about who holds which entries: everything a write
/// concern is judged on, with the in-sync set computed once.
pub struct Acknowledgements<'a> {
    membership: &'a Membership,
    primary: NodeId,
    primary_durable: LogIndex,
    /// Entries up to here are committed and applied: a write there has its real result.
    applied_index: LogIndex,
    progress: &'a BTreeMap<NodeId, Progress>,
    in_sync: Vec<NodeId>,
}

impl<'a> Acknowledgements<'a> {
    pub fn new(
        membership: &'a Membership,
        primary: NodeId,
        primary_durable: LogIndex,
        applied_index: LogIndex,
        progress: &'a BTreeMap<NodeId, Progress>,
        now: Timestamp,
        lag_timeout: u64,
    ) -> Self {
        let in_sync = in_sync_voters(membership, primary, progress, now, lag_timeout);
        Acknowledgements {
            membership,
            primary,
            primary_durable,
            applied_index,
            progress,
            in_sync,
        }
    }

    /// Voters that have `index` durably, the primary included.
    pub fn acknowledged(&self, index: LogIndex) -> usize {
        acknowledged(
            index,
            self.membership,
            self.primary,
            self.primary_durable,
            self.progress,
        )
    }

    /// How many voters `concern` needs.
    pub fn required(&self, concern: WriteConcern) -> usize {
        required_acknowledgements(concern, self.membership, self.in_sync.len())
    }

    /// Whether a write at `index` has met `concern`.
    pub fn is_met(&self, concern: WriteConcern, index: LogIndex) -> bool {
        // `1` and `N` include the primary's own flush; `majority` and `all` need the entry
        // committed (durable on a majority of the voters in force, which may not include a
        // primary that is removing itself) and applied, so that the answer is the applied result.
        let committed = self.applied_index >= index;
        match concern {
            WriteConcern::One | WriteConcern::Count(_) => {
                self.primary_durable >= index && self.acknowledged(index) >= self.required(concern)
            }
            WriteConcern::Majority => committed,
            WriteConcern::All => {
                committed
                    && self.in_sync.iter().all(|&id| {
                        durable_of(id, self.primary, self.primary_durable, self.progress) >= index
                    })
            }
        }
    }
}

/// How many voters a write concern needs, with the in-sync set for `all`.
pub fn required_acknowledgements(
    concern: WriteConcern,
    membership: &Membership,
    in_sync: usize,
) -> usize {
    match concern {
        WriteConcern::One => 1,
        WriteConcern::Count(count) => count as usize,
        WriteConcern::Majority => membership.majority(),
        WriteConcern::All => in_sync.max(membership.majority()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::Member;

    fn membership(voters: &[NodeId]) -> Membership {
        Membership::new(
            voters
                .iter()
                .map(|&id| Member {
                    id,
                    client_addr: String::new(),
                    peer_addr: String::new(),
                    voter: true,
                })
                .collect(),
        )
    }

    fn progress_with(matches: &[(NodeId, LogIndex)]) -> BTreeMap<NodeId, Progress> {
        matches
            .iter()
            .map(|&(id, index)| {
                let mut progress = Progress::new(0, 0);
                progress.record_match(index, 0);
                (id, progress)
            })
            .collect()
    }

    #[test]
    fn majority_index_is_the_median_of_durable_indexes() {
        let members = membership(&[1, 2, 3]);
        let progress = progress_with(&[(2, 5), (3, 9)]);
        assert_eq!(majority_index(&members, 1, 7, &progress), 7);
        assert_eq!(majority_index(&members, 1, 3, &progress), 5);
        let five = membership(&[1, 2, 3, 4, 5]);
        let progress = progress_with(&[(2, 4), (3, 8), (4, 1), (5, 0)]);
        assert_eq!(majority_index(&five, 1, 10, &progress), 4);
    }

    #[test]
    fn acknowledged_counts_the_primary_and_matching_voters() {
        let members = membership(&[1, 2, 3]);
        let progress = progress_with(&[(2, 5), (3, 2)]);
        assert_eq!(acknowledged(3, &members, 1, 4, &progress), 2);
        assert_eq!(acknowledged(5, &members, 1, 4, &progress), 1);
        assert_eq!(acknowledged(1, &members, 1, 4, &progress), 3);
    }

    #[test]
    fn in_sync_set_drops_voters_that_lag_too_long() {
        let members = membership(&[1, 2, 3]);
        let mut progress = progress_with(&[(2, 0), (3, 0)]);
        for (id, at) in [(2, 900), (3, 100)] {
            if let Some(p) = progress.get_mut(&id) {
                p.caught_up_at = Some(at);
            }
        }
        assert_eq!(
            in_sync_voters(&members, 1, &progress, 1000, 500),
            vec![1, 2]
        );
        assert_eq!(
            required_acknowledgements(WriteConcern::All, &members, 2),
            2,
            "all = the in-sync set, never below a majority"
        );
        assert_eq!(required_acknowledgements(WriteConcern::All, &members, 1), 2);
    }

    #[test]
    fn write_concerns_are_judged_on_flushes_commit_and_the_in_sync_set() {
        let members = membership(&[1, 2, 3]);
        let mut progress = progress_with(&[(2, 5), (3, 3)]);
        for (id, at) in [(2, 1200), (3, 900)] {
            if let Some(p) = progress.get_mut(&id) {
                p.caught_up_at = Some(at);
            }
        }
        // The primary (1) flushed through 4 and committed through 3.
        let acks = Acknowledgements::new(&members, 1, 4, 3, &progress, 1000, 500);
        assert!(acks.is_met(WriteConcern::One, 4));
        assert!(
            !acks.is_met(WriteConcern::One, 5),
            "the primary has not flushed 5"
        );
        assert!(acks.is_met(WriteConcern::Count(2), 4));
        assert!(
            !acks.is_met(WriteConcern::Count(3), 4),
            "voter 3 holds only 3"
        );
        assert!(acks.is_met(WriteConcern::Majority, 3));
        assert!(
            !acks.is_met(WriteConcern::Majority, 4),
            "4 is not committed"
        );
        assert!(acks.is_met(WriteConcern::All, 3));
        assert_eq!(
            (acks.acknowledged(4), acks.required(WriteConcern::All)),
            (2, 3)
        );
        // Voter 3 lags too long: it leaves the in-sync set, and `all` no longer waits for it.
        let acks = Acknowledgements::new(&members, 1, 4, 3, &progress, 1500, 500);
        assert_eq!(acks.required(WriteConcern::All), 2);
    }

    #[test]
    fn a_member_that_lost_its_log_is_resent_from_where_it_now_ends() {
        let mut progress = Progress::new(0, 0);
        progress.record_send(50, 10);
        progress.record_match(50, 20);
        progress.forget_match(7);
        assert_eq!(progress.match_index, 7);
        assert_eq!(
            progress.send_limit(100),
            107,
            "the window restarts at the new match"
        );
        progress.reset_to(8, 30);
        assert_eq!(progress.next_index, 8);
        assert!(
            progress.record_match(20, 40),
            "acks below the forgotten match count again"
        );
    }

    #[test]
    fn caught_up_time_comes_from_the_send_that_the_ack_covers() {
        let mut progress = Progress::new(0, 0);
        progress.record_send(10, 100);
        progress.record_send(20, 200);
        progress.record_match(15, 250);
        assert_eq!(progress.caught_up_at, Some(100));
        progress.record_match(20, 300);
        assert_eq!(progress.caught_up_at, Some(200));
        assert!(progress.sends.is_empty());
    }
}
