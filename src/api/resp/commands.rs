//! The commands of the RESP door: each turns its arguments into requests of the service and the
//! answers into a [`Reply`].
//!
//! Invariants:
//! - Every data command goes through [`Service::call`] with the connection's [`Caller`] and
//!   [`Forwarding::ToPrimary`]: authorization, forwarding and retries are the service's.
//! - Until a connection's caller has a role, every command but `AUTH`, `HELLO` and `QUIT` is
//!   answered `NOAUTH`.
//! - Read-modify-write and expiry commands (`strings`) are one request each, decided by the
//!   primary; commands the core cannot do atomically (transactions, `MSETNX`, `GETEX`, …) are
//!   refused with an error that says so; none is emulated with several requests that another
//!   client could interleave with.
//! - A connection's writes carry request ids of its own client id in sequence, and the connection
//!   runs one command at a time, so its writes enter the log in its order.

mod strings;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::notifications::{self, confirmation, Notice, Subscription};
use super::pattern;
use super::reply::{error_reply, Protocol, Reply};
use super::{Door, MAX_RESP_CLIENTS};
use crate::api::auth::WRONG_CREDENTIALS;
use crate::api::service::{Caller, Forwarding, RequestIds};
use crate::client::{check_write_size, MAX_VALUE_BYTES};
use crate::config::tuning::CLIENT_TIMEOUT_MS;
use crate::core::MAX_REQUEST_TIMEOUT_MS;
use crate::error::Error;
use crate::storage::framed_pair_bytes;
use crate::storage::system_keys::is_system_key;
use crate::wire::client::{
    ClusterStatus, MemberHealth, ReadConsistency, Request, Response, Role, Write, WriteConcern,
    WriteResult,
};
use crate::wire::frame::MAX_KEY_BYTES;

/// The Redis version the door reports (`HELLO`, `INFO`): the command set it follows.
pub const REDIS_COMPATIBLE_VERSION: &str = "7.2.0";

/// The user `AUTH <password>` authenticates as, as in Redis.
pub const DEFAULT_USER: &[u8] = b"default";

/// Most keys `KEYS` returns (past it, it refuses: use `SCAN`), and the largest `SCAN` COUNT.
pub const SCAN_KEY_LIMIT: u32 = 10_000;

/// `SCAN` cursors a connection keeps; an older cursor answers "invalid cursor".
const SCAN_CURSORS_KEPT: usize = 64;

/// One page of a scan, as the node answered it.
struct ScanPage {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    more: bool,
}

/// A `SCAN` reply: the next cursor (0 when the iteration is over) and this page's keys.
fn scan_reply(cursor: u64, keys: Vec<Vec<u8>>) -> Reply {
    Reply::Array(vec![
        Reply::bulk(cursor.to_string()),
        Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
    ])
}

/// How long a write may wait for its write concern, forwarding and retries included. A RESP
/// client cannot say how long it will wait, and most wait as long as it takes, so the door rides
/// through a failover on a loaded machine (detection, election, redial) rather than answer
/// `TRYAGAIN` after the Rust client's 5 s: in a CI run of redis-benchmark through a failover, a
/// write in flight at the kill was answered `TRYAGAIN` at that shorter deadline.
const WRITE_TIMEOUT_MS: u64 = 3 * CLIENT_TIMEOUT_MS;

/// One command of the table: what `COMMAND` reports and what the arity check uses. Arity follows
/// Redis: `n` exactly n words (the name included), `-n` at least n.
struct CommandSpec {
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    first_key: i64,
    last_key: i64,
    step: i64,
    group: &'static str,
    summary: &'static str,
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    group: &'static str,
    summary: &'static str,
) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
        group,
        summary,
    }
}

const NO_KEYS: (i64, i64, i64) = (0, 0, 0);
const READ: &[&str] = &["readonly", "fast"];
const WRITE: &[&str] = &["write"];
const CONNECTION: &[&str] = &["fast", "no-auth"];

