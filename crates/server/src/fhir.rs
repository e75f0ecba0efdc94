//! The `/fhir` surface: one entry point that parses the path, authenticates the caller, builds
//! its authorization ([`crate::authz`]: principal, training, break-the-glass, visibility), checks
//! content negotiation and dispatches to the FHIR interaction, answering errors as
//! OperationOutcomes. Handlers get a [`Gate`], never the shared [`App`]: the only store they can
//! reach is the one filtered by the caller's visibility.

use crate::access::{Interaction, bundle_interactions, search_reaches};
use crate::audit::{Note, Party, SharedNote, default_interaction};
use crate::authz::{self, Denial, Gate};
use crate::outcome::{ApiError, OutcomeIssue, outcome_json};
use crate::{App, CallerId, RequestId, RouteTemplate, fhir_response};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use carevault_audit::event::RestInteraction;
use carevault_store::audit_log::JournalExpectation;
use carevault_store::{
    Access, HistoryRequest, Op, Rest, RestError, SearchRequest, Stored, Written,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::Value;
use std::sync::Arc;

/// What `Prefer: return=` asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReturnPref {
    Minimal,
    Representation,
    OperationOutcome,
}

/// The parsed parts of a FHIR request that every interaction needs.
struct Call {
    gate: Gate,
    request_id: Arc<str>,
    params: Vec<(String, String)>,
    headers: HeaderMap,
    body: Body,
    return_pref: ReturnPref,
    strict: bool,
    /// What this request did, for its audit event.
    note: SharedNote,
}

