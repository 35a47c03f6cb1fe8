//! The storage test suite, run against both engines.
//!
//! Every function taking `&dyn Storage` is one contract test; `engine_suite!` turns the list into
//! `#[test]`s for each engine, so both engines answer to exactly the same checks. Durability is
//! engine-specific (a simulated crash for memory, drop and reopen for sled) and tested below the
//! shared list, and a property test runs random operation sequences on both engines and requires
//! identical answers.

use std::collections::BTreeSet;

use super::{Meta, RolledBack, Storage};
use crate::error::Error;
use crate::wire::message::{
    Answer, Change, Entry, Epoch, LogIndex, Member, Membership, Operation, RequestId, Session,
    SnapshotFinish, SnapshotPosition, StagedSnapshot, Versioned, WriteResult,
};

// --- entry builders ---

fn put(epoch: Epoch, index: LogIndex, key: &str, value: &str) -> Entry {
    Entry {
        epoch,
        index,
        operation: Operation::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        },
        request_id: None,
    }
}

fn delete(epoch: Epoch, index: LogIndex, key: &str) -> Entry {
    Entry {
        epoch,
        index,
        operation: Operation::Delete {
            key: key.as_bytes().to_vec(),
        },
        request_id: None,
    }
}

fn noop(epoch: Epoch, index: LogIndex) -> Entry {
    Entry {
        epoch,
        index,
        operation: Operation::Noop,
        request_id: None,
    }
}

fn with_request(mut entry: Entry, client_id: u64, sequence: u64) -> Entry {
    entry.request_id = Some(RequestId {
        client_id,
        sequence,
    });
    entry
}

fn membership(ids: &[u64]) -> Membership {
    Membership::new(
        ids.iter()
            .map(|&id| Member {
                id,
                client_addr: format!("127.0.0.{id}:7000"),
                peer_addr: format!("127.0.0.{id}:7001"),
                voter: true,
            })
            .collect(),
    )
}

fn result(index: LogIndex, existed: bool) -> WriteResult {
    WriteResult {
        index,
        existed,
        answer: None,
    }
}

fn batch(epoch: Epoch, index: LogIndex, changes: Vec<Change>, answer: Option<Answer>) -> Entry {
    Entry {
        epoch,
        index,
        operation: Operation::Batch { changes, answer },
        request_id: None,
    }
}

fn change_put(key: &str, value: &str) -> Change {
    Change::Put {
        key: bytes(key),
        value: bytes(value),
    }
}

