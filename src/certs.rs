//! The cluster's certificates: what they say, where they live, and how `kvctl certs init` and
//! `kvnode dev` make them.
//!
//! What a holder may do is written into its certificate: the subject's organizational unit (OU)
//! names the role (`node`, `admin`, `readwrite`, `readonly`) and the common name (CN) names the
//! holder, `node-<id>` or `client-<name>`. The same names are the stems of the files in a
//! certificates directory ([`TlsFiles`]). This module holds the one rule for those names, in both
//! directions: [`CertRole::organizational_unit`] and [`node_id_from_common_name`] read back what
//! the issuing side wrote. The handshake that checks certificates, and reads the role of the peer
//! from the one it presented, is `net::tls` (see `docs/ARCHITECTURE.md`, the I/O shell).
//!
//! Invariants:
//! - Node certificates serve both sides of the peer protocol (EKU serverAuth + clientAuth) and
//!   name every host the node is reached by. Client certificates carry clientAuth only, so a
//!   client cannot pose as a node's server.
//! - Every file is written atomically (temporary file + rename), private keys with mode 0600 from
//!   their creation; options are checked before anything is written.
//! - An existing CA is re-used only if its certificate and key match; it is never silently
//!   replaced (that would invalidate every certificate already handed out).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};
use crate::wire::client::ClientRole;
use crate::wire::message::NodeId;

// Validity periods are properties of the certificates issued, not settings of a running node,
// so they live here rather than in `config::tuning` (which may import this module).

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

/// The organizational unit of node certificates; their common name carries the id.
pub const NODE_UNIT: &str = "node";
const ADMIN_UNIT: &str = "admin";
const READWRITE_UNIT: &str = "readwrite";
const READONLY_UNIT: &str = "readonly";

/// Longest client name: it ends up in a file name and, prefixed, in the common name.
const MAX_CLIENT_NAME_CHARS: usize = 64;

/// What a certificate allows its holder to do (taken from the certificate; see
/// `docs/ARCHITECTURE.md`, the I/O shell).
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

    /// Whether the holder may add, change and remove users and API tokens.
    pub fn can_manage_credentials(&self) -> bool {
        matches!(self, CertRole::Admin)
    }

    /// Whether the holder is a cluster member, allowed on the peer protocol.
    pub fn is_node(&self) -> bool {
        matches!(self, CertRole::Node(_))
    }

    /// The organizational unit that encodes this role in a certificate subject.
    pub fn organizational_unit(&self) -> &'static str {
        match self {
            CertRole::Node(_) => NODE_UNIT,
            CertRole::Admin => ADMIN_UNIT,
            CertRole::ReadWrite => READWRITE_UNIT,
            CertRole::ReadOnly => READONLY_UNIT,
        }
    }

    /// The client role an organizational unit names; `None` for [`NODE_UNIT`] (a node's role
    /// needs its id, from the common name) and for anything unknown.
    pub fn client_role_of_unit(unit: &str) -> Option<CertRole> {
        match unit {
            ADMIN_UNIT => Some(CertRole::Admin),
            READWRITE_UNIT => Some(CertRole::ReadWrite),
            READONLY_UNIT => Some(CertRole::ReadOnly),
            _ => None,
        }
    }
}

impl From<ClientRole> for CertRole {
    /// Users and API tokens carry the client roles of certificates, with the same permissions.
    fn from(role: ClientRole) -> CertRole {
        match role {
            ClientRole::ReadOnly => CertRole::ReadOnly,
            ClientRole::ReadWrite => CertRole::ReadWrite,
            ClientRole::Admin => CertRole::Admin,
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
        CertRole::client_role_of_unit(&role.trim().to_ascii_lowercase()).ok_or_else(|| {
            Error::Config(format!(
                "unknown client role '{role}': expected admin, readwrite or readonly"
            ))
        })
    }
}

/// Writes a secret (a key, a password, a token) to `path`, mode 0600, replacing it atomically.
pub fn write_secret(path: &Path, contents: &[u8]) -> Result<()> {
    write_file(path, contents, true)
}

// --- names: the one rule for the common names and file names of certificates ---

/// The common name, and file stem, of node `id`'s certificate: `node-<id>`.
pub fn node_common_name(id: NodeId) -> String {
    format!("node-{id}")
}

/// The node id in a common name made by [`node_common_name`], or `None` if it is not one.
pub fn node_id_from_common_name(common_name: &str) -> Option<NodeId> {
    common_name.strip_prefix("node-")?.parse().ok()
}

/// The common name, and file stem, of client `name`'s certificate: `client-<name>`.
pub fn client_common_name(name: &str) -> String {
    format!("client-{name}")
}

/// Checks a client name (`kvctl certs init --client NAME:ROLE`, `client_name` in `client.toml`):
/// 1 to 64 ASCII letters, digits, `-`, `_` or `.`, not starting with `.`. So it is a plain file
/// name, never a path or a hidden file, and one rule decides both what can be issued and what a
/// client may be configured to use.
pub fn check_client_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_CLIENT_NAME_CHARS
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "client name {name:?} must be 1 to {MAX_CLIENT_NAME_CHARS} letters, digits, '-', '_' \
             or '.', and not start with '.'"
        )))
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

