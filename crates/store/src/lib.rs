//! Storage for carevault: the storage interface ([`Store`], [`Tx`]), the embedded SQLite
//! implementation, search indexing with blind tags, search execution, and the FHIR REST
//! interaction semantics ([`Rest`]) including batch and transaction Bundles.
//!
//! Data flow of a write: [`Rest`] validates and stamps the resource, serialises it once, derives
//! its index rows (blinding every PHI-derived value) and seals the body with the keyring, then
//! hands a job to the store's single writer, which group-commits it with whatever else is
//! waiting. Reads run on pooled read-only connections and decrypt what they return.
#![forbid(unsafe_code)]

pub mod backend;
mod bundle;
pub mod error;
pub mod indexing;
pub mod instant;
mod patch;
pub mod plan;
pub mod rest;
pub mod search;
mod sqlite;

/// Where this crate takes FHIR definitions, index extraction and validation from.
pub(crate) mod fhirdefs {
    pub(crate) use carevault_fhir::{definitions, extract_index, normalize_string, validate};
}

pub use backend::{
    ReadTx, Store, Tx, delete_system_record, get_system_record, list_system_records,
    put_system_record, write_with,
};
pub use error::{RestError, StoreError};
pub use rest::{Rest, Stored, Written};
pub use search::{HistoryRequest, SearchRequest};
pub use sqlite::{SqliteStore, open_sqlite};

#[cfg(test)]
mod tests;
