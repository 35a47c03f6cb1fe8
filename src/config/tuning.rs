//! Every tunable and every default of the crate, each declared once.
//!
//! The protocol's tunables are declared in the one list of the `tunables!` macro below, with their
//! type, default and doc. From it come [`Tuning`] (through clap, the `kvnode` flags), the keys of
//! `node.toml` (the fields of `NodeConfig`, declared from the same list), the merge of flags over
//! a file ([`Tuning::overridden_by`]), and the [`Options`] the core runs with
//! ([`Tuning::options`], `Options::default()`). Adding a tunable is one entry in that list (and
//! its field in `core::Options`).
//!
//! The other constants are fixed sizes and timings of the I/O shell and of clients: not
//! configurable, but kept here so that every default can be found, and compared, in one place.
//!
//! Invariants:
//! - A tunable is `None` when neither the file nor a flag gave it; the default is applied only in
//!   [`Tuning::options`], so a file written back (`kvnode dev`) holds only what was given.
//! - The TOML keys and flag names are the field names (flags in kebab-case); they are the user's
//!   interface and must not change.

use std::time::Duration;

use crate::core::Options;
use crate::error::{Error, Result};
use crate::wire::frame::{MAX_CLIENT_FRAME_BYTES, MAX_PEER_FRAME_BYTES};

/// The one list of the protocol's tunables, handed to the macro `$then`, which declares
/// something from it. For each tunable: its doc (also the help of its flag), its name (the TOML
/// key, the flag, the `core::Options` field), its type, its default, and the value name its flag
/// shows. A default may use the values of the tunables listed before it.
macro_rules! tunables {
    ($then:ident) => {
        $then! {
            /// How often the primary sends heartbeats.
            heartbeat_interval_ms: u64 = 100, flag "MS";
            /// Silence after which a backup elects and a primary without a majority steps down
            /// (default 3 heartbeat intervals).
            failure_timeout_ms: u64 =
                heartbeat_interval_ms.saturating_mul(FAILURE_TIMEOUT_HEARTBEATS), flag "MS";
            /// Random extra per node on the election timer, so that nodes rarely start elections
            /// together.
            failure_jitter_ms: u64 = 150, flag "MS";
            /// A voter behind for this long leaves the in-sync set (w=all).
            replica_lag_timeout_ms: u64 = 1000, flag "MS";
            /// Largest encoded size of the entries of one append message, in bytes.
            max_append_bytes: usize = 1024 * 1024, flag "BYTES";
            /// Most entries in flight to one member before the primary waits for acks.
            max_inflight_entries: u64 = 8192, flag "N";
            // Compaction: the state is the snapshot (docs/ARCHITECTURE.md, membership, compaction
            // and snapshots). Larger keeps more history for members that were away a while (a log
            // catch-up is cheaper than a snapshot); smaller bounds the disk the log takes.
            /// Log bytes kept before the applied prefix is compacted (default 64 MiB); a member
            /// that falls further behind is brought back with a snapshot.
            log_retention_bytes: u64 = 64 * 1024 * 1024, flag "BYTES";
            // Clock drift: the read lease rests on other nodes' timers (docs/ARCHITECTURE.md,
            // reads). Linux's monotonic clock is slewed by NTP: ntpd by at most 500 ppm, chrony
            // by up to 83,333 ppm (its default maxslewrate), so the default covers both.
            /// The most any node's clock may run fast or slow against true time, in parts per
            /// million (default 100,000: 10%). The read lease is failure_timeout_ms x (1 - drift)
            /// / (1 + drift): 245 ms of the default 300.
            max_clock_drift_ppm: u64 = 100_000, flag "PPM";
            // Scans are paged (docs/PROTOCOL.md, client protocol): a page is read inside the
            // event loop, so its size bounds the pause it costs heartbeats.
            /// Most pairs in one page of a scan, whatever limit the client asks for.
            max_scan_page_pairs: u32 = 1000, flag "N";
            /// Most bytes of keys and values in one page of a scan (default 1 MiB); a single
            /// larger pair is served alone.
            max_scan_page_bytes: usize = 1024 * 1024, flag "BYTES";
            // Sessions (docs/ARCHITECTURE.md, idempotency): the window within which a retried
            // write is recognised. Longer than any client retries a request, short enough that
            // the sessions table of many short-lived clients stays small.
            /// A client session idle this long on the primary is expired and replicated as such
            /// (default 10 minutes); a retry of its last write after that is applied as a new one.
            session_ttl_ms: u64 = 10 * 60 * 1000, flag "MS";
        }
    };
}
pub(crate) use tunables;

