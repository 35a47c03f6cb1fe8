//! The HTTP door of real `kvnode` processes, with a real HTTP client (`reqwest`, rustls): every
//! endpoint and every error status, the identities (client certificate roles, no certificate),
//! the limits, and `/metrics` parsed by a Prometheus text-format parser, whose counters must move
//! after writes and after a failover.
//!
//! The test cluster serves HTTP over TLS with the cluster CA (the default outside `kvnode dev`)
//! and names no anonymous role, so a caller without a certificate is refused with 401.

mod common;

use std::time::Duration;

use reqwest::{Certificate, Client, Identity, StatusCode};
use serde_json::Value;

use common::{eventually, Cluster, ClusterSpec, ADMIN_CLIENT, READONLY_CLIENT};
use replikv::api::http::VERSION_HEADER;
use replikv::NodeId;

/// An HTTP client trusting the cluster CA, presenting `certificate` (a client name) if given.
fn http_client(cluster: &Cluster, certificate: Option<&str>) -> Client {
    let ca = std::fs::read(cluster.certs_dir.join("ca.pem")).unwrap();
    let mut builder = Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(30));
    if let Some(name) = certificate {
        let files = cluster.client_files(name);
        let mut pem = std::fs::read(&files.cert).unwrap();
        pem.extend(std::fs::read(&files.key).unwrap());
        builder = builder.identity(Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

fn url(cluster: &Cluster, id: NodeId, path: &str) -> String {
    format!("https://{}{path}", cluster.spec.http_addr(id))
}

/// The body of an error answer: `{kind, message}`.
async fn problem(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    let kind = body["kind"].as_str().unwrap_or_default().to_string();
    let message = body["message"].as_str().unwrap_or_default().to_string();
    (status, kind, message)
}

/// Every sample of `/metrics` on node `id`, by metric name and labels.
async fn metrics(client: &Client, cluster: &Cluster, id: NodeId) -> Vec<prometheus_parse::Sample> {
    let response = client
        .get(url(cluster, id, "/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|line| Ok(line.to_string()));
    prometheus_parse::Scrape::parse(lines).unwrap().samples
}

/// The value of the sample `name` whose labels include `labels`, or 0 if there is none.
fn value(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.metric == name)
        .filter(|sample| {
            labels
                .iter()
                .all(|(key, value)| sample.labels.get(key) == Some(*value))
        })
        .map(|sample| match sample.value {
            prometheus_parse::Value::Counter(value)
            | prometheus_parse::Value::Gauge(value)
            | prometheus_parse::Value::Untyped(value) => value,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_and_error_kind_over_https() {
    let mut cluster = Cluster::start(ClusterSpec::new(3, 221, 26221));
    let admin = http_client(&cluster, Some(ADMIN_CLIENT));
    let reader = http_client(&cluster, Some(READONLY_CLIENT));
    let anonymous = http_client(&cluster, None);
    let (primary, _) = cluster.wait_for_primary().await;
    let backup = (1..=3).find(|&id| id != primary).unwrap();

    // Health needs no credentials; readiness follows the election.
    for id in 1..=3 {
        let response = anonymous
            .get(url(&cluster, id, "/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "healthz of node {id}");
        eventually(&format!("node {id} ready"), || async {
            let response = anonymous
                .get(url(&cluster, id, "/readyz"))
                .send()
                .await
                .ok()?;
            (response.status() == StatusCode::OK).then_some(())
        })
        .await;
    }
    let before = metrics(&anonymous, &cluster, primary).await;

    // A write through a backup is forwarded to the primary; the answer says where it landed.
    let response = admin
        .put(url(
            &cluster,
            backup,
            "/v1/kv/greeting?w=majority&timeout=5s",
        ))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let index: u64 = response.headers()["x-replikv-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(response.headers().contains_key("x-replikv-epoch"));
    let written: Value = response.json().await.unwrap();
    assert_eq!(written["index"].as_u64(), Some(index));
    assert_eq!(written["meta"]["node_id"].as_u64(), Some(primary));

    // Read back through every node: the raw value, or JSON.
    for id in 1..=3 {
        let response = reader
            .get(url(&cluster, id, "/v1/kv/greeting"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "read through node {id}");
        assert_eq!(response.text().await.unwrap(), "hello");
    }
    let json: Value = reader
        .get(url(
            &cluster,
            backup,
            "/v1/kv/greeting?format=json&consistency=linearizable",
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["found"], Value::Bool(true));
    assert_eq!(json["value"], "hello");

    // A scan by prefix.
    admin
        .put(url(&cluster, primary, "/v1/kv/greeting2"))
        .body("hi")
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let pairs: Value = reader
        .get(url(&cluster, backup, "/v1/kv?prefix=greet&limit=10"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys: Vec<&str> = pairs["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| pair["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["greeting", "greeting2"]);
    // Pages of one pair, continued with `after`: every key once, then no `next`.
    let mut after: Option<String> = None;
    let mut walked = Vec::new();
    for _ in 0..4 {
        let mut path = "/v1/kv?prefix=greet&limit=1".to_string();
        if let Some(key) = &after {
            path.push_str(&format!("&after={key}"));
        }
        let page: Value = reader
            .get(url(&cluster, backup, &path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let pairs = page["pairs"].as_array().unwrap();
        assert!(pairs.len() <= 1, "limit 1 gave {page}");
        walked.extend(
            pairs
                .iter()
                .map(|pair| pair["key"].as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(walked, ["greeting", "greeting2"]);

    // Delete, then the key is missing: 404 with a JSON body.
    let response = admin
        .delete(url(&cluster, backup, "/v1/kv/greeting2"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (status, kind, _) = problem(
        reader
            .get(url(&cluster, primary, "/v1/kv/greeting2"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    // `if-absent`: written once, then a 409 that leaves the value alone. Through a backup, so the
    // condition is decided on the primary.
    let put_if_absent = |body: &'static str| {
        admin
            .put(url(&cluster, backup, "/v1/kv/once?if-absent"))
            .body(body)
            .send()
    };
    assert_eq!(
        put_if_absent("first").await.unwrap().status(),
        StatusCode::OK
    );
    let (status, kind, message) = problem(put_if_absent("second").await.unwrap()).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::CONFLICT, "condition_failed"),
        "{message}"
    );
    let kept = reader
        .get(url(&cluster, primary, "/v1/kv/once"))
        .send()
        .await
        .unwrap();
    let first_version = kept.headers().get(VERSION_HEADER).cloned();
    assert_eq!(kept.text().await.unwrap(), "first");

    // `if-version`: compare-and-set on the version a read gives, through a backup. The version is
    // the index of the write that set the key, so a write's answer names the next one to expect.
    let version_of = |header: Option<&reqwest::header::HeaderValue>| -> u64 {
        header
            .expect("a version header")
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let first_version = version_of(first_version.as_ref());
    let put_if_version = |key: &'static str, version: u64, body: &'static str| {
        admin
            .put(url(
                &cluster,
                backup,
                &format!("/v1/kv/{key}?if-version={version}"),
            ))
            .body(body)
            .send()
    };
    let swapped = put_if_version("once", first_version, "second")
        .await
        .unwrap();
    assert_eq!(swapped.status(), StatusCode::OK);
    let swapped: Value = swapped.json().await.unwrap();
    let second_version = swapped["index"].as_u64().expect("the write's index");
    assert!(second_version > first_version, "{swapped}");
    // The version read before no longer matches: a 409 that leaves the value alone.
    let (status, kind, message) = problem(
        put_if_version("once", first_version, "third")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::CONFLICT, "condition_failed"),
        "{message}"
    );
    assert!(message.contains("version"), "{message}");
    let now = reader
        .get(url(&cluster, primary, "/v1/kv/once"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        version_of(now.headers().get(VERSION_HEADER)),
        second_version
    );
    assert_eq!(now.text().await.unwrap(), "second");
    // Version 0 means absent: the first such write creates the key, the second finds it.
    assert_eq!(
        put_if_version("fresh", 0, "new").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        put_if_version("fresh", 0, "again").await.unwrap().status(),
        StatusCode::CONFLICT
    );

    // `ttl`: readable at once, gone (404 on every read) once it has expired.
    let put_at = std::time::Instant::now();
    let response = admin
        .put(url(&cluster, primary, "/v1/kv/brief?ttl=1s"))
        .body("soon gone")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let read = || reader.get(url(&cluster, primary, "/v1/kv/brief")).send();
    let first_status = read().await.unwrap().status();
    if put_at.elapsed() < Duration::from_millis(900) {
        assert_eq!(
            first_status,
            StatusCode::OK,
            "a key with a ttl of 1 s is readable before it expires"
        );
    }
    let mut gone = false;
    for _ in 0..100 {
        if read().await.unwrap().status() == StatusCode::NOT_FOUND {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gone,
        "a key with a ttl of 1 s was still readable 10 s later"
    );

    // Status and members, as kvctl shows them.
    let status: Value = reader
        .get(url(&cluster, backup, "/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["node_id"].as_u64(), Some(backup));
    assert_eq!(status["primary"].as_u64(), Some(primary));
    let members: Value = reader
        .get(url(&cluster, backup, "/v1/members"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(members.as_array().map(Vec::len), Some(3));

    // Identities: no certificate is 401 (this cluster has no anonymous role), readonly may not
    // write (403).
    let (status, kind, _) = problem(
        anonymous
            .get(url(&cluster, primary, "/v1/kv/greeting"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::UNAUTHORIZED, "refused")
    );
    let (status, kind, message) = problem(
        reader
            .put(url(&cluster, primary, "/v1/kv/greeting"))
            .body("no")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, kind.as_str()), (StatusCode::FORBIDDEN, "refused"));
    assert!(message.contains("readonly"), "{message}");

    // Bad input: 400 with the kind that kvctl's exit codes use.
    for (what, request) in [
        (
            "a key that is not UTF-8",
            admin.get(url(&cluster, primary, "/v1/kv/%FF%FE")),
        ),
        (
            "a bad write concern",
            admin
                .put(url(&cluster, primary, "/v1/kv/x?w=some"))
                .body("v"),
        ),
        (
            "an impossible write concern",
            admin.put(url(&cluster, primary, "/v1/kv/x?w=5")).body("v"),
        ),
        (
            "a bad timeout",
            admin
                .put(url(&cluster, primary, "/v1/kv/x?timeout=soon"))
                .body("v"),
        ),
        (
            "a bad consistency",
            admin.get(url(&cluster, primary, "/v1/kv/x?consistency=eventual")),
        ),
        (
            "an unknown parameter",
            admin.get(url(&cluster, primary, "/v1/kv/x?consistancy=stale")),
        ),
        (
            "a ttl that is not a duration",
            admin
                .put(url(&cluster, primary, "/v1/kv/x?ttl=soon"))
                .body("v"),
        ),
        (
            "if-absent with a value",
            admin
                .put(url(&cluster, primary, "/v1/kv/x?if-absent=maybe"))
                .body("v"),
        ),
        (
            "an if-version that is not a version",
            admin
                .put(url(&cluster, primary, "/v1/kv/x?if-version=latest"))
                .body("v"),
        ),
        (
            "if-absent with if-version",
            admin
                .put(url(&cluster, primary, "/v1/kv/x?if-absent&if-version=0"))
                .body("v"),
        ),
        (
            "a bad scan limit",
            admin.get(url(&cluster, primary, "/v1/kv?limit=0")),
        ),
    ] {
        let response = request.send().await.unwrap();
        let (status, kind, message) = problem(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {message}");
        assert_eq!(kind, "invalid_request", "{what}: {message}");
    }

    // A request head over the limit (96 KiB) is refused by hyper (431) before any handler runs.
    // The node answers and closes while the client may still be writing the head, so an attempt
    // can end in a broken pipe before the answer is read; some attempt must read the 431.
    let mut refused = None;
    for _ in 0..5 {
        match admin
            .get(url(&cluster, primary, "/v1/kv/greeting"))
            .header("x-padding", "p".repeat(200 * 1024))
            .send()
            .await
        {
            Ok(response) => {
                refused = Some(response.status());
                break;
            }
            Err(err) if err.is_request() => continue,
            Err(err) => panic!("an oversized head: {err}"),
        }
    }
    assert_eq!(
        refused,
        Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        "an oversized head is answered with 431 (None: every attempt ended before the answer)"
    );

    // A body over the limit: 413, before the node reads it all.
    let response = admin
        .put(url(&cluster, primary, "/v1/kv/big"))
        .body(vec![b'x'; 5 * 1024 * 1024])
        .send()
        .await;
    match response {
        Ok(response) => {
            let (status, kind, _) = problem(response).await;
            assert_eq!(
                (status, kind.as_str()),
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            );
        }
        // The node may close the connection before the client has sent the whole body.
        Err(err) => assert!(err.is_request() || err.is_body(), "{err}"),
    }

    // An unknown path: 404 JSON.
    let (status, kind, _) = problem(
        reader
            .get(url(&cluster, primary, "/v2/everything"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    // The metrics moved with the writes.
    let after = metrics(&anonymous, &cluster, primary).await;
    let puts = [("kind", "put"), ("outcome", "ok")];
    assert!(
        value(&after, "replikv_server_client_requests_total", &puts)
            > value(&before, "replikv_server_client_requests_total", &puts)
    );
    assert!(
        value(&after, "replikv_server_proposals_committed", &[])
            > value(&before, "replikv_server_proposals_committed", &[])
    );
    assert!(
        value(&after, "replikv_disk_wal_fsync_duration_seconds_count", &[])
            > value(
                &before,
                "replikv_disk_wal_fsync_duration_seconds_count",
                &[]
            )
    );
    assert_eq!(value(&after, "replikv_server_is_primary", &[]), 1.0);
    assert!(value(&after, "process_resident_memory_bytes", &[]) > 0.0);
    // Sampled every few seconds: the writes above made sessions and keys, and the store has a
    // size.
    eventually("the sessions and the store's size sampled", || async {
        let samples = metrics(&anonymous, &cluster, primary).await;
        (value(&samples, "replikv_mvcc_sessions", &[]) >= 1.0
            && value(&samples, "replikv_mvcc_db_total_size_in_bytes", &[]) > 0.0
            && value(&samples, "replikv_mvcc_keys", &[]) >= 1.0)
            .then_some(())
    })
    .await;
    let sent_to_backup = [("To", &*backup.to_string())];
    assert!(
        value(
            &after,
            "replikv_network_peer_sent_bytes_total",
            &sent_to_backup
        ) > 0.0
    );
    // The link to the backup sampled its round-trip time (etcd's peer_round_trip_time_seconds).
    assert!(
        value(
            &after,
            "replikv_network_peer_round_trip_time_seconds_count",
            &sent_to_backup
        ) > 0.0
    );
    assert!(
        value(
            &after,
            "replikv_network_peer_round_trip_time_seconds_sum",
            &sent_to_backup
        ) > 0.0
    );

    // A write concern that cannot be met: with one backup down, w=3 times out with 504 and says
    // how many acknowledged.
    let other_backup = (1..=3).find(|&id| id != primary && id != backup).unwrap();
    cluster.kill(other_backup);
    let (status, kind, message) = problem(
        admin
            .put(url(&cluster, primary, "/v1/kv/unmet?w=3&timeout=1s"))
            .body("v")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{message}");
    assert_eq!(kind, "write_concern_not_met");
    assert!(message.contains("2 of 3 acknowledged"), "{message}");

    // A failover: the surviving backup sees a new primary, and its counter moves.
    let seen = |samples: &[prometheus_parse::Sample]| {
        value(samples, "replikv_server_primary_changes_seen_total", &[])
    };
    let changes_before = seen(&metrics(&anonymous, &cluster, backup).await);
    cluster.restart(other_backup);
    cluster.kill(primary);
    eventually("the survivors elect a new primary", || async {
        let samples = metrics(&anonymous, &cluster, backup).await;
        (seen(&samples) > changes_before
            && value(&samples, "replikv_server_has_primary", &[]) == 1.0)
            .then_some(())
    })
    .await;
}

/// `kvnode dev` prints a ready `curl` line; run as printed, in a shell, it writes and reads a key
/// over plain HTTP (the dev cluster serves callers without credentials as readwrite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_line_kvnode_dev_prints_works() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let mut dev = Command::new(env!("CARGO_BIN_EXE_kvnode"))
        .args([
            "dev",
            "--first-ip",
            "127.0.0.231",
            "--base-port",
            "26331",
            "--dir",
        ])
        .arg(dir.path().join("cluster"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Read stdout to its end on a thread, so kvnode dev never writes to a closed pipe.
    let stdout = dev.stdout.take().unwrap();
    let (found, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|line| line.ok()) {
            if let Some(rest) = line.strip_prefix("HTTP:") {
                let _ = found.send(rest.trim().to_string());
            }
        }
    });
    let curl_line = lines
        .recv_timeout(common::PATIENCE)
        .expect("kvnode dev prints an HTTP line");
    assert!(curl_line.starts_with("curl "), "{curl_line}");
    let output = eventually("the printed curl line succeeds", || {
        let curl_line = curl_line.clone();
        async move {
            let output = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "set -e; {}",
                    curl_line.replace("curl ", "curl --silent --fail ")
                ))
                .output()
                .ok()?;
            output.status.success().then_some(output)
        }
    })
    .await;
    // The put answers JSON, then the get prints the raw value.
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.starts_with("{\"") && printed.ends_with("}1"),
        "{printed}"
    );
    // The line carries the admin token: without it, the same URL is refused.
    let url = curl_line.split_whitespace().last().unwrap();
    let anonymous = Command::new("curl")
        .args([
            "--silent",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
            url,
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&anonymous.stdout), "401", "{url}");
    // SIGTERM: kvnode dev stops its nodes.
    let _ = Command::new("kill").arg(dev.id().to_string()).status();
    let _ = dev.wait();
}
