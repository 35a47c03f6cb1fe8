//! The service every front door calls: authorize the caller, then serve the request locally or
//! forward it to the primary.
//!
//! [`Service::call`] is the one request path of a node. A door hands it the [`Caller`] it
//! authenticated and a [`Request`]; the service checks the caller's role ([`authorize`]) and the
//! request itself ([`check_request`]), gives the request to the local event loop (a
//! [`ClientRequest`] with a oneshot for the answer) and, for doors that ask for it
//! ([`Forwarding::ToPrimary`]), sends a request the local node answered with
//! [`Error::NotPrimary`] on to the primary through the client library, authenticated with the
//! node's own certificate.
//!
//! Invariants:
//! - Authorization is decided here and nowhere else, per request, from the caller's role: reads
//!   need `readonly` or more, writes `readwrite` or `admin`, membership changes `admin`. A `node`
//!   certificate may read, write and ask for the status (how one node forwards for another: it
//!   can replicate anything to its peers already, so this grants nothing new); of membership
//!   changes it may only add *that node itself* (`kvnode --join`).
//! - A user or an API token acts with the role its record in this node's applied state gives it
//!   now (looked up on every request, so a removal or revocation holds for open connections);
//!   users and tokens are managed by the `admin` role only ([`crate::api::auth`]).
//! - A caller without credentials is served only with the role the node's `anonymous_role` names
//!   (an operator's opt-in); without one it is refused with [`Error::Unauthenticated`].
//! - A forwarded write keeps its [`RequestId`] on every attempt, so however often it is resent
//!   (failover included) the primary applies it at most once.
//! - Forwarding never chains: the primary gets the request on its QUIC door, which answers what
//!   its node answers ([`Forwarding::Redirect`]) and leaves redirects to the client library.
//! - Dropping the future of [`Service::call`] (the caller went away) drops the answer's receiver,
//!   and the event loop has the node forget the request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, OnceCell};

use crate::api::auth::{self, Credentials, TokenDigest, VerifiedUser};
use crate::api::watch::{ListedPage, WatchHub, Watcher};
use crate::certs::{CertRole, TlsFiles};
use crate::client::{Client, ClientOptions};
use crate::config::is_host_port;
use crate::config::tuning::{CLIENT_TIMEOUT_MS, WATCH_MAX_INITIAL_BYTES};
use crate::error::{Error, Result};
use crate::metrics::{request_kind, Metrics};
use crate::net::event_loop::ClientRequest;
use crate::storage::system_keys::{is_system_key, SYSTEM_PREFIX};
use crate::wire::client::{ReadConsistency, Request, Response};
use crate::wire::frame::MAX_KEY_BYTES;
use crate::wire::message::RequestId;

/// Who a door authenticated: a certificate, a user, or an API token, each with a role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A verified certificate of the cluster CA, with the role it carries.
    Certificate(CertRole),
    /// A user whose password the door verified ([`Credentials::authenticate`]).
    User(VerifiedUser),
    /// The digest of the API token the caller presented, looked up on every request.
    Token(TokenDigest),
    /// No credentials at all (plain-TCP RESP, plain HTTP): served with the node's
    /// `anonymous_role`, if it names one.
    Anonymous,
}

/// What the service does when the local node is not the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// Answer [`Error::NotPrimary`] with the primary's address: the QUIC door, whose clients
    /// follow redirects themselves.
    Redirect,
    /// Forward the request to the primary and answer with the primary's response: doors whose
    /// clients know nothing of replikv's topology (RESP, HTTP).
    ToPrimary,
}

/// How a node's service is set up.
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    /// The role of callers without credentials; `None` refuses them.
    pub anonymous_role: Option<CertRole>,
    /// Client addresses through which forwarded requests find the primary.
    pub seeds: Vec<String>,
    /// The node's own certificate, which forwarded requests present.
    pub tls: TlsFiles,
    /// Where every answered request is counted, by kind and outcome, with its duration.
    pub metrics: Arc<Metrics>,
}

/// The service behind every door of one node. Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    node_inbox: mpsc::Sender<ClientRequest>,
    settings: ServiceSettings,
    /// Users and tokens as this node has applied them.
    credentials: Credentials,
    /// The client that forwards to the primary, made on the first forward.
    forwarder: OnceCell<Client>,
    /// The node's watch hub, once the node has started it.
    watches: OnceLock<WatchHub>,
}

