//! SMART App Launch 2.0: `/.well-known/smart-configuration`, and `/oauth2/authorize` with its
//! consent page (standalone launch, PKCE S256, exact redirect URIs, `launch/patient`).
//!
//! A bad `client_id` or `redirect_uri` gets an error page and never a redirect; every other
//! problem goes back to the app's redirect URI with `error` and the app's `state`. The consent
//! form carries the original request in hidden fields and the session's CSRF token; its POST
//! checks the request again from scratch, so nothing about it is kept between the two.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use carevault_auth::{AuthorizeError, AuthorizeParams, AuthorizeRequest, Subject};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::App;
use crate::login::{SessionUser, check_csrf, csrf_field, escape, login_redirect, session_user};

/// `GET /.well-known/smart-configuration`.
pub(crate) async fn configuration(State(app): State<Arc<App>>) -> Response {
    let iss = app.auth.issuer_url().to_owned();
    let scopes = [
        "openid",
        "fhirUser",
        "launch/patient",
        "offline_access",
        "online_access",
        "patient/*.rs",
        "patient/*.cruds",
        "patient/*.read",
        "patient/*.write",
        "user/*.rs",
        "user/*.cruds",
        "user/*.read",
        "user/*.write",
        "system/*.rs",
        "system/*.cruds",
        "system/*.read",
        "system/*.write",
    ];
    let body = json!({
        "issuer": iss,
        "jwks_uri": format!("{iss}/oauth2/jwks"),
        "authorization_endpoint": format!("{iss}/oauth2/authorize"),
        "token_endpoint": format!("{iss}/oauth2/token"),
        "revocation_endpoint": format!("{iss}/oauth2/revoke"),
        "introspection_endpoint": format!("{iss}/oauth2/introspect"),
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "scopes_supported": scopes,
        "response_types_supported": ["code"],
        "capabilities": [
            "launch-standalone", "client-public", "client-confidential-symmetric",
            "client-confidential-asymmetric", "context-standalone-patient", "permission-v2",
            "permission-v1", "sso-openid-connect", "permission-offline", "permission-patient",
            "permission-user"
        ],
    });
    axum::Json(body).into_response()
}

/// Parses the authorize parameters; a repeated parameter is refused (RFC 6749 3.1).
fn parse_params(pairs: &[(String, String)]) -> Result<AuthorizeParams, String> {
    let get = |k: &str| -> Result<Option<String>, String> {
        let mut it = pairs.iter().filter(|(n, _)| n == k);
        match (it.next(), it.next()) {
            (Some((_, v)), None) => Ok(Some(v.clone())),
            (None, _) => Ok(None),
            _ => Err(format!("The parameter {k} was sent more than once.")),
        }
    };
    Ok(AuthorizeParams {
        response_type: get("response_type")?,
        client_id: get("client_id")?,
        redirect_uri: get("redirect_uri")?,
        scope: get("scope")?,
        state: get("state")?,
        aud: get("aud")?,
        code_challenge: get("code_challenge")?,
        code_challenge_method: get("code_challenge_method")?,
        nonce: get("nonce")?,
    })
}

fn params_query(p: &AuthorizeParams) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in param_pairs(p) {
        q.append_pair(k, v);
    }
    q.finish()
}

fn param_pairs(p: &AuthorizeParams) -> Vec<(&'static str, &str)> {
    [
        ("response_type", &p.response_type),
        ("client_id", &p.client_id),
        ("redirect_uri", &p.redirect_uri),
        ("scope", &p.scope),
        ("state", &p.state),
        ("aud", &p.aud),
        ("code_challenge", &p.code_challenge),
        ("code_challenge_method", &p.code_challenge_method),
        ("nonce", &p.nonce),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    .collect()
}

/// `GET /oauth2/authorize`.
pub(crate) async fn authorize(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let params = match parse_params(&pairs) {
        Ok(p) => p,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
    };
    let request = match check(&app, &params).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let Some(user) = session_user(&app, &headers) else {
        return login_redirect(&format!("/oauth2/authorize?{}", params_query(&params)));
    };
    consent_page(&request, &params, &user, None)
}

async fn check(app: &Arc<App>, params: &AuthorizeParams) -> Result<AuthorizeRequest, Response> {
    let app2 = app.clone();
    let p = params.clone();
    match tokio::task::spawn_blocking(move || app2.auth.authorize(&p)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(AuthorizeError::NoRedirect(msg))) => Err(error_page(StatusCode::BAD_REQUEST, &msg)),
        Ok(Err(AuthorizeError::Redirect {
            redirect_uri,
            error,
            description,
            state,
        })) => {
            let mut q = vec![
                ("error", error.to_owned()),
                ("error_description", description),
            ];
            if let Some(s) = state {
                q.push(("state", s));
            }
            Err(redirect_to(&redirect_uri, &q))
        }
        Err(_) => Err(error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something failed; try again.",
        )),
    }
}

