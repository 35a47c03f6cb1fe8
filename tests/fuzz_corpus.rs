//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the fuzz entry points of
//! `fuzz/targets.rs` in every `cargo test`, plus every truncation and a seeded set of byte
//! mutations of each corpus file. A decoder of untrusted bytes that panics fails this test.
//!
//! The corpus starts from valid encodings (written by the ignored test below:
//! `cargo test --test fuzz_corpus -- --ignored`); `cargo fuzz run <target> fuzz/corpus/<target>`
//! grows it, and whatever it adds is replayed here from then on.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use replikv::wire::client::{ReadConsistency, Request, Write, WriteConcern};
use replikv::wire::frame::{encode, MAX_PEER_FRAME_BYTES};
use replikv::wire::message::{
    Entry, ExpiredSession, Member, Membership, Message, MessageBody, Operation, Rank, RequestId,
    Session, SnapshotFinish, SnapshotPosition, StagedSnapshot, Versioned, WriteResult,
};

/// A fuzz entry point.
type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 3] = [
    ("client_frame", targets::client_frame),
    ("peer_frame", targets::peer_frame),
    ("config_text", targets::config_text),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .map(|dir| {
            dir.filter_map(|entry| entry.ok().map(|e| e.path()))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter(|path| path.is_file())
        .map(|path| std::fs::read(path).expect("corpus file is readable"))
        .collect()
}

#[test]
fn the_corpus_and_its_mutations_never_panic_a_decoder() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for (target, run) in TARGETS {
        let inputs = corpus(target);
        assert!(!inputs.is_empty(), "the corpus of {target} is empty");
        for input in &inputs {
            run(input);
            for end in 0..input.len() {
                run(&input[..end]);
            }
            for _ in 0..200 {
                let mut mutated = input.clone();
                for _ in 0..rng.gen_range(1..4) {
                    if mutated.is_empty() {
                        break;
                    }
                    let at = rng.gen_range(0..mutated.len());
                    mutated[at] = rng.gen();
                }
                run(&mutated);
            }
        }
    }
}

/// Writes the seed corpus: valid frames of every message kind and sample configurations.
#[test]
#[ignore = "writes fuzz/corpus; run by hand when message types change"]
fn write_seed_corpus() {
    let entry = Entry {
        epoch: 3,
        index: 42,
        operation: Operation::Put {
            key: b"key".to_vec(),
            value: b"value".to_vec(),
        },
        request_id: Some(RequestId {
            client_id: 7,
            sequence: 9,
        }),
    };
    let membership = Membership::new(vec![Member {
        id: 1,
        client_addr: "127.0.0.11:7379".into(),
        peer_addr: "127.0.0.11:7380".into(),
        voter: true,
    }]);
    let rank = Rank {
        last_epoch: 3,
        last_index: 42,
        node_id: 1,
    };
    let bodies = vec![
        MessageBody::Heartbeat {
            commit_index: 41,
            membership: membership.clone(),
            round: 5,
        },
        MessageBody::HeartbeatAck {
            round: 5,
            durable_index: 42,
            last_index: 42,
            verified_index: 40,
        },
        MessageBody::Append {
            base_index: 41,
            base_epoch: 3,
            entries: vec![entry.clone()],
            commit_index: 41,
            catch_up: false,
        },
        MessageBody::AppendAck { match_index: 42 },
        MessageBody::AppendRejected { hint: 40 },
        MessageBody::PreElection { rank },
        MessageBody::PreVote { granted: true },
        MessageBody::Election { rank },
        MessageBody::Alive { rank },
        MessageBody::Vote { granted: false },
        MessageBody::Coordinator,
        MessageBody::StaleEpoch,
        MessageBody::SnapshotAck {
            transfer: 1,
            next_sequence: 0,
        },
        MessageBody::SnapshotOffer { transfer: 2 },
        MessageBody::SnapshotStaged {
            transfer: 2,
            staged: Some(StagedSnapshot {
                begin_index: 40,
                position: SnapshotPosition::State {
                    after: Some(b"key".to_vec()),
                },
            }),
        },
        MessageBody::Append {
            base_index: 42,
            base_epoch: 3,
            entries: vec![Entry {
                index: 43,
                operation: Operation::ExpireSessions(vec![ExpiredSession {
                    client_id: 7,
                    last_sequence: 9,
                }]),
                request_id: None,
                ..entry.clone()
            }],
            commit_index: 42,
            catch_up: true,
        },
        MessageBody::SnapshotChunk {
            transfer: 1,
            sequence: 2,
            begin_index: 40,
            discard_staged: false,
            position: SnapshotPosition::Sessions { after: Some(7) },
            pairs: vec![
                (
                    b"key".to_vec(),
                    Some(Versioned {
                        version: 41,
                        value: b"value".to_vec(),
                    }),
                ),
                (b"gone".to_vec(), None),
            ],
            sessions: vec![
                (
                    7,
                    Some(Session {
                        last_sequence: 9,
                        result: WriteResult {
                            index: 42,
                            existed: true,
                            answer: None,
                        },
                    }),
                ),
                (8, None),
            ],
            finish: Some(SnapshotFinish {
                index: 42,
                epoch: 3,
                membership: membership.clone(),
            }),
        },
    ];
    let requests = vec![
        Request::Get {
            key: b"key".to_vec(),
            consistency: ReadConsistency::Linearizable,
        },
        Request::Scan {
            prefix: b"k".to_vec(),
            start_after: Some(b"k1".to_vec()),
            limit: 10,
            consistency: ReadConsistency::Stale,
        },
        Request::Write {
            request_id: RequestId {
                client_id: 7,
                sequence: 9,
            },
            write: Write::Put {
                key: b"key".to_vec(),
                value: b"value".to_vec(),
            },
            write_concern: WriteConcern::Majority,
            timeout_ms: 5000,
        },
        Request::Write {
            request_id: RequestId {
                client_id: 7,
                sequence: 10,
            },
            write: Write::Delete {
                key: b"key".to_vec(),
            },
            write_concern: WriteConcern::Count(2),
            timeout_ms: 100,
        },
        Request::Status,
        Request::RemoveMember { id: 3 },
    ];
    let write = |target: &str, name: String, bytes: Vec<u8>| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        std::fs::write(dir.join(name), bytes).expect("corpus file");
    };
    for (i, body) in bodies.into_iter().enumerate() {
        let message = Message {
            from: 1,
            to: 2,
            epoch: 3,
            body,
        };
        let frame = encode(&message, MAX_PEER_FRAME_BYTES).expect("encodes");
        write("peer_frame", format!("message-{i:02}"), frame);
    }
    for (i, request) in requests.into_iter().enumerate() {
        let frame = encode(&request, MAX_PEER_FRAME_BYTES).expect("encodes");
        write("client_frame", format!("request-{i:02}"), frame);
    }
    let node = "id = 1\nclient_addr = \"127.0.0.11:7379\"\npeer_addr = \"127.0.0.11:7380\"\n\
                data_dir = \"data\"\ncerts_dir = \"certs\"\n\n[[members]]\nid = 1\n\
                client_addr = \"127.0.0.11:7379\"\npeer_addr = \"127.0.0.11:7380\"\nvoter = true\n";
    let client = "nodes = [\"127.0.0.11:7379\"]\ncerts_dir = \"certs\"\nclient_name = \"admin\"\n\
                  default_write_concern = \"majority\"\ntimeout_ms = 5000\n";
    write("config_text", "node.toml".into(), node.as_bytes().to_vec());
    write(
        "config_text",
        "client.toml".into(),
        client.as_bytes().to_vec(),
    );
    write(
        "config_text",
        "member".into(),
        b"4=127.0.0.14:7379,127.0.0.14:7380".to_vec(),
    );
}
