//! What auditors read: `GET /fhir/AuditEvent` (search and read over the audit log's blind
//! indexes), the accounting-of-disclosures and user-activity reports, and the `/audit` routes
//! (the latest signed checkpoint, inclusion and consistency proofs).

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use carevault_audit::event::{self, EventKind, RestInteraction};
use carevault_crypto::Keyring;
use carevault_store::audit_log::{self, AuditEntry, AuditKey};
use carevault_store::backend::AuditQuery;
use carevault_store::{Access, Op, RestError, Store};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use crate::App;
use crate::access::Interaction;
use crate::audit::{Note, Party};
use crate::authz::{self, Denial};
use crate::outcome::ApiError;

/// At most this many audit entries are examined for one search page before the search is
/// refused as too broad (filters other than patient, agent, entity and date run in memory).
const MAX_EXAMINED: usize = 200_000;
/// At most this many rows go into one report.
pub const MAX_REPORT_ROWS: usize = 100_000;

/// An AuditEvent search, parsed.
#[derive(Debug, Default)]
pub struct AuditSearch {
    query: AuditQuery,
    types: Vec<String>,
    subtypes: Vec<String>,
    actions: Vec<String>,
    outcomes: Vec<String>,
    count: usize,
    offset: usize,
}

fn bad(msg: String) -> RestError {
    RestError::BadRequest {
        diagnostics: msg,
        expression: None,
    }
}

/// The codes of a token parameter value: `code` or `system|code`, comma-separated alternatives.
fn codes(v: &str) -> impl Iterator<Item = String> + '_ {
    v.split(',')
        .map(|c| c.rsplit_once('|').map_or(c, |(_, code)| code).to_owned())
}

/// A date parameter's bounds (`eq`, `ge`, `gt`, `le`, `lt`; partial dates are ranges).
fn date_bounds(v: &str, q: &mut AuditQuery) -> Result<(), RestError> {
    let (prefix, value) = match v.get(..2) {
        Some(p @ ("eq" | "ge" | "gt" | "le" | "lt")) => (p, &v[2..]),
        _ => ("eq", v),
    };
    let (lo, hi) = carevault_fhir::index::date_range(value)
        .ok_or_else(|| bad(format!("date={v} is not a FHIR date or dateTime")))?;
    let raise = |cur: &mut Option<i64>, x: i64| *cur = Some(cur.map_or(x, |c| c.max(x)));
    let lower = |cur: &mut Option<i64>, x: i64| *cur = Some(cur.map_or(x, |c| c.min(x)));
    match prefix {
        "ge" => raise(&mut q.from_ms, lo),
        "gt" => raise(&mut q.from_ms, hi),
        "le" => lower(&mut q.to_ms, hi),
        "lt" => lower(&mut q.to_ms, lo),
        _ => {
            raise(&mut q.from_ms, lo);
            lower(&mut q.to_ms, hi);
        }
    }
    Ok(())
}

