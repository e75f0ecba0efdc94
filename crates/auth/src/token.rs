//! ES256 JWT access tokens (RFC 9068 profile): the signing key, issue, verification and the JWK set.
//!
//! JWS is done with aws-lc-rs directly rather than through a JOSE library: a compact JWS with one
//! fixed header is a few lines, the algorithm is pinned by construction (the header's `alg` is
//! compared to `ES256`, never used to choose a key or algorithm, so `none`, `HS256`-with-the-
//! public-key and RS* cannot be smuggled in), time comes from our [`Clock`](carevault_crypto::Clock)
//! instead of the system's, the parsed public key is cached, and the binary keeps one crypto
//! provider. A real JOSE library (`jsonwebtoken`) checks interoperability in the tests.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    ParsedPublicKey,
};
use base64::Engine as _;
use parking_lot::RwLock;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use carevault_crypto::{Clock, Random};

use crate::clients::{ClientRecord, Clients};
use crate::records::RecordStore;

/// The record kind the signing key is stored under.
pub const SIGNING_KEY_KIND: &str = "token-signing-key";
/// Default access-token lifetime (10 minutes).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// Longest lifetime a token may have (15 minutes, PRODUCT.md 2.3).
pub const MAX_LIFETIME: Duration = Duration::from_secs(900);
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECONDS: u64 = 30;
/// Longest token accepted for parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// The `typ` header of access tokens (RFC 9068).
pub const TOKEN_TYPE: &str = "at+jwt";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a token was not issued or not accepted. Every variant maps to HTTP 401 `invalid_token`
/// except [`TokenError::Store`] and [`TokenError::Crypto`] (500).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No bearer token was sent.
    #[error("a bearer token is required")]
    Missing,
    /// The token is not a well-formed compact JWS with JSON header and claims.
    #[error("the access token is malformed")]
    Malformed,
    /// The header names another algorithm or type, or marks extensions critical.
    #[error("the access token uses an unsupported algorithm or type ({0})")]
    Algorithm(String),
    /// The header names a key this server does not have.
    #[error("the access token was signed with an unknown key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the access token signature is invalid")]
    Signature,
    /// Issued by someone else.
    #[error("the access token was issued by another server")]
    Issuer,
    /// Meant for another audience.
    #[error("the access token is for another audience")]
    Audience,
    /// Past its expiry.
    #[error("the access token has expired")]
    Expired,
    /// Not valid yet (`nbf` or `iat` in the future).
    #[error("the access token is not valid yet")]
    NotYetValid,
    /// Claims a lifetime longer than this server ever issues.
    #[error("the access token claims a lifetime longer than allowed")]
    Lifetime,
    /// Its client has been disabled or removed.
    #[error("the client of this access token is disabled")]
    ClientDisabled,
    /// The token was revoked (RFC 7009), or the grant it came from was.
    #[error("the access token has been revoked")]
    Revoked,
    /// The account the token acts for is disabled or no longer exists.
    #[error("the account of this access token is disabled")]
    UserDisabled,
    /// The client asked for a token while disabled.
    #[error("a disabled client cannot be issued tokens")]
    DisabledClient,
    /// The record store failed.
    #[error("the token signing key could not be read or written: {0}")]
    Store(String),
    /// A primitive failed.
    #[error("a cryptographic operation failed: {0}")]
    Crypto(String),
}

impl TokenError {
    /// The `WWW-Authenticate` header value for a 401 with this error (RFC 6750 section 3).
    pub fn www_authenticate(&self) -> String {
        match self {
            TokenError::Missing => "Bearer realm=\"carevault\"".to_owned(),
            other => format!(
                "Bearer realm=\"carevault\", error=\"invalid_token\", error_description=\"{other}\""
            ),
        }
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: the server's base URL.
    pub iss: String,
    /// Subject: the user name for a token acting for a person, else the client id.
    pub sub: String,
    /// Audience: the FHIR base URL.
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issue time.
    pub iat: u64,
    /// Not before.
    pub nbf: u64,
    /// Token id.
    pub jti: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// The OAuth client.
    pub client_id: String,
    /// The account the token acts for (equal to `sub`); absent for system clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `Practitioner/ID` or `Patient/ID` linked to the account.
    #[serde(default, rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// The SMART launch-context patient id (`launch/patient`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
}

/// The person a token is issued for, with the launch context they approved.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Subject {
    /// The account name.
    pub user: String,
    /// `Practitioner/ID` or `Patient/ID` linked to the account.
    #[serde(default)]
    pub fhir_user: Option<String>,
    /// The launch-context patient id.
    #[serde(default)]
    pub patient: Option<String>,
}

