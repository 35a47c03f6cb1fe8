//! Taking commands off a RESP connection's bytes, within Redis's limits and with its error texts.
//!
//! A command arrives either as a RESP array of bulk strings (what every client library, redis-cli
//! and redis-benchmark send) or as an inline command, one line of space-separated words (what
//! telnet users and redis-benchmark's `PING_INLINE` send). Arrays are decoded by the
//! `redis-protocol` crate. Before the crate sees them, [`check_headers`] reads the length headers
//! already buffered, so a length past a limit is refused with Redis's own text as soon as it
//! arrives, before the bytes it announces are waited for or buffered.
//!
//! Invariants:
//! - Nothing here panics on any input, and nothing allocates more than the connection has
//!   buffered: the crate decodes only a buffer whose headers passed the limits.
//! - An error is a protocol error, after which the connection is closed, as Redis does.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::types::BytesFrame;

use crate::client::MAX_VALUE_BYTES;

/// Longest inline command, and longest length header: Redis's `PROTO_INLINE_MAX_SIZE`.
pub const MAX_INLINE_BYTES: usize = 64 * 1024;

/// Most arguments in one command (Redis allows more; replikv's commands never need so many).
pub const MAX_ARGUMENTS: usize = 1024 * 1024;

/// Largest argument: the largest value a write may carry (Redis's `proto-max-bulk-len` is larger,
/// but replikv could not store more).
pub const MAX_BULK_BYTES: usize = MAX_VALUE_BYTES;

/// Largest command, all arguments together: what one connection may make the node buffer.
pub const MAX_COMMAND_BYTES: usize = 2 * MAX_VALUE_BYTES;

/// A protocol error: Redis's text after `Protocol error: `.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// Takes the first complete command off `buffer`: `Ok(None)` if more bytes are needed. Empty
/// commands (a blank line, `*0`) are skipped.
pub fn next_command(buffer: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    loop {
        let Some(&first) = buffer.first() else {
            return Ok(None);
        };
        let command = if first == b'*' {
            check_headers(buffer)?;
            match decode_bytes_mut(buffer) {
                Ok(Some((frame, _, _))) => arguments(frame)?,
                Ok(None) => {
                    return too_big(buffer.len()).map(|()| None);
                }
                Err(err) => return Err(ProtocolError(err.to_string())),
            }
        } else {
            match inline_command(buffer)? {
                Some(words) => words,
                None => return Ok(None),
            }
        };
        if !command.is_empty() {
            return Ok(Some(command));
        }
    }
}

/// Refuses a command that keeps growing past [`MAX_COMMAND_BYTES`] without ending.
fn too_big(buffered: usize) -> Result<(), ProtocolError> {
    if buffered > MAX_COMMAND_BYTES {
        Err(ProtocolError(format!(
            "a command larger than {MAX_COMMAND_BYTES} bytes"
        )))
    } else {
        Ok(())
    }
}

/// The arguments of a decoded array: every element must be a bulk string.
fn arguments(frame: BytesFrame) -> Result<Vec<Bytes>, ProtocolError> {
    match frame {
        BytesFrame::Array(elements) => elements
            .into_iter()
            .map(|element| match element {
                BytesFrame::BulkString(bytes) => Ok(bytes),
                other => Err(ProtocolError(format!(
                    "expected '$', got '{}'",
                    kind_byte(&other)
                ))),
            })
            .collect(),
        BytesFrame::Null => Ok(Vec::new()),
        other => Err(ProtocolError(format!(
            "expected '*', got '{}'",
            kind_byte(&other)
        ))),
    }
}

fn kind_byte(frame: &BytesFrame) -> char {
    match frame {
        BytesFrame::SimpleString(_) => '+',
        BytesFrame::Error(_) => '-',
        BytesFrame::Integer(_) => ':',
        BytesFrame::BulkString(_) | BytesFrame::Null => '$',
        BytesFrame::Array(_) => '*',
    }
}

