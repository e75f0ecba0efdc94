//! Denied versus absent (PRODUCT.md 2.2): a clinician without a care relationship gets the same
//! answer for an existing and a non-existing chart, and `_include`, `_revinclude`, chains,
//! `_has`, history and `_summary=count` reveal nothing; a `patient` user cannot reach another
//! patient by any route (read, search, compartment search, history, batch, include).
//!
//! Users are made with `carevault user add` and get their tokens through the real SMART flow:
//! authorize → sign-in form (password and a TOTP code computed with `totp-rs`) → consent →
//! code → token with PKCE S256.

use crate::harness::{Server, cli, send};
use base64::Engine as _;
use serde_json::{Value, json};
use std::time::Duration;

const PASSWORD: &str = "correct horse battery staple 42";
const REDIRECT: &str = "https://app.example/callback";

/// A signed-in user's token for `scope`, through the SMART authorization-code flow.
pub async fn user_token(
    s: &Server,
    name: &str,
    role: &str,
    link: Option<&str>,
    scope: &str,
) -> String {
    let dir = s.dir.path();
    let pw = dir.join(format!("{name}.pw"));
    std::fs::write(&pw, PASSWORD).unwrap();
    let totp_file = dir.join(format!("{name}.totp"));
    let mut args = vec![
        "user",
        "add",
        name,
        "--role",
        role,
        "--password-file",
        pw.to_str().unwrap(),
        "--totp-secret-out",
        totp_file.to_str().unwrap(),
    ];
    if let Some(l) = link {
        args.push(if l.starts_with("Patient/") {
            "--patient"
        } else {
            "--practitioner"
        });
        args.push(l);
    }
    let (code, out, err) = cli(&s.data(), &args);
    assert_eq!(code, 0, "user add {name}: {out} {err}");
    let uri = std::fs::read_to_string(&totp_file).unwrap();
    let secret = uri
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .unwrap()
        .to_string();
    let client = format!("app-{name}");
    let (code, out, err) = cli(
        &s.data(),
        &[
            "client",
            "add",
            &client,
            "--scope",
            &format!("openid fhirUser {scope}"),
            "--redirect-uri",
            REDIRECT,
            "--public",
        ],
    );
    assert_eq!(code, 0, "client add: {out} {err}");

    let cert = std::fs::read(s.data().join("tls/cert.pem")).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&cert).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut cookie: Option<String> = None;
    let verifier = format!("{name}-{role}-pkce-verifier-0123456789abcdefghijklmnopqrstuvwxyz");
    let challenge = {
        use sha2::Digest;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&verifier))
    };
    let authorize = format!(
        "/oauth2/authorize?{}",
        form(&[
            ("response_type", "code"),
            ("client_id", &client),
            ("redirect_uri", REDIRECT),
            ("scope", &format!("openid fhirUser {scope}")),
            ("state", "xyz"),
            ("aud", &s.base),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
    );
    // One request with this browser's cookie; remembers a new one.
    async fn go(
        http: &reqwest::Client,
        cookie: &mut Option<String>,
        req: reqwest::RequestBuilder,
    ) -> (u16, String, String) {
        let req = match cookie.as_ref() {
            Some(c) => req.header("cookie", c.as_str()),
            None => req,
        };
        let _ = http;
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        if let Some(sc) = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
        {
            *cookie = Some(sc.split(';').next().unwrap().trim().to_string());
        }
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (status, location, resp.text().await.unwrap())
    }
    let (_, _, login) = go(&http, &mut cookie, http.get(format!("{}/login", s.root))).await;
    let csrf = between(&login, "name=\"csrf\" value=\"", "\"");
    let (st, loc, body) = go(
        &http,
        &mut cookie,
        http.post(format!("{}/login", s.root)).form(&[
            ("csrf", csrf.as_str()),
            ("username", name),
            ("password", PASSWORD),
            ("otp", &totp_now(&secret)),
        ]),
    )
    .await;
    assert!(
        st == 303 || st == 302,
        "sign-in of {name}: {st} {loc} {body}"
    );
    let (st, _, consent) = go(
        &http,
        &mut cookie,
        http.get(format!("{}{authorize}", s.root)),
    )
    .await;
    assert_eq!(st, 200, "consent page for {name}: {consent}");
    let mut fields: Vec<(String, String)> = Vec::new();
    for part in consent.split("<input type=\"hidden\" name=\"").skip(1) {
        let k = part.split('"').next().unwrap().to_string();
        let v = between(part, "value=\"", "\"")
            .replace("&amp;", "&")
            .replace("&quot;", "\"")
            .replace("&#x27;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
        fields.push((k, v));
    }
    fields.push(("decision".into(), "approve".into()));
    let (st, loc, body) = go(
        &http,
        &mut cookie,
        http.post(format!("{}/oauth2/authorize", s.root))
            .form(&fields),
    )
    .await;
    assert!(
        (300..400).contains(&st) && loc.contains("code="),
        "consent of {name}: {st} {loc} {body}"
    );
    let code = loc
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("code="))
        .unwrap();
    let code = percent_decode(code);
    let resp = http
        .post(format!("{}/oauth2/token", s.root))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", &client),
            ("code_verifier", &verifier),
        ])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "token for {name}: {body}");
    body["access_token"].as_str().unwrap().to_string()
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn pct(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn between(text: &str, before: &str, after: &str) -> String {
    let start = text
        .find(before)
        .unwrap_or_else(|| panic!("{before:?} not in {text}"))
        + before.len();
    let end = text[start..].find(after).unwrap() + start;
    text[start..end].to_string()
}

/// The current TOTP code, computed by totp-rs (not by carevault).
fn totp_now(key_b32: &str) -> String {
    let bytes = totp_rs::Secret::Encoded(key_b32.to_string())
        .to_bytes()
        .unwrap();
    totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, bytes)
        .unwrap()
        .generate_current()
        .unwrap()
}

