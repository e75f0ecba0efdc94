//! Browser sign-in: the login form (`username`, `password`, `otp`), TOTP enrolment at first
//! sign-in with a QR code, sign-out, and the session cookie. Other pages (the OAuth consent page,
//! the console) use [`session_user`], [`csrf_field`], [`check_csrf`] and [`login_redirect`].

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use carevault_audit::event::{EventKind, Outcome, UserRef};
use carevault_identity::{Account, SignInError, Stage};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::App;

/// The session cookie's name: the `__Host-` prefix makes browsers insist on Secure, Path=/ and
/// no Domain.
pub(crate) const SESSION_COOKIE: &str = "__Host-carevault_session";

/// The one message every failed sign-in gets.
pub(crate) const SIGN_IN_FAILED: &str = "Sign-in failed. Check your user name, password and code; after several failures wait a little before trying again.";

/// The signed-in, MFA-complete, active account of a browser request.
#[derive(Debug, Clone)]
pub(crate) struct SessionUser {
    /// The account as it is now (roles, links).
    pub account: Account,
    /// This session's CSRF token.
    pub csrf: String,
}

/// The signed-in account of a browser request: a live, complete session whose account is
/// enabled, has MFA, and has not changed credentials, roles or status since the session began.
/// Restarts the session's idle timer. A session whose account no longer qualifies is ended.
pub(crate) fn session_user(app: &App, headers: &HeaderMap) -> Option<SessionUser> {
    let id = session_cookie(headers)?;
    let session = app.sessions.touch(&id)?;
    if session.stage != Stage::Complete {
        return None;
    }
    let name = session.user.as_deref()?;
    match app.accounts.active(name) {
        Ok(Some(account)) if account.mfa_enrolled && account.session_epoch == session.epoch => {
            Some(SessionUser {
                account,
                csrf: session.csrf,
            })
        }
        Ok(_) => {
            app.sessions.remove(&id);
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "account lookup failed");
            None
        }
    }
}

/// The hidden form field that carries this session's CSRF token.
pub(crate) fn csrf_field(user: &SessionUser) -> String {
    hidden_csrf(&user.csrf)
}

/// Whether `submitted` (the form's `csrf` value) is this session's token (constant time).
pub(crate) fn check_csrf(user: &SessionUser, submitted: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    match submitted {
        Some(s) if s.len() == user.csrf.len() && !s.is_empty() => {
            s.as_bytes().ct_eq(user.csrf.as_bytes()).into()
        }
        _ => false,
    }
}

/// A 303 to the sign-in page that comes back to `return_to` afterwards (kept only when it is a
/// same-origin path under `/oauth2/authorize` or `/console`).
pub(crate) fn login_redirect(return_to: &str) -> Response {
    let target = match safe_return_to(return_to) {
        Some(r) => format!("/login?return_to={}", url_encode(r)),
        None => "/login".to_owned(),
    };
    redirect(&target)
}

/// `return_to` when it is a same-origin path this server may send a signed-in browser to.
fn safe_return_to(r: &str) -> Option<&str> {
    let plain = r.len() <= 4096
        && r.starts_with('/')
        && !r.starts_with("//")
        && !r.contains('\\')
        && !r.chars().any(|c| c.is_control() || c.is_whitespace());
    let under = |prefix: &str| {
        r.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('?') || rest.starts_with('/'))
    };
    (plain && (under("/oauth2/authorize") || under("/console"))).then_some(r)
}

#[derive(serde::Deserialize, Default)]
pub(crate) struct ReturnTo {
    return_to: Option<String>,
}

/// `GET /login`: the sign-in form (or, when signed in, who you are and a sign-out button).
pub(crate) async fn login_page(
    State(app): State<Arc<App>>,
    Query(q): Query<ReturnTo>,
    headers: HeaderMap,
) -> Response {
    let return_to = q.return_to.as_deref().and_then(safe_return_to);
    if let Some(user) = session_user(&app, &headers) {
        if let Some(r) = return_to {
            return redirect(r);
        }
        return signed_in_page(&user);
    }
    if enrolment_session(&app, &headers).is_some() {
        // Past the password step but not enrolled: carry on with enrolment, keeping the session.
        return redirect(&match return_to {
            Some(r) => format!("/login/mfa?return_to={}", url_encode(r)),
            None => "/login/mfa".to_owned(),
        });
    }
    match app.sessions.create(None, Stage::Anonymous, 0) {
        Ok((id, session)) => {
            let mut resp = form_page(&session.csrf, return_to, None, StatusCode::OK);
            set_cookie(&mut resp, &id);
            resp
        }
        Err(e) => internal(&e.to_string()),
    }
}