impl AuditSearch {
    /// Parses search parameters; unknown ones are refused when `strict`, else ignored.
    pub fn parse(
        params: &[(String, String)],
        keyring: &Keyring,
        strict: bool,
    ) -> Result<AuditSearch, RestError> {
        let mut s = AuditSearch {
            count: 50,
            query: AuditQuery {
                descending: true,
                ..AuditQuery::default()
            },
            ..AuditSearch::default()
        };
        for (name, value) in params {
            let tags = |keys: Vec<AuditKey>| keys.iter().map(|k| k.tag(keyring)).collect();
            match name.as_str() {
                "patient" => s.query.tags.push(tags(
                    value
                        .split(',')
                        .map(|p| {
                            AuditKey::Patient(if p.starts_with("Patient/") {
                                p.to_owned()
                            } else {
                                format!("Patient/{p}")
                            })
                        })
                        .collect(),
                )),
                "agent" | "altid" => s.query.tags.push(tags(
                    value
                        .split(',')
                        .flat_map(|a| {
                            if a.contains('/') {
                                vec![AuditKey::Agent(a.to_owned())]
                            } else {
                                vec![AuditKey::User(a.to_owned()), AuditKey::Client(a.to_owned())]
                            }
                        })
                        .collect(),
                )),
                "entity" => s.query.tags.push(tags(
                    value
                        .split(',')
                        .map(|e| AuditKey::Entity(e.to_owned()))
                        .collect(),
                )),
                "date" => date_bounds(value, &mut s.query)?,
                "type" => s.types.extend(codes(value)),
                "subtype" => s.subtypes.extend(codes(value)),
                "action" => s.actions.extend(codes(value)),
                "outcome" => s.outcomes.extend(codes(value)),
                "_sort" => {
                    s.query.descending = match value.as_str() {
                        "date" | "_lastUpdated" => false,
                        "-date" | "-_lastUpdated" => true,
                        other => {
                            return Err(bad(format!(
                                "AuditEvent can be sorted by date or -date only, not {other}"
                            )));
                        }
                    }
                }
                "_count" => {
                    s.count = value
                        .parse::<usize>()
                        .map_err(|_| bad(format!("_count={value} is not a number")))?
                        .min(1000)
                }
                "_offset" => {
                    s.offset = value
                        .parse()
                        .map_err(|_| bad(format!("_offset={value} is not a number")))?
                }
                "_format" | "_pretty" | "_total" => {}
                other if strict => {
                    return Err(bad(format!(
                        "{other} is not a supported AuditEvent search parameter (patient, agent, altid, entity, date, type, subtype, action, outcome, _sort, _count)"
                    )));
                }
                _ => {}
            }
        }
        Ok(s)
    }

    fn keeps(&self, ev: &Value) -> bool {
        fn any(wanted: &[String], have: Vec<&str>) -> bool {
            wanted.is_empty() || have.iter().any(|h| wanted.iter().any(|w| w == h))
        }
        fn code(v: &Value) -> Option<&str> {
            v.get("code").and_then(Value::as_str)
        }
        let subtypes = ev
            .get("subtype")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(code)
            .collect();
        any(
            &self.types,
            ev.get("type").and_then(code).into_iter().collect(),
        ) && any(&self.subtypes, subtypes)
            && any(
                &self.actions,
                ev.get("action")
                    .and_then(Value::as_str)
                    .into_iter()
                    .collect(),
            )
            && any(
                &self.outcomes,
                ev.get("outcome")
                    .and_then(Value::as_str)
                    .into_iter()
                    .collect(),
            )
    }

    /// Runs the search; the page of events (with ids) and whether more follow.
    pub fn run(&self, store: &dyn Store) -> Result<(Vec<Value>, bool), RestError> {
        let keyring = store.keyring();
        store.settle_audit()?;
        let mut reader = store.reader()?;
        let mut out = Vec::new();
        let mut skipped = 0;
        let mut examined = 0;
        let chunk = 1000;
        let mut q = self.query.clone();
        q.limit = chunk;
        q.offset = 0;
        loop {
            let entries = audit_log::search(&mut *reader, keyring, &q)?;
            let n = entries.len();
            for e in entries {
                let ev = parse(&e)?;
                if !self.keeps(&ev) {
                    continue;
                }
                if skipped < self.offset {
                    skipped += 1;
                    continue;
                }
                if out.len() == self.count {
                    return Ok((out, true));
                }
                out.push(event::with_id(ev, e.seq));
            }
            examined += n;
            if n < chunk {
                return Ok((out, false));
            }
            if examined >= MAX_EXAMINED {
                return Err(bad(format!(
                    "the search examined {MAX_EXAMINED} audit entries without filling the page; narrow it by patient, agent, entity or date"
                )));
            }
            q.offset += chunk;
        }
    }
}

