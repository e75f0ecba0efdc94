//! The syslog sink against a real collector: Debian's rsyslogd with TLS (packages `rsyslog` and
//! `rsyslog-openssl`), started by each test on a loopback port with certificates made here, through
//! `carevault_siem::testing` (the `test-support` feature, which the self dev-dependency enables).
//!
//! A missing rsyslogd fails these tests with a message saying what to install; they never skip.
//! One test uses an in-process rustls collector instead, one that stops reading before it closes
//! (as a collector shutting down does), to show deterministically that no entry is lost then.
// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use carevault_siem::testing::{
    ClientAuth, Message, PATIENCE, Rsyslog, ca, free_port, leaf, wait_until, write_ca,
};
use carevault_siem::{
    AuditFeed, FeedEntry, FeedError, Shipper, ShipperOptions, ShipperStatus, Sink, SyslogConfig,
    Wake,
};

/// 2026-11-28T09:14:03.117Z; entry `seq` is recorded `seq` milliseconds later.
const BASE_MS: i64 = 1_795_857_243_117;

// ---------------------------------------------------------------------------------------------
// The audit trail, in memory.

#[derive(Default)]
struct MemoryFeed {
    entries: Mutex<Vec<FeedEntry>>,
    reads: AtomicU64,
}

impl MemoryFeed {
    fn append(&self, count: u64) {
        let mut entries = self.entries.lock().unwrap();
        for _ in 0..count {
            let seq = entries.len() as u64 + 1;
            entries.push(entry(seq));
        }
    }

    fn get(&self, seq: u64) -> FeedEntry {
        self.entries.lock().unwrap()[usize::try_from(seq - 1).unwrap()].clone()
    }
}

impl AuditFeed for MemoryFeed {
    fn after(&self, seq: u64, limit: usize) -> Result<Vec<FeedEntry>, FeedError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let entries = self.entries.lock().unwrap();
        Ok(entries
            .iter()
            .filter(|e| e.seq > seq)
            .take(limit)
            .cloned()
            .collect())
    }
}

