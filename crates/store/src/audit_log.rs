//! The audit trail over any backend: appending an entry (hash chain, RFC 9162 Merkle nodes,
//! sealing, blind search keys) inside a write transaction, and reading it back — entries, tree
//! heads, proofs and searches — through a read snapshot.
//!
//! An entry's canonical bytes are what the Merkle leaf and the chain hash cover; the backend
//! stores them sealed to `audit/<seq>` under the data key, so rotating that key re-seals entries
//! without changing a single hash. The backend never computes anything: the SQLite and (later)
//! PostgreSQL stores only keep the rows this module derives.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard};

use carevault_audit::merkle::{self, Frontier, Hash, MerkleError, NodeSource};
use carevault_audit::{chain, merkle::node_hash};
use carevault_crypto::{BlindTag, Keyring};

use crate::backend::{AuditQuery, AuditRow, AuditStored, ReadTx, Store, Tx, write_with};
use crate::error::{RestError, StoreError};

/// A search key of an audit entry; stored only as a blind tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditKey {
    /// A patient whose data the event touched (`Patient/id`).
    Patient(String),
    /// An agent's reference (`Practitioner/id`, `Patient/id`).
    Agent(String),
    /// A user account name.
    User(String),
    /// An OAuth client id.
    Client(String),
    /// A resource the event touched, without version (`Observation/5`).
    Entity(String),
}

impl AuditKey {
    /// The blind tag of this key under `keyring`'s blind-index key.
    pub fn tag(&self, keyring: &Keyring) -> BlindTag {
        let (domain, value) = match self {
            AuditKey::Patient(v) => ("audit.patient", v),
            AuditKey::Agent(v) => ("audit.agent", v),
            AuditKey::User(v) => ("audit.user", v),
            AuditKey::Client(v) => ("audit.client", v),
            AuditKey::Entity(v) => ("audit.entity", v),
        };
        keyring.blind(domain, value.as_bytes())
    }
}

/// An entry ready to append: its canonical bytes, when, and the keys it is found by.
#[derive(Debug, Clone)]
pub struct AuditAppend {
    /// When the event happened, ms since the Unix epoch (UTC).
    pub recorded_ms: i64,
    /// The canonical bytes of the AuditEvent (no `id`: the sequence number is its position).
    pub canonical: Vec<u8>,
    /// Search keys.
    pub keys: Vec<AuditKey>,
}

/// An entry read back and opened.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When it was recorded (ms).
    pub recorded_ms: i64,
    /// The chain hash stored with it.
    pub chain: Hash,
    /// Its canonical bytes.
    pub canonical: Vec<u8>,
}

/// The record identity an entry is sealed to.
pub fn identity(seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(26);
    identity_into(seq, &mut out);
    out
}

/// [`identity`] written into `out` (cleared first), for callers opening many entries in a row.
pub fn identity_into(seq: u64, out: &mut Vec<u8>) {
    use std::io::Write as _;
    out.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(out, "audit/{seq}");
}

/// Appends `entry` inside `tx`; returns its sequence number. The chain and the Merkle nodes are
/// derived from rows read in the same transaction, so a rolled-back job leaves no trace.
pub fn append(tx: &mut dyn Tx, keyring: &Keyring, entry: &AuditAppend) -> Result<u64, RestError> {
    let (seq, previous) = match tx.audit_head()? {
        None => (1, chain::GENESIS),
        Some((seq, chain)) => (seq + 1, chain),
    };
    let leaf = merkle::leaf_hash(&entry.canonical);
    let mut nodes = vec![(0u32, seq - 1, leaf)];
    let (mut level, mut index, mut hash) = (0u32, seq - 1, leaf);
    while index % 2 == 1 {
        let left = tx.audit_node(level, index - 1)?.ok_or_else(|| {
            StoreError::Integrity(format!(
                "the audit log's Merkle node at level {level}, index {} is missing",
                index - 1
            ))
        })?;
        hash = node_hash(&left, &hash);
        level += 1;
        index /= 2;
        nodes.push((level, index, hash));
    }
    let row = AuditRow {
        stored: AuditStored {
            seq,
            recorded_ms: entry.recorded_ms,
            chain: chain::chain_hash(&previous, &leaf),
            sealed: keyring.seal(&identity(seq), &entry.canonical)?,
        },
        nodes,
        tags: entry.keys.iter().map(|k| k.tag(keyring)).collect(),
    };
    tx.append_audit(&row)?;
    Ok(seq)
}

