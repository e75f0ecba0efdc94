//! Storage interface, embedded SQLite store, indexing, search and transactions.
#![forbid(unsafe_code)]
