//! What a write job did, for the audit trail: a transaction wrapper that records every version
//! written (with the patients whose compartment it is in), and the hook that turns those facts
//! into audit entries appended in the same transaction — so no write commits without its record.

use std::sync::Arc;

use crate::audit_log::AuditAppend;
use crate::backend::{
    AuditQuery, AuditRow, AuditStored, ErasedRows, HistoryScope, IndexRow, KeyUsage, NativeSort,
    NewVersion, ParamId, ParamRef, PatientKeyRow, ReadTx, ResKey, RotationCursor, SealedRow,
    SealedTable, Tx, VersionRecord,
};
use crate::error::{RestError, StoreError};
use crate::fhirdefs;
use crate::plan::Plan;

/// One version a write job wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFact {
    /// `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: &'static str,
    /// Resource type.
    pub rtype: String,
    /// Logical id.
    pub id: String,
    /// The version written.
    pub version: u64,
    /// Ids of the Patients in whose compartment the resource is (before a deletion, for one).
    pub patients: Vec<String>,
}

/// Turns the facts of a successful write job into the audit entries appended with it.
pub type AuditHook = Arc<dyn Fn(&[WriteFact]) -> Vec<AuditAppend> + Send + Sync>;

/// A transaction that records what is written through it.
pub struct RecordingTx<'a> {
    inner: &'a mut dyn Tx,
    facts: Vec<WriteFact>,
}

impl<'a> RecordingTx<'a> {
    /// Wraps `inner`.
    pub fn new(inner: &'a mut dyn Tx) -> Self {
        RecordingTx {
            inner,
            facts: Vec::new(),
        }
    }

    /// What was written, in order.
    pub fn into_facts(self) -> Vec<WriteFact> {
        self.facts
    }
}

/// Patients in whose compartment `v` is: from its reference index rows, or, for a deletion,
/// from the rows of the version it deletes (still in place until `put_version`).
fn patients_of(tx: &mut dyn Tx, v: &NewVersion) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    if v.rtype == "Patient" {
        out.push(v.id.clone());
    }
    let params = fhirdefs::definitions().compartment_params(&v.rtype);
    if params.is_empty() {
        return Ok(out);
    }
    let mut add = |t: &str, id: &str| {
        if t == "Patient" && !out.iter().any(|o| o == id) {
            out.push(id.to_owned());
        }
    };
    if v.deleted {
        let Some(cur) = tx.current(&v.rtype, &v.id)? else {
            return Ok(out);
        };
        for code in params {
            for (t, id) in tx.refs_from(&[cur.key], &ParamRef::new(&v.rtype, code))? {
                add(&t, &id);
            }
        }
    } else {
        let ids: Vec<ParamId> = params.iter().map(|c| ParamId::of(&v.rtype, c)).collect();
        for row in &v.index {
            if let IndexRow::Ref {
                param, ttype, tid, ..
            } = row
                && ids.contains(param)
            {
                add(ttype, tid);
            }
        }
    }
    Ok(out)
}

