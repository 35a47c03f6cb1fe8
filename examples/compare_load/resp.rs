//! A minimal RESP2 client for Redis: the few commands the comparison sends (`SET`, `WAIT`, `GET`,
//! `PING`), one connection per worker, one request in flight per connection.
//!
//! `SET` and its `WAIT` go out in one write (a pipeline of two commands) and their two replies are
//! read back in order, so a durable Redis write costs one round trip, as it would for a client
//! that pipelines. Replies are parsed with bounds: a length the server sends is checked before
//! anything is allocated, and anything this client did not ask for is a protocol error, never a
//! panic. The line and bulk readers are shared with the no-op server (`noop.rs`).

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use replikv::{Error, Result};

/// Longest bulk string or line accepted from the other side; values here are ~100 bytes.
pub const MAX_BULK_BYTES: usize = 16 * 1024 * 1024;

/// Most arguments of one command the no-op server accepts.
pub const MAX_ARGUMENTS: usize = 1024;

/// One RESP2 reply, as far as this client needs to tell them apart.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(Vec<u8>),
    Error(String),
    Integer(i64),
    /// `None` is the nil bulk string (`$-1`), e.g. a `GET` of a missing key.
    Bulk(Option<Vec<u8>>),
}

/// A `WAIT` after each `SET`: how many replicas must have the write, within how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitFor {
    pub replicas: u32,
    pub timeout: Duration,
}

/// Appends `args` to `buffer` as one RESP command (an array of bulk strings).
pub fn encode_command(buffer: &mut Vec<u8>, args: &[&[u8]]) {
    buffer.push(b'*');
    buffer.extend_from_slice(args.len().to_string().as_bytes());
    buffer.extend_from_slice(b"\r\n");
    for arg in args {
        buffer.push(b'$');
        buffer.extend_from_slice(arg.len().to_string().as_bytes());
        buffer.extend_from_slice(b"\r\n");
        buffer.extend_from_slice(arg);
        buffer.extend_from_slice(b"\r\n");
    }
}

/// Reads one CRLF-terminated line into `line`, without the CRLF. End of stream is an error.
pub async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, line: &mut Vec<u8>) -> Result<()> {
    line.clear();
    let read = (&mut *reader)
        .take(MAX_BULK_BYTES as u64)
        .read_until(b'\n', line)
        .await
        .map_err(network)?;
    if read == 0 {
        return Err(Error::Network("the connection was closed".into()));
    }
    if !line.ends_with(b"\r\n") {
        return Err(Error::Protocol(format!(
            "a line of {} bytes does not end in CRLF",
            line.len()
        )));
    }
    line.truncate(line.len() - 2);
    Ok(())
}

/// Parses the decimal number of a RESP header line such as `$5` or `*3` (after its type byte).
pub fn parse_number(digits: &[u8]) -> Result<i64> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            Error::Protocol(format!(
                "{:?} is not a number",
                String::from_utf8_lossy(digits)
            ))
        })
}

/// Reads the body of a bulk string of `length` bytes (the header already read) and its CRLF.
pub async fn read_bulk_body<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    length: i64,
) -> Result<Vec<u8>> {
    let length = usize::try_from(length)
        .ok()
        .filter(|length| *length <= MAX_BULK_BYTES)
        .ok_or_else(|| Error::Protocol(format!("bulk string length {length} out of range")))?;
    let mut body = vec![0; length + 2];
    reader.read_exact(&mut body).await.map_err(network)?;
    if !body.ends_with(b"\r\n") {
        return Err(Error::Protocol("a bulk string does not end in CRLF".into()));
    }
    body.truncate(length);
    Ok(body)
}

/// Reads one reply. Arrays are refused: no command this client sends answers with one.
pub async fn read_reply<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> Result<Reply> {
    read_line(reader, line).await?;
    let Some((&kind, rest)) = line.split_first() else {
        return Err(Error::Protocol("an empty reply line".into()));
    };
    match kind {
        b'+' => Ok(Reply::Simple(rest.to_vec())),
        b'-' => Ok(Reply::Error(String::from_utf8_lossy(rest).into_owned())),
        b':' => Ok(Reply::Integer(parse_number(rest)?)),
        b'$' => match parse_number(rest)? {
            -1 => Ok(Reply::Bulk(None)),
            length => Ok(Reply::Bulk(Some(read_bulk_body(reader, length).await?))),
        },
        other => Err(Error::Protocol(format!(
            "unexpected reply type {:?}",
            char::from(other)
        ))),
    }
}

/// An I/O failure on a connection, as the error the drivers report.
pub fn network(err: std::io::Error) -> Error {
    Error::Network(err.to_string())
}

/// One connection to a Redis server (or the no-op server).
pub struct RespConnection {
    reader: BufReader<TcpStream>,
    out: Vec<u8>,
    line: Vec<u8>,
}

