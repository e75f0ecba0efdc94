//! The audit trail from the outside: one well-formed AuditEvent per interaction with the right
//! patients, fail-closed reads, tamper detection by `audit verify`, proofs, reports, and the
//! clock-rollback refusal.

use crate::harness::{Server, cli, send};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Ann"]}],
           "birthDate": "1970-01-01"})
}

fn observation(pid: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
           "subject": {"reference": format!("Patient/{pid}")},
           "valueQuantity": {"value": 72, "unit": "/min"}})
}

/// A GET carrying only `token`.
fn get_as(s: &Server, token: &str, path: &str) -> reqwest::RequestBuilder {
    s.http.get(s.url(path)).bearer_auth(token)
}

/// Every AuditEvent, oldest first, read as an auditor.
async fn all_events(s: &Server, auditor: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut url = "AuditEvent?_sort=date&_count=1000".to_string();
    loop {
        let (st, _, b) = send(get_as(s, auditor, &url)).await;
        assert_eq!(st, 200, "{b}");
        for e in b["entry"].as_array().unwrap() {
            out.push(e["resource"].clone());
        }
        match b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(l) => url = l["url"].as_str().unwrap().to_string(),
            None => return out,
        }
    }
}

fn request_id_of(ev: &Value) -> Option<String> {
    ev["entity"]
        .as_array()?
        .iter()
        .find_map(|e| {
            (e["type"]["code"] == "XrequestId")
                .then(|| e["what"]["identifier"]["value"].as_str())?
        })
        .map(str::to_owned)
}

