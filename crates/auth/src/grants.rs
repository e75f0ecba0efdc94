//! The authorization-code and refresh-token grants: authorize-request checks (exact redirect
//! URI, PKCE S256 only, audience, scopes), one-use codes, rotating refresh tokens with reuse
//! detection, and the list of revoked access tokens.
//!
//! Where each piece lives: authorization codes in memory (they live 60 s and a restart only
//! makes a user approve again); refresh-token families and revoked access-token ids in the
//! sealed record store, so they survive restarts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use base64::Engine as _;
use parking_lot::{Mutex, RwLock};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use carevault_crypto::Random;

use crate::clients::{ClientKind, ClientRecord};
use crate::records::RecordStore;
use crate::scope::{Scope, is_special};
use crate::token::Subject;

/// How long an authorization code may be redeemed.
pub const CODE_LIFETIME: Duration = Duration::from_secs(60);
/// Lifetime of an `offline_access` refresh-token family.
pub const OFFLINE_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// Lifetime of an `online_access` refresh-token family (the browser session's absolute lifetime).
pub const ONLINE_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Record kind of refresh-token families.
pub const REFRESH_RECORD_KIND: &str = "oauth-refresh";
/// Record kind (key `access`) of the revoked access-token ids.
pub const REVOKED_RECORD_KIND: &str = "oauth-revoked";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The parameters of `GET /oauth2/authorize`, as received.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuthorizeParams {
    /// Must be `code`.
    pub response_type: Option<String>,
    /// The app.
    pub client_id: Option<String>,
    /// One of the app's registered redirect URIs, exactly.
    pub redirect_uri: Option<String>,
    /// Requested scopes.
    pub scope: Option<String>,
    /// Echoed to the app.
    pub state: Option<String>,
    /// Must be the FHIR base URL.
    pub aud: Option<String>,
    /// PKCE challenge (S256).
    pub code_challenge: Option<String>,
    /// Must be `S256`.
    pub code_challenge_method: Option<String>,
    /// OpenID Connect nonce, put in the ID token.
    pub nonce: Option<String>,
}

/// A checked authorization request, ready for the consent page.
#[derive(Debug, Clone)]
pub struct AuthorizeRequest {
    /// The app.
    pub client: ClientRecord,
    /// The registered redirect URI it named.
    pub redirect_uri: String,
    /// The scopes that will be granted on approval (requested ∩ allowed to the app).
    pub scopes: Vec<String>,
    /// Echoed on redirect.
    pub state: Option<String>,
    /// PKCE S256 challenge.
    pub code_challenge: String,
    /// OpenID Connect nonce.
    pub nonce: Option<String>,
}

impl AuthorizeRequest {
    /// Whether the grant needs a patient in context (`launch/patient` or any `patient/` scope).
    pub fn needs_patient(&self) -> bool {
        self.scopes
            .iter()
            .any(|s| s == "launch/patient" || s.starts_with("patient/"))
    }
}

/// Why an authorization request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizeError {
    /// Unknown/disabled client or unregistered redirect URI: show an error page, never redirect.
    #[error("{0}")]
    NoRedirect(String),
    /// Anything else: redirect to the app with `error`, `error_description` and `state`.
    #[error("{error}: {description}")]
    Redirect {
        /// Where to send the browser.
        redirect_uri: String,
        /// The OAuth error code.
        error: &'static str,
        /// One sentence for people.
        description: String,
        /// The app's state.
        state: Option<String>,
    },
}

