//! The SQLite schema: resources, versions, per-kind index tables, the audit log and system records.

use carevault_crypto::Keyring;
use rusqlite::Connection;

/// Current schema version, kept in `PRAGMA user_version`. 4 added the care-relationship tables
/// (`care_rel`, `care_actor`), filled from the existing data when a version 3 store is opened.
/// 5 added `ver.patients`, left NULL ("not recorded") on the versions of an older store.
const SCHEMA_VERSION: i64 = 5;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS res (
    rid INTEGER PRIMARY KEY,
    rtype TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    tag_keys BLOB NOT NULL,      -- (pid, tag) pairs (2 x 8 bytes) of the current version's ix_tag rows
    UNIQUE (rtype, id)
);
CREATE INDEX IF NOT EXISTS res_lu ON res (rtype, last_updated);
CREATE TABLE IF NOT EXISTS ver (
    seq INTEGER PRIMARY KEY,
    rid INTEGER NOT NULL,
    version INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    method TEXT NOT NULL,
    body BLOB NOT NULL,
    -- The ids (without 'Patient/') of the patients in whose compartment the version is, joined by
    -- single spaces ('' for none and for deletions), so a read learns them without parsing the
    -- body; NULL when not recorded (versions written before schema version 5).
    -- In clear on purpose: these are server-assigned ids, not PHI, and ix_ref already holds them
    -- in clear for every reference.
    patients TEXT,
    UNIQUE (rid, version)
);
CREATE TABLE IF NOT EXISTS ix_tag (
    pid INTEGER NOT NULL, tag INTEGER NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, tag, rid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ix_ref (
    pid INTEGER NOT NULL, tid TEXT NOT NULL, ttype TEXT NOT NULL, url TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, tid, ttype, url, rid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ix_ref_rid ON ix_ref (rid, pid);
CREATE TABLE IF NOT EXISTS ix_date (
    pid INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, lo, hi, rid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ix_date_hi ON ix_date (pid, hi, lo);
CREATE INDEX IF NOT EXISTS ix_date_rid ON ix_date (rid);
CREATE TABLE IF NOT EXISTS ix_num (
    pid INTEGER NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, lo, hi, rid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ix_num_rid ON ix_num (rid);
CREATE TABLE IF NOT EXISTS ix_qty (
    pid INTEGER NOT NULL, tag INTEGER NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, tag, lo, hi, rid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ix_qty_rid ON ix_qty (rid);
-- The audit trail: append-only. `chain` is the hash chain after the entry; `entry` is sealed to
-- `audit/<seq>`; audit_node holds every complete Merkle subtree (RFC 9162) for proofs;
-- audit_ix maps blind tags of patients, agents and entities to entries.
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY,
    recorded INTEGER NOT NULL,
    chain BLOB NOT NULL,
    entry BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_recorded ON audit_log (recorded);
CREATE TABLE IF NOT EXISTS audit_node (
    level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_ix (
    tag INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (tag, seq)
) WITHOUT ROWID;
-- Search keys of the newest entries (fewer than 256), moved into audit_ix in one sorted batch.
CREATE TABLE IF NOT EXISTS audit_ix_pending (
    seq INTEGER NOT NULL, tag INTEGER NOT NULL,
    PRIMARY KEY (seq, tag)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS system_record (
    kind TEXT NOT NULL, key TEXT NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (kind, key)
);
"#;

/// How far each read journal (`journal.rs`, by its id) is folded into the audit log; written in
/// the same transaction as the entries folded.
const AUDIT_FOLD_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS audit_fold (journal BLOB PRIMARY KEY, upto INTEGER NOT NULL);
"#;

/// Encryption at rest (issue 5): per-patient keys for crypto-shredding, the record of destroyed
/// ones, and the durable cursor of a data-key rotation.
const KEYS_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS patient_key_erased (
    pkid INTEGER PRIMARY KEY, patient TEXT NOT NULL, erased INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS key_rotation (
    tbl TEXT PRIMARY KEY, target_key INTEGER NOT NULL, cursor INTEGER NOT NULL,
    started INTEGER NOT NULL, total INTEGER NOT NULL, done INTEGER NOT NULL
);
"#;

/// The per-patient key table, under `name` (an erasure rebuilds it under a temporary name).
pub(crate) fn patient_key_ddl(name: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {name} (
    pkid INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused: a destroyed key's id stays destroyed
    patient TEXT NOT NULL UNIQUE,             -- the Patient's server-assigned id
    wrapped BLOB NOT NULL,                    -- the key sealed under a data key ('patient-key/<id>')
    created INTEGER NOT NULL
);"
    )
}

/// Creates the schema when missing; refuses a file written by a newer carevault. A store from
/// before version 4 gets its care-relationship rows derived from its resources (which `keyring`
/// opens) in the same transaction that creates their tables; one from before version 5 gets the
/// `ver.patients` column, NULL on every existing version (readers then work the patients out
/// from the body, as before).
pub fn migrate(conn: &Connection, keyring: &Keyring) -> rusqlite::Result<()> {
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if v > SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "store schema version {v} is newer than this carevault supports ({SCHEMA_VERSION}); upgrade carevault"
        )));
    }
    if v == 2 {
        // Version 2 had an audit_log table that nothing wrote to; version 3 gives it its shape.
        let entries: i64 = conn.query_row("SELECT count(*) FROM audit_log", [], |r| r.get(0))?;
        if entries == 0 {
            conn.execute_batch("DROP TABLE audit_log")?;
        } else {
            return Err(rusqlite::Error::InvalidParameterName(
                "store schema version 2 holds audit entries in a development format; move the data directory aside and import again".into(),
            ));
        }
    } else if v != 0 && v < 3 {
        // Version 1 only ever existed in development builds.
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "store schema version {v} is from a development build of carevault; move the data directory aside and import again"
        )));
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    conn.execute_batch(SCHEMA)?;
    // Version 2 stores gain the key tables in place (3 only adds tables).
    conn.execute_batch(KEYS_SCHEMA)?;
    conn.execute_batch(AUDIT_FOLD_SCHEMA)?;
    conn.execute_batch(&patient_key_ddl("patient_key"))?;
    conn.execute_batch(super::care::CARE_SCHEMA)?;
    if v != 0 && v < 5 {
        // `CREATE TABLE IF NOT EXISTS` above left the old `ver` as it was. No backfill: that
        // would open every version; NULL tells readers to parse the body instead.
        if let Err(e) = conn.execute_batch("ALTER TABLE ver ADD COLUMN patients TEXT") {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    if v != 0 && v < 4 {
        // The rows of resources written before the tables existed; a failure rolls back the
        // whole migration, so the store stays at its old version and can be opened again.
        if let Err(e) = super::care::backfill(conn, keyring) {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(rusqlite::Error::InvalidParameterName(e.to_string()));
        }
    }
    conn.execute_batch(&format!("PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"))?;
    Ok(())
}