/// Sends a GET with `token`.
pub async fn get_as(s: &Server, token: &str, path: &str) -> (u16, Value) {
    let (st, _, body) = send(s.http.get(s.url(path)).bearer_auth(token)).await;
    (st, body)
}

/// Creates a resource with the server's system token and returns its id.
pub async fn make(s: &Server, v: Value) -> String {
    let t = v["resourceType"].as_str().unwrap().to_string();
    let (st, _, body) = send(s.post(&t, &v)).await;
    assert_eq!(st, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// The world of the leak tests: practitioner D with a relationship (an Encounter) to patient R,
/// none with patient S.
pub struct Clinic {
    pub practitioner: String,
    pub related: String,
    pub stranger: String,
    pub obs_related: String,
    pub obs_stranger: String,
}

pub async fn clinic(s: &Server) -> Clinic {
    let practitioner = make(
        s,
        json!({"resourceType": "Practitioner", "name": [{"family": "House"}]}),
    )
    .await;
    let related = make(
        s,
        json!({"resourceType": "Patient", "name": [{"family": "Related"}], "birthDate": "1980-01-01"}),
    )
    .await;
    let stranger = make(
        s,
        json!({"resourceType": "Patient", "name": [{"family": "Stranger"}], "birthDate": "1981-02-02"}),
    )
    .await;
    let now = time::OffsetDateTime::now_utc();
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    make(
        s,
        json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{related}")},
            "participant": [{"individual": {"reference": format!("Practitioner/{practitioner}")}}],
            "period": {"start": fmt(now - time::Duration::days(1)), "end": fmt(now - time::Duration::hours(1))}}),
    )
    .await;
    let obs = |p: &str| {
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": format!("Patient/{p}")},
            "performer": [{"reference": format!("Practitioner/{practitioner}")}],
            "valueQuantity": {"value": 72, "unit": "/min"}})
    };
    let obs_related = make(s, obs(&related)).await;
    let obs_stranger = make(s, obs(&stranger)).await;
    Clinic {
        practitioner,
        related,
        stranger,
        obs_related,
        obs_stranger,
    }
}

/// The body without what differs between any two answers: the request id in diagnostics and
/// the Bundle id and time.
fn normalised(mut v: Value, swap: &[(&str, &str)]) -> String {
    if let Some(o) = v.as_object_mut() {
        o.remove("id");
        o.remove("meta");
    }
    let mut text = v.to_string();
    for (a, b) in swap {
        text = text.replace(a, b);
    }
    text
}

