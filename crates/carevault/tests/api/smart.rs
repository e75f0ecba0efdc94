//! SMART App Launch 2.0 and Backend Services against the real server: discovery, the client
//! registry CLI, and the whole flow driven by Python `authlib` (plus `fhirpy` for the data),
//! a library no one here wrote (`.ci/run` installs it from tests/requirements.txt).

use crate::harness::{Server, cli, send};
use serde_json::{Value, json};
use std::path::Path;

/// The password every test account gets (long, not on the breached list, not the user name).
pub(crate) const PASSWORD: &str = "lantern-orchard-seven-quietly";

/// A test account and its authenticator key.
pub(crate) struct Person {
    pub name: String,
    pub totp_secret: String,
}

/// Creates a Patient with the system token and returns its id.
pub(crate) async fn create_patient(s: &Server, family: &str) -> String {
    let (status, _, body) = send(s.post(
        "Patient",
        &json!({"resourceType": "Patient", "name": [{"family": family}]}),
    ))
    .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// `carevault user add NAME --role ROLE --patient|--practitioner REF` with TOTP enrolled.
pub(crate) fn add_user(s: &Server, name: &str, role: &str, link: (&str, &str)) -> Person {
    let pw = s.dir.path().join(format!("{name}.pw"));
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let totp = s.dir.path().join(format!("{name}.totp"));
    let (code, out, err) = cli(
        &s.data(),
        &[
            "user",
            "add",
            name,
            "--role",
            role,
            link.0,
            link.1,
            "--password-file",
            pw.to_str().unwrap(),
            "--totp-secret-out",
            totp.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "user add: {out} {err}");
    let uri = std::fs::read_to_string(&totp).unwrap();
    let secret = uri
        .split("secret=")
        .nth(1)
        .and_then(|r| r.split('&').next())
        .expect("otpauth URI with a secret")
        .trim()
        .to_string();
    Person {
        name: name.into(),
        totp_secret: secret,
    }
}

/// Registers a SMART app; returns its secret when confidential.
pub(crate) fn add_app(
    s: &Server,
    name: &str,
    scope: &str,
    redirect: &str,
    public: bool,
) -> Option<String> {
    let secret = s.dir.path().join(format!("{name}.secret"));
    let mut args = vec![
        "client",
        "add",
        name,
        "--scope",
        scope,
        "--redirect-uri",
        redirect,
    ];
    let secret_path = secret.to_str().unwrap().to_string();
    if public {
        args.push("--public");
    } else {
        args.push("--secret-out");
        args.push(&secret_path);
    }
    let (code, out, err) = cli(&s.data(), &args);
    assert_eq!(code, 0, "client add: {out} {err}");
    assert_eq!(out.trim(), name);
    (!public).then(|| std::fs::read_to_string(&secret).unwrap().trim().to_string())
}

async fn run_python(script: &str, cfg: &Value, dir: &Path) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let cfg_file = dir.join(format!("{script}.json"));
    std::fs::write(&cfg_file, cfg.to_string()).unwrap();
    let out = tokio::process::Command::new("python3")
        .arg(&path)
        .arg(&cfg_file)
        .output()
        .await
        .expect("python3 must be installed (see .ci/run)");
    assert!(
        out.status.success(),
        "{script} failed (pip install -r tests/requirements.txt):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn smart_configuration_and_capability_statement() {
    let s = Server::start().await;
    let (status, _, conf) = send(
        s.http
            .get(format!("{}/.well-known/smart-configuration", s.root)),
    )
    .await;
    assert_eq!(status, 200);
    let root = &s.root;
    assert_eq!(conf["issuer"], json!(root));
    assert_eq!(conf["jwks_uri"], json!(format!("{root}/oauth2/jwks")));
    assert_eq!(
        conf["authorization_endpoint"],
        json!(format!("{root}/oauth2/authorize"))
    );
    assert_eq!(
        conf["token_endpoint"],
        json!(format!("{root}/oauth2/token"))
    );
    assert_eq!(
        conf["revocation_endpoint"],
        json!(format!("{root}/oauth2/revoke"))
    );
    assert_eq!(
        conf["introspection_endpoint"],
        json!(format!("{root}/oauth2/introspect"))
    );
    assert_eq!(conf["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(conf["response_types_supported"], json!(["code"]));
    assert_eq!(
        conf["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "private_key_jwt"])
    );
    assert_eq!(
        conf["token_endpoint_auth_signing_alg_values_supported"],
        json!(["RS384", "ES384"])
    );
    for c in [
        "launch-standalone",
        "client-public",
        "client-confidential-symmetric",
        "client-confidential-asymmetric",
        "context-standalone-patient",
        "permission-v2",
        "permission-v1",
        "sso-openid-connect",
        "permission-offline",
        "permission-patient",
        "permission-user",
    ] {
        assert!(
            conf["capabilities"].as_array().unwrap().contains(&json!(c)),
            "{c}"
        );
    }
    let (_, _, cs) = send(s.http.get(format!("{}/metadata", s.base))).await;
    let ext = &cs["rest"][0]["security"]["extension"][0];
    assert_eq!(
        ext["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    let uris: Vec<(String, String)> = ext["extension"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["url"].as_str().unwrap().to_string(),
                e["valueUri"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (name, path) in [
        ("authorize", "/oauth2/authorize"),
        ("token", "/oauth2/token"),
        ("revoke", "/oauth2/revoke"),
        ("introspect", "/oauth2/introspect"),
    ] {
        assert!(
            uris.contains(&(name.to_string(), format!("{root}{path}"))),
            "{name}: {uris:?}"
        );
    }
}

#[tokio::test]
async fn client_registry_cli() {
    let s = Server::start().await;
    let d = s.data();
    let p = |n: &str| s.dir.path().join(n).to_str().unwrap().to_string();
    // Refusals: plain http off loopback, --public without a redirect URI, system scopes on an
    // app, app scopes on a system client, --jwks with a private key, a SMART app without kind.
    for (args, why) in [
        (
            vec![
                "client",
                "add",
                "a1",
                "--scope",
                "patient/*.rs",
                "--redirect-uri",
                "http://app.example/cb",
                "--public",
            ],
            "http",
        ),
        (
            vec!["client", "add", "a2", "--scope", "system/*.rs", "--public"],
            "--public",
        ),
        (
            vec![
                "client",
                "add",
                "a3",
                "--scope",
                "system/*.rs",
                "--redirect-uri",
                "https://app.example/cb",
                "--public",
            ],
            "system/",
        ),
        (
            vec![
                "client",
                "add",
                "a4",
                "--scope",
                "openid patient/*.rs",
                "--secret-out",
                &p("a4.secret"),
            ],
            "SMART apps",
        ),
        (
            vec![
                "client",
                "add",
                "a5",
                "--scope",
                "patient/*.rs",
                "--redirect-uri",
                "https://app.example/cb",
            ],
            "--public",
        ),
    ] {
        let (code, out, err) = cli(&d, &args);
        assert_ne!(code, 0, "{args:?} was accepted: {out}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
    let private = json!({"keys": [{"kty": "EC", "crv": "P-384", "kid": "k",
        "x": "r533D4SdpB8XlW5BnaEgzkCw8xWwLMzIs3kL4K7NoAczJyEgQJhi0V2nvFrOz5E0",
        "y": "eBj7Pvk9L16Zk6ZDwWyLkFsbk4z4vaU8Ih_ns8oqfOT5vLD7E5lLGF-P-6Dc742o",
        "d": "AAAA"}]});
    std::fs::write(p("private.jwks"), private.to_string()).unwrap();
    let (code, _, err) = cli(
        &d,
        &[
            "client",
            "add",
            "a6",
            "--scope",
            "system/*.rs",
            "--jwks",
            &p("private.jwks"),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("private"), "{err}");
    // Accepted kinds, and what `client list --json` says of them.
    add_app(
        &s,
        "phone",
        "openid fhirUser launch/patient offline_access patient/*.rs",
        "http://127.0.0.1:9/cb",
        true,
    );
    let secret = add_app(
        &s,
        "portal",
        "openid user/*.rs",
        "https://portal.example/cb",
        false,
    );
    assert_eq!(secret.unwrap().len(), 43);
    let (code, out, _) = cli(&d, &["client", "list", "--json"]);
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).unwrap();
    let kind = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|c| c["client_id"] == id)
            .map(|c| (c["kind"].clone(), c["redirect_uris"].clone()))
            .unwrap()
    };
    assert_eq!(
        kind("phone"),
        (json!("public-app"), json!(["http://127.0.0.1:9/cb"]))
    );
    assert_eq!(kind("portal").0, json!("confidential-app"));
    // A public app has no secret to rotate; a confidential one does.
    let (code, _, err) = cli(
        &d,
        &["client", "rotate-secret", "phone", "--secret-out", &p("x")],
    );
    assert_ne!(code, 0);
    assert!(err.contains("no secret"), "{err}");
    let (code, _, _) = cli(
        &d,
        &["client", "rotate-secret", "portal", "--secret-out", &p("y")],
    );
    assert_eq!(code, 0);
    // A public app cannot use client_credentials, with or without a secret.
    let (status, _, body) = send(
        s.http
            .post(format!("{}/oauth2/token", s.root))
            .form(&[("grant_type", "client_credentials"), ("client_id", "phone")]),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "unauthorized_client");
}

#[tokio::test]
async fn authlib_runs_the_standalone_launch_with_refresh_revoke_and_introspect() {
    let s = Server::start().await;
    let patient = create_patient(&s, "Authlib").await;
    let person = add_user(
        &s,
        "pat.authlib",
        "patient",
        ("--patient", &format!("Patient/{patient}")),
    );
    let redirect = "http://127.0.0.1:8765/callback";
    add_app(
        &s,
        "phone-app",
        "openid fhirUser launch/patient offline_access patient/*.rs",
        redirect,
        true,
    );
    let cfg = json!({
        "root": s.root, "fhir": s.base, "ca": s.data().join("tls/cert.pem"),
        "client_id": "phone-app", "redirect_uri": redirect,
        "username": person.name, "password": PASSWORD, "totp_secret": person.totp_secret,
        "patient": patient,
    });
    run_python("smart_app.py", &cfg, s.dir.path()).await;
    // Every issue, refresh and revocation left an audit event.
    let (_, _, events) = send(s.get("AuditEvent?_count=1000")).await;
    let codes: Vec<String> = events["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| {
            e["resource"]["subtype"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|c| c["code"].as_str().map(str::to_string))
        .collect();
    for kind in ["token-issued", "token-refreshed", "token-revoked"] {
        assert!(
            codes.iter().any(|c| c.contains(kind)),
            "no {kind} event among {codes:?}"
        );
    }
}

#[tokio::test]
async fn authlib_backend_services_with_rs384_and_es384() {
    let s = Server::start().await;
    let cfg = json!({
        "root": s.root, "fhir": s.base, "ca": s.data().join("tls/cert.pem"),
        "bin": crate::harness::bin(), "data": s.data(), "workdir": s.dir.path(),
    });
    run_python("backend_services.py", &cfg, s.dir.path()).await;
}
