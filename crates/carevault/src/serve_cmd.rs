//! `carevault serve`: prepare the data directory, open the parts, listen on HTTPS until a signal.

use crate::DataArg;
use anyhow::Context;
use carevault_server::config::Config;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags of `carevault serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    data: DataArg,
    /// Address to listen on (overrides the config file).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Config file (default: DIR/carevault.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve reads only; writes answer 503 (emergency mode).
    #[arg(long)]
    read_only: bool,
}

/// Runs the server until SIGTERM or SIGINT.
pub fn run(args: ServeArgs, log_format: Option<&str>) -> anyhow::Result<()> {
    let data = args.data.data;
    if carevault_crypto::INSECURE_PLAINTEXT
        && std::env::var("CAREVAULT_INSECURE_PLAINTEXT_BENCH").as_deref() != Ok("1")
    {
        anyhow::bail!(
            "this carevault was built for benchmarks with encryption switched off and must never hold real data; use a normal build"
        );
    }
    let config_path = args.config.unwrap_or_else(|| data.join("carevault.toml"));
    let mut config = Config::load(&config_path, std::env::vars())?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    crate::init_logging(log_format.unwrap_or(&config.log.format));
    if args.read_only {
        anyhow::bail!(
            "read-only mode is not available yet (it arrives with the backup issue); start without --read-only"
        );
    }
    let cert = data.join(&config.tls.cert);
    let key = data.join(&config.tls.key);
    let prepared = carevault_server::datadir::prepare(&data, (&cert, &key))?;
    let parts = crate::parts::open(&data)?;
    let identity = carevault_server::tls::Identity::load(&cert, &key)?;
    let fingerprint = identity.fingerprint();
    let tls = identity.server_config()?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("carevault-http")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}; is another server using it?",
                    config.server.listen
                )
            })?;
        let local = listener
            .local_addr()
            .context("cannot read the listening address")?;
        config.server.listen = local;
        let app_base = if config.server.base_url.is_empty() {
            format!("https://{local}/fhir")
        } else {
            config.server.base_url.clone()
        };
        let auth = crate::parts::auth(&parts, &app_base, config.auth.token_lifetime_seconds)?;
        let master = parts.keys.master_source.to_string();
        for w in &parts.keys.master_source.warnings {
            tracing::warn!("{w}");
        }
        let key_created = parts.keys.created;
        let app = carevault_server::App::new(config, parts.rest, auth);
        println!("carevault is serving {}", app.base_url);
        if let Some(pw) = &prepared.admin_password {
            println!(
                "The admin password is in {} (readable by you only).",
                pw.display()
            );
        }
        if prepared.first_start || key_created {
            println!("The master key is {master}.");
        }
        println!("TLS certificate SHA-256 fingerprint: {fingerprint}");
        tracing::warn!("the master key is {master}");
        let handle = carevault_server::serve(app, listener, tls, shutdown_signal()).await;
        if handle.abandoned_connections > 0 {
            tracing::warn!("some connections were still busy when the grace period ended");
        }
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// Resolves at the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            // Without signal handlers the only way to stop is to be killed; wait forever.
            std::future::pending::<()>().await;
        }
    }
}
