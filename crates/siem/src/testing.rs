//! Test support: a real syslog collector for tests, Debian's rsyslogd with TLS (packages `rsyslog`
//! and `rsyslog-openssl`), started on a loopback port with certificates made here, and the
//! messages it received read back.
//!
//! Compiled only with the `test-support` feature, so normal builds carry none of it (nor rcgen).
//! Everything here panics with a message on failure: it is meant for tests. A missing rsyslogd
//! fails with a message saying what to install; nothing here skips a test.
//!
//! ```no_run
//! use carevault_siem::testing::LoopbackCollector;
//! let dir = std::env::temp_dir().join("collector");
//! let mut collector = LoopbackCollector::start(&dir);
//! // ... point a shipper at collector.address(), trusting collector.ca_file ...
//! collector.rsyslog.stop();
//! collector.rsyslog.restart();
//! let seqs: Vec<u64> = collector.rsyslog.messages().iter().map(|m| m.seq()).collect();
//! # drop(seqs);
//! ```

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use crate::SD_ID;

/// Every wait in this module gives up after this long, so a failure cannot hang CI.
pub const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Certificates.

/// A certificate authority made for one test.
pub struct Ca {
    /// The CA certificate, PEM.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A fresh self-signed CA whose common name is `name`.
pub fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("generate a CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let pem = params.self_signed(&key).expect("self-sign the CA").pem();
    Ca {
        pem,
        issuer: Issuer::new(params, key),
    }
}

/// A certificate for `names` (DNS names or IP addresses) signed by `ca`, written as `<stem>.pem`
/// and `<stem>.key` in `dir`; returns both paths.
pub fn leaf(dir: &Path, stem: &str, ca: &Ca, names: &[&str]) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().expect("generate a key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("certificate parameters");
    params.distinguished_name.push(DnType::CommonName, names[0]);
    let cert = params
        .signed_by(&key, &ca.issuer)
        .expect("sign the certificate");
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    fs::write(&cert_path, cert.pem()).expect("write the certificate");
    fs::write(&key_path, key.serialize_pem()).expect("write the key");
    (cert_path, key_path)
}

/// Writes `ca`'s certificate as `<stem>.pem` in `dir` and returns its path.
pub fn write_ca(dir: &Path, stem: &str, ca: &Ca) -> PathBuf {
    let path = dir.join(format!("{stem}.pem"));
    fs::write(&path, &ca.pem).expect("write the CA certificate");
    path
}

// ---------------------------------------------------------------------------------------------
// rsyslogd.

/// Where rsyslogd is: on `PATH` or at `/usr/sbin/rsyslogd`. Panics, saying what to install, if
/// it is in neither.
pub fn rsyslogd() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("rsyslogd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/rsyslogd")])
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "rsyslogd is not on PATH nor at /usr/sbin/rsyslogd; these tests need a real syslog \
                 collector: install the Debian packages rsyslog and rsyslog-openssl \
                 (apt-get install -y rsyslog rsyslog-openssl)"
            )
        })
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// How rsyslog authenticates clients.
#[derive(Clone, Copy, Debug)]
pub enum ClientAuth {
    /// Anyone may send (server-authenticated TLS only).
    Anonymous,
    /// Clients must present a certificate signed by the CA.
    CertificateRequired,
}

/// One rsyslogd in the foreground, with its own work directory, listening with TLS on
/// 127.0.0.1; killed when dropped.
///
/// Messages whose APP-NAME is `carevault` are written one per line as
/// `PRI|HOSTNAME|APP-NAME|PROCID|MSGID|STRUCTURED-DATA|TIMESTAMP|MSG` (see [`Message`]); anything
/// else goes to `internal.log` in the directory.
pub struct Rsyslog {
    child: Option<Child>,
    dir: PathBuf,
    conf: PathBuf,
    port: u16,
}