impl Claims {
    /// The granted scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split_ascii_whitespace()
    }
}

/// An issued access token.
pub struct AccessToken {
    /// The compact JWS.
    pub jwt: SecretString,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// Its `jti`, for audit.
    pub jti: String,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("jwt", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .field("jti", &self.jti)
            .finish()
    }
}

impl AccessToken {
    /// The token endpoint's JSON response body (RFC 6749 section 5.1).
    pub fn response_body(&self) -> String {
        use secrecy::ExposeSecret as _;
        serde_json::json!({
            "access_token": self.jwt.expose_secret(),
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
        })
        .to_string()
    }
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    alg: String,
    created_at: u64,
    pkcs8: String,
}

/// The ES256 signing key pair with its key id (RFC 7638 thumbprint) and parsed public key.
#[derive(Clone)]
pub struct TokenKeys {
    pair: Arc<EcdsaKeyPair>,
    public: Arc<ParsedPublicKey>,
    kid: String,
    x: String,
    y: String,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeys")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Loads the signing key from `store`, generating and storing one on first start; also
    /// returns whether it was created. The store must seal the record (it holds a private key).
    pub fn load_or_create(
        store: &dyn RecordStore,
        clock: &dyn Clock,
    ) -> Result<(Self, bool), TokenError> {
        if let Some(body) = store
            .get(SIGNING_KEY_KIND, "current")
            .map_err(TokenError::Store)?
        {
            let body = Zeroizing::new(body);
            let stored: StoredKey = serde_json::from_slice(&body)
                .map_err(|_| TokenError::Store("the stored token signing key is damaged".into()))?;
            let pkcs8 =
                Zeroizing::new(B64.decode(&stored.pkcs8).map_err(|_| {
                    TokenError::Store("the stored signing key is not base64".into())
                })?);
            let _wipe = Zeroizing::new(stored.pkcs8);
            return Ok((Self::from_pkcs8(&pkcs8)?, false));
        }
        let doc = EcdsaKeyPair::generate_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .map_err(|_| TokenError::Crypto("could not generate a P-256 key".into()))?;
        let keys = Self::from_pkcs8(doc.as_ref())?;
        let stored = StoredKey {
            kid: keys.kid.clone(),
            alg: "ES256".into(),
            created_at: clock.unix_seconds(),
            pkcs8: B64.encode(doc.as_ref()),
        };
        let body = Zeroizing::new(
            serde_json::to_vec(&stored).map_err(|e| TokenError::Store(e.to_string()))?,
        );
        let _wipe = Zeroizing::new(stored.pkcs8);
        store
            .put(SIGNING_KEY_KIND, "current", &body)
            .map_err(TokenError::Store)?;
        Ok((keys, true))
    }

    /// A fresh key held only in memory (tests, tools).
    pub fn generate() -> Result<Self, TokenError> {
        let doc = EcdsaKeyPair::generate_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .map_err(|_| TokenError::Crypto("could not generate a P-256 key".into()))?;
        Self::from_pkcs8(doc.as_ref())
    }

    fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, TokenError> {
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).map_err(|_| {
                TokenError::Store("the stored token signing key is not a P-256 key".into())
            })?;
        let point = pair.public_key().as_ref();
        // An uncompressed P-256 point is 0x04 || x(32) || y(32).
        if point.len() != 65 || point[0] != 4 {
            return Err(TokenError::Crypto("unexpected public key encoding".into()));
        }
        let x = B64.encode(&point[1..33]);
        let y = B64.encode(&point[33..65]);
        let public = ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            .map_err(|_| TokenError::Crypto("could not parse the public key".into()))?;
        // RFC 7638 thumbprint: SHA-256 of the required members in lexicographic order.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = B64.encode(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref());
        Ok(Self {
            pair: Arc::new(pair),
            public: Arc::new(public),
            kid,
            x,
            y,
        })
    }

    /// The key id (`kid`) tokens carry.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK set for `/oauth2/jwks`.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "x": self.x, "y": self.y,
            "use": "sig", "alg": "ES256", "kid": self.kid,
        }]})
    }
}

