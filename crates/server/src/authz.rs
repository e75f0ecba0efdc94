//! The authorization gate of `/fhir`: who the caller is (principal from the verified token and
//! the live account), the training gate, break-the-glass grants, and the per-request
//! [`Visibility`] that the store applies to everything it reads, searches, includes, chains,
//! counts, pages and writes.
//!
//! Effective permission = role (the policy's [`Requirement`] per action and type) ∩ token scopes
//! (`patient/` scopes narrow to the launch patient's compartment) ∩ care relationship (or a live
//! break-the-glass grant where the role allows it) ∩ training. Handlers in [`crate::fhir`] never
//! see the shared [`App`]: they get a [`Gate`], whose only way to the store is the restricted
//! [`Rest`] it hands out.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use carevault_audit::event::{EventKind, Outcome, UserRef};
use carevault_policy::{Action, Class, Engine, Principal, Requirement, Role, class_of};
use carevault_store::care::CareWindows;
use carevault_store::{Access, Op, Rest, Store, Visibility};
use http::StatusCode;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::App;
use crate::access::{Caller, Interaction, ScopeContext};
use crate::audit::{Party, SharedNote};
use crate::care_cache::{CareCache, SetKind};
use crate::outcome::ApiError;

/// System-record kind of break-the-glass grants (sealed in the store like every system record).
pub const BTG_RECORD_KIND: &str = "btg";
/// Longest break-the-glass reason, in characters.
pub const BTG_REASON_MAX: usize = 500;

/// One break-the-glass grant as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreakGlassGrant {
    /// The account that broke the glass.
    pub user: String,
    /// The patient id (without `Patient/`).
    pub patient: String,
    /// Why, as the person typed it.
    pub reason: String,
    /// When it was granted, ms since the epoch.
    pub granted_ms: i64,
    /// When it stops counting, ms since the epoch.
    pub expires_ms: i64,
}

/// The break-the-glass grants of one user: one sealed system record per user (its key is the
/// user name), pruned of expired grants each time it is written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserGrants {
    /// The grants, at most one per patient.
    pub grants: Vec<BreakGlassGrant>,
}

impl UserGrants {
    fn parse(body: &[u8]) -> Result<Self, carevault_store::RestError> {
        serde_json::from_slice(body).map_err(|_| {
            carevault_store::RestError::Integrity(
                "a stored break-the-glass record is not readable".into(),
            )
        })
    }

    /// The grants still counting at `now_ms`.
    pub fn live(&self, now_ms: i64) -> impl Iterator<Item = &BreakGlassGrant> {
        self.grants.iter().filter(move |g| g.expires_ms > now_ms)
    }

    /// Adds `grant`, replacing an earlier grant for the same patient and dropping every grant
    /// that has expired by the time it is made.
    pub fn add(&mut self, grant: BreakGlassGrant) {
        let now = grant.granted_ms;
        self.grants
            .retain(|g| g.expires_ms > now && g.patient != grant.patient);
        self.grants.push(grant);
    }
}

/// Where an alert for a new break-the-glass grant will be raised. Alerts (PRODUCT.md section 5)
/// arrive with the monitoring issue; until then the grant's audit event (kind `break-glass`,
/// purpose BTG, with the reason) is the record a reviewer works from.
pub fn break_glass_alert_hook(_app: &App, grant: &BreakGlassGrant) {
    tracing::info!(
        user = grant.user.as_str(),
        "break-the-glass grant made; review it (alerts arrive with the monitoring issue)"
    );
}

/// Why a request was refused, for its answer and its audit event.
#[derive(Debug)]
pub struct Denial {
    /// The error the caller gets.
    pub error: ApiError,
    /// The policy's reason (or the scope or training rule), recorded in the audit event.
    pub reason: String,
}

impl Denial {
    fn forbidden(message: String, reason: String) -> Self {
        Denial {
            error: ApiError::new(StatusCode::FORBIDDEN, "forbidden", message),
            reason,
        }
    }
}

