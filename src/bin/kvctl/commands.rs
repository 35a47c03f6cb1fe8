//! What each `kvctl` command does: one function per command, each calling the client library
//! and handing the answer to [`crate::output`]. Every function returns the exit code of a
//! completed command; failures are returned as errors and get their code in `main`.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;
use std::time::Duration;

use replikv::certs::{self, CertRole, CertsInit};
use replikv::client::Client;
use replikv::config::dev::{dev_node_ip, DEFAULT_DEV_FIRST_IP};
use replikv::wire::client::{
    Answer, ClientRole, ClusterStatus, Condition, Expiry, ResponseMeta, WatchEvent, Write,
    WriteResult,
};
use replikv::wire::message::Member;
use replikv::{Error, NodeId, ReadConsistency, WriteConcern};

use crate::bench::{self, BenchOptions, StopAfter};
use crate::output::{
    print_json, print_json_line, print_pairs, print_text, print_value, progress_text,
    render_bench_report, render_members, render_status,
};
use crate::{output, BenchArgs, EXIT_NOT_FOUND, EXIT_OK};

/// What `kvctl watch` was asked for.
#[derive(Clone, Copy, Debug)]
pub struct WatchOptions {
    pub from: Option<u64>,
    pub initial: bool,
    pub progress: bool,
    pub json: bool,
}

/// `kvctl watch`: one line per change until interrupted, or until the watch fails (compacted).
pub async fn watch(client: &Client, prefix: &str, options: WatchOptions) -> Result<u8, Error> {
    let mut stream = client.watch(prefix.as_bytes(), options.from, options.initial);
    loop {
        match stream.next().await? {
            WatchEvent::Change(change) if options.json => {
                print_json_line(&output::change_json(&change))?
            }
            WatchEvent::Change(change) => print_text(&output::change_text(&change))?,
            WatchEvent::Initial { pairs, index, .. } if options.json => print_json_line(
                &serde_json::json!({ "initial": output::pairs_json(&pairs), "index": index }),
            )?,
            WatchEvent::Initial { pairs, index, .. } => {
                print_pairs(&pairs)?;
                print_text(&format!("# the values above are at index {index}\n"))?;
            }
            WatchEvent::Progress { index } if options.progress && options.json => {
                print_json_line(&serde_json::json!({ "progress": index }))?
            }
            WatchEvent::Progress { index } if options.progress => {
                print_text(&format!("# up to date at index {index}\n"))?
            }
            WatchEvent::Progress { .. } | WatchEvent::End(_) => {}
        }
    }
}

/// `kvctl get`: the bare value on stdout, or exit code 3 when the key does not exist.
pub async fn get(
    client: &Client,
    key: &str,
    consistency: ReadConsistency,
    node: Option<&str>,
    json: bool,
) -> Result<u8, Error> {
    let (versioned, meta) = pinned(client, node).get_versioned(key, consistency).await?;
    let version = versioned.as_ref().map_or(0, |versioned| versioned.version);
    let value = versioned.map(|versioned| versioned.value);
    if json {
        print_json(&output::get_json(key, value.as_deref(), version, &meta))?;
    }
    match value {
        Some(bytes) => {
            if !json {
                print_value(&bytes)?;
            }
            Ok(EXIT_OK)
        }
        None => {
            eprintln!(
                "key {key:?} not found (node {}, epoch {}, index {})",
                meta.node_id, meta.epoch, meta.index
            );
            Ok(EXIT_NOT_FOUND)
        }
    }
}

/// The value of `kvctl put`: the argument, or all of stdin when it is absent or `-`. Its size is
/// checked by the client library before anything is sent.
pub fn put_value(argument: Option<String>) -> Result<Vec<u8>, Error> {
    match argument {
        Some(value) if value != "-" => Ok(value.into_bytes()),
        _ => {
            let mut value = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut value)
                .map_err(|err| {
                    Error::InvalidRequest(format!("cannot read the value from stdin: {err}"))
                })?;
            Ok(value)
        }
    }
}

