//! The string and expiry commands that the primary decides: `SET` with its options, `SETNX`,
//! `GETDEL`, `MSET`, `INCR`/`DECR`/`INCRBY`/`DECRBY`, `APPEND`, `EXPIRE`/`PEXPIRE`, `TTL`/`PTTL`
//! and `PERSIST`.
//!
//! Invariants:
//! - Each command is one request of the service ([`Write`] or [`Request::GetExpiry`]): the
//!   primary decides it atomically against every write it has accepted, so no command is
//!   emulated with several requests another client could interleave with.
//! - Relative times (`EX`, `PX`, `EXPIRE`) become deadlines here, with this node's wall clock;
//!   `TTL` answers from the deadline and the same clock.

use bytes::Bytes;

use super::{not_an_integer, parse_integer, wrong_arity, Connection};
use crate::api::deadline_in;
use crate::api::resp::reply::{error_reply, Reply};
use crate::api::resp::Door;
use crate::api::service::Forwarding;
use crate::error::Error;
use crate::net::event_loop::unix_millis;
use crate::wire::client::{Answer, Condition, Expiry, Request, Response, Write};

/// The reply to a written request whose answer should be `Applied`: 1 or 0.
fn applied_as_integer(answer: Option<Answer>) -> Reply {
    match answer {
        Some(Answer::Applied(applied)) => Reply::Integer(i64::from(applied)),
        other => unexpected_answer(other),
    }
}

/// The number a read-modify-write answered (`INCR`'s new value, `APPEND`'s new length).
fn integer_answer(answer: Option<Answer>) -> Reply {
    match answer {
        Some(Answer::Integer(number)) => Reply::Integer(number),
        other => unexpected_answer(other),
    }
}

fn unexpected_answer(answer: Option<Answer>) -> Reply {
    Reply::err(format!(
        "the primary answered {answer:?}, which this command cannot use"
    ))
}

/// `now + amount × unit_ms`, or `None` on overflow or a non-positive amount where Redis refuses.
fn deadline_after(amount: i64, unit_ms: u64) -> Option<u64> {
    let amount = u64::try_from(amount).ok()?;
    deadline_in(amount.checked_mul(unit_ms)?)
}

impl Connection {
    /// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`.
    pub(super) async fn set_with_options(&mut self, door: &Door, args: &[Bytes]) -> Reply {
        let mut condition = Condition::Always;
        let mut expiry = Expiry::Clear;
        let mut expiry_given = false;
        let mut get = false;
        let mut i = 3;
        while i < args.len() {
            let option = String::from_utf8_lossy(&args[i]).to_ascii_uppercase();
            match option.as_str() {
                "NX" if condition == Condition::Always => condition = Condition::IfAbsent,
                "XX" if condition == Condition::Always => condition = Condition::IfPresent,
                "GET" => get = true,
                "KEEPTTL" if !expiry_given => {
                    expiry = Expiry::Keep;
                    expiry_given = true;
                }
                "EX" | "PX" | "EXAT" | "PXAT" if !expiry_given => {
                    let Some(amount) = args.get(i + 1) else {
                        return Reply::err("syntax error");
                    };
                    let Some(amount) = parse_integer(amount) else {
                        return not_an_integer();
                    };
                    let deadline = match option.as_str() {
                        "EX" => deadline_after(amount, 1000),
                        "PX" => deadline_after(amount, 1),
                        "EXAT" => u64::try_from(amount)
                            .ok()
                            .and_then(|seconds| seconds.checked_mul(1000)),
                        _ => u64::try_from(amount).ok(),
                    };
                    match deadline.filter(|_| amount > 0) {
                        Some(deadline) => expiry = Expiry::At(deadline),
                        None => return Reply::err("invalid expire time in 'set' command"),
                    }
                    expiry_given = true;
                    i += 1;
                }
                _ => return Reply::err("syntax error"),
            }
            i += 1;
        }
        let write = Write::Set {
            key: args[1].to_vec(),
            value: args[2].to_vec(),
            condition,
            expiry,
            get,
        };
        match self.write(door, write).await {
            Ok(result) => match result.answer {
                Some(Answer::Previous(previous)) => previous.map_or(Reply::Nil, Reply::Bulk),
                Some(Answer::Applied(true)) => Reply::ok(),
                Some(Answer::Applied(false)) => Reply::Nil,
                other => unexpected_answer(other),
            },
            Err(reply) => reply,
        }
    }

    /// `SETNX key value`: 1 if set, 0 if the key existed.
    pub(super) async fn set_if_absent(&mut self, door: &Door, args: &[Bytes]) -> Reply {
        let write = Write::Set {
            key: args[1].to_vec(),
            value: args[2].to_vec(),
            condition: Condition::IfAbsent,
            expiry: Expiry::Clear,
            get: false,
        };
        match self.write(door, write).await {
            Ok(result) => applied_as_integer(result.answer),
            Err(reply) => reply,
        }
    }

