//! Offline verification of a whole audit log: entries in sequence order, their chain hashes, the
//! Merkle roots at every signed checkpoint, checkpoints shipped elsewhere, and the stored nodes.
//!
//! Entry `seq` (starting at [`FIRST_SEQ`]) is Merkle leaf `seq - FIRST_SEQ`, so the tree after
//! entry `seq` has `seq` leaves and a checkpoint of size `n` covers entries `1..=n`.
//!
//! What each check catches:
//! - chain hash of every entry: a changed byte, a replaced, swapped or removed-and-renumbered
//!   entry, named by its sequence number;
//! - sequence numbers: a deleted entry (gap) or a duplicated one;
//! - every checkpoint's root against the recomputed root at its size: edits whose chain hashes
//!   were rewritten too;
//! - checkpoints larger than the log: a truncated tail;
//! - checkpoints shipped elsewhere (`against`): a log rolled back to an older state, rewritten
//!   after it was shipped, or re-signed with another key;
//! - stored nodes (optional): the right edge the writer resumes from, and every node of level
//!   [`NODE_CHECK_LEVEL`] or above, which inclusion and consistency proofs are built from.

use crate::chain::{GENESIS, chain_hash};
use crate::checkpoint::{
    Checkpoint, CheckpointError, NoteVerifier, split_complete_notes, split_notes,
};
use crate::instant;
use crate::merkle::{Frontier, Hash, MerkleError, NodeSource, leaf_hash};

/// The sequence number of the first entry of a log.
pub const FIRST_SEQ: u64 = 1;

/// Stored nodes at this level and above are all compared with the recomputed tree by
/// [`Verifier::finish`]; below it, only the right edge is (each such node covers 256 entries).
pub const NODE_CHECK_LEVEL: u32 = 8;

/// One entry made ready for checking: `(seq, leaf hash, stored chain hash)`.
pub type PreparedEntry = (u64, Hash, Hash);

/// A slot for one prepared entry, filled by a worker thread.
type Slot = Option<Result<PreparedEntry, Tamper>>;

/// Which check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TamperKind {
    /// An entry's bytes do not match its chain hash (changed, replaced, swapped or renumbered).
    EntryAltered,
    /// A sequence number is missing.
    EntryMissing,
    /// A sequence number repeats or goes backwards.
    OutOfOrder,
    /// The log is shorter than one of its own checkpoints.
    Truncated,
    /// The log is shorter than, or differs from, a checkpoint shipped elsewhere.
    RolledBack,
    /// A checkpoint is signed by a key other than the data directory's.
    ForeignKey,
    /// A checkpoint signature by the data directory's key does not verify.
    BadSignature,
    /// A checkpoint's root differs from the root recomputed at its size.
    CheckpointMismatch,
    /// A checkpoint note or file cannot be read, names another log, or is out of order.
    MalformedCheckpoint,
    /// The verifier key cannot be read.
    BadKey,
    /// A stored Merkle node differs from the recomputed one.
    NodeMismatch,
    /// A stored Merkle node is missing or unreadable.
    NodeMissing,
}

/// Evidence that the log was tampered with (or corrupted), with the first bad entry if known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Tamper {
    /// The sequence number of the first bad or missing entry, when one can be named.
    pub seq: Option<u64>,
    /// Which check failed.
    pub kind: TamperKind,
    /// One sentence saying what is wrong and where.
    pub message: String,
}

impl Tamper {
    fn new(kind: TamperKind, seq: Option<u64>, message: String) -> Tamper {
        Tamper { seq, kind, message }
    }
}

/// What a successful verification established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Number of entries verified.
    pub entries: u64,
    /// The recomputed RFC 9162 root over all entries.
    pub root: Hash,
    /// The chain hash of the last entry ([`GENESIS`] for an empty log).
    pub chain_head: Hash,
    /// Checkpoints from the data directory whose roots matched.
    pub checkpoints: usize,
    /// Checkpoints shipped elsewhere whose roots matched.
    pub against: usize,
    /// The largest checkpoint of the data directory, if any.
    pub latest: Option<Checkpoint>,
    /// Entries after the latest checkpoint of either source, covered by no signature yet.
    pub unsigned_tail: u64,
    /// Stored nodes compared with the recomputed tree.
    pub nodes_checked: u64,
    /// Whether the checkpoints file ended in a note cut off by a write in progress, which was
    /// left out.
    pub partial_checkpoint_ignored: bool,
}

/// Where a checkpoint came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// The data directory's `checkpoints` file.
    Local,
    /// A checkpoints file shipped elsewhere (`--against`).
    Against,
}

#[derive(Clone, Debug)]
struct Pending {
    cp: Checkpoint,
    source: Source,
    /// 1-based position among the notes of its source.
    position: usize,
}

