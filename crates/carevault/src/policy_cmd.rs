//! `carevault policy`: show, check and replace the authorization policy (cedar).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use carevault_policy::{Action, Engine, Facts, Principal, Role};

use crate::{DataArg, UsageError};

/// `carevault policy ...`
#[derive(clap::Subcommand)]
pub enum PolicyCommand {
    /// Print the policy in force (the operator's, else the built-in one).
    Show {
        #[command(flatten)]
        data: DataArg,
    },
    /// Evaluate one request against the policy in force (or, with `--policy FILE`, against that
    /// file, without storing it) and print allow or deny with the reason.
    Check(CheckArgs),
    /// Validate a cedar policy file against the request schema and make it the policy in force
    /// (a running server picks it up within a second).
    Set {
        /// The policy file (cedar).
        file: PathBuf,
        #[command(flatten)]
        data: DataArg,
    },
}

/// Flags of `policy check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// Who asks: `user:NAME` (an account's roles), `role:ROLE[,ROLE...]`, or `client:ID` (a
    /// system client).
    #[arg(long, value_name = "PRINCIPAL")]
    principal: String,
    /// create, read, update, delete or search.
    #[arg(long)]
    action: String,
    /// The FHIR resource type, e.g. Observation.
    #[arg(long, value_name = "TYPE")]
    resource: String,
    /// The user has a care relationship with the patient.
    #[arg(long)]
    relationship: bool,
    /// The user has a billing relationship with the patient.
    #[arg(long)]
    billing_relationship: bool,
    /// The user holds a break-the-glass grant for the patient.
    #[arg(long)]
    break_glass: bool,
    /// The resource is in the user's own Patient compartment.
    #[arg(long)]
    own: bool,
    /// Evaluate against this cedar policy file instead of the policy in force (a dry run of
    /// `policy set`: the file is validated and nothing is stored).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    data: DataArg,
}

/// Reads and compiles a policy file; the error is one sentence naming the file.
fn policy_file(file: &std::path::Path, failure: &str) -> anyhow::Result<(String, Engine)> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the policy file {}", file.display()))?;
    match Engine::from_text(&text) {
        Ok(engine) => Ok((text, engine)),
        Err(e) => bail!("{} {failure}: {e}", file.display()),
    }
}

/// Runs a policy command.
pub fn run(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Show { data } => {
            let records = carevault_server::records::SystemRecords(open_store(&data)?);
            match carevault_policy::stored_policy(&records)
                .context("cannot read the stored policy")?
            {
                Some(text) => {
                    eprintln!("The operator's policy (set with `carevault policy set`):");
                    print!("{text}");
                }
                None => {
                    eprintln!("The built-in policy (no policy was set):");
                    print!("{}", carevault_policy::BUILTIN_POLICY);
                }
            }
            Ok(())
        }
        PolicyCommand::Check(a) => check(a),
        PolicyCommand::Set { file, data } => {
            // Validate before opening anything, so a bad file changes nothing anywhere.
            let (text, _) = policy_file(&file, "was not stored")?;
            let store = open_store(&data)?;
            let records = carevault_server::records::SystemRecords(store.clone());
            carevault_policy::set_policy(&records, &text)
                .with_context(|| format!("{} was not stored", file.display()))?;
            carevault_server::audit::append_admin_event(
                &*store,
                &carevault_server::audit::node_name(""),
                carevault_audit::event::EventKind::PolicyChange,
                vec![
                    ("change".into(), "set".into()),
                    ("file".into(), file.display().to_string()),
                    ("bytes".into(), text.len().to_string()),
                ],
                Vec::new(),
            )
            .context(
                "the policy was stored but the change could not be recorded in the audit trail",
            )?;
            println!(
                "The policy in {} is now in force; a running server applies it within a second.",
                file.display()
            );
            Ok(())
        }
    }
}

type StoreRef = Arc<dyn carevault_store::Store>;

fn open_store(data: &DataArg) -> anyhow::Result<StoreRef> {
    Ok(crate::parts::open_existing(&data.data)?
        .rest
        .store()
        .clone())
}

fn principal(spec: &str, store: &StoreRef) -> anyhow::Result<Principal> {
    if let Some(roles) = spec.strip_prefix("role:") {
        let roles = roles
            .split(',')
            .map(|r| r.trim().parse::<Role>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| UsageError(e.to_string()))?;
        return Ok(Principal {
            user: Some("policy-check".into()),
            roles,
            client_id: "carevault-cli".into(),
            ..Principal::default()
        });
    }
    if let Some(client) = spec.strip_prefix("client:") {
        return Ok(Principal {
            client_id: client.to_owned(),
            ..Principal::default()
        });
    }
    if let Some(name) = spec.strip_prefix("user:") {
        let accounts = carevault_server::records::open_accounts(store.clone());
        let Some(account) = accounts
            .get(name)
            .with_context(|| format!("cannot read the account {name}"))?
        else {
            bail!("there is no account named {name}; see `carevault user list`");
        };
        return Ok(Principal {
            user: Some(account.name),
            roles: account.roles,
            practitioner: account.practitioner,
            patient: account.patient,
            client_id: "carevault-cli".into(),
        });
    }
    Err(UsageError(format!(
        "--principal {spec:?} must be user:NAME, role:ROLE[,ROLE...] or client:ID"
    ))
    .into())
}

fn check(a: CheckArgs) -> anyhow::Result<()> {
    let action: Action = a
        .action
        .parse()
        .map_err(|e: carevault_policy::UnknownAction| UsageError(e.to_string()))?;
    if !carevault_fhir::definitions().is_resource_type(&a.resource) {
        return Err(UsageError(format!(
            "--resource {:?} is not a FHIR R4 resource type",
            a.resource
        ))
        .into());
    }
    let from_file = match &a.policy {
        Some(file) => Some(policy_file(file, "cannot be used")?.1),
        None => None,
    };
    let store = open_store(&a.data)?;
    let p = principal(&a.principal, &store)?;
    let engine = match from_file {
        Some(engine) => engine,
        None => carevault_policy::load_engine(&carevault_server::records::SystemRecords(store))
            .context("the stored policy cannot be used; fix it with `carevault policy set`")?,
    };
    let facts = Facts {
        relationship: a.relationship,
        billing_relationship: a.billing_relationship,
        break_glass: a.break_glass,
        own_compartment: a.own,
    };
    let d = engine.decide(&p, action, &a.resource, &facts);
    println!("{}: {}", if d.allowed { "allow" } else { "deny" }, d.reason);
    println!(
        "requirement for {} on {} ({}): {:?}",
        action,
        a.resource,
        carevault_policy::class_of(&a.resource),
        engine.requirement(&p, action, &a.resource)
    );
    Ok(())
}
