//! Client requests: writes and their write concern, and reads at each consistency.
//!
//! Invariants:
//! - A write is answered only once its write concern is met, and every concern includes the
//!   primary's own flush: `1` and `N` count voters that flushed the entry, `majority` waits for
//!   the commit, `all` for the commit and every voter of the in-sync set. A write not answered by
//!   its deadline gets `WriteConcernNotMet` (it may still apply). A deadline is at most
//!   [`MAX_REQUEST_TIMEOUT_MS`] away whatever the client asks, and a request whose client went
//!   away is dropped ([`Node::cancel`]), so no waiter outlives its client for long.
//! - A write answered before it is applied is told whether its key existed from the log before
//!   its entry; so is a retry that joins an entry appended by an earlier primary.
//! - A request id is appended at most once: a retry of a write in flight joins its entry, and a
//!   retry of an applied write waits on its entry like a fresh write (its own write concern may
//!   ask for more than the first attempt's) and is answered with the result in its session record.
//! - A client's writes enter the log in sequence order: a new sequence is appended only above
//!   every sequence of that client in the unapplied suffix, an older one not in flight gets
//!   `StaleRequest`. The apply step takes an entry whose sequence is not above its session's for
//!   a retry, so an older write appended after a newer one (two concurrent calls of one client)
//!   would be skipped yet acknowledged with the newer one's result. Sequences may skip (a write
//!   given up before it was sent), so no contiguity is required.
//! - A linearizable read is served only by a primary that holds a lease and has committed this
//!   epoch's no-op, so it reflects every write acknowledged before it began.
//! - A scan is served one bounded page at a time (`max_scan_page_pairs`, `max_scan_page_bytes`),
//!   whatever limit the client asks for, so a page fits one client frame and the event loop
//!   pauses for one page only. Each page is a read of its own at its consistency, reflecting its
//!   own applied index; a scan of many pages is not a snapshot.

use std::collections::BTreeMap;

use crate::core::progress::Acknowledgements;
use crate::core::{ClientToken, Timestamp};
use crate::error::{Error, Result};
use crate::storage::expiry::{deadline_key, decode_deadline};
use crate::wire::client::{ReadConsistency, Request, Response, Write, WriteConcern, WriteResult};
use crate::wire::message::{LogIndex, Operation, RequestId};

use super::{Node, PrimaryState, RoleState};

/// The longest a request waits for its write concern or its read, whatever timeout its client
/// asks for (60 s). Past it the request is answered as timed out, so a waiter whose client went
/// away without the driver noticing is freed by then at the latest.
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 60_000;

/// A client write waiting for its write concern.
#[derive(Clone, Debug)]
pub(super) struct PendingWrite {
    /// The client request to answer.
    pub(super) token: ClientToken,
    pub(super) concern: WriteConcern,
    /// Past this time, the write is answered `WriteConcernNotMet`.
    pub(super) deadline: Timestamp,
    /// The answer: the entry's index, and whether the key existed (the real result once applied).
    pub(super) result: WriteResult,
}

/// A client read waiting for the primary to confirm its leadership.
#[derive(Clone, Debug)]
pub(super) struct PendingRead {
    /// The client request to answer.
    pub(super) token: ClientToken,
    pub(super) request: Request,
    /// Past this time, the read is answered `Unavailable`.
    pub(super) deadline: Timestamp,
}

impl Node {
    // --- writes ---

