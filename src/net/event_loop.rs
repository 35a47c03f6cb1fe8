//! The one task that owns [`Node`]: it turns network events, timer ticks and flush completions
//! into calls on the state machine, and the state machine's outputs into I/O.
//!
//! One pass of the loop: wait for *one* wakeup (an event, a tick, a finished flush, shutdown),
//! then drain whatever else is already queued without waiting, so a burst of requests or acks is
//! handled as one batch; then start a flush if the node needs one and none is running, and
//! dispatch the outputs. Batching is what makes group commit work: every write appended during a
//! flush is covered by the next one, so there is one fsync per batch, not per write.
//!
//! Invariants:
//! - Only this task calls the `Node`, so the protocol needs no locks.
//! - At most one flush runs at a time, on the blocking pool; the node learns of it only once it
//!   has finished, so nothing that promises durability is sent before the fsync that covers it.
//! - An error whose kind [stops the node](crate::error::ErrorKind::stops_the_node) is fatal (fail-stop): a
//!   storage failure or a broken protocol invariant stops the loop, and the node exits non-zero
//!   with the reason rather than keep serving from a state it can no longer trust.
//! - Every client request gets exactly one answer: the node's reply, or `ShuttingDown` when the
//!   loop stops first; unless its client went away, and then the node is told to forget it
//!   ([`Node::cancel`]) so it holds nothing for a client that is gone.
//! - Peer links follow the membership: a membership that adds a member starts its link before
//!   any message to it is dispatched (a joiner's first ack goes to a primary it did not know a
//!   moment before), and one that removes a member stops its link.
//! - Resync messages (catch-up appends, snapshot chunks) come through an inbox of their own and
//!   only a few are taken per pass, so heartbeats and live appends are never handled late
//!   because a transfer is queued before them.
//! - Metrics only observe: after each pass the loop publishes the node's view ([`NodeView`]) and
//!   records it in [`Metrics`], times flushes and the calls that applied entries, and counts
//!   writes answered with an error; nothing it records feeds back into the node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{debug, error, info, warn};

use crate::config::tuning::{
    MAX_EVENTS_PER_BATCH, MAX_RESYNC_EVENTS_PER_BATCH, SLOW_PASS_WARNING_MS, TICK_INTERVAL_MS,
};
use crate::core::{ClientToken, FlushTicket, Node, Output, Timestamp};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, NodeView};
use crate::net::peer::PeerRouter;
use crate::net::shutdown::Shutdown;
use crate::wire::client::{Request, Response, Topology};
use crate::wire::message::{LogIndex, Membership, Message, NodeId, StreamKind};

/// How often requests whose client went away are forgotten, and the status metrics (member lag,
/// log size) refreshed, in ticks.
const PRUNE_EVERY_TICKS: u64 = 10;

/// A client request the session is allowed to make, and where its answer goes.
#[derive(Debug)]
pub(crate) struct ClientRequest {
    pub(crate) request: Request,
    pub(crate) reply: oneshot::Sender<Response>,
}

/// The loop's inboxes. Peer messages (already authenticated: `from` matches the certificate)
/// have their own, so heartbeats and votes never queue behind a flood of client requests; resync
/// transfers from peers have a third, so they never delay either.
pub(crate) struct Inboxes {
    pub(crate) peers: mpsc::Receiver<Message>,
    pub(crate) resync: mpsc::Receiver<Message>,
    pub(crate) clients: mpsc::Receiver<ClientRequest>,
}

/// The driver's monotonic clock: milliseconds since the node started.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    start: Instant,
}

impl Clock {
    pub(crate) fn start() -> Self {
        Clock {
            start: Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> Timestamp {
        millis(self.start.elapsed())
    }
}

/// The wall clock in milliseconds since the Unix epoch (0 if the clock is before it), which key
/// deadlines are judged against.
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, millis)
}

/// Channels through which the loop publishes what the network tasks need to know.
pub(crate) struct Published {
    /// The membership, so the peer port can say in its log when a non-member connects.
    pub(crate) membership: watch::Sender<Membership>,
    /// The latest topology, pushed to connected clients.
    pub(crate) topology: watch::Sender<Option<Topology>>,
    /// The node's own view after each pass (health endpoints, metrics).
    pub(crate) view: watch::Sender<NodeView>,
}

/// A reply owed to a client, and whether its request was a write (for the failed-proposals
/// count).
#[derive(Debug)]
struct PendingReply {
    reply: oneshot::Sender<Response>,
    write: bool,
}

/// A flush running on the blocking pool.
struct InflightFlush {
    ticket: FlushTicket,
    task: JoinHandle<Result<()>>,
}

