//! Replies of the RESP door, and their encoding in the protocol version a connection speaks.
//!
//! A command answers a [`Reply`]; the connection encodes it as RESP2 or, after `HELLO 3`, RESP3
//! (maps and nulls have their own types there), with the `redis-protocol` crate's encoders.
//! Errors of the service become Redis-style error replies in one place, [`error_reply`], decided
//! by [`Error::kind`] as every other door decides.

use bytes::BytesMut;
use redis_protocol::resp2::types::{OwnedFrame as Resp2Frame, Resp2Frame as _};
use redis_protocol::resp3::types::{OwnedFrame as Resp3Frame, Resp3Frame as _};

use crate::error::{Error, ErrorKind};

/// The protocol version of a connection: RESP2 until `HELLO 3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Resp2,
    Resp3,
}

/// What a command answers, independent of the protocol version.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A simple string (`+OK`).
    Status(String),
    /// An error; the text starts with its code (`ERR`, `NOAUTH`, ...).
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    Nil,
    Array(Vec<Reply>),
    /// Key-value pairs, in order: a flat array in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// Out-of-band data (pub/sub messages and confirmations): an array in RESP2, a push in RESP3.
    Push(Vec<Reply>),
    /// Several replies in a row, for a command that answers once per argument (`SUBSCRIBE a b`).
    /// Not a protocol type: each is encoded on its own.
    Several(Vec<Reply>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Status("OK".into())
    }

    /// `ERR` followed by `text`.
    pub fn err(text: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {text}"))
    }

    pub fn bulk(bytes: impl AsRef<[u8]>) -> Reply {
        Reply::Bulk(bytes.as_ref().to_vec())
    }

    /// Appends the encoding of this reply to `out`.
    pub fn encode(&self, protocol: Protocol, out: &mut BytesMut) {
        if let Reply::Several(replies) = self {
            for reply in replies {
                reply.encode(protocol, out);
            }
            return;
        }
        let encoded = match protocol {
            Protocol::Resp2 => {
                let frame = self.to_resp2();
                let mut bytes = vec![0; frame.encode_len(false)];
                redis_protocol::resp2::encode::encode(&mut bytes, &frame, false).map(|len| {
                    bytes.truncate(len);
                    bytes
                })
            }
            Protocol::Resp3 => {
                let frame = self.to_resp3();
                let mut bytes = vec![0; frame.encode_len(false)];
                redis_protocol::resp3::encode::complete::encode(&mut bytes, &frame, false).map(
                    |len| {
                        bytes.truncate(len);
                        bytes
                    },
                )
            }
        };
        match encoded {
            Ok(bytes) => out.extend_from_slice(&bytes),
            // Every reply is made here and is encodable; if one were not, the client still gets
            // an answer in its place, so replies stay in step with commands.
            Err(err) => out.extend_from_slice(
                format!(
                    "-ERR cannot encode the reply: {}\r\n",
                    one_line(&err.to_string())
                )
                .as_bytes(),
            ),
        }
    }

    fn to_resp2(&self) -> Resp2Frame {
        match self {
            Reply::Status(text) => Resp2Frame::SimpleString(one_line(text).into_bytes()),
            Reply::Error(text) => Resp2Frame::Error(one_line(text)),
            Reply::Integer(number) => Resp2Frame::Integer(*number),
            Reply::Bulk(bytes) => Resp2Frame::BulkString(bytes.clone()),
            Reply::Nil => Resp2Frame::Null,
            // `Several` only ever stands at the top (see `encode`).
            Reply::Array(items) | Reply::Push(items) | Reply::Several(items) => {
                Resp2Frame::Array(items.iter().map(Reply::to_resp2).collect())
            }
            Reply::Map(pairs) => Resp2Frame::Array(
                pairs
                    .iter()
                    .flat_map(|(key, value)| [key.to_resp2(), value.to_resp2()])
                    .collect(),
            ),
        }
    }

    fn to_resp3(&self) -> Resp3Frame {
        match self {
            Reply::Status(text) => Resp3Frame::SimpleString {
                data: one_line(text).into_bytes(),
                attributes: None,
            },
            Reply::Error(text) => Resp3Frame::SimpleError {
                data: one_line(text),
                attributes: None,
            },
            Reply::Integer(number) => Resp3Frame::Number {
                data: *number,
                attributes: None,
            },
            Reply::Bulk(bytes) => Resp3Frame::BlobString {
                data: bytes.clone(),
                attributes: None,
            },
            Reply::Nil => Resp3Frame::Null,
            Reply::Array(items) | Reply::Several(items) => Resp3Frame::Array {
                data: items.iter().map(Reply::to_resp3).collect(),
                attributes: None,
            },
            Reply::Map(pairs) => Resp3Frame::Map {
                data: pairs
                    .iter()
                    .map(|(key, value)| (key.to_resp3(), value.to_resp3()))
                    .collect(),
                attributes: None,
            },
            Reply::Push(items) => Resp3Frame::Push {
                data: items.iter().map(Reply::to_resp3).collect(),
                attributes: None,
            },
        }
    }
}

