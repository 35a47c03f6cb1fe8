//! The RESP door: the Redis protocol (RESP2, and RESP3 after `HELLO 3`) on a TCP port, plain or
//! (`resp_tls`) TLS with the cluster CA, so that `redis-cli` (`--tls` too), `redis-benchmark` and
//! Redis client libraries work against any node.
//!
//! Each connection has two tasks. The reader takes commands off the socket ([`request`]) and
//! queues them, at most [`PIPELINE_DEPTH`] deep; the executor runs them one at a time, in order,
//! through the service ([`commands`]), and writes the replies ([`reply`]), flushing whenever the
//! queue is empty. So a pipelining client is never waited on before its next command is read,
//! replies come in command order, and one connection's writes enter the log in its order. Plain
//! `SET`s queued back to back run as one write, one log entry
//! ([`commands::Connection::execute_sets`]), at most [`MAX_JOINED_SETS`] of them. Keyspace
//! notifications (`SUBSCRIBE`, `PSUBSCRIBE`: [`notifications`]) reach the executor on a queue of
//! their own and are written between replies.
//!
//! Invariants:
//! - A connection starts as [`Caller::Anonymous`], or over TLS with a client certificate of the
//!   cluster CA as that certificate's role: the service serves an anonymous one with the node's
//!   `anonymous_role` (an operator's opt-in), or every command but `AUTH`, `HELLO` and `QUIT`
//!   gets `NOAUTH`. `AUTH` (or `HELLO … AUTH`) with a user's password makes it that user.
//! - What clients can make the node hold is bounded before it is buffered: a command is at most
//!   [`request::MAX_COMMAND_BYTES`] (limits on its parts refused with Redis's texts), commands
//!   parsed but not yet run hold a share of a node-wide budget ([`MAX_QUEUED_COMMAND_BYTES`]),
//!   and at most [`MAX_RESP_CLIENTS`] connections are served at once (the next one is told
//!   `-ERR max number of clients reached` and closed, as Redis does).
//! - Bad input gets a protocol error and closes that connection only, as Redis does; the node
//!   serves everyone else.

mod commands;
mod notifications;
mod pattern;
mod reply;
mod request;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn, Instrument};

use crate::api::service::{Caller, Service};
use crate::certs::TlsFiles;
use crate::net::shutdown::Shutdown;
use crate::net::tls;

pub use commands::{REDIS_COMPATIBLE_VERSION, SCAN_KEY_LIMIT};
pub use request::{MAX_ARGUMENTS, MAX_BULK_BYTES, MAX_COMMAND_BYTES, MAX_INLINE_BYTES};

use commands::{is_plain_set, join_set, Connection};
use notifications::{Notice, NOTICES_QUEUED};
use reply::Reply;

/// RESP connections a node serves at once.
pub const MAX_RESP_CLIENTS: usize = 1024;

/// Commands of one connection read but not yet run: how far a pipeline may run ahead.
pub const PIPELINE_DEPTH: usize = 1024;

/// Bytes of commands parsed but not yet run, over every RESP connection of the node: a reader
/// whose next command does not fit waits (and stops reading) until the executors catch up.
pub const MAX_QUEUED_COMMAND_BYTES: usize = 64 * 1024 * 1024;

/// Most plain `SET`s of one connection run as one write.
pub const MAX_JOINED_SETS: usize = 256;

/// Replies buffered before they are written even though more commands are queued.
const REPLY_FLUSH_BYTES: usize = 64 * 1024;

/// What every connection of one node's RESP door shares.
pub struct Door {
    service: Service,
    /// The port the door listens on (for `INFO`).
    port: u16,
    started: Instant,
    next_connection_id: AtomicU64,
    /// Connections open now (for `INFO`).
    connected: AtomicUsize,
    /// The node-wide budget of queued command bytes ([`MAX_QUEUED_COMMAND_BYTES`]).
    queued_bytes: Arc<Semaphore>,
}

/// Binds the RESP door at `addr`; the caller then runs [`serve`].
pub async fn bind(addr: SocketAddr) -> crate::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|err| {
        crate::Error::Config(format!(
            "cannot bind the RESP address {addr}: {err} (is another Redis or replikv node using it?)"
        ))
    })
}

/// How long a TLS client may take to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS acceptor of the RESP door (`resp_tls`): the node's certificate, client certificates
/// of the cluster CA optional.
pub fn resp_tls(files: &TlsFiles) -> crate::Result<TlsAcceptor> {
    Ok(TlsAcceptor::from(Arc::new(tls::resp_server_config(files)?)))
}