/// Every command the door knows, supported or refused with a reason.
const COMMANDS: &[CommandSpec] = &[
    spec(
        "ping",
        -1,
        CONNECTION,
        NO_KEYS,
        "connection",
        "Answers PONG, or the argument.",
    ),
    spec(
        "echo",
        2,
        CONNECTION,
        NO_KEYS,
        "connection",
        "Answers the argument.",
    ),
    spec(
        "quit",
        -1,
        CONNECTION,
        NO_KEYS,
        "connection",
        "Closes the connection.",
    ),
    spec(
        "hello",
        -1,
        CONNECTION,
        NO_KEYS,
        "connection",
        "Switches the protocol version (2 or 3).",
    ),
    spec(
        "auth",
        -2,
        CONNECTION,
        NO_KEYS,
        "connection",
        "Authenticates the connection as a user (`AUTH pass` is user `default`).",
    ),
    spec(
        "select",
        2,
        CONNECTION,
        NO_KEYS,
        "connection",
        "Only database 0 exists.",
    ),
    spec(
        "client",
        -2,
        CONNECTION,
        NO_KEYS,
        "connection",
        "SETNAME, GETNAME, ID, SETINFO, INFO.",
    ),
    spec(
        "command",
        -1,
        CONNECTION,
        NO_KEYS,
        "server",
        "COUNT, DOCS, INFO, or every command.",
    ),
    spec(
        "config",
        -2,
        CONNECTION,
        NO_KEYS,
        "server",
        "GET only: save, appendonly, databases, maxclients.",
    ),
    spec(
        "info",
        -1,
        &["fast"],
        NO_KEYS,
        "server",
        "Sections server, clients, replication, keyspace.",
    ),
    spec(
        "readonly",
        1,
        CONNECTION,
        NO_KEYS,
        "cluster",
        "This connection's reads become stale local reads.",
    ),
    spec(
        "readwrite",
        1,
        CONNECTION,
        NO_KEYS,
        "cluster",
        "This connection's reads become linearizable again.",
    ),
    spec("get", 2, READ, (1, 1, 1), "string", "Reads a key."),
    spec(
        "set",
        -3,
        WRITE,
        (1, 1, 1),
        "string",
        "Writes a key: NX, XX, GET, EX, PX, EXAT, PXAT, KEEPTTL, decided on the primary.",
    ),
    spec(
        "setnx",
        3,
        WRITE,
        (1, 1, 1),
        "string",
        "Writes a key only if it is absent.",
    ),
    spec(
        "getdel",
        2,
        WRITE,
        (1, 1, 1),
        "string",
        "Reads and deletes a key, atomically.",
    ),
    spec(
        "mset",
        -3,
        WRITE,
        (1, -1, 2),
        "string",
        "Writes keys in one log entry: all or none.",
    ),
    spec("incr", 2, WRITE, (1, 1, 1), "string", "Adds 1, atomically."),
    spec(
        "decr",
        2,
        WRITE,
        (1, 1, 1),
        "string",
        "Subtracts 1, atomically.",
    ),
    spec(
        "incrby",
        3,
        WRITE,
        (1, 1, 1),
        "string",
        "Adds an integer, atomically.",
    ),
    spec(
        "decrby",
        3,
        WRITE,
        (1, 1, 1),
        "string",
        "Subtracts an integer, atomically.",
    ),
    spec(
        "append",
        3,
        WRITE,
        (1, 1, 1),
        "string",
        "Appends to a value, atomically.",
    ),
    spec(
        "expire",
        -3,
        WRITE,
        (1, 1, 1),
        "generic",
        "Sets a key's time to live in seconds.",
    ),
    spec(
        "pexpire",
        -3,
        WRITE,
        (1, 1, 1),
        "generic",
        "Sets a key's time to live in milliseconds.",
    ),
    spec(
        "del",
        -2,
        WRITE,
        (1, -1, 1),
        "generic",
        "Deletes keys, one write each.",
    ),
    spec(
        "exists",
        -2,
        READ,
        (1, -1, 1),
        "generic",
        "Counts the keys that exist.",
    ),
    spec(
        "mget",
        -2,
        READ,
        (1, -1, 1),
        "string",
        "Reads keys, one read each.",
    ),
    spec(
        "strlen",
        2,
        READ,
        (1, 1, 1),
        "string",
        "The length of a key's value.",
    ),
    spec("type", 2, READ, (1, 1, 1), "generic", "string, or none."),
    spec(
        "ttl",
        2,
        READ,
        (1, 1, 1),
        "generic",
        "Seconds left to live; -1 without an expiry, -2 for no key.",
    ),
    spec(
        "pttl",
        2,
        READ,
        (1, 1, 1),
        "generic",
        "Milliseconds left to live; -1 without an expiry, -2 for no key.",
    ),
    spec(
        "persist",
        2,
        WRITE,
        (1, 1, 1),
        "generic",
        "Removes a key's expiry.",
    ),
    spec(
        "scan",
        -2,
        &["readonly"],
        NO_KEYS,
        "generic",
        "Every matching key in one page (bounded).",
    ),
    spec(
        "keys",
        2,
        &["readonly"],
        NO_KEYS,
        "generic",
        "Every matching key (bounded).",
    ),
    spec(
        "wait",
        3,
        &[],
        NO_KEYS,
        "generic",
        "How many backups hold this connection's last write durably.",
    ),
    spec(
        "subscribe",
        -2,
        &["pubsub", "noscript", "loading", "stale"],
        NO_KEYS,
        "pubsub",
        "Keyspace notifications: __keyspace@0__:<key> (the event) or __keyevent@0__:set|del (the key).",
    ),
    spec(
        "psubscribe",
        -2,
        &["pubsub", "noscript", "loading", "stale"],
        NO_KEYS,
        "pubsub",
        "Keyspace notifications by pattern: __keyspace@0__:<glob> or __keyevent@0__:<glob>.",
    ),
    spec(
        "unsubscribe",
        -1,
        &["pubsub", "noscript", "loading", "stale"],
        NO_KEYS,
        "pubsub",
        "Stops the channels named, or all.",
    ),
    spec(
        "punsubscribe",
        -1,
        &["pubsub", "noscript", "loading", "stale"],
        NO_KEYS,
        "pubsub",
        "Stops the patterns named, or all.",
    ),
    spec(
        "dbsize",
        1,
        &["readonly"],
        NO_KEYS,
        "server",
        "The number of keys (at the connection's read consistency).",
    ),
    spec(
        "multi",
        1,
        &[],
        NO_KEYS,
        "transactions",
        "Refused: transactions are not supported.",
    ),
    spec(
        "exec",
        1,
        &[],
        NO_KEYS,
        "transactions",
        "Refused: transactions are not supported.",
    ),
    spec(
        "discard",
        1,
        &[],
        NO_KEYS,
        "transactions",
        "Refused: transactions are not supported.",
    ),
    spec(
        "watch",
        -2,
        &[],
        NO_KEYS,
        "transactions",
        "Refused: transactions are not supported.",
    ),
    spec(
        "unwatch",
        1,
        &[],
        NO_KEYS,
        "transactions",
        "Refused: transactions are not supported.",
    ),
];

/// Commands of Redis that replikv's primary does not decide yet: refused with a clear error rather
/// than emulated non-atomically.
const NOT_YET: &[&str] = &[
    "setex",
    "psetex",
    "getset",
    "getex",
    "incrbyfloat",
    "msetnx",
    "expireat",
    "pexpireat",
];

/// What a RESP2 connection with subscriptions may run, as in Redis.
const SUBSCRIBED_COMMANDS: &[&str] = &[
    "subscribe",
    "psubscribe",
    "unsubscribe",
    "punsubscribe",
    "ping",
    "quit",
    "reset",
];

/// What a command answers, and whether the connection closes after the reply.
pub struct Outcome {
    pub reply: Reply,
    pub close: bool,
}

impl From<Reply> for Outcome {
    fn from(reply: Reply) -> Self {
        Outcome {
            reply,
            close: false,
        }
    }
}

/// The state of one connection.
pub struct Connection {
    pub id: u64,
    pub caller: Caller,
    pub protocol: Protocol,
    pub remote: String,
    pub local: String,
    name: Option<Vec<u8>>,
    library_name: Option<Vec<u8>>,
    library_version: Option<Vec<u8>>,
    consistency: ReadConsistency,
    request_ids: RequestIds,
    /// This connection's last write that reached the log, for `WAIT`.
    last_write: Option<Request>,
    /// `SCAN` cursors handed out: cursor → the last key of its page (the next page starts after
    /// it). Only the newest [`SCAN_CURSORS_KEPT`] are kept, so a client cannot grow the table.
    scan_cursors: std::collections::BTreeMap<u64, Vec<u8>>,
    next_scan_cursor: u64,
    /// A `MULTI` was refused: every command up to `EXEC` or `DISCARD` is refused too, so none of
    /// a transaction's commands runs on its own, and `EXEC` answers `EXECABORT`, as Redis does
    /// for a transaction with an error in it.
    in_refused_transaction: bool,
    /// Keyspace notification subscriptions, by (is a pattern, channel or pattern).
    subscriptions: std::collections::BTreeMap<(bool, Vec<u8>), Subscription>,
    /// Where the subscriptions' tasks send their messages, for the executor to write.
    notices: mpsc::Sender<Notice>,
}