impl RespConnection {
    pub async fn connect(addr: &str) -> Result<RespConnection> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|err| Error::Network(format!("cannot connect to {addr}: {err}")))?;
        stream.set_nodelay(true).map_err(network)?;
        Ok(RespConnection {
            reader: BufReader::new(stream),
            out: Vec::with_capacity(256),
            line: Vec::with_capacity(64),
        })
    }

    async fn send(&mut self) -> Result<()> {
        let result = self.reader.get_mut().write_all(&self.out).await;
        self.out.clear();
        result.map_err(network)
    }

    async fn reply(&mut self) -> Result<Reply> {
        match read_reply(&mut self.reader, &mut self.line).await? {
            Reply::Error(message) => Err(Error::Unavailable(format!("Redis: {message}"))),
            reply => Ok(reply),
        }
    }

    /// `PING`: a round trip that touches no data.
    /// `AUTH user password`: a failure (`-WRONGPASS`, ...) is an error.
    pub async fn auth(&mut self, user: &str, password: &str) -> Result<()> {
        encode_command(
            &mut self.out,
            &[b"AUTH", user.as_bytes(), password.as_bytes()],
        );
        self.send().await?;
        self.reply().await.map(|_| ())
    }

    pub async fn ping(&mut self) -> Result<()> {
        encode_command(&mut self.out, &[b"PING"]);
        self.send().await?;
        self.reply().await.map(|_| ())
    }

    /// `SET key value`, followed in the same write by `WAIT replicas timeout` if asked. A `WAIT`
    /// that counts fewer replicas than asked is a failure: the write concern was not met in time.
    pub async fn set(&mut self, key: &[u8], value: &[u8], wait: Option<WaitFor>) -> Result<()> {
        encode_command(&mut self.out, &[b"SET", key, value]);
        if let Some(wait) = wait {
            let replicas = wait.replicas.to_string();
            let timeout = wait.timeout.as_millis().to_string();
            encode_command(
                &mut self.out,
                &[b"WAIT", replicas.as_bytes(), timeout.as_bytes()],
            );
        }
        self.send().await?;
        match self.reply().await? {
            Reply::Simple(ok) if ok == b"OK" => {}
            other => return Err(unexpected("SET", &other)),
        }
        if let Some(wait) = wait {
            match self.reply().await? {
                Reply::Integer(acknowledged) if acknowledged >= i64::from(wait.replicas) => {}
                Reply::Integer(acknowledged) => {
                    return Err(Error::Unavailable(format!(
                        "WAIT: {acknowledged} of {} replicas within {} ms",
                        wait.replicas,
                        wait.timeout.as_millis()
                    )))
                }
                other => return Err(unexpected("WAIT", &other)),
            }
        }
        Ok(())
    }

    /// `GET key`: whether the key has a value.
    pub async fn get(&mut self, key: &[u8]) -> Result<bool> {
        encode_command(&mut self.out, &[b"GET", key]);
        self.send().await?;
        match self.reply().await? {
            Reply::Bulk(value) => Ok(value.is_some()),
            other => Err(unexpected("GET", &other)),
        }
    }
}

fn unexpected(command: &str, reply: &Reply) -> Error {
    Error::Protocol(format!("unexpected reply to {command}: {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Reply> {
        let mut reader = BufReader::new(bytes);
        read_reply(&mut reader, &mut Vec::new()).await
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut buffer = Vec::new();
        encode_command(&mut buffer, &[b"SET", b"k", b"value"]);
        assert_eq!(buffer, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n");
    }

    #[tokio::test]
    async fn replies_of_every_kind_parse() {
        assert_eq!(
            parse(b"+OK\r\n").await.unwrap(),
            Reply::Simple(b"OK".to_vec())
        );
        assert_eq!(parse(b":2\r\n").await.unwrap(), Reply::Integer(2));
        assert_eq!(parse(b"$-1\r\n").await.unwrap(), Reply::Bulk(None));
        assert_eq!(
            parse(b"$3\r\nabc\r\n").await.unwrap(),
            Reply::Bulk(Some(b"abc".to_vec()))
        );
        assert_eq!(
            parse(b"-ERR no\r\n").await.unwrap(),
            Reply::Error("ERR no".into())
        );
    }

    /// A server that answers the first request of one connection with `reply`, then waits.
    async fn answering(reply: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0; 512];
            let _ = stream.read(&mut request).await;
            stream.write_all(reply).await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        addr
    }

    #[tokio::test]
    async fn a_wait_that_counts_too_few_replicas_fails_the_put() {
        let wait = WaitFor {
            replicas: 2,
            timeout: Duration::from_millis(100),
        };
        let addr = answering(b"+OK\r\n:1\r\n").await;
        let mut connection = RespConnection::connect(&addr).await.unwrap();
        let error = connection.set(b"k", b"v", Some(wait)).await.unwrap_err();
        assert!(error.to_string().contains("1 of 2 replicas"), "{error}");

        let addr = answering(b"+OK\r\n:2\r\n").await;
        let mut connection = RespConnection::connect(&addr).await.unwrap();
        connection.set(b"k", b"v", Some(wait)).await.unwrap();

        let addr = answering(b"-READONLY You can't write against a read only replica.\r\n").await;
        let mut connection = RespConnection::connect(&addr).await.unwrap();
        let error = connection.set(b"k", b"v", None).await.unwrap_err();
        assert!(error.to_string().contains("READONLY"), "{error}");
    }

    #[tokio::test]
    async fn malformed_replies_are_errors_not_panics() {
        for bytes in [
            &b""[..],
            b"+OK",
            b"\r\n",
            b":x\r\n",
            b"$99999999999\r\n",
            b"$-5\r\n",
            b"$3\r\nabcd\r\n",
            b"*1\r\n$1\r\na\r\n",
            b"?\r\n",
        ] {
            assert!(parse(bytes).await.is_err(), "{bytes:?} parsed");
        }
    }
}