fn ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clinician_without_relationship_learns_nothing() {
    let s = Server::start().await;
    let c = clinic(&s).await;
    let doc = user_token(
        &s,
        "drhouse",
        "physician",
        Some(&format!("Practitioner/{}", c.practitioner)),
        "user/*.cruds",
    )
    .await;
    // With the relationship: the chart is there.
    let (st, body) = get_as(&s, &doc, &format!("Observation/{}", c.obs_related)).await;
    assert_eq!(st, 200, "{body}");

    // Existing but unrelated vs never existed: the same status and body (up to the id asked for).
    let missing = "no-such-observation-0000";
    let (st1, b1) = get_as(&s, &doc, &format!("Observation/{}", c.obs_stranger)).await;
    let (st2, b2) = get_as(&s, &doc, &format!("Observation/{missing}")).await;
    assert_eq!((st1, st2), (404, 404));
    assert_eq!(
        normalised(b1, &[(&c.obs_stranger, "X")]),
        normalised(b2, &[(missing, "X")])
    );
    // The same for vread and instance history.
    let (st1, b1) = get_as(
        &s,
        &doc,
        &format!("Observation/{}/_history/1", c.obs_stranger),
    )
    .await;
    let (st2, b2) = get_as(&s, &doc, &format!("Observation/{missing}/_history/1")).await;
    assert_eq!((st1, st2), (404, 404));
    assert_eq!(
        normalised(b1, &[(&c.obs_stranger, "X")]),
        normalised(b2, &[(missing, "X")])
    );
    let (st1, b1) = get_as(
        &s,
        &doc,
        &format!("Observation/{}/_history", c.obs_stranger),
    )
    .await;
    let (st2, b2) = get_as(&s, &doc, &format!("Observation/{missing}/_history")).await;
    assert_eq!((st1, st2), (404, 404));
    assert_eq!(
        normalised(b1, &[(&c.obs_stranger, "X")]),
        normalised(b2, &[(missing, "X")])
    );

    // Searches: the stranger's data matches nothing, and counts say so.
    let (st, b) = get_as(
        &s,
        &doc,
        &format!("Observation?subject=Patient/{}", c.stranger),
    )
    .await;
    assert_eq!(st, 200);
    assert!(ids(&b).is_empty(), "{b}");
    assert_eq!(b["total"], 0);
    let (_, b) = get_as(&s, &doc, "Observation?_summary=count").await;
    assert_eq!(
        b["total"], 1,
        "only the related patient's observation counts: {b}"
    );
    let (_, b) = get_as(&s, &doc, "Observation").await;
    assert_eq!(ids(&b), vec![c.obs_related.clone()]);
    assert!(
        b["link"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["relation"] != "next")
    );

    // Patient search (the demographics directory) finds both, but _revinclude brings only the
    // related chart.
    let (st, b) = get_as(&s, &doc, "Patient?_revinclude=Observation:subject").await;
    assert_eq!(st, 200, "{b}");
    let got = ids(&b);
    assert!(got.contains(&c.related) && got.contains(&c.stranger), "{b}");
    assert!(got.contains(&c.obs_related), "{b}");
    assert!(!got.contains(&c.obs_stranger), "{b}");
    // _include from the practitioner's observations: no foreign patient data comes along.
    let (_, b) = get_as(
        &s,
        &doc,
        &format!(
            "Observation?performer=Practitioner/{}&_include=Observation:subject",
            c.practitioner
        ),
    )
    .await;
    assert!(!ids(&b).contains(&c.obs_stranger), "{b}");
    // Chains and _has only match through visible resources.
    let (_, b) = get_as(&s, &doc, "Observation?subject:Patient.name=Stranger").await;
    assert!(ids(&b).is_empty(), "{b}");
    let (_, b) = get_as(&s, &doc, "Patient?_has:Observation:subject:code=8867-4").await;
    assert_eq!(ids(&b), vec![c.related.clone()], "{b}");
    let (_, b) = get_as(
        &s,
        &doc,
        &format!(
            "Practitioner?_has:Observation:performer:subject=Patient/{}",
            c.stranger
        ),
    )
    .await;
    assert!(ids(&b).is_empty(), "{b}");

    // Type history lists only the related chart's versions.
    let (st, b) = get_as(&s, &doc, "Observation/_history").await;
    assert_eq!(st, 200, "{b}");
    let h = ids(&b);
    assert!(
        h.contains(&c.obs_related) && !h.contains(&c.obs_stranger),
        "{b}"
    );

    // Conditional writes only see visible data: a conditional delete of the stranger's
    // observation deletes nothing and answers like a miss.
    let (st, _, _) = send(
        s.http
            .delete(s.url(&format!("Observation?_id={}", c.obs_stranger)))
            .bearer_auth(&doc),
    )
    .await;
    assert_eq!(st, 204);
    let (st, _, _) = send(s.get(&format!("Observation/{}", c.obs_stranger))).await;
    assert_eq!(st, 200, "the stranger's observation is still there");

    // Writing into the stranger's chart is refused.
    let (st, _, oo) = send(
        s.http
            .post(s.url("Observation"))
            .bearer_auth(&doc)
            .header("content-type", "application/fhir+json")
            .body(
                json!({"resourceType": "Observation", "status": "final",
                "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", c.stranger)}})
                .to_string(),
            ),
    )
    .await;
    assert_eq!(st, 403, "{oo}");
    assert_eq!(oo["issue"][0]["code"], "forbidden");

    // A whole type the role never reaches: 403, naming no patient.
    let (st, b) = get_as(&s, &doc, "Coverage").await;
    assert_eq!(st, 403, "{b}");
    assert_eq!(b["issue"][0]["code"], "forbidden");

    // The denial is an audit event with the decision's reason.
    let (_, events) = get_as(&s, &s.token, "AuditEvent?_count=200").await;
    let denied =
        events["entry"].as_array().unwrap().iter().any(|e| {
            e.to_string().contains("permission-denied") && e.to_string().contains("drhouse")
        });
    assert!(denied, "no permission-denied event for drhouse");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patient_cannot_reach_another_patient_by_any_route() {
    let s = Server::start().await;
    let c = clinic(&s).await;
    let me = user_token(
        &s,
        "pat1",
        "patient",
        Some(&format!("Patient/{}", c.related)),
        "patient/*.rs",
    )
    .await;
    let other = &c.stranger;
    // My own record is there.
    let (st, _) = get_as(&s, &me, &format!("Patient/{}", c.related)).await;
    assert_eq!(st, 200);
    let (st, b) = get_as(&s, &me, &format!("Observation/{}", c.obs_related)).await;
    assert_eq!(st, 200, "{b}");
    // The other patient: read, vread, history are 404s; searches return nothing.
    for path in [
        format!("Patient/{other}"),
        format!("Patient/{other}/_history/1"),
        format!("Patient/{other}/_history"),
        format!("Observation/{}", c.obs_stranger),
    ] {
        let (st, b) = get_as(&s, &me, &path).await;
        assert_eq!(st, 404, "{path}: {b}");
    }
    for path in [
        format!("Patient?_id={other}"),
        "Patient?name=Stranger".to_string(),
        format!("Observation?subject=Patient/{other}"),
        format!("Patient/{other}/Observation"),
        "Observation?_include=Observation:subject".to_string(),
        "Patient?_revinclude=Observation:subject".to_string(),
        "Observation?subject:Patient.name=Stranger".to_string(),
        "Patient?_has:Observation:subject:code=8867-4".to_string(),
        "_history".to_string(),
        "Observation/_history".to_string(),
    ] {
        let (st, b) = get_as(&s, &me, &path).await;
        assert!(st == 200 || st == 403, "{path}: {st} {b}");
        // The links echo the query the caller sent; what must not appear is in the entries.
        let text = b["entry"].to_string();
        assert!(
            !text.contains(other.as_str())
                && !text.contains(&c.obs_stranger)
                && !text.contains("Stranger"),
            "{path} leaked the other patient: {b}"
        );
    }
    let (_, b) = get_as(&s, &me, "Observation?_summary=count").await;
    assert_eq!(b["total"], 1, "{b}");
    // A batch reaches nothing more.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{other}")}},
        {"request": {"method": "GET", "url": format!("Observation?subject=Patient/{other}")}},
        {"request": {"method": "GET", "url": format!("Observation/{}", c.obs_related)}}
    ]});
    let (st, _, b) = send(
        s.http
            .post(s.url(""))
            .bearer_auth(&me)
            .header("content-type", "application/fhir+json")
            .body(batch.to_string()),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert!(
        b["entry"][0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("404"),
        "{b}"
    );
    assert!(
        b["entry"][2]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("200"),
        "{b}"
    );
    assert!(
        !b.to_string().contains(other.as_str())
            || b["entry"][0]["response"]["outcome"]
                .to_string()
                .contains(other.as_str()),
        "{b}"
    );
    assert!(!b.to_string().contains("Stranger"), "{b}");
    assert!(!b.to_string().contains(&c.obs_stranger), "{b}");
}
