//! The storage interface: what a backend (SQLite now, PostgreSQL later) must provide, in terms of
//! sealed versions, index rows and backend-neutral search plans.
//!
//! Everything FHIR-specific (versioning rules, conditional interactions, bundles) lives above
//! this interface in [`crate::rest`]; everything about SQL dialect and locking lives below it.

use std::sync::Arc;

use carevault_crypto::{BlindTag, Keyring};

use crate::audit_log::JournalDone;
use crate::care::{CareRows, CareWindows};
use crate::error::{RestError, StoreError};
use crate::plan::Plan;

/// A backend's handle for one logical resource (all its versions). Opaque above the backend;
/// stable for the resource's life, and ascending in creation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResKey(pub i64);

/// One stored version as the backend holds it: metadata in clear, body sealed.
#[derive(Debug, Clone)]
pub struct VersionRecord {
    /// The resource's key.
    pub key: ResKey,
    /// Resource type.
    pub rtype: String,
    /// Logical id.
    pub id: String,
    /// Version number, from 1.
    pub version: u64,
    /// When the version was written, in ms since the Unix epoch.
    pub last_updated_ms: i64,
    /// Whether this version is a deletion.
    pub deleted: bool,
    /// The interaction that wrote it (`POST`, `PUT`, `PATCH`, `DELETE`).
    pub method: String,
    /// Sealed JSON body (empty for deletions).
    pub sealed: Vec<u8>,
    /// The ids (without `Patient/`) of the patients in whose compartment this version is, as
    /// recorded when it was written (in the order `carevault_fhir::patient_compartment_refs`
    /// gives them; empty for deletions). `None` when the store did not record them (versions
    /// written before the store kept them): work them out from the body then.
    pub patients: Option<Vec<String>>,
}

/// Names a search parameter of one resource type; the backend maps it to its own small id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParamRef {
    /// Resource type the parameter belongs to.
    pub rtype: String,
    /// The parameter's code (`family`, `subject`, `_tag`).
    pub code: String,
}

impl ParamRef {
    /// Builds a parameter reference.
    pub fn new(rtype: &str, code: &str) -> Self {
        ParamRef {
            rtype: rtype.to_owned(),
            code: code.to_owned(),
        }
    }

    /// The parameter's id.
    pub fn id(&self) -> ParamId {
        ParamId::of(&self.rtype, &self.code)
    }
}

/// A search parameter's small integer id: a stable 63-bit FNV-1a hash of `Type.code`, so ids
/// need no table and no state shared between processes, and are the same in every store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParamId(pub i64);

impl ParamId {
    /// The id of `rtype.code`.
    pub fn of(rtype: &str, code: &str) -> ParamId {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in rtype
            .bytes()
            .chain(std::iter::once(b'.'))
            .chain(code.bytes())
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        ParamId((h >> 1) as i64)
    }
}

/// One row of the search index of a current version.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexRow {
    /// A blind tag (strings, tokens, uris).
    Tag { param: ParamId, tag: BlindTag },
    /// A reference, in clear: target type and id, or an absolute URL (empty strings when absent).
    Ref {
        param: ParamId,
        ttype: String,
        tid: String,
        url: String,
    },
    /// A date range in ms, `lo` inclusive, `hi` exclusive.
    // issue 5: dates are kept as plain numbers for range search; whether to coarsen or blind them is open.
    Date { param: ParamId, lo: i64, hi: i64 },
    /// A number, stored as the point `lo = hi = value`.
    Number { param: ParamId, lo: f64, hi: f64 },
    /// A quantity value (`lo = hi = value`) with a blind tag of its unit (`system|code`, `code`, or the "any unit" tag).
    Quantity {
        param: ParamId,
        tag: BlindTag,
        lo: f64,
        hi: f64,
    },
}

