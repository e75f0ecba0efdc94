//! SQL for the storage interface: reads, version writes, index maintenance, and the translation
//! of search plans into compound SELECTs over the index tables.

use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use crate::backend::{
    AuditQuery, AuditRow, AuditRowRef, AuditStored, ErasedRows, HistoryScope, IndexRow, KeyUsage,
    NativeSort, NewVersion, ParamRef, PatientKeyRow, ReadTx, ResKey, RotationCursor, SEALED_TABLES,
    SealedRow, SealedTable, Tx, VersionRecord,
};
use crate::error::{RestError, StoreError};
use crate::plan::{Bound, Cond, IndexKind, Plan, RangeCond};

/// Reads and writes over one SQLite connection (the writer's inside a savepoint, or a reader's
/// inside its read transaction).
pub struct SqlTx<'c> {
    conn: &'c Connection,
}

impl<'c> SqlTx<'c> {
    /// Wraps a connection that already has a transaction open.
    pub fn new(conn: &'c Connection) -> Self {
        SqlTx { conn }
    }
}

/// The first 64 bits of a blind tag, as stored: integer keys are smaller and compare faster,
/// and a false match needs a 64-bit collision within one parameter (about 1e-13 for a million
/// values).
fn tag_int(t: &carevault_crypto::BlindTag) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&t[..8]);
    i64::from_be_bytes(b)
}

fn hash32(bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Integrity("an audit chain or node hash is not 32 bytes".into()))
}

type AuditRowResult = Result<AuditStored, StoreError>;

/// Reads one audit_log row; a malformed chain hash is an integrity error of that row, not a
/// database error.
fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRowResult> {
    let seq = r.get::<_, i64>(0)? as u64;
    let recorded_ms = r.get(1)?;
    // Whatever the column holds is handed on as bytes: a value of the wrong type is a changed
    // entry, which opening it reports by its sequence number.
    let bytes = |i: usize| -> rusqlite::Result<Vec<u8>> {
        Ok(match r.get_ref(i)? {
            rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => b.to_vec(),
            _ => Vec::new(),
        })
    };
    let chain = bytes(2)?;
    let sealed = bytes(3)?;
    Ok(hash32(&chain).map(|chain| AuditStored {
        seq,
        recorded_ms,
        chain,
        sealed,
    }))
}

fn collect_audit(
    rows: impl Iterator<Item = rusqlite::Result<AuditRowResult>>,
) -> Result<Vec<AuditStored>, StoreError> {
    let mut out = Vec::new();
    for r in rows {
        out.push(r??);
    }
    Ok(out)
}

/// Bytes of the database file [`ReadTx::audit_visit`] maps while it reads (SQLite maps at most
/// this much from the start of the file; the rest is read as usual).
const AUDIT_VISIT_MMAP: u64 = 1 << 36;

/// Entries whose search keys wait in `audit_ix_pending` before moving into `audit_ix` together.
const AUDIT_IX_BATCH: u64 = 256;
/// Entries appended together from which their keys go straight into `audit_ix`, sorted.
const AUDIT_IX_DIRECT: usize = 64;

fn pid(p: &ParamRef) -> i64 {
    p.id().0
}

const VERSION_COLS: &str =
    "r.rid, r.rtype, r.id, v.version, v.last_updated, v.deleted, v.method, v.body, v.patients";

/// The `ver.patients` column of a version's compartment patients: the ids joined by single
/// spaces (FHIR ids cannot hold one), `''` for none. `NULL` (readers then parse the body) when
/// an id could not be read back unchanged: an empty one, or one holding a space.
fn encode_patients(patients: &[String]) -> Option<String> {
    if patients.iter().any(|p| p.is_empty() || p.contains(' ')) {
        return None;
    }
    Some(patients.join(" "))
}

/// The inverse of [`encode_patients`]: `None` for `NULL` (not recorded).
fn decode_patients(column: Option<String>) -> Option<Vec<String>> {
    let column = column?;
    if column.is_empty() {
        return Some(Vec::new());
    }
    Some(column.split(' ').map(str::to_owned).collect())
}

fn version_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRecord> {
    Ok(VersionRecord {
        key: ResKey(row.get(0)?),
        rtype: row.get(1)?,
        id: row.get(2)?,
        version: row.get::<_, i64>(3)? as u64,
        last_updated_ms: row.get(4)?,
        deleted: row.get::<_, i64>(5)? != 0,
        method: row.get(6)?,
        sealed: row.get(7)?,
        patients: decode_patients(row.get(8)?),
    })
}

