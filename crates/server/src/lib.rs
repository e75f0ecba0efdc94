//! carevault's HTTPS server: TLS, routing, extractors, handlers and middleware.
//!
//! Nothing here touches storage directly: FHIR handlers go through [`carevault_store::Rest`], and
//! every `/fhir` route except `metadata` passes the bearer-token check in [`fhir::entry`] first.
#![forbid(unsafe_code)]

mod access;
pub mod audit;
pub mod audit_api;
mod authz;
mod care_cache;
pub mod config;
pub mod datadir;
mod fhir;
mod login;
mod metadata;
mod oauth;
pub mod outcome;
pub mod records;
mod serve;
mod smart;
pub mod tls;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use http::{HeaderValue, StatusCode, header};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use serve::{ServeHandle, serve};

/// True in the benchmark-only build (feature `insecure-no-read-audit-bench`) that answers reads
/// and refusals without their audit entry; `carevault serve` refuses to run it on real data.
pub const INSECURE_NO_READ_AUDIT: bool = cfg!(feature = "insecure-no-read-audit-bench");

/// Everything a handler needs, shared by all requests.
pub struct App {
    pub config: config::Config,
    pub rest: carevault_store::Rest,
    pub auth: carevault_auth::AuthService,
    /// `https://host:port/fhir` as clients see it.
    pub base_url: String,
    /// Serialised CapabilityStatement, built once.
    pub(crate) capability: bytes::Bytes,
    /// False while shutting down, so `/readyz` tells load balancers to go elsewhere.
    pub ready: AtomicBool,
    /// The audit trail: every request's event, checkpoints.
    pub trail: Arc<audit::Trail>,
    /// Human accounts (sealed records in the store).
    pub accounts: Arc<carevault_identity::Accounts>,
    /// Live browser sessions (in memory; see `carevault_identity::session`).
    pub sessions: carevault_identity::Sessions,
    /// The authorization policy in force (re-read from the store within a second of a change);
    /// `None` when the stored policy could not be loaded at start: users are then refused.
    pub policy: Option<Arc<carevault_policy::ActivePolicy>>,
    /// The memo of relationship and break-the-glass patient sets (see `care_cache`).
    pub(crate) care_cache: Arc<care_cache::CareCache>,
}

impl App {
    /// Wires the parts into the shared state.
    pub fn new(
        config: config::Config,
        rest: carevault_store::Rest,
        auth: carevault_auth::AuthService,
        trail: Arc<audit::Trail>,
    ) -> Arc<Self> {
        let base_url = if config.server.base_url.is_empty() {
            format!("https://{}/fhir", config.server.listen)
        } else {
            config.server.base_url.trim_end_matches('/').to_string()
        };
        let capability = metadata::capability_statement(&base_url);
        let accounts = Arc::new(records::open_accounts_with(
            rest.store().clone(),
            &config.identity,
        ));
        let sessions = records::new_sessions(&config.identity);
        let policy = match carevault_policy::ActivePolicy::open(
            Arc::new(records::SystemRecords(rest.store().clone())),
            Arc::new(carevault_auth::SystemClock),
        ) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                tracing::error!(error = %e, "the authorization policy could not be loaded; signed-in users will be refused");
                None
            }
        };
        auth.attach_users(Arc::new(oauth::AccountDirectory(accounts.clone())));
        Arc::new(Self {
            config,
            rest,
            auth,
            base_url,
            capability,
            ready: AtomicBool::new(true),
            trail,
            accounts,
            sessions,
            policy,
            care_cache: Arc::new(care_cache::CareCache::new()),
        })
    }
}

/// The request id of the current request (echoed as `X-Request-Id`).
#[derive(Clone, Debug)]
pub struct RequestId(pub Arc<str>);

