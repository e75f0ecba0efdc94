//! A real FHIR client library (Python `fhirpy`, installed by `.ci/run`) against the real server.

use crate::harness::Server;

#[tokio::test]
async fn fhirpy_creates_reads_searches_updates_and_deletes() {
    let s = Server::start().await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fhirpy_client.py");
    let ca = s.data().join("tls/cert.pem");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(&s.base)
        .arg(&s.token)
        .arg(&ca)
        .output()
        .await
        .expect("python3 must be installed (see .ci/run)");
    assert!(
        out.status.success(),
        "fhirpy run failed (pip install -r tests/requirements.txt):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
