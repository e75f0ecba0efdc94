//! Search and history execution: compiles query parameters into a plan, runs it on a read
//! snapshot (or inside a write transaction for conditional interactions), applies sorting,
//! paging, `_include`/`_revinclude`, `_summary` and `_elements`, and builds the Bundle.
//!
//! Paging is by offset over a stable order (creation order, or the requested sort with creation
//! order as tie-break); the links carry `_offset`. A resource created or deleted between two page
//! requests can shift later pages by one; no resource is ever reported under two orders.

pub mod parse;
pub mod visibility;

use std::cmp::Ordering;
use std::collections::HashSet;

use carevault_crypto::Keyring;
use carevault_fhir::{IndexValue, SearchParamType};
use serde_json::{Map, Value, json};

use crate::backend::{HistoryScope, NativeSort, ParamRef, ReadTx, ResKey, VersionRecord};
use crate::error::RestError;
use crate::plan::{Cond, Plan};
use crate::rest::{Stored, open_record};
use crate::{fhirdefs, instant};
use parse::{Check, Parsed, Verifier};
use visibility::{Op, Visibility};

/// Default page size.
pub const DEFAULT_COUNT: usize = 20;
/// Largest page size honoured.
pub const MAX_COUNT: usize = 1000;
/// Most candidates a search may sort or verify in memory (sorting on blind-indexed values and
/// `:contains` need the decrypted resources).
pub const MEMORY_CAP: usize = 10_000;

/// A search request.
#[derive(Debug, Clone, Copy)]
pub struct SearchRequest<'a> {
    /// Resource type searched.
    pub rtype: &'a str,
    /// Compartment search: `("Patient", id)`.
    pub compartment: Option<(&'a str, &'a str)>,
    /// Decoded query pairs, in order.
    pub params: &'a [(String, String)],
    /// The FHIR base URL, e.g. `https://127.0.0.1:8443/fhir`.
    pub base_url: &'a str,
    /// `Prefer: handling=strict`: unknown or unsupported parameters are errors.
    pub strict: bool,
}

/// A history request: system (`rtype` None), type, or instance (`rtype` and `id`).
#[derive(Debug, Clone, Copy)]
pub struct HistoryRequest<'a> {
    /// Resource type, for type and instance history.
    pub rtype: Option<&'a str>,
    /// Logical id, for instance history.
    pub id: Option<&'a str>,
    /// Decoded query pairs (`_count`, `_since`, `_offset`).
    pub params: &'a [(String, String)],
    /// The FHIR base URL.
    pub base_url: &'a str,
}

