//! `carevault-bench access`: the identity-and-access figures of issue 3 — token issuance per
//! second (SMART Backend Services `private_key_jwt` with ES384 and RS384, and
//! `client_secret_basic`), and the core read-by-id figure with authorization on (a physician
//! signed in through the real sign-in + authorization-code + PKCE flow, reading patients they
//! look after) against authorization off (the build before issue 3, read with a system token).
//!
//! Client assertions are signed before the timed phase, so the client's signing cost is not in
//! the figure. Every failed request is counted and reported; a figure that could not be
//! measured is reported as such, never estimated.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use aws_lc_rs::rand::SecureRandom;
use aws_lc_rs::signature::KeyPair;
use base64::Engine as _;
use bytes::Bytes;
use clap::Parser;
use http::Method;
use serde_json::{Value, json};

use crate::client::Target;
use crate::load::{Bounds, RequestSpec, run_phase};
use crate::report::{Figure, Floor};
use crate::server::Server;
use crate::stats::{PhaseSummary, WorkerStats};

/// Measure token issuance and the cost of authorization on reads by id.
#[derive(Parser, Debug)]
#[command(name = "carevault-bench access")]
struct AccessArgs {
    /// The server binary with authorization (default: `cargo build --release -p carevault`).
    #[arg(long, value_name = "FILE")]
    bin: Option<PathBuf>,
    /// A server binary from before authorization existed (main at 6894dab); without it the
    /// "authorization off" figures are reported as not measured.
    #[arg(long, value_name = "FILE")]
    base_bin: Option<PathBuf>,
    /// Synthea R4 folder to import (default: ../shared/data/synthea-r4 beside the repository).
    #[arg(long, value_name = "DIR")]
    synthea: Option<PathBuf>,
    /// Longest duration of each load phase, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Most requests of each read phase.
    #[arg(long, default_value_t = 200_000)]
    max_requests: u64,
    /// Client assertions signed ahead of each private_key_jwt phase (its request bound).
    #[arg(long, default_value_t = 4_000)]
    assertions: u64,
    /// Patients in the read sample (each gets an in-progress Encounter with the physician).
    #[arg(long, default_value_t = 200)]
    patients: usize,
    /// Also write the JSON report to FILE.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// The floor: authorization adds at most 20% to read latency at p50.
const RATIO_FLOOR: f64 = 1.20;
/// Connections of the token and read phases (the core benchmark's read floor is at 16).
const CONNECTIONS: usize = 16;
const APP_REDIRECT: &str = "https://bench-app.example/callback";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Entry point of `carevault-bench access ...` (`argv` starts with `access`).
pub fn main(argv: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args = AccessArgs::parse_from(argv);
    crate::report::finish_async(
        "carevault-bench access",
        args.out.as_deref(),
        true,
        run(&args),
    )
}

fn progress(msg: &str) {
    eprintln!("[bench access] {msg}");
}

/// Read phases of one server configuration, by name suffix.
#[derive(Default)]
struct ReadSet {
    phases: Vec<(String, PhaseSummary)>,
}

impl ReadSet {
    fn get(&self, name: &str) -> Option<&PhaseSummary> {
        self.phases.iter().find(|(n, _)| n == name).map(|(_, p)| p)
    }
}

async fn run(args: &AccessArgs) -> anyhow::Result<Value> {
    let synthea = args
        .synthea
        .clone()
        .unwrap_or_else(|| crate::workspace_root().join("../shared/data/synthea-r4"));
    if !synthea.exists() {
        bail!("the Synthea folder {} does not exist", synthea.display());
    }
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => crate::server::build_release()?,
    };
    let bounds = Bounds {
        duration: Duration::from_secs(args.seconds.max(1)),
        max_requests: args.max_requests.max(1),
    };
    let mut figures = Vec::new();
    let mut context = json!({
        "server_bin": bin.display().to_string(),
        "base_bin": args.base_bin.as_ref().map(|b| b.display().to_string()),
        "synthea": synthea.display().to_string(),
        "phase_seconds": bounds.duration.as_secs(),
        "connections": CONNECTIONS,
    });

    // The server with authorization.
    let scratch = tempfile::Builder::new()
        .prefix("carevault-bench-access-")
        .tempdir()
        .context("cannot create a scratch dir")?;
    let data = scratch.path().join("data");
    progress(&format!("starting {} serve", bin.display()));
    let mut srv = Server::start(&bin, &data, scratch.path()).await?;
    let target = srv.target().clone();
    let new = drive_new(args, &bin, &data, &synthea, scratch.path(), &target, bounds).await;
    let shutdown = srv.stop(Duration::from_secs(30));
    context["new_shutdown_exit_code"] = json!(shutdown.exit_code);
    let (mut new_figures, new_reads) = match new {
        Ok(r) => r,
        Err(e) => {
            context["error"] = json!(crate::report::error_text(&e));
            context["server_log_tail"] = json!(srv.log_tail(20));
            (Vec::new(), (ReadSet::default(), ReadSet::default()))
        }
    };
    figures.append(&mut new_figures);
    let (user_reads, system_reads) = new_reads;

