//! Golden AuditEvents written by hand from PRODUCT.md §2.4, stability of the canonical bytes, and
//! R4 validity of every kind.

use super::*;

/// 2026-11-28T09:14:03.117Z (`date -u -d 2026-11-28T09:14:03Z +%s` = 1795857243).
const T: i64 = 1_795_857_243_117;

/// The PRODUCT.md §2.4 example, copied by hand, including its id.
const PRODUCT_EXAMPLE: &str = r#"{"resourceType": "AuditEvent", "id": "a-000000000042",
 "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
 "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
 "action": "R", "recorded": "2026-11-28T09:14:03.117Z", "outcome": "0",
 "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}],
 "agent": [
   {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
    "who": {"reference": "Practitioner/p-17", "identifier": {"system": "urn:carevault:user", "value": "jdoe"}},
    "role": [{"coding": [{"system": "urn:carevault:role", "code": "nurse"}]}],
    "requestor": true, "network": {"address": "10.2.3.4", "type": "2"},
    "extension": [{"url": "urn:carevault:user-agent", "valueString": "Mozilla/5.0 ..."}]},
   {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150", "display": "Application"}]},
    "who": {"identifier": {"system": "urn:carevault:client", "value": "bedside-app"}}, "requestor": false},
   {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153", "display": "Source Role ID"}]},
    "who": {"identifier": {"system": "urn:carevault:node", "value": "cv-node-1"}}, "requestor": false}],
 "source": {"observer": {"identifier": {"system": "urn:carevault:node", "value": "cv-node-1"}}},
 "entity": [
   {"what": {"reference": "Patient/pt-88"}, "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}},
   {"what": {"reference": "Observation/obs-5/_history/2"}, "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4"}},
   {"what": {"identifier": {"system": "urn:carevault:request-id", "value": "7f3c..."}},
    "type": {"system": "http://hl7.org/fhir/ig/balp/CodeSystem/BasicAuditEntityType", "code": "XrequestId"}}]}"#;

fn product_record() -> AuditRecord {
    AuditRecord {
        recorded_ms: T,
        kind: EventKind::Rest(RestInteraction::Read),
        action: Action::Read,
        outcome: Outcome::Success,
        outcome_desc: None,
        purpose: vec!["TREAT".into()],
        user: Some(UserRef {
            name: "jdoe".into(),
            reference: Some("Practitioner/p-17".into()),
            roles: vec!["nurse".into()],
        }),
        client: Some("bedside-app".into()),
        address: Some("10.2.3.4".into()),
        user_agent: Some("Mozilla/5.0 ...".into()),
        node: "cv-node-1".into(),
        patients: vec!["Patient/pt-88".into()],
        resources: vec!["Observation/obs-5/_history/2".into()],
        query: None,
        request_id: Some("7f3c...".into()),
        break_glass_reason: None,
        detail: vec![],
    }
}

/// Compact text of hand-written JSON, keeping its element order.
fn compact(text: &str) -> String {
    serde_json::from_str::<Value>(text).unwrap().to_string()
}

fn strip_id(text: &str) -> String {
    let mut v: Value = serde_json::from_str(text).unwrap();
    v.as_object_mut().unwrap().shift_remove("id");
    v.to_string()
}

/// The AuditEvent rendered from what the store keeps for `r`: its compact canonical bytes.
fn stored_rendering(r: &AuditRecord) -> String {
    render(&canonical_bytes(r)).unwrap().to_string()
}

fn assert_valid_r4(event: &Value) {
    let issues = carevault_fhir::validate(&with_id(event.clone(), 1));
    let errors: Vec<_> = issues
        .iter()
        .filter(|i| {
            matches!(
                i.severity,
                carevault_fhir::IssueSeverity::Error | carevault_fhir::IssueSeverity::Fatal
            )
        })
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\n{event}");
}

#[test]
fn product_example_is_reproduced_exactly() {
    let record = product_record();
    // What is stored renders to the example; so does the record itself.
    let bytes = canonical_bytes(&record);
    assert_eq!(
        render(&bytes).unwrap().to_string(),
        strip_id(PRODUCT_EXAMPLE)
    );
    assert_eq!(to_json(&record).to_string(), strip_id(PRODUCT_EXAMPLE));
    assert_eq!(
        with_id(to_json(&record), 42).to_string(),
        compact(PRODUCT_EXAMPLE)
    );
    assert_valid_r4(&to_json(&record));
}

