//! Tamper tests: logs built in memory, altered one way each, and the first bad entry named.

use super::*;
use crate::checkpoint::NoteSigner;
use crate::merkle::MemNodes;

const ORIGIN: &str = "carevault.example/audit";
const KEY: &str = "carevault-audit/cv-node-1";
const SEED: [u8; 32] = [3u8; 32];
const ATTACKER_SEED: [u8; 32] = [4u8; 32];

type Entry = (u64, Vec<u8>, Hash);

/// A log as the store would hold it: entries with chain hashes, nodes, and checkpoint notes.
struct Log {
    entries: Vec<Entry>,
    nodes: MemNodes,
    /// Signed checkpoints at chosen sizes, in order.
    notes: Vec<String>,
}

fn entry_bytes(seq: u64, salt: &str) -> Vec<u8> {
    format!(
        r#"{{"resourceType":"AuditEvent","n":{seq},"salt":"{salt}","pad":"{}"}}"#,
        "x".repeat(seq as usize % 50)
    )
    .into_bytes()
}

fn signer() -> NoteSigner {
    NoteSigner::from_seed(KEY, &SEED).unwrap()
}

fn vkey() -> String {
    signer().verifier_key()
}

/// Appends entries `from..=to` with chain hashes continuing from `log`'s last one.
fn extend(log: &mut Log, to: u64, salt: &str, checkpoint_at: &[u64], s: &NoteSigner) {
    let mut chain = log.entries.last().map(|e| e.2).unwrap_or(GENESIS);
    let from = log.entries.len() as u64 + FIRST_SEQ;
    for seq in from..=to {
        let bytes = entry_bytes(seq, salt);
        let leaf = leaf_hash(&bytes);
        chain = chain_hash(&chain, &leaf);
        log.nodes.push(leaf);
        log.entries.push((seq, bytes, chain));
        if checkpoint_at.contains(&seq) {
            log.notes.push(s.sign(&Checkpoint {
                origin: ORIGIN.into(),
                size: seq,
                root: log.nodes.root(),
                time_ms: 1_795_857_243_000 + seq as i64,
            }));
        }
    }
}

fn build(n: u64, checkpoint_at: &[u64]) -> Log {
    let mut log = Log {
        entries: Vec::new(),
        nodes: MemNodes::new(),
        notes: Vec::new(),
    };
    extend(&mut log, n, "a", checkpoint_at, &signer());
    log
}

fn run(
    vkey: &str,
    entries: &[Entry],
    local: &[String],
    against: &[String],
    nodes: Option<&MemNodes>,
) -> Result<Summary, Tamper> {
    let mut v = Verifier::new(vkey, vec![local.concat()], against.to_vec())?;
    for (seq, bytes, chain) in entries {
        v.push(*seq, bytes, *chain)?;
    }
    v.finish(nodes.map(|n| n as &dyn NodeSource))
}

fn expect(result: Result<Summary, Tamper>, kind: TamperKind, seq: Option<u64>) -> Tamper {
    let err = result.expect_err("tampering went unnoticed");
    assert_eq!(err.kind, kind, "{err}");
    assert_eq!(err.seq, seq, "{err}");
    // One sentence.
    assert!(
        !err.message.contains('\n') && !err.message.ends_with('.'),
        "{err}"
    );
    err
}

#[test]
fn a_clean_log_verifies() {
    let log = build(1000, &[10, 256, 512, 999]);
    let s = run(
        &vkey(),
        &log.entries,
        &log.notes,
        &log.notes[1..3],
        Some(&log.nodes),
    )
    .unwrap();
    assert_eq!(s.entries, 1000);
    assert_eq!(s.root, log.nodes.root());
    assert_eq!(s.chain_head, log.entries[999].2);
    assert_eq!(s.checkpoints, 4);
    assert_eq!(s.against, 2);
    assert_eq!(s.latest.as_ref().map(|c| c.size), Some(999));
    assert_eq!(s.unsigned_tail, 1);
    // Right edge (1000 = 512+256+128+64+32+8: 6 nodes) plus levels 8 and 9 (3 + 1).
    assert_eq!(s.nodes_checked, 6 + 3 + 1);
}

