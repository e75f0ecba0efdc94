//! `carevault client`: register and manage OAuth clients (apps and interfaces).

use crate::DataArg;
use anyhow::{Context, bail};
use secrecy::ExposeSecret;
use std::path::{Path, PathBuf};

/// `carevault client ...`
#[derive(clap::Subcommand)]
pub enum ClientCommand {
    /// Register a client and print its client_id.
    Add(AddArgs),
    /// List clients.
    List {
        #[command(flatten)]
        data: DataArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Disable a client: its tokens stop working at once.
    Disable {
        name: String,
        #[command(flatten)]
        data: DataArg,
    },
    /// Replace a client's secret; the old one stops working.
    RotateSecret {
        name: String,
        #[command(flatten)]
        data: DataArg,
        /// Where to write the new secret (created 0600).
        #[arg(long, value_name = "FILE", required = true)]
        secret_out: PathBuf,
    },
}

/// Flags of `client add`.
#[derive(clap::Args)]
pub struct AddArgs {
    /// Client name, which is also its client_id: 1-64 of a-z, 0-9, '.', '_', '-'.
    name: String,
    /// Space-separated SMART scopes, e.g. "system/*.rs".
    #[arg(long, required = true)]
    scope: String,
    /// Redirect URI of a SMART app (may repeat).
    #[arg(long = "redirect-uri", value_name = "URI")]
    redirect_uri: Vec<String>,
    /// A public SMART app (no secret; PKCE alone).
    #[arg(long, conflicts_with_all = ["secret_out", "jwks"])]
    public: bool,
    /// Give the client a secret (client_secret_basic), written to FILE (created 0600).
    #[arg(long, value_name = "FILE", conflicts_with = "jwks")]
    secret_out: Option<PathBuf>,
    /// Public key set of a SMART Backend Services client (private_key_jwt).
    #[arg(long, value_name = "FILE")]
    jwks: Option<PathBuf>,
    #[command(flatten)]
    data: DataArg,
}

/// Runs a client command.
pub fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Add(a) => add(a),
        ClientCommand::List { data, json } => list(&data.data, json),
        ClientCommand::Disable { name, data } => {
            let (clients, store) = open(&data.data)?;
            clients
                .disable(&name)
                .with_context(|| format!("cannot disable client {name}"))?;
            record_change(&*store, &name, "disable")?;
            println!("Client {name} is disabled; its tokens no longer work.");
            Ok(())
        }
        ClientCommand::RotateSecret {
            name,
            data,
            secret_out,
        } => {
            let (clients, store) = open(&data.data)?;
            let secret = clients
                .rotate_secret(&name)
                .with_context(|| format!("cannot rotate the secret of {name}"))?;
            write_secret(&secret_out, secret.expose_secret())?;
            record_change(&*store, &name, "rotate-secret")?;
            println!("New secret of {name} written to {}.", secret_out.display());
            Ok(())
        }
    }
}

fn add(a: AddArgs) -> anyhow::Result<()> {
    if let Some(out) = &a.secret_out
        && out.exists()
    {
        bail!(
            "{} already exists; choose a new file so no secret is overwritten",
            out.display()
        );
    }
    let jwks = match &a.jwks {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the key set {}", path.display()))?;
            Some(
                serde_json::from_str::<serde_json::Value>(&text)
                    .with_context(|| format!("{} is not a JSON Web Key Set", path.display()))?,
            )
        }
        None => None,
    };
    let (clients, store) = open(&a.data.data)?;
    let context = || format!("cannot register client {}", a.name);
    let (record, secret) = if a.redirect_uri.is_empty() {
        if a.public {
            bail!("--public is for SMART apps: give their --redirect-uri");
        }
        match (&a.secret_out, jwks) {
            (Some(_), _) => {
                let (r, s) = clients.add(&a.name, &a.scope).with_context(context)?;
                (r, Some(s))
            }
            (None, Some(jwks)) => (
                clients
                    .add_backend(&a.name, &a.scope, &jwks)
                    .with_context(context)?,
                None,
            ),
            (None, None) => bail!(
                "a system client needs --secret-out FILE (client_secret_basic) or --jwks FILE (private_key_jwt)"
            ),
        }
    } else {
        if a.jwks.is_some() {
            bail!("--jwks is for Backend Services clients, which have no --redirect-uri");
        }
        if !a.public && a.secret_out.is_none() {
            bail!("a SMART app is either --public or confidential with --secret-out FILE");
        }
        clients
            .add_app(&a.name, &a.scope, &a.redirect_uri, a.public)
            .with_context(context)?
    };
    if let (Some(out), Some(secret)) = (&a.secret_out, &secret) {
        write_secret(out, secret.expose_secret())?;
    }
    record_change(&*store, &record.client_id, "add")?;
    println!("{}", record.client_id);
    Ok(())
}

fn list(data: &Path, json: bool) -> anyhow::Result<()> {
    let clients = open(data)?.0.list().context("cannot list clients")?;
    if json {
        let rows: Vec<_> = clients
            .iter()
            .map(|c| {
                serde_json::json!({"client_id": c.client_id, "name": c.name, "scopes": c.scopes,
                    "kind": c.kind.as_str(), "redirect_uris": c.redirect_uris,
                    "disabled": c.disabled})
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        for c in &clients {
            println!(
                "{:<24} {:<16} {:<9} {}",
                c.client_id,
                c.kind.as_str(),
                if c.disabled { "disabled" } else { "enabled" },
                c.scopes.join(" ")
            );
        }
    }
    Ok(())
}

type StoreRef = std::sync::Arc<dyn carevault_store::Store>;

fn open(data: &Path) -> anyhow::Result<(carevault_auth::Clients, StoreRef)> {
    let parts = crate::parts::open_existing(data)?;
    let store = parts.rest.store().clone();
    let clients = carevault_server::records::open_clients(store.clone())
        .context("cannot open the client registry")?;
    Ok((clients, store))
}

/// Records a client change in the audit trail (never the secret).
fn record_change(
    store: &dyn carevault_store::Store,
    client: &str,
    change: &str,
) -> anyhow::Result<()> {
    carevault_server::audit::append_admin_event(
        store,
        &carevault_server::audit::node_name(""),
        carevault_audit::event::EventKind::ClientChange,
        vec![
            ("client".into(), client.into()),
            ("change".into(), change.into()),
        ],
        Vec::new(),
    )
    .context("the change was made but could not be recorded in the audit trail")?;
    Ok(())
}

fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    carevault_server::datadir::write_private(path, format!("{secret}\n").as_bytes(), 0o600)
        .with_context(|| format!("cannot write the secret to {}", path.display()))
}
