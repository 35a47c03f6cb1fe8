//! The HTTP door: HTTP/1.1 with JSON (curl, browsers, load balancers, Prometheus), over TLS with
//! the cluster CA, or plain on a dev cluster.
//!
//! Endpoints (docs/PROTOCOL.md, "HTTP API"):
//! - `GET /healthz` (the process runs and its storage answers) and `GET /readyz` (the node knows
//!   a primary and is not catching up): no credentials, answered from what the node already
//!   published, never through the event loop;
//! - `GET /metrics`: the node's [`Metrics`] in the Prometheus text format, no credentials;
//! - `GET /v1/status`, `GET /v1/members`: the node's view of the cluster, as `kvctl status --json`
//!   and `kvctl member list --json` print it;
//! - `GET|PUT|DELETE /v1/kv/{key}` and `GET /v1/kv?prefix=&limit=`: keys and values.
//! - `GET /v1/watch?prefix=&from=&initial=`: a watch as Server-Sent Events (the node's own).
//!
//! Invariants:
//! - The door only translates. Every key-value, status and member request goes to the one
//!   [`Service`] with the caller's identity, and with [`Forwarding::ToPrimary`], so any node
//!   accepts any request; the service authorizes it and forwards it with the client library's
//!   retries. Writes carry request ids from one [`RequestIds`] per connection (HTTP/1.1 serves a
//!   connection's requests in order, so its sequence numbers reach the primary in order).
//! - The caller is an API token (`Authorization: Bearer`, `x-token`) or a user's password
//!   (`Authorization: Basic`) if the request carries one, else the role of the client
//!   certificate of the TLS connection, else anonymous (plain HTTP, or TLS without a
//!   certificate); the service decides what each may do. Bad credentials are a 401.
//! - Every error is a JSON body `{kind, message}` whose status comes from [`http_status`], the one
//!   place that maps an error to HTTP: the same [`crate::error::ErrorKind`] that `kvctl`'s exit
//!   codes come from.
//! - What a client can make the node hold is bounded before it is read: at most
//!   [`MAX_HTTP_CONNECTIONS`] connections (more are closed at once), a request head of at most
//!   [`MAX_HEADER_BYTES`] that must arrive within [`HEADER_READ_TIMEOUT`], a body of at most
//!   [`MAX_CLIENT_FRAME_BYTES`] (413 beyond), a TLS handshake within [`HEADER_READ_TIMEOUT`], and
//!   [`REQUEST_DEADLINE`] for the whole request.
//! - `GET` gives the key's version (the index of the entry that last wrote it) in
//!   [`VERSION_HEADER`]. `PUT` takes `ttl` (the key expires that long after this node's clock),
//!   and `if-absent` or `if-version=N` (compare-and-set: a 409 `condition_failed` if the key
//!   exists, or is not at version `N`; 0 means absent), all decided on the primary. An unknown
//!   query parameter is refused, so that a misspelt option never silently falls back to a
//!   default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request as HttpRequest, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::get;
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn, Instrument};

use crate::api::auth::{TokenDigest, WRONG_CREDENTIALS};
use crate::api::deadline_in;
use crate::api::json::{change_json, get_json, pairs_json, scan_json, write_json};
use crate::api::service::{Caller, Forwarding, RequestIds, Service};
use crate::certs::TlsFiles;
use crate::config::parse_duration;
use crate::core::MAX_REQUEST_TIMEOUT_MS;
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::{Metrics, NodeView, CONTENT_TYPE as METRICS_CONTENT_TYPE};
use crate::net::shutdown::Shutdown;
use crate::net::tls;
use crate::storage::Storage;
use crate::wire::client::{
    Answer, Condition, Expiry, ReadConsistency, Request, Response, ResponseMeta, Role, WatchEvent,
    Write, WriteConcern,
};
use crate::wire::frame::MAX_CLIENT_FRAME_BYTES;

/// HTTP connections a node serves at once; more are closed as soon as they are accepted.
pub const MAX_HTTP_CONNECTIONS: usize = 1024;

/// Largest request head (request line and headers) the door reads: room for a path naming a key
/// of the largest size ([`crate::wire::frame::MAX_KEY_BYTES`]) and ordinary headers.
pub const MAX_HEADER_BYTES: usize = 96 * 1024;

/// A request head (and a TLS handshake) must arrive within this long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest any request may take, body included: a write may wait for its concern up to the
/// core's longest request timeout, and a little more for forwarding.
pub const REQUEST_DEADLINE: Duration = Duration::from_millis(MAX_REQUEST_TIMEOUT_MS + 5_000);

