//! Care relationships (PRODUCT.md 2.3), derived from the FHIR data at write time: which
//! practitioner, practitioner role or ward location is in a relationship with which patient,
//! from which resource, over which period. Backends keep these rows in the write transaction of
//! the resource that states them; the time windows are applied when a relationship is asked for.
//!
//! The rules and how each is read from the data:
//! 1. **Encounter** participant `individual` (Practitioner or PractitionerRole) of an Encounter
//!    whose `subject` is the patient: from `period.start` − the encounter window before, until
//!    `period.end` + the window after; an encounter without an end that is `planned`, `arrived`,
//!    `triaged`, `in-progress` or `onleave` is open (counts until it ends); a finished one without
//!    an end ends with its start (or, without a period, its last update). Cancelled and
//!    entered-in-error encounters state nothing.
//! 2. **Appointment** participant `actor` (Practitioner or PractitionerRole, not `declined`) of
//!    an Appointment with the patient among its participants: from `start` − the window before
//!    until `end` (else `start`, else the last update) + the window after. Cancelled and
//!    entered-in-error appointments state nothing.
//! 3. **CareTeam** `participant.member` (Practitioner or PractitionerRole) of a CareTeam whose
//!    status is `active` and whose `subject` is the patient, over the team's `period` if it has one.
//! 4. **Patient** `generalPractitioner` (Practitioner or PractitionerRole), with no time limit.
//! 5. **Ward**: each `location` (not `planned` or `completed`) of an `in-progress` Encounter of
//!    the patient, as the actor `Location/L`; a practitioner reaches it through the location of
//!    any of its active PractitionerRoles (see [`RoleActor`]).
//! 6. **Billing**: every Encounter of the patient states the actor `billing` until its end + the
//!    billing window (open while it is open).
//!
//! References are read in their relative literal form (`Practitioner/123`, optionally with
//! `/_history/n`); ids are server-assigned.

use serde_json::Value;

use crate::instant;

/// The resource types whose writes replace care rows.
pub const TRACKED_TYPES: [&str; 5] = [
    "Encounter",
    "Appointment",
    "CareTeam",
    "Patient",
    "PractitionerRole",
];

/// Whether writes of `rtype` maintain care rows.
pub fn tracks(rtype: &str) -> bool {
    TRACKED_TYPES.contains(&rtype)
}

/// The actor of billing relationships (rule 6), which any billing user holds.
pub const BILLING_ACTOR: &str = "billing";

/// Which rule a relationship row comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CareKind {
    /// Rule 1: Encounter participant.
    Encounter = 1,
    /// Rule 2: Appointment participant.
    Appointment = 2,
    /// Rule 3: active CareTeam member.
    CareTeam = 3,
    /// Rule 4: the patient's general practitioner.
    GeneralPractitioner = 4,
    /// Rule 5: the location of an in-progress Encounter.
    Ward = 5,
    /// Rule 6: an Encounter, for billing.
    Billing = 6,
}

impl CareKind {
    /// The number stored for this kind.
    pub fn code(self) -> i64 {
        self as i64
    }
}

/// One relationship a resource states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CareRel {
    /// `Practitioner/P`, `PractitionerRole/R`, `Location/L`, or [`BILLING_ACTOR`].
    pub actor: String,
    /// The Patient's id.
    pub patient: String,
    /// The rule.
    pub kind: CareKind,
    /// Start in ms since the epoch (inclusive); `None`: no lower bound.
    pub start_ms: Option<i64>,
    /// End in ms since the epoch (exclusive); `None`: open (in progress, or no end).
    pub end_ms: Option<i64>,
}

/// An actor a practitioner acts as, stated by one of its PractitionerRoles: the role itself
/// (`PractitionerRole/R`) and each of its locations (`Location/L`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleActor {
    /// The Practitioner's id.
    pub practitioner: String,
    /// `PractitionerRole/R` or `Location/L`.
    pub actor: String,
}

/// Everything one resource version states about care relationships.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CareRows {
    /// Relationships with patients.
    pub rels: Vec<CareRel>,
    /// Actors of practitioners (from a PractitionerRole).
    pub roles: Vec<RoleActor>,
}

/// How long around its period a resource's relationship holds; applied at query time, so a
/// changed setting applies to existing data at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CareWindows {
    /// Before an encounter's start (default 7 days).
    pub encounter_before_ms: i64,
    /// After an encounter's end (default 30 days).
    pub encounter_after_ms: i64,
    /// Before an appointment's start (default 7 days).
    pub appointment_before_ms: i64,
    /// After an appointment (default 30 days).
    pub appointment_after_ms: i64,
    /// After an encounter's end, for billing (default 365 days).
    pub billing_after_ms: i64,
}

