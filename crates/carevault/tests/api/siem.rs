//! SIEM export through the real binary to a real collector: Debian's rsyslogd with TLS on
//! loopback (`carevault_siem::testing`), configured by environment variables. Every audit entry
//! arrives exactly once, in order, across a collector restart; clinical traffic never waits for
//! the collector while it is down; the NDJSON export holds every entry too; and the server-stop
//! event reaches the collector.
//!
//! A missing rsyslogd fails this test with a message saying what to install; it never skips.

use crate::harness::{Server, send};
use carevault_siem::testing::{LoopbackCollector, Message};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// Every wait in this test gives up after this long.
const PATIENCE: Duration = Duration::from_secs(30);

/// The longest a clinical request may take while the collector is down.
const PROMPT: Duration = Duration::from_secs(5);

fn patient(n: usize) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": format!("Siem{n}"), "given": ["Ann"]}],
           "birthDate": "1970-01-01"})
}

fn observation(pid: &str, n: usize) -> Value {
    json!({"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
           "subject": {"reference": format!("Patient/{pid}")},
           "valueQuantity": {"value": 60 + n, "unit": "/min"}})
}

/// `a-000000000042` → 42.
fn seq_of_id(id: &str) -> u64 {
    id.strip_prefix("a-")
        .filter(|digits| digits.len() == 12)
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("not an audit event id: {id:?}"))
}

/// Every AuditEvent the server holds, read as an auditor (reading appends one more).
async fn all_events(s: &Server, auditor: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut url = "AuditEvent?_sort=date&_count=1000".to_string();
    loop {
        let (st, _, b) = send(s.http.get(s.url(&url)).bearer_auth(auditor)).await;
        assert_eq!(st, 200, "{b}");
        out.extend(
            b["entry"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["resource"].clone()),
        );
        match b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(l) => url = l["url"].as_str().unwrap().to_string(),
            None => return out,
        }
    }
}

/// The highest seq among `events`, after checking they are 1..=that, each once.
fn snapshot(events: &[Value]) -> u64 {
    let seqs: BTreeSet<u64> = events
        .iter()
        .map(|e| seq_of_id(e["id"].as_str().unwrap()))
        .collect();
    assert_eq!(seqs.len(), events.len(), "the API listed an event twice");
    let max = seqs.last().copied().unwrap_or(0);
    assert_eq!(
        seqs,
        (1..=max).collect::<BTreeSet<_>>(),
        "the API's audit trail has gaps"
    );
    max
}

/// What rsyslog received: each message checked to be a carevault AuditEvent whose id matches the
/// seq in its structured data; returns (seq, parsed JSON) in arrival order.
fn received(collector: &LoopbackCollector) -> Vec<(u64, Value)> {
    collector
        .rsyslog
        .messages()
        .iter()
        .filter(|m| m.msgid != "Checkpoint")
        .map(|m: &Message| {
            let seq = m.seq();
            assert_eq!(m.app_name, "carevault", "{}", m.line);
            assert_eq!(m.msgid, "AuditEvent", "{}", m.line);
            let ev: Value = serde_json::from_slice(m.json())
                .unwrap_or_else(|e| panic!("message of seq {seq} is not JSON ({e}): {}", m.line));
            assert_eq!(ev["resourceType"], "AuditEvent", "{}", m.line);
            assert_eq!(
                ev["id"],
                format!("a-{seq:012}"),
                "id and seq disagree: {}",
                m.line
            );
            (seq, ev)
        })
        .collect()
}

/// The signed checkpoints rsyslog received (MSGID `Checkpoint`), as (seq, JSON) in arrival order.
fn received_checkpoints(collector: &LoopbackCollector) -> Vec<(u64, Value)> {
    collector
        .rsyslog
        .messages()
        .iter()
        .filter(|m| m.msgid == "Checkpoint")
        .map(|m| {
            assert_eq!(m.app_name, "carevault", "{}", m.line);
            let c: Value = serde_json::from_slice(m.json())
                .unwrap_or_else(|e| panic!("checkpoint message is not JSON ({e}): {}", m.line));
            (m.seq(), c)
        })
        .collect()
}

fn seqs(messages: &[(u64, Value)]) -> Vec<u64> {
    messages.iter().map(|(seq, _)| *seq).collect()
}

/// Whether every seq in 1..=`max` is among `messages`.
fn covers(messages: &[(u64, Value)], max: u64) -> bool {
    let got: BTreeSet<u64> = messages.iter().map(|(seq, _)| *seq).collect();
    (1..=max).all(|seq| got.contains(&seq))
}