impl Service {
    /// The service of the node whose event loop reads `node_inbox` and who verifies users and
    /// tokens with `credentials` (over the node's storage).
    pub(crate) fn new(
        node_inbox: mpsc::Sender<ClientRequest>,
        settings: ServiceSettings,
        credentials: Credentials,
    ) -> Self {
        Service {
            inner: Arc::new(Inner {
                node_inbox,
                settings,
                credentials,
                forwarder: OnceCell::new(),
                watches: OnceLock::new(),
            }),
        }
    }

    /// The users and tokens this node knows, for doors that verify a password.
    pub fn credentials(&self) -> &Credentials {
        &self.inner.credentials
    }

    /// Serves watches from `hub` (set once, when the node starts; later calls change nothing).
    pub(crate) fn serve_watches(&self, hub: WatchHub) {
        let _ = self.inner.watches.set(hub);
    }

    /// Opens the watch `request` ([`Request::Watch`]) for `caller`, authorized as any request.
    /// A watch is served by this node from its own committed log, never forwarded. With `initial`,
    /// the prefix is first listed page by page through the event loop (each page a stale read at
    /// its own index) and the hub brings the listing to one index; `from` is then unused.
    pub async fn watch(&self, caller: &Caller, request: Request) -> Result<Watcher> {
        self.role_of(caller)
            .and_then(|role| authorize(role, &request))
            .and_then(|()| check_request(&request))?;
        let Request::Watch {
            prefix,
            from,
            initial,
        } = request
        else {
            return Err(Error::InvalidRequest("not a watch request".into()));
        };
        let hub = self
            .inner
            .watches
            .get()
            .ok_or_else(|| Error::Unavailable("this node serves no watches yet".into()))?
            .clone();
        if !initial {
            return hub.watch(prefix, from).await;
        }
        let mut pages: Vec<ListedPage> = Vec::new();
        let mut listed_bytes = 0usize;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let scan = Request::Scan {
                prefix: prefix.clone(),
                start_after: after.clone(),
                limit: u32::MAX,
                consistency: ReadConsistency::Stale,
            };
            let (pairs, more, index) = match self.ask_node(scan).await {
                Response::Pairs { pairs, more, meta } => (pairs, more, meta.index),
                Response::Error(err) => return Err(err),
                other => {
                    return Err(Error::Internal(format!(
                        "a scan was answered with {other:?}"
                    )))
                }
            };
            listed_bytes += pairs
                .iter()
                .map(|(key, value)| key.len() + value.len())
                .sum::<usize>();
            if listed_bytes > WATCH_MAX_INITIAL_BYTES {
                return Err(Error::InvalidRequest(format!(
                    "the values under this prefix are over {} MiB, too many to list for a \
                     watch: scan them, then watch from the scan's index",
                    WATCH_MAX_INITIAL_BYTES >> 20
                )));
            }
            let last_key = pairs.last().map(|(key, _)| key.clone());
            pages.push(ListedPage {
                after: after.take(),
                pairs,
                more,
                index,
            });
            match last_key {
                Some(key) if more => after = Some(key),
                _ => break,
            }
        }
        hub.watch_listed(prefix, pages).await
    }

    /// The role `caller` acts with now, or [`Error::Unauthenticated`] for a caller without
    /// credentials on a node that names no `anonymous_role`, a removed user, or an unknown,
    /// revoked or expired token.
    pub fn role_of(&self, caller: &Caller) -> Result<CertRole> {
        match caller {
            Caller::Certificate(role) => Ok(*role),
            Caller::User(user) => self.inner.credentials.role_of_user(user),
            Caller::Token(digest) => self.inner.credentials.role_of_token(*digest),
            Caller::Anonymous => self.inner.settings.anonymous_role.ok_or_else(|| {
                Error::Unauthenticated(
                    "this node serves no unauthenticated callers: authenticate with a user's \
                     password, an API token or a certificate of the cluster CA (or set \
                     anonymous_role in the node's config)"
                        .into(),
                )
            }),
        }
    }

    /// Serves `request` for `caller`: authorizes it, hands it to the local node and, with
    /// [`Forwarding::ToPrimary`], forwards it to the primary if the local node is not the one to
    /// serve it. Always answers; an error is a [`Response::Error`].
    /// Every answer is counted in the node's metrics (`replikv_server_client_requests_total`, by
    /// kind and outcome, and the duration histogram), whichever door asked.
    pub async fn call(&self, caller: Caller, request: Request, forwarding: Forwarding) -> Response {
        let kind = request_kind(&request);
        let started = Instant::now();
        let response = self.serve(&caller, request, forwarding).await;
        self.inner
            .settings
            .metrics
            .observe_request(kind, &response, started.elapsed());
        response
    }

    async fn serve(&self, caller: &Caller, request: Request, forwarding: Forwarding) -> Response {
        let checked = self
            .role_of(caller)
            .and_then(|role| authorize(role, &request))
            .and_then(|()| check_request(&request));
        if let Err(err) = checked {
            return Response::Error(err);
        }
        let request = match request {
            // Served on the primary: a backup's `NotPrimary` is the answer (kvctl follows it).
            Request::Credentials(credentials) => return auth::serve(self, credentials).await,
            other => other,
        };
        let local = match forwarding {
            // The request is needed again only if it may be forwarded.
            Forwarding::Redirect => return self.ask_node(request).await,
            Forwarding::ToPrimary => self.ask_node(request.clone()).await,
        };
        match local {
            Response::Error(Error::NotPrimary { .. }) => self.forward(request).await,
            answered => answered,
        }
    }

    /// Hands the request to the event loop and waits for its answer.
    pub(crate) async fn ask_node(&self, request: Request) -> Response {
        let (reply, answer) = oneshot::channel();
        if self
            .inner
            .node_inbox
            .send(ClientRequest { request, reply })
            .await
            .is_err()
        {
            return Response::Error(Error::ShuttingDown);
        }
        answer.await.unwrap_or(Response::Error(Error::ShuttingDown))
    }

    /// Sends the request to the primary with the client library's retries, within the request's
    /// own timeout (a write's) or the client's default (a read's).
    async fn forward(&self, request: Request) -> Response {
        let timeout = match &request {
            Request::Write { timeout_ms, .. } => Duration::from_millis(*timeout_ms),
            _ => Duration::from_millis(CLIENT_TIMEOUT_MS),
        };
        let forwarder = self
            .inner
            .forwarder
            .get_or_try_init(|| async {
                let settings = &self.inner.settings;
                Client::with_tls(
                    settings.seeds.clone(),
                    &settings.tls,
                    ClientOptions::default(),
                )
            })
            .await;
        let forwarded = match forwarder {
            Ok(client) => client.forward(request, timeout).await,
            Err(err) => Err(err),
        };
        forwarded.unwrap_or_else(Response::Error)
    }
}

