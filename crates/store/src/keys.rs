//! Key maintenance over a store: re-encrypting everything sealed under older data keys
//! (data-key rotation, online and resumable), counting what each key protects, and
//! crypto-shredding a patient by destroying their key.
//!
//! A rotation reads small batches from a read snapshot, opens and re-seals them outside the
//! writer, then sends one writer job per batch that replaces each value only when the row still
//! holds the bytes that were read (a concurrent update always wins) and advances the durable
//! cursor in the same commit. Clinical writes interleave with the batches through group commit.

use std::sync::Arc;
use std::time::Duration;

use carevault_crypto::{Keyring, PATIENT_KEY_FLAG};

use crate::backend::{
    ErasedRows, KeyUsage, RotationCursor, SEALED_TABLES, SealedTable, Store, write_with,
};
use crate::error::RestError;
use crate::instant;

/// Knobs of a re-encryption run.
#[derive(Debug, Clone)]
pub struct ReencryptOptions {
    /// Rows per batch (one writer job each).
    pub batch_size: usize,
    /// Pause after each batch (a throttle; tests use it to stop a run midway).
    pub batch_delay: Duration,
    /// How long to wait for running servers to start sealing under the new key before the
    /// final sweep for values they sealed under the old one meanwhile.
    pub settle: Duration,
    /// How many final sweeps to try before giving up on values still being sealed under an old
    /// key (a server that cannot reload its keys).
    pub max_sweeps: usize,
}

impl Default for ReencryptOptions {
    fn default() -> Self {
        Self {
            batch_size: 200,
            batch_delay: Duration::ZERO,
            settle: Duration::from_millis(2500),
            max_sweeps: 5,
        }
    }
}

/// Progress of a re-encryption, reported after every batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReencryptProgress {
    /// Values re-encrypted so far (this run and the runs it resumes).
    pub done: u64,
    /// Values under older keys when the rotation started (grows if writes under an old key
    /// arrive meanwhile).
    pub total: u64,
}

/// What a re-encryption run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReencryptSummary {
    /// The data key everything is now sealed under.
    pub target_key: u32,
    /// Values re-encrypted by this run.
    pub reencrypted: u64,
    /// Values skipped because they changed while being re-encrypted (then taken again).
    pub raced: u64,
    /// Values that failed their integrity check and were left as they were.
    pub failed: u64,
    /// Whether this run resumed an interrupted rotation.
    pub resumed: bool,
}

/// The target key of the rotation recorded in the store, if one is in progress.
pub fn rotation_in_progress(store: &dyn Store) -> Result<Option<Vec<RotationCursor>>, RestError> {
    let state = store.reader()?.rotation_state()?;
    Ok((!state.is_empty()).then_some(state))
}

/// Records the start of a rotation to `target_key` (before the key exists in the key file, so a
/// crash in between resumes with the same id). Totals are counted by [`reencrypt`].
pub fn begin_rotation(store: &dyn Store, target_key: u32) -> Result<(), RestError> {
    let started_ms = instant::now_ms();
    write_with(store, move |tx| {
        if !tx.rotation_state()?.is_empty() {
            return Err(RestError::Conflict(
                "a data-key rotation is already recorded in the store".into(),
            ));
        }
        for t in SEALED_TABLES {
            tx.put_rotation_cursor(&RotationCursor {
                table: t.name.into(),
                target_key,
                cursor: 0,
                started_ms,
                total: 0,
                done: 0,
            })?;
        }
        Ok(())
    })
}

/// Values sealed directly under each data key other than `keep`, all tables together.
fn count_under_other_keys(usage: &[KeyUsage], table: &str, keep: u32) -> u64 {
    usage
        .iter()
        .filter(|u| u.table == table && u.key_id != keep && u.key_id & PATIENT_KEY_FLAG == 0)
        .map(|u| u.rows)
        .sum()
}

