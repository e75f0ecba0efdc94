//! Command line entry point: regenerates `crates/fhir/definitions/r4.json.gz` from the official definitions.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let repo_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let source = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root.join("../shared/data/fhir-r4"));
    let output = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root.join(carevault_codegen::OUTPUT_PATH));
    match carevault_codegen::generate(&source).and_then(|bytes| {
        std::fs::write(&output, &bytes)
            .map_err(|e| carevault_codegen::CodegenError::Io(output.display().to_string(), e))
            .map(|()| bytes.len())
    }) {
        Ok(len) => {
            println!("wrote {} ({len} bytes)", output.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("carevault-codegen: {e}");
            ExitCode::FAILURE
        }
    }
}
