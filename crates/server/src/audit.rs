//! The audit trail of a running server: one AuditEvent per request (appended in the writing
//! transaction for writes, durably before the response for everything else, and failing the
//! request with 503 when it cannot be written), server start and stop events, and signed
//! checkpoints written at an interval and at shutdown.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use carevault_audit::checkpoint::{Checkpoint, NoteSigner, NoteVerifier};
use carevault_audit::event::{self, AuditRecord, EventKind, Outcome, RestInteraction, UserRef};
use carevault_crypto::Clock;
use carevault_store::audit_log::{self, AuditAppend, AuditKey};
use carevault_store::{AuditHook, RestError, Store, WriteFact};
use parking_lot::Mutex;
use serde_json::Value;

/// Who made a request and from where; fixed when it arrives.
#[derive(Clone, Debug, Default)]
pub(crate) struct Party {
    pub request_id: Option<String>,
    pub client: Option<String>,
    pub user: Option<UserRef>,
    pub address: Option<String>,
    pub user_agent: Option<String>,
    pub purpose: Vec<String>,
}

/// What one request did, filled in while it runs.
#[derive(Debug)]
pub(crate) struct Note {
    pub party: Party,
    pub interaction: RestInteraction,
    pub patients: Vec<String>,
    pub resources: Vec<String>,
    pub query: Option<Vec<u8>>,
    pub detail: Vec<(String, String)>,
    /// Set when the request's own event was appended inside its write transaction.
    pub recorded_in_tx: bool,
    /// Set when a stored record failed its integrity check while serving the request.
    pub integrity_error: bool,
}

/// A request's note, shared between the handler and the write hook running in the writer.
pub(crate) type SharedNote = Arc<Mutex<Note>>;

impl Note {
    pub(crate) fn new(party: Party, interaction: RestInteraction) -> SharedNote {
        Arc::new(Mutex::new(Note {
            party,
            interaction,
            patients: Vec::new(),
            resources: Vec::new(),
            query: None,
            detail: Vec::new(),
            recorded_in_tx: false,
            integrity_error: false,
        }))
    }

    /// Adds the patients whose data `resource` (or every resource of a Bundle) holds.
    pub(crate) fn add_patients_of(&mut self, resource: &Value) {
        for p in patients_in(resource) {
            add_unique(&mut self.patients, p);
        }
    }

    /// Adds patients by id (without `Patient/`), as the store worked them out for a resource's
    /// Patient compartment ([`carevault_store::Stored::patients`]).
    pub(crate) fn add_patient_ids(&mut self, ids: &[String]) {
        for id in ids {
            add_unique(&mut self.patients, format!("Patient/{id}"));
        }
    }
}

fn add_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// `Patient/id` of every patient whose data `v` holds; for a Bundle, of every entry's resource.
pub(crate) fn patients_in(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut one = |r: &Value| {
        if let Some(t) = r.get("resourceType").and_then(Value::as_str) {
            for id in carevault_fhir::patient_compartment_refs(t, r) {
                add_unique(&mut out, format!("Patient/{id}"));
            }
        }
    };
    if v.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
        for e in v
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = e.get("resource") {
                one(r);
            }
        }
    } else {
        one(v);
    }
    out
}

/// The audit trail's state in a running server.
pub struct Trail {
    node: String,
    clock: Arc<dyn Clock>,
    signer: NoteSigner,
    checkpoints: PathBuf,
    latest: Mutex<Option<String>>,
    signed_size: AtomicU64,
}

impl std::fmt::Debug for Trail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trail")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Why the audit trail could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum TrailError {
    /// The clock is behind the log.
    #[error(
        "the system clock ({now}) is before the last audit entry ({last}); fix the clock (NTP) before starting carevault"
    )]
    ClockRollback { now: String, last: String },
    /// The store failed.
    #[error("the audit log could not be read or written: {0}")]
    Store(#[from] RestError),
    /// A file under `audit/` failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The signing key is unusable.
    #[error("the audit signing key is unusable: {0}")]
    Key(String),
}