/// How long a write waits for its write concern when the request gives no `timeout`.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most pairs one scan returns when the request gives no `limit`, and the most it may ask for.
pub const DEFAULT_SCAN_LIMIT: u32 = 100;
pub const MAX_SCAN_LIMIT: u32 = 10_000;

/// A backup whose applied index is more than this many entries behind the commit index it knows
/// is catching up, and not ready. A healthy backup leaves up to this many unapplied until its
/// next tick (`MAX_UNAPPLIED_ON_BACKUP`), so it is ready throughout.
pub const READY_MAX_APPLY_BACKLOG: u64 = crate::core::MAX_UNAPPLIED_ON_BACKUP;

/// Response headers carrying the answer's provenance.
pub const INDEX_HEADER: &str = "x-replikv-index";
pub const EPOCH_HEADER: &str = "x-replikv-epoch";
pub const NODE_HEADER: &str = "x-replikv-node";
/// The version of the key a `GET` read: what `PUT …?if-version=` compares with.
pub const VERSION_HEADER: &str = "x-replikv-version";

/// What the HTTP door needs from its node.
#[derive(Clone)]
pub struct HttpDoor {
    pub service: Service,
    pub metrics: Arc<Metrics>,
    /// The node's view after each pass of its event loop (readiness).
    pub view: watch::Receiver<NodeView>,
    /// The node's storage (liveness: it answers).
    pub storage: Arc<dyn Storage>,
}

/// The identity and request ids of one connection, handed to every handler.
#[derive(Clone)]
struct Connection {
    caller: Caller,
    request_ids: Arc<RequestIds>,
    /// Ends the connection's watch streams when the node shuts down (graceful shutdown waits for
    /// responses in flight, and a watch never finishes by itself).
    shutdown: Shutdown,
}

/// Binds the HTTP door on `addr`. Separate from [`serve_http`] so that a port in use stops the
/// node at start, like its other ports.
pub async fn bind_http(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| Error::Config(format!("cannot bind the HTTP port {addr}: {err}")))
}

/// The TLS acceptor of the HTTP door: the node's certificate, client certificates optional.
pub fn http_tls(files: &TlsFiles) -> Result<TlsAcceptor> {
    Ok(TlsAcceptor::from(Arc::new(tls::http_server_config(files)?)))
}

/// Serves HTTP on `listener` until shutdown: TLS if `tls` is given, plain HTTP otherwise.
pub(crate) async fn serve_http(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    door: HttpDoor,
    mut shutdown: Shutdown,
) {
    let router = router(door);
    let connections = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let Some((stream, remote)) = super::accept(&listener, &mut shutdown, "an HTTP").await
        else {
            return;
        };
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            warn!(%remote, "closing an HTTP connection: {MAX_HTTP_CONNECTIONS} are open already");
            continue;
        };
        let router = router.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(
            async move {
                let _slot = slot; // held for as long as the connection is served
                serve_connection(stream, remote, tls, router, shutdown).await;
            }
            .in_current_span(),
        );
    }
}

/// One connection: the TLS handshake if any, then HTTP/1.1 until the client closes, the
/// connection breaks a limit, or the node shuts down (in-flight requests are finished first).
async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    tls: Option<TlsAcceptor>,
    router: Router,
    shutdown: Shutdown,
) {
    let _ = stream.set_nodelay(true);
    match tls {
        None => serve_http1(TokioIo::new(stream), Caller::Anonymous, router, shutdown).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream));
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => return debug!(%remote, %err, "HTTP TLS handshake failed"),
                Err(_) => return debug!(%remote, "HTTP TLS handshake timed out"),
            };
            let caller = match stream.get_ref().1.peer_certificates() {
                Some([end_entity, ..]) => match tls::role_from_certificate(end_entity) {
                    Ok(role) => Caller::Certificate(role),
                    Err(err) => {
                        return warn!(%remote, %err, "refusing an HTTP client certificate");
                    }
                },
                _ => Caller::Anonymous,
            };
            serve_http1(TokioIo::new(stream), caller, router, shutdown).await
        }
    }
}

