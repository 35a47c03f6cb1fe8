//! The JSON shapes of key-value answers, shared by `kvctl --json` and the HTTP door, so a script
//! reads the same fields from either.
//!
//! Keys and values are bytes: UTF-8 is shown as is and anything else as `0x` hex, with its
//! encoding named beside it.

use serde_json::json;

use crate::wire::client::{Change, ResponseMeta, WriteConcern, WriteResult};
use crate::wire::message::LogIndex;

/// Bytes as text: UTF-8 as is, anything else as `0x` hex. Returns the text and its encoding.
pub fn printable(bytes: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_string(), "utf8"),
        Err(_) => {
            let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
            (format!("0x{hex}"), "hex")
        }
    }
}

pub fn meta_json(meta: &ResponseMeta) -> serde_json::Value {
    json!({ "node_id": meta.node_id, "epoch": meta.epoch, "index": meta.index })
}

/// The JSON answer of `get`: the value and its version, or `found: false`.
pub fn get_json(
    key: &str,
    value: Option<&[u8]>,
    version: LogIndex,
    meta: &ResponseMeta,
) -> serde_json::Value {
    let (text, encoding) = match value {
        Some(bytes) => {
            let (text, encoding) = printable(bytes);
            (json!(text), json!(encoding))
        }
        None => (serde_json::Value::Null, serde_json::Value::Null),
    };
    json!({
        "key": key,
        "found": value.is_some(),
        "value": text,
        "encoding": encoding,
        "version": value.map(|_| version),
        "meta": meta_json(meta),
    })
}

/// The JSON answer of `scan`: every pair with the encoding of its key and value.
pub fn scan_json(pairs: &[(Vec<u8>, Vec<u8>)], meta: &ResponseMeta) -> serde_json::Value {
    json!({ "pairs": pairs_json(pairs), "meta": meta_json(meta) })
}

/// Pairs as a JSON array, each with the encoding of its key and value.
pub fn pairs_json(pairs: &[(Vec<u8>, Vec<u8>)]) -> serde_json::Value {
    pairs
        .iter()
        .map(|(key, value)| {
            let (key, key_encoding) = printable(key);
            let (value, value_encoding) = printable(value);
            json!({
                "key": key, "key_encoding": key_encoding,
                "value": value, "value_encoding": value_encoding,
            })
        })
        .collect()
}

/// The JSON answer of `put` and `delete`.
pub fn write_json(
    key: &str,
    result: &WriteResult,
    write_concern: WriteConcern,
    meta: &ResponseMeta,
) -> serde_json::Value {
    json!({
        "key": key,
        "index": result.index,
        "existed": result.existed,
        "write_concern": write_concern.to_string(),
        "meta": meta_json(meta),
    })
}

/// The JSON of one watched change (`kvctl watch --json`, one object per line): `op` is `put` or
/// `delete`, `index` the log index that made it, `epoch` the epoch it was appended in.
pub fn change_json(change: &Change) -> serde_json::Value {
    let (key, key_encoding) = printable(&change.key);
    let (op, value, value_encoding) = match &change.value {
        Some(bytes) => {
            let (text, encoding) = printable(bytes);
            ("put", json!(text), json!(encoding))
        }
        None => ("delete", serde_json::Value::Null, serde_json::Value::Null),
    };
    json!({
        "op": op,
        "key": key, "key_encoding": key_encoding,
        "value": value, "value_encoding": value_encoding,
        "index": change.index,
        "epoch": change.epoch,
    })
}