pub(crate) struct EventLoop {
    node: Node,
    clock: Clock,
    inboxes: Inboxes,
    peers: PeerRouter,
    published: Published,
    /// Replies owed to clients, by the token the node was given.
    pending: HashMap<ClientToken, PendingReply>,
    next_token: ClientToken,
    flush: Option<InflightFlush>,
    ticks: u64,
    /// The primary the links were last synced for (see [`PeerRouter::sync`]).
    synced_primary: Option<NodeId>,
    metrics: Arc<Metrics>,
    /// The last primary this node knew of, to count primary changes.
    last_primary: Option<NodeId>,
    /// Where the current pass spends its time.
    pass: PassProfile,
}

impl EventLoop {
    pub(crate) fn new(
        node: Node,
        clock: Clock,
        inboxes: Inboxes,
        mut peers: PeerRouter,
        published: Published,
        metrics: Arc<Metrics>,
    ) -> Self {
        let node_primary = node.primary();
        peers.sync(node.membership(), node_primary);
        published.membership.send_replace(node.membership().clone());
        let pass = PassProfile::start(&node);
        EventLoop {
            node,
            clock,
            inboxes,
            peers,
            published,
            pending: HashMap::new(),
            next_token: 1,
            flush: None,
            ticks: 0,
            synced_primary: node_primary,
            metrics,
            last_primary: None,
            pass,
        }
    }

    /// Runs until shutdown or a fatal storage error, then flushes and answers what is pending.
    pub(crate) async fn run(mut self, mut shutdown: Shutdown) -> Result<()> {
        let served = self.serve(&mut shutdown).await;
        let closed = self.close().await;
        served.and(closed)
    }