/// `kvctl put`: silent on success unless `--json`.
pub async fn put(
    client: &Client,
    key: &str,
    value: &[u8],
    write_concern: Option<WriteConcern>,
    json: bool,
) -> Result<u8, Error> {
    let write_concern = write_concern.unwrap_or(client.options().default_write_concern);
    let answer = client
        .put(key, value, write_concern, client.timeout())
        .await?;
    report_write(key, write_concern, answer, json)
}

/// `kvctl put --if-absent` / `--if-version` / `--ttl`: a `Set` decided on the primary; returns
/// whether it applied (a deadline is the TTL after this machine's clock).
pub async fn put_decided(
    client: &Client,
    key: &str,
    value: &[u8],
    (condition, ttl): (Condition, Option<Duration>),
    write_concern: Option<WriteConcern>,
    json: bool,
) -> Result<bool, Error> {
    let write_concern = write_concern.unwrap_or(client.options().default_write_concern);
    let expiry = match ttl {
        None => Expiry::Clear,
        Some(ttl) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Expiry::At(u64::try_from((now + ttl).as_millis()).unwrap_or(u64::MAX))
        }
    };
    let write = Write::Set {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
        condition,
        expiry,
        get: false,
    };
    let (result, meta) = client.write(write, write_concern, client.timeout()).await?;
    let applied = result.answer == Some(Answer::Applied(true));
    if json {
        println!(
            "{}",
            serde_json::json!({ "key": key, "applied": applied, "index": result.index, "epoch": meta.epoch })
        );
    } else if !applied {
        eprintln!("not written: {key:?} {}", condition.unmet());
    }
    Ok(applied)
}

/// `kvctl incr`: prints the new value (as `{"key": …, "value": n}` with `--json`).
pub async fn incr(
    client: &Client,
    key: &str,
    by: i64,
    write_concern: Option<WriteConcern>,
    json: bool,
) -> Result<u8, Error> {
    let write_concern = write_concern.unwrap_or(client.options().default_write_concern);
    let write = Write::Increment {
        key: key.as_bytes().to_vec(),
        by,
    };
    let (result, _) = client.write(write, write_concern, client.timeout()).await?;
    let Some(Answer::Integer(value)) = result.answer else {
        return Err(Error::Protocol(format!(
            "the primary answered an increment with {:?}",
            result.answer
        )));
    };
    if json {
        println!("{}", serde_json::json!({ "key": key, "value": value }));
    } else {
        println!("{value}");
    }
    Ok(0)
}

/// `kvctl delete`: succeeds whether or not the key existed; `--json` says which.
pub async fn delete(
    client: &Client,
    key: &str,
    write_concern: Option<WriteConcern>,
    json: bool,
) -> Result<u8, Error> {
    let write_concern = write_concern.unwrap_or(client.options().default_write_concern);
    let answer = client.delete(key, write_concern, client.timeout()).await?;
    report_write(key, write_concern, answer, json)
}

/// What `put` and `delete` show of an acknowledged write: nothing, or the JSON answer.
fn report_write(
    key: &str,
    write_concern: WriteConcern,
    (result, meta): (WriteResult, ResponseMeta),
    json: bool,
) -> Result<u8, Error> {
    if json {
        print_json(&output::write_json(key, &result, write_concern, &meta))?;
    }
    Ok(EXIT_OK)
}

