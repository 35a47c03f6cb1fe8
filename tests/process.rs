//! Process-level tests: real `kvnode` processes on loopback, with real certificates, driven
//! through the client library and the `kvctl` binary.
//!
//! Every test has its own address block and ports (see each test's `ClusterSpec`), so they run in
//! parallel. Blocks used here: 127.0.0.21-79, 91-93, 124, 127-129 and 161-163, ports 24021-24072,
//! 24091, 24124-24131 and 24161-24166; other test files (and the chaos cluster at 127.0.0.139-152) must pick
//! others. Waits are conditions with generous deadlines, never timing assertions.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use common::{eventually, Cluster, ClusterSpec, CLIENT_TIMEOUT, READONLY_CLIENT, READWRITE_CLIENT};
use replikv::certs::TlsFiles;
use replikv::client::{Client, ClientOptions};
use replikv::wire::client::{Request, Response};
use replikv::wire::frame::{read_frame, write_frame, MAX_CLIENT_FRAME_BYTES};
use replikv::wire::CLIENT_ALPN;
use replikv::{Error, NodeId, ReadConsistency, WriteConcern};

/// Reads `key` with a linearizable read through `client`, panicking on failure.
async fn read(client: &Client, key: &str) -> Option<Vec<u8>> {
    match client.get(key, ReadConsistency::Linearizable).await {
        Ok((value, _)) => value,
        Err(error) => panic!("linearizable read of {key:?} failed: {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_keeps_acknowledged_writes_across_kill_9() {
    let mut cluster = Cluster::start(ClusterSpec::new(1, 21, 24021));
    cluster.wait_for_primary().await;
    let client = cluster.client(READWRITE_CLIENT);

    let mut acknowledged = BTreeMap::new();
    for i in 0..200 {
        let (key, value) = (format!("key-{i:03}"), format!("value-{i}"));
        client
            .put(&key, &value, WriteConcern::Majority, CLIENT_TIMEOUT)
            .await
            .unwrap_or_else(|error| panic!("put {key} on a healthy node failed: {error}"));
        acknowledged.insert(key, value);
    }
    drop(client);

    cluster.kill(1);
    cluster.restart(1);
    cluster.wait_for_primary().await;

    let client = cluster.client(READWRITE_CLIENT);
    for (key, value) in &acknowledged {
        let read_back = read(&client, key).await;
        assert_eq!(
            read_back.as_deref(),
            Some(value.as_bytes()),
            "acknowledged {key} lost or changed by kill -9 and restart"
        );
    }
}

/// A quinn client configuration that trusts the cluster CA but presents no certificate.
fn config_without_client_certificate(ca_cert: &std::path::Path) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca_cert).expect("open the CA file") {
        roots
            .add(certificate.expect("parse the CA certificate"))
            .expect("add the CA to the roots");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![CLIENT_ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS config");
    quinn::ClientConfig::new(Arc::new(quic))
}

/// Options for clients expected to be refused: the refusal is immediate, so a short deadline
/// only bounds a broken test.
fn refused_client_options() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(10),
        default_write_concern: WriteConcern::Majority,
    }
}

