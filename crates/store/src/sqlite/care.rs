//! The care-relationship tables in SQLite: rows replaced in the write transaction of the
//! resource that states them, the backfill of a store that predates them, and the lookups
//! (a relationship check is one primary-key probe per actor).

use std::collections::BTreeSet;

use carevault_crypto::Keyring;
use rusqlite::{Connection, OptionalExtension, params};

use crate::backend::{ResKey, VersionRecord};
use crate::care::{self, BILLING_ACTOR, CareKind, CareRows, CareWindows};
use crate::error::{RestError, StoreError};

/// The tables. `care_rel` is keyed by (actor, patient, kind, src) so that "does this actor have
/// a relationship with this patient" is a probe of the primary key; `start_ms`/`end_ms` sit in
/// the same b-tree leaf. NULL start: no lower bound; NULL end: open (in progress).
pub(crate) const CARE_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS care_rel (
    actor TEXT NOT NULL,        -- Practitioner/P, PractitionerRole/R, Location/L, or 'billing'
    patient TEXT NOT NULL,      -- the Patient's id
    kind INTEGER NOT NULL,      -- the rule (1 encounter .. 6 billing; store::care::CareKind)
    src INTEGER NOT NULL,       -- res.rid of the resource that states it
    start_ms INTEGER,
    end_ms INTEGER,
    PRIMARY KEY (actor, patient, kind, src)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS care_rel_src ON care_rel (src);
CREATE TABLE IF NOT EXISTS care_actor (
    practitioner TEXT NOT NULL, -- the Practitioner's id
    actor TEXT NOT NULL,        -- PractitionerRole/R or Location/L
    src INTEGER NOT NULL,       -- res.rid of the PractitionerRole
    PRIMARY KEY (practitioner, actor, src)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS care_actor_src ON care_actor (src);
"#;

/// Removes the rows resource `src` stated.
pub(crate) fn remove(conn: &Connection, src: i64) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM care_rel WHERE src = ?1")?
        .execute([src])?;
    conn.prepare_cached("DELETE FROM care_actor WHERE src = ?1")?
        .execute([src])?;
    Ok(())
}

/// Inserts the rows resource `src` states (after [`remove`] for an update).
pub(crate) fn insert(conn: &Connection, src: i64, rows: &CareRows) -> Result<(), StoreError> {
    if !rows.rels.is_empty() {
        let mut st = conn.prepare_cached(
            "INSERT OR IGNORE INTO care_rel (actor, patient, kind, src, start_ms, end_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for r in &rows.rels {
            st.execute(params![
                r.actor,
                r.patient,
                r.kind.code(),
                src,
                r.start_ms,
                r.end_ms
            ])?;
        }
    }
    if !rows.roles.is_empty() {
        let mut st = conn.prepare_cached(
            "INSERT OR IGNORE INTO care_actor (practitioner, actor, src) VALUES (?1, ?2, ?3)",
        )?;
        for r in &rows.roles {
            st.execute(params![r.practitioner, r.actor, src])?;
        }
    }
    Ok(())
}

/// The write-path hook: a version of a tracked type replaces its resource's rows (a deletion,
/// or a version stating none, leaves none).
pub(crate) fn replace(
    conn: &Connection,
    src: i64,
    rtype: &str,
    rows: Option<&CareRows>,
) -> Result<(), StoreError> {
    if !care::tracks(rtype) {
        return Ok(());
    }
    remove(conn, src)?;
    if let Some(rows) = rows {
        insert(conn, src, rows)?;
    }
    Ok(())
}

/// Fills the tables from the current versions of the tracked types (a store that predates
/// them); runs inside the migration's transaction. Records whose patient key was destroyed
/// are skipped (they are erased); any other failure to open a record stops the migration.
pub(crate) fn backfill(conn: &Connection, keyring: &Keyring) -> Result<u64, StoreError> {
    let mut st = conn.prepare(
        "SELECT r.rid, r.rtype, r.id, r.version, r.last_updated, v.body FROM res r \
         JOIN ver v ON v.rid = r.rid AND v.version = r.version \
         WHERE r.deleted = 0 AND r.rtype IN ('Encounter', 'Appointment', 'CareTeam', 'Patient', 'PractitionerRole') \
         ORDER BY r.rid",
    )?;
    let mut rows = st.query([])?;
    let mut n = 0u64;
    while let Some(row) = rows.next()? {
        let rec = VersionRecord {
            key: ResKey(row.get(0)?),
            rtype: row.get(1)?,
            id: row.get(2)?,
            version: row.get::<_, i64>(3)? as u64,
            last_updated_ms: row.get(4)?,
            deleted: false,
            method: String::new(),
            sealed: row.get(5)?,
            patients: None,
        };
        let mut tx = super::SqlTx::new(conn);
        let stored = match crate::rest::open_record(&mut tx, keyring, &rec) {
            Ok(s) => s,
            Err(RestError::Gone { .. }) => continue,
            Err(e) => {
                return Err(StoreError::Backend(format!(
                    "care relationships could not be derived from {}/{}: {e}",
                    rec.rtype, rec.id
                )));
            }
        };
        let json: serde_json::Value = serde_json::from_slice(&stored.json).map_err(|e| {
            StoreError::Backend(format!("{}/{} is not JSON: {e}", rec.rtype, rec.id))
        })?;
        if let Some(care_rows) = care::derive(&rec.rtype, &json, rec.last_updated_ms) {
            insert(conn, rec.key.0, &care_rows)?;
            n += 1;
        }
    }
    Ok(n)
}

/// `Practitioner/P` and the actors of P's PractitionerRoles.
pub(crate) fn actors(conn: &Connection, practitioner: &str) -> Result<Vec<String>, StoreError> {
    let id = care::practitioner_id(practitioner);
    let mut out = vec![format!("Practitioner/{id}")];
    let mut st = conn.prepare_cached(
        "SELECT DISTINCT actor FROM care_actor WHERE practitioner = ?1 ORDER BY actor",
    )?;
    for a in st.query_map([id], |r| r.get::<_, String>(0))? {
        let a = a?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    Ok(out)
}

/// The window condition over a row's kind, start and end, with `?now` and the slacks bound as
/// parameters 3..=8 (see [`window_params`]).
const IN_WINDOW: &str = "(start_ms IS NULL OR start_ms - (CASE kind WHEN 1 THEN ?4 WHEN 2 THEN ?6 ELSE 0 END) <= ?3) \
     AND (end_ms IS NULL OR ?3 < end_ms + (CASE kind WHEN 1 THEN ?5 WHEN 2 THEN ?7 WHEN 6 THEN ?8 ELSE 0 END))";

fn window_params(now_ms: i64, w: &CareWindows) -> [i64; 6] {
    [
        now_ms,
        w.encounter_before_ms,
        w.encounter_after_ms,
        w.appointment_before_ms,
        w.appointment_after_ms,
        w.billing_after_ms,
    ]
}

/// The relationship probe: actor ?1, patient ?2, the window parameters, ?9 = 1 for billing.
pub(crate) fn probe_sql() -> String {
    format!(
        "SELECT 1 FROM care_rel WHERE actor = ?1 AND patient = ?2 AND {IN_WINDOW} \
         AND ((?9 = 1) = (kind = {})) LIMIT 1",
        CareKind::Billing.code()
    )
}

/// Whether any of `actors` (or, with `billing`, the billing actor) has a relationship with
/// `patient` at `now_ms`.
pub(crate) fn has_relationship(
    conn: &Connection,
    actors: &[String],
    patient: &str,
    now_ms: i64,
    w: &CareWindows,
    billing: bool,
) -> Result<bool, StoreError> {
    let patient = care::patient_id(patient);
    let [now, eb, ea, ab, aa, ba] = window_params(now_ms, w);
    let mut st = conn.prepare_cached(&probe_sql())?;
    let billing_actor = [BILLING_ACTOR.to_owned()];
    let probe: &[String] = if billing { &billing_actor } else { actors };
    for actor in probe {
        let hit: Option<i64> = st
            .query_row(
                params![actor, patient, now, eb, ea, ab, aa, ba, i64::from(billing)],
                |r| r.get(0),
            )
            .optional()?;
        if hit.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The ids of the patients any of `actors` (or, with `billing`, the billing actor) has a
/// relationship with at `now_ms`, sorted.
pub(crate) fn patients(
    conn: &Connection,
    actors: &[String],
    now_ms: i64,
    w: &CareWindows,
    billing: bool,
) -> Result<Vec<String>, StoreError> {
    let [now, eb, ea, ab, aa, ba] = window_params(now_ms, w);
    let sql = format!(
        "SELECT DISTINCT patient FROM care_rel WHERE actor = ?1 AND {IN_WINDOW} \
         AND ((?9 = 1) = (kind = {}))",
        CareKind::Billing.code()
    );
    let mut st = conn.prepare_cached(&sql)?;
    let billing_actor = [BILLING_ACTOR.to_owned()];
    let probe: &[String] = if billing { &billing_actor } else { actors };
    let mut out = BTreeSet::new();
    for actor in probe {
        let rows = st.query_map(
            params![actor, 0, now, eb, ea, ab, aa, ba, i64::from(billing)],
            |r| r.get::<_, String>(0),
        )?;
        for p in rows {
            out.insert(p?);
        }
    }
    Ok(out.into_iter().collect())
}