async fn serve_http1<I>(io: TokioIo<I>, caller: Caller, router: Router, mut shutdown: Shutdown)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = Connection {
        caller,
        request_ids: Arc::new(RequestIds::new()),
        shutdown: shutdown.clone(),
    };
    let service = TowerToHyperService::new(router.layer(Extension(connection)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    let outcome = tokio::select! {
        outcome = served.as_mut() => outcome,
        _ = shutdown.requested() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(err) = outcome {
        debug!(%err, "HTTP connection ended");
    }
}

/// Every route of the door, with the body limit and the deadline per request.
fn router(door: HttpDoor) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/members", get(members))
        .route("/v1/kv", get(scan))
        .route("/v1/watch", get(watch_events))
        .route("/v1/kv/{key}", get(get_key).put(put_key).delete(delete_key))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(door.clone(), authenticate))
        .layer(middleware::from_fn(deadline))
        .layer(DefaultBodyLimit::max(MAX_CLIENT_FRAME_BYTES))
        .with_state(door)
}

/// The deadline of every request: past [`REQUEST_DEADLINE`] the client gets a 503 and the
/// request's future is dropped (which makes the node forget a request it still holds).
async fn deadline(request: HttpRequest, next: Next) -> HttpResponse {
    match tokio::time::timeout(REQUEST_DEADLINE, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error_response(&Error::Unavailable(format!(
            "the request took longer than {} s",
            REQUEST_DEADLINE.as_secs()
        ))),
    }
}

// --- credentials ---

/// The header that carries an API token, as the seed's web services took it.
pub const TOKEN_HEADER: &str = "x-token";

/// Credentials in the request's headers take the place of the connection's caller (its client
/// certificate, or anonymous): `x-token: <token>`, `Authorization: Bearer <token>`, or
/// `Authorization: Basic` with a user's password. Bad ones are a 401, whatever the endpoint; a
/// token is only digested here, and looked up by the service on every request.
async fn authenticate(
    State(door): State<HttpDoor>,
    mut request: HttpRequest,
    next: Next,
) -> HttpResponse {
    match caller_from_headers(&door, request.headers()).await {
        Ok(None) => {}
        Ok(Some(caller)) => {
            if let Some(connection) = request.extensions_mut().get_mut::<Connection>() {
                connection.caller = caller;
            }
        }
        Err(err) => {
            let mut response = error_response(&err);
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"replikv\", Bearer"),
            );
            return response;
        }
    }
    next.run(request).await
}

async fn caller_from_headers(
    door: &HttpDoor,
    headers: &axum::http::HeaderMap,
) -> Result<Option<Caller>> {
    let text = |name: &str, value: &HeaderValue| {
        value
            .to_str()
            .map(str::to_string)
            .map_err(|_| Error::Unauthenticated(format!("the {name} header is not plain text")))
    };
    if let Some(token) = headers.get(TOKEN_HEADER) {
        let token = text(TOKEN_HEADER, token)?;
        return Ok(Some(Caller::Token(TokenDigest::of(&token))));
    }
    let Some(authorization) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let authorization = text("Authorization", authorization)?;
    let (scheme, credentials) = authorization
        .trim()
        .split_once(' ')
        .unwrap_or((authorization.trim(), ""));
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => Ok(Some(Caller::Token(TokenDigest::of(credentials.trim())))),
        "basic" => {
            let wrong = || Error::Unauthenticated(WRONG_CREDENTIALS.into());
            let decoded = BASE64.decode(credentials.trim()).map_err(|_| wrong())?;
            let decoded = String::from_utf8(decoded).map_err(|_| wrong())?;
            let (user, password) = decoded.split_once(':').ok_or_else(wrong)?;
            let verified = door
                .service
                .credentials()
                .authenticate(user, password.as_bytes())
                .await?;
            Ok(Some(Caller::User(verified)))
        }
        other => Err(Error::Unauthenticated(format!(
            "the authorization scheme {other:?} is not Bearer or Basic"
        ))),
    }
}

// --- errors ---

