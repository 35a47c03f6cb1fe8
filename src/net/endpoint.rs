//! Binding QUIC endpoints so that peers notice a restart at once.
//!
//! When a node restarts, its peers still hold connections to the old process. Their next packet
//! reaches the new process, which can answer with a QUIC *stateless reset*; a peer accepts the
//! reset only if it carries the token the old process issued, an HMAC of the connection id under
//! the endpoint's reset key. quinn's defaults defeat this twice over: the reset key is random per
//! process, and its connection-id generator drops packets whose id it did not make itself, so no
//! reset is even sent. Peers then send into the void until the idle timeout (seconds of lost
//! heartbeats, while the restarted node, hearing nothing, keeps calling elections).
//!
//! [`RestartIdentity`] fixes both: the reset key is derived from the node's private key (stable
//! across restarts, and secret because the private key is), and connection ids are plain random
//! bytes, so a packet for an old connection is answered with a reset the peer accepts. A link then
//! redials within one heartbeat.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{ConnectionId, ConnectionIdGenerator, Endpoint, EndpointConfig};
use rand::RngCore;

use crate::certs::TlsFiles;
use crate::error::{Error, Result};

/// Length of the connection ids this node issues (quinn's default length).
const CONNECTION_ID_BYTES: usize = 8;

/// Domain separation for the reset key derived from the private key.
const RESET_KEY_LABEL: &[u8] = b"replikv QUIC stateless reset key v1";

/// What a node's endpoints need to be recognised across a restart.
pub(crate) struct RestartIdentity {
    reset_key: Arc<ring::hmac::Key>,
}

impl RestartIdentity {
    /// Derives the reset key from the node's private key file.
    pub(crate) fn derive(files: &TlsFiles) -> Result<Self> {
        let private_key = std::fs::read(&files.key)
            .map_err(|err| Error::Config(format!("cannot read {}: {err}", files.key.display())))?;
        let derivation = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &private_key);
        let secret = ring::hmac::sign(&derivation, RESET_KEY_LABEL);
        Ok(RestartIdentity {
            reset_key: Arc::new(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                secret.as_ref(),
            )),
        })
    }

    /// Binds a server endpoint on `addr`; `port` names it in errors ("client", "peer").
    pub(crate) fn bind(
        &self,
        tls: quinn::ServerConfig,
        addr: SocketAddr,
        port: &str,
    ) -> Result<Endpoint> {
        let bind_error = |err: std::io::Error| {
            Error::Network(format!(
                "cannot bind the {port} port on {addr}: {err} (is another node running there?)"
            ))
        };
        let mut config = EndpointConfig::new(self.reset_key.clone());
        config.cid_generator(|| Box::new(RandomConnectionIds));
        let socket = std::net::UdpSocket::bind(addr).map_err(bind_error)?;
        Endpoint::new(config, Some(tls), socket, Arc::new(quinn::TokioRuntime)).map_err(bind_error)
    }
}

/// Random connection ids that any process accepts as possibly its own (the trait's default
/// `validate`), so packets for a previous incarnation's connections get a stateless reset.
struct RandomConnectionIds;

impl ConnectionIdGenerator for RandomConnectionIds {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; CONNECTION_ID_BYTES];
        rand::thread_rng().fill_bytes(&mut bytes);
        ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CONNECTION_ID_BYTES
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}