/// Declares [`Tuning`] from the list of [`tunables`].
macro_rules! declare_tuning {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident: $type:ty = $default:expr, flag $value_name:literal;
    )*) => {
        /// The protocol's tunables as flags or a file give them, each one optional: the `kvnode`
        /// flags, and the keys of `node.toml` (see [`super::NodeConfig::tuning`]).
        #[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
        pub struct Tuning {
            $(
                $(#[doc = $doc])*
                #[arg(long, value_name = $value_name)]
                pub $name: Option<$type>,
            )*
        }

        impl Tuning {
            /// These values, with each one `overrides` gives replacing this one.
            pub fn overridden_by(self, overrides: Tuning) -> Tuning {
                Tuning {
                    $($name: overrides.$name.or(self.$name),)*
                }
            }

            /// The options the core runs with: each value given, and the default of the others.
            pub fn options(&self) -> Options {
                $(
                    let $name: $type = match self.$name {
                        Some(value) => value,
                        None => $default,
                    };
                )*
                Options { $($name,)* }
            }
        }
    };
}

tunables!(declare_tuning);

impl Default for Options {
    fn default() -> Self {
        Tuning::default().options()
    }
}

/// How many heartbeat intervals of silence make a failure, when only the heartbeat interval is
/// given (docs/ARCHITECTURE.md, roles and elections).
pub const FAILURE_TIMEOUT_HEARTBEATS: u64 = 3;

/// Largest allowed `max_append_bytes`: an append may exceed it by one entry (at most a client
/// frame), and the whole message must still fit in a peer frame.
pub const MAX_APPEND_BYTES_LIMIT: usize = MAX_PEER_FRAME_BYTES - MAX_CLIENT_FRAME_BYTES - 64 * 1024;

/// Largest allowed `max_scan_page_bytes`: a page's pairs, with the response's envelope, must fit
/// a client frame.
pub const MAX_SCAN_PAGE_BYTES_LIMIT: usize = MAX_CLIENT_FRAME_BYTES - 64 * 1024;

/// Shortest allowed `session_ttl_ms`: the longest a request may wait on a node
/// ([`crate::core::MAX_REQUEST_TIMEOUT_MS`]), so a session outlives any request its client may
/// still be retrying.
pub const MIN_SESSION_TTL_MS: u64 = crate::core::MAX_REQUEST_TIMEOUT_MS;

/// Largest allowed `max_clock_drift_ppm` (50%): beyond it the lease is under a third of the
/// failure timeout, and clocks that bad are broken rather than drifting.
pub const MAX_CLOCK_DRIFT_PPM: u64 = 500_000;

/// Applied log entries a node keeps in memory for its watchers (the watch hub's ring): a live
/// watcher that falls further behind than the ring is cut off ([`crate::error::Error::WatchLagging`])
/// and its client resumes from its last index, catching up from the stored log.
pub const WATCH_RING_ENTRIES: usize = 4096;

/// Bytes of keys and values the watch ring holds at most; the oldest entries leave first.
pub const WATCH_RING_BYTES: usize = 32 * 1024 * 1024;

/// Bytes of log entries one read of the stored log takes, for the hub or a catching-up watcher.
pub const WATCH_READ_BYTES: usize = 1024 * 1024;

/// A watch door writes the events that are ready at once, in one stream write of about this many
/// bytes at most (a single larger event goes alone).
pub const WATCH_WRITE_BYTES: usize = 64 * 1024;

/// An idle watch is told the index it has seen up to this often (progress notification).
pub const WATCH_PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// Most bytes of values a watch with `initial` lists (held while the listing is brought to one
/// index); a larger prefix is refused: list it with a scan and watch from the scan's index.
pub const WATCH_MAX_INITIAL_BYTES: usize = 64 * 1024 * 1024;