/// Decodes an `application/x-www-form-urlencoded` query string into pairs.
pub fn decode_query(q: &str) -> Vec<(String, String)> {
    q.trim_start_matches('?')
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/|,$".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Total {
    None,
    Accurate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Summary {
    False,
    True,
    Count,
    Text,
    Data,
}

struct Include {
    source: String,
    code: String,
    target: Option<String>,
    iterate: bool,
}

struct Compiled {
    plan: Plan,
    verifiers: Vec<Verifier>,
    kept: Vec<(String, String)>,
    ignored: Vec<String>,
    count: usize,
    offset: usize,
    sort: Vec<(String, bool)>,
    includes: Vec<Include>,
    revincludes: Vec<Include>,
    summary: Summary,
    elements: Option<Vec<String>>,
    total: Total,
}

fn parse_usize(name: &str, v: &str) -> Result<usize, RestError> {
    v.parse()
        .map_err(|_| RestError::bad(format!("'{name}' must be a non-negative integer")))
}

fn parse_include(name: &str, v: &str, rev: bool) -> Result<Include, RestError> {
    let iterate = name.ends_with(":iterate") || name.ends_with(":recurse");
    let parts: Vec<&str> = v.split(':').collect();
    let (source, code, target) = match parts.as_slice() {
        [s, c] => (*s, *c, None),
        [s, c, t] => (*s, *c, Some((*t).to_owned())),
        _ => {
            return Err(RestError::bad(format!(
                "'{name}' must have the form Type:parameter[:targetType]"
            )));
        }
    };
    if !fhirdefs::definitions().is_resource_type(source) {
        return Err(RestError::bad(format!(
            "'{name}' names an unknown resource type"
        )));
    }
    if code != "*"
        && parse::lookup(source, code).is_none_or(|sp| sp.kind != SearchParamType::Reference)
    {
        return Err(RestError::bad(format!(
            "'{name}' names '{code}', which is not a reference parameter of {source}"
        )));
    }
    let _ = rev;
    Ok(Include {
        source: source.into(),
        code: code.into(),
        target,
        iterate,
    })
}

fn compile(
    keyring: &Keyring,
    vis: &Visibility,
    rtype: &str,
    compartment: Option<(&str, &str)>,
    params: &[(String, String)],
    base_url: &str,
    strict: bool,
) -> Result<Compiled, RestError> {
    if !fhirdefs::definitions().is_resource_type(rtype) {
        return Err(RestError::bad(format!(
            "{rtype} is not a FHIR R4 resource type"
        )));
    }
    let mut c = Compiled {
        plan: Plan::all(rtype),
        verifiers: Vec::new(),
        kept: Vec::new(),
        ignored: Vec::new(),
        count: DEFAULT_COUNT,
        offset: 0,
        sort: Vec::new(),
        includes: Vec::new(),
        revincludes: Vec::new(),
        summary: Summary::False,
        elements: None,
        total: Total::Accurate,
    };
    if let Some((ctype, cid)) = compartment {
        if ctype != "Patient" {
            return Err(RestError::NotSupported(format!(
                "the {ctype} compartment is not supported"
            )));
        }
        let mut conds: Vec<Cond> = fhirdefs::definitions()
            .compartment_params(rtype)
            .iter()
            .map(|p| Cond::Ref {
                param: ParamRef::new(rtype, p),
                ttype: "Patient".into(),
                tid: cid.into(),
                url: String::new(),
            })
            .collect();
        if rtype == "Patient" {
            conds.push(Cond::Id(cid.into()));
        }
        if conds.is_empty() {
            return Err(RestError::bad(format!(
                "{rtype} is not in the Patient compartment"
            )));
        }
        c.plan.clauses.push(conds);
    }
    for (name, value) in params {
        let mut keep = true;
        match name.as_str() {
            "_count" => {
                c.count = parse_usize(name, value)?.min(MAX_COUNT);
                keep = false;
            }
            "_offset" => {
                c.offset = parse_usize(name, value)?;
                keep = false;
            }
            "_sort" => {
                for key in value.split(',').filter(|k| !k.is_empty()) {
                    let (code, desc) = match key.strip_prefix('-') {
                        Some(k) => (k, true),
                        None => (key, false),
                    };
                    if code != "_id"
                        && code != "_lastUpdated"
                        && parse::lookup(rtype, code).is_none()
                    {
                        return Err(RestError::bad(format!(
                            "cannot sort by '{code}': not a search parameter of {rtype}"
                        )));
                    }
                    c.sort.push((code.to_owned(), desc));
                }
            }
            "_total" => {
                c.total = match value.as_str() {
                    "none" => Total::None,
                    "estimate" | "accurate" => Total::Accurate,
                    _ => {
                        return Err(RestError::bad(
                            "'_total' must be none, estimate or accurate",
                        ));
                    }
                }
            }
            "_summary" => {
                c.summary = match value.as_str() {
                    "true" => Summary::True,
                    "false" => Summary::False,
                    "count" => Summary::Count,
                    "text" => Summary::Text,
                    "data" => Summary::Data,
                    _ => {
                        return Err(RestError::bad(
                            "'_summary' must be true, false, count, text or data",
                        ));
                    }
                }
            }
            "_elements" => {
                c.elements = Some(
                    value
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect(),
                )
            }
            "_format" | "_pretty" => keep = false,
            n if n == "_include" || n.starts_with("_include:") => {
                c.includes.push(parse_include(n, value, false)?)
            }
            n if n == "_revinclude" || n.starts_with("_revinclude:") => {
                c.revincludes.push(parse_include(n, value, true)?)
            }
            _ => match parse::parse_param(keyring, rtype, name, value, base_url)? {
                Parsed::Clause(conds, verifier) => {
                    c.plan.clauses.push(conds);
                    c.verifiers.extend(verifier);
                }
                Parsed::Unsupported(why) => {
                    if strict {
                        return Err(RestError::BadRequest {
                            diagnostics: format!(
                                "search parameter '{name}' is not supported: {why}"
                            ),
                            expression: None,
                        });
                    }
                    c.ignored.push(name.clone());
                    keep = false;
                }
            },
        }
        if keep {
            c.kept.push((name.clone(), value.clone()));
        }
    }
    // Only visible resources match, and chains and `_has` only match through visible ones.
    vis.restrict(&mut c.plan);
    Ok(c)
}

/// Keys of the resources of `rtype` matching a (raw, URL-encoded) query, as conditional
/// interactions need: unknown parameters are errors, result parameters are not allowed. Only
/// resources `vis` lets the caller read can match, so a conditional interaction answers the same
/// whether or not a resource hidden from the caller meets its criteria.
pub fn matching_keys(
    r: &mut dyn ReadTx,
    keyring: &Keyring,
    vis: &Visibility,
    rtype: &str,
    query: &str,
) -> Result<Vec<ResKey>, RestError> {
    let params = decode_query(query);
    if params.is_empty() {
        return Err(RestError::PreconditionFailed(
            "conditional criteria must not be empty".into(),
        ));
    }
    let c = compile(keyring, vis, rtype, None, &params, "", true)?;
    let keys = r.search(&c.plan, NativeSort::Key, 0, MEMORY_CAP + 1)?;
    if c.verifiers.is_empty() {
        return Ok(keys);
    }
    let recs = r.load(&keys)?;
    let mut out = Vec::new();
    for rec in recs {
        let stored = open_record(r, keyring, &rec)?;
        let v = parse_json(&stored)?;
        if c.verifiers.iter().all(|ver| verify(rtype, &v, ver)) {
            out.push(rec.key);
        }
    }
    Ok(out)
}

fn parse_json(s: &Stored) -> Result<Value, RestError> {
    serde_json::from_slice(&s.json).map_err(|e| {
        RestError::Integrity(format!(
            "stored JSON of {}/{} unreadable: {e}",
            s.rtype, s.id
        ))
    })
}

fn verify(rtype: &str, resource: &Value, v: &Verifier) -> bool {
    let values: Vec<String> = fhirdefs::extract_index(rtype, resource)
        .into_iter()
        .filter(|e| e.param == v.code)
        .filter_map(|e| match e.value {
            IndexValue::String { normalized, .. } => Some(normalized),
            _ => None,
        })
        .collect();
    v.any_of.iter().any(|check| {
        values.iter().any(|n| match check {
            Check::Prefix(p) => n.starts_with(p.as_str()),
            Check::Contains(p) => n.contains(p.as_str()),
        })
    })
}

/// One matching resource: its key, its stored form and its parsed JSON.
type Hit = (ResKey, Stored, Value);

#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum SortVal {
    Num(f64),
    Str(String),
}