/// Checks the length headers buffered so far of the array at the front of `buffer`, with Redis's
/// texts: the count of arguments, and each argument's length.
fn check_headers(buffer: &[u8]) -> Result<(), ProtocolError> {
    let invalid_count = || ProtocolError("invalid multibulk length".into());
    let Some((count, mut at)) = length_header(buffer, 1, "too big mbulk count string")? else {
        return Ok(());
    };
    let count = count.ok_or_else(invalid_count)?;
    if count > MAX_ARGUMENTS as i64 {
        return Err(invalid_count());
    }
    for _ in 0..count.max(0) {
        let Some(&kind) = buffer.get(at) else {
            return Ok(());
        };
        if kind != b'$' {
            return Err(ProtocolError(format!(
                "expected '$', got '{}'",
                char::from(kind)
            )));
        }
        let Some((length, next)) = length_header(buffer, at + 1, "too big bulk count string")?
        else {
            return Ok(());
        };
        let length = length
            .and_then(|length| usize::try_from(length).ok())
            .filter(|&length| length <= MAX_BULK_BYTES)
            .ok_or_else(|| ProtocolError("invalid bulk length".into()))?;
        at = next + length + 2;
    }
    Ok(())
}

/// The number on the header line starting at `start` and the offset after its CRLF: `None` if
/// the line is not complete yet; an inner `None` if it is not a number.
#[allow(clippy::type_complexity)]
fn length_header(
    buffer: &[u8],
    start: usize,
    too_long: &str,
) -> Result<Option<(Option<i64>, usize)>, ProtocolError> {
    let rest = buffer.get(start..).unwrap_or_default();
    let Some(end) = rest.windows(2).position(|pair| pair == b"\r\n") else {
        if rest.len() > MAX_INLINE_BYTES {
            return Err(ProtocolError(too_long.into()));
        }
        return Ok(None);
    };
    let number = std::str::from_utf8(&rest[..end])
        .ok()
        .and_then(|text| text.parse::<i64>().ok());
    Ok(Some((number, start + end + 2)))
}

/// Takes one inline command (a line) off `buffer`, split into words as Redis does: spaces
/// separate words, and "double" or 'single' quotes group them, with backslash escapes inside
/// double quotes.
fn inline_command(buffer: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(end) = buffer.iter().position(|&byte| byte == b'\n') else {
        if buffer.len() > MAX_INLINE_BYTES {
            return Err(ProtocolError("too big inline request".into()));
        }
        return Ok(None);
    };
    if end > MAX_INLINE_BYTES {
        return Err(ProtocolError("too big inline request".into()));
    }
    let line = buffer.split_to(end + 1).freeze();
    let mut line = &line[..end];
    if let [rest @ .., b'\r'] = line {
        line = rest;
    }
    split_words(line)
        .map(Some)
        .ok_or_else(|| ProtocolError("unbalanced quotes in request".into()))
}

