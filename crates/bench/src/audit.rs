//! `carevault-bench audit`: the issue-4 benchmark of the audit trail.
//!
//! 1. Append throughput, in process, on a scratch SQLite store: 16 threads appending one entry
//!    per durable call into the log (as server events and logins are), the same into the read
//!    journal (as the server does for reads), then batches of 1000 per call.
//! 2. A generated log of `--entries` (10 million by default) in a real data directory created by
//!    `carevault serve`, at the fastest rate the store takes (large durable batches).
//! 3. Patient report latency on it: `report_events` plus CSV rendering in process (first call and
//!    repeated calls per patient), and `carevault audit report --patient` as a whole process.
//! 4. `carevault audit verify` on it (entries / wall time), with a breakdown of where the time goes.
//! 5. `GET /fhir/Patient/{id}` at 16 connections against the current binary ("audit on") and the
//!    pre-audit build of the same code base ("audit off", `--base-bin`, git 55cc69a), alternated.
//!
//! Every loop is bounded in count and in time. Progress goes to stderr, JSON to stdout and `--out`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use carevault_audit::event::{AuditRecord, EventKind, Outcome, RestInteraction, UserRef};
use carevault_crypto::Keyring;
use carevault_server::audit_api::{ReportSubject, render_report, report_events};
use carevault_store::audit_log::{self, AuditAppend};
use carevault_store::{RestError, Store};
use clap::Parser;
use serde_json::{Value, json};

use crate::load::{Bounds, RequestSpec, run_phase};
use crate::report::{Figure, Floor};
use crate::server::{self, Server};
use crate::stats::PhaseSummary;

/// Issue 4 floors.
const VERIFY_FLOOR: f64 = 500_000.0;
const READ_RATIO_FLOOR: f64 = 0.70;
const REPORT_FLOOR_MS: f64 = 1000.0;

/// Patients the generated events are spread over.
const PATIENTS: u64 = 10_000;

/// Benchmark the audit trail (issue 4) and print a JSON report.
#[derive(Parser, Debug)]
#[command(name = "carevault-bench audit")]
struct AuditArgs {
    /// Also write the JSON report to FILE.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Entries of the generated log the report and verify figures are taken on.
    #[arg(long, default_value_t = 10_000_000)]
    entries: u64,
    /// Entries per durable `append_durably` call while generating the log.
    #[arg(long, default_value_t = 20_000)]
    generate_batch: u64,
    /// Skip the in-process append-throughput part (1).
    #[arg(long)]
    skip_append: bool,
    /// Longest the log generation may run, in seconds (it stops early and says so).
    #[arg(long, default_value_t = 1500)]
    generate_seconds: u64,
    /// Longest duration of each append-throughput run, in seconds.
    #[arg(long, default_value_t = 10)]
    append_seconds: u64,
    /// Patients whose report is timed.
    #[arg(long, default_value_t = 20)]
    report_patients: usize,
    /// The current server binary (default: `cargo build --release -p carevault`).
    #[arg(long, value_name = "FILE")]
    bin: Option<PathBuf>,
    /// The pre-audit server binary (git 55cc69a) for the read comparison's "audit off" side.
    #[arg(long, value_name = "FILE")]
    base_bin: Option<PathBuf>,
    /// Instead of --base-bin: the current code built with the benchmark-only feature
    /// `carevault-server/insecure-no-read-audit-bench` (reads answered without their audit
    /// entry), so that only the audit of reads differs between the two sides.
    #[arg(long, value_name = "FILE", conflicts_with = "base_bin")]
    unaudited_bin: Option<PathBuf>,
    /// Synthea R4 folder for the read comparison.
    #[arg(long, value_name = "DIR")]
    synthea: Option<PathBuf>,
    /// Longest duration of each read phase, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Most requests of each read phase.
    #[arg(long, default_value_t = 200_000)]
    max_requests: u64,
    /// Read rounds per binary (alternating off, on, off, on, ...).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Connection counts of the read comparison, comma-separated (default: those of the core
    /// read benchmark, 1, 16 and 64); one phase each. The floor is judged at 16 only.
    #[arg(long, value_delimiter = ',', default_values_t = READ_CONNECTIONS, value_parser = connection_count)]
    connections: Vec<usize>,
    /// Skip the 10-million-entry part (generation, report, verify).
    #[arg(long)]
    skip_log: bool,
    /// Keep the scratch directory and print where it is.
    #[arg(long)]
    keep: bool,
}

/// A read phase's connection count: 1 to 1,024.
fn connection_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a connection count from 1 to 1024")),
    }
}

/// Entry point of `carevault-bench audit ...` (`argv` starts with `audit`).
pub fn main(argv: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let args = AuditArgs::parse_from(argv);
    crate::report::finish_async(
        "carevault-bench audit",
        args.out.as_deref(),
        true,
        run(&args),
    )
}

fn progress(msg: &str) {
    crate::progress(msg);
}

/// The 1-, 5- and 15-minute load averages, as /proc/loadavg says now.
fn loadavg() -> Value {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<f64> = text
        .split_ascii_whitespace()
        .take(3)
        .filter_map(|s| s.parse().ok())
        .collect();
    json!(v)
}

