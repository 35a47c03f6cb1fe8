//! Certificates and mutual TLS.
//!
//! Every connection in a cluster, peer or client, is QUIC over TLS 1.3 with *mutual*
//! authentication: both sides present a certificate signed by the cluster CA and both sides verify
//! the other's against that CA alone. A certificate from another CA, or none at all, fails the
//! handshake before a single frame is read.
//!
//! What a holder may do is written into its certificate by `kvctl certs init` ([`init_certs`]):
//! the subject's organizational unit (OU) names the role (`node`, `admin`, `readwrite`,
//! `readonly`) and a node certificate's common name (CN) carries its id (`node-<id>`). Because the
//! chain was verified during the handshake, the subject can be trusted afterwards, and
//! [`peer_role`] reads the role straight from it. Anything missing or garbled is a refusal, never a
//! default role.
//!
//! Node certificates serve both sides of the peer protocol (EKU serverAuth + clientAuth) and name
//! every host the node is reached by. Client certificates carry clientAuth only, so a client cannot
//! pose as a node's server. All crypto comes from rustls' *ring* provider, passed explicitly to
//! every builder, so no process-wide default provider is needed.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};
use crate::wire::message::NodeId;

/// How often an idle connection is pinged, so NAT state and the peer's idle timer stay fresh.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a connection may hear nothing before it is declared dead. Several keep-alive
/// intervals, so one lost ping does not drop a healthy peer.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Concurrent bidirectional streams a peer may open: one per in-flight request, and many client
/// sessions may share one connection.
pub const MAX_CONCURRENT_BIDI_STREAMS: u32 = 1024;

/// Validity of the cluster CA from the day it is made.
const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 60 * 60);

/// Validity of node and client certificates from the day they are issued.
const LEAF_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Certificates start being valid this long before they are made, so a peer whose clock runs a
/// little behind still accepts them.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(24 * 60 * 60);

/// Organization written into every subject, to tell our certificates apart in a trust store.
const ORGANIZATION: &str = "replikv";

/// Common name of the cluster CA. Re-using an existing CA depends on rebuilding exactly this
/// subject, so it must never change.
const CA_COMMON_NAME: &str = "replikv cluster CA";

const NODE_OU: &str = "node";
const ADMIN_OU: &str = "admin";
const READWRITE_OU: &str = "readwrite";
const READONLY_OU: &str = "readonly";

/// What a certificate allows its holder to do (taken from the certificate, DESIGN §7).
///
/// Node certificates grant the peer protocol only; the client permissions belong to the client
/// roles, with `admin` a superset of `readwrite`, itself a superset of `readonly`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertRole {
    /// A cluster member, with its id; may use the peer protocol.
    Node(NodeId),
    /// A client that may read, write and change membership.
    Admin,
    /// A client that may read and write.
    ReadWrite,
    /// A client that may only read.
    ReadOnly,
}

impl CertRole {
    /// Whether the holder may put and delete keys.
    pub fn can_write(&self) -> bool {
        matches!(self, CertRole::Admin | CertRole::ReadWrite)
    }

    /// Whether the holder may get and scan keys and read the cluster status.
    pub fn can_read(&self) -> bool {
        matches!(
            self,
            CertRole::Admin | CertRole::ReadWrite | CertRole::ReadOnly
        )
    }

    /// Whether the holder may add and remove members.
    pub fn can_change_membership(&self) -> bool {
        matches!(self, CertRole::Admin)
    }

    /// Whether the holder is a cluster member, allowed on the peer protocol.
    pub fn is_node(&self) -> bool {
        matches!(self, CertRole::Node(_))
    }

    /// The organizational unit that encodes this role in a certificate subject.
    fn organizational_unit(&self) -> &'static str {
        match self {
            CertRole::Node(_) => NODE_OU,
            CertRole::Admin => ADMIN_OU,
            CertRole::ReadWrite => READWRITE_OU,
            CertRole::ReadOnly => READONLY_OU,
        }
    }
}

impl fmt::Display for CertRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertRole::Node(id) => write!(f, "node {id}"),
            client => f.write_str(client.organizational_unit()),
        }
    }
}

/// Parses a *client* role, as given to `kvctl certs init --client NAME:ROLE`. Node roles are not
/// parsed here: a node's certificate is made from its id.
impl FromStr for CertRole {
    type Err = Error;