/// A simple string or error must be one line: line breaks become spaces.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// The error reply for a failure of the service, by kind: the code a Redis client understands,
/// then replikv's own message (which says what to do).
pub fn error_reply(error: &Error) -> Reply {
    let code = match (error, error.kind()) {
        (Error::Unauthenticated(_), _) => "NOAUTH",
        (_, ErrorKind::Refused) => "NOPERM",
        (_, ErrorKind::WriteConcernNotMet) => "NOREPLICAS",
        (_, ErrorKind::Unavailable) => "TRYAGAIN",
        _ => "ERR",
    };
    Reply::Error(format!("{code} {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(reply: &Reply, protocol: Protocol) -> String {
        let mut out = BytesMut::new();
        reply.encode(protocol, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn replies_encode_as_redis_does() {
        for protocol in [Protocol::Resp2, Protocol::Resp3] {
            assert_eq!(encoded(&Reply::ok(), protocol), "+OK\r\n");
            assert_eq!(encoded(&Reply::Integer(-3), protocol), ":-3\r\n");
            assert_eq!(encoded(&Reply::bulk("ab"), protocol), "$2\r\nab\r\n");
            assert_eq!(
                encoded(&Reply::err("bad\r\nthing"), protocol),
                "-ERR bad  thing\r\n"
            );
        }
        assert_eq!(encoded(&Reply::Nil, Protocol::Resp2), "$-1\r\n");
        assert_eq!(encoded(&Reply::Nil, Protocol::Resp3), "_\r\n");
        let map = Reply::Map(vec![(Reply::bulk("k"), Reply::Integer(1))]);
        assert_eq!(encoded(&map, Protocol::Resp2), "*2\r\n$1\r\nk\r\n:1\r\n");
        assert_eq!(encoded(&map, Protocol::Resp3), "%1\r\n$1\r\nk\r\n:1\r\n");
        let push = Reply::Push(vec![Reply::bulk("message"), Reply::Integer(1)]);
        assert_eq!(
            encoded(&push, Protocol::Resp2),
            "*2\r\n$7\r\nmessage\r\n:1\r\n"
        );
        assert_eq!(
            encoded(&push, Protocol::Resp3),
            ">2\r\n$7\r\nmessage\r\n:1\r\n"
        );
    }

    #[test]
    fn errors_carry_the_code_clients_know() {
        let code = |error: Error| match error_reply(&error) {
            Reply::Error(text) => text.split(' ').next().unwrap_or_default().to_string(),
            other => panic!("not an error reply: {other:?}"),
        };
        assert_eq!(code(Error::Unauthenticated("x".into())), "NOAUTH");
        assert_eq!(code(Error::Refused("x".into())), "NOPERM");
        assert_eq!(
            code(Error::WriteConcernNotMet {
                acknowledged: 1,
                required: 2
            }),
            "NOREPLICAS"
        );
        assert_eq!(code(Error::Unavailable("x".into())), "TRYAGAIN");
        assert_eq!(code(Error::InvalidRequest("x".into())), "ERR");
    }
}
