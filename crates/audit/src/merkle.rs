//! The RFC 9162 §2.1 Merkle tree: leaf and node hashing, the append frontier, proofs over stored
//! complete subtrees, and proof verification.
//!
//! The log stores the hash of every *complete* subtree as `(level, index, hash)`: the subtree at
//! level `L`, index `i` covers leaves `[i·2^L, (i+1)·2^L)`. Every range that RFC 9162's recursive
//! definitions ever ask for, `MTH(D[a:b])`, starts at a multiple of the largest power of two below
//! `b - a`, so it is the right-to-left fold of at most 64 stored complete subtrees. That makes
//! [`root_at`], [`inclusion_proof`] and [`consistency_proof`] cost O(log n) node look-ups.

use std::collections::HashMap;

use aws_lc_rs::digest;

/// A SHA-256 output: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// Errors from building, proving or verifying over the Merkle tree.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MerkleError {
    /// A complete-subtree hash the computation needs is not stored.
    #[error("the stored Merkle node at level {level}, index {index} is missing")]
    MissingNode {
        /// Level of the node (0 = leaf).
        level: u32,
        /// Index of the node within its level.
        index: u64,
    },
    /// Reading a stored node failed for a reason of the node source (I/O, decoding, ...).
    #[error("reading a stored Merkle node failed: {0}")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A leaf index is not inside the tree.
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange {
        /// The leaf index asked for.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A consistency proof was asked from a larger tree to a smaller one.
    #[error("the first tree size {first} is larger than the second tree size {second}")]
    SizeOrder {
        /// The first (older) tree size.
        first: u64,
        /// The second (newer) tree size.
        second: u64,
    },
    /// An inclusion proof does not prove the leaf into the root.
    #[error("the inclusion proof does not verify: {0}")]
    InclusionFailed(&'static str),
    /// A consistency proof does not join the two roots.
    #[error("the consistency proof does not verify: {0}")]
    ConsistencyFailed(&'static str),
}

/// Reads stored complete-subtree hashes.
pub trait NodeSource {
    /// Returns the hash of the complete subtree at `level` covering leaves
    /// `[index·2^level, (index+1)·2^level)`.
    fn node(&self, level: u32, index: u64) -> Result<Hash, MerkleError>;
}

impl<T: NodeSource + ?Sized> NodeSource for &T {
    fn node(&self, level: u32, index: u64) -> Result<Hash, MerkleError> {
        (**self).node(level, index)
    }
}

fn to_hash(d: digest::Digest) -> Hash {
    let mut out = [0u8; 32];
    // SHA-256 digests are always exactly 32 bytes, so this copy cannot panic.
    out.copy_from_slice(d.as_ref());
    out
}

/// The RFC 9162 leaf hash: SHA-256(0x00 || data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&[0x00]);
    ctx.update(data);
    to_hash(ctx.finish())
}

/// The RFC 9162 interior node hash: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 65];
    buf[0] = 0x01;
    buf[1..33].copy_from_slice(left);
    buf[33..].copy_from_slice(right);
    to_hash(digest::digest(&digest::SHA256, &buf))
}

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    to_hash(digest::digest(&digest::SHA256, b""))
}

/// The compact right edge of the tree: one complete-subtree hash per set bit of the size, which
/// is all the single writer needs to append and to compute the root without any look-ups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Roots of the perfect subtrees along the right edge, largest (leftmost) first.
    edge: Vec<Hash>,
}

impl Frontier {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the frontier of a tree of `size` leaves from its stored complete subtrees.
    pub fn from_source(size: u64, src: &dyn NodeSource) -> Result<Frontier, MerkleError> {
        let mut edge = Vec::with_capacity(size.count_ones() as usize);
        let mut offset = 0u64;
        for level in (0..64u32).rev() {
            if size & (1u64 << level) != 0 {
                edge.push(src.node(level, offset >> level)?);
                offset += 1u64 << level;
            }
        }
        Ok(Frontier { size, edge })
    }

    /// Number of leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The complete subtrees along the right edge as `(level, index, hash)`, leftmost first.
    pub fn edge(&self) -> Vec<(u32, u64, Hash)> {
        let mut out = Vec::with_capacity(self.edge.len());
        let mut offset = 0u64;
        let mut hashes = self.edge.iter();
        for level in (0..64u32).rev() {
            if self.size & (1u64 << level) != 0 {
                if let Some(h) = hashes.next() {
                    out.push((level, offset >> level, *h));
                }
                offset += 1u64 << level;
            }
        }
        out
    }