/// Entry point of every `/fhir` request.
pub(crate) async fn entry(State(app): State<Arc<App>>, req: Request) -> Response {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| Arc::from("-"));
    let peer = req.extensions().get::<crate::PeerAddr>().map(|p| p.0.ip());
    let (parts, mut body) = req.into_parts();
    // This request will journal its audit entry; group commits wait a little for it.
    let mut expect = app.rest.store().expect_journal();
    let mut party = Party {
        request_id: Some(request_id.to_string()),
        address: peer.map(|ip| ip.to_string()),
        user_agent: parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(256).collect()),
        ..Party::default()
    };
    let segments: Vec<String> = parts
        .uri
        .path()
        .trim_start_matches("/fhir")
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let mut params: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();

    if let Err(e) = negotiate(&parts.headers, &mut params) {
        return e.into_response();
    }
    if parts.method == Method::GET && segs == ["metadata"] {
        let mut r = fhir_response(StatusCode::OK, app.capability.clone());
        r.extensions_mut().insert(RouteTemplate("/fhir/metadata"));
        return r;
    }
    let interaction = default_interaction(&parts.method);
    let verified = authz::verify_principal(&app, parts.headers.get(header::AUTHORIZATION));
    let (caller, claims, principal) = match verified {
        Ok(c) => c,
        Err(e) => {
            let mut r = authz::token_refusal(&e, &request_id).into_response();
            let note = Note::new(party, interaction);
            note.lock()
                .detail
                .push(("authentication".into(), "bearer token refused".into()));
            r = audited(&app, &note, r, &mut expect).await;
            r.extensions_mut().insert(RouteTemplate("/fhir/*"));
            return r;
        }
    };
    let caller_id: Arc<str> = Arc::from(caller.client_id());
    party.client = Some(caller.client_id().to_owned());
    // Who acts, and for what purpose: the organisation's operations for a system client, the
    // account's roles for a user.
    authz::fill_party(&mut party, &principal);
    let now_ms = app.trail.now_ms();
    let query = parts
        .uri
        .query()
        .filter(|q| !q.is_empty())
        .map(|q| q.as_bytes().to_vec());
    let refuse =
        |party: Party, status: Result<Denial, ApiError>, mut expect: JournalExpectation| {
            let app = app.clone();
            let caller_id = caller_id.clone();
            let query = query.clone();
            let interaction = interaction.clone();
            async move {
                let note = Note::new(party, interaction);
                note.lock().query = query;
                let err = match status {
                    Ok(d) => {
                        note.lock().detail.push(("decision".into(), d.reason));
                        d.error
                    }
                    Err(e) => e,
                };
                let mut r = audited(&app, &note, err.into_response(), &mut expect).await;
                r.extensions_mut().insert(RouteTemplate("/fhir/*"));
                r.extensions_mut().insert(CallerId(caller_id));
                r
            }
        };
    // Training first: an untrained user reaches nothing.
    let today = time::OffsetDateTime::from_unix_timestamp(now_ms / 1000)
        .map(|t| t.date())
        .unwrap_or(time::Date::MIN);
    if let Err(d) = authz::check_training(&app, &principal, today) {
        return refuse(party, Ok(d), expect).await;
    }
    let mut grants = std::collections::HashSet::new();
    if let Some(user) = principal.user.clone() {
        grants = authz::live_grants(&app, &user, now_ms).await;
    }
    let mut break_glass = false;
    if let Some(h) = parts.headers.get("x-break-glass") {
        let reason = match authz::break_glass_reason(h) {
            Ok(r) => r,
            Err(e) => return refuse(party, Err(e), expect).await,
        };
        let mut target = match principal.user.as_deref() {
            None => None,
            Some(_) => match authz::request_patient(&app, &segs, &params) {
                Ok(t) => t,
                Err(e) => return refuse(party, Err(e), expect).await,
            },
        };
        if target.is_none()
            && principal.user.is_some()
            && matches!(parts.method, Method::POST | Method::PUT)
            && let [t, ..] = segs.as_slice()
        {
            // A new or replaced resource: its own content names the patient. The body is read
            // here and handed on unchanged.
            let limit = app.config.server.max_body_bytes;
            let bytes = axum::body::to_bytes(std::mem::replace(&mut body, Body::empty()), limit)
                .await
                .unwrap_or_default();
            if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                let mut ps = carevault_fhir::patient_compartment_refs(t, &v);
                if ps.len() == 1 {
                    target = ps.pop();
                }
            }
            body = Body::from(bytes);
        }
        if let Err(d) = may_break_glass(&app, &principal, &segs) {
            return refuse(party, Ok(d), expect).await;
        }
        let (Some(user), Some(patient)) = (principal.user.clone(), target) else {
            return refuse(
                party,
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "X-Break-Glass needs a request about one patient's record: Patient/{id}, a resource of one patient, or a search with one patient= value.",
                )),
                expect,
            )
            .await;
        };
        if let Err(e) = authz::grant_break_glass(&app, &party, &user, &patient, &reason).await {
            return refuse(party, Err(e), expect).await;
        }
        grants.insert(patient);
        break_glass = true;
    }
    // The launch patient of `patient/` scopes; a patient's own record when the token has none.
    let launch_patient = claims.patient.clone().or_else(|| {
        principal
            .patient
            .as_deref()
            .map(|p| p.trim_start_matches("Patient/").to_owned())
    });
    let authz = authz::build(&app, principal, caller, launch_patient, grants, now_ms);
    if break_glass
        || (!authz.grants().is_empty()
            && authz::request_patient(&app, &segs, &params)
                .ok()
                .flatten()
                .is_some_and(|p| authz.under_break_glass(&p)))
    {
        party.purpose = vec!["BTG".into()];
    }
    let note = Note::new(party, interaction);
    note.lock().query = query;
    let (return_pref, strict) = prefer(&parts.headers);
    let call = Call {
        gate: Gate::new(app.clone(), authz.clone()),
        request_id: request_id.clone(),
        params,
        headers: parts.headers,
        body,
        return_pref,
        strict,
        note: note.clone(),
    };
    let (template, result) = dispatch(call, &parts.method, &segs).await;
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        // Anything this request wrote may have made or ended a care relationship.
        app.care_cache.invalidate();
    }
    let resp = match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    {
        // Data reached through a break-the-glass grant is a BTG access whatever the route.
        let mut n = note.lock();
        if !authz.grants().is_empty() && n.patients.iter().any(|p| authz.under_break_glass(p)) {
            n.party.purpose = vec!["BTG".into()];
        }
    }
    let mut resp = audited(&app, &note, resp, &mut expect).await;
    resp.extensions_mut().insert(RouteTemplate(template));
    resp.extensions_mut().insert(CallerId(caller_id));
    resp
}

type Answer = Result<Response, ApiError>;

/// Makes the request's audit event durable before `resp` leaves (unless its write transaction
/// already carried it); when the event cannot be written, nothing is returned but a 503.
///
/// `expect` is this request's [`JournalExpectation`], released once its entry is queued.
async fn audited(
    app: &Arc<App>,
    note: &SharedNote,
    resp: Response,
    expect: &mut JournalExpectation,
) -> Response {
    if crate::INSECURE_NO_READ_AUDIT {
        return resp;
    }
    let status = resp.status().as_u16();
    let append = {
        let n = note.lock();
        if n.recorded_in_tx && status < 400 {
            return resp;
        }
        crate::audit::to_append(&app.trail.request_record(&n, status))
    };
    match app
        .trail
        .append_durably(&**app.rest.store(), append, expect)
        .await
    {
        Ok(_) => resp,
        Err(e) => audit_unavailable(note, &e.to_string()),
    }
}