/// The policy action of a scope interaction.
fn action_of(i: Interaction) -> Action {
    match i {
        Interaction::Create => Action::Create,
        Interaction::Read => Action::Read,
        Interaction::Update => Action::Update,
        Interaction::Delete => Action::Delete,
        Interaction::Search => Action::Search,
    }
}

/// The scope interaction and policy action of a store operation.
fn op_parts(op: Op) -> (Interaction, Action) {
    match op {
        Op::Read => (Interaction::Read, Action::Read),
        Op::Create => (Interaction::Create, Action::Create),
        Op::Update => (Interaction::Update, Action::Update),
        Op::Delete => (Interaction::Delete, Action::Delete),
    }
}

/// The purpose of use of a user's requests (v3-ActReason), from its roles.
pub fn purpose_of(roles: &[Role]) -> &'static str {
    if roles.contains(&Role::Patient) {
        "PATRQT"
    } else if roles.iter().any(|r| {
        matches!(
            r,
            Role::Physician
                | Role::Nurse
                | Role::Pharmacist
                | Role::ClinicalSupport
                | Role::Registration
        )
    }) {
        "TREAT"
    } else if roles.contains(&Role::Billing) {
        "HPAYMT"
    } else {
        "HOPERAT"
    }
}

/// `Patient/X` or `X` → `X`.
fn patient_id(reference: &str) -> &str {
    reference.strip_prefix("Patient/").unwrap_or(reference)
}

/// Everything the authorization of one request needs, shared with the store's visibility rule
/// (which may run on the writer thread).
pub struct Authz {
    principal: Principal,
    scopes: Caller,
    engine: Option<Arc<Engine>>,
    launch_patient: Option<String>,
    store: Arc<dyn Store>,
    windows: CareWindows,
    now_ms: i64,
    /// Patients under a live break-the-glass grant of this user.
    grants: HashSet<String>,
    /// The process-wide memo of patient sets.
    cache: Arc<CareCache>,
    care: OnceLock<Arc<HashSet<String>>>,
    care_or_btg: OnceLock<Arc<HashSet<String>>>,
    billing: OnceLock<Arc<HashSet<String>>>,
    memo: Mutex<HashMap<(Op, String), Access>>,
}

impl std::fmt::Debug for Authz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authz")
            .field("user", &self.principal.user)
            .field("roles", &self.principal.roles)
            .finish_non_exhaustive()
    }
}

impl Authz {
    /// True for a system client (client_credentials): its scopes alone decide.
    pub fn is_system(&self) -> bool {
        self.principal.user.is_none()
    }

    fn requirement(&self, action: Action, rtype: &str) -> Requirement {
        match &self.engine {
            Some(e) => e.requirement(&self.principal, action, rtype),
            None => Requirement::Never,
        }
    }

    /// The patients of the user's care relationships (empty without a linked Practitioner).
    fn care_set(&self) -> Arc<HashSet<String>> {
        self.care
            .get_or_init(|| {
                let Some(p) = &self.principal.practitioner else {
                    return Arc::new(HashSet::new());
                };
                self.cache.get_or_compute(SetKind::Care, p, || {
                    let found = self.store.care_actors(p).and_then(|actors| {
                        self.store
                            .care_patients(&actors, self.now_ms, &self.windows, false)
                    });
                    match found {
                        Ok(list) => Some(list.into_iter().collect()),
                        Err(e) => {
                            // Fail closed: no relationship can be shown, so none is assumed.
                            tracing::error!(error = %e, "care relationships could not be read");
                            None
                        }
                    }
                })
            })
            .clone()
    }

    /// The care set with the patients of live break-the-glass grants added (the care set
    /// itself, shared rather than copied, when there are none).
    fn care_or_btg_set(&self) -> Arc<HashSet<String>> {
        self.care_or_btg
            .get_or_init(|| {
                if self.grants.is_empty() {
                    return self.care_set();
                }
                let mut s: HashSet<String> = (*self.care_set()).clone();
                s.extend(self.grants.iter().cloned());
                Arc::new(s)
            })
            .clone()
    }

