//! Running a node: open storage, build the [`Node`], bind the client and peer ports (and the RESP
//! door, if configured), start the event loop, the service every door calls
//! ([`crate::api::service`]) and the network tasks, and shut all of it down cleanly.
//!
//! Shutdown order (on the caller's signal, or when the event loop stops on a storage error):
//! 1. every task is told to stop: acceptors stop accepting, sessions stop reading, links close;
//! 2. the event loop finishes its flush, flushes whatever is still buffered, and answers pending
//!    requests (durable ones with their result, the rest with `ShuttingDown`);
//! 3. both endpoints close their connections (the close frames go out at once) and wait briefly
//!    for them to drain;
//! 4. the remaining tasks are awaited, bounded.
//!
//! A storage error is fail-stop: [`run_node`] returns it and the binary exits non-zero.
//!
//! Joining (`join` in the configuration, `kvnode --join ADDR`): the node starts knowing only
//! itself, as a learner, and serves both ports at once. The server decides whether it must still
//! register (not if its log already counts it); asking the cluster is a client's job, so the
//! caller hands [`run_node`] the function that does it (`replikv::client::join::register`) and
//! this layer never reaches up to the client library. A refusal stops the node with the reason.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn, Instrument};

use crate::api::auth::Credentials;
use crate::api::http::{self, HttpDoor};
use crate::api::resp;
use crate::api::service::{Service, ServiceSettings};
use crate::api::watch::WatchHub;
use crate::certs::TlsFiles;
use crate::config::tuning::{
    CLIENT_INBOX_CAPACITY, PEER_INBOX_CAPACITY, PEER_RESYNC_INBOX_CAPACITY, SHUTDOWN_DRAIN_MS,
    SHUTDOWN_GRACE_MS,
};
use crate::config::NodeConfig;
use crate::core::Node;
use crate::error::{Error, Result};
use crate::metrics::{Metrics, NodeView};
use crate::net::endpoint::RestartIdentity;
use crate::net::event_loop::{Clock, EventLoop, Inboxes, Published};
use crate::net::peer::{accept_peers, PeerInboxes, PeerRouter};
use crate::net::shutdown::ShutdownController;
use crate::net::tls;
use crate::net::{client_port, CLOSE_SHUTTING_DOWN};
use crate::storage::sled_engine::SledStorage;
use crate::storage::Storage;
use crate::wire::message::{Member, Membership};
use crate::wire::{CLIENT_ALPN, PEER_ALPN};

/// Resolves once the node has begun to shut down.
pub type StopSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs the node described by `config` until `shutdown` resolves (or storage fails), then shuts
/// down cleanly. Returns the storage error that stopped the node, if one did.
///
/// `register` is how a node started with `join` asks the cluster to add it: called at most once,
/// only if the node is not yet a member, with the `join` addresses, the node's own certificate,
/// its member entry and a [`StopSignal`]. Its future resolves once the node is registered or
/// stopping (`Ok`), or with the cluster's refusal, which stops the node. Pass
/// `replikv::client::join::register`.
pub async fn run_node<R, F>(
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
    register: R,
) -> Result<()>
where
    R: FnOnce(Vec<String>, TlsFiles, Member, StopSignal) -> F,
    F: Future<Output = Result<()>> + Send + 'static,
{
    let span = tracing::info_span!("node", id = config.id);
    serve(config, shutdown, register).instrument(span).await
}