#[test]
fn search_golden() {
    let mut r = AuditRecord::new(T, EventKind::Rest(RestInteraction::SearchType), "cv-node-1");
    r.purpose = vec!["TREAT".into()];
    r.user = Some(UserRef {
        name: "asmith".into(),
        reference: Some("Practitioner/p-2".into()),
        roles: vec!["physician".into(), "auditor".into()],
    });
    r.client = Some("bedside-app".into());
    r.address = Some("2001:db8::7".into());
    r.patients = vec!["Patient/pt-88".into(), "Patient/pt-90".into()];
    r.query = Some(b"Observation?code=1234-5&_count=10".to_vec());
    r.request_id = Some("req-1".into());
    let want = r#"{"resourceType": "AuditEvent",
 "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
 "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "search-type"}],
 "action": "E", "recorded": "2026-11-28T09:14:03.117Z", "outcome": "0",
 "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}],
 "agent": [
   {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
    "who": {"reference": "Practitioner/p-2", "identifier": {"system": "urn:carevault:user", "value": "asmith"}},
    "role": [{"coding": [{"system": "urn:carevault:role", "code": "physician"}]},
             {"coding": [{"system": "urn:carevault:role", "code": "auditor"}]}],
    "requestor": true, "network": {"address": "2001:db8::7", "type": "2"}},
   {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150", "display": "Application"}]},
    "who": {"identifier": {"system": "urn:carevault:client", "value": "bedside-app"}}, "requestor": false},
   {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153", "display": "Source Role ID"}]},
    "who": {"identifier": {"system": "urn:carevault:node", "value": "cv-node-1"}}, "requestor": false}],
 "source": {"observer": {"identifier": {"system": "urn:carevault:node", "value": "cv-node-1"}}},
 "entity": [
   {"what": {"reference": "Patient/pt-88"}, "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}},
   {"what": {"reference": "Patient/pt-90"}, "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}},
   {"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
    "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24"},
    "query": "T2JzZXJ2YXRpb24/Y29kZT0xMjM0LTUmX2NvdW50PTEw"},
   {"what": {"identifier": {"system": "urn:carevault:request-id", "value": "req-1"}},
    "type": {"system": "http://hl7.org/fhir/ig/balp/CodeSystem/BasicAuditEntityType", "code": "XrequestId"}}]}"#;
    assert_eq!(stored_rendering(&r), compact(want));
    assert_eq!(to_json(&r).to_string(), compact(want));
    let event = to_json(&r);
    assert_valid_r4(&event);
    assert_eq!(patients_of(&event), vec!["Patient/pt-88", "Patient/pt-90"]);
    assert_eq!(user_of(&event).as_deref(), Some("asmith"));
    assert_eq!(client_of(&event).as_deref(), Some("bedside-app"));
}

#[test]
fn failed_login_golden() {
    // Outcome left at success by mistake: a failed login is still rendered as a failure.
    let mut r = AuditRecord::new(T, EventKind::LoginFailed, "cv-node-1");
    r.outcome = Outcome::Success;
    r.outcome_desc = Some("wrong password or one-time code".into());
    r.user = Some(UserRef {
        name: "jdoe".into(),
        reference: None,
        roles: vec![],
    });
    r.address = Some("10.2.3.4".into());
    r.user_agent = Some("curl/8.5".into());
    let want = r#"{"resourceType": "AuditEvent",
 "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114", "display": "User Authentication"},
 "subtype": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110122", "display": "Login"},
             {"system": "urn:carevault:audit-subtype", "code": "login-failed"}],
 "action": "E", "recorded": "2026-11-28T09:14:03.117Z", "outcome": "4",
 "outcomeDesc": "wrong password or one-time code",
 "agent": [
   {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
    "who": {"identifier": {"system": "urn:carevault:user", "value": "jdoe"}},
    "requestor": true, "network": {"address": "10.2.3.4", "type": "2"},
    "extension": [{"url": "urn:carevault:user-agent", "valueString": "curl/8.5"}]},
   {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153", "display": "Source Role ID"}]},
    "who": {"identifier": {"system": "urn:carevault:node", "value": "cv-node-1"}}, "requestor": false}],
 "source": {"observer": {"identifier": {"system": "urn:carevault:node", "value": "cv-node-1"}}}}"#;
    assert_eq!(stored_rendering(&r), compact(want));
    assert_eq!(to_json(&r).to_string(), compact(want));
    assert_valid_r4(&to_json(&r));
    assert_eq!(client_of(&to_json(&r)), None);
}