    pub(super) fn write(
        &mut self,
        token: ClientToken,
        request_id: RequestId,
        write: Write,
        concern: WriteConcern,
        timeout_ms: u64,
    ) -> Result<()> {
        if !self.is_primary() {
            let error = self.not_primary();
            self.reply(token, Response::Error(error));
            return Ok(());
        }
        // The client is active: its session (the window its retries are recognised in) stays.
        self.saw_client(request_id.client_id);
        let voters = self.membership.voters().count();
        if let WriteConcern::Count(required) = concern {
            if required as usize > voters || required == 0 {
                let error = Error::WriteConcernImpossible {
                    required: required as usize,
                    voters,
                };
                self.reply(token, Response::Error(error));
                return Ok(());
            }
        }
        let deadline = self.deadline_after(timeout_ms);
        // A retry of a write already applied: answer with its first result, once its own write
        // concern holds (the first attempt may have asked for less).
        let session = self.storage.session(request_id.client_id)?;
        if let Some(session) = session
            .as_ref()
            .filter(|s| s.last_sequence == request_id.sequence)
        {
            self.wait_for(session.result.clone(), token, concern, deadline);
            return Ok(());
        }
        let applied_index = self.applied_index;
        let (existing, newest_in_flight) = self.primary_state().map_or((None, None), |state| {
            in_flight(&state.requests, request_id, applied_index)
        });
        // A newer write of this client already applied, or in the log while this one is not:
        // appending this one after it would let the apply step take it for a retry and answer it
        // with the newer one's result.
        let newer = session
            .as_ref()
            .map(|s| s.last_sequence)
            .into_iter()
            .chain(newest_in_flight.filter(|_| existing.is_none()))
            .max()
            .filter(|&latest| latest > request_id.sequence);
        if let Some(latest) = newer {
            let error = Error::StaleRequest {
                client_id: request_id.client_id,
                sequence: request_id.sequence,
                latest,
            };
            self.reply(token, Response::Error(error));
            return Ok(());
        }
        let index = match existing {
            Some(index) => index, // a retry of a write still in flight joins it
            None => {
                let decision = match self.decide(write)? {
                    Ok(decision) => decision,
                    Err(refused) => {
                        self.reply(token, Response::Error(refused));
                        return Ok(());
                    }
                };
                let index = self.append(decision.operation, Some(request_id))?;
                let waiter = PendingWrite {
                    token,
                    concern,
                    deadline,
                    result: WriteResult {
                        index,
                        existed: decision.existed,
                        answer: decision.answer,
                    },
                };
                if let Some(state) = self.primary_state() {
                    state.requests.insert(request_id, index);
                    state.writes.entry(index).or_default().push(waiter);
                }
                return Ok(());
            }
        };
        // The entry may be an earlier primary's, with no waiter here to take its result from:
        // the answer was logged with the outcome, and whether the key existed is speculated.
        let key = write
            .keys()
            .first()
            .map(|key| key.to_vec())
            .unwrap_or_default();
        let existed = self.speculate(&key, index)?.is_some();
        let answer = self
            .log
            .cached_entries()
            .find(|entry| entry.index == index)
            .and_then(|entry| match &entry.operation {
                Operation::Batch { answer, .. } => answer.clone(),
                _ => None,
            });
        let result = WriteResult {
            index,
            existed,
            answer,
        };
        self.wait_for(result, token, concern, deadline);
        Ok(())
    }

    /// When a request given `timeout_ms` by its client expires: the timeout is capped at
    /// [`MAX_REQUEST_TIMEOUT_MS`], so a waiter whose client went away is freed by then at the
    /// latest, and the sum cannot overflow.
    fn deadline_after(&self, timeout_ms: u64) -> Timestamp {
        self.now
            .saturating_add(timeout_ms.min(MAX_REQUEST_TIMEOUT_MS))
    }

    /// Makes `token` wait for the write at `result.index` to meet `concern`, as a fresh write
    /// would (a retry joins the first waiter's result, which is the real one once applied).
    fn wait_for(
        &mut self,
        result: WriteResult,
        token: ClientToken,
        concern: WriteConcern,
        deadline: Timestamp,
    ) {
        if let Some(state) = self.primary_state() {
            let waiters = state.writes.entry(result.index).or_default();
            let result = waiters.first().map_or(result, |w| w.result.clone());
            waiters.push(PendingWrite {
                token,
                concern,
                deadline,
                result,
            });
        }
        self.answer_writes();
    }

    /// Forgets the request `token` waits on, if any: its client went away, so nothing is owed.
    pub(super) fn forget_request(&mut self, token: ClientToken) {
        let Some(state) = self.primary_state() else {
            return;
        };
        state.writes.retain(|_, waiters| {
            waiters.retain(|waiter| waiter.token != token);
            !waiters.is_empty()
        });
        state.reads.retain(|read| read.token != token);
    }

    /// The pending writes, and what the primary knows now about who holds which entry: everything
    /// a write concern is judged on. `None` unless primary.
    fn pending_writes(
        &mut self,
    ) -> Option<(
        &mut BTreeMap<LogIndex, Vec<PendingWrite>>,
        Acknowledgements<'_>,
    )> {
        let RoleState::Primary(state) = &mut self.role else {
            return None;
        };
        let PrimaryState {
            writes, progress, ..
        } = &mut **state;
        let acknowledgements = Acknowledgements::new(
            &self.membership,
            self.id,
            self.log.durable_index(),
            self.applied_index,
            progress,
            self.now,
            self.options.replica_lag_timeout_ms,
        );
        Some((writes, acknowledgements))
    }

    /// Replies to every pending write whose write concern is met.
    pub(super) fn answer_writes(&mut self) {
        let meta = self.meta();
        let Some((writes, acknowledgements)) = self.pending_writes() else {
            return;
        };
        let mut done = Vec::new();
        for (&index, waiters) in writes.iter_mut() {
            waiters.retain(|waiter| {
                let met = acknowledgements.is_met(waiter.concern, index);
                if met {
                    done.push((waiter.token, waiter.result.clone()));
                }
                !met
            });
        }
        writes.retain(|_, waiters| !waiters.is_empty());
        for (token, result) in done {
            self.reply(token, Response::Written { result, meta });
        }
    }

