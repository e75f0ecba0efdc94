//! Settings: the config file, `CAREVAULT_<SECTION>_<KEY>` environment overrides, and defaults.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Every setting of a running server. Flags override the environment, which overrides the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerSettings,
    pub tls: TlsSettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
    pub audit: AuditSettings,
    pub siem: SiemSettings,
    pub access: AccessSettings,
    pub identity: carevault_identity::IdentitySettings,
}

/// `[access]`: authorization settings (break-the-glass, training, care-relationship windows).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessSettings {
    /// How long a break-the-glass grant lasts, in minutes.
    pub break_glass_minutes: u64,
    /// Courses every user must have a current training record for before reaching any data.
    pub required_training_courses: Vec<String>,
    /// Care relationship through an Encounter: days before its start (rule 1).
    pub care_encounter_days_before: u32,
    /// Care relationship through an Encounter: days after its end (rule 1).
    pub care_encounter_days_after: u32,
    /// Care relationship through an Appointment: days before its start (rule 2).
    pub care_appointment_days_before: u32,
    /// Care relationship through an Appointment: days after it (rule 2).
    pub care_appointment_days_after: u32,
    /// Billing relationship: days after an Encounter's end (rule 6).
    pub care_billing_days: u32,
}

impl Default for AccessSettings {
    fn default() -> Self {
        Self {
            break_glass_minutes: 60,
            required_training_courses: Vec::new(),
            care_encounter_days_before: 7,
            care_encounter_days_after: 30,
            care_appointment_days_before: 7,
            care_appointment_days_after: 30,
            care_billing_days: 365,
        }
    }
}

impl AuditSettings {
    /// What the store is opened with.
    pub fn store_options(&self) -> carevault_store::StoreOptions {
        carevault_store::StoreOptions {
            journal_max_bytes: self.journal_max_mib << 20,
        }
    }
}

impl AccessSettings {
    /// The care-relationship windows (PRODUCT.md 2.3).
    pub fn care_windows(&self) -> carevault_store::care::CareWindows {
        let ms = |days: u32| i64::from(days) * carevault_store::care::DAY_MS;
        carevault_store::care::CareWindows {
            encounter_before_ms: ms(self.care_encounter_days_before),
            encounter_after_ms: ms(self.care_encounter_days_after),
            appointment_before_ms: ms(self.care_appointment_days_before),
            appointment_after_ms: ms(self.care_appointment_days_after),
            billing_after_ms: ms(self.care_billing_days),
        }
    }
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// This server's name in audit entries and checkpoints; empty means the host name.
    pub node: String,
    /// How often a signed checkpoint is written when the log has grown.
    pub checkpoint_interval_seconds: u64,
    /// The most disk, in MiB, the read journal may take: it holds reads' entries until they
    /// join the log, and reads are refused when it is full.
    pub journal_max_mib: u64,
}

/// `[siem]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SiemSettings {
    /// `host:port` of an RFC 5425 syslog-over-TLS collector; empty means none.
    pub syslog_address: String,
    /// The collector's TLS name; empty means the host part of `syslog_address`.
    pub syslog_server_name: String,
    /// PEM file of the CA that signs the collector's certificate.
    pub syslog_ca_file: PathBuf,
    /// Directory for AuditEvent NDJSON files; empty means none.
    pub ndjson_dir: PathBuf,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            node: String::new(),
            checkpoint_interval_seconds: 60,
            journal_max_mib: 1024,
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// Public base URL of the FHIR API; empty means `https://<listen>/fhir`.
    pub base_url: String,
    pub max_body_bytes: usize,
    pub request_timeout_seconds: u64,
    pub shutdown_grace_seconds: u64,
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM certificate chain; relative paths are inside the data directory.
    pub cert: PathBuf,
    /// PEM private key; relative paths are inside the data directory.
    pub key: PathBuf,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    pub token_lifetime_seconds: u64,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            base_url: String::new(),
            max_body_bytes: 16 * 1024 * 1024,
            request_timeout_seconds: 60,
            shutdown_grace_seconds: 30,
        }
    }
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert: "tls/cert.pem".into(),
            key: "tls/key.pem".into(),
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            token_lifetime_seconds: 600,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: "text".into(),
        }
    }
}

