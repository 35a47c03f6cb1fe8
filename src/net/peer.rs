//! Connections between nodes: one outbound link per member, and the inbound side of the peer
//! port.
//!
//! Each direction of a pair of nodes is its own QUIC connection: node A dials B to send A→B
//! messages, B dials A for B→A. A link opens one long-lived unidirectional stream per
//! [`StreamKind`], each fed by its own bounded queue:
//!
//! - heartbeat: heartbeats, their acks and election messages (highest send priority);
//! - replication: live appends and their acks;
//! - resync: catch-up appends read from storage and snapshot chunks (lowest priority).
//!
//! So heartbeats and live replication never queue behind a resync transfer: not in the sender's
//! queues, not in QUIC (streams are independent, and quinn sends higher-priority streams first;
//! only the congestion window is shared), and not in the receiver's event loop, where resync
//! messages have an inbox of their own ([`PeerInboxes`]).
//!
//! Links follow the membership ([`PeerRouter::sync`]): the event loop starts a link to a member as
//! soon as the membership that adds it is known, and stops the links to members that left. The
//! link to the primary this node follows is kept even when the membership no longer counts it: a
//! primary that removed itself needs acks until that change is committed.
//!
//! Invariants:
//! - The event loop never waits on the network: it hands messages to bounded per-stream queues
//!   with `try_send`, and a full queue drops the message. The protocol tolerates loss (heartbeats
//!   repeat, appends are retransmitted), so dropping is safer than letting one slow peer stall the
//!   node.
//! - A link that fails drops what is queued (it was addressed to a dead connection and is stale by
//!   the time a new one is up) and redials with capped exponential backoff.
//! - Inbound, any `node` certificate of the cluster CA may connect, member or not: a joining
//!   node, or one that missed membership changes, must hear the primary that now counts it in.
//!   What to do with a message from a non-member is the core's decision (it only follows a
//!   primary's heartbeats and appends). Every message must claim to be `from` the id in the
//!   certificate: a node cannot speak for another.
//! - Bytes from a peer are untrusted: a frame that is too large or does not decode closes that
//!   stream only, and is logged; it never panics the node.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tracing::{debug, error, info, warn, Instrument};

use crate::certs::CertRole;
use crate::config::tuning::{
    LINK_SILENCE_MS, PEER_CONNECT_TIMEOUT_MS, PEER_HEARTBEAT_QUEUE_CAPACITY,
    PEER_REPLICATION_QUEUE_CAPACITY, PEER_RESYNC_QUEUE_CAPACITY, RECONNECT_BACKOFF_MAX_MS,
    RECONNECT_BACKOFF_MIN_MS,
};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, ToPeer};
use crate::net::shutdown::Shutdown;
use crate::net::{tls, CLOSE_PROTOCOL_ERROR, CLOSE_REFUSED, CLOSE_SHUTTING_DOWN};
use crate::wire::frame::{self, MAX_PEER_FRAME_BYTES};
use crate::wire::message::{Member, Membership, Message, NodeId, StreamKind};

/// The event loop's handle on the outbound links: routes each message to its peer's queue for
/// the message's stream, and starts or stops links as the membership changes.
pub(crate) struct PeerRouter {
    own_id: NodeId,
    endpoint: Endpoint,
    shutdown: Shutdown,
    links: HashMap<NodeId, LinkQueues>,
    /// Messages dropped because a queue was full or the peer unknown, over the node's lifetime,
    /// per peer and stream: which queue overflows is what a stalled link looks like from here
    /// (docs/CHAOS.md, "A backup that stopped catching up").
    dropped: BTreeMap<(NodeId, StreamKind), u64>,
    metrics: Arc<Metrics>,
}

/// The sending side of one link's queues. Dropping it closes the queues, which stops the task.
struct LinkQueues {
    peer_addr: String,
    activity: Arc<LinkActivity>,
    heartbeat: mpsc::Sender<Message>,
    replication: mpsc::Sender<Message>,
    resync: mpsc::Sender<Message>,
}

impl PeerRouter {
    /// A router with no links yet; call [`PeerRouter::sync`] with the membership. `endpoint` is
    /// the peer endpoint (its default client config dials peers), so outbound connections come
    /// from this node's peer address.
    pub(crate) fn new(
        own_id: NodeId,
        endpoint: Endpoint,
        shutdown: Shutdown,
        metrics: Arc<Metrics>,
    ) -> Self {
        PeerRouter {
            own_id,
            endpoint,
            shutdown,
            links: HashMap::new(),
            dropped: BTreeMap::new(),
            metrics,
        }
    }