    async fn serve(&mut self, shutdown: &mut Shutdown) -> Result<()> {
        let mut ticker = tokio::time::interval(Duration::from_millis(TICK_INTERVAL_MS));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                _ = shutdown.requested() => return Ok(()),
                (ticket, outcome) = flush_finished(&mut self.flush) => Event::Flushed(ticket, outcome),
                // `None` (every sender gone) disables the branch; shutdown ends the loop.
                Some(message) = self.inboxes.peers.recv() => Event::Peer(message),
                Some(message) = self.inboxes.resync.recv() => Event::Peer(message),
                Some(request) = self.inboxes.clients.recv() => Event::Client(request),
                _ = ticker.tick() => Event::Tick,
            };
            self.pass = PassProfile::start(&self.node);
            match event {
                Event::Flushed(ticket, outcome) => self.on_flushed(ticket, outcome)?,
                Event::Peer(message) => self.on_peer_message(message)?,
                Event::Client(request) => self.on_request(request)?,
                Event::Tick => self.on_tick()?,
            }
            // Batch: take everything that queued up meanwhile before producing outputs.
            for _ in 0..MAX_EVENTS_PER_BATCH {
                match self.inboxes.peers.try_recv() {
                    Ok(message) => self.on_peer_message(message)?,
                    Err(_) => break,
                }
            }
            for _ in 0..MAX_RESYNC_EVENTS_PER_BATCH {
                match self.inboxes.resync.try_recv() {
                    Ok(message) => self.on_peer_message(message)?,
                    Err(_) => break,
                }
            }
            for _ in 0..MAX_EVENTS_PER_BATCH {
                match self.inboxes.clients.try_recv() {
                    Ok(request) => self.on_request(request)?,
                    Err(_) => break,
                }
            }
            // The pass writes its entries to storage as it finishes; the flush then covers them.
            self.dispatch_outputs()?;
            self.start_flush();
            self.observe();
            self.pass.warn_if_slow(&self.node);
        }
    }

    /// The node's view after a pass: published for the health endpoints, recorded in the metrics.
    fn observe(&mut self) {
        let view = NodeView::of(&self.node);
        if view.primary.is_some() && view.primary != self.last_primary {
            self.metrics.primary_changes_seen.inc();
        }
        if view.primary.is_some() {
            self.last_primary = view.primary;
        }
        self.metrics.observe_node(&view);
        self.published.view.send_if_modified(|published| {
            let changed = *published != view;
            *published = view;
            changed
        });
    }

    /// Runs one call into the node, timing it as an apply if it applied entries, and in the
    /// pass's profile as a call of `kind`.
    fn applying<T>(&mut self, kind: CallKind, call: impl FnOnce(&mut Node) -> T) -> T {
        let applied_before = self.node.applied_index();
        self.node.set_wall_clock(unix_millis());
        let started = Instant::now();
        let result = call(&mut self.node);
        let elapsed = started.elapsed();
        if self.node.applied_index() > applied_before {
            self.metrics.apply_duration.observe(elapsed.as_secs_f64());
        }
        self.pass.record(kind, elapsed);
        result
    }

    fn on_peer_message(&mut self, message: Message) -> Result<()> {
        let now = self.clock.now();
        self.peers.heard_from(message.from);
        let kind = CallKind::Peer(message.body.stream());
        let stepped = self.applying(kind, |node| node.step(now, message));
        fail_stop(stepped, "handling a peer message")
    }

    fn on_request(&mut self, ClientRequest { request, reply }: ClientRequest) -> Result<()> {
        let token = self.next_token;
        self.next_token += 1;
        let write = matches!(request, Request::Write { .. });
        self.pending.insert(token, PendingReply { reply, write });
        let now = self.clock.now();
        match self.applying(CallKind::Client, |node| node.request(now, token, request)) {
            Ok(()) => Ok(()),
            Err(err) if err.kind().stops_the_node() => {
                fail_stop(Err(err), "handling a client request")
            }
            Err(err) => {
                // Not fatal: the request itself was at fault; tell the client.
                self.reply(token, Response::Error(err));
                Ok(())
            }
        }
    }

    fn on_tick(&mut self) -> Result<()> {
        self.ticks += 1;
        if self.ticks % PRUNE_EVERY_TICKS == 0 {
            // A session that gave up (client gone) needs neither its reply slot nor its waiter.
            let abandoned = take_abandoned(&mut self.pending);
            if !abandoned.is_empty() {
                info!(
                    forgotten = abandoned.len(),
                    pending = self.pending.len(),
                    "forgot requests whose clients went away"
                );
            }
            for token in abandoned {
                self.node.cancel(token);
            }
            self.observe_status();
        }
        let now = self.clock.now();
        let ticked = self.applying(CallKind::Tick, |node| node.tick(now));
        fail_stop(ticked, "ticking")
    }

    /// The metrics that need the node's status or a storage read, refreshed every few ticks
    /// rather than every pass.
    fn observe_status(&mut self) {
        self.metrics
            .observe_status(&self.node.status(self.clock.now()));
        if let Ok(bytes) = self.node.storage().log_bytes() {
            self.metrics
                .log_size_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// Sends `response` to the client waiting for `token`, if it is still there, and counts a
    /// write answered with an error.
    fn reply(&mut self, token: ClientToken, response: Response) {
        // The session may have gone away meanwhile; then nobody is waiting.
        let Some(PendingReply { reply, write }) = self.pending.remove(&token) else {
            debug!(token, "reply for a request nobody waits for");
            return;
        };
        if write && matches!(response, Response::Error(_)) {
            self.metrics.proposals_failed.inc();
        }
        let _ = reply.send(response);
    }

    fn on_flushed(&mut self, ticket: FlushTicket, outcome: Result<()>) -> Result<()> {
        fail_stop(outcome, "flushing storage")?;
        let now = self.clock.now();
        let recorded = self.applying(CallKind::Flushed, |node| node.flushed(now, ticket));
        fail_stop(recorded, "recording a flush")
    }

    /// Group commit: one flush covers every write made before it starts.
    fn start_flush(&mut self) {
        if self.flush.is_some() {
            return;
        }
        let Some(ticket) = self.node.flush_needed() else {
            return;
        };
        let storage = Arc::clone(self.node.storage());
        let fsync_duration = self.metrics.wal_fsync_duration.clone();
        let task = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let flushed = storage.flush();
            fsync_duration.observe(started.elapsed().as_secs_f64());
            flushed
        });
        self.flush = Some(InflightFlush { ticket, task });
    }

    /// Ends the node's pass (its one apply of what the pass committed) and sends its outputs.
    fn dispatch_outputs(&mut self) -> Result<()> {
        let outputs = match self.applying(CallKind::FinishPass, Node::finish_pass) {
            Ok(outputs) => outputs,
            // Not fatal: the outputs stay with the node and go out after the next pass.
            Err(err) => return fail_stop(Err(err), "finishing a pass"),
        };
        for output in outputs {
            match output {
                Output::Send(message) => self.peers.send(message),
                Output::Reply { token, response } => self.reply(token, response),
                Output::Topology {
                    epoch,
                    primary,
                    membership,
                } => {
                    info!(epoch, primary = ?primary, "topology changed; telling connected clients");
                    // Before the sends that follow: they may be addressed to a new member.
                    self.follow_membership(&membership, primary);
                    self.published.topology.send_replace(Some(Topology {
                        epoch,
                        primary,
                        members: membership.members,
                    }));
                }
            }
        }
        // Every membership change comes with a topology output; this only guards against one
        // that did not, so links never stay out of step with the node.
        let membership = self.node.membership().clone();
        self.follow_membership(&membership, self.node.primary());
        Ok(())
    }

    /// Starts links to new members and stops those to members that left (keeping the one to the
    /// primary), and publishes the membership (for the peer port's logs).
    fn follow_membership(&mut self, membership: &Membership, primary: Option<NodeId>) {
        let changed = *self.published.membership.borrow() != *membership;
        if !changed && self.synced_primary == primary {
            return;
        }
        if changed {
            info!(
                members = ?membership.members.iter().map(|m| (m.id, m.voter)).collect::<Vec<_>>(),
                "membership changed; updating peer links"
            );
            self.published.membership.send_replace(membership.clone());
        }
        self.peers.sync(membership, primary);
        self.synced_primary = primary;
    }

    /// Shutdown: finish the running flush, flush whatever is still buffered, send the replies that
    /// made durable, and answer every other pending request with `ShuttingDown`.
    async fn close(&mut self) -> Result<()> {
        let mut result = Ok(());
        if self.flush.is_some() {
            let (ticket, outcome) = flush_finished(&mut self.flush).await;
            result = self.on_flushed(ticket, outcome);
        }
        if result.is_ok() {
            // Ends the last pass, which writes its entries to storage, so the flush covers them.
            result = self.dispatch_outputs();
        }
        if result.is_ok() {
            let ticket = self.node.flush_needed();
            let storage = Arc::clone(self.node.storage());
            let outcome = join_flush(tokio::task::spawn_blocking(move || storage.flush())).await;
            result = match (outcome, ticket) {
                (Ok(()), Some(ticket)) => self.on_flushed(ticket, Ok(())),
                (outcome, _) => fail_stop(outcome, "flushing storage at shutdown"),
            };
        }
        let dispatched = self.dispatch_outputs();
        result = result.and(dispatched);
        for (_, pending) in self.pending.drain() {
            let _ = pending.reply.send(Response::Error(Error::ShuttingDown));
        }
        if result.is_ok() {
            info!("storage flushed; event loop stopped");
        }
        result
    }
}

