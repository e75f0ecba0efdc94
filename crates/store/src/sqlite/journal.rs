//! The read journal: a file beside the store where the audit entries of reads become durable
//! before their answers leave.
//!
//! Every commit to the main database makes every reader connection drop its page cache (SQLite
//! cannot tell which pages changed), so appending each read's entry to `audit_log` made every
//! other read start from cold pages. Reads' entries therefore become durable here, group-
//! committed by the journal's own writer thread (one durable write per group, see
//! [`super::journal_file`]), and are folded into the log — chain, Merkle nodes, search keys —
//! in large batches by [`crate::audit_log::fold_journal`]: every [`super::FOLD_SPACING`] and
//! before anything reads the log. Writes keep appending their entries in their own transaction.
//!
//! A fold is idempotent: the main database records, in the transaction that appends the folded
//! entries, the journal's id and the last journal number folded (`audit_fold`), and a fold skips
//! what is at or below that mark. A record's blocks are reused only once its entries are at or
//! below the mark this process knows, so a crash anywhere loses nothing and folds nothing twice,
//! and no atomic commit across the two files is needed. Numbers go on after both the highest in
//! the file and the mark, so they are never reused once folded; the journal's random id tells
//! a recreated journal from the one a mark belongs to.
//!
//! Each entry is sealed under the data key — its time, its search keys' blind tags and its
//! canonical bytes — to `audit-journal/<id>/<number>`, so an entry cannot be altered, or moved
//! to another number or journal, without its opening failing.
//!
//! The writer also keeps what it made durable in memory, in journal order ([`Recent`]), until it
//! is folded: a fold of this process's own entries takes them from there instead of reading,
//! opening and hashing each one again. Anything else — entries of a crashed or another process,
//! or a gap where memory was full — is read from the file, so memory is only a shortcut.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use carevault_crypto::random::{Random, SystemRng};
use carevault_crypto::{BLIND_LEN, BlindTag, Keyring};

use super::journal_file::{self, Group, Writer};
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

/// The most disk a journal takes unless configured otherwise: 1 GiB.
pub const DEFAULT_JOURNAL_MAX_BYTES: u64 = 1 << 30;

/// A journaled entry read back, opened and hashed, ready to be folded.
#[derive(Debug)]
pub struct JournalRow {
    /// Its number in the journal, from 1.
    pub jseq: u64,
    /// The entry.
    pub entry: PreparedAppend,
}

