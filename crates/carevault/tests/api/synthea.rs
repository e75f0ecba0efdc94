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

/// PHI strings taken from the Synthea patients: names, identifier values (MRN, SSN-like, driver's
/// licence, passport), phone numbers, street lines and birth dates exactly as written. Strings
/// shorter than 6 bytes are left out: random ciphertext or base64 would match them by chance.
fn phi_strings(files: &Files) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut add = |v: &Value| {
        if let Some(s) = v.as_str()
            && s.len() >= 6
        {
            out.insert(s.to_string());
        }
    };
    for p in files
        .resources
        .iter()
        .filter(|r| r["resourceType"] == "Patient")
    {
        for n in p["name"].as_array().into_iter().flatten() {
            add(&n["family"]);
            n["given"]
                .as_array()
                .into_iter()
                .flatten()
                .for_each(&mut add);
        }
        for i in p["identifier"].as_array().into_iter().flatten() {
            add(&i["value"]);
        }
        for t in p["telecom"].as_array().into_iter().flatten() {
            add(&t["value"]);
        }
        for a in p["address"].as_array().into_iter().flatten() {
            a["line"]
                .as_array()
                .into_iter()
                .flatten()
                .for_each(&mut add);
        }
        add(&p["birthDate"]);
    }
    out.into_iter().collect()
}

/// Every file under `root` (recursively) holding any of `needles`: (file, needle).
fn byte_search<T: AsRef<[u8]>>(
    root: &std::path::Path,
    needles: &[T],
) -> (usize, u64, Vec<(String, String)>) {
    let ac = aho_corasick::AhoCorasick::new(needles).unwrap();
    let (mut files, mut bytes, mut hits) = (0, 0u64, Vec::new());
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let Ok(content) = std::fs::read(&p) else {
                continue;
            };
            files += 1;
            bytes += content.len() as u64;
            for m in ac.find_iter(&content) {
                let needle = String::from_utf8_lossy(needles[m.pattern().as_usize()].as_ref());
                hits.push((p.display().to_string(), needle.into_owned()));
            }
        }
    }
    (files, bytes, hits)
}