fn subtypes(ev: &Value) -> Vec<String> {
    ev["subtype"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["code"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn patients(ev: &Value) -> Vec<String> {
    let mut v: Vec<String> = ev["entity"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["role"]["code"] == "1")
                .filter_map(|e| e["what"]["reference"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn rid(h: &reqwest::header::HeaderMap) -> String {
    h.get("x-request-id").unwrap().to_str().unwrap().to_string()
}

#[tokio::test]
async fn every_interaction_leaves_one_well_formed_audit_event() {
    let s = Server::start().await;
    let auditor = s.token_for("auditor1", "system/AuditEvent.rs").await;
    // (request id, expected type code, expected subtype, outcome, patients)
    let mut expect: Vec<(String, &str, &str, &str, Vec<String>)> = Vec::new();
    let mut add = |h: &reqwest::header::HeaderMap,
                   t: &'static str,
                   sub: &'static str,
                   out: &'static str,
                   p: Vec<String>| {
        expect.push((rid(h), t, sub, out, p));
    };

    let (st, h, b) = send(s.post("Patient", &patient("Auditee"))).await;
    assert_eq!(st, 201);
    let pid = b["id"].as_str().unwrap().to_string();
    let pref = format!("Patient/{pid}");
    add(&h, "rest", "create", "0", vec![pref.clone()]);
    let (_, h, _) = send(s.get(&format!("Patient/{pid}"))).await;
    add(&h, "rest", "read", "0", vec![pref.clone()]);
    let (_, h, _) = send(s.get(&format!("Patient/{pid}/_history/1"))).await;
    add(&h, "rest", "vread", "0", vec![pref.clone()]);
    let (st, h, b) = send(s.post("Observation", &observation(&pid))).await;
    assert_eq!(st, 201, "{b}");
    let oid = b["id"].as_str().unwrap().to_string();
    add(&h, "rest", "create", "0", vec![pref.clone()]);
    let (st, h, b) = send(s.get(&format!("Observation?subject=Patient/{pid}"))).await;
    assert_eq!(st, 200);
    assert_eq!(b["entry"].as_array().unwrap().len(), 1);
    add(&h, "rest", "search-type", "0", vec![pref.clone()]);
    let mut obs = observation(&pid);
    obs["id"] = json!(oid);
    let (st, h, _) = send(s.put(&format!("Observation/{oid}"), &obs)).await;
    assert_eq!(st, 200);
    add(&h, "rest", "update", "0", vec![pref.clone()]);
    let (st, h, _) = send(
        s.http
            .patch(s.url(&format!("Observation/{oid}")))
            .bearer_auth(&s.token)
            .header("content-type", "application/json-patch+json")
            .body(r#"[{"op":"replace","path":"/status","value":"amended"}]"#),
    )
    .await;
    assert_eq!(st, 200);
    add(&h, "rest", "patch", "0", vec![pref.clone()]);
    let (_, h, _) = send(s.get(&format!("Observation/{oid}/_history"))).await;
    add(&h, "rest", "history-instance", "0", vec![pref.clone()]);
    let (_, h, _) = send(s.get("Observation/_history")).await;
    add(&h, "rest", "history-type", "0", vec![pref.clone()]);
    let (_, h, _) = send(s.get("_history")).await;
    add(&h, "rest", "history-system", "0", vec![pref.clone()]);
    let (st, h, _) = send(s.post("Patient/$validate", &patient("Valid"))).await;
    assert_eq!(st, 200);
    add(&h, "rest", "operation", "0", vec![]);
    let (st, h, _) = send(s.delete(&format!("Observation/{oid}"))).await;
    assert_eq!(st, 204);
    add(&h, "rest", "delete", "0", vec![pref.clone()]);
    let (st, h, _) = send(s.get("Patient/does-not-exist")).await;
    assert_eq!(st, 404);
    add(&h, "rest", "read", "4", vec![]);
    // A token without Observation access: a permission denial.
    let narrow = s.token_for("narrow1", "system/Patient.r").await;
    let (st, h, _) = send(get_as(&s, &narrow, &format!("Observation/{oid}"))).await;
    assert_eq!(st, 403);
    add(&h, "110113", "", "4", vec![]);
    // A forged token: refused and recorded.
    let (st, h, _) = send(get_as(&s, "not.a.token", &format!("Patient/{pid}"))).await;
    assert_eq!(st, 401);
    add(&h, "rest", "read", "4", vec![]);

    // A transaction: one event per entry written, in its transaction, plus the Bundle's own.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6f1c2c7e-1f7b-4b0e-8a51-0b7a2f7d9c01", "resource": patient("Txed"),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "t"},
            "subject": {"reference": "urn:uuid:6f1c2c7e-1f7b-4b0e-8a51-0b7a2f7d9c01"}},
         "request": {"method": "POST", "url": "Observation"}}]});
    let (st, h, b) = send(s.post("", &tx)).await;
    assert_eq!(st, 200, "{b}");
    let tx_pid = b["entry"][0]["response"]["location"]
        .as_str()
        .unwrap()
        .split('/')
        .nth(1)
        .unwrap()
        .to_string();
    let tx_rid = rid(&h);

    let events = all_events(&s, &auditor).await;
    let mut by_rid: HashMap<String, Vec<&Value>> = HashMap::new();
    for ev in &events {
        if let Some(r) = request_id_of(ev) {
            by_rid.entry(r).or_default().push(ev);
        }
        // Every event is a valid R4 AuditEvent by the server's own validator.
        let (st, _, oo) = send(s.post("AuditEvent/$validate", ev)).await;
        assert_eq!(st, 200);
        assert!(
            oo["issue"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["severity"] != "error"),
            "{ev} is not a valid AuditEvent: {oo}"
        );
        assert!(ev["recorded"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            ev["recorded"].as_str().unwrap().len(),
            24,
            "ms precision: {ev}"
        );
    }
    for (r, t, sub, outcome, pats) in &expect {
        let evs = by_rid
            .get(r)
            .unwrap_or_else(|| panic!("no event for request {r} ({sub})"));
        assert_eq!(evs.len(), 1, "request {r} ({sub}) has {} events", evs.len());
        let ev = evs[0];
        assert_eq!(ev["type"]["code"], *t, "{ev}");
        if !sub.is_empty() {
            assert!(subtypes(ev).contains(&sub.to_string()), "{sub}: {ev}");
        }
        assert_eq!(ev["outcome"], *outcome, "{ev}");
        assert_eq!(&patients(ev), pats, "{sub}: {ev}");
        assert!(
            ev["agent"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["requestor"] == true),
            "{ev}"
        );
        assert_eq!(
            ev["source"]["observer"]["identifier"]["system"],
            "urn:carevault:node"
        );
    }
    // The transaction: two entry events and the Bundle's event, all naming the new patient.
    let tx_events = &by_rid[&tx_rid];
    assert_eq!(tx_events.len(), 3, "{tx_events:?}");
    let mut subs: Vec<String> = tx_events.iter().flat_map(|e| subtypes(e)).collect();
    subs.sort();
    assert!(subs.contains(&"transaction".to_string()), "{subs:?}");
    assert_eq!(
        subs.iter().filter(|s| *s == "create").count(),
        2,
        "{subs:?}"
    );
    for e in tx_events {
        assert_eq!(patients(e), vec![format!("Patient/{tx_pid}")], "{e}");
    }
    // Token issue events for the clients the test made, and a failed sign-in.
    let bad = s
        .http
        .post(format!("{}/oauth2/token", s.root))
        .basic_auth("auditor1", Some("wrong-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let events = all_events(&s, &auditor).await;
    let kinds: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"]["code"].as_str().unwrap_or_default().to_string(),
                e["outcome"].as_str().unwrap_or_default().to_string(),
                e.to_string(),
            )
        })
        .collect();
    assert!(
        kinds
            .iter()
            .any(|(t, o, j)| t == "110114" && o == "4" && j.contains("auditor1")),
        "no failed sign-in event"
    );
    assert!(
        kinds
            .iter()
            .filter(|(t, o, _)| t == "110114" && o == "0")
            .count()
            >= 3,
        "token issue events missing"
    );
    assert!(
        kinds.iter().any(|(_, _, j)| j.contains("110120")),
        "no server start event"
    );
    // Searching the trail by patient finds that patient's events through the index.
    let (st, _, b) = send(get_as(
        &s,
        &auditor,
        &format!("AuditEvent?patient={pref}&subtype=read&_count=50"),
    ))
    .await;
    assert_eq!(st, 200);
    let found = b["entry"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{b}");
    assert!(subtypes(&found[0]["resource"]).contains(&"read".to_string()));
    // AuditEvents cannot be written through the API, and need the auditor's scope.
    let (st, _, _) = send(s.post("AuditEvent", &found[0]["resource"])).await;
    assert_eq!(st, 405);
    let (st, _, _) = send(s.delete(&format!(
        "AuditEvent/{}",
        found[0]["resource"]["id"].as_str().unwrap()
    )))
    .await;
    assert_eq!(st, 405);
    let (st, _, b) = send(get_as(&s, &narrow, "AuditEvent")).await;
    assert_eq!(st, 403);
    assert!(b.get("entry").is_none());
}

/// Copies a stopped server's data directory and its default key file (beside it) to `to`.
fn copy_data(from: &Path, to: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(to).unwrap();
    let dest = to.join("carevault-data");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(&dest)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::copy(from.with_extension("key"), dest.with_extension("key")).unwrap();
    dest
}

fn sql(data: &Path, statement: &str) {
    let conn = rusqlite::Connection::open(data.join("store/carevault.db")).unwrap();
    conn.execute_batch(statement).unwrap();
}

fn verify(data: &Path, against: Option<&Path>) -> (i32, String) {
    let mut args = vec!["audit", "verify"];
    if let Some(a) = against {
        args.push("--against");
        args.push(a.to_str().unwrap());
    }
    let (code, out, err) = cli(data, &args);
    (code, format!("{out}{err}"))
}

#[tokio::test]
async fn audit_verify_catches_every_kind_of_tampering() {
    let mut s = Server::start().await;
    for i in 0..12 {
        let (st, _, _) = send(s.post("Patient", &patient(&format!("Tamper{i}")))).await;
        assert_eq!(st, 201);
    }
    let data = s.data();
    let work = tempfile::tempdir().unwrap();
    // A consistent snapshot taken while it was smaller, for the roll-back case.
    assert_eq!(s.stop(), 0);
    let older = copy_data(&data, &work.path().join("older"));
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    let mut s = Server::spawn(dir, &[]);
    s.authenticate("system/*.*").await;
    for i in 0..5 {
        let (st, _, _) = send(s.post("Patient", &patient(&format!("Later{i}")))).await;
        assert_eq!(st, 201);
    }
    assert_eq!(s.stop(), 0);
    // The operator ships the checkpoints file off the machine.
    let shipped = work.path().join("shipped-checkpoints");
    std::fs::copy(data.join("audit/checkpoints"), &shipped).unwrap();
    let (code, out) = verify(&data, Some(&shipped));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verifies"), "{out}");
    let size: u64 = {
        let conn = rusqlite::Connection::open(data.join("store/carevault.db")).unwrap();
        conn.query_row("SELECT max(seq) FROM audit_log", [], |r| r.get::<_, i64>(0))
            .unwrap() as u64
    };
    assert!(size > 20, "{size}");

    // One byte of one entry changed.
    let d = copy_data(&data, &work.path().join("byte"));
    sql(
        &d,
        "UPDATE audit_log SET entry = CAST(substr(entry, 1, 40) || X'00' || substr(entry, 42) AS BLOB) WHERE seq = 7",
    );
    let (code, out) = verify(&d, None);
    assert_ne!(code, 0);
    assert!(out.contains("entry 7 cannot be opened"), "{out}");

    // An entry deleted.
    let d = copy_data(&data, &work.path().join("deleted"));
    sql(&d, "DELETE FROM audit_log WHERE seq = 9");
    let (code, out) = verify(&d, None);
    assert_ne!(code, 0);
    assert!(out.contains("entry 9 is missing"), "{out}");

    // Two entries swapped, re-sealed by someone holding the keys so that each decrypts.
    let d = copy_data(&data, &work.path().join("swapped"));
    reseal_swap(&d, 5, 6);
    let (code, out) = verify(&d, None);
    assert_ne!(code, 0);
    assert!(
        out.contains("entry 5 does not match its chain hash"),
        "{out}"
    );

    // One byte of one entry's compact canonical form flipped by someone holding the keys, and
    // the entry re-sealed so that it decrypts: the chain names it.
    let d = copy_data(&data, &work.path().join("flipped"));
    reseal_changed(&d, 8, |plain| {
        assert_eq!(plain[0], 1, "entries are in compact format 1");
        let at = plain.len() / 2;
        plain[at] ^= 0x01;
    });
    let (code, out) = verify(&d, None);
    assert_ne!(code, 0);
    assert!(
        out.contains("entry 8 does not match its chain hash"),
        "{out}"
    );

    // The tail truncated.
    let d = copy_data(&data, &work.path().join("truncated"));
    sql(
        &d,
        &format!(
            "DELETE FROM audit_log WHERE seq > {}; DELETE FROM audit_node WHERE (idx + 1) * (1 << level) > {};",
            size - 3,
            size - 3
        ),
    );
    let (code, out) = verify(&d, Some(&shipped));
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!("the log ends at entry {}", size - 3)),
        "{out}"
    );

    // Checkpoints re-signed with another key (and the verifier key file replaced).
    let d = copy_data(&data, &work.path().join("resigned"));
    resign(&d);
    let (code, out) = verify(&d, None);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("was replaced"), "{out}");
    // With the verifier key file put back, the checkpoints themselves are caught.
    std::fs::copy(
        data.join("audit/checkpoint-key.vkey"),
        d.join("audit/checkpoint-key.vkey"),
    )
    .unwrap();
    let (code, out) = verify(&d, Some(&shipped));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("re-signed with another key"), "{out}");

    // Rolled back to an older, internally consistent state: only the shipped checkpoints show it.
    let (code, out) = verify(&older, None);
    assert_eq!(code, 0, "the older copy is consistent in itself: {out}");
    let (code, out) = verify(&older, Some(&shipped));
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("rolled back") || out.contains("truncated"),
        "{out}"
    );
}

