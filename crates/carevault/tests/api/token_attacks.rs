//! Token attacks against the real server, each answered with the precise error and leaking
//! nothing: forged bearer tokens (`alg: none`, forged signature, HS256 key confusion, another
//! server's token, wrong issuer/audience), revoked tokens, PKCE missing/plain/wrong, redirect
//! URI mismatch, authorization-code reuse, refresh-token reuse, a disabled account, and
//! client assertions that are replayed (also after a server restart) or carry a wrong `aud`,
//! `exp`, `alg` or key.
//! Expiry with a controlled clock is in the auth crate's unit tests.

use crate::harness::{Server, cli, send};
use crate::smart::{Person, add_app, add_user, create_patient};
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn b64json(v: &Value) -> String {
    B64.encode(v.to_string())
}

/// RFC 6238 TOTP (SHA-1, 30 s, 6 digits), computed here from the RFC.
fn totp(secret_b32: &str, unix: u64) -> String {
    let mut bits: u64 = 0;
    let mut n = 0;
    let mut key = Vec::new();
    for c in secret_b32.trim_end_matches('=').chars() {
        let v = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
            .find(c.to_ascii_uppercase())
            .expect("base32") as u64;
        bits = (bits << 5) | v;
        n += 5;
        if n >= 8 {
            key.push((bits >> (n - 8)) as u8);
            n -= 8;
        }
    }
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &key);
    let mac = aws_lc_rs::hmac::sign(&k, &(unix / 30).to_be_bytes());
    let m = mac.as_ref();
    let off = (m[19] & 0x0f) as usize;
    let code = (u32::from_be_bytes([m[off], m[off + 1], m[off + 2], m[off + 3]]) & 0x7fff_ffff)
        % 1_000_000;
    format!("{code:06}")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let unescape = |s: &str| {
        s.replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    };
    let attr = |tag: &str, name: &str| {
        tag.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .map(unescape)
    };
    html.split("<input")
        .skip(1)
        .map(|t| t.split('>').next().unwrap_or(""))
        .filter(|t| attr(t, "type").as_deref() == Some("hidden"))
        .filter_map(|t| Some((attr(t, "name")?, attr(t, "value").unwrap_or_default())))
        .collect()
}

/// A browser without redirects that keeps cookies by hand.
struct Browser {
    http: reqwest::Client,
    cookies: Vec<(String, String)>,
    root: String,
}

struct Page {
    status: u16,
    location: Option<String>,
    body: String,
}

impl Browser {
    fn new(s: &Server) -> Self {
        let cert = std::fs::read(s.data().join("tls/cert.pem")).unwrap();
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&cert).unwrap()])
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            http,
            cookies: Vec::new(),
            root: s.root.clone(),
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let req = if cookie.is_empty() {
            req
        } else {
            req.header("cookie", cookie)
        };
        let resp = req.send().await.unwrap();
        for sc in resp.headers().get_all("set-cookie") {
            let first = sc.to_str().unwrap().split(';').next().unwrap();
            let (k, v) = first.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != k);
            if !v.is_empty() {
                self.cookies.push((k.to_string(), v.to_string()));
            }
        }
        Page {
            status: resp.status().as_u16(),
            location: resp
                .headers()
                .get("location")
                .map(|v| v.to_str().unwrap().to_string()),
            body: resp.text().await.unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.root)
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(self.url(path));
        self.send(req).await
    }

    async fn post(&mut self, path: &str, form: &[(String, String)]) -> Page {
        let req = self.http.post(self.url(path)).form(form);
        self.send(req).await
    }

    /// Signs in through the real /login form.
    async fn sign_in(&mut self, who: &Person) {
        let page = self.get("/login").await;
        assert_eq!(page.status, 200);
        let mut form = hidden_fields(&page.body);
        form.push(("username".into(), who.name.clone()));
        form.push(("password".into(), crate::smart::PASSWORD.into()));
        form.push(("otp".into(), totp(&who.totp_secret, now())));
        let r = self.post("/login", &form).await;
        assert_eq!(r.status, 303, "sign-in refused: {}", r.body);
    }
}

const VERIFIER: &str = "attack-verifier-0123456789-abcdefghijklmnopqrstuvwxyz";

fn challenge(verifier: &str) -> String {
    B64.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref())
}

