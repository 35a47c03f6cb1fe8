//! The watch hub: ordered change feeds served from a node's applied log, off the event loop.
//!
//! The event loop publishes the node's applied index after every pass ([`NodeView`]). The hub's
//! feeder task reads the entries newly applied from the stored log, once for every watcher, and
//! keeps the most recent ones in a bounded ring. A [`Watcher`] delivers the changes under its
//! prefix in index order (the revision is the log index): from the stored log, one bounded read
//! at a time, while it is behind the ring (catching up, at its client's pace), then from the ring
//! (live). An idle watcher sends a progress notification now and then.
//!
//! Invariants:
//! - Only applied (so committed) entries are delivered: the feeder reads no further than the
//!   applied index, and a catching-up watcher no further than the ring's start. A write that is
//!   rolled back was never applied, so it is never seen.
//! - A watcher examines every index from its start exactly once, in order: the changes it
//!   delivers come in index order and, with its progress notifications, cover every index
//!   without a gap. An entry that changes several keys (a batch: `SET` with options, `MSET`,
//!   `INCR`, an expiry's delete) gives one change per key under the prefix, all at its index, in
//!   the entry's order; they become ready together, so an index is complete once no ready
//!   change has it ([`Watcher::completes`]).
//! - Memory is bounded: the ring by [`WATCH_RING_ENTRIES`] and [`WATCH_RING_BYTES`], a watcher by
//!   one read of the stored log or one slice of the ring ([`WATCH_READ_BYTES`]). A live watcher
//!   that falls behind the ring is cut off with [`Error::WatchLagging`] rather than buffered; its
//!   client resumes from its last index, from the stored log.
//! - A watch from an index the log no longer holds ends with [`Error::Compacted`], naming the
//!   oldest index the log still holds.
//! - System keys ([`is_system_key`]) are never delivered.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::watch;
use tracing::warn;

use crate::config::tuning::{
    WATCH_MAX_INITIAL_BYTES, WATCH_PROGRESS_INTERVAL, WATCH_READ_BYTES, WATCH_RING_BYTES,
    WATCH_RING_ENTRIES,
};
use crate::error::{Error, Result};
use crate::metrics::NodeView;
use crate::storage::system_keys::is_system_key;
use crate::storage::Storage;
use crate::wire::client::{Change, WatchEvent};
use crate::wire::message::{Change as MessageChange, Entry, LogIndex, Operation};

/// How much the ring may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLimits {
    pub entries: usize,
    pub bytes: usize,
}

impl Default for RingLimits {
    fn default() -> Self {
        RingLimits {
            entries: WATCH_RING_ENTRIES,
            bytes: WATCH_RING_BYTES,
        }
    }
}

/// The indexes the ring holds: `first..next`. `next - 1` is the last applied index the hub has
/// read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RingBounds {
    first: LogIndex,
    next: LogIndex,
}

/// The most recent applied entries, contiguous: `entries[i].index == first + i`.
struct Ring {
    entries: VecDeque<Arc<Entry>>,
    bytes: usize,
    first: LogIndex,
    limits: RingLimits,
}

impl Ring {
    fn bounds(&self) -> RingBounds {
        RingBounds {
            first: self.first,
            next: self.first + self.entries.len() as u64,
        }
    }

    fn push(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.bounds().next,
            "the ring holds contiguous entries"
        );
        self.bytes += entry_bytes(&entry);
        self.entries.push_back(Arc::new(entry));
        while self.entries.len() > self.limits.entries
            || (self.bytes > self.limits.bytes && self.entries.len() > 1)
        {
            if let Some(oldest) = self.entries.pop_front() {
                self.bytes -= entry_bytes(&oldest);
                self.first += 1;
            }
        }
    }

    /// Empties the ring, which next receives entry `next`.
    fn restart_at(&mut self, next: LogIndex) {
        self.entries.clear();
        self.bytes = 0;
        self.first = next;
    }

    /// Entries from `from` on (none if the ring no longer holds it), at most `max_bytes` of
    /// them but at least one.
    fn slice(&self, from: LogIndex, max_bytes: usize) -> impl Iterator<Item = &Entry> {
        let offset = from
            .checked_sub(self.first)
            .map_or(self.entries.len(), |offset| {
                usize::try_from(offset).unwrap_or(usize::MAX)
            });
        let mut bytes = 0;
        self.entries
            .iter()
            .skip(offset)
            .enumerate()
            .take_while(move |(taken, entry)| {
                bytes += entry_bytes(entry);
                *taken == 0 || bytes <= max_bytes
            })
            .map(|(_, entry)| entry.as_ref())
    }
}