/// Swaps the contents of entries `a` and `b`, re-sealing each to its new position with the
/// directory's own keys: the AEAD no longer helps, only the chain and the tree do.
fn reseal_swap(data: &Path, a: i64, b: i64) {
    let keys = carevault_crypto::open_or_init(data).unwrap();
    let conn = rusqlite::Connection::open(data.join("store/carevault.db")).unwrap();
    let get = |seq: i64| -> Vec<u8> {
        conn.query_row("SELECT entry FROM audit_log WHERE seq = ?1", [seq], |r| {
            r.get(0)
        })
        .unwrap()
    };
    let (ea, eb) = (get(a), get(b));
    let ident = |seq: i64| carevault_store::audit_log::identity(seq as u64);
    let pa = keys.keyring.open(&ident(a), &ea).unwrap();
    let pb = keys.keyring.open(&ident(b), &eb).unwrap();
    let na = keys.keyring.seal(&ident(a), &pb).unwrap();
    let nb = keys.keyring.seal(&ident(b), &pa).unwrap();
    conn.execute(
        "UPDATE audit_log SET entry = ?1 WHERE seq = ?2",
        rusqlite::params![na, a],
    )
    .unwrap();
    conn.execute(
        "UPDATE audit_log SET entry = ?1 WHERE seq = ?2",
        rusqlite::params![nb, b],
    )
    .unwrap();
}