#[test]
fn an_empty_log_verifies() {
    let s = run(&vkey(), &[], &[], &[], None).unwrap();
    assert_eq!(s.entries, 0);
    assert_eq!(s.root, crate::merkle::empty_root());
    assert_eq!(s.chain_head, GENESIS);
    // A checkpoint of the empty log must carry the empty root.
    let empty = signer().sign(&Checkpoint {
        origin: ORIGIN.into(),
        size: 0,
        root: crate::merkle::empty_root(),
        time_ms: 0,
    });
    assert_eq!(
        run(&vkey(), &[], &[empty], &[], None).unwrap().checkpoints,
        1
    );
    let bogus = signer().sign(&Checkpoint {
        origin: ORIGIN.into(),
        size: 0,
        root: [1; 32],
        time_ms: 0,
    });
    expect(
        run(&vkey(), &[], &[bogus], &[], None),
        TamperKind::CheckpointMismatch,
        None,
    );
}

#[test]
fn one_changed_byte_is_named() {
    let mut log = build(300, &[100, 300]);
    log.entries[141].1[20] ^= 0x01;
    let err = expect(
        run(&vkey(), &log.entries, &log.notes, &[], None),
        TamperKind::EntryAltered,
        Some(142),
    );
    assert_eq!(
        err.message,
        "entry 142 does not match its chain hash: it was altered, replaced or moved"
    );
    // A changed stored chain hash is caught the same way.
    let mut log = build(300, &[100, 300]);
    log.entries[7].2[0] ^= 0x80;
    expect(
        run(&vkey(), &log.entries, &log.notes, &[], None),
        TamperKind::EntryAltered,
        Some(8),
    );
}

#[test]
fn a_deleted_entry_is_named() {
    let mut log = build(50, &[50]);
    log.entries.remove(20);
    let err = expect(
        run(&vkey(), &log.entries, &log.notes, &[], None),
        TamperKind::EntryMissing,
        Some(21),
    );
    assert_eq!(
        err.message,
        "entry 21 is missing: the log jumps from entry 20 to entry 22"
    );
    // Deleting the first entry.
    let mut log = build(5, &[]);
    log.entries.remove(0);
    expect(
        run(&vkey(), &log.entries, &[], &[], None),
        TamperKind::EntryMissing,
        Some(1),
    );
}

#[test]
fn a_deleted_and_renumbered_entry_is_named() {
    let mut log = build(50, &[50]);
    log.entries.remove(20);
    for e in &mut log.entries[20..] {
        e.0 -= 1;
    }
    expect(
        run(&vkey(), &log.entries, &log.notes, &[], None),
        TamperKind::EntryAltered,
        Some(21),
    );
}

#[test]
fn swapped_entries_are_named() {
    // Rows swapped whole (bytes and chain), as read back in sequence order.
    let mut log = build(40, &[40]);
    let (a, b) = (log.entries[9].clone(), log.entries[10].clone());
    log.entries[9] = (10, b.1.clone(), b.2);
    log.entries[10] = (11, a.1.clone(), a.2);
    expect(
        run(&vkey(), &log.entries, &log.notes, &[], None),
        TamperKind::EntryAltered,
        Some(10),
    );
    // Only the bytes swapped.
    let mut log = build(40, &[40]);
    let tmp = log.entries[9].1.clone();
    log.entries[9].1 = log.entries[10].1.clone();
    log.entries[10].1 = tmp;
    expect(
        run(&vkey(), &log.entries, &log.notes, &[], None),
        TamperKind::EntryAltered,
        Some(10),
    );
    // Fed out of order.
    let mut log = build(40, &[]);
    log.entries.swap(9, 10);
    expect(
        run(&vkey(), &log.entries, &[], &[], None),
        TamperKind::EntryMissing,
        Some(10),
    );
}

