//! The carevault benchmark tool: builds and starts the release server on a scratch directory,
//! imports the Synthea set, drives it over HTTPS with keep-alive connections and prints one JSON
//! report with each figure beside its floor and as a fraction of the bare-TLS ceiling.
//!
//! `cargo run --release -p carevault-bench -- [--synthea DIR] [--out FILE]`; progress goes to
//! stderr, the report to stdout (and `--out`). Exit status: 0 all floors met, 1 a floor missed or
//! the run failed, 2 usage.
#![forbid(unsafe_code)]

mod access_bench;
mod audit;
mod client;
mod keys_bench;
mod load;
mod policy_bench;
mod report;
mod server;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http::Method;
use serde_json::{Value, json};

use crate::client::Target;
use crate::load::{Bounds, RequestSpec, run_phase};
use crate::report::{Figure, Floor};
use crate::server::Server;

/// Benchmark carevault end to end and print a JSON report.
#[derive(Parser, Debug)]
#[command(name = "carevault-bench", version)]
struct Args {
    /// Synthea R4 folder to import (default: ../shared/data/synthea-r4 beside the repository).
    #[arg(long, value_name = "DIR")]
    synthea: Option<PathBuf>,
    /// Also write the JSON report to FILE.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Longest duration of each load phase, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Most requests of each load phase.
    #[arg(long, default_value_t = 200_000)]
    max_requests: u64,
    /// Use an existing server binary instead of running `cargo build --release -p carevault`.
    #[arg(long, value_name = "FILE")]
    bin: Option<PathBuf>,
    /// Keep the scratch directory (data, logs) and print where it is.
    #[arg(long)]
    keep: bool,
    /// Run the encryption-at-rest benchmark instead of the core one: raw AEAD, import and
    /// reads with encryption on vs off, data-key rotation speed.
    #[arg(long)]
    encryption: bool,
    /// With --encryption: the benchmark-only plaintext binary (default: build it into
    /// `<target>/bench-plaintext`).
    #[arg(long, value_name = "FILE")]
    plaintext_bin: Option<PathBuf>,
}

/// Floors from PRODUCT.md section 7.
const IMPORT_FLOOR: f64 = 3000.0;
const READ_FLOOR: f64 = 3000.0;
const CREATE_FLOOR: f64 = 500.0;
const SEARCH_FLOOR: f64 = 500.0;
const RSS_FLOOR_MB: f64 = 300.0;

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "access") {
        return access_bench::main(std::env::args_os().skip(1));
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "audit") {
        return audit::main(std::env::args_os().skip(1));
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "policy") {
        return policy_bench::main(std::env::args_os().skip(1));
    }
    let args = Args::parse();
    report::finish_async("carevault-bench", args.out.as_deref(), true, run(&args))
}

/// The repository root (this crate is `crates/bench`).
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn progress(msg: &str) {
    eprintln!("[bench] {msg}");
}

