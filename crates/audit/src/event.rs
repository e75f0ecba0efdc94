//! The audit record and its rendering as a FHIR R4 AuditEvent shaped after IHE BALP (PRODUCT.md
//! §2.4), plus the index keys read back from a stored event.
//!
//! What the Merkle leaf hashes is not the AuditEvent but [`canonical_bytes`]: a versioned compact
//! encoding of the record's facts (see [`compact`]), from which [`render`] gives the AuditEvent.
//! [`to_json`] always emits the same elements in the same order for the same record, so every
//! rendering of a stored entry is the same. The `id` is not part of the hashed bytes:
//! [`with_id`] adds it on output from the entry's sequence number.
//!
//! Layout, following the PRODUCT.md example:
//! - `type`/`subtype`: REST interactions use `rest` with the `restful-interaction` code (and, for
//!   operations, a second coding `urn:carevault:operation#$name`); every other kind uses its DICOM
//!   event type (110100 Application Activity, 110113 Security Alert, 110114 User Authentication,
//!   110101 Audit Log Used, 110107 Import) with the DICOM subtype where one exists, plus one
//!   `urn:carevault:audit-subtype` coding that names the [`EventKind`] unambiguously.
//! - `agent`: the user (type IRCP) when there is one, the client app (DCM 110150), and the node
//!   (DCM 110153). The first of these present is the requestor and carries the network address
//!   and the `urn:carevault:user-agent` extension.
//! - `entity`: patients (object-role 1), resources (object-role 4), the query (object-role 24,
//!   `query` = base64 of the raw query), the request id (BALP `XrequestId`), and the extra facts
//!   of [`AuditRecord::detail`] as `entity.detail` (`type` = key, `valueString` = value) on one
//!   entity of type `urn:carevault:audit-entity-type#detail`.
//! - A break-the-glass reason is the `text` of the `BTG` purpose of event.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

use crate::instant;

pub mod compact;

pub use compact::{FORMAT_V1, FormatError, canonical_bytes, decode, render};

/// Code system of the FHIR audit event types (`rest`).
pub const SYSTEM_AUDIT_EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
/// Code system of the FHIR RESTful interactions.
pub const SYSTEM_RESTFUL_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
/// The DICOM controlled terminology.
pub const SYSTEM_DICOM: &str = "http://dicom.nema.org/resources/ontology/DCM";
/// HL7 v3 ActReason: purposes of use (TREAT, BTG, HOPERAT, ...).
pub const SYSTEM_ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
/// HL7 v3 ParticipationType (IRCP, information recipient).
pub const SYSTEM_PARTICIPATION_TYPE: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
/// Object roles of audit entities.
pub const SYSTEM_OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
/// Audit entity types (2 = System Object).
pub const SYSTEM_ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
/// BALP entity types (XrequestId).
pub const SYSTEM_BALP_ENTITY_TYPE: &str =
    "http://hl7.org/fhir/ig/balp/CodeSystem/BasicAuditEntityType";
/// Identifier system of user account names.
pub const SYSTEM_USER: &str = "urn:carevault:user";
/// Code system of carevault roles.
pub const SYSTEM_ROLE: &str = "urn:carevault:role";
/// Identifier system of OAuth client ids.
pub const SYSTEM_CLIENT: &str = "urn:carevault:client";
/// Identifier system of server node names.
pub const SYSTEM_NODE: &str = "urn:carevault:node";
/// Identifier system of request ids.
pub const SYSTEM_REQUEST_ID: &str = "urn:carevault:request-id";
/// Code system of carevault's own event subtypes (one per [`EventKind`] outside REST).
pub const SYSTEM_SUBTYPE: &str = "urn:carevault:audit-subtype";
/// Code system of FHIR operation names (`$export`, ...) in a REST operation's subtype.
pub const SYSTEM_OPERATION: &str = "urn:carevault:operation";
/// Code system of carevault's entity types (`detail`).
pub const SYSTEM_CAREVAULT_ENTITY_TYPE: &str = "urn:carevault:audit-entity-type";
/// URL of the requestor agent's user-agent extension.
pub const EXT_USER_AGENT: &str = "urn:carevault:user-agent";