/// The HTTP status of an error: the one place that maps errors to HTTP, from [`Error::kind`].
pub fn http_status(err: &Error) -> StatusCode {
    if let Error::Unauthenticated(_) = err {
        return StatusCode::UNAUTHORIZED;
    }
    match err.kind() {
        ErrorKind::InvalidRequest | ErrorKind::Protocol => StatusCode::BAD_REQUEST,
        ErrorKind::Refused => StatusCode::FORBIDDEN,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::WriteConcernNotMet => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Config | ErrorKind::Storage | ErrorKind::Internal => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// `{kind, message}` with the error's status.
fn error_response(err: &Error) -> HttpResponse {
    problem(http_status(err), err.kind().name(), &err.to_string())
}

/// `{kind, message}` with `status`, for answers that are not an [`Error`] (a missing key, a
/// body over the limit, an unknown path).
fn problem(status: StatusCode, kind: &str, message: &str) -> HttpResponse {
    (status, Json(json!({ "kind": kind, "message": message }))).into_response()
}

fn not_found_key(key: &str) -> HttpResponse {
    problem(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("key {key:?} does not exist"),
    )
}

async fn not_found(method: Method, uri: axum::http::Uri) -> HttpResponse {
    problem(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!(
            "no endpoint {method} {}: see docs/PROTOCOL.md (HTTP API)",
            uri.path()
        ),
    )
}

fn bad_request(message: String) -> Error {
    Error::InvalidRequest(message)
}

fn path_key(key: std::result::Result<Path<String>, PathRejection>) -> Result<String> {
    key.map(|Path(key)| key)
        .map_err(|rejection| bad_request(format!("malformed key in the path: {rejection}")))
}

fn query(
    query: std::result::Result<Query<BTreeMap<String, String>>, QueryRejection>,
    allowed: &[&str],
) -> Result<BTreeMap<String, String>> {
    let Query(params) =
        query.map_err(|rejection| bad_request(format!("malformed query: {rejection}")))?;
    for name in params.keys() {
        if !allowed.contains(&name.as_str()) {
            return Err(bad_request(format!(
                "unknown query parameter `{name}`: this endpoint takes {}",
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            )));
        }
    }
    Ok(params)
}

/// Whether `?format=json` was asked for (the only format besides the default).
fn wants_json(params: &BTreeMap<String, String>) -> Result<bool> {
    match params.get("format").map(String::as_str) {
        None | Some("raw") => Ok(false),
        Some("json") => Ok(true),
        Some(other) => Err(bad_request(format!(
            "format {other:?} is not one of raw, json"
        ))),
    }
}

/// A duration such as `2s`, `500ms` or `1m` (a bare number is milliseconds).
pub fn parse_timeout(text: &str) -> Result<Duration> {
    let text = text.trim();
    let invalid = || {
        bad_request(format!(
            "timeout {text:?} is not a duration such as 500ms, 2s or 1m"
        ))
    };
    let (number, unit_ms) = if let Some(number) = text.strip_suffix("ms") {
        (number, 1)
    } else if let Some(number) = text.strip_suffix('s') {
        (number, 1000)
    } else if let Some(number) = text.strip_suffix('m') {
        (number, 60_000)
    } else {
        (text, 1)
    };
    let millis = number
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(unit_ms))
        .ok_or_else(invalid)?;
    if millis == 0 || millis > MAX_REQUEST_TIMEOUT_MS {
        return Err(bad_request(format!(
            "timeout {text:?} is out of range: give more than 0 and at most {} s",
            MAX_REQUEST_TIMEOUT_MS / 1000
        )));
    }
    Ok(Duration::from_millis(millis))
}

fn consistency(params: &BTreeMap<String, String>) -> Result<ReadConsistency> {
    params
        .get("consistency")
        .map_or(Ok(ReadConsistency::default()), |text| text.parse())
}

/// Adds the answer's provenance headers.
fn with_meta(mut response: HttpResponse, meta: &ResponseMeta) -> HttpResponse {
    let headers = response.headers_mut();
    for (name, value) in [
        (INDEX_HEADER, meta.index),
        (EPOCH_HEADER, meta.epoch),
        (NODE_HEADER, meta.node_id),
    ] {
        headers.insert(name, HeaderValue::from(value));
    }
    response
}

/// An answer the service gave that the handler did not expect: a bug, said as such.
fn unexpected(response: &Response) -> HttpResponse {
    error_response(&Error::Internal(format!(
        "unexpected answer from the node: {response:?}"
    )))
}

// --- handlers ---

async fn healthz(State(door): State<HttpDoor>) -> HttpResponse {
    let storage = door.storage.clone();
    match tokio::task::spawn_blocking(move || storage.last()).await {
        Ok(Ok((epoch, index))) => Json(json!({
            "status": "ok",
            "last_epoch": epoch,
            "last_index": index,
        }))
        .into_response(),
        Ok(Err(err)) => error_response(&err),
        Err(err) => error_response(&Error::Internal(format!("the storage check failed: {err}"))),
    }
}

async fn readyz(State(door): State<HttpDoor>) -> HttpResponse {
    let view = *door.view.borrow();
    let body = json!({
        "ready": false,
        "role": view.role.to_string(),
        "epoch": view.epoch,
        "primary": view.primary,
        "commit_index": view.commit_index,
        "applied_index": view.applied_index,
    });
    match not_ready_because(&view) {
        None => {
            let mut body = body;
            body["ready"] = json!(true);
            Json(body).into_response()
        }
        Some(reason) => {
            let mut body = body;
            body["reason"] = json!(reason);
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// Why a node with this view is not ready, if it is not: it knows no primary or has not heard
/// from one for three failure timeouts, it is a learner (catching up to become a voter) or a
/// candidate, or it has far more committed than applied.
pub fn not_ready_because(view: &NodeView) -> Option<&'static str> {
    if view.primary.is_none() {
        return Some("no primary is known");
    }
    if view.cut_off {
        return Some("cut off: no primary heard for three failure timeouts");
    }
    match view.role {
        Role::Learner => return Some("a learner, catching up before it becomes a voter"),
        Role::Candidate => return Some("an election is running"),
        Role::Primary | Role::Backup => {}
    }
    if view.applied_index + READY_MAX_APPLY_BACKLOG < view.commit_index {
        return Some("catching up: far more is committed than applied");
    }
    None
}

async fn metrics(State(door): State<HttpDoor>) -> HttpResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        door.metrics.encode(),
    )
        .into_response()
}

async fn ask(door: &HttpDoor, connection: &Connection, request: Request) -> Response {
    let kind = crate::metrics::request_kind(&request);
    let started = Instant::now();
    let response = door
        .service
        .call(connection.caller.clone(), request, Forwarding::ToPrimary)
        .await;
    door.metrics
        .observe_request(kind, &response, started.elapsed());
    response
}

async fn status(
    State(door): State<HttpDoor>,
    Extension(connection): Extension<Connection>,
) -> HttpResponse {
    match ask(&door, &connection, Request::Status).await {
        Response::Status(status) => Json(status).into_response(),
        Response::Error(err) => error_response(&err),
        other => unexpected(&other),
    }
}

async fn members(
    State(door): State<HttpDoor>,
    Extension(connection): Extension<Connection>,
) -> HttpResponse {
    match ask(&door, &connection, Request::Status).await {
        Response::Status(status) => {
            let members: Vec<_> = status.members.iter().map(|row| &row.member).collect();
            Json(members).into_response()
        }
        Response::Error(err) => error_response(&err),
        other => unexpected(&other),
    }
}

async fn get_key(
    State(door): State<HttpDoor>,
    Extension(connection): Extension<Connection>,
    key: std::result::Result<Path<String>, PathRejection>,
    params: std::result::Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> HttpResponse {
    let parsed = path_key(key).and_then(|key| {
        let params = query(params, &["consistency", "format"])?;
        Ok((key, consistency(&params)?, wants_json(&params)?))
    });
    let (key, consistency, json) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => return error_response(&err),
    };
    let request = Request::Get {
        key: key.clone().into_bytes(),
        consistency,
    };
    match ask(&door, &connection, request).await {
        Response::Value {
            value,
            version,
            meta,
        } => {
            let mut response = match (value, json) {
                (value, true) => {
                    Json(get_json(&key, value.as_deref(), version, &meta)).into_response()
                }
                (Some(value), false) => (
                    [(header::CONTENT_TYPE, "application/octet-stream")],
                    Body::from(value),
                )
                    .into_response(),
                (None, false) => not_found_key(&key),
            };
            if version != 0 {
                let headers = response.headers_mut();
                headers.insert(VERSION_HEADER, HeaderValue::from(version));
            }
            with_meta(response, &meta)
        }
        Response::Error(err) => error_response(&err),
        other => unexpected(&other),
    }
}

async fn put_key(
    State(door): State<HttpDoor>,
    Extension(connection): Extension<Connection>,
    key: std::result::Result<Path<String>, PathRejection>,
    params: std::result::Result<Query<BTreeMap<String, String>>, QueryRejection>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> HttpResponse {
    let value = match body {
        Ok(body) => body.to_vec(),
        Err(rejection) => {
            let status = rejection.status();
            let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                ErrorKind::InvalidRequest.name()
            };
            return problem(
                status,
                kind,
                &format!(
                    "cannot read the body ({rejection}); a value is at most {} MiB",
                    MAX_CLIENT_FRAME_BYTES >> 20
                ),
            );
        }
    };
    write(
        door,
        connection,
        key,
        params,
        &["ttl", "if-absent", "if-version"],
        |key, params| put_write(key, value, params),
    )
    .await
}

/// A plain put, or with `ttl`, `if-absent` or `if-version` a `Set` that the primary decides: the
/// key expires `ttl` after this node's clock, and is written only if it does not exist
/// (`if-absent`) or is at the version given (`if-version`).
fn put_write(key: Vec<u8>, value: Vec<u8>, params: &BTreeMap<String, String>) -> Result<Write> {
    let if_absent = match params.get("if-absent").map(String::as_str) {
        None => None,
        Some("" | "true") => Some(Condition::IfAbsent),
        Some(other) => {
            return Err(bad_request(format!(
                "if-absent takes no value (or `true`), not {other:?}"
            )))
        }
    };
    let if_version = match params.get("if-version") {
        None => None,
        Some(text) => Some(Condition::IfVersion(text.parse().map_err(|_| {
            bad_request(format!(
                "if-version takes a key version (a log index, 0 for an absent key), not {text:?}"
            ))
        })?)),
    };
    let condition = match (if_absent, if_version) {
        (Some(_), Some(_)) => {
            return Err(bad_request(
                "if-absent and if-version cannot be combined: if-version=0 means absent".into(),
            ))
        }
        (condition, None) | (None, condition) => condition,
    };
    let ttl = params
        .get("ttl")
        .map(|text| parse_duration(text).map_err(|message| bad_request(format!("ttl: {message}"))))
        .transpose()?;
    if condition.is_none() && ttl.is_none() {
        return Ok(Write::Put { key, value });
    }
    let expiry = match ttl {
        None => Expiry::Clear,
        Some(ttl) => {
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            Expiry::At(deadline_in(ttl_ms.max(1)).unwrap_or(u64::MAX))
        }
    };
    Ok(Write::Set {
        key,
        value,
        condition: condition.unwrap_or_default(),
        expiry,
        get: false,
    })
}

async fn delete_key(
    State(door): State<HttpDoor>,
    Extension(connection): Extension<Connection>,
    key: std::result::Result<Path<String>, PathRejection>,
    params: std::result::Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> HttpResponse {
    write(door, connection, key, params, &[], |key, _| {
        Ok(Write::Delete { key })
    })
    .await
}

/// A put or a delete: the write concern (`w`) and its `timeout` from the query, and the options
/// in `options` that `make` reads. A condition that failed is a 409.
async fn write(
    door: HttpDoor,
    connection: Connection,
    key: std::result::Result<Path<String>, PathRejection>,
    params: std::result::Result<Query<BTreeMap<String, String>>, QueryRejection>,
    options: &[&str],
    make: impl FnOnce(Vec<u8>, &BTreeMap<String, String>) -> Result<Write>,
) -> HttpResponse {
    let parsed = path_key(key).and_then(|key| {
        let params = query(params, &[&["w", "timeout"], options].concat())?;
        let write_concern = params
            .get("w")
            .map_or(Ok(WriteConcern::default()), |text| text.parse())?;
        let timeout = params
            .get("timeout")
            .map_or(Ok(DEFAULT_WRITE_TIMEOUT), |text| parse_timeout(text))?;
        let write = make(key.clone().into_bytes(), &params)?;
        Ok((key, write, write_concern, timeout))
    });
    let (key, write, write_concern, timeout) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => return error_response(&err),
    };
    let condition_failed = match &write {
        Write::Set { condition, .. } => format!("key {key:?} {}: not written", condition.unmet()),
        _ => format!("key {key:?}: not written"),
    };
    let request = Request::Write {
        request_id: connection.request_ids.next(),
        write,
        write_concern,
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(MAX_REQUEST_TIMEOUT_MS),
    };
    match ask(&door, &connection, request).await {
        Response::Written { result, meta } if result.answer == Some(Answer::Applied(false)) => {
            with_meta(
                problem(StatusCode::CONFLICT, "condition_failed", &condition_failed),
                &meta,
            )
        }
        Response::Written { result, meta } => with_meta(
            Json(write_json(&key, &result, write_concern, &meta)).into_response(),
            &meta,
        ),
        Response::Error(err) => error_response(&err),
        other => unexpected(&other),
    }
}

async fn scan(
    State(door): State<HttpDoor>,
    Extension(connection): Extension<Connection>,
    params: std::result::Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> HttpResponse {
    let parsed = query(params, &["prefix", "limit", "after", "consistency"]).and_then(|params| {
        let limit = match params.get("limit") {
            None => DEFAULT_SCAN_LIMIT,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|limit| (1..=MAX_SCAN_LIMIT).contains(limit))
                .ok_or_else(|| {
                    bad_request(format!(
                        "limit {text:?} is not a number from 1 to {MAX_SCAN_LIMIT}"
                    ))
                })?,
        };
        let prefix = params.get("prefix").cloned().unwrap_or_default();
        let after = params.get("after").map(|key| key.clone().into_bytes());
        Ok((prefix, after, limit, consistency(&params)?))
    });
    let (prefix, start_after, limit, consistency) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => return error_response(&err),
    };
    let request = Request::Scan {
        prefix: prefix.into_bytes(),
        start_after,
        limit,
        consistency,
    };
    match ask(&door, &connection, request).await {
        Response::Pairs { pairs, more, meta } => {
            let mut answer = scan_json(&pairs, &meta);
            // The continuation: the page's last key, to pass as `after` for the next page.
            let next = pairs
                .last()
                .filter(|_| more)
                .map(|(key, _)| crate::api::json::printable(key));
            answer["next"] = next
                .as_ref()
                .map_or(serde_json::Value::Null, |(key, _)| key.clone().into());
            answer["next_encoding"] =
                next.map_or(serde_json::Value::Null, |(_, encoding)| encoding.into());
            with_meta(Json(answer).into_response(), &meta)
        }
        Response::Error(err) => error_response(&err),
        other => unexpected(&other),
    }
}