    fn billing_set(&self) -> Arc<HashSet<String>> {
        self.billing
            .get_or_init(|| {
                self.cache.get_or_compute(SetKind::Billing, "", || {
                    match self
                        .store
                        .care_patients(&[], self.now_ms, &self.windows, true)
                    {
                        Ok(list) => Some(list.into_iter().collect()),
                        Err(e) => {
                            tracing::error!(error = %e, "billing relationships could not be read");
                            None
                        }
                    }
                })
            })
            .clone()
    }

    /// The caller's access to `rtype` for `op`: scopes ∩ role ∩ relationship.
    pub fn access(&self, op: Op, rtype: &str) -> Access {
        let key = (op, rtype.to_owned());
        if let Some(a) = self.memo.lock().get(&key) {
            return a.clone();
        }
        let a = self.compute_access(op, rtype);
        self.memo.lock().insert(key, a.clone());
        a
    }

    fn compute_access(&self, op: Op, rtype: &str) -> Access {
        let (interaction, action) = op_parts(op);
        let Some(ctx) = self.scopes.context(rtype, interaction) else {
            return Access::Hidden;
        };
        let directory = class_of(rtype) == Class::Directory;
        let launch = || match &self.launch_patient {
            Some(p) => Access::Patients(Arc::new(HashSet::from([p.clone()]))),
            None => Access::Hidden,
        };
        if self.is_system() {
            return match ctx {
                ScopeContext::System => Access::All,
                ScopeContext::Patient if directory => Access::All,
                ScopeContext::Patient => launch(),
                ScopeContext::User => Access::Hidden,
            };
        }
        let by_role = match self.requirement(action, rtype) {
            Requirement::Never => Access::Hidden,
            Requirement::Always => Access::All,
            Requirement::Relationship { break_glass: false } => Access::Patients(self.care_set()),
            Requirement::Relationship { break_glass: true } => {
                Access::Patients(self.care_or_btg_set())
            }
            Requirement::BillingRelationship => Access::Patients(self.billing_set()),
            Requirement::OwnCompartment => match &self.principal.patient {
                Some(p) => Access::Patients(Arc::new(HashSet::from([patient_id(p).to_owned()]))),
                None => Access::Hidden,
            },
        };
        if ctx == ScopeContext::Patient && !directory {
            intersect(by_role, launch())
        } else {
            by_role
        }
    }

    /// Checks that the caller may perform `interaction` on resources of `rtype` at all (a
    /// whole-type request). Refusal reveals nothing about any patient.
    pub fn check_type(&self, rtype: &str, interaction: Interaction) -> Result<(), Denial> {
        if !self.scopes.allows(rtype, interaction) {
            let m = format!(
                "The access token's scopes do not allow {} on {rtype}.",
                interaction.name()
            );
            return Err(Denial::forbidden(m.clone(), m));
        }
        if self.is_system() {
            return Ok(());
        }
        let action = action_of(interaction);
        if rtype == "*" {
            // A system-wide request (system history): allowed when the role reaches some
            // clinical or directory data; what it returns is filtered type by type.
            return Ok(());
        }
        if self.requirement(action, rtype) == Requirement::Never {
            let reason = match &self.engine {
                Some(e) => {
                    e.decide(
                        &self.principal,
                        action,
                        rtype,
                        &carevault_policy::Facts::default(),
                    )
                    .reason
                }
                None => "the authorization policy could not be loaded".to_owned(),
            };
            return Err(Denial::forbidden(
                format!(
                    "Your role does not allow {} on {rtype}.",
                    interaction.name()
                ),
                reason,
            ));
        }
        Ok(())
    }

    /// Whether the token's scopes alone allow `interaction` on `rtype`.
    pub fn scopes_allow(&self, rtype: &str, interaction: Interaction) -> bool {
        self.scopes.allows(rtype, interaction)
    }