/// The journal file `carevault.db` keeps beside itself: `carevault.audit-journal`.
pub(crate) fn journal_path(store: &Path) -> PathBuf {
    let stem = store
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store".into());
    store.with_file_name(format!("{stem}.audit-journal"))
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

/// The journal's writer, once this process has become it (on its first entry or probe).
enum FileState {
    Idle,
    Open(Writer),
    Closed,
}

/// What a store and its journal's writer thread share.
struct Inner {
    id: [u8; 16],
    path: PathBuf,
    max_bytes: u64,
    keyring: Arc<Keyring>,
    queue: Shared,
    expected: Arc<Expected>,
    file: Mutex<FileState>,
    /// The highest journal number made durable (by this process, or found in the file).
    durable: AtomicU64,
    /// The highest journal number known to be folded into the log.
    folded: AtomicU64,
    /// What this process made durable and a fold has not yet taken.
    recent: Mutex<Recent>,
}

impl Inner {
    /// This process's writer of the journal, made on first use: it locks the file, so another
    /// process writing the same journal is refused rather than interleaved.
    fn writer<'a>(&self, state: &'a mut FileState) -> Result<&'a mut Writer, StoreError> {
        if let FileState::Idle = state {
            let (mut writer, last) = Writer::open(&self.path, self.id, self.max_bytes)?;
            self.durable.fetch_max(last, Ordering::AcqRel);
            // A journal grown while the log fell behind goes back to its first size once all
            // it holds is in the log (the store folded it when it opened).
            let folded = self.folded.load(Ordering::Acquire);
            match writer.shrink_if_folded(folded, journal_file::initial_bytes(self.max_bytes)) {
                Ok(true) => tracing::info!(
                    path = %self.path.display(),
                    "the audit journal was cut back to its first size: every entry it held is in the audit log"
                ),
                Ok(false) => {}
                // Not fatal: the journal keeps its size and goes on.
                Err(e) => tracing::warn!(error = %e, "the audit journal could not be cut back"),
            }
            *state = FileState::Open(writer);
        }
        match state {
            FileState::Open(w) => Ok(w),
            _ => Err(StoreError::Backend("the audit journal is closed".into())),
        }
    }

    /// Seals `entries`, numbered on from the highest number given, and writes them as one
    /// durable record; returns the first number.
    fn commit(&self, entries: &[PreparedAppend]) -> Result<u64, StoreError> {
        let mut state = lock(&self.file);
        let writer = self.writer(&mut state)?;
        let first = self.durable.load(Ordering::Acquire) + 1;
        let mut plain = Vec::new();
        let sealed = entries
            .iter()
            .zip(first..)
            .map(|(e, jseq)| {
                plain.clear();
                plain.extend_from_slice(&e.recorded_ms.to_le_bytes());
                plain.extend_from_slice(&(e.tags.len() as u16).to_le_bytes());
                for t in &e.tags {
                    plain.extend_from_slice(t);
                }
                plain.extend_from_slice(&e.canonical);
                Ok(self.keyring.seal(&identity(&self.id, jseq), &plain)?)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        writer.write(first, &sealed, self.folded.load(Ordering::Acquire))?;
        Ok(first)
    }

    /// Opens the entry numbered `jseq` read from the file.
    fn open_entry(&self, jseq: u64, sealed: &[u8]) -> Result<PreparedAppend, StoreError> {
        let bad = |what: String| {
            StoreError::Integrity(format!(
                "read journal entry {jseq} (not yet in the audit log) {what}"
            ))
        };
        let plain = self
            .keyring
            .open(&identity(&self.id, jseq), sealed)
            .map_err(|e| bad(format!("cannot be opened: {e}")))?;
        let malformed = || bad("is malformed".into());
        let recorded_ms = i64::from_le_bytes(
            plain
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(malformed)?,
        );
        let ntags = usize::from(u16::from_le_bytes(
            plain
                .get(8..10)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(malformed)?,
        ));
        let tags_end = 10 + ntags * BLIND_LEN;
        let tags = plain
            .get(10..tags_end)
            .ok_or_else(malformed)?
            .chunks_exact(BLIND_LEN)
            .map(|c| {
                let mut t: BlindTag = [0; BLIND_LEN];
                t.copy_from_slice(c);
                t
            })
            .collect();
        let canonical = plain[tags_end..].to_vec();
        Ok(PreparedAppend {
            recorded_ms,
            leaf: carevault_audit::merkle::leaf_hash(&canonical),
            canonical,
            tags,
        })
    }
}

/// The journal of one store: its writer thread, and what folds read.
pub(crate) struct ReadJournal {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for ReadJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadJournal").finish_non_exhaustive()
    }
}

/// Entries read from the file after the fold mark, as sealed, in number order.
type Run = Vec<(u64, Vec<u8>)>;

/// The entries numbered `after + 1`, `after + 2`, … found in `groups`, without a gap and at
/// most `limit`, and the numbers missing after them below one found, when some are.
fn run_after(mut groups: Vec<Group>, after: u64, limit: usize) -> (Run, Option<(u64, u64)>) {
    groups.retain(|g| g.last() > after);
    groups.sort_unstable_by_key(|g| g.first);
    let mut want = after + 1;
    let mut out = Vec::new();
    for g in groups {
        if out.len() >= limit {
            break;
        }
        if g.first > want {
            return (out, Some((want, g.first - 1)));
        }
        // A record overlapping one already taken (the same entries copied) adds only what
        // follows them.
        for (jseq, sealed) in (g.first..).zip(g.sealed) {
            if jseq == want && out.len() < limit {
                out.push((jseq, sealed));
                want += 1;
            }
        }
    }
    (out, None)
}