async fn run(args: &AuditArgs) -> anyhow::Result<Value> {
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => server::build_release()?,
    };
    let scratch = tempfile::Builder::new()
        .prefix("carevault-bench-audit-")
        .tempdir_in(std::env::temp_dir())
        .context("cannot create a scratch dir")?;
    let root = scratch.path().to_path_buf();
    let mut figures = Vec::new();
    let mut context = json!({
        "server_bin": bin.display().to_string(),
        "loadavg": {"start": loadavg()},
    });

    // 1. Append throughput.
    if !args.skip_append {
        match append_throughput(&root, Duration::from_secs(args.append_seconds.max(1))) {
            Ok((figs, ctx)) => {
                figures.extend(figs);
                context["append"] = ctx;
            }
            Err(e) => context["append"] = json!({"error": crate::report::error_text(&e)}),
        }
    }
    context["loadavg"]["after_append"] = loadavg();

    // 2–4. The large log: generation, reports, verify.
    if !args.skip_log {
        match large_log(args, &bin, &root).await {
            Ok((figs, ctx)) => {
                figures.extend(figs);
                context["log"] = ctx;
            }
            Err(e) => {
                context["log"] = json!({"error": crate::report::error_text(&e)});
                figures.push(Figure::skipped(
                    "audit_verify",
                    "entries/s",
                    Floor::AtLeast(VERIFY_FLOOR),
                    format!(
                        "the large-log part failed: {}",
                        crate::report::error_text(&e)
                    ),
                ));
            }
        }
        context["loadavg"]["after_log"] = loadavg();
    }

    // 5. Reads with audit on and off.
    let off = match (&args.unaudited_bin, &args.base_bin) {
        (Some(b), _) => Some(OffSide {
            bin: b.clone(),
            env: &[("CAREVAULT_INSECURE_NO_READ_AUDIT_BENCH", "1")],
            what: "the same code built with the benchmark-only feature insecure-no-read-audit-bench: reads answered without their audit entry, everything else identical",
        }),
        (None, Some(b)) => Some(OffSide {
            bin: b.clone(),
            env: &[],
            what: "the pre-audit build of the same code base (git 55cc69a), which has no audit trail (nor the later authorization layer)",
        }),
        (None, None) => None,
    };
    match &off {
        Some(off) => match read_comparison(args, &bin, off, &root).await {
            Ok((figs, ctx)) => {
                figures.extend(figs);
                context["reads"] = ctx;
            }
            Err(e) => {
                context["reads"] = json!({"error": crate::report::error_text(&e)});
                figures.push(Figure::skipped(
                    "read_patient_c16_audit_on_over_off",
                    "ratio",
                    Floor::AtLeast(READ_RATIO_FLOOR),
                    format!(
                        "the read comparison failed: {}",
                        crate::report::error_text(&e)
                    ),
                ));
            }
        },
        None => figures.push(Figure::skipped(
            "read_patient_c16_audit_on_over_off",
            "ratio",
            Floor::AtLeast(READ_RATIO_FLOOR),
            "neither --unaudited-bin nor --base-bin given",
        )),
    }
    context["loadavg"]["end"] = loadavg();

    if args.keep {
        let kept = scratch.keep();
        progress(&format!("kept the scratch directory {}", kept.display()));
    }
    Ok(crate::report::report(
        &figures,
        crate::report::machine(),
        context,
        None,
    ))
}

// ---- events ---------------------------------------------------------------------------------

/// Browsers and apps the generated requests come from.
const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
     Chrome/131.0.0.0 Safari/537.36 EHRFrontend/4.2.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) \
     Version/17.6 Safari/605.1.15 EHRFrontend/4.2.1",
    "BedsideApp/2.8.0 (iPadOS 17.5; iPad13,1) CFNetwork/1496.0.7 Darwin/23.5.0",
    "python-requests/2.32.3 carevault-etl/1.4",
];

/// Clinicians the generated user reads are spread over.
const USERS: u64 = 400;

/// A read of one patient, as `Trail::request_record` builds it for `GET /fhir/Patient/{id}`:
/// two reads in three by a clinician signed in through one of 7 apps (user with linked
/// Practitioner and role, purpose TREAT), the others by the app's own system token; each with
/// its client address, user agent and request id.
fn read_record(n: u64, recorded_ms: i64) -> AuditRecord {
    let patient = format!("Patient/{}", patient_id(n % PATIENTS));
    let user = (!n.is_multiple_of(3)).then(|| {
        let u = n.wrapping_mul(0x9E37_79B9) % USERS;
        let role = if u.is_multiple_of(5) {
            "physician"
        } else {
            "nurse"
        };
        UserRef {
            name: format!("clin{u:04}"),
            reference: Some(format!("Practitioner/pr-{u:04}")),
            roles: vec![role.into()],
        }
    });
    AuditRecord {
        recorded_ms,
        kind: EventKind::Rest(RestInteraction::Read),
        action: RestInteraction::Read.default_action(),
        outcome: Outcome::Success,
        outcome_desc: None,
        purpose: if user.is_some() {
            vec!["TREAT".into()]
        } else {
            Vec::new()
        },
        user,
        client: Some(format!("ehr-frontend-{}", n % 7)),
        address: Some(format!(
            "10.{}.{}.{}",
            (n >> 16) % 256,
            (n >> 8) % 256,
            n % 256
        )),
        user_agent: Some(USER_AGENTS[(n % 4) as usize].into()),
        node: "carevault-bench".into(),
        patients: vec![patient.clone()],
        resources: vec![format!("{patient}/_history/1")],
        query: None,
        request_id: Some(format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            n.wrapping_mul(2_654_435_761) as u32,
            (n >> 3) & 0xffff,
            n & 0xfff,
            (n >> 12) & 0xfff,
            n.wrapping_mul(0x9E37_79B9_7F4A_7C15) & 0xffff_ffff_ffff
        )),
        break_glass_reason: None,
        detail: Vec::new(),
    }
}