/// `kvctl scan`: one `key<TAB>value` line per pair, printed page by page as the pages arrive
/// (with `--json`, one object once every page is in). A count of the pairs read so far is shown
/// on stderr when it is a terminal. Each page is consistent at its own index (docs/PROTOCOL.md).
pub async fn scan(
    client: &Client,
    prefix: &str,
    limit: u32,
    consistency: ReadConsistency,
    node: Option<&str>,
    json: bool,
) -> Result<u8, Error> {
    let session = pinned(client, node);
    let bar = if json || !std::io::stderr().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    let mut collected = Vec::new();
    let mut read = 0u32;
    let mut start_after: Option<Vec<u8>> = None;
    let meta = loop {
        let page = session
            .scan_page(
                prefix,
                start_after.as_deref(),
                limit.saturating_sub(read),
                consistency,
            )
            .await;
        let page = match page {
            Ok(page) => page,
            Err(err) => {
                bar.finish_and_clear();
                return Err(err);
            }
        };
        read = read.saturating_add(u32::try_from(page.pairs.len()).unwrap_or(u32::MAX));
        if json {
            collected.extend(page.pairs);
        } else {
            bar.suspend(|| print_pairs(&page.pairs))?;
        }
        bar.set_message(format!("{read} pairs"));
        bar.tick();
        match page.continuation {
            Some(last) if read < limit => start_after = Some(last),
            _ => break page.meta,
        }
    };
    bar.finish_and_clear();
    if json {
        print_json(&output::scan_json(&collected, &meta))?;
    }
    Ok(EXIT_OK)
}

/// `kvctl status`: the primary's view, or that of `node`.
pub async fn status(client: &Client, node: Option<&str>, json: bool) -> Result<u8, Error> {
    let status = match node {
        Some(addr) => client.status_of(addr).await?,
        None => client.status().await?,
    };
    if json {
        print_json(&status)?;
    } else {
        print_text(&render_status(&status))?;
    }
    Ok(EXIT_OK)
}

/// `kvctl member list`.
pub async fn member_list(client: &Client, json: bool) -> Result<u8, Error> {
    let status = client.status().await?;
    if json {
        let members: Vec<_> = status.members.iter().map(|row| &row.member).collect();
        print_json(&members)?;
    } else {
        print_text(&render_members(&status))?;
    }
    Ok(EXIT_OK)
}

/// `kvctl member add`: adds the node as a learner and, with `wait`, waits until it is a voter.
pub async fn member_add(
    client: &Client,
    member: Member,
    wait: bool,
    json: bool,
) -> Result<u8, Error> {
    let id = member.id;
    let (result, meta) = client.add_member(member).await?;
    if json && !wait {
        print_json(&output::member_added_json(id, &result, &meta))?;
    } else if !json {
        let text = if result.existed {
            format!("node {id} is already a member with these addresses\n")
        } else {
            format!(
                "node {id} added as a learner (log index {}, epoch {}); the primary streams \
                 it the log and makes it a voter once it has caught up\n",
                result.index, meta.epoch
            )
        };
        print_text(&text)?;
    }
    if wait {
        let status = wait_until_voter(client, id, json).await?;
        if json {
            print_json(&status)?;
        } else {
            print_text(&format!("node {id} has caught up and is a voter\n"))?;
        }
    }
    Ok(EXIT_OK)
}

/// `kvctl member remove`.
pub async fn member_remove(client: &Client, id: NodeId, json: bool) -> Result<u8, Error> {
    let (result, meta) = client.remove_member(id).await?;
    if json {
        print_json(&output::member_removed_json(id, &result, &meta))?;
    } else {
        print_text(&format!(
            "node {id} removed (log index {}, epoch {})\n",
            result.index, meta.epoch
        ))?;
    }
    Ok(EXIT_OK)
}

