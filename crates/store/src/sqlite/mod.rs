//! The embedded backend: one SQLite file in WAL mode with `synchronous=FULL`, one writer thread
//! that group-commits whatever jobs are waiting (one fsync per group), and a pool of read-only
//! connections that never wait for the writer.

pub(crate) mod care;
mod journal;
pub(crate) mod journal_file;
mod query;
pub(crate) mod schema;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carevault_crypto::Keyring;
use rusqlite::{Connection, OpenFlags};

use crate::audit_log::JournalDone;
use crate::backend::{Store, Tx, WriteDone, WriteJob};
use crate::care::CareWindows;
use crate::error::{RestError, StoreError};

#[cfg(test)]
pub(crate) use journal::journal_path;
pub use journal::{DEFAULT_JOURNAL_MAX_BYTES, Expected, JournalRow};
pub use query::SqlTx;

/// How many jobs one commit may carry at most.
const MAX_GROUP: usize = 256;
/// How long a connection waits for a lock held by another process (`carevault import`).
const BUSY_TIMEOUT_MS: u64 = 30_000;
/// How often journaled read entries are folded into the audit log while reads come. Each fold
/// is a commit to the main database, which makes every reader connection drop its page cache
/// and adds to the checkpoints: at 100 ms the SQLite reads of loaded audited reads took about
/// 20 µs more CPU each than without audit, at 1 s 7–15 µs (`perf`, docs/benchmarks.md "session
/// 7"). Anything that reads the log folds first, so the spacing only delays the SIEM streams,
/// by at most this much.
const FOLD_SPACING: Duration = Duration::from_secs(1);
/// Most journaled entries one fold job appends.
const FOLD_BATCH: usize = 8192;

/// Called with a job's outcome after its group's commit (on the writer's thread).
type Reply = WriteDone;

/// The SQLite store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    path: PathBuf,
    keyring: Arc<Keyring>,
    jobs: Mutex<Sender<(WriteJob, Reply)>>,
    readers: Mutex<Vec<Connection>>,
    max_readers: usize,
    /// Where reads' audit entries become durable (see `journal.rs`).
    journal: journal::ReadJournal,
    /// One fold at a time in this process.
    fold_lock: Mutex<()>,
    fold_memo: Arc<crate::audit_log::FoldMemo>,
}

/// What a store may be told when it is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The most disk the read journal may take (it grows to it only while the log falls
    /// behind; reads are refused when it is full).
    pub journal_max_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            journal_max_bytes: DEFAULT_JOURNAL_MAX_BYTES,
        }
    }
}

/// Opens (creating if needed) the SQLite store at `path`, folds what its read journal still
/// holds into the audit log (entries of reads answered before a crash), and keeps folding every
/// [`FOLD_SPACING`] while reads are journaled.
pub fn open_sqlite(path: &Path, keyring: Arc<Keyring>) -> Result<Arc<dyn Store>, StoreError> {
    open_sqlite_with(path, keyring, &StoreOptions::default())
}

/// [`open_sqlite`] with `options`.
pub fn open_sqlite_with(
    path: &Path,
    keyring: Arc<Keyring>,
    options: &StoreOptions,
) -> Result<Arc<dyn Store>, StoreError> {
    let store = Arc::new(SqliteStore::open_with(path, keyring, options)?);
    if let Err(e) = store.settle_audit() {
        // Not fatal here: `audit verify` names the entry, and the log keeps taking writes.
        tracing::error!(error = %e, "the read journal could not be folded into the audit log");
    }
    let weak = Arc::downgrade(&store);
    std::thread::Builder::new()
        // Distinct from the journal writer's name within the 15 bytes `/proc` keeps.
        .name("carevault-fold".into())
        .spawn(move || fold_loop(&weak))
        .map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            reason: format!("the audit fold thread could not start: {e}"),
        })?;
    Ok(store)
}

/// Folds the read journal into the audit log every [`FOLD_SPACING`] while this process
/// journals entries; ends when the store is dropped.
fn fold_loop(store: &std::sync::Weak<SqliteStore>) {
    let mut last_error = String::new();
    loop {
        std::thread::sleep(FOLD_SPACING);
        let Some(store) = store.upgrade() else {
            return;
        };
        if !store.journal.has_unfolded() {
            continue;
        }
        match store.settle_audit() {
            Ok(_) => last_error.clear(),
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    tracing::error!(error = %text, "the read journal could not be folded into the audit log");
                    last_error = text;
                }
            }
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Entries already answered for are durable in the journal; fold them now so a clean
        // stop leaves the log complete (a crash leaves them to the next open).
        self.journal.close();
        if self.journal.has_unfolded()
            && let Err(e) = self.settle_audit()
        {
            tracing::error!(error = %e, "the read journal could not be folded at close");
        }
    }
}

