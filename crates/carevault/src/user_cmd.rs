//! `carevault user`: add and manage human accounts (roles, passwords, second factors, lockout).

use crate::DataArg;
use anyhow::{Context, bail};
use carevault_identity::{Account, Accounts, Link};
use secrecy::{ExposeSecret, SecretString};
use std::io::Read;
use std::path::{Path, PathBuf};

/// `carevault user ...`
#[derive(clap::Subcommand)]
pub enum UserCommand {
    /// Create an account.
    Add(AddArgs),
    /// List accounts.
    List {
        #[command(flatten)]
        data: DataArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Disable an account: it cannot sign in, and its sessions and tokens stop working at once.
    Disable {
        /// The user name.
        name: String,
        #[command(flatten)]
        data: DataArg,
    },
    /// Enable a disabled account.
    Enable {
        /// The user name.
        name: String,
        #[command(flatten)]
        data: DataArg,
    },
    /// Lift a lockout after too many failed sign-ins.
    Unlock {
        /// The user name.
        name: String,
        #[command(flatten)]
        data: DataArg,
    },
    /// Remove the account's authenticator and recovery codes; it enrols again at next sign-in.
    ResetMfa {
        /// The user name.
        name: String,
        #[command(flatten)]
        data: DataArg,
    },
    /// Replace the account's password.
    SetPassword {
        /// The user name.
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        data: DataArg,
    },
    /// Replace the account's roles.
    Roles {
        /// The user name.
        name: String,
        /// The new roles, comma-separated.
        #[arg(long, value_name = "ROLE[,ROLE...]", required = true)]
        set: String,
        #[command(flatten)]
        data: DataArg,
    },
}

/// Where the password comes from.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct PasswordArgs {
    /// Read the password from the first line of FILE.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

/// Flags of `user add`.
#[derive(clap::Args)]
pub struct AddArgs {
    /// User name: 1-64 of a-z, 0-9, '.', '_', '-'.
    name: String,
    /// Roles, comma-separated: physician, nurse, pharmacist, clinical_support, registration,
    /// billing, auditor, security_admin, system_admin, patient.
    #[arg(long, value_name = "ROLE[,ROLE...]", required = true)]
    role: String,
    /// The Practitioner this person is (clinicians).
    #[arg(long, value_name = "Practitioner/ID", conflicts_with = "patient")]
    practitioner: Option<String>,
    /// The Patient this person is (the patient role).
    #[arg(long, value_name = "Patient/ID")]
    patient: Option<String>,
    #[command(flatten)]
    password: PasswordArgs,
    /// Enrol TOTP now and write the authenticator key (otpauth URI) to FILE (created 0600);
    /// without it the person enrols at first sign-in.
    #[arg(long, value_name = "FILE")]
    totp_secret_out: Option<PathBuf>,
    /// Write ten one-use recovery codes to FILE (created 0600).
    #[arg(long, value_name = "FILE")]
    recovery_codes_out: Option<PathBuf>,
    #[command(flatten)]
    data: DataArg,
}

/// Runs a user command.
pub fn run(cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add(a) => add(a),
        UserCommand::List { data, json } => list(&data.data, json),
        UserCommand::Disable { name, data } => simple(
            &data.data,
            &name,
            "disable",
            |a, n| a.disable(n),
            "is disabled; its sessions and tokens no longer work",
        ),
        UserCommand::Enable { name, data } => simple(
            &data.data,
            &name,
            "enable",
            |a, n| a.enable(n),
            "is enabled",
        ),
        UserCommand::Unlock { name, data } => simple(
            &data.data,
            &name,
            "unlock",
            |a, n| a.unlock(n),
            "is unlocked",
        ),
        UserCommand::ResetMfa { name, data } => simple(
            &data.data,
            &name,
            "reset-mfa",
            |a, n| a.reset_mfa(n),
            "has no authenticator now and sets one up at next sign-in",
        ),
        UserCommand::SetPassword {
            name,
            password,
            data,
        } => {
            let pw = read_password(&password)?;
            simple(
                &data.data,
                &name,
                "set-password",
                |a, n| a.set_password(n, &pw),
                "has a new password; its sessions ended",
            )
        }
        UserCommand::Roles { name, set, data } => {
            let roles = carevault_identity::parse_roles(&set).map_err(crate::UsageError)?;
            let (accounts, store) = open(&data.data)?;
            let before = accounts
                .get(&name)
                .with_context(|| format!("cannot read user {name}"))?
                .ok_or_else(|| {
                    anyhow::anyhow!("no user named {name:?}; see `carevault user list`")
                })?;
            let after = accounts
                .set_roles(&name, &roles)
                .with_context(|| format!("cannot change the roles of {name}"))?;
            record(
                &*store,
                carevault_audit::event::EventKind::RoleChange,
                vec![
                    ("user".into(), name.clone()),
                    ("change".into(), "set-roles".into()),
                    ("roles-before".into(), role_list(&before)),
                    ("roles-after".into(), role_list(&after)),
                ],
            )?;
            println!("User {name} now has roles {}.", role_list(&after));
            Ok(())
        }
    }
}

