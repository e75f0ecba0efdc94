//! Tests of the store through the REST interactions, on real SQLite files in a temp directory.

use std::sync::Arc;

use carevault_crypto::Keyring;
use serde_json::{Value, json};

use crate::{HistoryRequest, Rest, RestError, SearchRequest, open_sqlite};

const BASE: &str = "https://127.0.0.1:8443/fhir";

fn setup() -> (tempfile::TempDir, Rest) {
    let dir = tempfile::tempdir().unwrap();
    let keyring = Arc::new(Keyring::from_data_key(1, &[7u8; 32]).unwrap());
    let store = open_sqlite(&dir.path().join("store.db"), keyring).unwrap();
    (dir, Rest::new(store))
}

fn body(s: &crate::Stored) -> Value {
    serde_json::from_slice(&s.json).unwrap()
}

fn search(rest: &Rest, rtype: &str, q: &str) -> Value {
    let params = crate::search::decode_query(q);
    rest.search(&SearchRequest {
        rtype,
        compartment: None,
        params: &params,
        base_url: BASE,
        strict: true,
    })
    .unwrap()
}

fn ids(bundle: &Value, mode: &str) -> Vec<String> {
    let mut v: Vec<String> = bundle["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["search"]["mode"] == mode)
                .map(|e| {
                    format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str().unwrap(),
                        e["resource"]["id"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn count(rest: &Rest, rtype: &str, q: &str) -> usize {
    let b = search(rest, rtype, &format!("{q}&_count=1000"));
    ids(&b, "match").len()
}

fn patient(family: &str, given: &str, birth: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": [given]}], "birthDate": birth, "gender": "female"})
}

#[test]
fn create_read_update_vread_delete_history() {
    let (_d, rest) = setup();
    let w = rest
        .create("Patient", patient("Quixley", "Ann", "1970-01-02"), None)
        .unwrap();
    assert!(w.created);
    assert_eq!(w.stored.version, 1);
    let id = w.stored.id.clone();
    let got = rest.read("Patient", &id).unwrap();
    assert_eq!(got.json, w.stored.json, "reads return the stored bytes");
    let b = body(&got);
    assert_eq!(b["meta"]["versionId"], "1");
    assert!(b["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
    let keys: Vec<&String> = b.as_object().unwrap().keys().collect();
    assert_eq!(&keys[..3], &["resourceType", "id", "meta"]);

    let mut upd = b.clone();
    upd["gender"] = json!("male");
    let w2 = rest.update("Patient", &id, upd.clone(), Some(1)).unwrap();
    assert!(!w2.created);
    assert_eq!(w2.stored.version, 2);
    assert_eq!(
        body(&rest.vread("Patient", &id, "1").unwrap())["gender"],
        "female"
    );
    assert_eq!(body(&rest.read("Patient", &id).unwrap())["gender"], "male");
    assert_eq!(
        count(&rest, "Patient", "gender=female"),
        0,
        "the old version's index rows are gone"
    );
    assert_eq!(count(&rest, "Patient", "gender=male&family=quixley"), 1);
    assert!(matches!(
        rest.vread("Patient", &id, "9"),
        Err(RestError::NotFound { .. })
    ));

    // Stale If-Match.
    assert!(matches!(
        rest.update("Patient", &id, upd.clone(), Some(1)),
        Err(RestError::PreconditionFailed(_))
    ));
    // Body id must match the URL.
    assert!(matches!(
        rest.update("Patient", "other", upd.clone(), None),
        Err(RestError::BadRequest { .. })
    ));

    assert_eq!(rest.delete("Patient", &id).unwrap(), Some(3));
    assert!(matches!(
        rest.read("Patient", &id),
        Err(RestError::Gone { version: 3, .. })
    ));
    assert_eq!(rest.delete("Patient", &id).unwrap(), None);
    assert_eq!(
        count(&rest, "Patient", "family=quixley"),
        0,
        "deleted resources leave the index"
    );

    let h = rest
        .history(&HistoryRequest {
            rtype: Some("Patient"),
            id: Some(&id),
            params: &[],
            base_url: BASE,
        })
        .unwrap();
    assert_eq!(h["total"], 3);
    let methods: Vec<&str> = h["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, vec!["DELETE", "PUT", "POST"]);

    // Update after delete brings it back as a new version.
    let w4 = rest.update("Patient", &id, upd, None).unwrap();
    assert!(w4.created);
    assert_eq!(w4.stored.version, 4);
    assert_eq!(count(&rest, "Patient", "family=quixley"), 1);

    // Update-as-create with a client id.
    let mut p = patient("Client", "Id", "1980");
    p["id"] = json!("client-chosen-1");
    let w = rest.update("Patient", "client-chosen-1", p, None).unwrap();
    assert!(w.created);
    assert_eq!(w.stored.id, "client-chosen-1");

    // Type and system history.
    let h = rest
        .history(&HistoryRequest {
            rtype: Some("Patient"),
            id: None,
            params: &[],
            base_url: BASE,
        })
        .unwrap();
    assert_eq!(h["total"], 5);
    let h = rest
        .history(&HistoryRequest {
            rtype: None,
            id: None,
            params: &[("_count".into(), "2".into())],
            base_url: BASE,
        })
        .unwrap();
    assert_eq!(h["entry"].as_array().unwrap().len(), 2);
    assert!(
        h["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next")
    );
}

#[test]
fn rejects_invalid_and_mismatched_resources() {
    let (_d, rest) = setup();
    let bad = json!({"resourceType": "Patient", "birthDate": "not-a-date"});
    assert!(matches!(
        rest.create("Patient", bad, None),
        Err(RestError::Invalid(_))
    ));
    let wrong = json!({"resourceType": "Observation"});
    assert!(matches!(
        rest.create("Patient", wrong, None),
        Err(RestError::BadRequest { .. })
    ));
    assert_eq!(count(&rest, "Patient", "_id=x,y"), 0);
    let h = rest
        .history(&HistoryRequest {
            rtype: None,
            id: None,
            params: &[],
            base_url: BASE,
        })
        .unwrap();
    assert_eq!(h["total"], 0, "nothing was stored");
}

#[test]
fn conditional_create_update_delete() {
    let (_d, rest) = setup();
    let mut p = patient("Cond", "A", "1990");
    p["identifier"] = json!([{"system": "urn:mrn", "value": "42"}]);
    let a = rest
        .create("Patient", p.clone(), Some("identifier=urn:mrn|42"))
        .unwrap();
    assert!(a.created);
    let b = rest
        .create("Patient", p.clone(), Some("identifier=urn:mrn|42"))
        .unwrap();
    assert!(!b.created);
    assert_eq!(a.stored.id, b.stored.id);
    rest.create("Patient", p.clone(), None).unwrap();
    assert!(matches!(
        rest.create("Patient", p.clone(), Some("identifier=urn:mrn|42")),
        Err(RestError::PreconditionFailed(_))
    ));

    let mut q = patient("Cond", "B", "1991");
    q["identifier"] = json!([{"system": "urn:mrn", "value": "43"}]);
    let w = rest
        .conditional_update("Patient", "identifier=urn:mrn|43", q.clone(), None)
        .unwrap();
    assert!(w.created);
    q["gender"] = json!("other");
    let w2 = rest
        .conditional_update("Patient", "identifier=urn:mrn|43", q, None)
        .unwrap();
    assert_eq!(
        (w2.created, w2.stored.id.clone(), w2.stored.version),
        (false, w.stored.id.clone(), 2)
    );
    assert!(matches!(
        rest.conditional_update("Patient", "identifier=urn:mrn|42", p, None),
        Err(RestError::PreconditionFailed(_))
    ));
    // A conditional delete matching several resources deletes none of them.
    let before = count(&rest, "Patient", "family=cond");
    assert!(matches!(
        rest.conditional_delete("Patient", "identifier=urn:mrn|42"),
        Err(RestError::PreconditionFailed(_))
    ));
    assert_eq!(count(&rest, "Patient", "family=cond"), before);
    assert_eq!(
        rest.conditional_delete("Patient", "identifier=urn:mrn|43")
            .unwrap(),
        1
    );
    assert_eq!(count(&rest, "Patient", "family=cond"), before - 1);
}

#[test]
fn json_patch() {
    let (_d, rest) = setup();
    let w = rest
        .create("Patient", patient("Patchy", "P", "1960"), None)
        .unwrap();
    let id = w.stored.id;
    let p = json!([{"op": "replace", "path": "/gender", "value": "male"}, {"op": "add", "path": "/name/0/given/-", "value": "Q"}]);
    let w2 = rest.patch("Patient", &id, p, Some(1)).unwrap();
    assert_eq!(w2.stored.version, 2);
    let b = body(&rest.read("Patient", &id).unwrap());
    assert_eq!(b["gender"], "male");
    assert_eq!(b["name"][0]["given"], json!(["P", "Q"]));
    let invalid = json!([{"op": "replace", "path": "/birthDate", "value": "nope"}]);
    assert!(matches!(
        rest.patch("Patient", &id, invalid, None),
        Err(RestError::Invalid(_))
    ));
    let stale = json!([{"op": "remove", "path": "/gender"}]);
    assert!(matches!(
        rest.patch("Patient", &id, stale, Some(1)),
        Err(RestError::PreconditionFailed(_))
    ));
    assert_eq!(rest.read("Patient", &id).unwrap().version, 2);
}

struct Fixture {
    smith: String,
    smithson: String,
    jones: String,
    obs: Vec<String>,
    enc: Vec<String>,
}

fn obs(patient: &str, system: &str, code: &str, display: &str, when: &str, value: &str) -> Value {
    let v: Value = serde_json::from_str(value).unwrap();
    json!({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": when,
        "valueQuantity": {"value": v, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}
    })
}

fn fixture(rest: &Rest) -> Fixture {
    let smith = rest
        .create("Patient", patient("Smith", "Alice", "1980-05-17"), None)
        .unwrap()
        .stored
        .id;
    let mut p = patient("Smithson", "Bob", "1975");
    p["meta"] = json!({"tag": [{"system": "urn:tags", "code": "vip"}], "profile": ["http://example.org/p"]});
    let smithson = rest.create("Patient", p, None).unwrap().stored.id;
    let jones = rest
        .create("Patient", patient("Jönes", "Carla", "2001-02"), None)
        .unwrap()
        .stored
        .id;
    let loinc = "http://loinc.org";
    let o = [
        obs(
            &smith,
            loinc,
            "1234-5",
            "Body weight",
            "2020-03-04T10:00:00Z",
            "5.4",
        ),
        obs(&smith, loinc, "9999-9", "Heart rate", "2021-01-01", "70"),
        obs(
            &smithson,
            loinc,
            "1234-5",
            "Body weight",
            "2019-12-31T23:00:00Z",
            "80.0",
        ),
        obs(
            &jones,
            "http://snomed.info/sct",
            "1234-5",
            "Other weight",
            "2020",
            "5.40",
        ),
    ];
    let obs: Vec<String> = o
        .into_iter()
        .map(|r| rest.create("Observation", r, None).unwrap().stored.id)
        .collect();
    let mut no_code = json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "urn:x", "code": "q"}], "text": "free text only"}});
    no_code["subject"] = json!({"reference": format!("Patient/{jones}")});
    let mut obs = obs;
    obs.push(rest.create("Observation", no_code, None).unwrap().stored.id);
    let enc = [("2019-06-01T10:00:00Z", "2019-06-01T11:00:00Z"), ("2020-01-15T08:00:00Z", "2020-01-20T08:00:00Z"), ("2021-03-01", "2021-03-02")]
        .iter()
        .map(|(s, e)| {
            let r = json!({"resourceType": "Encounter", "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": format!("Patient/{smith}")}, "period": {"start": s, "end": e}});
            rest.create("Encounter", r, None).unwrap().stored.id
        })
        .collect();
    Fixture {
        smith,
        smithson,
        jones,
        obs,
        enc,
    }
}

fn pid(id: &str) -> String {
    format!("Patient/{id}")
}

fn oid(f: &Fixture, i: usize) -> String {
    format!("Observation/{}", f.obs[i])
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn match_ids(rest: &Rest, rtype: &str, q: &str) -> Vec<String> {
    ids(&search(rest, rtype, &format!("{q}&_count=1000")), "match")
}

#[test]
fn string_search() {
    let (_d, rest) = setup();
    let f = fixture(&rest);
    assert_eq!(
        match_ids(&rest, "Patient", "family=smi"),
        sorted(vec![pid(&f.smith), pid(&f.smithson)])
    );
    assert_eq!(
        match_ids(&rest, "Patient", "family=SMITH"),
        sorted(vec![pid(&f.smith), pid(&f.smithson)])
    );
    assert_eq!(
        match_ids(&rest, "Patient", "family:exact=Smith"),
        vec![pid(&f.smith)]
    );
    assert_eq!(
        match_ids(&rest, "Patient", "family:exact=smith"),
        Vec::<String>::new()
    );
    assert_eq!(
        match_ids(&rest, "Patient", "family:contains=ithso"),
        vec![pid(&f.smithson)]
    );
    assert_eq!(
        match_ids(&rest, "Patient", "family=jones"),
        vec![pid(&f.jones)],
        "accents fold"
    );
    assert_eq!(
        match_ids(&rest, "Patient", "name=carla"),
        vec![pid(&f.jones)]
    );
    assert_eq!(
        match_ids(&rest, "Patient", "family=smith,jones"),
        sorted(vec![pid(&f.smith), pid(&f.smithson), pid(&f.jones)])
    );
    assert_eq!(
        match_ids(&rest, "Patient", "family=smi&given=bob"),
        vec![pid(&f.smithson)]
    );
    assert!(matches!(
        rest.search(&SearchRequest {
            rtype: "Patient",
            compartment: None,
            params: &[("family:contains".into(), "ab".into())],
            base_url: BASE,
            strict: true
        }),
        Err(RestError::BadRequest { .. })
    ));
}

#[test]
fn token_search() {
    let (_d, rest) = setup();
    let f = fixture(&rest);
    let loinc_weight = sorted(vec![oid(&f, 0), oid(&f, 2)]);
    assert_eq!(
        match_ids(&rest, "Observation", "code=http://loinc.org|1234-5"),
        loinc_weight
    );
    assert_eq!(
        match_ids(&rest, "Observation", "code=1234-5"),
        sorted(vec![oid(&f, 0), oid(&f, 2), oid(&f, 3)])
    );
    assert_eq!(
        match_ids(&rest, "Observation", "code=|1234-5"),
        Vec::<String>::new()
    );
    assert_eq!(
        match_ids(&rest, "Observation", "code=http://snomed.info/sct|"),
        vec![oid(&f, 3)]
    );
    assert_eq!(
        match_ids(&rest, "Observation", "code:not=http://loinc.org|1234-5"),
        sorted(vec![oid(&f, 1), oid(&f, 3), oid(&f, 4)])
    );
    assert_eq!(
        match_ids(&rest, "Observation", "code:text=heart"),
        vec![oid(&f, 1)]
    );
    assert_eq!(
        match_ids(&rest, "Observation", "code:text=free text only"),
        vec![oid(&f, 4)]
    );
    assert_eq!(
        match_ids(&rest, "Observation", "value-quantity:missing=true"),
        vec![oid(&f, 4)]
    );
    assert_eq!(
        match_ids(&rest, "Observation", "value-quantity:missing=false").len(),
        4
    );
    assert_eq!(match_ids(&rest, "Patient", "gender=female").len(), 3);
    assert_eq!(
        match_ids(&rest, "Patient", "_tag=urn:tags|vip"),
        vec![pid(&f.smithson)]
    );
    assert_eq!(
        match_ids(&rest, "Patient", "_profile=http://example.org/p"),
        vec![pid(&f.smithson)]
    );
    assert_eq!(
        match_ids(&rest, "Patient", &format!("_id={},{}", f.smith, f.jones)),
        sorted(vec![pid(&f.smith), pid(&f.jones)])
    );
}

#[test]
fn reference_chain_and_has_search() {
    let (_d, rest) = setup();
    let f = fixture(&rest);
    let smith_obs = sorted(vec![oid(&f, 0), oid(&f, 1)]);
    assert_eq!(
        match_ids(&rest, "Observation", &format!("patient={}", f.smith)),
        smith_obs
    );
    assert_eq!(
        match_ids(
            &rest,
            "Observation",
            &format!("subject=Patient/{}", f.smith)
        ),
        smith_obs
    );
    assert_eq!(
        match_ids(
            &rest,
            "Observation",
            &format!("subject:Patient={}", f.smith)
        ),
        smith_obs
    );
    assert_eq!(
        match_ids(
            &rest,
            "Observation",
            &format!("subject={BASE}/Patient/{}", f.smith)
        ),
        smith_obs
    );
    assert_eq!(
        match_ids(&rest, "Observation", &format!("subject:Group={}", f.smith)),
        Vec::<String>::new()
    );
    assert_eq!(
        match_ids(
            &rest,
            "Observation",
            &format!("patient={}&code=http://loinc.org|1234-5", f.smith)
        ),
        vec![oid(&f, 0)]
    );
    assert_eq!(
        match_ids(&rest, "Observation", "subject:Patient.family=smiths"),
        vec![oid(&f, 2)]
    );
    assert_eq!(
        match_ids(&rest, "Observation", "patient.family=jones"),
        sorted(vec![oid(&f, 3), oid(&f, 4)])
    );
    assert_eq!(
        match_ids(&rest, "Patient", "_has:Observation:patient:code=9999-9"),
        vec![pid(&f.smith)]
    );
    assert_eq!(
        match_ids(
            &rest,
            "Patient",
            "_has:Observation:patient:code=http://loinc.org|1234-5"
        ),
        sorted(vec![pid(&f.smith), pid(&f.smithson)])
    );
    // Compartment search.
    let params: Vec<(String, String)> = vec![];
    let b = rest
        .search(&SearchRequest {
            rtype: "Observation",
            compartment: Some(("Patient", &f.jones)),
            params: &params,
            base_url: BASE,
            strict: true,
        })
        .unwrap();
    assert_eq!(ids(&b, "match"), sorted(vec![oid(&f, 3), oid(&f, 4)]));
    assert_eq!(b["total"], 2);
}

#[test]
fn date_number_quantity_search() {
    let (_d, rest) = setup();
    let f = fixture(&rest);
    // Observation dates: 0 = 2020-03-04T10Z, 1 = 2021-01-01 (day), 2 = 2019-12-31T23Z, 3 = 2020 (year).
    assert_eq!(
        match_ids(&rest, "Observation", "date=2020"),
        sorted(vec![oid(&f, 0), oid(&f, 3)])
    );
    assert_eq!(
        match_ids(&rest, "Observation", "date=2020-03"),
        vec![oid(&f, 0)]
    );
    assert_eq!(
        match_ids(&rest, "Observation", "date=2020-03-04"),
        vec![oid(&f, 0)]
    );
    assert_eq!(
        match_ids(&rest, "Observation", "date=ne2020"),
        sorted(vec![oid(&f, 1), oid(&f, 2)])
    );
    assert_eq!(
        match_ids(&rest, "Observation", "date=ge2020-06"),
        sorted(vec![oid(&f, 1), oid(&f, 3)])
    );
    assert_eq!(
        match_ids(&rest, "Observation", "date=gt2020"),
        vec![oid(&f, 1)]
    );
    assert_eq!(
        match_ids(&rest, "Observation", "date=lt2020"),
        vec![oid(&f, 2)]
    );
    assert_eq!(
        match_ids(&rest, "Observation", "date=le2020-01-01"),
        sorted(vec![oid(&f, 2), oid(&f, 3)])
    );
    assert_eq!(
        match_ids(&rest, "Observation", "date=sa2020-12-31"),
        vec![oid(&f, 1)]
    );
    assert_eq!(
        match_ids(&rest, "Observation", "date=eb2020-01-01"),
        vec![oid(&f, 2)]
    );
    assert_eq!(
        match_ids(&rest, "Observation", "date=ge2020-01-01&date=lt2021"),
        sorted(vec![oid(&f, 0), oid(&f, 3)])
    );
    assert_eq!(
        match_ids(&rest, "Observation", "date=2020-03-04T11:00:00%2B01:00"),
        vec![oid(&f, 0)]
    );
    assert_eq!(
        match_ids(&rest, "Observation", "date=2020-03-04T10:00:00%2B01:00"),
        Vec::<String>::new()
    );
    assert_eq!(
        match_ids(&rest, "Observation", "date=2020-03-04T10:00:00Z"),
        vec![oid(&f, 0)]
    );
    // Encounter periods: [2019-06-01 10-11], [2020-01-15 .. 2020-01-20], [2021-03-01 .. 2021-03-02 end of day].
    assert_eq!(match_ids(&rest, "Encounter", "date=ge2020-01-17").len(), 2);
    assert_eq!(
        match_ids(&rest, "Encounter", "date=2020-01"),
        vec![format!("Encounter/{}", f.enc[1])]
    );
    assert_eq!(
        match_ids(&rest, "Encounter", "date=lt2019-06-01T10:30:00Z"),
        vec![format!("Encounter/{}", f.enc[0])]
    );
    // Quantities: 0 = 5.4 mg, 1 = 70 mg, 2 = 80.0 mg, 3 = 5.40 mg.
    assert_eq!(
        match_ids(
            &rest,
            "Observation",
            "value-quantity=5.4|http://unitsofmeasure.org|mg"
        ),
        sorted(vec![oid(&f, 0), oid(&f, 3)])
    );
    assert_eq!(
        match_ids(&rest, "Observation", "value-quantity=5.4||mg"),
        sorted(vec![oid(&f, 0), oid(&f, 3)])
    );
    assert_eq!(
        match_ids(
            &rest,
            "Observation",
            "value-quantity=5.4|http://unitsofmeasure.org|kg"
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        match_ids(&rest, "Observation", "value-quantity=gt70"),
        vec![oid(&f, 2)]
    );
    assert_eq!(
        match_ids(&rest, "Observation", "value-quantity=ge70"),
        sorted(vec![oid(&f, 1), oid(&f, 2)])
    );
    assert_eq!(
        match_ids(&rest, "Observation", "value-quantity=le5.4").len(),
        2
    );
    assert_eq!(
        match_ids(&rest, "Observation", "value-quantity=80"),
        vec![oid(&f, 2)]
    );
    assert_eq!(
        match_ids(&rest, "Observation", "value-quantity=ap78"),
        vec![oid(&f, 2)]
    );
    // Numbers and uris.
    let ra = rest
        .create("RiskAssessment", json!({"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": pid(&f.smith)}, "prediction": [{"probabilityDecimal": 0.25}]}), None)
        .unwrap()
        .stored
        .id;
    assert_eq!(
        match_ids(&rest, "RiskAssessment", "probability=0.25"),
        vec![format!("RiskAssessment/{ra}")]
    );
    assert_eq!(
        match_ids(&rest, "RiskAssessment", "probability=gt0.3"),
        Vec::<String>::new()
    );
    assert_eq!(
        match_ids(&rest, "RiskAssessment", "probability=lt0.3").len(),
        1
    );
    let vs = rest
        .create("ValueSet", json!({"resourceType": "ValueSet", "status": "active", "url": "http://example.org/vs/1"}), None)
        .unwrap()
        .stored
        .id;
    assert_eq!(
        match_ids(&rest, "ValueSet", "url=http://example.org/vs/1"),
        vec![format!("ValueSet/{vs}")]
    );
    assert_eq!(
        match_ids(&rest, "ValueSet", "url=http://example.org/vs"),
        Vec::<String>::new()
    );
    // _lastUpdated.
    assert_eq!(
        match_ids(&rest, "Patient", "_lastUpdated=ge2000-01-01").len(),
        3
    );
    assert_eq!(
        match_ids(&rest, "Patient", "_lastUpdated=lt2000-01-01").len(),
        0
    );
}

#[test]
fn result_parameters() {
    let (_d, rest) = setup();
    let f = fixture(&rest);
    // Paging.
    let b = search(&rest, "Observation", "_count=2");
    assert_eq!(b["total"], 5);
    assert_eq!(ids(&b, "match").len(), 2);
    let next = b["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(next.starts_with(&format!("{BASE}/Observation?")));
    let q = next.split_once('?').unwrap().1;
    let b2 = search(&rest, "Observation", q);
    let b3 = search(&rest, "Observation", "_count=2&_offset=4");
    let mut all: Vec<String> = [ids(&b, "match"), ids(&b2, "match"), ids(&b3, "match")].concat();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 5, "pages cover every match once");
    assert!(
        !b3["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next")
    );
    assert!(
        b3["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "previous")
    );
    // Sorting on a blind-indexed string and on a date, several keys, descending.
    let b = search(&rest, "Patient", "_sort=family");
    let fam: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["name"][0]["family"].as_str().unwrap())
        .collect();
    assert_eq!(fam, vec!["Jönes", "Smith", "Smithson"]);
    let b = search(&rest, "Patient", "_sort=-birthdate");
    let fam: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["name"][0]["family"].as_str().unwrap())
        .collect();
    assert_eq!(fam, vec!["Jönes", "Smith", "Smithson"]);
    let b = search(&rest, "Observation", "_sort=code,-date&_count=3");
    let got: Vec<String> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("Observation/{}", e["resource"]["id"].as_str().unwrap()))
        .collect();
    assert_eq!(got, vec![oid(&f, 3), oid(&f, 0), oid(&f, 2)]);
    let b = search(&rest, "Patient", "_sort=-_id");
    let got: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    let mut want = vec![f.smith.as_str(), f.smithson.as_str(), f.jones.as_str()];
    want.sort();
    want.reverse();
    assert_eq!(got, want);
    // _include / _revinclude (with iterate).
    let b = search(
        &rest,
        "Observation",
        "code=9999-9&_include=Observation:patient",
    );
    assert_eq!(ids(&b, "match"), vec![oid(&f, 1)]);
    assert_eq!(ids(&b, "include"), vec![pid(&f.smith)]);
    let b = search(
        &rest,
        "Patient",
        &format!("_id={}&_revinclude=Observation:subject", f.smith),
    );
    assert_eq!(ids(&b, "include"), sorted(vec![oid(&f, 0), oid(&f, 1)]));
    let b = search(
        &rest,
        "Observation",
        "code=9999-9&_include=Observation:patient&_revinclude:iterate=Encounter:subject",
    );
    assert_eq!(
        ids(&b, "include").len(),
        4,
        "patient plus three encounters through iterate"
    );
    // _summary, _elements, _total.
    let b = search(&rest, "Observation", "_summary=count");
    assert_eq!(b["total"], 5);
    assert!(b.get("entry").is_none());
    let b = search(&rest, "Patient", "_elements=birthDate");
    let r = &b["entry"][0]["resource"];
    assert!(r.get("name").is_none() && r.get("birthDate").is_some() && r.get("id").is_some());
    assert_eq!(
        r["meta"]["tag"].as_array().unwrap().last().unwrap()["code"],
        "SUBSETTED"
    );
    let b = search(&rest, "Patient", "_total=none");
    assert!(b.get("total").is_none());
    // Unknown parameters: strict errors, lenient ignores and says so.
    let params = vec![("nonsense".to_owned(), "1".to_owned())];
    assert!(matches!(
        rest.search(&SearchRequest {
            rtype: "Patient",
            compartment: None,
            params: &params,
            base_url: BASE,
            strict: true
        }),
        Err(RestError::BadRequest { .. })
    ));
    let b = rest
        .search(&SearchRequest {
            rtype: "Patient",
            compartment: None,
            params: &params,
            base_url: BASE,
            strict: false,
        })
        .unwrap();
    assert_eq!(b["total"], 3);
    let outcome = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .unwrap();
    assert_eq!(outcome["resource"]["resourceType"], "OperationOutcome");
    assert!(!b["link"][0]["url"].as_str().unwrap().contains("nonsense"));
}

#[test]
fn transaction_rewrites_urns_and_conditional_references() {
    let (_d, rest) = setup();
    rest.create("Practitioner", json!({"resourceType": "Practitioner", "identifier": [{"system": "urn:npi", "value": "77"}]}), None).unwrap();
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
         "resource": {"resourceType": "Patient", "name": [{"family": "Urnson"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
         "resource": {"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"},
            "participant": [{"individual": {"reference": "Practitioner?identifier=urn:npi|77"}}],
            "extension": [{"url": "http://example.org/x", "valueReference": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}}]},
         "request": {"method": "POST", "url": "Encounter"}},
        {"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "1"}]},
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|1"}}
    ]});
    let resp = rest.bundle(tx.clone(), BASE).unwrap();
    assert_eq!(resp["type"], "transaction-response");
    let loc = resp["entry"][0]["response"]["location"].as_str().unwrap();
    assert_eq!(resp["entry"][0]["response"]["status"], "201 Created");
    let pat_id = loc.split('/').nth(1).unwrap().to_owned();
    let enc_loc = resp["entry"][1]["response"]["location"].as_str().unwrap();
    let enc = body(
        &rest
            .read("Encounter", enc_loc.split('/').nth(1).unwrap())
            .unwrap(),
    );
    assert_eq!(enc["subject"]["reference"], format!("Patient/{pat_id}"));
    assert_eq!(
        enc["extension"][0]["valueReference"]["reference"],
        format!("Patient/{pat_id}")
    );
    assert!(
        enc["participant"][0]["individual"]["reference"]
            .as_str()
            .unwrap()
            .starts_with("Practitioner/")
    );
    assert_eq!(
        match_ids(&rest, "Encounter", &format!("patient={pat_id}")).len(),
        1
    );
    // Again: the conditional create now finds the existing Patient.
    let resp = rest.bundle(tx, BASE).unwrap();
    assert_eq!(resp["entry"][2]["response"]["status"], "200 OK");
    assert_eq!(count(&rest, "Patient", "identifier=urn:mrn|1"), 1);
}