/// A 303 to `uri` with `params` appended to its query.
fn redirect_to(uri: &str, params: &[(&str, String)]) -> Response {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        q.append_pair(k, v);
    }
    let sep = if uri.contains('?') { '&' } else { '?' };
    let target = format!("{uri}{sep}{}", q.finish());
    match HeaderValue::from_str(&target) {
        Ok(v) => {
            let mut r = StatusCode::SEE_OTHER.into_response();
            r.headers_mut().insert(header::LOCATION, v);
            r
        }
        Err(_) => error_page(StatusCode::BAD_REQUEST, "The redirect URI cannot be used."),
    }
}

/// Plain words for a scope on the consent page.
fn describe(scope: &str) -> String {
    match scope {
        "openid" => return "Know who you are (your account name)".into(),
        "fhirUser" => return "Know which FHIR record is yours (Practitioner or Patient)".into(),
        "profile" => return "See your basic profile".into(),
        "launch/patient" => return "Work with one patient's record, chosen now".into(),
        "offline_access" => {
            return "Keep access after you sign out, until you revoke it (up to 30 days)".into();
        }
        "online_access" => return "Keep access while you stay signed in (up to 12 hours)".into(),
        _ => {}
    }
    let Ok(s) = carevault_auth::Scope::parse(scope) else {
        return scope.to_owned();
    };
    let whose = match s.context {
        carevault_auth::scope::Context::Patient => "the selected patient's",
        carevault_auth::scope::Context::User => "any",
        carevault_auth::scope::Context::System => "all",
    };
    let what = s.resource.as_deref().unwrap_or("records of every type");
    let p = s.permissions;
    let mut verbs = Vec::new();
    for (on, word) in [
        (p.create, "create"),
        (p.read, "read"),
        (p.update, "update"),
        (p.delete, "delete"),
        (p.search, "search"),
    ] {
        if on {
            verbs.push(word);
        }
    }
    let suffix = if s.context == carevault_auth::scope::Context::User {
        " you are allowed to see"
    } else {
        ""
    };
    format!("{}: {} {whose} {what}{suffix}", scope, verbs.join(", "))
}