/// Events of one watch stream encoded and not yet taken by hyper: the rest waits in the watcher
/// (which the hub cuts off if it falls behind).
const WATCH_EVENTS_BUFFERED: usize = 16;

/// `GET /v1/watch?prefix=…&from=…&initial=true`: the watch as Server-Sent Events, one event per
/// [`WatchEvent`] (`change`, `progress`, `initial`, `end`), each with the index as its `id`, so a
/// browser's `EventSource` resumes after a disconnect from the last one (`Last-Event-ID`, which
/// wins over `from`). Served by this node from its committed log, never forwarded.
async fn watch_events(
    State(door): State<HttpDoor>,
    Extension(connection): Extension<Connection>,
    headers: axum::http::HeaderMap,
    params: std::result::Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> HttpResponse {
    let parsed = query(params, &["prefix", "from", "initial"]).and_then(|params| {
        let number = |name: &str, text: &str| {
            text.parse::<u64>()
                .map_err(|_| bad_request(format!("{name} {text:?} is not a log index")))
        };
        let from = match params.get("from") {
            Some(text) => Some(number("from", text)?),
            None => None,
        };
        let last_event = headers
            .get("last-event-id")
            .map(|value| number("Last-Event-ID", value.to_str().unwrap_or_default()))
            .transpose()?;
        let initial = match params.get("initial").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(bad_request(format!(
                    "initial {other:?} is not true or false"
                )))
            }
        };
        Ok(Request::Watch {
            prefix: params
                .get("prefix")
                .cloned()
                .unwrap_or_default()
                .into_bytes(),
            from: last_event.map(|index| index + 1).or(from),
            initial: initial && last_event.is_none(),
        })
    });
    let request = match parsed {
        Ok(request) => request,
        Err(err) => return error_response(&err),
    };
    let mut watcher = match door.service.watch(&connection.caller, request).await {
        Ok(watcher) => watcher,
        Err(err) => return error_response(&err),
    };
    let (events, body) = tokio::sync::mpsc::channel::<Bytes>(WATCH_EVENTS_BUFFERED);
    let mut shutdown = connection.shutdown;
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                event = watcher.next() => event,
                _ = shutdown.requested() => Err(Error::ShuttingDown),
                () = events.closed() => return,
            };
            let last = event.is_err();
            let event = event.unwrap_or_else(WatchEvent::End);
            // A change that leaves others of its entry to come carries no id: resuming after
            // its index would skip them.
            let completes = match &event {
                WatchEvent::Change(change) => watcher.completes(change.index),
                _ => true,
            };
            tokio::select! {
                sent = events.send(server_sent_event(&event, completes)) => if sent.is_err() { return },
                // The client stopped reading: cut off, as the QUIC door does.
                () = watcher.fallen_behind() => return,
            }
            if last {
                return;
            }
        }
    });
    let mut response = Body::new(EventBody(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// One Server-Sent Event: `id` (the index, where the event completes one: `completes` says so
/// for a change), `event`, and the JSON on one `data` line.
fn server_sent_event(event: &WatchEvent, completes: bool) -> Bytes {
    let (id, name, data) = match event {
        WatchEvent::Change(change) => (
            completes.then_some(change.index),
            "change",
            change_json(change),
        ),
        WatchEvent::Progress { index } => (Some(*index), "progress", json!({ "index": index })),
        WatchEvent::Initial { pairs, index, more } => (
            (!more).then_some(*index),
            "initial",
            json!({ "initial": pairs_json(pairs), "index": index, "more": more }),
        ),
        WatchEvent::End(err) => (
            None,
            "end",
            json!({ "kind": err.kind().name(), "message": err.to_string() }),
        ),
    };
    let id = id.map(|index| format!("id: {index}\n")).unwrap_or_default();
    Bytes::from(format!("{id}event: {name}\ndata: {data}\n\n"))
}

/// A response body fed by a channel of encoded events.
struct EventBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|event| event.map(|bytes| Ok(hyper::body::Frame::data(bytes))))
    }
}