/// Appends entries in one durable write (group-committed with whatever else is waiting);
/// returns once they are on disk.
pub fn append_durably(store: &dyn Store, entries: Vec<AuditAppend>) -> Result<Vec<u64>, RestError> {
    let keyring = store.keyring().clone();
    // Hashing and blinding happen here, on the caller's thread, not in the single writer.
    let prepared: Vec<PreparedAppend> = entries.into_iter().map(|e| e.prepare(&keyring)).collect();
    write_with(store, move |tx| {
        append_prepared(tx, &keyring, &prepared, &mut None)
    })
}

/// An entry whose per-entry work that does not depend on its place in the log is done: the
/// leaf hash of its canonical bytes and the blind tags of its keys. Preparing on the caller's
/// thread keeps that work off the single writer.
#[derive(Debug, Clone)]
pub struct PreparedAppend {
    /// When the event happened, ms since the Unix epoch (UTC).
    pub recorded_ms: i64,
    /// The canonical bytes of the AuditEvent.
    pub canonical: Vec<u8>,
    /// The RFC 9162 leaf hash of `canonical`.
    pub leaf: Hash,
    /// Blind tags of the entry's search keys.
    pub tags: Vec<BlindTag>,
}

impl AuditAppend {
    /// Hashes the entry and blinds its keys under `keyring`'s blind-index key.
    pub fn prepare(self, keyring: &Keyring) -> PreparedAppend {
        PreparedAppend {
            recorded_ms: self.recorded_ms,
            leaf: merkle::leaf_hash(&self.canonical),
            tags: self.keys.iter().map(|k| k.tag(keyring)).collect(),
            canonical: self.canonical,
        }
    }
}

/// The log's right edge as of a head `(size, chain hash)`, kept between folds of the read
/// journal. The chain hash commits to every leaf before it, so a frontier whose head
/// equals the stored head is the stored tree's frontier; any other head (an append by a write,
/// by another process, or a batch whose commit failed) makes the next batch rebuild it from the
/// stored nodes.
#[derive(Debug, Clone)]
pub(crate) struct EdgeMemo {
    size: u64,
    chain: Hash,
    frontier: Frontier,
}

/// Appends `entries`, in order, inside `tx` with one head look-up: their Merkle nodes come from
/// the right edge (`memo` when it matches the stored head, else rebuilt from the stored nodes)
/// carried in memory from one entry to the next. Returns their sequence numbers. Rows are derived
/// as [`append`] derives them, so the log is the same as from appending one by one.
pub(crate) fn append_prepared(
    tx: &mut dyn Tx,
    keyring: &Keyring,
    entries: &[PreparedAppend],
    memo: &mut Option<EdgeMemo>,
) -> Result<Vec<u64>, RestError> {
    let (size, mut previous) = match tx.audit_head()? {
        None => (0, chain::GENESIS),
        Some((seq, chain)) => (seq, chain),
    };
    let mut frontier = match memo.take() {
        Some(m) if m.size == size && m.chain == previous && m.frontier.size() == size => m.frontier,
        _ => {
            let reader: &mut dyn ReadTx = &mut *tx;
            Frontier::from_source(size, &SnapshotNodes::new(reader)).map_err(|e| match e {
                MerkleError::MissingNode { level, index } => {
                    RestError::from(StoreError::Integrity(format!(
                        "the audit log's Merkle node at level {level}, index {index} is missing"
                    )))
                }
                other => RestError::Store(other.to_string()),
            })?
        }
    };
    let mut seqs = Vec::with_capacity(entries.len());
    let mut rows = Vec::with_capacity(entries.len());
    for entry in entries {
        let seq = frontier.size() + 1;
        let nodes = frontier.push(entry.leaf);
        let chain = chain::chain_hash(&previous, &entry.leaf);
        let row = AuditRow {
            stored: AuditStored {
                seq,
                recorded_ms: entry.recorded_ms,
                chain,
                sealed: keyring.seal(&identity(seq), &entry.canonical)?,
            },
            nodes,
            tags: entry.tags.clone(),
        };
        rows.push(row);
        previous = chain;
        seqs.push(seq);
    }
    tx.append_audit_rows(&rows)?;
    *memo = Some(EdgeMemo {
        size: frontier.size(),
        chain: previous,
        frontier,
    });
    Ok(seqs)
}