/// An AuditEvent whose JSON holds what a syslog path could mangle: quotes, backslashes, `]`, `|`
/// and non-ASCII text.
fn entry(seq: u64) -> FeedEntry {
    let outcome = [0_u8, 4, 8, 12][usize::try_from(seq % 4).unwrap()];
    let json = serde_json::json!({
        "resourceType": "AuditEvent",
        "id": format!("a-{seq:012}"),
        "action": "R",
        "outcome": outcome.to_string(),
        "agent": [{"who": {"display": format!("Zoë \"Q\" O'Brien \\ [{seq}] a|b")}, "requestor": true}],
        "entity": [{"what": {"reference": format!("Patient/pt-{seq}")}}],
    });
    FeedEntry {
        seq,
        msgid: carevault_siem::MSGID,
        recorded_ms: BASE_MS + i64::try_from(seq).unwrap(),
        outcome,
        json: serde_json::to_vec(&json).unwrap(),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn options() -> ShipperOptions {
    ShipperOptions {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        poll_interval: Duration::from_millis(200),
        ..ShipperOptions::default()
    }
}

fn syslog_config(port: u16, ca: &Path, client_cert: Option<(PathBuf, PathBuf)>) -> SyslogConfig {
    SyslogConfig {
        address: format!("127.0.0.1:{port}"),
        server_name: "127.0.0.1".to_owned(),
        ca_file: ca.to_path_buf(),
        client_cert,
        app_name: "carevault".to_owned(),
        hostname: "cv-node-1".to_owned(),
    }
}

/// Parses one line of rsyslog's output back into its fields, checks every field against the
/// entry it claims to be, and returns its seq.
fn check_line(line: &str, feed: &MemoryFeed) -> u64 {
    let message = Message::parse(line);
    let seq = message.seq();
    let sent = feed.get(seq);
    // PRI: facility 13 (log audit) and severity info 6, notice 5, warning 4, err 3.
    let severity = match sent.outcome {
        0 => 6,
        4 => 5,
        8 => 4,
        _ => 3,
    };
    assert_eq!(message.pri, (13 * 8 + severity).to_string(), "{line}");
    assert_eq!(message.hostname, "cv-node-1");
    assert_eq!(message.app_name, "carevault");
    assert_eq!(message.procid, std::process::id().to_string());
    assert_eq!(message.msgid, "AuditEvent");
    // Recorded at 09:14:03.117 plus seq milliseconds; within the same minute for these tests.
    assert!(
        seq < 56_000,
        "seq {seq} is past the minute these timestamps assume"
    );
    let ms = 3_117 + seq;
    assert_eq!(
        message.timestamp,
        format!("2026-11-28T09:14:{:02}.{:03}Z", ms / 1000, ms % 1000),
        "{line}"
    );
    let json = message.json();
    assert_eq!(
        json,
        sent.json.as_slice(),
        "message of seq {seq} was altered"
    );
    let parsed: serde_json::Value = serde_json::from_slice(json).unwrap();
    assert_eq!(parsed["id"], format!("a-{seq:012}"));
    assert_eq!(
        parsed["agent"][0]["who"]["display"],
        format!("Zoë \"Q\" O'Brien \\ [{seq}] a|b")
    );
    seq
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn every_entry_arrives_exactly_once_across_a_collector_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("carevault test CA");
    let ca_path = write_ca(dir.path(), "ca", &ca);
    let (cert, key) = leaf(dir.path(), "collector", &ca, &["127.0.0.1"]);
    let port = free_port();
    let mut rsyslog = Rsyslog::start(
        dir.path(),
        port,
        &ca_path,
        &cert,
        &key,
        ClientAuth::Anonymous,
    );

    const FIRST: u64 = 300;
    const WHILE_DOWN: u64 = 200;
    let feed = Arc::new(MemoryFeed::default());
    feed.append(FIRST);
    let shipper = Shipper::start_with_options(
        feed.clone(),
        Sink::Syslog(syslog_config(port, &ca_path, None)),
        dir.path().join("state/syslog.cursor"),
        Wake::new(),
        options(),
    )
    .unwrap();
    shipper.notify();
    wait_until("the first entries", &rsyslog, || {
        rsyslog.received().len() as u64 >= FIRST
    });
    wait_until("the cursor", &rsyslog, || shipper.status().cursor == FIRST);
    assert_eq!(
        shipper.status(),
        ShipperStatus {
            cursor: FIRST,
            last_error: None,
            connected: true
        }
    );

    // The collector goes away. Entries keep coming; notify must not wait for anything.
    rsyslog.stop();
    let mut slowest = Duration::ZERO;
    for _ in 0..4 {
        for _ in 0..WHILE_DOWN / 4 {
            feed.append(1);
            let started = Instant::now();
            shipper.notify();
            slowest = slowest.max(started.elapsed());
        }
        thread::sleep(Duration::from_millis(300));
    }
    assert!(
        slowest < Duration::from_millis(100),
        "notify blocked for {slowest:?}"
    );
    wait_until("the outage to show", &rsyslog, || {
        let status = shipper.status();
        status.last_error.is_some() && !status.connected
    });
    let down = shipper.status();
    assert_eq!(
        down.cursor, FIRST,
        "the cursor moved while the collector was down"
    );
    let error = down.last_error.unwrap();
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
    assert!(
        !error.contains("Patient") && !error.contains("Zoë"),
        "an error carried PHI: {error}"
    );
    assert_eq!(rsyslog.received().len() as u64, FIRST);

    // The collector comes back on the same port: the backlog goes out, once.
    rsyslog.restart();
    let total = FIRST + WHILE_DOWN;
    wait_until("the backlog", &rsyslog, || shipper.status().cursor == total);
    wait_until("the backlog to be written", &rsyslog, || {
        rsyslog.received().len() as u64 >= total
    });
    // Anything sent twice would be on its way by now; give it time to land before counting.
    thread::sleep(Duration::from_millis(500));
    let status = shipper.stop();
    assert_eq!(
        status,
        ShipperStatus {
            cursor: total,
            last_error: None,
            connected: false
        }
    );
    rsyslog.stop();

    let seqs: Vec<u64> = rsyslog
        .received()
        .iter()
        .map(|line| check_line(line, &feed))
        .collect();
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "each entry exactly once, in order"
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("state/syslog.cursor")).unwrap(),
        format!("{total}\n")
    );
}

/// Starts a shipper against a collector it must refuse, and checks that nothing was delivered.
fn assert_refused(rsyslog: &Rsyslog, config: SyslogConfig, cursor: &Path, expected_error: &str) {
    let feed = Arc::new(MemoryFeed::default());
    feed.append(10);
    let shipper = Shipper::start_with_options(
        feed.clone(),
        Sink::Syslog(config),
        cursor,
        Wake::new(),
        options(),
    )
    .unwrap();
    wait_until("a refusal", rsyslog, || {
        shipper
            .status()
            .last_error
            .is_some_and(|error| error.contains(expected_error))
    });
    // Let it retry a few more times; every attempt must fail the same way.
    let reads = feed.reads.load(Ordering::Relaxed);
    wait_until("more attempts", rsyslog, || {
        feed.reads.load(Ordering::Relaxed) >= reads + 3
    });
    let status = shipper.status();
    assert_eq!(status.cursor, 0);
    assert!(!status.connected);
    assert!(status.last_error.unwrap().contains(expected_error));
    drop(shipper);
    assert!(!cursor.exists(), "the cursor was written");
    assert_eq!(
        rsyslog.received(),
        Vec::<String>::new(),
        "the collector received entries"
    );
}