// --- making certificates ---

/// Options of `kvctl certs init`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertsInit {
    /// Directory the files are written to; created if missing.
    pub dir: PathBuf,
    /// Node certificates to make: the id and the hosts (IP addresses or DNS names) the node is
    /// dialled by. `localhost`, the loopback addresses and `node-<id>` are always added.
    pub nodes: Vec<(NodeId, Vec<String>)>,
    /// Client certificates to make: a name (see [`check_client_name`]) and a client role.
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

// --- reading the PEM files (here and in `net::tls`) ---

fn read_tls_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    fs::read(path).map_err(|err| match err.kind() {
        io::ErrorKind::NotFound => Error::Config(format!(
            "{what} {} not found: run `kvctl certs init` to make the cluster's certificates",
            path.display()
        )),
        _ => Error::Config(format!("cannot read {what} {}: {err}", path.display())),
    })
}

/// Every certificate of a PEM file; an error if it holds none.
pub(crate) fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
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

/// The private key of a PEM file.
pub(crate) fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read_tls_file(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| match err {
        pem::Error::NoItemsFound => Error::Config(format!(
            "{} holds no private key (no BEGIN PRIVATE KEY block): run `kvctl certs init`",
            path.display()
        )),
        err => Error::Config(format!("{} is not valid PEM: {err}", path.display())),
    })
}

// --- issuing ---

/// The cluster CA: its certificate (as the issuer of new certificates) and signing key.
struct CertificateAuthority {
    cert: Certificate,
    key: KeyPair,
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
        check_client_name(name)?;
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

/// A subject, always in this order: the organization, the role's unit (the CA has none), the
/// common name.
fn subject(organizational_unit: Option<&str>, common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, ORGANIZATION);
    if let Some(unit) = organizational_unit {
        name.push(DnType::OrganizationalUnitName, unit);
    }
    name.push(DnType::CommonName, common_name);
    name
}

