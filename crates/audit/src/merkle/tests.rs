//! Tests of the Merkle tree against the RFC 9162 text, the Certificate Transparency vectors and
//! random trees.

use super::*;
use proptest::prelude::*;

fn hex(s: &str) -> Hash {
    let mut out = [0u8; 32];
    assert_eq!(s.len(), 64, "hash hex must be 64 characters");
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

// --- An independent reference, written straight from RFC 9162 §2.1 over the leaf hashes. ---

fn k_of(n: usize) -> usize {
    // "the largest power of two smaller than n"
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

fn ref_mth(d: &[Hash]) -> Hash {
    match d.len() {
        0 => empty_root(),
        1 => d[0],
        n => {
            let k = k_of(n);
            node_hash(&ref_mth(&d[..k]), &ref_mth(&d[k..]))
        }
    }
}

fn ref_path(m: usize, d: &[Hash]) -> Vec<Hash> {
    let n = d.len();
    if n == 1 {
        return vec![];
    }
    let k = k_of(n);
    if m < k {
        let mut p = ref_path(m, &d[..k]);
        p.push(ref_mth(&d[k..]));
        p
    } else {
        let mut p = ref_path(m - k, &d[k..]);
        p.push(ref_mth(&d[..k]));
        p
    }
}

fn ref_subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
    let n = d.len();
    if m == n {
        return if b { vec![] } else { vec![ref_mth(d)] };
    }
    let k = k_of(n);
    if m <= k {
        let mut p = ref_subproof(m, &d[..k], b);
        p.push(ref_mth(&d[k..]));
        p
    } else {
        let mut p = ref_subproof(m - k, &d[k..], false);
        p.push(ref_mth(&d[..k]));
        p
    }
}

fn ref_proof(m: usize, d: &[Hash]) -> Vec<Hash> {
    ref_subproof(m, d, true)
}

fn tree(leaves: &[Hash]) -> MemNodes {
    let mut nodes = MemNodes::new();
    for l in leaves {
        nodes.push(*l);
    }
    nodes
}

fn synthetic_leaves(seed: u64, n: usize) -> Vec<Hash> {
    (0..n as u64)
        .map(|i| {
            let mut data = seed.to_be_bytes().to_vec();
            data.extend_from_slice(&i.to_be_bytes());
            leaf_hash(&data)
        })
        .collect()
}

// --- The Certificate Transparency / transparency-dev 8-leaf vectors. ---

fn ct_leaves() -> Vec<Hash> {
    let data: [&[u8]; 8] = [
        b"",
        &[0x00],
        &[0x10],
        &[0x20, 0x21],
        &[0x30, 0x31],
        &[0x40, 0x41, 0x42, 0x43],
        &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
        &[
            0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
            0x6e, 0x6f,
        ],
    ];
    data.iter().map(|d| leaf_hash(d)).collect()
}

const CT_ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

#[test]
fn hashes_follow_rfc_9162() {
    assert_eq!(
        empty_root(),
        hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    );
    // The leaf hash of the empty string is the one-leaf root of the CT vectors.
    assert_eq!(leaf_hash(b""), hex(CT_ROOTS[0]));
}

#[test]
fn ct_vectors_roots() {
    let leaves = ct_leaves();
    let nodes = tree(&leaves);
    let mut frontier = Frontier::new();
    assert_eq!(frontier.root(), empty_root());
    for (i, want) in CT_ROOTS.iter().enumerate() {
        frontier.push(leaves[i]);
        assert_eq!(
            frontier.root(),
            hex(want),
            "frontier root at size {}",
            i + 1
        );
        assert_eq!(root_at(i as u64 + 1, &nodes).unwrap(), hex(want));
        assert_eq!(ref_mth(&leaves[..=i]), hex(want));
    }
    assert_eq!(root_at(0, &nodes).unwrap(), empty_root());
}

#[test]
fn ct_vectors_inclusion() {
    let leaves = ct_leaves();
    let nodes = tree(&leaves);
    // (zero-based index, size, proof)
    let cases: Vec<(u64, u64, Vec<&str>)> = vec![
        (0, 1, vec![]),
        (
            0,
            8,
            vec![
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            vec![
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            3,
            vec!["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            vec![
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    for (index, size, want) in cases {
        let want: Vec<Hash> = want.into_iter().map(hex).collect();
        let got = inclusion_proof(index, size, &nodes).unwrap();
        assert_eq!(got, want, "PATH({index}, D[{size}])");
        let root = hex(CT_ROOTS[size as usize - 1]);
        verify_inclusion(&leaves[index as usize], index, size, &got, &root).unwrap();
    }
}

#[test]
fn ct_vectors_consistency() {
    let leaves = ct_leaves();
    let nodes = tree(&leaves);
    let cases: Vec<(u64, u64, Vec<&str>)> = vec![
        (1, 1, vec![]),
        (
            1,
            8,
            vec![
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            vec![
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            vec![
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            7,
            vec![
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
    for (first, second, want) in cases {
        let want: Vec<Hash> = want.into_iter().map(hex).collect();
        let got = consistency_proof(first, second, &nodes).unwrap();
        assert_eq!(got, want, "PROOF({first}, D[{second}])");
        let r1 = hex(CT_ROOTS[first as usize - 1]);
        let r2 = hex(CT_ROOTS[second as usize - 1]);
        verify_consistency(first, second, &r1, &r2, &got).unwrap();
    }
}

#[test]
fn frontier_push_returns_completed_nodes_and_rebuilds() {
    let leaves = synthetic_leaves(7, 11);
    let mut f = Frontier::new();
    let mut all = Vec::new();
    for l in &leaves {
        all.extend(f.push(*l));
    }
    // 11 leaves: 11 leaves + 5 level-1 + 2 level-2 + 1 level-3 complete subtrees.
    assert_eq!(all.len(), 11 + 5 + 2 + 1);
    assert_eq!(all[0], (0, 0, leaves[0]));
    let nodes = tree(&leaves);
    for (level, index, hash) in &all {
        assert_eq!(nodes.node(*level, *index).unwrap(), *hash);
    }
    assert_eq!(
        all.iter().find(|(l, _, _)| *l == 3).map(|n| n.2),
        Some(ref_mth(&leaves[..8]))
    );
    let rebuilt = Frontier::from_source(11, &nodes).unwrap();
    assert_eq!(rebuilt, f);
    assert_eq!(rebuilt.root(), ref_mth(&leaves));
    assert_eq!(
        rebuilt.edge(),
        vec![
            (3, 0, ref_mth(&leaves[..8])),
            (1, 4, ref_mth(&leaves[8..10])),
            (0, 10, leaves[10])
        ]
    );
    // Appending after a rebuild continues the same tree.
    let mut resumed = rebuilt;
    let extra = leaf_hash(b"twelfth");
    resumed.push(extra);
    let mut twelve = leaves.clone();
    twelve.push(extra);
    assert_eq!(resumed.root(), ref_mth(&twelve));
}

#[test]
fn missing_nodes_are_reported() {
    let leaves = synthetic_leaves(1, 6);
    let mut nodes = tree(&leaves);
    nodes.remove(2, 0);
    assert!(matches!(
        root_at(6, &nodes),
        Err(MerkleError::MissingNode { level: 2, index: 0 })
    ));
    assert!(matches!(
        Frontier::from_source(6, &nodes),
        Err(MerkleError::MissingNode { level: 2, index: 0 })
    ));
    assert!(matches!(
        root_at(7, &nodes),
        Err(MerkleError::MissingNode { .. })
    ));
    let err = root_at(7, &nodes).unwrap_err().to_string();
    assert!(err.starts_with("the stored Merkle node at level"), "{err}");
}

#[test]
fn argument_errors() {
    let nodes = tree(&synthetic_leaves(2, 4));
    assert!(matches!(
        inclusion_proof(4, 4, &nodes),
        Err(MerkleError::IndexOutOfRange { index: 4, size: 4 })
    ));
    assert!(matches!(
        consistency_proof(5, 4, &nodes),
        Err(MerkleError::SizeOrder { .. })
    ));
    assert!(consistency_proof(0, 4, &nodes).unwrap().is_empty());
    assert!(consistency_proof(4, 4, &nodes).unwrap().is_empty());
    let root = nodes.root();
    assert!(verify_inclusion(&root, 0, 0, &[], &root).is_err());
}

#[test]
fn consistency_edge_cases() {
    let leaves = synthetic_leaves(3, 5);
    let r5 = ref_mth(&leaves);
    let r4 = ref_mth(&leaves[..4]);
    let e = empty_root();
    verify_consistency(0, 0, &e, &e, &[]).unwrap();
    verify_consistency(0, 5, &e, &r5, &[]).unwrap();
    verify_consistency(5, 5, &r5, &r5, &[]).unwrap();
    assert!(
        verify_consistency(0, 5, &r4, &r5, &[]).is_err(),
        "wrong empty root"
    );
    assert!(
        verify_consistency(0, 5, &e, &r5, &[r4]).is_err(),
        "non-empty proof"
    );
    assert!(
        verify_consistency(5, 5, &r4, &r5, &[]).is_err(),
        "different roots"
    );
    assert!(
        verify_consistency(5, 5, &r5, &r5, &[r4]).is_err(),
        "non-empty proof"
    );
    assert!(
        verify_consistency(4, 5, &r4, &r5, &[]).is_err(),
        "empty proof"
    );
    assert!(
        verify_consistency(5, 4, &r5, &r4, &[]).is_err(),
        "backwards"
    );
}

fn flip(h: &Hash, bit: usize) -> Hash {
    let mut out = *h;
    out[bit / 8 % 32] ^= 1 << (bit % 8);
    out
}

/// Every way of altering a valid inclusion proof's inputs must fail.
fn assert_inclusion_tamper_fails(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
    bit: usize,
) {
    let check = |l: &Hash, i: u64, s: u64, p: &[Hash], r: &Hash, what: &str| {
        assert!(
            verify_inclusion(l, i, s, p, r).is_err(),
            "altered {what} verified: index {index} size {size}"
        );
    };
    check(&flip(leaf, bit), index, size, proof, root, "leaf");
    check(leaf, index, size, proof, &flip(root, bit), "root");
    for i in 0..proof.len() {
        let mut p = proof.to_vec();
        p[i] = flip(&p[i], bit);
        check(leaf, index, size, &p, root, "proof element");
    }
    if !proof.is_empty() {
        check(
            leaf,
            index,
            size,
            &proof[..proof.len() - 1],
            root,
            "truncated proof",
        );
        let mut swapped = proof.to_vec();
        swapped.reverse();
        if swapped != proof {
            check(leaf, index, size, &swapped, root, "reordered proof");
        }
    }
    let mut extended = proof.to_vec();
    extended.push(*root);
    check(leaf, index, size, &extended, root, "extended proof");
    let mut prepended = vec![*leaf];
    prepended.extend_from_slice(proof);
    check(leaf, index, size, &prepended, root, "prepended proof");
    for wrong in [index.wrapping_sub(1), index + 1, index ^ 2] {
        if wrong != index {
            check(leaf, wrong, size, proof, root, "index");
        }
    }
    // A wrong size of the same shape (say 5 for 6) can walk the same path: the size is bound to
    // the root by the signed checkpoint, so only sizes of another height must fail here.
    for wrong in [size * 2, size / 2] {
        if wrong != size {
            check(leaf, index, wrong, proof, root, "size");
        }
    }
}

/// Every way of altering a valid, non-trivial consistency proof's inputs must fail.
fn assert_consistency_tamper_fails(
    first: u64,
    second: u64,
    r1: &Hash,
    r2: &Hash,
    proof: &[Hash],
    bit: usize,
) {
    let check = |f: u64, s: u64, a: &Hash, b: &Hash, p: &[Hash], what: &str| {
        assert!(
            verify_consistency(f, s, a, b, p).is_err(),
            "altered {what} verified: {first} -> {second}"
        );
    };
    check(first, second, &flip(r1, bit), r2, proof, "first root");
    check(first, second, r1, &flip(r2, bit), proof, "second root");
    check(first, second, r2, r1, proof, "swapped roots");
    for i in 0..proof.len() {
        let mut p = proof.to_vec();
        p[i] = flip(&p[i], bit);
        check(first, second, r1, r2, &p, "proof element");
    }
    check(first, second, r1, r2, &[], "empty proof");
    check(
        first,
        second,
        r1,
        r2,
        &proof[..proof.len() - 1],
        "truncated proof",
    );
    let mut extended = proof.to_vec();
    extended.push(*r2);
    check(first, second, r1, r2, &extended, "extended proof");
    let mut prepended = vec![proof[0]];
    prepended.extend_from_slice(proof);
    check(first, second, r1, r2, &prepended, "prepended proof");
    for wrong in [first - 1, first + 1, first ^ 2] {
        if wrong != first {
            check(wrong, second, r1, r2, proof, "first size");
        }
    }
    for wrong in [second * 2, second / 2] {
        if wrong != second {
            check(first, wrong, r1, r2, proof, "second size");
        }
    }
}

#[test]
fn ct_vectors_reject_tampering() {
    let leaves = ct_leaves();
    let nodes = tree(&leaves);
    for size in 1..=8u64 {
        let root = hex(CT_ROOTS[size as usize - 1]);
        for index in 0..size {
            let proof = inclusion_proof(index, size, &nodes).unwrap();
            assert_inclusion_tamper_fails(&leaves[index as usize], index, size, &proof, &root, 3);
        }
        for first in 1..size {
            let proof = consistency_proof(first, size, &nodes).unwrap();
            let r1 = hex(CT_ROOTS[first as usize - 1]);
            assert_consistency_tamper_fails(first, size, &r1, &root, &proof, 4);
        }
    }
}

#[test]
fn exhaustive_small_trees_match_reference() {
    let leaves = synthetic_leaves(9, 70);
    let nodes = tree(&leaves);
    for size in 1..=70usize {
        let d = &leaves[..size];
        let root = ref_mth(d);
        assert_eq!(root_at(size as u64, &nodes).unwrap(), root);
        for m in 0..size {
            let p = inclusion_proof(m as u64, size as u64, &nodes).unwrap();
            assert_eq!(p, ref_path(m, d));
            verify_inclusion(&d[m], m as u64, size as u64, &p, &root).unwrap();
        }
        for m in 1..=size {
            let p = consistency_proof(m as u64, size as u64, &nodes).unwrap();
            assert_eq!(p, ref_proof(m, d), "PROOF({m}, D[{size}])");
            verify_consistency(m as u64, size as u64, &ref_mth(&d[..m]), &root, &p).unwrap();
        }
    }
}

/// Counts look-ups, to show proofs cost O(log n) nodes.
struct Counting<'a> {
    inner: &'a MemNodes,
    count: std::cell::Cell<u64>,
}

impl NodeSource for Counting<'_> {
    fn node(&self, level: u32, index: u64) -> Result<Hash, MerkleError> {
        self.count.set(self.count.get() + 1);
        self.inner.node(level, index)
    }
}

#[test]
fn proofs_use_logarithmic_lookups() {
    let n = 100_003usize;
    let leaves = synthetic_leaves(4, n);
    let nodes = tree(&leaves);
    let counting = Counting {
        inner: &nodes,
        count: std::cell::Cell::new(0),
    };
    for index in [0u64, 1, 4_097, 65_535, 99_999, 100_002] {
        counting.count.set(0);
        inclusion_proof(index, n as u64, &counting).unwrap();
        assert!(
            counting.count.get() <= 2 * 17 + 2,
            "{}",
            counting.count.get()
        );
    }
    for first in [1u64, 3, 65_536, 77_777, 100_002] {
        counting.count.set(0);
        consistency_proof(first, n as u64, &counting).unwrap();
        assert!(
            counting.count.get() <= 2 * 17 + 2,
            "{}",
            counting.count.get()
        );
    }
    counting.count.set(0);
    root_at(n as u64, &counting).unwrap();
    assert_eq!(counting.count.get(), u64::from((n as u64).count_ones()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_trees_match_reference(
        seed in any::<u64>(),
        size in 1usize..=300,
        index_frac in 0.0f64..1.0,
        first_frac in 0.0f64..1.0,
        bit in 0usize..256,
    ) {
        let leaves = synthetic_leaves(seed, size);
        let nodes = tree(&leaves);
        let root = ref_mth(&leaves);

        // Roots agree: frontier, stored nodes and the reference.
        prop_assert_eq!(nodes.root(), root);
        prop_assert_eq!(root_at(size as u64, &nodes).unwrap(), root);

        let index = ((size as f64 * index_frac) as usize).min(size - 1);
        let proof = inclusion_proof(index as u64, size as u64, &nodes).unwrap();
        prop_assert_eq!(&proof, &ref_path(index, &leaves));
        prop_assert!(verify_inclusion(&leaves[index], index as u64, size as u64, &proof, &root).is_ok());
        assert_inclusion_tamper_fails(&leaves[index], index as u64, size as u64, &proof, &root, bit);

        let first = ((size as f64 * first_frac) as usize).clamp(1, size);
        let r1 = ref_mth(&leaves[..first]);
        prop_assert_eq!(root_at(first as u64, &nodes).unwrap(), r1);
        let cproof = consistency_proof(first as u64, size as u64, &nodes).unwrap();
        prop_assert_eq!(&cproof, &ref_proof(first, &leaves));
        prop_assert!(verify_consistency(first as u64, size as u64, &r1, &root, &cproof).is_ok());
        if first < size {
            assert_consistency_tamper_fails(first as u64, size as u64, &r1, &root, &cproof, bit);
        }
    }
}
