//! Storage engine benchmarks: what group commit costs on this machine's disk.
//!
//! - `storage/append_flush/N`: one sled append of N log entries followed by one flush (fsync),
//!   the unit of work of one group commit. Throughput is in entries, so the three batch sizes
//!   show how much a bigger batch amortizes the fsync.
//! - `storage/append/N`: the same append without the flush, to separate encoding and tree
//!   inserts from the fsync.
//! - `storage/apply/N`: applying N committed puts to the state (one sled transaction over state,
//!   sessions and meta), as the primary does after every commit.
//! - `sled_layout/...`: raw sled, the ways a batch of entries can reach the `log` tree (one sled
//!   batch per entry, one per batch, plain inserts, one value per batch), each followed by a
//!   flush: the evidence for how the log is laid out (docs/BENCHMARKS.md).
//! - `apply_layout/...`: raw sled, the ways a pass of N committed puts can reach the state: one
//!   transaction over three trees (what the engine does), one batch on one tree after plain
//!   reads, and plain inserts (not atomic, so only a floor): the evidence for how the state
//!   should be laid out next (docs/BENCHMARKS.md).
//! - `log_reads/...`: reading back every entry of one append of 4,096 entries (stored as runs of
//!   up to 64 KiB), by one `entry` lookup per index or by one `entries` read: a lookup decodes
//!   its run up to the entry, so the first way costs the square of each run's length. A backup checking a
//!   repeated catch-up append once did it the first way (docs/CHAOS.md).
//!
//! Entries carry 100-byte values and 16-byte keys, as `kvctl bench` writes by default. Every
//! bench writes into its own temporary directory, removed at the end.

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};

use replikv::storage::{SledStorage, Storage};
use replikv::wire::message::{Entry, LogIndex, Operation, RequestId};

const BATCH_SIZES: [usize; 3] = [1, 16, 256];
const VALUE_SIZE: usize = 100;

/// `count` put entries of epoch 1 starting at `first`, each from its own session.
fn puts(first: LogIndex, count: usize) -> Vec<Entry> {
    (first..first + count as u64)
        .map(|index| Entry {
            epoch: 1,
            index,
            operation: Operation::Put {
                key: format!("bench-{:010}", index % 100_000).into_bytes(),
                value: vec![b'v'; VALUE_SIZE],
            },
            request_id: Some(RequestId {
                client_id: index % 64,
                sequence: index,
            }),
        })
        .collect()
}

fn open_store() -> (tempfile::TempDir, SledStorage) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let storage = SledStorage::open(dir.path()).expect("open sled");
    (dir, storage)
}

/// A group with the short sampling every storage bench uses: disk work is slow but steady.
fn storage_group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group
}

/// Benchmarks `run` on successive batches of `batch` put entries, their indexes going on from
/// one batch to the next (so appends and applies always continue the log); throughput in
/// entries.
fn bench_batches(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    batch: usize,
    mut run: impl FnMut(Vec<Entry>),
) {
    group.throughput(Throughput::Elements(batch as u64));
    let mut next: LogIndex = 1;
    group.bench_function(BenchmarkId::new(name, batch), |b| {
        b.iter_batched(
            || {
                let entries = puts(next, batch);
                next += batch as u64;
                entries
            },
            &mut run,
            BatchSize::SmallInput,
        );
    });
}

fn append_and_flush(c: &mut Criterion) {
    let mut group = storage_group(c, "storage");
    for batch in BATCH_SIZES {
        for flush in [true, false] {
            let name = if flush { "append_flush" } else { "append" };
            let (_dir, storage) = open_store();
            bench_batches(&mut group, name, batch, |entries| {
                storage.append(&entries).expect("append");
                if flush {
                    storage.flush().expect("flush");
                }
            });
        }
    }
    group.finish();
}

fn apply(c: &mut Criterion) {
    let mut group = storage_group(c, "storage");
    for batch in BATCH_SIZES {
        let (_dir, storage) = open_store();
        bench_batches(&mut group, "apply", batch, |entries| {
            storage.apply(&entries).expect("apply");
        });
    }
    group.finish();
}

/// How a batch of N entries reaches sled's `log` tree, in the `sled_layout` group.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// One `apply_batch` per entry: what one `Storage::append` per client write amounts to.
    BatchPerEntry,
    /// One `apply_batch` holding every entry under its own key: one `Storage::append` call.
    OneBatch,
    /// One plain `insert` per entry.
    InsertPerEntry,
    /// One `insert` of the whole encoded batch under its first index.
    OneValue,
}