/// Checks an authorize request against `client` (already looked up by `params.client_id`, or
/// None when unknown) and the FHIR base URL `audience`.
pub fn check_authorize(
    params: &AuthorizeParams,
    client: Option<ClientRecord>,
    audience: &str,
) -> Result<AuthorizeRequest, AuthorizeError> {
    let client = client
        .filter(|c| c.kind.is_app() && !c.disabled)
        .ok_or_else(|| {
            AuthorizeError::NoRedirect(
                "This application is not registered here, or has been disabled.".into(),
            )
        })?;
    let redirect_uri = params
        .redirect_uri
        .clone()
        .filter(|u| client.redirect_uris.iter().any(|r| r == u))
        .ok_or_else(|| {
            AuthorizeError::NoRedirect(
                "The redirect_uri is missing or is not one registered for this application.".into(),
            )
        })?;
    let fail = |error: &'static str, description: &str| AuthorizeError::Redirect {
        redirect_uri: redirect_uri.clone(),
        error,
        description: description.to_owned(),
        state: params.state.clone(),
    };
    if params.response_type.as_deref() != Some("code") {
        return Err(fail(
            "unsupported_response_type",
            "only response_type=code is supported",
        ));
    }
    match params.code_challenge_method.as_deref() {
        Some("S256") => {}
        Some(_) => {
            return Err(fail(
                "invalid_request",
                "code_challenge_method must be S256 (plain is not allowed)",
            ));
        }
        None => {
            return Err(fail(
                "invalid_request",
                "PKCE is required: send code_challenge and code_challenge_method=S256",
            ));
        }
    }
    let challenge = params
        .code_challenge
        .clone()
        .filter(|c| c.len() == 43 && c.bytes().all(is_b64url))
        .ok_or_else(|| {
            fail(
                "invalid_request",
                "code_challenge must be the base64url SHA-256 of the code verifier",
            )
        })?;
    if params.aud.as_deref().map(|a| a.trim_end_matches('/')) != Some(audience) {
        return Err(fail(
            "invalid_request",
            "aud must be this server's FHIR base URL",
        ));
    }
    if params.state.as_ref().is_some_and(|s| s.len() > 1024)
        || params.nonce.as_ref().is_some_and(|n| n.len() > 1024)
    {
        return Err(fail(
            "invalid_request",
            "state and nonce may be at most 1024 characters",
        ));
    }
    let scopes = narrow_app_scopes(&client, params.scope.as_deref().unwrap_or(""));
    if !scopes.iter().any(|s| !is_special(s) || s == "openid") {
        return Err(fail(
            "invalid_scope",
            "none of the requested scopes is allowed to this application",
        ));
    }
    Ok(AuthorizeRequest {
        client,
        redirect_uri,
        scopes,
        state: params.state.clone(),
        code_challenge: challenge,
        nonce: params.nonce.clone(),
    })
}

/// The requested scopes the app may hold, in request order: special scopes it was registered
/// with, and resource scopes covered by one of its own; the rest are dropped (SMART lets the
/// server grant less than asked; the token response says what was granted).
pub fn narrow_app_scopes(client: &ClientRecord, requested: &str) -> Vec<String> {
    let held: Vec<Scope> = client
        .scopes
        .iter()
        .filter_map(|s| Scope::parse(s).ok())
        .collect();
    let mut out: Vec<String> = Vec::new();
    for word in requested.split_ascii_whitespace() {
        let ok = if is_special(word) {
            client.scopes.iter().any(|s| s == word)
        } else {
            Scope::parse(word).is_ok_and(|w| held.iter().any(|h| h.covers(&w)))
        };
        if ok && !out.iter().any(|o| o == word) {
            out.push(word.to_owned());
        }
    }
    out
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Whether `verifier` (RFC 7636: 43-128 of `[A-Za-z0-9-._~]`) hashes to `challenge`; constant-time.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let shape_ok = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    let computed = B64.encode(digest::digest(&digest::SHA256, verifier.as_bytes()).as_ref());
    shape_ok && bool::from(computed.as_bytes().ct_eq(challenge.as_bytes()))
}

/// What an authorization code stands for.
#[derive(Debug, Clone)]
pub struct CodeGrant {
    /// The app it was issued to.
    pub client_id: String,
    /// The redirect URI of the authorize request.
    pub redirect_uri: String,
    /// PKCE S256 challenge.
    pub code_challenge: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// The approving account and launch context.
    pub subject: Subject,
    /// OpenID Connect nonce.
    pub nonce: Option<String>,
}

