//! Tests of the read journal on a real SQLite store: reads' entries made durable in the journal
//! and folded into the log (recomputed here from the entries' bytes with the audit crate), folds
//! that repeat after a crash, and a journal or a log that cannot be written.

use std::path::Path;
use std::sync::Arc;

use carevault_audit::chain;
use carevault_audit::merkle::{self, MemNodes, NodeSource};
use carevault_crypto::Keyring;

use super::{AuditAppend, AuditKey, append_durably, open, tree_head};
use crate::backend::Store;
use crate::error::RestError;
use crate::open_sqlite;
use crate::sqlite::journal_file::{self, Group};
use crate::sqlite::{SqliteStore, StoreOptions, journal_path};

fn keyring() -> Arc<Keyring> {
    Arc::new(Keyring::from_data_key(1, &[9u8; 32]).unwrap())
}

fn entry(text: &str) -> AuditAppend {
    AuditAppend {
        recorded_ms: 1_700_000_000_000,
        canonical: text.as_bytes().to_vec(),
        keys: vec![AuditKey::Patient(format!("Patient/{text}"))],
    }
}

/// Journals `text` as a read's entry and waits until the journal has it on disk.
fn journal(store: &dyn Store, text: &str) -> Result<(), RestError> {
    let (send, recv) = std::sync::mpsc::sync_channel(1);
    store.journal_audit(
        entry(text).prepare(store.keyring()),
        Box::new(move |r| send.send(r).unwrap()),
    );
    recv.recv().unwrap()
}

/// Every valid record of the journal beside the store file `store_path`, and the journal's id.
fn records(store_path: &Path) -> (Vec<Group>, [u8; 16]) {
    let path = journal_path(store_path);
    let id = journal_file::read_id(&path).unwrap();
    (journal_file::scan(&path, &id).unwrap(), id)
}

/// The record holding entry `jseq`.
fn record_of(store_path: &Path, jseq: u64) -> Group {
    records(store_path)
        .0
        .into_iter()
        .find(|g| (g.first..=g.last()).contains(&jseq))
        .unwrap()
}

/// The numbers of every entry in the journal file, folded or not, in order.
fn numbers_in_file(store_path: &Path) -> Vec<u64> {
    let mut out: Vec<u64> = records(store_path)
        .0
        .iter()
        .flat_map(|g| g.first..=g.last())
        .collect();
    out.sort_unstable();
    out
}

/// Entries in the journal file above the log's fold mark: journaled and not yet in the log.
fn waiting(store: &dyn Store, store_path: &Path) -> usize {
    let (_, id) = records(store_path);
    let mark = store.reader().unwrap().audit_fold_mark(&id).unwrap();
    numbers_in_file(store_path)
        .into_iter()
        .filter(|&j| j > mark)
        .count()
}

/// Every stored entry opened, in order.
fn stored_texts(store: &dyn Store) -> Vec<(u64, [u8; 32], Vec<u8>)> {
    let mut r = store.reader().unwrap();
    r.audit_entries(0, 100_000)
        .unwrap()
        .iter()
        .map(|s| {
            let e = open(store.keyring(), s).unwrap();
            (e.seq, e.chain, e.canonical)
        })
        .collect()
}

/// Recomputes the chain and the tree from the stored entries' bytes with the audit crate, and
/// checks that every stored chain hash, every complete subtree node, and the root match.
fn assert_log_is_sound(store: &dyn Store) -> Vec<Vec<u8>> {
    let entries = stored_texts(store);
    let mut previous = chain::GENESIS;
    let mut tree = MemNodes::new();
    for (i, (seq, stored_chain, canonical)) in entries.iter().enumerate() {
        assert_eq!(
            *seq,
            i as u64 + 1,
            "sequence numbers are consecutive from 1"
        );
        let leaf = merkle::leaf_hash(canonical);
        previous = chain::chain_hash(&previous, &leaf);
        assert_eq!(*stored_chain, previous, "chain hash of entry {seq}");
        tree.push(leaf);
    }
    let size = entries.len() as u64;
    let mut r = store.reader().unwrap();
    for level in 0..64u32 {
        let count = size >> level;
        if count == 0 {
            break;
        }
        for index in 0..count {
            assert_eq!(
                r.audit_node(level, index).unwrap(),
                Some(tree.node(level, index).unwrap()),
                "stored node at level {level}, index {index}"
            );
        }
        // No node beyond the complete subtrees was stored.
        assert_eq!(r.audit_node(level, count).unwrap(), None);
    }
    assert_eq!(tree_head(&mut *r).unwrap(), (size, tree.root()));
    entries.into_iter().map(|(_, _, c)| c).collect()
}