/// What an entry costs in the ring: its keys and values, and a little for the rest.
fn entry_bytes(entry: &Entry) -> usize {
    const OVERHEAD: usize = 64;
    let changes: usize = match &entry.operation {
        Operation::Put { key, value } => key.len() + value.len(),
        Operation::Delete { key } => key.len(),
        Operation::Batch { changes, .. } => changes
            .iter()
            .map(|change| match change {
                MessageChange::Put { key, value } => key.len() + value.len(),
                MessageChange::Delete { key } => key.len(),
            })
            .sum(),
        _ => 0,
    };
    OVERHEAD + changes
}

/// Calls `visit` with the key and new value (`None`: deleted) of each change an entry makes to
/// keys, in the entry's order: one for a put or a delete, one per change of a batch (`SET` with
/// options, `MSET`, `INCR`, an expiry's delete…); none for any other entry. Nothing is copied,
/// so a watcher pays for building a change only when it watches the key.
fn visit_changes<'e>(entry: &'e Entry, mut visit: impl FnMut(&'e [u8], Option<&'e [u8]>)) {
    match &entry.operation {
        Operation::Put { key, value } => visit(key, Some(value)),
        Operation::Delete { key } => visit(key, None),
        Operation::Batch { changes, .. } => {
            for change in changes {
                match change {
                    MessageChange::Put { key, value } => visit(key, Some(value)),
                    MessageChange::Delete { key } => visit(key, None),
                }
            }
        }
        _ => {}
    }
}

/// The change at `entry`'s index and epoch of `key` to `value`.
fn change_at(entry: &Entry, key: &[u8], value: Option<&[u8]>) -> Change {
    Change {
        index: entry.index,
        epoch: entry.epoch,
        key: key.to_vec(),
        value: value.map(<[u8]>::to_vec),
    }
}

/// The changes an entry makes to keys, in the entry's order (see [`visit_changes`]), all at the
/// entry's index. System keys are among them (callers drop them). Public for the simulator's
/// watchers, which follow a node's applied log as a watcher does.
pub fn changes_of(entry: &Entry) -> Vec<Change> {
    let mut changes = Vec::new();
    visit_changes(entry, |key, value| {
        changes.push(change_at(entry, key, value))
    });
    changes
}

struct HubShared {
    storage: Arc<dyn Storage>,
    ring: RwLock<Ring>,
    bounds: watch::Sender<RingBounds>,
}

impl HubShared {
    fn read_ring<T>(&self, read: impl FnOnce(&Ring) -> T) -> T {
        match self.ring.read() {
            Ok(ring) => read(&ring),
            Err(poisoned) => read(&poisoned.into_inner()),
        }
    }

    fn change_ring(&self, change: impl FnOnce(&mut Ring)) {
        let bounds = match self.ring.write() {
            Ok(mut ring) => {
                change(&mut ring);
                ring.bounds()
            }
            Err(poisoned) => {
                let mut ring = poisoned.into_inner();
                change(&mut ring);
                ring.bounds()
            }
        };
        self.bounds.send_replace(bounds);
    }

    /// Reads the entries applied up to `applied` that the ring has not seen into it.
    async fn feed_to(&self, applied: LogIndex) -> Result<()> {
        loop {
            let next = self.bounds.borrow().next;
            if next > applied {
                return Ok(());
            }
            let entries = read_log(&self.storage, next, applied).await?;
            if entries.first().map(|entry| entry.index) != Some(next) {
                // The log no longer holds `next`: a snapshot was installed. The ring restarts
                // after the applied index; watchers behind it meet the gap in the stored log and
                // end with `Compacted`.
                self.change_ring(|ring| ring.restart_at(applied + 1));
                return Ok(());
            }
            self.change_ring(|ring| {
                for entry in entries {
                    ring.push(entry);
                }
            });
        }
    }
}