    /// Appends one leaf and returns every node it completes, the leaf itself first as
    /// `(0, index, leaf)`, so that the caller can store them.
    pub fn push(&mut self, leaf: Hash) -> Vec<(u32, u64, Hash)> {
        let mut out = Vec::with_capacity(1 + self.size.trailing_ones() as usize);
        self.push_with(leaf, |level, index, hash| out.push((level, index, *hash)));
        out
    }

    /// Appends one leaf, calling `completed` for each node it completes (the leaf first), without
    /// allocating.
    pub fn push_with(&mut self, leaf: Hash, mut completed: impl FnMut(u32, u64, &Hash)) {
        let index = self.size;
        completed(0, index, &leaf);
        let mut hash = leaf;
        let mut level = 0u32;
        // Each trailing one bit of the old size is a left sibling waiting for this leaf's subtree.
        while index & (1u64 << level) != 0 {
            let Some(left) = self.edge.pop() else {
                // The edge holds exactly one hash per set bit of the size, so a set bit always
                // has its hash; this branch is unreachable and keeps the frontier unchanged.
                break;
            };
            hash = node_hash(&left, &hash);
            level += 1;
            completed(level, index >> level, &hash);
        }
        self.edge.push(hash);
        // A log of 2^64 entries cannot be written, so the size never overflows.
        self.size += 1;
    }

    /// The RFC 9162 Merkle Tree Hash of all leaves appended so far (the empty root for none).
    pub fn root(&self) -> Hash {
        let mut iter = self.edge.iter().rev();
        let Some(last) = iter.next() else {
            return empty_root();
        };
        iter.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

/// The largest power of two strictly less than `n` (for `n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[a:b]) for a range that RFC 9162's recursion can produce (see the module comment): the
/// fold of the complete subtrees that tile it, largest first.
fn range_root(a: u64, b: u64, src: &dyn NodeSource) -> Result<Hash, MerkleError> {
    debug_assert!(a < b);
    if a >= b {
        return Ok(empty_root());
    }
    // Any range, aligned or not, is tiled by at most 2 × 64 aligned blocks.
    let mut parts: [Hash; 128] = [[0u8; 32]; 128];
    let mut count = 0usize;
    let mut pos = a;
    while pos < b {
        let remaining = b - pos;
        let mut level = 63 - remaining.leading_zeros();
        // The ranges RFC 9162 asks for are aligned; for any other range fall back to the largest
        // aligned block so the result is still the hash of stored nodes (never reached).
        while level > 0 && pos & ((1u64 << level) - 1) != 0 {
            level -= 1;
        }
        parts[count] = src.node(level, pos >> level)?;
        count += 1;
        pos += 1u64 << level;
    }
    let mut acc = parts[count - 1];
    for left in parts[..count - 1].iter().rev() {
        acc = node_hash(left, &acc);
    }
    Ok(acc)
}

/// The RFC 9162 root of the first `size` leaves, from stored nodes.
pub fn root_at(size: u64, src: &dyn NodeSource) -> Result<Hash, MerkleError> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_root(0, size, src)
}

/// The RFC 9162 §2.1.3.1 inclusion proof PATH(index, D[size]), nearest sibling first.
pub fn inclusion_proof(
    index: u64,
    size: u64,
    src: &dyn NodeSource,
) -> Result<Vec<Hash>, MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    // Walk down from the root, collecting the sibling subtree at each split; the proof lists them
    // from the leaf upwards, so reverse at the end.
    let mut path = Vec::with_capacity(64);
    let (mut a, mut b) = (0u64, size);
    while b - a > 1 {
        let k = split_point(b - a);
        if index < a + k {
            path.push(range_root(a + k, b, src)?);
            b = a + k;
        } else {
            path.push(range_root(a, a + k, src)?);
            a += k;
        }
    }
    path.reverse();
    Ok(path)
}