impl Layout {
    const ALL: [Layout; 4] = [
        Layout::BatchPerEntry,
        Layout::OneBatch,
        Layout::InsertPerEntry,
        Layout::OneValue,
    ];

    fn name(self) -> &'static str {
        match self {
            Layout::BatchPerEntry => "batch_per_entry_flush",
            Layout::OneBatch => "one_batch_flush",
            Layout::InsertPerEntry => "insert_per_entry_flush",
            Layout::OneValue => "one_value_flush",
        }
    }

    fn write(self, log: &sled::Tree, entries: &[Entry]) {
        let encode = |entry: &Entry| postcard::to_stdvec(entry).expect("encode");
        match self {
            Layout::BatchPerEntry => {
                for entry in entries {
                    let mut batch = sled::Batch::default();
                    batch.insert(&entry.index.to_be_bytes()[..], encode(entry));
                    log.apply_batch(batch).expect("apply batch");
                }
            }
            Layout::OneBatch => {
                let mut batch = sled::Batch::default();
                for entry in entries {
                    batch.insert(&entry.index.to_be_bytes()[..], encode(entry));
                }
                log.apply_batch(batch).expect("apply batch");
            }
            Layout::InsertPerEntry => {
                for entry in entries {
                    log.insert(entry.index.to_be_bytes(), encode(entry))
                        .expect("insert");
                }
            }
            Layout::OneValue => {
                let bytes = postcard::to_stdvec(entries).expect("encode");
                log.insert(entries[0].index.to_be_bytes(), bytes)
                    .expect("insert");
            }
        }
    }
}

/// Raw sled: the log layouts docs/BENCHMARKS.md compares, each batch followed by one flush.
///
/// sled 0.34 rolls and writes its IO buffer (a `pwrite` and a `sync_file_range`) at the start of
/// every `apply_batch` and every transaction, to make them recoverable atomically; a plain
/// `insert` does not. So the number of batch calls, not the number of entries, is what costs.
fn sled_layout(c: &mut Criterion) {
    let mut group = storage_group(c, "sled_layout");
    for batch in [16usize, 256] {
        for layout in Layout::ALL {
            let dir = tempfile::tempdir().expect("create a temporary directory");
            let db = sled::open(dir.path()).expect("open sled");
            let log = db.open_tree("log").expect("open the log tree");
            bench_batches(&mut group, layout.name(), batch, |entries| {
                layout.write(&log, &entries);
                db.flush().expect("flush");
            });
        }
    }
    group.finish();
}

/// How a pass of committed puts reaches sled's state, in the `apply_layout` group. Each put
/// writes its key (learning whether it existed, as the key count needs) and its client's
/// session; each pass then writes the applied index and the key count.
#[derive(Clone, Copy, Debug)]
enum ApplyLayout {
    /// One transaction over `state`, `sessions` and `meta`, reading each session first: the
    /// engine's apply. A transactional insert reads the old value itself.
    Transaction,
    /// Plain reads of each key first, then one `apply_batch` on a single tree holding the keys,
    /// the sessions and the metadata under prefixes: atomic, with no transaction.
    OneTreeBatch,
    /// Plain inserts into the three trees, each returning the old value: one descent per write,
    /// but a crash can keep part of a pass.
    PlainInserts,
}

impl ApplyLayout {
    const ALL: [ApplyLayout; 3] = [
        ApplyLayout::Transaction,
        ApplyLayout::OneTreeBatch,
        ApplyLayout::PlainInserts,
    ];

    fn name(self) -> &'static str {
        match self {
            ApplyLayout::Transaction => "transaction_over_three_trees",
            ApplyLayout::OneTreeBatch => "one_tree_batch_after_reads",
            ApplyLayout::PlainInserts => "plain_inserts_not_atomic",
        }
    }
}

/// The trees an [`ApplyLayout`] writes.
struct ApplyTrees {
    state: sled::Tree,
    sessions: sled::Tree,
    meta: sled::Tree,
}

/// The key, value and session client of a put entry.
fn put_parts(entry: &Entry) -> (&[u8], &[u8], [u8; 8]) {
    let Operation::Put { key, value } = &entry.operation else {
        unreachable!("the bench applies puts only")
    };
    let client = entry.request_id.map_or(0, |id| id.client_id);
    (key, value, client.to_be_bytes())
}