/// Entries `from..=to` of the stored log (one bounded read), off the async threads.
async fn read_log(storage: &Arc<dyn Storage>, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>> {
    let storage = Arc::clone(storage);
    tokio::task::spawn_blocking(move || storage.entries(from, to, WATCH_READ_BYTES))
        .await
        .map_err(|err| Error::Internal(format!("a log read failed: {err}")))?
}

/// The first index the stored log holds.
async fn log_start(storage: &Arc<dyn Storage>) -> Result<LogIndex> {
    let storage = Arc::clone(storage);
    let meta = tokio::task::spawn_blocking(move || storage.meta())
        .await
        .map_err(|err| Error::Internal(format!("a log read failed: {err}")))??;
    Ok(meta.log_start.max(1))
}

/// The node's watch hub. Cheap to clone: clones share the ring.
#[derive(Clone)]
pub struct WatchHub {
    shared: Arc<HubShared>,
}

impl WatchHub {
    /// Starts the hub of the node whose applied index `view` publishes, with the default ring.
    /// The feeder stops when the event loop drops its end of `view`.
    pub fn start(storage: Arc<dyn Storage>, view: watch::Receiver<NodeView>) -> WatchHub {
        WatchHub::start_with(storage, view, RingLimits::default())
    }

    /// [`WatchHub::start`] with a ring of the given size (tests).
    pub fn start_with(
        storage: Arc<dyn Storage>,
        mut view: watch::Receiver<NodeView>,
        limits: RingLimits,
    ) -> WatchHub {
        let applied = view.borrow_and_update().applied_index;
        let ring = Ring {
            entries: VecDeque::new(),
            bytes: 0,
            first: applied + 1,
            limits,
        };
        let bounds = watch::Sender::new(ring.bounds());
        let shared = Arc::new(HubShared {
            storage,
            ring: RwLock::new(ring),
            bounds,
        });
        let feeder = Arc::clone(&shared);
        tokio::spawn(async move {
            loop {
                let applied = view.borrow_and_update().applied_index;
                if let Err(err) = feeder.feed_to(applied).await {
                    warn!(%err, "the watch hub cannot read the applied log");
                }
                if view.changed().await.is_err() {
                    return; // the event loop stopped
                }
            }
        });
        WatchHub { shared }
    }

    /// A watcher of the changes under `prefix` from index `from` (after the last index the hub
    /// has read when `None`). Fails with [`Error::Compacted`] if the log no longer holds `from`.
    pub async fn watch(&self, prefix: Vec<u8>, from: Option<LogIndex>) -> Result<Watcher> {
        let bounds = *self.shared.bounds.borrow();
        let next = from.unwrap_or(bounds.next).max(1);
        // The log's start decides, even if the ring still holds `from`: the ring is a cache of
        // the log, and what a watch may ask for must not depend on it.
        if from.is_some() {
            let oldest = log_start(&self.shared.storage).await?;
            if next < oldest {
                return Err(Error::Compacted {
                    requested: next,
                    oldest,
                });
            }
        }
        Ok(Watcher {
            shared: Arc::clone(&self.shared),
            bounds: self.shared.bounds.subscribe(),
            prefix,
            next,
            live: false,
            ready: VecDeque::from([WatchEvent::Progress { index: next - 1 }]),
            last_sent: Instant::now(),
        })
    }

    /// A watcher that first lists the values under `prefix` at one index, then delivers every
    /// change after it. `pages` are pages of a scan of the prefix in key order, each read at its
    /// own applied index (the event loop's paged scan): each is brought forward to the last page's
    /// index with the log's changes in its key range, so the listing is exactly the state at that
    /// one index. Fails with [`Error::Compacted`] if the log no longer holds what that needs.
    pub async fn watch_listed(&self, prefix: Vec<u8>, pages: Vec<ListedPage>) -> Result<Watcher> {
        let index = pages.iter().map(|page| page.index).max().unwrap_or(0);
        let oldest_page = pages.iter().map(|page| page.index).min().unwrap_or(0);
        let bytes: usize = pages
            .iter()
            .flat_map(|page| &page.pairs)
            .map(|(key, value)| key.len() + value.len())
            .sum();
        if bytes > WATCH_MAX_INITIAL_BYTES {
            return Err(Error::InvalidRequest(format!(
                "the values under this prefix are over {} MiB, too many to list for a watch: \
                 scan them, then watch from the scan's index",
                WATCH_MAX_INITIAL_BYTES >> 20
            )));
        }
        let mut state = BTreeMap::new();
        let mut ranges = Vec::with_capacity(pages.len());
        for page in pages {
            ranges.push((page.index, page.after.clone(), page.last_key()));
            state.extend(page.pairs);
        }
        // The changes of (oldest page, index], each applied only where its page is older.
        let mut from = oldest_page + 1;
        while from <= index {
            let entries = read_log(&self.shared.storage, from, index).await?;
            if entries.first().map(|entry| entry.index) != Some(from) {
                let oldest = log_start(&self.shared.storage).await?;
                return Err(Error::Compacted {
                    requested: from,
                    oldest,
                });
            }
            for change in entries.iter().flat_map(changes_of) {
                let in_an_older_page = ranges.iter().any(|(page_index, after, last)| {
                    *page_index < change.index
                        && after.as_ref().is_none_or(|after| change.key > *after)
                        && last.as_ref().is_none_or(|last| change.key <= *last)
                });
                let watched = change.key.starts_with(&prefix) && !is_system_key(&change.key);
                if !in_an_older_page || !watched {
                    continue;
                }
                match change.value {
                    Some(value) => state.insert(change.key, value),
                    None => state.remove(&change.key),
                };
            }
            from = entries.last().map_or(index, |entry| entry.index) + 1;
        }
        let mut watcher = self.watch(prefix, Some(index + 1)).await?;
        watcher.ready = initial_pages(state.into_iter().collect(), index);
        watcher.ready.push_back(WatchEvent::Progress { index });
        Ok(watcher)
    }
}

/// One page of a scan for [`WatchHub::watch_listed`]: the pairs after `after`, read at `index`;
/// `more` says whether pages follow (if not, this page covers the rest of the prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedPage {
    pub after: Option<Vec<u8>>,
    pub pairs: Vec<(Vec<u8>, Vec<u8>)>,
    pub more: bool,
    pub index: LogIndex,
}

