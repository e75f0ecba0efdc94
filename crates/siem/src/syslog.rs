//! The syslog sink: audit entries as RFC 5424 messages over one TLS connection (RFC 5425) to the
//! organisation's collector, with rustls on the aws-lc-rs provider, TLS 1.2 or 1.3 only.
//!
//! # When is an entry delivered?
//!
//! TCP gives no application-level acknowledgement, so "the collector has it" can only be
//! inferred. The sink infers it as carefully as the transport allows:
//!
//! 1. Before a batch goes out on an existing connection, the socket is read without blocking. A
//!    syslog receiver never sends application data, so end of stream, a TLS `close_notify`, a
//!    reset or a TLS error all mean the connection is dead. If nothing is waiting for
//!    confirmation, a new connection is opened and the batch goes out on it; this is why a
//!    collector that was restarted while the stream was idle loses nothing and receives nothing
//!    twice.
//! 2. The batch is written whole and flushed to the kernel. Writes time out, so a stalled
//!    collector cannot hold the shipper forever.
//! 3. The socket is read again without blocking; a close or reset already visible fails the batch.
//! 4. The batch is *confirmed* only once the connection is seen alive a confirmation delay
//!    ([`crate::ShipperOptions::confirm_delay`], 500 ms by default) after the write, and only
//!    then does the shipper move its durable cursor past it. Batches keep flowing meanwhile; the
//!    delay costs no throughput, only cursor lag.
//! 5. If the connection dies while batches await confirmation (seen in step 1, 3 or 4, or as a
//!    write error), all of them are sent again, from the cursor, on a new connection (after
//!    backoff).
//!
//! Step 4 is what the bare "write, then advance" rule misses. A collector shutting down stops
//! reading before it closes its sockets; data that arrives in between is thrown away with a
//! reset that shows up only later, after a write that succeeded. Under a steady stream this lost
//! a few entries at almost every restart of rsyslog in this crate's tests; waiting for the
//! reset (or its absence) before confirming lost none. The delay must exceed the network round
//! trip plus that shutdown gap.
//!
//! What remains: entries repeat when a connection dies with batches unconfirmed (at most about a
//! confirmation delay's worth of entries per failure); every message carries its `seq` in
//! structured data so a SIEM can drop repeats. Entries can still be lost when no signal ever
//! comes back: a collector host that vanishes from the network without a reset while data is in
//! flight, or a collector that reads entries and then loses them itself (for example a crash
//! with an in-memory queue). Only an application-level acknowledgement (RELP, or the NDJSON sink
//! whose `fsync` is one) closes those.
//!
//! One more gap is closed at connection time. In TLS 1.3 the client finishes its handshake before
//! the server has judged the client's certificate (or its absence, when the collector requires
//! one), and a refusal arrives as an alert after the client already believes it is connected. So
//! after a TLS 1.3 handshake the sink waits for the server's first record (OpenSSL and GnuTLS
//! servers send session tickets at once) or an alert, for at most half a second, before it
//! writes anything.

use std::collections::VecDeque;
use std::io::{self, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::rfc5424::{self, MAX_APP_NAME, MAX_HOSTNAME};
use crate::{FeedEntry, SiemError};

/// Where and how to send audit entries as syslog over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogConfig {
    /// The collector's `host:port` (RFC 5425's registered port is 6514).
    pub address: String,
    /// The name the collector's certificate must carry (a DNS name or an IP address).
    pub server_name: String,
    /// PEM file with the CA certificate(s) that sign the collector's certificate; nothing else is
    /// trusted.
    pub ca_file: PathBuf,
    /// PEM files of a client certificate chain and its private key, for collectors that require
    /// mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The APP-NAME of every message, normally `carevault`.
    pub app_name: String,
    /// The HOSTNAME of every message: this node's name.
    pub hostname: String,
}

/// How long to wait for the collector's first record after a TLS 1.3 handshake before trusting
/// the connection anyway.
const TLS13_SETTLE: Duration = Duration::from_millis(500);

/// A validated syslog destination with its connection, if one is open.
pub(crate) struct SyslogSink {
    address: String,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    hostname: String,
    app_name: String,
    procid: u32,
    io_timeout: Duration,
    confirm_delay: Duration,
    session: Option<Session>,
    /// Batches written and not yet confirmed: when each was written and its last seq.
    unconfirmed: VecDeque<(Instant, u64)>,
    frame: Vec<u8>,
}