/// Opens entry `seq`, changes its canonical bytes with `change` and seals them back to the same
/// position with the directory's own keys.
fn reseal_changed(data: &Path, seq: i64, change: impl FnOnce(&mut Vec<u8>)) {
    let keys = carevault_crypto::open_or_init(data).unwrap();
    let conn = rusqlite::Connection::open(data.join("store/carevault.db")).unwrap();
    let sealed: Vec<u8> = conn
        .query_row("SELECT entry FROM audit_log WHERE seq = ?1", [seq], |r| {
            r.get(0)
        })
        .unwrap();
    let ident = carevault_store::audit_log::identity(seq as u64);
    let mut plain = keys.keyring.open(&ident, &sealed).unwrap();
    change(&mut plain);
    let resealed = keys.keyring.seal(&ident, &plain).unwrap();
    conn.execute(
        "UPDATE audit_log SET entry = ?1 WHERE seq = ?2",
        rusqlite::params![resealed, seq],
    )
    .unwrap();
}

/// Replaces every checkpoint with one signed by a fresh key over the same sizes and roots.
fn resign(data: &Path) {
    use carevault_audit::checkpoint::{Checkpoint, NoteSigner, split_notes};
    let text = std::fs::read_to_string(data.join("audit/checkpoints")).unwrap();
    let seed = carevault_audit::checkpoint::generate_seed().unwrap();
    let vkey_text = std::fs::read_to_string(data.join("audit/checkpoint-key.vkey")).unwrap();
    let name = vkey_text.split('+').next().unwrap().to_string();
    let signer = NoteSigner::from_seed(&name, &seed).unwrap();
    let mut out = String::new();
    for note in split_notes(&text).unwrap() {
        let body_end = note.find("\n\n").unwrap();
        let cp = Checkpoint::parse_body(&note[..=body_end]).unwrap();
        out.push_str(&signer.sign(&cp));
    }
    std::fs::write(data.join("audit/checkpoints"), out).unwrap();
    std::fs::write(
        data.join("audit/checkpoint-key.vkey"),
        format!("{}\n", signer.verifier_key()),
    )
    .unwrap();
}

