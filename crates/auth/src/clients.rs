//! Registered OAuth 2 clients: records, secrets hashed with Argon2id, and client authentication
//! (`client_secret_basic`, RFC 6749 section 2.3.1) that gives nothing away about which clients exist.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use carevault_crypto::{Clock, Random};

use crate::records::RecordStore;
use crate::scope::{Context, Scope, ScopeError};

/// The record kind clients are stored under.
pub const CLIENT_RECORD_KIND: &str = "oauth-client";

/// How long [`Clients::is_enabled`] trusts a cached answer.
pub const ENABLED_CACHE_TTL: Duration = Duration::from_secs(5);

/// Errors about clients and client authentication.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown client, disabled client or wrong secret: deliberately indistinguishable.
    #[error("client authentication failed")]
    InvalidClient,
    /// The Authorization header is not HTTP Basic with a client id and secret.
    #[error("the Authorization header must be HTTP Basic with the client id and secret")]
    MalformedCredentials,
    /// A client name outside `[a-z0-9._-]{1,64}`.
    #[error("invalid client name {0:?}: use 1 to 64 of a-z, 0-9, '.', '_' and '-'")]
    InvalidName(String),
    /// A client with this id exists already.
    #[error("a client named {0:?} already exists; choose another name or rotate its secret")]
    Duplicate(String),
    /// No such client (admin commands only; authentication never says this).
    #[error("no client named {0:?}; see `carevault client list`")]
    NotFound(String),
    /// A scope was malformed.
    #[error(transparent)]
    Scope(#[from] ScopeError),
    /// A requested scope is not among the client's.
    #[error("scope {0:?} is not granted to this client")]
    ScopeNotAllowed(String),
    /// A redirect URI that is not https (or http on a loopback host), or not absolute.
    #[error("invalid redirect URI: {0}")]
    RedirectUri(String),
    /// A JWK set that is not usable for `private_key_jwt`.
    #[error("invalid JWK set: {0}")]
    Jwks(String),
    /// The client has no secret to rotate (public apps, Backend Services clients).
    #[error("client {0:?} has no secret (it is public or uses a key set)")]
    NoSecret(String),
    /// A stored client record did not parse.
    #[error("the stored record of client {0:?} is damaged; restore it from a backup")]
    Corrupt(String),
    /// The record store failed.
    #[error("the client records could not be read or written: {0}")]
    Store(String),
    /// Hashing or randomness failed.
    #[error("a cryptographic operation failed: {0}")]
    Crypto(String),
}

/// What sort of client this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientKind {
    /// A backend system using `client_credentials` with a secret; `system/` scopes only.
    System,
    /// A SMART Backend Services client: `client_credentials` with `private_key_jwt` signed by a
    /// key of its registered JWK set; `system/` scopes only.
    Backend,
    /// A SMART app with a secret (`client_secret_basic`) and redirect URIs.
    ConfidentialApp,
    /// A SMART app without a secret (PKCE alone), e.g. a patient's phone app.
    PublicApp,
}

impl ClientKind {
    /// Whether this kind signs users in through `/oauth2/authorize`.
    pub fn is_app(self) -> bool {
        matches!(self, Self::ConfidentialApp | Self::PublicApp)
    }

    /// Whether this kind has a secret.
    pub fn has_secret(self) -> bool {
        matches!(self, Self::System | Self::ConfidentialApp)
    }

    /// The kind's name in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Backend => "backend",
            Self::ConfidentialApp => "confidential-app",
            Self::PublicApp => "public-app",
        }
    }
}

/// A registered OAuth 2 client, as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// The client id (equal to its validated name).
    pub client_id: String,
    /// The name it was registered with.
    pub name: String,
    /// The scopes it may be granted.
    pub scopes: Vec<String>,
    /// Argon2id PHC string of its secret; empty for clients without one.
    #[serde(default)]
    pub secret_hash: String,
    /// What sort of client.
    pub kind: ClientKind,
    /// Disabled clients cannot authenticate and their tokens stop working.
    pub disabled: bool,
    /// Registration time, seconds since the Unix epoch.
    pub created_at: u64,
    /// Last secret rotation, seconds since the Unix epoch.
    #[serde(default)]
    pub secret_rotated_at: Option<u64>,
    /// Redirect URIs of a SMART app, matched exactly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redirect_uris: Vec<String>,
    /// The public JWK set of a Backend Services client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
}

