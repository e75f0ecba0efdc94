//! The hash chain that links every audit entry to the one before it.
//!
//! Each entry stores `chain_hash(previous, leaf)` in clear beside its canonical bytes, so a
//! verifier that reads the entries in order finds the first one that was altered, removed or
//! moved without waiting for the next signed checkpoint.

use aws_lc_rs::digest;

use crate::merkle::Hash;

/// The `previous` value of the first entry.
pub const GENESIS: Hash = [0u8; 32];

/// Domain separation for chain hashes, so they can never be confused with Merkle hashes.
const CHAIN_PREFIX: &[u8; 25] = b"carevault audit chain v1\0";

/// SHA-256("carevault audit chain v1\0" || previous || leaf).
pub fn chain_hash(previous: &Hash, leaf: &Hash) -> Hash {
    let mut buf = [0u8; 25 + 64];
    buf[..25].copy_from_slice(CHAIN_PREFIX);
    buf[25..57].copy_from_slice(previous);
    buf[57..].copy_from_slice(leaf);
    let d = digest::digest(&digest::SHA256, &buf);
    let mut out = [0u8; 32];
    // SHA-256 digests are always exactly 32 bytes, so this copy cannot panic.
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::leaf_hash;

    #[test]
    fn chain_hash_is_the_documented_sha256() {
        let leaf = leaf_hash(b"entry");
        let mut msg = b"carevault audit chain v1\0".to_vec();
        msg.extend_from_slice(&GENESIS);
        msg.extend_from_slice(&leaf);
        let want = digest::digest(&digest::SHA256, &msg);
        assert_eq!(chain_hash(&GENESIS, &leaf).as_slice(), want.as_ref());
    }

    #[test]
    fn chain_depends_on_order_and_content() {
        let a = leaf_hash(b"a");
        let b = leaf_hash(b"b");
        let ab = chain_hash(&chain_hash(&GENESIS, &a), &b);
        let ba = chain_hash(&chain_hash(&GENESIS, &b), &a);
        assert_ne!(ab, ba);
        assert_ne!(chain_hash(&GENESIS, &a), chain_hash(&GENESIS, &b));
        assert_ne!(chain_hash(&GENESIS, &a), chain_hash(&a, &a));
    }
}
