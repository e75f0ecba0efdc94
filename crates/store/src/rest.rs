//! FHIR REST interaction semantics (read, vread, create, update, patch, delete, their conditional
//! forms, search, history and bundles), written against the storage interface only.

use std::sync::Arc;

use carevault_crypto::{CryptoError, Keyring, PATIENT_KEY_FLAG, PatientKey, sealed_key_id};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::backend::{NewVersion, PatientKeyRow, ReadTx, Store, Tx, VersionRecord, write_with};
use crate::error::RestError;
use crate::search::visibility::{Op, Visibility};
use crate::write_audit::{AuditHook, RecordingTx};
use crate::{fhirdefs, indexing, instant, search};

/// One stored version as the server returns it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Resource type.
    pub rtype: String,
    /// Logical id.
    pub id: String,
    /// Version number (`meta.versionId`).
    pub version: u64,
    /// `meta.lastUpdated` in ms since the epoch.
    pub last_updated_ms: i64,
    /// The resource JSON including `meta`, exactly as stored.
    pub json: Vec<u8>,
    /// The ids (without `Patient/`) of the patients in whose compartment this version is, when
    /// the store knows them: as recorded with the version when it was written (see
    /// [`VersionRecord::patients`]), or else as worked out from the JSON by a read or vread
    /// whose visibility depends on the patient; the caller's audit entry reuses them. `None`
    /// when neither (a version written before the store recorded them, read by a caller who
    /// sees the whole type): the caller works them out from `json` if it needs them.
    pub patients: Option<Vec<String>>,
}

/// The outcome of a create or update.
#[derive(Debug, Clone)]
pub struct Written {
    /// True when a new resource came into being (HTTP 201), false for an update or when a
    /// conditional create found an existing match (HTTP 200).
    pub created: bool,
    /// The version now current.
    pub stored: Stored,
}

/// The FHIR interactions over a store, as seen by one caller: every read, search, history and
/// Bundle entry goes through the [`Visibility`] it carries, and every write is checked against it.
#[derive(Clone)]
pub struct Rest {
    store: Arc<dyn Store>,
    audit: Option<AuditHook>,
    vis: Visibility,
}

/// Refuses a write `op` of `resource` unless `vis` allows it.
fn check_write(vis: &Visibility, op: Op, rtype: &str, resource: &Value) -> Result<(), RestError> {
    if vis.allows(op, rtype, resource) {
        return Ok(());
    }
    let verb = match op {
        Op::Read => "read",
        Op::Create => "create",
        Op::Update => "update",
        Op::Delete => "delete",
    };
    Err(RestError::Forbidden(format!(
        "The caller may not {verb} this {rtype}: its role, care relationships and the token's scopes do not allow it for the patient it concerns."
    )))
}

/// Opens a current (not deleted) version and tells whether `vis` lets the caller `op` it.
fn stored_allows(
    tx: &mut dyn ReadTx,
    keyring: &Keyring,
    vis: &Visibility,
    op: Op,
    rec: &VersionRecord,
) -> Result<bool, RestError> {
    if vis.is_everything() {
        return Ok(true);
    }
    let s = open_record(tx, keyring, rec)?;
    Ok(vis.allows_json(op, &rec.rtype, &s.json))
}

/// Record identity a version body is sealed to.
pub fn record_identity(rtype: &str, id: &str, version: u64) -> Vec<u8> {
    format!("{rtype}/{id}/_history/{version}").into_bytes()
}

/// Record identity a per-patient key is sealed to (under a data key).
pub fn patient_key_identity(patient: &str) -> Vec<u8> {
    format!("patient-key/{patient}").into_bytes()
}

