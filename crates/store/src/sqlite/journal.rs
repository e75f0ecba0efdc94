//! The read journal: a second, small SQLite file beside the store where the audit entries of
//! reads become durable before their answers leave.
//!
//! Every commit to the main database makes every reader connection drop its page cache (SQLite
//! cannot tell which pages changed), so appending each read's entry to `audit_log` made every
//! other read start from cold pages. Reads' entries therefore commit here, group-committed by
//! this file's own writer thread (one fsync per group), and are folded into the log — chain,
//! Merkle nodes, search keys — in large batches by [`crate::audit_log::fold_journal`]: every
//! [`super::FOLD_SPACING`] and before anything reads the log. Writes keep appending their
//! entries in their own transaction.
//!
//! A fold is idempotent: the main database records, in the transaction that appends the folded
//! entries, the journal's id and the last journal number folded (`audit_fold`), and a fold skips
//! what is at or below that mark. Rows are deleted from the journal only after their fold
//! committed, so a crash anywhere loses nothing and folds nothing twice, and no atomic commit
//! across the two files is needed. Journal numbers come from `AUTOINCREMENT` and are never
//! reused; the journal's random id tells a recreated journal from the one a mark belongs to.
//!
//! Entries are sealed under the data key to `audit-journal/<id>/<number>`, so a row cannot be
//! moved to another number or journal without its opening failing.
//!
//! The writer also keeps what it made durable in memory, in journal order ([`Recent`]), until it
//! is folded: a fold of this process's own entries takes them from there instead of selecting,
//! opening and hashing each row again. Anything else — rows of a crashed or another process, or
//! a gap where memory was full — is read from the file, so memory is only a shortcut.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use carevault_crypto::random::{Random, SystemRng};
use carevault_crypto::{BLIND_LEN, BlindTag, Keyring};
use rusqlite::{Connection, params};

use crate::audit_log::{JournalDone, PreparedAppend};
use crate::error::{RestError, StoreError};

/// How many entries one journal commit carries at most.
const MAX_GROUP: usize = 4096;
/// The longest a group commit waits for requests in progress to queue their entries.
const MAX_GATHER: Duration = Duration::from_millis(1);
/// Most durable entries kept in memory for the fold ([`Recent`]), about 32 MiB at most: more
/// than a second's reads (the fold spacing) at any rate this server reaches; past it, groups are
/// left to be read back from the file.
const RECENT_MAX: usize = 8 * super::FOLD_BATCH;
/// Entries journaled but not yet folded beyond which new ones are refused: a log that cannot
/// keep up (or cannot be written) must stop reads rather than let the journal grow without end.
pub(crate) const MAX_BACKLOG: u64 = 262_144;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS journal (
    jseq INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so a fold mark stays meaningful
    recorded INTEGER NOT NULL,
    entry BLOB NOT NULL,                     -- canonical bytes sealed to audit-journal/<id>/<jseq>
    tags BLOB NOT NULL                       -- the blind tags of its search keys, concatenated
);
CREATE TABLE IF NOT EXISTS journal_meta (id BLOB NOT NULL);
";

/// A journaled entry read back, opened and hashed, ready to be folded.
#[derive(Debug)]
pub struct JournalRow {
    /// Its number in the journal, from 1.
    pub jseq: u64,
    /// The entry.
    pub entry: PreparedAppend,
}

/// The journal file `carevault.db` keeps beside itself: `carevault.audit-journal.db`.
pub(crate) fn journal_path(store: &Path) -> PathBuf {
    let stem = store
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store".into());
    store.with_file_name(format!("{stem}.audit-journal.db"))
}

/// The identity an entry is sealed to: `audit-journal/<id in hex>/<jseq>`.
fn identity(id: &[u8; 16], jseq: u64) -> Vec<u8> {
    use std::io::Write as _;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"audit-journal/");
    for b in id {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
    // Writing into a Vec cannot fail.
    let _ = write!(out, "/{jseq}");
    out
}

