#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of every crate (release profile, so the
# Synthea import and crash tests run at realistic speed).
set -euo pipefail
cd "$(dirname "$0")"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo test --workspace --release