    /// Starts a link to every other member that has none, and stops links to nodes that left or
    /// moved to another address, except the link to `primary`: a primary that removed itself
    /// (or one this node's membership does not count yet) still needs this node's acks until it
    /// has stepped down, or the change that removes it could never commit.
    pub(crate) fn sync(&mut self, membership: &Membership, primary: Option<NodeId>) {
        self.links.retain(|id, link| {
            let member = membership
                .get(*id)
                .is_some_and(|member| member.peer_addr == link.peer_addr);
            let keep = member || (Some(*id) == primary && membership.get(*id).is_none());
            if !keep {
                info!(peer = id, "stopping the link to a node that left or moved");
            }
            keep
        });
        for member in &membership.members {
            if member.id != self.own_id && !self.links.contains_key(&member.id) {
                let link = self.start_link(member.clone());
                self.links.insert(member.id, link);
            }
        }
    }

    fn start_link(&self, peer: Member) -> LinkQueues {
        info!(peer = peer.id, addr = %peer.peer_addr, voter = peer.voter, "starting a link to a member");
        let (heartbeat, heartbeat_queue) = mpsc::channel(PEER_HEARTBEAT_QUEUE_CAPACITY);
        let (replication, replication_queue) = mpsc::channel(PEER_REPLICATION_QUEUE_CAPACITY);
        let (resync, resync_queue) = mpsc::channel(PEER_RESYNC_QUEUE_CAPACITY);
        let peer_addr = peer.peer_addr.clone();
        let activity = Arc::new(LinkActivity::default());
        let link = Link {
            activity: activity.clone(),
            peer,
            endpoint: self.endpoint.clone(),
            heartbeat_queue,
            replication_queue,
            resync_queue,
            shutdown: self.shutdown.clone(),
            metrics: self.metrics.clone(),
        };
        tokio::spawn(link.run().in_current_span());
        LinkQueues {
            peer_addr,
            activity,
            heartbeat,
            replication,
            resync,
        }
    }