fn bytes(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

fn versioned(version: LogIndex, text: &str) -> Versioned {
    Versioned {
        version,
        value: bytes(text),
    }
}

fn is_storage_error<T: std::fmt::Debug>(outcome: crate::Result<T>) -> bool {
    matches!(outcome, Err(Error::Storage(_)))
}

/// Appends `entries` and applies them, as a primary does.
fn append_and_apply(storage: &dyn Storage, entries: &[Entry]) -> Vec<WriteResult> {
    storage.append(entries).expect("append");
    storage.apply(entries).expect("apply")
}

// --- the shared contract ---

fn new_store_is_empty(storage: &dyn Storage) {
    assert_eq!(storage.last().unwrap(), (0, 0));
    assert_eq!(storage.entry(1).unwrap(), None);
    assert_eq!(storage.entries(1, 10, usize::MAX).unwrap(), vec![]);
    assert_eq!(
        storage.meta().unwrap(),
        Meta {
            log_start: 1,
            ..Meta::default()
        }
    );
    assert_eq!(storage.rolled_back().unwrap(), vec![]);
    assert_eq!(storage.get(b"k").unwrap(), None);
    assert_eq!(storage.session(1).unwrap(), None);
}

fn append_then_read(storage: &dyn Storage) {
    let log = vec![noop(1, 1), put(1, 2, "a", "1"), put(2, 3, "b", "2")];
    storage.append(&log[..1]).unwrap();
    storage.append(&log[1..]).unwrap();
    storage.append(&[]).unwrap();

    assert_eq!(storage.last().unwrap(), (2, 3));
    assert_eq!(storage.entry(0).unwrap(), None);
    assert_eq!(storage.entry(2).unwrap(), Some(log[1].clone()));
    assert_eq!(storage.entry(4).unwrap(), None);
    assert_eq!(storage.entries(1, 3, usize::MAX).unwrap(), log);
    assert_eq!(storage.entries(2, 99, usize::MAX).unwrap(), log[1..]);
    assert_eq!(storage.entries(0, 1, usize::MAX).unwrap(), log[..1]);
    assert_eq!(storage.entries(3, 2, usize::MAX).unwrap(), vec![]);
    assert_eq!(storage.entries(4, 9, usize::MAX).unwrap(), vec![]);
}

fn append_refuses_what_does_not_continue_the_log(storage: &dyn Storage) {
    assert!(
        is_storage_error(storage.append(&[noop(1, 2)])),
        "gap after an empty log"
    );
    assert!(
        is_storage_error(storage.append(&[noop(1, 1), noop(1, 3)])),
        "gap inside a batch"
    );
    assert_eq!(
        storage.last().unwrap(),
        (0, 0),
        "a refused batch writes nothing"
    );

    storage.append(&[noop(2, 1)]).unwrap();
    assert!(is_storage_error(storage.append(&[noop(2, 1)])), "overlap");
    assert!(
        is_storage_error(storage.append(&[noop(1, 2)])),
        "epoch going back"
    );
    assert_eq!(storage.last().unwrap(), (2, 1));
}

fn entries_stop_at_max_bytes(storage: &dyn Storage) {
    let log: Vec<Entry> = (1..=4)
        .map(|index| put(1, index, "key", &"v".repeat(100)))
        .collect();
    storage.append(&log).unwrap();
    let size = postcard::to_stdvec(&log[0]).unwrap().len();

    assert_eq!(storage.entries(1, 4, 2 * size).unwrap(), log[..2]);
    assert_eq!(
        storage.entries(1, 4, 2 * size + size - 1).unwrap(),
        log[..2]
    );
    assert_eq!(storage.entries(2, 4, 4 * size).unwrap(), log[1..]);
    assert_eq!(
        storage.entries(3, 4, 0).unwrap(),
        log[2..3],
        "one entry even if it alone is over the limit"
    );
}

/// One append of many entries, then a compaction and a truncation that both fall inside it: the
/// entries on either side of each cut stay whole and readable, and the byte count follows.
fn compacting_and_truncating_inside_one_append(storage: &dyn Storage) {
    let log: Vec<Entry> = (1..=8)
        .map(|index| put(1, index, &format!("k{index}"), &"v".repeat(index as usize)))
        .collect();
    let size = |entries: &[Entry]| -> u64 {
        entries
            .iter()
            .map(|entry| postcard::to_stdvec(entry).unwrap().len() as u64)
            .sum()
    };
    storage.append(&log).unwrap();
    storage.apply(&log[..6]).unwrap();
    assert_eq!(storage.log_bytes().unwrap(), size(&log));

    storage.compact(3).unwrap();
    assert_eq!(storage.entry(3).unwrap(), None);
    assert_eq!(storage.entry(4).unwrap(), Some(log[3].clone()));
    assert_eq!(storage.entries(1, 99, usize::MAX).unwrap(), log[3..]);
    assert_eq!(storage.log_bytes().unwrap(), size(&log[3..]));
    assert_eq!(storage.meta().unwrap().log_start, 4);

    assert_eq!(storage.truncate_suffix(7, 2).unwrap(), log[6..]);
    assert_eq!(storage.last().unwrap(), (1, 6));
    assert_eq!(storage.entries(4, 99, usize::MAX).unwrap(), log[3..6]);
    assert_eq!(storage.log_bytes().unwrap(), size(&log[3..6]));

    let next = vec![noop(2, 7), noop(2, 8)];
    storage.append(&next).unwrap();
    storage.compact(5).unwrap();
    assert_eq!(storage.entry(5).unwrap(), None);
    assert_eq!(storage.entry(6).unwrap(), Some(log[5].clone()));
    assert_eq!(storage.entries(6, 99, usize::MAX).unwrap()[1..], next[..]);
    assert_eq!(
        storage.entries(7, 8, 0).unwrap(),
        next[..1],
        "at least one entry, even over the limit"
    );
    assert_eq!(storage.log_bytes().unwrap(), size(&log[5..6]) + size(&next));
    assert_eq!(storage.last().unwrap(), (2, 8));
}

fn truncate_suffix_moves_entries_to_rollback(storage: &dyn Storage) {
    let log: Vec<Entry> = (1..=5u64)
        .map(|index| put(index.div_ceil(2), index, "k", "v"))
        .collect();
    storage.append(&log).unwrap();

    assert_eq!(storage.truncate_suffix(4, 7).unwrap(), log[3..]);
    assert_eq!(storage.last().unwrap(), (2, 3));
    assert_eq!(storage.entry(4).unwrap(), None);
    assert_eq!(storage.entries(1, 9, usize::MAX).unwrap(), log[..3]);

    // The log continues from the truncation point, in a newer epoch.
    let replacement = noop(5, 4);
    storage.append(std::slice::from_ref(&replacement)).unwrap();
    assert_eq!(storage.entry(4).unwrap(), Some(replacement.clone()));

    // Truncating past the end changes nothing; truncating before the log is refused.
    assert_eq!(storage.truncate_suffix(6, 8).unwrap(), vec![]);
    assert!(is_storage_error(storage.truncate_suffix(0, 8)));
    assert_eq!(storage.last().unwrap(), (5, 4));

    // Truncating everything leaves an empty log at (0, 0).
    assert_eq!(storage.truncate_suffix(1, 8).unwrap().len(), 4);
    assert_eq!(storage.last().unwrap(), (0, 0));

    let mut expected: Vec<RolledBack> = log[3..]
        .iter()
        .map(|entry| RolledBack {
            rolled_back_in_epoch: 7,
            entry: entry.clone(),
        })
        .collect();
    expected.extend(
        log[..3]
            .iter()
            .chain([&replacement])
            .map(|entry| RolledBack {
                rolled_back_in_epoch: 8,
                entry: entry.clone(),
            }),
    );
    assert_eq!(storage.rolled_back().unwrap(), expected, "oldest first");
}

fn meta_round_trips(storage: &dyn Storage) {
    storage.set_epoch_and_vote(3, Some(2)).unwrap();
    storage.set_commit_index(17).unwrap();
    storage.set_membership(&membership(&[1, 2, 3])).unwrap();
    assert_eq!(
        storage.meta().unwrap(),
        Meta {
            epoch: 3,
            vote: Some(2),
            commit_index: 17,
            applied_index: 0,
            membership: Some(membership(&[1, 2, 3])),
            log_start: 1,
            snapshot_epoch: 0,
            key_count: 0,
        }
    );

    storage.set_epoch_and_vote(4, None).unwrap();
    storage.set_membership(&membership(&[1, 2])).unwrap();
    let meta = storage.meta().unwrap();
    assert_eq!((meta.epoch, meta.vote), (4, None));
    assert_eq!(meta.membership, Some(membership(&[1, 2])));
}

fn apply_changes_state_and_reports_results(storage: &dyn Storage) {
    let log = vec![
        noop(1, 1),
        put(1, 2, "a", "1"),
        put(1, 3, "b", "2"),
        put(1, 4, "a", "3"),
        delete(1, 5, "b"),
        delete(1, 6, "missing"),
        Entry {
            epoch: 1,
            index: 7,
            operation: Operation::Membership(membership(&[1])),
            request_id: None,
        },
    ];
    storage.append(&log).unwrap();
    let mut results = storage.apply(&log[..3]).unwrap();
    results.extend(storage.apply(&log[3..]).unwrap());

    assert_eq!(
        results,
        vec![
            result(1, false),
            result(2, false),
            result(3, false),
            result(4, true),
            result(5, true),
            result(6, false),
            result(7, false),
        ]
    );
    assert_eq!(storage.get(b"a").unwrap(), Some(bytes("3")));
    assert_eq!(storage.get(b"b").unwrap(), None);
    assert_eq!(storage.meta().unwrap().applied_index, 7);
    assert_eq!(storage.apply(&[]).unwrap(), vec![]);
    assert_eq!(storage.meta().unwrap().applied_index, 7);
}

fn apply_refuses_gaps_without_changing_anything(storage: &dyn Storage) {
    let log = vec![
        put(1, 1, "a", "1"),
        put(1, 2, "b", "2"),
        put(1, 3, "c", "3"),
    ];
    storage.append(&log).unwrap();

    assert!(
        is_storage_error(storage.apply(&log[1..2])),
        "starts after a gap"
    );
    assert!(
        is_storage_error(storage.apply(&[log[0].clone(), log[2].clone()])),
        "gap inside the batch"
    );
    assert_eq!(
        storage.get(b"a").unwrap(),
        None,
        "a refused batch applies nothing"
    );
    assert_eq!(storage.meta().unwrap().applied_index, 0);

    storage.apply(&log[..1]).unwrap();
    assert!(is_storage_error(storage.apply(&log[..1])), "applying twice");
    assert_eq!(storage.meta().unwrap().applied_index, 1);
}

fn retried_request_is_applied_once(storage: &dyn Storage) {
    let first = with_request(put(1, 1, "k", "first"), 7, 1);
    let retry = with_request(put(1, 2, "k", "retry"), 7, 1);
    let results = append_and_apply(storage, &[first, retry]);
    assert_eq!(results, vec![result(1, false), result(1, false)]);
    assert_eq!(storage.get(b"k").unwrap(), Some(bytes("first")));
    assert_eq!(
        storage.session(7).unwrap(),
        Some(Session {
            last_sequence: 1,
            result: result(1, false),
        })
    );

    // A retry in a later batch, and after a newer request, is still never applied.
    let retry_later = with_request(put(1, 3, "k", "again"), 7, 1);
    assert_eq!(
        append_and_apply(storage, &[retry_later]),
        vec![result(1, false)]
    );
    let newer = with_request(delete(1, 4, "k"), 7, 2);
    assert_eq!(append_and_apply(storage, &[newer]), vec![result(4, true)]);
    let stale = with_request(put(1, 5, "k", "stale"), 7, 1);
    assert_eq!(
        append_and_apply(storage, &[stale]),
        vec![result(4, true)],
        "an older sequence gets the session's latest result"
    );
    assert_eq!(storage.get(b"k").unwrap(), None);

    // Sessions are per client, and writes without a request id always apply.
    let other_client = with_request(put(1, 6, "k", "other"), 8, 1);
    let anonymous = put(1, 7, "k", "anonymous");
    assert_eq!(
        append_and_apply(storage, &[other_client, anonymous]),
        vec![result(6, false), result(7, true)]
    );
    assert_eq!(storage.get(b"k").unwrap(), Some(bytes("anonymous")));
    assert_eq!(
        storage.session(7).unwrap().map(|s| s.last_sequence),
        Some(2)
    );
    assert_eq!(
        storage.session(8).unwrap().map(|s| s.last_sequence),
        Some(1)
    );
    assert_eq!(storage.session(9).unwrap(), None);
    assert_eq!(storage.meta().unwrap().applied_index, 7);
}

/// A batch is one entry: every change lands together, in order; its result says whether its first
/// key existed and carries the primary's answer, which a retry gets back from the session.
fn batches_apply_together_and_keep_their_answer(storage: &dyn Storage) {
    append_and_apply(storage, &[put(1, 1, "b", "old"), put(1, 2, "c", "gone")]);
    let changes = vec![
        change_put("a", "1"),
        change_put("b", "2"),
        Change::Delete { key: bytes("c") },
        change_put("a", "3"),
    ];
    let answer = Some(Answer::Previous(Some(bytes("old"))));
    let first = with_request(batch(1, 3, changes, answer.clone()), 9, 1);
    let expected = WriteResult {
        index: 3,
        existed: false,
        answer: answer.clone(),
    };
    assert_eq!(append_and_apply(storage, &[first]), vec![expected.clone()]);
    assert_eq!(storage.get(b"a").unwrap(), Some(bytes("3")));
    assert_eq!(storage.get(b"b").unwrap(), Some(bytes("2")));
    assert_eq!(storage.get(b"c").unwrap(), None);
    assert_eq!(
        storage.session(9).unwrap().map(|session| session.result),
        Some(expected.clone())
    );
    // A retry logged again changes nothing and answers the first answer.
    let retry = with_request(
        batch(
            1,
            4,
            vec![change_put("a", "retry")],
            Some(Answer::Integer(5)),
        ),
        9,
        1,
    );
    assert_eq!(append_and_apply(storage, &[retry]), vec![expected]);
    assert_eq!(storage.get(b"a").unwrap(), Some(bytes("3")));
    // An empty batch (a condition that failed) still records its answer.
    let refused = with_request(batch(1, 5, vec![], Some(Answer::Applied(false))), 9, 2);
    assert_eq!(
        append_and_apply(storage, &[refused]),
        vec![WriteResult {
            index: 5,
            existed: false,
            answer: Some(Answer::Applied(false)),
        }]
    );
    assert_eq!(storage.meta().unwrap().applied_index, 5);
}

fn scan_by_prefix_with_limit(storage: &dyn Storage) {
    let keys = ["a", "user:3", "user:1", "user:2", "userx", "v"];
    let log: Vec<Entry> = keys
        .iter()
        .zip(1..)
        .map(|(key, index)| put(1, index, key, &format!("value of {key}")))
        .collect();
    append_and_apply(storage, &log);

    let pairs = storage.scan(b"user:", 10).unwrap();
    let expected: Vec<(Vec<u8>, Vec<u8>)> = ["user:1", "user:2", "user:3"]
        .iter()
        .map(|key| (bytes(key), bytes(&format!("value of {key}"))))
        .collect();
    assert_eq!(pairs, expected);
    assert_eq!(storage.scan(b"user:", 2).unwrap(), expected[..2]);
    assert_eq!(storage.scan(b"user:", 0).unwrap(), vec![]);
    assert_eq!(storage.scan(b"", 100).unwrap().len(), keys.len());
    assert_eq!(storage.scan(b"zzz", 100).unwrap(), vec![]);
}

/// System records (users, tokens, expiries) live in the state but never appear in a scan whose
/// prefix lies outside the system keyspace (every client scan: the service refuses the others),
/// whatever the prefix, while a direct read of the state still sees them.
fn scans_skip_the_system_keyspace(storage: &dyn Storage) {
    let system = super::system_keys::system_key("user", b"alice");
    let log = vec![
        put(1, 1, "a", "1"),
        Entry {
            epoch: 1,
            index: 2,
            operation: Operation::Put {
                key: system.clone(),
                value: bytes("record"),
            },
            request_id: None,
        },
        Entry {
            epoch: 1,
            index: 3,
            operation: Operation::Put {
                key: b"\xff\x01after the system keyspace".to_vec(),
                value: bytes("3"),
            },
            request_id: None,
        },
    ];
    append_and_apply(storage, &log);
    let keys: Vec<Vec<u8>> = storage
        .scan(b"", 100)
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(
        keys,
        vec![bytes("a"), b"\xff\x01after the system keyspace".to_vec()]
    );
    assert_eq!(storage.scan(b"\xff", 100).unwrap().len(), 1);
    assert_eq!(storage.get(&system).unwrap(), Some(bytes("record")));
    // A scan inside the system keyspace (the node reading one family) returns its records.
    let family = super::system_keys::system_family_prefix("user");
    assert_eq!(
        storage.scan(&family, 100).unwrap(),
        vec![(system, bytes("record"))]
    );
}

fn scan_pages_are_bounded_and_continue_after_their_last_key(storage: &dyn Storage) {
    let keys: Vec<String> = (0..25).map(|i| format!("user:{i:02}")).collect();
    let mut log: Vec<Entry> = keys
        .iter()
        .zip(1..)
        .map(|(key, index)| put(1, index, key, "0123456789"))
        .collect();
    log.push(put(1, 26, "a", "outside the prefix"));
    log.push(put(1, 27, "v", "outside the prefix"));
    append_and_apply(storage, &log);
    let pair_bytes = super::framed_pair_bytes(b"user:00", b"0123456789");

    // Capped by pairs: 10, then 10, then the last 5 with nothing more.
    let first = storage.scan_page(b"user:", None, 10, usize::MAX).unwrap();
    assert_eq!(first.pairs.len(), 10);
    assert!(first.more);
    let after = first.pairs.last().map(|(key, _)| key.clone()).unwrap();
    let second = storage
        .scan_page(b"user:", Some(&after), 10, usize::MAX)
        .unwrap();
    assert_eq!(second.pairs.first().unwrap().0, bytes("user:10"));
    let after = second.pairs.last().map(|(key, _)| key.clone()).unwrap();
    let third = storage
        .scan_page(b"user:", Some(&after), 10, usize::MAX)
        .unwrap();
    assert_eq!(third.pairs.len(), 5);
    assert!(!third.more, "nothing of the prefix is left");

    // Capped by bytes: as many whole pairs as fit, and at least one whatever the budget.
    let page = storage
        .scan_page(b"user:", None, 100, 3 * pair_bytes + 1)
        .unwrap();
    assert_eq!(page.pairs.len(), 3);
    assert!(page.more);
    let page = storage.scan_page(b"user:", None, 100, 1).unwrap();
    assert_eq!(page.pairs.len(), 1);

    // Walking every page returns every key once, in order.
    let mut walked = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = storage
            .scan_page(b"user:", after.as_deref(), 7, 4 * pair_bytes)
            .unwrap();
        assert!(page.pairs.len() <= 4);
        walked.extend(page.pairs.iter().map(|(key, _)| key.clone()));
        if !page.more {
            break;
        }
        after = page.pairs.last().map(|(key, _)| key.clone());
    }
    let expected: Vec<Vec<u8>> = keys.iter().map(|key| bytes(key)).collect();
    assert_eq!(walked, expected);

    // A continuation before the prefix starts at the prefix; one past it finds nothing.
    let page = storage
        .scan_page(b"user:", Some(b"a"), 1, usize::MAX)
        .unwrap();
    assert_eq!(page.pairs[0].0, bytes("user:00"));
    let page = storage
        .scan_page(b"user:", Some(b"user;"), 10, usize::MAX)
        .unwrap();
    assert_eq!(page, super::ScanPage::default());
    // No pairs asked for: none served, but the answer says some remain.
    let page = storage.scan_page(b"user:", None, 0, usize::MAX).unwrap();
    assert!(page.pairs.is_empty() && page.more);
}