/// A FHIR RESTful interaction (http://hl7.org/fhir/restful-interaction).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RestInteraction {
    /// `read`.
    Read,
    /// `vread`.
    Vread,
    /// `update`.
    Update,
    /// `patch`.
    Patch,
    /// `delete`.
    Delete,
    /// `history-instance`.
    HistoryInstance,
    /// `history-type`.
    HistoryType,
    /// `history-system`.
    HistorySystem,
    /// `create`.
    Create,
    /// `search-type` (also used for compartment searches).
    SearchType,
    /// `search-system`.
    SearchSystem,
    /// `capabilities`.
    Capabilities,
    /// `transaction`.
    Transaction,
    /// `batch`.
    Batch,
    /// `operation`, with the operation's name such as `$validate`, `$export` or `$access-report`.
    Operation(String),
}

impl RestInteraction {
    /// The restful-interaction code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Vread => "vread",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::HistoryInstance => "history-instance",
            Self::HistoryType => "history-type",
            Self::HistorySystem => "history-system",
            Self::Create => "create",
            Self::SearchType => "search-type",
            Self::SearchSystem => "search-system",
            Self::Capabilities => "capabilities",
            Self::Transaction => "transaction",
            Self::Batch => "batch",
            Self::Operation(_) => "operation",
        }
    }

    /// The interaction for a restful-interaction code (`operation` needs its name).
    pub fn from_code(code: &str, operation: Option<&str>) -> Option<RestInteraction> {
        Some(match code {
            "read" => Self::Read,
            "vread" => Self::Vread,
            "update" => Self::Update,
            "patch" => Self::Patch,
            "delete" => Self::Delete,
            "history-instance" => Self::HistoryInstance,
            "history-type" => Self::HistoryType,
            "history-system" => Self::HistorySystem,
            "create" => Self::Create,
            "search-type" | "search" => Self::SearchType,
            "search-system" => Self::SearchSystem,
            "capabilities" => Self::Capabilities,
            "transaction" => Self::Transaction,
            "batch" => Self::Batch,
            "operation" => Self::Operation(operation.unwrap_or_default().to_owned()),
            _ => return None,
        })
    }

    /// The BALP action: C for create, R for reads and history, U for update and patch, D for
    /// delete, E for searches (BALP Query), operations, batches and transactions.
    pub fn default_action(&self) -> Action {
        match self {
            Self::Create => Action::Create,
            Self::Read
            | Self::Vread
            | Self::HistoryInstance
            | Self::HistoryType
            | Self::HistorySystem
            | Self::Capabilities => Action::Read,
            Self::Update | Self::Patch => Action::Update,
            Self::Delete => Action::Delete,
            Self::SearchType
            | Self::SearchSystem
            | Self::Transaction
            | Self::Batch
            | Self::Operation(_) => Action::Execute,
        }
    }
}

