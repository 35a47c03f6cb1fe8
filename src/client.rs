//! The async client library shared by `kvctl`, the process tests and the benchmarks.
//!
//! A [`Client`] owns one quinn endpoint. Connections to nodes are opened lazily, cached per
//! address and shared by every session made from it with [`Client::session`]. When a request has
//! no connected node to go to, every candidate is dialled at once and the request goes to the
//! first that answers, so a dead node (say, the first configured one) costs no connect timeout.
//! A session is one logical client of the cluster: a random `client_id`, a write `sequence` and
//! one bidirectional stream to the node it currently talks to. It sends one request at a time.
//!
//! Invariants:
//! - A write keeps the [`RequestId`] it was given for every retry, so the primary applies it at
//!   most once however often the client resends it.
//! - Retries happen only for failures that say "try elsewhere or later" (see [`retry_action`]):
//!   redirects, unreachable nodes, no primary yet, shutting down. An answer that settles the
//!   request — write concern not met, refused, invalid — is returned to the caller as is.
//! - Every operation has a deadline; after it the caller gets [`Error::Unavailable`] saying which
//!   nodes were tried and what they last answered.
//!
//! Nodes push [`Topology`] frames on unidirectional streams when they learn of a new primary; the
//! client listens on every connection it opens and updates the primary it sends requests to. A
//! request waiting on another node is then abandoned and resent to the new primary at once, so a
//! write in flight when its primary dies does not wait out its deadline.

pub mod join;
mod watch;

pub use watch::WatchStream;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::Mutex;

use crate::certs::TlsFiles;
use crate::config::tuning::{
    CLIENT_CONNECT_TIMEOUT, CLIENT_DOWN_PENALTY, CLIENT_FIRST_BACKOFF, CLIENT_MAX_BACKOFF,
    CLIENT_READ_ATTEMPT_LIMIT, CLIENT_TIMEOUT_MS, CLIENT_WRITE_ANSWER_GRACE,
};
use crate::config::ClientConfig;
use crate::credentials;
use crate::error::{Error, Result};
use crate::net::tls::{self, connection_error};
use crate::storage::PAIR_FRAMING_BYTES;
use crate::wire::client::{
    ClientRole, ClusterStatus, CredentialsRequest, ReadConsistency, Request, Response,
    ResponseMeta, Secret, TokenInfo, Topology, UserInfo, Write, WriteConcern, WriteResult,
};
use crate::wire::frame::{read_frame, write_frame, MAX_CLIENT_FRAME_BYTES, MAX_KEY_BYTES};
use crate::wire::message::{Epoch, LogIndex, Member, NodeId, RequestId, Versioned};
use crate::wire::CLIENT_ALPN;

/// One page of a scan ([`Client::scan_page`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanPage {
    /// Pairs in key order.
    pub pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Where the next page starts (pass it as `start_after`): the last key of this page, when
    /// more pairs remain after it.
    pub continuation: Option<Vec<u8>>,
    /// The node, epoch and index this page reflects.
    pub meta: ResponseMeta,
}

/// Largest value a put may carry: a request must fit in one client frame
/// ([`MAX_CLIENT_FRAME_BYTES`]) with room for the longest key ([`MAX_KEY_BYTES`]) and the request's
/// envelope (ids, write concern, timeout: a few dozen bytes).
pub const MAX_VALUE_BYTES: usize = MAX_CLIENT_FRAME_BYTES - MAX_KEY_BYTES - 1024;

/// Longest wait in [`Client::close`]. The close frames leave at once; the endpoint is idle only
/// once every connection has drained (three probe timeouts), and a handshake still under way
/// with a dead node drains for over a second: not worth holding a `kvctl` process for.
const CLOSE_FLUSH_LIMIT: Duration = Duration::from_millis(100);

/// Refuses a write whose key or value is over its limit, naming the limit, before anything is
/// sent: the node would refuse it too, but only after the whole frame crossed the network.
pub fn check_write_size(write: &Write) -> Result<()> {
    if let Some(key) = write
        .keys()
        .into_iter()
        .find(|key| key.len() > MAX_KEY_BYTES)
    {
        return Err(Error::InvalidRequest(format!(
            "a key of {} bytes is longer than the limit of {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    // What the request carries besides one key: its value, or a batch's pairs.
    let payload = match write {
        Write::Put { value, .. } | Write::Set { value, .. } => value.len(),
        Write::Append { suffix, .. } => suffix.len(),
        Write::PutMany { pairs } => pairs
            .iter()
            .map(|(key, value)| key.len() + value.len() + PAIR_FRAMING_BYTES)
            .sum(),
        Write::Delete { .. }
        | Write::Increment { .. }
        | Write::GetDelete { .. }
        | Write::Expire { .. } => 0,
    };
    if payload > MAX_VALUE_BYTES {
        return Err(Error::InvalidRequest(format!(
            "a value of {payload} bytes is larger than the limit of {MAX_VALUE_BYTES} bytes \
             (a request must fit in one {MAX_CLIENT_FRAME_BYTES}-byte client frame)"
        )));
    }
    Ok(())
}

/// Settings of a [`Client`] that do not come from TLS.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Deadline of reads, scans and status requests, retries included.
    pub timeout: Duration,
    /// Write concern used by [`Client::put_default`] and `kvctl` when none is given.
    pub default_write_concern: WriteConcern,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_millis(CLIENT_TIMEOUT_MS),
            default_write_concern: WriteConcern::default(),
        }
    }
}

/// What to do after an attempt failed with `error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryAction {
    /// The node named the primary: resend the same request there.
    Redirect { node: NodeId, addr: String },
    /// Pause, then try another node (or the same one again later).
    NextNode,
    /// The error settles the request: hand it to the caller.
    GiveUp,
}

/// The retry policy: which failures are worth another attempt, and where.
///
/// A `NotPrimary` that names the primary is followed there; any other transient failure
/// ([`Error::is_transient`]: not the primary, unreachable, shutting down) tries another node.
/// Everything else is an answer: `WriteConcernNotMet` in particular must not be retried blindly,
/// because the write may still apply and the caller has to decide.
pub fn retry_action(error: &Error) -> RetryAction {
    match error {
        Error::NotPrimary {
            hint: Some((node, addr)),
            ..
        } => RetryAction::Redirect {
            node: *node,
            addr: addr.clone(),
        },
        _ if error.is_transient() => RetryAction::NextNode,
        _ => RetryAction::GiveUp,
    }
}

/// The pause after `previous`: doubled, at most [`CLIENT_MAX_BACKOFF`].
pub fn next_backoff(previous: Duration) -> Duration {
    previous
        .saturating_mul(2)
        .clamp(CLIENT_FIRST_BACKOFF, CLIENT_MAX_BACKOFF)
}

