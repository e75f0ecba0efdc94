//! `carevault audit`: verify the audit trail offline and produce access reports.

use crate::DataArg;
use anyhow::{Context, bail};
use carevault_audit::checkpoint::{NoteSigner, NoteVerifier, split_notes};
use carevault_audit::merkle::leaf_hash;
use carevault_audit::verify::{Tamper, TamperKind, Verifier};
use carevault_server::audit_api::{ReportSubject, render_report, report_bound, report_events};
use carevault_store::audit_log::{self, SnapshotNodes};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// `carevault audit ...`
#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Recompute the chain and the Merkle tree, check every checkpoint's signature and root;
    /// exit 0 only if all holds.
    Verify {
        #[command(flatten)]
        data: DataArg,
        /// A checkpoints file kept elsewhere (shipped off this machine) to check the log against.
        #[arg(long, value_name = "CHECKPOINTS_FILE")]
        against: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The accounting of disclosures of one patient, or one user's activity.
    Report(ReportArgs),
}

/// Flags of `audit report`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("subject").required(true).args(["patient", "user"])))]
pub struct ReportArgs {
    /// The patient: Patient/ID.
    #[arg(long, value_name = "Patient/ID")]
    patient: Option<String>,
    /// The user name (or client id).
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// From this date or dateTime (inclusive).
    #[arg(long, value_name = "DATE")]
    from: Option<String>,
    /// To this date or dateTime (inclusive of the whole day given).
    #[arg(long, value_name = "DATE")]
    to: Option<String>,
    /// Output format.
    #[arg(long, value_parser = ["csv", "json", "html"], default_value = "csv")]
    format: String,
    #[command(flatten)]
    data: DataArg,
}

/// Runs an `audit` command.
pub fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify {
            data,
            against,
            json,
        } => verify(&data.data, against.as_deref(), json),
        AuditCommand::Report(args) => report(args),
    }
}

fn read_notes(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok(split_notes(&text)
        .with_context(|| format!("{} is not a checkpoints file", path.display()))?
        .into_iter()
        .map(str::to_owned)
        .collect())
}

/// The verifier key of this data directory: the name from `audit/checkpoint-key.vkey`, the key
/// from the audit signing seed in the key file (so a replaced vkey file is caught).
fn verifier_key(data: &Path, seed: &[u8; 32]) -> anyhow::Result<String> {
    let path = carevault_server::audit::audit_dir(data).join("checkpoint-key.vkey");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the audit verifier key {}", path.display()))?;
    let vkey = text.trim();
    let named = NoteVerifier::from_vkey(vkey)
        .with_context(|| format!("{} is not a verifier key", path.display()))?;
    let ours = NoteSigner::from_seed(named.name(), seed)
        .context("the audit signing key is unusable")?
        .verifier_key();
    if ours != vkey {
        bail!(
            "the audit verifier key in {} is not this data directory's audit signing key; it was replaced",
            path.display()
        );
    }
    Ok(ours)
}