/// What happened: every kind of event the audit trail records.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A FHIR REST interaction (type `rest`).
    Rest(RestInteraction),
    /// A successful sign-in (DCM 110114 / 110122).
    Login,
    /// A sign-out (DCM 110114 / 110123).
    Logout,
    /// A failed sign-in (DCM 110114 / 110122, outcome at least 4).
    LoginFailed,
    /// An access token was issued (DCM 110114).
    TokenIssued,
    /// An access token was refreshed (DCM 110114).
    TokenRefreshed,
    /// A token was revoked (DCM 110114).
    TokenRevoked,
    /// A request was refused by the authorization decision (DCM 110113 Security Alert, as BALP's
    /// authorization-deny pattern does; outcome at least 4).
    PermissionDenied,
    /// A break-the-glass grant (DCM 110113 / 110127 Emergency Override Started, purpose BTG).
    BreakGlass,
    /// A user account was added, disabled, enabled, unlocked or its password or MFA reset
    /// (DCM 110113 / 110137 User Security Attributes Changed).
    AccountChange,
    /// A user's roles changed (DCM 110113 / 110136 Security Roles Changed).
    RoleChange,
    /// The access policy changed (DCM 110113 / 110136 Security Roles Changed).
    PolicyChange,
    /// An OAuth client was added, disabled or its secret rotated (DCM 110113 / 110137).
    ClientChange,
    /// A training record changed (DCM 110113 / 110137).
    TrainingChange,
    /// A key was created, rotated or used to shred data (DCM 110100 Application Activity).
    KeyOperation,
    /// A backup was created or verified (DCM 110100).
    Backup,
    /// A backup was restored (DCM 110100).
    Restore,
    /// Data was imported in bulk (DCM 110107 Import).
    Import,
    /// A patient's data was erased by crypto-shredding (DCM 110100).
    PatientErase,
    /// The server started (DCM 110100 / 110120 Application Start).
    ServerStart,
    /// The server stopped (DCM 110100 / 110121 Application Stop).
    ServerStop,
    /// The audit or SIEM configuration changed (DCM 110100).
    AuditConfigChange,
    /// The audit trail itself was read: a report, a proof, a verification (DCM 110101).
    AuditLogUsed,
    /// An alert changed state (DCM 110100).
    AlertChange,
    /// An integrity check failed: tampering or corruption detected (DCM 110113).
    IntegrityError,
}