struct Session {
    tls: ClientConnection,
    sock: TcpStream,
}

impl SyslogSink {
    /// Checks the configuration and loads the certificates; no connection is made yet.
    pub(crate) fn new(
        config: SyslogConfig,
        io_timeout: Duration,
        confirm_delay: Duration,
    ) -> Result<Self, SiemError> {
        match config.address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => {
                return Err(SiemError::Config(format!(
                    "the syslog address {:?} is not host:port",
                    config.address
                )));
            }
        }
        // "[::1]" as written in an address is the IP address ::1.
        let name = config
            .server_name
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(&config.server_name);
        let server_name = ServerName::try_from(name.to_owned()).map_err(|_| {
            SiemError::Config(format!(
                "the syslog server_name {:?} is neither a DNS name nor an IP address",
                config.server_name
            ))
        })?;
        rfc5424::check_header_field("hostname", &config.hostname, MAX_HOSTNAME)
            .map_err(SiemError::Config)?;
        rfc5424::check_header_field("app_name", &config.app_name, MAX_APP_NAME)
            .map_err(SiemError::Config)?;

        let mut roots = RootCertStore::empty();
        for cert in load_certs(&config.ca_file, "the syslog CA certificates")? {
            roots.add(cert).map_err(|error| SiemError::Pem {
                what: "the syslog CA certificates",
                path: config.ca_file.clone(),
                reason: error.to_string(),
            })?;
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(SiemError::TlsConfig)?
        .with_root_certificates(roots);
        let tls = match &config.client_cert {
            Some((cert_file, key_file)) => {
                let chain = load_certs(cert_file, "the syslog client certificate")?;
                let key = load_key(key_file)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(SiemError::TlsConfig)?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Self {
            address: config.address,
            server_name,
            tls: Arc::new(tls),
            hostname: config.hostname,
            app_name: config.app_name,
            procid: std::process::id(),
            io_timeout,
            confirm_delay,
            session: None,
            unconfirmed: VecDeque::new(),
            frame: Vec::new(),
        })
    }

    /// A name for logs: `syslog collector host:port`.
    pub(crate) fn describe(&self) -> String {
        format!("syslog collector {}", self.address)
    }

    /// Whether a TLS connection to the collector is open (as far as was last seen).
    pub(crate) fn is_connected(&self) -> bool {
        self.session.is_some()
    }

    /// Sends `batch` (steps 1 to 3 of the module documentation) and queues it for confirmation.
    /// On `Err` the connection has been dropped, and with it every batch not yet confirmed: the
    /// caller must send them again.
    pub(crate) fn deliver(&mut self, batch: &[FeedEntry]) -> Result<(), SiemError> {
        if let Some(session) = &mut self.session
            && let Err(error) = session.check_alive()
        {
            self.session = None;
            if !self.unconfirmed.is_empty() {
                self.unconfirmed.clear();
                return Err(SiemError::Unconfirmed {
                    address: self.address.clone(),
                    error,
                });
            }
            // A dead idle connection is routine (a restarted collector): open a new one now.
            tracing::info!(collector = %self.address, "syslog collector closed the connection; reconnecting");
        }
        if self.session.is_none() {
            self.session = Some(self.connect()?);
        }

        self.frame.clear();
        for entry in batch {
            let message =
                rfc5424::format_rfc5424(entry, &self.hostname, &self.app_name, self.procid);
            rfc5424::append_frame(&mut self.frame, &message);
        }
        let result = match &mut self.session {
            Some(session) => session
                .send(&self.frame)
                .and_then(|()| session.check_alive()),
            None => Err(io::Error::from(io::ErrorKind::NotConnected)),
        };
        if let Err(error) = result {
            self.session = None;
            self.unconfirmed.clear();
            return Err(SiemError::Send {
                address: self.address.clone(),
                error,
            });
        }
        if let Some(last) = batch.last() {
            self.unconfirmed.push_back((Instant::now(), last.seq));
        }
        Ok(())
    }

    /// Step 4 of the module documentation: the last sequence number of the batches written at
    /// least the confirmation delay ago, if the connection is still open now. `Err` means the
    /// connection died with batches unconfirmed; they must be sent again.
    pub(crate) fn confirm(&mut self, now: Instant) -> Result<Option<u64>, SiemError> {
        if self.unconfirmed.is_empty() {
            return Ok(None);
        }
        let alive = match &mut self.session {
            Some(session) => session.check_alive(),
            None => Err(io::Error::from(io::ErrorKind::NotConnected)),
        };
        if let Err(error) = alive {
            self.session = None;
            self.unconfirmed.clear();
            return Err(SiemError::Unconfirmed {
                address: self.address.clone(),
                error,
            });
        }
        let mut confirmed = None;
        while let Some(&(written, seq)) = self.unconfirmed.front()
            && written + self.confirm_delay <= now
        {
            confirmed = Some(seq);
            self.unconfirmed.pop_front();
        }
        Ok(confirmed)
    }

    /// When the oldest unconfirmed batch can be confirmed, if there is one.
    pub(crate) fn next_confirmation(&self) -> Option<Instant> {
        self.unconfirmed
            .front()
            .map(|&(written, _)| written + self.confirm_delay)
    }

    /// Called while idle with nothing awaiting confirmation: drops the connection if the
    /// collector has closed it, so that [`Self::is_connected`] tells the truth.
    pub(crate) fn check_idle(&mut self) {
        if !self.unconfirmed.is_empty() {
            return;
        }
        let dead = self
            .session
            .as_mut()
            .is_some_and(|session| session.check_alive().is_err());
        if dead {
            tracing::info!(collector = %self.address, "syslog collector closed the idle connection");
            self.session = None;
        }
    }

    /// Closes the connection politely (TLS close_notify), if one is open.
    pub(crate) fn close(&mut self) {
        self.unconfirmed.clear();
        if let Some(mut session) = self.session.take() {
            session.tls.send_close_notify();
            // Best effort on the way out: the collector may already be gone.
            let _ = session.tls.write_tls(&mut session.sock);
            let _ = session.sock.shutdown(std::net::Shutdown::Both);
        }
    }

    fn connect(&self) -> Result<Session, SiemError> {
        let connect_error = |error: io::Error| SiemError::Connect {
            address: self.address.clone(),
            error,
        };
        let addresses = self.address.to_socket_addrs().map_err(connect_error)?;
        let mut last_error =
            io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
        let mut sock = None;
        for address in addresses {
            match TcpStream::connect_timeout(&address, self.io_timeout) {
                Ok(stream) => {
                    sock = Some(stream);
                    break;
                }
                Err(error) => last_error = error,
            }
        }
        let sock = sock.ok_or_else(|| connect_error(last_error))?;
        let setup = |sock: &TcpStream| {
            sock.set_nodelay(true)?;
            sock.set_read_timeout(Some(self.io_timeout))?;
            sock.set_write_timeout(Some(self.io_timeout))
        };
        setup(&sock).map_err(connect_error)?;

        let handshake_error = |error: io::Error| SiemError::Handshake {
            address: self.address.clone(),
            error,
        };
        let tls = ClientConnection::new(self.tls.clone(), self.server_name.clone())
            .map_err(|error| handshake_error(io::Error::other(error)))?;
        let mut session = Session { tls, sock };
        session.handshake().map_err(handshake_error)?;
        if session.tls.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            session.settle(TLS13_SETTLE).map_err(handshake_error)?;
        }
        Ok(session)
    }
}

