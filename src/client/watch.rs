//! [`WatchStream`]: a change feed that survives disconnects and failovers.
//!
//! A watch is one QUIC stream to one node, answered with [`WatchEvent`] frames. The stream
//! remembers the last index it delivered (a change, a progress notification or the end of the
//! initial listing) and, when the node goes away, cuts the watcher off as lagging, or stops
//! answering, it opens the watch again on another node (any node serves watches, from its applied
//! log) from that index + 1.
//!
//! Invariants:
//! - Delivered changes come in index order, each once (no duplicate), whatever a node sends. An
//!   entry that changes several keys (a batch) gives several changes at one index, in the entry's
//!   order; a watch cut in the middle of them resumes at that index and skips, on the new stream,
//!   as many of its changes as were handed out already.
//! - Nothing is skipped: a node serves every committed change from the index asked for, or ends
//!   with `Compacted`, which is returned once every known node has answered it.
//! - The initial listing is handed out whole, once: pages are collected until the last one, and
//!   a watch cut during the listing lists again.

use std::time::{Duration, Instant};

use rand::Rng;
use tokio::io::BufReader;

use super::{candidates, jittered, lock, next_backoff, rotate, Shared};
use crate::config::tuning::{CLIENT_FIRST_BACKOFF, WATCH_PROGRESS_INTERVAL, WATCH_WRITE_BYTES};
use crate::error::{Error, Result};
use crate::net::tls::connection_error;
use crate::net::WATCH_LAGGING_CODE;
use crate::wire::client::{Request, WatchEvent};
use crate::wire::frame::{read_frame, write_frame, MAX_CLIENT_FRAME_BYTES};
use crate::wire::message::LogIndex;

/// A node that sends nothing for this long (it sends a progress notification every
/// [`WATCH_PROGRESS_INTERVAL`] when idle) is taken for gone, and the watch moves on.
const SILENT_NODE_LIMIT: Duration = WATCH_PROGRESS_INTERVAL.saturating_mul(3);

/// A resumable change feed ([`super::Client::watch`]). Call [`WatchStream::next`] in a loop.
pub struct WatchStream {
    shared: std::sync::Arc<Shared>,
    prefix: Vec<u8>,
    /// Where the first attempt starts (`None`: after what the node has applied).
    from: Option<LogIndex>,
    /// The initial listing is still owed.
    initial: bool,
    /// What has been handed out: where the watch resumes.
    delivered: Delivered,
    /// Pages of the initial listing received so far.
    listing: Vec<(Vec<u8>, Vec<u8>)>,
    /// The open watch: its node, and the stream's two halves. Reads are buffered, so a burst of
    /// small change frames costs one read of the QUIC stream, not two per frame.
    stream: Option<(String, quinn::SendStream, BufReader<quinn::RecvStream>)>,
    attempt_number: usize,
    /// How long the watch keeps trying when no node serves it.
    timeout: Duration,
}

impl WatchStream {
    pub(super) fn new(
        shared: std::sync::Arc<Shared>,
        prefix: Vec<u8>,
        from: Option<LogIndex>,
        initial: bool,
        timeout: Duration,
    ) -> WatchStream {
        WatchStream {
            shared,
            prefix,
            from,
            initial,
            delivered: Delivered::default(),
            listing: Vec::new(),
            stream: None,
            attempt_number: rand::thread_rng().gen(),
            timeout,
        }
    }

    /// The last index delivered (every change up to it has been handed out), once known.
    pub fn position(&self) -> Option<LogIndex> {
        self.delivered.position
    }

    /// The address of the node serving the watch now, if any.
    pub fn node(&self) -> Option<&str> {
        self.stream.as_ref().map(|(addr, _, _)| addr.as_str())
    }