fn sort_value(
    rtype: &str,
    resource: &Value,
    s: &Stored,
    code: &str,
    desc: bool,
) -> Option<SortVal> {
    match code {
        "_id" => return Some(SortVal::Str(s.id.clone())),
        "_lastUpdated" => return Some(SortVal::Num(s.last_updated_ms as f64)),
        _ => {}
    }
    let vals = fhirdefs::extract_index(rtype, resource)
        .into_iter()
        .filter(|e| e.param == code)
        .filter_map(|e| {
            Some(match e.value {
                IndexValue::String { normalized, .. } => SortVal::Str(normalized),
                IndexValue::Token { code, text, .. } => SortVal::Str(code.or(text)?),
                IndexValue::Reference { rtype, id, url } => {
                    SortVal::Str(url.unwrap_or_else(|| {
                        format!("{}/{}", rtype.unwrap_or_default(), id.unwrap_or_default())
                    }))
                }
                IndexValue::Date { start, end } => {
                    SortVal::Num(if desc { end as f64 } else { start as f64 })
                }
                IndexValue::Number { value, .. } | IndexValue::Quantity { value, .. } => {
                    SortVal::Num(value)
                }
                IndexValue::Uri(u) => SortVal::Str(u),
            })
        });
    if desc {
        vals.max_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal))
    } else {
        vals.min_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal))
    }
}

fn native_sort(sort: &[(String, bool)]) -> Option<NativeSort> {
    match sort {
        [] => Some(NativeSort::Key),
        [(c, d)] if c == "_id" => Some(NativeSort::Id { descending: *d }),
        [(c, d)] if c == "_lastUpdated" => Some(NativeSort::LastUpdated { descending: *d }),
        _ => None,
    }
}