/// What the read journal calls once an entry is durable, or with the error that kept it from
/// being written ([`crate::Store::journal_audit`]). It may run on the journal's thread, so it
/// must only hand the result on.
pub type JournalDone = Box<dyn FnOnce(Result<(), RestError>) + Send>;

/// A request that will journal its entry soon ([`crate::Store::expect_journal`]). Releasing it
/// (or dropping it) tells the journal it need not wait for that request any more.
#[derive(Debug, Default)]
pub struct JournalExpectation(Option<Arc<crate::sqlite::Expected>>);

impl JournalExpectation {
    /// An expectation the journal `expected` counts until it is released.
    pub(crate) fn counted(expected: Arc<crate::sqlite::Expected>) -> Self {
        expected.add();
        JournalExpectation(Some(expected))
    }

    /// Stops counting this request: call once its entry is queued, or when it will not be.
    pub fn release(&mut self) {
        if let Some(e) = self.0.take() {
            e.remove();
        }
    }
}

impl Drop for JournalExpectation {
    fn drop(&mut self) {
        self.release();
    }
}

/// The log's right edge remembered between folds (see [`EdgeMemo`]).
#[derive(Default)]
pub(crate) struct FoldMemo(Mutex<Option<EdgeMemo>>);

impl std::fmt::Debug for FoldMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FoldMemo").finish_non_exhaustive()
    }
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a thread panicked while holding it; the memo is re-checked
    // against the stored head before any use.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Folds journaled read entries into the log in one writer job: skips those at or below the
/// fold mark the log holds for `journal` (folded before, by this or another process), checks
/// that the rest continue the mark without a gap, appends them in journal order with one head
/// look-up and the right edge in memory, and moves the mark, all in one transaction. Returns
/// how many were appended and the mark after the fold.
pub(crate) fn fold_journal(
    store: &dyn Store,
    journal: [u8; 16],
    rows: Vec<crate::sqlite::JournalRow>,
    memo: &Arc<FoldMemo>,
) -> Result<(usize, u64), RestError> {
    let keyring = store.keyring().clone();
    let memo = memo.clone();
    write_with(store, move |tx| {
        let mark = tx.audit_fold_mark(&journal)?;
        let mut entries = Vec::with_capacity(rows.len());
        let mut last = mark;
        for (expected, row) in (mark + 1..).zip(rows.into_iter().filter(|r| r.jseq > mark)) {
            if row.jseq != expected {
                return Err(StoreError::Integrity(format!(
                    "read journal entries {expected} to {} are missing (not yet in the audit log, and deleted)",
                    row.jseq - 1
                ))
                .into());
            }
            last = row.jseq;
            entries.push(row.entry);
        }
        if entries.is_empty() {
            return Ok((0, mark));
        }
        let mut memo = guard(&memo.0);
        append_prepared(tx, &keyring, &entries, &mut memo)?;
        tx.set_audit_fold_mark(&journal, last)?;
        Ok((entries.len(), last))
    })
}

/// Checks, through the writer, that an entry could be appended now: it appends a probe entry
/// inside a nested savepoint (chain, nodes, sealing, index rows — every table an append
/// touches) and rolls it back, so the log never holds it; and the same in the read journal.
/// For `/readyz`.
pub fn probe_writable(store: &dyn Store) -> Result<(), RestError> {
    store.probe_journal()?;
    let keyring = store.keyring().clone();
    write_with(store, move |tx| {
        let probe = AuditAppend {
            recorded_ms: 0,
            canonical: b"{\"resourceType\":\"AuditEvent\",\"probe\":true}".to_vec(),
            keys: vec![AuditKey::Client("readiness-probe".into())],
        };
        let mut appended: Option<Result<u64, RestError>> = None;
        // The nested part always fails on purpose, so its writes are rolled back.
        let _ = tx.nested(&mut |t| {
            appended = Some(append(t, &keyring, &probe));
            Err(RestError::Store("readiness probe rolled back".into()))
        });
        match appended {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e),
            None => Err(RestError::Store(
                "the audit log's write savepoint could not be opened".into(),
            )),
        }
    })
}

