//! Storage engine benchmarks: what group commit costs on this machine's disk.
//!
//! - `storage/append_flush/N`: one sled append of N log entries followed by one flush (fsync),
//!   the unit of work of one group commit. Throughput is in entries, so the three batch sizes
//!   show how much a bigger batch amortizes the fsync.
//! - `storage/append/N`: the same append without the flush, to separate encoding and tree
//!   inserts from the fsync.
//! - `storage/apply/N`: applying N committed puts to the state (one sled transaction over state,
//!   sessions and meta), as the primary does after every commit.
//! - `sled_layout/...`: raw sled, the two log layouts DESIGN §3 asks to compare: one key per
//!   entry against one value per batch, each followed by a flush.
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

/// Raw sled: N entries as N keys, or as one value under the batch's first index.
fn sled_layout(c: &mut Criterion) {
    let mut group = c.benchmark_group("sled_layout");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for batch in [16usize, 256] {
        group.throughput(Throughput::Elements(batch as u64));
        for one_value in [false, true] {
            let name = if one_value {
                "one_value_per_batch_flush"
            } else {
                "one_key_per_entry_flush"
            };
            let dir = tempfile::tempdir().expect("create a temporary directory");
            let db = sled::open(dir.path()).expect("open sled");
            let log = db.open_tree("log").expect("open the log tree");
            let mut next: LogIndex = 1;
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, &batch| {
                b.iter_batched(
                    || {
                        let entries = puts(next, batch);
                        next += batch as u64;
                        entries
                    },
                    |entries| {
                        if one_value {
                            let bytes = postcard::to_stdvec(&entries).expect("encode");
                            log.insert(entries[0].index.to_be_bytes(), bytes)
                                .expect("insert");
                        } else {
                            let mut write = sled::Batch::default();
                            for entry in &entries {
                                let bytes = postcard::to_stdvec(entry).expect("encode");
                                write.insert(&entry.index.to_be_bytes()[..], bytes);
                            }
                            log.apply_batch(write).expect("apply batch");
                        }
                        db.flush().expect("flush");
                    },
                    BatchSize::SmallInput,
                );
            });
        }
    }
    group.finish();
}

criterion_group!(benches, append_and_flush, apply, sled_layout);
criterion_main!(benches);
