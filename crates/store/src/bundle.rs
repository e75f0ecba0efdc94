//! Batch and transaction Bundles: entry parsing, `urn:uuid` and conditional reference
//! resolution, processing order, all-or-nothing transactions in one write job, per-entry
//! savepoints for batches, and the response Bundle.

use std::collections::HashMap;

use carevault_crypto::Keyring;
use serde_json::{Value, json};

use crate::backend::{NewVersion, ReadTx, Tx};
use crate::error::RestError;
use crate::rest::{self, Rest, Stored, Written};
use crate::search::visibility::{Op, Visibility};
use crate::{instant, search};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Put,
    Delete,
    Patch,
}

struct Entry {
    idx: usize,
    method: Method,
    /// Type and, for instance URLs, id; `query` for conditional URLs.
    rtype: String,
    id: Option<String>,
    query: Option<String>,
    version: Option<String>,
    full_url: Option<String>,
    resource: Option<Value>,
    if_none_exist: Option<String>,
    if_match: Option<u64>,
    /// Prepared outside the writer (plain POSTs whose references are all resolved).
    prepared: Option<(NewVersion, Stored)>,
    /// The literal references of a prepared resource, checked inside the transaction.
    prepared_refs: Option<Vec<(String, String)>>,
}

/// What one entry produced.
enum Outcome {
    Written(Written),
    Deleted(Option<u64>),
    Read(Value),
    Failed(RestError),
}

fn parse_if_match(v: &str) -> Option<u64> {
    v.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

fn parse_entry(idx: usize, mut e: Value, base_url: &str) -> Result<Entry, RestError> {
    let bad = |why: &str| RestError::BadRequest {
        diagnostics: format!("Bundle.entry[{idx}] {why}"),
        expression: Some(format!("Bundle.entry[{idx}]")),
    };
    let resource = e.as_object_mut().and_then(|o| o.remove("resource"));
    let req = e.get("request").ok_or_else(|| bad("has no request"))?;
    let method = match req.get("method").and_then(Value::as_str) {
        Some("GET") | Some("HEAD") => Method::Get,
        Some("POST") => Method::Post,
        Some("PUT") => Method::Put,
        Some("DELETE") => Method::Delete,
        Some("PATCH") => Method::Patch,
        _ => return Err(bad("has no valid request.method")),
    };
    let url = req
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("has no request.url"))?;
    let base = base_url.trim_end_matches('/');
    let url = url
        .strip_prefix(base)
        .map(|u| u.trim_start_matches('/'))
        .unwrap_or(url)
        .trim_start_matches('/');
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (url, None),
    };
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (rtype, id, version) = match segs.as_slice() {
        [t] => ((*t).to_owned(), None, None),
        [t, id] => ((*t).to_owned(), Some((*id).to_owned()), None),
        [t, id, "_history", v] => (
            (*t).to_owned(),
            Some((*id).to_owned()),
            Some((*v).to_owned()),
        ),
        _ => return Err(bad("has a request.url this server does not understand")),
    };
    if matches!(method, Method::Post | Method::Put) && resource.is_none() {
        return Err(bad("has no resource"));
    }
    match method {
        Method::Post if id.is_some() || query.is_some() => {
            return Err(bad("POST must target a resource type"));
        }
        Method::Put | Method::Delete | Method::Patch if id.is_none() && query.is_none() => {
            return Err(bad("must target a resource id or conditional criteria"));
        }
        _ => {}
    }
    Ok(Entry {
        idx,
        method,
        rtype,
        id,
        query,
        version,
        full_url: e.get("fullUrl").and_then(Value::as_str).map(str::to_owned),
        resource,
        if_none_exist: req
            .get("ifNoneExist")
            .and_then(Value::as_str)
            .map(str::to_owned),
        if_match: req
            .get("ifMatch")
            .and_then(Value::as_str)
            .and_then(parse_if_match),
        prepared: None,
        prepared_refs: None,
    })
}