/// Entries this process made durable and has not yet seen folded, in journal order, each with
/// its number: what a fold would otherwise select, open and hash again. At most [`RECENT_MAX`];
/// a group that does not fit is not kept, and the fold reads it from the file.
#[derive(Default)]
struct Recent(VecDeque<(u64, PreparedAppend)>);

impl Recent {
    /// Keeps `entries`, numbered `first`, `first + 1`, …, when they fit.
    fn keep(&mut self, first: u64, entries: Vec<PreparedAppend>) {
        if self.0.len() + entries.len() > RECENT_MAX {
            return;
        }
        self.0.extend((first..).zip(entries));
    }

    /// Up to `limit` entries numbered `after + 1`, `after + 2`, … without a gap, taken out;
    /// none when the first kept entry is not `after + 1` (the file must be read then). Entries
    /// at or below `after` are folded and dropped. Only the count is found under the caller's
    /// lock; the entries move out in one piece.
    fn take_after(&mut self, after: u64, limit: usize) -> VecDeque<(u64, PreparedAppend)> {
        while self.0.front().is_some_and(|(j, _)| *j <= after) {
            self.0.pop_front();
        }
        let run = self
            .0
            .iter()
            .zip(after + 1..)
            .take(limit)
            .take_while(|((j, _), want)| j == want)
            .count();
        let rest = self.0.split_off(run);
        std::mem::replace(&mut self.0, rest)
    }
}

#[derive(Default)]
struct Queue {
    waiting: Vec<(PreparedAppend, JournalDone)>,
    closed: bool,
}

type Shared = Arc<(Mutex<Queue>, Condvar)>;

/// The requests in progress that have said they will journal an entry soon
/// ([`crate::Store::expect_journal`]).
///
/// Every fsync costs the same whether it carries one entry or a hundred, and under load most
/// groups would carry one or two: the entries of requests still being answered arrive just after
/// the commit started. So a group commit waits, at most [`MAX_GATHER`], while more requests that
/// will journal are still in progress than have queued their entries, and commits as soon as the
/// queued ones are at least as many (as PostgreSQL's `commit_delay` with `commit_siblings`,
/// driven by the requests actually in progress). Waiting for every request in progress would
/// make the groups larger, but under steady load it ends with every request waiting on the
/// fsync and the processors idle meanwhile (12–15 % idle at 16 connections, docs/benchmarks.md
/// "session 8"); committing at half keeps the other half being answered during the fsync. A
/// lone request never waits, since its own entry is the last one expected.
pub struct Expected {
    count: AtomicUsize,
    queue: Shared,
    /// The longest a group commit waits, in µs ([`MAX_GATHER`]; tests change it).
    max_gather_us: AtomicU64,
    /// Groups committed so far.
    groups: AtomicU64,
}