/// Where checkpoints and the verifier key live inside a data directory.
pub fn audit_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("audit")
}

/// The key name checkpoints are signed under.
pub fn signer_name(node: &str) -> String {
    format!("carevault-audit/{node}")
}

/// This machine's node name: the setting, else the host name, else `carevault`.
pub fn node_name(setting: &str) -> String {
    if !setting.is_empty() {
        return setting.to_owned();
    }
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "carevault".into())
}

impl Trail {
    /// Opens the trail of `data_dir`: checks the clock against the last entry, writes the
    /// verifier key file, and remembers the latest checkpoint.
    pub fn open(
        data_dir: &Path,
        store: &dyn Store,
        node: String,
        seed: &[u8; 32],
        clock: Arc<dyn Clock>,
    ) -> Result<Trail, TrailError> {
        let dir = audit_dir(data_dir);
        ensure_dir(&dir)?;
        let signer = NoteSigner::from_seed(&signer_name(&node), seed)
            .map_err(|e| TrailError::Key(e.to_string()))?;
        let vkey_path = dir.join("checkpoint-key.vkey");
        write_file_atomically(
            &vkey_path,
            format!("{}\n", signer.verifier_key()).as_bytes(),
        )?;
        // Entries folded from the read journal need not be in time order: the latest time.
        let last = store
            .reader()
            .map_err(RestError::from)?
            .audit_last_recorded()
            .map_err(RestError::from)?;
        let now = now_ms(&*clock);
        if let Some(last_ms) = last
            && now < last_ms
        {
            return Err(TrailError::ClockRollback {
                now: carevault_audit::instant::format_ms(now),
                last: carevault_audit::instant::format_ms(last_ms),
            });
        }
        let checkpoints = dir.join("checkpoints");
        let latest = read_last_note(&checkpoints)?;
        // The size this node last signed; a note that does not verify under its own key (or
        // none) counts as nothing signed, so the next checkpoint is made at once.
        let verifier = NoteVerifier::from_vkey(&signer.verifier_key())
            .map_err(|e| TrailError::Key(e.to_string()))?;
        let signed_size = latest
            .as_deref()
            .and_then(|n| verifier.verify(n).ok())
            .map_or(0, |c| c.size);
        Ok(Trail {
            node,
            clock,
            signer,
            checkpoints,
            latest: Mutex::new(latest),
            signed_size: AtomicU64::new(signed_size),
        })
    }

    /// The node name entries carry.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The current time in ms.
    pub fn now_ms(&self) -> i64 {
        now_ms(&*self.clock)
    }

    /// The latest signed checkpoint.
    pub fn latest_checkpoint(&self) -> Option<String> {
        self.latest.lock().clone()
    }

    /// The verifier key (`name+hash+key`) of the checkpoint signatures.
    pub fn verifier_key(&self) -> String {
        self.signer.verifier_key()
    }

    /// A record of `kind` by `party`, now.
    pub(crate) fn record(&self, party: &Party, kind: EventKind, outcome: Outcome) -> AuditRecord {
        AuditRecord {
            recorded_ms: now_ms(&*self.clock),
            action: kind.default_action(),
            kind,
            outcome,
            outcome_desc: None,
            purpose: party.purpose.clone(),
            user: party.user.clone(),
            client: party.client.clone(),
            address: party.address.clone(),
            user_agent: party.user_agent.clone(),
            node: self.node.clone(),
            patients: Vec::new(),
            resources: Vec::new(),
            query: None,
            request_id: party.request_id.clone(),
            break_glass_reason: None,
            detail: Vec::new(),
        }
    }

    /// A server event (start, stop, key operation) with no requesting party.
    pub fn system_event(&self, kind: EventKind, detail: Vec<(String, String)>) -> AuditAppend {
        let mut r = self.record(&Party::default(), kind, Outcome::Success);
        r.detail = detail;
        to_append(&r)
    }