    fn from_str(role: &str) -> Result<CertRole> {
        match role.trim().to_ascii_lowercase().as_str() {
            ADMIN_OU => Ok(CertRole::Admin),
            READWRITE_OU => Ok(CertRole::ReadWrite),
            READONLY_OU => Ok(CertRole::ReadOnly),
            _ => Err(Error::Config(format!(
                "unknown client role '{role}': expected admin, readwrite or readonly"
            ))),
        }
    }
}

/// Paths of a certificate/key pair and the cluster CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA certificate, the only trust anchor.
    pub ca_cert: PathBuf,
    /// This holder's certificate (PEM).
    pub cert: PathBuf,
    /// This holder's private key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl TlsFiles {
    /// `dir/ca.pem`, `dir/node-<id>.pem`, `dir/node-<id>.key`.
    pub fn for_node(dir: &Path, id: NodeId) -> TlsFiles {
        TlsFiles::named(dir, &node_common_name(id))
    }

    /// `dir/ca.pem`, `dir/client-<name>.pem`, `dir/client-<name>.key`.
    pub fn for_client(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles::named(dir, &client_common_name(name))
    }

    fn named(dir: &Path, stem: &str) -> TlsFiles {
        TlsFiles {
            ca_cert: dir.join("ca.pem"),
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        }
    }
}

/// Options of `kvctl certs init`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertsInit {
    /// Directory the files are written to; created if missing.
    pub dir: PathBuf,
    /// Node certificates to make: the id and the hosts (IP addresses or DNS names) the node is
    /// dialled by. `localhost`, the loopback addresses and `node-<id>` are always added.
    pub nodes: Vec<(NodeId, Vec<String>)>,
    /// Client certificates to make: a name (letters, digits, `-`, `_`) and a client role.
    pub clients: Vec<(String, CertRole)>,
    /// Replace an existing CA (and so every certificate asked for) instead of re-using it.
    pub force: bool,
}

/// Makes the cluster CA (`ca.pem` + `ca.key`), node certificates and client certificates.
///
/// Private keys are written with mode 0600, every file atomically (temporary file + rename).
///
/// Without `force`, an existing CA is kept and only the certificates that are missing are issued,
/// so `kvnode dev` can be re-run; certificates already present are left alone. With `force`, or
/// when there is no CA yet, a new CA is made and every requested certificate is (re)issued, since
/// the old ones would no longer verify. Returns the paths written.
pub fn init_certs(options: &CertsInit) -> Result<Vec<PathBuf>> {
    validate_init(options)?;
    fs::create_dir_all(&options.dir).map_err(|err| {
        Error::Config(format!(
            "cannot create certificate directory {}: {err}",
            options.dir.display()
        ))
    })?;

    let ca_cert_path = options.dir.join("ca.pem");
    let ca_key_path = options.dir.join("ca.key");
    let now = SystemTime::now();
    let mut written = Vec::new();

    let (has_ca_cert, has_ca_key) = (ca_cert_path.exists(), ca_key_path.exists());
    if has_ca_cert != has_ca_key && !options.force {
        let (found, missing) = if has_ca_cert {
            (&ca_cert_path, &ca_key_path)
        } else {
            (&ca_key_path, &ca_cert_path)
        };
        return Err(Error::Config(format!(
            "found {} but not {}: restore it, or use --force to make a new CA (and re-issue every certificate)",
            found.display(),
            missing.display()
        )));
    }
    let (ca, reissue_all) = if has_ca_cert && has_ca_key && !options.force {
        (load_ca(&ca_cert_path, &ca_key_path)?, false)
    } else {
        let ca = new_ca(now)?;
        write_file(&ca_cert_path, ca.cert.pem().as_bytes(), false)?;
        write_file(&ca_key_path, ca.key.serialize_pem().as_bytes(), true)?;
        written.push(ca_cert_path);
        written.push(ca_key_path);
        (ca, true)
    };

    for (id, hosts) in &options.nodes {
        let files = TlsFiles::for_node(&options.dir, *id);
        if reissue_all || !files.cert.exists() || !files.key.exists() {
            let params = node_params(*id, hosts, now)?;
            issue(&ca, params, &files, &mut written)?;
        }
    }
    for (name, role) in &options.clients {
        let files = TlsFiles::for_client(&options.dir, name);
        if reissue_all || !files.cert.exists() || !files.key.exists() {
            let params = client_params(name, *role, now)?;
            issue(&ca, params, &files, &mut written)?;
        }
    }
    Ok(written)
}