/// Request ids for the writes of one door connection (or one door request, where the protocol
/// has no connection): a random client id and a growing sequence, as the client library makes
/// them, so that the primary deduplicates a forwarded write however often it is resent.
#[derive(Debug)]
pub struct RequestIds {
    client_id: u64,
    last_sequence: AtomicU64,
}

impl RequestIds {
    /// Ids under a fresh random client id.
    pub fn new() -> Self {
        RequestIds {
            client_id: rand::random(),
            last_sequence: AtomicU64::new(0),
        }
    }

    /// The id of the next write.
    pub fn next(&self) -> RequestId {
        RequestId {
            client_id: self.client_id,
            sequence: self.last_sequence.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `role` may make `request`. Exhaustive on purpose: a new kind of request must decide
/// here who may make it.
fn authorize(role: CertRole, request: &Request) -> Result<()> {
    if let CertRole::Node(id) = role {
        // A node forwards reads, writes and status requests for its own doors; of membership
        // changes it may only register its own node (`--join`).
        return match request {
            Request::Get { .. }
            | Request::GetExpiry { .. }
            | Request::Scan { .. }
            | Request::CountKeys { .. }
            | Request::Status
            | Request::Watch { .. }
            | Request::Write { .. } => Ok(()),
            Request::AddMember { member } if member.id == id => Ok(()),
            Request::AddMember { member } => Err(Error::Refused(format!(
                "the certificate of node {id} may only add node {id} itself, not node {}: \
                 use an admin certificate",
                member.id
            ))),
            Request::RemoveMember { .. } => Err(Error::Refused(format!(
                "the certificate of node {id} may not remove members: use an admin certificate"
            ))),
            Request::Credentials(_) => Err(Error::Refused(format!(
                "the certificate of node {id} may not manage users and tokens: use an admin \
                 certificate, user or token"
            ))),
        };
    }
    let (allowed, action, needed) = match request {
        Request::Get { .. }
        | Request::GetExpiry { .. }
        | Request::Scan { .. }
        | Request::CountKeys { .. }
        | Request::Status
        | Request::Watch { .. } => (
            role.can_read(),
            "read",
            "a readonly, readwrite or admin certificate",
        ),
        Request::Write { .. } => (
            role.can_write(),
            "write",
            "a readwrite or admin certificate",
        ),
        Request::AddMember { .. } | Request::RemoveMember { .. } => (
            role.can_change_membership(),
            "change membership",
            "an admin certificate",
        ),
        Request::Credentials(_) => (
            role.can_manage_credentials(),
            "manage users and tokens",
            "an admin certificate, user or token",
        ),
    };
    if allowed {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "role {role} may not {action}: use {needed}"
        )))
    }
}