#[test]
fn a_duplicated_entry_is_named() {
    let mut log = build(10, &[]);
    let dup = log.entries[4].clone();
    log.entries.insert(5, dup);
    expect(
        run(&vkey(), &log.entries, &[], &[], None),
        TamperKind::OutOfOrder,
        Some(5),
    );
}

#[test]
fn a_truncated_tail_is_named() {
    let mut log = build(100, &[60, 100]);
    log.entries.truncate(80);
    let err = expect(
        run(&vkey(), &log.entries, &log.notes, &[], None),
        TamperKind::Truncated,
        Some(81),
    );
    assert!(
        err.message
            .starts_with("the log ends at entry 80 but checkpoint 2 of the checkpoints file"),
        "{err}"
    );
    assert!(
        err.message.ends_with("entries 81 to 100 were deleted"),
        "{err}"
    );
}

#[test]
fn an_edit_with_rewritten_chain_is_caught_at_the_next_checkpoint() {
    let mut log = build(120, &[50, 100, 120]);
    // The attacker edits entry 70 and recomputes every later chain hash.
    log.entries[69].1 = b"{\"forged\":true}".to_vec();
    let mut chain = log.entries[68].2;
    for e in &mut log.entries[69..] {
        chain = chain_hash(&chain, &leaf_hash(&e.1));
        e.2 = chain;
    }
    let err = expect(
        run(&vkey(), &log.entries, &log.notes, &[], None),
        TamperKind::CheckpointMismatch,
        None,
    );
    assert!(
        err.message.contains("an entry after 50 and up to 100"),
        "{err}"
    );
}

#[test]
fn a_checkpoint_root_that_does_not_match_is_caught() {
    let log = build(30, &[]);
    let wrong = signer().sign(&Checkpoint {
        origin: ORIGIN.into(),
        size: 20,
        root: log.nodes.root(),
        time_ms: 0,
    });
    expect(
        run(&vkey(), &log.entries, &[wrong], &[], None),
        TamperKind::CheckpointMismatch,
        None,
    );
}

#[test]
fn a_log_resigned_with_another_key_is_caught() {
    let log = build(60, &[30, 60]);
    let shipped = log.notes.clone();
    // The attacker rewrites entry 10 and everything after, re-signs every checkpoint with their
    // own key and replaces the data directory's verifier key.
    let attacker = NoteSigner::from_seed(KEY, &ATTACKER_SEED).unwrap();
    let mut forged = Log {
        entries: log.entries[..9].to_vec(),
        nodes: MemNodes::new(),
        notes: Vec::new(),
    };
    for e in &forged.entries {
        forged.nodes.push(leaf_hash(&e.1));
    }
    extend(&mut forged, 60, "forged", &[30, 60], &attacker);
    // On its own the forged data directory is consistent.
    let forged_vkey = attacker.verifier_key();
    assert!(
        run(
            &forged_vkey,
            &forged.entries,
            &forged.notes,
            &[],
            Some(&forged.nodes)
        )
        .is_ok()
    );
    // Against checkpoints shipped elsewhere, it is not.
    let err = expect(
        run(&forged_vkey, &forged.entries, &forged.notes, &shipped, None),
        TamperKind::ForeignKey,
        None,
    );
    assert!(err.message.contains("re-signed with another key"), "{err}");
    // And the original key rejects the forged local checkpoints too.
    expect(
        run(&vkey(), &forged.entries, &forged.notes, &[], None),
        TamperKind::ForeignKey,
        None,
    );
}

#[test]
fn a_bad_checkpoint_signature_is_caught() {
    let log = build(20, &[20]);
    let altered = log.notes[0].replacen("\n20\n", "\n19\n", 1);
    expect(
        run(
            &vkey(),
            &log.entries,
            &[],
            std::slice::from_ref(&altered),
            None,
        ),
        TamperKind::BadSignature,
        None,
    );
    expect(
        run(&vkey(), &log.entries, &[altered], &[], None),
        TamperKind::BadSignature,
        None,
    );
}