impl ReadTx for SqlTx<'_> {
    fn current(&mut self, rtype: &str, id: &str) -> Result<Option<VersionRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {VERSION_COLS} FROM res r JOIN ver v ON v.rid = r.rid AND v.version = r.version \
             WHERE r.rtype = ?1 AND r.id = ?2"
        ))?;
        Ok(st.query_row(params![rtype, id], version_row).optional()?)
    }

    fn version(
        &mut self,
        rtype: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<VersionRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {VERSION_COLS} FROM res r JOIN ver v ON v.rid = r.rid \
             WHERE r.rtype = ?1 AND r.id = ?2 AND v.version = ?3"
        ))?;
        Ok(st
            .query_row(params![rtype, id, version as i64], version_row)
            .optional()?)
    }

    fn load(&mut self, keys: &[ResKey]) -> Result<Vec<VersionRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {VERSION_COLS} FROM res r JOIN ver v ON v.rid = r.rid AND v.version = r.version \
             WHERE r.rid = ?1 AND r.deleted = 0"
        ))?;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(v) = st.query_row([k.0], version_row).optional()? {
                out.push(v);
            }
        }
        Ok(out)
    }

    fn search(
        &mut self,
        plan: &Plan,
        sort: NativeSort,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<ResKey>, StoreError> {
        let mut args = Vec::new();
        let inner = plan_sql(plan, &mut args);
        let sql = match sort {
            NativeSort::Key => format!("SELECT rid FROM ({inner}) ORDER BY rid LIMIT ? OFFSET ?"),
            NativeSort::Id { descending } => format!(
                "SELECT r.rid FROM res r WHERE r.rid IN ({inner}) ORDER BY r.id {0}, r.rid LIMIT ? OFFSET ?",
                if descending { "DESC" } else { "ASC" }
            ),
            NativeSort::LastUpdated { descending } => format!(
                "SELECT r.rid FROM res r WHERE r.rid IN ({inner}) ORDER BY r.last_updated {0}, r.rid LIMIT ? OFFSET ?",
                if descending { "DESC" } else { "ASC" }
            ),
        };
        args.push(Sql::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        args.push(Sql::Integer(i64::try_from(offset).unwrap_or(i64::MAX)));
        let mut st = self.conn.prepare_cached(&sql)?;
        let rows = st.query_map(params_from_iter(args), |r| r.get::<_, i64>(0))?;
        rows.map(|r| r.map(ResKey).map_err(StoreError::from))
            .collect()
    }

    fn count(&mut self, plan: &Plan) -> Result<usize, StoreError> {
        let mut args = Vec::new();
        let inner = plan_sql(plan, &mut args);
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT count(*) FROM ({inner})"))?;
        let n: i64 = st.query_row(params_from_iter(args), |r| r.get(0))?;
        Ok(n as usize)
    }

    fn refs_from(
        &mut self,
        keys: &[ResKey],
        param: &ParamRef,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT ttype, tid FROM ix_ref WHERE rid = ?1 AND pid = ?2 AND tid <> '' AND ttype <> ''")?;
        let mut out = Vec::new();
        for k in keys {
            let rows = st.query_map(params![k.0, pid(param)], |r| Ok((r.get(0)?, r.get(1)?)))?;
            for r in rows {
                out.push(r?);
            }
        }
        Ok(out)
    }

    fn refs_to(
        &mut self,
        param: &ParamRef,
        targets: &[(String, String)],
    ) -> Result<Vec<ResKey>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT rid FROM ix_ref WHERE pid = ?1 AND tid = ?2 AND ttype = ?3")?;
        let mut out = Vec::new();
        for (t, id) in targets {
            let rows = st.query_map(params![pid(param), id, t], |r| r.get::<_, i64>(0))?;
            for r in rows {
                out.push(ResKey(r?));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn history(
        &mut self,
        scope: HistoryScope<'_>,
        since_ms: Option<i64>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<VersionRecord>, StoreError> {
        let (filter, mut args) = history_filter(scope, since_ms);
        let sql = format!(
            "SELECT {VERSION_COLS} FROM ver v JOIN res r ON r.rid = v.rid WHERE {filter} ORDER BY v.seq DESC LIMIT ? OFFSET ?"
        );
        args.push(Sql::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        args.push(Sql::Integer(i64::try_from(offset).unwrap_or(i64::MAX)));
        let mut st = self.conn.prepare_cached(&sql)?;
        let rows = st.query_map(params_from_iter(args), version_row)?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    fn history_count(
        &mut self,
        scope: HistoryScope<'_>,
        since_ms: Option<i64>,
    ) -> Result<usize, StoreError> {
        let (filter, args) = history_filter(scope, since_ms);
        let sql = format!("SELECT count(*) FROM ver v JOIN res r ON r.rid = v.rid WHERE {filter}");
        let mut st = self.conn.prepare_cached(&sql)?;
        let n: i64 = st.query_row(params_from_iter(args), |r| r.get(0))?;
        Ok(n as usize)
    }

    fn get_system_record(&mut self, kind: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT body FROM system_record WHERE kind = ?1 AND key = ?2")?;
        Ok(st.query_row(params![kind, key], |r| r.get(0)).optional()?)
    }

    fn list_system_records(&mut self, kind: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT key, body FROM system_record WHERE kind = ?1 ORDER BY key")?;
        let rows = st.query_map(params![kind], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    fn patient_key(&mut self, patient: &str) -> Result<Option<(u32, Vec<u8>)>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT pkid, wrapped FROM patient_key WHERE patient = ?1")?;
        Ok(st
            .query_row([patient], |r| Ok((r.get::<_, i64>(0)? as u32, r.get(1)?)))
            .optional()?)
    }

    fn patient_key_row(&mut self, row: u32) -> Result<PatientKeyRow, StoreError> {
        let live = self
            .conn
            .prepare_cached("SELECT patient, wrapped FROM patient_key WHERE pkid = ?1")?
            .query_row([i64::from(row)], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((patient, wrapped)) = live {
            return Ok(PatientKeyRow::Live { patient, wrapped });
        }
        let gone = self
            .conn
            .prepare_cached("SELECT 1 FROM patient_key_erased WHERE pkid = ?1")?
            .query_row([i64::from(row)], |_| Ok(()))
            .optional()?;
        Ok(if gone.is_some() {
            PatientKeyRow::Destroyed
        } else {
            PatientKeyRow::Unknown
        })
    }

    fn sealed_batch(
        &mut self,
        table: &SealedTable,
        after: i64,
        limit: usize,
        keep: u32,
    ) -> Result<Vec<SealedRow>, StoreError> {
        // Header: version byte, then the key id big-endian; patient key ids have the top bit set.
        let sql = format!(
            "SELECT {key}, {identity}, {body} FROM {name} WHERE {key} > ?1 AND length({body}) > 0 \
             AND substr({body}, 2, 4) <> ?2 AND substr({body}, 2, 1) < X'80' ORDER BY {key} LIMIT ?3",
            key = table.key,
            identity = table.identity,
            body = table.body,
            name = table.name
        );
        let mut st = self.conn.prepare_cached(&sql)?;
        let rows = st.query_map(
            params![
                after,
                keep.to_be_bytes().to_vec(),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| {
                Ok(SealedRow {
                    key: r.get(0)?,
                    identity: r.get(1)?,
                    sealed: r.get(2)?,
                })
            },
        )?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    fn key_usage(&mut self) -> Result<Vec<KeyUsage>, StoreError> {
        let mut out = Vec::new();
        let key_of = |b: Vec<u8>| -> u32 {
            let mut k = [0u8; 4];
            if b.len() == 4 {
                k.copy_from_slice(&b);
            }
            u32::from_be_bytes(k)
        };
        for t in SEALED_TABLES {
            let sql = if t.name == "ver" {
                "SELECT substr(v.body, 2, 4), count(*), sum(v.version = r.version) FROM ver v \
                 JOIN res r ON r.rid = v.rid WHERE length(v.body) > 0 GROUP BY 1"
                    .to_owned()
            } else {
                format!(
                    "SELECT substr({b}, 2, 4), count(*), count(*) FROM {n} WHERE length({b}) > 0 GROUP BY 1",
                    b = t.body,
                    n = t.name
                )
            };
            let mut st = self.conn.prepare_cached(&sql)?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for r in rows {
                let (k, n, cur) = r?;
                out.push(KeyUsage {
                    table: t.name,
                    key_id: key_of(k),
                    rows: n as u64,
                    current: cur as u64,
                });
            }
        }
        Ok(out)
    }

    fn rotation_state(&mut self) -> Result<Vec<RotationCursor>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT tbl, target_key, cursor, started, total, done FROM key_rotation ORDER BY tbl",
        )?;
        let rows = st.query_map([], |r| {
            Ok(RotationCursor {
                table: r.get(0)?,
                target_key: r.get::<_, i64>(1)? as u32,
                cursor: r.get(2)?,
                started_ms: r.get(3)?,
                total: r.get::<_, i64>(4)? as u64,
                done: r.get::<_, i64>(5)? as u64,
            })
        })?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    fn audit_head(&mut self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT seq, chain FROM audit_log ORDER BY seq DESC LIMIT 1")?;
        let row = st
            .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .optional()?;
        match row {
            None => Ok(None),
            Some((seq, chain)) => Ok(Some((seq as u64, hash32(&chain)?))),
        }
    }

    fn audit_last_recorded(&mut self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT max(recorded) FROM audit_log")?
            .query_row([], |r| r.get::<_, Option<i64>>(0))?)
    }

    fn audit_fold_mark(&mut self, journal: &[u8]) -> Result<u64, StoreError> {
        let upto: Option<i64> = self
            .conn
            .prepare_cached("SELECT upto FROM audit_fold WHERE journal = ?1")?
            .query_row([journal], |r| r.get(0))
            .optional()?;
        Ok(upto.map_or(0, |u| u as u64))
    }

    fn audit_node(&mut self, level: u32, index: u64) -> Result<Option<[u8; 32]>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT hash FROM audit_node WHERE level = ?1 AND idx = ?2")?;
        let h: Option<Vec<u8>> = st
            .query_row(params![i64::from(level), index as i64], |r| r.get(0))
            .optional()?;
        h.map(|h| hash32(&h)).transpose()
    }

    fn audit_entries(&mut self, after: u64, limit: usize) -> Result<Vec<AuditStored>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT seq, recorded, chain, entry FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = st.query_map(params![after as i64, limit as i64], audit_row)?;
        collect_audit(rows)
    }

    fn audit_search(&mut self, q: &AuditQuery) -> Result<Vec<u64>, StoreError> {
        let mut sql = String::from("SELECT a.seq FROM audit_log a WHERE 1");
        let mut args: Vec<Sql> = Vec::new();
        for (i, group) in q.tags.iter().enumerate() {
            if group.is_empty() {
                // An empty alternative matches nothing.
                sql.push_str(" AND 0");
                continue;
            }
            let first = args.len() + 1;
            args.extend(group.iter().map(|t| Sql::Integer(tag_int(t))));
            let list = (first..=args.len())
                .map(|n| format!("?{n}"))
                .collect::<Vec<_>>()
                .join(", ");
            // Keys live in audit_ix, or for the newest entries still in audit_ix_pending (at
            // most AUDIT_IX_BATCH entries' keys, so reading all of it is cheap).
            if i == 0 {
                // The first group drives the query through audit_ix (index ranges, not a scan).
                sql.push_str(&format!(
                    " AND a.seq IN (SELECT seq FROM audit_ix WHERE tag IN ({list}) \
                     UNION ALL SELECT seq FROM audit_ix_pending WHERE tag IN ({list}))"
                ));
            } else {
                sql.push_str(&format!(
                    " AND (EXISTS (SELECT 1 FROM audit_ix x WHERE x.tag IN ({list}) AND x.seq = a.seq) \
                     OR EXISTS (SELECT 1 FROM audit_ix_pending p WHERE p.seq = a.seq AND p.tag IN ({list})))"
                ));
            }
        }
        if let Some(from) = q.from_ms {
            args.push(Sql::Integer(from));
            sql.push_str(&format!(" AND a.recorded >= ?{}", args.len()));
        }
        if let Some(to) = q.to_ms {
            args.push(Sql::Integer(to));
            sql.push_str(&format!(" AND a.recorded < ?{}", args.len()));
        }
        sql.push_str(if q.descending {
            " ORDER BY a.seq DESC"
        } else {
            " ORDER BY a.seq"
        });
        args.push(Sql::Integer(q.limit.min(i64::MAX as usize) as i64));
        args.push(Sql::Integer(q.offset.min(i64::MAX as usize) as i64));
        sql.push_str(&format!(
            " LIMIT ?{} OFFSET ?{}",
            args.len() - 1,
            args.len()
        ));
        let mut st = self.conn.prepare_cached(&sql)?;
        let rows = st.query_map(params_from_iter(args), |r| r.get::<_, i64>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r? as u64);
        }
        Ok(out)
    }

    fn audit_visit(
        &mut self,
        after: u64,
        upto: u64,
        visit: &mut dyn FnMut(AuditRowRef<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        // One long sequential pass: map the file instead of copying every page through read(2)
        // into the page cache of the connection; back to ordinary reads afterwards.
        self.conn
            .execute_batch(&format!("PRAGMA mmap_size={AUDIT_VISIT_MMAP}"))?;
        let result = (|| {
            let mut st = self.conn.prepare_cached(
                "SELECT seq, recorded, chain, entry FROM audit_log \
                 WHERE seq > ?1 AND seq <= ?2 ORDER BY seq",
            )?;
            let upto = i64::try_from(upto).unwrap_or(i64::MAX);
            let after = i64::try_from(after).unwrap_or(i64::MAX);
            let mut rows = st.query(params![after, upto])?;
            while let Some(r) = rows.next()? {
                // Whatever the columns hold is lent as bytes: a value of the wrong type is a
                // changed entry, which the caller names by its sequence number.
                let bytes = |i: usize| -> rusqlite::Result<&[u8]> {
                    Ok(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => {
                            b
                        }
                        _ => &[],
                    })
                };
                visit(AuditRowRef {
                    seq: r.get::<_, i64>(0)? as u64,
                    recorded_ms: r.get(1)?,
                    chain: bytes(2)?,
                    sealed: bytes(3)?,
                })?;
            }
            Ok(())
        })();
        self.conn.execute_batch("PRAGMA mmap_size=0")?;
        result
    }

    fn audit_load(&mut self, seqs: &[u64]) -> Result<Vec<AuditStored>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT seq, recorded, chain, entry FROM audit_log WHERE seq = ?1")?;
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(row) = st.query_row([*seq as i64], audit_row).optional()? {
                out.push(row?);
            }
        }
        Ok(out)
    }
}

fn history_filter(scope: HistoryScope<'_>, since_ms: Option<i64>) -> (String, Vec<Sql>) {
    let mut filter = String::from("1");
    let mut args = Vec::new();
    match scope {
        HistoryScope::System => {}
        HistoryScope::Type(t) => {
            filter.push_str(" AND r.rtype = ?");
            args.push(Sql::Text(t.to_owned()));
        }
        HistoryScope::Instance(t, id) => {
            filter.push_str(" AND r.rtype = ? AND r.id = ?");
            args.push(Sql::Text(t.to_owned()));
            args.push(Sql::Text(id.to_owned()));
        }
    }
    if let Some(s) = since_ms {
        filter.push_str(" AND v.last_updated >= ?");
        args.push(Sql::Integer(s));
    }
    (filter, args)
}

impl SqlTx<'_> {
    /// Inserts an entry's row and its Merkle nodes (not its search keys).
    fn insert_audit_entry(&mut self, row: &AuditRow) -> Result<(), StoreError> {
        let e = &row.stored;
        self.conn
            .prepare_cached(
                "INSERT INTO audit_log (seq, recorded, chain, entry) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                e.seq as i64,
                e.recorded_ms,
                &e.chain[..],
                &e.sealed
            ])?;
        let mut node = self
            .conn
            .prepare_cached("INSERT INTO audit_node (level, idx, hash) VALUES (?1, ?2, ?3)")?;
        for (level, index, hash) in &row.nodes {
            node.execute(params![i64::from(*level), *index as i64, &hash[..]])?;
        }
        Ok(())
    }

    /// Moves the pending search keys into audit_ix, sorted by tag.
    fn move_pending_audit_keys(&mut self) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO audit_ix (tag, seq) \
                 SELECT tag, seq FROM audit_ix_pending ORDER BY tag, seq",
            )?
            .execute([])?;
        self.conn
            .prepare_cached("DELETE FROM audit_ix_pending")?
            .execute([])?;
        Ok(())
    }
}

