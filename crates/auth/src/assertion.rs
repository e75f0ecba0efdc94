//! SMART Backend Services client authentication: `private_key_jwt` assertions (RFC 7523, SMART
//! Backend Services) signed with RS384 or ES384 by a key of the client's registered JWK set.
//!
//! The header's `alg` picks nothing: it must be RS384 or ES384 and must agree with the type of
//! the registered key chosen by `kid`, so `none`, HMAC with a public key as secret and RS/ES
//! confusion are refused. Claims are checked before the key is looked up (`iss` = `sub`,
//! `aud` = the token endpoint URL, `exp` at most five minutes ahead, `jti` present), the
//! signature next, and the `jti` is remembered until the assertion expires so a replay fails.
//! The replay memory is durable ([`ReplayGuard::durable`]): one record per client and `jti` in
//! the [`RecordStore`], written before the token is issued and kept until the assertion's `exp`
//! plus the allowed clock skew, so a replay after a restart fails too; expired records are pruned
//! in one batch at most once a minute.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::signature::{
    ECDSA_P384_SHA384_FIXED, RSA_PKCS1_2048_8192_SHA384, RsaPublicKeyComponents, UnparsedPublicKey,
};
use base64::Engine as _;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::Value;

use crate::clients::{AuthError, ClientKind, ClientRecord};
use crate::records::RecordStore;
use crate::token::LEEWAY_SECONDS;

/// Record kind of the used `jti`s of client assertions (body: the assertion's `exp`).
pub const USED_JTI_RECORD_KIND: &str = "assertion-jti";
/// Seconds between two prunings of expired `jti` records.
const PRUNE_INTERVAL_SECONDS: u64 = 60;

/// The `client_assertion_type` of `private_key_jwt`.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How far ahead an assertion's `exp` may lie (SMART: no more than five minutes).
pub const MAX_ASSERTION_LIFETIME: u64 = 300;
/// Longest assertion accepted for parsing.
const MAX_ASSERTION_LEN: usize = 16 * 1024;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a client assertion was refused; every variant is `invalid_client` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    /// Not a compact JWS with JSON header and claims.
    #[error("the client assertion is not a well-formed JWT")]
    Malformed,
    /// `alg` is not RS384 or ES384 (or disagrees with the key's type).
    #[error("the client assertion must be signed with RS384 or ES384")]
    Algorithm,
    /// `iss` and `sub` are not both the client id.
    #[error("the client assertion's iss and sub must both be the client_id")]
    IssuerSubject,
    /// `aud` is not the token endpoint URL.
    #[error("the client assertion's aud must be the token endpoint URL")]
    Audience,
    /// `exp` is missing or past.
    #[error("the client assertion has expired or has no exp")]
    Expired,
    /// `exp` lies more than five minutes ahead.
    #[error("the client assertion's exp may be at most five minutes in the future")]
    TooLong,
    /// `jti` missing, empty or longer than 256 characters.
    #[error("the client assertion needs a jti of 1 to 256 characters")]
    Jti,
    /// The `jti` was used before by this client and its assertion has not expired.
    #[error("the client assertion's jti was already used")]
    Replay,
    /// The `jti` could not be read from or recorded in the replay memory, so the assertion was
    /// refused (fail closed).
    #[error("the client assertion could not be checked for replay: {0}")]
    Unavailable(String),
    /// Unknown or disabled client, no matching key, or a signature that does not verify:
    /// deliberately one answer.
    #[error("client authentication failed")]
    InvalidClient,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

#[derive(Deserialize)]
struct AssertionClaims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<Value>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    jti: Option<String>,
}

/// A parsed assertion whose claims passed; the signature is still to be checked.
#[derive(Debug)]
pub struct CheckedAssertion {
    /// The client id it claims (`iss` = `sub`).
    pub client_id: String,
    alg: String,
    kid: Option<String>,
    jti: String,
    exp: u64,
    signed: String,
    signature: Vec<u8>,
}

