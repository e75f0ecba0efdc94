//! The OAuth 2 endpoints: `/oauth2/token` (`client_credentials` with `client_secret_basic` or
//! `private_key_jwt`, `authorization_code` with PKCE, `refresh_token`), `/oauth2/revoke`
//! (RFC 7009), `/oauth2/introspect` (RFC 7662) and `/oauth2/jwks`.
//!
//! Every token issue, refresh, revocation and failed client authentication is an audit event,
//! durable before the answer leaves.

use crate::App;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use carevault_audit::event::{EventKind, UserRef};
use carevault_auth::{ClientCredentials, Revoked, TokenRequestError, UserDirectory};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::json;
use std::sync::Arc;

/// The identity crate's accounts as the auth crate's [`UserDirectory`].
pub(crate) struct AccountDirectory(pub Arc<carevault_identity::Accounts>);

impl UserDirectory for AccountDirectory {
    fn is_active(&self, user: &str) -> Result<bool, String> {
        self.0
            .active(user)
            .map(|a| a.is_some())
            .map_err(|e| e.to_string())
    }
}

/// What a handled OAuth request did, for its audit event.
struct Handled {
    resp: Response,
    kind: EventKind,
    client: Option<String>,
    user: Option<UserRef>,
    detail: Vec<(String, String)>,
}

impl Handled {
    fn new(resp: Response, kind: EventKind) -> Self {
        Self {
            resp,
            kind,
            client: None,
            user: None,
            detail: Vec::new(),
        }
    }
}

/// Appends the audit event of `h` durably, then answers; 503 when the trail cannot be written.
async fn audited(
    app: &Arc<App>,
    peer: Option<axum::Extension<crate::PeerAddr>>,
    request_id: Option<axum::Extension<crate::RequestId>>,
    headers: &HeaderMap,
    h: Handled,
) -> Response {
    let status = h.resp.status().as_u16();
    let kind = if status == 401 {
        EventKind::LoginFailed
    } else {
        h.kind
    };
    let party = crate::audit::Party {
        request_id: request_id.map(|r| r.0.0.to_string()),
        client: h.client.or_else(|| basic_user(headers)),
        user: h.user,
        address: peer.map(|p| p.0.0.ip().to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(256).collect()),
        ..Default::default()
    };
    let mut record = app
        .trail
        .record(&party, kind, crate::audit::outcome_of(status));
    record.detail = h.detail;
    if status >= 400 {
        record.outcome_desc = Some(format!("HTTP {status}"));
    }
    let append = crate::audit::to_append(&record);
    let store = app.rest.store().clone();
    match tokio::task::spawn_blocking(move || {
        carevault_store::audit_log::append_durably(&*store, vec![append])
    })
    .await
    {
        Ok(Ok(_)) => h.resp,
        _ => {
            tracing::error!("the audit trail could not be written; OAuth request refused");
            oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the audit trail could not be written; retry later",
            )
        }
    }
}

/// The user name of a Basic authorization header (the client id), never the secret.
fn basic_user(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, _) = text.split_once(':')?;
    let user = percent_encoding::percent_decode_str(user)
        .decode_utf8()
        .ok()?
        .into_owned();
    (!user.is_empty() && user.len() <= 64 && !user.chars().any(char::is_control)).then_some(user)
}

/// A urlencoded form whose parameters may each appear once (values zeroized when dropped).
struct Form(crate::login::Form);

impl Form {
    fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Self, Box<Response>> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("application/x-www-form-urlencoded") {
            return Err(Box::new(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the body must be application/x-www-form-urlencoded",
            )));
        }
        let form = crate::login::Form::parse(body);
        if let Some(k) = form.repeated() {
            return Err(Box::new(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("the parameter {k} was repeated"),
            )));
        }
        Ok(Self(form))
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k)
    }

    /// How the request authenticates its client (one method only).
    fn credentials<'a>(
        &'a self,
        authorization: Option<&'a str>,
    ) -> Result<ClientCredentials<'a>, TokenRequestError> {
        let assertion = self.get("client_assertion");
        match (authorization, assertion) {
            (Some(_), Some(_)) => Err(TokenRequestError::InvalidRequest(
                "use one client authentication method, not two".into(),
            )),
            (Some(h), None) => Ok(ClientCredentials::Basic(h)),
            (None, Some(a)) => Ok(ClientCredentials::Assertion {
                assertion_type: self.get("client_assertion_type").unwrap_or(""),
                assertion: a,
                client_id: self.get("client_id"),
            }),
            (None, None) => Ok(self
                .get("client_id")
                .map_or(ClientCredentials::None, ClientCredentials::Public)),
        }
    }
}

/// `POST /oauth2/token`.
pub(crate) async fn token(
    State(app): State<Arc<App>>,
    peer: Option<axum::Extension<crate::PeerAddr>>,
    request_id: Option<axum::Extension<crate::RequestId>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let h = issue(app.clone(), headers.clone(), body).await;
    audited(&app, peer, request_id, &headers, h).await
}