/// Whether `args` is a plain `SET key value`: no options, so it may run with its neighbours
/// ([`Connection::execute_sets`]).
pub fn is_plain_set(args: &[Bytes]) -> bool {
    args.len() == 3 && args[0].eq_ignore_ascii_case(b"set")
}

/// The bytes of a group of plain `SET`s whose pairs take `joined_bytes`, once `set` joins it;
/// `None` if it may not: its key is one a `SET` alone may not write (too long, a system key), or
/// the whole would no longer fit one write.
pub fn join_set(joined_bytes: usize, set: &[Bytes]) -> Option<usize> {
    let (key, value) = (&set[1], &set[2]);
    if key.len() > MAX_KEY_BYTES || is_system_key(key) {
        return None;
    }
    let joined_bytes = joined_bytes.saturating_add(framed_pair_bytes(key, value));
    (joined_bytes <= MAX_VALUE_BYTES).then_some(joined_bytes)
}

impl Connection {
    /// Whether this connection's plain `SET`s may run together ([`Connection::execute_sets`]):
    /// only once authenticated and outside a refused transaction. Otherwise each runs alone, and
    /// answers alone, as it would in Redis.
    pub fn joins_sets(&self, door: &Door) -> bool {
        !self.in_refused_transaction && door.service.role_of(&self.caller).is_ok()
    }

    /// Plain `SET key value` commands queued back to back on this connection, run as one write:
    /// one log entry that sets every key in order (as `MSET` does), so a pipeline of `SET`s
    /// costs one round of replication instead of one each. Each command is answered as it would
    /// be alone: `OK` once the entry meets the write concern, or the write's error. Grouping
    /// keeps the connection's order and is never weaker than running them one by one: other
    /// clients see all of them or none.
    pub async fn execute_sets(&mut self, door: &Door, sets: &[Vec<Bytes>]) -> Vec<Reply> {
        let pairs = sets
            .iter()
            .map(|args| (args[1].to_vec(), args[2].to_vec()))
            .collect();
        let reply = match self.write(door, Write::PutMany { pairs }).await {
            Ok(_) => Reply::ok(),
            Err(reply) => reply,
        };
        vec![reply; sets.len()]
    }

    pub fn new(
        id: u64,
        caller: Caller,
        (remote, local): (String, String),
        notices: mpsc::Sender<Notice>,
    ) -> Self {
        Connection {
            id,
            caller,
            protocol: Protocol::Resp2,
            remote,
            local,
            name: None,
            library_name: None,
            library_version: None,
            consistency: ReadConsistency::Linearizable,
            request_ids: RequestIds::new(),
            last_write: None,
            scan_cursors: std::collections::BTreeMap::new(),
            next_scan_cursor: 1,
            in_refused_transaction: false,
            subscriptions: std::collections::BTreeMap::new(),
            notices,
        }
    }

    /// Inside a refused `MULTI`: `EXEC` and `DISCARD` end it, `QUIT` goes through, and any other
    /// command is refused (`None`: run the command as usual).
    fn refuse_in_transaction(&mut self, name: &str) -> Option<Reply> {
        match name {
            "exec" => {
                self.in_refused_transaction = false;
                Some(Reply::Error(
                    "EXECABORT Transaction discarded because of previous errors.".into(),
                ))
            }
            "discard" => {
                self.in_refused_transaction = false;
                Some(Reply::Status("OK".into()))
            }
            "quit" => None,
            _ => Some(Reply::err(format!(
                "{} refused: it follows a MULTI, which replikv does not support; send EXEC or \
                 DISCARD",
                name.to_ascii_uppercase()
            ))),
        }
    }

