//! OperationOutcome responses: every error under `/fhir` is one, with a one-sentence diagnostics
//! and a FHIRPath expression for each problem in a submitted resource.

use axum::response::{IntoResponse, Response};
use carevault_store::RestError;
use http::StatusCode;
use serde_json::{Value, json};

/// One `OperationOutcome.issue`.
#[derive(Debug, Clone)]
pub struct OutcomeIssue {
    pub severity: &'static str,
    pub code: &'static str,
    pub diagnostics: String,
    pub expression: Option<String>,
}

/// An error answered as an OperationOutcome with an HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub issues: Vec<OutcomeIssue>,
    /// Extra headers, e.g. `WWW-Authenticate` on 401.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl ApiError {
    /// An error with a single issue.
    pub fn new(status: StatusCode, code: &'static str, diagnostics: impl Into<String>) -> Self {
        Self {
            status,
            issues: vec![OutcomeIssue {
                severity: "error",
                code,
                diagnostics: diagnostics.into(),
                expression: None,
            }],
            headers: Vec::new(),
        }
    }

    /// Like [`ApiError::new`] with a FHIRPath expression.
    pub fn at(
        status: StatusCode,
        code: &'static str,
        diagnostics: impl Into<String>,
        expression: impl Into<String>,
    ) -> Self {
        let mut e = Self::new(status, code, diagnostics);
        e.issues[0].expression = Some(expression.into());
        e
    }

    /// 401 with the bearer challenge.
    pub fn unauthorized(diagnostics: &str, challenge: &str) -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "login",
            format!("Authentication failed: {diagnostics}."),
        );
        let value = http::HeaderValue::from_str(challenge)
            .unwrap_or_else(|_| http::HeaderValue::from_static("Bearer realm=\"carevault\""));
        e.headers.push((http::header::WWW_AUTHENTICATE, value));
        e
    }

    /// 500: says only that something failed and which request; details go to the log.
    pub fn internal(request_id: &str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            format!(
                "The server failed to process this request; quote request id {request_id} to the operator."
            ),
        )
    }

    /// Maps a store error to its HTTP answer; logs what must not reach the client.
    pub fn from_rest(err: RestError, request_id: &str) -> Self {
        match err {
            RestError::NotFound { rtype, id } => Self::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("{rtype}/{id} is not known."),
            ),
            RestError::Gone { rtype, id, .. } => Self::new(
                StatusCode::GONE,
                "deleted",
                format!("{rtype}/{id} has been deleted."),
            ),
            RestError::Invalid(issues) => {
                let structural = issues
                    .iter()
                    .any(|i| matches!(i.code, "structure" | "invalid" | "too-costly"));
                let status = if structural {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                };
                Self {
                    status,
                    issues: issues.into_iter().map(OutcomeIssue::from).collect(),
                    headers: Vec::new(),
                }
            }
            RestError::BadRequest {
                diagnostics,
                expression,
            } => {
                let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid", diagnostics);
                e.issues[0].expression = expression;
                e
            }
            RestError::PreconditionFailed(d) => {
                Self::new(StatusCode::PRECONDITION_FAILED, "conflict", d)
            }
            RestError::Conflict(d) => Self::new(StatusCode::CONFLICT, "conflict", d),
            RestError::Forbidden(d) => Self::new(StatusCode::FORBIDDEN, "forbidden", d),
            RestError::NotSupported(d) => {
                Self::new(StatusCode::NOT_IMPLEMENTED, "not-supported", d)
            }
            RestError::Integrity(detail) => {
                // The detail names the record (type, server id, version) and what failed; never content.
                tracing::error!(request_id, error = %detail, "a stored record failed its integrity check");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "exception",
                    format!(
                        "An integrity check failed for the stored record, so it cannot be served; quote request id {request_id} to the operator."
                    ),
                )
            }
            RestError::AuditUnavailable(detail) => {
                tracing::error!(request_id, error = %detail, "the audit trail could not be written; write refused");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "transient",
                    "The audit trail could not be written, so nothing was stored; retry later.",
                )
            }
            other => {
                tracing::error!(request_id, error = %other, "store failure");
                Self::internal(request_id)
            }
        }
    }
}

impl From<carevault_fhir::Issue> for OutcomeIssue {
    fn from(i: carevault_fhir::Issue) -> Self {
        use carevault_fhir::IssueSeverity::*;
        let severity = match i.severity {
            Fatal => "fatal",
            Error => "error",
            Warning => "warning",
            Information => "information",
        };
        Self {
            severity,
            code: i.code,
            diagnostics: i.diagnostics,
            expression: Some(i.expression),
        }
    }
}

/// The OperationOutcome resource for `issues`.
pub fn outcome_json(issues: &[OutcomeIssue]) -> Value {
    let issue: Vec<Value> = issues
        .iter()
        .map(|i| {
            let mut v =
                json!({"severity": i.severity, "code": i.code, "diagnostics": i.diagnostics});
            if let Some(expr) = &i.expression {
                v["expression"] = json!([expr]);
            }
            v
        })
        .collect();
    json!({"resourceType": "OperationOutcome", "issue": issue})
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&outcome_json(&self.issues)).unwrap_or_default();
        let mut resp = crate::fhir_response(self.status, body);
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}
