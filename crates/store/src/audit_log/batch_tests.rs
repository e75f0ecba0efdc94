//! Tests of [`AuditBatcher`] on a real SQLite store: batches of concurrent appends, the log they
//! leave (recomputed here from the entries' bytes with the audit crate), and failing batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};

use carevault_audit::chain;
use carevault_audit::merkle::{self, MemNodes, NodeSource};
use carevault_crypto::Keyring;

use super::{AuditAppend, AuditBatcher, AuditKey, append_durably, open, tree_head};
use crate::backend::{ReadTx, Store, WriteDone, WriteJob};
use crate::error::{RestError, StoreError};
use crate::open_sqlite;

/// The SQLite store, counting the jobs submitted to its writer.
struct Counting {
    inner: Arc<dyn Store>,
    submitted: AtomicUsize,
}

impl Store for Counting {
    fn keyring(&self) -> &Arc<Keyring> {
        self.inner.keyring()
    }
    fn reader(&self) -> Result<Box<dyn ReadTx + '_>, StoreError> {
        self.inner.reader()
    }
    fn write(&self, job: WriteJob) -> Result<(), RestError> {
        self.inner.write(job)
    }
    fn submit(&self, job: WriteJob, done: WriteDone) {
        self.submitted.fetch_add(1, Ordering::SeqCst);
        self.inner.submit(job, done);
    }
    fn checkpoint_truncate(&self) -> Result<bool, StoreError> {
        self.inner.checkpoint_truncate()
    }
    fn care_actors(&self, practitioner: &str) -> Result<Vec<String>, StoreError> {
        self.inner.care_actors(practitioner)
    }
    fn care_patients(
        &self,
        actors: &[String],
        now_ms: i64,
        windows: &crate::CareWindows,
        billing: bool,
    ) -> Result<Vec<String>, StoreError> {
        self.inner.care_patients(actors, now_ms, windows, billing)
    }
    fn has_care_relationship(
        &self,
        actors: &[String],
        patient: &str,
        now_ms: i64,
        windows: &crate::CareWindows,
        billing: bool,
    ) -> Result<bool, StoreError> {
        self.inner
            .has_care_relationship(actors, patient, now_ms, windows, billing)
    }
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf, Arc<Counting>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let keyring = Arc::new(Keyring::from_data_key(1, &[9u8; 32]).unwrap());
    let inner = open_sqlite(&path, keyring).unwrap();
    let store = Arc::new(Counting {
        inner,
        submitted: AtomicUsize::new(0),
    });
    (dir, path, store)
}

fn entry(text: &str) -> AuditAppend {
    AuditAppend {
        recorded_ms: 1_700_000_000_000,
        canonical: text.as_bytes().to_vec(),
        keys: vec![AuditKey::Patient(format!("Patient/{text}"))],
    }
}