impl SqliteStore {
    /// How the read journal's group commits gather entries (for tests).
    #[cfg(test)]
    pub(crate) fn journal_gathering(&self) -> &Arc<Expected> {
        self.journal.expected()
    }

    /// Opens (creating if needed) the store file and starts its writer thread.
    pub fn open(path: &Path, keyring: Arc<Keyring>) -> Result<Self, StoreError> {
        Self::open_with(path, keyring, &StoreOptions::default())
    }

    /// [`SqliteStore::open`] with `options`.
    pub fn open_with(
        path: &Path,
        keyring: Arc<Keyring>,
        options: &StoreOptions,
    ) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        configure(&conn, false).map_err(|e| open_err(e.to_string()))?;
        schema::migrate(&conn, &keyring).map_err(|e| open_err(e.to_string()))?;
        // Checkpoints run on their own connection and thread, off the writer's commit path.
        conn.execute_batch("PRAGMA wal_autocheckpoint=0;")
            .map_err(|e| open_err(e.to_string()))?;
        let checkpointer = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        configure(&checkpointer, false).map_err(|e| open_err(e.to_string()))?;
        // RESTART and TRUNCATE wait for the writer and readers; never for long.
        checkpointer
            .busy_timeout(std::time::Duration::from_millis(200))
            .map_err(|e| open_err(e.to_string()))?;
        let (send, recv) = std::sync::mpsc::channel();
        let (tick_send, tick_recv) = std::sync::mpsc::channel();
        let restart = Arc::new(AtomicBool::new(false));
        let restart_asked = restart.clone();
        std::thread::Builder::new()
            .name("carevault-store-writer".into())
            .spawn(move || writer_loop(conn, recv, tick_send, &restart))
            .map_err(|e| open_err(format!("the writer thread could not start: {e}")))?;
        std::thread::Builder::new()
            .name("carevault-store-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, tick_recv, &restart_asked))
            .map_err(|e| open_err(format!("the checkpoint thread could not start: {e}")))?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let journal = journal::ReadJournal::open(path, keyring.clone(), options.journal_max_bytes)?;
        // What earlier processes journaled and folded is not waiting: take the log's mark.
        {
            let marks = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
            configure(&marks, true).map_err(|e| open_err(e.to_string()))?;
            let mark =
                crate::backend::ReadTx::audit_fold_mark(&mut SqlTx::new(&marks), journal.id())
                    .map_err(|e| open_err(e.to_string()))?;
            journal.folded_up_to(mark);
        }
        Ok(SqliteStore {
            path: path.to_owned(),
            keyring,
            jobs: Mutex::new(send),
            readers: Mutex::new(Vec::new()),
            // One per request a loaded server reads for at once (each HTTP connection has at
            // most one read on the blocking pool): a connection opened past the pool is closed
            // after its read, and a new one pays for opening the file and parsing the schema.
            max_readers: (cores * 4).max(16),
            journal,
            fold_lock: Mutex::new(()),
            fold_memo: Arc::default(),
        })
    }

    /// Read entries journaled and not yet known to be folded into the log.
    #[cfg(test)]
    pub(crate) fn journal_backlog(&self) -> u64 {
        self.journal.backlog()
    }

    fn take_reader(&self) -> Result<Connection, StoreError> {
        if let Some(c) = lock(&self.readers).pop() {
            return Ok(c);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        configure(&conn, true)?;
        Ok(conn)
    }

    /// Runs one read-only statement sequence on a pooled reader outside any explicit
    /// transaction (each statement sees the latest commit).
    fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.take_reader()?;
        let out = f(&conn);
        if out.is_ok() {
            self.give_back(conn);
        }
        out
    }

