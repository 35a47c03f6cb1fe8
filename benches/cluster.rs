//! End-to-end benchmarks: replicated puts and linearizable gets on a real 3-node cluster.
//!
//! The three nodes run in this process with [`replikv::net::server::run_node`], each on its own
//! loopback address (127.0.0.81-83, a block no test uses), with sled in a temporary directory,
//! real certificates and mutually authenticated QUIC, exactly as `kvnode` runs them. The client
//! shares the runtime, as it shares the machine's cores in `kvctl bench` against `kvnode dev`.
//!
//! `cluster/put_w{1,majority,all}/S` runs S concurrent sessions (each one operation in flight)
//! until they have made the iterations criterion asks for; `cluster/get_linearizable/S` does the
//! same with linearizable gets of keys the puts wrote. Criterion's time per iteration is
//! wall-clock time divided by operations, so its throughput figure is the cluster's operations
//! per second at that concurrency; per-operation latency is what `kvctl bench` reports.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::Rng;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use replikv::certs::{self, CertRole, CertsInit, TlsFiles};
use replikv::client::join;
use replikv::client::{Client, ClientOptions};
use replikv::config::{DevCluster, DEV_CLIENT_NAME};
use replikv::net::server::run_node;
use replikv::{ReadConsistency, WriteConcern};

/// Node `i` (1..=3) binds `127.0.0.{FIRST_OCTET + i - 1}`.
const FIRST_OCTET: u64 = 81;
const NODES: u64 = 3;
const SESSIONS: [usize; 3] = [1, 16, 64];
const KEY_SPACE: u64 = 100_000;
const VALUE_SIZE: usize = 100;
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// A running in-process cluster and a client of it.
struct BenchCluster {
    _dir: tempfile::TempDir,
    stops: Vec<oneshot::Sender<()>>,
    nodes: Vec<JoinHandle<replikv::Result<()>>>,
    client: Client,
}

/// A port nobody uses right now on `ip`.
fn free_port(ip: &str) -> u16 {
    let socket = std::net::UdpSocket::bind((ip, 0)).expect("bind a loopback UDP socket");
    socket.local_addr().expect("local address").port()
}

impl BenchCluster {
    fn start(runtime: &Runtime) -> BenchCluster {
        let dir = tempfile::Builder::new()
            .prefix("replikv-bench-")
            .tempdir()
            .expect("create a temporary directory");
        // The dev plan gives complete configurations; only the addresses move to our block.
        let mut plan = DevCluster::plan(dir.path(), NODES, 7379).expect("plan a cluster");
        for (config, octet) in plan.nodes.iter_mut().zip(FIRST_OCTET..) {
            let ip = format!("127.0.0.{octet}");
            config.client_addr = format!("{ip}:{}", free_port(&ip));
            config.peer_addr = format!("{ip}:{}", free_port(&ip));
        }
        let members: Vec<_> = plan
            .nodes
            .iter()
            .map(|config| {
                let mut member = config
                    .members
                    .iter()
                    .find(|member| member.id == config.id)
                    .expect("every node is a member")
                    .clone();
                member.client_addr = config.client_addr.clone();
                member.peer_addr = config.peer_addr.clone();
                member
            })
            .collect();
        for config in &mut plan.nodes {
            config.members = members.clone();
        }
        certs::init_certs(&CertsInit {
            dir: plan.certs_dir.clone(),
            nodes: (1..=NODES)
                .zip(FIRST_OCTET..)
                .map(|(id, octet)| (id, vec![format!("127.0.0.{octet}")]))
                .collect(),
            clients: vec![(DEV_CLIENT_NAME.to_string(), CertRole::Admin)],
            force: false,
        })
        .expect("make certificates");

        let mut stops = Vec::new();
        let mut nodes = Vec::new();
        for config in plan.nodes.clone() {
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            let stopped = async {
                let _ = stopped.await;
            };
            nodes.push(runtime.spawn(run_node(config, stopped, join::register)));
        }
        let addrs = members
            .iter()
            .map(|member| member.client_addr.clone())
            .collect();
        let files = TlsFiles::for_client(&plan.certs_dir, DEV_CLIENT_NAME);
        let client = runtime.block_on(async {
            let client = Client::with_tls(
                addrs,
                &files,
                ClientOptions {
                    timeout: OPERATION_TIMEOUT,
                    default_write_concern: WriteConcern::Majority,
                },
            )
            .expect("build a client");
            // Wait for a primary and for every backup to be in sync: a w=all write succeeds.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match client
                    .put("ready", "1", WriteConcern::All, OPERATION_TIMEOUT)
                    .await
                {
                    Ok(_) => break,
                    Err(error) if Instant::now() < deadline => {
                        eprintln!("waiting for the cluster: {error}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(error) => panic!("the bench cluster did not come up: {error}"),
                }
            }
            client
        });
        BenchCluster {
            _dir: dir,
            stops,
            nodes,
            client,
        }
    }

    /// `count` warmed-up sessions (stream open, primary known).
    fn sessions(&self, runtime: &Runtime, count: usize) -> Vec<Arc<Client>> {
        runtime.block_on(async {
            let mut sessions = Vec::with_capacity(count);
            for _ in 0..count {
                let session = self.client.session();
                session
                    .get("ready", ReadConsistency::Local)
                    .await
                    .expect("warm-up read");
                sessions.push(Arc::new(session));
            }
            sessions
        })
    }

    fn stop(self, runtime: &Runtime) {
        runtime.block_on(async {
            self.client.close().await;
            for stop in self.stops {
                let _ = stop.send(());
            }
            for node in self.nodes {
                match node.await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => eprintln!("a bench node stopped on an error: {error}"),
                    Err(error) => eprintln!("a bench node task failed: {error}"),
                }
            }
        });
    }
}

