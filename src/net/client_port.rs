//! The client port, the QUIC door: frames in, the service, frames out.
//!
//! A client connection may carry many sessions, one per bidirectional stream. A session reads a
//! [`Request`] frame, hands it to the [`Service`] with the role of the connection's certificate
//! (the service authorizes it and asks the event loop), and writes the [`Response`] frame; then
//! the next request. Besides the sessions, each connection gets [`Topology`] frames pushed on
//! server-initiated unidirectional streams whenever the node learns of a new primary.
//!
//! Invariants:
//! - The role comes from the verified certificate, once per connection; the service decides per
//!   request what the role allows (see [`crate::api::service`]). This door never forwards: a
//!   backup answers `NotPrimary` with the primary's address, and the client library follows it.
//! - Client bytes are untrusted: a frame that is too large or does not decode is answered with a
//!   protocol error and closes that stream only; the node keeps serving everyone else.
//! - What a client can make the node hold is bounded before anything is allocated: the frame limit
//!   follows the certificate's role (a read-only client sends reads, so small frames); a frame's
//!   body is read only once its bytes are reserved ([`RequestBudget`]) and must arrive within
//!   [`FRAME_BODY_DEADLINE`]; and the node accepts at most [`MAX_CLIENT_CONNECTIONS`] client
//!   connections at once, each with at most [`CONNECTION_RECEIVE_WINDOW`] bytes unread in its
//!   receive buffers. Bytes are reserved from the connection's own small allowance
//!   ([`CONNECTION_RESERVED_REQUEST_BYTES`]), or else from the node-wide budget
//!   ([`MAX_BUFFERED_REQUEST_BYTES`]), of which one connection holds at most
//!   [`CONNECTION_REQUEST_SHARE`]. So request bytes held by the node are at most the budget plus
//!   connections × (window + allowance), whatever the clients send.
//! - One connection cannot starve the others: it holds at most its share of the budget, and a
//!   small request (any read, a small write) uses its own connection's allowance, so it never
//!   waits behind other connections' large frames.
//! - Every request read gets exactly one response frame (the event loop guarantees an answer, if
//!   only `ShuttingDown`), unless the client stops the stream first: then the session drops the
//!   answer's receiver, and the event loop has the node forget the request.

use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::sync::{watch, Semaphore, SemaphorePermit};
use tracing::{debug, info, warn, Instrument};

use crate::api::service::{Caller, Forwarding, Service};
use crate::api::watch::Watcher;
use crate::certs::CertRole;
use crate::config::tuning::WATCH_WRITE_BYTES;
use crate::error::{Error, Result};
use crate::net::shutdown::Shutdown;
use crate::net::tls;
use crate::net::{CLOSE_PROTOCOL_ERROR, CLOSE_REFUSED, WATCH_LAGGING_CODE};
use crate::wire::client::{Request, Response, Topology, WatchEvent};
use crate::wire::frame::{self, MAX_CLIENT_FRAME_BYTES, MAX_READ_REQUEST_BYTES};

/// Request bytes the node buffers at once from the node-wide budget, over every client stream: a
/// frame's body is read only once its length fits in this budget (or in its connection's own
/// allowance), so clients that announce large frames and stall cannot grow the node's memory past
/// it.
pub const MAX_BUFFERED_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// The most of [`MAX_BUFFERED_REQUEST_BYTES`] one connection holds at once: two frames of the
/// largest size, an eighth of the budget, so it takes eight connections stalling frames to hold
/// the whole budget.
pub const CONNECTION_REQUEST_SHARE: usize = 2 * MAX_CLIENT_FRAME_BYTES;

/// Request bytes each connection has of its own, outside the node-wide budget: enough for any
/// read request, so small requests are served even while other connections hold the budget.
pub const CONNECTION_RESERVED_REQUEST_BYTES: usize = MAX_READ_REQUEST_BYTES;

/// Once a frame's length has arrived, its body must arrive within this long, or the stream is
/// closed and its budget returned.
pub const FRAME_BODY_DEADLINE: Duration = Duration::from_secs(10);

/// Client connections a node serves at once; more are refused until some close.
pub const MAX_CLIENT_CONNECTIONS: usize = 1024;