impl fmt::Debug for ClientRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRecord")
            .field("client_id", &self.client_id)
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("secret_hash", &"[redacted]")
            .field("kind", &self.kind)
            .field("disabled", &self.disabled)
            .field("created_at", &self.created_at)
            .field("redirect_uris", &self.redirect_uris)
            .finish_non_exhaustive()
    }
}

/// The registry of clients over a [`RecordStore`].
///
/// Reads go to the store every time (admin commands in another process change it), except
/// [`Clients::is_enabled`], which caches for [`ENABLED_CACHE_TTL`] because it runs on every request.
pub struct Clients {
    store: Arc<dyn RecordStore>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Random>,
    argon: argon2::Argon2<'static>,
    /// A hash of a random secret nobody knows: unknown clients are verified against it so they
    /// cost the same time as known ones.
    dummy_hash: String,
    enabled_cache: Mutex<HashMap<String, (bool, std::time::SystemTime)>>,
}

impl fmt::Debug for Clients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clients").finish_non_exhaustive()
    }
}

impl Clients {
    /// A registry over `store` with Argon2id's default cost (19 MiB, 2 passes, 1 lane).
    pub fn new(
        store: Arc<dyn RecordStore>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Random>,
    ) -> Result<Self, AuthError> {
        Self::with_params(store, clock, rng, argon2::Params::default())
    }

    /// A registry with explicit Argon2id parameters (tests use cheaper ones).
    pub fn with_params(
        store: Arc<dyn RecordStore>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Random>,
        params: argon2::Params,
    ) -> Result<Self, AuthError> {
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut this = Self {
            store,
            clock,
            rng,
            argon,
            dummy_hash: String::new(),
            enabled_cache: Mutex::new(HashMap::new()),
        };
        let dummy = this.new_secret()?;
        this.dummy_hash = this.hash(&dummy)?;
        Ok(this)
    }

    /// Registers a system client named `name` with the space-separated `scopes`; returns the record
    /// and its secret, which is shown once and never stored.
    pub fn add(&self, name: &str, scopes: &str) -> Result<(ClientRecord, SecretString), AuthError> {
        validate_name(name)?;
        let scopes = validate_scopes(scopes, ClientKind::System)?;
        if self.get(name)?.is_some() {
            return Err(AuthError::Duplicate(name.to_owned()));
        }
        let secret = self.new_secret()?;
        let record = ClientRecord {
            client_id: name.to_owned(),
            name: name.to_owned(),
            scopes,
            secret_hash: self.hash(&secret)?,
            kind: ClientKind::System,
            disabled: false,
            created_at: self.clock.unix_seconds(),
            secret_rotated_at: None,
            redirect_uris: Vec::new(),
            jwks: None,
        };
        self.save(&record)?;
        Ok((record, secret))
    }

    /// Registers a SMART app with `redirect_uris` (each https, or http on a loopback host);
    /// a confidential one gets a secret, shown once, a public one none.
    pub fn add_app(
        &self,
        name: &str,
        scopes: &str,
        redirect_uris: &[String],
        public: bool,
    ) -> Result<(ClientRecord, Option<SecretString>), AuthError> {
        validate_name(name)?;
        let kind = if public {
            ClientKind::PublicApp
        } else {
            ClientKind::ConfidentialApp
        };
        let scopes = validate_scopes(scopes, kind)?;
        if redirect_uris.is_empty() {
            return Err(AuthError::RedirectUri(
                "a SMART app needs at least one redirect URI".into(),
            ));
        }
        let mut uris: Vec<String> = Vec::new();
        for u in redirect_uris {
            validate_redirect_uri(u)?;
            if !uris.contains(u) {
                uris.push(u.clone());
            }
        }
        if self.get(name)?.is_some() {
            return Err(AuthError::Duplicate(name.to_owned()));
        }
        let secret = if public {
            None
        } else {
            Some(self.new_secret()?)
        };
        let record = ClientRecord {
            client_id: name.to_owned(),
            name: name.to_owned(),
            scopes,
            secret_hash: match &secret {
                Some(s) => self.hash(s)?,
                None => String::new(),
            },
            kind,
            disabled: false,
            created_at: self.clock.unix_seconds(),
            secret_rotated_at: None,
            redirect_uris: uris,
            jwks: None,
        };
        self.save(&record)?;
        Ok((record, secret))
    }

