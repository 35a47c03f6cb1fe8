//! Keyspace notifications: Redis's `SUBSCRIBE __keyspace@0__:<key>`, `PSUBSCRIBE
//! __keyspace@0__:<pattern>` and their `__keyevent@0__:<event>` forms, served from the node's
//! watch hub (docs/ARCHITECTURE.md, "Watches").
//!
//! Each channel or pattern a connection subscribes to is one watch of this node's committed log,
//! from the index the node knows is committed when it subscribes, on the longest literal prefix
//! of the keys it names. A task per subscription turns every committed change the channel or pattern
//! names into a pub/sub message and hands it to the connection's executor, which writes it
//! between replies (a RESP3 push, or a RESP2 array).
//!
//! Invariants:
//! - Only committed changes are announced, in log order, each once per subscription, because a
//!   watch delivers exactly those (an expiry is the primary's delete, so it is announced as `del`;
//!   a put as `set`).
//! - Memory is bounded: a subscription holds one watch and at most [`NOTICES_QUEUED`] messages
//!   of its connection. A subscriber that does not read falls behind the hub's ring; its watch
//!   ends and the connection is closed with the reason, as Redis closes a pub/sub client past its
//!   output buffer limit.
//! - A subscription's task ends when its connection unsubscribes or closes: its handle aborts it
//!   on drop.
//! - No other channel is served: `PUBLISH` does not exist here, so subscribing to a channel that
//!   nothing would ever announce is refused, not left silent.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::pattern;
use super::reply::Reply;
use crate::api::service::{Caller, Service};
use crate::error::Error;
use crate::wire::client::{Change, Request, WatchEvent};

/// The channel prefix of the notifications that name the key (the event is the message).
pub const KEYSPACE_PREFIX: &[u8] = b"__keyspace@0__:";
/// The channel prefix of the notifications that name the event (the key is the message).
pub const KEYEVENT_PREFIX: &[u8] = b"__keyevent@0__:";

/// Messages of one connection's subscriptions waiting for its executor.
pub const NOTICES_QUEUED: usize = 1024;

/// The events announced: what a committed put and a committed delete are called.
const EVENTS: [&[u8]; 2] = [b"set", b"del"];

/// What a subscription's task hands the connection's executor.
pub enum Notice {
    /// A message to write to the client.
    Message(Reply),
    /// The subscription's watch ended (the client fell behind, the node is shutting down):
    /// tell the client why and close the connection.
    Ended(Error),
}

/// What one channel or pattern names, and how a change is announced on it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    /// The name the client subscribed with.
    name: Vec<u8>,
    /// `PSUBSCRIBE` (a glob) rather than `SUBSCRIBE` (one channel).
    is_pattern: bool,
    kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// `__keyspace@0__:<keys>`: the keys named (exactly, or by a glob).
    Keyspace(Vec<u8>),
    /// `__keyevent@0__:<events>`: the events named (exactly, or by a glob).
    Keyevent(Vec<u8>),
}

impl Target {
    /// Reads a channel or pattern; an error says what replikv announces instead.
    fn parse(name: &[u8], is_pattern: bool) -> Result<Target, String> {
        let kind = if let Some(keys) = name.strip_prefix(KEYSPACE_PREFIX) {
            Kind::Keyspace(keys.to_vec())
        } else if let Some(events) = name.strip_prefix(KEYEVENT_PREFIX) {
            let named = |event: &&[u8]| match is_pattern {
                true => pattern::matches(events, event),
                false => events == *event,
            };
            if !EVENTS.iter().any(named) {
                return Err(format!(
                    "'{}' names no event replikv announces: it announces set and del",
                    String::from_utf8_lossy(name)
                ));
            }
            Kind::Keyevent(events.to_vec())
        } else {
            return Err(format!(
                "'{}' is not a keyspace notification channel: replikv has no PUBLISH, and \
                 announces committed changes on __keyspace@0__:<key> and __keyevent@0__:<event>",
                String::from_utf8_lossy(name)
            ));
        };
        Ok(Target {
            name: name.to_vec(),
            is_pattern,
            kind,
        })
    }

    /// The prefix of the keys whose changes this target may announce: what its watch follows.
    fn watched_prefix(&self) -> Vec<u8> {
        match &self.kind {
            Kind::Keyspace(keys) if self.is_pattern => pattern::literal_prefix(keys),
            Kind::Keyspace(key) => key.clone(),
            Kind::Keyevent(_) => Vec::new(),
        }
    }

    /// The message announcing `change` on this target, if it names it.
    fn message(&self, change: &Change) -> Option<Reply> {
        let event: &[u8] = if change.value.is_some() {
            b"set"
        } else {
            b"del"
        };
        let named = |glob: &[u8], subject: &[u8]| match self.is_pattern {
            true => pattern::matches(glob, subject),
            false => glob == subject,
        };
        let (channel, payload) = match &self.kind {
            Kind::Keyspace(keys) if named(keys, &change.key) => {
                ([KEYSPACE_PREFIX, &change.key].concat(), event.to_vec())
            }
            Kind::Keyevent(events) if named(events, event) => {
                ([KEYEVENT_PREFIX, event].concat(), change.key.clone())
            }
            _ => return None,
        };
        let mut parts = Vec::with_capacity(4);
        if self.is_pattern {
            parts.extend([Reply::bulk("pmessage"), Reply::Bulk(self.name.clone())]);
        } else {
            parts.push(Reply::bulk("message"));
        }
        parts.extend([Reply::Bulk(channel), Reply::Bulk(payload)]);
        Some(Reply::Push(parts))
    }
}