    /// Runs one command. `args` is never empty.
    pub async fn execute(&mut self, door: &Door, args: &[Bytes]) -> Outcome {
        let Some(first) = args.first() else {
            return Reply::err("empty command").into();
        };
        let name = String::from_utf8_lossy(first).to_ascii_lowercase();
        if self.in_refused_transaction {
            if let Some(reply) = self.refuse_in_transaction(&name) {
                return reply.into();
            }
        }
        let Some(command) = COMMANDS.iter().find(|command| command.name == name) else {
            if NOT_YET.contains(&name.as_str()) {
                return Reply::err(format!(
                    "'{}' is not supported yet: replikv's primary does not decide it yet, and \
                     replikv will not emulate it non-atomically",
                    name.to_ascii_uppercase()
                ))
                .into();
            }
            return unknown_command(args).into();
        };
        if !arity_allows(command.arity, args.len()) {
            return wrong_arity(&name).into();
        }
        if !matches!(name.as_str(), "auth" | "hello" | "quit") {
            if let Err(err) = door.service.role_of(&self.caller) {
                return unauthenticated(&err).into();
            }
        }
        // A RESP2 connection with subscriptions only (un)subscribes, pings and quits, as in
        // Redis: its other replies could not be told apart from the messages.
        let subscribed = !self.subscriptions.is_empty() && self.protocol == Protocol::Resp2;
        if subscribed && !SUBSCRIBED_COMMANDS.contains(&name.as_str()) {
            return Reply::err(format!(
                "Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / \
                 RESET are allowed in this context"
            ))
            .into();
        }
        let reply = match name.as_str() {
            "ping" if subscribed => Reply::Array(vec![
                Reply::bulk("pong"),
                Reply::bulk(args.get(1).map_or(&b""[..], |message| message)),
            ]),
            "ping" => match args {
                [_] => Reply::Status("PONG".into()),
                [_, message] => Reply::bulk(message),
                _ => wrong_arity("ping"),
            },
            "subscribe" | "psubscribe" => {
                self.subscribe(door, name == "psubscribe", &args[1..]).await
            }
            "unsubscribe" | "punsubscribe" => self.unsubscribe(name == "punsubscribe", &args[1..]),
            "echo" => Reply::bulk(&args[1]),
            "quit" => {
                return Outcome {
                    reply: Reply::ok(),
                    close: true,
                }
            }
            "hello" => self.hello(door, args).await,
            "auth" => match args {
                [_, password] => self.authenticate(door, DEFAULT_USER, password).await,
                [_, user, password] => self.authenticate(door, user, password).await,
                _ => Reply::Error("ERR syntax error".into()),
            },
            "select" => match parse_integer(&args[1]) {
                Some(0) => Reply::ok(),
                Some(_) => Reply::err("DB index is out of range"),
                None => not_an_integer(),
            },
            "client" => self.client(args),
            "command" => command_command(args),
            "config" => config(args),
            "info" => self.info(door, args).await,
            "readonly" => {
                self.consistency = ReadConsistency::Stale;
                Reply::ok()
            }
            "readwrite" => {
                self.consistency = ReadConsistency::Linearizable;
                Reply::ok()
            }
            "get" => match self.read(door, &args[1]).await {
                Ok(Some(value)) => Reply::Bulk(value),
                Ok(None) => Reply::Nil,
                Err(reply) => reply,
            },
            "set" => self.set_with_options(door, args).await,
            "setnx" => self.set_if_absent(door, args).await,
            "getdel" => self.get_delete(door, &args[1]).await,
            "mset" => self.set_many(door, args).await,
            "incr" | "decr" | "incrby" | "decrby" => self.increment(door, &name, args).await,
            "append" => self.append(door, args).await,
            "expire" | "pexpire" | "persist" => self.expire(door, &name, args).await,
            "ttl" | "pttl" => self.time_to_live(door, &name, &args[1]).await,
            "del" => self.delete(door, &args[1..]).await,
            "exists" | "mget" | "strlen" | "type" => {
                self.per_key_reads(door, &name, &args[1..]).await
            }
            "scan" => self.scan(door, args).await,
            "keys" => match self.matching_keys(door, &args[1]).await {
                Ok(keys) => Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
                Err(reply) => reply,
            },
            "wait" => self.wait(door, args).await,
            "dbsize" => match self.count_keys(door).await {
                Ok(count) => Reply::Integer(i64::try_from(count).unwrap_or(i64::MAX)),
                Err(reply) => reply,
            },
            "multi" => {
                self.in_refused_transaction = true;
                Reply::err(
                    "MULTI is not supported: replikv has no transactions; every command up to \
                     EXEC or DISCARD is refused, so none of them runs on its own",
                )
            }
            "watch" | "unwatch" => Reply::err(format!(
                "{} is not supported: replikv has no transactions; every command runs on its own",
                name.to_ascii_uppercase()
            )),
            "exec" => Reply::err("EXEC without MULTI"),
            "discard" => Reply::err("DISCARD without MULTI"),
            other => unknown_command_named(other, args),
        };
        reply.into()
    }

    /// `AUTH`: checks the password against the node's users; the connection then acts as that
    /// user. A failed attempt leaves the connection as it was, as in Redis.
    async fn authenticate(&mut self, door: &Door, user: &[u8], password: &[u8]) -> Reply {
        let Ok(user) = std::str::from_utf8(user) else {
            return Reply::Error(format!("WRONGPASS {WRONG_CREDENTIALS}"));
        };
        match door
            .service
            .credentials()
            .authenticate(user, password)
            .await
        {
            Ok(verified) => {
                self.caller = Caller::User(verified);
                Reply::ok()
            }
            Err(Error::Unauthenticated(_)) => {
                Reply::Error(format!("WRONGPASS {WRONG_CREDENTIALS}"))
            }
            Err(err) => error_reply(&err),
        }
    }

    async fn hello(&mut self, door: &Door, args: &[Bytes]) -> Reply {
        let mut protocol = self.protocol;
        let mut name = None;
        let mut i = 1;
        if let Some(version) = args.get(1) {
            protocol = match parse_integer(version) {
                Some(2) => Protocol::Resp2,
                Some(3) => Protocol::Resp3,
                Some(_) => return Reply::Error("NOPROTO unsupported protocol version".into()),
                None => return Reply::err("Protocol version is not an integer or out of range"),
            };
            i = 2;
        }
        while i < args.len() {
            let option = String::from_utf8_lossy(&args[i]).to_ascii_lowercase();
            match option.as_str() {
                "auth" if i + 2 < args.len() => {
                    let reply = self.authenticate(door, &args[i + 1], &args[i + 2]).await;
                    if matches!(reply, Reply::Error(_)) {
                        return reply;
                    }
                    i += 3;
                }
                "setname" if i + 1 < args.len() => {
                    if let Err(reply) = check_client_name(&args[i + 1]) {
                        return reply;
                    }
                    name = Some(args[i + 1].to_vec());
                    i += 2;
                }
                _ => {
                    return Reply::err(format!(
                        "Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(&args[i])
                    ))
                }
            }
        }
        // Without a role the caller still learns it must authenticate, as Redis answers a
        // HELLO without AUTH when a password is required.
        if let Err(err) = door.service.role_of(&self.caller) {
            return unauthenticated(&err);
        }
        self.protocol = protocol;
        if name.is_some() {
            self.name = name;
        }
        let role = match self.status(door).await {
            Ok(status) if status.role == Role::Primary => "master",
            Ok(_) => "replica",
            Err(_) => "unknown",
        };
        let protocol_number = match self.protocol {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        };
        Reply::Map(vec![
            (Reply::bulk("server"), Reply::bulk("redis")),
            (
                Reply::bulk("version"),
                Reply::bulk(REDIS_COMPATIBLE_VERSION),
            ),
            (Reply::bulk("proto"), Reply::Integer(protocol_number)),
            (Reply::bulk("id"), Reply::Integer(self.id as i64)),
            (Reply::bulk("mode"), Reply::bulk("standalone")),
            (Reply::bulk("role"), Reply::bulk(role)),
            (Reply::bulk("modules"), Reply::Array(Vec::new())),
        ])
    }

