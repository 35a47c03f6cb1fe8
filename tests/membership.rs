//! Membership changes with real `kvnode` processes: a node joins a cluster under load with
//! `kvnode --join`, catches up and becomes a voter; members are removed, the primary included;
//! a backup that missed more than the retained log is brought back by a snapshot.
//!
//! Address block: 127.0.0.101-110, ports 25100-25199 (no other test file uses them). As in
//! `tests/process.rs`, every wait is a condition with a generous deadline, never a timing
//! assertion.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    eventually, Cluster, ClusterSpec, ADMIN_CLIENT, CLIENT_TIMEOUT, PATIENCE, READWRITE_CLIENT,
};
use replikv::client::Client;
use replikv::config::NodeConfig;
use replikv::wire::client::{ClusterStatus, Condition, Expiry, Request, Response, Role, Write};
use replikv::{NodeId, ReadConsistency, WriteConcern};

/// Acknowledged writes: key → value.
type Acknowledged = Arc<Mutex<BTreeMap<String, String>>>;

/// A node started with `kvnode --join`, outside the harness's [`Cluster`] (which only knows the
/// nodes it made). Killed on drop; its log is printed if the test is failing.
struct JoiningNode {
    id: NodeId,
    client_addr: String,
    log_path: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl JoiningNode {
    /// Starts node `id` of `cluster`'s address plan with `--join join_addr`, on flags only (no
    /// configuration file, no member list): what an operator types.
    fn start(cluster: &Cluster, id: NodeId, join_addr: &str) -> JoiningNode {
        let spec = &cluster.spec;
        let dir = cluster.dir.path();
        let args = vec![
            "--id".to_string(),
            id.to_string(),
            "--client-addr".to_string(),
            spec.client_addr(id),
            "--peer-addr".to_string(),
            spec.peer_addr(id),
            "--data-dir".to_string(),
            dir.join(format!("node-{id}")).display().to_string(),
            "--certs-dir".to_string(),
            cluster.certs_dir.display().to_string(),
            "--join".to_string(),
            join_addr.to_string(),
        ];
        let mut node = JoiningNode {
            id,
            client_addr: spec.client_addr(id),
            log_path: dir.join(format!("node-{id}.log")),
            args,
            child: None,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} is already running", self.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the joining node's log");
        let log_err = log.try_clone().expect("clone the log handle");
        let child = Command::new(env!("CARGO_BIN_EXE_kvnode"))
            .args(&self.args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("start the joining kvnode");
        self.child = Some(child);
    }

    /// SIGKILL, then the same command again on the same data directory.
    fn kill_and_restart(&mut self) {
        let mut child = self.child.take().expect("the joining node is running");
        child.kill().expect("SIGKILL the joining node");
        child.wait().expect("reap the joining node");
        self.spawn();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for JoiningNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "----- joining node {} ({}) -----",
                self.id, self.client_addr
            );
            for line in &lines[lines.len().saturating_sub(80)..] {
                eprintln!("{line}");
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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

/// Issues the certificate of node `id` with `kvctl certs init`, as the README tells an operator
/// to: the existing CA is re-used and only the missing certificate is written.
async fn issue_node_certificate(cluster: &Cluster, id: NodeId) {
    let certs = cluster.certs_dir.display().to_string();
    let nodes = id.to_string();
    let host = format!("{id}={}", cluster.spec.ip(id));
    let (code, stdout, stderr) = kvctl(&[
        "certs",
        "init",
        "--dir",
        &certs,
        "--nodes",
        &nodes,
        "--node-host",
        &host,
        "--client",
        &format!("{ADMIN_CLIENT}:admin"),
    ])
    .await;
    assert_eq!(code, 0, "kvctl certs init failed: {stderr}");
    let written: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        written.len(),
        2,
        "only node {id}'s certificate and key are new: {stdout}"
    );
    for line in written {
        assert!(
            line.contains(&format!("node-{id}.")),
            "kvctl certs init rewrote more than node {id}'s files: {stdout}"
        );
    }
}

/// Writes unique keys (`load-<name>-<worker>-<n>`, with `value_size`-byte values) at
/// w=majority until `stop`, recording each acknowledged one. Failed writes have an unknown
/// outcome and are not checked.
async fn write_load(
    session: Client,
    name: &'static str,
    worker: usize,
    value_size: usize,
    stop: Arc<AtomicBool>,
    acknowledged: Acknowledged,
) {
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("load-{name}-{worker}-{sequence:06}");
        let mut value = format!("value-{worker}-{sequence}-");
        while value.len() < value_size {
            value.push('x');
        }
        sequence += 1;
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

/// A write load of `workers` sessions, stopped with [`Load::stop`].
struct Load {
    stop: Arc<AtomicBool>,
    acknowledged: Acknowledged,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `workers` sessions writing keys named after `name`.
    fn start(client: &Client, name: &'static str, workers: usize, value_size: usize) -> Load {
        let acknowledged = Acknowledged::default();
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|worker| {
                tokio::spawn(write_load(
                    client.session(),
                    name,
                    worker,
                    value_size,
                    stop.clone(),
                    acknowledged.clone(),
                ))
            })
            .collect();
        Load {
            stop,
            acknowledged,
            workers,
        }
    }

    fn count(&self) -> usize {
        self.acknowledged.lock().expect("acknowledged map").len()
    }

    /// Waits until `more` writes beyond the current count have been acknowledged.
    async fn wait_for(&self, more: usize, what: &str) {
        let target = self.count() + more;
        eventually(what, || async { (self.count() >= target).then_some(()) }).await
    }

    async fn stop(self) -> BTreeMap<String, String> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.expect("writer task");
        }
        let acknowledged = self.acknowledged.lock().expect("acknowledged map");
        acknowledged.clone()
    }
}