/// `POST /login`: checks the form's CSRF token against the anonymous session, then signs in.
pub(crate) async fn login_submit(
    State(app): State<Arc<App>>,
    peer: Option<axum::Extension<crate::PeerAddr>>,
    request_id: Option<axum::Extension<crate::RequestId>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let Posted {
        form,
        session_id: old_id,
        session,
        return_to,
    } = match posted(&app, &headers, &body, current_session) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let name = form.get("username").unwrap_or("").trim().to_owned();
    let password = SecretString::from(form.get("password").unwrap_or("").to_owned());
    let otp = Zeroizing::new(form.get("otp").unwrap_or("").to_owned());
    let source = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.0.0.ip());
    let app2 = app.clone();
    let name2 = name.clone();
    let result =
        tokio::task::spawn_blocking(move || app2.accounts.sign_in(&name2, &password, &otp, source))
            .await;
    let party = |user: Option<&Account>| crate::audit::Party {
        request_id: request_id.as_ref().map(|r| r.0.0.to_string()),
        user: user.map(user_ref),
        address: Some(source.to_string()),
        user_agent: user_agent(&headers),
        ..Default::default()
    };
    match result {
        Ok(Ok(account)) => {
            app.sessions.remove(&old_id);
            let stage = if account.mfa_enrolled {
                Stage::Complete
            } else {
                Stage::MfaEnrolment
            };
            let detail = if account.mfa_enrolled {
                vec![("factors".into(), "password+totp".into())]
            } else {
                vec![("factors".into(), "password; TOTP enrolment required".into())]
            };
            if let Err(resp) = audit(
                &app,
                party(Some(&account)),
                EventKind::Login,
                Outcome::Success,
                detail,
            )
            .await
            {
                return resp;
            }
            let (id, _) =
                match app
                    .sessions
                    .create(Some(account.name.clone()), stage, account.session_epoch)
                {
                    Ok(s) => s,
                    Err(e) => return internal(&e.to_string()),
                };
            let target = match (stage, return_to.as_deref()) {
                (Stage::MfaEnrolment, Some(r)) => format!("/login/mfa?return_to={}", url_encode(r)),
                (Stage::MfaEnrolment, None) => "/login/mfa".to_owned(),
                (_, Some(r)) => r.to_owned(),
                (_, None) => "/login".to_owned(),
            };
            let mut resp = redirect(&target);
            set_cookie(&mut resp, &id);
            resp
        }
        Ok(Err(SignInError::Failed)) => {
            let detail = vec![("username".into(), name.chars().take(64).collect())];
            if let Err(resp) = audit(
                &app,
                party(None),
                EventKind::LoginFailed,
                Outcome::Minor,
                detail,
            )
            .await
            {
                return resp;
            }
            form_page(
                &session.csrf,
                return_to.as_deref(),
                Some(SIGN_IN_FAILED),
                StatusCode::UNAUTHORIZED,
            )
        }
        Ok(Err(SignInError::Unavailable(e))) => internal(&e),
        Err(e) => internal(&e.to_string()),
    }
}

/// `GET /login/mfa`: TOTP enrolment for a session that passed the password step.
pub(crate) async fn mfa_page(
    State(app): State<Arc<App>>,
    Query(q): Query<ReturnTo>,
    headers: HeaderMap,
) -> Response {
    let Some((_, session)) = enrolment_session(&app, &headers) else {
        return login_redirect(q.return_to.as_deref().unwrap_or(""));
    };
    let name = session.user.clone().unwrap_or_default();
    let app2 = app.clone();
    let name2 = name.clone();
    let enrolment =
        match tokio::task::spawn_blocking(move || app2.accounts.begin_totp_enrolment(&name2)).await
        {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => return internal(&e.to_string()),
            Err(e) => return internal(&e.to_string()),
        };
    mfa_form(
        &session.csrf,
        &enrolment.uri,
        &enrolment.secret,
        q.return_to.as_deref().and_then(safe_return_to),
        None,
        StatusCode::OK,
    )
}