    /// Registers a SMART Backend Services client that authenticates with `private_key_jwt`
    /// signed by a key of `jwks` (RS384 or ES384 public keys; private parts are refused).
    pub fn add_backend(
        &self,
        name: &str,
        scopes: &str,
        jwks: &serde_json::Value,
    ) -> Result<ClientRecord, AuthError> {
        validate_name(name)?;
        let scopes = validate_scopes(scopes, ClientKind::Backend)?;
        crate::assertion::validate_jwks(jwks)?;
        if self.get(name)?.is_some() {
            return Err(AuthError::Duplicate(name.to_owned()));
        }
        let record = ClientRecord {
            client_id: name.to_owned(),
            name: name.to_owned(),
            scopes,
            secret_hash: String::new(),
            kind: ClientKind::Backend,
            disabled: false,
            created_at: self.clock.unix_seconds(),
            secret_rotated_at: None,
            redirect_uris: Vec::new(),
            jwks: Some(jwks.clone()),
        };
        self.save(&record)?;
        Ok(record)
    }

    /// A public app by id for the authorization endpoint and for token requests that carry
    /// `client_id` without credentials: only enabled public apps qualify.
    pub fn public_client(&self, client_id: &str) -> Result<ClientRecord, AuthError> {
        match self.get(client_id)? {
            Some(r) if r.kind == ClientKind::PublicApp && !r.disabled => Ok(r),
            _ => Err(AuthError::InvalidClient),
        }
    }