/// Re-encrypts every value sealed under a data key other than the keyring's current one, from
/// the durable cursors on; then sweeps again until nothing is left under an old key, and clears
/// the cursors. The keyring must already seal under the rotation's target key.
pub fn reencrypt(
    store: &Arc<dyn Store>,
    opts: &ReencryptOptions,
    progress: &mut dyn FnMut(ReencryptProgress),
) -> Result<ReencryptSummary, RestError> {
    let keyring: Arc<Keyring> = store.keyring().clone();
    let target = keyring.current_key_id();
    let mut state = store.reader()?.rotation_state()?;
    if state.is_empty() {
        return Err(RestError::Conflict(
            "no data-key rotation is in progress".into(),
        ));
    }
    if state.iter().any(|c| c.target_key != target) {
        return Err(RestError::Conflict(format!(
            "the rotation in progress re-encrypts to data key {}, but the key file's current data key is {target}",
            state[0].target_key
        )));
    }
    let resumed = state.iter().any(|c| c.cursor > 0 || c.done > 0);
    // Totals: what is under other keys now, plus what earlier runs already did.
    let usage = store.reader()?.key_usage()?;
    for c in state.iter_mut() {
        c.total = c.done + count_under_other_keys(&usage, &c.table, target);
    }
    let mut summary = ReencryptSummary {
        target_key: target,
        reencrypted: 0,
        raced: 0,
        failed: 0,
        resumed,
    };
    let report = |state: &[RotationCursor], progress: &mut dyn FnMut(ReencryptProgress)| {
        progress(ReencryptProgress {
            done: state.iter().map(|c| c.done).sum(),
            total: state.iter().map(|c| c.total).sum(),
        })
    };
    report(&state, progress);
    for i in 0..state.len() {
        let Some(table) = SEALED_TABLES.iter().find(|t| t.name == state[i].table) else {
            continue;
        };
        loop {
            let n = run_batch(store, &keyring, table, &mut state[i], opts, &mut summary)?;
            report(&state, progress);
            if n == 0 {
                break;
            }
            if !opts.batch_delay.is_zero() {
                std::thread::sleep(opts.batch_delay);
            }
        }
    }
    // Servers pick up the new key within about a second; until then they may still seal under
    // the old one, anywhere. Sweep from the start until a sweep finds nothing.
    for sweep in 0..=opts.max_sweeps {
        // Reads' entries still in the read journal are sealed under the key current when they
        // were made; folding them re-seals them into the log under the current one.
        store.settle_audit()?;
        let usage = store.reader()?.key_usage()?;
        let left: u64 = SEALED_TABLES
            .iter()
            .map(|t| count_under_other_keys(&usage, t.name, target))
            .sum();
        if left <= summary.failed {
            break;
        }
        if sweep == opts.max_sweeps {
            return Err(RestError::Conflict(format!(
                "{left} values are still being sealed under an older data key; a running server has not picked up data key {target} (restart it) and run `carevault keys rotate --data` again"
            )));
        }
        std::thread::sleep(opts.settle);
        for c in state.iter_mut() {
            c.cursor = 0;
            c.total = c.done + count_under_other_keys(&usage, &c.table, target);
        }
        for i in 0..state.len() {
            let Some(table) = SEALED_TABLES.iter().find(|t| t.name == state[i].table) else {
                continue;
            };
            while run_batch(store, &keyring, table, &mut state[i], opts, &mut summary)? > 0 {
                report(&state, progress);
            }
        }
    }
    if summary.failed == 0 {
        write_with(&**store, |tx| Ok(tx.clear_rotation()?))?;
    }
    Ok(summary)
}