fn add(a: AddArgs) -> anyhow::Result<()> {
    let roles = carevault_identity::parse_roles(&a.role).map_err(crate::UsageError)?;
    let link = match (&a.practitioner, &a.patient) {
        (Some(p), _) | (None, Some(p)) => {
            Some(Link::parse(p).map_err(|e| crate::UsageError(e.to_string()))?)
        }
        (None, None) => None,
    };
    match (&link, &a.practitioner, &a.patient) {
        (Some(Link::Patient(_)), Some(_), _) => {
            return crate::usage_error("--practitioner needs a Practitioner/ID reference");
        }
        (Some(Link::Practitioner(_)), _, Some(_)) => {
            return crate::usage_error("--patient needs a Patient/ID reference");
        }
        _ => {}
    }
    for out in [&a.totp_secret_out, &a.recovery_codes_out]
        .into_iter()
        .flatten()
    {
        if out.exists() {
            bail!(
                "{} already exists; choose a new file so no secret is overwritten",
                out.display()
            );
        }
    }
    let password = read_password(&a.password)?;
    let (accounts, store) = open(&a.data.data)?;
    let account = accounts
        .add(&a.name, &roles, link, &password)
        .with_context(|| format!("cannot add user {}", a.name))?;
    let mut detail = vec![
        ("user".into(), account.name.clone()),
        ("change".into(), "add".into()),
        ("roles".into(), role_list(&account)),
    ];
    if let Some(path) = &a.totp_secret_out {
        let e = accounts
            .enrol_totp(&account.name)
            .context("the user was added but its authenticator key could not be made")?;
        write_secret(path, &format!("{}\n", e.uri.expose_secret()))?;
        detail.push(("mfa".into(), "totp-enrolled".into()));
    }
    if let Some(path) = &a.recovery_codes_out {
        let codes = accounts
            .new_recovery_codes(&account.name)
            .context("the user was added but its recovery codes could not be made")?;
        let text: String = codes
            .iter()
            .map(|c| format!("{}\n", c.expose_secret()))
            .collect();
        write_secret(path, &text)?;
        detail.push(("recovery-codes".into(), codes.len().to_string()));
    }
    record(
        &*store,
        carevault_audit::event::EventKind::AccountChange,
        detail,
    )?;
    println!("{}", account.name);
    Ok(())
}

fn list(data: &Path, json: bool) -> anyhow::Result<()> {
    let accounts = open(data)?.0.list().context("cannot list users")?;
    if json {
        let rows: Vec<_> = accounts
            .iter()
            .map(|a| {
                serde_json::json!({
                    "name": a.name,
                    "roles": a.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                    "practitioner": a.practitioner,
                    "patient": a.patient,
                    "disabled": a.disabled,
                    "locked": a.locked,
                    "mfa": a.mfa_enrolled,
                    "failed_attempts": a.failed_attempts,
                    "recovery_codes_left": a.recovery_codes_left,
                    "created_at": a.created_at,
                    "last_sign_in_at": a.last_sign_in_at,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        for a in &accounts {
            let status = if a.disabled {
                "disabled"
            } else if a.locked {
                "locked"
            } else {
                "enabled"
            };
            println!(
                "{:<24} {:<9} {:<8} {:<36} {}",
                a.name,
                status,
                if a.mfa_enrolled { "mfa" } else { "no-mfa" },
                role_list(a),
                a.practitioner
                    .as_deref()
                    .or(a.patient.as_deref())
                    .unwrap_or("-")
            );
        }
    }
    Ok(())
}

/// One change to one account, recorded and reported.
fn simple(
    data: &Path,
    name: &str,
    change: &str,
    apply: impl FnOnce(&Accounts, &str) -> Result<Account, carevault_identity::IdentityError>,
    done: &str,
) -> anyhow::Result<()> {
    let (accounts, store) = open(data)?;
    apply(&accounts, name).with_context(|| format!("cannot {change} user {name}"))?;
    record(
        &*store,
        carevault_audit::event::EventKind::AccountChange,
        vec![
            ("user".into(), name.to_owned()),
            ("change".into(), change.to_owned()),
        ],
    )?;
    println!("User {name} {done}.");
    Ok(())
}

fn role_list(a: &Account) -> String {
    a.roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The first line of the file or of standard input, without its line ending.
fn read_password(args: &PasswordArgs) -> anyhow::Result<SecretString> {
    let mut raw = zeroize::Zeroizing::new(String::new());
    if let Some(path) = &args.password_file {
        let bytes = zeroize::Zeroizing::new(
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        );
        raw.push_str(
            std::str::from_utf8(&bytes)
                .with_context(|| format!("{} is not UTF-8 text", path.display()))?,
        );
    } else {
        std::io::stdin()
            .read_to_string(&mut raw)
            .context("cannot read the password from standard input")?;
    }
    let first = raw.split('\n').next().unwrap_or("").trim_end_matches('\r');
    if first.is_empty() {
        bail!("the password is empty; put it on the first line");
    }
    Ok(SecretString::from(first.to_owned()))
}

type StoreRef = std::sync::Arc<dyn carevault_store::Store>;

/// Opens the accounts of an existing data directory.
pub(crate) fn open(data: &Path) -> anyhow::Result<(Accounts, StoreRef)> {
    let parts = crate::parts::open_existing(data)?;
    let store = parts.rest.store().clone();
    let accounts = carevault_server::records::open_accounts(store.clone());
    Ok((accounts, store))
}

/// Records an account change in the audit trail (never a secret).
pub(crate) fn record(
    store: &dyn carevault_store::Store,
    kind: carevault_audit::event::EventKind,
    detail: Vec<(String, String)>,
) -> anyhow::Result<()> {
    carevault_server::audit::append_admin_event(
        store,
        &carevault_server::audit::node_name(""),
        kind,
        detail,
        Vec::new(),
    )
    .context("the change was made but could not be recorded in the audit trail")?;
    Ok(())
}

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    carevault_server::datadir::write_private(path, text.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", path.display()))
}