fn query_of(url: &str) -> Vec<(String, String)> {
    let q = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.replace('+', " ");
    let bytes = b.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(&b[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

struct Launch {
    client: &'static str,
    redirect: &'static str,
    aud: String,
    scope: &'static str,
    method: Option<&'static str>,
    challenge: Option<String>,
}

impl Launch {
    fn url(&self) -> String {
        let mut q = vec![
            ("response_type", "code".to_string()),
            ("client_id", self.client.into()),
            ("redirect_uri", self.redirect.into()),
            ("scope", self.scope.into()),
            ("state", "st-123".into()),
            ("aud", self.aud.clone()),
        ];
        if let Some(c) = &self.challenge {
            q.push(("code_challenge", c.clone()));
        }
        if let Some(m) = self.method {
            q.push(("code_challenge_method", m.into()));
        }
        let enc: Vec<String> = q
            .iter()
            .map(|(k, v)| {
                let v: String = v
                    .bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect();
                format!("{k}={v}")
            })
            .collect();
        format!("/oauth2/authorize?{}", enc.join("&"))
    }
}

/// Approves `launch` on the consent page; returns the code.
async fn approve(b: &mut Browser, launch: &Launch) -> String {
    let page = b.get(&launch.url()).await;
    assert_eq!(
        page.status, 200,
        "consent page: {:?} {}",
        page.location, page.body
    );
    let mut form = hidden_fields(&page.body);
    form.push(("decision".into(), "approve".into()));
    let r = b.post("/oauth2/authorize", &form).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let loc = r.location.unwrap();
    assert!(loc.starts_with(launch.redirect), "{loc}");
    let q = query_of(&loc);
    assert_eq!(param(&q, "state"), Some("st-123"));
    param(&q, "code").expect("code").to_string()
}

async fn token_request(s: &Server, form: &[(&str, &str)]) -> (u16, Value) {
    let (st, _, body) = send(s.http.post(format!("{}/oauth2/token", s.root)).form(form)).await;
    (st, body)
}

async fn fhir_status(
    s: &Server,
    token: &str,
    path: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    send(s.http.get(s.url(path)).bearer_auth(token)).await
}

#[tokio::test]
async fn forged_and_revoked_bearer_tokens_are_refused() {
    let mut s = Server::start().await;
    let good = s.token.clone();
    let patient = create_patient(&s, "Forgery").await;
    let path = format!("Patient/{patient}");
    assert_eq!(fhir_status(&s, &good, &path).await.0, 200);
    let parts: Vec<&str> = good.split('.').collect();
    let header: Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
    let mut claims: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap().to_string();
    let expect_401 = |(status, headers, body): (u16, reqwest::header::HeaderMap, Value),
                      what: &str| {
        assert_eq!(status, 401, "{what}: {body}");
        let www = headers["www-authenticate"].to_str().unwrap().to_string();
        assert!(www.contains("invalid_token"), "{what}: {www}");
        assert!(!body.to_string().contains("Forgery"), "{what} leaked data");
        www
    };
    // alg: none, with and without a signature.
    for sig in ["", "AAAA"] {
        let t = format!(
            "{}.{}.{sig}",
            b64json(&json!({"alg": "none", "typ": "at+jwt", "kid": kid})),
            parts[1]
        );
        let www = expect_401(fhir_status(&s, &t, &path).await, "alg none");
        assert!(www.contains("unsupported algorithm"), "{www}");
    }
    // Forged signature: widen the scope and keep the old signature; flip a signature bit.
    claims["scope"] = json!("system/*.* user/*.*");
    let t = format!("{}.{}.{}", parts[0], b64json(&claims), parts[2]);
    let www = expect_401(fhir_status(&s, &t, &path).await, "tampered claims");
    assert!(www.contains("signature is invalid"), "{www}");
    let mut sig = B64.decode(parts[2]).unwrap();
    sig[5] ^= 0x40;
    let t = format!("{}.{}.{}", parts[0], parts[1], B64.encode(sig));
    expect_401(fhir_status(&s, &t, &path).await, "flipped signature");
    // Key confusion: HS256 keyed with the server's public key (JWK text, x coordinate).
    let (_, _, jwks) = send(s.http.get(format!("{}/oauth2/jwks", s.root))).await;
    let jwk = &jwks["keys"][0];
    for secret in [jwk.to_string(), jwk["x"].as_str().unwrap().to_string()] {
        let h = b64json(&json!({"alg": "HS256", "typ": "at+jwt", "kid": kid}));
        let input = format!("{h}.{}", parts[1]);
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
        let mac = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        let t = format!("{input}.{}", B64.encode(mac.as_ref()));
        let www = expect_401(fhir_status(&s, &t, &path).await, "HS256 confusion");
        assert!(www.contains("unsupported algorithm"), "{www}");
    }
    // Revoked (RFC 7009, by its own client): refused at once; revoking again is still 200.
    let other = s.token_for("revoker", "system/*.rs").await;
    assert_eq!(fhir_status(&s, &other, &path).await.0, 200);
    let secret = std::fs::read_to_string(s.dir.path().join("revoker.secret")).unwrap();
    for _ in 0..2 {
        let (st, _, _) = send(
            s.http
                .post(format!("{}/oauth2/revoke", s.root))
                .basic_auth("revoker", Some(secret.trim()))
                .form(&[("token", other.as_str())]),
        )
        .await;
        assert_eq!(st, 200);
    }
    let www = expect_401(fhir_status(&s, &other, &path).await, "revoked");
    assert!(www.contains("revoked"), "{www}");
    // Another client cannot revoke someone else's token (200, nothing happens).
    let (st, _, _) = send(
        s.http
            .post(format!("{}/oauth2/revoke", s.root))
            .basic_auth("revoker", Some(secret.trim()))
            .form(&[("token", good.as_str())]),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(fhir_status(&s, &good, &path).await.0, 200);
    // Wrong issuer and audience: the same signing key, but the server now answers on another
    // port, so a token minted for the old URL is for someone else.
    let dir = {
        s.stop();
        std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap())
    };
    let s2 = Server::spawn(dir, &[]);
    assert_ne!(s2.root, s.root);
    let www = expect_401(fhir_status(&s2, &good, &path).await, "other issuer");
    assert!(www.contains("another server"), "{www}");
}

/// Asserts an `invalid_grant` refusal (400) whose description contains `says`.
fn invalid_grant((st, body): (u16, Value), says: &str) {
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(description.contains(says), "{says:?}: {body}");
    assert!(body.get("access_token").is_none(), "{body}");
}

#[tokio::test]
async fn authorization_code_attacks() {
    let s = Server::start().await;
    let patient = create_patient(&s, "Pkce").await;
    let who = add_user(
        &s,
        "pat.attack",
        "patient",
        ("--patient", &format!("Patient/{patient}")),
    );
    let redirect = "https://app.example/cb";
    add_app(
        &s,
        "attack-app",
        "openid fhirUser launch/patient offline_access patient/*.rs",
        redirect,
        true,
    );
    let secret = add_app(
        &s,
        "other-app",
        "patient/*.rs",
        "https://other.example/cb",
        false,
    )
    .unwrap();
    let mut b = Browser::new(&s);
    let good = || Launch {
        client: "attack-app",
        redirect,
        aud: s.base.clone(),
        scope: "launch/patient offline_access patient/Patient.rs",
        method: Some("S256"),
        challenge: Some(challenge(VERIFIER)),
    };
    // Not signed in: to the login page, coming back to this very request.
    let page = b.get(&good().url()).await;
    assert_eq!(page.status, 303);
    assert!(
        page.location
            .as_deref()
            .unwrap()
            .starts_with("/login?return_to=%2Foauth2%2Fauthorize"),
        "{:?}",
        page.location
    );
    b.sign_in(&who).await;

    // Unknown client or unregistered redirect URI: an error page, never a redirect.
    for bad in [
        Launch {
            client: "nobody",
            ..good()
        },
        Launch {
            redirect: "https://evil.example/cb",
            ..good()
        },
        Launch {
            redirect: "https://app.example/cb/",
            ..good()
        },
    ] {
        let page = b.get(&bad.url()).await;
        assert_eq!(page.status, 400, "{}", page.body);
        assert!(page.location.is_none(), "redirected to {:?}", page.location);
        assert!(!page.body.contains("evil.example"));
    }
    // PKCE missing or plain, wrong audience: back to the app with the error and its state.
    for (bad, want) in [
        (
            Launch {
                method: None,
                challenge: None,
                ..good()
            },
            "PKCE is required",
        ),
        (
            Launch {
                method: None,
                ..good()
            },
            "PKCE is required",
        ),
        (
            Launch {
                method: Some("plain"),
                challenge: Some(VERIFIER.into()),
                ..good()
            },
            "plain",
        ),
        (
            Launch {
                aud: "https://elsewhere.example/fhir".into(),
                ..good()
            },
            "aud",
        ),
    ] {
        let page = b.get(&bad.url()).await;
        assert_eq!(page.status, 303, "{}", page.body);
        let loc = page.location.unwrap();
        assert!(loc.starts_with(redirect), "{loc}");
        let q = query_of(&loc);
        assert_eq!(param(&q, "error"), Some("invalid_request"), "{loc}");
        assert!(
            param(&q, "error_description").unwrap().contains(want),
            "{loc}"
        );
        assert_eq!(param(&q, "state"), Some("st-123"));
        assert!(param(&q, "code").is_none());
    }
    // Deny: access_denied.
    let page = b.get(&good().url()).await;
    let mut form = hidden_fields(&page.body);
    form.push(("decision".into(), "deny".into()));
    let r = b.post("/oauth2/authorize", &form).await;
    assert_eq!(
        param(&query_of(&r.location.unwrap()), "error"),
        Some("access_denied")
    );
    // A forged consent POST (no CSRF token) is refused.
    let forged: Vec<(String, String)> = hidden_fields(&page.body)
        .into_iter()
        .filter(|(k, _)| k != "csrf")
        .chain([("decision".to_string(), "approve".to_string())])
        .collect();
    let r = b.post("/oauth2/authorize", &forged).await;
    assert_eq!(r.status, 403);
    assert!(r.location.is_none());

    let base = |code: &str| {
        vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.to_string()),
            ("redirect_uri", redirect.to_string()),
            ("client_id", "attack-app".to_string()),
        ]
    };
    // The redemption of `code` with the right verifier.
    let redeem = |code: &str| {
        let mut form = base(code);
        form.push(("code_verifier", VERIFIER.into()));
        form
    };
    let post = |form: Vec<(&'static str, String)>| {
        let s = &s;
        async move {
            let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            token_request(s, &f).await
        }
    };
    let refresh_with = |r: String| {
        let s = &s;
        async move {
            token_request(
                s,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &r),
                    ("client_id", "attack-app"),
                ],
            )
            .await
        }
    };
    // Missing verifier; wrong verifier; redirect mismatch: invalid_grant, and the code is spent.
    let code = approve(&mut b, &good()).await;
    invalid_grant(post(base(&code)).await, "code_verifier is required");
    invalid_grant(post(redeem(&code)).await, "");
    let code = approve(&mut b, &good()).await;
    let mut wrong = base(&code);
    wrong.push(("code_verifier", format!("{VERIFIER}x")));
    invalid_grant(post(wrong).await, "does not match the code_challenge");
    let code = approve(&mut b, &good()).await;
    let mut mismatch = base(&code);
    mismatch[2].1 = "https://app.example/other".into();
    mismatch.push(("code_verifier", VERIFIER.into()));
    invalid_grant(post(mismatch).await, "redirect_uri");
    // Another client presenting this app's code.
    let code = approve(&mut b, &good()).await;
    let (st, _, body) = send(
        s.http
            .post(format!("{}/oauth2/token", s.root))
            .basic_auth("other-app", Some(&secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", redirect),
                ("code_verifier", VERIFIER),
            ]),
    )
    .await;
    invalid_grant((st, body), "");

    // A good redemption, then the same code again: refused, and its tokens are revoked.
    let code = approve(&mut b, &good()).await;
    let (st, tokens) = post(redeem(&code)).await;
    assert_eq!(st, 200, "{tokens}");
    assert_eq!(tokens["patient"], json!(patient));
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    let path = format!("Patient/{patient}");
    assert_eq!(fhir_status(&s, &access, &path).await.0, 200);
    invalid_grant(post(redeem(&code)).await, "already used");
    assert_eq!(
        fhir_status(&s, &access, &path).await.0,
        401,
        "code reuse revokes the access token"
    );
    invalid_grant(refresh_with(refresh).await, "");

    // Refresh reuse: r1 -> r2; r1 again revokes the family (r2 and its access token too).
    let code = approve(&mut b, &good()).await;
    let (_, t1) = post(redeem(&code)).await;
    let r1 = t1["refresh_token"].as_str().unwrap().to_string();
    let (st, t2) = refresh_with(r1.clone()).await;
    assert_eq!(st, 200, "{t2}");
    let r2 = t2["refresh_token"].as_str().unwrap().to_string();
    let a2 = t2["access_token"].as_str().unwrap().to_string();
    assert_ne!(r1, r2);
    // Bound to its client: another client cannot use it (and does not burn it).
    let (st, _, body) = send(
        s.http
            .post(format!("{}/oauth2/token", s.root))
            .basic_auth("other-app", Some(&secret))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", &r2)]),
    )
    .await;
    invalid_grant((st, body), "");
    assert_eq!(fhir_status(&s, &a2, &path).await.0, 200);
    invalid_grant(refresh_with(r1).await, "already used");
    let (st, _) = refresh_with(r2).await;
    assert_eq!(st, 400, "the family is revoked");
    let (st, h, _) = fhir_status(&s, &a2, &path).await;
    assert_eq!(st, 401);
    assert!(h["www-authenticate"].to_str().unwrap().contains("revoked"));

    // A disabled account: its live access token and refresh token stop working.
    let code = approve(&mut b, &good()).await;
    let (_, t) = post(redeem(&code)).await;
    let access = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(fhir_status(&s, &access, &path).await.0, 200);
    let (code, out, err) = cli(&s.data(), &["user", "disable", "pat.attack"]);
    assert_eq!(code, 0, "{out} {err}");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (st, h, _) = fhir_status(&s, &access, &path).await;
    assert_eq!(st, 401);
    assert!(h["www-authenticate"].to_str().unwrap().contains("disabled"));
    invalid_grant(
        refresh_with(t["refresh_token"].as_str().unwrap().to_string()).await,
        "",
    );
}