    fn client(&mut self, args: &[Bytes]) -> Reply {
        let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
        let arity = match sub.as_str() {
            "setname" => 3,
            "getname" | "id" | "info" => 2,
            "setinfo" => 4,
            _ => return unknown_subcommand(&args[1], "CLIENT"),
        };
        if args.len() != arity {
            return wrong_arity(&format!("client|{sub}"));
        }
        match sub.as_str() {
            "setname" => match check_client_name(&args[2]) {
                Ok(()) => {
                    self.name = Some(args[2].to_vec()).filter(|name| !name.is_empty());
                    Reply::ok()
                }
                Err(reply) => reply,
            },
            "getname" => self.name.clone().map_or(Reply::Nil, Reply::Bulk),
            "id" => Reply::Integer(self.id as i64),
            "setinfo" => {
                let attribute = String::from_utf8_lossy(&args[2]).to_ascii_lowercase();
                let value = Some(args[3].to_vec());
                match attribute.as_str() {
                    "lib-name" => self.library_name = value,
                    "lib-ver" => self.library_version = value,
                    _ => {
                        return Reply::err(format!(
                            "Unrecognized option '{}'",
                            String::from_utf8_lossy(&args[2])
                        ))
                    }
                }
                Reply::ok()
            }
            _ => Reply::bulk(self.client_info()),
        }
    }

    /// The `CLIENT INFO` line, in Redis's `CLIENT LIST` format (the fields replikv knows).
    fn client_info(&self) -> String {
        let text = |bytes: &Option<Vec<u8>>| {
            bytes
                .as_deref()
                .map(|bytes| String::from_utf8_lossy(bytes).to_string())
                .unwrap_or_default()
        };
        let protocol = match self.protocol {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        };
        format!(
            "id={} addr={} laddr={} name={} db=0 resp={} lib-name={} lib-ver={}\n",
            self.id,
            self.remote,
            self.local,
            text(&self.name),
            protocol,
            text(&self.library_name),
            text(&self.library_version)
        )
    }

    async fn info(&self, door: &Door, args: &[Bytes]) -> Reply {
        let wanted: Vec<String> = args[1..]
            .iter()
            .map(|section| String::from_utf8_lossy(section).to_ascii_lowercase())
            .collect();
        let all = wanted.is_empty()
            || wanted
                .iter()
                .any(|section| matches!(section.as_str(), "all" | "default" | "everything"));
        let show = |section: &str| all || wanted.iter().any(|wanted| wanted == section);
        let status = match self.status(door).await {
            Ok(status) => status,
            Err(err) => return error_reply(&err),
        };
        let mut text = String::new();
        if show("server") {
            text.push_str(&format!(
                "# Server\r\nredis_version:{REDIS_COMPATIBLE_VERSION}\r\nreplikv_version:{}\r\n\
                 redis_mode:standalone\r\nos:{}\r\narch_bits:{}\r\nprocess_id:{}\r\n\
                 tcp_port:{}\r\nuptime_in_seconds:{}\r\nreplikv_node_id:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                usize::BITS,
                std::process::id(),
                door.port,
                door.started.elapsed().as_secs(),
                status.node_id,
            ));
        }
        if show("clients") {
            text.push_str(&format!(
                "# Clients\r\nconnected_clients:{}\r\nmaxclients:{MAX_RESP_CLIENTS}\r\n\r\n",
                door.connected.load(Ordering::Relaxed)
            ));
        }
        if show("replication") {
            text.push_str(&replication_section(&status));
        }
        if show("keyspace") {
            // As Redis: a `db0` line only when the database holds keys. replikv counts no
            // expiring keys apart, so the line gives `keys` alone.
            text.push_str("# Keyspace\r\n");
            match self.count_keys(door).await {
                Ok(0) => {}
                Ok(count) => text.push_str(&format!("db0:keys={count}\r\n")),
                Err(reply) => return reply,
            }
        }
        Reply::Bulk(text.into_bytes())
    }

    async fn status(&self, door: &Door) -> Result<ClusterStatus, Error> {
        // This node's own view: never forwarded.
        match door
            .service
            .call(self.caller.clone(), Request::Status, Forwarding::Redirect)
            .await
        {
            Response::Status(status) => Ok(*status),
            Response::Error(err) => Err(err),
            other => Err(unexpected(&other)),
        }
    }

    /// `SUBSCRIBE` or `PSUBSCRIBE`: a keyspace notification subscription per channel or
    /// pattern (see `notifications`), each confirmed with the connection's count after it.
    async fn subscribe(&mut self, door: &Door, is_pattern: bool, names: &[Bytes]) -> Reply {
        let kind = if is_pattern {
            "psubscribe"
        } else {
            "subscribe"
        };
        let mut replies = Vec::with_capacity(names.len());
        for name in names {
            let key = (is_pattern, name.to_vec());
            if !self.subscriptions.contains_key(&key) {
                let notices = self.notices.clone();
                let opened = notifications::subscribe(
                    &door.service,
                    &self.caller,
                    name,
                    is_pattern,
                    notices,
                )
                .await;
                match opened {
                    Ok(subscription) => {
                        self.subscriptions.insert(key, subscription);
                    }
                    Err(reply) => {
                        replies.push(reply);
                        continue;
                    }
                }
            }
            replies.push(confirmation(kind, Some(name), self.subscriptions.len()));
        }
        Reply::Several(replies)
    }

    /// `UNSUBSCRIBE` or `PUNSUBSCRIBE`: the channels or patterns named, or all of that kind.
    fn unsubscribe(&mut self, is_pattern: bool, names: &[Bytes]) -> Reply {
        let kind = if is_pattern {
            "punsubscribe"
        } else {
            "unsubscribe"
        };
        let names: Vec<Vec<u8>> = if names.is_empty() {
            self.subscriptions
                .keys()
                .filter(|(pattern, _)| *pattern == is_pattern)
                .map(|(_, name)| name.clone())
                .collect()
        } else {
            names.iter().map(|name| name.to_vec()).collect()
        };
        if names.is_empty() {
            return confirmation(kind, None, self.subscriptions.len());
        }
        let mut replies = Vec::with_capacity(names.len());
        for name in names {
            self.subscriptions.remove(&(is_pattern, name.clone()));
            replies.push(confirmation(kind, Some(&name), self.subscriptions.len()));
        }
        Reply::Several(replies)
    }