    // The server before authorization existed.
    let base_reads = match &args.base_bin {
        Some(base) => {
            let scratch = tempfile::Builder::new()
                .prefix("carevault-bench-access-base-")
                .tempdir()
                .context("cannot create a scratch dir")?;
            let data = scratch.path().join("data");
            progress(&format!("starting the base server {}", base.display()));
            let mut srv = Server::start(base, &data, scratch.path()).await?;
            let target = srv.target().clone();
            let r = drive_base(args, base, &data, &synthea, scratch.path(), &target, bounds).await;
            let shutdown = srv.stop(Duration::from_secs(30));
            context["base_shutdown_exit_code"] = json!(shutdown.exit_code);
            match r {
                Ok((reads, base_ceiling)) => {
                    for (name, p) in &reads.phases {
                        figures.push(Figure::from_phase(
                            &format!("read_{name}_authz_off_base"),
                            Floor::None,
                            base_ceiling.filter(|_| name.ends_with("c16")),
                            p.clone(),
                        ));
                    }
                    Some(reads)
                }
                Err(e) => {
                    context["base_error"] = json!(crate::report::error_text(&e));
                    context["base_server_log_tail"] = json!(srv.log_tail(20));
                    None
                }
            }
        }
        None => None,
    };

    // Ratios p50(on) / p50(off).
    for name in [
        "patient_c16",
        "observation_c16",
        "patient_c1",
        "observation_c1",
    ] {
        let on = user_reads.get(name);
        for (off_label, off) in [
            ("base", base_reads.as_ref().and_then(|b| b.get(name))),
            ("system_client", system_reads.get(name)),
        ] {
            let fig_name = format!("p50_ratio_read_{name}_physician_vs_{off_label}");
            let floor = if off_label == "base" {
                Floor::AtMost(RATIO_FLOOR)
            } else {
                Floor::None
            };
            figures.push(ratio_figure(&fig_name, floor, on, off));
        }
    }
    context["notes"] = json!([
        "physician = a user with the physician role, linked to a Practitioner that is a participant of an in-progress Encounter of every patient in the read sample; token from /login (password + TOTP) + /oauth2/authorize (consent) + /oauth2/token (authorization_code + PKCE S256), scope `openid fhirUser user/*.rs`",
        "base = the server before issue 3 (main at 6894dab), read with a client_credentials token (system/*.*): what the server did before authorization existed",
        "system_client = the new server read with the same kind of system token: the scopes-only decision",
        "the floor of the issue applies to p50_ratio_*_physician_vs_base at 16 connections; the c1 ratios show the latency without queueing",
        "private_key_jwt assertions are signed before each timed phase; each carries a unique jti, so a phase sends at most --assertions requests"
    ]);
    Ok(crate::report::report(
        &figures,
        crate::report::machine(),
        context,
        Some(shutdown.exit_code == Some(0)),
    ))
}

/// `p50(on) / p50(off)`, with the two phases' error counts in the note.
fn ratio_figure(
    name: &str,
    floor: Floor,
    on: Option<&PhaseSummary>,
    off: Option<&PhaseSummary>,
) -> Figure {
    match (on, off) {
        (Some(on), Some(off))
            if on.error_rate() > crate::report::MAX_ERROR_RATE
                || off.error_rate() > crate::report::MAX_ERROR_RATE =>
        {
            Figure::skipped(
                name,
                "ratio",
                floor,
                format!(
                    "not a valid comparison: errors {} of {} (on) and {} of {} (off)",
                    on.errors,
                    on.ok + on.errors,
                    off.errors,
                    off.ok + off.errors
                ),
            )
        }
        (Some(on), Some(off)) => match (on.p50_ms, off.p50_ms) {
            (Some(a), Some(b)) if b > 0.0 && on.ok > 0 && off.ok > 0 => Figure {
                value: Some(a / b),
                note: Some(format!(
                    "p50 {a:.3} ms / {b:.3} ms; req/s {:.0} vs {:.0}; errors {} of {} vs {} of {}",
                    on.per_second,
                    off.per_second,
                    on.errors,
                    on.ok + on.errors,
                    off.errors,
                    off.ok + off.errors
                )),
                ..Figure::skipped(name, "ratio", floor, "")
            },
            _ => Figure::skipped(name, "ratio", floor, "a phase had no successful request"),
        },
        _ => Figure::skipped(name, "ratio", floor, "a phase was not measured"),
    }
}