/// Every pair of node `addr`'s state whose key starts with `prefix`, by a stale read of that node
/// alone.
async fn stale_scan(
    client: &Client,
    addr: &str,
    prefix: &str,
) -> replikv::Result<BTreeMap<String, String>> {
    let node = client.pinned_to(addr);
    let (pairs, _) = node.scan(prefix, 1_000_000, ReadConsistency::Stale).await?;
    Ok(pairs
        .into_iter()
        .map(|(key, value)| {
            (
                String::from_utf8_lossy(&key).into_owned(),
                String::from_utf8_lossy(&value).into_owned(),
            )
        })
        .collect())
}

/// Waits until a stale scan of the node at `addr` holds every write in `acknowledged`; panics
/// after [`PATIENCE`] with some of what is missing.
async fn wait_until_node_holds(
    client: &Client,
    addr: &str,
    acknowledged: &BTreeMap<String, String>,
) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let missing: Vec<String> = match stale_scan(client, addr, "load-").await {
            Ok(state) => acknowledged
                .iter()
                .filter(|(key, value)| state.get(*key) != Some(*value))
                .map(|(key, _)| key.clone())
                .take(5)
                .collect(),
            Err(error) => vec![format!("(the scan failed: {error})")],
        };
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged writes not all visible to a stale read of {addr} within \
             {PATIENCE:?}; missing or different, e.g. {missing:?}",
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The primary's view of the cluster (the client asks the primary when it can).
async fn primary_status(client: &Client) -> ClusterStatus {
    let status = client.status().await.expect("cluster status");
    assert_eq!(
        status.role,
        Role::Primary,
        "status answered by a non-primary"
    );
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_under_load_becomes_a_voter_and_a_member_is_removed() {
    let mut cluster = Cluster::start(ClusterSpec::new(3, 101, 25100));
    let (primary, _) = cluster.wait_for_primary().await;
    let client = cluster.client(READWRITE_CLIENT);
    let admin = cluster.client(ADMIN_CLIENT);
    let backups: Vec<NodeId> = (1..=3).filter(|id| *id != primary).collect();

    let load = Load::start(&client, "join", 4, 32);
    load.wait_for(1000, "1000 writes acknowledged before the join")
        .await;

    // Node 4 joins through a backup, which redirects its request to the primary.
    issue_node_certificate(&cluster, 4).await;
    let through = cluster.node(backups[0]).client_addr.clone();
    let mut joiner = JoiningNode::start(&cluster, 4, &through);
    eventually("node 4 a voter in the primary's membership", || async {
        let status = admin.status().await.ok()?;
        let row = status.members.iter().find(|row| row.member.id == 4)?;
        (status.role == Role::Primary && row.member.voter && row.role == Some(Role::Backup))
            .then_some(())
    })
    .await;
    load.wait_for(100, "100 more writes acknowledged once node 4 votes")
        .await;
    let acknowledged = load.stop().await;
    wait_until_node_holds(&client, &joiner.client_addr, &acknowledged).await;

    // `kvctl member list` shows it as a voter too.
    let admin_config = cluster.write_client_config(ADMIN_CLIENT);
    let admin_config = admin_config.to_str().expect("UTF-8 temporary path");
    let (code, stdout, stderr) = kvctl(&["--config", admin_config, "member", "list"]).await;
    assert_eq!(code, 0, "member list failed: {stderr}");
    let row = stdout
        .lines()
        .find(|line| line.starts_with("4 "))
        .unwrap_or_else(|| panic!("node 4 missing from member list: {stdout}"));
    assert!(
        row.contains("yes"),
        "node 4 is not listed as a voter: {row}"
    );

    // Restarted with the same --join on its data, node 4 does not register again, and is back.
    joiner.kill_and_restart();
    eventually(
        "the restarted node 4 deciding about registration",
        || async { joiner.log().contains("not registering again").then_some(()) },
    )
    .await;
    assert_eq!(
        joiner
            .log()
            .matches("asking the cluster to add this node")
            .count(),
        1,
        "the restarted node 4 registered again"
    );
    client
        .put(
            "load-restart",
            "back",
            WriteConcern::Majority,
            CLIENT_TIMEOUT,
        )
        .await
        .unwrap_or_else(|error| panic!("put after node 4 restarted failed: {error}"));
    let back = BTreeMap::from([("load-restart".to_string(), "back".to_string())]);
    wait_until_node_holds(&client, &joiner.client_addr, &back).await;

    // Remove one original backup; with it and the other original backup gone, the primary and
    // node 4 are a majority of the 3 voters left, but would not be of 4: writes at w=majority
    // succeed only if the removal took effect and node 4 really votes.
    let (primary, _) = cluster.wait_for_primary().await;
    let backups: Vec<NodeId> = (1..=3).filter(|id| *id != primary).collect();
    let (removed, other) = (backups[0], backups[1]);
    admin
        .remove_member(removed)
        .await
        .unwrap_or_else(|error| panic!("removing node {removed} failed: {error}"));
    let status = primary_status(&admin).await;
    assert!(
        status.members.iter().all(|row| row.member.id != removed),
        "node {removed} still listed after its removal: {status:#?}"
    );
    cluster.kill(removed);
    cluster.kill(other);

    let mut after = BTreeMap::new();
    for i in 0..20 {
        let (key, value) = (format!("load-after-{i:02}"), format!("after-{i}"));
        client
            .put(&key, &value, WriteConcern::Majority, CLIENT_TIMEOUT)
            .await
            .unwrap_or_else(|error| panic!("w=majority put after the removal failed: {error}"));
        after.insert(key, value);
    }
    for (key, value) in &after {
        let (found, _) = client
            .get(key, ReadConsistency::Linearizable)
            .await
            .unwrap_or_else(|error| panic!("linearizable read of {key} failed: {error}"));
        assert_eq!(found.as_deref(), Some(value.as_bytes()), "{key}");
    }
    wait_until_node_holds(&client, &joiner.client_addr, &after).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_primary_hands_over_to_a_new_one() {
    let mut cluster = Cluster::start(ClusterSpec::new(3, 105, 25110));
    let (old_primary, old_status) = cluster.wait_for_primary().await;
    let client = cluster.client(READWRITE_CLIENT);
    let mut before = BTreeMap::new();
    for i in 0..20 {
        let (key, value) = (format!("load-before-{i:02}"), format!("v{i}"));
        client
            .put(&key, &value, WriteConcern::Majority, CLIENT_TIMEOUT)
            .await
            .unwrap_or_else(|error| panic!("put on a healthy cluster failed: {error}"));
        before.insert(key, value);
    }

    // Only an admin certificate may remove a member: readwrite is refused (exit 6).
    let target = old_primary.to_string();
    let rw_config = cluster.write_client_config(READWRITE_CLIENT);
    let rw_config = rw_config.to_str().expect("UTF-8 temporary path");
    let (code, _, stderr) = kvctl(&["--config", rw_config, "member", "remove", &target]).await;
    assert_eq!(code, 6, "readwrite member remove: {stderr}");
    assert!(stderr.contains("admin"), "{stderr}");

    let admin_config = cluster.write_client_config(ADMIN_CLIENT);
    let admin_config = admin_config.to_str().expect("UTF-8 temporary path");
    let (code, stdout, stderr) =
        kvctl(&["--config", admin_config, "member", "remove", &target]).await;
    assert_eq!(code, 0, "admin member remove failed: {stderr}");
    assert!(stdout.contains("removed"), "{stdout}");

    // The removed primary steps down by itself.
    let observer = client.session().with_timeout(Duration::from_secs(2));
    let old_addr = cluster.node(old_primary).client_addr.clone();
    eventually("the removed primary stepping down", || async {
        let status = observer.status_of(&old_addr).await.ok()?;
        (status.role != Role::Primary).then_some(())
    })
    .await;
    // It no longer takes part; stop it so the others' agreement is all that is checked.
    cluster.kill(old_primary);

    let (new_primary, new_status) = cluster.wait_for_primary().await;
    assert_ne!(new_primary, old_primary);
    assert!(new_status.epoch > old_status.epoch);
    assert!(
        new_status
            .members
            .iter()
            .all(|row| row.member.id != old_primary),
        "the removed node is still a member: {new_status:#?}"
    );
    client
        .put("load-after", "yes", WriteConcern::Majority, CLIENT_TIMEOUT)
        .await
        .unwrap_or_else(|error| panic!("put under the new primary failed: {error}"));
    for (key, value) in before
        .iter()
        .chain([(&"load-after".to_string(), &"yes".to_string())])
    {
        let (found, meta) = client
            .get(key, ReadConsistency::Linearizable)
            .await
            .unwrap_or_else(|error| panic!("linearizable read of {key} failed: {error}"));
        assert_eq!(found.as_deref(), Some(value.as_bytes()), "{key}");
        assert_ne!(meta.node_id, old_primary);
    }
}

/// Rewrites node `id`'s configuration file with a small log retention, so the test's writes
/// overflow it quickly.
fn set_log_retention(cluster: &Cluster, id: NodeId, bytes: u64) {
    let path: &Path = &cluster.node(id).config_path;
    let mut config = NodeConfig::load(path).expect("load the node configuration");
    config.log_retention_bytes = Some(bytes);
    let toml = config.to_toml().expect("configuration as TOML");
    std::fs::write(path, toml).expect("write the node configuration");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_behind_the_compacted_log_is_resynced_by_a_snapshot() {
    const RETENTION: u64 = 64 * 1024;
    const VALUE_SIZE: usize = 100;
    let mut cluster = Cluster::start(ClusterSpec::new(3, 108, 25120));
    for id in 1..=3 {
        cluster.kill(id);
        set_log_retention(&cluster, id, RETENTION);
        cluster.restart(id);
    }
    let (primary, _) = cluster.wait_for_primary().await;
    let backup = (1..=3).find(|id| *id != primary).expect("a backup");
    let client = cluster.client(READWRITE_CLIENT);
    let mut acknowledged = BTreeMap::new();

    // A key with a deadline an hour away: its deadline is state in the system keyspace, which
    // the snapshot must carry like any key.
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as u64
        + 3_600_000;
    let expiring = Write::Set {
        key: b"expiring".to_vec(),
        value: b"for an hour".to_vec(),
        condition: Condition::Always,
        expiry: Expiry::At(deadline),
        get: false,
    };
    client
        .write(expiring, WriteConcern::All, Duration::from_secs(10))
        .await
        .expect("set a key with a deadline on every node");

    // The backup stops; the others write several times the retention, so the log the backup
    // would need is compacted away everywhere.
    let load = Load::start(&client, "before", 4, VALUE_SIZE);
    load.wait_for(50, "50 writes before the backup stops").await;
    cluster.kill(backup);
    let past_retention = 4 * RETENTION as usize / VALUE_SIZE;
    load.wait_for(past_retention, "writes past the log retention")
        .await;
    acknowledged.extend(load.stop().await);

    // A primary also keeps recent entries in memory, and could serve the backup from there;
    // restarting the two others (acknowledged writes are durable on both) leaves only the
    // compacted log on disk.
    for id in (1..=3).filter(|id| *id != backup) {
        cluster.kill(id);
        cluster.restart(id);
    }
    cluster.wait_for_primary().await;

    // The backup returns while writes go on: a snapshot, then the log from there.
    let load = Load::start(&client, "during", 4, VALUE_SIZE);
    load.wait_for(100, "writes after the restart").await;
    cluster.restart(backup);
    load.wait_for(200, "200 more writes while the backup resyncs")
        .await;
    acknowledged.extend(load.stop().await);

    // Once it has applied what the primary has, its state is the primary's.
    let (primary, _) = cluster.wait_for_primary().await;
    let observer = client.session().with_timeout(Duration::from_secs(2));
    let (primary_addr, backup_addr) = (
        cluster.node(primary).client_addr.clone(),
        cluster.node(backup).client_addr.clone(),
    );
    eventually("the backup applied everything the primary has", || async {
        let leader = observer.status_of(&primary_addr).await.ok()?;
        let follower = observer.status_of(&backup_addr).await.ok()?;
        (leader.role == Role::Primary
            && leader.applied_index == leader.commit_index
            && follower.applied_index == leader.applied_index)
            .then_some(())
    })
    .await;
    let primary_state = stale_scan(&client, &primary_addr, "")
        .await
        .expect("scan the primary");
    let backup_state = stale_scan(&client, &backup_addr, "")
        .await
        .expect("scan the backup");
    assert_eq!(
        primary_state.len(),
        backup_state.len(),
        "the resynced backup holds a different number of keys"
    );
    assert!(
        primary_state == backup_state,
        "the resynced backup's state differs from the primary's"
    );
    for (key, value) in &acknowledged {
        assert_eq!(backup_state.get(key), Some(value), "acknowledged {key}");
    }
    let expiry = client
        .pinned_to(&backup_addr)
        .forward(
            Request::GetExpiry {
                key: b"expiring".to_vec(),
                consistency: ReadConsistency::Stale,
            },
            Duration::from_secs(5),
        )
        .await
        .expect("the backup's expiry of the key");
    assert!(
        matches!(expiry, Response::Expiry { exists: true, deadline: Some(d), .. } if d == deadline),
        "the resynced backup keeps the key's deadline {deadline}: {expiry:?}"
    );

    // It got there through a snapshot: the log it needed was gone.
    let backup_log =
        std::fs::read_to_string(&cluster.node(backup).log_path).expect("read the backup's log");
    assert!(
        backup_log.to_lowercase().contains("snapshot"),
        "the backup was never sent a snapshot: the test did not overflow the log retention"
    );
}