    /// The client `client_id`, if registered.
    pub fn get(&self, client_id: &str) -> Result<Option<ClientRecord>, AuthError> {
        match self
            .store
            .get(CLIENT_RECORD_KIND, client_id)
            .map_err(AuthError::Store)?
        {
            Some(body) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|_| AuthError::Corrupt(client_id.to_owned())),
            None => Ok(None),
        }
    }

    /// Every registered client, by id.
    pub fn list(&self) -> Result<Vec<ClientRecord>, AuthError> {
        self.store
            .list(CLIENT_RECORD_KIND)
            .map_err(AuthError::Store)?
            .into_iter()
            .map(|(key, body)| serde_json::from_slice(&body).map_err(|_| AuthError::Corrupt(key)))
            .collect()
    }

    /// Disables `client_id`: it can no longer authenticate, and its tokens are refused.
    pub fn disable(&self, client_id: &str) -> Result<ClientRecord, AuthError> {
        self.set_disabled(client_id, true)
    }

    /// Enables a disabled client again.
    pub fn enable(&self, client_id: &str) -> Result<ClientRecord, AuthError> {
        self.set_disabled(client_id, false)
    }

    /// Replaces the secret of `client_id`; the old one stops working at once.
    pub fn rotate_secret(&self, client_id: &str) -> Result<SecretString, AuthError> {
        let mut record = self
            .get(client_id)?
            .ok_or_else(|| AuthError::NotFound(client_id.to_owned()))?;
        if !record.kind.has_secret() {
            return Err(AuthError::NoSecret(client_id.to_owned()));
        }
        let secret = self.new_secret()?;
        record.secret_hash = self.hash(&secret)?;
        record.secret_rotated_at = Some(self.clock.unix_seconds());
        self.save(&record)?;
        Ok(secret)
    }

    /// Authenticates a token request's `Authorization` header value (`Basic base64(id:secret)`,
    /// id and secret form-urlencoded as RFC 6749 2.3.1 requires).
    pub fn authenticate_basic(&self, authorization: &str) -> Result<ClientRecord, AuthError> {
        let (id, secret) = parse_basic(authorization)?;
        self.authenticate(&id, &secret)
    }

    /// Authenticates `client_id` with `secret`. Unknown client, disabled client and wrong secret
    /// give the same error after the same Argon2id work.
    pub fn authenticate(
        &self,
        client_id: &str,
        secret: &SecretString,
    ) -> Result<ClientRecord, AuthError> {
        let record = self.get(client_id)?.filter(|r| r.kind.has_secret());
        let hash = record
            .as_ref()
            .map_or(self.dummy_hash.as_str(), |r| r.secret_hash.as_str());
        let secret_ok = self.verify(secret, hash);
        match record {
            Some(r) if secret_ok && !r.disabled => Ok(r),
            _ => Err(AuthError::InvalidClient),
        }
    }

    /// Whether `client_id` exists and is enabled; cached for [`ENABLED_CACHE_TTL`].
    pub fn is_enabled(&self, client_id: &str) -> Result<bool, AuthError> {
        let now = self.clock.now();
        if let Some((enabled, until)) = self.enabled_cache.lock().get(client_id)
            && now < *until
        {
            return Ok(*enabled);
        }
        let enabled = self.get(client_id)?.is_some_and(|r| !r.disabled);
        let mut cache = self.enabled_cache.lock();
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(client_id.to_owned(), (enabled, now + ENABLED_CACHE_TTL));
        Ok(enabled)
    }

    /// The scopes to grant `client` for a token request's optional `scope` parameter: all of the
    /// client's scopes when absent or empty, else the requested ones, each of which must be
    /// covered by one of the client's.
    pub fn grant_scopes(
        &self,
        client: &ClientRecord,
        requested: Option<&str>,
    ) -> Result<Vec<String>, AuthError> {
        let requested = requested.map(str::trim).filter(|s| !s.is_empty());
        let Some(requested) = requested else {
            return Ok(client.scopes.clone());
        };
        let held: Vec<Scope> = client
            .scopes
            .iter()
            .filter_map(|s| Scope::parse(s).ok())
            .collect();
        let mut granted = Vec::new();
        for want in Scope::parse_list(requested)? {
            if !held.iter().any(|h| h.covers(&want)) {
                return Err(AuthError::ScopeNotAllowed(want.as_str().to_owned()));
            }
            if !granted.iter().any(|g| g == want.as_str()) {
                granted.push(want.as_str().to_owned());
            }
        }
        Ok(granted)
    }

    fn set_disabled(&self, client_id: &str, disabled: bool) -> Result<ClientRecord, AuthError> {
        let mut record = self
            .get(client_id)?
            .ok_or_else(|| AuthError::NotFound(client_id.to_owned()))?;
        record.disabled = disabled;
        self.save(&record)?;
        self.enabled_cache.lock().remove(client_id);
        Ok(record)
    }

    fn save(&self, record: &ClientRecord) -> Result<(), AuthError> {
        let body = serde_json::to_vec(record).map_err(|e| AuthError::Store(e.to_string()))?;
        self.store
            .put(CLIENT_RECORD_KIND, &record.client_id, &body)
            .map_err(AuthError::Store)
    }

    /// 32 random bytes, base64url without padding (43 characters).
    fn new_secret(&self) -> Result<SecretString, AuthError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        self.rng
            .fill(&mut raw[..])
            .map_err(|e| AuthError::Crypto(e.to_string()))?;
        Ok(SecretString::from(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..]),
        ))
    }

    fn hash(&self, secret: &SecretString) -> Result<String, AuthError> {
        let mut salt = [0u8; 16];
        self.rng
            .fill(&mut salt)
            .map_err(|e| AuthError::Crypto(e.to_string()))?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Crypto(e.to_string()))?;
        self.argon
            .hash_password(secret.expose_secret().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Crypto(e.to_string()))
    }

    /// Verifies in constant time (the PHC output comparison is constant-time); a damaged hash fails closed.
    fn verify(&self, secret: &SecretString, hash: &str) -> bool {
        match PasswordHash::new(hash) {
            Ok(parsed) => self
                .argon
                .verify_password(secret.expose_secret().as_bytes(), &parsed)
                .is_ok(),
            Err(_) => false,
        }
    }
}

/// Checks a client name against `[a-z0-9._-]{1,64}`.
pub fn validate_name(name: &str) -> Result<(), AuthError> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(AuthError::InvalidName(name.to_owned()))
    }
}