impl ListedPage {
    /// The last key this page covers: its last pair's, or none (the end of the prefix).
    fn last_key(&self) -> Option<Vec<u8>> {
        if self.more {
            self.pairs.last().map(|(key, _)| key.clone())
        } else {
            None
        }
    }
}

/// The listing as [`WatchEvent::Initial`] frames of at most [`WATCH_READ_BYTES`] each.
fn initial_pages(pairs: Vec<(Vec<u8>, Vec<u8>)>, index: LogIndex) -> VecDeque<WatchEvent> {
    let mut pages = VecDeque::new();
    let mut page = Vec::new();
    let mut bytes = 0;
    for (key, value) in pairs {
        let size = key.len() + value.len();
        if !page.is_empty() && bytes + size > WATCH_READ_BYTES {
            pages.push_back(std::mem::take(&mut page));
            bytes = 0;
        }
        bytes += size;
        page.push((key, value));
    }
    pages.push_back(page);
    let count = pages.len();
    pages
        .into_iter()
        .enumerate()
        .map(|(number, pairs)| WatchEvent::Initial {
            pairs,
            index,
            more: number + 1 < count,
        })
        .collect()
}

/// One watch: the changes under a prefix, in index order (see the module docs).
pub struct Watcher {
    shared: Arc<HubShared>,
    bounds: watch::Receiver<RingBounds>,
    prefix: Vec<u8>,
    /// The next index to examine.
    next: LogIndex,
    /// Whether the watcher has reached the ring; from then on, falling behind it cuts it off.
    live: bool,
    /// Events examined and not yet handed out: at most one read or slice.
    ready: VecDeque<WatchEvent>,
    /// When the last event was handed out, for progress notifications.
    last_sent: Instant,
}