fn prefixed(prefix: u8, key: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + key.len());
    bytes.push(prefix);
    bytes.extend_from_slice(key);
    bytes
}

impl ApplyLayout {
    fn apply(self, trees: &ApplyTrees, entries: &[Entry]) {
        use sled::Transactional;
        let session = [0u8; 16];
        let last = entries.last().map_or(0, |entry| entry.index).to_be_bytes();
        match self {
            ApplyLayout::Transaction => {
                (&trees.state, &trees.sessions, &trees.meta)
                    .transaction(|(state, sessions, meta)| {
                        let mut created = 0u64;
                        for entry in entries {
                            let (key, value, client) = put_parts(entry);
                            sessions.get(client)?;
                            if state.insert(key, value)?.is_none() {
                                created += 1;
                            }
                            sessions.insert(&client[..], &session[..])?;
                        }
                        meta.insert(b"applied_index", &last[..])?;
                        meta.get(b"key_count")?;
                        meta.insert(b"key_count", &created.to_be_bytes()[..])?;
                        Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                    })
                    .expect("transaction");
            }
            ApplyLayout::OneTreeBatch => {
                let mut batch = sled::Batch::default();
                let mut written = std::collections::HashSet::new();
                let mut created = 0u64;
                for entry in entries {
                    let (key, value, client) = put_parts(entry);
                    let key = prefixed(b'k', key);
                    let existed =
                        written.contains(&key) || trees.state.contains_key(&key).expect("read");
                    if !existed {
                        created += 1;
                    }
                    written.insert(key.clone());
                    batch.insert(key, value);
                    batch.insert(prefixed(b's', &client), &session[..]);
                }
                batch.insert(&b"mapplied_index"[..], &last[..]);
                // The key count is read before it is written, as in the transaction.
                trees.state.get(b"mkey_count").expect("read");
                batch.insert(&b"mkey_count"[..], &created.to_be_bytes()[..]);
                trees.state.apply_batch(batch).expect("apply batch");
            }
            ApplyLayout::PlainInserts => {
                let mut created = 0u64;
                for entry in entries {
                    let (key, value, client) = put_parts(entry);
                    if trees.state.insert(key, value).expect("insert").is_none() {
                        created += 1;
                    }
                    trees.sessions.insert(client, &session[..]).expect("insert");
                }
                trees
                    .meta
                    .insert(b"applied_index", &last[..])
                    .expect("insert");
                trees
                    .meta
                    .insert(b"key_count", &created.to_be_bytes()[..])
                    .expect("insert");
            }
        }
    }
}

/// Raw sled: the state layouts docs/BENCHMARKS.md compares, a pass of puts at a time (no flush:
/// the engine flushes the log, and the apply rides on that flush).
fn apply_layout(c: &mut Criterion) {
    let mut group = storage_group(c, "apply_layout");
    for batch in [16usize, 256] {
        for layout in ApplyLayout::ALL {
            let dir = tempfile::tempdir().expect("create a temporary directory");
            let db = sled::open(dir.path()).expect("open sled");
            let open = |name: &str| db.open_tree(name).expect("open a tree");
            let trees = ApplyTrees {
                state: open("state"),
                sessions: open("sessions"),
                meta: open("meta"),
            };
            bench_batches(&mut group, layout.name(), batch, |entries| {
                layout.apply(&trees, &entries);
            });
        }
    }
    group.finish();
}

/// Entries that `log_reads` stores with one append.
const APPENDED_ENTRIES: usize = 4096;

fn log_reads(c: &mut Criterion) {
    let mut group = storage_group(c, "log_reads");
    let (_dir, storage) = open_store();
    storage.append(&puts(1, APPENDED_ENTRIES)).expect("append");
    let last = APPENDED_ENTRIES as LogIndex;
    group.throughput(Throughput::Elements(APPENDED_ENTRIES as u64));
    group.bench_function(BenchmarkId::new("entry_per_index", APPENDED_ENTRIES), |b| {
        b.iter(|| {
            for index in 1..=last {
                storage.entry(index).expect("entry").expect("stored");
            }
        })
    });
    group.bench_function(BenchmarkId::new("one_range_read", APPENDED_ENTRIES), |b| {
        b.iter(|| {
            let entries = storage.entries(1, last, usize::MAX).expect("entries");
            assert_eq!(entries.len(), APPENDED_ENTRIES);
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    append_and_flush,
    apply,
    sled_layout,
    apply_layout,
    log_reads
);
criterion_main!(benches);