/// `backoff` spread over `[backoff / 2, backoff]` by `unit` in `[0, 1]`, so that clients that
/// failed together do not retry together.
pub fn jittered(backoff: Duration, unit: f64) -> Duration {
    let half = backoff / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// A handle to a replikv cluster: one logical session over a shared endpoint.
pub struct Client {
    shared: Arc<Shared>,
    session: Mutex<Session>,
    /// When set, every request goes to this node and redirects are not followed.
    pinned: Option<String>,
    /// Deadline of reads, scans and status requests made through this session.
    timeout: Duration,
}

/// What every session of one [`Client::connect`] shares.
struct Shared {
    endpoint: quinn::Endpoint,
    /// The configured node addresses, in configuration order.
    seeds: Vec<String>,
    options: ClientOptions,
    topology: Arc<StdMutex<KnownTopology>>,
    /// Bumped whenever a node pushes a topology, so an attempt waiting on a former primary gives
    /// up at once instead of at its deadline.
    topology_pushes: tokio::sync::watch::Sender<u64>,
    /// One slot per address; the slot's lock is held while connecting so that concurrent sessions
    /// share one connection instead of opening one each.
    connections: StdMutex<HashMap<String, Arc<Mutex<Option<quinn::Connection>>>>>,
    /// Addresses whose last connect failed, and until when to avoid them.
    down_until: StdMutex<HashMap<String, Instant>>,
    /// Addresses with a background handshake under way (see [`Shared::dial_in_background`]).
    dialling: StdMutex<HashSet<String>>,
    /// Bumped whenever a background handshake ends, well or badly.
    dials_finished: tokio::sync::watch::Sender<u64>,
}

/// The primary and members as last learned from a response, a status or a pushed topology.
#[derive(Clone, Debug, Default)]
struct KnownTopology {
    epoch: Epoch,
    primary: Option<(NodeId, String)>,
    members: Vec<Member>,
}

impl KnownTopology {
    /// Records that `node` at `addr` leads `epoch`, unless a newer epoch is already known.
    fn learn_primary(&mut self, epoch: Epoch, node: NodeId, addr: &str) {
        if epoch >= self.epoch {
            self.epoch = epoch;
            self.primary = Some((node, addr.to_string()));
        }
    }

    /// Applies a pushed topology or a status answer.
    fn learn(&mut self, epoch: Epoch, primary: Option<NodeId>, members: &[Member]) {
        if epoch < self.epoch {
            return;
        }
        if !members.is_empty() {
            self.members = members.to_vec();
        }
        self.epoch = epoch;
        self.primary = primary.and_then(|id| {
            self.members
                .iter()
                .find(|member| member.id == id)
                .map(|member| (id, member.client_addr.clone()))
        });
    }

    /// Forgets the primary if it lives at `addr` (it just failed us).
    fn forget_primary_at(&mut self, addr: &str) {
        if self
            .primary
            .as_ref()
            .is_some_and(|(_, primary_addr)| primary_addr == addr)
        {
            self.primary = None;
        }
    }
}

/// One logical client: its identity and its stream.
struct Session {
    client_id: u64,
    /// Sequence of the last write issued; the next write uses `last_sequence + 1`.
    last_sequence: u64,
    stream: Option<SessionStream>,
}

/// The bidirectional stream a session uses on one node.
struct SessionStream {
    addr: String,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

/// Where a request may be sent.
#[derive(Clone, Debug)]
enum Target {
    /// The primary: start at the last known one and follow redirects.
    Primary,
    /// Any node, in configuration order: stale reads and status.
    Any { primary_first: bool },
    /// Only this node; its answer is final.
    Pinned(String),
}

impl Client {
    /// A client for the cluster described by `config`: its nodes, certificates and defaults.
    /// Nothing is contacted until the first request.
    pub async fn connect(config: &ClientConfig) -> Result<Client> {
        let files = config.tls_files();
        let options = ClientOptions {
            timeout: Duration::from_millis(config.timeout_ms),
            default_write_concern: config.default_write_concern,
        };
        Client::with_tls(config.nodes.clone(), &files, options)
    }

    /// A client for the nodes at `nodes` (client addresses), authenticating with `files`.
    pub fn with_tls(
        nodes: Vec<String>,
        files: &TlsFiles,
        options: ClientOptions,
    ) -> Result<Client> {
        let quic = tls::client_config(files, CLIENT_ALPN)?;
        Client::with_quic_config(nodes, quic, options)
    }

    /// A client with a ready-made quinn configuration (for tests that need an unusual TLS setup,
    /// such as no certificate at all). Its transport settings are replaced by the crate's own
    /// ([`tls::transport_config`], the same as the nodes'): a connection that hears nothing for
    /// the idle timeout is dead, which is how a session blocked on a crashed or stopped node finds
    /// out and moves on.
    ///
    /// Like every constructor, it must run inside a tokio runtime, which drives the endpoint.
    pub fn with_quic_config(
        nodes: Vec<String>,
        mut quic: quinn::ClientConfig,
        options: ClientOptions,
    ) -> Result<Client> {
        if nodes.is_empty() {
            return Err(Error::Config(
                "no node addresses given: list the cluster's client addresses in `nodes`".into(),
            ));
        }
        quic.transport_config(Arc::new(tls::transport_config()));

        let ipv6 = nodes
            .first()
            .and_then(|addr| addr.parse::<SocketAddr>().ok())
            .is_some_and(|addr| addr.is_ipv6());
        let bind: SocketAddr = if ipv6 {
            SocketAddr::from(([0u16; 8], 0))
        } else {
            SocketAddr::from(([0u8; 4], 0))
        };
        let mut endpoint = quinn::Endpoint::client(bind)
            .map_err(|err| Error::Network(format!("cannot open a UDP socket on {bind}: {err}")))?;
        endpoint.set_default_client_config(quic);

        let shared = Arc::new(Shared {
            endpoint,
            seeds: nodes,
            options,
            topology: Arc::default(),
            topology_pushes: tokio::sync::watch::Sender::new(0),
            connections: StdMutex::default(),
            down_until: StdMutex::default(),
            dialling: StdMutex::default(),
            dials_finished: tokio::sync::watch::Sender::new(0),
        });
        let timeout = shared.options.timeout;
        Ok(Client::new_session(shared, None, timeout))
    }

    fn new_session(shared: Arc<Shared>, pinned: Option<String>, timeout: Duration) -> Client {
        Client {
            shared,
            timeout,
            session: Mutex::new(Session {
                client_id: rand::random(),
                last_sequence: 0,
                stream: None,
            }),
            pinned,
        }
    }

    /// A new logical session (its own client id and stream) sharing this client's endpoint and
    /// connections. Use one per concurrent worker: a session sends one request at a time.
    pub fn session(&self) -> Client {
        Client::new_session(self.shared.clone(), self.pinned.clone(), self.timeout)
    }

    /// A new session that sends every request to the node at `addr` only and does not follow
    /// redirects: for stale reads of one particular node, or asking one node for its view.
    pub fn pinned_to(&self, addr: &str) -> Client {
        Client::new_session(self.shared.clone(), Some(addr.to_string()), self.timeout)
    }

    /// This session with another deadline for reads, scans and status requests (writes take
    /// theirs as an argument). Sessions made from it inherit it.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// The deadline of reads, scans and status requests made through this session.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// This session's client id (the first half of every request id it sends).
    pub async fn client_id(&self) -> u64 {
        self.session.lock().await.client_id
    }

    /// Watches the committed changes of the keys under `prefix`, from log index `from` (after
    /// what the serving node has applied when `None`), in index order. With `initial`, the values
    /// under the prefix at one index come first, then every change after it. Any node serves it;
    /// the stream resumes by itself on another node after a disconnect, a failover or a cut-off,
    /// from the last index it delivered + 1 (see [`WatchStream`]).
    pub fn watch(&self, prefix: &[u8], from: Option<LogIndex>, initial: bool) -> WatchStream {
        WatchStream::new(
            self.shared.clone(),
            prefix.to_vec(),
            from,
            initial,
            self.timeout,
        )
    }

    /// The options this client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.shared.options
    }

    /// Reads `key`. `None` means the key does not exist.
    pub async fn get(
        &self,
        key: impl AsRef<[u8]>,
        consistency: ReadConsistency,
    ) -> Result<(Option<Vec<u8>>, ResponseMeta)> {
        let (versioned, meta) = self.get_versioned(key, consistency).await?;
        Ok((versioned.map(|versioned| versioned.value), meta))
    }

    /// Reads `key` with its version (the index of the entry that last wrote it), which a
    /// compare-and-set names ([`Condition::IfVersion`](crate::wire::client::Condition)).
    pub async fn get_versioned(
        &self,
        key: impl AsRef<[u8]>,
        consistency: ReadConsistency,
    ) -> Result<(Option<Versioned>, ResponseMeta)> {
        let request = Request::Get {
            key: key.as_ref().to_vec(),
            consistency,
        };
        let deadline = Instant::now() + self.timeout;
        match self
            .call(self.read_target(consistency), deadline, |_| request.clone())
            .await?
        {
            Response::Value {
                value,
                version,
                meta,
            } => Ok((value.map(|value| Versioned { version, value }), meta)),
            other => Err(unexpected("a value", &other)),
        }
    }

    /// Reads one page of the pairs whose key starts with `prefix`: those after `start_after`
    /// (the continuation of the previous page; `None` for the first), at most `limit`, and at
    /// most what the node serves in one page (`max_scan_page_pairs`, `max_scan_page_bytes`).
    /// The page is consistent at its own index (`meta.index`); its continuation is `Some` when
    /// more pairs remain. The session's timeout bounds this page only.
    pub async fn scan_page(
        &self,
        prefix: impl AsRef<[u8]>,
        start_after: Option<&[u8]>,
        limit: u32,
        consistency: ReadConsistency,
    ) -> Result<ScanPage> {
        let request = Request::Scan {
            prefix: prefix.as_ref().to_vec(),
            start_after: start_after.map(<[u8]>::to_vec),
            limit,
            consistency,
        };
        let deadline = Instant::now() + self.timeout;
        match self
            .call(self.read_target(consistency), deadline, |_| request.clone())
            .await?
        {
            Response::Pairs { pairs, more, meta } => {
                let continuation = pairs.last().filter(|_| more).map(|(key, _)| key.clone());
                Ok(ScanPage {
                    pairs,
                    continuation,
                    meta,
                })
            }
            other => Err(unexpected("key-value pairs", &other)),
        }
    }

    /// Reads up to `limit` pairs whose key starts with `prefix`, in key order, page by page
    /// ([`Client::scan_page`]), holding them all in memory. Each page is consistent at its own
    /// index and the pages are not one snapshot: a key written during the scan appears with
    /// whatever value the page that covers it saw. Returns the last page's meta.
    pub async fn scan(
        &self,
        prefix: impl AsRef<[u8]>,
        limit: u32,
        consistency: ReadConsistency,
    ) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, ResponseMeta)> {
        let prefix = prefix.as_ref();
        let mut pairs = Vec::new();
        let mut start_after: Option<Vec<u8>> = None;
        loop {
            let remaining = limit.saturating_sub(u32::try_from(pairs.len()).unwrap_or(u32::MAX));
            let page = self
                .scan_page(prefix, start_after.as_deref(), remaining, consistency)
                .await?;
            pairs.extend(page.pairs);
            match page.continuation {
                Some(last) if pairs.len() < limit as usize => start_after = Some(last),
                _ => return Ok((pairs, page.meta)),
            }
        }
    }

    /// Sets `key` to `value`, acknowledged once `write_concern` is met. `timeout` bounds the whole
    /// operation, retries included; the node gets what is left of it as its write-concern timeout.
    pub async fn put(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        write_concern: WriteConcern,
        timeout: Duration,
    ) -> Result<(WriteResult, ResponseMeta)> {
        let write = Write::Put {
            key: key.as_ref().to_vec(),
            value: value.as_ref().to_vec(),
        };
        self.write(write, write_concern, timeout).await
    }

    /// [`Client::put`] with the configured default write concern and timeout.
    pub async fn put_default(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(WriteResult, ResponseMeta)> {
        let write_concern = self.shared.options.default_write_concern;
        self.put(key, value, write_concern, self.timeout).await
    }

    /// Removes `key`; `WriteResult::existed` says whether it was there.
    pub async fn delete(
        &self,
        key: impl AsRef<[u8]>,
        write_concern: WriteConcern,
        timeout: Duration,
    ) -> Result<(WriteResult, ResponseMeta)> {
        let write = Write::Delete {
            key: key.as_ref().to_vec(),
        };
        self.write(write, write_concern, timeout).await
    }

    /// Asks the primary to add `member` as a non-voting learner; the primary streams it the log
    /// and makes it a voter once it has caught up. Needs an admin certificate, or the node
    /// certificate of `member` itself (how `kvnode --join` registers). Succeeds at once, with
    /// `existed` set, if `member` is already a member with the same addresses, so a retry after an
    /// unknown outcome is safe. Redirects to the primary are followed until the session's deadline.
    pub async fn add_member(&self, member: Member) -> Result<(WriteResult, ResponseMeta)> {
        let request = Request::AddMember { member };
        self.change_membership(request).await
    }

    /// Asks the primary to remove member `id` (admin certificates only). Removing the primary
    /// makes it step down once the change is committed; the others elect a new one.
    pub async fn remove_member(&self, id: NodeId) -> Result<(WriteResult, ResponseMeta)> {
        self.change_membership(Request::RemoveMember { id }).await
    }

    async fn change_membership(&self, request: Request) -> Result<(WriteResult, ResponseMeta)> {
        let target = match &self.pinned {
            Some(addr) => Target::Pinned(addr.clone()),
            None => Target::Primary,
        };
        let deadline = Instant::now() + self.timeout;
        match self.call(target, deadline, |_| request.clone()).await? {
            Response::Written { result, meta } => Ok((result, meta)),
            other => Err(unexpected("a membership change acknowledgement", &other)),
        }
    }

    // --- users and API tokens (admin role; served by the primary) ---

    /// Adds user `name` with `role` and `password` (hashed by the primary, never stored in clear).
    /// Refused if the name is taken; a retry of this same request is recognised.
    pub async fn user_add(
        &self,
        name: &str,
        role: ClientRole,
        password: &str,
    ) -> Result<WriteResult> {
        let (name, password) = (name.to_string(), Secret(password.to_string()));
        self.change_credentials(|request_id| {
            Request::Credentials(CredentialsRequest::UserAdd {
                request_id,
                name: name.clone(),
                role,
                password: password.clone(),
            })
        })
        .await
    }

    /// Sets the password of user `name`.
    pub async fn user_passwd(&self, name: &str, password: &str) -> Result<WriteResult> {
        let (name, password) = (name.to_string(), Secret(password.to_string()));
        self.change_credentials(|request_id| {
            Request::Credentials(CredentialsRequest::UserPasswd {
                request_id,
                name: name.clone(),
                password: password.clone(),
            })
        })
        .await
    }

    /// Removes user `name`.
    pub async fn user_remove(&self, name: &str) -> Result<WriteResult> {
        let name = name.to_string();
        self.change_credentials(|request_id| {
            Request::Credentials(CredentialsRequest::UserRemove {
                request_id,
                name: name.clone(),
            })
        })
        .await
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<UserInfo>> {
        match self
            .primary_call(Request::Credentials(CredentialsRequest::UserList))
            .await?
        {
            Response::Users(users) => Ok(users),
            other => Err(unexpected("a list of users", &other)),
        }
    }

    /// Makes an API token with `role`, valid for `ttl` (or until revoked), named `name`. The
    /// token is drawn here and only its digest is sent: the returned token is the one and only
    /// copy. Also returns the token's id, as `kvctl token list` shows it.
    pub async fn token_create(
        &self,
        name: &str,
        role: ClientRole,
        ttl: Option<Duration>,
    ) -> Result<(String, String)> {
        let token = credentials::new_token();
        let digest = credentials::token_digest(&token);
        let name = name.to_string();
        let ttl_ms = ttl.map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        self.change_credentials(|request_id| {
            Request::Credentials(CredentialsRequest::TokenCreate {
                request_id,
                digest,
                name: name.clone(),
                role,
                ttl_ms,
            })
        })
        .await?;
        Ok((token, credentials::token_id(&digest)))
    }

    /// Every API token (never a secret), oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        match self
            .primary_call(Request::Credentials(CredentialsRequest::TokenList))
            .await?
        {
            Response::Tokens(tokens) => Ok(tokens),
            other => Err(unexpected("a list of tokens", &other)),
        }
    }

    /// Revokes the one token whose id starts with `token`, or whose name is `token`.
    pub async fn token_revoke(&self, token: &str) -> Result<WriteResult> {
        let token = token.to_string();
        self.change_credentials(|request_id| {
            Request::Credentials(CredentialsRequest::TokenRevoke {
                request_id,
                token: token.clone(),
            })
        })
        .await
    }

    /// Sends a change of users or tokens to the primary under a new request id of this session,
    /// the same id on every attempt.
    async fn change_credentials(
        &self,
        build: impl Fn(RequestId) -> Request,
    ) -> Result<WriteResult> {
        let request_id = self.next_request_id().await;
        match self.primary_call(build(request_id)).await? {
            Response::Written { result, .. } => Ok(result),
            other => Err(unexpected("a write acknowledgement", &other)),
        }
    }

    /// The id of this session's next write.
    async fn next_request_id(&self) -> RequestId {
        let mut session = self.session.lock().await;
        session.last_sequence += 1;
        RequestId {
            client_id: session.client_id,
            sequence: session.last_sequence,
        }
    }

    /// Sends `request` to the primary (or the pinned node), following redirects until the
    /// session's deadline.
    async fn primary_call(&self, request: Request) -> Result<Response> {
        let target = match &self.pinned {
            Some(addr) => Target::Pinned(addr.clone()),
            None => Target::Primary,
        };
        let deadline = Instant::now() + self.timeout;
        self.call(target, deadline, |_| request.clone()).await
    }

    /// The cluster's status from any reachable node, preferring the primary's view (it alone
    /// knows each member's lag and health).
    pub async fn status(&self) -> Result<ClusterStatus> {
        let target = match &self.pinned {
            Some(addr) => Target::Pinned(addr.clone()),
            None => Target::Any {
                primary_first: true,
            },
        };
        let deadline = Instant::now() + self.timeout;
        let status = self.call_status(target, deadline).await?;
        if status.role == crate::wire::client::Role::Primary || self.pinned.is_some() {
            return Ok(status);
        }
        // A backup answered: ask the primary it names, but keep the backup's view if the primary
        // cannot be reached.
        let primary_addr = status.primary.and_then(|primary| {
            status
                .members
                .iter()
                .find(|row| row.member.id == primary)
                .map(|row| row.member.client_addr.clone())
        });
        if let Some(addr) = primary_addr {
            let deadline = Instant::now() + self.timeout.min(CLIENT_CONNECT_TIMEOUT);
            if let Ok(primary_status) = self.call_status(Target::Pinned(addr), deadline).await {
                return Ok(primary_status);
            }
        }
        Ok(status)
    }

    /// The view of the node at `addr` only.
    pub async fn status_of(&self, addr: &str) -> Result<ClusterStatus> {
        let deadline = Instant::now() + self.timeout;
        self.call_status(Target::Pinned(addr.to_string()), deadline)
            .await
    }

    /// Closes every connection of every session of this client and waits briefly for the nodes
    /// to be told, so they do not wait for an idle timeout.
    pub async fn close(&self) {
        self.shared.endpoint.close(0u32.into(), b"client closed");
        let _ = tokio::time::timeout(CLOSE_FLUSH_LIMIT, self.shared.endpoint.wait_idle()).await;
    }

    /// Sends `request`, built elsewhere, to the primary with the usual redirects and retries, and
    /// returns the primary's response (an error answer as `Err`). A node's front doors use it to
    /// forward a request its own node cannot serve (see `docs/ARCHITECTURE.md`, the front doors).
    ///
    /// A write keeps its [`RequestId`] on every attempt, so the primary applies it at most once;
    /// only its `timeout_ms` shrinks to what is left of `timeout`. Each call runs on a session of
    /// its own, so concurrent forwards do not queue behind one another.
    pub async fn forward(&self, request: Request, timeout: Duration) -> Result<Response> {
        if let Request::Write { write, .. } = &request {
            check_write_size(write)?;
        }
        let target = match &self.pinned {
            Some(addr) => Target::Pinned(addr.clone()),
            None => match (request.read_consistency(), &request) {
                (Some(consistency), _) => self.read_target(consistency),
                (None, Request::Status) => Target::Any {
                    primary_first: true,
                },
                (None, _) => Target::Primary,
            },
        };
        let deadline = Instant::now() + timeout;
        let build = |remaining: Duration| match &request {
            Request::Write {
                request_id,
                write,
                write_concern,
                ..
            } => Request::Write {
                request_id: *request_id,
                write: write.clone(),
                write_concern: *write_concern,
                timeout_ms: u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
            },
            other => other.clone(),
        };
        self.session().call(target, deadline, build).await
    }

    async fn call_status(&self, target: Target, deadline: Instant) -> Result<ClusterStatus> {
        match self.call(target, deadline, |_| Request::Status).await? {
            Response::Status(status) => {
                let members: Vec<Member> = status
                    .members
                    .iter()
                    .map(|row| row.member.clone())
                    .collect();
                lock(&self.shared.topology).learn(status.epoch, status.primary, &members);
                Ok(*status)
            }
            other => Err(unexpected("a status", &other)),
        }
    }

    /// Sends any [`Write`] (a read-modify-write, an expiry change, a batch) with one request id
    /// kept over every retry, acknowledged once `write_concern` is met; the primary's answer is
    /// in [`WriteResult::answer`].
    pub async fn write(
        &self,
        write: Write,
        write_concern: WriteConcern,
        timeout: Duration,
    ) -> Result<(WriteResult, ResponseMeta)> {
        check_write_size(&write)?;
        let deadline = Instant::now() + timeout;
        let request_id = self.next_request_id().await;
        let target = match &self.pinned {
            Some(addr) => Target::Pinned(addr.clone()),
            None => Target::Primary,
        };
        // Every attempt carries the same request id; only the node's timeout shrinks.
        let build = |remaining: Duration| Request::Write {
            request_id,
            write: write.clone(),
            write_concern,
            timeout_ms: u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
        };
        match self.call(target, deadline, build).await? {
            Response::Written { result, meta } => Ok((result, meta)),
            other => Err(unexpected("a write acknowledgement", &other)),
        }
    }

    fn read_target(&self, consistency: ReadConsistency) -> Target {
        match (&self.pinned, consistency) {
            (Some(addr), _) => Target::Pinned(addr.clone()),
            (None, ReadConsistency::Stale) => Target::Any {
                primary_first: false,
            },
            (None, _) => Target::Primary,
        }
    }

    /// Sends the request built by `build` (given the time left) until a node settles it or the
    /// deadline passes, following the retry policy of [`retry_action`].
    async fn call(
        &self,
        target: Target,
        deadline: Instant,
        build: impl Fn(Duration) -> Request,
    ) -> Result<Response> {
        let is_write = matches!(build(Duration::ZERO), Request::Write { .. });
        let mut session = self.session.lock().await;
        let mut backoff = CLIENT_FIRST_BACKOFF;
        let mut attempt_number = 0usize;
        let mut redirect: Option<String> = None;
        // Set while following a redirect; a second redirect in a row (two nodes naming each
        // other during an election) is followed only after a pause.
        let mut redirected = false;
        let mut last_failure: Option<(String, Error)> = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(self.deadline_error(&target, is_write, last_failure));
            }
            let addr = match (&target, redirect.take()) {
                (Target::Pinned(addr), _) => addr.clone(),
                (_, Some(addr)) => addr,
                (_, None) => {
                    self.choose_candidate(&target, attempt_number, deadline)
                        .await
                }
            };
            attempt_number += 1;
            let remaining = deadline - now;
            let request = build(remaining);
            // A write may legitimately take the whole timeout (the node answers when its write
            // concern is met or not); a read is answered at once or not at all, so a node that
            // died or froze mid-read is given up on quickly and the read goes elsewhere.
            let answered_at_once =
                request.read_consistency().is_some() || matches!(request, Request::Status);
            let wait = if answered_at_once {
                remaining.min(CLIENT_READ_ATTEMPT_LIMIT)
            } else {
                remaining + CLIENT_WRITE_ANSWER_GRACE
            };
            let follows_primary = matches!(target, Target::Primary);
            let error = match self
                .attempt(&mut session, &addr, &request, wait, follows_primary)
                .await
            {
                Ok(response) => {
                    if matches!(target, Target::Primary) {
                        if let Some(meta) = response_meta(&response) {
                            lock(&self.shared.topology).learn_primary(
                                meta.epoch,
                                meta.node_id,
                                &addr,
                            );
                        }
                    }
                    return Ok(response);
                }
                Err(error) => error,
            };
            tracing::debug!(%addr, %error, "request attempt failed");
            match (retry_action(&error), &target) {
                (RetryAction::GiveUp, _) | (RetryAction::Redirect { .. }, Target::Pinned(_)) => {
                    return Err(error);
                }
                (RetryAction::Redirect { node, addr: hint }, _) => {
                    let epoch = match &error {
                        Error::NotPrimary { epoch, .. } => *epoch,
                        _ => 0,
                    };
                    lock(&self.shared.topology).learn_primary(epoch, node, &hint);
                    last_failure = Some((addr.clone(), error));
                    // A redirect to where we just were, to a node that just failed to connect,
                    // or after another redirect means the cluster is between primaries: wait
                    // before following.
                    if redirected || hint == addr || self.shared.is_down(&hint) {
                        self.pause(&mut backoff, deadline).await;
                        if self.shared.is_down(&hint) {
                            continue;
                        }
                    }
                    redirected = true;
                    redirect = Some(hint);
                }
                (RetryAction::NextNode, _) => {
                    redirected = false;
                    lock(&self.shared.topology).forget_primary_at(&addr);
                    last_failure = Some((addr, error));
                    self.pause(&mut backoff, deadline).await;
                }
            }
        }
    }

    /// Sleeps for the jittered backoff (never past the deadline) and grows it.
    async fn pause(&self, backoff: &mut Duration, deadline: Instant) {
        let unit: f64 = rand::thread_rng().gen();
        let pause =
            jittered(*backoff, unit).min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
        *backoff = next_backoff(*backoff);
    }

    /// The address for the `attempt_number`-th attempt: the known primary if it is connected,
    /// else, among the candidates (see [`candidates`]), those with an open connection, in
    /// rotation. The others are dialled in parallel in the background, and while none is
    /// connected this waits for the first handshake to end. So a dead node, first in the
    /// configuration or a former primary, costs no connect timeout while another node answers.
    async fn choose_candidate(
        &self,
        target: &Target,
        attempt_number: usize,
        deadline: Instant,
    ) -> String {
        let primary_first = match target {
            Target::Primary => true,
            Target::Any { primary_first } => *primary_first,
            Target::Pinned(addr) => return addr.clone(),
        };
        let mut dials_finished = self.shared.dials_finished.subscribe();
        let pool = |shared: &Shared| {
            let topology = lock(&shared.topology);
            let down = lock(&shared.down_until);
            candidates(
                &shared.seeds,
                &topology,
                primary_first,
                &down,
                Instant::now(),
            )
        };
        // Dialled once per attempt: a node that refused the handshake (TLS) is not marked down,
        // and the attempt itself must meet that refusal rather than redial it here.
        self.shared.dial_in_background(&pool(&self.shared));
        loop {
            let pool = pool(&self.shared);
            let connected: Vec<&String> = pool
                .iter()
                .filter(|addr| self.shared.live_connection(addr).is_some())
                .collect();
            // The known primary whenever it is connected, and while a dial to it is under way:
            // rotating onto another connected node could pick a dead former primary whose
            // connection has not timed out yet, and a write would wait there for its whole
            // timeout. Only a failed dial (the primary is marked down) lets the rotation go on.
            let primary = lock(&self.shared.topology)
                .primary
                .clone()
                .filter(|_| primary_first);
            if let Some((_, addr)) = primary {
                if connected.contains(&&addr) {
                    return addr;
                }
                if self.shared.is_dialling(&addr) && Instant::now() < deadline {
                    let _ =
                        tokio::time::timeout_at(deadline.into(), dials_finished.changed()).await;
                    continue;
                }
            }
            if !connected.is_empty() {
                return connected[attempt_number % connected.len()].clone();
            }
            if !self.shared.dial_under_way() || Instant::now() >= deadline {
                // Nothing answers: the attempt goes to the usual candidate and says why it fails.
                return rotate(&pool, attempt_number);
            }
            let _ = tokio::time::timeout_at(deadline.into(), dials_finished.changed()).await;
        }
    }

    /// The error for a request that ran out of time.
    fn deadline_error(
        &self,
        target: &Target,
        is_write: bool,
        last_failure: Option<(String, Error)>,
    ) -> Error {
        let tried = match target {
            Target::Pinned(addr) => addr.clone(),
            _ => self.shared.seeds.join(", "),
        };
        let error = match last_failure {
            None => Error::Unavailable(format!(
                "no answer from {tried} before the deadline: retry with a longer --timeout"
            )),
            Some((addr, error @ Error::Network(_))) => Error::Unavailable(format!(
                "no node reachable at {tried} (last: {addr}: {error}): is the cluster running? \
                 start one with `kvnode dev`, or check `nodes` in the client config"
            )),
            Some((addr, error)) => Error::Unavailable(format!(
                "no primary could serve the request in time (last answer from {addr}: {error}): \
                 the cluster may be electing a primary or lack a majority; check `kvctl status` \
                 and retry"
            )),
        };
        match error {
            Error::Unavailable(message) if is_write => Error::Unavailable(format!(
                "{message} (the write was not acknowledged, but it may still apply: read the key \
                 to find out)"
            )),
            other => other,
        }
    }

    /// One request on the session's stream to `addr`, waiting at most `wait` for the answer.
    /// Transport failures come back as `Error::Network`, TLS refusals as `Error::Refused`, and
    /// a node's error answer as that error.
    async fn attempt(
        &self,
        session: &mut Session,
        addr: &str,
        request: &Request,
        wait: Duration,
        follows_primary: bool,
    ) -> Result<Response> {
        let give_up_at = Instant::now() + wait;
        // A request meant for the primary is abandoned as soon as a node announces another one:
        // the old primary may be dead, and the retry keeps the request id, so it applies once.
        let mut pushes = self.shared.topology_pushes.subscribe();
        let primary_moved = async {
            loop {
                if pushes.changed().await.is_err() {
                    return std::future::pending().await;
                }
                let primary = lock(&self.shared.topology).primary.clone();
                if primary.is_some_and(|(_, primary_addr)| primary_addr != addr) {
                    return;
                }
            }
        };
        let exchange = async {
            let stream = self.session_stream(session, addr, give_up_at).await?;
            let connection = stream.connection.clone();
            let result = async {
                write_frame(&mut stream.send, request, MAX_CLIENT_FRAME_BYTES).await?;
                match read_frame::<Response, _>(&mut stream.recv, MAX_CLIENT_FRAME_BYTES).await? {
                    Some(response) => Ok(response),
                    None => Err(Error::Network(format!("{addr} closed the session stream"))),
                }
            }
            .await;
            result.map_err(|error| refine_transport_error(addr, &connection, error))
        };
        let outcome = tokio::select! {
            answered = tokio::time::timeout_at(give_up_at.into(), exchange) => match answered {
                Ok(outcome) => outcome,
                Err(_) => Err(Error::Unavailable(format!(
                    "{addr} did not answer within {} ms",
                    wait.as_millis()
                ))),
            },
            () = primary_moved, if follows_primary => Err(Error::Network(format!(
                "{addr} is no longer the primary; resending to the new one"
            ))),
        };
        match outcome {
            Ok(Response::Error(error)) => Err(error),
            Ok(response) => Ok(response),
            Err(error) => {
                // The stream's state is unknown (a late answer could still arrive on it), so it
                // is never reused after a failure.
                if let Some(mut stream) = session.stream.take() {
                    let _ = stream.send.reset(0u32.into());
                }
                Err(error)
            }
        }
    }

    /// The session's stream to `addr`, opening a connection and a stream as needed.
    async fn session_stream<'s>(
        &self,
        session: &'s mut Session,
        addr: &str,
        give_up_at: Instant,
    ) -> Result<&'s mut SessionStream> {
        let reusable = session.stream.as_ref().is_some_and(|stream| {
            stream.addr == addr && stream.connection.close_reason().is_none()
        });
        if !reusable {
            if let Some(mut old) = session.stream.take() {
                let _ = old.send.finish();
            }
            let connection = self.shared.connection(addr, give_up_at).await?;
            let (send, recv) = connection
                .open_bi()
                .await
                .map_err(|err| connection_error(addr, &err))?;
            session.stream = Some(SessionStream {
                addr: addr.to_string(),
                connection,
                send,
                recv,
            });
        }
        session
            .stream
            .as_mut()
            .ok_or_else(|| Error::Internal("session stream vanished".into()))
    }
}