/// Resolves when the running flush finishes (never, if none runs). Cancel-safe: the flush stays
/// in `flush` until it has been reported.
async fn flush_finished(flush: &mut Option<InflightFlush>) -> (FlushTicket, Result<()>) {
    let Some(inflight) = flush.as_mut() else {
        return std::future::pending().await;
    };
    let outcome = join_flush(&mut inflight.task).await;
    let ticket = inflight.ticket;
    *flush = None;
    (ticket, outcome)
}

async fn join_flush(
    task: impl std::future::Future<Output = std::result::Result<Result<()>, tokio::task::JoinError>>,
) -> Result<()> {
    task.await
        .unwrap_or_else(|err| Err(Error::Storage(format!("the flush task failed: {err}"))))
}

/// Removes the reply slots whose client went away, and returns their tokens.
fn take_abandoned(pending: &mut HashMap<ClientToken, PendingReply>) -> Vec<ClientToken> {
    let abandoned: Vec<ClientToken> = pending
        .iter()
        .filter(|(_, pending)| pending.reply.is_closed())
        .map(|(&token, _)| token)
        .collect();
    for token in &abandoned {
        pending.remove(token);
    }
    abandoned
}

/// An error whose kind stops the node (a storage failure, a broken invariant) is returned, which
/// ends the loop (fail-stop); anything else is one input's fault, logged.
fn fail_stop(result: Result<()>, doing: &str) -> Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(err) if err.kind().stops_the_node() => {
            error!(%err, kind = %err.kind(), "fatal error while {doing}; stopping the node");
            Err(err)
        }
        Err(err) => {
            warn!(%err, "error while {doing}");
            Ok(())
        }
    }
}

/// What woke the event loop: the first event of a pass.
enum Event {
    Flushed(FlushTicket, Result<()>),
    Peer(Message),
    Client(ClientRequest),
    Tick,
}

/// What a call into the node was, for the pass profile.
#[derive(Clone, Copy, Debug)]
enum CallKind {
    /// `Node::step`, with the stream the message came on.
    Peer(StreamKind),
    Client,
    Tick,
    Flushed,
    FinishPass,
}

