//! `carevault keys`: key status, master-key rotation (re-wrap) and data-key rotation
//! (online re-encryption with a durable cursor).

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use carevault_crypto::{
    KeyPurpose, KeyState, MasterKind, NewMaster, PATIENT_KEY_FLAG, SystemClock, SystemRng,
};
use carevault_store::keys::{self as store_keys, ReencryptOptions, ReencryptProgress};
use serde_json::{Value, json};

use crate::DataArg;

/// `carevault keys ...`
#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Show every key, what it protects, where the master key is, and any rotation in progress.
    Status {
        #[command(flatten)]
        data: DataArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rotate the master key (`--master`: re-wrap, instant) or the data key (`--data`:
    /// re-encrypt everything under a new data key, online and resumable).
    Rotate(RotateArgs),
}

/// Flags of `keys rotate`. `--data` is both the data-key switch and, with a value, the data
/// directory: `keys rotate --data` rotates the data key of `./carevault-data`,
/// `keys rotate --data DIR` that of DIR, `keys rotate --master --data DIR` the master key of DIR.
#[derive(clap::Args)]
pub struct RotateArgs {
    /// Re-wrap every key under a new master key.
    #[arg(long)]
    master: bool,
    /// Rotate the data key; with a value, also the data directory (default ./carevault-data).
    #[arg(long = "data", value_name = "DIR", num_args = 0..=1, default_missing_value = "", action = clap::ArgAction::Append)]
    data: Vec<String>,
    /// With --master: the new master key file (32 raw bytes or 64 hex characters).
    #[arg(
        long,
        value_name = "FILE",
        requires = "master",
        conflicts_with = "new_passphrase_stdin"
    )]
    new_key_file: Option<PathBuf>,
    /// With --master: read a new passphrase from standard input (a new Argon2id salt is made).
    #[arg(long, requires = "master")]
    new_passphrase_stdin: bool,
    /// Values re-encrypted per batch.
    #[arg(long, default_value_t = 200, hide = true)]
    batch_size: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Test-only throttle: pause after each re-encryption batch (so a test can stop a run midway).
const BATCH_DELAY_ENV: &str = "CAREVAULT_TEST_ROTATE_BATCH_DELAY_MS";

/// Runs a keys command.
pub fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Status { data, json } => status(&data.data, json),
        KeysCommand::Rotate(args) => {
            let dir = args
                .data
                .iter()
                .rev()
                .find(|d| !d.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("./carevault-data"));
            let data_switch = !args.data.is_empty();
            match (args.master, data_switch) {
                (true, _) if args.data.iter().any(String::is_empty) => {
                    crate::usage_error("choose one of --master or --data, not both")
                }
                (true, _) => rotate_master(&dir, &args),
                (false, true) => rotate_data(&dir, &args),
                (false, false) => crate::usage_error(
                    "say what to rotate: --master (re-wrap under a new master key) or --data (re-encrypt under a new data key)",
                ),
            }
        }
    }
}

/// The lock every key-file change takes; a second rotation is refused while it is held.
fn lock(data: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let path = data.join("keys").join("rotation.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(l),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => bail!(
            "a key rotation is already running on {} (another `carevault keys rotate`); wait for it to finish, it resumes by itself if interrupted",
            data.display()
        ),
        Err((_, e)) => bail!("cannot lock {}: {e}", path.display()),
    }
}

/// Whether a rotation process holds the lock now.
fn rotation_running(data: &Path) -> bool {
    let path = data.join("keys").join("rotation.lock");
    match std::fs::File::open(&path) {
        Ok(f) => matches!(
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockSharedNonblock),
            Err((_, nix::errno::Errno::EWOULDBLOCK))
        ),
        Err(_) => false,
    }
}

fn purpose_label(p: KeyPurpose) -> &'static str {
    match p {
        KeyPurpose::Data => "data",
        KeyPurpose::BlindIndex => "blind-index",
        KeyPurpose::AuditSigning => "audit-signing",
    }
}