    /// Whether a live break-the-glass grant (and no care relationship) is what lets the caller
    /// reach `patient`.
    pub fn under_break_glass(&self, patient: &str) -> bool {
        let id = patient_id(patient);
        self.grants.contains(id) && !self.care_set().contains(id)
    }

    /// The patients under this user's live grants.
    pub fn grants(&self) -> &HashSet<String> {
        &self.grants
    }
}

/// `a ∩ b`.
fn intersect(a: Access, b: Access) -> Access {
    match (a, b) {
        (Access::Hidden, _) | (_, Access::Hidden) => Access::Hidden,
        (Access::All, x) | (x, Access::All) => x,
        (Access::Patients(x), Access::Patients(y)) => {
            Access::Patients(Arc::new(x.intersection(&y).cloned().collect()))
        }
    }
}

/// The store visibility of `authz`: everything for a system client with `system/` scopes only,
/// else the per-type rule.
pub fn visibility(authz: &Arc<Authz>) -> Visibility {
    let a = authz.clone();
    Visibility::restricted(Arc::new(move |op: Op, rtype: &str| a.access(op, rtype)))
}

/// A request's view of the server: the authorized store and the settings handlers need. The
/// shared [`App`] stays private to this module, so a handler cannot reach the store without the
/// visibility of its caller.
pub struct Gate {
    app: Arc<App>,
    authz: Arc<Authz>,
    rest: Rest,
}

impl Gate {
    /// The gate of one request.
    pub fn new(app: Arc<App>, authz: Arc<Authz>) -> Self {
        let rest = app.rest.restricted(visibility(&authz));
        Gate { app, authz, rest }
    }

    /// The caller's authorization.
    pub fn authz(&self) -> &Authz {
        &self.authz
    }

    /// The store as this caller may see it (reads, searches, history).
    pub fn rest(&self) -> Rest {
        self.rest.clone()
    }

    /// The store as this caller may see and change it, with the request's write events appended
    /// in the writing transaction (for a Bundle, one per entry written).
    pub fn rest_audited(&self, note: &SharedNote, bundle: bool) -> Rest {
        self.app
            .rest
            .audited(self.app.trail.write_hook(note, bundle))
            .restricted(visibility(&self.authz))
    }

    /// The FHIR base URL.
    pub fn base_url(&self) -> &str {
        &self.app.base_url
    }

    /// The largest request body accepted.
    pub fn max_body_bytes(&self) -> usize {
        self.app.config.server.max_body_bytes
    }
}

/// Builds the principal of a verified token: a system client, or the live account the token
/// acts for (`None` when that account is gone or disabled: the token no longer counts).
pub fn principal_of(
    app: &App,
    claims: &carevault_auth::Claims,
) -> Result<Option<Principal>, ApiError> {
    let Some(user) = &claims.user else {
        return Ok(Some(Principal {
            user: None,
            roles: Vec::new(),
            practitioner: None,
            patient: None,
            client_id: claims.client_id.clone(),
        }));
    };
    match app.accounts.active(user) {
        Ok(Some(account)) => Ok(Some(Principal {
            user: Some(account.name.clone()),
            roles: account.roles.clone(),
            practitioner: account.practitioner.clone(),
            patient: account.patient.clone(),
            client_id: claims.client_id.clone(),
        })),
        Ok(None) => Ok(None),
        Err(e) => {
            tracing::error!(error = %e, "the account of a token could not be read");
            Err(ApiError::internal("-"))
        }
    }
}

/// Verifies a request's bearer token and builds its principal: the caller's scopes, the token's
/// claims and the principal. A token whose account is gone or disabled no longer counts
/// ([`carevault_auth::TokenError::UserDisabled`]).
pub fn verify_principal(
    app: &App,
    authorization: Option<&http::HeaderValue>,
) -> Result<(Caller, Arc<carevault_auth::Claims>, Principal), carevault_auth::TokenError> {
    let (caller, claims) = crate::access::authenticate_claims(app, authorization)?;
    match principal_of(app, &claims) {
        Ok(Some(p)) => Ok((caller, claims, p)),
        Ok(None) => Err(carevault_auth::TokenError::UserDisabled),
        Err(_) => Err(carevault_auth::TokenError::Store(
            "the account could not be read".into(),
        )),
    }
}