/// Checks the header and claims of `jwt` for the token endpoint `token_url` at `now` (seconds).
pub fn check_claims(
    jwt: &str,
    token_url: &str,
    now: u64,
) -> Result<CheckedAssertion, AssertionError> {
    if jwt.is_empty() || jwt.len() > MAX_ASSERTION_LEN {
        return Err(AssertionError::Malformed);
    }
    let mut parts = jwt.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AssertionError::Malformed);
    };
    let header: Header = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AssertionError::Malformed)?;
    if !matches!(header.alg.as_str(), "RS384" | "ES384") || header.crit.is_some() {
        return Err(AssertionError::Algorithm);
    }
    let claims: AssertionClaims = B64
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AssertionError::Malformed)?;
    let client_id = match (&claims.iss, &claims.sub) {
        (Some(i), Some(s)) if i == s && !i.is_empty() => i.clone(),
        _ => return Err(AssertionError::IssuerSubject),
    };
    let aud_ok = match &claims.aud {
        Some(Value::String(a)) => a == token_url,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(token_url)),
        _ => false,
    };
    if !aud_ok {
        return Err(AssertionError::Audience);
    }
    let exp = claims.exp.ok_or(AssertionError::Expired)?;
    if now >= exp.saturating_add(LEEWAY_SECONDS) {
        return Err(AssertionError::Expired);
    }
    if exp > now + MAX_ASSERTION_LIFETIME + LEEWAY_SECONDS {
        return Err(AssertionError::TooLong);
    }
    let jti = claims
        .jti
        .filter(|j| (1..=256).contains(&j.len()))
        .ok_or(AssertionError::Jti)?;
    let signature = B64.decode(s).map_err(|_| AssertionError::Malformed)?;
    Ok(CheckedAssertion {
        client_id,
        alg: header.alg,
        kid: header.kid,
        jti,
        exp,
        signed: format!("{h}.{p}"),
        signature,
    })
}

impl CheckedAssertion {
    /// Verifies the signature with a key of `client`'s JWK set (chosen by `kid`; without `kid`
    /// only when the set has exactly one key of the header's type).
    pub fn verify_signature(&self, client: &ClientRecord) -> Result<(), AssertionError> {
        if client.kind != ClientKind::Backend
            || client.disabled
            || client.client_id != self.client_id
        {
            return Err(AssertionError::InvalidClient);
        }
        let keys: Vec<PublicJwk> = client
            .jwks
            .as_ref()
            .and_then(|j| j.get("keys"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|k| PublicJwk::parse(k).ok())
            .filter(|k| k.alg() == self.alg)
            .collect();
        let key = match &self.kid {
            Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid.as_str())),
            None if keys.len() == 1 => keys.first(),
            None => None,
        }
        .ok_or(AssertionError::InvalidClient)?;
        if key.verify(self.signed.as_bytes(), &self.signature) {
            Ok(())
        } else {
            Err(AssertionError::InvalidClient)
        }
    }
}

/// The `jti` values of accepted assertions, each kept until its assertion expires: in process
/// memory (which also makes two concurrent uses of one `jti` in this process collide) and, for a
/// durable guard, in the record store, so a restart forgets nothing.
#[derive(Default)]
pub struct ReplayGuard {
    seen: Mutex<HashMap<(String, String), u64>>,
    records: Option<Arc<dyn RecordStore>>,
    next_prune: AtomicU64,
}