    /// Loads care rows straight into the store file at `path` in one transaction, bypassing the
    /// write path: for benchmarks and tools that build a large relationship set. `rows` pairs
    /// the row id of the stating resource (any distinct numbers) with what it states.
    pub fn bulk_load_care(
        path: &Path,
        rows: impl IntoIterator<Item = (i64, crate::care::CareRows)>,
    ) -> Result<u64, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let mut n = 0;
        for (src, r) in rows {
            care::insert(&conn, src, &r)?;
            n += 1;
        }
        conn.execute_batch("COMMIT")?;
        Ok(n)
    }

    fn give_back(&self, conn: Connection) {
        let mut pool = lock(&self.readers);
        if pool.len() < self.max_readers {
            pool.push(conn);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked while holding it; the pool and the
    // sender stay usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn configure(conn: &Connection, read_only: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    conn.set_prepared_statement_cache_capacity(128);
    if read_only {
        conn.execute_batch(
            "PRAGMA query_only=ON; PRAGMA temp_store=MEMORY; PRAGMA cache_size=-8192;",
        )?;
    } else {
        // WAL + FULL: every COMMIT fsyncs the WAL, so an acknowledged write survives kill -9 and
        // power loss; temp_store=MEMORY keeps sort/intersection scratch data off the disk.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA temp_store=MEMORY; \
             PRAGMA cache_size=-65536; PRAGMA foreign_keys=OFF; PRAGMA journal_size_limit=67108864;",
        )?;
    }
    Ok(())
}

fn writer_loop(
    conn: Connection,
    jobs: Receiver<(WriteJob, Reply)>,
    ticks: Sender<()>,
    restart: &AtomicBool,
) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        run_group(&conn, group);
        if restart.swap(false, Ordering::Relaxed) {
            restart_wal(&conn);
        }
        let _ = ticks.send(());
    }
    // The store was dropped: fold the WAL back into the database before closing.
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
}

/// How long the checkpointer waits, after the last commit it saw, before a final pass.
const CHECKPOINT_IDLE: Duration = Duration::from_millis(500);
/// The shortest time between two checkpoints while commits keep coming. Every commit's pages
/// are already durable in the WAL; spacing checkpoints lets a page written by many small groups
/// (the last page of the audit log, say) be copied and fsynced once instead of once per group,
/// and keeps the checkpoint's database fsync off most commits' way.
const CHECKPOINT_SPACING: Duration = Duration::from_millis(100);
/// WAL frames beyond which the checkpointer makes the writer start the log over.
const WAL_RESTART_FRAMES: i64 = 16_384;
/// How long the writer's RESTART checkpoint waits for readers still on the old log.
const WRITER_RESTART_WAIT: Duration = Duration::from_millis(200);

/// Starts the WAL over from the writer's own connection, between two groups. Under sustained
/// writes (a bulk import, a burst of audited reads) the checkpointer's RESTART never finds the
/// writer idle and the log would grow without bound; here no write is in progress, so only
/// readers still on the old log can make it wait, and only for [`WRITER_RESTART_WAIT`]: if they
/// do, the checkpointer asks again after its next pass.
fn restart_wal(conn: &Connection) {
    let set_wait = |d: Duration| {
        if let Err(e) = conn.busy_timeout(d) {
            tracing::warn!(error = %e, "could not set the writer's busy timeout");
        }
    };
    set_wait(WRITER_RESTART_WAIT);
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "WAL restart by the writer failed");
    }
    set_wait(Duration::from_millis(BUSY_TIMEOUT_MS));
}