#[test]
fn journaled_reads_fold_into_one_sound_log_with_the_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_sqlite(&dir.path().join("store.db"), keyring()).unwrap();
    // 5 entries appended as writes append theirs (a size with several right-edge nodes).
    append_durably(
        &*store,
        (0..5).map(|i| entry(&format!("before-{i}"))).collect(),
    )
    .unwrap();
    // 8 threads journal 25 reads each, each waiting for its own before the next, while writes
    // append between them.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    journal(&*store, &format!("read-{t}-{i}")).unwrap();
                    if t == 0 && i % 5 == 0 {
                        append_durably(&*store, vec![entry(&format!("write-{i}"))]).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    store.settle_audit().unwrap();
    let texts: Vec<String> = assert_log_is_sound(&*store)
        .into_iter()
        .map(|t| String::from_utf8(t).unwrap())
        .collect();
    assert_eq!(texts.len(), 5 + 200 + 5);
    assert_eq!(
        texts[..5],
        ["before-0", "before-1", "before-2", "before-3", "before-4"]
    );
    // Every read is in the log exactly once, each thread's in the order it made them.
    for t in 0..8 {
        let mine: Vec<&String> = texts
            .iter()
            .filter(|x| x.starts_with(&format!("read-{t}-")))
            .collect();
        let want: Vec<String> = (0..25).map(|i| format!("read-{t}-{i}")).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>(), "thread {t}");
    }
    // A read is found by its keys once folded, and its rows are gone from the journal.
    let mut r = store.reader().unwrap();
    let q = crate::backend::AuditQuery {
        tags: vec![vec![
            AuditKey::Patient("Patient/read-3-7".into()).tag(store.keyring()),
        ]],
        limit: 10,
        ..Default::default()
    };
    let found = r.audit_search(&q).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(texts[found[0] as usize - 1], "read-3-7");
    assert_eq!(numbers_in_file(&dir.path().join("store.db")).len(), 200);
    assert_eq!(waiting(&*store, &dir.path().join("store.db")), 0);
}

#[test]
fn a_fold_repeated_after_a_crash_appends_nothing_twice_and_numbers_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    // No fold thread: folds happen only when asked.
    let store = SqliteStore::open(&path, keyring()).unwrap();
    for i in 0..10 {
        journal(&store, &format!("r{i}")).unwrap();
    }
    assert_eq!(waiting(&store, &path), 10);
    assert_eq!(store.settle_audit().unwrap(), 10);
    assert_eq!(waiting(&store, &path), 0);
    // The folded entries stay in the file until their blocks are needed, as a crash right
    // after the fold's commit leaves them.
    assert_eq!(numbers_in_file(&path), (1..=10).collect::<Vec<_>>());
    drop(store);
    // A new process (no memory of what it folded) opens the store and folds what is left.
    let store = open_sqlite(&path, keyring()).unwrap();
    assert_eq!(store.settle_audit().unwrap(), 0);
    let texts = assert_log_is_sound(&*store);
    assert_eq!(texts.len(), 10, "nothing was folded twice");
    drop(store);
    // Even with every folded record gone from the file (overwritten, or torn by a crash while
    // being overwritten), numbering goes on after the log's mark, so new reads are not taken
    // as folded.
    for g in records(&path).0 {
        journal_file::erase(&journal_path(&path), &g);
    }
    assert!(numbers_in_file(&path).is_empty());
    let store = SqliteStore::open(&path, keyring()).unwrap();
    for i in 10..13 {
        journal(&store, &format!("r{i}")).unwrap();
    }
    assert_eq!(numbers_in_file(&path), vec![11, 12, 13]);
    assert_eq!(store.settle_audit().unwrap(), 3);
    let texts = assert_log_is_sound(&store);
    assert_eq!(texts.len(), 13);
    assert_eq!(texts.last().unwrap(), b"r12");
}

