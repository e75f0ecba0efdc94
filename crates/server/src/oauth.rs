//! The OAuth 2 token endpoint: `client_credentials` with `client_secret_basic` (RFC 6749 4.4).

use crate::App;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use carevault_audit::event::EventKind;
use carevault_auth::TokenRequestError;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::json;
use std::sync::Arc;

/// `POST /oauth2/token`, with its audit event (token issued, or a failed client sign-in)
/// durable before the answer leaves.
pub(crate) async fn token(
    State(app): State<Arc<App>>,
    peer: Option<axum::Extension<crate::PeerAddr>>,
    request_id: Option<axum::Extension<crate::RequestId>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let resp = issue(app.clone(), headers.clone(), body).await;
    let status = resp.status().as_u16();
    let kind = match status {
        200 => EventKind::TokenIssued,
        401 => EventKind::LoginFailed,
        _ => EventKind::TokenIssued,
    };
    let party = crate::audit::Party {
        request_id: request_id.map(|r| r.0.0.to_string()),
        client: basic_user(&headers),
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
    if status != 200 {
        record.outcome_desc = Some(format!("HTTP {status}"));
    }
    let append = crate::audit::to_append(&record);
    let store = app.rest.store().clone();
    match tokio::task::spawn_blocking(move || {
        carevault_store::audit_log::append_durably(&*store, vec![append])
    })
    .await
    {
        Ok(Ok(_)) => resp,
        _ => {
            tracing::error!("the audit trail could not be written; token request refused");
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

async fn issue(app: Arc<App>, headers: HeaderMap, body: bytes::Bytes) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        );
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| {
        let mut it = form.iter().filter(|(n, _)| n == k);
        match (it.next(), it.next()) {
            (Some((_, v)), None) => Ok(Some(v.clone())),
            (None, _) => Ok(None),
            _ => Err(()),
        }
    };
    let (Ok(grant), Ok(scope)) = (get("grant_type"), get("scope")) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "a parameter was repeated",
        );
    };
    match grant.as_deref() {
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only client_credentials is supported here",
            );
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            );
        }
    }
    let auth_header = headers.get(header::AUTHORIZATION).cloned();
    let app2 = app.clone();
    // Argon2 verification is deliberately slow: keep it off the async threads.
    let result = tokio::task::spawn_blocking(move || {
        app2.auth.client_credentials(
            auth_header.as_ref().and_then(|v| v.to_str().ok()),
            scope.as_deref(),
        )
    })
    .await;
    match result {
        Ok(Ok(t)) => {
            let mut r = (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                t.response_body(),
            )
                .into_response();
            r.headers_mut()
                .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            r
        }
        Ok(Err(TokenRequestError::InvalidClient)) => {
            let mut r = oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"carevault\""),
            );
            r
        }
        Ok(Err(TokenRequestError::InvalidScope(d))) => {
            oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", &d)
        }
        Ok(Err(TokenRequestError::Internal(detail))) => {
            tracing::error!(error = %detail, "token endpoint failure");
            oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the token could not be issued",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "token task failed");
            oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the token could not be issued",
            )
        }
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// `GET /oauth2/jwks`: the public keys that verify this server's tokens.
pub(crate) async fn jwks(State(app): State<Arc<App>>) -> Response {
    axum::Json(app.auth.jwks()).into_response()
}
