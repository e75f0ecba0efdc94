//! The errors of the storage layer and of the FHIR interactions built on it.

/// A failure of the storage backend itself (I/O, SQL, a lost writer thread).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("the store failed: {0}")]
    Backend(String),
    /// A stored record failed its integrity check (decryption or authentication).
    #[error("a stored record failed its integrity check: {0}")]
    Integrity(String),
    /// The store could not be opened or created.
    #[error("the store at {path} could not be opened: {reason}")]
    Open { path: String, reason: String },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

impl From<carevault_crypto::CryptoError> for StoreError {
    fn from(e: carevault_crypto::CryptoError) -> Self {
        StoreError::Integrity(e.to_string())
    }
}

/// The outcome of a FHIR interaction that did not succeed, one variant per HTTP answer.
///
/// `Display` is one sentence and never holds PHI: ids are server-assigned, search values and
/// resource content are never included.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// 404: no such resource.
    #[error("{rtype}/{id} does not exist")]
    NotFound { rtype: String, id: String },
    /// 410: the resource was deleted; `version` is the deletion's version.
    #[error("{rtype}/{id} was deleted")]
    Gone {
        rtype: String,
        id: String,
        version: u64,
        last_updated_ms: i64,
    },
    /// 422 (or 400 when the issues are structural): the resource failed validation.
    #[error("the resource is not valid ({} issue(s))", .0.len())]
    Invalid(Vec<carevault_fhir::Issue>),
    /// 400: the request itself is malformed.
    #[error("bad request: {diagnostics}")]
    BadRequest {
        diagnostics: String,
        expression: Option<String>,
    },
    /// 403: the caller may not do this to this resource (its role, the token's scopes or the
    /// care relationship do not allow it). Only used where the caller could see the resource or
    /// supplied it, so it reveals nothing the caller may not know.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 412: a stale `If-Match` or an ambiguous conditional interaction.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// 409: a conflicting state.
    #[error("conflict: {0}")]
    Conflict(String),
    /// 501: an interaction or feature this server does not implement.
    #[error("not supported: {0}")]
    NotSupported(String),
    /// 500: a stored record failed decryption or authentication.
    #[error("a stored record failed its integrity check: {0}")]
    Integrity(String),
    /// 500/503: any other storage failure.
    #[error("the store failed: {0}")]
    Store(String),
    /// 503: the write's audit entry could not be appended with it, so nothing was stored.
    #[error("the audit trail could not be written: {0}")]
    AuditUnavailable(String),
}

impl RestError {
    /// Shorthand for a [`RestError::BadRequest`] without an expression.
    pub fn bad(diagnostics: impl Into<String>) -> Self {
        RestError::BadRequest {
            diagnostics: diagnostics.into(),
            expression: None,
        }
    }
}

impl From<StoreError> for RestError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Integrity(m) => RestError::Integrity(m),
            other => RestError::Store(other.to_string()),
        }
    }
}

impl From<carevault_crypto::CryptoError> for RestError {
    fn from(e: carevault_crypto::CryptoError) -> Self {
        RestError::Integrity(e.to_string())
    }
}

impl RestError {
    /// The HTTP status this error answers with (the server may refine 422 into 400 for
    /// structural issues).
    pub fn status(&self) -> u16 {
        match self {
            RestError::NotFound { .. } => 404,
            RestError::Gone { .. } => 410,
            RestError::Invalid(_) => 422,
            RestError::BadRequest { .. } => 400,
            RestError::Forbidden(_) => 403,
            RestError::PreconditionFailed(_) => 412,
            RestError::Conflict(_) => 409,
            RestError::NotSupported(_) => 501,
            RestError::Integrity(_) | RestError::Store(_) => 500,
            RestError::AuditUnavailable(_) => 503,
        }
    }

    /// An `OperationOutcome` describing this error (no PHI; 500s say only that something failed).
    pub fn to_outcome(&self) -> serde_json::Value {
        use serde_json::json;
        let issue = |code: &str, diagnostics: String, expression: Option<&str>| {
            let mut i = json!({"severity": "error", "code": code, "diagnostics": diagnostics});
            if let Some(e) = expression {
                i["expression"] = json!([e]);
            }
            i
        };
        let issues = match self {
            RestError::Invalid(issues) => issues
                .iter()
                .map(|i| {
                    issue(
                        i.code,
                        i.diagnostics.clone(),
                        Some(i.expression.as_str()).filter(|e| !e.is_empty()),
                    )
                })
                .collect(),
            RestError::BadRequest {
                diagnostics,
                expression,
            } => vec![issue("invalid", diagnostics.clone(), expression.as_deref())],
            RestError::NotFound { .. } | RestError::Gone { .. } => {
                vec![issue("not-found", self.to_string(), None)]
            }
            RestError::PreconditionFailed(_) | RestError::Conflict(_) => {
                vec![issue("conflict", self.to_string(), None)]
            }
            RestError::NotSupported(_) => vec![issue("not-supported", self.to_string(), None)],
            RestError::Forbidden(m) => vec![issue("forbidden", m.clone(), None)],
            RestError::AuditUnavailable(_) => vec![issue(
                "transient",
                "The audit trail could not be written, so nothing was stored; retry later.".into(),
                None,
            )],
            RestError::Integrity(_) | RestError::Store(_) => {
                vec![issue(
                    "exception",
                    "The server failed to process the request.".into(),
                    None,
                )]
            }
        };
        json!({"resourceType": "OperationOutcome", "issue": issues})
    }
}
