//! The carevault command line.
#![forbid(unsafe_code)]
fn main() {}