/// Runs a search on a snapshot and builds the `searchset` Bundle, seeing only what `vis` allows.
pub fn run(
    r: &mut dyn ReadTx,
    keyring: &Keyring,
    vis: &Visibility,
    req: &SearchRequest<'_>,
) -> Result<Value, RestError> {
    let c = compile(
        keyring,
        vis,
        req.rtype,
        req.compartment,
        req.params,
        req.base_url,
        req.strict,
    )?;
    let native = native_sort(&c.sort).filter(|_| c.verifiers.is_empty());
    let (page, total): (Vec<Hit>, Option<usize>) = match native {
        Some(sort) => {
            let want_total = c.total == Total::Accurate || c.summary == Summary::Count;
            if c.summary == Summary::Count {
                (Vec::new(), Some(r.count(&c.plan)?))
            } else {
                let keys = r.search(&c.plan, sort, c.offset, c.count)?;
                // A short first page is the whole answer: no second query for the total.
                let total = match (want_total, c.offset == 0 && keys.len() < c.count) {
                    (false, _) => None,
                    (true, true) => Some(keys.len()),
                    (true, false) => Some(r.count(&c.plan)?),
                };
                let mut page = Vec::with_capacity(keys.len());
                for rec in r.load(&keys)? {
                    let s = open_record(r, keyring, &rec)?;
                    let v = parse_json(&s)?;
                    page.push((rec.key, s, v));
                }
                (page, total)
            }
        }
        None => {
            let keys = r.search(&c.plan, NativeSort::Key, 0, MEMORY_CAP + 1)?;
            if keys.len() > MEMORY_CAP {
                return Err(RestError::bad(format!(
                    "this search matches more than {MEMORY_CAP} resources, too many to sort or verify; add criteria to narrow it"
                )));
            }
            let mut all = Vec::with_capacity(keys.len());
            for rec in r.load(&keys)? {
                let s = open_record(r, keyring, &rec)?;
                let v = parse_json(&s)?;
                if c.verifiers.iter().all(|ver| verify(req.rtype, &v, ver)) {
                    all.push((rec.key, s, v));
                }
            }
            if !c.sort.is_empty() {
                let mut keyed: Vec<(Vec<Option<SortVal>>, Hit)> = all
                    .into_iter()
                    .map(|item| {
                        let k = c
                            .sort
                            .iter()
                            .map(|(code, desc)| {
                                sort_value(req.rtype, &item.2, &item.1, code, *desc)
                            })
                            .collect();
                        (k, item)
                    })
                    .collect();
                keyed.sort_by(|(ka, a), (kb, b)| {
                    for ((va, vb), (_, desc)) in ka.iter().zip(kb).zip(&c.sort) {
                        let o = match (va, vb) {
                            (None, None) => Ordering::Equal,
                            (None, Some(_)) => Ordering::Greater,
                            (Some(_), None) => Ordering::Less,
                            (Some(x), Some(y)) => {
                                let o = x.partial_cmp(y).unwrap_or(Ordering::Equal);
                                if *desc { o.reverse() } else { o }
                            }
                        };
                        if o != Ordering::Equal {
                            return o;
                        }
                    }
                    a.0.cmp(&b.0)
                });
                all = keyed.into_iter().map(|(_, item)| item).collect();
            }
            let total = Some(all.len());
            let page = if c.summary == Summary::Count {
                Vec::new()
            } else {
                all.into_iter().skip(c.offset).take(c.count).collect()
            };
            (
                page,
                total.filter(|_| c.total == Total::Accurate || c.summary == Summary::Count),
            )
        }
    };
    let included = includes(r, keyring, vis, &c, req.rtype, &page)?;
    Ok(searchset(req, &c, page, included, total))
}

fn ref_params(rtype: &str) -> Vec<String> {
    fhirdefs::definitions()
        .search_params(rtype)
        .iter()
        .filter(|p| p.kind == SearchParamType::Reference)
        .map(|p| p.code.clone())
        .collect()
}

fn includes(
    r: &mut dyn ReadTx,
    keyring: &Keyring,
    vis: &Visibility,
    c: &Compiled,
    rtype: &str,
    page: &[Hit],
) -> Result<Vec<(Stored, Value)>, RestError> {
    if c.includes.is_empty() && c.revincludes.is_empty() {
        return Ok(Vec::new());
    }
    let mut seen: HashSet<(String, String)> = page
        .iter()
        .map(|(_, s, _)| (s.rtype.clone(), s.id.clone()))
        .collect();
    let mut out: Vec<Hit> = Vec::new();
    let level: Vec<(ResKey, String, String)> = page
        .iter()
        .map(|(k, s, _)| (*k, s.rtype.clone(), s.id.clone()))
        .collect();
    let first = include_level(r, keyring, vis, c, &level, false, &mut seen)?;
    let next: Vec<(ResKey, String, String)> = first
        .iter()
        .map(|(k, s, _)| (*k, s.rtype.clone(), s.id.clone()))
        .collect();
    out.extend(first);
    let _ = rtype;
    if c.includes.iter().chain(&c.revincludes).any(|i| i.iterate) {
        out.extend(include_level(r, keyring, vis, c, &next, true, &mut seen)?);
    }
    Ok(out.into_iter().map(|(_, s, v)| (s, v)).collect())
}