/// The route template a handler served, for logs (never the concrete path: ids stay out of logs).
#[derive(Clone, Copy, Debug)]
pub struct RouteTemplate(pub &'static str);

/// Who called, once the bearer token is verified; logged by client id only.
#[derive(Clone, Debug)]
pub struct CallerId(pub Arc<str>);

/// The peer's socket address.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Builds the router with every route and middleware layer.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/oauth2/token", post(oauth::token))
        .route("/oauth2/jwks", get(oauth::jwks))
        .route("/oauth2/revoke", post(oauth::revoke))
        .route("/oauth2/introspect", post(oauth::introspect))
        .route(
            "/oauth2/authorize",
            get(smart::authorize).post(smart::decide),
        )
        .route(
            "/.well-known/smart-configuration",
            get(smart::configuration),
        )
        .route("/login", get(login::login_page).post(login::login_submit))
        .route("/login/mfa", get(login::mfa_page).post(login::mfa_submit))
        .route("/login/mfa/qr.svg", get(login::mfa_qr))
        .route("/login/style.css", get(login::stylesheet))
        .route("/logout", post(login::logout))
        .route("/audit/checkpoint", get(audit_api::checkpoint))
        .route("/audit/proof/{seq}", get(audit_api::proof))
        .route("/audit/consistency", get(audit_api::consistency))
        .route(
            "/admin/reports/patient/{id}",
            get(audit_api::patient_report),
        )
        .route("/admin/reports/user/{name}", get(audit_api::user_report))
        .route("/fhir", any(fhir::entry))
        .route("/fhir/", any(fhir::entry))
        .route("/fhir/{*rest}", any(fhir::entry))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), envelope))
        .with_state(app)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    // Ready means: not shutting down, a store read through the keys answers, and the audit
    // trail can be written (PRODUCT.md 2.2): a request that cannot be audited gets a 503, so a
    // server whose trail is not writable must not be sent traffic.
    let app2 = app.clone();
    let store_ok = tokio::task::spawn_blocking(move || {
        let read_ok = match app2.rest.read("Patient", "readyz-probe") {
            Ok(_)
            | Err(
                carevault_store::RestError::NotFound { .. }
                | carevault_store::RestError::Gone { .. },
            ) => true,
            Err(e) => {
                tracing::warn!(error = %e, "readiness probe failed");
                false
            }
        };
        read_ok
            && match carevault_store::audit_log::probe_writable(&**app2.rest.store()) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "readiness probe: the audit trail is not writable");
                    false
                }
            }
    })
    .await
    .unwrap_or(false);
    if app.ready.load(Ordering::Relaxed) && store_ok {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "no such route\n").into_response()
}

/// Request id, timeout, security headers and the access log line (no PHI: route template, status,
/// latency, caller id).
async fn envelope(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id: Arc<str> = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(Arc::from)
        .unwrap_or_else(|| Arc::from(uuid::Uuid::new_v4().simple().to_string()));
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let method = req.method().clone();
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let path_is_public_doc = matches!(req.uri().path(), "/fhir/metadata" | "/healthz" | "/readyz");
    let timeout = Duration::from_secs(app.config.server.request_timeout_seconds);
    let mut resp = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => outcome::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "The request took longer than the server allows and was cancelled; retry later.",
        )
        .into_response(),
    };
    let h = resp.headers_mut();
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000; includeSubDomains"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !path_is_public_doc {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-request-id", v);
    }
    let route = resp
        .extensions()
        .get::<RouteTemplate>()
        .map(|r| r.0.to_string())
        .or(matched)
        .unwrap_or_else(|| "(unmatched)".into());
    let caller = resp
        .extensions()
        .get::<CallerId>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    tracing::info!(
        request_id = &*request_id,
        method = %method,
        route,
        status = resp.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        caller,
        "request"
    );
    resp
}

fn valid_request_id(v: &str) -> bool {
    (1..=64).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The headers every HTML page carries: a strict CSP (no script at all, no third-party origin)
/// and no framing.
pub(crate) fn html_headers(h: &mut http::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// A FHIR JSON response with the right content type.
pub(crate) fn fhir_response(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_bounded_and_plain() {
        assert!(valid_request_id("abc-DEF_1.2"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id(&"a".repeat(65)));
        assert!(!valid_request_id("a b"));
        assert!(!valid_request_id("a\nb"));
    }
}
