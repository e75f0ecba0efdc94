//! The shipper: a thread of its own that reads the audit feed after a durable cursor, hands each
//! batch to a sink (syslog over TLS or NDJSON files) and moves the cursor only once the sink
//! confirms the batch; if the sink fails first, everything unconfirmed is sent again.
//!
//! Nothing here runs on a caller's request path. The server calls [`Wake::notify`] (or
//! [`Shipper::notify`]) after appending audit entries; that sets a flag and unparks the thread,
//! and never waits for it. When a sink fails, the thread retries with capped exponential backoff,
//! logs one warning per outage (the error, never an entry's content) and keeps every entry behind
//! the cursor; the feed is the buffer, so an outage of any length only delays the stream.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crate::cursor::Cursor;
use crate::ndjson::{NdjsonConfig, NdjsonSink};
use crate::syslog::{SyslogConfig, SyslogSink};
use crate::{AuditFeed, SiemError};

/// Where a shipper delivers audit entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// RFC 5424 messages over TLS to a syslog collector (RFC 5425).
    Syslog(SyslogConfig),
    /// AuditEvent NDJSON files in a directory.
    Ndjson(NdjsonConfig),
}

/// Tuning of a shipper; [`ShipperOptions::default`] suits production.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipperOptions {
    /// Most entries read from the feed and delivered at once (default 500).
    pub batch_size: usize,
    /// How often the feed is read when nobody calls `notify` (default 1 s).
    pub poll_interval: Duration,
    /// First wait after a failure (default 100 ms); it doubles with each further failure.
    pub backoff_min: Duration,
    /// Longest wait between retries (default 10 s).
    pub backoff_max: Duration,
    /// Limit on connecting to, handshaking with and writing to a syslog collector (default 10 s).
    pub io_timeout: Duration,
    /// How long [`Shipper::stop`] keeps delivering what is pending before it gives up (default 5 s).
    pub stop_deadline: Duration,
    /// How long a syslog connection must be seen alive after a batch was written before the
    /// cursor moves past that batch (default 500 ms); see the [`crate::syslog`] module.
    pub confirm_delay: Duration,
}

impl Default for ShipperOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            io_timeout: Duration::from_secs(10),
            stop_deadline: Duration::from_secs(5),
            confirm_delay: Duration::from_millis(500),
        }
    }
}

/// A shipper's state as seen from outside, for health checks and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipperStatus {
    /// The durable cursor: every entry up to this sequence number has been delivered and
    /// confirmed (for syslog it trails the stream by about the confirmation delay).
    pub cursor: u64,
    /// The error of the current outage, `None` once a delivery has succeeded since. It names what
    /// failed and where, never an entry's content.
    pub last_error: Option<String>,
    /// Whether the sink is open: a live TLS connection to the collector, or an open export file.
    pub connected: bool,
}

/// A cheap, cloneable handle that tells one shipper that new audit entries are waiting.
///
/// [`Wake::notify`] never blocks and never fails: it sets a flag and unparks the shipper's thread.
/// Create one per shipper; notifying before the shipper starts is harmless (the shipper reads the
/// feed as soon as it starts anyway).
#[derive(Debug, Clone, Default)]
pub struct Wake {
    inner: Arc<WakeInner>,
}

#[derive(Debug, Default)]
struct WakeInner {
    pending: AtomicBool,
    bound: AtomicBool,
    thread: OnceLock<Thread>,
}

impl Wake {
    /// A new handle, not yet given to a shipper.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tells the shipper that entries were appended. Lock-free; returns at once.
    pub fn notify(&self) {
        self.inner.pending.store(true, Ordering::Release);
        if let Some(thread) = self.inner.thread.get() {
            thread.unpark();
        }
    }
}