#[test]
fn a_journal_entry_removed_or_altered_before_its_fold_is_named_and_nothing_is_folded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let server = SqliteStore::open(&path, keyring()).unwrap();
    for i in 0..3 {
        journal(&server, &format!("r{i}")).unwrap();
    }
    server.settle_audit().unwrap();
    for i in 3..6 {
        journal(&server, &format!("r{i}")).unwrap();
    }
    // Another process (or this one after a crash) has only the file to fold from.
    let other = SqliteStore::open(&path, keyring()).unwrap();
    // Entry 5's record is removed: 4 and 6 must not be folded around the gap.
    journal_file::erase(&journal_path(&path), &record_of(&path, 5));
    let err = other.settle_audit().unwrap_err().to_string();
    assert!(
        err.contains("read journal entries 5 to 5 are missing"),
        "{err}"
    );
    assert_eq!(assert_log_is_sound(&other).len(), 3);
    // Entry 4 is altered (one byte of its sealed bytes), and its record rewritten whole with a
    // valid check, as someone who knows the format would: named, nothing folded.
    let (_, id) = records(&path);
    let mut altered = record_of(&path, 4);
    altered.sealed[0][20] ^= 1;
    journal_file::rewrite(&journal_path(&path), &id, &altered);
    let err = other.settle_audit().unwrap_err().to_string();
    assert!(
        err.contains("read journal entry 4") && err.contains("cannot be opened"),
        "{err}"
    );
    assert_eq!(assert_log_is_sound(&other).len(), 3);
    // The process that journaled them still holds what it made durable: its own fold appends
    // the entries as they were answered for, whatever became of the file.
    assert_eq!(server.settle_audit().unwrap(), 3);
    let texts = assert_log_is_sound(&server);
    let expected: Vec<Vec<u8>> = (0..6).map(|i| format!("r{i}").into_bytes()).collect();
    assert_eq!(texts, expected);
    assert_eq!(waiting(&server, &path), 0);
    assert_eq!(other.settle_audit().unwrap(), 0);
}

/// Makes the log at `store_path` refuse every new entry, as a full disk would (a trigger named
/// `refuse`); returns the connection that made it, to drop the trigger with.
fn refuse_log_inserts(store_path: &Path) -> rusqlite::Connection {
    let admin = rusqlite::Connection::open(store_path).unwrap();
    admin
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON audit_log \
             BEGIN SELECT RAISE(ABORT, 'the disk is full'); END;",
        )
        .unwrap();
    admin
}

#[test]
fn a_journal_that_cannot_be_written_fails_the_read_and_a_log_that_cannot_be_written_keeps_the_entries()
 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    // A journal of 16 blocks at most: its header and 15 records.
    let options = StoreOptions {
        journal_max_bytes: 16 * journal_file::BLOCK as u64,
    };
    let store = SqliteStore::open_with(&path, keyring(), &options).unwrap();
    journal(&store, "ok-0").unwrap();
    // The log refuses its entries, as a full disk would: folds fail whole, the entries wait in
    // the journal, and the journal fills.
    let admin = refuse_log_inserts(&path);
    assert!(store.settle_audit().is_err());
    assert_eq!(
        assert_log_is_sound(&store).len(),
        0,
        "the fold left no entry"
    );
    let mut answered = vec!["ok-0".to_string()];
    let err = loop {
        let text = format!("ok-{}", answered.len());
        match journal(&store, &text) {
            Ok(()) => answered.push(text),
            Err(e) => break e.to_string(),
        }
        assert!(answered.len() <= 15, "the journal took more than it holds");
    };
    // One record per read (each waited for its own): 15 fit, the 16th read is refused.
    assert_eq!(answered.len(), 15);
    assert!(err.contains("is full"), "{err}");
    assert!(
        store.probe_journal().is_err(),
        "the readiness probe sees it"
    );
    assert!(store.settle_audit().is_err());
    assert_eq!(waiting(&store, &path), 15);
    // Once the log takes entries again, the fold empties the journal and reads go on.
    admin.execute_batch("DROP TRIGGER refuse;").unwrap();
    assert_eq!(store.settle_audit().unwrap(), 15);
    store.probe_journal().unwrap();
    journal(&store, "after").unwrap();
    assert_eq!(store.settle_audit().unwrap(), 1);
    answered.push("after".into());
    let texts: Vec<String> = assert_log_is_sound(&store)
        .into_iter()
        .map(|t| String::from_utf8(t).unwrap())
        .collect();
    assert_eq!(texts, answered);
    assert_eq!(
        std::fs::metadata(journal_path(&path)).unwrap().len(),
        options.journal_max_bytes,
        "the journal never grew past its limit"
    );
}