/// Bytes a client may have in flight on one connection, over all its streams, before it must
/// wait for the node to read (QUIC connection-level flow control). Frames still flow whole, since
/// the window slides as the node reads; but a client cannot park more than this in the node's
/// receive buffers, where the byte budget does not reach.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 4 * 1024 * 1024;

/// The client port's transport settings: the shared ones ([`tls::transport_config`]) with the
/// connection-level receive window bounded. Peer connections keep the default, since there a
/// bounded connection window would let a busy replication stream hold back heartbeats.
pub fn transport_config() -> quinn::TransportConfig {
    let mut transport = tls::transport_config();
    transport.receive_window(quinn::VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    transport
}

/// Accepts client connections until shutdown.
pub(crate) async fn accept_clients(
    endpoint: Endpoint,
    service: Service,
    topology: watch::Receiver<Option<Topology>>,
    mut shutdown: Shutdown,
) {
    let node_budget = Arc::new(Semaphore::new(MAX_BUFFERED_REQUEST_BYTES));
    let connections = Arc::new(Semaphore::new(MAX_CLIENT_CONNECTIONS));
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = shutdown.requested() => return,
        };
        let Some(incoming) = incoming else {
            return; // the endpoint was closed
        };
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            warn!(
                remote = %incoming.remote_address(),
                "refusing a client connection: {MAX_CLIENT_CONNECTIONS} are open already"
            );
            incoming.refuse();
            continue;
        };
        let client = ClientConnection {
            service: service.clone(),
            topology: topology.clone(),
            shutdown: shutdown.clone(),
            budget: RequestBudget::for_connection(&node_budget),
        };
        tokio::spawn(
            async move {
                let _slot = slot; // held for as long as the connection is served
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(connection) => client.serve(connection).await,
                    // Wrong CA, no certificate, wrong ALPN: the TLS alert already told the client.
                    Err(err) => info!(%remote, %err, "client handshake failed"),
                }
            }
            .in_current_span(),
        );
    }
}

/// What every task of one client connection needs.
#[derive(Clone)]
struct ClientConnection {
    /// The one request path: authorization, the event loop (see [`crate::api::service`]).
    service: Service,
    topology: watch::Receiver<Option<Topology>>,
    shutdown: Shutdown,
    /// Where this connection reserves the bytes of the frames it reads.
    budget: RequestBudget,
}

/// The request bytes one connection may reserve (module docs): its own allowance, and its share
/// of the node-wide budget. Clones share the same semaphores.
#[derive(Clone)]
struct RequestBudget {
    /// [`CONNECTION_RESERVED_REQUEST_BYTES`], this connection's alone.
    reserved: Arc<Semaphore>,
    /// [`CONNECTION_REQUEST_SHARE`]: how much of `node` this connection may hold.
    share: Arc<Semaphore>,
    /// [`MAX_BUFFERED_REQUEST_BYTES`], shared by every connection.
    node: Arc<Semaphore>,
}

/// Bytes reserved for one frame's body, returned when it is dropped: permits of the
/// connection's allowance, or of its share and of the node-wide budget.
struct Reservation<'a> {
    _connection: SemaphorePermit<'a>,
    _node: Option<SemaphorePermit<'a>>,
}

impl RequestBudget {
    fn for_connection(node: &Arc<Semaphore>) -> RequestBudget {
        RequestBudget {
            reserved: Arc::new(Semaphore::new(CONNECTION_RESERVED_REQUEST_BYTES)),
            share: Arc::new(Semaphore::new(CONNECTION_REQUEST_SHARE)),
            node: Arc::clone(node),
        }
    }

    /// Reserves `len` bytes: from the connection's allowance if they fit there now, or else from
    /// its share and then the node-wide budget, waiting as long as it takes (the caller bounds
    /// the wait). The connection's own frames queue for its share first, so at most a share's
    /// worth of them ever waits on the node-wide budget.
    async fn reserve(&self, len: u32) -> Result<Reservation<'_>> {
        if let Ok(own) = self.reserved.try_acquire_many(len) {
            return Ok(Reservation {
                _connection: own,
                _node: None,
            });
        }
        // The semaphores are never closed.
        let closed = |_| Error::ShuttingDown;
        let share = self.share.acquire_many(len).await.map_err(closed)?;
        let node = self.node.acquire_many(len).await.map_err(closed)?;
        Ok(Reservation {
            _connection: share,
            _node: Some(node),
        })
    }
}

