//! Human accounts kept as sealed records: roles and links, Argon2id password hashes (rehashed at
//! sign-in when the parameters were raised), TOTP and recovery codes, failure counts and lockout,
//! and sign-in that never says which factor failed.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use carevault_auth::RecordStore;
use carevault_crypto::{Clock, Random};
use carevault_policy::Role;

use crate::password::{self, PasswordError};
use crate::throttle::{self, Failures, MemoryCounts, ThrottleSettings};
use crate::totp::{self, TotpSecret};
use crate::training::{TRAINING_RECORD_KIND, TrainingRecord};

/// The record kind accounts are stored under.
pub const ACCOUNT_RECORD_KIND: &str = "account";

/// How long [`Accounts::active`] trusts a cached answer (admin commands run in other processes).
pub const ACTIVE_CACHE_TTL: Duration = Duration::from_secs(1);

/// Recovery codes issued at a time.
pub const RECOVERY_CODES: usize = 10;

/// Base32 characters per recovery code (120 bits: enough that a salted SHA-256 is a sound store,
/// OWASP ASVS 5.0 6.6).
const RECOVERY_CODE_CHARS: usize = 24;

/// The first administrator's account name.
pub const FIRST_ADMIN: &str = "admin";

/// Argon2id cost for passwords: 19 MiB, 2 passes, 1 lane (OWASP's Password Storage minimum
/// for Argon2id; about 30 ms here). Raising these rehashes each password at its next sign-in.
pub fn default_argon2_params() -> argon2::Params {
    argon2::Params::new(19 * 1024, 2, 1, None).unwrap_or_default()
}

/// Errors of account administration.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A name outside `[a-z0-9._-]{1,64}`.
    #[error("invalid user name {0:?}: use 1 to 64 of a-z, 0-9, '.', '_' and '-'")]
    InvalidName(String),
    /// An account of this name exists.
    #[error("a user named {0:?} already exists; choose another name")]
    Duplicate(String),
    /// No such account.
    #[error("no user named {0:?}; see `carevault user list`")]
    NotFound(String),
    /// No role given.
    #[error("give the user at least one role")]
    NoRoles,
    /// A malformed `Practitioner/ID` or `Patient/ID`.
    #[error("{0:?} is not a reference of the form Practitioner/ID or Patient/ID")]
    InvalidLink(String),
    /// The patient role and the Patient link go together, and alone.
    #[error(
        "the patient role needs --patient Patient/ID and no other role, and --patient needs the patient role"
    )]
    PatientRole,
    /// The password breaks a rule.
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// A TOTP code did not match during enrolment.
    #[error("the code does not match; check the authenticator's clock and enter the current code")]
    InvalidCode,
    /// Enrolment was not started.
    #[error("no TOTP enrolment is in progress for this user")]
    NoPendingEnrolment,
    /// A stored record did not parse.
    #[error("the stored record of user {0:?} is damaged; restore it from a backup")]
    Corrupt(String),
    /// The record store failed.
    #[error("the account records could not be read or written: {0}")]
    Store(String),
    /// Hashing or randomness failed.
    #[error("a cryptographic operation failed: {0}")]
    Crypto(String),
}

/// Why a sign-in did not succeed. `Failed` covers unknown user, wrong password, wrong or replayed
/// code, a locked, throttled or disabled account: deliberately one answer.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// Unknown user, wrong password or code, throttled, locked or disabled.
    #[error("sign-in failed")]
    Failed,
    /// The records could not be read or written; nothing was decided.
    #[error("sign-in is unavailable: {0}")]
    Unavailable(String),
}

/// A link from an account to the FHIR resource that is the person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// `Practitioner/ID`: a clinician.
    Practitioner(String),
    /// `Patient/ID`: a patient using their own record.
    Patient(String),
}