/// Runs a `carevault` admin command beside the running server; returns its stdout.
fn cli(bin: &Path, data: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(args)
        .arg("--data")
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run carevault {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "carevault {} failed: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Ids of the read sample: patients, and observations of the first 50 of them.
struct ReadSample {
    patients: Vec<String>,
    observations: Vec<String>,
}

async fn read_sample(target: &Target, bearer: &str, max: usize) -> anyhow::Result<ReadSample> {
    let mut conn = target.connect().await?;
    let mut get = async |path: &str| -> anyhow::Result<Value> {
        let reply = conn
            .send(
                Method::GET,
                path,
                &[
                    ("authorization", bearer),
                    ("accept", "application/fhir+json"),
                ],
                Bytes::new(),
            )
            .await?;
        if !reply.status.is_success() {
            bail!("GET {path} answered {}", reply.status);
        }
        reply.json()
    };
    let bundle = get(&format!("/fhir/Patient?_count={}", max.clamp(1, 1000))).await?;
    let patients: Vec<String> = crate::resources(&bundle)
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .take(max)
        .collect();
    let mut observations = Vec::new();
    for p in patients.iter().take(50) {
        let b = get(&format!(
            "/fhir/Observation?patient={}&_count=10",
            crate::query_encode(p)
        ))
        .await?;
        observations
            .extend(crate::resources(&b).filter_map(|r| r["id"].as_str().map(str::to_owned)));
    }
    Ok(ReadSample {
        patients,
        observations,
    })
}

/// Reads by id of the sample at 1 and 16 connections.
async fn read_phases(
    target: &Target,
    sample: &ReadSample,
    bearer: &str,
    bounds: Bounds,
    label: &str,
) -> ReadSet {
    let mut set = ReadSet::default();
    for (kind, ids) in [
        ("Patient", &sample.patients),
        ("Observation", &sample.observations),
    ] {
        if ids.is_empty() {
            continue;
        }
        for c in [1usize, CONNECTIONS] {
            progress(&format!(
                "{label}: GET /fhir/{kind}/{{id}} at {c} connections"
            ));
            let paths: Arc<Vec<String>> =
                Arc::new(ids.iter().map(|id| format!("/fhir/{kind}/{id}")).collect());
            let make =
                Arc::new(move |n: u64| RequestSpec::get(paths[(n as usize) % paths.len()].clone()));
            let p = run_phase(target, c, bounds, Some(bearer.to_owned()), make).await;
            set.phases
                .push((format!("{}_c{c}", kind.to_lowercase()), p));
        }
    }
    set
}

async fn ceiling(target: &Target, bounds: Bounds) -> PhaseSummary {
    progress("GET /healthz at 16 connections (ceiling)");
    run_phase(
        target,
        CONNECTIONS,
        bounds,
        None,
        Arc::new(|_| RequestSpec::get("/healthz")),
    )
    .await
}

type NewResult = (Vec<Figure>, (ReadSet, ReadSet));

async fn drive_new(
    args: &AccessArgs,
    bin: &Path,
    data: &Path,
    synthea: &Path,
    scratch: &Path,
    target: &Target,
    bounds: Bounds,
) -> anyhow::Result<NewResult> {
    let mut figures = Vec::new();
    progress("importing Synthea");
    crate::server::import(bin, data, synthea, scratch)?;
    let ceil = ceiling(target, bounds).await;
    let ceil_rps = Some(ceil.per_second);
    figures.push(Figure::from_phase(
        "ceiling_healthz_c16",
        Floor::None,
        None,
        ceil,
    ));

    // The token endpoint URL the server checks assertions' aud against.
    let token_url = token_endpoint(target).await?;
    let root = token_url
        .strip_suffix("/oauth2/token")
        .context("the token endpoint does not end in /oauth2/token")?
        .to_owned();

    // 1. Token issuance.
    let secret = crate::server::add_client(bin, data, scratch)?;
    let keys = BenchKeys::generate()?;
    let jwks_file = scratch.join("backend.jwks.json");
    std::fs::write(&jwks_file, keys.jwks()?.to_string()).context("cannot write the JWKS")?;
    let jwks_arg = jwks_file.display().to_string();
    cli(
        bin,
        data,
        &[
            "client",
            "add",
            "bench-backend",
            "--scope",
            "system/*.rs",
            "--jwks",
            &jwks_arg,
        ],
    )?;
    for alg in [Alg::Es384, Alg::Rs384] {
        let n = args.assertions.clamp(1, bounds.max_requests);
        progress(&format!("signing {n} {} client assertions", alg.name()));
        let now = unix_now();
        let mut bodies = Vec::with_capacity(n as usize);
        for i in 0..n {
            let jti = format!("bench-{}-{i}-{}", alg.name(), random_hex(8)?);
            let claims = assertion_claims("bench-backend", &token_url, now, &jti);
            let jwt = keys.sign(alg, &claims)?;
            bodies.push(assertion_body(&jwt, "system/*.rs"));
        }
        progress(&format!(
            "POST /oauth2/token private_key_jwt {}",
            alg.name()
        ));
        let p = token_phase(target, bounds, Arc::new(bodies), None).await;
        figures.push(Figure {
            note: Some(format!(
                "client_credentials + private_key_jwt ({}), {CONNECTIONS} keep-alive connections, each assertion used once",
                alg.name()
            )),
            ..Figure::from_phase(
                &format!("token_private_key_jwt_{}_c16", alg.name().to_lowercase()),
                Floor::None,
                ceil_rps,
                p,
            )
        });
    }
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        crate::form_encode("bench"),
        crate::form_encode(&secret)
    ));
    progress("POST /oauth2/token client_secret_basic");
    let p = token_phase(
        target,
        bounds,
        Arc::new(vec!["grant_type=client_credentials".to_owned()]),
        Some(format!("Basic {basic}")),
    )
    .await;
    figures.push(Figure {
        note: Some("client_credentials + client_secret_basic, for comparison".into()),
        ..Figure::from_phase("token_client_secret_basic_c16", Floor::None, ceil_rps, p)
    });

    // 2. The care relationship: a Practitioner, an in-progress Encounter per sampled patient.
    let system = crate::fetch_token(target, "bench", &secret).await?;
    let sample = read_sample(target, &system.header, args.patients).await?;
    progress(&format!(
        "sample: {} patients, {} observations",
        sample.patients.len(),
        sample.observations.len()
    ));
    let practitioner = post_resource(
        target,
        &system.header,
        "Practitioner",
        json!({"resourceType": "Practitioner", "name": [{"family": "Bench", "given": ["Dana"]}]}),
    )
    .await?;
    for p in &sample.patients {
        post_resource(
            target,
            &system.header,
            "Encounter",
            encounter_body(p, &practitioner),
        )
        .await?;
    }

    // 3. The physician, signed in through the real flow.
    let password = format!("bench-{}-orchard", random_hex(12)?);
    let pw_file = scratch.join("physician.pw");
    std::fs::write(&pw_file, format!("{password}\n")).context("cannot write the password file")?;
    let totp_file = scratch.join("physician.totp");
    let practitioner_ref = format!("Practitioner/{practitioner}");
    cli(
        bin,
        data,
        &[
            "user",
            "add",
            "drbench",
            "--role",
            "physician",
            "--practitioner",
            &practitioner_ref,
            "--password-file",
            &pw_file.display().to_string(),
            "--totp-secret-out",
            &totp_file.display().to_string(),
        ],
    )?;
    let otpauth = std::fs::read_to_string(&totp_file).context("cannot read the TOTP key")?;
    let totp_key = otpauth_secret(&otpauth).context("the otpauth URI has no secret")?;
    cli(
        bin,
        data,
        &[
            "client",
            "add",
            "bench-app",
            "--scope",
            "openid fhirUser user/*.rs",
            "--redirect-uri",
            APP_REDIRECT,
            "--public",
        ],
    )?;
    let cert = std::fs::read(data.join("tls").join("cert.pem")).context("cannot read the cert")?;
    let t0 = Instant::now();
    let user_token = smart_sign_in(&root, &cert, "drbench", &password, &totp_key).await?;
    figures.push(Figure {
        value: Some(t0.elapsed().as_secs_f64() * 1000.0),
        unit: "ms",
        note: Some(
            "one whole sign-in: /login (password + TOTP), /oauth2/authorize consent, /oauth2/token with PKCE (single run)"
                .into(),
        ),
        ..Figure::skipped("smart_sign_in_once", "ms", Floor::None, "")
    });
    let user_bearer = format!("Bearer {user_token}");

    // 4. Reads: physician, then the same reads by the system client.
    let user_reads = read_phases(target, &sample, &user_bearer, bounds, "physician").await;
    for (name, p) in &user_reads.phases {
        figures.push(Figure::from_phase(
            &format!("read_{name}_physician"),
            Floor::None,
            ceil_rps.filter(|_| name.ends_with("c16")),
            p.clone(),
        ));
    }
    let system = crate::fetch_token(target, "bench", &secret).await?;
    let system_reads = read_phases(target, &sample, &system.header, bounds, "system client").await;
    for (name, p) in &system_reads.phases {
        figures.push(Figure::from_phase(
            &format!("read_{name}_system_client"),
            Floor::None,
            ceil_rps.filter(|_| name.ends_with("c16")),
            p.clone(),
        ));
    }
    Ok((figures, (user_reads, system_reads)))
}

