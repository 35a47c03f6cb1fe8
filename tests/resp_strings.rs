//! Redis string semantics on the RESP door, with the `redis` crate against real `kvnode`
//! processes: read-modify-write decided on the primary (`INCR`, `SETNX`, `SET NX|XX|GET`,
//! `GETDEL`, `APPEND`), atomic `MSET`, and expiring keys that hold on every node, failover
//! included.
//!
//! Address block: 127.0.0.201-209, ports 25350-25399.

mod common;

use std::time::Duration;

use common::{eventually, Cluster, ClusterSpec};
use redis::aio::MultiplexedConnection;
use replikv::NodeId;

/// A 3-node cluster with RESP doors, its primary's id, and a backup's id.
async fn cluster(first_ip: u8, client_port: u16) -> (Cluster, NodeId, NodeId) {
    let cluster = Cluster::start(ClusterSpec::new(3, first_ip, client_port).with_resp());
    let (primary, _) = cluster.wait_for_primary().await;
    let backup = (1..=3).find(|&id| id != primary).expect("a backup");
    (cluster, primary, backup)
}

async fn connect(cluster: &Cluster, id: NodeId) -> MultiplexedConnection {
    let url = format!("redis://{}/", cluster.spec.resp_addr(id));
    redis::Client::open(url.as_str())
        .expect("a redis client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to a RESP door")
}

/// Runs one command and returns its reply as `T`.
async fn run<T: redis::FromRedisValue>(
    connection: &mut MultiplexedConnection,
    args: &[&str],
) -> redis::RedisResult<T> {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query_async(connection).await
}

async fn ok<T: redis::FromRedisValue>(connection: &mut MultiplexedConnection, args: &[&str]) -> T {
    run(connection, args)
        .await
        .unwrap_or_else(|err| panic!("{args:?}: {err}"))
}

