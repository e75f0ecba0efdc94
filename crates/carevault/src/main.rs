//! The carevault command line: parses commands, wires the parts, nothing else.
#![forbid(unsafe_code)]

mod audit_cmd;
mod client_cmd;
mod import;
mod keys_cmd;
mod parts;
mod patient_cmd;
mod policy_cmd;
mod serve_cmd;
mod training_cmd;
mod user_cmd;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// carevault — a FHIR R4 clinical data server that is secure by default.
#[derive(Parser)]
#[command(name = "carevault", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log format on stderr: `text` for people, `json` for machines.
    #[arg(long, global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the HTTPS server (initialises the data directory on first start).
    Serve(serve_cmd::ServeArgs),
    /// Load FHIR Bundle JSON and NDJSON files or folders through validation and transactions.
    Import(import::ImportArgs),
    /// Register and manage OAuth clients (apps and interfaces).
    #[command(subcommand)]
    Client(client_cmd::ClientCommand),
    /// Verify the audit trail and produce access reports.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Key status and rotation (master key, data key).
    #[command(subcommand)]
    Keys(keys_cmd::KeysCommand),
    /// Patient-level operations: crypto-shredding erasure.
    #[command(subcommand)]
    Patient(patient_cmd::PatientCommand),
    /// Add and manage user accounts (roles, passwords, authenticators, lockout).
    #[command(subcommand)]
    User(user_cmd::UserCommand),
    /// Show, check and replace the authorization policy (cedar).
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Record and list the training courses users completed.
    #[command(subcommand)]
    Training(training_cmd::TrainingCommand),
}

/// `--data DIR`, shared by every command.
#[derive(clap::Args, Clone)]
pub struct DataArg {
    /// The data directory.
    #[arg(long = "data", value_name = "DIR", default_value = "./carevault-data")]
    pub data: PathBuf,
}

/// mimalloc instead of glibc's allocator: a loaded server allocates and frees on many threads at
/// once (requests on the workers, audit entries freed by the fold thread), where glibc's arenas
/// spent 7–15 µs per read (docs/benchmarks.md "session 10").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Every file carevault creates (store, WAL, keys, exports) is private to its user.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve_cmd::run(args, cli.log_format.as_deref()),
        Command::Import(args) => {
            init_logging(cli.log_format.as_deref().unwrap_or("text"));
            import::run(args)
        }
        Command::Client(cmd) => {
            init_logging(cli.log_format.as_deref().unwrap_or("text"));
            client_cmd::run(cmd)
        }
        Command::Audit(cmd) => {
            init_logging(cli.log_format.as_deref().unwrap_or("text"));
            audit_cmd::run(cmd)
        }
        Command::Keys(cmd) => {
            init_logging(cli.log_format.as_deref().unwrap_or("text"));
            keys_cmd::run(cmd)
        }
        Command::Patient(cmd) => {
            init_logging(cli.log_format.as_deref().unwrap_or("text"));
            patient_cmd::run(cmd)
        }
        Command::User(cmd) => {
            init_logging(cli.log_format.as_deref().unwrap_or("text"));
            user_cmd::run(cmd)
        }
        Command::Policy(cmd) => {
            init_logging(cli.log_format.as_deref().unwrap_or("text"));
            policy_cmd::run(cmd)
        }
        Command::Training(cmd) => {
            init_logging(cli.log_format.as_deref().unwrap_or("text"));
            training_cmd::run(cmd)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("carevault: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            // One sentence: the outermost context, then its causes, on one line.
            let msg = e
                .chain()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": ");
            eprintln!("carevault: {msg}");
            ExitCode::from(1)
        }
    }
}

/// A command line that parses but makes no sense: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

/// Fails with a usage error (exit 2).
pub fn usage_error<T>(msg: &str) -> anyhow::Result<T> {
    Err(UsageError(msg.to_owned()).into())
}

/// Logs go to stderr; `RUST_LOG` narrows or widens them.
pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