impl ReadJournal {
    /// Opens (making it if needed) the journal beside the store file `store`, which may take
    /// up to `max_bytes` of disk, and starts its writer thread. This process becomes the
    /// journal's writer only when it first journals (or probes): other processes fold it.
    pub(crate) fn open(
        store: &Path,
        keyring: Arc<Keyring>,
        max_bytes: u64,
    ) -> Result<Self, StoreError> {
        let path = journal_path(store);
        let mut fresh = [0u8; 16];
        SystemRng::new()
            .fill(&mut fresh)
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        journal_file::create_if_missing(&path, fresh, journal_file::initial_bytes(max_bytes))?;
        let id = journal_file::read_id(&path)?;
        let last = journal_file::scan(&path, &id)?
            .iter()
            .map(Group::last)
            .max()
            .unwrap_or(0);
        let queue: Shared = Arc::default();
        let expected = Arc::new(Expected {
            count: AtomicUsize::new(0),
            queue: queue.clone(),
            max_gather_us: AtomicU64::new(MAX_GATHER.as_micros() as u64),
            groups: AtomicU64::new(0),
        });
        let inner = Arc::new(Inner {
            id,
            path: path.clone(),
            max_bytes,
            keyring,
            queue,
            expected,
            file: Mutex::new(FileState::Idle),
            durable: AtomicU64::new(last),
            folded: AtomicU64::new(0),
            recent: Mutex::default(),
        });
        let for_thread = inner.clone();
        let thread = std::thread::Builder::new()
            .name("carevault-audit-journal".into())
            .spawn(move || writer_loop(&for_thread))
            .map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                reason: format!("the journal thread could not start: {e}"),
            })?;
        Ok(ReadJournal {
            inner,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The journal's random id, which fold marks name.
    pub(crate) fn id(&self) -> &[u8; 16] {
        &self.inner.id
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
        let (m, cv) = &*self.inner.queue;
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
        &self.inner.expected
    }

    /// Entries journaled and not known to be folded.
    pub(crate) fn backlog(&self) -> u64 {
        self.inner
            .durable
            .load(Ordering::Acquire)
            .saturating_sub(self.inner.folded.load(Ordering::Acquire))
    }

    /// Whether entries are journaled that are not known to be folded.
    pub(crate) fn has_unfolded(&self) -> bool {
        self.backlog() > 0
    }

    /// Up to `limit` journaled entries after the last one known to be folded, in journal
    /// order, opened and hashed: this process's own from memory when they follow that mark
    /// without a gap, else from the file. `mark` reads the log's fold mark, which another
    /// process may have moved (and this one then reused the blocks below it): reading the file
    /// starts after it. An entry that cannot be opened, or numbers missing below one found,
    /// are integrity errors naming them.
    pub(crate) fn pending(
        &self,
        limit: usize,
        mark: &dyn Fn() -> Result<u64, StoreError>,
    ) -> Result<Vec<JournalRow>, StoreError> {
        let after = self.inner.folded.load(Ordering::Acquire);
        let kept = lock(&self.inner.recent).take_after(after, limit);
        if !kept.is_empty() {
            return Ok(kept
                .into_iter()
                .map(|(jseq, entry)| JournalRow { jseq, entry })
                .collect());
        }
        let (run, missing) = self.read_run(limit, mark)?;
        // Problems are named in number order: an entry before the hole that does not open first.
        let rows = run
            .into_iter()
            .map(|(jseq, sealed)| {
                Ok(JournalRow {
                    jseq,
                    entry: self.inner.open_entry(jseq, &sealed)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        match missing {
            None => Ok(rows),
            Some((from, to)) => Err(StoreError::Integrity(format!(
                "read journal entries {from} to {to} are missing (not yet in the audit log, and removed from the journal)"
            ))),
        }
    }

    /// The entries after the fold mark found in the file, as sealed, and the numbers missing
    /// after them below one found. The writer may be mid-write while the file is read, and a
    /// record it is writing reads as torn: numbers are taken as missing only when two readings
    /// in a row, each after the mark as it then stood, miss the same ones.
    fn read_run(
        &self,
        limit: usize,
        mark: &dyn Fn() -> Result<u64, StoreError>,
    ) -> Result<(Run, Option<(u64, u64)>), StoreError> {
        let mut before = None;
        loop {
            // What the log holds is folded, whoever folded it.
            self.folded_up_to(mark()?);
            let after = self.inner.folded.load(Ordering::Acquire);
            let groups = journal_file::scan(&self.inner.path, &self.inner.id)?;
            let (run, missing) = run_after(groups, after, limit);
            if missing.is_none() || missing == before {
                return Ok((run, missing));
            }
            before = missing;
        }
    }

    /// Records that entries up to `jseq` are in the log: their blocks may be reused, and
    /// numbers go on after it.
    pub(crate) fn folded_up_to(&self, jseq: u64) {
        self.inner.folded.fetch_max(jseq, Ordering::AcqRel);
        self.inner.durable.fetch_max(jseq, Ordering::AcqRel);
    }

    /// How many entries wait in the file sealed under each data key (the key id of the sealed
    /// header), counting every entry after the fold mark this process knows.
    pub(crate) fn key_usage(&self) -> Result<Vec<crate::backend::KeyUsage>, StoreError> {
        let after = self.inner.folded.load(Ordering::Acquire);
        let mut counts = std::collections::BTreeMap::<u32, u64>::new();
        for g in journal_file::scan(&self.inner.path, &self.inner.id)? {
            for (jseq, sealed) in (g.first..).zip(&g.sealed) {
                if jseq <= after {
                    continue;
                }
                let key = carevault_crypto::sealed_key_id(sealed).ok_or_else(|| {
                    StoreError::Integrity(format!("read journal entry {jseq} has no sealed header"))
                })?;
                *counts.entry(key).or_default() += 1;
            }
        }
        Ok(counts
            .into_iter()
            .map(|(key_id, n)| crate::backend::KeyUsage {
                table: "audit_journal",
                key_id,
                rows: n,
                current: n,
            })
            .collect())
    }

    /// Checks that an entry could be journaled now: this process is (or can become) the
    /// journal's writer, and a record has room.
    pub(crate) fn probe(&self) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let mut state = lock(&inner.file);
        let writer = inner.writer(&mut state)?;
        if writer.has_room(inner.folded.load(Ordering::Acquire)) {
            Ok(())
        } else {
            Err(StoreError::Backend(format!(
                "the audit journal is full: {} entries of reads wait to join the audit log",
                self.backlog()
            )))
        }
    }

    /// Writes what is queued, refuses anything queued later, stops the writer thread and lets
    /// go of the file.
    pub(crate) fn close(&self) {
        {
            let (m, cv) = &*self.inner.queue;
            lock(m).closed = true;
            cv.notify_all();
        }
        if let Some(h) = lock(&self.thread).take() {
            let _ = h.join();
        }
        *lock(&self.inner.file) = FileState::Closed;
    }
}

fn writer_loop(inner: &Inner) {
    let (m, cv) = &*inner.queue;
    let expected = &inner.expected;
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
        match inner.commit(&entries) {
            Ok(first) => {
                let last = first + entries.len() as u64 - 1;
                lock(&inner.recent).keep(first, entries);
                inner.durable.fetch_max(last, Ordering::AcqRel);
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::{RECENT_MAX, Recent, identity, run_after};
    use crate::audit_log::PreparedAppend;
    use crate::sqlite::journal_file::Group;

    fn group(first: u64, n: usize) -> Group {
        Group {
            block: 0,
            blocks: 1,
            first,
            sealed: (0..n).map(|i| vec![(first as usize + i) as u8]).collect(),
        }
    }

    #[test]
    fn the_file_is_read_in_number_order_from_the_mark_and_a_hole_below_a_found_number_is_named() {
        // Found out of order (reused blocks), with a folded record and a copy of one.
        let found = vec![group(6, 2), group(1, 2), group(3, 3), group(4, 1)];
        let numbers = |r: &[(u64, Vec<u8>)]| r.iter().map(|(j, _)| *j).collect::<Vec<_>>();
        let whole = |after, limit| {
            let (run, missing) = run_after(found.clone(), after, limit);
            assert_eq!(missing, None);
            run
        };
        let run = whole(2, 100);
        assert_eq!(numbers(&run), vec![3, 4, 5, 6, 7]);
        assert_eq!(run[3].1, vec![6u8]);
        assert_eq!(numbers(&whole(2, 2)), vec![3, 4]);
        // The mark may fall inside a record.
        assert_eq!(numbers(&whole(4, 100)), vec![5, 6, 7]);
        assert!(whole(7, 100).is_empty());
        // 4 and 5 removed: 6 is found beyond the hole, and 3 comes before it.
        let holed = vec![group(6, 2), group(1, 3)];
        let (run, missing) = run_after(holed.clone(), 2, 100);
        assert_eq!((numbers(&run), missing), (vec![3], Some((4, 5))));
        // A torn last record is only not yet written.
        let (run, missing) = run_after(holed, 7, 100);
        assert_eq!((run.len(), missing), (0, None));
    }

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