fn audit_unavailable(note: &SharedNote, error: &str) -> Response {
    let rid = note.lock().party.request_id.clone().unwrap_or_default();
    tracing::error!(
        request_id = rid,
        error,
        "the audit trail could not be written; request refused"
    );
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "transient",
        "The audit trail could not be written, so the request was refused and nothing was returned; retry later.",
    )
    .into_response()
}

async fn dispatch(call: Call, method: &Method, segs: &[&str]) -> (&'static str, Answer) {
    match (method, segs) {
        (&Method::POST, []) => ("/fhir", bundle(call).await),
        (&Method::GET, ["_history"]) => ("/fhir/_history", history(call, None, None).await),
        (_, []) => (
            "/fhir",
            Err(not_supported(
                "Only POST of a batch or transaction Bundle is supported at the base URL.",
            )),
        ),
        (_, [t, ..]) if !carevault_fhir::definitions().is_resource_type(t) => (
            "/fhir/{type}",
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not-supported",
                format!("{t} is not an R4 resource type."),
            )),
        ),
        (&Method::GET, ["AuditEvent"]) => ("/fhir/AuditEvent", audit_search(call, None).await),
        (&Method::POST, ["AuditEvent", "_search"]) => (
            "/fhir/AuditEvent/_search",
            Err(not_supported("Search AuditEvent with GET.")),
        ),
        (&Method::GET, ["AuditEvent", id]) => ("/fhir/AuditEvent/{id}", audit_read(call, id).await),
        (&Method::GET, ["Patient", id, "AuditEvent"]) => (
            "/fhir/Patient/{id}/AuditEvent",
            audit_search(call, Some(id)).await,
        ),
        (&Method::POST, ["AuditEvent", "$validate"]) => (
            "/fhir/{type}/$validate",
            validate(call, "AuditEvent", None).await,
        ),
        (_, ["AuditEvent", ..]) => (
            "/fhir/AuditEvent",
            Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "not-supported",
                "AuditEvent is written by the server only; it can be read and searched, never created, changed or deleted.",
            )),
        ),
        (&Method::GET, [t]) => ("/fhir/{type}", search(call, t, None).await),
        (&Method::POST, [t]) => ("/fhir/{type}", create(call, t).await),
        (&Method::PUT, [t]) => ("/fhir/{type}?", conditional_update(call, t).await),
        (&Method::DELETE, [t]) => ("/fhir/{type}?", conditional_delete(call, t).await),
        (&Method::POST, [t, "_search"]) => ("/fhir/{type}/_search", search_post(call, t).await),
        (&Method::GET, [t, "_history"]) => {
            ("/fhir/{type}/_history", history(call, Some(t), None).await)
        }
        (&Method::POST, [t, "$validate"]) => {
            ("/fhir/{type}/$validate", validate(call, t, None).await)
        }
        (&Method::POST, [t, id, "$validate"]) => (
            "/fhir/{type}/{id}/$validate",
            validate(call, t, Some(id)).await,
        ),
        (_, [_, id, ..]) if !valid_id(id) => (
            "/fhir/{type}/{id}",
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                "A resource id is 1 to 64 of A-Z, a-z, 0-9, '-' and '.'.",
            )),
        ),
        (&Method::GET, [t, id]) => ("/fhir/{type}/{id}", read(call, t, id).await),
        (&Method::PUT, [t, id]) => ("/fhir/{type}/{id}", update(call, t, id).await),
        (&Method::PATCH, [t, id]) => ("/fhir/{type}/{id}", patch(call, t, id).await),
        (&Method::DELETE, [t, id]) => ("/fhir/{type}/{id}", delete(call, t, id).await),
        (&Method::GET, [t, id, "_history"]) => (
            "/fhir/{type}/{id}/_history",
            history(call, Some(t), Some(id)).await,
        ),
        (&Method::GET, [t, id, "_history", v]) => (
            "/fhir/{type}/{id}/_history/{vid}",
            vread(call, t, id, v).await,
        ),
        (&Method::GET, ["Patient", id, c]) if carevault_fhir::definitions().is_resource_type(c) => {
            ("/fhir/Patient/{id}/{type}", search(call, c, Some(id)).await)
        }
        _ => (
            "/fhir/*",
            Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "not-supported",
                format!("{method} is not supported on this path."),
            )),
        ),
    }
}

// ---- interactions -------------------------------------------------------------------------

