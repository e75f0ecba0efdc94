//! The authorization matrix: every built-in role × a representative type of each resource class
//! × each interaction × with/without a care relationship × with/without break-the-glass, each
//! cell asserted against the table below, written by hand from PRODUCT.md 2.3.
//!
//! The world: practitioner D has a finished Encounter (yesterday) with patient R — a care
//! relationship (rule 1) and, for the billing role, a billing relationship (rule 6) — and nothing
//! with patient S. "rel" cells act on R's data, "no rel" cells on S's. For the `patient` role,
//! "rel" is its own record (it is linked to R) and "no rel" someone else's. Break-the-glass cells
//! send `X-Break-Glass: <reason>`; they run after every plain cell, because a grant lasts an hour.

use crate::harness::{Server, send};
use crate::leaks::{clinic, make, user_token};
use serde_json::{Value, json};

/// What a role needs for one interaction on one class (PRODUCT.md 2.3):
/// `-` never; `A` always (directory, patient search, front desk); `R` a care relationship;
/// `B` a care relationship or break-the-glass; `$` a billing relationship; `O` own record.
/// Columns: create, read, update, delete, search.
const TABLE: &[(&str, [(&str, &str); 6])] = &[
    //  role               Patient        Observation    Appointment    Coverage       Practitioner   AuditEvent
    (
        "physician",
        [
            ("Patient", "-AR-A"),
            ("Observation", "BBBBB"),
            ("Appointment", "-R--R"),
            ("Coverage", "-----"),
            ("Practitioner", "-A--A"),
            ("AuditEvent", "-----"),
        ],
    ),
    (
        "nurse",
        [
            ("Patient", "-AR-A"),
            ("Observation", "BBB-B"),
            ("Appointment", "RRR-R"),
            ("Coverage", "-----"),
            ("Practitioner", "-A--A"),
            ("AuditEvent", "-----"),
        ],
    ),
    (
        "pharmacist",
        [
            ("Patient", "-A--A"),
            ("Observation", "-B--B"),
            ("Appointment", "-R--R"),
            ("Coverage", "-----"),
            ("Practitioner", "-A--A"),
            ("AuditEvent", "-----"),
        ],
    ),
    (
        "clinical_support",
        [
            ("Patient", "-A--A"),
            ("Observation", "RRR-R"),
            ("Appointment", "-R--R"),
            ("Coverage", "-----"),
            ("Practitioner", "-A--A"),
            ("AuditEvent", "-----"),
        ],
    ),
    (
        "registration",
        [
            ("Patient", "AAA-A"),
            ("Observation", "-----"),
            ("Appointment", "AAA-A"),
            ("Coverage", "-A--A"),
            ("Practitioner", "-A--A"),
            ("AuditEvent", "-----"),
        ],
    ),
    (
        "billing",
        [
            ("Patient", "-A--A"),
            ("Observation", "-----"),
            ("Appointment", "-$--$"),
            ("Coverage", "$$$-$"),
            ("Practitioner", "-A--A"),
            ("AuditEvent", "-----"),
        ],
    ),
    (
        "auditor",
        [
            ("Patient", "-A--A"),
            ("Observation", "-----"),
            ("Appointment", "-----"),
            ("Coverage", "-----"),
            ("Practitioner", "-A--A"),
            ("AuditEvent", "-A--A"),
        ],
    ),
    (
        "security_admin",
        [
            ("Patient", "-----"),
            ("Observation", "-----"),
            ("Appointment", "-----"),
            ("Coverage", "-----"),
            ("Practitioner", "-A--A"),
            ("AuditEvent", "-----"),
        ],
    ),
    (
        "system_admin",
        [
            ("Patient", "-----"),
            ("Observation", "-----"),
            ("Appointment", "-----"),
            ("Coverage", "-----"),
            ("Practitioner", "AAA-A"),
            ("AuditEvent", "-----"),
        ],
    ),
    (
        "patient",
        [
            ("Patient", "-O--O"),
            ("Observation", "-O--O"),
            ("Appointment", "-O--O"),
            ("Coverage", "-O--O"),
            ("Practitioner", "-A--A"),
            ("AuditEvent", "-O--O"),
        ],
    ),
];
// Notes on cells a reader may question:
// - Patient "update with rel." for physician and nurse is R: break-the-glass stands in only for
//   clinical data ("rel. or BTG" is written in the clinical column only).
// - clinical_support reads the Observations it may create and update (to correct them).
// - The patient's AuditEvent cells are its own accounting of disclosures (Patient/{id}/AuditEvent).
// - AuditEvent is never created, updated or deleted through the API, by anyone.