async fn drive_base(
    args: &AccessArgs,
    bin: &Path,
    data: &Path,
    synthea: &Path,
    scratch: &Path,
    target: &Target,
    bounds: Bounds,
) -> anyhow::Result<(ReadSet, Option<f64>)> {
    progress("base: importing Synthea");
    crate::server::import(bin, data, synthea, scratch)?;
    let ceil = ceiling(target, bounds).await;
    let secret = crate::server::add_client(bin, data, scratch)?;
    let system = crate::fetch_token(target, "bench", &secret).await?;
    let sample = read_sample(target, &system.header, args.patients).await?;
    let reads = read_phases(target, &sample, &system.header, bounds, "base").await;
    Ok((reads, Some(ceil.per_second)))
}

/// The token endpoint the server advertises (SMART configuration).
async fn token_endpoint(target: &Target) -> anyhow::Result<String> {
    let mut conn = target.connect().await?;
    let reply = conn
        .send(
            Method::GET,
            "/.well-known/smart-configuration",
            &[("accept", "application/json")],
            Bytes::new(),
        )
        .await?;
    if !reply.status.is_success() {
        bail!(
            "GET /.well-known/smart-configuration answered {}",
            reply.status
        );
    }
    reply.json()?["token_endpoint"]
        .as_str()
        .map(str::to_owned)
        .context("the SMART configuration has no token_endpoint")
}