/// The AuditEvent (without `id`) rendered from an entry's compact canonical bytes.
fn parse(e: &AuditEntry) -> Result<Value, RestError> {
    event::render(&e.canonical)
        .map_err(|err| RestError::Integrity(format!("audit entry {} cannot be read: {err}", e.seq)))
}

/// One AuditEvent by id (`a-000000000042`).
pub fn read_event(store: &dyn Store, id: &str) -> Result<Value, RestError> {
    let not_found = || RestError::NotFound {
        rtype: "AuditEvent".into(),
        id: id.to_owned(),
    };
    let seq = event::seq_of_id(id).ok_or_else(not_found)?;
    store.settle_audit()?;
    let stored = store.reader()?.audit_load(&[seq])?;
    let e = stored.first().ok_or_else(not_found)?;
    let entry = audit_log::open(store.keyring(), e)?;
    Ok(event::with_id(parse(&entry)?, seq))
}

/// A searchset Bundle of AuditEvents.
pub fn search_bundle(
    base_url: &str,
    params: &[(String, String)],
    s: &AuditSearch,
    events: Vec<Value>,
    more: bool,
) -> Value {
    let query = |offset: usize| {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in params.iter().filter(|(k, _)| k != "_offset") {
            ser.append_pair(k, v);
        }
        ser.append_pair("_offset", &offset.to_string());
        format!("{base_url}/AuditEvent?{}", ser.finish())
    };
    let mut links = vec![json!({"relation": "self", "url": query(s.offset)})];
    if more {
        links.push(json!({"relation": "next", "url": query(s.offset + s.count)}));
    }
    if s.offset > 0 {
        links.push(json!({"relation": "previous", "url": query(s.offset.saturating_sub(s.count))}));
    }
    let entry: Vec<Value> = events
        .into_iter()
        .map(|ev| {
            let id = ev
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            json!({"fullUrl": format!("{base_url}/AuditEvent/{id}"), "resource": ev,
                   "search": {"mode": "match"}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entry})
}

/// Which events a report covers.
#[derive(Debug, Clone)]
pub enum ReportSubject {
    /// The accounting of disclosures of one patient (`Patient/id`).
    Patient(String),
    /// One user's (or client's) activity.
    User(String),
}

/// The events of a report, oldest first, within `[from, to)`.
pub fn report_events(
    store: &dyn Store,
    subject: &ReportSubject,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
) -> Result<Vec<Value>, RestError> {
    let keyring = store.keyring();
    let keys = match subject {
        ReportSubject::Patient(p) => vec![AuditKey::Patient(p.clone())],
        ReportSubject::User(u) => vec![AuditKey::User(u.clone()), AuditKey::Client(u.clone())],
    };
    let q = AuditQuery {
        tags: vec![keys.iter().map(|k| k.tag(keyring)).collect()],
        from_ms,
        to_ms,
        descending: false,
        offset: 0,
        limit: MAX_REPORT_ROWS,
    };
    store.settle_audit()?;
    let mut reader = store.reader()?;
    audit_log::search(&mut *reader, keyring, &q)?
        .iter()
        .map(|e| Ok(event::with_id(parse(e)?, e.seq)))
        .collect()
}

/// A report rendered as `csv`, `json` or `html`: (content type, body).
pub fn render_report(
    title: &str,
    events: &[Value],
    format: &str,
) -> Result<(&'static str, String), RestError> {
    use carevault_audit::report;
    let rows: Vec<report::ReportRow> = events.iter().map(report::ReportRow::from_event).collect();
    Ok(match format {
        "csv" => ("text/csv; charset=utf-8", report::render_csv(&rows)),
        "json" | "" => (
            "application/json",
            serde_json::to_string_pretty(&report::render_json(&rows))
                .map_err(|e| RestError::Store(e.to_string()))?,
        ),
        "html" => (
            "text/html; charset=utf-8",
            report::render_html(title, &rows),
        ),
        other => {
            return Err(bad(format!("format={other} is not one of csv, json, html")));
        }
    })
}

// ---- HTTP ---------------------------------------------------------------------------------

/// The audit party of a request to the audit routes, before its caller is known.
fn request_party(req: &Request) -> Party {
    Party {
        request_id: request_id(req),
        address: req
            .extensions()
            .get::<crate::PeerAddr>()
            .map(|p| p.0.ip().to_string()),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(256).collect()),
        ..Party::default()
    }
}

/// Authorizes a use of the audit trail through the same gate as FHIR AuditEvent reads: the
/// verified token's principal (the live account, or a system client), the training gate, the
/// policy's requirement for `interaction` on AuditEvent and the token's scopes. Only a caller
/// whose access to AuditEvent is unrestricted passes: a user with the `auditor` role, or a
/// system client with an AuditEvent scope. A patient reaches their own accounting of
/// disclosures at `Patient/{id}/AuditEvent`, not here. A refusal is audited before it leaves.
async fn authorize(
    app: &Arc<App>,
    mut party: Party,
    headers: &http::HeaderMap,
    interaction: Interaction,
) -> Result<Party, Response> {
    let (caller, claims, principal) =
        match authz::verify_principal(app, headers.get(header::AUTHORIZATION)) {
            Ok(v) => v,
            Err(e) => {
                let err = authz::token_refusal(&e, party.request_id.as_deref().unwrap_or("-"));
                let detail = (
                    "authentication".to_owned(),
                    "bearer token refused".to_owned(),
                );
                return Err(refused(app, party, detail, err).await);
            }
        };
    party.client = Some(caller.client_id().to_owned());
    authz::fill_party(&mut party, &principal);
    let now_ms = app.trail.now_ms();
    let today = time::OffsetDateTime::from_unix_timestamp(now_ms / 1000)
        .map(|t| t.date())
        .unwrap_or(time::Date::MIN);
    let decided = authz::check_training(app, &principal, today).and_then(|()| {
        let gate = authz::build(
            app,
            principal,
            caller,
            claims.patient.clone(),
            std::collections::HashSet::new(),
            now_ms,
        );
        gate.check_type("AuditEvent", interaction)?;
        match gate.access(Op::Read, "AuditEvent") {
            Access::All => Ok(()),
            _ => Err(Denial {
                error: ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "Only auditors may use the audit trail routes; a patient reads their own accounting of disclosures at Patient/{id}/AuditEvent.",
                ),
                reason: "audit trail route without unrestricted AuditEvent access".into(),
            }),
        }
    });
    match decided {
        Ok(()) => Ok(party),
        Err(d) => Err(refused(app, party, ("decision".into(), d.reason), d.error).await),
    }
}