/// `GET /login/mfa/qr.svg`: the enrolment QR code as a same-origin SVG image.
pub(crate) async fn mfa_qr(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some((_, session)) = enrolment_session(&app, &headers) else {
        return (StatusCode::NOT_FOUND, "no enrolment in progress\n").into_response();
    };
    let name = session.user.clone().unwrap_or_default();
    let app2 = app.clone();
    let enrolment = match tokio::task::spawn_blocking(move || {
        app2.accounts.begin_totp_enrolment(&name)
    })
    .await
    {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => return internal(&e.to_string()),
        Err(e) => return internal(&e.to_string()),
    };
    let svg = match qrcode::QrCode::new(enrolment.uri.expose_secret().as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(240, 240)
            .build(),
        Err(e) => return internal(&e.to_string()),
    };
    let mut resp = svg.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("image/svg+xml"),
    );
    crate::html_headers(resp.headers_mut());
    resp
}

/// `POST /login/mfa`: confirms enrolment with a current code, shows the recovery codes once and
/// completes the sign-in.
pub(crate) async fn mfa_submit(
    State(app): State<Arc<App>>,
    peer: Option<axum::Extension<crate::PeerAddr>>,
    request_id: Option<axum::Extension<crate::RequestId>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let Posted {
        form,
        session_id: old_id,
        session,
        return_to,
    } = match posted(&app, &headers, &body, enrolment_session) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let name = session.user.clone().unwrap_or_default();
    let code = form.get("otp").unwrap_or("").to_owned();
    let app2 = app.clone();
    let name2 = name.clone();
    let result = tokio::task::spawn_blocking(move || {
        let codes = app2.accounts.confirm_totp_enrolment(&name2, &code)?;
        let account = app2.accounts.get(&name2)?;
        Ok::<_, carevault_identity::IdentityError>((codes, account))
    })
    .await;
    let source = peer.map(|p| p.0.0.ip().to_string());
    let party = |account: &Account| crate::audit::Party {
        request_id: request_id.as_ref().map(|r| r.0.0.to_string()),
        user: Some(user_ref(account)),
        address: source.clone(),
        user_agent: user_agent(&headers),
        ..Default::default()
    };
    match result {
        Ok(Ok((codes, Some(account)))) => {
            app.sessions.remove(&old_id);
            for (kind, detail) in [
                (
                    EventKind::AccountChange,
                    vec![
                        ("user".into(), account.name.clone()),
                        ("change".into(), "enrol-totp".into()),
                    ],
                ),
                (
                    EventKind::Login,
                    vec![("factors".into(), "password+totp".into())],
                ),
            ] {
                if let Err(resp) =
                    audit(&app, party(&account), kind, Outcome::Success, detail).await
                {
                    return resp;
                }
            }
            let (id, session) = match app.sessions.create(
                Some(account.name.clone()),
                Stage::Complete,
                account.session_epoch,
            ) {
                Ok(s) => s,
                Err(e) => return internal(&e.to_string()),
            };
            let mut resp = recovery_codes_page(&codes, &session.csrf, return_to.as_deref());
            set_cookie(&mut resp, &id);
            resp
        }
        Ok(Ok((_, None))) => expired_form(),
        Ok(Err(carevault_identity::IdentityError::InvalidCode)) => {
            let app2 = app.clone();
            match tokio::task::spawn_blocking(move || app2.accounts.begin_totp_enrolment(&name))
                .await
            {
                Ok(Ok(e)) => mfa_form(
                    &session.csrf,
                    &e.uri,
                    &e.secret,
                    return_to.as_deref(),
                    Some(
                        "That code does not match. Check the authenticator app's clock and enter the code it shows now.",
                    ),
                    StatusCode::BAD_REQUEST,
                ),
                Ok(Err(e)) => internal(&e.to_string()),
                Err(e) => internal(&e.to_string()),
            }
        }
        Ok(Err(e)) => internal(&e.to_string()),
        Err(e) => internal(&e.to_string()),
    }
}

