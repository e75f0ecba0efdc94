//! End-to-end tests: the real binary, real TLS, a real HTTP client.
#![allow(clippy::unwrap_used)]

mod harness;

mod audit;
mod audit_access;
mod authz_matrix;
mod client_library;
mod durability;
mod import;
mod keys;
mod leaks;
mod lifecycle;
mod login;
mod policy_cli;
mod rejections;
mod rest;
mod search;
mod siem;
mod smart;
mod synthea;
mod tls_scan;
mod token_attacks;
mod validator_cases;