/// Subject of the CA. Deterministic, so that [`load_ca`] can rebuild it exactly.
fn ca_params(now: SystemTime) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(None, CA_COMMON_NAME);
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
    params.distinguished_name = subject(Some(role.organizational_unit()), common_name);
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
pub(crate) fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<()> {
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

/// Certificates made once for a test, in a temporary directory that lives as long as the value:
/// a CA, nodes 1 (also named `db1.example`) and 2, and the clients `alice` (readwrite),
/// `reader` (readonly) and `root` (admin).
#[cfg(test)]
pub(crate) struct TestCerts {
    pub(crate) dir: tempfile::TempDir,
    /// What `init_certs` wrote.
    pub(crate) written: Vec<PathBuf>,
}

#[cfg(test)]
impl TestCerts {
    pub(crate) fn new() -> TestCerts {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = init_certs(&TestCerts::options(dir.path())).expect("init_certs");
        TestCerts { dir, written }
    }

    /// The options [`TestCerts::new`] made its certificates with, for `dir`.
    pub(crate) fn options(dir: &Path) -> CertsInit {
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

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn node(&self, id: NodeId) -> TlsFiles {
        TlsFiles::for_node(self.path(), id)
    }

    pub(crate) fn client(&self, name: &str) -> TlsFiles {
        TlsFiles::for_client(self.path(), name)
    }

    /// Issues, with this CA, a certificate that differs from a node's only by its key usage: a
    /// client certificate (clientAuth) that names 127.0.0.1.
    pub(crate) fn client_naming_localhost(&self, name: &str) -> TlsFiles {
        let ca = load_ca(&self.path().join("ca.pem"), &self.path().join("ca.key")).expect("CA");
        let params = leaf_params(
            &client_common_name(name),
            CertRole::Admin,
            vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            SystemTime::now(),
        )
        .expect("params");
        let files = self.client(name);
        issue(&ca, params, &files, &mut Vec::new()).expect("issue");
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    fn init(dir: &Path) -> Vec<PathBuf> {
        init_certs(&TestCerts::options(dir)).expect("init_certs")
    }

    #[test]
    fn init_certs_writes_every_file_with_private_keys_0600() {
        let certs = TestCerts::new();
        let dir = certs.path();

        let mut expected = vec![dir.join("ca.pem"), dir.join("ca.key")];
        for files in [
            certs.node(1),
            certs.node(2),
            certs.client("alice"),
            certs.client("reader"),
            certs.client("root"),
        ] {
            assert_eq!(files.ca_cert, dir.join("ca.pem"));
            expected.push(files.cert);
            expected.push(files.key);
        }
        assert_eq!(certs.written, expected);
        for path in &certs.written {
            assert!(path.is_file(), "{} missing", path.display());
            let is_key = path.extension().is_some_and(|ext| ext == "key");
            if is_key {
                assert_eq!(file_mode(path), 0o600, "{}", path.display());
            } else {
                assert_eq!(file_mode(path) & 0o022, 0, "{}", path.display());
            }
        }
        let leftovers: Vec<_> = fs::read_dir(dir)
            .expect("read_dir")
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn rerun_keeps_the_ca_and_issues_only_missing_certificates() {
        let certs = TestCerts::new();
        let ca = fs::read(certs.path().join("ca.pem")).expect("ca.pem");
        let alice = certs.client("alice");
        let node_cert = fs::read(certs.node(1).cert).expect("node cert");
        fs::remove_file(&alice.cert).expect("remove alice's certificate");

        let written = init(certs.path());

        assert_eq!(written, vec![alice.cert.clone(), alice.key.clone()]);
        assert_eq!(fs::read(certs.path().join("ca.pem")).expect("ca.pem"), ca);
        assert_eq!(fs::read(certs.node(1).cert).expect("cert"), node_cert);
    }

    #[test]
    fn force_replaces_the_ca_and_reissues_everything() {
        let certs = TestCerts::new();
        let ca = fs::read(certs.path().join("ca.pem")).expect("ca.pem");
        let node_cert = fs::read(certs.node(1).cert).expect("node cert");

        let written = init_certs(&CertsInit {
            force: true,
            ..TestCerts::options(certs.path())
        })
        .expect("init_certs --force");

        assert_eq!(written, certs.written);
        assert_ne!(fs::read(certs.path().join("ca.pem")).expect("ca.pem"), ca);
        assert_ne!(fs::read(certs.node(1).cert).expect("cert"), node_cert);
        assert_eq!(file_mode(&certs.path().join("ca.key")), 0o600);
    }

    #[test]
    fn a_ca_whose_key_does_not_match_is_not_reused() {
        let certs = TestCerts::new();
        let other = TestCerts::new();
        fs::copy(other.path().join("ca.key"), certs.path().join("ca.key")).expect("copy");

        let err = init_certs(&TestCerts::options(certs.path())).expect_err("mismatched CA key");
        assert!(
            matches!(&err, Error::Config(message) if message.contains("does not match")),
            "{err}"
        );
    }

    #[test]
    fn a_half_present_ca_is_not_silently_replaced() {
        let certs = TestCerts::new();
        let ca_before = fs::read(certs.path().join("ca.key")).expect("ca.key");
        fs::remove_file(certs.path().join("ca.pem")).expect("remove ca.pem");

        let err = init_certs(&TestCerts::options(certs.path())).expect_err("ca.pem is missing");
        assert!(
            matches!(&err, Error::Config(m) if m.contains("--force")),
            "{err}"
        );
        assert_eq!(
            fs::read(certs.path().join("ca.key")).expect("ca.key"),
            ca_before
        );
    }

    #[test]
    fn init_rejects_bad_options() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster = || TestCerts::options(dir.path());
        let bad = [
            CertsInit {
                clients: vec![("n".to_string(), CertRole::Node(1))],
                ..cluster()
            },
            CertsInit {
                clients: vec![("../escape".to_string(), CertRole::Admin)],
                ..cluster()
            },
            CertsInit {
                nodes: vec![(1, vec!["127.0.0.1:7000".to_string()])],
                ..cluster()
            },
            CertsInit {
                nodes: vec![(1, Vec::new()), (1, Vec::new())],
                ..cluster()
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
    fn one_rule_for_client_names() {
        let longest = "x".repeat(64);
        let too_long = "x".repeat(65);
        for good in ["admin", "alice-2", "ops_team", "a.b", longest.as_str()] {
            assert_eq!(check_client_name(good), Ok(()), "{good:?} refused");
        }
        for bad in [
            "",
            ".hidden",
            "../escape",
            "a/b",
            "a b",
            "é",
            too_long.as_str(),
        ] {
            assert!(
                matches!(check_client_name(bad), Err(Error::Config(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn node_names_read_back_what_was_written() {
        for id in [0, 1, 42, NodeId::MAX] {
            assert_eq!(node_id_from_common_name(&node_common_name(id)), Some(id));
        }
        for bad in ["node-", "node-one", "client-1", "1", "node--1"] {
            assert_eq!(node_id_from_common_name(bad), None, "{bad:?}");
        }
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
}