fn sessions_are_read_in_pages(storage: &dyn Storage) {
    let log: Vec<Entry> = (1..=5)
        .map(|index| with_request(put(1, index, "k", "v"), 10 * index, 1))
        .collect();
    append_and_apply(storage, &log);
    let ids = |sessions: Vec<(u64, Session)>| -> Vec<u64> {
        sessions.into_iter().map(|(id, _)| id).collect()
    };
    assert_eq!(ids(storage.sessions_after(None, 2).unwrap()), vec![10, 20]);
    assert_eq!(
        ids(storage.sessions_after(Some(20), 2).unwrap()),
        vec![30, 40]
    );
    assert_eq!(ids(storage.sessions_after(Some(45), 9).unwrap()), vec![50]);
    assert_eq!(
        ids(storage.sessions_after(Some(u64::MAX), 9).unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(storage.sessions().unwrap().len(), 5);
    assert_eq!(storage.session_count().unwrap(), 5);
}

fn the_size_counts_sessions_and_grows_with_the_state(storage: &dyn Storage) {
    assert_eq!(storage.session_count().unwrap(), 0);
    let empty = storage.size_bytes().unwrap();
    let value = "v".repeat(64 * 1024);
    let log: Vec<Entry> = (1..=3)
        .map(|index| with_request(put(1, index, &format!("k{index}"), &value), index, 1))
        .collect();
    append_and_apply(storage, &log);
    storage.flush().unwrap();
    assert_eq!(storage.session_count().unwrap(), 3);
    let full = storage.size_bytes().unwrap();
    assert!(
        full >= empty + 3 * 64 * 1024,
        "three 64 KiB values in log and state: {empty} bytes before, {full} after"
    );
}

fn expiring_sessions_removes_those_unchanged_since(storage: &dyn Storage) {
    let log = vec![
        with_request(put(1, 1, "a", "1"), 7, 1),
        with_request(put(1, 2, "b", "1"), 8, 1),
        with_request(put(1, 3, "b", "2"), 8, 2),
    ];
    append_and_apply(storage, &log);
    let expire = Entry {
        epoch: 1,
        index: 4,
        operation: Operation::ExpireSessions(vec![
            crate::wire::message::ExpiredSession {
                client_id: 7,
                last_sequence: 1,
            },
            // Chosen when client 8 was at sequence 1; it wrote since, so it stays.
            crate::wire::message::ExpiredSession {
                client_id: 8,
                last_sequence: 1,
            },
            crate::wire::message::ExpiredSession {
                client_id: 9,
                last_sequence: 1,
            },
        ]),
        request_id: None,
    };
    assert_eq!(append_and_apply(storage, &[expire]), vec![result(4, false)]);
    assert_eq!(storage.session(7).unwrap(), None);
    assert_eq!(
        storage.session(8).unwrap().map(|s| s.last_sequence),
        Some(2)
    );
    assert_eq!(storage.meta().unwrap().applied_index, 4);
    // Client 7's old request is now new: it applies again.
    let retry = with_request(put(1, 5, "a", "again"), 7, 1);
    assert_eq!(append_and_apply(storage, &[retry]), vec![result(5, true)]);
    assert_eq!(storage.get(b"a").unwrap(), Some(bytes("again")));
}

fn a_staged_snapshot_replaces_the_state_and_the_sessions(storage: &dyn Storage) {
    let log = vec![
        with_request(put(1, 1, "old", "1"), 7, 1),
        with_request(put(1, 2, "kept", "1"), 8, 1),
    ];
    append_and_apply(storage, &log);
    let session = |sequence, index| Session {
        last_sequence: sequence,
        result: result(index, false),
    };
    storage.begin_snapshot().unwrap();
    storage
        .stage_snapshot(
            &[
                (bytes("a"), Some(versioned(11, "1"))),
                (bytes("b"), Some(versioned(12, "2"))),
            ],
            &[(20, Some(session(3, 40))), (21, Some(session(1, 41)))],
            &staged(30, "b"),
        )
        .unwrap();
    // A later chunk deletes what an earlier one staged, and changes what it sent.
    storage
        .stage_snapshot(
            &[(bytes("b"), None), (bytes("c"), Some(versioned(13, "3")))],
            &[(21, None), (20, Some(session(4, 50)))],
            &staged(30, "c"),
        )
        .unwrap();
    let finish = SnapshotFinish {
        index: 60,
        epoch: 2,
        membership: membership(&[1, 2]),
    };
    storage.install_snapshot(&finish, 2, 2).unwrap();
    assert_eq!(
        storage.scan(b"", 10).unwrap(),
        vec![(bytes("a"), bytes("1")), (bytes("c"), bytes("3"))]
    );
    // Each key keeps the version the snapshot carried.
    assert_eq!(
        storage.get_versioned(b"a").unwrap(),
        Some(versioned(11, "1"))
    );
    assert_eq!(
        storage.get_versioned(b"c").unwrap(),
        Some(versioned(13, "3"))
    );
    assert_eq!(
        storage.state_chunk(None, usize::MAX).unwrap().pairs,
        vec![
            (bytes("a"), versioned(11, "1")),
            (bytes("c"), versioned(13, "3"))
        ]
    );
    assert_eq!(storage.sessions().unwrap(), vec![(20, session(4, 50))]);
    let meta = storage.meta().unwrap();
    assert_eq!((meta.applied_index, meta.log_start), (60, 61));
    // The next transfer starts from nothing staged.
    storage.begin_snapshot().unwrap();
    storage.stage_snapshot(&[], &[], &staged(60, "")).unwrap();
    let finish = SnapshotFinish {
        index: 70,
        ..finish
    };
    storage.install_snapshot(&finish, 60, 2).unwrap();
    assert_eq!(storage.scan(b"", 10).unwrap(), vec![]);
    assert_eq!(storage.sessions().unwrap(), vec![]);
}

/// A staging record at `begin_index`, with the state scanned up to `after`.
fn staged(begin_index: LogIndex, after: &str) -> StagedSnapshot {
    StagedSnapshot {
        begin_index,
        position: SnapshotPosition::State {
            after: Some(bytes(after)),
        },
    }
}

fn the_staging_record_follows_the_staged_chunks(storage: &dyn Storage) {
    assert_eq!(storage.staged_snapshot().unwrap(), None);
    storage.begin_snapshot().unwrap();
    assert_eq!(storage.staged_snapshot().unwrap(), None);
    let pair = |key: &str| (bytes(key), Some(versioned(1, "v")));
    storage
        .stage_snapshot(&[pair("a")], &[], &staged(10, "a"))
        .unwrap();
    assert_eq!(storage.staged_snapshot().unwrap(), Some(staged(10, "a")));
    // A transfer resumed by a primary that applied less lowers the begin index.
    storage
        .stage_snapshot(&[pair("b")], &[], &staged(8, "b"))
        .unwrap();
    assert_eq!(storage.staged_snapshot().unwrap(), Some(staged(8, "b")));
    // A new transfer from scratch discards the staging and its record.
    storage.begin_snapshot().unwrap();
    assert_eq!(storage.staged_snapshot().unwrap(), None);
    storage
        .stage_snapshot(&[pair("c")], &[], &staged(20, "c"))
        .unwrap();
    let finish = SnapshotFinish {
        index: 30,
        epoch: 2,
        membership: membership(&[1, 2]),
    };
    storage.install_snapshot(&finish, 0, 2).unwrap();
    assert_eq!(
        storage.staged_snapshot().unwrap(),
        None,
        "installing uses the staging up"
    );
    assert_eq!(
        storage.scan(b"", 10).unwrap(),
        vec![(bytes("c"), bytes("v"))]
    );
}

fn truncating_applied_entries_rebuilds_the_state(storage: &dyn Storage) {
    let log = vec![
        with_request(put(1, 1, "a", "1"), 7, 1),
        with_request(put(1, 2, "b", "2"), 7, 2),
        with_request(put(1, 3, "a", "3"), 7, 3),
        with_request(delete(1, 4, "b"), 8, 1),
    ];
    append_and_apply(storage, &log);

    storage.truncate_suffix(3, 2).unwrap();
    assert_eq!(storage.meta().unwrap().applied_index, 2);
    assert_eq!(storage.get(b"a").unwrap(), Some(bytes("1")));
    assert_eq!(storage.get(b"b").unwrap(), Some(bytes("2")));
    assert_eq!(
        storage.session(7).unwrap(),
        Some(Session {
            last_sequence: 2,
            result: result(2, false),
        })
    );
    assert_eq!(storage.session(8).unwrap(), None);

    // The rolled-back request of client 7 can now be applied from the new primary's log.
    let replacement = with_request(put(2, 3, "a", "new"), 7, 3);
    assert_eq!(
        append_and_apply(storage, &[replacement]),
        vec![result(3, true)]
    );
    assert_eq!(storage.get(b"a").unwrap(), Some(bytes("new")));

    // Rolling back every entry leaves the state of an empty log.
    storage.truncate_suffix(1, 3).unwrap();
    assert_eq!(storage.meta().unwrap().applied_index, 0);
    assert_eq!(storage.scan(b"", 10).unwrap(), vec![]);
    assert_eq!(storage.session(7).unwrap(), None);
}

/// A key's version is the index of the entry that last put it, a put or a batch alike; a retry
/// that changes nothing leaves it, a delete removes it, and a truncation that rebuilds the state
/// gives back the versions of the entries that remain.
fn a_key_takes_the_index_of_the_entry_that_put_it_as_its_version(storage: &dyn Storage) {
    let log = vec![
        with_request(put(1, 1, "a", "1"), 7, 1),
        batch(1, 2, vec![change_put("b", "2"), change_put("a", "3")], None),
        with_request(put(1, 3, "a", "retry"), 7, 1),
        put(1, 4, "c", "4"),
        delete(1, 5, "c"),
    ];
    append_and_apply(storage, &log);
    assert_eq!(
        storage.get_versioned(b"a").unwrap(),
        Some(versioned(2, "3"))
    );
    assert_eq!(
        storage.get_versioned(b"b").unwrap(),
        Some(versioned(2, "2"))
    );
    assert_eq!(storage.get_versioned(b"c").unwrap(), None);
    assert_eq!(
        storage.scan_page(b"", None, 10, usize::MAX).unwrap().pairs,
        vec![
            (bytes("a"), versioned(2, "3")),
            (bytes("b"), versioned(2, "2"))
        ]
    );
    storage.truncate_suffix(2, 2).unwrap();
    assert_eq!(
        storage.get_versioned(b"a").unwrap(),
        Some(versioned(1, "1"))
    );
    assert_eq!(storage.get_versioned(b"b").unwrap(), None);
}

/// The key count moves with every client key created or removed, by puts, deletes and batches,
/// and not with overwrites, retries, deletes of absent keys or system keys; a truncation that
/// rebuilds the state and a snapshot install recount it.
fn the_key_count_follows_the_client_keys(storage: &dyn Storage) {
    let count = |storage: &dyn Storage| storage.meta().unwrap().key_count;
    let system = super::system_keys::system_key("user", b"alice");
    let log = vec![
        with_request(put(1, 1, "a", "1"), 7, 1),
        put(1, 2, "b", "2"),
        put(1, 3, "a", "overwritten"),
        with_request(put(1, 4, "c", "retry"), 7, 1),
        delete(1, 5, "absent"),
        batch(
            1,
            6,
            vec![
                change_put("d", "4"),
                Change::Put {
                    key: system.clone(),
                    value: bytes("record"),
                },
            ],
            None,
        ),
    ];
    append_and_apply(storage, &log);
    assert_eq!(count(storage), 3, "a, b and d");
    append_and_apply(storage, &[delete(1, 7, "b")]);
    assert_eq!(count(storage), 2);
    assert_eq!(
        count(storage),
        storage.scan(b"", usize::MAX).unwrap().len() as u64
    );

    storage.truncate_suffix(6, 2).unwrap();
    assert_eq!(count(storage), 2, "a and b, rebuilt from entries 1 to 5");

    storage.begin_snapshot().unwrap();
    storage
        .stage_snapshot(
            &[
                (bytes("x"), Some(versioned(3, "1"))),
                (bytes("y"), Some(versioned(4, "2"))),
                (bytes("z"), Some(versioned(5, "3"))),
                (system, Some(versioned(5, "record"))),
            ],
            &[],
            &staged(10, "z"),
        )
        .unwrap();
    let finish = SnapshotFinish {
        index: 20,
        epoch: 2,
        membership: membership(&[1, 2]),
    };
    storage.install_snapshot(&finish, 5, 2).unwrap();
    assert_eq!(count(storage), 3, "x, y and z");
}

fn truncating_unapplied_entries_keeps_the_state(storage: &dyn Storage) {
    let log = vec![
        put(1, 1, "a", "1"),
        put(1, 2, "a", "2"),
        put(1, 3, "a", "3"),
    ];
    storage.append(&log).unwrap();
    storage.apply(&log[..2]).unwrap();

    storage.truncate_suffix(3, 2).unwrap();
    assert_eq!(storage.meta().unwrap().applied_index, 2);
    assert_eq!(storage.get(b"a").unwrap(), Some(bytes("2")));
}

/// Instantiates every shared contract test for one engine; `$open` makes a fresh store and
/// returns something that dereferences to it.
macro_rules! engine_suite {
    ($open:path) => {
        engine_suite!(@tests $open;
            new_store_is_empty,
            append_then_read,
            append_refuses_what_does_not_continue_the_log,
            entries_stop_at_max_bytes,
            truncate_suffix_moves_entries_to_rollback,
            compacting_and_truncating_inside_one_append,
            meta_round_trips,
            apply_changes_state_and_reports_results,
            apply_refuses_gaps_without_changing_anything,
            retried_request_is_applied_once,
            batches_apply_together_and_keep_their_answer,
            scan_by_prefix_with_limit,
            scan_pages_are_bounded_and_continue_after_their_last_key,
            scans_skip_the_system_keyspace,
            sessions_are_read_in_pages,
            the_size_counts_sessions_and_grows_with_the_state,
            expiring_sessions_removes_those_unchanged_since,
            a_staged_snapshot_replaces_the_state_and_the_sessions,
            the_staging_record_follows_the_staged_chunks,
            truncating_applied_entries_rebuilds_the_state,
            truncating_unapplied_entries_keeps_the_state,
            a_key_takes_the_index_of_the_entry_that_put_it_as_its_version,
            the_key_count_follows_the_client_keys,
        );
    };
    (@tests $open:path; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                let storage = $open();
                super::$test(&*storage);
            }
        )*
    };
}