/// A coding written as (system, code, display).
type Code = (&'static str, &'static str, Option<&'static str>);

const DCM_APPLICATION_ACTIVITY: Code = (SYSTEM_DICOM, "110100", Some("Application Activity"));
const DCM_AUDIT_LOG_USED: Code = (SYSTEM_DICOM, "110101", Some("Audit Log Used"));
const DCM_IMPORT: Code = (SYSTEM_DICOM, "110107", Some("Import"));
const DCM_SECURITY_ALERT: Code = (SYSTEM_DICOM, "110113", Some("Security Alert"));
const DCM_USER_AUTHENTICATION: Code = (SYSTEM_DICOM, "110114", Some("User Authentication"));
const DCM_APPLICATION_START: Code = (SYSTEM_DICOM, "110120", Some("Application Start"));
const DCM_APPLICATION_STOP: Code = (SYSTEM_DICOM, "110121", Some("Application Stop"));
const DCM_LOGIN: Code = (SYSTEM_DICOM, "110122", Some("Login"));
const DCM_LOGOUT: Code = (SYSTEM_DICOM, "110123", Some("Logout"));
const DCM_EMERGENCY_OVERRIDE_STARTED: Code =
    (SYSTEM_DICOM, "110127", Some("Emergency Override Started"));
const DCM_SECURITY_ROLES_CHANGED: Code = (SYSTEM_DICOM, "110136", Some("Security Roles Changed"));
const DCM_USER_SECURITY_ATTRIBUTES_CHANGED: Code = (
    SYSTEM_DICOM,
    "110137",
    Some("User Security Attributes Changed"),
);

/// Every kind outside REST, for parsing events back.
const NON_REST_KINDS: [EventKind; 24] = [
    EventKind::Login,
    EventKind::Logout,
    EventKind::LoginFailed,
    EventKind::TokenIssued,
    EventKind::TokenRefreshed,
    EventKind::TokenRevoked,
    EventKind::PermissionDenied,
    EventKind::BreakGlass,
    EventKind::AccountChange,
    EventKind::RoleChange,
    EventKind::PolicyChange,
    EventKind::ClientChange,
    EventKind::TrainingChange,
    EventKind::KeyOperation,
    EventKind::Backup,
    EventKind::Restore,
    EventKind::Import,
    EventKind::PatientErase,
    EventKind::ServerStart,
    EventKind::ServerStop,
    EventKind::AuditConfigChange,
    EventKind::AuditLogUsed,
    EventKind::AlertChange,
    EventKind::IntegrityError,
];

impl EventKind {
    /// A short name: the restful-interaction code (or the operation name) for REST, otherwise
    /// the `urn:carevault:audit-subtype` code (`login`, `break-glass`, ...).
    pub fn code(&self) -> &str {
        match self {
            Self::Rest(RestInteraction::Operation(name)) => name,
            Self::Rest(i) => i.code(),
            Self::Login => "login",
            Self::Logout => "logout",
            Self::LoginFailed => "login-failed",
            Self::TokenIssued => "token-issued",
            Self::TokenRefreshed => "token-refreshed",
            Self::TokenRevoked => "token-revoked",
            Self::PermissionDenied => "permission-denied",
            Self::BreakGlass => "break-glass",
            Self::AccountChange => "account-change",
            Self::RoleChange => "role-change",
            Self::PolicyChange => "policy-change",
            Self::ClientChange => "client-change",
            Self::TrainingChange => "training-change",
            Self::KeyOperation => "key-operation",
            Self::Backup => "backup",
            Self::Restore => "restore",
            Self::Import => "import",
            Self::PatientErase => "patient-erase",
            Self::ServerStart => "server-start",
            Self::ServerStop => "server-stop",
            Self::AuditConfigChange => "audit-config-change",
            Self::AuditLogUsed => "audit-log-used",
            Self::AlertChange => "alert-change",
            Self::IntegrityError => "integrity-error",
        }
    }

    /// The DICOM event type and subtype of a non-REST kind.
    fn dicom(&self) -> (Code, Option<Code>) {
        match self {
            Self::Rest(_) => (DCM_APPLICATION_ACTIVITY, None), // not used for REST
            Self::Login | Self::LoginFailed => (DCM_USER_AUTHENTICATION, Some(DCM_LOGIN)),
            Self::Logout => (DCM_USER_AUTHENTICATION, Some(DCM_LOGOUT)),
            Self::TokenIssued | Self::TokenRefreshed | Self::TokenRevoked => {
                (DCM_USER_AUTHENTICATION, None)
            }
            Self::PermissionDenied | Self::IntegrityError => (DCM_SECURITY_ALERT, None),
            Self::BreakGlass => (DCM_SECURITY_ALERT, Some(DCM_EMERGENCY_OVERRIDE_STARTED)),
            Self::RoleChange | Self::PolicyChange => {
                (DCM_SECURITY_ALERT, Some(DCM_SECURITY_ROLES_CHANGED))
            }
            Self::AccountChange | Self::ClientChange | Self::TrainingChange => (
                DCM_SECURITY_ALERT,
                Some(DCM_USER_SECURITY_ATTRIBUTES_CHANGED),
            ),
            Self::KeyOperation
            | Self::Backup
            | Self::Restore
            | Self::PatientErase
            | Self::AuditConfigChange
            | Self::AlertChange => (DCM_APPLICATION_ACTIVITY, None),
            Self::ServerStart => (DCM_APPLICATION_ACTIVITY, Some(DCM_APPLICATION_START)),
            Self::ServerStop => (DCM_APPLICATION_ACTIVITY, Some(DCM_APPLICATION_STOP)),
            Self::Import => (DCM_IMPORT, None),
            Self::AuditLogUsed => (DCM_AUDIT_LOG_USED, None),
        }
    }

    /// The action a record of this kind gets by default.
    pub fn default_action(&self) -> Action {
        match self {
            Self::Rest(i) => i.default_action(),
            Self::AuditLogUsed => Action::Read,
            Self::AccountChange
            | Self::RoleChange
            | Self::PolicyChange
            | Self::ClientChange
            | Self::TrainingChange
            | Self::AuditConfigChange
            | Self::AlertChange => Action::Update,
            Self::PatientErase => Action::Delete,
            Self::Import => Action::Create,
            _ => Action::Execute,
        }
    }

    /// The outcome a record of this kind gets by default: minor failure for a failed login or a
    /// denial, serious failure for an integrity error, success otherwise.
    pub fn default_outcome(&self) -> Outcome {
        match self {
            Self::LoginFailed | Self::PermissionDenied => Outcome::Minor,
            Self::IntegrityError => Outcome::Serious,
            _ => Outcome::Success,
        }
    }

    /// Whether the event reports a failure by its nature, so that it is never rendered as a
    /// success.
    fn is_failure(&self) -> bool {
        matches!(self, Self::LoginFailed | Self::PermissionDenied)
    }

    /// The kind of a stored AuditEvent, read back from its `type` and `subtype`.
    pub fn from_event(event: &Value) -> Option<EventKind> {
        let type_code = event.pointer("/type/code")?.as_str()?;
        let subtypes = event.get("subtype")?.as_array()?;
        let sub = |system: &str| {
            subtypes.iter().find_map(|c| {
                (c.get("system")?.as_str()? == system).then(|| c.get("code")?.as_str())?
            })
        };
        if type_code == "rest" {
            let code = sub(SYSTEM_RESTFUL_INTERACTION)?;
            return RestInteraction::from_code(code, sub(SYSTEM_OPERATION)).map(Self::Rest);
        }
        let code = sub(SYSTEM_SUBTYPE)?;
        NON_REST_KINDS.into_iter().find(|k| k.code() == code)
    }
}

/// What was done to the data (AuditEvent.action).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `C`: create.
    Create,
    /// `R`: read, view or print.
    Read,
    /// `U`: update.
    Update,
    /// `D`: delete.
    Delete,
    /// `E`: execute (searches, operations, system actions).
    Execute,
}

