//! The benchmark's JSON report: each figure beside its floor, its pass or fail, and its fraction
//! of the bare-TLS ceiling.

use std::path::Path;
use std::process::ExitCode;

use serde_json::{Value, json};

use crate::stats::PhaseSummary;

/// An error and its causes, as one line.
pub fn error_text(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Runs a benchmark's `work` on a new multi-threaded runtime, then [`finish`]es it.
pub fn finish_async<F>(name: &str, out: Option<&Path>, judged: bool, work: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<Value>>,
{
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => finish(name, runtime.block_on(work), out, judged),
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Ends a benchmark run: the report as JSON on stdout and in `out`, or the error as one line on
/// stderr. Exit status 0 when the report passed (or, not `judged`, when it was made), else 1.
pub fn finish(
    name: &str,
    outcome: anyhow::Result<Value>,
    out: Option<&Path>,
    judged: bool,
) -> ExitCode {
    let report = match outcome {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: {}", error_text(&e));
            return ExitCode::FAILURE;
        }
    };
    let text = match serde_json::to_string_pretty(&report) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}: cannot format the report: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{text}");
    if let Some(out) = out
        && let Err(e) = std::fs::write(out, format!("{text}\n"))
    {
        eprintln!("{name}: cannot write {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    if !judged || report["pass"] == true {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The largest share of failed requests a phase may have and still pass.
pub const MAX_ERROR_RATE: f64 = 0.01;

/// A product floor (PRODUCT.md section 7).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Floor {
    /// The value must be at least this.
    AtLeast(f64),
    /// The value must be at most this.
    AtMost(f64),
    /// Reported only.
    None,
}

impl Floor {
    fn passes(self, value: f64) -> Option<bool> {
        match self {
            Floor::AtLeast(f) => Some(value >= f),
            Floor::AtMost(f) => Some(value <= f),
            Floor::None => None,
        }
    }

    fn json(self) -> Value {
        match self {
            Floor::AtLeast(f) => json!({"min": f}),
            Floor::AtMost(f) => json!({"max": f}),
            Floor::None => Value::Null,
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Stable name, e.g. `read_patient_c16`.
    pub name: String,
    /// The measured value, or `None` when the phase could not run.
    pub value: Option<f64>,
    /// Unit of the value.
    pub unit: &'static str,
    /// Its floor.
    pub floor: Floor,
    /// The bare-TLS ceiling at the same concurrency (req/s), for load phases.
    pub ceiling: Option<f64>,
    /// The phase behind it, when it is a load phase.
    pub phase: Option<PhaseSummary>,
    /// Why it could not be measured, or other notes.
    pub note: Option<String>,
}

impl Figure {
    /// A figure from a load phase.
    pub fn from_phase(name: &str, floor: Floor, ceiling: Option<f64>, phase: PhaseSummary) -> Self {
        Self {
            name: name.into(),
            value: Some(phase.per_second),
            unit: "req/s",
            floor,
            ceiling,
            phase: Some(phase),
            note: None,
        }
    }

    /// A figure that could not be measured.
    pub fn skipped(name: &str, unit: &'static str, floor: Floor, why: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: None,
            unit,
            floor,
            ceiling: None,
            phase: None,
            note: Some(why.into()),
        }
    }

    /// Pass (`Some(true)`), fail, or no floor (`None`). Unmeasured figures with a floor fail, and
    /// so do load phases with more than [`MAX_ERROR_RATE`] failed requests.
    pub fn pass(&self) -> Option<bool> {
        let value = match self.value {
            Some(v) => v,
            None => return self.floor.passes(0.0).map(|_| false),
        };
        let errors_ok = self
            .phase
            .as_ref()
            .is_none_or(|p| p.error_rate() <= MAX_ERROR_RATE);
        self.floor.passes(value).map(|ok| ok && errors_ok)
    }

    /// The JSON form.
    pub fn json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "value": self.value.map(round),
            "unit": self.unit,
            "floor": self.floor.json(),
            "pass": self.pass(),
            "fraction_of_ceiling": match (self.value, self.ceiling) {
                (Some(v), Some(c)) if c > 0.0 => Some(round(v / c)),
                _ => None,
            },
        });
        if let (Some(p), Some(obj)) = (&self.phase, v.as_object_mut()) {
            obj.insert("connections".into(), json!(p.connections));
            obj.insert("requests_ok".into(), json!(p.ok));
            obj.insert("errors".into(), json!(p.errors));
            obj.insert("seconds".into(), json!(round(p.seconds)));
            obj.insert("p50_ms".into(), json!(p.p50_ms.map(round)));
            obj.insert("p99_ms".into(), json!(p.p99_ms.map(round)));
            obj.insert("max_ms".into(), json!(p.max_ms.map(round)));
            let statuses: serde_json::Map<String, Value> = p
                .statuses
                .iter()
                .map(|(s, n)| (s.to_string(), json!(n)))
                .collect();
            obj.insert("statuses".into(), Value::Object(statuses));
        }
        if let (Some(n), Some(obj)) = (&self.note, v.as_object_mut()) {
            obj.insert("note".into(), json!(n));
        }
        v
    }
}

/// Three decimals are plenty and keep the report readable.
fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The machine the figures were taken on.
pub fn machine() -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem_kb = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| {
                l.split_ascii_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
            })
    });
    json!({
        "nproc": cpus,
        "cpu_model": model,
        "memory_mb": mem_kb.map(|k| k / 1024),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "note": "client and server share this machine",
    })
}