/// One day in ms.
pub const DAY_MS: i64 = 86_400_000;

impl Default for CareWindows {
    fn default() -> Self {
        CareWindows {
            encounter_before_ms: 7 * DAY_MS,
            encounter_after_ms: 30 * DAY_MS,
            appointment_before_ms: 7 * DAY_MS,
            appointment_after_ms: 30 * DAY_MS,
            billing_after_ms: 365 * DAY_MS,
        }
    }
}

impl CareWindows {
    /// The slack (before start, after end) of a kind.
    pub fn slack(&self, kind: CareKind) -> (i64, i64) {
        match kind {
            CareKind::Encounter => (self.encounter_before_ms, self.encounter_after_ms),
            CareKind::Appointment => (self.appointment_before_ms, self.appointment_after_ms),
            CareKind::Billing => (0, self.billing_after_ms),
            CareKind::CareTeam | CareKind::GeneralPractitioner | CareKind::Ward => (0, 0),
        }
    }
}

/// `Practitioner/P` → `practitioner_id` as given, also accepting the bare id.
pub fn practitioner_id(p: &str) -> &str {
    p.strip_prefix("Practitioner/").unwrap_or(p)
}

/// `Patient/X` → `X`, also accepting the bare id.
pub fn patient_id(p: &str) -> &str {
    p.strip_prefix("Patient/").unwrap_or(p)
}

/// The `(type, id)` of a relative literal reference in `r["reference"]`.
fn reference(r: &Value) -> Option<(&str, &str)> {
    let s = r.get("reference")?.as_str()?;
    let mut parts = s.split('/');
    let (t, id) = (parts.next()?, parts.next()?);
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) | (Some("_history"), Some(_), None) => {}
        _ => return None,
    }
    if t.is_empty() || id.is_empty() || !t.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    Some((t, id))
}

/// A care actor from a reference: Practitioner or PractitionerRole only.
fn actor(r: &Value) -> Option<String> {
    match reference(r)? {
        (t @ ("Practitioner" | "PractitionerRole"), id) => Some(format!("{t}/{id}")),
        _ => None,
    }
}

