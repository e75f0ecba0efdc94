//! Boots the real `carevault` binary on a scratch data directory and talks to it over real TLS.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running server process with its data directory and an authenticated client.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub base: String,
    pub root: String,
    pub http: reqwest::Client,
    pub token: String,
    pub stdout_head: Vec<String>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_carevault")
}

pub fn data_dir(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("data")
}

/// Runs a carevault admin command against `data` and returns (status, stdout, stderr).
pub fn cli(data: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .expect("run carevault");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Server {
    /// Starts a fresh server with `env` extra variables.
    pub async fn start_with(env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Self::spawn(dir, env);
        s.authenticate("system/*.*").await;
        s
    }

    pub async fn start() -> Server {
        Self::start_with(&[]).await
    }

    /// Starts (or restarts) the binary on `dir`, waiting for its banner.
    pub fn spawn(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Server {
        Self::spawn_on(dir, env, "127.0.0.1:0")
    }

    /// Like [`Server::spawn`], listening on `listen` (a restart on the same port keeps the
    /// server's URLs, and so the token endpoint a client assertion names).
    pub fn spawn_on(dir: tempfile::TempDir, env: &[(&str, &str)], listen: &str) -> Server {
        let data = data_dir(&dir);
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--data")
            .arg(&data)
            .arg("--listen")
            .arg(listen);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        // Keep draining stderr (logs) into a file so the pipe never fills.
        let log_path = dir.path().join("server.log");
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log_path)
                .expect("log");
            let _ = std::io::copy(&mut BufReader::new(stderr), &mut f);
        });
        let mut lines = BufReader::new(stdout).lines();
        let mut head = Vec::new();
        let mut base = None;
        while let Some(Ok(line)) = lines.next() {
            if let Some(url) = line.strip_prefix("carevault is serving ") {
                base = Some(url.trim().to_string());
            }
            head.push(line.clone());
            if line.starts_with("TLS certificate SHA-256 fingerprint") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines.by_ref() {});
        let base = base.unwrap_or_else(|| panic!("server did not print its URL: {head:?}"));
        let root = base.trim_end_matches("/fhir").to_string();
        let cert = std::fs::read(data.join("tls/cert.pem")).expect("cert");
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&cert).expect("pem")])
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        Server {
            dir,
            child: Some(child),
            base,
            root,
            http,
            token: String::new(),
            stdout_head: head,
        }
    }

    pub fn data(&self) -> PathBuf {
        data_dir(&self.dir)
    }

    /// Registers a system client with `scope` and fetches a token for it.
    pub async fn authenticate(&mut self, scope: &str) {
        self.token = self.token_for(&format!("c{}", self.counter()), scope).await;
    }

    fn counter(&self) -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds client `name` with `scope` and returns a fresh access token.
    pub async fn token_for(&self, name: &str, scope: &str) -> String {
        let secret_file = self.dir.path().join(format!("{name}.secret"));
        let (code, out, err) = cli(
            &self.data(),
            &[
                "client",
                "add",
                name,
                "--scope",
                scope,
                "--secret-out",
                secret_file.to_str().expect("utf8"),
            ],
        );
        assert_eq!(code, 0, "client add failed: {out} {err}");
        let secret = std::fs::read_to_string(&secret_file)
            .expect("secret")
            .trim()
            .to_string();
        let resp = self
            .http
            .post(format!("{}/oauth2/token", self.root))
            .basic_auth(name, Some(&secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("token request");
        assert_eq!(resp.status(), 200, "token endpoint refused");
        let body: Value = resp.json().await.expect("token json");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(&self.token)
    }

    pub fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
    }

    pub fn put(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .put(self.url(path))
            .bearer_auth(&self.token)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.delete(self.url(path)).bearer_auth(&self.token)
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        }
    }

    /// Sends SIGTERM and waits for exit; returns the exit code.
    pub fn stop(&mut self) -> i32 {
        // Close this client's idle connections first: a blocked test thread cannot answer an
        // HTTP/2 GOAWAY, which would hold the server's graceful shutdown to its full grace period.
        self.http = reqwest::Client::new();
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal");
        child.wait().expect("wait").code().unwrap_or(-1)
    }

    /// kill -9.
    pub fn crash(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill");
        let _ = child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends a request and returns status, headers and JSON body (Null when empty or not JSON).
pub async fn send(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

/// The `expression` values of an OperationOutcome.
pub fn expressions(oo: &Value) -> Vec<String> {
    oo["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| {
            i["expression"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str().map(str::to_string))
        })
        .collect()
}

pub fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}