impl std::fmt::Debug for ReplayGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayGuard")
            .field("durable", &self.records.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether an assertion with `exp` still counts at `now` (the allowed clock skew included).
fn unexpired(exp: u64, now: u64) -> bool {
    now < exp.saturating_add(LEEWAY_SECONDS)
}

/// The record key of a client's `jti`: the client id's length first, so no pair of client id
/// and `jti` can be mistaken for another.
fn record_key(client_id: &str, jti: &str) -> String {
    format!("{}:{client_id}{jti}", client_id.len())
}

impl ReplayGuard {
    /// A guard in process memory only (a restart forgets it); for tests and tools.
    pub fn new() -> Self {
        Self::default()
    }

    /// A guard that also keeps every accepted `jti` in `records` until its assertion expires.
    pub fn durable(records: Arc<dyn RecordStore>) -> Self {
        Self {
            records: Some(records),
            ..Self::default()
        }
    }

    /// Records the assertion's `jti` for its client; refuses one seen before and not expired.
    /// For a durable guard the record is written before this returns `Ok`; when it cannot be
    /// read or written, the assertion is refused.
    pub fn check_and_remember(
        &self,
        assertion: &CheckedAssertion,
        now: u64,
    ) -> Result<(), AssertionError> {
        let key = (assertion.client_id.clone(), assertion.jti.clone());
        {
            let mut seen = self.seen.lock();
            if seen.len() > 10_000 {
                seen.retain(|_, exp| unexpired(*exp, now));
            }
            match seen.get(&key) {
                Some(exp) if unexpired(*exp, now) => return Err(AssertionError::Replay),
                _ => {
                    seen.insert(key.clone(), assertion.exp);
                }
            }
        }
        let Some(records) = &self.records else {
            return Ok(());
        };
        let stored = record_key(&assertion.client_id, &assertion.jti);
        let remembered = records
            .get(USED_JTI_RECORD_KIND, &stored)
            .and_then(|found| match found {
                // Used before this process started, and still counting.
                Some(body) if parse_exp(&body).is_none_or(|exp| unexpired(exp, now)) => {
                    Ok(Some(AssertionError::Replay))
                }
                _ => records
                    .put(
                        USED_JTI_RECORD_KIND,
                        &stored,
                        assertion.exp.to_string().as_bytes(),
                    )
                    .map(|()| None),
            });
        match remembered {
            Ok(None) => {
                self.prune(records.as_ref(), now);
                Ok(())
            }
            Ok(Some(refusal)) => Err(refusal),
            Err(e) => {
                // Not recorded: forget it here too, so a retry is judged afresh.
                self.seen.lock().remove(&key);
                Err(AssertionError::Unavailable(e))
            }
        }
    }

    /// Removes the stored `jti`s whose assertions have expired, in one batch, at most once a
    /// minute; a failure is left for the next round.
    fn prune(&self, records: &dyn RecordStore, now: u64) {
        let due = self.next_prune.load(Ordering::Relaxed);
        if now < due
            || self
                .next_prune
                .compare_exchange(
                    due,
                    now + PRUNE_INTERVAL_SECONDS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let Ok(all) = records.list(USED_JTI_RECORD_KIND) else {
            return;
        };
        let expired: Vec<String> = all
            .into_iter()
            .filter(|(_, body)| parse_exp(body).is_some_and(|exp| !unexpired(exp, now)))
            .map(|(key, _)| key)
            .collect();
        let _ = records.delete(USED_JTI_RECORD_KIND, &expired);
    }
}

/// The `exp` a stored `jti` record holds.
fn parse_exp(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body).ok()?.parse().ok()
}

/// One usable public key of a registered JWK set.
#[derive(Debug, Clone)]
struct PublicJwk {
    kid: Option<String>,
    key: KeyMaterial,
}

#[derive(Debug, Clone)]
enum KeyMaterial {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    P384 { point: Vec<u8> },
}

impl PublicJwk {
    fn parse(k: &Value) -> Result<Self, String> {
        let field = |name: &str| -> Result<Vec<u8>, String> {
            k.get(name)
                .and_then(Value::as_str)
                .and_then(|v| B64.decode(v).ok())
                .ok_or_else(|| format!("member {name:?} is missing or not base64url"))
        };
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            if k.get(private).is_some() {
                return Err(
                    "the set holds a private or symmetric key; register public keys only".into(),
                );
            }
        }
        let kid = k.get("kid").and_then(Value::as_str).map(str::to_owned);
        let alg = k.get("alg").and_then(Value::as_str);
        let key = match k.get("kty").and_then(Value::as_str) {
            Some("RSA") => {
                if alg.is_some_and(|a| a != "RS384") {
                    return Err("an RSA key must be for RS384".into());
                }
                let n = field("n")?;
                let significant = n.iter().skip_while(|b| **b == 0).count();
                if significant * 8 < 2048 {
                    return Err("RSA keys must have at least 2048 bits".into());
                }
                KeyMaterial::Rsa { n, e: field("e")? }
            }
            Some("EC") => {
                if k.get("crv").and_then(Value::as_str) != Some("P-384")
                    || alg.is_some_and(|a| a != "ES384")
                {
                    return Err("an EC key must be on P-384 for ES384".into());
                }
                let (x, y) = (field("x")?, field("y")?);
                if x.len() != 48 || y.len() != 48 {
                    return Err("a P-384 key needs 48-byte x and y".into());
                }
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                KeyMaterial::P384 { point }
            }
            _ => return Err("only RSA (RS384) and EC P-384 (ES384) keys are supported".into()),
        };
        Ok(Self { kid, key })
    }

    fn alg(&self) -> &'static str {
        match self.key {
            KeyMaterial::Rsa { .. } => "RS384",
            KeyMaterial::P384 { .. } => "ES384",
        }
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.key {
            KeyMaterial::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA384, message, signature)
                .is_ok(),
            KeyMaterial::P384 { point } => {
                signature.len() == 96
                    && UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point)
                        .verify(message, signature)
                        .is_ok()
            }
        }
    }
}

/// Checks a JWK set for registration: a `keys` array of public RS384/ES384 keys, each with a
/// unique `kid`.
pub fn validate_jwks(jwks: &Value) -> Result<(), AuthError> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            AuthError::Jwks("expected {\"keys\": [...]} with at least one key".into())
        })?;
    let mut kids: Vec<&str> = Vec::new();
    for k in keys {
        PublicJwk::parse(k).map_err(AuthError::Jwks)?;
        let kid = k
            .get("kid")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::Jwks("every key needs a kid".into()))?;
        if kids.contains(&kid) {
            return Err(AuthError::Jwks(format!("kid {kid:?} appears twice")));
        }
        kids.push(kid);
    }
    Ok(())
}