fn include_level(
    r: &mut dyn ReadTx,
    keyring: &Keyring,
    vis: &Visibility,
    c: &Compiled,
    from: &[(ResKey, String, String)],
    iterate_only: bool,
    seen: &mut HashSet<(String, String)>,
) -> Result<Vec<Hit>, RestError> {
    let mut found: Vec<Hit> = Vec::new();
    let push = |r: &mut dyn ReadTx,
                rec: VersionRecord,
                seen: &mut HashSet<(String, String)>,
                found: &mut Vec<_>|
     -> Result<(), RestError> {
        if rec.deleted
            || vis.access(Op::Read, &rec.rtype) == visibility::Access::Hidden
            || seen.contains(&(rec.rtype.clone(), rec.id.clone()))
        {
            return Ok(());
        }
        let s = open_record(r, keyring, &rec)?;
        let v = parse_json(&s)?;
        // A resource the caller may not see is left out as if it did not exist.
        if !vis.allows(Op::Read, &rec.rtype, &v) {
            return Ok(());
        }
        seen.insert((rec.rtype.clone(), rec.id.clone()));
        found.push((rec.key, s, v));
        Ok(())
    };
    for inc in c.includes.iter().filter(|i| !iterate_only || i.iterate) {
        let keys: Vec<ResKey> = from
            .iter()
            .filter(|(_, t, _)| *t == inc.source)
            .map(|(k, _, _)| *k)
            .collect();
        if keys.is_empty() {
            continue;
        }
        let codes = if inc.code == "*" {
            ref_params(&inc.source)
        } else {
            vec![inc.code.clone()]
        };
        for code in codes {
            for (tt, tid) in r.refs_from(&keys, &ParamRef::new(&inc.source, &code))? {
                if inc.target.as_ref().is_some_and(|t| *t != tt) {
                    continue;
                }
                if let Some(rec) = r.current(&tt, &tid)? {
                    push(r, rec, seen, &mut found)?;
                }
            }
        }
    }
    for inc in c.revincludes.iter().filter(|i| !iterate_only || i.iterate) {
        let targets: Vec<(String, String)> = from
            .iter()
            .filter(|(_, t, _)| inc.target.as_ref().is_none_or(|want| want == t))
            .map(|(_, t, id)| (t.clone(), id.clone()))
            .collect();
        if targets.is_empty() {
            continue;
        }
        let codes = if inc.code == "*" {
            ref_params(&inc.source)
        } else {
            vec![inc.code.clone()]
        };
        for code in codes {
            let keys = r.refs_to(&ParamRef::new(&inc.source, &code), &targets)?;
            for rec in r.load(&keys)? {
                push(r, rec, seen, &mut found)?;
            }
        }
    }
    Ok(found)
}

const SUBSETTED: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

fn mark_subsetted(obj: &mut Map<String, Value>) {
    let meta = obj
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(m) = meta {
        let tags = m.entry("tag").or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = tags {
            a.push(json!({"system": SUBSETTED, "code": "SUBSETTED"}));
        }
    }
}

/// Applies `_summary` / `_elements` to one resource.
fn shape(c: &Compiled, resource: Value) -> Value {
    let Value::Object(obj) = resource else {
        return resource;
    };
    let keep: Option<Vec<&str>> = match (&c.elements, c.summary) {
        (Some(els), _) => Some(els.iter().map(String::as_str).collect()),
        (None, Summary::Text) => Some(vec!["text"]),
        _ => None,
    };
    let mut out = match keep {
        Some(keep) => obj
            .into_iter()
            .filter(|(k, _)| {
                matches!(k.as_str(), "resourceType" | "id" | "meta") || keep.contains(&k.as_str())
            })
            .collect(),
        // `true`: the elements the definitions mark isSummary (plus id and meta).
        None if c.summary == Summary::True => {
            let defs = carevault_fhir::definitions();
            let rtype = obj
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            obj.into_iter()
                .filter(|(k, _)| {
                    matches!(k.as_str(), "resourceType" | "id" | "meta")
                        || defs.is_summary_element(&rtype, k)
                })
                .collect()
        }
        // `data`: everything but the narrative.
        None if c.summary == Summary::Data => {
            obj.into_iter().filter(|(k, _)| k != "text").collect()
        }
        None => return Value::Object(obj),
    };
    mark_subsetted(&mut out);
    Value::Object(out)
}

