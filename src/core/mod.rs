//! The replication protocol as a deterministic state machine (DESIGN §2, §4, §5).
//!
//! [`Node`] performs no network I/O, reads no clock and draws randomness only from the seeded
//! generator it was built with. The I/O shell (`net`) and the simulator (`tests/simulation.rs`)
//! drive it through four entry points and collect what it wants done as [`Output`]s:
//!
//! - [`Node::step`]: a message from a peer;
//! - [`Node::tick`]: time has passed (`now` is milliseconds on the driver's monotonic clock);
//! - [`Node::request`]: a client request, answered later by an [`Output::Reply`];
//! - [`Node::flushed`]: the driver finished a flush that [`Node::flush_needed`] asked for.
//!
//! Writes go to [`crate::storage::Storage`] buffered; the driver performs the flushes (one per
//! batch, which is group commit) and reports them back, and only then does the node acknowledge
//! anything that promised durability.

mod node;
mod progress;

pub use node::{ClientToken, FlushTicket, Node, Options, Output, Timestamp};