/// The whole report: figures, overall pass, and context.
pub fn report(
    figures: &[Figure],
    machine: Value,
    context: Value,
    shutdown_ok: Option<bool>,
) -> Value {
    let floors_pass = figures.iter().all(|f| f.pass() != Some(false));
    let pass = floors_pass && shutdown_ok != Some(false) && context.get("error").is_none();
    json!({
        "tool": "carevault-bench",
        "version": env!("CARGO_PKG_VERSION"),
        "machine": machine,
        "context": context,
        "figures": figures.iter().map(Figure::json).collect::<Vec<_>>(),
        "shutdown_clean": shutdown_ok,
        "pass": pass,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::WorkerStats;
    use std::time::Duration;

    fn phase(ok: u64, errors: u64, secs: u64) -> PhaseSummary {
        let mut w = WorkerStats::default();
        for _ in 0..ok {
            w.record(200, Duration::from_millis(2));
        }
        for _ in 0..errors {
            w.record(503, Duration::from_millis(2));
        }
        PhaseSummary::from_workers(16, vec![w], Duration::from_secs(secs))
    }

    #[test]
    fn floors_and_fractions() {
        let f = Figure::from_phase(
            "read_patient_c16",
            Floor::AtLeast(3000.0),
            Some(8000.0),
            phase(40_000, 0, 10),
        );
        assert_eq!(f.pass(), Some(true));
        let j = f.json();
        assert_eq!(j["value"].as_f64(), Some(4000.0));
        assert_eq!(j["fraction_of_ceiling"].as_f64(), Some(0.5));
        assert_eq!(j["floor"]["min"].as_f64(), Some(3000.0));
        assert_eq!(j["p50_ms"].as_f64(), Some(2.0));
        assert_eq!(j["connections"].as_u64(), Some(16));
        assert_eq!(j["statuses"]["200"].as_u64(), Some(40_000));

        let slow = Figure::from_phase(
            "create_c16",
            Floor::AtLeast(500.0),
            Some(8000.0),
            phase(4_000, 0, 10),
        );
        assert_eq!(slow.pass(), Some(false));
        let erring = Figure::from_phase("x", Floor::AtLeast(500.0), None, phase(10_000, 200, 10));
        assert_eq!(
            erring.pass(),
            Some(false),
            "2% errors fail even above the floor"
        );
        assert!(erring.json()["fraction_of_ceiling"].is_null());

        let rss = Figure {
            value: Some(120.0),
            unit: "MB",
            floor: Floor::AtMost(300.0),
            ..Figure::skipped("rss", "MB", Floor::None, "")
        };
        assert_eq!(rss.pass(), Some(true));
        assert_eq!(rss.json()["floor"]["max"].as_f64(), Some(300.0));
        let skipped = Figure::skipped("search_x", "req/s", Floor::AtLeast(500.0), "no data");
        assert_eq!(skipped.pass(), Some(false));
        assert!(skipped.json()["value"].is_null());
        assert_eq!(skipped.json()["note"], "no data");
        let info = Figure::from_phase("healthz_c1", Floor::None, None, phase(10, 0, 1));
        assert_eq!(info.pass(), None);
    }

    #[test]
    fn report_shape() {
        let ok = Figure::from_phase("a", Floor::AtLeast(1.0), None, phase(100, 0, 1));
        let none = Figure::from_phase("b", Floor::None, None, phase(1, 0, 1));
        let r = report(&[ok.clone(), none], machine(), json!({"k": 1}), Some(true));
        assert_eq!(r["pass"], true);
        assert_eq!(r["figures"].as_array().map(Vec::len), Some(2));
        assert!(r["machine"]["nproc"].as_u64().is_some_and(|n| n >= 1));
        assert!(r["machine"]["cpu_model"].is_string());
        assert_eq!(
            report(std::slice::from_ref(&ok), json!({}), json!({}), Some(false))["pass"],
            false
        );
        let bad = Figure::skipped("c", "req/s", Floor::AtLeast(1.0), "x");
        assert_eq!(
            report(&[ok, bad], json!({}), json!({}), None)["pass"],
            false
        );
        let failed_run = report(&[], json!({}), json!({"error": "x"}), Some(true));
        assert_eq!(
            failed_run["pass"], false,
            "a run that stopped early never passes"
        );
        // The report is valid JSON text.
        assert!(serde_json::from_str::<Value>(&r.to_string()).is_ok());
    }
}