#[test]
fn failed_transactions_leave_nothing() {
    let (_d, rest) = setup();
    let before = rest
        .history(&HistoryRequest {
            rtype: None,
            id: None,
            params: &[],
            base_url: BASE,
        })
        .unwrap()["total"]
        .clone();
    // A conditional reference that matches nothing.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "name": [{"family": "Ghost"}]}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient?identifier=urn:none|0"}}, "request": {"method": "POST", "url": "Observation"}}
    ]});
    assert!(
        matches!(rest.bundle(tx, BASE), Err(RestError::PreconditionFailed(m)) if m.contains("Bundle.entry[1]"))
    );
    // A reference to a resource that does not exist, and a urn:uuid that names no entry.
    for reference in [
        "Patient/nope",
        "urn:uuid:99999999-9999-9999-9999-999999999999",
    ] {
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "name": [{"family": "Ghost"}]}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "subject": {"reference": reference}}, "request": {"method": "POST", "url": "Observation"}}
        ]});
        assert!(
            matches!(
                rest.bundle(tx, BASE),
                Err(RestError::BadRequest { .. } | RestError::Invalid(_))
            ),
            "{reference}"
        );
    }
    let dangling = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/nope"}});
    assert!(matches!(
        rest.create("Observation", dangling, None),
        Err(RestError::BadRequest { .. })
    ));
    // An invalid resource: the expression names the entry.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "name": [{"family": "Ghost"}]}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "birthDate": "yesterday"}, "request": {"method": "POST", "url": "Patient"}}
    ]});
    match rest.bundle(tx, BASE) {
        Err(RestError::Invalid(issues)) => {
            assert!(
                issues
                    .iter()
                    .any(|i| i.expression.starts_with("Bundle.entry[1].resource")),
                "{issues:?}"
            )
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    // A failing If-Match in the last entry rolls back the earlier create.
    let p = rest
        .create("Patient", patient("Stale", "S", "1950"), None)
        .unwrap()
        .stored;
    let mut upd = body(&p);
    upd["gender"] = json!("male");
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "name": [{"family": "Ghost"}]}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": upd, "request": {"method": "PUT", "url": format!("Patient/{}", p.id), "ifMatch": "W/\"7\""}}
    ]});
    assert!(matches!(
        rest.bundle(tx, BASE),
        Err(RestError::PreconditionFailed(_))
    ));
    assert_eq!(count(&rest, "Patient", "family=ghost"), 0);
    let after = rest
        .history(&HistoryRequest {
            rtype: None,
            id: None,
            params: &[],
            base_url: BASE,
        })
        .unwrap()["total"]
        .clone();
    assert_eq!(
        after.as_u64().unwrap(),
        before.as_u64().unwrap() + 1,
        "only the separate create is there"
    );
}