/// The answer to a refused bearer token: 401 with its challenge, or 500 when verification itself
/// failed (logged with the request id).
pub fn token_refusal(e: &carevault_auth::TokenError, request_id: &str) -> ApiError {
    match e {
        carevault_auth::TokenError::Store(_) | carevault_auth::TokenError::Crypto(_) => {
            tracing::error!(request_id, error = %e, "token verification failed");
            ApiError::internal(request_id)
        }
        _ => ApiError::unauthorized(&e.to_string(), &e.www_authenticate()),
    }
}

/// The audit party's user and purpose for a principal.
pub fn fill_party(party: &mut Party, p: &Principal) {
    match &p.user {
        None => party.purpose = vec!["HOPERAT".into()],
        Some(name) => {
            party.user = Some(UserRef {
                name: name.clone(),
                reference: p.practitioner.clone().or_else(|| p.patient.clone()),
                roles: p.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            });
            party.purpose = vec![purpose_of(&p.roles).into()];
        }
    }
}

/// The training gate: a user whose record of any required course is missing or expired is
/// refused before any data is reached; the message names the course to renew.
pub fn check_training(app: &App, p: &Principal, today: time::Date) -> Result<(), Denial> {
    let Some(user) = &p.user else {
        return Ok(());
    };
    let required = &app.config.access.required_training_courses;
    if required.is_empty() {
        return Ok(());
    }
    let records = app.accounts.training(user).map_err(|e| {
        tracing::error!(error = %e, "training records could not be read");
        Denial {
            error: ApiError::internal("-"),
            reason: "training records could not be read".into(),
        }
    })?;
    for course in required {
        let current = records
            .iter()
            .any(|r| &r.course == course && r.is_current(today));
        if !current {
            let m = format!(
                "Your training course \"{course}\" is missing or has expired; renew it to reach patient data."
            );
            return Err(Denial::forbidden(
                m,
                format!("required training course {course} missing or expired"),
            ));
        }
    }
    Ok(())
}

/// The live break-the-glass grants of `user` at `now_ms`: patient ids (served from the
/// process's memo when fresh).
pub async fn live_grants(app: &Arc<App>, user: &str, now_ms: i64) -> HashSet<String> {
    if let Some(s) = app.care_cache.get(SetKind::Grants, user) {
        return (*s).clone();
    }
    let generation = app.care_cache.generation();
    let store = app.rest.store().clone();
    let who = user.to_owned();
    let found = tokio::task::spawn_blocking(move || stored_grants(&store, &who, now_ms))
        .await
        .ok()
        .flatten();
    match found {
        Some(set) => (*app.care_cache.put(SetKind::Grants, user, generation, set)).clone(),
        None => HashSet::new(),
    }
}

/// The live grants of `user` as stored; `None` when they cannot be read (fail closed).
fn stored_grants(store: &Arc<dyn Store>, user: &str, now_ms: i64) -> Option<HashSet<String>> {
    let held = match carevault_store::get_system_record(&**store, BTG_RECORD_KIND, user) {
        Ok(Some(body)) => UserGrants::parse(&body),
        Ok(None) => Ok(UserGrants::default()),
        Err(e) => Err(e),
    };
    match held {
        Ok(held) => Some(held.live(now_ms).map(|g| g.patient.clone()).collect()),
        Err(e) => {
            tracing::error!(error = %e, "break-the-glass grants could not be read");
            None
        }
    }
}

/// The reason of an `X-Break-Glass` header: 1 to 500 characters after trimming, no control
/// characters.
pub fn break_glass_reason(raw: &http::HeaderValue) -> Result<String, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!(
                "X-Break-Glass must carry a reason of 1 to {BTG_REASON_MAX} characters without control characters."
            ),
        )
    };
    let text = std::str::from_utf8(raw.as_bytes()).map_err(|_| bad())?;
    let reason = text.trim();
    let n = reason.chars().count();
    if n == 0 || n > BTG_REASON_MAX || reason.chars().any(char::is_control) {
        return Err(bad());
    }
    Ok(reason.to_owned())
}