async fn read(call: Call, t: &str, id: &str) -> Answer {
    call.interaction(RestInteraction::Read);
    call.require(t, Interaction::Read)?;
    let (t2, id2) = (t.to_string(), id.to_string());
    let stored = call.blocking(move |rest, _| rest.read(&t2, &id2)).await?;
    call.note_stored(&stored);
    Ok(resource_response(StatusCode::OK, &stored, None))
}

async fn vread(call: Call, t: &str, id: &str, v: &str) -> Answer {
    call.interaction(RestInteraction::Vread);
    call.require(t, Interaction::Read)?;
    let (t2, id2, v2) = (t.to_string(), id.to_string(), v.to_string());
    let stored = call
        .blocking(move |rest, _| rest.vread(&t2, &id2, &v2))
        .await?;
    call.note_stored(&stored);
    Ok(resource_response(StatusCode::OK, &stored, None))
}

async fn create(mut call: Call, t: &str) -> Answer {
    call.interaction(RestInteraction::Create);
    call.require(t, Interaction::Create)?;
    let resource = call.resource_body(t).await?;
    let if_none_exist = header_str(&call.headers, "if-none-exist")?.map(str::to_string);
    let t2 = t.to_string();
    let rest = call.rest(false);
    let written = call
        .blocking(move |_, _| rest.create(&t2, resource, if_none_exist.as_deref()))
        .await?;
    Ok(call.written_response(written))
}

async fn update(mut call: Call, t: &str, id: &str) -> Answer {
    call.interaction(RestInteraction::Update);
    call.require(t, Interaction::Update)?;
    let resource = call.resource_body(t).await?;
    let if_match = if_match(&call.headers)?;
    let (t2, id2) = (t.to_string(), id.to_string());
    let rest = call.rest(false);
    let written = call
        .blocking(move |_, _| rest.update(&t2, &id2, resource, if_match))
        .await?;
    Ok(call.written_response(written))
}

async fn conditional_update(mut call: Call, t: &str) -> Answer {
    call.interaction(RestInteraction::Update);
    call.require(t, Interaction::Update)?;
    let query = call.condition()?;
    let resource = call.resource_body(t).await?;
    let if_match = if_match(&call.headers)?;
    let t2 = t.to_string();
    let rest = call.rest(false);
    let written = call
        .blocking(move |_, _| rest.conditional_update(&t2, &query, resource, if_match))
        .await?;
    Ok(call.written_response(written))
}

async fn patch(mut call: Call, t: &str, id: &str) -> Answer {
    call.interaction(RestInteraction::Patch);
    call.require(t, Interaction::Update)?;
    let ct = content_type(&call.headers);
    if !ct.starts_with("application/json-patch+json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "PATCH takes a JSON Patch document with Content-Type application/json-patch+json.",
        ));
    }
    let doc = call.json_body().await?;
    let if_match = if_match(&call.headers)?;
    let (t2, id2) = (t.to_string(), id.to_string());
    let rest = call.rest(false);
    let written = call
        .blocking(move |_, _| rest.patch(&t2, &id2, doc, if_match))
        .await?;
    Ok(call.written_response(written))
}

async fn delete(call: Call, t: &str, id: &str) -> Answer {
    call.interaction(RestInteraction::Delete);
    call.require(t, Interaction::Delete)?;
    let (t2, id2) = (t.to_string(), id.to_string());
    call.note().resources.push(format!("{t}/{id}"));
    let rest = call.rest(false);
    let version = call.blocking(move |_, _| rest.delete(&t2, &id2)).await?;
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Some(v) = version {
        insert_etag(r.headers_mut(), v);
    }
    Ok(r)
}