/// A stable UUID-shaped id of patient `i`.
fn patient_id(i: u64) -> String {
    format!("5e1c0a4d-7b2f-4c1e-9a3b-{i:012}")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// ---- 1. append throughput -------------------------------------------------------------------

fn append_throughput(root: &Path, limit: Duration) -> anyhow::Result<(Vec<Figure>, Value)> {
    let dir = root.join("append");
    std::fs::create_dir_all(&dir).context("cannot create the append scratch dir")?;
    let keyring = Arc::new(Keyring::from_data_key(1, &[0x5a; 32]).context("keyring")?);
    let store = carevault_store::open_sqlite(&dir.join("append.db"), keyring)
        .context("cannot open the scratch store")?;
    let sample = carevault_server::audit::to_append(&read_record(1, now_ms()));
    let canonical_bytes = sample.canonical.len();

    // Small groups: 16 threads, one entry per durable call.
    progress(&format!(
        "audit append: 16 threads, 1 entry per durable call, {} s",
        limit.as_secs()
    ));
    let (single, single_secs, single_err) =
        append_run(&store, 16, 1, limit, 2_000_000, AppendPath::Log);
    // The server's path for reads: 16 threads, one entry each into the read journal, folded
    // into the log meanwhile by the store's own fold thread; then the time to fold what is left.
    progress(&format!(
        "audit append: 16 threads, 1 entry per call into the read journal, {} s",
        limit.as_secs()
    ));
    let cpu_before = (
        threads_cpu(JOURNAL_THREAD),
        threads_cpu(FOLD_THREAD),
        threads_cpu(STORE_THREADS),
    );
    let (journaled, journal_secs, journal_err) =
        append_run(&store, 16, 1, limit, 2_000_000, AppendPath::Journal);
    let settle = Instant::now();
    store
        .settle_audit()
        .context("cannot fold the read journal")?;
    let settle_ms = settle.elapsed().as_secs_f64() * 1000.0;
    let cpu_per_entry = |before: Option<f64>, prefix: &str| -> Option<f64> {
        let used = threads_cpu(prefix)? - before?;
        (journaled > 0).then(|| used * 1e6 / journaled as f64)
    };
    let journal_cpu = cpu_per_entry(cpu_before.0, JOURNAL_THREAD);
    let fold_cpu = cpu_per_entry(cpu_before.1, FOLD_THREAD);
    let store_cpu = cpu_per_entry(cpu_before.2, STORE_THREADS);
    // Large batches: 1000 entries per durable call from 2 threads (one builds while the other
    // waits for its commit).
    progress(&format!(
        "audit append: 1000 entries per durable call, {} s",
        limit.as_secs()
    ));
    let (batched, batched_secs, batched_err) =
        append_run(&store, 2, 1000, limit, 20_000_000, AppendPath::Log);

    let fig = |name: &str, n: u64, secs: f64, errors: u64, note: String| Figure {
        value: Some(n as f64 / secs.max(1e-9)),
        unit: "entries/s",
        floor: Floor::None,
        note: Some(format!(
            "{n} entries in {secs:.2} s, {errors} failed calls; {note}"
        )),
        ..Figure::skipped(name, "entries/s", Floor::None, "")
    };
    let figures = vec![
        fig(
            "audit_append_durable_1_per_call_t16",
            single,
            single_secs,
            single_err,
            "16 threads each calling append_durably with one entry (the path of server events, logins and token events); every call returns after its group commit's fsync".into(),
        ),
        fig(
            "audit_append_journal_1_per_call_t16",
            journaled,
            journal_secs,
            journal_err,
            format!("16 threads each calling Store::journal_audit with one entry (the server's path for reads and refusals); every call returns after the journal's group commit (one durable write), while the store's fold thread moves entries into the log every second; folding what was left at the end took {settle_ms:.0} ms"),
        ),
        cpu_figure(
            "audit_journal_writer_cpu_per_journaled_entry_t16",
            journal_cpu,
            "CPU (user + system) of the read journal's writer thread during the 16-thread journal run and the final fold, per entry journaled: its group commits (sealing, the record, its O_DIRECT|O_DSYNC write)",
        ),
        cpu_figure(
            "audit_fold_thread_cpu_per_journaled_entry_t16",
            fold_cpu,
            "CPU of the store's fold thread over the same span, per entry journaled: taking entries from memory or reading and opening them from the journal file",
        ),
        cpu_figure(
            "audit_store_writer_cpu_per_journaled_entry_t16",
            store_cpu,
            "CPU of the main store's writer and checkpointer (`carevault-store-*`) over the same span, per entry journaled: the folds' appends (chain, Merkle nodes, sealing, search keys) and their checkpoints",
        ),
        fig(
            "audit_append_durable_batch1000",
            batched,
            batched_secs,
            batched_err,
            "2 threads each calling append_durably with 1000 entries per call (build time included)".into(),
        ),
    ];
    Ok((
        figures,
        json!({
            "store": "carevault_store::open_sqlite on a scratch file, Keyring::from_data_key",
            "canonical_bytes_per_entry": canonical_bytes,
            "keys_per_entry": sample.keys.len(),
            "event": "read of Patient/<one of 10,000> by a client, with address, user agent, request id",
        }),
    ))
}

/// The name (as `/proc` shows it, cut to 15 bytes) of the read journal's writer thread.
const JOURNAL_THREAD: &str = "carevault-audit";
/// The name of the store's fold thread.
const FOLD_THREAD: &str = "carevault-fold";
/// The same for the main store's writer and checkpoint threads.
const STORE_THREADS: &str = "carevault-store";
/// Clock ticks per second of `/proc/.../stat` times (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system) used so far by this process's live threads whose name starts
/// with `prefix`; `None` where `/proc` cannot be read.
fn threads_cpu(prefix: &str) -> Option<f64> {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !comm.starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        ticks += stat_cpu_ticks(&stat)?;
    }
    Some(ticks as f64 / USER_HZ)
}

/// utime + stime from a `/proc/<pid>/task/<tid>/stat` line. The name in parentheses may hold
/// spaces, so fields are counted after its closing parenthesis: state is field 3, utime 14 and
/// stime 15.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_ascii_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn cpu_figure(name: &str, value: Option<f64>, note: &str) -> Figure {
    match value {
        Some(v) => Figure {
            value: Some(v),
            note: Some(format!("{note}; /proc thread times, 10 ms resolution")),
            ..Figure::skipped(name, "µs/entry", Floor::None, "")
        },
        None => Figure::skipped(
            name,
            "µs/entry",
            Floor::None,
            "the threads' CPU times could not be read from /proc/self/task",
        ),
    }
}