    /// The next event: a [`WatchEvent::Change`], a [`WatchEvent::Progress`], or once, first, the
    /// whole initial listing as one [`WatchEvent::Initial`]. Resumes on another node by itself;
    /// an error ends the watch (`Compacted` from every node, a refusal, or no node serving it
    /// for the client's timeout).
    pub async fn next(&mut self) -> Result<WatchEvent> {
        let mut backoff = CLIENT_FIRST_BACKOFF;
        let mut failing_since: Option<Instant> = None;
        let mut compacted_by = 0usize;
        loop {
            let error = match self.receive().await {
                Ok(Some(event)) => return Ok(event),
                Ok(None) => continue,
                Err(error) => error,
            };
            if let Some((_, mut send, _)) = self.stream.take() {
                let _ = send.reset(0u32.into());
            }
            self.listing.clear();
            let nodes = self.pool().len().max(1);
            match &error {
                Error::Compacted { .. } if compacted_by + 1 < nodes => compacted_by += 1,
                _ if error.is_transient() => {}
                _ => return Err(error),
            }
            tracing::debug!(%error, position = ?self.delivered.position, "watch interrupted; resuming");
            let started = *failing_since.get_or_insert_with(Instant::now);
            if started.elapsed() >= self.timeout {
                return Err(error);
            }
            let pause = jittered(backoff, rand::thread_rng().gen());
            tokio::time::sleep(pause).await;
            backoff = next_backoff(backoff);
        }
    }

    /// One frame, opening the stream first if needed. `Ok(None)`: a frame that is not handed out
    /// (a page of the listing, a change already delivered).
    async fn receive(&mut self) -> Result<Option<WatchEvent>> {
        if self.stream.is_none() {
            self.open().await?;
        }
        let Some((addr, _, recv)) = self.stream.as_mut() else {
            return Ok(None);
        };
        let read = tokio::time::timeout(
            SILENT_NODE_LIMIT,
            read_frame::<WatchEvent, _>(recv, MAX_CLIENT_FRAME_BYTES),
        )
        .await;
        let event = match read {
            Err(_) => {
                return Err(Error::Network(format!(
                    "{addr} sent nothing for {} s",
                    SILENT_NODE_LIMIT.as_secs()
                )))
            }
            Ok(Ok(Some(event))) => event,
            Ok(Ok(None)) => return Err(Error::Network(format!("{addr} ended the watch stream"))),
            Ok(Err(error)) => {
                let reset = tokio::time::timeout(
                    Duration::from_millis(10),
                    recv.get_mut().received_reset(),
                );
                return Err(match reset.await {
                    Ok(Ok(Some(code))) if code == WATCH_LAGGING_CODE => Error::WatchLagging {
                        next: self.delivered.position.map_or(0, |index| index + 1),
                    },
                    _ => error,
                });
            }
        };
        self.accept(event)
    }

    /// What to hand out for `event`, keeping the position.
    fn accept(&mut self, event: WatchEvent) -> Result<Option<WatchEvent>> {
        match event {
            WatchEvent::End(error) => Err(error),
            WatchEvent::Initial { pairs, index, more } => {
                self.listing.extend(pairs);
                if more || !self.initial {
                    return Ok(None);
                }
                self.initial = false;
                self.delivered.listed(index);
                Ok(Some(WatchEvent::Initial {
                    pairs: std::mem::take(&mut self.listing),
                    index,
                    more: false,
                }))
            }
            // Progress before the listing is complete says nothing the listing will not.
            WatchEvent::Progress { .. } if self.initial => Ok(None),
            WatchEvent::Progress { index } => Ok(self
                .delivered
                .progress(index)
                .then_some(WatchEvent::Progress { index })),
            WatchEvent::Change(change) => Ok(self
                .delivered
                .change(change.index)
                .then_some(WatchEvent::Change(change))),
        }
    }

    /// The nodes a watch may go to: every known one, primary or not.
    fn pool(&self) -> Vec<String> {
        let topology = lock(&self.shared.topology);
        let down = lock(&self.shared.down_until);
        candidates(&self.shared.seeds, &topology, false, &down, Instant::now())
    }