impl std::fmt::Debug for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expected")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl Expected {
    pub(crate) fn add(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn remove(&self) {
        let left = self.count.fetch_sub(1, Ordering::AcqRel) - 1;
        // A gathering writer may commit once the queued entries are at least as many as the
        // requests still in progress. Checking and notifying under the lock means the writer
        // is either waiting (and woken) or has not yet read the count.
        let (m, cv) = &*self.queue;
        let q = lock(m);
        if !q.waiting.is_empty() && q.waiting.len() >= left {
            cv.notify_one();
        }
    }

    /// Whether a group of `queued` entries should wait for more: more requests that will
    /// journal are still in progress than have queued.
    fn worth_waiting(&self, queued: usize) -> bool {
        self.count.load(Ordering::Acquire) > queued
    }

    fn max_gather(&self) -> Duration {
        Duration::from_micros(self.max_gather_us.load(Ordering::Acquire))
    }

    /// Sets the longest a group commit waits for expected entries.
    #[cfg(test)]
    pub(crate) fn set_max_gather(&self, d: Duration) {
        self.max_gather_us
            .store(d.as_micros() as u64, Ordering::Release);
    }

    /// Groups committed so far.
    #[cfg(test)]
    pub(crate) fn groups(&self) -> u64 {
        self.groups.load(Ordering::Acquire)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a thread panicked while holding it; the queue stays usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The journal of one store: its writer thread and a side connection for folds and pruning.
pub(crate) struct ReadJournal {
    id: [u8; 16],
    keyring: Arc<Keyring>,
    queue: Shared,
    expected: Arc<Expected>,
    writer: Mutex<Option<JoinHandle<()>>>,
    side: Mutex<Connection>,
    /// The highest journal number this process has made durable.
    durable: Arc<AtomicU64>,
    /// The highest journal number known to be folded into the log.
    folded: AtomicU64,
    /// What this process made durable and a fold has not yet taken.
    recent: Arc<Mutex<Recent>>,
}

impl std::fmt::Debug for ReadJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadJournal").finish_non_exhaustive()
    }
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_millis(super::BUSY_TIMEOUT_MS))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA temp_store=MEMORY; \
         PRAGMA journal_size_limit=16777216;",
    )?;
    Ok(conn)
}

impl ReadJournal {
    /// Opens (creating if needed) the journal beside the store file `store`, and starts its
    /// writer thread.
    pub(crate) fn open(store: &Path, keyring: Arc<Keyring>) -> Result<Self, StoreError> {
        let path = journal_path(store);
        let open_err = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        let conn = open_connection(&path).map_err(|e| open_err(e.to_string()))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| open_err(e.to_string()))?;
        let id = journal_id(&conn).map_err(|e| open_err(e.to_string()))?;
        // Numbers go on from the last one ever given, durable or folded before this process.
        let last: i64 = conn
            .query_row(
                "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'journal'), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| open_err(e.to_string()))?;
        let side = open_connection(&path).map_err(|e| open_err(e.to_string()))?;
        // Deletions of folded rows need not survive a crash: the fold mark already skips them.
        side.execute_batch("PRAGMA synchronous=NORMAL;")
            .map_err(|e| open_err(e.to_string()))?;
        let queue: Shared = Arc::default();
        let durable = Arc::new(AtomicU64::new(last as u64));
        let expected = Arc::new(Expected {
            count: AtomicUsize::new(0),
            queue: queue.clone(),
            max_gather_us: AtomicU64::new(MAX_GATHER.as_micros() as u64),
            groups: AtomicU64::new(0),
        });
        let recent: Arc<Mutex<Recent>> = Arc::default();
        let writer_side = WriterSide {
            queue: queue.clone(),
            expected: expected.clone(),
            durable: durable.clone(),
            recent: recent.clone(),
            keyring: keyring.clone(),
            id,
        };
        let writer = std::thread::Builder::new()
            .name("carevault-audit-journal".into())
            .spawn(move || writer_loop(conn, &writer_side))
            .map_err(|e| open_err(format!("the journal thread could not start: {e}")))?;
        Ok(ReadJournal {
            id,
            keyring,
            queue,
            expected,
            writer: Mutex::new(Some(writer)),
            side: Mutex::new(side),
            durable,
            folded: AtomicU64::new(0),
            recent,
        })
    }

    /// The journal's random id, which fold marks name.
    pub(crate) fn id(&self) -> &[u8; 16] {
        &self.id
    }

    /// Queues `entry`; `done` is called on the journal's thread once it is durable, or with the
    /// error that kept it from being written. Refuses at once when the log is too far behind.
    pub(crate) fn append(&self, entry: PreparedAppend, done: JournalDone) {
        let backlog = self.backlog();
        if backlog >= MAX_BACKLOG {
            done(Err(RestError::Store(format!(
                "{backlog} audit entries of reads are waiting to join the audit log, which is not keeping up"
            ))));
            return;
        }
        let (m, cv) = &*self.queue;
        let mut q = lock(m);
        if q.closed {
            drop(q);
            done(Err(RestError::Store("the audit journal is closed".into())));
            return;
        }
        q.waiting.push((entry, done));
        // The writer waits on an empty queue, or while gathering (until enough expected
        // requests have queued, whose releases wake it), so only the first entry needs to.
        if q.waiting.len() == 1 {
            cv.notify_one();
        }
    }

