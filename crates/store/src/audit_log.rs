//! The audit trail over any backend: appending an entry (hash chain, RFC 9162 Merkle nodes,
//! sealing, blind search keys) inside a write transaction, and reading it back — entries, tree
//! heads, proofs and searches — through a read snapshot.
//!
//! An entry's canonical bytes are what the Merkle leaf and the chain hash cover; the backend
//! stores them sealed to `audit/<seq>` under the data key, so rotating that key re-seals entries
//! without changing a single hash. The backend never computes anything: the SQLite and (later)
//! PostgreSQL stores only keep the rows this module derives.

use std::cell::RefCell;

use carevault_audit::merkle::{self, Hash, MerkleError, NodeSource};
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
    write_with(store, move |tx| {
        entries
            .iter()
            .map(|e| append(tx, &keyring, e))
            .collect::<Result<Vec<_>, _>>()
    })
}

/// Checks, through the writer, that an entry could be appended now: it appends a probe entry
/// inside a nested savepoint (chain, nodes, sealing, index rows — every table an append
/// touches) and rolls it back, so the log never holds it. For `/readyz`.
pub fn probe_writable(store: &dyn Store) -> Result<(), RestError> {
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