/// A version ready to be written: everything derived, body already sealed.
#[derive(Debug, Clone)]
pub struct NewVersion {
    /// Resource type.
    pub rtype: String,
    /// Logical id.
    pub id: String,
    /// Version number; must be the current version + 1 (or 1 for a new resource).
    pub version: u64,
    /// Timestamp in ms since the epoch.
    pub last_updated_ms: i64,
    /// Whether this version deletes the resource.
    pub deleted: bool,
    /// `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: &'static str,
    /// Sealed JSON (empty for deletions, and until [`crate::rest::put_new_version`] seals a
    /// version that waits for its patient key).
    pub sealed: Vec<u8>,
    /// The index rows of this version (empty for deletions); replace the previous version's rows.
    pub index: Vec<IndexRow>,
    /// The one patient whose compartment holds this version: its body is sealed under that
    /// patient's own key (crypto-shredding). `None`: the shared data key.
    pub owner: Option<String>,
    /// The JSON still to be sealed under the owner's key, inside the write transaction that may
    /// have to create that key. A backend refuses to write a version while this is set.
    pub pending: Option<Vec<u8>>,
    /// The care relationships this version states (types in [`crate::care::TRACKED_TYPES`]);
    /// they replace the resource's previous rows. `None` for other types and deletions.
    pub care: Option<CareRows>,
    /// The ids (without `Patient/`) of the patients in whose compartment this version is, as
    /// `carevault_fhir::patient_compartment_refs` gives them for the stamped JSON (empty for
    /// deletions); stored with the version so reads need not parse the body to learn them.
    pub patients: Vec<String>,
}

/// A store table holding sealed values, described so one generic routine can count and
/// re-encrypt them all (data-key rotation). Adding a sealed table is one entry in
/// [`SEALED_TABLES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedTable {
    /// Table name.
    pub name: &'static str,
    /// An integer column that orders the rows (the rotation cursor), e.g. `seq` or `rowid`.
    pub key: &'static str,
    /// The column holding the sealed value.
    pub body: &'static str,
    /// An SQL expression over the row giving the record identity the value is sealed to.
    pub identity: &'static str,
}

/// Every table with sealed values: resource versions, system records, audit entries, and the
/// wrapped per-patient keys.
pub const SEALED_TABLES: &[SealedTable] = &[
    SealedTable {
        name: "ver",
        key: "seq",
        body: "body",
        identity: "(SELECT res.rtype || '/' || res.id FROM res WHERE res.rid = ver.rid) || '/_history/' || ver.version",
    },
    SealedTable {
        name: "system_record",
        key: "rowid",
        body: "body",
        identity: "'sys/' || kind || '/' || key",
    },
    SealedTable {
        name: "audit_log",
        key: "seq",
        body: "entry",
        identity: "'audit/' || seq",
    },
    SealedTable {
        name: "patient_key",
        key: "pkid",
        body: "wrapped",
        identity: "'patient-key/' || patient",
    },
];

/// One sealed value as a rotation reads it.
#[derive(Debug, Clone)]
pub struct SealedRow {
    /// The row's ordering key.
    pub key: i64,
    /// The record identity it is sealed to.
    pub identity: String,
    /// The sealed bytes.
    pub sealed: Vec<u8>,
}

/// How many values of one table are sealed under one key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    /// The table.
    pub table: &'static str,
    /// The key id named in the sealed header.
    pub key_id: u32,
    /// Rows sealed under it.
    pub rows: u64,
    /// Of those, rows that are the current version of a resource (only `ver`; else equal to rows).
    pub current: u64,
}

/// The durable cursor of a data-key rotation, one per sealed table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationCursor {
    /// The table.
    pub table: String,
    /// The data key everything is being re-encrypted to.
    pub target_key: u32,
    /// The last row key done.
    pub cursor: i64,
    /// When the rotation started, ms since the epoch.
    pub started_ms: i64,
    /// Rows under other data keys when the rotation started.
    pub total: u64,
    /// Rows re-encrypted so far.
    pub done: u64,
}

/// A per-patient key row as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatientKeyRow {
    /// The key exists: the patient's id and the key sealed under a data key.
    Live { patient: String, wrapped: Vec<u8> },
    /// The key was destroyed by an erasure.
    Destroyed,
    /// No such key was ever made.
    Unknown,
}

/// What an erasure removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasedRows {
    /// The destroyed key's store row.
    pub key_row: u32,
    /// Resources whose current version was sealed under it (now erased).
    pub resources: u64,
    /// Versions sealed under it (bodies removed).
    pub versions: u64,
}

/// Which versions a history request covers.
#[derive(Debug, Clone, Copy)]
pub enum HistoryScope<'a> {
    /// Every resource.
    System,
    /// Every resource of one type.
    Type(&'a str),
    /// One resource.
    Instance(&'a str, &'a str),
}