/// `POST /logout`: ends the session (CSRF-checked) and records the sign-out.
pub(crate) async fn logout(
    State(app): State<Arc<App>>,
    peer: Option<axum::Extension<crate::PeerAddr>>,
    request_id: Option<axum::Extension<crate::RequestId>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let form = Form::parse(&body);
    let Some(user) = session_user(&app, &headers) else {
        let mut resp = redirect("/login");
        clear_cookie(&mut resp);
        return resp;
    };
    if !check_csrf(&user, form.get("csrf")) {
        return expired_form();
    }
    if let Some(id) = session_cookie(&headers) {
        app.sessions.remove(&id);
    }
    let party = crate::audit::Party {
        request_id: request_id.map(|r| r.0.0.to_string()),
        user: Some(user_ref(&user.account)),
        address: peer.map(|p| p.0.0.ip().to_string()),
        user_agent: user_agent(&headers),
        ..Default::default()
    };
    if let Err(resp) = audit(&app, party, EventKind::Logout, Outcome::Success, Vec::new()).await {
        return resp;
    }
    let mut resp = redirect("/login");
    clear_cookie(&mut resp);
    resp
}

/// `GET /login/style.css`: the one stylesheet of the sign-in pages (the CSP allows no inline style).
pub(crate) async fn stylesheet() -> Response {
    let mut resp = STYLE.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    resp
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#1b1b1b}\
label{display:block;margin-top:1rem}input{display:block;width:100%;padding:.4rem;font-size:1rem;box-sizing:border-box}\
button{margin-top:1.5rem;padding:.5rem 1.5rem;font-size:1rem}.error{color:#a00000;font-weight:600}\
code{word-break:break-all}.qr{width:240px;height:240px;display:block;margin:1rem 0}ol.codes{font-family:monospace;font-size:1.1rem}\n";

// ---- helpers ----

fn user_ref(account: &Account) -> UserRef {
    UserRef {
        name: account.name.clone(),
        reference: account
            .practitioner
            .clone()
            .or_else(|| account.patient.clone()),
        roles: account
            .roles
            .iter()
            .map(|r| r.as_str().to_owned())
            .collect(),
    }
}

fn user_agent(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(256).collect())
}

/// Appends one audit event durably; on failure, the 503 to answer instead.
async fn audit(
    app: &Arc<App>,
    party: crate::audit::Party,
    kind: EventKind,
    outcome: Outcome,
    detail: Vec<(String, String)>,
) -> Result<(), Response> {
    let mut record = app.trail.record(&party, kind, outcome);
    record.detail = detail;
    let append = crate::audit::to_append(&record);
    let store = app.rest.store().clone();
    match tokio::task::spawn_blocking(move || {
        carevault_store::audit_log::append_durably(&*store, vec![append])
    })
    .await
    {
        Ok(Ok(_)) => Ok(()),
        _ => {
            tracing::error!("the audit trail could not be written; sign-in step refused");
            Err(page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "<p class=\"error\">The audit trail could not be written, so nothing was done. Try again later.</p>",
            ))
        }
    }
}

/// The cookie value, when the request carries one.
fn session_cookie(headers: &HeaderMap) -> Option<Zeroizing<String>> {
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            if let Some((k, val)) = pair.trim().split_once('=')
                && k == SESSION_COOKIE
                && !val.is_empty()
            {
                return Some(Zeroizing::new(val.to_owned()));
            }
        }
    }
    None
}

/// A sign-in form posted with the CSRF token of its session.
struct Posted {
    form: Form,
    session_id: Zeroizing<String>,
    session: carevault_identity::Session,
    /// The form's `return_to`, when it is a safe local path.
    return_to: Option<String>,
}

/// What both sign-in steps check first: parses `body` and matches its CSRF token against the
/// session `find` returns; the expired-form page when there is no such session or no match.
fn posted(
    app: &App,
    headers: &HeaderMap,
    body: &[u8],
    find: fn(&App, &HeaderMap) -> Option<SessionEntry>,
) -> Result<Posted, Box<Response>> {
    let form = Form::parse(body);
    let Some((session_id, session)) = find(app, headers) else {
        return Err(Box::new(expired_form()));
    };
    if !session.check_csrf(form.get("csrf").unwrap_or("")) {
        return Err(Box::new(expired_form()));
    }
    let return_to = form
        .get("return_to")
        .and_then(safe_return_to)
        .map(str::to_owned);
    Ok(Posted {
        form,
        session_id,
        session,
        return_to,
    })
}

/// A browser session's id (the cookie value) and state.
type SessionEntry = (Zeroizing<String>, carevault_identity::Session);

/// The live session of any stage, with its id.
fn current_session(app: &App, headers: &HeaderMap) -> Option<SessionEntry> {
    let id = session_cookie(headers)?;
    let s = app.sessions.touch(&id)?;
    Some((id, s))
}