    /// Queues `message` for its peer without waiting; drops it if the queue is full.
    /// The event loop received a message from `peer` (over the peer's own link to this node).
    pub(crate) fn heard_from(&self, peer: NodeId) {
        if let Some(link) = self.links.get(&peer) {
            link.activity.unanswered_since.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn send(&mut self, message: Message) {
        let peer = message.to;
        let stream = message.body.stream();
        let Some(link) = self.links.get(&peer) else {
            self.count_drop(peer, stream, "no link to this node");
            return;
        };
        let queue = match stream {
            StreamKind::Heartbeat => &link.heartbeat,
            StreamKind::Replication => &link.replication,
            StreamKind::Resync => &link.resync,
        };
        if queue.try_send(message).is_err() {
            self.count_drop(peer, stream, "its outbound queue is full");
        }
    }

    fn count_drop(&mut self, peer: NodeId, stream: StreamKind, reason: &str) {
        let dropped = self.dropped.entry((peer, stream)).or_default();
        *dropped += 1;
        self.metrics
            .peer_sent_failures
            .get_or_create(&ToPeer { To: peer })
            .inc();
        // Logged at powers of two so a long outage does not flood the log.
        if dropped.is_power_of_two() {
            warn!(
                peer,
                ?stream,
                dropped_total = *dropped,
                "dropping a message: {reason}"
            );
        } else {
            debug!(
                peer,
                ?stream,
                dropped_total = *dropped,
                "dropping a message: {reason}"
            );
        }
    }
}

/// One outbound link: dials the peer, keeps one stream per kind, and writes queued messages.
struct Link {
    activity: Arc<LinkActivity>,
    peer: Member,
    endpoint: Endpoint,
    heartbeat_queue: mpsc::Receiver<Message>,
    replication_queue: mpsc::Receiver<Message>,
    resync_queue: mpsc::Receiver<Message>,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
}

/// Send priorities of the link's streams (quinn sends data of higher-priority streams first):
/// liveness before live replication before catch-up.
const HEARTBEAT_PRIORITY: i32 = 2;
const REPLICATION_PRIORITY: i32 = 1;
const RESYNC_PRIORITY: i32 = 0;

/// Why a connected link stopped.
enum LinkEnd {
    /// The router dropped the queues (the peer left) or the node is shutting down.
    Stopped,
    /// The peer shut down or restarted; redial. Expected, so not a warning.
    PeerWentAway(&'static str),
    /// The connection failed; redial.
    Failed(Error),
}

impl Link {
    async fn run(mut self) {
        let peer = self.peer.id;
        let min_backoff = Duration::from_millis(RECONNECT_BACKOFF_MIN_MS);
        let max_backoff = Duration::from_millis(RECONNECT_BACKOFF_MAX_MS);
        let mut backoff = min_backoff;
        // Whether the last attempt worked, so a peer that stays down is logged once, not per dial.
        let mut reachable = true;
        loop {
            let dialled = tokio::select! {
                dialled = dial(&self.endpoint, &self.peer) => dialled,
                _ = self.shutdown.requested() => return,
            };
            match dialled {
                Ok(connection) => {
                    info!(peer, addr = %self.peer.peer_addr, "connected to peer");
                    reachable = true;
                    backoff = min_backoff;
                    match self.pump(&connection).await {
                        LinkEnd::Stopped => {
                            connection.close(CLOSE_SHUTTING_DOWN, b"link closed");
                            return;
                        }
                        LinkEnd::PeerWentAway(why) => {
                            info!(peer, "peer {why}; redialling");
                            self.discard_queued();
                        }
                        LinkEnd::Failed(err) => {
                            warn!(peer, %err, "peer link failed; dropping its queued messages and redialling");
                            connection.close(CLOSE_SHUTTING_DOWN, b"link failed");
                            self.discard_queued();
                            // Already reported: the redials that follow are logged at debug.
                            reachable = false;
                        }
                    }
                }
                Err(err) if reachable => {
                    warn!(peer, addr = %self.peer.peer_addr, %err, "cannot reach peer; will keep trying");
                    reachable = false;
                }
                Err(err) => debug!(peer, %err, "peer still unreachable"),
            }
            if !self.back_off(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(max_backoff);
        }
    }

    /// Opens the three streams and forwards each queue to its stream until the connection fails
    /// or the link is stopped.
    async fn pump(&mut self, connection: &Connection) -> LinkEnd {
        let network =
            |err: &dyn std::fmt::Display| LinkEnd::Failed(Error::Network(format!("{err}")));
        let streams = tokio::try_join!(
            connection.open_uni(),
            connection.open_uni(),
            connection.open_uni()
        );
        let (heartbeat_stream, replication_stream, resync_stream) = match streams {
            Ok(streams) => streams,
            Err(err) => return network(&err),
        };
        for (stream, priority) in [
            (&heartbeat_stream, HEARTBEAT_PRIORITY),
            (&replication_stream, REPLICATION_PRIORITY),
            (&resync_stream, RESYNC_PRIORITY),
        ] {
            if let Err(err) = stream.set_priority(priority) {
                return network(&err);
            }
        }
        let peer = self.peer.id;
        let activity = &self.activity;
        let metrics = &self.metrics;
        tokio::select! {
            end = forward(heartbeat_stream, &mut self.heartbeat_queue, peer, activity, metrics) => end,
            end = forward(replication_stream, &mut self.replication_queue, peer, activity, metrics) => end,
            end = forward(resync_stream, &mut self.resync_queue, peer, activity, metrics) => end,
            end = watch_silence(activity) => end,
            never = sample_round_trips(connection, peer, metrics) => match never {},
            lost = connection.closed() => connection_lost(lost),
            _ = self.shutdown.requested() => LinkEnd::Stopped,
        }
    }

    /// Waits `delay` before the next dial, discarding messages meanwhile: the peer is known to be
    /// unreachable, so they would be stale by the time it is back. Returns false if the link
    /// should stop.
    async fn back_off(&mut self, delay: Duration) -> bool {
        let wake_at = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = sleep_until(wake_at) => return true,
                message = self.heartbeat_queue.recv() => if message.is_none() { return false },
                message = self.replication_queue.recv() => if message.is_none() { return false },
                message = self.resync_queue.recv() => if message.is_none() { return false },
                _ = self.shutdown.requested() => return false,
            }
        }
    }

    fn discard_queued(&mut self) {
        while self.heartbeat_queue.try_recv().is_ok() {}
        while self.replication_queue.try_recv().is_ok() {}
        while self.resync_queue.try_recv().is_ok() {}
    }
}

/// Samples the connection's round-trip time (QUIC's smoothed estimate, kept by quinn from every
/// acknowledgement) once a second, for `replikv_network_peer_round_trip_time_seconds`. Runs
/// until the link's other branches end it.
async fn sample_round_trips(
    connection: &Connection,
    peer: NodeId,
    metrics: &Metrics,
) -> std::convert::Infallible {
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    loop {
        every_second.tick().await;
        metrics.observe_peer_round_trip(peer, connection.rtt());
    }
}

/// Why the connection ended, as a [`LinkEnd`].
fn connection_lost(lost: quinn::ConnectionError) -> LinkEnd {
    match lost {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == CLOSE_SHUTTING_DOWN =>
        {
            LinkEnd::PeerWentAway("is shutting down")
        }
        // A stateless reset: a new process answers for the old one (see `net::endpoint`).
        quinn::ConnectionError::Reset => LinkEnd::PeerWentAway("restarted"),
        other => LinkEnd::Failed(Error::Network(other.to_string())),
    }
}

/// Dials the peer and checks that the certificate on the other end is that node's.
async fn dial(endpoint: &Endpoint, peer: &Member) -> Result<Connection> {
    let network = |err: &dyn std::fmt::Display| Error::Network(format!("{err}"));
    let addr = tokio::net::lookup_host(&peer.peer_addr)
        .await
        .map_err(|err| network(&err))?
        .next()
        .ok_or_else(|| Error::Network(format!("{} has no address", peer.peer_addr)))?;
    let server_name = tls::server_name(&peer.peer_addr)?;
    let connecting = endpoint
        .connect(addr, &server_name)
        .map_err(|err| network(&err))?;
    let connection = timeout(Duration::from_millis(PEER_CONNECT_TIMEOUT_MS), connecting)
        .await
        .map_err(|_| Error::Network("handshake timed out".into()))?
        .map_err(|err| tls::connection_error(&peer.peer_addr, &err))?;
    match tls::peer_role(&connection)? {
        CertRole::Node(id) if id == peer.id => Ok(connection),
        other => {
            connection.close(CLOSE_REFUSED, b"unexpected certificate");
            Err(Error::Refused(format!(
                "{} presented a certificate of {other}, expected node {}",
                peer.peer_addr, peer.id
            )))
        }
    }
}

/// Writes every message of `queue` to `stream` as a frame, until the queue closes (the link is
/// stopped) or a write fails (the connection is gone).
async fn forward(
    mut stream: SendStream,
    queue: &mut mpsc::Receiver<Message>,
    peer: NodeId,
    activity: &LinkActivity,
    metrics: &Metrics,
) -> LinkEnd {
    while let Some(message) = queue.recv().await {
        // Start the silence clock unless it already runs (an earlier send is unanswered).
        let _ = activity.unanswered_since.compare_exchange(
            0,
            clock_ms().max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let bytes = match frame::encode(&message, MAX_PEER_FRAME_BYTES) {
            Ok(bytes) => bytes,
            Err(err) => {
                // A message the node built but cannot frame: a bug (every message the core builds
                // is bounded to fit a frame), but not this link's fault. Said loudly, since a
                // protocol that resends it would otherwise retry forever in silence.
                error!(
                    peer,
                    %err,
                    kind = ?message.body.stream(),
                    "BUG: an outbound message exceeds the peer frame limit; dropping it"
                );
                continue;
            }
        };
        match stream.write_all(&bytes).await {
            Ok(()) => metrics.observe_peer_sent(peer, &message, bytes.len()),
            Err(quinn::WriteError::ConnectionLost(lost)) => return connection_lost(lost),
            Err(err) => return LinkEnd::Failed(Error::Network(err.to_string())),
        }
    }
    let _ = stream.finish();
    LinkEnd::Stopped
}

/// Since when (milliseconds on [`clock_ms`]'s clock) this link has sent without hearing anything
/// from its peer since; 0 when nothing is unanswered.
#[derive(Default)]
struct LinkActivity {
    unanswered_since: AtomicU64,
}

/// Milliseconds since the first call, on a monotonic clock shared by every link.
fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Ends a connection that looks alive to QUIC but over which nothing gets through: this node
/// keeps sending on it yet has heard nothing from the peer for [`LINK_SILENCE_MS`]. After a
/// partition heals, QUIC's loss-recovery backoff can leave such a connection dead for tens of
/// seconds; redialling restores the link at once. A quiet link (nothing sent) is left alone.
async fn watch_silence(activity: &LinkActivity) -> LinkEnd {
    // A new connection starts with a clean slate.
    activity.unanswered_since.store(0, Ordering::Relaxed);
    loop {
        sleep(Duration::from_millis(LINK_SILENCE_MS / 4)).await;
        let since = activity.unanswered_since.load(Ordering::Relaxed);
        let silent_for = clock_ms().saturating_sub(since);
        if since != 0 && silent_for > LINK_SILENCE_MS {
            return LinkEnd::Failed(Error::Network(format!(
                "sent to the peer but heard nothing back for {silent_for} ms"
            )));
        }
    }
}

/// Where inbound peer messages go: the event loop's inbox for live traffic (heartbeats,
/// elections, live replication), or its inbox for resync transfers, so that a member being
/// caught up never handles a heartbeat late because megabytes of catch-up are queued before it.
#[derive(Clone)]
pub(crate) struct PeerInboxes {
    pub(crate) live: mpsc::Sender<Message>,
    pub(crate) resync: mpsc::Sender<Message>,
}

impl PeerInboxes {
    /// The inbox for `message`. Every message of one stream has the same kind, so the order of
    /// each stream is kept.
    fn for_message(&self, message: &Message) -> &mpsc::Sender<Message> {
        match message.body.stream() {
            StreamKind::Heartbeat | StreamKind::Replication => &self.live,
            StreamKind::Resync => &self.resync,
        }
    }
}

/// Accepts connections on the peer port until shutdown. `membership` is only used to say, in the
/// log, that a connecting node is not a member (yet).
pub(crate) async fn accept_peers(
    endpoint: Endpoint,
    own_id: NodeId,
    membership: watch::Receiver<Membership>,
    peer_inboxes: PeerInboxes,
    metrics: Arc<Metrics>,
    mut shutdown: Shutdown,
) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = shutdown.requested() => return,
        };
        let Some(incoming) = incoming else {
            return; // the endpoint was closed
        };
        let inbound = Inbound {
            own_id,
            membership: membership.clone(),
            peer_inboxes: peer_inboxes.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        tokio::spawn(
            async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(connection) => inbound.serve(connection).await,
                    // Also seen when a starting peer abandons a slow dial; a bad certificate shows
                    // up as a warning on the dialling side.
                    Err(err) => info!(%remote, %err, "peer handshake failed"),
                }
            }
            .in_current_span(),
        );
    }
}