/// Signs an ES384 client assertion with `key`, with `header` and `claims` as given.
fn assertion(key: &EcdsaKeyPair, header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64json(header), b64json(claims));
    let sig = key
        .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
        .unwrap();
    format!("{input}.{}", B64.encode(sig.as_ref()))
}

/// A fresh ES384 key pair, and the JWK set of its public key (kid `k1`).
fn es384_key() -> (EcdsaKeyPair, Value) {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = key.public_key().as_ref();
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-384", "kid": "k1", "alg": "ES384",
        "x": B64.encode(&point[1..49]), "y": B64.encode(&point[49..97])}]});
    (key, jwks)
}

/// Registers Backend Services client `name` (scope `system/Observation.rs`) with a new ES384
/// key and returns the key.
fn backend_client(s: &Server, name: &str) -> EcdsaKeyPair {
    let (key, jwks) = es384_key();
    let file = s.dir.path().join(format!("{name}.jwks"));
    std::fs::write(&file, jwks.to_string()).unwrap();
    let (code, out, err) = cli(
        &s.data(),
        &[
            "client",
            "add",
            name,
            "--scope",
            "system/Observation.rs",
            "--jwks",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out} {err}");
    key
}

/// The header of the assertions signed with [`backend_client`]'s key.
fn assertion_header() -> Value {
    json!({"alg": "ES384", "typ": "JWT", "kid": "k1"})
}

/// Assertion claims of `client` for the token endpoint of `s`, expiring `exp_in` seconds from
/// now.
fn assertion_claims(s: &Server, client: &str, jti: &str, exp_in: i64) -> Value {
    json!({"iss": client, "sub": client, "aud": format!("{}/oauth2/token", s.root), "jti": jti,
        "exp": now() as i64 + exp_in, "iat": now()})
}

/// A client_credentials request authenticated by the client assertion `a`.
async fn assertion_grant(s: &Server, a: &str) -> (u16, Value) {
    token_request(
        s,
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/Observation.rs"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", a),
        ],
    )
    .await
}

