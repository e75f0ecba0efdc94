//! `carevault import`: loads Bundle JSON and NDJSON files or folders through the same validation
//! and transaction path as the API, with progress and a final summary.

use crate::DataArg;
use anyhow::Context;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Flags of `carevault import`.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// Files or folders: `.json` (a Bundle or one resource) and `.ndjson` (one resource a line).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    data: DataArg,
    /// Transaction bundles loaded at once (batches and NDJSON always load one at a time, first).
    #[arg(long, default_value_t = 3)]
    jobs: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// What an import did.
#[derive(Default)]
struct Summary {
    files: usize,
    by_type: BTreeMap<String, u64>,
    rejected: Vec<(String, String)>,
}

impl Summary {
    fn resources(&self) -> u64 {
        self.by_type.values().sum()
    }
}

/// Runs the import.
pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    let parts = crate::parts::open_existing(&args.data.data)?;
    let files = collect_files(&args.paths)?;
    let started = Instant::now();
    let progress = Progress::new(files.len() as u64);
    let summary = Mutex::new(Summary {
        files: files.len(),
        ..Summary::default()
    });

    // Transactions are independent of each other; batches (such as shared Organizations and
    // Practitioners) and NDJSON may be what later transactions reference, so they go first.
    let mut first = Vec::new();
    let mut parallel = Vec::new();
    for f in files {
        match bundle_type(&f) {
            Some(ref t) if t == "transaction" => parallel.push(f),
            _ => first.push(f),
        }
    }
    let load = |f: &PathBuf| {
        let (types, rejected) = load_file(&parts.rest, f);
        let mut s = summary.lock().unwrap_or_else(|p| p.into_inner());
        for (t, n) in types {
            *s.by_type.entry(t).or_default() += n;
        }
        if let Some(reason) = rejected {
            s.rejected.push((f.display().to_string(), reason));
        }
        progress.file_done(f, s.resources());
    };
    first.iter().for_each(&load);
    let queue = Mutex::new(parallel.into_iter());
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                    match next {
                        Some(f) => load(&f),
                        None => break,
                    }
                }
            });
        }
    });
    progress.finish();
    let summary = summary.into_inner().unwrap_or_else(|p| p.into_inner());
    let seconds = started.elapsed().as_secs_f64();
    let rate = summary.resources() as f64 / seconds.max(1e-9);
    carevault_server::audit::append_admin_event(
        &**parts.rest.store(),
        &carevault_server::audit::node_name(""),
        carevault_audit::event::EventKind::Import,
        vec![
            ("files".into(), summary.files.to_string()),
            ("resources".into(), summary.resources().to_string()),
            ("rejected-files".into(), summary.rejected.len().to_string()),
        ],
        Vec::new(),
    )
    .context("the import finished but could not be recorded in the audit trail")?;
    if args.json {
        let out = serde_json::json!({
            "files": summary.files,
            "resources": summary.resources(),
            "resources_by_type": summary.by_type,
            "rejected": summary.rejected.iter().map(|(f, r)| serde_json::json!({"file": f, "reason": r})).collect::<Vec<_>>(),
            "seconds": seconds,
            "resources_per_second": rate,
        });
        println!("{out}");
    } else {
        println!(
            "Imported {} resources from {} files in {seconds:.1} s ({rate:.0} resources/s).",
            summary.resources(),
            summary.files
        );
        for (t, n) in &summary.by_type {
            println!("  {t:<32} {n:>8}");
        }
        if !summary.rejected.is_empty() {
            println!("Rejected {} files:", summary.rejected.len());
            for (f, r) in &summary.rejected {
                println!("  {f}: {r}");
            }
        }
    }
    if summary.rejected.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} of {} files were rejected; nothing of a rejected transaction was stored",
            summary.rejected.len(),
            summary.files
        )
    }
}

/// Expands folders (sorted, so load order is predictable) into `.json` and `.ndjson` files.
fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            out.extend(
                collect_files(&entries)?
                    .into_iter()
                    .filter(|f| is_fhir_file(f)),
            );
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn is_fhir_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("json" | "ndjson")
    )
}

/// Peeks at a Bundle's `type` without parsing the whole file.
fn bundle_type(p: &Path) -> Option<String> {
    if p.extension().and_then(|e| e.to_str()) != Some("json") {
        return None;
    }
    let mut head = vec![0u8; 4096];
    let n = std::io::Read::read(&mut std::fs::File::open(p).ok()?, &mut head).ok()?;
    let text = String::from_utf8_lossy(&head[..n]);
    let i = text.find("\"type\"")?;
    let rest = &text[i + 6..];
    let start = rest.find('"')? + 1;
    let end = rest[start..].find('"')? + start;
    Some(rest[start..end].to_string())
}