/// A session in the enrolment stage whose account still has no second factor and is enabled.
fn enrolment_session(app: &App, headers: &HeaderMap) -> Option<SessionEntry> {
    let (id, s) = current_session(app, headers)?;
    if s.stage != Stage::MfaEnrolment {
        return None;
    }
    match app.accounts.active(s.user.as_deref()?) {
        Ok(Some(a)) if !a.mfa_enrolled && a.session_epoch == s.epoch => Some((id, s)),
        _ => {
            app.sessions.remove(&id);
            None
        }
    }
}

fn set_cookie(resp: &mut Response, id: &str) {
    let value = format!("{SESSION_COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict");
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn clear_cookie(resp: &mut Response) {
    let value = format!("{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn redirect(target: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(target) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn internal(detail: &str) -> Response {
    tracing::error!(error = %detail, "sign-in page failure");
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Error",
        "<p class=\"error\">Something failed on the server. Try again; if it keeps failing, tell your administrator.</p>",
    )
}

fn expired_form() -> Response {
    page(
        StatusCode::FORBIDDEN,
        "Form expired",
        "<p class=\"error\">This form has expired or did not come from this site.</p><p><a href=\"/login\">Open the sign-in page again</a>.</p>",
    )
}

/// An HTML page with the strict headers.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · carevault</title>\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<link rel=\"stylesheet\" href=\"/login/style.css\"></head><body><h1>{}</h1>{}</body></html>\n",
        escape(title),
        escape(title),
        body
    );
    let mut resp = (status, html).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    crate::html_headers(resp.headers_mut());
    resp
}

fn hidden_csrf(token: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(token)
    )
}

fn hidden_return_to(return_to: Option<&str>) -> String {
    return_to.map_or(String::new(), |r| {
        format!(
            "<input type=\"hidden\" name=\"return_to\" value=\"{}\">",
            escape(r)
        )
    })
}

fn form_page(
    csrf: &str,
    return_to: Option<&str>,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let error = error.map_or(String::new(), |e| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))
    });
    let body = format!(
        "{error}<form method=\"post\" action=\"/login\">{}{}\
<label for=\"username\">User name</label><input id=\"username\" name=\"username\" autocomplete=\"username\" required autofocus>\
<label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
<label for=\"otp\">Authenticator code or recovery code</label><input id=\"otp\" name=\"otp\" autocomplete=\"one-time-code\" inputmode=\"text\">\
<button type=\"submit\">Sign in</button></form>\
<p>First sign-in without an authenticator? Leave the code empty: you will set one up next.</p>",
        hidden_csrf(csrf),
        hidden_return_to(return_to),
    );
    page(status, "Sign in", &body)
}

fn mfa_form(
    csrf: &str,
    uri: &SecretString,
    secret: &SecretString,
    return_to: Option<&str>,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let error = error.map_or(String::new(), |e| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))
    });
    let body = format!(
        "{error}<p>Your account needs a second factor. Scan this code with an authenticator app \
(any TOTP app), or enter the key by hand, then type the 6-digit code it shows.</p>\
<img class=\"qr\" src=\"/login/mfa/qr.svg\" alt=\"QR code of the authenticator key\" width=\"240\" height=\"240\">\
<p>Key: <code>{}</code></p><p>Link: <code>{}</code></p>\
<form method=\"post\" action=\"/login/mfa\">{}{}\
<label for=\"otp\">Code from the app</label><input id=\"otp\" name=\"otp\" autocomplete=\"one-time-code\" inputmode=\"numeric\" required autofocus>\
<button type=\"submit\">Confirm</button></form>",
        escape(secret.expose_secret()),
        escape(uri.expose_secret()),
        hidden_csrf(csrf),
        hidden_return_to(return_to),
    );
    page(status, "Set up your authenticator", &body)
}

fn recovery_codes_page(codes: &[SecretString], csrf: &str, return_to: Option<&str>) -> Response {
    let items: String = codes
        .iter()
        .map(|c| format!("<li>{}</li>", escape(c.expose_secret())))
        .collect();
    let next = match return_to {
        Some(r) => format!("<p><a href=\"{}\">Continue</a></p>", escape(r)),
        None => "<p><a href=\"/login\">Continue</a></p>".to_owned(),
    };
    let body = format!(
        "<p>Your authenticator is set up. These recovery codes each work once instead of a code \
from the app. Keep them somewhere safe: they are shown only now.</p><ol class=\"codes\">{items}</ol>{next}\
<form method=\"post\" action=\"/logout\">{}<button type=\"submit\">Sign out</button></form>",
        hidden_csrf(csrf)
    );
    page(StatusCode::OK, "Recovery codes", &body)
}

