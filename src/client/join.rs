//! Joining a running cluster (`kvnode --join`): a new node asks the cluster, as a client, to add
//! it.
//!
//! The node starts knowing only itself, as a learner, and serves both ports at once; meanwhile
//! [`register`] asks the cluster to add it, through the client library and with the node's own
//! certificate (the client port lets a node certificate add that node itself, and nothing else).
//! Any member may be contacted: one that is not the primary "forwards" the request by answering
//! `NotPrimary` with the primary's address, and the client follows the redirect. Attempts are
//! retried with backoff until one succeeds (no primary yet, or another membership change being
//! committed, only delay it). The primary then adds the node as a learner, dials it and streams it
//! the log (or a snapshot, where the log has been compacted), and makes it a voter once it has
//! caught up. A refusal (wrong certificate, the id already taken with other addresses) is returned
//! and stops the node with the reason.
//!
//! This lives in the client library, not in the node's server: the server only decides whether a
//! node must register and is handed this function by its caller, so `net` never reaches up to
//! `client`.

use std::future::Future;
use std::time::Duration;

use tracing::info;

use crate::certs::TlsFiles;
use crate::client::{Client, ClientOptions};
use crate::config::tuning::{JOIN_ATTEMPT_TIMEOUT_MS, JOIN_RETRY_MAX_MS, JOIN_RETRY_MIN_MS};
use crate::error::{Error, ErrorKind, Result};
use crate::wire::message::Member;

/// Registers `own` with the cluster through the client addresses in `through`, authenticating
/// with `files`, retrying with capped exponential backoff until it is a member or `stop`
/// resolves (both `Ok`). Fails only when the cluster refuses: no retry would change that answer.
pub async fn register(
    through: Vec<String>,
    files: TlsFiles,
    own: Member,
    stop: impl Future<Output = ()>,
) -> Result<()> {
    let options = ClientOptions {
        timeout: Duration::from_millis(JOIN_ATTEMPT_TIMEOUT_MS),
        ..ClientOptions::default()
    };
    let client = Client::with_tls(through.clone(), &files, options)?;
    let through = through.join(", ");
    info!(%through, "asking the cluster to add this node as a learner");
    tokio::pin!(stop);
    let mut pause = Duration::from_millis(JOIN_RETRY_MIN_MS);
    let mut attempt = 1u64;
    let outcome = loop {
        let answer = tokio::select! {
            answer = client.add_member(own.clone()) => answer,
            () = &mut stop => break Ok(()),
        };
        match answer {
            Ok((result, meta)) => {
                info!(
                    primary = meta.node_id,
                    epoch = meta.epoch,
                    index = result.index,
                    already_member = result.existed,
                    "registered with the cluster: the primary streams this node the log and makes it a voter once it has caught up"
                );
                break Ok(());
            }
            Err(err) if matches!(err.kind(), ErrorKind::Refused | ErrorKind::InvalidRequest) => {
                break Err(Error::Refused(format!(
                    "cannot join through {through}: {err}"
                )));
            }
            Err(err) => info!(
                attempt,
                %err,
                retry_in_ms = pause.as_millis() as u64,
                "not registered yet (no primary reachable, or another membership change is being committed); retrying"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            () = &mut stop => break Ok(()),
        }
        pause = (pause * 2).min(Duration::from_millis(JOIN_RETRY_MAX_MS));
        attempt += 1;
    };
    client.close().await;
    outcome
}
