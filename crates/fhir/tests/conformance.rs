//! Conformance of validation against the Synthea population and the official R4 validator test cases.

use std::path::PathBuf;
use std::time::Instant;

use carevault_fhir::validate::has_errors;
use serde_json::Value;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

#[test]
fn every_synthea_resource_is_valid() {
    let dir = shared().join("synthea-r4");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("../shared/data/synthea-r4 is present beside the repository")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let (mut resources, mut failures) = (0usize, Vec::new());
    let mut elapsed = std::time::Duration::ZERO;
    let (mut index_entries, mut index_elapsed) = (0usize, std::time::Duration::ZERO);
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable bundle");
        let bundle: Value = serde_json::from_str(&text).expect("bundle is JSON");
        for entry in bundle["entry"].as_array().expect("entries") {
            let resource = &entry["resource"];
            resources += 1;
            let start = Instant::now();
            let issues = carevault_fhir::validate(resource);
            elapsed += start.elapsed();
            let rtype = resource["resourceType"].as_str().expect("typed");
            let start = Instant::now();
            index_entries += carevault_fhir::extract_index(rtype, resource).len();
            index_elapsed += start.elapsed();
            // Synthea's references are urn:uuid: until a transaction rewrites them to Type/id,
            // so check compartments on the rewritten form.
            if let Some(uuid) = resource["subject"]["reference"]
                .as_str()
                .and_then(|r| r.strip_prefix("urn:uuid:"))
            {
                let mut rewritten = resource.clone();
                rewritten["subject"]["reference"] = Value::String(format!("Patient/{uuid}"));
                assert_eq!(
                    carevault_fhir::patient_compartment_refs(rtype, &rewritten),
                    vec![uuid.to_string()],
                    "{rtype} {}",
                    resource["id"]
                );
            }
            if has_errors(&issues) {
                failures.push(format!(
                    "{} {}: {:?}",
                    file.display(),
                    resource["resourceType"],
                    issues
                ));
            }
        }
    }
    println!(
        "validated {resources} Synthea resources in {elapsed:?} ({:.0}/s)",
        resources as f64 / elapsed.as_secs_f64()
    );
    println!(
        "indexed them into {index_entries} entries in {index_elapsed:?} ({:.0}/s)",
        resources as f64 / index_elapsed.as_secs_f64()
    );
    assert!(
        index_entries > resources * 5,
        "only {index_entries} index entries"
    );
    assert!(resources > 27_000, "only {resources} resources found");
    assert!(
        failures.is_empty(),
        "{} invalid, first: {}",
        failures.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The agreement with the reference validator's verdicts that this validator has reached; a
/// regression below it fails the test.
const AGREEMENT_FLOOR: f64 = 55.0 / 64.0;

#[test]
fn official_test_cases_agree_with_the_reference_validator() {
    let root = shared().join("fhir-test-cases");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("manifest.json")).expect("manifest"),
    )
    .expect("manifest JSON");
    let (mut total, mut agree) = (0usize, 0usize);
    let mut wrongly_rejected = Vec::new();
    for case in manifest.as_array().expect("cases") {
        if case["needs_external_definitions"] != false {
            continue;
        }
        total += 1;
        let expected_valid = case["expected_valid"] == true;
        let text = std::fs::read_to_string(root.join(case["file"].as_str().expect("file")))
            .expect("case file");
        let (valid, detail) = match serde_json::from_str::<Value>(&text) {
            Ok(resource) => {
                let issues = carevault_fhir::validate(&resource);
                (!has_errors(&issues), format!("{issues:?}"))
            }
            Err(e) => (false, e.to_string()),
        };
        if valid == expected_valid {
            agree += 1;
        } else {
            println!(
                "disagree {} (expected valid: {expected_valid}): {}",
                case["name"],
                &detail[..detail.len().min(300)]
            );
            if expected_valid {
                wrongly_rejected.push(case["name"].to_string());
            }
        }
    }
    let rate = agree as f64 / total as f64;
    println!(
        "agreement with the reference validator: {agree}/{total} = {:.1}%",
        rate * 100.0
    );
    assert_eq!(total, 64);
    assert!(
        wrongly_rejected.is_empty(),
        "valid cases rejected: {wrongly_rejected:?}"
    );
    assert!(
        rate >= AGREEMENT_FLOOR,
        "agreement {rate:.3} fell below {AGREEMENT_FLOOR}"
    );
}