/// What was issued when a code was redeemed, to revoke if it is presented again.
#[derive(Debug, Clone, Default)]
pub struct Issued {
    /// (jti, exp) of the access token.
    pub access: Vec<(String, u64)>,
    /// The refresh-token family, if any.
    pub family: Option<String>,
}

#[derive(Debug)]
struct CodeEntry {
    grant: CodeGrant,
    expires: u64,
    redeemed: Option<Issued>,
}

/// What redeeming a code found.
#[derive(Debug)]
pub enum Redeem {
    /// First use, in time.
    Fresh(CodeGrant),
    /// Used before: these tokens must now be revoked.
    Reused(Issued),
    /// Unknown or expired.
    Invalid,
}

/// Outstanding authorization codes, in memory, keyed by SHA-256 of the code.
#[derive(Debug, Default)]
pub struct Codes {
    map: Mutex<HashMap<[u8; 32], CodeEntry>>,
}

fn sha256(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, s.as_bytes()).as_ref());
    out
}

impl Codes {
    /// Stores `grant` under a fresh random code, valid for [`CODE_LIFETIME`] from `now`.
    pub fn issue(
        &self,
        grant: CodeGrant,
        now: u64,
        rng: &dyn Random,
    ) -> Result<SecretString, String> {
        let code = random_b64(rng, 32)?;
        let mut map = self.map.lock();
        // Redeemed codes are kept a while past expiry so a late replay still revokes.
        map.retain(|_, e| now < e.expires + 600);
        map.insert(
            sha256(code.expose_secret()),
            CodeEntry {
                grant,
                expires: now + CODE_LIFETIME.as_secs(),
                redeemed: None,
            },
        );
        Ok(code)
    }

    /// Takes the code for redemption, marking it used.
    pub fn redeem(&self, code: &str, now: u64) -> Redeem {
        let mut map = self.map.lock();
        match map.get_mut(&sha256(code)) {
            Some(e) if e.redeemed.is_some() => {
                Redeem::Reused(e.redeemed.clone().unwrap_or_default())
            }
            Some(e) if now < e.expires => {
                e.redeemed = Some(Issued::default());
                Redeem::Fresh(e.grant.clone())
            }
            _ => Redeem::Invalid,
        }
    }

    /// Records what was issued for a redeemed code.
    pub fn record_issued(&self, code: &str, issued: Issued) {
        if let Some(e) = self.map.lock().get_mut(&sha256(code)) {
            e.redeemed = Some(issued);
        }
    }
}

pub(crate) fn random_b64(rng: &dyn Random, len: usize) -> Result<SecretString, String> {
    let mut raw = zeroize::Zeroizing::new(vec![0u8; len]);
    rng.fill(&mut raw).map_err(|e| e.to_string())?;
    Ok(SecretString::from(B64.encode(&raw[..])))
}

/// One chain of rotating refresh tokens from one approval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshFamily {
    /// The client it is bound to.
    pub client_id: String,
    /// The approving account and launch context.
    pub subject: Subject,
    /// Scopes granted at approval (a refresh may ask for fewer).
    pub scopes: Vec<String>,
    /// Creation, seconds since the epoch.
    pub created: u64,
    /// Absolute expiry.
    pub expires: u64,
    /// SHA-256 (hex) of the current token's secret.
    pub current: String,
    /// SHA-256 of earlier secrets: presenting one is reuse.
    pub previous: Vec<String>,
    /// Set on reuse, revocation, or when the account was found disabled.
    pub revoked: bool,
    /// (jti, exp) of access tokens issued from this family.
    pub access: Vec<(String, u64)>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Splits a refresh token `FAMILY.SECRET` and hashes the secret.
pub fn split_refresh(token: &str) -> Option<(&str, String)> {
    let (family, secret) = token.split_once('.')?;
    (family.len() == 22
        && secret.len() == 43
        && family.bytes().all(is_b64url)
        && secret.bytes().all(is_b64url))
    .then(|| (family, hex(&sha256(secret))))
}

