//! Who may use the audit trail routes (PRODUCT.md 2.2 and 2.4): `/audit/proof/{seq}`,
//! `/audit/consistency`, `/admin/reports/patient/{id}` and `/admin/reports/user/{name}` pass the
//! same gate as FHIR AuditEvent reads — the account's role (the policy) ∩ the token's scopes.
//! Only the `auditor` role and system clients with an AuditEvent scope get through; a clinician,
//! an administrator or a patient with a broad token is refused 403 with an OperationOutcome that
//! says nothing about the trail or any patient, and every use, allowed or refused, is an audit
//! event carrying the request's id.

use crate::harness::{Server, send};
use crate::leaks::{make, user_token};
use serde_json::{Value, json};

/// The request-id entity of an AuditEvent.
fn request_id_of(ev: &Value) -> Option<String> {
    ev["entity"].as_array()?.iter().find_map(|e| {
        (e["type"]["code"] == "XrequestId")
            .then(|| e["what"]["identifier"]["value"].as_str().map(str::to_owned))
            .flatten()
    })
}

/// Every event of the trail that names `agent`, through the FHIR API with the system token.
async fn events_of(s: &Server, agent: &str) -> Vec<Value> {
    let (st, _, b) = send(s.get(&format!("AuditEvent?agent={agent}&_count=1000"))).await;
    assert_eq!(st, 200, "{b}");
    b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_auditors_use_the_audit_routes_and_every_use_is_audited() {
    let s = Server::start().await;
    let pid = make(
        &s,
        json!({"resourceType": "Patient", "name": [{"family": "Trailmarker"}]}),
    )
    .await;
    let practitioner = make(
        &s,
        json!({"resourceType": "Practitioner", "name": [{"family": "Lister"}]}),
    )
    .await;
    for _ in 0..2 {
        send(s.get(&format!("Patient/{pid}"))).await;
    }
    let routes = |patient: &str| {
        vec![
            "/audit/proof/1".to_owned(),
            "/audit/consistency?first=1&second=2".to_owned(),
            format!("/admin/reports/patient/{patient}?format=json"),
            "/admin/reports/user/physician1?format=csv".to_owned(),
        ]
    };
    let get =
        |token: &str, route: &str| s.http.get(format!("{}{route}", s.root)).bearer_auth(token);

    // Broad user tokens of roles that are not auditors, and a system client without an
    // AuditEvent scope.
    let refused_callers = [
        (
            "physician1",
            user_token(
                &s,
                "physician1",
                "physician",
                Some(&format!("Practitioner/{practitioner}")),
                "user/*.*",
            )
            .await,
        ),
        (
            "patient1",
            user_token(
                &s,
                "patient1",
                "patient",
                Some(&format!("Patient/{pid}")),
                "user/*.read",
            )
            .await,
        ),
        (
            "secadmin1",
            user_token(&s, "secadmin1", "security_admin", None, "user/*.*").await,
        ),
        (
            "sysadmin1",
            user_token(&s, "sysadmin1", "system_admin", None, "user/*.*").await,
        ),
        (
            "lab-feed",
            s.token_for("lab-feed", "system/Patient.rs system/Observation.cruds")
                .await,
        ),
    ];
    let mut refusals: Vec<(&str, String)> = Vec::new();
    for (who, token) in &refused_callers {
        // Each route refuses with the same body for an existing patient and for one that does
        // not exist: nothing about the patient or the trail leaks.
        let mut bodies = Vec::new();
        for route in routes(&pid).iter().chain(routes("no-such-patient").iter()) {
            let r = get(token, route).send().await.unwrap();
            assert_eq!(r.status(), 403, "{who} {route}");
            let rid = r
                .headers()
                .get("x-request-id")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            let text = r.text().await.unwrap();
            let oo: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                oo["resourceType"], "OperationOutcome",
                "{who} {route}: {text}"
            );
            assert_eq!(oo["issue"][0]["code"], "forbidden", "{text}");
            for secret in [
                pid.as_str(),
                "Trailmarker",
                "root_hash",
                "inclusion_path",
                "entry",
            ] {
                assert!(
                    !text.contains(secret),
                    "{who} {route} leaks {secret}: {text}"
                );
            }
            bodies.push(text);
            refusals.push((who, rid));
        }
        let (existing, absent) = bodies.split_at(bodies.len() / 2);
        assert_eq!(existing, absent, "{who}: the refusals differ");
    }

    // An auditor (a user with the auditor role) is served every route.
    let auditor = user_token(&s, "auditor1", "auditor", None, "user/*.read").await;
    let mut uses = Vec::new();
    for route in routes(&pid) {
        let r = get(&auditor, &route).send().await.unwrap();
        assert_eq!(r.status(), 200, "auditor {route}");
        uses.push(
            r.headers()
                .get("x-request-id")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned(),
        );
        let text = r.text().await.unwrap();
        assert!(!text.is_empty(), "{route}");
    }
    let report: Value = get(
        &auditor,
        &format!("/admin/reports/patient/{pid}?format=json"),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(
        report.as_array().is_some_and(|rows| rows.len() >= 3),
        "the accounting of disclosures lists the create and the reads: {report}"
    );
    // An auditor whose token lacks AuditEvent scopes is refused too: role ∩ scopes.
    let narrow = user_token(&s, "auditor2", "auditor", None, "user/Patient.read").await;
    let (st, _, oo) = send(get(&narrow, "/audit/proof/1")).await;
    assert_eq!(
        (st, oo["issue"][0]["code"].as_str()),
        (403, Some("forbidden"))
    );
    // Without a token: 401, as before.
    let r = s
        .http
        .get(format!("{}/audit/proof/1", s.root))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Every refusal is a permission-denied event (outcome 4) of its caller, with its request id.
    for who in [
        "physician1",
        "patient1",
        "secadmin1",
        "sysadmin1",
        "lab-feed",
    ] {
        let events = events_of(&s, who).await;
        for (_, rid) in refusals.iter().filter(|(w, _)| *w == who) {
            let ev = events
                .iter()
                .find(|e| request_id_of(e).as_deref() == Some(rid))
                .unwrap_or_else(|| panic!("no audit event for {who}'s refused request {rid}"));
            assert_eq!(ev["outcome"], "4", "{ev}");
            assert_eq!(ev["type"]["code"], "110113", "{ev}");
        }
    }
    // Every use by the auditor is an Audit Log Used event naming the auditor.
    let events = events_of(&s, "auditor1").await;
    for rid in &uses {
        let ev = events
            .iter()
            .find(|e| request_id_of(e).as_deref() == Some(rid))
            .unwrap_or_else(|| panic!("no audit event for the auditor's request {rid}"));
        assert_eq!(ev["type"]["code"], "110101", "{ev}");
        assert_eq!(ev["outcome"], "0", "{ev}");
        assert!(ev.to_string().contains("auditor1"), "{ev}");
    }
}
