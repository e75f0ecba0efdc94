//! Browser sign-in against the real server: the first admin enrols TOTP (codes computed with the
//! independent `totp-rs` crate), cookie attributes, CSRF rejections, one failure message,
//! replayed codes, recovery codes, lockout lifted by `user unlock`, and a disabled account's
//! session ending; plus the `user` and `training` commands.

use crate::harness::{Server, cli};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const FAILED: &str = "Sign-in failed. Check your user name, password and code";

/// A browser: no automatic redirects, one cookie.
struct Browser {
    http: reqwest::Client,
    root: String,
    cookie: Option<String>,
}

struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn set_cookie(&self) -> Option<String> {
        self.headers
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

impl Browser {
    fn new(s: &Server) -> Browser {
        let cert = std::fs::read(s.data().join("tls/cert.pem")).unwrap();
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&cert).unwrap()])
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Browser {
            http,
            root: s.root.clone(),
            cookie: None,
        }
    }

    async fn finish(&mut self, req: reqwest::RequestBuilder) -> Page {
        let req = match &self.cookie {
            Some(c) => req.header("cookie", c.as_str()),
            None => req,
        };
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap();
        if let Some(sc) = headers.get("set-cookie").and_then(|v| v.to_str().ok()) {
            let pair = sc.split(';').next().unwrap().trim().to_string();
            if sc.contains("Max-Age=0") {
                self.cookie = None;
            } else {
                self.cookie = Some(pair);
            }
        }
        Page {
            status,
            headers,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(format!("{}{path}", self.root));
        self.finish(req).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let req = self.http.post(format!("{}{path}", self.root)).form(form);
        self.finish(req).await
    }

    /// Opens the sign-in page and posts the form.
    async fn sign_in(&mut self, user: &str, password: &str, otp: &str) -> Page {
        let page = self.get("/login").await;
        let csrf = csrf_of(&page.body);
        self.post(
            "/login",
            &[
                ("csrf", &csrf),
                ("username", user),
                ("password", password),
                ("otp", otp),
            ],
        )
        .await
    }

    async fn signed_in_as(&mut self) -> Option<String> {
        let page = self.get("/login").await;
        let start = page.body.find("signed in as <strong>")? + "signed in as <strong>".len();
        let end = page.body[start..].find("</strong>")? + start;
        Some(page.body[start..end].to_string())
    }
}

fn between<'a>(text: &'a str, before: &str, after: &str) -> &'a str {
    let start = text
        .find(before)
        .unwrap_or_else(|| panic!("{before:?} not in {text}"))
        + before.len();
    let end = text[start..].find(after).unwrap() + start;
    &text[start..end]
}

fn csrf_of(html: &str) -> String {
    between(html, "name=\"csrf\" value=\"", "\"").to_string()
}

