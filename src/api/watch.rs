//! The watch hub: ordered change feeds served from a node's committed log, off the event loop.
//!
//! The event loop publishes the node's commit index after every pass ([`NodeView`]), once the
//! pass's entries are in the stored log. The hub's feeder task reads the entries newly committed
//! from the stored log, once for every watcher, and
//! keeps the most recent ones in a bounded ring (while no watcher is open it reads nothing and
//! keeps the ring empty). A [`Watcher`] delivers the changes under its
//! prefix in index order (the revision is the log index): from the stored log, one bounded read
//! at a time, while it is behind the ring (catching up, at its client's pace), then from the ring
//! (live). An idle watcher sends a progress notification now and then.
//!
//! The feeder wakes only the watchers whose prefix a new entry's keys are under (a lookup per
//! prefix length of each key), and marks where their next change is ([`Subscription`]); a
//! watcher with nothing marked skips to the ring's end without reading it, and a woken one skips
//! straight to its mark. So a thousand watchers of their own keys cost a write one wake-up and one
//! look at one entry, not a thousand.
//!
//! Invariants:
//! - Only committed entries are delivered: the feeder reads no further than the commit index,
//!   and a catching-up watcher no further than the ring's start. A committed entry is never
//!   rolled back, and it is the entry every node applies at its index, so a write that is
//!   rolled back is never seen. A backup learns the commit index before it applies (on its
//!   tick), and its watchers need not wait for the apply.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::sync::{watch, Notify};
use tracing::warn;

use crate::client::lock;
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

/// The indexes the ring holds: `first..next`. `next - 1` is the last committed index the hub has
/// read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RingBounds {
    first: LogIndex,
    next: LogIndex,
}

/// The most recent committed entries, contiguous: `entries[i].index == first + i`.
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
    let mut bytes = OVERHEAD;
    visit_changes(entry, |key, value| {
        bytes += key.len() + value.map_or(0, <[u8]>::len);
    });
    bytes
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
/// watchers, which follow a node's committed log as a watcher does.
pub fn changes_of(entry: &Entry) -> Vec<Change> {
    let mut changes = Vec::new();
    visit_changes(entry, |key, value| {
        changes.push(change_at(entry, key, value))
    });
    changes
}

/// The open watchers' subscriptions by prefix, with how many prefixes of each length there are,
/// so that finding the watchers of a key looks it up only at the lengths some prefix has (a
/// handful), not at every length of the key.
#[derive(Default)]
struct Subscriptions {
    by_prefix: BTreeMap<Vec<u8>, Vec<Arc<Subscription>>>,
    /// Prefix length → how many prefixes in `by_prefix` have it (never zero).
    lengths: BTreeMap<usize, usize>,
}

impl Subscriptions {
    fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }

    fn add(&mut self, prefix: Vec<u8>, subscription: Arc<Subscription>) {
        let length = prefix.len();
        let watchers = self.by_prefix.entry(prefix).or_default();
        if watchers.is_empty() {
            *self.lengths.entry(length).or_default() += 1;
        }
        watchers.push(subscription);
    }

    fn remove(&mut self, prefix: &[u8], subscription: &Arc<Subscription>) {
        let Some(watchers) = self.by_prefix.get_mut(prefix) else {
            return;
        };
        watchers.retain(|other| !Arc::ptr_eq(other, subscription));
        if !watchers.is_empty() {
            return;
        }
        self.by_prefix.remove(prefix);
        if let Some(count) = self.lengths.get_mut(&prefix.len()) {
            *count -= 1;
            if *count == 0 {
                self.lengths.remove(&prefix.len());
            }
        }
    }

    fn all(&self) -> impl Iterator<Item = &Arc<Subscription>> {
        self.by_prefix.values().flatten()
    }

    /// The subscriptions whose prefix `key` is under.
    fn under<'s>(&'s self, key: &'s [u8]) -> impl Iterator<Item = &'s Arc<Subscription>> {
        self.lengths
            .range(..=key.len())
            .filter_map(move |(&length, _)| self.by_prefix.get(&key[..length]))
            .flatten()
    }
}