impl Action {
    /// The one-letter code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Create => "C",
            Self::Read => "R",
            Self::Update => "U",
            Self::Delete => "D",
            Self::Execute => "E",
        }
    }

    /// A word for people: create, read, update, delete, execute.
    pub fn label(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Read => "read",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Execute => "execute",
        }
    }

    /// The action for a one-letter code.
    pub fn from_code(code: &str) -> Option<Action> {
        Some(match code {
            "C" => Self::Create,
            "R" => Self::Read,
            "U" => Self::Update,
            "D" => Self::Delete,
            "E" => Self::Execute,
            _ => return None,
        })
    }
}

/// How it ended (AuditEvent.outcome).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// `0`: success.
    Success,
    /// `4`: minor failure (denied, not found, bad request).
    Minor,
    /// `8`: serious failure (the action was not completed).
    Serious,
    /// `12`: major failure (the server failed).
    Major,
}

impl Outcome {
    /// The code: `0`, `4`, `8` or `12`.
    pub fn code(self) -> &'static str {
        match self {
            Self::Success => "0",
            Self::Minor => "4",
            Self::Serious => "8",
            Self::Major => "12",
        }
    }

    /// A phrase for people.
    pub fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Minor => "minor failure",
            Self::Serious => "serious failure",
            Self::Major => "major failure",
        }
    }

    /// The outcome for a code.
    pub fn from_code(code: &str) -> Option<Outcome> {
        Some(match code {
            "0" => Self::Success,
            "4" => Self::Minor,
            "8" => Self::Serious,
            "12" => Self::Major,
            _ => return None,
        })
    }
}

/// The person behind a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRef {
    /// The account name.
    pub name: String,
    /// The linked `Practitioner/x` or `Patient/x`, if any.
    pub reference: Option<String>,
    /// The account's roles in effect for this request.
    pub roles: Vec<String>,
}

/// One audit entry before rendering: everything the trail must say about one event.
///
/// Its `Debug` output leaves out the raw query and the break-the-glass reason, which may carry
/// PHI.
#[derive(Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// When it happened, milliseconds since the Unix epoch (UTC).
    pub recorded_ms: i64,
    /// What happened.
    pub kind: EventKind,
    /// What was done to the data.
    pub action: Action,
    /// How it ended.
    pub outcome: Outcome,
    /// A short description of a failure; never PHI.
    pub outcome_desc: Option<String>,
    /// Purposes of use, v3-ActReason codes (`TREAT`, `BTG`, `HOPERAT`, ...).
    pub purpose: Vec<String>,
    /// The person, when a person acted.
    pub user: Option<UserRef>,
    /// The OAuth client id, when an app acted.
    pub client: Option<String>,
    /// The requestor's network address.
    pub address: Option<String>,
    /// The requestor's User-Agent header.
    pub user_agent: Option<String>,
    /// The server node that observed the event.
    pub node: String,
    /// Every patient whose data was touched or returned, `Patient/id`.
    pub patients: Vec<String>,
    /// Resources touched, `Type/id` or `Type/id/_history/n`.
    pub resources: Vec<String>,
    /// The raw query of a search.
    pub query: Option<Vec<u8>>,
    /// The request id (X-Request-Id).
    pub request_id: Option<String>,
    /// The break-the-glass reason; implies purpose `BTG`.
    pub break_glass_reason: Option<String>,
    /// Extra non-PHI facts as key/value pairs, rendered in order.
    pub detail: Vec<(String, String)>,
}