async fn assert_put_refused(client: &Client, key: &str, who: &str) {
    let outcome = client
        .put(key, "x", WriteConcern::Majority, Duration::from_secs(10))
        .await;
    match outcome {
        Err(Error::Refused(message)) => assert!(!message.is_empty()),
        other => panic!("{who}: expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_decide_who_may_connect_and_write() {
    let cluster = Cluster::start(ClusterSpec::new(1, 31, 24031));
    cluster.wait_for_primary().await;
    let addrs = cluster.client_addrs();
    let writer = cluster.client(READWRITE_CLIENT);

    // No certificate at all.
    let anonymous = Client::with_quic_config(
        addrs.clone(),
        config_without_client_certificate(&cluster.client_files(READWRITE_CLIENT).ca_cert),
        refused_client_options(),
    )
    .expect("build the anonymous client");
    assert_put_refused(&anonymous, "from-anonymous", "client without a certificate").await;

    // Everything from another CA: this client does not trust the nodes either.
    let other_dir = tempfile::tempdir().expect("temporary directory");
    common::make_certs(other_dir.path(), &cluster.spec);
    let stranger_files = TlsFiles::for_client(other_dir.path(), READWRITE_CLIENT);
    let stranger = Client::with_tls(addrs.clone(), &stranger_files, refused_client_options())
        .expect("build the other CA's client");
    assert_put_refused(&stranger, "from-stranger", "client of another CA").await;

    // Trusts the right CA but presents a certificate signed by another one.
    let impostor_files = TlsFiles {
        ca_cert: cluster.client_files(READWRITE_CLIENT).ca_cert,
        ..stranger_files
    };
    let impostor = Client::with_tls(addrs.clone(), &impostor_files, refused_client_options())
        .expect("build the impostor client");
    assert_put_refused(&impostor, "from-impostor", "certificate from another CA").await;

    // A readonly certificate may read but not write.
    let reader = cluster.client(READONLY_CLIENT);
    assert_put_refused(&reader, "from-readonly", "readonly client").await;
    writer
        .put("shared", "visible", WriteConcern::Majority, CLIENT_TIMEOUT)
        .await
        .expect("readwrite put");
    let (value, _) = reader
        .get("shared", ReadConsistency::Linearizable)
        .await
        .expect("readonly get");
    assert_eq!(value.as_deref(), Some(&b"visible"[..]));

    // None of the refused writes took effect.
    for key in [
        "from-anonymous",
        "from-stranger",
        "from-impostor",
        "from-readonly",
    ] {
        assert_eq!(
            read(&writer, key).await,
            None,
            "refused write of {key} applied"
        );
    }
}

/// What a node did with a malformed frame: answered an error, or closed the stream. Anything
/// else (a normal answer) fails the test; so does silence past the deadline.
async fn expect_error_or_close(recv: &mut quinn::RecvStream, case: &str) {
    let answer = tokio::time::timeout(
        common::PATIENCE,
        read_frame::<Response, _>(recv, MAX_CLIENT_FRAME_BYTES),
    )
    .await
    .unwrap_or_else(|_| panic!("{case}: the node neither answered nor closed the stream"));
    match answer {
        Ok(Some(Response::Error(_))) | Ok(None) | Err(_) => {}
        Ok(Some(other)) => panic!("{case}: the node accepted a malformed frame: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_fail_only_their_stream() {
    let cluster = Cluster::start(ClusterSpec::new(1, 41, 24041));
    cluster.wait_for_primary().await;
    let (_endpoint, connection) = cluster.raw_connection(1, READWRITE_CLIENT).await;

    let cases: [(&str, Vec<u8>); 3] = [
        // A 2-byte body that is no request (enum tag 0x7f does not exist).
        ("undecodable body", vec![0, 0, 0, 2, 0x7f, 0x7f]),
        // A length far above the limit, followed by a little data.
        ("oversized length", vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]),
        // A body shorter than its length, then the end of the stream.
        ("truncated frame", vec![0, 0, 0, 100, 1, 2, 3]),
    ];
    for (case, bytes) in cases {
        let (mut send, mut recv) = connection.open_bi().await.expect("open a stream");
        send.write_all(&bytes)
            .await
            .expect("send the malformed frame");
        if case == "truncated frame" {
            send.finish().expect("finish the stream");
        }
        expect_error_or_close(&mut recv, case).await;
    }

    // The same connection still serves a well-formed stream.
    let (mut send, mut recv) = connection.open_bi().await.expect("open a stream");
    write_frame(&mut send, &Request::Status, MAX_CLIENT_FRAME_BYTES)
        .await
        .expect("send a status request");
    let answer = read_frame::<Response, _>(&mut recv, MAX_CLIENT_FRAME_BYTES)
        .await
        .expect("read the status answer");
    assert!(
        matches!(answer, Some(Response::Status(_))),
        "status after malformed frames: {answer:?}"
    );

    // And so does a fresh client.
    let client = cluster.client(READWRITE_CLIENT);
    client
        .put(
            "after-garbage",
            "fine",
            WriteConcern::Majority,
            CLIENT_TIMEOUT,
        )
        .await
        .expect("put after malformed frames");
    assert_eq!(
        read(&client, "after-garbage").await.as_deref(),
        Some(&b"fine"[..])
    );
}

/// Runs `kvctl` with `args`, returning (exit code, stdout, stderr).
async fn kvctl(args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(args)
        .env_remove("REPLIKV_CONFIG")
        .output()
        .await
        .expect("run kvctl");
    let code = output.status.code().expect("kvctl exited (not killed)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (code, stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_end_to_end() {
    let cluster = Cluster::start(ClusterSpec::new(1, 51, 24051));
    cluster.wait_for_primary().await;
    let config_path = cluster.write_client_config(READWRITE_CLIENT);
    let config = config_path.to_str().expect("UTF-8 temporary path");

    let (code, stdout, stderr) = kvctl(&["--config", config, "put", "greeting", "hello"]).await;
    assert_eq!(code, 0, "put failed: {stderr}");
    assert_eq!(stdout, "", "put prints nothing on success");

    let (code, stdout, stderr) = kvctl(&["--config", config, "get", "greeting"]).await;
    assert_eq!(code, 0, "get failed: {stderr}");
    assert_eq!(stdout, "hello\n");

    let (code, stdout, stderr) = kvctl(&["--config", config, "--json", "get", "greeting"]).await;
    assert_eq!(code, 0, "get --json failed: {stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("get --json prints JSON");
    assert_eq!(json["value"], "hello");
    assert_eq!(json["meta"]["node_id"], 1);

    // Compare-and-set on the version `get --json` shows: applied once, then refused (exit 7)
    // because the write moved the version on.
    let version = json["version"]
        .as_u64()
        .expect("get --json gives the version");
    let if_version = |version: u64, value: &'static str| {
        let version = version.to_string();
        async move {
            kvctl(&[
                "--config",
                config,
                "put",
                "greeting",
                value,
                "--if-version",
                &version,
            ])
            .await
        }
    };
    let (code, _, stderr) = if_version(version, "hi").await;
    assert_eq!(
        code, 0,
        "put --if-version with the current version: {stderr}"
    );
    let (code, _, stderr) = if_version(version, "hey").await;
    assert_eq!(code, 7, "put --if-version with an old version: {stderr}");
    assert!(stderr.contains("not at version"), "{stderr}");
    let (code, stdout, stderr) = kvctl(&["--config", config, "get", "greeting"]).await;
    assert_eq!((code, stdout.as_str()), (0, "hi\n"), "{stderr}");

    let (code, stdout, stderr) = kvctl(&["--config", config, "get", "no-such-key"]).await;
    assert_eq!(
        code, 3,
        "get of a missing key: stdout {stdout:?} stderr {stderr:?}"
    );
    assert!(stderr.contains("not found"), "{stderr}");

    let (code, _, stderr) = kvctl(&["--config", config, "put", "a", "1", "--w", "most"]).await;
    assert_eq!(code, 2, "bad --w: {stderr}");
    assert!(stderr.contains("write concern"), "{stderr}");

    let (code, stdout, stderr) = kvctl(&["--config", config, "status"]).await;
    assert_eq!(code, 0, "status failed: {stderr}");
    assert!(stdout.contains("primary"), "{stdout}");
    assert!(stdout.contains(&cluster.node(1).client_addr), "{stdout}");

    // A cluster that is not there: unavailable, with advice.
    let nowhere = cluster.dir.path().join("nowhere.toml");
    let nowhere_config = replikv::config::ClientConfig {
        nodes: vec!["127.0.0.59:24059".to_string()],
        certs_dir: cluster.certs_dir.clone(),
        client_name: READWRITE_CLIENT.to_string(),
        default_write_concern: WriteConcern::Majority,
        timeout_ms: 2000,
    };
    std::fs::write(&nowhere, nowhere_config.to_toml().expect("TOML")).expect("write config");
    let nowhere = nowhere.to_str().expect("UTF-8 temporary path");
    let (code, _, stderr) = kvctl(&["--config", nowhere, "get", "greeting"]).await;
    assert_eq!(code, 5, "no cluster: {stderr}");
    assert!(stderr.contains("kvnode dev"), "{stderr}");
}

/// Reads `key` from node `id` alone with a stale read until it holds `value`.
async fn wait_until_node_has(
    cluster: &Cluster,
    client: &Client,
    id: NodeId,
    key: &str,
    value: &str,
) {
    let node = client.pinned_to(&cluster.node(id).client_addr);
    let what = format!("node {id} serving {key}={value} to a stale read");
    eventually(&what, || async {
        match node.get(key, ReadConsistency::Stale).await {
            Ok((Some(found), meta)) if found == value.as_bytes() => {
                assert_eq!(
                    meta.node_id, id,
                    "a pinned stale read was served by another node"
                );
                Some(())
            }
            _ => None,
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_every_node_and_a_restarted_backup_catches_up() {
    let mut cluster = Cluster::start(ClusterSpec::new(3, 61, 24061));
    let (primary, _) = cluster.wait_for_primary().await;
    let client = cluster.client(READWRITE_CLIENT);

    for i in 0..20 {
        client
            .put(
                format!("all-{i}"),
                format!("v{i}"),
                WriteConcern::All,
                CLIENT_TIMEOUT,
            )
            .await
            .unwrap_or_else(|error| panic!("w=all put on a healthy cluster failed: {error}"));
    }
    for id in 1..=3 {
        for i in 0..20 {
            wait_until_node_has(&cluster, &client, id, &format!("all-{i}"), &format!("v{i}")).await;
        }
    }

    // Kill a backup; the two others still form a majority.
    let backup = (1..=3).find(|id| *id != primary).expect("a backup");
    cluster.kill(backup);
    for i in 0..20 {
        client
            .put(
                format!("later-{i}"),
                format!("w{i}"),
                WriteConcern::Majority,
                CLIENT_TIMEOUT,
            )
            .await
            .unwrap_or_else(|error| panic!("majority put with one backup down failed: {error}"));
    }
    cluster.restart(backup);
    for i in 0..20 {
        wait_until_node_has(
            &cluster,
            &client,
            backup,
            &format!("later-{i}"),
            &format!("w{i}"),
        )
        .await;
    }
}

/// Writes unique keys at w=majority until `stop`, recording each acknowledged one.
async fn write_load(
    session: Client,
    worker: usize,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<BTreeMap<String, String>>>,
) {
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("load-{worker}-{sequence}");
        let value = format!("value-{worker}-{sequence}");
        sequence += 1;
        // Failures during the failover are expected; their outcome is unknown and unchecked.
        if session
            .put(&key, &value, WriteConcern::Majority, CLIENT_TIMEOUT)
            .await
            .is_ok()
        {
            acknowledged
                .lock()
                .expect("acknowledged map")
                .insert(key, value);
        }
    }
}

fn acknowledged_count(acknowledged: &Mutex<BTreeMap<String, String>>) -> usize {
    acknowledged.lock().expect("acknowledged map").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_primary_under_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(ClusterSpec::new(3, 71, 24071));
    let (old_primary, old_status) = cluster.wait_for_primary().await;
    let client = cluster.client(READWRITE_CLIENT);

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            tokio::spawn(write_load(
                client.session(),
                worker,
                stop.clone(),
                acknowledged.clone(),
            ))
        })
        .collect();

    eventually("50 writes acknowledged before the kill", || async {
        (acknowledged_count(&acknowledged) >= 50).then_some(())
    })
    .await;
    cluster.kill(old_primary);
    let at_kill = acknowledged_count(&acknowledged);
    eventually("30 more writes acknowledged by a new primary", || async {
        (acknowledged_count(&acknowledged) >= at_kill + 30).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("writer task");
    }

    let (new_primary, new_status) = cluster.wait_for_primary().await;
    assert_ne!(
        new_primary, old_primary,
        "the killed node cannot be primary"
    );
    assert!(
        new_status.epoch > old_status.epoch,
        "a new primary has a new epoch"
    );

    let acknowledged = acknowledged.lock().expect("acknowledged map").clone();
    for (key, value) in &acknowledged {
        assert_eq!(
            read(&client, key).await.as_deref(),
            Some(value.as_bytes()),
            "acknowledged write {key} lost in the failover"
        );
    }

    // The old primary comes back as a backup and catches up with what it missed.
    cluster.restart(old_primary);
    client
        .put(
            "after-return",
            "caught-up",
            WriteConcern::Majority,
            CLIENT_TIMEOUT,
        )
        .await
        .expect("put after the old primary returned");
    wait_until_node_has(&cluster, &client, old_primary, "after-return", "caught-up").await;
}

/// A primary cut off from its backups acknowledges `w=1` writes that never reach them; after it
/// dies and a new primary is elected, the old primary returns, moves those entries to its
/// `rollback` tree (counted in its status) and takes the new primary's log. `majority` writes
/// are never affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_primary_rolls_back_its_unreplicated_writes() {
    let mut cluster = Cluster::start(ClusterSpec::new(3, 91, 24091));
    let (old_primary, _) = cluster.wait_for_primary().await;
    let client = cluster.client(READWRITE_CLIENT);
    client
        .put(
            "before",
            "committed",
            WriteConcern::Majority,
            CLIENT_TIMEOUT,
        )
        .await
        .unwrap_or_else(|error| panic!("majority put on a healthy cluster failed: {error}"));

    // Kill both backups (a pause would keep the primary's packets queued in their sockets): the
    // primary still acknowledges w=1 writes (its own flush) until it notices it lost its
    // majority and steps down.
    let backups: Vec<NodeId> = (1..=3).filter(|id| *id != old_primary).collect();
    for &backup in &backups {
        cluster.kill(backup);
    }
    let pinned = client.pinned_to(&cluster.spec.client_addr(old_primary));
    let mut unreplicated = Vec::new();
    for i in 0..200 {
        let key = format!("w1-{i}");
        match pinned
            .put(&key, "lost", WriteConcern::One, Duration::from_millis(200))
            .await
        {
            Ok(_) => unreplicated.push(key),
            Err(_) => break, // stepped down: it refuses writes without a majority
        }
    }
    assert!(
        !unreplicated.is_empty(),
        "the isolated primary acknowledged no w=1 write before stepping down"
    );

    cluster.kill(old_primary);
    for &backup in &backups {
        cluster.restart(backup);
    }
    let (new_primary, _) = cluster.wait_for_primary().await;
    assert_ne!(new_primary, old_primary);
    client
        .put("after", "committed", WriteConcern::Majority, CLIENT_TIMEOUT)
        .await
        .unwrap_or_else(|error| panic!("majority put after the failover failed: {error}"));

    cluster.restart(old_primary);
    let old_addr = cluster.spec.client_addr(old_primary);
    let rolled_back = eventually("the old primary rolls back its divergent entries", || {
        let client = &client;
        let old_addr = old_addr.clone();
        let expected = unreplicated.len() as u64;
        async move {
            let status = client.status_of(&old_addr).await.ok()?;
            (status.rolled_back_entries >= expected).then_some(status.rolled_back_entries)
        }
    })
    .await;
    assert!(rolled_back >= unreplicated.len() as u64);

    // The rolled-back writes are not in the data, on any node; the majority writes are.
    for key in &unreplicated {
        let (value, _) = client
            .get(key, ReadConsistency::Linearizable)
            .await
            .unwrap_or_else(|error| panic!("linearizable get failed: {error}"));
        assert_eq!(value, None, "rolled-back write {key} is visible");
    }
    let stale_on_old = client.pinned_to(&old_addr);
    for key in ["before", "after"] {
        eventually("the old primary has every majority write", || {
            let stale_on_old = &stale_on_old;
            async move {
                let (value, _) = stale_on_old.get(key, ReadConsistency::Stale).await.ok()?;
                (value.as_deref() == Some(&b"committed"[..])).then_some(())
            }
        })
        .await;
    }
}

/// Runs `kvctl` with `args` and `input` on its stdin, returning (exit code, stdout, stderr).
async fn kvctl_with_stdin(args: &[&str], input: &[u8]) -> (i32, Vec<u8>, String) {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(args)
        .env_remove("REPLIKV_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kvctl");
    let mut stdin = child.stdin.take().expect("kvctl stdin");
    // kvctl may refuse before reading all of it; a broken pipe is then expected.
    let _ = stdin.write_all(input).await;
    drop(stdin);
    let output = child.wait_with_output().await.expect("kvctl output");
    let code = output.status.code().expect("kvctl exited (not killed)");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (code, output.stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_put_reads_large_values_from_stdin() {
    let cluster = Cluster::start(ClusterSpec::new(1, 124, 24124));
    cluster.wait_for_primary().await;
    let config_path = cluster.write_client_config(READWRITE_CLIENT);
    let config = config_path.to_str().expect("UTF-8 temporary path");

    // Over the limit: refused before anything is sent, as a usage error naming the limit.
    let too_large = vec![b'x'; 5_000_000];
    let (code, _, stderr) = kvctl_with_stdin(&["--config", config, "put", "big"], &too_large).await;
    assert_eq!(code, 2, "a 5 MB value: {stderr}");
    let limit = replikv::client::MAX_VALUE_BYTES.to_string();
    assert!(
        stderr.contains(&limit),
        "the message names the limit: {stderr}"
    );
    let (code, _, stderr) = kvctl(&["--config", config, "get", "big"]).await;
    assert_eq!(code, 3, "nothing was written: {stderr}");

    // 1 MB of binary data, with no value argument and then with `-`, stored and read back intact.
    let value: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    for args in [vec!["put", "one-mb"], vec!["put", "one-mb-dash", "-"]] {
        let mut full = vec!["--config", config];
        full.extend(args.iter().copied());
        let (code, _, stderr) = kvctl_with_stdin(&full, &value).await;
        assert_eq!(code, 0, "{args:?}: {stderr}");
        let key = args[1];
        let client = cluster.client(READWRITE_CLIENT);
        assert_eq!(
            read(&client, key).await.as_deref(),
            Some(&value[..]),
            "{key}"
        );
        client.close().await;
    }
}

/// A fresh `kvctl` whose first configured node is dead dials the members in parallel and writes
/// through the ones that answer, instead of spending a whole connect timeout on the dead one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_kvctl_skips_a_dead_first_node() {
    let mut cluster = Cluster::start(ClusterSpec::new(3, 127, 24127));
    cluster.wait_for_primary().await;
    let config_path = cluster.write_client_config(READWRITE_CLIENT);
    let config = config_path.to_str().expect("UTF-8 temporary path");
    cluster.kill(1);
    cluster.wait_for_primary().await;

    let timeout = Duration::from_millis(1500);
    assert!(timeout < replikv::config::tuning::CLIENT_CONNECT_TIMEOUT);
    let timeout = format!("{}ms", timeout.as_millis());
    for attempt in 0..3 {
        let key = format!("after-kill-{attempt}");
        let (code, _, stderr) =
            kvctl(&["--config", config, "--timeout", &timeout, "put", &key, "v"]).await;
        if code != 0 {
            cluster.dump_logs();
        }
        assert_eq!(code, 0, "attempt {attempt}: {stderr}");
    }
}

/// `kvnode dev` as a child process; stopped with SIGTERM (which stops its nodes) when dropped.
struct DevSupervisor {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for DevSupervisor {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The process ids in the node table `kvnode dev` prints, by node id.
fn dev_table_pids(banner: &str) -> BTreeMap<NodeId, u32> {
    banner
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                // ID, client, peer, RESP and HTTP addresses, PID, LOG.
                [id, _client, _peer, _resp, _http, pid, _log] => {
                    Some((id.parse().ok()?, pid.parse().ok()?))
                }
                _ => None,
            }
        })
        .collect()
}

/// `kvnode dev` brings back a node that was killed, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvnode_dev_restarts_a_killed_node() {
    use std::io::{BufRead as _, BufReader};
    let dir = tempfile::Builder::new()
        .prefix("replikv-dev-")
        .tempdir()
        .expect("temporary directory");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kvnode"))
        .arg("dev")
        .arg("--dir")
        .arg(dir.path())
        .args(["--base-port", "24161", "--first-ip", "127.0.0.161"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start kvnode dev");
    let stdout = child.stdout.take().expect("kvnode dev stdout");
    let supervisor = DevSupervisor { child, _dir: dir };

    // Everything `kvnode dev` prints, line by line, on a channel.
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        // Read to the end even once the test stops listening: kvnode dev must not hit a closed
        // pipe while it stops the cluster.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut banner = String::new();
    let next_line = async |lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>| {
        tokio::time::timeout(common::PATIENCE, lines.recv())
            .await
            .expect("kvnode dev prints within the patience")
            .expect("kvnode dev is still running")
    };
    loop {
        let line = next_line(&mut lines).await;
        banner.push_str(&line);
        banner.push('\n');
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    let pids = dev_table_pids(&banner);
    assert_eq!(pids.len(), 3, "a table of 3 nodes: {banner}");
    assert!(
        banner.contains("restart"),
        "the banner says killed nodes come back: {banner}"
    );

    let config = replikv::config::ClientConfig::load(&supervisor._dir.path().join("client.toml"))
        .expect("kvnode dev writes client.toml");
    let node_addr = config.nodes[0].clone();
    eventually("node 1 serves", || serves(&config, &node_addr)).await;

    let status = std::process::Command::new("kill")
        .args(["-KILL", &pids[&1].to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let report = loop {
        let line = next_line(&mut lines).await;
        eprintln!("kvnode dev: {line}");
        if line.contains("node 1") && line.contains("restarted") {
            break line;
        }
    };
    assert!(report.contains("pid"), "{report}");
    eventually("node 1 serves again", || serves(&config, &node_addr)).await;
}

/// `Some` once the node at `addr` answers a status request (through a fresh client, so no cached
/// connection to an earlier process of the node counts).
async fn serves(config: &replikv::config::ClientConfig, addr: &str) -> Option<()> {
    let client = Client::connect(config).await.ok()?;
    let client = client.with_timeout(Duration::from_secs(1));
    let status = client.status_of(addr).await;
    client.close().await;
    status.ok().map(|_| ())
}

/// `kvctl scan` walks pages: values that together exceed one client frame (4 MiB; the node caps
/// a page at 1 MiB of pairs) come back in key order, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_scan_walks_pages_past_the_client_frame() {
    let cluster = Cluster::start(ClusterSpec::new(1, 151, 24151));
    cluster.wait_for_primary().await;
    let client = cluster.client(READWRITE_CLIENT);
    let value = vec![b'v'; 900 * 1024];
    for key in ["page-b", "page-a", "page-e", "page-c", "page-d"] {
        client
            .put(key, &value, WriteConcern::Majority, Duration::from_secs(10))
            .await
            .expect("put");
    }
    client.close().await;
    let config_path = cluster.write_client_config(READWRITE_CLIENT);
    let config = config_path.to_str().expect("UTF-8 temporary path");

    let (code, stdout, stderr) = kvctl(&["--config", config, "scan", "page-"]).await;
    assert_eq!(code, 0, "{stderr}");
    let keys: Vec<&str> = stdout
        .lines()
        .map(|line| line.split('\t').next().unwrap_or_default())
        .collect();
    assert_eq!(
        keys,
        ["page-a", "page-b", "page-c", "page-d", "page-e"],
        "{stderr}"
    );
    assert!(stdout
        .lines()
        .all(|line| line.len() == "page-a\t".len() + value.len()));

    let (code, stdout, stderr) =
        kvctl(&["--config", config, "scan", "page-", "--limit", "2"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.lines().count(),
        2,
        "--limit bounds the pairs, not the pages"
    );
}