    /// The requests in progress that will journal soon.
    pub(crate) fn expected(&self) -> &Arc<Expected> {
        &self.expected
    }

    /// Entries journaled and not known to be folded.
    pub(crate) fn backlog(&self) -> u64 {
        self.durable
            .load(Ordering::Acquire)
            .saturating_sub(self.folded.load(Ordering::Acquire))
    }

    /// Whether this process has journaled entries that are not known to be folded.
    pub(crate) fn has_unfolded(&self) -> bool {
        self.durable.load(Ordering::Acquire) > self.folded.load(Ordering::Acquire)
    }

    /// Up to `limit` journaled entries after the last one known to be folded, in journal
    /// order, opened and hashed: this process's own from memory when they follow that mark
    /// without a gap, else from the file. An entry that cannot be opened is an integrity error
    /// naming it.
    pub(crate) fn pending(&self, limit: usize) -> Result<Vec<JournalRow>, StoreError> {
        let after = self.folded.load(Ordering::Acquire);
        let kept = lock(&self.recent).take_after(after, limit);
        if !kept.is_empty() {
            return Ok(kept
                .into_iter()
                .map(|(jseq, entry)| JournalRow { jseq, entry })
                .collect());
        }
        let stored: Vec<(u64, i64, Vec<u8>, Vec<u8>)> = {
            let side = lock(&self.side);
            let mut stmt = side.prepare_cached(
                "SELECT jseq, recorded, entry, tags FROM journal WHERE jseq > ?1 ORDER BY jseq LIMIT ?2",
            )?;
            stmt.query_map(params![after as i64, limit as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?
        };
        stored
            .into_iter()
            .map(|(jseq, recorded_ms, sealed, tags)| {
                let bad = |what: String| {
                    StoreError::Integrity(format!(
                        "read journal entry {jseq} (not yet in the audit log) {what}"
                    ))
                };
                let canonical = self
                    .keyring
                    .open(&identity(&self.id, jseq), &sealed)
                    .map_err(|e| bad(format!("cannot be opened: {e}")))?;
                if tags.len() % BLIND_LEN != 0 {
                    return Err(bad("has malformed search keys".into()));
                }
                let tags = tags
                    .chunks_exact(BLIND_LEN)
                    .map(|c| {
                        let mut t: BlindTag = [0; BLIND_LEN];
                        t.copy_from_slice(c);
                        t
                    })
                    .collect();
                Ok(JournalRow {
                    jseq,
                    entry: PreparedAppend {
                        recorded_ms,
                        leaf: carevault_audit::merkle::leaf_hash(&canonical),
                        canonical,
                        tags,
                    },
                })
            })
            .collect()
    }

    /// Records that entries up to `jseq` are in the log, and deletes them from the journal.
    pub(crate) fn folded_up_to(&self, jseq: u64) -> Result<(), StoreError> {
        self.folded.fetch_max(jseq, Ordering::AcqRel);
        lock(&self.side)
            .prepare_cached("DELETE FROM journal WHERE jseq <= ?1")?
            .execute([jseq as i64])?;
        Ok(())
    }

    /// How many entries wait sealed under each data key (the key id of the sealed header).
    pub(crate) fn key_usage(&self) -> Result<Vec<crate::backend::KeyUsage>, StoreError> {
        let side = lock(&self.side);
        let mut stmt = side.prepare_cached(
            "SELECT substr(entry, 2, 4), count(*) FROM journal WHERE length(entry) > 0 GROUP BY 1",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (key, n) = row?;
            let key: [u8; 4] = key.try_into().map_err(|_| {
                StoreError::Integrity("a read journal entry has no sealed header".into())
            })?;
            out.push(crate::backend::KeyUsage {
                table: "audit_journal",
                key_id: u32::from_be_bytes(key),
                rows: n as u64,
                current: n as u64,
            });
        }
        Ok(out)
    }

    /// Checks that an entry could be journaled now: inserts a probe row and rolls it back.
    pub(crate) fn probe(&self) -> Result<(), StoreError> {
        let side = lock(&self.side);
        side.execute_batch("SAVEPOINT probe")?;
        let inserted = side
            .prepare_cached(
                "INSERT INTO journal (jseq, recorded, entry, tags) VALUES (-1, 0, x'', x'')",
            )
            .and_then(|mut st| st.execute([]));
        side.execute_batch("ROLLBACK TO probe; RELEASE probe;")?;
        inserted?;
        Ok(())
    }

    /// Writes what is queued, refuses anything queued later, and stops the writer thread.
    pub(crate) fn close(&self) {
        {
            let (m, cv) = &*self.queue;
            lock(m).closed = true;
            cv.notify_all();
        }
        if let Some(h) = lock(&self.writer).take() {
            let _ = h.join();
        }
    }
}

/// The journal's id, made on first open.
fn journal_id(conn: &Connection) -> Result<[u8; 16], StoreError> {
    let existing: Option<Vec<u8>> = conn
        .query_row("SELECT id FROM journal_meta LIMIT 1", [], |r| r.get(0))
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            other => Err(other),
        })?;
    if let Some(v) = existing {
        return v
            .try_into()
            .map_err(|_| StoreError::Integrity("the audit journal's id is not 16 bytes".into()));
    }
    let mut id = [0u8; 16];
    SystemRng::new()
        .fill(&mut id)
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    conn.execute("INSERT INTO journal_meta (id) VALUES (?1)", [&id[..]])?;
    Ok(id)
}

