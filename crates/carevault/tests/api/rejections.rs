//! Bad input gets a precise OperationOutcome and stores nothing; bad tokens get 401.

use crate::harness::{Server, expressions, send};
use serde_json::{Value, json};

async fn count(s: &Server, query: &str) -> u64 {
    let (st, _, b) = send(s.get(&format!("{query}&_summary=count"))).await;
    assert_eq!(st, 200, "count query {query}");
    b["total"].as_u64().unwrap()
}

fn raw_post(
    s: &Server,
    path: &str,
    ct: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::RequestBuilder {
    s.http
        .post(s.url(path))
        .bearer_auth(&s.token)
        .header("content-type", ct)
        .body(body)
}

#[tokio::test]
async fn malformed_and_invalid_bodies_are_rejected_with_expressions() {
    let s = Server::start().await;
    // Malformed JSON.
    let (st, _, oo) = send(raw_post(
        &s,
        "Patient",
        "application/fhir+json",
        "{\"resourceType\": \"Patient\", ",
    ))
    .await;
    assert_eq!(st, 400);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("JSON")
    );
    // Wrong resourceType for the URL.
    let (st, _, oo) = send(s.post(
        "Patient",
        &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}),
    ))
    .await;
    assert_eq!(st, 400);
    assert_eq!(expressions(&oo), vec!["resourceType"]);
    // Invalid primitive.
    let (st, _, oo) = send(s.post(
        "Patient",
        &json!({"resourceType": "Patient", "name": [{"family": "Bad"}], "birthDate": "1970-13-45"}),
    ))
    .await;
    assert!(st == 400 || st == 422, "{st}");
    assert!(
        expressions(&oo).iter().any(|e| e.contains("birthDate")),
        "{oo}"
    );
    // Unknown element.
    let (st, _, oo) = send(s.post(
        "Patient",
        &json!({"resourceType": "Patient", "name": [{"family": "Bad"}], "favouriteColour": "blue"}),
    ))
    .await;
    assert!(st == 400 || st == 422, "{st}");
    assert!(
        expressions(&oo)
            .iter()
            .any(|e| e.contains("favouriteColour")),
        "{oo}"
    );
    // Wrong cardinality: gender is a single code.
    let (st, _, oo) = send(s.post(
        "Patient",
        &json!({"resourceType": "Patient", "name": [{"family": "Bad"}], "gender": ["male"]}),
    ))
    .await;
    assert!(st == 400 || st == 422, "{st}");
    assert!(
        expressions(&oo).iter().any(|e| e.contains("gender")),
        "{oo}"
    );
    // Required binding.
    let (st, _, oo) = send(s.post(
        "Patient",
        &json!({"resourceType": "Patient", "name": [{"family": "Bad"}], "gender": "robot"}),
    ))
    .await;
    assert!(st == 400 || st == 422, "{st}");
    assert!(
        expressions(&oo).iter().any(|e| e.contains("gender")),
        "{oo}"
    );
    // Narrative with script.
    let (st, _, oo) = send(s.post("Patient", &json!({"resourceType": "Patient", "name": [{"family": "Bad"}],
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>alert(1)</script></div>"}}))).await;
    assert!(st == 400 || st == 422, "{st}");
    assert!(
        expressions(&oo).iter().any(|e| e.contains("text.div")),
        "{oo}"
    );
    // Event handler attribute.
    let (st, _, _) = send(s.post("Patient", &json!({"resourceType": "Patient", "name": [{"family": "Bad"}],
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p onclick=\"x()\">hi</p></div>"}}))).await;
    assert!(st == 400 || st == 422, "{st}");
    // Not a JSON object.
    let (st, _, _) = send(raw_post(&s, "Patient", "application/fhir+json", "[1,2,3]")).await;
    assert_eq!(st, 400);
    // Nothing of the above was stored.
    assert_eq!(count(&s, "Patient?family=Bad").await, 0);
}

#[tokio::test]
async fn deep_nesting_and_oversized_bodies_are_refused() {
    let s = Server::start_with(&[("CAREVAULT_SERVER_MAX_BODY_BYTES", "65536")]).await;
    let mut deep = String::from("{\"resourceType\":\"Patient\",\"extension\":[");
    for _ in 0..5000 {
        deep.push_str("{\"url\":\"http://x\",\"extension\":[");
    }
    deep.push_str(&"]}".repeat(5000));
    deep.push_str("]}");
    let (st, _, oo) = send(raw_post(&s, "Patient", "application/fhir+json", deep)).await;
    assert!(st == 400 || st == 413, "deep nesting answered {st}");
    assert_eq!(oo["resourceType"], "OperationOutcome");

    let big = json!({"resourceType": "Patient", "name": [{"family": "Big", "given": ["x".repeat(70_000)]}]});
    let (st, _, oo) = send(s.post("Patient", &big)).await;
    assert_eq!(st, 413);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(count(&s, "Patient?family=Big").await, 0);
    // The server is still healthy afterwards.
    assert_eq!(
        s.http
            .get(format!("{}/healthz", s.root))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn xml_and_unknown_types_get_clear_answers() {
    let s = Server::start().await;
    let (st, _, oo) = send(s.get("Patient").header("accept", "application/fhir+xml")).await;
    assert_eq!(st, 406);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let (st, _, _) = send(s.get("Patient?_format=xml")).await;
    assert_eq!(st, 406);
    let (st, _, oo) = send(raw_post(
        &s,
        "Patient",
        "application/fhir+xml",
        "<Patient xmlns=\"http://hl7.org/fhir\"/>",
    ))
    .await;
    assert_eq!(st, 415);
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("XML")
    );
    let (st, _, oo) = send(s.get("Spaceship/1")).await;
    assert_eq!(st, 404);
    assert_eq!(oo["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn transactions_are_all_or_nothing() {
    let s = Server::start().await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
         "resource": {"resourceType": "Patient", "name": [{"family": "Atomic"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "y"},
                      "subject": {"reference": "Patient?identifier=urn:none|nobody"}},
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    let (st, _, oo) = send(s.post("", &bundle)).await;
    assert!(
        st >= 400,
        "a failed conditional reference must fail the transaction, got {st}"
    );
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(
        count(&s, "Patient?family=Atomic").await,
        0,
        "nothing of a failed transaction is stored"
    );

    // An invalid resource anywhere fails the whole transaction with an entry-level expression.
    let mut bad = bundle.clone();
    bad["entry"].as_array_mut().unwrap().pop();
    bad["entry"][1]["resource"]["status"] = json!("not-a-status");
    let (st, _, oo) = send(s.post("", &bad)).await;
    assert!(st == 400 || st == 422, "{st}");
    assert!(
        expressions(&oo)
            .iter()
            .any(|e| e.starts_with("Bundle.entry[1]")),
        "{oo}"
    );
    assert_eq!(count(&s, "Patient?family=Atomic").await, 0);

    // The good part alone commits, and the urn:uuid reference is rewritten to the new id.
    let mut good = bundle.clone();
    good["entry"].as_array_mut().unwrap().pop();
    let (st, _, resp) = send(s.post("", &good)).await;
    assert_eq!(st, 200);
    assert_eq!(resp["type"], "transaction-response");
    let loc = resp["entry"][0]["response"]["location"].as_str().unwrap();
    assert!(
        resp["entry"][0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("201")
    );
    let pid = loc.split('/').nth(1).unwrap().to_string();
    let obs_loc = resp["entry"][1]["response"]["location"].as_str().unwrap();
    let obs_path = obs_loc.split("/_history").next().unwrap();
    let (_, _, obs) = send(s.get(obs_path)).await;
    assert_eq!(obs["subject"]["reference"], format!("Patient/{pid}"));
}

#[tokio::test]
async fn batches_answer_per_entry() {
    let s = Server::start().await;
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "name": [{"family": "BatchOk"}]}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "gender": "robot"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/nope"}}
    ]});
    let (st, _, resp) = send(s.post("", &bundle)).await;
    assert_eq!(st, 200);
    assert_eq!(resp["type"], "batch-response");
    let statuses: Vec<&str> = resp["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert!(statuses[0].starts_with("201"), "{statuses:?}");
    assert!(statuses[1].starts_with("4"), "{statuses:?}");
    assert!(statuses[2].starts_with("404"), "{statuses:?}");
    assert_eq!(
        resp["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(count(&s, "Patient?family=BatchOk").await, 1);
}

#[tokio::test]
async fn missing_invalid_and_expired_tokens_get_401_and_nothing() {
    let s = Server::start().await;
    let (_, _, p) = send(s.post(
        "Patient",
        &json!({"resourceType": "Patient", "name": [{"family": "Secret"}]}),
    ))
    .await;
    let id = p["id"].as_str().unwrap().to_string();
    let path = format!("Patient/{id}");
    let tampered = {
        let mut parts: Vec<String> = s.token.split('.').map(str::to_string).collect();
        // Flip one character of the signature.
        let sig = &mut parts[2];
        let c = if sig.ends_with('A') { 'B' } else { 'A' };
        sig.pop();
        sig.push(c);
        parts.join(".")
    };
    let header_none = {
        // alg=none with the same claims.
        let parts: Vec<&str> = s.token.split('.').collect();
        format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1])
    };
    for (label, auth) in [
        ("missing", None),
        ("garbage", Some("Bearer not-a-token".to_string())),
        ("tampered", Some(format!("Bearer {tampered}"))),
        ("alg none", Some(format!("Bearer {header_none}"))),
        ("basic", Some("Basic Zm9vOmJhcg==".to_string())),
    ] {
        let mut req = s.http.get(s.url(&path));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let (st, h, body) = send(req).await;
        assert_eq!(st, 401, "{label}");
        assert!(h.contains_key("www-authenticate"), "{label}");
        assert_eq!(body["resourceType"], "OperationOutcome", "{label}");
        assert!(!body.to_string().contains("Secret"), "{label} leaked data");
    }
    // Wrong client secret → 401 invalid_client, and the same for an unknown client.
    for (user, pw) in [("c0", "wrong"), ("nobody", "x")] {
        let r = s
            .http
            .post(format!("{}/oauth2/token", s.root))
            .basic_auth(user, Some(pw))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"], "invalid_client");
    }
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let s = Server::start_with(&[("CAREVAULT_AUTH_TOKEN_LIFETIME_SECONDS", "1")]).await;
    let (st, _, _) = send(s.get("Patient")).await;
    assert_eq!(st, 200);
    // Lifetime 1 s plus the verifier's leeway.
    tokio::time::sleep(std::time::Duration::from_secs(32)).await;
    let (st, _, _) = send(s.get("Patient")).await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn scopes_limit_what_a_client_may_do() {
    let mut s = Server::start().await;
    let (_, _, p) = send(s.post(
        "Patient",
        &json!({"resourceType": "Patient", "name": [{"family": "Scoped"}]}),
    ))
    .await;
    s.token = s.token_for("reader", "system/Patient.rs").await;
    let (st, _, _) = send(s.get(&format!("Patient/{}", p["id"].as_str().unwrap()))).await;
    assert_eq!(st, 200);
    let (st, _, oo) = send(s.post("Patient", &json!({"resourceType": "Patient"}))).await;
    assert_eq!(st, 403);
    assert_eq!(oo["issue"][0]["code"], "forbidden");
    let (st, _, _) = send(s.get("Observation?code=x")).await;
    assert_eq!(st, 403);
    // A client that may read Observations cannot reach Patients through them.
    s.token = s.token_for("obs-reader", "system/Observation.rs").await;
    let (st, _, _) = send(s.get("Observation?code=x")).await;
    assert_eq!(st, 200);
    for q in [
        "Observation?_include=Observation:subject",
        "Observation?subject:Patient.name=Scoped",
        "Observation?patient.name=Scoped",
        "Observation?_revinclude=Provenance:target",
    ] {
        let (st, _, body) = send(s.get(q)).await;
        assert_eq!(st, 403, "{q}");
        assert!(!body.to_string().contains("Scoped"), "{q} leaked");
    }
}
