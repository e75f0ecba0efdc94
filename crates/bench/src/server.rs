//! The server under test as a child process, and the admin commands the benchmark runs
//! (`import`, `client add`), all through the CLI contract of PRODUCT.md 2.1.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::Method;

use crate::client::{Target, fingerprint, read_cert_der};

/// Runs `cargo build --release -p carevault` and returns the binary's path (beside this tool's).
pub fn build_release() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("[bench] cargo build --release -p carevault");
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "carevault"])
        .current_dir(crate::workspace_root())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("`cargo build --release -p carevault` failed");
    }
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let bin = exe.with_file_name("carevault");
    if !bin.exists() {
        bail!("{} is missing after the build; pass --bin", bin.display());
    }
    Ok(bin)
}

/// A free loopback port (bound, read, released).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr().context("cannot read the port")?.port())
}

/// The running server.
pub struct Server {
    child: Child,
    target: Target,
    log: PathBuf,
    stdout: Arc<Mutex<Vec<String>>>,
    fingerprint_matches: Option<bool>,
}

/// How the server stopped.
pub struct Shutdown {
    /// Its exit code (`None`: killed by a signal or did not stop in time).
    pub exit_code: Option<i32>,
    /// Seconds from SIGTERM to exit.
    pub seconds: f64,
}

impl Server {
    /// Starts `bin serve` on `data` at a free loopback port and waits for `/readyz`.
    pub async fn start(bin: &Path, data: &Path, scratch: &Path) -> anyhow::Result<Self> {
        Self::start_env(bin, data, scratch, &[]).await
    }