#[test]
fn transaction_patch_and_delete_entries() {
    use base64::Engine as _;
    let (_d, rest) = setup();
    let a = rest
        .create("Patient", patient("Patchme", "A", "1970"), None)
        .unwrap()
        .stored
        .id;
    let b = rest
        .create("Patient", patient("Deleteme", "B", "1971"), None)
        .unwrap()
        .stored
        .id;
    let patch = base64::engine::general_purpose::STANDARD
        .encode(br#"[{"op": "replace", "path": "/gender", "value": "male"}]"#);
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": patch},
         "request": {"method": "PATCH", "url": format!("Patient/{a}")}},
        {"request": {"method": "DELETE", "url": format!("Patient/{b}")}},
        {"request": {"method": "GET", "url": format!("Patient/{a}")}}
    ]});
    let resp = rest.bundle(tx, BASE).unwrap();
    assert_eq!(resp["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(resp["entry"][1]["response"]["status"], "204 No Content");
    assert_eq!(
        resp["entry"][2]["resource"]["gender"], "male",
        "reads run after writes"
    );
    assert!(matches!(
        rest.read("Patient", &b),
        Err(RestError::Gone { .. })
    ));
}

#[test]
fn batch_entries_are_independent() {
    let (_d, rest) = setup();
    let b = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "name": [{"family": "Batchy"}]}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "birthDate": "bad"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient?identifier=urn:none|0"}}, "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": "Patient?family=batchy"}}
    ]});
    let resp = rest.bundle(b, BASE).unwrap();
    assert_eq!(resp["type"], "batch-response");
    let st: Vec<&str> = resp["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        st,
        vec![
            "201 Created",
            "422 Unprocessable Entity",
            "404 Not Found",
            "412 Precondition Failed",
            "200 OK"
        ]
    );
    assert_eq!(
        resp["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(resp["entry"][4]["resource"]["total"], 1);
    assert_eq!(count(&rest, "Patient", "family=batchy"), 1);
}

#[test]
fn nothing_readable_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let keyring = Arc::new(Keyring::from_data_key(1, &[9u8; 32]).unwrap());
    let store = open_sqlite(&dir.path().join("store.db"), keyring).unwrap();
    let rest = Rest::new(store);
    let mut p = patient("Zyxwvutsonian", "Quentinella", "1944-04-04");
    p["identifier"] = json!([{"system": "urn:mrn", "value": "MRN-SECRET-9876"}]);
    let id = rest.create("Patient", p.clone(), None).unwrap().stored.id;
    p["id"] = json!(id);
    p["gender"] = json!("male");
    rest.update("Patient", &id, p, None).unwrap();
    assert_eq!(count(&rest, "Patient", "family=zyxw"), 1);
    crate::put_system_record(
        &**rest.store(),
        "client",
        "app-1",
        b"{\"secretHash\":\"Quentinella-secret\"}",
    )
    .unwrap();
    assert_eq!(
        crate::get_system_record(&**rest.store(), "client", "app-1")
            .unwrap()
            .unwrap(),
        b"{\"secretHash\":\"Quentinella-secret\"}"
    );
    assert_eq!(
        crate::list_system_records(&**rest.store(), "client")
            .unwrap()
            .len(),
        1
    );
    let mut seen = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        seen += bytes.len();
        for needle in [
            "Zyxwvutsonian",
            "zyxwvutsonian",
            "Quentinella",
            "quentinella",
            "MRN-SECRET-9876",
            "1944-04-04",
        ] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} readable in {}",
                path.display()
            );
        }
    }
    assert!(seen > 0);
    assert!(crate::delete_system_record(&**rest.store(), "client", "app-1").unwrap());
}