#[test]
fn break_glass_read_golden() {
    let mut r = AuditRecord::new(T, EventKind::Rest(RestInteraction::Read), "cv-node-1");
    r.purpose = vec!["TREAT".into()];
    r.user = Some(UserRef {
        name: "jdoe".into(),
        reference: Some("Practitioner/p-17".into()),
        roles: vec!["physician".into()],
    });
    r.patients = vec!["Patient/pt-88".into()];
    r.resources = vec!["Patient/pt-88".into()];
    r.break_glass_reason = Some("unconscious in ER, allergies needed".into());
    let want = r#"{"resourceType": "AuditEvent",
 "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
 "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
 "action": "R", "recorded": "2026-11-28T09:14:03.117Z", "outcome": "0",
 "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]},
                    {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG"}],
                     "text": "unconscious in ER, allergies needed"}],
 "agent": [
   {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
    "who": {"reference": "Practitioner/p-17", "identifier": {"system": "urn:carevault:user", "value": "jdoe"}},
    "role": [{"coding": [{"system": "urn:carevault:role", "code": "physician"}]}],
    "requestor": true},
   {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153", "display": "Source Role ID"}]},
    "who": {"identifier": {"system": "urn:carevault:node", "value": "cv-node-1"}}, "requestor": false}],
 "source": {"observer": {"identifier": {"system": "urn:carevault:node", "value": "cv-node-1"}}},
 "entity": [
   {"what": {"reference": "Patient/pt-88"}, "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}},
   {"what": {"reference": "Patient/pt-88"}, "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4"}}]}"#;
    assert_eq!(stored_rendering(&r), compact(want));
    assert_eq!(to_json(&r).to_string(), compact(want));
    assert_valid_r4(&to_json(&r));
}

#[test]
fn server_start_golden_with_detail() {
    let mut r = AuditRecord::new(T, EventKind::ServerStart, "cv-node-1");
    r.detail = vec![
        ("version".into(), "0.1.0".into()),
        ("mode".into(), "read-only".into()),
    ];
    let want = r#"{"resourceType": "AuditEvent",
 "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110100", "display": "Application Activity"},
 "subtype": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110120", "display": "Application Start"},
             {"system": "urn:carevault:audit-subtype", "code": "server-start"}],
 "action": "E", "recorded": "2026-11-28T09:14:03.117Z", "outcome": "0",
 "agent": [
   {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153", "display": "Source Role ID"}]},
    "who": {"identifier": {"system": "urn:carevault:node", "value": "cv-node-1"}}, "requestor": true}],
 "source": {"observer": {"identifier": {"system": "urn:carevault:node", "value": "cv-node-1"}}},
 "entity": [
   {"type": {"system": "urn:carevault:audit-entity-type", "code": "detail"},
    "detail": [{"type": "version", "valueString": "0.1.0"}, {"type": "mode", "valueString": "read-only"}]}]}"#;
    assert_eq!(stored_rendering(&r), compact(want));
    assert_eq!(to_json(&r).to_string(), compact(want));
    assert_valid_r4(&to_json(&r));
}

#[test]
fn system_client_is_the_requestor() {
    let mut r = AuditRecord::new(
        T,
        EventKind::Rest(RestInteraction::Operation("$export".into())),
        "cv-node-1",
    );
    r.client = Some("nightly-etl".into());
    r.address = Some("etl.internal".into());
    let e = to_json(&r);
    let want_subtype = r#"[{"system": "http://hl7.org/fhir/restful-interaction", "code": "operation"},
                          {"system": "urn:carevault:operation", "code": "$export"}]"#;
    assert_eq!(e["subtype"].to_string(), compact(want_subtype));
    let want_client = r#"{"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150", "display": "Application"}]},
    "who": {"identifier": {"system": "urn:carevault:client", "value": "nightly-etl"}}, "requestor": true,
    "network": {"address": "etl.internal", "type": "1"}}"#;
    assert_eq!(e["agent"][0].to_string(), compact(want_client));
    assert_eq!(e["agent"][1]["requestor"], Value::Bool(false));
    assert_eq!(user_of(&e), None);
    assert_eq!(client_of(&e).as_deref(), Some("nightly-etl"));
    assert_valid_r4(&e);
}

fn all_kinds() -> Vec<EventKind> {
    let rest = [
        RestInteraction::Read,
        RestInteraction::Vread,
        RestInteraction::Update,
        RestInteraction::Patch,
        RestInteraction::Delete,
        RestInteraction::HistoryInstance,
        RestInteraction::HistoryType,
        RestInteraction::HistorySystem,
        RestInteraction::Create,
        RestInteraction::SearchType,
        RestInteraction::SearchSystem,
        RestInteraction::Capabilities,
        RestInteraction::Transaction,
        RestInteraction::Batch,
        RestInteraction::Operation("$validate".into()),
        RestInteraction::Operation("$access-report".into()),
    ];
    rest.into_iter()
        .map(EventKind::Rest)
        .chain(NON_REST_KINDS)
        .collect()
}