#[test]
fn a_grown_journal_is_cut_back_when_its_writer_starts_once_everything_in_it_is_folded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let file = journal_path(&path);
    let len = || std::fs::metadata(&file).unwrap().len();
    let texts = |store: &SqliteStore| -> Vec<String> {
        assert_log_is_sound(store)
            .into_iter()
            .map(|t| String::from_utf8(t).unwrap())
            .collect()
    };
    let store = SqliteStore::open(&path, keyring()).unwrap();
    journal(&store, "r0").unwrap();
    drop(store);
    let first = len();

    // The log refuses entries: what is journaled now stays unfolded.
    let admin = refuse_log_inserts(&path);
    let store = SqliteStore::open(&path, keyring()).unwrap();
    journal(&store, "r1").unwrap();
    drop(store);
    // As growing leaves it: twice as long, the new half zeros (no records).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(first * 2)
        .unwrap();
    let store = SqliteStore::open(&path, keyring()).unwrap();
    assert_eq!(
        len(),
        first * 2,
        "opening does not cut: only the writer does"
    );
    journal(&store, "r2").unwrap();
    assert_eq!(len(), first * 2, "unfolded entries were in the file");
    assert_eq!(waiting(&store, &path), 2);
    admin.execute_batch("DROP TRIGGER refuse;").unwrap();
    assert_eq!(store.settle_audit().unwrap(), 2);
    drop(store);

    // Everything is in the log now: the next writer cuts the file back, and goes on in it.
    let store = SqliteStore::open(&path, keyring()).unwrap();
    assert_eq!(len(), first * 2);
    journal(&store, "r3").unwrap();
    assert_eq!(len(), first, "cut back to its first size");
    assert_eq!(store.settle_audit().unwrap(), 1);
    assert_eq!(texts(&store), vec!["r0", "r1", "r2", "r3"]);
    drop(store);
    let store = SqliteStore::open(&path, keyring()).unwrap();
    journal(&store, "r4").unwrap();
    assert_eq!(store.settle_audit().unwrap(), 1);
    assert_eq!(texts(&store), vec!["r0", "r1", "r2", "r3", "r4"]);
}

#[test]
fn closing_the_store_folds_what_was_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path, keyring()).unwrap();
    for i in 0..7 {
        journal(&store, &format!("r{i}")).unwrap();
    }
    drop(store);
    let store = SqliteStore::open(&path, keyring()).unwrap();
    assert_eq!(waiting(&store, &path), 0);
    assert_eq!(assert_log_is_sound(&store).len(), 7);
}

#[test]
fn a_reopened_store_counts_only_unfolded_entries_as_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path, keyring()).unwrap();
    for i in 0..10 {
        journal(&store, &format!("r{i}")).unwrap();
    }
    assert_eq!(store.journal_backlog(), 10);
    store.settle_audit().unwrap();
    assert_eq!(store.journal_backlog(), 0);
    drop(store);
    // A new process goes on numbering after 10 and knows those 10 are in the log: only its own
    // new entry waits (it would otherwise count every entry ever journaled, and refuse reads
    // once that passed the limit).
    let store = SqliteStore::open(&path, keyring()).unwrap();
    assert_eq!(store.journal_backlog(), 0);
    journal(&store, "r10").unwrap();
    assert_eq!(store.journal_backlog(), 1);
    store.settle_audit().unwrap();
    assert_eq!(store.journal_backlog(), 0);
    assert_eq!(assert_log_is_sound(&store).len(), 11);
}

#[test]
fn two_processes_folding_the_same_journal_append_each_entry_once_and_only_one_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    // The server (a) journals; a command-line process (b) on the same files folds them first.
    let a = SqliteStore::open(&path, keyring()).unwrap();
    let b = SqliteStore::open(&path, keyring()).unwrap();
    for i in 0..3 {
        journal(&a, &format!("r{i}")).unwrap();
    }
    assert_eq!(b.settle_audit().unwrap(), 3);
    // a still holds the three in memory: its fold finds them at or below the log's mark and
    // appends nothing.
    assert_eq!(a.settle_audit().unwrap(), 0);
    assert_eq!(waiting(&a, &path), 0);
    // While a writes the journal, b cannot: its entry is refused, not interleaved.
    let err = journal(&b, "from-b").unwrap_err().to_string();
    assert!(err.contains("being written by another process"), "{err}");
    journal(&a, "r3").unwrap();
    assert_eq!(a.settle_audit().unwrap(), 1);
    let texts = assert_log_is_sound(&a);
    assert_eq!(
        texts,
        vec![
            b"r0".to_vec(),
            b"r1".to_vec(),
            b"r2".to_vec(),
            b"r3".to_vec()
        ]
    );
}