    /// Makes a request's event durable (reads and refusals; writes append theirs in their own
    /// transaction): its hashing and key blinding happen here, on the request's task, then it
    /// joins the next group commit of the store's read journal ([`Store::journal_audit`]),
    /// which folds it into the log soon after. Resolves once it is on disk. `expect` (the
    /// request's [`carevault_store::audit_log::JournalExpectation`]) is released once the entry
    /// is queued.
    pub(crate) async fn append_durably(
        &self,
        store: &dyn Store,
        append: AuditAppend,
        expect: &mut carevault_store::audit_log::JournalExpectation,
    ) -> Result<(), RestError> {
        let prepared = append.prepare(store.keyring());
        let (send, recv) = tokio::sync::oneshot::channel();
        store.journal_audit(
            prepared,
            Box::new(move |r| {
                // A request that was dropped meanwhile no longer waits; nothing to do then.
                let _ = send.send(r);
            }),
        );
        expect.release();
        recv.await
            .map_err(|_| RestError::Store("the audit append was abandoned".into()))?
    }

    /// The record of a finished request.
    pub(crate) fn request_record(&self, note: &Note, status: u16) -> AuditRecord {
        let outcome = outcome_of(status);
        let kind = if note.integrity_error {
            EventKind::IntegrityError
        } else if status == 403 {
            EventKind::PermissionDenied
        } else {
            EventKind::Rest(note.interaction.clone())
        };
        let mut r = self.record(&note.party, kind, outcome);
        if status == 403 || note.integrity_error {
            r.action = note.interaction.default_action();
            r.detail
                .push(("interaction".into(), note.interaction.code().to_owned()));
        }
        if outcome != Outcome::Success {
            r.outcome_desc = Some(format!("HTTP {status}"));
        }
        r.patients = note.patients.clone();
        r.resources = note.resources.clone();
        r.query = note.query.clone();
        r.detail.extend(note.detail.iter().cloned());
        r
    }

    /// The hook that appends one event per version a write job wrote, in its transaction.
    /// For a single write this is the request's own event; for a Bundle, the events of its
    /// entries (the Bundle's own event follows, durably, when the response is ready).
    pub(crate) fn write_hook(self: &Arc<Self>, note: &SharedNote, bundle: bool) -> AuditHook {
        let trail = self.clone();
        let note = note.clone();
        Arc::new(move |facts: &[WriteFact]| {
            let mut n = note.lock();
            let mut out = Vec::with_capacity(facts.len());
            for f in facts {
                let mut r = trail.record(
                    &n.party,
                    EventKind::Rest(interaction_of_method(f.method)),
                    Outcome::Success,
                );
                r.patients = f.patients.iter().map(|p| format!("Patient/{p}")).collect();
                r.resources = vec![format!("{}/{}/_history/{}", f.rtype, f.id, f.version)];
                if !bundle {
                    r.query = n.query.clone();
                }
                for p in &r.patients {
                    add_unique(&mut n.patients, p.clone());
                }
                out.push(to_append(&r));
            }
            if !bundle && !out.is_empty() {
                n.recorded_in_tx = true;
            }
            out
        })
    }

    /// Signs a checkpoint of the log as it is now, when it has grown since the last one (or
    /// `force`), appends it to `audit/checkpoints` and makes it the latest.
    pub fn checkpoint(&self, store: &dyn Store, force: bool) -> Result<Option<String>, TrailError> {
        // The reads answered so far belong in the checkpoint.
        store.settle_audit()?;
        let (size, root) = {
            let mut r = store.reader().map_err(RestError::from)?;
            audit_log::tree_head(&mut *r)?
        };
        if !force
            && size == self.signed_size.load(Ordering::Relaxed)
            && self.latest.lock().is_some()
        {
            return Ok(None);
        }
        let note = self.signer.sign(&Checkpoint {
            origin: signer_name(&self.node),
            size,
            root,
            time_ms: now_ms(&*self.clock),
        });
        append_note(&self.checkpoints, &note)?;
        self.signed_size.store(size, Ordering::Relaxed);
        *self.latest.lock() = Some(note.clone());
        Ok(Some(note))
    }
}