#[test]
fn concurrent_writers_group_commit() {
    let (_d, rest) = setup();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let rest = rest.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    rest.create(
                        "Patient",
                        patient(&format!("Conc{t}x{i}"), "C", "1990"),
                        None,
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(
        search(&rest, "Patient", "family=conc&_summary=count")["total"],
        200
    );
}

fn synthea_dir() -> Option<std::path::PathBuf> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/synthea-r4");
    dir.is_dir().then_some(dir)
}

/// User + system CPU time of this process so far (Linux), to compare runs on a busy machine.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Imports the whole Synthea set through `Rest::bundle` and checks counts and searches against
/// figures computed here straight from the files.
#[test]
fn synthea_import() {
    let Some(dir) = synthea_dir() else {
        eprintln!("synthea_import: ../shared/data/synthea-r4 not found, skipped");
        return;
    };
    let (_d, rest) = setup();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    // Infrastructure bundles ("0-...") first.
    files.sort();
    let bundles: Vec<(String, Value)> = files
        .iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap(),
            )
        })
        .collect();
    let total: usize = bundles
        .iter()
        .map(|(_, b)| b["entry"].as_array().unwrap().len())
        .sum();
    let import = |name: &str, b: Value| -> Option<(String, String)> {
        let is_tx = b["type"] == "transaction";
        let resp = rest
            .bundle(b, BASE)
            .unwrap_or_else(|e| panic!("{name}: {e} {:?}", e.to_outcome()));
        for (i, e) in resp["entry"].as_array().unwrap().iter().enumerate() {
            let status = e["response"]["status"].as_str().unwrap();
            assert!(
                status.starts_with("20"),
                "{name} entry {i}: {status} {}",
                e["response"]["outcome"]
            );
        }
        is_tx.then(|| {
            let loc = resp["entry"][0]["response"]["location"].as_str().unwrap();
            (name.to_owned(), loc.split('/').nth(1).unwrap().to_owned())
        })
    };
    // Infrastructure first, then the patients from a few concurrent workers, as an importer
    // would: their transactions share group commits.
    let (infra, patients): (Vec<_>, Vec<_>) = bundles
        .iter()
        .cloned()
        .partition(|(n, _)| n.starts_with("0-"));
    let start = std::time::Instant::now();
    let cpu_start = cpu_seconds();
    for (name, b) in infra {
        import(&name, b);
    }
    let patients = std::sync::Mutex::new(patients);
    let patient_ids: std::collections::HashMap<String, String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let Some((name, b)) = patients.lock().unwrap().pop() else {
                            break out;
                        };
                        out.extend(import(&name, b));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    eprintln!(
        "synthea_import: {total} resources in {secs:.2}s = {:.0} resources/s ({cpu:.2} CPU-s, {:.0} resources per CPU-s)",
        total as f64 / secs,
        total as f64 / cpu
    );

    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("../synthea-r4.counts.json")).unwrap())
            .unwrap();
    for (rtype, n) in expected["resources_by_type"].as_object().unwrap() {
        let b = search(&rest, rtype, "_summary=count");
        assert_eq!(&b["total"], n, "{rtype}");
    }

    // Independent expectations from the files.
    let resources: Vec<(&str, &Value)> = bundles
        .iter()
        .flat_map(|(name, b)| {
            b["entry"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |e| (name.as_str(), &e["resource"]))
        })
        .collect();
    let of_type = |t: &'static str| {
        resources
            .iter()
            .filter(move |(_, r)| r["resourceType"] == t)
    };
    let families = |r: &Value| -> Vec<String> {
        r["name"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n["family"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let family = families(of_type("Patient").next().unwrap().1)[0].clone();
    let exact = of_type("Patient")
        .filter(|(_, r)| families(r).contains(&family))
        .count();
    assert_eq!(
        count(&rest, "Patient", &format!("family:exact={family}")),
        exact
    );
    let prefix = family[..3].to_lowercase();
    let starts = of_type("Patient")
        .filter(|(_, r)| {
            families(r)
                .iter()
                .any(|f| f.to_lowercase().starts_with(&prefix))
        })
        .count();
    assert_eq!(count(&rest, "Patient", &format!("family={prefix}")), starts);
    assert!(starts >= 1);

    let (pfile, pid) = patient_ids.iter().next().unwrap();
    let loinc_height = |r: &Value| {
        r["code"]["coding"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["system"] == "http://loinc.org" && c["code"] == "8302-2")
        })
    };
    let heights = of_type("Observation")
        .filter(|(f, r)| f == pfile && loinc_height(r))
        .count();
    assert_eq!(
        count(
            &rest,
            "Observation",
            &format!("patient={pid}&code=http://loinc.org|8302-2")
        ),
        heights
    );
    let all_heights = of_type("Observation")
        .filter(|(_, r)| loinc_height(r))
        .count();
    assert_eq!(
        count(&rest, "Observation", "code=http://loinc.org|8302-2"),
        all_heights
    );
    assert!(all_heights > 0);

    let cut = carevault_fhir::index::date_range("2020-01-01").unwrap().0;
    let recent = of_type("Encounter")
        .filter(|(_, r)| {
            let end = r["period"]["end"]
                .as_str()
                .and_then(carevault_fhir::index::date_range)
                .map_or(i64::MAX, |d| d.1);
            end > cut
        })
        .count();
    let b = search(&rest, "Encounter", "date=ge2020-01-01&_summary=count");
    assert_eq!(b["total"].as_u64().unwrap() as usize, recent);
    assert!(recent > 0);
}