/// `kvctl bench`: runs the load until its end or Ctrl-C, then prints the report.
pub async fn bench(client: &Client, args: BenchArgs, json: bool) -> Result<u8, Error> {
    let options = BenchOptions {
        clients: args.clients,
        stop: match (args.requests, args.duration) {
            (Some(requests), _) => StopAfter::Requests(requests),
            (None, Some(duration)) => StopAfter::Duration(duration),
            (None, None) => StopAfter::Duration(bench::DEFAULT_DURATION),
        },
        value_size: args.value_size,
        key_space: args.key_space,
        write_concern: args
            .write_concern
            .unwrap_or(client.options().default_write_concern),
        consistency: args.consistency,
        read_ratio: args.read_ratio,
        timeout: client.timeout(),
        prefill: args.prefill,
    };
    // Checked before anything is sent, so a bad flag is a usage error (exit 2).
    options.validate()?;
    let show_progress = !json && std::io::stderr().is_terminal();
    let interrupt = async {
        // Without a Ctrl-C handler the run simply cannot be interrupted early.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let report = bench::run(client, &options, show_progress, interrupt).await?;
    if json {
        print_json(&report)?;
    } else {
        print_text(&render_bench_report(&report))?;
    }
    Ok(EXIT_OK)
}

/// Polls the primary's status until member `id` is a voter, showing how far behind it is on
/// stderr (when it is a terminal). Returns the status that shows it a voter.
async fn wait_until_voter(client: &Client, id: NodeId, json: bool) -> Result<ClusterStatus, Error> {
    const POLL: Duration = Duration::from_millis(500);
    let bar = if json || !std::io::stderr().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    loop {
        let status = client.status().await?;
        let Some(row) = status.members.iter().find(|row| row.member.id == id) else {
            bar.finish_and_clear();
            return Err(Error::InvalidRequest(format!(
                "node {id} is no longer a member (removed meanwhile?)"
            )));
        };
        if row.member.voter {
            bar.finish_and_clear();
            return Ok(status);
        }
        bar.set_message(format!("node {id}: {}", progress_text(&status, row)));
        bar.tick();
        tokio::time::sleep(POLL).await;
    }
}

/// `client` itself, or a session pinned to `node`.
fn pinned(client: &Client, node: Option<&str>) -> Client {
    match node {
        Some(addr) => client.pinned_to(addr),
        None => client.session(),
    }
}

/// `kvctl certs init`: needs no cluster, only a directory.
pub fn certs_init(
    dir: PathBuf,
    nodes: u64,
    node_hosts: Vec<(NodeId, String)>,
    clients: Vec<(String, CertRole)>,
    force: bool,
    json: bool,
) -> Result<u8, Error> {
    let nodes = node_certificates(nodes, &node_hosts)?;
    let clients = if clients.is_empty() {
        vec![("admin".to_string(), CertRole::Admin)]
    } else {
        clients
    };
    let written = certs::init_certs(&CertsInit {
        dir: dir.clone(),
        nodes,
        clients,
        force,
    })?;
    if json {
        print_json(&output::certs_json(&dir, &written))?;
    } else if written.is_empty() {
        print_text(&format!(
            "every requested certificate already exists in {}; use --force to make a new CA and \
             reissue them all\n",
            dir.display()
        ))?;
    } else {
        let mut text = String::new();
        for path in &written {
            text.push_str(&format!("wrote {}\n", path.display()));
        }
        print_text(&text)?;
    }
    Ok(EXIT_OK)
}

/// The node certificates to make: ids 1..=count, each with its hosts from `--node-host`, or
/// 127.0.0.(10+id) by default. A `--node-host` for an id beyond `count` is a usage error.
fn node_certificates(
    count: u64,
    node_hosts: &[(NodeId, String)],
) -> Result<Vec<(NodeId, Vec<String>)>, Error> {
    if count == 0 {
        return Err(Error::InvalidRequest(
            "--nodes must be at least 1".to_string(),
        ));
    }
    let mut hosts: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
    for (id, host) in node_hosts {
        if *id == 0 || *id > count {
            return Err(Error::InvalidRequest(format!(
                "--node-host {id}={host} names node {id}, but nodes are numbered 1 to {count}: \
                 raise --nodes or fix the id"
            )));
        }
        hosts.entry(*id).or_default().push(host.clone());
    }
    Ok((1..=count)
        .map(|id| {
            let hosts = hosts
                .remove(&id)
                .unwrap_or_else(|| vec![default_node_host(id)]);
            (id, hosts)
        })
        .collect())
}

/// The loopback address `kvnode dev` gives node `id`.
fn default_node_host(id: NodeId) -> String {
    dev_node_ip(DEFAULT_DEV_FIRST_IP, id).map_or_else(|| format!("node-{id}"), |ip| ip.to_string())
}

// --- users and tokens ---

/// A password from a prompt without echo when stdin is a terminal, else the first line of stdin
/// (for scripts: `echo "$PASSWORD" | kvctl user add ...`).
pub fn read_password(prompt: &str) -> Result<String, Error> {
    let password = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)
            .map_err(|err| Error::InvalidRequest(format!("cannot read the password: {err}")))?
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(|err| {
            Error::InvalidRequest(format!("cannot read the password from stdin: {err}"))
        })?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        return Err(Error::InvalidRequest("the password is empty".into()));
    }
    Ok(password)
}