async fn post_resource(
    target: &Target,
    bearer: &str,
    rtype: &str,
    body: Value,
) -> anyhow::Result<String> {
    let mut conn = target.connect().await?;
    let reply = conn
        .send(
            Method::POST,
            &format!("/fhir/{rtype}"),
            &[
                ("authorization", bearer),
                ("content-type", "application/fhir+json"),
                ("accept", "application/fhir+json"),
            ],
            Bytes::from(body.to_string()),
        )
        .await?;
    if !reply.status.is_success() {
        bail!(
            "POST /fhir/{rtype} answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    reply.json()?["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("the created {rtype} has no id"))
}

/// An in-progress Encounter of `patient` with `practitioner` as participant.
fn encounter_body(patient: &str, practitioner: &str) -> Value {
    json!({
        "resourceType": "Encounter",
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{patient}")},
        "participant": [{"individual": {"reference": format!("Practitioner/{practitioner}")}}],
        "period": {"start": "2026-01-01T08:00:00Z"}
    })
}

/// POST /oauth2/token over keep-alive connections, each body sent once (`bodies.len() > 1`) or
/// the single body repeated, bounded in time and by `bounds.max_requests`.
async fn token_phase(
    target: &Target,
    bounds: Bounds,
    bodies: Arc<Vec<String>>,
    authorization: Option<String>,
) -> PhaseSummary {
    let unique = bodies.len() > 1;
    let limit = if unique {
        (bodies.len() as u64).min(bounds.max_requests)
    } else {
        bounds.max_requests
    };
    let mut conns = Vec::with_capacity(CONNECTIONS);
    let mut connect_errors = WorkerStats::default();
    for _ in 0..CONNECTIONS {
        match target.connect().await {
            Ok(c) => conns.push(Some(c)),
            Err(_) => {
                connect_errors.record(0, Duration::ZERO);
                conns.push(None);
            }
        }
    }
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + bounds.duration;
    let mut handles = Vec::new();
    for conn in conns {
        let (target, counter, bodies, authorization) = (
            target.clone(),
            counter.clone(),
            bodies.clone(),
            authorization.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut stats = WorkerStats::default();
            let mut conn = conn;
            let mut failures_in_a_row = 0u32;
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= limit {
                    break;
                }
                if conn.as_ref().is_none_or(|c| !c.is_open()) {
                    conn = target.connect().await.ok();
                }
                let Some(c) = conn.as_mut() else {
                    stats.record(0, Duration::ZERO);
                    failures_in_a_row += 1;
                    if failures_in_a_row > 20 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let body = &bodies[if unique { n as usize } else { 0 }];
                let mut headers = vec![
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("accept", "application/json"),
                ];
                if let Some(a) = &authorization {
                    headers.push(("authorization", a));
                }
                let t0 = Instant::now();
                match c
                    .send(
                        Method::POST,
                        "/oauth2/token",
                        &headers,
                        Bytes::from(body.clone()),
                    )
                    .await
                {
                    Ok(reply) => {
                        failures_in_a_row = 0;
                        // A 200 without an access token is a failure too.
                        let ok = reply.status.is_success()
                            && reply
                                .json()
                                .ok()
                                .is_some_and(|v| v["access_token"].is_string());
                        let status = if ok || !reply.status.is_success() {
                            reply.status.as_u16()
                        } else {
                            599
                        };
                        stats.record(status, t0.elapsed());
                    }
                    Err(_) => {
                        stats.record(0, t0.elapsed());
                        conn = None;
                    }
                }
            }
            stats
        }));
    }
    let mut workers = vec![connect_errors];
    for h in handles {
        if let Ok(s) = h.await {
            workers.push(s);
        }
    }
    PhaseSummary::from_workers(CONNECTIONS, workers, start.elapsed())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    Ok(b)
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let b = random_bytes::<32>()?;
    Ok(b[..bytes.min(32)]
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect())
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The claims of a SMART Backend Services client assertion, valid for 4 min 40 s.
fn assertion_claims(client_id: &str, token_url: &str, now: u64, jti: &str) -> Value {
    json!({
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": now,
        "exp": now + 280,
        "jti": jti,
    })
}