/// A running delivery of the audit trail to one sink, on its own thread.
///
/// Dropping a shipper asks its thread to finish (delivering what it can within the stop deadline)
/// without waiting for it; [`Shipper::stop`] waits, within the deadline.
#[derive(Debug)]
pub struct Shipper {
    shared: Arc<Shared>,
    wake: Wake,
    thread: Option<JoinHandle<()>>,
    done: mpsc::Receiver<()>,
    stop_deadline: Duration,
}

#[derive(Debug, Default)]
struct Shared {
    cursor: AtomicU64,
    connected: AtomicBool,
    stop: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn set_error(&self, error: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error;
    }
}

impl Shipper {
    /// Starts delivering `feed` to `sink` from the cursor in `cursor_path`, with default options.
    /// See [`Shipper::start_with_options`].
    pub fn start(
        feed: Arc<dyn AuditFeed>,
        sink: Sink,
        cursor_path: impl AsRef<std::path::Path>,
        wake: Wake,
    ) -> Result<Shipper, SiemError> {
        Self::start_with_options(feed, sink, cursor_path, wake, ShipperOptions::default())
    }

    /// Starts delivering `feed` to `sink` from the cursor in `cursor_path` on a new thread.
    ///
    /// Everything that can be checked before the first delivery is checked here, so a
    /// misconfiguration fails at start-up: the cursor is opened and locked, the sink's settings
    /// and certificates are loaded, the NDJSON directory is created. The collector being down is
    /// not an error: the shipper retries until it is up.
    pub fn start_with_options(
        feed: Arc<dyn AuditFeed>,
        sink: Sink,
        cursor_path: impl AsRef<std::path::Path>,
        wake: Wake,
        options: ShipperOptions,
    ) -> Result<Shipper, SiemError> {
        if options.batch_size == 0 {
            return Err(SiemError::Config("the shipper batch_size is 0".to_owned()));
        }
        let cursor = Cursor::open(cursor_path)?;
        let (destination, name) = match sink {
            Sink::Syslog(config) => (
                Destination::Syslog(Box::new(SyslogSink::new(
                    config,
                    options.io_timeout,
                    options.confirm_delay,
                )?)),
                "siem-syslog",
            ),
            Sink::Ndjson(config) => (Destination::Ndjson(NdjsonSink::new(config)?), "siem-ndjson"),
        };
        if wake.inner.bound.swap(true, Ordering::AcqRel) {
            return Err(SiemError::WakeInUse);
        }
        let shared = Arc::new(Shared {
            cursor: AtomicU64::new(cursor.get()),
            ..Shared::default()
        });
        let (done_tx, done) = mpsc::channel();
        let worker = Worker {
            feed,
            acked: cursor.get(),
            sent: cursor.get(),
            cursor,
            destination,
            backoff: options.backoff_min,
            failures: 0,
            options: options.clone(),
            shared: shared.clone(),
            wake: wake.inner.clone(),
        };
        let watched = shared.clone();
        let spawned = thread::Builder::new().name(name.to_owned()).spawn(move || {
            // A panic (in the feed, say) must not leave a status that looks healthy.
            if panic::catch_unwind(AssertUnwindSafe(move || worker.run())).is_err() {
                tracing::error!("the SIEM delivery thread panicked; delivery has stopped until restart");
                watched.set_error(Some(
                    "the SIEM delivery thread panicked and stopped; restart the server to resume (entries wait behind the cursor)".to_owned(),
                ));
                watched.connected.store(false, Ordering::Release);
            }
            drop(done_tx);
        });
        let thread = match spawned {
            Ok(thread) => thread,
            Err(error) => {
                wake.inner.bound.store(false, Ordering::Release);
                return Err(SiemError::Spawn(error));
            }
        };
        // `bound` was false, so this Wake has never been given a thread before.
        let _ = wake.inner.thread.set(thread.thread().clone());
        Ok(Shipper {
            shared,
            wake,
            thread: Some(thread),
            done,
            stop_deadline: options.stop_deadline,
        })
    }

    /// Tells the shipper that entries were appended; never blocks (see [`Wake::notify`]).
    pub fn notify(&self) {
        self.wake.notify();
    }