#[test]
fn writes_survive_reopen_and_failed_jobs_roll_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let keyring = Arc::new(Keyring::from_data_key(1, &[5u8; 32]).unwrap());
    let id = {
        let rest = Rest::new(open_sqlite(&path, keyring.clone()).unwrap());
        let id = rest
            .create("Patient", patient("Durable", "D", "1999"), None)
            .unwrap()
            .stored
            .id;
        // A job that writes and then fails, submitted alongside good ones: only it rolls back.
        let store = rest.store().clone();
        let bad = std::thread::spawn(move || {
            let keyring = store.keyring().clone();
            crate::write_with(&*store, move |tx| {
                crate::audit_log::append(tx, &keyring, &audit_entry(b"sealed-entry"))?;
                tx.put_system_record("k", "doomed", b"x")?;
                Err::<(), _>(RestError::Conflict("planned failure".into()))
            })
        });
        let panicking = rest.store().clone();
        let boom = std::thread::spawn(move || {
            crate::write_with(&*panicking, |tx| {
                tx.put_system_record("k", "panicked", b"x")?;
                if tx.get_system_record("k", "panicked")?.is_some() {
                    panic!("job panics after writing");
                }
                Ok(())
            })
        });
        let good = rest
            .create("Patient", patient("Durable", "E", "1998"), None)
            .unwrap();
        assert!(matches!(bad.join().unwrap(), Err(RestError::Conflict(_))));
        assert!(matches!(boom.join().unwrap(), Err(RestError::Store(_))));
        assert_eq!(good.stored.version, 1);
        let seq =
            crate::audit_log::append_durably(&**rest.store(), vec![audit_entry(b"kept")]).unwrap();
        // The rolled-back job's entry took no sequence number.
        assert_eq!(seq, vec![1]);
        id
    };
    let rest = Rest::new(open_sqlite(&path, keyring).unwrap());
    assert_eq!(
        body(&rest.read("Patient", &id).unwrap())["name"][0]["family"],
        "Durable"
    );
    assert_eq!(count(&rest, "Patient", "family=durable"), 2);
    assert!(
        crate::get_system_record(&**rest.store(), "k", "doomed")
            .unwrap()
            .is_none()
    );
    assert!(
        crate::get_system_record(&**rest.store(), "k", "panicked")
            .unwrap()
            .is_none()
    );
    // A record sealed under another key fails its integrity check instead of being returned.
    let other = Arc::new(Keyring::from_data_key(2, &[6u8; 32]).unwrap());
    let rest2 = Rest::new(open_sqlite(&path, other).unwrap());
    assert!(matches!(
        rest2.read("Patient", &id),
        Err(RestError::Integrity(_))
    ));
}