impl ReadTx for RecordingTx<'_> {
    fn current(&mut self, rtype: &str, id: &str) -> Result<Option<VersionRecord>, StoreError> {
        self.inner.current(rtype, id)
    }
    fn version(
        &mut self,
        rtype: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<VersionRecord>, StoreError> {
        self.inner.version(rtype, id, version)
    }
    fn load(&mut self, keys: &[ResKey]) -> Result<Vec<VersionRecord>, StoreError> {
        self.inner.load(keys)
    }
    fn search(
        &mut self,
        plan: &Plan,
        sort: NativeSort,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<ResKey>, StoreError> {
        self.inner.search(plan, sort, offset, limit)
    }
    fn count(&mut self, plan: &Plan) -> Result<usize, StoreError> {
        self.inner.count(plan)
    }
    fn refs_from(
        &mut self,
        keys: &[ResKey],
        param: &ParamRef,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.inner.refs_from(keys, param)
    }
    fn refs_to(
        &mut self,
        param: &ParamRef,
        targets: &[(String, String)],
    ) -> Result<Vec<ResKey>, StoreError> {
        self.inner.refs_to(param, targets)
    }
    fn history(
        &mut self,
        scope: HistoryScope<'_>,
        since_ms: Option<i64>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<VersionRecord>, StoreError> {
        self.inner.history(scope, since_ms, offset, limit)
    }
    fn history_count(
        &mut self,
        scope: HistoryScope<'_>,
        since_ms: Option<i64>,
    ) -> Result<usize, StoreError> {
        self.inner.history_count(scope, since_ms)
    }
    fn get_system_record(&mut self, kind: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get_system_record(kind, key)
    }
    fn list_system_records(&mut self, kind: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.list_system_records(kind)
    }
    fn patient_key(&mut self, patient: &str) -> Result<Option<(u32, Vec<u8>)>, StoreError> {
        self.inner.patient_key(patient)
    }
    fn patient_key_row(&mut self, row: u32) -> Result<PatientKeyRow, StoreError> {
        self.inner.patient_key_row(row)
    }
    fn sealed_batch(
        &mut self,
        table: &SealedTable,
        after: i64,
        limit: usize,
        keep: u32,
    ) -> Result<Vec<SealedRow>, StoreError> {
        self.inner.sealed_batch(table, after, limit, keep)
    }
    fn key_usage(&mut self) -> Result<Vec<KeyUsage>, StoreError> {
        self.inner.key_usage()
    }
    fn rotation_state(&mut self) -> Result<Vec<RotationCursor>, StoreError> {
        self.inner.rotation_state()
    }
    fn audit_head(&mut self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        self.inner.audit_head()
    }
    fn audit_last_recorded(&mut self) -> Result<Option<i64>, StoreError> {
        self.inner.audit_last_recorded()
    }
    fn audit_fold_mark(&mut self, journal: &[u8]) -> Result<u64, StoreError> {
        self.inner.audit_fold_mark(journal)
    }
    fn audit_node(&mut self, level: u32, index: u64) -> Result<Option<[u8; 32]>, StoreError> {
        self.inner.audit_node(level, index)
    }
    fn audit_entries(&mut self, after: u64, limit: usize) -> Result<Vec<AuditStored>, StoreError> {
        self.inner.audit_entries(after, limit)
    }
    fn audit_search(&mut self, query: &AuditQuery) -> Result<Vec<u64>, StoreError> {
        self.inner.audit_search(query)
    }
    fn audit_load(&mut self, seqs: &[u64]) -> Result<Vec<AuditStored>, StoreError> {
        self.inner.audit_load(seqs)
    }
}

impl Tx for RecordingTx<'_> {
    fn put_version(&mut self, v: &NewVersion) -> Result<(), StoreError> {
        let patients = patients_of(self.inner, v)?;
        self.inner.put_version(v)?;
        self.facts.push(WriteFact {
            method: v.method,
            rtype: v.rtype.clone(),
            id: v.id.clone(),
            version: v.version,
            patients,
        });
        Ok(())
    }
    fn append_audit(&mut self, row: &AuditRow) -> Result<(), StoreError> {
        self.inner.append_audit(row)
    }
    fn append_audit_rows(&mut self, rows: &[AuditRow]) -> Result<(), StoreError> {
        self.inner.append_audit_rows(rows)
    }
    fn set_audit_fold_mark(&mut self, journal: &[u8], upto: u64) -> Result<(), StoreError> {
        self.inner.set_audit_fold_mark(journal, upto)
    }
    fn put_system_record(
        &mut self,
        kind: &str,
        key: &str,
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        self.inner.put_system_record(kind, key, sealed)
    }
    fn delete_system_record(&mut self, kind: &str, key: &str) -> Result<bool, StoreError> {
        self.inner.delete_system_record(kind, key)
    }
    fn insert_patient_key(
        &mut self,
        patient: &str,
        wrapped: &[u8],
        created_ms: i64,
    ) -> Result<u32, StoreError> {
        self.inner.insert_patient_key(patient, wrapped, created_ms)
    }
    fn reseal(
        &mut self,
        table: &SealedTable,
        key: i64,
        old: &[u8],
        new: &[u8],
    ) -> Result<bool, StoreError> {
        self.inner.reseal(table, key, old, new)
    }
    fn put_rotation_cursor(&mut self, cursor: &RotationCursor) -> Result<(), StoreError> {
        self.inner.put_rotation_cursor(cursor)
    }
    fn clear_rotation(&mut self) -> Result<(), StoreError> {
        self.inner.clear_rotation()
    }
    fn erase_patient_key(
        &mut self,
        patient: &str,
        erased_ms: i64,
    ) -> Result<Option<ErasedRows>, StoreError> {
        self.inner.erase_patient_key(patient, erased_ms)
    }
    fn nested(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), RestError>,
    ) -> Result<(), RestError> {
        // Facts of a nested part count only when it commits.
        let mut inner_facts = Vec::new();
        let result = self.inner.nested(&mut |t: &mut dyn Tx| {
            let mut rec = RecordingTx::new(t);
            let r = f(&mut rec);
            inner_facts = rec.into_facts();
            r
        });
        if result.is_ok() {
            self.facts.append(&mut inner_facts);
        }
        result
    }
}
