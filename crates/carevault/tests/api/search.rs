//! Search over HTTP on a small hand-made data set whose answers are known.

use crate::harness::{Server, send};
use serde_json::{Value, json};

fn ids(b: &Value) -> Vec<String> {
    let mut v: Vec<String> = b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] != "include" && e["search"]["mode"] != "outcome")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

async fn put(s: &Server, r: Value) {
    let t = r["resourceType"].as_str().unwrap();
    let id = r["id"].as_str().unwrap();
    let (st, _, b) = send(s.put(&format!("{t}/{id}"), &r)).await;
    assert!(st == 201 || st == 200, "{st} {b}");
}

#[tokio::test]
async fn search_kinds_modifiers_and_result_parameters() {
    let s = Server::start().await;
    put(&s, json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Müller", "given": ["Anna"]}], "gender": "female", "birthDate": "1980-02-10",
        "identifier": [{"system": "urn:mrn", "value": "A1"}], "contact": [{"name": {"family": "Kin"}}]})).await;
    put(&s, json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "Mueller", "given": ["Bob"]}], "gender": "male", "birthDate": "1990",
        "identifier": [{"system": "urn:other", "value": "A1"}]})).await;
    put(&s, json!({"resourceType": "Patient", "id": "p3", "name": [{"family": "Smith", "given": ["Carla"]}], "gender": "female", "birthDate": "1980-12-31"})).await;
    put(&s, json!({"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "effectiveDateTime": "2021-03-04T10:00:00Z", "valueQuantity": {"value": 72, "system": "http://unitsofmeasure.org", "code": "/min"}})).await;
    put(&s, json!({"resourceType": "Observation", "id": "o2", "status": "final", "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5", "display": "Body temperature"}]},
        "effectiveDateTime": "2021-05-01", "valueQuantity": {"value": 37.5, "system": "http://unitsofmeasure.org", "code": "Cel"}})).await;
    put(&s, json!({"resourceType": "Observation", "id": "o3", "status": "final", "subject": {"reference": "Patient/p3"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "effectiveDateTime": "2020-01-01T00:00:00Z", "valueQuantity": {"value": 110, "system": "http://unitsofmeasure.org", "code": "/min"}})).await;

    let s = &s;
    let q = |query: &'static str| async move {
        let (st, _, b) = send(s.get(query)).await;
        assert_eq!(st, 200, "{query}: {b}");
        b
    };
    // string: default is case- and accent-insensitive starts-with; :exact; :contains
    assert_eq!(ids(&q("Patient?family=mu").await), vec!["p1", "p2"]);
    assert_eq!(ids(&q("Patient?family=MÜLLER").await), vec!["p1"]);
    assert_eq!(ids(&q("Patient?family:exact=Müller").await), vec!["p1"]);
    assert_eq!(
        ids(&q("Patient?family:exact=müller").await),
        Vec::<String>::new()
    );
    assert_eq!(ids(&q("Patient?family:contains=ELL").await), vec!["p2"]);
    assert_eq!(ids(&q("Patient?name=carla").await), vec!["p3"]);
    // token
    assert_eq!(ids(&q("Patient?identifier=urn:mrn|A1").await), vec!["p1"]);
    assert_eq!(ids(&q("Patient?identifier=A1").await), vec!["p1", "p2"]);
    assert_eq!(ids(&q("Patient?gender=female").await), vec!["p1", "p3"]);
    assert_eq!(ids(&q("Patient?gender:not=female").await), vec!["p2"]);
    assert_eq!(ids(&q("Observation?code:text=heart").await), vec!["o1"]);
    assert_eq!(
        ids(&q("Patient?gender=male,female&family=mu").await),
        vec!["p1", "p2"]
    );
    // :missing
    assert_eq!(ids(&q("Patient?identifier:missing=true").await), vec!["p3"]);
    // date with partial-date ranges and prefixes
    assert_eq!(ids(&q("Patient?birthdate=1980").await), vec!["p1", "p3"]);
    assert_eq!(ids(&q("Patient?birthdate=1980-02").await), vec!["p1"]);
    assert_eq!(ids(&q("Patient?birthdate=ge1981").await), vec!["p2"]);
    assert_eq!(ids(&q("Patient?birthdate=lt1980-12-31").await), vec!["p1"]);
    assert_eq!(
        ids(&q("Observation?date=ge2021-03-04&date=lt2021-06").await),
        vec!["o1", "o2"]
    );
    // reference forms, :Type, chaining, reverse chaining
    assert_eq!(
        ids(&q("Observation?subject=Patient/p1").await),
        vec!["o1", "o2"]
    );
    assert_eq!(ids(&q("Observation?patient=p3").await), vec!["o3"]);
    assert_eq!(ids(&q("Observation?subject:Patient=p3").await), vec!["o3"]);
    assert_eq!(
        ids(&q("Observation?subject:Patient.name=smith").await),
        vec!["o3"]
    );
    assert_eq!(
        ids(&q("Patient?_has:Observation:patient:code=8310-5").await),
        vec!["p1"]
    );
    // quantity and number-like comparisons
    assert_eq!(
        ids(&q("Observation?value-quantity=gt100|http://unitsofmeasure.org|/min").await),
        vec!["o3"]
    );
    assert_eq!(ids(&q("Observation?value-quantity=37.5").await), vec!["o2"]);
    // combined patient + code, as the benchmark does
    assert_eq!(
        ids(&q("Observation?patient=p1&code=http://loinc.org|8867-4").await),
        vec!["o1"]
    );
    // _id and _lastUpdated
    assert_eq!(ids(&q("Patient?_id=p2,p3").await), vec!["p2", "p3"]);
    assert_eq!(ids(&q("Patient?_lastUpdated=gt2000-01-01").await).len(), 3);
    // _include / _revinclude
    let b = q("Observation?_id=o1&_include=Observation:subject").await;
    let included: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(included, vec!["p1"]);
    let b = q("Patient?_id=p1&_revinclude=Observation:subject").await;
    let mut rev: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    rev.sort();
    assert_eq!(rev, vec!["o1", "o2"]);
    // _sort, _count with paging links, _summary=count, _elements, _total
    let b = q("Patient?_sort=-birthdate&_count=2").await;
    let order: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(order, vec!["p2", "p3"]);
    let next = b["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, _, b2) = send(s.get(&next)).await;
    let order2: Vec<&str> = b2["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(order2, vec!["p1"]);
    assert!(
        b2["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "previous")
    );
    assert_eq!(q("Patient?gender=female&_summary=count").await["total"], 2);
    let b = q("Patient?_id=p1&_elements=gender").await;
    let r = &b["entry"][0]["resource"];
    assert_eq!(r["gender"], "female");
    assert!(r.get("name").is_none());
    assert_eq!(q("Patient?_total=accurate&family=mu").await["total"], 2);
    // _summary=true keeps the elements R4 marks isSummary and says the resource is subsetted.
    let b = q("Patient?_id=p1&_summary=true").await;
    let r = &b["entry"][0]["resource"];
    assert_eq!(r["name"][0]["family"], "Müller");
    assert_eq!(r["birthDate"], "1980-02-10");
    assert!(
        r.get("contact").is_none(),
        "contact is not a summary element: {r}"
    );
    assert!(
        r["meta"]["tag"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["code"] == "SUBSETTED"),
        "{r}"
    );
    // compartment
    assert_eq!(ids(&q("Patient/p1/Observation").await), vec!["o1", "o2"]);
    // POST _search
    let resp = s
        .http
        .post(s.url("Patient/_search"))
        .bearer_auth(&s.token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("family=smith")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(ids(&resp.json().await.unwrap()), vec!["p3"]);
    // unknown parameters: lenient ignores, strict refuses
    let (st, _, _) = send(s.get("Patient?shoe-size=42")).await;
    assert_eq!(st, 200);
    let (st, _, oo) = send(
        s.get("Patient?shoe-size=42")
            .header("prefer", "handling=strict"),
    )
    .await;
    assert_eq!(st, 400);
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("shoe-size")
    );
}