fn verify(data: &Path, against: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let parts = crate::parts::open_existing(data)?;
    let store = parts.rest.store().clone();
    let vkey = verifier_key(data, &parts.keys.audit_signing.seed)?;
    let checkpoints = read_notes(&carevault_server::audit::audit_dir(data).join("checkpoints"))?;
    let shipped = match against {
        Some(p) => {
            if !p.exists() {
                bail!("there is no checkpoints file at {}", p.display());
            }
            read_notes(p)?
        }
        None => Vec::new(),
    };
    let mut verifier = Verifier::new(&vkey, checkpoints, shipped)
        .map_err(|t| anyhow::anyhow!("audit verification failed: {t}"))?;
    // Entries of reads still in the read journal join the log first, so they are verified too;
    // a journal entry that was altered or removed is named here.
    store
        .settle_audit()
        .map_err(|e| anyhow::anyhow!("audit verification failed: {e}"))?;
    let mut reader = store.reader()?;
    let total = reader.audit_head()?.map_or(0, |(seq, _)| seq);
    let progress = Progress::new(total);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Every core reads, opens (AES-GCM) and hashes its own ranges of VERIFY_CHUNK entries
    // through its own read snapshot (entries up to the head seen at the start are immutable, so
    // every snapshot holds the same ones); this thread puts the ranges back in order and checks
    // the chain and the tree entry by entry, so the first bad entry is the one named.
    let keyring = store.keyring().clone();
    let chunks = total.div_ceil(VERIFY_CHUNK);
    let next = std::sync::atomic::AtomicU64::new(0);
    let (send, ranges) = std::sync::mpsc::sync_channel::<(u64, anyhow::Result<Range>)>(threads * 2);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        for _ in 0..threads {
            let (store, keyring, next, send) = (&store, &keyring, &next, send.clone());
            scope.spawn(move || {
                let mut scratch = Scratch::default();
                let mut r = match store.reader() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = send.send((0, Err(e.into())));
                        return;
                    }
                };
                loop {
                    let chunk = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if chunk >= chunks {
                        return;
                    }
                    let after = chunk * VERIFY_CHUNK;
                    let upto = (after + VERIFY_CHUNK).min(total);
                    let range = prepare_range(&mut *r, keyring, after, upto, &mut scratch);
                    if send.send((chunk, range)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(send);
        let mut waiting = std::collections::BTreeMap::new();
        let mut want = 0u64;
        for (chunk, range) in ranges {
            waiting.insert(chunk, range);
            while let Some(range) = waiting.remove(&want) {
                let (prepared, bad) = range.context("cannot read the audit log")?;
                for (seq, leaf, chain) in prepared {
                    verifier
                        .push_leaf(seq, leaf, chain)
                        .map_err(|t| anyhow::anyhow!("audit verification failed: {t}"))?;
                }
                if let Some(t) = bad {
                    bail!("audit verification failed: {t}");
                }
                want += 1;
                progress.set(verifier.verified());
            }
        }
        if want < chunks {
            bail!("cannot read the audit log: a reading thread stopped early");
        }
        Ok(())
    })?;
    progress.finish();
    let summary = verifier
        .finish(Some(&SnapshotNodes::new(&mut *reader)))
        .map_err(|t| anyhow::anyhow!("audit verification failed: {t}"))?;
    let root = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, summary.root);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "ok": true,
                "entries": summary.entries,
                "root": root,
                "checkpoints": summary.checkpoints,
                "against": summary.against,
                "unsigned_tail": summary.unsigned_tail,
                "nodes_checked": summary.nodes_checked,
            })
        );
    } else {
        println!(
            "The audit trail verifies: {} entries, root {root}; {} checkpoints here and {} shipped checkpoints match; {} entries are newer than the last checkpoint.",
            summary.entries, summary.checkpoints, summary.against, summary.unsigned_tail
        );
    }
    Ok(())
}

/// Entries one verifying thread reads, opens and hashes at a time.
const VERIFY_CHUNK: u64 = 16_384;

/// A range of entries opened and hashed: (seq, leaf hash, stored chain) in order, and the
/// entry that could not be opened, if one could not (the range stops there).
type Range = (Vec<carevault_audit::verify::PreparedEntry>, Option<Tamper>);

/// Buffers one verifying thread reuses for every entry: the record identity and the opened
/// canonical bytes (no allocation per entry).
#[derive(Default)]
struct Scratch {
    identity: Vec<u8>,
    plain: Vec<u8>,
}