/// One inbound peer connection.
#[derive(Clone)]
struct Inbound {
    own_id: NodeId,
    membership: watch::Receiver<Membership>,
    peer_inboxes: PeerInboxes,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
}

impl Inbound {
    async fn serve(mut self, connection: Connection) {
        let remote = connection.remote_address();
        let peer = match self.authenticate(&connection) {
            Ok(peer) => peer,
            Err(err) => {
                warn!(%remote, %err, "refusing a peer connection");
                connection.close(CLOSE_REFUSED, err.to_string().as_bytes());
                return;
            }
        };
        if self.membership.borrow().get(peer).is_some() {
            debug!(peer, %remote, "peer connected");
        } else {
            // Expected while a node joins, or when this node missed membership changes; the core
            // decides whether to follow what it says.
            info!(peer, %remote, "a node that is not a member (as this node knows) connected");
        }
        loop {
            let stream = tokio::select! {
                stream = connection.accept_uni() => stream,
                _ = self.shutdown.requested() => return,
            };
            match stream {
                Ok(stream) => {
                    let reader = self.clone();
                    tokio::spawn(reader.read_stream(stream, peer).in_current_span());
                }
                Err(err) => {
                    debug!(peer, %err, "peer connection closed");
                    return;
                }
            }
        }
    }