#[test]
fn a_rollback_to_an_older_state_is_caught() {
    // Shipped at 100; the whole data directory is later restored from a copy taken at 70.
    let log = build(100, &[50, 70, 100]);
    let shipped = vec![log.notes[2].clone()];
    let old_entries = &log.entries[..70];
    let old_notes = &log.notes[..2];
    assert!(run(&vkey(), old_entries, old_notes, &[], None).is_ok());
    let err = expect(
        run(&vkey(), old_entries, old_notes, &shipped, None),
        TamperKind::RolledBack,
        Some(71),
    );
    assert!(err.message.contains("truncated or rolled back"), "{err}");
}

#[test]
fn a_rollback_then_regrowth_is_caught() {
    // Shipped at 80; the log is rolled back to 60 and regrows to 100 with other entries, and the
    // attacker holds the signing key so every local checkpoint is genuine.
    let log = build(100, &[60, 80]);
    let shipped = vec![log.notes[1].clone()];
    let mut regrown = Log {
        entries: log.entries[..60].to_vec(),
        nodes: MemNodes::new(),
        notes: vec![log.notes[0].clone()],
    };
    for e in &regrown.entries {
        regrown.nodes.push(leaf_hash(&e.1));
    }
    extend(&mut regrown, 100, "regrown", &[90, 100], &signer());
    assert!(
        run(
            &vkey(),
            &regrown.entries,
            &regrown.notes,
            &[],
            Some(&regrown.nodes)
        )
        .is_ok()
    );
    let err = expect(
        run(&vkey(), &regrown.entries, &regrown.notes, &shipped, None),
        TamperKind::RolledBack,
        None,
    );
    assert!(
        err.message
            .contains("rolled back and rewritten after entry 60"),
        "{err}"
    );
}

#[test]
fn altered_or_missing_stored_nodes_are_caught() {
    let log = build(1000, &[1000]);
    // A node on the right edge (level 3 covers entries 993..1000).
    let mut nodes = log.nodes.clone();
    nodes.set(3, 124, [0; 32]);
    let err = expect(
        run(&vkey(), &log.entries, &log.notes, &[], Some(&nodes)),
        TamperKind::NodeMismatch,
        None,
    );
    assert!(err.message.contains("entries 993 to 1000"), "{err}");
    // An inner node of level 8.
    let mut nodes = log.nodes.clone();
    nodes.set(8, 1, [0; 32]);
    expect(
        run(&vkey(), &log.entries, &log.notes, &[], Some(&nodes)),
        TamperKind::NodeMismatch,
        None,
    );
    let mut nodes = log.nodes.clone();
    nodes.remove(9, 0);
    expect(
        run(&vkey(), &log.entries, &log.notes, &[], Some(&nodes)),
        TamperKind::NodeMissing,
        None,
    );
}

#[test]
fn malformed_inputs_are_reported() {
    let log = build(10, &[5, 10]);
    expect(
        run("not a key", &log.entries, &[], &[], None),
        TamperKind::BadKey,
        None,
    );
    // A shipped file must be whole.
    let cut = log.notes[0][..log.notes[0].len() - 5].to_owned();
    expect(
        run(&vkey(), &log.entries, &[], std::slice::from_ref(&cut), None),
        TamperKind::MalformedCheckpoint,
        None,
    );
    // A note cut off at the end of the data directory's file is a write in progress: skipped.
    let s = run(
        &vkey(),
        &log.entries,
        &[log.notes[0].clone(), cut.clone()],
        &[],
        None,
    )
    .unwrap();
    assert!(s.partial_checkpoint_ignored);
    assert_eq!(s.checkpoints, 1);
    // But not in the middle of it.
    let middle = vec![cut.replace('\u{2014}', "-"), log.notes[1].clone()];
    expect(
        run(&vkey(), &log.entries, &middle, &[], None),
        TamperKind::MalformedCheckpoint,
        None,
    );
    // Reordered checkpoints file.
    let reordered = vec![log.notes[1].clone(), log.notes[0].clone()];
    expect(
        run(&vkey(), &log.entries, &reordered, &[], None),
        TamperKind::MalformedCheckpoint,
        None,
    );
    // A checkpoint of another log signed with the same key.
    let other = signer().sign(&Checkpoint {
        origin: "other.example/log".into(),
        size: 5,
        root: [0; 32],
        time_ms: 0,
    });
    let err = expect(
        run(&vkey(), &log.entries, &log.notes, &[other], None),
        TamperKind::MalformedCheckpoint,
        None,
    );
    assert!(err.message.contains("another log"), "{err}");
}