fn link(req: &SearchRequest<'_>, c: &Compiled, offset: usize) -> String {
    let base = req.base_url.trim_end_matches('/');
    let path = match req.compartment {
        Some((ct, cid)) => format!("{base}/{ct}/{cid}/{}", req.rtype),
        None => format!("{base}/{}", req.rtype),
    };
    let mut q: Vec<String> = c
        .kept
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect();
    q.push(format!("_count={}", c.count));
    q.push(format!("_offset={offset}"));
    format!("{path}?{}", q.join("&"))
}

fn searchset(
    req: &SearchRequest<'_>,
    c: &Compiled,
    page: Vec<Hit>,
    included: Vec<(Stored, Value)>,
    total: Option<usize>,
) -> Value {
    let base = req.base_url.trim_end_matches('/');
    let mut links = vec![json!({"relation": "self", "url": link(req, c, c.offset)})];
    if c.summary != Summary::Count {
        links.push(json!({"relation": "first", "url": link(req, c, 0)}));
        if c.offset > 0 {
            links.push(json!({"relation": "previous", "url": link(req, c, c.offset.saturating_sub(c.count))}));
        }
        let more = match total {
            Some(t) => c.offset + page.len() < t,
            None => page.len() == c.count && c.count > 0,
        };
        if more {
            links.push(json!({"relation": "next", "url": link(req, c, c.offset + c.count)}));
        }
        if let Some(t) = total.filter(|_| c.count > 0) {
            let last = if t == 0 {
                0
            } else {
                (t - 1) / c.count * c.count
            };
            links.push(json!({"relation": "last", "url": link(req, c, last)}));
        }
    }
    let mut entries: Vec<Value> = Vec::new();
    for (_, s, v) in page {
        entries.push(json!({"fullUrl": format!("{base}/{}/{}", s.rtype, s.id), "resource": shape(c, v), "search": {"mode": "match"}}));
    }
    for (s, v) in included {
        entries.push(json!({"fullUrl": format!("{base}/{}/{}", s.rtype, s.id), "resource": shape(c, v), "search": {"mode": "include"}}));
    }
    if !c.ignored.is_empty() {
        let issues: Vec<Value> = c
            .ignored
            .iter()
            .map(|n| json!({"severity": "warning", "code": "not-supported", "diagnostics": format!("Search parameter '{n}' is not supported and was ignored.")}))
            .collect();
        entries.push(json!({"resource": {"resourceType": "OperationOutcome", "issue": issues}, "search": {"mode": "outcome"}}));
    }
    let mut b = Map::new();
    b.insert("resourceType".into(), json!("Bundle"));
    b.insert("id".into(), json!(crate::rest::new_id()));
    b.insert(
        "meta".into(),
        json!({"lastUpdated": instant::format_ms(instant::now_ms())}),
    );
    b.insert("type".into(), json!("searchset"));
    if let Some(t) = total {
        b.insert("total".into(), json!(t));
    }
    b.insert("link".into(), Value::Array(links));
    if !entries.is_empty() {
        b.insert("entry".into(), Value::Array(entries));
    }
    Value::Object(b)
}