fn consent_page(
    request: &AuthorizeRequest,
    params: &AuthorizeParams,
    user: &SessionUser,
    problem: Option<&str>,
) -> Response {
    let mut hidden = String::new();
    for (k, v) in param_pairs(params) {
        hidden.push_str(&format!(
            "<input type=\"hidden\" name=\"{k}\" value=\"{}\">\n",
            escape(v)
        ));
    }
    hidden.push_str(&csrf_field(user));
    let items: String = request
        .scopes
        .iter()
        .map(|s| format!("<li>{}</li>\n", escape(&describe(s))))
        .collect();
    let patient_field = if request.needs_patient() {
        match &user.account.patient {
            Some(p) => format!(
                "<p>The app will see your own record ({}).</p>",
                escape(p)
            ),
            None => "<p><label for=\"patient\">Patient id (the app may use this patient's record)</label>\n\
                 <input id=\"patient\" name=\"patient\" required pattern=\"[A-Za-z0-9.\\-]{1,64}\"></p>"
                .to_owned(),
        }
    } else {
        String::new()
    };
    let problem = problem
        .map(|p| format!("<p class=\"error\">{}</p>", escape(p)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Allow {app}?</h1>\n<p>Signed in as <strong>{name}</strong>. The application \
         <strong>{app}</strong> asks to:</p>\n<ul>\n{items}</ul>\n{problem}\
         <form method=\"post\" action=\"/oauth2/authorize\">\n{hidden}{patient_field}\n\
         <button type=\"submit\" name=\"decision\" value=\"approve\">Allow</button>\n\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\n</form>",
        app = escape(&request.client.name),
        name = escape(&user.account.name),
    );
    page(StatusCode::OK, "Allow access", &body)
}

/// `POST /oauth2/authorize`: the consent decision.
pub(crate) async fn decide(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let params = match parse_params(&pairs) {
        Ok(p) => p,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
    };
    let field = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let request = match check(&app, &params).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let Some(user) = session_user(&app, &headers) else {
        return login_redirect(&format!("/oauth2/authorize?{}", params_query(&params)));
    };
    if !check_csrf(&user, field("csrf")) {
        return error_page(
            StatusCode::FORBIDDEN,
            "This form has expired or did not come from this site; start again from the app.",
        );
    }
    let state = request.state.clone();
    let with_state = |mut q: Vec<(&'static str, String)>| {
        if let Some(s) = &state {
            q.push(("state", s.clone()));
        }
        q
    };
    match field("decision") {
        Some("approve") => {}
        _ => {
            return redirect_to(
                &request.redirect_uri,
                &with_state(vec![
                    ("error", "access_denied".into()),
                    ("error_description", "the user denied the request".into()),
                ]),
            );
        }
    }
    let account = &user.account;
    let patient = if request.needs_patient() {
        if let Some(own) = &account.patient {
            own.strip_prefix("Patient/").map(str::to_owned)
        } else if account.practitioner.is_some() {
            let id = field("patient").unwrap_or("").trim().to_owned();
            let valid = (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid || !patient_exists(&app, &id).await {
                return consent_page(
                    &request,
                    &params,
                    &user,
                    Some("There is no patient with that id; enter the id of an existing Patient."),
                );
            }
            Some(id)
        } else {
            return redirect_to(
                &request.redirect_uri,
                &with_state(vec![
                    ("error", "access_denied".into()),
                    (
                        "error_description",
                        "this account is linked to no Patient or Practitioner, so no patient can be chosen".into(),
                    ),
                ]),
            );
        }
    } else {
        None
    };
    let subject = Subject {
        user: account.name.clone(),
        fhir_user: account
            .practitioner
            .clone()
            .or_else(|| account.patient.clone()),
        patient,
    };
    match app.auth.issue_code(&request, subject) {
        Ok(code) => redirect_to(
            &request.redirect_uri,
            &with_state(vec![("code", code.expose_secret().to_owned())]),
        ),
        Err(e) => {
            tracing::error!(error = %e, "authorization code could not be issued");
            error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something failed; try again.",
            )
        }
    }
}

async fn patient_exists(app: &Arc<App>, id: &str) -> bool {
    let app2 = app.clone();
    let id = id.to_owned();
    tokio::task::spawn_blocking(move || app2.rest.read("Patient", &id).is_ok())
        .await
        .unwrap_or(false)
}

fn error_page(status: StatusCode, message: &str) -> Response {
    page(
        status,
        "Request refused",
        &format!("<h1>Request refused</h1>\n<p>{}</p>", escape(message)),
    )
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} - carevault</title>\
         <link rel=\"stylesheet\" href=\"/login/style.css\"></head><body><main>\n{body}\n</main></body></html>\n",
        escape(title)
    );
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    crate::html_headers(h);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_in_words() {
        assert_eq!(
            describe("patient/Observation.rs"),
            "patient/Observation.rs: read, search the selected patient's Observation"
        );
        assert!(describe("offline_access").contains("30 days"));
        assert!(
            describe("user/*.cruds")
                .starts_with("user/*.cruds: create, read, update, delete, search any")
        );
    }

    #[test]
    fn repeated_parameters_are_refused() {
        let p = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        assert!(parse_params(&p(&[("state", "a"), ("state", "b")])).is_err());
        let ok = parse_params(&p(&[("state", "a"), ("client_id", "x")])).unwrap();
        assert_eq!(ok.state.as_deref(), Some("a"));
        assert!(params_query(&ok).contains("client_id=x"));
    }
}
