//! Codec benchmarks: framing an append message for the wire and decoding it on the backup.
//!
//! `codec/encode/N` and `codec/decode/N` measure `wire::frame::encode` and `wire::frame::decode`
//! of one `Append` carrying N put entries with 100-byte values (64 is a typical live batch under
//! load, 1024 a catch-up batch). Throughput is in entries.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use replikv::wire::frame::{self, MAX_PEER_FRAME_BYTES};
use replikv::wire::message::{Entry, Message, MessageBody, Operation, RequestId};

fn append(entries: u64) -> Message {
    let entries = (1..=entries)
        .map(|index| Entry {
            epoch: 3,
            index: 1_000_000 + index,
            operation: Operation::Put {
                key: format!("bench-{:012}", index * 7919 % 100_000).into_bytes(),
                value: vec![b'v'; 100],
            },
            request_id: Some(RequestId {
                client_id: 0x9e37_79b9_7f4a_7c15 ^ index,
                sequence: index,
            }),
        })
        .collect();
    Message {
        from: 1,
        to: 2,
        epoch: 3,
        body: MessageBody::Append {
            base_index: 1_000_000,
            base_epoch: 3,
            entries,
            commit_index: 999_990,
            catch_up: false,
        },
    }
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for entries in [64u64, 1024] {
        let message = append(entries);
        let framed = frame::encode(&message, MAX_PEER_FRAME_BYTES).expect("encode");
        group.throughput(Throughput::Elements(entries));
        group.bench_with_input(
            BenchmarkId::new("encode", entries),
            &message,
            |b, message| {
                b.iter(|| frame::encode(black_box(message), MAX_PEER_FRAME_BYTES).expect("encode"))
            },
        );
        group.bench_with_input(BenchmarkId::new("decode", entries), &framed, |b, framed| {
            // The frame's body, without its 4-byte length prefix, as the reader hands it over.
            b.iter(|| frame::decode::<Message>(black_box(&framed[4..])).expect("decode"))
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