fn audit_entry(canonical: &[u8]) -> crate::audit_log::AuditAppend {
    crate::audit_log::AuditAppend {
        recorded_ms: 1_700_000_000_000,
        canonical: canonical.to_vec(),
        keys: vec![crate::audit_log::AuditKey::Patient("Patient/p1".into())],
    }
}

/// A hook that records each write fact as its own entry, so tests can read back what was seen.
fn fact_hook() -> crate::AuditHook {
    Arc::new(|facts: &[crate::WriteFact]| {
        facts
            .iter()
            .map(|f| crate::audit_log::AuditAppend {
                recorded_ms: 1_700_000_000_000,
                canonical: format!(
                    "{} {}/{}/{} [{}]",
                    f.method,
                    f.rtype,
                    f.id,
                    f.version,
                    f.patients.join(",")
                )
                .into_bytes(),
                keys: f
                    .patients
                    .iter()
                    .map(|p| crate::audit_log::AuditKey::Patient(format!("Patient/{p}")))
                    .collect(),
            })
            .collect()
    })
}

fn audit_texts(rest: &Rest) -> Vec<String> {
    let mut r = rest.store().reader().unwrap();
    r.audit_entries(0, 1000)
        .unwrap()
        .iter()
        .map(|s| {
            let e = crate::audit_log::open(rest.store().keyring(), s).unwrap();
            String::from_utf8(e.canonical).unwrap()
        })
        .collect()
}

#[test]
fn audited_writes_append_their_entries_in_the_same_transaction() {
    let (_dir, plain) = setup();
    let rest = plain.audited(fact_hook());
    let pid = rest
        .create("Patient", patient("Audit", "A", "1970"), None)
        .unwrap()
        .stored
        .id;
    let obs = json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": format!("Patient/{pid}")}});
    let oid = rest.create("Observation", obs, None).unwrap().stored.id;
    // A write that fails appends nothing.
    let bad = json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": "Patient/nobody"}});
    assert!(rest.create("Observation", bad, None).is_err());
    rest.delete("Observation", &oid).unwrap();
    // Writes through the unaudited Rest are not recorded (the importer's own hook decides).
    plain
        .create("Patient", patient("Quiet", "Q", "1971"), None)
        .unwrap();
    assert_eq!(
        audit_texts(&rest),
        vec![
            format!("POST Patient/{pid}/1 [{pid}]"),
            format!("POST Observation/{oid}/1 [{pid}]"),
            format!("DELETE Observation/{oid}/2 [{pid}]"),
        ]
    );
    // Found by the patient's blind tag, not by a scan.
    let mut r = rest.store().reader().unwrap();
    let found = crate::audit_log::search(
        &mut *r,
        rest.store().keyring(),
        &crate::backend::AuditQuery {
            tags: vec![vec![
                crate::audit_log::AuditKey::Patient(format!("Patient/{pid}"))
                    .tag(rest.store().keyring()),
            ]],
            limit: 10,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        found.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

#[test]
fn a_failed_batch_entry_leaves_no_audit_fact_and_a_transaction_records_each_entry() {
    let (_dir, plain) = setup();
    let rest = plain.audited(fact_hook());
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("Batch", "One", "1980"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/missing"}},
         "request": {"method": "POST", "url": "Observation"}}]});
    rest.bundle(batch, "https://x/fhir").unwrap();
    let texts = audit_texts(&rest);
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(texts[0].starts_with("POST Patient/"));
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b8c3c3e-6f53-4a7b-9a4e-0d6a8e2f1a11", "resource": patient("Tx", "T", "1981"),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "urn:uuid:0b8c3c3e-6f53-4a7b-9a4e-0d6a8e2f1a11"}},
         "request": {"method": "POST", "url": "Observation"}}]});
    rest.bundle(tx, "https://x/fhir").unwrap();
    let texts = audit_texts(&rest);
    assert_eq!(texts.len(), 3, "{texts:?}");
    let pid = texts[1]
        .strip_prefix("POST Patient/")
        .and_then(|t| t.split('/').next())
        .unwrap()
        .to_owned();
    assert!(texts[2].starts_with("POST Observation/"));
    assert!(texts[2].ends_with(&format!("[{pid}]")), "{texts:?}");
}

#[test]
fn audit_tree_head_and_proofs_match_an_independent_tree() {
    use carevault_audit::merkle;
    let (_dir, rest) = setup();
    let mut reference = merkle::MemNodes::new();
    let mut entries = Vec::new();
    for i in 0..37u32 {
        let canonical = format!("entry {i}").into_bytes();
        reference.push(merkle::leaf_hash(&canonical));
        entries.push(audit_entry(&canonical));
    }
    // In three durable writes, as group commit would.
    let rest_entries = entries.split_off(20);
    crate::audit_log::append_durably(&**rest.store(), entries).unwrap();
    crate::audit_log::append_durably(&**rest.store(), rest_entries).unwrap();
    let mut r = rest.store().reader().unwrap();
    let (size, root) = crate::audit_log::tree_head(&mut *r).unwrap();
    assert_eq!(size, 37);
    assert_eq!(root, reference.root());
    for seq in [1u64, 2, 17, 32, 37] {
        let proof = crate::audit_log::inclusion_proof(&mut *r, seq, size).unwrap();
        let leaf = merkle::leaf_hash(format!("entry {}", seq - 1).as_bytes());
        merkle::verify_inclusion(&leaf, seq - 1, size, &proof, &root).unwrap();
        let wrong = merkle::leaf_hash(b"entry x");
        assert!(merkle::verify_inclusion(&wrong, seq - 1, size, &proof, &root).is_err());
    }
    let old_root = crate::audit_log::root_at(&mut *r, 20).unwrap();
    let proof = crate::audit_log::consistency_proof(&mut *r, 20, 37).unwrap();
    merkle::verify_consistency(20, 37, &old_root, &root, &proof).unwrap();
    // The chain runs through every entry from the genesis value.
    let stored = r.audit_entries(0, 100).unwrap();
    let mut prev = carevault_audit::chain::GENESIS;
    for s in &stored {
        let e = crate::audit_log::open(rest.store().keyring(), s).unwrap();
        prev = carevault_audit::chain::chain_hash(&prev, &merkle::leaf_hash(&e.canonical));
        assert_eq!(prev, s.chain);
    }
    assert!(crate::audit_log::inclusion_proof(&mut *r, 38, size).is_err());
}

