//! Mutual TLS over QUIC: the handshake of every connection in a cluster, peer or client.
//!
//! Every connection is QUIC over TLS 1.3 with *mutual* authentication: both sides present a
//! certificate signed by the cluster CA and both sides verify the other's against that CA alone.
//! A certificate from another CA, or none at all, fails the handshake before a single frame is
//! read. The certificates themselves, and the rule that writes a role into their subject, are
//! [`crate::certs`].
//!
//! Invariants:
//! - Because the chain was verified during the handshake, the subject can be trusted afterwards,
//!   and [`peer_role`] reads the role straight from it. Anything missing or garbled is a refusal,
//!   never a default role.
//! - Node and client use the same transport settings ([`transport_config`]) and the same reading
//!   of a failed connection ([`connection_error`]).
//! - All crypto comes from rustls' *ring* provider, passed explicitly to every builder, so no
//!   process-wide default provider is needed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

use crate::certs::{self, load_certificates, load_private_key, CertRole, TlsFiles};
use crate::config::tuning::{KEEP_ALIVE_INTERVAL, MAX_CONCURRENT_BIDI_STREAMS, MAX_IDLE_TIMEOUT};
use crate::error::{Error, Result};

/// quinn server config that REQUIRES a client certificate signed by the cluster CA, with the
/// given ALPN. Which role may do what is decided after the handshake, with [`peer_role`].
pub fn server_config(files: &TlsFiles, alpn: &[u8]) -> Result<quinn::ServerConfig> {
    let tls = rustls_server_config(files, alpn, ClientCertificate::Required)?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|err| Error::Internal(format!("QUIC server TLS config: {err}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// rustls server config of the HTTP door: the node's certificate, TLS 1.3, ALPN `http/1.1`.
/// A client certificate of the cluster CA is verified if one is presented, and gives the caller
/// its role ([`role_from_certificate`]); a client without one is anonymous, and the service
/// decides what an anonymous caller may do.
pub fn http_server_config(files: &TlsFiles) -> Result<rustls::ServerConfig> {
    rustls_server_config(files, b"http/1.1", ClientCertificate::Optional)
}

/// rustls server config of the RESP door (`resp_tls`): as the HTTP door's, a client certificate
/// of the cluster CA optional, but no ALPN (Redis clients offer none).
pub fn resp_server_config(files: &TlsFiles) -> Result<rustls::ServerConfig> {
    rustls_server_config(files, b"", ClientCertificate::Optional)
}

/// Whether a server asks a client certificate of the cluster CA of every client, or verifies one
/// only if presented.
enum ClientCertificate {
    Required,
    Optional,
}

/// The node's certificate over TLS 1.3 with `alpn`, verifying client certificates against the
/// cluster CA: the one rustls server config behind the QUIC ports and the HTTP door.
fn rustls_server_config(
    files: &TlsFiles,
    alpn: &[u8],
    client_certificate: ClientCertificate,
) -> Result<rustls::ServerConfig> {
    let provider = crypto_provider();
    let roots = load_roots(&files.ca_cert)?;
    let chain = load_certificates(&files.cert)?;
    let key = load_private_key(&files.key)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let verifier = match client_certificate {
        ClientCertificate::Required => verifier,
        ClientCertificate::Optional => verifier.allow_unauthenticated(),
    }
    .build()
    .map_err(|err| Error::Config(format!("client certificate verifier: {err}")))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| Error::Internal(format!("TLS 1.3 with the ring provider: {err}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|err| key_pair_error(files, err))?;
    // An empty ALPN means none: the RESP door's clients offer none.
    tls.alpn_protocols = [alpn]
        .into_iter()
        .filter(|alpn| !alpn.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    Ok(tls)
}

/// rustls client config for probing an HTTP door (`kvnode health`): trusts only the cluster CA
/// in `ca_cert`, presents no certificate (health endpoints need none).
pub fn http_probe_config(ca_cert: &Path) -> Result<rustls::ClientConfig> {
    let roots = load_roots(ca_cert)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| Error::Internal(format!("TLS 1.3 with the ring provider: {err}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// quinn client config presenting `files.cert` and trusting only the cluster CA, with the given
/// ALPN. The server's certificate must name the host being dialled (see [`server_name`]).
pub fn client_config(files: &TlsFiles, alpn: &[u8]) -> Result<quinn::ClientConfig> {
    let roots = load_roots(&files.ca_cert)?;
    let chain = load_certificates(&files.cert)?;
    let key = load_private_key(&files.key)?;

    let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| Error::Internal(format!("TLS 1.3 with the ring provider: {err}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|err| key_pair_error(files, err))?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    quic_client_config(tls)
}

/// The role of the peer on an established connection, from its certificate. Works on both ends:
/// a server learns its client's role, a node dialling a peer can check it reached a node.
///
/// Fails with [`Error::Refused`] if the peer presented no certificate or its subject does not
/// name a valid role.
pub fn peer_role(connection: &quinn::Connection) -> Result<CertRole> {
    let identity = connection
        .peer_identity()
        .ok_or_else(|| Error::Refused("peer presented no certificate".to_string()))?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| Error::Refused("peer identity is not an X.509 certificate chain".into()))?;
    let end_entity = chain
        .first()
        .ok_or_else(|| Error::Refused("peer presented an empty certificate chain".to_string()))?;
    role_from_certificate(end_entity)
}

/// TLS alert sent when the two ends share no ALPN id (RFC 7301), e.g. a client on the peer port.
const NO_APPLICATION_PROTOCOL_ALERT: u8 = 120;

/// The crate's error for a connection to `addr` that failed or closed, on either end: the one
/// reading of a quinn failure, used by the client library and by the links between nodes.
///
/// A TLS alert, raised here or by the peer, means the handshake was refused: a certificate from
/// another CA or none at all, a server not named by its certificate, a wrong ALPN. Those become
/// [`Error::Refused`] with rustls' reason and what to check, as does a QUIC version mismatch:
/// retrying cannot fix any of them. Anything else is [`Error::Network`].
pub fn connection_error(addr: &str, err: &quinn::ConnectionError) -> Error {
    let (code, failed) = match err {
        quinn::ConnectionError::TransportError(local) => {
            (local.code, format!("failed on our side ({})", local.reason))
        }
        quinn::ConnectionError::ConnectionClosed(remote) => (
            remote.error_code,
            format!(
                "was refused by the other end ({})",
                String::from_utf8_lossy(&remote.reason)
            ),
        ),
        quinn::ConnectionError::VersionMismatch => {
            return Error::Refused(format!("{addr} speaks no QUIC version we support"))
        }
        other => return Error::Network(format!("connection to {addr} failed: {other}")),
    };
    // QUIC carries a TLS alert as transport error 0x100 + alert (RFC 9001 §4.8).
    let code = u64::from(code);
    let Some(alert) = code.checked_sub(0x100).and_then(|a| u8::try_from(a).ok()) else {
        return Error::Network(format!("connection to {addr} failed: {err}"));
    };
    let hint = if alert == NO_APPLICATION_PROTOCOL_ALERT {
        "the two ends speak different protocols: is this the client port rather than the peer port, or the other way round?"
    } else {
        "check that both ends use certificates from the same `kvctl certs init` (the same ca.pem; \
         a client needs a client certificate, made with `kvctl certs init --client NAME:ROLE`) \
         and that the address dialled is one the node's certificate names"
    };
    Error::Refused(format!("TLS handshake with {addr} {failed}: {hint}"))
}

/// The role encoded in a DER certificate's subject (see [`crate::certs`]): OU = the role and, for
/// a node, CN = `node-<id>`. It does not verify the certificate: call it on certificates the
/// handshake already verified.
pub fn role_from_certificate(der: &[u8]) -> Result<CertRole> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| Error::Refused(format!("certificate cannot be parsed: {err}")))?;
    let subject = certificate.subject();

    let unit = single_attribute(subject.iter_organizational_unit(), "role (OU)")?;
    if unit == certs::NODE_UNIT {
        let common_name = single_attribute(subject.iter_common_name(), "common name (CN)")?;
        let id = certs::node_id_from_common_name(common_name).ok_or_else(|| {
            Error::Refused(format!(
                "node certificate has common name '{common_name}', expected node-<id>"
            ))
        })?;
        return Ok(CertRole::Node(id));
    }
    CertRole::client_role_of_unit(unit)
        .ok_or_else(|| Error::Refused(format!("certificate has unknown role (OU) '{unit}'")))
}

/// The server name to use when dialling `addr` ("host:port"): the host part, an IP address or a
/// DNS name. IPv6 addresses are written in brackets, `[::1]:7000`.
pub fn server_name(addr: &str) -> Result<String> {
    let addr = addr.trim();
    if let Ok(socket) = addr.parse::<SocketAddr>() {
        return Ok(socket.ip().to_string());
    }
    let invalid = || {
        Error::Config(format!(
            "address '{addr}' is not host:port (e.g. 10.0.0.1:7000, node-1.example:7000 or [::1]:7000)"
        ))
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(invalid)?;
    // An IPv6 host without brackets is ambiguous ("::1:7000") and refused.
    let valid_host = !host.contains(':') && rustls_pki_types::ServerName::try_from(host).is_ok();
    if !valid_host || port.parse::<u16>().is_err() {
        return Err(invalid());
    }
    Ok(host.to_string())
}

/// The one crypto provider of the crate: rustls' *ring*, handed to every builder explicitly.
fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The transport settings of every connection, node or client, on both ends: keep-alives so a
/// dead peer is noticed within [`MAX_IDLE_TIMEOUT`], and room for many concurrent request
/// streams.
pub fn transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            duration_millis(MAX_IDLE_TIMEOUT),
        ))))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_CONCURRENT_BIDI_STREAMS));
    transport
}

fn duration_millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

fn quic_client_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|err| Error::Internal(format!("QUIC client TLS config: {err}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

fn key_pair_error(files: &TlsFiles, err: rustls::Error) -> Error {
    Error::Config(format!(
        "certificate {} and key {} cannot be used together: {err}",
        files.cert.display(),
        files.key.display()
    ))
}

/// Exactly one string value of a subject attribute, or a refusal saying what is wrong.
fn single_attribute<'a, 'b>(
    mut values: impl Iterator<Item = &'b x509_parser::x509::AttributeTypeAndValue<'a>>,
    what: &str,
) -> Result<&'a str>
where
    'a: 'b,
{
    let first = values
        .next()
        .ok_or_else(|| Error::Refused(format!("certificate has no {what}")))?;
    if values.next().is_some() {
        return Err(Error::Refused(format!(
            "certificate has more than one {what}"
        )));
    }
    first
        .as_str()
        .map_err(|_| Error::Refused(format!("certificate {what} is not a text string")))
}

/// The cluster CA as the only trust anchor.
fn load_roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for certificate in load_certificates(path)? {
        roots.add(certificate).map_err(|err| {
            Error::Config(format!(
                "{} is not a usable CA certificate: {err}",
                path.display()
            ))
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    use super::*;
    use crate::certs::{init_certs, TestCerts};
    use crate::wire::message::NodeId;
    use crate::wire::{CLIENT_ALPN, PEER_ALPN};

    /// A guard against a hung handshake turning into a hung test; not a timing assertion.
    const HANDSHAKE_GUARD: Duration = Duration::from_secs(60);

    /// Both ends of one handshake attempt. The endpoints are kept so the connections stay open.
    struct Handshake {
        server: std::result::Result<quinn::Connection, quinn::ConnectionError>,
        client: std::result::Result<quinn::Connection, quinn::ConnectionError>,
        _endpoints: (quinn::Endpoint, quinn::Endpoint),
    }

    /// The one setup of every handshake test: a server with `server` config, dialled once by
    /// `name` with `client` config.
    async fn handshake(
        server: quinn::ServerConfig,
        client: quinn::ClientConfig,
        name: &str,
    ) -> Handshake {
        let localhost: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let server_endpoint = quinn::Endpoint::server(server, localhost).expect("server endpoint");
        let server_addr = server_endpoint.local_addr().expect("server address");
        let client_endpoint = quinn::Endpoint::client(localhost).expect("client endpoint");

        let accept = async {
            let incoming = server_endpoint
                .accept()
                .await
                .expect("an incoming connection");
            incoming.await
        };
        let connect = async {
            client_endpoint
                .connect_with(client, server_addr, name)
                .expect("connect")
                .await
        };
        let (server, client) =
            tokio::time::timeout(HANDSHAKE_GUARD, async { tokio::join!(accept, connect) })
                .await
                .expect("the handshake hung");
        Handshake {
            server,
            client,
            _endpoints: (server_endpoint, client_endpoint),
        }
    }

    /// Node 1 of `certs` serving `alpn`, dialled as `name` by a holder of `files`.
    async fn dial_node_1(
        certs: &TestCerts,
        alpn: &[u8],
        files: &TlsFiles,
        name: &str,
    ) -> Handshake {
        let client = client_config(files, alpn).expect("client config");
        handshake(node_server(certs, 1, alpn), client, name).await
    }

    fn node_server(certs: &TestCerts, id: NodeId, alpn: &[u8]) -> quinn::ServerConfig {
        server_config(&certs.node(id), alpn).expect("server config")
    }

    /// Asserts that the handshake was refused on the server and did not leave the client with a
    /// usable connection: either its handshake failed too, or the server closed it.
    async fn assert_refused(attempt: Handshake) {
        let server_error = attempt.server.expect_err("server accepted the connection");
        assert_is_refusal(&server_error);
        let client_error = match attempt.client {
            Err(err) => err,
            // In TLS 1.3 the client may finish its half before the server rejects its
            // certificate; the server must then close the connection with the TLS alert.
            Ok(connection) => connection.closed().await,
        };
        assert_is_refusal(&client_error);
    }

    fn assert_is_refusal(err: &quinn::ConnectionError) {
        assert!(
            matches!(connection_error("the other end", err), Error::Refused(_)),
            "not a refusal: {err}"
        );
    }

    fn no_certificate_client(ca_cert: &Path, alpn: &[u8]) -> quinn::ClientConfig {
        let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(load_roots(ca_cert).expect("roots"))
            .with_no_client_auth();
        tls.alpn_protocols = vec![alpn.to_vec()];
        quic_client_config(tls).expect("client config")
    }

    #[test]
    fn certificates_carry_their_roles() {
        let certs = TestCerts::new();
        let role_of = |files: TlsFiles| {
            let chain = load_certificates(&files.cert).expect("certificate");
            role_from_certificate(&chain[0]).expect("role")
        };
        assert_eq!(role_of(certs.node(2)), CertRole::Node(2));
        assert_eq!(role_of(certs.client("alice")), CertRole::ReadWrite);
        assert_eq!(role_of(certs.client("reader")), CertRole::ReadOnly);
        assert_eq!(role_of(certs.client("root")), CertRole::Admin);
    }

    #[test]
    fn missing_or_empty_files_give_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = TlsFiles::for_node(dir.path(), 7);
        let err = client_config(&files, PEER_ALPN).expect_err("no files");
        let message = err.to_string();
        assert!(matches!(err, Error::Config(_)), "{message}");
        assert!(message.contains("ca.pem"), "{message}");
        assert!(message.contains("kvctl certs init"), "{message}");

        let certs = TestCerts::new();
        let files = certs.node(1);
        std::fs::write(&files.cert, "not a certificate\n").expect("write");
        let err = server_config(&files, PEER_ALPN).expect_err("empty certificate file");
        assert!(
            matches!(&err, Error::Config(m) if m.contains("holds no certificate")),
            "{err}"
        );

        let files = certs.node(2);
        std::fs::write(&files.key, std::fs::read(&files.cert).expect("cert")).expect("write");
        let err = client_config(&files, PEER_ALPN).expect_err("key file holds a certificate");
        assert!(
            matches!(&err, Error::Config(m) if m.contains("holds no private key")),
            "{err}"
        );
    }

    #[test]
    fn role_from_certificate_refuses_what_it_cannot_read() {
        let refusal = |der: &[u8]| match role_from_certificate(der) {
            Err(Error::Refused(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(refusal(b"garbage").contains("cannot be parsed"));
        assert!(refusal(&[]).contains("cannot be parsed"));

        let make = |subject: &[(DnType, &str)]| {
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            for (kind, value) in subject {
                params.distinguished_name.push(kind.clone(), *value);
            }
            let key = KeyPair::generate().expect("key");
            params
                .self_signed(&key)
                .expect("certificate")
                .der()
                .to_vec()
        };
        let no_role = make(&[(DnType::CommonName, "client-x")]);
        assert!(refusal(&no_role).contains("no role (OU)"));
        let unknown = make(&[(DnType::OrganizationalUnitName, "superuser")]);
        assert!(refusal(&unknown).contains("unknown role"));
        // rcgen keeps one value per attribute type, so the second OU is spelled by its OID.
        let two_roles = make(&[
            (DnType::OrganizationalUnitName, "readonly"),
            (DnType::CustomDnType(vec![2, 5, 4, 11]), "admin"),
        ]);
        assert!(refusal(&two_roles).contains("more than one role"));
        let nameless_node = make(&[(DnType::OrganizationalUnitName, "node")]);
        assert!(refusal(&nameless_node).contains("no common name"));
        let bad_id = make(&[
            (DnType::OrganizationalUnitName, "node"),
            (DnType::CommonName, "node-one"),
        ]);
        assert!(refusal(&bad_id).contains("expected node-<id>"));

        let node = make(&[
            (DnType::OrganizationalUnitName, "node"),
            (DnType::CommonName, "node-42"),
        ]);
        assert_eq!(role_from_certificate(&node), Ok(CertRole::Node(42)));
    }

    #[test]
    fn server_name_is_the_host_part() {
        assert_eq!(server_name("127.0.0.1:7000"), Ok("127.0.0.1".to_string()));
        assert_eq!(server_name("[::1]:7000"), Ok("::1".to_string()));
        assert_eq!(
            server_name("db1.example:7000"),
            Ok("db1.example".to_string())
        );
        for bad in [
            "db1.example",
            ":7000",
            "db1.example:port",
            "::1:7000",
            "bad_host!:7000",
            "",
        ] {
            assert!(
                matches!(server_name(bad), Err(Error::Config(_))),
                "'{bad}' accepted"
            );
        }
    }

    #[test]
    fn only_tls_alerts_and_version_mismatches_are_refusals() {
        let addr = "127.0.0.1:7000";
        assert_eq!(
            connection_error(addr, &quinn::ConnectionError::TimedOut),
            Error::Network("connection to 127.0.0.1:7000 failed: timed out".to_string())
        );
        assert!(matches!(
            connection_error(addr, &quinn::ConnectionError::Reset),
            Error::Network(_)
        ));
        assert!(matches!(
            connection_error(addr, &quinn::ConnectionError::VersionMismatch),
            Error::Refused(_)
        ));
        let closed = |code: quinn::TransportErrorCode| {
            connection_error(
                addr,
                &quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
                    error_code: code,
                    frame_type: None,
                    reason: bytes::Bytes::from_static(b"peer sent no certificates"),
                }),
            )
        };
        let refusal = closed(quinn::TransportErrorCode::crypto(116));
        assert!(
            matches!(&refusal, Error::Refused(m) if m.contains("peer sent no certificates") && m.contains(addr)),
            "{refusal}"
        );
        assert!(matches!(
            closed(quinn::TransportErrorCode::PROTOCOL_VIOLATION),
            Error::Network(_)
        ));
    }

    #[tokio::test]
    async fn a_readwrite_client_connects_and_the_roles_are_seen() {
        let certs = TestCerts::new();

        let attempt = dial_node_1(&certs, CLIENT_ALPN, &certs.client("alice"), "127.0.0.1").await;

        let server_side = attempt.server.expect("server handshake");
        let client_side = attempt.client.expect("client handshake");
        assert_eq!(peer_role(&server_side), Ok(CertRole::ReadWrite));
        assert_eq!(peer_role(&client_side), Ok(CertRole::Node(1)));
    }

    #[tokio::test]
    async fn a_node_connects_to_a_node_by_its_dns_name() {
        let certs = TestCerts::new();

        let attempt = dial_node_1(&certs, PEER_ALPN, &certs.node(2), "db1.example").await;

        let server_side = attempt.server.expect("server handshake");
        assert_eq!(peer_role(&server_side), Ok(CertRole::Node(2)));
    }

    #[tokio::test]
    async fn a_certificate_issued_by_a_reloaded_ca_is_accepted() {
        let certs = TestCerts::new();
        let mut options = TestCerts::options(certs.path());
        options
            .clients
            .push(("late".to_string(), CertRole::ReadOnly));
        init_certs(&options).expect("init_certs with a new client");

        let attempt = dial_node_1(&certs, CLIENT_ALPN, &certs.client("late"), "127.0.0.1").await;

        let server_side = attempt.server.expect("server handshake");
        assert_eq!(peer_role(&server_side), Ok(CertRole::ReadOnly));
    }

    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused() {
        let certs = TestCerts::new();
        let client = no_certificate_client(&certs.path().join("ca.pem"), CLIENT_ALPN);

        let attempt = handshake(node_server(&certs, 1, CLIENT_ALPN), client, "127.0.0.1").await;

        assert_refused(attempt).await;
    }

    #[tokio::test]
    async fn a_client_certificate_from_another_ca_is_refused() {
        let certs = TestCerts::new();
        let other = TestCerts::new();
        let foreign = TlsFiles {
            ca_cert: certs.path().join("ca.pem"),
            ..other.client("root")
        };

        let attempt = dial_node_1(&certs, CLIENT_ALPN, &foreign, "127.0.0.1").await;

        assert_refused(attempt).await;
    }

    #[tokio::test]
    async fn a_server_certificate_from_another_ca_is_refused() {
        let certs = TestCerts::new();
        let other = TestCerts::new();

        let attempt = dial_node_1(&other, CLIENT_ALPN, &certs.client("alice"), "127.0.0.1").await;

        let client_error = attempt.client.expect_err("client trusted a foreign server");
        assert_is_refusal(&client_error);
        assert!(attempt.server.is_err());
    }

    #[tokio::test]
    async fn a_server_must_be_named_by_its_certificate() {
        let certs = TestCerts::new();

        // Node 1 is dialled as if it were node 2.
        let attempt = dial_node_1(&certs, PEER_ALPN, &certs.node(2), "node-2").await;

        assert!(attempt.client.is_err(), "client accepted the wrong server");
    }

    #[tokio::test]
    async fn a_client_certificate_cannot_serve() {
        let certs = TestCerts::new();
        // A client certificate that even names the host: only its key usage (clientAuth) is
        // wrong for a server.
        let impostor = certs.client_naming_localhost("impostor");
        let impostor = server_config(&impostor, PEER_ALPN).expect("server config");
        let client = client_config(&certs.node(2), PEER_ALPN).expect("client config");

        let attempt = handshake(impostor, client, "127.0.0.1").await;

        assert!(
            attempt.client.is_err(),
            "a client certificate served the peer protocol"
        );
    }

    #[tokio::test]
    async fn an_alpn_mismatch_fails_the_handshake() {
        let certs = TestCerts::new();

        // A client speaking the client protocol dials the peer port.
        let client = client_config(&certs.client("alice"), CLIENT_ALPN).expect("client config");
        let attempt = handshake(node_server(&certs, 1, PEER_ALPN), client, "127.0.0.1").await;

        let server_error = attempt.server.expect_err("server accepted a foreign ALPN");
        let client_error = attempt.client.expect_err("client accepted a foreign ALPN");
        assert_is_refusal(&server_error);
        let message = connection_error("127.0.0.1", &client_error).to_string();
        assert!(message.contains("different protocols"), "{message}");
    }
}