/// The entry a record becomes: canonical bytes and the keys it is found by (patients, entities
/// without version, user and linked reference, client).
pub fn to_append(r: &AuditRecord) -> AuditAppend {
    let mut keys: Vec<AuditKey> = r.patients.iter().cloned().map(AuditKey::Patient).collect();
    for res in &r.resources {
        let base = match res.split_once("/_history/") {
            Some((b, _)) => b,
            None => res,
        };
        keys.push(AuditKey::Entity(base.to_owned()));
    }
    if let Some(u) = &r.user {
        keys.push(AuditKey::User(u.name.clone()));
        if let Some(reference) = &u.reference {
            keys.push(AuditKey::Agent(reference.clone()));
        }
    }
    if let Some(c) = &r.client {
        keys.push(AuditKey::Client(c.clone()));
    }
    AuditAppend {
        recorded_ms: r.recorded_ms,
        canonical: event::canonical_bytes(r),
        keys,
    }
}

/// The outcome code of an HTTP status.
pub(crate) fn outcome_of(status: u16) -> Outcome {
    match status {
        0..=399 => Outcome::Success,
        400..=499 => Outcome::Minor,
        503 => Outcome::Serious,
        _ => Outcome::Major,
    }
}

/// The restful-interaction code of a write method.
pub(crate) fn interaction_of_method(method: &str) -> RestInteraction {
    match method {
        "POST" => RestInteraction::Create,
        "PATCH" => RestInteraction::Patch,
        "DELETE" => RestInteraction::Delete,
        _ => RestInteraction::Update,
    }
}

/// The action of a request method, for events recorded before the handler said more.
pub(crate) fn default_interaction(method: &http::Method) -> RestInteraction {
    match *method {
        http::Method::POST => RestInteraction::Create,
        http::Method::PUT => RestInteraction::Update,
        http::Method::PATCH => RestInteraction::Patch,
        http::Method::DELETE => RestInteraction::Delete,
        _ => RestInteraction::Read,
    }
}

/// Milliseconds since the Unix epoch on `clock` (0 for a clock before 1970).
pub fn now_ms(clock: &dyn Clock) -> i64 {
    clock
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ensure_dir(dir: &Path) -> Result<(), TrailError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TrailError::Io {
            action: "create",
            path: dir.into(),
            source,
        })
}

fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<(), TrailError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |action| {
        move |source| TrailError::Io {
            action,
            path: path.into(),
            source,
        }
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create"))?;
    f.write_all(bytes).map_err(io("write"))?;
    f.sync_all().map_err(io("flush"))?;
    std::fs::rename(&tmp, path).map_err(io("replace"))?;
    Ok(())
}

/// Appends a signed note to the checkpoints file and flushes it.
fn append_note(path: &Path, note: &str) -> Result<(), TrailError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |action| {
        move |source| TrailError::Io {
            action,
            path: path.into(),
            source,
        }
    };
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io("open"))?;
    f.write_all(note.as_bytes()).map_err(io("append to"))?;
    f.sync_all().map_err(io("flush"))
}

fn read_last_note(path: &Path) -> Result<Option<String>, TrailError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TrailError::Io {
                action: "read",
                path: path.into(),
                source,
            });
        }
    };
    let notes = carevault_audit::checkpoint::split_notes(&text)
        .map_err(|e| TrailError::Key(format!("{}: {e}", path.display())))?;
    Ok(notes.last().map(|n| (*n).to_owned()))
}

