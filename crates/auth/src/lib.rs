//! Clients, credentials, OAuth 2 token issue and verification.
//!
//! - [`clients`]: registered OAuth 2 clients, their hashed secrets and client authentication
//!   (`client_secret_basic`).
//! - [`scope`]: SMART v1/v2 scope syntax and scope coverage.
//! - [`token`]: ES256 JWT access tokens: the signing key, issue, verification, the JWK set.
//! - [`grants`]: authorization requests, PKCE, one-use codes, rotating refresh tokens,
//!   revocation.
//! - [`assertion`]: `private_key_jwt` client assertions (SMART Backend Services).
//! - [`records`]: the small persistence interface ([`RecordStore`]) the store adapts to.
//! - [`service`]: [`AuthService`], the above wired together for the server.
//!
//! Time and randomness come in through [`carevault_crypto::Clock`] and [`carevault_crypto::Random`].
#![forbid(unsafe_code)]

pub mod assertion;
pub mod clients;
pub mod grants;
pub mod records;
pub mod scope;
pub mod service;
pub mod token;

pub use carevault_crypto::{Clock, ManualClock, Random, SystemClock, SystemRng};
pub use clients::{AuthError, ClientKind, ClientRecord, Clients};
pub use grants::{AuthorizeError, AuthorizeParams, AuthorizeRequest};
pub use records::{MemoryRecordStore, RecordStore};
pub use scope::{Scope, ScopeError};
pub use service::{
    AuthService, ClientCredentials, Revoked, TokenRequestError, TokenResponse, UserDirectory,
};
pub use token::{
    AccessToken, BearerAuthenticator, Claims, Subject, TokenError, TokenIssuer, TokenKeys,
    TokenVerifier,
};