/// Occupies the writer with a job that waits for the returned sender; returns once it runs, so
/// every job submitted until then waits for the next group.
fn hold_writer(store: &Arc<Counting>) -> (std::sync::mpsc::SyncSender<()>, Receiver<()>) {
    let (release, wait) = sync_channel::<()>(1);
    let (started, is_started) = sync_channel::<()>(1);
    let (finished, is_finished) = sync_channel::<()>(1);
    store.inner.submit(
        Box::new(move |_tx| {
            let _ = started.send(());
            let _ = wait.recv();
            Ok(())
        }),
        Box::new(move |_| {
            let _ = finished.send(());
        }),
    );
    is_started.recv().unwrap();
    (release, is_finished)
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
fn concurrent_appends_share_one_job_and_get_consecutive_seqs_in_a_sound_log() {
    let (_dir, _path, store) = setup();
    // A log of 5 entries already (a size with several right-edge nodes): the first batch
    // rebuilds the right edge from the stored nodes.
    append_durably(
        &*store,
        (0..5).map(|i| entry(&format!("before-{i}"))).collect(),
    )
    .unwrap();
    let batcher = Arc::new(AuditBatcher::new());

    // 40 callers queue while the writer is busy: they must all go in one job, in queue order.
    let (release, finished) = hold_writer(&store);
    let before = store.submitted.load(Ordering::SeqCst);
    let (send, results) = std::sync::mpsc::channel();
    for i in 0..40 {
        let send = send.clone();
        let prepared = entry(&format!("held-{i}")).prepare(store.keyring());
        batcher.append(
            &*store,
            prepared,
            Box::new(move |r| send.send((i, r)).unwrap()),
        );
    }
    assert_eq!(store.submitted.load(Ordering::SeqCst) - before, 1);
    release.send(()).unwrap();
    finished.recv().unwrap();
    let mut got: Vec<(u64, u64)> = (0..40)
        .map(|_| {
            let (i, r) = results.recv().unwrap();
            (i, r.unwrap())
        })
        .collect();
    got.sort();
    let expected: Vec<(u64, u64)> = (0..40).map(|i| (i, 6 + i)).collect();
    assert_eq!(got, expected);

    // An entry appended outside the batcher (as a write's entry is) moves the head, so the
    // next batch must not build on the right edge it kept.
    append_durably(&*store, vec![entry("outside")]).unwrap();

    // Then 8 threads × 25 appends racing each other through the same batcher.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (store, batcher) = (store.clone(), batcher.clone());
            std::thread::spawn(move || {
                (0..25)
                    .map(|i| {
                        let text = format!("race-{t}-{i}");
                        let p = entry(&text).prepare(store.keyring());
                        (batcher.append_and_wait(&*store, p).unwrap(), text)
                    })
                    .collect::<Vec<(u64, String)>>()
            })
        })
        .collect();
    let raced: Vec<(u64, String)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let mut seqs: Vec<u64> = raced.iter().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (47..=246).collect::<Vec<u64>>());

    let texts = assert_log_is_sound(&*store);
    assert_eq!(texts.len(), 246);
    assert_eq!(texts[5], b"held-0");
    assert_eq!(texts[44], b"held-39");
    assert_eq!(texts[45], b"outside");
    // Each racing caller got the seq of its own entry.
    for (seq, text) in &raced {
        assert_eq!(texts[*seq as usize - 1], text.as_bytes(), "entry {seq}");
    }
    // Entries are found by their keys at once.
    let mut r = store.reader().unwrap();
    let q = crate::backend::AuditQuery {
        tags: vec![vec![
            AuditKey::Patient("Patient/held-7".into()).tag(store.keyring()),
        ]],
        limit: 10,
        ..Default::default()
    };
    assert_eq!(r.audit_search(&q).unwrap(), vec![13]);
}

#[test]
fn a_failing_batch_fails_every_caller_and_leaves_no_entry() {
    let (_dir, path, store) = setup();
    let batcher = AuditBatcher::new();
    for i in 0..3 {
        batcher
            .append_and_wait(&*store, entry(&format!("ok-{i}")).prepare(store.keyring()))
            .unwrap();
    }
    // The log refuses its 6th entry, as a full disk would refuse a page.
    let admin = rusqlite::Connection::open(&path).unwrap();
    admin
        .execute_batch(
            "CREATE TRIGGER refuse_six BEFORE INSERT ON audit_log WHEN NEW.seq = 6 \
             BEGIN SELECT RAISE(ABORT, 'the disk is full'); END;",
        )
        .unwrap();
    let (release, finished) = hold_writer(&store);
    let (send, results) = std::sync::mpsc::channel();
    for i in 0..5 {
        let send = send.clone();
        batcher.append(
            &*store,
            entry(&format!("doomed-{i}")).prepare(store.keyring()),
            Box::new(move |r| send.send(r).unwrap()),
        );
    }
    release.send(()).unwrap();
    finished.recv().unwrap();
    for _ in 0..5 {
        assert!(
            results.recv().unwrap().is_err(),
            "every caller of the batch fails"
        );
    }
    // Entries 4 and 5 were written before the 6th failed; the batch left none of them, nor
    // their nodes or keys.
    let texts = assert_log_is_sound(&*store);
    assert_eq!(
        texts,
        vec![b"ok-0".to_vec(), b"ok-1".to_vec(), b"ok-2".to_vec()]
    );
    let pending: i64 = admin
        .query_row("SELECT count(*) FROM audit_ix_pending", [], |r| r.get(0))
        .unwrap();
    assert_eq!(pending, 3);

    // Once the disk has room again, the next batch continues the stored log.
    admin.execute_batch("DROP TRIGGER refuse_six;").unwrap();
    let seq = batcher
        .append_and_wait(&*store, entry("after").prepare(store.keyring()))
        .unwrap();
    assert_eq!(seq, 4);
    assert_eq!(assert_log_is_sound(&*store).len(), 4);
}