fn signed_in_page(user: &SessionUser) -> Response {
    let roles: Vec<&str> = user.account.roles.iter().map(|r| r.as_str()).collect();
    let body = format!(
        "<p>You are signed in as <strong>{}</strong> ({}).</p>\
<form method=\"post\" action=\"/logout\">{}<button type=\"submit\">Sign out</button></form>",
        escape(&user.account.name),
        escape(&roles.join(", ")),
        csrf_field(user)
    );
    page(StatusCode::OK, "Signed in", &body)
}

/// HTML escaping of text and attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn url_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// An `application/x-www-form-urlencoded` body (the sign-in forms, and the OAuth endpoints'
/// parameters); values are zeroized when dropped.
pub(crate) struct Form(Vec<(String, Zeroizing<String>)>);

impl Form {
    /// Parses `body`.
    pub(crate) fn parse(body: &[u8]) -> Form {
        Form(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), Zeroizing::new(v.into_owned())))
                .collect(),
        )
    }

    /// The value of `key` when it appears exactly once.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        let mut it = self.0.iter().filter(|(k, _)| k == key);
        match (it.next(), it.next()) {
            (Some((_, v)), None) => Some(v.as_str()),
            _ => None,
        }
    }

    /// The first parameter that appears more than once, if any.
    pub(crate) fn repeated(&self) -> Option<&str> {
        self.0
            .iter()
            .enumerate()
            .find(|(i, (k, _))| self.0.iter().take(*i).any(|(n, _)| n == k))
            .map(|(_, (k, _))| k.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_must_be_a_local_authorize_or_console_path() {
        for ok in [
            "/oauth2/authorize?client_id=a&state=x",
            "/oauth2/authorize",
            "/console",
            "/console/patients",
        ] {
            assert_eq!(safe_return_to(ok), Some(ok), "{ok}");
        }
        for bad in [
            "https://evil.example/oauth2/authorize",
            "//evil.example/console",
            "/\\evil.example",
            "/fhir/Patient",
            "/consoleevil",
            "/oauth2/authorizex",
            "/console/a b",
            "/console/\n",
            "",
            "javascript:alert(1)",
        ] {
            assert_eq!(safe_return_to(bad), None, "{bad:?}");
        }
        let r = login_redirect("/oauth2/authorize?a=1&b=2");
        assert_eq!(
            r.headers()[header::LOCATION],
            "/login?return_to=%2Foauth2%2Fauthorize%3Fa%3D1%26b%3D2"
        );
        assert_eq!(
            login_redirect("https://evil.example").headers()[header::LOCATION],
            "/login"
        );
    }

    #[test]
    fn cookie_parsing_and_escaping() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-carevault_session=abc; b=2"),
        );
        assert_eq!(
            session_cookie(&h).as_deref().map(String::as_str),
            Some("abc")
        );
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("__Host-carevault_session="),
        );
        assert!(session_cookie(&h).is_none());
        assert_eq!(
            escape("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
        let f = Form::parse(b"a=1&b=x%20y&a=2");
        assert_eq!(f.get("b"), Some("x y"));
        assert_eq!(f.get("a"), None, "repeated");
        assert_eq!(f.repeated(), Some("a"));
        assert_eq!(Form::parse(b"a=1&b=2").repeated(), None);
    }

    #[test]
    fn csrf_check_is_exact() {
        let user = SessionUser {
            account: Account {
                name: "amy".into(),
                roles: Vec::new(),
                practitioner: None,
                patient: None,
                disabled: false,
                mfa_enrolled: true,
                locked: false,
                failed_attempts: 0,
                recovery_codes_left: 0,
                created_at: 0,
                password_changed_at: 0,
                last_sign_in_at: None,
                session_epoch: 1,
            },
            csrf: "tok123".into(),
        };
        assert!(check_csrf(&user, Some("tok123")));
        assert!(!check_csrf(&user, Some("tok124")));
        assert!(!check_csrf(&user, Some("")));
        assert!(!check_csrf(&user, None));
        assert!(csrf_field(&user).contains("value=\"tok123\""));
    }
}