    /// Fails writes and reads whose deadline passed.
    pub(super) fn expire_requests(&mut self) {
        let now = self.now;
        let Some((writes, acknowledgements)) = self.pending_writes() else {
            return;
        };
        let mut expired = Vec::new();
        for (&index, waiters) in writes.iter_mut() {
            waiters.retain(|waiter| {
                if waiter.deadline > now {
                    return true;
                }
                expired.push((
                    waiter.token,
                    Error::WriteConcernNotMet {
                        acknowledged: acknowledgements.acknowledged(index),
                        required: acknowledgements.required(waiter.concern),
                    },
                ));
                false
            });
        }
        writes.retain(|_, waiters| !waiters.is_empty());
        let mut reads_expired = Vec::new();
        if let Some(state) = self.primary_state() {
            state.reads.retain(|read| {
                if read.deadline > now {
                    return true;
                }
                reads_expired.push(read.token);
                false
            });
        }
        for (token, error) in expired {
            self.reply(token, Response::Error(error));
        }
        for token in reads_expired {
            let error = Error::Unavailable(
                "the primary could not confirm its leadership in time: retry".into(),
            );
            self.reply(token, Response::Error(error));
        }
    }

    // --- reads ---

    pub(super) fn read(
        &mut self,
        token: ClientToken,
        request: Request,
        consistency: ReadConsistency,
    ) -> Result<()> {
        match consistency {
            ReadConsistency::Stale => self.serve_read(token, &request),
            ReadConsistency::Local | ReadConsistency::Linearizable if !self.is_primary() => {
                let error = self.not_primary();
                self.reply(token, Response::Error(error));
                Ok(())
            }
            ReadConsistency::Local => self.serve_read(token, &request),
            ReadConsistency::Linearizable => {
                let deadline = self.deadline_after(self.options.failure_timeout_ms * 2);
                if let Some(state) = self.primary_state() {
                    state.reads.push(PendingRead {
                        token,
                        request,
                        deadline,
                    });
                }
                self.answer_reads()
            }
        }
    }

    /// Serves queued linearizable reads if the lease is valid and this epoch's no-op is applied
    /// (so the applied state holds every write acknowledged by any earlier primary).
    pub(super) fn answer_reads(&mut self) -> Result<()> {
        let now = self.now;
        let applied_index = self.applied_index;
        let Some(state) = self.primary_state() else {
            return Ok(());
        };
        if state.reads.is_empty() || now >= state.lease_until || applied_index < state.noop_index {
            return Ok(());
        }
        let reads = std::mem::take(&mut state.reads);
        for read in reads {
            self.serve_read(read.token, &read.request)?;
        }
        Ok(())
    }

    fn serve_read(&mut self, token: ClientToken, request: &Request) -> Result<()> {
        let meta = self.meta();
        let response = match request {
            Request::Get { key, .. } => {
                let versioned = self.storage.get_versioned(key)?;
                let expired = versioned.is_some() && self.expired_in_state(key)?;
                let versioned = versioned.filter(|_| !expired);
                Response::Value {
                    version: versioned.as_ref().map_or(0, |versioned| versioned.version),
                    value: versioned.map(|versioned| versioned.value),
                    meta,
                }
            }
            Request::GetExpiry { key, .. } => {
                let deadline = self
                    .storage
                    .get(&deadline_key(key))?
                    .as_deref()
                    .and_then(decode_deadline);
                let expired = deadline.is_some_and(|deadline| self.is_expired(deadline));
                let exists = !expired && self.storage.get(key)?.is_some();
                Response::Expiry {
                    exists,
                    deadline: deadline.filter(|_| exists),
                    meta,
                }
            }
            Request::Scan {
                prefix,
                start_after,
                limit,
                ..
            } => {
                // One bounded page: it is read here, inside the event loop, so its size bounds
                // the pause; the client asks for the next page after this one's last key.
                let max_pairs = (*limit).min(self.options.max_scan_page_pairs) as usize;
                let page = self.storage.scan_page(
                    prefix,
                    start_after.as_deref(),
                    max_pairs,
                    self.options.max_scan_page_bytes,
                )?;
                let mut pairs = Vec::with_capacity(page.pairs.len());
                for (key, versioned) in page.pairs {
                    if !self.expired_in_state(&key)? {
                        pairs.push((key, versioned.value));
                    }
                }
                Response::Pairs {
                    pairs,
                    more: page.more,
                    meta,
                }
            }
            Request::CountKeys { .. } => Response::KeyCount {
                count: self.storage.key_count()?,
                meta,
            },
            _ => Response::Error(Error::Internal("not a read".into())),
        };
        self.reply(token, response);
        Ok(())
    }
}

/// The log index of `request_id` if it is in the unapplied suffix (past `applied_index`), and the
/// newest sequence its client has there.
fn in_flight(
    requests: &BTreeMap<RequestId, LogIndex>,
    request_id: RequestId,
    applied_index: LogIndex,
) -> (Option<LogIndex>, Option<u64>) {
    let client = |sequence| RequestId {
        client_id: request_id.client_id,
        sequence,
    };
    let unapplied = |index: &LogIndex| *index > applied_index;
    let newest = requests
        .range(client(0)..=client(u64::MAX))
        .rev()
        .find(|(_, index)| unapplied(index))
        .map(|(id, _)| id.sequence);
    let existing = requests.get(&request_id).copied().filter(unapplied);
    (existing, newest)
}
