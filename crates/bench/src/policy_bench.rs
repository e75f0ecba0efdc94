//! `carevault-bench policy`: the time of the authorization decision the server makes on a read,
//! over a realistic relationship set (1,000 practitioners, 100,000 patients, 1,000,000
//! encounters) held in the store's own care-relationship tables and indexes.
//!
//! One decision = the policy's requirement for the principal's roles on the type (a cached
//! lookup) + the practitioner's care actors + the relationship probe for the patient +
//! `Engine::decide` for the concrete request (the reason its audit event records). Measured in
//! process, one request at a time, so the figures are the decision's own cost.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use carevault_crypto::Keyring;
use carevault_policy::{Action, Engine, Facts, Principal, Requirement, Role};
use carevault_store::care::{
    BILLING_ACTOR, CareKind, CareRel, CareRows, CareWindows, DAY_MS, RoleActor,
};
use carevault_store::{SqliteStore, Store};
use clap::Parser;
use serde_json::{Value, json};

use crate::stats::percentile;

/// Measure policy decision time per request over a realistic relationship set.
#[derive(Parser, Debug)]
#[command(name = "carevault-bench policy")]
struct PolicyArgs {
    /// Practitioners (each with one PractitionerRole on one of 50 wards).
    #[arg(long, default_value_t = 1_000)]
    practitioners: u32,
    /// Patients (each with a general practitioner).
    #[arg(long, default_value_t = 100_000)]
    patients: u32,
    /// Encounters over the last five years (1% still in progress, on a ward).
    #[arg(long, default_value_t = 1_000_000)]
    encounters: u32,
    /// Decisions to time.
    #[arg(long, default_value_t = 200_000)]
    requests: u32,
    /// Also write the JSON report to FILE.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// A small deterministic generator (xorshift64*), so every run builds the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n.max(1))) as u32
    }
}

/// 2026-01-01T00:00:00Z: "now" of the benchmark.
const NOW_MS: i64 = 1_767_225_600_000;
const WARDS: u32 = 50;

/// The practitioners who look after patient `p` (a stable pool of three).
fn pool(p: u32, practitioners: u32) -> [u32; 3] {
    let base = p.wrapping_mul(2_654_435_761) % practitioners;
    [
        base,
        (base + 1 + p % 7) % practitioners,
        (base + 13 + p % 11) % practitioners,
    ]
}

fn build_rows(a: &PolicyArgs) -> impl Iterator<Item = (i64, CareRows)> + '_ {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let encounters = (0..a.encounters).map(move |e| {
        let patient = rng.below(a.patients);
        let pool = pool(patient, a.practitioners);
        let mut who = vec![pool[rng.below(3) as usize]];
        if rng.below(10) < 3 {
            who.push(rng.below(a.practitioners));
        }
        let in_progress = rng.below(100) == 0;
        let start =
            NOW_MS - i64::from(rng.below(5 * 365)) * DAY_MS - i64::from(rng.below(86_400)) * 1000;
        let end = if in_progress {
            None
        } else {
            Some(start + 3_600_000)
        };
        let pid = format!("pa{patient}");
        let mut rels: Vec<CareRel> = who
            .iter()
            .map(|w| CareRel {
                actor: format!("Practitioner/pr{w}"),
                patient: pid.clone(),
                kind: CareKind::Encounter,
                start_ms: Some(start),
                end_ms: end,
            })
            .collect();
        rels.dedup_by(|x, y| x.actor == y.actor);
        rels.push(CareRel {
            actor: BILLING_ACTOR.into(),
            patient: pid.clone(),
            kind: CareKind::Billing,
            start_ms: Some(start),
            end_ms: end,
        });
        if in_progress {
            rels.push(CareRel {
                actor: format!("Location/ward{}", rng.below(WARDS)),
                patient: pid,
                kind: CareKind::Ward,
                start_ms: None,
                end_ms: None,
            });
        }
        (
            i64::from(e) + 1,
            CareRows {
                rels,
                roles: Vec::new(),
            },
        )
    });
    let gps = (0..a.patients).map(move |p| {
        let rels = vec![CareRel {
            actor: format!("Practitioner/pr{}", pool(p, a.practitioners)[0]),
            patient: format!("pa{p}"),
            kind: CareKind::GeneralPractitioner,
            start_ms: None,
            end_ms: None,
        }];
        (
            10_000_000 + i64::from(p),
            CareRows {
                rels,
                roles: Vec::new(),
            },
        )
    });
    let roles = (0..a.practitioners).map(move |r| {
        let practitioner = format!("pr{r}");
        let roles = vec![
            RoleActor {
                practitioner: practitioner.clone(),
                actor: format!("PractitionerRole/role{r}"),
            },
            RoleActor {
                practitioner,
                actor: format!("Location/ward{}", r % WARDS),
            },
        ];
        (
            20_000_000 + i64::from(r),
            CareRows {
                rels: Vec::new(),
                roles,
            },
        )
    });
    encounters.chain(gps).chain(roles)
}