/// quinn server config that REQUIRES a client certificate signed by the cluster CA, with the
/// given ALPN. Which role may do what is decided after the handshake, with [`peer_role`].
pub fn server_config(files: &TlsFiles, alpn: &[u8]) -> Result<quinn::ServerConfig> {
    let provider = crypto_provider();
    let roots = load_roots(&files.ca_cert)?;
    let chain = load_certificates(&files.cert)?;
    let key = load_private_key(&files.key)?;

    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|err| Error::Config(format!("client certificate verifier: {err}")))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| Error::Internal(format!("TLS 1.3 with the ring provider: {err}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|err| key_pair_error(files, err))?;
    tls.alpn_protocols = vec![alpn.to_vec()];

    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|err| Error::Internal(format!("QUIC server TLS config: {err}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
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

/// The crate's error for a failed handshake or a closed connection, on either end.
///
/// A TLS alert, raised here or by the peer, means the handshake was refused: a certificate from
/// another CA or none at all, a server not named by its certificate, a wrong ALPN. Those become
/// [`Error::Refused`] with rustls' reason and what to check. Anything else is [`Error::Network`].
pub fn connection_error(err: &quinn::ConnectionError) -> Error {
    let (code, reason) = match err {
        quinn::ConnectionError::TransportError(local) => (local.code, local.reason.clone()),
        quinn::ConnectionError::ConnectionClosed(remote) => (
            remote.error_code,
            String::from_utf8_lossy(&remote.reason).into_owned(),
        ),
        other => return Error::Network(other.to_string()),
    };
    // QUIC carries a TLS alert as transport error 0x100 + alert (RFC 9001 §4.8).
    let code = u64::from(code);
    let Some(alert) = code.checked_sub(0x100).and_then(|a| u8::try_from(a).ok()) else {
        return Error::Network(err.to_string());
    };
    let hint = if alert == NO_APPLICATION_PROTOCOL_ALERT {
        "the two ends speak different protocols: is this the client port rather than the peer port, or the other way round?"
    } else {
        "check that both ends use certificates from the same `kvctl certs init` (the same ca.pem) and that the address dialled is one the node's certificate names"
    };
    Error::Refused(format!("TLS handshake failed ({reason}): {hint}"))
}

/// The role encoded in a DER certificate's subject: OU = the role and, for `node`, CN =
/// `node-<id>`. It does not verify the certificate: call it on certificates the handshake already
/// verified.
pub fn role_from_certificate(der: &[u8]) -> Result<CertRole> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| Error::Refused(format!("certificate cannot be parsed: {err}")))?;
    let subject = certificate.subject();

    let unit = single_attribute(subject.iter_organizational_unit(), "role (OU)")?;
    match unit {
        NODE_OU => {
            let common_name = single_attribute(subject.iter_common_name(), "common name (CN)")?;
            let id = common_name
                .strip_prefix("node-")
                .and_then(|id| id.parse::<NodeId>().ok())
                .ok_or_else(|| {
                    Error::Refused(format!(
                        "node certificate has common name '{common_name}', expected node-<id>"
                    ))
                })?;
            Ok(CertRole::Node(id))
        }
        ADMIN_OU => Ok(CertRole::Admin),
        READWRITE_OU => Ok(CertRole::ReadWrite),
        READONLY_OU => Ok(CertRole::ReadOnly),
        other => Err(Error::Refused(format!(
            "certificate has unknown role (OU) '{other}'"
        ))),
    }
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

/// Transport settings shared by both ends: keep-alives so a dead peer is noticed within
/// [`MAX_IDLE_TIMEOUT`], and room for many concurrent request streams.
fn transport_config() -> quinn::TransportConfig {
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

// ---------------------------------------------------------------------------------------------
// Reading PEM files.

fn read_tls_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    fs::read(path).map_err(|err| match err.kind() {
        io::ErrorKind::NotFound => Error::Config(format!(
            "{what} {} not found: run `kvctl certs init` to make the cluster's certificates",
            path.display()
        )),
        _ => Error::Config(format!("cannot read {what} {}: {err}", path.display())),
    })
}

fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_tls_file(path, "certificate")?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, pem::Error>>()
        .map_err(|err| Error::Config(format!("{} is not valid PEM: {err}", path.display())))?;
    if certificates.is_empty() {
        return Err(Error::Config(format!(
            "{} holds no certificate (no BEGIN CERTIFICATE block): run `kvctl certs init`",
            path.display()
        )));
    }
    Ok(certificates)
}

fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read_tls_file(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| match err {
        pem::Error::NoItemsFound => Error::Config(format!(
            "{} holds no private key (no BEGIN PRIVATE KEY block): run `kvctl certs init`",
            path.display()
        )),
        err => Error::Config(format!("{} is not valid PEM: {err}", path.display())),
    })
}

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

// ---------------------------------------------------------------------------------------------
// Making certificates.

/// The cluster CA: its certificate (as the issuer of new certificates) and signing key.
struct CertificateAuthority {
    cert: Certificate,
    key: KeyPair,
}

fn node_common_name(id: NodeId) -> String {
    format!("node-{id}")
}

fn client_common_name(name: &str) -> String {
    format!("client-{name}")
}

/// Checks every option before anything is written, so a typo never leaves a half-made directory.
fn validate_init(options: &CertsInit) -> Result<()> {
    for (index, (id, hosts)) in options.nodes.iter().enumerate() {
        if options.nodes[..index].iter().any(|(other, _)| other == id) {
            return Err(Error::Config(format!("node {id} is listed twice")));
        }
        for host in hosts {
            host_san(host)?;
        }
    }
    for (index, (name, role)) in options.clients.iter().enumerate() {
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            return Err(Error::Config(format!(
                "client name '{name}' must be 1 to 64 letters, digits, '-' or '_'"
            )));
        }
        if role.is_node() {
            return Err(Error::Config(format!(
                "client '{name}' cannot have a node role: use admin, readwrite or readonly"
            )));
        }
        if options.clients[..index]
            .iter()
            .any(|(other, _)| other == name)
        {
            return Err(Error::Config(format!("client '{name}' is listed twice")));
        }
    }
    Ok(())
}

