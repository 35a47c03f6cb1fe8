//! Expiring idle client sessions: the primary decides, the log carries the decision.
//!
//! Every client that writes leaves a row in the sessions table (its last sequence and that
//! write's result), which is what lets a retried write be recognised and answered with its first
//! result. Without expiry the table grows by one row per client forever. As in Raft's client
//! sessions, a session is kept for a window, `session_ttl_ms`: the primary expires the sessions
//! whose client it has not seen write for that long, by appending an `ExpireSessions` entry.
//!
//! Invariants:
//! - Only the primary decides, and only by appending an entry; applying it removes each listed
//!   session whose last sequence is still the one listed. Backups, restarts replaying the log and
//!   snapshot installs never decide, so every node drops the same sessions at the same index.
//! - A session is expired only after the primary has seen no write of its client for
//!   `session_ttl_ms` on its own clock. A primary knows nothing of what earlier primaries saw, so
//!   it counts every client as seen at its election: a failover only delays expiry.
//! - The sweep is bounded: one page of [`SESSIONS_PER_PAGE`] sessions per heartbeat interval, and
//!   one expiry entry at a time (the next page waits until it is applied, so no session is listed
//!   twice). A pass over the table starts at most every tenth of the TTL, so a session goes at
//!   most about 1.1 × the TTL after its client's last write, plus the time a pass takes.

use std::collections::BTreeMap;

use tracing::debug;

use crate::core::Timestamp;
use crate::error::Result;
use crate::wire::message::{ExpiredSession, LogIndex, Operation};

use super::Node;

/// Sessions read per step of the sweep, and at most listed in one expiry entry.
const SESSIONS_PER_PAGE: usize = 1024;

/// The primary's view of which sessions are idle, and where its sweep of the table stands.
#[derive(Debug)]
pub(super) struct SessionExpiry {
    /// When this primary was elected: every client counts as seen then.
    elected_at: Timestamp,
    /// When this primary last saw a write of each client, since its election (entries older than
    /// the TTL are dropped at the end of each pass: they would count as idle anyway).
    last_seen: BTreeMap<u64, Timestamp>,
    /// The last client id of the page swept last; `None` starts a new pass.
    cursor: Option<u64>,
    /// No page before this time.
    next_page_at: Timestamp,
    /// The expiry entry appended last, until it is applied.
    pending: Option<LogIndex>,
}

impl SessionExpiry {
    /// The sweep of a primary elected at `now`.
    pub(super) fn new(now: Timestamp) -> SessionExpiry {
        SessionExpiry {
            elected_at: now,
            last_seen: BTreeMap::new(),
            cursor: None,
            next_page_at: now,
            pending: None,
        }
    }

    /// Whether the session of `client_id` has been idle for `ttl` at `now`.
    fn idle(&self, client_id: u64, now: Timestamp, ttl: u64) -> bool {
        let seen = self
            .last_seen
            .get(&client_id)
            .copied()
            .unwrap_or(self.elected_at);
        now.saturating_sub(seen) >= ttl
    }
}

impl Node {
    /// The primary saw a write of `client_id`: its session is in use.
    pub(super) fn saw_client(&mut self, client_id: u64) {
        let now = self.now;
        if let Some(state) = self.primary_state() {
            state.session_expiry.last_seen.insert(client_id, now);
        }
    }

    /// One step of the sweep: reads a page of the sessions table and appends an entry expiring
    /// those idle for `session_ttl_ms`.
    pub(super) fn expire_sessions(&mut self) -> Result<()> {
        let (now, applied_index) = (self.now, self.applied_index);
        let ttl = self.options.session_ttl_ms;
        let page_interval = self.options.heartbeat_interval_ms;
        let pass_interval = (ttl / 10).max(page_interval);
        let Some(state) = self.primary_state() else {
            return Ok(());
        };
        let expiry = &mut state.session_expiry;
        let waiting = expiry.pending.is_some_and(|index| index > applied_index);
        if now < expiry.next_page_at || waiting {
            return Ok(());
        }
        expiry.pending = None;
        let cursor = expiry.cursor;
        let page = self.storage.sessions_after(cursor, SESSIONS_PER_PAGE)?;
        let Some(state) = self.primary_state() else {
            return Ok(());
        };
        let expiry = &mut state.session_expiry;
        let expired: Vec<ExpiredSession> = page
            .iter()
            .filter(|(client_id, _)| expiry.idle(*client_id, now, ttl))
            .map(|(client_id, session)| ExpiredSession {
                client_id: *client_id,
                last_sequence: session.last_sequence,
            })
            .collect();
        if page.len() < SESSIONS_PER_PAGE {
            expiry.cursor = None;
            expiry.next_page_at = now.saturating_add(pass_interval);
            expiry
                .last_seen
                .retain(|_, seen| now.saturating_sub(*seen) < ttl);
        } else {
            expiry.cursor = page.last().map(|(client_id, _)| *client_id);
            expiry.next_page_at = now.saturating_add(page_interval);
        }
        if expired.is_empty() {
            return Ok(());
        }
        for session in &expired {
            expiry.last_seen.remove(&session.client_id);
        }
        let count = expired.len();
        let index = self.append(Operation::ExpireSessions(expired), None)?;
        debug!(
            node = self.id,
            index, count, "expiring idle client sessions"
        );
        if let Some(state) = self.primary_state() {
            state.session_expiry.pending = Some(index);
        }
        Ok(())
    }
}