/// Writes a little of everything: log, state, sessions, meta, rollback. Returns the log.
fn write_everything(storage: &dyn Storage, first_index: LogIndex, epoch: Epoch) -> Vec<Entry> {
    let log: Vec<Entry> = (first_index..first_index + 4)
        .map(|index| with_request(put(epoch, index, &format!("key{index}"), "v"), 7, index))
        .collect();
    append_and_apply(storage, &log);
    storage.set_epoch_and_vote(epoch, Some(epoch + 1)).unwrap();
    storage.set_commit_index(first_index + 1).unwrap();
    storage.set_membership(&membership(&[1, epoch])).unwrap();
    log
}

/// Everything a store answers, for comparing two stores (or one store before and after).
#[derive(Debug, PartialEq)]
struct Dump {
    last: (Epoch, LogIndex),
    log: Vec<Entry>,
    state: Vec<(Vec<u8>, Versioned)>,
    sessions: Vec<Option<Session>>,
    meta: Meta,
    rolled_back: Vec<RolledBack>,
}

fn dump(storage: &dyn Storage) -> Dump {
    Dump {
        last: storage.last().unwrap(),
        log: storage.entries(0, LogIndex::MAX, usize::MAX).unwrap(),
        state: storage
            .scan_page(b"", None, usize::MAX, usize::MAX)
            .unwrap()
            .pairs,
        sessions: (0..10)
            .map(|client| storage.session(client).unwrap())
            .collect(),
        meta: storage.meta().unwrap(),
        rolled_back: storage.rolled_back().unwrap(),
    }
}