/// Appends, durably, the event of an administrative command run on this machine (client,
/// key, import, report commands): the operating-system account that ran it is the agent.
pub fn append_admin_event(
    store: &dyn Store,
    node: &str,
    kind: EventKind,
    detail: Vec<(String, String)>,
    patients: Vec<String>,
) -> Result<u64, RestError> {
    let os_user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let record = AuditRecord {
        recorded_ms: now_ms(&carevault_crypto::SystemClock),
        action: kind.default_action(),
        outcome: kind.default_outcome(),
        kind,
        outcome_desc: None,
        purpose: Vec::new(),
        user: Some(UserRef {
            name: format!("os:{os_user}"),
            reference: None,
            roles: vec!["cli".into()],
        }),
        client: Some("carevault-cli".into()),
        address: None,
        user_agent: None,
        node: node.to_owned(),
        patients,
        resources: Vec::new(),
        query: None,
        request_id: None,
        break_glass_reason: None,
        detail,
    };
    let seqs = audit_log::append_durably(store, vec![to_append(&record)])?;
    Ok(seqs.first().copied().unwrap_or(0))
}

/// The audit log as a SIEM feed: entries after a cursor, opened and rendered as AuditEvent JSON.
pub struct StoreFeed {
    store: Arc<dyn Store>,
}

impl StoreFeed {
    /// A feed over `store`'s audit log.
    pub fn new(store: Arc<dyn Store>) -> Self {
        StoreFeed { store }
    }
}

impl carevault_siem::AuditFeed for StoreFeed {
    fn after(
        &self,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<carevault_siem::FeedEntry>, carevault_siem::FeedError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            carevault_siem::FeedError::new(format!("{what}: {e}"))
        };
        let stored = self
            .store
            .reader()
            .and_then(|mut r| r.audit_entries(seq, limit))
            .map_err(|e| fail("the audit log could not be read", &e))?;
        stored
            .iter()
            .map(|s| {
                let entry = audit_log::open(self.store.keyring(), s)
                    .map_err(|e| fail("an audit entry could not be opened", &e))?;
                let ev: Value = event::render(&entry.canonical)
                    .map_err(|e| fail("an audit entry cannot be rendered", &e))?;
                let outcome = ev
                    .get("outcome")
                    .and_then(Value::as_str)
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(0);
                let json = serde_json::to_vec(&event::with_id(ev, s.seq))
                    .map_err(|e| fail("an audit entry could not be rendered", &e))?;
                Ok(carevault_siem::FeedEntry {
                    seq: s.seq,
                    msgid: carevault_siem::MSGID,
                    recorded_ms: s.recorded_ms,
                    outcome,
                    json,
                })
            })
            .collect()
    }
}

/// The signed checkpoints of `DIR/audit/checkpoints` as a SIEM feed: the n-th note of the file
/// is entry n, sent under the syslog MSGID `Checkpoint` as JSON (`origin`, `size`, `rootHash`,
/// `time` and the whole signed `note`), so the collector keeps every checkpoint off the machine
/// through the same durable-cursor shipper as the entries.
pub struct CheckpointFeed {
    path: PathBuf,
}

impl CheckpointFeed {
    /// A feed over the checkpoints file at `path`.
    pub fn new(path: PathBuf) -> Self {
        CheckpointFeed { path }
    }
}

