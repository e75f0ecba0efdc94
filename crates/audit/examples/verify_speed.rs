//! Measures `Verifier` throughput over 1,000,000 synthetic ~1 KB entries and prints entries/s.
//!
//! Run: `cargo run -p carevault-audit --release --example verify_speed [ENTRIES] [ENTRY_BYTES]`.
//!
//! Each entry is `ENTRY_BYTES` (default 1024) long: its sequence number, then the canonical bytes
//! of a realistic read event repeated to fill the rest. A checkpoint is signed every 100,000
//! entries and the stored nodes are checked at the end, as `carevault audit verify` does.

use std::time::Instant;

use carevault_audit::merkle::leaf_hash;
use carevault_audit::{
    AuditRecord, Checkpoint, EventKind, GENESIS, Hash, MemNodes, NoteSigner, RestInteraction,
    UserRef, Verifier, canonical_bytes, chain_hash,
};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let entry_bytes: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024)
        .max(16);
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());

    // A realistic event, padded to ~1 KB, with its sequence number written into it.
    let mut record = AuditRecord::new(
        1_795_857_243_117,
        EventKind::Rest(RestInteraction::Read),
        "cv-node-1",
    );
    record.purpose = vec!["TREAT".into()];
    record.user = Some(UserRef {
        name: "jdoe".into(),
        reference: Some("Practitioner/p-17".into()),
        roles: vec!["nurse".into()],
    });
    record.client = Some("bedside-app".into());
    record.address = Some("10.2.3.4".into());
    record.user_agent = Some("Mozilla/5.0 (X11; Linux x86_64)".into());
    record.patients = vec!["Patient/pt-88".into()];
    record.resources = vec!["Observation/obs-5/_history/2".into()];
    record.request_id = Some("7f3c0d2e-1b2a-4c5d-8e9f-0a1b2c3d4e5f".into());
    let template = canonical_bytes(&record);

    eprintln!(
        "building {n} entries of {entry_bytes} bytes (a real event is {} bytes)...",
        template.len()
    );
    let signer = match NoteSigner::from_seed("carevault-audit/bench", &[5u8; 32]) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let mut data = Vec::with_capacity(n as usize * entry_bytes);
    let mut offsets = Vec::with_capacity(n as usize + 1);
    let mut chains: Vec<Hash> = Vec::with_capacity(n as usize);
    let mut nodes = MemNodes::new();
    let mut notes = String::new();
    let mut chain = GENESIS;
    let filler: Vec<u8> = template.iter().copied().cycle().take(entry_bytes).collect();
    let mut entry = vec![0u8; entry_bytes];
    for seq in 1..=n {
        offsets.push(data.len());
        entry.copy_from_slice(&filler);
        let digits = format!("{seq:012}");
        let k = digits.len().min(entry_bytes);
        entry[..k].copy_from_slice(&digits.as_bytes()[..k]);
        data.extend_from_slice(&entry);
        let leaf = leaf_hash(&entry);
        chain = chain_hash(&chain, &leaf);
        chains.push(chain);
        nodes.push(leaf);
        if seq % 100_000 == 0 || seq == n {
            notes.push_str(&signer.sign(&Checkpoint {
                origin: "carevault.example/bench".into(),
                size: seq,
                root: nodes.root(),
                time_ms: 1_795_857_243_117,
            }));
        }
    }
    offsets.push(data.len());
    let entry = |i: usize| &data[offsets[i]..offsets[i + 1]];
    let avg = data.len() as f64 / n as f64;

    // One thread: `push` with the canonical bytes.
    let start = Instant::now();
    let mut v = match Verifier::new(&signer.verifier_key(), vec![notes.clone()], vec![]) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    };
    for (i, chain) in chains.iter().enumerate() {
        if let Err(e) = v.push(i as u64 + 1, entry(i), *chain) {
            panic!("{e}");
        }
    }
    let summary = v.finish(Some(&nodes));
    let single = start.elapsed();
    let summary = match summary {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };

    // All cores: `push_batch`, leaf hashes in parallel, chain and tree in order.
    let start = Instant::now();
    let mut v = match Verifier::new(&signer.verifier_key(), vec![notes], vec![]) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    };
    let batch_size = 8192usize;
    let mut batch: Vec<(u64, &[u8], Hash)> = Vec::with_capacity(batch_size);
    for (i, chain) in chains.iter().enumerate() {
        batch.push((i as u64 + 1, entry(i), *chain));
        if batch.len() == batch_size || i + 1 == chains.len() {
            if let Err(e) = v.push_batch(&batch, threads) {
                panic!("{e}");
            }
            batch.clear();
        }
    }
    let parallel_summary = v.finish(Some(&nodes));
    let parallel = start.elapsed();
    assert_eq!(parallel_summary.as_ref().ok(), Some(&summary));

    let rate = |d: std::time::Duration| n as f64 / d.as_secs_f64();
    println!(
        "{{\"entries\": {n}, \"avg_entry_bytes\": {avg:.0}, \"checkpoints\": {}, \"nodes_checked\": {}, \
         \"single_thread_entries_per_s\": {:.0}, \"push_batch_threads\": {threads}, \
         \"push_batch_entries_per_s\": {:.0}, \"floor_entries_per_s\": 500000}}",
        summary.checkpoints,
        summary.nodes_checked,
        rate(single),
        rate(parallel)
    );
}