/// Asserts that rsyslog received exactly 1, 2, 3, … in order, each once.
fn assert_exactly_once_in_order(messages: &[(u64, Value)], at_least: u64, when: &str) {
    let got = seqs(messages);
    let expected: Vec<u64> = (1..=got.len() as u64).collect();
    if got != expected {
        let mut seen = BTreeSet::new();
        let repeats: Vec<u64> = got.iter().filter(|s| !seen.insert(**s)).copied().collect();
        let top = got.iter().max().copied().unwrap_or(0);
        let missing: Vec<u64> = (1..=top).filter(|s| !seen.contains(s)).collect();
        panic!(
            "{when}: rsyslog did not receive each entry exactly once in order; repeated {repeats:?}, \
             missing {missing:?}, received {got:?}"
        );
    }
    assert!(
        got.len() as u64 >= at_least,
        "{when}: only {} entries arrived, expected at least {at_least}",
        got.len()
    );
}

/// The seqs in the NDJSON files, in file-name order and line order.
fn ndjson_seqs(dir: &Path) -> Vec<u64> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("auditevents-") && n.ends_with(".ndjson"))
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines() {
            let ev: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", file.display()));
            assert_eq!(ev["resourceType"], "AuditEvent", "{line}");
            out.push(seq_of_id(ev["id"].as_str().unwrap()));
        }
    }
    out
}