/// Seqs of the entries of `patient` (and, when given, of `client` too), oldest first.
fn audit_seqs_of(store: &dyn crate::Store, patient: &str, client: Option<&str>) -> Vec<u64> {
    use crate::audit_log::AuditKey;
    let keyring = store.keyring();
    let mut tags = vec![vec![AuditKey::Patient(patient.into()).tag(keyring)]];
    if let Some(c) = client {
        tags.push(vec![AuditKey::Client(c.into()).tag(keyring)]);
    }
    let q = crate::backend::AuditQuery {
        tags,
        from_ms: None,
        to_ms: None,
        descending: false,
        offset: 0,
        limit: 10_000,
    };
    store.reader().unwrap().audit_search(&q).unwrap()
}

#[test]
fn audit_search_finds_every_entry_at_once_whether_its_keys_are_batched_yet_or_not() {
    use crate::audit_log::{AuditAppend, AuditKey};
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let keyring = Arc::new(Keyring::from_data_key(1, &[5u8; 32]).unwrap());
    let entry = |i: u64| AuditAppend {
        recorded_ms: 1_700_000_000_000 + i as i64,
        canonical: format!("entry {i}").into_bytes(),
        keys: vec![
            AuditKey::Patient(format!("Patient/p{}", i % 3)),
            AuditKey::Client(format!("client-{}", i % 2)),
        ],
    };
    // Written by hand from the entries above: p1's entries are 1, 4, 7, ... (i = seq - 1).
    let expected = |upto: u64, client: Option<u64>| -> Vec<u64> {
        (1..=upto)
            .filter(|seq| (seq - 1) % 3 == 1)
            .filter(|seq| client.is_none_or(|c| (seq - 1) % 2 == c))
            .collect()
    };
    {
        let store = open_sqlite(&path, keyring.clone()).unwrap();
        // One at a time, as reads append: 300 entries, so 256 have moved into the index and 44
        // wait in the pending keys; a search sees each entry the moment its append returns.
        for i in 0..300u64 {
            crate::audit_log::append_durably(&*store, vec![entry(i)]).unwrap();
            if i % 50 == 0 || i >= 250 {
                assert_eq!(
                    audit_seqs_of(&*store, "Patient/p1", None),
                    expected(i + 1, None),
                    "after entry {}",
                    i + 1
                );
            }
        }
        assert_eq!(
            audit_seqs_of(&*store, "Patient/p1", Some("client-0")),
            expected(300, Some(0))
        );
        // What is on disk now, while the store is still open, is what a kill -9 would leave
        // (the log first: a checkpoint running meanwhile only moves its pages into the file).
        for f in ["store.db-wal", "store.db"] {
            std::fs::copy(dir.path().join(f), crashed.path().join(f)).unwrap();
        }
    }
    // The pending keys are in the database: after the crash they are still found, and they
    // join the index with the next batch.
    let store = open_sqlite(&crashed.path().join("store.db"), keyring).unwrap();
    assert_eq!(
        audit_seqs_of(&*store, "Patient/p1", None),
        expected(300, None)
    );
    let batch: Vec<AuditAppend> = (300..600).map(entry).collect();
    crate::audit_log::append_durably(&*store, batch).unwrap();
    assert_eq!(
        audit_seqs_of(&*store, "Patient/p1", None),
        expected(600, None)
    );
    assert_eq!(
        audit_seqs_of(&*store, "Patient/p1", Some("client-1")),
        expected(600, Some(1))
    );
    assert!(audit_seqs_of(&*store, "Patient/nobody", None).is_empty());
}

#[test]
fn the_audit_probe_appends_nothing() {
    let (_dir, rest) = setup();
    crate::audit_log::append_durably(&**rest.store(), vec![audit_entry(b"one")]).unwrap();
    crate::audit_log::probe_writable(&**rest.store()).unwrap();
    crate::audit_log::probe_writable(&**rest.store()).unwrap();
    let mut r = rest.store().reader().unwrap();
    assert_eq!(r.audit_head().unwrap().map(|(seq, _)| seq), Some(1));
    drop(r);
    // The next entry takes the next number and the chain still runs through.
    let seqs =
        crate::audit_log::append_durably(&**rest.store(), vec![audit_entry(b"two")]).unwrap();
    assert_eq!(seqs, vec![2]);
}

