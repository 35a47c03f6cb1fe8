//! The front doors: every client protocol a node speaks, and the one service behind them.
//!
//! A door only translates: it reads its protocol's bytes, authenticates the caller (a
//! [`service::Caller`]), builds a [`crate::wire::client::Request`] and hands it to the
//! [`service::Service`], then renders the [`crate::wire::client::Response`] in its own idiom. No door
//! decides authorization, replication or retries on its own: the service does, the same way for
//! all of them (see `docs/ARCHITECTURE.md`, the front doors).
//!
//! - [`service`]: the one request path: authorization, the local event loop, forwarding.
//! - [`resp`]: the Redis protocol on plain TCP (`resp_addr` in the node's config).
//! - [`http`]: the HTTP/JSON door, with health, readiness and Prometheus metrics.
//! - [`watch`]: the watch hub: change feeds from the committed log, for every door.
//! - [`json`]: the JSON shapes of key-value answers, shared by `kvctl --json` and HTTP.
//! - The QUIC door still lives in `net/client_port.rs`; it calls the service like any other door.

pub mod auth;
pub mod http;
pub mod json;
pub mod resp;
pub mod service;
pub mod watch;

pub use service::{Caller, Forwarding, RequestIds, Service, ServiceSettings};

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use crate::net::event_loop::unix_millis;
use crate::net::shutdown::Shutdown;

/// The deadline `ttl_ms` from now on this node's wall clock (milliseconds since the Unix epoch):
/// how a door turns a relative expiry (RESP `EX`/`PX`/`EXPIRE`, HTTP `?ttl=`) into
/// `Expiry::At`. `None` if it overflows.
pub(crate) fn deadline_in(ttl_ms: u64) -> Option<u64> {
    unix_millis().checked_add(ttl_ms)
}

/// The next connection of a TCP door (`door` names it in the log, e.g. "a RESP"), or `None` once
/// the node shuts down. A failed accept (out of file descriptors, most likely) pauses rather than
/// spins.
async fn accept(
    listener: &TcpListener,
    shutdown: &mut Shutdown,
    door: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.requested() => return None,
        };
        match accepted {
            Ok(accepted) => return Some(accepted),
            Err(err) => {
                warn!(%err, "cannot accept {door} connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