/// Splits an inline command into words (Redis's `sdssplitargs`); `None` on unbalanced quotes.
fn split_words(mut line: &[u8]) -> Option<Vec<Bytes>> {
    let mut words = Vec::new();
    loop {
        while let [first, rest @ ..] = line {
            if !first.is_ascii_whitespace() {
                break;
            }
            line = rest;
        }
        if line.is_empty() {
            return Some(words);
        }
        let mut word = Vec::new();
        match line[0] {
            b'"' => {
                let mut rest = &line[1..];
                loop {
                    match rest {
                        [] => return None,
                        [b'\\', b'x', high, low, tail @ ..]
                            if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() =>
                        {
                            let hex = [*high, *low];
                            let text = std::str::from_utf8(&hex).ok()?;
                            word.push(u8::from_str_radix(text, 16).ok()?);
                            rest = tail;
                        }
                        [b'\\', escaped, tail @ ..] => {
                            word.push(match escaped {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 0x08,
                                b'a' => 0x07,
                                other => *other,
                            });
                            rest = tail;
                        }
                        [b'"', tail @ ..] => {
                            // A closing quote must be followed by a space or the end.
                            if tail.first().is_some_and(|byte| !byte.is_ascii_whitespace()) {
                                return None;
                            }
                            rest = tail;
                            break;
                        }
                        [byte, tail @ ..] => {
                            word.push(*byte);
                            rest = tail;
                        }
                    }
                }
                line = rest;
            }
            b'\'' => {
                let mut rest = &line[1..];
                loop {
                    match rest {
                        [] => return None,
                        [b'\\', b'\'', tail @ ..] => {
                            word.push(b'\'');
                            rest = tail;
                        }
                        [b'\'', tail @ ..] => {
                            if tail.first().is_some_and(|byte| !byte.is_ascii_whitespace()) {
                                return None;
                            }
                            rest = tail;
                            break;
                        }
                        [byte, tail @ ..] => {
                            word.push(*byte);
                            rest = tail;
                        }
                    }
                }
                line = rest;
            }
            _ => {
                let end = line
                    .iter()
                    .position(|byte| byte.is_ascii_whitespace())
                    .unwrap_or(line.len());
                word.extend_from_slice(&line[..end]);
                line = &line[end..];
            }
        }
        words.push(Bytes::from(word));
    }
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

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut buffer = BytesMut::from(input);
        let mut commands = Vec::new();
        while let Some(command) = next_command(&mut buffer)? {
            commands.push(command);
        }
        Ok(commands)
    }

    #[test]
    fn arrays_and_inline_commands_pipeline() {
        let input =
            b"*2\r\n$3\r\nGET\r\n$1\r\na\r\nPING\r\n\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n";
        assert_eq!(
            parse_all(input).unwrap(),
            vec![
                words(&["GET", "a"]),
                words(&["PING"]),
                words(&["SET", "k", ""])
            ]
        );
    }

    #[test]
    fn a_partial_command_waits_for_more() {
        let whole = b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n";
        for cut in 1..whole.len() {
            let mut buffer = BytesMut::from(&whole[..cut]);
            assert_eq!(next_command(&mut buffer), Ok(None), "cut at {cut}");
            buffer.extend_from_slice(&whole[cut..]);
            assert_eq!(
                next_command(&mut buffer),
                Ok(Some(words(&["GET", "hello"])))
            );
            assert!(buffer.is_empty());
        }
    }

    #[test]
    fn limits_are_refused_with_redis_texts_before_the_bytes_arrive() {
        let refused = |input: &[u8]| match parse_all(input) {
            Err(ProtocolError(text)) => text,
            other => panic!("{input:?} was not refused: {other:?}"),
        };
        assert_eq!(refused(b"*99999999999\r\n"), "invalid multibulk length");
        assert_eq!(refused(b"*x\r\n"), "invalid multibulk length");
        assert_eq!(refused(b"*1\r\n$999999999\r\n"), "invalid bulk length");
        assert_eq!(refused(b"*1\r\n$-5\r\n"), "invalid bulk length");
        assert_eq!(refused(b"*1\r\n+OK\r\n"), "expected '$', got '+'");
        assert_eq!(
            refused(&vec![b'*'; MAX_INLINE_BYTES + 10]),
            "too big mbulk count string"
        );
        assert_eq!(
            refused(&vec![b'a'; MAX_INLINE_BYTES + 10]),
            "too big inline request"
        );
        assert_eq!(
            refused(b"SET k \"unbalanced\r\n"),
            "unbalanced quotes in request"
        );
    }

    #[test]
    fn inline_words_follow_redis_quoting() {
        assert_eq!(
            parse_all(b"SET  \"a b\" 'c d'\r\n").unwrap(),
            vec![words(&["SET", "a b", "c d"])]
        );
        assert_eq!(
            parse_all(b"ECHO \"\\x41\\n\"\n").unwrap(),
            vec![vec![
                Bytes::from_static(b"ECHO"),
                Bytes::from_static(b"A\n")
            ]]
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x1234_5678_u64;
        for _ in 0..2000 {
            let mut input = Vec::new();
            for _ in 0..(state % 40) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                input.push(b"*$\r\n0123-+:abc"[(state % 14) as usize]);
            }
            let mut buffer = BytesMut::from(&input[..]);
            while let Ok(Some(_)) = next_command(&mut buffer) {}
        }
    }
}
