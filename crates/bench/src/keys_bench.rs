//! The encryption-at-rest benchmark (issue 5): raw AES-256-GCM throughput of aws-lc-rs on this
//! machine (the ceiling), import and read throughput with encryption on and off (a second
//! binary built with the benchmark-only `insecure-plaintext-bench` feature into its own target
//! directory), and data-key rotation speed under a light concurrent read load.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde_json::{Value, json};

use crate::load::{Bounds, RequestSpec, run_phase};
use crate::report::{Figure, Floor};
use crate::server::{self, Server};

/// Floor: encrypted throughput at least 85% of plaintext (encryption costs at most 15%).
const RATIO_FLOOR: f64 = 0.85;

/// Builds the plaintext benchmark binary into `<target>/bench-plaintext` (never the shipped one).
pub fn build_plaintext() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"))
        .join("bench-plaintext");
    eprintln!(
        "[bench] building the plaintext benchmark binary into {}",
        target.display()
    );
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "carevault", "--features"])
        .arg("carevault-crypto/insecure-plaintext-bench")
        .arg("--target-dir")
        .arg(&target)
        .current_dir(crate::workspace_root())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("the plaintext benchmark build failed");
    }
    Ok(target.join("release").join("carevault"))
}

/// Seal and open throughput of AES-256-GCM (aws-lc-rs) for `size`-byte records, ~1 s each.
fn aead(size: usize) -> anyhow::Result<[(f64, f64); 2]> {
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &[7u8; 32]).map_err(|_| anyhow::anyhow!("bad key"))?,
    );
    let aad = b"Observation/0123456789abcdef/_history/1";
    let plain = vec![0x5au8; size];
    let mut sealed = plain.clone();
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key([1u8; NONCE_LEN]),
            Aad::from(&aad[..]),
            &mut sealed,
        )
        .map_err(|_| anyhow::anyhow!("seal failed"))?;
    sealed.extend_from_slice(tag.as_ref());
    let mut out = [(0.0, 0.0); 2];
    for (i, seal) in [true, false].into_iter().enumerate() {
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < Duration::from_millis(800) {
            for _ in 0..64 {
                let mut nonce = [0u8; NONCE_LEN];
                nonce[..8].copy_from_slice(&n.to_be_bytes());
                if seal {
                    let mut buf = plain.clone();
                    key.seal_in_place_append_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&aad[..]),
                        &mut buf,
                    )
                    .map_err(|_| anyhow::anyhow!("seal failed"))?;
                } else {
                    let mut buf = sealed.clone();
                    key.open_in_place(
                        Nonce::assume_unique_for_key([1u8; NONCE_LEN]),
                        Aad::from(&aad[..]),
                        &mut buf,
                    )
                    .map_err(|_| anyhow::anyhow!("open failed"))?;
                }
                n += 1;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        out[i] = (n as f64 * size as f64 / secs / 1e6, n as f64 / secs);
    }
    Ok(out)
}

struct Measured {
    import: f64,
    read_patient: f64,
    read_observation: f64,
    rotation: Option<(u64, f64)>,
}