async fn conditional_delete(call: Call, t: &str) -> Answer {
    call.interaction(RestInteraction::Delete);
    call.require(t, Interaction::Delete)?;
    let query = call.condition()?;
    let t2 = t.to_string();
    let rest = call.rest(false);
    call.blocking(move |_, _| rest.conditional_delete(&t2, &query))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn search(call: Call, t: &str, compartment: Option<&str>) -> Answer {
    call.interaction(RestInteraction::SearchType);
    call.require(t, Interaction::Search)?;
    for other in search_reaches(t, &call.params) {
        call.require(&other, Interaction::Read)?;
    }
    if compartment.is_some() {
        call.require("Patient", Interaction::Read)?;
    }
    let (t2, comp) = (t.to_string(), compartment.map(str::to_string));
    let params = call.params.clone();
    let strict = call.strict;
    let bundle = call
        .blocking(move |rest, base_url| {
            rest.search(&SearchRequest {
                rtype: &t2,
                compartment: comp.as_deref().map(|id| ("Patient", id)),
                params: &params,
                base_url,
                strict,
            })
        })
        .await?;
    call.note().add_patients_of(&bundle);
    Ok(json_response(StatusCode::OK, &bundle))
}

async fn audit_search(call: Call, patient: Option<&str>) -> Answer {
    call.interaction(RestInteraction::SearchType);
    call.require("AuditEvent", Interaction::Search)?;
    match call.gate.authz().access(Op::Read, "AuditEvent") {
        Access::All => {}
        // A patient reads the accounting of disclosures of their own record, by that route only.
        Access::Patients(set) if patient.is_some_and(|p| set.contains(p)) => {}
        _ => {
            return Err(call.deny(Denial {
                error: ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "You may search the audit trail only for your own record, at Patient/{id}/AuditEvent.",
                ),
                reason: "AuditEvent search outside the caller's own compartment".into(),
            }));
        }
    }
    let mut params = call.params.clone();
    if let Some(p) = patient {
        params.push(("patient".into(), format!("Patient/{p}")));
    }
    let strict = call.strict;
    let bundle = call
        .blocking(move |rest, base_url| {
            let s = crate::audit_api::AuditSearch::parse(&params, rest.store().keyring(), strict)?;
            let (events, more) = s.run(&**rest.store())?;
            Ok(crate::audit_api::search_bundle(
                base_url, &params, &s, events, more,
            ))
        })
        .await?;
    Ok(json_response(StatusCode::OK, &bundle))
}

async fn audit_read(call: Call, id: &str) -> Answer {
    call.interaction(RestInteraction::Read);
    call.require("AuditEvent", Interaction::Read)?;
    call.note().resources.push(format!("AuditEvent/{id}"));
    let id2 = id.to_owned();
    let ev = call
        .blocking(move |rest, _| {
            let ev = crate::audit_api::read_event(&**rest.store(), &id2)?;
            // An event about someone else answers like one that does not exist.
            if rest.visibility().allows(Op::Read, "AuditEvent", &ev) {
                Ok(ev)
            } else {
                Err(RestError::NotFound {
                    rtype: "AuditEvent".into(),
                    id: id2,
                })
            }
        })
        .await?;
    Ok(json_response(StatusCode::OK, &ev))
}

async fn search_post(mut call: Call, t: &str) -> Answer {
    let ct = content_type(&call.headers);
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "POST _search takes application/x-www-form-urlencoded parameters.",
        ));
    }
    let raw = call.raw_body().await?;
    call.params
        .extend(form_urlencoded::parse(&raw).into_owned());
    {
        let mut n = call.note();
        let q = n.query.get_or_insert_with(Vec::new);
        if !q.is_empty() && !raw.is_empty() {
            q.push(b'&');
        }
        q.extend_from_slice(&raw);
    }
    search(call, t, None).await
}

async fn history(call: Call, t: Option<&str>, id: Option<&str>) -> Answer {
    call.interaction(match (t, id) {
        (Some(_), Some(_)) => RestInteraction::HistoryInstance,
        (Some(_), None) => RestInteraction::HistoryType,
        _ => RestInteraction::HistorySystem,
    });
    match t {
        Some(t) => call.require(t, Interaction::Read)?,
        None => call.require_all(Interaction::Read)?,
    }
    let (t2, id2) = (t.map(str::to_string), id.map(str::to_string));
    let params = call.params.clone();
    let bundle = call
        .blocking(move |rest, base_url| {
            rest.history(&HistoryRequest {
                rtype: t2.as_deref(),
                id: id2.as_deref(),
                params: &params,
                base_url,
            })
        })
        .await?;
    call.note().add_patients_of(&bundle);
    Ok(json_response(StatusCode::OK, &bundle))
}

async fn bundle(mut call: Call) -> Answer {
    call.interaction(RestInteraction::Batch);
    let bundle = call.resource_body("Bundle").await?;
    if bundle.get("type").and_then(Value::as_str) == Some("transaction") {
        call.interaction(RestInteraction::Transaction);
    }
    for (t, interaction) in bundle_interactions(&bundle) {
        call.require(&t, interaction)?;
    }
    let rest = call.rest(true);
    let response = call
        .blocking(move |_, base_url| rest.bundle(bundle, base_url))
        .await?;
    call.note().add_patients_of(&response);
    Ok(json_response(StatusCode::OK, &response))
}

