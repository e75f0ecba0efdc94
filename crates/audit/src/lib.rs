//! carevault's audit trail: BALP-shaped AuditEvents in a tamper-evident log, signed checkpoints,
//! offline verification and access reports.
//!
//! The design, from one event to a verified log:
//!
//! 1. **Entry.** The server fills an [`AuditRecord`] for every access and security event.
//!    [`event::canonical_bytes`] encodes its facts in a versioned compact form (format byte
//!    0x01, then compact JSON with a fixed key order; [`event::compact`]); those bytes are the
//!    entry, [`event::render`] turns them into the FHIR R4 AuditEvent (BALP shape, fixed element
//!    order, no `id`) that the API, reports and SIEM export show, and their RFC 9162 leaf hash
//!    ([`merkle::leaf_hash`], SHA-256 of `0x00 || bytes`) is the leaf. Entry `seq` (from
//!    [`verify::FIRST_SEQ`] = 1) is leaf `seq - 1`; its AuditEvent id is `a-%012d` of `seq`
//!    ([`event::with_id`]).
//! 2. **Chain.** Each entry also stores [`chain::chain_hash`]`(previous, leaf)` in clear, from
//!    [`chain::GENESIS`], so a verifier reading in order names the first altered, moved or
//!    removed entry without waiting for a checkpoint.
//! 3. **Tree.** The log keeps the RFC 9162 Merkle tree as the hash of every *complete* subtree,
//!    `(level, index, hash)`. The single writer appends through a [`merkle::Frontier`] (at most
//!    64 hashes, rebuilt from stored nodes at start-up) and stores the nodes each append
//!    completes; roots, inclusion proofs and consistency proofs at any size are computed from
//!    stored nodes in O(log n) look-ups through [`merkle::NodeSource`]. The store's
//!    `audit_log::append` does steps 1–3 inside the writer's transaction.
//! 4. **Checkpoints.** The root at a size is published as a C2SP `tlog-checkpoint` inside a
//!    `signed-note`, signed with Ed25519 by a key kept apart from the data keys
//!    ([`checkpoint::NoteSigner`]); the data directory keeps every one, and copies shipped
//!    elsewhere let [`verify::Verifier`] detect a rolled-back or re-signed log.
//! 5. **Verification and reports.** [`verify::Verifier`] replays a whole log offline and names
//!    the first bad entry; [`report`] turns stored events into accounting-of-disclosures and
//!    user-activity reports.
//!
//! The crate does no I/O: the store, server and CLI feed it through its types and traits. SHA-256
//! and Ed25519 come from `aws-lc-rs`, the one crypto provider of the binary.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chain;
pub mod checkpoint;
pub mod event;
pub mod instant;
pub mod merkle;
pub mod report;
pub mod verify;

pub use chain::{GENESIS, chain_hash};
pub use checkpoint::{
    Checkpoint, CheckpointError, NoteSigner, NoteVerifier, generate_seed, split_complete_notes,
    split_notes,
};
pub use event::{
    Action, AuditRecord, EventKind, Outcome, RestInteraction, UserRef, canonical_bytes, client_of,
    patients_of, render, to_json, user_of, with_id,
};
pub use merkle::{Frontier, Hash, MemNodes, MerkleError, NodeSource};
pub use report::{ReportRow, render_csv, render_html, render_json};
pub use verify::{FIRST_SEQ, PreparedEntry, Summary, Tamper, TamperKind, Verifier};