async fn error(connection: &mut MultiplexedConnection, args: &[&str]) -> String {
    match run::<redis::Value>(connection, args).await {
        Ok(value) => panic!("{args:?} should fail, answered {value:?}"),
        Err(err) => err.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_commands_answer_as_redis_does_through_a_backup() {
    let (cluster, _, backup) = cluster(201, 25350).await;
    let mut c = connect(&cluster, backup).await;

    // SETNX and SET's conditions.
    assert_eq!(ok::<i64>(&mut c, &["SETNX", "nx", "first"]).await, 1);
    assert_eq!(ok::<i64>(&mut c, &["SETNX", "nx", "second"]).await, 0);
    assert_eq!(
        ok::<Option<String>>(&mut c, &["SET", "nx", "third", "NX"]).await,
        None
    );
    assert_eq!(
        ok::<Option<String>>(&mut c, &["SET", "absent", "v", "XX"]).await,
        None
    );
    assert_eq!(ok::<Option<String>>(&mut c, &["GET", "absent"]).await, None);
    assert_eq!(
        ok::<Option<String>>(&mut c, &["SET", "nx", "fourth", "XX"])
            .await
            .as_deref(),
        Some("OK")
    );
    assert_eq!(
        ok::<Option<String>>(&mut c, &["SET", "nx", "fifth", "GET"])
            .await
            .as_deref(),
        Some("fourth")
    );
    assert_eq!(
        ok::<Option<String>>(&mut c, &["SET", "new", "v", "GET"]).await,
        None
    );
    assert!(error(&mut c, &["SET", "k", "v", "NX", "XX"])
        .await
        .contains("syntax error"));
    assert!(error(&mut c, &["SET", "k", "v", "EX", "0"])
        .await
        .contains("invalid expire time"));

    // GETDEL.
    assert_eq!(
        ok::<Option<String>>(&mut c, &["GETDEL", "nx"])
            .await
            .as_deref(),
        Some("fifth")
    );
    assert_eq!(ok::<Option<String>>(&mut c, &["GETDEL", "nx"]).await, None);
    assert_eq!(ok::<Option<String>>(&mut c, &["GET", "nx"]).await, None);

    // Counters, with Redis's own error texts.
    assert_eq!(ok::<i64>(&mut c, &["INCR", "counter"]).await, 1);
    assert_eq!(ok::<i64>(&mut c, &["INCRBY", "counter", "41"]).await, 42);
    assert_eq!(ok::<i64>(&mut c, &["DECR", "counter"]).await, 41);
    assert_eq!(ok::<i64>(&mut c, &["DECRBY", "counter", "50"]).await, -9);
    assert_eq!(ok::<String>(&mut c, &["GET", "counter"]).await, "-9");
    ok::<()>(&mut c, &["SET", "word", "abc"]).await;
    let text = error(&mut c, &["INCR", "word"]).await;
    assert!(
        text.contains("value is not an integer or out of range"),
        "{text}"
    );
    let text = error(&mut c, &["INCRBY", "counter", "x"]).await;
    assert!(
        text.contains("value is not an integer or out of range"),
        "{text}"
    );
    ok::<()>(&mut c, &["SET", "max", &i64::MAX.to_string()]).await;
    let text = error(&mut c, &["INCR", "max"]).await;
    assert!(
        text.contains("increment or decrement would overflow"),
        "{text}"
    );
    assert_eq!(
        ok::<String>(&mut c, &["GET", "max"]).await,
        i64::MAX.to_string()
    );

    // APPEND.
    assert_eq!(ok::<i64>(&mut c, &["APPEND", "log", "ab"]).await, 2);
    assert_eq!(ok::<i64>(&mut c, &["APPEND", "log", "cde"]).await, 5);
    assert_eq!(ok::<String>(&mut c, &["GET", "log"]).await, "abcde");

    // MSET: every pair, in one write.
    ok::<()>(&mut c, &["MSET", "m1", "a", "m2", "b", "m1", "c"]).await;
    assert_eq!(
        ok::<Vec<Option<String>>>(&mut c, &["MGET", "m1", "m2"]).await,
        vec![Some("c".to_string()), Some("b".to_string())]
    );
    assert!(error(&mut c, &["MSET", "m1", "a", "m2"])
        .await
        .contains("wrong number of arguments"));

    // Expiry: TTL, PTTL, EXPIRE, PEXPIRE, PERSIST, SET EX/PX/KEEPTTL, a plain SET clears it.
    assert_eq!(ok::<i64>(&mut c, &["TTL", "nothing"]).await, -2);
    assert_eq!(ok::<i64>(&mut c, &["TTL", "log"]).await, -1);
    assert_eq!(ok::<i64>(&mut c, &["EXPIRE", "nothing", "10"]).await, 0);
    assert_eq!(ok::<i64>(&mut c, &["EXPIRE", "log", "100"]).await, 1);
    let ttl = ok::<i64>(&mut c, &["TTL", "log"]).await;
    assert!((99..=100).contains(&ttl), "TTL {ttl}");
    assert_eq!(ok::<i64>(&mut c, &["PEXPIRE", "log", "50000"]).await, 1);
    let pttl = ok::<i64>(&mut c, &["PTTL", "log"]).await;
    assert!((45_000..=50_000).contains(&pttl), "PTTL {pttl}");
    assert_eq!(ok::<i64>(&mut c, &["APPEND", "log", "f"]).await, 6);
    assert!(
        ok::<i64>(&mut c, &["PTTL", "log"]).await > 0,
        "APPEND keeps the TTL"
    );
    assert_eq!(ok::<i64>(&mut c, &["PERSIST", "log"]).await, 1);
    assert_eq!(ok::<i64>(&mut c, &["PERSIST", "log"]).await, 0);
    assert_eq!(ok::<i64>(&mut c, &["TTL", "log"]).await, -1);
    ok::<()>(&mut c, &["SET", "session", "s", "EX", "100"]).await;
    assert!(ok::<i64>(&mut c, &["TTL", "session"]).await > 90);
    ok::<()>(&mut c, &["SET", "session", "t", "KEEPTTL"]).await;
    assert!(
        ok::<i64>(&mut c, &["TTL", "session"]).await > 90,
        "KEEPTTL keeps it"
    );
    ok::<()>(&mut c, &["SET", "session", "u"]).await;
    assert_eq!(
        ok::<i64>(&mut c, &["TTL", "session"]).await,
        -1,
        "a plain SET clears it"
    );
    ok::<()>(&mut c, &["SET", "short", "v", "PX", "300"]).await;
    assert_eq!(ok::<String>(&mut c, &["GET", "short"]).await, "v");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(ok::<Option<String>>(&mut c, &["GET", "short"]).await, None);
    assert_eq!(ok::<i64>(&mut c, &["TTL", "short"]).await, -2);
    assert_eq!(ok::<i64>(&mut c, &["EXISTS", "short"]).await, 0);
    // An expired key is absent to a read-modify-write too.
    ok::<()>(&mut c, &["SET", "gone", "5", "PX", "100"]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ok::<i64>(&mut c, &["INCR", "gone"]).await, 1);
    assert_eq!(ok::<i64>(&mut c, &["TTL", "gone"]).await, -1);
    // EXPIRE with a time not in the future deletes the key.
    assert_eq!(ok::<i64>(&mut c, &["EXPIRE", "gone", "0"]).await, 1);
    assert_eq!(ok::<Option<String>>(&mut c, &["GET", "gone"]).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_sum_exactly_and_mset_lands_all_at_once() {
    let (cluster, primary, backup) = cluster(204, 25360).await;
    const CLIENTS: usize = 8;
    const INCREMENTS: i64 = 40;
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        // Half the clients go through a backup, half to the primary.
        let id = if i % 2 == 0 { backup } else { primary };
        let mut connection = connect(&cluster, id).await;
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..INCREMENTS {
                seen.push(ok::<i64>(&mut connection, &["INCR", "shared"]).await);
            }
            seen
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.expect("an incrementing client"));
    }
    let total = CLIENTS as i64 * INCREMENTS;
    answers.sort_unstable();
    assert_eq!(
        answers,
        (1..=total).collect::<Vec<i64>>(),
        "every INCR got a distinct value"
    );
    let mut c = connect(&cluster, backup).await;
    assert_eq!(ok::<i64>(&mut c, &["GET", "shared"]).await, total);

    // MSET atomicity: a scan page is read at one index, so it never holds part of an MSET.
    let mut writer = connect(&cluster, backup).await;
    let writes = tokio::spawn(async move {
        for i in 0..60 {
            let keys: Vec<String> = ["a", "b", "c"]
                .iter()
                .map(|k| format!("m:{i:03}:{k}"))
                .collect();
            ok::<()>(
                &mut writer,
                &["MSET", &keys[0], "1", &keys[1], "2", &keys[2], "3"],
            )
            .await;
        }
    });
    let mut reader = connect(&cluster, primary).await;
    let mut checks = 0;
    while !writes.is_finished() || checks == 0 {
        let keys: Vec<String> = ok(&mut reader, &["KEYS", "m:*"]).await;
        let mut groups = std::collections::BTreeMap::<String, usize>::new();
        for key in &keys {
            *groups.entry(key[..5].to_string()).or_default() += 1;
        }
        assert!(
            groups.values().all(|&count| count == 3),
            "a partial MSET: {groups:?}"
        );
        checks += 1;
    }
    writes.await.expect("the MSET writer");
    let keys: Vec<String> = ok(&mut reader, &["KEYS", "m:*"]).await;
    assert_eq!(keys.len(), 180, "after {checks} checks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_holds_on_every_node_after_a_failover_and_a_restart() {
    let (mut cluster, primary, _) = cluster(207, 25370).await;
    let mut c = connect(&cluster, primary).await;
    ok::<()>(&mut c, &["SET", "lease", "held", "PX", "4000"]).await;
    ok::<()>(&mut c, &["SET", "forever", "here"]).await;
    drop(c);
    cluster.kill(primary);
    let (new_primary, _) = cluster.wait_for_primary().await;
    assert_ne!(new_primary, primary);
    let survivors: Vec<NodeId> = (1..=3).filter(|&id| id != primary).collect();
    // The deadline survived the failover: every surviving node reports it, before it passes.
    for &id in &survivors {
        let mut c = connect(&cluster, id).await;
        let pttl = ok::<i64>(&mut c, &["PTTL", "lease"]).await;
        assert!(pttl > 0 && pttl <= 4000, "node {id}: PTTL {pttl}");
    }
    // Past the deadline, no read on any node returns it, stale reads included.
    tokio::time::sleep(Duration::from_millis(4200)).await;
    cluster.restart(primary);
    for id in 1..=3 {
        eventually(&format!("node {id} hides the expired key"), || {
            let cluster = &cluster;
            async move {
                let url = format!("redis://{}/", cluster.spec.resp_addr(id));
                let client = redis::Client::open(url.as_str()).ok()?;
                let mut c = client.get_multiplexed_async_connection().await.ok()?;
                let _: () = run(&mut c, &["READONLY"]).await.ok()?;
                let lease: Option<String> = run(&mut c, &["GET", "lease"]).await.ok()?;
                assert_eq!(lease, None, "node {id} returned a value past its deadline");
                let forever: Option<String> = run(&mut c, &["GET", "forever"]).await.ok()?;
                (forever.as_deref() == Some("here")).then_some(())
            }
        })
        .await;
    }
}