#[test]
fn audit_visit_lends_the_rows_audit_entries_reads() {
    let (_dir, rest) = setup();
    let entries: Vec<_> = (1..=40)
        .map(|i| audit_entry(format!("visit {i}").as_bytes()))
        .collect();
    crate::audit_log::append_durably(&**rest.store(), entries).unwrap();
    let mut r = rest.store().reader().unwrap();
    let want = r.audit_entries(10, 15).unwrap();
    assert_eq!(want.first().map(|e| e.seq), Some(11));
    let mut seen = Vec::new();
    let mut opened = Vec::new();
    let mut identity = Vec::new();
    r.audit_visit(10, 25, &mut |row| {
        seen.push((
            row.seq,
            row.recorded_ms,
            row.chain.to_vec(),
            row.sealed.to_vec(),
        ));
        crate::audit_log::identity_into(row.seq, &mut identity);
        assert_eq!(identity, crate::audit_log::identity(row.seq));
        let mut plain = Vec::new();
        rest.store()
            .keyring()
            .open_into(&identity, row.sealed, &mut plain)
            .unwrap();
        opened.push(String::from_utf8(plain).unwrap());
        Ok(())
    })
    .unwrap();
    let expected: Vec<_> = want
        .iter()
        .map(|e| (e.seq, e.recorded_ms, e.chain.to_vec(), e.sealed.clone()))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(opened.first().map(String::as_str), Some("visit 11"));
    assert_eq!(opened.last().map(String::as_str), Some("visit 25"));
    // Past the end, and a visitor's error stops the pass and comes back.
    let mut n = 0;
    r.audit_visit(38, u64::MAX, &mut |_| {
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 2);
    let err = r
        .audit_visit(0, 40, &mut |row| {
            if row.seq == 3 {
                Err(crate::StoreError::Backend("stop".into()))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert!(err.to_string().contains("stop"), "{err}");
    // The reader still works afterwards (the visit put the connection back to normal reads).
    assert_eq!(r.audit_entries(0, 100).unwrap().len(), 40);
}

// The patients recorded with each version (`ver.patients`): reads learn a version's Patient
// compartment from them instead of parsing its JSON.

/// What `patient_compartment_refs` gives for a returned version's JSON.
fn compartment_of(s: &crate::Stored) -> Vec<String> {
    carevault_fhir::patient_compartment_refs(&s.rtype, &body(s))
}

/// Sees patients `ids` only; Practitioners whole.
fn only_patients(ids: &[&str]) -> crate::Visibility {
    let set: Arc<std::collections::HashSet<String>> =
        Arc::new(ids.iter().map(|p| (*p).to_owned()).collect());
    crate::Visibility::restricted(Arc::new(move |_, t: &str| match t {
        "Practitioner" => crate::Access::All,
        _ => crate::Access::Patients(set.clone()),
    }))
}

fn pulse(subject: &str, performer: Option<&str>) -> Value {
    let mut o = json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "pulse"}, "subject": {"reference": format!("Patient/{subject}")}});
    if let Some(p) = performer {
        o["performer"] = json!([{"reference": p}]);
    }
    o
}

/// Two patients `pa` and `pb`, an Observation of `pa` only, one of both, and a Practitioner.
fn compartment_fixture(rest: &Rest) -> (String, String, String) {
    for p in ["pa", "pb"] {
        rest.update(
            "Patient",
            p,
            json!({"resourceType": "Patient", "id": p, "gender": "other"}),
            None,
        )
        .unwrap();
    }
    let own = rest.create("Observation", pulse("pa", None), None).unwrap();
    let both = rest
        .create("Observation", pulse("pa", Some("Patient/pb")), None)
        .unwrap();
    let prac = rest
        .create(
            "Practitioner",
            json!({"resourceType": "Practitioner"}),
            None,
        )
        .unwrap();
    (own.stored.id, both.stored.id, prac.stored.id)
}

fn sql(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

#[test]
fn unrestricted_reads_carry_the_patients_recorded_at_write_time() {
    let (_d, rest) = setup();
    let (own, both, prac) = compartment_fixture(&rest);
    let mut obs = pulse("pb", None);
    obs["id"] = json!(own);
    rest.update("Observation", &own, obs, None).unwrap();
    let gone = rest.create("Observation", pulse("pa", None), None).unwrap();
    rest.delete("Observation", &gone.stored.id).unwrap();

    let cases: [(&str, &str, &[&str]); 4] = [
        ("Patient", "pa", &["pa"]),
        ("Observation", &own, &["pb"]),
        ("Observation", &both, &["pa", "pb"]),
        ("Practitioner", &prac, &[]),
    ];
    for (rtype, id, want) in cases {
        let s = rest.read(rtype, id).unwrap();
        // In the order patient_compartment_refs gives them (that of the compartment's params).
        let parsed = compartment_of(&s);
        assert_eq!(sorted(parsed.clone()), want, "{rtype}/{id}");
        assert_eq!(s.patients, Some(parsed), "read {rtype}/{id}");
    }
    // An older version keeps its own patients.
    let v1 = rest.vread("Observation", &own, "1").unwrap();
    assert_eq!(v1.patients, Some(vec!["pa".to_owned()]));
    assert_eq!(v1.patients, Some(compartment_of(&v1)));
    let v2 = rest.vread("Observation", &own, "2").unwrap();
    assert_eq!(v2.patients, Some(compartment_of(&v2)));
    assert_eq!(
        rest.vread("Practitioner", &prac, "1").unwrap().patients,
        Some(Vec::new())
    );
    // The records history reads carry them; a deletion has none.
    let store = rest.store().clone();
    let mut r = store.reader().unwrap();
    let recs = r
        .history(crate::backend::HistoryScope::System, None, 0, 100)
        .unwrap();
    assert_eq!(recs.len(), 8);
    for rec in &recs {
        if rec.deleted {
            assert_eq!(rec.patients, Some(Vec::new()), "{}/{}", rec.rtype, rec.id);
            continue;
        }
        let s = crate::rest::open_record(&mut *r, store.keyring(), rec).unwrap();
        assert_eq!(s.patients, rec.patients);
        assert_eq!(
            rec.patients,
            Some(compartment_of(&s)),
            "{}/{}/_history/{}",
            rec.rtype,
            rec.id,
            rec.version
        );
    }
    // A write hands back the patients it recorded.
    let w = rest.create("Observation", pulse("pb", None), None).unwrap();
    assert_eq!(w.stored.patients, Some(vec!["pb".to_owned()]));
}

#[test]
fn restricted_reads_decide_on_the_recorded_patients_and_parse_when_none_are() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let keyring = Arc::new(Keyring::from_data_key(1, &[7u8; 32]).unwrap());
    let (own, both) = {
        let rest = Rest::new(open_sqlite(&path, keyring.clone()).unwrap());
        let (own, both, _) = compartment_fixture(&rest);
        let a = rest.restricted(only_patients(&["pa"]));
        assert_eq!(
            a.read("Observation", &own).unwrap().patients,
            Some(vec!["pa".to_owned()])
        );
        assert!(matches!(
            a.read("Observation", &both),
            Err(RestError::NotFound { .. })
        ));
        (own, both)
    };
    let rid_of = |id: &str| -> i64 {
        sql(&path)
            .query_row("SELECT rid FROM res WHERE id = ?1", [id], |r| r.get(0))
            .unwrap()
    };
    let (own_rid, both_rid) = (rid_of(&own), rid_of(&both));
    // The recorded column is what decides: claim pb's compartment for pa's Observation.
    sql(&path)
        .execute("UPDATE ver SET patients = 'pb' WHERE rid = ?1", [own_rid])
        .unwrap();
    {
        let rest = Rest::new(open_sqlite(&path, keyring.clone()).unwrap());
        assert!(matches!(
            rest.restricted(only_patients(&["pa"]))
                .read("Observation", &own),
            Err(RestError::NotFound { .. })
        ));
        assert_eq!(
            rest.restricted(only_patients(&["pb"]))
                .read("Observation", &own)
                .unwrap()
                .patients,
            Some(vec!["pb".to_owned()])
        );
    }
    // Not recorded (NULL): restricted callers parse the JSON, unrestricted ones get None.
    let n = sql(&path)
        .execute(
            "UPDATE ver SET patients = NULL WHERE rid IN (?1, ?2)",
            [own_rid, both_rid],
        )
        .unwrap();
    assert_eq!(n, 2);
    let rest = Rest::new(open_sqlite(&path, keyring).unwrap());
    let a = rest.restricted(only_patients(&["pa"]));
    let s = a.read("Observation", &own).unwrap();
    assert_eq!(s.patients, Some(vec!["pa".to_owned()]));
    assert_eq!(s.json, rest.read("Observation", &own).unwrap().json);
    assert_eq!(
        a.vread("Observation", &own, "1").unwrap().patients,
        Some(vec!["pa".to_owned()])
    );
    assert!(matches!(
        a.read("Observation", &both),
        Err(RestError::NotFound { .. })
    ));
    let mut ps = rest
        .restricted(only_patients(&["pa", "pb"]))
        .read("Observation", &both)
        .unwrap()
        .patients
        .unwrap();
    ps.sort();
    assert_eq!(ps, ["pa", "pb"]);
    assert_eq!(rest.read("Observation", &own).unwrap().patients, None);
    assert_eq!(
        rest.vread("Observation", &both, "1").unwrap().patients,
        None
    );
    // Rows still recorded are unaffected.
    assert_eq!(
        rest.read("Patient", "pa").unwrap().patients,
        Some(vec!["pa".to_owned()])
    );
    // A restricted history shows the same versions either way.
    let h = a
        .history(&HistoryRequest {
            rtype: Some("Observation"),
            id: None,
            params: &[],
            base_url: BASE,
        })
        .unwrap();
    let shown: Vec<&str> = h["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(shown, [own.as_str()]);
}

#[test]
fn a_version_4_store_migrates_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let keyring = Arc::new(Keyring::from_data_key(1, &[7u8; 32]).unwrap());
    let (own, both) = {
        let rest = Rest::new(open_sqlite(&path, keyring.clone()).unwrap());
        let (own, both, _) = compartment_fixture(&rest);
        (own, both)
    };
    let version = |c: &rusqlite::Connection| -> i64 {
        c.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    {
        let c = sql(&path);
        assert_eq!(version(&c), 5);
        c.execute_batch("ALTER TABLE ver DROP COLUMN patients; PRAGMA user_version=4;")
            .unwrap();
    }
    let rest = Rest::new(open_sqlite(&path, keyring.clone()).unwrap());
    {
        let c = sql(&path);
        assert_eq!(version(&c), 5);
        let (all, unrecorded): (i64, i64) = c
            .query_row("SELECT count(*), sum(patients IS NULL) FROM ver", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((all, unrecorded), (5, 5));
    }
    let a = rest.restricted(only_patients(&["pa"]));
    assert_eq!(
        a.read("Observation", &own).unwrap().patients,
        Some(vec!["pa".to_owned()])
    );
    assert!(matches!(
        a.read("Observation", &both),
        Err(RestError::NotFound { .. })
    ));
    assert_eq!(rest.read("Observation", &own).unwrap().patients, None);
    assert_eq!(
        body(&rest.read("Observation", &both).unwrap())["performer"][0]["reference"],
        "Patient/pb"
    );
    // Versions written after the migration are recorded.
    let mut obs = pulse("pa", None);
    obs["id"] = json!(own);
    rest.update("Observation", &own, obs, None).unwrap();
    assert_eq!(
        rest.read("Observation", &own).unwrap().patients,
        Some(vec!["pa".to_owned()])
    );
    assert_eq!(rest.vread("Observation", &own, "1").unwrap().patients, None);
    drop(rest);
    // Opening it again does not migrate again.
    let rest = Rest::new(open_sqlite(&path, keyring).unwrap());
    assert_eq!(
        rest.read("Observation", &own).unwrap().patients,
        Some(vec!["pa".to_owned()])
    );
}

#[test]
fn erasing_a_patient_leaves_its_versions_reading_as_deletions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let keyring = Arc::new(Keyring::from_data_key(1, &[7u8; 32]).unwrap());
    let rest = Rest::new(open_sqlite(&path, keyring).unwrap());
    let (own, both, _) = compartment_fixture(&rest);
    let erased = crate::keys::erase_patient(&**rest.store(), "pa", "test").unwrap();
    // Patient pa and its own Observation were under pa's key; the shared one was not.
    assert_eq!((erased.resources, erased.versions), (2, 2));
    assert!(matches!(
        rest.read("Patient", "pa"),
        Err(RestError::Gone { .. })
    ));
    assert!(matches!(
        rest.read("Observation", &own),
        Err(RestError::Gone { .. })
    ));
    let mut ps = rest.read("Observation", &both).unwrap().patients.unwrap();
    ps.sort();
    assert_eq!(ps, ["pa", "pb"]);
    let c = sql(&path);
    let erased_rows: Vec<(i64, String)> = c
        .prepare("SELECT deleted, patients FROM ver WHERE length(body) = 0")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(erased_rows, [(1, String::new()), (1, String::new())]);
}