    /// A handle to [`Shipper::notify`] that can be kept elsewhere (for example by the store).
    pub fn wake(&self) -> Wake {
        self.wake.clone()
    }

    /// The cursor, the current outage's error and whether the sink is open.
    pub fn status(&self) -> ShipperStatus {
        ShipperStatus {
            cursor: self.shared.cursor.load(Ordering::Acquire),
            last_error: self
                .shared
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            connected: self.shared.connected.load(Ordering::Acquire),
        }
    }

    /// Stops the shipper: it delivers what is pending for up to the stop deadline, closes the
    /// sink and ends. Returns within the deadline plus one second even if the thread is stuck in
    /// a write (the thread then ends on its own at its I/O timeout, and holds the cursor's lock
    /// until then), with the final status.
    pub fn stop(mut self) -> ShipperStatus {
        self.request_stop();
        let limit = self.stop_deadline + Duration::from_secs(1);
        match self.done.recv_timeout(limit) {
            Err(mpsc::RecvTimeoutError::Disconnected) | Ok(()) => {
                if let Some(thread) = self.thread.take() {
                    // The thread has finished its work (it dropped its sender), so joining is
                    // immediate, and it catches its own panics, so the join cannot fail.
                    let _ = thread.join();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    "the SIEM shipper did not finish within its stop deadline; leaving it to end on its own"
                );
            }
        }
        self.status()
    }

    fn request_stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.request_stop();
    }
}

enum Destination {
    Syslog(Box<SyslogSink>),
    Ndjson(NdjsonSink),
}

impl Destination {
    fn describe(&self) -> String {
        match self {
            Destination::Syslog(sink) => sink.describe(),
            Destination::Ndjson(sink) => sink.describe(),
        }
    }

    /// Hands `batch` to the sink. `Err` means the sink dropped everything not yet confirmed.
    fn deliver(&mut self, batch: &[crate::FeedEntry]) -> Result<(), SiemError> {
        match self {
            Destination::Syslog(sink) => sink.deliver(batch),
            Destination::Ndjson(sink) => sink.deliver(batch),
        }
    }

    /// The highest sequence number the sink now vouches for, if it grew. `Err` means everything
    /// delivered but not yet confirmed must be delivered again.
    fn confirm(&mut self, now: Instant) -> Result<Option<u64>, SiemError> {
        match self {
            Destination::Syslog(sink) => sink.confirm(now),
            Destination::Ndjson(sink) => Ok(sink.confirm()),
        }
    }

    /// When the oldest unconfirmed batch can be confirmed, if there is one.
    fn next_confirmation(&self) -> Option<Instant> {
        match self {
            Destination::Syslog(sink) => sink.next_confirmation(),
            Destination::Ndjson(_) => None,
        }
    }

    fn is_connected(&self) -> bool {
        match self {
            Destination::Syslog(sink) => sink.is_connected(),
            Destination::Ndjson(sink) => sink.is_connected(),
        }
    }

    fn check_idle(&mut self) {
        match self {
            Destination::Syslog(sink) => sink.check_idle(),
            Destination::Ndjson(_) => {}
        }
    }

    fn close(&mut self) {
        match self {
            Destination::Syslog(sink) => sink.close(),
            Destination::Ndjson(sink) => sink.close(),
        }
    }
}

/// What one step of the loop achieved.
enum Progress {
    /// A batch was handed to the sink.
    Delivered,
    /// The feed had nothing after what was already handed to the sink.
    Idle,
}

struct Worker {
    feed: Arc<dyn AuditFeed>,
    cursor: Cursor,
    /// The last entry the sink has confirmed; the durable cursor catches up with it (it lags only
    /// while the cursor file cannot be written).
    acked: u64,
    /// The last entry handed to the sink; entries in `acked+1..=sent` await confirmation and are
    /// sent again if the sink fails before confirming them.
    sent: u64,
    destination: Destination,
    backoff: Duration,
    /// Consecutive failed steps; non-zero means an outage is under way.
    failures: u64,
    options: ShipperOptions,
    shared: Arc<Shared>,
    wake: Arc<WakeInner>,
}

