//! [`AuthService`]: the one object the server holds for OAuth 2: client registry, token issue at
//! `/oauth2/token`, bearer verification on `/fhir`, and the JWK set. It knows no HTTP: header
//! values come in as strings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use carevault_crypto::{Clock, Random};

use crate::clients::{AuthError, Clients};
use crate::records::RecordStore;
use crate::token::{
    AccessToken, BearerAuthenticator, Claims, TokenError, TokenIssuer, TokenKeys, TokenVerifier,
};

/// Why a token request failed, in the terms of RFC 6749 section 5.2.
#[derive(Debug, thiserror::Error)]
pub enum TokenRequestError {
    /// `invalid_client` (HTTP 401 with `WWW-Authenticate: Basic`): bad, unknown or disabled client,
    /// or no usable Basic credentials.
    #[error("client authentication failed")]
    InvalidClient,
    /// `invalid_scope` (HTTP 400): the requested scope is malformed or not the client's.
    #[error("{0}")]
    InvalidScope(String),
    /// `server_error` (HTTP 500): log the detail, show nothing.
    #[error("the token could not be issued: {0}")]
    Internal(String),
}

/// Clients, token issue and verification, wired together.
pub struct AuthService {
    clients: Arc<Clients>,
    keys: TokenKeys,
    issuer: TokenIssuer,
    bearer: BearerAuthenticator,
    clock: Arc<dyn Clock>,
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
        let (keys, _created) = TokenKeys::load_or_create(store.as_ref(), clock.as_ref())?;
        let clients = Arc::new(
            Clients::new(store, clock.clone(), rng.clone())
                .map_err(|e| TokenError::Crypto(e.to_string()))?,
        );
        let verifier = Arc::new(TokenVerifier::new(&keys, issuer, audience));
        let issuer = TokenIssuer::new(keys.clone(), issuer, audience, rng).with_lifetime(lifetime);
        let bearer = BearerAuthenticator::new(verifier, clients.clone());
        Ok(Self {
            clients,
            keys,
            issuer,
            bearer,
            clock,
        })
    }

    /// The client registry (for `carevault client ...` and cached enabled checks).
    pub fn clients(&self) -> &Arc<Clients> {
        &self.clients
    }

    /// The `client_credentials` grant: authenticates the `Authorization` header value
    /// (client_secret_basic) and issues a token for the requested `scope` (or all the client's).
    /// Slow on purpose (Argon2id): call it from a blocking thread.
    pub fn client_credentials(
        &self,
        authorization: Option<&str>,
        scope: Option<&str>,
    ) -> Result<AccessToken, TokenRequestError> {
        let header = authorization.ok_or(TokenRequestError::InvalidClient)?;
        let client = match self.clients.authenticate_basic(header) {
            Ok(c) => c,
            Err(AuthError::InvalidClient | AuthError::MalformedCredentials) => {
                return Err(TokenRequestError::InvalidClient);
            }
            Err(e) => return Err(TokenRequestError::Internal(e.to_string())),
        };
        let scopes = match self.clients.grant_scopes(&client, scope) {
            Ok(s) => s,
            Err(e @ (AuthError::Scope(_) | AuthError::ScopeNotAllowed(_))) => {
                return Err(TokenRequestError::InvalidScope(e.to_string()));
            }
            Err(e) => return Err(TokenRequestError::Internal(e.to_string())),
        };
        self.issuer
            .issue(&client, &scopes, self.clock.now())
            .map_err(|e| TokenRequestError::Internal(e.to_string()))
    }

    /// Checks a `/fhir` request's `Authorization` header value (`Bearer <jwt>`): signature,
    /// issuer, audience, time, and that the client is still enabled. Errors map to 401 with
    /// [`TokenError::www_authenticate`], except `Store`/`Crypto` (500).
    pub fn verify_bearer(&self, authorization: Option<&str>) -> Result<Arc<Claims>, TokenError> {
        self.bearer.authenticate(authorization, self.clock.now())
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
    use base64::Engine as _;
    use carevault_crypto::{ManualClock, SystemRng};
    use secrecy::ExposeSecret;

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