impl Shared {
    fn is_down(&self, addr: &str) -> bool {
        lock(&self.down_until)
            .get(addr)
            .is_some_and(|until| *until > Instant::now())
    }

    /// The cached connection to `addr` if it is open and no handshake with it is under way.
    fn live_connection(&self, addr: &str) -> Option<quinn::Connection> {
        let slot = lock(&self.connections).get(addr)?.clone();
        let slot = slot.try_lock().ok()?;
        slot.as_ref()
            .filter(|connection| connection.close_reason().is_none())
            .cloned()
    }

    /// Starts a handshake, in the background, with each of `addrs` that has no open connection,
    /// is not being dialled already and did not just fail. Each finished dial bumps
    /// `dials_finished`; a successful one leaves its connection in the cache.
    fn dial_in_background(self: &Arc<Shared>, addrs: &[String]) {
        for addr in addrs {
            if self.is_down(addr) || self.live_connection(addr).is_some() {
                continue;
            }
            if !lock(&self.dialling).insert(addr.clone()) {
                continue;
            }
            let shared = self.clone();
            let addr = addr.clone();
            tokio::spawn(async move {
                let give_up_at = Instant::now() + CLIENT_CONNECT_TIMEOUT;
                if let Err(error) = shared.connection(&addr, give_up_at).await {
                    tracing::debug!(%addr, %error, "background dial failed");
                }
                lock(&shared.dialling).remove(&addr);
                shared.dials_finished.send_modify(|count| *count += 1);
            });
        }
    }