/// Reads, opens and hashes the entries `after < seq <= upto` through `reader` (a deleted row
/// leaves a gap that the chain check names).
fn prepare_range(
    reader: &mut dyn carevault_store::backend::ReadTx,
    keyring: &carevault_crypto::Keyring,
    after: u64,
    upto: u64,
    scratch: &mut Scratch,
) -> anyhow::Result<Range> {
    let mut out = Vec::with_capacity(usize::try_from(upto - after).unwrap_or(0));
    let mut bad = None;
    let altered = |seq: u64, why: String| Tamper {
        seq: Some(seq),
        kind: TamperKind::EntryAltered,
        message: format!("entry {seq} {why}"),
    };
    let stop = || carevault_store::StoreError::Backend("stopped at a bad entry".into());
    let opener = keyring.opener();
    let read = reader.audit_visit(after, upto, &mut |row| {
        let Ok(chain) = <[u8; 32]>::try_from(row.chain) else {
            bad = Some(altered(
                row.seq,
                "has a stored chain hash that is not 32 bytes; it was changed".into(),
            ));
            return Err(stop());
        };
        audit_log::identity_into(row.seq, &mut scratch.identity);
        if let Err(e) = opener.open_into(&scratch.identity, row.sealed, &mut scratch.plain) {
            bad = Some(altered(
                row.seq,
                format!("cannot be opened ({e}); it was changed or sealed under another key"),
            ));
            return Err(stop());
        }
        out.push((row.seq, leaf_hash(&scratch.plain), chain));
        Ok(())
    });
    match (read, bad) {
        (_, Some(t)) => Ok((out, Some(t))),
        (Ok(()), None) => Ok((out, None)),
        (Err(e), None) => Err(e.into()),
    }
}

/// A progress bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    last_line: std::cell::Cell<u64>,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "verifying {bar:40} {pos}/{len} entries ({per_sec}, {eta} left)",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Progress {
            bar,
            total,
            last_line: std::cell::Cell::new(0),
        }
    }

    fn set(&self, done: u64) {
        match &self.bar {
            Some(b) => b.set_position(done),
            None => {
                // A line every million entries keeps logs short on large trails.
                if done >= self.last_line.get() + 1_000_000 {
                    self.last_line.set(done);
                    eprintln!("verified {done} of {} audit entries", self.total);
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn report(args: ReportArgs) -> anyhow::Result<()> {
    let subject = match (&args.patient, &args.user) {
        (Some(p), _) => {
            let id = p.strip_prefix("Patient/").unwrap_or(p);
            if id.is_empty() || id.contains('/') {
                bail!("--patient takes Patient/ID, not {p}");
            }
            ReportSubject::Patient(format!("Patient/{id}"))
        }
        (None, Some(u)) => ReportSubject::User(u.clone()),
        (None, None) => bail!("give --patient Patient/ID or --user NAME"),
    };
    let from = report_bound(args.from.as_deref(), false).map_err(|e| anyhow::anyhow!("{e}"))?;
    let to = report_bound(args.to.as_deref(), true).map_err(|e| anyhow::anyhow!("{e}"))?;
    let parts = crate::parts::open_existing(&args.data.data)?;
    let store = parts.rest.store().clone();
    let events = report_events(&*store, &subject, from, to)
        .map_err(|e| anyhow::anyhow!("cannot read the audit trail: {e}"))?;
    let title = match &subject {
        ReportSubject::Patient(p) => format!("Accounting of disclosures for {p}"),
        ReportSubject::User(u) => format!("Activity of {u}"),
    };
    let (_, body) =
        render_report(&title, &events, &args.format).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The report itself is an access to the audit trail: record it.
    let node = carevault_server::audit::node_name("");
    let patients = match &subject {
        ReportSubject::Patient(p) => vec![p.clone()],
        ReportSubject::User(_) => Vec::new(),
    };
    carevault_server::audit::append_admin_event(
        &*store,
        &node,
        carevault_audit::event::EventKind::AuditLogUsed,
        vec![("report".to_owned(), args.format.clone())],
        patients,
    )
    .context("cannot record the report in the audit trail")?;
    print!("{body}");
    if !body.ends_with('\n') {
        println!();
    }
    Ok(())
}
