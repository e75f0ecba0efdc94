//! Generates the compact R4 tables the fhir crate embeds.
#![forbid(unsafe_code)]
fn main() {}