/// The RFC 9162 §2.1.4.1 consistency proof PROOF(first, D[second]); empty when `first` is 0 or
/// equals `second`.
pub fn consistency_proof(
    first: u64,
    second: u64,
    src: &dyn NodeSource,
) -> Result<Vec<Hash>, MerkleError> {
    if first > second {
        return Err(MerkleError::SizeOrder { first, second });
    }
    if first == 0 || first == second {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[a:b], whole) walked top-down; like PATH, the result is reversed at the end.
    let mut proof = Vec::with_capacity(64);
    let (mut a, mut b) = (0u64, second);
    let mut m = first;
    let mut whole = true;
    loop {
        if m == b - a {
            if !whole {
                proof.push(range_root(a, b, src)?);
            }
            break;
        }
        let k = split_point(b - a);
        if m <= k {
            proof.push(range_root(a + k, b, src)?);
            b = a + k;
        } else {
            proof.push(range_root(a, a + k, src)?);
            a += k;
            m -= k;
            whole = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// Verifies an inclusion proof with the RFC 9162 §2.1.3.2 algorithm.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let mut fnode = index;
    let mut snode = size - 1;
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(MerkleError::InclusionFailed(
                "the proof is longer than the path to the root",
            ));
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(MerkleError::InclusionFailed(
            "the proof is shorter than the path to the root",
        ));
    }
    if r != *root {
        return Err(MerkleError::InclusionFailed(
            "the recomputed root differs from the given root",
        ));
    }
    Ok(())
}

/// Verifies a consistency proof with the RFC 9162 §2.1.4.2 algorithm.
///
/// Equal sizes need equal roots and an empty proof; a first size of 0 needs the empty root and an
/// empty proof (every tree extends the empty tree).
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> Result<(), MerkleError> {
    if first > second {
        return Err(MerkleError::SizeOrder { first, second });
    }
    if first == second {
        if !proof.is_empty() {
            return Err(MerkleError::ConsistencyFailed(
                "a proof between equal sizes must be empty",
            ));
        }
        if first_root != second_root {
            return Err(MerkleError::ConsistencyFailed(
                "the roots of two trees of the same size differ",
            ));
        }
        return Ok(());
    }
    if first == 0 {
        if !proof.is_empty() {
            return Err(MerkleError::ConsistencyFailed(
                "a proof from the empty tree must be empty",
            ));
        }
        if *first_root != empty_root() {
            return Err(MerkleError::ConsistencyFailed(
                "the first root is not the root of the empty tree",
            ));
        }
        return Ok(());
    }
    if proof.is_empty() {
        return Err(MerkleError::ConsistencyFailed("the proof is empty"));
    }
    // Step 2: a first tree that is a complete subtree is its own first proof node.
    let mut path = proof.iter();
    let seed = if first.is_power_of_two() {
        *first_root
    } else {
        match path.next() {
            Some(h) => *h,
            None => return Err(MerkleError::ConsistencyFailed("the proof is empty")),
        }
    };
    let mut fnode = first - 1;
    let mut snode = second - 1;
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let mut fr = seed;
    let mut sr = seed;
    for c in path {
        if snode == 0 {
            return Err(MerkleError::ConsistencyFailed(
                "the proof is longer than the path to the root",
            ));
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(MerkleError::ConsistencyFailed(
            "the proof is shorter than the path to the root",
        ));
    }
    if fr != *first_root {
        return Err(MerkleError::ConsistencyFailed(
            "the proof does not lead to the first root",
        ));
    }
    if sr != *second_root {
        return Err(MerkleError::ConsistencyFailed(
            "the proof does not lead to the second root",
        ));
    }
    Ok(())
}

/// An in-memory [`NodeSource`]: every complete subtree, per level, filled by [`MemNodes::push`].
#[derive(Clone, Debug, Default)]
pub struct MemNodes {
    levels: Vec<Vec<Hash>>,
    frontier: Frontier,
    /// Nodes replaced (`Some`) or removed (`None`) after the fact, for tamper tests.
    overrides: HashMap<(u32, u64), Option<Hash>>,
}

impl MemNodes {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one leaf hash and stores every node it completes.
    pub fn push(&mut self, leaf: Hash) {
        let levels = &mut self.levels;
        self.frontier.push_with(leaf, |level, _index, hash| {
            let level = level as usize;
            if levels.len() <= level {
                levels.resize_with(level + 1, Vec::new);
            }
            levels[level].push(*hash);
        });
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// Overwrites a stored node, as an attacker editing the node table would (for tests).
    pub fn set(&mut self, level: u32, index: u64, hash: Hash) {
        self.overrides.insert((level, index), Some(hash));
    }

    /// Forgets a stored node, as if its row were deleted (for tests).
    pub fn remove(&mut self, level: u32, index: u64) {
        self.overrides.insert((level, index), None);
    }
}

impl NodeSource for MemNodes {
    fn node(&self, level: u32, index: u64) -> Result<Hash, MerkleError> {
        if let Some(h) = self.overrides.get(&(level, index)) {
            return h.ok_or(MerkleError::MissingNode { level, index });
        }
        usize::try_from(index)
            .ok()
            .and_then(|i| self.levels.get(level as usize)?.get(i))
            .copied()
            .ok_or(MerkleError::MissingNode { level, index })
    }
}

#[cfg(test)]
mod tests;