/// One variant: fresh directory, import, reads at 16 connections, optionally a rotation.
async fn measure(
    bin: &Path,
    synthea: &Path,
    env: &[(&str, &str)],
    bounds: Bounds,
    rotate: bool,
) -> anyhow::Result<Measured> {
    let scratch = tempfile::Builder::new()
        .prefix("carevault-bench-keys-")
        .tempdir()?;
    let data = scratch.path().join("data");
    let mut srv = Server::start_env(bin, &data, scratch.path(), env).await?;
    let import = server::import(bin, &data, synthea, scratch.path())?;
    let secret = server::add_client(bin, &data, scratch.path())?;
    let target = srv.target().clone();
    let token = crate::fetch_token(&target, "bench", &secret).await?;
    let sample = crate::discover(&target, &token.header).await?;
    let mut reads = [0.0; 2];
    for (i, (kind, ids)) in [
        ("Patient", &sample.patients),
        ("Observation", &sample.observations),
    ]
    .into_iter()
    .enumerate()
    {
        let paths: Arc<Vec<String>> =
            Arc::new(ids.iter().map(|id| format!("/fhir/{kind}/{id}")).collect());
        if paths.is_empty() {
            bail!("no {kind} ids to read");
        }
        let make =
            Arc::new(move |n: u64| RequestSpec::get(paths[(n as usize) % paths.len()].clone()));
        reads[i] = run_phase(&target, 16, bounds, Some(token.header.clone()), make)
            .await
            .per_second;
    }
    let mut rotation = None;
    if rotate {
        // A light read load (one connection) while `keys rotate --data` runs.
        let paths: Arc<Vec<String>> = Arc::new(
            sample
                .patients
                .iter()
                .map(|id| format!("/fhir/Patient/{id}"))
                .collect(),
        );
        let make =
            Arc::new(move |n: u64| RequestSpec::get(paths[(n as usize) % paths.len()].clone()));
        let (b, d) = (bin.to_path_buf(), data.clone());
        let rot = std::thread::spawn(move || {
            let started = Instant::now();
            let out = Command::new(&b)
                .args(["keys", "rotate", "--data", "--json", "--data"])
                .arg(&d)
                .output();
            (started.elapsed().as_secs_f64(), out)
        });
        let load = run_phase(
            &target,
            1,
            Bounds {
                duration: Duration::from_secs(5),
                max_requests: 1_000_000,
            },
            Some(token.header.clone()),
            make,
        );
        load.await;
        let (secs, out) = rot
            .join()
            .map_err(|_| anyhow::anyhow!("the rotation thread panicked"))?;
        let out = out.context("cannot run keys rotate")?;
        if !out.status.success() {
            bail!(
                "keys rotate --data failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: Value =
            serde_json::from_slice(&out.stdout).context("keys rotate printed no JSON")?;
        rotation = Some((v["reencrypted"].as_u64().unwrap_or(0), secs));
    }
    srv.stop(Duration::from_secs(30));
    Ok(Measured {
        import: import.resources as f64 / import.wall_seconds.max(1e-9),
        read_patient: reads[0],
        read_observation: reads[1],
        rotation,
    })
}

/// Runs the encryption benchmark; `plaintext` is the benchmark-only binary.
pub async fn run(
    bin: &Path,
    plaintext: &Path,
    synthea: &Path,
    bounds: Bounds,
) -> anyhow::Result<(Vec<Figure>, Value)> {
    let mut figures = Vec::new();
    for size in [1024usize, 16 * 1024] {
        let [(seal_mb, seal_n), (open_mb, open_n)] = aead(size)?;
        for (op, mb, n) in [("seal", seal_mb, seal_n), ("open", open_mb, open_n)] {
            figures.push(Figure {
                value: Some(mb),
                note: Some(format!(
                    "{n:.0} records/s of {size} bytes, one core, AES-256-GCM (aws-lc-rs)"
                )),
                ..Figure::skipped(
                    &format!("aead_{op}_{}k", size / 1024),
                    "MB/s",
                    Floor::None,
                    "",
                )
            });
        }
    }
    eprintln!("[bench] encrypted: import, reads, rotation");
    let enc = measure(bin, synthea, &[], bounds, true).await?;
    eprintln!("[bench] plaintext (benchmark-only build): import, reads");
    let plain = measure(
        plaintext,
        synthea,
        &[("CAREVAULT_INSECURE_PLAINTEXT_BENCH", "1")],
        bounds,
        false,
    )
    .await?;
    for (name, e, p) in [
        ("import", enc.import, plain.import),
        ("read_patient_c16", enc.read_patient, plain.read_patient),
        (
            "read_observation_c16",
            enc.read_observation,
            plain.read_observation,
        ),
    ] {
        figures.push(Figure {
            value: Some(e / p.max(1e-9)),
            note: Some(format!("encrypted {e:.0}/s vs plaintext {p:.0}/s")),
            ..Figure::skipped(
                &format!("encryption_ratio_{name}"),
                "ratio",
                Floor::AtLeast(RATIO_FLOOR),
                "",
            )
        });
    }
    if let Some((n, secs)) = enc.rotation {
        figures.push(Figure {
            value: Some(n as f64 / secs.max(1e-9)),
            note: Some(format!("{n} values re-encrypted in {secs:.2} s (wall time of `keys rotate --data`, including the settle wait) under a one-connection read load; patient-keyed resources only have their key re-wrapped")),
            ..Figure::skipped("rotation_data_key", "values/s", Floor::None, "")
        });
    }
    let context = json!({
        "encrypted": {"import": enc.import, "read_patient_c16": enc.read_patient, "read_observation_c16": enc.read_observation},
        "plaintext": {"import": plain.import, "read_patient_c16": plain.read_patient, "read_observation_c16": plain.read_observation},
        "server_bin": bin.display().to_string(),
        "plaintext_bin": plaintext.display().to_string(),
    });
    Ok((figures, context))
}