    /// `GETDEL key`: the value, removed.
    pub(super) async fn get_delete(&mut self, door: &Door, key: &[u8]) -> Reply {
        match self
            .write(door, Write::GetDelete { key: key.to_vec() })
            .await
        {
            Ok(result) => match result.answer {
                Some(Answer::Previous(previous)) => previous.map_or(Reply::Nil, Reply::Bulk),
                other => unexpected_answer(other),
            },
            Err(reply) => reply,
        }
    }

    /// `MSET key value [key value …]`: every pair in one log entry.
    pub(super) async fn set_many(&mut self, door: &Door, args: &[Bytes]) -> Reply {
        if args.len() % 2 == 0 {
            return wrong_arity("mset");
        }
        let pairs = args[1..]
            .chunks_exact(2)
            .map(|pair| (pair[0].to_vec(), pair[1].to_vec()))
            .collect();
        match self.write(door, Write::PutMany { pairs }).await {
            Ok(_) => Reply::ok(),
            Err(reply) => reply,
        }
    }

    /// `INCR`, `DECR`, `INCRBY`, `DECRBY`: the new value.
    pub(super) async fn increment(&mut self, door: &Door, name: &str, args: &[Bytes]) -> Reply {
        let by = match name {
            "incr" => 1,
            "decr" => -1,
            _ => {
                let Some(amount) = parse_integer(&args[2]) else {
                    return not_an_integer();
                };
                if name == "incrby" {
                    amount
                } else {
                    match amount.checked_neg() {
                        Some(negated) => negated,
                        None => return Reply::err("decrement would overflow"),
                    }
                }
            }
        };
        let write = Write::Increment {
            key: args[1].to_vec(),
            by,
        };
        match self.write(door, write).await {
            Ok(result) => integer_answer(result.answer),
            Err(reply) => reply,
        }
    }

    /// `APPEND key suffix`: the new length.
    pub(super) async fn append(&mut self, door: &Door, args: &[Bytes]) -> Reply {
        let write = Write::Append {
            key: args[1].to_vec(),
            suffix: args[2].to_vec(),
        };
        match self.write(door, write).await {
            Ok(result) => integer_answer(result.answer),
            Err(reply) => reply,
        }
    }

    /// `EXPIRE key seconds`, `PEXPIRE key ms`, `PERSIST key`: 1 if the key's expiry changed.
    pub(super) async fn expire(&mut self, door: &Door, name: &str, args: &[Bytes]) -> Reply {
        let expiry = if name == "persist" {
            Expiry::Clear
        } else {
            if args.len() > 3 {
                return Reply::err(format!(
                    "{} options (NX, XX, GT, LT) are not supported",
                    name.to_ascii_uppercase()
                ));
            }
            let Some(amount) = parse_integer(&args[2]) else {
                return not_an_integer();
            };
            let unit_ms = if name == "expire" { 1000 } else { 1 };
            // A time not in the future deletes the key, as in Redis.
            let deadline = match amount {
                ..=0 => Some(unix_millis().saturating_sub(1)),
                _ => deadline_after(amount, unit_ms),
            };
            match deadline {
                Some(deadline) => Expiry::At(deadline),
                None => return Reply::err(format!("invalid expire time in '{name}' command")),
            }
        };
        let write = Write::Expire {
            key: args[1].to_vec(),
            expiry,
        };
        match self.write(door, write).await {
            Ok(result) => applied_as_integer(result.answer),
            Err(reply) => reply,
        }
    }

    /// `TTL key` (seconds) and `PTTL key` (milliseconds): -2 for no key, -1 for no expiry.
    pub(super) async fn time_to_live(&self, door: &Door, name: &str, key: &[u8]) -> Reply {
        let request = Request::GetExpiry {
            key: key.to_vec(),
            consistency: self.consistency,
        };
        let response = door
            .service
            .call(self.caller.clone(), request, Forwarding::ToPrimary)
            .await;
        let (exists, deadline) = match response {
            Response::Expiry {
                exists, deadline, ..
            } => (exists, deadline),
            Response::Error(err) => return error_reply(&err),
            other => return error_reply(&super::unexpected(&other)),
        };
        let Some(deadline) = deadline.filter(|_| exists) else {
            return Reply::Integer(if exists { -1 } else { -2 });
        };
        let left_ms = deadline.saturating_sub(unix_millis());
        let left = if name == "ttl" {
            left_ms.saturating_add(500) / 1000
        } else {
            left_ms
        };
        Reply::Integer(i64::try_from(left).unwrap_or(i64::MAX))
    }
}

/// The reply to a write refused by the primary: Redis's own text for what Redis refuses the same
/// way (not an integer, overflow), otherwise the door's usual error reply.
pub(super) fn write_error_reply(error: &Error) -> Reply {
    match error {
        Error::InvalidRequest(message)
            if message == crate::core::NOT_AN_INTEGER
                || message == crate::core::OVERFLOW
                || message.starts_with("string exceeds") =>
        {
            Reply::err(message)
        }
        other => error_reply(other),
    }
}