/// Issues signed access tokens.
pub struct TokenIssuer {
    keys: TokenKeys,
    issuer: String,
    audience: String,
    lifetime: Duration,
    rng: Arc<dyn Random>,
    sign_rng: aws_lc_rs::rand::SystemRandom,
    header_b64: String,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("kid", &self.keys.kid)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// An issuer for `issuer` (the server's base URL, e.g. `https://127.0.0.1:8443`) and
    /// `audience` (the FHIR base URL, e.g. `https://127.0.0.1:8443/fhir`), with 10-minute tokens.
    pub fn new(
        keys: TokenKeys,
        issuer: impl Into<String>,
        audience: impl Into<String>,
        rng: Arc<dyn Random>,
    ) -> Self {
        let header = serde_json::json!({"alg": "ES256", "typ": TOKEN_TYPE, "kid": keys.kid});
        Self {
            header_b64: B64.encode(header.to_string()),
            keys,
            issuer: issuer.into(),
            audience: audience.into(),
            lifetime: DEFAULT_LIFETIME,
            rng,
            sign_rng: aws_lc_rs::rand::SystemRandom::new(),
        }
    }

    /// Sets the token lifetime, capped at [`MAX_LIFETIME`].
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime.min(MAX_LIFETIME);
        self
    }

    /// Issues a token for `client` with the already-granted `scopes` (see [`Clients::grant_scopes`]).
    pub fn issue(
        &self,
        client: &ClientRecord,
        scopes: &[String],
        now: SystemTime,
    ) -> Result<AccessToken, TokenError> {
        self.issue_for(client, None, scopes, now)
    }

    /// The lifetime of the tokens this issuer makes.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Issues a token for `client`, acting for `subject` when a person approved it.
    pub fn issue_for(
        &self,
        client: &ClientRecord,
        subject: Option<&Subject>,
        scopes: &[String],
        now: SystemTime,
    ) -> Result<AccessToken, TokenError> {
        if client.disabled {
            return Err(TokenError::DisabledClient);
        }
        let iat = unix(now);
        let expires_in = self.lifetime.as_secs();
        let mut jti = [0u8; 16];
        self.rng
            .fill(&mut jti)
            .map_err(|e| TokenError::Crypto(e.to_string()))?;
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.map_or_else(|| client.client_id.clone(), |s| s.user.clone()),
            aud: self.audience.clone(),
            exp: iat + expires_in,
            iat,
            nbf: iat,
            jti: B64.encode(jti),
            scope: scopes.join(" "),
            client_id: client.client_id.clone(),
            user: subject.map(|s| s.user.clone()),
            fhir_user: subject.and_then(|s| s.fhir_user.clone()),
            patient: subject.and_then(|s| s.patient.clone()),
        };
        let payload = serde_json::to_vec(&claims).map_err(|e| TokenError::Crypto(e.to_string()))?;
        let jwt = self.sign(&self.header_b64, &payload)?;
        Ok(AccessToken {
            jwt: SecretString::from(jwt),
            expires_in,
            scope: claims.scope,
            jti: claims.jti,
        })
    }

    /// An OpenID Connect ID token for `subject`, audience `client_id`, ES256 like access tokens.
    pub fn id_token(
        &self,
        client_id: &str,
        subject: &Subject,
        nonce: Option<&str>,
        now: SystemTime,
    ) -> Result<SecretString, TokenError> {
        let iat = unix(now);
        let mut claims = serde_json::json!({
            "iss": self.issuer, "sub": subject.user, "aud": client_id,
            "iat": iat, "exp": iat + self.lifetime.as_secs(),
        });
        if let Some(n) = nonce {
            claims["nonce"] = n.into();
        }
        if let Some(f) = &subject.fhir_user {
            // SMART: fhirUser is an absolute URL of the FHIR resource.
            claims["fhirUser"] = format!("{}/{f}", self.audience).into();
        }
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.keys.kid});
        let payload = serde_json::to_vec(&claims).map_err(|e| TokenError::Crypto(e.to_string()))?;
        self.sign(&B64.encode(header.to_string()), &payload)
            .map(SecretString::from)
    }

    fn sign(&self, header_b64: &str, payload: &[u8]) -> Result<String, TokenError> {
        let mut jwt = format!("{header_b64}.{}", B64.encode(payload));
        let sig = self
            .keys
            .pair
            .sign(&self.sign_rng, jwt.as_bytes())
            .map_err(|_| TokenError::Crypto("signing failed".into()))?;
        jwt.push('.');
        jwt.push_str(&B64.encode(sig.as_ref()));
        Ok(jwt)
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// Verifies access tokens; cheap to share behind an `Arc` (it runs on every request).
///
/// Tokens that passed every check are remembered (by SHA-256 of the token) so a client reusing its
/// token costs a hash, not an ECDSA verification; the time checks run on every call regardless.
pub struct TokenVerifier {
    public: Arc<ParsedPublicKey>,
    kid: String,
    issuer: String,
    audience: String,
    cache: RwLock<HashMap<[u8; 32], Arc<Claims>>>,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

const CACHE_CAPACITY: usize = 16_384;

impl TokenVerifier {
    /// A verifier for tokens signed by `keys`, issued by `issuer` for `audience`.
    pub fn new(keys: &TokenKeys, issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            public: keys.public.clone(),
            kid: keys.kid.clone(),
            issuer: issuer.into(),
            audience: audience.into(),
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Verifies `jwt` at time `now` and returns its claims.
    pub fn verify(&self, jwt: &str, now: SystemTime) -> Result<Arc<Claims>, TokenError> {
        if jwt.is_empty() || jwt.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let digest: [u8; 32] = digest::digest(&digest::SHA256, jwt.as_bytes())
            .as_ref()
            .try_into()
            .map_err(|_| TokenError::Crypto("unexpected digest length".into()))?;
        let now = unix(now);
        if let Some(claims) = self.cache.read().get(&digest).cloned() {
            check_times(&claims, now)?;
            return Ok(claims);
        }
        let claims = Arc::new(self.verify_uncached(jwt)?);
        check_times(&claims, now)?;
        let mut cache = self.cache.write();
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, c| c.exp + LEEWAY_SECONDS >= now);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(digest, claims.clone());
        Ok(claims)
    }

    /// Structure, header, signature, issuer, audience and lifetime; not the clock.
    fn verify_uncached(&self, jwt: &str) -> Result<Claims, TokenError> {
        let mut parts = jwt.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Header = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if header.alg != "ES256" {
            return Err(TokenError::Algorithm(format!("alg {}", header.alg)));
        }
        if !header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case(TOKEN_TYPE) || t.eq_ignore_ascii_case("application/at+jwt")
        }) {
            return Err(TokenError::Algorithm("typ must be at+jwt".into()));
        }
        if header.crit.is_some() {
            return Err(TokenError::Algorithm("crit is not supported".into()));
        }
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(TokenError::UnknownKey);
        }
        let sig = B64.decode(s).map_err(|_| TokenError::Malformed)?;
        if sig.len() != 64 {
            return Err(TokenError::Signature);
        }
        let signed_len = h.len() + 1 + p.len();
        self.public
            .verify_sig(&jwt.as_bytes()[..signed_len], &sig)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims = B64
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.iss != self.issuer {
            return Err(TokenError::Issuer);
        }
        if claims.aud != self.audience {
            return Err(TokenError::Audience);
        }
        if claims.exp.saturating_sub(claims.iat) > MAX_LIFETIME.as_secs() || claims.exp < claims.iat
        {
            return Err(TokenError::Lifetime);
        }
        Ok(claims)
    }
}

