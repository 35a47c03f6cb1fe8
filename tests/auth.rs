//! Users and API tokens end to end, on real `kvnode` processes: managed with the `kvctl` binary
//! (admin certificate), used on the RESP door (`AUTH`, `HELLO … AUTH`, `NOAUTH`, `WRONGPASS`,
//! roles) and on the HTTP door (Bearer, `x-token`, Basic; 401 and 403), and refused on every node
//! once removed, revoked or expired.
//!
//! Address block: 127.0.0.211-213, ports 25400-25403.

mod common;

use std::time::Duration;

use reqwest::{Certificate, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use common::{eventually, Cluster, ClusterSpec, ADMIN_CLIENT, READWRITE_CLIENT};
use replikv::NodeId;

/// Runs `kvctl --config <config> args…` with `stdin` as its standard input; returns (exit code,
/// stdout, stderr).
async fn kvctl(config: &std::path::Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kvctl");
    let mut input = child.stdin.take().expect("kvctl's stdin");
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let output = child.wait_with_output().await.expect("kvctl runs");
    (
        output.status.code().expect("kvctl exited"),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

/// `kvctl` that must succeed; returns its stdout.
async fn kvctl_ok(config: &std::path::Path, args: &[&str], stdin: &str) -> String {
    let (code, stdout, stderr) = kvctl(config, args, stdin).await;
    assert_eq!(code, 0, "kvctl {args:?}: {stderr}");
    stdout
}

/// One RESP connection, speaking just enough of the protocol to see the door's exact texts.
struct Resp {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Resp {
    async fn connect(addr: &str) -> Resp {
        let (reader, writer) = TcpStream::connect(addr).await.unwrap().into_split();
        Resp {
            reader: BufReader::new(reader),
            writer,
        }
    }

    /// Sends one command and reads its reply, flattened to text: `+OK`, `-ERR …`, `:1`, the
    /// bulk string itself, `(nil)`, or the elements of an array or map joined by spaces.
    async fn call(&mut self, args: &[&str]) -> String {
        let mut command = format!("*{}\r\n", args.len());
        for arg in args {
            command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.writer.write_all(command.as_bytes()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.reply())
            .await
            .expect("a reply in time")
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).await.unwrap();
        line.trim_end_matches("\r\n").to_string()
    }

    fn reply(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + '_>> {
        Box::pin(async move {
            let line = self.line().await;
            let (kind, rest) = line.split_at(1);
            match kind {
                "$" if rest == "-1" => "(nil)".to_string(),
                "$" => self.line().await,
                "_" => "(nil)".to_string(),
                "*" | "%" => {
                    let count: usize = rest.parse().unwrap();
                    let items = if kind == "%" { 2 * count } else { count };
                    let mut parts = Vec::new();
                    for _ in 0..items {
                        parts.push(self.reply().await);
                    }
                    parts.join(" ")
                }
                _ => line,
            }
        })
    }
}

const NOAUTH: &str = "-NOAUTH Authentication required.";
const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.";

/// An HTTPS client trusting the cluster CA, with no client certificate.
fn https(cluster: &Cluster) -> reqwest::Client {
    let ca = std::fs::read(cluster.certs_dir.join("ca.pem")).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn kv_url(cluster: &Cluster, id: NodeId, key: &str) -> String {
    format!("https://{}/v1/kv/{key}", cluster.spec.http_addr(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_tokens_work_on_every_door_and_every_node() {
    let cluster = Cluster::start(ClusterSpec::new(3, 211, 25400).with_authenticated_resp());
    let (primary, _) = cluster.wait_for_primary().await;
    let backup = (1..=3).find(|&id| id != primary).unwrap();
    let admin = cluster.write_client_config(ADMIN_CLIENT);
    let readwrite = cluster.write_client_config(READWRITE_CLIENT);

    // --- kvctl: users and tokens, admin only ---
    kvctl_ok(
        &admin,
        &["user", "add", "alice", "--role", "readwrite"],
        "alice-pw\n",
    )
    .await;
    kvctl_ok(
        &admin,
        &["user", "add", "reader", "--role", "readonly"],
        "reader-pw\n",
    )
    .await;
    kvctl_ok(
        &admin,
        &["user", "add", "default", "--role", "readwrite"],
        "default-pw\n",
    )
    .await;
    let (code, _, stderr) = kvctl(
        &admin,
        &["user", "add", "alice", "--role", "admin"],
        "other\n",
    )
    .await;
    assert_eq!(code, 2, "a second alice: {stderr}");
    assert!(stderr.contains("exists already"), "{stderr}");
    let (code, _, stderr) = kvctl(
        &readwrite,
        &["user", "add", "mallory", "--role", "admin"],
        "x\n",
    )
    .await;
    assert_eq!(code, 6, "a readwrite certificate adding a user: {stderr}");
    let users: Value =
        serde_json::from_str(&kvctl_ok(&admin, &["--json", "user", "list"], "").await).unwrap();
    let listed: Vec<(String, String)> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|user| {
            (
                user["name"].as_str().unwrap().to_string(),
                user["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("alice", "readwrite"),
            ("default", "readwrite"),
            ("reader", "readonly")
        ]
        .map(|(name, role)| (name.to_string(), role.to_string()))
    );
    let writer_token = kvctl_ok(
        &admin,
        &["token", "create", "--role", "readwrite", "--name", "ci"],
        "",
    )
    .await
    .trim()
    .to_string();
    assert!(writer_token.starts_with("rkv_"), "{writer_token}");
    let reader_token = kvctl_ok(&admin, &["token", "create", "--role", "readonly"], "")
        .await
        .trim()
        .to_string();
    let short_token = kvctl_ok(
        &admin,
        &[
            "token", "create", "--role", "admin", "--ttl", "2s", "--name", "short",
        ],
        "",
    )
    .await
    .trim()
    .to_string();
    let tokens = kvctl_ok(&admin, &["token", "list"], "").await;
    assert!(
        tokens.contains(" ci ") && tokens.contains(" short "),
        "{tokens}"
    );
    assert!(
        !tokens.contains(&writer_token[4..]),
        "a listing shows no secret"
    );

    // --- RESP, on a backup (writes are forwarded) ---
    let resp_addr = cluster.spec.resp_addr(backup);
    let mut alice = Resp::connect(&resp_addr).await;
    assert_eq!(alice.call(&["GET", "k"]).await, NOAUTH);
    assert_eq!(alice.call(&["PING"]).await, NOAUTH);
    assert_eq!(alice.call(&["AUTH", "alice", "wrong"]).await, WRONGPASS);
    assert_eq!(alice.call(&["AUTH", "nobody", "alice-pw"]).await, WRONGPASS);
    assert_eq!(alice.call(&["SET", "k", "v"]).await, NOAUTH);
    assert_eq!(alice.call(&["AUTH", "alice", "alice-pw"]).await, "+OK");
    assert_eq!(alice.call(&["SET", "k", "v"]).await, "+OK");
    assert_eq!(alice.call(&["GET", "k"]).await, "v");

    let mut hello = Resp::connect(&resp_addr).await;
    let greeting = hello
        .call(&["HELLO", "3", "AUTH", "alice", "alice-pw"])
        .await;
    assert!(greeting.starts_with("server redis"), "{greeting}");
    assert_eq!(hello.call(&["GET", "k"]).await, "v");
    let mut wrong_hello = Resp::connect(&resp_addr).await;
    assert_eq!(
        wrong_hello
            .call(&["HELLO", "3", "AUTH", "alice", "nope"])
            .await,
        WRONGPASS
    );
    assert_eq!(wrong_hello.call(&["GET", "k"]).await, NOAUTH);

    let mut reader = Resp::connect(&resp_addr).await;
    assert_eq!(reader.call(&["AUTH", "reader", "reader-pw"]).await, "+OK");
    assert_eq!(reader.call(&["GET", "k"]).await, "v");
    let refused = reader.call(&["SET", "k", "w"]).await;
    assert!(refused.starts_with("-NOPERM"), "{refused}");

    let mut default = Resp::connect(&resp_addr).await;
    assert_eq!(default.call(&["AUTH", "default-pw"]).await, "+OK");
    assert_eq!(default.call(&["GET", "k"]).await, "v");

    // --- HTTP, on every node ---
    let http = https(&cluster);
    for id in 1..=3 {
        let response = http.get(kv_url(&cluster, id, "k")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "node {id}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["kind"], "refused", "{body}");
    }
    let put = http
        .put(kv_url(&cluster, backup, "h"))
        .bearer_auth(&writer_token)
        .body("from-http")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    for id in 1..=3 {
        let got = http
            .get(kv_url(&cluster, id, "h"))
            .header("x-token", &reader_token)
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::OK, "node {id}");
        assert_eq!(got.text().await.unwrap(), "from-http");
    }
    let basic = http
        .get(kv_url(&cluster, primary, "h"))
        .basic_auth("reader", Some("reader-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::OK);
    for (user, password) in [("reader", "wrong"), ("nobody", "reader-pw")] {
        let wrong = http
            .get(kv_url(&cluster, primary, "h"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(
            wrong.status(),
            StatusCode::UNAUTHORIZED,
            "{user}:{password}"
        );
    }
    for request in [
        http.put(kv_url(&cluster, primary, "h"))
            .basic_auth("reader", Some("reader-pw")),
        http.put(kv_url(&cluster, primary, "h"))
            .bearer_auth(&reader_token),
    ] {
        let response = request.body("nope").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    let bogus = http
        .get(kv_url(&cluster, primary, "h"))
        .bearer_auth("rkv_not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(bogus.status(), StatusCode::UNAUTHORIZED);

    // --- expiry, revocation and removal hold on every node ---
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for id in 1..=3 {
        let expired = http
            .get(kv_url(&cluster, id, "h"))
            .bearer_auth(&short_token)
            .send()
            .await
            .unwrap();
        assert_eq!(expired.status(), StatusCode::UNAUTHORIZED, "node {id}");
        let body: Value = expired.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains("expired"),
            "{body}"
        );
    }
    kvctl_ok(&admin, &["token", "revoke", "ci"], "").await;
    kvctl_ok(&admin, &["user", "remove", "alice"], "").await;
    for id in 1..=3 {
        eventually(&format!("node {id} refuses the revoked token"), || {
            let request = http
                .get(kv_url(&cluster, id, "h"))
                .bearer_auth(&writer_token);
            async move {
                let response = request.send().await.ok()?;
                (response.status() == StatusCode::UNAUTHORIZED).then_some(())
            }
        })
        .await;
        eventually(&format!("node {id} refuses the removed user"), || {
            let request = http
                .get(kv_url(&cluster, id, "h"))
                .basic_auth("alice", Some("alice-pw"));
            async move {
                let response = request.send().await.ok()?;
                (response.status() == StatusCode::UNAUTHORIZED).then_some(())
            }
        })
        .await;
    }
    // The removed user's open RESP connection is refused from its next command on.
    assert_eq!(alice.call(&["GET", "k"]).await, NOAUTH);
    assert_eq!(alice.call(&["AUTH", "alice", "alice-pw"]).await, WRONGPASS);
    // The others are not affected.
    assert_eq!(reader.call(&["GET", "k"]).await, "v");
    let still = http
        .get(kv_url(&cluster, backup, "h"))
        .header("x-token", &reader_token)
        .send()
        .await
        .unwrap();
    assert_eq!(still.status(), StatusCode::OK);
}

/// Runs `redis-cli` with `args` and returns its stdout (stderr must stay empty).
async fn redis_cli(args: &[&str]) -> String {
    let output = tokio::process::Command::new("redis-cli")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run redis-cli (Debian's redis-tools; .ci/run installs it)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.trim().is_empty(), "redis-cli {args:?}: {stderr}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_speaks_tls_with_the_cluster_ca() {
    let cluster = Cluster::start(
        ClusterSpec::new(1, 214, 25410)
            .with_authenticated_resp()
            .with_resp_tls(),
    );
    cluster.wait_for_primary().await;
    let admin = cluster.client(ADMIN_CLIENT);
    admin
        .user_add(
            "tls-user",
            replikv::wire::client::ClientRole::ReadWrite,
            "tls-pw",
        )
        .await
        .unwrap();
    admin.close().await;
    let (host, port) = cluster
        .spec
        .resp_addr(1)
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .unwrap();
    let ca = cluster.certs_dir.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let files = cluster.client_files(READWRITE_CLIENT);
    let (cert, key) = (files.cert.to_str().unwrap(), files.key.to_str().unwrap());
    let tls = ["--tls", "--cacert", ca, "-h", &host, "-p", &port];

    // A client certificate of the cluster CA gives the connection its role.
    let with_certificate = [&tls[..], &["--cert", cert, "--key", key]].concat();
    assert_eq!(
        redis_cli(&[&with_certificate[..], &["SET", "a", "b"]].concat()).await,
        "OK"
    );
    assert_eq!(
        redis_cli(&[&with_certificate[..], &["GET", "a"]].concat()).await,
        "b"
    );
    // A user's password over TLS without a certificate.
    let with_password = [
        &tls[..],
        &[
            "--user",
            "tls-user",
            "--pass",
            "tls-pw",
            "--no-auth-warning",
        ],
    ]
    .concat();
    assert_eq!(
        redis_cli(&[&with_password[..], &["GET", "a"]].concat()).await,
        "b"
    );
    // Neither: refused.
    assert_eq!(
        redis_cli(&[&tls[..], &["GET", "a"]].concat()).await,
        "NOAUTH Authentication required."
    );
    // Plain TCP on a TLS port gets no answer it can read.
    let plain = tokio::process::Command::new("redis-cli")
        .args(["-h", &host, "-p", &port, "PING"])
        .output()
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("PONG"));
}
