//! The no-op server: answers every request at once without storing anything, so that a run
//! against it measures what the load generator itself can push.
//!
//! It speaks the two protocols the generator drives over TCP, told apart by a connection's first
//! byte: RESP (`*`), where `SET` gets `+OK`, `WAIT n t` gets `:n` (every replica "acknowledged"),
//! `GET` a nil and anything else `+OK`; and HTTP/1.1 `POST`, which gets a fixed etcd-shaped JSON
//! body naming this server its own leader. Replies to pipelined requests are written together
//! once the input buffer is drained. One thread (a current-thread runtime), so that on a small
//! machine the server takes as little CPU away from the generator as it can.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use replikv::{Error, Result};

use crate::resp::{
    network, parse_number, read_bulk_body, read_line, MAX_ARGUMENTS, MAX_BULK_BYTES,
};

/// The body of every HTTP answer: a status that names itself leader, an empty range, a header.
const HTTP_BODY: &[u8] = br#"{"header":{"member_id":"1"},"leader":"1"}"#;

/// Serves connections on `listen` until the process is stopped.
pub async fn serve(listen: &str) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|err| Error::Config(format!("cannot listen on {listen}: {err}")))?;
    eprintln!("no-op server listening on {listen}");
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .map_err(|err| Error::Network(err.to_string()))?;
        tokio::spawn(async move {
            // A client that goes away or misbehaves ends only its own connection.
            let _ = serve_connection(stream).await;
        });
    }
}

async fn serve_connection(stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true).map_err(network)?;
    let mut reader = BufReader::new(stream);
    let first = reader.fill_buf().await.map_err(network)?.first().copied();
    let mut out = Vec::with_capacity(256);
    let mut line = Vec::with_capacity(128);
    loop {
        match first {
            Some(b'*') => answer_resp(&mut reader, &mut line, &mut out).await?,
            Some(_) => answer_http(&mut reader, &mut line, &mut out).await?,
            None => return Ok(()),
        }
        if reader.buffer().is_empty() {
            reader.get_mut().write_all(&out).await.map_err(network)?;
            out.clear();
        }
    }
}

/// Reads one RESP command and appends its answer to `out`.
async fn answer_resp<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let args = read_command(reader, line).await?;
    let name = args.first().map(|name| name.to_ascii_uppercase());
    match (name.as_deref(), args.get(1)) {
        (Some(b"WAIT"), Some(replicas)) => {
            out.push(b':');
            out.extend_from_slice(replicas);
            out.extend_from_slice(b"\r\n");
        }
        (Some(b"GET"), _) => out.extend_from_slice(b"$-1\r\n"),
        (Some(b"PING"), _) => out.extend_from_slice(b"+PONG\r\n"),
        _ => out.extend_from_slice(b"+OK\r\n"),
    }
    Ok(())
}

/// Reads one command: an array of bulk strings.
async fn read_command<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> Result<Vec<Vec<u8>>> {
    read_line(reader, line).await?;
    let count = match line.split_first() {
        Some((b'*', digits)) => parse_number(digits)?,
        _ => return Err(Error::Protocol("a command is not an array".into())),
    };
    let count = usize::try_from(count)
        .ok()
        .filter(|count| *count <= MAX_ARGUMENTS)
        .ok_or_else(|| Error::Protocol(format!("{count} arguments")))?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        read_line(reader, line).await?;
        let length = match line.split_first() {
            Some((b'$', digits)) => parse_number(digits)?,
            _ => return Err(Error::Protocol("an argument is not a bulk string".into())),
        };
        args.push(read_bulk_body(reader, length).await?);
    }
    Ok(args)
}

/// Reads one HTTP request (headers and a `Content-Length` body) and appends the answer to `out`.
async fn answer_http<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<()> {
    read_line(reader, line).await?;
    let mut content_length = 0;
    loop {
        read_line(reader, line).await?;
        if line.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(line);
        if let Some((name, value)) = text.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                content_length = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|length| *length <= MAX_BULK_BYTES)
                    .ok_or_else(|| Error::Protocol(format!("bad Content-Length {value:?}")))?;
            }
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).await.map_err(network)?;
    out.extend_from_slice(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            HTTP_BODY.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(HTTP_BODY);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::EtcdConnection;
    use crate::resp::{RespConnection, WaitFor};
    use std::time::Duration;

    /// A no-op server on an ephemeral loopback port.
    async fn start() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(stream));
            }
        });
        addr
    }

    #[tokio::test]
    async fn the_resp_client_round_trips_through_the_noop_server() {
        let addr = start().await;
        let mut connection = RespConnection::connect(&addr).await.unwrap();
        connection.ping().await.unwrap();
        let wait = WaitFor {
            replicas: 2,
            timeout: Duration::from_millis(100),
        };
        for _ in 0..3 {
            connection.set(b"key", b"value", Some(wait)).await.unwrap();
            connection.set(b"key", b"value", None).await.unwrap();
            assert!(!connection.get(b"key").await.unwrap());
        }
    }

    #[tokio::test]
    async fn the_etcd_client_round_trips_through_the_noop_server() {
        let addr = start().await;
        let mut connection = EtcdConnection::connect(&addr).await.unwrap();
        assert!(connection.is_leader().await.unwrap());
        for _ in 0..3 {
            connection.put(b"key", "dmFsdWU=").await.unwrap();
            assert!(!connection.get(b"key").await.unwrap());
        }
    }

    #[tokio::test]
    async fn garbage_ends_only_its_connection() {
        let addr = start().await;
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(b"*99999999\r\n").await.unwrap();
        let mut rest = Vec::new();
        // The server drops the connection: end of stream, no answer.
        let _ = stream.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
        let mut connection = RespConnection::connect(&addr).await.unwrap();
        connection.ping().await.unwrap();
    }
}