fn patient_ref(r: &Value) -> Option<String> {
    match reference(r)? {
        ("Patient", id) => Some(id.to_owned()),
        _ => None,
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn items<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

/// `[lo, hi)` of a dateTime element.
fn range(v: &Value, key: &str) -> Option<(i64, i64)> {
    instant::parse_range(str_at(v, key)?)
}

fn push_unique(out: &mut Vec<CareRel>, rel: CareRel) {
    if !out
        .iter()
        .any(|r| r.actor == rel.actor && r.patient == rel.patient && r.kind == rel.kind)
    {
        out.push(rel);
    }
}

/// The care rows `resource` (of type `rtype`, last updated at `last_updated_ms`) states; `None`
/// for a type that states none (see [`TRACKED_TYPES`]).
pub fn derive(rtype: &str, resource: &Value, last_updated_ms: i64) -> Option<CareRows> {
    let mut out = CareRows::default();
    match rtype {
        "Encounter" => encounter(resource, last_updated_ms, &mut out.rels),
        "Appointment" => appointment(resource, last_updated_ms, &mut out.rels),
        "CareTeam" => care_team(resource, &mut out.rels),
        "Patient" => {
            if let Some(id) = str_at(resource, "id") {
                for gp in items(resource, "generalPractitioner") {
                    if let Some(a) = actor(gp) {
                        push_unique(
                            &mut out.rels,
                            CareRel {
                                actor: a,
                                patient: id.to_owned(),
                                kind: CareKind::GeneralPractitioner,
                                start_ms: None,
                                end_ms: None,
                            },
                        );
                    }
                }
            }
        }
        "PractitionerRole" => practitioner_role(resource, &mut out.roles),
        _ => return None,
    }
    Some(out)
}

fn encounter(e: &Value, last_updated_ms: i64, out: &mut Vec<CareRel>) {
    let status = str_at(e, "status").unwrap_or("unknown");
    if matches!(status, "cancelled" | "entered-in-error") {
        return;
    }
    let Some(patient) = e.get("subject").and_then(patient_ref) else {
        return;
    };
    let period = e.get("period").unwrap_or(&Value::Null);
    let start = range(period, "start");
    let open = matches!(
        status,
        "planned" | "arrived" | "triaged" | "in-progress" | "onleave"
    );
    let end_ms = match range(period, "end") {
        Some((_, hi)) => Some(hi),
        None if open => None,
        None => Some(start.map_or(last_updated_ms, |(_, hi)| hi)),
    };
    let start_ms = start.map(|(lo, _)| lo);
    let mut rel = |actor: String, kind: CareKind| {
        push_unique(
            out,
            CareRel {
                actor,
                patient: patient.clone(),
                kind,
                start_ms,
                end_ms,
            },
        )
    };
    for p in items(e, "participant") {
        if let Some(a) = p.get("individual").and_then(actor) {
            rel(a, CareKind::Encounter);
        }
    }
    rel(BILLING_ACTOR.to_owned(), CareKind::Billing);
    if status == "in-progress" {
        for l in items(e, "location") {
            if matches!(str_at(l, "status"), Some("planned" | "completed")) {
                continue;
            }
            if let Some(("Location", id)) = l.get("location").and_then(reference) {
                push_unique(
                    out,
                    CareRel {
                        actor: format!("Location/{id}"),
                        patient: patient.clone(),
                        kind: CareKind::Ward,
                        start_ms: None,
                        end_ms: None,
                    },
                );
            }
        }
    }
}

fn appointment(a: &Value, last_updated_ms: i64, out: &mut Vec<CareRel>) {
    if matches!(str_at(a, "status"), Some("cancelled" | "entered-in-error")) {
        return;
    }
    let start = range(a, "start");
    let end_ms = range(a, "end")
        .or(start)
        .map_or(last_updated_ms, |(_, hi)| hi);
    let mut patients = Vec::new();
    let mut actors = Vec::new();
    for p in items(a, "participant") {
        if str_at(p, "status") == Some("declined") {
            continue;
        }
        let Some(r) = p.get("actor") else { continue };
        if let Some(id) = patient_ref(r) {
            patients.push(id);
        } else if let Some(x) = actor(r) {
            actors.push(x);
        }
    }
    for patient in &patients {
        for x in &actors {
            push_unique(
                out,
                CareRel {
                    actor: x.clone(),
                    patient: patient.clone(),
                    kind: CareKind::Appointment,
                    start_ms: start.map(|(lo, _)| lo),
                    end_ms: Some(end_ms),
                },
            );
        }
    }
}

fn care_team(t: &Value, out: &mut Vec<CareRel>) {
    if str_at(t, "status") != Some("active") {
        return;
    }
    let Some(patient) = t.get("subject").and_then(patient_ref) else {
        return;
    };
    let period = t.get("period").unwrap_or(&Value::Null);
    let start_ms = range(period, "start").map(|(lo, _)| lo);
    let end_ms = range(period, "end").map(|(_, hi)| hi);
    for p in items(t, "participant") {
        if let Some(a) = p.get("member").and_then(actor) {
            push_unique(
                out,
                CareRel {
                    actor: a,
                    patient: patient.clone(),
                    kind: CareKind::CareTeam,
                    start_ms,
                    end_ms,
                },
            );
        }
    }
}

fn practitioner_role(r: &Value, out: &mut Vec<RoleActor>) {
    if r.get("active").and_then(Value::as_bool) == Some(false) {
        return;
    }
    let (Some(id), Some(("Practitioner", practitioner))) =
        (str_at(r, "id"), r.get("practitioner").and_then(reference))
    else {
        return;
    };
    out.push(RoleActor {
        practitioner: practitioner.to_owned(),
        actor: format!("PractitionerRole/{id}"),
    });
    for l in items(r, "location") {
        if let Some(("Location", lid)) = reference(l) {
            let actor = format!("Location/{lid}");
            if !out.iter().any(|x| x.actor == actor) {
                out.push(RoleActor {
                    practitioner: practitioner.to_owned(),
                    actor,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_read_in_relative_form_only() {
        let r = |s: &str| json!({ "reference": s });
        assert_eq!(reference(&r("Practitioner/1")), Some(("Practitioner", "1")));
        assert_eq!(
            reference(&r("Practitioner/1/_history/3")),
            Some(("Practitioner", "1"))
        );
        assert_eq!(reference(&r("https://x.example/fhir/Practitioner/1")), None);
        assert_eq!(reference(&r("#contained")), None);
        assert_eq!(reference(&json!({ "display": "Dr X" })), None);
    }

    #[test]
    fn other_types_state_nothing() {
        assert_eq!(derive("Observation", &json!({}), 0), None);
    }
}