impl Worker {
    fn run(mut self) {
        while !self.stopping() {
            // Cleared before reading, so entries appended from here on wake the next round.
            self.wake.pending.store(false, Ordering::Release);
            match self.step() {
                Ok(Progress::Delivered) => {}
                Ok(Progress::Idle) => {
                    self.destination.check_idle();
                    self.publish();
                    self.wait_idle();
                }
                Err(error) => {
                    self.failed(&error);
                    self.wait_backoff(None);
                }
            }
        }
        self.drain();
        self.destination.close();
        self.publish();
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire)
    }

    /// Moves the cursor over what the sink has confirmed, then reads the next batch after what
    /// was already sent and hands it to the sink.
    fn step(&mut self) -> Result<Progress, SiemError> {
        self.confirm()?;
        let batch = self.feed.after(self.sent, self.options.batch_size)?;
        let Some(last) = batch.last() else {
            return Ok(Progress::Idle);
        };
        let mut previous = self.sent;
        for entry in &batch {
            if entry.seq <= previous {
                return Err(SiemError::FeedOrder {
                    previous,
                    got: entry.seq,
                });
            }
            previous = entry.seq;
        }
        let delivered = self.destination.deliver(&batch);
        self.publish();
        if let Err(error) = delivered {
            self.sent = self.acked;
            return Err(error);
        }
        self.sent = last.seq;
        self.confirm()?;
        Ok(Progress::Delivered)
    }

    /// Takes the sink's confirmations and makes them durable in the cursor.
    fn confirm(&mut self) -> Result<(), SiemError> {
        match self.destination.confirm(Instant::now()) {
            Ok(Some(seq)) => {
                self.acked = seq;
                self.succeeded();
            }
            Ok(None) => {}
            Err(error) => {
                self.sent = self.acked;
                self.publish();
                return Err(error);
            }
        }
        if self.cursor.get() < self.acked {
            self.cursor.advance(self.acked)?;
            self.publish();
        }
        Ok(())
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                sink = %self.destination.describe(),
                failed_attempts = self.failures,
                cursor = self.acked,
                "SIEM delivery resumed"
            );
        }
        self.failures = 0;
        self.backoff = self.options.backoff_min;
        self.shared.set_error(None);
    }

    fn failed(&mut self, error: &SiemError) {
        let message = error.to_string();
        if self.failures == 0 {
            tracing::warn!(
                sink = %self.destination.describe(),
                cursor = self.acked,
                error = %message,
                "SIEM delivery failing; entries stay queued behind the cursor and are retried with backoff"
            );
        } else {
            tracing::debug!(sink = %self.destination.describe(), error = %message, "SIEM delivery still failing");
        }
        self.failures += 1;
        self.shared.set_error(Some(message));
        self.publish();
    }

    fn publish(&self) {
        self.shared
            .cursor
            .store(self.cursor.get(), Ordering::Release);
        self.shared
            .connected
            .store(self.destination.is_connected(), Ordering::Release);
    }

    /// Sleeps until notified, stopped, the next confirmation is due, or the poll interval has
    /// passed.
    fn wait_idle(&self) {
        if self.wake.pending.load(Ordering::Acquire) || self.stopping() {
            return;
        }
        let mut wait = self.options.poll_interval;
        if let Some(due) = self.destination.next_confirmation() {
            wait = wait.min(due.saturating_duration_since(Instant::now()));
        }
        if !wait.is_zero() {
            thread::park_timeout(wait);
        }
    }

    /// Sleeps for the current backoff (not cut short by notifications, which would turn a flood
    /// of appends into a flood of reconnects), or until `deadline`, or until stopped when no
    /// deadline is given; then doubles the backoff up to its cap.
    fn wait_backoff(&mut self, deadline: Option<Instant>) {
        let mut until = Instant::now() + self.backoff;
        if let Some(deadline) = deadline {
            until = until.min(deadline);
        }
        loop {
            if deadline.is_none() && self.stopping() {
                break;
            }
            let now = Instant::now();
            if now >= until {
                break;
            }
            thread::park_timeout(until - now);
        }
        self.backoff = (self.backoff * 2).min(self.options.backoff_max);
    }

    /// After a stop request: delivers and confirms what is pending until the feed is empty and
    /// everything is confirmed, or the deadline has passed.
    fn drain(&mut self) {
        let deadline = Instant::now() + self.options.stop_deadline;
        while Instant::now() < deadline {
            match self.step() {
                Ok(Progress::Delivered) => {}
                Ok(Progress::Idle) => match self.destination.next_confirmation() {
                    None => return,
                    Some(due) => {
                        thread::sleep(due.min(deadline).saturating_duration_since(Instant::now()))
                    }
                },
                Err(error) => {
                    self.failed(&error);
                    self.wait_backoff(Some(deadline));
                }
            }
        }
        tracing::warn!(
            sink = %self.destination.describe(),
            cursor = self.cursor.get(),
            "SIEM shipper stopped before delivering everything; the rest goes out at the next start"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FeedEntry, FeedError};
    use std::fs;
    use std::path::Path;

    /// An audit trail in memory, with a switch that makes reads fail.
    #[derive(Default)]
    struct MemoryFeed {
        entries: Mutex<Vec<FeedEntry>>,
        failing: AtomicBool,
        reads: AtomicU64,
    }

    impl MemoryFeed {
        fn append(&self, count: u64) {
            let mut entries = self.entries.lock().unwrap();
            for _ in 0..count {
                let seq = entries.len() as u64 + 1;
                entries.push(FeedEntry {
                    seq,
                    msgid: crate::MSGID,
                    recorded_ms: 1_700_000_000_000 + seq as i64,
                    outcome: 0,
                    json: format!(r#"{{"resourceType":"AuditEvent","id":"a-{seq:012}"}}"#)
                        .into_bytes(),
                });
            }
        }
    }

    impl AuditFeed for MemoryFeed {
        fn after(&self, seq: u64, limit: usize) -> Result<Vec<FeedEntry>, FeedError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            if self.failing.load(Ordering::Relaxed) {
                return Err(FeedError::new("the test store is offline"));
            }
            let entries = self.entries.lock().unwrap();
            Ok(entries
                .iter()
                .filter(|e| e.seq > seq)
                .take(limit)
                .cloned()
                .collect())
        }
    }

    /// A feed that breaks the contract by returning the same entry twice.
    struct RepeatingFeed;

    impl AuditFeed for RepeatingFeed {
        fn after(&self, _seq: u64, _limit: usize) -> Result<Vec<FeedEntry>, FeedError> {
            let entry = FeedEntry {
                seq: 1,
                msgid: crate::MSGID,
                recorded_ms: 0,
                outcome: 0,
                json: b"{}".to_vec(),
            };
            Ok(vec![entry.clone(), entry])
        }
    }

    fn fast() -> ShipperOptions {
        ShipperOptions {
            batch_size: 7,
            poll_interval: Duration::from_secs(30),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            io_timeout: Duration::from_secs(5),
            stop_deadline: Duration::from_secs(5),
            confirm_delay: Duration::from_millis(500),
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn ndjson_ids(dir: &Path) -> Vec<u64> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        names
            .iter()
            .flat_map(|path| {
                fs::read_to_string(path)
                    .unwrap()
                    .lines()
                    .map(|line| {
                        let at = line.find("\"a-").unwrap() + 3;
                        line[at..at + 12].parse::<u64>().unwrap()
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn notify_wakes_the_shipper_long_before_the_poll_interval() {
        let root = tempfile::tempdir().unwrap();
        let feed = Arc::new(MemoryFeed::default());
        let export = root.path().join("export");
        let sink = Sink::Ndjson(NdjsonConfig {
            dir: export.clone(),
            max_file_bytes: 1 << 20,
        });
        let shipper = Shipper::start_with_options(
            feed.clone(),
            sink,
            root.path().join("cursor"),
            Wake::new(),
            fast(),
        )
        .unwrap();
        wait_for("the first idle read", || {
            feed.reads.load(Ordering::Relaxed) > 0
        });
        thread::sleep(Duration::from_millis(50));

        // The poll interval is 30 s and the wait below gives up after 30 s, so only notify can
        // make this pass.
        feed.append(20);
        shipper.notify();
        wait_for("20 entries", || shipper.status().cursor == 20);
        assert_eq!(ndjson_ids(&export), (1..=20).collect::<Vec<_>>());
        let status = shipper.stop();
        assert_eq!(
            status,
            ShipperStatus {
                cursor: 20,
                last_error: None,
                connected: false
            }
        );
        assert_eq!(
            fs::read_to_string(root.path().join("cursor")).unwrap(),
            "20\n"
        );
    }

    #[test]
    fn a_restarted_shipper_carries_on_from_its_cursor() {
        let root = tempfile::tempdir().unwrap();
        let feed = Arc::new(MemoryFeed::default());
        let export = root.path().join("export");
        let sink = Sink::Ndjson(NdjsonConfig {
            dir: export.clone(),
            max_file_bytes: 200,
        });
        feed.append(10);
        let shipper = Shipper::start_with_options(
            feed.clone(),
            sink.clone(),
            root.path().join("cursor"),
            Wake::new(),
            fast(),
        )
        .unwrap();
        wait_for("10 entries", || shipper.status().cursor == 10);
        shipper.stop();
        feed.append(5);
        let shipper = Shipper::start_with_options(
            feed.clone(),
            sink,
            root.path().join("cursor"),
            Wake::new(),
            fast(),
        )
        .unwrap();
        wait_for("15 entries", || shipper.status().cursor == 15);
        shipper.stop();
        assert_eq!(ndjson_ids(&export), (1..=15).collect::<Vec<_>>());
    }

    #[test]
    fn a_failing_feed_is_retried_reported_and_recovered_from() {
        let root = tempfile::tempdir().unwrap();
        let feed = Arc::new(MemoryFeed::default());
        feed.failing.store(true, Ordering::Relaxed);
        feed.append(3);
        let export = root.path().join("export");
        let sink = Sink::Ndjson(NdjsonConfig {
            dir: export.clone(),
            max_file_bytes: 1 << 20,
        });
        let shipper = Shipper::start_with_options(
            feed.clone(),
            sink,
            root.path().join("cursor"),
            Wake::new(),
            fast(),
        )
        .unwrap();
        wait_for("retries", || feed.reads.load(Ordering::Relaxed) >= 3);
        let status = shipper.status();
        assert_eq!(status.cursor, 0);
        assert_eq!(
            status.last_error.as_deref(),
            Some("reading the audit feed failed: the test store is offline")
        );
        feed.failing.store(false, Ordering::Relaxed);
        wait_for("recovery", || shipper.status().cursor == 3);
        assert_eq!(shipper.status().last_error, None);
        shipper.stop();
        assert_eq!(ndjson_ids(&export), vec![1, 2, 3]);
    }

    #[test]
    fn a_feed_that_breaks_the_order_delivers_nothing() {
        let root = tempfile::tempdir().unwrap();
        let export = root.path().join("export");
        let sink = Sink::Ndjson(NdjsonConfig {
            dir: export.clone(),
            max_file_bytes: 1 << 20,
        });
        // A stop keeps retrying until its deadline; keep that short here.
        let options = ShipperOptions {
            stop_deadline: Duration::from_millis(200),
            ..fast()
        };
        let shipper = Shipper::start_with_options(
            Arc::new(RepeatingFeed),
            sink,
            root.path().join("cursor"),
            Wake::new(),
            options,
        )
        .unwrap();
        wait_for("the error", || shipper.status().last_error.is_some());
        let status = shipper.stop();
        assert_eq!(status.cursor, 0);
        assert!(status.last_error.unwrap().contains("seq 1 after seq 1"));
        assert_eq!(fs::read_dir(&export).unwrap().count(), 0);
    }

    /// A feed whose implementation has a bug.
    struct PanickingFeed;

    impl AuditFeed for PanickingFeed {
        fn after(&self, _seq: u64, _limit: usize) -> Result<Vec<FeedEntry>, FeedError> {
            panic!("a bug in the feed");
        }
    }

    #[test]
    fn a_panic_in_the_feed_shows_in_the_status() {
        let root = tempfile::tempdir().unwrap();
        let sink = Sink::Ndjson(NdjsonConfig {
            dir: root.path().join("export"),
            max_file_bytes: 1 << 20,
        });
        let shipper = Shipper::start_with_options(
            Arc::new(PanickingFeed),
            sink,
            root.path().join("cursor"),
            Wake::new(),
            fast(),
        )
        .unwrap();
        wait_for("the panic to show", || {
            shipper.status().last_error.is_some()
        });
        let status = shipper.stop();
        assert!(status.last_error.unwrap().contains("panicked"));
        assert!(!status.connected);
        assert_eq!(status.cursor, 0);
    }

    #[test]
    fn stop_delivers_what_is_pending() {
        let root = tempfile::tempdir().unwrap();
        let feed = Arc::new(MemoryFeed::default());
        let export = root.path().join("export");
        let sink = Sink::Ndjson(NdjsonConfig {
            dir: export.clone(),
            max_file_bytes: 1 << 20,
        });
        let shipper = Shipper::start_with_options(
            feed.clone(),
            sink,
            root.path().join("cursor"),
            Wake::new(),
            fast(),
        )
        .unwrap();
        wait_for("the first idle read", || {
            feed.reads.load(Ordering::Relaxed) > 0
        });
        // Appended without notify, with a 30 s poll interval: only the stop drain ships these.
        feed.append(30);
        let status = shipper.stop();
        assert_eq!(status.cursor, 30);
        assert_eq!(ndjson_ids(&export), (1..=30).collect::<Vec<_>>());
    }

    #[test]
    fn one_cursor_one_shipper_and_one_wake_one_shipper() {
        let root = tempfile::tempdir().unwrap();
        let feed = Arc::new(MemoryFeed::default());
        let sink = Sink::Ndjson(NdjsonConfig {
            dir: root.path().join("export"),
            max_file_bytes: 1 << 20,
        });
        let wake = Wake::new();
        let first = Shipper::start_with_options(
            feed.clone(),
            sink.clone(),
            root.path().join("a"),
            wake.clone(),
            fast(),
        )
        .unwrap();
        let error = Shipper::start_with_options(
            feed.clone(),
            sink.clone(),
            root.path().join("a"),
            Wake::new(),
            fast(),
        )
        .unwrap_err();
        assert!(matches!(error, SiemError::CursorLocked { .. }), "{error}");
        let error =
            Shipper::start_with_options(feed.clone(), sink, root.path().join("b"), wake, fast())
                .unwrap_err();
        assert!(matches!(error, SiemError::WakeInUse), "{error}");
        first.stop();
    }

    #[test]
    fn a_bad_sink_configuration_fails_at_start() {
        let root = tempfile::tempdir().unwrap();
        let sink = Sink::Syslog(SyslogConfig {
            address: "127.0.0.1:6514".to_owned(),
            server_name: "127.0.0.1".to_owned(),
            ca_file: root.path().join("missing-ca.pem"),
            client_cert: None,
            app_name: "carevault".to_owned(),
            hostname: "cv-node-1".to_owned(),
        });
        let error = Shipper::start(
            Arc::new(MemoryFeed::default()),
            sink,
            root.path().join("c"),
            Wake::new(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("missing-ca.pem"), "{error}");
    }
}
