//! A minimal etcd v3 client over the JSON gateway that etcd 3.4 serves on its client port
//! (`POST /v3/kv/put`, `/v3/kv/range`, `/v3/maintenance/status`; keys and values in base64), on
//! the generator's own HTTP/1.1 connection ([`crate::http`]).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::Deserialize;

use replikv::{Error, Result};

use crate::http::HttpConnection;

/// One connection to an etcd member's client port.
pub struct EtcdConnection {
    http: HttpConnection,
}

/// The part of a range response the comparison reads.
#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    kvs: Vec<serde::de::IgnoredAny>,
}

/// The part of a status response that tells the leader.
#[derive(Deserialize)]
struct StatusResponse {
    header: StatusHeader,
    #[serde(default)]
    leader: String,
}

#[derive(Deserialize)]
struct StatusHeader {
    #[serde(default)]
    member_id: String,
}

impl EtcdConnection {
    pub async fn connect(addr: &str) -> Result<EtcdConnection> {
        let http = HttpConnection::connect(addr, None).await?;
        Ok(EtcdConnection { http })
    }

    /// `put key value`: acknowledged by etcd once committed by a majority (Raft).
    pub async fn put(&mut self, key: &[u8], value_base64: &str) -> Result<()> {
        let json = format!(
            r#"{{"key":"{}","value":"{value_base64}"}}"#,
            BASE64.encode(key)
        );
        self.post("/v3/kv/put", json.as_bytes()).await.map(|_| ())
    }

    /// A linearizable range read of one key (the gateway's default, `serializable: false`):
    /// whether it has a value.
    pub async fn get(&mut self, key: &[u8]) -> Result<bool> {
        let json = format!(r#"{{"key":"{}"}}"#, BASE64.encode(key));
        let body = self.post("/v3/kv/range", json.as_bytes()).await?;
        let response: RangeResponse = serde_json::from_slice(body)
            .map_err(|err| Error::Protocol(format!("etcd range response: {err}")))?;
        Ok(!response.kvs.is_empty())
    }

    /// Whether this member is the leader, by its own status.
    pub async fn is_leader(&mut self) -> Result<bool> {
        let body = self.post("/v3/maintenance/status", b"{}").await?;
        let status: StatusResponse = serde_json::from_slice(body)
            .map_err(|err| Error::Protocol(format!("etcd status response: {err}")))?;
        Ok(!status.leader.is_empty() && status.leader == status.header.member_id)
    }

    /// Sends one POST with a JSON body; the response body, if the status is 200.
    async fn post(&mut self, path: &str, json: &[u8]) -> Result<&[u8]> {
        match self
            .http
            .request("POST", path, "application/json", json)
            .await?
        {
            (200, body) => Ok(body),
            (status, body) => Err(Error::Unavailable(format!(
                "etcd answered {status} to {path}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))),
        }
    }
}

/// `value` in base64, as the gateway wants it (computed once per worker, not per request).
pub fn encode_value(value: &[u8]) -> String {
    BASE64.encode(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_and_status_bodies_decode() {
        let found: RangeResponse = serde_json::from_slice(
            br#"{"header":{},"kvs":[{"key":"YQ==","value":"Yg=="}],"count":"1"}"#,
        )
        .unwrap();
        assert_eq!(found.kvs.len(), 1);
        let missing: RangeResponse = serde_json::from_slice(br#"{"header":{}}"#).unwrap();
        assert!(missing.kvs.is_empty());
        let status: StatusResponse = serde_json::from_slice(
            br#"{"header":{"member_id":"331"},"version":"3.4.23","leader":"331"}"#,
        )
        .unwrap();
        assert_eq!(status.leader, status.header.member_id);
    }
}