/// Serves RESP connections on `listener` until shutdown: over TLS if `tls` is given.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: Service,
    mut shutdown: Shutdown,
) {
    let port = listener.local_addr().map_or(0, |addr| addr.port());
    let door = Arc::new(Door {
        service,
        port,
        started: Instant::now(),
        next_connection_id: AtomicU64::new(1),
        connected: AtomicUsize::new(0),
        queued_bytes: Arc::new(Semaphore::new(MAX_QUEUED_COMMAND_BYTES)),
    });
    let slots = Arc::new(Semaphore::new(MAX_RESP_CLIENTS));
    loop {
        let Some((stream, remote)) = super::accept(&listener, &mut shutdown, "a RESP").await else {
            return;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(%remote, "refusing a RESP connection: {MAX_RESP_CLIENTS} are open already");
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let door = door.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tokio::spawn(
            async move {
                let _slot = slot; // held for as long as the connection is served
                door.connected.fetch_add(1, Ordering::Relaxed);
                let local = stream
                    .local_addr()
                    .map_or_else(|_| String::new(), |addr| addr.to_string());
                match tls {
                    None => {
                        let connection = (stream, Caller::Anonymous, remote, local);
                        serve_connection(&door, connection, shutdown).await
                    }
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                        match handshake.await {
                            Ok(Ok(stream)) => {
                                let caller = match stream.get_ref().1.peer_certificates() {
                                    Some([end_entity, ..]) => {
                                        match tls::role_from_certificate(end_entity) {
                                            Ok(role) => Some(Caller::Certificate(role)),
                                            Err(err) => {
                                                warn!(%remote, %err, "refusing a RESP client certificate");
                                                None
                                            }
                                        }
                                    }
                                    _ => Some(Caller::Anonymous),
                                };
                                if let Some(caller) = caller {
                                    let connection = (stream, caller, remote, local);
                                    serve_connection(&door, connection, shutdown).await
                                }
                            }
                            Ok(Err(err)) => debug!(%remote, %err, "RESP TLS handshake failed"),
                            Err(_) => debug!(%remote, "RESP TLS handshake timed out"),
                        }
                    }
                }
                door.connected.fetch_sub(1, Ordering::Relaxed);
            }
            .in_current_span(),
        );
    }
}

/// Redis's answer to a connection over `maxclients`.
async fn refuse(mut stream: TcpStream) {
    let refusal = b"-ERR max number of clients reached\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(refusal)).await;
}

/// What the reader hands the executor.
enum Incoming {
    Command {
        args: Vec<Bytes>,
        /// This command's share of the node-wide budget, returned once it has run.
        _budget: OwnedSemaphorePermit,
    },
    /// The input broke the protocol: answer, then close.
    ProtocolError(String),
}

/// One connection: its byte stream (TCP, or TLS over it), its caller so far, and its remote and
/// local addresses.
type Accepted<S> = (S, Caller, SocketAddr, String);

async fn serve_connection<S>(door: &Door, accepted: Accepted<S>, mut shutdown: Shutdown)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (stream, caller, remote, local) = accepted;
    let id = door.next_connection_id.fetch_add(1, Ordering::Relaxed);
    debug!(%remote, id, "RESP client connected");
    let (reader, mut writer) = tokio::io::split(stream);
    let (queue, mut commands) = mpsc::channel(PIPELINE_DEPTH);
    let reading =
        tokio::spawn(read_commands(reader, queue, door.queued_bytes.clone()).in_current_span());
    let (notices_sender, mut notices) = mpsc::channel(NOTICES_QUEUED);
    let mut connection = Connection::new(id, caller, (remote.to_string(), local), notices_sender);
    let mut out = BytesMut::new();
    // A command taken off the queue while gathering plain SETs that could not join them.
    let mut held: Option<Incoming> = None;
    loop {
        let incoming = match held.take() {
            Some(incoming) => Some(incoming),
            None => tokio::select! {
                incoming = commands.recv() => incoming,
                Some(notice) = notices.recv() => {
                    let ended = write_notices(notice, &mut notices, connection.protocol, &mut out);
                    let idle = commands.is_empty();
                    if ended || idle || out.len() >= REPLY_FLUSH_BYTES {
                        if let Err(err) = write_out(&mut writer, &mut out).await {
                            debug!(%remote, %err, "cannot notify a RESP client; closing");
                            break;
                        }
                    }
                    if ended {
                        break;
                    }
                    continue;
                }
                _ = shutdown.requested() => break,
            },
        };
        // `None`: the client finished sending and every command it sent has run.
        let Some(incoming) = incoming else { break };
        let close = match incoming {
            Incoming::Command { args, _budget } if is_plain_set(&args) => {
                let joins = connection.joins_sets(door);
                let (sets, _budgets) =
                    gather_sets((args, _budget), joins, &mut commands, &mut held);
                if let [args] = sets.as_slice() {
                    let outcome = tokio::select! {
                        outcome = connection.execute(door, args) => outcome,
                        _ = shutdown.requested() => break,
                    };
                    outcome.reply.encode(connection.protocol, &mut out);
                    outcome.close
                } else {
                    let replies = tokio::select! {
                        replies = connection.execute_sets(door, &sets) => replies,
                        _ = shutdown.requested() => break,
                    };
                    for reply in replies {
                        reply.encode(connection.protocol, &mut out);
                    }
                    false
                }
            }
            Incoming::Command { args, _budget } => {
                let outcome = tokio::select! {
                    outcome = connection.execute(door, &args) => outcome,
                    _ = shutdown.requested() => break,
                };
                outcome.reply.encode(connection.protocol, &mut out);
                outcome.close
            }
            Incoming::ProtocolError(text) => {
                info!(%remote, %text, "closing a RESP connection after a protocol error");
                Reply::err(format!("Protocol error: {text}")).encode(connection.protocol, &mut out);
                true
            }
        };
        if close || (held.is_none() && commands.is_empty()) || out.len() >= REPLY_FLUSH_BYTES {
            if let Err(err) = write_out(&mut writer, &mut out).await {
                debug!(%remote, %err, "cannot answer a RESP client; closing");
                break;
            }
        }
        if close {
            break;
        }
    }
    reading.abort();
    let _ = writer.shutdown().await;
    debug!(%remote, id, "RESP client disconnected");
}