impl ClientConnection {
    async fn serve(mut self, connection: Connection) {
        let remote = connection.remote_address();
        let role = match tls::peer_role(&connection) {
            Ok(role) => role,
            Err(err) => {
                warn!(%remote, %err, "refusing a client connection");
                connection.close(CLOSE_REFUSED, err.to_string().as_bytes());
                return;
            }
        };
        debug!(%remote, %role, "client connected");
        tokio::spawn(
            self.clone()
                .push_topology(connection.clone())
                .in_current_span(),
        );
        loop {
            let stream = tokio::select! {
                stream = connection.accept_bi() => stream,
                _ = self.shutdown.requested() => return,
            };
            match stream {
                Ok((send, recv)) => {
                    let session = self.clone().serve_session(send, recv, role);
                    tokio::spawn(session.in_current_span());
                }
                Err(err) => {
                    debug!(%remote, %err, "client connection closed");
                    return;
                }
            }
        }
    }

    /// One session: requests and responses in turn until the client finishes the stream.
    async fn serve_session(mut self, mut send: SendStream, mut recv: RecvStream, role: CertRole) {
        loop {
            let frame = tokio::select! {
                frame = read_request(&mut recv, role, &self.budget) => frame,
                _ = self.shutdown.requested() => break,
            };
            let request = match frame {
                Ok(Some(request)) => request,
                Ok(None) => break,
                // The stream is out of step once a frame was refused or cut short: answer, close.
                Err(err @ (Error::Protocol(_) | Error::Unavailable(_))) => {
                    warn!(%err, "closing a client stream whose frame was refused");
                    let _ = write_response(&mut send, &Response::Error(err)).await;
                    let _ = recv.stop(CLOSE_PROTOCOL_ERROR);
                    break;
                }
                Err(err) => {
                    debug!(%err, "client stream ended");
                    return;
                }
            };
            if matches!(request, Request::Watch { .. }) {
                // A watch takes the stream over: event frames until it ends.
                return self.serve_watch(send, role, request).await;
            }
            let client_gone = send.stopped();
            let response = tokio::select! {
                response = self.service.call(
                    Caller::Certificate(role),
                    request,
                    Forwarding::Redirect,
                ) => response,
                // Dropping the service's future drops the answer's receiver, and the event loop
                // has the node forget the request instead of holding it until its deadline.
                _ = client_gone => {
                    debug!("the client stopped its stream before its answer");
                    return;
                }
            };
            if let Err(err) = write_response(&mut send, &response).await {
                debug!(%err, "cannot answer the client; closing its stream");
                return;
            }
        }
        let _ = send.finish();
    }

    /// One watch: [`WatchEvent`] frames until the watch ends (its last frame is
    /// [`WatchEvent::End`]), the client stops the stream, or the node shuts down. A client that
    /// stops reading holds the watcher in its write; once the watcher has fallen behind the hub's
    /// ring the stream is reset with [`WATCH_LAGGING_CODE`], the same cut-off as
    /// [`Error::WatchLagging`], since no frame can reach that client any more.
    async fn serve_watch(mut self, mut send: SendStream, role: CertRole, request: Request) {
        let mut client_gone = std::pin::pin!(send.stopped());
        let caller = Caller::Certificate(role);
        let opened = tokio::select! {
            opened = self.service.watch(&caller, request) => opened,
            _ = &mut client_gone => return,
        };
        let mut watcher = match opened {
            Ok(watcher) => watcher,
            Err(err) => {
                let _ = write_watch_event(&mut send, &WatchEvent::End(err)).await;
                let _ = send.finish();
                return;
            }
        };
        loop {
            let event = tokio::select! {
                event = watcher.next() => event,
                _ = self.shutdown.requested() => Err(Error::ShuttingDown),
                _ = &mut client_gone => return,
            };
            let (event, last) = match event {
                Ok(event) => (event, false),
                Err(err) => (WatchEvent::End(err), true),
            };
            let frames = match watch_frames(event, &mut watcher) {
                Ok(frames) => frames,
                Err(err) => {
                    debug!(%err, "cannot encode a watch event; closing its stream");
                    return;
                }
            };
            tokio::select! {
                written = send.write_all(&frames) => if let Err(err) = written {
                    debug!(%err, "cannot write to a watcher; closing its stream");
                    return;
                },
                () = watcher.fallen_behind() => {
                    debug!("cutting off a watcher that stopped reading");
                    let _ = send.reset(WATCH_LAGGING_CODE);
                    return;
                }
            }
            if last {
                let _ = send.finish();
                return;
            }
        }
    }