/// The config file written at first start: every setting, commented, at its default.
pub const DEFAULT_CONFIG_TOML: &str = r#"# carevault settings. Every setting is shown at its default, commented out.
# Environment variables CAREVAULT_<SECTION>_<KEY> override this file; command-line flags override both.

[server]
# Address to listen on (HTTPS only; there is no plaintext listener).
# listen = "127.0.0.1:8443"
# Public base URL of the FHIR API as clients see it; empty means https://<listen>/fhir.
# base_url = ""
# Largest request body accepted, in bytes; larger bodies get 413.
# max_body_bytes = 16777216
# A request that takes longer than this is cancelled with 503.
# request_timeout_seconds = 60
# On SIGTERM/SIGINT, in-flight requests get this long to finish.
# shutdown_grace_seconds = 30

[tls]
# Certificate chain and private key (PEM); relative paths are inside the data directory.
# cert = "tls/cert.pem"
# key = "tls/key.pem"

[auth]
# Lifetime of access tokens in seconds (at most 900).
# token_lifetime_seconds = 600

[log]
# "text" for people, "json" for machines.
# format = "text"

[audit]
# This server's name in audit entries and checkpoints; empty means the host name.
# node = ""
# A signed checkpoint of the audit log is written this often when the log has grown, and at shutdown.
# checkpoint_interval_seconds = 60
# The most disk, in MiB, the read journal may take. It holds the audit entries of reads until they
# join the log (every second); it grows past its first 16 MiB only while the log falls behind
# (and is cut back when the server next starts with everything folded), and reads are refused
# with 503 when it is full.
# journal_max_mib = 1024

[siem]
# Stream every audit entry as RFC 5424 syslog over TLS (RFC 5425) to this collector ("host:port").
# syslog_address = ""
# The collector's certificate name; empty means the host part of syslog_address.
# syslog_server_name = ""
# PEM file of the CA that signs the collector's certificate (required with syslog_address).
# syslog_ca_file = ""
# Also write every audit entry as FHIR AuditEvent NDJSON files into this directory. The files hold
# audit details in the clear for the SIEM to read: put the directory on protected storage.
# ndjson_dir = ""

[access]
# How long a break-the-glass grant (X-Break-Glass) lets its user reach that patient's data, in minutes.
# break_glass_minutes = 60
# Training courses every user needs a current record of (carevault training record) to reach any data.
# required_training_courses = []
# Care relationships (PRODUCT.md 2.3), applied when access is decided, so a change applies at once:
# an Encounter participant has one from this many days before the encounter's start ...
# care_encounter_days_before = 7
# ... until this many days after its end (an encounter in progress counts until it ends);
# care_encounter_days_after = 30
# an Appointment participant from this many days before its start ...
# care_appointment_days_before = 7
# ... until this many days after it;
# care_appointment_days_after = 30
# billing users reach patients who had an Encounter ending at most this many days ago.
# care_billing_days = 365

[identity]
# Consecutive failed sign-ins of one account before it is locked until `carevault user unlock`.
# lockout_threshold = 10
# Failed sign-ins of one account allowed without a wait; after that the wait doubles each time (1 s, 2 s, 4 s, ...).
# account_free_failures = 3
# Longest wait between sign-in attempts of one account, in seconds.
# account_max_delay_seconds = 300
# Failed sign-ins from one network address allowed without a wait; after that the wait doubles each time.
# address_free_failures = 10
# Longest wait between sign-in attempts from one address, in seconds.
# address_max_delay_seconds = 900
# An address's failures are forgotten this long after its last one, in seconds.
# address_forget_seconds = 3600
# A browser session unused this long ends (seconds).
# session_idle_seconds = 900
# A browser session ends this long after sign-in, however it is used (seconds).
# session_lifetime_seconds = 43200
"#;

/// Environment variables under the `CAREVAULT_` prefix that are not settings.
const RESERVED_ENV: &[&str] = &[
    "MASTER_KEY_FILE",
    "PASSPHRASE",
    "INSECURE_PLAINTEXT_BENCH",
    "INSECURE_NO_READ_AUDIT_BENCH",
    "TEST_ROTATE_BATCH_DELAY_MS",
];

/// A setting that could not be read; the message names it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid setting in {origin}: {message}")]
    Invalid { origin: String, message: String },
}