impl Tx for SqlTx<'_> {
    fn put_version(&mut self, v: &NewVersion) -> Result<(), StoreError> {
        if v.pending.is_some() || (!v.deleted && v.sealed.is_empty()) {
            return Err(StoreError::Backend(format!(
                "{}/{} version {} was not sealed before being written",
                v.rtype, v.id, v.version
            )));
        }
        let conn = self.conn;
        let deleted = i64::from(v.deleted);
        // The tag rows' keys, kept with the resource so an update can delete exactly them:
        // cheaper than a second index on ix_tag by rid (tags are most of the index).
        let mut tag_keys = Vec::with_capacity(v.index.len() * 16);
        for row in &v.index {
            if let IndexRow::Tag { param, tag } = row {
                tag_keys.extend_from_slice(&param.0.to_be_bytes());
                tag_keys.extend_from_slice(&tag_int(tag).to_be_bytes());
            }
        }
        let rid: i64 = if v.version == 1 {
            let mut st = conn.prepare_cached(
                "INSERT INTO res (rtype, id, version, last_updated, deleted, tag_keys) VALUES (?1, ?2, 1, ?3, ?4, ?5)",
            )?;
            st.execute(params![v.rtype, v.id, v.last_updated_ms, deleted, tag_keys])
                .map_err(|e| {
                    StoreError::Backend(format!("{}/{} already exists: {e}", v.rtype, v.id))
                })?;
            conn.last_insert_rowid()
        } else {
            let mut st = conn.prepare_cached(
                "SELECT rid, tag_keys FROM res WHERE rtype = ?1 AND id = ?2 AND version = ?3",
            )?;
            let old: Option<(i64, Vec<u8>)> = st
                .query_row(params![v.rtype, v.id, v.version as i64 - 1], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let (rid, old_keys) = old.ok_or_else(|| {
                StoreError::Backend(format!(
                    "{}/{} is not at version {}",
                    v.rtype,
                    v.id,
                    v.version - 1
                ))
            })?;
            conn.prepare_cached(
                "UPDATE res SET version = ?1, last_updated = ?2, deleted = ?3, tag_keys = ?4 WHERE rid = ?5",
            )?
            .execute(params![v.version as i64, v.last_updated_ms, deleted, tag_keys, rid])?;
            let mut del =
                conn.prepare_cached("DELETE FROM ix_tag WHERE pid = ?1 AND tag = ?2 AND rid = ?3")?;
            for key in old_keys.chunks_exact(16) {
                let (mut p, mut t) = ([0u8; 8], [0u8; 8]);
                p.copy_from_slice(&key[..8]);
                t.copy_from_slice(&key[8..]);
                del.execute(params![i64::from_be_bytes(p), i64::from_be_bytes(t), rid])?;
            }
            for table in ["ix_ref", "ix_date", "ix_num", "ix_qty"] {
                conn.prepare_cached(&format!("DELETE FROM {table} WHERE rid = ?1"))?
                    .execute([rid])?;
            }
            rid
        };
        conn.prepare_cached(
            "INSERT INTO ver (rid, version, last_updated, deleted, method, body, patients) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            rid,
            v.version as i64,
            v.last_updated_ms,
            deleted,
            v.method,
            v.sealed,
            encode_patients(&v.patients)
        ])?;
        if !v.index.is_empty() {
            let mut tag = conn.prepare_cached(
                "INSERT OR IGNORE INTO ix_tag (pid, tag, rid) VALUES (?1, ?2, ?3)",
            )?;
            let mut rf = conn
                .prepare_cached("INSERT OR IGNORE INTO ix_ref (pid, tid, ttype, url, rid) VALUES (?1, ?2, ?3, ?4, ?5)")?;
            let mut date = conn.prepare_cached(
                "INSERT OR IGNORE INTO ix_date (pid, lo, hi, rid) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut num = conn.prepare_cached(
                "INSERT OR IGNORE INTO ix_num (pid, lo, hi, rid) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut qty = conn.prepare_cached(
                "INSERT OR IGNORE INTO ix_qty (pid, tag, lo, hi, rid) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for row in &v.index {
                match row {
                    IndexRow::Tag { param, tag: t } => {
                        tag.execute(params![param.0, tag_int(t), rid])?
                    }
                    IndexRow::Ref {
                        param,
                        ttype,
                        tid,
                        url,
                    } => rf.execute(params![param.0, tid, ttype, url, rid])?,
                    IndexRow::Date { param, lo, hi } => {
                        date.execute(params![param.0, lo, hi, rid])?
                    }
                    IndexRow::Number { param, lo, hi } => {
                        num.execute(params![param.0, lo, hi, rid])?
                    }
                    IndexRow::Quantity {
                        param,
                        tag: t,
                        lo,
                        hi,
                    } => qty.execute(params![param.0, tag_int(t), lo, hi, rid])?,
                };
            }
        }
        // Care relationships stated by this version replace the resource's previous ones.
        super::care::replace(conn, rid, &v.rtype, v.care.as_ref())?;
        Ok(())
    }

    fn append_audit(&mut self, row: &AuditRow) -> Result<(), StoreError> {
        self.insert_audit_entry(row)?;
        let e = &row.stored;
        // Search keys go first to the small, append-ordered audit_ix_pending (its rows land on
        // the same last page), and move into audit_ix every AUDIT_IX_BATCH entries, sorted by
        // tag: a durable append then dirties a handful of pages instead of one random index
        // page per key. Searches read both tables, so an entry is found the moment it commits.
        let mut ix = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO audit_ix_pending (seq, tag) VALUES (?1, ?2)")?;
        for tag in &row.tags {
            ix.execute(params![e.seq as i64, tag_int(tag)])?;
        }
        if e.seq.is_multiple_of(AUDIT_IX_BATCH) {
            self.move_pending_audit_keys()?;
        }
        Ok(())
    }

    fn append_audit_rows(&mut self, rows: &[AuditRow]) -> Result<(), StoreError> {
        if rows.len() < AUDIT_IX_DIRECT {
            for row in rows {
                self.append_audit(row)?;
            }
            return Ok(());
        }
        // A batch as large as a pending batch (a fold of the read journal) sorts its own keys
        // and writes them straight into audit_ix: the same locality as the pending table gives
        // single appends, without writing and deleting every key a second time.
        let mut keys: Vec<(i64, i64)> = Vec::with_capacity(rows.len() * 4);
        for row in rows {
            self.insert_audit_entry(row)?;
            let seq = row.stored.seq as i64;
            keys.extend(row.tags.iter().map(|t| (tag_int(t), seq)));
        }
        keys.sort_unstable();
        keys.dedup();
        let mut ix = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO audit_ix (tag, seq) VALUES (?1, ?2)")?;
        for (tag, seq) in keys {
            ix.execute(params![tag, seq])?;
        }
        // The batch may have passed a multiple of AUDIT_IX_BATCH: move what single appends left
        // pending, so the pending table stays small.
        self.move_pending_audit_keys()
    }

    fn set_audit_fold_mark(&mut self, journal: &[u8], upto: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO audit_fold (journal, upto) VALUES (?1, ?2)")?
            .execute(params![journal, upto as i64])?;
        Ok(())
    }

    fn put_system_record(
        &mut self,
        kind: &str,
        key: &str,
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO system_record (kind, key, body) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![kind, key, sealed])?;
        Ok(())
    }

    fn nested(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), RestError>,
    ) -> Result<(), RestError> {
        self.conn
            .execute_batch("SAVEPOINT entry")
            .map_err(StoreError::from)?;
        let result = f(self);
        if result.is_err() {
            self.conn
                .execute_batch("ROLLBACK TO entry")
                .map_err(StoreError::from)?;
        }
        self.conn
            .execute_batch("RELEASE entry")
            .map_err(StoreError::from)?;
        result
    }

    fn insert_patient_key(
        &mut self,
        patient: &str,
        wrapped: &[u8],
        created_ms: i64,
    ) -> Result<u32, StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO patient_key (patient, wrapped, created) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![patient, wrapped, created_ms])?;
        u32::try_from(self.conn.last_insert_rowid())
            .ok()
            .filter(|r| r & carevault_crypto::PATIENT_KEY_FLAG == 0)
            .ok_or_else(|| StoreError::Backend("the patient key table is full".into()))
    }

    fn reseal(
        &mut self,
        table: &SealedTable,
        key: i64,
        old: &[u8],
        new: &[u8],
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE {name} SET {body} = ?1 WHERE {k} = ?2 AND {body} = ?3",
            name = table.name,
            body = table.body,
            k = table.key
        );
        let n = self
            .conn
            .prepare_cached(&sql)?
            .execute(params![new, key, old])?;
        Ok(n == 1)
    }

    fn put_rotation_cursor(&mut self, c: &RotationCursor) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO key_rotation (tbl, target_key, cursor, started, total, done) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                c.table,
                i64::from(c.target_key),
                c.cursor,
                c.started_ms,
                c.total as i64,
                c.done as i64
            ])?;
        Ok(())
    }

    fn clear_rotation(&mut self) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM key_rotation", [])?;
        Ok(())
    }

    fn erase_patient_key(
        &mut self,
        patient: &str,
        erased_ms: i64,
    ) -> Result<Option<ErasedRows>, StoreError> {
        let Some((row, _)) = ReadTx::patient_key(self, patient)? else {
            return Ok(None);
        };
        let conn = self.conn;
        let key_id = (row | carevault_crypto::PATIENT_KEY_FLAG)
            .to_be_bytes()
            .to_vec();
        // Every version sealed under the key, and whether it is its resource's current one.
        let mut st = conn.prepare(
            "SELECT v.seq, v.rid, v.version = r.version FROM ver v JOIN res r ON r.rid = v.rid \
             WHERE length(v.body) > 0 AND substr(v.body, 2, 4) = ?1",
        )?;
        let hits: Vec<(i64, i64, bool)> = st
            .query_map([key_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        drop(st);
        let mut resources = 0u64;
        for (seq, rid, current) in &hits {
            // An erased version reads as a deletion, its patients column included.
            conn.prepare_cached(
                "UPDATE ver SET body = X'', deleted = 1, patients = '' WHERE seq = ?1",
            )?
            .execute([seq])?;
            if *current {
                resources += 1;
                let tag_keys: Vec<u8> = conn
                    .prepare_cached("SELECT tag_keys FROM res WHERE rid = ?1")?
                    .query_row([rid], |r| r.get(0))?;
                let mut del = conn.prepare_cached(
                    "DELETE FROM ix_tag WHERE pid = ?1 AND tag = ?2 AND rid = ?3",
                )?;
                for key in tag_keys.chunks_exact(16) {
                    let (mut p, mut t) = ([0u8; 8], [0u8; 8]);
                    p.copy_from_slice(&key[..8]);
                    t.copy_from_slice(&key[8..]);
                    del.execute(params![i64::from_be_bytes(p), i64::from_be_bytes(t), rid])?;
                }
                for table in ["ix_ref", "ix_date", "ix_num", "ix_qty"] {
                    conn.prepare_cached(&format!("DELETE FROM {table} WHERE rid = ?1"))?
                        .execute([rid])?;
                }
                conn.prepare_cached("UPDATE res SET deleted = 1, tag_keys = X'' WHERE rid = ?1")?
                    .execute([rid])?;
                super::care::remove(conn, *rid)?;
            }
        }
        // The key row goes with secure_delete on, and so does the whole table it lived in:
        // earlier updates (re-wraps by rotations) and page splits leave stale copies of cells in
        // a page's free space, which a row delete does not reach. Copying the live rows into a
        // fresh table and dropping the old one with secure_delete on zeroes every page it had;
        // the caller then checkpoints the log so no older page image survives there either.
        conn.execute_batch("PRAGMA secure_delete=ON;")?;
        let rebuilt = (|| -> Result<(), StoreError> {
            conn.prepare_cached("DELETE FROM patient_key WHERE pkid = ?1")?
                .execute([i64::from(row)])?;
            let seq: i64 = conn.query_row(
                "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'patient_key'",
                [],
                |r| r.get(0),
            )?;
            conn.execute_batch(&format!(
                "DROP TABLE IF EXISTS patient_key_rebuild; {ddl}
                 INSERT INTO patient_key_rebuild SELECT pkid, patient, wrapped, created FROM patient_key;
                 DROP TABLE patient_key;
                 ALTER TABLE patient_key_rebuild RENAME TO patient_key;",
                ddl = super::schema::patient_key_ddl("patient_key_rebuild")
            ))?;
            let seq = seq.max(i64::from(row));
            conn.execute(
                "UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = 'patient_key'",
                [seq],
            )?;
            if conn.changes() == 0 {
                conn.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('patient_key', ?1)",
                    [seq],
                )?;
            }
            Ok(())
        })();
        conn.execute_batch("PRAGMA secure_delete=OFF;")?;
        rebuilt?;
        conn.prepare_cached(
            "INSERT OR REPLACE INTO patient_key_erased (pkid, patient, erased) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![i64::from(row), patient, erased_ms])?;
        Ok(Some(ErasedRows {
            key_row: row,
            resources,
            versions: hits.len() as u64,
        }))
    }

    fn delete_system_record(&mut self, kind: &str, key: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM system_record WHERE kind = ?1 AND key = ?2")?
            .execute(params![kind, key])?;
        Ok(n > 0)
    }
}

/// Translates a plan into a SELECT yielding matching `rid`s (deduplicated), pushing bind values.
///
/// The first clause drives; every further clause is a correlated `EXISTS` probe on its index
/// (an index seek per candidate), so a selective first clause never pays for materialising a
/// large second one, as an `INTERSECT` would.
fn plan_sql(plan: &Plan, args: &mut Vec<Sql>) -> String {
    if plan.clauses.is_empty() {
        args.push(Sql::Text(plan.rtype.clone()));
        return "SELECT rid FROM res WHERE rtype = ? AND deleted = 0".into();
    }
    let mut parts = plan.clauses.iter().map(|clause| {
        let ors: Vec<String> = clause
            .iter()
            .map(|c| format!("SELECT rid FROM ({})", cond_sql(&plan.rtype, c, args)))
            .collect();
        match ors.len() {
            0 => "SELECT rid FROM res WHERE 0".to_owned(),
            1 => ors.into_iter().next().unwrap_or_default(),
            // UNION deduplicates.
            _ => ors.join(" UNION "),
        }
    });
    let Some(first) = parts.next() else {
        return "SELECT rid FROM res WHERE 0".into();
    };
    let probes: Vec<String> = parts
        .map(|p| format!("EXISTS (SELECT 1 FROM ({p}) WHERE rid = d.rid)"))
        .collect();
    if probes.is_empty() {
        format!("SELECT DISTINCT rid FROM ({first})")
    } else {
        format!(
            "SELECT DISTINCT d.rid FROM ({first}) d WHERE {}",
            probes.join(" AND ")
        )
    }
}

fn range_sql(range: &RangeCond, args: &mut Vec<Sql>, lo: &str, hi: &str) -> String {
    let mut parts = Vec::new();
    for b in &range.bounds {
        let (col, op, v) = match *b {
            Bound::LoLt(v) => (lo, "<", v),
            Bound::LoGe(v) => (lo, ">=", v),
            Bound::HiGt(v) => (hi, ">", v),
            Bound::HiLe(v) => (hi, "<=", v),
        };
        parts.push(format!("{col} {op} ?"));
        args.push(Sql::Real(v));
    }
    if parts.is_empty() {
        "1".into()
    } else {
        parts.join(" AND ")
    }
}

fn not_in(rtype: &str, inner: String, args_before: Vec<Sql>, args: &mut Vec<Sql>) -> String {
    args.push(Sql::Text(rtype.to_owned()));
    args.extend(args_before);
    format!("SELECT rid FROM res WHERE rtype = ? AND deleted = 0 AND rid NOT IN ({inner})")
}

fn cond_sql(rtype: &str, cond: &Cond, args: &mut Vec<Sql>) -> String {
    match cond {
        Cond::Id(id) => {
            args.push(Sql::Text(rtype.to_owned()));
            args.push(Sql::Text(id.clone()));
            "SELECT rid FROM res WHERE rtype = ? AND id = ? AND deleted = 0".into()
        }
        Cond::LastUpdated(range) => {
            args.push(Sql::Text(rtype.to_owned()));
            let r = range_sql(range, args, "last_updated", "(last_updated + 1)");
            let r = if range.negate {
                format!("NOT ({r})")
            } else {
                r
            };
            format!("SELECT rid FROM res WHERE rtype = ? AND deleted = 0 AND {r}")
        }
        Cond::Tag { param, tag } => {
            args.push(Sql::Integer(pid(param)));
            args.push(Sql::Integer(tag_int(tag)));
            "SELECT rid FROM ix_tag WHERE pid = ? AND tag = ?".into()
        }
        Cond::AnyTag { param, tags } => {
            if tags.is_empty() {
                return "SELECT rid FROM res WHERE 0".into();
            }
            args.push(Sql::Integer(pid(param)));
            let qs: Vec<&str> = tags
                .iter()
                .map(|t| {
                    args.push(Sql::Integer(tag_int(t)));
                    "?"
                })
                .collect();
            format!(
                "SELECT rid FROM ix_tag WHERE pid = ? AND tag IN ({})",
                qs.join(",")
            )
        }
        Cond::AllTags { param, tags } => {
            if tags.is_empty() {
                return "SELECT rid FROM res WHERE 0".into();
            }
            let parts: Vec<String> = tags
                .iter()
                .map(|t| {
                    args.push(Sql::Integer(pid(param)));
                    args.push(Sql::Integer(tag_int(t)));
                    "SELECT rid FROM ix_tag WHERE pid = ? AND tag = ?".to_owned()
                })
                .collect();
            parts.join(" INTERSECT ")
        }
        Cond::NoTag { param, tags } => {
            let mut inner_args = vec![Sql::Integer(pid(param))];
            let qs: Vec<&str> = tags
                .iter()
                .map(|t| {
                    inner_args.push(Sql::Integer(tag_int(t)));
                    "?"
                })
                .collect();
            let inner = format!(
                "SELECT rid FROM ix_tag WHERE pid = ? AND tag IN ({})",
                qs.join(",")
            );
            not_in(rtype, inner, inner_args, args)
        }
        Cond::Ref {
            param,
            ttype,
            tid,
            url,
        } => {
            args.push(Sql::Integer(pid(param)));
            let mut sql = String::from("SELECT rid FROM ix_ref WHERE pid = ?");
            for (col, v) in [("tid", tid), ("ttype", ttype), ("url", url)] {
                if !v.is_empty() {
                    sql.push_str(&format!(" AND {col} = ?"));
                    args.push(Sql::Text(v.clone()));
                }
            }
            sql
        }
        Cond::Date { param, range } => ranged(rtype, "ix_date", param, None, range, args),
        Cond::Number { param, range } => ranged(rtype, "ix_num", param, None, range, args),
        Cond::Quantity { param, tag, range } => {
            ranged(rtype, "ix_qty", param, Some(tag), range, args)
        }
        Cond::Missing {
            param,
            kind,
            missing,
        } => {
            let table = match kind {
                IndexKind::Tag => "ix_tag",
                IndexKind::Ref => "ix_ref",
                IndexKind::Date => "ix_date",
                IndexKind::Number => "ix_num",
                IndexKind::Quantity => "ix_qty",
            };
            let inner = format!("SELECT rid FROM {table} WHERE pid = ?");
            if *missing {
                not_in(rtype, inner, vec![Sql::Integer(pid(param))], args)
            } else {
                args.push(Sql::Integer(pid(param)));
                inner
            }
        }
        Cond::Chain {
            param,
            target,
            inner,
        } => {
            args.push(Sql::Integer(pid(param)));
            args.push(Sql::Text(target.clone()));
            args.push(Sql::Text(inner.rtype.clone()));
            let sub = plan_sql(inner, args);
            format!(
                "SELECT rid FROM ix_ref WHERE pid = ? AND ttype = ? AND tid IN (SELECT id FROM res WHERE rtype = ? AND rid IN ({sub}))"
            )
        }
        Cond::Has { param, inner } => {
            args.push(Sql::Text(rtype.to_owned()));
            args.push(Sql::Integer(pid(param)));
            args.push(Sql::Text(rtype.to_owned()));
            let sub = plan_sql(inner, args);
            format!(
                "SELECT rid FROM res WHERE rtype = ? AND deleted = 0 AND id IN \
                 (SELECT tid FROM ix_ref WHERE pid = ? AND ttype = ? AND rid IN ({sub}))"
            )
        }
        Cond::Compartment {
            params,
            patients,
            own_id,
        } => compartment_sql(rtype, params, patients, *own_id, args),
        Cond::Nothing => "SELECT rid FROM res WHERE 0".into(),
    }
}

/// The resources of `rtype` in the compartment of some of `patients` and of none outside them
/// (visibility; the lists are bound as parameters, so a caller's care set of a few thousand
/// patients stays one statement).
fn compartment_sql(
    rtype: &str,
    params: &[ParamRef],
    patients: &[String],
    own_id: bool,
    args: &mut Vec<Sql>,
) -> String {
    if patients.is_empty() || (params.is_empty() && !own_id) {
        return "SELECT rid FROM res WHERE 0".into();
    }
    let marks = |n: usize| vec!["?"; n].join(",");
    let push_pids = |args: &mut Vec<Sql>| {
        for p in params {
            args.push(Sql::Integer(pid(p)));
        }
    };
    let mut sql = if own_id {
        args.push(Sql::Text(rtype.to_owned()));
        args.extend(patients.iter().map(|p| Sql::Text(p.clone())));
        format!(
            "SELECT rid FROM res WHERE rtype = ? AND deleted = 0 AND id IN ({})",
            marks(patients.len())
        )
    } else {
        push_pids(args);
        args.extend(patients.iter().map(|p| Sql::Text(p.clone())));
        format!(
            "SELECT rid FROM ix_ref WHERE pid IN ({}) AND ttype = 'Patient' AND tid IN ({})",
            marks(params.len()),
            marks(patients.len())
        )
    };
    if !params.is_empty() {
        push_pids(args);
        args.extend(patients.iter().map(|p| Sql::Text(p.clone())));
        sql.push_str(&format!(
            " AND rid NOT IN (SELECT rid FROM ix_ref WHERE pid IN ({}) AND ttype = 'Patient' AND tid NOT IN ({}))",
            marks(params.len()),
            marks(patients.len())
        ));
    }
    sql
}

fn ranged(
    rtype: &str,
    table: &str,
    param: &ParamRef,
    tag: Option<&carevault_crypto::BlindTag>,
    range: &RangeCond,
    args: &mut Vec<Sql>,
) -> String {
    let mut inner_args = vec![Sql::Integer(pid(param))];
    let mut sql = format!("SELECT rid FROM {table} WHERE pid = ?");
    if let Some(t) = tag {
        sql.push_str(" AND tag = ?");
        inner_args.push(Sql::Integer(tag_int(t)));
    }
    let r = range_sql(range, &mut inner_args, "lo", "hi");
    // `ne`: resources holding a value outside the range (not those without any value).
    if range.negate {
        sql.push_str(&format!(" AND NOT ({r})"));
    } else {
        sql.push_str(&format!(" AND {r}"));
    }
    let _ = rtype;
    args.extend(inner_args);
    sql
}