const INTERACTIONS: [&str; 5] = ["create", "read", "update", "delete", "search"];

/// Roles that may break the glass (the table's `B` cells).
const BTG_ROLES: [&str; 3] = ["physician", "nurse", "pharmacist"];

/// The expected answer of one cell.
fn expected(role: &str, class: &str, interaction: usize, rel: bool, btg: bool) -> bool {
    let row = TABLE.iter().find(|(r, _)| *r == role).unwrap().1;
    let cells = row.iter().find(|(c, _)| *c == class).unwrap().1;
    let need = cells.as_bytes()[interaction];
    if btg {
        // The header is refused outright for roles that may not break the glass, and for requests
        // not about one patient's record (directory, the audit trail).
        if !BTG_ROLES.contains(&role) || matches!(class, "Practitioner" | "AuditEvent") {
            return false;
        }
    }
    match need {
        b'A' => true,
        b'B' => rel || btg,
        b'R' | b'$' | b'O' => rel,
        _ => false,
    }
}

/// The representative resources: one for R and one for S of each class.
struct World {
    practitioner: String,
    organization: String,
    patient: [String; 2],
    observation: [String; 2],
    appointment: [String; 2],
    coverage: [String; 2],
    audit_event: [String; 2],
}

fn new_resource(w: &World, class: &str, who: usize) -> Value {
    let p = format!("Patient/{}", w.patient[who]);
    match class {
        "Patient" => json!({"resourceType": "Patient", "name": [{"family": "Fresh"}]}),
        "Observation" => json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "pulse"}, "subject": {"reference": p}}),
        "Appointment" => json!({"resourceType": "Appointment", "status": "proposed",
            "participant": [{"actor": {"reference": p}, "status": "needs-action"}]}),
        "Coverage" => json!({"resourceType": "Coverage", "status": "active",
            "beneficiary": {"reference": p},
            "payor": [{"reference": format!("Organization/{}", w.organization)}]}),
        "Practitioner" => json!({"resourceType": "Practitioner", "name": [{"family": "New"}]}),
        "AuditEvent" => json!({"resourceType": "AuditEvent"}),
        _ => unreachable!(),
    }
}

fn existing(w: &World, class: &str, who: usize) -> String {
    match class {
        "Patient" => w.patient[who].clone(),
        "Observation" => w.observation[who].clone(),
        "Appointment" => w.appointment[who].clone(),
        "Coverage" => w.coverage[who].clone(),
        "Practitioner" => w.practitioner.clone(),
        "AuditEvent" => w.audit_event[who].clone(),
        _ => unreachable!(),
    }
}

fn search_path(w: &World, class: &str, who: usize) -> String {
    let p = &w.patient[who];
    match class {
        "Patient" => format!("Patient?_id={p}"),
        "Observation" => format!("Observation?subject=Patient/{p}"),
        "Appointment" => format!("Appointment?patient=Patient/{p}"),
        "Coverage" => format!("Coverage?beneficiary=Patient/{p}"),
        "Practitioner" => format!("Practitioner?_id={}", w.practitioner),
        "AuditEvent" => format!("Patient/{p}/AuditEvent?_count=1000"),
        _ => unreachable!(),
    }
}

