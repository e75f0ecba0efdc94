//! `carevault patient`: patient-level operations; `erase` crypto-shreds one patient's data.

use anyhow::{Context, bail};
use serde_json::json;

use crate::DataArg;

/// `carevault patient ...`
#[derive(clap::Subcommand)]
pub enum PatientCommand {
    /// Crypto-shred a patient: destroy their key so every copy of their compartment's data is
    /// unreadable, and erase their resources. Asks nothing; cannot be undone.
    Erase {
        /// The patient, as `Patient/ID`.
        patient: String,
        /// Why (legal basis, request reference); kept for the audit trail.
        #[arg(long, required = true)]
        reason: String,
        #[command(flatten)]
        data: DataArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a patient command.
pub fn run(cmd: PatientCommand) -> anyhow::Result<()> {
    match cmd {
        PatientCommand::Erase {
            patient,
            reason,
            data,
            json,
        } => {
            let Some(id) = patient.strip_prefix("Patient/").filter(|id| {
                !id.is_empty()
                    && id.len() <= 64
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            }) else {
                return crate::usage_error("name the patient as Patient/ID");
            };
            if reason.trim().is_empty() {
                return crate::usage_error("--reason must say why the patient is erased");
            }
            let parts = crate::parts::open_existing(&data.data)?;
            let store = parts.rest.store();
            let erasure = match carevault_store::keys::erase_patient(&**store, id, &reason) {
                Ok(e) => e,
                Err(carevault_store::RestError::NotFound { .. }) => bail!(
                    "Patient/{id} has no patient key in {}, so there is nothing to erase (no resource of that patient's compartment was stored)",
                    data.data.display()
                ),
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot erase Patient/{id}"));
                }
            };
            // The trail keeps the fact and the reason, never the data.
            carevault_server::audit::append_admin_event(
                &**store,
                &carevault_server::audit::node_name(""),
                carevault_audit::event::EventKind::PatientErase,
                vec![
                    ("reason".into(), erasure.reason.clone()),
                    ("patient-key".into(), format!("{:#010x}", erasure.key_id)),
                    ("resources".into(), erasure.resources.to_string()),
                    ("versions".into(), erasure.versions.to_string()),
                ],
                vec![erasure.patient.clone()],
            )
            .context(
                "the patient was erased but the erasure could not be recorded in the audit trail",
            )?;
            if json {
                println!(
                    "{}",
                    json!({"patient": erasure.patient, "reason": erasure.reason,
                           "key_id": erasure.key_id, "resources": erasure.resources,
                           "versions": erasure.versions, "erased_ms": erasure.erased_ms,
                           "log_truncated": erasure.log_truncated})
                );
            } else {
                println!(
                    "{} erased: patient key {:#010x} destroyed, {} resources and {} versions removed; reads answer 410 Gone.",
                    erasure.patient, erasure.key_id, erasure.resources, erasure.versions
                );
                if !erasure.log_truncated {
                    println!(
                        "The write-ahead log could not be emptied yet (a reader held it); it empties at the next idle checkpoint."
                    );
                }
            }
            Ok(())
        }
    }
}
