//! First start, TLS, security headers, health, graceful shutdown.

use crate::harness::{Server, send};
use std::os::unix::fs::PermissionsExt;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn first_start_creates_a_private_data_directory_and_says_where_things_are() {
    let mut s = Server::start().await;
    let data = s.data();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("admin-password")), 0o600);
    assert_eq!(mode(&data.join("tls/key.pem")), 0o600);
    assert!(data.join("carevault.toml").exists());
    let pw = std::fs::read_to_string(data.join("admin-password")).unwrap();
    assert!(pw.trim().len() >= 24, "admin password too short");
    // The master key lives beside, not inside, the data directory.
    let key = s.dir.path().join("data.key");
    assert!(key.exists(), "default master key beside the data directory");
    assert_eq!(mode(&key), 0o600);
    let banner = s.stdout_head.join("\n");
    assert!(banner.contains("admin-password"), "{banner}");
    assert!(banner.contains("data.key"), "{banner}");
    // Fingerprint printed matches the certificate on disk.
    let pem = std::fs::read_to_string(data.join("tls/cert.pem")).unwrap();
    let der = pem_to_der(&pem);
    let fp = sha256_hex_colon(&der);
    assert!(banner.contains(&fp), "fingerprint {fp} not in {banner}");
    assert_eq!(s.stop(), 0);
    // A later start prints URL and fingerprint only.
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    let s2 = Server::spawn(dir, &[]);
    let banner2 = s2.stdout_head.join("\n");
    assert!(!banner2.contains("admin-password"), "{banner2}");
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64_decode(&b64)
}

fn base64_decode(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = A.iter().position(|a| *a == c).expect("base64") as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    out
}

fn sha256_hex_colon(data: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    let hex = String::from_utf8(out.stdout).unwrap();
    let hex = hex.split_whitespace().next().unwrap().to_uppercase();
    hex.as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":")
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let s = Server::start().await;
    for (path, phi) in [
        ("/healthz", false),
        ("/fhir/metadata", false),
        ("/fhir/Patient", true),
        ("/nope", true),
    ] {
        let resp = s
            .http
            .get(format!("{}{}", s.root, path))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
        let h = resp.headers();
        assert_eq!(
            h["strict-transport-security"], "max-age=31536000; includeSubDomains",
            "{path}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert!(h.contains_key("x-request-id"), "{path}");
        if phi {
            assert_eq!(h["cache-control"], "no-store", "{path}");
        }
    }
    // A caller's request id is echoed when well-formed and replaced when not.
    let r = s
        .get("Patient")
        .header("x-request-id", "abc.123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc.123");
    let r = s
        .get("Patient")
        .header("x-request-id", "bad id!")
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], "bad id!");
}

#[tokio::test]
async fn health_and_readiness_answer_without_a_token() {
    let s = Server::start().await;
    assert_eq!(
        s.http
            .get(format!("{}/healthz", s.root))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        s.http
            .get(format!("{}/readyz", s.root))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (st, _, cap) = send(s.http.get(format!("{}/metadata", s.base))).await;
    assert_eq!(st, 200);
    assert_eq!(cap["resourceType"], "CapabilityStatement");
    assert_eq!(cap["fhirVersion"], "4.0.1");
    let mut types: Vec<String> = cap["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap().to_string())
        .collect();
    types.sort();
    assert_eq!(
        types,
        official_resource_types(),
        "every R4 resource type, nothing else"
    );
}

#[tokio::test]
async fn plaintext_http_gets_no_answer() {
    let s = Server::start().await;
    let plain = s.root.replace("https://", "http://");
    let r = reqwest::Client::new()
        .get(format!("{plain}/healthz"))
        .send()
        .await;
    match r {
        Err(_) => {}
        Ok(resp) => assert!(
            !resp.status().is_success(),
            "plaintext got {}",
            resp.status()
        ),
    }
}

#[tokio::test]
async fn tls_below_1_2_is_refused() {
    let s = Server::start().await;
    let cert = std::fs::read(s.data().join("tls/cert.pem")).unwrap();
    let old = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&cert).unwrap()])
        .tls_version_max(reqwest::tls::Version::TLS_1_1)
        .build();
    // rustls cannot even build a client below 1.2; if the builder allows it the handshake must fail.
    if let Ok(c) = old {
        assert!(c.get(format!("{}/healthz", s.root)).send().await.is_err());
    }
    let tls12 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&cert).unwrap()])
        .tls_version_max(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    assert_eq!(
        tls12
            .get(format!("{}/healthz", s.root))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let mut s = Server::start().await;
    // A slow-ish request in flight (a search over a transaction's worth of data) while SIGTERM arrives.
    let mut entries = Vec::new();
    for i in 0..200 {
        entries.push(
            serde_json::json!({"fullUrl": format!("urn:uuid:00000000-0000-0000-0000-{i:012}"),
            "resource": {"resourceType": "Patient", "name": [{"family": format!("Drain{i}")}]},
            "request": {"method": "POST", "url": "Patient"}}),
        );
    }
    let bundle =
        serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let req = s.post("", &bundle).send();
    let handle = tokio::spawn(req);
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let (code, s) = tokio::task::spawn_blocking(move || {
        let c = s.stop();
        (c, s)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "exit code after SIGTERM");
    let answered = matches!(handle.await.unwrap(), Ok(r) if r.status() == 200);
    // Restart on the same data: the transaction is either all there (and was acknowledged) or absent.
    let mut s = s;
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    let mut s2 = Server::spawn(dir, &[]);
    s2.authenticate("system/*.*").await;
    let (_, _, b) = send(s2.get("Patient?family=Drain&_summary=count")).await;
    let total = b["total"].as_u64().unwrap();
    assert!(
        total == 0 || total == 200,
        "partial transaction visible: {total}"
    );
    if answered {
        assert_eq!(total, 200, "an acknowledged transaction must survive");
    }
}

/// Concrete resource types of the official R4 package, read independently of the server.
fn official_resource_types() -> Vec<String> {
    use std::io::Read;
    let path = crate::harness::shared_data().join("fhir-r4/profiles-resources.json.gz");
    let out = std::process::Command::new("zcat")
        .arg(path)
        .output()
        .expect("zcat");
    let mut text = String::new();
    out.stdout.as_slice().read_to_string(&mut text).unwrap();
    let bundle: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut v: Vec<String> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| {
            r["resourceType"] == "StructureDefinition"
                && r["kind"] == "resource"
                && r["abstract"] == false
                && r["derivation"] == "specialization"
                && r["fhirVersion"] == "4.0.1"
        })
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}
