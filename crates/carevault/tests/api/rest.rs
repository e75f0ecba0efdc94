//! The REST interactions: create, read, vread, update, conditional operations, patch, delete,
//! history, Prefer, headers.

use crate::harness::{Server, send};
use serde_json::{Value, json};

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "active": true, "name": [{"family": family, "given": ["Ann"]}], "birthDate": "1970-05-01"})
}

#[tokio::test]
async fn create_read_update_delete_with_versions_and_headers() {
    let s = Server::start().await;
    let (st, h, body) = send(s.post("Patient", &patient("Lovelace"))).await;
    assert_eq!(st, 201);
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(body["meta"]["versionId"], "1");
    assert!(body["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
    assert_eq!(h["etag"], "W/\"1\"");
    assert!(
        h["location"]
            .to_str()
            .unwrap()
            .ends_with(&format!("/fhir/Patient/{id}/_history/1"))
    );
    assert!(h.contains_key("last-modified"));
    assert_eq!(h["content-type"], "application/fhir+json; charset=utf-8");

    let (st, h, read) = send(s.get(&format!("Patient/{id}"))).await;
    assert_eq!(st, 200);
    assert_eq!(h["etag"], "W/\"1\"");
    assert_eq!(read["name"][0]["family"], "Lovelace");

    // Update with the right version; the server owns meta.
    let mut upd = read.clone();
    upd["name"][0]["family"] = json!("Byron");
    upd["meta"]["versionId"] = json!("99");
    let (st, h, body) = send(
        s.put(&format!("Patient/{id}"), &upd)
            .header("if-match", "W/\"1\""),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(body["meta"]["versionId"], "2");
    assert_eq!(h["etag"], "W/\"2\"");

    // Stale If-Match → 412, nothing changed.
    let (st, _, oo) = send(
        s.put(&format!("Patient/{id}"), &upd)
            .header("if-match", "W/\"1\""),
    )
    .await;
    assert_eq!(st, 412);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let (_, _, now) = send(s.get(&format!("Patient/{id}"))).await;
    assert_eq!(now["meta"]["versionId"], "2");

    // vread of the first version still shows the old name.
    let (st, _, v1) = send(s.get(&format!("Patient/{id}/_history/1"))).await;
    assert_eq!(st, 200);
    assert_eq!(v1["name"][0]["family"], "Lovelace");

    // Delete → 410 on read, history keeps all three versions.
    let (st, _, _) = send(s.delete(&format!("Patient/{id}"))).await;
    assert_eq!(st, 204);
    let (st, _, oo) = send(s.get(&format!("Patient/{id}"))).await;
    assert_eq!(st, 410);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let (st, _, hist) = send(s.get(&format!("Patient/{id}/_history"))).await;
    assert_eq!(st, 200);
    assert_eq!(hist["type"], "history");
    assert_eq!(hist["entry"].as_array().unwrap().len(), 3);

    // Unknown id → 404 OperationOutcome.
    let (st, _, oo) = send(s.get("Patient/does-not-exist")).await;
    assert_eq!(st, 404);
    assert_eq!(oo["resourceType"], "OperationOutcome");

    // The access log has a line per request but never the patient's data or id.
    let log = s.log();
    assert!(
        log.contains("/fhir/{type}/{id}"),
        "route templates are logged"
    );
    for phi in ["Lovelace", "Byron", "1970-05-01", id.as_str()] {
        assert!(!log.contains(phi), "the log holds {phi}");
    }
}

#[tokio::test]
async fn round_trip_loses_nothing() {
    let s = Server::start().await;
    let original = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
        "valueQuantity": {"value": 1.50, "unit": "m", "system": "http://unitsofmeasure.org", "code": "m"},
        "extension": [{"url": "http://example.org/ext", "valueDecimal": 28.104000000000003}],
        "_status": {"extension": [{"url": "http://example.org/why", "valueString": "checked"}]},
        "note": [{"text": "León820 Cortés936"}]
    });
    // Send the exact text so decimals are as written (serde_json would re-render 1.50).
    let text = original
        .to_string()
        .replace("\"value\":1.5,", "\"value\":1.50,");
    assert!(text.contains("1.50"));
    let resp = s
        .http
        .post(s.url("Observation"))
        .bearer_auth(&s.token)
        .header("content-type", "application/fhir+json")
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let raw = s
        .get(&format!("Observation/{id}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        raw.contains("\"value\":1.50"),
        "decimal precision lost: {raw}"
    );
    assert!(raw.contains("28.104000000000003"), "{raw}");
    assert!(raw.contains("\"_status\""), "{raw}");
    assert!(raw.contains("León820 Cortés936"), "{raw}");
    assert!(raw.contains("http://example.org/why"), "{raw}");
}

#[tokio::test]
async fn update_as_create_and_conditional_operations() {
    let s = Server::start().await;
    let mut p = patient("Client");
    p["id"] = json!("my-own-id");
    let (st, _, b) = send(s.put("Patient/my-own-id", &p)).await;
    assert_eq!(st, 201);
    assert_eq!(b["id"], "my-own-id");
    // id in body must match the URL.
    let (st, _, _) = send(s.put("Patient/other-id", &p)).await;
    assert_eq!(st, 400);

    // Conditional create: the second call finds the first.
    let mut q = patient("Cond");
    q["identifier"] = json!([{"system": "urn:mrn", "value": "123"}]);
    let (st, _, a) = send(
        s.post("Patient", &q)
            .header("if-none-exist", "identifier=urn:mrn|123"),
    )
    .await;
    assert_eq!(st, 201);
    let (st, _, b) = send(
        s.post("Patient", &q)
            .header("if-none-exist", "identifier=urn:mrn|123"),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(a["id"], b["id"]);
    // Two matches → 412.
    let (st, _, _) = send(s.post("Patient", &q)).await;
    assert_eq!(st, 201);
    let (st, _, _) = send(
        s.post("Patient", &q)
            .header("if-none-exist", "identifier=urn:mrn|123"),
    )
    .await;
    assert_eq!(st, 412);

    // Conditional update creates when nothing matches, updates when one does.
    let mut r = patient("CondUpd");
    r["identifier"] = json!([{"system": "urn:mrn", "value": "777"}]);
    let (st, _, c) = send(s.put("Patient?identifier=urn:mrn|777", &r)).await;
    assert_eq!(st, 201);
    r["gender"] = json!("female");
    let (st, _, d) = send(s.put("Patient?identifier=urn:mrn|777", &r)).await;
    assert_eq!(st, 200);
    assert_eq!(c["id"], d["id"]);
    assert_eq!(d["meta"]["versionId"], "2");
}

#[tokio::test]
async fn json_patch_and_prefer() {
    let s = Server::start().await;
    let (_, _, p) = send(s.post("Patient", &patient("Patchy"))).await;
    let id = p["id"].as_str().unwrap();
    let patch = json!([{"op": "replace", "path": "/name/0/family", "value": "Patched"}, {"op": "add", "path": "/gender", "value": "other"}]);
    let resp = s
        .http
        .patch(s.url(&format!("Patient/{id}")))
        .bearer_auth(&s.token)
        .header("content-type", "application/json-patch+json")
        .header("if-match", "W/\"1\"")
        .body(patch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["name"][0]["family"], "Patched");
    assert_eq!(b["gender"], "other");
    assert_eq!(b["meta"]["versionId"], "2");
    // A patch that makes the resource invalid is refused and changes nothing.
    let bad = json!([{"op": "replace", "path": "/gender", "value": "robot"}]);
    let resp = s
        .http
        .patch(s.url(&format!("Patient/{id}")))
        .bearer_auth(&s.token)
        .header("content-type", "application/json-patch+json")
        .body(bad.to_string())
        .send()
        .await
        .unwrap();
    assert!(
        resp.status() == 400 || resp.status() == 422,
        "{}",
        resp.status()
    );
    let (_, _, now) = send(s.get(&format!("Patient/{id}"))).await;
    assert_eq!(now["gender"], "other");

    // Prefer: return=minimal → empty body with headers; OperationOutcome → an OO.
    let resp = s
        .post("Patient", &patient("Min"))
        .header("prefer", "return=minimal")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert!(resp.headers().contains_key("location"));
    assert!(resp.bytes().await.unwrap().is_empty());
    let (st, _, oo) = send(
        s.post("Patient", &patient("OO"))
            .header("prefer", "return=OperationOutcome"),
    )
    .await;
    assert_eq!(st, 201);
    assert_eq!(oo["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn history_at_every_level_pages() {
    let s = Server::start().await;
    for i in 0..5 {
        send(s.post(
            "Practitioner",
            &json!({"resourceType": "Practitioner", "name": [{"family": format!("H{i}")}]}),
        ))
        .await;
    }
    let (st, _, b) = send(s.get("Practitioner/_history?_count=2")).await;
    assert_eq!(st, 200);
    assert_eq!(b["entry"].as_array().unwrap().len(), 2);
    let next = b["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("next link");
    let (st, _, b2) = send(s.get(next["url"].as_str().unwrap())).await;
    assert_eq!(st, 200);
    assert_eq!(b2["entry"].as_array().unwrap().len(), 2);
    assert_ne!(b["entry"][0]["fullUrl"], b2["entry"][0]["fullUrl"]);
    let (st, _, sys) = send(s.get("_history")).await;
    assert_eq!(st, 200);
    assert!(sys["entry"].as_array().unwrap().len() >= 5);
}

#[tokio::test]
async fn validate_answers_without_storing() {
    let s = Server::start().await;
    let (st, _, oo) = send(s.post("Patient/$validate", &patient("Valid"))).await;
    assert_eq!(st, 200);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert!(
        oo["issue"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["severity"] != "error")
    );
    let (st, _, oo) = send(s.post(
        "Patient/$validate",
        &json!({"resourceType": "Patient", "gender": "robot"}),
    ))
    .await;
    assert_eq!(st, 200);
    assert!(
        oo["issue"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["severity"] == "error")
    );
    let (_, _, b) = send(s.get("Patient?family=Valid&_summary=count")).await;
    assert_eq!(b["total"], 0);
}