/// The one patient a request is about, for break-the-glass: `Patient/{id}[/...]`, the patient of
/// the one resource `{type}/{id}` names, or the `patient`/`subject` search parameter.
pub fn request_patient(
    app: &App,
    segs: &[&str],
    params: &[(String, String)],
) -> Result<Option<String>, ApiError> {
    match segs {
        ["Patient", id, ..] => return Ok(Some((*id).to_owned())),
        [t, id, ..] if carevault_fhir::definitions().is_resource_type(t) => {
            // The resource decides; read without the caller's restriction, only to learn whose
            // record it is (nothing of it is returned from here).
            return match app.rest.read(t, id) {
                Ok(s) => {
                    let v: serde_json::Value = serde_json::from_slice(&s.json).unwrap_or_default();
                    let mut ps = carevault_fhir::patient_compartment_refs(t, &v);
                    Ok(if ps.len() == 1 { ps.pop() } else { None })
                }
                Err(_) => Ok(None),
            };
        }
        _ => {}
    }
    let mut found: Vec<String> = Vec::new();
    for (k, v) in params {
        let base = k.split(':').next().unwrap_or("");
        if matches!(base, "patient" | "subject" | "beneficiary")
            || (segs == ["Patient"] && base == "_id")
        {
            for one in v.split(',') {
                let id = patient_id(one.trim());
                if !id.is_empty() && !id.contains('/') && !found.iter().any(|f| f == id) {
                    found.push(id.to_owned());
                }
            }
        }
    }
    Ok(if found.len() == 1 { found.pop() } else { None })
}

/// Grants `user` break-the-glass access to `patient` for the configured time: stores the grant
/// in the user's grant record and appends its audit event (kind break-glass, purpose BTG, the
/// reason) in one durable write before the request goes on.
pub async fn grant_break_glass(
    app: &Arc<App>,
    party: &Party,
    user: &str,
    patient: &str,
    reason: &str,
) -> Result<(), ApiError> {
    let now = app.trail.now_ms();
    let minutes = i64::try_from(app.config.access.break_glass_minutes).unwrap_or(i64::MAX / 60_000);
    let grant = BreakGlassGrant {
        user: user.to_owned(),
        patient: patient.to_owned(),
        reason: reason.to_owned(),
        granted_ms: now,
        expires_ms: now.saturating_add(minutes.saturating_mul(60_000)),
    };
    let mut rec = app
        .trail
        .record(party, EventKind::BreakGlass, Outcome::Success);
    rec.purpose = vec!["BTG".into()];
    rec.break_glass_reason = Some(reason.to_owned());
    rec.patients = vec![format!("Patient/{patient}")];
    rec.detail.push((
        "expires".into(),
        carevault_store::instant::format_ms(grant.expires_ms),
    ));
    let append = crate::audit::to_append(&rec);
    let store = app.rest.store().clone();
    let keyring = store.keyring().clone();
    let (key, stored) = (user.to_owned(), grant.clone());
    // One writer job: the user's grant record and the grant's audit event commit together or
    // not at all.
    let done = tokio::task::spawn_blocking(move || {
        carevault_store::write_with(&*store, move |tx| {
            let identity = carevault_store::backend::system_record_identity(BTG_RECORD_KIND, &key);
            let mut held = match tx.get_system_record(BTG_RECORD_KIND, &key)? {
                Some(sealed) => UserGrants::parse(&keyring.open(&identity, &sealed)?)?,
                None => UserGrants::default(),
            };
            held.add(stored);
            let body = serde_json::to_vec(&held)
                .map_err(|e| carevault_store::RestError::Store(e.to_string()))?;
            tx.put_system_record(BTG_RECORD_KIND, &key, &keyring.seal(&identity, &body)?)?;
            carevault_store::audit_log::append(tx, &keyring, &append)?;
            Ok(())
        })
    })
    .await;
    match done {
        Ok(Ok(())) => {
            app.care_cache.invalidate();
            break_glass_alert_hook(app, &grant);
            Ok(())
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "a break-the-glass grant could not be recorded");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "The break-the-glass grant could not be recorded, so nothing was returned; retry later.",
            ))
        }
        Err(_) => Err(ApiError::internal("-")),
    }
}