    /// Pushes every new topology to the client, best effort, until the connection closes.
    async fn push_topology(mut self, connection: Connection) {
        // Only changes from now on: a client that just connected asks for status if it needs it.
        self.topology.mark_unchanged();
        loop {
            tokio::select! {
                changed = self.topology.changed() => if changed.is_err() { return },
                _ = connection.closed() => return,
                _ = self.shutdown.requested() => return,
            }
            let Some(topology) = self.topology.borrow_and_update().clone() else {
                continue;
            };
            let pushed = tokio::select! {
                pushed = send_topology(&connection, &topology) => pushed,
                _ = self.shutdown.requested() => return,
            };
            if let Err(err) = pushed {
                debug!(%err, "cannot push the topology to a client");
                return;
            }
        }
    }
}

/// Reads one request frame within the limits of the module docs. `Ok(None)` when the client
/// finished the stream.
async fn read_request(
    recv: &mut RecvStream,
    role: CertRole,
    budget: &RequestBudget,
) -> Result<Option<Request>> {
    let Some(len) = frame::read_length(recv).await? else {
        return Ok(None);
    };
    frame::check_length(len, max_request_bytes(role))?;
    let deadline = tokio::time::Instant::now() + FRAME_BODY_DEADLINE;
    // `len` is at most MAX_CLIENT_FRAME_BYTES, far below u32::MAX.
    let permits = u32::try_from(len)
        .map_err(|_| Error::Protocol(format!("frame of {len} bytes is too large")))?;
    let _reserved = match tokio::time::timeout_at(deadline, budget.reserve(permits)).await {
        Ok(reserved) => reserved?,
        Err(_) => {
            return Err(Error::Unavailable(format!(
                "the node is busy reading other requests (its budget is {} MiB, {} MiB of it per \
                 connection): retry",
                MAX_BUFFERED_REQUEST_BYTES >> 20,
                CONNECTION_REQUEST_SHARE >> 20
            )))
        }
    };
    match tokio::time::timeout_at(deadline, frame::read_body(recv, len)).await {
        Ok(request) => request.map(Some),
        Err(_) => Err(Error::Protocol(format!(
            "a frame of {len} bytes did not arrive within {} s",
            FRAME_BODY_DEADLINE.as_secs()
        ))),
    }
}

/// The largest request frame `role` may send: a read-only certificate may only read, and a read
/// names one key; a node certificate forwards writes for its own doors, so it gets the full limit.
fn max_request_bytes(role: CertRole) -> usize {
    match role {
        CertRole::Admin | CertRole::ReadWrite | CertRole::Node(_) => MAX_CLIENT_FRAME_BYTES,
        CertRole::ReadOnly => MAX_READ_REQUEST_BYTES,
    }
}

/// Writes one response frame. A response too large for a frame becomes an error response, so the
/// client always gets an answer.
async fn write_response(send: &mut SendStream, response: &Response) -> Result<()> {
    let bytes = match frame::encode(response, MAX_CLIENT_FRAME_BYTES) {
        Ok(bytes) => bytes,
        Err(err) => {
            let too_large = Response::Error(Error::InvalidRequest(format!(
                "the answer is too large to send ({err}): ask for less, for example a smaller scan limit"
            )));
            frame::encode(&too_large, MAX_CLIENT_FRAME_BYTES)?
        }
    };
    send.write_all(&bytes)
        .await
        .map_err(|err| Error::Network(err.to_string()))
}