/// Folds committed WAL frames back into the database, so the log stays short and readers stay
/// fast: at most every [`CHECKPOINT_SPACING`] while commits come, PASSIVE (never waits);
/// RESTART when the log has grown past [`WAL_RESTART_FRAMES`] (waits briefly for the writer,
/// then the log starts over and is cut to `journal_size_limit`; if the writer never pauses long
/// enough, the writer is asked to restart the log itself between two groups); TRUNCATE once
/// writes pause for [`CHECKPOINT_IDLE`].
fn checkpoint_loop(conn: Connection, ticks: Receiver<()>, restart: &AtomicBool) {
    // (busy, frames in the log): busy is 1 when the checkpoint could not finish.
    let run = |mode: &str| {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
    };
    let passive = || match run("PASSIVE") {
        Ok((_, frames)) if frames > WAL_RESTART_FRAMES => match run("RESTART") {
            Ok((0, _)) => {}
            Ok(_) | Err(_) => restart.store(true, Ordering::Relaxed),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
    };
    // Commits not yet folded, and whether the WAL was truncated since the last commit.
    let mut pending = false;
    let mut truncated = true;
    let mut last_checkpoint = Instant::now();
    let mut last_commit = Instant::now();
    loop {
        let wait = if pending {
            CHECKPOINT_SPACING.saturating_sub(last_checkpoint.elapsed())
        } else if !truncated {
            CHECKPOINT_IDLE.saturating_sub(last_commit.elapsed())
        } else {
            CHECKPOINT_IDLE
        };
        match ticks.recv_timeout(wait) {
            Ok(()) => {
                while ticks.try_recv().is_ok() {}
                pending = true;
                truncated = false;
                last_commit = Instant::now();
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if pending && last_checkpoint.elapsed() >= CHECKPOINT_SPACING {
            passive();
            pending = false;
            last_checkpoint = Instant::now();
        } else if !pending && !truncated && last_commit.elapsed() >= CHECKPOINT_IDLE {
            if let Err(e) = run("TRUNCATE") {
                tracing::warn!(error = %e, "WAL checkpoint failed");
            }
            truncated = true;
            last_checkpoint = Instant::now();
        }
    }
}

fn run_group(conn: &Connection, group: Vec<(WriteJob, Reply)>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let msg = format!("could not start a write transaction: {e}");
        for (_, reply) in group {
            reply(Err(RestError::Store(msg.clone())));
        }
        return;
    }
    let mut outcomes = Vec::with_capacity(group.len());
    for (job, reply) in group {
        let result = run_job(conn, job);
        outcomes.push((reply, result));
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => {
            for (reply, result) in outcomes {
                reply(result);
            }
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            tracing::error!(error = %e, "group commit failed");
            for (reply, result) in outcomes {
                let err = match result {
                    Err(job_err) => job_err,
                    Ok(()) => RestError::Store(format!("the commit failed: {e}")),
                };
                reply(Err(err));
            }
        }
    }
}

/// Runs one statement through the connection's statement cache (a group of small jobs, such as
/// the audit entries of reads, pays for parsing its savepoint statements once, not per job).
fn exec_cached(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

fn run_job(conn: &Connection, job: WriteJob) -> Result<(), RestError> {
    exec_cached(conn, "SAVEPOINT job")?;
    let mut tx = SqlTx::new(conn);
    let result = match std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut tx as &mut dyn Tx))) {
        Ok(r) => r,
        Err(_) => Err(RestError::Store("a write job panicked".into())),
    };
    if result.is_err() {
        exec_cached(conn, "ROLLBACK TO job")?;
    }
    exec_cached(conn, "RELEASE job")?;
    result
}

/// A pooled read-only connection holding one read transaction (a consistent snapshot).
pub struct Reader<'s> {
    store: &'s SqliteStore,
    conn: Option<Connection>,
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && exec_cached(&conn, "COMMIT").is_ok()
        {
            self.store.give_back(conn);
        }
    }
}

impl<'s> Reader<'s> {
    fn tx(&self) -> Result<SqlTx<'_>, StoreError> {
        self.conn
            .as_ref()
            .map(SqlTx::new)
            .ok_or_else(|| StoreError::Backend("reader already released".into()))
    }
}