    /// The peer's node id, if it presented a node certificate (the handshake already checked it
    /// is signed by the cluster CA) other than this node's own.
    fn authenticate(&self, connection: &Connection) -> Result<NodeId> {
        authenticate_peer(tls::peer_role(connection)?, self.own_id)
    }

    /// Reads messages from one stream into the event loop until the stream ends or breaks.
    async fn read_stream(mut self, mut stream: RecvStream, peer: NodeId) {
        loop {
            let frame = tokio::select! {
                frame = read_message(&mut stream) => frame,
                _ = self.shutdown.requested() => return,
            };
            let message = match frame {
                Ok(Some((message, bytes))) => {
                    self.metrics.observe_peer_received(peer, &message, bytes);
                    message
                }
                Ok(None) => return,
                Err(err @ Error::Protocol(_)) => {
                    warn!(peer, %err, "closing a peer stream that sent a bad frame");
                    let _ = stream.stop(CLOSE_PROTOCOL_ERROR);
                    return;
                }
                Err(err) => {
                    debug!(peer, %err, "peer stream ended");
                    return;
                }
            };
            if message.from != peer {
                warn!(
                    peer,
                    claimed = message.from,
                    "dropping a message whose sender is not the certificate's node"
                );
                continue;
            }
            if message.to != self.own_id {
                debug!(
                    peer,
                    to = message.to,
                    "dropping a message addressed to another node"
                );
                continue;
            }
            if self
                .peer_inboxes
                .for_message(&message)
                .send(message)
                .await
                .is_err()
            {
                return; // the event loop has stopped
            }
        }
    }
}

