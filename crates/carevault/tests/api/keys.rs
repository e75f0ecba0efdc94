//! Encryption at rest end to end: data-key rotation under concurrent HTTPS load with a kill -9
//! mid-way and a resume, `keys status`, master re-wrap, wrong or missing master key at start,
//! and a tampered ciphertext answered for that record only.

use crate::harness::{Server, bin, cli, send};
use carevault_crypto::{MasterSource, PATIENT_KEY_FLAG, SystemRng, open_or_init_with};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::Mutex;

fn db(data: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(data.join("store/carevault.db")).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(30)).unwrap();
    c
}

fn header_key(body: &[u8]) -> u32 {
    u32::from_be_bytes([body[1], body[2], body[3], body[4]])
}

/// Every sealed value outside patient keys' reach, with the identity it is sealed to.
fn sealed_values(c: &rusqlite::Connection) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sql in [
        "SELECT r.rtype || '/' || r.id || '/_history/' || v.version, v.body FROM ver v JOIN res r ON r.rid = v.rid WHERE length(v.body) > 0",
        "SELECT 'sys/' || kind || '/' || key, body FROM system_record",
        "SELECT 'patient-key/' || patient, wrapped FROM patient_key",
    ] {
        let mut st = c.prepare(sql).unwrap();
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    out
}

fn key_file(data: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(data.join("keys/data-keys.json")).unwrap()).unwrap()
}