/// Parses and checks a space-separated scope list for a client of `kind`; returns it normalised.
///
/// System and Backend Services clients hold `system/` scopes only; SMART apps hold `patient/`
/// and `user/` scopes and the launch and identity scopes of [`crate::scope::SPECIAL_SCOPES`].
pub fn validate_scopes(scopes: &str, kind: ClientKind) -> Result<Vec<String>, AuthError> {
    let mut out: Vec<String> = Vec::new();
    let mut resource_scopes = String::new();
    for word in scopes.split_ascii_whitespace() {
        if crate::scope::is_special(word) {
            if !kind.is_app() {
                return Err(AuthError::Scope(ScopeError {
                    scope: word.to_owned(),
                    reason: "launch and identity scopes belong to SMART apps (--redirect-uri)",
                }));
            }
            if !out.iter().any(|o| o == word) {
                out.push(word.to_owned());
            }
        } else {
            resource_scopes.push_str(word);
            resource_scopes.push(' ');
        }
    }
    if out.is_empty() || !resource_scopes.trim().is_empty() {
        for s in Scope::parse_list(&resource_scopes)? {
            let ok = if kind.is_app() {
                s.context != Context::System
            } else {
                s.context == Context::System
            };
            if !ok {
                return Err(AuthError::Scope(ScopeError {
                    scope: s.as_str().to_owned(),
                    reason: if kind.is_app() {
                        "a SMART app holds patient/ and user/ scopes, not system/"
                    } else {
                        "a system client may only hold system/ scopes"
                    },
                }));
            }
            if !out.iter().any(|o| o == s.as_str()) {
                out.push(s.as_str().to_owned());
            }
        }
    }
    Ok(out)
}

/// Checks a redirect URI: absolute `https://host...`, or `http://` on a loopback host
/// (127.0.0.1, [::1], localhost) for native apps (RFC 8252); no fragment, no spaces or controls.
pub fn validate_redirect_uri(uri: &str) -> Result<(), AuthError> {
    let bad = |why: &str| Err(AuthError::RedirectUri(format!("{uri:?}: {why}")));
    if uri.len() > 2000 || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("too long, or contains spaces or control characters");
    }
    if uri.contains('#') {
        return bad("a redirect URI may not have a fragment");
    }
    let (scheme, rest) = match uri.split_once("://") {
        Some(p) => p,
        None => return bad("it must be an absolute https URI"),
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.contains('@') {
        return bad("user information is not allowed");
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    if host.is_empty() {
        return bad("it has no host");
    }
    match scheme {
        "https" => Ok(()),
        "http" if matches!(host, "127.0.0.1" | "::1" | "localhost") => Ok(()),
        "http" => bad("plain http is allowed only on a loopback host"),
        _ => bad("it must be https (or http on a loopback host)"),
    }
}

/// Splits `Basic base64(urlencode(id) ":" urlencode(secret))` into id and secret.
fn parse_basic(header: &str) -> Result<(String, SecretString), AuthError> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(' ')
        .ok_or(AuthError::MalformedCredentials)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(AuthError::MalformedCredentials);
    }
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .map_err(|_| AuthError::MalformedCredentials)?,
    );
    let colon = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or(AuthError::MalformedCredentials)?;
    let id = form_decode(&decoded[..colon]).ok_or(AuthError::MalformedCredentials)?;
    let secret = form_decode(&decoded[colon + 1..]).ok_or(AuthError::MalformedCredentials)?;
    if id.is_empty() || secret.is_empty() {
        return Err(AuthError::MalformedCredentials);
    }
    Ok((id.to_string(), SecretString::from(secret.to_string())))
}