impl CallKind {
    /// Every kind, in slot order.
    const ALL: [CallKind; 7] = [
        CallKind::Peer(StreamKind::Heartbeat),
        CallKind::Peer(StreamKind::Replication),
        CallKind::Peer(StreamKind::Resync),
        CallKind::Client,
        CallKind::Tick,
        CallKind::Flushed,
        CallKind::FinishPass,
    ];
    const COUNT: usize = CallKind::ALL.len();

    fn slot(self) -> usize {
        match self {
            CallKind::Peer(StreamKind::Heartbeat) => 0,
            CallKind::Peer(StreamKind::Replication) => 1,
            CallKind::Peer(StreamKind::Resync) => 2,
            CallKind::Client => 3,
            CallKind::Tick => 4,
            CallKind::Flushed => 5,
            CallKind::FinishPass => 6,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CallKind::Peer(StreamKind::Heartbeat) => "heartbeat",
            CallKind::Peer(StreamKind::Replication) => "replication",
            CallKind::Peer(StreamKind::Resync) => "resync",
            CallKind::Client => "client",
            CallKind::Tick => "tick",
            CallKind::Flushed => "flushed",
            CallKind::FinishPass => "finish_pass",
        }
    }
}

/// Where one pass of the event loop spent its time, by kind of call into the node, and how far
/// the node's log moved: read only when the pass ran long, to say what made it slow.
#[derive(Debug)]
struct PassProfile {
    started: Instant,
    calls: [(u32, Duration); CallKind::COUNT],
    last_index: LogIndex,
    applied_index: LogIndex,
}

impl PassProfile {
    fn start(node: &Node) -> Self {
        PassProfile {
            started: Instant::now(),
            calls: [(0, Duration::ZERO); CallKind::COUNT],
            last_index: node.last_index(),
            applied_index: node.applied_index(),
        }
    }

    fn record(&mut self, kind: CallKind, elapsed: Duration) {
        let (count, total) = &mut self.calls[kind.slot()];
        *count += 1;
        *total += elapsed;
    }

    /// Warns when the pass (its first event, the batch after it, and its outputs) ran longer
    /// than [`SLOW_PASS_WARNING_MS`]: meanwhile the node answered no peer, so its primary may have
    /// seemed silent, and its inbound streams pushed back on their senders. The warning says
    /// which calls took the time (`kind count×milliseconds`), and how many entries the pass
    /// appended (net of any truncation) and applied.
    fn warn_if_slow(&self, node: &Node) {
        let elapsed = self.started.elapsed();
        if elapsed < Duration::from_millis(SLOW_PASS_WARNING_MS) {
            return;
        }
        let calls: Vec<String> = CallKind::ALL
            .iter()
            .map(|kind| (kind, self.calls[kind.slot()]))
            .filter(|(_, (count, _))| *count > 0)
            .map(|(kind, (count, total))| {
                format!("{} {count}×{}ms", kind.name(), total.as_millis())
            })
            .collect();
        let in_node: Duration = self.calls.iter().map(|(_, total)| *total).sum();
        warn!(
            elapsed_ms = millis(elapsed),
            outside_node_ms = millis(elapsed.saturating_sub(in_node)),
            calls = %calls.join(", "),
            appended = i128::from(node.last_index()) - i128::from(self.last_index),
            applied = node.applied_index().saturating_sub(self.applied_index),
            "an event-loop pass ran long; the node answered no peer meanwhile"
        );
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_failures_and_broken_invariants_stop_the_node_and_nothing_else_does() {
        let invariant = Error::Internal("node 1 is primary of epoch 2 and heard from 3".into());
        assert_eq!(fail_stop(Err(invariant.clone()), "testing"), Err(invariant));
        let storage = Error::Storage("disk full".into());
        assert_eq!(fail_stop(Err(storage.clone()), "testing"), Err(storage));
        for harmless in [
            Error::InvalidRequest("empty key".into()),
            Error::Protocol("bad frame".into()),
            Error::Unavailable("no majority".into()),
        ] {
            assert_eq!(fail_stop(Err(harmless), "testing"), Ok(()));
        }
    }

    #[test]
    fn a_request_whose_client_went_away_is_taken_out_of_the_pending_replies() {
        let mut pending = HashMap::new();
        let (gone, gone_receiver) = oneshot::channel();
        let (waiting, _waiting_receiver) = oneshot::channel();
        pending.insert(
            1,
            PendingReply {
                reply: gone,
                write: false,
            },
        );
        pending.insert(
            2,
            PendingReply {
                reply: waiting,
                write: true,
            },
        );
        drop(gone_receiver);
        assert_eq!(take_abandoned(&mut pending), vec![1]);
        assert_eq!(pending.keys().copied().collect::<Vec<_>>(), vec![2]);
    }
}