/// Reads one message frame, with its framed size. `Ok(None)` when the stream ended cleanly.
async fn read_message(stream: &mut RecvStream) -> Result<Option<(Message, usize)>> {
    let Some(len) = frame::read_length(stream).await? else {
        return Ok(None);
    };
    frame::check_length(len, MAX_PEER_FRAME_BYTES)?;
    let message = frame::read_body(stream, len).await?;
    // The length prefix is part of what crossed the network.
    Ok(Some((message, len + 4)))
}

/// Who may use the peer port: any node of the cluster CA but this one. Membership is not checked
/// here, on purpose (see the module docs).
fn authenticate_peer(role: CertRole, own_id: NodeId) -> Result<NodeId> {
    match role {
        CertRole::Node(id) if id == own_id => Err(Error::Refused(format!(
            "the certificate is this node's own (node {id})"
        ))),
        CertRole::Node(id) => Ok(id),
        role => Err(Error::Refused(format!(
            "certificate role {role} may not use the peer port: only node certificates may"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::MessageBody;

    #[test]
    fn any_other_node_may_connect_but_no_client() {
        assert_eq!(authenticate_peer(CertRole::Node(9), 1), Ok(9));
        assert!(matches!(
            authenticate_peer(CertRole::Node(1), 1),
            Err(Error::Refused(_))
        ));
        for role in [CertRole::Admin, CertRole::ReadWrite, CertRole::ReadOnly] {
            match authenticate_peer(role, 1) {
                Err(Error::Refused(message)) => {
                    assert!(message.contains("only node certificates"), "{message}")
                }
                other => panic!("{role} on the peer port: expected a refusal, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn resync_traffic_has_an_inbox_of_its_own() {
        let (live, mut live_inbox) = mpsc::channel(4);
        let (resync, mut resync_inbox) = mpsc::channel(4);
        let inboxes = PeerInboxes { live, resync };
        let message = |body| Message {
            from: 1,
            to: 2,
            epoch: 1,
            body,
        };
        let catch_up = message(MessageBody::Append {
            base_index: 0,
            base_epoch: 0,
            entries: Vec::new(),
            commit_index: 0,
            catch_up: true,
        });
        let live_append = message(MessageBody::Append {
            base_index: 0,
            base_epoch: 0,
            entries: Vec::new(),
            commit_index: 0,
            catch_up: false,
        });
        let heartbeat = message(MessageBody::Coordinator);
        for sent in [&catch_up, &live_append, &heartbeat] {
            inboxes.for_message(sent).send(sent.clone()).await.unwrap();
        }
        assert_eq!(resync_inbox.try_recv().ok(), Some(catch_up));
        assert!(resync_inbox.try_recv().is_err());
        assert_eq!(live_inbox.try_recv().ok(), Some(live_append));
        assert_eq!(live_inbox.try_recv().ok(), Some(heartbeat));
    }
}