/// Audits a refused use of the audit trail and answers with `err` (or 503 when the event
/// cannot be written).
async fn refused(
    app: &Arc<App>,
    party: Party,
    detail: (String, String),
    err: ApiError,
) -> Response {
    let note = Note::new(party, RestInteraction::Read);
    note.lock().detail.push(detail);
    let record = app.trail.request_record(&note.lock(), err.status.as_u16());
    match append_event(app, &record).await {
        Ok(()) => err.into_response(),
        Err(unavailable) => unavailable.into_response(),
    }
}

/// Appends `record` to the trail durably; when it cannot be written, the 503 that refuses the
/// request.
async fn append_event(
    app: &Arc<App>,
    record: &carevault_audit::AuditRecord,
) -> Result<(), ApiError> {
    let append = crate::audit::to_append(record);
    let store = app.rest.store().clone();
    match tokio::task::spawn_blocking(move || audit_log::append_durably(&*store, vec![append]))
        .await
    {
        Ok(Ok(_)) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "transient",
            "The audit trail could not be written, so the request was refused; retry later.",
        )),
    }
}

/// Records that an authorized caller used the audit trail, durably; a failure refuses the
/// request.
async fn audit_use(
    app: &Arc<App>,
    party: Party,
    detail: Vec<(String, String)>,
    patients: Vec<String>,
) -> Result<(), ApiError> {
    let mut r = app
        .trail
        .request_record(&Note::new(party, RestInteraction::Read).lock(), 200);
    r.kind = EventKind::AuditLogUsed;
    r.detail = detail;
    r.patients = patients;
    append_event(app, &r).await
}