fn kind_label(k: MasterKind) -> &'static str {
    match k {
        MasterKind::KeyFile => "key-file",
        MasterKind::Passphrase => "passphrase",
        MasterKind::DefaultKeyFile => "default-key-file",
        MasterKind::External => "external",
    }
}

fn age(seconds: u64) -> String {
    match seconds {
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

fn status(data: &Path, as_json: bool) -> anyhow::Result<()> {
    let parts = crate::parts::open_existing(data)?;
    let handle = &parts.keys.handle;
    let keys = handle.keys().context("cannot read the key file")?;
    let current = handle.current_data_key()?;
    let store = parts.rest.store();
    let usage = store_keys::key_usage(&**store).context("cannot count what each key protects")?;
    let rotation = store_keys::rotation_in_progress(&**store)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let sum = |table: &str, key: u32, current_only: bool| -> u64 {
        usage
            .iter()
            .filter(|u| u.table == table && u.key_id == key)
            .map(|u| if current_only { u.current } else { u.rows })
            .sum()
    };
    let mut rows = Vec::new();
    for k in &keys {
        let mut entry = json!({
            "id": k.id,
            "purpose": purpose_label(k.purpose),
            "created_at": k.created_at,
            "age_seconds": now.saturating_sub(k.created_at),
        });
        if k.purpose == KeyPurpose::Data {
            let protects = json!({
                "records": sum("ver", k.id, true),
                "versions": sum("ver", k.id, false),
                "system_records": sum("system_record", k.id, false),
                "audit_entries": sum("audit_log", k.id, false),
                "audit_entries_waiting_in_read_journal": sum("audit_journal", k.id, false),
                "patient_keys": sum("patient_key", k.id, false),
            });
            let used = store_keys::in_use(&usage, k.id);
            entry["state"] = json!(match (k.id == current, k.state, used) {
                (true, _, _) => "current",
                (false, KeyState::Retired, true) | (false, KeyState::Active, true) => {
                    "retired-in-use"
                }
                _ => "retired-unused",
            });
            entry["protects"] = protects;
        } else {
            entry["state"] = json!("active");
            entry["protects"] = json!(match k.purpose {
                KeyPurpose::BlindIndex => "index tags (HMAC)",
                _ => "audit checkpoint signatures",
            });
        }
        rows.push(entry);
    }
    let patient_versions: u64 = usage
        .iter()
        .filter(|u| u.table == "ver" && u.key_id & PATIENT_KEY_FLAG != 0)
        .map(|u| u.rows)
        .sum();
    let patient_keys_in_use = usage
        .iter()
        .filter(|u| u.table == "ver" && u.key_id & PATIENT_KEY_FLAG != 0)
        .count();
    let patient_keys_stored: u64 = usage
        .iter()
        .filter(|u| u.table == "patient_key")
        .map(|u| u.rows)
        .sum();
    let master = &parts.keys.master_source;
    let rotation_json = match &rotation {
        None => Value::Null,
        Some(state) => {
            let done: u64 = state.iter().map(|c| c.done).sum();
            let total: u64 = state.iter().map(|c| c.total).sum();
            json!({
                "target_key": state.first().map(|c| c.target_key),
                "started_ms": state.first().map(|c| c.started_ms),
                "done": done,
                "total": total,
                "running": rotation_running(data),
                "tables": state.iter().map(|c| json!({"table": c.table, "cursor": c.cursor, "done": c.done, "total": c.total})).collect::<Vec<_>>(),
            })
        }
    };
    let report = json!({
        "data_dir": data.display().to_string(),
        "master": {"kind": kind_label(master.kind), "location": master.location},
        "current_data_key": current,
        "keys": rows,
        "patient_keys": {"stored": patient_keys_stored, "in_use": patient_keys_in_use, "versions": patient_versions},
        "rotation": rotation_json,
    });
    if as_json {
        println!("{report}");
        return Ok(());
    }
    println!("Master key: {master}");
    println!(
        "{:<6} {:<14} {:<15} {:<9} protects",
        "id", "purpose", "state", "age"
    );
    for r in &rows {
        let protects = match &r["protects"] {
            Value::String(s) => s.clone(),
            p => format!(
                "{} records ({} versions), {} system records, {} audit entries, {} patient keys",
                p["records"],
                p["versions"],
                p["system_records"],
                p["audit_entries"],
                p["patient_keys"]
            ),
        };
        println!(
            "{:<6} {:<14} {:<15} {:<9} {protects}",
            r["id"].as_u64().unwrap_or(0),
            r["purpose"].as_str().unwrap_or(""),
            r["state"].as_str().unwrap_or(""),
            age(r["age_seconds"].as_u64().unwrap_or(0)),
        );
    }
    println!(
        "Patient keys: {patient_keys_stored} stored, {patient_keys_in_use} sealing {patient_versions} versions (each wrapped by a data key above)."
    );
    match &rotation {
        None => println!("No data-key rotation in progress."),
        Some(_) => println!(
            "Data-key rotation to key {} in progress: {}/{} values re-encrypted{}.",
            rotation_json["target_key"],
            rotation_json["done"],
            rotation_json["total"],
            if rotation_json["running"] == json!(true) {
                ""
            } else {
                " (not running: run `carevault keys rotate --data` to resume)"
            }
        ),
    }
    Ok(())
}

fn rotate_master(data: &Path, args: &RotateArgs) -> anyhow::Result<()> {
    let parts = crate::parts::open_existing(data)?;
    let _lock = lock(data)?;
    let handle = &parts.keys.handle;
    let new = if let Some(file) = &args.new_key_file {
        NewMaster::KeyFile(file.clone())
    } else if args.new_passphrase_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the new passphrase from standard input")?;
        let pass = text.trim_end_matches(['\n', '\r']).to_owned();
        if pass.chars().count() < 12 {
            bail!("the new passphrase must be at least 12 characters long");
        }
        NewMaster::Passphrase(secrecy::SecretString::from(pass))
    } else {
        if parts.keys.master_source.kind != MasterKind::DefaultKeyFile {
            bail!(
                "this data directory's master key is not the default key file; give --new-key-file FILE or --new-passphrase-stdin"
            );
        }
        NewMaster::NewDefaultKeyFile(PathBuf::from(&parts.keys.master_source.location))
    };
    let done = handle
        .rewrap_master(new, &SystemClock, &SystemRng::new())
        .with_context(|| format!("cannot rotate the master key of {}", data.display()))?;
    record_key_operation(
        &**parts.rest.store(),
        vec![
            ("operation".into(), "rotate-master".into()),
            ("keys-rewrapped".into(), done.rewrapped.to_string()),
        ],
    )?;
    let next = match done.kind {
        MasterKind::KeyFile => format!(
            "Set CAREVAULT_MASTER_KEY_FILE={} for the server and every admin command from now on; the previous master key no longer opens this directory.",
            done.location.display()
        ),
        MasterKind::Passphrase => "Set CAREVAULT_PASSPHRASE to the new passphrase (and unset CAREVAULT_MASTER_KEY_FILE) for the server and every admin command from now on; restart the server before the next data-key rotation.".to_owned(),
        _ => format!(
            "The new master key is {}; nothing to set.{}",
            done.location.display(),
            done.old_key_kept_at
                .as_ref()
                .map(|p| format!(" The previous one was kept as {} (it opens only key files saved before now, e.g. in backups): move it to offline escrow or delete it.", p.display()))
                .unwrap_or_default()
        ),
    };
    if args.json {
        println!(
            "{}",
            json!({"rewrapped": done.rewrapped, "kind": kind_label(done.kind),
                   "location": done.location.display().to_string(),
                   "old_key_kept_at": done.old_key_kept_at.map(|p| p.display().to_string()),
                   "next": next})
        );
    } else {
        println!(
            "Re-wrapped {} keys under the new master key; no data was re-encrypted and a running server keeps serving.",
            done.rewrapped
        );
        println!("{next}");
    }
    Ok(())
}

fn rotate_data(data: &Path, args: &RotateArgs) -> anyhow::Result<()> {
    let parts = crate::parts::open_existing(data)?;
    let _lock = lock(data)?;
    let handle = &parts.keys.handle;
    let store = parts.rest.store().clone();
    let keyring = store.keyring().clone();
    let target = match store_keys::rotation_in_progress(&*store)? {
        Some(state) => state.first().map(|c| c.target_key).unwrap_or(0),
        None => {
            let id = handle.next_key_id()?;
            // The store records the target first: a crash before the key file is written resumes
            // with the same id instead of leaving an unused key behind.
            store_keys::begin_rotation(&*store, id)?;
            id
        }
    };
    handle
        .add_data_key(target, &SystemClock, &SystemRng::new())
        .context("cannot add the new data key to the key file")?;
    keyring.reload();
    if keyring.current_key_id() != target {
        bail!(
            "the key file's current data key is not {target}, the key this rotation re-encrypts to; restore the key file or clear the rotation"
        );
    }
    let delay = std::env::var(BATCH_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::ZERO);
    let opts = ReencryptOptions {
        batch_size: args.batch_size.max(1),
        batch_delay: delay,
        ..ReencryptOptions::default()
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} values re-encrypted  {per_sec}",
        ) {
            b.set_style(style);
        }
        b
    });
    let mut last_line = std::time::Instant::now() - Duration::from_secs(10);
    let mut on_progress = |p: ReencryptProgress| match &bar {
        Some(b) => {
            b.set_length(p.total);
            b.set_position(p.done);
        }
        None => {
            if last_line.elapsed() >= Duration::from_millis(200) || p.done >= p.total {
                eprintln!(
                    "keys rotate: {}/{} values re-encrypted to data key {target}",
                    p.done, p.total
                );
                last_line = std::time::Instant::now();
            }
        }
    };
    let summary = store_keys::reencrypt(&store, &opts, &mut on_progress)
        .with_context(|| format!("the data-key rotation of {} stopped", data.display()))?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    // Retire: data keys nothing is sealed under any more leave the key file.
    let usage = store_keys::key_usage(&*store)?;
    let unused: Vec<u32> = handle
        .keys()?
        .iter()
        .filter(|k| k.purpose == KeyPurpose::Data && k.id != target)
        .filter(|k| !store_keys::in_use(&usage, k.id))
        .map(|k| k.id)
        .collect();
    handle.remove_data_keys(&unused)?;
    record_key_operation(
        &*store,
        vec![
            ("operation".into(), "rotate-data".into()),
            ("current-data-key".into(), target.to_string()),
            ("reencrypted".into(), summary.reencrypted.to_string()),
            ("removed-keys".into(), format!("{unused:?}")),
            ("integrity-failures".into(), summary.failed.to_string()),
        ],
    )?;
    if args.json {
        println!(
            "{}",
            json!({"current_data_key": target, "reencrypted": summary.reencrypted, "raced": summary.raced,
                   "failed": summary.failed, "resumed": summary.resumed, "removed_keys": unused})
        );
    } else {
        println!(
            "Data key {target} is current; {} values re-encrypted by this run{}; removed data keys {:?}, which nothing used any more.",
            summary.reencrypted,
            if summary.resumed {
                " (resumed an interrupted rotation)"
            } else {
                ""
            },
            unused
        );
        println!("Running servers seal under data key {target} already; nothing to restart.");
    }
    if summary.failed > 0 {
        bail!(
            "{} values failed their integrity check and stay under their old data key (see the log for their rows); restore them from a backup, then run `carevault keys rotate --data` again",
            summary.failed
        );
    }
    Ok(())
}

/// Records a key operation in the audit trail (ids and counts only, never key material).
fn record_key_operation(
    store: &dyn carevault_store::Store,
    detail: Vec<(String, String)>,
) -> anyhow::Result<()> {
    carevault_server::audit::append_admin_event(
        store,
        &carevault_server::audit::node_name(""),
        carevault_audit::event::EventKind::KeyOperation,
        detail,
        Vec::new(),
    )
    .context("the key operation finished but could not be recorded in the audit trail")?;
    Ok(())
}
