//! Human identities: accounts, passwords, second factors, throttling, training, browser sessions.
//!
//! - [`accounts`]: [`Accounts`] over the sealed record store: add, disable, unlock, roles,
//!   Argon2id passwords, TOTP and recovery codes, and [`Accounts::sign_in`].
//! - [`password`]: the password rules and the embedded common/breached-password list.
//! - [`totp`]: RFC 6238 codes and `otpauth://` URIs.
//! - [`throttle`]: back-off and lockout arithmetic and settings.
//! - [`training`]: training records.
//! - [`session`]: browser sessions held in the server's memory.
//! - [`settings`]: the `[identity]` settings.
//!
//! Time and randomness come in through [`carevault_crypto::Clock`] and [`carevault_crypto::Random`].
#![forbid(unsafe_code)]

pub mod accounts;
pub mod password;
pub mod session;
pub mod settings;
pub mod throttle;
pub mod totp;
pub mod training;

pub use accounts::{
    ACCOUNT_RECORD_KIND, ACTIVE_CACHE_TTL, Account, Accounts, FIRST_ADMIN, IdentityError, Link,
    SignInError, TotpEnrolment, parse_roles,
};
pub use carevault_policy::Role;
pub use password::PasswordError;
pub use session::{Session, Sessions, Stage};
pub use settings::IdentitySettings;
pub use throttle::ThrottleSettings;
pub use training::TrainingRecord;

#[cfg(test)]
mod tests;