impl std::fmt::Debug for AuditRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditRecord")
            .field("recorded_ms", &self.recorded_ms)
            .field("kind", &self.kind)
            .field("action", &self.action)
            .field("outcome", &self.outcome)
            .field("outcome_desc", &self.outcome_desc)
            .field("purpose", &self.purpose)
            .field("user", &self.user)
            .field("client", &self.client)
            .field("address", &self.address)
            .field("user_agent", &self.user_agent)
            .field("node", &self.node)
            .field("patients", &self.patients)
            .field("resources", &self.resources)
            .field("query", &self.query.as_ref().map(|_| "<redacted>"))
            .field("request_id", &self.request_id)
            .field(
                "break_glass_reason",
                &self.break_glass_reason.as_ref().map(|_| "<redacted>"),
            )
            .field("detail", &self.detail)
            .finish()
    }
}

impl AuditRecord {
    /// A record of `kind` at `recorded_ms` observed by `node`, with the kind's default action and
    /// outcome and nothing else filled in.
    pub fn new(recorded_ms: i64, kind: EventKind, node: impl Into<String>) -> AuditRecord {
        AuditRecord {
            recorded_ms,
            action: kind.default_action(),
            outcome: kind.default_outcome(),
            kind,
            outcome_desc: None,
            purpose: Vec::new(),
            user: None,
            client: None,
            address: None,
            user_agent: None,
            node: node.into(),
            patients: Vec::new(),
            resources: Vec::new(),
            query: None,
            request_id: None,
            break_glass_reason: None,
            detail: Vec::new(),
        }
    }
}

fn coding((system, code, display): Code) -> Value {
    match display {
        Some(d) => json!({"system": system, "code": code, "display": d}),
        None => json!({"system": system, "code": code}),
    }
}

fn identifier(system: &str, value: &str) -> Value {
    json!({"system": system, "value": value})
}

/// Which agent is the requestor.
#[derive(PartialEq)]
enum Requestor {
    User,
    Client,
    Node,
}

fn add_requestor_context(agent: &mut Map<String, Value>, record: &AuditRecord) {
    if let Some(address) = &record.address {
        // Type 2 is an IP address, 1 a machine name.
        let kind = if address.parse::<std::net::IpAddr>().is_ok() {
            "2"
        } else {
            "1"
        };
        agent.insert("network".into(), json!({"address": address, "type": kind}));
    }
    if let Some(ua) = &record.user_agent {
        agent.insert(
            "extension".into(),
            json!([{"url": EXT_USER_AGENT, "valueString": ua}]),
        );
    }
}