#[test]
fn a_collector_whose_certificate_another_ca_signed_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = ca("carevault test CA");
    let rogue = ca("rogue CA");
    let trusted_path = write_ca(dir.path(), "trusted-ca", &trusted);
    let rogue_path = write_ca(dir.path(), "rogue-ca", &rogue);
    let (cert, key) = leaf(dir.path(), "rogue-collector", &rogue, &["127.0.0.1"]);
    let port = free_port();
    let rsyslog = Rsyslog::start(
        dir.path(),
        port,
        &rogue_path,
        &cert,
        &key,
        ClientAuth::Anonymous,
    );
    assert_refused(
        &rsyslog,
        syslog_config(port, &trusted_path, None),
        &dir.path().join("syslog.cursor"),
        "invalid peer certificate: UnknownIssuer",
    );
}

#[test]
fn a_collector_whose_certificate_names_another_host_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("carevault test CA");
    let ca_path = write_ca(dir.path(), "ca", &ca);
    let (cert, key) = leaf(dir.path(), "collector", &ca, &["collector.example.org"]);
    let port = free_port();
    let rsyslog = Rsyslog::start(
        dir.path(),
        port,
        &ca_path,
        &cert,
        &key,
        ClientAuth::Anonymous,
    );
    assert_refused(
        &rsyslog,
        syslog_config(port, &ca_path, None),
        &dir.path().join("syslog.cursor"),
        "invalid peer certificate: certificate not valid for name",
    );
}

#[test]
fn a_collector_that_requires_client_certificates_gets_entries_only_from_a_holder() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("carevault test CA");
    let ca_path = write_ca(dir.path(), "ca", &ca);
    let (cert, key) = leaf(dir.path(), "collector", &ca, &["127.0.0.1"]);
    let client = leaf(dir.path(), "client", &ca, &["cv-node-1.example.org"]);
    let port = free_port();
    let rsyslog = Rsyslog::start(
        dir.path(),
        port,
        &ca_path,
        &cert,
        &key,
        ClientAuth::CertificateRequired,
    );

    // Without a client certificate the collector refuses the connection after the handshake
    // (TLS 1.3); the shipper must notice before it counts anything as delivered.
    assert_refused(
        &rsyslog,
        syslog_config(port, &ca_path, None),
        &dir.path().join("anonymous.cursor"),
        "received fatal alert: CertificateRequired",
    );

    let feed = Arc::new(MemoryFeed::default());
    feed.append(25);
    let shipper = Shipper::start_with_options(
        feed.clone(),
        Sink::Syslog(syslog_config(port, &ca_path, Some(client))),
        dir.path().join("client.cursor"),
        Wake::new(),
        options(),
    )
    .unwrap();
    wait_until("the entries", &rsyslog, || rsyslog.received().len() >= 25);
    wait_until("the cursor", &rsyslog, || shipper.status().cursor == 25);
    shipper.stop();
    let seqs: Vec<u64> = rsyslog
        .received()
        .iter()
        .map(|line| check_line(line, &feed))
        .collect();
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
}

#[test]
fn no_entry_is_lost_when_the_collector_restarts_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("carevault test CA");
    let ca_path = write_ca(dir.path(), "ca", &ca);
    let (cert, key) = leaf(dir.path(), "collector", &ca, &["127.0.0.1"]);
    let port = free_port();
    let mut rsyslog = Rsyslog::start(
        dir.path(),
        port,
        &ca_path,
        &cert,
        &key,
        ClientAuth::Anonymous,
    );

    let feed = Arc::new(MemoryFeed::default());
    let shipper = Shipper::start_with_options(
        feed.clone(),
        Sink::Syslog(syslog_config(port, &ca_path, None)),
        dir.path().join("syslog.cursor"),
        Wake::new(),
        options(),
    )
    .unwrap();

    // Audit entries keep coming, one every millisecond or so, while the collector restarts.
    let producing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let producer = {
        let (feed, producing, wake) = (feed.clone(), producing.clone(), shipper.wake());
        thread::spawn(move || {
            while producing.load(Ordering::Relaxed) {
                feed.append(1);
                wake.notify();
                thread::sleep(Duration::from_millis(1));
            }
        })
    };
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(400));
        rsyslog.stop();
        thread::sleep(Duration::from_millis(200));
        rsyslog.restart();
    }
    thread::sleep(Duration::from_millis(300));
    producing.store(false, Ordering::Relaxed);
    producer.join().unwrap();

    let total = feed.entries.lock().unwrap().len() as u64;
    wait_until("the cursor", &rsyslog, || shipper.status().cursor == total);
    shipper.stop();
    thread::sleep(Duration::from_millis(300));
    rsyslog.stop();

    let seqs: Vec<u64> = rsyslog
        .received()
        .iter()
        .map(|line| check_line(line, &feed))
        .collect();
    let mut unique = seqs.clone();
    unique.sort_unstable();
    unique.dedup();
    let missing: Vec<u64> = (1..=total)
        .filter(|seq| unique.binary_search(seq).is_err())
        .collect();
    eprintln!(
        "{total} entries, {} received, {} repeats",
        seqs.len(),
        seqs.len() - unique.len()
    );
    assert!(
        missing.is_empty(),
        "{} of {total} entries lost: {missing:?}",
        missing.len()
    );
}