impl Session {
    fn handshake(&mut self) -> io::Result<()> {
        while self.tls.is_handshaking() {
            let (read, written) = self.tls.complete_io(&mut self.sock)?;
            if read == 0 && written == 0 && self.tls.is_handshaking() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the collector closed the connection during the handshake",
                ));
            }
        }
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.sock)?;
        }
        Ok(())
    }

    /// Waits up to `limit` for the first record from the server after the handshake; an alert
    /// (such as a refused client certificate) or a close is an error, silence is not.
    fn settle(&mut self, limit: Duration) -> io::Result<()> {
        self.sock.set_read_timeout(Some(limit))?;
        let result = match self.tls.read_tls(&mut self.sock) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the collector closed the connection right after the handshake",
            )),
            Ok(_) => self.process().map(|_| ()),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        };
        // Restore the normal timeout from the session's write timeout, which was set alike.
        let timeout = self.sock.write_timeout()?;
        self.sock.set_read_timeout(timeout)?;
        result
    }

    /// Processes received TLS records, discarding any application data (a syslog receiver sends
    /// none); fails on a TLS error or once the peer has sent close_notify.
    fn process(&mut self) -> io::Result<()> {
        let state = self
            .tls
            .process_new_packets()
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        let mut unread = state.plaintext_bytes_to_read();
        let mut scratch = [0_u8; 4096];
        while unread > 0 {
            let n = self.tls.reader().read(&mut scratch)?;
            if n == 0 {
                break;
            }
            unread = unread.saturating_sub(n);
        }
        if state.peer_has_closed() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the collector sent close_notify",
            ));
        }
        Ok(())
    }

    /// Reads whatever the collector has sent without blocking; `Ok` means the connection is open
    /// as far as can be seen now.
    fn check_alive(&mut self) -> io::Result<()> {
        self.sock.set_nonblocking(true)?;
        let result = loop {
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => {
                    break Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the collector closed the connection",
                    ));
                }
                Ok(_) => {
                    if let Err(error) = self.process() {
                        break Err(error);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => break Err(error),
            }
        };
        self.sock.set_nonblocking(false)?;
        result
    }

    /// Writes `bytes` as TLS application data and pushes every record to the socket.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut offset = 0;
        while offset < bytes.len() {
            // rustls buffers a bounded amount of plaintext; drain it to the socket as it fills.
            let accepted = self.tls.writer().write(&bytes[offset..])?;
            if accepted == 0 && !self.tls.wants_write() {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            offset += accepted;
            while self.tls.wants_write() {
                self.tls.write_tls(&mut self.sock)?;
            }
        }
        self.sock.flush()
    }
}

fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, SiemError> {
    let pem_error = |reason: String| SiemError::Pem {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|error| pem_error(error.to_string()))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_error(error.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error(
            "the file holds no PEM CERTIFICATE block".to_owned(),
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, SiemError> {
    let pem_error = |reason: String| SiemError::Pem {
        what: "the syslog client key",
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|error| pem_error(error.to_string()))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|error| pem_error(error.to_string()))?
        .ok_or_else(|| pem_error("the file holds no PEM private key".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> SyslogConfig {
        SyslogConfig {
            address: "127.0.0.1:6514".to_owned(),
            server_name: "127.0.0.1".to_owned(),
            ca_file: dir.join("ca.pem"),
            client_cert: None,
            app_name: "carevault".to_owned(),
            hostname: "cv-node-1".to_owned(),
        }
    }

    fn write_ca(dir: &Path) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        std::fs::write(dir.join("ca.pem"), params.self_signed(&key).unwrap().pem()).unwrap();
    }

    fn refusal(config: SyslogConfig) -> String {
        match SyslogSink::new(config, Duration::from_secs(1), Duration::ZERO) {
            Ok(_) => panic!("the configuration was accepted"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn a_valid_configuration_is_accepted_without_connecting() {
        let dir = tempfile::tempdir().unwrap();
        write_ca(dir.path());
        let sink =
            SyslogSink::new(config(dir.path()), Duration::from_secs(1), Duration::ZERO).unwrap();
        assert!(!sink.is_connected());
        assert_eq!(sink.describe(), "syslog collector 127.0.0.1:6514");

        let mut v6 = config(dir.path());
        v6.address = "[::1]:6514".to_owned();
        v6.server_name = "[::1]".to_owned();
        let sink = SyslogSink::new(v6, Duration::from_secs(1), Duration::ZERO).unwrap();
        assert_eq!(sink.server_name.to_str(), "::1");
    }

    #[test]
    fn bad_configurations_are_refused_with_what_and_where() {
        let dir = tempfile::tempdir().unwrap();
        let message = refusal(config(dir.path()));
        assert!(message.contains("ca.pem"), "{message}");

        write_ca(dir.path());
        let mut bad = config(dir.path());
        bad.address = "collector.example.org".to_owned();
        assert!(refusal(bad).contains("not host:port"));

        let mut bad = config(dir.path());
        bad.server_name = "not a name!".to_owned();
        assert!(refusal(bad).contains("server_name"));

        let mut bad = config(dir.path());
        bad.hostname = "cv node 1".to_owned();
        assert!(refusal(bad).contains("hostname"));

        let mut bad = config(dir.path());
        bad.app_name = "a".repeat(49);
        assert!(refusal(bad).contains("app_name"));

        std::fs::write(dir.path().join("empty.pem"), "no pem here\n").unwrap();
        let mut bad = config(dir.path());
        bad.ca_file = dir.path().join("empty.pem");
        assert!(refusal(bad).contains("no PEM CERTIFICATE"));

        let mut bad = config(dir.path());
        bad.client_cert = Some((dir.path().join("ca.pem"), dir.path().join("empty.pem")));
        assert!(refusal(bad).contains("no PEM private key"));
    }
}