mod memory_engine {
    use super::*;
    use crate::storage::MemoryStorage;

    fn open() -> Box<MemoryStorage> {
        Box::new(MemoryStorage::new())
    }

    engine_suite!(open);

    #[test]
    fn crash_keeps_exactly_what_was_flushed() {
        let storage = MemoryStorage::new();
        write_everything(&storage, 1, 1);
        storage.flush().unwrap();
        let flushed = dump(&storage);

        write_everything(&storage, 5, 2);
        storage.truncate_suffix(3, 3).unwrap();
        assert_ne!(dump(&storage), flushed);
        assert!(storage.unflushed_writes() > 0);

        storage.crash();
        assert_eq!(dump(&storage), flushed);
        assert_eq!(storage.unflushed_writes(), 0);
        assert_eq!(storage.last().unwrap(), (1, 4));
        assert_eq!(storage.meta().unwrap().applied_index, 4);
        assert_eq!(storage.get(b"key5").unwrap(), None);
    }

    #[test]
    fn crash_keeping_a_prefix_of_unflushed_writes() {
        let storage = MemoryStorage::new();
        storage.append(&[put(1, 1, "a", "1")]).unwrap();
        storage.apply(&[put(1, 1, "a", "1")]).unwrap();
        storage.set_epoch_and_vote(5, Some(1)).unwrap();
        assert_eq!(storage.unflushed_writes(), 3);

        storage.crash_keeping(2);
        assert_eq!(storage.get(b"a").unwrap(), Some(bytes("1")));
        assert_eq!(storage.meta().unwrap().applied_index, 1);
        assert_eq!(storage.meta().unwrap().epoch, 0, "the third write was lost");
    }