/// Runs `iterations` operations spread over `sessions`, each session one at a time, and returns
/// the wall-clock time they took together.
async fn spread<F, Fut>(sessions: &[Arc<Client>], iterations: u64, operation: F) -> Duration
where
    F: Fn(Arc<Client>, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let count = sessions.len() as u64;
    let started = Instant::now();
    let tasks: Vec<_> = sessions
        .iter()
        .enumerate()
        .map(|(number, session)| {
            let number = number as u64;
            let share = iterations / count + u64::from(number < iterations % count);
            let session = Arc::clone(session);
            let operation = operation.clone();
            tokio::spawn(async move {
                for _ in 0..share {
                    let key = rand::thread_rng().gen_range(0..KEY_SPACE);
                    operation(Arc::clone(&session), key).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a bench session panicked");
    }
    started.elapsed()
}

fn key(n: u64) -> String {
    format!("bench-{n:012}")
}

fn cluster(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start a tokio runtime");
    let cluster = BenchCluster::start(&runtime);
    let value = Arc::new(vec![b'v'; VALUE_SIZE]);

    let mut group = c.benchmark_group("cluster");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(1));
    let concerns = [
        ("put_w1", WriteConcern::One),
        ("put_wmajority", WriteConcern::Majority),
        ("put_wall", WriteConcern::All),
    ];
    for (name, concern) in concerns {
        for count in SESSIONS {
            let sessions = cluster.sessions(&runtime, count);
            let value = Arc::clone(&value);
            group.bench_function(BenchmarkId::new(name, count), |b| {
                b.to_async(&runtime).iter_custom(|iterations| {
                    let value = Arc::clone(&value);
                    let sessions = sessions.clone();
                    async move {
                        spread(&sessions, iterations, move |session, n| {
                            let value = Arc::clone(&value);
                            async move {
                                session
                                    .put(key(n), value.as_slice(), concern, OPERATION_TIMEOUT)
                                    .await
                                    .expect("put");
                            }
                        })
                        .await
                    }
                });
            });
        }
    }
    for count in SESSIONS {
        let sessions = cluster.sessions(&runtime, count);
        group.bench_function(BenchmarkId::new("get_linearizable", count), |b| {
            b.to_async(&runtime).iter_custom(|iterations| {
                let sessions = sessions.clone();
                async move {
                    spread(&sessions, iterations, |session, n| async move {
                        session
                            .get(key(n), ReadConsistency::Linearizable)
                            .await
                            .expect("get");
                    })
                    .await
                }
            });
        });
    }
    group.finish();
    cluster.stop(&runtime);
}

criterion_group!(benches, cluster);
criterion_main!(benches);