/// Queues `text` as a read's entry without waiting; the receiver gets the outcome.
fn journal_async(
    store: &dyn Store,
    text: &str,
) -> std::sync::mpsc::Receiver<Result<(), RestError>> {
    let (send, recv) = std::sync::mpsc::sync_channel(1);
    store.journal_audit(
        entry(text).prepare(store.keyring()),
        Box::new(move |r| send.send(r).unwrap()),
    );
    recv
}

const PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// A new store whose journal's group commits wait at most `max_gather`.
fn gathering_store(
    max_gather: std::time::Duration,
) -> (tempfile::TempDir, SqliteStore, Arc<crate::sqlite::Expected>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("store.db"), keyring()).unwrap();
    let gathering = store.journal_gathering().clone();
    gathering.set_max_gather(max_gather);
    (dir, store, gathering)
}

#[test]
fn a_group_commit_waits_while_more_requests_are_in_progress_than_queued_and_carries_them_in_one_fsync()
 {
    // Long enough that only the requests' releases can end the wait.
    let (_dir, store, gathering) = gathering_store(std::time::Duration::from_secs(600));
    // Five requests in progress; the first two queue their entries and release.
    let mut expectations: Vec<_> = (0..5).map(|_| store.expect_journal()).collect();
    let groups_before = gathering.groups();
    let mut pending = Vec::new();
    for (i, e) in expectations.iter_mut().take(2).enumerate() {
        pending.push(journal_async(&store, &format!("g{i}")));
        e.release();
    }
    // Three are still being answered, more than the two queued: nothing is committed yet.
    std::thread::sleep(std::time::Duration::from_millis(200));
    for p in &pending {
        assert!(
            p.try_recv().is_err(),
            "an entry was committed while more requests that will journal were in progress than queued"
        );
    }
    assert_eq!(gathering.groups(), groups_before);
    // The third queues and releases: three queued, two in progress, so one commit carries the
    // three while the other two are still being answered.
    pending.push(journal_async(&store, "g2"));
    expectations[2].release();
    for p in pending {
        p.recv_timeout(PATIENCE).unwrap().unwrap();
    }
    assert_eq!(
        gathering.groups(),
        groups_before + 1,
        "one fsync for the three"
    );
    // The fourth queues while the fifth is in progress: one queued is as many as one still
    // coming, so it commits without waiting; then the fifth alone.
    let fourth = journal_async(&store, "g3");
    expectations[3].release();
    fourth.recv_timeout(PATIENCE).unwrap().unwrap();
    assert_eq!(gathering.groups(), groups_before + 2);
    let fifth = journal_async(&store, "g4");
    expectations[4].release();
    fifth.recv_timeout(PATIENCE).unwrap().unwrap();
    assert_eq!(gathering.groups(), groups_before + 3);
    store.settle_audit().unwrap();
    assert_eq!(
        assert_log_is_sound(&store),
        ["g0", "g1", "g2", "g3", "g4"].map(|s| s.as_bytes().to_vec())
    );
}

#[test]
fn a_request_that_never_journals_delays_a_group_commit_by_at_most_the_gathering_limit() {
    let (_dir, store, gathering) = gathering_store(std::time::Duration::from_millis(50));
    // Two requests in progress that are slow (or stuck) and hold their expectations
    // throughout: more than the one entry queued at a time, so each commit waits for them.
    let stuck = [store.expect_journal(), store.expect_journal()];
    for i in 0..3 {
        journal_async(&store, &format!("s{i}"))
            .recv_timeout(PATIENCE)
            .expect("the commit waited for the stuck request beyond its limit")
            .unwrap();
    }
    // Requests dropped without journaling (cancelled) stop counting too.
    gathering.set_max_gather(std::time::Duration::from_secs(600));
    let pending = journal_async(&store, "after");
    drop(stuck);
    pending.recv_timeout(PATIENCE).unwrap().unwrap();
    store.settle_audit().unwrap();
    assert_eq!(assert_log_is_sound(&store).len(), 4);
}