impl Watcher {
    /// The next event, waiting for one. An error ends the watch.
    pub async fn next(&mut self) -> Result<WatchEvent> {
        loop {
            if let Some(event) = self.next_ready() {
                return Ok(event);
            }
            self.fill().await?;
        }
    }

    /// The next event that is ready now, without waiting: a door that has just written one event
    /// takes these too, and writes them all at once.
    pub fn next_ready(&mut self) -> Option<WatchEvent> {
        let event = self.ready.pop_front()?;
        self.last_sent = Instant::now();
        Some(event)
    }

    /// Whether `index` is complete once the events taken so far are sent: no change at it is
    /// still ready (the changes of one entry become ready together). A door that resumes by
    /// index (Server-Sent Events' `Last-Event-ID`) names an index only where it is complete.
    pub fn completes(&self, index: LogIndex) -> bool {
        !matches!(self.ready.front(), Some(WatchEvent::Change(change)) if change.index == index)
    }

    /// Resolves once this watcher, live, has fallen behind the ring: the door is blocked writing
    /// to a client that does not read, and cuts it off. Never resolves while catching up.
    pub fn fallen_behind(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut bounds = self.bounds.clone();
        let (live, next) = (self.live, self.next);
        async move {
            if live && bounds.wait_for(|bounds| bounds.first > next).await.is_ok() {
                return;
            }
            std::future::pending().await
        }
    }

    /// The index up to which every change has been handed out or is ready.
    pub fn position(&self) -> LogIndex {
        self.next - 1
    }