    /// Sends a read to the service, forwarded to the primary if its consistency needs it; an
    /// error answer becomes the reply.
    async fn ask(&self, door: &Door, request: Request) -> Result<Response, Reply> {
        match door
            .service
            .call(self.caller.clone(), request, Forwarding::ToPrimary)
            .await
        {
            Response::Error(err) => Err(error_reply(&err)),
            response => Ok(response),
        }
    }

    async fn read(&self, door: &Door, key: &[u8]) -> Result<Option<Vec<u8>>, Reply> {
        let request = Request::Get {
            key: key.to_vec(),
            consistency: self.consistency,
        };
        match self.ask(door, request).await? {
            Response::Value { value, .. } => Ok(value),
            other => Err(error_reply(&unexpected(&other))),
        }
    }

    /// How many keys the store holds (`DBSIZE`), at the connection's read consistency.
    async fn count_keys(&self, door: &Door) -> Result<u64, Reply> {
        let request = Request::CountKeys {
            consistency: self.consistency,
        };
        match self.ask(door, request).await? {
            Response::KeyCount { count, .. } => Ok(count),
            other => Err(error_reply(&unexpected(&other))),
        }
    }

    async fn write(&mut self, door: &Door, write: Write) -> Result<WriteResult, Reply> {
        check_write_size(&write).map_err(|err| error_reply(&err))?;
        let request = Request::Write {
            request_id: self.request_ids.next(),
            write,
            write_concern: WriteConcern::default(),
            timeout_ms: WRITE_TIMEOUT_MS,
        };
        let response = door
            .service
            .call(self.caller.clone(), request.clone(), Forwarding::ToPrimary)
            .await;
        // A write that reached the log is what WAIT asks about, acknowledged or not.
        if matches!(
            response,
            Response::Written { .. } | Response::Error(Error::WriteConcernNotMet { .. })
        ) {
            self.last_write = Some(request);
        }
        match response {
            Response::Written { result, .. } => Ok(result),
            Response::Error(err) => Err(strings::write_error_reply(&err)),
            other => Err(error_reply(&unexpected(&other))),
        }
    }

    async fn delete(&mut self, door: &Door, keys: &[Bytes]) -> Reply {
        let mut deleted = 0;
        for key in keys {
            match self.write(door, Write::Delete { key: key.to_vec() }).await {
                Ok(result) => deleted += i64::from(result.existed),
                Err(reply) => return reply,
            }
        }
        Reply::Integer(deleted)
    }

    /// The commands that read keys one at a time and answer per key or with a count.
    async fn per_key_reads(&mut self, door: &Door, name: &str, keys: &[Bytes]) -> Reply {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            match self.read(door, key).await {
                Ok(value) => values.push(value),
                Err(reply) => return reply,
            }
        }
        let first = values.first().cloned().flatten();
        match name {
            "exists" => {
                Reply::Integer(values.iter().filter(|value| value.is_some()).count() as i64)
            }
            "mget" => Reply::Array(
                values
                    .into_iter()
                    .map(|value| value.map_or(Reply::Nil, Reply::Bulk))
                    .collect(),
            ),
            "strlen" => Reply::Integer(first.map_or(0, |value| value.len() as i64)),
            _ => Reply::Status(if first.is_some() { "string" } else { "none" }.into()),
        }
    }

    /// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`: one page of the keys under the
    /// pattern's literal prefix, in key order. A cursor other than 0 names the last key of the
    /// previous page (kept on this connection), so every key present for the whole iteration is
    /// returned exactly once, as Redis guarantees.
    async fn scan(&mut self, door: &Door, args: &[Bytes]) -> Reply {
        let Some(cursor) = std::str::from_utf8(&args[1])
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
        else {
            return Reply::err("invalid cursor");
        };
        let mut pattern: &[u8] = b"*";
        let mut count: u32 = 10;
        let mut only_strings = true;
        let mut i = 2;
        while i < args.len() {
            let option = String::from_utf8_lossy(&args[i]).to_ascii_lowercase();
            let Some(value) = args.get(i + 1) else {
                return Reply::err("syntax error");
            };
            match option.as_str() {
                "match" => pattern = value,
                "count" => match parse_integer(value) {
                    Some(wanted) if wanted >= 1 => {
                        count = u32::try_from(wanted)
                            .unwrap_or(u32::MAX)
                            .min(SCAN_KEY_LIMIT)
                    }
                    Some(_) => return Reply::err("syntax error"),
                    None => return not_an_integer(),
                },
                "type" => only_strings = value.eq_ignore_ascii_case(b"string"),
                _ => return Reply::err("syntax error"),
            }
            i += 2;
        }
        let start_after = match cursor {
            0 => None,
            cursor => match self.scan_cursors.remove(&cursor) {
                Some(last_key) => Some(last_key),
                None => return Reply::err("invalid cursor"),
            },
        };
        if !only_strings {
            return scan_reply(0, Vec::new());
        }
        let page = match self
            .scan_page(door, pattern::literal_prefix(pattern), start_after, count)
            .await
        {
            Ok(page) => page,
            Err(reply) => return reply,
        };
        let next_cursor = match (page.more, page.pairs.last()) {
            (true, Some((last_key, _))) => {
                let cursor = self.next_scan_cursor;
                self.next_scan_cursor += 1;
                self.scan_cursors.insert(cursor, last_key.clone());
                while self.scan_cursors.len() > SCAN_CURSORS_KEPT {
                    self.scan_cursors.pop_first();
                }
                cursor
            }
            _ => 0,
        };
        let keys = page
            .pairs
            .into_iter()
            .map(|(key, _)| key)
            .filter(|key| pattern::matches(pattern, key))
            .collect();
        scan_reply(next_cursor, keys)
    }

    /// One page of a scan through the service.
    async fn scan_page(
        &self,
        door: &Door,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<ScanPage, Reply> {
        let request = Request::Scan {
            prefix,
            start_after,
            limit,
            consistency: self.consistency,
        };
        match door
            .service
            .call(self.caller.clone(), request, Forwarding::ToPrimary)
            .await
        {
            Response::Pairs { pairs, more, .. } => Ok(ScanPage { pairs, more }),
            Response::Error(err) => Err(error_reply(&err)),
            other => Err(error_reply(&unexpected(&other))),
        }
    }

    /// Every key matching `pattern` (`KEYS`), walking the pages under its literal prefix, or an
    /// error past [`SCAN_KEY_LIMIT`] keys under that prefix.
    async fn matching_keys(&self, door: &Door, pattern: &[u8]) -> Result<Vec<Vec<u8>>, Reply> {
        let prefix = pattern::literal_prefix(pattern);
        let mut keys = Vec::new();
        let mut seen: u32 = 0;
        let mut start_after = None;
        loop {
            let page = self
                .scan_page(door, prefix.clone(), start_after, SCAN_KEY_LIMIT + 1 - seen)
                .await?;
            seen = seen.saturating_add(u32::try_from(page.pairs.len()).unwrap_or(u32::MAX));
            if seen > SCAN_KEY_LIMIT {
                return Err(Reply::err(format!(
                    "more than {SCAN_KEY_LIMIT} keys start with this pattern's literal prefix: \
                     KEYS returns at most {SCAN_KEY_LIMIT} keys; use SCAN, or a pattern with a \
                     longer prefix"
                )));
            }
            start_after = page.pairs.last().map(|(key, _)| key.clone());
            keys.extend(
                page.pairs
                    .into_iter()
                    .map(|(key, _)| key)
                    .filter(|key| pattern::matches(pattern, key)),
            );
            if !page.more || start_after.is_none() {
                return Ok(keys);
            }
        }
    }

    /// `WAIT numreplicas timeout`: resends the connection's last write with the same request id
    /// and a write concern of `numreplicas + 1` voters (the primary included). The node answers a
    /// resent write once that many voters hold it durably, without applying it again. Answers
    /// `numreplicas` once met (Redis may count more), or the backups that had it at the timeout.
    async fn wait(&mut self, door: &Door, args: &[Bytes]) -> Reply {
        let (Some(replicas), Some(timeout_ms)) = (parse_integer(&args[1]), parse_integer(&args[2]))
        else {
            return not_an_integer();
        };
        if replicas < 0 || timeout_ms < 0 {
            return Reply::err("timeout is negative");
        }
        let Some(Request::Write {
            request_id, write, ..
        }) = self.last_write.clone()
        else {
            return Reply::Integer(0); // no write of this connection to wait for
        };
        // Redis waits forever for a timeout of 0; replikv waits as long as a request may.
        let timeout_ms = match timeout_ms as u64 {
            0 => MAX_REQUEST_TIMEOUT_MS,
            timeout => timeout.min(MAX_REQUEST_TIMEOUT_MS),
        };
        let mut voters = u32::try_from(replicas)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        loop {
            let request = Request::Write {
                request_id,
                write: write.clone(),
                write_concern: WriteConcern::Count(voters),
                timeout_ms,
            };
            let response = door
                .service
                .call(self.caller.clone(), request, Forwarding::ToPrimary)
                .await;
            return match response {
                Response::Written { .. } => Reply::Integer(i64::from(voters) - 1),
                Response::Error(Error::WriteConcernNotMet { acknowledged, .. }) => {
                    Reply::Integer(acknowledged.saturating_sub(1) as i64)
                }
                // More backups asked for than the cluster has: wait for all it has.
                Response::Error(Error::WriteConcernImpossible { voters: all, .. })
                    if (all as u32) < voters =>
                {
                    voters = u32::try_from(all).unwrap_or(u32::MAX).max(1);
                    continue;
                }
                Response::Error(err) => error_reply(&err),
                other => error_reply(&unexpected(&other)),
            };
        }
    }
}