/// What the journal's writer thread shares with the store.
struct WriterSide {
    queue: Shared,
    expected: Arc<Expected>,
    durable: Arc<AtomicU64>,
    recent: Arc<Mutex<Recent>>,
    keyring: Arc<Keyring>,
    id: [u8; 16],
}

fn writer_loop(conn: Connection, side: &WriterSide) {
    let WriterSide {
        queue,
        expected,
        durable,
        recent,
        keyring,
        id,
    } = side;
    let (m, cv) = &**queue;
    loop {
        let group: Vec<(PreparedAppend, JournalDone)> = {
            let mut q = lock(m);
            while q.waiting.is_empty() && !q.closed {
                q = cv.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.waiting.is_empty() {
                break;
            }
            let deadline = Instant::now() + expected.max_gather();
            while expected.worth_waiting(q.waiting.len())
                && q.waiting.len() < MAX_GROUP
                && !q.closed
            {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                q = cv
                    .wait_timeout(q, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let n = q.waiting.len().min(MAX_GROUP);
            q.waiting.drain(..n).collect()
        };
        let (entries, dones): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        match write_group(&conn, keyring, id, &entries) {
            Ok(last) => {
                let first = last + 1 - entries.len() as u64;
                lock(recent).keep(first, entries);
                durable.fetch_max(last, Ordering::AcqRel);
                expected.groups.fetch_add(1, Ordering::AcqRel);
                for done in dones {
                    done(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the audit journal could not be written");
                let text = e.to_string();
                for done in dones {
                    done(Err(RestError::Store(text.clone())));
                }
            }
        }
    }
}

/// Appends `entries` in one transaction (one fsync); returns the last journal number.
fn write_group(
    conn: &Connection,
    keyring: &Keyring,
    id: &[u8; 16],
    entries: &[PreparedAppend],
) -> Result<u64, StoreError> {
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let written = insert_group(conn, keyring, id, entries)
        .and_then(|last| Ok(conn.prepare_cached("COMMIT")?.execute([]).map(|_| last)?));
    if written.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    written
}

fn insert_group(
    conn: &Connection,
    keyring: &Keyring,
    id: &[u8; 16],
    entries: &[PreparedAppend],
) -> Result<u64, StoreError> {
    let last: i64 = conn
        .prepare_cached(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'journal'), 0)",
        )?
        .query_row([], |r| r.get(0))?;
    let mut jseq = last as u64;
    let mut insert = conn.prepare_cached(
        "INSERT INTO journal (jseq, recorded, entry, tags) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut tags = Vec::new();
    for e in entries {
        jseq += 1;
        let sealed = keyring.seal(&identity(id, jseq), &e.canonical)?;
        tags.clear();
        for t in &e.tags {
            tags.extend_from_slice(t);
        }
        insert.execute(params![jseq as i64, e.recorded_ms, sealed, tags])?;
    }
    Ok(jseq)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::{RECENT_MAX, Recent, identity};
    use crate::audit_log::PreparedAppend;

    fn entries(n: usize) -> Vec<PreparedAppend> {
        (0..n)
            .map(|i| PreparedAppend {
                recorded_ms: i as i64,
                canonical: format!("e{i}").into_bytes(),
                leaf: [i as u8; 32],
                tags: Vec::new(),
            })
            .collect()
    }

    fn numbers(rows: &VecDeque<(u64, PreparedAppend)>) -> Vec<u64> {
        rows.iter().map(|(j, _)| *j).collect()
    }

    #[test]
    fn an_entry_is_sealed_to_the_journal_id_in_lowercase_hex_and_its_number() {
        let id = [
            0x00, 0x01, 0x0f, 0x10, 0x7a, 0x80, 0x9b, 0xa5, 0xc3, 0xd0, 0xe1, 0xf0, 0xfe, 0xff,
            0x42, 0x24,
        ];
        assert_eq!(
            identity(&id, 1234),
            b"audit-journal/00010f107a809ba5c3d0e1f0feff4224/1234".to_vec()
        );
    }

    #[test]
    fn kept_entries_are_taken_in_order_from_the_mark_and_only_without_a_gap() {
        let mut recent = Recent::default();
        recent.keep(1, entries(3));
        // Numbers 4 and 5 were made durable by another process: a gap in what this one holds.
        recent.keep(6, entries(2));
        let first = recent.take_after(0, 100);
        assert_eq!(numbers(&first), vec![1, 2, 3]);
        assert_eq!(first[2].1.canonical, b"e2");
        // After mark 3 the next kept one is 6: the fold must read 4 and 5 from the file.
        assert!(recent.take_after(3, 100).is_empty());
        // Once a fold from the file reached 5, the kept ones follow again; the limit holds.
        assert_eq!(numbers(&recent.take_after(5, 1)), vec![6]);
        assert_eq!(numbers(&recent.take_after(6, 1)), vec![7]);
        assert!(recent.take_after(7, 100).is_empty());
    }

    #[test]
    fn kept_entries_at_or_below_a_mark_are_dropped_and_a_full_memory_keeps_no_more() {
        let mut recent = Recent::default();
        recent.keep(1, entries(4));
        // Another process folded up to 3.
        assert_eq!(numbers(&recent.take_after(3, 100)), vec![4]);
        let mut full = Recent::default();
        full.keep(1, entries(RECENT_MAX - 1));
        // A group that does not fit is not kept (not even in part); the file has it.
        full.keep(RECENT_MAX as u64, entries(2));
        let all = full.take_after(0, usize::MAX);
        assert_eq!(all.len(), RECENT_MAX - 1);
        assert_eq!(all.back().map(|(j, _)| *j), Some(RECENT_MAX as u64 - 1));
    }
}