    fn is_dialling(&self, addr: &str) -> bool {
        lock(&self.dialling).contains(addr)
    }

    fn dial_under_way(&self) -> bool {
        !lock(&self.dialling).is_empty()
    }

    /// The cached connection to `addr`, or a new one.
    async fn connection(&self, addr: &str, give_up_at: Instant) -> Result<quinn::Connection> {
        let slot = lock(&self.connections)
            .entry(addr.to_string())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(connection) = slot.as_ref() {
            if connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
        }
        *slot = None;
        // Another session may just have failed to reach it while this one waited for the slot:
        // do not spend a second connect timeout on the same dead node.
        if self.is_down(addr) {
            return Err(Error::Network(format!(
                "{addr} was unreachable moments ago; trying again shortly"
            )));
        }
        // Measured before waiting: once the wait is over there is no time left to report.
        let connect_limit = give_up_at
            .saturating_duration_since(Instant::now())
            .min(CLIENT_CONNECT_TIMEOUT);
        let result = tokio::time::timeout(connect_limit, self.handshake(addr)).await;
        let connection = match result {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => {
                // A refusal (TLS, configuration) is an answer, not an absence: the next attempt
                // must meet it again and report it.
                if error.is_transient() {
                    self.mark_down(addr);
                }
                return Err(error);
            }
            Err(_) => {
                self.mark_down(addr);
                return Err(Error::Network(format!(
                    "no QUIC handshake with {addr} within {} ms (is the node running?)",
                    connect_limit.as_millis()
                )));
            }
        };
        lock(&self.down_until).remove(addr);
        tokio::spawn(listen_for_topology(
            connection.clone(),
            self.topology.clone(),
            self.topology_pushes.clone(),
        ));
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn handshake(&self, addr: &str) -> Result<quinn::Connection> {
        let socket_addr = tokio::net::lookup_host(addr)
            .await
            .map_err(|err| Error::Config(format!("cannot resolve node address {addr:?}: {err}")))?
            .next()
            .ok_or_else(|| Error::Config(format!("node address {addr:?} resolves to nothing")))?;
        let server_name = tls::server_name(addr)?;
        let connecting = self
            .endpoint
            .connect(socket_addr, &server_name)
            .map_err(|err| Error::Network(format!("cannot connect to {addr}: {err}")))?;
        connecting.await.map_err(|err| connection_error(addr, &err))
    }

    fn mark_down(&self, addr: &str) {
        lock(&self.down_until).insert(addr.to_string(), Instant::now() + CLIENT_DOWN_PENALTY);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"client dropped");
    }
}

