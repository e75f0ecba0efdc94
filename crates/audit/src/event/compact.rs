//! The compact canonical form of an audit entry: the bytes the Merkle leaf and the chain cover.
//!
//! An entry is stored as the facts of its [`AuditRecord`], not as the rendered AuditEvent: most
//! of a BALP AuditEvent is fixed text (code systems, codes, displays) that [`to_json`] derives
//! from the record, so storing it would only make every entry ~4 times larger to hash, seal,
//! write and verify. [`canonical_bytes`] writes format version 1:
//!
//! ```text
//! 0x01 {"t":<recorded ms>,"k":"rest"|<kind code>,"i":<interaction>,"op":<operation>,"a":<action>,
//!       "o":<outcome>,"od":..,"pu":[..],"u":{"n":..,"r":..,"ro":[..]},"c":..,"ad":..,"ua":..,
//!       "n":<node>,"p":[..],"rs":[..],"q":<base64>,"rq":..,"bg":..,"d":[[key,value],..]}
//! ```
//!
//! The first byte is the format version (a JSON document never starts with 0x01, so the earlier
//! full-JSON entries are told apart too); then compact JSON with the keys always in this order,
//! absent and empty elements left out, strings escaped as `serde_json` escapes them. `t`, `k`,
//! `a`, `o` and `n` are always present, `i` only for REST kinds, `op` only for operations.
//! [`decode`] accepts exactly the bytes [`canonical_bytes`] writes for some record (it re-encodes
//! what it read and compares), so one record has one encoding and a stored entry that is not in
//! the current format is an error that names the format byte, never a silent misreading.
//! [`render`] is `to_json(decode(bytes))`: the API, reports and SIEM export all show the same
//! AuditEvent the record has always rendered to.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

use super::{
    Action, AuditRecord, EventKind, NON_REST_KINDS, Outcome, RestInteraction, UserRef, to_json,
};

/// The format byte of the current compact canonical form.
pub const FORMAT_V1: u8 = 1;

/// Why stored canonical bytes could not be read back as an audit record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The bytes are empty.
    #[error("the audit entry is empty")]
    Empty,
    /// The first byte is not a format this build knows.
    #[error("the audit entry has format byte {0:#04x}, and this build reads only format 0x01")]
    UnknownFormat(u8),
    /// The bytes after the format byte are not the expected JSON object.
    #[error("the audit entry is malformed: {0}")]
    Malformed(String),
    /// The bytes decode, but are not the one encoding of the record they decode to.
    #[error("the audit entry is not in canonical form")]
    NotCanonical,
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_key(out: &mut Vec<u8>, key: &str) {
    out.push(b',');
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

fn push_opt(out: &mut Vec<u8>, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        push_key(out, key);
        push_str(out, v);
    }
}

fn push_list<'a>(out: &mut Vec<u8>, key: &str, values: impl ExactSizeIterator<Item = &'a str>) {
    if values.len() == 0 {
        return;
    }
    push_key(out, key);
    out.push(b'[');
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_str(out, v);
    }
    out.push(b']');
}

/// The compact canonical bytes of `record` (format [`FORMAT_V1`]): what the Merkle leaf and the
/// chain hash cover, and what the store seals.
pub fn canonical_bytes(record: &AuditRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(FORMAT_V1);
    out.extend_from_slice(b"{\"t\":");
    out.extend_from_slice(record.recorded_ms.to_string().as_bytes());
    match &record.kind {
        EventKind::Rest(i) => {
            push_opt(&mut out, "k", Some("rest"));
            push_opt(&mut out, "i", Some(i.code()));
            if let RestInteraction::Operation(name) = i {
                push_opt(&mut out, "op", Some(name));
            }
        }
        kind => push_opt(&mut out, "k", Some(kind.code())),
    }
    push_opt(&mut out, "a", Some(record.action.code()));
    push_opt(&mut out, "o", Some(record.outcome.code()));
    push_opt(&mut out, "od", record.outcome_desc.as_deref());
    push_list(&mut out, "pu", record.purpose.iter().map(String::as_str));
    if let Some(user) = &record.user {
        out.extend_from_slice(b",\"u\":{\"n\":");
        push_str(&mut out, &user.name);
        push_opt(&mut out, "r", user.reference.as_deref());
        push_list(&mut out, "ro", user.roles.iter().map(String::as_str));
        out.push(b'}');
    }
    push_opt(&mut out, "c", record.client.as_deref());
    push_opt(&mut out, "ad", record.address.as_deref());
    push_opt(&mut out, "ua", record.user_agent.as_deref());
    push_opt(&mut out, "n", Some(&record.node));
    push_list(&mut out, "p", record.patients.iter().map(String::as_str));
    push_list(&mut out, "rs", record.resources.iter().map(String::as_str));
    if let Some(q) = &record.query {
        push_opt(&mut out, "q", Some(&B64.encode(q)));
    }
    push_opt(&mut out, "rq", record.request_id.as_deref());
    push_opt(&mut out, "bg", record.break_glass_reason.as_deref());
    if !record.detail.is_empty() {
        push_key(&mut out, "d");
        out.push(b'[');
        for (i, (k, v)) in record.detail.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'[');
            push_str(&mut out, k);
            out.push(b',');
            push_str(&mut out, v);
            out.push(b']');
        }
        out.push(b']');
    }
    out.push(b'}');
    out
}