fn rcgen_error(what: &str, err: rcgen::Error) -> Error {
    Error::Internal(format!("{what}: {err}"))
}

/// Subject of the CA. Deterministic, so that [`load_ca`] can rebuild it exactly.
fn ca_params(now: SystemTime) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, ORGANIZATION);
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    // Path length 0: the CA signs node and client certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, now, CA_VALIDITY)?;
    Ok(params)
}

fn leaf_params(
    common_name: &str,
    role: CertRole,
    subject_alt_names: Vec<SanType>,
    extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    now: SystemTime,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, ORGANIZATION);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.organizational_unit());
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = subject_alt_names;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = extended_key_usages;
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now, LEAF_VALIDITY)?;
    Ok(params)
}

fn node_params(id: NodeId, hosts: &[String], now: SystemTime) -> Result<CertificateParams> {
    let name = node_common_name(id);
    let mut sans = Vec::new();
    let always = [
        "localhost".to_string(),
        Ipv4Addr::LOCALHOST.to_string(),
        Ipv6Addr::LOCALHOST.to_string(),
        name.clone(),
    ];
    for host in hosts.iter().chain(always.iter()) {
        let san = host_san(host)?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    leaf_params(
        &name,
        CertRole::Node(id),
        sans,
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        now,
    )
}

fn client_params(name: &str, role: CertRole, now: SystemTime) -> Result<CertificateParams> {
    leaf_params(
        &client_common_name(name),
        role,
        Vec::new(),
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        now,
    )
}

/// A subject alternative name for a host: an IP address, or else a valid DNS name.
fn host_san(host: &str) -> Result<SanType> {
    let host = host.trim();
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = || {
        Error::Config(format!(
            "host '{host}' is neither an IP address nor a DNS name (give hosts without a port)"
        ))
    };
    rustls_pki_types::DnsName::try_from(host).map_err(|_| invalid())?;
    let name = host.to_string().try_into().map_err(|_| invalid())?;
    Ok(SanType::DnsName(name))
}

/// Valid from a day before `now` (clock skew between nodes) until `now + validity`.
fn set_validity(params: &mut CertificateParams, now: SystemTime, validity: Duration) -> Result<()> {
    let out_of_range = || Error::Config("the system clock is out of range".to_string());
    let since_epoch = now.duration_since(UNIX_EPOCH).map_err(|_| out_of_range())?;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let offset = |duration: Duration| duration.try_into().map_err(|_| out_of_range());
    let now = epoch
        .checked_add(offset(since_epoch)?)
        .ok_or_else(out_of_range)?;
    params.not_before = now
        .checked_sub(offset(CLOCK_SKEW_ALLOWANCE)?)
        .ok_or_else(out_of_range)?;
    params.not_after = now
        .checked_add(offset(validity)?)
        .ok_or_else(out_of_range)?;
    Ok(())
}

fn new_ca(now: SystemTime) -> Result<CertificateAuthority> {
    let key = KeyPair::generate().map_err(|err| rcgen_error("generating the CA key", err))?;
    let cert = ca_params(now)?
        .self_signed(&key)
        .map_err(|err| rcgen_error("signing the CA certificate", err))?;
    Ok(CertificateAuthority { cert, key })
}

/// Loads the CA made by an earlier `init_certs`, to sign new certificates with it.
///
/// rcgen signs with an in-memory issuer, so the CA certificate is rebuilt from the same subject
/// and the stored key. A certificate issued this way verifies against the stored `ca.pem` because
/// only the issuer's subject and key matter; both are checked here against the file.
fn load_ca(cert_path: &Path, key_path: &Path) -> Result<CertificateAuthority> {
    let stored = load_certificates(cert_path)?;
    let key_pem = read_tls_file(key_path, "CA private key")?;
    let key_pem = String::from_utf8(key_pem)
        .map_err(|_| Error::Config(format!("{} is not a PEM file", key_path.display())))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|err| {
        Error::Config(format!(
            "{} holds no usable private key ({err}); use --force to make a new CA",
            key_path.display()
        ))
    })?;
    let rebuilt = ca_params(SystemTime::now())?
        .self_signed(&key)
        .map_err(|err| rcgen_error("rebuilding the CA certificate", err))?;

    let unusable = |why: &str| {
        Error::Config(format!(
            "{} cannot be re-used: {why}; use --force to make a new CA (and re-issue every certificate)",
            cert_path.display()
        ))
    };
    let stored = stored
        .first()
        .ok_or_else(|| unusable("it holds no certificate"))?;
    let (_, stored) = x509_parser::parse_x509_certificate(stored)
        .map_err(|err| unusable(&format!("it cannot be parsed ({err})")))?;
    let (_, rebuilt_parsed) = x509_parser::parse_x509_certificate(rebuilt.der())
        .map_err(|err| Error::Internal(format!("parsing the rebuilt CA certificate: {err}")))?;
    if stored.public_key().raw != key.public_key_der().as_slice() {
        return Err(unusable(&format!(
            "its key does not match {}",
            key_path.display()
        )));
    }
    if stored.subject().as_raw() != rebuilt_parsed.subject().as_raw() {
        return Err(unusable("it was not made by `kvctl certs init`"));
    }
    Ok(CertificateAuthority { cert: rebuilt, key })
}

