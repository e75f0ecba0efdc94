//! Clients, credentials, OAuth 2 token issue and verification.
#![forbid(unsafe_code)]