async fn run(args: &Args) -> anyhow::Result<Value> {
    let synthea = args
        .synthea
        .clone()
        .unwrap_or_else(|| workspace_root().join("../shared/data/synthea-r4"));
    if !synthea.exists() {
        bail!(
            "the Synthea folder {} does not exist; pass --synthea DIR",
            synthea.display()
        );
    }
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => server::build_release()?,
    };
    if args.encryption {
        let plaintext = match &args.plaintext_bin {
            Some(b) => b.clone(),
            None => keys_bench::build_plaintext()?,
        };
        let bounds = Bounds {
            duration: Duration::from_secs(args.seconds.max(1)),
            max_requests: args.max_requests.max(1),
        };
        let (figures, context) = keys_bench::run(&bin, &plaintext, &synthea, bounds).await?;
        return Ok(report::report(&figures, report::machine(), context, None));
    }
    let scratch = tempfile::Builder::new()
        .prefix("carevault-bench-")
        .tempdir()
        .context("cannot create a scratch dir")?;
    let scratch_path = scratch.path().to_path_buf();
    let data = scratch_path.join("data");
    let bounds = Bounds {
        duration: Duration::from_secs(args.seconds.max(1)),
        max_requests: args.max_requests.max(1),
    };

    progress(&format!(
        "starting {} serve on a scratch directory",
        bin.display()
    ));
    let mut srv = Server::start(&bin, &data, &scratch_path).await?;
    let result = drive(&bin, &data, &synthea, &scratch_path, &mut srv, bounds).await;
    let hwm_mb = srv.peak_rss_mb();
    progress("stopping the server with SIGTERM");
    let shutdown = srv.stop(Duration::from_secs(30));
    let (mut figures, mut context) = match result {
        Ok(r) => r,
        Err(e) => {
            let msg = e
                .chain()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": ");
            (
                Vec::new(),
                json!({"error": msg, "server_log_tail": srv.log_tail(20)}),
            )
        }
    };
    figures.push(match hwm_mb {
        Some(mb) => Figure {
            value: Some(mb),
            unit: "MB",
            floor: Floor::AtMost(RSS_FLOOR_MB),
            note: Some("server VmHWM (peak resident set) at the end of the run".into()),
            ..Figure::skipped("server_peak_rss", "MB", Floor::None, "")
        },
        None => Figure::skipped(
            "server_peak_rss",
            "MB",
            Floor::AtMost(RSS_FLOOR_MB),
            "could not read /proc/PID/status",
        ),
    });
    if let Some(obj) = context.as_object_mut() {
        obj.insert(
            "shutdown".into(),
            json!({"exit_code": shutdown.exit_code, "seconds": shutdown.seconds}),
        );
        obj.insert("server_bin".into(), json!(bin.display().to_string()));
        obj.insert("synthea".into(), json!(synthea.display().to_string()));
        obj.insert("phase_seconds".into(), json!(bounds.duration.as_secs()));
        obj.insert("max_requests_per_phase".into(), json!(bounds.max_requests));
    }
    if args.keep {
        let kept = scratch.keep();
        progress(&format!("kept the scratch directory {}", kept.display()));
    }
    Ok(report::report(
        &figures,
        report::machine(),
        context,
        Some(shutdown.exit_code == Some(0)),
    ))
}

/// Bearer token with its age, refreshed before it runs out.
pub(crate) struct Token {
    header: String,
    obtained: Instant,
    lifetime: Duration,
}

pub(crate) async fn fetch_token(
    target: &Target,
    client_id: &str,
    secret: &str,
) -> anyhow::Result<Token> {
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        form_encode(client_id),
        form_encode(secret)
    ));
    let mut conn = target.connect().await?;
    let reply = conn
        .send(
            Method::POST,
            "/oauth2/token",
            &[
                ("authorization", &format!("Basic {basic}")),
                ("content-type", "application/x-www-form-urlencoded"),
                ("accept", "application/json"),
            ],
            Bytes::from_static(b"grant_type=client_credentials"),
        )
        .await?;
    if !reply.status.is_success() {
        bail!(
            "POST /oauth2/token answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    let body = reply.json()?;
    let token = body["access_token"]
        .as_str()
        .context("the token response has no access_token")?;
    let lifetime = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(300));
    Ok(Token {
        header: format!("Bearer {token}"),
        obtained: Instant::now(),
        lifetime,
    })
}

/// RFC 6749 2.3.1: client id and secret are form-urlencoded before Basic encoding.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Ids and search values taken from the loaded data.
#[derive(Debug, Default)]
pub(crate) struct Sample {
    patients: Vec<String>,
    observations: Vec<String>,
    family: Option<String>,
    patient_with_code: Option<(String, String)>,
}

pub(crate) async fn discover(target: &Target, bearer: &str) -> anyhow::Result<Sample> {
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
    let mut sample = Sample::default();
    let patients = get("/fhir/Patient?_count=100").await?;
    for r in resources(&patients) {
        if let Some(id) = r["id"].as_str() {
            sample.patients.push(id.to_owned());
        }
        if sample.family.is_none() {
            sample.family = r["name"][0]["family"].as_str().map(str::to_owned);
        }
    }
    let observations = get("/fhir/Observation?_count=200").await?;
    for r in resources(&observations) {
        if let Some(id) = r["id"].as_str() {
            sample.observations.push(id.to_owned());
        }
        if sample.patient_with_code.is_none()
            && let (Some(subject), Some(code)) = (
                r["subject"]["reference"].as_str(),
                r["code"]["coding"][0]["code"].as_str(),
            )
            && let Some(pid) = subject.strip_prefix("Patient/")
        {
            sample.patient_with_code = Some((pid.to_owned(), code.to_owned()));
        }
    }
    Ok(sample)
}