#[test]
fn batches_and_leaves_give_the_same_result() {
    let log = build(5000, &[1234, 4096, 5000]);
    let mut by_batch = Verifier::new(&vkey(), log.notes.clone(), vec![]).unwrap();
    for chunk in log.entries.chunks(777) {
        by_batch.push_batch(chunk, 3).unwrap();
    }
    assert_eq!(by_batch.verified(), 5000);
    let mut by_leaf = Verifier::new(&vkey(), log.notes.clone(), vec![]).unwrap();
    for (seq, bytes, chain) in &log.entries {
        by_leaf.push_leaf(*seq, leaf_hash(bytes), *chain).unwrap();
    }
    let a = by_batch.finish(Some(&log.nodes)).unwrap();
    let b = by_leaf.finish(Some(&log.nodes)).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.checkpoints, 3);
    // A bad entry inside a batch is still named exactly.
    let mut bad = log.entries.clone();
    bad[3000].1[3] ^= 4;
    let mut v = Verifier::new(&vkey(), log.notes.clone(), vec![]).unwrap();
    let err = bad
        .chunks(1000)
        .try_for_each(|c| v.push_batch(c, 2))
        .unwrap_err();
    assert_eq!(err.seq, Some(3001));
}

#[test]
fn prepared_batches_report_the_first_bad_entry_first() {
    let log = build(3000, &[3000]);
    let vk = vkey();
    // Items as a store might hand them over: still "sealed" (here: reversed bytes).
    let sealed: Vec<(u64, Vec<u8>, Hash)> = log
        .entries
        .iter()
        .map(|(seq, b, c)| (*seq, b.iter().rev().copied().collect(), *c))
        .collect();
    let open = |(seq, bytes, chain): &(u64, Vec<u8>, Hash)| {
        if bytes.is_empty() {
            return Err(Tamper {
                seq: Some(*seq),
                kind: TamperKind::EntryAltered,
                message: format!("entry {seq} cannot be opened"),
            });
        }
        let plain: Vec<u8> = bytes.iter().rev().copied().collect();
        Ok((*seq, leaf_hash(&plain), *chain))
    };
    let mut v = Verifier::new(&vk, log.notes.clone(), vec![]).unwrap();
    v.push_batch_with(&sealed, 2, open).unwrap();
    assert_eq!(v.finish(Some(&log.nodes)).unwrap().checkpoints, 1);
    // An entry that cannot be opened after an altered one: the altered one is named.
    let mut bad = sealed.clone();
    bad[2500].1.clear();
    bad[100].1[0] ^= 1;
    let mut v = Verifier::new(&vk, log.notes.clone(), vec![]).unwrap();
    let err = v.push_batch_with(&bad, 2, open).unwrap_err();
    assert_eq!(err.seq, Some(101));
    let mut bad = sealed;
    bad[2500].1.clear();
    let mut v = Verifier::new(&vk, log.notes.clone(), vec![]).unwrap();
    let err = v.push_batch_with(&bad, 2, open).unwrap_err();
    assert_eq!(
        (err.seq, err.message.as_str()),
        (Some(2501), "entry 2501 cannot be opened")
    );
}