fn request_id(req: &Request) -> Option<String> {
    req.extensions()
        .get::<crate::RequestId>()
        .map(|r| r.0.to_string())
}

/// `GET /audit/checkpoint`: the latest signed checkpoint, for anyone.
pub(crate) async fn checkpoint(State(app): State<Arc<App>>) -> Response {
    match app.trail.latest_checkpoint() {
        Some(note) => {
            let mut r = note.into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, "no checkpoint yet\n").into_response(),
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct ProofParams {
    size: Option<u64>,
}

fn b64(h: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(h)
}

fn run_blocking_err(e: RestError, rid: &str) -> Response {
    ApiError::from_rest(e, rid).into_response()
}

/// `GET /audit/proof/{seq}?size=N`: the inclusion proof of entry `seq` in the tree of `size`
/// entries (default: the current log), for auditors.
pub(crate) async fn proof(
    State(app): State<Arc<App>>,
    Path(seq): Path<u64>,
    Query(p): Query<ProofParams>,
    req: Request,
) -> Response {
    let headers = req.headers();
    let party = match authorize(&app, request_party(&req), headers, Interaction::Read).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let rid = request_id(&req);
    if let Err(r) = audit_use(
        &app,
        party,
        vec![("audit-proof".into(), seq.to_string())],
        Vec::new(),
    )
    .await
    {
        return r.into_response();
    }
    let store = app.rest.store().clone();
    let result = tokio::task::spawn_blocking(move || -> Result<Value, RestError> {
        store.settle_audit()?;
        let mut r = store.reader()?;
        let (current, _) = audit_log::tree_head(&mut *r)?;
        let size = p.size.unwrap_or(current);
        if size > current {
            return Err(bad(format!(
                "the audit log has {current} entries, fewer than size={size}"
            )));
        }
        let path = audit_log::inclusion_proof(&mut *r, seq, size)?;
        let root = audit_log::root_at(&mut *r, size)?;
        let stored = r.audit_load(&[seq])?;
        let entry = stored.first().ok_or_else(|| RestError::NotFound {
            rtype: "AuditEvent".into(),
            id: event::event_id(seq),
        })?;
        let entry = audit_log::open(store.keyring(), entry)?;
        Ok(json!({
            "seq": seq,
            "leaf_index": seq - 1,
            "tree_size": size,
            "root_hash": b64(&root),
            "leaf_hash": b64(&carevault_audit::merkle::leaf_hash(&entry.canonical)),
            "inclusion_path": path.iter().map(b64).collect::<Vec<_>>(),
            "entry": String::from_utf8_lossy(&entry.canonical),
            "event": event::with_id(parse(&entry)?, seq),
        }))
    })
    .await;
    json_answer(result, rid.as_deref().unwrap_or("-"))
}

#[derive(serde::Deserialize)]
pub(crate) struct ConsistencyParams {
    first: u64,
    second: u64,
}

/// `GET /audit/consistency?first=N&second=M`: the consistency proof between two tree sizes.
pub(crate) async fn consistency(
    State(app): State<Arc<App>>,
    Query(p): Query<ConsistencyParams>,
    req: Request,
) -> Response {
    let headers = req.headers();
    let party = match authorize(&app, request_party(&req), headers, Interaction::Read).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let rid = request_id(&req);
    if let Err(r) = audit_use(
        &app,
        party,
        vec![(
            "audit-consistency".into(),
            format!("{}..{}", p.first, p.second),
        )],
        Vec::new(),
    )
    .await
    {
        return r.into_response();
    }
    let store = app.rest.store().clone();
    let result = tokio::task::spawn_blocking(move || -> Result<Value, RestError> {
        store.settle_audit()?;
        let mut r = store.reader()?;
        let (current, _) = audit_log::tree_head(&mut *r)?;
        if p.second > current {
            return Err(bad(format!(
                "the audit log has {current} entries, fewer than second={}",
                p.second
            )));
        }
        let path = audit_log::consistency_proof(&mut *r, p.first, p.second)?;
        Ok(json!({
            "first": p.first,
            "second": p.second,
            "first_root": b64(&audit_log::root_at(&mut *r, p.first)?),
            "second_root": b64(&audit_log::root_at(&mut *r, p.second)?),
            "consistency_path": path.iter().map(b64).collect::<Vec<_>>(),
        }))
    })
    .await;
    json_answer(result, rid.as_deref().unwrap_or("-"))
}

fn json_answer(
    result: Result<Result<Value, RestError>, tokio::task::JoinError>,
    rid: &str,
) -> Response {
    match result {
        Ok(Ok(v)) => {
            let mut r = v.to_string().into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Ok(Err(e)) => run_blocking_err(e, rid),
        Err(_) => ApiError::internal(rid).into_response(),
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct ReportParams {
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
}

/// Parses a report bound: a FHIR date or dateTime; `to` is exclusive of its whole period.
pub fn report_bound(v: Option<&str>, upper: bool) -> Result<Option<i64>, RestError> {
    v.map(|d| {
        carevault_fhir::index::date_range(d)
            .map(|(lo, hi)| if upper { hi } else { lo })
            .ok_or_else(|| bad(format!("{d} is not a date (YYYY-MM-DD or a dateTime)")))
    })
    .transpose()
}

async fn report(app: Arc<App>, subject: ReportSubject, p: ReportParams, req: Request) -> Response {
    let headers = req.headers();
    let party = match authorize(&app, request_party(&req), headers, Interaction::Search).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let rid = request_id(&req);
    let (label, patients) = match &subject {
        ReportSubject::Patient(p) => ("patient", vec![p.clone()]),
        ReportSubject::User(_) => ("user", Vec::new()),
    };
    if let Err(r) = audit_use(&app, party, vec![("report".into(), label.into())], patients).await {
        return r.into_response();
    }
    let store = app.rest.store().clone();
    let rid2 = rid.clone().unwrap_or_default();
    let result =
        tokio::task::spawn_blocking(move || -> Result<(&'static str, String), RestError> {
            let from = report_bound(p.from.as_deref(), false)?;
            let to = report_bound(p.to.as_deref(), true)?;
            let events = report_events(&*store, &subject, from, to)?;
            let title = match &subject {
                ReportSubject::Patient(p) => format!("Accounting of disclosures for {p}"),
                ReportSubject::User(u) => format!("Activity of {u}"),
            };
            render_report(&title, &events, p.format.as_deref().unwrap_or("json"))
        })
        .await;
    match result {
        Ok(Ok((ct, body))) => {
            let mut r = body.into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            if ct.starts_with("text/html") {
                crate::html_headers(r.headers_mut());
            }
            r
        }
        Ok(Err(e)) => run_blocking_err(e, &rid2),
        Err(_) => ApiError::internal(&rid2).into_response(),
    }
}

/// `GET /admin/reports/patient/{id}`: the accounting of disclosures of one patient.
pub(crate) async fn patient_report(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(p): Query<ReportParams>,
    req: Request,
) -> Response {
    let subject = ReportSubject::Patient(if id.starts_with("Patient/") {
        id
    } else {
        format!("Patient/{id}")
    });
    report(app, subject, p, req).await
}

/// `GET /admin/reports/user/{name}`: one user's (or client's) activity.
pub(crate) async fn user_report(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(p): Query<ReportParams>,
    req: Request,
) -> Response {
    report(app, ReportSubject::User(name), p, req).await
}