/// Checks what the role check does not: keys within [`MAX_KEY_BYTES`], and a new member's
/// addresses usable, or every node would keep dialling nowhere.
fn check_request(request: &Request) -> Result<()> {
    let keys: Vec<&[u8]> = match request {
        Request::Get { key, .. } | Request::GetExpiry { key, .. } => vec![key],
        Request::Scan {
            prefix,
            start_after,
            ..
        } => std::iter::once(prefix)
            .chain(start_after)
            .map(Vec::as_slice)
            .collect(),
        Request::Watch { prefix, .. } => vec![prefix.as_slice()],
        Request::Write { write, .. } => write.keys(),
        _ => Vec::new(),
    };
    if let Some(key) = keys.iter().find(|key| key.len() > MAX_KEY_BYTES) {
        return Err(Error::InvalidRequest(format!(
            "a key of {} bytes is longer than the limit of {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    // A scan's prefix may be shorter than the system prefix (scans skip system keys); a key
    // named outright may not start with it, nor may a scan's or a watch's prefix (a scan inside
    // the system keyspace returns its records; a shorter prefix skips them).
    let named = keys;
    if named.iter().any(|key| is_system_key(key)) {
        return Err(Error::InvalidRequest(format!(
            "keys starting with {:?} are reserved for the cluster's own records",
            String::from_utf8_lossy(SYSTEM_PREFIX)
        )));
    }
    let Request::AddMember { member } = request else {
        return Ok(());
    };
    for (field, addr) in [
        ("client address", &member.client_addr),
        ("peer address", &member.peer_addr),
    ] {
        if !is_host_port(addr) {
            return Err(Error::InvalidRequest(format!(
                "the {field} {addr:?} of node {} is not host:port (for example 127.0.0.14:7379)",
                member.id
            )));
        }
    }
    if member.client_addr == member.peer_addr {
        return Err(Error::InvalidRequest(format!(
            "node {} has the same client and peer address {}: the two ports must differ",
            member.id, member.client_addr
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::client::{CredentialsRequest, ReadConsistency, Write, WriteConcern};
    use crate::wire::message::{Member, RequestId};

    fn put() -> Request {
        Request::Write {
            request_id: RequestId {
                client_id: 1,
                sequence: 1,
            },
            write: Write::Put {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
            },
            write_concern: WriteConcern::Majority,
            timeout_ms: 1000,
        }
    }

    fn get() -> Request {
        Request::Get {
            key: b"a".to_vec(),
            consistency: ReadConsistency::Linearizable,
        }
    }

    #[test]
    fn readonly_may_read_but_not_write() {
        assert!(authorize(CertRole::ReadOnly, &get()).is_ok());
        assert!(authorize(CertRole::ReadOnly, &Request::Status).is_ok());
        match authorize(CertRole::ReadOnly, &put()) {
            Err(Error::Refused(message)) => assert!(message.contains("readonly"), "{message}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn readwrite_and_admin_may_write() {
        assert!(authorize(CertRole::ReadWrite, &put()).is_ok());
        assert!(authorize(CertRole::Admin, &put()).is_ok());
    }

    #[test]
    fn only_admin_may_change_membership() {
        let remove = Request::RemoveMember { id: 3 };
        assert!(authorize(CertRole::Admin, &remove).is_ok());
        for role in [CertRole::ReadWrite, CertRole::ReadOnly, CertRole::Node(3)] {
            match authorize(role, &remove) {
                Err(Error::Refused(message)) => assert!(message.contains("admin"), "{message}"),
                other => panic!("expected a refusal for {role}, got {other:?}"),
            }
        }
    }

    fn add(id: u64) -> Request {
        Request::AddMember {
            member: Member {
                id,
                client_addr: format!("127.0.0.{}:7379", 10 + id),
                peer_addr: format!("127.0.0.{}:7380", 10 + id),
                voter: false,
            },
        }
    }

    #[test]
    fn only_admin_may_manage_users_and_tokens() {
        let requests = [
            CredentialsRequest::UserList,
            CredentialsRequest::TokenList,
            CredentialsRequest::UserRemove {
                request_id: RequestId {
                    client_id: 1,
                    sequence: 1,
                },
                name: "alice".into(),
            },
        ]
        .map(Request::Credentials);
        for request in &requests {
            assert!(authorize(CertRole::Admin, request).is_ok(), "{request:?}");
            for role in [CertRole::ReadWrite, CertRole::ReadOnly, CertRole::Node(1)] {
                match authorize(role, request) {
                    Err(Error::Refused(message)) => {
                        assert!(message.contains("users and tokens"), "{message}")
                    }
                    other => panic!("{role} making {request:?}: got {other:?}"),
                }
            }
        }
    }

    #[test]
    fn node_certificates_may_read_and_write_to_forward() {
        for request in [get(), put(), Request::Status] {
            assert!(
                authorize(CertRole::Node(1), &request).is_ok(),
                "node certificate making {request:?}"
            );
        }
    }

    #[test]
    fn a_node_may_add_only_itself() {
        assert!(authorize(CertRole::Node(4), &add(4)).is_ok());
        match authorize(CertRole::Node(4), &add(5)) {
            Err(Error::Refused(message)) => {
                assert!(message.contains("only add node 4"), "{message}")
            }
            other => panic!("node 4 adding node 5: got {other:?}"),
        }
        assert!(authorize(CertRole::Admin, &add(5)).is_ok());
        for role in [CertRole::ReadWrite, CertRole::ReadOnly] {
            assert!(matches!(authorize(role, &add(5)), Err(Error::Refused(_))));
        }
    }

    #[test]
    fn new_members_need_usable_addresses() {
        assert!(check_request(&add(4)).is_ok());
        let mut bad = add(4);
        if let Request::AddMember { member } = &mut bad {
            member.peer_addr = "nowhere".into();
        }
        match check_request(&bad) {
            Err(Error::InvalidRequest(message)) => assert!(message.contains("peer address")),
            other => panic!("bad peer address: got {other:?}"),
        }
        if let Request::AddMember { member } = &mut bad {
            member.peer_addr = member.client_addr.clone();
        }
        assert!(matches!(check_request(&bad), Err(Error::InvalidRequest(_))));
        assert!(check_request(&get()).is_ok());
    }

    #[test]
    fn clients_cannot_name_system_keys() {
        let system = crate::storage::system_keys::system_key("user", b"alice");
        let get_system = Request::Get {
            key: system.clone(),
            consistency: ReadConsistency::Stale,
        };
        match check_request(&get_system) {
            Err(Error::InvalidRequest(message)) => {
                assert!(message.contains("reserved"), "{message}")
            }
            other => panic!("a read of a system key: got {other:?}"),
        }
        let scan_after_system = Request::Scan {
            prefix: Vec::new(),
            start_after: Some(system),
            limit: 10,
            consistency: ReadConsistency::Stale,
        };
        assert!(matches!(
            check_request(&scan_after_system),
            Err(Error::InvalidRequest(_))
        ));
        // A scan whose prefix covers the system keyspace is fine: scans skip it.
        let scan_all = Request::Scan {
            prefix: b"\xff".to_vec(),
            start_after: None,
            limit: 10,
            consistency: ReadConsistency::Stale,
        };
        assert!(check_request(&scan_all).is_ok());
        // A prefix inside it would return its records: refused.
        let scan_inside = Request::Scan {
            prefix: crate::storage::system_keys::system_family_prefix("expiry"),
            start_after: None,
            limit: 10,
            consistency: ReadConsistency::Stale,
        };
        assert!(matches!(
            check_request(&scan_inside),
            Err(Error::InvalidRequest(_))
        ));
        // A write naming a system key among others is refused too.
        let many = Request::Write {
            request_id: RequestId {
                client_id: 1,
                sequence: 1,
            },
            write: Write::PutMany {
                pairs: vec![
                    (b"a".to_vec(), b"1".to_vec()),
                    (system_key_of("b"), b"2".to_vec()),
                ],
            },
            write_concern: WriteConcern::Majority,
            timeout_ms: 1000,
        };
        assert!(matches!(
            check_request(&many),
            Err(Error::InvalidRequest(_))
        ));
    }

    fn system_key_of(name: &str) -> Vec<u8> {
        crate::storage::system_keys::system_key("user", name.as_bytes())
    }

    #[test]
    fn request_ids_grow_under_one_client_id() {
        let ids = RequestIds::new();
        let first = ids.next();
        let second = ids.next();
        assert_eq!(first.client_id, second.client_id);
        assert_eq!((first.sequence, second.sequence), (1, 2));
    }

    pub(super) fn memory_credentials() -> Credentials {
        Credentials::new(Arc::new(crate::storage::MemoryStorage::new()))
    }

    #[test]
    fn anonymous_callers_get_only_the_configured_role() {
        let (inbox, _requests) = mpsc::channel(1);
        let settings = |anonymous_role| ServiceSettings {
            anonymous_role,
            seeds: vec!["127.0.0.1:1".into()],
            tls: TlsFiles::for_node(std::path::Path::new("certs"), 1),
            metrics: Arc::new(Metrics::new()),
        };
        let closed = Service::new(inbox.clone(), settings(None), memory_credentials());
        match closed.role_of(&Caller::Anonymous) {
            Err(Error::Unauthenticated(message)) => {
                assert!(message.contains("anonymous_role"), "{message}")
            }
            other => panic!("an anonymous caller without anonymous_role: got {other:?}"),
        }
        assert_eq!(
            closed.role_of(&Caller::Certificate(CertRole::ReadOnly)),
            Ok(CertRole::ReadOnly)
        );
        let open = Service::new(
            inbox,
            settings(Some(CertRole::ReadWrite)),
            memory_credentials(),
        );
        assert_eq!(open.role_of(&Caller::Anonymous), Ok(CertRole::ReadWrite));
    }
}

#[cfg(test)]
mod forwarding_tests {
    //! A real one-node cluster (the primary) behind a stand-in backup whose node answers every
    //! request `NotPrimary`: the service forwards to the primary, and a resent write applies once.

    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::certs::{init_certs, CertsInit};
    use crate::client::ClientOptions;
    use crate::config::{DevCluster, NodeConfig, DEV_CLIENT_NAME};
    use crate::net::server::run_node;
    use crate::wire::client::{Response, Write, WriteConcern};

    fn free_port() -> u16 {
        let socket = std::net::UdpSocket::bind(("127.0.0.1", 0)).unwrap();
        socket.local_addr().unwrap().port()
    }

    /// Node 1 alone on 127.0.0.1, with certificates for itself, node 2 (the stand-in backup) and
    /// an admin.
    fn primary_config(dir: &std::path::Path) -> NodeConfig {
        let mut cluster = DevCluster::plan(dir, 1, 7379).unwrap();
        let mut config = cluster.nodes.remove(0);
        config.client_addr = format!("127.0.0.1:{}", free_port());
        config.peer_addr = format!("127.0.0.1:{}", free_port());
        config.members[0].client_addr = config.client_addr.clone();
        config.members[0].peer_addr = config.peer_addr.clone();
        init_certs(&CertsInit {
            dir: config.certs_dir.clone(),
            nodes: vec![(1, vec![]), (2, vec![])],
            clients: vec![(DEV_CLIENT_NAME.into(), CertRole::Admin)],
            force: false,
        })
        .unwrap();
        config
    }

    /// A backup's event loop as the service sees it: it answers every request `NotPrimary`,
    /// naming the primary, and counts them.
    fn stand_in_backup(
        primary_addr: String,
        asked: Arc<AtomicUsize>,
    ) -> mpsc::Sender<ClientRequest> {
        let (inbox, mut requests) = mpsc::channel::<ClientRequest>(16);
        tokio::spawn(async move {
            while let Some(ClientRequest { reply, .. }) = requests.recv().await {
                asked.fetch_add(1, Ordering::SeqCst);
                let _ = reply.send(Response::Error(Error::NotPrimary {
                    node: 2,
                    epoch: 1,
                    hint: Some((1, primary_addr.clone())),
                }));
            }
        });
        inbox
    }

    fn write(request_id: RequestId, write: Write) -> Request {
        Request::Write {
            request_id,
            write,
            write_concern: WriteConcern::Majority,
            timeout_ms: 5000,
        }
    }

    fn written(response: Response) -> crate::wire::client::WriteResult {
        match response {
            Response::Written { result, meta } => {
                assert_eq!(meta.node_id, 1, "answered by the primary");
                result
            }
            other => panic!("expected a write acknowledgement, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_forwarded_write_reaches_the_primary_and_applies_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = primary_config(dir.path());
        let (stop, stopped) = oneshot::channel::<()>();
        let node = tokio::spawn(run_node(
            config.clone(),
            async {
                let _ = stopped.await;
            },
            crate::client::join::register,
        ));
        let asked = Arc::new(AtomicUsize::new(0));
        let service = Service::new(
            stand_in_backup(config.client_addr.clone(), asked.clone()),
            ServiceSettings {
                anonymous_role: None,
                seeds: vec![config.client_addr.clone()],
                tls: TlsFiles::for_node(&config.certs_dir, 2),
                metrics: Arc::new(Metrics::new()),
            },
            super::tests::memory_credentials(),
        );
        let admin = Client::with_tls(
            vec![config.client_addr.clone()],
            &TlsFiles::for_client(&config.certs_dir, DEV_CLIENT_NAME),
            ClientOptions::default(),
        )
        .unwrap();
        let caller = Caller::Certificate(CertRole::ReadWrite);
        let ids = RequestIds::new();

        // The QUIC door's way: the redirect itself is the answer.
        let put = write(
            ids.next(),
            Write::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            },
        );
        let redirected = service
            .call(caller.clone(), put.clone(), Forwarding::Redirect)
            .await;
        assert!(
            matches!(redirected, Response::Error(Error::NotPrimary { .. })),
            "{redirected:?}"
        );

        // Forwarded: the primary applies it, and it is there to read.
        let first = written(
            service
                .call(caller.clone(), put.clone(), Forwarding::ToPrimary)
                .await,
        );
        let (value, _) = admin
            .get("k", crate::ReadConsistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(value.as_deref(), Some(&b"v"[..]));

        // A delete, then the same delete resent with its request id: answered with the first
        // result, and the primary's log does not grow.
        let delete = write(ids.next(), Write::Delete { key: b"k".to_vec() });
        let deleted = written(
            service
                .call(caller.clone(), delete.clone(), Forwarding::ToPrimary)
                .await,
        );
        assert!(deleted.existed);
        assert!(deleted.index > first.index);
        let last_index = admin.status().await.unwrap().last_index;
        let resent = written(
            service
                .call(caller.clone(), delete, Forwarding::ToPrimary)
                .await,
        );
        assert_eq!(
            resent, deleted,
            "a resent write is answered with its first result"
        );
        assert_eq!(admin.status().await.unwrap().last_index, last_index);

        // A new delete of the same key is a new write: the key is gone by now.
        let again = write(ids.next(), Write::Delete { key: b"k".to_vec() });
        let second = written(
            service
                .call(caller.clone(), again, Forwarding::ToPrimary)
                .await,
        );
        assert!(!second.existed);
        assert!(second.index > deleted.index);

        // Every request went through the local node first.
        assert_eq!(asked.load(Ordering::SeqCst), 5);
        // Reads are forwarded too.
        let read = Request::Get {
            key: b"k".to_vec(),
            consistency: crate::ReadConsistency::Linearizable,
        };
        match service
            .call(caller.clone(), read, Forwarding::ToPrimary)
            .await
        {
            Response::Value {
                value: None, meta, ..
            } => assert_eq!(meta.node_id, 1),
            other => panic!("expected the primary's empty value, got {other:?}"),
        }

        admin.close().await;
        let _ = stop.send(());
        node.await.unwrap().unwrap();
    }
}