/// The addresses a request may go to, in order of preference: the known primary (when
/// `primary_first`), then the configured addresses, then any other known member. Addresses that
/// just failed to connect are left out while others remain.
fn candidates(
    seeds: &[String],
    topology: &KnownTopology,
    primary_first: bool,
    down_until: &HashMap<String, Instant>,
    now: Instant,
) -> Vec<String> {
    let mut candidates: Vec<&String> = Vec::new();
    if primary_first {
        if let Some((_, addr)) = &topology.primary {
            candidates.push(addr);
        }
    }
    let known = seeds
        .iter()
        .chain(topology.members.iter().map(|member| &member.client_addr));
    for addr in known {
        if !candidates.contains(&addr) {
            candidates.push(addr);
        }
    }
    let up: Vec<&String> = candidates
        .iter()
        .copied()
        .filter(|addr| down_until.get(*addr).is_none_or(|until| *until <= now))
        .collect();
    let pool = if up.is_empty() { candidates } else { up };
    pool.into_iter().cloned().collect()
}

/// The `attempt_number`-th address of `pool`, rotating, so that the first attempt goes to the
/// first one.
fn rotate(pool: &[String], attempt_number: usize) -> String {
    match pool.len() {
        0 => String::new(),
        len => pool[attempt_number % len].clone(),
    }
}