fn replication_section(status: &ClusterStatus) -> String {
    let mut text = String::from("# Replication\r\n");
    if status.role == Role::Primary {
        let backups: Vec<_> = status
            .members
            .iter()
            .filter(|row| row.member.id != status.node_id)
            .collect();
        let connected = backups
            .iter()
            .filter(|row| {
                matches!(
                    row.health,
                    MemberHealth::Healthy | MemberHealth::Lagging | MemberHealth::CatchingUp
                )
            })
            .count();
        text.push_str(&format!("role:master\r\nconnected_slaves:{connected}\r\n"));
        for (number, row) in backups.iter().enumerate() {
            let (ip, port) = row
                .member
                .client_addr
                .rsplit_once(':')
                .unwrap_or((row.member.client_addr.as_str(), "0"));
            let state = match row.health {
                MemberHealth::Healthy | MemberHealth::Lagging => "online",
                MemberHealth::CatchingUp => "wait_bgsave",
                _ => "offline",
            };
            text.push_str(&format!(
                "slave{number}:ip={ip},port={port},state={state},offset={},lag={}\r\n",
                row.durable_index.unwrap_or(0),
                row.last_heartbeat_ms.unwrap_or(0) / 1000
            ));
        }
    } else {
        let primary = status.primary.and_then(|id| {
            status
                .members
                .iter()
                .find(|row| row.member.id == id)
                .map(|row| row.member.client_addr.clone())
        });
        let (host, port) = primary
            .as_deref()
            .and_then(|addr| addr.rsplit_once(':'))
            .unwrap_or(("", "0"));
        let link = if primary.is_some() { "up" } else { "down" };
        text.push_str(&format!(
            "role:slave\r\nmaster_host:{host}\r\nmaster_port:{port}\r\n\
             master_link_status:{link}\r\nslave_repl_offset:{}\r\nslave_read_only:1\r\n\
             connected_slaves:0\r\n",
            status.durable_index
        ));
    }
    text.push_str(&format!(
        "master_repl_offset:{}\r\nreplikv_epoch:{}\r\nreplikv_commit_index:{}\r\n\r\n",
        status.last_index, status.epoch, status.commit_index
    ));
    text
}

fn command_command(args: &[Bytes]) -> Reply {
    let Some(sub) = args.get(1) else {
        return Reply::Array(COMMANDS.iter().map(command_info).collect());
    };
    let sub_name = String::from_utf8_lossy(sub).to_ascii_lowercase();
    let named = |names: &[Bytes]| -> Vec<&CommandSpec> {
        if names.is_empty() {
            return COMMANDS.iter().collect();
        }
        names
            .iter()
            .filter_map(|name| {
                let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                COMMANDS.iter().find(|command| command.name == name)
            })
            .collect()
    };
    match sub_name.as_str() {
        "count" if args.len() == 2 => Reply::Integer(COMMANDS.len() as i64),
        "count" => wrong_arity("command|count"),
        "docs" => Reply::Map(
            named(&args[2..])
                .into_iter()
                .map(|command| {
                    let doc = Reply::Map(vec![
                        (Reply::bulk("summary"), Reply::bulk(command.summary)),
                        (Reply::bulk("since"), Reply::bulk("1.0.0")),
                        (Reply::bulk("group"), Reply::bulk(command.group)),
                    ]);
                    (Reply::bulk(command.name), doc)
                })
                .collect(),
        ),
        "info" => Reply::Array(
            args[2..]
                .iter()
                .map(|name| {
                    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                    COMMANDS
                        .iter()
                        .find(|command| command.name == name)
                        .map_or(Reply::Nil, command_info)
                })
                .collect(),
        ),
        _ => unknown_subcommand(sub, "COMMAND"),
    }
}