    #[test]
    fn refused_writes_are_not_journaled() {
        let storage = MemoryStorage::new();
        assert!(storage.append(&[noop(1, 5)]).is_err());
        assert!(storage.apply(&[noop(1, 5)]).is_err());
        assert_eq!(storage.unflushed_writes(), 0);
    }

    #[test]
    fn a_crash_keeps_the_staging_record_with_the_chunks_it_covers() {
        let storage = MemoryStorage::new();
        storage.begin_snapshot().unwrap();
        let chunk = |key: &str| vec![(bytes(key), Some(versioned(1, "v")))];
        storage
            .stage_snapshot(&chunk("a"), &[], &staged(10, "a"))
            .unwrap();
        storage.flush().unwrap();
        storage
            .stage_snapshot(&chunk("b"), &[], &staged(10, "b"))
            .unwrap();
        storage.crash();
        assert_eq!(storage.staged_snapshot().unwrap(), Some(staged(10, "a")));
        // What is staged is installed as it was: chunk "b" was lost with its record.
        let finish = SnapshotFinish {
            index: 30,
            epoch: 2,
            membership: membership(&[1]),
        };
        storage.install_snapshot(&finish, 0, 2).unwrap();
        assert_eq!(
            storage.scan(b"", 10).unwrap(),
            vec![(bytes("a"), bytes("v"))]
        );
    }

    #[test]
    fn flushed_writes_survive_repeated_crashes() {
        let storage = MemoryStorage::new();
        write_everything(&storage, 1, 1);
        storage.flush().unwrap();
        storage.crash();
        write_everything(&storage, 5, 2);
        storage.flush().unwrap();
        let flushed = dump(&storage);
        storage.crash();
        storage.crash();
        assert_eq!(dump(&storage), flushed);
        assert_eq!(storage.last().unwrap(), (2, 8));
    }
}

mod sled_engine {
    use std::ops::Deref;

    use super::*;
    use crate::storage::SledStorage;

    /// A sled store in a temporary directory that lives as long as the store.
    pub(super) struct TempSled {
        storage: SledStorage,
        _dir: tempfile::TempDir,
    }

    impl Deref for TempSled {
        type Target = SledStorage;
        fn deref(&self) -> &SledStorage {
            &self.storage
        }
    }

    pub(super) fn open() -> TempSled {
        let dir = tempfile::tempdir().unwrap();
        let storage = SledStorage::open(dir.path()).unwrap();
        TempSled { storage, _dir: dir }
    }

    engine_suite!(open);

