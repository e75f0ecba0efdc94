//! Storage for carevault: the storage interface ([`Store`], [`Tx`]), the embedded SQLite
//! implementation, search indexing with blind tags, search execution, and the FHIR REST
//! interaction semantics ([`Rest`]) including batch and transaction Bundles.
//!
//! Data flow of a write: [`Rest`] validates and stamps the resource, serialises it once, derives
//! its index rows (blinding every PHI-derived value) and seals the body with the keyring, then
//! hands a job to the store's single writer, which group-commits it with whatever else is
//! waiting (one fsync per group). Reads run on pooled read-only connections, each in its own
//! snapshot, and return the stored bytes after decryption.
//!
//! What is on disk: version bodies sealed to `Type/id/_history/v`; strings, tokens and uris as
//! blind tags (whole value, prefixes up to 24 characters, trigrams, exact text; `system|code`,
//! `code`, `|code`, `system|`, words of the display text); references in clear (server ids are
//! not PHI); dates, numbers and quantity values as numbers (issue 5). Paging is by offset over
//! a stable order (creation order, or the requested sort with creation order as tie-break).
//!
//! Throughput: the writer is the serial part; importers should submit several bundles at once
//! (`carevault import` runs parallel jobs) so that their transactions share commits.
#![forbid(unsafe_code)]

pub mod audit_log;
pub mod backend;
mod bundle;
pub mod care;
pub mod error;
pub mod indexing;
pub mod instant;
pub mod keys;
mod patch;
pub mod plan;
pub mod rest;
pub mod search;
mod sqlite;
pub mod write_audit;

/// Where this crate takes FHIR definitions, index extraction and validation from.
pub(crate) mod fhirdefs {
    pub(crate) use carevault_fhir::{definitions, extract_index, normalize_string, validate};
}

pub use backend::{
    ReadTx, Store, Tx, delete_system_record, get_system_record, list_system_records,
    put_system_record, write_with,
};
pub use care::{CareKind, CareRows, CareWindows};
pub use error::{RestError, StoreError};
pub use rest::{Rest, Stored, Written};
pub use search::visibility::{Access, AccessRule, Op, Visibility};
pub use search::{HistoryRequest, SearchRequest};
pub use sqlite::{SqliteStore, StoreOptions, open_sqlite, open_sqlite_with};
pub use write_audit::{AuditHook, WriteFact};

#[cfg(test)]
mod care_tests;
#[cfg(test)]
mod tests;