fn syslog_cursor(s: &Server) -> Option<u64> {
    std::fs::read_to_string(s.data().join("audit/siem-syslog.cursor"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
}

/// Polls `done` every 50 ms for at most `patience`; on timeout panics with `what` and `context`.
async fn wait_for(
    what: &str,
    patience: Duration,
    context: impl Fn() -> String,
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + patience;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {patience:?} waiting for {what}; {}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a failed wait reports: the cursor, what arrived, rsyslog's diagnostics, the server log.
fn context(s: &Server, collector: &LoopbackCollector) -> String {
    format!(
        "syslog cursor {:?}; received {:?}\n{}\nserver log:\n{}",
        syslog_cursor(s),
        collector
            .rsyslog
            .messages()
            .iter()
            .map(Message::seq)
            .collect::<Vec<_>>(),
        collector.rsyslog.diagnostics(),
        s.log()
    )
}

fn has_subtype(ev: &Value, code: &str) -> bool {
    ev["subtype"]
        .as_array()
        .is_some_and(|a| a.iter().any(|c| c["code"] == code))
}

// Multi-threaded: `Server::stop` blocks the test's thread, and the client's HTTP/2 connection
// must still answer the server's GOAWAY meanwhile, or shutdown waits out its whole grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_audit_entry_reaches_rsyslog_exactly_once_across_a_collector_restart() {
    let scratch = tempfile::tempdir().unwrap();
    let mut collector = LoopbackCollector::start(&scratch.path().join("rsyslog"));
    let ndjson = scratch.path().join("ndjson");
    let address = collector.address();
    let ca_file = collector.ca_file.to_str().unwrap().to_owned();
    let mut s = Server::start_with(&[
        ("CAREVAULT_SIEM_SYSLOG_ADDRESS", address.as_str()),
        ("CAREVAULT_SIEM_SYSLOG_CA_FILE", ca_file.as_str()),
        (
            "CAREVAULT_SIEM_SYSLOG_SERVER_NAME",
            LoopbackCollector::SERVER_NAME,
        ),
        ("CAREVAULT_SIEM_NDJSON_DIR", ndjson.to_str().unwrap()),
    ])
    .await;

    // Clinical traffic while the collector is up: 15 creates, 15 reads.
    let mut pids = Vec::new();
    for n in 0..15 {
        let (st, _, b) = send(s.post("Patient", &patient(n))).await;
        assert_eq!(st, 201, "{b}");
        let pid = b["id"].as_str().unwrap().to_string();
        let (st, _, b) = send(s.get(&format!("Patient/{pid}"))).await;
        assert_eq!(st, 200, "{b}");
        pids.push(pid);
    }

    // Everything the server holds so far arrives. Reading the trail appends to it, so wait for
    // the snapshot, then for the stream to go idle (everything received confirmed in the
    // cursor): a collector restarted while the stream is idle loses nothing and gets no repeat.
    let auditor = s.token_for("siem-auditor", "system/AuditEvent.rs").await;
    let first = snapshot(&all_events(&s, &auditor).await);
    assert!(first >= 30, "only {first} audit events for 30 requests");
    wait_for(
        "the first audit entries",
        PATIENCE,
        || context(&s, &collector),
        || covers(&received(&collector), first),
    )
    .await;
    let mut last = (0, Instant::now());
    wait_for(
        "the syslog stream to go idle",
        PATIENCE,
        || context(&s, &collector),
        || {
            let got = received(&collector);
            let top = got.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
            if got.len() != last.0 {
                last = (got.len(), Instant::now());
            }
            syslog_cursor(&s) == Some(top) && last.1.elapsed() > Duration::from_secs(2)
        },
    )
    .await;
    assert_exactly_once_in_order(&received(&collector), first, "before the restart");

    // The collector goes away; the server keeps answering promptly.
    collector.rsyslog.stop();
    let before_outage = received(&collector).len();
    let mut slowest = Duration::ZERO;
    for (n, pid) in pids.iter().take(10).enumerate() {
        let started = Instant::now();
        let (st, _, b) = send(s.post("Observation", &observation(pid, n))).await;
        assert_eq!(st, 201, "{b}");
        let oid = b["id"].as_str().unwrap().to_string();
        let (st, _, b) = send(s.get(&format!("Observation/{oid}"))).await;
        assert_eq!(st, 200, "{b}");
        let took = started.elapsed();
        slowest = slowest.max(took);
        assert!(
            took < 2 * PROMPT,
            "a create and a read took {took:?} while the collector was down"
        );
    }
    assert!(
        slowest < PROMPT,
        "clinical requests waited for the collector: slowest pair {slowest:?}"
    );
    // Let the shipper notice the outage and retry at least once into the void.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        received(&collector).len(),
        before_outage,
        "rsyslog received entries while stopped"
    );

    // The collector comes back on the same port: the backlog arrives, once.
    collector.rsyslog.restart();
    let events = all_events(&s, &auditor).await;
    let second = snapshot(&events);
    assert!(
        second >= first + 20,
        "only {} audit events for 20 requests during the outage",
        second - first
    );
    wait_for(
        "the backlog",
        PATIENCE,
        || context(&s, &collector),
        || covers(&received(&collector), second),
    )
    .await;
    let after_restart = received(&collector);
    assert_exactly_once_in_order(&after_restart, second, "after the restart");
    // What arrived is what the API serves.
    for ev in &events {
        let seq = seq_of_id(ev["id"].as_str().unwrap());
        let (_, shipped) = &after_restart[usize::try_from(seq - 1).unwrap()];
        for field in ["recorded", "action", "outcome", "type", "subtype"] {
            assert_eq!(
                shipped[field], ev[field],
                "{field} of seq {seq} differs between syslog and the API"
            );
        }
    }

    // The server stops cleanly, and its stop event reaches the collector.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(s.child.as_ref().unwrap().id()).unwrap());
    let (stopped, watchdog) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if watchdog.recv_timeout(PATIENCE).is_err() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    });
    let started = Instant::now();
    let code = s.stop();
    let _ = stopped.send(());
    watchdog.join().unwrap();
    assert_eq!(
        code,
        0,
        "the server did not stop cleanly within {PATIENCE:?} (took {:?}); log:\n{}",
        started.elapsed(),
        s.log()
    );
    wait_for(
        "the server-stop event",
        Duration::from_secs(10),
        || context(&s, &collector),
        || {
            received(&collector)
                .iter()
                .any(|(_, ev)| has_subtype(ev, "110121"))
        },
    )
    .await;
    // Give anything sent twice a moment to land before the final count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = received(&collector);
    assert_exactly_once_in_order(&all, second, "after the server stopped");
    let total = all.len() as u64;
    let stops: Vec<u64> = all
        .iter()
        .filter(|(_, ev)| has_subtype(ev, "110121"))
        .map(|(seq, _)| *seq)
        .collect();
    assert_eq!(
        stops,
        vec![total],
        "the server-stop event should be the last entry, once"
    );
    assert_eq!(
        syslog_cursor(&s),
        Some(total),
        "the syslog cursor did not reach the last entry"
    );

    // Every signed checkpoint reached the collector too, once, in order, under its own MSGID:
    // each is the note of `audit/checkpoints` byte for byte and verifies with the published
    // key, and the last covers the whole log (the final checkpoint, signed after the stop event).
    let written = std::fs::read_to_string(s.data().join("audit/checkpoints")).unwrap();
    let notes = carevault_audit::checkpoint::split_notes(&written).unwrap();
    let vkey = std::fs::read_to_string(s.data().join("audit/checkpoint-key.vkey")).unwrap();
    let verifier = carevault_audit::checkpoint::NoteVerifier::from_vkey(vkey.trim()).unwrap();
    wait_for(
        "every checkpoint on the syslog stream",
        Duration::from_secs(10),
        || context(&s, &collector),
        || received_checkpoints(&collector).len() >= notes.len(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shipped = received_checkpoints(&collector);
    assert_eq!(
        shipped.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (1..=notes.len() as u64).collect::<Vec<_>>(),
        "checkpoints did not arrive exactly once in order"
    );
    for ((_, c), note) in shipped.iter().zip(&notes) {
        assert_eq!(c["note"], *note);
        let body = verifier.verify(c["note"].as_str().unwrap()).unwrap();
        assert_eq!(c["size"], body.size);
    }
    assert_eq!(shipped.last().unwrap().1["size"], total);

    // The NDJSON export holds every entry too, at least once, in order.
    let in_files = ndjson_seqs(&ndjson);
    let mut next = 1;
    for seq in &in_files {
        assert!(
            *seq <= next,
            "the NDJSON files skip from {} to {seq}: {in_files:?}",
            next - 1
        );
        if *seq == next {
            next += 1;
        }
    }
    assert_eq!(
        next - 1,
        total,
        "the NDJSON files stop before the last entry: {in_files:?}"
    );

    collector.rsyslog.stop();
}
