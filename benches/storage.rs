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
//!
//! Entries carry 100-byte values and 16-byte keys, as `kvctl bench` writes by default. Every
//! bench writes into its own temporary directory, removed at the end.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

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

fn append_and_flush(c: &mut Criterion) {
    let mut group = c.benchmark_group("storage");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for batch in BATCH_SIZES {
        group.throughput(Throughput::Elements(batch as u64));
        for flush in [true, false] {
            let name = if flush { "append_flush" } else { "append" };
            let (_dir, storage) = open_store();
            let mut next: LogIndex = 1;
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, &batch| {
                b.iter_batched(
                    || {
                        let entries = puts(next, batch);
                        next += batch as u64;
                        entries
                    },
                    |entries| {
                        storage.append(&entries).expect("append");
                        if flush {
                            storage.flush().expect("flush");
                        }
                    },
                    BatchSize::SmallInput,
                );
            });
        }
    }
    group.finish();
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("storage");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for batch in BATCH_SIZES {
        group.throughput(Throughput::Elements(batch as u64));
        let (_dir, storage) = open_store();
        let mut next: LogIndex = 1;
        group.bench_with_input(BenchmarkId::new("apply", batch), &batch, |b, &batch| {
            b.iter_batched(
                || {
                    let entries = puts(next, batch);
                    next += batch as u64;
                    entries
                },
                |entries| storage.apply(&entries).expect("apply"),
                BatchSize::SmallInput,
            );
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
    let mut group = c.benchmark_group("sled_layout");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for batch in [16usize, 256] {
        group.throughput(Throughput::Elements(batch as u64));
        for layout in Layout::ALL {
            let dir = tempfile::tempdir().expect("create a temporary directory");
            let db = sled::open(dir.path()).expect("open sled");
            let log = db.open_tree("log").expect("open the log tree");
            let mut next: LogIndex = 1;
            group.bench_with_input(
                BenchmarkId::new(layout.name(), batch),
                &batch,
                |b, &batch| {
                    b.iter_batched(
                        || {
                            let entries = puts(next, batch);
                            next += batch as u64;
                            entries
                        },
                        |entries| {
                            layout.write(&log, &entries);
                            db.flush().expect("flush");
                        },
                        BatchSize::SmallInput,
                    );
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, append_and_flush, apply, sled_layout);
criterion_main!(benches);