/// Refresh-token families in the record store; one lock serialises rotations in this process.
pub struct RefreshTokens {
    store: Arc<dyn RecordStore>,
    lock: Mutex<()>,
}

impl std::fmt::Debug for RefreshTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshTokens").finish_non_exhaustive()
    }
}

/// What a refresh attempt found.
#[derive(Debug)]
pub enum RefreshOutcome {
    /// Valid: the new token and the family's (updated) record.
    Rotated(SecretString, String, RefreshFamily),
    /// An earlier token of the family: the family is now revoked; these tokens must be too.
    Reused(RefreshFamily),
    /// Unknown, expired, revoked, or bound to another client.
    Invalid,
}

impl RefreshTokens {
    /// Families over `store`.
    pub fn new(store: Arc<dyn RecordStore>) -> Self {
        Self {
            store,
            lock: Mutex::new(()),
        }
    }

    /// Starts a family for an approval; returns the first token and the family id.
    pub fn start(
        &self,
        client_id: &str,
        subject: &Subject,
        scopes: &[String],
        now: u64,
        rng: &dyn Random,
    ) -> Result<(SecretString, String), String> {
        let family = random_b64(rng, 16)?.expose_secret().to_owned();
        let secret = random_b64(rng, 32)?;
        let lifetime = if scopes.iter().any(|s| s == "offline_access") {
            OFFLINE_LIFETIME
        } else {
            ONLINE_LIFETIME
        };
        let rec = RefreshFamily {
            client_id: client_id.to_owned(),
            subject: subject.clone(),
            scopes: scopes.to_vec(),
            created: now,
            expires: now + lifetime.as_secs(),
            current: hex(&sha256(secret.expose_secret())),
            previous: Vec::new(),
            revoked: false,
            access: Vec::new(),
        };
        self.save(&family, &rec)?;
        let token = SecretString::from(format!("{family}.{}", secret.expose_secret()));
        Ok((token, family))
    }