#[tokio::test]
async fn data_key_rotation_under_load_survives_kill_dash_nine_and_retires_the_old_key() {
    let s = Server::start().await;
    let data = s.data();
    // Shared-key resources (Organizations) and patient-keyed ones (Patients), 4 writers.
    let expected: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut seed = Vec::new();
    for w in 0..4 {
        let (http, base, token, expected) = (
            s.http.clone(),
            s.base.clone(),
            s.token.clone(),
            expected.clone(),
        );
        seed.push(tokio::spawn(async move {
            for n in 0..30 {
                for (t, body) in [
                    ("Organization", json!({"resourceType": "Organization", "name": format!("org-{w}-{n}")})),
                    ("Patient", json!({"resourceType": "Patient", "name": [{"family": format!("fam-{w}-{n}")}]})),
                ] {
                    let r = http.post(format!("{base}/{t}")).bearer_auth(&token)
                        .header("content-type", "application/fhir+json").body(body.to_string()).send().await.unwrap();
                    assert_eq!(r.status(), 201);
                    let b: Value = r.json().await.unwrap();
                    let marker = if t == "Patient" { b["name"][0]["family"].clone() } else { b["name"].clone() };
                    expected.lock().await.insert(format!("{t}/{}", b["id"].as_str().unwrap()), marker.as_str().unwrap().to_string());
                }
            }
        }));
    }
    for t in seed {
        t.await.unwrap();
    }
    let old_key = key_file(&data)["current_data_key"].as_u64().unwrap() as u32;
    // Keep the pre-rotation key file to try the old key afterwards, and prove it opens today's values.
    let old_dir = s.dir.path().join("old-keys");
    std::fs::create_dir_all(old_dir.join("keys")).unwrap();
    std::fs::copy(
        data.join("keys/data-keys.json"),
        old_dir.join("keys/data-keys.json"),
    )
    .unwrap();
    let master = s.dir.path().join("data.key");
    let old = open_or_init_with(
        &old_dir,
        MasterSource::KeyFile(master.clone()),
        &carevault_crypto::SystemClock,
        &SystemRng::new(),
    )
    .unwrap();
    let before = sealed_values(&db(&data));
    let under_old: Vec<_> = before
        .iter()
        .filter(|(_, b)| header_key(b) == old_key)
        .collect();
    assert!(
        under_old.len() > 120,
        "values under the old key: {}",
        under_old.len()
    );
    for (id, b) in &under_old {
        old.keyring.open(id.as_bytes(), b).unwrap();
    }

    // Load: 4 clients read (and check) and update their own Organizations throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for w in 0..4 {
        let (http, base, token, expected, stop, wrong, reads) = (
            s.http.clone(),
            s.base.clone(),
            s.token.clone(),
            expected.clone(),
            stop.clone(),
            wrong.clone(),
            reads.clone(),
        );
        load.push(tokio::spawn(async move {
            let all: Vec<String> = expected.lock().await.keys().cloned().collect();
            let mine: Vec<String> = all
                .iter()
                .filter(|k| k.starts_with("Organization/"))
                .skip(w)
                .step_by(4)
                .cloned()
                .collect();
            // Each worker checks what nobody else changes: every Patient and its own Organizations.
            let keys: Vec<String> = all
                .iter()
                .filter(|k| k.starts_with("Patient/"))
                .chain(mine.iter())
                .cloned()
                .collect();
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i += 7;
                let k = &keys[i % keys.len()];
                let want = expected.lock().await.get(k).cloned().unwrap();
                let r = http
                    .get(format!("{base}/{k}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                let st = r.status();
                let b: Value = r.json().await.unwrap_or(Value::Null);
                let got = if k.starts_with("Patient/") {
                    b["name"][0]["family"].clone()
                } else {
                    b["name"].clone()
                };
                if st != 200 || got != json!(want) {
                    wrong.fetch_add(1, Ordering::Relaxed);
                    eprintln!("wrong read of {k}: {st} {got} (wanted {want})");
                }
                reads.fetch_add(1, Ordering::Relaxed);
                if i % 3 == 0 {
                    let o = &mine[i % mine.len()];
                    let name = format!("{o}-v{i}");
                    let id = o.trim_start_matches("Organization/");
                    let r = http
                        .put(format!("{base}/{o}"))
                        .bearer_auth(&token)
                        .header("content-type", "application/fhir+json")
                        .body(
                            json!({"resourceType": "Organization", "id": id, "name": name})
                                .to_string(),
                        )
                        .send()
                        .await
                        .unwrap();
                    if r.status() == 200 {
                        expected.lock().await.insert(o.clone(), name);
                    } else {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    // A throttled rotation, killed (-9) once it has done part of the work.
    let mut rot = Command::new(bin())
        .args(["keys", "rotate", "--data", "--batch-size", "4", "--data"])
        .arg(&data)
        .env("CAREVAULT_TEST_ROTATE_BATCH_DELAY_MS", "40")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(rot.stderr.take().unwrap()).lines();
    let killed_at = tokio::task::spawn_blocking(move || {
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("keys rotate: ") {
                let done: u64 = rest.split('/').next().unwrap().parse().unwrap();
                if done >= 40 {
                    rot.kill().unwrap();
                    let _ = rot.wait();
                    return done;
                }
            }
        }
        let _ = rot.wait();
        panic!("the rotation ended before it could be interrupted");
    })
    .await
    .unwrap();
    let (code, out, err) = cli(&data, &["keys", "status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["rotation"]["running"], json!(false), "{st}");
    assert!(
        st["rotation"]["done"].as_u64().unwrap() >= killed_at,
        "{st}"
    );
    assert!(
        st["rotation"]["done"].as_u64().unwrap() < st["rotation"]["total"].as_u64().unwrap(),
        "{st}"
    );
    let new_key = st["rotation"]["target_key"].as_u64().unwrap() as u32;
    assert_ne!(new_key, old_key);
    let old_entry = st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == json!(old_key))
        .unwrap()
        .clone();
    assert_eq!(old_entry["state"], "retired-in-use", "{st}");

    // Resume (still throttled), and a second rotation at the same time is refused.
    let mut resume = Command::new(bin())
        .args([
            "keys",
            "rotate",
            "--data",
            "--json",
            "--batch-size",
            "4",
            "--data",
        ])
        .arg(&data)
        .env("CAREVAULT_TEST_ROTATE_BATCH_DELAY_MS", "20")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut rlines = BufReader::new(resume.stderr.take().unwrap()).lines();
    // Its first progress line means it holds the lock.
    for line in rlines.by_ref() {
        if line.unwrap().starts_with("keys rotate: ") {
            break;
        }
    }
    let (code, _, err) = cli(&data, &["keys", "rotate", "--data"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already running"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let drain = std::thread::spawn(move || rlines.count());
    let out = resume.wait_with_output().unwrap();
    drain.join().unwrap();
    assert!(out.status.success());
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["resumed"], true, "{summary}");
    assert_eq!(summary["current_data_key"], json!(new_key));
    assert_eq!(summary["removed_keys"], json!([old_key]));

    // A little more load after the rotation, then stop it.
    let after = reads.load(Ordering::Relaxed);
    while reads.load(Ordering::Relaxed) < after + 100 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "reads or writes went wrong during the rotation"
    );
    assert!(reads.load(Ordering::Relaxed) > 200);

    // Every resource reads back as last written.
    for (k, want) in expected.lock().await.iter() {
        let (st, _, b) = send(s.get(k)).await;
        assert_eq!(st, 200, "{k}");
        let got = if k.starts_with("Patient/") {
            b["name"][0]["family"].clone()
        } else {
            b["name"].clone()
        };
        assert_eq!(got, json!(want), "{k}");
    }
    // Nothing current is sealed under a data key other than the new one, the old key left the
    // key file, and the old key opens none of today's values.
    let after = sealed_values(&db(&data));
    for (id, b) in &after {
        let k = header_key(b);
        assert!(
            k == new_key || k & PATIENT_KEY_FLAG != 0,
            "{id} is sealed under key {k}"
        );
        assert!(
            old.keyring.open(id.as_bytes(), b).is_err(),
            "the old key opened {id}"
        );
    }
    let kf = key_file(&data);
    assert!(
        kf["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["id"] != json!(old_key)),
        "{kf}"
    );
    let (_, out, _) = cli(&data, &["keys", "status", "--json"]);
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["rotation"], Value::Null);
    assert_eq!(st["current_data_key"], json!(new_key));
    let cur = st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == json!(new_key))
        .unwrap();
    assert_eq!(cur["state"], "current");
    assert_eq!(cur["protects"]["patient_keys"], json!(120));
    assert_eq!(st["patient_keys"]["in_use"], json!(120));
    assert!(cur["protects"]["records"].as_u64().unwrap() >= 120, "{st}");
}

#[tokio::test]
async fn master_rotation_rewraps_without_downtime_and_the_old_master_stops_working() {
    let s = Server::start().await;
    let data = s.data();
    let (st, _, p) = send(s.post(
        "Patient",
        &json!({"resourceType": "Patient", "name": [{"family": "Rewrap"}]}),
    ))
    .await;
    assert_eq!(st, 201);
    let id = p["id"].as_str().unwrap().to_string();
    let old_master = std::fs::read(s.dir.path().join("data.key")).unwrap();
    let (code, out, err) = cli(&data, &["keys", "rotate", "--master"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nothing to set"), "{out}");
    let new_master = std::fs::read(s.dir.path().join("data.key")).unwrap();
    assert_ne!(old_master, new_master);
    // The running server keeps serving reads and writes.
    let (st, _, _) = send(s.get(&format!("Patient/{id}"))).await;
    assert_eq!(st, 200);
    let (st, _, _) = send(s.post("Patient", &json!({"resourceType": "Patient"}))).await;
    assert_eq!(st, 201);
    // The old master key no longer opens the directory; the new one does.
    let old_file = s.dir.path().join("old-master.key");
    std::fs::write(&old_file, &old_master).unwrap();
    let out = Command::new(bin())
        .args(["keys", "status", "--data"])
        .arg(&data)
        .env("CAREVAULT_MASTER_KEY_FILE", &old_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("master key does not match this data directory")
    );
    // A passphrase change (new salt) then reads with the passphrase only.
    let mut child = Command::new(bin())
        .args([
            "keys",
            "rotate",
            "--master",
            "--new-passphrase-stdin",
            "--data",
        ])
        .arg(&data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse battery staple\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("CAREVAULT_PASSPHRASE"));
    let out = Command::new(bin())
        .args(["keys", "status", "--json", "--data"])
        .arg(&data)
        .env("CAREVAULT_PASSPHRASE", "correct horse battery staple")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["master"]["kind"], "passphrase");
    let (st, _, b) = send(s.get(&format!("Patient/{id}"))).await;
    assert_eq!((st, b["name"][0]["family"].as_str()), (200, Some("Rewrap")));
}

/// Runs `serve` to its end (it must fail fast) and returns (code, stdout, stderr).
fn serve_fails(data: &Path, env: &[(&str, &Path)]) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn wrong_or_missing_master_key_stops_serve_with_one_sentence() {
    let mut s = Server::start().await;
    let data = s.data();
    assert_eq!(s.stop(), 0);
    let other = s.dir.path().join("other.key");
    std::fs::write(&other, "ab".repeat(32)).unwrap();
    let (code, out, err) = serve_fails(&data, &[("CAREVAULT_MASTER_KEY_FILE", &other)]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "no banner, no URL: {out}");
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("carevault: ")
            && last.contains("master key does not match this data directory (data key 1)"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // The default key file removed: the key is not silently re-created.
    let key = s.dir.path().join("data.key");
    let saved = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let (code, out, err) = serve_fails(&data, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("no master key found for the data directory"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!key.exists());
    // Put back, it serves again.
    std::fs::write(&key, saved).unwrap();
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    let mut again = Server::spawn(dir, &[]);
    again.authenticate("system/*.*").await;
    assert_eq!(send(again.get("metadata")).await.0, 200);
}

#[tokio::test]
async fn a_tampered_ciphertext_answers_500_for_that_record_only() {
    let s = Server::start().await;
    let data = s.data();
    let (_, _, a) = send(s.post(
        "Patient",
        &json!({"resourceType": "Patient", "name": [{"family": "Tamperedvictim"}]}),
    ))
    .await;
    let (_, _, b) = send(s.post(
        "Patient",
        &json!({"resourceType": "Patient", "name": [{"family": "Untouched"}]}),
    ))
    .await;
    let (_, _, o) = send(s.post(
        "Organization",
        &json!({"resourceType": "Organization", "name": "Untouched Org"}),
    ))
    .await;
    let a = a["id"].as_str().unwrap();
    // A second connection flips one byte of A's sealed body while the server runs.
    let c = db(&data);
    let (seq, mut body): (i64, Vec<u8>) = c.query_row(
        "SELECT v.seq, v.body FROM ver v JOIN res r ON r.rid = v.rid WHERE r.rtype = 'Patient' AND r.id = ?1",
        [a], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    let mid = body.len() / 2;
    body[mid] ^= 0x01;
    c.execute(
        "UPDATE ver SET body = ?1 WHERE seq = ?2",
        rusqlite::params![body, seq],
    )
    .unwrap();
    drop(c);
    let (st, h, oo) = send(s.get(&format!("Patient/{a}"))).await;
    assert_eq!(st, 500, "{oo}");
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let diag = oo["issue"][0]["diagnostics"].as_str().unwrap();
    let rid = h["x-request-id"].to_str().unwrap();
    assert!(
        diag.contains("integrity check failed") && diag.contains(rid),
        "{diag}"
    );
    assert!(!oo.to_string().contains("Tamperedvictim"));
    // Everything else is still served, and the server is up.
    let (st, _, got) = send(s.get(&format!("Patient/{}", b["id"].as_str().unwrap()))).await;
    assert_eq!(
        (st, got["name"][0]["family"].as_str()),
        (200, Some("Untouched"))
    );
    assert_eq!(
        send(s.get(&format!("Organization/{}", o["id"].as_str().unwrap())))
            .await
            .0,
        200
    );
    let r = s
        .http
        .get(format!("{}/healthz", s.root))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Logged with the record's type and row, never its content.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = s.log();
    assert!(
        log.contains("failed its integrity check") && log.contains(a),
        "{log}"
    );
    assert!(!log.contains("Tamperedvictim"));
}