/// Asserts an `invalid_client` refusal whose description contains `want`, with no token.
fn refused_assertion((st, body): (u16, Value), want: &str) {
    assert_eq!(st, 401, "{want}: {body}");
    assert_eq!(body["error"], "invalid_client", "{body}");
    assert!(
        body["error_description"].as_str().unwrap().contains(want),
        "{want}: {body}"
    );
    assert!(body.get("access_token").is_none());
}

#[tokio::test]
async fn client_assertion_attacks() {
    let s = Server::start().await;
    let key = backend_client(&s, "lab-backend");
    let (other, _) = es384_key();
    let header = assertion_header();
    let claims = |jti: &str, exp_in: i64| assertion_claims(&s, "lab-backend", jti, exp_in);
    let request = |a: String| {
        let s = &s;
        async move { assertion_grant(s, &a).await }
    };
    let refused = refused_assertion;
    let good = assertion(&key, &header, &claims("jti-1", 240));
    let (st, body) = request(good.clone()).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["scope"], "system/Observation.rs");
    // The very same assertion again: jti replay.
    refused(request(good).await, "jti was already used");
    // Another assertion reusing the jti.
    refused(
        request(assertion(&key, &header, &claims("jti-1", 200))).await,
        "jti was already used",
    );
    // Wrong audience (the FHIR base, not the token endpoint).
    let mut c = claims("jti-2", 240);
    c["aud"] = json!(s.base);
    refused(
        request(assertion(&key, &header, &c)).await,
        "aud must be the token endpoint",
    );
    // exp too far ahead (10 minutes), expired, missing.
    refused(
        request(assertion(&key, &header, &claims("jti-3", 600))).await,
        "five minutes",
    );
    refused(
        request(assertion(&key, &header, &claims("jti-4", -120))).await,
        "expired",
    );
    let mut c = claims("jti-5", 240);
    c.as_object_mut().unwrap().remove("exp");
    refused(request(assertion(&key, &header, &c)).await, "expired");
    // iss != sub; no jti.
    let mut c = claims("jti-6", 240);
    c["sub"] = json!("someone-else");
    refused(request(assertion(&key, &header, &c)).await, "iss and sub");
    let mut c = claims("x", 240);
    c.as_object_mut().unwrap().remove("jti");
    refused(request(assertion(&key, &header, &c)).await, "jti");
    // Algorithms other than RS384/ES384: none, HS256, RS256, ES256 (with the same ES signature).
    for alg in ["none", "HS256", "RS256", "ES256", "PS384"] {
        let h = json!({"alg": alg, "typ": "JWT", "kid": "k1"});
        refused(
            request(assertion(&key, &h, &claims(&format!("alg-{alg}"), 240))).await,
            "RS384 or ES384",
        );
    }
    // An RS384 header on an EC key (type confusion), an unknown kid, another key.
    let h = json!({"alg": "RS384", "typ": "JWT", "kid": "k1"});
    refused(
        request(assertion(&key, &h, &claims("jti-7", 240))).await,
        "client authentication failed",
    );
    let h = json!({"alg": "ES384", "typ": "JWT", "kid": "k2"});
    refused(
        request(assertion(&key, &h, &claims("jti-8", 240))).await,
        "client authentication failed",
    );
    refused(
        request(assertion(&other, &header, &claims("jti-9", 240))).await,
        "client authentication failed",
    );
    // Unknown client: the same answer as a bad signature.
    let mut c = claims("jti-10", 240);
    c["iss"] = json!("ghost");
    c["sub"] = json!("ghost");
    refused(
        request(assertion(&key, &header, &c)).await,
        "client authentication failed",
    );
    // A fresh, correct assertion still works after all that.
    let (st, body) = request(assertion(&key, &header, &claims("jti-11", 240))).await;
    assert_eq!(st, 200, "{body}");
}

#[tokio::test]
async fn a_client_assertion_replayed_after_a_restart_is_refused() {
    // A fixed port, so the restarted server has the same token endpoint (the assertion's aud).
    let listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let mut s = Server::spawn_on(tempfile::tempdir().unwrap(), &[], &listen);
    let key = backend_client(&s, "restart-backend");
    let header = assertion_header();
    let used = assertion(
        &key,
        &header,
        &assertion_claims(&s, "restart-backend", "before-restart", 240),
    );
    let (st, body) = assertion_grant(&s, &used).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(s.stop(), 0);
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    let s2 = Server::spawn_on(dir, &[], &listen);
    assert_eq!(
        s2.root, s.root,
        "the restarted server has another token endpoint"
    );
    // The very same assertion, to the restarted server: its jti is remembered.
    refused_assertion(assertion_grant(&s2, &used).await, "jti was already used");
    // A new assertion of the same client is served.
    let fresh = assertion(
        &key,
        &header,
        &assertion_claims(&s2, "restart-backend", "after-restart", 240),
    );
    let (st, body) = assertion_grant(&s2, &fresh).await;
    assert_eq!(st, 200, "{body}");
}