    /// The family `id`.
    pub fn get(&self, id: &str) -> Result<Option<RefreshFamily>, String> {
        match self.store.get(REFRESH_RECORD_KIND, id)? {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|_| "a stored refresh-token record is damaged".to_owned()),
            None => Ok(None),
        }
    }

    fn save(&self, id: &str, rec: &RefreshFamily) -> Result<(), String> {
        let body = serde_json::to_vec(rec).map_err(|e| e.to_string())?;
        self.store.put(REFRESH_RECORD_KIND, id, &body)
    }

    /// Notes an access token issued from family `id`.
    pub fn add_access(&self, id: &str, jti: &str, exp: u64, now: u64) -> Result<(), String> {
        let _g = self.lock.lock();
        if let Some(mut rec) = self.get(id)? {
            rec.access.retain(|(_, e)| *e + 60 > now);
            rec.access.push((jti.to_owned(), exp));
            self.save(id, &rec)?;
        }
        Ok(())
    }

    /// Rotates `token` presented by `client_id`.
    pub fn rotate(
        &self,
        token: &str,
        client_id: &str,
        now: u64,
        rng: &dyn Random,
    ) -> Result<RefreshOutcome, String> {
        let Some((id, hash)) = split_refresh(token) else {
            return Ok(RefreshOutcome::Invalid);
        };
        let _g = self.lock.lock();
        let Some(mut rec) = self.get(id)? else {
            return Ok(RefreshOutcome::Invalid);
        };
        if rec.client_id != client_id {
            return Ok(RefreshOutcome::Invalid);
        }
        let is_current = bool::from(rec.current.as_bytes().ct_eq(hash.as_bytes()));
        let is_previous = rec
            .previous
            .iter()
            .any(|p| bool::from(p.as_bytes().ct_eq(hash.as_bytes())));
        if is_previous || (is_current && rec.revoked) {
            if !rec.revoked {
                rec.revoked = true;
                self.save(id, &rec)?;
            }
            return Ok(RefreshOutcome::Reused(rec));
        }
        if !is_current || now >= rec.expires {
            return Ok(RefreshOutcome::Invalid);
        }
        let secret = random_b64(rng, 32)?;
        let old = std::mem::replace(&mut rec.current, hex(&sha256(secret.expose_secret())));
        rec.previous.push(old);
        if rec.previous.len() > 1000 {
            rec.previous.remove(0);
        }
        self.save(id, &rec)?;
        let token = SecretString::from(format!("{id}.{}", secret.expose_secret()));
        Ok(RefreshOutcome::Rotated(token, id.to_owned(), rec))
    }

    /// Revokes the family of `token` if it belongs to `client_id`; returns it when revoked.
    pub fn revoke(&self, token: &str, client_id: &str) -> Result<Option<RefreshFamily>, String> {
        let Some((id, hash)) = split_refresh(token) else {
            return Ok(None);
        };
        let _g = self.lock.lock();
        let Some(mut rec) = self.get(id)? else {
            return Ok(None);
        };
        let known = bool::from(rec.current.as_bytes().ct_eq(hash.as_bytes()))
            || rec
                .previous
                .iter()
                .any(|p| bool::from(p.as_bytes().ct_eq(hash.as_bytes())));
        if rec.client_id != client_id || !known {
            return Ok(None);
        }
        rec.revoked = true;
        self.save(id, &rec)?;
        Ok(Some(rec))
    }

    /// Revokes family `id` outright (code reuse, disabled account).
    pub fn revoke_family(&self, id: &str) -> Result<Option<RefreshFamily>, String> {
        let _g = self.lock.lock();
        let Some(mut rec) = self.get(id)? else {
            return Ok(None);
        };
        rec.revoked = true;
        self.save(id, &rec)?;
        Ok(Some(rec))
    }

    /// The live family of `token` (for introspection): current, unrevoked, unexpired.
    pub fn active(&self, token: &str, now: u64) -> Result<Option<RefreshFamily>, String> {
        let Some((id, hash)) = split_refresh(token) else {
            return Ok(None);
        };
        Ok(self.get(id)?.filter(|r| {
            !r.revoked && now < r.expires && bool::from(r.current.as_bytes().ct_eq(hash.as_bytes()))
        }))
    }
}

/// Revoked access-token ids with their expiry, in memory and in one sealed record (pruned of
/// expired ids on every write, so it stays as small as fifteen minutes of revocations).
pub struct Revocations {
    store: Arc<dyn RecordStore>,
    jtis: RwLock<HashMap<String, u64>>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations").finish_non_exhaustive()
    }
}

impl Revocations {
    /// Loads the list from `store`.
    pub fn load(store: Arc<dyn RecordStore>) -> Result<Self, String> {
        let jtis = match store.get(REVOKED_RECORD_KIND, "access")? {
            Some(b) => serde_json::from_slice(&b)
                .map_err(|_| "the stored list of revoked tokens is damaged".to_owned())?,
            None => HashMap::new(),
        };
        Ok(Self {
            store,
            jtis: RwLock::new(jtis),
        })
    }

    /// Whether `jti` was revoked.
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.jtis.read().contains_key(jti)
    }

    /// Revokes each (jti, exp), durably.
    pub fn revoke(&self, tokens: &[(String, u64)], now: u64) -> Result<(), String> {
        if tokens.is_empty() {
            return Ok(());
        }
        let mut jtis = self.jtis.write();
        jtis.retain(|_, exp| *exp + crate::token::LEEWAY_SECONDS + 60 > now);
        for (j, e) in tokens {
            jtis.insert(j.clone(), *e);
        }
        let body = serde_json::to_vec(&*jtis).map_err(|e| e.to_string())?;
        self.store.put(REVOKED_RECORD_KIND, "access", &body)
    }
}

/// Whether `client` may use the authorization-code and refresh grants.
pub fn is_app(client: &ClientRecord) -> bool {
    matches!(
        client.kind,
        ClientKind::ConfidentialApp | ClientKind::PublicApp
    )
}