#[test]
fn every_kind_is_valid_r4_and_reads_back() {
    for kind in all_kinds() {
        let mut r = AuditRecord::new(T, kind.clone(), "cv-node-1");
        r.user = Some(UserRef {
            name: "u".into(),
            reference: Some("Patient/p1".into()),
            roles: vec!["patient".into()],
        });
        r.client = Some("c".into());
        r.patients = vec!["Patient/p1".into()];
        r.detail = vec![("k".into(), "v".into())];
        let e = to_json(&r);
        assert_valid_r4(&e);
        assert_eq!(EventKind::from_event(&e), Some(kind.clone()), "{e}");
        assert_eq!(
            Action::from_code(e["action"].as_str().unwrap()),
            Some(r.action)
        );
        let outcome = Outcome::from_code(e["outcome"].as_str().unwrap()).unwrap();
        assert_eq!(outcome, kind.default_outcome());
        // Exactly one requestor.
        let requestors = e["agent"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["requestor"] == Value::Bool(true))
            .count();
        assert_eq!(requestors, 1);
    }
    let codes: std::collections::HashSet<String> =
        all_kinds().iter().map(|k| k.code().to_owned()).collect();
    assert_eq!(codes.len(), all_kinds().len(), "kind codes must be unique");
}

#[test]
fn canonical_bytes_are_stable() {
    let r = product_record();
    let a = canonical_bytes(&r);
    assert_eq!(a, canonical_bytes(&r.clone()));
    // Decoding the stored bytes and encoding them again gives the same bytes.
    assert_eq!(decode(&a).unwrap(), r);
    assert_eq!(canonical_bytes(&decode(&a).unwrap()), a);
    // with_id does not disturb the order of the other elements.
    let rendered = render(&a).unwrap();
    let with = with_id(rendered.clone(), 7).to_string();
    assert_eq!(
        with,
        rendered.to_string().replacen(
            r#"{"resourceType":"AuditEvent","#,
            r#"{"resourceType":"AuditEvent","id":"a-000000000007","#,
            1
        )
    );
    // Any change of content changes the bytes.
    let mut other = r.clone();
    other.recorded_ms += 1;
    assert_ne!(canonical_bytes(&other), a);
}

#[test]
fn ids_round_trip() {
    assert_eq!(event_id(42), "a-000000000042");
    assert_eq!(seq_of_id("a-000000000042"), Some(42));
    assert_eq!(event_id(1_234_567_890_123), "a-1234567890123");
    assert_eq!(seq_of_id("a-1234567890123"), Some(1_234_567_890_123));
    for bad in [
        "a-42",
        "b-000000000042",
        "a-00000000004x",
        "a-0000000000042",
        "",
    ] {
        assert_eq!(seq_of_id(bad), None, "{bad}");
    }
}

#[test]
fn debug_redacts_query_and_reason() {
    let mut r = product_record();
    r.query = Some(b"Patient?name=Smith".to_vec());
    r.break_glass_reason = Some("Smith collapsed".into());
    let text = format!("{r:?}");
    assert!(!text.contains("Smith"), "{text}");
    assert!(text.contains("<redacted>"));
}

#[test]
fn extraction_tolerates_foreign_events() {
    let e = serde_json::json!({"resourceType": "AuditEvent", "entity": [{"what": {"reference": "Patient/x"}}]});
    assert!(patients_of(&e).is_empty());
    assert_eq!(user_of(&e), None);
    assert_eq!(EventKind::from_event(&e), None);
    assert_eq!(with_id(Value::Null, 1), Value::Null);
}

#[test]
fn the_r4_check_catches_broken_events() {
    let has_errors = |e: &Value| carevault_fhir::validate::has_errors(&carevault_fhir::validate(e));
    let good = with_id(to_json(&product_record()), 1);
    assert!(!has_errors(&good));
    let mut no_source = good.clone();
    no_source.as_object_mut().unwrap().shift_remove("source");
    assert!(has_errors(&no_source));
    let mut bad_outcome = good.clone();
    bad_outcome["outcome"] = Value::from("3");
    assert!(has_errors(&bad_outcome));
    let mut no_requestor = good;
    no_requestor["agent"][0]
        .as_object_mut()
        .unwrap()
        .shift_remove("requestor");
    assert!(has_errors(&no_requestor));
}

mod compact_form;