impl Store for SqliteStore {
    fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    fn reader(&self) -> Result<Box<dyn crate::backend::ReadTx + '_>, StoreError> {
        let conn = self.take_reader()?;
        exec_cached(&conn, "BEGIN")?;
        Ok(Box::new(Reader {
            store: self,
            conn: Some(conn),
        }))
    }

    fn checkpoint_truncate(&self) -> Result<bool, StoreError> {
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
        // Readers of other processes may pin old frames for a moment: retry for a few seconds.
        for _ in 0..50 {
            let (busy, log, done): (i64, i64, i64) =
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
            if busy == 0 && log <= 0 && done <= 0 {
                return Ok(true);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(false)
    }

    fn care_actors(&self, practitioner: &str) -> Result<Vec<String>, StoreError> {
        self.with_reader(|c| care::actors(c, practitioner))
    }

    fn care_patients(
        &self,
        actors: &[String],
        now_ms: i64,
        windows: &CareWindows,
        billing: bool,
    ) -> Result<Vec<String>, StoreError> {
        self.with_reader(|c| care::patients(c, actors, now_ms, windows, billing))
    }

    fn has_care_relationship(
        &self,
        actors: &[String],
        patient: &str,
        now_ms: i64,
        windows: &CareWindows,
        billing: bool,
    ) -> Result<bool, StoreError> {
        self.with_reader(|c| care::has_relationship(c, actors, patient, now_ms, windows, billing))
    }

    fn write(&self, job: WriteJob) -> Result<(), RestError> {
        let (send, recv) = std::sync::mpsc::sync_channel(1);
        self.submit(
            job,
            Box::new(move |outcome| {
                // A caller that gave up waiting has dropped its receiver; nothing to do then.
                let _ = send.send(outcome);
            }),
        );
        recv.recv()
            .map_err(|_| RestError::Store("the store writer has stopped".into()))?
    }

    fn journal_audit(&self, entry: crate::audit_log::PreparedAppend, done: JournalDone) {
        self.journal.append(entry, done);
    }

    fn expect_journal(&self) -> crate::audit_log::JournalExpectation {
        crate::audit_log::JournalExpectation::counted(self.journal.expected().clone())
    }

    fn probe_journal(&self) -> Result<(), RestError> {
        Ok(self.journal.probe()?)
    }

    fn journal_key_usage(&self) -> Result<Vec<crate::backend::KeyUsage>, RestError> {
        Ok(self.journal.key_usage()?)
    }

    fn settle_audit(&self) -> Result<usize, RestError> {
        let _one = lock(&self.fold_lock);
        let mut folded = 0;
        loop {
            let rows = self.journal.pending(FOLD_BATCH, &|| {
                crate::backend::ReadTx::audit_fold_mark(&mut *self.reader()?, self.journal.id())
            })?;
            let Some(more) = rows.last().map(|_| rows.len() == FOLD_BATCH) else {
                return Ok(folded);
            };
            let (n, mark) =
                crate::audit_log::fold_journal(self, *self.journal.id(), rows, &self.fold_memo)?;
            folded += n;
            // The entries are in the log now: their journal blocks may be reused.
            self.journal.folded_up_to(mark);
            if !more {
                return Ok(folded);
            }
        }
    }

    fn submit(&self, job: WriteJob, done: WriteDone) {
        let sent = lock(&self.jobs).send((job, done));
        if let Err(std::sync::mpsc::SendError((_, done))) = sent {
            done(Err(RestError::Store("the store writer has stopped".into())));
        }
    }
}

macro_rules! delegate_read {
    ($($name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty;)*) => {
        impl crate::backend::ReadTx for Reader<'_> {
            $(fn $name(&mut self, $($arg: $ty),*) -> Result<$ret, StoreError> {
                crate::backend::ReadTx::$name(&mut self.tx()?, $($arg),*)
            })*
        }
    };
}

use crate::backend::{
    AuditQuery, AuditRowRef, AuditStored, HistoryScope, KeyUsage, NativeSort, ParamRef,
    PatientKeyRow, ResKey, RotationCursor, SealedRow, SealedTable, VersionRecord,
};
use crate::plan::Plan;

delegate_read! {
    current(rtype: &str, id: &str) -> Option<VersionRecord>;
    version(rtype: &str, id: &str, version: u64) -> Option<VersionRecord>;
    load(keys: &[ResKey]) -> Vec<VersionRecord>;
    search(plan: &Plan, sort: NativeSort, offset: usize, limit: usize) -> Vec<ResKey>;
    count(plan: &Plan) -> usize;
    refs_from(keys: &[ResKey], param: &ParamRef) -> Vec<(String, String)>;
    refs_to(param: &ParamRef, targets: &[(String, String)]) -> Vec<ResKey>;
    history(scope: HistoryScope<'_>, since_ms: Option<i64>, offset: usize, limit: usize) -> Vec<VersionRecord>;
    history_count(scope: HistoryScope<'_>, since_ms: Option<i64>) -> usize;
    get_system_record(kind: &str, key: &str) -> Option<Vec<u8>>;
    list_system_records(kind: &str) -> Vec<(String, Vec<u8>)>;
    patient_key(patient: &str) -> Option<(u32, Vec<u8>)>;
    patient_key_row(row: u32) -> PatientKeyRow;
    sealed_batch(table: &SealedTable, after: i64, limit: usize, keep: u32) -> Vec<SealedRow>;
    key_usage() -> Vec<KeyUsage>;
    rotation_state() -> Vec<RotationCursor>;
    audit_head() -> Option<(u64, [u8; 32])>;
    audit_last_recorded() -> Option<i64>;
    audit_fold_mark(journal: &[u8]) -> u64;
    audit_node(level: u32, index: u64) -> Option<[u8; 32]>;
    audit_entries(after: u64, limit: usize) -> Vec<AuditStored>;
    audit_search(query: &AuditQuery) -> Vec<u64>;
    audit_load(seqs: &[u64]) -> Vec<AuditStored>;
    audit_visit(after: u64, upto: u64, visit: &mut dyn FnMut(AuditRowRef<'_>) -> Result<(), StoreError>) -> ();
}