/// Builds the authorization of one request.
#[allow(clippy::too_many_arguments)]
pub fn build(
    app: &App,
    principal: Principal,
    scopes: Caller,
    launch_patient: Option<String>,
    grants: HashSet<String>,
    now_ms: i64,
) -> Arc<Authz> {
    let engine = if principal.user.is_some() {
        app.policy.as_ref().map(|p| p.engine())
    } else {
        None
    };
    Arc::new(Authz {
        principal,
        scopes,
        engine,
        launch_patient,
        store: app.rest.store().clone(),
        windows: app.config.access.care_windows(),
        now_ms,
        grants,
        cache: app.care_cache.clone(),
        care: OnceLock::new(),
        care_or_btg: OnceLock::new(),
        billing: OnceLock::new(),
        memo: Mutex::new(HashMap::new()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded_and_printable() {
        let ok = http::HeaderValue::from_static("  patient unconscious in ED  ");
        assert_eq!(
            break_glass_reason(&ok).unwrap(),
            "patient unconscious in ED"
        );
        for bad in ["", "   "] {
            assert!(break_glass_reason(&http::HeaderValue::from_static(bad)).is_err());
        }
        let long = "x".repeat(501);
        assert!(break_glass_reason(&http::HeaderValue::from_str(&long).unwrap()).is_err());
        let max = "x".repeat(500);
        assert!(break_glass_reason(&http::HeaderValue::from_str(&max).unwrap()).is_ok());
        let tab = http::HeaderValue::from_bytes(b"a\tb").unwrap();
        assert!(break_glass_reason(&tab).is_err());
    }

    #[test]
    fn intersection_narrows() {
        let set = |v: &[&str]| Access::Patients(Arc::new(v.iter().map(|s| (*s).into()).collect()));
        assert_eq!(intersect(Access::All, set(&["a"])), set(&["a"]));
        assert_eq!(intersect(Access::Hidden, Access::All), Access::Hidden);
        assert_eq!(intersect(set(&["a", "b"]), set(&["b", "c"])), set(&["b"]));
    }

    #[test]
    fn a_new_grant_prunes_expired_ones_and_replaces_its_patients() {
        let grant = |patient: &str, granted_ms: i64, expires_ms: i64| BreakGlassGrant {
            user: "jdoe".into(),
            patient: patient.into(),
            reason: "unconscious in ED".into(),
            granted_ms,
            expires_ms,
        };
        let mut held = UserGrants::default();
        held.add(grant("a", 0, 1_000));
        held.add(grant("b", 500, 5_000));
        held.add(grant("b", 900, 6_000));
        assert_eq!(held.grants.len(), 2, "one grant per patient: {held:?}");
        // At 2 000 the grant for a has expired: the next write drops it.
        held.add(grant("c", 2_000, 9_000));
        let patients: Vec<&str> = held.grants.iter().map(|g| g.patient.as_str()).collect();
        assert_eq!(patients, ["b", "c"]);
        assert_eq!(held.grants[0].expires_ms, 6_000);
        let live: Vec<&str> = held.live(6_000).map(|g| g.patient.as_str()).collect();
        assert_eq!(live, ["c"]);
    }

    #[test]
    fn purposes_follow_roles() {
        assert_eq!(purpose_of(&[Role::Physician]), "TREAT");
        assert_eq!(purpose_of(&[Role::Billing]), "HPAYMT");
        assert_eq!(purpose_of(&[Role::Patient]), "PATRQT");
        assert_eq!(purpose_of(&[Role::Auditor]), "HOPERAT");
    }
}