/// `application/x-www-form-urlencoded` decoding of one value: `+` is a space, `%XX` a byte.
fn form_decode(input: &[u8]) -> Option<Zeroizing<String>> {
    let mut out = Zeroizing::new(Vec::with_capacity(input.len()));
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = input.get(i + 1..i + 3)?;
                let hi = (hex[0] as char).to_digit(16)?;
                let lo = (hex[1] as char).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    std::str::from_utf8(&out)
        .ok()
        .map(|s| Zeroizing::new(s.to_owned()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::records::MemoryRecordStore;
    use carevault_crypto::{ManualClock, SystemRng};

    pub(crate) fn clients_with(clock: Arc<ManualClock>) -> Clients {
        // Cheap Argon2id parameters keep the tests quick; the production default is 19 MiB, t=2.
        let params = argon2::Params::new(256, 1, 1, None).unwrap();
        Clients::with_params(
            Arc::new(MemoryRecordStore::new()),
            clock,
            Arc::new(SystemRng::new()),
            params,
        )
        .unwrap()
    }

    fn clients() -> Clients {
        clients_with(Arc::new(ManualClock::at_unix(1_700_000_000)))
    }

    fn basic(id: &str, secret: &str) -> String {
        let enc = |s: &str| {
            s.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        };
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                enc(id),
                enc(secret)
            ))
        )
    }

    #[test]
    fn add_and_authenticate() {
        let c = clients();
        let (rec, secret) = c.add("bench", "system/*.*").unwrap();
        assert_eq!(rec.client_id, "bench");
        assert_eq!(rec.created_at, 1_700_000_000);
        assert!(rec.secret_hash.starts_with("$argon2id$"));
        assert_eq!(secret.expose_secret().len(), 43);
        assert!(!rec.secret_hash.contains(secret.expose_secret()));
        assert!(
            !format!("{rec:?}").contains("argon2id"),
            "Debug redacts the hash"
        );
        let got = c
            .authenticate_basic(&basic("bench", secret.expose_secret()))
            .unwrap();
        assert_eq!(got.client_id, "bench");
        // Scheme is case-insensitive; '-' and '_' of base64url survive form encoding.
        let raw = base64::engine::general_purpose::STANDARD
            .encode(format!("bench:{}", secret.expose_secret()));
        assert!(c.authenticate_basic(&format!("basic {raw}")).is_ok());
    }

    #[test]
    fn names_and_duplicates() {
        let c = clients();
        for bad in ["", "Bench", "a b", "a/b", &"x".repeat(65), "é"] {
            assert!(
                matches!(c.add(bad, "system/*.*"), Err(AuthError::InvalidName(_))),
                "{bad:?}"
            );
        }
        c.add("lab-interface.v2_x", "system/Observation.cruds")
            .unwrap();
        assert!(matches!(
            c.add("lab-interface.v2_x", "system/*.*"),
            Err(AuthError::Duplicate(_))
        ));
        assert!(matches!(
            c.add("junk", "system/*.nope"),
            Err(AuthError::Scope(_))
        ));
        assert!(matches!(
            c.add("junk", "patient/*.rs"),
            Err(AuthError::Scope(_))
        ));
        assert!(matches!(c.add("junk", ""), Err(AuthError::Scope(_))));
        assert_eq!(c.list().unwrap().len(), 1);
    }

    #[test]
    fn unknown_disabled_and_wrong_secret_look_the_same() {
        let c = clients();
        let (_, secret) = c.add("app", "system/*.rs").unwrap();
        let wrong = c
            .authenticate_basic(&basic("app", "not-the-secret"))
            .unwrap_err();
        let unknown = c
            .authenticate_basic(&basic("nobody", secret.expose_secret()))
            .unwrap_err();
        c.disable("app").unwrap();
        let disabled = c
            .authenticate_basic(&basic("app", secret.expose_secret()))
            .unwrap_err();
        for e in [&wrong, &unknown, &disabled] {
            assert!(matches!(e, AuthError::InvalidClient));
            assert_eq!(e.to_string(), "client authentication failed");
        }
        c.enable("app").unwrap();
        assert!(
            c.authenticate_basic(&basic("app", secret.expose_secret()))
                .is_ok()
        );
    }

    #[test]
    fn unknown_clients_are_verified_against_a_hash_of_equal_cost() {
        // Equal work for unknown and known clients comes from verifying against a dummy hash made
        // with the very same Argon2id parameters (a timed test would be flaky; this is the cause).
        let c = clients();
        let (rec, _) = c.add("app", "system/*.rs").unwrap();
        let real = PasswordHash::new(&rec.secret_hash).unwrap();
        let dummy = PasswordHash::new(&c.dummy_hash).unwrap();
        assert_eq!(real.algorithm, dummy.algorithm);
        assert_eq!(real.params, dummy.params);
        assert_eq!(real.hash.map(|h| h.len()), dummy.hash.map(|h| h.len()));
        assert!(!c.verify(&SecretString::from(String::new()), &c.dummy_hash));
    }

    #[test]
    fn rotate_secret_invalidates_the_old_one() {
        let c = clients();
        let (_, old) = c.add("app", "system/*.rs").unwrap();
        let new = c.rotate_secret("app").unwrap();
        assert!(
            c.authenticate_basic(&basic("app", old.expose_secret()))
                .is_err()
        );
        assert!(
            c.authenticate_basic(&basic("app", new.expose_secret()))
                .is_ok()
        );
        assert!(matches!(
            c.rotate_secret("ghost"),
            Err(AuthError::NotFound(_))
        ));
        assert!(c.get("app").unwrap().unwrap().secret_rotated_at.is_some());
    }

    #[test]
    fn malformed_headers() {
        let c = clients();
        c.add("app", "system/*.rs").unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        for h in [
            String::new(),
            "Basic".into(),
            "Bearer abc".into(),
            "Basic !!!".into(),
            format!("Basic {}", b64("no-colon")),
            format!("Basic {}", b64(":secret")),
            format!("Basic {}", b64("app:")),
            format!("Basic {}", b64("app:%zz")),
            format!("Basic {}", b64("app:%C3%28")),
        ] {
            assert!(
                matches!(
                    c.authenticate_basic(&h),
                    Err(AuthError::MalformedCredentials)
                ),
                "{h:?}"
            );
        }
    }

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode(b"a+b%2Bc%3A").unwrap().as_str(), "a b+c:");
        assert!(form_decode(b"%4").is_none());
    }

    #[test]
    fn enabled_cache_expires() {
        let clock = Arc::new(ManualClock::at_unix(1_000));
        let c = clients_with(clock.clone());
        c.add("app", "system/*.rs").unwrap();
        assert!(c.is_enabled("app").unwrap());
        assert!(!c.is_enabled("ghost").unwrap());
        // A change made by another process (straight to the store) shows after the TTL.
        let mut rec = c.get("app").unwrap().unwrap();
        rec.disabled = true;
        c.save(&rec).unwrap();
        assert!(c.is_enabled("app").unwrap(), "still cached");
        clock.advance(ENABLED_CACHE_TTL + Duration::from_secs(1));
        assert!(!c.is_enabled("app").unwrap());
        // A change made through this registry shows at once.
        c.enable("app").unwrap();
        assert!(c.is_enabled("app").unwrap());
    }

    #[test]
    fn scope_grants() {
        let c = clients();
        let (rec, _) = c.add("app", "system/*.read system/Observation.c").unwrap();
        assert_eq!(c.grant_scopes(&rec, None).unwrap(), rec.scopes);
        assert_eq!(c.grant_scopes(&rec, Some(" ")).unwrap(), rec.scopes);
        assert_eq!(
            c.grant_scopes(&rec, Some("system/Patient.rs system/Observation.c"))
                .unwrap(),
            ["system/Patient.rs", "system/Observation.c"]
        );
        assert!(matches!(
            c.grant_scopes(&rec, Some("system/Patient.c")),
            Err(AuthError::ScopeNotAllowed(_))
        ));
        assert!(matches!(
            c.grant_scopes(&rec, Some("garbage")),
            Err(AuthError::Scope(_))
        ));
    }

    #[test]
    fn corrupt_record_is_an_error() {
        let store = Arc::new(MemoryRecordStore::new());
        let params = argon2::Params::new(256, 1, 1, None).unwrap();
        let c = Clients::with_params(
            store.clone(),
            Arc::new(ManualClock::at_unix(0)),
            Arc::new(SystemRng::new()),
            params,
        )
        .unwrap();
        store.put(CLIENT_RECORD_KIND, "bad", b"{not json").unwrap();
        assert!(matches!(c.get("bad"), Err(AuthError::Corrupt(_))));
        assert!(c.list().is_err());
        assert!(matches!(
            c.authenticate_basic(&basic("bad", "x")),
            Err(AuthError::Corrupt(_))
        ));
    }
}