impl Link {
    /// Parses `Practitioner/ID` or `Patient/ID` (ID as FHIR allows: `[A-Za-z0-9.-]{1,64}`).
    pub fn parse(reference: &str) -> Result<Link, IdentityError> {
        let bad = || IdentityError::InvalidLink(reference.to_owned());
        let (rtype, id) = reference.split_once('/').ok_or_else(bad)?;
        let id_ok = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        match rtype {
            "Practitioner" if id_ok => Ok(Link::Practitioner(reference.to_owned())),
            "Patient" if id_ok => Ok(Link::Patient(reference.to_owned())),
            _ => Err(bad()),
        }
    }
}

/// An account as others see it: no secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The user name.
    pub name: String,
    /// Its roles.
    pub roles: Vec<Role>,
    /// `Practitioner/ID` of the person, for clinicians.
    pub practitioner: Option<String>,
    /// `Patient/ID` of the person, for patients.
    pub patient: Option<String>,
    /// Disabled accounts cannot sign in and lose every session and token at once.
    pub disabled: bool,
    /// True once TOTP is enrolled.
    pub mfa_enrolled: bool,
    /// Locked after too many failures, until `carevault user unlock`.
    pub locked: bool,
    /// Consecutive failed sign-ins.
    pub failed_attempts: u32,
    /// Unused recovery codes.
    pub recovery_codes_left: usize,
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
    /// Last password change, seconds since the epoch.
    pub password_changed_at: u64,
    /// Last successful sign-in, seconds since the epoch.
    pub last_sign_in_at: Option<u64>,
    /// Changes whenever credentials, roles or status change; sessions begun under another
    /// epoch are no longer valid.
    pub session_epoch: u64,
}

/// A TOTP secret to hand to the person, shown once.
pub struct TotpEnrolment {
    /// The secret, unpadded base32.
    pub secret: SecretString,
    /// The `otpauth://` URI (for a QR code).
    pub uri: SecretString,
}

impl fmt::Debug for TotpEnrolment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpEnrolment([redacted])")
    }
}

/// Roles stored by their snake_case names.
mod role_names {
    use carevault_policy::Role;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(roles: &[Role], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(roles.iter().map(|r| r.as_str()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Role>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|n| n.parse::<Role>().map_err(serde::de::Error::custom))
            .collect()
    }
}

/// The stored record (sealed by the record store).
#[derive(Clone, Serialize, Deserialize)]
struct AccountRecord {
    name: String,
    #[serde(with = "role_names")]
    roles: Vec<Role>,
    practitioner: Option<String>,
    patient: Option<String>,
    disabled: bool,
    password_hash: String,
    totp_secret: Option<String>,
    pending_totp_secret: Option<String>,
    last_totp_step: Option<u64>,
    recovery_salt: String,
    recovery_hashes: Vec<String>,
    failed_attempts: u32,
    last_failed_ms: u64,
    locked: bool,
    created_at: u64,
    password_changed_at: u64,
    last_sign_in_at: Option<u64>,
    session_epoch: u64,
}

impl AccountRecord {
    fn view(&self) -> Account {
        Account {
            name: self.name.clone(),
            roles: self.roles.clone(),
            practitioner: self.practitioner.clone(),
            patient: self.patient.clone(),
            disabled: self.disabled,
            mfa_enrolled: self.totp_secret.is_some(),
            locked: self.locked,
            failed_attempts: self.failed_attempts,
            recovery_codes_left: self.recovery_hashes.len(),
            created_at: self.created_at,
            password_changed_at: self.password_changed_at,
            last_sign_in_at: self.last_sign_in_at,
            session_epoch: self.session_epoch,
        }
    }
}

/// The accounts over a [`RecordStore`].
pub struct Accounts {
    store: Arc<dyn RecordStore>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Random>,
    argon: argon2::Argon2<'static>,
    params: argon2::Params,
    throttle: ThrottleSettings,
    /// A hash of a random password nobody knows, made on first use: unknown users are verified
    /// against it so they cost the same Argon2id work as real ones.
    dummy_hash: OnceLock<String>,
    active_cache: Mutex<HashMap<String, (Option<Account>, SystemTime)>>,
    counts: Mutex<MemoryCounts>,
    /// Serialises the read-check-write of the second factor and failure counts.
    update_lock: Mutex<()>,
}

impl fmt::Debug for Accounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accounts").finish_non_exhaustive()
    }
}