/// Re-points `Bundle.entry[i].resource`-relative expressions.
fn prefix_issues(idx: usize, rtype: &str, err: RestError) -> RestError {
    match err {
        RestError::Invalid(issues) => RestError::Invalid(
            issues
                .into_iter()
                .map(|mut i| {
                    let rest = i
                        .expression
                        .strip_prefix(rtype)
                        .unwrap_or(&i.expression)
                        .to_owned();
                    i.expression = format!("Bundle.entry[{idx}].resource{rest}");
                    i
                })
                .collect(),
        ),
        RestError::BadRequest {
            diagnostics,
            expression,
        } => RestError::BadRequest {
            diagnostics: format!("Bundle.entry[{idx}]: {diagnostics}"),
            expression: expression.map(|e| format!("Bundle.entry[{idx}].resource.{e}")),
        },
        RestError::PreconditionFailed(m) => {
            RestError::PreconditionFailed(format!("Bundle.entry[{idx}]: {m}"))
        }
        other => other,
    }
}

/// Rewrites every `reference` found anywhere in `v` (extensions and contained resources
/// included) through `map`; true when any reference is left that still needs resolving.
fn rewrite_refs(
    v: &mut Value,
    map: &HashMap<String, String>,
    pending: &dyn Fn(&str) -> bool,
) -> bool {
    let mut left = false;
    match v {
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                if k == "reference"
                    && let Value::String(s) = child
                {
                    if let Some(new) = map.get(s.as_str()) {
                        *s = new.clone();
                    } else if pending(s) {
                        left = true;
                    }
                    continue;
                }
                left |= rewrite_refs(child, map, pending);
            }
        }
        Value::Array(a) => {
            for child in a {
                left |= rewrite_refs(child, map, pending);
            }
        }
        _ => {}
    }
    left
}

/// The JSON Patch a PATCH entry carries: a Binary with `contentType` `application/json-patch+json`
/// and the patch, base64-encoded, in `data`.
fn json_patch_of(idx: usize, resource: Option<&Value>) -> Result<Value, RestError> {
    use base64::Engine as _;
    let unsupported = || {
        RestError::NotSupported(format!(
            "Bundle.entry[{idx}]: a PATCH entry must carry a Binary with contentType application/json-patch+json"
        ))
    };
    let r = resource.ok_or_else(unsupported)?;
    if r.get("resourceType").and_then(Value::as_str) != Some("Binary")
        || r.get("contentType").and_then(Value::as_str) != Some("application/json-patch+json")
    {
        return Err(unsupported());
    }
    let data = r
        .get("data")
        .and_then(Value::as_str)
        .ok_or_else(unsupported)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| {
            RestError::bad(format!(
                "Bundle.entry[{idx}]: the Binary data is not base64"
            ))
        })?;
    serde_json::from_slice(&bytes)
        .map_err(|_| RestError::bad(format!("Bundle.entry[{idx}]: the patch is not JSON")))
}

/// Whether any `reference` in `v` satisfies `pred`.
fn has_ref(v: &Value, pred: &dyn Fn(&str) -> bool) -> bool {
    match v {
        Value::Object(o) => o.iter().any(|(k, c)| match (k.as_str(), c) {
            ("reference", Value::String(s)) => pred(s),
            _ => has_ref(c, pred),
        }),
        Value::Array(a) => a.iter().any(|c| has_ref(c, pred)),
        _ => false,
    }
}

fn is_conditional_ref(s: &str) -> bool {
    !s.starts_with('#') && !s.contains("://") && s.contains('?')
}