/// Takes the plain `SET`s queued right behind `first` that may run with it ([`join_set`]), up
/// to [`MAX_JOINED_SETS`], when the connection `joins` them at all; the first command that may
/// not is left in `held`. Returns the `SET`s and their shares of the command budget, held until
/// they have run.
fn gather_sets(
    (first, budget): (Vec<Bytes>, OwnedSemaphorePermit),
    joins: bool,
    queue: &mut mpsc::Receiver<Incoming>,
    held: &mut Option<Incoming>,
) -> (Vec<Vec<Bytes>>, Vec<OwnedSemaphorePermit>) {
    let mut joined_bytes = join_set(0, &first).filter(|_| joins);
    let (mut sets, mut budgets) = (vec![first], vec![budget]);
    while let Some(bytes) = joined_bytes.filter(|_| sets.len() < MAX_JOINED_SETS) {
        let Ok(next) = queue.try_recv() else { break };
        match next {
            Incoming::Command { args, _budget } if is_plain_set(&args) => {
                joined_bytes = join_set(bytes, &args);
                if joined_bytes.is_none() {
                    *held = Some(Incoming::Command { args, _budget });
                    break;
                }
                sets.push(args);
                budgets.push(_budget);
            }
            other => {
                *held = Some(other);
                break;
            }
        }
    }
    (sets, budgets)
}

/// Encodes `notice` and the notices queued behind it (up to [`REPLY_FLUSH_BYTES`]); returns
/// whether a subscription ended, which closes the connection after its reason is written.
fn write_notices(
    notice: Notice,
    queued: &mut mpsc::Receiver<Notice>,
    protocol: reply::Protocol,
    out: &mut BytesMut,
) -> bool {
    let mut next = Some(notice);
    while let Some(notice) = next.take() {
        match notice {
            Notice::Message(message) => message.encode(protocol, out),
            Notice::Ended(err) => {
                Reply::err(format!("keyspace notifications ended: {err}")).encode(protocol, out);
                return true;
            }
        }
        if out.len() < REPLY_FLUSH_BYTES {
            next = queued.try_recv().ok();
        }
    }
    false
}

async fn write_out<W: AsyncWrite + Unpin>(
    writer: &mut W,
    out: &mut BytesMut,
) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    writer.write_all(out).await?;
    out.clear();
    Ok(())
}

/// Reads commands until the client stops sending, the executor stops listening, or the input
/// breaks the protocol.
async fn read_commands<R: AsyncRead + Unpin>(
    mut reader: R,
    queue: mpsc::Sender<Incoming>,
    budget: Arc<Semaphore>,
) {
    let mut buffer = BytesMut::with_capacity(16 * 1024);
    loop {
        loop {
            match request::next_command(&mut buffer) {
                Ok(Some(args)) => {
                    // At most MAX_COMMAND_BYTES (far below the budget and u32::MAX), and at
                    // least 1 so that even empty arguments take a share.
                    let size: usize = args.iter().map(|arg| arg.len() + 16).sum();
                    let permits =
                        u32::try_from(size.min(MAX_QUEUED_COMMAND_BYTES)).unwrap_or(u32::MAX);
                    let Ok(share) = budget.clone().acquire_many_owned(permits).await else {
                        return; // the budget is never closed
                    };
                    let command = Incoming::Command {
                        args,
                        _budget: share,
                    };
                    if queue.send(command).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(request::ProtocolError(text)) => {
                    let _ = queue.send(Incoming::ProtocolError(text)).await;
                    return;
                }
            }
        }
        match reader.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