impl Accounts {
    /// Accounts over `store` with the default Argon2id cost and throttling.
    pub fn new(store: Arc<dyn RecordStore>, clock: Arc<dyn Clock>, rng: Arc<dyn Random>) -> Self {
        Self::with_options(
            store,
            clock,
            rng,
            default_argon2_params(),
            ThrottleSettings::default(),
        )
    }

    /// Accounts with explicit Argon2id parameters (tests use cheaper ones) and throttling.
    pub fn with_options(
        store: Arc<dyn RecordStore>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Random>,
        params: argon2::Params,
        throttle: ThrottleSettings,
    ) -> Self {
        let argon = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params.clone(),
        );
        Self {
            store,
            clock,
            rng,
            argon,
            params,
            throttle,
            dummy_hash: OnceLock::new(),
            active_cache: Mutex::new(HashMap::new()),
            counts: Mutex::new(MemoryCounts::default()),
            update_lock: Mutex::new(()),
        }
    }

    /// The throttling settings in force.
    pub fn throttle_settings(&self) -> &ThrottleSettings {
        &self.throttle
    }

    /// Creates account `name` with `roles`, an optional link and `password` (checked against the
    /// password rules). It has no second factor yet: enrol one with [`Accounts::enrol_totp`] or at
    /// first sign-in.
    pub fn add(
        &self,
        name: &str,
        roles: &[Role],
        link: Option<Link>,
        password: &SecretString,
    ) -> Result<Account, IdentityError> {
        validate_name(name)?;
        let roles = validate_roles(roles, link.as_ref())?;
        password::check(name, password.expose_secret())?;
        let _guard = self.update_lock.lock();
        if self.load(name)?.is_some() {
            return Err(IdentityError::Duplicate(name.to_owned()));
        }
        let now = self.clock.unix_seconds();
        let (practitioner, patient) = match link {
            Some(Link::Practitioner(p)) => (Some(p), None),
            Some(Link::Patient(p)) => (None, Some(p)),
            None => (None, None),
        };
        let record = AccountRecord {
            name: name.to_owned(),
            roles,
            practitioner,
            patient,
            disabled: false,
            password_hash: self.hash_password(password)?,
            totp_secret: None,
            pending_totp_secret: None,
            last_totp_step: None,
            recovery_salt: self.random_hex(16)?,
            recovery_hashes: Vec::new(),
            failed_attempts: 0,
            last_failed_ms: 0,
            locked: false,
            created_at: now,
            password_changed_at: now,
            last_sign_in_at: None,
            session_epoch: 1,
        };
        self.save(&record)?;
        Ok(record.view())
    }

    /// Creates the first administrator (`admin`, roles `security_admin` and `system_admin`, no
    /// second factor: it must enrol TOTP at first sign-in) when there is no account at all.
    /// Returns whether it was created.
    pub fn create_first_admin(&self, password: &SecretString) -> Result<bool, IdentityError> {
        if !self.list()?.is_empty() {
            return Ok(false);
        }
        self.add(
            FIRST_ADMIN,
            &[Role::SecurityAdmin, Role::SystemAdmin],
            None,
            password,
        )?;
        Ok(true)
    }

    /// The account `name`, if it exists.
    pub fn get(&self, name: &str) -> Result<Option<Account>, IdentityError> {
        Ok(self.load(name)?.map(|r| r.view()))
    }

    /// Every account, by name.
    pub fn list(&self) -> Result<Vec<Account>, IdentityError> {
        self.store
            .list(ACCOUNT_RECORD_KIND)
            .map_err(IdentityError::Store)?
            .into_iter()
            .map(|(key, body)| {
                serde_json::from_slice::<AccountRecord>(&body)
                    .map(|r| r.view())
                    .map_err(|_| IdentityError::Corrupt(key))
            })
            .collect()
    }

    /// The account `name` when it exists and is enabled; `None` otherwise. Cached for
    /// [`ACTIVE_CACHE_TTL`], because it runs on every request.
    pub fn active(&self, name: &str) -> Result<Option<Account>, IdentityError> {
        let now = self.clock.now();
        if let Some((account, until)) = self.active_cache.lock().get(name)
            && now < *until
        {
            return Ok(account.clone());
        }
        let account = self.get(name)?.filter(|a| !a.disabled);
        let mut cache = self.active_cache.lock();
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(name.to_owned(), (account.clone(), now + ACTIVE_CACHE_TTL));
        Ok(account)
    }

    /// Disables `name`: it cannot sign in, and its sessions and tokens stop working.
    pub fn disable(&self, name: &str) -> Result<Account, IdentityError> {
        self.modify(name, |r| {
            r.disabled = true;
            r.session_epoch += 1;
            Ok(())
        })
    }

    /// Enables a disabled account.
    pub fn enable(&self, name: &str) -> Result<Account, IdentityError> {
        self.modify(name, |r| {
            r.disabled = false;
            Ok(())
        })
    }

    /// Lifts a lockout and clears the failure count.
    pub fn unlock(&self, name: &str) -> Result<Account, IdentityError> {
        self.modify(name, |r| {
            r.locked = false;
            r.failed_attempts = 0;
            r.last_failed_ms = 0;
            Ok(())
        })
    }

    /// Removes the second factor and recovery codes: the person enrols again at next sign-in.
    pub fn reset_mfa(&self, name: &str) -> Result<Account, IdentityError> {
        self.modify(name, |r| {
            r.totp_secret = None;
            r.pending_totp_secret = None;
            r.last_totp_step = None;
            r.recovery_hashes.clear();
            r.session_epoch += 1;
            Ok(())
        })
    }

    /// Replaces the password (checked against the rules); every session ends.
    pub fn set_password(
        &self,
        name: &str,
        password: &SecretString,
    ) -> Result<Account, IdentityError> {
        password::check(name, password.expose_secret())?;
        let hash = self.hash_password(password)?;
        let now = self.clock.unix_seconds();
        self.modify(name, |r| {
            r.password_hash = hash;
            r.password_changed_at = now;
            r.session_epoch += 1;
            Ok(())
        })
    }

    /// Replaces the roles; sessions end so that nothing runs under the old ones.
    pub fn set_roles(&self, name: &str, roles: &[Role]) -> Result<Account, IdentityError> {
        self.modify(name, |r| {
            let link = match (&r.practitioner, &r.patient) {
                (_, Some(p)) => Some(Link::Patient(p.clone())),
                (Some(p), None) => Some(Link::Practitioner(p.clone())),
                (None, None) => None,
            };
            r.roles = validate_roles(roles, link.as_ref())?;
            r.session_epoch += 1;
            Ok(())
        })
    }

    /// Enrols TOTP at once (the CLI's `--totp-secret-out`): returns the secret to hand over.
    pub fn enrol_totp(&self, name: &str) -> Result<TotpEnrolment, IdentityError> {
        let secret = self.new_totp_secret()?;
        let b32 = secret.to_base32();
        self.modify(name, |r| {
            r.totp_secret = Some(b32.expose_secret().to_owned());
            r.pending_totp_secret = None;
            r.last_totp_step = None;
            Ok(())
        })?;
        Ok(TotpEnrolment {
            uri: totp::otpauth_uri(name, &secret),
            secret: b32,
        })
    }

    /// Starts enrolment at the sign-in page: a pending secret (the same one until confirmed).
    pub fn begin_totp_enrolment(&self, name: &str) -> Result<TotpEnrolment, IdentityError> {
        let fresh = self.new_totp_secret()?.to_base32();
        let mut pending = String::new();
        self.modify(name, |r| {
            if r.pending_totp_secret.is_none() {
                r.pending_totp_secret = Some(fresh.expose_secret().to_owned());
            }
            pending = r.pending_totp_secret.clone().unwrap_or_default();
            Ok(())
        })?;
        let pending = Zeroizing::new(pending);
        let secret = TotpSecret::from_base32(&pending)
            .ok_or_else(|| IdentityError::Corrupt(name.to_owned()))?;
        Ok(TotpEnrolment {
            uri: totp::otpauth_uri(name, &secret),
            secret: secret.to_base32(),
        })
    }

    /// Completes enrolment with a current code from the authenticator; returns fresh recovery
    /// codes (shown once).
    pub fn confirm_totp_enrolment(
        &self,
        name: &str,
        code: &str,
    ) -> Result<Vec<SecretString>, IdentityError> {
        let now = self.clock.unix_seconds();
        let (codes, hashes) = self.new_recovery_set(name)?;
        self.modify(name, |r| {
            let pending = r
                .pending_totp_secret
                .clone()
                .ok_or(IdentityError::NoPendingEnrolment)?;
            let secret = TotpSecret::from_base32(&pending)
                .ok_or_else(|| IdentityError::Corrupt(r.name.clone()))?;
            let step = secret
                .verify(code, now, None)
                .ok_or(IdentityError::InvalidCode)?;
            r.totp_secret = Some(pending);
            r.pending_totp_secret = None;
            r.last_totp_step = Some(step);
            r.recovery_hashes = hashes(&r.recovery_salt);
            Ok(())
        })?;
        Ok(codes)
    }

    /// Issues [`RECOVERY_CODES`] new one-use recovery codes, replacing any left.
    pub fn new_recovery_codes(&self, name: &str) -> Result<Vec<SecretString>, IdentityError> {
        let (codes, hashes) = self.new_recovery_set(name)?;
        self.modify(name, |r| {
            r.recovery_hashes = hashes(&r.recovery_salt);
            Ok(())
        })?;
        Ok(codes)
    }

    /// Signs `name` in with `password` and `otp` (a current TOTP code or an unused recovery code;
    /// ignored for an account that has no second factor yet, which the caller must send to
    /// enrolment). Applies back-off per account and per `source`, and the lockout; every failure
    /// looks the same and costs the same Argon2id work.
    pub fn sign_in(
        &self,
        name: &str,
        password: &SecretString,
        otp: &str,
        source: IpAddr,
    ) -> Result<Account, SignInError> {
        let now_ms = self.now_ms();
        let unavailable = |e: IdentityError| SignInError::Unavailable(e.to_string());
        let record = if validate_name(name).is_ok() {
            self.load(name).map_err(unavailable)?
        } else {
            None
        };
        let throttled = self.address_throttled(source, now_ms)
            || match &record {
                Some(r) => {
                    r.locked
                        || self.account_waiting(
                            Failures {
                                count: r.failed_attempts,
                                last_ms: r.last_failed_ms,
                            },
                            now_ms,
                        )
                }
                None => self.unknown_name_throttled(name, now_ms),
            };
        let dummy = self.dummy_hash().map_err(unavailable)?;
        let hash = match &record {
            Some(r) if !throttled => r.password_hash.as_str(),
            _ => dummy.as_str(),
        };
        let password_ok = self.verify_password(password, hash) && !throttled && record.is_some();
        if throttled {
            // Refused without counting: the person may be waiting out the back-off.
            return Err(SignInError::Failed);
        }
        let Some(record) = record else {
            self.count_failure(source, name, false, now_ms)
                .map_err(unavailable)?;
            return Err(SignInError::Failed);
        };
        let _guard = self.update_lock.lock();
        // Re-read under the lock: the last TOTP step and recovery codes must be current.
        let Some(mut fresh) = self.load(&record.name).map_err(unavailable)? else {
            return Err(SignInError::Failed);
        };
        let second_ok = password_ok && self.check_second_factor(&mut fresh, otp, now_ms / 1000);
        if !second_ok || fresh.disabled || fresh.locked {
            drop(_guard);
            self.count_failure(source, name, true, now_ms)
                .map_err(unavailable)?;
            return Err(SignInError::Failed);
        }
        fresh.failed_attempts = 0;
        fresh.last_failed_ms = 0;
        fresh.last_sign_in_at = Some(now_ms / 1000);
        if self.needs_rehash(&fresh.password_hash) {
            fresh.password_hash = self.hash_password(password).map_err(unavailable)?;
        }
        self.save(&fresh).map_err(unavailable)?;
        Ok(fresh.view())
    }

    /// Records (replacing the same course) a completed training of `name`.
    pub fn record_training(&self, name: &str, record: TrainingRecord) -> Result<(), IdentityError> {
        if self.load(name)?.is_none() {
            return Err(IdentityError::NotFound(name.to_owned()));
        }
        let mut all = self.training(name)?;
        all.retain(|t| t.course != record.course);
        all.push(record);
        all.sort_by(|a, b| a.course.cmp(&b.course));
        let body = serde_json::to_vec(&all).map_err(|e| IdentityError::Store(e.to_string()))?;
        self.store
            .put(TRAINING_RECORD_KIND, name, &body)
            .map_err(IdentityError::Store)
    }

    /// The training records of `name`, by course.
    pub fn training(&self, name: &str) -> Result<Vec<TrainingRecord>, IdentityError> {
        match self
            .store
            .get(TRAINING_RECORD_KIND, name)
            .map_err(IdentityError::Store)?
        {
            Some(body) => {
                serde_json::from_slice(&body).map_err(|_| IdentityError::Corrupt(name.to_owned()))
            }
            None => Ok(Vec::new()),
        }
    }

    /// Every user's training records, by user name.
    pub fn all_training(&self) -> Result<Vec<(String, Vec<TrainingRecord>)>, IdentityError> {
        self.store
            .list(TRAINING_RECORD_KIND)
            .map_err(IdentityError::Store)?
            .into_iter()
            .map(|(key, body)| {
                serde_json::from_slice(&body)
                    .map(|t| (key.clone(), t))
                    .map_err(|_| IdentityError::Corrupt(key))
            })
            .collect()
    }

    // ---- internals ----

    fn check_second_factor(&self, r: &mut AccountRecord, otp: &str, now_s: u64) -> bool {
        let Some(secret) = r.totp_secret.as_deref().and_then(TotpSecret::from_base32) else {
            // No second factor yet: the password alone gets the person to enrolment only.
            return true;
        };
        let otp = otp.trim();
        if let Some(step) = secret.verify(otp, now_s, r.last_totp_step) {
            r.last_totp_step = Some(step);
            return true;
        }
        let normalised: Zeroizing<String> = Zeroizing::new(
            otp.chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .map(|c| c.to_ascii_lowercase())
                .collect(),
        );
        if normalised.len() != RECOVERY_CODE_CHARS {
            return false;
        }
        let candidate = recovery_hash(&r.recovery_salt, &normalised);
        let mut hit = None;
        for (i, h) in r.recovery_hashes.iter().enumerate() {
            if bool::from(h.as_bytes().ct_eq(candidate.as_bytes())) && hit.is_none() {
                hit = Some(i);
            }
        }
        match hit {
            Some(i) => {
                r.recovery_hashes.remove(i);
                true
            }
            None => false,
        }
    }

    fn address_throttled(&self, source: IpAddr, now_ms: u64) -> bool {
        let counts = self.counts.lock();
        counts.addresses.get(&source).is_some_and(|f| {
            let wait = throttle::backoff(
                f.count,
                self.throttle.address_free_failures,
                Duration::from_secs(self.throttle.address_max_delay_seconds),
            );
            waiting(*f, wait, now_ms)
        })
    }

    fn account_waiting(&self, f: Failures, now_ms: u64) -> bool {
        let wait = throttle::backoff(
            f.count,
            self.throttle.account_free_failures,
            Duration::from_secs(self.throttle.account_max_delay_seconds),
        );
        waiting(f, wait, now_ms)
    }

    fn unknown_name_throttled(&self, name: &str, now_ms: u64) -> bool {
        let f = self.counts.lock().unknown_names.get(name).copied();
        f.is_some_and(|f| {
            f.count >= self.throttle.lockout_threshold || self.account_waiting(f, now_ms)
        })
    }

    fn count_failure(
        &self,
        source: IpAddr,
        name: &str,
        known: bool,
        now_ms: u64,
    ) -> Result<(), IdentityError> {
        {
            let mut counts = self.counts.lock();
            if counts.addresses.len() + counts.unknown_names.len() > 100_000 {
                counts.prune(
                    now_ms,
                    Duration::from_secs(self.throttle.address_forget_seconds),
                );
            }
            let forget_ms = self.throttle.address_forget_seconds.saturating_mul(1000);
            let a = counts.addresses.entry(source).or_default();
            if now_ms.saturating_sub(a.last_ms) >= forget_ms {
                a.count = 0;
            }
            a.count = a.count.saturating_add(1);
            a.last_ms = now_ms;
            if !known {
                let n = counts.unknown_names.entry(name.to_owned()).or_default();
                n.count = n.count.saturating_add(1);
                n.last_ms = now_ms;
            }
        }
        if known {
            let threshold = self.throttle.lockout_threshold;
            self.modify(name, |r| {
                r.failed_attempts = r.failed_attempts.saturating_add(1);
                r.last_failed_ms = now_ms;
                if r.failed_attempts >= threshold {
                    r.locked = true;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    fn modify(
        &self,
        name: &str,
        change: impl FnOnce(&mut AccountRecord) -> Result<(), IdentityError>,
    ) -> Result<Account, IdentityError> {
        let mut record = self
            .load(name)?
            .ok_or_else(|| IdentityError::NotFound(name.to_owned()))?;
        change(&mut record)?;
        self.save(&record)?;
        Ok(record.view())
    }

    fn load(&self, name: &str) -> Result<Option<AccountRecord>, IdentityError> {
        match self
            .store
            .get(ACCOUNT_RECORD_KIND, name)
            .map_err(IdentityError::Store)?
        {
            Some(body) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|_| IdentityError::Corrupt(name.to_owned())),
            None => Ok(None),
        }
    }

    fn save(&self, record: &AccountRecord) -> Result<(), IdentityError> {
        let body = Zeroizing::new(
            serde_json::to_vec(record).map_err(|e| IdentityError::Store(e.to_string()))?,
        );
        self.store
            .put(ACCOUNT_RECORD_KIND, &record.name, &body)
            .map_err(IdentityError::Store)?;
        self.active_cache.lock().remove(&record.name);
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        self.clock
            .now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    fn dummy_hash(&self) -> Result<String, IdentityError> {
        if let Some(h) = self.dummy_hash.get() {
            return Ok(h.clone());
        }
        let secret = SecretString::from(self.random_hex(32)?);
        let hash = self.hash_password(&secret)?;
        Ok(self.dummy_hash.get_or_init(|| hash).clone())
    }

    fn hash_password(&self, password: &SecretString) -> Result<String, IdentityError> {
        let mut salt = [0u8; 16];
        self.rng
            .fill(&mut salt)
            .map_err(|e| IdentityError::Crypto(e.to_string()))?;
        let salt =
            SaltString::encode_b64(&salt).map_err(|e| IdentityError::Crypto(e.to_string()))?;
        let norm = password::normalise(password.expose_secret());
        self.argon
            .hash_password(norm.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| IdentityError::Crypto(e.to_string()))
    }

    /// Constant-time (the PHC output comparison is); a damaged hash fails closed.
    fn verify_password(&self, password: &SecretString, hash: &str) -> bool {
        let norm = password::normalise(password.expose_secret());
        match PasswordHash::new(hash) {
            Ok(parsed) => self.argon.verify_password(norm.as_bytes(), &parsed).is_ok(),
            Err(_) => false,
        }
    }

    /// True when `hash` was made with other parameters than those in force now.
    fn needs_rehash(&self, hash: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(hash) else {
            return true;
        };
        if parsed.algorithm.as_str() != "argon2id" {
            return true;
        }
        match argon2::Params::try_from(&parsed) {
            Ok(p) => {
                p.m_cost() != self.params.m_cost()
                    || p.t_cost() != self.params.t_cost()
                    || p.p_cost() != self.params.p_cost()
            }
            Err(_) => true,
        }
    }

    fn new_totp_secret(&self) -> Result<TotpSecret, IdentityError> {
        let mut raw = Zeroizing::new([0u8; totp::SECRET_BYTES]);
        self.rng
            .fill(&mut raw[..])
            .map_err(|e| IdentityError::Crypto(e.to_string()))?;
        Ok(TotpSecret::from_bytes(&raw[..]))
    }

    /// New codes and a function from the account's salt to their hashes.
    #[allow(clippy::type_complexity)]
    fn new_recovery_set(
        &self,
        name: &str,
    ) -> Result<(Vec<SecretString>, impl FnOnce(&str) -> Vec<String>), IdentityError> {
        if self.load(name)?.is_none() {
            return Err(IdentityError::NotFound(name.to_owned()));
        }
        let mut raw_codes = Vec::with_capacity(RECOVERY_CODES);
        for _ in 0..RECOVERY_CODES {
            let mut raw = Zeroizing::new([0u8; 15]);
            self.rng
                .fill(&mut raw[..])
                .map_err(|e| IdentityError::Crypto(e.to_string()))?;
            // 15 bytes = 120 bits = 24 base32 characters.
            raw_codes.push(Zeroizing::new(
                data_encoding::BASE32_NOPAD
                    .encode(&raw[..])
                    .to_ascii_lowercase(),
            ));
        }
        let shown = raw_codes
            .iter()
            .map(|c| {
                let groups: Vec<&str> = (0..4).map(|i| &c[i * 6..i * 6 + 6]).collect();
                SecretString::from(groups.join("-"))
            })
            .collect();
        let hashes = move |salt: &str| raw_codes.iter().map(|c| recovery_hash(salt, c)).collect();
        Ok((shown, hashes))
    }

    fn random_hex(&self, bytes: usize) -> Result<String, IdentityError> {
        let mut raw = Zeroizing::new(vec![0u8; bytes]);
        self.rng
            .fill(&mut raw)
            .map_err(|e| IdentityError::Crypto(e.to_string()))?;
        Ok(data_encoding::HEXLOWER.encode(&raw))
    }
}

fn waiting(f: Failures, wait: Duration, now_ms: u64) -> bool {
    let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
    wait_ms > 0 && now_ms < f.last_ms.saturating_add(wait_ms)
}

/// SHA-256(salt ‖ ":" ‖ normalised code), hex.
fn recovery_hash(salt: &str, normalised_code: &str) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(salt.as_bytes());
    ctx.update(b":");
    ctx.update(normalised_code.as_bytes());
    data_encoding::HEXLOWER.encode(ctx.finish().as_ref())
}

/// Checks a user name against `[a-z0-9._-]{1,64}`.
pub fn validate_name(name: &str) -> Result<(), IdentityError> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(IdentityError::InvalidName(name.to_owned()))
    }
}

/// Checks a role set against the link: at least one role; `patient` exactly when linked to a
/// Patient, and then alone. Returns the roles without repeats, in the built-in order.
pub fn validate_roles(roles: &[Role], link: Option<&Link>) -> Result<Vec<Role>, IdentityError> {
    if roles.is_empty() {
        return Err(IdentityError::NoRoles);
    }
    let out: Vec<Role> = Role::ALL
        .into_iter()
        .filter(|r| roles.contains(r))
        .collect();
    let has_patient_role = out.contains(&Role::Patient);
    let patient_link = matches!(link, Some(Link::Patient(_)));
    if has_patient_role != patient_link || (has_patient_role && out.len() > 1) {
        return Err(IdentityError::PatientRole);
    }
    Ok(out)
}

/// Parses `ROLE[,ROLE...]`; the error names the unknown role and lists the known ones.
pub fn parse_roles(list: &str) -> Result<Vec<Role>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<Role>().map_err(|e| e.to_string()))
        .collect()
}

#[cfg(test)]
impl Accounts {
    /// The dummy hash unknown users are verified against.
    pub(crate) fn dummy_hash_for_tests(&self) -> String {
        self.dummy_hash().unwrap_or_default()
    }
}