impl Rsyslog {
    /// Writes a configuration into `dir` and starts rsyslogd on 127.0.0.1:`port` with TLS, with
    /// the certificate `cert` and key `key`, trusting `ca` for client certificates; returns once
    /// it listens.
    pub fn start(
        dir: &Path,
        port: u16,
        ca: &Path,
        cert: &Path,
        key: &Path,
        auth: ClientAuth,
    ) -> Rsyslog {
        let work = dir.join("work");
        fs::create_dir_all(&work).expect("create rsyslog's work directory");
        let auth_mode = match auth {
            ClientAuth::Anonymous => "anon",
            ClientAuth::CertificateRequired => "x509/certvalid",
        };
        // No imuxsock: this rsyslogd has no system socket and writes nothing under /var/log.
        let conf = format!(
            r#"global(
  workDirectory="{work}"
  maxMessageSize="64k"
  defaultNetstreamDriver="ossl"
  defaultNetstreamDriverCAFile="{ca}"
  defaultNetstreamDriverCertFile="{cert}"
  defaultNetstreamDriverKeyFile="{key}"
)
module(load="imtcp" StreamDriver.Name="ossl" StreamDriver.Mode="1" StreamDriver.AuthMode="{auth_mode}")
input(type="imtcp" address="127.0.0.1" port="{port}")
template(name="fields" type="string"
  string="%pri%|%hostname%|%app-name%|%procid%|%msgid%|%structured-data%|%timereported:::date-rfc3339%|%msg%\n")
if $app-name == "carevault" then {{
  action(type="omfile" file="{out}" template="fields")
}} else {{
  action(type="omfile" file="{internal}")
}}
"#,
            work = work.display(),
            ca = ca.display(),
            cert = cert.display(),
            key = key.display(),
            out = dir.join("out.log").display(),
            internal = dir.join("internal.log").display(),
        );
        let conf_path = dir.join("rsyslog.conf");
        fs::write(&conf_path, conf).expect("write rsyslog.conf");
        let mut rsyslog = Rsyslog {
            child: None,
            dir: dir.to_path_buf(),
            conf: conf_path,
            port,
        };
        rsyslog.restart();
        rsyslog
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory: configuration, output and diagnostics.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether it is running (started and not stopped by [`Rsyslog::stop`]).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts rsyslogd (again) with the same configuration and port and waits until it listens.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "rsyslogd is already running");
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rsyslogd.stderr"))
            .expect("open rsyslogd.stderr");
        let child = Command::new(rsyslogd())
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("clone a file handle"))
            .stderr(stderr)
            .spawn()
            .expect("spawn rsyslogd");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let exited = self
                .child
                .as_mut()
                .map(|child| child.try_wait().expect("poll rsyslogd"));
            if let Some(Some(status)) = exited {
                self.child = None;
                panic!(
                    "rsyslogd exited at start ({status}); {}",
                    self.diagnostics()
                );
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not listen within {PATIENCE:?}; {}",
                self.diagnostics()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops rsyslogd gracefully (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("rsyslogd is not running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid fits i32"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal rsyslogd");
        let deadline = Instant::now() + PATIENCE;
        while child.try_wait().expect("poll rsyslogd").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "rsyslogd ignored SIGTERM for {PATIENCE:?}; {}",
                    self.diagnostics()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The messages rsyslog wrote for app-name carevault, one per line, as written.
    pub fn received(&self) -> Vec<String> {
        match fs::read_to_string(self.dir.join("out.log")) {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => panic!("cannot read rsyslog's output: {error}"),
        }
    }

    /// The messages rsyslog wrote for app-name carevault, parsed (see [`Message::parse`]).
    pub fn messages(&self) -> Vec<Message> {
        self.received()
            .iter()
            .map(|line| Message::parse(line))
            .collect()
    }

    /// rsyslogd's own output and internal messages, for failure messages.
    pub fn diagnostics(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!(
            "rsyslogd stderr:\n{}\nrsyslog internal messages:\n{}",
            read("rsyslogd.stderr"),
            read("internal.log")
        )
    }

    /// Polls `done` every 20 ms until it holds; panics after [`PATIENCE`] with `what` and
    /// rsyslog's diagnostics.
    pub fn wait_until(&self, what: &str, done: impl FnMut() -> bool) {
        self.wait_until_for(what, PATIENCE, done);
    }

    /// [`Rsyslog::wait_until`] with another bound.
    pub fn wait_until_for(&self, what: &str, patience: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + patience;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "timed out after {patience:?} waiting for {what}; {}",
                self.diagnostics()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `done` every 20 ms until it holds; panics after [`PATIENCE`] with `what` and `rsyslog`'s
/// diagnostics.
pub fn wait_until(what: &str, rsyslog: &Rsyslog, done: impl FnMut() -> bool) {
    rsyslog.wait_until(what, done);
}

/// The usual collector: rsyslogd on a free loopback port with a certificate for `127.0.0.1`
/// signed by a fresh CA, taking anonymous clients. Everything lives in one directory.
pub struct LoopbackCollector {
    /// The running collector.
    pub rsyslog: Rsyslog,
    /// The CA certificate (PEM) a client must trust.
    pub ca_file: PathBuf,
}

impl LoopbackCollector {
    /// The TLS name the collector's certificate carries.
    pub const SERVER_NAME: &'static str = "127.0.0.1";

    /// Makes the CA and certificate in `dir` (created if need be) and starts rsyslogd.
    pub fn start(dir: &Path) -> LoopbackCollector {
        fs::create_dir_all(dir).expect("create the collector's directory");
        let ca = ca("carevault test CA");
        let ca_file = write_ca(dir, "ca", &ca);
        let (cert, key) = leaf(dir, "collector", &ca, &[Self::SERVER_NAME]);
        let rsyslog = Rsyslog::start(
            dir,
            free_port(),
            &ca_file,
            &cert,
            &key,
            ClientAuth::Anonymous,
        );
        LoopbackCollector { rsyslog, ca_file }
    }

    /// `127.0.0.1:<port>`, for a shipper.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.rsyslog.port())
    }
}

// ---------------------------------------------------------------------------------------------
// What rsyslog received.

/// One message as rsyslog wrote it, split into its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The line as written.
    pub line: String,
    /// PRI, e.g. `110` for log audit / informational.
    pub pri: String,
    /// HOSTNAME.
    pub hostname: String,
    /// APP-NAME.
    pub app_name: String,
    /// PROCID.
    pub procid: String,
    /// MSGID.
    pub msgid: String,
    /// STRUCTURED-DATA, e.g. `[carevault@32473 seq="7"]`.
    pub structured_data: String,
    /// TIMESTAMP as rsyslog renders it (RFC 3339).
    pub timestamp: String,
    /// MSG, with its BOM if it had one.
    pub msg: String,
}

impl Message {
    /// Splits a line of rsyslog's output. Panics if it does not have the eight fields.
    pub fn parse(line: &str) -> Message {
        let fields: Vec<&str> = line.splitn(8, '|').collect();
        assert_eq!(fields.len(), 8, "not a line of rsyslog's output: {line}");
        Message {
            line: line.to_owned(),
            pri: fields[0].to_owned(),
            hostname: fields[1].to_owned(),
            app_name: fields[2].to_owned(),
            procid: fields[3].to_owned(),
            msgid: fields[4].to_owned(),
            structured_data: fields[5].to_owned(),
            timestamp: fields[6].to_owned(),
            msg: fields[7].to_owned(),
        }
    }

    /// The `seq` in the structured data `[carevault@32473 seq="N"]`. Panics if there is none.
    pub fn seq(&self) -> u64 {
        self.structured_data
            .strip_prefix(&format!("[{SD_ID} seq=\""))
            .and_then(|rest| rest.strip_suffix("\"]"))
            .and_then(|seq| seq.parse().ok())
            .unwrap_or_else(|| panic!("structured data without a seq: {}", self.line))
    }

    /// The message body without its UTF-8 BOM. Panics if it has no BOM (RFC 5424 requires one
    /// before UTF-8 text).
    pub fn json(&self) -> &[u8] {
        self.msg
            .as_bytes()
            .strip_prefix(b"\xEF\xBB\xBF")
            .unwrap_or_else(|| panic!("no BOM: {}", self.line))
    }
}