/// Sort keys the backend can apply itself, in SQL or its equivalent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeSort {
    /// Creation order (the default; stable).
    Key,
    /// By logical id.
    Id { descending: bool },
    /// By last update.
    LastUpdated { descending: bool },
}

/// Reads against one consistent snapshot of the store.
pub trait ReadTx {
    /// The current version of a resource (possibly a deletion), if it ever existed.
    fn current(&mut self, rtype: &str, id: &str) -> Result<Option<VersionRecord>, StoreError>;
    /// One specific version.
    fn version(
        &mut self,
        rtype: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<VersionRecord>, StoreError>;
    /// Current versions of the given keys, in the order given (missing or deleted ones skipped).
    fn load(&mut self, keys: &[ResKey]) -> Result<Vec<VersionRecord>, StoreError>;
    /// Keys matching a plan, ordered by `sort` then key, after skipping `offset`, at most `limit`.
    fn search(
        &mut self,
        plan: &Plan,
        sort: NativeSort,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<ResKey>, StoreError>;
    /// Number of resources matching a plan.
    fn count(&mut self, plan: &Plan) -> Result<usize, StoreError>;
    /// Targets `(type, id)` of the reference parameter `param` held by the given resources.
    fn refs_from(
        &mut self,
        keys: &[ResKey],
        param: &ParamRef,
    ) -> Result<Vec<(String, String)>, StoreError>;
    /// Keys of resources whose reference parameter `param` points at any of `targets`.
    fn refs_to(
        &mut self,
        param: &ParamRef,
        targets: &[(String, String)],
    ) -> Result<Vec<ResKey>, StoreError>;
    /// Versions in a scope, newest first, optionally only since a time; paged.
    fn history(
        &mut self,
        scope: HistoryScope<'_>,
        since_ms: Option<i64>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<VersionRecord>, StoreError>;
    /// Number of versions in a scope.
    fn history_count(
        &mut self,
        scope: HistoryScope<'_>,
        since_ms: Option<i64>,
    ) -> Result<usize, StoreError>;
    /// A sealed system record (see [`put_system_record`]).
    fn get_system_record(&mut self, kind: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// All sealed system records of one kind, by key.
    fn list_system_records(&mut self, kind: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// The per-patient key of `patient`: its store row and the wrapped key.
    fn patient_key(&mut self, patient: &str) -> Result<Option<(u32, Vec<u8>)>, StoreError>;
    /// The per-patient key in store row `row`.
    fn patient_key_row(&mut self, row: u32) -> Result<PatientKeyRow, StoreError>;
    /// Up to `limit` rows of `table` after row key `after`, in key order, sealed under a data
    /// key other than `keep` (values under patient keys are left out: their keys are re-wrapped
    /// instead).
    fn sealed_batch(
        &mut self,
        table: &SealedTable,
        after: i64,
        limit: usize,
        keep: u32,
    ) -> Result<Vec<SealedRow>, StoreError>;
    /// How many values of each sealed table are sealed under each key id.
    fn key_usage(&mut self) -> Result<Vec<KeyUsage>, StoreError>;
    /// The cursors of a data-key rotation in progress (empty when none is).
    fn rotation_state(&mut self) -> Result<Vec<RotationCursor>, StoreError>;
    /// The last audit entry's sequence number and chain hash (`None` for an empty log).
    fn audit_head(&mut self) -> Result<Option<(u64, [u8; 32])>, StoreError>;
    /// The latest `recorded` time of any audit entry (entries folded from the read journal
    /// need not be in time order), `None` for an empty log.
    fn audit_last_recorded(&mut self) -> Result<Option<i64>, StoreError>;
    /// The last entry number of the read journal `journal` (its id) already folded into the
    /// log; 0 when none was.
    fn audit_fold_mark(&mut self, journal: &[u8]) -> Result<u64, StoreError>;
    /// The stored hash of the complete Merkle subtree at `level`, `index` of the audit log.
    fn audit_node(&mut self, level: u32, index: u64) -> Result<Option<[u8; 32]>, StoreError>;
    /// Audit entries with `seq > after`, ascending, at most `limit`.
    fn audit_entries(&mut self, after: u64, limit: usize) -> Result<Vec<AuditStored>, StoreError>;
    /// Sequence numbers of the audit entries matching `query`.
    fn audit_search(&mut self, query: &AuditQuery) -> Result<Vec<u64>, StoreError>;
    /// The audit entries with the given sequence numbers, in the order given (missing ones skipped).
    fn audit_load(&mut self, seqs: &[u64]) -> Result<Vec<AuditStored>, StoreError>;
    /// Calls `visit` with every audit entry with `after < seq <= upto`, ascending, lending the
    /// row's bytes instead of copying them: the verifier's bulk pass over the whole log. A
    /// backend may read these rows in a way suited to one long sequential pass (SQLite maps the
    /// file); the default goes through [`ReadTx::audit_entries`].
    fn audit_visit(
        &mut self,
        after: u64,
        upto: u64,
        visit: &mut dyn FnMut(AuditRowRef<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let limit = usize::try_from(upto.saturating_sub(after)).unwrap_or(usize::MAX);
        for e in self.audit_entries(after, limit)? {
            if e.seq > upto {
                break;
            }
            visit(AuditRowRef {
                seq: e.seq,
                recorded_ms: e.recorded_ms,
                chain: &e.chain,
                sealed: &e.sealed,
            })?;
        }
        Ok(())
    }
}

/// One audit entry lent by [`ReadTx::audit_visit`]: the row's bytes as the backend holds them,
/// unchecked (a chain hash of the wrong length is the caller's finding, named by `seq`).
#[derive(Debug, Clone, Copy)]
pub struct AuditRowRef<'a> {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When it was recorded, ms since the Unix epoch.
    pub recorded_ms: i64,
    /// The stored chain hash (32 bytes unless the row was changed).
    pub chain: &'a [u8],
    /// The sealed canonical bytes.
    pub sealed: &'a [u8],
}

/// One audit entry as the backend holds it: sequence, time and chain hash in clear, entry sealed.
#[derive(Debug, Clone)]
pub struct AuditStored {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When it was recorded, ms since the Unix epoch.
    pub recorded_ms: i64,
    /// The chain hash after this entry.
    pub chain: [u8; 32],
    /// The sealed canonical bytes of the entry.
    pub sealed: Vec<u8>,
}

/// An audit entry ready to be appended: everything derived, entry sealed to its sequence number.
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// The entry's stored form.
    pub stored: AuditStored,
    /// Newly completed Merkle subtrees `(level, index, hash)`, the leaf included.
    pub nodes: Vec<(u32, u64, [u8; 32])>,
    /// Blind tags of the entry's search keys (patients, agents, entities).
    pub tags: Vec<BlindTag>,
}

/// A search of the audit log by blind tags and time.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// For every group, one of its tags must be among the entry's tags (AND of ORs).
    pub tags: Vec<Vec<BlindTag>>,
    /// Recorded at or after (ms).
    pub from_ms: Option<i64>,
    /// Recorded before (ms).
    pub to_ms: Option<i64>,
    /// Newest first.
    pub descending: bool,
    /// Matches to skip.
    pub offset: usize,
    /// Matches to return at most.
    pub limit: usize,
}

/// A write transaction: everything a [`ReadTx`] sees plus its own uncommitted writes.
pub trait Tx: ReadTx {
    /// Writes a new version and makes it current, replacing the index rows.
    fn put_version(&mut self, v: &NewVersion) -> Result<(), StoreError>;
    /// Appends one audit entry whose sequence number is the head's plus one (see
    /// [`crate::audit_log::append`], which derives the row).
    fn append_audit(&mut self, row: &AuditRow) -> Result<(), StoreError>;
    /// Appends consecutive entries in order, as [`Tx::append_audit`] one by one would; a
    /// backend may lay out a large batch's search keys together.
    fn append_audit_rows(&mut self, rows: &[AuditRow]) -> Result<(), StoreError> {
        for row in rows {
            self.append_audit(row)?;
        }
        Ok(())
    }
    /// Records that the read journal `journal` is folded into the log up to entry `upto`.
    fn set_audit_fold_mark(&mut self, journal: &[u8], upto: u64) -> Result<(), StoreError>;
    /// Writes a sealed system record.
    fn put_system_record(&mut self, kind: &str, key: &str, sealed: &[u8])
    -> Result<(), StoreError>;
    /// Removes a system record; true when one existed.
    fn delete_system_record(&mut self, kind: &str, key: &str) -> Result<bool, StoreError>;
    /// Stores a new per-patient key (sealed under a data key); returns its store row.
    fn insert_patient_key(
        &mut self,
        patient: &str,
        wrapped: &[u8],
        created_ms: i64,
    ) -> Result<u32, StoreError>;
    /// Replaces a sealed value with its re-encryption, only when the row still holds `old`
    /// (a concurrent update wins); true when it was replaced.
    fn reseal(
        &mut self,
        table: &SealedTable,
        key: i64,
        old: &[u8],
        new: &[u8],
    ) -> Result<bool, StoreError>;
    /// Writes one table's rotation cursor.
    fn put_rotation_cursor(&mut self, cursor: &RotationCursor) -> Result<(), StoreError>;
    /// Forgets the rotation cursors (the rotation finished).
    fn clear_rotation(&mut self) -> Result<(), StoreError>;
    /// Crypto-shredding: removes every body sealed under `patient`'s key, erases the resources
    /// whose current version was sealed under it (index rows deleted, marked deleted), destroys
    /// the key row so that no copy of it survives in the database pages, and records the
    /// destruction. `None` when the patient has no key.
    fn erase_patient_key(
        &mut self,
        patient: &str,
        erased_ms: i64,
    ) -> Result<Option<ErasedRows>, StoreError>;
    /// Runs `f` in a nested savepoint: when it fails, only its own writes are rolled back.
    fn nested(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), RestError>,
    ) -> Result<(), RestError>;
}

/// A unit of work for the writer: runs inside its own savepoint; an `Err` rolls back only it.
pub type WriteJob = Box<dyn FnOnce(&mut dyn Tx) -> Result<(), RestError> + Send>;

/// What [`Store::submit`] calls with a job's outcome once its group has committed (or failed).
pub type WriteDone = Box<dyn FnOnce(Result<(), RestError>) + Send>;

/// A storage backend.
pub trait Store: Send + Sync {
    /// The keyring that seals bodies and blinds index values for this store.
    fn keyring(&self) -> &Arc<Keyring>;
    /// A read snapshot; never waits for the writer.
    fn reader(&self) -> Result<Box<dyn ReadTx + '_>, StoreError>;
    /// Runs `job` in the writer and returns once its effects are durable (or it failed).
    /// Jobs submitted together share one commit (one fsync); each runs in its own savepoint,
    /// so a failing job rolls back only itself. Never call this from inside a job.
    fn write(&self, job: WriteJob) -> Result<(), RestError>;
    /// Like [`Store::write`] without waiting: `job` joins the writer's queue and `done` is called
    /// with its outcome once its group has committed durably (or failed). `done` may run on the
    /// writer's thread, so it must only hand the outcome on. The default runs `write` on the
    /// caller's thread; a backend with its own writer thread returns at once.
    fn submit(&self, job: WriteJob, done: WriteDone) {
        done(self.write(job));
    }
    /// Makes a read's audit entry durable and calls `done` (possibly on another thread, so it
    /// must only hand the result on) once it is, or with the error that kept it from being
    /// written. A backend with a read journal ([`crate::sqlite`]) commits it there, apart from
    /// the data, and folds it into the log soon after; the default appends it to the log
    /// through the writer.
    fn journal_audit(&self, entry: crate::audit_log::PreparedAppend, done: JournalDone) {
        let keyring = self.keyring().clone();
        let job: WriteJob = Box::new(move |tx| {
            crate::audit_log::append_prepared(tx, &keyring, std::slice::from_ref(&entry), &mut None)
                .map(|_| ())
        });
        self.submit(job, done);
    }
    /// Announces a request that will soon call [`Store::journal_audit`]: until the returned
    /// expectation is released (or dropped), a backend with a read journal lets its next group
    /// commit wait a little for that entry, so that requests in progress at the same time share
    /// one fsync. The default has no journal to wait.
    fn expect_journal(&self) -> crate::audit_log::JournalExpectation {
        crate::audit_log::JournalExpectation::default()
    }
    /// Checks that a read's entry could be made durable now (see [`Store::journal_audit`]).
    fn probe_journal(&self) -> Result<(), RestError> {
        Ok(())
    }
    /// What the read journal holds sealed, per data key (entries not yet folded into the log),
    /// as table `audit_journal`: a data key must not leave the key file while an entry waits
    /// under it, or that entry could never be opened and folded. The default has no journal.
    fn journal_key_usage(&self) -> Result<Vec<KeyUsage>, RestError> {
        Ok(Vec::new())
    }
    /// Folds every read entry journaled so far into the log (chain, tree, search keys), so
    /// that what reads the log next sees them; returns how many it folded. Call before
    /// searching, reporting, proving, checkpointing or verifying. The default has no journal.
    fn settle_audit(&self) -> Result<usize, RestError> {
        Ok(0)
    }
    /// Folds the write-ahead log into the database and empties it, so that no page image
    /// older than the last commit survives in the log; true when it completed.
    fn checkpoint_truncate(&self) -> Result<bool, StoreError>;
    /// The care actors of a practitioner (`Practitioner/P` or `P`): `Practitioner/P` itself,
    /// then, sorted, `PractitionerRole/R` of each of its active roles and `Location/L` of their
    /// locations.
    fn care_actors(&self, practitioner: &str) -> Result<Vec<String>, StoreError>;
    /// The ids of the patients with whom any of `actors` has a care relationship at `now_ms`
    /// (rules 1-5 of PRODUCT.md 2.3), sorted; with `billing`, instead the patients with a billing
    /// relationship (rule 6, `actors` not consulted).
    fn care_patients(
        &self,
        actors: &[String],
        now_ms: i64,
        windows: &CareWindows,
        billing: bool,
    ) -> Result<Vec<String>, StoreError>;
    /// Whether any of `actors` has a care relationship with `patient` (`Patient/X` or `X`) at
    /// `now_ms`; with `billing`, whether the patient has a billing relationship. One index probe
    /// per actor.
    fn has_care_relationship(
        &self,
        actors: &[String],
        patient: &str,
        now_ms: i64,
        windows: &CareWindows,
        billing: bool,
    ) -> Result<bool, StoreError>;
}

/// Runs a job in the writer and hands back the value it produced.
pub fn write_with<T, F>(store: &dyn Store, f: F) -> Result<T, RestError>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Tx) -> Result<T, RestError> + Send + 'static,
{
    let (send, recv) = std::sync::mpsc::sync_channel(1);
    store.write(Box::new(move |tx: &mut dyn Tx| {
        let v = f(tx)?;
        // The receiver outlives this call (it is held below until write returns), so a send error
        // cannot happen; ignoring it is harmless.
        let _ = send.send(v);
        Ok(())
    }))?;
    recv.recv()
        .map_err(|_| RestError::Store("the writer returned no result".into()))
}

/// Record identity used to seal a system record.
pub fn system_record_identity(kind: &str, key: &str) -> Vec<u8> {
    format!("sys/{kind}/{key}").into_bytes()
}

/// Seals and stores a system record (auth clients, users, TOTP secrets) durably.
pub fn put_system_record(
    store: &dyn Store,
    kind: &str,
    key: &str,
    body: &[u8],
) -> Result<(), RestError> {
    let sealed = store
        .keyring()
        .seal(&system_record_identity(kind, key), body)?;
    let (kind, key) = (kind.to_owned(), key.to_owned());
    write_with(store, move |tx| {
        Ok(tx.put_system_record(&kind, &key, &sealed)?)
    })
}

/// Reads and opens a system record.
pub fn get_system_record(
    store: &dyn Store,
    kind: &str,
    key: &str,
) -> Result<Option<Vec<u8>>, RestError> {
    let sealed = store.reader()?.get_system_record(kind, key)?;
    match sealed {
        None => Ok(None),
        Some(s) => Ok(Some(
            store
                .keyring()
                .open(&system_record_identity(kind, key), &s)?,
        )),
    }
}

/// Lists and opens every system record of a kind.
pub fn list_system_records(
    store: &dyn Store,
    kind: &str,
) -> Result<Vec<(String, Vec<u8>)>, RestError> {
    let rows = store.reader()?.list_system_records(kind)?;
    rows.into_iter()
        .map(|(key, s)| {
            let body = store
                .keyring()
                .open(&system_record_identity(kind, &key), &s)?;
            Ok((key, body))
        })
        .collect()
}

/// Removes a system record; true when one existed.
pub fn delete_system_record(store: &dyn Store, kind: &str, key: &str) -> Result<bool, RestError> {
    let (kind, key) = (kind.to_owned(), key.to_owned());
    write_with(store, move |tx| Ok(tx.delete_system_record(&kind, &key)?))
}