fn agents(record: &AuditRecord) -> Vec<Value> {
    let requestor = if record.user.is_some() {
        Requestor::User
    } else if record.client.is_some() {
        Requestor::Client
    } else {
        Requestor::Node
    };
    let mut out = Vec::with_capacity(3);
    if let Some(user) = &record.user {
        let mut a = Map::new();
        a.insert(
            "type".into(),
            json!({"coding": [coding((SYSTEM_PARTICIPATION_TYPE, "IRCP", None))]}),
        );
        let mut who = Map::new();
        if let Some(reference) = &user.reference {
            who.insert("reference".into(), Value::from(reference.as_str()));
        }
        who.insert("identifier".into(), identifier(SYSTEM_USER, &user.name));
        a.insert("who".into(), Value::Object(who));
        if !user.roles.is_empty() {
            let roles: Vec<Value> = user
                .roles
                .iter()
                .map(|r| json!({"coding": [{"system": SYSTEM_ROLE, "code": r}]}))
                .collect();
            a.insert("role".into(), Value::Array(roles));
        }
        a.insert("requestor".into(), Value::Bool(true));
        add_requestor_context(&mut a, record);
        out.push(Value::Object(a));
    }
    if let Some(client) = &record.client {
        let mut a = Map::new();
        a.insert(
            "type".into(),
            json!({"coding": [coding((SYSTEM_DICOM, "110150", Some("Application")))]}),
        );
        a.insert(
            "who".into(),
            json!({"identifier": identifier(SYSTEM_CLIENT, client)}),
        );
        let is_requestor = requestor == Requestor::Client;
        a.insert("requestor".into(), Value::Bool(is_requestor));
        if is_requestor {
            add_requestor_context(&mut a, record);
        }
        out.push(Value::Object(a));
    }
    let mut a = Map::new();
    a.insert(
        "type".into(),
        json!({"coding": [coding((SYSTEM_DICOM, "110153", Some("Source Role ID")))]}),
    );
    a.insert(
        "who".into(),
        json!({"identifier": identifier(SYSTEM_NODE, &record.node)}),
    );
    let is_requestor = requestor == Requestor::Node;
    a.insert("requestor".into(), Value::Bool(is_requestor));
    if is_requestor {
        add_requestor_context(&mut a, record);
    }
    out.push(Value::Object(a));
    out
}

fn purposes(record: &AuditRecord) -> Vec<Value> {
    let needs_btg = record.break_glass_reason.is_some() || record.kind == EventKind::BreakGlass;
    let mut codes: Vec<&str> = record.purpose.iter().map(String::as_str).collect();
    if needs_btg && !codes.contains(&"BTG") {
        codes.push("BTG");
    }
    let mut reason_used = false;
    codes
        .into_iter()
        .map(|code| {
            let mut c = Map::new();
            c.insert(
                "coding".into(),
                json!([{"system": SYSTEM_ACT_REASON, "code": code}]),
            );
            if code == "BTG"
                && !reason_used
                && let Some(reason) = &record.break_glass_reason
            {
                c.insert("text".into(), Value::from(reason.as_str()));
                reason_used = true;
            }
            Value::Object(c)
        })
        .collect()
}

fn entities(record: &AuditRecord) -> Vec<Value> {
    let mut out = Vec::with_capacity(record.patients.len() + record.resources.len() + 3);
    for p in &record.patients {
        out.push(json!({
            "what": {"reference": p},
            "role": {"system": SYSTEM_OBJECT_ROLE, "code": "1"}
        }));
    }
    for r in &record.resources {
        out.push(json!({
            "what": {"reference": r},
            "role": {"system": SYSTEM_OBJECT_ROLE, "code": "4"}
        }));
    }
    if let Some(q) = &record.query {
        out.push(json!({
            "type": {"system": SYSTEM_ENTITY_TYPE, "code": "2"},
            "role": {"system": SYSTEM_OBJECT_ROLE, "code": "24"},
            "query": B64.encode(q)
        }));
    }
    if let Some(id) = &record.request_id {
        out.push(json!({
            "what": {"identifier": identifier(SYSTEM_REQUEST_ID, id)},
            "type": {"system": SYSTEM_BALP_ENTITY_TYPE, "code": "XrequestId"}
        }));
    }
    if !record.detail.is_empty() {
        let detail: Vec<Value> = record
            .detail
            .iter()
            .map(|(k, v)| json!({"type": k, "valueString": v}))
            .collect();
        out.push(json!({
            "type": {"system": SYSTEM_CAREVAULT_ENTITY_TYPE, "code": "detail"},
            "detail": detail
        }));
    }
    out
}