fn malformed(what: &str) -> FormatError {
    FormatError::Malformed(what.to_owned())
}

fn opt_string(v: &Value, key: &str) -> Result<Option<String>, FormatError> {
    match v.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(FormatError::Malformed(format!("`{key}` is not a string"))),
    }
}

fn string(v: &Value, key: &str) -> Result<String, FormatError> {
    opt_string(v, key)?.ok_or_else(|| FormatError::Malformed(format!("`{key}` is missing")))
}

fn strings(v: &Value, key: &str) -> Result<Vec<String>, FormatError> {
    match v.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| FormatError::Malformed(format!("`{key}` holds a non-string")))
            })
            .collect(),
        Some(_) => Err(FormatError::Malformed(format!("`{key}` is not a list"))),
    }
}

/// The record whose canonical bytes are `bytes`; fails unless `bytes` is exactly what
/// [`canonical_bytes`] writes for it.
pub fn decode(bytes: &[u8]) -> Result<AuditRecord, FormatError> {
    let (&format, body) = bytes.split_first().ok_or(FormatError::Empty)?;
    if format != FORMAT_V1 {
        return Err(FormatError::UnknownFormat(format));
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| FormatError::Malformed(e.to_string()))?;
    if !v.is_object() {
        return Err(malformed("not a JSON object"));
    }
    let recorded_ms = v
        .get("t")
        .and_then(Value::as_i64)
        .ok_or_else(|| malformed("`t` is not an integer"))?;
    let k = string(&v, "k")?;
    let kind = if k == "rest" {
        let code = string(&v, "i")?;
        let op = opt_string(&v, "op")?;
        if (code == "operation") != op.is_some() {
            return Err(malformed("`op` must be present exactly for operations"));
        }
        EventKind::Rest(
            RestInteraction::from_code(&code, op.as_deref())
                .ok_or_else(|| malformed("unknown interaction"))?,
        )
    } else {
        NON_REST_KINDS
            .into_iter()
            .find(|kind| kind.code() == k)
            .ok_or_else(|| malformed("unknown kind"))?
    };
    let action = Action::from_code(&string(&v, "a")?).ok_or_else(|| malformed("unknown action"))?;
    let outcome =
        Outcome::from_code(&string(&v, "o")?).ok_or_else(|| malformed("unknown outcome"))?;
    let user = match v.get("u") {
        None => None,
        Some(u) if u.is_object() => Some(UserRef {
            name: string(u, "n")?,
            reference: opt_string(u, "r")?,
            roles: strings(u, "ro")?,
        }),
        Some(_) => return Err(malformed("`u` is not an object")),
    };
    let query = match opt_string(&v, "q")? {
        None => None,
        Some(q) => Some(
            B64.decode(q.as_bytes())
                .map_err(|_| malformed("`q` is not base64"))?,
        ),
    };
    let detail = match v.get("d") {
        None => Vec::new(),
        Some(Value::Array(pairs)) => pairs
            .iter()
            .map(|p| match p.as_array().map(Vec::as_slice) {
                Some([Value::String(k), Value::String(v)]) => Ok((k.clone(), v.clone())),
                _ => Err(malformed("`d` holds something other than [key, value]")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(malformed("`d` is not a list")),
    };
    let record = AuditRecord {
        recorded_ms,
        kind,
        action,
        outcome,
        outcome_desc: opt_string(&v, "od")?,
        purpose: strings(&v, "pu")?,
        user,
        client: opt_string(&v, "c")?,
        address: opt_string(&v, "ad")?,
        user_agent: opt_string(&v, "ua")?,
        node: string(&v, "n")?,
        patients: strings(&v, "p")?,
        resources: strings(&v, "rs")?,
        query,
        request_id: opt_string(&v, "rq")?,
        break_glass_reason: opt_string(&v, "bg")?,
        detail,
    };
    // One record, one encoding: anything else (unknown keys, another order, spaces, other
    // escapes) is refused rather than rendered.
    if canonical_bytes(&record) != bytes {
        return Err(FormatError::NotCanonical);
    }
    Ok(record)
}

/// The AuditEvent (without `id`) of stored canonical bytes: [`to_json`] of [`decode`].
pub fn render(bytes: &[u8]) -> Result<Value, FormatError> {
    decode(bytes).map(|r| to_json(&r))
}