    /// Examines entries until some event is ready.
    async fn fill(&mut self) -> Result<()> {
        while self.ready.is_empty() {
            let bounds = *self.bounds.borrow_and_update();
            if self.next < bounds.first {
                if self.live {
                    return Err(Error::WatchLagging { next: self.next });
                }
                let entries = read_log(&self.shared.storage, self.next, bounds.first - 1).await?;
                if entries.first().map(|entry| entry.index) != Some(self.next) {
                    let oldest = log_start(&self.shared.storage).await?;
                    return Err(Error::Compacted {
                        requested: self.next,
                        oldest,
                    });
                }
                self.examine(entries.iter());
            } else if self.next < bounds.next {
                self.live = true;
                // Examined in place: a live watcher copies only the changes it watches.
                let shared = Arc::clone(&self.shared);
                shared.read_ring(|ring| self.examine(ring.slice(self.next, WATCH_READ_BYTES)));
            } else {
                self.live = true;
                let progress_at = self.last_sent + WATCH_PROGRESS_INTERVAL;
                tokio::select! {
                    changed = self.bounds.changed() => if changed.is_err() {
                        return Err(Error::ShuttingDown);
                    },
                    () = tokio::time::sleep_until(progress_at.into()) => {
                        self.ready.push_back(WatchEvent::Progress { index: self.next - 1 });
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes the changes under the prefix from `entries`, which continue at `next`.
    fn examine<'e>(&mut self, entries: impl Iterator<Item = &'e Entry>) {
        for entry in entries {
            if entry.index != self.next {
                return; // the ring moved on meanwhile; the next fill finds out where it is
            }
            self.next += 1;
            visit_changes(entry, |key, value| {
                if key.starts_with(&self.prefix) && !is_system_key(key) {
                    let change = change_at(entry, key, value);
                    self.ready.push_back(WatchEvent::Change(change));
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;
    use crate::wire::client::Role;

    fn view(applied_index: LogIndex) -> NodeView {
        NodeView {
            role: Role::Backup,
            epoch: 1,
            primary: None,
            last_index: applied_index,
            commit_index: applied_index,
            applied_index,
        }
    }

    fn put(index: LogIndex, key: &str, value: &str) -> Entry {
        Entry {
            epoch: 1,
            index,
            operation: Operation::Put {
                key: key.into(),
                value: value.into(),
            },
            request_id: None,
        }
    }

    fn delete(index: LogIndex, key: &str) -> Entry {
        Entry {
            epoch: 1,
            index,
            operation: Operation::Delete { key: key.into() },
            request_id: None,
        }
    }

    /// A node's storage and its published view, driven by the test.
    struct Harness {
        storage: Arc<MemoryStorage>,
        view: watch::Sender<NodeView>,
        applied: LogIndex,
    }

    impl Harness {
        fn new() -> Harness {
            Harness {
                storage: Arc::new(MemoryStorage::new()),
                view: watch::Sender::new(view(0)),
                applied: 0,
            }
        }

        fn hub(&self, limits: RingLimits) -> WatchHub {
            let storage: Arc<dyn Storage> = self.storage.clone();
            WatchHub::start_with(storage, self.view.subscribe(), limits)
        }

        /// Appends and applies `entries`, and publishes the new applied index.
        fn apply(&mut self, entries: Vec<Entry>) {
            self.storage.append(&entries).expect("append");
            self.storage.apply(&entries).expect("apply");
            self.applied = entries.last().map_or(self.applied, |entry| entry.index);
            self.view.send_replace(view(self.applied));
        }

        /// Appends `count` puts of `key` with values "0", "1", ... and applies them.
        fn apply_puts(&mut self, key: &str, count: u64) {
            let entries = (1..=count)
                .map(|n| put(self.applied + n, key, &n.to_string()))
                .collect();
            self.apply(entries);
        }
    }

    async fn next_change(watcher: &mut Watcher) -> Change {
        loop {
            match tokio::time::timeout(std::time::Duration::from_secs(5), watcher.next()).await {
                Ok(Ok(WatchEvent::Change(change))) => return change,
                Ok(Ok(_)) => continue,
                Ok(Err(err)) => panic!("the watch ended: {err}"),
                Err(_) => panic!("no change within 5 s"),
            }
        }
    }

    #[tokio::test]
    async fn a_watcher_sees_the_applied_changes_of_its_prefix_in_index_order() {
        let mut node = Harness::new();
        node.apply(vec![put(1, "a/1", "old"), put(2, "b/1", "other")]);
        let hub = node.hub(RingLimits::default());
        let mut from_start = hub.watch(b"a/".to_vec(), Some(1)).await.expect("watch");
        let mut from_now = hub.watch(b"a/".to_vec(), None).await.expect("watch");
        // Appended but not applied: never delivered.
        node.storage
            .append(&[put(3, "a/2", "new"), delete(4, "a/1")])
            .expect("append");
        let first = next_change(&mut from_start).await;
        assert_eq!((first.index, first.key.as_slice()), (1, &b"a/1"[..]));
        let entries = vec![put(3, "a/2", "new"), delete(4, "a/1")];
        node.storage.apply(&entries).expect("apply");
        node.applied = 4;
        node.view.send_replace(view(4));
        for watcher in [&mut from_start, &mut from_now] {
            let put = next_change(watcher).await;
            assert_eq!((put.index, put.value), (3, Some(b"new".to_vec())));
            let delete = next_change(watcher).await;
            assert_eq!((delete.index, delete.value), (4, None));
        }
    }

    #[tokio::test]
    async fn the_changes_of_one_read_are_ready_together_for_one_write() {
        let mut node = Harness::new();
        node.apply_puts("k", 4);
        let hub = node.hub(RingLimits::default());
        let mut watcher = hub.watch(b"k".to_vec(), Some(1)).await.expect("watch");
        assert_eq!(
            watcher.next().await.expect("event"),
            WatchEvent::Progress { index: 0 }
        );
        assert_eq!(next_change(&mut watcher).await.index, 1);
        let ready: Vec<LogIndex> = std::iter::from_fn(|| watcher.next_ready())
            .map(|event| match event {
                WatchEvent::Change(change) => change.index,
                other => panic!("expected a change, got {other:?}"),
            })
            .collect();
        assert_eq!(
            ready,
            vec![2, 3, 4],
            "the rest of the read, without waiting"
        );
        assert_eq!(watcher.position(), 4);
    }

    #[tokio::test]
    async fn a_watch_starts_with_its_position_and_reports_progress_when_idle() {
        let mut node = Harness::new();
        node.apply_puts("x", 5);
        let hub = node.hub(RingLimits::default());
        let mut watcher = hub.watch(b"y".to_vec(), Some(3)).await.expect("watch");
        assert_eq!(
            watcher.next().await.expect("event"),
            WatchEvent::Progress { index: 2 }
        );
        let started = Instant::now();
        assert_eq!(
            watcher.next().await.expect("event"),
            WatchEvent::Progress { index: 5 },
            "nothing under the prefix: the idle watch says how far it has seen"
        );
        assert!(started.elapsed() >= WATCH_PROGRESS_INTERVAL / 2);
    }

    #[tokio::test]
    async fn a_watch_from_a_compacted_index_says_which_is_the_oldest() {
        let mut node = Harness::new();
        let hub = node.hub(RingLimits::default());
        node.apply_puts("k", 10);
        let mut fed = hub.watch(b"k".to_vec(), Some(1)).await.expect("watch");
        assert_eq!(next_change(&mut fed).await.index, 1);
        node.storage.compact(6).expect("compact");
        // The ring still holds index 3; the log's start decides all the same.
        match hub.watch(b"k".to_vec(), Some(3)).await {
            Err(Error::Compacted { requested, oldest }) => assert_eq!((requested, oldest), (3, 7)),
            other => panic!("expected Compacted, got {:?}", other.map(|w| w.next)),
        }
        let mut watcher = hub.watch(b"k".to_vec(), Some(7)).await.expect("watch");
        assert_eq!(next_change(&mut watcher).await.index, 7);
    }

    #[tokio::test]
    async fn a_live_watcher_that_falls_behind_the_ring_is_cut_off_and_a_reader_keeping_pace_is_not()
    {
        let mut node = Harness::new();
        let limits = RingLimits {
            entries: 8,
            bytes: usize::MAX,
        };
        let hub = node.hub(limits);
        let mut slow = hub.watch(b"k".to_vec(), None).await.expect("watch");
        let mut brisk = hub.watch(b"k".to_vec(), None).await.expect("watch");
        node.apply_puts("k", 2);
        assert_eq!(next_change(&mut slow).await.index, 1);
        let mut seen = 0;
        for _ in 0..10 {
            node.apply_puts("k", 4);
            while seen < node.applied {
                let change = next_change(&mut brisk).await;
                assert_eq!(change.index, seen + 1, "no gap, no duplicate");
                seen = change.index;
            }
        }
        // The slow one has entry 2 ready, then needs 3, long gone from a ring of 8.
        assert_eq!(next_change(&mut slow).await.index, 2);
        let cut_off = tokio::time::timeout(std::time::Duration::from_secs(1), slow.next()).await;
        assert!(
            matches!(cut_off, Ok(Err(Error::WatchLagging { next: 3 }))),
            "got {cut_off:?}"
        );
        // Resuming from the stored log works (it still holds index 3).
        let mut resumed = hub.watch(b"k".to_vec(), Some(3)).await.expect("watch");
        for index in 3..=node.applied {
            assert_eq!(next_change(&mut resumed).await.index, index);
        }
    }

    #[tokio::test]
    async fn a_watcher_blocked_writing_learns_it_has_fallen_behind() {
        let mut node = Harness::new();
        let hub = node.hub(RingLimits {
            entries: 4,
            bytes: usize::MAX,
        });
        let mut watcher = hub.watch(Vec::new(), None).await.expect("watch");
        node.apply_puts("k", 1);
        next_change(&mut watcher).await;
        let behind = watcher.fallen_behind();
        node.apply_puts("k", 3);
        let still = tokio::time::timeout(std::time::Duration::from_millis(200), behind).await;
        assert!(still.is_err(), "index 2 is still in the ring");
        let behind = watcher.fallen_behind();
        node.apply_puts("k", 2);
        tokio::time::timeout(std::time::Duration::from_secs(5), behind)
            .await
            .expect("index 2 left the ring");
    }

    #[tokio::test]
    async fn a_listing_is_brought_to_one_index_then_changes_follow() {
        let mut node = Harness::new();
        node.apply(vec![
            put(1, "p/a", "1"),
            put(2, "p/b", "1"),
            put(3, "p/c", "1"),
        ]);
        // Page one (p/a) was read at index 3; then p/a and p/c changed; page two (p/b, p/c) at 5.
        node.apply(vec![put(4, "p/a", "2"), delete(5, "p/c")]);
        let pages = vec![
            ListedPage {
                after: None,
                pairs: vec![(b"p/a".to_vec(), b"1".to_vec())],
                more: true,
                index: 3,
            },
            ListedPage {
                after: Some(b"p/a".to_vec()),
                pairs: vec![(b"p/b".to_vec(), b"1".to_vec())],
                more: false,
                index: 5,
            },
        ];
        let hub = node.hub(RingLimits::default());
        let mut watcher = hub
            .watch_listed(b"p/".to_vec(), pages)
            .await
            .expect("watch");
        assert_eq!(
            watcher.next().await.expect("initial"),
            WatchEvent::Initial {
                pairs: vec![
                    (b"p/a".to_vec(), b"2".to_vec()),
                    (b"p/b".to_vec(), b"1".to_vec())
                ],
                index: 5,
                more: false
            }
        );
        assert_eq!(
            watcher.next().await.expect("position"),
            WatchEvent::Progress { index: 5 }
        );
        node.apply(vec![put(6, "p/d", "1")]);
        assert_eq!(next_change(&mut watcher).await.index, 6);
    }

    #[tokio::test]
    async fn system_keys_are_never_delivered() {
        let mut node = Harness::new();
        let hub = node.hub(RingLimits::default());
        let mut watcher = hub.watch(Vec::new(), None).await.expect("watch");
        let mut system = put(1, "", "secret");
        system.operation = Operation::Put {
            key: [crate::storage::system_keys::SYSTEM_PREFIX, b"user/x"].concat(),
            value: b"secret".to_vec(),
        };
        node.apply(vec![system, put(2, "visible", "1")]);
        assert_eq!(next_change(&mut watcher).await.index, 2);
    }

    /// A batch (`SET` with options, `MSET`, `INCR`, an expiry's delete) is one entry changing
    /// several keys: each change under the prefix is delivered, at the entry's index, in order,
    /// and the index is complete once the last of them is taken.
    #[tokio::test]
    async fn every_change_of_a_batch_under_the_prefix_is_delivered_at_its_index() {
        let mut node = Harness::new();
        let hub = node.hub(RingLimits::default());
        let mut watcher = hub.watch(b"k".to_vec(), None).await.expect("watch");
        let batch = Entry {
            epoch: 1,
            index: 1,
            operation: Operation::Batch {
                changes: vec![
                    MessageChange::Put {
                        key: b"k1".to_vec(),
                        value: b"a".to_vec(),
                    },
                    MessageChange::Put {
                        key: b"other".to_vec(),
                        value: b"b".to_vec(),
                    },
                    MessageChange::Delete {
                        key: [crate::storage::system_keys::SYSTEM_PREFIX, b"expiry/k1"].concat(),
                    },
                    MessageChange::Delete {
                        key: b"k2".to_vec(),
                    },
                ],
                answer: None,
            },
            request_id: None,
        };
        node.apply(vec![batch, put(2, "k3", "c")]);
        let first = next_change(&mut watcher).await;
        assert_eq!(
            (first.index, first.key.as_slice(), first.value.as_deref()),
            (1, &b"k1"[..], Some(&b"a"[..]))
        );
        assert!(!watcher.completes(1), "k2's delete is still to come");
        let second = next_change(&mut watcher).await;
        assert_eq!(
            (second.index, second.key.as_slice(), second.value),
            (1, &b"k2"[..], None)
        );
        assert!(watcher.completes(1));
        assert_eq!(next_change(&mut watcher).await.index, 2);
    }
}