/// Opens a sealed value through a read transaction: under a data key of the keyring, or under
/// the per-patient key the header names (looked up in the same snapshot).
pub fn open_sealed(
    tx: &mut dyn ReadTx,
    keyring: &Keyring,
    identity: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    match sealed_key_id(sealed) {
        Some(id) if id & PATIENT_KEY_FLAG != 0 => {
            let key = match tx.patient_key_row(id & !PATIENT_KEY_FLAG) {
                Ok(PatientKeyRow::Live { patient, wrapped }) => {
                    let material =
                        Zeroizing::new(keyring.open(&patient_key_identity(&patient), &wrapped)?);
                    PatientKey::new(id & !PATIENT_KEY_FLAG, &material)?
                }
                Ok(PatientKeyRow::Destroyed) => {
                    return Err(CryptoError::KeyDestroyed {
                        record: String::from_utf8_lossy(identity).into_owned(),
                        key_id: id,
                    });
                }
                Ok(PatientKeyRow::Unknown) | Err(_) => {
                    return Err(CryptoError::Integrity {
                        record: String::from_utf8_lossy(identity).into_owned(),
                        reason: "unknown patient key",
                    });
                }
            };
            key.open(identity, sealed)
        }
        _ => keyring.open(identity, sealed),
    }
}

/// Decrypts a stored version, carrying the patients recorded with it. A version whose patient
/// key was destroyed answers 410 Gone; one that fails its integrity check answers 500 and is
/// logged without content.
pub fn open_record(
    tx: &mut dyn ReadTx,
    keyring: &Keyring,
    rec: &VersionRecord,
) -> Result<Stored, RestError> {
    let identity = record_identity(&rec.rtype, &rec.id, rec.version);
    let json = match open_sealed(tx, keyring, &identity, &rec.sealed) {
        Ok(json) => json,
        Err(CryptoError::KeyDestroyed { .. }) => {
            return Err(RestError::Gone {
                rtype: rec.rtype.clone(),
                id: rec.id.clone(),
                version: rec.version,
                last_updated_ms: rec.last_updated_ms,
            });
        }
        Err(e) => {
            // No content, no PHI: the resource type, its server id and version (the store row).
            tracing::error!(rtype = %rec.rtype, id = %rec.id, version = rec.version, store_key = rec.key.0, "stored record failed its integrity check");
            // The request's AuditEvent becomes an IntegrityError (server::fhir marks its note).
            return Err(RestError::Integrity(e.to_string()));
        }
    };
    Ok(Stored {
        rtype: rec.rtype.clone(),
        id: rec.id.clone(),
        version: rec.version,
        last_updated_ms: rec.last_updated_ms,
        json,
        patients: rec.patients.clone(),
    })
}

/// The patient's key, created (and stored, sealed under the current data key) when it does not
/// exist yet — in the caller's write transaction, so it commits with the first record it seals.
pub fn patient_key_in_tx(
    tx: &mut dyn Tx,
    keyring: &Keyring,
    patient: &str,
) -> Result<PatientKey, RestError> {
    if let Some((row, wrapped)) = tx.patient_key(patient)? {
        let material = Zeroizing::new(keyring.open(&patient_key_identity(patient), &wrapped)?);
        return Ok(PatientKey::new(row, &material)?);
    }
    let material = Keyring::generate_key_material()?;
    let wrapped = keyring.seal(&patient_key_identity(patient), &material[..])?;
    let row = tx.insert_patient_key(patient, &wrapped, instant::now_ms())?;
    Ok(PatientKey::new(row, &material[..])?)
}

/// Writes a prepared version, first sealing it under its patient's key when it waits for one.
pub fn put_new_version(
    tx: &mut dyn Tx,
    keyring: &Keyring,
    nv: &mut NewVersion,
) -> Result<(), RestError> {
    if let (Some(plain), Some(owner)) = (nv.pending.take(), nv.owner.clone()) {
        let key = patient_key_in_tx(tx, keyring, &owner)?;
        nv.sealed = key.seal(&record_identity(&nv.rtype, &nv.id, nv.version), &plain)?;
    }
    Ok(tx.put_version(nv)?)
}

/// The one patient whose compartment holds `resource` (its own id for a Patient), if exactly
/// one: that patient's key seals it. Resources in no or several compartments use the data key.
pub fn key_owner(rtype: &str, resource: &Value) -> Option<String> {
    owner_of(&carevault_fhir::patient_compartment_refs(rtype, resource))
}