    #[test]
    fn reopen_finds_everything_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let storage = SledStorage::open(dir.path()).unwrap();
            write_everything(&storage, 1, 1);
            storage.truncate_suffix(3, 2).unwrap();
            write_everything(&storage, 3, 2);
            storage.flush().unwrap();
            dump(&storage)
        };
        let reopened = SledStorage::open(dir.path()).unwrap();
        assert_eq!(dump(&reopened), before);
        assert_eq!(reopened.last().unwrap(), (2, 6));

        // The reopened store carries on: contiguity and rollback numbering survive.
        assert!(reopened.append(&[noop(2, 8)]).is_err());
        reopened.append(&[noop(3, 7)]).unwrap();
        reopened.truncate_suffix(7, 4).unwrap();
        let rolled_back = reopened.rolled_back().unwrap();
        assert_eq!(rolled_back.len(), 3);
        assert_eq!(rolled_back[2].entry, noop(3, 7));
    }

    /// An append is stored as runs of entries, one sled value each (docs/ARCHITECTURE.md,
    /// "Durability on disk"): a few small entries are one value, a large append several.
    #[test]
    fn an_append_is_stored_as_runs() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SledStorage::open(dir.path()).unwrap();
        storage
            .append(&(1..=10).map(|index| noop(1, index)).collect::<Vec<_>>())
            .unwrap();
        storage.flush().unwrap();
        drop(storage);
        assert_eq!(
            raw_tree(dir.path(), "log").len(),
            1,
            "ten small entries, one run"
        );

        // 200 entries of 1 KiB: more than one run, none much over the run size.
        let storage = SledStorage::open(dir.path()).unwrap();
        let large: Vec<Entry> = (11..=210)
            .map(|index| put(1, index, "k", &"v".repeat(1024)))
            .collect();
        storage.append(&large).unwrap();
        storage.flush().unwrap();
        drop(storage);
        let runs = raw_tree(dir.path(), "log").len();
        assert!((4..=6).contains(&runs), "{runs} runs");
        let storage = SledStorage::open(dir.path()).unwrap();
        assert_eq!(storage.entries(11, 210, usize::MAX).unwrap(), large);
        let size = postcard::to_stdvec(&large[0]).unwrap().len();
        assert_eq!(
            storage.entries(100, 210, 5 * size).unwrap(),
            large[89..94],
            "a bounded read crosses runs"
        );

        // Cuts inside runs survive a restart.
        storage
            .apply(&storage.entries(1, 150, usize::MAX).unwrap())
            .unwrap();
        storage.compact(75).unwrap();
        storage.truncate_suffix(180, 2).unwrap();
        storage.flush().unwrap();
        let before = dump(&storage);
        drop(storage);
        let reopened = SledStorage::open(dir.path()).unwrap();
        assert_eq!(dump(&reopened), before);
        assert_eq!(
            reopened.entries(76, 300, usize::MAX).unwrap(),
            large[65..169]
        );
        assert_eq!(reopened.last().unwrap(), (1, 179));
    }

    /// A store of format 2 (one entry per log value, as written before runs) is a log of
    /// one-entry runs: it opens, reads and carries on, and is recorded as format 3 so that an
    /// older kvnode refuses it.
    #[test]
    fn a_store_of_one_entry_per_value_is_read_and_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let log: Vec<Entry> = (1..=3).map(|index| put(1, index, "k", "v")).collect();
        {
            let db = sled::open(dir.path()).unwrap();
            let meta = db.open_tree("meta").unwrap();
            meta.insert("state_format", postcard::to_stdvec(&2u64).unwrap())
                .unwrap();
            let tree = db.open_tree("log").unwrap();
            for entry in &log {
                tree.insert(
                    entry.index.to_be_bytes(),
                    postcard::to_stdvec(entry).unwrap(),
                )
                .unwrap();
            }
            db.flush().unwrap();
        }
        let storage = SledStorage::open(dir.path()).unwrap();
        assert_eq!(storage.last().unwrap(), (1, 3));
        assert_eq!(storage.entries(1, 3, usize::MAX).unwrap(), log);
        assert_eq!(storage.entry(2).unwrap(), Some(log[1].clone()));
        storage.append(&[noop(2, 4), noop(2, 5)]).unwrap();
        assert_eq!(storage.truncate_suffix(3, 3).unwrap().len(), 3);
        assert_eq!(storage.last().unwrap(), (1, 2));
        drop(storage);
        let format = raw_tree(dir.path(), "meta")
            .get("state_format")
            .unwrap()
            .unwrap();
        assert_eq!(
            postcard::from_bytes::<u64>(&format).unwrap(),
            crate::storage::sled_engine::STATE_FORMAT
        );
    }

    /// A tree of a closed store, read by sled directly.
    fn raw_tree(dir: &std::path::Path, tree: &str) -> sled::Tree {
        sled::open(dir).unwrap().open_tree(tree).unwrap()
    }

    #[test]
    fn reopen_finds_the_staging_record() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = SledStorage::open(dir.path()).unwrap();
            storage.begin_snapshot().unwrap();
            storage
                .stage_snapshot(
                    &[(bytes("a"), Some(versioned(1, "v")))],
                    &[],
                    &staged(10, "a"),
                )
                .unwrap();
            storage.flush().unwrap();
        }
        let reopened = SledStorage::open(dir.path()).unwrap();
        assert_eq!(reopened.staged_snapshot().unwrap(), Some(staged(10, "a")));
        reopened.begin_snapshot().unwrap();
        assert_eq!(reopened.staged_snapshot().unwrap(), None);
    }

    #[test]
    fn open_names_a_path_it_cannot_use() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-directory");
        std::fs::write(&file, b"x").unwrap();
        let path = file.join("db");
        match SledStorage::open(&path) {
            Err(Error::Storage(message)) => {
                assert!(message.contains(&path.display().to_string()), "{message}")
            }
            other => panic!("expected a storage error, got {:?}", other.map(|_| ())),
        }
    }

    /// Writes raw bytes into one of the store's trees, as corruption on disk would.
    fn corrupt(dir: &std::path::Path, tree: &str, key: &[u8], value: &[u8]) {
        let db = sled::open(dir).unwrap();
        db.open_tree(tree).unwrap().insert(key, value).unwrap();
        db.flush().unwrap();
    }

    /// A store written before the state kept versions (format 1: no format record, raw values)
    /// is refused with an error that says so, not misread.
    #[test]
    fn a_store_of_an_older_state_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStorage::open(dir.path()).unwrap());
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta")
                .unwrap()
                .remove("state_format")
                .unwrap();
            db.open_tree("state").unwrap().insert("k", "v").unwrap();
            db.flush().unwrap();
        }
        match SledStorage::open(dir.path()) {
            Err(Error::Storage(message)) => {
                assert!(message.contains("state format 1"), "{message}")
            }
            other => panic!("expected a storage error, got {:?}", other.map(|_| ())),
        }
    }

    /// A value too short to hold its version is corruption, not a panic.
    #[test]
    fn a_state_value_without_its_version_is_a_storage_error() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStorage::open(dir.path()).unwrap());
        corrupt(dir.path(), "state", b"k", b"short");
        let storage = SledStorage::open(dir.path()).unwrap();
        assert!(is_storage_error(storage.get(b"k")));
        assert!(is_storage_error(storage.scan_page(
            b"",
            None,
            10,
            usize::MAX
        )));
    }

    #[test]
    fn corrupt_last_log_entry_fails_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStorage::open(dir.path()).unwrap());
        corrupt(dir.path(), "log", &1u64.to_be_bytes(), &[0xff; 3]);
        assert!(is_storage_error(SledStorage::open(dir.path()).map(|_| ())));
    }

    #[test]
    fn corrupt_values_are_storage_errors() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = SledStorage::open(dir.path()).unwrap();
            // Two appends, two runs: corrupting the first leaves the second readable.
            storage.append(&[noop(1, 1)]).unwrap();
            storage.append(&[noop(1, 2)]).unwrap();
            storage.flush().unwrap();
        }
        corrupt(dir.path(), "log", &1u64.to_be_bytes(), &[0xff; 3]);
        corrupt(dir.path(), "sessions", &7u64.to_be_bytes(), &[0xff; 40]);
        corrupt(dir.path(), "meta", b"applied_index", &[0xff; 11]);

        let storage = SledStorage::open(dir.path()).unwrap();
        assert!(is_storage_error(storage.entry(1)));
        assert!(is_storage_error(storage.entries(1, 2, usize::MAX)));
        assert!(is_storage_error(storage.session(7)));
        assert!(is_storage_error(storage.meta()));
        assert!(is_storage_error(storage.apply(&[noop(1, 1)])));
        assert_eq!(storage.entry(2).unwrap(), Some(noop(1, 2)));
    }

    /// A run is checked entry by entry: an empty run, or an entry inside a run that does not
    /// carry the index after the previous one, is corruption, while the entries before it read.
    #[test]
    fn a_corrupt_run_is_a_storage_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = SledStorage::open(dir.path()).unwrap();
            storage.append(&[noop(1, 1), noop(1, 2)]).unwrap();
            storage.append(&[noop(1, 3)]).unwrap();
            storage.append(&[noop(1, 4)]).unwrap();
            storage.flush().unwrap();
        }
        let mut skipping = postcard::to_stdvec(&noop(1, 1)).unwrap();
        skipping.extend(postcard::to_stdvec(&noop(1, 5)).unwrap());
        corrupt(dir.path(), "log", &1u64.to_be_bytes(), &skipping);
        corrupt(dir.path(), "log", &3u64.to_be_bytes(), b"");

        let storage = SledStorage::open(dir.path()).unwrap();
        assert_eq!(storage.entry(1).unwrap(), Some(noop(1, 1)));
        assert!(is_storage_error(storage.entry(2)));
        assert!(is_storage_error(storage.entries(1, 2, usize::MAX)));
        assert!(is_storage_error(storage.entry(3)));
        assert_eq!(storage.entry(4).unwrap(), Some(noop(1, 4)));
    }

    /// Compaction takes the snapshot epoch from the run that holds its last entry: a log whose
    /// run for that entry is gone is corruption, reported before anything is removed.
    #[test]
    fn compacting_through_a_missing_entry_is_a_storage_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = SledStorage::open(dir.path()).unwrap();
            for index in 1..=3 {
                append_and_apply(&storage, &[noop(1, index)]);
            }
            storage.flush().unwrap();
        }
        {
            let log = raw_tree(dir.path(), "log");
            log.remove(2u64.to_be_bytes()).unwrap();
            log.flush().unwrap();
        }
        let storage = SledStorage::open(dir.path()).unwrap();
        assert!(is_storage_error(storage.compact(2)));
        assert_eq!(storage.entry(1).unwrap(), Some(noop(1, 1)));
        assert_eq!(storage.entry(3).unwrap(), Some(noop(1, 3)));
        assert_eq!(storage.meta().unwrap().log_start, 1);
    }

    #[test]
    fn malformed_log_key_fails_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStorage::open(dir.path()).unwrap());
        corrupt(dir.path(), "log", b"short", b"");
        assert!(is_storage_error(SledStorage::open(dir.path()).map(|_| ())));
    }

    #[test]
    fn entry_stored_under_the_wrong_index_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStorage::open(dir.path()).unwrap());
        let misplaced = postcard::to_stdvec(&noop(1, 9)).unwrap();
        corrupt(dir.path(), "log", &1u64.to_be_bytes(), &misplaced);
        assert!(is_storage_error(SledStorage::open(dir.path()).map(|_| ())));
    }
}

/// Random operation sequences on both engines must get identical answers.
mod equivalence {
    use proptest::prelude::*;

    use super::*;
    use crate::storage::MemoryStorage;