/// Reads pushed [`Topology`] frames from the node until the connection ends.
async fn listen_for_topology(
    connection: quinn::Connection,
    topology: Arc<StdMutex<KnownTopology>>,
    pushes: tokio::sync::watch::Sender<u64>,
) {
    while let Ok(mut stream) = connection.accept_uni().await {
        loop {
            match read_frame::<Topology, _>(&mut stream, MAX_CLIENT_FRAME_BYTES).await {
                Ok(Some(pushed)) => {
                    tracing::debug!(epoch = pushed.epoch, primary = ?pushed.primary, "topology pushed");
                    lock(&topology).learn(pushed.epoch, pushed.primary, &pushed.members);
                    pushes.send_modify(|count| *count += 1);
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(%error, "bad topology frame; ignoring the stream");
                    break;
                }
            }
        }
    }
}

/// Replaces a generic transport error with what the connection's close reason says, when the
/// connection died of a TLS failure.
fn refine_transport_error(addr: &str, connection: &quinn::Connection, error: Error) -> Error {
    match (&error, connection.close_reason()) {
        (Error::Network(_) | Error::Protocol(_), Some(reason)) => connection_error(addr, &reason),
        _ => error,
    }
}

fn response_meta(response: &Response) -> Option<ResponseMeta> {
    match response {
        Response::Value { meta, .. }
        | Response::Pairs { meta, .. }
        | Response::Written { meta, .. }
        | Response::Expiry { meta, .. }
        | Response::KeyCount { meta, .. } => Some(*meta),
        Response::Status(_) | Response::Error(_) | Response::Users(_) | Response::Tokens(_) => None,
    }
}