fn resources(bundle: &Value) -> impl Iterator<Item = &Value> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
}

/// Percent-encodes a query value.
fn query_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn observation_body(patient: &str) -> Bytes {
    Bytes::from(
        json!({
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
            "subject": {"reference": format!("Patient/{patient}")},
            "effectiveDateTime": "2024-01-01T10:00:00Z",
            "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
        })
        .to_string(),
    )
}

async fn drive(
    bin: &std::path::Path,
    data: &std::path::Path,
    synthea: &std::path::Path,
    scratch: &std::path::Path,
    srv: &mut Server,
    bounds: Bounds,
) -> anyhow::Result<(Vec<Figure>, Value)> {
    let target = srv.target().clone();
    let mut figures = Vec::new();
    let mut context = json!({"fingerprint_matches": srv.fingerprint_matches()});

    // 1. Import (an admin command, run while the server is up, as the contract allows).
    progress(&format!("importing {}", synthea.display()));
    let import = server::import(bin, data, synthea, scratch)?;
    context["import"] = json!({
        "resources": import.resources, "wall_seconds": import.wall_seconds,
        "tool_seconds": import.tool_seconds, "rejected": import.rejected,
    });
    figures.push(Figure {
        value: Some(import.resources as f64 / import.wall_seconds.max(1e-9)),
        unit: "resources/s",
        floor: Floor::AtLeast(IMPORT_FLOOR),
        note: Some(format!(
            "{} resources; wall time of the whole `carevault import` process (the tool itself reports {:.0} resources/s); no HTTP, so no TLS ceiling",
            import.resources,
            import.resources as f64 / import.tool_seconds.unwrap_or(import.wall_seconds).max(1e-9)
        )),
        ..Figure::skipped("import", "resources/s", Floor::None, "")
    });

    // 2. Client and token.
    let secret = server::add_client(bin, data, scratch)?;
    let mut token = fetch_token(&target, "bench", &secret).await?;

    // 3. Sample ids and search values from the data.
    let sample = discover(&target, &token.header).await?;
    context["sample"] =
        json!({"patients": sample.patients.len(), "observations": sample.observations.len()});

    // 4. Ceiling: bare TLS endpoint.
    let mut ceiling = std::collections::HashMap::new();
    for c in [1usize, 16, 64] {
        progress(&format!("GET /healthz at {c} connections (ceiling)"));
        let p = run_phase(
            &target,
            c,
            bounds,
            None,
            Arc::new(|_| RequestSpec::get("/healthz")),
        )
        .await;
        ceiling.insert(c, p.per_second);
        figures.push(Figure::from_phase(
            &format!("ceiling_healthz_c{c}"),
            Floor::None,
            Some(p.per_second),
            p,
        ));
    }

    let refresh = async |token: &mut Token| -> anyhow::Result<String> {
        if token.obtained.elapsed() + bounds.duration + Duration::from_secs(60) > token.lifetime {
            *token = fetch_token(&target, "bench", &secret).await?;
        }
        Ok(token.header.clone())
    };

    // 5. Reads by id.
    for (kind, ids) in [
        ("Patient", &sample.patients),
        ("Observation", &sample.observations),
    ] {
        for c in [1usize, 16, 64] {
            let name = format!("read_{}_c{c}", kind.to_lowercase());
            let floor = if c == 16 {
                Floor::AtLeast(READ_FLOOR)
            } else {
                Floor::None
            };
            if ids.is_empty() {
                figures.push(Figure::skipped(
                    &name,
                    "req/s",
                    floor,
                    format!("no {kind} ids found by search"),
                ));
                continue;
            }
            progress(&format!("GET /fhir/{kind}/{{id}} at {c} connections"));
            let bearer = refresh(&mut token).await?;
            let paths: Arc<Vec<String>> =
                Arc::new(ids.iter().map(|id| format!("/fhir/{kind}/{id}")).collect());
            let make =
                Arc::new(move |n: u64| RequestSpec::get(paths[(n as usize) % paths.len()].clone()));
            let p = run_phase(&target, c, bounds, Some(bearer), make).await;
            figures.push(Figure::from_phase(
                &name,
                floor,
                ceiling.get(&c).copied(),
                p,
            ));
        }
    }

    // 6. Searches, on the imported Synthea set (before the create phase adds thousands of
    //    Observations to one patient, which would change what the search measures).
    let searches = [
        (
            "search_patient_family_c16",
            sample
                .family
                .as_ref()
                .map(|f| format!("/fhir/Patient?family={}", query_encode(f))),
        ),
        (
            "search_observation_patient_code_c16",
            sample.patient_with_code.as_ref().map(|(p, code)| {
                format!(
                    "/fhir/Observation?patient={}&code={}",
                    query_encode(p),
                    query_encode(code)
                )
            }),
        ),
        (
            "search_encounter_date_c16",
            Some("/fhir/Encounter?date=ge2020-01-01".to_owned()),
        ),
    ];
    for (name, path) in searches {
        let Some(path) = path else {
            figures.push(Figure::skipped(
                name,
                "req/s",
                Floor::AtLeast(SEARCH_FLOOR),
                "no search value found in the data",
            ));
            continue;
        };
        progress(name);
        let bearer = refresh(&mut token).await?;
        let make = Arc::new(move |_| RequestSpec::get(path.clone()));
        let p = run_phase(&target, 16, bounds, Some(bearer), make).await;
        figures.push(Figure::from_phase(
            name,
            Floor::AtLeast(SEARCH_FLOOR),
            ceiling.get(&16).copied(),
            p,
        ));
    }
    // 7. Creates.
    match sample.patients.first() {
        Some(pid) => {
            progress("POST /fhir/Observation at 16 connections");
            let bearer = refresh(&mut token).await?;
            let body = observation_body(pid);
            let make = Arc::new(move |_| RequestSpec {
                method: Method::POST,
                path: "/fhir/Observation".into(),
                body: body.clone(),
            });
            let p = run_phase(&target, 16, bounds, Some(bearer), make).await;
            figures.push(Figure::from_phase(
                "create_observation_c16",
                Floor::AtLeast(CREATE_FLOOR),
                ceiling.get(&16).copied(),
                p,
            ));
        }
        None => figures.push(Figure::skipped(
            "create_observation_c16",
            "req/s",
            Floor::AtLeast(CREATE_FLOOR),
            "no Patient found",
        )),
    }

    context["searches"] = json!([
        "Patient?family=<family name of a loaded patient>",
        "Observation?patient=<id>&code=<a code that patient has>",
        "Encounter?date=ge2020-01-01"
    ]);
    Ok((figures, context))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(form_encode("a b+c:d"), "a+b%2Bc%3Ad");
        assert_eq!(form_encode("AZaz09-._"), "AZaz09-._");
        assert_eq!(query_encode("O'Neil 1"), "O%27Neil%201");
    }

    #[test]
    fn observation_body_references_the_patient() {
        let v: Value = serde_json::from_slice(&observation_body("p1")).unwrap();
        assert_eq!(v["subject"]["reference"], "Patient/p1");
        assert_eq!(v["resourceType"], "Observation");
    }

    #[test]
    fn resources_of_a_bundle() {
        let b = json!({"entry": [{"resource": {"id": "a"}}, {"resource": {"id": "b"}}]});
        assert_eq!(
            resources(&b)
                .filter_map(|r| r["id"].as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(resources(&json!({})).count(), 0);
    }

    #[test]
    fn args_parse() {
        let a = Args::try_parse_from(["b", "--synthea", "/x", "--out", "o.json", "--seconds", "3"])
            .unwrap();
        assert_eq!(a.seconds, 3);
        assert_eq!(a.synthea.as_deref(), Some(std::path::Path::new("/x")));
        assert!(Args::try_parse_from(["b", "--bogus"]).is_err());
    }
}