/// Issues a certificate signed by `ca` with a fresh key and writes it to `files`.
fn issue(
    ca: &CertificateAuthority,
    params: CertificateParams,
    files: &TlsFiles,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    let key = KeyPair::generate().map_err(|err| rcgen_error("generating a key", err))?;
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .map_err(|err| rcgen_error("signing a certificate", err))?;
    write_file(&files.key, key.serialize_pem().as_bytes(), true)?;
    write_file(&files.cert, cert.pem().as_bytes(), false)?;
    written.push(files.cert.clone());
    written.push(files.key.clone());
    Ok(())
}

/// Writes `contents` to a temporary file and renames it over `path`, so a crash never leaves a
/// half-written key. `private` files are created with mode 0600 and never exist with a looser one.
fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<()> {
    let cannot_write =
        |err: io::Error| Error::Config(format!("cannot write {}: {err}", path.display()));
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    match fs::remove_file(&temporary) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(cannot_write(err)),
        _ => {}
    }

    let mut open = fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;

    let mut file = open.open(&temporary).map_err(cannot_write)?;
    file.write_all(contents).map_err(cannot_write)?;
    file.sync_all().map_err(cannot_write)?;
    drop(file);
    fs::rename(&temporary, path).map_err(cannot_write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{CLIENT_ALPN, PEER_ALPN};

    /// A guard against a hung handshake turning into a hung test; not a timing assertion.
    const HANDSHAKE_GUARD: Duration = Duration::from_secs(60);

    fn cluster(dir: &Path) -> CertsInit {
        CertsInit {
            dir: dir.to_path_buf(),
            nodes: vec![
                (1, vec!["127.0.0.1".to_string(), "db1.example".to_string()]),
                (2, Vec::new()),
            ],
            clients: vec![
                ("alice".to_string(), CertRole::ReadWrite),
                ("reader".to_string(), CertRole::ReadOnly),
                ("root".to_string(), CertRole::Admin),
            ],
            force: false,
        }
    }

    fn init(dir: &Path) -> Vec<PathBuf> {
        init_certs(&cluster(dir)).expect("init_certs")
    }

    /// Both ends of one handshake attempt. The endpoints are kept so the connections stay open.
    struct Handshake {
        server: std::result::Result<quinn::Connection, quinn::ConnectionError>,
        client: std::result::Result<quinn::Connection, quinn::ConnectionError>,
        _endpoints: (quinn::Endpoint, quinn::Endpoint),
    }

    /// Runs a server with `server` config and dials it once with `client`, by `name`.
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
            matches!(connection_error(err), Error::Refused(_)),
            "not a refusal: {err}"
        );
    }

    fn node_server(dir: &Path, id: NodeId, alpn: &[u8]) -> quinn::ServerConfig {
        server_config(&TlsFiles::for_node(dir, id), alpn).expect("server config")
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

    fn file_mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn init_certs_writes_every_file_with_private_keys_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = init(dir.path());

        let mut expected = vec![dir.path().join("ca.pem"), dir.path().join("ca.key")];
        for files in [
            TlsFiles::for_node(dir.path(), 1),
            TlsFiles::for_node(dir.path(), 2),
            TlsFiles::for_client(dir.path(), "alice"),
            TlsFiles::for_client(dir.path(), "reader"),
            TlsFiles::for_client(dir.path(), "root"),
        ] {
            assert_eq!(files.ca_cert, dir.path().join("ca.pem"));
            expected.push(files.cert);
            expected.push(files.key);
        }
        assert_eq!(written, expected);
        for path in &written {
            assert!(path.is_file(), "{} missing", path.display());
            let is_key = path.extension().is_some_and(|ext| ext == "key");
            if is_key {
                assert_eq!(file_mode(path), 0o600, "{}", path.display());
            } else {
                assert_eq!(file_mode(path) & 0o022, 0, "{}", path.display());
            }
        }
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("read_dir")
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn certificates_carry_their_roles() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path());
        let role_of = |files: TlsFiles| {
            let chain = load_certificates(&files.cert).expect("certificate");
            role_from_certificate(&chain[0]).expect("role")
        };
        assert_eq!(
            role_of(TlsFiles::for_node(dir.path(), 2)),
            CertRole::Node(2)
        );
        assert_eq!(
            role_of(TlsFiles::for_client(dir.path(), "alice")),
            CertRole::ReadWrite
        );
        assert_eq!(
            role_of(TlsFiles::for_client(dir.path(), "reader")),
            CertRole::ReadOnly
        );
        assert_eq!(
            role_of(TlsFiles::for_client(dir.path(), "root")),
            CertRole::Admin
        );
    }

    #[test]
    fn rerun_keeps_the_ca_and_issues_only_missing_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path());
        let ca = fs::read(dir.path().join("ca.pem")).expect("ca.pem");
        let alice = TlsFiles::for_client(dir.path(), "alice");
        let node_cert = fs::read(TlsFiles::for_node(dir.path(), 1).cert).expect("node cert");
        fs::remove_file(&alice.cert).expect("remove alice's certificate");

        let written = init(dir.path());

        assert_eq!(written, vec![alice.cert.clone(), alice.key.clone()]);
        assert_eq!(fs::read(dir.path().join("ca.pem")).expect("ca.pem"), ca);
        let node_cert_after = fs::read(TlsFiles::for_node(dir.path(), 1).cert).expect("cert");
        assert_eq!(node_cert_after, node_cert);
    }

    #[test]
    fn force_replaces_the_ca_and_reissues_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = init(dir.path());
        let ca = fs::read(dir.path().join("ca.pem")).expect("ca.pem");
        let node_cert = fs::read(TlsFiles::for_node(dir.path(), 1).cert).expect("node cert");

        let written = init_certs(&CertsInit {
            force: true,
            ..cluster(dir.path())
        })
        .expect("init_certs --force");

        assert_eq!(written, first);
        assert_ne!(fs::read(dir.path().join("ca.pem")).expect("ca.pem"), ca);
        let node_cert_after = fs::read(TlsFiles::for_node(dir.path(), 1).cert).expect("cert");
        assert_ne!(node_cert_after, node_cert);
        assert_eq!(file_mode(&dir.path().join("ca.key")), 0o600);
    }

    #[test]
    fn a_ca_whose_key_does_not_match_is_not_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let other = tempfile::tempdir().expect("tempdir");
        init(dir.path());
        init(other.path());
        fs::copy(other.path().join("ca.key"), dir.path().join("ca.key")).expect("copy");

        let err = init_certs(&cluster(dir.path())).expect_err("mismatched CA key");
        assert!(
            matches!(&err, Error::Config(message) if message.contains("does not match")),
            "{err}"
        );
    }

    #[test]
    fn a_half_present_ca_is_not_silently_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path());
        let ca_before = fs::read(dir.path().join("ca.key")).expect("ca.key");
        fs::remove_file(dir.path().join("ca.pem")).expect("remove ca.pem");

        let err = init_certs(&cluster(dir.path())).expect_err("ca.pem is missing");
        assert!(
            matches!(&err, Error::Config(m) if m.contains("--force")),
            "{err}"
        );
        assert_eq!(
            fs::read(dir.path().join("ca.key")).expect("ca.key"),
            ca_before
        );
    }

    #[test]
    fn init_rejects_bad_options() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = [
            CertsInit {
                clients: vec![("n".to_string(), CertRole::Node(1))],
                ..cluster(dir.path())
            },
            CertsInit {
                clients: vec![("../escape".to_string(), CertRole::Admin)],
                ..cluster(dir.path())
            },
            CertsInit {
                nodes: vec![(1, vec!["127.0.0.1:7000".to_string()])],
                ..cluster(dir.path())
            },
            CertsInit {
                nodes: vec![(1, Vec::new()), (1, Vec::new())],
                ..cluster(dir.path())
            },
        ];
        for options in bad {
            let result = init_certs(&options);
            assert!(
                matches!(result, Err(Error::Config(_))),
                "{options:?} gave {result:?}"
            );
        }
        // Options are checked before anything is written.
        assert!(!dir.path().join("ca.pem").exists());
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

        init(dir.path());
        let files = TlsFiles::for_node(dir.path(), 1);
        fs::write(&files.cert, "not a certificate\n").expect("write");
        let err = server_config(&files, PEER_ALPN).expect_err("empty certificate file");
        assert!(
            matches!(&err, Error::Config(m) if m.contains("holds no certificate")),
            "{err}"
        );

        let files = TlsFiles::for_node(dir.path(), 2);
        fs::write(&files.key, fs::read(&files.cert).expect("cert")).expect("write");
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
    fn role_permissions() {
        let roles = [
            CertRole::Node(1),
            CertRole::Admin,
            CertRole::ReadWrite,
            CertRole::ReadOnly,
        ];
        let table: Vec<_> = roles
            .iter()
            .map(|role| {
                (
                    role.can_read(),
                    role.can_write(),
                    role.can_change_membership(),
                    role.is_node(),
                )
            })
            .collect();
        assert_eq!(
            table,
            vec![
                (false, false, false, true),
                (true, true, true, false),
                (true, true, false, false),
                (true, false, false, false),
            ]
        );
    }

    #[test]
    fn client_roles_parse() {
        assert_eq!("admin".parse::<CertRole>(), Ok(CertRole::Admin));
        assert_eq!("readwrite".parse::<CertRole>(), Ok(CertRole::ReadWrite));
        assert_eq!("ReadOnly".parse::<CertRole>(), Ok(CertRole::ReadOnly));
        for bad in ["node", "", "root", "read-only"] {
            assert!(
                matches!(bad.parse::<CertRole>(), Err(Error::Config(_))),
                "'{bad}' parsed"
            );
        }
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
    fn only_tls_alerts_are_refusals() {
        assert_eq!(
            connection_error(&quinn::ConnectionError::TimedOut),
            Error::Network("timed out".to_string())
        );
        assert!(matches!(
            connection_error(&quinn::ConnectionError::Reset),
            Error::Network(_)
        ));
        let closed = |code: quinn::TransportErrorCode| {
            connection_error(&quinn::ConnectionError::ConnectionClosed(
                quinn::ConnectionClose {
                    error_code: code,
                    frame_type: None,
                    reason: bytes::Bytes::from_static(b"peer sent no certificates"),
                },
            ))
        };
        let refusal = closed(quinn::TransportErrorCode::crypto(116));
        assert!(
            matches!(&refusal, Error::Refused(m) if m.contains("peer sent no certificates")),
            "{refusal}"
        );
        assert!(matches!(
            closed(quinn::TransportErrorCode::PROTOCOL_VIOLATION),
            Error::Network(_)
        ));
    }

    #[tokio::test]
    async fn a_readwrite_client_connects_and_the_roles_are_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path());
        let client = client_config(&TlsFiles::for_client(dir.path(), "alice"), CLIENT_ALPN)
            .expect("client config");

        let attempt = handshake(node_server(dir.path(), 1, CLIENT_ALPN), client, "127.0.0.1").await;

        let server_side = attempt.server.expect("server handshake");
        let client_side = attempt.client.expect("client handshake");
        assert_eq!(peer_role(&server_side), Ok(CertRole::ReadWrite));
        assert_eq!(peer_role(&client_side), Ok(CertRole::Node(1)));
    }

    #[tokio::test]
    async fn a_node_connects_to_a_node_by_its_dns_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path());
        let client =
            client_config(&TlsFiles::for_node(dir.path(), 2), PEER_ALPN).expect("client config");

        let attempt = handshake(node_server(dir.path(), 1, PEER_ALPN), client, "db1.example").await;

        let server_side = attempt.server.expect("server handshake");
        assert_eq!(peer_role(&server_side), Ok(CertRole::Node(2)));
    }

    #[tokio::test]
    async fn a_certificate_issued_by_a_reloaded_ca_is_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path());
        let mut options = cluster(dir.path());
        options
            .clients
            .push(("late".to_string(), CertRole::ReadOnly));
        init_certs(&options).expect("init_certs with a new client");
        let client = client_config(&TlsFiles::for_client(dir.path(), "late"), CLIENT_ALPN)
            .expect("client config");

        let attempt = handshake(node_server(dir.path(), 1, CLIENT_ALPN), client, "127.0.0.1").await;

        let server_side = attempt.server.expect("server handshake");
        assert_eq!(peer_role(&server_side), Ok(CertRole::ReadOnly));
    }

    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path());
        let client = no_certificate_client(&dir.path().join("ca.pem"), CLIENT_ALPN);

        let attempt = handshake(node_server(dir.path(), 1, CLIENT_ALPN), client, "127.0.0.1").await;

        assert_refused(attempt).await;
    }

    #[tokio::test]
    async fn a_client_certificate_from_another_ca_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let other = tempfile::tempdir().expect("tempdir");
        init(dir.path());
        init(other.path());
        let foreign = TlsFiles {
            ca_cert: dir.path().join("ca.pem"),
            ..TlsFiles::for_client(other.path(), "root")
        };
        let client = client_config(&foreign, CLIENT_ALPN).expect("client config");

        let attempt = handshake(node_server(dir.path(), 1, CLIENT_ALPN), client, "127.0.0.1").await;

        assert_refused(attempt).await;
    }

    #[tokio::test]
    async fn a_server_certificate_from_another_ca_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let other = tempfile::tempdir().expect("tempdir");
        init(dir.path());
        init(other.path());
        let client = client_config(&TlsFiles::for_client(dir.path(), "alice"), CLIENT_ALPN)
            .expect("client config");

        let attempt = handshake(
            node_server(other.path(), 1, CLIENT_ALPN),
            client,
            "127.0.0.1",
        )
        .await;

        let client_error = attempt.client.expect_err("client trusted a foreign server");
        assert_is_refusal(&client_error);
        assert!(attempt.server.is_err());
    }

    #[tokio::test]
    async fn a_server_must_be_named_by_its_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path());
        let client =
            client_config(&TlsFiles::for_node(dir.path(), 2), PEER_ALPN).expect("client config");

        // Node 1 is dialled as if it were node 2.
        let attempt = handshake(node_server(dir.path(), 1, PEER_ALPN), client, "node-2").await;

        assert!(attempt.client.is_err(), "client accepted the wrong server");
    }

    #[tokio::test]
    async fn a_client_certificate_cannot_serve() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path());
        // A client certificate that even names the host: only its key usage (clientAuth) is
        // wrong for a server.
        let ca = load_ca(&dir.path().join("ca.pem"), &dir.path().join("ca.key")).expect("CA");
        let params = leaf_params(
            "client-impostor",
            CertRole::Admin,
            vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            SystemTime::now(),
        )
        .expect("params");
        let impostor_files = TlsFiles::for_client(dir.path(), "impostor");
        issue(&ca, params, &impostor_files, &mut Vec::new()).expect("issue");
        let impostor = server_config(&impostor_files, PEER_ALPN).expect("server config");
        let client =
            client_config(&TlsFiles::for_node(dir.path(), 2), PEER_ALPN).expect("client config");

        let attempt = handshake(impostor, client, "127.0.0.1").await;

        assert!(
            attempt.client.is_err(),
            "a client certificate served the peer protocol"
        );
    }

    #[tokio::test]
    async fn an_alpn_mismatch_fails_the_handshake() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path());
        let client = client_config(&TlsFiles::for_client(dir.path(), "alice"), CLIENT_ALPN)
            .expect("client config");

        // A client speaking the client protocol dials the peer port.
        let attempt = handshake(node_server(dir.path(), 1, PEER_ALPN), client, "127.0.0.1").await;

        let server_error = attempt.server.expect_err("server accepted a foreign ALPN");
        let client_error = attempt.client.expect_err("client accepted a foreign ALPN");
        assert_is_refusal(&server_error);
        let message = connection_error(&client_error).to_string();
        assert!(message.contains("different protocols"), "{message}");
    }
}