#[tokio::test]
async fn synthea_imports_completely_and_searches_agree_with_the_files() {
    let mut s = Server::start().await;
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

    // Acceptance by byte search (issue 5): no PHI string from the data in any byte of any file
    // under the data directory (store, WAL, shared memory, keys, config, TLS) nor in the server's
    // log, while it runs and after it stopped.
    let phi = phi_strings(&files);
    assert!(phi.len() > 300, "only {} PHI strings", phi.len());
    assert!(
        phi.iter().any(|p| p.len() == 11 && p.as_bytes()[3] == b'-'),
        "an SSN-like value"
    );
    let data = s.data();
    let (n, bytes, hits) = byte_search(s.dir.path(), &phi);
    assert!(n >= 5 && bytes > 10_000_000, "{n} files, {bytes} bytes");
    assert!(
        hits.is_empty(),
        "PHI on disk while serving: {:?}",
        &hits[..hits.len().min(5)]
    );
    // Positive control: the same search finds the strings in the source files.
    let (_, _, found) = byte_search(&dir, &phi[..50]);
    assert!(found.len() >= 50);

    // Birth dates are blind tags only (no comparable number in the date index), and range
    // searches on them still agree with the files.
    let bd = carevault_store::backend::ParamId::of("Patient", "birthdate").0;
    let c = rusqlite::Connection::open(data.join("store/carevault.db")).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM ix_date WHERE pid = ?1", [bd], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 0);
    drop(c);
    let born = p["birthDate"].as_str().unwrap();
    let expected = patients
        .iter()
        .filter(|q| q["birthDate"].as_str().unwrap() < born)
        .count() as u64;
    let (_, _, b) = send(s.get(&format!("Patient?birthdate=lt{born}&_summary=count"))).await;
    assert_eq!(
        b["total"].as_u64(),
        Some(expected),
        "Patient?birthdate=lt{born}"
    );
    let expected = patients
        .iter()
        .filter(|q| q["birthDate"] == p["birthDate"])
        .count() as u64;
    let (_, _, b) = send(s.get(&format!("Patient?birthdate={born}&_summary=count"))).await;
    assert_eq!(b["total"].as_u64(), Some(expected));
    let year = &born[..4];
    let expected = patients
        .iter()
        .filter(|q| q["birthDate"].as_str().unwrap()[..4] >= *year)
        .count() as u64;
    let (_, _, b) = send(s.get(&format!("Patient?birthdate=ge{year}&_summary=count"))).await;
    assert_eq!(b["total"].as_u64(), Some(expected));

    // Crypto-shred one patient. Keep a copy of the store as it was (a stolen copy, an old backup).
    let copy = tempfile::tempdir().unwrap();
    let db = data.join("store/carevault.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").ok();
    c.execute(
        "VACUUM INTO ?1",
        [copy.path().join("before.db").to_str().unwrap()],
    )
    .unwrap();
    let (row, wrapped): (i64, Vec<u8>) = c
        .query_row(
            "SELECT pkid, wrapped FROM patient_key WHERE patient = ?1",
            [&server_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let key_id = (row as u32 | carevault_crypto::PATIENT_KEY_FLAG).to_be_bytes();
    let (identity, sealed): (String, Vec<u8>) = c
        .query_row(
            "SELECT r.rtype || '/' || r.id || '/_history/' || v.version, v.body FROM ver v JOIN res r ON r.rid = v.rid \
             WHERE r.rtype = 'Observation' AND substr(v.body, 2, 4) = ?1 LIMIT 1",
            [key_id.to_vec()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    drop(c);
    let (code, out, err) = cli(
        &data,
        &[
            "patient",
            "erase",
            &format!("Patient/{server_id}"),
            "--reason",
            "retention period ended",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let erased: Value = serde_json::from_str(&out).unwrap();
    // What the copy held under the key: every version of the patient's compartment.
    let (versions, resources): (u64, u64) =
        rusqlite::Connection::open(copy.path().join("before.db"))
            .unwrap()
            .query_row(
                "SELECT count(*), count(DISTINCT rid) FROM ver WHERE substr(body, 2, 4) = ?1",
                [key_id.to_vec()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
    assert!(
        resources > 100,
        "a Synthea patient's compartment: {resources}"
    );
    assert_eq!(erased["versions"].as_u64(), Some(versions), "{erased}");
    assert_eq!(erased["resources"].as_u64(), Some(resources), "{erased}");
    assert_eq!(erased["log_truncated"], true);
    let (st, _, _) = send(s.get(&format!("Patient/{server_id}"))).await;
    assert_eq!(st, 410);
    let (st, _, b) = send(s.get(&format!("Observation?patient={server_id}&_summary=count"))).await;
    assert_eq!((st, b["total"].as_u64()), (200, Some(0)));
    assert_eq!(s.stop(), 0);
    let (_, _, hits) = byte_search(s.dir.path(), &phi);
    assert!(
        hits.is_empty(),
        "PHI on disk after the erasure: {:?}",
        &hits[..hits.len().min(5)]
    );
    // No copy of the wrapped patient key survives anywhere in the live directory.
    let (_, _, key_hits) = byte_search(&data, &[&wrapped]);
    assert!(
        key_hits.is_empty(),
        "the destroyed key survives in {key_hits:?}"
    );
    let (_, _, in_copy) = byte_search(copy.path(), &[&wrapped]);
    assert!(!in_copy.is_empty(), "control: the copy holds it");
    // A surviving ciphertext (from the copy) names the destroyed key: opening it fails clearly.
    let keys = carevault_crypto::open_or_init(&data).unwrap();
    let live = carevault_store::open_sqlite(&db, keys.keyring.clone()).unwrap();
    let err = carevault_store::rest::open_sealed(
        &mut *live.reader().unwrap(),
        &keys.keyring,
        identity.as_bytes(),
        &sealed,
    )
    .unwrap_err();
    assert!(
        matches!(err, carevault_crypto::CryptoError::KeyDestroyed { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("destroyed by a patient erasure"),
        "{err}"
    );
    // The old copy still holds the wrapped key under today's data key (docs/keys.md: why backups
    // need the data key rotated)...
    let old =
        carevault_store::open_sqlite(&copy.path().join("before.db"), keys.keyring.clone()).unwrap();
    assert!(
        carevault_store::rest::open_sealed(
            &mut *old.reader().unwrap(),
            &keys.keyring,
            identity.as_bytes(),
            &sealed
        )
        .is_ok()
    );
    drop((old, live, keys));
    // ...and once the data key is rotated and the old one retired, the copy is unreadable too.
    let (code, _, err) = cli(&data, &["keys", "rotate", "--data"]);
    assert_eq!(code, 0, "{err}");
    let keys = carevault_crypto::open_or_init(&data).unwrap();
    let old =
        carevault_store::open_sqlite(&copy.path().join("before.db"), keys.keyring.clone()).unwrap();
    let err = carevault_store::rest::open_sealed(
        &mut *old.reader().unwrap(),
        &keys.keyring,
        identity.as_bytes(),
        &sealed,
    )
    .unwrap_err();
    assert!(err.to_string().contains("unknown data key"), "{err}");
}
