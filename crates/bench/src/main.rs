//! The carevault benchmark tool.
#![forbid(unsafe_code)]
fn main() {}