/// `kvctl user add`: silent on success unless `--json`.
pub async fn user_add(
    client: &Client,
    name: &str,
    role: ClientRole,
    password: &str,
    json: bool,
) -> Result<u8, Error> {
    let result = client.user_add(name, role, password).await?;
    credentials_changed(
        json,
        serde_json::json!({"user": name, "role": role.name(), "index": result.index}),
    )
}

/// `kvctl user passwd`.
pub async fn user_passwd(
    client: &Client,
    name: &str,
    password: &str,
    json: bool,
) -> Result<u8, Error> {
    let result = client.user_passwd(name, password).await?;
    credentials_changed(
        json,
        serde_json::json!({"user": name, "index": result.index}),
    )
}

/// `kvctl user remove`.
pub async fn user_remove(client: &Client, name: &str, json: bool) -> Result<u8, Error> {
    let result = client.user_remove(name).await?;
    credentials_changed(
        json,
        serde_json::json!({"user": name, "removed": true, "index": result.index}),
    )
}

/// `kvctl user list`: a table of names and roles.
pub async fn user_list(client: &Client, json: bool) -> Result<u8, Error> {
    let users = client.users().await?;
    if json {
        print_json(&users)?;
    } else {
        print_text(&output::render_users(&users))?;
    }
    Ok(EXIT_OK)
}

/// `kvctl token create`: prints the token (the only time it is shown).
pub async fn token_create(
    client: &Client,
    name: &str,
    role: ClientRole,
    ttl: Option<Duration>,
    output: Option<&std::path::Path>,
    json: bool,
) -> Result<u8, Error> {
    let (token, id) = client.token_create(name, role, ttl).await?;
    if let Some(path) = output {
        certs::write_secret(path, token.as_bytes())?;
        eprintln!("token {id} ({name}, {role}) written to {}", path.display());
    } else if json {
        print_json(
            &serde_json::json!({"token": token, "id": id, "name": name, "role": role.name()}),
        )?;
    } else {
        print_text(&format!("{token}\n"))?;
        eprintln!("token {id} ({name}, {role}): shown this once; keep it secret");
    }
    Ok(EXIT_OK)
}

/// `kvctl token list`: a table of ids, names, roles and expiries.
pub async fn token_list(client: &Client, json: bool) -> Result<u8, Error> {
    let tokens = client.tokens().await?;
    if json {
        print_json(&tokens)?;
    } else {
        print_text(&output::render_tokens(&tokens))?;
    }
    Ok(EXIT_OK)
}

/// `kvctl token revoke`.
pub async fn token_revoke(client: &Client, token: &str, json: bool) -> Result<u8, Error> {
    let result = client.token_revoke(token).await?;
    credentials_changed(
        json,
        serde_json::json!({"revoked": token, "index": result.index}),
    )
}

fn credentials_changed(json: bool, answer: serde_json::Value) -> Result<u8, Error> {
    if json {
        print_json(&answer)?;
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_hosts_default_and_override() {
        let nodes = node_certificates(3, &[(2, "10.0.0.2".into()), (2, "db-2".into())]).unwrap();
        assert_eq!(
            nodes,
            vec![
                (1, vec!["127.0.0.11".to_string()]),
                (2, vec!["10.0.0.2".to_string(), "db-2".to_string()]),
                (3, vec!["127.0.0.13".to_string()]),
            ]
        );
        assert!(node_certificates(2, &[(3, "x".into())]).is_err());
        assert!(node_certificates(0, &[]).is_err());
    }
}