async fn validate(mut call: Call, t: &str, _id: Option<&str>) -> Answer {
    call.interaction(RestInteraction::Operation("validate".into()));
    // Validation reads no stored data: the token's scopes alone decide.
    call.require_scope(t, Interaction::Read)?;
    let body = call.json_body().await?;
    // $validate takes the resource itself or a Parameters with a `resource` parameter.
    let resource = if body.get("resourceType").and_then(Value::as_str) == Some("Parameters")
        && t != "Parameters"
    {
        body.get("parameter")
            .and_then(Value::as_array)
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p.get("name").and_then(Value::as_str) == Some("resource"))
            })
            .and_then(|p| p.get("resource"))
            .cloned()
            .ok_or_else(|| {
                ApiError::at(
                    StatusCode::BAD_REQUEST,
                    "required",
                    "The Parameters resource has no `resource` parameter.",
                    "Parameters.parameter",
                )
            })?
    } else {
        body
    };
    check_resource_type(&resource, t)?;
    let issues = tokio::task::spawn_blocking(move || carevault_fhir::validate::validate(&resource))
        .await
        .map_err(|_| ApiError::internal(&call.request_id))?;
    let mut issues: Vec<OutcomeIssue> = issues.into_iter().map(OutcomeIssue::from).collect();
    if issues.is_empty() {
        issues.push(OutcomeIssue {
            severity: "information",
            code: "informational",
            diagnostics: "The resource is valid.".into(),
            expression: None,
        });
    }
    Ok(json_response(StatusCode::OK, &outcome_json(&issues)))
}

// ---- request parts ------------------------------------------------------------------------

impl Call {
    /// This request's audit note.
    fn note(&self) -> parking_lot::MutexGuard<'_, Note> {
        self.note.lock()
    }

    /// Says which interaction this request is, for its audit event.
    fn interaction(&self, i: RestInteraction) {
        self.note().interaction = i;
    }

    /// Records a resource version the response returns, with its patients: the ones the store
    /// already worked out for its visibility decision, or else from the JSON.
    fn note_stored(&self, stored: &Stored) {
        let mut n = self.note();
        n.resources.push(format!(
            "{}/{}/_history/{}",
            stored.rtype, stored.id, stored.version
        ));
        match &stored.patients {
            Some(ids) => n.add_patient_ids(ids),
            None => {
                if let Ok(v) = serde_json::from_slice::<Value>(&stored.json) {
                    n.add_patients_of(&v);
                }
            }
        }
    }

    /// The caller's store with this request's write events appended in the writing transaction
    /// (for a Bundle, one per entry written); every write is checked against the caller's
    /// visibility.
    fn rest(&self, bundle: bool) -> Rest {
        self.gate.rest_audited(&self.note, bundle)
    }

    /// Records a denial in the request's audit event and turns it into the answer.
    fn deny(&self, d: Denial) -> ApiError {
        self.note().detail.push(("decision".into(), d.reason));
        d.error
    }

    /// Checks that the caller may perform `interaction` on `rtype` at all: token scopes and role
    /// (the relationship part is applied by the store, resource by resource).
    fn require(&self, rtype: &str, interaction: Interaction) -> Result<(), ApiError> {
        self.gate
            .authz()
            .check_type(rtype, interaction)
            .map_err(|d| self.deny(d))
    }

    /// Checks the token's scopes alone (for operations that read no stored data).
    fn require_scope(&self, rtype: &str, interaction: Interaction) -> Result<(), ApiError> {
        if self.gate.authz().scopes_allow(rtype, interaction) {
            return Ok(());
        }
        let m = format!(
            "The access token's scopes do not allow {} on {rtype}.",
            interaction.name()
        );
        Err(self.deny(Denial {
            error: ApiError::new(StatusCode::FORBIDDEN, "forbidden", m.clone()),
            reason: m,
        }))
    }

    fn require_all(&self, interaction: Interaction) -> Result<(), ApiError> {
        self.require("*", interaction)
    }

    /// Runs store work off the async threads, over the caller's restricted store and the FHIR
    /// base URL, and maps its error.
    ///
    /// Returns a future that does not borrow `self` (the request body is not `Sync`).
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Rest, &str) -> Result<T, RestError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, ApiError>> + Send + 'static {
        let rest = self.gate.rest();
        let base_url = self.gate.base_url().to_owned();
        let rid = self.request_id.clone();
        let note = self.note.clone();
        async move {
            match tokio::task::spawn_blocking(move || f(&rest, &base_url)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => {
                    if matches!(e, RestError::Integrity(_)) {
                        // A record failed its integrity check: the request's event says so.
                        note.lock().integrity_error = true;
                    }
                    Err(ApiError::from_rest(e, &rid))
                }
                Err(e) => {
                    tracing::error!(request_id = &*rid, error = %e, "store task failed");
                    Err(ApiError::internal(&rid))
                }
            }
        }
    }

    async fn raw_body(&mut self) -> Result<bytes::Bytes, ApiError> {
        let limit = self.gate.max_body_bytes();
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-costly",
                format!("The request body is larger than the server accepts ({limit} bytes)."),
            )
        };
        if let Some(len) = self
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            && len > limit
        {
            return Err(too_large());
        }
        let body = std::mem::replace(&mut self.body, Body::empty());
        match axum::body::to_bytes(body, limit).await {
            Ok(b) => Ok(b),
            Err(e) => {
                let is_limit = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                    || e.to_string().contains("length limit");
                if is_limit {
                    Err(too_large())
                } else {
                    Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "structure",
                        "The request body could not be read.",
                    ))
                }
            }
        }
    }

    async fn json_body(&mut self) -> Result<Value, ApiError> {
        let raw = self.raw_body().await?;
        if raw.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "required",
                "The request has no body.",
            ));
        }
        serde_json::from_slice::<Value>(&raw).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "structure",
                format!("The body is not valid JSON: {e}."),
            )
        })
    }

    /// Reads a FHIR JSON resource body of type `rtype`.
    async fn resource_body(&mut self, rtype: &str) -> Result<Value, ApiError> {
        let ct = content_type(&self.headers);
        if !(ct.is_empty()
            || ct.starts_with("application/fhir+json")
            || ct.starts_with("application/json"))
        {
            let msg = if ct.contains("xml") {
                "FHIR XML is not supported; send application/fhir+json."
            } else {
                "The body must be application/fhir+json."
            };
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not-supported",
                msg,
            ));
        }
        let v = self.json_body().await?;
        check_resource_type(&v, rtype)?;
        Ok(v)
    }

    /// The search condition of a conditional update/delete: the query string.
    fn condition(&self) -> Result<String, ApiError> {
        if self.params.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "required",
                "A conditional update or delete needs search parameters in the query string.",
            ));
        }
        Ok(form_urlencoded::Serializer::new(String::new())
            .extend_pairs(self.params.iter())
            .finish())
    }

    fn written_response(&self, written: Written) -> Response {
        // A conditional create that found its match wrote nothing but returns that resource.
        self.note_stored(&written.stored);
        let status = if written.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        let location = format!(
            "{}/{}/{}/_history/{}",
            self.gate.base_url(),
            written.stored.rtype,
            written.stored.id,
            written.stored.version
        );
        match self.return_pref {
            ReturnPref::Representation => {
                resource_response(status, &written.stored, Some(&location))
            }
            ReturnPref::Minimal => {
                let mut r = status.into_response();
                resource_headers(r.headers_mut(), &written.stored, Some(&location));
                r
            }
            ReturnPref::OperationOutcome => {
                let oo = outcome_json(&[OutcomeIssue {
                    severity: "information",
                    code: "informational",
                    diagnostics: format!(
                        "{} {}/{} version {}.",
                        if written.created {
                            "Created"
                        } else {
                            "Updated"
                        },
                        written.stored.rtype,
                        written.stored.id,
                        written.stored.version
                    ),
                    expression: None,
                }]);
                let mut r = json_response(status, &oo);
                resource_headers(r.headers_mut(), &written.stored, Some(&location));
                r
            }
        }
    }
}

