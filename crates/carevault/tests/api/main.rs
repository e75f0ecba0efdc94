//! End-to-end tests: the real binary, real TLS, a real HTTP client.
#![allow(clippy::unwrap_used)]

mod harness;

mod audit;
mod client_library;
mod durability;
mod import;
mod keys;
mod lifecycle;
mod rejections;
mod rest;
mod search;
mod siem;
mod synthea;
mod tls_scan;
mod validator_cases;