async fn serve<R, F>(
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
    register: R,
) -> Result<()>
where
    R: FnOnce(Vec<String>, TlsFiles, Member, StopSignal) -> F,
    F: Future<Output = Result<()>> + Send + 'static,
{
    config.validate()?;
    let client_addr = parse_addr(&config.client_addr)?;
    let peer_addr = parse_addr(&config.peer_addr)?;
    let files = config.tls_files();
    let mut client_tls = tls::server_config(&files, CLIENT_ALPN)?;
    client_tls.transport_config(Arc::new(client_port::transport_config()));
    let peer_tls = tls::server_config(&files, PEER_ALPN)?;
    let dial_tls = tls::client_config(&files, PEER_ALPN)?;

    let storage: Arc<dyn Storage> = Arc::new(SledStorage::open(&config.data_dir)?);
    // The HTTP door's liveness check and the watch hub read it; only the event loop writes.
    let health_storage = Arc::clone(&storage);
    // The service verifies users and tokens against the applied state.
    let credentials = Credentials::new(Arc::clone(&storage));
    let clock = Clock::start();
    let node = Node::new(
        config.id,
        Membership::new(config.initial_members()),
        storage,
        config.core_options(),
        rand::random(),
        clock.now(),
    )?;

    let restart_identity = RestartIdentity::derive(&files)?;
    let client_endpoint = restart_identity.bind(client_tls, client_addr, "client")?;
    let mut peer_endpoint = restart_identity.bind(peer_tls, peer_addr, "peer")?;
    let resp_listener = match &config.resp_addr {
        Some(addr) => {
            let tls = match config.resp_uses_tls() {
                true => Some(resp::resp_tls(&files)?),
                false => None,
            };
            Some((resp::bind(parse_addr(addr)?).await?, tls))
        }
        None => None,
    };
    // Peers are dialled from the peer endpoint, so they see this node's own peer address as the
    // source (what a firewall rule or a partition test between node addresses expects).
    peer_endpoint.set_default_client_config(dial_tls);
    // Bound now, with the other ports, so a port in use stops the node at start.
    let http_door = match &config.http_addr {
        Some(addr) => {
            let listener = http::bind_http(parse_addr(addr)?).await?;
            let tls = match config.http_uses_tls() {
                true => Some(http::http_tls(&files)?),
                false => None,
            };
            let bound = listener.local_addr().map_err(|err| {
                Error::Config(format!("the HTTP port {addr} has no local address: {err}"))
            })?;
            http::announce(bound, tls.is_some());
            Some((listener, tls))
        }
        None => None,
    };

    let mut controller = ShutdownController::new();
    let (peer_inbox, peer_messages) = mpsc::channel(PEER_INBOX_CAPACITY);
    let (resync_inbox, resync_messages) = mpsc::channel(PEER_RESYNC_INBOX_CAPACITY);
    let (client_inbox, client_requests) = mpsc::channel(CLIENT_INBOX_CAPACITY);
    let (membership_tx, membership_rx) = watch::channel(node.membership().clone());
    let (topology_tx, topology_rx) = watch::channel(None);
    let (view_tx, view_rx) = watch::channel(NodeView::of(&node));
    let metrics = Arc::new(Metrics::new());
    let peers = PeerRouter::new(
        config.id,
        peer_endpoint.clone(),
        controller.handle(),
        metrics.clone(),
    );
    let known_members = node.membership().members.len();
    let must_register = match config.own_member() {
        Some(own) if !config.join.is_empty() => needs_registration(node.membership(), &own),
        _ => false,
    };
    if !config.join.is_empty() && !must_register {
        info!("already a member according to its log; not registering again");
    }
    let watch_hub = WatchHub::start(Arc::clone(&health_storage), view_rx.clone());
    let event_loop = EventLoop::new(
        node,
        clock,
        Inboxes {
            peers: peer_messages,
            resync: resync_messages,
            clients: client_requests,
        },
        peers,
        Published {
            membership: membership_tx,
            topology: topology_tx,
            view: view_tx,
        },
        metrics.clone(),
    );
    let mut event_loop = tokio::spawn(event_loop.run(controller.handle()).in_current_span());
    tokio::spawn(
        Arc::clone(&metrics)
            .sample_storage(Arc::clone(&health_storage), controller.handle())
            .in_current_span(),
    );
    let service = Service::new(
        client_inbox,
        service_settings(&config, metrics.clone()),
        credentials,
    );
    service.serve_watches(watch_hub);
    if let Some((listener, tls)) = resp_listener {
        let door = resp::serve(listener, tls, service.clone(), controller.handle());
        tokio::spawn(door.in_current_span());
    }
    if let Some((listener, tls)) = http_door {
        let door = HttpDoor {
            service: service.clone(),
            metrics: metrics.clone(),
            view: view_rx,
            storage: health_storage,
        };
        let task = http::serve_http(listener, tls, door, controller.handle());
        tokio::spawn(task.in_current_span());
    }
    tokio::spawn(
        client_port::accept_clients(
            client_endpoint.clone(),
            service,
            topology_rx,
            controller.handle(),
        )
        .in_current_span(),
    );
    tokio::spawn(
        accept_peers(
            peer_endpoint.clone(),
            config.id,
            membership_rx,
            PeerInboxes {
                live: peer_inbox,
                resync: resync_inbox,
            },
            metrics.clone(),
            controller.handle(),
        )
        .in_current_span(),
    );
    info!(
        client_addr = %client_addr,
        peer_addr = %peer_addr,
        resp_addr = config.resp_addr.as_deref().unwrap_or("none"),
        data_dir = %config.data_dir.display(),
        members = known_members,
        "node serving"
    );
    let registration: Option<JoinHandle<Result<()>>> = match config.own_member() {
        Some(own) if must_register => {
            // The signal holds a shutdown handle, so the server waits for the registration to
            // wind down as for any other task.
            let mut handle = controller.handle();
            let stop: StopSignal = Box::pin(async move { handle.requested().await });
            let task = register(config.join.clone(), config.tls_files(), own, stop);
            Some(tokio::spawn(task.in_current_span()))
        }
        _ => None,
    };
    let registration_refused = async move {
        match registration {
            Some(task) => match task.await {
                Ok(Err(err)) => err,
                // Registered (or stopped by shutdown): nothing more to wait for.
                Ok(Ok(())) | Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    };

    let mut refused = None;
    let stopped_early = tokio::select! {
        _ = shutdown => {
            info!("shutdown requested");
            None
        }
        result = &mut event_loop => Some(result),
        err = registration_refused => {
            error!(%err, "the cluster refused to add this node; stopping");
            refused = Some(err);
            None
        }
    };
    controller.trigger();
    let joined = match stopped_early {
        Some(joined) => joined,
        None => event_loop.await,
    };
    let result = joined
        .unwrap_or_else(|err| Err(Error::Internal(format!("event loop failed: {err}"))))
        .and(refused.map_or(Ok(()), Err));

    client_endpoint.close(CLOSE_SHUTTING_DOWN, b"node shutting down");
    peer_endpoint.close(CLOSE_SHUTTING_DOWN, b"node shutting down");
    let idle = async { tokio::join!(client_endpoint.wait_idle(), peer_endpoint.wait_idle()) };
    if tokio::time::timeout(Duration::from_millis(SHUTDOWN_DRAIN_MS), idle)
        .await
        .is_err()
    {
        debug!("some connections are still draining; their peers were sent the close");
    }
    if !controller
        .wait_for_tasks(Duration::from_millis(SHUTDOWN_GRACE_MS))
        .await
    {
        warn!("some tasks did not stop within the grace period");
    }
    match &result {
        Ok(()) => info!("node stopped"),
        Err(err) => error!(%err, "node stopped on an error"),
    }
    result
}

/// Whether a node started with `join` still has to ask to be added: not if the membership it
/// recovered from its log already counts it, with the same addresses, among other members (a
/// restart after a successful join). Asking again would be harmless (the primary answers a
/// repeated join as a success) but would make a restart wait for a primary for nothing. A node
/// that was removed meanwhile does not count itself any more, and registers again.
fn needs_registration(membership: &Membership, own: &Member) -> bool {
    let counted = membership.get(own.id).is_some_and(|known| {
        known.client_addr == own.client_addr && known.peer_addr == own.peer_addr
    });
    !(counted && membership.members.len() > 1)
}

/// How the node's [`Service`] is set up: its `anonymous_role`, and forwarding to the primary
/// with the node's own certificate, through the other members known at start (or the `join`
/// addresses; the client library learns later members from the nodes it reaches).
fn service_settings(config: &NodeConfig, metrics: Arc<Metrics>) -> ServiceSettings {
    let others: Vec<String> = config
        .initial_members()
        .into_iter()
        .filter(|member| member.id != config.id)
        .map(|member| member.client_addr)
        .chain(config.join.iter().cloned())
        .collect();
    let seeds = if others.is_empty() {
        vec![config.client_addr.clone()]
    } else {
        others
    };
    ServiceSettings {
        anonymous_role: config.anonymous_role,
        seeds,
        tls: config.tls_files(),
        metrics,
    }
}

/// Resolves on SIGINT or SIGTERM (Ctrl-C elsewhere than Unix).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
                return;
            }
            Err(err) => warn!(%err, "cannot listen for SIGTERM; only Ctrl-C stops the node"),
        }
    }
    if let Err(err) = tokio::signal::ctrl_c().await {
        // Without any signal handler the node could never stop cleanly; stop now instead.
        error!(%err, "cannot listen for Ctrl-C");
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr> {
    text.parse()
        .map_err(|_| Error::Config(format!("{text:?} is not an ip:port address")))
}

#[cfg(test)]
mod tests {
    //! One real node in-process (sled in a temp dir, real certificates, real QUIC), poked at
    //! through its client port with well-behaved and hostile clients.

    use std::path::Path;

    use quinn::Endpoint;

    use super::*;
    use crate::certs::{init_certs, CertRole, CertsInit};
    use crate::config::{DevCluster, DEV_CLIENT_NAME};
    use crate::wire::client::{Request, Response, Write, WriteConcern};
    use crate::wire::frame::{read_frame, write_frame, MAX_CLIENT_FRAME_BYTES};
    use crate::wire::message::RequestId;

    fn free_port(ip: &str) -> u16 {
        let socket = std::net::UdpSocket::bind((ip, 0)).unwrap();
        socket.local_addr().unwrap().port()
    }

    /// A one-node cluster on 127.0.0.1 with certificates for an admin, a reader and the node.
    fn single_node(dir: &Path) -> NodeConfig {
        let mut cluster = DevCluster::plan(dir, 1, 7379).unwrap();
        let mut config = cluster.nodes.remove(0);
        config.client_addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        config.peer_addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        config.members[0].client_addr = config.client_addr.clone();
        config.members[0].peer_addr = config.peer_addr.clone();
        // No HTTP door: the dev plan's fixed HTTP port may be taken by a dev cluster running here.
        config.http_addr = None;
        init_certs(&CertsInit {
            dir: config.certs_dir.clone(),
            // Node 9 is not a member: its certificate is valid but it may only ask to join.
            nodes: vec![(config.id, vec![]), (9, vec![])],
            clients: vec![
                (DEV_CLIENT_NAME.into(), CertRole::Admin),
                ("reader".into(), CertRole::ReadOnly),
            ],
            force: false,
        })
        .unwrap();
        config
    }

    async fn dial(addr: &str, files: &TlsFiles, alpn: &[u8]) -> quinn::Connection {
        let mut endpoint = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(tls::client_config(files, alpn).unwrap());
        let addr = addr.parse().unwrap();
        endpoint.connect(addr, "127.0.0.1").unwrap().await.unwrap()
    }

    async fn connect(config: &NodeConfig, files: &TlsFiles) -> quinn::Connection {
        dial(&config.client_addr, files, CLIENT_ALPN).await
    }

    /// Waits for the node to close `connection` and returns the reason it gave.
    async fn refusal_reason(connection: quinn::Connection) -> String {
        match connection.closed().await {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, crate::net::CLOSE_REFUSED);
                String::from_utf8_lossy(&close.reason).to_string()
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    async fn ask(connection: &quinn::Connection, request: &Request) -> Response {
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        write_frame(&mut send, request, MAX_CLIENT_FRAME_BYTES)
            .await
            .unwrap();
        read_frame(&mut recv, MAX_CLIENT_FRAME_BYTES)
            .await
            .unwrap()
            .unwrap()
    }

    fn put() -> Request {
        Request::Write {
            request_id: RequestId {
                client_id: 7,
                sequence: 1,
            },
            write: Write::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            },
            write_concern: WriteConcern::One,
            timeout_ms: 1000,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_port_survives_hostile_clients() {
        let dir = tempfile::tempdir().unwrap();
        let config = single_node(dir.path());
        let certs = config.certs_dir.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let node = tokio::spawn(run_node(
            config.clone(),
            stopped,
            crate::client::join::register,
        ));
        // The first dial may race the node's bind; QUIC retransmits, and a few dials cover it.
        let admin_files = TlsFiles::for_client(&certs, DEV_CLIENT_NAME);
        let mut attempts = 0;
        let admin = loop {
            let mut endpoint = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            endpoint
                .set_default_client_config(tls::client_config(&admin_files, CLIENT_ALPN).unwrap());
            let addr = config.client_addr.parse().unwrap();
            match endpoint.connect(addr, "127.0.0.1").unwrap().await {
                Ok(connection) => break connection,
                Err(_) if attempts < 5 && !node.is_finished() => attempts += 1,
                Err(err) => panic!("cannot reach the node: {err}"),
            }
        };

        // Garbage: an undecodable body is answered with a protocol error, and the stream ends.
        let (mut send, mut recv) = admin.open_bi().await.unwrap();
        send.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        match read_frame::<Response, _>(&mut recv, MAX_CLIENT_FRAME_BYTES).await {
            Ok(Some(Response::Error(Error::Protocol(_)))) => {}
            other => panic!("expected a protocol error, got {other:?}"),
        }
        assert!(matches!(
            read_frame::<Response, _>(&mut recv, MAX_CLIENT_FRAME_BYTES).await,
            Ok(None) | Err(_)
        ));

        // A length far above the limit is refused before anything is allocated.
        let (mut send, mut recv) = admin.open_bi().await.unwrap();
        send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        match read_frame::<Response, _>(&mut recv, MAX_CLIENT_FRAME_BYTES).await {
            Ok(Some(Response::Error(Error::Protocol(message)))) => {
                assert!(message.contains("exceeds"), "{message}")
            }
            other => panic!("expected a protocol error, got {other:?}"),
        }

        // The same connection still gets answers on a fresh stream.
        match ask(&admin, &Request::Status).await {
            Response::Status(status) => assert_eq!(status.node_id, config.id),
            other => panic!("expected the status, got {other:?}"),
        }

        // A readonly certificate may read but not write.
        let reader = connect(&config, &TlsFiles::for_client(&certs, "reader")).await;
        assert!(matches!(
            ask(&reader, &Request::Status).await,
            Response::Status(_)
        ));
        match ask(&reader, &put()).await {
            Response::Error(Error::Refused(message)) => {
                assert!(message.contains("readonly"), "{message}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }

        // A node certificate may read and write (how a node forwards for its doors), but of
        // membership changes only add its own node.
        let as_node = connect(&config, &TlsFiles::for_node(&certs, 9)).await;
        assert!(matches!(
            ask(&as_node, &Request::Status).await,
            Response::Status(_)
        ));
        // The write below needs a primary: wait for the single node to have elected itself (a
        // loaded machine may still be in its first failure timeout here).
        for _ in 0..200 {
            match ask(&admin, &Request::Status).await {
                Response::Status(status) if status.role == crate::wire::client::Role::Primary => {
                    break
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
        assert!(matches!(
            ask(&as_node, &put()).await,
            Response::Written { .. }
        ));
        match ask(&as_node, &Request::RemoveMember { id: config.id }).await {
            Response::Error(Error::Refused(message)) => {
                assert!(message.contains("may not remove members"), "{message}")
            }
            other => panic!("a node certificate removing a member: got {other:?}"),
        }
        let other_node = Request::AddMember {
            member: crate::wire::message::Member {
                id: 8,
                client_addr: "127.0.0.1:1".into(),
                peer_addr: "127.0.0.1:2".into(),
                voter: false,
            },
        };
        match ask(&as_node, &other_node).await {
            Response::Error(Error::Refused(message)) => {
                assert!(message.contains("only add node 9"), "{message}")
            }
            other => panic!("node 9 adding node 8: got {other:?}"),
        }

        // The peer port takes only node certificates (of any node: see `peer`).
        let as_client = dial(&config.peer_addr, &admin_files, PEER_ALPN).await;
        let reason = refusal_reason(as_client).await;
        assert!(reason.contains("only node certificates"), "{reason}");

        let _ = stop.send(());
        node.await.unwrap().unwrap();
    }
}

#[cfg(test)]
mod registration_tests {
    use super::*;

    fn member(id: u64, voter: bool) -> Member {
        Member {
            id,
            client_addr: format!("127.0.0.{}:7379", 10 + id),
            peer_addr: format!("127.0.0.{}:7380", 10 + id),
            voter,
        }
    }

    #[test]
    fn a_fresh_joiner_registers() {
        let own = member(4, false);
        assert!(needs_registration(
            &Membership::new(vec![own.clone()]),
            &own
        ));
    }

    #[test]
    fn a_member_restarted_with_join_does_not_register_again() {
        let own = member(4, false);
        let cluster = Membership::new(vec![member(1, true), member(2, true), member(4, true)]);
        assert!(!needs_registration(&cluster, &own));
    }

    #[test]
    fn a_removed_or_moved_node_registers_again() {
        let own = member(4, false);
        let without = Membership::new(vec![member(1, true), member(2, true)]);
        assert!(needs_registration(&without, &own));
        let mut moved = member(4, true);
        moved.peer_addr = "127.0.0.99:7380".into();
        let elsewhere = Membership::new(vec![member(1, true), moved]);
        assert!(needs_registration(&elsewhere, &own));
    }
}
