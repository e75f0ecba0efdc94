//! The whole Synthea set through `carevault import` (while the server runs), then counts and
//! searches checked against figures computed here from the files themselves.

use crate::harness::{Server, cli, send, shared_data};
use serde_json::Value;
use std::collections::BTreeMap;

struct Files {
    by_type: BTreeMap<String, u64>,
    resources: Vec<Value>,
}

fn read_files() -> Files {
    let dir = shared_data().join("synthea-r4");
    let mut by_type = BTreeMap::new();
    let mut resources = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for p in paths
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        let b: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        for e in b["entry"].as_array().unwrap() {
            let r = &e["resource"];
            let t = r["resourceType"].as_str().unwrap().to_string();
            // Conditional creates of the infrastructure bundles are keyed on identifier.
            let key = format!(
                "{t}|{}",
                r["identifier"][0]["value"]
                    .as_str()
                    .unwrap_or(r["id"].as_str().unwrap_or(""))
            );
            if e["request"]["ifNoneExist"].is_string() && !seen.insert(key) {
                continue;
            }
            *by_type.entry(t).or_default() += 1;
            resources.push(r.clone());
        }
    }
    Files { by_type, resources }
}

fn utc_ms(s: &str) -> i64 {
    let f = time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::parse(s, &f)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or_else(|_| panic!("date {s}"))
}

#[tokio::test]
async fn synthea_imports_completely_and_searches_agree_with_the_files() {
    let s = Server::start().await;
    let files = read_files();
    let expected_total: u64 = files.by_type.values().sum();
    let counts: Value = serde_json::from_slice(
        &std::fs::read(shared_data().join("synthea-r4.counts.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(expected_total, counts["total_resources"].as_u64().unwrap());

    let dir = shared_data().join("synthea-r4");
    let (code, out, err) = cli(&s.data(), &["import", "--json", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "import failed: {out}\n{err}");
    let summary: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(
        summary["resources"].as_u64().unwrap(),
        expected_total,
        "{summary}"
    );
    assert_eq!(summary["rejected"].as_array().unwrap().len(), 0);

    for (t, n) in &files.by_type {
        let (st, _, b) = send(s.get(&format!("{t}?_summary=count"))).await;
        assert_eq!(st, 200);
        assert_eq!(b["total"].as_u64().unwrap(), *n, "count of {t}");
    }

    // Patients by family name (default search: case-insensitive starts-with).
    let patients: Vec<&Value> = files
        .resources
        .iter()
        .filter(|r| r["resourceType"] == "Patient")
        .collect();
    for p in patients.iter().take(5) {
        let family = p["name"][0]["family"].as_str().unwrap();
        let prefix = &family[..family.len().min(4)];
        let expected = patients
            .iter()
            .filter(|q| {
                q["name"].as_array().unwrap().iter().any(|n| {
                    n["family"]
                        .as_str()
                        .is_some_and(|f| f.to_lowercase().starts_with(&prefix.to_lowercase()))
                })
            })
            .count() as u64;
        let (_, _, b) = send(s.get(&format!("Patient?family={prefix}&_summary=count"))).await;
        assert_eq!(
            b["total"].as_u64().unwrap(),
            expected,
            "Patient?family={prefix}"
        );
    }

    // Observations of one patient with one code: find the server's id through the patient's identifier.
    let p = patients[0];
    let file_ref = format!("urn:uuid:{}", p["id"].as_str().unwrap());
    let ident = p["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["system"] == "https://github.com/synthetichealth/synthea")
        .unwrap();
    let (_, _, found) = send(s.get(&format!(
        "Patient?identifier=https://github.com/synthetichealth/synthea|{}",
        ident["value"].as_str().unwrap()
    )))
    .await;
    let server_id = found["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let obs: Vec<&Value> = files
        .resources
        .iter()
        .filter(|r| {
            r["resourceType"] == "Observation" && r["subject"]["reference"] == file_ref.as_str()
        })
        .collect();
    let code = obs[0]["code"]["coding"][0]["code"].as_str().unwrap();
    let expected = obs
        .iter()
        .filter(|o| {
            o["code"]["coding"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["code"] == code)
        })
        .count() as u64;
    let (_, _, b) = send(s.get(&format!(
        "Observation?patient={server_id}&code={code}&_summary=count"
    )))
    .await;
    assert_eq!(
        b["total"].as_u64().unwrap(),
        expected,
        "Observation?patient&code"
    );

    // Encounters whose period reaches 2020-01-01T00:00Z or later (FHIR `ge`: the range overlaps [v, ∞)).
    let cut = utc_ms("2020-01-01T00:00:00Z");
    let expected = files
        .resources
        .iter()
        .filter(|r| r["resourceType"] == "Encounter")
        .filter(|e| {
            let end = e["period"]["end"]
                .as_str()
                .or(e["period"]["start"].as_str())
                .unwrap();
            utc_ms(end) >= cut
        })
        .count() as u64;
    let (_, _, b) = send(s.get("Encounter?date=ge2020-01-01T00:00:00Z&_summary=count")).await;
    assert_eq!(
        b["total"].as_u64().unwrap(),
        expected,
        "Encounter?date=ge2020"
    );

    // Importing the infrastructure again creates no duplicates (conditional creates).
    let infra = dir.join("0-practitionerInformation1625911868739.json");
    let (code, _, err) = cli(&s.data(), &["import", infra.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (_, _, b) = send(s.get("Practitioner?_summary=count")).await;
    assert_eq!(b["total"].as_u64().unwrap(), files.by_type["Practitioner"]);
}