/// The form body of a `client_credentials` request authenticated by `jwt`.
fn assertion_body(jwt: &str, scope: &str) -> String {
    format!(
        "grant_type=client_credentials&scope={}&client_assertion_type={}&client_assertion={}",
        crate::form_encode(scope),
        crate::form_encode(JWT_BEARER),
        crate::form_encode(jwt)
    )
}

#[derive(Debug, Clone, Copy)]
enum Alg {
    Es384,
    Rs384,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Es384 => "ES384",
            Alg::Rs384 => "RS384",
        }
    }
    fn kid(self) -> &'static str {
        match self {
            Alg::Es384 => "bench-es384",
            Alg::Rs384 => "bench-rs384",
        }
    }
}

/// The backend client's two key pairs.
struct BenchKeys {
    ec: aws_lc_rs::signature::EcdsaKeyPair,
    rsa: aws_lc_rs::rsa::KeyPair,
}

impl BenchKeys {
    fn generate() -> anyhow::Result<Self> {
        let ec = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        )
        .map_err(|_| anyhow::anyhow!("cannot generate a P-384 key"))?;
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| anyhow::anyhow!("cannot generate an RSA key"))?;
        Ok(Self { ec, rsa })
    }

    /// The public JWK set (no private members).
    fn jwks(&self) -> anyhow::Result<Value> {
        let point = self.ec.public_key().as_ref();
        if point.len() != 97 || point[0] != 4 {
            bail!("unexpected P-384 public key encoding");
        }
        let rsa = self.rsa.public_key();
        Ok(json!({"keys": [
            {"kty": "EC", "crv": "P-384", "x": b64url(&point[1..49]), "y": b64url(&point[49..]),
             "alg": "ES384", "use": "sig", "kid": Alg::Es384.kid()},
            {"kty": "RSA", "n": b64url(rsa.modulus().big_endian_without_leading_zero()),
             "e": b64url(rsa.exponent().big_endian_without_leading_zero()),
             "alg": "RS384", "use": "sig", "kid": Alg::Rs384.kid()},
        ]}))
    }

    /// A compact JWS of `claims`.
    fn sign(&self, alg: Alg, claims: &Value) -> anyhow::Result<String> {
        let header = json!({"alg": alg.name(), "typ": "JWT", "kid": alg.kid()});
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = match alg {
            Alg::Es384 => self
                .ec
                .sign(&rng, signing_input.as_bytes())
                .map_err(|_| anyhow::anyhow!("ES384 signing failed"))?
                .as_ref()
                .to_vec(),
            Alg::Rs384 => {
                let mut sig = vec![0u8; self.rsa.public_modulus_len()];
                self.rsa
                    .sign(
                        &aws_lc_rs::signature::RSA_PKCS1_SHA384,
                        &rng,
                        signing_input.as_bytes(),
                        &mut sig,
                    )
                    .map_err(|_| anyhow::anyhow!("RS384 signing failed"))?;
                sig
            }
        };
        Ok(format!("{signing_input}.{}", b64url(&sig)))
    }
}

/// The base32 `secret` of an `otpauth://` URI.
fn otpauth_secret(uri: &str) -> Option<String> {
    let q = uri.trim().split_once('?')?.1;
    q.split('&')
        .find_map(|kv| kv.strip_prefix("secret="))
        .map(str::to_owned)
}

/// RFC 4648 base32 (upper or lower case, padding optional).
fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u64, 0u32);
    for c in s.trim_end_matches('=').chars() {
        let v = match c.to_ascii_uppercase() {
            c @ 'A'..='Z' => c as u64 - 'A' as u64,
            c @ '2'..='7' => c as u64 - '2' as u64 + 26,
            _ => return None,
        };
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// RFC 6238 TOTP (HMAC-SHA1, 30 s steps) of `key` at `unix` seconds, `digits` long.
fn totp(key: &[u8], unix: u64, digits: u32) -> String {
    let counter = unix / 30;
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let mac = aws_lc_rs::hmac::sign(&k, &counter.to_be_bytes());
    let h = mac.as_ref();
    let off = (h[h.len() - 1] & 0x0f) as usize;
    let bin = (u32::from(h[off] & 0x7f) << 24)
        | (u32::from(h[off + 1]) << 16)
        | (u32::from(h[off + 2]) << 8)
        | u32::from(h[off + 3]);
    let code = bin % 10u32.pow(digits);
    format!("{code:0width$}", width = digits as usize)
}

/// PKCE S256: the challenge of `verifier`.
fn pkce_challenge(verifier: &str) -> String {
    b64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref())
}