/// [`key_owner`] from the compartment's patients, already worked out.
fn owner_of(patients: &[String]) -> Option<String> {
    match patients {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// A new server-assigned id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Checks `resourceType` against the URL's type and runs validation.
pub fn check_resource(rtype: &str, resource: &Value) -> Result<(), RestError> {
    if !fhirdefs::definitions().is_resource_type(rtype) {
        return Err(RestError::bad(format!(
            "{rtype} is not a FHIR R4 resource type"
        )));
    }
    let actual = resource.get("resourceType").and_then(Value::as_str);
    if actual != Some(rtype) {
        return Err(RestError::BadRequest {
            diagnostics: format!("the body's resourceType must be {rtype}"),
            expression: Some("resourceType".into()),
        });
    }
    let issues: Vec<_> = fhirdefs::validate(resource)
        .into_iter()
        .filter(|i| {
            matches!(
                i.severity,
                carevault_fhir::IssueSeverity::Error | carevault_fhir::IssueSeverity::Fatal
            )
        })
        .collect();
    if issues.is_empty() {
        Ok(())
    } else {
        Err(RestError::Invalid(issues))
    }
}

/// Sets `id`, `meta.versionId` and `meta.lastUpdated`, keeping `resourceType`, `id`, `meta` first.
pub fn stamp(resource: Value, id: &str, version: u64, last_updated_ms: i64) -> Value {
    let Value::Object(mut obj) = resource else {
        return resource;
    };
    let mut meta = match obj.remove("meta") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    meta.remove("versionId");
    meta.remove("lastUpdated");
    let mut new_meta = Map::new();
    new_meta.insert("versionId".into(), Value::String(version.to_string()));
    new_meta.insert(
        "lastUpdated".into(),
        Value::String(instant::format_ms(last_updated_ms)),
    );
    new_meta.extend(meta);
    let mut out = Map::new();
    if let Some(rt) = obj.remove("resourceType") {
        out.insert("resourceType".into(), rt);
    }
    obj.remove("id");
    out.insert("id".into(), Value::String(id.to_owned()));
    out.insert("meta".into(), Value::Object(new_meta));
    out.extend(obj);
    Value::Object(out)
}

/// Everything derived from a resource version before it is written: stamped JSON, index rows,
/// sealed body. Pure, so callers may do it outside the writer.
pub fn prepare(
    keyring: &Keyring,
    rtype: &str,
    id: &str,
    version: u64,
    now_ms: i64,
    resource: Value,
    method: &'static str,
) -> Result<(NewVersion, Stored), RestError> {
    let resource = stamp(resource, id, version, now_ms);
    let json = serde_json::to_vec(&resource)
        .map_err(|e| RestError::Store(format!("serialising failed: {e}")))?;
    let index = indexing::index_rows(keyring, rtype, &resource);
    // Worked out once: it picks the sealing key and is stored with the version for readers.
    let patients = carevault_fhir::patient_compartment_refs(rtype, &resource);
    let owner = owner_of(&patients);
    // A patient's key may have to be created, which only the write transaction can do.
    let (sealed, pending) = match owner {
        Some(_) => (Vec::new(), Some(json.clone())),
        None => (
            keyring.seal(&record_identity(rtype, id, version), &json)?,
            None,
        ),
    };
    let nv = NewVersion {
        rtype: rtype.to_owned(),
        id: id.to_owned(),
        version,
        last_updated_ms: now_ms,
        deleted: false,
        method,
        sealed,
        index,
        owner,
        pending,
        care: crate::care::derive(rtype, &resource, now_ms),
        patients: patients.clone(),
    };
    Ok((
        nv,
        Stored {
            rtype: rtype.to_owned(),
            id: id.to_owned(),
            version,
            last_updated_ms: now_ms,
            json,
            patients: Some(patients),
        },
    ))
}

fn check_if_match(
    cur: Option<&VersionRecord>,
    if_match: Option<u64>,
    rtype: &str,
    id: &str,
) -> Result<(), RestError> {
    if let Some(want) = if_match {
        let have = cur.filter(|c| !c.deleted).map(|c| c.version);
        if have != Some(want) {
            return Err(RestError::PreconditionFailed(format!(
                "{rtype}/{id} is not at version {want} (If-Match); read it again and retry"
            )));
        }
    }
    Ok(())
}

/// Creates or updates `rtype/id` to `resource` inside a write transaction (update-as-create
/// included). `resource` must already be validated.
///
/// The caller must be allowed to write the new content, and, when the resource exists, to read
/// and update the old one.
#[allow(clippy::too_many_arguments)]
pub fn put_in_tx(
    tx: &mut dyn Tx,
    keyring: &Keyring,
    vis: &Visibility,
    rtype: &str,
    id: &str,
    resource: Value,
    if_match: Option<u64>,
    method: &'static str,
) -> Result<Written, RestError> {
    let cur = tx.current(rtype, id)?;
    let live = cur.as_ref().filter(|c| !c.deleted);
    check_write(
        vis,
        if live.is_some() {
            Op::Update
        } else {
            Op::Create
        },
        rtype,
        &resource,
    )?;
    if let Some(c) = live
        && !(stored_allows(tx, keyring, vis, Op::Read, c)?
            && stored_allows(tx, keyring, vis, Op::Update, c)?)
    {
        return Err(RestError::Forbidden(format!(
            "The caller may not update {rtype}/{id}."
        )));
    }
    check_if_match(cur.as_ref(), if_match, rtype, id)?;
    check_references(
        tx,
        &resource,
        &std::iter::once(format!("{rtype}/{id}")).collect(),
    )?;
    let version = cur.as_ref().map_or(1, |c| c.version + 1);
    let created = cur.as_ref().is_none_or(|c| c.deleted);
    let (mut nv, stored) = prepare(
        keyring,
        rtype,
        id,
        version,
        instant::now_ms(),
        resource,
        method,
    )?;
    put_new_version(tx, keyring, &mut nv)?;
    Ok(Written { created, stored })
}

/// Deletes `rtype/id` inside a write transaction; the new (deletion) version, if there was
/// anything to delete. A resource the caller may not read is left alone and answers like one
/// that does not exist; one it may read but not delete is refused.
pub fn delete_in_tx(
    tx: &mut dyn Tx,
    keyring: &Keyring,
    vis: &Visibility,
    rtype: &str,
    id: &str,
) -> Result<Option<u64>, RestError> {
    let Some(cur) = tx.current(rtype, id)? else {
        return Ok(None);
    };
    if cur.deleted || !stored_allows(tx, keyring, vis, Op::Read, &cur)? {
        return Ok(None);
    }
    if !stored_allows(tx, keyring, vis, Op::Delete, &cur)? {
        return Err(RestError::Forbidden(format!(
            "The caller may not delete {rtype}/{id}."
        )));
    }
    let nv = NewVersion {
        rtype: rtype.to_owned(),
        id: id.to_owned(),
        version: cur.version + 1,
        last_updated_ms: instant::now_ms(),
        deleted: true,
        method: "DELETE",
        sealed: Vec::new(),
        index: Vec::new(),
        owner: None,
        pending: None,
        care: None,
        patients: Vec::new(),
    };
    tx.put_version(&nv)?;
    Ok(Some(nv.version))
}

/// Every relative literal reference (`Type/id`, optionally with `/_history/n`) in `resource`,
/// anywhere in it (extensions and contained resources included).
pub fn literal_refs(resource: &Value, out: &mut Vec<(String, String)>) {
    match resource {
        Value::Object(o) => {
            for (k, v) in o {
                if let ("reference", Value::String(r)) = (k.as_str(), v) {
                    let segs: Vec<&str> = r.split('/').collect();
                    if let [t, id] | [t, id, "_history", _] = segs.as_slice()
                        && fhirdefs::definitions().is_resource_type(t)
                    {
                        out.push(((*t).to_owned(), (*id).to_owned()));
                    }
                } else {
                    literal_refs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| literal_refs(v, out)),
        _ => {}
    }
}

/// Referential integrity: every relative literal reference must name a current resource (or
/// one this transaction is creating, listed in `creating` as `Type/id`).
pub fn check_references(
    tx: &mut dyn ReadTx,
    resource: &Value,
    creating: &std::collections::HashSet<String>,
) -> Result<(), RestError> {
    let mut refs = Vec::new();
    literal_refs(resource, &mut refs);
    for (t, id) in refs {
        if creating.contains(&format!("{t}/{id}")) {
            continue;
        }
        if tx.current(&t, &id)?.is_none_or(|c| c.deleted) {
            return Err(RestError::BadRequest {
                diagnostics: format!("the reference to {t}/{id} points at no existing resource"),
                expression: None,
            });
        }
    }
    Ok(())
}

/// Reads a current resource through any read transaction: 404/410 as appropriate. A resource
/// `vis` hides answers 404 exactly like one that never existed (a deleted one is 410 only when
/// its last content was visible).
pub fn read_in(
    r: &mut dyn ReadTx,
    keyring: &Keyring,
    vis: &Visibility,
    rtype: &str,
    id: &str,
) -> Result<Stored, RestError> {
    let not_found = || RestError::NotFound {
        rtype: rtype.to_owned(),
        id: id.to_owned(),
    };
    match r.current(rtype, id)? {
        None => Err(not_found()),
        Some(rec) if rec.deleted => Err(if search::version_visible(r, keyring, vis, &rec)? {
            RestError::Gone {
                rtype: rtype.to_owned(),
                id: id.to_owned(),
                version: rec.version,
                last_updated_ms: rec.last_updated_ms,
            }
        } else {
            not_found()
        }),
        // Opened once: the patients that decide visibility are the ones the result carries.
        Some(rec) => search::open_visible(r, keyring, vis, &rec)?.ok_or_else(not_found),
    }
}

/// Conditional create inside a transaction: the existing match, or a new resource.
///
/// The caller must be allowed to create the new content; the `If-None-Exist` criteria only see
/// resources the caller may read.
pub fn create_in_tx(
    tx: &mut dyn Tx,
    keyring: &Keyring,
    vis: &Visibility,
    rtype: &str,
    resource: Value,
    if_none_exist: Option<&str>,
) -> Result<Written, RestError> {
    check_write(vis, Op::Create, rtype, &resource)?;
    if let Some(q) = if_none_exist {
        let keys = search::matching_keys(tx, keyring, vis, rtype, q)?;
        match keys.len() {
            0 => {}
            1 => {
                let rec = tx.load(&keys)?;
                let rec = rec
                    .first()
                    .ok_or_else(|| RestError::Store("a matching resource vanished".into()))?;
                return Ok(Written {
                    created: false,
                    stored: open_record(tx, keyring, rec)?,
                });
            }
            n => {
                return Err(RestError::PreconditionFailed(format!(
                    "the If-None-Exist criteria match {n} {rtype} resources; make them more selective"
                )));
            }
        }
    }
    check_references(tx, &resource, &Default::default())?;
    let id = new_id();
    let (mut nv, stored) = prepare(keyring, rtype, &id, 1, instant::now_ms(), resource, "POST")?;
    put_new_version(tx, keyring, &mut nv)?;
    Ok(Written {
        created: true,
        stored,
    })
}

impl Rest {
    /// Interactions over `store` that see everything (imports, maintenance, system clients).
    pub fn new(store: Arc<dyn Store>) -> Rest {
        Rest {
            store,
            audit: None,
            vis: Visibility::everything(),
        }
    }

    /// The same interactions with every successful write job also appending the audit entries
    /// `hook` derives from what it wrote, in the same transaction.
    pub fn audited(&self, hook: AuditHook) -> Rest {
        Rest {
            store: self.store.clone(),
            audit: Some(hook),
            vis: self.vis.clone(),
        }
    }

    /// The same interactions as seen by a caller with visibility `vis`.
    pub fn restricted(&self, vis: Visibility) -> Rest {
        Rest {
            store: self.store.clone(),
            audit: self.audit.clone(),
            vis,
        }
    }

    /// The visibility these interactions run under.
    pub fn visibility(&self) -> &Visibility {
        &self.vis
    }

    /// Runs a write job in the store's writer, with its audit entries when this `Rest` is audited.
    pub(crate) fn write<T, F>(&self, job: F) -> Result<T, RestError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<T, RestError> + Send + 'static,
    {
        let Some(hook) = self.audit.clone() else {
            return write_with(&*self.store, job);
        };
        let keyring = self.keyring();
        write_with(&*self.store, move |tx| {
            let mut rec = RecordingTx::new(tx);
            let value = job(&mut rec)?;
            let facts = rec.into_facts();
            for entry in hook(&facts) {
                crate::audit_log::append(tx, &keyring, &entry)
                    .map_err(|e| RestError::AuditUnavailable(e.to_string()))?;
            }
            Ok(value)
        })
    }

    /// The underlying store (system records, audit appends).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn keyring(&self) -> Arc<Keyring> {
        self.store.keyring().clone()
    }

    /// The current version of `rtype/id`.
    pub fn read(&self, rtype: &str, id: &str) -> Result<Stored, RestError> {
        let mut r = self.store.reader()?;
        read_in(&mut *r, self.store.keyring(), &self.vis, rtype, id)
    }

    /// One version of `rtype/id`.
    pub fn vread(&self, rtype: &str, id: &str, version: &str) -> Result<Stored, RestError> {
        let not_found = || RestError::NotFound {
            rtype: rtype.to_owned(),
            id: id.to_owned(),
        };
        let v: u64 = version.parse().map_err(|_| not_found())?;
        let mut reader = self.store.reader()?;
        let rec = reader.version(rtype, id, v)?.ok_or_else(not_found)?;
        if rec.deleted {
            if !search::version_visible(&mut *reader, self.store.keyring(), &self.vis, &rec)? {
                return Err(not_found());
            }
            return Err(RestError::Gone {
                rtype: rtype.to_owned(),
                id: id.to_owned(),
                version: rec.version,
                last_updated_ms: rec.last_updated_ms,
            });
        }
        search::open_visible(&mut *reader, self.store.keyring(), &self.vis, &rec)?
            .ok_or_else(not_found)
    }

    /// Creates a resource with a server-assigned id; with `if_none_exist`, a conditional create.
    pub fn create(
        &self,
        rtype: &str,
        resource: Value,
        if_none_exist: Option<&str>,
    ) -> Result<Written, RestError> {
        check_resource(rtype, &resource)?;
        check_write(&self.vis, Op::Create, rtype, &resource)?;
        let keyring = self.keyring();
        if if_none_exist.is_none() {
            // Everything but the insert happens here, in parallel with other callers.
            let id = new_id();
            let mut refs = Vec::new();
            literal_refs(&resource, &mut refs);
            let (mut nv, stored) =
                prepare(&keyring, rtype, &id, 1, instant::now_ms(), resource, "POST")?;
            let job_keyring = keyring.clone();
            self.write(move |tx| {
                for (t, rid) in refs {
                    if tx.current(&t, &rid)?.is_none_or(|c| c.deleted) {
                        return Err(RestError::BadRequest {
                            diagnostics: format!(
                                "the reference to {t}/{rid} points at no existing resource"
                            ),
                            expression: None,
                        });
                    }
                }
                put_new_version(tx, &job_keyring, &mut nv)?;
                Ok(())
            })?;
            return Ok(Written {
                created: true,
                stored,
            });
        }
        let (rtype, q) = (rtype.to_owned(), if_none_exist.map(str::to_owned));
        let vis = self.vis.clone();
        self.write(move |tx| create_in_tx(tx, &keyring, &vis, &rtype, resource, q.as_deref()))
    }

    /// Updates (or creates, with the client's id) `rtype/id`.
    pub fn update(
        &self,
        rtype: &str,
        id: &str,
        resource: Value,
        if_match: Option<u64>,
    ) -> Result<Written, RestError> {
        check_resource(rtype, &resource)?;
        match resource.get("id").and_then(Value::as_str) {
            Some(rid) if rid == id => {}
            _ => {
                return Err(RestError::BadRequest {
                    diagnostics: format!("the body's id must be {id}, the id in the URL"),
                    expression: Some(format!("{rtype}.id")),
                });
            }
        }
        let keyring = self.keyring();
        let (rtype, id) = (rtype.to_owned(), id.to_owned());
        let vis = self.vis.clone();
        self.write(move |tx| put_in_tx(tx, &keyring, &vis, &rtype, &id, resource, if_match, "PUT"))
    }

    /// Conditional update: the search `query` decides which resource (if any) is updated.
    pub fn conditional_update(
        &self,
        rtype: &str,
        query: &str,
        resource: Value,
        if_match: Option<u64>,
    ) -> Result<Written, RestError> {
        check_resource(rtype, &resource)?;
        let keyring = self.keyring();
        let (rtype, query) = (rtype.to_owned(), query.to_owned());
        let vis = self.vis.clone();
        self.write(move |tx| {
            conditional_update_in_tx(tx, &keyring, &vis, &rtype, &query, resource, if_match)
        })
    }

    /// Applies an RFC 6902 JSON Patch to the current version, validates, and stores the result.
    pub fn patch(
        &self,
        rtype: &str,
        id: &str,
        json_patch: Value,
        if_match: Option<u64>,
    ) -> Result<Written, RestError> {
        let keyring = self.keyring();
        let (rtype, id) = (rtype.to_owned(), id.to_owned());
        let vis = self.vis.clone();
        self.write(move |tx| patch_in_tx(tx, &keyring, &vis, &rtype, &id, &json_patch, if_match))
    }

    /// Deletes `rtype/id`; the deletion's version, or `None` when there was nothing to delete.
    pub fn delete(&self, rtype: &str, id: &str) -> Result<Option<u64>, RestError> {
        let keyring = self.keyring();
        let (rtype, id) = (rtype.to_owned(), id.to_owned());
        let vis = self.vis.clone();
        self.write(move |tx| delete_in_tx(tx, &keyring, &vis, &rtype, &id))
    }

    /// Deletes every resource matching `query`; how many were deleted.
    pub fn conditional_delete(&self, rtype: &str, query: &str) -> Result<usize, RestError> {
        let keyring = self.keyring();
        let (rtype, query) = (rtype.to_owned(), query.to_owned());
        let vis = self.vis.clone();
        self.write(move |tx| conditional_delete_in_tx(tx, &keyring, &vis, &rtype, &query))
    }

    /// A search; answers a `searchset` Bundle.
    pub fn search(&self, req: &search::SearchRequest<'_>) -> Result<Value, RestError> {
        let mut r = self.store.reader()?;
        search::run(&mut *r, self.store.keyring(), &self.vis, req)
    }

    /// A history (instance, type or system); answers a `history` Bundle.
    pub fn history(&self, req: &search::HistoryRequest<'_>) -> Result<Value, RestError> {
        let mut r = self.store.reader()?;
        search::history(&mut *r, self.store.keyring(), &self.vis, req)
    }

    /// Processes a batch or transaction Bundle; answers the response Bundle.
    pub fn bundle(&self, bundle: Value, base_url: &str) -> Result<Value, RestError> {
        crate::bundle::process(self, bundle, base_url)
    }
}

/// Conditional update inside a transaction.
///
/// The criteria only see resources the caller may read (a hidden match is as good as none, so the
/// answer never depends on data the caller may not see).
pub fn conditional_update_in_tx(
    tx: &mut dyn Tx,
    keyring: &Keyring,
    vis: &Visibility,
    rtype: &str,
    query: &str,
    resource: Value,
    if_match: Option<u64>,
) -> Result<Written, RestError> {
    let keys = search::matching_keys(tx, keyring, vis, rtype, query)?;
    let body_id = resource
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match keys.len() {
        0 => {
            let id = body_id.unwrap_or_else(new_id);
            put_in_tx(tx, keyring, vis, rtype, &id, resource, if_match, "PUT")
        }
        1 => {
            let recs = tx.load(&keys)?;
            let rec = recs
                .first()
                .ok_or_else(|| RestError::Store("a matching resource vanished".into()))?;
            let id = rec.id.clone();
            if body_id.as_deref().is_some_and(|b| b != id) {
                return Err(RestError::BadRequest {
                    diagnostics: format!(
                        "the body's id does not match the resource the criteria select ({rtype}/{id})"
                    ),
                    expression: Some(format!("{rtype}.id")),
                });
            }
            let mut resource = resource;
            if let Value::Object(o) = &mut resource {
                o.insert("id".into(), Value::String(id.clone()));
            }
            put_in_tx(tx, keyring, vis, rtype, &id, resource, if_match, "PUT")
        }
        n => Err(RestError::PreconditionFailed(format!(
            "the conditional update criteria match {n} {rtype} resources; make them more selective"
        ))),
    }
}

/// Conditional delete inside a transaction.
pub fn conditional_delete_in_tx(
    tx: &mut dyn Tx,
    keyring: &Keyring,
    vis: &Visibility,
    rtype: &str,
    query: &str,
) -> Result<usize, RestError> {
    let keys = search::matching_keys(tx, keyring, vis, rtype, query)?;
    // Conditional delete is "single": a condition that matches several resources deletes none,
    // so a loose query can never wipe out part of a chart.
    if keys.len() > 1 {
        return Err(RestError::PreconditionFailed(format!(
            "The condition matches {} {rtype} resources; a conditional delete must match at most one.",
            keys.len()
        )));
    }
    let recs = tx.load(&keys)?;
    let mut n = 0;
    for rec in recs {
        if delete_in_tx(tx, keyring, vis, rtype, &rec.id)?.is_some() {
            n += 1;
        }
    }
    Ok(n)
}

/// JSON Patch inside a transaction.
pub fn patch_in_tx(
    tx: &mut dyn Tx,
    keyring: &Keyring,
    vis: &Visibility,
    rtype: &str,
    id: &str,
    json_patch: &Value,
    if_match: Option<u64>,
) -> Result<Written, RestError> {
    let cur = read_in(tx, keyring, vis, rtype, id)?;
    if !vis.allows_json(Op::Update, rtype, &cur.json) {
        return Err(RestError::Forbidden(format!(
            "The caller may not update {rtype}/{id}."
        )));
    }
    check_if_match(
        Some(&VersionRecord {
            key: crate::backend::ResKey(0),
            rtype: cur.rtype.clone(),
            id: cur.id.clone(),
            version: cur.version,
            last_updated_ms: cur.last_updated_ms,
            deleted: false,
            method: String::new(),
            sealed: Vec::new(),
            patients: None,
        }),
        if_match,
        rtype,
        id,
    )?;
    let doc: Value = serde_json::from_slice(&cur.json)
        .map_err(|e| RestError::Integrity(format!("stored JSON unreadable: {e}")))?;
    let patched = crate::patch::apply(doc, json_patch)?;
    if patched.get("id").and_then(Value::as_str) != Some(id) {
        return Err(RestError::BadRequest {
            diagnostics: "a patch may not change the id".into(),
            expression: Some(format!("{rtype}.id")),
        });
    }
    check_resource(rtype, &patched)?;
    check_write(vis, Op::Update, rtype, &patched)?;
    check_references(
        tx,
        &patched,
        &std::iter::once(format!("{rtype}/{id}")).collect(),
    )?;
    let (mut nv, stored) = prepare(
        keyring,
        rtype,
        id,
        cur.version + 1,
        instant::now_ms(),
        patched,
        "PATCH",
    )?;
    put_new_version(tx, keyring, &mut nv)?;
    Ok(Written {
        created: false,
        stored,
    })
}