struct HubShared {
    storage: Arc<dyn Storage>,
    ring: RwLock<Ring>,
    bounds: watch::Sender<RingBounds>,
    /// Every open watcher's subscription, by prefix: the feeder wakes only the watchers whose
    /// prefix a new change is under.
    subscriptions: Mutex<Subscriptions>,
    /// Whether the node is cut off from the primary ([`NodeView::cut_off`]): its watches end with
    /// `Unavailable`, and their clients resume on a node that hears the primary.
    cut_off: watch::Sender<bool>,
}

/// What the feeder tells one watcher. Changed only under the ring's lock: by the feeder, which
/// holds it for writing, and by the watcher, which holds it for reading and is the only reader
/// of its own subscription that writes.
///
/// Invariant: `pending_from` is at most the index of every change under the prefix, at or after
/// the watcher's next index, that the watcher has not examined (`NOTHING_PENDING` if there is
/// none). It starts at the watcher's first index; the feeder lowers it to each new change's
/// index; the watcher raises it only over what it examined under the same lock. So a watcher
/// with nothing pending may skip to the ring's end without reading, and one behind the ring lost
/// a change only if its pending index fell out of the ring.
struct Subscription {
    pending_from: AtomicU64,
    wake: Notify,
}

/// `pending_from` of a subscription with nothing to examine.
const NOTHING_PENDING: LogIndex = LogIndex::MAX;

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

    /// Marks `entry` pending for every watcher whose prefix one of its keys is under, and wakes
    /// them: a lookup per prefix length that some watcher has, not a look at every watcher.
    /// Called under the ring's write lock, before the entry is pushed.
    fn mark_entry(&self, entry: &Entry) {
        let subscriptions = lock(&self.subscriptions);
        if subscriptions.is_empty() {
            return;
        }
        visit_changes(entry, |key, _| {
            if is_system_key(key) {
                return;
            }
            for subscription in subscriptions.under(key) {
                subscription
                    .pending_from
                    .fetch_min(entry.index, Ordering::Relaxed);
                subscription.wake.notify_one();
            }
        });
    }

    /// Marks everything pending for every watcher, and wakes them all: the ring skipped entries
    /// no watcher examined. Called under the ring's write lock.
    fn mark_all(&self) {
        for subscription in lock(&self.subscriptions).all() {
            subscription.pending_from.store(0, Ordering::Relaxed);
            subscription.wake.notify_one();
        }
    }

    /// With no watcher open, restarts the ring after `committed` instead of reading the log back
    /// into it: a node nobody watches pays no storage read per write. Decided under the ring's
    /// write lock, so a watcher that registers meanwhile either is seen here (and the ring is
    /// fed) or reads the ring only once it has restarted, and catches up from the stored log.
    fn skip_unwatched(&self, committed: LogIndex) -> bool {
        // Watched (the common case while it matters): no write lock and no bounds broadcast.
        if !lock(&self.subscriptions).is_empty() {
            return false;
        }
        let mut skipped = false;
        self.change_ring(|ring| {
            if lock(&self.subscriptions).is_empty() {
                ring.restart_at(committed + 1);
                skipped = true;
            }
        });
        skipped
    }

    /// Reads the entries committed up to `committed` that the ring has not seen into it.
    async fn feed_to(&self, committed: LogIndex) -> Result<()> {
        loop {
            let next = self.bounds.borrow().next;
            if next > committed {
                return Ok(());
            }
            if self.skip_unwatched(committed) {
                return Ok(());
            }
            let entries = read_log(&self.storage, next, committed).await?;
            if entries.first().map(|entry| entry.index) != Some(next) {
                // The log no longer holds `next`: a snapshot was installed. The ring restarts
                // after the commit index; watchers behind it meet the gap in the stored log and
                // end with `Compacted`.
                self.change_ring(|ring| {
                    ring.restart_at(committed + 1);
                    // The entries skipped were never seen: every watcher may have missed some.
                    self.mark_all();
                });
                return Ok(());
            }
            self.change_ring(|ring| {
                for entry in entries {
                    self.mark_entry(&entry);
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

/// Why a watch ends, or is refused, on a node cut off from the primary.
fn cut_off_error() -> Error {
    Error::Unavailable(
        "this node has heard from no primary for three failure timeouts (partitioned, or removed \
         from the cluster): watch on another node"
            .into(),
    )
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
    /// Starts the hub of the node whose commit index `view` publishes, with the default ring.
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
        let (committed, cut_off) = {
            let view = view.borrow_and_update();
            (view.commit_index, view.cut_off)
        };
        let ring = Ring {
            entries: VecDeque::new(),
            bytes: 0,
            first: committed + 1,
            limits,
        };
        let bounds = watch::Sender::new(ring.bounds());
        let shared = Arc::new(HubShared {
            storage,
            ring: RwLock::new(ring),
            bounds,
            subscriptions: Mutex::default(),
            cut_off: watch::Sender::new(cut_off),
        });
        let feeder = Arc::clone(&shared);
        tokio::spawn(async move {
            loop {
                let (committed, cut_off) = {
                    let view = view.borrow_and_update();
                    (view.commit_index, view.cut_off)
                };
                feeder.cut_off.send_if_modified(|was| {
                    let changed = *was != cut_off;
                    *was = cut_off;
                    changed
                });
                if let Err(err) = feeder.feed_to(committed).await {
                    warn!(%err, "the watch hub cannot read the committed log");
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
        if *self.shared.cut_off.borrow() {
            return Err(cut_off_error());
        }
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
        let subscription = Arc::new(Subscription {
            pending_from: AtomicU64::new(next),
            wake: Notify::new(),
        });
        lock(&self.shared.subscriptions).add(prefix.clone(), Arc::clone(&subscription));
        Ok(Watcher {
            subscription,
            shared: Arc::clone(&self.shared),
            bounds: self.shared.bounds.subscribe(),
            cut_off: self.shared.cut_off.subscribe(),
            prefix,
            next,
            live: false,
            ready: VecDeque::from([WatchEvent::Progress { index: next - 1 }]),
            last_sent: Instant::now(),
            progress_timer: Box::pin(tokio::time::sleep(WATCH_PROGRESS_INTERVAL)),
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

/// What one look at the ring found ([`Watcher::examine_ring`]).
enum RingStep {
    /// Entries were examined; some events may be ready.
    Examined,
    /// The watcher's next index is before the ring's first, which is `first`.
    Behind { first: LogIndex },
    /// Nothing is left to examine until the feeder wakes the watcher.
    UpToDate,
}

/// One watch: the changes under a prefix, in index order (see the module docs).
pub struct Watcher {
    shared: Arc<HubShared>,
    /// Where the feeder marks and wakes this watcher.
    subscription: Arc<Subscription>,
    bounds: watch::Receiver<RingBounds>,
    /// Whether the node is cut off from the primary: the watch ends.
    cut_off: watch::Receiver<bool>,
    prefix: Vec<u8>,
    /// The next index to examine.
    next: LogIndex,
    /// Whether the watcher has reached the ring; from then on, falling behind it cuts it off.
    live: bool,
    /// Events examined and not yet handed out: at most one read or slice.
    ready: VecDeque<WatchEvent>,
    /// When the last event was handed out, for progress notifications.
    last_sent: Instant,
    /// When the next progress notification is due: one timer kept for the watcher's life and
    /// moved only when an event was sent, not a new one at every wake-up.
    progress_timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        lock(&self.shared.subscriptions).remove(&self.prefix, &self.subscription);
    }
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
            if *self.cut_off.borrow_and_update() {
                return Err(cut_off_error());
            }
            let shared = Arc::clone(&self.shared);
            match shared.read_ring(|ring| self.examine_ring(ring)) {
                RingStep::Examined => {}
                RingStep::Behind { first } => {
                    if self.live {
                        return Err(Error::WatchLagging { next: self.next });
                    }
                    let entries = read_log(&self.shared.storage, self.next, first - 1).await?;
                    if entries.first().map(|entry| entry.index) != Some(self.next) {
                        let oldest = log_start(&self.shared.storage).await?;
                        return Err(Error::Compacted {
                            requested: self.next,
                            oldest,
                        });
                    }
                    self.examine(entries.iter());
                }
                RingStep::UpToDate => {
                    self.live = true;
                    let progress_at =
                        tokio::time::Instant::from(self.last_sent + WATCH_PROGRESS_INTERVAL);
                    if self.progress_timer.deadline() != progress_at {
                        self.progress_timer.as_mut().reset(progress_at);
                    }
                    // A wake-up that came since the ring was read is kept as a permit.
                    tokio::select! {
                        () = self.subscription.wake.notified() => {}
                        // Looked at again at the top of the loop (the hub outlives its watchers,
                        // so this never fails).
                        _ = self.cut_off.changed() => {}
                        () = self.progress_timer.as_mut() => {
                            self.ready.push_back(WatchEvent::Progress { index: self.next - 1 });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// One look at the ring, under its read lock (see [`Subscription`]): skips to its end if
    /// nothing under the prefix is pending, or examines the next slice in place (a live watcher
    /// copies only the changes it watches), or finds the watcher behind the ring.
    fn examine_ring(&mut self, ring: &Ring) -> RingStep {
        let bounds = ring.bounds();
        let subscription = Arc::clone(&self.subscription);
        let pending = &subscription.pending_from;
        let pending_from = pending.load(Ordering::Relaxed);
        if pending_from >= bounds.next {
            // Nothing under the prefix from `next` to the ring's end.
            self.next = self.next.max(bounds.next);
            return RingStep::UpToDate;
        }
        if pending_from > self.next && pending_from >= bounds.first {
            // Nothing under the prefix before `pending_from`: skip to it without reading what
            // lies between (other prefixes' entries). If the watcher was behind the ring,
            // nothing it watches fell out of it, so it is not behind.
            self.next = pending_from;
        }
        if self.next < bounds.first {
            return RingStep::Behind {
                first: bounds.first,
            };
        }
        if self.next >= bounds.next {
            pending.store(NOTHING_PENDING, Ordering::Relaxed);
            return RingStep::UpToDate;
        }
        self.live = true;
        self.examine(ring.slice(self.next, WATCH_READ_BYTES));
        if self.next >= bounds.next {
            pending.store(NOTHING_PENDING, Ordering::Relaxed);
        } else if pending_from < self.next {
            pending.store(self.next, Ordering::Relaxed);
        }
        RingStep::Examined
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
            cut_off: false,
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

    /// The first event that `wanted` accepts, or the watch's error, within 5 s in all: events
    /// passed over (progress notifications every 2 s) do not extend the wait.
    async fn next_event_where(
        watcher: &mut Watcher,
        wanted: impl Fn(&WatchEvent) -> bool,
    ) -> std::result::Result<Result<WatchEvent>, tokio::time::error::Elapsed> {
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, watcher.next()).await {
                Ok(Ok(event)) if !wanted(&event) => continue,
                other => return other,
            }
        }
    }

    async fn next_change(watcher: &mut Watcher) -> Change {
        match next_event_where(watcher, |event| matches!(event, WatchEvent::Change(_))).await {
            Ok(Ok(WatchEvent::Change(change))) => change,
            Ok(Ok(other)) => unreachable!("only a change is wanted, not {other:?}"),
            Ok(Err(err)) => panic!("the watch ended: {err}"),
            Err(_) => panic!("no change within 5 s"),
        }
    }

    /// The first event or error after any progress notifications, if one comes within 5 s.
    async fn next_event_after_progress(
        watcher: &mut Watcher,
    ) -> std::result::Result<Result<WatchEvent>, tokio::time::error::Elapsed> {
        next_event_where(watcher, |event| {
            !matches!(event, WatchEvent::Progress { .. })
        })
        .await
    }

    #[tokio::test]
    async fn a_watcher_sees_the_committed_changes_of_its_prefix_in_index_order() {
        let mut node = Harness::new();
        node.apply(vec![put(1, "a/1", "old"), put(2, "b/1", "other")]);
        let hub = node.hub(RingLimits::default());
        let mut from_start = hub.watch(b"a/".to_vec(), Some(1)).await.expect("watch");
        let mut from_now = hub.watch(b"a/".to_vec(), None).await.expect("watch");
        // Appended but not committed: never delivered.
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

    #[test]
    fn subscriptions_are_found_by_the_prefixes_of_a_key_and_forgotten_once_removed() {
        let new = || {
            Arc::new(Subscription {
                pending_from: AtomicU64::new(NOTHING_PENDING),
                wake: Notify::new(),
            })
        };
        let (everything, a, ab, ab_again, b) = (new(), new(), new(), new(), new());
        let mut subscriptions = Subscriptions::default();
        subscriptions.add(b"".to_vec(), Arc::clone(&everything));
        subscriptions.add(b"a".to_vec(), Arc::clone(&a));
        subscriptions.add(b"ab".to_vec(), Arc::clone(&ab));
        subscriptions.add(b"ab".to_vec(), Arc::clone(&ab_again));
        subscriptions.add(b"b".to_vec(), Arc::clone(&b));
        let found = |subscriptions: &Subscriptions, key: &[u8]| -> Vec<*const Subscription> {
            subscriptions.under(key).map(Arc::as_ptr).collect()
        };
        let pointers = |of: &[&Arc<Subscription>]| -> Vec<*const Subscription> {
            of.iter()
                .map(|subscription| Arc::as_ptr(subscription))
                .collect()
        };
        assert_eq!(
            found(&subscriptions, b"abc"),
            pointers(&[&everything, &a, &ab, &ab_again])
        );
        assert_eq!(
            found(&subscriptions, b"ab"),
            pointers(&[&everything, &a, &ab, &ab_again])
        );
        assert_eq!(found(&subscriptions, b"b"), pointers(&[&everything, &b]));
        assert_eq!(found(&subscriptions, b"c"), pointers(&[&everything]));
        let lengths = |subscriptions: &Subscriptions| -> Vec<(usize, usize)> {
            subscriptions
                .lengths
                .iter()
                .map(|(l, n)| (*l, *n))
                .collect()
        };
        assert_eq!(lengths(&subscriptions), [(0, 1), (1, 2), (2, 1)]);

        subscriptions.remove(b"ab", &ab);
        assert_eq!(
            lengths(&subscriptions),
            [(0, 1), (1, 2), (2, 1)],
            "ab is still watched"
        );
        subscriptions.remove(b"ab", &ab_again);
        assert_eq!(lengths(&subscriptions), [(0, 1), (1, 2)]);
        assert_eq!(found(&subscriptions, b"abc"), pointers(&[&everything, &a]));
        subscriptions.remove(b"a", &a);
        subscriptions.remove(b"b", &b);
        subscriptions.remove(b"", &everything);
        assert!(subscriptions.is_empty());
        assert_eq!(lengths(&subscriptions), []);
    }

    /// A backup learns the commit index in one pass and applies on its tick: its watchers get
    /// the committed changes at once, without waiting for the apply.
    #[tokio::test]
    async fn a_watcher_sees_committed_changes_its_node_has_not_applied_yet() {
        let mut node = Harness::new();
        node.apply_puts("a/", 2);
        let hub = node.hub(RingLimits::default());
        let mut watcher = hub.watch(b"a/".to_vec(), None).await.expect("watch");
        node.storage
            .append(&[put(3, "a/x", "committed"), put(4, "a/x", "appended")])
            .expect("append");
        node.view.send_replace(NodeView {
            last_index: 4,
            commit_index: 3,
            ..view(node.applied)
        });
        let change = next_change(&mut watcher).await;
        assert_eq!(
            (change.index, change.value),
            (3, Some(b"committed".to_vec()))
        );
        assert_eq!(node.storage.meta().expect("meta").applied_index, 2);
        // Entry 4 is not committed: the watcher is told of nothing past 3.
        match next_event_after_progress(&mut watcher).await {
            Err(_elapsed) => {}
            Ok(event) => panic!("only entry 3 is committed, yet the watcher got {event:?}"),
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
    async fn a_watcher_whose_prefix_is_quiet_is_not_cut_off_when_the_ring_moves_on() {
        let mut node = Harness::new();
        let hub = node.hub(RingLimits {
            entries: 4,
            bytes: usize::MAX,
        });
        let mut quiet = hub.watch(b"a".to_vec(), None).await.expect("watch");
        node.apply_puts("a", 1);
        assert_eq!(next_change(&mut quiet).await.index, 1);
        // Forty entries of another prefix pass through a ring of four while it waits.
        for _ in 0..10 {
            node.apply_puts("b", 4);
        }
        node.apply_puts("a", 1);
        let change = next_change(&mut quiet).await;
        assert_eq!((change.index, change.key), (42, b"a".to_vec()));
        assert_eq!(quiet.position(), 42);
    }

    #[tokio::test]
    async fn only_the_watchers_of_a_change_are_woken() {
        let mut node = Harness::new();
        let hub = node.hub(RingLimits::default());
        let mut watchers = Vec::new();
        for prefix in ["p/1/", "p/2/", "p/"] {
            let mut watcher = hub
                .watch(prefix.as_bytes().to_vec(), None)
                .await
                .expect("watch");
            assert!(matches!(
                watcher.next().await,
                Ok(WatchEvent::Progress { index: 0 })
            ));
            watchers.push(watcher);
        }
        node.apply(vec![put(1, "p/2/x", "v")]);
        // The feeder wakes the watchers of one entry together, under one lock: once p/2/ and p/
        // are woken, a wake-up of p/1/ would be waiting as a permit too.
        for woken in &watchers[1..] {
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                woken.subscription.wake.notified(),
            )
            .await
            .expect("a watcher of the change is woken");
        }
        // A zero timeout polls the wait once: a stored permit would end it at once.
        let quiet = watchers[0].subscription.wake.notified();
        assert!(
            tokio::time::timeout(std::time::Duration::ZERO, quiet)
                .await
                .is_err(),
            "p/1/ is not woken"
        );
        assert_eq!(next_change(&mut watchers[1]).await.index, 1);
        assert_eq!(next_change(&mut watchers[2]).await.index, 1);
    }

    #[tokio::test]
    async fn a_hub_nobody_watches_reads_nothing_back_and_later_watchers_miss_nothing() {
        let mut node = Harness::new();
        let hub = node.hub(RingLimits::default());
        let mut bounds = hub.shared.bounds.subscribe();
        node.apply_puts("k", 10);
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            bounds.wait_for(|bounds| bounds.next == 11),
        )
        .await
        .expect("the feeder reached the applied index")
        .expect("the hub runs");
        let held = hub.shared.read_ring(|ring| ring.entries.len());
        assert_eq!(held, 0, "no watcher: the ring is not fed from the log");

        let mut from_start = hub.watch(b"k".to_vec(), Some(1)).await.expect("watch");
        let mut from_now = hub.watch(b"k".to_vec(), None).await.expect("watch");
        for index in 1..=10 {
            assert_eq!(next_change(&mut from_start).await.index, index);
        }
        node.apply_puts("k", 2);
        for watcher in [&mut from_start, &mut from_now] {
            assert_eq!(next_change(watcher).await.index, 11);
            assert_eq!(next_change(watcher).await.index, 12);
        }
    }

    #[tokio::test]
    async fn a_node_cut_off_from_the_primary_ends_its_watches_and_opens_none() {
        let mut node = Harness::new();
        node.apply_puts("k", 2);
        let hub = node.hub(RingLimits::default());
        let mut watcher = hub.watch(b"k".to_vec(), Some(1)).await.expect("watch");
        assert_eq!(next_change(&mut watcher).await.index, 1);
        assert_eq!(next_change(&mut watcher).await.index, 2);
        node.view.send_replace(NodeView {
            cut_off: true,
            ..view(node.applied)
        });
        let ended = next_event_after_progress(&mut watcher).await;
        assert!(
            matches!(ended, Ok(Err(Error::Unavailable(_)))),
            "the watch ends so that its client moves: {ended:?}"
        );
        let refused = hub.watch(b"k".to_vec(), None).await.err();
        assert!(
            matches!(refused, Some(Error::Unavailable(_))),
            "{refused:?}"
        );
        node.view.send_replace(view(node.applied));
        let mut back = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                match hub.watch(b"k".to_vec(), Some(2)).await {
                    Ok(watcher) => return watcher,
                    Err(_) => tokio::task::yield_now().await,
                }
            }
        })
        .await
        .expect("the node hears the primary again: watches open");
        assert_eq!(next_change(&mut back).await.index, 2);
    }

    #[tokio::test]
    async fn a_restarted_ring_sends_every_live_watcher_behind_it_to_the_log() {
        let mut node = Harness::new();
        let hub = node.hub(RingLimits::default());
        let mut watcher = hub.watch(b"z".to_vec(), None).await.expect("watch");
        node.apply_puts("k", 1);
        // The log loses entries 2..=3 (as when a snapshot is installed) while the node applies
        // up to 3: the ring restarts after them and no watcher examined them.
        let entries = vec![put(2, "z", "1"), put(3, "z", "2")];
        node.storage.append(&entries).expect("append");
        node.storage.apply(&entries).expect("apply");
        node.storage.compact(3).expect("compact");
        node.applied = 3;
        node.view.send_replace(view(3));
        let ended = next_event_after_progress(&mut watcher).await;
        assert!(
            matches!(
                ended,
                Ok(Err(Error::WatchLagging { .. } | Error::Compacted { .. }))
            ),
            "a watcher may not skip what the ring never held: {ended:?}"
        );
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