fn unexpected(wanted: &str, got: &Response) -> Error {
    let kind = match got {
        Response::Value { .. } => "a value",
        Response::Pairs { .. } => "key-value pairs",
        Response::Written { .. } => "a write acknowledgement",
        Response::Expiry { .. } => "an expiry",
        Response::KeyCount { .. } => "a key count",
        Response::Status(_) => "a status",
        Response::Error(_) => "an error",
        Response::Users(_) => "a list of users",
        Response::Tokens(_) => "a list of tokens",
    };
    Error::Protocol(format!("expected {wanted} from the node but got {kind}"))
}

/// Locks a std mutex, recovering the data if a panicking thread poisoned it: every value kept
/// behind these locks is valid after any single update.
pub(crate) fn lock<T>(mutex: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_follow_the_hint() {
        let error = Error::NotPrimary {
            node: 2,
            epoch: 4,
            hint: Some((3, "127.0.0.13:7379".into())),
        };
        assert_eq!(
            retry_action(&error),
            RetryAction::Redirect {
                node: 3,
                addr: "127.0.0.13:7379".into()
            }
        );
    }

    #[test]
    fn transient_failures_try_another_node() {
        let transient = [
            Error::NotPrimary {
                node: 1,
                epoch: 1,
                hint: None,
            },
            Error::Network("connection lost".into()),
            Error::Unavailable("no majority".into()),
            Error::ShuttingDown,
        ];
        for error in transient {
            assert_eq!(retry_action(&error), RetryAction::NextNode, "{error:?}");
        }
    }

    #[test]
    fn settled_answers_are_returned() {
        let settled = [
            Error::WriteConcernNotMet {
                acknowledged: 1,
                required: 2,
            },
            Error::WriteConcernImpossible {
                required: 5,
                voters: 3,
            },
            Error::Refused("readonly".into()),
            Error::InvalidRequest("empty key".into()),
            Error::Protocol("bad frame".into()),
            Error::StaleRequest {
                client_id: 1,
                sequence: 1,
                latest: 2,
            },
        ];
        for error in settled {
            assert_eq!(retry_action(&error), RetryAction::GiveUp, "{error:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut backoff = CLIENT_FIRST_BACKOFF;
        let mut seen = vec![backoff];
        for _ in 0..8 {
            backoff = next_backoff(backoff);
            seen.push(backoff);
        }
        assert_eq!(seen[1], CLIENT_FIRST_BACKOFF * 2);
        assert_eq!(seen[2], CLIENT_FIRST_BACKOFF * 4);
        assert!(seen.windows(2).all(|pair| pair[1] >= pair[0]));
        assert_eq!(*seen.last().unwrap(), CLIENT_MAX_BACKOFF);
        assert_eq!(next_backoff(Duration::ZERO), CLIENT_FIRST_BACKOFF);
        assert_eq!(next_backoff(Duration::MAX), CLIENT_MAX_BACKOFF);
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        let backoff = Duration::from_millis(400);
        assert_eq!(jittered(backoff, 0.0), Duration::from_millis(200));
        assert_eq!(jittered(backoff, 1.0), backoff);
        assert_eq!(jittered(backoff, 7.0), backoff);
        let middle = jittered(backoff, 0.5);
        assert!(middle > Duration::from_millis(200) && middle < backoff);
    }

    fn member(id: NodeId) -> Member {
        Member {
            id,
            client_addr: format!("127.0.0.{}:7379", 10 + id),
            peer_addr: format!("127.0.0.{}:7380", 10 + id),
            voter: true,
        }
    }

    #[test]
    fn topology_ignores_older_epochs() {
        let members = vec![member(1), member(2)];
        let mut topology = KnownTopology::default();
        topology.learn(5, Some(2), &members);
        assert_eq!(topology.primary, Some((2, "127.0.0.12:7379".into())));
        topology.learn(4, Some(1), &members);
        assert_eq!(topology.primary, Some((2, "127.0.0.12:7379".into())));
        topology.learn_primary(3, 1, "127.0.0.11:7379");
        assert_eq!(topology.primary, Some((2, "127.0.0.12:7379".into())));
        topology.learn(6, None, &members);
        assert_eq!(topology.primary, None);
        topology.learn_primary(6, 1, "127.0.0.11:7379");
        assert_eq!(topology.primary, Some((1, "127.0.0.11:7379".into())));
    }

    #[test]
    fn candidates_start_at_the_primary_and_skip_down_nodes() {
        let seeds: Vec<String> = vec!["127.0.0.11:7379".into(), "127.0.0.12:7379".into()];
        let mut topology = KnownTopology::default();
        topology.learn(3, Some(3), &[member(1), member(2), member(3)]);
        let now = Instant::now();
        let none_down = HashMap::new();
        let pick = |primary_first, down: &HashMap<String, Instant>, attempt| {
            rotate(
                &candidates(&seeds, &topology, primary_first, down, now),
                attempt,
            )
        };
        assert_eq!(pick(true, &none_down, 0), "127.0.0.13:7379");
        assert_eq!(pick(true, &none_down, 1), "127.0.0.11:7379");
        assert_eq!(pick(true, &none_down, 2), "127.0.0.12:7379");
        assert_eq!(pick(true, &none_down, 3), "127.0.0.13:7379");
        // Stale reads start at the first configured node.
        assert_eq!(pick(false, &none_down, 0), "127.0.0.11:7379");

        let mut down = HashMap::new();
        down.insert("127.0.0.13:7379".to_string(), now + Duration::from_secs(1));
        assert_eq!(pick(true, &down, 0), "127.0.0.11:7379");
        assert_eq!(pick(true, &down, 1), "127.0.0.12:7379");
        // A penalty that has expired no longer counts.
        down.insert("127.0.0.13:7379".to_string(), now);
        assert_eq!(pick(true, &down, 0), "127.0.0.13:7379");
        // When every address is down, they are tried anyway.
        let all_down: HashMap<String, Instant> = (1..=3)
            .map(|id| (member(id).client_addr, now + Duration::from_secs(1)))
            .collect();
        assert_eq!(pick(true, &all_down, 0), "127.0.0.13:7379");
    }

    /// A client of `addr` whose TLS trusts no CA: enough to start handshakes, never to finish one.
    fn client_trusting_nobody(addr: &str) -> Client {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let quic = quinn::ClientConfig::new(Arc::new(quic));
        Client::with_quic_config(vec![addr.to_string()], quic, ClientOptions::default()).unwrap()
    }

    #[tokio::test]
    async fn a_handshake_timeout_says_how_long_it_waited() {
        // A bound socket that never answers: the handshake can only time out.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let client = client_trusting_nobody(&addr);
        let wait = Duration::from_millis(300);
        let error = client
            .shared
            .connection(&addr, Instant::now() + wait)
            .await
            .unwrap_err();
        let message = error.to_string();
        let waited_ms: u128 = message
            .split("within ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| panic!("no wait in {message:?}"));
        assert!((250..=300).contains(&waited_ms), "{message}");
    }

    #[test]
    fn forgetting_a_failed_primary() {
        let mut topology = KnownTopology::default();
        topology.learn_primary(2, 1, "127.0.0.11:7379");
        topology.forget_primary_at("127.0.0.12:7379");
        assert!(topology.primary.is_some());
        topology.forget_primary_at("127.0.0.11:7379");
        assert!(topology.primary.is_none());
    }
}
