//! [`AuthService`]: the one object the server holds for OAuth 2: client registry, token issue at
//! `/oauth2/token`, bearer verification on `/fhir`, and the JWK set. It knows no HTTP: header
//! values come in as strings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use carevault_crypto::{Clock, Random};

use crate::assertion::{ASSERTION_TYPE, AssertionError, ReplayGuard, check_claims};
use crate::clients::{AuthError, ClientKind, ClientRecord, Clients};
use crate::grants::{
    AuthorizeError, AuthorizeParams, AuthorizeRequest, CodeGrant, Codes, Issued, Redeem,
    RefreshOutcome, RefreshTokens, Revocations, check_authorize, pkce_matches, split_refresh,
};
use crate::records::RecordStore;
use crate::scope::Scope;
use crate::token::{
    AccessToken, BearerAuthenticator, Claims, Subject, TokenError, TokenIssuer, TokenKeys,
    TokenVerifier,
};

/// Why a token request failed, in the terms of RFC 6749 section 5.2.
#[derive(Debug, thiserror::Error)]
pub enum TokenRequestError {
    /// `invalid_client` (HTTP 401 with `WWW-Authenticate: Basic`): bad, unknown or disabled client,
    /// or no usable credentials.
    #[error("client authentication failed")]
    InvalidClient,
    /// `invalid_client` (HTTP 401): a `private_key_jwt` assertion was refused for this reason.
    #[error("{0}")]
    InvalidAssertion(AssertionError),
    /// `invalid_request` (HTTP 400): a missing, repeated or malformed parameter.
    #[error("{0}")]
    InvalidRequest(String),
    /// `invalid_grant` (HTTP 400): bad, expired, reused or mismatched code or refresh token.
    #[error("{0}")]
    InvalidGrant(String),
    /// `unauthorized_client` (HTTP 400): this kind of client may not use this grant.
    #[error("{0}")]
    UnauthorizedClient(String),
    /// `invalid_scope` (HTTP 400): the requested scope is malformed or not the client's.
    #[error("{0}")]
    InvalidScope(String),
    /// `server_error` (HTTP 500): log the detail, show nothing.
    #[error("the token could not be issued: {0}")]
    Internal(String),
}

impl TokenRequestError {
    /// The OAuth `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidClient | Self::InvalidAssertion(_) => "invalid_client",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidGrant(_) => "invalid_grant",
            Self::UnauthorizedClient(_) => "unauthorized_client",
            Self::InvalidScope(_) => "invalid_scope",
            Self::Internal(_) => "server_error",
        }
    }
}

/// How a request to the token, revocation or introspection endpoint identifies its client.
#[derive(Debug, Clone, Copy)]
pub enum ClientCredentials<'a> {
    /// Nothing usable.
    None,
    /// The `Authorization: Basic` header value (`client_secret_basic`).
    Basic(&'a str),
    /// `private_key_jwt` form parameters.
    Assertion {
        /// `client_assertion_type`.
        assertion_type: &'a str,
        /// `client_assertion`.
        assertion: &'a str,
        /// `client_id`, when sent.
        client_id: Option<&'a str>,
    },
    /// A `client_id` form parameter alone: public apps only.
    Public(&'a str),
}

/// Looks accounts up for the grants and for bearer verification.
pub trait UserDirectory: Send + Sync {
    /// Whether account `user` exists and is enabled now (implementations may cache ≤ 1 s).
    fn is_active(&self, user: &str) -> Result<bool, String>;
}

/// A successful token response.
pub struct TokenResponse {
    /// The access token.
    pub access: AccessToken,
    /// The next refresh token (`offline_access` / `online_access`).
    pub refresh_token: Option<SecretString>,
    /// The OpenID Connect ID token (`openid`).
    pub id_token: Option<SecretString>,
    /// The client it went to.
    pub client_id: String,
    /// The person it acts for.
    pub subject: Option<Subject>,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access", &self.access)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl TokenResponse {
    /// The JSON body (RFC 6749 5.1 with the SMART `patient` context and `id_token`).
    pub fn response_body(&self) -> String {
        let mut body = json!({
            "access_token": self.access.jwt.expose_secret(),
            "token_type": "Bearer",
            "expires_in": self.access.expires_in,
            "scope": self.access.scope,
        });
        if let Some(r) = &self.refresh_token {
            body["refresh_token"] = r.expose_secret().into();
        }
        if let Some(t) = &self.id_token {
            body["id_token"] = t.expose_secret().into();
        }
        if let Some(p) = self.subject.as_ref().and_then(|s| s.patient.as_ref()) {
            body["patient"] = p.as_str().into();
        }
        body.to_string()
    }
}

/// What a revocation request revoked, for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// Nothing (unknown, expired or another client's token): still HTTP 200.
    Nothing,
    /// One access token.
    AccessToken,
    /// A refresh-token family and its access tokens.
    RefreshFamily,
}

/// Clients, grants, token issue and verification, wired together.
pub struct AuthService {
    clients: Arc<Clients>,
    keys: TokenKeys,
    issuer: TokenIssuer,
    verifier: Arc<TokenVerifier>,
    bearer: BearerAuthenticator,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Random>,
    issuer_url: String,
    audience: String,
    codes: Codes,
    refresh: RefreshTokens,
    revocations: Revocations,
    replay: ReplayGuard,
    users: RwLock<Option<Arc<dyn UserDirectory>>>,
}