/// One batch of one table: read, re-seal, write back (compare-and-swap), advance the cursor.
/// Returns how many rows the batch looked at (0: the table is done from this cursor).
fn run_batch(
    store: &Arc<dyn Store>,
    keyring: &Keyring,
    table: &'static SealedTable,
    cursor: &mut RotationCursor,
    opts: &ReencryptOptions,
    summary: &mut ReencryptSummary,
) -> Result<usize, RestError> {
    let target = cursor.target_key;
    let rows =
        store
            .reader()?
            .sealed_batch(table, cursor.cursor, opts.batch_size.max(1), target)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut updates = Vec::with_capacity(rows.len());
    let last = rows.last().map(|r| r.key).unwrap_or(cursor.cursor);
    for row in rows.iter() {
        match keyring.open(row.identity.as_bytes(), &row.sealed) {
            Ok(plain) => {
                let plain = zeroize::Zeroizing::new(plain);
                let new = keyring.seal(row.identity.as_bytes(), &plain)?;
                updates.push((row.key, row.sealed.clone(), new));
            }
            Err(_) => {
                // No content in the log: the table and row only.
                tracing::error!(
                    table = table.name,
                    row = row.key,
                    "a sealed value failed its integrity check during re-encryption; left as it is"
                );
                summary.failed += 1;
            }
        }
    }
    let mut next = cursor.clone();
    next.cursor = last;
    let n = rows.len();
    let (replaced, raced) = write_with(&**store, move |tx| {
        let mut replaced = 0u64;
        let mut raced = 0u64;
        for (key, old, new) in &updates {
            if tx.reseal(table, *key, old, new)? {
                replaced += 1;
            } else {
                raced += 1;
            }
        }
        next.done += replaced;
        tx.put_rotation_cursor(&next)?;
        Ok((replaced, raced))
    })?;
    cursor.cursor = last;
    cursor.done += replaced;
    summary.reencrypted += replaced;
    summary.raced += raced;
    Ok(n)
}

/// Counts, per table and key id, what is sealed under each key, including the read journal's
/// entries not yet folded into the log (table `audit_journal`).
pub fn key_usage(store: &dyn Store) -> Result<Vec<KeyUsage>, RestError> {
    let mut usage = store.reader()?.key_usage()?;
    usage.extend(store.journal_key_usage()?);
    Ok(usage)
}

/// Whether anything in `usage` ([`key_usage`]) is sealed under data key `key_id`: the one rule
/// for whether a key is still in use, which `keys list` shows and rotation removes keys by.
pub fn in_use(usage: &[KeyUsage], key_id: u32) -> bool {
    usage.iter().any(|u| u.key_id == key_id && u.rows > 0)
}

/// The outcome of `carevault patient erase`, for the operator and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    /// The patient erased (`Patient/<id>`).
    pub patient: String,
    /// Why, as the operator gave it (for the audit trail only; never stored elsewhere).
    pub reason: String,
    /// The destroyed key's id as sealed headers carry it.
    pub key_id: u32,
    /// Resources erased.
    pub resources: u64,
    /// Versions whose bodies were removed.
    pub versions: u64,
    /// When, ms since the epoch.
    pub erased_ms: i64,
    /// Whether the write-ahead log was emptied afterwards (no older page image survives in it).
    pub log_truncated: bool,
}

/// Crypto-shreds a patient: destroys their key (so every copy of their compartment's
/// ciphertext, in this store or any copy of it that lacks the key, is unreadable), erases the
/// resources sealed under it, then empties the write-ahead log.
pub fn erase_patient(
    store: &dyn Store,
    patient_id: &str,
    reason: &str,
) -> Result<Erasure, RestError> {
    let erased_ms = instant::now_ms();
    let id = patient_id.to_owned();
    let rows: Option<ErasedRows> =
        write_with(store, move |tx| Ok(tx.erase_patient_key(&id, erased_ms)?))?;
    let Some(rows) = rows else {
        return Err(RestError::NotFound {
            rtype: "Patient".into(),
            id: patient_id.into(),
        });
    };
    let log_truncated = store.checkpoint_truncate()?;
    let erasure = Erasure {
        patient: format!("Patient/{patient_id}"),
        reason: reason.to_owned(),
        key_id: rows.key_row | PATIENT_KEY_FLAG,
        resources: rows.resources,
        versions: rows.versions,
        erased_ms,
        log_truncated,
    };
    // The caller records the erasure (fact and reason) in the audit trail.
    Ok(erasure)
}
