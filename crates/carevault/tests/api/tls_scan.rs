//! The TLS configuration as an outside scanner sees it: testssl.sh (Debian's `testssl.sh`,
//! installed by `.ci/run`) against the real server.

use crate::harness::Server;
use serde_json::Value;

#[tokio::test]
async fn testssl_finds_only_modern_aead_forward_secret_tls_and_hsts() {
    let s = Server::start().await;
    let target = s.root.trim_start_matches("https://").to_string();
    let report = s.dir.path().join("testssl.json");
    let out = tokio::process::Command::new("testssl")
        .args(["--quiet", "--color", "0", "--warnings", "off", "--jsonfile"])
        .arg(&report)
        .args(["-p", "-s", "-f", "-E", "-h", &target])
        .output()
        .await
        .expect("testssl must be installed (apt-get install testssl.sh; see .ci/run)");
    assert!(
        report.exists(),
        "testssl wrote no report: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let findings: Vec<Value> = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let finding = |id: &str| -> String {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .and_then(|f| f["finding"].as_str())
            .unwrap_or_else(|| panic!("testssl reported nothing for {id}"))
            .to_string()
    };
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert!(
            finding(old).contains("not offered"),
            "{old}: {}",
            finding(old)
        );
    }
    assert!(
        finding("TLS1_2").starts_with("offered"),
        "{}",
        finding("TLS1_2")
    );
    assert!(
        finding("TLS1_3").starts_with("offered"),
        "{}",
        finding("TLS1_3")
    );
    for weak in [
        "cipherlist_NULL",
        "cipherlist_aNULL",
        "cipherlist_EXPORT",
        "cipherlist_LOW",
        "cipherlist_3DES_IDEA",
        "cipherlist_AVERAGE",
    ] {
        assert!(
            finding(weak).contains("not offered"),
            "{weak}: {}",
            finding(weak)
        );
    }
    assert!(finding("PFS").starts_with("offered"), "{}", finding("PFS"));
    let suites: Vec<String> = findings
        .iter()
        .filter(|f| {
            f["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("cipher-tls"))
        })
        .map(|f| f["finding"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(suites.len() >= 4, "too few suites listed: {suites:?}");
    for suite in &suites {
        assert!(
            suite.contains("ECDH"),
            "suite without forward secrecy: {suite}"
        );
        assert!(
            suite.contains("AESGCM") || suite.contains("ChaCha20"),
            "suite without AEAD: {suite}"
        );
        for bad in ["CBC", "RC4", "DES", "NULL", "EXP"] {
            assert!(!suite.contains(bad), "weak suite offered: {suite}");
        }
    }
    assert!(
        finding("HSTS_time").contains("31536000"),
        "{}",
        finding("HSTS_time")
    );
    assert_eq!(finding("HSTS_subdomains"), "includes subdomains");
}