/// One entry of `COMMAND`, in Redis 7's layout.
fn command_info(command: &CommandSpec) -> Reply {
    Reply::Array(vec![
        Reply::bulk(command.name),
        Reply::Integer(command.arity),
        Reply::Array(
            command
                .flags
                .iter()
                .map(|flag| Reply::Status((*flag).into()))
                .collect(),
        ),
        Reply::Integer(command.first_key),
        Reply::Integer(command.last_key),
        Reply::Integer(command.step),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

/// `CONFIG GET`: the few settings tools ask for, answered as replikv behaves (every write is
/// flushed before it is acknowledged, hence `appendonly yes`; no snapshots to schedule).
fn config(args: &[Bytes]) -> Reply {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    if sub != "get" {
        return unknown_subcommand(&args[1], "CONFIG");
    }
    if args.len() < 3 {
        return wrong_arity("config|get");
    }
    let max_clients = MAX_RESP_CLIENTS.to_string();
    let settings: [(&str, &str); 5] = [
        ("save", ""),
        ("appendonly", "yes"),
        ("appendfsync", "always"),
        ("databases", "1"),
        ("maxclients", &max_clients),
    ];
    let pairs = settings
        .iter()
        .filter(|(name, _)| {
            args[2..]
                .iter()
                .any(|pattern| pattern::matches(&pattern.to_ascii_lowercase(), name.as_bytes()))
        })
        .map(|(name, value)| (Reply::bulk(name), Reply::bulk(value)))
        .collect();
    Reply::Map(pairs)
}

/// The reply to a command of a connection that has no role: Redis's own `NOAUTH` text for a
/// caller without credentials (or whose user was removed since).
fn unauthenticated(err: &Error) -> Reply {
    match err {
        Error::Unauthenticated(_) => Reply::Error("NOAUTH Authentication required.".into()),
        other => error_reply(other),
    }
}

fn check_client_name(name: &[u8]) -> Result<(), Reply> {
    if name.iter().any(|&byte| !(b'!'..=b'~').contains(&byte)) {
        return Err(Reply::err(
            "Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(())
}

fn arity_allows(arity: i64, words: usize) -> bool {
    let words = words as i64;
    if arity >= 0 {
        words == arity
    } else {
        words >= -arity
    }
}

fn parse_integer(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

fn not_an_integer() -> Reply {
    Reply::err(crate::core::NOT_AN_INTEGER)
}

fn wrong_arity(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{name}' command"))
}

fn unknown_subcommand(sub: &[u8], container: &str) -> Reply {
    Reply::err(format!(
        "unknown subcommand '{}'. Try {container} HELP.",
        truncated(sub, 128)
    ))
}

/// Redis's text for an unknown command: its name and the start of its arguments.
fn unknown_command(args: &[Bytes]) -> Reply {
    let name = args
        .first()
        .map(|name| truncated(name, 128))
        .unwrap_or_default();
    unknown_command_named(&name, args)
}

fn unknown_command_named(name: &str, args: &[Bytes]) -> Reply {
    let mut shown = String::new();
    for arg in args.iter().skip(1) {
        if shown.len() >= 128 {
            break;
        }
        let room = 128 - shown.len();
        shown.push_str(&format!("'{}' ", truncated(arg, room)));
    }
    Reply::err(format!(
        "unknown command '{name}', with args beginning with: {shown}"
    ))
}

/// At most `limit` bytes of `bytes`, as text.
fn truncated(bytes: &[u8], limit: usize) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(limit)]).to_string()
}

fn unexpected(response: &Response) -> Error {
    Error::Internal(format!("unexpected answer from the node: {response:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(command: &[&str]) -> Vec<Bytes> {
        command
            .iter()
            .map(|word| Bytes::copy_from_slice(word.as_bytes()))
            .collect()
    }

    #[test]
    fn unknown_commands_get_redis_text() {
        assert_eq!(
            unknown_command(&words(&["foo", "a", "b"])),
            Reply::Error("ERR unknown command 'foo', with args beginning with: 'a' 'b' ".into())
        );
        assert_eq!(
            unknown_command(&words(&["foo"])),
            Reply::Error("ERR unknown command 'foo', with args beginning with: ".into())
        );
    }

    #[test]
    fn arity_follows_redis_convention() {
        assert!(arity_allows(2, 2));
        assert!(!arity_allows(2, 3));
        assert!(arity_allows(-2, 2));
        assert!(arity_allows(-2, 5));
        assert!(!arity_allows(-2, 1));
        assert_eq!(
            wrong_arity("get"),
            Reply::Error("ERR wrong number of arguments for 'get' command".into())
        );
    }

    #[test]
    fn config_get_answers_what_redis_benchmark_asks() {
        let reply = config(&words(&["CONFIG", "GET", "save"]));
        assert_eq!(
            reply,
            Reply::Map(vec![(Reply::bulk("save"), Reply::bulk(""))])
        );
        let reply = config(&words(&["config", "get", "append*"]));
        match reply {
            Reply::Map(pairs) => {
                assert!(pairs.contains(&(Reply::bulk("appendonly"), Reply::bulk("yes"))))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            config(&words(&["CONFIG", "SET", "save", ""])),
            Reply::Error(text) if text.contains("unknown subcommand 'SET'")
        ));
    }

    #[test]
    fn every_command_name_is_lowercase_and_unique() {
        let mut names: Vec<&str> = COMMANDS.iter().map(|command| command.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COMMANDS.len());
        for name in names.iter().chain(NOT_YET) {
            assert_eq!(*name, name.to_ascii_lowercase());
        }
        assert!(NOT_YET.iter().all(|name| !names.contains(name)));
    }
}