/// Most bytes of a probe's answer that [`probe`] reads.
const MAX_PROBE_ANSWER_BYTES: u64 = 64 * 1024;

/// Asks the HTTP door at `addr` (`host:port`) for `path` (`/healthz`, `/readyz`) and returns the
/// answer's body if its status is 2xx: what `kvnode health` runs in a container's healthcheck,
/// where there is no curl. Over TLS when `ca_cert` is given (the cluster CA), plain otherwise.
pub async fn probe(addr: &str, path: &str, ca_cert: Option<&std::path::Path>) -> Result<String> {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        request: &str,
    ) -> std::io::Result<Vec<u8>> {
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream
            .take(MAX_PROBE_ANSWER_BYTES)
            .read_to_end(&mut answer)
            .await?;
        Ok(answer)
    }

    let host = tls::server_name(addr)?;
    let network = |err: std::io::Error| Error::Network(format!("probing {addr}: {err}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let connect = async {
        let stream = TcpStream::connect(addr).await.map_err(network)?;
        match ca_cert {
            None => exchange(stream, &request).await.map_err(network),
            Some(ca_cert) => {
                let connector =
                    tokio_rustls::TlsConnector::from(Arc::new(tls::http_probe_config(ca_cert)?));
                let name = rustls_pki_types::ServerName::try_from(host.clone())
                    .map_err(|err| Error::Config(format!("{host} is no server name: {err}")))?;
                let stream = connector.connect(name, stream).await.map_err(network)?;
                exchange(stream, &request).await.map_err(network)
            }
        }
    };
    let answer = tokio::time::timeout(HEADER_READ_TIMEOUT, connect)
        .await
        .map_err(|_| Error::Unavailable(format!("{addr} did not answer {path} in time")))??;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| Error::Protocol(format!("{addr} answered {path} with no HTTP status")))?;
    if (200..300).contains(&status) {
        Ok(body.to_string())
    } else {
        Err(Error::Unavailable(format!(
            "{addr} answered {path} with {status}: {}",
            body.trim()
        )))
    }
}