impl fmt::Debug for AuthService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthService")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl AuthService {
    /// Opens the service over `store` (which must seal its records), loading or creating the
    /// token-signing key. `issuer` is the server's base URL (`https://host:port`), `audience` the
    /// FHIR base URL (`https://host:port/fhir`), `lifetime` the access-token lifetime (≤ 15 min).
    pub fn open(
        store: Arc<dyn RecordStore>,
        issuer: &str,
        audience: &str,
        lifetime: Duration,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Random>,
    ) -> Result<Self, TokenError> {
        let clients = Arc::new(
            Clients::new(store.clone(), clock.clone(), rng.clone())
                .map_err(|e| TokenError::Crypto(e.to_string()))?,
        );
        Self::with_clients(store, clients, issuer, audience, lifetime, clock, rng)
    }

    /// Like [`AuthService::open`] with a given client registry (tests use cheap hashing).
    pub fn with_clients(
        store: Arc<dyn RecordStore>,
        clients: Arc<Clients>,
        issuer: &str,
        audience: &str,
        lifetime: Duration,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Random>,
    ) -> Result<Self, TokenError> {
        let (keys, _created) = TokenKeys::load_or_create(store.as_ref(), clock.as_ref())?;
        let verifier = Arc::new(TokenVerifier::new(&keys, issuer, audience));
        let token_issuer =
            TokenIssuer::new(keys.clone(), issuer, audience, rng.clone()).with_lifetime(lifetime);
        let bearer = BearerAuthenticator::new(verifier.clone(), clients.clone());
        let revocations = Revocations::load(store.clone()).map_err(TokenError::Store)?;
        Ok(Self {
            clients,
            keys,
            issuer: token_issuer,
            verifier,
            bearer,
            clock,
            rng,
            issuer_url: issuer.to_owned(),
            audience: audience.to_owned(),
            codes: Codes::default(),
            replay: ReplayGuard::durable(store.clone()),
            refresh: RefreshTokens::new(store),
            revocations,
            users: RwLock::new(None),
        })
    }

    /// Connects the account directory. Until it is attached, every token acting for a person
    /// is refused (fail closed).
    pub fn attach_users(&self, users: Arc<dyn UserDirectory>) {
        *self.users.write() = Some(users);
    }

    /// The client registry (for `carevault client ...` and cached enabled checks).
    pub fn clients(&self) -> &Arc<Clients> {
        &self.clients
    }

    /// The issuer (`https://host:port`).
    pub fn issuer_url(&self) -> &str {
        &self.issuer_url
    }

    /// The token endpoint URL, the only `aud` client assertions may carry.
    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth2/token", self.issuer_url)
    }

    fn now(&self) -> u64 {
        self.clock.unix_seconds()
    }

    fn user_active(&self, user: &str) -> Result<bool, String> {
        match self.users.read().as_ref() {
            Some(d) => d.is_active(user),
            None => Ok(false),
        }
    }

    /// Authenticates the client of a token, revocation or introspection request.
    /// Slow on purpose for secrets (Argon2id): call it from a blocking thread.
    pub fn authenticate_client(
        &self,
        creds: ClientCredentials<'_>,
    ) -> Result<ClientRecord, TokenRequestError> {
        let internal = |e: AuthError| TokenRequestError::Internal(e.to_string());
        match creds {
            ClientCredentials::None => Err(TokenRequestError::InvalidClient),
            ClientCredentials::Basic(header) => match self.clients.authenticate_basic(header) {
                Ok(c) => Ok(c),
                Err(AuthError::InvalidClient | AuthError::MalformedCredentials) => {
                    Err(TokenRequestError::InvalidClient)
                }
                Err(e) => Err(internal(e)),
            },
            ClientCredentials::Public(id) => match self.clients.public_client(id) {
                Ok(c) => Ok(c),
                Err(AuthError::InvalidClient) => Err(TokenRequestError::InvalidClient),
                Err(e) => Err(internal(e)),
            },
            ClientCredentials::Assertion {
                assertion_type,
                assertion,
                client_id,
            } => {
                if assertion_type != ASSERTION_TYPE {
                    return Err(TokenRequestError::InvalidRequest(format!(
                        "client_assertion_type must be {ASSERTION_TYPE}"
                    )));
                }
                let now = self.now();
                let checked = check_claims(assertion, &self.token_endpoint(), now)
                    .map_err(TokenRequestError::InvalidAssertion)?;
                if client_id.is_some_and(|id| id != checked.client_id) {
                    return Err(TokenRequestError::InvalidClient);
                }
                let client = self
                    .clients
                    .get(&checked.client_id)
                    .map_err(internal)?
                    .ok_or(TokenRequestError::InvalidClient)?;
                checked
                    .verify_signature(&client)
                    .map_err(|_| TokenRequestError::InvalidClient)?;
                self.replay
                    .check_and_remember(&checked, now)
                    .map_err(|e| match e {
                        AssertionError::Unavailable(m) => TokenRequestError::Internal(m),
                        e => TokenRequestError::InvalidAssertion(e),
                    })?;
                Ok(client)
            }
        }
    }

    /// The `client_credentials` grant for system and Backend Services clients.
    pub fn client_credentials_grant(
        &self,
        creds: ClientCredentials<'_>,
        scope: Option<&str>,
    ) -> Result<TokenResponse, TokenRequestError> {
        let client = self.authenticate_client(creds)?;
        if !matches!(client.kind, ClientKind::System | ClientKind::Backend) {
            return Err(TokenRequestError::UnauthorizedClient(
                "SMART apps use the authorization_code grant".into(),
            ));
        }
        let scopes = match self.clients.grant_scopes(&client, scope) {
            Ok(s) => s,
            Err(e @ (AuthError::Scope(_) | AuthError::ScopeNotAllowed(_))) => {
                return Err(TokenRequestError::InvalidScope(e.to_string()));
            }
            Err(e) => return Err(TokenRequestError::Internal(e.to_string())),
        };
        let access = self
            .issuer
            .issue(&client, &scopes, self.clock.now())
            .map_err(|e| TokenRequestError::Internal(e.to_string()))?;
        Ok(TokenResponse {
            access,
            refresh_token: None,
            id_token: None,
            client_id: client.client_id,
            subject: None,
        })
    }

    /// The `client_credentials` grant with `client_secret_basic` (the `Authorization` value).
    pub fn client_credentials(
        &self,
        authorization: Option<&str>,
        scope: Option<&str>,
    ) -> Result<AccessToken, TokenRequestError> {
        let creds = authorization.map_or(ClientCredentials::None, ClientCredentials::Basic);
        self.client_credentials_grant(creds, scope)
            .map(|r| r.access)
    }

    /// Checks an authorization request (`GET /oauth2/authorize`).
    pub fn authorize(&self, params: &AuthorizeParams) -> Result<AuthorizeRequest, AuthorizeError> {
        let client = match params.client_id.as_deref() {
            Some(id) => self.clients.get(id).map_err(|e| {
                AuthorizeError::NoRedirect(format!("The client registry could not be read: {e}"))
            })?,
            None => None,
        };
        check_authorize(params, client, &self.audience)
    }

    /// Issues a one-use code for an approved request, bound to everything the token request
    /// must repeat.
    pub fn issue_code(
        &self,
        request: &AuthorizeRequest,
        subject: Subject,
    ) -> Result<SecretString, TokenError> {
        let grant = CodeGrant {
            client_id: request.client.client_id.clone(),
            redirect_uri: request.redirect_uri.clone(),
            code_challenge: request.code_challenge.clone(),
            scopes: request.scopes.clone(),
            subject,
            nonce: request.nonce.clone(),
        };
        self.codes
            .issue(grant, self.now(), self.rng.as_ref())
            .map_err(TokenError::Crypto)
    }

    fn revoke_issued(&self, access: &[(String, u64)], family: Option<&str>) -> Result<(), String> {
        let mut all = access.to_vec();
        if let Some(f) = family
            && let Some(rec) = self.refresh.revoke_family(f)?
        {
            all.extend(rec.access);
        }
        self.revocations.revoke(&all, self.now())
    }

    fn app_client(&self, creds: ClientCredentials<'_>) -> Result<ClientRecord, TokenRequestError> {
        let client = self.authenticate_client(creds)?;
        if !client.kind.is_app() {
            return Err(TokenRequestError::UnauthorizedClient(
                "only SMART apps (registered with --redirect-uri) use this grant".into(),
            ));
        }
        Ok(client)
    }

    /// The `authorization_code` grant: PKCE verifier, exact redirect URI, client binding;
    /// a code presented twice revokes everything issued from it.
    pub fn redeem_code(
        &self,
        creds: ClientCredentials<'_>,
        code: Option<&str>,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
    ) -> Result<TokenResponse, TokenRequestError> {
        let client = self.app_client(creds)?;
        let code =
            code.ok_or_else(|| TokenRequestError::InvalidRequest("code is required".into()))?;
        let now = self.now();
        let grant = match self.codes.redeem(code, now) {
            Redeem::Invalid => {
                return Err(TokenRequestError::InvalidGrant(
                    "the authorization code is invalid or has expired".into(),
                ));
            }
            Redeem::Reused(issued) => {
                self.revoke_issued(&issued.access, issued.family.as_deref())
                    .map_err(TokenRequestError::Internal)?;
                return Err(TokenRequestError::InvalidGrant(
                    "the authorization code was already used; the tokens issued from it are revoked".into(),
                ));
            }
            Redeem::Fresh(g) => g,
        };
        if grant.client_id != client.client_id {
            return Err(TokenRequestError::InvalidGrant(
                "the authorization code was issued to another client".into(),
            ));
        }
        if redirect_uri != Some(grant.redirect_uri.as_str()) {
            return Err(TokenRequestError::InvalidGrant(
                "redirect_uri does not match the authorization request".into(),
            ));
        }
        let Some(verifier) = verifier else {
            return Err(TokenRequestError::InvalidGrant(
                "code_verifier is required (PKCE)".into(),
            ));
        };
        if !pkce_matches(verifier, &grant.code_challenge) {
            return Err(TokenRequestError::InvalidGrant(
                "the code_verifier does not match the code_challenge".into(),
            ));
        }
        if !self
            .user_active(&grant.subject.user)
            .map_err(TokenRequestError::Internal)?
        {
            return Err(TokenRequestError::InvalidGrant(
                "the account that approved this request is disabled".into(),
            ));
        }
        let resp = self.issue_user_tokens(
            &client,
            &grant.subject,
            &grant.scopes,
            grant.nonce.as_deref(),
            None,
        )?;
        self.codes.record_issued(
            code,
            Issued {
                access: vec![(resp.access.jti.clone(), now + resp.access.expires_in)],
                family: resp
                    .refresh_token
                    .as_ref()
                    .and_then(|r| split_refresh(r.expose_secret()).map(|(f, _)| f.to_owned())),
            },
        );
        Ok(resp)
    }

    fn issue_user_tokens(
        &self,
        client: &ClientRecord,
        subject: &Subject,
        scopes: &[String],
        nonce: Option<&str>,
        rotated: Option<(SecretString, String)>,
    ) -> Result<TokenResponse, TokenRequestError> {
        let internal = |e: String| TokenRequestError::Internal(e);
        let now = self.now();
        let access = self
            .issuer
            .issue_for(client, Some(subject), scopes, self.clock.now())
            .map_err(|e| internal(e.to_string()))?;
        let wants_refresh = scopes
            .iter()
            .any(|s| s == "offline_access" || s == "online_access");
        let (refresh_token, family) = match rotated {
            Some((t, f)) => (Some(t), Some(f)),
            None if wants_refresh => {
                let (t, f) = self
                    .refresh
                    .start(&client.client_id, subject, scopes, now, self.rng.as_ref())
                    .map_err(internal)?;
                (Some(t), Some(f))
            }
            None => (None, None),
        };
        if let Some(f) = &family {
            self.refresh
                .add_access(f, &access.jti, now + access.expires_in, now)
                .map_err(internal)?;
        }
        let id_token = if scopes.iter().any(|s| s == "openid") {
            Some(
                self.issuer
                    .id_token(&client.client_id, subject, nonce, self.clock.now())
                    .map_err(|e| internal(e.to_string()))?,
            )
        } else {
            None
        };
        Ok(TokenResponse {
            access,
            refresh_token,
            id_token,
            client_id: client.client_id.clone(),
            subject: Some(subject.clone()),
        })
    }

    /// The `refresh_token` grant: the token rotates on every use; presenting an earlier one
    /// revokes the whole family; a disabled account ends it.
    pub fn refresh(
        &self,
        creds: ClientCredentials<'_>,
        token: Option<&str>,
        scope: Option<&str>,
    ) -> Result<TokenResponse, TokenRequestError> {
        let client = self.app_client(creds)?;
        let token = token
            .ok_or_else(|| TokenRequestError::InvalidRequest("refresh_token is required".into()))?;
        let now = self.now();
        let outcome = self
            .refresh
            .rotate(token, &client.client_id, now, self.rng.as_ref())
            .map_err(TokenRequestError::Internal)?;
        let (new_token, family, rec) = match outcome {
            RefreshOutcome::Invalid => {
                return Err(TokenRequestError::InvalidGrant(
                    "the refresh token is invalid, expired or revoked".into(),
                ));
            }
            RefreshOutcome::Reused(rec) => {
                self.revocations
                    .revoke(&rec.access, now)
                    .map_err(TokenRequestError::Internal)?;
                return Err(TokenRequestError::InvalidGrant(
                    "this refresh token was already used; the whole grant is revoked".into(),
                ));
            }
            RefreshOutcome::Rotated(t, f, rec) => (t, f, rec),
        };
        if !self
            .user_active(&rec.subject.user)
            .map_err(TokenRequestError::Internal)?
        {
            self.revoke_issued(&rec.access, Some(&family))
                .map_err(TokenRequestError::Internal)?;
            return Err(TokenRequestError::InvalidGrant(
                "the account of this grant is disabled".into(),
            ));
        }
        let scopes = match scope.map(str::trim).filter(|s| !s.is_empty()) {
            None => rec.scopes.clone(),
            Some(asked) => {
                let mut out = Vec::new();
                for w in asked.split_ascii_whitespace() {
                    let held = rec.scopes.iter().any(|h| {
                        h == w
                            || (Scope::parse(h).ok())
                                .zip(Scope::parse(w).ok())
                                .is_some_and(|(h, w)| h.covers(&w))
                    });
                    if !held {
                        return Err(TokenRequestError::InvalidScope(format!(
                            "scope {w:?} was not granted to this refresh token"
                        )));
                    }
                    out.push(w.to_owned());
                }
                out
            }
        };
        self.issue_user_tokens(
            &client,
            &rec.subject,
            &scopes,
            None,
            Some((new_token, family)),
        )
    }

    /// RFC 7009 revocation of an access or refresh token of the authenticated client.
    pub fn revoke(
        &self,
        creds: ClientCredentials<'_>,
        token: &str,
    ) -> Result<Revoked, TokenRequestError> {
        let client = self.authenticate_client(creds)?;
        let internal = TokenRequestError::Internal;
        if split_refresh(token).is_some() {
            return match self
                .refresh
                .revoke(token, &client.client_id)
                .map_err(internal)?
            {
                Some(rec) => {
                    self.revocations
                        .revoke(&rec.access, self.now())
                        .map_err(internal)?;
                    Ok(Revoked::RefreshFamily)
                }
                None => Ok(Revoked::Nothing),
            };
        }
        match self.verifier.verify(token, self.clock.now()) {
            Ok(c) if c.client_id == client.client_id => {
                self.revocations
                    .revoke(&[(c.jti.clone(), c.exp)], self.now())
                    .map_err(internal)?;
                Ok(Revoked::AccessToken)
            }
            _ => Ok(Revoked::Nothing),
        }
    }

    /// RFC 7662 introspection, for the authenticated client's own tokens.
    pub fn introspect(
        &self,
        creds: ClientCredentials<'_>,
        token: &str,
    ) -> Result<Value, TokenRequestError> {
        let client = self.authenticate_client(creds)?;
        let inactive = json!({"active": false});
        if split_refresh(token).is_some() {
            let Some(rec) = self
                .refresh
                .active(token, self.now())
                .map_err(TokenRequestError::Internal)?
                .filter(|r| r.client_id == client.client_id)
            else {
                return Ok(inactive);
            };
            if !self
                .user_active(&rec.subject.user)
                .map_err(TokenRequestError::Internal)?
            {
                return Ok(inactive);
            }
            let mut v = json!({"active": true, "token_type": "refresh_token",
                "client_id": rec.client_id, "scope": rec.scopes.join(" "),
                "sub": rec.subject.user, "username": rec.subject.user,
                "exp": rec.expires, "iat": rec.created, "iss": self.issuer_url});
            if let Some(f) = &rec.subject.fhir_user {
                v["fhirUser"] = f.as_str().into();
            }
            if let Some(p) = &rec.subject.patient {
                v["patient"] = p.as_str().into();
            }
            return Ok(v);
        }
        let claims = match self.verify_bearer(Some(&format!("Bearer {token}"))) {
            Ok(c) if c.client_id == client.client_id => c,
            Ok(_) => return Ok(inactive),
            Err(TokenError::Store(e) | TokenError::Crypto(e)) => {
                return Err(TokenRequestError::Internal(e));
            }
            Err(_) => return Ok(inactive),
        };
        let mut v = json!({"active": true, "token_type": "Bearer", "scope": claims.scope,
            "client_id": claims.client_id, "sub": claims.sub, "exp": claims.exp,
            "iat": claims.iat, "iss": claims.iss, "aud": claims.aud, "jti": claims.jti});
        if let Some(u) = &claims.user {
            v["username"] = u.as_str().into();
        }
        if let Some(f) = &claims.fhir_user {
            v["fhirUser"] = f.as_str().into();
        }
        if let Some(p) = &claims.patient {
            v["patient"] = p.as_str().into();
        }
        Ok(v)
    }

    /// Checks a `/fhir` request's `Authorization` header value (`Bearer <jwt>`): signature,
    /// issuer, audience, time, that the client is still enabled, that the token was not revoked,
    /// and that the account it acts for is still active. Errors map to 401 with
    /// [`TokenError::www_authenticate`], except `Store`/`Crypto` (500).
    pub fn verify_bearer(&self, authorization: Option<&str>) -> Result<Arc<Claims>, TokenError> {
        let claims = self.bearer.authenticate(authorization, self.clock.now())?;
        if self.revocations.is_revoked(&claims.jti) {
            return Err(TokenError::Revoked);
        }
        if let Some(user) = &claims.user
            && !self.user_active(user).map_err(TokenError::Store)?
        {
            return Err(TokenError::UserDisabled);
        }
        Ok(claims)
    }

    /// The public JWK set for `GET /oauth2/jwks`.
    pub fn jwks(&self) -> serde_json::Value {
        self.keys.jwks()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::MemoryRecordStore;
    use aws_lc_rs::signature::KeyPair as _;
    use base64::Engine as _;
    use carevault_crypto::{ManualClock, SystemRng};
    use parking_lot::Mutex;
    use secrecy::ExposeSecret;
    use std::collections::HashSet;

    const ISS: &str = "https://127.0.0.1:8443";
    const AUD: &str = "https://127.0.0.1:8443/fhir";
    const T0: u64 = 1_800_000_000;
    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    const VERIFIER: &str = "unit-test-verifier-0123456789-abcdefghijklmnop";

    #[derive(Default)]
    struct Users(Mutex<HashSet<String>>);
    impl UserDirectory for Users {
        fn is_active(&self, user: &str) -> Result<bool, String> {
            Ok(self.0.lock().contains(user))
        }
    }

    struct Fx {
        svc: AuthService,
        clock: Arc<ManualClock>,
        users: Arc<Users>,
        store: Arc<dyn RecordStore>,
    }

    fn fx() -> Fx {
        let store: Arc<dyn RecordStore> = Arc::new(MemoryRecordStore::new());
        let clock = Arc::new(ManualClock::at_unix(T0));
        let params = argon2::Params::new(256, 1, 1, None).unwrap();
        let clients = Arc::new(
            Clients::with_params(
                store.clone(),
                clock.clone(),
                Arc::new(SystemRng::new()),
                params,
            )
            .unwrap(),
        );
        let svc = service(&store, clients, &clock);
        let users = Arc::new(Users::default());
        users.0.lock().insert("pat".into());
        svc.attach_users(users.clone());
        svc.clients()
            .add_app(
                "app",
                "openid fhirUser launch/patient offline_access patient/*.rs",
                &["https://app.example/cb".into()],
                true,
            )
            .unwrap();
        Fx {
            svc,
            clock,
            users,
            store,
        }
    }

    /// The service over `store` and `clients` (a second one over the same records is a restart).
    fn service(
        store: &Arc<dyn RecordStore>,
        clients: Arc<Clients>,
        clock: &Arc<ManualClock>,
    ) -> AuthService {
        AuthService::with_clients(
            store.clone(),
            clients,
            ISS,
            AUD,
            Duration::from_secs(600),
            clock.clone(),
            Arc::new(SystemRng::new()),
        )
        .unwrap()
    }

    fn challenge(v: &str) -> String {
        B64.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, v.as_bytes()).as_ref())
    }

    fn params() -> AuthorizeParams {
        AuthorizeParams {
            response_type: Some("code".into()),
            client_id: Some("app".into()),
            redirect_uri: Some("https://app.example/cb".into()),
            scope: Some("openid fhirUser launch/patient offline_access patient/Patient.rs user/*.rs system/*.rs".into()),
            state: Some("s".into()),
            aud: Some(AUD.into()),
            code_challenge: Some(challenge(VERIFIER)),
            code_challenge_method: Some("S256".into()),
            nonce: Some("n-1".into()),
        }
    }

    fn subject() -> Subject {
        Subject {
            user: "pat".into(),
            fhir_user: Some("Patient/p1".into()),
            patient: Some("p1".into()),
        }
    }

    fn code(f: &Fx) -> String {
        let req = f.svc.authorize(&params()).unwrap();
        f.svc
            .issue_code(&req, subject())
            .unwrap()
            .expose_secret()
            .to_owned()
    }

    fn redeem(
        f: &Fx,
        code: &str,
        verifier: Option<&str>,
    ) -> Result<TokenResponse, TokenRequestError> {
        f.svc.redeem_code(
            ClientCredentials::Public("app"),
            Some(code),
            Some("https://app.example/cb"),
            verifier,
        )
    }

    fn bearer(t: &TokenResponse) -> String {
        format!("Bearer {}", t.access.jwt.expose_secret())
    }

    #[test]
    fn authorize_checks_client_redirect_pkce_audience_and_scopes() {
        let f = fx();
        let req = f.svc.authorize(&params()).unwrap();
        // Unallowed scopes (user/, system/) are dropped; the rest keep the request's order.
        assert_eq!(
            req.scopes,
            [
                "openid",
                "fhirUser",
                "launch/patient",
                "offline_access",
                "patient/Patient.rs"
            ]
        );
        assert!(req.needs_patient());
        let no_redirect =
            |p: AuthorizeParams| matches!(f.svc.authorize(&p), Err(AuthorizeError::NoRedirect(_)));
        assert!(no_redirect(AuthorizeParams {
            client_id: Some("ghost".into()),
            ..params()
        }));
        assert!(no_redirect(AuthorizeParams {
            client_id: None,
            ..params()
        }));
        assert!(no_redirect(AuthorizeParams {
            redirect_uri: Some("https://app.example/cb2".into()),
            ..params()
        }));
        assert!(no_redirect(AuthorizeParams {
            redirect_uri: None,
            ..params()
        }));
        let error = |p: AuthorizeParams| match f.svc.authorize(&p) {
            Err(AuthorizeError::Redirect {
                error,
                state,
                redirect_uri,
                ..
            }) => {
                assert_eq!(state.as_deref(), Some("s"));
                assert_eq!(redirect_uri, "https://app.example/cb");
                error
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            error(AuthorizeParams {
                code_challenge_method: None,
                ..params()
            }),
            "invalid_request"
        );
        assert_eq!(
            error(AuthorizeParams {
                code_challenge_method: Some("plain".into()),
                code_challenge: Some(VERIFIER.into()),
                ..params()
            }),
            "invalid_request"
        );
        assert_eq!(
            error(AuthorizeParams {
                code_challenge: None,
                ..params()
            }),
            "invalid_request"
        );
        assert_eq!(
            error(AuthorizeParams {
                aud: Some("https://evil/fhir".into()),
                ..params()
            }),
            "invalid_request"
        );
        assert_eq!(
            error(AuthorizeParams {
                aud: None,
                ..params()
            }),
            "invalid_request"
        );
        assert_eq!(
            error(AuthorizeParams {
                response_type: Some("token".into()),
                ..params()
            }),
            "unsupported_response_type"
        );
        assert_eq!(
            error(AuthorizeParams {
                scope: Some("system/*.rs launch".into()),
                ..params()
            }),
            "invalid_scope"
        );
        // Disabled app: no redirect either.
        f.svc.clients().disable("app").unwrap();
        assert!(no_redirect(params()));
    }

    #[test]
    fn code_flow_issues_user_tokens_and_an_id_token() {
        let f = fx();
        let t = redeem(&f, &code(&f), Some(VERIFIER)).unwrap();
        let claims = f.svc.verify_bearer(Some(&bearer(&t))).unwrap();
        assert_eq!(claims.sub, "pat");
        assert_eq!(claims.user.as_deref(), Some("pat"));
        assert_eq!(claims.fhir_user.as_deref(), Some("Patient/p1"));
        assert_eq!(claims.patient.as_deref(), Some("p1"));
        assert_eq!(claims.client_id, "app");
        let body: Value = serde_json::from_str(&t.response_body()).unwrap();
        assert_eq!(body["patient"], "p1");
        assert!(body["refresh_token"].is_string());
        // The ID token: ES256, aud = client id, nonce, fhirUser as an absolute URL.
        let id = body["id_token"].as_str().unwrap();
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(f.svc.jwks()["keys"][0].clone()).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&["app"]);
        v.set_issuer(&[ISS]);
        v.validate_exp = false;
        let id = jsonwebtoken::decode::<Value>(
            id,
            &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
            &v,
        )
        .unwrap();
        assert_eq!(id.claims["nonce"], "n-1");
        assert_eq!(id.claims["sub"], "pat");
        assert_eq!(id.claims["fhirUser"], format!("{AUD}/Patient/p1"));
    }

    #[test]
    fn pkce_missing_wrong_or_late_is_invalid_grant() {
        let f = fx();
        let grant_err = |r: Result<TokenResponse, TokenRequestError>| match r {
            Err(TokenRequestError::InvalidGrant(d)) => d,
            other => panic!("{other:?}"),
        };
        assert!(grant_err(redeem(&f, &code(&f), None)).contains("code_verifier is required"));
        assert!(
            grant_err(redeem(&f, &code(&f), Some("x".repeat(43).as_str())))
                .contains("does not match")
        );
        // The plain-method attack: the challenge itself as verifier.
        let c = code(&f);
        assert!(redeem(&f, &c, Some(&challenge(VERIFIER))).is_err());
        // A spent code stays spent even with the right verifier now.
        assert!(grant_err(redeem(&f, &c, Some(VERIFIER))).contains("already used"));
        // Expired after 60 s.
        let c = code(&f);
        f.clock.advance(crate::grants::CODE_LIFETIME);
        assert!(grant_err(redeem(&f, &c, Some(VERIFIER))).contains("expired"));
        // Redirect URI must repeat the authorize request's exactly.
        let c = code(&f);
        let r = f.svc.redeem_code(
            ClientCredentials::Public("app"),
            Some(&c),
            Some("https://app.example/cb/"),
            Some(VERIFIER),
        );
        assert!(grant_err(r).contains("redirect_uri"));
        assert!(matches!(
            redeem(&f, "garbage", Some(VERIFIER)),
            Err(TokenRequestError::InvalidGrant(_))
        ));
    }

    #[test]
    fn code_reuse_revokes_what_it_issued() {
        let f = fx();
        let c = code(&f);
        let t = redeem(&f, &c, Some(VERIFIER)).unwrap();
        assert!(f.svc.verify_bearer(Some(&bearer(&t))).is_ok());
        assert!(matches!(
            redeem(&f, &c, Some(VERIFIER)),
            Err(TokenRequestError::InvalidGrant(_))
        ));
        assert_eq!(
            f.svc.verify_bearer(Some(&bearer(&t))),
            Err(TokenError::Revoked)
        );
        let r = t.refresh_token.as_ref().unwrap().expose_secret().to_owned();
        assert!(
            f.svc
                .refresh(ClientCredentials::Public("app"), Some(&r), None)
                .is_err()
        );
    }

    #[test]
    fn refresh_rotates_and_reuse_revokes_the_family() {
        let f = fx();
        let t1 = redeem(&f, &code(&f), Some(VERIFIER)).unwrap();
        let r1 = t1
            .refresh_token
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_owned();
        let refresh = |r: &str| {
            f.svc
                .refresh(ClientCredentials::Public("app"), Some(r), None)
        };
        let t2 = refresh(&r1).unwrap();
        let r2 = t2
            .refresh_token
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_owned();
        assert_ne!(r1, r2);
        assert_eq!(t2.access.scope, t1.access.scope);
        // Narrowing is allowed, widening is not.
        let t3 = f
            .svc
            .refresh(
                ClientCredentials::Public("app"),
                Some(&r2),
                Some("patient/Patient.r"),
            )
            .unwrap();
        assert_eq!(t3.access.scope, "patient/Patient.r");
        let r3 = t3
            .refresh_token
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_owned();
        assert!(matches!(
            f.svc.refresh(
                ClientCredentials::Public("app"),
                Some(&r3),
                Some("patient/*.cruds")
            ),
            Err(TokenRequestError::InvalidScope(_))
        ));
        // Reuse of r1: invalid_grant, and everything of the family dies.
        assert!(
            matches!(refresh(&r1), Err(TokenRequestError::InvalidGrant(d)) if d.contains("already used"))
        );
        assert!(refresh(&r3).is_err());
        for t in [&t1, &t2, &t3] {
            assert_eq!(
                f.svc.verify_bearer(Some(&bearer(t))),
                Err(TokenError::Revoked)
            );
        }
        // Bound to the client: another app gets invalid_grant (and the family is untouched).
        f.svc
            .clients()
            .add_app(
                "other",
                "patient/*.rs",
                &["https://o.example/cb".into()],
                true,
            )
            .unwrap();
        let t = redeem(&f, &code(&f), Some(VERIFIER)).unwrap();
        let r = t.refresh_token.as_ref().unwrap().expose_secret().to_owned();
        assert!(matches!(
            f.svc
                .refresh(ClientCredentials::Public("other"), Some(&r), None),
            Err(TokenRequestError::InvalidGrant(_))
        ));
        assert!(refresh(&r).is_ok());
        // No refresh tokens without offline_access/online_access.
        let mut p = params();
        p.scope = Some("patient/Patient.rs".into());
        let req = f.svc.authorize(&p).unwrap();
        let c = f.svc.issue_code(&req, subject()).unwrap();
        let t = redeem(&f, c.expose_secret(), Some(VERIFIER)).unwrap();
        assert!(t.refresh_token.is_none() && t.id_token.is_none());
    }

    #[test]
    fn a_disabled_account_loses_tokens_and_refresh() {
        let f = fx();
        let t = redeem(&f, &code(&f), Some(VERIFIER)).unwrap();
        let r = t.refresh_token.as_ref().unwrap().expose_secret().to_owned();
        f.users.0.lock().clear();
        assert_eq!(
            f.svc.verify_bearer(Some(&bearer(&t))),
            Err(TokenError::UserDisabled)
        );
        assert!(matches!(
            f.svc
                .refresh(ClientCredentials::Public("app"), Some(&r), None),
            Err(TokenRequestError::InvalidGrant(_))
        ));
        // Re-enabling does not bring the revoked family back.
        f.users.0.lock().insert("pat".into());
        assert!(
            f.svc
                .refresh(ClientCredentials::Public("app"), Some(&r), None)
                .is_err()
        );
        // A fresh approval of a disabled account cannot be redeemed.
        let c = code(&f);
        f.users.0.lock().clear();
        assert!(matches!(
            redeem(&f, &c, Some(VERIFIER)),
            Err(TokenRequestError::InvalidGrant(_))
        ));
    }

    #[test]
    fn without_a_user_directory_user_tokens_fail_closed() {
        let f = fx();
        let t = redeem(&f, &code(&f), Some(VERIFIER)).unwrap();
        let svc2 = AuthService::open(
            f.store.clone(),
            ISS,
            AUD,
            Duration::from_secs(600),
            f.clock.clone(),
            Arc::new(SystemRng::new()),
        )
        .unwrap();
        assert_eq!(
            svc2.verify_bearer(Some(&bearer(&t))),
            Err(TokenError::UserDisabled)
        );
    }

    #[test]
    fn expiry_with_a_controlled_clock() {
        let f = fx();
        let t = redeem(&f, &code(&f), Some(VERIFIER)).unwrap();
        f.clock
            .advance(Duration::from_secs(600 + crate::token::LEEWAY_SECONDS));
        assert_eq!(
            f.svc.verify_bearer(Some(&bearer(&t))),
            Err(TokenError::Expired)
        );
        let v = f
            .svc
            .introspect(
                ClientCredentials::Public("app"),
                t.access.jwt.expose_secret(),
            )
            .unwrap();
        assert_eq!(v, json!({"active": false}));
    }

    #[test]
    fn revoke_and_introspect() {
        let f = fx();
        let t = redeem(&f, &code(&f), Some(VERIFIER)).unwrap();
        let at = t.access.jwt.expose_secret().to_owned();
        let rt = t.refresh_token.as_ref().unwrap().expose_secret().to_owned();
        let app = ClientCredentials::Public("app");
        let v = f.svc.introspect(app, &at).unwrap();
        assert_eq!(v["active"], true);
        assert_eq!(
            (
                v["sub"].as_str(),
                v["patient"].as_str(),
                v["fhirUser"].as_str()
            ),
            (Some("pat"), Some("p1"), Some("Patient/p1"))
        );
        assert_eq!(f.svc.introspect(app, &rt).unwrap()["active"], true);
        // Another client sees nothing of it and cannot revoke it.
        f.svc
            .clients()
            .add_app(
                "other",
                "patient/*.rs",
                &["https://o.example/cb".into()],
                true,
            )
            .unwrap();
        let other = ClientCredentials::Public("other");
        assert_eq!(
            f.svc.introspect(other, &at).unwrap(),
            json!({"active": false})
        );
        assert_eq!(f.svc.revoke(other, &at).unwrap(), Revoked::Nothing);
        assert_eq!(f.svc.revoke(other, &rt).unwrap(), Revoked::Nothing);
        assert!(f.svc.verify_bearer(Some(&bearer(&t))).is_ok());
        // Its own client can.
        assert_eq!(f.svc.revoke(app, &at).unwrap(), Revoked::AccessToken);
        assert_eq!(
            f.svc.introspect(app, &at).unwrap(),
            json!({"active": false})
        );
        assert_eq!(f.svc.revoke(app, &rt).unwrap(), Revoked::RefreshFamily);
        assert_eq!(
            f.svc.introspect(app, &rt).unwrap(),
            json!({"active": false})
        );
        assert_eq!(f.svc.revoke(app, "junk").unwrap(), Revoked::Nothing);
        // Revocations survive a restart (same store).
        let svc2 = AuthService::open(
            f.store.clone(),
            ISS,
            AUD,
            Duration::from_secs(600),
            f.clock.clone(),
            Arc::new(SystemRng::new()),
        )
        .unwrap();
        svc2.attach_users(f.users.clone());
        assert_eq!(
            svc2.verify_bearer(Some(&bearer(&t))),
            Err(TokenError::Revoked)
        );
        // Unknown client: invalid_client.
        assert!(matches!(
            f.svc.introspect(ClientCredentials::Public("ghost"), &at),
            Err(TokenRequestError::InvalidClient)
        ));
        assert!(matches!(
            f.svc.revoke(ClientCredentials::None, &at),
            Err(TokenRequestError::InvalidClient)
        ));
    }

    fn es384_backend(f: &Fx) -> aws_lc_rs::signature::EcdsaKeyPair {
        use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, doc.as_ref()).unwrap();
        let p = key.public_key().as_ref();
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-384", "kid": "e1",
            "x": B64.encode(&p[1..49]), "y": B64.encode(&p[49..97])}]});
        f.svc
            .clients()
            .add_backend("be", "system/*.rs", &jwks)
            .unwrap();
        key
    }

    fn sign_with(sign: impl Fn(&[u8]) -> Vec<u8>, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig))
    }

    fn assertion_claims(jti: &str, exp: u64) -> Value {
        json!({"iss": "be", "sub": "be", "aud": format!("{ISS}/oauth2/token"), "jti": jti, "exp": exp})
    }

    fn via(a: &str) -> ClientCredentials<'_> {
        ClientCredentials::Assertion {
            assertion_type: crate::assertion::ASSERTION_TYPE,
            assertion: a,
            client_id: None,
        }
    }

    #[test]
    fn backend_services_es384_with_every_rejection() {
        let f = fx();
        let key = es384_backend(&f);
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let es = |m: &[u8]| key.sign(&rng, m).unwrap().as_ref().to_vec();
        let h = json!({"alg": "ES384", "kid": "e1", "typ": "JWT"});
        let good = sign_with(es, &h, &assertion_claims("j1", T0 + 240));
        let t = f
            .svc
            .client_credentials_grant(via(&good), Some("system/Patient.rs"))
            .unwrap();
        assert_eq!(t.access.scope, "system/Patient.rs");
        let claims = f.svc.verify_bearer(Some(&bearer(&t))).unwrap();
        assert_eq!((claims.sub.as_str(), claims.user.as_deref()), ("be", None));
        let fails = |a: &str| match f.svc.client_credentials_grant(via(a), None) {
            Err(TokenRequestError::InvalidAssertion(e)) => Some(e),
            Err(TokenRequestError::InvalidClient) => None,
            other => panic!("{other:?}"),
        };
        use crate::assertion::AssertionError as E;
        assert_eq!(fails(&good), Some(E::Replay));
        let mut c = assertion_claims("j2", T0 + 240);
        c["aud"] = json!(AUD);
        assert_eq!(fails(&sign_with(es, &h, &c)), Some(E::Audience));
        assert_eq!(
            fails(&sign_with(
                es,
                &h,
                &assertion_claims("j3", T0 + 301 + crate::token::LEEWAY_SECONDS)
            )),
            Some(E::TooLong)
        );
        assert_eq!(
            fails(&sign_with(
                es,
                &h,
                &assertion_claims("j4", T0 - crate::token::LEEWAY_SECONDS)
            )),
            Some(E::Expired)
        );
        let mut c = assertion_claims("j5", T0 + 240);
        c["sub"] = json!("x");
        assert_eq!(fails(&sign_with(es, &h, &c)), Some(E::IssuerSubject));
        assert_eq!(
            fails(&sign_with(es, &h, &assertion_claims("", T0 + 240))),
            Some(E::Jti)
        );
        for alg in ["none", "HS384", "ES256", "RS256"] {
            let hh = json!({"alg": alg, "kid": "e1"});
            assert_eq!(
                fails(&sign_with(es, &hh, &assertion_claims("j6", T0 + 240))),
                Some(E::Algorithm),
                "{alg}"
            );
        }
        // HS384 keyed with the registered public key material: refused by alg before any key use.
        let hs = json!({"alg": "HS384", "kid": "e1"});
        let mac_key =
            aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA384, key.public_key().as_ref());
        let forged = sign_with(
            |m| aws_lc_rs::hmac::sign(&mac_key, m).as_ref().to_vec(),
            &hs,
            &assertion_claims("j7", T0 + 240),
        );
        assert_eq!(fails(&forged), Some(E::Algorithm));
        // Right claims, wrong key / unknown kid / RS384 on an EC key / unknown client: one answer.
        let other = es384_other();
        let es_other = |m: &[u8]| other.sign(&rng, m).unwrap().as_ref().to_vec();
        assert_eq!(
            fails(&sign_with(es_other, &h, &assertion_claims("j8", T0 + 240))),
            None
        );
        assert_eq!(
            fails(&sign_with(
                es,
                &json!({"alg": "ES384", "kid": "zz"}),
                &assertion_claims("j9", T0 + 240)
            )),
            None
        );
        assert_eq!(
            fails(&sign_with(
                es,
                &json!({"alg": "RS384", "kid": "e1"}),
                &assertion_claims("j10", T0 + 240)
            )),
            None
        );
        let mut c = assertion_claims("j11", T0 + 240);
        c["iss"] = json!("ghost");
        c["sub"] = json!("ghost");
        assert_eq!(fails(&sign_with(es, &h, &c)), None);
        // The jti is free again once its assertion has expired.
        f.clock
            .advance(Duration::from_secs(240 + crate::token::LEEWAY_SECONDS));
        let again = sign_with(es, &h, &assertion_claims("j1", T0 + 400));
        assert!(f.svc.client_credentials_grant(via(&again), None).is_ok());
        // A disabled backend client is refused.
        f.svc.clients().disable("be").unwrap();
        assert_eq!(
            fails(&sign_with(es, &h, &assertion_claims("j12", T0 + 400))),
            None
        );
    }

    #[test]
    fn a_used_jti_outlives_a_restart_and_is_pruned_once_expired() {
        use crate::assertion::{AssertionError as E, USED_JTI_RECORD_KIND};
        let f = fx();
        let key = es384_backend(&f);
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let es = |m: &[u8]| key.sign(&rng, m).unwrap().as_ref().to_vec();
        let h = json!({"alg": "ES384", "kid": "e1", "typ": "JWT"});
        let good = sign_with(es, &h, &assertion_claims("r1", T0 + 240));
        f.svc.client_credentials_grant(via(&good), None).unwrap();
        // A new service over the same records, as after a restart: the jti is still used.
        let restarted = service(&f.store, f.svc.clients().clone(), &f.clock);
        match restarted.client_credentials_grant(via(&good), None) {
            Err(TokenRequestError::InvalidAssertion(E::Replay)) => {}
            other => panic!("a replay after a restart was not refused: {other:?}"),
        }
        assert_eq!(f.store.list(USED_JTI_RECORD_KIND).unwrap().len(), 1);
        // Once r1 has expired (skew included), the next accepted assertion prunes its record.
        f.clock
            .advance(Duration::from_secs(240 + crate::token::LEEWAY_SECONDS + 61));
        let later = sign_with(
            es,
            &h,
            &assertion_claims("r2", T0 + 500 + crate::token::LEEWAY_SECONDS),
        );
        restarted
            .client_credentials_grant(via(&later), None)
            .unwrap();
        let keys: Vec<String> = f
            .store
            .list(USED_JTI_RECORD_KIND)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert!(keys[0].ends_with("ber2"), "{keys:?}");
    }

    fn es384_other() -> aws_lc_rs::signature::EcdsaKeyPair {
        use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, doc.as_ref()).unwrap()
    }

    #[test]
    fn backend_services_rs384() {
        let f = fx();
        let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let comps = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(key.public_key());
        let jwks = json!({"keys": [{"kty": "RSA", "kid": "r1", "alg": "RS384",
            "n": B64.encode(&comps.n), "e": B64.encode(&comps.e)}]});
        f.svc
            .clients()
            .add_backend("rsa", "system/*.rs", &jwks)
            .unwrap();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let rs = |m: &[u8]| {
            let mut sig = vec![0u8; key.public_modulus_len()];
            key.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA384, &rng, m, &mut sig)
                .unwrap();
            sig
        };
        let mut c = assertion_claims("r-1", T0 + 200);
        c["iss"] = json!("rsa");
        c["sub"] = json!("rsa");
        let a = sign_with(rs, &json!({"alg": "RS384", "kid": "r1"}), &c);
        assert!(f.svc.client_credentials_grant(via(&a), None).is_ok());
        // An ES384 header on the RSA key: no key of that type, refused.
        c["jti"] = json!("r-2");
        let a = sign_with(rs, &json!({"alg": "ES384", "kid": "r1"}), &c);
        assert!(matches!(
            f.svc.client_credentials_grant(via(&a), None),
            Err(TokenRequestError::InvalidClient)
        ));
        // A public app cannot use client_credentials; a backend cannot use the code grant.
        assert!(matches!(
            f.svc
                .client_credentials_grant(ClientCredentials::Public("app"), None),
            Err(TokenRequestError::UnauthorizedClient(_))
        ));
        c["jti"] = json!("r-3");
        let a = sign_with(rs, &json!({"alg": "RS384", "kid": "r1"}), &c);
        assert!(matches!(
            f.svc.redeem_code(via(&a), Some("x"), None, None),
            Err(TokenRequestError::UnauthorizedClient(_))
        ));
        // Registration refuses private keys, symmetric keys, small RSA keys and missing kids.
        for bad in [
            json!({"keys": [{"kty": "oct", "k": "AAAA", "kid": "x"}]}),
            json!({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "x"}]}),
            json!({"keys": [{"kty": "RSA", "n": B64.encode(&comps.n), "e": "AQAB"}]}),
            json!({"keys": [{"kty": "RSA", "n": B64.encode(&comps.n), "e": "AQAB", "d": "AQAB", "kid": "x"}]}),
            json!({"keys": []}),
            json!([]),
        ] {
            assert!(
                f.svc
                    .clients()
                    .add_backend("bad", "system/*.rs", &bad)
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn client_credentials_end_to_end() {
        let store: Arc<dyn RecordStore> = Arc::new(MemoryRecordStore::new());
        let clock = Arc::new(ManualClock::at_unix(1_800_000_000));
        let open = || {
            AuthService::open(
                store.clone(),
                "https://127.0.0.1:8443",
                "https://127.0.0.1:8443/fhir",
                Duration::from_secs(600),
                clock.clone(),
                Arc::new(SystemRng::new()),
            )
            .unwrap()
        };
        let svc = open();
        let (_, secret) = svc.clients().add("bench", "system/*.*").unwrap();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("bench:{}", secret.expose_secret()))
        );
        let token = svc.client_credentials(Some(&basic), None).unwrap();
        assert_eq!(token.scope, "system/*.*");
        let bearer = format!("Bearer {}", token.jwt.expose_secret());
        assert_eq!(svc.verify_bearer(Some(&bearer)).unwrap().client_id, "bench");
        // A second process (same store) verifies the same token: the signing key persisted.
        assert!(open().verify_bearer(Some(&bearer)).is_ok());
        assert!(matches!(
            svc.client_credentials(Some(&basic), Some("patient/*.rs")),
            Err(TokenRequestError::InvalidScope(_))
        ));
        assert!(matches!(
            svc.client_credentials(None, None),
            Err(TokenRequestError::InvalidClient)
        ));
        assert!(matches!(
            svc.client_credentials(Some("Basic xx"), None),
            Err(TokenRequestError::InvalidClient)
        ));
        clock.advance(Duration::from_secs(631));
        assert_eq!(svc.verify_bearer(Some(&bearer)), Err(TokenError::Expired));
        assert_eq!(svc.jwks()["keys"][0]["alg"], "ES256");
    }
}