// ---------------------------------------------------------------------------------------------
// A collector that misbehaves on purpose, to pin down the shutdown gap deterministically.

/// Reads RFC 5425 frames from a TLS stream and returns the seq of each message, until `enough`
/// says stop (checked after every frame) or the stream ends.
fn read_seqs(
    stream: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
    seqs: &Mutex<Vec<u64>>,
    mut enough: impl FnMut(u64) -> bool,
) {
    use std::io::Read;
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 16 * 1024];
    loop {
        // Take every complete frame in the buffer.
        while let Some(space) = buffer.iter().position(|&b| b == b' ') {
            let len: usize = std::str::from_utf8(&buffer[..space])
                .unwrap()
                .parse()
                .unwrap();
            if buffer.len() < space + 1 + len {
                break;
            }
            let message = String::from_utf8_lossy(&buffer[space + 1..space + 1 + len]).into_owned();
            buffer.drain(..space + 1 + len);
            let at = message.find("seq=\"").unwrap() + 5;
            let end = at + message[at..].find('"').unwrap();
            let seq: u64 = message[at..end].parse().unwrap();
            seqs.lock().unwrap().push(seq);
            if enough(seq) {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn a_collector_that_stops_reading_before_it_closes_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("carevault test CA");
    let ca_path = write_ca(dir.path(), "ca", &ca);
    let (cert, key) = leaf(dir.path(), "collector", &ca, &["127.0.0.1"]);
    let certs: Vec<_> = rustls_pemfile::certs(&mut fs::read(&cert).unwrap().as_slice())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut fs::read(&key).unwrap().as_slice())
        .unwrap()
        .unwrap();
    let server_config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();

    // The collector: on its first connection it reads up to seq 100, then stops reading for a
    // while (as a collector shutting down does) and closes with data unread, which resets the
    // connection. On its second connection it reads everything.
    let received = Arc::new(Mutex::new(Vec::new()));
    let collector = {
        let received = received.clone();
        thread::spawn(move || {
            let accept = |listener: &TcpListener| {
                let (sock, _) = listener.accept().unwrap();
                sock.set_read_timeout(Some(PATIENCE)).unwrap();
                let conn = rustls::ServerConnection::new(server_config.clone()).unwrap();
                rustls::StreamOwned::new(conn, sock)
            };
            let mut first = accept(&listener);
            read_seqs(&mut first, &received, |seq| seq >= 100);
            // Well inside the shipper's 500 ms confirmation delay, even on a loaded machine.
            thread::sleep(Duration::from_millis(100));
            drop(first);
            let mut second = accept(&listener);
            second
                .sock
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            read_seqs(&mut second, &received, |_| false);
        })
    };

    let feed = Arc::new(MemoryFeed::default());
    let shipper = Shipper::start_with_options(
        feed.clone(),
        Sink::Syslog(syslog_config(port, &ca_path, None)),
        dir.path().join("syslog.cursor"),
        Wake::new(),
        options(),
    )
    .unwrap();
    for _ in 0..600 {
        feed.append(1);
        shipper.notify();
        thread::sleep(Duration::from_millis(1));
    }
    let total = feed.entries.lock().unwrap().len() as u64;
    let deadline = Instant::now() + PATIENCE;
    while shipper.status().cursor < total {
        assert!(
            Instant::now() < deadline,
            "the cursor stopped at {:?}",
            shipper.status()
        );
        thread::sleep(Duration::from_millis(10));
    }
    shipper.stop();
    collector.join().unwrap();

    let mut seqs = received.lock().unwrap().clone();
    seqs.sort_unstable();
    seqs.dedup();
    let missing: Vec<u64> = (1..=total)
        .filter(|seq| seqs.binary_search(seq).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {total} entries lost: {missing:?}",
        missing.len()
    );
}