impl Config {
    /// Loads `path` (absent is fine: defaults), then applies `CAREVAULT_*` variables from `env`.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match std::fs::read_to_string(path) {
            Ok(text) => text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Invalid {
                    origin: path.display().to_string(),
                    message: e.message().to_string(),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("CAREVAULT_") else {
                continue;
            };
            if RESERVED_ENV.contains(&rest) {
                continue;
            }
            let Some((section, key)) = rest.split_once('_') else {
                return Err(invalid_env(&name, "expected CAREVAULT_<SECTION>_<KEY>"));
            };
            let section = section.to_ascii_lowercase();
            if ![
                "server", "tls", "auth", "log", "audit", "siem", "access", "identity",
            ]
            .contains(&section.as_str())
            {
                return Err(invalid_env(
                    &name,
                    &format!("there is no settings section [{section}]"),
                ));
            }
            let parsed = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(value));
            let entry = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = entry {
                t.insert(key.to_ascii_lowercase(), parsed);
            }
        }
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    origin: format!("{} or CAREVAULT_* environment variables", path.display()),
                    message: e.message().to_string(),
                })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |message: &str| {
            Err(ConfigError::Invalid {
                origin: "settings".into(),
                message: message.into(),
            })
        };
        if self.auth.token_lifetime_seconds == 0 || self.auth.token_lifetime_seconds > 900 {
            return bad("auth.token_lifetime_seconds must be between 1 and 900");
        }
        if !["text", "json"].contains(&self.log.format.as_str()) {
            return bad("log.format must be \"text\" or \"json\"");
        }
        if self.server.max_body_bytes < 1024 {
            return bad("server.max_body_bytes must be at least 1024");
        }
        if !(1..=1440).contains(&self.access.break_glass_minutes) {
            return bad("access.break_glass_minutes must be between 1 and 1440");
        }
        let a = &self.access;
        if [
            a.care_encounter_days_before,
            a.care_encounter_days_after,
            a.care_appointment_days_before,
            a.care_appointment_days_after,
            a.care_billing_days,
        ]
        .iter()
        .any(|d| *d > 3650)
        {
            return bad("the access.care_* windows must be at most 3650 days");
        }
        if let Some(problem) = self.identity.problem() {
            return bad(problem);
        }
        if !(1..=86_400).contains(&self.audit.checkpoint_interval_seconds) {
            return bad("audit.checkpoint_interval_seconds must be between 1 and 86400");
        }
        if !(1..=65_536).contains(&self.audit.journal_max_mib) {
            return bad("audit.journal_max_mib must be between 1 and 65536");
        }
        if !self.siem.syslog_address.is_empty() && self.siem.syslog_ca_file.as_os_str().is_empty() {
            return bad(
                "siem.syslog_ca_file must name the collector's CA when siem.syslog_address is set",
            );
        }
        Ok(())
    }
}

fn invalid_env(name: &str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        origin: format!("environment variable {name}"),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_file_parses_to_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, DEFAULT_CONFIG_TOML).unwrap();
        let c = Config::load(&p, Vec::new()).unwrap();
        assert_eq!(c.server.listen.port(), 8443);
        assert_eq!(c.auth.token_lifetime_seconds, 600);
    }

    #[test]
    fn unknown_setting_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[server]\nlisten_on = \"x\"\n").unwrap();
        let e = Config::load(&p, Vec::new()).unwrap_err().to_string();
        assert!(e.contains("listen_on"), "{e}");
    }

    #[test]
    fn environment_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[server]\nshutdown_grace_seconds = 5\n").unwrap();
        assert_eq!(
            Config::load(&p, Vec::new())
                .unwrap()
                .server
                .shutdown_grace_seconds,
            5
        );
        let env = vec![(
            "CAREVAULT_SERVER_SHUTDOWN_GRACE_SECONDS".to_string(),
            "7".to_string(),
        )];
        assert_eq!(
            Config::load(&p, env).unwrap().server.shutdown_grace_seconds,
            7
        );
        let env = vec![("CAREVAULT_NOPE_X".to_string(), "7".to_string())];
        assert!(
            Config::load(&p, env)
                .unwrap_err()
                .to_string()
                .contains("CAREVAULT_NOPE_X")
        );
    }

    #[test]
    fn token_lifetime_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[auth]\ntoken_lifetime_seconds = 3600\n").unwrap();
        assert!(Config::load(&p, Vec::new()).is_err());
    }
}