fn response(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Written(w) => {
            let s = &w.stored;
            json!({"response": {
                "status": if w.created { "201 Created" } else { "200 OK" },
                "location": format!("{}/{}/_history/{}", s.rtype, s.id, s.version),
                "etag": format!("W/\"{}\"", s.version),
                "lastModified": instant::format_ms(s.last_updated_ms),
            }})
        }
        Outcome::Deleted(Some(v)) => {
            json!({"response": {"status": "204 No Content", "etag": format!("W/\"{v}\"")}})
        }
        Outcome::Deleted(None) => json!({"response": {"status": "204 No Content"}}),
        Outcome::Read(body) => json!({"resource": body, "response": {"status": "200 OK"}}),
        Outcome::Failed(e) => json!({"response": {
            "status": format!("{} {}", e.status(), reason(e.status())),
            "outcome": e.to_outcome(),
        }}),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        422 => "Unprocessable Entity",
        501 => "Not Implemented",
        _ => "Internal Server Error",
    }
}

fn response_bundle(kind: &str, outcomes: &[Outcome]) -> Value {
    json!({
        "resourceType": "Bundle",
        "id": rest::new_id(),
        "type": kind,
        "entry": outcomes.iter().map(response).collect::<Vec<_>>(),
    })
}

/// Processes a batch or transaction Bundle.
pub fn process(rest: &Rest, bundle: Value, base_url: &str) -> Result<Value, RestError> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(RestError::BadRequest {
            diagnostics: "the body must be a Bundle".into(),
            expression: Some("resourceType".into()),
        });
    }
    let kind = bundle
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let mut bundle = bundle;
    let raw = match bundle.as_object_mut().and_then(|o| o.remove("entry")) {
        Some(Value::Array(a)) => a,
        None => Vec::new(),
        Some(_) => return Err(RestError::bad("Bundle.entry must be an array")),
    };
    match kind.as_str() {
        "transaction" => transaction(rest, raw, base_url),
        "batch" => batch(rest, raw, base_url),
        _ => Err(RestError::BadRequest {
            diagnostics: "only batch and transaction Bundles can be processed".into(),
            expression: Some("Bundle.type".into()),
        }),
    }
}