/// Opens a stored entry.
pub fn open(keyring: &Keyring, stored: &AuditStored) -> Result<AuditEntry, RestError> {
    Ok(AuditEntry {
        seq: stored.seq,
        recorded_ms: stored.recorded_ms,
        chain: stored.chain,
        canonical: keyring.open(&identity(stored.seq), &stored.sealed)?,
    })
}

/// Stored Merkle nodes read through a snapshot.
pub struct SnapshotNodes<'a, 'r> {
    reader: RefCell<&'a mut (dyn ReadTx + 'r)>,
}

impl<'a, 'r> SnapshotNodes<'a, 'r> {
    /// Nodes of `reader`'s snapshot.
    pub fn new(reader: &'a mut (dyn ReadTx + 'r)) -> Self {
        SnapshotNodes {
            reader: RefCell::new(reader),
        }
    }
}

impl NodeSource for SnapshotNodes<'_, '_> {
    fn node(&self, level: u32, index: u64) -> Result<Hash, MerkleError> {
        self.reader
            .borrow_mut()
            .audit_node(level, index)
            .map_err(|e| MerkleError::Source(Box::new(e)))?
            .ok_or(MerkleError::MissingNode { level, index })
    }
}

/// The log's size and Merkle root in `reader`'s snapshot.
pub fn tree_head(reader: &mut dyn ReadTx) -> Result<(u64, Hash), RestError> {
    let size = reader.audit_head()?.map_or(0, |(seq, _)| seq);
    let root = merkle::root_at(size, &SnapshotNodes::new(reader)).map_err(merkle_error)?;
    Ok((size, root))
}

/// The inclusion proof of entry `seq` (from 1) in the tree of `size` entries.
pub fn inclusion_proof(
    reader: &mut dyn ReadTx,
    seq: u64,
    size: u64,
) -> Result<Vec<Hash>, RestError> {
    if seq == 0 {
        return Err(RestError::BadRequest {
            diagnostics: "audit sequence numbers start at 1".into(),
            expression: None,
        });
    }
    merkle::inclusion_proof(seq - 1, size, &SnapshotNodes::new(reader)).map_err(merkle_error)
}

/// The consistency proof between the trees of `first` and `second` entries.
pub fn consistency_proof(
    reader: &mut dyn ReadTx,
    first: u64,
    second: u64,
) -> Result<Vec<Hash>, RestError> {
    merkle::consistency_proof(first, second, &SnapshotNodes::new(reader)).map_err(merkle_error)
}

/// The root of the tree of the first `size` entries.
pub fn root_at(reader: &mut dyn ReadTx, size: u64) -> Result<Hash, RestError> {
    merkle::root_at(size, &SnapshotNodes::new(reader)).map_err(merkle_error)
}

/// Entries matching `query`, opened.
pub fn search(
    reader: &mut dyn ReadTx,
    keyring: &Keyring,
    query: &AuditQuery,
) -> Result<Vec<AuditEntry>, RestError> {
    let seqs = reader.audit_search(query)?;
    reader
        .audit_load(&seqs)?
        .iter()
        .map(|s| open(keyring, s))
        .collect()
}

fn merkle_error(e: MerkleError) -> RestError {
    match e {
        MerkleError::IndexOutOfRange { index, size } => RestError::BadRequest {
            diagnostics: format!(
                "audit entry {} is not in the tree of {size} entries",
                index + 1
            ),
            expression: None,
        },
        MerkleError::SizeOrder { .. } => RestError::BadRequest {
            diagnostics: e.to_string(),
            expression: None,
        },
        other => RestError::Store(other.to_string()),
    }
}

#[cfg(test)]
mod journal_tests;