/// The current code of a base32 key, computed by totp-rs (not by carevault).
fn totp_now(key_b32: &str) -> String {
    let bytes = totp_rs::Secret::Encoded(key_b32.to_string())
        .to_bytes()
        .unwrap();
    let t = totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, bytes).unwrap();
    t.generate_current().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn first_admin_enrols_totp_then_signs_in_and_out() {
    let s = Server::start().await;
    let admin_pw = std::fs::read_to_string(s.data().join("admin-password")).unwrap();
    let admin_pw = admin_pw.trim();
    let mut b = Browser::new(&s);

    // The form, its headers and the session cookie's attributes.
    let page = b.get("/login").await;
    assert_eq!(page.status, 200);
    for field in [
        "name=\"username\"",
        "name=\"password\"",
        "name=\"otp\"",
        "name=\"csrf\"",
    ] {
        assert!(page.body.contains(field), "{field}");
    }
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert_eq!(page.headers["cache-control"], "no-store");
    let cookie = page.set_cookie().unwrap();
    assert!(cookie.starts_with("__Host-carevault_session="), "{cookie}");
    for attr in ["; Path=/", "; Secure", "; HttpOnly", "; SameSite=Strict"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    assert!(
        !cookie.contains("Domain") && !cookie.contains("Max-Age"),
        "{cookie}"
    );
    assert!(!page.body.contains("style=") && !page.body.contains("<script"));
    let css = b.get("/login/style.css").await;
    assert_eq!(css.status, 200);
    assert!(
        css.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    let csrf = csrf_of(&page.body);

    // CSRF: missing, wrong, or a token without its session cookie are all refused.
    let form = |csrf: &'static str| {
        vec![
            ("csrf", csrf),
            ("username", "admin"),
            ("password", "unused"),
            ("otp", ""),
        ]
    };
    assert_eq!(
        b.post("/login", &form("")[1..]).await.status,
        403,
        "no csrf field"
    );
    assert_eq!(b.post("/login", &form("wrong")).await.status, 403);
    let mut stranger = Browser::new(&s);
    let stolen = [
        ("csrf", csrf.as_str()),
        ("username", "admin"),
        ("password", admin_pw),
        ("otp", ""),
    ];
    assert_eq!(stranger.post("/login", &stolen).await.status, 403);

    // One failure message for a wrong password and an unknown user, byte for byte.
    let wrong = b
        .post(
            "/login",
            &[
                ("csrf", &csrf),
                ("username", "admin"),
                ("password", "not the admin password"),
                ("otp", ""),
            ],
        )
        .await;
    let unknown = b
        .post(
            "/login",
            &[
                ("csrf", &csrf),
                ("username", "nobody"),
                ("password", admin_pw),
                ("otp", ""),
            ],
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains(FAILED), "{}", wrong.body);
    assert_eq!(unknown.status, wrong.status);
    assert_eq!(unknown.body, wrong.body);

    // The right password of an account without MFA leads to enrolment, in a new session...
    let before = b.cookie.clone();
    let ok = b
        .post(
            "/login",
            &[
                ("csrf", &csrf),
                ("username", "admin"),
                ("password", admin_pw),
                ("otp", ""),
            ],
        )
        .await;
    assert_eq!(ok.status, 303);
    assert_eq!(ok.location(), "/login/mfa");
    assert_ne!(b.cookie, before, "the session id changes at sign-in");
    // ...and grants nothing else until enrolled.
    assert_eq!(b.signed_in_as().await, None);
    let mfa = b.get("/login/mfa").await;
    assert_eq!(mfa.status, 200);
    let key = between(&mfa.body, "Key: <code>", "</code>").to_string();
    assert!(mfa.body.contains("otpauth://totp/carevault:admin?secret="));
    assert!(mfa.body.contains("src=\"/login/mfa/qr.svg\""));
    let qr = b.get("/login/mfa/qr.svg").await;
    assert_eq!(qr.status, 200);
    assert_eq!(qr.headers["content-type"], "image/svg+xml");
    assert!(qr.body.contains("<svg"));
    // No QR for a browser that is not enrolling.
    assert_eq!(Browser::new(&s).get("/login/mfa/qr.svg").await.status, 404);

    let mfa_csrf = csrf_of(&mfa.body);
    assert_eq!(
        b.post("/login/mfa", &[("csrf", "x"), ("otp", "123456")])
            .await
            .status,
        403
    );
    let code = totp_now(&key);
    let wrong_code = if code == "000000" { "000001" } else { "000000" };
    let bad = b
        .post("/login/mfa", &[("csrf", &mfa_csrf), ("otp", wrong_code)])
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("does not match"));
    let done = b
        .post("/login/mfa", &[("csrf", &mfa_csrf), ("otp", &code)])
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    let recovery: Vec<String> = done
        .body
        .split("<li>")
        .skip(1)
        .map(|x| x.split("</li>").next().unwrap().to_string())
        .collect();
    assert_eq!(recovery.len(), 10);
    assert_eq!(b.signed_in_as().await.as_deref(), Some("admin"));

    // Sign-out needs the session's CSRF token.
    let home = b.get("/login").await;
    let session_csrf = csrf_of(&home.body);
    assert_eq!(b.post("/logout", &[("csrf", "nope")]).await.status, 403);
    assert_eq!(b.signed_in_as().await.as_deref(), Some("admin"));
    let old_cookie = b.cookie.clone();
    let out = b.post("/logout", &[("csrf", &session_csrf)]).await;
    assert_eq!(out.status, 303);
    assert!(out.set_cookie().unwrap().contains("Max-Age=0"));
    b.cookie = old_cookie;
    assert_eq!(b.signed_in_as().await, None, "the old cookie is dead");

    // The code used for enrolment cannot be used again; a recovery code works, once.
    let replay = b.sign_in("admin", admin_pw, &code).await;
    assert_eq!(replay.status, 401);
    assert_eq!(
        b.sign_in("admin", admin_pw, "").await.status,
        401,
        "a code is required now"
    );
    let rc = b.sign_in("admin", admin_pw, &recovery[0]).await;
    assert_eq!(rc.status, 303);
    assert_eq!(rc.location(), "/login");
    assert_eq!(b.signed_in_as().await.as_deref(), Some("admin"));
    let mut other = Browser::new(&s);
    assert_eq!(
        other.sign_in("admin", admin_pw, &recovery[0]).await.status,
        401
    );

    // return_to: only same-origin authorize/console paths are followed.
    let mut c = Browser::new(&s);
    let page = c.get("/login?return_to=https://evil.example/").await;
    assert!(!page.body.contains("evil.example"));
    let page = c.get("/login?return_to=/oauth2/authorize%3Fx%3D1").await;
    assert!(
        page.body
            .contains("name=\"return_to\" value=\"/oauth2/authorize?x=1\"")
    );

    // The audit trail has the sign-ins, the failures and the sign-out.
    let log = s
        .get("AuditEvent?_count=200")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for code in ["110122", "110123"] {
        assert!(log.contains(code), "no DCM {code} event");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lockout_unlock_disable_and_the_user_commands() {
    let s = Server::start_with(&[
        ("CAREVAULT_IDENTITY_LOCKOUT_THRESHOLD", "3"),
        ("CAREVAULT_IDENTITY_ACCOUNT_FREE_FAILURES", "5"),
        ("CAREVAULT_IDENTITY_ADDRESS_FREE_FAILURES", "100"),
    ])
    .await;
    let data = s.data();
    let dir = s.dir.path();
    let pw_file = dir.join("nurse.pw");
    std::fs::write(&pw_file, "a long and unusual passphrase\n").unwrap();
    let totp_file = dir.join("nurse.totp");
    let rc_file = dir.join("nurse.codes");
    let (code, out, err) = cli(
        &data,
        &[
            "user",
            "add",
            "nurse1",
            "--role",
            "nurse",
            "--practitioner",
            "Practitioner/p1",
            "--password-file",
            pw_file.to_str().unwrap(),
            "--totp-secret-out",
            totp_file.to_str().unwrap(),
            "--recovery-codes-out",
            rc_file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(out.trim(), "nurse1");
    assert_eq!(mode(&totp_file), 0o600);
    assert_eq!(mode(&rc_file), 0o600);
    let uri = std::fs::read_to_string(&totp_file).unwrap();
    let key = between(&uri, "secret=", "&").to_string();
    let codes: Vec<String> = std::fs::read_to_string(&rc_file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(codes.len(), 10);

    // Refusals: a common password (exit 1, one sentence), an unknown role (usage, exit 2).
    let weak = dir.join("weak.pw");
    std::fs::write(&weak, "qwertyuiopasdfghjkl\n").unwrap();
    let (code, _, err) = cli(
        &data,
        &[
            "user",
            "add",
            "weakling",
            "--role",
            "nurse",
            "--password-file",
            weak.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("common or breached"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);
    let (code, _, err) = cli(
        &data,
        &[
            "user",
            "add",
            "x1",
            "--role",
            "doctor",
            "--password-file",
            pw_file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = cli(&data, &["user", "add", "x2", "--role", "nurse"]);
    assert_eq!(code, 2, "a password source is required");
    let (code, out, _) = cli(&data, &["user", "list", "--json"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "nurse1"], "nothing stored by a refusal");
    let nurse = &list[1];
    assert_eq!(nurse["mfa"], true);
    assert_eq!(nurse["roles"], serde_json::json!(["nurse"]));
    assert_eq!(nurse["practitioner"], "Practitioner/p1");

    // Signed in with the TOTP key from the file (code by totp-rs).
    let pw = "a long and unusual passphrase";
    let mut a = Browser::new(&s);
    let page = a.sign_in("nurse1", pw, &totp_now(&key)).await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(a.signed_in_as().await.as_deref(), Some("nurse1"));

    // Three failures lock the account; then even the right factors get the same failure.
    let mut b = Browser::new(&s);
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let p = b.sign_in("nurse1", "wrong password, sorry", "").await;
        assert_eq!(p.status, 401);
        bodies.push(p.body);
    }
    let locked = b.sign_in("nurse1", pw, &codes[0]).await;
    assert_eq!(locked.status, 401);
    assert!(locked.body.contains(FAILED));
    let (_, out, _) = cli(&data, &["user", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[1]["locked"], true);
    let (code, out, err) = cli(&data, &["user", "unlock", "nurse1"]);
    assert_eq!(code, 0, "{out} {err}");
    let p = b.sign_in("nurse1", pw, &codes[0]).await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(b.signed_in_as().await.as_deref(), Some("nurse1"));

    // Disabling ends both live sessions (within the one-second account cache) and sign-in.
    let (code, _, _) = cli(&data, &["user", "disable", "nurse1"]);
    assert_eq!(code, 0);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(a.signed_in_as().await, None);
    assert_eq!(b.signed_in_as().await, None);
    let p = Browser::new(&s).sign_in("nurse1", pw, &codes[1]).await;
    assert_eq!(p.status, 401);
    let (code, _, _) = cli(&data, &["user", "enable", "nurse1"]);
    assert_eq!(code, 0);
    let mut c = Browser::new(&s);
    assert_eq!(c.sign_in("nurse1", pw, &codes[1]).await.status, 303);

    // Roles, password and MFA reset from the command line.
    let (code, out, _) = cli(
        &data,
        &["user", "roles", "nurse1", "--set", "nurse,registration"],
    );
    assert_eq!(code, 0);
    assert!(out.contains("nurse,registration"), "{out}");
    assert_eq!(
        c.signed_in_as().await,
        None,
        "a role change ends the session"
    );
    let new_pw = dir.join("new.pw");
    std::fs::write(&new_pw, "another long passphrase here\n").unwrap();
    let (code, _, _) = cli(
        &data,
        &[
            "user",
            "set-password",
            "nurse1",
            "--password-file",
            new_pw.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0);
    let (code, _, _) = cli(&data, &["user", "reset-mfa", "nurse1"]);
    assert_eq!(code, 0);
    let mut d = Browser::new(&s);
    let p = d
        .sign_in("nurse1", "another long passphrase here", "")
        .await;
    assert_eq!(p.status, 303);
    assert_eq!(p.location(), "/login/mfa", "enrols again after reset-mfa");
    let (code, _, err) = cli(&data, &["user", "disable", "ghost"]);
    assert_eq!(code, 1);
    assert!(err.contains("no user named"), "{err}");

    // Training records.
    let (code, _, err) = cli(
        &data,
        &[
            "training",
            "record",
            "nurse1",
            "--course",
            "privacy-2026",
            "--completed",
            "2026-01-15",
            "--expires",
            "2027-01-15",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = cli(
        &data,
        &[
            "training",
            "record",
            "nurse1",
            "--course",
            "privacy-2026",
            "--completed",
            "15/01/2026",
            "--expires",
            "2027-01-15",
        ],
    );
    assert_eq!(code, 2);
    let (code, out, _) = cli(&data, &["training", "list", "nurse1", "--json"]);
    assert_eq!(code, 0);
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        t,
        serde_json::json!([{"user": "nurse1", "course": "privacy-2026", "completed": "2026-01-15", "expires": "2027-01-15"}])
    );
    let (code, _, _) = cli(&data, &["training", "list", "ghost"]);
    assert_eq!(code, 1);
}