/// Where [`append_run`] appends.
#[derive(Clone, Copy)]
enum AppendPath {
    /// `audit_log::append_durably`: straight into the log through the writer.
    Log,
    /// `Store::journal_audit`, one entry per call: the read journal.
    Journal,
}

/// Appends from `threads` threads, `per_call` entries per call, until `limit` or `max` entries.
/// Returns (entries appended, seconds, failed calls).
fn append_run(
    store: &Arc<dyn Store>,
    threads: usize,
    per_call: usize,
    limit: Duration,
    max: u64,
    path: AppendPath,
) -> (u64, f64, u64) {
    let claimed = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = start + limit;
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while Instant::now() < deadline {
                    let first = claimed.fetch_add(per_call as u64, Ordering::Relaxed);
                    if first >= max {
                        break;
                    }
                    let now = now_ms();
                    let batch: Vec<AuditAppend> = (first..first + per_call as u64)
                        .map(|n| carevault_server::audit::to_append(&read_record(n, now)))
                        .collect();
                    let appended = match path {
                        AppendPath::Log => {
                            audit_log::append_durably(&**store, batch).map(|s| s.len())
                        }
                        AppendPath::Journal => batch
                            .into_iter()
                            .map(|e| journal_one(&**store, e))
                            .sum::<Result<usize, _>>(),
                    };
                    match appended {
                        Ok(n) => {
                            done.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    (
        done.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        failed.load(Ordering::Relaxed),
    )
}

/// Journals one entry as the server does for a read and waits until it is durable.
fn journal_one(store: &dyn Store, entry: AuditAppend) -> Result<usize, RestError> {
    let (send, recv) = std::sync::mpsc::sync_channel(1);
    store.journal_audit(
        entry.prepare(store.keyring()),
        Box::new(move |r| {
            let _ = send.send(r);
        }),
    );
    recv.recv()
        .map_err(|_| RestError::Store("the journal dropped the entry".into()))??;
    Ok(1)
}

// ---- 2–4. the large log ---------------------------------------------------------------------

/// A child process run with a deadline; stdout goes to a file.
struct Ran {
    ok: bool,
    seconds: f64,
    stdout: String,
    stderr_tail: String,
}

fn run_bounded(mut cmd: Command, out: &Path, limit: Duration) -> anyhow::Result<Ran> {
    let stdout = std::fs::File::create(out).context("cannot create an output file")?;
    let err_path = out.with_extension("err");
    let stderr = std::fs::File::create(&err_path).context("cannot create an output file")?;
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .context("cannot start carevault")?;
    let status = loop {
        if let Some(st) = child.try_wait().context("cannot wait for carevault")? {
            break Some(st);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    let seconds = t0.elapsed().as_secs_f64();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    let lines: Vec<&str> = err.lines().collect();
    Ok(Ran {
        ok: status.is_some_and(|s| s.success()),
        seconds,
        stdout: std::fs::read_to_string(out).unwrap_or_default(),
        stderr_tail: lines[lines.len().saturating_sub(3)..].join(" | "),
    })
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn max_of(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::max)
}

fn ms_figure(name: &str, value: Option<f64>, floor: Floor, note: String) -> Figure {
    Figure {
        value,
        unit: "ms",
        floor,
        note: Some(note),
        ..Figure::skipped(name, "ms", Floor::None, "")
    }
}

async fn large_log(
    args: &AuditArgs,
    bin: &Path,
    root: &Path,
) -> anyhow::Result<(Vec<Figure>, Value)> {
    let data = root.join("log-data");
    // A real data directory: `serve` creates it (keys, TLS, settings, audit dir), then stops.
    progress("creating a data directory with `carevault serve` (start, stop)");
    {
        let srv_scratch = root.join("log-serve");
        std::fs::create_dir_all(&srv_scratch)?;
        let mut srv = Server::start(bin, &data, &srv_scratch).await?;
        let stop = srv.stop(Duration::from_secs(30));
        if stop.exit_code != Some(0) {
            bail!("the server did not stop cleanly ({:?})", stop.exit_code);
        }
    }
    let keys = carevault_crypto::open_or_init(&data).context("cannot open the keys")?;
    let store = carevault_store::open_sqlite(
        &data.join("store").join("carevault.db"),
        keys.keyring.clone(),
    )
    .context("cannot open the store")?;
    let before = store.reader()?.audit_head()?.map_or(0, |(s, _)| s);

    // Generation.
    let target = args.entries;
    let batch = args.generate_batch.max(1);
    progress(&format!(
        "generating {target} audit entries (batches of {batch}, durable)"
    ));
    let span_ms: i64 = 30 * 24 * 3600 * 1000;
    let t_start = now_ms() - span_ms;
    let gen_limit = Duration::from_secs(args.generate_seconds.max(1));
    let claimed = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let t0 = Instant::now();
    let deadline = t0 + gen_limit;
    // Three callers: while the writer appends one batch, the next is built and queued, so the
    // single writer never waits for a batch to be built.
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                while Instant::now() < deadline && !failed.load(Ordering::Relaxed) {
                    let first = claimed.fetch_add(batch, Ordering::Relaxed);
                    if first >= target {
                        break;
                    }
                    let last = (first + batch).min(target);
                    let entries: Vec<AuditAppend> = (first..last)
                        .map(|n| {
                            let ms = t_start + (span_ms as u128 * n as u128 / target as u128) as i64;
                            carevault_server::audit::to_append(&read_record(n, ms))
                        })
                        .collect();
                    match audit_log::append_durably(&*store, entries) {
                        Ok(seqs) => {
                            let total = done.fetch_add(seqs.len() as u64, Ordering::Relaxed)
                                + seqs.len() as u64;
                            if total / 1_000_000 != (total - seqs.len() as u64) / 1_000_000 {
                                let secs = t0.elapsed().as_secs_f64();
                                progress(&format!(
                                    "generated {total} of {target} entries in {secs:.0} s ({:.0}/s)",
                                    total as f64 / secs
                                ));
                            }
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            if let Ok(mut f) = first_error.lock() {
                                f.get_or_insert(e.to_string());
                            }
                        }
                    }
                }
            });
        }
    });
    let gen_secs = t0.elapsed().as_secs_f64();
    let generated = done.load(Ordering::Relaxed);
    if let Some(e) = first_error.lock().ok().and_then(|f| f.clone()) {
        bail!("generation failed after {generated} entries: {e}");
    }
    let total = store.reader()?.audit_head()?.map_or(0, |(s, _)| s);
    let db_bytes: u64 = ["carevault.db", "carevault.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(data.join("store").join(f)).ok())
        .map(|m| m.len())
        .sum();
    let mut figures = vec![Figure {
        value: Some(generated as f64 / gen_secs.max(1e-9)),
        unit: "entries/s",
        floor: Floor::None,
        note: Some(format!(
            "{generated} entries generated in {gen_secs:.1} s (target {target}, limit {} s): 3 threads building batches of {batch} and calling append_durably (chain, RFC 9162 nodes, sealing, 3 or 5 blind keys per entry, fsync per group commit)",
            gen_limit.as_secs()
        )),
        ..Figure::skipped("audit_generate", "entries/s", Floor::None, "")
    }];
    let mut context = json!({
        "entries_target": target,
        "entries_generated": generated,
        "entries_in_log": total,
        "entries_before_generation": before,
        "generate_seconds": gen_secs,
        "store_bytes_after_generation": db_bytes,
        "patients": PATIENTS,
        "entries_per_patient": total / PATIENTS,
        "generate_batch": batch,
        "canonical_bytes_sample": carevault_server::audit::to_append(&read_record(1, t_start)).canonical.len(),
    });

    // Verify breakdown: read, open (decrypt), hash — single-threaded, on a sample.
    context["verify_breakdown"] = verify_breakdown(&store, total)?;

    // Reports in process.
    let n_patients = args.report_patients.clamp(1, 1000);
    let patients: Vec<String> = (0..n_patients as u64)
        .map(|k| format!("Patient/{}", patient_id((k * 7919 + 13) % PATIENTS)))
        .collect();
    progress(&format!(
        "patient reports in process on {total} entries ({n_patients} patients)"
    ));
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut rows = Vec::new();
    let report_deadline = Instant::now() + Duration::from_secs(300);
    for p in &patients {
        if Instant::now() > report_deadline {
            break;
        }
        for rep in 0..4 {
            let t = Instant::now();
            let events = report_events(&*store, &ReportSubject::Patient(p.clone()), None, None)
                .map_err(|e| anyhow::anyhow!("report_events: {e}"))?;
            let (_, body) = render_report("bench", &events, "csv")
                .map_err(|e| anyhow::anyhow!("render_report: {e}"))?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            std::hint::black_box(body.len());
            if rep == 0 {
                cold.push(ms);
                rows.push(events.len() as f64);
            } else {
                warm.push(ms);
            }
        }
    }
    let cold_max = max_of(&cold);
    let warm_max = max_of(&warm);
    let rows_med = median(&mut rows.clone());
    figures.push(ms_figure(
        "audit_report_patient_inprocess_first_call_max",
        cold_max,
        Floor::AtMost(REPORT_FLOOR_MS),
        format!(
            "report_events + CSV rendering, first call per patient, max over {} patients (median {:.1} ms); ~{} events per patient; the OS page cache is warm from generation (no root to drop it)",
            cold.len(),
            median(&mut cold.clone()).unwrap_or(f64::NAN),
            rows_med.unwrap_or(0.0)
        ),
    ));
    figures.push(ms_figure(
        "audit_report_patient_inprocess_repeat_max",
        warm_max,
        Floor::AtMost(REPORT_FLOOR_MS),
        format!(
            "same, calls 2–4 per patient, max over {} calls (median {:.1} ms)",
            warm.len(),
            median(&mut warm.clone()).unwrap_or(f64::NAN)
        ),
    ));
    context["report_inprocess"] = json!({
        "first_call_ms": cold, "repeat_ms": warm, "events_per_report": rows,
    });
    drop(store);

    // Reports through the CLI: one cold run (the first process to open the store after
    // generation), then 10 more, each for another patient.
    progress("patient reports through `carevault audit report --patient ... --format csv`");
    let mut cli = Vec::new();
    let mut cli_errors = Vec::new();
    let out = root.join("report.out");
    for p in patients.iter().cycle().take(11) {
        let mut cmd = Command::new(bin);
        cmd.args([
            "audit",
            "report",
            "--patient",
            p,
            "--format",
            "csv",
            "--data",
        ])
        .arg(&data);
        let r = run_bounded(cmd, &out, Duration::from_secs(120))?;
        if r.ok {
            cli.push(r.seconds * 1000.0);
        } else {
            cli_errors.push(r.stderr_tail);
        }
    }
    let (cli_cold, cli_warm) = match cli.split_first() {
        Some((c, rest)) if cli_errors.is_empty() => (Some(*c), rest.to_vec()),
        _ => (None, Vec::new()),
    };
    figures.push(ms_figure(
        "audit_report_patient_cli_first_cold",
        cli_cold,
        Floor::AtMost(REPORT_FLOOR_MS),
        format!(
            "wall time of the first `carevault audit report --patient Patient/x --format csv --data DIR` after generation (process start, key unwrap, store open behind the generation's WAL, search, CSV, and the AuditLogUsed event it appends durably); errors: {cli_errors:?}"
        ),
    ));
    figures.push(ms_figure(
        "audit_report_patient_cli_max",
        if cli_warm.is_empty() {
            None
        } else {
            max_of(&cli_warm)
        },
        Floor::AtMost(REPORT_FLOOR_MS),
        format!(
            "same, the 10 runs after the first, max (median {:.1} ms)",
            median(&mut cli_warm.clone()).unwrap_or(f64::NAN),
        ),
    ));
    context["report_cli_ms"] = json!({"first": cli_cold, "next": cli_warm});

    // Verify.
    progress(&format!("carevault audit verify --json on {total} entries"));
    let load_before = loadavg();
    // Through /usr/bin/time when there is one, for the CPU time the process got.
    let time_bin = Path::new("/usr/bin/time");
    let cpu_file = root.join("verify.cpu");
    let mut cmd = if time_bin.exists() {
        let mut c = Command::new(time_bin);
        c.args(["-f", "%U %S %P"]).arg("-o").arg(&cpu_file).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(["audit", "verify", "--json", "--data"]).arg(&data);
    let r = run_bounded(cmd, &root.join("verify.out"), Duration::from_secs(1800))?;
    let cpu: Vec<f64> = std::fs::read_to_string(&cpu_file)
        .unwrap_or_default()
        .split_whitespace()
        .take(2)
        .filter_map(|w| w.parse().ok())
        .collect();
    let cpu_note = match cpu.as_slice() {
        [user, sys] => format!(
            "; CPU user {user:.1} s + sys {sys:.1} s = {:.2} cores over the wall time",
            (user + sys) / r.seconds.max(1e-9)
        ),
        _ => String::new(),
    };
    let summary: Value = r
        .stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
        .unwrap_or(Value::Null);
    let verified = summary["entries"].as_u64();
    figures.push(match (r.ok, verified) {
        (true, Some(n)) => Figure {
            value: Some(n as f64 / r.seconds.max(1e-9)),
            unit: "entries/s",
            floor: Floor::AtLeast(VERIFY_FLOOR),
            note: Some(format!(
                "{n} entries in {:.1} s wall time of `carevault audit verify --json --data DIR` (whole process){cpu_note}; load average before: {}",
                r.seconds, load_before
            )),
            ..Figure::skipped("audit_verify", "entries/s", Floor::None, "")
        },
        _ => Figure::skipped(
            "audit_verify",
            "entries/s",
            Floor::AtLeast(VERIFY_FLOOR),
            format!(
                "audit verify failed or printed no summary after {:.1} s: {}",
                r.seconds, r.stderr_tail
            ),
        ),
    });
    context["verify"] = json!({"seconds": r.seconds, "summary": summary, "cpu_user_sys_s": cpu});
    Ok((figures, context))
}

/// Where `audit verify`'s time goes, per entry, single-threaded on up to 200,000 entries from
/// the middle of the log: reading rows, opening (AES-GCM), and the leaf hash.
fn verify_breakdown(store: &Arc<dyn Store>, total: u64) -> anyhow::Result<Value> {
    let sample = 200_000u64.min(total);
    let after = total.saturating_sub(sample) / 2;
    let mut reader = store.reader()?;
    let t = Instant::now();
    let mut stored = Vec::with_capacity(sample as usize);
    let mut next = after;
    while (stored.len() as u64) < sample {
        let chunk = reader.audit_entries(next, 20_000)?;
        let Some(last) = chunk.last() else { break };
        next = last.seq;
        stored.extend(chunk);
    }
    let read_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut opened = Vec::with_capacity(stored.len());
    for s in &stored {
        opened.push(audit_log::open(store.keyring(), s).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    let open_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for e in &opened {
        std::hint::black_box(carevault_audit::merkle::leaf_hash(&e.canonical));
    }
    let hash_s = t.elapsed().as_secs_f64();
    let n = stored.len().max(1) as f64;
    let us = |s: f64| (s / n * 1e6 * 1000.0).round() / 1000.0;
    Ok(json!({
        "sample_entries": stored.len(),
        "single_thread_us_per_entry": {
            "read_rows": us(read_s),
            "open_aes_gcm": us(open_s),
            "leaf_hash": us(hash_s),
        },
        "single_thread_ceiling_entries_per_s": (n / (read_s + open_s + hash_s).max(1e-9)).round(),
    }))
}

// ---- 5. reads with audit on and off ---------------------------------------------------------

/// One server binary and its data directory for the read comparison.
/// The "audit off" side of the read comparison.
struct OffSide {
    bin: PathBuf,
    env: &'static [(&'static str, &'static str)],
    what: &'static str,
}

struct Side {
    label: &'static str,
    bin: PathBuf,
    env: &'static [(&'static str, &'static str)],
    data: PathBuf,
    scratch: PathBuf,
    secret: Option<String>,
    paths: Vec<String>,
    imported: Option<Value>,
}

/// The connection counts of the core read benchmark (issue 2), each a read phase.
const READ_CONNECTIONS: [usize; 3] = [1, 16, 64];

async fn read_round(side: &mut Side, args: &AuditArgs, synthea: &Path) -> anyhow::Result<Value> {
    let bounds = Bounds {
        duration: Duration::from_secs(args.seconds.max(1)),
        max_requests: args.max_requests.max(1),
    };
    let mut srv = Server::start_env(&side.bin, &side.data, &side.scratch, side.env).await?;
    let result = async {
        if side.secret.is_none() {
            progress(&format!("{}: importing {}", side.label, synthea.display()));
            let imp = server::import(&side.bin, &side.data, synthea, &side.scratch)?;
            side.imported =
                Some(json!({"resources": imp.resources, "wall_seconds": imp.wall_seconds}));
            side.secret = Some(server::add_client(&side.bin, &side.data, &side.scratch)?);
        }
        let secret = side.secret.clone().unwrap_or_default();
        let target = srv.target().clone();
        let token = crate::fetch_token(&target, "bench", &secret).await?;
        if side.paths.is_empty() {
            let sample = crate::discover(&target, &token.header).await?;
            side.paths = sample
                .patients
                .iter()
                .map(|id| format!("/fhir/Patient/{id}"))
                .collect();
            if side.paths.is_empty() {
                bail!("no Patient ids found by search");
            }
        }
        progress(&format!("{}: GET /healthz at 16 connections", side.label));
        let ceiling = run_phase(
            &target,
            16,
            bounds,
            None,
            Arc::new(|_| RequestSpec::get("/healthz")),
        )
        .await;
        let paths = Arc::new(side.paths.clone());
        let mut reads = Vec::new();
        for &connections in &args.connections {
            progress(&format!(
                "{}: GET /fhir/Patient/{{id}} at {connections} connections",
                side.label
            ));
            let paths = paths.clone();
            let make =
                Arc::new(move |n: u64| RequestSpec::get(paths[(n as usize) % paths.len()].clone()));
            let phase = run_phase(
                &target,
                connections,
                bounds,
                Some(token.header.clone()),
                make,
            )
            .await;
            reads.push((connections, phase));
        }
        Ok::<(PhaseSummary, Vec<(usize, PhaseSummary)>), anyhow::Error>((ceiling, reads))
    }
    .await;
    let stop = srv.stop(Duration::from_secs(30));
    let (ceiling, reads) = result?;
    let mut out = json!({
        "label": side.label,
        "ceiling_healthz_c16": ceiling.per_second,
        "shutdown_exit_code": stop.exit_code,
        "loadavg": loadavg(),
    });
    for (c, r) in &reads {
        out[format!("read_patient_c{c}")] = json!(r.per_second);
        out[format!("read_errors_c{c}")] = json!(r.errors);
        out[format!("read_ok_c{c}")] = json!(r.ok);
        out[format!("read_p50_ms_c{c}")] = json!(r.p50_ms);
        out[format!("read_p99_ms_c{c}")] = json!(r.p99_ms);
        out[format!("fraction_of_ceiling_c{c}")] =
            json!(r.per_second / ceiling.per_second.max(1e-9));
    }
    Ok(out)
}

async fn read_comparison(
    args: &AuditArgs,
    bin: &Path,
    base: &OffSide,
    root: &Path,
) -> anyhow::Result<(Vec<Figure>, Value)> {
    let synthea = args
        .synthea
        .clone()
        .unwrap_or_else(|| crate::workspace_root().join("../shared/data/synthea-r4"));
    if !synthea.exists() {
        bail!("the Synthea folder {} does not exist", synthea.display());
    }
    let mk = |label: &'static str,
              bin: &Path,
              env: &'static [(&'static str, &'static str)]|
     -> anyhow::Result<Side> {
        let scratch = root.join(format!("reads-{label}"));
        std::fs::create_dir_all(&scratch)?;
        Ok(Side {
            label,
            bin: bin.to_path_buf(),
            env,
            data: scratch.join("data"),
            scratch,
            secret: None,
            paths: Vec::new(),
            imported: None,
        })
    };
    let mut off = mk("audit_off", &base.bin, base.env)?;
    let mut on = mk("audit_on", bin, &[])?;
    let mut runs = Vec::new();
    for round in 0..args.rounds.clamp(1, 10) {
        for side in [&mut off, &mut on] {
            progress(&format!(
                "read round {} of {}: {}",
                round + 1,
                args.rounds,
                side.label
            ));
            let mut r = read_round(side, args, &synthea).await?;
            r["round"] = json!(round + 1);
            runs.push(r);
        }
    }
    let mean = |label: &str, key: &str| -> f64 {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r["label"] == label)
            .filter_map(|r| r[key].as_f64())
            .collect();
        v.iter().sum::<f64>() / (v.len().max(1) as f64)
    };
    let errors: u64 = runs
        .iter()
        .flat_map(|r| {
            args.connections
                .iter()
                .map(|c| r[format!("read_errors_c{c}")].as_u64())
        })
        .flatten()
        .sum();
    let (c_off, c_on) = (
        mean("audit_off", "ceiling_healthz_c16"),
        mean("audit_on", "ceiling_healthz_c16"),
    );
    let fig = |name: String, v: f64, ceiling: f64, note: &str| Figure {
        value: Some(v),
        unit: "req/s",
        floor: Floor::None,
        ceiling: Some(ceiling),
        note: Some(note.into()),
        ..Figure::skipped(&name, "req/s", Floor::None, "")
    };
    let mut figures = Vec::new();
    for &c in &args.connections {
        let key = format!("read_patient_c{c}");
        let (r_off, r_on) = (mean("audit_off", &key), mean("audit_on", &key));
        figures.push(fig(
            format!("read_patient_c{c}_audit_off"),
            r_off,
            c_off,
            &format!(
                "mean over rounds; {}; ceiling = GET /healthz at 16 connections on the same server, same run",
                base.what
            ),
        ));
        figures.push(fig(
            format!("read_patient_c{c}_audit_on"),
            r_on,
            c_on,
            "mean over rounds; the current build: every read makes one AuditEvent durable in the read journal (group commit, fsync) before the response, folded into the log every second",
        ));
        // Each round runs off then on back to back, so a round's own ratio is less exposed to
        // the machine's slow and fast phases than the ratio of the means; shown beside it.
        let paired = paired_ratios(&runs, &key);
        figures.push(Figure {
            value: median(&mut paired.clone()),
            unit: "ratio",
            floor: Floor::None,
            note: Some(format!(
                "median of each round's audit-on / audit-off reads at {c} connection(s) (the two sides of a round run back to back); per round: {}",
                paired
                    .iter()
                    .map(|r| format!("{r:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            ..Figure::skipped(
                &format!("read_patient_c{c}_audit_on_over_off_median_of_rounds"),
                "ratio",
                Floor::None,
                "",
            )
        });
        let name = format!("read_patient_c{c}_audit_on_over_off");
        figures.push(Figure {
            value: Some(r_on / r_off.max(1e-9)),
            unit: "ratio",
            // The floor is judged where the core read floor is: 16 connections.
            floor: if c == 16 { Floor::AtLeast(READ_RATIO_FLOOR) } else { Floor::None },
            note: Some(format!(
                "mean audit-on reads / mean audit-off reads at {c} connection(s) over {} alternating rounds (off, on, ...); {errors} failed reads in all phases",
                args.rounds
            )),
            ..Figure::skipped(&name, "ratio", Floor::None, "")
        });
    }
    if !args.connections.contains(&16) {
        figures.push(Figure::skipped(
            "read_patient_c16_audit_on_over_off",
            "ratio",
            Floor::AtLeast(READ_RATIO_FLOOR),
            "not measured: --connections did not include 16",
        ));
    }
    Ok((
        figures,
        json!({
            "audit_off": {"binary": base.bin.display().to_string(), "what": base.what, "import": off.imported},
            "audit_on": {"binary": bin.display().to_string(), "what": "current build (audit on: one AuditEvent per request, reads durable in the read journal before the response)", "import": on.imported},
            "data": "each binary on its own data directory, both imported from the same Synthea set by that binary",
            "phase_seconds": args.seconds,
            "runs": runs,
        }),
    ))
}

/// Each round's audit-on `key` over the same round's audit-off `key`.
fn paired_ratios(runs: &[Value], key: &str) -> Vec<f64> {
    let side = |label: &str, round: &Value| {
        runs.iter()
            .find(|r| r["label"] == label && &r["round"] == round)
            .and_then(|r| r[key].as_f64())
    };
    let mut rounds: Vec<&Value> = runs.iter().map(|r| &r["round"]).collect();
    rounds.dedup();
    rounds
        .into_iter()
        .filter_map(
            |round| match (side("audit_on", round), side("audit_off", round)) {
                (Some(on), Some(off)) if off > 0.0 => Some(on / off),
                _ => None,
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_ratios_divide_each_rounds_two_sides() {
        let run = |label: &str, round: u64, v: f64| json!({"label": label, "round": round, "k": v});
        let runs = vec![
            run("audit_off", 1, 100.0),
            run("audit_on", 1, 50.0),
            run("audit_off", 2, 200.0),
            run("audit_on", 2, 180.0),
            run("audit_off", 3, 100.0),
            run("audit_on", 3, 70.0),
        ];
        let r = paired_ratios(&runs, "k");
        assert_eq!(r, vec![0.5, 0.9, 0.7]);
        assert_eq!(median(&mut r.clone()), Some(0.7));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn thread_cpu_is_utime_plus_stime_counted_after_the_name() {
        // A thread name with spaces and a parenthesis; utime 1234, stime 56.
        let line = "4242 (carevault (x) y) S 1 2 3 4 5 6 7 8 9 10 1234 56 0 0 20 0 1 0 77";
        assert_eq!(stat_cpu_ticks(line), Some(1290));
        assert_eq!(stat_cpu_ticks("4242 (short) S 1 2"), None);
        // This test's own thread is named after the test: spinning, it must see its own CPU
        // time grow past zero (within a bounded time), and a name no thread has sees none.
        let name = std::thread::current()
            .name()
            .map(str::to_owned)
            .unwrap_or_default();
        let prefix: String = name.chars().take(15).collect();
        let start = std::time::Instant::now();
        let mut seen = 0.0;
        while seen == 0.0 && start.elapsed() < Duration::from_secs(5) {
            std::hint::black_box((0..10_000u64).sum::<u64>());
            seen = threads_cpu(&prefix).unwrap_or(0.0);
        }
        assert!(seen > 0.0, "no CPU time seen for threads named {prefix}*");
        assert_eq!(threads_cpu("no-such-thread-name"), Some(0.0));
    }

    #[test]
    fn generated_events_look_like_server_reads() {
        use carevault_store::audit_log::AuditKey;
        // n = 12,345 is a multiple of 3: the app's own token, no user.
        let a = carevault_server::audit::to_append(&read_record(12_345, 1_700_000_000_000));
        assert!(a.canonical.len() < 500, "{}", a.canonical.len());
        let v = carevault_audit::event::render(&a.canonical).unwrap();
        assert_eq!(v["resourceType"], "AuditEvent");
        assert_eq!(v["subtype"][0]["code"], "read");
        assert_eq!(
            v["agent"][0]["who"]["identifier"]["value"],
            "ehr-frontend-4"
        );
        assert_eq!(v["agent"][0]["network"]["address"], "10.0.48.57");
        assert_eq!(a.keys.len(), 3);
        assert!(
            matches!(&a.keys[0], AuditKey::Patient(p) if p == "Patient/5e1c0a4d-7b2f-4c1e-9a3b-000000002345")
        );
        // n = 12,346: a clinician through the app.
        let b = carevault_server::audit::to_append(&read_record(12_346, 1_700_000_000_000));
        let v = carevault_audit::event::render(&b.canonical).unwrap();
        assert_eq!(v["agent"][0]["type"]["coding"][0]["code"], "IRCP");
        assert_eq!(
            v["agent"][1]["who"]["identifier"]["value"],
            "ehr-frontend-5"
        );
        assert_eq!(v["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
        assert_eq!(b.keys.len(), 5);
        assert!(
            b.keys
                .iter()
                .any(|k| matches!(k, AuditKey::User(u) if u.starts_with("clin")))
        );
    }

    #[test]
    fn args_parse() {
        let a =
            AuditArgs::try_parse_from(["audit", "--entries", "1000", "--out", "x.json"]).unwrap();
        assert_eq!(a.entries, 1000);
        assert_eq!(a.rounds, 2);
        assert!(AuditArgs::try_parse_from(["audit", "--bogus"]).is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut []), None);
        assert_eq!(max_of(&[1.0, 5.0, 2.0]), Some(5.0));
    }
}