fn micros(mut v: Vec<u64>) -> Value {
    v.sort_unstable();
    let ms = |p: f64| percentile(&v, p).map(|ns| ns as f64 / 1000.0);
    json!({ "p50_us": ms(50.0), "p99_us": ms(99.0), "max_us": v.last().map(|ns| *ns as f64 / 1000.0) })
}

fn run(a: &PolicyArgs) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir().context("cannot make a scratch directory")?;
    let path = dir.path().join("store.db");
    let keyring = Arc::new(Keyring::from_data_key(1, &[0x5a; 32]).context("keyring")?);
    let store: Arc<dyn Store> =
        carevault_store::open_sqlite(&path, keyring).context("cannot open the store")?;
    eprintln!(
        "building {} encounters of {} patients with {} practitioners ...",
        a.encounters, a.patients, a.practitioners
    );
    let t = Instant::now();
    let mut rows = 0usize;
    let resources =
        SqliteStore::bulk_load_care(&path, build_rows(a).inspect(|(_, r)| rows += r.rels.len()))
            .context("cannot load the relationship set")?;
    let load_seconds = t.elapsed().as_secs_f64();
    eprintln!(
        "loaded {rows} relationship rows in {load_seconds:.1} s; timing {} decisions ...",
        a.requests
    );

    let engine = Engine::builtin().context("the built-in policy")?;
    let windows = CareWindows::default();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let (mut total, mut req_t, mut actors_t, mut probe_t, mut decide_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut allowed = 0u64;
    for i in 0..a.requests {
        let pr = rng.below(a.practitioners);
        // Half the requests are for a patient the practitioner looks after, half for anyone.
        let patient = if i % 2 == 0 {
            loop {
                let p = rng.below(a.patients);
                if pool(p, a.practitioners).contains(&pr) {
                    break p;
                }
            }
        } else {
            rng.below(a.patients)
        };
        let principal = Principal {
            user: Some(format!("user{pr}")),
            roles: vec![Role::Physician],
            practitioner: Some(format!("Practitioner/pr{pr}")),
            patient: None,
            client_id: "carevault-web".into(),
        };
        let patient = format!("pa{patient}");
        let t0 = Instant::now();
        let req = engine.requirement(&principal, Action::Read, "Observation");
        let t1 = Instant::now();
        let actors = store.care_actors(principal.practitioner.as_deref().unwrap_or_default())?;
        let t2 = Instant::now();
        let rel = match req {
            Requirement::Relationship { .. } => {
                store.has_care_relationship(&actors, &patient, NOW_MS, &windows, false)?
            }
            _ => false,
        };
        let t3 = Instant::now();
        let facts = Facts {
            relationship: rel,
            ..Facts::default()
        };
        let d = engine.decide(&principal, Action::Read, "Observation", &facts);
        let t4 = Instant::now();
        allowed += u64::from(d.allowed);
        let ns = |a: Instant, b: Instant| u64::try_from((b - a).as_nanos()).unwrap_or(u64::MAX);
        req_t.push(ns(t0, t1));
        actors_t.push(ns(t1, t2));
        probe_t.push(ns(t2, t3));
        decide_t.push(ns(t3, t4));
        total.push(ns(t0, t4));
    }
    // What a search filter needs once per request: every patient of the practitioner.
    let mut list_t = Vec::new();
    let mut listed = 0usize;
    for pr in 0..a.practitioners.min(1000) {
        let t0 = Instant::now();
        let actors = store.care_actors(&format!("pr{pr}"))?;
        let ps = store.care_patients(&actors, NOW_MS, &windows, false)?;
        list_t.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
        listed += ps.len();
    }
    Ok(json!({
        "benchmark": "policy decision per read request (issue 3)",
        "set": {
            "practitioners": a.practitioners, "patients": a.patients, "encounters": a.encounters,
            "stating_resources": resources, "care_rel_rows": rows, "load_seconds": load_seconds,
        },
        "requests": a.requests,
        "allowed": allowed,
        "decision": micros(total),
        "parts": {
            "requirement_lookup": micros(req_t),
            "care_actors": micros(actors_t),
            "has_care_relationship": micros(probe_t),
            "engine_decide": micros(decide_t),
        },
        "care_patients_per_practitioner": {
            "mean_patients": listed as f64 / f64::from(a.practitioners.clamp(1, 1000)),
            "time": micros(list_t),
        },
        "method": "in process, one thread, release build; store: carevault_store::open_sqlite on a scratch file, rows loaded with SqliteStore::bulk_load_care (the write path's own insert) into care_rel/care_actor; now = 2026-01-01; half the requests for a patient of the practitioner's pool, half for a random patient",
    }))
}

/// Runs `carevault-bench policy ...`.
pub fn main(argv: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let args = PolicyArgs::parse_from(argv);
    crate::report::finish(
        "carevault-bench policy",
        run(&args),
        args.out.as_deref(),
        false,
    )
}