    /// Opens the watch on the next node in rotation, from the position + 1.
    async fn open(&mut self) -> Result<()> {
        self.attempt_number = self.attempt_number.wrapping_add(1);
        let addr = rotate(&self.pool(), self.attempt_number);
        let give_up_at = Instant::now() + self.timeout;
        let connection = self.shared.connection(&addr, give_up_at).await?;
        let (mut send, recv) = connection
            .open_bi()
            .await
            .map_err(|err| connection_error(&addr, &err))?;
        let request = Request::Watch {
            prefix: self.prefix.clone(),
            from: self.delivered.position.map(|index| index + 1).or(self.from),
            initial: self.initial,
        };
        write_frame(&mut send, &request, MAX_CLIENT_FRAME_BYTES).await?;
        tracing::debug!(%addr, from = ?request_from(&request), "watching");
        let recv = BufReader::with_capacity(WATCH_WRITE_BYTES, recv);
        self.stream = Some((addr, send, recv));
        self.delivered.stream_opened();
        Ok(())
    }
}

/// What a watch has handed out, so that a resumed one hands out each change once: the complete
/// indexes, and how far into the next one it got (an entry's changes share its index).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Delivered {
    /// Every change up to this index has been handed out; the watch resumes after it.
    position: Option<LogIndex>,
    /// Changes at `position + 1` handed out already: that entry was handed out in part.
    taken: usize,
    /// On the open stream: the index of the last change received, and how many at it.
    on_stream: (LogIndex, usize),
}

impl Delivered {
    /// A new stream opens, from `position + 1`.
    fn stream_opened(&mut self) {
        self.on_stream = (0, 0);
    }

    /// The initial listing, complete at `index`.
    fn listed(&mut self, index: LogIndex) {
        self.position = Some(index);
        self.taken = 0;
    }

    /// A progress notification: every change up to `index` was sent. Whether to hand it out.
    fn progress(&mut self, index: LogIndex) -> bool {
        if self.position.is_some_and(|position| index < position) {
            return false;
        }
        if self.position != Some(index) {
            self.position = Some(index);
            self.taken = 0;
        }
        true
    }

    /// A change at `index` arrived on the open stream. Whether to hand it out: not if it was
    /// handed out before (a resumed stream resends the entry it stopped in).
    fn change(&mut self, index: LogIndex) -> bool {
        let on_stream = match self.on_stream {
            (at, count) if at == index => count + 1,
            _ => 1,
        };
        self.on_stream = (index, on_stream);
        if self.position.is_some_and(|position| index <= position) {
            return false;
        }
        let partial = self.position.map(|position| position + 1);
        if self.taken > 0 && partial == Some(index) {
            if on_stream <= self.taken {
                return false;
            }
            self.taken += 1;
        } else {
            // A later index: every change before it has been handed out.
            self.position = Some(index.saturating_sub(1));
            self.taken = 1;
        }
        true
    }
}

fn request_from(request: &Request) -> Option<LogIndex> {
    match request {
        Request::Watch { from, .. } => *from,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_cut_inside_an_entry_resumes_there_without_a_duplicate_or_a_gap() {
        let mut delivered = Delivered::default();
        delivered.stream_opened();
        assert!(delivered.progress(4));
        assert!(delivered.change(5));
        // Entry 6 changes three keys; the stream breaks after two of them.
        assert!(delivered.change(6));
        assert!(delivered.change(6));
        assert_eq!(delivered.position, Some(5), "entry 6 is not complete");
        // The resumed stream starts at 6 and sends its three changes again, then entry 7.
        delivered.stream_opened();
        let handed_out: Vec<bool> = [6, 6, 6, 7].map(|index| delivered.change(index)).to_vec();
        assert_eq!(handed_out, [false, false, true, true]);
        assert_eq!(delivered.position, Some(6));
        // A node that sends an older change or progress again hands out nothing.
        assert!(!delivered.change(5));
        assert!(!delivered.progress(3));
        assert!(delivered.progress(9));
        assert_eq!((delivered.position, delivered.taken), (Some(9), 0));
    }

    #[test]
    fn changes_of_one_entry_on_one_stream_are_all_handed_out() {
        let mut delivered = Delivered::default();
        delivered.stream_opened();
        assert!([3, 3, 3, 4, 4].iter().all(|&index| delivered.change(index)));
        assert_eq!((delivered.position, delivered.taken), (Some(3), 2));
    }
}