#[tokio::test]
async fn a_read_whose_audit_entry_cannot_be_written_returns_503_and_no_data() {
    // A read journal of 1 MiB: 255 records of one read each, few enough to fill here.
    let s = Server::start_with(&[("CAREVAULT_AUDIT_JOURNAL_MAX_MIB", "1")]).await;
    let auditor = s.token_for("auditor3", "system/AuditEvent.rs").await;
    let (st, _, b) = send(s.post("Patient", &patient("Failclosed"))).await;
    assert_eq!(st, 201);
    let pid = b["id"].as_str().unwrap().to_string();
    let ready = |s: &Server| s.http.get(format!("{}/readyz", s.root)).send();
    assert_eq!(ready(&s).await.unwrap().status(), 200);
    // The audit log refuses inserts, as a full disk would. The readiness probe says so before
    // any request fails (PRODUCT.md 2.2), and a write cannot commit without its entry.
    sql(
        &s.data(),
        "CREATE TRIGGER audit_full BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
    );
    assert_eq!(ready(&s).await.unwrap().status(), 503);
    let (st, _, b) = send(s.post("Patient", &patient("Unaudited"))).await;
    assert_eq!(st, 503);
    assert!(b.to_string().contains("audit trail"), "{b}");
    // Reads' entries still become durable in the read journal, which fills while they cannot
    // join the log; from then on reads are refused, with no data.
    let mut answered = 0;
    let refused = loop {
        let resp = s.get(&format!("Patient/{pid}")).send().await.unwrap();
        match resp.status().as_u16() {
            200 => answered += 1,
            503 => break resp.text().await.unwrap(),
            other => panic!("a read during the outage got {other}"),
        }
        assert!(answered <= 255, "the journal took more reads than it holds");
    };
    assert!(
        answered >= 200,
        "only {answered} reads before the journal was full"
    );
    assert!(!refused.contains("Failclosed"), "{refused}");
    assert!(!refused.contains("1970-01-01"), "{refused}");
    assert!(refused.contains("audit trail"), "{refused}");
    // A search is refused the same way.
    let resp = s.get("Patient?family=Failclosed").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(!resp.text().await.unwrap().contains(&pid));
    // The log takes entries again but folds still fail (their mark cannot move): writes, whose
    // entries commit with their data, go through, while the journal stays full, reads are
    // refused, and the probe says so.
    sql(
        &s.data(),
        "CREATE TRIGGER fold_stuck BEFORE INSERT ON audit_fold BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
    );
    sql(&s.data(), "DROP TRIGGER audit_full;");
    let (st, _, _) = send(s.post("Patient", &patient("Journalfull"))).await;
    assert_eq!(st, 201);
    assert_eq!(ready(&s).await.unwrap().status(), 503);
    let resp = s.get(&format!("Patient/{pid}")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(!resp.text().await.unwrap().contains("Failclosed"));
    // Once folds go through, the journal empties within a fold's spacing and reads go on.
    sql(&s.data(), "DROP TRIGGER fold_stuck;");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while ready(&s).await.unwrap().status() != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the journal was not emptied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (st, _, b) = send(s.get(&format!("Patient/{pid}"))).await;
    assert_eq!(st, 200);
    assert_eq!(b["name"][0]["family"], "Failclosed");
    let (st, _, b) = send(s.get("Patient?family=Unaudited")).await;
    assert_eq!(st, 200);
    assert_eq!(b["entry"].as_array().map_or(0, Vec::len), 0, "{b}");
    // Every read answered during the outage is in the log, once, as is the one after it.
    let reads = all_events(&s, &auditor)
        .await
        .into_iter()
        .filter(|e| {
            e["outcome"] == "0"
                && subtypes(e).contains(&"read".to_string())
                && e.to_string().contains(&format!("Patient/{pid}"))
        })
        .count();
    assert_eq!(reads, answered + 1);
}

#[tokio::test]
async fn proofs_reports_and_the_checkpoint_are_served_and_verifiable() {
    use base64::Engine;
    use carevault_audit::checkpoint::NoteVerifier;
    use carevault_audit::merkle;
    let mut s = Server::start().await;
    let auditor = s.token_for("auditor2", "system/AuditEvent.rs").await;
    let (_, _, b) = send(s.post("Patient", &patient("Reported"))).await;
    let pid = b["id"].as_str().unwrap().to_string();
    for _ in 0..3 {
        send(s.get(&format!("Patient/{pid}"))).await;
    }
    // The checkpoint at start is public and verifies with the published key.
    let note = s
        .http
        .get(format!("{}/audit/checkpoint", s.root))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let vkey = std::fs::read_to_string(s.data().join("audit/checkpoint-key.vkey")).unwrap();
    let cp = NoteVerifier::from_vkey(vkey.trim())
        .unwrap()
        .verify(&note)
        .unwrap();
    assert!(cp.size >= 1);
    // An inclusion proof of entry 1 against the current tree verifies from its entry alone.
    let proof: Value = s
        .http
        .get(format!("{}/audit/proof/1", s.root))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let b64 = |v: &Value| -> [u8; 32] {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    };
    let leaf = merkle::leaf_hash(proof["entry"].as_str().unwrap().as_bytes());
    // The proof also shows the AuditEvent the entry's compact bytes render to.
    assert_eq!(proof["event"]["resourceType"], "AuditEvent", "{proof}");
    assert_eq!(proof["event"]["id"], "a-000000000001", "{proof}");
    assert_eq!(
        Some(&proof["event"]),
        carevault_audit::event::render(proof["entry"].as_str().unwrap().as_bytes())
            .ok()
            .map(|e| carevault_audit::event::with_id(e, 1))
            .as_ref()
    );
    let path: Vec<[u8; 32]> = proof["inclusion_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(b64)
        .collect();
    let size = proof["tree_size"].as_u64().unwrap();
    merkle::verify_inclusion(&leaf, 0, size, &path, &b64(&proof["root_hash"])).unwrap();
    // ... and consistency from the start checkpoint to now.
    let cons: Value = s
        .http
        .get(format!(
            "{}/audit/consistency?first={}&second={size}",
            s.root, cp.size
        ))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path: Vec<[u8; 32]> = cons["consistency_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(b64)
        .collect();
    merkle::verify_consistency(cp.size, size, &cp.root, &b64(&cons["second_root"]), &path).unwrap();
    // Proofs are for auditors only.
    let r = s
        .http
        .get(format!("{}/audit/proof/1", s.root))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The accounting of disclosures over HTTP (CSV) lists the reads, with the client.
    let r = s
        .http
        .get(format!("{}/admin/reports/patient/{pid}?format=csv", s.root))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csv = r.text().await.unwrap();
    assert!(
        csv.lines().filter(|l| l.contains("read")).count() >= 3,
        "{csv}"
    );
    let html = s
        .http
        .get(format!(
            "{}/admin/reports/patient/{pid}?format=html",
            s.root
        ))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap();
    assert!(
        html.headers()
            .get("content-security-policy")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(!html.text().await.unwrap().contains("<script"));
    // The same report from the CLI, while the server runs.
    let (code, out, err) = cli(
        &s.data(),
        &[
            "audit",
            "report",
            "--patient",
            &format!("Patient/{pid}"),
            "--format",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    assert!(rows.as_array().unwrap().len() >= 4, "{rows}");
    assert_eq!(s.stop(), 0);
    // The stop wrote a final checkpoint; the log verifies.
    let (code, out) = verify(&s.data(), None);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn a_damaged_read_journal_stops_the_start_and_verify_and_says_how_to_go_on() {
    let mut s = Server::start().await;
    assert_eq!(s.stop(), 0);
    // One byte of the journal's header changed: its entries can no longer be trusted to be this
    // journal's, so nothing that would fold them starts, and nothing recreates it silently.
    let journal = s.data().join("store/carevault.audit-journal");
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&journal, &bytes).unwrap();
    let (code, _, err) = cli(&s.data(), &["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("audit journal")
            && err.contains("valid header")
            && err.contains("move it aside"),
        "{err}"
    );
    let (code, out) = verify(&s.data(), None);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("valid header"), "{out}");
    // Moved aside, the server starts with a new journal.
    std::fs::rename(&journal, s.data().join("store/damaged-journal")).unwrap();
    let (code, out) = verify(&s.data(), None);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn a_clock_behind_the_last_entry_stops_the_start() {
    let mut s = Server::start().await;
    assert_eq!(s.stop(), 0);
    let ahead = time::OffsetDateTime::now_utc().unix_timestamp() * 1000 + 86_400_000;
    sql(
        &s.data(),
        &format!(
            "UPDATE audit_log SET recorded = {ahead} WHERE seq = (SELECT max(seq) FROM audit_log)"
        ),
    );
    let (code, _, err) = cli(&s.data(), &["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("clock"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