async fn issue(app: Arc<App>, headers: HeaderMap, body: bytes::Bytes) -> Handled {
    let form = match Form::parse(&headers, &body) {
        Ok(f) => f,
        Err(r) => return Handled::new(*r, EventKind::TokenIssued),
    };
    let grant = form.get("grant_type").map(str::to_owned);
    let kind = match grant.as_deref() {
        Some("refresh_token") => EventKind::TokenRefreshed,
        _ => EventKind::TokenIssued,
    };
    let detail = vec![(
        "grant_type".to_owned(),
        grant.clone().unwrap_or_default().chars().take(40).collect(),
    )];
    if !matches!(
        grant.as_deref(),
        Some("client_credentials" | "authorization_code" | "refresh_token")
    ) {
        let r = match grant {
            Some(_) => oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be authorization_code, refresh_token or client_credentials",
            ),
            None => oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            ),
        };
        return Handled {
            detail,
            ..Handled::new(r, kind)
        };
    }
    let auth_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let app2 = app.clone();
    // Argon2 verification is deliberately slow: keep it off the async threads.
    let result = tokio::task::spawn_blocking(move || {
        let creds = form.credentials(auth_header.as_deref())?;
        let auth = &app2.auth;
        match form.get("grant_type") {
            Some("client_credentials") => auth.client_credentials_grant(creds, form.get("scope")),
            Some("authorization_code") => auth.redeem_code(
                creds,
                form.get("code"),
                form.get("redirect_uri"),
                form.get("code_verifier"),
            ),
            _ => auth.refresh(creds, form.get("refresh_token"), form.get("scope")),
        }
    })
    .await;
    match result {
        Ok(Ok(t)) => {
            let mut r = json_response(t.response_body());
            r.headers_mut()
                .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            let user = t.subject.as_ref().map(|s| UserRef {
                name: s.user.clone(),
                reference: s.fhir_user.clone(),
                roles: Vec::new(),
            });
            let mut detail = detail;
            detail.push(("jti".into(), t.access.jti.clone()));
            Handled {
                resp: r,
                kind,
                client: Some(t.client_id.clone()),
                user,
                detail,
            }
        }
        Ok(Err(e)) => Handled {
            detail,
            ..Handled::new(request_error(e), kind)
        },
        Err(e) => {
            tracing::error!(error = %e, "token task failed");
            Handled::new(
                oauth_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the token could not be issued",
                ),
                kind,
            )
        }
    }
}

/// The HTTP answer to a failed token, revocation or introspection request.
fn request_error(e: TokenRequestError) -> Response {
    match e {
        TokenRequestError::InvalidClient | TokenRequestError::InvalidAssertion(_) => {
            let mut r = oauth_error(StatusCode::UNAUTHORIZED, e.code(), &e.to_string());
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"carevault\""),
            );
            r
        }
        TokenRequestError::Internal(detail) => {
            tracing::error!(error = %detail, "OAuth endpoint failure");
            oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the request could not be completed",
            )
        }
        other => oauth_error(StatusCode::BAD_REQUEST, other.code(), &other.to_string()),
    }
}

fn json_response(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// `POST /oauth2/revoke` (RFC 7009): the client's own access or refresh token; always 200 once
/// the client is authenticated.
pub(crate) async fn revoke(
    State(app): State<Arc<App>>,
    peer: Option<axum::Extension<crate::PeerAddr>>,
    request_id: Option<axum::Extension<crate::RequestId>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let h = match Form::parse(&headers, &body) {
        Err(r) => Handled::new(*r, EventKind::TokenRevoked),
        Ok(form) => {
            let auth_header = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let app2 = app.clone();
            let result = tokio::task::spawn_blocking(move || {
                let creds = form.credentials(auth_header.as_deref())?;
                let token = form
                    .get("token")
                    .ok_or_else(|| TokenRequestError::InvalidRequest("token is required".into()))?;
                let client = creds_client_id(&creds);
                app2.auth.revoke(creds, token).map(|r| (r, client))
            })
            .await;
            match result {
                Ok(Ok((what, client))) => {
                    let what = match what {
                        Revoked::Nothing => "nothing",
                        Revoked::AccessToken => "access_token",
                        Revoked::RefreshFamily => "refresh_token_family",
                    };
                    Handled {
                        client,
                        detail: vec![("revoked".into(), what.into())],
                        ..Handled::new(StatusCode::OK.into_response(), EventKind::TokenRevoked)
                    }
                }
                Ok(Err(e)) => Handled::new(request_error(e), EventKind::TokenRevoked),
                Err(_) => Handled::new(
                    StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    EventKind::TokenRevoked,
                ),
            }
        }
    };
    audited(&app, peer, request_id, &headers, h).await
}

fn creds_client_id(c: &ClientCredentials<'_>) -> Option<String> {
    match c {
        ClientCredentials::Public(id) => Some((*id).to_owned()),
        ClientCredentials::Assertion {
            client_id: Some(id),
            ..
        } => Some((*id).to_owned()),
        _ => None,
    }
}

/// `POST /oauth2/introspect` (RFC 7662): for the authenticated client's own tokens. Failed
/// client authentication is audited; answers are not (they issue nothing).
pub(crate) async fn introspect(
    State(app): State<Arc<App>>,
    peer: Option<axum::Extension<crate::PeerAddr>>,
    request_id: Option<axum::Extension<crate::RequestId>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let form = match Form::parse(&headers, &body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let auth_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let app2 = app.clone();
    let result = tokio::task::spawn_blocking(move || {
        let creds = form.credentials(auth_header.as_deref())?;
        let token = form
            .get("token")
            .ok_or_else(|| TokenRequestError::InvalidRequest("token is required".into()))?;
        app2.auth.introspect(creds, token)
    })
    .await;
    match result {
        Ok(Ok(v)) => json_response(v.to_string()),
        Ok(Err(e)) => {
            let resp = request_error(e);
            if resp.status() == StatusCode::UNAUTHORIZED {
                audited(
                    &app,
                    peer,
                    request_id,
                    &headers,
                    Handled::new(resp, EventKind::LoginFailed),
                )
                .await
            } else {
                resp
            }
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `GET /oauth2/jwks`: the public keys that verify this server's tokens.
pub(crate) async fn jwks(State(app): State<Arc<App>>) -> Response {
    axum::Json(app.auth.jwks()).into_response()
}