/// A subscription's task; dropping the handle stops it.
pub struct Subscription {
    task: JoinHandle<()>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribes `caller` to the channel (or, with `is_pattern`, the pattern) `name`: opens its
/// watch and starts the task that sends its messages to `notices`. An error is the reply.
pub async fn subscribe(
    service: &Service,
    caller: &Caller,
    name: &[u8],
    is_pattern: bool,
    notices: mpsc::Sender<Notice>,
) -> Result<Subscription, Reply> {
    let target = Target::parse(name, is_pattern).map_err(Reply::err)?;
    let request = Request::Watch {
        prefix: target.watched_prefix(),
        from: None,
        initial: false,
    };
    let mut watcher = service
        .watch(caller, request)
        .await
        .map_err(|err| super::reply::error_reply(&err))?;
    let task = tokio::spawn(async move {
        loop {
            let ended = match watcher.next().await {
                Ok(WatchEvent::Change(change)) => {
                    let Some(message) = target.message(&change) else {
                        continue;
                    };
                    if notices.send(Notice::Message(message)).await.is_err() {
                        return; // the connection is gone
                    }
                    continue;
                }
                Ok(WatchEvent::Progress { .. } | WatchEvent::Initial { .. }) => continue,
                Ok(WatchEvent::End(err)) | Err(err) => err,
            };
            let _ = notices.send(Notice::Ended(ended)).await;
            return;
        }
    });
    Ok(Subscription { task })
}

/// The reply confirming a `(P)SUBSCRIBE` or `(P)UNSUBSCRIBE` of `name` (`None`: there was
/// nothing to unsubscribe from), with the connection's subscription count after it.
pub fn confirmation(kind: &str, name: Option<&[u8]>, count: usize) -> Reply {
    Reply::Push(vec![
        Reply::bulk(kind),
        name.map_or(Reply::Nil, Reply::bulk),
        Reply::Integer(i64::try_from(count).unwrap_or(i64::MAX)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str, value: Option<&str>) -> Change {
        Change {
            index: 7,
            epoch: 1,
            key: key.as_bytes().to_vec(),
            value: value.map(|value| value.as_bytes().to_vec()),
        }
    }

    fn parts(reply: Option<Reply>) -> Vec<String> {
        match reply {
            Some(Reply::Push(parts)) => parts
                .into_iter()
                .map(|part| match part {
                    Reply::Bulk(bytes) => String::from_utf8(bytes).unwrap(),
                    other => panic!("not a bulk string: {other:?}"),
                })
                .collect(),
            None => Vec::new(),
            other => panic!("not a push: {other:?}"),
        }
    }

    #[test]
    fn keyspace_channels_and_patterns_announce_the_event_of_the_keys_they_name() {
        let channel = Target::parse(b"__keyspace@0__:user:1", false).unwrap();
        assert_eq!(channel.watched_prefix(), b"user:1");
        assert_eq!(
            parts(channel.message(&change("user:1", Some("a")))),
            ["message", "__keyspace@0__:user:1", "set"]
        );
        assert_eq!(
            parts(channel.message(&change("user:10", Some("a")))),
            [""; 0]
        );

        let pattern = Target::parse(b"__keyspace@0__:user:*", true).unwrap();
        assert_eq!(pattern.watched_prefix(), b"user:");
        assert_eq!(
            parts(pattern.message(&change("user:10", None))),
            [
                "pmessage",
                "__keyspace@0__:user:*",
                "__keyspace@0__:user:10",
                "del"
            ]
        );
        assert_eq!(parts(pattern.message(&change("other", None))), [""; 0]);
    }

    #[test]
    fn keyevent_channels_announce_the_key_of_the_events_they_name() {
        let deletes = Target::parse(b"__keyevent@0__:del", false).unwrap();
        assert_eq!(deletes.watched_prefix(), b"");
        assert_eq!(
            parts(deletes.message(&change("k", None))),
            ["message", "__keyevent@0__:del", "k"]
        );
        assert_eq!(parts(deletes.message(&change("k", Some("v")))), [""; 0]);
        let every = Target::parse(b"__keyevent@0__:*", true).unwrap();
        assert_eq!(
            parts(every.message(&change("k", Some("v")))),
            ["pmessage", "__keyevent@0__:*", "__keyevent@0__:set", "k"]
        );
    }

    #[test]
    fn channels_nothing_would_announce_are_refused() {
        for (name, is_pattern) in [
            (&b"news"[..], false),
            (b"__keyevent@0__:expired", false),
            (b"__keyevent@0__:x*", true),
            (b"__keyspace@1__:k", false),
        ] {
            assert!(
                Target::parse(name, is_pattern).is_err(),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
    }
}