impl Pending {
    fn describe(&self) -> String {
        match self.source {
            Source::Local => format!(
                "checkpoint {} of the checkpoints file (signed {})",
                self.position,
                instant::format_ms(self.cp.time_ms)
            ),
            Source::Against => format!(
                "shipped checkpoint {} (signed {})",
                self.position,
                instant::format_ms(self.cp.time_ms)
            ),
        }
    }
}

/// Verifies a log fed entry by entry in sequence order.
///
/// After an error the verifier's state is unspecified: stop and report the [`Tamper`].
#[derive(Debug)]
pub struct Verifier {
    frontier: Frontier,
    chain: Hash,
    /// Every checkpoint, sorted by size.
    pending: Vec<Pending>,
    next: usize,
    matched_local: usize,
    matched_against: usize,
    /// The size of the largest checkpoint matched so far.
    last_matched: u64,
    latest: Option<Checkpoint>,
    partial_checkpoint_ignored: bool,
    /// Recomputed nodes of levels `NODE_CHECK_LEVEL..`, per level, in index order.
    upper: Vec<Vec<Hash>>,
}

/// Reads and verifies the notes of one source; the flag says whether a last note cut off by a
/// write in progress was left out (tolerated in the data directory's own file only).
fn read_notes(
    verifier: &NoteVerifier,
    files: &[String],
    source: Source,
) -> Result<(Vec<Pending>, bool), Tamper> {
    let what = match source {
        Source::Local => "the checkpoints file",
        Source::Against => "the shipped checkpoints file",
    };
    let mut out: Vec<Pending> = Vec::new();
    let mut cut_tail = false;
    for file in files {
        let split = match source {
            Source::Local => split_complete_notes(file),
            Source::Against => split_notes(file).map(|notes| (notes, false)),
        };
        let (notes, cut) = split.map_err(|e| {
            Tamper::new(
                TamperKind::MalformedCheckpoint,
                None,
                format!("{what} cannot be read: {e}"),
            )
        })?;
        cut_tail |= cut;
        for note in notes {
            let position = out.len() + 1;
            let cp = verifier.verify(note).map_err(|e| match e {
                CheckpointError::UnknownKey { found, .. } => Tamper::new(
                    TamperKind::ForeignKey,
                    None,
                    format!(
                        "checkpoint {position} of {what} is signed by {found}, not by the data \
                         directory's key {} ({}): the log was re-signed with another key",
                        verifier.name(),
                        hex4(&verifier.key_hash())
                    ),
                ),
                CheckpointError::BadSignature { .. } => Tamper::new(
                    TamperKind::BadSignature,
                    None,
                    format!(
                        "the signature on checkpoint {position} of {what} does not verify: the \
                         checkpoint was altered or forged"
                    ),
                ),
                e => Tamper::new(
                    TamperKind::MalformedCheckpoint,
                    None,
                    format!("checkpoint {position} of {what} cannot be read: {e}"),
                ),
            })?;
            if let Some(prev) = out.last()
                && cp.size < prev.cp.size
            {
                return Err(Tamper::new(
                    TamperKind::MalformedCheckpoint,
                    None,
                    format!(
                        "checkpoint {position} of {what} has size {} after one of size {}: \
                         checkpoints were reordered or replaced",
                        cp.size, prev.cp.size
                    ),
                ));
            }
            out.push(Pending {
                cp,
                source,
                position,
            });
        }
    }
    Ok((out, cut_tail))
}