/// `first`'s frame followed by the frames of the events already ready behind it, up to about
/// [`WATCH_WRITE_BYTES`]: one stream write per wake-up of the watcher, not one per change, which is
/// most of what a change costs the node when many watchers follow a busy log.
fn watch_frames(first: WatchEvent, watcher: &mut Watcher) -> Result<Vec<u8>> {
    let mut frames = frame::encode(&first, MAX_CLIENT_FRAME_BYTES)?;
    if matches!(first, WatchEvent::End(_)) {
        return Ok(frames);
    }
    while frames.len() < WATCH_WRITE_BYTES {
        let Some(event) = watcher.next_ready() else {
            break;
        };
        frame::encode_into(&event, MAX_CLIENT_FRAME_BYTES, &mut frames)?;
    }
    Ok(frames)
}

/// Writes one watch frame. A change too large for a frame cannot be (a value fits a request frame).
async fn write_watch_event(send: &mut SendStream, event: &WatchEvent) -> Result<()> {
    let bytes = frame::encode(event, MAX_CLIENT_FRAME_BYTES)?;
    send.write_all(&bytes)
        .await
        .map_err(|err| Error::Network(err.to_string()))
}

async fn send_topology(connection: &Connection, topology: &Topology) -> Result<()> {
    let network = |err: &dyn std::fmt::Display| Error::Network(err.to_string());
    let mut stream = connection.open_uni().await.map_err(|err| network(&err))?;
    frame::write_frame(&mut stream, topology, MAX_CLIENT_FRAME_BYTES).await?;
    stream.finish().map_err(|err| network(&err))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `reserve` completes on its first poll (a budget never wakes it later in a test).
    async fn reserved_at_once(budget: &RequestBudget, len: usize) -> Option<Reservation<'_>> {
        let len = u32::try_from(len).expect("frame length");
        tokio::select! {
            biased;
            reserved = budget.reserve(len) => Some(reserved.expect("budget open")),
            () = std::future::ready(()) => None,
        }
    }

    #[tokio::test]
    async fn one_connection_holds_at_most_its_share_of_the_node_budget() {
        let node = Arc::new(Semaphore::new(MAX_BUFFERED_REQUEST_BYTES));
        let hostile = RequestBudget::for_connection(&node);
        let mut held = Vec::new();
        for _ in 0..CONNECTION_REQUEST_SHARE / MAX_CLIENT_FRAME_BYTES {
            held.push(
                reserved_at_once(&hostile, MAX_CLIENT_FRAME_BYTES)
                    .await
                    .expect("within the share"),
            );
        }
        assert!(reserved_at_once(&hostile, MAX_CLIENT_FRAME_BYTES)
            .await
            .is_none());
        assert_eq!(
            node.available_permits(),
            MAX_BUFFERED_REQUEST_BYTES - CONNECTION_REQUEST_SHARE
        );
        let other = RequestBudget::for_connection(&node);
        assert!(reserved_at_once(&other, MAX_CLIENT_FRAME_BYTES)
            .await
            .is_some());
        drop(held);
        assert!(reserved_at_once(&hostile, MAX_CLIENT_FRAME_BYTES)
            .await
            .is_some());
    }

    #[tokio::test]
    async fn small_requests_are_read_while_other_connections_hold_the_whole_budget() {
        let node = Arc::new(Semaphore::new(MAX_BUFFERED_REQUEST_BYTES));
        let _taken = node
            .acquire_many(u32::try_from(MAX_BUFFERED_REQUEST_BYTES).expect("fits"))
            .await
            .expect("open");
        let client = RequestBudget::for_connection(&node);
        let read = reserved_at_once(&client, MAX_READ_REQUEST_BYTES).await;
        assert!(read.is_some(), "a read fits the connection's own allowance");
        // The allowance is in use, and a larger frame needs the node-wide budget: both wait.
        assert!(reserved_at_once(&client, 100).await.is_none());
        drop(read);
        assert!(reserved_at_once(&client, 100).await.is_some());
        assert!(
            reserved_at_once(&client, CONNECTION_RESERVED_REQUEST_BYTES + 1)
                .await
                .is_none()
        );
    }
}