/// The record as a FHIR R4 AuditEvent, without `id`.
pub fn to_json(record: &AuditRecord) -> Value {
    let mut e = Map::new();
    e.insert("resourceType".into(), Value::from("AuditEvent"));
    let mut subtypes = Vec::with_capacity(2);
    match &record.kind {
        EventKind::Rest(interaction) => {
            e.insert(
                "type".into(),
                coding((SYSTEM_AUDIT_EVENT_TYPE, "rest", None)),
            );
            subtypes
                .push(json!({"system": SYSTEM_RESTFUL_INTERACTION, "code": interaction.code()}));
            if let RestInteraction::Operation(name) = interaction {
                subtypes.push(json!({"system": SYSTEM_OPERATION, "code": name}));
            }
        }
        kind => {
            let (ty, sub) = kind.dicom();
            e.insert("type".into(), coding(ty));
            if let Some(sub) = sub {
                subtypes.push(coding(sub));
            }
            subtypes.push(json!({"system": SYSTEM_SUBTYPE, "code": kind.code()}));
        }
    }
    e.insert("subtype".into(), Value::Array(subtypes));
    e.insert("action".into(), Value::from(record.action.code()));
    e.insert(
        "recorded".into(),
        Value::from(instant::format_ms(record.recorded_ms)),
    );
    let outcome = if record.kind.is_failure() {
        record.outcome.max(Outcome::Minor)
    } else {
        record.outcome
    };
    e.insert("outcome".into(), Value::from(outcome.code()));
    if let Some(desc) = &record.outcome_desc {
        e.insert("outcomeDesc".into(), Value::from(desc.as_str()));
    }
    let purpose = purposes(record);
    if !purpose.is_empty() {
        e.insert("purposeOfEvent".into(), Value::Array(purpose));
    }
    e.insert("agent".into(), Value::Array(agents(record)));
    e.insert(
        "source".into(),
        json!({"observer": {"identifier": identifier(SYSTEM_NODE, &record.node)}}),
    );
    let entity = entities(record);
    if !entity.is_empty() {
        e.insert("entity".into(), Value::Array(entity));
    }
    Value::Object(e)
}

/// The AuditEvent id of sequence number `seq`: `a-` and twelve digits.
pub fn event_id(seq: u64) -> String {
    format!("a-{seq:012}")
}

/// The sequence number in an AuditEvent id written by [`event_id`].
pub fn seq_of_id(id: &str) -> Option<u64> {
    let digits = id.strip_prefix("a-")?;
    if digits.len() < 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seq: u64 = digits.parse().ok()?;
    (event_id(seq) == id).then_some(seq)
}

/// The event with `resourceType` and then `id` (from `seq`) first, followed by its other
/// elements in order.
pub fn with_id(event: Value, seq: u64) -> Value {
    let Value::Object(map) = event else {
        return event;
    };
    let mut out = Map::with_capacity(map.len() + 1);
    out.insert("resourceType".into(), Value::from("AuditEvent"));
    out.insert("id".into(), Value::from(event_id(seq)));
    for (k, v) in map {
        if k != "resourceType" && k != "id" {
            out.insert(k, v);
        }
    }
    Value::Object(out)
}

fn agent_identifier<'a>(event: &'a Value, system: &str) -> Option<&'a str> {
    event.get("agent")?.as_array()?.iter().find_map(|a| {
        let id = a.get("who")?.get("identifier")?;
        (id.get("system")?.as_str()? == system).then(|| id.get("value")?.as_str())?
    })
}

/// The patients of a stored event: every entity with object-role 1, as `Patient/id`.
pub fn patients_of(event: &Value) -> Vec<String> {
    let Some(entities) = event.get("entity").and_then(Value::as_array) else {
        return Vec::new();
    };
    entities
        .iter()
        .filter(|e| {
            e.get("role").is_some_and(|r| {
                r.get("system").and_then(Value::as_str) == Some(SYSTEM_OBJECT_ROLE)
                    && r.get("code").and_then(Value::as_str) == Some("1")
            })
        })
        .filter_map(|e| e.pointer("/what/reference")?.as_str().map(str::to_owned))
        .collect()
}

/// The user account name of a stored event, if a person acted.
pub fn user_of(event: &Value) -> Option<String> {
    agent_identifier(event, SYSTEM_USER).map(str::to_owned)
}

/// The OAuth client id of a stored event, if an app acted.
pub fn client_of(event: &Value) -> Option<String> {
    agent_identifier(event, SYSTEM_CLIENT).map(str::to_owned)
}

#[cfg(test)]
mod tests;