fn hex4(id: &[u8; 4]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

impl Verifier {
    /// A verifier for the log whose checkpoints are signed by `vkey`.
    ///
    /// `checkpoints` are the data directory's checkpoint notes and `against` those shipped
    /// elsewhere; each string may hold one note or a whole file of notes one after another.
    /// Every note must verify under `vkey` and all must name the same origin. A last note of
    /// `checkpoints` cut off by a write in progress is left out (see
    /// [`Summary::partial_checkpoint_ignored`]).
    ///
    /// A running server appends entries and checkpoints: read the checkpoints *before* taking
    /// the snapshot of the entries, or a newer checkpoint looks like a truncated log.
    pub fn new(vkey: &str, checkpoints: Vec<String>, against: Vec<String>) -> Result<Self, Tamper> {
        let verifier = NoteVerifier::from_vkey(vkey).map_err(|e| {
            Tamper::new(
                TamperKind::BadKey,
                None,
                format!("the audit verifier key cannot be read: {e}"),
            )
        })?;
        let (local, partial_checkpoint_ignored) =
            read_notes(&verifier, &checkpoints, Source::Local)?;
        let (shipped, _) = read_notes(&verifier, &against, Source::Against)?;
        let latest = local.last().map(|p| p.cp.clone());
        let mut pending: Vec<Pending> = local.into_iter().chain(shipped).collect();
        if let Some(first) = pending.first() {
            let origin = first.cp.origin.clone();
            if let Some(other) = pending.iter().find(|p| p.cp.origin != origin) {
                return Err(Tamper::new(
                    TamperKind::MalformedCheckpoint,
                    None,
                    format!(
                        "{} is for log {:?}, not {:?}: it belongs to another log",
                        other.describe(),
                        other.cp.origin,
                        origin
                    ),
                ));
            }
        }
        // Stable: at equal sizes the data directory's checkpoints are checked first.
        pending.sort_by_key(|p| p.cp.size);
        let mut v = Verifier {
            frontier: Frontier::new(),
            chain: GENESIS,
            pending,
            next: 0,
            matched_local: 0,
            matched_against: 0,
            last_matched: 0,
            latest,
            partial_checkpoint_ignored,
            upper: Vec::new(),
        };
        v.check_due()?;
        Ok(v)
    }

    /// Number of entries verified so far.
    pub fn verified(&self) -> u64 {
        self.frontier.size()
    }

    /// Verifies the next entry from its canonical bytes.
    pub fn push(
        &mut self,
        seq: u64,
        canonical: impl AsRef<[u8]>,
        stored_chain: Hash,
    ) -> Result<(), Tamper> {
        self.push_leaf(seq, leaf_hash(canonical.as_ref()), stored_chain)
    }

    /// Verifies the next entry from its leaf hash ([`leaf_hash`] of its canonical bytes),
    /// computed by the caller, for example on other threads.
    pub fn push_leaf(&mut self, seq: u64, leaf: Hash, stored_chain: Hash) -> Result<(), Tamper> {
        let expected = FIRST_SEQ + self.frontier.size();
        if seq != expected {
            return Err(self.sequence_error(seq, expected));
        }
        let chain = chain_hash(&self.chain, &leaf);
        if chain != stored_chain {
            return Err(Tamper::new(
                TamperKind::EntryAltered,
                Some(seq),
                format!(
                    "entry {seq} does not match its chain hash: it was altered, replaced or moved"
                ),
            ));
        }
        self.chain = chain;
        let upper = &mut self.upper;
        self.frontier.push_with(leaf, |level, _index, hash| {
            if level >= NODE_CHECK_LEVEL {
                let slot = (level - NODE_CHECK_LEVEL) as usize;
                if upper.len() <= slot {
                    upper.resize_with(slot + 1, Vec::new);
                }
                upper[slot].push(*hash);
            }
        });
        if self
            .pending
            .get(self.next)
            .is_some_and(|p| p.cp.size == self.frontier.size())
        {
            self.check_due()?;
        }
        Ok(())
    }

    /// Verifies a batch of entries `(seq, canonical bytes, stored chain hash)`, hashing the
    /// leaves on up to `threads` threads and checking them in order.
    pub fn push_batch<E: AsRef<[u8]> + Sync>(
        &mut self,
        batch: &[(u64, E, Hash)],
        threads: usize,
    ) -> Result<(), Tamper> {
        self.push_batch_with(batch, threads, |(seq, canonical, chain)| {
            Ok((*seq, leaf_hash(canonical.as_ref()), *chain))
        })
    }

    /// Verifies a batch of stored items of any form: `prepare` turns each into
    /// `(seq, leaf hash, stored chain hash)` on up to `threads` threads (open, decrypt, hash),
    /// then the results are checked in order. An error from `prepare` is reported when its item
    /// is reached, so a bad entry before it is still named first.
    pub fn push_batch_with<T, F>(
        &mut self,
        items: &[T],
        threads: usize,
        prepare: F,
    ) -> Result<(), Tamper>
    where
        T: Sync,
        F: Fn(&T) -> Result<PreparedEntry, Tamper> + Sync,
    {
        let threads = threads.clamp(1, items.len().max(1));
        let mut prepared: Vec<Slot> = Vec::new();
        prepared.resize_with(items.len(), || None);
        let run = |out: &mut [Slot], input: &[T]| {
            for (o, item) in out.iter_mut().zip(input) {
                *o = Some(prepare(item));
            }
        };
        if threads == 1 {
            run(&mut prepared, items);
        } else {
            let chunk = items.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let mut parts = prepared.chunks_mut(chunk).zip(items.chunks(chunk));
                // The current thread takes the first chunk itself.
                let own = parts.next();
                for (out, input) in parts {
                    let run = &run;
                    scope.spawn(move || run(out, input));
                }
                if let Some((out, input)) = own {
                    run(out, input);
                }
            });
        }
        for p in prepared {
            // Every slot was filled above: the chunks of `prepared` and `items` pair up exactly.
            let Some(p) = p else { continue };
            let (seq, leaf, chain) = p?;
            self.push_leaf(seq, leaf, chain)?;
        }
        Ok(())
    }

    fn sequence_error(&self, seq: u64, expected: u64) -> Tamper {
        if seq > expected {
            let message = if expected == FIRST_SEQ {
                format!(
                    "the log starts at entry {seq} instead of {FIRST_SEQ}: entry {expected} and \
                     any after it up to {} were deleted",
                    seq - 1
                )
            } else {
                format!(
                    "entry {expected} is missing: the log jumps from entry {} to entry {seq}",
                    expected - 1
                )
            };
            Tamper::new(TamperKind::EntryMissing, Some(expected), message)
        } else {
            Tamper::new(
                TamperKind::OutOfOrder,
                Some(seq),
                format!(
                    "entry {seq} appears again after entry {}: entries were duplicated or \
                     reordered",
                    expected - 1
                ),
            )
        }
    }

    /// Compares every checkpoint of the current size with the recomputed root.
    fn check_due(&mut self) -> Result<(), Tamper> {
        let size = self.frontier.size();
        let mut root: Option<Hash> = None;
        while let Some(p) = self.pending.get(self.next) {
            if p.cp.size != size {
                break;
            }
            let r = *root.get_or_insert_with(|| self.frontier.root());
            if r != p.cp.root {
                let after = self.last_matched;
                return Err(match p.source {
                    Source::Local => Tamper::new(
                        TamperKind::CheckpointMismatch,
                        None,
                        format!(
                            "the log's root at entry {size} does not match {}: an entry after \
                             {after} and up to {size} was altered and its chain hashes rewritten",
                            p.describe()
                        ),
                    ),
                    Source::Against => Tamper::new(
                        TamperKind::RolledBack,
                        None,
                        format!(
                            "the log's root at entry {size} does not match {}: the log was \
                             rolled back and rewritten after entry {after}",
                            p.describe()
                        ),
                    ),
                });
            }
            match p.source {
                Source::Local => self.matched_local += 1,
                Source::Against => self.matched_against += 1,
            }
            self.last_matched = size;
            self.next += 1;
        }
        Ok(())
    }

    /// Ends verification: no checkpoint may be larger than the log, and the stored nodes, when
    /// given, must match the recomputed tree.
    pub fn finish(mut self, stored_nodes: Option<&dyn NodeSource>) -> Result<Summary, Tamper> {
        self.check_due()?;
        let size = self.frontier.size();
        if let Some(p) = self.pending.get(self.next) {
            let (first, last) = (size + 1, p.cp.size);
            return Err(match p.source {
                Source::Local => Tamper::new(
                    TamperKind::Truncated,
                    Some(first),
                    format!(
                        "the log ends at entry {size} but {} covers {last} entries: entries \
                         {first} to {last} were deleted",
                        p.describe()
                    ),
                ),
                Source::Against => Tamper::new(
                    TamperKind::RolledBack,
                    Some(first),
                    format!(
                        "the log ends at entry {size} but {} covers {last} entries: the log was \
                         truncated or rolled back to an older state",
                        p.describe()
                    ),
                ),
            });
        }
        let mut nodes_checked = 0u64;
        if let Some(src) = stored_nodes {
            for (level, index, hash) in self.frontier.edge() {
                check_node(src, level, index, &hash)?;
                nodes_checked += 1;
            }
            for (slot, hashes) in self.upper.iter().enumerate() {
                let level = NODE_CHECK_LEVEL + slot as u32;
                for (index, hash) in hashes.iter().enumerate() {
                    check_node(src, level, index as u64, hash)?;
                    nodes_checked += 1;
                }
            }
        }
        Ok(Summary {
            entries: size,
            root: self.frontier.root(),
            chain_head: self.chain,
            checkpoints: self.matched_local,
            against: self.matched_against,
            latest: self.latest,
            unsigned_tail: size - self.last_matched,
            nodes_checked,
            partial_checkpoint_ignored: self.partial_checkpoint_ignored,
        })
    }
}

fn check_node(src: &dyn NodeSource, level: u32, index: u64, want: &Hash) -> Result<(), Tamper> {
    let first = FIRST_SEQ + (index << level);
    let last = first + (1u64 << level) - 1;
    match src.node(level, index) {
        Ok(h) if h == *want => Ok(()),
        Ok(_) => Err(Tamper::new(
            TamperKind::NodeMismatch,
            None,
            format!(
                "the stored Merkle node at level {level}, index {index} (entries {first} to \
                 {last}) does not match the entries: the node table was altered or corrupted"
            ),
        )),
        Err(e @ (MerkleError::MissingNode { .. } | MerkleError::Source(_))) => Err(Tamper::new(
            TamperKind::NodeMissing,
            None,
            format!("the Merkle node for entries {first} to {last} cannot be read: {e}"),
        )),
        Err(e) => Err(Tamper::new(
            TamperKind::NodeMissing,
            None,
            format!("the Merkle node for entries {first} to {last} cannot be checked: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests;