/// Checks that the protocol can work with `options`. The error names the tunable at fault.
pub fn check_options(options: &Options) -> Result<()> {
    if options.heartbeat_interval_ms == 0 {
        return Err(Error::Config(
            "heartbeat_interval_ms must be at least 1".into(),
        ));
    }
    if options.heartbeat_interval_ms >= options.failure_timeout_ms {
        return Err(Error::Config(format!(
            "heartbeat_interval_ms ({}) must be less than failure_timeout_ms ({}): \
             a failure is several missed heartbeats (the default is {FAILURE_TIMEOUT_HEARTBEATS})",
            options.heartbeat_interval_ms, options.failure_timeout_ms
        )));
    }
    if options.max_append_bytes == 0 || options.max_append_bytes > MAX_APPEND_BYTES_LIMIT {
        return Err(Error::Config(format!(
            "max_append_bytes ({}) must be between 1 and {MAX_APPEND_BYTES_LIMIT}",
            options.max_append_bytes
        )));
    }
    if options.max_clock_drift_ppm > MAX_CLOCK_DRIFT_PPM {
        return Err(Error::Config(format!(
            "max_clock_drift_ppm ({}) must be at most {MAX_CLOCK_DRIFT_PPM}: the read lease \
             would be under a third of failure_timeout_ms",
            options.max_clock_drift_ppm
        )));
    }
    if options.max_scan_page_pairs == 0 {
        return Err(Error::Config(
            "max_scan_page_pairs must be at least 1".into(),
        ));
    }
    if options.max_scan_page_bytes == 0 || options.max_scan_page_bytes > MAX_SCAN_PAGE_BYTES_LIMIT {
        return Err(Error::Config(format!(
            "max_scan_page_bytes ({}) must be between 1 and {MAX_SCAN_PAGE_BYTES_LIMIT}: a page \
             must fit one client frame",
            options.max_scan_page_bytes
        )));
    }
    if options.session_ttl_ms < MIN_SESSION_TTL_MS {
        return Err(Error::Config(format!(
            "session_ttl_ms ({}) must be at least {MIN_SESSION_TTL_MS}: a session must outlive \
             every request its client may still retry",
            options.session_ttl_ms
        )));
    }
    if options.max_inflight_entries == 0 {
        return Err(Error::Config(
            "max_inflight_entries must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Default log filter when neither `RUST_LOG` nor the config sets one.
pub const DEFAULT_LOG_LEVEL: &str = "info";

// --- transport: every connection, node or client ---

/// How often an idle connection is pinged, so NAT state and the peer's idle timer stay fresh.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a connection may hear nothing before it is declared dead: several keep-alive
/// intervals, so one lost ping does not drop a healthy peer.
///
/// 5 s, for nodes and clients alike. It used to be 10 s in the node's transport and 5 s in the
/// client's; QUIC takes the smaller of the two ends' values, so client connections already ran
/// with 5 s, and that is what lets a client blocked on a crashed node move on within its default
/// request timeout. Between nodes the shorter value changes little: a link that sends and hears
/// nothing back is redialled after [`LINK_SILENCE_MS`] anyway.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Concurrent bidirectional streams a peer may open: one per in-flight request, and many client
/// sessions may share one connection.
pub const MAX_CONCURRENT_BIDI_STREAMS: u32 = 1024;

// --- the node's I/O shell (`net`) ---

/// How often the event loop calls `Node::tick`. Well below the heartbeat interval so timers fire
/// close to when they are due.
pub const TICK_INTERVAL_MS: u64 = 10;

/// Capacity of the event loop's inbox of peer messages. When it is full, stream readers wait,
/// which pushes back on the peer through QUIC flow control.
pub const PEER_INBOX_CAPACITY: usize = 4096;

/// Capacity of the event loop's inbox of client requests. Separate from the peers' inbox, so a
/// flood of requests never delays heartbeats and votes; when full, sessions wait.
pub const CLIENT_INBOX_CAPACITY: usize = 4096;

/// Most messages (and, separately, requests) the event loop takes in one batch before it
/// dispatches outputs, so a flood cannot starve ticks and flushes.
pub const MAX_EVENTS_PER_BATCH: usize = 1024;

/// Capacity of each peer's heartbeat/election queue. Older heartbeats are worthless, so the queue
/// is short; a full queue drops the message (the protocol tolerates loss).
pub const PEER_HEARTBEAT_QUEUE_CAPACITY: usize = 64;

/// Capacity of each peer's replication queue, in messages (each at most `max_append_bytes`).
pub const PEER_REPLICATION_QUEUE_CAPACITY: usize = 256;

/// Capacity of each peer's resync queue, in messages: catch-up appends read from storage and
/// snapshot chunks (each at most about `max_append_bytes`). A resync has its own queue and
/// stream, so a large transfer never delays heartbeats or live replication; the primary's flow
/// control keeps only a few of these in flight, and a full queue drops (they are resent).
pub const PEER_RESYNC_QUEUE_CAPACITY: usize = 32;

/// Capacity of the event loop's inbox of resync messages from peers. Separate from
/// [`PEER_INBOX_CAPACITY`], so a member being caught up still handles heartbeats and live appends
/// at once; when full, the resync stream's reader waits, which pushes back through QUIC.
pub const PEER_RESYNC_INBOX_CAPACITY: usize = 64;

/// Most resync messages the event loop takes in one batch, after everything live. Each may carry
/// a megabyte of entries to append and apply (a good part of a heartbeat interval on a small
/// machine), so one per pass keeps heartbeats, acks and flushes on time while a transfer runs.
pub const MAX_RESYNC_EVENTS_PER_BATCH: usize = 1;

/// An event-loop pass that runs this long is logged as a warning: a default heartbeat interval,
/// a third of the default failure timeout, and far above a normal pass (under a few
/// milliseconds; docs/BENCHMARKS.md, "Session 12").
pub const SLOW_PASS_WARNING_MS: u64 = 100;

/// First delay before redialling a peer after a failure; doubled up to the maximum.
pub const RECONNECT_BACKOFF_MIN_MS: u64 = 50;

/// Largest delay between two dials of an unreachable peer.
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 1000;

/// How long a dial (QUIC and TLS handshake) to a peer may take before it is abandoned and
/// retried. Below quinn's first retransmission (about 1 s with its initial RTT estimate), so a
/// dial whose first packet was lost (the peer was still starting) is retried sooner. Sized for
/// LAN round trips.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 500;

/// A link that keeps sending but hears nothing back from its peer for this long is redialled:
/// after a partition heals, QUIC's loss-recovery backoff can leave such a connection dead for
/// tens of seconds.
pub const LINK_SILENCE_MS: u64 = 2_000;

/// How long shutdown waits for the node's tasks to finish.
pub const SHUTDOWN_GRACE_MS: u64 = 2000;

/// How long shutdown waits for closed connections to drain. The close frames go out at once;
/// this only gives them a chance to be delivered (QUIC's full draining period can be seconds).
pub const SHUTDOWN_DRAIN_MS: u64 = 500;

/// First pause before a joining node (`kvnode --join`) retries its registration; doubled up to
/// [`JOIN_RETRY_MAX_MS`].
pub const JOIN_RETRY_MIN_MS: u64 = 200;

/// Longest pause between two registration attempts of a joining node.
pub const JOIN_RETRY_MAX_MS: u64 = 5000;

/// Deadline of one registration attempt, redirects and the commit of the change included.
pub const JOIN_ATTEMPT_TIMEOUT_MS: u64 = 10_000;

// --- clients ---

/// Default deadline of a client operation, retries included (`timeout_ms` in `client.toml`).
pub const CLIENT_TIMEOUT_MS: u64 = 5000;

/// First pause between two attempts of a client operation; it doubles up to
/// [`CLIENT_MAX_BACKOFF`].
pub const CLIENT_FIRST_BACKOFF: Duration = Duration::from_millis(20);

/// Longest pause between two attempts of a client operation.
pub const CLIENT_MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Longest wait of a client for a QUIC handshake. A node that is down does not answer at all
/// (loopback UDP gives no "connection refused"), so without this bound one dead node would eat
/// the deadline.
pub const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long after a failed connect a client skips that address when another candidate exists.
pub const CLIENT_DOWN_PENALTY: Duration = Duration::from_secs(1);

/// Extra time a client's write waits beyond the timeout it gives the node, so that the node's own
/// "write concern not met" answer arrives instead of a client-side timeout.
pub const CLIENT_WRITE_ANSWER_GRACE: Duration = Duration::from_secs(1);

/// Longest wait of a client for one node's answer to a read before the read is tried elsewhere.
pub const CLIENT_READ_ATTEMPT_LIMIT: Duration = Duration::from_secs(1);

// --- `kvnode dev` ---

/// How long `kvnode dev` waits for its nodes to stop after SIGTERM before it kills them.
pub const DEV_STOP_GRACE_MS: u64 = 5000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        assert_eq!(
            Options::default(),
            Options {
                heartbeat_interval_ms: 100,
                failure_timeout_ms: 300,
                failure_jitter_ms: 150,
                replica_lag_timeout_ms: 1000,
                max_append_bytes: 1024 * 1024,
                max_inflight_entries: 8192,
                log_retention_bytes: 64 * 1024 * 1024,
                max_clock_drift_ppm: 100_000,
                max_scan_page_pairs: 1000,
                max_scan_page_bytes: 1024 * 1024,
                session_ttl_ms: 600_000,
            }
        );
        check_options(&Options::default()).unwrap();
        assert_eq!(Options::default().lease_ms(), 245);
    }

    #[test]
    fn the_lease_shrinks_with_the_drift_bound_and_is_checked() {
        let mut options = Options {
            max_clock_drift_ppm: 0,
            ..Options::default()
        };
        assert_eq!(options.lease_ms(), options.failure_timeout_ms);
        options.max_clock_drift_ppm = 1_000_000;
        assert_eq!(options.lease_ms(), 0);
        let message = check_options(&options).unwrap_err().to_string();
        assert!(message.contains("max_clock_drift_ppm"), "{message}");
    }

    #[test]
    fn scan_pages_and_session_ttl_are_checked() {
        let checked = |change: fn(&mut Options)| {
            let mut options = Options::default();
            change(&mut options);
            check_options(&options).map_err(|err| err.to_string())
        };
        let message = checked(|o| o.max_scan_page_bytes = MAX_SCAN_PAGE_BYTES_LIMIT + 1);
        assert!(message.unwrap_err().contains("max_scan_page_bytes"));
        let message = checked(|o| o.max_scan_page_pairs = 0);
        assert!(message.unwrap_err().contains("max_scan_page_pairs"));
        let message = checked(|o| o.session_ttl_ms = MIN_SESSION_TTL_MS - 1);
        assert!(message.unwrap_err().contains("session_ttl_ms"));
        assert!(checked(|o| o.session_ttl_ms = MIN_SESSION_TTL_MS).is_ok());
    }

    #[test]
    fn failure_timeout_follows_the_heartbeat() {
        let mut tuning = Tuning {
            heartbeat_interval_ms: Some(50),
            ..Tuning::default()
        };
        assert_eq!(
            tuning.options().failure_timeout_ms,
            50 * FAILURE_TIMEOUT_HEARTBEATS
        );
        tuning.failure_timeout_ms = Some(400);
        assert_eq!(tuning.options().failure_timeout_ms, 400);
    }

    #[test]
    fn overrides_replace_only_what_they_give() {
        let file = Tuning {
            heartbeat_interval_ms: Some(20),
            max_inflight_entries: Some(7),
            ..Tuning::default()
        };
        let flags = Tuning {
            max_inflight_entries: Some(9),
            log_retention_bytes: Some(65536),
            ..Tuning::default()
        };
        assert_eq!(
            file.overridden_by(flags),
            Tuning {
                heartbeat_interval_ms: Some(20),
                max_inflight_entries: Some(9),
                log_retention_bytes: Some(65536),
                ..Tuning::default()
            }
        );
    }
}
