//! A minimal HTTP/1.1 client for the load generator: plain TCP with keep-alive, one connection
//! per worker, one request in flight. It drives etcd's JSON gateway and replikv's HTTP door.
//!
//! Hand-written rather than a general HTTP client so that the generator adds little CPU of its
//! own and needs no new dependency; it understands exactly what those servers send (a status
//! line, headers, a body framed by `Content-Length` or chunked) and bounds every length it reads.
//! A `Connection: close` from the server makes the next request reconnect.

use tokio::io::{AsyncBufRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use replikv::{Error, Result};

use crate::resp::{network, read_line, MAX_BULK_BYTES};

/// Most header lines of one response.
const MAX_HEADERS: usize = 100;

/// One keep-alive connection to `host:port`.
pub struct HttpConnection {
    addr: String,
    /// Sent with every request as `Authorization: ...`, if set.
    authorization: Option<String>,
    reader: Option<BufReader<TcpStream>>,
    out: Vec<u8>,
    line: Vec<u8>,
    body: Vec<u8>,
}

impl HttpConnection {
    pub async fn connect(addr: &str, authorization: Option<String>) -> Result<HttpConnection> {
        let mut connection = HttpConnection {
            addr: addr.to_string(),
            authorization,
            reader: None,
            out: Vec::with_capacity(512),
            line: Vec::with_capacity(128),
            body: Vec::with_capacity(512),
        };
        connection.reconnect().await?;
        Ok(connection)
    }

    async fn reconnect(&mut self) -> Result<()> {
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|err| Error::Network(format!("cannot connect to {}: {err}", self.addr)))?;
        stream.set_nodelay(true).map_err(network)?;
        self.reader = Some(BufReader::new(stream));
        Ok(())
    }

    /// Sends one request with `body` (of `content_type`, if any) and returns the status and the
    /// response body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, &[u8])> {
        if self.reader.is_none() {
            self.reconnect().await?;
        }
        self.out.clear();
        self.out.extend_from_slice(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
                self.addr,
                body.len()
            )
            .as_bytes(),
        );
        if let Some(authorization) = &self.authorization {
            self.out.extend_from_slice(b"Authorization: ");
            self.out.extend_from_slice(authorization.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(body);
        let Some(reader) = self.reader.as_mut() else {
            return Err(Error::Network("not connected".into()));
        };
        match exchange(reader, &self.out, &mut self.line, &mut self.body).await {
            Ok(response) => {
                if response.close {
                    self.reader = None;
                }
                Ok((response.status, self.body.as_slice()))
            }
            Err(error) => {
                // The stream may be half-way through a response: start afresh next time.
                self.reader = None;
                Err(error)
            }
        }
    }
}

/// What a response said besides its body.
#[derive(Debug, PartialEq, Eq)]
struct ResponseHead {
    status: u16,
    /// The server will close the connection after this response.
    close: bool,
}

/// Writes `request`, reads one response into `body`.
async fn exchange(
    reader: &mut BufReader<TcpStream>,
    request: &[u8],
    line: &mut Vec<u8>,
    body: &mut Vec<u8>,
) -> Result<ResponseHead> {
    reader.get_mut().write_all(request).await.map_err(network)?;
    read_response(reader, line, body).await
}

/// Reads one HTTP/1.1 response: status line, headers, and a body framed by `Content-Length` or
/// chunked transfer coding (the two the gateway uses).
async fn read_response<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    body: &mut Vec<u8>,
) -> Result<ResponseHead> {
    read_line(reader, line).await?;
    let status = parse_status_line(line)?;
    let mut content_length = None;
    let mut chunked = false;
    let mut close = false;
    let mut headers = 0;
    loop {
        read_line(reader, line).await?;
        if line.is_empty() {
            break;
        }
        headers += 1;
        if headers > MAX_HEADERS {
            return Err(Error::Protocol("too many response headers".into()));
        }
        let text = String::from_utf8_lossy(line);
        let Some((name, value)) = text.split_once(':') else {
            return Err(Error::Protocol(format!("bad header line {text:?}")));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(parse_length(value, 10)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    body.clear();
    if chunked {
        loop {
            read_line(reader, line).await?;
            let size_text = String::from_utf8_lossy(line);
            let size_text = size_text.split(';').next().unwrap_or_default();
            let size = parse_length(size_text.trim(), 16)?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    read_line(reader, line).await?;
                    if line.is_empty() {
                        break;
                    }
                }
                break;
            }
            if body.len() + size > MAX_BULK_BYTES {
                return Err(Error::Protocol("response body too large".into()));
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader
                .read_exact(&mut body[start..])
                .await
                .map_err(network)?;
            read_line(reader, line).await?;
            if !line.is_empty() {
                return Err(Error::Protocol("a chunk does not end in CRLF".into()));
            }
        }
    } else {
        let length = content_length.ok_or_else(|| {
            Error::Protocol("a response with neither Content-Length nor chunks".into())
        })?;
        if length > MAX_BULK_BYTES {
            return Err(Error::Protocol("response body too large".into()));
        }
        body.resize(length, 0);
        reader.read_exact(body).await.map_err(network)?;
    }
    Ok(ResponseHead { status, close })
}

/// The status code of `HTTP/1.1 200 OK`.
fn parse_status_line(line: &[u8]) -> Result<u16> {
    let text = String::from_utf8_lossy(line);
    let mut parts = text.split(' ');
    match (
        parts.next(),
        parts.next().and_then(|code| code.parse().ok()),
    ) {
        (Some(version), Some(code)) if version.starts_with("HTTP/1.") => Ok(code),
        _ => Err(Error::Protocol(format!("bad status line {text:?}"))),
    }
}

fn parse_length(text: &str, radix: u32) -> Result<usize> {
    usize::from_str_radix(text, radix)
        .map_err(|_| Error::Protocol(format!("bad length {text:?} in a response")))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<(ResponseHead, Vec<u8>)> {
        let mut reader = BufReader::new(bytes);
        let mut body = Vec::new();
        let head = read_response(&mut reader, &mut Vec::new(), &mut body).await?;
        Ok((head, body))
    }

    #[tokio::test]
    async fn a_content_length_body_is_read_exactly() {
        let (head, body) =
            parse(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}extra")
                .await
                .unwrap();
        assert_eq!(
            head,
            ResponseHead {
                status: 200,
                close: false
            }
        );
        assert_eq!(body, b"{}");
    }

    #[tokio::test]
    async fn a_chunked_body_is_reassembled() {
        let (head, body) = parse(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(
            head,
            ResponseHead {
                status: 503,
                close: true
            }
        );
        assert_eq!(body, b"abcde");
    }

    #[tokio::test]
    async fn malformed_responses_are_errors_not_panics() {
        for bytes in [
            &b""[..],
            b"SMTP 200\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        ] {
            assert!(
                parse(bytes).await.is_err(),
                "{:?} parsed",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