/// Runs a history request on a snapshot and builds the `history` Bundle.
///
/// Under a restricted [`Visibility`] the versions are filtered one by one (a version is shown when
/// the caller may read it, a deletion when the version before it could be read), `total` is given
/// only when the filtered scan reached the end, and a scan longer than [`HISTORY_SCAN_CAP`]
/// versions is refused with advice to narrow it.
pub fn history(
    r: &mut dyn ReadTx,
    keyring: &Keyring,
    vis: &Visibility,
    req: &HistoryRequest<'_>,
) -> Result<Value, RestError> {
    let mut count = DEFAULT_COUNT;
    let mut offset = 0;
    let mut since = None;
    for (k, v) in req.params {
        match k.as_str() {
            "_count" => count = parse_usize(k, v)?.min(MAX_COUNT),
            "_offset" => offset = parse_usize(k, v)?,
            "_since" => {
                since = Some(
                    instant::parse_range(v)
                        .ok_or_else(|| RestError::bad("'_since' must be an instant"))?
                        .0,
                )
            }
            "_format" | "_pretty" => {}
            other => {
                return Err(RestError::NotSupported(format!(
                    "history parameter '{other}' is not supported"
                )));
            }
        }
    }
    let scope = match (req.rtype, req.id) {
        (Some(t), Some(id)) => HistoryScope::Instance(t, id),
        (Some(t), None) => HistoryScope::Type(t),
        _ => HistoryScope::System,
    };
    if let HistoryScope::Instance(t, id) = scope {
        let visible = match r.current(t, id)? {
            None => false,
            Some(cur) => version_visible(r, keyring, vis, &cur)?,
        };
        if !visible {
            return Err(RestError::NotFound {
                rtype: t.into(),
                id: id.into(),
            });
        }
    }
    let filtered = match scope {
        HistoryScope::Instance(t, _) | HistoryScope::Type(t) => {
            vis.access(Op::Read, t) != visibility::Access::All
        }
        HistoryScope::System => !vis.is_everything(),
    };
    let (recs, total) = if filtered {
        filtered_history(r, keyring, vis, scope, since, offset, count)?
    } else {
        (
            r.history(scope, since, offset, count)?
                .into_iter()
                .map(|rec| (rec, None))
                .collect(),
            Some(r.history_count(scope, since)?),
        )
    };
    let base = req.base_url.trim_end_matches('/');
    let mut entries = Vec::with_capacity(recs.len());
    let shown = recs.len();
    for (rec, opened) in recs {
        let mut e = Map::new();
        e.insert(
            "fullUrl".into(),
            json!(format!("{base}/{}/{}", rec.rtype, rec.id)),
        );
        let (status, url) = match rec.method.as_str() {
            "POST" => ("201 Created", rec.rtype.clone()),
            "DELETE" => ("204 No Content", format!("{}/{}", rec.rtype, rec.id)),
            _ => ("200 OK", format!("{}/{}", rec.rtype, rec.id)),
        };
        if !rec.deleted {
            let s = match opened {
                Some(s) => s,
                None => open_record(r, keyring, &rec)?,
            };
            e.insert("resource".into(), parse_json(&s)?);
        }
        let method = if rec.method == "PATCH" {
            "PATCH"
        } else {
            rec.method.as_str()
        };
        e.insert("request".into(), json!({"method": method, "url": url}));
        e.insert(
            "response".into(),
            json!({"status": status, "etag": format!("W/\"{}\"", rec.version), "lastModified": instant::format_ms(rec.last_updated_ms)}),
        );
        entries.push(Value::Object(e));
    }
    let path = match (req.rtype, req.id) {
        (Some(t), Some(id)) => format!("{base}/{t}/{id}/_history"),
        (Some(t), None) => format!("{base}/{t}/_history"),
        _ => format!("{base}/_history"),
    };
    let since_q = req
        .params
        .iter()
        .find(|(k, _)| k == "_since")
        .map(|(_, v)| format!("&_since={}", percent_encode(v)))
        .unwrap_or_default();
    let mk = |off: usize| format!("{path}?_count={count}&_offset={off}{since_q}");
    let mut links = vec![json!({"relation": "self", "url": mk(offset)})];
    if offset > 0 {
        links.push(json!({"relation": "previous", "url": mk(offset.saturating_sub(count))}));
    }
    let more = match total {
        Some(t) => offset + shown < t,
        None => true,
    };
    if more {
        links.push(json!({"relation": "next", "url": mk(offset + count)}));
    }
    let mut b = Map::new();
    b.insert("resourceType".into(), json!("Bundle"));
    b.insert("id".into(), json!(crate::rest::new_id()));
    b.insert(
        "meta".into(),
        json!({"lastUpdated": instant::format_ms(instant::now_ms())}),
    );
    b.insert("type".into(), json!("history"));
    if let Some(t) = total {
        b.insert("total".into(), json!(t));
    }
    b.insert("link".into(), Value::Array(links));
    b.insert("entry".into(), Value::Array(entries));
    Ok(Value::Object(b))
}

/// Most versions a filtered history request examines.
pub const HISTORY_SCAN_CAP: usize = 100_000;

/// A version a history shows, with its content when deciding its visibility opened it.
type Shown = (VersionRecord, Option<Stored>);

