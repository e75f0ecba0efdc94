//! The single writer's append state: turns canonical entry bytes into what the store keeps
//! (sequence number, chain hash, completed Merkle nodes) and checkpoints of the current tree.
//!
//! The store appends inside its own transactions; when one rolls back, restore the appender
//! cloned before it (or [`LogAppender::resume`] from what was committed).

use crate::chain::{GENESIS, chain_hash};
use crate::checkpoint::Checkpoint;
use crate::merkle::{Frontier, Hash, MerkleError, NodeSource, leaf_hash};
use crate::verify::FIRST_SEQ;

/// What to store for one appended entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The entry's sequence number (its AuditEvent id is `a-%012d` of it).
    pub seq: u64,
    /// The RFC 9162 leaf hash of its canonical bytes.
    pub leaf: Hash,
    /// Its chain hash, stored in clear beside it.
    pub chain: Hash,
    /// Every Merkle node it completed, `(level, index, hash)`, the leaf first.
    pub nodes: Vec<(u32, u64, Hash)>,
}

/// The append state of the log: its frontier and the chain hash of its last entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogAppender {
    frontier: Frontier,
    chain: Hash,
}

impl Default for LogAppender {
    fn default() -> Self {
        Self::new()
    }
}

impl LogAppender {
    /// The state of an empty log.
    pub fn new() -> LogAppender {
        LogAppender {
            frontier: Frontier::new(),
            chain: GENESIS,
        }
    }

    /// The state of a stored log of `size` entries whose last chain hash is `last_chain`
    /// ([`GENESIS`] when empty), rebuilt from its stored nodes.
    pub fn resume(
        size: u64,
        last_chain: Hash,
        src: &dyn NodeSource,
    ) -> Result<LogAppender, MerkleError> {
        Ok(LogAppender {
            frontier: Frontier::from_source(size, src)?,
            chain: last_chain,
        })
    }

    /// Number of entries appended.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// The sequence number the next entry gets.
    pub fn next_seq(&self) -> u64 {
        FIRST_SEQ + self.frontier.size()
    }

    /// The RFC 9162 root of all entries.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// The chain hash of the last entry ([`GENESIS`] when empty).
    pub fn chain_head(&self) -> Hash {
        self.chain
    }

    /// Appends one entry given its canonical bytes.
    pub fn append(&mut self, canonical: &[u8]) -> Appended {
        let seq = self.next_seq();
        let leaf = leaf_hash(canonical);
        self.chain = chain_hash(&self.chain, &leaf);
        let nodes = self.frontier.push(leaf);
        Appended {
            seq,
            leaf,
            chain: self.chain,
            nodes,
        }
    }

    /// The checkpoint of the current tree, to be signed with a
    /// [`NoteSigner`](crate::checkpoint::NoteSigner).
    pub fn checkpoint(&self, origin: &str, time_ms: i64) -> Checkpoint {
        Checkpoint {
            origin: origin.to_owned(),
            size: self.size(),
            root: self.root(),
            time_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::NoteSigner;
    use crate::merkle::MemNodes;
    use crate::verify::Verifier;

    /// Stores appended nodes the way the store does: by `(level, index)`.
    #[derive(Default)]
    struct Table(std::collections::HashMap<(u32, u64), Hash>);

    impl NodeSource for Table {
        fn node(&self, level: u32, index: u64) -> Result<Hash, MerkleError> {
            self.0
                .get(&(level, index))
                .copied()
                .ok_or(MerkleError::MissingNode { level, index })
        }
    }

    #[test]
    fn appended_logs_verify_and_resume() {
        let signer = NoteSigner::from_seed("carevault-audit/t", &[1; 32]).unwrap();
        let mut table = Table::default();
        let mut rows = Vec::new();
        let mut notes = String::new();
        let mut appender = LogAppender::new();
        assert_eq!(appender.next_seq(), 1);
        for i in 0..300u32 {
            let bytes = format!("entry {i}").into_bytes();
            let a = appender.append(&bytes);
            assert_eq!(a.seq, u64::from(i) + 1);
            assert_eq!(a.nodes[0], (0, u64::from(i), a.leaf));
            table
                .0
                .extend(a.nodes.iter().map(|(l, x, h)| ((*l, *x), *h)));
            rows.push((a.seq, bytes, a.chain));
            if i % 100 == 99 {
                notes.push_str(&signer.sign(&appender.checkpoint("o", 0)));
            }
        }
        let mut mem = MemNodes::new();
        for (_, b, _) in &rows {
            mem.push(leaf_hash(b));
        }
        assert_eq!(appender.root(), mem.root());

        let mut v = Verifier::new(&signer.verifier_key(), vec![notes], vec![]).unwrap();
        for (seq, bytes, chain) in &rows {
            v.push(*seq, bytes, *chain).unwrap();
        }
        let summary = v.finish(Some(&table)).unwrap();
        assert_eq!(summary.checkpoints, 3);
        assert_eq!(summary.root, appender.root());

        // A restart resumes exactly where the log stopped.
        let resumed = LogAppender::resume(300, rows[299].2, &table).unwrap();
        assert_eq!(resumed, appender);
        let mut a1 = appender.clone();
        let mut a2 = resumed;
        assert_eq!(a1.append(b"next"), a2.append(b"next"));
        assert!(LogAppender::resume(301, rows[299].2, &table).is_err());
    }
}
