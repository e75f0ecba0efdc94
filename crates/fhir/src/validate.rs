//! Validation of a resource against the R4 definitions.

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueSeverity {
    Fatal,
    Error,
    Warning,
    Information,
}

/// One problem found in a resource, shaped like an `OperationOutcome.issue`.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: IssueSeverity,
    /// `OperationOutcome.issue.code` (`structure`, `required`, `value`, `invalid`, `code-invalid`...).
    pub code: &'static str,
    /// One sentence.
    pub diagnostics: String,
    /// FHIRPath location, e.g. `Patient.name[0].given[1]`.
    pub expression: String,
}