fn check_times(claims: &Claims, now: u64) -> Result<(), TokenError> {
    if now >= claims.exp.saturating_add(LEEWAY_SECONDS) {
        return Err(TokenError::Expired);
    }
    if claims.nbf > now.saturating_add(LEEWAY_SECONDS)
        || claims.iat > now.saturating_add(LEEWAY_SECONDS)
    {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Authenticates `/fhir` requests: bearer token, then whether its client is still enabled.
#[derive(Debug, Clone)]
pub struct BearerAuthenticator {
    verifier: Arc<TokenVerifier>,
    clients: Arc<Clients>,
}

impl BearerAuthenticator {
    /// Combines a verifier and the client registry.
    pub fn new(verifier: Arc<TokenVerifier>, clients: Arc<Clients>) -> Self {
        Self { verifier, clients }
    }

    /// Checks an `Authorization` header value (`Bearer <jwt>`) at `now`.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        now: SystemTime,
    ) -> Result<Arc<Claims>, TokenError> {
        let value = authorization
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(TokenError::Missing)?;
        let (scheme, token) = value.split_once(' ').ok_or(TokenError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::Missing);
        }
        let claims = self.verifier.verify(token.trim(), now)?;
        match self.clients.is_enabled(&claims.client_id) {
            Ok(true) => Ok(claims),
            Ok(false) => Err(TokenError::ClientDisabled),
            Err(e) => Err(TokenError::Store(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::MemoryRecordStore;
    use carevault_crypto::{ManualClock, SystemRng};
    use secrecy::ExposeSecret;

    const ISS: &str = "https://127.0.0.1:8443";
    const AUD: &str = "https://127.0.0.1:8443/fhir";
    const T0: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    struct Fixture {
        keys: TokenKeys,
        issuer: TokenIssuer,
        verifier: TokenVerifier,
        client: ClientRecord,
    }

    fn fixture() -> Fixture {
        let keys = TokenKeys::generate().unwrap();
        let issuer = TokenIssuer::new(keys.clone(), ISS, AUD, Arc::new(SystemRng::new()));
        let verifier = TokenVerifier::new(&keys, ISS, AUD);
        let client = ClientRecord {
            client_id: "bench".into(),
            name: "bench".into(),
            scopes: vec!["system/*.*".into()],
            secret_hash: String::new(),
            kind: crate::ClientKind::System,
            disabled: false,
            created_at: 0,
            secret_rotated_at: None,
            redirect_uris: Vec::new(),
            jwks: None,
        };
        Fixture {
            keys,
            issuer,
            verifier,
            client,
        }
    }

    fn token(f: &Fixture, now: u64) -> String {
        f.issuer
            .issue(&f.client, &["system/*.*".into()], at(now))
            .unwrap()
            .jwt
            .expose_secret()
            .to_owned()
    }

    /// Signs arbitrary header and claims with `keys`, as a forger holding the key could.
    fn sign_raw(
        keys: &TokenKeys,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = keys
            .pair
            .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }

    fn good_claims() -> serde_json::Value {
        serde_json::json!({"iss": ISS, "sub": "bench", "aud": AUD, "exp": T0 + 600, "iat": T0, "nbf": T0,
            "jti": "x", "scope": "system/*.*", "client_id": "bench"})
    }

    fn header(f: &Fixture) -> serde_json::Value {
        serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": f.keys.kid()})
    }

    #[test]
    fn issue_then_verify() {
        let f = fixture();
        let t = f
            .issuer
            .issue(
                &f.client,
                &["system/Patient.rs".into(), "system/*.read".into()],
                at(T0),
            )
            .unwrap();
        assert_eq!(t.expires_in, 600);
        assert!(!format!("{t:?}").contains(t.jwt.expose_secret()));
        let c = f
            .verifier
            .verify(t.jwt.expose_secret(), at(T0 + 1))
            .unwrap();
        assert_eq!(
            (
                c.iss.as_str(),
                c.aud.as_str(),
                c.sub.as_str(),
                c.client_id.as_str()
            ),
            (ISS, AUD, "bench", "bench")
        );
        assert_eq!((c.iat, c.nbf, c.exp), (T0, T0, T0 + 600));
        assert_eq!(
            c.scopes().collect::<Vec<_>>(),
            ["system/Patient.rs", "system/*.read"]
        );
        assert_eq!(c.jti, t.jti);
        let body: serde_json::Value = serde_json::from_str(&t.response_body()).unwrap();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"].as_u64(), Some(600));
        // A second verification (cache hit) agrees.
        assert_eq!(
            f.verifier
                .verify(t.jwt.expose_secret(), at(T0 + 2))
                .unwrap(),
            c
        );
        // Two tokens never share a jti.
        assert_ne!(token(&f, T0), token(&f, T0));
    }

    #[test]
    fn lifetime_is_capped_at_fifteen_minutes() {
        let f = fixture();
        let issuer = TokenIssuer::new(f.keys.clone(), ISS, AUD, Arc::new(SystemRng::new()))
            .with_lifetime(Duration::from_secs(3600));
        let t = issuer.issue(&f.client, &[], at(T0)).unwrap();
        assert_eq!(t.expires_in, 900);
        let mut claims = good_claims();
        claims["exp"] = (T0 + 3600).into();
        let forged = sign_raw(&f.keys, &header(&f), &claims);
        assert_eq!(
            f.verifier.verify(&forged, at(T0)),
            Err(TokenError::Lifetime)
        );
    }

    #[test]
    fn expiry_with_leeway_survives_the_cache() {
        let f = fixture();
        let t = token(&f, T0);
        f.verifier.verify(&t, at(T0)).unwrap();
        assert!(
            f.verifier
                .verify(&t, at(T0 + 600 + LEEWAY_SECONDS - 1))
                .is_ok(),
            "within leeway"
        );
        assert_eq!(
            f.verifier.verify(&t, at(T0 + 600 + LEEWAY_SECONDS)),
            Err(TokenError::Expired)
        );
        let fresh = fixture();
        let t = token(&fresh, T0);
        assert_eq!(
            fresh.verifier.verify(&t, at(T0 + 10_000)),
            Err(TokenError::Expired),
            "uncached path too"
        );
    }

    #[test]
    fn not_yet_valid() {
        let f = fixture();
        let t = token(&f, T0);
        assert!(f.verifier.verify(&t, at(T0 - LEEWAY_SECONDS)).is_ok());
        let f = fixture();
        let t = token(&f, T0);
        assert_eq!(
            f.verifier.verify(&t, at(T0 - LEEWAY_SECONDS - 1)),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn wrong_audience_and_issuer() {
        let f = fixture();
        let t = token(&f, T0);
        let other_aud = TokenVerifier::new(&f.keys, ISS, "https://elsewhere/fhir");
        assert_eq!(other_aud.verify(&t, at(T0)), Err(TokenError::Audience));
        let other_iss = TokenVerifier::new(&f.keys, "https://elsewhere", AUD);
        assert_eq!(other_iss.verify(&t, at(T0)), Err(TokenError::Issuer));
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let f = fixture();
        let claims = B64.encode(good_claims().to_string());
        for alg in ["none", "None", "HS256", "RS256", "PS256", "ES384", "EdDSA"] {
            let h = B64.encode(
                serde_json::json!({"alg": alg, "typ": "at+jwt", "kid": f.keys.kid()}).to_string(),
            );
            for sig in ["", "AAAA"] {
                let t = format!("{h}.{claims}.{sig}");
                assert!(
                    matches!(f.verifier.verify(&t, at(T0)), Err(TokenError::Algorithm(_))),
                    "{alg}"
                );
            }
        }
        // No alg at all.
        let h = B64.encode(r#"{"typ":"at+jwt"}"#);
        assert_eq!(
            f.verifier.verify(&format!("{h}.{claims}.AAAA"), at(T0)),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn hs256_with_the_public_key_as_secret_is_refused() {
        let f = fixture();
        let jwks = f.keys.jwks();
        let jwk_text = jwks["keys"][0].to_string();
        let point = f.keys.pair.public_key().as_ref().to_vec();
        for secret in [jwk_text.as_bytes(), &point[..], f.keys.x.as_bytes()] {
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            h.typ = Some("at+jwt".into());
            h.kid = Some(f.keys.kid().to_owned());
            let t = jsonwebtoken::encode(
                &h,
                &good_claims(),
                &jsonwebtoken::EncodingKey::from_secret(secret),
            )
            .unwrap();
            assert!(matches!(
                f.verifier.verify(&t, at(T0)),
                Err(TokenError::Algorithm(_))
            ));
        }
    }

    #[test]
    fn tampered_payload_and_header_fail_the_signature() {
        let f = fixture();
        let t = token(&f, T0);
        let parts: Vec<&str> = t.split('.').collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        claims["scope"] = "system/*.* user/*.*".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(claims.to_string()),
            parts[2]
        );
        assert_eq!(
            f.verifier.verify(&forged, at(T0)),
            Err(TokenError::Signature)
        );
        claims["scope"] = "system/*.*".into();
        claims["exp"] = (T0 + 900).into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(claims.to_string()),
            parts[2]
        );
        assert_eq!(
            f.verifier.verify(&forged, at(T0)),
            Err(TokenError::Signature)
        );
        // Flip one bit of the signature.
        let mut sig = B64.decode(parts[2]).unwrap();
        sig[10] ^= 1;
        let forged = format!("{}.{}.{}", parts[0], parts[1], B64.encode(sig));
        assert_eq!(
            f.verifier.verify(&forged, at(T0)),
            Err(TokenError::Signature)
        );
        // Truncated signature.
        let forged = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20]);
        assert!(f.verifier.verify(&forged, at(T0)).is_err());
        // The original still passes (nothing was cached from the forgeries).
        assert!(f.verifier.verify(&t, at(T0)).is_ok());
    }

    #[test]
    fn wrong_key() {
        let f = fixture();
        let other = fixture();
        // Another server's token: unknown kid.
        assert_eq!(
            f.verifier.verify(&token(&other, T0), at(T0)),
            Err(TokenError::UnknownKey)
        );
        // Another key claiming our kid.
        let forged = sign_raw(&other.keys, &header(&f), &good_claims());
        assert_eq!(
            f.verifier.verify(&forged, at(T0)),
            Err(TokenError::Signature)
        );
        // Same key, right claims: passes (proves the forging helper is otherwise sound).
        assert!(
            f.verifier
                .verify(&sign_raw(&f.keys, &header(&f), &good_claims()), at(T0))
                .is_ok()
        );
    }

    #[test]
    fn header_type_and_crit() {
        let f = fixture();
        for h in [
            serde_json::json!({"alg": "ES256", "kid": f.keys.kid()}),
            serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": f.keys.kid()}),
            serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": f.keys.kid(), "crit": ["exp"]}),
        ] {
            let t = sign_raw(&f.keys, &h, &good_claims());
            assert!(
                matches!(f.verifier.verify(&t, at(T0)), Err(TokenError::Algorithm(_))),
                "{h}"
            );
        }
        let t = sign_raw(
            &f.keys,
            &serde_json::json!({"alg": "ES256", "typ": "at+jwt"}),
            &good_claims(),
        );
        assert_eq!(f.verifier.verify(&t, at(T0)), Err(TokenError::UnknownKey));
    }

    #[test]
    fn garbage_is_malformed_never_a_panic() {
        let f = fixture();
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        let h = B64.encode(header(&f).to_string());
        let signed_not_json = sign_raw(&f.keys, &header(&f), &serde_json::json!("just a string"));
        let missing_claim = {
            let mut c = good_claims();
            c.as_object_mut().unwrap().remove("aud");
            sign_raw(&f.keys, &header(&f), &c)
        };
        for t in [
            "",
            ".",
            "..",
            "a.b",
            "a.b.c.d",
            "!!!.???.***",
            "eyJ.eyJ.eyJ",
            &long,
            &format!("{h}.%%%.AAAA"),
            &format!("{h}..AAAA"),
            "\u{0}\u{1}.\u{2}.\u{3}",
            &signed_not_json,
            &missing_claim,
        ] {
            let r = f.verifier.verify(t, at(T0));
            assert!(r.is_err(), "{t:?}");
        }
        assert_eq!(f.verifier.verify("a.b", at(T0)), Err(TokenError::Malformed));
        assert_eq!(
            f.verifier.verify(&signed_not_json, at(T0)),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn interoperates_with_a_real_jose_library() {
        let f = fixture();
        let now = SystemTime::now();
        let t = f
            .issuer
            .issue(&f.client, &["system/*.*".into()], now)
            .unwrap();
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(f.keys.jwks()["keys"][0].clone()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&[AUD]);
        v.set_issuer(&[ISS]);
        let decoded = jsonwebtoken::decode::<Claims>(t.jwt.expose_secret(), &key, &v).unwrap();
        assert_eq!(decoded.claims.client_id, "bench");
        assert_eq!(decoded.header.kid.as_deref(), Some(f.keys.kid()));
        // And a token minted by the library with our private key verifies here.
        let enc = jsonwebtoken::EncodingKey::from_ec_der(&pkcs8_of(&f));
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.typ = Some("at+jwt".into());
        h.kid = Some(f.keys.kid().to_owned());
        let t = jsonwebtoken::encode(&h, &good_claims(), &enc).unwrap();
        assert!(f.verifier.verify(&t, at(T0)).is_ok());
    }

    fn pkcs8_of(f: &Fixture) -> Vec<u8> {
        f.keys.pair.to_pkcs8v1().unwrap().as_ref().to_vec()
    }

    #[test]
    fn signing_key_persists_and_jwks_shape() {
        let store = MemoryRecordStore::new();
        let clock = ManualClock::at_unix(T0);
        let (a, created) = TokenKeys::load_or_create(&store, &clock).unwrap();
        assert!(created);
        let (b, created) = TokenKeys::load_or_create(&store, &clock).unwrap();
        assert!(!created);
        assert_eq!(a.kid(), b.kid());
        let issuer = TokenIssuer::new(a.clone(), ISS, AUD, Arc::new(SystemRng::new()));
        let f = fixture();
        let t = issuer.issue(&f.client, &[], at(T0)).unwrap();
        assert!(
            TokenVerifier::new(&b, ISS, AUD)
                .verify(t.jwt.expose_secret(), at(T0))
                .is_ok()
        );
        let jwks = a.jwks();
        let k = &jwks["keys"][0];
        assert_eq!(
            (k["kty"].as_str(), k["crv"].as_str(), k["alg"].as_str()),
            (Some("EC"), Some("P-256"), Some("ES256"))
        );
        assert!(k.get("d").is_none(), "no private part in the JWK set");
        assert_eq!(B64.decode(k["x"].as_str().unwrap()).unwrap().len(), 32);
        store.put(SIGNING_KEY_KIND, "current", b"garbage").unwrap();
        assert!(matches!(
            TokenKeys::load_or_create(&store, &clock),
            Err(TokenError::Store(_))
        ));
    }

    #[test]
    fn disabled_client_tokens_are_refused() {
        let clock = Arc::new(ManualClock::at_unix(T0));
        let clients = Arc::new(crate::clients::tests::clients_with(clock.clone()));
        let (rec, _) = clients.add("app", "system/*.rs").unwrap();
        let f = fixture();
        let auth = BearerAuthenticator::new(Arc::new(f.verifier), clients.clone());
        let t = f.issuer.issue(&rec, &rec.scopes, at(T0)).unwrap();
        let header = format!("Bearer {}", t.jwt.expose_secret());
        assert_eq!(
            auth.authenticate(Some(&header), clock.now())
                .unwrap()
                .client_id,
            "app"
        );
        clients.disable("app").unwrap();
        assert_eq!(
            auth.authenticate(Some(&header), clock.now()),
            Err(TokenError::ClientDisabled)
        );
        let disabled = clients.get("app").unwrap().unwrap();
        assert!(matches!(
            f.issuer.issue(&disabled, &[], at(T0)),
            Err(TokenError::DisabledClient)
        ));
        assert_eq!(
            auth.authenticate(None, clock.now()),
            Err(TokenError::Missing)
        );
        assert_eq!(
            auth.authenticate(Some("Basic abc"), clock.now()),
            Err(TokenError::Missing)
        );
        assert_eq!(
            auth.authenticate(Some("Bearer"), clock.now()),
            Err(TokenError::Malformed)
        );
        assert!(
            TokenError::Expired
                .www_authenticate()
                .contains("invalid_token")
        );
    }
}