/// Logs where the door listens.
pub fn announce(addr: SocketAddr, tls: bool) {
    info!(http_addr = %addr, tls, "HTTP door listening");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_has_its_status() {
        let cases = [
            (Error::InvalidRequest("x".into()), 400),
            (Error::Protocol("x".into()), 400),
            (Error::Unauthenticated("x".into()), 401),
            (Error::Refused("x".into()), 403),
            (Error::Unavailable("x".into()), 503),
            (
                Error::NotPrimary {
                    node: 1,
                    epoch: 1,
                    hint: None,
                },
                503,
            ),
            (
                Error::WriteConcernNotMet {
                    acknowledged: 1,
                    required: 3,
                },
                504,
            ),
            (
                Error::WriteConcernImpossible {
                    required: 5,
                    voters: 3,
                },
                400,
            ),
            (Error::Storage("x".into()), 500),
        ];
        for (err, status) in cases {
            assert_eq!(http_status(&err).as_u16(), status, "{err:?}");
        }
    }

    #[test]
    fn timeouts_read_as_people_write_them() {
        assert_eq!(parse_timeout("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_timeout("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_timeout("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_timeout("750").unwrap(), Duration::from_millis(750));
        for bad in ["", "0s", "2h", "-1s", "2 s", "61s", "99999999999999999999s"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn readiness_needs_a_primary_a_voter_and_little_to_apply() {
        let ready = NodeView {
            role: Role::Backup,
            epoch: 2,
            primary: Some(1),
            last_index: 10,
            commit_index: 10,
            applied_index: 10,
            cut_off: false,
        };
        assert_eq!(not_ready_because(&ready), None);
        // A backup leaves up to MAX_UNAPPLIED_ON_BACKUP committed entries for its next tick.
        let between_ticks = NodeView {
            commit_index: 10 + crate::core::MAX_UNAPPLIED_ON_BACKUP,
            ..ready
        };
        assert_eq!(not_ready_because(&between_ticks), None);
        for view in [
            NodeView {
                primary: None,
                ..ready
            },
            NodeView {
                role: Role::Learner,
                ..ready
            },
            NodeView {
                cut_off: true,
                ..ready
            },
            NodeView {
                commit_index: 5000,
                ..ready
            },
        ] {
            assert!(not_ready_because(&view).is_some(), "{view:?}");
        }
    }
}
