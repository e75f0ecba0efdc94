//! `carevault import` of NDJSON and single resources, and how it reports what it rejects.

use crate::harness::{Server, cli, send};

#[tokio::test]
async fn ndjson_and_single_resources_import_and_bad_lines_are_named() {
    let s = Server::start().await;
    let dir = s.dir.path();
    let good = dir.join("patients.ndjson");
    std::fs::write(
        &good,
        concat!(
            "{\"resourceType\":\"Patient\",\"id\":\"nd-1\",\"name\":[{\"family\":\"Ndjson\"}]}\n",
            "\n",
            "{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"Ndjson\"}]}\n",
            "{\"resourceType\":\"Practitioner\",\"name\":[{\"family\":\"Ndjson\"}]}\n",
        ),
    )
    .unwrap();
    let single = dir.join("one.json");
    std::fs::write(
        &single,
        r#"{"resourceType":"Organization","id":"org-1","name":"Ndjson Clinic"}"#,
    )
    .unwrap();
    let (code, out, err) = cli(
        &s.data(),
        &[
            "import",
            "--json",
            good.to_str().unwrap(),
            single.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(summary["resources"], 4, "{summary}");
    assert_eq!(summary["resources_by_type"]["Patient"], 2, "{summary}");
    let (st, _, p) = send(s.get("Patient/nd-1")).await;
    assert_eq!(st, 200);
    assert_eq!(p["name"][0]["family"], "Ndjson");
    let (st, _, _) = send(s.get("Organization/org-1")).await;
    assert_eq!(st, 200);

    // A line that is not a valid resource is named with its line number; the command fails with
    // one sentence on stderr and the invalid resource is not stored.
    let bad = dir.join("bad.ndjson");
    std::fs::write(
        &bad,
        "{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"Badline\"}]}\n{\"resourceType\":\"Patient\",\"gender\":\"robot\"}\n",
    )
    .unwrap();
    let (_, _, b) = send(s.get("Patient?_summary=count")).await;
    let before = b["total"].as_u64().unwrap();
    let (code, out, err) = cli(&s.data(), &["import", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("line 2"), "{out}");
    assert!(
        out.contains("Imported 1 resources"),
        "the stored line is counted: {out}"
    );
    // Progress lines go to stderr too; the failure itself is the last line, one sentence.
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("carevault: ") && last.contains("rejected"),
        "{err}"
    );
    // Each NDJSON line is its own write: line 1 is stored, the invalid line 2 is not.
    let (_, _, b) = send(s.get("Patient?_summary=count")).await;
    assert_eq!(b["total"].as_u64().unwrap(), before + 1);

    // Admin commands refuse to invent a data directory.
    let (code, _, err) = cli(&dir.join("nowhere"), &["import", good.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("no carevault data directory"), "{err}");
}