/// Runs one cell and tells whether it was allowed: the interaction succeeded and (for a search)
/// found the resource, (for a delete) really deleted it. Denials must be 4xx, never 5xx.
async fn attempt(
    s: &Server,
    token: &str,
    w: &World,
    class: &str,
    i: usize,
    who: usize,
    btg: bool,
) -> bool {
    let with = |r: reqwest::RequestBuilder| {
        let r = r.bearer_auth(token);
        if btg {
            r.header(
                "x-break-glass",
                "matrix test: patient unconscious in the ED",
            )
        } else {
            r
        }
    };
    let json_body = |r: reqwest::RequestBuilder, v: &Value| {
        r.header("content-type", "application/fhir+json")
            .body(v.to_string())
    };
    let (st, body) = match INTERACTIONS[i] {
        "create" => {
            let v = new_resource(w, class, who);
            let (st, _, b) = send(with(json_body(s.http.post(s.url(class)), &v))).await;
            (st, b)
        }
        "read" => {
            let (st, _, b) = send(with(
                s.http
                    .get(s.url(&format!("{class}/{}", existing(w, class, who)))),
            ))
            .await;
            (st, b)
        }
        "update" => {
            let id = existing(w, class, who);
            let (_, _, current) = send(s.get(&format!("{class}/{id}"))).await;
            let v = if current["resourceType"] == class {
                current
            } else {
                let mut v = new_resource(w, class, who);
                v["id"] = json!(id);
                v
            };
            let (st, _, b) = send(with(json_body(
                s.http.put(s.url(&format!("{class}/{id}"))),
                &v,
            )))
            .await;
            (st, b)
        }
        "delete" => {
            // A fresh resource each time, made by the system client, so cells do not interfere.
            let id = if class == "AuditEvent" {
                existing(w, class, who)
            } else {
                make(s, new_resource(w, class, who)).await
            };
            let (st, _, b) = send(with(s.http.delete(s.url(&format!("{class}/{id}"))))).await;
            assert!(st < 500, "{class} delete: {st} {b}");
            if class == "AuditEvent" {
                return (200..300).contains(&st);
            }
            let (after, _, _) = send(s.get(&format!("{class}/{id}"))).await;
            return after == 410;
        }
        "search" => {
            let (st, _, b) = send(with(s.http.get(s.url(&search_path(w, class, who))))).await;
            let target = existing(w, class, who);
            let found = b["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["resource"]["id"] == target.as_str());
            assert!(st < 500, "{class} search: {st} {b}");
            return st == 200 && found;
        }
        _ => unreachable!(),
    };
    assert!(st < 500, "{class} {}: {st} {body}", INTERACTIONS[i]);
    (200..300).contains(&st)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_role_class_interaction_relationship_and_break_glass() {
    let s = Server::start().await;
    let c = clinic(&s).await;
    let organization = make(&s, json!({"resourceType": "Organization", "name": "Payer"})).await;
    let mut w = World {
        practitioner: c.practitioner.clone(),
        organization,
        patient: [c.related.clone(), c.stranger.clone()],
        observation: [c.obs_related.clone(), c.obs_stranger.clone()],
        appointment: [String::new(), String::new()],
        coverage: [String::new(), String::new()],
        audit_event: [String::new(), String::new()],
    };
    for who in 0..2 {
        w.appointment[who] = make(&s, new_resource(&w, "Appointment", who)).await;
        w.coverage[who] = make(&s, new_resource(&w, "Coverage", who)).await;
        // An AuditEvent about each patient: the system client's read of the patient.
        let (st, _, _) = send(s.get(&format!("Patient/{}", w.patient[who]))).await;
        assert_eq!(st, 200);
        let (_, _, b) = send(s.get(&format!(
            "AuditEvent?patient=Patient/{}&_count=1",
            w.patient[who]
        )))
        .await;
        w.audit_event[who] = b["entry"][0]["resource"]["id"]
            .as_str()
            .unwrap()
            .to_string();
    }
    let mut tokens = Vec::new();
    for (role, _) in TABLE {
        let link = if *role == "patient" {
            format!("Patient/{}", c.related)
        } else {
            format!("Practitioner/{}", c.practitioner)
        };
        let name = format!("m-{}", role.replace('_', "-"));
        tokens.push((
            *role,
            user_token(&s, &name, role, Some(&link), "user/*.cruds").await,
        ));
    }

    let mut failures = Vec::new();
    let mut cells = 0;
    for btg in [false, true] {
        for (role, token) in &tokens {
            for (class, _) in TABLE[0].1 {
                for (i, _) in INTERACTIONS.iter().enumerate() {
                    for rel in [true, false] {
                        let who = if rel { 0 } else { 1 };
                        let want = expected(role, class, i, rel, btg);
                        let got = attempt(&s, token, &w, class, i, who, btg).await;
                        cells += 1;
                        if want != got {
                            failures.push(format!(
                                "{role} {} {class} {} {}: expected {}, got {}",
                                INTERACTIONS[i],
                                if rel { "rel" } else { "no-rel" },
                                if btg { "btg" } else { "-" },
                                if want { "allow" } else { "deny" },
                                if got { "allow" } else { "deny" },
                            ));
                        }
                    }
                }
            }
        }
    }
    assert_eq!(cells, 10 * 6 * 5 * 2 * 2);
    assert!(
        failures.is_empty(),
        "{} of {cells} cells differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
