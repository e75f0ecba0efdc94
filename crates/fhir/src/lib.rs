//! The FHIR R4 model, generated from the official definitions: resource types, elements, search
//! parameters, required bindings and the Patient compartment; lossless JSON handling; validation;
//! and the extraction of search-index values from a resource.
//!
//! Resources are plain `serde_json::Value` trees built with `preserve_order` and
//! `arbitrary_precision`, so element order and the exact text of decimals survive a round trip.
#![forbid(unsafe_code)]

pub mod definitions;
pub mod fhirpath;
pub mod index;
pub mod narrative;
pub mod validate;

pub use definitions::{Definitions, DefinitionsError, definitions, try_definitions};
pub use index::{
    IndexEntry, IndexValue, extract_index, normalize_string, patient_compartment_refs,
};
pub use validate::{Issue, IssueSeverity, validate};

/// The kind of a search parameter, as in `SearchParameter.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum SearchParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

/// One search parameter that applies to a resource type.
#[derive(Debug, Clone)]
pub struct SearchParam {
    /// The code used in query strings (`family`, `_id`, `subject`).
    pub code: String,
    /// The parameter's type.
    pub kind: SearchParamType,
    /// The FHIRPath expression, already narrowed to this resource type.
    pub expression: Option<String>,
    /// For references: the resource types it may point to.
    pub targets: Vec<String>,
    /// For composites: the component parameter codes, in order.
    pub components: Vec<String>,
    /// For composites: each component's FHIRPath expression, relative to `expression`.
    pub component_expressions: Vec<String>,
}