fn check_resource_type(v: &Value, rtype: &str) -> Result<(), ApiError> {
    match v.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == rtype => Ok(()),
        Some(t) => Err(ApiError::at(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("The body is a {t} but the URL names {rtype}."),
            "resourceType",
        )),
        None if v.is_object() => Err(ApiError::at(
            StatusCode::BAD_REQUEST,
            "required",
            "The body has no resourceType.",
            "resourceType",
        )),
        None => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "structure",
            "The body must be a JSON object.",
        )),
    }
}

/// `_format` and `Accept`: JSON only; XML gets a clear 406.
fn negotiate(headers: &HeaderMap, params: &mut Vec<(String, String)>) -> Result<(), ApiError> {
    let json_like = |v: &str| {
        let v = v.trim().to_ascii_lowercase();
        v.is_empty()
            || v.starts_with("json")
            || v.starts_with("application/json")
            || v.starts_with("application/fhir+json")
            || v.starts_with("application/*")
            || v.starts_with("*/*")
    };
    if let Some(pos) = params.iter().position(|(k, _)| k == "_format") {
        let (_, f) = params.remove(pos);
        if !json_like(&f) {
            return Err(not_acceptable());
        }
    }
    if let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())
        && !accept
            .split(',')
            .any(|a| json_like(a.split(';').next().unwrap_or("")))
    {
        return Err(not_acceptable());
    }
    Ok(())
}