fn batch(rest: &Rest, raw: Vec<Value>, base_url: &str) -> Result<Value, RestError> {
    let mut entries: Vec<Result<Entry, RestError>> = raw
        .into_iter()
        .enumerate()
        .map(|(i, e)| parse_entry(i, e, base_url))
        .collect();
    for e in entries.iter_mut() {
        if let Ok(entry) = e
            && let Some(res) = &entry.resource
            && entry.method != Method::Patch
            && let Err(err) = rest::check_resource(&entry.rtype, res)
        {
            *e = Err(prefix_issues(entry.idx, &entry.rtype, err));
        }
    }
    let keyring = rest.store().keyring().clone();
    let vis = rest.visibility().clone();
    let base = base_url.to_owned();
    let outcomes = rest.write(move |tx| {
        let mut outcomes = Vec::with_capacity(entries.len());
        for e in entries {
            let outcome = match e {
                Err(err) => Outcome::Failed(err),
                Ok(entry) => {
                    let mut result = None;
                    let mut entry = Some(entry);
                    let r = tx.nested(&mut |tx| {
                        let Some(entry) = entry.take() else {
                            return Ok(());
                        };
                        let o = run_entry(tx, &keyring, &vis, entry, &base)?;
                        result = Some(o);
                        Ok(())
                    });
                    match (r, result) {
                        (Err(err), _) => Outcome::Failed(err),
                        (Ok(()), Some(o)) => o,
                        (Ok(()), None) => {
                            Outcome::Failed(RestError::Store("the entry produced no result".into()))
                        }
                    }
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    })?;
    Ok(response_bundle("batch-response", &outcomes))
}

/// Runs one entry of a batch (conditional references inside it are resolved first).
fn run_entry(
    tx: &mut dyn Tx,
    keyring: &Keyring,
    vis: &Visibility,
    mut entry: Entry,
    base: &str,
) -> Result<Outcome, RestError> {
    if let Some(res) = entry.resource.as_mut() {
        let map = resolve_conditional_refs(tx, keyring, vis, entry.idx, std::slice::from_mut(res))?;
        rewrite_refs(res, &map, &|_| false);
    }
    run_write(tx, keyring, vis, entry, base)
}

fn run_write(
    tx: &mut dyn Tx,
    keyring: &Keyring,
    vis: &Visibility,
    entry: Entry,
    base: &str,
) -> Result<Outcome, RestError> {
    let (idx, rtype) = (entry.idx, entry.rtype.clone());
    let wrap = |e| prefix_issues(idx, &rtype, e);
    Ok(match entry.method {
        Method::Post => {
            let res = entry
                .resource
                .ok_or_else(|| RestError::bad("missing resource"))?;
            Outcome::Written(
                rest::create_in_tx(
                    tx,
                    keyring,
                    vis,
                    &entry.rtype,
                    res,
                    entry.if_none_exist.as_deref(),
                )
                .map_err(wrap)?,
            )
        }
        Method::Put => {
            let res = entry
                .resource
                .ok_or_else(|| RestError::bad("missing resource"))?;
            match (&entry.id, &entry.query) {
                (Some(id), _) => {
                    if res.get("id").and_then(Value::as_str) != Some(id.as_str()) {
                        return Err(wrap(RestError::BadRequest {
                            diagnostics: format!(
                                "the resource id must be {id}, the id in request.url"
                            ),
                            expression: Some("id".into()),
                        }));
                    }
                    Outcome::Written(
                        rest::put_in_tx(
                            tx,
                            keyring,
                            vis,
                            &entry.rtype,
                            id,
                            res,
                            entry.if_match,
                            "PUT",
                        )
                        .map_err(wrap)?,
                    )
                }
                (None, Some(q)) => Outcome::Written(
                    rest::conditional_update_in_tx(
                        tx,
                        keyring,
                        vis,
                        &entry.rtype,
                        q,
                        res,
                        entry.if_match,
                    )
                    .map_err(wrap)?,
                ),
                _ => return Err(wrap(RestError::bad("PUT needs an id or criteria"))),
            }
        }
        Method::Delete => match (&entry.id, &entry.query) {
            (Some(id), _) => Outcome::Deleted(
                rest::delete_in_tx(tx, keyring, vis, &entry.rtype, id).map_err(wrap)?,
            ),
            (None, Some(q)) => {
                rest::conditional_delete_in_tx(tx, keyring, vis, &entry.rtype, q).map_err(wrap)?;
                Outcome::Deleted(None)
            }
            _ => return Err(wrap(RestError::bad("DELETE needs an id or criteria"))),
        },
        Method::Patch => {
            let id = entry.id.clone().ok_or_else(|| {
                RestError::NotSupported(format!(
                    "Bundle.entry[{idx}]: conditional PATCH is not supported"
                ))
            })?;
            let patch = json_patch_of(idx, entry.resource.as_ref())?;
            Outcome::Written(
                rest::patch_in_tx(tx, keyring, vis, &entry.rtype, &id, &patch, entry.if_match)
                    .map_err(wrap)?,
            )
        }
        Method::Get => {
            let body = match (&entry.id, &entry.version) {
                (Some(id), None) => {
                    let s = rest::read_in(tx, keyring, vis, &entry.rtype, id)?;
                    serde_json::from_slice(&s.json)
                        .map_err(|e| RestError::Integrity(e.to_string()))?
                }
                (Some(id), Some(v)) => {
                    let v: u64 = v.parse().map_err(|_| RestError::NotFound {
                        rtype: entry.rtype.clone(),
                        id: id.clone(),
                    })?;
                    let rec = tx
                        .version(&entry.rtype, id, v)?
                        .filter(|r| !r.deleted)
                        .ok_or_else(|| RestError::NotFound {
                            rtype: entry.rtype.clone(),
                            id: id.clone(),
                        })?;
                    if !crate::search::version_visible(tx, keyring, vis, &rec)? {
                        return Err(RestError::NotFound {
                            rtype: entry.rtype.clone(),
                            id: id.clone(),
                        });
                    }
                    let s = rest::open_record(tx, keyring, &rec)?;
                    serde_json::from_slice(&s.json)
                        .map_err(|e| RestError::Integrity(e.to_string()))?
                }
                (None, _) => {
                    let params = search::decode_query(entry.query.as_deref().unwrap_or(""));
                    let req = search::SearchRequest {
                        rtype: &entry.rtype,
                        compartment: None,
                        params: &params,
                        base_url: base,
                        strict: false,
                    };
                    search::run(tx, keyring, vis, &req)?
                }
            };
            Outcome::Read(body)
        }
    })
}

/// Resolves every conditional reference (`Type?criteria`) in `resources` by a search inside the
/// transaction: exactly one match is required.
fn resolve_conditional_refs(
    tx: &mut dyn Tx,
    keyring: &Keyring,
    vis: &Visibility,
    idx: usize,
    resources: &mut [Value],
) -> Result<HashMap<String, String>, RestError> {
    fn collect(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, c) in o {
                    match (k.as_str(), c) {
                        ("reference", Value::String(s)) if is_conditional_ref(s) => {
                            out.push(s.clone())
                        }
                        _ => collect(c, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|c| collect(c, out)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    for r in resources.iter() {
        collect(r, &mut refs);
    }
    refs.sort();
    refs.dedup();
    let mut map = HashMap::new();
    for r in refs {
        let Some((rtype, q)) = r.split_once('?') else {
            continue;
        };
        let keys = search::matching_keys(tx, keyring, vis, rtype, q)
            .map_err(|e| prefix_issues(idx, rtype, e))?;
        if keys.len() != 1 {
            return Err(RestError::PreconditionFailed(format!(
                "Bundle.entry[{idx}]: a conditional reference to {rtype} matches {} resources; exactly one is required",
                keys.len()
            )));
        }
        let rec = tx.load(&keys)?;
        let rec = rec
            .first()
            .ok_or_else(|| RestError::Store("a matching resource vanished".into()))?;
        map.insert(r.clone(), format!("{}/{}", rec.rtype, rec.id));
    }
    Ok(map)
}

fn transaction(rest: &Rest, raw: Vec<Value>, base_url: &str) -> Result<Value, RestError> {
    let mut entries = raw
        .into_iter()
        .enumerate()
        .map(|(i, e)| parse_entry(i, e, base_url))
        .collect::<Result<Vec<_>, _>>()?;
    // Validation first, all entries, before anything is written.
    let mut issues = Vec::new();
    for e in &entries {
        if let (Some(res), false) = (&e.resource, e.method == Method::Patch) {
            match rest::check_resource(&e.rtype, res) {
                Ok(()) => {}
                Err(RestError::Invalid(list)) => {
                    if let RestError::Invalid(l) =
                        prefix_issues(e.idx, &e.rtype, RestError::Invalid(list))
                    {
                        issues.extend(l)
                    }
                }
                Err(other) => return Err(prefix_issues(e.idx, &e.rtype, other)),
            }
        }
    }
    if !issues.is_empty() {
        return Err(RestError::Invalid(issues));
    }
    // Ids known now: plain creates get fresh ids, instance PUTs keep theirs.
    let full_urls: std::collections::HashSet<String> =
        entries.iter().filter_map(|e| e.full_url.clone()).collect();
    let mut map: HashMap<String, String> = HashMap::new();
    for e in entries.iter_mut() {
        let id = match (e.method, &e.id, &e.if_none_exist) {
            (Method::Post, _, None) => {
                let id = rest::new_id();
                e.id = Some(id.clone());
                Some(id)
            }
            (Method::Put, Some(id), _) => Some(id.clone()),
            _ => None,
        };
        if let (Some(id), Some(fu)) = (id, &e.full_url) {
            map.insert(fu.clone(), format!("{}/{}", e.rtype, id));
        }
    }
    let keyring = rest.store().keyring().clone();
    let vis = rest.visibility().clone();
    // Every create must be allowed before anything is prepared or written.
    for e in &entries {
        if let (Method::Post, Some(res)) = (e.method, &e.resource)
            && !vis.allows(Op::Create, &e.rtype, res)
            && !has_ref(res, &|s| {
                s.starts_with("urn:uuid:") || is_conditional_ref(s)
            })
        {
            return Err(forbidden_create(e.idx, &e.rtype));
        }
    }
    // Conditional references resolved now, on a read snapshot, so that the resources holding
    // them can be prepared outside the writer; the transaction re-checks each one.
    let pre = pre_resolve(rest, &keyring, &entries)?;
    let mut known = map.clone();
    known.extend(pre.iter().map(|(k, v)| (k.clone(), v.clone())));
    let now = instant::now_ms();
    for e in entries.iter_mut() {
        let Some(res) = e.resource.as_mut() else {
            continue;
        };
        let left = rewrite_refs(res, &known, &|s| {
            full_urls.contains(s) || is_conditional_ref(s) || s.starts_with("urn:uuid:")
        });
        if !left
            && e.method == Method::Post
            && e.if_none_exist.is_none()
            && let (Some(id), Some(res)) = (e.id.clone(), e.resource.take())
        {
            let mut refs = Vec::new();
            rest::literal_refs(&res, &mut refs);
            e.prepared_refs = Some(refs);
            if !vis.allows(Op::Create, &e.rtype, &res) {
                return Err(forbidden_create(e.idx, &e.rtype));
            }
            e.prepared = Some(rest::prepare(&keyring, &e.rtype, &id, 1, now, res, "POST")?);
        }
    }
    let base = base_url.to_owned();
    let outcomes = rest.write(move |tx| {
        for (reference, target) in &pre {
            if resolve_one(tx, &keyring, &vis, reference)?.as_ref() != Some(target) {
                return Err(RestError::Conflict(
                    "a conditional reference changed while the transaction was being prepared; retry it".into(),
                ));
            }
        }
        map.extend(pre);
        run_transaction(tx, &keyring, &vis, entries, map, &base)
    })?;
    Ok(response_bundle("transaction-response", &outcomes))
}

/// The `Type/id` a conditional reference resolves to, when exactly one resource matches.
fn resolve_one(
    r: &mut dyn ReadTx,
    keyring: &Keyring,
    vis: &Visibility,
    reference: &str,
) -> Result<Option<String>, RestError> {
    let Some((rtype, q)) = reference.split_once('?') else {
        return Ok(None);
    };
    let keys = match search::matching_keys(r, keyring, vis, rtype, q) {
        Ok(k) => k,
        Err(_) => return Ok(None),
    };
    if keys.len() != 1 {
        return Ok(None);
    }
    Ok(r.load(&keys)?
        .first()
        .map(|rec| format!("{}/{}", rec.rtype, rec.id)))
}

/// Resolves the bundle's distinct conditional references on a read snapshot; those that do not
/// resolve to exactly one resource are left for the transaction to report.
fn pre_resolve(
    rest: &Rest,
    keyring: &Keyring,
    entries: &[Entry],
) -> Result<HashMap<String, String>, RestError> {
    let mut refs = Vec::new();
    for e in entries {
        if let Some(r) = &e.resource {
            collect_conditional(r, &mut refs);
        }
    }
    refs.sort();
    refs.dedup();
    let mut out = HashMap::new();
    if refs.is_empty() {
        return Ok(out);
    }
    let mut reader = rest.store().reader()?;
    for reference in refs {
        if let Some(target) = resolve_one(&mut *reader, keyring, rest.visibility(), &reference)? {
            out.insert(reference, target);
        }
    }
    Ok(out)
}

fn collect_conditional(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, c) in o {
                match (k.as_str(), c) {
                    ("reference", Value::String(s)) if is_conditional_ref(s) => out.push(s.clone()),
                    _ => collect_conditional(c, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| collect_conditional(c, out)),
        _ => {}
    }
}

fn run_transaction(
    tx: &mut dyn Tx,
    keyring: &Keyring,
    vis: &Visibility,
    mut entries: Vec<Entry>,
    mut map: HashMap<String, String>,
    base: &str,
) -> Result<Vec<Outcome>, RestError> {
    let mut outcomes: Vec<Option<Outcome>> = entries.iter().map(|_| None).collect();
    // 1. Deletes.
    for e in entries.iter().filter(|e| e.method == Method::Delete) {
        let o = run_write(
            tx,
            keyring,
            vis,
            Entry {
                resource: None,
                prepared: None,
                ..clone_head(e)
            },
            base,
        )?;
        outcomes[e.idx] = Some(o);
    }
    // 2. Conditional creates and conditional updates decide their ids.
    let mut by_criteria: HashMap<(String, String), String> = HashMap::new();
    let mut existing: HashMap<usize, Written> = HashMap::new();
    for e in entries.iter_mut() {
        let criteria = match (e.method, &e.if_none_exist, &e.query) {
            (Method::Post, Some(q), _) | (Method::Put, _, Some(q)) => q.clone(),
            _ => continue,
        };
        let key = (e.rtype.clone(), criteria.clone());
        let id = if let Some(id) = by_criteria.get(&key) {
            id.clone()
        } else {
            let keys = search::matching_keys(tx, keyring, vis, &e.rtype, &criteria)
                .map_err(|err| prefix_issues(e.idx, &e.rtype, err))?;
            let id = match keys.len() {
                0 => e
                    .resource
                    .as_ref()
                    .filter(|_| e.method == Method::Put)
                    .and_then(|r| r.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(rest::new_id),
                1 => {
                    let rec = tx.load(&keys)?;
                    let rec = rec
                        .first()
                        .ok_or_else(|| RestError::Store("a matching resource vanished".into()))?;
                    if e.method == Method::Post {
                        existing.insert(
                            e.idx,
                            Written {
                                created: false,
                                stored: rest::open_record(tx, keyring, rec)?,
                            },
                        );
                    }
                    rec.id.clone()
                }
                n => {
                    return Err(RestError::PreconditionFailed(format!(
                        "Bundle.entry[{}]: the conditional criteria match {n} {} resources",
                        e.idx, e.rtype
                    )));
                }
            };
            by_criteria.insert(key, id.clone());
            id
        };
        if let Some(fu) = &e.full_url {
            map.insert(fu.clone(), format!("{}/{}", e.rtype, id));
        }
        e.id = Some(id);
    }
    // 3. References to those ids and conditional references (each resolved once, errors naming
    // the first entry that holds it).
    for e in entries.iter_mut() {
        let Some(res) = e.resource.as_mut() else {
            continue;
        };
        rewrite_refs(res, &map, &|_| false);
        let cond = resolve_conditional_refs(tx, keyring, vis, e.idx, std::slice::from_mut(res))?;
        if !cond.is_empty() {
            rewrite_refs(res, &cond, &|_| false);
            map.extend(cond);
        }
    }
    // Referential integrity: every reference names a resource that exists or that this
    // transaction creates.
    let creating: std::collections::HashSet<String> = map.values().cloned().collect();
    for e in entries.iter() {
        let res = e.resource.as_ref();
        let check = |tx: &mut dyn Tx, r: &Value| {
            rest::check_references(tx, r, &creating)
                .map_err(|err| prefix_issues(e.idx, &e.rtype, err))
        };
        if let Some(r) = res {
            if has_ref(r, &|s| s.starts_with("urn:uuid:")) {
                return Err(RestError::BadRequest {
                    diagnostics: format!(
                        "Bundle.entry[{}]: a urn:uuid reference names no entry of this Bundle",
                        e.idx
                    ),
                    expression: None,
                });
            }
            check(tx, r)?;
        } else if let Some(refs) = &e.prepared_refs {
            for (t, id) in refs {
                if !creating.contains(&format!("{t}/{id}"))
                    && tx.current(t, id)?.is_none_or(|c| c.deleted)
                {
                    return Err(RestError::BadRequest {
                        diagnostics: format!(
                            "Bundle.entry[{}]: the reference to {t}/{id} points at no existing resource",
                            e.idx
                        ),
                        expression: None,
                    });
                }
            }
        }
    }
    // 4. Creates, then updates, then reads.
    let now = instant::now_ms();
    for e in entries.iter_mut().filter(|e| e.method == Method::Post) {
        let o = if let Some(w) = existing.remove(&e.idx) {
            Outcome::Written(w)
        } else if let Some((mut nv, stored)) = e.prepared.take() {
            rest::put_new_version(tx, keyring, &mut nv)
                .map_err(|err| RestError::Conflict(format!("Bundle.entry[{}]: {err}", e.idx)))?;
            Outcome::Written(Written {
                created: true,
                stored,
            })
        } else {
            let id = e.id.clone().unwrap_or_else(rest::new_id);
            let res = e
                .resource
                .take()
                .ok_or_else(|| RestError::bad("missing resource"))?;
            if !vis.allows(Op::Create, &e.rtype, &res) {
                return Err(forbidden_create(e.idx, &e.rtype));
            }
            let (mut nv, stored) = rest::prepare(keyring, &e.rtype, &id, 1, now, res, "POST")
                .map_err(|err| prefix_issues(e.idx, &e.rtype, err))?;
            rest::put_new_version(tx, keyring, &mut nv)
                .map_err(|err| RestError::Conflict(format!("Bundle.entry[{}]: {err}", e.idx)))?;
            Outcome::Written(Written {
                created: true,
                stored,
            })
        };
        outcomes[e.idx] = Some(o);
    }
    for e in entries
        .iter_mut()
        .filter(|e| matches!(e.method, Method::Put | Method::Patch))
    {
        let mut entry = Entry {
            resource: e.resource.take(),
            prepared: None,
            ..clone_head(e)
        };
        if entry.method == Method::Put && entry.query.is_some() {
            // The id was decided in step 2: write it as an instance update.
            entry.query = None;
            if let (Some(res), Some(id)) = (entry.resource.as_mut(), &entry.id)
                && let Value::Object(o) = res
            {
                o.insert("id".into(), Value::String(id.clone()));
            }
        }
        outcomes[e.idx] = Some(run_write(tx, keyring, vis, entry, base)?);
    }
    for e in entries.iter().filter(|e| e.method == Method::Get) {
        outcomes[e.idx] = Some(run_write(
            tx,
            keyring,
            vis,
            Entry {
                resource: None,
                prepared: None,
                ..clone_head(e)
            },
            base,
        )?);
    }
    outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| RestError::Store("an entry was not processed".into())))
        .collect()
}

fn clone_head(e: &Entry) -> Entry {
    Entry {
        idx: e.idx,
        method: e.method,
        rtype: e.rtype.clone(),
        id: e.id.clone(),
        query: e.query.clone(),
        version: e.version.clone(),
        full_url: e.full_url.clone(),
        resource: None,
        if_none_exist: e.if_none_exist.clone(),
        if_match: e.if_match,
        prepared: None,
        prepared_refs: None,
    }
}

fn forbidden_create(idx: usize, rtype: &str) -> RestError {
    RestError::Forbidden(format!(
        "Bundle.entry[{idx}]: the caller may not create this {rtype}: its role, care relationships and the token's scopes do not allow it for the patient it concerns."
    ))
}
