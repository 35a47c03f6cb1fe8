//! Length-prefixed frames: a 4-byte big-endian length, then a postcard body.
//!
//! The length is checked against the caller's limit before anything is allocated for the body, and
//! the body buffer then grows only as bytes arrive: a peer that announces a large frame and sends
//! little costs the node what it sent, not what it announced. A clean end of stream between frames
//! is `Ok(None)`; an end inside a frame, an oversized length or an undecodable body is an error that
//! closes only that stream.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};

/// Largest frame a node accepts from a client.
pub const MAX_CLIENT_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Largest frame a node accepts from a peer (an append batch or a snapshot chunk).
pub const MAX_PEER_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Largest key a client may write or read.
pub const MAX_KEY_BYTES: usize = 64 * 1024;

/// Largest frame a node accepts from a client whose certificate only reads: a read names one key,
/// or a scan prefix and the key it continues after, so nothing more is needed, and a read-only
/// client cannot make the node buffer write-sized frames.
pub const MAX_READ_REQUEST_BYTES: usize = 2 * MAX_KEY_BYTES + 1024;

/// The body buffer starts at most this large and grows as bytes arrive.
const INITIAL_BODY_CAPACITY: usize = 64 * 1024;

/// Encodes `value` as one frame: length prefix and body.
pub fn encode<T: Serialize>(value: &T, max_bytes: usize) -> Result<Vec<u8>> {
    let mut frame = Vec::new();
    encode_into(value, max_bytes, &mut frame)?;
    Ok(frame)
}

/// Appends `value`'s frame to `buffer`, so several frames go out in one write. On an error the
/// buffer is left empty.
pub fn encode_into<T: Serialize>(value: &T, max_bytes: usize, buffer: &mut Vec<u8>) -> Result<()> {
    let start = buffer.len();
    buffer.extend_from_slice(&[0u8; 4]);
    *buffer = postcard::to_extend(value, std::mem::take(buffer))?;
    let body_len = buffer.len() - start - 4;
    if body_len > max_bytes {
        buffer.clear();
        return Err(Error::Protocol(format!(
            "frame of {body_len} bytes exceeds the limit of {max_bytes} bytes"
        )));
    }
    let Ok(prefix) = u32::try_from(body_len) else {
        buffer.clear();
        return Err(Error::Protocol(format!(
            "frame of {body_len} bytes is too large"
        )));
    };
    buffer[start..start + 4].copy_from_slice(&prefix.to_be_bytes());
    Ok(())
}

/// Decodes a frame body (without its length prefix). Trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    let (value, rest) = postcard::take_from_bytes(body)?;
    if !rest.is_empty() {
        return Err(Error::Protocol(format!(
            "{} unexpected bytes after the message",
            rest.len()
        )));
    }
    Ok(value)
}

/// Reads one frame. `Ok(None)` on a clean end of stream before the frame began.
pub async fn read_frame<T, R>(reader: &mut R, max_bytes: usize) -> Result<Option<T>>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let Some(len) = read_length(reader).await? else {
        return Ok(None);
    };
    check_length(len, max_bytes)?;
    read_body(reader, len).await.map(Some)
}

/// Refuses a frame length above `max_bytes`.
pub fn check_length(len: usize, max_bytes: usize) -> Result<()> {
    if len > max_bytes {
        return Err(Error::Protocol(format!(
            "frame of {len} bytes exceeds the limit of {max_bytes} bytes"
        )));
    }
    Ok(())
}

/// Reads a frame's length prefix. `Ok(None)` on a clean end of stream before the frame began.
/// The caller checks the length ([`check_length`]) before it reads the body.
pub async fn read_length<R>(reader: &mut R) -> Result<Option<usize>>
where
    R: AsyncRead + Unpin,
{
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        let read = reader
            .read(&mut prefix[filled..])
            .await
            .map_err(|err| Error::Network(err.to_string()))?;
        if read == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(Error::Protocol("stream ended inside a frame header".into()));
        }
        filled += read;
    }
    Ok(Some(u32::from_be_bytes(prefix) as usize))
}

/// Reads and decodes a frame body of `len` bytes (already checked against its limit). The buffer
/// grows with the bytes received, never ahead of them by more than it already holds.
pub async fn read_body<T, R>(reader: &mut R, len: usize) -> Result<T>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut body = Vec::with_capacity(len.min(INITIAL_BODY_CAPACITY));
    let read = reader
        .take(len as u64)
        .read_to_end(&mut body)
        .await
        .map_err(|err| Error::Protocol(format!("stream ended inside a frame: {err}")))?;
    if read < len {
        return Err(Error::Protocol(format!(
            "stream ended inside a frame: {read} of {len} bytes"
        )));
    }
    decode(&body)
}

/// Writes one frame.
pub async fn write_frame<T, W>(writer: &mut W, value: &T, max_bytes: usize) -> Result<()>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let frame = encode(value, max_bytes)?;
    writer
        .write_all(&frame)
        .await
        .map_err(|err| Error::Network(err.to_string()))
}