impl carevault_siem::AuditFeed for CheckpointFeed {
    fn after(
        &self,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<carevault_siem::FeedEntry>, carevault_siem::FeedError> {
        use base64::Engine;
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(carevault_siem::FeedError::with_source(
                    format!(
                        "the checkpoints file {} could not be read",
                        self.path.display()
                    ),
                    e,
                ));
            }
        };
        // A note still being appended is left for the next read.
        let (notes, _) = carevault_audit::checkpoint::split_complete_notes(&text).map_err(|e| {
            carevault_siem::FeedError::with_source(
                format!("the checkpoints file {} is malformed", self.path.display()),
                e,
            )
        })?;
        let skip = usize::try_from(seq).unwrap_or(usize::MAX);
        notes
            .iter()
            .enumerate()
            .skip(skip)
            .take(limit)
            .map(|(i, note)| {
                // A signed note is its body, a blank line, then signature lines.
                let body = note.split_once("\n\n").map_or(*note, |(b, _)| b);
                let c = Checkpoint::parse_body(&format!("{body}\n")).map_err(|e| {
                    carevault_siem::FeedError::with_source(
                        format!(
                            "checkpoint {} of {} is malformed",
                            i + 1,
                            self.path.display()
                        ),
                        e,
                    )
                })?;
                let json = serde_json::json!({
                    "origin": c.origin,
                    "size": c.size,
                    "rootHash": base64::engine::general_purpose::STANDARD.encode(c.root),
                    "time": carevault_audit::instant::format_ms(c.time_ms),
                    "note": note,
                });
                Ok(carevault_siem::FeedEntry {
                    seq: i as u64 + 1,
                    msgid: carevault_siem::CHECKPOINT_MSGID,
                    recorded_ms: c.time_ms,
                    outcome: 0,
                    json: json.to_string().into_bytes(),
                })
            })
            .collect()
    }
}

/// Starts the SIEM shippers the settings ask for (syslog over TLS, NDJSON files), each on its
/// own thread with its durable cursor in `DIR/audit/`.
pub fn start_shippers(
    data_dir: &Path,
    settings: &crate::config::SiemSettings,
    node: &str,
    store: Arc<dyn Store>,
) -> Result<Vec<carevault_siem::Shipper>, carevault_siem::SiemError> {
    use carevault_siem::{NdjsonConfig, Shipper, Sink, SyslogConfig, Wake};
    let mut out = Vec::new();
    let feed: Arc<dyn carevault_siem::AuditFeed> = Arc::new(StoreFeed::new(store));
    let dir = audit_dir(data_dir);
    if !settings.syslog_address.is_empty() {
        let server_name = if settings.syslog_server_name.is_empty() {
            settings
                .syslog_address
                .rsplit_once(':')
                .map_or(settings.syslog_address.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        } else {
            settings.syslog_server_name.clone()
        };
        let sink = Sink::Syslog(SyslogConfig {
            address: settings.syslog_address.clone(),
            server_name,
            ca_file: data_dir.join(&settings.syslog_ca_file),
            client_cert: None,
            app_name: "carevault".into(),
            hostname: node.to_owned(),
        });
        out.push(Shipper::start(
            feed.clone(),
            sink.clone(),
            dir.join("siem-syslog.cursor"),
            Wake::new(),
        )?);
        // Checkpoints travel on the same stream under their own MSGID, with their own cursor.
        out.push(Shipper::start(
            Arc::new(CheckpointFeed::new(dir.join("checkpoints"))),
            sink,
            dir.join("siem-syslog-checkpoints.cursor"),
            Wake::new(),
        )?);
    }
    if !settings.ndjson_dir.as_os_str().is_empty() {
        let sink = Sink::Ndjson(NdjsonConfig {
            dir: data_dir.join(&settings.ndjson_dir),
            max_file_bytes: 64 * 1024 * 1024,
        });
        out.push(Shipper::start(
            feed,
            sink,
            dir.join("siem-ndjson.cursor"),
            Wake::new(),
        )?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn note() -> SharedNote {
        Note::new(Party::default(), RestInteraction::Read)
    }

    #[test]
    fn patients_by_id_are_listed_like_those_found_in_the_resource() {
        let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/a"}, "performer": [{"reference": "Patient/b"}]});
        let from_json = note();
        from_json.lock().add_patients_of(&obs);
        let mut listed = from_json.lock().patients.clone();
        listed.sort();
        assert_eq!(listed, ["Patient/a", "Patient/b"]);

        let by_id = note();
        by_id
            .lock()
            .add_patient_ids(&["a".to_owned(), "b".to_owned()]);
        by_id.lock().add_patient_ids(&["b".to_owned()]);
        assert_eq!(by_id.lock().patients, ["Patient/a", "Patient/b"]);
    }
}