fn not_acceptable() -> ApiError {
    ApiError::new(
        StatusCode::NOT_ACCEPTABLE,
        "not-supported",
        "Only FHIR JSON (application/fhir+json) is supported; FHIR XML is not.",
    )
}

fn not_supported(msg: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_IMPLEMENTED, "not-supported", msg)
}

fn prefer(headers: &HeaderMap) -> (ReturnPref, bool) {
    let mut ret = ReturnPref::Representation;
    let mut strict = false;
    for v in headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for token in v.split([',', ';']).map(str::trim) {
            match token {
                "return=minimal" => ret = ReturnPref::Minimal,
                "return=representation" => ret = ReturnPref::Representation,
                "return=OperationOutcome" => ret = ReturnPref::OperationOutcome,
                "handling=strict" => strict = true,
                "handling=lenient" => strict = false,
                _ => {}
            }
        }
    }
    (ret, strict)
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("The {name} header is not text."),
            )
        }),
    }
}

/// `If-Match: W/"3"` → 3.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = header_str(headers, "if-match")? else {
        return Ok(None);
    };
    let inner = v.trim().trim_start_matches("W/").trim_matches('"');
    inner.parse::<u64>().map(Some).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "If-Match must be a version ETag such as W/\"3\".",
        )
    })
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    fhir_response(status, serde_json::to_vec(v).unwrap_or_default())
}

fn resource_response(status: StatusCode, stored: &Stored, location: Option<&str>) -> Response {
    let mut r = fhir_response(status, stored.json.clone());
    resource_headers(r.headers_mut(), stored, location);
    r
}

fn resource_headers(h: &mut HeaderMap, stored: &Stored, location: Option<&str>) {
    insert_etag(h, stored.version);
    if let Some(v) = http_date(stored.last_updated_ms).and_then(|d| HeaderValue::from_str(&d).ok())
    {
        h.insert(header::LAST_MODIFIED, v);
    }
    if let Some(v) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        h.insert(header::LOCATION, v.clone());
        h.insert(header::CONTENT_LOCATION, v);
    }
}

fn insert_etag(h: &mut HeaderMap, version: u64) {
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
        h.insert(header::ETAG, v);
    }
}

/// RFC 9110 HTTP-date, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(ms: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    let f = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.format(&f).ok()
}

/// Whether the principal's role may break the glass for this request: some role of theirs must
/// let break-the-glass stand in for a relationship on the requested type (or, for a request on
/// the Patient itself, on clinical data).
fn may_break_glass(
    app: &App,
    p: &carevault_policy::Principal,
    segs: &[&str],
) -> Result<(), Denial> {
    let refuse = |reason: &str| Denial {
        error: ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Your role may not use break-the-glass (X-Break-Glass).",
        ),
        reason: reason.to_owned(),
    };
    if p.user.is_none() {
        return Err(refuse("break-the-glass requested by a system client"));
    }
    let Some(engine) = app.policy.as_ref().map(|p| p.engine()) else {
        return Err(refuse("the authorization policy could not be loaded"));
    };
    let rtype = segs.first().copied().unwrap_or("Patient");
    let allows = |t: &str| {
        matches!(
            engine.requirement(p, carevault_policy::Action::Read, t),
            carevault_policy::Requirement::Relationship { break_glass: true }
        )
    };
    if allows(rtype) || allows("Observation") {
        Ok(())
    } else {
        Err(refuse("no role of the principal allows break-the-glass"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(if_match(&h).unwrap(), None);
        h.insert("if-match", HeaderValue::from_static("W/\"3\""));
        assert_eq!(if_match(&h).unwrap(), Some(3));
        h.insert("if-match", HeaderValue::from_static("\"12\""));
        assert_eq!(if_match(&h).unwrap(), Some(12));
        h.insert("if-match", HeaderValue::from_static("W/\"x\""));
        assert!(if_match(&h).is_err());
    }

    #[test]
    fn http_dates_are_imf_fixdate() {
        assert_eq!(
            http_date(784_111_777_000).unwrap(),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
    }

    #[test]
    fn xml_is_refused() {
        let mut p = vec![("_format".to_string(), "xml".to_string())];
        assert_eq!(
            negotiate(&HeaderMap::new(), &mut p).unwrap_err().status,
            StatusCode::NOT_ACCEPTABLE
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/fhir+xml"),
        );
        assert!(negotiate(&h, &mut Vec::new()).is_err());
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/fhir+xml, application/fhir+json;q=0.5"),
        );
        assert!(negotiate(&h, &mut Vec::new()).is_ok());
    }

    #[test]
    fn ids_are_checked() {
        assert!(valid_id("abc-1.2"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(""));
        assert!(!valid_id(&"x".repeat(65)));
    }
}