    /// Like [`Server::start`], with extra environment variables for the server.
    pub async fn start_env(
        bin: &Path,
        data: &Path,
        scratch: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?)
            .parse()
            .context("bad address")?;
        let log = scratch.join("server.log");
        let log_file = std::fs::File::create(&log).context("cannot create the server log")?;
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg(addr.to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let lines = stdout.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            });
        }
        let cert_path = data.join("tls").join("cert.pem");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().context("cannot check the server")? {
                bail!(
                    "the server exited with {status} before it was ready; its log ends: {}",
                    tail(&log, 5)
                );
            }
            if started.elapsed() > Duration::from_secs(180) {
                let _ = child.kill();
                bail!(
                    "the server was not ready within 180 s; its log ends: {}",
                    tail(&log, 5)
                );
            }
            if let Ok(der) = read_cert_der(&cert_path)
                && let Ok(target) = Target::new(addr, der.clone())
                && let Ok(mut conn) = target.connect().await
                && let Ok(reply) = conn.send(Method::GET, "/readyz", &[], Bytes::new()).await
                && reply.status.is_success()
            {
                let printed = stdout.lock().ok().and_then(|l| {
                    l.iter()
                        .find(|s| s.to_ascii_lowercase().contains("fingerprint"))
                        .cloned()
                });
                let fingerprint_matches = printed.map(|line| {
                    let hex = |s: &str| {
                        s.chars()
                            .filter(char::is_ascii_hexdigit)
                            .collect::<String>()
                            .to_uppercase()
                    };
                    hex(&line).ends_with(&hex(&fingerprint(&der)))
                });
                return Ok(Self {
                    child,
                    target,
                    log,
                    stdout,
                    fingerprint_matches,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Where to send requests.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Whether the fingerprint printed at start equals SHA-256 of `DIR/tls/cert.pem`.
    pub fn fingerprint_matches(&self) -> Option<bool> {
        self.fingerprint_matches
    }

    /// The server's peak resident set (VmHWM) in MB.
    pub fn peak_rss_mb(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_ascii_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    /// The last `n` lines of the server's log (stderr) and stdout.
    pub fn log_tail(&self, n: usize) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if let Ok(out) = self.stdout.lock() {
            lines.extend(out.iter().cloned());
        }
        let skip = lines.len().saturating_sub(n);
        lines.split_off(skip)
    }

    /// Sends SIGTERM and waits up to `grace` for the exit; kills it after that.
    pub fn stop(&mut self, grace: Duration) -> Shutdown {
        let t0 = Instant::now();
        // `kill` the command keeps this crate free of unsafe signal calls.
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        if sent.map(|s| s.success()).unwrap_or(false) {
            while t0.elapsed() < grace {
                match self.child.try_wait() {
                    Ok(Some(status)) => {
                        return Shutdown {
                            exit_code: status.code(),
                            seconds: t0.elapsed().as_secs_f64(),
                        };
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                    Err(_) => break,
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Shutdown {
            exit_code: None,
            seconds: t0.elapsed().as_secs_f64(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Never leave a server behind, whatever happened.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `n` lines of a file, joined with " | " (the scratch directory is gone after an error).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let shown = lines[lines.len().saturating_sub(n)..].join(" | ");
    if shown.is_empty() {
        "(nothing)".into()
    } else {
        shown
    }
}

/// What `carevault import --json` reported, and how long the process took.
pub struct ImportResult {
    /// Resources imported.
    pub resources: u64,
    /// Wall time of the process.
    pub wall_seconds: f64,
    /// The tool's own `seconds`.
    pub tool_seconds: Option<f64>,
    /// Rejected files, as reported.
    pub rejected: serde_json::Value,
}

/// Runs `carevault import --data DIR --json SYNTHEA`.
pub fn import(
    bin: &Path,
    data: &Path,
    synthea: &Path,
    scratch: &Path,
) -> anyhow::Result<ImportResult> {
    let log = std::fs::File::create(scratch.join("import.log"))
        .context("cannot create the import log")?;
    let t0 = Instant::now();
    let out = Command::new(bin)
        .arg("import")
        .arg("--data")
        .arg(data)
        .arg("--json")
        .arg(synthea)
        .stdin(Stdio::null())
        .stderr(log)
        .output()
        .context("cannot run carevault import")?;
    let wall_seconds = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "carevault import failed ({}): {}",
            out.status,
            tail(&scratch.join("import.log"), 5)
        );
    }
    parse_import_summary(&String::from_utf8_lossy(&out.stdout), wall_seconds)
}

/// Reads the JSON summary (the last JSON line of stdout).
fn parse_import_summary(stdout: &str, wall_seconds: f64) -> anyhow::Result<ImportResult> {
    let summary: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
        .context("carevault import --json printed no JSON summary")?;
    let resources = summary["resources"]
        .as_u64()
        .context("the import summary has no `resources` count")?;
    Ok(ImportResult {
        resources,
        wall_seconds,
        tool_seconds: summary["seconds"].as_f64(),
        rejected: summary["rejected"].clone(),
    })
}

/// Runs `carevault client add bench --scope "system/*.*" --secret-out FILE --data DIR` and
/// returns the secret.
pub fn add_client(bin: &Path, data: &Path, scratch: &Path) -> anyhow::Result<String> {
    let secret_file = scratch.join("bench.secret");
    let out = Command::new(bin)
        .args([
            "client",
            "add",
            "bench",
            "--scope",
            "system/*.*",
            "--secret-out",
        ])
        .arg(&secret_file)
        .arg("--data")
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .context("cannot run carevault client add")?;
    if !out.status.success() {
        bail!(
            "carevault client add failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let secret = std::fs::read_to_string(&secret_file).with_context(|| {
        format!(
            "cannot read the client secret from {}",
            secret_file.display()
        )
    })?;
    Ok(secret.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_summary_is_the_last_json_line() {
        let out =
            "progress 10%\n{\"files\":72,\"resources\":12345,\"seconds\":2.5,\"rejected\":[]}\n";
        let r = parse_import_summary(out, 3.0).unwrap();
        assert_eq!(
            (r.resources, r.tool_seconds, r.wall_seconds),
            (12345, Some(2.5), 3.0)
        );
        assert!(parse_import_summary("no json here", 1.0).is_err());
        assert!(parse_import_summary("{\"files\":1}", 1.0).is_err());
    }

    #[test]
    fn free_ports_are_loopback_ports() {
        assert!(free_port().unwrap() > 0);
    }
}