fn between<'a>(text: &'a str, before: &str, after: &str) -> Option<&'a str> {
    let start = text.find(before)? + before.len();
    let end = text[start..].find(after)? + start;
    Some(&text[start..end])
}

/// A tiny browser: one session cookie, no automatic redirects.
struct Browser {
    http: reqwest::Client,
    root: String,
    cookie: Option<String>,
}

struct Page {
    status: u16,
    location: String,
    body: String,
}

impl Browser {
    async fn finish(&mut self, req: reqwest::RequestBuilder) -> anyhow::Result<Page> {
        let req = match &self.cookie {
            Some(c) => req.header("cookie", c.as_str()),
            None => req,
        };
        let resp = req.send().await.context("a sign-in request failed")?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.context("reading a sign-in page failed")?;
        if let Some(sc) = headers.get("set-cookie").and_then(|v| v.to_str().ok()) {
            let pair = sc.split(';').next().unwrap_or("").trim().to_owned();
            self.cookie = (!sc.contains("Max-Age=0") && !pair.is_empty()).then_some(pair);
        }
        let location = headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Ok(Page {
            status,
            location,
            body,
        })
    }

    async fn get(&mut self, path: &str) -> anyhow::Result<Page> {
        let req = self.http.get(format!("{}{path}", self.root));
        self.finish(req).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> anyhow::Result<Page> {
        let req = self.http.post(format!("{}{path}", self.root)).form(form);
        self.finish(req).await
    }
}

/// Signs in through /login (password + TOTP), approves /oauth2/authorize, and redeems the code
/// with PKCE; returns the access token.
async fn smart_sign_in(
    root: &str,
    cert_pem: &[u8],
    user: &str,
    password: &str,
    totp_key_b32: &str,
) -> anyhow::Result<String> {
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem).context("bad certificate")?])
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .context("cannot build the HTTP client")?;
    let mut b = Browser {
        http,
        root: root.to_owned(),
        cookie: None,
    };
    let verifier = b64url(&random_bytes::<32>()?);
    let state = random_hex(16)?;
    let scope = "openid fhirUser user/*.rs";
    let aud = format!("{root}/fhir");
    let params: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", "bench-app"),
        ("redirect_uri", APP_REDIRECT),
        ("scope", scope),
        ("state", &state),
        ("aud", &aud),
        ("code_challenge_method", "S256"),
    ];
    let challenge = pkce_challenge(&verifier);
    let mut all = params.clone();
    all.push(("code_challenge", &challenge));
    let query = all
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::query_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let authorize = format!("/oauth2/authorize?{query}");
    // Not signed in: the authorize endpoint sends the browser to /login.
    let first = b.get(&authorize).await?;
    if !(300..400).contains(&first.status) || !first.location.starts_with("/login") {
        bail!(
            "GET /oauth2/authorize answered {} (to {:?}) instead of a redirect to /login",
            first.status,
            first.location
        );
    }
    let login = b.get(&first.location).await?;
    let csrf = between(&login.body, "name=\"csrf\" value=\"", "\"")
        .context("the sign-in page has no CSRF field")?
        .to_owned();
    let return_to = between(&login.body, "name=\"return_to\" value=\"", "\"")
        .map(|s| s.replace("&amp;", "&"))
        .unwrap_or_else(|| authorize.clone());
    let key = base32_decode(totp_key_b32).context("the TOTP key is not base32")?;
    let code = totp(&key, unix_now(), 6);
    let signed = b
        .post(
            "/login",
            &[
                ("csrf", &csrf),
                ("username", user),
                ("password", password),
                ("otp", &code),
                ("return_to", &return_to),
            ],
        )
        .await?;
    if !(300..400).contains(&signed.status) || !signed.location.starts_with("/oauth2/authorize") {
        bail!(
            "POST /login answered {} (to {:?}): the sign-in failed",
            signed.status,
            signed.location
        );
    }
    let consent = b.get(&signed.location).await?;
    if consent.status != 200 {
        bail!("the consent page answered {}", consent.status);
    }
    let csrf = between(&consent.body, "name=\"csrf\" value=\"", "\"")
        .context("the consent page has no CSRF field")?
        .to_owned();
    let mut form = all.clone();
    form.push(("csrf", &csrf));
    form.push(("decision", "approve"));
    let approved = b.post("/oauth2/authorize", &form).await?;
    let url = reqwest::Url::parse(&approved.location)
        .with_context(|| format!("consent answered {} without a redirect", approved.status))?;
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let got = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if got("state").as_deref() != Some(state.as_str()) {
        bail!("the authorization response's state does not match");
    }
    let code = got("code").with_context(|| {
        format!(
            "the authorization response has no code: {:?}",
            got("error_description")
        )
    })?;
    let resp = b
        .http
        .post(format!("{root}/oauth2/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", APP_REDIRECT),
            ("code_verifier", &verifier),
            ("client_id", "bench-app"),
        ])
        .send()
        .await
        .context("the code redemption failed")?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .context("the token response is not JSON")?;
    if !status.is_success() {
        bail!("POST /oauth2/token (authorization_code) answered {status}: {body}");
    }
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("the token response has no access_token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totp_matches_rfc_6238_vectors() {
        // RFC 6238 appendix B, SHA-1 key "12345678901234567890".
        let key = b"12345678901234567890";
        assert_eq!(totp(key, 59, 8), "94287082");
        assert_eq!(totp(key, 1_111_111_109, 8), "07081804");
        assert_eq!(totp(key, 1_234_567_890, 8), "89005924");
        assert_eq!(totp(key, 2_000_000_000, 8), "69279037");
        assert_eq!(totp(key, 59, 6), "287082");
    }

    #[test]
    fn base32_and_otpauth() {
        // RFC 4648 section 10.
        assert_eq!(base32_decode("MZXW6YTBOI======").unwrap(), b"foobar");
        assert_eq!(base32_decode("mzxw6ytb").unwrap(), b"fooba");
        assert!(base32_decode("M1").is_none());
        assert_eq!(
            otpauth_secret("otpauth://totp/carevault:dr?secret=ABCD&issuer=carevault\n").as_deref(),
            Some("ABCD")
        );
        assert_eq!(otpauth_secret("otpauth://totp/x?issuer=y"), None);
    }

    #[test]
    fn pkce_matches_rfc_7636_example() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    fn decode_part(p: &str) -> Value {
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn assertions_verify_with_the_published_keys() {
        let keys = BenchKeys::generate().unwrap();
        let jwks = keys.jwks().unwrap();
        for k in jwks["keys"].as_array().unwrap() {
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                assert!(k.get(private).is_none(), "no private member {private}");
            }
        }
        let url = "https://127.0.0.1:8443/oauth2/token";
        let claims = assertion_claims("cid", url, 1_000, "j1");
        assert_eq!(claims["iss"], "cid");
        assert_eq!(claims["sub"], "cid");
        assert_eq!(claims["aud"], url);
        assert_eq!(claims["exp"], 1_280);
        assert_eq!(claims["jti"], "j1");
        let d = |s: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .unwrap()
        };
        // ES384 with the JWK's x and y.
        let jwt = keys.sign(Alg::Es384, &claims).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(decode_part(parts[0])["alg"], "ES384");
        assert_eq!(decode_part(parts[1]), claims);
        let ec = &jwks["keys"][0];
        let mut point = vec![4u8];
        point.extend(d(ec["x"].as_str().unwrap()));
        point.extend(d(ec["y"].as_str().unwrap()));
        let signed = format!("{}.{}", parts[0], parts[1]);
        let sig = d(parts[2]);
        assert_eq!(sig.len(), 96, "JWS ES384 signatures are r||s");
        let pk = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED,
            &point,
        );
        assert!(pk.verify(signed.as_bytes(), &sig).is_ok());
        assert!(pk.verify(b"other", &sig).is_err());
        // RS384 with the JWK's n and e.
        let jwt = keys.sign(Alg::Rs384, &claims).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(decode_part(parts[0])["alg"], "RS384");
        let rsa = &jwks["keys"][1];
        let components = aws_lc_rs::signature::RsaPublicKeyComponents {
            n: d(rsa["n"].as_str().unwrap()),
            e: d(rsa["e"].as_str().unwrap()),
        };
        let signed = format!("{}.{}", parts[0], parts[1]);
        assert!(
            components
                .verify(
                    &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA384,
                    signed.as_bytes(),
                    &d(parts[2])
                )
                .is_ok()
        );
    }

    #[test]
    fn assertion_body_is_form_encoded() {
        let b = assertion_body("a.b-c_d.e", "system/*.rs");
        assert_eq!(
            b,
            "grant_type=client_credentials&scope=system%2F*.rs&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=a.b-c_d.e"
        );
    }

    #[test]
    fn encounter_links_patient_and_practitioner() {
        let e = encounter_body("p1", "pr1");
        assert_eq!(e["status"], "in-progress");
        assert_eq!(e["subject"]["reference"], "Patient/p1");
        assert_eq!(
            e["participant"][0]["individual"]["reference"],
            "Practitioner/pr1"
        );
    }

    #[test]
    fn args_parse() {
        let a =
            AccessArgs::try_parse_from(["access", "--base-bin", "/b", "--seconds", "3"]).unwrap();
        assert_eq!(a.seconds, 3);
        assert_eq!(a.base_bin.as_deref(), Some(Path::new("/b")));
        assert!(AccessArgs::try_parse_from(["access", "--bogus"]).is_err());
    }
}