/// Loads one file; returns the resources stored by type and, if the file stopped early or was
/// refused, why. A bundle is one transaction (all or nothing); an NDJSON line is one write, so
/// the lines before a bad one stay stored and are counted.
fn load_file(rest: &carevault_store::Rest, path: &Path) -> (BTreeMap<String, u64>, Option<String>) {
    if path.extension().and_then(|e| e.to_str()) == Some("ndjson") {
        let mut types = BTreeMap::new();
        let outcome = load_ndjson(rest, path, &mut types);
        return (types, outcome.err());
    }
    match load_json(rest, path) {
        Ok(types) => (types, None),
        Err(reason) => (BTreeMap::new(), Some(reason)),
    }
}

fn load_json(rest: &carevault_store::Rest, path: &Path) -> Result<BTreeMap<String, u64>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    match value.get("resourceType").and_then(Value::as_str) {
        Some("Bundle")
            if matches!(
                value.get("type").and_then(Value::as_str),
                Some("transaction" | "batch")
            ) =>
        {
            let response = rest.bundle(value, "").map_err(|e| describe(&e))?;
            let mut types = BTreeMap::new();
            let mut failures = Vec::new();
            for (i, entry) in response
                .get("entry")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let status = entry
                    .pointer("/response/status")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if status.starts_with('2') {
                    if let Some(t) = entry
                        .pointer("/response/location")
                        .and_then(Value::as_str)
                        .and_then(|l| l.split('/').next())
                    {
                        *types.entry(t.to_string()).or_default() += 1;
                    }
                } else {
                    failures.push(format!("entry {i}: {status}"));
                }
            }
            if failures.is_empty() {
                Ok(types)
            } else {
                Err(format!("batch entries failed: {}", failures.join(", ")))
            }
        }
        Some(t) if t != "Bundle" => {
            let t = t.to_string();
            store_one(rest, value)?;
            Ok(BTreeMap::from([(t, 1)]))
        }
        _ => Err("a Bundle must be of type transaction or batch to be imported".into()),
    }
}

fn load_ndjson(
    rest: &carevault_store::Rest,
    path: &Path,
    types: &mut BTreeMap<String, u64>,
) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read the file: {e}"))?;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("line {}: cannot read: {e}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| format!("line {}: not valid JSON: {e}", n + 1))?;
        let t = value
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        store_one(rest, value).map_err(|e| format!("line {}: {e}", n + 1))?;
        *types.entry(t).or_default() += 1;
    }
    Ok(())
}

/// A single resource keeps its id when it has one (update-as-create), else gets a new one.
fn store_one(rest: &carevault_store::Rest, value: Value) -> Result<(), String> {
    let t = value
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or("the resource has no resourceType")?
        .to_string();
    if !carevault_fhir::definitions().is_resource_type(&t) {
        return Err(format!("{t} is not an R4 resource type"));
    }
    match value.get("id").and_then(Value::as_str).map(str::to_string) {
        Some(id) => rest.update(&t, &id, value, None).map(|_| ()),
        None => rest.create(&t, value, None).map(|_| ()),
    }
    .map_err(|e| describe(&e))
}

fn describe(e: &carevault_store::RestError) -> String {
    match e {
        carevault_store::RestError::Invalid(issues) => {
            let first: Vec<String> = issues
                .iter()
                .take(3)
                .map(|i| format!("{} ({})", i.diagnostics, i.expression))
                .collect();
            format!(
                "invalid: {}{}",
                first.join("; "),
                if issues.len() > 3 { " ..." } else { "" }
            )
        }
        other => other.to_string(),
    }
}

/// A progress bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    done: std::sync::atomic::AtomicU64,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} files  {msg}")
            {
                b.set_style(style);
            }
            b
        });
        Self {
            bar,
            total,
            done: Default::default(),
        }
    }

    fn file_done(&self, path: &Path, resources: u64) {
        let done = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        match &self.bar {
            Some(b) => {
                b.set_position(done);
                b.set_message(format!("{resources} resources"));
            }
            None => eprintln!(
                "import: {done}/{} files, {resources} resources ({})",
                self.total,
                path.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