    #[derive(Clone, Debug)]
    enum Op {
        /// Appends entries after the last one; `gap` breaks contiguity on purpose.
        Append {
            writes: Vec<(bool, Write)>,
            gap: bool,
        },
        /// Applies up to `count` entries from the log, after the applied index plus `skip`.
        Apply {
            count: usize,
            skip: u64,
        },
        /// Truncates from `last + 1 - back`.
        Truncate {
            back: u64,
            epoch: Epoch,
        },
        EpochAndVote(Epoch, Option<u64>),
        CommitIndex(LogIndex),
        Membership(Vec<u64>),
        Entries {
            from: LogIndex,
            to: LogIndex,
            max_bytes: usize,
        },
        Get(u8),
        Scan(u8, usize),
        Flush,
        /// Compacts through the applied index minus `back`.
        Compact(u64),
        Entry(LogIndex),
        LogBytes,
    }

    /// An entry's content before its position is known; `bool` in `Op::Append` bumps the epoch.
    #[derive(Clone, Debug)]
    enum Write {
        Put(u8, u8, Option<(u64, u64)>),
        Delete(u8, Option<(u64, u64)>),
        /// Puts (`Some(value)`) and deletes, as one batch.
        Batch(Vec<(u8, Option<u8>)>, Option<(u64, u64)>),
        Noop,
    }

    /// Something for a batch's answer to carry that differs between batches.
    fn changes_len(request: &Option<(u64, u64)>) -> u32 {
        request.map_or(0, |(client, sequence)| (client * 10 + sequence) as u32)
    }

    fn key(id: u8) -> Vec<u8> {
        vec![b'a' + id % 4, b'0' + id / 4 % 3]
    }

    fn write_strategy() -> impl Strategy<Value = Write> {
        let request = proptest::option::of((0u64..3, 1u64..5));
        prop_oneof![
            4 => (any::<u8>(), any::<u8>(), request.clone())
                .prop_map(|(k, v, r)| Write::Put(k, v, r)),
            2 => (any::<u8>(), request.clone()).prop_map(|(k, r)| Write::Delete(k, r)),
            2 => (
                proptest::collection::vec((any::<u8>(), proptest::option::of(any::<u8>())), 0..4),
                request
            )
                .prop_map(|(changes, r)| Write::Batch(changes, r)),
            1 => Just(Write::Noop),
        ]
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (
                proptest::collection::vec((proptest::bool::weighted(0.1), write_strategy()), 0..6),
                proptest::bool::weighted(0.05)
            )
                .prop_map(|(writes, gap)| Op::Append { writes, gap }),
            4 => (0usize..6, prop_oneof![9 => Just(0u64), 1 => 1u64..3])
                .prop_map(|(count, skip)| Op::Apply { count, skip }),
            1 => (0u64..6, 0u64..10).prop_map(|(back, epoch)| Op::Truncate { back, epoch }),
            1 => (0u64..10, proptest::option::of(0u64..5))
                .prop_map(|(epoch, vote)| Op::EpochAndVote(epoch, vote)),
            1 => (0u64..30).prop_map(Op::CommitIndex),
            1 => proptest::collection::vec(1u64..6, 0..4).prop_map(Op::Membership),
            2 => (0u64..30, 0u64..30, 0usize..200)
                .prop_map(|(from, to, max_bytes)| Op::Entries { from, to, max_bytes }),
            2 => any::<u8>().prop_map(Op::Get),
            1 => (0u8..5, 0usize..6).prop_map(|(prefix, limit)| Op::Scan(prefix, limit)),
            1 => Just(Op::Flush),
            1 => (0u64..4).prop_map(Op::Compact),
            1 => (0u64..30).prop_map(Op::Entry),
            1 => Just(Op::LogBytes),
        ]
    }

    fn entry_for(write: &Write, epoch: Epoch, index: LogIndex) -> Entry {
        let (operation, request) = match write {
            Write::Put(k, v, request) => (
                Operation::Put {
                    key: key(*k),
                    value: vec![*v],
                },
                request,
            ),
            Write::Delete(k, request) => (Operation::Delete { key: key(*k) }, request),
            Write::Batch(changes, request) => {
                let changes = changes
                    .iter()
                    .map(|(k, value)| match value {
                        Some(v) => Change::Put {
                            key: key(*k),
                            value: vec![*v],
                        },
                        None => Change::Delete { key: key(*k) },
                    })
                    .collect();
                let answer = Some(Answer::Integer(i64::from(changes_len(request))));
                (Operation::Batch { changes, answer }, request)
            }
            Write::Noop => (Operation::Noop, &None),
        };
        Entry {
            epoch,
            index,
            operation,
            request_id: request.map(|(client_id, sequence)| RequestId {
                client_id,
                sequence,
            }),
        }
    }

    /// Runs `op` and describes everything it answered.
    fn run(storage: &dyn Storage, op: &Op) -> String {
        match op {
            Op::Append { writes, gap } => {
                let (mut epoch, last) = storage.last().unwrap();
                let first = last + 1 + u64::from(*gap);
                let entries: Vec<Entry> = writes
                    .iter()
                    .zip(first..)
                    .map(|((bump, write), index)| {
                        epoch += u64::from(*bump);
                        entry_for(write, epoch, index)
                    })
                    .collect();
                format!("{:?}", storage.append(&entries))
            }
            Op::Apply { count, skip } => {
                let from = storage.meta().unwrap().applied_index + 1 + skip;
                let entries = storage
                    .entries(from, from + *count as u64 - 1, usize::MAX)
                    .unwrap_or_default();
                format!("{:?}", storage.apply(&entries))
            }
            Op::Truncate { back, epoch } => {
                let from = (storage.last().unwrap().1 + 1).saturating_sub(*back);
                format!("{:?}", storage.truncate_suffix(from, *epoch))
            }
            Op::EpochAndVote(epoch, vote) => {
                format!("{:?}", storage.set_epoch_and_vote(*epoch, *vote))
            }
            Op::CommitIndex(index) => format!("{:?}", storage.set_commit_index(*index)),
            Op::Membership(ids) => format!("{:?}", storage.set_membership(&membership(ids))),
            Op::Entries {
                from,
                to,
                max_bytes,
            } => format!("{:?}", storage.entries(*from, *to, *max_bytes)),
            Op::Get(id) => format!("{:?}", storage.get_versioned(&key(*id))),
            Op::Scan(prefix, limit) => {
                format!("{:?}", storage.scan(&[b'a' + prefix], *limit))
            }
            Op::Flush => format!("{:?}", storage.flush()),
            Op::Compact(back) => {
                let applied_index = storage.meta().unwrap().applied_index;
                format!("{:?}", storage.compact(applied_index.saturating_sub(*back)))
            }
            Op::Entry(index) => format!("{:?}", storage.entry(*index)),
            Op::LogBytes => format!("{:?}", storage.log_bytes()),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn engines_answer_identically(ops in proptest::collection::vec(op_strategy(), 1..60)) {
            let memory = MemoryStorage::new();
            let sled = super::sled_engine::open();
            for (step, op) in ops.iter().enumerate() {
                let memory_answer = run(&memory, op);
                let sled_answer = run(&*sled, op);
                prop_assert_eq!(memory_answer, sled_answer, "step {}: {:?}", step, op);
                prop_assert_eq!(memory.last().unwrap(), sled.last().unwrap());
            }
            prop_assert_eq!(dump(&memory), dump(&*sled));
            let clients: BTreeSet<u64> = (0..3).collect();
            for client in clients {
                prop_assert_eq!(memory.session(client).unwrap(), sled.session(client).unwrap());
            }
        }

        /// After a crash the memory engine answers like a store that only saw the writes up to
        /// the last flush.
        #[test]
        fn memory_crash_equals_the_flushed_history(
            ops in proptest::collection::vec(op_strategy(), 1..60)
        ) {
            let crashed = MemoryStorage::new();
            let flushed_only = MemoryStorage::new();
            let last_flush = ops.iter().rposition(|op| matches!(op, Op::Flush));
            for op in &ops {
                run(&crashed, op);
            }
            for op in ops.iter().take(last_flush.map_or(0, |position| position + 1)) {
                run(&flushed_only, op);
            }
            crashed.crash();
            prop_assert_eq!(dump(&crashed), dump(&flushed_only));
        }
    }
}