#[test]
fn a_lone_request_commits_without_waiting_for_itself() {
    let (_dir, store, _gathering) = gathering_store(std::time::Duration::from_secs(600));
    for i in 0..5 {
        let mut own = store.expect_journal();
        let pending = journal_async(&store, &format!("l{i}"));
        own.release();
        pending.recv_timeout(PATIENCE).unwrap().unwrap();
    }
    store.settle_audit().unwrap();
    assert_eq!(assert_log_is_sound(&store).len(), 5);
}

#[test]
fn keys_of_a_large_batch_and_of_single_appends_are_all_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path, keyring()).unwrap();
    let keyed = |text: String, i: usize| AuditAppend {
        keys: vec![
            AuditKey::Patient(format!("Patient/{text}")),
            AuditKey::Client(format!("client-{}", i % 3)),
        ],
        ..entry(&text)
    };
    // Single appends (keys wait in the pending table), a batch as large as a fold (keys go
    // straight to the index), then single appends again.
    for i in 0..5 {
        append_durably(&store, vec![keyed(format!("a{i}"), i)]).unwrap();
    }
    append_durably(
        &store,
        (0..300).map(|i| keyed(format!("b{i}"), i)).collect(),
    )
    .unwrap();
    for i in 0..5 {
        append_durably(&store, vec![keyed(format!("c{i}"), i)]).unwrap();
    }
    let texts: Vec<String> = assert_log_is_sound(&store)
        .into_iter()
        .map(|t| String::from_utf8(t).unwrap())
        .collect();
    assert_eq!(texts.len(), 310);
    let tag = |k: AuditKey| k.tag(store.keyring());
    let search = |groups: Vec<Vec<carevault_crypto::BlindTag>>| -> Vec<String> {
        let mut r = store.reader().unwrap();
        let q = crate::backend::AuditQuery {
            tags: groups,
            limit: 1000,
            ..Default::default()
        };
        r.audit_search(&q)
            .unwrap()
            .into_iter()
            .map(|seq| texts[seq as usize - 1].clone())
            .collect()
    };
    for text in ["a0", "a4", "b0", "b77", "b299", "c0", "c4"] {
        assert_eq!(
            search(vec![vec![tag(AuditKey::Patient(format!(
                "Patient/{text}"
            )))]]),
            vec![text.to_string()]
        );
    }
    // Both keys of an entry, one from each group, whichever table holds them.
    let client_1: Vec<String> = texts
        .iter()
        .enumerate()
        .filter(|(n, _)| {
            let i = match *n {
                n if n < 5 => n,
                n if n < 305 => n - 5,
                n => n - 305,
            };
            i % 3 == 1
        })
        .map(|(_, t)| t.clone())
        .collect();
    assert_eq!(
        search(vec![vec![tag(AuditKey::Client("client-1".into()))]]),
        client_1
    );
    assert_eq!(
        search(vec![
            vec![tag(AuditKey::Client("client-1".into()))],
            vec![
                tag(AuditKey::Patient("Patient/a1".into())),
                tag(AuditKey::Patient("Patient/b100".into())),
                tag(AuditKey::Patient("Patient/c4".into())),
                tag(AuditKey::Patient("Patient/b101".into())),
            ],
        ]),
        vec!["a1".to_string(), "b100".to_string(), "c4".to_string()]
    );
    // The pending table holds only the keys appended one by one since the batch.
    let pending: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM audit_ix_pending", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        pending, 10,
        "the five single appends after the batch, two keys each"
    );
}

#[test]
fn entries_waiting_in_the_journal_count_as_sealed_under_their_data_key() {
    // A data key leaves the key file only when nothing is sealed under it; an entry still in
    // the journal under that key could never be opened and folded afterwards.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path, keyring()).unwrap();
    let usage_of = |table: &str| -> Vec<(u32, u64)> {
        crate::keys::key_usage(&store)
            .unwrap()
            .into_iter()
            .filter(|u| u.table == table)
            .map(|u| (u.key_id, u.rows))
            .collect()
    };
    journal(&store, "r0").unwrap();
    journal(&store, "r1").unwrap();
    // keyring() seals under data key 1.
    assert_eq!(usage_of("audit_journal"), vec![(1, 2)]);
    assert_eq!(usage_of("audit_log"), vec![]);
    assert_eq!(store.settle_audit().unwrap(), 2);
    assert_eq!(usage_of("audit_journal"), vec![]);
    assert_eq!(usage_of("audit_log"), vec![(1, 2)]);
}
