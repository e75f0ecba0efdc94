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
    if carevault_server::INSECURE_NO_READ_AUDIT
        && std::env::var("CAREVAULT_INSECURE_NO_READ_AUDIT_BENCH").as_deref() != Ok("1")
    {
        anyhow::bail!(
            "this carevault was built for benchmarks with the audit of reads switched off and must never hold real data; use a normal build"
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
    let parts = crate::parts::open_with(&data, &config.audit.store_options())?;
    carevault_server::datadir::create_first_admin(&data, parts.rest.store().clone())?;
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
        let node = carevault_server::audit::node_name(&config.audit.node);
        let trail = std::sync::Arc::new(
            carevault_server::audit::Trail::open(
                &data,
                &**parts.rest.store(),
                node,
                &parts.keys.audit_signing.seed,
                std::sync::Arc::new(carevault_crypto::SystemClock),
            )
            .context("cannot open the audit trail")?,
        );
        let store = parts.rest.store().clone();
        let start = trail.system_event(
            carevault_audit::event::EventKind::ServerStart,
            vec![("listen".into(), local.to_string())],
        );
        carevault_store::audit_log::append_durably(&*store, vec![start])
            .context("cannot write the server-start audit event")?;
        trail
            .checkpoint(&*store, false)
            .context("cannot write the first audit checkpoint")?;
        let shippers = carevault_server::audit::start_shippers(
            &data,
            &config.siem,
            trail.node(),
            store.clone(),
        )
        .context("cannot start the SIEM export")?;
        let interval = std::time::Duration::from_secs(config.audit.checkpoint_interval_seconds);
        let app = carevault_server::App::new(config, parts.rest, auth, trail.clone());
        let checkpointer = tokio::spawn(checkpoint_loop(trail.clone(), store.clone(), interval));
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
        checkpointer.abort();
        let stop = trail.system_event(carevault_audit::event::EventKind::ServerStop, Vec::new());
        let (trail2, store2) = (trail.clone(), store.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            // The reads answered before the stop come before it in the log.
            store2
                .settle_audit()
                .context("cannot fold the audit entries of reads into the log")?;
            carevault_store::audit_log::append_durably(&*store2, vec![stop])
                .context("cannot write the server-stop audit event")?;
            trail2
                .checkpoint(&*store2, true)
                .context("cannot write the final audit checkpoint")?;
            Ok(())
        })
        .await
        .context("the final audit checkpoint task failed")??;
        // Give the SIEM shippers a bounded moment to deliver the stop event and checkpoint.
        tokio::task::spawn_blocking(move || {
            for s in shippers {
                s.stop();
            }
        })
        .await
        .context("the SIEM export did not stop")?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// Signs a checkpoint every `interval` while the log grows.
async fn checkpoint_loop(
    trail: std::sync::Arc<carevault_server::audit::Trail>,
    store: std::sync::Arc<dyn carevault_store::Store>,
    interval: std::time::Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (t, s) = (trail.clone(), store.clone());
        match tokio::task::spawn_blocking(move || t.checkpoint(&*s, false)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "audit checkpoint failed"),
            Err(e) => tracing::error!(error = %e, "audit checkpoint task failed"),
        }
    }
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