/// The visible versions of `scope`, newest first, after skipping `offset`, at most `count`
/// (each with its content when deciding its visibility opened it); the number of visible versions
/// when the scan reached the end.
fn filtered_history(
    r: &mut dyn ReadTx,
    keyring: &Keyring,
    vis: &Visibility,
    scope: HistoryScope<'_>,
    since: Option<i64>,
    offset: usize,
    count: usize,
) -> Result<(Vec<Shown>, Option<usize>), RestError> {
    const BATCH: usize = 500;
    let mut seen_visible = 0usize;
    let mut out = Vec::new();
    let mut scanned = 0usize;
    loop {
        let batch = r.history(scope, since, scanned, BATCH)?;
        let n = batch.len();
        for rec in batch {
            // A version whose visibility depends on its patients is opened once, here.
            let opened = match vis.access(Op::Read, &rec.rtype) {
                visibility::Access::Patients(_) if !rec.deleted => {
                    Some(open_visible(r, keyring, vis, &rec)?)
                }
                _ => None,
            };
            let visible = match &opened {
                Some(s) => s.is_some(),
                None => version_visible(r, keyring, vis, &rec)?,
            };
            if visible {
                if seen_visible >= offset && out.len() < count {
                    out.push((rec, opened.flatten()));
                }
                seen_visible += 1;
                if out.len() == count && seen_visible > offset + count {
                    // One more visible version exists: there is a next page.
                    return Ok((out, None));
                }
            }
        }
        scanned += n;
        if n < BATCH {
            return Ok((out, Some(seen_visible)));
        }
        if scanned >= HISTORY_SCAN_CAP {
            return Err(RestError::bad(format!(
                "this history covers more than {HISTORY_SCAN_CAP} versions, too many to filter; ask for the history of one resource, or narrow it with _since"
            )));
        }
    }
}

/// Whether the caller may read one stored version: its own content decides, and a deletion
/// (which has none) is visible when the version before it is.
pub(crate) fn version_visible(
    r: &mut dyn ReadTx,
    keyring: &Keyring,
    vis: &Visibility,
    rec: &VersionRecord,
) -> Result<bool, RestError> {
    match vis.access(Op::Read, &rec.rtype) {
        visibility::Access::All => return Ok(true),
        visibility::Access::Hidden => return Ok(false),
        visibility::Access::Patients(_) => {}
    }
    if !rec.deleted {
        return Ok(open_visible(r, keyring, vis, rec)?.is_some());
    }
    if rec.version <= 1 {
        return Ok(false);
    }
    match r.version(&rec.rtype, &rec.id, rec.version - 1)? {
        Some(prev) if !prev.deleted => Ok(open_visible(r, keyring, vis, &prev)?.is_some()),
        _ => Ok(false),
    }
}

/// Opens a version with content (not a deletion) when the caller may read it, `None` when it may
/// not (then, for a type the caller cannot reach at all, without opening it).
///
/// When the caller's access to the type depends on the patient, the patients recorded with the
/// version ([`VersionRecord::patients`]) decide, without parsing the JSON; a version written
/// before the store recorded them is parsed and its Patient compartment worked out once, and JSON
/// that cannot be read is then not visible. Either way the result carries the patients that
/// decided (in [`Stored::patients`]) for the caller's audit entry. A caller who sees the whole
/// type gets the version as stored, with the recorded patients (`None` when there are none).
pub(crate) fn open_visible(
    r: &mut dyn ReadTx,
    keyring: &Keyring,
    vis: &Visibility,
    rec: &VersionRecord,
) -> Result<Option<Stored>, RestError> {
    let access = vis.access(Op::Read, &rec.rtype);
    match access {
        visibility::Access::Hidden => return Ok(None),
        // open_record carries rec.patients.
        visibility::Access::All => return open_record(r, keyring, rec).map(Some),
        visibility::Access::Patients(_) => {}
    }
    // Opened before deciding, as when the decision parses it: a destroyed key still answers
    // 410 and a broken record 500, whoever asks.
    let mut s = open_record(r, keyring, rec)?;
    let patients = match s.patients.take() {
        Some(recorded) => recorded,
        None => {
            let Ok(v) = serde_json::from_slice::<Value>(&s.json) else {
                return Ok(None);
            };
            carevault_fhir::patient_compartment_refs(&rec.rtype, &v)
        }
    };
    if !access.admits(&patients) {
        return Ok(None);
    }
    s.patients = Some(patients);
    Ok(Some(s))
}
